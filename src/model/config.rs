//! `config.json` of the Qwen2, Qwen3 and Llama families, read as Hugging Face writes it.
//!
//! `rope_theta` is accepted at the top level (published checkpoints) or under `rope_parameters`
//! (transformers 5). Anything this decoder does not compute — rope scaling, another activation, another
//! architecture — is refused with the field and value rather than silently computed differently.

use std::path::Path;

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
        let err = |field: &str, reason: String| ModelError::Config {
            path: path.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        // Far above any published model, low enough that no product of sizes overflows.
        let limit = |field: &str| -> u64 {
            match field {
                "vocab_size" | "max_position_embeddings" => 1 << 24,
                "num_hidden_layers" | "num_attention_heads" | "num_key_value_heads" => 1 << 12,
                _ => 1 << 20,
            }
        };
        let usize_field = |field: &str| -> Result<usize> {
            let max = limit(field);
            match v.get(field) {
                Some(Value::Number(n)) if n.as_u64().is_some_and(|x| x > 0 && x <= max) => {
                    Ok(n.as_u64().unwrap_or_default() as usize)
                }
                Some(other) => Err(err(
                    field,
                    format!("must be an integer in 1..={max}, got {other}"),
                )),
                None => Err(err(field, "is missing".into())),
            }
        };
        let float_field = |field: &str, value: Option<&Value>, default: f64| -> Result<f64> {
            match value {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Number(n)) if n.as_f64().is_some_and(|x| x.is_finite() && x > 0.0) => {
                    Ok(n.as_f64().unwrap_or(default))
                }
                Some(other) => Err(err(
                    field,
                    format!("must be a positive finite number, got {other}"),
                )),
            }
        };
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let family = match model_type {
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
        let act = v
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("silu");
        if act != "silu" {
            return Err(err(
                "hidden_act",
                format!("is {act:?}; only \"silu\" is supported"),
            ));
        }
        if let Some(scaling) = v.get("rope_scaling")
            && !scaling.is_null()
        {
            return Err(err(
                "rope_scaling",
                format!("is {scaling}; rope scaling is not supported (expected null)"),
            ));
        }
        let rope_params = v.get("rope_parameters").filter(|p| !p.is_null());
        if let Some(kind) = rope_params
            .and_then(|p| p.get("rope_type"))
            .and_then(Value::as_str)
            && kind != "default"
        {
            return Err(err(
                "rope_parameters.rope_type",
                format!("is {kind:?}; only \"default\" rope is supported"),
            ));
        }
        let rope_theta = float_field(
            "rope_theta",
            rope_params
                .and_then(|p| p.get("rope_theta"))
                .or_else(|| v.get("rope_theta")),
            10_000.0,
        )?;
        if v.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
            return Err(err(
                "use_sliding_window",
                "is true; sliding-window attention is not supported".into(),
            ));
        }

        let hidden_size = usize_field("hidden_size")?;
        let num_attention_heads = usize_field("num_attention_heads")?;
        let num_key_value_heads = match v.get("num_key_value_heads") {
            None | Some(Value::Null) => num_attention_heads,
            Some(_) => usize_field("num_key_value_heads")?,
        };
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(err(
                "num_key_value_heads",
                format!(
                    "is {num_key_value_heads}, which does not divide num_attention_heads = {num_attention_heads}"
                ),
            ));
        }
        let head_dim = match v.get("head_dim") {
            None | Some(Value::Null) => {
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
            Some(_) => usize_field("head_dim")?,
        };
        if head_dim % 2 != 0 {
            return Err(err(
                "head_dim",
                format!("is {head_dim}; rotary embeddings need an even head_dim"),
            ));
        }
        let attention_bias = v
            .get("attention_bias")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let ids = |field: &str| -> Vec<u32> {
            match v.get(field) {
                Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(Value::as_u64)
                    .map(|x| x as u32)
                    .collect(),
                _ => vec![],
            }
        };
        Ok(ModelConfig {
            family,
            vocab_size: usize_field("vocab_size")?,
            hidden_size,
            intermediate_size: usize_field("intermediate_size")?,
            num_hidden_layers: usize_field("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: float_field("rms_norm_eps", v.get("rms_norm_eps"), 1e-6)?,
            rope_theta,
            max_position_embeddings: match v.get("max_position_embeddings") {
                None | Some(Value::Null) => 32_768,
                Some(_) => usize_field("max_position_embeddings")?,
            },
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            qkv_bias: family == Family::Qwen2 || attention_bias,
            o_bias: family != Family::Qwen2 && attention_bias,
            mlp_bias: v.get("mlp_bias").and_then(Value::as_bool).unwrap_or(false),
            qk_norm: family == Family::Qwen3,
            eos_token_ids: ids("eos_token_id"),
            bos_token_id: ids("bos_token_id").first().copied(),
            pad_token_id: ids("pad_token_id").first().copied(),
        })
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

    /// Expected `(name, shape)` of every tensor, in checkpoint naming (see [`super::layout::Layout`]).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        super::layout::Layout::of(self).tensors()
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
