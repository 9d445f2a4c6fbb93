// Dense matrix products, row-major storage, f32 with f32 accumulation.
//
//   gemm        C = alpha·A·op(B) + beta·C   tiled: workgroup-memory tiles + register blocking
//   gemm_naive  the same, one output per invocation straight from global memory (bench baseline)
//
// op(B) = Bᵀ when B_TRANSPOSED (Gram D·Dᵀ, correlations Y·Dᵀ), else B.
// A is m×k, op(B) is k×n, C is m×n. The host binds row windows of larger matrices and passes
// row strides and element offsets, so a product can be split into blocks that each fit a binding.
// With beta == 0, C is never read: stale NaNs in C must not leak into the result.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    // Row strides in elements.
    lda: u32,
    ldb: u32,
    ldc: u32,
    // First element of this block inside each binding (row-window start slack + column offset).
    a_offset: u32,
    b_offset: u32,
    c_offset: u32,
    alpha: f32,
    beta: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

// Invocations along n (x) and m (y).
override WG_X: u32 = 16u;
override WG_Y: u32 = 16u;
// Depth of one workgroup-memory tile along the inner dimension.
override TILE_K: u32 = 16u;
override B_TRANSPOSED: bool = true;

// Register block: each invocation owns an 8×8 block of C, rows 8·ty.. and columns 8·tx.., held in
// sixteen vec4 accumulators (row i: acc_i_0 for columns 0..3, acc_i_1 for 4..7) so no private
// array needs dynamic indexing. Eight-by-eight keeps the ratio of workgroup-memory loads to
// multiply-adds at 1:4; on software rasterisers (lavapipe), where every per-invocation load of
// shared memory is a scalar gather, that ratio decides the speed. The tile is (8·WG_Y) × (8·WG_X).
override A_TILE_VECS: u32 = 2u * TILE_K * WG_Y;
override B_TILE_VECS: u32 = 2u * TILE_K * WG_X;

// Tiles are k-major: a_tile[2·(kk·WG_Y + ty) + h] holds A[8·ty + 4·h .. +3, kk] of the tile, and
// b_tile[2·(kk·WG_X + tx) + h] holds op(B)[kk, 8·tx + 4·h .. +3].
var<workgroup> a_tile: array<vec4<f32>, A_TILE_VECS>;
var<workgroup> b_tile: array<vec4<f32>, B_TILE_VECS>;

fn load_b(col: u32, kk: u32) -> f32 {
    if B_TRANSPOSED {
        return b[params.b_offset + col * params.ldb + kk];
    }
    return b[params.b_offset + kk * params.ldb + col];
}

fn store_c(row: u32, col: u32, acc: f32) {
    let idx = params.c_offset + row * params.ldc + col;
    var v = params.alpha * acc;
    if params.beta != 0.0 {
        v += params.beta * c[idx];
    }
    c[idx] = v;
}

fn store_row(row: u32, col0: u32, lo: vec4<f32>, hi: vec4<f32>) {
    if row >= params.m {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        if col0 + j < params.n {
            store_c(row, col0 + j, lo[j]);
        }
        if col0 + 4u + j < params.n {
            store_c(row, col0 + 4u + j, hi[j]);
        }
    }
}

