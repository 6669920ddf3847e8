//! `rpt worker`: join a run as a policy worker (ractor_cluster scale-out).

use std::time::Duration;

use anyhow::Result;
use rpt::actors::{WorkerOptions, serve_worker};

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// The run's `cluster.listen` address as this machine reaches it, e.g. `10.0.0.5:4870`.
    #[arg(long)]
    pub connect: String,
    /// The run's `cluster.cookie` (or set RPT_CLUSTER_COOKIE).
    #[arg(long, env = "RPT_CLUSTER_COOKIE", hide_env_values = true)]
    pub cookie: String,
    /// Name of this worker's cluster node, as the run's connection logs show it; default: host name
    /// and process id.
    #[arg(long)]
    pub name: Option<String>,
    /// Keep trying to reach the run for this many seconds.
    #[arg(long, default_value_t = 300.0)]
    pub wait: f64,
    /// Test hook: exit abruptly when sample request N + 1 arrives, as a crashed machine would.
    #[arg(long, hide = true)]
    pub exit_after_samples: Option<usize>,
}

pub fn run(a: &WorkerArgs) -> Result<()> {
    anyhow::ensure!(
        a.wait.is_finite() && a.wait >= 0.0,
        "--wait: expected a number of seconds >= 0, got {}",
        a.wait
    );
    let opts = WorkerOptions {
        connect: a.connect.clone(),
        cookie: a.cookie.clone(),
        name: a
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", rpt::actors::hostname(), std::process::id())),
        wait: Duration::from_secs_f64(a.wait),
        device: super::device()?,
        exit_after_samples: a.exit_after_samples,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let s = rt.block_on(serve_worker(opts))?;
    println!(
        "worker done: {} requests, {} states sampled, {} weight versions received",
        s.requests, s.states, s.weight_versions
    );
    Ok(())
}
