//! Matryoshka dictionaries: nested atom groups trained in order on the residual, so that every
//! prefix of groups reconstructs on its own; any K, not only powers of two.

mod common;

use dbksvd::data::{ActivationSource, InMemory};
use dbksvd::dictionary::{Dictionary, GROUPS_METADATA};
use dbksvd::encode::{CodingOptions, Groups};
use dbksvd::train::{evaluate, evaluate_prefix, TrainConfig, TrainResult, Trainer};

#[test]
fn groups_double_for_any_k_and_share_k_exactly() {
    let groups = Groups::doubling(64, 1000).unwrap();
    assert_eq!(groups.ends(), [64, 128, 256, 512, 1000]);
    assert_eq!(groups.range(4), 512..1000);
    assert_eq!(
        Groups::doubling(64, 1024).unwrap().ends(),
        [64, 128, 256, 512, 1024]
    );
    assert_eq!(Groups::doubling(7, 7).unwrap().ends(), [7]);
    // KSVD.jl's guard throws unless K is a power of two; here every K from 1 to 300 works, and
    // every k from the number of groups up splits exactly, at least 1 per group, larger groups
    // never getting fewer slots than smaller ones.
    for n_atoms in 1..=300 {
        let groups = Groups::doubling(4.min(n_atoms), n_atoms).unwrap();
        assert!(groups.split_k(n_atoms + 1).is_err());
        for k in groups.len()..=n_atoms.min(groups.len() + 40) {
            let shares = groups.split_k(k).unwrap();
            assert_eq!(shares.iter().sum::<usize>(), k, "K = {n_atoms}, k = {k}");
            assert!(shares.iter().all(|&s| s >= 1));
            // Never more slots than atoms.
            assert!((0..groups.len()).all(|g| shares[g] <= groups.range(g).len()));
            for a in 0..groups.len() {
                for b in 0..groups.len() {
                    if groups.range(a).len() < groups.range(b).len() {
                        assert!(shares[a] <= shares[b], "K {n_atoms} k {k}: {shares:?}");
                    }
                }
            }
        }
        assert!(groups.split_k(groups.len() - 1).is_err());
    }
    // The documented examples: proportional shares, and a one-atom last group (K = 513)
    // that would have won a second slot.
    let groups = Groups::doubling(64, 1536).unwrap();
    assert_eq!(groups.split_k(32).unwrap(), [2, 2, 3, 5, 10, 10]);
    let groups = Groups::doubling(64, 513).unwrap();
    assert_eq!(groups.ends(), [64, 128, 256, 512, 513]);
    assert_eq!(groups.split_k(16).unwrap().iter().sum::<usize>(), 16);
    assert_eq!(groups.split_k(16).unwrap()[4], 1);
    // Groups read from a file are checked as `Groups::new` checks them.
    for bad in ["[]", "[5,3,10]", "[0,4]"] {
        assert!(serde_json::from_str::<Groups>(bad).is_err(), "{bad}");
    }
    assert_eq!(
        serde_json::from_str::<Groups>("[4,8]").unwrap(),
        Groups::new(vec![4, 8]).unwrap()
    );
    // Bad groups.
    assert!(Groups::new(vec![]).is_err());
    assert!(Groups::new(vec![0, 4]).is_err());
    assert!(Groups::new(vec![8, 8, 16]).is_err());
    assert!(Groups::doubling(0, 16).is_err());
    assert!(Groups::doubling(17, 16).is_err());
    let mut config = TrainConfig::new(100, 3);
    config.groups = Some(Groups::doubling(10, 100).unwrap());
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("k = 3") && err.contains("5 Matryoshka groups"),
        "{err}"
    );
    config.groups = Some(Groups::new(vec![10, 90]).unwrap());
    assert!(config
        .validate()
        .unwrap_err()
        .to_string()
        .contains("K = 100"));
}