@compute @workgroup_size(WG_X, WG_Y, 1)
fn gemm(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let tx = lid.x;
    let ty = lid.y;
    let tid = ty * WG_X + tx;
    let threads = WG_X * WG_Y;
    // The tile is derived, not an override of its own, so it cannot disagree with the
    // workgroup shape.
    let tile_m = 8u * WG_Y;
    let tile_n = 8u * WG_X;
    let row0 = wid.y * tile_m;
    let col0 = wid.x * tile_n;

    var acc0_0 = vec4<f32>();
    var acc0_1 = vec4<f32>();
    var acc1_0 = vec4<f32>();
    var acc1_1 = vec4<f32>();
    var acc2_0 = vec4<f32>();
    var acc2_1 = vec4<f32>();
    var acc3_0 = vec4<f32>();
    var acc3_1 = vec4<f32>();
    var acc4_0 = vec4<f32>();
    var acc4_1 = vec4<f32>();
    var acc5_0 = vec4<f32>();
    var acc5_1 = vec4<f32>();
    var acc6_0 = vec4<f32>();
    var acc6_1 = vec4<f32>();
    var acc7_0 = vec4<f32>();
    var acc7_1 = vec4<f32>();

    for (var k0 = 0u; k0 < params.k; k0 += TILE_K) {
        // A tile: consecutive invocations read consecutive k of one row (contiguous in A).
        for (var e = tid; e < tile_m * TILE_K; e += threads) {
            let r = e / TILE_K;
            let kk = e % TILE_K;
            let gr = row0 + r;
            let gk = k0 + kk;
            var v = 0.0;
            if gr < params.m && gk < params.k {
                v = a[params.a_offset + gr * params.lda + gk];
            }
            a_tile[2u * (kk * WG_Y + r / 8u) + (r % 8u) / 4u][r % 4u] = v;
        }
        // B tile: read along whichever index is contiguous in memory.
        for (var e = tid; e < tile_n * TILE_K; e += threads) {
            var col: u32;
            var kk: u32;
            if B_TRANSPOSED {
                col = e / TILE_K;
                kk = e % TILE_K;
            } else {
                kk = e / tile_n;
                col = e % tile_n;
            }
            let gc = col0 + col;
            let gk = k0 + kk;
            var v = 0.0;
            if gc < params.n && gk < params.k {
                v = load_b(gc, gk);
            }
            b_tile[2u * (kk * WG_X + col / 8u) + (col % 8u) / 4u][col % 4u] = v;
        }
        workgroupBarrier();

        for (var kk = 0u; kk < TILE_K; kk++) {
            let a0 = a_tile[2u * (kk * WG_Y + ty)];
            let a1 = a_tile[2u * (kk * WG_Y + ty) + 1u];
            let b0 = b_tile[2u * (kk * WG_X + tx)];
            let b1 = b_tile[2u * (kk * WG_X + tx) + 1u];
            acc0_0 += a0.x * b0;
            acc0_1 += a0.x * b1;
            acc1_0 += a0.y * b0;
            acc1_1 += a0.y * b1;
            acc2_0 += a0.z * b0;
            acc2_1 += a0.z * b1;
            acc3_0 += a0.w * b0;
            acc3_1 += a0.w * b1;
            acc4_0 += a1.x * b0;
            acc4_1 += a1.x * b1;
            acc5_0 += a1.y * b0;
            acc5_1 += a1.y * b1;
            acc6_0 += a1.z * b0;
            acc6_1 += a1.z * b1;
            acc7_0 += a1.w * b0;
            acc7_1 += a1.w * b1;
        }
        workgroupBarrier();
    }

    let row = row0 + 8u * ty;
    let col = col0 + 8u * tx;
    store_row(row + 0u, col, acc0_0, acc0_1);
    store_row(row + 1u, col, acc1_0, acc1_1);
    store_row(row + 2u, col, acc2_0, acc2_1);
    store_row(row + 3u, col, acc3_0, acc3_1);
    store_row(row + 4u, col, acc4_0, acc4_1);
    store_row(row + 5u, col, acc5_0, acc5_1);
    store_row(row + 6u, col, acc6_0, acc6_1);
    store_row(row + 7u, col, acc7_0, acc7_1);
}

@compute @workgroup_size(WG_X, WG_Y, 1)
fn gemm_naive(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let row = gid.y;
    if row >= params.m || col >= params.n {
        return;
    }
    var acc = 0.0;
    for (var kk = 0u; kk < params.k; kk++) {
        acc += a[params.a_offset + row * params.lda + kk] * load_b(col, kk);
    }
    store_c(row, col, acc);
}
