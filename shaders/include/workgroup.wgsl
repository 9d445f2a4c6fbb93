// Helpers shared by the kernel families whose workgroups are one-dimensional (power.wgsl,
// reduce.wgsl, sparse.wgsl, split.wgsl). Not a shader of its own: a shader whose first line is
// `// include: workgroup.wgsl` is compiled with this file prepended (the host module's `SHADER`
// is `concat!` of the two `include_str!`s), and tests/shaders.rs validates it the same way.

// Invocations per workgroup (the host sets it per pipeline).
override WG: u32 = 64u;

var<workgroup> red: array<f32, WG>;

// Σ x over the workgroup, returned to every invocation; every invocation must call it.
fn wg_sum(lid: u32, x: f32) -> f32 {
    red[lid] = x;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lid < half {
            red[lid] += red[lid + half];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

// wg_argmax's indices, paired with `red`.
var<workgroup> red_idx: array<u32, WG>;

struct ArgMax {
    value: f32,
    index: u32,
}

// The largest `value` over the workgroup and its `index`, returned to every invocation; among
// equal values the lower index wins when `lower_wins`, else the higher. Every invocation must
// call it.
fn wg_argmax(lid: u32, value: f32, index: u32, lower_wins: bool) -> ArgMax {
    red[lid] = value;
    red_idx[lid] = index;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lid < half {
            let o = red[lid + half];
            let oi = red_idx[lid + half];
            let tie = select(oi > red_idx[lid], oi < red_idx[lid], lower_wins);
            if o > red[lid] || (o == red[lid] && tie) {
                red[lid] = o;
                red_idx[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let best = ArgMax(red[0], red_idx[0]);
    workgroupBarrier();
    return best;
}

// Index of this workgroup in a grid of groups.x × groups.y (dispatches wider than the
// per-dimension limit wrap into y).
fn linear_group(wid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return wid.y * groups.x + wid.x;
}

// Texel f of a matrix copied flat into a texture by the host (`buffer::copy_flat`): rows of 64
// texels, layers of 2^shift rows. A read-only storage texture, not a sampled one: see the texel
// GEMM in gemm.wgsl (power_partial_resident and residual_from_codes_texels about 1.2× faster).
fn flat_texel(tex: texture_storage_2d_array<rgba32float, read>, f: u32, shift: u32) -> vec4<f32> {
    let at = flat_place(f, shift);
    return textureLoad(tex, at.xy, at.z);
}

// Where texel f of a flat copy lies: (column, row in its layer, layer).
fn flat_place(f: u32, shift: u32) -> vec3<u32> {
    let row = f >> 6u;
    return vec3<u32>(f & 63u, row & ((1u << shift) - 1u), row >> shift);
}
