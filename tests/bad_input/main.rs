//! One test per row of `docs/errors.md`: each bad input or fault, the [`Error`] the library
//! returns for it, and the one line the `dbksvd` binary prints for it (exit status 1, no panic,
//! no backtrace). Messages are checked for what a user needs to act: the file, the tensor, the
//! row and column, the shapes, the limit and the largest batch that fits.

#[path = "../common/mod.rs"]
mod common;

// One module per section of docs/errors.md.
mod config;
mod data;
mod device;
mod dictionaries;
mod resume;

use dictionaries::{encode_error, tiny_dictionary};

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::files::{self, Tensor};
use dbksvd::data::{self as sources, ActivationFile, ActivationSource, InMemory};
use dbksvd::dictionary::{Dictionary, GROUPS_METADATA};
use dbksvd::encode::Groups;
use dbksvd::encode::{CodingOptions, Encoder, EncoderOptions, SparseCodes};
use dbksvd::train::{TrainConfig, Trainer, CHECKPOINT_FILE};
use dbksvd::Error;

/// Runs `dbksvd args` and returns its one `error:` line, checking that it failed with status 1,
/// printed exactly one error line and did not panic.
fn cli_error(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_dbksvd"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("the dbksvd binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal error"),
        "{args:?} panicked: {stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: not one error line: {stderr}");
    errors[0].to_string()
}

/// Asserts that `text` names every one of `needles`.
fn names(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "`{needle}` is missing from: {text}");
    }
}

/// `dbksvd train` on `data` into a fresh folder under `dir`, with `extra` flags; its error line.
fn train_error(dir: &Path, data: &[&Path], extra: &[&str]) -> String {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let out = dir.join(format!("out-{}", RUNS.fetch_add(1, Ordering::Relaxed)));
    let mut args = vec!["train".to_string(), "--data".into()];
    args.extend(data.iter().map(|p| p.display().to_string()));
    args.extend(["--out".into(), out.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let line = cli_error(&args);
    if out.exists() {
        // Nothing but the folder itself: no file was written for a refused run.
        let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
        assert!(left.is_empty(), "a refused run wrote {left:?}");
    }
    line
}

/// A [rows, d] matrix of distinct, well-spread values.
fn values(rows: usize, d: usize) -> Vec<f32> {
    common::uniform(rows * d, 5)
}

/// A well-formed activation file [rows, d] F32 in `dir`.
fn good_file(dir: &Path, name: &str, rows: usize, d: usize) -> PathBuf {
    files::write(
        dir,
        name,
        &files::activations_safetensors(&values(rows, d), [rows, d], "F32"),
    )
}

/// The library's error for opening `path`, which must fail.
fn open_error(path: &Path) -> Error {
    match ActivationFile::open(path) {
        Ok(file) => panic!("{} opened as {file:?}", path.display()),
        Err(e) => e,
    }
}

/// A format error naming `path`, whose message contains `expect`, from both the library and
/// the binary.
fn refused_file(path: &Path, expect: &[&str]) {
    let err = open_error(path);
    assert!(matches!(err, Error::Format { .. }), "{err:?}");
    let name = path.file_name().unwrap().to_str().unwrap();
    names(&err.to_string(), &[&[name][..], expect].concat());
    let dir = path.parent().unwrap();
    names(
        &train_error(dir, &[path], &[]),
        &[&[name][..], expect].concat(),
    );
}
