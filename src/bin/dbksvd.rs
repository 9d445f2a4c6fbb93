//! `dbksvd`: the command-line tool, thin over the library.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use dbksvd::bench::{Bench, BenchConfig, Format, Phase};
use dbksvd::check::gemm_self_check;
use dbksvd::data::{self, ActivationFile, ActivationSource, RowRange, Shards};
use dbksvd::encode::{Coder, CodingOptions, EncodeOptions, GramPrecision, Groups};
use dbksvd::export::{self, SaeLensNames};
use dbksvd::files;
use dbksvd::gpu::{list_adapters, Gpu, GpuOptions};
use dbksvd::train::{Init, TrainConfig, Trainer, CHECKPOINT_FILE, DICTIONARY_FILE};
use dbksvd::Dictionary;
use dbksvd::Error;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "dbksvd",
    version,
    about = "Double-Batch KSVD dictionary learning on any GPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List GPU adapters, open one, print its limits and check the matrix kernels against the CPU.
    Devices(DeviceArgs),
    /// Train a dictionary; writes OUT/dictionary.safetensors, OUT/sae (SAELens), traces.
    Train(TrainArgs),
    /// Sparse-code activations with a trained dictionary; writes indices and values.
    Encode(EncodeArgs),
    /// Measure this GPU at a size on synthetic data: products, coding, update, step, memory.
    Bench(BenchArgs),
}

/// The bundled default: 4096 rows of MiniLM layer-4 activations.
const DEFAULT_DATA: &str = "data/minilm_rustbook_L4_small.safetensors";

#[derive(Clone, Copy, ValueEnum)]
enum CoderArg {
    Omp,
    Mp,
}

