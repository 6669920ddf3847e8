//! `rpt init`: a checkpoint of any supported `config.json` with random weights, in Hugging Face layout,
//! for benchmarks and tests at real shapes without downloading weights. The weights follow
//! transformers' initialisation (normal, std 0.02; norms 1; biases 0), from a seed.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::{Checkpoint, Device, Layout, ModelConfig, Tokenizer, init_weights};

/// What `rpt init` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InitReport {
    pub out: PathBuf,
    pub parameters: usize,
    pub family: String,
    pub vocab_size: usize,
    /// Where the tokenizer came from: the file given, or a byte-level BPE trained on the built-in corpus.
    pub tokenizer: String,
}

/// Writes `config.json` (as read from `config_json`, normalised), random `model.safetensors` and a
/// tokenizer into `out`, which must be new or empty (it is never written over; see
/// [`super::model_dir::check_target`]). Built in `out.partial` and renamed into place.
pub fn random_checkpoint(
    config_json: &Path,
    out: &Path,
    tokenizer: Option<&Path>,
    seed: u64,
) -> Result<InitReport> {
    let cfg = ModelConfig::from_file(config_json)?;
    super::model_dir::check_new_model_dir(out, false)?;
    let (tok, source) = match tokenizer {
        Some(p) => (Tokenizer::from_file(p)?, p.display().to_string()),
        None => {
            let vocab = cfg.vocab_size.min(512);
            if vocab < 300 {
                return Err(Error::Run(format!(
                    "{}: vocab_size = {} is too small for a trained tokenizer (at least 300); give \
                     one with --tokenizer",
                    config_json.display(),
                    cfg.vocab_size
                )));
            }
            let texts = crate::env::generate_corpus(200, seed);
            let tok = Tokenizer::train_bpe(&texts, vocab, false)?;
            (
                tok,
                format!("byte-level BPE of {vocab} ids, trained on the built-in corpus"),
            )
        }
    };
    tok.check_fits(cfg.vocab_size)?;
    let weights = init_weights(&cfg, seed, 0.02, &Device::Cpu)?;
    let parameters = Layout::of(&cfg)
        .tensors()
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    super::model_dir::write_model_dir(out, false, |tmp| {
        Ok(Checkpoint::save(tmp, &cfg, &tok, &weights)?)
    })?;
    drop(weights);
    Ok(InitReport {
        out: out.to_path_buf(),
        parameters,
        family: cfg.family.as_str().into(),
        vocab_size: cfg.vocab_size,
        tokenizer: source,
    })
}
