//! One test per row of `docs/errors.md`: each bad input or fault, the [`Error`] the library
//! returns for it, and the one line the `dbksvd` binary prints for it (exit status 1, no panic,
//! no backtrace). Messages are checked for what a user needs to act: the file, the tensor, the
//! row and column, the shapes, the limit and the largest batch that fits.

mod common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::files::{self, Tensor};
use dbksvd::data::{self, ActivationFile, ActivationSource, InMemory};
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

// ---- data ----

#[test]
fn data_non_finite_value_names_file_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let (rows, d) = (40, 6);
    for (dtype, bad, shown) in [
        ("F32", f32::NAN, "NaN"),
        ("BF16", f32::NEG_INFINITY, "-inf"),
    ] {
        let mut m = values(rows, d);
        m[17 * d + 4] = bad;
        let name = format!("bad-{dtype}.safetensors");
        let path = files::write(
            dir.path(),
            &name,
            &files::activations_safetensors(&m, [rows, d], dtype),
        );
        let file = ActivationFile::open(&path).unwrap();
        let mut out = vec![0.0; rows * d];
        match file.read_rows(0, &mut out) {
            Err(Error::NonFinite { what, row, col, .. }) => {
                assert!(what.contains(&name), "{what}");
                assert_eq!((row, col), (17, 4));
            }
            other => panic!("expected NonFinite, got {other:?}"),
        }
        // The binary finds it in the statistics pass, before training, on the GPU it opened.
        if common::gpu().is_some() {
            names(
                &train_error(dir.path(), &[&path], &["--atoms", "8", "--k", "2"]),
                &[&name, "row 17", "column 4", shown],
            );
        }
    }
    let Some(gpu) = common::gpu() else { return };
    // .npy, +inf.
    let mut m = values(rows, d);
    m[3 * d] = f32::INFINITY;
    let path = files::write(
        dir.path(),
        "inf.npy",
        &files::activations_npy(&m, [rows, d], "<f4"),
    );
    names(
        &train_error(dir.path(), &[&path], &["--atoms", "8", "--k", "2"]),
        &["inf.npy", "row 3", "column 0", "inf"],
    );

    // Met mid-training: a resumed run skips the statistics pass, so a NaN in a later batch is
    // found by the batch that reads it; the error names the checkpoint resumed from.
    let clean = InMemory::new(values(rows, d), d).unwrap();
    let mut config = TrainConfig::new(8, 2);
    config.batch_size = Some(10);
    config.epochs = 1;
    let stop_after_one = Trainer::new(gpu, config.clone())
        .checkpoint_to(dir.path())
        .on_batch(|_| ControlFlow::Break(()))
        .fit(&clean)
        .unwrap();
    assert_eq!(stop_after_one.batches.len(), 1);
    let mut m = values(rows, d);
    m[33 * d + 5] = f32::NAN;
    let dirty = InMemory::new(m, d).unwrap().with_name("later.safetensors");
    let err = Trainer::new(gpu, config)
        .resume_from(dir.path().join(CHECKPOINT_FILE))
        .fit(&dirty)
        .unwrap_err();
    assert!(
        matches!(
            err.cause(),
            Error::NonFinite {
                row: 33,
                col: 5,
                ..
            }
        ),
        "{err:?}"
    );
    names(
        &err.to_string(),
        &[
            "later.safetensors",
            "row 33",
            "column 5",
            CHECKPOINT_FILE,
            "epoch 0, batch 1",
        ],
    );
}

#[test]
fn data_integer_or_bool_dtype_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (dtype, bytes) in [("I32", 4), ("I64", 8), ("BOOL", 1), ("U8", 1)] {
        let path = files::write(
            dir.path(),
            &format!("{dtype}.safetensors"),
            &files::safetensors_bytes(&[Tensor {
                name: "activations",
                dtype,
                shape: vec![4, 3],
                data: vec![0; 12 * bytes],
            }]),
        );
        refused_file(&path, &[&format!("dtype {dtype}"), "F32"]);
    }
    for descr in ["<i4", "|b1"] {
        let path = files::write(
            dir.path(),
            &format!("{}.npy", descr.replace(['<', '|'], "")),
            &files::npy_raw(
                &format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (4, 3), }}"),
                &vec![0; 12 * if descr == "|b1" { 1 } else { 4 }],
            ),
        );
        refused_file(&path, &[&format!("'{descr}' is not supported")]);
    }
}

