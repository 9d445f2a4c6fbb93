// Dense matrix products, row-major storage, f32 with f32 accumulation.
//
//   gemm        C = alpha·A·op(B) + beta·C   tiled: workgroup-memory tiles + register blocking;
//               for the Gram matrix (A = B, C whole) the tiles on and above the diagonal only,
//               each stored also transposed (half the work: at K = 16 384 the Gram is 4× the
//               correlations of a 4096-sample batch)
//   gemm_naive  the same, one output per invocation straight from global memory (bench baseline)
//   gemm_texel  C = alpha·A·Bᵀ + beta·C with A and B read as textures (pack_texels) and an 8×8
//               register block per invocation, no workgroup memory: the kernel for CPU adapters
//               (llvmpipe), which load storage and workgroup memory lane by lane through the
//               stack (a store-forwarding stall per element: 16 per inner step, 70 % of the
//               tiled kernel's time under perf) but fetch texels with unrolled gathers.
//               For the Gram matrix (A = B, one block) it computes the upper blocks only and
//               stores each twice (Gram 1.25× faster on lavapipe: the stores, lane by lane, stay).
//               On llvmpipe with 8-wide subgroups, gemm_texel_subgroup (gemm_subgroup.wgsl)
//               does the same with each A texel fetched once per subgroup, and
//               gemm_texel_subgroup_tall likewise in 32×4 blocks for products not symmetric.
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
    // gemm_texel and pack_texels: row r of A's (B's) texture is row r & (2^shift − 1) of layer
    // r >> shift. There a_offset and b_offset are the first rows of A and B in their textures;
    // pack_texels packs m rows of k columns from element a_offset of `a` into texture rows from
    // c_offset on.
    a_layer_shift: u32,
    b_layer_shift: u32,
    // A = B (the Gram matrix) and a block spanning all of C: only the blocks (gemm_texel's 8×8,
    // gemm's square tiles) on and above the diagonal are computed, each also stored transposed
    // below it (half the work).
    symmetric: u32,
    _pad1: vec2<u32>,
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

