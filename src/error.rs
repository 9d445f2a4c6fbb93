//! The crate's one error type.

/// Everything that can go wrong in dbksvd.
///
/// Messages name what is wrong (the shapes, the limit and the number that exceeded it, the adapter),
/// so a user can act on them without reading code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No adapter matched the request (backend filter, adapter name), or none exists at all.
    #[error("no GPU adapter found: {0}")]
    NoAdapter(String),

    /// The adapter refused to create a device with the requested features and limits.
    #[error("requesting a device from adapter `{adapter}` failed: {reason}")]
    DeviceRequest {
        /// Name of the adapter that refused.
        adapter: String,
        /// What the backend said.
        reason: String,
    },

    /// Two operands do not fit together.
    #[error("shape mismatch in {op}: {left} vs {right}")]
    ShapeMismatch {
        /// The operation and the operand roles, e.g. `gemm A·Bᵀ (A vs B)`.
        op: String,
        /// First shape, e.g. `[17, 65]`.
        left: String,
        /// Second shape.
        right: String,
    },

    /// A host slice does not hold rows × cols elements.
    #[error("{what}: expected {expected} elements for shape [{rows}, {cols}], got {actual}")]
    DataLength {
        /// What the data is (e.g. `matrix upload`).
        what: String,
        /// Rows of the declared shape.
        rows: usize,
        /// Columns of the declared shape.
        cols: usize,
        /// rows × cols.
        expected: usize,
        /// Length of the slice given.
        actual: usize,
    },

    /// A request is larger than what the device allows.
    #[error(
        "{what} needs {requested} but the device limit `{limit_name}` is {limit}{}",
        largest_batch_hint(*largest_batch)
    )]
    ExceedsLimit {
        /// What was requested, e.g. `buffer for a [100000, 384] matrix (bytes)`.
        what: String,
        /// The requested amount.
        requested: u64,
        /// Name of the wgpu limit.
        limit_name: &'static str,
        /// The value of that limit on this device (after any user cap).
        limit: u64,
        /// For a batch that does not fit: the largest batch (in samples) that does.
        largest_batch: Option<usize>,
    },

    /// Mapping a buffer for reading failed (device lost, or buffer in use).
    #[error("mapping a GPU buffer for reading failed: {0}")]
    BufferMap(String),

    /// wgpu reported a validation error: a bug in dbksvd or a request the device cannot serve.
    #[error("GPU validation error: {0}")]
    GpuValidation(String),

    /// The device ran out of memory.
    #[error("GPU out of memory: {0}")]
    GpuOutOfMemory(String),

    /// The device was lost (driver reset, `destroy`, sleep) or stopped answering.
    #[error("GPU device lost: {0}")]
    DeviceLost(String),

    /// A NaN or infinity in input data.
    #[error("{what}: non-finite value {value} at row {row}, column {col}")]
    NonFinite {
        /// What the data is (file and tensor, or `samples`, `dictionary`).
        what: String,
        /// Row of the first non-finite value.
        row: usize,
        /// Column of the first non-finite value.
        col: usize,
        /// The value (NaN or ±inf).
        value: f32,
    },

    /// An argument is outside its valid range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// An activation file (or other data source) is malformed or does not fit the request: a bad
    /// header, offsets past the end, an unsupported dtype or rank, shards of different widths.
    #[error("{file}: {message}")]
    Format {
        /// The file (and tensor, where there is one) involved.
        file: String,
        /// What is wrong with it.
        message: String,
    },

    /// Training stopped on an error after it had started. `checkpoint` says what is kept: the
    /// last checkpoint written (path and position, and how to continue from it), or that there
    /// is none.
    #[error("{cause}; {checkpoint}")]
    Training {
        /// What went wrong (a lost device, a failed submission, bad data further in the file).
        cause: Box<Error>,
        /// The last checkpoint and how to resume from it, or that none was written.
        checkpoint: String,
        /// The last checkpoint file, when one was written.
        checkpoint_path: Option<std::path::PathBuf>,
    },

    /// A file has no tensor of the name asked for.
    #[error("{file}: no tensor `{tensor}` ({expected}); the file holds {present:?}")]
    MissingTensor {
        /// The file.
        file: String,
        /// The tensor asked for.
        tensor: String,
        /// What the tensor would hold, e.g. `[K, d]`.
        expected: String,
        /// The tensors the file holds.
        present: Vec<String>,
    },

    /// JSON (a configuration, metadata, `cfg.json`) could not be written or read.
    #[error("{what}: {source}")]
    Json {
        /// What was being written or read.
        what: String,
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },

    /// A bug in dbksvd, or a panic earlier in another thread that left shared state unusable.
    #[error("internal error: {0}")]
    Internal(String),

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn largest_batch_hint(largest: Option<usize>) -> String {
    match largest {
        Some(b) => format!("; the largest batch that fits is {b}"),
        None => String::new(),
    }
}

impl Error {
    /// The root cause: for [`Error::Training`] the error that stopped training, else `self`.
    pub fn cause(&self) -> &Error {
        match self {
            Error::Training { cause, .. } => cause.cause(),
            other => other,
        }
    }
}

/// Formats a matrix shape as `[rows, cols]` for error messages.
pub(crate) fn shape(rows: usize, cols: usize) -> String {
    format!("[{rows}, {cols}]")
}
