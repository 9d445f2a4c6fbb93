//! `dbksvd bench`: how fast this device runs dbksvd at a given size.
//!
//! Synthetic data stands in for activations, so the figures need no files and a copied binary
//! measures any machine: unit-norm Gaussian atoms D [K, d] and a batch Y [B, d] of sparse
//! combinations of k random atoms with Gaussian coefficients plus a little noise, so the coders
//! find supports as they do on real data. Every phase runs once untimed on a few samples first,
//! so pipeline compilation stays out of the figures. Then full-size runs, each ending in a GPU
//! wait, are timed: one that takes [`MIN_SECONDS`] or more is the figure (a slow device is not
//! kept waiting twice); a faster first run is left out as a warm-up of its buffers, and runs
//! are then timed until [`MIN_SECONDS`] have passed or [`MAX_RUNS`] ran; figures are means.
//! With [`BenchConfig::repeats`] R > 1 that measurement is made R times and the figure is the
//! median one, followed by a [`Figure::Spread`] (min, median, max): on a shared machine whose
//! speed moves within minutes one measurement decides nothing.
//! On a profiling context ([`Gpu::profiling`]) each timed figure is followed by one
//! [`Figure::Kernel`] per kernel it ran, from the same runs.
//!
//! ```no_run
//! use dbksvd::bench::{Bench, BenchConfig, Format};
//! use dbksvd::gpu::Gpu;
//! # fn main() -> dbksvd::Result<()> {
//! let gpu = Gpu::new()?;
//! let bench = Bench::new(&gpu, BenchConfig::new(384, 1536, 32, 4096))?;
//! println!("{}", bench.adapter_line(Format::Text));
//! bench.run(|figure| println!("{}", bench.figure_line(figure, Format::Text)))?;
//! # Ok(()) }
//! ```

use std::time::Instant;

use crate::encode::{
    CodingOptions, EncodeOptions, Encoder, EncoderOptions, GramPrecision, SparseCodes,
};
use crate::error::Result;
use crate::gpu::step::{StepBuffers, StepInput};
use crate::gpu::{GemmParams, Gpu, Matrix, UpdateOptions};
use crate::train::TrainConfig;

mod config;
mod figure;
mod synthetic;

pub use config::{BenchConfig, Format, Phase};
pub use figure::Figure;
pub use synthetic::{synthetic, SyntheticData};

/// Timed runs of a phase stop once they have taken this long in all (at least one run), so
/// millisecond phases on fast GPUs are averaged over several runs.
pub const MIN_SECONDS: f64 = 0.5;

/// Timed runs of a phase at most.
pub const MAX_RUNS: usize = 20;

/// A benchmark of one size on one device.
pub struct Bench<'a> {
    gpu: &'a Gpu,
    config: BenchConfig,
}

/// A kernel's entry point, dispatches and seconds per timed run.
type PerRun = (&'static str, f64, f64);

/// A timed figure and what follows it.
struct Measured {
    figure: Figure,
    timed: Timed,
}

/// What follows a timed figure: the seconds per run of each repeat and, on a profiling context,
/// the kernel times of the figure's runs.
#[derive(Default)]
struct Timed {
    repeats: Vec<f64>,
    kernels: Vec<PerRun>,
}

/// What [`timed`] measured: the figure's seconds per run and its runs' values (the median
/// repeat's), that repeat's kernel times, and the seconds per run of every repeat, in the order
/// measured.
struct Timing<T> {
    seconds: f64,
    values: Vec<T>,
    kernels: Vec<PerRun>,
    repeats: Vec<f64>,
}

/// Samples (and atoms, for the Gram) of a phase's warm-up run: enough to build every pipeline
/// the phase uses, which depend on d, K and k rather than on the batch, at a small fraction of
/// a full run's cost on a slow device.
const WARM_UP_ROWS: usize = 64;

/// Seconds per full-size run of `run`, measured `repeats` times (at least once).
///
/// `warm_up` (the phase on [`WARM_UP_ROWS`] samples) runs first, untimed, so pipeline
/// compilation stays out. Each repeat is then one measurement: a first full run shorter than
/// [`MIN_SECONDS`] is left out (on a fast device the first use of its buffers would show), and
/// runs are then timed until [`MIN_SECONDS`] or [`MAX_RUNS`]; a longer one is the measurement,
/// since a second run would double a slow device's wait for a change first-use costs barely
/// make. Each run must end in a GPU wait (a readback or [`Gpu::wait`]). The figure is the
/// median repeat (the lower middle one of an even count: a measurement that happened).
///
/// On a profiling context ([`Gpu::profiling`]) the median repeat's kernel times, per run, come
/// with it (empty elsewhere).
fn timed<T>(
    gpu: &Gpu,
    repeats: usize,
    warm_up: impl FnOnce() -> Result<()>,
    mut run: impl FnMut() -> Result<T>,
) -> Result<Timing<T>> {
    warm_up()?;
    let repeats = repeats.max(1);
    let mut measured = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        measured.push(measure(gpu, &mut run)?);
    }
    let seconds: Vec<f64> = measured.iter().map(|m| m.0).collect();
    let mut order: Vec<usize> = (0..measured.len()).collect();
    order.sort_by(|&a, &b| seconds[a].total_cmp(&seconds[b]));
    let (seconds_per_run, values, kernels) = measured.swap_remove(order[(order.len() - 1) / 2]);
    Ok(Timing {
        seconds: seconds_per_run,
        values,
        kernels,
        repeats: seconds,
    })
}

