// extends: gemm.wgsl
// (needs subgroup operations; the host builds it on CPU adapters whose subgroups are TX wide)
//
// gemm_texel with A's texels shared across the subgroup. In gemm_texel the TX invocations of a
// workgroup row own neighbouring 8×8 blocks of C in the same 8 rows, so each fetches the same
// 8 A texels per step of the inner dimension. Here lane r fetches row r's texel once and the
// subgroup passes it round with subgroupShuffle: 9 texel fetches per step instead of 16. On
// llvmpipe, where each fetch is a gather across the lanes and fetches are most of the kernel's
// time, the products run about 1.3–1.4× faster. The sums are gemm_texel's, in its order, so
// both give the same bits. The accumulators and the inner loop are written out as in
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
