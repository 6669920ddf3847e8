//! Trainable parameters and their gradients, by the CPU backend's hand-written pass or candle's
//! autograd (AdamW is in `optim.rs`).
//!
//! Parameters live in `Var`s that the optimizer updates in place; policies never read them. A
//! `snapshot` copies them into fresh tensors, so a policy sampling from a snapshot can never see a
//! half-applied update ("weights never torn").

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var, backprop::GradStore};

use crate::cpu as fused;

use super::config::ModelConfig;
use super::decoder::Decoder;
use super::error::{ModelError, Result};
use super::layout::Layout;
use super::tensor_file::TensorFile;
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

/// Gradients summed over several passes; see [`Trainable::accumulate_groups`].
#[derive(Default)]
pub struct GradSum {
    flat: fused::FlatGrads,
    tensors: Grads,
}

/// The parameters being trained, by published name (sorted, so iteration order is stable).
pub struct Trainable {
    pub config: ModelConfig,
    layout: Layout,
    vars: BTreeMap<String, Var>,
    /// The gradient path; `Fused` on the CPU unless changed.
    pub path: GradPath,
    /// The fused path computes the head's logits in chunks of at most this many floats (rows ×
    /// vocabulary), recomputing them in the backward pass, so that no whole batch's logits are
    /// held (default `cpu::HEAD_CHUNK_FLOATS`; the same gradients to float rounding whatever it is).
    pub head_chunk_floats: usize,
    /// The fused path keeps at most this many activation floats for the backward pass; past it, each
    /// layer keeps only its input and is recomputed in the backward pass (default
    /// `cpu::TAPE_FLOATS`; the same gradients to the bit whatever it is).
    pub tape_floats: usize,
}

impl Trainable {
    /// Copies `weights` into fresh variables.
    pub fn new(config: &ModelConfig, weights: &TensorMap) -> Result<Self> {
        let layout = Layout::of(config);
        let mut vars = BTreeMap::new();
        for (name, _) in layout.tensors() {
            let t = weights
                .get(&name)
                .ok_or_else(|| ModelError::Invalid(format!("weights lack tensor `{name}`")))?;
            vars.insert(name, Var::from_tensor(&t.to_dtype(DType::F32)?.copy()?)?);
        }
        let path = match vars.values().next() {
            Some(v) => super::Route::of(v.as_tensor()).grads,
            None => GradPath::Autograd,
        };
        Ok(Trainable {
            config: config.clone(),
            layout,
            vars,
            path,
            head_chunk_floats: fused::HEAD_CHUNK_FLOATS,
            tape_floats: fused::TAPE_FLOATS,
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
                    |flat| {
                        fused::forward(
                            &self.config,
                            &self.layout,
                            flat,
                            &id_vec,
                            b,
                            pad,
                            from,
                            scale as f32,
                            self.budget(),
                        )
                    },
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
                let mut sum = GradSum::default();
                let x = self.accumulate_groups(groups, c, temperature, loss, &mut sum)?;
                Ok((x, self.finish(sum)?))
            }
        }
    }

    /// Runs a fused forward pass (log-probs of shape `shape`), the loss on them, and the fused
    /// backward pass from the loss's gradient.
    fn fused_value_and_grad<X, E>(
        &self,
        forward: impl FnOnce(&fused::Params) -> Result<(Vec<f32>, fused::Tape)> + Send,
        shape: (usize, usize),
        device: &candle_core::Device,
        loss: impl FnOnce(&Tensor) -> std::result::Result<(Tensor, X), E>,
    ) -> std::result::Result<(X, Grads), E>
    where
        E: From<ModelError> + From<candle_core::Error>,
    {
        let mut flat = fused::FlatGrads::new();
        let x = self.fused_pass(forward, shape, device, loss, &mut flat)?;
        Ok((x, self.flat_to_grads(flat, device)?))
    }

    /// The fused forward pass, the loss, and the backward pass, whose gradients are added into `acc`.
    fn fused_pass<X, E>(
        &self,
        forward: impl FnOnce(&fused::Params) -> Result<(Vec<f32>, fused::Tape)> + Send,
        shape: (usize, usize),
        device: &candle_core::Device,
        loss: impl FnOnce(&Tensor) -> std::result::Result<(Tensor, X), E>,
        acc: &mut fused::FlatGrads,
    ) -> std::result::Result<X, E>
    where
        E: From<ModelError> + From<candle_core::Error>,
    {
        // The parameters are read in place, read-locked until the gradients are computed.
        let named = self.vars.iter().map(|(k, v)| (k.as_str(), v.as_tensor()));
        fused::with_params(named, |flat| {
            // Both passes run on a thread of the pool (see `on_pool`); the loss between them is a few
            // candle ops on the per-token log-probs.
            let (lp, tape) = fused::on_pool(|| forward(flat))?;
            let lp = Var::from_tensor(&Tensor::from_vec(lp, shape, device)?)?;
            let (l, x) = loss(lp.as_tensor())?;
            let store = l.backward()?;
            let dlp: Vec<f32> = match store.get(lp.as_tensor()) {
                Some(g) => g.flatten_all()?.to_vec1()?,
                None => vec![0.0; shape.0 * shape.1],
            };
            fused::on_pool(|| fused::backward(&self.config, &self.layout, flat, tape, &dlp, acc))?;
            Ok(x)
        })
    }

