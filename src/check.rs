//! Self-check of the GPU kernels against the CPU reference, as `dbksvd devices` runs it.

use crate::error::Result;
use crate::gpu::{GemmParams, Gpu, Product};
use crate::reference;

/// The outcome of one product checked against the reference.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// What was computed, e.g. `gram D·Dᵀ`.
    pub name: String,
    /// `m×n×inner`.
    pub shape: String,
    /// ‖C_gpu − C_ref‖_F / ‖C_ref‖_F.
    pub relative_error: f64,
    /// Largest |C_gpu − C_ref| divided by its bound (inner + 2)·ε·(|α|·|A|·|B|)ᵢⱼ; ≤ 1 passes.
    pub worst_bound_ratio: f64,
}

impl CheckReport {
    /// True when every element is within its rounding bound and the relative error ≤ 1e-5.
    pub fn passed(&self) -> bool {
        self.worst_bound_ratio <= 1.0 && self.relative_error <= 1e-5
    }
}

/// Deterministic values in [-1, 1) that look unstructured enough for a product check.
fn pattern(len: usize, salt: u64) -> Vec<f32> {
    (0..len as u64)
        .map(|i| {
            let x = (i.wrapping_mul(2_654_435_761).wrapping_add(salt * 97)) % 10_007;
            x as f32 / 5_003.5 - 1.0
        })
        .collect()
}

/// Runs a Gram matrix, a correlations block and an A·B product on awkward shapes (primes, not
/// multiples of the tile) and compares each with [`reference::gemm()`].
pub fn gemm_self_check(gpu: &Gpu) -> Result<Vec<CheckReport>> {
    let cases = [
        ("gram D·Dᵀ", Product::ABt, 257, 257, 97),
        ("correlations Y·Dᵀ", Product::ABt, 193, 257, 97),
        ("product A·B", Product::AB, 131, 67, 257),
    ];
    let mut reports = Vec::new();
    for (i, (name, product, m, n, inner)) in cases.into_iter().enumerate() {
        let a = pattern(m * inner, 2 * i as u64);
        // The Gram case multiplies D by itself.
        let b = if name.starts_with("gram") {
            a.clone()
        } else {
            pattern(n * inner, 2 * i as u64 + 1)
        };
        let (b_rows, b_cols) = match product {
            Product::ABt => (n, inner),
            Product::AB => (inner, n),
        };
        let ga = gpu.matrix(m, inner, &a)?;
        let gb = gpu.matrix(b_rows, b_cols, &b)?;
        let mut gc = gpu.zeros(m, n)?;
        let op = GemmParams {
            product,
            ..GemmParams::abt()
        };
        gpu.gemm(&op, &ga, &gb, &mut gc)?;
        let got = gpu.read_matrix(&gc)?;
        let want = reference::gemm(product, m, n, inner, 1.0, &a, &b, 0.0, &[]);
        let scale = reference::gemm_abs(product, m, n, inner, 1.0, &a, &b, 0.0, &[]);
        let eps = f32::EPSILON as f64;
        let (mut err2, mut ref2, mut worst) = (0.0f64, 0.0f64, 0.0f64);
        for ((g, w), s) in got.iter().zip(&want).zip(&scale) {
            let diff = (*g as f64 - w).abs();
            // NaN compares false everywhere; count it as an infinite violation.
            let ratio = if diff.is_nan() {
                f64::INFINITY
            } else {
                diff / ((inner as f64 + 2.0) * eps * s).max(f64::MIN_POSITIVE)
            };
            worst = worst.max(ratio);
            err2 += diff * diff;
            ref2 += w * w;
        }
        reports.push(CheckReport {
            name: name.to_string(),
            shape: format!("{m}×{n}×{inner}"),
            relative_error: if err2.is_nan() {
                f64::INFINITY
            } else {
                (err2 / ref2.max(f64::MIN_POSITIVE)).sqrt()
            },
            worst_bound_ratio: worst,
        });
    }
    Ok(reports)
}
