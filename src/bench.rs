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

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::encode::{
    CodingOptions, EncodeOptions, Encoder, EncoderOptions, GramPrecision, SparseCodes,
};
use crate::error::{Error, Result};
use crate::gpu::step::StepBuffers;
use crate::gpu::{GemmParams, Gpu, Matrix, UpdateOptions};
use crate::train::TrainConfig;

/// Timed runs of a phase stop once they have taken this long in all (at least one run), so
/// millisecond phases on fast GPUs are averaged over several runs.
pub const MIN_SECONDS: f64 = 0.5;

/// Timed runs of a phase at most.
pub const MAX_RUNS: usize = 20;

/// A part of the benchmark that `--phases` can select.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// The Gram matrix D·Dᵀ and the correlations Y·Dᵀ: GFLOP/s.
    Products,
    /// Batch-OMP coding of the batch: samples/s.
    Omp,
    /// Matching-pursuit coding (with refit) of the batch: samples/s.
    Mp,
    /// One KSVD dictionary update on the coded batch: seconds.
    Update,
    /// One whole training step (coding and update): seconds, and the projected epoch.
    Step,
}

impl Phase {
    /// Every phase, in the order they run.
    pub const ALL: [Phase; 5] = [
        Phase::Products,
        Phase::Omp,
        Phase::Mp,
        Phase::Update,
        Phase::Step,
    ];

    /// The name `--phases` takes.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Products => "products",
            Phase::Omp => "omp",
            Phase::Mp => "mp",
            Phase::Update => "update",
            Phase::Step => "step",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Phase {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Phase::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown benchmark phase {s:?}; expected one of products, omp, mp, update, step"
                ))
            })
    }
}

/// Sizes and choices of one benchmark run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchConfig {
    /// Sample dimension d.
    pub dim: usize,
    /// Atoms K.
    pub atoms: usize,
    /// Most nonzeros per sample k.
    pub k: usize,
    /// Samples per batch B.
    pub batch: usize,
    /// Samples N of the epoch the step time is projected to.
    pub samples: u64,
    /// Seed of the synthetic data and of the update's atom order.
    pub seed: u64,
    /// Phases to run (each once, in [`Phase::ALL`] order whatever the order here); empty runs
    /// them all.
    pub phases: Vec<Phase>,
    /// How the coders store the Gram matrix.
    pub gram: GramPrecision,
}

impl BenchConfig {
    /// d, K, k and B, projected to an epoch of 2²¹ samples, seed 0, every phase.
    pub fn new(dim: usize, atoms: usize, k: usize, batch: usize) -> Self {
        Self {
            dim,
            atoms,
            k,
            batch,
            samples: 1 << 21,
            seed: 0,
            phases: Vec::new(),
            gram: GramPrecision::F32,
        }
    }

    /// Checks the sizes on their own (what the device holds is checked by [`Bench::new`]).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidArgument(what));
        for (name, value) in [
            ("dimension d", self.dim as u64),
            ("atoms K", self.atoms as u64),
            ("batch B", self.batch as u64),
            ("epoch samples N", self.samples),
        ] {
            if value == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        // k distinct atoms per sample, and OMP selects at most d independent ones.
        if self.k == 0 || self.k > self.atoms.min(self.dim) {
            return bad(format!(
                "k = {} must lie in 1..=min(K, d) = {}",
                self.k,
                self.atoms.min(self.dim)
            ));
        }
        Ok(())
    }

    /// Whether `phase` runs.
    pub fn runs(&self, phase: Phase) -> bool {
        self.phases.is_empty() || self.phases.contains(&phase)
    }
}

impl Default for BenchConfig {
    /// MiniLM's size: d = 384, K = 1536, k = 32, B = 4096.
    fn default() -> Self {
        Self::new(384, 1536, 32, 4096)
    }
}

/// The synthetic problem a benchmark runs on.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticData {
    /// Unit-norm Gaussian atoms D [K, d], row-major.
    pub atoms: Vec<f32>,
    /// Samples Y [B, d]: k distinct random atoms with standard Gaussian coefficients each, plus
    /// Gaussian noise of 1 % of the signal's energy.
    pub samples: Vec<f32>,
    /// ‖y‖² per sample, as a training step takes them.
    pub norms: Vec<f32>,
}

