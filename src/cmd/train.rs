//! `rpt train`: bootstrap the built-in model if needed, index the corpus if needed, evaluate, train with
//! the actor system, evaluate again.

use std::path::PathBuf;

use anyhow::{Context, Result};
use rpt::env::Split;
use rpt::pipeline::train::{TrainOptions, train};

use super::pipeline::{ensure_builtin, eval_report, load_config, prepare_and_print};
use rpt::pipeline::evaluate::SAMPLES;

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// TOML config; without it, the built-in default `configs/tiny.toml`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue from the run directory's last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Override `train.steps`.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Override `run_dir`.
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// With --resume: continue although keys that change what the run computes (group size, rewards,
    /// learning rate, ...) differ from the run's saved config. The old config is kept beside the new.
    #[arg(long, requires = "resume")]
    pub allow_config_change: bool,
    /// Set `train.flop_budget` to the model FLOPs that run spent (its last `flops_cumulative`): a
    /// `next_token` baseline at the same compute.
    #[arg(long)]
    pub flops_of: Option<PathBuf>,
}

/// A run stopped by Ctrl-C before its last step, after writing a checkpoint: the evaluation after
/// training is skipped and `rpt` exits with status 130.
#[derive(Debug)]
pub struct Stopped {
    pub step: u64,
    pub of: u64,
    /// Where the run continues from (`checkpoint::resume_from`).
    pub resume: String,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stopped by Ctrl-C after step {} of {}; {}",
            self.step, self.of, self.resume
        )
    }
}

impl std::error::Error for Stopped {}

pub fn run(a: &TrainArgs) -> Result<()> {
    let mut cfg = load_config(a.config.as_deref())?;
    if let Some(s) = a.steps {
        cfg.train.steps = s;
    }
    if let Some(d) = &a.run_dir {
        cfg.run_dir = d.clone();
    }
    if let Some(other) = &a.flops_of {
        cfg.train.flop_budget = rpt::pipeline::next_token::run_flops(other)?;
    }
    let next_token = cfg.train.objective == rpt::config::Objective::NextToken;
    // A model that is already there: check that the run fits before anything is loaded or written.
    let model_json = cfg.model.path.join("config.json");
    if !next_token && model_json.exists() {
        let m = rpt::model::ModelConfig::from_file(&model_json)?;
        rpt::pipeline::memory::check_fits(&cfg, &m, &cfg.model.path)?;
    }
    if next_token && a.resume {
        anyhow::bail!(
            "train.objective = \"next_token\": such a run does not resume; start a new `run_dir`"
        );
    }
    if cfg.model.bootstrap_if_missing {
        ensure_builtin(&cfg, &cfg.model.path, false)?;
    }
    let texts = rpt::pipeline::load_texts(&cfg)?;
    if let Err(e) = rpt::pipeline::prepare::load_index(&cfg, Split::Train, &texts) {
        eprintln!("difficulty index: {e}; building it now");
        prepare_and_print(&cfg)?;
    }
    let device = super::device()?;
    let before = if cfg.train.eval_before_after && !a.resume {
        let ck = super::load_checkpoint(&cfg.model.path)?;
        let r = eval_report(&cfg, &ck, &cfg.model.path, SAMPLES)
            .context("evaluation before training")?;
        println!(
            "held-out accuracy before training ({}):\n{}",
            cfg.model.path.display(),
            r.table()
        );
        Some(r)
    } else {
        None
    };
    crate::release_freed_memory();
    let t0 = std::time::Instant::now();
    if next_token {
        let s = rpt::pipeline::next_token::train_next_token(&cfg, &device)?;
        println!(
            "next-token training: {} steps, {:.3e} FLOPs (budget {:.3e}), loss {:.4} -> {:.4}, in {:.0} s; \
             metrics: {}",
            s.steps,
            s.flops as f64,
            cfg.train.flop_budget as f64,
            s.first_loss,
            s.last_loss,
            t0.elapsed().as_secs_f64(),
            cfg.run_dir.join("metrics.jsonl").display()
        );
    } else {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let summary = rt.block_on(train(
            &cfg,
            &TrainOptions {
                resume: a.resume,
                allow_config_change: a.allow_config_change,
                ..Default::default()
            },
            &device,
        ))?;
        if summary.stopped {
            return Err(Stopped {
                step: summary.steps,
                of: cfg.train.steps,
                resume: rpt::checkpoint::resume_from(&cfg.run_dir),
            }
            .into());
        }
        println!(
            "trained {} steps in {:.0} s ({} states re-issued); metrics: {}, {:.3e} model FLOPs\n\
             curves, held-out accuracy and samples: rpt report {}    (TensorBoard: tensorboard --logdir {})",
            summary.steps,
            t0.elapsed().as_secs_f64(),
            summary.reissued,
            cfg.run_dir.join("metrics.jsonl").display(),
            rpt::actors::last_cumulative_flops(&cfg.run_dir.join("metrics.jsonl")) as f64,
            cfg.run_dir.display(),
            cfg.run_dir.join("tensorboard").display()
        );
    }
    crate::release_freed_memory();
    if cfg.train.eval_before_after {
        let dir = rpt::checkpoint::latest(&cfg.run_dir)?.context("no checkpoint was written")?;
        let ck = super::load_checkpoint(&dir)?;
        let after = eval_report(&cfg, &ck, &dir, SAMPLES).context("evaluation after training")?;
        println!(
            "held-out accuracy after training ({}):\n{}",
            dir.display(),
            after.table()
        );
        let mut report = serde_json::json!({"after": after});
        if let Some(b) = before {
            let (x, y) = (
                b.splits["all"].reasoning_accuracy,
                after.splits["all"].reasoning_accuracy,
            );
            println!(
                "reasoning-mode accuracy (all held-out positions): {:.1}% -> {:.1}%",
                100.0 * x,
                100.0 * y
            );
            report["before"] = serde_json::to_value(&b)?;
        }
        rpt::model::write_atomic(
            &cfg.run_dir.join("eval.json"),
            serde_json::to_string_pretty(&report)?.as_bytes(),
        )?;
    }
    Ok(())
}
