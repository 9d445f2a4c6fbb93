//! Activation sources: formats, shards, row ranges, malformed files, batch order, statistics.
//! No GPU needed.

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::files::{self, Tensor};
use dbksvd::data::{
    self, ActivationFile, ActivationSource, BatchOrder, Centred, Dtype, FileFormat, InMemory,
    Shards, Stats,
};
use dbksvd::Error;

/// 301 rows (a prime, not a multiple of any batch size used) of real MiniLM activations.
fn matrix() -> (Vec<f32>, usize, usize) {
    let (data, _, d) = common::minilm_slice();
    let rows = 301;
    (data[..rows * d].to_vec(), rows, d)
}

fn read_all(source: &dyn ActivationSource) -> Vec<f32> {
    let mut out = vec![0.0; source.rows() * source.dim()];
    source.read_rows(0, &mut out).expect("reading every row");
    out
}

/// Relative rounding bound of storing an f32 in `dtype`: half an ulp of its significand (11 bits
/// for F16, 8 for BF16), plus F16's subnormal spacing for values near zero.
fn assert_within_rounding(got: &[f32], want: &[f32], dtype: &str) {
    let (rel, abs) = match dtype {
        "F32" | "F64" => (0.0, 0.0),
        "F16" => (2f32.powi(-11), 2f32.powi(-25)),
        "BF16" => (2f32.powi(-8), 0.0),
        _ => unreachable!(),
    };
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rel * w.abs() + abs,
            "{dtype}: element {i}: {g} vs {w}"
        );
    }
    // And exactly the value the narrower type rounds to: the reader adds no error of its own.
    assert_eq!(
        got,
        files::rounded(want, dtype),
        "{dtype}: not the rounded values"
    );
}

#[test]
fn every_format_gives_the_same_rows() {
    let (m, rows, d) = matrix();
    let dir = tempfile::tempdir().unwrap();
    for dtype in ["F32", "F16", "BF16", "F64"] {
        // A 3-byte tensor first puts the activations at an unaligned offset.
        let bytes = files::safetensors_bytes(&[
            Tensor {
                name: "labels",
                dtype: "U8",
                shape: vec![3],
                data: vec![1, 2, 3],
            },
            Tensor {
                name: "activations",
                dtype,
                shape: vec![rows, d],
                data: files::encode(&m, dtype),
            },
        ]);
        let path = files::write(dir.path(), &format!("{dtype}.safetensors"), &bytes);
        let file = ActivationFile::open(&path).unwrap();
        assert_eq!((file.rows(), file.dim()), (rows, d));
        assert_eq!(file.format(), FileFormat::Safetensors);
        assert_eq!(file.tensor(), Some("activations"));
        assert_within_rounding(&read_all(&file), &m, dtype);
    }
    for (descr, dtype, expected) in [
        ("<f4", "F32", Dtype::F32),
        ("<f2", "F16", Dtype::F16),
        ("<f8", "F64", Dtype::F64),
    ] {
        let path = files::write(
            dir.path(),
            &format!("{dtype}.npy"),
            &files::activations_npy(&m, [rows, d], descr),
        );
        let file = ActivationFile::open(&path).unwrap();
        assert_eq!((file.rows(), file.dim(), file.dtype()), (rows, d, expected));
        assert_eq!(file.format(), FileFormat::Npy);
        assert_within_rounding(&read_all(&file), &m, dtype);
    }
}

#[test]
#[ignore = "needs ../shared/data beside the checkout"]
fn the_bundled_npy_and_safetensors_agree() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    let (npy, st) = (
        data.join("minilm_rustbook_L4_small.npy"),
        data.join("minilm_rustbook_L4_small.safetensors"),
    );
    let (npy, st) = (
        ActivationFile::open(npy).unwrap(),
        ActivationFile::open(st).unwrap(),
    );
    assert_eq!((npy.rows(), npy.dim()), (4096, 384));
    assert_eq!(read_all(&npy), read_all(&st));
}

/// Version 2 and 3 headers (4-byte header length) read like version 1.
#[test]
fn npy_versions_2_and_3_read() {
    let (m, rows, d) = matrix();
    let dir = tempfile::tempdir().unwrap();
    let v1 = files::activations_npy(&m, [rows, d], "<f4");
    let header_len = u16::from_le_bytes([v1[8], v1[9]]) as usize;
    for version in [2u8, 3] {
        let mut bytes = b"\x93NUMPY".to_vec();
        bytes.extend([version, 0]);
        bytes.extend((header_len as u32).to_le_bytes());
        bytes.extend(&v1[10..]);
        let path = files::write(dir.path(), &format!("v{version}.npy"), &bytes);
        let file = ActivationFile::open(&path).unwrap();
        assert_eq!(read_all(&file), m, "version {version}");
    }
}

