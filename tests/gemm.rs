//! GPU matrix products against the f64 reference, on awkward shapes, on whatever adapter the
//! environment picks (lavapipe in CI).
//!
//! Error bounds. The GPU accumulates `inner` products in f32. The standard bound for a dot
//! product in floating point (Higham, Accuracy and Stability of Numerical Algorithms, §3.1) is
//! |fl(x·y) − x·y| ≤ γ_n·|x|·|y| with γ_n = n·u/(1 − n·u) and unit roundoff u = 2⁻²⁴. Scaling by
//! alpha and adding beta·C are two more roundings. We allow (inner + 2)·ε with ε = f32::EPSILON
//! = 2u, i.e. twice the worst case, applied to |α|·(|A|·|B|)ᵢⱼ + |β|·|Cᵢⱼ| from the reference;
//! any indexing or tiling bug produces errors of the size of the entries themselves, far above
//! it. When the inner dimension is split into b blocks (small binding caps), each block adds two
//! roundings (α·acc + 1·C), giving (inner + 2b)·u·scale, still within the bound while b ≤
//! inner/2 + 2, which holds since every block spans at least two rows of B. The relative Frobenius error must stay ≤ 1e-5: rounding errors of a random-sign sum grow
//! like √inner·u (≈ 1.2e-6 at inner = 384), so 1e-5 leaves room without hiding a wrong element
//! (one wrong entry of a 17×33 product already moves it by ≈ 4e-2).

mod common;

use dbksvd::gpu::{GemmKernel, GemmParams, Gpu, Product};
use dbksvd::{reference, Error};

struct Case {
    product: Product,
    m: usize,
    n: usize,
    inner: usize,
    alpha: f32,
    beta: f32,
    /// Fill C with NaN before the product (only meaningful with beta = 0).
    nan_c: bool,
    kernel: GemmKernel,
}

impl Case {
    fn new(product: Product, m: usize, n: usize, inner: usize) -> Self {
        Self {
            product,
            m,
            n,
            inner,
            alpha: 1.0,
            beta: 0.0,
            nan_c: true,
            kernel: GemmKernel::Tiled,
        }
    }
}

/// Runs one product on `gpu` and checks it against the reference. Returns the relative
/// Frobenius error.
fn check(gpu: &Gpu, case: &Case, seed: u64) -> f64 {
    let Case {
        product,
        m,
        n,
        inner,
        alpha,
        beta,
        nan_c,
        kernel,
    } = *case;
    let a = common::uniform(m * inner, seed);
    let b = common::uniform(n * inner, seed + 1);
    let c0: Vec<f32> = if nan_c {
        vec![f32::NAN; m * n]
    } else {
        common::uniform(m * n, seed + 2)
    };
    let (b_rows, b_cols) = match product {
        Product::ABt => (n, inner),
        Product::AB => (inner, n),
    };
    let ga = gpu.matrix(m, inner, &a).unwrap();
    let gb = gpu.matrix(b_rows, b_cols, &b).unwrap();
    let mut gc = gpu.matrix(m, n, &c0).unwrap();
    let op = GemmParams {
        product,
        alpha,
        beta,
        kernel,
    };
    gpu.gemm(&op, &ga, &gb, &mut gc).unwrap();
    let got = gpu.read_matrix(&gc).unwrap();

    let (alpha, beta) = (alpha as f64, beta as f64);
    let want = reference::gemm(product, m, n, inner, alpha, &a, &b, beta, &c0);
    let scale = reference::gemm_abs(product, m, n, inner, alpha, &a, &b, beta, &c0);
    let eps = f32::EPSILON as f64;
    let (mut err2, mut ref2) = (0.0f64, 0.0f64);
    for i in 0..m * n {
        let g = got[i] as f64;
        assert!(
            g.is_finite(),
            "{product:?} {m}×{n}×{inner}: element {i} is {g}"
        );
        let bound = (inner as f64 + 2.0) * eps * scale[i];
        let diff = (g - want[i]).abs();
        assert!(
            diff <= bound,
            "{product:?} {kernel:?} {m}×{n}×{inner} α={alpha} β={beta}: C[{}, {}] = {g}, \
             reference {}, |Δ| = {diff:.3e} > bound {bound:.3e}",
            i / n,
            i % n,
            want[i]
        );
        err2 += (g - want[i]).powi(2);
        ref2 += want[i].powi(2);
    }
    let rel = if ref2 > 0.0 {
        (err2 / ref2).sqrt()
    } else {
        err2.sqrt()
    };
    assert!(
        rel <= 1e-5,
        "{product:?} {kernel:?} {m}×{n}×{inner}: relative Frobenius error {rel:.3e} > 1e-5"
    );
    rel
}

