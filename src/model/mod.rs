//! The model layer: Hugging Face checkpoints in and out, the decoder, KV-cached batched sampling,
//! teacher-forced log-probs for training, and trainable parameters with AdamW.
//!
//! The decoder is written with candle ops and runs on any device candle supports. On the CPU with f32
//! weights, training and sampling take the hand-written paths of the CPU backend (`src/cpu/`), which
//! compute the same numbers (tested against the candle path).

pub(crate) mod config;
mod decoder;
mod entropy;
pub(crate) mod error;
mod init;
pub(crate) mod layout;
mod optim;
pub(crate) mod rope;
mod route;
mod sample;
pub(crate) mod tensor_file;
mod tokenizer;
mod trainable;
mod weights;

use std::path::Path;
use std::sync::Arc;

pub use crate::cpu::target_log_softmax;
pub use candle_core::{Device, Tensor};
pub use config::{Family, ModelConfig};
pub use decoder::{Cache, Decoder, MASKED, Mode, Padded, attention_mask, left_pad, positions};
pub use entropy::{sequence_entropies, topk_entropy};
pub use error::{ModelError, Result};
pub use init::init_weights;
pub use layout::{LayerLayout, Layout, Proj};
pub use optim::{AdamW, AdamWConfig};
pub use route::{DeviceChoice, DeviceKind, Route};
pub use sample::{
    Finish, InferPath, Rng, Sample, SampleParams, generate, generate_on, pick, token_logprobs,
};
pub use tokenizer::Tokenizer;
pub use trainable::{GradPath, GradSum, Grads, Trainable};
pub use weights::{
    TensorMap, all_finite, load_weights, save_weights, weights_from_bytes, weights_to_bytes,
    write_atomic,
};

/// A checkpoint directory loaded: config, tokenizer and the decoder over its weights.
pub struct Checkpoint {
    pub config: ModelConfig,
    pub tokenizer: Arc<Tokenizer>,
    pub weights: TensorMap,
}

impl Checkpoint {
    /// Loads `dir/config.json`, `dir/tokenizer.json` and the safetensors weights, checking that they
    /// belong together.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found"),
            ));
        }
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
        tokenizer.check_fits(config.vocab_size)?;
        let weights = load_weights(dir, &config, device)?;
        Ok(Checkpoint {
            config,
            tokenizer: Arc::new(tokenizer),
            weights,
        })
    }

    pub fn decoder(&self) -> Result<Decoder> {
        Decoder::new(&self.config, &self.weights)
    }

    /// Writes `config.json`, `model.safetensors` and `tokenizer.json` into `dir` (created if needed).
    pub fn save(
        dir: &Path,
        config: &ModelConfig,
        tokenizer: &Tokenizer,
        weights: &TensorMap,
    ) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        save_weights(dir, config, weights)?;
        let cfg = serde_json::to_vec_pretty(&config.to_json()).expect("json value serialises");
        write_atomic(&dir.join("config.json"), &cfg)?;
        let tok = tokenizer
            .inner()
            .to_string(false)
            .map_err(|e| ModelError::Tokenizer {
                path: dir.join("tokenizer.json"),
                reason: e.to_string(),
            })?;
        write_atomic(&dir.join("tokenizer.json"), tok.as_bytes())
    }
}
