//! safetensors files of f32 tensors written from the tensors' own memory and read into buffers one
//! tensor at a time, so that writing or reading a checkpoint costs no second copy of the model or
//! of the optimizer's moments.
//!
//! The header is the `safetensors` crate's (`Metadata`, serialized by the crate), and
//! `SafeTensors::read_metadata` parses the header of a file mapped into memory, of which only the
//! header's pages are read. The few lines of framing around it (the header's length, the header
//! padded to 8 bytes, the data in the header's order, through a temporary file renamed into place)
//! are written here rather than by the crate's `serialize_to_file`, because that writer asks each
//! tensor for its bytes through `View::data`, which cannot fail, and copying a tensor from a GPU can:
//! here the copy's error ends the write before the rename, naming the tensor, and the file already at
//! the path is left as it was. The output is byte for byte the crate's (tested), in a file or in
//! memory (the weights sent to a policy worker). The data is read with positioned reads straight
//! into the caller's floats: the file's pages go to the page cache, not to the process's resident
//! memory, which a read through the map would count until it was unmapped. Only host f32 tensors are
//! borrowed; any other tensor (on a GPU, or another dtype) is copied to the host as f32 when its turn
//! to be written comes, one at a time.

use std::borrow::Cow;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use candle_core::{CpuStorage, DType, Device, Storage, StorageRef, Tensor};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};

use super::error::{ModelError, Result};

/// One tensor to write, as f32.
pub enum Source<'a> {
    /// A host f32 tensor's storage, read-locked until the file is written.
    Storage {
        storage: StorageRef<'a>,
        range: Range<usize>,
        shape: Vec<usize>,
    },
    /// Floats in a buffer of their own (the optimizer's host moments).
    Floats { data: &'a [f32], shape: Vec<usize> },
    /// Any other tensor: copied to the host as f32 when it is written.
    Copied(Tensor),
    /// A tensor whose copy to the host fails, of this shape (for the tests of a failed write).
    #[cfg(test)]
    Failing(Vec<usize>),
}

impl<'a> Source<'a> {
    /// A tensor's own memory where it is a contiguous f32 tensor on the host, else a copy to come.
    pub fn of(t: &'a Tensor) -> Source<'a> {
        let (storage, layout) = t.storage_and_layout();
        let range = match (&*storage, layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(_)), Some((a, b))) => a..b,
            _ => return Source::Copied(t.clone()),
        };
        Source::Storage {
            storage,
            range,
            shape: t.dims().to_vec(),
        }
    }

    fn floats(&self) -> Option<&[f32]> {
        match self {
            Source::Storage { storage, range, .. } => match &**storage {
                Storage::Cpu(CpuStorage::F32(data)) => Some(&data[range.clone()]),
                _ => None,
            },
            Source::Floats { data, .. } => Some(data),
            _ => None,
        }
    }
}

impl Source<'_> {
    fn shape(&self) -> &[usize] {
        match self {
            Source::Storage { shape, .. } | Source::Floats { shape, .. } => shape,
            Source::Copied(t) => t.dims(),
            #[cfg(test)]
            Source::Failing(shape) => shape,
        }
    }

    /// The tensor's bytes as f32: its own memory, or a copy to the host (which can fail).
    fn bytes(&self) -> candle_core::Result<Cow<'_, [u8]>> {
        if let Some(x) = self.floats() {
            return Ok(Cow::Borrowed(bytemuck::cast_slice(x)));
        }
        let t = match self {
            Source::Copied(t) => t,
            #[cfg(test)]
            Source::Failing(_) => return Err(candle_core::Error::Msg("device lost".into())),
            _ => unreachable!("only a copied tensor has no floats of its own"),
        };
        let host: Vec<f32> = t
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        Ok(Cow::Owned(bytemuck::cast_slice(&host).to_vec()))
    }
}

// safetensors stores little-endian numbers; the floats are written as they lie in memory.
const _: () = assert!(cfg!(target_endian = "little"));

