//! A trained dictionary: its atoms, mean and metadata, as stored on disk and coded with.

use std::collections::HashMap;
use std::path::Path;

use crate::encode::{CodingOptions, Encoder, EncoderOptions, Groups};
use crate::error::{Error, Result};
use crate::files::{write_safetensors, SafetensorsFile, Tensor};
use crate::gpu::Gpu;

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