/// Rows drawn from one random stream: blocks, not threads, fix the numbers, so any thread
/// count gives the same data.
const BLOCK_ROWS: usize = 64;

/// Fills `out` with standard Gaussians (Box–Muller, both values of each pair used).
fn gaussians(rng: &mut ChaCha8Rng, out: &mut [f32]) {
    const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
    for pair in out.chunks_mut(2) {
        // u1 in (0, 1] so ln(u1) is finite.
        let u1 = ((rng.next_u64() >> 11) + 1) as f64 * SCALE;
        let u2 = (rng.next_u64() >> 11) as f64 * SCALE;
        let r = (-2.0 * u1.ln()).sqrt();
        let (sin, cos) = (std::f64::consts::TAU * u2).sin_cos();
        pair[0] = (r * cos) as f32;
        if let Some(second) = pair.get_mut(1) {
            *second = (r * sin) as f32;
        }
    }
}

/// Runs `fill(block index, rows)` over blocks of [`BLOCK_ROWS`] rows of `data` (rows of `width`)
/// on every core: generating at d = 2304, K = 16384 takes seconds on one.
fn par_blocks(data: &mut [f32], width: usize, fill: impl Fn(u64, &mut [f32]) + Sync) {
    let block = BLOCK_ROWS * width.max(1);
    let blocks = data.len().div_ceil(block);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(blocks)
        .max(1);
    let per_thread = blocks.div_ceil(threads);
    std::thread::scope(|scope| {
        for (t, part) in data.chunks_mut(per_thread * block).enumerate() {
            let fill = &fill;
            scope.spawn(move || {
                for (b, rows) in part.chunks_mut(block).enumerate() {
                    fill((t * per_thread + b) as u64, rows);
                }
            });
        }
    });
}

/// One random stream per (purpose, block) from `seed`.
fn stream(seed: u64, purpose: u64, block: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((purpose << 48) | block);
    rng
}

/// Draws the synthetic problem of `config` (d, K, k, B, seed): deterministic for a seed.
pub fn synthetic(config: &BenchConfig) -> Result<SyntheticData> {
    config.validate()?;
    let BenchConfig {
        dim: d,
        atoms: n_atoms,
        k,
        batch: n,
        seed,
        ..
    } = *config;
    let len = |rows: usize| {
        rows.checked_mul(d).ok_or_else(|| {
            Error::InvalidArgument(format!("[{rows}, {d}] synthetic data overflows"))
        })
    };
    let mut atoms = vec![0.0f32; len(n_atoms)?];
    par_blocks(&mut atoms, d, |block, rows| {
        let mut rng = stream(seed, 1, block);
        gaussians(&mut rng, rows);
        for atom in rows.chunks_mut(d) {
            let norm = atom
                .iter()
                .map(|&v| v as f64 * v as f64)
                .sum::<f64>()
                .sqrt();
            // A zero Gaussian row has probability 0 but would be refused as an atom.
            if norm > 0.0 {
                atom.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
            } else {
                atom[0] = 1.0;
            }
        }
    });
    // E‖Σ cⱼ·dⱼ‖² = k for unit atoms and unit Gaussian c: noise of 1 % of that per sample.
    let sigma = (0.01 * k as f32 / d as f32).sqrt();
    let mut samples = vec![0.0f32; len(n)?];
    par_blocks(&mut samples, d, |block, rows| {
        let mut rng = stream(seed, 2, block);
        // A partial Fisher–Yates shuffle per sample draws k distinct atoms in O(k); the array
        // stays a permutation, so it need not be reset between samples.
        let mut order: Vec<u32> = (0..n_atoms as u32).collect();
        let mut coefficients = vec![0.0f32; k];
        for y in rows.chunks_mut(d) {
            gaussians(&mut rng, y);
            y.iter_mut().for_each(|v| *v *= sigma);
            gaussians(&mut rng, &mut coefficients);
            for (t, &c) in coefficients.iter().enumerate() {
                let pick = t + (rng.next_u64() % (n_atoms - t) as u64) as usize;
                order.swap(t, pick);
                let j = order[t] as usize;
                for (v, a) in y.iter_mut().zip(&atoms[j * d..(j + 1) * d]) {
                    *v += c * a;
                }
            }
        }
    });
    let norms = samples
        .chunks_exact(d)
        .map(|y| y.iter().map(|&v| v as f64 * v as f64).sum::<f64>() as f32)
        .collect();
    Ok(SyntheticData {
        atoms,
        samples,
        norms,
    })
}

