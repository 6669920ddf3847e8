//! Training checkpoints, written and read here only: Hugging Face-layout weights (loadable by `rpt
//! eval` and by transformers), optimizer moments and EMA teacher, and the trainer state (step, data
//! cursor, optimizer step).
//! A checkpoint is written into a temporary directory and renamed into place, then `latest` is
//! rewritten atomically, so a run killed at any moment leaves the previous checkpoint intact.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::learn::Learner;
use crate::model::{Checkpoint, ModelConfig, TensorMap, Tokenizer, write_atomic};

/// Everything besides tensors needed to continue a run exactly.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainerState {
    /// Optimizer steps of the run completed (the next step to run).
    pub step: u64,
    /// States handed out by the environment.
    pub cursor: u64,
    pub optimizer_step: u64,
    /// All randomness derives from (seed, step, state, sample); the seed is the whole RNG state.
    pub seed: u64,
}

pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// Writes `step-NNNNNN` and points `latest` at it.
pub fn write(
    run_dir: &Path,
    learner: &Learner,
    model_cfg: &ModelConfig,
    tok: &Tokenizer,
    state: &TrainerState,
) -> Result<PathBuf> {
    let root = checkpoints_dir(run_dir);
    let name = format!("step-{:06}", state.step);
    let tmp = root.join(format!("{name}.partial"));
    let dir = root.join(&name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| crate::Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| crate::Error::io(&tmp, e))?;
    Checkpoint::save(&tmp, model_cfg, tok, &learner.snapshot()?)?;
    write_optimizer(&tmp, learner)?;
    write_atomic(
        &tmp.join("trainer_state.json"),
        &serde_json::to_vec_pretty(state).expect("serialises"),
    )?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| crate::Error::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| crate::Error::io(&dir, e))?;
    write_atomic(&root.join("latest"), name.as_bytes())?;
    Ok(dir)
}

/// The directory `latest` points at, if any.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    let p = checkpoints_dir(run_dir).join("latest");
    match std::fs::read_to_string(&p) {
        Ok(name) => Ok(Some(checkpoints_dir(run_dir).join(name.trim()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(crate::Error::io(p, e)),
    }
}

/// Writes the optimizer moments and the EMA teacher into `dir/optimizer.safetensors`, atomically.
fn write_optimizer(dir: &Path, learner: &Learner) -> Result<()> {
    let mut state = learner.opt.state()?;
    if let Some(phi) = &learner.ema {
        for (k, t) in phi {
            state.insert(format!("ema.{k}"), t.clone());
        }
    }
    let tmp = dir.join("optimizer.safetensors.tmp");
    candle_core::safetensors::save(&state, &tmp)?;
    std::fs::rename(&tmp, dir.join("optimizer.safetensors")).map_err(|e| crate::Error::io(dir, e))
}

/// Restores a learner from checkpoint `dir`: its `weights`, the optimizer moments (at `opt_step`)
/// and the EMA teacher. A damaged optimizer file is named in the error.
pub fn restore(
    dir: &Path,
    learner: &mut Learner,
    weights: &TensorMap,
    opt_step: u64,
) -> Result<()> {
    learner.params.load(weights)?;
    let path = dir.join("optimizer.safetensors");
    let device = learner.params.device()?;
    let state = candle_core::safetensors::load(&path, &device).map_err(|e| {
        crate::Error::Run(format!(
            "{}: not a readable optimizer state ({e}); the checkpoint is damaged, resume from an \
             earlier one by pointing `checkpoints/latest` at it",
            path.display()
        ))
    })?;
    let (ema, opt): (TensorMap, TensorMap) =
        state.into_iter().partition(|(k, _)| k.starts_with("ema."));
    learner.opt.restore(&opt, opt_step)?;
    if let Some(phi) = &mut learner.ema {
        for (k, t) in ema {
            phi.insert(k.trim_start_matches("ema.").to_string(), t);
        }
    }
    Ok(())
}

pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let p = dir.join("trainer_state.json");
    let bytes = std::fs::read(&p).map_err(|e| crate::Error::io(&p, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| crate::Error::Run(format!("{}: damaged trainer state: {e}", p.display())))
}
