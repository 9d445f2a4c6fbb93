//! Planning a product: blocks of rows (and of the inner dimension) that fit the device's
//! bindings, or the texel path's textures and C windows.

use super::{BlockParams, GemmKernel, GemmParams, Product, TILE_K, TX, TY};
use crate::error::{Error, Result};
use crate::gpu::buffer::{ranges, rows_per_window, texture_rows, window, TextureShape, Window};
use crate::gpu::{Gpu, Matrix};

pub(super) struct Block {
    pub(super) params: BlockParams,
    pub(super) a: Window,
    pub(super) b: Window,
    pub(super) c: Window,
    pub(super) groups: (u32, u32),
}

/// Checks shapes and plans the blocks of one product on `gpu`.
/// The texel kernel's plan: A's and B's textures (shape, layer shift) and C's row blocks.
pub(super) struct TexelPlan {
    pub(super) a: (TextureShape, u32),
    pub(super) b: (TextureShape, u32),
    pub(super) blocks: Vec<TexelBlock>,
}

/// One dispatch of the texel kernel: rows m0.. of C in one window, columns n0.. (its
/// workgroups depend on the kernel's block per invocation, chosen when it is recorded).
pub(super) struct TexelBlock {
    pub(super) params: BlockParams,
    pub(super) c: Window,
}

/// How a product runs: blocks of bound windows, or the texel kernel.
pub(super) enum Plan {
    Buffers(Vec<Block>),
    Texels(TexelPlan),
}

impl Plan {
    #[cfg(any(test, feature = "testing"))]
    pub(super) fn len(&self) -> usize {
        match self {
            Plan::Buffers(blocks) => blocks.len(),
            Plan::Texels(plan) => plan.blocks.len(),
        }
    }
}

/// Plans A·Bᵀ of shape (m, n, k) for the texel kernel, or says which limit it exceeds.
pub(super) fn plan_texels(
    gpu: &Gpu,
    op: &GemmParams,
    (m, n, k): (usize, usize, usize),
) -> std::result::Result<TexelPlan, (String, u64, &'static str, u64)> {
    let limits = gpu.limits();
    let width = k.div_ceil(4);
    let format = wgpu::TextureFormat::Rgba32Float;
    let texture = |rows: usize, operand: &str| {
        texture_rows(gpu, rows, width, format, true).map_err(|(requested, name, limit)| {
            (
                format!("operand {operand} [{rows}, {k}] as a texture of {width} texels a row"),
                requested,
                name,
                limit,
            )
        })
    };
    let a = texture(m, "A")?;
    let b = texture(n, "B")?;
    // The inner loop runs one iteration per texel, under the driver's loop cap.
    if let Some(cap) = limits.max_loop_iterations {
        if width as u64 + 200 > cap {
            return Err((
                format!("inner dimension {k} of one texel-kernel invocation (iterations)"),
                width as u64 + 200,
                "max_loop_iterations",
                cap,
            ));
        }
    }
    let align = limits.binding_alignment();
    let rows_c = rows_per_window(n, limits.planned_binding_size, align);
    if rows_c == 0 {
        return Err((
            format!("one row of C [{m}, {n}] (bytes)"),
            n as u64 * 4,
            "max_storage_buffer_binding_size",
            limits.planned_binding_size,
        ));
    }
    let max_groups = limits.max_compute_workgroups_per_dimension as usize;
    // Rows and columns of C one workgroup covers, at least: 8 rows (gemm_texel_subgroup_tall:
    // 32) and 4 columns (the others: 8) per invocation.
    let (tile_m, tile_n) = ((TY * 8) as usize, (TX * 4) as usize);
    let mut blocks = Vec::new();
    for &(m0, m1) in &ranges(m, rows_c.min(max_groups * tile_m)) {
        for &(n0, n1) in &ranges(n, max_groups * tile_n) {
            let cw = window(n, m0, m1, align);
            let (bm, bn) = (m1 - m0, n1 - n0);
            blocks.push(TexelBlock {
                params: BlockParams {
                    m: bm as u32,
                    n: bn as u32,
                    k: k as u32,
                    lda: k as u32,
                    ldb: k as u32,
                    ldc: n as u32,
                    a_offset: m0 as u32,
                    b_offset: n0 as u32,
                    c_offset: cw.first + n0 as u32,
                    alpha: op.alpha,
                    beta: op.beta,
                    a_layer_shift: a.1,
                    b_layer_shift: b.1,
                    symmetric: 0,
                    _pad: [0; 2],
                },
                c: cw,
            });
        }
    }
    Ok(TexelPlan { a, b, blocks })
}