#[test]
fn data_rank_other_than_two_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for shape in [vec![24], vec![2, 3, 4]] {
        let path = files::write(
            dir.path(),
            &format!("rank{}.safetensors", shape.len()),
            &files::safetensors_bytes(&[Tensor {
                name: "activations",
                dtype: "F32",
                shape: shape.clone(),
                data: vec![0; 96],
            }]),
        );
        refused_file(&path, &["must be 2-D"]);
    }
    let path = files::write(
        dir.path(),
        "rank3.npy",
        &files::npy_raw(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), }",
            &[0; 96],
        ),
    );
    refused_file(&path, &["must be 2-D"]);
}

#[test]
fn data_zero_rows_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = good_file(dir.path(), "empty.safetensors", 0, 6);
    // Opening is fine (an empty shard is a valid part of a dataset); training on it is not.
    let file = ActivationFile::open(&path).unwrap();
    let Some(gpu) = common::gpu() else { return };
    let err = Trainer::new(gpu, TrainConfig::new(4, 2))
        .fit(&file)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    names(&err.to_string(), &["empty.safetensors", "[0, 6]", "empty"]);
    names(
        &train_error(dir.path(), &[&path], &["--atoms", "4", "--k", "2"]),
        &["empty.safetensors", "[0, 6]"],
    );
    // And encoding it gives no codes, not an error: the output is a valid empty file.
    let out = dir.path().join("codes.safetensors");
    let dict = tiny_dictionary(dir.path(), 6);
    let status = Command::new(env!("CARGO_BIN_EXE_dbksvd"))
        .args(["encode", "--dict", dict.to_str().unwrap(), "--k", "2"])
        .args([
            "--data",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let bytes = std::fs::read(&out).unwrap();
    let codes = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(codes.tensor("indices").unwrap().shape(), [0, 2]);
}

#[test]
fn data_zero_columns_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = good_file(dir.path(), "no-columns.safetensors", 5, 0);
    refused_file(&path, &["[5, 0]"]);
    let path = files::write(
        dir.path(),
        "no-columns.npy",
        &files::npy_raw(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (5, 0), }",
            &[],
        ),
    );
    refused_file(&path, &["[5, 0]"]);
}

#[test]
fn data_missing_or_ambiguous_tensor_lists_the_names() {
    let dir = tempfile::tempdir().unwrap();
    let tensor = |name: &'static str| Tensor {
        name,
        dtype: "F32",
        shape: vec![4, 3],
        data: vec![0; 48],
    };
    // Two 2-D float tensors, neither called `activations`: name one.
    let path = files::write(
        dir.path(),
        "two.safetensors",
        &files::safetensors_bytes(&[tensor("resid_pre"), tensor("resid_post")]),
    );
    refused_file(
        &path,
        &[
            "several",
            "`resid_post` F32 [4, 3]",
            "`resid_pre` F32 [4, 3]",
        ],
    );
    // A named tensor that is not there.
    let err = ActivationFile::open_tensor(&path, "mlp_out").unwrap_err();
    names(
        &err.to_string(),
        &["two.safetensors", "no tensor `mlp_out`", "`resid_pre`"],
    );
    names(
        &train_error(dir.path(), &[&path], &["--tensor", "mlp_out"]),
        &["two.safetensors", "no tensor `mlp_out`", "`resid_post`"],
    );
}

#[test]
fn data_truncated_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = files::activations_safetensors(&values(4, 3), [4, 3], "F32");
    let path = files::write(dir.path(), "cut.safetensors", &good[..good.len() - 6]);
    refused_file(&path, &["truncated"]);
    let path = files::write(dir.path(), "stub.safetensors", &good[..5]);
    refused_file(&path, &["truncated"]);
    let good = files::activations_npy(&values(4, 3), [4, 3], "<f4");
    let path = files::write(dir.path(), "cut.npy", &good[..good.len() - 4]);
    refused_file(&path, &["truncated"]);
}

