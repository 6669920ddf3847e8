//! The learner actor: runs each GRPO update on a blocking thread, writes checkpoints, and returns the new
//! weight snapshot to the supervisor, which hands it to the policies.

use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::messages::{LearnerMsg, RunShared, SupMsg, Updated};
use crate::checkpoint::{self, TrainerState};
use crate::learn::Learner;
use crate::model::{Decoder, TensorMap};

pub struct LearnerActor;

pub struct LearnerArgs {
    pub learner: Learner,
    pub shared: Arc<RunShared>,
    pub supervisor: ActorRef<SupMsg>,
}

pub struct LearnerState {
    learner: Arc<Mutex<Learner>>,
    shared: Arc<RunShared>,
    supervisor: ActorRef<SupMsg>,
}

impl Actor for LearnerActor {
    type Msg = LearnerMsg;
    type State = LearnerState;
    type Arguments = LearnerArgs;

    async fn pre_start(
        &self,
        _: ActorRef<LearnerMsg>,
        a: LearnerArgs,
    ) -> Result<LearnerState, ActorProcessingErr> {
        Ok(LearnerState {
            learner: Arc::new(Mutex::new(a.learner)),
            shared: a.shared,
            supervisor: a.supervisor,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<LearnerMsg>,
        msg: LearnerMsg,
        st: &mut LearnerState,
    ) -> Result<(), ActorProcessingErr> {
        let (learner, shared, sup) = (st.learner.clone(), st.shared.clone(), st.supervisor.clone());
        let (step, batch, cursor, checkpoint) = match msg {
            LearnerMsg::Update {
                step,
                batch,
                cursor,
                checkpoint,
            } => (step, batch, cursor, checkpoint),
            LearnerMsg::Checkpoint { steps, cursor } => {
                let written = tokio::task::spawn_blocking(move || -> crate::Result<()> {
                    let l = learner.lock().expect("learner lock");
                    let state = TrainerState {
                        step: steps,
                        cursor,
                        optimizer_step: l.opt.step,
                        seed: shared.cfg.seed,
                    };
                    checkpoint::write(
                        &shared.cfg.run_dir,
                        &l,
                        &l.params.config,
                        &shared.tokenizer,
                        &state,
                    )?;
                    Ok(())
                })
                .await?;
                written.map_err(|e| format!("learner: checkpoint: {e}"))?;
                let _ = sup.cast(SupMsg::Checkpointed);
                return Ok(());
            }
        };
        let result = tokio::task::spawn_blocking(move || -> crate::Result<Updated> {
            let t0 = std::time::Instant::now();
            let mut l = learner.lock().expect("learner lock");
            let stats = l.update(&batch)?;
            let cfg_model = l.params.config.clone();
            let weights = Arc::new(Decoder::new(&cfg_model, &l.policy_weights()?)?);
            let ema = match &l.ema {
                Some(phi) => Some(Arc::new(Decoder::new(&cfg_model, &copy(phi)?)?)),
                None => None,
            };
            if checkpoint {
                let state = TrainerState {
                    step: step + 1,
                    cursor,
                    optimizer_step: l.opt.step,
                    seed: shared.cfg.seed,
                };
                let dir = checkpoint::write(
                    &shared.cfg.run_dir,
                    &l,
                    &cfg_model,
                    &shared.tokenizer,
                    &state,
                )?;
                tracing::info!(step = step + 1, dir = %dir.display(), "checkpoint written");
            }
            Ok(Updated {
                step,
                stats,
                weights,
                ema,
                seconds: t0.elapsed().as_secs_f64(),
            })
        })
        .await?;
        match result {
            Ok(u) => {
                let _ = sup.cast(SupMsg::Updated(Box::new(u)));
                Ok(())
            }
            Err(e) => Err(format!("learner, step {}: {e}", step + 1).into()),
        }
    }
}

fn copy(map: &TensorMap) -> crate::Result<TensorMap> {
    map.iter()
        .map(|(k, t)| Ok((k.clone(), t.copy()?)))
        .collect()
}
