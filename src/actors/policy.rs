//! A policy actor: samples G completions per state with candle on a blocking thread, from the weight
//! snapshot named in each request, and sends the groups back to the supervisor as a message.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::job::{self, Reply};
use super::messages::{PolicyMsg, RunShared, SupMsg};
use crate::rollout::sample_groups;

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
                let _span = tracing::debug_span!(
                    "policy.sample",
                    policy = st.id,
                    step,
                    states = states.len()
                )
                .entered();
                let shared = st.shared.clone();
                let panic_from = st.panic_from_step;
                let reply = Reply {
                    actor: myself,
                    failed: PolicyMsg::Failed,
                    supervisor: st.supervisor.clone(),
                    done: SupMsg::Sampled,
                    worker: st.id,
                    step,
                };
                job::spawn(reply, move || {
                    if panic_from.is_some_and(|s| step >= s) {
                        panic!("injected panic sampling step {step}");
                    }
                    let cfg = &shared.cfg;
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
                        cfg.rollout.kv_cache_tokens,
                    )
                });
            }
            PolicyMsg::Failed(e) => return Err(e.into()),
        }
        Ok(())
    }
}
