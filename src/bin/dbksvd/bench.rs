//! `dbksvd bench`: how fast this device runs dbksvd at a given size.

use dbksvd::bench::{Bench, BenchConfig, Format, Phase};
use dbksvd::gpu::{Gpu, GpuOptions};

use crate::args::{BenchArgs, PhaseArg};

pub(crate) fn run(args: &BenchArgs) -> dbksvd::Result<bool> {
    let config = BenchConfig {
        samples: args.samples,
        seed: args.seed,
        gram: args.gram.into(),
        atom_batch: args.atom_batch,
        repeats: args.repeat,
        phases: args
            .phases
            .iter()
            .map(|p| match p {
                PhaseArg::Products => Phase::Products,
                PhaseArg::Omp => Phase::Omp,
                PhaseArg::Mp => Phase::Mp,
                PhaseArg::Update => Phase::Update,
                PhaseArg::Step => Phase::Step,
            })
            .collect(),
        ..BenchConfig::new(args.dim, args.atoms, args.k, args.batch)
    };
    // Size errors come before the device is opened.
    config.validate()?;
    let options = GpuOptions {
        profile: args.profile,
        ..args.device.options()?
    };
    let gpu = Gpu::with_options(&options)?;
    if args.profile && !gpu.profiling() {
        eprintln!(
            "dbksvd bench: --profile: {} has no timestamp queries; no kernel times",
            gpu.adapter().name
        );
    }
    let format = if args.json {
        Format::Json
    } else {
        Format::Text
    };
    let bench = Bench::new(&gpu, config)?;
    println!("{}", bench.adapter_line(format));
    bench.run(|figure| println!("{}", bench.figure_line(figure, format)))?;
    Ok(true)
}
