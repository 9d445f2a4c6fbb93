//! GPU sparse coders (Batch-OMP, MP) against the f64 reference coders, on planted and real data.

mod common;

use dbksvd::encode::{CodingOptions, Encoder, EncoderOptions, GramPrecision, SparseCodes};
use dbksvd::reference::omp::{self as reference, RefCode};
use dbksvd::Error;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Standard normal values by Box–Muller (the test needs nothing fancier).
fn gaussian(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| {
            let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            let u2: f64 = rng.random_range(0.0..1.0);
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

fn normalise_rows(data: &mut [f32], d: usize) {
    for row in data.chunks_mut(d) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
    }
}

fn support(codes: &SparseCodes, i: usize) -> Vec<usize> {
    codes.row(i).map(|(j, _)| j).collect()
}

struct Planted {
    atoms: Vec<f32>,
    samples: Vec<f32>,
    supports: Vec<Vec<usize>>,
    coefficients: Vec<Vec<f32>>,
}

/// d = 64, K = 128 Gaussian unit atoms; n samples of k atoms with coefficients ±U(1, 2).
fn planted(n: usize, k: usize, seed: u64) -> Planted {
    let (d, n_atoms) = (64, 128);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut atoms = gaussian(&mut rng, n_atoms * d);
    normalise_rows(&mut atoms, d);
    let mut samples = vec![0.0f32; n * d];
    let mut supports = Vec::new();
    let mut coefficients = Vec::new();
    for i in 0..n {
        let mut s: Vec<usize> = Vec::new();
        while s.len() < k {
            let j = rng.random_range(0..n_atoms);
            if !s.contains(&j) {
                s.push(j);
            }
        }
        let c: Vec<f32> = (0..k)
            .map(|_| {
                let mag: f32 = rng.random_range(1.0..2.0);
                if rng.random_range(0..2) == 0 {
                    -mag
                } else {
                    mag
                }
            })
            .collect();
        for (&j, &v) in s.iter().zip(&c) {
            for t in 0..d {
                samples[i * d + t] += v * atoms[j * d + t];
            }
        }
        supports.push(s);
        coefficients.push(c);
    }
    Planted {
        atoms,
        samples,
        supports,
        coefficients,
    }
}

fn encoder(atoms: &[f32], d: usize, coding: CodingOptions) -> Option<Encoder> {
    let gpu = common::gpu()?;
    Some(Encoder::new(gpu, atoms, atoms.len() / d, d, EncoderOptions::new(coding)).unwrap())
}

#[test]
fn planted_supports_are_found_exactly() {
    let (n, k, d) = (2048, 4, 64);
    let data = planted(n, k, 1);
    let coding = CodingOptions::omp(k);
    let Some(enc) = encoder(&data.atoms, d, coding) else {
        return;
    };
    let codes = enc.encode(&data.samples).unwrap();
    let reference = reference::encode(&data.atoms, 128, &data.samples, d, &coding);

    let mut same_as_reference = 0;
    let mut true_support = 0;
    for (i, r) in reference.iter().enumerate() {
        let got = support(&codes, i);
        if got == r.indices {
            same_as_reference += 1;
        }
        let mut sorted_got = got.clone();
        sorted_got.sort_unstable();
        let mut truth = data.supports[i].clone();
        truth.sort_unstable();
        if sorted_got == truth {
            true_support += 1;
            for (j, v) in codes.row(i) {
                let t = data.supports[i].iter().position(|&s| s == j).unwrap();
                let want = data.coefficients[i][t];
                // Noise-free: the least-squares fit is exact up to f32 rounding of a 4×4 solve.
                assert!(
                    ((v - want) / want).abs() <= 1e-4,
                    "sample {i} atom {j}: {v} vs planted {want}"
                );
            }
        }
    }
    assert_eq!(same_as_reference, n, "GPU and reference supports differ");
    assert!(
        true_support as f64 >= 0.995 * n as f64,
        "true support recovered on {true_support} of {n}"
    );
}

/// Atoms: the first 512 rows of the bundled MiniLM slice, normalised; samples: the next 1024.
fn minilm() -> (Vec<f32>, Vec<f32>, usize) {
    let (data, rows, d) = common::minilm_slice();
    assert!(rows >= 1536);
    let mut atoms = data[..512 * d].to_vec();
    normalise_rows(&mut atoms, d);
    let samples = data[512 * d..1536 * d].to_vec();
    (atoms, samples, d)
}

/// GPU codes and the reference's for the bundled rows; `None` without a GPU (the test skips).
fn compare_real(coding: CodingOptions) -> Option<(SparseCodes, Vec<RefCode>)> {
    let (atoms, samples, d) = minilm();
    let enc = encoder(&atoms, d, coding)?;
    let codes = enc.encode(&samples).unwrap();
    let reference = reference::encode(&atoms, 512, &samples, d, &coding);
    assert_eq!(codes.n, reference.len());
    assert!(codes.n > 0, "no rows to compare");
    Some((codes, reference))
}

fn check_real(coding: CodingOptions, min_same: f64) {
    check_real_within(coding, min_same, 1e-3);
}

/// [`check_real`] with each residual energy within `energy_tol` (relative) of the reference's.
fn check_real_within(coding: CodingOptions, min_same: f64, energy_tol: f64) {
    let Some((codes, reference)) = compare_real(coding) else {
        return;
    };
    let n = codes.n;
    let mut same = 0;
    for (i, r) in reference.iter().enumerate() {
        if support(&codes, i) == r.indices {
            same += 1;
        }
        let (got, want) = (codes.residual_energy[i] as f64, r.residual_energy);
        assert!(got.is_finite());
        assert!(
            (got - want).abs() <= energy_tol * want,
            "{:?} sample {i}: residual energy {got} vs reference {want}",
            coding.coder
        );
    }
    eprintln!("{:?}: supports identical on {same} of {n}", coding.coder);
    assert!(
        same as f64 >= min_same * n as f64,
        "{:?}: supports identical on only {same} of {n}",
        coding.coder
    );
}

#[test]
fn omp_matches_reference_on_real_activations() {
    check_real(CodingOptions::omp(16), 0.99);
}

#[test]
fn mp_matches_reference_on_real_activations() {
    check_real(CodingOptions::mp(16, false), 0.99);
    check_real(CodingOptions::mp(16, true), 0.99);
}

/// G in f16 (2⁻¹¹ relative rounding per entry) against the reference's exact G, on real
/// activations: where two atoms' correlations differ by less than that rounding the greedy
/// choice may differ, so fewer supports are identical than with f32 and a row's residual may be
/// a few percent off (either way), but over the batch the residual energy stays within 0.5 %
/// of the reference's. Measured (1024 rows, K = 512, k = 16): see the printed figures; a
/// mispacked G (a wrong word or half) picks wrong atoms on most rows.
#[test]
fn half_gram_matches_reference_on_real_activations() {
    for coding in [
        CodingOptions::omp(16),
        CodingOptions::mp(16, false),
        CodingOptions::mp(16, true),
    ] {
        let Some((codes, reference)) = compare_real(coding.with_gram(GramPrecision::F16)) else {
            return;
        };
        let n = codes.n;
        let same = (0..n)
            .filter(|&i| support(&codes, i) == reference[i].indices)
            .count();
        let (mut got, mut want, mut worst) = (0.0f64, 0.0f64, 0.0f64);
        for (i, r) in reference.iter().enumerate() {
            let e = codes.residual_energy[i] as f64;
            assert!(e.is_finite());
            got += e;
            want += r.residual_energy;
            worst = worst.max((e - r.residual_energy).abs() / r.residual_energy);
        }
        eprintln!(
            "{:?} with f16 G: supports identical on {same} of {n}, residual energy {:.5} of the \
             reference's, worst row {worst:.4}",
            coding.coder,
            got / want
        );
        assert!(same as f64 >= 0.9 * n as f64, "{same} of {n}");
        assert!((got / want - 1.0).abs() <= 5e-3, "{}", got / want);
        assert!(worst <= 0.3, "{worst}");
    }
}

/// f16 G on awkward shapes: K not a multiple of 4 (texture rows padded), one sample, k = 1 and
/// k = K, G packed in windows and layers. Each residual within 2 % of the reference's plus 0.5 % of
/// ‖y‖². Not k = d: there the support's Gram is square and ill-conditioned, which amplifies
/// f16's rounding into the coefficients (measured 1 % of ‖y‖² left where f32 leaves 0): f32 is
/// the storage for k near d.
#[test]
fn half_gram_on_awkward_shapes() {
    let Some(gpu) = common::gpu() else { return };
    for (n_atoms, d, n, k) in [(37, 16, 1, 1), (1001, 64, 5, 16), (13, 40, 7, 13)] {
        let coding = CodingOptions::omp(k).with_gram(GramPrecision::F16);
        check_against_reference_within(gpu, n_atoms, d, n, coding, (2e-2, 5e-3));
    }
    // G [1001, 1001] packed from row windows under a 600 KiB binding, and in four layers of
    // 256 rows under a 300-texel texture side.
    let coding = CodingOptions::omp(16).with_gram(GramPrecision::F16);
    let small = gpu.with_max_binding_size(600 * 1024).unwrap();
    check_against_reference_within(&small, 1001, 64, 5, coding, (2e-2, 5e-3));
    let layered = gpu.with_max_texture_dimension(300);
    check_against_reference_within(&layered, 1001, 64, 5, coding, (2e-2, 5e-3));
}

#[test]
fn tolerance_stop_matches_reference_counts() {
    let (atoms, samples, d) = minilm();
    // A tolerance that stops about half the samples early.
    let tolerance = 0.3;
    let coding = CodingOptions::omp(16).with_tolerance(tolerance);
    let Some((codes, reference)) = compare_real(coding) else {
        return;
    };
    let mut early = 0;
    for (i, r) in reference.iter().enumerate() {
        let (got, want) = (codes.row_nnz(i), r.indices.len());
        early += (want < 16) as usize;
        if got != want {
            // Only a sample whose ratio at the shorter count sits at the tolerance may differ.
            let at = got.min(want);
            let y = &samples[i * d..(i + 1) * d];
            let y2: f64 = y.iter().map(|&v| v as f64 * v as f64).sum();
            let path = reference::encode_sample(&atoms, 512, y, &CodingOptions::omp(at));
            let ratio = path.residual_energy / y2;
            assert!(
                (ratio - tolerance as f64).abs() <= 1e-5,
                "sample {i}: GPU used {got} atoms, reference {want}, ratio {ratio}"
            );
        }
    }
    assert!(
        early > 100,
        "the tolerance stopped only {early} samples early"
    );
}

/// Codes of all samples in a single batch, the baseline the batching tests compare with.
fn one_batch(
    gpu: &dbksvd::Gpu,
    atoms: &[f32],
    samples: &[f32],
    d: usize,
    coding: CodingOptions,
) -> SparseCodes {
    let encoder =
        Encoder::new(gpu, atoms, atoms.len() / d, d, EncoderOptions::new(coding)).unwrap();
    assert_eq!(
        encoder.batch_size(samples.len() / d).unwrap(),
        samples.len() / d
    );
    encoder.encode(samples).unwrap()
}

#[test]
fn batching_does_not_change_codes() {
    let (atoms, samples, d) = minilm();
    let Some(gpu) = common::gpu() else { return };
    let coding = CodingOptions::omp(8);
    let whole = one_batch(gpu, &atoms, &samples, d, coding);
    let options = EncoderOptions::new(coding).with_batch_size(97);
    let batched = Encoder::new(gpu, &atoms, 512, d, options).unwrap();
    assert_eq!(batched.batch_size(1024).unwrap(), 97);
    assert_eq!(batched.encode(&samples).unwrap(), whole);
}

/// The coders read G [512, 512] (1 MiB) from a texture filled from the product's rows in
/// windows that fit a binding: under a 300 KiB or 160 KiB binding cap G is packed in four or
/// seven windows, and one job of 1024 rows binds α [1024, 512], the codes and the coding state
/// in row chunks (at most 300 KiB / 2 KiB = 149 rows of α each). With 2D textures of at most
/// 200 texels a side G lies in four layers of 128 rows, the samples' updates in chunks of at
/// most 200 rows and the fused kernel's Cholesky factors in layers of 128 rows. The codes of
/// either coder must not change, nor Batch-OMP's between its fused kernel and its sweeps
/// (`with_swept_batch_omp`): the same f32 operations in the same order.
#[test]
fn gram_split_across_bindings_and_layers_gives_the_same_codes() {
    let (atoms, samples, d) = minilm();
    let Some(gpu) = common::gpu() else { return };
    let small = gpu.with_max_binding_size(300 * 1024).unwrap();
    let smaller = gpu.with_max_binding_size(160 * 1024).unwrap();
    let layered = gpu.with_max_texture_dimension(200);
    // Batch-OMP's sweeps too, where it runs fused (lavapipe): the same bits.
    let swept = gpu.with_swept_batch_omp();
    let layered_swept = layered.with_swept_batch_omp();
    for coding in [CodingOptions::omp(8), CodingOptions::mp(8, true)] {
        let whole = one_batch(gpu, &atoms, &samples, d, coding);
        for split_gpu in [&small, &smaller, &layered, &swept, &layered_swept] {
            let split = one_batch(split_gpu, &atoms, &samples, d, coding);
            assert_eq!(split, whole, "{:?}", coding.coder);
        }
    }
    // A G row of 128 texels does not fit a 100-texel texture: a clear error, not a wrong result.
    let narrow = gpu.with_max_texture_dimension(100);
    let err = Encoder::new(
        &narrow,
        &atoms,
        512,
        d,
        EncoderOptions::new(CodingOptions::omp(8)),
    )
    .and_then(|e| e.encode(&samples))
    .unwrap_err();
    assert!(
        matches!(&err, Error::ExceedsLimit { limit_name, .. } if *limit_name == "max_texture_dimension_2d"),
        "{err}"
    );
}

#[test]
fn degenerate_inputs_give_correct_results_or_errors() {
    let Some(gpu) = common::gpu() else { return };
    let d = 8;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut atoms = gaussian(&mut rng, 32 * d);
    normalise_rows(&mut atoms, d);
    // Atom 1 duplicates atom 0: OMP may take one of them, never both (the pivot rule).
    let (a0, rest) = atoms.split_at_mut(d);
    rest[..d].copy_from_slice(a0);
    let samples = gaussian(&mut rng, 20 * d);
    let mut with_zero = samples.clone();
    with_zero[3 * d..4 * d].fill(0.0);

    for coding in [
        CodingOptions::omp(20), // k > d: at most d atoms
        CodingOptions::mp(20, true),
        CodingOptions::omp(3),
    ] {
        let enc = Encoder::new(gpu, &atoms, 32, d, EncoderOptions::new(coding)).unwrap();
        let codes = enc.encode(&with_zero).unwrap();
        let reference = reference::encode(enc.atoms(), 32, &with_zero, d, &coding);
        for (i, r) in reference.iter().enumerate() {
            let s = support(&codes, i);
            assert!(
                s.len() <= d.min(coding.k),
                "sample {i} uses {} atoms",
                s.len()
            );
            assert!(
                !(s.contains(&0) && s.contains(&1)),
                "sample {i} uses both duplicates"
            );
            assert!(codes.values[i * coding.k..(i + 1) * coding.k]
                .iter()
                .all(|v| v.is_finite()));
            assert!(codes.residual_energy[i].is_finite());
            let want = r.residual_energy;
            assert!(
                (codes.residual_energy[i] as f64 - want).abs() <= 1e-3 * want + 1e-4,
                "{:?} sample {i}: energy {} vs {want}",
                coding.coder,
                codes.residual_energy[i]
            );
        }
        assert_eq!(codes.row_nnz(3), 0, "the zero sample got atoms");
        assert_eq!(codes.residual_energy[3], 0.0);
    }

    // k > K: at most K atoms.
    let few = &atoms[2 * d..7 * d];
    let enc = Encoder::new(gpu, few, 5, d, EncoderOptions::new(CodingOptions::omp(10))).unwrap();
    let codes = enc.encode(&samples).unwrap();
    assert!((0..20).all(|i| codes.row_nnz(i) <= 5));

    // Errors: k = 0, d mismatch, non-finite data, zero atom.
    let err = Encoder::new(
        gpu,
        &atoms,
        32,
        d,
        EncoderOptions::new(CodingOptions::omp(0)),
    );
    assert!(matches!(err, Err(Error::InvalidArgument(_))), "{err:?}");
    let enc = Encoder::new(
        gpu,
        &atoms,
        32,
        d,
        EncoderOptions::new(CodingOptions::omp(4)),
    )
    .unwrap();
    let err = enc.encode(&samples[..d * 3 + 1]).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let mut bad = samples.clone();
    bad[5 * d + 2] = f32::NAN;
    let err = enc.encode(&bad).unwrap_err();
    assert!(
        matches!(err, Error::NonFinite { row: 5, col: 2, .. }),
        "{err}"
    );
    let mut zero_atom = atoms.clone();
    zero_atom[4 * d..5 * d].fill(0.0);
    let err = Encoder::new(
        gpu,
        &zero_atom,
        32,
        d,
        EncoderOptions::new(CodingOptions::omp(4)),
    );
    assert!(
        matches!(&err, Err(Error::InvalidArgument(m)) if m.contains("atom 4")),
        "{err:?}"
    );
    let err = enc.with_mean(vec![0.0; d + 1]).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
}

#[test]
fn mean_is_subtracted_and_added_back() {
    let Some(gpu) = common::gpu() else { return };
    let d = 64;
    let data = planted(64, 3, 3);
    let mean: Vec<f32> = (0..d).map(|t| t as f32 * 0.1 - 2.0).collect();
    let shifted: Vec<f32> = data
        .samples
        .iter()
        .enumerate()
        .map(|(i, v)| v + mean[i % d])
        .collect();
    let enc = Encoder::new(
        gpu,
        &data.atoms,
        128,
        d,
        EncoderOptions::new(CodingOptions::omp(3)),
    )
    .unwrap()
    .with_mean(mean)
    .unwrap();
    let codes = enc.encode(&shifted).unwrap();
    let back = enc.reconstruct(&codes).unwrap();
    let err: f32 = back
        .iter()
        .zip(&shifted)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f32>()
        .sqrt();
    let norm: f32 = shifted.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!(err <= 1e-4 * norm, "reconstruction error {err} of {norm}");
    // Densified codes hold the same nonzeros; indices beyond K are an error.
    let dense = codes.to_dense(128).unwrap();
    assert_eq!(dense.len(), 64 * 128);
    assert_eq!(dense.iter().filter(|v| **v != 0.0).count(), codes.nnz());
    assert!(matches!(codes.to_dense(10), Err(Error::InvalidArgument(_))));
}

/// Codes `n` uniform samples with K atoms of dimension d at k and checks every residual against
/// the reference (1e-3 relative: f32 Cholesky over up to 64 atoms, against f64).
fn check_against_reference(
    gpu: &dbksvd::gpu::Gpu,
    n_atoms: usize,
    d: usize,
    n: usize,
    coding: CodingOptions,
) {
    check_against_reference_within(gpu, n_atoms, d, n, coding, (1e-3, 0.0));
}

/// [`check_against_reference`] with residuals within `tol.0` of the reference's plus `tol.1`
/// of ‖y‖² (both relative).
fn check_against_reference_within(
    gpu: &dbksvd::gpu::Gpu,
    n_atoms: usize,
    d: usize,
    n: usize,
    coding: CodingOptions,
    tol: (f64, f64),
) {
    let atoms = common::uniform(n_atoms * d, 1);
    let samples = common::uniform(n * d, 2);
    let encoder = Encoder::new(gpu, &atoms, n_atoms, d, EncoderOptions::new(coding)).unwrap();
    let codes = encoder.encode(&samples).unwrap();
    let refs = reference::encode(encoder.atoms(), n_atoms, &samples, d, &coding);
    for (i, r) in refs.iter().enumerate() {
        let got = codes.residual_energy[i] as f64;
        let y2: f64 = samples[i * d..(i + 1) * d]
            .iter()
            .map(|&v| v as f64 * v as f64)
            .sum();
        assert!(
            (got - r.residual_energy).abs() <= tol.0 * r.residual_energy + tol.1 * y2 + 1e-4,
            "K = {n_atoms}, k = {}, sample {i}: {got} vs {}",
            coding.k,
            r.residual_energy
        );
        // With f16 G the stopping rules (pivot, correlation floor) see rounded values: a
        // sample may stop an atom earlier or later than the reference.
        let slack = usize::from(coding.gram == GramPrecision::F16);
        assert!(
            codes.row(i).count().abs_diff(r.indices.len()) <= slack,
            "sample {i}: {} atoms, reference {}",
            codes.row(i).count(),
            r.indices.len()
        );
    }
}

/// The one-dispatch kernel refused these on lavapipe (K = 512, k = 48 gave residuals 20× the
/// reference's before the loop-cap check existed; K = 2053, k = 64 needed 4·10⁵ iterations per
/// invocation). One greedy step per dispatch keeps every dispatch far below the cap.
#[test]
fn jobs_past_the_old_loop_wall_match_the_reference() {
    let Some(gpu) = common::gpu() else { return };
    check_against_reference(gpu, 512, 128, 4, CodingOptions::omp(48));
    check_against_reference(gpu, 2053, 96, 3, CodingOptions::omp(64));
    check_against_reference(gpu, 2053, 96, 3, CodingOptions::mp(64, true));
}

/// Where the driver caps loop iterations per invocation (lavapipe), a coding job beyond the cap
/// (k in the hundreds: the select kernel's triangular solves grow with k², about k² iterations
/// at its last step, 57 000 at k = 240 against lavapipe's 45 000) is refused rather than
/// silently truncated; elsewhere it must match the reference. k = 200 (40 000) runs everywhere:
/// it was refused while select redid the whole forward solve at every step (3k²/2).
#[test]
fn jobs_beyond_the_drivers_loop_cap_are_refused() {
    let Some(gpu) = common::gpu() else { return };
    check_against_reference(gpu, 300, 256, 2, CodingOptions::omp(200));
    let (n_atoms, d, k) = (300, 256, 240);
    let coding = CodingOptions::omp(k);
    match gpu.limits().max_loop_iterations {
        Some(_) => {
            let atoms = common::uniform(n_atoms * d, 1);
            let samples = common::uniform(2 * d, 2);
            let err = Encoder::new(gpu, &atoms, n_atoms, d, EncoderOptions::new(coding))
                .and_then(|e| e.encode(&samples))
                .unwrap_err();
            assert!(matches!(err, Error::ExceedsLimit { .. }), "{err}");
        }
        None => check_against_reference(gpu, n_atoms, d, 2, coding),
    }
}

/// Coding shapes (K, d, samples, k) that reach every edge of the kernels' tiling: K = 1, one
/// sample, k = d (13 × 7, 61 × 24), primes, and three sweep chunks of 512 atoms, the last one
/// short (K = 1031).
const AWKWARD: [(usize, usize, usize, usize); 5] = [
    (1, 5, 3, 1),
    (13, 7, 1, 7),
    (257, 31, 5, 16),
    (61, 24, 4, 24),
    (1031, 20, 4, 12),
];

/// Batch-OMP on CPU adapters fuses each greedy step's sweep and select into one kernel
/// (`fused_omp`: one invocation per sample, as many steps per dispatch as the loop cap allows,
/// the chosen atoms and coefficients in private memory). Every path against the reference, on a profiling context that
/// says which kernels ran: fused whole (one dispatch per job), fused split into dispatches of
/// a few steps (a cap of 3000: later dispatches reload the atoms and coefficients from the
/// record), and of a few blocks of 16 atoms where one step does not fit (1000: the running
/// argmax carried in the record from one dispatch to the next), and the sweeps where the view
/// asks for them (`with_swept_batch_omp`). Shapes: K = 1 and primes (blocks of 16 atoms past K), one sample,
/// k = 1 and k = d; k = 80 whole and swept only (under those caps its solves are refused on
/// either path). Elsewhere only the sweeps run.
#[test]
fn fused_and_swept_batch_omp_match_the_reference() {
    let Some(gpu) = common::gpu() else { return };
    let Some(profiled) = dbksvd::gpu::Gpu::profiling_context().unwrap() else {
        // lavapipe (CI) has timestamp queries; other adapters may not.
        assert!(!gpu.adapter().name.contains("llvmpipe"), "no timestamps");
        return eprintln!("SKIPPED: {} has no timestamp queries", gpu.adapter().name);
    };
    let cpu = gpu.adapter().is_cpu();
    let paths = [
        ("whole", profiled.clone()),
        ("split", profiled.with_max_loop_iterations(3000)),
        ("capped", profiled.with_max_loop_iterations(1000)),
        ("swept", profiled.with_swept_batch_omp()),
    ];
    // Per path: (k, fused dispatches, sweep dispatches) of each shape's job.
    let mut ran: Vec<Vec<(u64, u64, u64)>> = vec![Vec::new(); paths.len()];
    for (n_atoms, d, n, k) in AWKWARD.into_iter().chain([(300, 96, 3, 80)]) {
        for (p, (name, g)) in paths.iter().enumerate() {
            if k > 24 && (*name == "split" || *name == "capped") {
                continue;
            }
            profiled.reset_kernel_times().unwrap();
            check_against_reference(g, n_atoms, d, n, CodingOptions::omp(k));
            let times = profiled.kernel_times().unwrap();
            let dispatches = |kernel: &str| -> u64 {
                times
                    .iter()
                    .filter(|t| t.kernel == kernel)
                    .map(|t| t.dispatches)
                    .sum()
            };
            let (fused, sweeps) = (dispatches("fused_omp"), dispatches("sweep"));
            assert!(
                (fused > 0) != (sweeps > 0 || dispatches("sweep_reduced") > 0),
                "K = {n_atoms}, k = {k}, {name}: {times:?}"
            );
            ran[p].push((k as u64, fused, sweeps));
        }
    }
    let fused_jobs = |p: usize| ran[p].iter().filter(|r| r.1 > 0).count();
    if !cpu {
        assert!((0..paths.len()).all(|p| fused_jobs(p) == 0), "{ran:?}");
        return;
    }
    // Every job fused but the swept view's; whole: in one dispatch up to k = 24 (k = 80 takes
    // several under lavapipe's cap: its solves grow with k²).
    for p in 0..3 {
        assert_eq!(fused_jobs(p), ran[p].len(), "{ran:?}");
    }
    assert_eq!(fused_jobs(3), 0, "{ran:?}");
    assert!(ran[0][..5].iter().all(|r| r.1 == 1), "{ran:?}");
    // Split: some job in several dispatches of whole steps; capped: some step split into
    // blocks (more dispatches than steps).
    assert!(ran[1].iter().any(|r| r.1 > 1 && r.1 <= r.0), "{ran:?}");
    assert!(ran[2].iter().any(|r| r.1 > r.0), "{ran:?}");
}

/// Matching pursuit with subgroup operations keeps each sample's correlations in registers for
/// many steps (omp_resident.wgsl): one subgroup's on CPU adapters (lavapipe), one workgroup's
/// on GPUs; with `without_subgroups` it takes a sweep and a select dispatch per step. Every
/// path, both resident ones also split into dispatches of a few steps and refit rows (a small
/// loop cap: later dispatches rebuild α from the chosen atoms; on lavapipe the refit's factor,
/// grown in private memory, is read back and written out between dispatches), and what a GPU plans
/// (`with_gpu_paths`: the workgroup coder, or the sweeps reduced in the workgroup, after the
/// tiled GEMM's correlations), against the reference: K = 1 and primes (texels past K, an
/// interleaved last texel, several sweep chunks), K = 1022 and 2302 (α in named registers and
/// in private arrays on lavapipe, a texel partly past K; a cap of 3000 splits the resident
/// steps there too, where 700 leaves those K to the sweeps), one sample, k = 1 and k = d, with
/// and without the refit; Batch-OMP on the GPU kernels too.
#[test]
fn resident_and_portable_matching_pursuit_match_the_reference() {
    let Some(gpu) = common::gpu() else { return };
    if gpu.adapter().name.contains("llvmpipe") {
        // Else this test would check the portable path twice without saying so.
        assert!(
            gpu.limits().subgroup_size.is_some(),
            "lavapipe offers subgroups: the resident coder must be exercised here"
        );
    }
    let portable = gpu.without_subgroups();
    let split = gpu.with_max_loop_iterations(700);
    let wide_split = gpu.with_max_loop_iterations(3000);
    let gpu_paths = gpu.with_gpu_paths();
    let gpu_sweeps = gpu_paths.without_subgroups();
    let gpu_split = gpu_paths.with_max_loop_iterations(700);
    for (n_atoms, d, n, k) in AWKWARD.into_iter().chain([
        // Texels per lane of 8 (rounded up to a multiple of 8), lane 7's last texel partly in K:
        // 32, in named registers; 72, past the 64 held so, in private arrays (`texel_lines`).
        (1022, 20, 4, 12),
        (2302, 20, 4, 12),
    ]) {
        for refit in [false, true] {
            let coding = CodingOptions::mp(k, refit);
            for g in [
                gpu,
                &portable,
                &split,
                &wide_split,
                &gpu_paths,
                &gpu_sweeps,
                &gpu_split,
            ] {
                check_against_reference(g, n_atoms, d, n, coding);
            }
        }
        check_against_reference(&gpu_paths, n_atoms, d, n, CodingOptions::omp(k));
    }
}

/// Exact ties of |α| go to the lowest atom on every path, as in the reference: atoms copied to
/// higher indices in another sweep chunk (512 atoms at K = 1031), in another invocation of the
/// same chunk, in the same invocation, and in a lower invocation of a later texel, samples
/// built from the originals. A path that breaks ties the other way (the reduction across a GPU
/// sweep's invocations, select across chunks, the resident subgroup's or workgroup's, the fused
/// kernel's across its blocks of 16 atoms) picks a copy. On lavapipe Batch-OMP runs fused, and
/// swept in the `with_swept_batch_omp` view.
#[test]
fn ties_go_to_the_lowest_atom_on_every_path() {
    let Some(gpu) = common::gpu() else { return };
    let (n_atoms, d, n) = (1031, 16, 20);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut atoms = gaussian(&mut rng, n_atoms * d);
    normalise_rows(&mut atoms, d);
    // The last pair's copy lies in a lower invocation of the GPU's resident workgroup (texel
    // 257 = 256 + 1) than its original (texel 249): invocation order must not decide ties.
    let copies = [(5, 700), (300, 1020), (520, 1000), (517, 525), (996, 1030)];
    for (from, to) in copies {
        atoms.copy_within(from * d..(from + 1) * d, to * d);
    }
    let noise = gaussian(&mut rng, n * d);
    let mut samples = vec![0.0f32; n * d];
    for i in 0..n {
        let (a, b) = (copies[i % 5].0, copies[(i / 5 + 1 + i % 5) % 5].0);
        for t in 0..d {
            samples[i * d + t] =
                3.0 * atoms[a * d + t] - 2.0 * atoms[b * d + t] + 0.01 * noise[i * d + t];
        }
    }
    let gpu_paths = gpu.with_gpu_paths();
    let paths = [
        gpu,
        &gpu_paths,
        &gpu.without_subgroups(),
        &gpu_paths.without_subgroups(),
        &gpu.with_swept_batch_omp(),
    ];
    for coding in [CodingOptions::omp(3), CodingOptions::mp(3, true)] {
        let refs = reference::encode(&atoms, n_atoms, &samples, d, &coding);
        for g in paths {
            let encoder = Encoder::new(g, &atoms, n_atoms, d, EncoderOptions::new(coding)).unwrap();
            let codes = encoder.encode(&samples).unwrap();
            for (i, r) in refs.iter().enumerate() {
                let got = support(&codes, i);
                assert!(
                    got.iter().all(|j| copies.iter().all(|c| c.1 != *j)),
                    "{coding:?}, sample {i}: a copy chosen in {got:?}"
                );
                assert_eq!(got, r.indices, "{coding:?}, sample {i}");
            }
        }
    }
}
