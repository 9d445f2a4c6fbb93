//! One memory-mapped activation file: safetensors or `.npy`, rows converted to f32 as they are read.

use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;

use super::{check_finite, rows_to_read, ActivationSource};
use crate::error::{Error, Result};

/// Element type of an activation file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// IEEE half precision.
    F16,
    /// bfloat16 (the top half of an f32).
    BF16,
    /// IEEE single precision.
    F32,
    /// IEEE double precision, rounded to f32 on reading (values beyond f32 range are errors).
    F64,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }
}

/// Container format of an activation file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// Hugging Face safetensors.
    Safetensors,
    /// NumPy `.npy` (version 1, 2 or 3).
    Npy,
}

/// The first bytes of every `.npy` file.
pub(super) const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// A 2-D activation tensor in a memory-mapped file, read without loading it.
///
/// The map relies on the file not being truncated or rewritten while it is open (the usual
/// contract of memory-mapped files); the header and every offset are validated when opening.
pub struct ActivationFile {
    path: PathBuf,
    tensor: Option<String>,
    format: FileFormat,
    dtype: Dtype,
    rows: usize,
    dim: usize,
    /// Byte offset of element (0, 0) in the map.
    offset: usize,
    map: Mmap,
}

/// Where a tensor lies in a file, as found by a format's header parser.
pub(super) struct Layout {
    pub tensor: Option<String>,
    pub dtype: Dtype,
    pub rows: usize,
    pub dim: usize,
    pub offset: usize,
}

impl ActivationFile {
    /// Opens a safetensors or `.npy` file (told apart by content, not by extension). In a
    /// safetensors file the tensor is `activations` if present, else the only 2-D floating tensor.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path.as_ref(), None)
    }

    /// Opens tensor `tensor` of a safetensors file.
    pub fn open_tensor(path: impl AsRef<Path>, tensor: &str) -> Result<Self> {
        Self::open_with(path.as_ref(), Some(tensor))
    }

    fn open_with(path: &Path, tensor: Option<&str>) -> Result<Self> {
        let file_name = || path.display().to_string();
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let metadata = file.metadata().map_err(io)?;
        if !metadata.is_file() {
            return Err(Error::Format {
                file: file_name(),
                message: "is not a file (for a directory of shards use data::open)".into(),
            });
        }
        let len = metadata.len();
        if len < 8 {
            return Err(Error::Format {
                file: file_name(),
                message: format!("truncated: {len} bytes is too short for a header"),
            });
        }
        // SAFETY: the map is only read, and mapped files are documented above to be left alone
        // while open; every offset used below is validated against the map's length first.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        if map.starts_with(b"PK") {
            return Err(Error::Format {
                file: file_name(),
                message: "is a zip archive (.npz?); extract the .npy arrays from it".into(),
            });
        }
        let (format, layout) = if map.starts_with(NPY_MAGIC) {
            if let Some(name) = tensor {
                return Err(Error::Format {
                    file: file_name(),
                    message: format!(".npy files hold one array; there is no tensor `{name}`"),
                });
            }
            (FileFormat::Npy, super::npy::layout(&map))
        } else {
            (
                FileFormat::Safetensors,
                super::safetensors::layout(&map, tensor),
            )
        };
        let layout = layout.map_err(|message| Error::Format {
            file: file_name(),
            message,
        })?;
        // The parsers check this; checked again here because reads rely on it.
        let bytes = layout
            .rows
            .checked_mul(layout.dim)
            .and_then(|n| n.checked_mul(layout.dtype.size()))
            .and_then(|n| n.checked_add(layout.offset));
        // A row's size must not overflow either (a [0, huge] tensor passes the total).
        let row = layout.dim.checked_mul(layout.dtype.size());
        if bytes.is_none_or(|end| end > map.len()) || row.is_none() {
            return Err(Error::Format {
                file: file_name(),
                message: format!(
                    "data for [{}, {}] {:?} runs past the end of the file ({} bytes)",
                    layout.rows,
                    layout.dim,
                    layout.dtype,
                    map.len()
                ),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensor: layout.tensor,
            format,
            dtype: layout.dtype,
            rows: layout.rows,
            dim: layout.dim,
            offset: layout.offset,
            map,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensor read (safetensors), or `None` for `.npy`.
    pub fn tensor(&self) -> Option<&str> {
        self.tensor.as_deref()
    }

    /// The container format.
    pub fn format(&self) -> FileFormat {
        self.format
    }

    /// The element type stored in the file.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
}

impl std::fmt::Debug for ActivationFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivationFile")
            .field("path", &self.path)
            .field("tensor", &self.tensor)
            .field("format", &self.format)
            .field("dtype", &self.dtype)
            .field("shape", &[self.rows, self.dim])
            .finish()
    }
}

impl ActivationSource for ActivationFile {
    fn rows(&self) -> usize {
        self.rows
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn name(&self) -> String {
        match &self.tensor {
            Some(t) => format!("{}, tensor `{t}`", self.path.display()),
            None => self.path.display().to_string(),
        }
    }

    fn read_rows(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let count = rows_to_read(self, start, out.len())?;
        let row_bytes = self.dim * self.dtype.size();
        let from = self.offset + start * row_bytes;
        convert(self.dtype, &self.map[from..from + count * row_bytes], out);
        check_finite(|| self.name(), out, self.dim, start)
    }
}

/// Little-endian `bytes` of `dtype` into `out` (one value per element; lengths match).
fn convert(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    // Element by element from bytes: safetensors data need not be aligned for the wide types.
    match dtype {
        Dtype::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Dtype::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        Dtype::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        Dtype::F64 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = f64::from_le_bytes(b.try_into().expect("chunks of 8")) as f32;
            }
        }
    }
}