    /// Flat gradients as tensors of their parameters' shapes (the buffers are moved, not copied).
    fn flat_to_grads(&self, flat: fused::FlatGrads, device: &candle_core::Device) -> Result<Grads> {
        let mut grads = Grads::new();
        for (name, g) in flat {
            let var = self.vars.get(&name).ok_or_else(|| {
                ModelError::Invalid(format!("gradient for unknown tensor `{name}`"))
            })?;
            grads.insert(name, Tensor::from_vec(g, var.shape(), device)?);
        }
        Ok(grads)
    }

    /// [`Self::value_and_grad_groups`] with the gradients added into `sum` (the micro-batches of one
    /// update). On the fused path they are summed in place, in the buffers the backward pass writes,
    /// so a second micro-batch costs no second set of gradients; on the autograd path, as tensors.
    pub fn accumulate_groups<X, E>(
        &self,
        groups: &[(&[u32], Vec<&[u32]>)],
        c: usize,
        temperature: f64,
        loss: impl FnOnce(&Tensor) -> std::result::Result<(Tensor, X), E>,
        sum: &mut GradSum,
    ) -> std::result::Result<X, E>
    where
        E: From<ModelError> + From<candle_core::Error>,
    {
        if self.path == GradPath::Autograd {
            let (x, grads) = self.value_and_grad_groups(groups, c, temperature, loss)?;
            for (name, t) in grads {
                let t = match sum.tensors.remove(&name) {
                    Some(prev) => (prev + t)?,
                    None => t,
                };
                sum.tensors.insert(name, t);
            }
            return Ok(x);
        }
        let device = self.device()?;
        let rows: usize = groups.iter().map(|g| g.1.len()).sum();
        let scale = super::sample::logit_scale(temperature);
        let shared: Vec<fused::SharedGroup> = groups
            .iter()
            .map(|(p, cs)| fused::SharedGroup {
                prompt: p,
                completions: cs.clone(),
            })
            .collect();
        self.fused_pass(
            |flat| {
                fused::forward_shared(
                    &self.config,
                    &self.layout,
                    flat,
                    &shared,
                    c,
                    scale as f32,
                    self.budget(),
                )
            },
            (rows, c),
            &device,
            loss,
            &mut sum.flat,
        )
    }

    /// The gradients summed in `sum`, as tensors.
    pub fn finish(&self, sum: GradSum) -> Result<Grads> {
        let mut grads = self.flat_to_grads(sum.flat, &self.device()?)?;
        grads.extend(sum.tensors);
        Ok(grads)
    }

    /// The gradients of an autograd `backward` by parameter name.
    pub fn grads_from_store(&self, store: &GradStore) -> Grads {
        self.vars
            .iter()
            .filter_map(|(k, v)| store.get(v.as_tensor()).map(|g| (k.clone(), g.clone())))
            .collect()
    }

    /// The fused pass's memory budget.
    fn budget(&self) -> fused::Budget {
        fused::Budget {
            head_floats: self.head_chunk_floats,
            tape_floats: self.tape_floats,
        }
    }

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
        Decoder::new(&self.config, &self.tensors())
    }

    /// An immutable copy of the current weights.
    /// The weights the policy samples with: a copy in the route's policy dtype (f32 on the CPU, bf16
    /// on CUDA, where the variables stay the f32 master weights).
    pub fn policy_weights(&self) -> Result<TensorMap> {
        self.vars
            .iter()
            .map(|(k, v)| {
                let t = v.as_tensor();
                let dtype = super::Route::of(t).policy_dtype;
                let w = if dtype == t.dtype() {
                    t.copy()?
                } else {
                    t.to_dtype(dtype)?
                };
                Ok((k.clone(), w.detach()))
            })
            .collect()
    }

    /// The variables' own tensors (no copy), where the policy samples in their dtype; `None` where it
    /// needs a converted copy (bf16 on CUDA). A decoder over them sees every later update, which
    /// writes the variables in place: only for a policy that never samples during an update.
    pub fn shared_weights(&self) -> Option<TensorMap> {
        self.vars
            .iter()
            .map(|(k, v)| {
                let t = v.as_tensor();
                (super::Route::of(t).policy_dtype == t.dtype()).then(|| (k.clone(), t.detach()))
            })
            .collect()
    }

    pub fn snapshot(&self) -> Result<TensorMap> {
        self.vars
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?.detach())))
            .collect()
    }

    pub fn vars(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.vars.iter()
    }

    /// Every variable's own tensor by name (no copy): what a checkpoint writes.
    pub fn tensors(&self) -> TensorMap {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Overwrites every variable from `file` (a checkpoint's weights, when resuming), one tensor at
    /// a time: a tensor the file lacks, of another shape, or holding NaN or infinite values is an
    /// error naming the file and the tensor.
    pub fn read(&mut self, file: &TensorFile) -> Result<()> {
        for (name, var) in &self.vars {
            let t = var.as_tensor();
            let w = file.read(name, t.dims(), t.device())?;
            if !super::weights::all_finite(&w)? {
                return Err(ModelError::NonFinite {
                    path: file.path().to_path_buf(),
                    name: name.clone(),
                });
            }
            var.set(&w)?;
        }
        Ok(())
    }
}
