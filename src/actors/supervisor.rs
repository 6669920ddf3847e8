//! The supervisor: spawns every actor linked, schedules the steps, restarts a failed policy or verifier
//! and re-issues its unfinished states, and stops the run cleanly when the learner fails or training ends.
//!
//! Scheduling, and why it is deterministic:
//! - step j's states are the next B in the environment's order (more rounds with dynamic sampling);
//! - step j is launched once step j − 1 is fully scored and at most `max_staleness` updates are pending,
//!   with the newest weights at that moment; that version is the same however threads interleave, since
//!   it only depends on which updates must have finished (credit: no more rollouts in flight than the
//!   learner will take);
//! - the learner gets step j's groups sorted by their index in the environment's order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};

use super::cluster::{Outbox, RemotePolicy, RemotePolicyArgs};
use super::environment::EnvMsg;
use super::learner::{LearnerMsg, Updated};
use super::metrics::MetricsMsg;
use super::policy::{PolicyActor, PolicyArgs, PolicyMsg};
use super::verifier::{VerifierActor, VerifierArgs, VerifierMsg};
use super::wire::WORKER_GROUP;
use super::{RunShared, RunSummary, Work, step_metrics};
use crate::env::State;
use crate::grpo::zero_variance_groups;
use crate::model::Decoder;
use crate::rollout::{Group, PolicySnapshot, ScoredGroup};

pub struct Supervisor;

pub struct SupArgs {
    pub shared: Arc<RunShared>,
    pub env: ActorRef<EnvMsg>,
    pub metrics: ActorRef<MetricsMsg>,
    pub learner: crate::learn::Learner,
    pub start_step: u64,
    pub weights: Arc<Decoder>,
    pub ema: Option<Arc<Decoder>>,
    /// Test hook: policy 0 fails once at this step.
    pub fail_policy_at_step: Option<u64>,
    /// Test hook: stop as Ctrl-C does while this step's update runs.
    pub stop_while_learning: Option<u64>,
    /// Test hook: every policy job panics from this step on.
    pub policies_panic_from_step: Option<u64>,
}

/// The arguments kept after start-up (the learner has moved into its actor).
pub struct SupArgs2 {
    pub shared: Arc<RunShared>,
    pub env: ActorRef<EnvMsg>,
    pub metrics: ActorRef<MetricsMsg>,
    pub start_step: u64,
    pub weights: Arc<Decoder>,
    pub ema: Option<Arc<Decoder>>,
    pub fail_policy_at_step: Option<u64>,
    pub stop_while_learning: Option<u64>,
    pub policies_panic_from_step: Option<u64>,
}

/// Restarts allowed within [`RESTART_WINDOW`] before the run stops: a fault that keeps coming back is
/// not a passing one.
const MAX_RESTARTS: usize = 8;
const RESTART_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// What the supervisor remembers of failures, to stop a run whose faults repeat instead of restarting
/// forever: the same state (or group) failing twice, or too many restarts in a window.
#[derive(Default)]
struct Faults {
    /// State index → failures of the actor it was assigned to.
    per_state: HashMap<u64, u32>,
    recent: std::collections::VecDeque<Instant>,
    first: Option<String>,
}

impl Faults {
    /// Records a failure of an actor that held `states`; `Some(reason)` when the run must stop.
    fn record(&mut self, who: &str, why: &str, states: &[u64]) -> Option<String> {
        let first = self
            .first
            .get_or_insert_with(|| format!("{who}: {why}"))
            .clone();
        let now = Instant::now();
        self.recent.push_back(now);
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            self.recent.pop_front();
        }
        for &k in states {
            let n = self.per_state.entry(k).or_default();
            *n += 1;
            if *n >= 2 {
                return Some(format!(
                    "state {k} failed twice, so the fault is not a passing one; the first error: {first}"
                ));
            }
        }
        if self.recent.len() > MAX_RESTARTS {
            return Some(format!(
                "{} restarts within {} s; the first error: {first}",
                self.recent.len(),
                RESTART_WINDOW.as_secs()
            ));
        }
        None
    }
}

pub enum SupMsg {
    /// Run until the last step; answers with the summary.
    Run(RpcReplyPort<Result<RunSummary, String>>),
    Sampled(Work<Group>),
    Scored(Work<ScoredGroup>),
    Updated(Box<Updated>),
    /// The checkpoint asked for at the end of a stopped run is written.
    Checkpointed,
    /// Finish the step in progress, checkpoint, and stop (Ctrl-C).
    Stop,
}

