//! The hand-written CPU backend: the same numbers as the candle decoder in `model/` (tested), computed
//! over the weights' memory without a tensor graph, only faster. `model/` calls it where the weights are
//! f32 on the CPU and uses candle's ops elsewhere; nothing here is called with tensors on other devices.
//!
//! - **Training** ([`forward()`], [`forward_shared`], [`backward()`]): a forward pass that keeps the
//!   activations it needs on a [`Tape`], and a backward pass written out layer by layer (RMSNorm, rotary,
//!   grouped-query attention in both directions in `attention.rs`, SwiGLU, the head's log-softmax at
//!   the target, in chunks of rows in `head.rs`). A left-padded batch is computed without its
//!   padding, with the padded batch's numbers. The GRPO loss is composed with candle ops on the
//!   per-token log-probs; only its gradient with respect to them enters here.
//! - **Sampling** ([`step`] over a [`HostCache`]): prefill and decode with a preallocated KV cache,
//!   batch-invariant: prompts always take the GEMM, new tokens always the few-row kernel, and both
//!   compute a row the same way in any batch. Its attention over the cache, with the cache's layout
//!   (each key-value head's tokens in one run), is in `cached_attention.rs`.
//! - **Kernels**: a packed single-precision GEMM with an AVX-512 register tile (`gemm.rs`, the tile in
//!   `gemm_kernel.rs`, its operand packing in `pack.rs`; the `gemm` crate where the CPU lacks
//!   AVX-512), a few-row decoding kernel
//!   (`matmul.rs`, its AVX-512 tiles in `few_rows.rs`), the fused log-softmax at the target
//!   (`logsoftmax.rs`), and vectorized element-wise work (`vector.rs`).
//!
//! The module depends on the model layer's configuration, errors and rotary tables only.

mod attention;
mod backward;
mod cached_attention;
mod few_rows;
mod forward;
mod gemm;
mod head;
mod logsoftmax;
mod matmul;
mod pack;
#[cfg(test)]
mod padding_tests;
mod sample;
mod tape;
mod vector;

pub use attention::KEEP_PROBS_FLOATS;
pub use backward::backward;
pub use forward::{Budget, TAPE_FLOATS, forward, forward_shared};
pub use head::HEAD_CHUNK_FLOATS;
pub use logsoftmax::target_log_softmax;
pub use matmul::matmul_t;
pub use sample::{HostCache, step};
pub use tape::{FlatGrads, Params, SharedGroup, Tape, with_params};
pub use vector::{exp_in_place, max_scaled, sum};

/// Runs `f` on a thread of rayon's pool, so that the many short parallel jobs inside it (a decode
/// step makes over a hundred) are pushed onto that thread's own queue and stolen by the others,
/// instead of each being sent in from outside and waited for with a sleep and a wake-up. Measured
/// on a 2-thread pool, one few-row product of 128 × 1,024 weights: 35 µs called from outside, 15 µs
/// from inside. Inside the pool already, `f` runs in place.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}
