//! `log_softmax(scale · logits)[target]` as one fused candle op with a hand-written backward pass.
//!
//! Over a large vocabulary this is the costliest part of a training step when written with composed
//! ops (max, sub, exp, sum, log, gather and their backward each make a vocabulary-sized pass and
//! allocation). Fused, the forward is one pass per row and the backward one more. On devices other than
//! the CPU the composed ops are used.

use candle_core::{CpuStorage, CustomOp1, D, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// log p(target_i) under `softmax(scale · logits_i)` for each row i.
///
/// logits: (n, vocab); targets: n ids; returns (n,), differentiable with respect to `logits`.
pub fn target_log_softmax(logits: &Tensor, targets: &[u32], scale: f64) -> Result<Tensor> {
    let (n, _v) = logits.dims2()?;
    if targets.len() != n {
        candle_core::bail!(
            "target_log_softmax: {} rows but {} targets",
            n,
            targets.len()
        );
    }
    if !logits.device().is_cpu() {
        let scaled = if scale != 1.0 {
            (logits * scale)?
        } else {
            logits.clone()
        };
        let lp = candle_nn::ops::log_softmax(&scaled, D::Minus1)?;
        let idx = Tensor::from_slice(targets, (n, 1), logits.device())?;
        return lp.gather(&idx, 1)?.squeeze(1);
    }
    logits.contiguous()?.apply_op1(TargetLogSoftmax {
        targets: targets.to_vec(),
        scale: scale as f32,
    })
}

pub(super) struct TargetLogSoftmax {
    targets: Vec<u32>,
    scale: f32,
}

pub(super) fn rows<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<(&'a [f32], usize)> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("target_log_softmax expects f32 logits");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("target_log_softmax expects contiguous logits");
    };
    let v = *layout.dims().last().unwrap_or(&1);
    Ok((&data[start..end], v))
}

/// (max, log Σ exp(scale·x − max)) of one row, max taken of scale·x.
pub(super) fn log_norm(row: &[f32], scale: f32) -> (f32, f32) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
    let sum: f32 = row.iter().map(|&x| (x * scale - max).exp()).sum();
    (max, sum.ln())
}

impl CustomOp1 for TargetLogSoftmax {
    fn name(&self) -> &'static str {
        "target-log-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (data, v) = rows(storage, layout)?;
        let out: Vec<f32> = data
            .par_chunks(v)
            .zip(self.targets.par_iter())
            .map(|(row, &t)| {
                let (max, lse) = log_norm(row, self.scale);
                row[t as usize] * self.scale - max - lse
            })
            .collect();
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    /// d logp_i / d x_ij = scale · (δ(j = t_i) − softmax(scale · x_i)_j)
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g: Vec<f32> = grad_res.to_vec1()?;
        let grad = arg.apply_op1_no_bwd(&TargetLogSoftmaxGrad {
            targets: &self.targets,
            grad: &g,
            scale: self.scale,
        })?;
        Ok(Some(grad))
    }
}

pub(super) struct TargetLogSoftmaxGrad<'a> {
    targets: &'a [u32],
    grad: &'a [f32],
    scale: f32,
}

impl CustomOp1 for TargetLogSoftmaxGrad<'_> {
    fn name(&self) -> &'static str {
        "target-log-softmax-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (data, v) = rows(storage, layout)?;
        let mut out = vec![0f32; data.len()];
        out.par_chunks_mut(v)
            .zip(data.par_chunks(v))
            .zip(self.targets.par_iter().zip(self.grad.par_iter()))
            .for_each(|((o, row), (&t, &g))| {
                if g == 0.0 {
                    return;
                }
                let (max, lse) = log_norm(row, self.scale);
                let k = -g * self.scale;
                for (o, &x) in o.iter_mut().zip(row) {
                    *o = k * (x * self.scale - max - lse).exp();
                }
                o[t as usize] += g * self.scale;
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_composed_ops_in_value_and_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (5, 33), &dev).unwrap()).unwrap();
        let targets = [0u32, 7, 32, 3, 3];
        let upstream = Tensor::new(&[1.0f32, -0.5, 2.0, 0.0, 0.3], &dev).unwrap();
        for scale in [1.0, 1.25] {
            let fused = target_log_softmax(x.as_tensor(), &targets, scale).unwrap();
            let lp =
                candle_nn::ops::log_softmax(&(x.as_tensor() * scale).unwrap(), D::Minus1).unwrap();
            let idx = Tensor::new(&targets, &dev).unwrap().unsqueeze(1).unwrap();
            let composed = lp.gather(&idx, 1).unwrap().squeeze(1).unwrap();
            let a: Vec<f32> = fused.to_vec1().unwrap();
            let b: Vec<f32> = composed.to_vec1().unwrap();
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() < 1e-5, "{p} vs {q}");
            }
            let ga = (fused * &upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gb = (composed * &upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let ga: Vec<Vec<f32>> = ga.get(x.as_tensor()).unwrap().to_vec2().unwrap();
            let gb: Vec<Vec<f32>> = gb.get(x.as_tensor()).unwrap().to_vec2().unwrap();
            for (r, s) in ga.iter().zip(&gb) {
                for (p, q) in r.iter().zip(s) {
                    assert!((p - q).abs() < 1e-5, "{p} vs {q}");
                }
            }
        }
    }
}