/// The product's shape (m, n, k) and name, once its operands agree with it and each other.
fn check_operands(
    op: &GemmParams,
    a: &Matrix,
    b: &Matrix,
    c: &Matrix,
) -> Result<(usize, usize, usize, &'static str)> {
    let (m, k) = (a.rows(), a.cols());
    let (n, b_inner) = match op.product {
        Product::ABt => (b.rows(), b.cols()),
        Product::AB => (b.cols(), b.rows()),
    };
    let name = match op.product {
        Product::ABt => "gemm A·Bᵀ",
        Product::AB => "gemm A·B",
    };
    if b_inner != k {
        return Err(Error::ShapeMismatch {
            op: format!("{name} (inner dimension of A vs B)"),
            left: a.shape(),
            right: b.shape(),
        });
    }
    if (c.rows(), c.cols()) != (m, n) {
        return Err(Error::ShapeMismatch {
            op: format!("{name} (C vs the product's [{m}, {n}])"),
            left: c.shape(),
            right: crate::error::shape(m, n),
        });
    }
    if c.data.id() == a.data.id() || c.data.id() == b.data.id() {
        return Err(Error::InvalidArgument(format!(
            "{name}: C must not be the same buffer as A or B"
        )));
    }
    if !op.alpha.is_finite() || !op.beta.is_finite() {
        return Err(Error::InvalidArgument(format!(
            "{name}: alpha {} and beta {} must be finite",
            op.alpha, op.beta
        )));
    }
    Ok((m, n, k, name))
}

pub(super) fn plan(gpu: &Gpu, op: &GemmParams, a: &Matrix, b: &Matrix, c: &Matrix) -> Result<Plan> {
    let (m, n, k, name) = check_operands(op, a, b, c)?;
    if m == 0 || n == 0 {
        return Ok(Plan::Buffers(Vec::new()));
    }
    let texels = match (op.kernel, op.product) {
        (GemmKernel::Texel, Product::AB) => {
            return Err(Error::InvalidArgument(format!(
                "{name}: the texel kernel computes A·Bᵀ only"
            )))
        }
        (GemmKernel::Texel, Product::ABt) => Some(plan_texels(gpu, op, (m, n, k)).map_err(
            |(what, requested, limit_name, limit)| Error::ExceedsLimit {
                what: format!("{name}: {what}"),
                requested,
                limit_name,
                limit,
                largest_batch: None,
            },
        )?),
        (GemmKernel::Auto, Product::ABt) if gpu.limits().cpu_paths => {
            plan_texels(gpu, op, (m, n, k)).ok()
        }
        _ => None,
    };
    if let Some(texels) = texels {
        return Ok(Plan::Texels(texels));
    }
    let kernel = match op.kernel {
        GemmKernel::Naive => GemmKernel::Naive,
        _ => GemmKernel::Tiled,
    };

    let limits = gpu.limits();
    let kernels = gpu.gemm_kernels()?;
    let pipes = kernels.pipelines(kernel);
    let space = Space {
        binding: limits.planned_binding_size,
        align: limits.binding_alignment(),
        max_groups: limits.max_compute_workgroups_per_dimension as usize,
        tile: (pipes.tile_m as usize, pipes.tile_n as usize),
        // The tiled kernel runs about 2.1 loop iterations per inner element (tile loads, the
        // k loop and the tile loop: 33 per 16-deep tile), the naive one 1; budget 3 and 2 (a
        // 29 900-deep block at 2 per element still came out wrong on lavapipe).
        max_inner: limits.max_loop_iterations.map_or(usize::MAX, |cap| {
            let per = if kernel == GemmKernel::Tiled { 3 } else { 2 };
            ((cap as usize).saturating_sub(200) / per).max(TILE_K as usize)
        }),
    };
    plan_blocks(op, (m, n, k), &space)
        .map(Plan::Buffers)
        .map_err(|(operand, cols)| Error::ExceedsLimit {
            what: format!("{name} of [{m}, {k}] and [{n}, {k}]: one row of {operand} (bytes)"),
            requested: cols as u64 * 4,
            limit_name: "max_storage_buffer_binding_size",
            limit: space.binding.saturating_sub(space.align - 4),
            largest_batch: None,
        })
}