#[test]
fn data_header_or_offsets_past_the_end_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = files::activations_safetensors(&values(2, 3), [2, 3], "F32");
    let path = files::write(
        dir.path(),
        "header-past-end.safetensors",
        &[&90_000u64.to_le_bytes()[..], &good[8..]].concat(),
    );
    refused_file(&path, &["runs past the end"]);
    // A header length near u64::MAX must not overflow.
    let path = files::write(
        dir.path(),
        "header-huge.safetensors",
        &[&u64::MAX.to_le_bytes()[..], &good[8..]].concat(),
    );
    refused_file(&path, &["not a valid safetensors file"]);
    // Offsets near 2⁶⁴ that add up past it (the safetensors crate sums them unchecked): eight
    // F64 tensors of 2⁵⁸ − 1 elements each, no data.
    let size: u64 = 2_305_843_009_213_693_944;
    let header: Vec<String> = (0..8u64)
        .map(|i| {
            format!(
                "\"t{i}\":{{\"dtype\":\"F64\",\"shape\":[288230376151711743],\"data_offsets\":[{},{}]}}",
                i * size,
                (i + 1) * size
            )
        })
        .collect();
    let bytes = files::safetensors_raw(&format!("{{{}}}", header.join(",")), &[]);
    let path = files::write(dir.path(), "offsets-overflow.safetensors", &bytes);
    refused_file(&path, &["truncated", "runs to byte"]);
    for err in [
        Dictionary::load(&path).unwrap_err(),
        dbksvd::train::Checkpoint::load(&path).unwrap_err(),
    ] {
        assert!(matches!(err, Error::Format { .. }), "{err:?}");
        names(
            &err.to_string(),
            &["offsets-overflow.safetensors", "truncated"],
        );
    }
    let path = files::write(
        dir.path(),
        "offsets-past-end.safetensors",
        &files::safetensors_raw(
            r#"{"activations":{"dtype":"F32","shape":[1000,3],"data_offsets":[0,12000]}}"#,
            &[0; 24],
        ),
    );
    refused_file(&path, &["truncated"]);
    let mut npy = files::activations_npy(&values(2, 3), [2, 3], "<f4");
    npy[8..10].copy_from_slice(&60_000u16.to_le_bytes());
    let path = files::write(dir.path(), "header-past-end.npy", &npy);
    refused_file(&path, &["runs past the end"]);
}

#[test]
fn data_non_json_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = files::write(
        dir.path(),
        "not-json.safetensors",
        &files::safetensors_raw("{activations: [2, 3]}", &[0; 24]),
    );
    refused_file(&path, &["not valid JSON"]);
    let path = files::write(
        dir.path(),
        "not-a-dict.npy",
        &files::npy_raw("descr=<f4 shape=2,3", &[0; 24]),
    );
    refused_file(&path, &["malformed header"]);
}

#[test]
fn data_npy_fortran_order_or_unsupported_dtype_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = files::write(
        dir.path(),
        "fortran.npy",
        &files::npy_raw(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
            &[0; 24],
        ),
    );
    refused_file(&path, &["Fortran"]);
    for (descr, expect) in [(">f4", "big-endian"), ("<c8", "'<c8' is not supported")] {
        let path = files::write(
            dir.path(),
            &format!("{}.npy", descr.replace(['<', '>'], "")),
            &files::npy_raw(
                &format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (2, 3), }}"),
                &[0; 48],
            ),
        );
        refused_file(&path, &[expect]);
    }
}

#[test]
fn data_shards_of_different_width_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = good_file(dir.path(), "part-0.safetensors", 10, 6);
    let b = good_file(dir.path(), "part-1.safetensors", 10, 7);
    let Err(err) = data::open(&[&a, &b]) else {
        panic!("shards of different widths opened")
    };
    assert!(matches!(err, Error::Format { .. }), "{err:?}");
    names(&err.to_string(), &["part-1.safetensors", "7 columns", "6"]);
    names(
        &train_error(dir.path(), &[&a, &b], &[]),
        &["part-1.safetensors", "7 columns", "part-0.safetensors"],
    );
    // The same within a folder of shards.
    let shards = dir.path().join("shards");
    std::fs::create_dir(&shards).unwrap();
    good_file(&shards, "acts_1.safetensors", 4, 6);
    good_file(&shards, "acts_2.safetensors", 4, 5);
    names(
        &train_error(dir.path(), &[&shards], &[]),
        &["acts_2.safetensors", "5 columns"],
    );
}

