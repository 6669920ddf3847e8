//! Trainable parameters and AdamW.
//!
//! Parameters live in `Var`s that the optimizer updates in place; policies never read them. A
//! `snapshot` copies them into fresh tensors, so a policy sampling from a snapshot can never see a
//! half-applied update ("weights never torn").

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var, backprop::GradStore};
use rayon::prelude::*;

use crate::cpu as fused;

use super::config::ModelConfig;
use super::decoder::Decoder;
use super::error::{ModelError, Result};
use super::weights::TensorMap;

/// Gradients by published parameter name.
pub type Grads = BTreeMap<String, Tensor>;

/// How gradients are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradPath {
    /// The hand-written forward and backward pass of the CPU backend (`src/cpu/`): f32 on the CPU.
    Fused,
    /// candle's autograd over `Decoder::forward` in `Mode::Train`: any device.
    Autograd,
}

/// The parameters being trained, by published name (sorted, so iteration order is stable).
pub struct Trainable {
    pub config: ModelConfig,
    vars: BTreeMap<String, Var>,
    /// The gradient path; `Fused` on the CPU unless changed.
    pub path: GradPath,
}

impl Trainable {
    /// Copies `weights` into fresh variables.
    pub fn new(config: &ModelConfig, weights: &TensorMap) -> Result<Self> {
        let mut vars = BTreeMap::new();
        for (name, _) in config.tensor_shapes() {
            let t = weights
                .get(&name)
                .ok_or_else(|| ModelError::Invalid(format!("weights lack tensor `{name}`")))?;
            vars.insert(name, Var::from_tensor(&t.to_dtype(DType::F32)?.copy()?)?);
        }
        let cpu = vars.values().all(|v| v.device().is_cpu());
        Ok(Trainable {
            config: config.clone(),
            vars,
            path: if cpu {
                GradPath::Fused
            } else {
                GradPath::Autograd
            },
        })
    }

    /// Teacher-forced log-probs of tokens `from..` of a left-padded batch (as `token_logprobs` in
    /// `Mode::Train`: (b, s − from), at `temperature`), passed to `loss`, which returns the loss tensor
    /// and anything else; returns that and the loss's gradient for every parameter.
    pub fn value_and_grad<X, E>(
        &self,
        ids: &Tensor,
        pad: &[usize],
        from: usize,
        temperature: f64,
        loss: impl FnOnce(&Tensor) -> std::result::Result<(Tensor, X), E>,
    ) -> std::result::Result<(X, Grads), E>
    where
        E: From<ModelError> + From<candle_core::Error>,
    {
        let scale = super::sample::logit_scale(temperature);
        match self.path {
            GradPath::Autograd => {
                let lp = super::sample::token_logprobs(
                    &self.decoder()?,
                    ids,
                    pad,
                    from,
                    temperature,
                    super::decoder::Mode::Train,
                )?;
                let (l, x) = loss(&lp)?;
                let store = l.backward()?;
                Ok((x, self.grads_from_store(&store)))
            }
            GradPath::Fused => {
                let (b, s) = ids.dims2()?;
                let id_vec: Vec<u32> = ids.flatten_all()?.to_vec1()?;
                self.fused_value_and_grad(
                    |flat| fused::forward(&self.config, flat, &id_vec, b, pad, from, scale as f32),
                    (b, s - from),
                    ids.device(),
                    loss,
                )
            }
        }
    }