/// (m, n, inner) from the issue: 1, primes and non-multiples of the 128×128×16 tile, and a
/// realistic correlations block.
const SHAPES: [(usize, usize, usize); 4] =
    [(1, 1, 1), (17, 33, 65), (127, 129, 257), (512, 1536, 384)];

#[test]
fn a_bt_matches_reference_on_awkward_shapes_over_nan_c() {
    let Some(gpu) = common::gpu() else { return };
    for (i, &(m, n, inner)) in SHAPES.iter().enumerate() {
        let rel = check(gpu, &Case::new(Product::ABt, m, n, inner), 10 + i as u64);
        eprintln!("A·Bᵀ {m}×{n}×{inner}: relative error {rel:.2e}");
    }
}

#[test]
fn a_b_matches_reference_on_awkward_shapes_over_nan_c() {
    let Some(gpu) = common::gpu() else { return };
    for (i, &(m, n, inner)) in SHAPES.iter().enumerate() {
        let rel = check(gpu, &Case::new(Product::AB, m, n, inner), 20 + i as u64);
        eprintln!("A·B {m}×{n}×{inner}: relative error {rel:.2e}");
    }
}

#[test]
fn alpha_and_beta_scale_and_accumulate() {
    let Some(gpu) = common::gpu() else { return };
    for product in [Product::ABt, Product::AB] {
        for &(m, n, inner) in &SHAPES[..3] {
            for (alpha, beta) in [(-1.5f32, 0.75f32), (0.0, 1.0), (2.0, -1.0)] {
                let case = Case {
                    alpha,
                    beta,
                    nan_c: false,
                    ..Case::new(product, m, n, inner)
                };
                check(gpu, &case, 30);
            }
        }
    }
}

/// The texel kernel (A·Bᵀ read from textures, what lavapipe runs by default) on the awkward
/// shapes (inner dimensions not a multiple of the 4-wide texel, outputs not a multiple of a
/// workgroup's block), with alpha and beta; under a 4 KiB binding cap (C bound in row windows of a few
/// rows, A and B packed window by window); with textures of at most 100 texels a side (A and B
/// in layers of 64 rows); and refused for A·B. Same error bounds as the tiled kernel: each
/// output is still one f32 sum over the inner dimension.
#[test]
fn texel_kernel_matches_reference() {
    let Some(gpu) = common::gpu() else { return };
    let texel = |m, n, inner| Case {
        kernel: GemmKernel::Texel,
        ..Case::new(Product::ABt, m, n, inner)
    };
    for (i, &(m, n, inner)) in SHAPES.iter().enumerate() {
        check(gpu, &texel(m, n, inner), 60 + i as u64);
        let scaled = Case {
            alpha: -1.5,
            beta: 0.75,
            nan_c: false,
            ..texel(m, n, inner)
        };
        check(gpu, &scaled, 64 + i as u64);
    }
    let small = gpu.with_max_binding_size(4096).unwrap();
    let layered = gpu.with_max_texture_dimension(100);
    for split in [&small, &layered] {
        for &(m, n, inner) in &SHAPES[..3] {
            check(split, &texel(m, n, inner), 68);
        }
    }
    let (a, b) = (gpu.zeros(3, 5).unwrap(), gpu.zeros(5, 7).unwrap());
    let mut c = gpu.zeros(3, 7).unwrap();
    let op = GemmParams::ab().kernel(GemmKernel::Texel);
    let err = gpu.gemm(&op, &a, &b, &mut c).unwrap_err();
    assert!(err.to_string().contains("A·Bᵀ only"), "{err}");
}

