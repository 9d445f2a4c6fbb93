// extends: omp.wgsl
// host: const RK_TRI: u32 = 36u;
// (needs subgroup operations; the host repeats each code line naming `$t` per α texel, and
// defines RK_TRI, see resident_refit)
//
// Resident matching pursuit: each sample's correlations α stay in the private memory of one
// subgroup (CPU adapters, resident_mp) or one workgroup (GPUs, resident_mp_wg, below) for many
// greedy steps, instead of being read and written through textures by a sweep dispatch per step.
//
// resident_mp: one workgroup of RWG invocations, exactly one subgroup, codes one sample. Invocation `lid`
// holds the α texels q = t·RWG + lid for t < texels (interleaved, so the subgroup's loads of a
// G row fall on neighbouring texels). Per step: the largest |α| of each invocation, the
// subgroup's argmax (ties to the lowest index, as the reference), MP's step (`mp_take` of
// omp.wgsl, run by invocation 0 on the record in `work`; the others learn its outcome through a
// subgroup operation, so no barrier is needed), then α −= a·G[j, :]. A dispatch runs the steps
// [first_step, last_step) that fit the driver's loop cap; α⁰ stays unwritten in `alpha`, and
// a later dispatch rebuilds α = α⁰ − G[:,I]·x from the record (k row updates, against k²/2
// G reads per sample to recover α⁰[I] from a stored α). `resident_refit` then prepares the
// least-squares refit, its right-hand side α⁰[I] read directly (one invocation per sample).
// start and finish are omp.wgsl's.
//
// On llvmpipe this replaces per step a texture read and write of α and a second dispatch (the
// MP kernel 2.5–3× faster at K = 1536). A GPU's subgroup could not hold α in registers, hence
// resident_mp_wg there. Batch-OMP keeps the sweep and select of omp.wgsl on every adapter: its
// per-step solves would run in one lane here.
//
// Each invocation holds RT α texels (K ≤ 4·RWG·RT; the host's texels per invocation, rounded
// up) in RT private vec4s, not in an array: the host writes each code line that names `$t` RT
// times, `$t` replaced by 0 .. RT − 1 (`texel_lines` in src/gpu/layout.rs), so no access is
// indexed by a variable. llvmpipe compiled an array indexed by the loop counter into a gather
// and a scatter lane by lane per access, which made resident_mp about 2× slower at K = 1536.
// Past 64 texels the host turns those lines into loops over arrays instead: written out, the
// kernel took llvmpipe 24 s more to compile at RT = 128.
//
// resident_mp_wg is the same coder for GPUs: a workgroup of RWG = 256 invocations per sample
// (K = 16 384 in 16 texels, 64 registers, per invocation), the argmax reduced in workgroup
// memory and invocation 0's outcome broadcast through it. Against the sweeps it saves per step
// the read and write of the sample's whole α (two of the three passes over K per step) and two
// dispatches.

// α⁰ is omp.wgsl's `alpha` ([batch, K], read only), also the refit's right-hand side.

// Invocations per workgroup: the adapter's subgroup size (resident_mp; llvmpipe: 8), or 256
// (resident_mp_wg).
override RWG: u32 = 8u;

// This invocation's α texels, one private vec4 each (lines naming `$t`: see the header).
var<private> res_alpha$t: vec4<f32>;

fn res_row(sample: u32) -> u32 {
    return params.rows_first.x + sample * params.n_atoms;
}

// α⁰'s texel q of the sample's row (atoms past K read as 0).
fn res_alpha0_texel(row: u32, q: u32) -> vec4<f32> {
    let first = 4u * q;
    var v = vec4<f32>();
    for (var m = 0u; m < 4u; m++) {
        if first + m < params.n_atoms {
            v[m] = bitcast<f32>(alpha[row + first + m]);
        }
    }
    return v;
}

fn res_load(lid: u32, sample: u32) {
    let row = res_row(sample);
    res_alpha$t = res_alpha0_texel(row, $tu * RWG + lid);
}

// Texel t of α −= x·G[j, :]. Texels past K take whatever the fetch returns (out of bounds:
// WebGPU's robust access) and are never read: res_consider skips their atoms. (Values in and
// out rather than a pointer: naga's SPIR-V writer fails on a pointer to an element of a private
// array, the lines' looped form.)
fn res_sub(alpha: vec4<f32>, t: u32, lid: u32, j: u32, x: f32) -> vec4<f32> {
    return alpha - x * g_texel(j, t * RWG + lid);
}

// α = α⁰ − G[:,I]·x for the record's support and coefficients, in a dispatch that continues
// the sample's steps (none on the first).
fn res_rebuild(lid: u32, rec: u32) {
    for (var s = 0u; s < work[rec + H_NSEL]; s++) {
        let j = work[sel_at(rec) + s];
        let x = wf(coef_at(rec) + s);
        res_alpha$t = res_sub(res_alpha$t, $tu, lid, j, x);
    }
}

