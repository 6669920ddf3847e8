//! The metrics actor: one JSON line per step in `metrics.jsonl` (flushed each line), a progress bar, and
//! a `tracing` event per step.

use std::io::Write;

use ractor::{Actor, ActorProcessingErr, ActorRef};

pub struct MetricsActor;

pub struct MetricsState {
    file: std::fs::File,
    bar: indicatif::ProgressBar,
}

pub enum MetricsMsg {
    /// One step's metrics (a JSON object with at least `step`, `reward_mean`, `accuracy`, `tokens_per_s`).
    Step(serde_json::Value),
}

pub struct MetricsArgs {
    pub path: std::path::PathBuf,
    pub total_steps: u64,
    pub start_step: u64,
}

impl Actor for MetricsActor {
    type Msg = MetricsMsg;
    type State = MetricsState;
    type Arguments = MetricsArgs;

    async fn pre_start(
        &self,
        _: ActorRef<MetricsMsg>,
        a: MetricsArgs,
    ) -> Result<MetricsState, ActorProcessingErr> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&a.path)?;
        let bar = crate::pipeline::progress(a.total_steps, "train");
        bar.set_position(a.start_step);
        Ok(MetricsState { file, bar })
    }

    async fn handle(
        &self,
        _: ActorRef<MetricsMsg>,
        msg: MetricsMsg,
        st: &mut MetricsState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MetricsMsg::Step(v) => {
                writeln!(st.file, "{v}")?;
                st.file.flush()?;
                let f = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
                tracing::info!(
                    step = f("step"),
                    reward = f("reward_mean"),
                    accuracy = f("accuracy"),
                    tokens_per_s = f("tokens_per_s"),
                    "step"
                );
                st.bar.set_message(format!(
                    "reward {:.3} acc {:.3} {:.0} tok/s",
                    f("reward_mean"),
                    f("accuracy"),
                    f("tokens_per_s")
                ));
                st.bar.inc(1);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<MetricsMsg>,
        st: &mut MetricsState,
    ) -> Result<(), ActorProcessingErr> {
        st.bar.finish_and_clear();
        Ok(())
    }
}

impl ractor::Message for MetricsMsg {}
