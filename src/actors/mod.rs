//! The RPT loop as actors (ractor on tokio), one file per actor:
//! environment → policy (G rollouts per state) → verifier (rewards) → learner (GRPO, checkpoints), with a
//! supervisor that forwards every event to the schedule (`schedule.rs`, a plain tested struct),
//! restarts failed policies and verifiers, and a metrics actor writing `metrics.jsonl`. Their messages
//! are in `messages.rs`; candle work runs on blocking threads (`job.rs`), never inside a handler. The
//! run is set up (checked, loaded, its directory written) by `pipeline::train`, which calls [`run`].

mod cluster;
mod environment;
mod faults;
mod interrupt;
mod job;
mod learner;
mod messages;
mod metrics;
mod policy;
mod record;
mod schedule;
mod supervisor;
mod verifier;
pub mod wire;
mod worker;

pub use messages::RunShared;
pub use metrics::{PLACEMENT_KEYS, SAMPLES_PER_STEP, TIMING_KEYS, last_cumulative_flops};
pub use schedule::Summary as RunSummary;
pub use supervisor::Hooks;
pub use worker::{WorkerOptions, WorkerSummary, check_address, hostname, serve as serve_worker};

use std::path::PathBuf;
use std::sync::Arc;

use ractor::Actor;

use crate::env::Environment;
use crate::error::{Error, Result};
use crate::learn::Learner;
use crate::model::Decoder;

/// Everything a run's actors start from, prepared and checked by `pipeline::train`.
pub struct RunParts {
    pub shared: Arc<RunShared>,
    /// Already at the run's cursor.
    pub env: Box<dyn Environment>,
    pub learner: Learner,
    /// Optimizer steps already done (0 for a new run).
    pub start_step: u64,
    /// The weights the first step samples from, and their EMA teacher (`info_gain`).
    pub weights: Arc<Decoder>,
    pub ema: Option<Arc<Decoder>>,
    /// `metrics.jsonl`, appended to.
    pub metrics_path: PathBuf,
    /// The progress bar, at `start_step`.
    pub bar: indicatif::ProgressBar,
}

/// Spawns the actors and runs until the last step, a stop (Ctrl-C, `interrupt.rs`), or a failure the
/// supervisor does not restart from.
pub async fn run(parts: RunParts, hooks: Hooks) -> Result<RunSummary> {
    let cfg = parts.shared.cfg.clone();
    let cluster = match &cfg.cluster {
        Some(c) => Some(cluster::Cluster::start(c).await?),
        None => None,
    };
    let spawn_err = |e: ractor::SpawnErr| Error::Run(format!("starting the actors: {e}"));
    let (env_ref, env_h) = Actor::spawn(None, environment::EnvironmentActor, parts.env)
        .await
        .map_err(spawn_err)?;
    let margs = metrics::MetricsArgs {
        path: parts.metrics_path,
        bar: parts.bar,
    };
    let (metrics_ref, metrics_h) = Actor::spawn(None, metrics::MetricsActor, margs)
        .await
        .map_err(spawn_err)?;
    let sargs = supervisor::SupArgs {
        shared: parts.shared,
        env: env_ref.clone(),
        metrics: metrics_ref.clone(),
        start_step: parts.start_step,
        weights: parts.weights,
        ema: parts.ema,
        hooks,
    };
    let (sup, sup_h) = Actor::spawn(None, supervisor::Supervisor, (sargs, parts.learner))
        .await
        .map_err(spawn_err)?;
    let stopper = sup.clone();
    let ctrl_c = interrupt::during_run(&cfg.run_dir, move || {
        let _ = stopper.cast(messages::SupMsg::Stop);
    });
    let outcome = ractor::call!(sup, messages::SupMsg::Run);
    drop(ctrl_c);
    sup.stop(None);
    let _ = sup_h.await;
    env_ref.stop(None);
    // Drain, not stop: the last step's metrics line is queued and must be written.
    let _ = metrics_ref
        .drain_and_wait(Some(std::time::Duration::from_secs(60)))
        .await;
    let _ = env_h.await;
    let _ = metrics_h.await;
    if let Some(c) = cluster {
        c.stop().await;
    }
    match outcome {
        Ok(Ok(summary)) => Ok(summary),
        Ok(Err(e)) => Err(Error::Run(e)),
        Err(e) => Err(Error::Run(format!("the run stopped: {e}"))),
    }
}
