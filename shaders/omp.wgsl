// Batched sparse coding: one workgroup codes one sample, every step inside one dispatch.
//
//   omp  Batch-OMP (Rubinstein, Zibulevsky & Elad 2008): greedy selection on the correlations
//        α = D·r, kept up to date from the Gram matrix G = D·Dᵀ and a progressive Cholesky factor
//        of G[I,I]; no residual vector is formed.
//   mp   matching pursuit: α −= a·G[j,:], optional least-squares refit of the final support.
//
// The stopping rules and tie-breaking match src/reference/omp.rs; see its module comment.
//
// α starts as the sample's correlation row α⁰ = D·y and is updated in place. Each invocation owns
// the entries j ≡ lid (mod WG) and is the only one to read or write them, so no storage barrier
// is needed; values that cross invocations go through workgroup memory.
//
// Residual energy ‖r‖² = ‖y‖² − γ·α⁰[I] is a difference of nearly equal numbers once the fit is
// good, so in f32 it carries an absolute error of a few ulp of ‖y‖²: a relative tolerance below
// about 1e-6 is not meaningful. It is clamped at 0.

struct Params {
    // Samples in this dispatch; workgroup (x, y) codes sample y·num_workgroups.x + x.
    batch: u32,
    // Atoms K (the length of an α row and of a G row).
    n_atoms: u32,
    // min(k, d, K): most atoms a sample may use.
    max_atoms: u32,
    // Slots per sample in the output (k); slots past the chosen atoms get index −1, value 0.
    k: u32,
    // G is bound as up to four row blocks of this many rows each.
    g_rows_per_block: u32,
    // MP: least-squares refit of the final support (1) or not (0).
    refit: u32,
    // Stop when ‖r‖² ≤ tolerance·‖y‖²; negative disables.
    tolerance: f32,
    // Stop when max|α| ≤ min_correlation·‖y‖.
    min_correlation: f32,
    // Stop when the Cholesky pivot ≤ min_pivot·G[j,j].
    min_pivot: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    // First element of each G block inside its binding.
    g_first: vec4<u32>,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> g0: array<f32>;
@group(0) @binding(2) var<storage, read> g1: array<f32>;
@group(0) @binding(3) var<storage, read> g2: array<f32>;
@group(0) @binding(4) var<storage, read> g3: array<f32>;
// [batch, K]: α⁰ on entry, scratch afterwards.
@group(0) @binding(5) var<storage, read_write> alpha: array<f32>;
// [batch]: ‖y‖².
@group(0) @binding(6) var<storage, read> y_norm2: array<f32>;
// [batch, 2k + 1]: k atom indices (i32 bits), k coefficients (f32 bits), residual energy.
@group(0) @binding(7) var<storage, read_write> codes: array<u32>;

// Invocations per workgroup; a power of two (the argmax is a tree reduction).
override WG: u32 = 64u;
// Capacity for chosen atoms; the host builds one pipeline per capacity it needs.
override MAX_K: u32 = 32u;
// G in a single binding (the common case): no block selection per element.
override G_SINGLE_BLOCK: bool = true;
override CHOL_LEN: u32 = MAX_K * (MAX_K + 1u) / 2u;

// Chosen atoms, in order, with where each one's row of G starts: binding (block) and element.
var<workgroup> sel: array<u32, MAX_K>;
var<workgroup> sel_blk: array<u32, MAX_K>;
var<workgroup> sel_row: array<u32, MAX_K>;
// Cholesky factor L of G[I,I], lower triangle packed by rows: row i starts at i(i+1)/2.
var<workgroup> chol: array<f32, CHOL_LEN>;
// α⁰ at the chosen atoms (the right-hand side of the normal equations).
var<workgroup> rhs: array<f32, MAX_K>;
// Coefficients of the chosen atoms, and their change in the last step.
var<workgroup> coef: array<f32, MAX_K>;
var<workgroup> delta: array<f32, MAX_K>;
// Scratch for the triangular solves.
var<workgroup> tmp: array<f32, MAX_K>;
// Argmax reduction: |α|, the signed α, and the atom index.
var<workgroup> red_abs: array<f32, WG>;
var<workgroup> red_val: array<f32, WG>;
var<workgroup> red_idx: array<u32, WG>;
// Decisions made by invocation 0 and broadcast to the others.
var<workgroup> stop: u32;
var<workgroup> n_sel: u32;
var<workgroup> energy: f32;
var<workgroup> step_atom: u32;
var<workgroup> step_value: f32;

// Block of G holding `row`, and the element where that row starts inside the block's binding.
fn g_row(row: u32) -> vec2<u32> {
    if G_SINGLE_BLOCK {
        return vec2<u32>(0u, params.g_first.x + row * params.n_atoms);
    }
    let blk = row / params.g_rows_per_block;
    let local = (row - blk * params.g_rows_per_block) * params.n_atoms;
    return vec2<u32>(blk, params.g_first[blk] + local);
}

// Element `i` of block `blk` of G.
fn g_elem(blk: u32, i: u32) -> f32 {
    if G_SINGLE_BLOCK {
        return g0[i];
    }
    switch blk {
        case 0u: {
            return g0[i];
        }
        case 1u: {
            return g1[i];
        }
        case 2u: {
            return g2[i];
        }
        default: {
            return g3[i];
        }
    }
}

fn g_at(row: u32, col: u32) -> f32 {
    let r = g_row(row);
    return g_elem(r.x, r.y + col);
}

fn tri(i: u32) -> u32 {
    return i * (i + 1u) / 2u;
}

// Solves L·x = b for the first n rows, b in tmp, x written over it.
fn forward_in_tmp(n: u32) {
    for (var i = 0u; i < n; i++) {
        var s = tmp[i];
        for (var t = 0u; t < i; t++) {
            s -= chol[tri(i) + t] * tmp[t];
        }
        tmp[i] = s / chol[tri(i) + i];
    }
}

// Solves Lᵀ·x = b for the first n rows, b in tmp, x written over it.
fn backward_in_tmp(n: u32) {
    for (var ii = 0u; ii < n; ii++) {
        let i = n - 1u - ii;
        var s = tmp[i];
        for (var t = i + 1u; t < n; t++) {
            s -= chol[tri(t) + i] * tmp[t];
        }
        tmp[i] = s / chol[tri(i) + i];
    }
}

// Grows the Cholesky factor by atom j (the next row, n_sel existing rows). Returns false when the
// pivot is too small: j is nearly in the span of the chosen atoms.
fn cholesky_grow(j: u32, s: u32) -> bool {
    let rj = g_row(j);
    for (var t = 0u; t < s; t++) {
        tmp[t] = g_elem(rj.x, rj.y + sel[t]);
    }
    forward_in_tmp(s);
    var ww = 0.0;
    for (var t = 0u; t < s; t++) {
        ww += tmp[t] * tmp[t];
    }
    let gjj = g_elem(rj.x, rj.y + j);
    let pivot = gjj - ww;
    // `!(pivot > …)` also stops on NaN.
    if !(pivot > params.min_pivot * gjj) {
        return false;
    }
    for (var t = 0u; t < s; t++) {
        chol[tri(s) + t] = tmp[t];
    }
    chol[tri(s) + s] = sqrt(pivot);
    return true;
}

// Argmax of |α| over this sample's row, ties to the lowest index, into red_*[0].
fn argmax(lid: u32, base: u32) {
    var best_abs = -1.0;
    var best_val = 0.0;
    var best_idx = 0xffffffffu;
    // Strided: each invocation visits ascending j, so a strict `>` keeps its lowest index.
    for (var j = lid; j < params.n_atoms; j += WG) {
        let v = alpha[base + j];
        if abs(v) > best_abs {
            best_abs = abs(v);
            best_val = v;
            best_idx = j;
        }
    }
    red_abs[lid] = best_abs;
    red_val[lid] = best_val;
    red_idx[lid] = best_idx;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lid < half {
            let oa = red_abs[lid + half];
            let oi = red_idx[lid + half];
            if oa > red_abs[lid] || (oa == red_abs[lid] && oi < red_idx[lid]) {
                red_abs[lid] = oa;
                red_val[lid] = red_val[lid + half];
                red_idx[lid] = oi;
            }
        }
        workgroupBarrier();
    }
}

