//! What a run leaves for others: sparse codes, the SAELens folder and a training run's outputs
//! (dictionary, SAELens folder, per-batch and per-epoch CSV traces, the trace plot). Every file
//! is written atomically (see [`crate::files`]).

use std::collections::HashMap;
use std::path::Path;

use crate::dictionary::Dictionary;
use crate::encode::SparseCodes;
use crate::error::{Error, Result};
use crate::files::{write_atomic, write_safetensors, Tensor};
use crate::train::{TrainResult, DICTIONARY_FILE};

mod trace;

pub use trace::{trace_svg, write_trace_csv};

/// Writes a training run's outputs into `dir` (created if needed), each file atomically:
/// `dictionary.safetensors`, `sae/` (SAELens `matching_pursuit`, see [`write_saelens`]),
/// `trace.csv` (per batch), `epochs.csv` and `trace.svg`.
pub fn write_outputs(result: &TrainResult, dir: &Path, names: &SaeLensNames) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    result.dictionary.save(dir.join(DICTIONARY_FILE))?;
    write_saelens(
        &dir.join("sae"),
        &result.dictionary,
        result.config.k,
        0.0,
        names,
    )?;
    write_trace_csv(dir, &result.batches, &result.epochs)?;
    let svg = trace_svg(&result.batches, &result.epochs, result.config.atoms)?;
    write_atomic(&dir.join("trace.svg"), svg.as_bytes())
}

/// Writes sparse codes as safetensors: `indices` I32 [N, k] (−1 for empty slots) and `values`
/// F32 [N, k], plus `residual_energy` F32 \[N\] (‖y − ŷ‖² of each row).
pub fn write_codes(
    path: impl AsRef<Path>,
    codes: &SparseCodes,
    metadata: HashMap<String, String>,
) -> Result<()> {
    write_safetensors(
        path.as_ref(),
        &[
            Tensor::i32("indices", vec![codes.n, codes.k], &codes.indices),
            Tensor::f32("values", vec![codes.n, codes.k], &codes.values),
            Tensor::f32("residual_energy", vec![codes.n], &codes.residual_energy),
        ],
        metadata,
    )
}

/// The SAELens release whose config layout [`write_saelens`] follows (6.26.0 introduced the
/// `matching_pursuit` architecture; checked against 6.54.12).
pub const SAELENS_VERSION: &str = "6.26.0";

/// Where the activations came from, for the SAELens metadata block: what SAEBench reads to run
/// the model and hook the dictionary in (each `null` in `cfg.json` when not given).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SaeLensNames {
    /// `metadata.model_name` (e.g. `sentence-transformers/all-MiniLM-L6-v2`).
    pub model_name: Option<String>,
    /// `metadata.hook_name` (e.g. `blocks.4.hook_resid_post`); `metadata.hook_layer` is read
    /// from it (`blocks.N.…`).
    pub hook_name: Option<String>,
    /// `metadata.context_size`: tokens per sequence the activations were taken from.
    pub context_size: Option<u64>,
    /// `metadata.prepend_bos`: whether those sequences started with BOS.
    pub prepend_bos: Option<bool>,
}

impl SaeLensNames {
    /// The layer in a TransformerLens hook name `blocks.N.…`.
    pub fn hook_layer(&self) -> Option<u64> {
        let rest = self.hook_name.as_deref()?.strip_prefix("blocks.")?;
        rest.split('.').next()?.parse().ok()
    }
}

/// Files a training run writes into its output folder (beside the `sae` folder).
pub const RUN_OUTPUTS: [&str; 5] = [
    DICTIONARY_FILE,
    crate::train::CHECKPOINT_FILE,
    "trace.csv",
    "trace.svg",
    "epochs.csv",
];

/// Files a run writes into `sae`.
pub const SAE_OUTPUTS: [&str; 2] = ["cfg.json", "sae_weights.safetensors"];

