//! Activation files: each bad file refused by the library and the binary, naming the file (and tensor).

use super::*;

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
    let Err(err) = sources::open(&[&a, &b]) else {
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