/// One measurement of [`timed`]: seconds per run, the values of the runs timed (at least one)
/// and their kernel times per run.
fn measure<T>(gpu: &Gpu, mut run: impl FnMut() -> Result<T>) -> Result<(f64, Vec<T>, Vec<PerRun>)> {
    gpu.reset_kernel_times()?;
    let started = Instant::now();
    let first = run()?;
    let seconds = started.elapsed().as_secs_f64();
    let (seconds, values) = if seconds >= MIN_SECONDS {
        (seconds, vec![first])
    } else {
        gpu.reset_kernel_times()?;
        let started = Instant::now();
        let mut values = Vec::new();
        while values.is_empty()
            || (values.len() < MAX_RUNS && started.elapsed().as_secs_f64() < MIN_SECONDS)
        {
            values.push(run()?);
        }
        (
            started.elapsed().as_secs_f64() / values.len() as f64,
            values,
        )
    };
    let per_run = 1.0 / values.len() as f64;
    let kernels = gpu
        .kernel_times()?
        .into_iter()
        .map(|t| (t.kernel, t.dispatches as f64 * per_run, t.seconds * per_run))
        .collect();
    Ok((seconds, values, kernels))
}

impl<T> From<Timing<T>> for Timed {
    fn from(t: Timing<T>) -> Self {
        Self {
            repeats: t.repeats,
            kernels: t.kernels,
        }
    }
}

impl<'a> Bench<'a> {
    /// Checks `config` and that the device holds its batch for the phases that code or update
    /// (an [`Error::ExceedsLimit`](crate::Error::ExceedsLimit) naming the largest batch that fits when it does not).
    pub fn new(gpu: &'a Gpu, config: BenchConfig) -> Result<Self> {
        config.validate()?;
        let (n_atoms, d, k, n) = (config.atoms, config.dim, config.k, config.batch);
        let mut codings = Vec::new();
        if [Phase::Omp, Phase::Update, Phase::Step]
            .into_iter()
            .any(|p| config.runs(p))
        {
            codings.push(CodingOptions::omp(k).with_gram(config.gram));
        }
        if config.runs(Phase::Mp) {
            codings.push(mp(k).with_gram(config.gram));
        }
        for coding in codings {
            let fit = gpu.train_batch_fit(n_atoms, d, &coding)?;
            if n > fit.largest {
                return Err(fit.exceeded(n, n, n, (n_atoms, d, k)));
            }
        }
        Ok(Self { gpu, config })
    }

    /// The configuration.
    pub fn config(&self) -> &BenchConfig {
        &self.config
    }

