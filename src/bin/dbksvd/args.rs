//! The command line's flags, and the data and coder they name.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use dbksvd::data::{self, ActivationFile, ActivationSource, RowRange, Shards};
use dbksvd::encode::{Coder, GramPrecision, Groups};
use dbksvd::export::SaeLensNames;
use dbksvd::gpu::GpuOptions;
use dbksvd::{Dictionary, Error};

/// The bundled default: 4096 rows of MiniLM layer-4 activations.
pub(crate) const DEFAULT_DATA: &str = "data/minilm_rustbook_L4_small.safetensors";

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum CoderArg {
    Omp,
    Mp,
}

/// How the coder stores the Gram matrix.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum GramArg {
    /// f32: codes as the reference's.
    F32,
    /// f16 pairs: half the memory and the coding reads of G.
    F16,
}

impl From<GramArg> for GramPrecision {
    fn from(arg: GramArg) -> Self {
        match arg {
            GramArg::F32 => GramPrecision::F32,
            GramArg::F16 => GramPrecision::F16,
        }
    }
}

/// Where the activations come from.
#[derive(Args)]
pub(crate) struct DataArgs {
    /// Activation files (safetensors or .npy, or folders of them), read as one dataset in order.
    #[arg(long, num_args = 1..)]
    pub(crate) data: Vec<PathBuf>,
    /// The tensor to read in safetensors files (default: `activations`, else the only 2-D one).
    #[arg(long)]
    pub(crate) tensor: Option<String>,
    /// Only rows A..B (A:B, either may be omitted) of the dataset.
    #[arg(long, value_name = "A:B")]
    pub(crate) rows: Option<String>,
}

#[derive(Args)]
pub(crate) struct TrainArgs {
    #[command(flatten)]
    pub(crate) data: DataArgs,
    /// Atoms K.
    #[arg(long, default_value_t = 512)]
    pub(crate) atoms: usize,
    /// Most nonzeros per sample.
    #[arg(long, default_value_t = 16)]
    pub(crate) k: usize,
    /// Passes over the data.
    #[arg(long, default_value_t = 10)]
    pub(crate) epochs: usize,
    /// Samples per batch [default: the largest up to 4096 that the adapter holds].
    #[arg(long)]
    pub(crate) batch: Option<usize>,
    /// Atoms updated in parallel, at most --atoms [default: 128, or K if smaller].
    #[arg(long)]
    pub(crate) atom_batch: Option<usize>,
    /// Power iterations per atom update.
    #[arg(long, default_value_t = 1)]
    pub(crate) power_iters: usize,
    /// Weight γ in [0, 1) of each atom's memory of earlier batches (0: fit each batch alone).
    #[arg(long, default_value_t = 0.8)]
    pub(crate) memory: f32,
    /// Sparse coder while training (held-out rows are scored by OMP whatever it is).
    #[arg(long, value_enum, default_value_t = CoderArg::Mp)]
    pub(crate) coder: CoderArg,
    /// Storage of the Gram matrix the coder reads (f16: half its memory and reads).
    #[arg(long, value_enum, default_value_t = GramArg::F32)]
    pub(crate) gram: GramArg,
    /// Train a Matryoshka dictionary: the smallest group (groups of M, M, 2M, 4M, … atoms up to
    /// K, e.g. 64), or the groups' ends (e.g. 64,128,256,512,1000; the last is K).
    #[arg(long, value_name = "M|END,END,...")]
    pub(crate) matryoshka: Option<String>,
    /// Do not subtract the data mean.
    #[arg(long)]
    pub(crate) no_center: bool,
    /// Stop when an epoch lowers the FVU by less than this fraction.
    #[arg(long)]
    pub(crate) tolerance: Option<f64>,
    /// Stop after this many seconds of training (counted over the whole run, resumes included).
    #[arg(long, value_name = "SECONDS")]
    pub(crate) time_limit: Option<f64>,
    /// Checkpoint every N batches (and at every epoch end).
    #[arg(long, value_name = "N")]
    pub(crate) checkpoint_every: Option<usize>,
    /// Continue from OUT/checkpoint.safetensors.
    #[arg(long)]
    pub(crate) resume: bool,
    /// Start from the atoms of this dictionary.safetensors (K must equal --atoms) instead of
    /// random samples: to go on training with other settings, such as a larger batch.
    #[arg(long, value_name = "DICT", conflicts_with = "resume")]
    pub(crate) init: Option<PathBuf>,
    /// Score this file after every epoch (coded by OMP, whatever the training coder).
    #[arg(long)]
    pub(crate) eval: Option<PathBuf>,
    /// Score rows A..B (A:B) after every epoch: of --eval, or of the training files without it.
    #[arg(long, value_name = "A:B")]
    pub(crate) eval_rows: Option<String>,
    /// Seed of the initial atoms and of every shuffle.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Output folder.
    #[arg(long, default_value = "out")]
    pub(crate) out: PathBuf,
    /// Write into OUT even if it holds files dbksvd did not write.
    #[arg(long)]
    pub(crate) force: bool,
    #[command(flatten)]
    pub(crate) names: NameArgs,
    #[command(flatten)]
    pub(crate) device: DeviceArgs,
}