/// The bundled MiniLM rows: (training rows 0..3584, held-out rows 3584..4096).
fn minilm_split() -> (InMemory<Vec<f32>>, InMemory<Vec<f32>>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/minilm_rustbook_L4_small.safetensors"
    );
    let file = dbksvd::data::ActivationFile::open(path).unwrap();
    let d = file.dim();
    let mut all = vec![0.0; file.rows() * d];
    file.read_rows(0, &mut all).unwrap();
    let held_out = all.split_off(3584 * d);
    (
        InMemory::new(all, d).unwrap(),
        InMemory::new(held_out, d).unwrap(),
    )
}

/// FVU of `dictionary` on `source` coded with its first `prefix` groups (the first `atoms`
/// atoms and `k` nonzeros for a plain dictionary).
fn prefix_fvu(
    gpu: &dbksvd::Gpu,
    dictionary: &Dictionary,
    source: &InMemory<Vec<f32>>,
    prefix: usize,
    atoms: usize,
    k: usize,
) -> f64 {
    let score = match dictionary.groups().unwrap() {
        Some(_) => {
            let coding = CodingOptions::omp(dictionary.k().unwrap());
            evaluate_prefix(gpu, dictionary, source, coding, 4096, prefix)
                .unwrap()
                .fvu
        }
        None => {
            let first = dictionary.first_atoms(atoms).unwrap();
            evaluate(gpu, &first, source, CodingOptions::omp(k), 4096)
                .unwrap()
                .fvu
        }
    };
    assert!(score.is_finite());
    score
}

/// The comparison's dictionaries: K atoms, k nonzeros, Matryoshka groups from `SMALLEST`
/// (128, 128 and 256 atoms with 4, 4 and 8 nonzeros), as the bundled default trains them.
const K: usize = 512;
const NONZEROS: usize = 16;
const SMALLEST: usize = 128;
const EPOCHS: usize = 4;

fn train(gpu: &dbksvd::Gpu, source: &InMemory<Vec<f32>>, groups: Option<Groups>) -> TrainResult {
    let mut config = TrainConfig::new(K, NONZEROS);
    config.epochs = EPOCHS;
    config.batch_size = Some(1792);
    config.groups = groups;
    Trainer::new(gpu, config).fit(source).unwrap()
}

/// On MiniLM: the first group of a Matryoshka dictionary alone reconstructs better than the
/// first atoms of a plain dictionary trained with the same budget, with the same nonzeros;
/// with all groups it stays within 12 % of the plain dictionary's FVU.
#[test]
fn every_prefix_reconstructs_and_the_whole_stays_close_to_plain() {
    let Some(gpu) = common::gpu() else { return };
    let (train_rows, held_out) = minilm_split();
    let k = NONZEROS;
    let groups = Groups::doubling(SMALLEST, K).unwrap();
    let shares = groups.split_k(k).unwrap();
    assert_eq!(shares, [4, 4, 8]);
    let matryoshka = train(gpu, &train_rows, Some(groups.clone()));
    let plain = train(gpu, &train_rows, None);
    assert_eq!(
        matryoshka.dictionary.metadata()[GROUPS_METADATA],
        serde_json::to_string(groups.ends()).unwrap()
    );
    assert!(plain.dictionary.groups().unwrap().is_none());
    let mut previous = f64::INFINITY;
    let mut report = Vec::new();
    for prefix in 1..=groups.len() {
        let atoms = groups.ends()[prefix - 1];
        let k: usize = shares[..prefix].iter().sum();
        let m = prefix_fvu(gpu, &matryoshka.dictionary, &held_out, prefix, atoms, k);
        let p = prefix_fvu(gpu, &plain.dictionary, &held_out, prefix, atoms, k);
        report.push(format!(
            "{atoms} atoms, k = {k}: Matryoshka {m:.4}, plain {p:.4}"
        ));
        // Each group explains more of what the earlier ones left.
        assert!(m < previous, "{report:?}");
        previous = m;
    }
    eprintln!("{}", report.join("\n"));
    let (first, first_k) = (groups.ends()[0], shares[0]);
    let first_m = prefix_fvu(gpu, &matryoshka.dictionary, &held_out, 1, first, first_k);
    let first_p = prefix_fvu(gpu, &plain.dictionary, &held_out, 1, first, first_k);
    assert!(first_m < first_p, "{report:?}");
    // All groups against the plain dictionary, both coded with k = 16 (each its own way).
    let whole_m = evaluate(
        gpu,
        &matryoshka.dictionary,
        &held_out,
        CodingOptions::omp(k),
        4096,
    )
    .unwrap()
    .fvu;
    let whole_p = evaluate(
        gpu,
        &plain.dictionary,
        &held_out,
        CodingOptions::omp(k),
        4096,
    )
    .unwrap()
    .fvu;
    eprintln!("all groups: Matryoshka {whole_m:.4}, plain {whole_p:.4}");
    // Measured on lavapipe: 0.2893 against 0.2622 (+10.3 %) with the trainer's atom batch of
    // 128 (at A = 32: 0.2903 against 0.2672, +8.6 %; the plain dictionary gained more from
    // the larger batch); with groups from 64 (four groups) the whole cost +13 %, and on the
    // larger MiniLM split with groups from 64, +24 % (README, A = 32): the bound holds for
    // few, large groups.
    assert!(
        whole_m <= 1.12 * whole_p,
        "Matryoshka {whole_m} vs plain {whole_p}"
    );
}