/// On llvmpipe with 8-wide subgroups, A·Bᵀ runs as gemm_texel_subgroup (the Gram matrix: 8 × 8
/// per invocation) or gemm_texel_subgroup_tall (32 × 4), which fetch each A texel once per
/// subgroup and shuffle it to the lanes. They add the same products in the same order as
/// gemm_texel (`without_subgroups`), so all give the same bits:
/// on the awkward shapes, scaled over an old C, in row windows, with A and B in texture layers,
/// and for the Gram matrix (its
/// lower half mirrored, with workgroups on the diagonal whose lanes below it only compute). On
/// a profiling context the kernels' names show which ran.
#[test]
fn subgroup_texel_kernel_gives_the_texel_kernels_bits() {
    let Some(gpu) = common::gpu() else { return };
    let bits = |g: &Gpu, m: usize, n: usize, inner: usize, beta: f32, seed: u64| {
        let a = g
            .matrix(m, inner, &common::uniform(m * inner, seed))
            .unwrap();
        let b = g
            .matrix(n, inner, &common::uniform(n * inner, seed + 1))
            .unwrap();
        let mut c = g.matrix(m, n, &common::uniform(m * n, seed + 2)).unwrap();
        let op = GemmParams {
            alpha: -1.5,
            beta,
            ..GemmParams::abt().kernel(GemmKernel::Texel)
        };
        g.gemm(&op, &a, &b, &mut c).unwrap();
        let gram = g.gram(&b).unwrap();
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        (
            bits(g.read_matrix(&c).unwrap()),
            bits(g.read_matrix(&gram).unwrap()),
        )
    };
    let windows = gpu.with_max_binding_size(4096).unwrap();
    let layered = gpu.with_max_texture_dimension(100);
    for (i, &(m, n, inner)) in SHAPES
        .iter()
        .chain(&[(9, 131, 61), (300, 65, 7)])
        .enumerate()
    {
        for beta in [0.0, 0.75] {
            let seed = 120 + i as u64;
            let shared = bits(gpu, m, n, inner, beta, seed);
            let plain = bits(&gpu.without_subgroups(), m, n, inner, beta, seed);
            assert!(
                shared == plain,
                "{m}×{n}×{inner}, β = {beta}: the bits differ"
            );
        }
        if m * n < 100_000 {
            let seed = 130 + i as u64;
            let shared = bits(&windows, m, n, inner, 0.0, seed);
            let plain = bits(&windows.without_subgroups(), m, n, inner, 0.0, seed);
            assert!(
                shared == plain,
                "{m}×{n}×{inner} in windows: the bits differ"
            );
            let shared = bits(&layered, m, n, inner, 0.0, seed);
            let plain = bits(&layered.without_subgroups(), m, n, inner, 0.0, seed);
            assert!(
                shared == plain,
                "{m}×{n}×{inner} in layers: the bits differ"
            );
        }
    }
    let Some(profiled) = Gpu::profiling_context().unwrap() else {
        assert!(!gpu.adapter().name.contains("llvmpipe"), "no timestamps");
        return eprintln!("SKIPPED: {} has no timestamp queries", gpu.adapter().name);
    };
    let ran = |g: &Gpu| {
        g.reset_kernel_times().unwrap();
        bits(g, 17, 33, 65, 0.0, 140);
        let times = g.kernel_times().unwrap();
        let mut ran: Vec<&str> = times.iter().map(|t| t.kernel).collect();
        ran.retain(|k| k.starts_with("gemm"));
        ran.sort();
        ran
    };
    if profiled.adapter().name.contains("llvmpipe") && profiled.limits().subgroup_size == Some(8) {
        let both = ["gemm_texel_subgroup", "gemm_texel_subgroup_tall"];
        assert_eq!(ran(&profiled), both);
    }
    assert_eq!(ran(&profiled.without_subgroups()), ["gemm_texel"]);
}

