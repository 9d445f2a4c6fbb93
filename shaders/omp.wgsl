// Batched sparse coding, one greedy step of the whole batch per pair of dispatches.
//
//   omp  Batch-OMP (Rubinstein, Zibulevsky & Elad 2008): greedy selection on the correlations
//        α = D·r, kept up to date from the Gram matrix G = D·Dᵀ and a progressive Cholesky factor
//        of G[I,I]; no residual vector is formed.
//   mp   matching pursuit: α −= a·G[j,:], optional least-squares refit of the final support.
//
// The stopping rules and tie-breaking match src/reference/omp.rs; see its module comment.
//
// A coding job is `start`, then per greedy step `sweep` and `select_omp` (or `select_mp`), then
// `finish`, all recorded into one command buffer. Each sample's state (chosen atoms, coefficients,
// Cholesky factor, residual energy) lives in device memory between dispatches, so no dispatch's
// work grows with k·K: one invocation loops over at most PER atoms times the chosen atoms
// (sweep) or over k² entries of the small factor (select). That keeps every invocation under
// llvmpipe's loop cap at any K, and lets a GPU spread a step over B·K/CHUNK workgroups.
//
//   pack_gram  G's f32 rows (a window of the product at a time) into the G texture.
//   sweep   one workgroup per (sample, chunk of CHUNK = WG·PER atoms): OMP α = α⁰ − G[:,I]·γ for
//           the chosen atoms I and their current coefficients γ, MP α −= a·G[j,:], then each
//           invocation's largest |α| (ties to the lowest index) into the sample's argmax
//           partials (CPU adapters: no barriers).
//   sweep_reduced  the same, the workgroup's largest |α| reduced in workgroup memory into one
//           partial per chunk (GPUs: barriers are cheap, and select's serial loop over the
//           partials shrinks WG-fold, from 1024 entries per step at K = 16 384).
//   select  one invocation per sample: reduces the partials, applies the stopping rules, grows the
//           Cholesky factor, solves for the coefficients and writes (I, γ) (MP: (j, a)) to
//           upd_out.
//   fused_omp  Batch-OMP on CPU adapters: sweep and select of several greedy steps in one
//           dispatch, one invocation per sample (below).
//
// Chosen atoms are marked in a bit mask per sample (in `work`): Batch-OMP's, so rounding cannot
// make them win the argmax again; MP's, which may take an atom again, so that mp_take looks for
// its slot only then.
//
// Residual energy ‖r‖² = ‖y‖² − γ·α⁰[I] is a difference of nearly equal numbers once the fit is
// good, so in f32 it carries an absolute error of a few ulp of ‖y‖²: a relative tolerance below
// about 1e-6 is not meaningful. It is clamped at 0.

