//! Shared by the fuzz targets: the scratch file the input is written to, and reading every row of
//! an opened activation file.

#![allow(dead_code)] // checkpoint_loader uses only part of this module.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use dbksvd::data::{ActivationFile, ActivationSource};

/// Rows per `read_rows` call.
const CHUNK_ROWS: usize = 64;
/// Files whose data would take more than this as f32 are opened but not read.
const MAX_READ_BYTES: usize = 64 << 20;

static SCRATCH: OnceLock<PathBuf> = OnceLock::new();

extern "C" {
    fn atexit(callback: extern "C" fn()) -> i32;
}

extern "C" fn remove_scratch() {
    if let Some(path) = SCRATCH.get() {
        let _ = std::fs::remove_file(path);
    }
}

/// Whether `DBKSVD_FUZZ_VERBOSE` is set: then every outcome is printed (for checking seeds and
/// triaging inputs, e.g. `cargo fuzz run npy_reader seeds/npy_reader/*`).
pub fn verbose() -> bool {
    static VERBOSE: OnceLock<bool> = OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("DBKSVD_FUZZ_VERBOSE").is_some())
}

/// Writes `data` to this process's scratch file (in /dev/shm when there is one, else the temporary
/// directory; one path per process, reused by every input) and returns its path.
pub fn write_scratch(target: &str, extension: &str, data: &[u8]) -> &'static Path {
    let path = SCRATCH.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        // SAFETY: registers a plain function that only removes a file at normal exit.
        unsafe { atexit(remove_scratch) };
        dir.join(format!(
            "dbksvd-fuzz-{target}-{}.{extension}",
            std::process::id()
        ))
    });
    std::fs::write(path, data).expect("writing the scratch file");
    path
}

/// Reads every row of `file` in chunks, then checks the reader's contract at the edges: past the
/// end and partial rows are errors, an empty read at the end is not.
pub fn read_all(file: &ActivationFile) {
    let (rows, dim) = (file.rows(), file.dim());
    let _ = (file.format(), file.dtype(), file.tensor(), file.name());
    let _ = format!("{file:?}");
    assert!(dim > 0, "opened a file with empty rows: {file:?}");
    // Bounds what is allocated below (a [0, huge] tensor has no data but a huge row).
    let fits = |values: Option<usize>| {
        values
            .and_then(|n| n.checked_mul(4))
            .is_some_and(|bytes| bytes <= MAX_READ_BYTES)
    };
    if !fits(rows.checked_mul(dim)) || !fits(dim.checked_mul(2)) {
        return;
    }
    let mut out = Vec::new();
    let mut start = 0;
    while start < rows {
        let count = CHUNK_ROWS.min(rows - start);
        out.resize(count * dim, 0.0);
        match file.read_rows(start, &mut out) {
            Ok(()) => assert!(
                out.iter().all(|v| v.is_finite()),
                "read_rows handed out a non-finite value"
            ),
            Err(e) => {
                if verbose() {
                    eprintln!("read_rows({start}, {count} rows): {e}");
                }
            }
        }
        start += count;
    }
    assert!(
        file.read_rows(rows, &mut []).is_ok(),
        "an empty read at the end failed"
    );
    let mut row = vec![0.0; dim];
    assert!(
        file.read_rows(rows, &mut row).is_err(),
        "reading past the end succeeded"
    );
    if rows > 0 {
        let mut partial = vec![0.0; dim + 1];
        assert!(
            file.read_rows(0, &mut partial).is_err() || dim == 1,
            "a partial row was read"
        );
        // Last row then first: gather's two runs.
        let mut two = vec![0.0; 2 * dim];
        let _ = file.gather(&[rows - 1, 0], &mut two);
    }
}

/// Opens the scratch file as activations (default tensor, then `activations` by name) and reads
/// whatever opens.
pub fn open_and_read(path: &Path) {
    for tensor in [None, Some("activations")] {
        let opened = match tensor {
            None => ActivationFile::open(path),
            Some(name) => ActivationFile::open_tensor(path, name),
        };
        match opened {
            Ok(file) => {
                if verbose() {
                    eprintln!("open({tensor:?}): ok {file:?}");
                }
                read_all(&file);
            }
            Err(e) => {
                if verbose() {
                    eprintln!("open({tensor:?}): {e}");
                }
            }
        }
    }
}
