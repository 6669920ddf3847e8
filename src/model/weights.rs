//! Hugging Face checkpoint directories: `model.safetensors` or a sharded
//! `model.safetensors.index.json`, memory-mapped and converted to f32; and saving in the same layout.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::config::ModelConfig;
use super::error::{ModelError, Result};

/// Every tensor of a checkpoint by its published name, f32 on `device`.
pub type TensorMap = HashMap<String, Tensor>;

/// Loads and checks every tensor the config names (extra tensors, e.g. rotary caches, are ignored).
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
        let handle = std::fs::File::open(file).map_err(|e| ModelError::io(file, e))?;
        // SAFETY: the map is only read while this function runs; a checkpoint being rewritten
        // underneath is the usual mmap caveat, and checkpoints are written by rename.
        let mmap = unsafe { memmap2::Mmap::map(&handle) }.map_err(|e| ModelError::io(file, e))?;
        read_tensors(&mmap, file, device, &mut found)?;
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

/// The tensors `cfg` names, each checked for its shape; `first` names the checkpoint in errors.
fn select(
    mut found: HashMap<String, (Tensor, std::path::PathBuf)>,
    cfg: &ModelConfig,
    first: &Path,
) -> Result<TensorMap> {
    let first = first.to_path_buf();
    let mut out = TensorMap::new();
    for (name, shape) in cfg.tensor_shapes() {
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
        out.insert(name, t);
    }
    Ok(out)
}

/// One weight version as safetensors bytes (f32, exact), for sending to another process.
pub fn weights_to_bytes<'a>(
    tensors: impl Iterator<Item = (&'a str, &'a Tensor)>,
) -> Result<Vec<u8>> {
    let mut host = Vec::new();
    for (name, t) in tensors {
        host.push((
            name.to_string(),
            t.to_device(&Device::Cpu)?
                .to_dtype(DType::F32)?
                .contiguous()?,
        ));
    }
    safetensors::serialize(host.iter().map(|(n, t)| (n.as_str(), t)), None).map_err(|e| {
        ModelError::Safetensors {
            path: "<weights>".into(),
            reason: e.to_string(),
        }
    })
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

/// Writes `model.safetensors` (f32, names as published, a tied head not duplicated) atomically.
pub fn save_weights(dir: &Path, cfg: &ModelConfig, tensors: &TensorMap) -> Result<()> {
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for (name, shape) in cfg.tensor_shapes() {
        let t = tensors
            .get(&name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: dir.join("model.safetensors"),
                name: name.clone(),
                expected: shape,
            })?;
        out.insert(
            name,
            t.to_device(&Device::Cpu)?
                .to_dtype(DType::F32)?
                .contiguous()?,
        );
    }
    let path = dir.join("model.safetensors");
    let tmp = dir.join("model.safetensors.tmp");
    candle_core::safetensors::save(&out, &tmp)?;
    std::fs::rename(&tmp, &path).map_err(|e| ModelError::io(&path, e))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader never sees half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| ModelError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
}