    /// The first line: adapter, backend, device type, driver and the sizes.
    pub fn adapter_line(&self, format: Format) -> String {
        let a = self.gpu.adapter();
        let c = &self.config;
        match format {
            Format::Text => format!(
                "adapter: {} ({}, {}; driver {}); d = {}, K = {}, k = {}, B = {}, G {}",
                a.name,
                a.backend,
                a.device_type,
                a.driver,
                c.dim,
                c.atoms,
                c.k,
                c.batch,
                gram_name(c.gram)
            ),
            Format::Json => serde_json::json!({
                "phase": "adapter",
                "adapter": a.name,
                "backend": a.backend,
                "device_type": a.device_type,
                "driver": a.driver,
                "dim": c.dim,
                "atoms": c.atoms,
                "k": c.k,
                "batch": c.batch,
                "seed": c.seed,
                "gram": gram_name(c.gram),
            })
            .to_string(),
        }
    }

    /// The line of `figure`: its [`Display`](std::fmt::Display) text, or its JSON object with the
    /// sizes (`dim`, `atoms`, `k`, `batch`) and the `adapter` name added.
    pub fn figure_line(&self, figure: &Figure, format: Format) -> String {
        match format {
            Format::Text => figure.to_string(),
            Format::Json => {
                let mut value = serde_json::to_value(figure).unwrap_or_default();
                if let Some(object) = value.as_object_mut() {
                    let c = &self.config;
                    object.insert("dim".into(), c.dim.into());
                    object.insert("atoms".into(), c.atoms.into());
                    object.insert("k".into(), c.k.into());
                    object.insert("batch".into(), c.batch.into());
                    object.insert("gram".into(), gram_name(c.gram).into());
                    object.insert("adapter".into(), self.gpu.adapter().name.clone().into());
                }
                value.to_string()
            }
        }
    }

