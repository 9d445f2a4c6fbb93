// extends: gemm.wgsl
// (needs subgroup operations; the host builds it on llvmpipe with TX-wide subgroups)
//
// gemm_texel with A's texels shared across the subgroup. In gemm_texel the TX invocations of a
// workgroup row own neighbouring 8×8 blocks of C in the same 8 rows, so each fetches the same
// 8 A texels per step of the inner dimension. Here lane r fetches row r's texel once and the
// subgroup passes it round with subgroupShuffle: 9 texel fetches per step instead of 16. On
// llvmpipe, where each fetch is a gather across the lanes and fetches are most of the kernel's
// time, the products run about 1.3–1.4× faster. gemm_texel_subgroup_tall (below) takes blocks
// of 32 rows by 4 columns for products that are not symmetric: 4 fetches per 64 sums, the
// correlations a further 1.2 × 1.24 ≈ 1.5× faster. The sums are gemm_texel's, in its order, so all give the
// same bits. The accumulators and the inner loop are written out as in
// gemm_texel rather than shared over arrays: llvmpipe ran that form about 10 % slower.

@compute @workgroup_size(TX, TY, 1)
fn gemm_texel_subgroup(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let row = 8u * gid.y;
    let col = 8u * gid.x;
    // The invocation's lane: a subgroup is one row of the workgroup (TX = the subgroup size).
    let lane = lid.x;
    // Only whole workgroups leave early (outside C, or wholly below the diagonal of a symmetric
    // product, which is wid.y > wid.x because TX = TY): the shuffles need every lane of the
    // subgroup.
    if 8u * TY * wid.y >= params.m || 8u * TX * wid.x >= params.n
        || (params.symmetric != 0u && wid.y > wid.x) {
        return;
    }
    let skip = row >= params.m || col >= params.n || (params.symmetric != 0u && gid.y > gid.x);
    // Rows past m or n are clamped to the last (their sums are discarded at the store).
    let lm = params.m - 1u;
    let sa = params.a_layer_shift;
    // Lane r fetches A's row `row + r` once per texel for the whole subgroup.
    let my_a = texel_at(sa, params.a_offset + min(row + lane, lm));
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
        let mine = fetch_a(q, my_a);
        var va = subgroupShuffle(mine, 0u);
        acc0_0 += dots(va, vb0, vb1, vb2, vb3);
        acc0_1 += dots(va, vb4, vb5, vb6, vb7);
        va = subgroupShuffle(mine, 1u);
        acc1_0 += dots(va, vb0, vb1, vb2, vb3);
        acc1_1 += dots(va, vb4, vb5, vb6, vb7);
        va = subgroupShuffle(mine, 2u);
        acc2_0 += dots(va, vb0, vb1, vb2, vb3);
        acc2_1 += dots(va, vb4, vb5, vb6, vb7);
        va = subgroupShuffle(mine, 3u);
        acc3_0 += dots(va, vb0, vb1, vb2, vb3);
        acc3_1 += dots(va, vb4, vb5, vb6, vb7);
        va = subgroupShuffle(mine, 4u);
        acc4_0 += dots(va, vb0, vb1, vb2, vb3);
        acc4_1 += dots(va, vb4, vb5, vb6, vb7);
        va = subgroupShuffle(mine, 5u);
        acc5_0 += dots(va, vb0, vb1, vb2, vb3);
        acc5_1 += dots(va, vb4, vb5, vb6, vb7);
        va = subgroupShuffle(mine, 6u);
        acc6_0 += dots(va, vb0, vb1, vb2, vb3);
        acc6_1 += dots(va, vb4, vb5, vb6, vb7);
        va = subgroupShuffle(mine, 7u);
        acc7_0 += dots(va, vb0, vb1, vb2, vb3);
        acc7_1 += dots(va, vb4, vb5, vb6, vb7);
    }
    if skip {
        return;
    }
    store_block(row, col, gid.y < gid.x, array<vec4<f32>, 16>(acc0_0, acc0_1, acc1_0, acc1_1,
        acc2_0, acc2_1, acc3_0, acc3_1, acc4_0, acc4_1, acc5_0, acc5_1, acc6_0, acc6_1, acc7_0,
        acc7_1));
}

// One row of 4 columns of C from col0 (the tall kernel's part of a row).
fn store_cols4(row: u32, col0: u32, v: vec4<f32>) {
    if row >= params.m {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        if col0 + j < params.n {
            store_c(row, col0 + j, v[j]);
        }
    }
}

