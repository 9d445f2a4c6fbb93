//! `dbksvd encode`: codes activations with a trained dictionary.

use dbksvd::encode::{Coder, CodingOptions, EncodeOptions};
use dbksvd::export;
use dbksvd::gpu::Gpu;
use dbksvd::{Dictionary, Error};

use crate::args::{coder, dictionary_k, open_data, EncodeArgs};

pub(crate) fn run(args: &EncodeArgs) -> dbksvd::Result<bool> {
    let dictionary = Dictionary::load(&args.dict)?;
    let k = dictionary_k(&dictionary, &args.dict, args.k)?;
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
