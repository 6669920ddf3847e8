//! Trainable parameters and AdamW.
//!
//! Parameters live in `Var`s that the optimizer updates in place; policies never read them. A
//! `snapshot` copies them into fresh tensors, so a policy sampling from a snapshot can never see a
//! half-applied update ("weights never torn").

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var, backprop::GradStore};

use super::fused::{self, FlatParams};

use super::config::ModelConfig;
use super::decoder::Decoder;
use super::error::{ModelError, Result};
use super::weights::TensorMap;

/// Gradients by published parameter name.
pub type Grads = BTreeMap<String, Tensor>;

/// How gradients are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradPath {
    /// The hand-written forward and backward pass (`fused.rs`): f32 on the CPU.
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
        let scale = if temperature > 0.0 {
            1.0 / temperature
        } else {
            1.0
        };
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
                let flat = self.flat()?;
                let id_vec: Vec<u32> = ids.flatten_all()?.to_vec1()?;
                let (lp, tape) =
                    fused::forward(&self.config, &flat, &id_vec, b, pad, from, scale as f32)?;
                let device = ids.device();
                let lp = Var::from_tensor(&Tensor::from_vec(lp, (b, s - from), device)?)?;
                let (l, x) = loss(lp.as_tensor())?;
                let store = l.backward()?;
                let dlp: Vec<f32> = match store.get(lp.as_tensor()) {
                    Some(g) => g.flatten_all()?.to_vec1()?,
                    None => vec![0.0; b * (s - from)],
                };
                let flat_grads = fused::backward(&self.config, &flat, &tape, &dlp)?;
                let mut grads = Grads::new();
                for (name, g) in flat_grads {
                    let var = self.vars.get(&name).ok_or_else(|| {
                        ModelError::Invalid(format!("gradient for unknown tensor `{name}`"))
                    })?;
                    grads.insert(name, Tensor::from_vec(g, var.shape(), device)?);
                }
                Ok((x, grads))
            }
        }
    }

    /// The gradients of an autograd `backward` by parameter name.
    pub fn grads_from_store(&self, store: &GradStore) -> Grads {
        self.vars
            .iter()
            .filter_map(|(k, v)| store.get(v.as_tensor()).map(|g| (k.clone(), g.clone())))
            .collect()
    }

    fn flat(&self) -> Result<FlatParams> {
        self.vars
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().flatten_all()?.to_vec1::<f32>()?)))
            .collect()
    }

    /// A decoder whose forward pass records gradients into these variables.
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

/// AdamW (decoupled weight decay) whose moments can be saved and restored, for exact resume.
pub struct AdamW {
    pub config: AdamWConfig,
    pub step: u64,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            step: 0,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
        }
    }

    /// The global L2 norm of the gradients of `params`.
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
            if self.step_cpu(name, var, g, lr, scale, bc1, bc2)? {
                continue;
            }
            let g = (g * scale)?;
            let m = match self.m.get(name) {
                Some(m) => ((m * c.beta1)? + (&g * (1.0 - c.beta1))?)?,
                None => (&g * (1.0 - c.beta1))?,
            };
            let v = match self.v.get(name) {
                Some(v) => ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?,
                None => (g.sqr()? * (1.0 - c.beta2))?,
            };
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            let w = var.as_tensor();
            let next = ((w * (1.0 - lr * c.weight_decay))? - (update * lr)?)?;
            var.set(&next.detach())?;
            self.m.insert(name.clone(), m.detach());
            self.v.insert(name.clone(), v.detach());
        }
        Ok(())
    }

    /// The update of one f32 CPU tensor as one pass over raw memory; false (nothing done) elsewhere.
    #[allow(clippy::too_many_arguments)]
    fn step_cpu(
        &mut self,
        name: &str,
        var: &Var,
        g: &Tensor,
        lr: f64,
        scale: f64,
        bc1: f64,
        bc2: f64,
    ) -> Result<bool> {
        let c = &self.config;
        let w = var.as_tensor();
        if !w.device().is_cpu() || w.dtype() != DType::F32 || g.dtype() != DType::F32 {
            return Ok(false);
        }
        let n = w.elem_count();
        let zeros = || vec![0f32; n];
        let mut m = match self.m.get(name) {
            Some(t) => t.flatten_all()?.to_vec1::<f32>()?,
            None => zeros(),
        };
        let mut v = match self.v.get(name) {
            Some(t) => t.flatten_all()?.to_vec1::<f32>()?,
            None => zeros(),
        };
        let mut out = w.flatten_all()?.to_vec1::<f32>()?;
        let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
        let (scale, decay, lr) = (scale as f32, (1.0 - lr * c.weight_decay) as f32, lr as f32);
        let (ibc1, ibc2) = ((1.0 / bc1) as f32, (1.0 / bc2) as f32);
        let done = cpu_f32(g, |g| {
            for i in 0..n {
                let gi = g[i] * scale;
                m[i] = b1 * m[i] + (1.0 - b1) * gi;
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                let update = (m[i] * ibc1) / ((v[i] * ibc2).sqrt() + eps);
                out[i] = out[i] * decay - lr * update;
            }
        });
        if done.is_none() {
            return Ok(false);
        }
        let (shape, device) = (w.shape().clone(), w.device().clone());
        var.set(&Tensor::from_vec(out, shape.clone(), &device)?)?;
        self.m.insert(
            name.to_string(),
            Tensor::from_vec(m, shape.clone(), &device)?,
        );
        self.v
            .insert(name.to_string(), Tensor::from_vec(v, shape, &device)?);
        Ok(true)
    }

    /// The moments as named tensors (`m.NAME`, `v.NAME`), for a checkpoint.
    pub fn state(&self) -> TensorMap {
        let mut out = TensorMap::new();
        for (k, t) in &self.m {
            out.insert(format!("m.{k}"), t.clone());
        }
        for (k, t) in &self.v {
            out.insert(format!("v.{k}"), t.clone());
        }
        out
    }

    /// Restores moments saved by `state`, at optimizer step `step`.
    pub fn restore(&mut self, state: &TensorMap, step: u64) {
        self.step = step;
        self.m.clear();
        self.v.clear();
        for (k, t) in state {
            if let Some(n) = k.strip_prefix("m.") {
                self.m.insert(n.to_string(), t.clone());
            } else if let Some(n) = k.strip_prefix("v.") {
                self.v.insert(n.to_string(), t.clone());
            }
        }
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