/// How the coder stores the Gram matrix.
#[derive(Clone, Copy, ValueEnum)]
enum GramArg {
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
struct DataArgs {
    /// Activation files (safetensors or .npy, or folders of them), read as one dataset in order.
    #[arg(long, num_args = 1..)]
    data: Vec<PathBuf>,
    /// The tensor to read in safetensors files (default: `activations`, else the only 2-D one).
    #[arg(long)]
    tensor: Option<String>,
    /// Only rows A..B (A:B, either may be omitted) of the dataset.
    #[arg(long, value_name = "A:B")]
    rows: Option<String>,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Atoms K.
    #[arg(long, default_value_t = 512)]
    atoms: usize,
    /// Most nonzeros per sample.
    #[arg(long, default_value_t = 16)]
    k: usize,
    /// Passes over the data.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Samples per batch [default: the largest up to 4096 that the adapter holds].
    #[arg(long)]
    batch: Option<usize>,
    /// Atoms updated in parallel, at most --atoms [default: 32, or K if smaller].
    #[arg(long)]
    atom_batch: Option<usize>,
    /// Power iterations per atom update.
    #[arg(long, default_value_t = 1)]
    power_iters: usize,
    /// Weight γ in [0, 1) of each atom's memory of earlier batches (0: fit each batch alone).
    #[arg(long, default_value_t = 0.8)]
    memory: f32,
    /// Sparse coder while training (held-out rows are scored by OMP whatever it is).
    #[arg(long, value_enum, default_value_t = CoderArg::Mp)]
    coder: CoderArg,
    /// Storage of the Gram matrix the coder reads (f16: half its memory and reads).
    #[arg(long, value_enum, default_value_t = GramArg::F32)]
    gram: GramArg,
    /// Train a Matryoshka dictionary: the smallest group (groups of M, M, 2M, 4M, … atoms up to
    /// K, e.g. 64), or the groups' ends (e.g. 64,128,256,512,1000; the last is K).
    #[arg(long, value_name = "M|END,END,...")]
    matryoshka: Option<String>,
    /// Do not subtract the data mean.
    #[arg(long)]
    no_center: bool,
    /// Stop when an epoch lowers the FVU by less than this fraction.
    #[arg(long)]
    tolerance: Option<f64>,
    /// Stop after this many seconds of training (counted over the whole run, resumes included).
    #[arg(long, value_name = "SECONDS")]
    time_limit: Option<f64>,
    /// Checkpoint every N batches (and at every epoch end).
    #[arg(long, value_name = "N")]
    checkpoint_every: Option<usize>,
    /// Continue from OUT/checkpoint.safetensors.
    #[arg(long)]
    resume: bool,
    /// Start from the atoms of this dictionary.safetensors (K must equal --atoms) instead of
    /// random samples: to go on training with other settings, such as a larger batch.
    #[arg(long, value_name = "DICT", conflicts_with = "resume")]
    init: Option<PathBuf>,
    /// Score this file after every epoch (coded by OMP, whatever the training coder).
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Score rows A..B (A:B) after every epoch: of --eval, or of the training files without it.
    #[arg(long, value_name = "A:B")]
    eval_rows: Option<String>,
    /// Seed of the initial atoms and of every shuffle.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Write into OUT even if it holds files dbksvd did not write.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct EncodeArgs {
    /// A dictionary.safetensors written by `dbksvd train`.
    #[arg(long)]
    dict: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Output safetensors file: `indices` I32 [N, k] (-1 for empty slots), `values` F32 [N, k].
    #[arg(long)]
    out: PathBuf,
    /// Most nonzeros per row (default: the k the dictionary was trained with).
    #[arg(long)]
    k: Option<usize>,
    /// Code with the first N Matryoshka groups only (their share of k; later slots empty).
    #[arg(long, value_name = "N")]
    groups: Option<usize>,
    /// Sparse coder.
    #[arg(long, value_enum, default_value_t = CoderArg::Omp)]
    coder: CoderArg,
    /// Storage of the Gram matrix the coder reads (f16: half its memory and reads).
    #[arg(long, value_enum, default_value_t = GramArg::F32)]
    gram: GramArg,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PhaseArg {
    Products,
    Omp,
    Mp,
    Update,
    Step,
}

#[derive(Args)]
struct BenchArgs {
    /// Sample dimension d.
    #[arg(long, default_value_t = 384)]
    dim: usize,
    /// Atoms K.
    #[arg(long, default_value_t = 1536)]
    atoms: usize,
    /// Most nonzeros per sample.
    #[arg(long, default_value_t = 32)]
    k: usize,
    /// Samples per batch B.
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// Samples N of the epoch whose time is projected from the step's.
    #[arg(long, value_name = "N", default_value_t = 1 << 21)]
    samples: u64,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run only these phases (comma-separated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',', num_args = 1..)]
    phases: Vec<PhaseArg>,
    /// Storage of the Gram matrix the coders read (f16: half its memory and reads).
    #[arg(long, value_enum, default_value_t = GramArg::F32)]
    gram: GramArg,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Adapter choice; each flag overrides its environment variable.
#[derive(Args)]
struct DeviceArgs {
    /// Substring of the adapter name to use (WGPU_ADAPTER_NAME).
    #[arg(long)]
    adapter: Option<String>,
    /// Comma-separated backends: vulkan, metal, dx12 (WGPU_BACKEND).
    #[arg(long)]
    backend: Option<String>,
    /// Prefer an integrated GPU over a discrete one (WGPU_POWER_PREF=low).
    #[arg(long)]
    low_power: bool,
    /// Cap storage bindings at this many bytes (DBKSVD_MAX_BINDING_SIZE).
    #[arg(long)]
    max_binding_size: Option<u64>,
    /// Cap buffers at this many bytes, e.g. below what a driver over-reports
    /// (DBKSVD_MAX_BUFFER_SIZE).
    #[arg(long)]
    max_buffer_size: Option<u64>,
}

impl DeviceArgs {
    fn options(&self) -> dbksvd::Result<GpuOptions> {
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

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn devices(args: &DeviceArgs) -> dbksvd::Result<bool> {
    let options = args.options()?;
    let adapters = list_adapters(&options);
    println!("adapters ({}):", adapters.len());
    for (i, a) in adapters.iter().enumerate() {
        println!(
            "  [{i}] {} ({}, {}) driver: {}",
            a.name, a.backend, a.device_type, a.driver
        );
    }
    let gpu = Gpu::with_options(&options)?;
    let a = gpu.adapter();
    let l = gpu.limits();
    println!("using: {} ({}, {})", a.name, a.backend, a.device_type);
    if a.is_cpu() {
        println!("  note: a software adapter; fine for tests, slow for training");
    }
    println!("granted limits:");
    println!(
        "  storage binding   {} (planned {})",
        mib(l.max_storage_buffer_binding_size),
        mib(l.planned_binding_size)
    );
    println!("  buffer            {}", mib(l.max_buffer_size));
    println!(
        "  workgroup storage {} KiB",
        l.max_compute_workgroup_storage_size / 1024
    );
    println!(
        "  invocations/wg    {}",
        l.max_compute_invocations_per_workgroup
    );
    println!(
        "  workgroups/dim    {}",
        l.max_compute_workgroups_per_dimension
    );
    println!(
        "  offset alignment  {} B",
        l.min_storage_buffer_offset_alignment
    );
    if let Some(cap) = l.max_loop_iterations {
        println!("  loop cap          {cap} iterations per invocation (llvmpipe; larger jobs are split or refused)");
    }
    println!("self-check against the f64 CPU reference:");
    let mut all_passed = true;
    for r in gemm_self_check(&gpu)? {
        let verdict = if r.passed() { "ok" } else { "FAILED" };
        all_passed &= r.passed();
        println!(
            "  {:<20} {:>12}  relative error {:.2e}  worst element {:.2} of bound  {verdict}",
            r.name, r.shape, r.relative_error, r.worst_bound_ratio
        );
    }
    Ok(all_passed)
}

/// Opens the dataset the flags describe (the bundled default when no `--data`).
fn open_data(args: &DataArgs) -> dbksvd::Result<Box<dyn ActivationSource>> {
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
fn matryoshka_groups(spec: &str, n_atoms: usize) -> dbksvd::Result<Groups> {
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
    match numbers[..] {
        [smallest] => Groups::doubling(smallest, n_atoms),
        _ => Groups::new(numbers),
    }
}

fn coder(arg: CoderArg) -> Coder {
    match arg {
        CoderArg::Omp => Coder::Omp,
        CoderArg::Mp => Coder::Mp { refit: true },
    }
}

/// Files `dbksvd train` writes into its output folder, beside the `sae` folder.
const OUTPUTS: [&str; 5] = [
    DICTIONARY_FILE,
    CHECKPOINT_FILE,
    "trace.csv",
    "trace.svg",
    "epochs.csv",
];

/// Files it writes into `sae`.
const SAE_OUTPUTS: [&str; 2] = ["cfg.json", "sae_weights.safetensors"];

/// Files and folders `dbksvd train` writes into its output folder (temporaries included).
fn ours(name: &str) -> bool {
    name == "sae" || OUTPUTS.contains(&name) || files::is_temporary_of(name, &OUTPUTS)
}

fn train(args: &TrainArgs) -> dbksvd::Result<bool> {
    if args.out.exists() && !args.force {
        let entries = std::fs::read_dir(&args.out).map_err(|source| Error::Io {
            path: args.out.clone(),
            source,
        })?;
        let foreign: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| !ours(name))
            .collect();
        if !foreign.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "--out {} holds files dbksvd did not write ({}); choose another folder or pass --force",
                args.out.display(),
                foreign.join(", ")
            )));
        }
    }
    let source = open_data(&args.data)?;
    let mut config = TrainConfig::new(args.atoms, args.k);
    config.epochs = args.epochs;
    config.batch_size = args.batch;
    if let Some(atom_batch) = args.atom_batch {
        config.atom_batch = atom_batch;
    }
    config.power_iterations = args.power_iters;
    config.atom_memory = args.memory;
    config.coder = coder(args.coder);
    config.gram = args.gram.into();
    if let Some(spec) = &args.matryoshka {
        config.groups = Some(matryoshka_groups(spec, args.atoms)?);
    }
    config.center = !args.no_center;
    config.tolerance = args.tolerance;
    config.time_limit = args
        .time_limit
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .map_err(|_| Error::InvalidArgument(format!("--time-limit {s}: not a duration")))
        })
        .transpose()?;
    config.checkpoint_every = args.checkpoint_every;
    config.seed = args.seed;
    if let Some(path) = &args.init {
        let start = Dictionary::load(path)?;
        if start.n_atoms() != config.atoms || start.dim() != source.dim() {
            return Err(Error::ShapeMismatch {
                op: format!(
                    "--init {} (its atoms vs --atoms and the data)",
                    path.display()
                ),
                left: format!("K = {}, d = {}", start.n_atoms(), start.dim()),
                right: format!("K = {}, d = {}", config.atoms, source.dim()),
            });
        }
        config.init = Init::Dictionary(start.atoms().to_vec());
    }
    // Configuration and data errors come before the device is opened.
    config.validate_for(source.rows(), source.dim(), &source.name())?;
    let gpu = Gpu::with_options(&args.device.options()?)?;
    let eval = match (&args.eval, &args.eval_rows) {
        (None, None) => None,
        (file, rows) => Some(open_data(&DataArgs {
            data: file
                .clone()
                .map_or_else(|| args.data.data.clone(), |f| vec![f]),
            tensor: args.data.tensor.clone(),
            rows: rows.clone(),
        })?),
    };
    if let Some(eval) = &eval {
        if eval.dim() != source.dim() {
            return Err(Error::ShapeMismatch {
                op: "--eval vs --data".into(),
                left: format!("d = {} ({})", eval.dim(), eval.name()),
                right: format!("d = {}", source.dim()),
            });
        }
    }
    println!(
        "training K = {}, k = {} on {} ({} rows, d = {}) with {}",
        config.atoms,
        config.k,
        source.name(),
        source.rows(),
        source.dim(),
        gpu.adapter().name
    );
    if let Some(groups) = &config.groups {
        println!(
            "Matryoshka groups ending at {:?}, with k {:?}",
            groups.ends(),
            groups.split_k(config.k)?
        );
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} batches  {msg}  ETA {eta}")
            .expect("valid template"),
    );
    let mut trainer = Trainer::new(&gpu, config)
        .checkpoint_to(&args.out)
        .on_batch(|p| {
            bar.set_length(p.total as u64);
            bar.set_position(p.done as u64);
            bar.set_message(format!(
                "epoch {} FVU {:.4} L0 {:.1}",
                p.batch.epoch, p.batch.fvu, p.batch.l0
            ));
            ControlFlow::Continue(())
        });
    if args.resume {
        trainer = trainer.resume_from(args.out.join(CHECKPOINT_FILE));
    }
    if let Some(eval) = &eval {
        trainer = trainer.evaluate_on(eval.as_ref());
    }
    // Temporaries of an earlier run killed while writing are ours and useless.
    files::remove_temporaries(&args.out, &OUTPUTS)?;
    files::remove_temporaries(&args.out.join("sae"), &SAE_OUTPUTS)?;
    let result = trainer.fit(&source);
    // The error line must not share the terminal line with the bar.
    bar.finish_and_clear();
    let result = result?;
    export::write_outputs(&result, &args.out, &SaeLensNames::default())?;
    if let Some(last) = result.epochs.last() {
        println!(
            "done ({:?}) after {} epochs, {:.1} s: FVU {:.4}, L0 {:.2}, {} dead atoms (re-seeded), coherence {:.3}{}",
            result.stop,
            result.epochs.len(),
            result.seconds,
            last.fvu,
            last.l0,
            last.dead_atoms,
            last.coherence,
            last.eval
                .map_or(String::new(), |s| format!(", eval FVU {:.4} at L0 {:.2}", s.fvu, s.l0))
        );
    } else {
        println!("stopped ({:?}) before the first epoch ended", result.stop);
    }
    println!("wrote {}", args.out.display());
    Ok(true)
}

