//! The proxy model's difficulty signal (METHOD §1): at every position, the entropy of the renormalised
//! top-k next-token distribution, teacher-forced and batched.

use super::decoder::{Decoder, Mode, left_pad};
use super::error::Result;

/// Entropy (nats) of `softmax` over the `k` largest logits of one row.
pub fn topk_entropy(logits: &[f32], k: usize) -> f32 {
    let k = k.min(logits.len()).max(1);
    let mut top: Vec<f32> = logits.to_vec();
    if k < top.len() {
        top.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        top.truncate(k);
    }
    let max = top.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f32 = top.iter().map(|&x| (x - max).exp()).sum();
    top.iter()
        .map(|&x| {
            let p = (x - max).exp() / z;
            if p > 0.0 { -p * p.ln() } else { 0.0 }
        })
        .sum()
}

/// For each sequence, `out[t]` = top-k entropy of predicting token t from tokens `..t` (`out[0]` = 0).
///
/// Long sequences are read in windows of `window` tokens, each preceded by up to `overlap` tokens of
/// context; `batch` windows go through the model together.
pub fn sequence_entropies(
    model: &Decoder,
    seqs: &[Vec<u32>],
    k: usize,
    window: usize,
    overlap: usize,
    batch: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut out: Vec<Vec<f32>> = seqs.iter().map(|s| vec![0.0; s.len()]).collect();
    // (sequence, first scored position, tokens fed): scores positions start..start+window.
    let mut jobs: Vec<(usize, usize, usize)> = vec![];
    for (i, s) in seqs.iter().enumerate() {
        let mut start = 1;
        while start < s.len() {
            let from = start.saturating_sub(overlap + 1);
            jobs.push((i, start, from));
            start += window;
        }
    }
    let device = model.device();
    for chunk in jobs.chunks(batch.max(1)) {
        let rows: Vec<&[u32]> = chunk
            .iter()
            .map(|&(i, start, from)| &seqs[i][from..(start + window).min(seqs[i].len())])
            .collect();
        let batch = left_pad(&rows, device)?;
        let pad = &batch.pad;
        let logits = model.logits(&model.forward_padded(&batch, Mode::Infer)?, Mode::Infer)?;
        for (b, &(i, start, from)) in chunk.iter().enumerate() {
            let end = (start + window).min(seqs[i].len());
            // Position t is predicted by the logits at t − 1, which sit at column pad + (t − 1 − from).
            let first_col = pad[b] + (start - 1 - from);
            let rows: Vec<Vec<f32>> = logits
                .get(b)?
                .narrow(0, first_col, end - start)?
                .to_vec2()?;
            for (j, row) in rows.iter().enumerate() {
                out[i][start + j] = topk_entropy(row, k);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_by_hand() {
        // Two equal logits among k = 2: ln 2. The rest of the row is ignored.
        assert!((topk_entropy(&[5.0, 5.0, -10.0, -10.0], 2) - 2f32.ln()).abs() < 1e-6);
        // Uniform over 4 with k = 4: ln 4.
        assert!((topk_entropy(&[1.0; 4], 4) - 4f32.ln()).abs() < 1e-6);
        // p = (e/(e+1), 1/(e+1)).
        let p = 1f32.exp() / (1f32.exp() + 1.0);
        let h = -(p * p.ln() + (1.0 - p) * (1.0 - p).ln());
        assert!((topk_entropy(&[1.0, 0.0, -50.0], 2) - h).abs() < 1e-6);
    }
}
