//! The supervisor: spawns every actor linked, forwards each event to the [`Schedule`] and carries out
//! the commands it returns (take states, sample, score, learn, checkpoint, finish), restarts a failed
//! policy or verifier, and stops the run cleanly when the learner fails, a fault repeats, or training
//! ends. What is scheduled, and why it is deterministic, is in `schedule.rs`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};

use super::cluster::{Outbox, RemotePolicy, RemotePolicyArgs};
use super::learner::{LearnerActor, LearnerArgs};
use super::messages::{EnvMsg, LearnerMsg, MetricsMsg, PolicyMsg, RunShared, SupMsg, VerifierMsg};
use super::metrics::{step_line, step_samples};
use super::policy::{PolicyActor, PolicyArgs};
use super::schedule::{Cmd, Plan, Schedule, Summary};
use super::verifier::{VerifierActor, VerifierArgs};
use super::wire::WORKER_GROUP;
use crate::learn::Learner;
use crate::model::Decoder;
use crate::rollout::PolicySnapshot;

/// Test hooks: faults injected on purpose.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hooks {
    /// Policy 0 fails once at this step; the run must complete regardless.
    pub fail_policy_at_step: Option<u64>,
    /// A stop request (as Ctrl-C sends) arrives while this step's update is running.
    pub stop_while_learning: Option<u64>,
    /// From this step on, every sampling job of every policy panics, as a deterministic fault would.
    pub policies_panic_from_step: Option<u64>,
}

/// A weight version: the policy and, for `info_gain`, the EMA teacher of the same version.
type Version = (Arc<Decoder>, Option<Arc<Decoder>>);

pub struct Supervisor;

/// What the supervisor is started with (the learner is passed beside it and moves into its actor).
pub struct SupArgs {
    pub shared: Arc<RunShared>,
    pub env: ActorRef<EnvMsg>,
    pub metrics: ActorRef<MetricsMsg>,
    pub start_step: u64,
    pub weights: Arc<Decoder>,
    pub ema: Option<Arc<Decoder>>,
    pub hooks: Hooks,
}

pub struct SupState {
    a: SupArgs,
    myself: ActorRef<SupMsg>,
    sched: Schedule<Version>,
    learner: ActorRef<LearnerMsg>,
    policies: Vec<Slot>,
    /// Set when the run has a `[cluster]`: what every worker is sent.
    outbox: Option<Arc<Outbox>>,
    verifiers: Vec<ActorRef<VerifierMsg>>,
    by_id: HashMap<ActorId, Role>,
    reply: Option<RpcReplyPort<Result<Summary, String>>>,
}

/// A policy actor: local, or the proxy of a worker in another process.
struct Slot {
    actor: ActorRef<PolicyMsg>,
    /// The worker's actor, for a proxy.
    remote: Option<ActorId>,
}

#[derive(Clone, Copy)]
enum Role {
    Policy(usize),
    Remote(usize),
    Verifier(usize),
    Learner,
}

impl SupState {
    async fn spawn_policy(
        &self,
        id: usize,
        fail: Option<u64>,
    ) -> Result<ActorRef<PolicyMsg>, ActorProcessingErr> {
        let args = PolicyArgs {
            id,
            shared: self.a.shared.clone(),
            supervisor: self.myself.clone(),
            fail_on_step: fail,
            panic_from_step: self.a.hooks.policies_panic_from_step,
        };
        let (r, _) = Actor::spawn_linked(None, PolicyActor, args, self.myself.get_cell()).await?;
        Ok(r)
    }

    async fn spawn_verifier(&self, id: usize) -> Result<ActorRef<VerifierMsg>, ActorProcessingErr> {
        let args = VerifierArgs {
            id,
            shared: self.a.shared.clone(),
            supervisor: self.myself.clone(),
        };
        let (r, _) = Actor::spawn_linked(None, VerifierActor, args, self.myself.get_cell()).await?;
        Ok(r)
    }