#[test]
fn tensor_choice_falls_back_and_lists_names() {
    let dir = tempfile::tempdir().unwrap();
    let t = |name, shape: Vec<usize>, dtype| Tensor {
        name,
        dtype,
        data: vec![0; shape.iter().product::<usize>() * if dtype == "F32" { 4 } else { 1 }],
        shape,
    };
    // No `activations`: the only 2-D floating tensor is taken.
    let one = files::write(
        dir.path(),
        "one.safetensors",
        &files::safetensors_bytes(&[
            t("bias", vec![4], "F32"),
            t("hidden", vec![3, 4], "F32"),
            t("ids", vec![3, 4], "U8"),
        ]),
    );
    let file = ActivationFile::open(&one).unwrap();
    assert_eq!(
        (file.tensor(), file.rows(), file.dim()),
        (Some("hidden"), 3, 4)
    );

    // Two candidates: an error listing every tensor; naming one works.
    let two = files::write(
        dir.path(),
        "two.safetensors",
        &files::safetensors_bytes(&[t("a", vec![2, 4], "F32"), t("b", vec![5, 4], "F32")]),
    );
    let err = ActivationFile::open(&two).unwrap_err().to_string();
    assert!(
        err.contains("two.safetensors") && err.contains("`a`") && err.contains("`b`"),
        "{err}"
    );
    let b = ActivationFile::open_tensor(&two, "b").unwrap();
    assert_eq!((b.rows(), b.name().contains("tensor `b`")), (5, true));
    let err = ActivationFile::open_tensor(&two, "c")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no tensor `c`") && err.contains("`a`"),
        "{err}"
    );
}

