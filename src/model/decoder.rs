//! The decoder-only transformer shared by Qwen2, Qwen3 and Llama: RMSNorm, rotary attention with
//! grouped-query heads, SwiGLU MLP. One file serves the three families because they differ only in
//! q/k/v biases (Qwen2) and per-head q/k norms (Qwen3); the config says which.
//!
//! Two paths over the same weights: `Mode::Train` uses only ops with a backward pass (candle-nn's fused
//! `rope`, `softmax_last_dim` and `rms_norm` return outputs detached from the graph), `Mode::Infer`
//! uses the fused ops. A test proves they agree. The KV cache is passed in, so any number of rollouts
//! share one immutable set of weights.

use candle_core::{D, DType, Device, Module, Tensor};

use super::config::ModelConfig;
use super::error::{ModelError, Result};
use super::layout::{Layout, Proj};
use super::weights::TensorMap;

/// Which kernels to use: differentiable (training) or fused (sampling, scoring without gradient).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Train,
    Infer,
}

struct Linear {
    w: Tensor,
    b: Option<Tensor>,
}

impl Linear {
    /// x: (n, in) -> (n, out)
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let y = matmul_t(x, &self.w, mode)?;
        Ok(match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// `x · wᵀ`; x: (n, in), w: (out, in). Inference on the CPU takes the CPU backend's kernels (`cpu::matmul_t`);
/// training and other devices candle's matmul.
fn matmul_t(x: &Tensor, w: &Tensor, mode: Mode) -> Result<Tensor> {
    if mode == Mode::Infer && super::Route::of(x).host && super::Route::of(w).host {
        return Ok(crate::cpu::matmul_t(&x.contiguous()?, w)?);
    }
    Ok(x.matmul(&w.t()?)?)
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, mode: Mode) -> Result<Tensor> {
    Ok(match mode {
        Mode::Infer => candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)?,
        Mode::Train => {
            let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
            x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)?
        }
    })
}

struct Layer {
    ln1: Tensor,
    ln2: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Per-layer key/value cache for one batch of sequences, owned by the caller.
pub struct Cache {
    layers: Vec<candle_nn::kv_cache::KvCache>,
}

impl Cache {
    /// `capacity`: expected total length (prompt + new tokens); the cache grows past it if needed.
    pub fn new(num_layers: usize, capacity: usize) -> Self {
        Cache {
            layers: (0..num_layers)
                .map(|_| candle_nn::kv_cache::KvCache::new(2, capacity.max(1)))
                .collect(),
        }
    }

