//! Dictionaries and codes: wrong dimensions, zero or non-finite atoms, codes naming atoms beyond K.

use super::*;

/// A valid 8-atom dictionary of dimension `d` saved in `dir`.
pub(crate) fn tiny_dictionary(dir: &Path, d: usize) -> PathBuf {
    let path = dir.join(format!("dict-{d}.safetensors"));
    let mut atoms = values(8, d);
    atoms.iter_mut().for_each(|v| *v += 0.1);
    Dictionary::new(atoms, d).unwrap().save(&path).unwrap();
    path
}

pub(crate) fn encode_error(dict: &Path, data: &Path, extra: &[&str]) -> String {
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

#[test]
fn dictionary_built_in_memory_is_checked() {
    let err = Dictionary::new(vec![1.0; 7], 2).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    names(&err.to_string(), &["[7 values]", "[K, 2]"]);
    let err = Dictionary::new(vec![1.0, 0.0, 0.0, 0.0], 2).unwrap_err();
    names(&err.to_string(), &["atom 1", "zero"]);
    let err = Dictionary::new(vec![1.0, f32::NAN], 2).unwrap_err();
    assert!(
        matches!(err, Error::NonFinite { row: 0, col: 1, .. }),
        "{err}"
    );
    let dictionary = Dictionary::new(vec![1.0, 0.0, 0.0, 1.0], 2).unwrap();
    let err = dictionary.clone().with_mean(vec![0.0; 3]).unwrap_err();
    names(&err.to_string(), &["[3]", "[2, 2]"]);
    let err = dictionary.first_atoms(3).unwrap_err();
    names(&err.to_string(), &["first 3 atoms", "K = 2"]);
    assert_eq!(dictionary.first_atoms(1).unwrap().atoms(), [1.0, 0.0]);
}