/// The same rows from a 3-shard split (mixed formats, plus an empty shard) as from the whole.
#[test]
fn shards_read_as_one_dataset() {
    let (m, rows, d) = matrix();
    let dir = tempfile::tempdir().unwrap();
    let cut = [0, 100, 100, 217, rows];
    let part = |i: usize| &m[cut[i] * d..cut[i + 1] * d];
    let paths = [
        files::write(
            dir.path(),
            "a.npy",
            &files::activations_npy(part(0), [100, d], "<f4"),
        ),
        files::write(
            dir.path(),
            "b.npy",
            &files::activations_npy(part(1), [0, d], "<f4"),
        ),
        files::write(
            dir.path(),
            "c.safetensors",
            &files::activations_safetensors(part(2), [117, d], "F32"),
        ),
        files::write(
            dir.path(),
            "d.npy",
            &files::activations_npy(part(3), [84, d], "<f4"),
        ),
    ];
    let shards = Shards::open(&paths).unwrap();
    assert_eq!((shards.rows(), shards.dim()), (rows, d));
    assert_eq!(read_all(&shards), m);

    // Reads that straddle boundaries, and a gather that jumps between shards.
    let mut out = vec![0.0; 30 * d];
    shards.read_rows(90, &mut out).unwrap();
    assert_eq!(out, &m[90 * d..120 * d]);
    let picks = [300, 0, 99, 100, 216, 217, 5, 6, 7];
    let mut out = vec![0.0; picks.len() * d];
    shards.gather(&picks, &mut out).unwrap();
    for (i, &r) in picks.iter().enumerate() {
        assert_eq!(&out[i * d..(i + 1) * d], &m[r * d..(r + 1) * d], "row {r}");
    }

    // A directory is its files in name order.
    let dir_source = data::open(&[dir.path()]).unwrap();
    assert_eq!(read_all(&dir_source), m);

    // A shard of another width is named.
    let narrow = files::write(
        dir.path(),
        "narrow.npy",
        &files::activations_npy(&m[..6 * 7], [6, 7], "<f4"),
    );
    match Shards::open(&[&paths[0], &narrow]) {
        Err(Error::Format { file, message }) => {
            assert!(file.contains("narrow.npy"), "{file}");
            assert!(
                message.contains("7 columns") && message.contains("384"),
                "{message}"
            );
        }
        other => panic!("expected a format error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn row_ranges_select_rows() {
    let (m, rows, d) = matrix();
    let memory = InMemory::new(m.clone(), d).unwrap();
    let range = (&memory).slice(37..250).unwrap();
    assert_eq!((range.rows(), range.dim()), (213, d));
    assert_eq!(read_all(&range), &m[37 * d..250 * d]);
    // Batches over a range number rows from the range's start.
    let first = range
        .batches(&BatchOrder::sequential(50), 0)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(first.rows, (0..50).collect::<Vec<_>>());
    assert_eq!(first.data, &m[37 * d..87 * d]);

    assert!((&memory).slice(0..rows + 1).is_err());
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = (&memory).slice(10..5);
    assert!(reversed.is_err());
    let mut out = vec![0.0; 2 * d];
    let err = range.read_rows(212, &mut out).unwrap_err().to_string();
    assert!(
        err.contains("212..214") && err.contains("213 rows"),
        "{err}"
    );
    let mut ragged = vec![0.0; d + 1];
    assert!(matches!(
        range.read_rows(0, &mut ragged),
        Err(Error::DataLength { .. })
    ));
}

/// Opens `bytes` as a file named `name` and returns the error message (the test fails if it opens).
fn open_error(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = files::write(dir, name, bytes);
    match ActivationFile::open(&path) {
        Ok(file) => panic!("{name} opened as {file:?}"),
        Err(Error::Format { file, message }) => {
            assert!(file.contains(name), "error does not name the file: {file}");
            message
        }
        Err(other) => panic!("{name}: expected a format error, got {other}"),
    }
}

#[test]
fn malformed_safetensors_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = files::activations_safetensors(&[1.0; 6], [2, 3], "F32");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.safetensors", vec![], "truncated"),
        ("short.safetensors", vec![8, 0, 0], "truncated"),
        (
            "cut.safetensors",
            good[..good.len() - 5].to_vec(),
            "truncated",
        ),
        (
            "long.safetensors",
            [&good[..], &[0u8; 4]].concat(),
            "trailing",
        ),
        (
            "header-past-end.safetensors",
            [&5000u64.to_le_bytes()[..], &good[8..]].concat(),
            "runs past the end",
        ),
        (
            "size-mismatch.safetensors",
            files::safetensors_raw(
                r#"{"activations":{"dtype":"F32","shape":[2,3],"data_offsets":[0,4000]}}"#,
                &[0; 24],
            ),
            "does not match its shape",
        ),
        (
            "offsets-past-end.safetensors",
            files::safetensors_raw(
                r#"{"activations":{"dtype":"F32","shape":[1000,3],"data_offsets":[0,12000]}}"#,
                &[0; 24],
            ),
            "truncated",
        ),
        (
            "offsets-gap.safetensors",
            files::safetensors_raw(
                r#"{"activations":{"dtype":"F32","shape":[2,3],"data_offsets":[8,32]}}"#,
                &[0; 32],
            ),
            "not contiguous",
        ),
        (
            "not-json.safetensors",
            files::safetensors_raw("{activations: [2, 3]}", &[0; 24]),
            "not valid JSON",
        ),
        (
            "rank3.safetensors",
            files::safetensors_bytes(&[Tensor {
                name: "activations",
                dtype: "F32",
                shape: vec![1, 2, 3],
                data: vec![0; 24],
            }]),
            "must be 2-D",
        ),
        (
            "int.safetensors",
            files::safetensors_bytes(&[Tensor {
                name: "activations",
                dtype: "I32",
                shape: vec![2, 3],
                data: vec![0; 24],
            }]),
            "dtype I32",
        ),
        (
            "no-float.safetensors",
            files::safetensors_bytes(&[Tensor {
                name: "ids",
                dtype: "I64",
                shape: vec![2, 3],
                data: vec![0; 48],
            }]),
            "`ids`",
        ),
    ];
    for (name, bytes, expect) in cases {
        let message = open_error(dir.path(), name, &bytes);
        assert!(message.contains(expect), "{name}: {message}");
    }
    // A missing file is an I/O error naming it.
    let missing = dir.path().join("missing.safetensors");
    let err = ActivationFile::open(&missing).unwrap_err();
    assert!(matches!(err, Error::Io { .. }) && err.to_string().contains("missing.safetensors"));
}

