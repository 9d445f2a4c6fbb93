//! File formats: the trained dictionary, checkpoints, sparse codes, the SAELens folder and the
//! training trace. Every file is written to a temporary file beside its destination, fsynced and
//! renamed over it, so a crash or a full disk never leaves a half-written file under the real name.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::encode::{CodingOptions, Encoder, EncoderOptions, Groups, SparseCodes};
use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsynced, then
/// renamed over `path` (and the directory fsynced where the platform allows).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("{} is not a file path", path.display())))?;
    let temp = dir.join(temporary_name(&name.to_string_lossy()));
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, path)?;
        // The rename itself is durable once the directory is synced (not possible on Windows).
        #[cfg(unix)]
        File::open(&dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(io)
}

/// The temporary name [`write_atomic`] writes `path` under before renaming it.
fn temporary_name(name: &str) -> String {
    format!(".{name}.tmp-{}", std::process::id())
}

/// True for a name [`write_atomic`] gives its temporaries (of any process).
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.')
        && name
            .rsplit_once(".tmp-")
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// True for a temporary [`write_atomic`] writes one of the files `names` under (of any
/// process).
pub fn is_temporary_of(name: &str, names: &[&str]) -> bool {
    is_temporary(name)
        && names
            .iter()
            .any(|n| name.starts_with(&format!(".{n}.tmp-")))
}

