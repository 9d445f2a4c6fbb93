//! `dbksvd export`: the SAELens folder of a trained dictionary.

use dbksvd::{export, Dictionary};

use crate::args::{dictionary_k, ExportArgs};

pub(crate) fn run(args: &ExportArgs) -> dbksvd::Result<bool> {
    let dictionary = Dictionary::load(&args.dict)?;
    let k = dictionary_k(&dictionary, &args.dict, args.k)?;
    export::write_saelens(&args.out, &dictionary, k, 0.0, &args.names.names())?;
    println!(
        "wrote {} (SAELens matching_pursuit, k = {k})",
        args.out.display()
    );
    Ok(true)
}