/// K = 1000 (not a power of two) from the command line: trains, records its groups in the
/// dictionary and the SAELens config, and encodes with every group or a prefix, each group's
/// codes in its own slots and naming only its own atoms.
#[test]
fn a_dictionary_of_1000_atoms_trains_and_encodes_by_groups() {
    if common::gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let data = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/minilm_rustbook_L4_small.safetensors"
    );
    let dbksvd = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_dbksvd"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let out_s = out.to_str().unwrap();
    dbksvd(&[
        "train",
        "--data",
        data,
        "--rows",
        "0:3584",
        "--atoms",
        "1000",
        "--k",
        "10",
        "--epochs",
        "1",
        "--matryoshka",
        "64",
        "--out",
        out_s,
    ]);
    let dictionary = Dictionary::load(out.join("dictionary.safetensors")).unwrap();
    let groups = dictionary.groups().unwrap().unwrap();
    assert_eq!(groups.ends(), [64, 128, 256, 512, 1000]);
    let shares = groups.split_k(10).unwrap();
    assert_eq!(shares.iter().sum::<usize>(), 10);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sae/cfg.json")).unwrap()).unwrap();
    assert_eq!(
        cfg["metadata"]["dbksvd_matryoshka_groups"],
        serde_json::json!([64, 128, 256, 512, 1000])
    );

    let dict = out.join("dictionary.safetensors");
    let read_codes = |path: &std::path::Path| {
        let bytes = std::fs::read(path).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let indices: Vec<i32> =
            bytemuck::pod_collect_to_vec(file.tensor("indices").unwrap().data());
        let energy: Vec<f32> =
            bytemuck::pod_collect_to_vec(file.tensor("residual_energy").unwrap().data());
        (indices, energy)
    };
    let mut energies = Vec::new();
    for prefix in [Some("2"), None] {
        let codes = dir.path().join(format!("codes-{prefix:?}.safetensors"));
        let mut args = vec![
            "encode",
            "--dict",
            dict.to_str().unwrap(),
            "--data",
            data,
            "--rows",
            "3584:4096",
            "--out",
            codes.to_str().unwrap(),
        ];
        if let Some(prefix) = prefix {
            args.extend(["--groups", prefix]);
        }
        dbksvd(&args);
        let (indices, energy) = read_codes(&codes);
        assert_eq!(indices.len(), 512 * 10);
        let used = prefix.map_or(groups.len(), |p| p.parse().unwrap());
        for row in indices.chunks(10) {
            let mut slot = 0;
            for (g, &share) in shares.iter().enumerate() {
                for &j in &row[slot..slot + share] {
                    if g < used {
                        assert!(
                            j == -1 || groups.range(g).contains(&(j as usize)),
                            "{row:?}"
                        );
                    } else {
                        assert_eq!(j, -1, "{row:?}");
                    }
                }
                slot += share;
            }
        }
        assert!(
            indices.iter().filter(|&&j| j >= 0).count()
                > 512 * shares[..used].iter().sum::<usize>() / 2
        );
        energies.push(energy);
    }
    // All groups leave less than the first two.
    let (two, all) = (&energies[0], &energies[1]);
    assert!(two.iter().zip(all).all(|(t, a)| a <= &(t * 1.0001 + 1e-6)));
    assert!(all.iter().sum::<f32>() < 0.9 * two.iter().sum::<f32>());
}