// Resets the shared state for a new sample and returns its ‖y‖².
fn begin(lid: u32, sample: u32) -> f32 {
    let y2 = y_norm2[sample];
    if lid == 0u {
        energy = y2;
        n_sel = 0u;
        stop = 0u;
    }
    workgroupBarrier();
    return y2;
}

// Rules 2 and 4 on the argmax just computed: the residual is still above the tolerance and the
// best correlation above its floor (the latter also stops a zero sample, and when every α is 0).
fn worth_another_atom(y2: f32) -> bool {
    if params.tolerance >= 0.0 && energy <= params.tolerance * y2 {
        return false;
    }
    // `!(… > …)` also stops on NaN.
    return red_abs[0] > params.min_correlation * sqrt(y2);
}

fn sample_index(wid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return wid.y * groups.x + wid.x;
}

fn write_codes(lid: u32, sample: u32, n: u32) {
    let out = sample * (2u * params.k + 1u);
    for (var t = lid; t < params.k; t += WG) {
        if t < n {
            codes[out + t] = sel[t];
            codes[out + params.k + t] = bitcast<u32>(coef[t]);
        } else {
            codes[out + t] = 0xffffffffu;
            codes[out + params.k + t] = 0u;
        }
    }
    if lid == 0u {
        codes[out + 2u * params.k] = bitcast<u32>(max(energy, 0.0));
    }
}