    /// `value_and_grad` for GRPO groups (prompt, completions): the log-probs of every completion's
    /// tokens given its prompt, (completions × `c`), each completion right-aligned in its row with 0
    /// before it: what `value_and_grad` gives for the left-padded rows prompt ++ completion with
    /// `from = width − c`. On the fused path each prompt is computed once and attended to by all of
    /// its completions, which saves most of the work when prompts are long.
    pub fn value_and_grad_groups<X, E>(
        &self,
        groups: &[(&[u32], Vec<&[u32]>)],
        c: usize,
        temperature: f64,
        loss: impl FnOnce(&Tensor) -> std::result::Result<(Tensor, X), E>,
    ) -> std::result::Result<(X, Grads), E>
    where
        E: From<ModelError> + From<candle_core::Error>,
    {
        let device = self.device()?;
        let rows: usize = groups.iter().map(|g| g.1.len()).sum();
        match self.path {
            GradPath::Autograd => {
                let full: Vec<Vec<u32>> = groups
                    .iter()
                    .flat_map(|(p, cs)| cs.iter().map(move |c| [*p, *c].concat()))
                    .collect();
                let batch = super::decoder::left_pad(&full, &device)?;
                self.value_and_grad(&batch.ids, &batch.pad, batch.width - c, temperature, loss)
            }
            GradPath::Fused => {
                let scale = super::sample::logit_scale(temperature);
                let shared: Vec<fused::SharedGroup> = groups
                    .iter()
                    .map(|(p, cs)| fused::SharedGroup {
                        prompt: p,
                        completions: cs.clone(),
                    })
                    .collect();
                self.fused_value_and_grad(
                    |flat| fused::forward_shared(&self.config, flat, &shared, c, scale as f32),
                    (rows, c),
                    &device,
                    loss,
                )
            }
        }
    }

    /// Runs a fused forward pass (log-probs of shape `shape`), the loss on them, and the fused
    /// backward pass from the loss's gradient.
    fn fused_value_and_grad<X, E>(
        &self,
        forward: impl FnOnce(&fused::Params) -> Result<(Vec<f32>, fused::Tape)>,
        shape: (usize, usize),
        device: &candle_core::Device,
        loss: impl FnOnce(&Tensor) -> std::result::Result<(Tensor, X), E>,
    ) -> std::result::Result<(X, Grads), E>
    where
        E: From<ModelError> + From<candle_core::Error>,
    {
        // The parameters are read in place, read-locked until the gradients are computed.
        let named = self.vars.iter().map(|(k, v)| (k.as_str(), v.as_tensor()));
        fused::with_params(named, |flat| {
            let (lp, tape) = forward(flat)?;
            let lp = Var::from_tensor(&Tensor::from_vec(lp, shape, device)?)?;
            let (l, x) = loss(lp.as_tensor())?;
            let store = l.backward()?;
            let dlp: Vec<f32> = match store.get(lp.as_tensor()) {
                Some(g) => g.flatten_all()?.to_vec1()?,
                None => vec![0.0; shape.0 * shape.1],
            };
            let flat_grads = fused::backward(&self.config, flat, tape, &dlp)?;
            let mut grads = Grads::new();
            for (name, g) in flat_grads {
                let var = self.vars.get(&name).ok_or_else(|| {
                    ModelError::Invalid(format!("gradient for unknown tensor `{name}`"))
                })?;
                grads.insert(name, Tensor::from_vec(g, var.shape(), device)?);
            }
            Ok((x, grads))
        })
    }

    /// The gradients of an autograd `backward` by parameter name.
    pub fn grads_from_store(&self, store: &GradStore) -> Grads {
        self.vars
            .iter()
            .filter_map(|(k, v)| store.get(v.as_tensor()).map(|g| (k.clone(), g.clone())))
            .collect()
    }

    /// A decoder whose forward pass records gradients into these variables.
    /// The device the parameters live on.
    pub fn device(&self) -> Result<candle_core::Device> {
        Ok(self
            .vars
            .values()
            .next()
            .ok_or_else(|| ModelError::Invalid("no parameters".into()))?
            .device()
            .clone())
    }

    pub fn decoder(&self) -> Result<Decoder> {
        let map: TensorMap = self
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        Decoder::new(&self.config, &map)
    }