/// One measured figure. Serialised (see [`Bench::figure_line`]) as a JSON object whose `phase`
/// names the variant and whose fields are the variant's.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "phase", rename_all = "lowercase")]
pub enum Figure {
    /// A matrix product C [m, n] = A [m, inner] · B [n, inner]ᵀ.
    Products {
        /// `gram` (D·Dᵀ) or `correlations` (Y·Dᵀ).
        product: &'static str,
        /// Rows of C.
        m: usize,
        /// Columns of C.
        n: usize,
        /// The inner dimension (d).
        inner: usize,
        /// Seconds per product.
        seconds: f64,
        /// 2·m·n·inner / seconds, in 10⁹ per second.
        gflop_per_s: f64,
        /// Timed runs averaged.
        runs: usize,
        /// Peak device memory of the phase (bytes).
        peak_bytes: u64,
    },
    /// Sparse coding of the batch through [`Encoder::encode`] (samples uploaded, correlations,
    /// coding kernel, codes read back).
    Coding {
        /// `omp` or `mp`.
        coder: &'static str,
        /// Samples coded per run (B).
        samples: usize,
        /// Seconds per run.
        seconds: f64,
        /// B / seconds.
        samples_per_s: f64,
        /// Seconds of the coding kernel and the readback of the codes alone, from
        /// a profiled [`Encoder::encode_with`].
        kernel_s: f64,
        /// Seconds of the upload and the correlations product in the same profiled run.
        correlations_s: f64,
        /// Mean nonzeros per sample.
        mean_l0: f64,
        /// Timed runs averaged.
        runs: usize,
        /// Peak device memory of the phase (bytes).
        peak_bytes: u64,
    },
    /// One KSVD dictionary update of the coded batch ([`Gpu::ksvd_update`]).
    Update {
        /// Atoms updated in parallel (the trainer's default).
        atom_batch: usize,
        /// Power iterations per atom (the trainer's default).
        power_iterations: usize,
        /// Seconds per update.
        seconds: f64,
        /// Timed runs averaged.
        runs: usize,
        /// Peak device memory of the phase (bytes).
        peak_bytes: u64,
    },
    /// One whole training step as the trainer runs it: upload, products, coding, residual and
    /// the dictionary update with atom memory.
    Step {
        /// Seconds per step.
        seconds: f64,
        /// Of which: products, coding, residual and the metrics readback.
        coding_s: f64,
        /// Of which: the dictionary update.
        update_s: f64,
        /// B / seconds.
        samples_per_s: f64,
        /// Timed runs averaged.
        runs: usize,
        /// Peak device memory of the phase (bytes).
        peak_bytes: u64,
    },
    /// The most device memory dbksvd held in any phase ([`Gpu::memory_peak`]).
    Memory {
        /// Bytes.
        peak_bytes: u64,
        /// The phase that reached it.
        during: &'static str,
    },
    /// One epoch of `samples` at the measured step time: step seconds × N / B (host reading
    /// and epoch-end re-seeding not included).
    Projection {
        /// Samples N.
        samples: u64,
        /// Training steps of B samples: N / B.
        steps: f64,
        /// Seconds for the epoch.
        seconds: f64,
    },
}

/// `seconds` in the unit that reads best.
fn duration(seconds: f64) -> String {
    match seconds {
        s if s < 1e-3 => format!("{:.1} µs", s * 1e6),
        s if s < 1.0 => format!("{:.2} ms", s * 1e3),
        s if s < 120.0 => format!("{s:.3} s"),
        s if s < 7200.0 => format!("{:.1} min", s / 60.0),
        s => format!("{:.2} h", s / 3600.0),
    }
}

