//! Device limits and faults: requests beyond the device name the limit and the largest batch that fits; a lost device names the last checkpoint.

use super::*;

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