/// Where the activations came from, written into the SAELens folder's metadata for SAEBench.
#[derive(Args)]
pub(crate) struct NameArgs {
    /// Model the activations came from (metadata.model_name).
    #[arg(long)]
    pub(crate) model_name: Option<String>,
    /// TransformerLens hook they were taken at, e.g. blocks.4.hook_resid_post (metadata.hook_name;
    /// hook_layer is read from it).
    #[arg(long)]
    pub(crate) hook_name: Option<String>,
    /// Tokens per sequence they were taken from (metadata.context_size).
    #[arg(long)]
    pub(crate) context_size: Option<u64>,
    /// Whether those sequences started with BOS (metadata.prepend_bos).
    #[arg(long)]
    pub(crate) prepend_bos: Option<bool>,
}

impl NameArgs {
    pub(crate) fn names(&self) -> SaeLensNames {
        SaeLensNames {
            model_name: self.model_name.clone(),
            hook_name: self.hook_name.clone(),
            context_size: self.context_size,
            prepend_bos: self.prepend_bos,
        }
    }
}

#[derive(Args)]
pub(crate) struct ExportArgs {
    /// A dictionary.safetensors written by `dbksvd train`.
    #[arg(long)]
    pub(crate) dict: PathBuf,
    /// Output folder for SAELens (`cfg.json`, `sae_weights.safetensors`).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Most iterations of SAELens' encoder (default: the k the dictionary was trained with).
    #[arg(long)]
    pub(crate) k: Option<usize>,
    #[command(flatten)]
    pub(crate) names: NameArgs,
}

#[derive(Args)]
pub(crate) struct EncodeArgs {
    /// A dictionary.safetensors written by `dbksvd train`.
    #[arg(long)]
    pub(crate) dict: PathBuf,
    #[command(flatten)]
    pub(crate) data: DataArgs,
    /// Output safetensors file: `indices` I32 [N, k] (-1 for empty slots), `values` F32 [N, k].
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Most nonzeros per row (default: the k the dictionary was trained with).
    #[arg(long)]
    pub(crate) k: Option<usize>,
    /// Code with the first N Matryoshka groups only (their share of k; later slots empty).
    #[arg(long, value_name = "N")]
    pub(crate) groups: Option<usize>,
    /// Sparse coder.
    #[arg(long, value_enum, default_value_t = CoderArg::Omp)]
    pub(crate) coder: CoderArg,
    /// Storage of the Gram matrix the coder reads (f16: half its memory and reads).
    #[arg(long, value_enum, default_value_t = GramArg::F32)]
    pub(crate) gram: GramArg,
    #[command(flatten)]
    pub(crate) device: DeviceArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PhaseArg {
    Products,
    Omp,
    Mp,
    Update,
    Step,
}

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Sample dimension d.
    #[arg(long, default_value_t = 384)]
    pub(crate) dim: usize,
    /// Atoms K.
    #[arg(long, default_value_t = 1536)]
    pub(crate) atoms: usize,
    /// Most nonzeros per sample.
    #[arg(long, default_value_t = 32)]
    pub(crate) k: usize,
    /// Samples per batch B.
    #[arg(long, default_value_t = 4096)]
    pub(crate) batch: usize,
    /// Samples N of the epoch whose time is projected from the step's.
    #[arg(long, value_name = "N", default_value_t = 1 << 21)]
    pub(crate) samples: u64,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Run only these phases (comma-separated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',', num_args = 1..)]
    pub(crate) phases: Vec<PhaseArg>,
    /// Storage of the Gram matrix the coders read (f16: half its memory and reads).
    #[arg(long, value_enum, default_value_t = GramArg::F32)]
    pub(crate) gram: GramArg,
    /// Atoms the update and the step update in parallel, at most --atoms [default: the
    /// trainer's, 128, or K if smaller].
    #[arg(long)]
    pub(crate) atom_batch: Option<usize>,
    /// Measure each timed figure R times and report the median, then its spread (min, median,
    /// max): for machines whose speed varies.
    #[arg(long, value_name = "R", default_value_t = 1)]
    pub(crate) repeat: usize,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Follow each timed figure with its kernels' times, from timestamp queries (where the adapter
    /// has them; each dispatch then runs in its own compute pass).
    #[arg(long)]
    pub(crate) profile: bool,
    #[command(flatten)]
    pub(crate) device: DeviceArgs,
}