/// `1 run`, `20 runs`.
fn timed_runs(runs: usize) -> String {
    match runs {
        1 => "1 run".into(),
        n => format!("{n} runs"),
    }
}

/// `bytes` in KiB, MiB or GiB.
fn bytes(bytes: u64) -> String {
    let kib = bytes as f64 / 1024.0;
    match kib {
        k if k < 1024.0 => format!("{k:.1} KiB"),
        k if k < 1024.0 * 1024.0 => format!("{:.1} MiB", k / 1024.0),
        k => format!("{:.2} GiB", k / (1024.0 * 1024.0)),
    }
}

/// The human-readable line of a figure.
impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Figure::Products {
                product,
                m,
                n,
                inner,
                seconds,
                gflop_per_s,
                runs,
                peak_bytes,
            } => {
                let what = if product == "gram" {
                    "Gram D·Dᵀ"
                } else {
                    "correlations Y·Dᵀ"
                };
                write!(
                    f,
                    "{what:<18} [{m}, {inner}]·[{inner}, {n}]: {gflop_per_s:.1} GFLOP/s ({} per \
                     product, {}, peak {})",
                    duration(seconds),
                    timed_runs(runs),
                    bytes(peak_bytes)
                )
            }
            Figure::Coding {
                coder,
                samples,
                seconds,
                samples_per_s,
                kernel_s,
                correlations_s,
                mean_l0,
                runs,
                peak_bytes,
            } => write!(
                f,
                "coding {:<11} {samples_per_s:.0} samples/s ({} per {samples}; kernel {}, \
                 correlations {}; mean L0 {mean_l0:.2}; {}, peak {})",
                coder.to_uppercase(),
                duration(seconds),
                duration(kernel_s),
                duration(correlations_s),
                timed_runs(runs),
                bytes(peak_bytes)
            ),
            Figure::Update {
                atom_batch,
                power_iterations,
                seconds,
                runs,
                peak_bytes,
            } => write!(
                f,
                "update             {} per dictionary update (A = {atom_batch}, p = \
                 {power_iterations}; {}, peak {})",
                duration(seconds),
                timed_runs(runs),
                bytes(peak_bytes)
            ),
            Figure::Step {
                seconds,
                coding_s,
                update_s,
                samples_per_s,
                runs,
                peak_bytes,
            } => write!(
                f,
                "step               {} per training step, {samples_per_s:.0} samples/s \
                 (coding {}, update {}; {}, peak {})",
                duration(seconds),
                duration(coding_s),
                duration(update_s),
                timed_runs(runs),
                bytes(peak_bytes)
            ),
            Figure::Memory { peak_bytes, during } => write!(
                f,
                "peak device memory {} (during {during}; dbksvd's buffers)",
                bytes(peak_bytes)
            ),
            Figure::Projection {
                samples,
                steps,
                seconds,
            } => write!(
                f,
                "projection         {} per epoch of {samples} samples ({steps:.0} steps)",
                duration(seconds)
            ),
        }
    }
}

/// How [`Bench`] writes its lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One human-readable line per figure.
    Text,
    /// One JSON object per line, with the sizes and the adapter name in each.
    Json,
}

/// A benchmark of one size on one device.
pub struct Bench<'a> {
    gpu: &'a Gpu,
    config: BenchConfig,
}

/// Samples (and atoms, for the Gram) of a phase's warm-up run: enough to build every pipeline
/// the phase uses, which depend on d, K and k rather than on the batch, at a small fraction of
/// a full run's cost on a slow device.
const WARM_UP_ROWS: usize = 64;