#[test]
fn naive_kernel_matches_reference() {
    let Some(gpu) = common::gpu() else { return };
    for product in [Product::ABt, Product::AB] {
        for &(m, n, inner) in &SHAPES[..3] {
            let case = Case {
                kernel: GemmKernel::Naive,
                alpha: 0.5,
                beta: 2.0,
                nan_c: false,
                ..Case::new(product, m, n, inner)
            };
            check(gpu, &case, 40);
        }
    }
}

/// A binding cap far below the matrices forces row blocks (and, for A·B, inner-dimension blocks)
/// whose windows start at unaligned rows; the results must not change.
#[test]
fn row_block_splitting_under_a_small_binding_cap() {
    let Some(gpu) = common::gpu() else { return };
    let cases = [
        // 15 rows of A or B per binding: 81 block pairs (4 KiB made 1 849 and took 20 s).
        (16 * 1024u64, (127usize, 129usize, 257usize)),
        (4096, (17, 33, 65)),
        // A transformer-width inner dimension, cut into 15 blocks of B.
        (64 * 1024, (130, 600, 384)),
    ];
    for (cap, (m, n, inner)) in cases {
        let small = gpu.with_max_binding_size(cap).unwrap();
        assert!(small.limits().planned_binding_size <= cap);
        for product in [Product::ABt, Product::AB] {
            // The plan must really split, or this test would pass without exercising it.
            let (b_rows, b_cols) = match product {
                Product::ABt => (n, inner),
                Product::AB => (inner, n),
            };
            let a = small.zeros(m, inner).unwrap();
            let b = small.zeros(b_rows, b_cols).unwrap();
            let c = small.zeros(m, n).unwrap();
            let op = GemmParams {
                product,
                kernel: GemmKernel::Tiled,
                ..GemmParams::abt()
            };
            let blocks = small.gemm_blocks(&op, &a, &b, &c).unwrap();
            assert!(
                blocks > 1,
                "{product:?} {m}×{n}×{inner} under {cap} B ran in one block"
            );
            for beta in [0.0f32, 0.5] {
                let case = Case {
                    beta,
                    nan_c: beta == 0.0,
                    ..Case::new(product, m, n, inner)
                };
                check(&small, &case, 50);
            }
        }
    }
}

/// The Gram matrix D·Dᵀ, whose kernels compute the blocks on and above the diagonal and store
/// each transposed below it (lavapipe's texel kernel: 8×8 blocks; the tiled kernel a GPU runs:
/// 128×128 tiles): K = 1, around the 8×8 block (7, 8, 9), the 64×64 texel workgroup (64, 65)
/// and the 128×128 tile (127, 128, 129), primes, three tiles (300); and on the GPU kernels with
/// the inner dimension split under a loop cap (later blocks accumulate onto the mirrored
/// ones) and with C split across bindings in blocks of several tiles (none mirrored); and
/// α·D·Dᵀ + β·C over a C that is not symmetric. Every entry against the reference
/// with the bound of the other products ((d + 2)·ε·d), and exactly symmetric.
#[test]
fn gram_matches_reference_on_awkward_sizes() {
    let Some(gpu) = common::gpu() else { return };
    let gpu_paths = gpu.with_gpu_paths();
    let split_inner = gpu_paths.with_max_loop_iterations(300);
    let split_c = gpu_paths.with_max_binding_size(1 << 20).unwrap();
    let sizes = [1, 7, 8, 9, 64, 65, 127, 128, 129, 131, 300];
    let cases = [(gpu, &sizes[..]), (&gpu_paths, &sizes[..])]
        .into_iter()
        .chain([(&split_inner, &[131, 300][..]), (&split_c, &[600][..])]);
    for (g, sizes) in cases {
        for (i, &k_atoms) in sizes.iter().enumerate() {
            for d in [3, 61] {
                check_gram(g, k_atoms, d, 70 + i as u64);
            }
        }
    }
    // C = α·D·Dᵀ + β·C over a C that is not symmetric: each mirrored entry scales its own old
    // value.
    for g in [gpu, &gpu_paths, &split_inner] {
        let (k_atoms, d) = (300, 61);
        let atoms = common::uniform(k_atoms * d, 90);
        let old = common::uniform(k_atoms * k_atoms, 91);
        let gd = g.matrix(k_atoms, d, &atoms).unwrap();
        let mut c = g.matrix(k_atoms, k_atoms, &old).unwrap();
        let op = GemmParams {
            alpha: 0.5,
            beta: 0.25,
            ..GemmParams::abt()
        };
        g.gemm(&op, &gd, &gd, &mut c).unwrap();
        let got = g.read_matrix(&c).unwrap();
        let want = reference::gemm(
            Product::ABt,
            k_atoms,
            k_atoms,
            d,
            0.5,
            &atoms,
            &atoms,
            0.25,
            &old,
        );
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= (d as f64 + 2.0) * 1.2e-7 * d as f64,
                "entry {i}: {g} vs {w}"
            );
        }
    }
    // The split views must really split, or the mirrored accumulation and the unmirrored
    // blocks would go unexercised.
    for (g, k_atoms) in [(&split_inner, 300), (&split_c, 600)] {
        let (dd, c) = (
            g.zeros(k_atoms, 61).unwrap(),
            g.zeros(k_atoms, k_atoms).unwrap(),
        );
        let blocks = g.gemm_blocks(&GemmParams::abt(), &dd, &dd, &c).unwrap();
        assert!(blocks > 1, "the Gram ran in one block");
    }
}

