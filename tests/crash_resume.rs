//! A training run killed with SIGKILL (a laptop that loses power, an out-of-memory killer) leaves
//! only complete files, and resuming it gives exactly the dictionary and trace of a run that
//! was never interrupted.
#![cfg(unix)]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dbksvd::train::{Checkpoint, CHECKPOINT_FILE, DICTIONARY_FILE};
use dbksvd::{files, Dictionary};

const SLICE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/minilm_L4_1536.safetensors"
);

/// 1536 rows in 12 batches of 128, 3 epochs, a checkpoint after every batch.
fn args(out: &Path) -> Vec<String> {
    [
        "train",
        "--data",
        SLICE,
        "--atoms",
        "48",
        "--k",
        "4",
        "--batch",
        "128",
        "--epochs",
        "3",
        "--checkpoint-every",
        "1",
        "--seed",
        "3",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.display().to_string()])
    .collect()
}

fn spawn(out: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_dbksvd"))
        .args(args(out))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the dbksvd binary starts")
}

fn run_to_the_end(out: &Path, extra: &[&str]) {
    let output = spawn(out, extra).wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Waits until `ready` holds (polling every 2 ms), then SIGKILLs the child, which must still
/// have been running.
fn kill_when(mut child: Child, what: &str, ready: impl Fn() -> bool) {
    let started = Instant::now();
    while !ready() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            panic!("the run ended ({status}) before {what}: {stderr}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no {what} in 300 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "the run was not killed by SIGKILL but ended with {status}: it finished before {what}"
    );
}

/// The updates the checkpoint in `out` has done, if it is there and loads.
fn checkpoint_step(out: &Path) -> Option<usize> {
    Checkpoint::load(out.join(CHECKPOINT_FILE))
        .ok()
        .map(|c| c.position().2)
}

/// Every file under its real name in `out` is complete: it loads as what it is. Temporaries
/// (never renamed into place) are the only other files allowed.
fn every_file_loads(out: &Path) -> Vec<PathBuf> {
    let mut temporaries = Vec::new();
    let mut stack = vec![out.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if path.is_dir() {
                assert_eq!(name, "sae", "unexpected folder {}", path.display());
                stack.push(path);
            } else if files::is_temporary(&name) {
                temporaries.push(path);
            } else {
                match name.as_str() {
                    CHECKPOINT_FILE => {
                        Checkpoint::load(&path).unwrap();
                    }
                    DICTIONARY_FILE => {
                        Dictionary::load(&path).unwrap();
                    }
                    "sae_weights.safetensors" => {
                        let bytes = std::fs::read(&path).unwrap();
                        safetensors::SafeTensors::deserialize(&bytes).unwrap();
                    }
                    "cfg.json" => {
                        let text = std::fs::read_to_string(&path).unwrap();
                        serde_json::from_str::<serde_json::Value>(&text).unwrap();
                    }
                    "trace.csv" | "epochs.csv" => {
                        let text = std::fs::read_to_string(&path).unwrap();
                        assert!(text.ends_with('\n') && text.lines().count() > 1, "{name}");
                    }
                    "trace.svg" => {
                        let text = std::fs::read_to_string(&path).unwrap();
                        assert!(text.trim_end().ends_with("</svg>"), "{name}");
                    }
                    other => panic!("unexpected file {other} in {}", out.display()),
                }
            }
        }
    }
    temporaries
}

/// The columns of a CSV file that do not measure time.
fn untimed(path: &Path, timed: &[&str]) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let keep: Vec<usize> = (0..header.len())
        .filter(|&i| !timed.contains(&header[i]))
        .collect();
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            keep.iter().map(|&i| cells[i].to_string()).collect()
        })
        .collect()
}

#[test]
fn a_killed_run_resumes_to_the_uninterrupted_result() {
    if common::gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    run_to_the_end(&whole, &[]);
    every_file_loads(&whole);

    // Killed once the first checkpoint is there, resumed, killed again further on, resumed
    // to the end.
    let killed = dir.path().join("killed");
    kill_when(spawn(&killed, &[]), "the first checkpoint", || {
        checkpoint_step(&killed).is_some()
    });
    every_file_loads(&killed);
    let first = checkpoint_step(&killed).unwrap();
    kill_when(spawn(&killed, &["--resume"]), "six more updates", || {
        checkpoint_step(&killed).is_some_and(|step| step >= first + 6)
    });
    let second = checkpoint_step(&killed).unwrap();
    assert!(second > first && second < 36, "{first} → {second}");
    every_file_loads(&killed);
    run_to_the_end(&killed, &["--resume"]);
    let left = every_file_loads(&killed);
    assert!(left.is_empty(), "temporaries left after the run: {left:?}");

    // Bit for bit the same dictionary, mean and metrics.
    let a = Dictionary::load(whole.join(DICTIONARY_FILE)).unwrap();
    let b = Dictionary::load(killed.join(DICTIONARY_FILE)).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(
        bits(a.atoms()) == bits(b.atoms()),
        "the dictionaries differ"
    );
    assert_eq!(bits(a.mean()), bits(b.mean()));
    let timed = ["gemm_s", "coding_s", "update_s", "host_s", "seconds"];
    for csv in ["trace.csv", "epochs.csv"] {
        assert_eq!(
            untimed(&whole.join(csv), &timed),
            untimed(&killed.join(csv), &timed),
            "{csv} differs"
        );
    }
    let sae = |out: &Path| std::fs::read(out.join("sae/sae_weights.safetensors")).unwrap();
    assert!(sae(&whole) == sae(&killed), "the SAELens weights differ");
}

#[test]
fn temporaries_of_a_killed_writer_are_removed_on_the_next_run() {
    if common::gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(out.join("sae")).unwrap();
    // What a writer killed between write and rename leaves: half a file under a temporary name.
    std::fs::write(
        out.join(".checkpoint.safetensors.tmp-999999"),
        b"half a file",
    )
    .unwrap();
    std::fs::write(out.join("sae/.cfg.json.tmp-999999"), b"{\"d_in\"").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_dbksvd"))
        .args([
            "train", "--data", SLICE, "--rows", "0:256", "--atoms", "16", "--k", "2", "--epochs",
            "1", "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(every_file_loads(&out).is_empty());
}