    /// Generates the data and runs the phases, handing each figure to `each` as soon as it is
    /// measured (a slow device shows progress); returns them all. After the phases come the
    /// peak device memory and, when the step ran, the epoch projection.
    pub fn run(&self, mut each: impl FnMut(&Figure)) -> Result<Vec<Figure>> {
        let gpu = self.gpu;
        let c = &self.config;
        let data = synthetic(c)?;
        let mut figures = Vec::new();
        // A timed figure is followed by its spread over repeats, if repeated, and its kernel
        // times where the context profiles.
        let mut emit = |figure: Figure, m: Timed, figures: &mut Vec<Figure>| {
            let Timed { repeats, kernels } = m;
            each(&figure);
            let of = figure.timed();
            figures.push(figure);
            // The figure is the median measurement ([`timed`] picks it).
            if let Some((of, median_s)) = of.filter(|_| repeats.len() > 1) {
                let fastest = repeats.iter().copied().fold(f64::INFINITY, f64::min);
                let slowest = repeats.iter().copied().fold(0.0, f64::max);
                let figure = Figure::Spread {
                    of,
                    repeats: repeats.len(),
                    min_s: fastest,
                    median_s,
                    max_s: slowest,
                };
                each(&figure);
                figures.push(figure);
            }
            if let Some((of, seconds)) = of {
                for (kernel, dispatches, kernel_s) in kernels {
                    let figure = Figure::Kernel {
                        of,
                        kernel,
                        dispatches,
                        seconds: kernel_s,
                        share: kernel_s / seconds.max(1e-12),
                    };
                    each(&figure);
                    figures.push(figure);
                }
            }
        };
        // The phases hold their buffers only while they run, so each peak is its own.
        let mut peak = (0u64, "");
        let mut phase_peak = |phase: &'static str| {
            let bytes = gpu.memory_peak();
            if bytes > peak.0 {
                peak = (bytes, phase);
            }
            bytes
        };
        let mut omp_codes = None;
        let mut step_s = None;
        for phase in Phase::ALL.into_iter().filter(|&p| c.runs(p)) {
            gpu.reset_memory_peak();
            match phase {
                Phase::Products => {
                    for m in self.products(&data)? {
                        let figure = with_peak(m.figure, phase_peak("products"));
                        emit(figure, m.timed, &mut figures);
                    }
                }
                Phase::Omp | Phase::Mp => {
                    let (m, codes) = self.coding(gpu, &data, phase)?;
                    if phase == Phase::Omp {
                        omp_codes = Some(codes);
                    }
                    let figure = with_peak(m.figure, phase_peak(phase.name()));
                    emit(figure, m.timed, &mut figures);
                    // Where MP runs resident (Batch-OMP fused), its sweeps too: the evidence
                    // for the choice on this adapter (MP's by the kernel times: without
                    // subgroups the products change kernel as well).
                    let sweeps = match phase {
                        Phase::Mp
                            if crate::gpu::omp::runs_resident(gpu, &mp(c.k), c.atoms, c.dim) =>
                        {
                            Some((gpu.planning_without_subgroups(), "mp-sweeps"))
                        }
                        Phase::Omp
                            if crate::gpu::omp::runs_fused(gpu, &omp(c.k), c.atoms, c.dim) =>
                        {
                            Some((gpu.planning_with_swept_batch_omp(), "omp-sweeps"))
                        }
                        _ => None,
                    };
                    if let Some((sweeps, name)) = sweeps {
                        gpu.reset_memory_peak();
                        let (mut m, _) = self.coding(&sweeps, &data, phase)?;
                        if let Figure::Coding { coder, .. } = &mut m.figure {
                            *coder = name;
                        }
                        let figure = with_peak(m.figure, phase_peak(phase.name()));
                        emit(figure, m.timed, &mut figures);
                    }
                }
                Phase::Update => {
                    let m = self.update(&data, omp_codes.take())?;
                    emit(
                        with_peak(m.figure, phase_peak("update")),
                        m.timed,
                        &mut figures,
                    );
                }
                Phase::Step => {
                    let m = self.step(&data)?;
                    if let Figure::Step { seconds, .. } = m.figure {
                        step_s = Some(seconds);
                    }
                    emit(
                        with_peak(m.figure, phase_peak("step")),
                        m.timed,
                        &mut figures,
                    );
                }
            }
        }
        emit(
            Figure::Memory {
                peak_bytes: peak.0,
                during: peak.1,
            },
            Timed::default(),
            &mut figures,
        );
        if let Some(seconds) = step_s {
            let steps = c.samples as f64 / c.batch as f64;
            emit(
                Figure::Projection {
                    samples: c.samples,
                    steps,
                    seconds: seconds * steps,
                },
                Timed::default(),
                &mut figures,
            );
        }
        Ok(figures)
    }

    /// The Gram matrix and the correlations, timed apart.
    fn products(&self, data: &SyntheticData) -> Result<Vec<Measured>> {
        let gpu = self.gpu;
        let c = &self.config;
        let atoms = gpu.matrix(c.atoms, c.dim, &data.atoms)?;
        let samples = gpu.matrix(c.batch, c.dim, &data.samples)?;
        // A Gram matrix and a product of two matrices: their kernels may differ (llvmpipe).
        let warm_up = || {
            let rows = WARM_UP_ROWS.min(c.atoms).min(c.batch);
            let few = gpu.matrix(rows, c.dim, &data.atoms[..rows * c.dim])?;
            let few_samples = gpu.matrix(rows, c.dim, &data.samples[..rows * c.dim])?;
            let mut out = gpu.zeros(rows, rows)?;
            gpu.gemm(&GemmParams::abt(), &few, &few, &mut out)?;
            gpu.gemm(&GemmParams::abt(), &few_samples, &few, &mut out)?;
            gpu.wait()
        };
        let mut out = Vec::new();
        for (product, a, mut result) in [
            ("gram", &atoms, gpu.zeros(c.atoms, c.atoms)?),
            ("correlations", &samples, gpu.zeros(c.batch, c.atoms)?),
        ] {
            let t = timed(gpu, c.repeats, warm_up, || {
                gpu.gemm(&GemmParams::abt(), a, &atoms, &mut result)?;
                gpu.wait()
            })?;
            let seconds = t.seconds;
            let (m, n, inner) = (a.rows(), atoms.rows(), c.dim);
            let figure = Figure::Products {
                product,
                m,
                n,
                inner,
                seconds,
                gflop_per_s: 2.0 * m as f64 * n as f64 * inner as f64 / seconds / 1e9,
                runs: t.values.len(),
                peak_bytes: 0,
            };
            out.push(Measured {
                figure,
                timed: t.into(),
            });
        }
        Ok(out)
    }

    /// Coding the batch with OMP or MP on `gpu` (the bench's device, or a planning view of it);
    /// also returns the codes (the update's input).
    fn coding(
        &self,
        gpu: &Gpu,
        data: &SyntheticData,
        phase: Phase,
    ) -> Result<(Measured, SparseCodes)> {
        let c = &self.config;
        let (coding, coder) = match phase {
            Phase::Mp => (mp(c.k), "mp"),
            _ => (omp(c.k), "omp"),
        };
        let coding = coding.with_gram(c.gram);
        let encoder = self.encoder(gpu, data, coding)?;
        let warm_up = || {
            let rows = WARM_UP_ROWS.min(c.batch);
            encoder.encode(&data.samples[..rows * c.dim]).map(drop)
        };
        let mut t = timed(gpu, c.repeats, warm_up, || encoder.encode(&data.samples))?;
        let (seconds, runs_timed) = (t.seconds, t.values.len());
        let codes = t
            .values
            .pop()
            .unwrap_or_else(|| unreachable!("timed runs at least once"));
        let profiled = EncodeOptions::default().with_profile(true);
        let profile = encoder.encode_with(&data.samples, profiled)?.profile;
        let figure = Figure::Coding {
            coder,
            samples: c.batch,
            seconds,
            samples_per_s: c.batch as f64 / seconds,
            kernel_s: profile.coding_s,
            correlations_s: profile.correlations_s,
            mean_l0: codes.mean_l0(),
            runs: runs_timed,
            peak_bytes: 0,
        };
        Ok((
            Measured {
                figure,
                timed: t.into(),
            },
            codes,
        ))
    }

    /// An encoder that codes the whole batch in one GPU batch, as a training step does.
    fn encoder(&self, gpu: &Gpu, data: &SyntheticData, coding: CodingOptions) -> Result<Encoder> {
        let c = &self.config;
        let mut options = EncoderOptions::new(coding);
        options.batch_size = Some(c.batch);
        Encoder::new(gpu, &data.atoms, c.atoms, c.dim, options)
    }

    /// One dictionary update of the batch coded by OMP (`codes`, or coded here untimed).
    fn update(&self, data: &SyntheticData, codes: Option<SparseCodes>) -> Result<Measured> {
        let gpu = self.gpu;
        let c = &self.config;
        let codes = match codes {
            Some(codes) => codes,
            None => self
                .encoder(self.gpu, data, CodingOptions::omp(c.k).with_gram(c.gram))?
                .encode(&data.samples)?,
        };
        let options = self.update_options();
        let warm_up = || {
            let (rows, k) = (WARM_UP_ROWS.min(c.batch), codes.k);
            let few = SparseCodes {
                n: rows,
                k,
                indices: codes.indices[..rows * k].to_vec(),
                values: codes.values[..rows * k].to_vec(),
                residual_energy: codes.residual_energy[..rows].to_vec(),
            };
            let mut atoms = gpu.matrix(c.atoms, c.dim, &data.atoms)?;
            let mut batch = gpu.coded_batch(&data.samples[..rows * c.dim], c.dim, &few, c.atoms)?;
            gpu.ksvd_update(&mut atoms, &mut batch, &options).map(drop)
        };
        // Before the full batch exists, so that the phase's peak is the full update's own.
        warm_up()?;
        let mut atoms = gpu.matrix(c.atoms, c.dim, &data.atoms)?;
        let mut batch = gpu.coded_batch(&data.samples, c.dim, &codes, c.atoms)?;
        // Every run is a genuine update: the next one of the same batch.
        let t = timed(
            gpu,
            c.repeats,
            || Ok(()),
            || gpu.ksvd_update(&mut atoms, &mut batch, &options).map(drop),
        )?;
        let figure = Figure::Update {
            atom_batch: options.atom_batch,
            power_iterations: options.power_iterations,
            seconds: t.seconds,
            runs: t.values.len(),
            peak_bytes: 0,
        };
        Ok(Measured {
            figure,
            timed: t.into(),
        })
    }

    /// The trainer's update settings (atom batch, power iterations), without atom memory;
    /// `--atom-batch` in place of the trainer's.
    fn update_options(&self) -> UpdateOptions {
        let train = TrainConfig::new(self.config.atoms, self.config.k);
        UpdateOptions {
            atom_batch: self.config.atom_batch.unwrap_or(train.atom_batch),
            power_iterations: train.power_iterations,
            seed: self.config.seed,
            memory: 0.0,
        }
    }

    /// One training step with the trainer's defaults (MP with refit, atom memory γ).
    fn step(&self, data: &SyntheticData) -> Result<Measured> {
        let gpu = self.gpu;
        let c = &self.config;
        let train = TrainConfig::new(c.atoms, c.k);
        let update = UpdateOptions {
            memory: train.atom_memory,
            ..self.update_options()
        };
        let coding = train.coding().with_gram(c.gram);
        let (d, n_atoms) = (c.dim, c.atoms);
        let mut atoms = gpu.matrix(n_atoms, d, &data.atoms)?;
        let memory = gpu.zeros(n_atoms, d)?;
        let mut gram = gpu.zeros(n_atoms, n_atoms)?;
        let mut step = |atoms: &mut Matrix, buffers: &mut StepBuffers, rows: usize| {
            gpu.train_step(
                atoms,
                &memory,
                &mut gram,
                buffers,
                StepInput::Host {
                    samples: &data.samples[..rows * d],
                    norms: &data.norms[..rows],
                },
                &coding,
                &update,
                false,
            )
        };
        // The warm-up moves the atoms a little, as a step on a few samples would: the timed
        // steps do the same work from there. Its buffers go before the full batch's are made,
        // so that the phase's peak is the full step's own.
        let rows = WARM_UP_ROWS.min(c.batch);
        let mut few = gpu.step_buffers(rows, d, c.k, n_atoms)?;
        step(&mut atoms, &mut few, rows)?;
        drop(few);
        let mut buffers = gpu.step_buffers(c.batch, d, c.k, n_atoms)?;
        let t = timed(
            gpu,
            c.repeats,
            || Ok(()),
            || step(&mut atoms, &mut buffers, c.batch).map(|out| (out.coding_s, out.update_s)),
        )?;
        let (seconds, runs) = (t.seconds, &t.values);
        let share = 1.0 / runs.len() as f64;
        let figure = Figure::Step {
            seconds,
            coding_s: runs.iter().map(|r| r.0).sum::<f64>() * share,
            update_s: runs.iter().map(|r| r.1).sum::<f64>() * share,
            samples_per_s: c.batch as f64 / seconds,
            runs: runs.len(),
            peak_bytes: 0,
        };
        Ok(Measured {
            figure,
            timed: t.into(),
        })
    }
}