// The same for a product that is not symmetric, each invocation owning a block of 32 rows by 4
// columns instead of 8 by 8: the subgroup's 32 A rows come in four fetches per lane and the
// invocation's 4 B rows in four, 8 texel fetches per inner step for 128 sums (4 per 64 sums;
// gemm_texel_subgroup: 9). On llvmpipe 16 × 4 blocks (6 fetches per 64 sums) made the
// correlations 1.2× faster than gemm_texel_subgroup, 32 × 4 a further 1.24×, and 64 × 4 no
// more. Each sum is the same as gemm_texel's, added in the same order.
@compute @workgroup_size(TX, TY, 1)
fn gemm_texel_subgroup_tall(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let row = 32u * gid.y;
    let col = 4u * gid.x;
    let lane = lid.x;
    if 32u * TY * wid.y >= params.m || 4u * TX * wid.x >= params.n {
        return;
    }
    let skip = row >= params.m || col >= params.n;
    let lm = params.m - 1u;
    let sa = params.a_layer_shift;
    let my_a0 = texel_at(sa, params.a_offset + min(row + 0u + lane, lm));
    let my_a1 = texel_at(sa, params.a_offset + min(row + 8u + lane, lm));
    let my_a2 = texel_at(sa, params.a_offset + min(row + 16u + lane, lm));
    let my_a3 = texel_at(sa, params.a_offset + min(row + 24u + lane, lm));
    // Only b.r0 .. b.r3 are read (the compiler drops the rest).
    let b = b_rows(col);
    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    var acc4 = vec4<f32>();
    var acc5 = vec4<f32>();
    var acc6 = vec4<f32>();
    var acc7 = vec4<f32>();
    var acc8 = vec4<f32>();
    var acc9 = vec4<f32>();
    var acc10 = vec4<f32>();
    var acc11 = vec4<f32>();
    var acc12 = vec4<f32>();
    var acc13 = vec4<f32>();
    var acc14 = vec4<f32>();
    var acc15 = vec4<f32>();
    var acc16 = vec4<f32>();
    var acc17 = vec4<f32>();
    var acc18 = vec4<f32>();
    var acc19 = vec4<f32>();
    var acc20 = vec4<f32>();
    var acc21 = vec4<f32>();
    var acc22 = vec4<f32>();
    var acc23 = vec4<f32>();
    var acc24 = vec4<f32>();
    var acc25 = vec4<f32>();
    var acc26 = vec4<f32>();
    var acc27 = vec4<f32>();
    var acc28 = vec4<f32>();
    var acc29 = vec4<f32>();
    var acc30 = vec4<f32>();
    var acc31 = vec4<f32>();
    let texels = (params.k + 3u) / 4u;
    for (var q = 0u; q < texels; q++) {
        let vb0 = fetch_b(q, b.r0);
        let vb1 = fetch_b(q, b.r1);
        let vb2 = fetch_b(q, b.r2);
        let vb3 = fetch_b(q, b.r3);
        let m0 = fetch_a(q, my_a0);
        let m1 = fetch_a(q, my_a1);
        let m2 = fetch_a(q, my_a2);
        let m3 = fetch_a(q, my_a3);
        var va = subgroupShuffle(m0, 0u);
        acc0 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m0, 1u);
        acc1 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m0, 2u);
        acc2 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m0, 3u);
        acc3 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m0, 4u);
        acc4 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m0, 5u);
        acc5 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m0, 6u);
        acc6 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m0, 7u);
        acc7 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m1, 0u);
        acc8 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m1, 1u);
        acc9 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m1, 2u);
        acc10 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m1, 3u);
        acc11 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m1, 4u);
        acc12 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m1, 5u);
        acc13 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m1, 6u);
        acc14 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m1, 7u);
        acc15 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m2, 0u);
        acc16 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m2, 1u);
        acc17 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m2, 2u);
        acc18 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m2, 3u);
        acc19 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m2, 4u);
        acc20 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m2, 5u);
        acc21 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m2, 6u);
        acc22 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m2, 7u);
        acc23 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m3, 0u);
        acc24 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m3, 1u);
        acc25 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m3, 2u);
        acc26 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m3, 3u);
        acc27 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m3, 4u);
        acc28 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m3, 5u);
        acc29 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m3, 6u);
        acc30 += dots(va, vb0, vb1, vb2, vb3);
        va = subgroupShuffle(m3, 7u);
        acc31 += dots(va, vb0, vb1, vb2, vb3);
    }
    if skip {
        return;
    }
    store_cols4(row + 0u, col, acc0);
    store_cols4(row + 1u, col, acc1);
    store_cols4(row + 2u, col, acc2);
    store_cols4(row + 3u, col, acc3);
    store_cols4(row + 4u, col, acc4);
    store_cols4(row + 5u, col, acc5);
    store_cols4(row + 6u, col, acc6);
    store_cols4(row + 7u, col, acc7);
    store_cols4(row + 8u, col, acc8);
    store_cols4(row + 9u, col, acc9);
    store_cols4(row + 10u, col, acc10);
    store_cols4(row + 11u, col, acc11);
    store_cols4(row + 12u, col, acc12);
    store_cols4(row + 13u, col, acc13);
    store_cols4(row + 14u, col, acc14);
    store_cols4(row + 15u, col, acc15);
    store_cols4(row + 16u, col, acc16);
    store_cols4(row + 17u, col, acc17);
    store_cols4(row + 18u, col, acc18);
    store_cols4(row + 19u, col, acc19);
    store_cols4(row + 20u, col, acc20);
    store_cols4(row + 21u, col, acc21);
    store_cols4(row + 22u, col, acc22);
    store_cols4(row + 23u, col, acc23);
    store_cols4(row + 24u, col, acc24);
    store_cols4(row + 25u, col, acc25);
    store_cols4(row + 26u, col, acc26);
    store_cols4(row + 27u, col, acc27);
    store_cols4(row + 28u, col, acc28);
    store_cols4(row + 29u, col, acc29);
    store_cols4(row + 30u, col, acc30);
    store_cols4(row + 31u, col, acc31);
}