// A symmetric product's mirrored 8×8 block: C[col + j, row + i] = C[row + i, col + j], the block
// at (row, col) held as blk[2i + h] = C[row + i, col + 4h .. 4h + 3].
fn store_mirrored(row: u32, col: u32, blk: array<vec4<f32>, 16>) {
    for (var j = 0u; j < 4u; j++) {
        store_row(
            col + j,
            row,
            vec4<f32>(blk[0][j], blk[2][j], blk[4][j], blk[6][j]),
            vec4<f32>(blk[8][j], blk[10][j], blk[12][j], blk[14][j]),
        );
        store_row(
            col + 4u + j,
            row,
            vec4<f32>(blk[1][j], blk[3][j], blk[5][j], blk[7][j]),
            vec4<f32>(blk[9][j], blk[11][j], blk[13][j], blk[15][j]),
        );
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
    // Symmetric: a tile below the diagonal is the mirror of one above it (tiles are square).
    // Uniform across the workgroup, so no invocation misses the barriers below.
    if params.symmetric != 0u && wid.y > wid.x {
        return;
    }

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
    if params.symmetric != 0u && wid.y < wid.x {
        store_mirrored(row, col, array<vec4<f32>, 16>(acc0_0, acc0_1, acc1_0, acc1_1, acc2_0,
            acc2_1, acc3_0, acc3_1, acc4_0, acc4_1, acc5_0, acc5_1, acc6_0, acc6_1, acc7_0, acc7_1));
    }
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

// ---------------------------------------------------------------------------------------------
// Texture-fed A·Bᵀ (see the header). Texel (q, row) of a texture holds columns 4q .. 4q + 3 of a
// row, zero past k, so the inner loop runs over whole texels without bounds checks. Both are
// read-only storage textures rather than sampled ones, as every texture dbksvd reads: llvmpipe's
// sampled textureLoad looks up each lane's mip level and its strides, where a storage texture has
// one level (the 32 × 4 product 1.18× faster at [4096, 384]·[384, 1536]).

@group(0) @binding(4) var a_tex: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(5) var b_tex: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(6) var texels_out: texture_storage_2d_array<rgba32float, write>;

// Invocations per texel-kernel workgroup along n (x) and m (y); each owns an 8×8 block of C
// (gemm_texel_subgroup_tall: 32×4).
override TX: u32 = 8u;
override TY: u32 = 8u;

fn texel_at(shift: u32, row: u32) -> vec2<u32> {
    return vec2<u32>(row & ((1u << shift) - 1u), row >> shift);
}

fn fetch_a(q: u32, at: vec2<u32>) -> vec4<f32> {
    return textureLoad(a_tex, vec2<u32>(q, at.x), at.y);
}

fn fetch_b(q: u32, at: vec2<u32>) -> vec4<f32> {
    return textureLoad(b_tex, vec2<u32>(q, at.x), at.y);
}

fn dots(a: vec4<f32>, b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(dot(a, b0), dot(a, b1), dot(a, b2), dot(a, b3));
}

// The texture places of B's 8 rows from `col`, clamped to the last (sums of columns past n
// are discarded at the store).
struct BRows {
    r0: vec2<u32>,
    r1: vec2<u32>,
    r2: vec2<u32>,
    r3: vec2<u32>,
    r4: vec2<u32>,
    r5: vec2<u32>,
    r6: vec2<u32>,
    r7: vec2<u32>,
}

fn b_rows(col: u32) -> BRows {
    let s = params.b_layer_shift;
    let ln = params.n - 1u;
    let at = params.b_offset;
    return BRows(texel_at(s, at + min(col, ln)), texel_at(s, at + min(col + 1u, ln)),
        texel_at(s, at + min(col + 2u, ln)), texel_at(s, at + min(col + 3u, ln)),
        texel_at(s, at + min(col + 4u, ln)), texel_at(s, at + min(col + 5u, ln)),
        texel_at(s, at + min(col + 6u, ln)), texel_at(s, at + min(col + 7u, ln)));
}

// An invocation's 8×8 block of C (rows r in blk[2r], blk[2r + 1]), and for a symmetric
// product above the diagonal its mirror image below.
fn store_block(row: u32, col: u32, above_diagonal: bool, blk: array<vec4<f32>, 16>) {
    store_row(row + 0u, col, blk[0], blk[1]);
    store_row(row + 1u, col, blk[2], blk[3]);
    store_row(row + 2u, col, blk[4], blk[5]);
    store_row(row + 3u, col, blk[6], blk[7]);
    store_row(row + 4u, col, blk[8], blk[9]);
    store_row(row + 5u, col, blk[10], blk[11]);
    store_row(row + 6u, col, blk[12], blk[13]);
    store_row(row + 7u, col, blk[14], blk[15]);
    if params.symmetric != 0u && above_diagonal {
        store_mirrored(row, col, blk);
    }
}

@compute @workgroup_size(TX, TY, 1)
fn gemm_texel(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = 8u * gid.y;
    let col = 8u * gid.x;
    if row >= params.m || col >= params.n || (params.symmetric != 0u && gid.y > gid.x) {
        return;
    }
    // Rows past m or n are clamped to the last (their sums are discarded at the store).
    let lm = params.m - 1u;
    let sa = params.a_layer_shift;
    let a0 = texel_at(sa, params.a_offset + min(row, lm));
    let a1 = texel_at(sa, params.a_offset + min(row + 1u, lm));
    let a2 = texel_at(sa, params.a_offset + min(row + 2u, lm));
    let a3 = texel_at(sa, params.a_offset + min(row + 3u, lm));
    let a4 = texel_at(sa, params.a_offset + min(row + 4u, lm));
    let a5 = texel_at(sa, params.a_offset + min(row + 5u, lm));
    let a6 = texel_at(sa, params.a_offset + min(row + 6u, lm));
    let a7 = texel_at(sa, params.a_offset + min(row + 7u, lm));
    let b = b_rows(col);

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
    let texels = (params.k + 3u) / 4u;
    for (var q = 0u; q < texels; q++) {
        let vb0 = fetch_b(q, b.r0);
        let vb1 = fetch_b(q, b.r1);
        let vb2 = fetch_b(q, b.r2);
        let vb3 = fetch_b(q, b.r3);
        let vb4 = fetch_b(q, b.r4);
        let vb5 = fetch_b(q, b.r5);
        let vb6 = fetch_b(q, b.r6);
        let vb7 = fetch_b(q, b.r7);
        var va = fetch_a(q, a0);
        acc0_0 += dots(va, vb0, vb1, vb2, vb3);
        acc0_1 += dots(va, vb4, vb5, vb6, vb7);
        va = fetch_a(q, a1);
        acc1_0 += dots(va, vb0, vb1, vb2, vb3);
        acc1_1 += dots(va, vb4, vb5, vb6, vb7);
        va = fetch_a(q, a2);
        acc2_0 += dots(va, vb0, vb1, vb2, vb3);
        acc2_1 += dots(va, vb4, vb5, vb6, vb7);
        va = fetch_a(q, a3);
        acc3_0 += dots(va, vb0, vb1, vb2, vb3);
        acc3_1 += dots(va, vb4, vb5, vb6, vb7);
        va = fetch_a(q, a4);
        acc4_0 += dots(va, vb0, vb1, vb2, vb3);
        acc4_1 += dots(va, vb4, vb5, vb6, vb7);
        va = fetch_a(q, a5);
        acc5_0 += dots(va, vb0, vb1, vb2, vb3);
        acc5_1 += dots(va, vb4, vb5, vb6, vb7);
        va = fetch_a(q, a6);
        acc6_0 += dots(va, vb0, vb1, vb2, vb3);
        acc6_1 += dots(va, vb4, vb5, vb6, vb7);
        va = fetch_a(q, a7);
        acc7_0 += dots(va, vb0, vb1, vb2, vb3);
        acc7_1 += dots(va, vb4, vb5, vb6, vb7);
    }
    store_block(row, col, gid.y < gid.x, array<vec4<f32>, 16>(acc0_0, acc0_1, acc1_0, acc1_1,
        acc2_0, acc2_1, acc3_0, acc3_1, acc4_0, acc4_1, acc5_0, acc5_1, acc6_0, acc6_1, acc7_0,
        acc7_1));
}

// One texel per invocation: columns 4q .. 4q + 3 of row r < m (zero past k), from element
// a_offset + r·lda + 4q of `a`, to texture row c_offset + r.
@compute @workgroup_size(64)
fn pack_texels(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let width = (params.k + 3u) / 4u;
    let i = gid.y * groups.x * 64u + gid.x;
    if i >= params.m * width {
        return;
    }
    let r = i / width;
    let c = 4u * (i - r * width);
    let src = params.a_offset + r * params.lda + c;
    var v = vec4<f32>();
    for (var j = 0u; j < 4u; j++) {
        if c + j < params.k {
            v[j] = a[src + j];
        }
    }
    let at = texel_at(params.a_layer_shift, params.c_offset + r);
    textureStore(texels_out, vec2<u32>(c / 4u, at.x), at.y, v);
}
