//! The RPT loop as actors (ractor on tokio), one file per actor:
//! environment → policy (G rollouts per state) → verifier (rewards) → learner (GRPO, checkpoints), with a
//! supervisor that schedules, restarts failed policies and verifiers, and re-issues their work, and a
//! metrics actor writing `metrics.jsonl`. Candle work runs on blocking threads, never inside a handler.

mod cluster;
mod environment;
mod learner;
mod metrics;
mod policy;
mod supervisor;
mod verifier;
pub mod wire;
mod worker;

pub use worker::{WorkerOptions, WorkerSummary, check_address, hostname, serve as serve_worker};

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ractor::Actor;

use crate::checkpoint;
use crate::config::Config;
use crate::env::{CorpusEnvironment, Environment, Split};
use crate::error::{Error, Result};
use crate::learn::{Learner, UpdateStats};
use crate::model::{Checkpoint, Decoder, Device, SampleParams, Tokenizer, load_weights};
use crate::pipeline::{load_texts, prepare::load_index, tokenize_splits};
use crate::prompt::Prompt;
use crate::reward::{FormatFailure, RewardFn, by_name};
use crate::rollout::ScoredGroup;

/// Read-only context every actor of a run shares.
pub struct RunShared {
    pub cfg: Config,
    pub tokenizer: Arc<Tokenizer>,
    pub prompt: Prompt,
    pub reward: Arc<dyn RewardFn>,
    pub sample_params: SampleParams,
}

/// A finished piece of work coming back to the supervisor.
pub struct Work<T> {
    pub worker: usize,
    pub step: u64,
    pub seconds: f64,
    pub items: Vec<T>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunSummary {
    /// Optimizer steps completed (the run's total, resumed steps included).
    pub steps: u64,
    /// States handed out again after a policy or verifier failed.
    pub reissued: usize,
}

/// Runs a blocking job, turning a panic into an error with the panic's message, so that a job that
/// panics on its thread fails its actor (and the supervisor hears of it) instead of vanishing.
pub(crate) fn run_job<T, E: std::fmt::Display>(
    job: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            Err(format!("panicked: {msg}"))
        }
    }
}

/// Metrics keys that measure time; everything else is deterministic for a given seed.
pub const TIMING_KEYS: &[&str] = &["rollout_s", "verify_s", "learn_s", "step_s", "tokens_per_s"];

/// Metrics keys that say where work ran (which policy workers were connected); they do not change what
/// is learned.
pub const PLACEMENT_KEYS: &[&str] = &["remote_states"];

/// Options of one `rpt train` invocation.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    pub resume: bool,
    /// Test hook: policy 0 fails once at this step; the run must complete regardless.
    pub fail_policy_at_step: Option<u64>,
    /// Test hook: a stop request (as Ctrl-C sends) arrives while this step's update is running.
    pub stop_while_learning: Option<u64>,
    /// Resume even though keys that change what the run computes differ from the saved config; the
    /// old config is kept as `config.before-step-NNNNNN.toml` and the change logged.
    pub allow_config_change: bool,
    /// Test hook: from this step on, every sampling job of every policy panics, as a deterministic
    /// fault would.
    pub policies_panic_from_step: Option<u64>,
}

