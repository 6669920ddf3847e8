//! The `rpt` subcommands. Each prints its results to stdout (a table, or one JSON object with `--json`).

pub mod bench;
pub mod generate;
pub mod init;
pub mod pipeline;
pub mod report;
pub mod reward;
pub mod sweep;
pub mod train;
pub mod worker;

use std::path::Path;

use anyhow::{Context, Result};
use rpt::model::{Checkpoint, Device, DeviceChoice};

/// The device commands compute on, from `RPT_DEVICE` (`auto`, `cpu`, `cuda`, `cuda:N`; see
/// `rpt::model::DeviceChoice`): a GPU asked for by name and absent is an error, not the CPU.
pub fn device() -> Result<Device> {
    let choice = std::env::var("RPT_DEVICE").unwrap_or_default();
    let device = DeviceChoice::parse(&choice)
        .and_then(DeviceChoice::open)
        .map_err(anyhow::Error::msg)?;
    tracing::debug!(?device, "device");
    Ok(device)
}

pub fn load_checkpoint(dir: &Path) -> Result<Checkpoint> {
    Checkpoint::load(dir, &device()?)
        .with_context(|| format!("loading model from {}", dir.display()))
}

/// Parses `1,2,3` into token ids.
pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(|x| {
            x.trim()
                .parse::<u32>()
                .with_context(|| format!("--ids: {x:?} is not a token id"))
        })
        .collect()
}

/// The prompt's ids from `--text`/`--prompt` or `--ids`, checked against the vocabulary.
pub fn prompt_ids(ck: &Checkpoint, text: Option<&str>, ids: Option<&str>) -> Result<Vec<u32>> {
    let ids = match (text, ids) {
        (Some(t), None) => ck.tokenizer.encode(t)?,
        (None, Some(i)) => parse_ids(i)?,
        _ => anyhow::bail!("give exactly one of the text or --ids"),
    };
    anyhow::ensure!(!ids.is_empty(), "the prompt is empty");
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= ck.config.vocab_size) {
        anyhow::bail!(
            "token id {bad} is outside the vocabulary (vocab_size = {})",
            ck.config.vocab_size
        );
    }
    Ok(ids)
}
