//! Activation streaming throughput: rows per second (and f32 GB/s delivered) of one epoch over a
//! memory-mapped file, per dtype and batch order, plus the statistics pass. CPU only.
//!
//! `cargo bench --bench data` reads `../shared/data/minilm_rustbook_L4.safetensors` (32 768 × 384
//! F32), else the bundled slice, and writes F16/BF16 safetensors and `<f4` .npy copies to a temporary
//! directory. The first pass warms the page cache; figures are the best of 3 passes.

#[path = "../tests/common/files.rs"]
#[allow(dead_code)]
mod files;

use std::time::Instant;

use dbksvd::data::{ActivationFile, ActivationSource, BatchOrder, Stats};

fn main() {
    let root = env!("CARGO_MANIFEST_DIR");
    let source = [
        format!("{root}/../shared/data/minilm_rustbook_L4.safetensors"),
        format!("{root}/tests/data/minilm_L4_1536.safetensors"),
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("no activation file found");
    let file = ActivationFile::open(&source).expect("source opens");
    let (rows, d) = (file.rows(), file.dim());
    let mut values = vec![0.0; rows * d];
    file.read_rows(0, &mut values).expect("source reads");
    println!(
        "data: {source} [{rows}, {d}]; CPU: {} threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let mut paths = vec![("F32 safetensors", std::path::PathBuf::from(&source))];
    for dtype in ["F16", "BF16"] {
        let bytes = files::activations_safetensors(&values, [rows, d], dtype);
        paths.push((
            if dtype == "F16" {
                "F16 safetensors"
            } else {
                "BF16 safetensors"
            },
            files::write(dir.path(), &format!("{dtype}.safetensors"), &bytes),
        ));
    }
    paths.push((
        "<f4 npy",
        files::write(
            dir.path(),
            "f4.npy",
            &files::activations_npy(&values, [rows, d], "<f4"),
        ),
    ));
    drop(values);

    let batch = 4096;
    println!(
        "{:<18} {:<22} {:>12} {:>10}",
        "file", "order", "rows/s", "GB/s f32"
    );
    for (label, path) in &paths {
        let file = ActivationFile::open(path).expect("opens");
        for (name, order) in [
            ("sequential", BatchOrder::sequential(batch)),
            ("shuffled (window 16)", BatchOrder::shuffled(batch, 1)),
        ] {
            let mut best = f64::INFINITY;
            for epoch in 0..3 {
                let start = Instant::now();
                let mut n = 0;
                for b in file.batches(&order, epoch).expect("order") {
                    n += b.expect("batch").len();
                }
                assert_eq!(n, rows);
                best = best.min(start.elapsed().as_secs_f64());
            }
            println!(
                "{label:<18} {name:<22} {:>12.3e} {:>10.2}",
                rows as f64 / best,
                (rows * d * 4) as f64 / best / 1e9
            );
        }
        let start = Instant::now();
        Stats::compute(&file, batch).expect("stats");
        let t = start.elapsed().as_secs_f64();
        println!(
            "{label:<18} {:<22} {:>12.3e} {:>10.2}",
            "statistics pass",
            rows as f64 / t,
            (rows * d * 4) as f64 / t / 1e9
        );
    }
}
