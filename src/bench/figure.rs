//! One measured figure of `dbksvd bench` and how it prints.

use std::fmt;

use serde::Serialize;

/// One measured figure. Serialised (see [`super::Bench::figure_line`]) as a JSON object whose `phase`
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
    /// Sparse coding of the batch through [`crate::Encoder::encode`] (samples uploaded, correlations,
    /// coding kernel, codes read back).
    Coding {
        /// `omp`, `omp-sweeps` (Batch-OMP by a sweep and a select dispatch per greedy step,
        /// beside the fused kernel wherever `omp` runs it: CPU adapters), `mp`, or `mp-sweeps`
        /// (the same for MP, beside the resident coder wherever `mp` runs it; planned without
        /// subgroups, so on llvmpipe its correlations take the plain texel GEMM too: compare
        /// the coders by `kernel_s`).
        coder: &'static str,
        /// Samples coded per run (B).
        samples: usize,
        /// Seconds per run.
        seconds: f64,
        /// B / seconds.
        samples_per_s: f64,
        /// Seconds of the coding kernel and the readback of the codes alone, from
        /// a profiled [`crate::Encoder::encode_with`].
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
    /// One KSVD dictionary update of the coded batch ([`crate::Gpu::ksvd_update`]).
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
    /// On a profiling context (`dbksvd bench --profile`), one kernel's share of the timed
    /// figure before it, from timestamp queries ([`crate::Gpu::kernel_times`]).
    Kernel {
        /// The figure: `gram`, `correlations`, `omp`, `omp-sweeps`, `mp`, `mp-sweeps`, `update`
        /// or `step`.
        of: &'static str,
        /// The kernel's entry point in `shaders/`.
        kernel: &'static str,
        /// Dispatches per run.
        dispatches: f64,
        /// Seconds per run.
        seconds: f64,
        /// Of the figure's seconds per run.
        share: f64,
    },
    /// With `--repeat R` (R > 1), the spread of the timed figure before it over its R
    /// measurements (that figure is the median one).
    Spread {
        /// The figure: `gram`, `correlations`, `omp`, `omp-sweeps`, `mp`, `mp-sweeps`, `update`
        /// or `step`.
        of: &'static str,
        /// Measurements R.
        repeats: usize,
        /// The fastest measurement's seconds per run.
        min_s: f64,
        /// The median measurement's (the lower middle one of an even count).
        median_s: f64,
        /// The slowest measurement's.
        max_s: f64,
    },
    /// The most device memory dbksvd held in any phase ([`crate::Gpu::memory_peak`]).
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

impl Figure {
    /// For a timed figure, what it measures and its seconds per run.
    pub(crate) fn timed(&self) -> Option<(&'static str, f64)> {
        match *self {
            Figure::Products {
                product, seconds, ..
            } => Some((product, seconds)),
            Figure::Coding { coder, seconds, .. } => Some((coder, seconds)),
            Figure::Update { seconds, .. } => Some(("update", seconds)),
            Figure::Step { seconds, .. } => Some(("step", seconds)),
            Figure::Kernel { .. }
            | Figure::Spread { .. }
            | Figure::Memory { .. }
            | Figure::Projection { .. } => None,
        }
    }
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

/// What a product figure measures.
fn product_name(product: &str) -> &'static str {
    if product == "gram" {
        "Gram D·Dᵀ"
    } else {
        "correlations Y·Dᵀ"
    }
}

/// The runs timed and the peak memory, as every timed figure ends.
fn cost(runs: usize, peak_bytes: u64) -> String {
    format!("{}, peak {}", timed_runs(runs), bytes(peak_bytes))
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
            } => write!(
                f,
                "{:<18} [{m}, {inner}]·[{inner}, {n}]: {gflop_per_s:.1} GFLOP/s ({} per product, \
                 {})",
                product_name(product),
                duration(seconds),
                cost(runs, peak_bytes)
            ),
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
                 correlations {}, kernel/correlations {:.2}; mean L0 {mean_l0:.2}; {})",
                coder.to_uppercase(),
                duration(seconds),
                duration(kernel_s),
                duration(correlations_s),
                kernel_s / correlations_s.max(1e-9),
                cost(runs, peak_bytes)
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
                 {power_iterations}; {})",
                duration(seconds),
                cost(runs, peak_bytes)
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
                 (coding {}, update {} = {:.0} %; {})",
                duration(seconds),
                duration(coding_s),
                duration(update_s),
                100.0 * update_s / (coding_s + update_s).max(1e-9),
                cost(runs, peak_bytes)
            ),
            Figure::Kernel {
                of,
                kernel,
                dispatches,
                seconds,
                share,
            } => write!(
                f,
                "  kernel {kernel:<30} {} ({:.0} % of {of}; {dispatches} dispatch{} per run)",
                duration(seconds),
                100.0 * share,
                if dispatches == 1.0 { "" } else { "es" }
            ),
            Figure::Spread {
                of,
                repeats,
                min_s,
                median_s,
                max_s,
            } => write!(
                f,
                "  spread {of:<13} min {}, median {}, max {} of {repeats} repeats (max/min \
                 {:.2})",
                duration(min_s),
                duration(median_s),
                duration(max_s),
                max_s / min_s.max(1e-12)
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
