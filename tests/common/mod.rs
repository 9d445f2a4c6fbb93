//! Shared helpers for the GPU integration tests.
#![allow(dead_code)]

pub mod files;

use std::sync::OnceLock;

use dbksvd::gpu::Gpu;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The test binary's one GPU context (creating a device per test would dominate CI time).
///
/// `None` (the test returns early) when no adapter exists, unless `DBKSVD_REQUIRE_GPU=1`, where
/// a missing adapter fails the test: CI sets it so a broken driver install cannot pass silently.
pub fn gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Option<Gpu>> = OnceLock::new();
    let gpu = GPU.get_or_init(|| match Gpu::new() {
        Ok(gpu) => {
            eprintln!(
                "GPU tests on {} ({}, {})",
                gpu.adapter().name,
                gpu.adapter().backend,
                gpu.adapter().device_type
            );
            Some(gpu)
        }
        Err(e) => {
            if std::env::var("DBKSVD_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("DBKSVD_REQUIRE_GPU=1 but no GPU could be opened: {e}");
            }
            eprintln!("no GPU adapter: {e}");
            None
        }
    });
    if gpu.is_none() {
        // The harness names each test's thread after the test: say which one did not run.
        let test = std::thread::current();
        eprintln!(
            "{}: SKIPPED (no GPU adapter)",
            test.name().unwrap_or("a GPU test")
        );
    }
    gpu.as_ref()
}

/// Asserts that every atom of `got` [K, d] agrees with the reference's (unit rows, so the dot
/// product is the cosine) to at least `min_cos`; returns the worst cosine.
pub fn assert_atoms_agree(got: &[f32], reference: &[f64], d: usize, min_cos: f64) -> f64 {
    assert_eq!(
        got.len(),
        reference.len(),
        "dictionaries of different sizes"
    );
    let mut worst = 1.0f64;
    for (j, (g, r)) in got.chunks(d).zip(reference.chunks(d)).enumerate() {
        let cos: f64 = g.iter().zip(r).map(|(&a, &b)| a as f64 * b).sum();
        assert!(cos >= min_cos, "atom {j}: cos {cos}");
        worst = worst.min(cos);
    }
    worst
}

/// `len` values uniform in [-1, 1) from a fixed seed.
pub fn uniform(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// The bundled slice of real activations (MiniLM layer 4, first 1536 rows of
/// `minilm_rustbook_L4_small`): (row-major data, rows, d).
pub fn minilm_slice() -> (Vec<f32>, usize, usize) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/minilm_L4_1536.safetensors"
    );
    let bytes = std::fs::read(path).expect("bundled test data");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let tensor = file.tensor("activations").expect("activations tensor");
    let (rows, d) = (tensor.shape()[0], tensor.shape()[1]);
    (bytemuck::pod_collect_to_vec(tensor.data()), rows, d)
}
