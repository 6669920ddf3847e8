//! What the training pass shares between its forward and backward halves: parameters borrowed as flat
//! buffers by published name, the tape of activations a forward pass keeps, attention problems, and
//! the model's dimensions.

use std::collections::BTreeMap;

use crate::model::config::ModelConfig;
use crate::model::error::{ModelError, Result};

/// Parameters as flat row-major f32 buffers (borrowed), by published name.
pub type Params<'a> = BTreeMap<&'a str, &'a [f32]>;

/// Gradients as flat row-major f32 buffers, by published name.
pub type FlatGrads = BTreeMap<String, Vec<f32>>;

pub(super) fn get<'a>(p: &Params<'a>, name: &str) -> Result<&'a [f32]> {
    p.get(name)
        .copied()
        .ok_or_else(|| ModelError::Invalid(format!("weights lack tensor `{name}`")))
}

/// Activations of one layer kept for the backward pass (only `x` on a checkpointed tape).
#[derive(Default)]
pub(super) struct LayerTape {
    pub(super) x: Vec<f32>,
    pub(super) rstd1: Vec<f32>,
    pub(super) h1: Vec<f32>,
    /// Pre-norm q and k and their per-head inverse RMS (models with q/k norms only).
    pub(super) q_raw: Vec<f32>,
    pub(super) k_raw: Vec<f32>,
    pub(super) rstd_q: Vec<f32>,
    pub(super) rstd_k: Vec<f32>,
    /// Post-rotary q and k, and v.
    pub(super) q: Vec<f32>,
    pub(super) k: Vec<f32>,
    pub(super) v: Vec<f32>,
    /// Attention probabilities per (job, head): (n × (np + n)), causal; each empty when the layer's
    /// would exceed `attention::KEEP_PROBS_FLOATS` (the backward pass recomputes them).
    pub(super) probs: Vec<Vec<f32>>,
    pub(super) att: Vec<f32>,
    pub(super) x_mid: Vec<f32>,
    pub(super) rstd2: Vec<f32>,
    pub(super) h2: Vec<f32>,
    pub(super) g: Vec<f32>,
    pub(super) u: Vec<f32>,
    /// sigmoid(g)
    pub(super) sg: Vec<f32>,
    pub(super) a: Vec<f32>,
}

/// Everything the backward pass needs from one forward pass.
pub struct Tape {
    /// Tokens in the buffer, and its attention problems grouped by the tokens they own.
    pub(super) t_all: usize,
    pub(super) jobs: Vec<AttnJob>,
    pub(super) units: Vec<std::ops::Range<usize>>,
    /// Where each scored position's log-prob goes in the caller's output, and that output's length;
    /// `None`: the output is the scored positions in order.
    pub(super) slots: Option<(Vec<usize>, usize)>,
    pub(super) ids: Vec<u32>,
    pub(super) scale: f32,
    pub(super) cos: Vec<f32>,
    pub(super) sin: Vec<f32>,
    pub(super) layers: Vec<LayerTape>,
    /// Each layer kept only its input (`Budget::tape_floats`): the backward pass recomputes the rest.
    pub(super) checkpointed: bool,
    /// Token index of each scored position, its target, and the final residual there.
    pub(super) sel: Vec<usize>,
    pub(super) targets: Vec<u32>,
    pub(super) xf: Vec<f32>,
    pub(super) rstd_f: Vec<f32>,
    pub(super) hs: Vec<f32>,
    /// exp(scale · logit − max) of each scored row (empty when the head ran in chunks), and 1 / its
    /// sum (softmax = product of both).
    pub(super) exps: Vec<f32>,
    pub(super) inv_sums: Vec<f32>,
    /// The head's chunks of scored rows; with one, its exponentials are in `exps`.
    pub(super) head_chunks: Vec<super::head::HeadChunk>,
    /// Where the sums over tokens (the weights' gradients) are cut, for a batch computed without its
    /// padding (see `forward`); `None`: every KC tokens.
    pub(super) token_cuts: Option<Vec<usize>>,
}

/// One attention problem: the `n` query tokens from token `q0` see, causally, themselves, and all `np`
/// tokens from `p0` before them (a prompt shared by several completions; `np = 0` for none).
#[derive(Debug, Clone, Copy)]
pub(super) struct AttnJob {
    pub(super) q0: usize,
    pub(super) n: usize,
    pub(super) p0: usize,
    pub(super) np: usize,
}

impl AttnJob {
    /// The job's keys, in column order of its score rows: (first key token, keys, first column) for
    /// the prompt (when there is one) and for the job's own tokens.
    pub(super) fn segments(&self) -> impl Iterator<Item = (usize, usize, usize)> {
        [(self.p0, self.np, 0), (self.q0, self.n, self.np)]
            .into_iter()
            .filter(|s| s.1 > 0)
    }
}

/// A prompt and the completions sampled from it, for [`super::forward_shared`].
pub struct SharedGroup<'a> {
    pub prompt: &'a [u32],
    pub completions: Vec<&'a [u32]>,
}

pub(super) struct Dims {
    pub(super) h: usize,
    pub(super) nh: usize,
    pub(super) nkv: usize,
    pub(super) hd: usize,
    pub(super) inter: usize,
    pub(super) vocab: usize,
    pub(super) eps: f32,
}

impl Dims {
    pub(super) fn of(cfg: &ModelConfig) -> Self {
        Dims {
            h: cfg.hidden_size,
            nh: cfg.num_attention_heads,
            nkv: cfg.num_key_value_heads,
            hd: cfg.head_dim,
            inter: cfg.intermediate_size,
            vocab: cfg.vocab_size,
            eps: cfg.rms_norm_eps as f32,
        }
    }
}

/// Runs `f` with the elements of `tensors` borrowed in place, by name (read-locked for the call).
/// Fails when one is not a contiguous f32 CPU tensor.
pub fn with_params<'t, R, E: From<ModelError>>(
    tensors: impl IntoIterator<Item = (&'t str, &'t candle_core::Tensor)>,
    f: impl FnOnce(&Params) -> std::result::Result<R, E>,
) -> std::result::Result<R, E> {
    let guards: Vec<_> = tensors
        .into_iter()
        .map(|(name, t)| (name, t.storage_and_layout()))
        .collect();
    let mut params = Params::new();
    for (name, (storage, layout)) in &guards {
        let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) = &**storage else {
            return Err(ModelError::Invalid(format!(
                "the CPU kernels need f32 CPU tensors; `{name}` is not"
            ))
            .into());
        };
        let Some((a, b)) = layout.contiguous_offsets() else {
            return Err(ModelError::Invalid(format!("`{name}` is not contiguous")).into());
        };
        params.insert(name, &data[a..b]);
    }
    f(&params)
}