fn encode(args: &EncodeArgs) -> dbksvd::Result<bool> {
    let dictionary = Dictionary::load(&args.dict)?;
    let k = match args.k {
        Some(k) => k,
        None => dictionary.k().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{} does not record its k; pass --k",
                args.dict.display()
            ))
        })?,
    };
    if args.data.data.is_empty() {
        return Err(Error::InvalidArgument("encode needs --data".into()));
    }
    let source = open_data(&args.data)?;
    let coding = match coder(args.coder) {
        Coder::Omp => CodingOptions::omp(k),
        Coder::Mp { refit } => CodingOptions::mp(k, refit),
    }
    .with_gram(args.gram.into());
    coding.validate()?;
    if source.dim() != dictionary.dim() {
        return Err(Error::ShapeMismatch {
            op: format!(
                "encoding {} with {} (data vs dictionary)",
                source.name(),
                args.dict.display()
            ),
            left: format!("d = {}", source.dim()),
            right: format!("d = {}", dictionary.dim()),
        });
    }
    let gpu = Gpu::with_options(&args.device.options()?)?;
    let encoder = dictionary.encoder(&gpu, coding)?;
    let codes = match args.groups {
        Some(prefix) => {
            let options = EncodeOptions::default().with_prefix(prefix);
            encoder.encode_with(source.as_ref(), options)?.codes
        }
        None => encoder.encode(source.as_ref())?,
    };
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("dictionary".into(), args.dict.display().to_string());
    metadata.insert("data".into(), source.name());
    export::write_codes(&args.out, &codes, metadata)?;
    println!(
        "coded {} rows, mean L0 {:.2}, into {}",
        codes.n,
        codes.mean_l0(),
        args.out.display()
    );
    Ok(true)
}

