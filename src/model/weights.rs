//! Hugging Face checkpoint directories: `model.safetensors` or a sharded
//! `model.safetensors.index.json`, read tensor by tensor and converted to f32; and saving in the same
//! layout.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::config::ModelConfig;
use super::error::{ModelError, Result};
use super::layout::Layout;
use super::tensor_file::{self, Source, TensorFile};

/// Every tensor of a checkpoint by its published name, f32 on `device`.
pub type TensorMap = HashMap<String, Tensor>;

/// Loads and checks every tensor the config names; a tensor the config does not use is refused by name
/// (rotary caches and a tied head equal to the embedding aside).
pub fn load_weights(dir: &Path, cfg: &ModelConfig, device: &Device) -> Result<TensorMap> {
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<std::path::PathBuf> = if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ModelError::Json {
                path: index.clone(),
                source,
            })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Config {
                path: index.clone(),
                field: "weight_map".into(),
                reason: "is missing or not an object".into(),
            })?;
        let shards: BTreeSet<String> = map
            .values()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect();
        shards.into_iter().map(|s| dir.join(s)).collect()
    } else {
        vec![dir.join("model.safetensors")]
    };

    let mut found: HashMap<String, (Tensor, std::path::PathBuf)> = HashMap::new();
    for file in &files {
        // Tensor by tensor with positioned reads: the file's pages stay in the page cache and
        // never count as the process's memory beside the tensors made from them.
        let f = TensorFile::open(file)?;
        for name in f.names() {
            let t = f.read_float(&name)?.to_device(device)?;
            found.insert(name, (t, file.to_path_buf()));
        }
    }

    select(found, cfg, &files[0])
}

/// Reads every tensor of one safetensors buffer into `found`, as f32 on `device`.
fn read_tensors(
    bytes: &[u8],
    file: &Path,
    device: &Device,
    found: &mut HashMap<String, (Tensor, std::path::PathBuf)>,
) -> Result<()> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| ModelError::Safetensors {
        path: file.to_path_buf(),
        reason: e.to_string(),
    })?;
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F16 => DType::F16,
            other => {
                return Err(ModelError::DType {
                    path: file.to_path_buf(),
                    name,
                    dtype: format!("{other:?}"),
                });
            }
        };
        let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)?
            .to_dtype(DType::F32)?
            .to_device(device)?;
        found.insert(name, (t, file.to_path_buf()));
    }
    Ok(())
}

/// The tensors `cfg` names, each checked for its shape and for finite values; `first` names the
/// checkpoint in errors. Both directions are checked: a tensor the config needs and the file lacks, and
/// a tensor the file holds and the config does not use (weights of another family or depth), are
/// refused by name.
fn select(
    mut found: HashMap<String, (Tensor, std::path::PathBuf)>,
    cfg: &ModelConfig,
    first: &Path,
) -> Result<TensorMap> {
    let first = first.to_path_buf();
    let layout = Layout::of(cfg);
    let mut out = TensorMap::new();
    for (name, shape) in layout.tensors() {
        let (t, file) = found
            .remove(&name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: first.clone(),
                name: name.clone(),
                expected: shape.clone(),
            })?;
        if t.dims() != shape.as_slice() {
            return Err(ModelError::Shape {
                path: file,
                name,
                got: t.dims().to_vec(),
                expected: shape,
            });
        }
        if !all_finite(&t)? {
            return Err(ModelError::NonFinite { path: file, name });
        }
        out.insert(name, t);
    }
    // Buffers transformers may save that carry no weights.
    found.retain(|name, _| !name.ends_with("rotary_emb.inv_freq"));
    // A tied head saved anyway is the embedding itself, or the file disagrees with its config.
    if layout.tied()
        && let Some((head, file)) = found.remove(Layout::UNTIED_HEAD)
    {
        let embed = &out[&layout.embed];
        let same = head.dims() == embed.dims()
            && head.sub(embed)?.abs()?.max_all()?.to_scalar::<f32>()? == 0.0;
        if !same {
            return Err(ModelError::UnusedTensor {
                path: file,
                name: Layout::UNTIED_HEAD.into(),
                more: 0,
                why: "config.json says tie_word_embeddings = true, but this head differs from the \
                      embedding"
                    .into(),
            });
        }
    }
    if !found.is_empty() {
        let mut names: Vec<&String> = found.keys().collect();
        names.sort();
        let name = names[0].clone();
        let why = unused_reason(&name, cfg);
        let (_, file) = &found[&name];
        return Err(ModelError::UnusedTensor {
            path: file.clone(),
            name,
            more: names.len() - 1,
            why,
        });
    }
    Ok(out)
}

/// Why the config does not use a tensor the file holds, in the config's own terms.
fn unused_reason(name: &str, cfg: &ModelConfig) -> String {
    match Layout::layer_of(name) {
        Some(l) if l >= cfg.num_hidden_layers => format!(
            "config.json says num_hidden_layers = {}, but the weights have layer {l}",
            cfg.num_hidden_layers
        ),
        _ if name.ends_with(".bias") => format!(
            "config.json (model_type = {:?}, attention_bias = {}, mlp_bias = {}) has no such bias; \
             Qwen2 checkpoints have q/k/v biases and need model_type = \"qwen2\"",
            cfg.family.as_str(),
            cfg.qkv_bias || cfg.o_bias,
            cfg.mlp_bias
        ),
        _ if name.contains("_norm.") => format!(
            "config.json (model_type = {:?}) has no such norm; q/k norms are Qwen3's (model_type = \"qwen3\")",
            cfg.family.as_str()
        ),
        _ => format!(
            "config.json (model_type = {:?}) does not use it",
            cfg.family.as_str()
        ),
    }
}

/// Whether every element of `t` is finite (no NaN, no infinity). CPU f32 tensors are read in place.
pub fn all_finite(t: &Tensor) -> Result<bool> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(v[a..b].iter().all(|x| x.is_finite()));
        }
    }
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.iter().all(|x| x.is_finite()))
}

/// One weight version as safetensors bytes (f32, exact), for sending to another process.
pub fn weights_to_bytes<'a>(
    tensors: impl Iterator<Item = (&'a str, &'a Tensor)>,
) -> Result<Vec<u8>> {
    tensor_file::to_bytes(
        tensors
            .map(|(n, t)| (n.to_string(), Source::of(t)))
            .collect(),
    )
}

/// Reads [`weights_to_bytes`] output back, checked against `cfg` as a checkpoint is; `label` names the
/// source in errors.
pub fn weights_from_bytes(
    bytes: &[u8],
    cfg: &ModelConfig,
    device: &Device,
    label: &Path,
) -> Result<TensorMap> {
    let mut found = HashMap::new();
    read_tensors(bytes, label, device, &mut found)?;
    select(found, cfg, label)
}

/// Writes `model.safetensors` (f32, names as published, a tied head not duplicated) atomically,
/// from the tensors' own memory where they are f32 on the host (no copy of the model is made).
pub fn save_weights(dir: &Path, cfg: &ModelConfig, tensors: &TensorMap) -> Result<()> {
    let path = dir.join("model.safetensors");
    let mut out = Vec::new();
    for (name, shape) in Layout::of(cfg).tensors() {
        let t = tensors
            .get(&name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: path.clone(),
                name: name.clone(),
                expected: shape,
            })?;
        out.push((name, Source::of(t)));
    }
    tensor_file::write(&path, out)
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader never sees half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| ModelError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
}