/// Seconds per full-size run of `run` and the values of the runs timed (at least one).
///
/// `warm_up` (the phase on [`WARM_UP_ROWS`] samples) runs first, untimed, so pipeline
/// compilation stays out. A first full run shorter than [`MIN_SECONDS`] is left out too (on a
/// fast device the first use of its buffers would show), and runs are then timed until
/// [`MIN_SECONDS`] or [`MAX_RUNS`]; a longer one is the figure, since a second run would
/// double a slow device's wait for a change first-use costs barely make. Each run must end in
/// a GPU wait (a readback or [`Gpu::wait`]).
fn timed<T>(
    warm_up: impl FnOnce() -> Result<()>,
    mut run: impl FnMut() -> Result<T>,
) -> Result<(f64, Vec<T>)> {
    warm_up()?;
    let started = Instant::now();
    let first = run()?;
    let seconds = started.elapsed().as_secs_f64();
    if seconds >= MIN_SECONDS {
        return Ok((seconds, vec![first]));
    }
    let started = Instant::now();
    let mut values = Vec::new();
    while values.is_empty()
        || (values.len() < MAX_RUNS && started.elapsed().as_secs_f64() < MIN_SECONDS)
    {
        values.push(run()?);
    }
    Ok((
        started.elapsed().as_secs_f64() / values.len() as f64,
        values,
    ))
}

impl<'a> Bench<'a> {
    /// Checks `config` and that the device holds its batch for the phases that code or update
    /// (an [`Error::ExceedsLimit`] naming the largest batch that fits when it does not).
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

    /// The line of `figure`: its [`Display`](fmt::Display) text, or its JSON object with the
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
        let mut emit = |figure: Figure, figures: &mut Vec<Figure>| {
            each(&figure);
            figures.push(figure);
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
                    for figure in self.products(&data)? {
                        emit(with_peak(figure, phase_peak("products")), &mut figures);
                    }
                }
                Phase::Omp | Phase::Mp => {
                    let (figure, codes) = self.coding(&data, phase)?;
                    if phase == Phase::Omp {
                        omp_codes = Some(codes);
                    }
                    emit(with_peak(figure, phase_peak(phase.name())), &mut figures);
                }
                Phase::Update => {
                    let figure = self.update(&data, omp_codes.take())?;
                    emit(with_peak(figure, phase_peak("update")), &mut figures);
                }
                Phase::Step => {
                    let figure = self.step(&data)?;
                    if let Figure::Step { seconds, .. } = figure {
                        step_s = Some(seconds);
                    }
                    emit(with_peak(figure, phase_peak("step")), &mut figures);
                }
            }
        }
        emit(
            Figure::Memory {
                peak_bytes: peak.0,
                during: peak.1,
            },
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
                &mut figures,
            );
        }
        Ok(figures)
    }

    /// The Gram matrix and the correlations, timed apart.
    fn products(&self, data: &SyntheticData) -> Result<Vec<Figure>> {
        let gpu = self.gpu;
        let c = &self.config;
        let atoms = gpu.matrix(c.atoms, c.dim, &data.atoms)?;
        let samples = gpu.matrix(c.batch, c.dim, &data.samples)?;
        let warm_up = || {
            let rows = WARM_UP_ROWS.min(c.atoms);
            let few = gpu.matrix(rows, c.dim, &data.atoms[..rows * c.dim])?;
            let mut out = gpu.zeros(rows, rows)?;
            gpu.gemm(&GemmParams::abt(), &few, &few, &mut out)?;
            gpu.wait()
        };
        let mut out = Vec::new();
        for (product, a, mut result) in [
            ("gram", &atoms, gpu.zeros(c.atoms, c.atoms)?),
            ("correlations", &samples, gpu.zeros(c.batch, c.atoms)?),
        ] {
            let (seconds, runs) = timed(warm_up, || {
                gpu.gemm(&GemmParams::abt(), a, &atoms, &mut result)?;
                gpu.wait()
            })?;
            let (m, n, inner) = (a.rows(), atoms.rows(), c.dim);
            out.push(Figure::Products {
                product,
                m,
                n,
                inner,
                seconds,
                gflop_per_s: 2.0 * m as f64 * n as f64 * inner as f64 / seconds / 1e9,
                runs: runs.len(),
                peak_bytes: 0,
            });
        }
        Ok(out)
    }

    /// Coding the batch with OMP or MP; also returns the codes (the update's input).
    fn coding(&self, data: &SyntheticData, phase: Phase) -> Result<(Figure, SparseCodes)> {
        let c = &self.config;
        let (coding, coder) = match phase {
            Phase::Mp => (mp(c.k), "mp"),
            _ => (CodingOptions::omp(c.k), "omp"),
        };
        let coding = coding.with_gram(c.gram);
        let encoder = self.encoder(data, coding)?;
        let warm_up = || {
            let rows = WARM_UP_ROWS.min(c.batch);
            encoder.encode(&data.samples[..rows * c.dim]).map(drop)
        };
        let (seconds, mut runs) = timed(warm_up, || encoder.encode(&data.samples))?;
        let runs_timed = runs.len();
        let codes = runs
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
        Ok((figure, codes))
    }

    /// An encoder that codes the whole batch in one GPU batch, as a training step does.
    fn encoder(&self, data: &SyntheticData, coding: CodingOptions) -> Result<Encoder> {
        let c = &self.config;
        let mut options = EncoderOptions::new(coding);
        options.batch_size = Some(c.batch);
        Encoder::new(self.gpu, &data.atoms, c.atoms, c.dim, options)
    }

    /// One dictionary update of the batch coded by OMP (`codes`, or coded here untimed).
    fn update(&self, data: &SyntheticData, codes: Option<SparseCodes>) -> Result<Figure> {
        let gpu = self.gpu;
        let c = &self.config;
        let codes = match codes {
            Some(codes) => codes,
            None => self
                .encoder(data, CodingOptions::omp(c.k).with_gram(c.gram))?
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
        let (seconds, runs) = timed(
            || Ok(()),
            || gpu.ksvd_update(&mut atoms, &mut batch, &options).map(drop),
        )?;
        Ok(Figure::Update {
            atom_batch: options.atom_batch,
            power_iterations: options.power_iterations,
            seconds,
            runs: runs.len(),
            peak_bytes: 0,
        })
    }

    /// The trainer's update settings (atom batch, power iterations), without atom memory.
    fn update_options(&self) -> UpdateOptions {
        let train = TrainConfig::new(self.config.atoms, self.config.k);
        UpdateOptions {
            atom_batch: train.atom_batch,
            power_iterations: train.power_iterations,
            seed: self.config.seed,
            memory: 0.0,
        }
    }

    /// One training step with the trainer's defaults (MP with refit, atom memory γ).
    fn step(&self, data: &SyntheticData) -> Result<Figure> {
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
                &data.samples[..rows * d],
                &data.norms[..rows],
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
        let (seconds, runs) = timed(
            || Ok(()),
            || step(&mut atoms, &mut buffers, c.batch).map(|out| (out.coding_s, out.update_s)),
        )?;
        let share = 1.0 / runs.len() as f64;
        Ok(Figure::Step {
            seconds,
            coding_s: runs.iter().map(|r| r.0).sum::<f64>() * share,
            update_s: runs.iter().map(|r| r.1).sum::<f64>() * share,
            samples_per_s: c.batch as f64 / seconds,
            runs: runs.len(),
            peak_bytes: 0,
        })
    }
}