fn check_gram(gpu: &dbksvd::gpu::Gpu, k_atoms: usize, d: usize, seed: u64) {
    let atoms = common::uniform(k_atoms * d, seed);
    let gd = gpu.matrix(k_atoms, d, &atoms).unwrap();
    let gram = gpu.read_matrix(&gpu.gram(&gd).unwrap()).unwrap();
    let want = reference::gemm(
        Product::ABt,
        k_atoms,
        k_atoms,
        d,
        1.0,
        &atoms,
        &atoms,
        0.0,
        &[],
    );
    for r in 0..k_atoms {
        for c in 0..k_atoms {
            let g = gram[r * k_atoms + c];
            assert!(
                (g as f64 - want[r * k_atoms + c]).abs() <= (d as f64 + 2.0) * 1.2e-7 * d as f64,
                "K = {k_atoms}, d = {d}: G[{r}, {c}] = {g}"
            );
            assert_eq!(g, gram[c * k_atoms + r], "K = {k_atoms}: not symmetric");
        }
    }
}

/// `Gpu::correlations` (Y·Dᵀ); `Gpu::gram` is checked above.
#[test]
fn correlations_helper_matches_reference() {
    let Some(gpu) = common::gpu() else { return };
    let (k_atoms, d, batch) = (131, 61, 37);
    let atoms = common::uniform(k_atoms * d, 60);
    let samples = common::uniform(batch * d, 61);
    let gd = gpu.matrix(k_atoms, d, &atoms).unwrap();
    let gy = gpu.matrix(batch, d, &samples).unwrap();
    let corr = gpu
        .read_matrix(&gpu.correlations(&gy, &gd).unwrap())
        .unwrap();
    let want = reference::gemm(
        Product::ABt,
        batch,
        k_atoms,
        d,
        1.0,
        &samples,
        &atoms,
        0.0,
        &[],
    );
    assert_eq!(corr.len(), batch * k_atoms);
    for (g, w) in corr.iter().zip(&want) {
        // Entries are bounded by d·1·1; same (inner + 2)·ε·scale bound as above.
        assert!((*g as f64 - w).abs() <= (d as f64 + 2.0) * 1.2e-7 * d as f64);
    }
}