/// What a plan must respect: binding size and alignment, dispatch size, the kernel's tile.
pub(super) struct Space {
    pub(super) binding: u64,
    pub(super) align: u64,
    pub(super) max_groups: usize,
    pub(super) tile: (usize, usize),
    /// Longest inner dimension one dispatch may run (the driver's loop cap; else unbounded).
    pub(super) max_inner: usize,
}

/// Splits the product of shape (m, n, inner) into blocks whose windows fit `space`. On failure,
/// names the operand whose single row does not fit and its width. A `Gpu` capped below the
/// size its matrices were made under can get here.
pub(super) fn plan_blocks(
    op: &GemmParams,
    (m, n, k): (usize, usize, usize),
    space: &Space,
) -> std::result::Result<Vec<Block>, (&'static str, usize)> {
    let Space {
        binding,
        align,
        max_groups,
        tile: (tile_m, tile_n),
        max_inner,
    } = *space;
    let rows_a = rows_per_window(k, binding, align);
    let rows_c = rows_per_window(n, binding, align);
    if rows_a == 0 {
        return Err(("A", k));
    }
    if rows_c == 0 {
        return Err(("C", n));
    }
    let m_step = rows_a.min(rows_c).min(max_groups * tile_m);
    // For A·Bᵀ the rows of B run along n; for A·B along the inner dimension. The inner
    // dimension is also split where the driver caps loop iterations.
    let (n_step, k_step) = match op.product {
        Product::ABt => (rows_a.min(max_groups * tile_n), k.min(max_inner)),
        Product::AB => (max_groups * tile_n, rows_c.min(max_inner)),
    };

    let mut blocks = Vec::new();
    for &(m0, m1) in &ranges(m, m_step) {
        for &(n0, n1) in &ranges(n, n_step) {
            for &(k0, k1) in &ranges(k, k_step.max(1)) {
                let (aw, bw, cw) = match op.product {
                    Product::ABt => (
                        window(k, m0, m1, align),
                        window(k, n0, n1, align),
                        window(n, m0, m1, align),
                    ),
                    Product::AB => (
                        window(k, m0, m1, align),
                        window(n, k0, k1, align),
                        window(n, m0, m1, align),
                    ),
                };
                let (a_col, b_col) = match op.product {
                    Product::ABt => (k0, k0),
                    Product::AB => (k0, n0),
                };
                let (bm, bn) = (m1 - m0, n1 - n0);
                blocks.push(Block {
                    params: BlockParams {
                        m: bm as u32,
                        n: bn as u32,
                        k: (k1 - k0) as u32,
                        lda: k as u32,
                        ldb: match op.product {
                            Product::ABt => k as u32,
                            Product::AB => n as u32,
                        },
                        ldc: n as u32,
                        a_offset: aw.first + a_col as u32,
                        b_offset: bw.first + b_col as u32,
                        c_offset: cw.first + n0 as u32,
                        alpha: op.alpha,
                        // Later blocks of a split inner dimension accumulate onto the first.
                        beta: if k0 == 0 { op.beta } else { 1.0 },
                        a_layer_shift: 0,
                        b_layer_shift: 0,
                        symmetric: 0,
                        _pad: [0; 2],
                    },
                    a: aw,
                    b: bw,
                    c: cw,
                    groups: (bn.div_ceil(tile_n) as u32, bm.div_ceil(tile_m) as u32),
                });
            }
        }
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::reference;

    /// Runs a plan on the CPU exactly as the shader indexes its bindings, checking every window
    /// against the space's binding size, alignment and dispatch limits.
    fn simulate(
        op: &GemmParams,
        blocks: &[Block],
        space: &Space,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
    ) {
        let slice = |w: Window| {
            assert_eq!(w.offset % space.align, 0, "unaligned window");
            assert!(
                w.size <= space.binding,
                "window of {} B over the binding",
                w.size
            );
            (w.offset / 4) as usize..((w.offset + w.size) / 4) as usize
        };
        for blk in blocks {
            let p = blk.params;
            let (aw, bw, cw) = (slice(blk.a), slice(blk.b), slice(blk.c));
            assert!(blk.groups.0 as usize <= space.max_groups);
            assert!(blk.groups.1 as usize <= space.max_groups);
            assert!(blk.groups.0 as usize * space.tile.1 >= p.n as usize);
            assert!(blk.groups.1 as usize * space.tile.0 >= p.m as usize);
            let (a, b) = (&a[aw], &b[bw]);
            let c = &mut c[cw];
            for i in 0..p.m {
                for j in 0..p.n {
                    let mut acc = 0.0f32;
                    for kk in 0..p.k {
                        let bv = match op.product {
                            Product::ABt => b[(p.b_offset + j * p.ldb + kk) as usize],
                            Product::AB => b[(p.b_offset + kk * p.ldb + j) as usize],
                        };
                        acc += a[(p.a_offset + i * p.lda + kk) as usize] * bv;
                    }
                    let idx = (p.c_offset + i * p.ldc + j) as usize;
                    let mut v = p.alpha * acc;
                    if p.beta != 0.0 {
                        v += p.beta * c[idx];
                    }
                    c[idx] = v;
                }
            }
        }
    }

    fn values(len: usize, salt: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + salt * 104_729) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// Tiny limits force splits along m, n and the inner dimension at unaligned rows; the
    /// simulated result must equal the reference (NaN in C must not leak with beta = 0).
    #[test]
    fn plans_split_every_dimension_and_compute_the_product() {
        let space = Space {
            binding: 1024,
            align: 64,
            max_groups: 2,
            tile: (4, 8),
            max_inner: 23,
        };
        for product in [Product::ABt, Product::AB] {
            for (m, n, k) in [(37usize, 61usize, 29usize), (5, 40, 200), (1, 1, 1)] {
                for beta in [0.0f32, 0.5] {
                    let op = GemmParams {
                        product,
                        ..GemmParams::abt()
                    }
                    .alpha(1.5)
                    .beta(beta);
                    let blocks = plan_blocks(&op, (m, n, k), &space).unwrap();
                    if m * n > 1 {
                        assert!(blocks.len() > 1, "{product:?} {m}×{n}×{k} not split");
                    }
                    let a = values(m * k, 1);
                    let b = values(n * k, 2);
                    let c0 = if beta == 0.0 {
                        vec![f32::NAN; m * n]
                    } else {
                        values(m * n, 3)
                    };
                    let mut c = c0.clone();
                    simulate(&op, &blocks, &space, &a, &b, &mut c);
                    let want = reference::gemm(product, m, n, k, 1.5, &a, &b, beta as f64, &c0);
                    for (g, w) in c.iter().zip(&want) {
                        assert!(
                            (*g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "{product:?} {m}×{n}×{k}: {g} vs {w}"
                        );
                    }
                }
            }
        }
        // A·B with n beyond max_groups·tile_n splits n, shifting B's and C's column offsets.
        let op = GemmParams::ab();
        let blocks = plan_blocks(&op, (3, 40, 2), &space).unwrap();
        assert!(blocks.iter().any(|b| b.params.c_offset % 40 != 0));
    }

    #[test]
    fn a_row_wider_than_the_binding_names_the_operand() {
        let space = Space {
            binding: 256,
            align: 64,
            max_groups: 100,
            tile: (8, 8),
            max_inner: usize::MAX,
        };
        assert_eq!(
            plan_blocks(&GemmParams::abt(), (4, 4, 100), &space).err(),
            Some(("A", 100))
        );
        assert_eq!(
            plan_blocks(&GemmParams::ab(), (4, 100, 4), &space).err(),
            Some(("C", 100))
        );
    }
}