#[test]
fn data_missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.safetensors");
    let err = open_error(&missing);
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    names(&err.to_string(), &["nowhere.safetensors"]);
    names(
        &train_error(dir.path(), &[&missing], &[]),
        &["nowhere.safetensors", "No such file"],
    );
    // A folder where a file is expected, and a zip archive (.npz).
    let err = ActivationFile::open(dir.path()).unwrap_err();
    names(&err.to_string(), &["not a file"]);
    let npz = files::write(dir.path(), "acts.npz", b"PK\x03\x04rest of a zip archive");
    refused_file(&npz, &["zip archive"]);
}

// ---- dictionaries and codes ----

/// A valid 8-atom dictionary of dimension `d` saved in `dir`.
fn tiny_dictionary(dir: &Path, d: usize) -> PathBuf {
    let path = dir.join(format!("dict-{d}.safetensors"));
    let mut atoms = values(8, d);
    atoms.iter_mut().for_each(|v| *v += 0.1);
    Dictionary::new(atoms, d).unwrap().save(&path).unwrap();
    path
}

fn encode_error(dict: &Path, data: &Path, extra: &[&str]) -> String {
    let out = dict.with_file_name("codes.safetensors");
    let mut args = vec![
        "encode",
        "--dict",
        dict.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let line = cli_error(&args);
    assert!(!out.exists(), "a refused encode wrote {}", out.display());
    line
}

#[test]
fn dictionary_of_the_wrong_dimension_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dict = tiny_dictionary(dir.path(), 5);
    let data = good_file(dir.path(), "acts.safetensors", 30, 6);
    names(
        &encode_error(&dict, &data, &["--k", "2"]),
        &["acts.safetensors", "d = 6", "d = 5"],
    );
    // --init: the dictionary to start training from.
    names(
        &train_error(
            dir.path(),
            &[&data],
            &["--init", dict.to_str().unwrap(), "--atoms", "8", "--k", "2"],
        ),
        &["dict-5.safetensors", "d = 5", "d = 6"],
    );
    let Some(gpu) = common::gpu() else { return };
    let loaded = Dictionary::load(&dict).unwrap();
    let encoder = loaded.encoder(gpu, CodingOptions::omp(2)).unwrap();
    let source = ActivationFile::open(&data).unwrap();
    let err = encoder.encode(&source).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err:?}");
    names(&err.to_string(), &["acts.safetensors", "d = 6", "d = 5"]);
}

#[test]
fn dictionary_with_a_zero_or_non_finite_atom_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = good_file(dir.path(), "acts.safetensors", 30, 4);
    let write = |name: &str, atoms: &[f32]| {
        files::write(
            dir.path(),
            name,
            &files::safetensors_bytes(&[Tensor {
                name: "dictionary",
                dtype: "F32",
                shape: vec![3, 4],
                data: files::encode(atoms, "F32"),
            }]),
        )
    };
    let mut atoms = values(3, 4);
    atoms[4..8].fill(0.0);
    let zero = write("zero-atom.safetensors", &atoms);
    let err = Dictionary::load(&zero).unwrap_err();
    names(
        &err.to_string(),
        &["zero-atom.safetensors", "atom 1", "zero"],
    );
    names(
        &encode_error(&zero, &data, &["--k", "2"]),
        &["zero-atom.safetensors", "atom 1"],
    );
    let mut atoms = values(3, 4);
    atoms[2 * 4 + 3] = f32::NAN;
    let nan = write("nan-atom.safetensors", &atoms);
    let err = Dictionary::load(&nan).unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err:?}");
    names(
        &err.to_string(),
        &["nan-atom.safetensors", "`dictionary`", "row 2", "column 3"],
    );
    names(
        &encode_error(&nan, &data, &["--k", "2"]),
        &["nan-atom.safetensors", "row 2", "column 3"],
    );
    // The library's encoder checks atoms given directly too.
    let Some(gpu) = common::gpu() else { return };
    let mut zero = values(3, 4);
    zero[4..8].fill(0.0);
    let options = EncoderOptions::new(CodingOptions::omp(2));
    let err = Encoder::new(gpu, &zero, 3, 4, options).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    names(&err.to_string(), &["atom 1", "norm 0"]);
    let err = Encoder::new(
        gpu,
        &atoms,
        3,
        4,
        EncoderOptions::new(CodingOptions::omp(2)),
    )
    .unwrap_err();
    names(&err.to_string(), &["dictionary", "row 2", "column 3"]);
}