@compute @workgroup_size(WG)
fn omp(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let sample = sample_index(wid, groups);
    if sample >= params.batch {
        return;
    }
    let base = sample * params.n_atoms;
    let y2 = begin(lid, sample);

    for (var s = 0u; s < params.max_atoms; s++) {
        argmax(lid, base);
        if lid == 0u {
            let j = red_idx[0];
            let a = red_val[0];
            var go = worth_another_atom(y2);
            if go && !cholesky_grow(j, s) {
                go = false;
            }
            if go {
                // α⁰[j] = α[j] + G[j,I]·γ: α = α⁰ − G[:,I]·γ holds for the current γ.
                var a0 = a;
                let rj0 = g_row(j);
                for (var t = 0u; t < s; t++) {
                    a0 += g_elem(rj0.x, rj0.y + sel[t]) * coef[t];
                }
                sel[s] = j;
                let rj = g_row(j);
                sel_blk[s] = rj.x;
                sel_row[s] = rj.y;
                rhs[s] = a0;
                coef[s] = 0.0;
                // γ solves L·Lᵀ·γ = α⁰[I].
                for (var t = 0u; t <= s; t++) {
                    tmp[t] = rhs[t];
                }
                forward_in_tmp(s + 1u);
                backward_in_tmp(s + 1u);
                var fit = 0.0;
                for (var t = 0u; t <= s; t++) {
                    delta[t] = tmp[t] - coef[t];
                    coef[t] = tmp[t];
                    fit += tmp[t] * rhs[t];
                }
                energy = max(y2 - fit, 0.0);
                n_sel = s + 1u;
            } else {
                stop = 1u;
            }
        }
        if workgroupUniformLoad(&stop) != 0u {
            break;
        }
        // α −= G[:,I]·Δγ over this invocation's entries; chosen atoms are set to exactly 0 so
        // rounding cannot make them win the argmax again.
        let n = s + 1u;
        for (var j = lid; j < params.n_atoms; j += WG) {
            var v = alpha[base + j];
            for (var t = 0u; t < n; t++) {
                v -= g_elem(sel_blk[t], sel_row[t] + j) * delta[t];
            }
            alpha[base + j] = v;
        }
        for (var t = 0u; t < n; t++) {
            if sel[t] % WG == lid {
                alpha[base + sel[t]] = 0.0;
            }
        }
        workgroupBarrier();
    }
    write_codes(lid, sample, workgroupUniformLoad(&n_sel));
}

@compute @workgroup_size(WG)
fn mp(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let sample = sample_index(wid, groups);
    if sample >= params.batch {
        return;
    }
    let base = sample * params.n_atoms;
    let y2 = begin(lid, sample);

    for (var it = 0u; it < 2u * params.max_atoms; it++) {
        argmax(lid, base);
        if lid == 0u {
            let j = red_idx[0];
            let a = red_val[0];
            var go = worth_another_atom(y2);
            var slot = n_sel;
            for (var t = 0u; t < n_sel; t++) {
                if sel[t] == j {
                    slot = t;
                }
            }
            if go && slot == n_sel {
                if n_sel == params.max_atoms {
                    go = false;
                } else {
                    // α⁰[j] = α[j] + G[j,I]·x, kept for the refit.
                    var a0 = a;
                    for (var t = 0u; t < n_sel; t++) {
                        a0 += g_at(j, sel[t]) * coef[t];
                    }
                    sel[slot] = j;
                    rhs[slot] = a0;
                    coef[slot] = 0.0;
                    n_sel += 1u;
                }
            }
            if go {
                coef[slot] += a;
                // ‖r − a·dⱼ‖² = ‖r‖² − 2a·(dⱼ·r) + a²·G[j,j] with dⱼ·r = a.
                energy = max(energy - 2.0 * a * a + a * a * g_at(j, j), 0.0);
                step_atom = j;
                step_value = a;
            } else {
                stop = 1u;
            }
        }
        if workgroupUniformLoad(&stop) != 0u {
            break;
        }
        let rj = g_row(step_atom);
        let a = step_value;
        for (var i = lid; i < params.n_atoms; i += WG) {
            alpha[base + i] -= a * g_elem(rj.x, rj.y + i);
        }
        workgroupBarrier();
    }

    let n = workgroupUniformLoad(&n_sel);
    if params.refit != 0u && n > 0u && lid == 0u {
        // Cholesky of G[I,I] from scratch; on a small pivot keep the MP coefficients.
        var ok = true;
        for (var s = 0u; s < n; s++) {
            let j = sel[s];
            if ok && !cholesky_grow(j, s) {
                ok = false;
            }
        }
        if ok {
            for (var t = 0u; t < n; t++) {
                tmp[t] = rhs[t];
            }
            forward_in_tmp(n);
            backward_in_tmp(n);
            var fit = 0.0;
            for (var t = 0u; t < n; t++) {
                coef[t] = tmp[t];
                fit += tmp[t] * rhs[t];
            }
            energy = max(y2 - fit, 0.0);
        }
    }
    workgroupBarrier();
    write_codes(lid, sample, n);
}