/// One epoch of training by groups against the f64 reference run by groups: planted data
/// (d = 32, 40 atoms, k = 3), groups of 10, 10 and 20 atoms with one nonzero each, power
/// iterations run to convergence (300), so every atom agrees to cos ≥ 0.999 although each
/// group trains on the residual of the groups before it, read back in f32 on both sides.
#[test]
fn one_epoch_by_groups_matches_the_reference() {
    use dbksvd::data::synthetic::{self, PlantedSpec};
    use dbksvd::reference::dbksvd::ReferenceRun;
    use dbksvd::train::{init_from_samples, Init};

    let Some(gpu) = common::gpu() else { return };
    let d = 32;
    let planted = synthetic::planted(&PlantedSpec {
        d,
        atoms: 40,
        k: 3,
        samples: 600,
        noise: 0.01,
        seed: 2,
    });
    let source = InMemory::new(planted.samples, d).unwrap();
    let mut config = TrainConfig::new(40, 3);
    config.epochs = 1;
    config.batch_size = Some(200);
    config.atom_batch = 8;
    config.power_iterations = 300;
    config.seed = 5;
    config.groups = Some(Groups::new(vec![10, 20, 40]).unwrap());
    let mean = dbksvd::data::Stats::compute(&source, 200)
        .unwrap()
        .mean_f32();
    let start = init_from_samples(&source, 40, Some(&mean), config.seed).unwrap();
    config.init = Init::Dictionary(start.clone());
    let result = Trainer::new(gpu, config.clone()).fit(&source).unwrap();
    let mut reference = ReferenceRun::new(config, &start, d, mean);
    let report = reference.epoch(source.data(), 0);
    let fvu = result.epochs[0].fvu;
    let worst = common::assert_atoms_agree(result.dictionary.atoms(), &reference.atoms, d, 0.999);
    eprintln!(
        "worst atom cos {worst:.6}; FVU {fvu} vs reference {}",
        report.fvu
    );
    assert!(
        (fvu - report.fvu).abs() <= 1e-3 * report.fvu.max(1e-3),
        "FVU {fvu} vs reference {}",
        report.fvu
    );
    // And the groups changed the result: a plain run from the same start ends elsewhere.
    let mut plain = TrainConfig::new(40, 3);
    plain.epochs = 1;
    plain.batch_size = Some(200);
    plain.atom_batch = 8;
    plain.power_iterations = 300;
    plain.seed = 5;
    plain.init = Init::Dictionary(start);
    let plain = Trainer::new(gpu, plain).fit(&source).unwrap();
    assert!(plain.dictionary.atoms() != result.dictionary.atoms());
}

