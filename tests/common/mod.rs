//! Shared helpers for the GPU integration tests.
#![allow(dead_code)]

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
    GPU.get_or_init(|| match Gpu::new() {
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
            eprintln!("skipping GPU tests: {e}");
            None
        }
    })
    .as_ref()
}

/// `len` values uniform in [-1, 1) from a fixed seed.
pub fn uniform(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}
