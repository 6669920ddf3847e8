//! `rpt train`'s run, set up: everything is checked and loaded before anything is written (the resume
//! point, the model and its fit to the configured lengths, the corpus and its index, the checkpoint's
//! weights and optimizer state, and on resume that the config still means what the earlier steps
//! used); then the run directory is written and the actor system (`crate::actors`) runs the steps.

use std::path::Path;
use std::sync::Arc;

use crate::actors::{self, Hooks, RunParts, RunShared, RunSummary};
use crate::checkpoint;
use crate::config::Config;
use crate::env::{CorpusEnvironment, Environment, Split};
use crate::error::{Error, Result};
use crate::learn::Learner;
use crate::model::{Checkpoint, Decoder, Device, SampleParams};
use crate::prompt::Prompt;
use crate::reward::from_config as reward_from_config;

use super::{load_texts, prepare::load_index, tokenize_splits};

/// Options of one `rpt train` invocation.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    pub resume: bool,
    /// Resume even though keys that change what the run computes differ from the saved config; the
    /// old config is kept as `config.before-step-NNNNNN.toml` and the change logged.
    pub allow_config_change: bool,
    /// Test hook: policy 0 fails once at this step; the run must complete regardless.
    pub fail_policy_at_step: Option<u64>,
    /// Test hook: a stop request (as Ctrl-C sends) arrives while this step's update is running.
    pub stop_while_learning: Option<u64>,
    /// Test hook: from this step on, every sampling job of every policy panics, as a deterministic
    /// fault would.
    pub policies_panic_from_step: Option<u64>,
}

/// Keeps the lines of a per-step file (`metrics.jsonl`, `samples.jsonl`) up to `step` (so a resumed run
/// continues a clean file).
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

/// The training positions of `cfg`'s corpus whose difficulty passes `states.min_entropy`, in the
/// environment's seeded order (the states an RPT run and its next-token baseline both go through).
pub(super) fn training_environment(
    cfg: &Config,
    tok: &Arc<crate::model::Tokenizer>,
) -> Result<CorpusEnvironment> {
    let texts = load_texts(cfg)?;
    let index = load_index(cfg, Split::Train, &texts)?;
    let splits = tokenize_splits(cfg, &texts, tok)?;
    let candidates = index.positions_at_least(cfg.states.min_entropy);
    if candidates.is_empty() {
        return Err(Error::Run(format!(
            "no training position has entropy >= states.min_entropy = {}",
            cfg.states.min_entropy
        )));
    }
    Ok(CorpusEnvironment::new(
        splits.train,
        candidates,
        tok.clone(),
        cfg.states.max_context_tokens,
        cfg.states.max_target_bytes,
        cfg.seed,
    ))
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
    let mut base = Checkpoint::load(&cfg.model.path, device)?;
    let prompt = Prompt::new(&cfg.prompt.template, &base.tokenizer)?;
    super::checks::check_lengths(cfg, &base.config, &prompt, &cfg.model.path)?;
    let saved_path = run.join("config.toml");
    let changes = match (opts.resume, std::fs::read_to_string(&saved_path)) {
        (true, Ok(text)) => {
            let saved: Config = toml::from_str(&text).map_err(|e| {
                Error::Run(format!(
                    "{}: not a readable config: {e}",
                    saved_path.display()
                ))
            })?;
            super::checks::config_changes(&saved, cfg)
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
    let (start_step, cursor, opt_step) = match (&latest, opts.resume) {
        (Some(dir), true) => {
            let ts = checkpoint::read_state(dir)?;
            (ts.step, ts.cursor, ts.optimizer_step)
        }
        _ => (0, 0, 0),
    };

    let mut env = training_environment(cfg, &base.tokenizer)?;
    env.seek(cursor);

    let mut learner = Learner::new(cfg, &base.weights, &base.config)?;
    // The learner holds the weights from here on: the loaded copies go (a model's size of memory).
    // A reference model for the KL term keeps its own.
    base.weights.clear();
    if let (Some(dir), true) = (&latest, opts.resume) {
        checkpoint::restore(dir, &mut learner, opt_step)?;
    }
    let current = Arc::new(Decoder::new(&base.config, &learner.policy_weights()?)?);
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
    // Per-step files: kept up to the checkpoint on resume, started afresh otherwise. The TensorBoard
    // events are rewritten from `metrics.jsonl` by the metrics actor.
    for path in [&metrics_path, &run.join("samples.jsonl")] {
        if opts.resume {
            truncate_metrics(path, start_step)?;
        } else if path.exists() {
            std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
        }
    }
    let shared = Arc::new(RunShared {
        cfg: cfg.clone(),
        tokenizer: base.tokenizer.clone(),
        prompt,
        reward: reward_from_config(&cfg.reward)?,
        sample_params: SampleParams {
            temperature: cfg.rollout.temperature,
            top_k: cfg.rollout.top_k,
            top_p: cfg.rollout.top_p,
            max_new_tokens: cfg.rollout.max_new_tokens,
        },
        model: base.config.clone(),
    });

    let bar = super::progress(cfg.train.steps, "train");
    bar.set_position(start_step);
    let parts = RunParts {
        shared,
        env: Box::new(env),
        learner,
        start_step,
        weights: current,
        ema,
        metrics_path,
        bar,
    };
    let hooks = Hooks {
        fail_policy_at_step: opts.fail_policy_at_step,
        stop_while_learning: opts.stop_while_learning,
        policies_panic_from_step: opts.policies_panic_from_step,
    };
    actors::run(parts, hooks)
        .await
        .map_err(|e| Error::Run(format!("{e}; {}", checkpoint::resume_from(run))))
}