/// Adapter choice; each flag overrides its environment variable.
#[derive(Args)]
pub(crate) struct DeviceArgs {
    /// Substring of the adapter name to use (WGPU_ADAPTER_NAME).
    #[arg(long)]
    pub(crate) adapter: Option<String>,
    /// Comma-separated backends: vulkan, metal, dx12 (WGPU_BACKEND).
    #[arg(long)]
    pub(crate) backend: Option<String>,
    /// Prefer an integrated GPU over a discrete one (WGPU_POWER_PREF=low).
    #[arg(long)]
    pub(crate) low_power: bool,
    /// Cap storage bindings at this many bytes (DBKSVD_MAX_BINDING_SIZE).
    #[arg(long)]
    pub(crate) max_binding_size: Option<u64>,
    /// Cap buffers at this many bytes, e.g. below what a driver over-reports
    /// (DBKSVD_MAX_BUFFER_SIZE).
    #[arg(long)]
    pub(crate) max_buffer_size: Option<u64>,
}

impl DeviceArgs {
    pub(crate) fn options(&self) -> dbksvd::Result<GpuOptions> {
        let mut options = GpuOptions::from_env()?;
        if self.adapter.is_some() {
            options.adapter_name = self.adapter.clone();
        }
        if self.backend.is_some() {
            options.backends = self.backend.clone();
        }
        options.low_power |= self.low_power;
        if self.max_binding_size.is_some() {
            options.max_binding_size = self.max_binding_size;
        }
        if self.max_buffer_size.is_some() {
            options.max_buffer_size = self.max_buffer_size;
        }
        Ok(options)
    }
}

/// Opens the dataset the flags describe (the bundled default when no `--data`).
pub(crate) fn open_data(args: &DataArgs) -> dbksvd::Result<Box<dyn ActivationSource>> {
    let source: Box<dyn ActivationSource> = if args.data.is_empty() {
        let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_DATA);
        let path = if Path::new(DEFAULT_DATA).exists() {
            PathBuf::from(DEFAULT_DATA)
        } else {
            bundled
        };
        eprintln!("no --data: training on the bundled {}", path.display());
        Box::new(ActivationFile::open(&path)?)
    } else if let Some(tensor) = &args.tensor {
        let parts = args
            .data
            .iter()
            .map(|p| {
                ActivationFile::open_tensor(p, tensor)
                    .map(|f| Box::new(f) as Box<dyn ActivationSource>)
            })
            .collect::<dbksvd::Result<Vec<_>>>()?;
        Box::new(Shards::new(parts)?)
    } else {
        data::open(&args.data)?
    };
    match &args.rows {
        None => Ok(source),
        Some(spec) => {
            let rows = source.rows();
            let bad = || {
                Error::InvalidArgument(format!("--rows {spec}: expected A:B with A ≤ B ≤ {rows}"))
            };
            let (a, b) = spec.split_once(':').ok_or_else(bad)?;
            let a = if a.is_empty() {
                0
            } else {
                a.trim().parse().map_err(|_| bad())?
            };
            let b = if b.is_empty() {
                rows
            } else {
                b.trim().parse().map_err(|_| bad())?
            };
            Ok(Box::new(RowRange::new(source, a..b)?))
        }
    }
}

/// `--matryoshka`: the smallest group, or the groups' ends.
pub(crate) fn matryoshka_groups(spec: &str, n_atoms: usize) -> dbksvd::Result<Groups> {
    let bad = || {
        Error::InvalidArgument(format!(
            "--matryoshka {spec}: expected the smallest group (e.g. 64) or the groups' ends \
             (e.g. 64,128,{n_atoms})"
        ))
    };
    let numbers = spec
        .split(',')
        .map(|n| n.trim().parse::<usize>().map_err(|_| bad()))
        .collect::<dbksvd::Result<Vec<_>>>()?;
    Groups::from_spec(&numbers, n_atoms)
}

pub(crate) fn coder(arg: CoderArg) -> Coder {
    match arg {
        CoderArg::Omp => Coder::Omp,
        CoderArg::Mp => Coder::Mp { refit: true },
    }
}

/// `k` when given, else the k `dictionary` (loaded from `path`) was trained with.
pub(crate) fn dictionary_k(
    dictionary: &Dictionary,
    path: &Path,
    k: Option<usize>,
) -> dbksvd::Result<usize> {
    k.or(dictionary.k()).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{} does not record its k; pass --k",
            path.display()
        ))
    })
}