    /// Tokens already cached (the same for every row).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |c| c.current_seq_len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The model: immutable weights plus rotary tables. Cheap to clone (tensors are reference-counted).
pub struct Decoder {
    cfg: ModelConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    cos: Tensor,
    sin: Tensor,
    /// Every weight by published name, for the hand-written CPU paths.
    named: Vec<(String, Tensor)>,
    layout: Layout,
}

impl Decoder {
    /// Builds the decoder over `weights` (names as published); the tensors are shared, not copied.
    pub fn new(cfg: &ModelConfig, weights: &TensorMap) -> Result<Self> {
        let get = |name: &str| -> Result<Tensor> {
            weights
                .get(name)
                .cloned()
                .ok_or_else(|| ModelError::Invalid(format!("weights lack tensor `{name}`")))
        };
        let layout = Layout::of(cfg);
        let lin = |p: &Proj| -> Result<Linear> {
            Ok(Linear {
                w: get(&p.weight)?,
                b: p.bias.as_deref().map(get).transpose()?,
            })
        };
        let norm = |n: &Option<String>| n.as_deref().map(get).transpose();
        let layers = layout
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    ln1: get(&l.input_norm)?,
                    ln2: get(&l.post_norm)?,
                    q: lin(&l.q)?,
                    k: lin(&l.k)?,
                    v: lin(&l.v)?,
                    o: lin(&l.o)?,
                    q_norm: norm(&l.q_norm)?,
                    k_norm: norm(&l.k_norm)?,
                    gate: lin(&l.gate)?,
                    up: lin(&l.up)?,
                    down: lin(&l.down)?,
                })
            })
            .collect::<Result<Vec<Layer>>>()?;
        let embed = get(&layout.embed)?;
        let lm_head = get(&layout.head)?;
        let device = embed.device().clone();
        let (cos, sin) = rope_tables(cfg, &device)?;
        // Tables in the weights' dtype (computed in f64/f32, then rounded once).
        let (cos, sin) = (cos.to_dtype(embed.dtype())?, sin.to_dtype(embed.dtype())?);
        let named = layout
            .tensors()
            .into_iter()
            .map(|(name, _)| Ok((name.clone(), get(&name)?)))
            .collect::<Result<_>>()?;
        Ok(Decoder {
            named,
            cfg: cfg.clone(),
            embed,
            layers,
            norm: get(&layout.norm)?,
            lm_head,
            layout,
            cos,
            sin,
        })
    }

    /// The names of the weights, resolved once for this model.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Whether the hand-written CPU paths can run this model (f32 weights on the CPU).
    pub fn on_host(&self) -> bool {
        self.named
            .iter()
            .all(|(_, t)| super::Route::of(t).host && t.is_contiguous())
    }

    /// The weights by published name.
    pub fn named_tensors(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.named.iter().map(|(n, t)| (n.as_str(), t))
    }

    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    /// Final hidden states after the last norm.
    ///
    /// ids, positions: (b, s) u32; mask: (b, 1, s, past + s) additive f32 (0 or a large negative);
    /// returns (b, s, hidden).
    pub fn forward(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        mut cache: Option<&mut Cache>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let half = self.cfg.head_dim / 2;
        // The mask in the activations' dtype (bf16 on a GPU; MASKED stays finite there).
        let mask = &mask.to_dtype(self.embed.dtype())?;
        let flat_pos = positions.flatten_all()?;
        let cos = self.cos.index_select(&flat_pos, 0)?.reshape((b, s, half))?;
        let sin = self.sin.index_select(&flat_pos, 0)?.reshape((b, s, half))?;
        let rope = Rope::new(cos, sin, mode)?;
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?; // (b*s, h)
        for (i, layer) in self.layers.iter().enumerate() {
            let kv = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = self.layer_forward(layer, &x, b, s, &rope, mask, kv, mode)?;
        }
        let x = rms_norm(&x, &self.norm, self.cfg.rms_norm_eps, mode)?;
        Ok(x.reshape((b, s, self.cfg.hidden_size))?)
    }

    /// hidden: (..., hidden) -> logits (..., vocab), always f32 (a bf16 model's are upcast, so that
    /// sampling and log-probs read them the same way). `Mode::Train` keeps the gradient.
    pub fn logits(&self, hidden: &Tensor, mode: Mode) -> Result<Tensor> {
        let dims = hidden.dims().to_vec();
        let h = *dims.last().expect("hidden has a last dim");
        let flat = hidden.reshape(((), h))?;
        let out = matmul_t(&flat, &self.lm_head, mode)?.to_dtype(DType::F32)?;
        let mut shape = dims;
        *shape.last_mut().expect("non-empty") = self.cfg.vocab_size;
        Ok(out.reshape(shape)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        l: &Layer,
        x: &Tensor,
        b: usize,
        s: usize,
        rope: &Rope,
        mask: &Tensor,
        kv: Option<&mut candle_nn::kv_cache::KvCache>,
        mode: Mode,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let h = rms_norm(x, &l.ln1, c.rms_norm_eps, mode)?;
        let mut q = l.q.forward(&h, mode)?.reshape((b, s, nh, hd))?;
        let mut k = l.k.forward(&h, mode)?.reshape((b, s, nkv, hd))?;
        let v = l.v.forward(&h, mode)?.reshape((b, s, nkv, hd))?;
        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
            q = rms_norm(&q, qn, c.rms_norm_eps, mode)?;
            k = rms_norm(&k, kn, c.rms_norm_eps, mode)?;
        }
        let q = rope.apply(&q.transpose(1, 2)?.contiguous()?)?; // (b, nh, s, hd)
        let k = rope.apply(&k.transpose(1, 2)?.contiguous()?)?; // (b, nkv, s, hd)
        let v = v.transpose(1, 2)?.contiguous()?;
        let (k, v) = match kv {
            Some(cache) => cache.append(&k, &v)?,
            None => (k, v),
        };
        let t = k.dim(2)?;
        // Grouped-query attention without copying K/V: the n_rep query heads that share a KV head
        // are stacked along the sequence axis.
        let n_rep = nh / nkv;
        let qg = q.reshape((b, nkv, n_rep * s, hd))?;
        let scores = (qg.matmul(&k.t()?)? / (hd as f64).sqrt())?
            .reshape((b, nh, s, t))?
            .broadcast_add(mask)?;
        // The softmax in f32 whatever the weights' dtype (mixed precision), then back.
        let dtype = scores.dtype();
        let scores = scores.to_dtype(DType::F32)?;
        let probs = match mode {
            Mode::Infer => candle_nn::ops::softmax_last_dim(&scores)?,
            Mode::Train => candle_nn::ops::softmax(&scores, D::Minus1)?,
        }
        .to_dtype(dtype)?;
        let attn = probs
            .reshape((b, nkv, n_rep * s, t))?
            .matmul(&v.contiguous()?)?
            .reshape((b, nh, s, hd))?
            .transpose(1, 2)?
            .reshape((b * s, nh * hd))?;
        let x = (x + l.o.forward(&attn, mode)?)?;
        let h = rms_norm(&x, &l.ln2, c.rms_norm_eps, mode)?;
        let gated = (candle_nn::Activation::Silu.forward(&l.gate.forward(&h, mode)?)?
            * l.up.forward(&h, mode)?)?;
        Ok((x + l.down.forward(&gated, mode)?)?)
    }
}