/// Everything about one step in progress.
#[derive(Default)]
struct StepWork {
    version: u64,
    rounds: usize,
    /// State index → (state, policy it was sent to).
    sampling: BTreeMap<u64, (State, usize)>,
    /// State index → (group, verifier it was sent to).
    scoring: BTreeMap<u64, (Group, usize)>,
    scored: BTreeMap<u64, ScoredGroup>,
    dropped: usize,
    reissued: usize,
    /// The batch went to the learner; nothing about this step changes any more.
    sent: bool,
    /// Data cursor after this step's states, and whether its update writes a checkpoint.
    cursor: u64,
    checkpointed: bool,
    /// States whose groups came from policy workers in other processes.
    remote_states: usize,
    rollout_s: f64,
    verify_s: f64,
    started: Option<Instant>,
}

pub struct SupState {
    a: SupArgs2,
    myself: ActorRef<SupMsg>,
    learner: ActorRef<LearnerMsg>,
    policies: Vec<Slot>,
    /// Set when the run has a `[cluster]`: what every worker is sent.
    outbox: Option<Arc<Outbox>>,
    verifiers: Vec<ActorRef<VerifierMsg>>,
    by_id: HashMap<ActorId, Role>,
    /// Weight versions still needed: version → (policy, EMA teacher of that version). A group is scored
    /// with the teacher of the version that sampled it, whatever the learner has done since.
    versions: BTreeMap<u64, (Arc<Decoder>, Option<Arc<Decoder>>)>,
    updates_done: u64,
    steps: BTreeMap<u64, StepWork>,
    next_launch: u64,
    learner_busy: bool,
    end_step: u64,
    reply: Option<RpcReplyPort<Result<RunSummary, String>>>,
    reissued_total: usize,
    fault_pending: Option<u64>,
    faults: Faults,
}

/// A policy actor: local, or the proxy of a worker in another process.
struct Slot {
    actor: ActorRef<PolicyMsg>,
    /// The worker's actor, for a proxy.
    remote: Option<ActorId>,
    /// False once a worker is gone; a local policy is restarted instead.
    live: bool,
}

#[derive(Clone, Copy)]
enum Role {
    Policy(usize),
    Remote(usize),
    Verifier(usize),
    Learner,
}

impl Supervisor {
    async fn spawn_policy(
        myself: &ActorRef<SupMsg>,
        st: &SupState,
        id: usize,
        fail: Option<u64>,
    ) -> Result<ActorRef<PolicyMsg>, ActorProcessingErr> {
        let args = PolicyArgs {
            id,
            shared: st.a.shared.clone(),
            supervisor: myself.clone(),
            fail_on_step: fail,
            panic_from_step: st.a.policies_panic_from_step,
        };
        let (r, _) = Actor::spawn_linked(None, PolicyActor, args, myself.get_cell()).await?;
        Ok(r)
    }

    async fn spawn_verifier(
        myself: &ActorRef<SupMsg>,
        st: &SupState,
        id: usize,
    ) -> Result<ActorRef<VerifierMsg>, ActorProcessingErr> {
        let args = VerifierArgs {
            id,
            shared: st.a.shared.clone(),
            supervisor: myself.clone(),
        };
        let (r, _) = Actor::spawn_linked(None, VerifierActor, args, myself.get_cell()).await?;
        Ok(r)
    }
}

impl SupState {
    fn cfg(&self) -> &crate::config::Config {
        &self.a.shared.cfg
    }

    /// Launches every step the credit allows.
    async fn launch_ready(&mut self) -> Result<(), ActorProcessingErr> {
        while self.next_launch < self.end_step
            && self.next_launch <= self.updates_done + self.cfg().rollout.max_staleness
            && (self.next_launch == self.a.start_step
                || self
                    .steps
                    .get(&(self.next_launch - 1))
                    .is_none_or(|w| w.sampling.is_empty() && w.scoring.is_empty()))
        {
            let step = self.next_launch;
            let mut w = StepWork {
                version: self.updates_done,
                started: Some(Instant::now()),
                ..Default::default()
            };
            let n = self.cfg().rollout.states_per_step;
            self.request_states(step, &mut w, n).await?;
            self.steps.insert(step, w);
            self.next_launch += 1;
        }
        Ok(())
    }