    /// An immutable copy of the current weights.
    pub fn snapshot(&self) -> Result<TensorMap> {
        self.vars
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?.detach())))
            .collect()
    }

    pub fn vars(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.vars.iter()
    }

    /// Overwrites every variable from `weights` (used when resuming).
    pub fn load(&mut self, weights: &TensorMap) -> Result<()> {
        for (name, var) in &self.vars {
            let t = weights
                .get(name)
                .ok_or_else(|| ModelError::Invalid(format!("weights lack tensor `{name}`")))?;
            var.set(t)?;
        }
        Ok(())
    }
}

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
    /// Updates the moments `m`, `v` in place and writes the new weights of `w` (gradient `g`) to
    /// `out`, every element of it.
    fn apply(
        self,
        out: &mut [std::mem::MaybeUninit<f32>],
        m: &mut [f32],
        v: &mut [f32],
        w: &[f32],
        g: &[f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function is compiled for.
            return unsafe { self.apply_avx512(out, m, v, w, g) };
        }
        self.apply_portable(out, m, v, w, g)
    }

    /// The same loop compiled for AVX-512 (square root and division are exact in any width, so
    /// the numbers are the same).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn apply_avx512(
        self,
        out: &mut [std::mem::MaybeUninit<f32>],
        m: &mut [f32],
        v: &mut [f32],
        w: &[f32],
        g: &[f32],
    ) {
        self.apply_portable(out, m, v, w, g)
    }

    #[inline(always)]
    fn apply_portable(
        self,
        out: &mut [std::mem::MaybeUninit<f32>],
        m: &mut [f32],
        v: &mut [f32],
        w: &[f32],
        g: &[f32],
    ) {
        let n = out.len();
        let (m, v, w, g) = (&mut m[..n], &mut v[..n], &w[..n], &g[..n]);
        for i in 0..n {
            let gi = g[i] * self.scale;
            m[i] = self.b1 * m[i] + (1.0 - self.b1) * gi;
            v[i] = self.b2 * v[i] + (1.0 - self.b2) * gi * gi;
            let update = (m[i] * self.ibc1) / ((v[i] * self.ibc2).sqrt() + self.eps);
            out[i].write(w[i] * self.decay - self.lr * update);
        }
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
            let host = w.device().is_cpu() && w.dtype() == DType::F32 && g.dtype() == DType::F32;
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
                    // The new weights go to a new buffer: a snapshot may still hold the old one.
                    let mut out = Vec::with_capacity(n);
                    let done = cpu_f32(w, |wd| {
                        cpu_f32(g, |gd| {
                            if wd.len() != n || gd.len() != n {
                                return None;
                            }
                            (out.spare_capacity_mut()[..n].par_chunks_mut(CHUNK))
                                .zip(m.par_chunks_mut(CHUNK))
                                .zip(v.par_chunks_mut(CHUNK))
                                .zip(wd.par_chunks(CHUNK).zip(gd.par_chunks(CHUNK)))
                                .for_each(|(((o, m), v), (w, g))| rule.apply(o, m, v, w, g));
                            Some(())
                        })
                    });
                    if done.flatten().flatten().is_none() {
                        return Err(ModelError::Invalid(format!(
                            "AdamW: `{name}` or its gradient is not a contiguous f32 tensor of its shape"
                        )));
                    }
                    // SAFETY: every chunk of the n values was written by `apply`.
                    unsafe { out.set_len(n) };
                    var.set(&Tensor::from_vec(out, w.shape().clone(), w.device())?)?;
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

    /// The moments as named tensors (`m.NAME`, `v.NAME`), for a checkpoint.
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

    /// Restores moments saved by `state`, at optimizer step `step`.
    pub fn restore(&mut self, state: &TensorMap, step: u64) -> Result<()> {
        self.step = step;
        self.moments.clear();
        for (k, m) in state {
            let Some(name) = k.strip_prefix("m.") else {
                continue;
            };
            let v = state.get(&format!("v.{name}")).ok_or_else(|| {
                ModelError::Invalid(format!("optimizer state has `m.{name}` but no `v.{name}`"))
            })?;
            let mo = if m.device().is_cpu() && m.dtype() == DType::F32 {
                Moments::Host {
                    m: m.flatten_all()?.to_vec1()?,
                    v: v.flatten_all()?.to_vec1()?,
                    shape: m.shape().clone(),
                }
            } else {
                Moments::Device {
                    m: m.clone(),
                    v: v.clone(),
                }
            };
            self.moments.insert(name.to_string(), mo);
        }
        Ok(())
    }
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
