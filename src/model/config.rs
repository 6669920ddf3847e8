//! `config.json` of the Qwen2, Qwen3 and Llama families, read as Hugging Face writes it.
//!
//! Read with serde (the field that fails to parse is named, by `serde_path_to_error`), then validated
//! into the resolved [`ModelConfig`].
//!
//! `rope_theta` is accepted at the top level (published checkpoints) or under `rope_parameters`
//! (transformers 5). Anything this decoder does not compute — rope scaling, another activation, another
//! architecture — is refused with the field and value rather than silently computed differently.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::error::{ModelError, Result};

/// Which published architecture the weights follow; decides biases, q/k norms and names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Qwen2,
    Qwen3,
    Llama,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Llama => "llama",
        }
    }
}

/// The resolved architecture: every number the decoder needs, nothing optional.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v projections (always for Qwen2, `attention_bias` otherwise).
    pub qkv_bias: bool,
    /// Bias on the output projection (`attention_bias` of Llama/Qwen3; never for Qwen2).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Per-head RMS norms on q and k (Qwen3).
    pub qk_norm: bool,
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_value(&value, path)
    }

    /// Validates an already parsed `config.json`; `path` is only used in messages.
    pub fn from_value(v: &Value, path: &Path) -> Result<Self> {
        let raw: RawConfig = serde_path_to_error::deserialize(v).map_err(|e| {
            let field = e.path().to_string();
            ModelError::Config {
                path: path.to_path_buf(),
                field: if field == "." {
                    "(top level)".into()
                } else {
                    field
                },
                reason: e.into_inner().to_string(),
            }
        })?;
        raw.validate(path)
    }

    /// The `config.json` this configuration is saved as (transformers-compatible).
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({
            "architectures": [match self.family {
                Family::Qwen2 => "Qwen2ForCausalLM",
                Family::Qwen3 => "Qwen3ForCausalLM",
                Family::Llama => "LlamaForCausalLM",
            }],
            "model_type": self.family.as_str(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "float32",
            "use_cache": true,
        });
        let obj = v.as_object_mut().expect("object literal");
        if self.family != Family::Qwen2 {
            obj.insert(
                "attention_bias".into(),
                Value::Bool(self.o_bias || self.qkv_bias),
            );
            obj.insert("mlp_bias".into(), Value::Bool(self.mlp_bias));
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => {
                obj.insert("eos_token_id".into(), (*one).into());
            }
            many => {
                obj.insert("eos_token_id".into(), many.to_vec().into());
            }
        }
        if let Some(b) = self.bos_token_id {
            obj.insert("bos_token_id".into(), b.into());
        }
        if let Some(p) = self.pad_token_id {
            obj.insert("pad_token_id".into(), p.into());
        }
        v
    }
}

/// `config.json` as transformers writes it: the fields this decoder reads (others are ignored).
#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    model_type: String,
    hidden_act: Option<String>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<RopeParameters>,
    rope_theta: Option<f64>,
    use_sliding_window: Option<bool>,
    hidden_size: Option<u64>,
    num_attention_heads: Option<u64>,
    num_key_value_heads: Option<u64>,
    head_dim: Option<u64>,
    vocab_size: Option<u64>,
    intermediate_size: Option<u64>,
    num_hidden_layers: Option<u64>,
    max_position_embeddings: Option<u64>,
    rms_norm_eps: Option<f64>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    eos_token_id: Option<Ids>,
    bos_token_id: Option<Ids>,
    pad_token_id: Option<Ids>,
    /// Mixture-of-experts checkpoints name their experts with one of these.
    num_experts: Option<Value>,
    num_local_experts: Option<Value>,
    moe_intermediate_size: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct RopeParameters {
    rope_type: Option<String>,
    rope_theta: Option<f64>,
}

/// A token id, or a list of them (`eos_token_id` may be either).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Ids {
    One(u32),
    Many(Vec<u32>),
}

impl Ids {
    fn all(self) -> Vec<u32> {
        match self {
            Ids::One(x) => vec![x],
            Ids::Many(v) => v,
        }
    }
}