/// Readies `dir` for a training run's outputs: refuses a folder holding files dbksvd did not
/// write (unless `force`), and removes the temporaries of an earlier run killed while writing.
pub fn prepare_output_folder(dir: &Path, force: bool) -> Result<()> {
    if dir.exists() && !force {
        let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let ours = |name: &str| {
            name == "sae"
                || RUN_OUTPUTS.contains(&name)
                || crate::files::is_temporary_of(name, &RUN_OUTPUTS)
        };
        let foreign: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| !ours(name))
            .collect();
        if !foreign.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "output folder {} holds files dbksvd did not write ({}); choose another folder \
                 or allow it (--force, force=True)",
                dir.display(),
                foreign.join(", ")
            )));
        }
    }
    crate::files::remove_temporaries(dir, &RUN_OUTPUTS)?;
    crate::files::remove_temporaries(&dir.join("sae"), &SAE_OUTPUTS)?;
    Ok(())
}

/// Writes `dir/sae_weights.safetensors` and `dir/cfg.json` so that SAELens'
/// `SAE.load_from_disk(dir)` loads the dictionary as its `matching_pursuit` architecture.
///
/// SAELens' matching pursuit applies ReLU to the correlations, so its codes are non-negative.
/// To keep signed codes the decoder is W_dec = [D; −D] (d_sae = 2K): atom j with coefficient
/// −c is atom K + j with +c. b_dec is the mean (subtracted from the input first). The encoder
/// runs at most `k` iterations and stops a row when its residual norm (absolute, after
/// subtracting b_dec) falls below `residual_threshold` (0 disables the test).
pub fn write_saelens(
    dir: &Path,
    dictionary: &Dictionary,
    k: usize,
    residual_threshold: f32,
    names: &SaeLensNames,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let (n_atoms, d) = (dictionary.n_atoms, dictionary.d);
    let mut w_dec = Vec::with_capacity(2 * n_atoms * d);
    // SAELens' update is a projection only for unit rows.
    for atom in dictionary.atoms.chunks_exact(d) {
        let norm = atom
            .iter()
            .map(|&v| v as f64 * v as f64)
            .sum::<f64>()
            .sqrt();
        let norm = if norm > 0.0 { norm } else { 1.0 };
        w_dec.extend(atom.iter().map(|&v| (v as f64 / norm) as f32));
    }
    let positive = w_dec.clone();
    w_dec.extend(positive.iter().map(|v| -v));
    write_safetensors(
        &dir.join("sae_weights.safetensors"),
        &[
            Tensor::f32("W_dec", vec![2 * n_atoms, d], &w_dec),
            Tensor::f32("b_dec", vec![d], &dictionary.mean),
        ],
        HashMap::new(),
    )?;
    let cfg = serde_json::json!({
        "architecture": "matching_pursuit",
        "d_in": d,
        "d_sae": 2 * n_atoms,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": true,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "residual_threshold": residual_threshold as f64,
        "max_iterations": k,
        "stop_on_duplicate_support": true,
        "metadata": {
            "sae_lens_version": SAELENS_VERSION,
            "sae_lens_training_version": SAELENS_VERSION,
            "model_name": names.model_name,
            "hook_name": names.hook_name,
            "hook_layer": names.hook_layer(),
            "hook_head_index": null,
            "context_size": names.context_size,
            "prepend_bos": names.prepend_bos,
            "dbksvd_version": env!("CARGO_PKG_VERSION"),
            "dbksvd_note": "W_dec = [D; -D]: signed dbksvd codes as non-negative SAELens codes",
            // Group g holds atoms ends[g-1]..ends[g], SAELens features j and d_sae/2 + j.
            "dbksvd_matryoshka_groups": dictionary.groups()?.map(|g| g.ends().to_vec()),
        },
    });
    let text = serde_json::to_string_pretty(&cfg).map_err(|source| Error::Json {
        what: "cfg.json".into(),
        source,
    })?;
    write_atomic(&dir.join("cfg.json"), text.as_bytes())
}
