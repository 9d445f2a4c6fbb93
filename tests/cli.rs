//! The command-line tool end to end: train, re-run, refuse a foreign folder, resume, encode, and
//! report bad input as an error rather than a panic.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn dbksvd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dbksvd"))
        .args(args)
        .output()
        .expect("the dbksvd binary runs")
}

/// `dbksvd bench` at d = 16, K = 40, k = 3 with `args` after.
fn small_bench(args: &[&str]) -> Output {
    let sizes = ["bench", "--dim", "16", "--atoms", "40", "--k", "3"];
    dbksvd(&[&sizes[..], args].concat())
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

const SLICE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/minilm_L4_1536.safetensors"
);

#[test]
fn train_resume_and_encode_from_the_command_line() {
    if common::gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out_s = out.to_str().unwrap();
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--data",
            SLICE,
            "--rows",
            "0:600",
            "--atoms",
            "24",
            "--k",
            "3",
            "--batch",
            "200",
            "--checkpoint-every",
            "2",
            "--out",
            out_s,
        ];
        args.extend_from_slice(extra);
        dbksvd(&args)
    };
    let first = train(&["--epochs", "2"]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(text(&first).contains("FVU"), "{}", text(&first));
    for file in [
        "dictionary.safetensors",
        "checkpoint.safetensors",
        "sae/cfg.json",
        "sae/sae_weights.safetensors",
        "trace.csv",
        "trace.svg",
        "epochs.csv",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }

    // Resuming to a third epoch appends to the trace.
    let resumed = train(&["--epochs", "3", "--resume"]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    let epochs = std::fs::read_to_string(out.join("epochs.csv")).unwrap();
    assert_eq!(epochs.lines().count(), 1 + 3, "{epochs}");

    // Re-running into our own folder replaces the results.
    let again = train(&["--epochs", "1"]);
    assert!(again.status.success(), "{}", text(&again));
    let epochs = std::fs::read_to_string(out.join("epochs.csv")).unwrap();
    assert_eq!(epochs.lines().count(), 1 + 1, "{epochs}");

    // Going on from the dictionary with other settings (--init); a K that differs is an error.
    let next = dir.path().join("next");
    let init = out.join("dictionary.safetensors");
    let from = |atoms: &str| {
        dbksvd(&[
            "train",
            "--data",
            SLICE,
            "--rows",
            "0:600",
            "--atoms",
            atoms,
            "--k",
            "3",
            "--batch",
            "600",
            "--epochs",
            "1",
            "--init",
            init.to_str().unwrap(),
            "--out",
            next.to_str().unwrap(),
        ])
    };
    let continued = from("24");
    assert!(continued.status.success(), "{}", text(&continued));
    assert!(next.join("dictionary.safetensors").is_file());
    let wrong = from("25");
    assert!(!wrong.status.success());
    assert!(
        text(&wrong).contains("K = 24") && text(&wrong).contains("K = 25"),
        "{}",
        text(&wrong)
    );

    // A folder holding someone else's files is refused, unless forced.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let args = [
        "train",
        "--data",
        SLICE,
        "--rows",
        "0:300",
        "--atoms",
        "16",
        "--k",
        "2",
        "--epochs",
        "1",
        "--out",
        other.to_str().unwrap(),
    ];
    let refused = dbksvd(&args);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("notes.txt") && text(&refused).contains("--force"),
        "{}",
        text(&refused)
    );
    assert!(!other.join("dictionary.safetensors").exists());
    let forced = dbksvd(&[&args[..], &["--force"]].concat());
    assert!(forced.status.success(), "{}", text(&forced));
    assert!(other.join("notes.txt").exists());

    // Encode held-out rows with the dictionary.
    let codes_path = dir.path().join("codes.safetensors");
    let encoded = dbksvd(&[
        "encode",
        "--dict",
        out.join("dictionary.safetensors").to_str().unwrap(),
        "--data",
        SLICE,
        "--rows",
        "600:700",
        "--out",
        codes_path.to_str().unwrap(),
    ]);
    assert!(encoded.status.success(), "{}", text(&encoded));
    let bytes = std::fs::read(&codes_path).unwrap();
    let codes = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let indices = codes.tensor("indices").unwrap();
    assert_eq!(
        (indices.dtype(), indices.shape()),
        (safetensors::Dtype::I32, &[100usize, 3][..])
    );
    let values = codes.tensor("values").unwrap();
    assert_eq!(
        (values.dtype(), values.shape()),
        (safetensors::Dtype::F32, &[100usize, 3][..])
    );
    let indices: Vec<i32> = bytemuck::pod_collect_to_vec(indices.data());
    assert!(indices.iter().all(|&j| (-1..24).contains(&j)));
    assert!(
        indices.iter().filter(|&&j| j >= 0).count() > 200,
        "codes are mostly empty"
    );
}

