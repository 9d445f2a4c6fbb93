//! Matryoshka against plain: trains both on the same rows with the same budget and prints the
//! held-out FVU of every prefix of groups (for the plain dictionary: its first atoms, with the
//! prefix's nonzeros).
//!
//! `cargo run --release --example matryoshka -- FILE TRAIN_ROWS EVAL_ROWS K k SMALLEST EPOCHS`
//! e.g. `… ../shared/data/minilm_rustbook_L4.safetensors 0:28672 28672:32768 1536 32 64 3`
//! (defaults: the bundled MiniLM slice, rows 0:3584 and 3584:4096, K = 512, k = 16, groups
//! from 128, 4 epochs).

use std::time::Instant;

use dbksvd::data::{self, ActivationSource};
use dbksvd::encode::{CodingOptions, Groups};
use dbksvd::gpu::Gpu;
use dbksvd::train::{evaluate, evaluate_prefix, TrainConfig, Trainer};

fn range(spec: &str) -> std::ops::Range<usize> {
    let (a, b) = spec.split_once(':').expect("rows as A:B");
    a.parse().expect("A")..b.parse().expect("B")
}

fn main() -> dbksvd::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or(default.into());
    let bundled = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/minilm_rustbook_L4_small.safetensors"
    );
    let all = data::open(&[arg(0, bundled)])?;
    let train = (&all).slice(range(&arg(1, "0:3584")))?;
    let held_out = (&all).slice(range(&arg(2, "3584:4096")))?;
    let number = |i: usize, default: &str| arg(i, default).parse::<usize>().expect("a number");
    let (n_atoms, k, smallest, epochs) = (
        number(3, "512"),
        number(4, "16"),
        number(5, "128"),
        number(6, "4"),
    );
    let gpu = Gpu::new()?;
    let groups = Groups::doubling(smallest, n_atoms)?;
    let shares = groups.split_k(k)?;
    println!(
        "adapter: {}; {} training rows, {} held out; K = {n_atoms}, k = {k}, groups {:?} with \
         k {:?}, {epochs} epochs",
        gpu.adapter().name,
        train.rows(),
        held_out.rows(),
        groups.ends(),
        shares
    );
    let mut dictionaries = Vec::new();
    for grouped in [true, false] {
        let mut config = TrainConfig::new(n_atoms, k);
        config.epochs = epochs;
        config.groups = grouped.then(|| groups.clone());
        let started = Instant::now();
        let result = Trainer::new(&gpu, config).fit(&train)?;
        println!(
            "{}: {:.0} s, training FVU {:.4}",
            if grouped { "Matryoshka" } else { "plain" },
            started.elapsed().as_secs_f64(),
            result.epochs.last().map_or(f64::NAN, |e| e.fvu)
        );
        dictionaries.push(result.dictionary);
    }
    println!("| atoms | k | Matryoshka | plain |\n|---|---|---|---|");
    for prefix in 1..=groups.len() {
        let atoms = groups.ends()[prefix - 1];
        let k_prefix: usize = shares[..prefix].iter().sum();
        // Matryoshka: its first `prefix` groups, coded in order.
        let coding = CodingOptions::omp(k);
        let m = evaluate_prefix(&gpu, &dictionaries[0], &held_out, coding, 4096, prefix)?;
        // Plain: its first atoms, with as many nonzeros.
        let plain = &dictionaries[1];
        let first = plain.first_atoms(atoms)?;
        let p = evaluate(&gpu, &first, &held_out, CodingOptions::omp(k_prefix), 4096)?;
        println!("| {atoms} | {k_prefix} | {:.4} | {:.4} |", m.fvu, p.fvu);
    }
    Ok(())
}