/// Removes from `dir` the temporaries of the files `names` that a writer killed between writing
/// and renaming left behind (`.NAME.tmp-PID`, never part of the output). Returns what it removed;
/// a missing `dir` is nothing to do. Only for a folder that one process writes at a time.
pub fn remove_temporaries(dir: &Path, names: &[&str]) -> Result<Vec<PathBuf>> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut removed = Vec::new();
    if !dir.is_dir() {
        return Ok(removed);
    }
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_temporary_of(&name, names) && entry.file_type().map_err(io(dir))?.is_file() {
            std::fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

/// A tensor to write: name, dtype, shape and little-endian bytes.
pub(crate) struct Tensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Tensor {
    pub(crate) fn f32(name: &str, shape: Vec<usize>, values: &[f32]) -> Self {
        Self {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub(crate) fn i32(name: &str, shape: Vec<usize>, values: &[i32]) -> Self {
        Self {
            name: name.into(),
            dtype: Dtype::I32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub(crate) fn u32(name: &str, shape: Vec<usize>, values: &[u32]) -> Self {
        Self {
            name: name.into(),
            dtype: Dtype::U32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// Serialises `tensors` with `metadata` as safetensors and writes the file atomically.
pub(crate) fn write_safetensors(
    path: &Path,
    tensors: &[Tensor],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(t.dtype, t.shape.clone(), &t.data).map(|view| (t.name.clone(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Internal(format!("{}: a tensor view: {e}", path.display())))?;
    let metadata = (!metadata.is_empty()).then_some(metadata);
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| Error::Internal(format!("{}: serialising: {e}", path.display())))?;
    write_atomic(path, &bytes)
}

/// A safetensors file read whole, with errors naming the file.
pub(crate) struct SafetensorsFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl SafetensorsFile {
    pub(crate) fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file = Self {
            path: path.to_path_buf(),
            bytes,
        };
        file.parsed()?;
        Ok(file)
    }

    fn format_error(&self, message: String) -> Error {
        Error::Format {
            file: self.path.display().to_string(),
            message,
        }
    }

    fn parsed(&self) -> Result<SafeTensors<'_>> {
        crate::data::check_safetensors_offsets(&self.bytes)
            .map_err(|message| self.format_error(message))?;
        SafeTensors::deserialize(&self.bytes)
            .map_err(|e| self.format_error(format!("not a valid safetensors file: {e}")))
    }

    /// The `__metadata__` map (empty when absent).
    pub(crate) fn metadata(&self) -> Result<HashMap<String, String>> {
        let (_, metadata) = SafeTensors::read_metadata(&self.bytes)
            .map_err(|e| self.format_error(format!("not a valid safetensors file: {e}")))?;
        Ok(metadata.metadata().clone().unwrap_or_default())
    }

    /// Tensor `name` as `dtype` with the shape `check` accepts (it names what it expected).
    fn raw(&self, name: &str, dtype: Dtype, expected: &str) -> Result<(Vec<usize>, Vec<u8>)> {
        let parsed = self.parsed()?;
        let view = parsed.tensor(name).map_err(|_| {
            let mut present: Vec<String> = parsed.names().into_iter().map(String::from).collect();
            present.sort();
            Error::MissingTensor {
                file: self.path.display().to_string(),
                tensor: name.into(),
                expected: expected.into(),
                present,
            }
        })?;
        if view.dtype() != dtype {
            return Err(self.format_error(format!(
                "tensor `{name}` is {:?}; expected {dtype:?} {expected}",
                view.dtype()
            )));
        }
        Ok((view.shape().to_vec(), view.data().to_vec()))
    }

    /// F32 tensor `name` and its shape; non-finite values are errors naming row and column.
    pub(crate) fn f32(&self, name: &str, expected: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (shape, data) = self.raw(name, Dtype::F32, expected)?;
        let values: Vec<f32> = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let cols = shape.last().copied().unwrap_or(1).max(1);
        crate::coding::check_finite(
            &format!("{}, tensor `{name}`", self.path.display()),
            &values,
            cols,
        )?;
        Ok((shape, values))
    }

    /// U32 tensor `name` and its shape.
    pub(crate) fn u32(&self, name: &str, expected: &str) -> Result<(Vec<usize>, Vec<u32>)> {
        let (shape, data) = self.raw(name, Dtype::U32, expected)?;
        let values = data
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok((shape, values))
    }

    /// Metadata entry `key` parsed as `T`, or an error naming the key.
    pub(crate) fn meta<T: std::str::FromStr>(
        &self,
        metadata: &HashMap<String, String>,
        key: &str,
    ) -> Result<T> {
        let text = metadata
            .get(key)
            .ok_or_else(|| self.format_error(format!("metadata has no `{key}`")))?;
        text.parse()
            .map_err(|_| self.format_error(format!("metadata `{key}` = {text:?} does not parse")))
    }
}

/// The metadata key under which a Matryoshka dictionary records its group ends (JSON list).
pub const GROUPS_METADATA: &str = "matryoshka_groups";

/// A trained dictionary: unit-norm atoms D [K, d] and the mean b_dec subtracted before coding,
/// as stored in `dictionary.safetensors` (tensors `dictionary` and `mean`, F32) with its
/// metadata (training configuration, final metrics, crate version).
///
/// ```
/// # fn main() -> dbksvd::Result<()> {
/// let atoms = vec![1.0, 0.0, 0.0, 1.0, 0.6, 0.8]; // K = 3 atoms of d = 2
/// let dictionary = dbksvd::Dictionary::new(atoms, 2)?.with_mean(vec![0.5, 0.5])?;
/// assert_eq!((dictionary.n_atoms(), dictionary.dim(), dictionary.k()), (3, 2, None));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Dictionary {
    /// Atoms [K, d], row-major.
    pub(crate) atoms: Vec<f32>,
    /// K.
    pub(crate) n_atoms: usize,
    /// d.
    pub(crate) d: usize,
    /// b_dec \[d\] (zeros when trained without centring).
    pub(crate) mean: Vec<f32>,
    /// Free-form string metadata (`config` and `metrics` are JSON).
    pub(crate) metadata: HashMap<String, String>,
}

impl Dictionary {
    /// A dictionary of the atoms [K, d] (row-major, K = `atoms.len() / d`) as given, with a zero
    /// mean and no metadata. Atoms must be finite and nonzero; they are coded as given
    /// ([`Dictionary::encoder`] normalises them).
    pub fn new(atoms: Vec<f32>, d: usize) -> Result<Self> {
        if d == 0 || atoms.is_empty() || !atoms.len().is_multiple_of(d) {
            return Err(Error::ShapeMismatch {
                op: "dictionary (atoms vs dimension)".into(),
                left: format!("[{} values]", atoms.len()),
                right: format!("[K, {d}] with K ≥ 1"),
            });
        }
        crate::coding::check_finite("dictionary", &atoms, d)?;
        if let Some(row) = atoms
            .chunks_exact(d)
            .position(|a| a.iter().all(|&v| v == 0.0))
        {
            return Err(Error::InvalidArgument(format!(
                "atom {row} of the dictionary is zero: atoms must be nonzero"
            )));
        }
        Ok(Self {
            n_atoms: atoms.len() / d,
            atoms,
            d,
            mean: vec![0.0; d],
            metadata: HashMap::new(),
        })
    }

    /// The same dictionary with `mean` (b_dec \[d\]) subtracted before coding.
    pub fn with_mean(mut self, mean: Vec<f32>) -> Result<Self> {
        if mean.len() != self.d {
            return Err(Error::ShapeMismatch {
                op: "dictionary mean (mean vs atoms)".into(),
                left: format!("[{}]", mean.len()),
                right: crate::error::shape(self.n_atoms, self.d),
            });
        }
        crate::coding::check_finite("mean", &mean, self.d)?;
        self.mean = mean;
        Ok(self)
    }

    /// Its first `n` atoms as a dictionary of their own, with the same mean and no metadata
    /// (a Matryoshka prefix, or a plain dictionary cut to the same size).
    pub fn first_atoms(&self, n: usize) -> Result<Self> {
        if n == 0 || n > self.n_atoms {
            return Err(Error::InvalidArgument(format!(
                "the first {n} atoms of a dictionary of K = {}",
                self.n_atoms
            )));
        }
        Ok(Self {
            atoms: self.atoms[..n * self.d].to_vec(),
            n_atoms: n,
            d: self.d,
            mean: self.mean.clone(),
            metadata: HashMap::new(),
        })
    }

    /// The atoms D [K, d], row-major.
    pub fn atoms(&self) -> &[f32] {
        &self.atoms
    }

    /// Number of atoms K.
    pub fn n_atoms(&self) -> usize {
        self.n_atoms
    }

    /// The dimension d of atoms and samples.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// b_dec \[d\], subtracted before coding (zeros when trained without centring).
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// The string metadata stored with the dictionary (`config` and `metrics` are JSON).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// The same dictionary with metadata `key` set to `value` (stored by [`Dictionary::save`]).
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The configuration it was trained with, when it records one.
    pub fn config(&self) -> Result<Option<crate::train::TrainConfig>> {
        self.metadata
            .get("config")
            .map(|text| {
                serde_json::from_str(text).map_err(|source| Error::Json {
                    what: "dictionary metadata `config`".into(),
                    source,
                })
            })
            .transpose()
    }

    /// The k (nonzeros per sample) it was trained with, when it records its configuration
    /// (read on its own, so a configuration from another version still gives its k).
    pub fn k(&self) -> Option<usize> {
        let config: serde_json::Value = serde_json::from_str(self.metadata.get("config")?).ok()?;
        config.get("k")?.as_u64().map(|k| k as usize)
    }

    /// Writes the dictionary to `path` (atomically).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut metadata = self.metadata.clone();
        metadata.insert("format".into(), "dbksvd-dictionary".into());
        metadata
            .entry("dbksvd_version".into())
            .or_insert_with(|| env!("CARGO_PKG_VERSION").into());
        write_safetensors(
            path.as_ref(),
            &[
                Tensor::f32("dictionary", vec![self.n_atoms, self.d], &self.atoms),
                Tensor::f32("mean", vec![self.d], &self.mean),
            ],
            metadata,
        )
    }

    /// Reads a dictionary written by [`Dictionary::save`] (or any safetensors file with an F32
    /// `dictionary` [K, d] and optionally an F32 `mean` \[d\]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let file = SafetensorsFile::read(path.as_ref())?;
        let (shape, atoms) = file.f32("dictionary", "[K, d]")?;
        let [n_atoms, d] = shape[..] else {
            return Err(file.format_error(format!(
                "tensor `dictionary` has shape {shape:?}; expected [K, d]"
            )));
        };
        if n_atoms == 0 || d == 0 {
            return Err(file.format_error(format!("dictionary [{n_atoms}, {d}] is empty")));
        }
        // Non-finite values were refused by `f32`; a zero atom has no direction to code with.
        if let Some(row) = atoms
            .chunks_exact(d)
            .position(|a| a.iter().all(|&v| v == 0.0))
        {
            return Err(file.format_error(format!(
                "atom {row} of tensor `dictionary` is zero: atoms must be nonzero"
            )));
        }
        let mean = match file.f32("mean", "[d]") {
            Ok((shape, mean)) if shape == [d] => mean,
            Ok((shape, _)) => {
                return Err(
                    file.format_error(format!("tensor `mean` has shape {shape:?}; expected [{d}]"))
                )
            }
            Err(Error::MissingTensor { .. }) => vec![0.0; d],
            Err(e) => return Err(e),
        };
        Ok(Self {
            atoms,
            n_atoms,
            d,
            mean,
            metadata: file.metadata()?,
        })
    }

    /// The Matryoshka groups recorded in the metadata ([`GROUPS_METADATA`]), if any.
    pub fn groups(&self) -> Result<Option<Groups>> {
        let Some(text) = self.metadata.get(GROUPS_METADATA) else {
            return Ok(None);
        };
        let groups: Groups = serde_json::from_str(text).map_err(|source| Error::Json {
            what: format!("metadata `{GROUPS_METADATA}` = {text:?} (a list of group ends)"),
            source,
        })?;
        if groups.n_atoms() != self.n_atoms {
            return Err(Error::InvalidArgument(format!(
                "metadata `{GROUPS_METADATA}` ends at {} but the dictionary has K = {}",
                groups.n_atoms(),
                self.n_atoms
            )));
        }
        Ok(Some(groups))
    }

    /// An [`Encoder`] for this dictionary that subtracts the mean first, and codes group by
    /// group when the dictionary has Matryoshka groups.
    pub fn encoder(&self, gpu: &Gpu, coding: CodingOptions) -> Result<Encoder> {
        let mut encoder = Encoder::new(
            gpu,
            &self.atoms,
            self.n_atoms,
            self.d,
            EncoderOptions::new(coding),
        )?;
        if let Some(groups) = self.groups()? {
            encoder = encoder.with_groups(groups)?;
        }
        if self.mean.iter().any(|&m| m != 0.0) {
            encoder.with_mean(self.mean.clone())
        } else {
            Ok(encoder)
        }
    }
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

/// Names for the SAELens metadata block.
#[derive(Clone, Debug, Default)]
pub struct SaeLensNames {
    /// `metadata.model_name` (e.g. `sentence-transformers/all-MiniLM-L6-v2`).
    pub model_name: Option<String>,
    /// `metadata.hook_name` (e.g. `blocks.4.hook_resid_post`).
    pub hook_name: Option<String>,
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

/// One row of the training trace.
#[derive(Clone, Copy, Debug)]
pub struct TracePoint {
    /// Update number over the whole run.
    pub step: usize,
    /// Epoch.
    pub epoch: usize,
    /// FVU of the batch's codes.
    pub fvu: f64,
    /// Atoms unused in the batch.
    pub unused_atoms: usize,
}

/// Writes `text` (CSV, header first) to `path` atomically.
pub fn write_csv(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, text.as_bytes())
}

/// An SVG chart of the trace: FVU (top) and atoms unused per batch (bottom) against the update
/// number, epoch starts marked by dashed lines.
pub fn trace_svg(points: &[TracePoint]) -> String {
    const W: f64 = 900.0;
    const PANEL: f64 = 260.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 30.0;
    let steps = points.last().map_or(1, |p| p.step + 1).max(2) as f64;
    let x = |step: usize| LEFT + (W - LEFT - RIGHT) * step as f64 / (steps - 1.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n",
        2.0 * PANEL + 2.0 * TOP + 30.0
    );
    let panels: [(&str, Vec<f64>, &str); 2] = [
        (
            "FVU per batch",
            points.iter().map(|p| p.fvu).collect(),
            "#1f77b4",
        ),
        (
            "atoms unused per batch",
            points.iter().map(|p| p.unused_atoms as f64).collect(),
            "#d62728",
        ),
    ];
    for (i, (title, values, colour)) in panels.iter().enumerate() {
        let top = TOP + i as f64 * (PANEL + TOP);
        let bottom = top + PANEL - 20.0;
        let hi = values.iter().copied().fold(0.0f64, f64::max);
        let hi = if hi > 0.0 { hi * 1.05 } else { 1.0 };
        let y = |v: f64| bottom - (bottom - top) * v / hi;
        svg += &format!(
            "<text x=\"{LEFT}\" y=\"{}\" font-weight=\"bold\">{title}</text>\n\
             <line x1=\"{LEFT}\" y1=\"{bottom}\" x2=\"{}\" y2=\"{bottom}\" stroke=\"black\"/>\n\
             <line x1=\"{LEFT}\" y1=\"{top}\" x2=\"{LEFT}\" y2=\"{bottom}\" stroke=\"black\"/>\n",
            top - 8.0,
            W - RIGHT
        );
        for tick in 0..=4 {
            let v = hi * tick as f64 / 4.0;
            svg += &format!(
                "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
                LEFT - 6.0,
                y(v) + 4.0,
                if hi < 10.0 {
                    format!("{v:.3}")
                } else {
                    format!("{v:.0}")
                }
            );
        }
        // Epoch starts.
        for p in points.windows(2).filter(|w| w[1].epoch != w[0].epoch) {
            let ex = x(p[1].step);
            svg += &format!(
                "<line x1=\"{ex:.1}\" y1=\"{top}\" x2=\"{ex:.1}\" y2=\"{bottom}\" stroke=\"#999\" \
                 stroke-dasharray=\"4 3\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#666\">epoch {}</text>\n",
                ex + 3.0,
                top + 12.0,
                p[1].epoch
            );
        }
        let line: Vec<String> = points
            .iter()
            .zip(values)
            .map(|(p, &v)| format!("{:.1},{:.1}", x(p.step), y(v)))
            .collect();
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
            line.join(" ")
        );
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">update (sample batch)</text>\n",
            (LEFT + W - RIGHT) / 2.0,
            bottom + 16.0
        );
    }
    svg += "</svg>\n";
    svg
}
