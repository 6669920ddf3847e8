//! `train.objective = "next_token"`: the baseline RPT is compared with. Plain next-token training
//! continues from the same starting model on the same training positions, in the same order (the
//! corpus environment's), with the same optimizer settings, for as many model FLOPs as the RPT run
//! spent (`train.flop_budget`, or `rpt train --flops-of RUN_DIR`).
//!
//! A step takes `states_per_step × group_size` positions (as many rows as an RPT step samples) and
//! trains on the whole window that ends at each: the context (up to `max_context_tokens`) and the
//! position's token, every token's loss counted, as continued pre-training does. Its FLOPs are
//! counted by `crate::flops::next_token_step`; the run stops at the first step that reaches the
//! budget, or after `train.steps`. Metrics go to `metrics.jsonl` (loss, learning rate, gradient
//! norm, tokens, FLOPs and cumulative FLOPs), checkpoints as in an RPT run. Such a run does not resume.

use crate::checkpoint::{self, TrainerState};
use crate::config::Config;
use crate::env::Environment;
use crate::error::{Error, Result};
use crate::learn::Learner;
use crate::model::{Checkpoint, Device};

use super::bootstrap::nll_grads;

/// What a next-token run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct NextTokenSummary {
    pub steps: u64,
    pub flops: u64,
    pub first_loss: f64,
    pub last_loss: f64,
}

/// Runs the next-token baseline into `cfg.run_dir` (which must hold no checkpoint).
pub fn train_next_token(cfg: &Config, device: &Device) -> Result<NextTokenSummary> {
    let run = &cfg.run_dir;
    if checkpoint::latest(run)?.is_some() {
        return Err(Error::Run(format!(
            "{} already holds checkpoints; a next-token run does not resume: choose another `run_dir`",
            run.display()
        )));
    }
    let budget = cfg.train.flop_budget;
    let base = Checkpoint::load(&cfg.model.path, device)?;
    let mut env = super::train::training_environment(cfg, &base.tokenizer)?;
    let mut learner = Learner::new(cfg, &base.weights, &base.config)?;
    std::fs::create_dir_all(run).map_err(|e| Error::io(run, e))?;
    crate::model::write_atomic(
        &run.join("config.toml"),
        toml::to_string_pretty(cfg)
            .expect("config serialises")
            .as_bytes(),
    )?;
    let metrics_path = run.join("metrics.jsonl");
    let mut metrics = String::new();
    let rows = cfg.rollout.states_per_step * cfg.rollout.group_size;
    let mut out = NextTokenSummary::default();
    let bar = super::progress(cfg.train.steps, "next-token");
    let mut saved_at = 0;
    let save = |learner: &Learner, step: u64, cursor: u64, metrics: &str| -> Result<()> {
        crate::model::write_atomic(&metrics_path, metrics.as_bytes())?;
        checkpoint::write(
            run,
            learner,
            &base.config,
            &base.tokenizer,
            &TrainerState {
                step,
                cursor,
                optimizer_step: learner.opt.step,
                seed: cfg.seed,
            },
        )?;
        Ok(())
    };
    for step in 0..cfg.train.steps {
        if budget > 0 && out.flops >= budget {
            break;
        }
        let windows: Vec<Vec<u32>> = (0..rows)
            .filter_map(|_| env.next_state())
            .map(|s| {
                let mut w = s.context;
                w.push(s.next_token);
                w
            })
            .collect();
        if windows.is_empty() {
            break;
        }
        let lens: Vec<usize> = windows.iter().map(Vec::len).collect();
        let flops = crate::flops::next_token_step(&base.config, &lens);
        let (loss, grads) = nll_grads(&learner.params, &windows, &vec![1; windows.len()], device)?;
        let loss = loss.to_scalar::<f32>()? as f64;
        let (norm, lr) = learner
            .apply(&grads, loss)
            .map_err(|e| Error::Run(format!("next-token step {}: {e}", step + 1)))?;
        out.flops += flops;
        out.steps = step + 1;
        if step == 0 {
            out.first_loss = loss;
        }
        out.last_loss = loss;
        let line = serde_json::json!({
            "step": step + 1, "objective": "next_token", "loss": loss, "lr": lr,
            "grad_norm": norm, "tokens": lens.iter().sum::<usize>(), "flops": flops,
            "flops_cumulative": out.flops,
        });
        metrics.push_str(&format!("{line}\n"));
        bar.inc(1);
        if (step + 1) % cfg.train.checkpoint_every.max(1) == 0 {
            save(&learner, step + 1, env.cursor(), &metrics)?;
            saved_at = step + 1;
        }
    }
    bar.finish_and_clear();
    if out.steps > saved_at {
        save(&learner, out.steps, env.cursor(), &metrics)?;
    }
    Ok(out)
}

/// The FLOPs a finished run spent: `flops_cumulative` of its last metrics line.
pub fn run_flops(run_dir: &std::path::Path) -> Result<u64> {
    let path = run_dir.join("metrics.jsonl");
    let n = crate::actors::last_cumulative_flops(&path);
    if n == 0 {
        return Err(Error::Run(format!(
            "{}: no step with `flops_cumulative` (is it a run directory of this version of rpt?)",
            path.display()
        )));
    }
    Ok(n)
}
