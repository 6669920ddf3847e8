//! AdamW with decoupled weight decay and a gradient-norm clip. On the CPU with f32 parameters the
//! update is one parallel pass over memory (compiled for AVX-512 where the CPU has it) that writes
//! the weights and the moments in place; elsewhere candle ops do it. Its moments go into every
//! checkpoint from their own memory and are read back into the same buffers, exactly.

use std::collections::BTreeMap;

use candle_core::Tensor;
use rayon::prelude::*;

use super::error::{ModelError, Result};
use super::route::Route;
use super::tensor_file::{Source, TensorFile};
use super::trainable::{Grads, Trainable};
use super::weights::TensorMap;

/// AdamW hyper-parameters (METHOD §4 defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// First and second moments of one parameter: plain memory for f32 CPU parameters (updated in one
/// parallel pass), tensors on other devices (updated with tensor ops).
enum Moments {
    Host {
        m: Vec<f32>,
        v: Vec<f32>,
        shape: candle_core::Shape,
    },
    Device {
        m: Tensor,
        v: Tensor,
    },
}

/// AdamW (decoupled weight decay) whose moments can be saved and restored, for exact resume.
pub struct AdamW {
    pub config: AdamWConfig,
    pub step: u64,
    moments: BTreeMap<String, Moments>,
}

/// Elements per parallel task of the host update.
const CHUNK: usize = 1 << 14;

/// One AdamW update with its constants (bias corrections inverted, decoupled decay folded in).
#[derive(Clone, Copy)]
struct AdamRule {
    b1: f32,
    b2: f32,
    eps: f32,
    decay: f32,
    lr: f32,
    scale: f32,
    ibc1: f32,
    ibc2: f32,
}

impl AdamRule {
    /// Updates the moments `m`, `v` and the weights `w` (gradient `g`) in place, every element of
    /// `w`.
    fn apply(self, w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function is compiled for.
            return unsafe { self.apply_avx512(w, m, v, g) };
        }
        self.apply_portable(w, m, v, g)
    }

    /// The same loop compiled for AVX-512 (square root and division are exact in any width, so
    /// the numbers are the same).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn apply_avx512(self, w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        self.apply_portable(w, m, v, g)
    }

    #[inline(always)]
    fn apply_portable(self, w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        let n = w.len();
        let (m, v, g) = (&mut m[..n], &mut v[..n], &g[..n]);
        for i in 0..n {
            let gi = g[i] * self.scale;
            m[i] = self.b1 * m[i] + (1.0 - self.b1) * gi;
            v[i] = self.b2 * v[i] + (1.0 - self.b2) * gi * gi;
            let update = (m[i] * self.ibc1) / ((v[i] * self.ibc2).sqrt() + self.eps);
            w[i] = w[i] * self.decay - self.lr * update;
        }
    }
}

/// One parameter's host update as an in-place op on its variable: the new weights are written over
/// the old ones, so an update makes no second copy of a tensor (at Qwen3-0.6B's shape the embedding
/// alone is 622 MB). A policy that shares the variables' tensors sees the update either way
/// (`Var::set` writes in place too), and it never samples during one (`max_staleness = 0`).
struct InPlace<'a> {
    rule: AdamRule,
    /// The op's method takes `&self`; the lock hands it the moments to write (never contended).
    moments: std::sync::Mutex<(&'a mut [f32], &'a mut [f32])>,
    g: &'a [f32],
}