#[test]
fn malformed_npy_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let dict = |descr: &str, fortran: &str, shape: &str| {
        format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}")
    };
    let good = files::activations_npy(&[1.0; 6], [2, 3], "<f4");
    let mut version9 = good.clone();
    version9[6] = 9;
    let mut header_past_end = good.clone();
    header_past_end[8..10].copy_from_slice(&4000u16.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("magic-only.npy", b"\x93NUMPY\x01\x00".to_vec(), "truncated"),
        ("cut.npy", good[..good.len() - 4].to_vec(), "truncated data"),
        (
            "long.npy",
            [&good[..], &[0u8; 4]].concat(),
            "trailing bytes",
        ),
        ("header-past-end.npy", header_past_end, "runs past the end"),
        ("version9.npy", version9, "version 9"),
        (
            "fortran.npy",
            files::npy_raw(&dict("<f4", "True", "(2, 3)"), &[0; 24]),
            "Fortran",
        ),
        (
            "int.npy",
            files::npy_raw(&dict("<i4", "False", "(2, 3)"), &[0; 24]),
            "'<i4' is not supported",
        ),
        (
            "big-endian.npy",
            files::npy_raw(&dict(">f4", "False", "(2, 3)"), &[0; 24]),
            "big-endian",
        ),
        (
            "rank3.npy",
            files::npy_raw(&dict("<f4", "False", "(1, 2, 3)"), &[0; 24]),
            "must be 2-D",
        ),
        (
            "rank1.npy",
            files::npy_raw(&dict("<f4", "False", "(6,)"), &[0; 24]),
            "must be 2-D",
        ),
        (
            "not-a-dict.npy",
            files::npy_raw("descr=<f4 shape=2,3", &[0; 24]),
            "malformed header",
        ),
    ];
    for (name, bytes, expect) in cases {
        let message = open_error(dir.path(), name, &bytes);
        assert!(message.contains(expect), "{name}: {message}");
    }
}

#[test]
fn non_finite_values_are_found_with_file_row_and_column() {
    let (mut m, rows, d) = matrix();
    let dir = tempfile::tempdir().unwrap();
    m[123 * d + 45] = f32::NAN;
    let st = files::write(
        dir.path(),
        "nan.safetensors",
        &files::activations_safetensors(&m, [rows, d], "BF16"),
    );
    m[123 * d + 45] = 0.5;
    m[200 * d + 7] = f32::INFINITY;
    let npy = files::write(
        dir.path(),
        "inf.npy",
        &files::activations_npy(&m, [rows, d], "<f2"),
    );
    let order = BatchOrder::shuffled(64, 3).with_window(2);
    for (path, row, col, nan) in [(&st, 123, 45, true), (&npy, 200, 7, false)] {
        let file = ActivationFile::open(path).unwrap();
        // Streaming stops at the bad batch with an error naming the file's row, whatever the order.
        let results: Vec<_> = file.batches(&order, 0).unwrap().collect();
        let err = results
            .iter()
            .find_map(|r| r.as_ref().err())
            .expect("an error");
        assert!(
            results.last().unwrap().is_err(),
            "iteration continued after the error"
        );
        match err {
            Error::NonFinite {
                what,
                row: r,
                col: c,
                value,
            } => {
                assert!(
                    what.contains(path.file_name().unwrap().to_str().unwrap()),
                    "{what}"
                );
                assert_eq!((*r, *c, value.is_nan()), (row, col, nan));
            }
            other => panic!("expected NonFinite, got {other}"),
        }
    }
    // Within shards and ranges the row is still the file's own.
    let clean = files::write(
        dir.path(),
        "clean.npy",
        &files::activations_npy(&m[..10 * d], [10, d], "<f4"),
    );
    let shards = Shards::open(&[&clean, &npy])
        .unwrap()
        .slice(5..311)
        .unwrap();
    let mut out = vec![0.0; 306 * d];
    match shards.read_rows(0, &mut out) {
        Err(Error::NonFinite { what, row, col, .. }) => {
            assert!(what.contains("inf.npy"), "{what}");
            assert_eq!((row, col), (200, 7));
        }
        other => panic!("expected NonFinite, got {other:?}"),
    }
    // Reading around the bad value is fine.
    let file = ActivationFile::open(&npy).unwrap();
    let mut out = vec![0.0; 200 * d];
    file.read_rows(0, &mut out).unwrap();
}