    /// Takes `n` more states from the environment and sends them to the policies.
    async fn request_states(
        &mut self,
        step: u64,
        w: &mut StepWork,
        n: usize,
    ) -> Result<(), ActorProcessingErr> {
        let states = ractor::call_t!(self.a.env, EnvMsg::Take, 60_000, n)?;
        if states.is_empty() {
            return Err("the environment has no more states".into());
        }
        w.rounds += 1;
        let snapshot = PolicySnapshot {
            version: w.version,
            model: self.versions[&w.version].0.clone(),
        };
        let live = self.live_policies();
        let per = states.len().div_ceil(live.len());
        for (chunk, &i) in states.chunks(per).zip(&live) {
            for (k, s) in chunk {
                w.sampling.insert(*k, (s.clone(), i));
            }
            self.policies[i].actor.cast(PolicyMsg::Sample {
                step,
                snapshot: snapshot.clone(),
                states: chunk.to_vec(),
            })?;
        }
        Ok(())
    }

    fn live_policies(&self) -> Vec<usize> {
        (0..self.policies.len())
            .filter(|&i| self.policies[i].live)
            .collect()
    }

    /// Hands the unfinished states of policy `from` to the policies `to` (split evenly, per step).
    fn reissue(&mut self, from: usize, to: &[usize]) -> Result<(), ActorProcessingErr> {
        let mut resend = vec![];
        for (&step, w) in self.steps.iter_mut() {
            let mine: Vec<(u64, State)> = w
                .sampling
                .iter()
                .filter(|(_, (_, p))| *p == from)
                .map(|(k, (s, _))| (*k, s.clone()))
                .collect();
            if mine.is_empty() {
                continue;
            }
            w.reissued += mine.len();
            self.reissued_total += mine.len();
            let per = mine.len().div_ceil(to.len());
            for (chunk, &p) in mine.chunks(per).zip(to) {
                for (k, _) in chunk {
                    if let Some(e) = w.sampling.get_mut(k) {
                        e.1 = p;
                    }
                }
                resend.push((step, w.version, p, chunk.to_vec()));
            }
        }
        for (step, version, p, states) in resend {
            let snapshot = PolicySnapshot {
                version,
                model: self.versions[&version].0.clone(),
            };
            self.policies[p].actor.cast(PolicyMsg::Sample {
                step,
                snapshot,
                states,
            })?;
        }
        Ok(())
    }