/// Writes `tensors` to `path` as one safetensors file of f32 tensors, atomically: through a
/// temporary file beside it, renamed into place only once every tensor is written. A tensor that
/// cannot be copied to the host ends the write with an error naming it; the path is then untouched.
pub fn write(path: &Path, tensors: Vec<(String, Source<'_>)>) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| ModelError::io(path, e))?;
    {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
        write_to(&mut f, tensors, &path.display().to_string())?;
        f.flush().map_err(|e| ModelError::io(path, e))?;
    }
    tmp.persist(path)
        .map_err(|e| ModelError::io(path, e.error))?;
    Ok(())
}

/// `tensors` as the bytes of one safetensors file of f32 tensors (weights sent to another process).
pub fn to_bytes(tensors: Vec<(String, Source<'_>)>) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    write_to(&mut bytes, tensors, "<weights>")?;
    Ok(bytes)
}

/// The safetensors framing: the header's length, the header (the crate's `Metadata`, padded with
/// spaces to 8 bytes), then each tensor's data in the header's order, the crate's (by name, for
/// tensors of one dtype). `label` names the destination in errors.
fn write_to(
    out: &mut impl Write,
    mut tensors: Vec<(String, Source<'_>)>,
    label: &str,
) -> Result<()> {
    let io = |e: std::io::Error| ModelError::io(Path::new(label), e);
    let format = |reason: String| ModelError::Safetensors {
        path: label.into(),
        reason,
    };
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut offset = 0;
    let infos = tensors
        .iter()
        .map(|(name, t)| {
            let n = 4 * t.shape().iter().product::<usize>();
            offset += n;
            let info = TensorInfo {
                dtype: Dtype::F32,
                shape: t.shape().to_vec(),
                data_offsets: (offset - n, offset),
            };
            (name.clone(), info)
        })
        .collect();
    let metadata = Metadata::new(None, infos).map_err(|e| format(e.to_string()))?;
    let mut header = serde_json::to_vec(&metadata).map_err(|e| format(e.to_string()))?;
    header.resize(header.len().next_multiple_of(8), b' ');
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&header).map_err(io)?;
    for (name, t) in &tensors {
        let bytes = t.bytes().map_err(|e| {
            ModelError::Invalid(format!(
                "{label}: tensor `{name}` could not be copied to the host as f32 ({e}); nothing \
                 was written in its place, and what was there is as it was"
            ))
        })?;
        out.write_all(&bytes).map_err(io)?;
    }
    Ok(())
}

/// A safetensors file opened for reading tensor by tensor: its header parsed and checked against
/// the file's length, no data read yet.
pub struct TensorFile {
    path: PathBuf,
    file: File,
    /// Where the data begins: after the length and the header.
    start: u64,
    metadata: Metadata,
}

impl TensorFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: the map is read only here, for the header; checkpoints are written by rename, so
        // a file is never rewritten in place under it.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let (n, metadata) =
            SafeTensors::read_metadata(&map).map_err(|e| ModelError::Safetensors {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(TensorFile {
            path: path.to_path_buf(),
            file,
            start: 8 + n as u64,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor's name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.metadata.tensors().into_keys().collect();
        names.sort();
        names
    }

    /// The tensor `name`, or an error naming the file, the tensor and the shape expected of it.
    fn lookup(&self, name: &str, expected: &[usize]) -> Result<&TensorInfo> {
        self.metadata
            .info(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
            })
    }

    /// The f32 tensor `name` of shape `shape`, checked, or an error naming the file and the tensor.
    fn info(&self, name: &str, shape: &[usize]) -> Result<&TensorInfo> {
        let info = self.lookup(name, shape)?;
        if info.dtype != Dtype::F32 {
            return Err(ModelError::Invalid(format!(
                "{}: tensor `{name}` has dtype {:?}, expected F32",
                self.path.display(),
                info.dtype
            )));
        }
        if info.shape != shape {
            return Err(ModelError::Shape {
                path: self.path.clone(),
                name: name.to_string(),
                got: info.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        Ok(info)
    }

    /// Reads the f32 tensor `name`, of shape `shape`, into `out` (its element count).
    pub fn read_into(&self, name: &str, shape: &[usize], out: &mut [f32]) -> Result<()> {
        let info = self.info(name, shape)?;
        assert_eq!(
            out.len(),
            shape.iter().product::<usize>(),
            "`{name}`: buffer size"
        );
        self.file
            .read_exact_at(
                bytemuck::cast_slice_mut(out),
                self.start + info.data_offsets.0 as u64,
            )
            .map_err(|e| ModelError::io(&self.path, e))
    }

    /// The tensor `name` as f32 on the host, whatever float dtype the file stores it in (f32, bf16
    /// or f16; another dtype is an error naming the file and the tensor).
    pub fn read_float(&self, name: &str) -> Result<Tensor> {
        let info = self.lookup(name, &[])?;
        let dtype = match info.dtype {
            Dtype::F32 => return self.read(name, &info.shape, &Device::Cpu),
            Dtype::BF16 => DType::BF16,
            Dtype::F16 => DType::F16,
            other => {
                return Err(ModelError::DType {
                    path: self.path.clone(),
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        let (a, b) = info.data_offsets;
        let mut bytes = vec![0u8; b - a];
        self.file
            .read_exact_at(&mut bytes, self.start + a as u64)
            .map_err(|e| ModelError::io(&self.path, e))?;
        Ok(
            Tensor::from_raw_buffer(&bytes, dtype, &info.shape, &Device::Cpu)?
                .to_dtype(DType::F32)?,
        )
    }

    /// The f32 tensor `name`, of shape `shape`, on `device`.
    pub fn read(&self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let mut data = vec![0f32; shape.iter().product()];
        self.read_into(name, shape, &mut data)?;
        Ok(Tensor::from_vec(data, shape, device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_written_from_their_memory_read_back_bit_for_bit() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let a = Tensor::arange(0f32, 12.0, &Device::Cpu)?.reshape((3, 4))?;
        // A view into the middle of a larger storage: only its own range is written.
        let big = Tensor::arange(0f32, 30.0, &Device::Cpu)?;
        let b = big.narrow(0, 7, 5)?;
        let c = Tensor::new(&[1.5f64, -2.25], &Device::Cpu)?; // not f32: copied
        let floats = [f32::MIN_POSITIVE, -0.0, 3.0e38];
        write(
            &path,
            vec![
                ("a".into(), Source::of(&a)),
                ("b".into(), Source::of(&b)),
                ("c".into(), Source::of(&c)),
                (
                    "f".into(),
                    Source::Floats {
                        data: &floats,
                        shape: vec![3],
                    },
                ),
            ],
        )?;
        let f = TensorFile::open(&path)?;
        assert_eq!(f.names(), ["a", "b", "c", "f"]);
        let bits = |t: &Tensor| -> Vec<u32> {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            v.iter().map(|x| x.to_bits()).collect()
        };
        assert_eq!(bits(&f.read("a", &[3, 4], &Device::Cpu)?), bits(&a));
        assert_eq!(bits(&f.read("b", &[5], &Device::Cpu)?), bits(&b));
        let c32 = c.to_dtype(DType::F32)?;
        assert_eq!(bits(&f.read("c", &[2], &Device::Cpu)?), bits(&c32));
        let mut back = [0f32; 3];
        f.read_into("f", &[3], &mut back)?;
        assert_eq!(back.map(f32::to_bits), floats.map(f32::to_bits));
        // A candle reader sees the same file.
        let candle = candle_core::safetensors::load(&path, &Device::Cpu)?;
        assert_eq!(bits(&candle["b"]), bits(&b));
        Ok(())
    }

    #[test]
    fn the_file_is_byte_for_byte_the_crates_and_a_failed_copy_leaves_the_old_one() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let a = Tensor::arange(0f32, 6.0, &Device::Cpu)?.reshape((2, 3))?;
        let b = Tensor::new(&[0.5f64, -1.0, 7.0], &Device::Cpu)?;
        let odd = [1f32, 2.0, 3.0, 4.0, 5.0];
        write(
            &path,
            vec![
                ("z".into(), Source::of(&a)),
                ("b".into(), Source::of(&b)),
                (
                    "odd.name".into(),
                    Source::Floats {
                        data: &odd,
                        shape: vec![5],
                    },
                ),
            ],
        )?;
        let written = std::fs::read(&path).unwrap();
        let b32: Vec<f32> = b.to_dtype(DType::F32)?.to_vec1()?;
        let a32: Vec<f32> = a.flatten_all()?.to_vec1()?;
        fn view(x: &[f32], shape: Vec<usize>) -> safetensors::tensor::TensorView<'_> {
            let bytes: &[u8] = bytemuck::cast_slice(x);
            safetensors::tensor::TensorView::new(Dtype::F32, shape, bytes).unwrap()
        }
        let theirs = safetensors::serialize(
            vec![
                ("z", view(&a32, vec![2, 3])),
                ("b", view(&b32, vec![3])),
                ("odd.name", view(&odd, vec![5])),
            ],
            None,
        )
        .unwrap();
        assert_eq!(written, theirs);
        let sent = to_bytes(vec![
            (
                "odd.name".into(),
                Source::Floats {
                    data: &odd,
                    shape: vec![5],
                },
            ),
            ("b".into(), Source::of(&b)),
            ("z".into(), Source::of(&a)),
        ])?;
        assert_eq!(sent, theirs);
        // A tensor that cannot reach the host: an error naming it, the file as it was, and no
        // temporary file left beside it.
        let e = write(
            &path,
            vec![
                ("a".into(), Source::of(&a)),
                ("lost".into(), Source::Failing(vec![4, 2])),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("t.safetensors") && e.contains("`lost`") && e.contains("device lost"),
            "{e}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), written);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
        Ok(())
    }

    #[test]
    fn a_wrong_shape_a_missing_tensor_and_a_cut_file_are_named() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let a = Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?;
        write(&path, vec![("a".into(), Source::of(&a))])?;
        let f = TensorFile::open(&path)?;
        let e = f.read("a", &[3, 2], &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("t.safetensors") && e.contains("`a`"), "{e}");
        assert!(e.contains("[3, 2]") && e.contains("[2, 3]"), "{e}");
        let e = f.read("b", &[1], &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("t.safetensors") && e.contains("`b`"), "{e}");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let e = TensorFile::open(&path).err().unwrap().to_string();
        assert!(
            e.contains("t.safetensors") && e.contains("not a readable"),
            "{e}"
        );
        Ok(())
    }
}