#[test]
fn codes_naming_an_atom_beyond_k_are_refused() {
    let Some(gpu) = common::gpu() else { return };
    let atoms = values(4, 3);
    let encoder = Encoder::new(
        gpu,
        &atoms,
        4,
        3,
        EncoderOptions::new(CodingOptions::omp(2)),
    )
    .unwrap();
    let codes = SparseCodes {
        n: 2,
        k: 2,
        indices: vec![0, 1, 3, 4],
        values: vec![1.0; 4],
        residual_energy: vec![0.0; 2],
    };
    let err = encoder.reconstruct(&codes).unwrap_err();
    names(&err.to_string(), &["row 1", "slot 1", "atom 4", "4 atoms"]);
    let err = gpu
        .coded_batch(&values(2, 3), 3, &codes, 4)
        .unwrap_err()
        .to_string();
    names(&err, &["row 1", "slot 1", "atom 4", "4 atoms"]);
}

// ---- configuration ----

/// A configuration error from both the library (`Trainer::fit` on [40, 6] rows) and the binary
/// (`flags` on the same file); both must contain `expect`.
fn config_error(config: TrainConfig, flags: &[&str], expect: &[&str]) {
    let (rows, d) = (40, 6);
    let err = config.validate_for(rows, d, "acts").unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    names(&err.to_string(), expect);
    let dir = tempfile::tempdir().unwrap();
    let data = good_file(dir.path(), "acts.safetensors", rows, d);
    names(&train_error(dir.path(), &[&data], flags), expect);
    if let Some(gpu) = common::gpu() {
        let source = InMemory::new(values(rows, d), d).unwrap();
        let err = Trainer::new(gpu, config).fit(&source).unwrap_err();
        names(&err.to_string(), expect);
    }
}

fn base() -> TrainConfig {
    TrainConfig::new(8, 2)
}

/// One test per configuration row: the test's name, the configuration, the binary's flags
/// (on [40, 6] rows) and what both messages must contain.
macro_rules! config_case {
    ($name:ident, $config:expr, $flags:expr, $expect:expr) => {
        #[test]
        fn $name() {
            config_error($config, $flags, $expect);
        }
    };
}

config_case!(
    config_k_zero,
    {
        let mut config = base();
        config.k = 0;
        config
    },
    &["--atoms", "8", "--k", "0"],
    &["k = 0"]
);
config_case!(
    config_k_above_atoms,
    {
        let mut config = base();
        config.k = 9;
        config
    },
    &["--atoms", "8", "--k", "9"],
    &["k = 9", "K = 8"]
);
config_case!(
    config_k_above_dimension,
    TrainConfig::new(8, 7),
    &["--atoms", "8", "--k", "7"],
    &["k = 7", "d = 6"]
);
config_case!(
    config_no_atoms,
    TrainConfig::new(0, 1),
    &["--atoms", "0", "--k", "1"],
    &["K must be at least 1"]
);
config_case!(
    config_more_atoms_than_rows,
    TrainConfig::new(41, 2),
    &["--atoms", "41", "--k", "2"],
    &["K = 41", "only 40 rows"]
);
config_case!(
    config_batch_zero,
    base().with_batch_size(0),
    &["--atoms", "8", "--k", "2", "--batch", "0"],
    &["batch size"]
);
config_case!(
    config_atom_batch_zero,
    base().with_atom_batch(0),
    &["--atoms", "8", "--k", "2", "--atom-batch", "0"],
    &["atom batch"]
);
config_case!(
    config_atom_batch_above_atoms,
    base().with_atom_batch(9),
    &["--atoms", "8", "--k", "2", "--atom-batch", "9"],
    &["atom batch A = 9", "K = 8"]
);
config_case!(
    config_epochs_zero,
    base().with_epochs(0),
    &["--atoms", "8", "--k", "2", "--epochs", "0"],
    &["epochs"]
);