#[allow(clippy::too_many_arguments)]
fn step_metrics(
    shared: &RunShared,
    step: u64,
    scored: &BTreeMap<u64, ScoredGroup>,
    u: &UpdateStats,
    version: u64,
    reissued: usize,
    dropped: usize,
    remote_states: usize,
    rollout_s: f64,
    verify_s: f64,
    learn_s: f64,
    started: Option<std::time::Instant>,
) -> serde_json::Value {
    let rewards: Vec<f64> = scored
        .values()
        .flat_map(|g| g.rewards.iter().map(|r| r.value))
        .collect();
    let n = rewards.len().max(1) as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    let std = (rewards.iter().map(|r| (r - mean) * (r - mean)).sum::<f64>() / n).sqrt();
    let correct = scored
        .values()
        .flat_map(|g| &g.rewards)
        .filter(|r| r.correct)
        .count() as f64
        / n;
    let mut failures: BTreeMap<&str, usize> =
        FormatFailure::ALL.iter().map(|f| (f.as_str(), 0)).collect();
    for r in scored.values().flat_map(|g| &g.rewards) {
        if let Some(f) = r.format {
            *failures.entry(f.as_str()).or_default() += 1;
        }
    }
    let comps: Vec<&crate::rollout::Completion> =
        scored.values().flat_map(|g| &g.group.completions).collect();
    let tokens: usize = comps.iter().map(|c| c.tokens.len()).sum();
    let cn = comps.len().max(1) as f64;
    serde_json::json!({
        "step": step + 1,
        "reward_mean": mean,
        "reward_std": std,
        "accuracy": correct,
        "format_failures": failures,
        "format_failure_rate": failures.values().sum::<usize>() as f64 / n,
        "completion_len": tokens as f64 / cn,
        "thought_len": comps.iter().map(|c| c.thought_len).sum::<usize>() as f64 / cn,
        "entropy": u.loss.entropy,
        "approx_kl": u.loss.approx_kl,
        "kl_ref": u.loss.kl_ref,
        "clip_low": u.loss.clip_low,
        "clip_high": u.loss.clip_high,
        "loss": u.loss.loss,
        "grad_norm": u.grad_norm,
        "lr": u.lr,
        "advantage_mean": u.advantage_mean,
        "advantage_std": u.advantage_std,
        "groups": scored.len(),
        "states": scored.keys().collect::<Vec<_>>(),
        "groups_dropped": dropped,
        "states_reissued": reissued,
        "remote_states": remote_states,
        "weight_version_lag": step - version,
        "rollout_s": rollout_s,
        "verify_s": verify_s,
        "learn_s": learn_s,
        "step_s": started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0),
        "tokens_per_s": tokens as f64 / rollout_s.max(1e-9),
        "reward_variant": shared.reward.name(),
    })
}

/// Keeps the lines of `metrics.jsonl` before `step` (so a resumed run continues a clean file).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    crate::model::write_atomic(path, out.as_bytes())?;
    Ok(())
}