    /// Adds a proxy for a policy worker that joined the cluster.
    async fn add_worker(&mut self, cell: ActorCell) -> Result<(), ActorProcessingErr> {
        let (Some(outbox), id) = (self.outbox.clone(), cell.get_id()) else {
            return Ok(());
        };
        if id.is_local() || self.policies.iter().any(|p| p.remote == Some(id)) {
            return Ok(());
        }
        let slot = self.policies.len();
        let timeout = self
            .cfg()
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
            live: true,
        });
        Ok(())
    }

    /// After a step's scoring finishes: dynamic sampling, then the update when the learner is free.
    async fn advance(&mut self) -> Result<(), ActorProcessingErr> {
        let b = self.cfg().rollout.states_per_step;
        let step = self.updates_done;
        if let Some(mut w) = self.steps.remove(&step) {
            if w.sent {
                self.steps.insert(step, w);
                return self.launch_ready().await;
            }
            let complete = w.sampling.is_empty() && w.scoring.is_empty();
            if complete && self.cfg().grpo.dynamic_sampling {
                let seqs: Vec<u64> = w.scored.keys().copied().collect();
                let rewards: Vec<Vec<f64>> = w
                    .scored
                    .values()
                    .map(|g| g.rewards.iter().map(|r| r.value).collect())
                    .collect();
                for i in zero_variance_groups(&rewards) {
                    w.scored.remove(&seqs[i]);
                    w.dropped += 1;
                }
                if w.scored.len() < b && w.rounds < self.cfg().grpo.max_gen_batches {
                    let need = b - w.scored.len();
                    self.request_states(step, &mut w, need).await?;
                    self.steps.insert(step, w);
                    return Ok(());
                }
            }
            let ready = complete && !self.learner_busy;
            if ready {
                let batch: Vec<ScoredGroup> = w.scored.values().take(b).cloned().collect();
                if batch.is_empty() {
                    return Err(format!(
                        "step {step}: every group was dropped by dynamic sampling"
                    )
                    .into());
                }
                let cursor = ractor::call_t!(self.a.env, EnvMsg::Cursor, 60_000)?;
                let last = step + 1 == self.end_step;
                let checkpoint =
                    last || (step + 1).is_multiple_of(self.cfg().train.checkpoint_every);
                self.learner.cast(LearnerMsg::Update {
                    step,
                    batch,
                    cursor,
                    checkpoint,
                })?;
                self.learner_busy = true;
                w.sent = true;
                w.cursor = cursor;
                w.checkpointed = checkpoint;
                if self.a.stop_while_learning == Some(step) {
                    self.myself.cast(SupMsg::Stop)?;
                }
            }
            self.steps.insert(step, w);
        }
        self.launch_ready().await
    }

    fn finish(&mut self, result: Result<RunSummary, String>) {
        if let Some(r) = self.reply.take() {
            let _ = r.send(result);
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupMsg;
    type State = SupState;
    type Arguments = SupArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupMsg>,
        a: SupArgs,
    ) -> Result<SupState, ActorProcessingErr> {
        let cfg = a.shared.cfg.clone();
        let SupArgs {
            shared,
            env,
            metrics,
            learner,
            start_step,
            weights,
            ema,
            fail_policy_at_step,
            stop_while_learning,
            policies_panic_from_step,
        } = a;
        let largs = super::learner::LearnerArgs {
            learner,
            shared: shared.clone(),
            supervisor: myself.clone(),
        };
        let (learner, _) =
            Actor::spawn_linked(None, super::learner::LearnerActor, largs, myself.get_cell())
                .await?;
        let a = SupArgs2 {
            shared,
            env,
            metrics,
            start_step,
            weights,
            ema,
            fail_policy_at_step,
            stop_while_learning,
            policies_panic_from_step,
        };
        let mut versions = BTreeMap::new();
        versions.insert(a.start_step, (a.weights.clone(), a.ema.clone()));
        let outbox = match &cfg.cluster {
            Some(_) => Some(Arc::new(Outbox::new(&a.shared, &a.weights)?)),
            None => None,
        };
        let mut st = SupState {
            learner,
            policies: vec![],
            outbox,
            verifiers: vec![],
            by_id: HashMap::new(),
            versions,
            updates_done: a.start_step,
            steps: BTreeMap::new(),
            next_launch: a.start_step,
            learner_busy: false,
            end_step: cfg.train.steps,
            reply: None,
            reissued_total: 0,
            fault_pending: a.fail_policy_at_step,
            faults: Faults::default(),
            myself: myself.clone(),
            a,
        };
        st.by_id.insert(st.learner.get_id(), Role::Learner);
        for i in 0..cfg.rollout.policies {
            let fail = if i == 0 { st.fault_pending } else { None };
            let p = Supervisor::spawn_policy(&myself, &st, i, fail).await?;
            st.by_id.insert(p.get_id(), Role::Policy(i));
            st.policies.push(Slot {
                actor: p,
                remote: None,
                live: true,
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
            let v = Supervisor::spawn_verifier(&myself, &st, i).await?;
            st.by_id.insert(v.get_id(), Role::Verifier(i));
            st.verifiers.push(v);
        }
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<SupMsg>,
        msg: SupMsg,
        st: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupMsg::Run(reply) => {
                st.reply = Some(reply);
                if st.a.start_step >= st.end_step {
                    st.finish(Ok(RunSummary {
                        steps: st.updates_done,
                        reissued: 0,
                    }));
                    myself.stop(None);
                    return Ok(());
                }
                st.launch_ready().await?;
            }
            SupMsg::Sampled(work) => {
                let Some(w) = st.steps.get_mut(&work.step) else {
                    return Ok(());
                };
                w.rollout_s += work.seconds;
                let remote = st
                    .policies
                    .get(work.worker)
                    .is_some_and(|p| p.remote.is_some());
                let (ver, (policy, ema)) = (w.version, st.versions[&w.version].clone());
                for g in work.items {
                    // A late answer from a policy that was restarted: its states were re-issued.
                    let Some(_) = w.sampling.remove(&g.seq) else {
                        continue;
                    };
                    w.remote_states += remote as usize;
                    let v = (g.seq % st.verifiers.len() as u64) as usize;
                    w.scoring.insert(g.seq, (g.clone(), v));
                    debug_assert_eq!(g.version, ver);
                    st.verifiers[v].cast(VerifierMsg::Score {
                        step: work.step,
                        group: g,
                        policy: policy.clone(),
                        ema: ema.clone(),
                    })?;
                }
            }
            SupMsg::Scored(work) => {
                let Some(w) = st.steps.get_mut(&work.step) else {
                    return Ok(());
                };
                w.verify_s += work.seconds;
                for sg in work.items {
                    if w.scoring.remove(&sg.group.seq).is_some() {
                        w.scored.insert(sg.group.seq, sg);
                    }
                }
                if w.sampling.is_empty() && w.scoring.is_empty() {
                    st.advance().await?;
                }
            }
            SupMsg::Updated(u) => {
                st.learner_busy = false;
                let w = st.steps.remove(&u.step).unwrap_or_default();
                let m = step_metrics(
                    &st.a.shared,
                    u.step,
                    &w.scored,
                    &u.stats,
                    w.version,
                    w.reissued,
                    w.dropped,
                    w.remote_states,
                    w.rollout_s,
                    w.verify_s,
                    u.seconds,
                    w.started,
                );
                st.a.metrics.cast(MetricsMsg::Step(m))?;
                st.updates_done = u.step + 1;
                st.versions
                    .insert(st.updates_done, (u.weights.clone(), u.ema.clone()));
                // Keep only the versions a step in progress may still sample from.
                let oldest = st
                    .steps
                    .values()
                    .map(|w| w.version)
                    .min()
                    .unwrap_or(st.updates_done)
                    .min(st.updates_done);
                st.versions.retain(|&v, _| v >= oldest);
                if st.updates_done >= st.end_step {
                    if !w.checkpointed {
                        // Stopped early (Ctrl-C) after an update that wrote none: write it now.
                        st.learner.cast(LearnerMsg::Checkpoint {
                            steps: st.updates_done,
                            cursor: w.cursor,
                        })?;
                        return Ok(());
                    }
                    let summary = RunSummary {
                        steps: st.updates_done,
                        reissued: st.reissued_total,
                    };
                    st.finish(Ok(summary));
                    myself.stop(None);
                    return Ok(());
                }
                st.advance().await?;
            }
            SupMsg::Checkpointed => {
                let summary = RunSummary {
                    steps: st.updates_done,
                    reissued: st.reissued_total,
                };
                st.finish(Ok(summary));
                myself.stop(None);
            }
            SupMsg::Stop => {
                // Finish the step in progress (its update writes a checkpoint), launch nothing new.
                st.end_step = (st.updates_done + 1).min(st.end_step);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupMsg>,
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
        match role {
            Role::Policy(i) => {
                let held: Vec<u64> = st
                    .steps
                    .values()
                    .flat_map(|w| {
                        w.sampling
                            .iter()
                            .filter(|(_, (_, p))| *p == i)
                            .map(|(k, _)| *k)
                    })
                    .collect();
                if let Some(stop) = st.faults.record(&format!("policy {i}"), &why, &held) {
                    st.finish(Err(format!("the run stopped: {stop}")));
                    myself.stop(Some("repeated failures".into()));
                    return Ok(());
                }
                tracing::warn!(policy = i, reason = %why, "policy failed; restarting it and re-issuing its states");
                st.fault_pending = None;
                let p = Supervisor::spawn_policy(&myself, st, i, None).await?;
                st.by_id.insert(p.get_id(), Role::Policy(i));
                st.policies[i].actor = p;
                st.reissue(i, &[i])?;
            }
            Role::Remote(i) => {
                tracing::warn!(slot = i, reason = %why, "a policy worker is gone; its states go to the other policies");
                st.policies[i].live = false;
                let live = st.live_policies();
                st.reissue(i, &live)?;
            }
            Role::Verifier(i) => {
                let held: Vec<u64> = st
                    .steps
                    .values()
                    .flat_map(|w| {
                        w.scoring
                            .iter()
                            .filter(|(_, (_, v))| *v == i)
                            .map(|(k, _)| *k)
                    })
                    .collect();
                if let Some(stop) = st.faults.record(&format!("verifier {i}"), &why, &held) {
                    st.finish(Err(format!("the run stopped: {stop}")));
                    myself.stop(Some("repeated failures".into()));
                    return Ok(());
                }
                tracing::warn!(verifier = i, reason = %why, "verifier failed; restarting it and re-issuing its groups");
                let v = Supervisor::spawn_verifier(&myself, st, i).await?;
                st.by_id.insert(v.get_id(), Role::Verifier(i));
                st.verifiers[i] = v;
                let mut resend = vec![];
                for (&step, w) in st.steps.iter_mut() {
                    for (g, vi) in w.scoring.values() {
                        if *vi == i {
                            w.reissued += 1;
                            st.reissued_total += 1;
                            resend.push((step, w.version, g.clone()));
                        }
                    }
                }
                for (step, version, group) in resend {
                    let (policy, ema) = st.versions[&version].clone();
                    st.verifiers[i].cast(VerifierMsg::Score {
                        step,
                        group,
                        policy,
                        ema,
                    })?;
                }
            }
            Role::Learner => {
                st.finish(Err(format!("the learner failed: {why}")));
                myself.stop(Some("learner failed".into()));
            }
        }
        Ok(())
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

impl ractor::Message for SupMsg {}
