//! `dbksvd train`: trains on activation files and writes the outputs.

use std::ops::ControlFlow;
use std::time::Duration;

use dbksvd::data::ActivationSource;
use dbksvd::export;
use dbksvd::gpu::Gpu;
use dbksvd::train::{Init, TrainConfig, TrainResult, Trainer, CHECKPOINT_FILE};
use dbksvd::{Dictionary, Error};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::{coder, matryoshka_groups, open_data, DataArgs, TrainArgs};

pub(crate) fn run(args: &TrainArgs) -> dbksvd::Result<bool> {
    export::prepare_output_folder(&args.out, args.force)?;
    let source = open_data(&args.data)?;
    let config = config(args, source.as_ref())?;
    // Configuration and data errors come before the device is opened.
    config.validate_for(source.rows(), source.dim(), &source.name())?;
    let gpu = Gpu::with_options(&args.device.options()?)?;
    let eval = open_eval(args, source.as_ref())?;
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
    let result = trainer.fit(source.as_ref());
    // The error line must not share the terminal line with the bar.
    bar.finish_and_clear();
    let result = result?;
    export::write_outputs(&result, &args.out, &args.names.names())?;
    print_result(&result);
    println!("wrote {}", args.out.display());
    Ok(true)
}

/// The training configuration the flags ask for (`--init` checked against `source`).
fn config(args: &TrainArgs, source: &dyn ActivationSource) -> dbksvd::Result<TrainConfig> {
    let time_limit = args
        .time_limit
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .map_err(|_| Error::InvalidArgument(format!("--time-limit {s}: not a duration")))
        })
        .transpose()?;
    let mut config = TrainConfig::new(args.atoms, args.k)
        .with_epochs(args.epochs)
        .with_power_iterations(args.power_iters)
        .with_atom_memory(args.memory)
        .with_coder(coder(args.coder))
        .with_gram(args.gram.into())
        .with_center(!args.no_center)
        .with_seed(args.seed);
    config.batch_size = args.batch;
    config.tolerance = args.tolerance;
    config.time_limit = time_limit;
    config.checkpoint_every = args.checkpoint_every;
    if let Some(atom_batch) = args.atom_batch {
        config.atom_batch = atom_batch;
    }
    if let Some(spec) = &args.matryoshka {
        config.groups = Some(matryoshka_groups(spec, args.atoms)?);
    }
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
    Ok(config)
}

/// The held-out source `--eval` / `--eval-rows` name, of the training data's dimension.
fn open_eval(
    args: &TrainArgs,
    source: &dyn ActivationSource,
) -> dbksvd::Result<Option<Box<dyn ActivationSource>>> {
    if args.eval.is_none() && args.eval_rows.is_none() {
        return Ok(None);
    }
    let eval = open_data(&DataArgs {
        data: args
            .eval
            .clone()
            .map_or_else(|| args.data.data.clone(), |f| vec![f]),
        tensor: args.data.tensor.clone(),
        rows: args.eval_rows.clone(),
    })?;
    if eval.dim() != source.dim() {
        return Err(Error::ShapeMismatch {
            op: "--eval vs --data".into(),
            left: format!("d = {} ({})", eval.dim(), eval.name()),
            right: format!("d = {}", source.dim()),
        });
    }
    Ok(Some(eval))
}

fn print_result(result: &TrainResult) {
    let Some(last) = result.epochs.last() else {
        println!("stopped ({:?}) before the first epoch ended", result.stop);
        return;
    };
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
}
