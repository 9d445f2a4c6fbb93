//! Reference matrix products.

use crate::gpu::Product;

/// `alpha·A·op(B) + beta·C` in f64, row-major, with A [m, k]; B [n, k] for [`Product::ABt`] or
/// [k, n] for [`Product::AB`]; C [m, n].
///
/// With `beta == 0` C is not read (as on the GPU), so `c` may hold NaN or be empty.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    product: Product,
    m: usize,
    n: usize,
    k: usize,
    alpha: f64,
    a: &[f32],
    b: &[f32],
    beta: f64,
    c: &[f32],
) -> Vec<f64> {
    assert_eq!(a.len(), m * k, "A is not [m, k]");
    assert_eq!(b.len(), n * k, "B does not hold n·k elements");
    let b_at = |kk: usize, j: usize| match product {
        Product::ABt => b[j * k + kk],
        Product::AB => b[kk * n + j],
    };
    let mut out = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut sum = 0.0f64;
            for kk in 0..k {
                sum += a[i * k + kk] as f64 * b_at(kk, j) as f64;
            }
            let mut v = alpha * sum;
            if beta != 0.0 {
                v += beta * c[i * n + j] as f64;
            }
            out[i * n + j] = v;
        }
    }
    out
}

/// `|alpha|·|A|·|op(B)| + |beta|·|C|`: the scale an f32 product's rounding error is bounded by.
#[allow(clippy::too_many_arguments)]
pub fn gemm_abs(
    product: Product,
    m: usize,
    n: usize,
    k: usize,
    alpha: f64,
    a: &[f32],
    b: &[f32],
    beta: f64,
    c: &[f32],
) -> Vec<f64> {
    let abs = |x: &[f32]| x.iter().map(|v| v.abs()).collect::<Vec<f32>>();
    gemm(
        product,
        m,
        n,
        k,
        alpha.abs(),
        &abs(a),
        &abs(b),
        beta.abs(),
        &abs(c),
    )
}
