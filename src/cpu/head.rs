//! The head of the training pass (`forward.rs`, `backward.rs`): its logits in chunks of scored rows,
//! so that no (rows × vocabulary) matrix larger than a budget exists, and the buffer they are written
//! to, kept from one step to the next.

use super::gemm::{MatRef, gemm, k_block_starts};

/// The largest head chunk a step makes, in floats, unless told otherwise: 16 M (64 MB). Any model
/// whose scored rows × vocabulary fit is never chunked.
pub const HEAD_CHUNK_FLOATS: usize = 1 << 24;

/// Rows per head chunk: as many as `floats` allows, at least one, at most `rows`.
pub(super) fn head_chunk_rows(floats: usize, vocab: usize, rows: usize) -> usize {
    (floats / vocab.max(1)).clamp(1, rows.max(1))
}

/// `out` (n × vocab) = `hs` (n × h) · headᵀ: one chunk of the head's logits.
pub(super) fn head_exps(out: &mut [f32], hs: &[f32], head: &[f32], h: usize, vocab: usize) {
    gemm(
        hs.len() / h,
        vocab,
        h,
        MatRef::rows(hs, h),
        MatRef::rows_t(head, h),
        out,
        vocab,
        false,
        true,
    );
}

/// The head's logits (positions × vocabulary), the largest buffer of a step, is kept from one
/// step's backward pass to the next step's forward pass, so that its pages are not handed back to
/// the system and faulted in (zeroed) again every step.
static LOGITS: std::sync::Mutex<Vec<f32>> = std::sync::Mutex::new(Vec::new());

/// A buffer of `len` values for the logits, with unspecified contents (the head's product
/// overwrites them).
pub(super) fn logits_buffer(len: usize) -> Vec<f32> {
    let mut buf = std::mem::take(&mut *LOGITS.lock().unwrap_or_else(|e| e.into_inner()));
    buf.resize(len, 0.0);
    buf
}

/// Keeps `buf` for the next step's logits (the larger one, when two passes run at once).
pub(super) fn keep_logits_buffer(buf: Vec<f32>) {
    let mut kept = LOGITS.lock().unwrap_or_else(|e| e.into_inner());
    if buf.capacity() > kept.capacity() {
        *kept = buf;
    }
}

/// One chunk of the head's scored rows, and where its weight gradient's sum over them is cut
/// (`None`: every KC rows).
pub(super) struct HeadChunk {
    pub(super) rows: std::ops::Range<usize>,
    pub(super) cuts: Option<Vec<usize>>,
}

/// The head's chunks of `n` scored rows, at most `rows` each: consecutive, or, for a batch computed
/// without its padding, the padded batch's chunks (`at`: each row's place in it) less their padding.
pub(super) fn head_chunks(n: usize, rows: usize, at: Option<&[usize]>) -> Vec<HeadChunk> {
    let Some(at) = at else {
        return (0..n)
            .step_by(rows.max(1))
            .map(|r0| HeadChunk {
                rows: r0..(r0 + rows).min(n),
                cuts: None,
            })
            .collect();
    };
    let mut chunks = vec![];
    let mut i = 0;
    while i < n {
        let c = at[i] / rows;
        let end = i + at[i..].iter().take_while(|&&x| x / rows == c).count();
        let cuts = k_block_starts(at[i..end].iter().map(|&x| x - c * rows));
        chunks.push(HeadChunk {
            rows: i..end,
            cuts: Some(cuts),
        });
        i = end;
    }
    chunks
}