config_case!(
    config_fewer_nonzeros_than_matryoshka_groups,
    base().with_groups(Groups::doubling(2, 8).unwrap()),
    &["--atoms", "8", "--k", "2", "--matryoshka", "2"],
    &["k = 2", "3 Matryoshka groups"]
);
config_case!(
    config_matryoshka_groups_not_ending_at_atoms,
    base().with_groups(Groups::new(vec![3, 6]).unwrap()),
    &["--atoms", "8", "--k", "2", "--matryoshka", "3,6"],
    &["end at 6", "K = 8"]
);

#[test]
fn config_matryoshka_groups_that_do_not_parse_or_nest() {
    let dir = tempfile::tempdir().unwrap();
    let data = good_file(dir.path(), "acts.safetensors", 40, 6);
    let flags = |spec: &'static str| ["--atoms", "8", "--k", "4", "--matryoshka", spec];
    names(
        &train_error(dir.path(), &[&data], &flags("four")),
        &["--matryoshka four", "smallest group"],
    );
    names(
        &train_error(dir.path(), &[&data], &flags("4,2,8")),
        &["[4, 2, 8]", "strictly increasing"],
    );
    names(
        &train_error(dir.path(), &[&data], &flags("9")),
        &["smallest Matryoshka group 9", "K = 8"],
    );
    assert!(Groups::new(vec![4, 2, 8]).is_err() && Groups::doubling(0, 8).is_err());
    // Encoding with more groups than the dictionary has, or a prefix of a plain one.
    let dict = tiny_dictionary(dir.path(), 6);
    let grouped = Dictionary::load(&dict)
        .unwrap()
        .with_metadata(GROUPS_METADATA, "[2,4,8]");
    let grouped_path = dir.path().join("grouped.safetensors");
    grouped.save(&grouped_path).unwrap();
    names(
        &encode_error(&grouped_path, &data, &["--k", "4", "--groups", "4"]),
        &["a prefix of 4 groups", "has 3"],
    );
    names(
        &encode_error(&dict, &data, &["--k", "2", "--groups", "2"]),
        &["a prefix of 2 groups", "has 1"],
    );
    // Groups in the metadata that do not fit the dictionary.
    let grouped = grouped.with_metadata(GROUPS_METADATA, "[2,4,9]");
    grouped.save(&grouped_path).unwrap();
    names(
        &encode_error(&grouped_path, &data, &["--k", "4"]),
        &["matryoshka_groups", "K = 8"],
    );
}

