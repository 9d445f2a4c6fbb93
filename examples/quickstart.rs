//! Load activations, train a dictionary, encode new rows: the library API in a screenful.
//!
//! `cargo run --release --example quickstart [FILE]` (default: the bundled MiniLM slice).

use dbksvd::data::{self, ActivationSource};
use dbksvd::encode::CodingOptions;
use dbksvd::gpu::Gpu;
use dbksvd::train::{evaluate, TrainConfig, Trainer};

fn main() -> dbksvd::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data/minilm_rustbook_L4_small.safetensors"
        )
        .into()
    });
    let gpu = Gpu::new()?;
    println!("adapter: {}", gpu.adapter().name);

    // Train on the first 90 % of the rows, score on the rest.
    let all = data::open(&[&path])?;
    let split = all.rows() * 9 / 10;
    let (train, test) = ((&all).slice(0..split)?, (&all).slice(split..all.rows())?);
    let mut config = TrainConfig::new(512, 16);
    config.epochs = 3;
    config.batch_size = Some(2048);
    let result = Trainer::new(&gpu, config).fit(&train)?;
    println!(
        "train FVU per epoch: {:?}",
        result.epochs.iter().map(|e| e.fvu).collect::<Vec<_>>()
    );

    // Encode held-out rows with the learned dictionary.
    let score = evaluate(
        &gpu,
        &result.dictionary,
        &test,
        CodingOptions::omp(16),
        2048,
    )?;
    println!(
        "held-out FVU {:.4} at L0 {:.1} on {} rows",
        score.fvu, score.l0, score.rows
    );
    let encoder = result.dictionary.encoder(&gpu, CodingOptions::omp(16))?;
    let mut row = vec![0.0; test.dim()];
    test.read_rows(0, &mut row)?;
    let codes = encoder.encode(&row)?;
    println!("first held-out row: {:?}", codes.row(0).collect::<Vec<_>>());
    Ok(())
}