// An invocation's largest |α| over its atoms: the value and its atom, the lowest among ties
// (atoms visited in ascending order, replaced only on a strict `>`).
struct ResBest {
    abs: f32,
    val: f32,
    idx: u32,
}

fn res_consider(b: ptr<function, ResBest>, v: vec4<f32>, first: u32) {
    for (var m = 0u; m < 4u; m++) {
        if first + m < params.n_atoms && abs(v[m]) > (*b).abs {
            *b = ResBest(abs(v[m]), v[m], first + m);
        }
    }
}

fn res_best(lid: u32) -> ResBest {
    var b = ResBest(-1.0, 0.0, 0xffffffffu);
    res_consider(&b, res_alpha$t, 4u * ($tu * RWG + lid));
    return b;
}

// Texel t of α −= a·G[j, :], offered to the invocation's best.
fn res_update_texel(
    b: ptr<function, ResBest>, alpha: vec4<f32>, t: u32, lid: u32, j: u32, a: f32,
) -> vec4<f32> {
    let updated = res_sub(alpha, t, lid, j, a);
    res_consider(b, updated, 4u * (t * RWG + lid));
    return updated;
}

// α −= a·G[j, :] over this invocation's texels, and its largest |α| after the update: one pass
// over the texels per step rather than two.
fn res_update_best(lid: u32, j: u32, a: f32) -> ResBest {
    var b = ResBest(-1.0, 0.0, 0xffffffffu);
    res_alpha$t = res_update_texel(&b, res_alpha$t, $tu, lid, j, a);
    return b;
}

// A dispatch's start: the sample's α in this invocation's texels (rebuilt past the first
// dispatch) and their best.
fn res_begin(lid: u32, sample: u32, rec: u32) -> ResBest {
    res_load(lid, sample);
    res_rebuild(lid, rec);
    return res_best(lid);
}

// The sample's (signed α, atom) of largest |α| from each invocation's best, ties to the lowest
// index; the same in every invocation.
fn res_pick(b: ResBest) -> vec2<u32> {
    let top = subgroupMax(b.abs);
    var mine = 0xffffffffu;
    if b.abs == top {
        mine = b.idx;
    }
    let j = subgroupMin(mine);
    // Exactly one invocation holds atom j (all hold 0 when j is 0xffffffff); adding zeros is exact.
    var part = 0.0;
    if b.idx == j {
        part = b.val;
    }
    return vec2<u32>(bitcast<u32>(subgroupAdd(part)), j);
}

@compute @workgroup_size(RWG)
fn resident_mp(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let sample = wid.y * groups.x + wid.x;
    if sample >= params.batch {
        return;
    }
    let rec = sample * params.stride;
    if work[rec + H_DONE] != 0u {
        return;
    }
    let y2 = y_norm2[params.rows_first.y + sample];
    var mine = res_begin(lid, sample, rec);
    for (var step = params.first_step; step < params.last_step; step++) {
        let best = res_pick(mine);
        let a = bitcast<f32>(best.x);
        var taken = 0u;
        if lid == 0u && mp_take(sample, rec, y2, a, best.y) {
            taken = 1u;
        }
        if subgroupMax(taken) == 0u {
            return;
        }
        mine = res_update_best(lid, best.y, a);
    }
}

// res_pick through workgroup memory (omp.wgsl's wg_best: RWG ≤ REDUCE_MAX). Every invocation
// must call it.
fn wg_pick(lid: u32, b: ResBest) -> vec2<u32> {
    let best = wg_best(lid, SweepBest(b.val, b.idx), RWG);
    return vec2<u32>(bitcast<u32>(best.val), best.idx);
}

// Invocation 0's word for the whole workgroup: the sample's done flag, then each step's outcome.
var<workgroup> wg_flag: u32;

@compute @workgroup_size(RWG)
fn resident_mp_wg(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let sample = wid.y * groups.x + wid.x;
    // Uniform across the workgroup, as every exit before a barrier must be.
    if sample >= params.batch {
        return;
    }
    let rec = sample * params.stride;
    if lid == 0u {
        wg_flag = work[rec + H_DONE];
    }
    if workgroupUniformLoad(&wg_flag) != 0u {
        return;
    }
    let y2 = y_norm2[params.rows_first.y + sample];
    var mine = res_begin(lid, sample, rec);
    for (var step = params.first_step; step < params.last_step; step++) {
        let best = wg_pick(lid, mine);
        let a = bitcast<f32>(best.x);
        if lid == 0u {
            wg_flag = u32(mp_take(sample, rec, y2, a, best.y));
        }
        // Its barrier also keeps the next step's wg_pick from overwriting red_val[0] early.
        if workgroupUniformLoad(&wg_flag) == 0u {
            return;
        }
        mine = res_update_best(lid, best.y, a);
    }
}