/// `export` writes the SAELens folder of a trained dictionary with the SAEBench metadata the
/// flags give (`train` takes the same flags for its own `sae` folder).
#[test]
fn export_writes_the_saelens_folder_with_saebench_metadata() {
    if common::gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let names = [
        "--model-name",
        "sentence-transformers/all-MiniLM-L6-v2",
        "--hook-name",
        "blocks.4.hook_resid_post",
        "--context-size",
        "256",
        "--prepend-bos",
        "true",
    ];
    let cfg = |folder: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(folder.join("cfg.json")).unwrap()).unwrap()
    };
    let mut args = vec![
        "train", "--data", SLICE, "--rows", "0:300", "--atoms", "16", "--k", "2", "--epochs", "1",
        "--out",
    ];
    args.push(out.to_str().unwrap());
    args.extend_from_slice(&names);
    let trained = dbksvd(&args);
    assert!(trained.status.success(), "{}", text(&trained));
    let meta = &cfg(&out.join("sae"))["metadata"];
    assert_eq!(meta["hook_layer"], 4, "{meta}");
    assert_eq!(meta["context_size"], 256);

    let export = dir.path().join("export");
    let dict = out.join("dictionary.safetensors");
    let mut args = vec![
        "export",
        "--dict",
        dict.to_str().unwrap(),
        "--k",
        "5",
        "--out",
    ];
    args.push(export.to_str().unwrap());
    args.extend_from_slice(&names[..4]);
    let exported = dbksvd(&args);
    assert!(exported.status.success(), "{}", text(&exported));
    let cfg = cfg(&export);
    assert_eq!(cfg["max_iterations"], 5);
    let meta = &cfg["metadata"];
    assert_eq!(meta["model_name"], "sentence-transformers/all-MiniLM-L6-v2");
    assert_eq!(
        (&meta["hook_layer"], &meta["context_size"]),
        (&serde_json::json!(4), &serde_json::Value::Null)
    );
    assert!(export.join("sae_weights.safetensors").exists());
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.npy");
    let out = dir.path().join("out");
    let run = dbksvd(&[
        "train",
        "--data",
        missing.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(1), "{}", text(&run));
    assert!(text(&run).contains("missing.npy"), "{}", text(&run));
    let bad_rows = dbksvd(&[
        "train",
        "--data",
        SLICE,
        "--rows",
        "9:x",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(bad_rows.status.code(), Some(1), "{}", text(&bad_rows));
    assert!(
        text(&bad_rows).contains("--rows 9:x"),
        "{}",
        text(&bad_rows)
    );
    let no_dict = dbksvd(&[
        "encode",
        "--dict",
        missing.to_str().unwrap(),
        "--data",
        SLICE,
        "--out",
        dir.path().join("c.safetensors").to_str().unwrap(),
    ]);
    assert_eq!(no_dict.status.code(), Some(1), "{}", text(&no_dict));
    assert!(!Path::new(&dir.path().join("c.safetensors")).exists());
}

#[test]
fn bench_prints_one_json_object_per_figure() {
    if common::gpu().is_none() {
        return;
    }
    let run = small_bench(&["--batch", "64", "--json"]);
    assert!(run.status.success(), "{}", text(&run));
    let stdout = String::from_utf8_lossy(&run.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let (adapter, figures) = lines.split_first().expect("an adapter line");
    assert_eq!(adapter["phase"], "adapter", "{adapter}");
    let name = adapter["adapter"].as_str().unwrap_or_default();
    assert!(!name.is_empty(), "{adapter}");
    let phases: Vec<&str> = figures
        .iter()
        .map(|f| f["phase"].as_str().unwrap_or_default())
        .collect();
    // MP's sweeps are timed beside its resident coder where the device has subgroup operations,
    // Batch-OMP's beside its fused kernel on CPU adapters (lavapipe has both), each right after
    // the coder they stand in for.
    let coders: Vec<&str> = figures.iter().filter_map(|f| f["coder"].as_str()).collect();
    if name.contains("llvmpipe") {
        assert_eq!(coders, ["omp", "omp-sweeps", "mp", "mp-sweeps"], "{stdout}");
    }
    let plain: Vec<&str> = coders
        .iter()
        .copied()
        .filter(|c| !c.ends_with("-sweeps"))
        .collect();
    assert_eq!(plain, ["omp", "mp"], "{stdout}");
    for (i, coder) in coders.iter().enumerate() {
        if let Some(of) = coder.strip_suffix("-sweeps") {
            assert!(i > 0 && coders[i - 1] == of, "{stdout}");
        }
    }
    let mut want = vec!["products", "products"];
    want.extend(coders.iter().map(|_| "coding"));
    want.extend(["update", "step", "memory", "projection"]);
    assert_eq!(phases, want, "{stdout}");
    for figure in figures {
        assert_eq!(figure["adapter"], name, "{figure}");
        assert_eq!(
            (
                &figure["dim"],
                &figure["atoms"],
                &figure["k"],
                &figure["batch"]
            ),
            (&16.into(), &40.into(), &3.into(), &64.into()),
            "{figure}"
        );
        // Every figure is a measurement or a count: positive and finite.
        for (key, value) in figure.as_object().unwrap() {
            if let Some(v) = value.as_f64() {
                assert!(v > 0.0 && v.is_finite(), "{key} = {v} in {figure}");
            }
        }
    }
    assert_eq!(adapter["gram"], "f32", "{adapter}");

    // The coders with G in f16: the same figures, named so.
    let half = small_bench(&[
        "--batch", "64", "--json", "--phases", "omp", "--gram", "f16",
    ]);
    assert!(half.status.success(), "{}", text(&half));
    let stdout = String::from_utf8_lossy(&half.stdout);
    let coding: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|f| f["phase"] == "coding" && f["coder"] == "omp")
        .collect();
    assert_eq!(coding.len(), 1, "{stdout}");
    assert_eq!(coding[0]["gram"], "f16", "{stdout}");
    assert!(
        coding[0]["mean_l0"].as_f64().unwrap_or(0.0) > 0.0,
        "{stdout}"
    );
}

/// `--profile` follows each timed figure with its kernels' times (where the adapter has
/// timestamp queries, as lavapipe does): the update's figure by its kernels, every one a part of
/// it.
#[test]
fn bench_profile_follows_each_figure_with_its_kernels() {
    let Some(gpu) = common::gpu() else { return };
    let run = small_bench(&["--batch", "64", "--json", "--phases", "update", "--profile"]);
    assert!(run.status.success(), "{}", text(&run));
    let stdout = String::from_utf8_lossy(&run.stdout);
    let figures: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let kernels: Vec<&serde_json::Value> =
        figures.iter().filter(|f| f["phase"] == "kernel").collect();
    if !gpu.adapter().name.contains("llvmpipe") && kernels.is_empty() {
        eprintln!("SKIPPED: no timestamp queries on {}", gpu.adapter().name);
        return;
    }
    let phases: Vec<&str> = figures
        .iter()
        .map(|f| f["phase"].as_str().unwrap_or_default())
        .filter(|&p| p != "kernel")
        .collect();
    assert_eq!(phases, ["adapter", "update", "memory"], "{stdout}");
    // The kernel lines come right after the update's.
    let update = figures.iter().position(|f| f["phase"] == "update").unwrap();
    assert_eq!(figures[update + 1]["phase"], "kernel", "{stdout}");
    let names: Vec<&str> = kernels
        .iter()
        .filter_map(|k| k["kernel"].as_str())
        .collect();
    assert!(names.iter().any(|k| k.starts_with("fold")), "{stdout}");
    assert!(
        names.iter().any(|k| k.starts_with("power_partial")),
        "{stdout}"
    );
    let mut share = 0.0;
    for k in &kernels {
        assert_eq!(k["of"], "update", "{k}");
        let s = k["share"].as_f64().unwrap();
        assert!(s.is_finite() && s >= 0.0, "{k}");
        share += s;
    }
    // Kernel time is part of the update's wall time (timestamps are taken on the device; a
    // GPU's passes may overlap a little).
    assert!(
        share > 0.0 && share <= 1.05,
        "kernel shares sum to {share}: {stdout}"
    );
}

#[test]
fn bench_refuses_sizes_it_cannot_run() {
    // Checked before the device is opened.
    let k0 = dbksvd(&["bench", "--dim", "16", "--atoms", "40", "--k", "0"]);
    assert_eq!(k0.status.code(), Some(1), "{}", text(&k0));
    assert!(text(&k0).contains("k = 0"), "{}", text(&k0));
    let a41 = small_bench(&["--atom-batch", "41"]);
    assert_eq!(a41.status.code(), Some(1), "{}", text(&a41));
    assert!(text(&a41).contains("atom batch A = 41"), "{}", text(&a41));
    if common::gpu().is_none() {
        return;
    }
    // An atom batch of the user's is the one timed.
    let a7 = small_bench(&["--atom-batch", "7", "--phases", "update"]);
    assert!(a7.status.success(), "{}", text(&a7));
    assert!(text(&a7).contains("(A = 7, p = "), "{}", text(&a7));
    // Repeated, the figure is the median measurement and its spread follows it.
    let r3 = small_bench(&[
        "--batch", "64", "--json", "--phases", "update", "--repeat", "3",
    ]);
    assert!(r3.status.success(), "{}", text(&r3));
    let stdout = String::from_utf8_lossy(&r3.stdout);
    let figures: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let phases: Vec<&str> = figures
        .iter()
        .map(|f| f["phase"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        phases,
        ["adapter", "update", "spread", "memory"],
        "{stdout}"
    );
    let (update, spread) = (&figures[1], &figures[2]);
    assert_eq!(
        (&spread["of"], &spread["repeats"]),
        (&"update".into(), &3.into())
    );
    let s = |key: &str| spread[key].as_f64().unwrap_or(f64::NAN);
    assert_eq!(update["seconds"].as_f64(), Some(s("median_s")), "{stdout}");
    assert!(0.0 < s("min_s") && s("min_s") <= s("median_s") && s("median_s") <= s("max_s"));
    let r0 = small_bench(&["--repeat", "0"]);
    assert_eq!(r0.status.code(), Some(1), "{}", text(&r0));
    assert!(text(&r0).contains("repeats R"), "{}", text(&r0));
    let huge = small_bench(&["--batch", "100000000", "--phases", "step"]);
    assert_eq!(huge.status.code(), Some(1), "{}", text(&huge));
    assert!(
        text(&huge).contains("the largest batch that fits is"),
        "{}",
        text(&huge)
    );
}