    /// Carries out the schedule's commands (and those that follow from them), in order.
    async fn exec(&mut self, cmds: Vec<Cmd<Version>>) -> Result<(), ActorProcessingErr> {
        let mut queue: VecDeque<Cmd<Version>> = cmds.into();
        while let Some(cmd) = queue.pop_front() {
            match cmd {
                Cmd::Take { step, n } => {
                    let states = ractor::call_t!(self.a.env, EnvMsg::Take, 60_000, n)?;
                    queue.extend(self.sched.took(step, states)?);
                }
                Cmd::Sample {
                    policy,
                    step,
                    version,
                    model,
                    states,
                } => {
                    let snapshot = PolicySnapshot {
                        version,
                        model: model.0,
                    };
                    self.policies[policy].actor.cast(PolicyMsg::Sample {
                        step,
                        snapshot,
                        states,
                    })?;
                }
                Cmd::Score {
                    verifier,
                    step,
                    group,
                    model: (policy, ema),
                } => {
                    self.verifiers[verifier].cast(VerifierMsg::Score {
                        step,
                        group,
                        policy,
                        ema,
                    })?;
                }
                Cmd::Learn {
                    step,
                    batch,
                    checkpoint,
                } => {
                    let cursor = ractor::call_t!(self.a.env, EnvMsg::Cursor, 60_000)?;
                    self.sched.learning(step, cursor);
                    self.learner.cast(LearnerMsg::Update {
                        step,
                        batch,
                        cursor,
                        checkpoint,
                    })?;
                    if self.a.hooks.stop_while_learning == Some(step) {
                        self.myself.cast(SupMsg::Stop)?;
                    }
                }
                Cmd::Checkpoint { steps, cursor } => {
                    self.learner
                        .cast(LearnerMsg::Checkpoint { steps, cursor })?;
                }
                Cmd::Finish(result) => {
                    self.finish(result);
                    self.myself.stop(None);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Ends the run with `why`, after a failure the schedule will not restart from.
    fn stop_with(&mut self, why: String) {
        self.finish(Err(format!("the run stopped: {why}")));
        self.myself.stop(Some("the run stopped".into()));
    }

    /// Adds a proxy for a policy worker that joined the cluster.
    async fn add_worker(&mut self, cell: ActorCell) -> Result<(), ActorProcessingErr> {
        let (Some(outbox), id) = (self.outbox.clone(), cell.get_id()) else {
            return Ok(());
        };
        if id.is_local() || self.policies.iter().any(|p| p.remote == Some(id)) {
            return Ok(());
        }
        let slot = self.sched.add_policy(true);
        let timeout = self
            .a
            .shared
            .cfg
            .cluster
            .as_ref()
            .map_or(600.0, |c| c.request_timeout_s);
        let args = RemotePolicyArgs {
            id: slot,
            worker: ActorRef::from(cell),
            outbox,
            supervisor: self.myself.clone(),
            timeout: std::time::Duration::from_secs_f64(timeout),
        };
        let (actor, _) =
            Actor::spawn_linked(None, RemotePolicy, args, self.myself.get_cell()).await?;
        tracing::info!(slot, worker = %id, "a policy worker joined");
        self.by_id.insert(actor.get_id(), Role::Remote(slot));
        self.policies.push(Slot {
            actor,
            remote: Some(id),
        });
        Ok(())
    }

    fn finish(&mut self, result: Result<Summary, String>) {
        if let Some(r) = self.reply.take() {
            let _ = r.send(result);
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupMsg;
    type State = SupState;
    type Arguments = (SupArgs, Learner);

    async fn pre_start(
        &self,
        myself: ActorRef<SupMsg>,
        (a, learner): (SupArgs, Learner),
    ) -> Result<SupState, ActorProcessingErr> {
        let cfg = a.shared.cfg.clone();
        let largs = LearnerArgs {
            learner,
            shared: a.shared.clone(),
            supervisor: myself.clone(),
        };
        let (learner, _) =
            Actor::spawn_linked(None, LearnerActor, largs, myself.get_cell()).await?;
        let outbox = match &cfg.cluster {
            Some(_) => Some(Arc::new(Outbox::new(&a.shared, &a.weights)?)),
            None => None,
        };
        let sched = Schedule::new(
            Plan::of(&cfg, a.start_step),
            (a.weights.clone(), a.ema.clone()),
        );
        let mut st = SupState {
            sched,
            learner,
            policies: vec![],
            outbox,
            verifiers: vec![],
            by_id: HashMap::new(),
            reply: None,
            myself: myself.clone(),
            a,
        };
        st.by_id.insert(st.learner.get_id(), Role::Learner);
        for i in 0..cfg.rollout.policies {
            // The injected failure hits the first policy once; a restarted one runs clean.
            let fail = if i == 0 {
                st.a.hooks.fail_policy_at_step
            } else {
                None
            };
            let p = st.spawn_policy(i, fail).await?;
            let slot = st.sched.add_policy(false);
            st.by_id.insert(p.get_id(), Role::Policy(slot));
            st.policies.push(Slot {
                actor: p,
                remote: None,
            });
        }
        if st.outbox.is_some() {
            // Monitor first, then list: a worker joining in between is seen twice, and added once.
            ractor::pg::monitor(WORKER_GROUP.into(), myself.get_cell());
            for cell in super::cluster::workers() {
                st.add_worker(cell).await?;
            }
        }
        for i in 0..cfg.rollout.verifiers {
            let v = st.spawn_verifier(i).await?;
            st.by_id.insert(v.get_id(), Role::Verifier(i));
            st.verifiers.push(v);
        }
        Ok(st)
    }

    async fn handle(
        &self,
        _: ActorRef<SupMsg>,
        msg: SupMsg,
        st: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        let cmds = match msg {
            SupMsg::Run(reply) => {
                st.reply = Some(reply);
                st.sched.start()
            }
            SupMsg::Sampled(work) => {
                st.sched
                    .sampled(work.worker, work.step, work.seconds, work.items)
            }
            SupMsg::Scored(work) => st.sched.scored(work.step, work.seconds, work.items)?,
            SupMsg::Updated(u) => {
                let (w, cmds) = st
                    .sched
                    .updated(u.step, (u.weights.clone(), u.ema.clone()))?;
                let line = step_line(&st.a.shared, u.step, &w, &u.stats, u.seconds);
                let samples = step_samples(&st.a.shared, u.step, &w);
                st.a.metrics.cast(MetricsMsg::Step { line, samples })?;
                cmds
            }
            SupMsg::Checkpointed => st.sched.checkpointed(),
            SupMsg::Stop => {
                st.sched.stop();
                vec![]
            }
        };
        st.exec(cmds).await
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<SupMsg>,
        evt: SupervisionEvent,
        st: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ProcessGroupChanged(change) = &evt {
            match change {
                ractor::pg::GroupChangeMessage::Join(_, group, cells) if group == WORKER_GROUP => {
                    for c in cells {
                        st.add_worker(c.clone()).await?;
                    }
                }
                ractor::pg::GroupChangeMessage::Leave(_, group, cells) if group == WORKER_GROUP => {
                    for c in cells {
                        let id = c.get_id();
                        if let Some(p) = st.policies.iter().find(|p| p.remote == Some(id)) {
                            p.actor.stop(Some("the worker left the cluster".into()));
                        }
                    }
                }
                _ => {}
            }
            return Ok(());
        }
        let (cell, why): (ActorCell, String) = match evt {
            SupervisionEvent::ActorFailed(c, e) => (c, e.to_string()),
            SupervisionEvent::ActorTerminated(c, _, r) => {
                (c, r.unwrap_or_else(|| "terminated".into()))
            }
            _ => return Ok(()),
        };
        let Some(role) = st.by_id.remove(&cell.get_id()) else {
            return Ok(());
        };
        let cmds = match role {
            Role::Policy(i) => match st.sched.policy_failed(i, &why) {
                Err(stop) => {
                    st.stop_with(stop);
                    return Ok(());
                }
                Ok(cmds) => {
                    tracing::warn!(policy = i, reason = %why, "policy failed; restarting it and re-issuing its states");
                    let p = st.spawn_policy(i, None).await?;
                    st.by_id.insert(p.get_id(), Role::Policy(i));
                    st.policies[i].actor = p;
                    cmds
                }
            },
            Role::Remote(i) => {
                tracing::warn!(slot = i, reason = %why, "a policy worker is gone; its states go to the other policies");
                st.sched.worker_gone(i)
            }
            Role::Verifier(i) => match st.sched.verifier_failed(i, &why) {
                Err(stop) => {
                    st.stop_with(stop);
                    return Ok(());
                }
                Ok(cmds) => {
                    tracing::warn!(verifier = i, reason = %why, "verifier failed; restarting it and re-issuing its groups");
                    let v = st.spawn_verifier(i).await?;
                    st.by_id.insert(v.get_id(), Role::Verifier(i));
                    st.verifiers[i] = v;
                    cmds
                }
            },
            Role::Learner => {
                st.finish(Err(format!("the learner failed: {why}")));
                st.myself.stop(Some("learner failed".into()));
                return Ok(());
            }
        };
        st.exec(cmds).await
    }

    async fn post_stop(
        &self,
        myself: ActorRef<SupMsg>,
        st: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        if st.outbox.is_some() {
            ractor::pg::demonitor(WORKER_GROUP.into(), myself.get_id());
        }
        Ok(())
    }
}
