//! Training checkpoints, written and read here only: Hugging Face-layout weights (loadable by `rpt
//! eval` and by transformers), optimizer moments and EMA teacher, and the trainer state (step, data
//! cursor, optimizer step).
//! A checkpoint is written into a temporary directory and renamed into place, then `latest` is
//! rewritten atomically, so a run killed at any moment leaves the previous checkpoint intact.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::learn::Learner;
use crate::model::tensor_file::{self, Source, TensorFile};
use crate::model::{Checkpoint, ModelConfig, Tokenizer, write_atomic};

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
    Checkpoint::save(&tmp, model_cfg, tok, &learner.params.tensors())?;
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

/// Where a run that stopped early continues from, for its message: the last checkpoint, intact, and
/// `--resume`; or that none had been written.
pub fn resume_from(run_dir: &Path) -> String {
    match latest(run_dir).ok().flatten() {
        Some(dir) => format!(
            "the last checkpoint, {}, is intact: `rpt train --resume` continues from it",
            dir.display()
        ),
        None => "no checkpoint had been written yet".into(),
    }
}

/// Writes the optimizer moments and the EMA teacher into `dir/optimizer.safetensors`, atomically,
/// from their own memory.
fn write_optimizer(dir: &Path, learner: &Learner) -> Result<()> {
    let mut tensors = learner.opt.sources();
    if let Some(phi) = &learner.ema {
        for (k, t) in phi {
            tensors.push((format!("ema.{k}"), Source::of(t)));
        }
    }
    Ok(tensor_file::write(
        &dir.join("optimizer.safetensors"),
        tensors,
    )?)
}

/// Restores a learner from checkpoint `dir`: its weights, the optimizer moments (at `opt_step`)
/// and the EMA teacher, each read tensor by tensor into what the learner already holds (a resume
/// makes no second copy of the model or of the moments). A damaged file is named in the error.
pub fn restore(dir: &Path, learner: &mut Learner, opt_step: u64) -> Result<()> {
    let damaged = |path: &Path, e: crate::model::ModelError| {
        crate::Error::Run(format!(
            "{e}. The checkpoint's {} is damaged: resume from an earlier checkpoint by pointing \
             `checkpoints/latest` at it",
            if path.ends_with("optimizer.safetensors") {
                "optimizer state"
            } else {
                "model"
            }
        ))
    };
    let path = dir.join("model.safetensors");
    let weights = TensorFile::open(&path).map_err(|e| damaged(&path, e))?;
    learner
        .params
        .read(&weights)
        .map_err(|e| damaged(&path, e))?;
    let path = dir.join("optimizer.safetensors");
    let state = TensorFile::open(&path).map_err(|e| damaged(&path, e))?;
    let (params, opt) = (&learner.params, &mut learner.opt);
    opt.read(&state, params, opt_step)
        .map_err(|e| damaged(&path, e))?;
    // A checkpoint of a run whose reward had no EMA teacher (resumed with another reward) holds
    // none: the teacher then starts as the learner made it.
    let has_ema = state.names().iter().any(|n| n.starts_with("ema."));
    if let (Some(phi), true) = (&mut learner.ema, has_ema) {
        let device = params.device()?;
        for (k, t) in phi.iter_mut() {
            *t = state
                .read(&format!("ema.{k}"), t.dims(), &device)
                .map_err(|e| damaged(&path, e))?;
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
