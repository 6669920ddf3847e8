//! A verifier actor: scores a group with the configured reward. Model numbers a variant needs come from
//! the policy snapshot that sampled the group (and the EMA teacher for `info_gain`), on a blocking thread.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::job::{self, Reply};
use super::messages::{RunShared, SupMsg, VerifierMsg};
use crate::rollout::{ScoredGroup, score_group};

pub struct VerifierActor;

pub struct VerifierArgs {
    pub id: usize,
    pub shared: Arc<RunShared>,
    pub supervisor: ActorRef<SupMsg>,
}

impl Actor for VerifierActor {
    type Msg = VerifierMsg;
    type State = VerifierArgs;
    type Arguments = VerifierArgs;

    async fn pre_start(
        &self,
        _: ActorRef<VerifierMsg>,
        args: VerifierArgs,
    ) -> Result<VerifierArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<VerifierMsg>,
        msg: VerifierMsg,
        st: &mut VerifierArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            VerifierMsg::Score {
                step,
                group,
                policy,
                ema,
            } => {
                let shared = st.shared.clone();
                let reply = Reply {
                    actor: myself,
                    failed: VerifierMsg::Failed,
                    supervisor: st.supervisor.clone(),
                    done: SupMsg::Scored,
                    worker: st.id,
                    step,
                };
                job::spawn(reply, move || {
                    let rewards = score_group(
                        shared.reward.as_ref(),
                        &group,
                        &policy,
                        ema.as_deref(),
                        &shared.tokenizer,
                    )?;
                    Ok::<_, crate::Error>(vec![ScoredGroup { group, rewards }])
                });
            }
            VerifierMsg::Failed(e) => return Err(e.into()),
        }
        Ok(())
    }
}