fn bench(args: &BenchArgs) -> dbksvd::Result<bool> {
    let config = BenchConfig {
        samples: args.samples,
        seed: args.seed,
        gram: args.gram.into(),
        phases: args
            .phases
            .iter()
            .map(|p| match p {
                PhaseArg::Products => Phase::Products,
                PhaseArg::Omp => Phase::Omp,
                PhaseArg::Mp => Phase::Mp,
                PhaseArg::Update => Phase::Update,
                PhaseArg::Step => Phase::Step,
            })
            .collect(),
        ..BenchConfig::new(args.dim, args.atoms, args.k, args.batch)
    };
    // Size errors come before the device is opened.
    config.validate()?;
    let gpu = Gpu::with_options(&args.device.options()?)?;
    let format = if args.json {
        Format::Json
    } else {
        Format::Text
    };
    let bench = Bench::new(&gpu, config)?;
    println!("{}", bench.adapter_line(format));
    bench.run(|figure| println!("{}", bench.figure_line(figure, format)))?;
    Ok(true)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    // A panic is a bug in dbksvd, never the user's input: one line that says so, no backtrace
    // unless asked for with RUST_BACKTRACE.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // A wgpu panic dbksvd catches becomes an error, printed like any other.
        if dbksvd::gpu::panic_is_caught() {
            return;
        }
        if std::env::var_os("RUST_BACKTRACE").is_some() {
            default_hook(info);
            return;
        }
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let place = info
            .location()
            .map_or(String::new(), |l| format!(" at {}:{}", l.file(), l.line()));
        eprintln!(
            "error: internal error in dbksvd (a bug, please report it): {}{place}",
            one_line(&message)
        );
    }));
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Devices(args) => devices(args),
        Command::Train(args) => train(args),
        Command::Encode(args) => encode(args),
        Command::Bench(args) => bench(args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: the GPU results disagree with the CPU reference");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {}", one_line(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// `text` on one line: an error is one line on the terminal and in logs.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
