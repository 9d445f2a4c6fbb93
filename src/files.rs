//! Files written safely and safetensors read with errors that name the file. Every file is
//! written to a temporary file beside its destination, fsynced and renamed over it, so a crash
//! or a full disk never leaves a half-written file under the real name.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsynced, then
/// renamed over `path` (and the directory fsynced where the platform allows).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("{} is not a file path", path.display())))?;
    let temp = dir.join(temporary_name(&name.to_string_lossy()));
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, path)?;
        // The rename itself is durable once the directory is synced (not possible on Windows).
        #[cfg(unix)]
        File::open(&dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(io)
}

/// The temporary name [`write_atomic`] writes `path` under before renaming it.
fn temporary_name(name: &str) -> String {
    format!(".{name}.tmp-{}", std::process::id())
}

/// True for a name [`write_atomic`] gives its temporaries (of any process).
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.')
        && name
            .rsplit_once(".tmp-")
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// True for a temporary [`write_atomic`] writes one of the files `names` under (of any
/// process).
pub fn is_temporary_of(name: &str, names: &[&str]) -> bool {
    is_temporary(name)
        && names
            .iter()
            .any(|n| name.starts_with(&format!(".{n}.tmp-")))
}

/// Removes from `dir` the temporaries of the files `names` that a writer killed between writing
/// and renaming left behind (`.NAME.tmp-PID`, never part of the output). Returns what it removed;
/// a missing `dir` is nothing to do. Only for a folder that one process writes at a time.
pub fn remove_temporaries(dir: &Path, names: &[&str]) -> Result<Vec<PathBuf>> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut removed = Vec::new();
    if !dir.is_dir() {
        return Ok(removed);
    }
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_temporary_of(&name, names) && entry.file_type().map_err(io(dir))?.is_file() {
            std::fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

/// A tensor to write: name, dtype, shape and little-endian bytes.
pub(crate) struct Tensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Tensor {
    pub(crate) fn f32(name: &str, shape: Vec<usize>, values: &[f32]) -> Self {
        Self {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub(crate) fn i32(name: &str, shape: Vec<usize>, values: &[i32]) -> Self {
        Self {
            name: name.into(),
            dtype: Dtype::I32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub(crate) fn u32(name: &str, shape: Vec<usize>, values: &[u32]) -> Self {
        Self {
            name: name.into(),
            dtype: Dtype::U32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// Serialises `tensors` with `metadata` as safetensors and writes the file atomically.
pub(crate) fn write_safetensors(
    path: &Path,
    tensors: &[Tensor],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(t.dtype, t.shape.clone(), &t.data).map(|view| (t.name.clone(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Internal(format!("{}: a tensor view: {e}", path.display())))?;
    let metadata = (!metadata.is_empty()).then_some(metadata);
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| Error::Internal(format!("{}: serialising: {e}", path.display())))?;
    write_atomic(path, &bytes)
}

/// A safetensors file read whole, with errors naming the file.
pub(crate) struct SafetensorsFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl SafetensorsFile {
    pub(crate) fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file = Self {
            path: path.to_path_buf(),
            bytes,
        };
        file.parsed()?;
        Ok(file)
    }

    pub(crate) fn format_error(&self, message: String) -> Error {
        Error::Format {
            file: self.path.display().to_string(),
            message,
        }
    }

    fn parsed(&self) -> Result<SafeTensors<'_>> {
        crate::data::check_safetensors_offsets(&self.bytes)
            .map_err(|message| self.format_error(message))?;
        SafeTensors::deserialize(&self.bytes)
            .map_err(|e| self.format_error(format!("not a valid safetensors file: {e}")))
    }

    /// The `__metadata__` map (empty when absent).
    pub(crate) fn metadata(&self) -> Result<HashMap<String, String>> {
        let (_, metadata) = SafeTensors::read_metadata(&self.bytes)
            .map_err(|e| self.format_error(format!("not a valid safetensors file: {e}")))?;
        Ok(metadata.metadata().clone().unwrap_or_default())
    }

    /// Tensor `name` as `dtype` with the shape `check` accepts (it names what it expected).
    fn raw(&self, name: &str, dtype: Dtype, expected: &str) -> Result<(Vec<usize>, Vec<u8>)> {
        let parsed = self.parsed()?;
        let view = parsed.tensor(name).map_err(|_| {
            let mut present: Vec<String> = parsed.names().into_iter().map(String::from).collect();
            present.sort();
            Error::MissingTensor {
                file: self.path.display().to_string(),
                tensor: name.into(),
                expected: expected.into(),
                present,
            }
        })?;
        if view.dtype() != dtype {
            return Err(self.format_error(format!(
                "tensor `{name}` is {:?}; expected {dtype:?} {expected}",
                view.dtype()
            )));
        }
        Ok((view.shape().to_vec(), view.data().to_vec()))
    }

    /// F32 tensor `name` and its shape; non-finite values are errors naming row and column.
    pub(crate) fn f32(&self, name: &str, expected: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (shape, data) = self.raw(name, Dtype::F32, expected)?;
        let values: Vec<f32> = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let cols = shape.last().copied().unwrap_or(1).max(1);
        crate::coding::check_finite(
            &format!("{}, tensor `{name}`", self.path.display()),
            &values,
            cols,
        )?;
        Ok((shape, values))
    }

    /// U32 tensor `name` and its shape.
    pub(crate) fn u32(&self, name: &str, expected: &str) -> Result<(Vec<usize>, Vec<u32>)> {
        let (shape, data) = self.raw(name, Dtype::U32, expected)?;
        let values = data
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok((shape, values))
    }

    /// Metadata entry `key` parsed as `T`, or an error naming the key.
    pub(crate) fn meta<T: std::str::FromStr>(
        &self,
        metadata: &HashMap<String, String>,
        key: &str,
    ) -> Result<T> {
        let text = metadata
            .get(key)
            .ok_or_else(|| self.format_error(format!("metadata has no `{key}`")))?;
        text.parse()
            .map_err(|_| self.format_error(format!("metadata `{key}` = {text:?} does not parse")))
    }
}