#[test]
fn shuffled_order_is_a_reproducible_permutation_that_changes_per_epoch() {
    let (rows, batch, window) = (1009, 37, 4);
    let order = BatchOrder::shuffled(batch, 11).with_window(window);
    let epoch = |o: &BatchOrder, e| o.epoch(rows, e).unwrap().collect::<Vec<Vec<usize>>>();
    let e0 = epoch(&order, 0);

    // A permutation in ceil(rows / batch) batches, at most one short; the size hint is exact
    // all the way through.
    assert_eq!(e0.len(), rows.div_ceil(batch));
    let mut it = order.epoch(rows, 0).unwrap();
    for left in (0..e0.len()).rev() {
        it.next().unwrap();
        assert_eq!(it.len(), left);
    }
    assert!(it.next().is_none());
    assert!(e0.iter().filter(|b| b.len() != batch).count() <= 1);
    let mut all: Vec<usize> = e0.concat();
    all.sort_unstable();
    assert_eq!(all, (0..rows).collect::<Vec<_>>());

    // Reproducible, different across epochs and seeds.
    assert_eq!(e0, epoch(&order, 0));
    assert_ne!(e0, epoch(&order, 1));
    assert_ne!(
        e0,
        epoch(&BatchOrder::shuffled(batch, 12).with_window(window), 0)
    );

    // Not sorted: a batch mixes rows from several blocks of the file, and blocks come in a new order.
    let blocks = |b: &Vec<usize>| b.iter().map(|r| r / batch).collect::<HashSet<_>>().len();
    assert!(e0.iter().all(|b| blocks(b) > 1));
    assert!(e0[0].windows(2).any(|w| w[1] != w[0] + 1));
    // With a window of one batch, each batch is one block (rows permuted within it).
    let single = epoch(&BatchOrder::shuffled(batch, 11).with_window(1), 0);
    assert!(single.iter().all(|b| blocks(b) == 1));

    // Sequential is file order.
    let seq = epoch(&BatchOrder::sequential(batch), 5);
    assert_eq!(seq.concat(), (0..rows).collect::<Vec<_>>());

    // Batches carry exactly the rows they name.
    let (m, n, d) = matrix();
    let memory = InMemory::new(m.clone(), d).unwrap();
    let mut seen = 0;
    for b in memory.batches(&BatchOrder::shuffled(40, 1), 2).unwrap() {
        let b = b.unwrap();
        for (i, &r) in b.rows.iter().enumerate() {
            assert_eq!(b.row(i), &m[r * d..(r + 1) * d]);
        }
        seen += b.len();
    }
    assert_eq!(seen, n);

    // Zero sizes are errors, not panics.
    assert!(BatchOrder::sequential(0).epoch(10, 0).is_err());
    assert!(BatchOrder::shuffled(4, 0)
        .with_window(0)
        .epoch(10, 0)
        .is_err());
    assert_eq!(BatchOrder::sequential(4).epoch(0, 0).unwrap().count(), 0);
}

#[test]
fn statistics_match_a_direct_computation() {
    let (m, rows, d) = matrix();
    let source = InMemory::new(m.as_slice(), d).unwrap();
    let stats = Stats::compute(&source, 64).unwrap();
    let mut mean = vec![0.0f64; d];
    let mut squares = 0.0f64;
    for row in m.chunks(d) {
        for (j, &v) in row.iter().enumerate() {
            mean[j] += v as f64 / rows as f64;
            squares += (v as f64).powi(2) / rows as f64;
        }
    }
    assert_eq!(stats.rows, rows);
    // Both sums are f64 over 301 rows: they agree to far better than 1e-9 relative.
    for (a, b) in stats.mean.iter().zip(&mean) {
        assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{a} vs {b}");
    }
    assert!((stats.mean_squared_norm - squares).abs() <= 1e-9 * squares);
    let variance: f64 = m
        .chunks(d)
        .map(|row| {
            row.iter()
                .zip(&mean)
                .map(|(&v, mu)| (v as f64 - mu).powi(2))
                .sum::<f64>()
        })
        .sum::<f64>()
        / rows as f64;
    assert!((stats.total_variance() - variance).abs() <= 1e-9 * variance);

    // The centred source has (f32-rounded) zero mean.
    let centred = Centred::new(&source, stats.mean_f32()).unwrap();
    let again = Stats::compute(&centred, 100).unwrap();
    let scale = stats.mean.iter().fold(0.0f64, |a, b| a.max(b.abs()));
    assert!(again.mean.iter().all(|m| m.abs() <= 1e-6 * scale.max(1.0)));
    assert!(Centred::new(&source, vec![0.0; d - 1]).is_err());
    let empty = InMemory::new(Vec::<f32>::new(), d).unwrap();
    assert!(Stats::compute(&empty, 10).is_err());
}