/// How the first line and the JSON figures name the Gram storage.
fn gram_name(gram: GramPrecision) -> &'static str {
    match gram {
        GramPrecision::F32 => "f32",
        GramPrecision::F16 => "f16",
    }
}

/// Matching pursuit as the trainer's `--coder mp` runs it (refitted).
fn mp(k: usize) -> CodingOptions {
    CodingOptions::mp(k, true)
}

/// Batch-OMP (exactly k atoms unless a stopping rule ends a sample early).
fn omp(k: usize) -> CodingOptions {
    CodingOptions::omp(k)
}

/// `figure` with its phase's peak device memory.
fn with_peak(mut figure: Figure, bytes: u64) -> Figure {
    match &mut figure {
        Figure::Products { peak_bytes, .. }
        | Figure::Coding { peak_bytes, .. }
        | Figure::Update { peak_bytes, .. }
        | Figure::Step { peak_bytes, .. }
        | Figure::Memory { peak_bytes, .. } => *peak_bytes = bytes,
        Figure::Kernel { .. } | Figure::Spread { .. } | Figure::Projection { .. } => {}
    }
    figure
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_data_is_deterministic_unit_and_sparse() {
        let config = BenchConfig {
            seed: 3,
            ..BenchConfig::new(16, 40, 3, 200)
        };
        let a = synthetic(&config).unwrap();
        assert_eq!(a, synthetic(&config).unwrap());
        assert_ne!(
            a.samples,
            synthetic(&BenchConfig {
                seed: 4,
                ..config.clone()
            })
            .unwrap()
            .samples
        );
        for atom in a.atoms.chunks(16) {
            let norm: f32 = atom.iter().map(|v| v * v).sum();
            assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        }
        // E‖y‖² ≈ k·1.01 (unit atoms, unit Gaussian coefficients, 1 % noise).
        let mean = a.norms.iter().map(|&v| v as f64).sum::<f64>() / 200.0;
        assert!((2.0..4.2).contains(&mean), "{mean}");
    }
}
