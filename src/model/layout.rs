//! One description of the decoder's weights: every tensor's published name, its shape, and whether the
//! family has it (biases, q/k norms, an untied head), resolved once per model from its config. Loading
//! and saving checkpoints, initialising weights, the candle decoder and the CPU backend all read names
//! from here; a family with other weights is described in [`Layout::of`] alone.

use super::config::ModelConfig;

/// A linear map `y = x · wᵀ (+ b)` of a layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Proj {
    /// The published prefix, e.g. `model.layers.0.self_attn.q_proj`.
    pub name: String,
    pub weight: String,
    /// Present when the family (or `attention_bias` / `mlp_bias`) has it.
    pub bias: Option<String>,
    /// (out, in).
    pub shape: [usize; 2],
}

impl Proj {
    fn new(prefix: &str, stem: &str, biased: bool, out: usize, inp: usize) -> Self {
        let name = format!("{prefix}.{stem}");
        Proj {
            weight: format!("{name}.weight"),
            bias: biased.then(|| format!("{name}.bias")),
            shape: [out, inp],
            name,
        }
    }

    pub fn out(&self) -> usize {
        self.shape[0]
    }
}

/// The weights of one decoder layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerLayout {
    pub input_norm: String,
    pub post_norm: String,
    pub q: Proj,
    pub k: Proj,
    pub v: Proj,
    pub o: Proj,
    /// Per-head RMS norms of q and k (Qwen3).
    pub q_norm: Option<String>,
    pub k_norm: Option<String>,
    pub gate: Proj,
    pub up: Proj,
    pub down: Proj,
}

/// Every weight of a decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub embed: String,
    pub layers: Vec<LayerLayout>,
    pub norm: String,
    /// The head's weight: the embedding's name when tied.
    pub head: String,
    tied: bool,
    hidden: usize,
    vocab: usize,
    head_dim: usize,
}

impl Layout {
    /// The head's name when it is not tied (a tied checkpoint may still hold a copy under it).
    pub const UNTIED_HEAD: &'static str = "lm_head.weight";
    const LAYER_PREFIX: &'static str = "model.layers.";

    /// The layer a tensor name belongs to, if any.
    pub fn layer_of(name: &str) -> Option<usize> {
        name.strip_prefix(Self::LAYER_PREFIX)?
            .split('.')
            .next()?
            .parse()
            .ok()
    }

    pub fn of(cfg: &ModelConfig) -> Self {
        let (h, hd, i) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
        let (nq, nkv) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| {
                let p = format!("{}{l}", Self::LAYER_PREFIX);
                let attn = |stem: &str, biased: bool, out: usize, inp: usize| {
                    Proj::new(&p, &format!("self_attn.{stem}"), biased, out, inp)
                };
                let mlp = |stem: &str, out: usize, inp: usize| {
                    Proj::new(&p, &format!("mlp.{stem}"), cfg.mlp_bias, out, inp)
                };
                let norm = |stem: &str| cfg.qk_norm.then(|| format!("{p}.self_attn.{stem}.weight"));
                LayerLayout {
                    input_norm: format!("{p}.input_layernorm.weight"),
                    post_norm: format!("{p}.post_attention_layernorm.weight"),
                    q: attn("q_proj", cfg.qkv_bias, nq, h),
                    k: attn("k_proj", cfg.qkv_bias, nkv, h),
                    v: attn("v_proj", cfg.qkv_bias, nkv, h),
                    o: attn("o_proj", cfg.o_bias, h, nq),
                    q_norm: norm("q_norm"),
                    k_norm: norm("k_norm"),
                    gate: mlp("gate_proj", i, h),
                    up: mlp("up_proj", i, h),
                    down: mlp("down_proj", h, i),
                }
            })
            .collect();
        let embed = "model.embed_tokens.weight".to_string();
        Layout {
            head: if cfg.tie_word_embeddings {
                embed.clone()
            } else {
                Self::UNTIED_HEAD.into()
            },
            embed,
            layers,
            norm: "model.norm.weight".into(),
            tied: cfg.tie_word_embeddings,
            hidden: h,
            vocab: cfg.vocab_size,
            head_dim: hd,
        }
    }

    /// Whether the head is the embedding.
    pub fn tied(&self) -> bool {
        self.tied
    }

    /// `(name, shape)` of every tensor a checkpoint holds, in a fixed order (initialisation draws its
    /// random numbers in this order).
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let h = self.hidden;
        let mut out = vec![(self.embed.clone(), vec![self.vocab, h])];
        for l in &self.layers {
            out.push((l.input_norm.clone(), vec![h]));
            out.push((l.post_norm.clone(), vec![h]));
            let (attn, mlp) = ([&l.q, &l.k, &l.v, &l.o], [&l.gate, &l.up, &l.down]);
            for p in attn {
                out.push((p.weight.clone(), p.shape.to_vec()));
            }
            for p in attn {
                if let Some(b) = &p.bias {
                    out.push((b.clone(), vec![p.out()]));
                }
            }
            for n in [&l.q_norm, &l.k_norm].into_iter().flatten() {
                out.push((n.clone(), vec![self.head_dim]));
            }
            for p in mlp {
                out.push((p.weight.clone(), p.shape.to_vec()));
            }
            for p in mlp {
                if let Some(b) = &p.bias {
                    out.push((b.clone(), vec![p.out()]));
                }
            }
        }
        out.push((self.norm.clone(), vec![h]));
        if !self.tied {
            out.push((self.head.clone(), vec![self.vocab, h]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(model_type: &str, extra: serde_json::Value) -> ModelConfig {
        let mut v = json!({"model_type": model_type, "vocab_size": 16, "hidden_size": 8,
            "intermediate_size": 12, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        ModelConfig::from_value(&v, std::path::Path::new("config.json")).unwrap()
    }

    #[test]
    fn each_family_has_its_weights_and_only_those() {
        let names = |c: &ModelConfig| -> Vec<String> {
            Layout::of(c)
                .tensors()
                .into_iter()
                .map(|(n, _)| n)
                .collect()
        };
        let q2 = names(&cfg("qwen2", json!({})));
        assert!(q2.contains(&"model.layers.1.self_attn.q_proj.bias".to_string()));
        assert!(
            !q2.iter()
                .any(|n| n.contains("o_proj.bias") || n.contains("q_norm"))
        );
        assert_eq!(q2.last().unwrap(), "lm_head.weight");
        let q3 = names(&cfg("qwen3", json!({"tie_word_embeddings": true})));
        assert!(q3.contains(&"model.layers.0.self_attn.k_norm.weight".to_string()));
        assert!(
            !q3.iter()
                .any(|n| n.ends_with(".bias") || n == "lm_head.weight")
        );
        let ll = names(&cfg(
            "llama",
            json!({"attention_bias": true, "mlp_bias": true}),
        ));
        assert!(ll.contains(&"model.layers.0.self_attn.o_proj.bias".to_string()));
        assert!(ll.contains(&"model.layers.1.mlp.down_proj.bias".to_string()));
        // 1 embedding + 2 layers × (2 norms + 7 weights + 4 + 3 biases) + norm + head.
        assert_eq!(ll.len(), 1 + 2 * 16 + 2);
        let l = Layout::of(&cfg("llama", json!({})));
        assert_eq!(l.layers[1].down.shape, [8, 12]);
        assert_eq!(l.layers[0].k.shape, [4, 8]);
        assert_eq!(
            Layout::layer_of("model.layers.12.mlp.up_proj.weight"),
            Some(12)
        );
        assert_eq!(Layout::layer_of("model.norm.weight"), None);
    }
}
