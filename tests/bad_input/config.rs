//! Configuration: every bad setting refused by `TrainConfig::validate` and by `dbksvd train` alike.

use super::*;

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
