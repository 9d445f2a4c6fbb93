//! Resuming: a missing, damaged or mismatched checkpoint is refused.

use super::*;

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