/// cos/sin of every position: (max_positions, head_dim / 2).
fn rope_tables(cfg: &ModelConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let (n, half) = (cfg.max_position_embeddings, cfg.head_dim / 2);
    let (cos, sin) = super::rope::rope_tables(cfg, 0..n);
    Ok((
        Tensor::from_vec(cos, (n, half), device)?,
        Tensor::from_vec(sin, (n, half), device)?,
    ))
}

/// Rotary embedding for one forward call, with per-row positions.
struct Rope {
    cos: Tensor,
    sin: Tensor,
    mode: Mode,
}

impl Rope {
    /// cos, sin: (b, s, head_dim / 2)
    fn new(cos: Tensor, sin: Tensor, mode: Mode) -> Result<Self> {
        Ok(match mode {
            Mode::Infer => Rope {
                cos: cos.contiguous()?,
                sin: sin.contiguous()?,
                mode,
            },
            Mode::Train => Rope {
                cos: Tensor::cat(&[&cos, &cos], D::Minus1)?.unsqueeze(1)?,
                sin: Tensor::cat(&[&sin, &sin], D::Minus1)?.unsqueeze(1)?,
                mode,
            },
        })
    }

    /// x: (b, heads, s, head_dim), contiguous
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.mode {
            Mode::Infer => candle_nn::rotary_emb::rope(x, &self.cos, &self.sin)?,
            Mode::Train => {
                let d = x.dim(D::Minus1)?;
                let x1 = x.narrow(D::Minus1, 0, d / 2)?;
                let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
                let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
                (x.broadcast_mul(&self.cos)? + rotated.broadcast_mul(&self.sin)?)?
            }
        })
    }
}

/// The large negative that masks a key (finite, so a fully masked padding row stays NaN-free).
pub const MASKED: f32 = -1.0e30;

/// Additive attention mask for left-padded rows.
///
/// `pad[r]`: padding tokens at the left of row r (over the whole cached sequence);
/// `past`: tokens already in the cache; `s`: new tokens. Returns (b, 1, s, past + s).
pub fn attention_mask(pad: &[usize], past: usize, s: usize, device: &Device) -> Result<Tensor> {
    let t = past + s;
    let mut m = vec![0f32; pad.len() * s * t];
    for (r, &p) in pad.iter().enumerate() {
        for i in 0..s {
            let row = &mut m[(r * s + i) * t..(r * s + i + 1) * t];
            for (j, v) in row.iter_mut().enumerate() {
                if j < p || j > past + i {
                    *v = MASKED;
                }
            }
        }
    }
    Ok(Tensor::from_vec(m, (pad.len(), 1, s, t), device)?)
}

/// Positions counted from each row's first real token: (b, s) u32.
pub fn positions(pad: &[usize], past: usize, s: usize, device: &Device) -> Result<Tensor> {
    let mut p = Vec::with_capacity(pad.len() * s);
    for &pd in pad {
        for i in 0..s {
            p.push((past + i).saturating_sub(pd) as u32);
        }
    }
    Ok(Tensor::from_vec(p, (pad.len(), s), device)?)
}

/// A left-padded batch: `ids` (b, width) u32, `pad[r]` padding tokens at the left of row r.
pub struct Padded {
    pub ids: Tensor,
    pub pad: Vec<usize>,
    pub width: usize,
}

/// Left-pads `rows` (pad id 0; padding is masked, so its id never matters).
pub fn left_pad<R: AsRef<[u32]>>(rows: &[R], device: &Device) -> Result<Padded> {
    let width = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
    let pad: Vec<usize> = rows.iter().map(|r| width - r.as_ref().len()).collect();
    let mut ids = Vec::with_capacity(rows.len() * width);
    for (r, &p) in rows.iter().zip(&pad) {
        ids.extend(std::iter::repeat_n(0u32, p));
        ids.extend_from_slice(r.as_ref());
    }
    Ok(Padded {
        ids: Tensor::from_vec(ids, (rows.len(), width), device)?,
        pad,
        width,
    })
}

impl Decoder {
    /// Final hidden states of a whole left-padded batch without a cache: (b, width, hidden).
    pub fn forward_padded(&self, p: &Padded, mode: Mode) -> Result<Tensor> {
        let d = self.device();
        self.forward(
            &p.ids,
            &positions(&p.pad, 0, p.width, d)?,
            &attention_mask(&p.pad, 0, p.width, d)?,
            None,
            mode,
        )
    }

    /// Logits at the last token of each row, for inference: (rows, vocab).
    pub fn last_logits<R: AsRef<[u32]>>(&self, rows: &[R]) -> Result<Tensor> {
        let p = left_pad(rows, self.device())?;
        let hidden = self.forward_padded(&p, Mode::Infer)?;
        self.logits(&hidden.narrow(1, p.width - 1, 1)?.squeeze(1)?, Mode::Infer)
    }
}