impl candle_core::InplaceOp1 for InPlace<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let candle_core::CpuStorage::F32(w) = storage else {
            candle_core::bail!("AdamW: the weights are not f32");
        };
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("AdamW: the weights are not contiguous");
        };
        let w = &mut w[a..b];
        let mut moments = self.moments.lock().expect("moments lock");
        let (m, v) = &mut *moments;
        if m.len() != w.len() || v.len() != w.len() || self.g.len() != w.len() {
            candle_core::bail!("AdamW: weights, moments and gradient differ in size");
        }
        let rule = self.rule;
        w.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(self.g.par_chunks(CHUNK))
            .for_each(|(((w, m), v), g)| rule.apply(w, m, v, g));
        Ok(())
    }
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            step: 0,
            moments: BTreeMap::new(),
        }
    }

    /// Makes zero moments for every parameter of `params` that has none yet, so that a run holds its
    /// whole optimizer state from the start: a machine too small for it fails before the first step,
    /// not after it, and the first step's peak memory is every later step's. Zero moments are what
    /// the first update would start from anyway, so the numbers are the same.
    pub fn reserve(&mut self, params: &Trainable) -> Result<()> {
        for (name, var) in params.vars() {
            if self.moments.contains_key(name) {
                continue;
            }
            let w = var.as_tensor();
            let mo = if Route::of(w).host {
                let n = w.elem_count();
                Moments::Host {
                    m: resident_zeros(n),
                    v: resident_zeros(n),
                    shape: w.shape().clone(),
                }
            } else {
                Moments::Device {
                    m: w.zeros_like()?,
                    v: w.zeros_like()?,
                }
            };
            self.moments.insert(name.clone(), mo);
        }
        Ok(())
    }

    /// The global L2 norm of the gradients.
    pub fn grad_norm(grads: &Grads) -> Result<f64> {
        let mut sq = 0f64;
        for g in grads.values() {
            sq += match cpu_f32(g, |x| x.iter().map(|&v| v as f64 * v as f64).sum::<f64>()) {
                Some(s) => s,
                None => g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64,
            };
        }
        Ok(sq.sqrt())
    }

    /// One update at learning rate `lr`, gradients scaled by `scale` (for norm clipping).
    pub fn step(&mut self, params: &Trainable, grads: &Grads, lr: f64, scale: f64) -> Result<()> {
        self.step += 1;
        let c = self.config.clone();
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for (name, var) in params.vars() {
            let Some(g) = grads.get(name) else {
                continue;
            };
            let w = var.as_tensor();
            let host = Route::of(w).host && Route::of(g).host;
            if host {
                let n = w.elem_count();
                let entry = self
                    .moments
                    .entry(name.clone())
                    .or_insert_with(|| Moments::Host {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                        shape: w.shape().clone(),
                    });
                if let Moments::Host { m, v, .. } = entry {
                    let rule = AdamRule {
                        b1: c.beta1 as f32,
                        b2: c.beta2 as f32,
                        eps: c.eps as f32,
                        decay: (1.0 - lr * c.weight_decay) as f32,
                        lr: lr as f32,
                        scale: scale as f32,
                        ibc1: (1.0 / bc1) as f32,
                        ibc2: (1.0 / bc2) as f32,
                    };
                    let done = cpu_f32(g, |gd| {
                        w.inplace_op1(&InPlace {
                            rule,
                            moments: std::sync::Mutex::new((m.as_mut_slice(), v.as_mut_slice())),
                            g: gd,
                        })
                    });
                    match done {
                        Some(r) => {
                            r.map_err(|e| ModelError::Invalid(format!("AdamW: `{name}`: {e}")))?
                        }
                        None => {
                            return Err(ModelError::Invalid(format!(
                                "AdamW: the gradient of `{name}` is not a contiguous f32 tensor"
                            )));
                        }
                    }
                    continue;
                }
            }
            let g = (g * scale)?;
            let (m, v) = match self.moments.get(name) {
                Some(Moments::Device { m, v }) => (
                    ((m * c.beta1)? + (&g * (1.0 - c.beta1))?)?,
                    ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?,
                ),
                _ => ((&g * (1.0 - c.beta1))?, (g.sqr()? * (1.0 - c.beta2))?),
            };
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            let next = ((w * (1.0 - lr * c.weight_decay))? - (update * lr)?)?;
            var.set(&next.detach())?;
            self.moments.insert(
                name.clone(),
                Moments::Device {
                    m: m.detach(),
                    v: v.detach(),
                },
            );
        }
        Ok(())
    }

    /// The moments as named tensors (`m.NAME`, `v.NAME`): a copy, for inspection. A checkpoint
    /// writes them from their own memory ([`AdamW::sources`]).
    pub fn state(&self) -> Result<TensorMap> {
        let mut out = TensorMap::new();
        for (k, mo) in &self.moments {
            let (m, v) = match mo {
                Moments::Host { m, v, shape } => (
                    Tensor::from_slice(m, shape.clone(), &candle_core::Device::Cpu)?,
                    Tensor::from_slice(v, shape.clone(), &candle_core::Device::Cpu)?,
                ),
                Moments::Device { m, v } => (m.clone(), v.clone()),
            };
            out.insert(format!("m.{k}"), m);
            out.insert(format!("v.{k}"), v);
        }
        Ok(out)
    }

    /// The moments to write into a checkpoint (`m.NAME`, `v.NAME`), from their own memory.
    pub fn sources(&self) -> Vec<(String, Source<'_>)> {
        let mut out = Vec::with_capacity(2 * self.moments.len());
        for (k, mo) in &self.moments {
            let (m, v) = match mo {
                Moments::Host { m, v, shape } => (
                    Source::Floats {
                        data: m,
                        shape: shape.dims().to_vec(),
                    },
                    Source::Floats {
                        data: v,
                        shape: shape.dims().to_vec(),
                    },
                ),
                Moments::Device { m, v } => (Source::of(m), Source::of(v)),
            };
            out.push((format!("m.{k}"), m));
            out.push((format!("v.{k}"), v));
        }
        out
    }

    /// Restores the moments of every parameter of `params` from `file` (written from
    /// [`AdamW::sources`]), at optimizer step `step`. Host moments are read into the buffers
    /// [`AdamW::reserve`] made, so a resume holds no second copy of them. A moment the file lacks,
    /// or of another shape, is an error naming the file and the tensor; so is a moment in the file
    /// for a parameter the model does not have.
    pub fn read(&mut self, file: &TensorFile, params: &Trainable, step: u64) -> Result<()> {
        self.reserve(params)?;
        for name in file.names() {
            // Other tensors may share the file (the EMA teacher's `ema.NAME`).
            let Some(param) = name.strip_prefix("m.").or_else(|| name.strip_prefix("v.")) else {
                continue;
            };
            if !self.moments.contains_key(param) {
                return Err(ModelError::Invalid(format!(
                    "{}: tensor `{name}` is not a moment of any of the model's parameters",
                    file.path().display()
                )));
            }
        }
        for (name, var) in params.vars() {
            let w = var.as_tensor();
            let shape = w.dims();
            let (mk, vk) = (format!("m.{name}"), format!("v.{name}"));
            match self.moments.get_mut(name).expect("reserved above") {
                Moments::Host { m, v, .. } => {
                    file.read_into(&mk, shape, m)?;
                    file.read_into(&vk, shape, v)?;
                }
                Moments::Device { m, v } => {
                    *m = file.read(&mk, shape, w.device())?;
                    *v = file.read(&vk, shape, w.device())?;
                }
            }
        }
        self.step = step;
        Ok(())
    }
}

/// `n` zeros whose memory is resident now. Zeroed allocations of this size come from fresh pages
/// that the system maps only when first written, which would put the moments' memory off to the
/// first update again; one write per page makes it resident here.
fn resident_zeros(n: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; n];
    let per_page = 4096 / std::mem::size_of::<f32>();
    v.par_chunks_mut(CHUNK).for_each(|c| {
        for x in c.iter_mut().step_by(per_page) {
            // SAFETY: `x` is a valid, aligned, exclusive reference into `v`. The write is volatile
            // so that it is not removed as a store of the zero already there.
            unsafe { std::ptr::write_volatile(x, 0.0) };
        }
    });
    v
}

/// Runs `f` on the elements of an f32 CPU tensor in place (no copy); None for other tensors.
fn cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) = &*storage else {
        return None;
    };
    let (a, b) = layout.contiguous_offsets()?;
    Some(f(&data[a..b]))
}