impl RawConfig {
    /// Everything the decoder does not compute is refused, naming the field; every size is bounded.
    fn validate(self, path: &Path) -> Result<ModelConfig> {
        let err = |field: &str, reason: String| ModelError::Config {
            path: path.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        // Far above any published model, low enough that no product of sizes overflows.
        let size = |field: &str, v: Option<u64>, max: u64| -> Result<usize> {
            match v {
                Some(x) if (1..=max).contains(&x) => Ok(x as usize),
                Some(x) => Err(err(
                    field,
                    format!("must be an integer in 1..={max}, got {x}"),
                )),
                None => Err(err(field, "is missing".into())),
            }
        };
        let positive = |field: &str, v: Option<f64>, default: f64| -> Result<f64> {
            match v {
                None => Ok(default),
                Some(x) if x.is_finite() && x > 0.0 => Ok(x),
                Some(x) => Err(err(
                    field,
                    format!("must be a positive finite number, got {x}"),
                )),
            }
        };
        let family = match self.model_type.as_str() {
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "llama" => Family::Llama,
            other => {
                return Err(err(
                    "model_type",
                    format!("is {other:?}; supported: \"qwen2\", \"qwen3\", \"llama\""),
                ));
            }
        };
        let act = self.hidden_act.as_deref().unwrap_or("silu");
        if act != "silu" {
            return Err(err(
                "hidden_act",
                format!("is {act:?}; only \"silu\" is supported"),
            ));
        }
        if let Some(scaling) = self.rope_scaling.filter(|s| !s.is_null()) {
            return Err(err(
                "rope_scaling",
                format!("is {scaling}; rope scaling is not supported (expected null)"),
            ));
        }
        let rope = self.rope_parameters.unwrap_or(RopeParameters {
            rope_type: None,
            rope_theta: None,
        });
        if let Some(kind) = rope.rope_type.as_deref()
            && kind != "default"
        {
            return Err(err(
                "rope_parameters.rope_type",
                format!("is {kind:?}; only \"default\" rope is supported"),
            ));
        }
        let rope_theta = positive("rope_theta", rope.rope_theta.or(self.rope_theta), 10_000.0)?;
        if self.use_sliding_window == Some(true) {
            return Err(err(
                "use_sliding_window",
                "is true; sliding-window attention is not supported".into(),
            ));
        }
        for (field, v) in [
            ("num_experts", &self.num_experts),
            ("num_local_experts", &self.num_local_experts),
            ("moe_intermediate_size", &self.moe_intermediate_size),
        ] {
            if let Some(v) = v.as_ref().filter(|v| !v.is_null() && v.as_u64() != Some(0)) {
                return Err(err(
                    field,
                    format!("is {v}; mixture-of-experts models are not supported"),
                ));
            }
        }
        let hidden_size = size("hidden_size", self.hidden_size, 1 << 20)?;
        let num_attention_heads = size("num_attention_heads", self.num_attention_heads, 1 << 12)?;
        let num_key_value_heads = match self.num_key_value_heads {
            None => num_attention_heads,
            v => size("num_key_value_heads", v, 1 << 12)?,
        };
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(err(
                "num_key_value_heads",
                format!(
                    "is {num_key_value_heads}, which does not divide num_attention_heads = {num_attention_heads}"
                ),
            ));
        }
        let head_dim = match self.head_dim {
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(err(
                        "hidden_size",
                        format!(
                            "is {hidden_size}, not divisible by num_attention_heads = {num_attention_heads}"
                        ),
                    ));
                }
                hidden_size / num_attention_heads
            }
            v => size("head_dim", v, 1 << 20)?,
        };
        if head_dim % 2 != 0 {
            return Err(err(
                "head_dim",
                format!("is {head_dim}; rotary embeddings need an even head_dim"),
            ));
        }
        let attention_bias = self.attention_bias.unwrap_or(false);
        Ok(ModelConfig {
            family,
            vocab_size: size("vocab_size", self.vocab_size, 1 << 24)?,
            hidden_size,
            intermediate_size: size("intermediate_size", self.intermediate_size, 1 << 20)?,
            num_hidden_layers: size("num_hidden_layers", self.num_hidden_layers, 1 << 12)?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: positive("rms_norm_eps", self.rms_norm_eps, 1e-6)?,
            rope_theta,
            max_position_embeddings: match self.max_position_embeddings {
                None => 32_768,
                v => size("max_position_embeddings", v, 1 << 24)?,
            },
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            qkv_bias: family == Family::Qwen2 || attention_bias,
            o_bias: family != Family::Qwen2 && attention_bias,
            mlp_bias: self.mlp_bias.unwrap_or(false),
            qk_norm: family == Family::Qwen3,
            eos_token_ids: self.eos_token_id.map(Ids::all).unwrap_or_default(),
            bos_token_id: self.bos_token_id.and_then(|i| i.all().first().copied()),
            pad_token_id: self.pad_token_id.and_then(|i| i.all().first().copied()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ModelConfig> {
        ModelConfig::from_value(&v, Path::new("config.json"))
    }

    fn base() -> Value {
        json!({"model_type": "qwen2", "vocab_size": 16, "hidden_size": 8, "intermediate_size": 16,
               "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1})
    }

    #[test]
    fn rope_theta_at_top_level_or_under_rope_parameters() {
        let mut v = base();
        v["rope_theta"] = json!(5000.0);
        assert_eq!(parse(v.clone()).unwrap().rope_theta, 5000.0);
        v["rope_parameters"] = json!({"rope_theta": 7.0, "rope_type": "default"});
        assert_eq!(parse(v).unwrap().rope_theta, 7.0);
    }

    #[test]
    fn refuses_unsupported_with_field_and_value() {
        let mut v = base();
        v["model_type"] = json!("gpt2");
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("model_type") && e.contains("gpt2"), "{e}");
        let mut v = base();
        v["rope_scaling"] = json!({"type": "yarn", "factor": 4.0});
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("rope_scaling") && e.contains("yarn"), "{e}");
        let mut v = base();
        v["hidden_act"] = json!("gelu");
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("hidden_act") && e.contains("gelu"), "{e}");
        let mut v = base();
        v["rope_parameters"] = json!({"rope_type": "llama3", "rope_theta": 1.0});
        assert!(parse(v).unwrap_err().to_string().contains("llama3"));
        let mut v = base();
        v["num_key_value_heads"] = json!(3);
        assert!(
            parse(v)
                .unwrap_err()
                .to_string()
                .contains("num_key_value_heads")
        );
    }

    #[test]
    fn round_trips_through_json() {
        let mut v = base();
        v["model_type"] = json!("qwen3");
        v["head_dim"] = json!(6);
        v["eos_token_id"] = json!([3, 4]);
        let c = parse(v).unwrap();
        assert!(c.qk_norm && !c.qkv_bias && c.head_dim == 6);
        assert_eq!(parse(c.to_json()).unwrap(), c);
    }
}