/// Runs `cfg.train.steps` optimizer steps (continuing from the last checkpoint with `resume`).
///
/// Everything is checked before anything is written: the resume point, the model and its fit to the
/// configured lengths, the corpus and its index, the checkpoint's weights and optimizer state, and (on
/// resume) that the config still means what the run's earlier steps used.
pub async fn train(cfg: &Config, opts: &TrainOptions, device: &Device) -> Result<RunSummary> {
    let run = &cfg.run_dir;
    let latest = checkpoint::latest(run)?;
    if latest.is_none() && opts.resume {
        return Err(Error::Run(format!(
            "{}: no checkpoint to resume from; run without --resume",
            run.display()
        )));
    }
    if latest.is_some() && !opts.resume {
        return Err(Error::Run(format!(
            "{} already holds checkpoints; pass --resume to continue it, or choose another `run_dir`",
            run.display()
        )));
    }
    let base = Checkpoint::load(&cfg.model.path, device)?;
    let prompt = Prompt::new(&cfg.prompt.template, &base.tokenizer)?;
    crate::pipeline::checks::check_lengths(cfg, &base.config, &prompt, &cfg.model.path)?;
    let saved_path = run.join("config.toml");
    let changes = match (opts.resume, std::fs::read_to_string(&saved_path)) {
        (true, Ok(text)) => {
            let saved: Config = toml::from_str(&text).map_err(|e| {
                Error::Run(format!(
                    "{}: not a readable config: {e}",
                    saved_path.display()
                ))
            })?;
            crate::pipeline::checks::config_changes(&saved, cfg)
        }
        _ => vec![],
    };
    if !changes.is_empty() && !opts.allow_config_change {
        return Err(Error::Run(format!(
            "--resume: the config differs from {} in keys that change what the run computes: {}. \
             Resume with the saved config (--config {}), or pass --allow-config-change to continue \
             with the new one (the old one is kept beside it)",
            saved_path.display(),
            changes.join(", "),
            saved_path.display()
        )));
    }
    let (start_step, cursor, weights, opt_step) = match (&latest, opts.resume) {
        (Some(dir), true) => {
            let ts = checkpoint::read_state(dir)?;
            (
                ts.step,
                ts.cursor,
                load_weights(dir, &base.config, device)?,
                ts.optimizer_step,
            )
        }
        _ => (0, 0, base.weights.clone(), 0),
    };

    let texts = load_texts(cfg)?;
    let index = load_index(cfg, Split::Train, &texts)?;
    let splits = tokenize_splits(cfg, &texts, &base.tokenizer)?;
    let candidates = index.positions_at_least(cfg.states.min_entropy);
    if candidates.is_empty() {
        return Err(Error::Run(format!(
            "no training position has entropy >= states.min_entropy = {}",
            cfg.states.min_entropy
        )));
    }
    let mut env = CorpusEnvironment::new(
        splits.train,
        candidates,
        base.tokenizer.clone(),
        cfg.states.max_context_tokens,
        cfg.states.max_target_bytes,
        cfg.seed,
    );
    env.seek(cursor);

    let mut learner = Learner::new(cfg, &base.weights, &base.config)?;
    if let (Some(dir), true) = (&latest, opts.resume) {
        learner.load_state(dir, &weights, opt_step)?;
    }
    let current = Arc::new(Decoder::new(&base.config, &weights)?);
    let ema = match &learner.ema {
        Some(phi) => Some(Arc::new(Decoder::new(&base.config, phi)?)),
        None => None,
    };

    // Every check has passed: from here on the run directory is written.
    std::fs::create_dir_all(run).map_err(|e| Error::io(run, e))?;
    if !changes.is_empty() {
        let kept = run.join(format!("config.before-step-{start_step:06}.toml"));
        std::fs::copy(&saved_path, &kept).map_err(|e| Error::io(&kept, e))?;
        let note = serde_json::json!({"step": start_step, "changed": changes, "previous": kept});
        let log = run.join("config_changes.jsonl");
        let mut text = std::fs::read_to_string(&log).unwrap_or_default();
        text.push_str(&format!("{note}\n"));
        crate::model::write_atomic(&log, text.as_bytes())?;
        tracing::warn!(step = start_step, kept = %kept.display(), "the config changed on resume: {}", changes.join(", "));
    }
    let resolved = toml::to_string_pretty(cfg).expect("config serialises");
    crate::model::write_atomic(&saved_path, resolved.as_bytes())?;
    let metrics_path = run.join("metrics.jsonl");
    if opts.resume {
        truncate_metrics(&metrics_path, start_step)?;
    } else if metrics_path.exists() {
        std::fs::remove_file(&metrics_path).map_err(|e| Error::io(&metrics_path, e))?;
    }
    let shared = Arc::new(RunShared {
        cfg: cfg.clone(),
        tokenizer: base.tokenizer.clone(),
        prompt,
        reward: by_name(&cfg.reward.variant)?,
        sample_params: SampleParams {
            temperature: cfg.rollout.temperature,
            top_k: cfg.rollout.top_k,
            top_p: cfg.rollout.top_p,
            max_new_tokens: cfg.rollout.max_new_tokens,
        },
    });

    let cluster = match &cfg.cluster {
        Some(c) => Some(cluster::Cluster::start(c).await?),
        None => None,
    };
    let spawn_err = |e: ractor::SpawnErr| Error::Run(format!("starting the actors: {e}"));
    let (env_ref, env_h) = Actor::spawn(
        None,
        environment::EnvironmentActor,
        Box::new(env) as Box<dyn Environment>,
    )
    .await
    .map_err(spawn_err)?;
    let margs = metrics::MetricsArgs {
        path: metrics_path,
        total_steps: cfg.train.steps,
        start_step,
    };
    let (metrics_ref, metrics_h) = Actor::spawn(None, metrics::MetricsActor, margs)
        .await
        .map_err(spawn_err)?;
    let sargs = supervisor::SupArgs {
        shared,
        env: env_ref.clone(),
        metrics: metrics_ref.clone(),
        learner,
        start_step,
        weights: current,
        ema,
        fail_policy_at_step: opts.fail_policy_at_step,
        stop_while_learning: opts.stop_while_learning,
        policies_panic_from_step: opts.policies_panic_from_step,
    };
    let (sup, sup_h) = Actor::spawn(None, supervisor::Supervisor, sargs)
        .await
        .map_err(spawn_err)?;
    let stopper = sup.clone();
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!(
                "Ctrl-C: finishing the current step, writing a checkpoint, then stopping"
            );
            let _ = stopper.cast(supervisor::SupMsg::Stop);
        }
    });
    let outcome = ractor::call!(sup, supervisor::SupMsg::Run);
    ctrl_c.abort();
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
    let intact = || match checkpoint::latest(run).ok().flatten() {
        Some(dir) => format!(
            "; the last checkpoint, {}, is intact: `rpt train --resume` continues from it",
            dir.display()
        ),
        None => "; no checkpoint had been written yet".into(),
    };
    match outcome {
        Ok(Ok(summary)) => Ok(summary),
        Ok(Err(e)) => Err(Error::Run(format!("{e}{}", intact()))),
        Err(e) => Err(Error::Run(format!("the run stopped: {e}{}", intact()))),
    }
}