struct Params {
    // Samples in this job (pack_gram: G rows in this window).
    batch: u32,
    // Atoms K (the length of an α row and of a G row).
    n_atoms: u32,
    // min(k, d, K): most atoms a sample may use.
    max_atoms: u32,
    // Slots per sample in the output (k); slots past the chosen atoms get index −1, value 0.
    k: u32,
    // G row r is row r & (2^layer_shift − 1) of layer r >> layer_shift of the G texture.
    layer_shift: u32,
    // MP: least-squares refit of the final support (1) or not (0).
    refit: u32,
    // Chunks of CHUNK atoms per α row: sweep workgroups per sample, argmax partials per sample.
    n_chunks: u32,
    // Words per sample record in `work`.
    stride: u32,
    // First word of the argmax partials (chunk_parts per sample and chunk, 2 words each) in
    // `work`.
    parts: u32,
    // Stop when ‖r‖² ≤ tolerance·‖y‖²; negative disables.
    tolerance: f32,
    // Stop when max|α| ≤ min_correlation·‖y‖.
    min_correlation: f32,
    // Stop when the Cholesky pivot ≤ min_pivot·G[j,j].
    min_pivot: f32,
    // First word of the chosen-atom masks (⌈K/32⌉ words per sample) in `work`.
    mask: u32,
    // Resident coders (omp_resident.wgsl): the greedy steps [first_step, last_step) this
    // dispatch runs, and the α texels each invocation holds.
    first_step: u32,
    last_step: u32,
    texels: u32,
    // First element of this job's rows inside the α, ‖y‖² and codes bindings (a job codes one
    // chunk of a larger batch's rows; bindings start at aligned offsets). pack_gram: x is the
    // first word of its G window inside the g_src binding, y the window's first G row.
    rows_first: vec4<u32>,
    // Argmax partials each sweep workgroup writes per (sample, chunk): WG from `sweep` (one
    // per invocation), 1 from `sweep_reduced`.
    chunk_parts: u32,
    // OMP's sweeps (1): α recomputed from α⁰ every step, alpha_in being α⁰'s texture, and not
    // stored. Every coefficient changes at every step, so the incremental update fetched as
    // many G texels; this saves the α write (on llvmpipe a loop over the lanes: the sweep 1.16×
    // faster) and computes α as the reference does, without accumulated rounding. MP's (0)
    // update α and write it for the next sweep.
    fresh: u32,
    // fused_omp: the blocks of PER atoms [first_block, last_block) this dispatch sweeps of its
    // one step, where a whole step exceeds the loop cap (else 0 and 0xffffffff: all of them).
    first_block: u32,
    last_block: u32,
    // fused_omp: sample s's Cholesky factor is row s & (2^factor_shift − 1) of layer
    // s >> factor_shift of fac_tex.
    factor_shift: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// G as a texture, 4 consecutive entries of a row per texel (rgba32float, or rgba16float for
// half-precision G: the host writes that format here), entries past K zero; written by
// pack_gram. Coding reads G as a texture rather than as a storage buffer: llvmpipe fetches
// texels with unrolled gathers, where a storage load inserts lane by lane through the stack (a
// store-forwarding stall per element, which made the sweep 2× slower). And as a read-only
// storage texture rather than a sampled one, as every texture here: llvmpipe's sampled
// textureLoad looks up each lane's mip level and its strides, where a storage texture has one
// level (with α and the updates read so too, the Batch-OMP sweep 1.49× and resident_mp 1.25×
// faster at K = 1536).
@group(0) @binding(1) var g_tex: texture_storage_2d_array<rgba32float, read>;
// [batch, K]: α⁰ = Y·Dᵀ (f32): packed into a texture by pack_alpha, α⁰[j] of a new atom read
// by select, the resident coders' α read from it (omp_resident.wgsl).
@group(0) @binding(5) var<storage, read> alpha: array<u32>;
// α of the job's samples as a pair of textures, texel (q, sample) = α[4q .. 4q + 3] (f32 bits;
// rgba32uint so no NaN canonicalisation touches them), for the reason G is a texture: an MP
// sweep reads one and writes the other; an OMP sweep reads the first, α⁰, and writes neither.
// pack_alpha fills the first from `alpha`.
@group(0) @binding(12) var alpha_in: texture_storage_2d<rgba32uint, read>;
@group(0) @binding(13) var alpha_out: texture_storage_2d<rgba32uint, write>;
// [batch]: ‖y‖².
@group(0) @binding(6) var<storage, read> y_norm2: array<f32>;
// [batch, 2k + 1]: k atom indices (i32 bits), k coefficients (f32 bits), residual energy.
@group(0) @binding(7) var<storage, read_write> codes: array<u32>;
// [batch, stride] sample records, then [batch, n_chunks, chunk_parts, 2] argmax partials (f32 α
// bits, index), then the chosen-atom masks.
@group(0) @binding(8) var<storage, read_write> work: array<u32>;
// The pending α update of each sample, texel (t, sample) = (atom, coefficient bits) (MP: its one
// entry, (atom, step)): written by select
// (upd_out), read by the sweep (upd_in) as a texture for the same reason as G. Two views of one
// texture, in the two kernels' separate bind groups.
@group(0) @binding(2) var upd_in: texture_storage_2d<rg32uint, read>;
@group(0) @binding(3) var upd_out: texture_storage_2d<rg32uint, write>;
// Batch-OMP's Cholesky factors where FACTOR_TEXTURE (fused_omp): sample s's packed factor, entry
// e at column e of its row (see factor_shift), as f32 bits (r32uint, so no conversion touches
// them). omp_solve_private reads the factor entry by entry, s² per step, one invocation per
// sample; llvmpipe runs such a storage load as a loop over the lanes through the stack (a
// store-forwarding stall per lane, 17 % of an encode's time) but a texel fetch as an unrolled
// gather: the kernel 1.1× faster with the factor here. select_omp keeps it in the record (its
// layout binds a 1×1 stand-in here), as do the solves past SEL_PRIVATE atoms, which fused_omp
// never runs (FUSED_SUPPORT).
@group(0) @binding(14) var fac_tex: texture_storage_2d_array<r32uint, read_write>;
override FACTOR_TEXTURE: bool = false;

// Sweep invocations per workgroup; a power of two (the argmax is a tree reduction).
override WG: u32 = 64u;
// Atoms per sweep invocation: four G texels, held in four vec4 registers, so each update entry
// is fetched once per four G texels. Mirrored by `PER` in src/gpu/omp/mod.rs.
const PER: u32 = 16u;

// Record layout (words): header, then k-long arrays (chosen atoms, coefficients, α⁰ of the
// chosen atoms, scratch, OMP's forward solve z = L⁻¹·α⁰[I]), then the packed Cholesky factor
// (not in fused_omp's records: FACTOR_TEXTURE). Mirrored by `record_words` in
// src/gpu/omp/mod.rs.
const H_NSEL: u32 = 0u; // atoms chosen
const H_DONE: u32 = 1u; // 1 once the sample has stopped
const H_ENERGY: u32 = 2u; // ‖r‖² (f32 bits)
const H_NUPD: u32 = 3u; // entries of the pending α update (0 after a stop)
// MP refit: the factor of the support so far is valid (1), or resident_refit solved the
// coefficients and energy from it (2, finish keeps them)
const H_CHOL_OK: u32 = 5u;
// fused_omp, a step split across dispatches: the largest |α| of the blocks swept so far (f32
// α bits, atom).
const H_BEST_VAL: u32 = 6u;
const H_BEST_IDX: u32 = 7u;
const HEADER: u32 = 8u;

fn mask_words() -> u32 {
    return (params.n_atoms + 31u) / 32u;
}

fn sel_at(rec: u32) -> u32 {
    return rec + HEADER;
}
fn coef_at(rec: u32) -> u32 {
    return rec + HEADER + params.max_atoms;
}
fn rhs_at(rec: u32) -> u32 {
    return rec + HEADER + 2u * params.max_atoms;
}
fn tmp_at(rec: u32) -> u32 {
    return rec + HEADER + 3u * params.max_atoms;
}
// z = L⁻¹·α⁰[I], grown by one entry per Batch-OMP step: its first entries do not change when
// the factor grows, so each step solves one row instead of the whole forward system.
fn fwd_at(rec: u32) -> u32 {
    return rec + HEADER + 4u * params.max_atoms;
}
// Cholesky factor L of G[I,I], lower triangle packed by rows: row i starts at i(i+1)/2.
fn chol_at(rec: u32) -> u32 {
    return rec + HEADER + 5u * params.max_atoms;
}

// Where entry e of the job's sample's factor lies in fac_tex: (column, row, layer).
fn factor_place(sample: u32, e: u32) -> vec3<u32> {
    return vec3<u32>(e, sample & ((1u << params.factor_shift) - 1u), sample >> params.factor_shift);
}

// Entry e of the packed Cholesky factor of the job's sample (record rec): fac_tex where
// FACTOR_TEXTURE, else the record. (The record's other solves, for k past SEL_PRIVATE and MP's
// refit, read it there directly.)
fn factor_at(sample: u32, rec: u32, e: u32) -> f32 {
    if FACTOR_TEXTURE {
        let at = factor_place(sample, e);
        return bitcast<f32>(textureLoad(fac_tex, at.xy, at.z).x);
    }
    return wf(chol_at(rec) + e);
}

fn set_factor(sample: u32, rec: u32, e: u32, v: f32) {
    if FACTOR_TEXTURE {
        let at = factor_place(sample, e);
        textureStore(fac_tex, at.xy, at.z, vec4<u32>(bitcast<u32>(v)));
    } else {
        set_wf(chol_at(rec) + e, v);
    }
}

fn wf(i: u32) -> f32 {
    return bitcast<f32>(work[i]);
}
fn set_wf(i: u32, v: f32) {
    work[i] = bitcast<u32>(v);
}

// The texel of G holding G[row, 4q .. 4q + 3].
fn g_texel(row: u32, q: u32) -> vec4<f32> {
    let mask = (1u << params.layer_shift) - 1u;
    return textureLoad(g_tex, vec2<u32>(q, row & mask), row >> params.layer_shift);
}

// The four texels of G row j from texel q (PER atoms of the row: the sweeps' block); `mask`
// is 2^layer_shift − 1.
struct GBlock {
    a: vec4<f32>,
    b: vec4<f32>,
    c: vec4<f32>,
    d: vec4<f32>,
}

fn g_block(j: u32, q: u32, mask: u32) -> GBlock {
    let at = vec2<u32>(q, j & mask);
    let layer = j >> params.layer_shift;
    return GBlock(
        textureLoad(g_tex, at, layer),
        textureLoad(g_tex, at + vec2<u32>(1u, 0u), layer),
        textureLoad(g_tex, at + vec2<u32>(2u, 0u), layer),
        textureLoad(g_tex, at + vec2<u32>(3u, 0u), layer),
    );
}

fn g_at(row: u32, col: u32) -> f32 {
    return g_texel(row, col / 4u)[col % 4u];
}

fn tri(i: u32) -> u32 {
    return i * (i + 1u) / 2u;
}

// ---------------------------------------------------------------------------------------------
// start: one invocation per sample.

@compute @workgroup_size(64)
fn start(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let sample = gid.y * groups.x * 64u + gid.x;
    if sample >= params.batch {
        return;
    }
    let rec = sample * params.stride;
    work[rec + H_NSEL] = 0u;
    work[rec + H_DONE] = 0u;
    set_wf(rec + H_ENERGY, max(y_norm2[params.rows_first.y + sample], 0.0));
    work[rec + H_NUPD] = 0u;
    work[rec + H_CHOL_OK] = 1u;
    for (var w = 0u; w < mask_words(); w++) {
        work[params.mask + sample * mask_words() + w] = 0u;
    }
}

// ---------------------------------------------------------------------------------------------
// sweep: one workgroup per (sample, chunk).

// Entries of the pending update in upd_in (MP: one, its atom), or 0xffffffff when the
// sample has stopped.
fn pending(rec: u32) -> u32 {
    if work[rec + H_DONE] != 0u {
        return 0xffffffffu;
    }
    return work[rec + H_NUPD];
}

// An invocation's largest |α| among its unchosen atoms: the signed value and its atom, or atom
// 0xffffffff when it has none.
struct SweepBest {
    val: f32,
    idx: u32,
}

// The sweep of one invocation: its PER atoms of `chunk` of the sample's α updated and stored,
// and their best. No barriers and no workgroup memory: on llvmpipe a barrier switches coroutines
// for every 8 invocations, which cost more than the arithmetic here, so `sweep` has each
// invocation write its own argmax partial and select reduces them.
// The same code serves OMP and MP: an MP update has one entry.
// `n`: the sample's pending update entries (`pending`), not 0xffffffff.
fn sweep_chunk(lid: u32, sample: u32, chunk: u32, n: u32) -> SweepBest {
    let last = params.n_atoms - 1u;
    // This invocation's atoms j = first .. first + PER − 1: PER / 4 whole texels of α and of G
    // (K is padded to a multiple of 4 there). Texels past K read anything and are not written;
    // their atoms are discarded.
    let first = chunk * WG * PER + lid * PER;
    let qa = first / 4u;
    var va = bitcast<vec4<f32>>(textureLoad(alpha_in, vec2<u32>(qa, sample)));
    var vb = bitcast<vec4<f32>>(textureLoad(alpha_in, vec2<u32>(qa + 1u, sample)));
    var vc = bitcast<vec4<f32>>(textureLoad(alpha_in, vec2<u32>(qa + 2u, sample)));
    var vd = bitcast<vec4<f32>>(textureLoad(alpha_in, vec2<u32>(qa + 3u, sample)));
    // Bits of OMP's chosen atoms among these PER (a mask word covers 32 atoms); MP may take an
    // atom again, its mask only finds the support's slots (mp_take).
    var chosen = work[params.mask + sample * mask_words() + first / 32u] >> (first % 32u);
    if params.fresh == 0u {
        chosen = 0u;
    }
    let q = min(first, last) / 4u;
    let mask = (1u << params.layer_shift) - 1u;
    for (var t = 0u; t < n; t++) {
        // (atom, x) of the update's entry t: OMP's chosen atom t and its coefficient, MP's one
        // entry its atom and step. Each entry is fetched once for PER atoms: on llvmpipe every
        // fetch is a gather of the lanes.
        let u = textureLoad(upd_in, vec2<u32>(t, sample)).xy;
        let dt = bitcast<f32>(u.y);
        let g = g_block(u.x, q, mask);
        va -= g.a * dt;
        vb -= g.b * dt;
        vc -= g.c * dt;
        vd -= g.d * dt;
    }
    var best_abs = -1.0;
    var best = SweepBest(0.0, 0xffffffffu);
    offer_block(&best_abs, &best, first, chosen, va, vb, vc, vd);
    // MP: α as updated goes to the other texture of the pair, which the next sweep reads.
    if params.fresh == 0u {
        textureStore(alpha_out, vec2<u32>(qa, sample), bitcast<vec4<u32>>(va));
        textureStore(alpha_out, vec2<u32>(qa + 1u, sample), bitcast<vec4<u32>>(vb));
        textureStore(alpha_out, vec2<u32>(qa + 2u, sample), bitcast<vec4<u32>>(vc));
        textureStore(alpha_out, vec2<u32>(qa + 3u, sample), bitcast<vec4<u32>>(vd));
    }
    return best;
}

// Offers the PER atoms first .. first + PER − 1, their α in four texels, to the running best
// (*best_abs its |α|, −1 for none), skipping atoms past K and those whose bit is set in
// `chosen`. Ascending j and a strict `>`: the lowest index wins among ties.
fn offer_block(
    best_abs: ptr<function, f32>,
    best: ptr<function, SweepBest>,
    first: u32,
    chosen: u32,
    va: vec4<f32>,
    vb: vec4<f32>,
    vc: vec4<f32>,
    vd: vec4<f32>,
) {
    for (var m = 0u; m < PER; m++) {
        let j = first + m;
        var v: f32;
        if m < 4u {
            v = va[m];
        } else if m < 8u {
            v = vb[m - 4u];
        } else if m < 12u {
            v = vc[m - 8u];
        } else {
            v = vd[m - 12u];
        }
        if j < params.n_atoms && (chosen & (1u << m)) == 0u && abs(v) > *best_abs {
            *best_abs = abs(v);
            *best = SweepBest(v, j);
        }
    }
}

// Word of argmax partial `part` of (sample, chunk).
fn part_at(sample: u32, chunk: u32, part: u32) -> u32 {
    return params.parts + 2u * ((sample * params.n_chunks + chunk) * params.chunk_parts + part);
}

fn write_part(at: u32, b: SweepBest) {
    work[at] = bitcast<u32>(b.val);
    work[at + 1u] = b.idx;
}

// A sweep workgroup's (sample, chunk); the sample is past the batch in the trailing workgroups.
// Sample-major for `sweep` (CPU adapters: a sample's α row, update and mask stay in cache; the
// OMP kernel 1.12× slower chunk-major on llvmpipe), chunk-major for `sweep_reduced` (GPUs:
// workgroups that run at the same time read one slab of G's columns, K × 512 entries, 32 MiB at
// K = 16 384, within a large GPU's L2, rather than all of G).
fn sweep_job(wid: vec3<u32>, groups: vec3<u32>, chunk_major: bool) -> vec2<u32> {
    let lin = wid.y * groups.x + wid.x;
    if !chunk_major {
        let sample = lin / params.n_chunks;
        return vec2<u32>(sample, lin - sample * params.n_chunks);
    }
    let chunk = lin / params.batch;
    if chunk >= params.n_chunks {
        return vec2<u32>(params.batch, 0u);
    }
    return vec2<u32>(lin - chunk * params.batch, chunk);
}

@compute @workgroup_size(WG)
fn sweep(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let job = sweep_job(wid, groups, false);
    if job.x >= params.batch {
        return;
    }
    let n = pending(job.x * params.stride);
    if n == 0xffffffffu {
        return;
    }
    write_part(part_at(job.x, job.y, lid), sweep_chunk(lid, job.x, job.y, n));
}

// Whether partial b beats a: larger |α|, ties to the lower atom; no atom never wins.
fn beats(b: SweepBest, a: SweepBest) -> bool {
    if b.idx == 0xffffffffu {
        return false;
    }
    if a.idx == 0xffffffffu {
        return true;
    }
    return abs(b.val) > abs(a.val) || (abs(b.val) == abs(a.val) && b.idx < a.idx);
}

// Most invocations per workgroup wg_best reduces over (a power of two).
const REDUCE_MAX: u32 = 256u;
var<workgroup> red_val: array<f32, REDUCE_MAX>;
var<workgroup> red_idx: array<u32, REDUCE_MAX>;

// The best of the `n` invocations' bests (n a power of two ≤ REDUCE_MAX, the workgroup's size),
// ties to the lower atom, returned to every invocation. Every invocation must call it.
fn wg_best(lid: u32, b: SweepBest, n: u32) -> SweepBest {
    red_val[lid] = b.val;
    red_idx[lid] = b.idx;
    for (var w = n / 2u; w > 0u; w /= 2u) {
        workgroupBarrier();
        if lid < w {
            let other = SweepBest(red_val[lid + w], red_idx[lid + w]);
            if beats(other, SweepBest(red_val[lid], red_idx[lid])) {
                red_val[lid] = other.val;
                red_idx[lid] = other.idx;
            }
        }
    }
    workgroupBarrier();
    return SweepBest(red_val[0], red_idx[0]);
}

@compute @workgroup_size(WG)
fn sweep_reduced(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let job = sweep_job(wid, groups, true);
    // Uniform across the workgroup: no invocation leaves before the barriers below.
    if job.x >= params.batch {
        return;
    }
    // A stopped sample takes part in the barriers; select does not read its partial.
    let n = pending(job.x * params.stride);
    var b = SweepBest(0.0, 0xffffffffu);
    if n != 0xffffffffu {
        b = sweep_chunk(lid, job.x, job.y, n);
    }
    let best = wg_best(lid, b, WG);
    if lid == 0u {
        write_part(part_at(job.x, job.y, 0u), best);
    }
}


// ---------------------------------------------------------------------------------------------
// select and finish: one invocation per sample, state in its record.

fn sample_of(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return gid.y * groups.x * 64u + gid.x;
}

// The argmax over the sample's partials: (signed α, index) of the largest |α|, ties to the
// lowest index; index 0xffffffff when every atom is chosen.
fn reduce_parts(sample: u32) -> vec2<u32> {
    var best = SweepBest(0.0, 0xffffffffu);
    let n_parts = params.n_chunks * params.chunk_parts;
    let first = params.parts + 2u * sample * n_parts;
    // Partials interleave index ranges: `beats` breaks ties by index explicitly.
    for (var c = 0u; c < n_parts; c++) {
        let part = SweepBest(bitcast<f32>(work[first + 2u * c]), work[first + 2u * c + 1u]);
        if beats(part, best) {
            best = part;
        }
    }
    return vec2<u32>(bitcast<u32>(best.val), best.idx);
}

// Rules 2 and 4: the residual is still above the tolerance and the best correlation above its
// floor (the latter also stops a zero sample, and when every α is 0).
fn worth_another_atom(energy: f32, y2: f32, best_abs: f32) -> bool {
    if params.tolerance >= 0.0 && energy <= params.tolerance * y2 {
        return false;
    }
    // `!(… > …)` also stops on NaN.
    return best_abs > params.min_correlation * sqrt(y2);
}

// Solves L·x = b for the first n rows of the record's factor, b at word `at` of `work`, x
// written over it.
fn forward_solve(rec: u32, at: u32, n: u32) {
    let chol = chol_at(rec);
    for (var i = 0u; i < n; i++) {
        var s = wf(at + i);
        for (var t = 0u; t < i; t++) {
            s -= wf(chol + tri(i) + t) * wf(at + t);
        }
        set_wf(at + i, s / wf(chol + tri(i) + i));
    }
}

// Solves Lᵀ·x = b for the first n rows, b in the record's tmp, x written over it.
fn backward_in_tmp(rec: u32, n: u32) {
    let tmp = tmp_at(rec);
    let chol = chol_at(rec);
    for (var ii = 0u; ii < n; ii++) {
        let i = n - 1u - ii;
        var s = wf(tmp + i);
        for (var t = i + 1u; t < n; t++) {
            s -= wf(chol + tri(t) + i) * wf(tmp + t);
        }
        set_wf(tmp + i, s / wf(chol + tri(i) + i));
    }
}

// Grows the Cholesky factor by atom j as row s (s rows exist). Returns false when the pivot is
// too small: j is nearly in the span of the chosen atoms.
// The row is solved in place (L[s, :s] = L⁻¹·G[I, j]); after a small pivot it is left unused.
fn cholesky_grow(rec: u32, j: u32, s: u32) -> bool {
    let sel = sel_at(rec);
    let row = chol_at(rec) + tri(s);
    var ww = 0.0;
    for (var t = 0u; t < s; t++) {
        set_wf(row + t, g_at(j, work[sel + t]));
    }
    forward_solve(rec, row, s);
    for (var t = 0u; t < s; t++) {
        ww += wf(row + t) * wf(row + t);
    }
    let gjj = g_at(j, j);
    let pivot = gjj - ww;
    // `!(pivot > …)` also stops on NaN.
    if !(pivot > params.min_pivot * gjj) {
        return false;
    }
    set_wf(row + s, sqrt(pivot));
    return true;
}

// Least-squares coefficients of the first n chosen atoms into coef (tmp is the solve's
// scratch); returns γ·α⁰[I].
fn solve_coefficients(rec: u32, n: u32) -> f32 {
    let tmp = tmp_at(rec);
    for (var t = 0u; t < n; t++) {
        work[tmp + t] = work[rhs_at(rec) + t];
    }
    forward_solve(rec, tmp, n);
    backward_in_tmp(rec, n);
    return fit_coefficients(rec, n);
}

// The solved coefficients from tmp into coef; returns γ·α⁰[I].
fn fit_coefficients(rec: u32, n: u32) -> f32 {
    let tmp = tmp_at(rec);
    var fit = 0.0;
    for (var t = 0u; t < n; t++) {
        let g = wf(tmp + t);
        set_wf(coef_at(rec) + t, g);
        fit += g * wf(rhs_at(rec) + t);
    }
    return fit;
}

// solve_coefficients with the forward solve z already in the record: the backward solve
// only, the same operations as solve_coefficients' second half.
fn solve_from_forward(rec: u32, n: u32) -> f32 {
    let tmp = tmp_at(rec);
    for (var t = 0u; t < n; t++) {
        work[tmp + t] = work[fwd_at(rec) + t];
    }
    backward_in_tmp(rec, n);
    return fit_coefficients(rec, n);
}

fn stop_sample(rec: u32) {
    work[rec + H_DONE] = 1u;
    work[rec + H_NUPD] = 0u;
}

// A sample's candidate for its next atom: its record, ‖y‖² and the argmax (α, atom) of its
// partials; not live when the sample is past the batch or has stopped.
struct Pick {
    rec: u32,
    y2: f32,
    a: f32,
    j: u32,
    live: bool,
}

fn pick(sample: u32) -> Pick {
    var p: Pick;
    p.live = false;
    if sample >= params.batch {
        return p;
    }
    p.rec = sample * params.stride;
    if work[p.rec + H_DONE] != 0u {
        return p;
    }
    p.y2 = y_norm2[params.rows_first.y + sample];
    let best = reduce_parts(sample);
    p.a = bitcast<f32>(best.x);
    p.j = best.y;
    p.live = true;
    return p;
}

// α⁰[j] = d_j·y of the job's sample, read from the correlations as the reference takes it
// (one load, where recovering it as α[j] + G[j,I]·x fetched n entries of G and rounded).
fn alpha0(sample: u32, j: u32) -> f32 {
    return bitcast<f32>(alpha[params.rows_first.x + sample * params.n_atoms + j]);
}

// Row s of the forward solve L·z = α⁰[I] (rows [0, s) already in the record), in the same
// operations and order as forward_solve's row s, so z is the bits a whole solve would give.
fn forward_row(rec: u32, s: u32, a0: f32) {
    let chol = chol_at(rec);
    let z = fwd_at(rec);
    var v = a0;
    for (var t = 0u; t < s; t++) {
        v -= wf(chol + tri(s) + t) * wf(z + t);
    }
    set_wf(z + s, v / wf(chol + tri(s) + s));
}

// Batch-OMP's step with the vectors of the solves in private memory (k ≤ SEL_PRIVATE): on
// llvmpipe each storage access of one invocation per sample is a loop over the lanes, and the
// solves read a vector entry beside each factor entry, so this halves select's storage loads.
// The same f32 operations in the same order as cholesky_grow, forward_row and
// solve_from_forward, hence the same bits (select_omp 1.4× faster at k = 32, 1.7× at k = 100 on
// llvmpipe). 128 covers the paper's k; past it, the record.
const SEL_PRIVATE: u32 = 128u;
// Row s of the factor: L⁻¹·G[I, j], then its pivot.
var<private> sel_row: array<f32, SEL_PRIVATE>;
// z = L⁻¹·α⁰[I], then γ = L⁻ᵀ·z.
var<private> sel_x: array<f32, SEL_PRIVATE>;

// Grows the factor by atom j as row s and z by its row s (false for a small pivot, nothing
// written); leaves γ for the first s + 1 atoms in sel_x.
fn omp_solve_private(sample: u32, rec: u32, j: u32, s: u32, a0: f32) -> bool {
    let sel = sel_at(rec);
    for (var i = 0u; i < s; i++) {
        var v = g_at(j, work[sel + i]);
        for (var t = 0u; t < i; t++) {
            v -= factor_at(sample, rec, tri(i) + t) * sel_row[t];
        }
        sel_row[i] = v / factor_at(sample, rec, tri(i) + i);
    }
    var ww = 0.0;
    for (var t = 0u; t < s; t++) {
        ww += sel_row[t] * sel_row[t];
    }
    let gjj = g_at(j, j);
    let pivot = gjj - ww;
    // `!(pivot > …)` also stops on NaN.
    if !(pivot > params.min_pivot * gjj) {
        return false;
    }
    sel_row[s] = sqrt(pivot);
    let z = fwd_at(rec);
    var v = a0;
    for (var t = 0u; t < s; t++) {
        sel_x[t] = wf(z + t);
        v -= sel_row[t] * sel_x[t];
    }
    sel_x[s] = v / sel_row[s];
    set_wf(z + s, sel_x[s]);
    for (var t = 0u; t <= s; t++) {
        set_factor(sample, rec, tri(s) + t, sel_row[t]);
    }
    // Lᵀ·γ = z, backward (backward_in_tmp's order); row s from sel_row rather than read back
    // where it was just stored.
    for (var ii = 0u; ii <= s; ii++) {
        let i = s - ii;
        var w = sel_x[i];
        for (var t = i + 1u; t < s; t++) {
            w -= factor_at(sample, rec, tri(t) + i) * sel_x[t];
        }
        var diagonal = sel_row[s];
        if i < s {
            w -= sel_row[i] * sel_x[s];
            diagonal = factor_at(sample, rec, tri(i) + i);
        }
        sel_x[i] = w / diagonal;
    }
    return true;
}

// fit_coefficients from sel_x.
fn fit_private(rec: u32, n: u32) -> f32 {
    var fit = 0.0;
    for (var t = 0u; t < n; t++) {
        let g = sel_x[t];
        set_wf(coef_at(rec) + t, g);
        fit += g * wf(rhs_at(rec) + t);
    }
    return fit;
}

// Batch-OMP's step for one sample: takes atom j (current correlation a) as its next atom, or
// stops it. Returns the next sweep's entries (atom sel[t], coefficient coef[t]), 0 when the
// sample stopped.
fn omp_take(sample: u32, rec: u32, y2: f32, a: f32, j: u32) -> u32 {
    let s = work[rec + H_NSEL];
    if s >= params.max_atoms || j == 0xffffffffu
        || !worth_another_atom(wf(rec + H_ENERGY), y2, abs(a)) {
        stop_sample(rec);
        return 0u;
    }
    let a0 = alpha0(sample, j);
    // γ solves L·Lᵀ·γ = α⁰[I], i.e. Lᵀ·γ = z; the next sweep's α = α⁰ − G[:,I]·γ. (The
    // forward half was a whole solve per step: a third of select's serial loads.)
    let private = params.max_atoms <= SEL_PRIVATE;
    if (private && !omp_solve_private(sample, rec, j, s, a0)) || (!private && !cholesky_grow(rec, j, s)) {
        stop_sample(rec);
        return 0u;
    }
    work[sel_at(rec) + s] = j;
    set_wf(rhs_at(rec) + s, a0);
    var fit: f32;
    if private {
        fit = fit_private(rec, s + 1u);
    } else {
        forward_row(rec, s, a0);
        fit = solve_from_forward(rec, s + 1u);
    }
    set_wf(rec + H_ENERGY, max(y2 - fit, 0.0));
    work[rec + H_NSEL] = s + 1u;
    work[rec + H_NUPD] = s + 1u;
    let word = params.mask + sample * mask_words() + j / 32u;
    work[word] = work[word] | (1u << (j % 32u));
    return s + 1u;
}

// Matching pursuit's step for one sample: adds a·dⱼ (a the current correlation of atom j), or
// stops the sample (false).
fn mp_take(sample: u32, rec: u32, y2: f32, a: f32, j: u32) -> bool {
    let n_sel = work[rec + H_NSEL];
    var energy = wf(rec + H_ENERGY);
    if j == 0xffffffffu || !worth_another_atom(energy, y2, abs(a)) {
        stop_sample(rec);
        return false;
    }
    // The support's slot of j, or a new one: the chosen-atom mask says whether to look (one
    // load where the search read every slot, each a lane loop on llvmpipe).
    let word = params.mask + sample * mask_words() + j / 32u;
    let bits = work[word];
    var slot = n_sel;
    if (bits & (1u << (j % 32u))) != 0u {
        for (var t = 0u; t < n_sel; t++) {
            if work[sel_at(rec) + t] == j {
                slot = t;
            }
        }
    }
    if slot == n_sel {
        if n_sel == params.max_atoms {
            stop_sample(rec);
            return false;
        }
        work[word] = bits | (1u << (j % 32u));
        // α⁰[j], kept for the refit, whose factor grows with the support; a small pivot keeps
        // MP's coefficients. The resident coder (texels > 0) leaves both to resident_refit.
        if params.texels == 0u {
            set_wf(rhs_at(rec) + slot, alpha0(sample, j));
            if params.refit != 0u && work[rec + H_CHOL_OK] != 0u && !cholesky_grow(rec, j, n_sel) {
                work[rec + H_CHOL_OK] = 0u;
            }
        }
        work[sel_at(rec) + slot] = j;
        set_wf(coef_at(rec) + slot, 0.0);
        work[rec + H_NSEL] = n_sel + 1u;
    }
    set_wf(coef_at(rec) + slot, wf(coef_at(rec) + slot) + a);
    // ‖r − a·dⱼ‖² = ‖r‖² − 2a·(dⱼ·r) + a²·G[j,j] with dⱼ·r = a.
    energy = max(energy - 2.0 * a * a + a * a * g_at(j, j), 0.0);
    set_wf(rec + H_ENERGY, energy);
    work[rec + H_NUPD] = 1u;
    return true;
}

@compute @workgroup_size(64)
fn select_omp(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let sample = sample_of(gid, groups);
    let p = pick(sample);
    if !p.live {
        return;
    }
    let n = omp_take(sample, p.rec, p.y2, p.a, p.j);
    for (var t = 0u; t < n; t++) {
        let atom = work[sel_at(p.rec) + t];
        textureStore(upd_out, vec2<u32>(t, sample), vec4<u32>(atom, work[coef_at(p.rec) + t], 0u, 0u));
    }
}

@compute @workgroup_size(64)
fn select_mp(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let sample = sample_of(gid, groups);
    let p = pick(sample);
    if p.live && mp_take(sample, p.rec, p.y2, p.a, p.j) {
        textureStore(upd_out, vec2<u32>(0u, sample), vec4<u32>(p.j, bitcast<u32>(p.a), 0u, 0u));
    }
}

// ---------------------------------------------------------------------------------------------
// fused_omp: Batch-OMP's sweep and select in one kernel for CPU adapters, one invocation per
// sample running the greedy steps [first_step, last_step) (as many as the host fits under the
// loop cap; where one step does not fit, its blocks [first_block, last_block) per dispatch, the
// running argmax kept in the record between them). Per step: α = α⁰ − G[:,I]·γ recomputed PER
// atoms at a time and their argmax, all in the invocation, then omp_take. The same f32
// operations in the same order as sweep and select_omp, so the same codes bit for bit; what it
// saves is their traffic through storage, which llvmpipe runs lane by lane (a loop over the
// lanes per access): the sweep's per-chunk loads of the record and mask and its stores of
// argmax partials, select's reading them back (96 per sample and step at K = 1536), and the
// update entries, which stay in private memory from one step to the next (the kernel 1.4×
// faster than sweep and select at K = 1536, k = 32), and the Cholesky factor, which it keeps
// in fac_tex (FACTOR_TEXTURE).
// On a GPU one invocation per sample would leave most of it idle, and past K = 6144 on
// lavapipe the sweeps' long runs of each G row win (src/gpu/omp/mod.rs): the sweeps run there.

// The chosen atoms of the invocation's sample, in order; their coefficients are sel_x, which
// omp_take leaves there.
var<private> fused_atom: array<u32, SEL_PRIVATE>;

// Atom j's bit in block b's mask of chosen atoms (0 for an atom of another block).
fn chosen_bit(j: u32, b: u32) -> u32 {
    return select(0u, 1u << (j % PER), j / PER == b);
}

// The largest |α| over the sample's unchosen atoms in blocks [b0, b1) of PER atoms, offered
// to the running best (ties to the lowest atom), α = α⁰ − G[:,I]·γ recomputed from α⁰
// (alpha_in) for the n chosen atoms in fused_atom and sel_x, PER atoms at a time. A block's
// chosen atoms are found among the update entries as they pass, where the sweep loads the mask.
fn fused_best(sample: u32, n: u32, b0: u32, b1: u32, best_in: SweepBest) -> SweepBest {
    let last = params.n_atoms - 1u;
    let mask = (1u << params.layer_shift) - 1u;
    var best = best_in;
    var best_abs = -1.0;
    if best.idx != 0xffffffffu {
        best_abs = abs(best.val);
    }
    for (var b = b0; b < b1; b++) {
        let qa = b * (PER / 4u);
        var va = bitcast<vec4<f32>>(textureLoad(alpha_in, vec2<u32>(qa, sample)));
        var vb = bitcast<vec4<f32>>(textureLoad(alpha_in, vec2<u32>(qa + 1u, sample)));
        var vc = bitcast<vec4<f32>>(textureLoad(alpha_in, vec2<u32>(qa + 2u, sample)));
        var vd = bitcast<vec4<f32>>(textureLoad(alpha_in, vec2<u32>(qa + 3u, sample)));
        let q = min(b * PER, last) / 4u;
        var chosen = 0u;
        // Two chosen atoms a turn: the first fetches of their G rows, each usually a cache
        // miss, issue together (the kernel 1.05× faster on llvmpipe); the same operations in
        // the same order as one at a time.
        var t = 0u;
        for (; t + 1u < n; t += 2u) {
            let j = fused_atom[t];
            let x = sel_x[t];
            let i = fused_atom[t + 1u];
            let y = sel_x[t + 1u];
            let g = g_block(j, q, mask);
            let h = g_block(i, q, mask);
            va = (va - g.a * x) - h.a * y;
            vb = (vb - g.b * x) - h.b * y;
            vc = (vc - g.c * x) - h.c * y;
            vd = (vd - g.d * x) - h.d * y;
            chosen |= chosen_bit(j, b) | chosen_bit(i, b);
        }
        if t < n {
            let j = fused_atom[t];
            let x = sel_x[t];
            let g = g_block(j, q, mask);
            va -= g.a * x;
            vb -= g.b * x;
            vc -= g.c * x;
            vd -= g.d * x;
            chosen |= chosen_bit(j, b);
        }
        offer_block(&best_abs, &best, b * PER, chosen, va, vb, vc, vd);
    }
    return best;
}

@compute @workgroup_size(64)
fn fused_omp(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let sample = sample_of(gid, groups);
    if sample >= params.batch {
        return;
    }
    let rec = sample * params.stride;
    if work[rec + H_DONE] != 0u {
        return;
    }
    let y2 = y_norm2[params.rows_first.y + sample];
    // The steps of earlier dispatches, from the record.
    var n = work[rec + H_NSEL];
    for (var t = 0u; t < n; t++) {
        fused_atom[t] = work[sel_at(rec) + t];
        sel_x[t] = wf(coef_at(rec) + t);
    }
    let blocks = (params.n_atoms + PER - 1u) / PER;
    let b1 = min(params.last_block, blocks);
    for (var step = params.first_step; step < params.last_step; step++) {
        // A step split across dispatches (first_step + 1 == last_step) continues the running
        // best of its earlier blocks, and leaves it for the next dispatch until its last block.
        var best = SweepBest(0.0, 0xffffffffu);
        if params.first_block > 0u {
            best = SweepBest(wf(rec + H_BEST_VAL), work[rec + H_BEST_IDX]);
        }
        best = fused_best(sample, n, params.first_block, b1, best);
        if b1 < blocks {
            set_wf(rec + H_BEST_VAL, best.val);
            work[rec + H_BEST_IDX] = best.idx;
            return;
        }
        n = omp_take(sample, rec, y2, best.val, best.idx);
        if n == 0u {
            return;
        }
        fused_atom[n - 1u] = best.idx;
    }
}

@compute @workgroup_size(64)
fn finish(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let sample = sample_of(gid, groups);
    if sample >= params.batch {
        return;
    }
    let rec = sample * params.stride;
    let n = work[rec + H_NSEL];
    var energy = wf(rec + H_ENERGY);
    if params.refit != 0u && n > 0u && work[rec + H_CHOL_OK] == 1u {
        energy = max(y_norm2[params.rows_first.y + sample] - solve_coefficients(rec, n), 0.0);
    }
    let out = params.rows_first.z + sample * (2u * params.k + 1u);
    for (var t = 0u; t < params.k; t++) {
        if t < n {
            codes[out + t] = work[sel_at(rec) + t];
            codes[out + params.k + t] = work[coef_at(rec) + t];
        } else {
            codes[out + t] = 0xffffffffu;
            codes[out + params.k + t] = 0u;
        }
    }
    codes[out + 2u * params.k] = bitcast<u32>(max(energy, 0.0));
}


// pack_gram: G's f32 rows (binding 9, params.batch rows of K from word rows_first.x, the first
// being G row rows_first.y) into the G texture, one texel (4 entries of a row, zero past K) per
// invocation; f32 or f16 texels (g_dst32, g_dst16).
@group(0) @binding(9) var<storage, read> g_src: array<f32>;
@group(0) @binding(10) var g_dst32: texture_storage_2d_array<rgba32float, write>;
@group(0) @binding(11) var g_dst16: texture_storage_2d_array<rgba16float, write>;

// The texel invocation `i` writes: its value, and (column, row, layer), or layer 0xffffffff
// past the window.
struct Texel {
    value: vec4<f32>,
    at: vec3<u32>,
}

fn pack_texel(gid: vec3<u32>, groups: vec3<u32>) -> Texel {
    var out: Texel;
    out.at = vec3<u32>(0u, 0u, 0xffffffffu);
    let width = (params.n_atoms + 3u) / 4u;
    let i = gid.y * groups.x * 64u + gid.x;
    if i >= params.batch * width {
        return out;
    }
    let r = i / width;
    let c = 4u * (i - r * width);
    let src = params.rows_first.x + r * params.n_atoms;
    for (var m = 0u; m < 4u; m++) {
        if c + m < params.n_atoms {
            out.value[m] = g_src[src + c + m];
        }
    }
    let row = params.rows_first.y + r;
    let mask = (1u << params.layer_shift) - 1u;
    out.at = vec3<u32>(c / 4u, row & mask, row >> params.layer_shift);
    return out;
}

@compute @workgroup_size(64)
fn pack_gram_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let t = pack_texel(gid, groups);
    if t.at.z != 0xffffffffu {
        textureStore(g_dst32, t.at.xy, t.at.z, t.value);
    }
}

@compute @workgroup_size(64)
fn pack_gram_f16(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let t = pack_texel(gid, groups);
    if t.at.z != 0xffffffffu {
        textureStore(g_dst16, t.at.xy, t.at.z, t.value);
    }
}

// pack_alpha: the job's α⁰ rows (binding 5, from element rows_first.x) into the first α texture,
// one texel per invocation, zero past K.
@compute @workgroup_size(64)
fn pack_alpha(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let width = (params.n_atoms + 3u) / 4u;
    let i = gid.y * groups.x * 64u + gid.x;
    if i >= params.batch * width {
        return;
    }
    let r = i / width;
    let c = 4u * (i - r * width);
    let src = params.rows_first.x + r * params.n_atoms + c;
    var v = vec4<u32>();
    for (var m = 0u; m < 4u; m++) {
        if c + m < params.n_atoms {
            v[m] = alpha[src + m];
        }
    }
    textureStore(alpha_out, vec2<u32>(c / 4u, r), v);
}
