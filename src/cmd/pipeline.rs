//! `rpt bootstrap`, `rpt prepare` and `rpt eval`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rpt::config::Config;
use rpt::env::{Split, make_state};
use rpt::model::{Rng, SampleParams};
use rpt::pipeline::evaluate::{EvalItem, SAMPLES, evaluate};
use rpt::pipeline::{bootstrap, load_texts, prepare, tokenize_splits};
use rpt::prompt::Prompt;

/// The built-in default configuration (`configs/tiny.toml`).
pub const TINY: &str = include_str!("../../configs/tiny.toml");

/// `--config FILE`, or the built-in default.
pub fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::parse(
            TINY,
            Path::new("configs/tiny.toml (built in)"),
        )?),
    }
}

#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    /// TOML config; without it, the built-in default `configs/tiny.toml`.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct BootstrapArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Output directory (default: the config's `model.path`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run_bootstrap(a: &BootstrapArgs) -> Result<()> {
    let cfg = load_config(a.config.config.as_deref())?;
    let out = a.out.clone().unwrap_or_else(|| cfg.model.path.clone());
    ensure_builtin(&cfg, &out, true)
}

/// Builds the built-in model at `out` (always when `force`, else only when missing) and prints its report.
pub fn ensure_builtin(cfg: &Config, out: &Path, force: bool) -> Result<()> {
    if !force && out.join("config.json").exists() {
        return Ok(rpt::pipeline::model_dir::check_settings(cfg, out)?);
    }
    eprintln!("building the built-in model in {} ...", out.display());
    let r = bootstrap::bootstrap(cfg, out, &super::device()?)?;
    println!(
        "bootstrap: {} parameters, vocab {}, {} train / {} held-out documents, {:.0} s\n  \
         loss: train {:.3}, held-out {:.3} (warm-up {:.3})\n  \
         held-out next-token accuracy (standard mode, {} positions of every difficulty): {:.1}%\n  \
         completions at T=0.8 that parse to a \\boxed{{}} prediction: {:.1}%\n  \
         held-out reasoning-mode accuracy at T=0.8 (same positions): {:.1}%",
        r.parameters,
        r.vocab_size,
        r.train_documents,
        r.heldout_documents,
        r.seconds,
        r.train_loss,
        r.heldout_loss,
        r.sft_loss,
        r.eval_positions,
        100.0 * r.heldout_standard_accuracy,
        100.0 * r.format_rate,
        100.0 * r.heldout_reasoning_accuracy
    );
    Ok(())
}

pub fn run_prepare(a: &ConfigArgs) -> Result<()> {
    let cfg = load_config(a.config.as_deref())?;
    ensure_builtin(&cfg, &cfg.model.path, false)?;
    prepare_and_print(&cfg)
}