/// Matching pursuit as the trainer's `--coder mp` runs it (refitted).
/// How the first line and the JSON figures name the Gram storage.
fn gram_name(gram: GramPrecision) -> &'static str {
    match gram {
        GramPrecision::F32 => "f32",
        GramPrecision::F16 => "f16",
    }
}

fn mp(k: usize) -> CodingOptions {
    CodingOptions::mp(k, true)
}

/// `figure` with its phase's peak device memory.
fn with_peak(mut figure: Figure, bytes: u64) -> Figure {
    match &mut figure {
        Figure::Products { peak_bytes, .. }
        | Figure::Coding { peak_bytes, .. }
        | Figure::Update { peak_bytes, .. }
        | Figure::Step { peak_bytes, .. }
        | Figure::Memory { peak_bytes, .. } => *peak_bytes = bytes,
        Figure::Projection { .. } => {}
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

    #[test]
    fn phases_parse_and_sizes_are_checked() {
        assert_eq!("MP".parse::<Phase>().unwrap(), Phase::Mp);
        assert!("gemm".parse::<Phase>().is_err());
        assert!(BenchConfig::new(8, 40, 9, 64).validate().is_err());
        assert!(BenchConfig::new(16, 40, 0, 64).validate().is_err());
        assert!(BenchConfig::new(16, 40, 3, 0).validate().is_err());
        BenchConfig::new(16, 40, 3, 64).validate().unwrap();
    }
}
