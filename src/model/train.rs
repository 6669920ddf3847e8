//! Trainable parameters and AdamW.
//!
//! Parameters live in `Var`s that the optimizer updates in place; policies never read them. A
//! `snapshot` copies them into fresh tensors, so a policy sampling from a snapshot can never see a
//! half-applied update ("weights never torn").

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var, backprop::GradStore};

use super::config::ModelConfig;
use super::decoder::Decoder;
use super::error::{ModelError, Result};
use super::weights::TensorMap;

/// The parameters being trained, by published name (sorted, so iteration order is stable).
pub struct Trainable {
    pub config: ModelConfig,
    vars: BTreeMap<String, Var>,
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
        Ok(Trainable {
            config: config.clone(),
            vars,
        })
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
    pub fn grad_norm(params: &Trainable, grads: &GradStore) -> Result<f64> {
        let mut sq = 0f64;
        for (_, var) in params.vars() {
            if let Some(g) = grads.get(var.as_tensor()) {
                sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        Ok(sq.sqrt())
    }

    /// One update at learning rate `lr`, gradients scaled by `scale` (for norm clipping).
    pub fn step(
        &mut self,
        params: &Trainable,
        grads: &GradStore,
        lr: f64,
        scale: f64,
    ) -> Result<()> {
        self.step += 1;
        let c = &self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for (name, var) in params.vars() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
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
