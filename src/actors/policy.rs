//! A policy actor: samples G completions per state with candle on a blocking thread, from the weight
//! snapshot named in each request, and sends the groups back to the supervisor as a message.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::supervisor::SupMsg;
use super::{RunShared, Work};
use crate::env::State;
use crate::rollout::{PolicySnapshot, sample_groups};

pub struct PolicyActor;

pub struct PolicyArgs {
    pub id: usize,
    pub shared: Arc<RunShared>,
    pub supervisor: ActorRef<SupMsg>,
    /// Test hook: fail while handling the first request of this step.
    pub fail_on_step: Option<u64>,
    /// Test hook: every sampling job from this step on panics, as a deterministic fault does.
    pub panic_from_step: Option<u64>,
}

pub enum PolicyMsg {
    /// Sample `group_size` completions for each state with `snapshot`, for optimizer step `step`.
    Sample {
        step: u64,
        snapshot: PolicySnapshot,
        states: Vec<(u64, State)>,
    },
    /// A sampling job failed on its thread: fail this actor so the supervisor restarts it.
    Failed(String),
}

impl Actor for PolicyActor {
    type Msg = PolicyMsg;
    type State = PolicyArgs;
    type Arguments = PolicyArgs;

    async fn pre_start(
        &self,
        _: ActorRef<PolicyMsg>,
        args: PolicyArgs,
    ) -> Result<PolicyArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<PolicyMsg>,
        msg: PolicyMsg,
        st: &mut PolicyArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PolicyMsg::Sample {
                step,
                snapshot,
                states,
            } => {
                if st.fail_on_step == Some(step) {
                    return Err(format!("policy {}: injected failure at step {step}", st.id).into());
                }
                let (shared, sup, id) = (st.shared.clone(), st.supervisor.clone(), st.id);
                let _span =
                    tracing::debug_span!("policy.sample", policy = id, step, states = states.len())
                        .entered();
                let panic_from = st.panic_from_step;
                tokio::task::spawn_blocking(move || {
                    let t0 = std::time::Instant::now();
                    let cfg = &shared.cfg;
                    let job = || {
                        if panic_from.is_some_and(|s| step >= s) {
                            panic!("injected panic sampling step {step}");
                        }
                        sample_groups(
                            &snapshot,
                            &shared.tokenizer,
                            &shared.prompt,
                            &states,
                            cfg.rollout.group_size,
                            &shared.sample_params,
                            cfg.seed,
                            step,
                            true,
                        )
                    };
                    match super::run_job(job) {
                        Ok(groups) => {
                            let _ = sup.cast(SupMsg::Sampled(Work {
                                worker: id,
                                step,
                                seconds: t0.elapsed().as_secs_f64(),
                                items: groups,
                            }));
                        }
                        Err(e) => {
                            let _ = myself.cast(PolicyMsg::Failed(e));
                        }
                    }
                });
            }
            PolicyMsg::Failed(e) => return Err(format!("policy {}: {e}", st.id).into()),
        }
        Ok(())
    }
}

impl ractor::Message for PolicyMsg {}