// resident_refit on CPU adapters keeps the factor in private memory while it grows it: rows
// [0, first_step) are read from the record once, the new rows written back once. llvmpipe runs
// each storage access of one invocation per sample as a loop over the lanes, and the forward
// solves make k³/6 of them (the kernel 2× faster at k = 32). RK_TRI, the factor's most
// entries, is a `const` the host defines before this file: tri(k) rounded up, or 1 where the
// factor stays in `work` (REFIT_PRIVATE false: GPUs, large k). The dispatch that completes the
// factor also solves for the coefficients from it (res_solve), which finish would do reading
// the factor from the record twice.
override REFIT_PRIVATE: bool = false;
var<private> res_chol: array<f32, RK_TRI>;

// solve_coefficients over res_chol: the least-squares coefficients of the first n chosen atoms
// into coef; returns γ·α⁰[I]. The same f32 operations in the same order (forward_solve,
// backward_in_tmp, fit_coefficients), so the same coefficients as finish's; the solution in
// omp.wgsl's sel_x (k ≤ 64 here, within its SEL_PRIVATE), which fit_private writes out.
fn res_solve(rec: u32, n: u32) -> f32 {
    for (var t = 0u; t < n; t++) {
        sel_x[t] = wf(rhs_at(rec) + t);
    }
    for (var i = 0u; i < n; i++) {
        var s = sel_x[i];
        for (var t = 0u; t < i; t++) {
            s -= res_chol[tri(i) + t] * sel_x[t];
        }
        sel_x[i] = s / res_chol[tri(i) + i];
    }
    for (var ii = 0u; ii < n; ii++) {
        let i = n - 1u - ii;
        var s = sel_x[i];
        for (var t = i + 1u; t < n; t++) {
            s -= res_chol[tri(t) + i] * sel_x[t];
        }
        sel_x[i] = s / res_chol[tri(i) + i];
    }
    return fit_private(rec, n);
}

// cholesky_grow over res_chol (rows [0, s) present): row s = L⁻¹·G[I, j] solved in place, then
// its pivot; false for a small pivot (the row is left unused). The same f32 operations in the
// same order as cholesky_grow.
fn res_chol_grow(rec: u32, j: u32, s: u32) -> bool {
    let sel = sel_at(rec);
    let row = tri(s);
    for (var t = 0u; t < s; t++) {
        var v = g_at(j, work[sel + t]);
        for (var u = 0u; u < t; u++) {
            v -= res_chol[tri(t) + u] * res_chol[row + u];
        }
        res_chol[row + t] = v / res_chol[tri(t) + t];
    }
    var ww = 0.0;
    for (var t = 0u; t < s; t++) {
        ww += res_chol[row + t] * res_chol[row + t];
    }
    let gjj = g_at(j, j);
    let pivot = gjj - ww;
    // `!(pivot > …)` also stops on NaN.
    if !(pivot > params.min_pivot * gjj) {
        return false;
    }
    res_chol[row + s] = sqrt(pivot);
    return true;
}

// The refit's right-hand side α⁰[I] and Cholesky factor of G[I,I], rows [first_step,
// last_step) of the support; one invocation per sample, after the last resident_mp.
@compute @workgroup_size(64)
fn resident_refit(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let sample = sample_of(gid, groups);
    if sample >= params.batch {
        return;
    }
    let rec = sample * params.stride;
    let n = work[rec + H_NSEL];
    let row = res_row(sample);
    let first = params.first_step;
    let last = min(params.last_step, n);
    if REFIT_PRIVATE {
        if first >= last || work[rec + H_CHOL_OK] == 0u {
            return;
        }
        let chol = chol_at(rec);
        for (var i = 0u; i < tri(first); i++) {
            res_chol[i] = wf(chol + i);
        }
        var grown = first;
        for (; grown < last; grown++) {
            let j = work[sel_at(rec) + grown];
            work[rhs_at(rec) + grown] = alpha[row + j];
            // A small pivot keeps MP's coefficients, as in mp_take.
            if !res_chol_grow(rec, j, grown) {
                work[rec + H_CHOL_OK] = 0u;
                break;
            }
        }
        for (var i = tri(first); i < tri(grown); i++) {
            set_wf(chol + i, res_chol[i]);
        }
        // The whole support factored without a small pivot: its coefficients and their
        // energy, which finish then keeps (H_CHOL_OK 2).
        if grown == n && work[rec + H_CHOL_OK] != 0u {
            let y2 = y_norm2[params.rows_first.y + sample];
            set_wf(rec + H_ENERGY, max(y2 - res_solve(rec, n), 0.0));
            work[rec + H_CHOL_OK] = 2u;
        }
        return;
    }
    for (var s = first; s < last; s++) {
        if work[rec + H_CHOL_OK] == 0u {
            return;
        }
        let j = work[sel_at(rec) + s];
        work[rhs_at(rec) + s] = alpha[row + j];
        // A small pivot keeps MP's coefficients, as in mp_take.
        if !cholesky_grow(rec, j, s) {
            work[rec + H_CHOL_OK] = 0u;
        }
    }
}