#[test]
fn config_flag_that_does_not_parse_is_a_usage_error() {
    // clap's usage errors exit with 2 and say which flag.
    let output = Command::new(env!("CARGO_BIN_EXE_dbksvd"))
        .args(["train", "--atoms", "many"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    names(&stderr, &["--atoms", "many"]);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

// ---- device limits and faults ----

/// [rows, d] activations written to `dir/name`, with their in-memory twin.
fn data_pair(dir: &Path, name: &str, rows: usize, d: usize) -> (PathBuf, InMemory<Vec<f32>>) {
    let m = values(rows, d);
    let path = files::write(
        dir,
        name,
        &files::activations_safetensors(&m, [rows, d], "F32"),
    );
    (path, InMemory::new(m, d).unwrap())
}

#[test]
fn device_dictionary_beyond_the_buffer_limit() {
    let Some(gpu) = common::gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (path, source) = data_pair(dir.path(), "wide.safetensors", 300, 96);
    // K·d·4 = 256·96·4 = 98 304 bytes > 64 KiB.
    let small = gpu.with_max_buffer_size(65_536).unwrap();
    let err = Trainer::new(&small, TrainConfig::new(256, 4))
        .fit(&source)
        .unwrap_err();
    match &err {
        Error::ExceedsLimit {
            requested,
            limit,
            largest_batch,
            ..
        } => {
            assert_eq!((*requested, *limit, *largest_batch), (98_304, 65_536, None));
        }
        other => panic!("expected ExceedsLimit, got {other:?}"),
    }
    names(
        &err.to_string(),
        &["dictionary [256, 96]", "max_buffer_size"],
    );
    names(
        &train_error(
            dir.path(),
            &[&path],
            &["--atoms", "256", "--k", "4", "--max-buffer-size", "65536"],
        ),
        &["dictionary [256, 96]", "98304", "65536"],
    );
}

#[test]
fn device_coding_kernel_beyond_its_limits() {
    // k = 300 is more than llvmpipe's loop cap allows the coding kernel's per-sample triangular
    // solves (≈ 1.5·k² iterations per dispatch); other adapters have no such limit on k.
    let Some(gpu) = common::gpu() else { return };
    if gpu.limits().max_loop_iterations.is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (path, source) = data_pair(dir.path(), "acts.safetensors", 400, 320);
    let err = Trainer::new(gpu, TrainConfig::new(400, 300))
        .fit(&source)
        .unwrap_err();
    assert!(matches!(err, Error::ExceedsLimit { .. }), "{err:?}");
    names(&err.to_string(), &["sparse coding with", "k = 300"]);
    names(
        &train_error(dir.path(), &[&path], &["--atoms", "400", "--k", "300"]),
        &["sparse coding with", "k = 300"],
    );
}

#[test]
fn device_gram_matrix_beyond_the_buffer_limit() {
    let Some(gpu) = common::gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (path, source) = data_pair(dir.path(), "narrow.safetensors", 300, 8);
    // K·d·4 = 2 400 bytes fits 64 KiB; the Gram matrix K·K·4 = 360 000 does not.
    let small = gpu.with_max_buffer_size(65_536).unwrap();
    let err = Trainer::new(&small, TrainConfig::new(300, 4))
        .fit(&source)
        .unwrap_err();
    assert!(matches!(err, Error::ExceedsLimit { .. }), "{err:?}");
    names(
        &err.to_string(),
        &["Gram matrix [300, 300]", "360000", "65536"],
    );
    names(
        &train_error(
            dir.path(),
            &[&path],
            &["--atoms", "300", "--k", "4", "--max-buffer-size", "65536"],
        ),
        &["Gram matrix [300, 300]", "max_buffer_size"],
    );
}

#[test]
fn device_batch_beyond_the_limits_names_the_largest_that_fits() {
    let Some(gpu) = common::gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (path, source) = data_pair(dir.path(), "acts.safetensors", 3000, 16);
    // Correlations [B, K] with K = 512 in 1 MiB: B ≤ 1 048 576 / 2048 = 512 rows in a buffer (the
    // coding kernel binds them in row chunks, so bindings bound less).
    let cap = 1_048_576u64;
    let small = gpu.with_max_buffer_size(cap).unwrap();
    let coding = CodingOptions::omp(4);
    let expected = 512;
    let largest = small.max_train_batch(512, 16, &coding).unwrap();
    assert_eq!(largest, expected);
    let fits = format!("the largest batch that fits is {expected}");
    let mut config = TrainConfig::new(512, 4);
    config.epochs = 1;
    config.batch_size = Some(1500);
    let err = Trainer::new(&small, config.clone())
        .fit(&source)
        .unwrap_err();
    match &err {
        Error::ExceedsLimit {
            requested,
            limit,
            largest_batch,
            ..
        } => {
            // In bytes, as the limit: 1500 rows of 512 correlations.
            assert_eq!(*requested, 1500 * 2048);
            assert_eq!((*limit, *largest_batch), (cap, Some(expected)));
        }
        other => panic!("expected ExceedsLimit, got {other:?}"),
    }
    names(
        &err.to_string(),
        &["1500 samples", "correlations [B, K]", &fits],
    );
    names(
        &train_error(
            dir.path(),
            &[&path],
            &[
                "--atoms",
                "512",
                "--k",
                "4",
                "--batch",
                "1500",
                "--max-buffer-size",
                "1048576",
            ],
        ),
        &["1500 samples", "1048576", &fits],
    );
    // With no batch set the trainer picks one that fits: 3000 rows in 6 batches of 500.
    config.batch_size = None;
    let result = Trainer::new(&small, config).fit(&source).unwrap();
    assert_eq!(result.config.batch_size, Some(500));
    assert_eq!(result.batches.len(), 6);
    assert!(result.epochs[0].fvu.is_finite() && result.epochs[0].fvu < 1.0);
}

#[test]
fn device_lost_during_training_names_the_last_checkpoint() {
    // A private device: destroying it must not disturb the other tests.
    let Ok(gpu) = dbksvd::Gpu::new() else {
        assert!(common::gpu().is_none());
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let source = InMemory::new(values(800, 16), 16).unwrap();
    let mut config = TrainConfig::new(32, 3);
    config.batch_size = Some(100);
    config.epochs = 2;
    config.checkpoint_every = Some(2);
    let started = std::time::Instant::now();
    let err = Trainer::new(&gpu, config)
        .checkpoint_to(dir.path())
        .on_batch(|p| {
            // After the checkpoint of batch 2 and one more batch, the GPU goes away.
            if p.done == 3 {
                gpu.destroy();
            }
            ControlFlow::Continue(())
        })
        .fit(&source)
        .unwrap_err();
    assert!(
        started.elapsed().as_secs() < 60,
        "hung for {:?}",
        started.elapsed()
    );
    match &err {
        Error::Training {
            cause,
            checkpoint_path,
            ..
        } => {
            assert!(matches!(**cause, Error::DeviceLost(_)), "{cause:?}");
            assert_eq!(
                checkpoint_path.as_deref(),
                Some(&*dir.path().join(CHECKPOINT_FILE))
            );
        }
        other => panic!("expected a training error, got {other:?}"),
    }
    names(
        &err.to_string(),
        &[
            "GPU device lost",
            CHECKPOINT_FILE,
            "epoch 0, batch 2",
            "--resume",
        ],
    );
    // The checkpoint named is complete and resumes on a working device.
    let checkpoint = dbksvd::train::Checkpoint::load(dir.path().join(CHECKPOINT_FILE)).unwrap();
    assert_eq!(checkpoint.position(), (0, 2, 2));
    let Some(working) = common::gpu() else { return };
    // No batch size given: the resumed run goes on with the checkpoint's 100.
    let mut config = TrainConfig::new(32, 3);
    config.epochs = 1;
    let resumed = Trainer::new(working, config)
        .resume_from(dir.path().join(CHECKPOINT_FILE))
        .fit(&source)
        .unwrap();
    assert_eq!(resumed.batches.len(), 8);
}

#[test]
fn device_lost_before_any_checkpoint_says_so() {
    let Ok(gpu) = dbksvd::Gpu::new() else {
        assert!(common::gpu().is_none());
        return;
    };
    let source = InMemory::new(values(400, 8), 8).unwrap();
    let mut config = TrainConfig::new(16, 2);
    config.batch_size = Some(100);
    let err = Trainer::new(&gpu, config)
        .on_batch(|_| {
            gpu.destroy();
            ControlFlow::Continue(())
        })
        .fit(&source)
        .unwrap_err();
    assert!(matches!(err.cause(), Error::DeviceLost(_)), "{err:?}");
    names(&err.to_string(), &["no checkpoint folder was set"]);
}

// ---- resuming ----

#[test]
fn resume_without_a_checkpoint_or_from_a_damaged_one_is_refused() {
    // The binary reads the checkpoint after opening the GPU.
    if common::gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = good_file(dir.path(), "acts.safetensors", 40, 6);
    let out = dir.path().join("run");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--data",
            data.to_str().unwrap(),
            "--atoms",
            "8",
            "--k",
            "2",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        cli_error(&args)
    };
    names(&train(&["--resume"]), &[CHECKPOINT_FILE, "No such file"]);
    std::fs::create_dir_all(&out).unwrap();
    let checkpoint = out.join(CHECKPOINT_FILE);
    std::fs::write(&checkpoint, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}").unwrap();
    names(
        &train(&["--resume"]),
        &[CHECKPOINT_FILE, "not a valid safetensors"],
    );
    let err = dbksvd::train::Checkpoint::load(&checkpoint).unwrap_err();
    assert!(matches!(err, Error::Format { .. }), "{err:?}");
    // A dictionary is not a checkpoint.
    let dict = tiny_dictionary(dir.path(), 6);
    std::fs::copy(&dict, &checkpoint).unwrap();
    names(
        &train(&["--resume"]),
        &[CHECKPOINT_FILE, "not a dbksvd checkpoint"],
    );
}
