//! A verifier actor: scores a group with the configured reward. Model numbers a variant needs come from
//! the policy snapshot that sampled the group (and the EMA teacher for `info_gain`), on a blocking thread.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::supervisor::SupMsg;
use super::{RunShared, Work};
use crate::model::Decoder;
use crate::rollout::{Group, ScoredGroup, score_group};

pub struct VerifierActor;

pub struct VerifierArgs {
    pub id: usize,
    pub shared: Arc<RunShared>,
    pub supervisor: ActorRef<SupMsg>,
}

pub enum VerifierMsg {
    Score {
        step: u64,
        group: Group,
        policy: Arc<Decoder>,
        ema: Option<Arc<Decoder>>,
    },
    Failed(String),
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
                let (shared, sup, id) = (st.shared.clone(), st.supervisor.clone(), st.id);
                tokio::task::spawn_blocking(move || {
                    let t0 = std::time::Instant::now();
                    let job = || {
                        score_group(
                            shared.reward.as_ref(),
                            &group,
                            &policy,
                            ema.as_deref(),
                            &shared.tokenizer,
                        )
                    };
                    match super::run_job(job) {
                        Ok(rewards) => {
                            let scored = ScoredGroup { group, rewards };
                            let _ = sup.cast(SupMsg::Scored(Work {
                                worker: id,
                                step,
                                seconds: t0.elapsed().as_secs_f64(),
                                items: vec![scored],
                            }));
                        }
                        Err(e) => {
                            let _ = myself.cast(VerifierMsg::Failed(e));
                        }
                    }
                });
            }
            VerifierMsg::Failed(e) => return Err(format!("verifier {}: {e}", st.id).into()),
        }
        Ok(())
    }
}

impl ractor::Message for VerifierMsg {}