pub fn prepare_and_print(cfg: &Config) -> Result<()> {
    for r in prepare::prepare(cfg, &super::device()?)? {
        println!(
            "index {:<7} {:>4} documents {:>7} positions  easy {:>6}  medium {:>6}  hard {:>6}  (min_entropy {}: {} trainable)  {:.0} positions/s -> {}",
            r.split.as_str(),
            r.documents,
            r.positions,
            r.easy,
            r.medium,
            r.hard,
            cfg.states.min_entropy,
            r.trainable,
            r.positions_per_second,
            r.path.display()
        );
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint to evaluate (default: the config's `model.path`).
    #[arg(long, conflicts_with = "run")]
    pub model: Option<PathBuf>,
    /// Evaluate a run: its starting model and every checkpoint, against the model FLOPs spent to
    /// reach it, with `accuracy = a − b·C^(−α)` fitted per split and mode; written to
    /// RUN_DIR/accuracy_vs_compute.json. The run's own `config.toml` is used.
    #[arg(long, conflicts_with = "config")]
    pub run: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArgs,
    #[arg(long)]
    pub json: bool,
    /// Also write every evaluated position to FILE, one JSON object a line: the context's end, the
    /// true next token, standard mode's guess, reasoning mode's whole completion, whether each is
    /// right, the position's entropy, whether any `\boxed{}` answer could be right there, and
    /// whether the corpus offers a teacher thought for it.
    #[arg(long, value_name = "FILE", conflicts_with = "run")]
    pub positions: Option<PathBuf>,
}

/// Held-out positions for evaluation: a seeded sample of `eval.positions` from the easy split.
pub fn eval_items(cfg: &Config, tok: &rpt::model::Tokenizer) -> Result<Vec<EvalItem>> {
    let texts = load_texts(cfg)?;
    let index = prepare::load_index(cfg, Split::Heldout, &texts)?;
    let splits = tokenize_splits(cfg, &texts, tok)?;
    let mut cands = index.positions_at_least(rpt::env::Difficulty::Easy.threshold());
    rpt::env::shuffle(&mut cands, Rng::derive(&[cfg.seed, 0xE7A1]));
    let mut items = vec![];
    for (d, t) in cands {
        if items.len() >= cfg.eval.positions {
            break;
        }
        if let Some(state) = make_state(
            &splits.heldout[d],
            t,
            tok,
            cfg.states.max_context_tokens,
            cfg.states.max_target_bytes,
        ) {
            items.push(EvalItem {
                state,
                entropy: Some(index.docs[d].entropy[t]),
                taught: splits.heldout[d].teacher_at(t).is_some(),
            });
        }
    }
    Ok(items)
}

pub fn run_eval(a: &EvalArgs) -> Result<()> {
    if let Some(run) = &a.run {
        return eval_run(run, a.json);
    }
    let cfg = load_config(a.config.config.as_deref())?;
    let dir = a.model.clone().unwrap_or_else(|| cfg.model.path.clone());
    let ck = super::load_checkpoint(&dir)?;
    let written = match a.positions {
        Some(_) => usize::MAX,
        None => SAMPLES,
    };
    let mut report = eval_report(&cfg, &ck, &dir, written).context("evaluation")?;
    if let Some(path) = &a.positions {
        let mut text = String::new();
        for p in &report.samples {
            text.push_str(&serde_json::to_string(p)?);
            text.push('\n');
        }
        rpt::model::write_atomic(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        report.samples.truncate(SAMPLES);
    }
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// Held-out accuracy of checkpoint `ck`, loaded from `dir` (named in errors), with its first `samples`
/// positions written out.
pub fn eval_report(
    cfg: &Config,
    ck: &rpt::model::Checkpoint,
    dir: &Path,
    samples: usize,
) -> Result<rpt::pipeline::evaluate::EvalReport> {
    let prompt = Prompt::new(&cfg.prompt.template, &ck.tokenizer)?;
    rpt::pipeline::checks::check_lengths(cfg, &ck.config, &prompt, dir)?;
    let items = eval_items(cfg, &ck.tokenizer)?;
    let params = SampleParams {
        temperature: cfg.eval.temperature,
        top_k: 0,
        top_p: 1.0,
        max_new_tokens: cfg.rollout.max_new_tokens,
    };
    Ok(evaluate(
        &ck.decoder()?,
        &ck.tokenizer,
        &prompt,
        &items,
        &params,
        cfg.seed,
        32,
        samples,
    )?)
}

/// `rpt eval --run RUN_DIR`: accuracy of the starting model and of every checkpoint against cumulative
/// model FLOPs, and the power-law fit per split and mode.
fn eval_run(run: &Path, json: bool) -> Result<()> {
    let cfg = Config::load(&run.join("config.toml"))
        .with_context(|| format!("{}: not a run directory", run.display()))?;
    let metrics_path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics_path)
        .with_context(|| format!("{}: a run's metrics", metrics_path.display()))?;
    let mut flops_at = std::collections::BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", metrics_path.display(), i + 1))?;
        if let (Some(s), Some(f)) = (v["step"].as_u64(), v["flops_cumulative"].as_u64()) {
            flops_at.insert(s, f);
        }
    }
    let root = run.join("checkpoints");
    let mut steps: Vec<u64> = std::fs::read_dir(&root)
        .with_context(|| format!("{}: no checkpoints", root.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("step-")?.parse().ok()
        })
        .collect();
    steps.sort_unstable();
    // Every checkpoint's compute first, so that a run without it fails before any evaluation.
    let mut todo = vec![(0u64, cfg.model.path.clone(), 0u64)];
    for step in steps {
        let flops = *flops_at.get(&step).with_context(|| {
            format!(
                "{}: no `flops_cumulative` for step {step} (a run of an earlier version of rpt?)",
                metrics_path.display()
            )
        })?;
        todo.push((step, root.join(format!("step-{step:06}")), flops));
    }
    let mut points = vec![];
    let mut reports = vec![];
    for (step, dir, flops) in todo {
        let ck = super::load_checkpoint(&dir)?;
        let r = eval_report(&cfg, &ck, &dir, SAMPLES)
            .with_context(|| format!("evaluating {}", dir.display()))?;
        eprintln!("step {step:>6}  {:.3e} FLOPs\n{}", flops as f64, r.table());
        points.push(serde_json::json!({"step": step, "flops": flops, "checkpoint": dir, "splits": r.splits}));
        reports.push((flops, r));
    }
    let mut fits = serde_json::Map::new();
    for split in ["easy", "medium", "hard", "taught"] {
        for mode in ["standard", "reasoning"] {
            let pts: Vec<(f64, f64)> = reports
                .iter()
                .filter_map(|(c, r)| {
                    let s = r.splits.get(split)?;
                    let acc = if mode == "standard" {
                        s.standard_accuracy
                    } else {
                        s.reasoning_accuracy
                    };
                    Some((*c as f64, acc))
                })
                .collect();
            if let Some(f) = rpt::pipeline::curve::fit_power_law(&pts) {
                fits.insert(format!("{split}/{mode}"), serde_json::to_value(f)?);
            }
        }
    }
    let out = serde_json::json!({
        "run": run,
        "objective": cfg.train.objective,
        "eval_positions": cfg.eval.positions,
        "eval_temperature": cfg.eval.temperature,
        "fit": "accuracy = a - b * flops^(-alpha), over the checkpoints (the starting model at 0 FLOPs is not fitted)",
        "points": points,
        "fits": fits,
        "samples_before": reports.first().map(|r| &r.1.samples),
        "samples_after": reports.last().map(|r| &r.1.samples),
    });
    let path = run.join("accuracy_vs_compute.json");
    rpt::model::write_atomic(&path, serde_json::to_string_pretty(&out)?.as_bytes())?;
    if json {
        println!("{out}");
    } else {
        println!(
            "{:<16} {:>9} {:>9} {:>9} {:>7}",
            "split/mode", "a", "b", "alpha", "R2"
        );
        for (k, f) in &fits {
            let g = |x: &str| f[x].as_f64().unwrap_or(f64::NAN);
            println!(
                "{:<16} {:>9.4} {:>9.3e} {:>9.4} {:>7.3}",
                k,
                g("a"),
                g("b"),
                g("alpha"),
                g("r2")
            );
        }
        println!("written: {}", path.display());
    }
    Ok(())
}