/// Planted data (d = 32, 40 atoms, k = 3) in `rows` samples, and a grouped configuration
/// (10, 10, 20 atoms, one nonzero each) whose power iterations converge, from a given start.
fn grouped_setup(
    rows: usize,
    epochs: usize,
    rare_atom_fraction: f64,
) -> (InMemory<Vec<f32>>, TrainConfig, Vec<f32>, Vec<f32>) {
    use dbksvd::data::synthetic::{self, PlantedSpec};
    use dbksvd::train::{init_from_samples, Init};
    let d = 32;
    let planted = synthetic::planted(&PlantedSpec {
        d,
        atoms: 40,
        k: 3,
        samples: rows,
        noise: 0.01,
        seed: 4,
    });
    let source = InMemory::new(planted.samples, d).unwrap();
    let mut config = TrainConfig::new(40, 3);
    config.epochs = epochs;
    config.batch_size = Some(200);
    config.atom_batch = 8;
    config.power_iterations = 300;
    config.rare_atom_fraction = rare_atom_fraction;
    config.seed = 6;
    config.groups = Some(Groups::new(vec![10, 20, 40]).unwrap());
    let mean = dbksvd::data::Stats::compute(&source, 200)
        .unwrap()
        .mean_f32();
    let start = init_from_samples(&source, 40, Some(&mean), config.seed).unwrap();
    config.init = Init::Dictionary(start.clone());
    (source, config, start, mean)
}

/// Two epochs by groups with re-seeding inside each group (a high rare-atom fraction flags
/// many atoms) on 601 rows, whose last batch is short (151, 151, 151, 148): the trainer's
/// per-group hygiene, its offsets into the usage and memory, and the short batch's buffers
/// against the reference's.
#[test]
fn grouped_hygiene_and_short_batches_match_the_reference() {
    use dbksvd::reference::dbksvd::ReferenceRun;
    let Some(gpu) = common::gpu() else { return };
    let (source, config, start, mean) = grouped_setup(601, 2, 0.8);
    let d = source.dim();
    let result = Trainer::new(gpu, config.clone()).fit(&source).unwrap();
    let first = &result.epochs[0];
    assert!(first.reseeded > 0, "no atom was re-seeded: {first:?}");
    assert_eq!(
        result.batches.iter().map(|b| b.samples).collect::<Vec<_>>()[..4],
        [151, 151, 151, 148]
    );
    let mut reference = ReferenceRun::new(config, &start, d, mean);
    let report = reference.epoch(source.data(), 0);
    assert_eq!(report.dead.len(), first.dead_atoms + first.rare_atoms);
    reference.epoch(source.data(), 1);
    common::assert_atoms_agree(result.dictionary.atoms(), &reference.atoms, d, 0.999);
}

/// A grouped run stopped mid-epoch and resumed from its checkpoint ends with exactly the atoms
/// of an uninterrupted one; a checkpoint with other groups is refused.
#[test]
fn a_grouped_run_resumes_bit_identically() {
    use dbksvd::train::CHECKPOINT_FILE;
    use std::ops::ControlFlow;
    let Some(gpu) = common::gpu() else { return };
    let (source, mut config, _, _) = grouped_setup(600, 2, 0.05);
    config.power_iterations = 2;
    let whole = Trainer::new(gpu, config.clone()).fit(&source).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = Trainer::new(gpu, config.clone())
        .checkpoint_to(dir.path())
        .on_batch(|p| {
            if p.done == 4 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .fit(&source)
        .unwrap();
    assert_eq!(first.batches.len(), 4);
    let resumed = Trainer::new(gpu, config.clone())
        .resume_from(dir.path().join(CHECKPOINT_FILE))
        .fit(&source)
        .unwrap();
    assert!(resumed.dictionary.atoms() == whole.dictionary.atoms());
    assert_eq!(resumed.dictionary.metadata()[GROUPS_METADATA], "[10,20,40]");
    config.groups = Some(Groups::new(vec![20, 40]).unwrap());
    let err = Trainer::new(gpu, config)
        .resume_from(dir.path().join(CHECKPOINT_FILE))
        .fit(&source)
        .unwrap_err()
        .to_string();
    assert!(err.contains("groups"), "{err}");
}