#[test]
fn shape_mismatches_are_errors() {
    let Some(gpu) = common::gpu() else { return };
    let a = gpu.zeros(4, 5).unwrap();
    let b = gpu.zeros(6, 7).unwrap();
    let mut c = gpu.zeros(4, 6).unwrap();
    let err = gpu.gemm(&GemmParams::abt(), &a, &b, &mut c).unwrap_err();
    assert!(
        matches!(&err, Error::ShapeMismatch { left, right, .. } if left == "[4, 5]" && right == "[6, 7]"),
        "{err}"
    );
    let b = gpu.zeros(6, 5).unwrap();
    let mut wrong_c = gpu.zeros(4, 7).unwrap();
    let err = gpu
        .gemm(&GemmParams::abt(), &a, &b, &mut wrong_c)
        .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    // Mismatched upload length.
    let err = gpu.matrix(3, 3, &[0.0; 8]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DataLength {
                expected: 9,
                actual: 8,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn requests_beyond_device_limits_are_errors() {
    let Some(gpu) = common::gpu() else { return };
    let limits = gpu.limits().clone();
    // A buffer one row larger than the device allows: refused before any allocation.
    let cols = 1024usize;
    let rows = (limits.max_buffer_size / (cols as u64 * 4)) as usize + 1;
    let err = gpu.zeros(rows, cols).unwrap_err();
    match err {
        Error::ExceedsLimit {
            requested,
            limit,
            limit_name,
            ..
        } => {
            assert_eq!(limit_name, "max_buffer_size");
            assert_eq!(limit, limits.max_buffer_size);
            assert!(requested > limit);
        }
        other => panic!("expected ExceedsLimit, got {other}"),
    }
    // One row wider than a (capped) binding cannot be split by rows.
    let small = gpu.with_max_binding_size(1024).unwrap();
    let err = small.zeros(2, 1000).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ExceedsLimit {
                limit_name: "max_storage_buffer_binding_size",
                ..
            }
        ),
        "{err}"
    );
    // The device itself must still work afterwards.
    let a = gpu.matrix(1, 1, &[3.0]).unwrap();
    let g = gpu.gram(&a).unwrap();
    assert_eq!(gpu.read_matrix(&g).unwrap(), vec![9.0]);
}

#[test]
fn empty_products_leave_c_or_scale_it() {
    let Some(gpu) = common::gpu() else { return };
    // inner = 0: C = beta·C.
    let a = gpu.zeros(3, 0).unwrap();
    let b = gpu.zeros(2, 0).unwrap();
    let mut c = gpu.matrix(3, 2, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    gpu.gemm(&GemmParams::abt().beta(2.0), &a, &b, &mut c)
        .unwrap();
    assert_eq!(
        gpu.read_matrix(&c).unwrap(),
        vec![2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
    );
    // m = 0: nothing to do, no error.
    let a = gpu.zeros(0, 4).unwrap();
    let b = gpu.zeros(3, 4).unwrap();
    let mut c = gpu.zeros(0, 3).unwrap();
    gpu.gemm(&GemmParams::abt(), &a, &b, &mut c).unwrap();
    assert!(gpu.read_matrix(&c).unwrap().is_empty());
}

/// An inner dimension longer than a loop-capped driver (lavapipe) runs in one dispatch is split
/// into accumulated blocks; the result must still match the reference.
#[test]
fn long_inner_dimensions_are_split_under_a_loop_cap() {
    let Some(gpu) = common::gpu() else { return };
    for product in [Product::ABt, Product::AB] {
        let (m, n, inner) = (3, 5, 40_000);
        let rel = check(gpu, &Case::new(product, m, n, inner), 70);
        eprintln!("{product:?} {m}×{n}×{inner}: relative error {rel:.2e}");
        if product == Product::ABt {
            // The texel kernel's loop runs once per 4 inner elements: 10 000 here, one dispatch.
            let texel = Case {
                kernel: GemmKernel::Texel,
                ..Case::new(product, m, n, inner)
            };
            check(gpu, &texel, 71);
        }
        if gpu.limits().max_loop_iterations.is_some() {
            let (b_rows, b_cols) = match product {
                Product::ABt => (n, inner),
                Product::AB => (inner, n),
            };
            let a = gpu.zeros(m, inner).unwrap();
            let b = gpu.zeros(b_rows, b_cols).unwrap();
            let c = gpu.zeros(m, n).unwrap();
            let op = GemmParams {
                product,
                kernel: GemmKernel::Tiled,
                ..GemmParams::abt()
            };
            assert!(gpu.gemm_blocks(&op, &a, &b, &c).unwrap() > 1);
        }
    }
}
