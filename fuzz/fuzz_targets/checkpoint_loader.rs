//! Training checkpoints and dictionaries: `Checkpoint::load` and `Dictionary::load` on the same
//! bytes. Errors are expected; a panic or crash is a bug.
#![no_main]

use dbksvd::export::Dictionary;
use dbksvd::train::Checkpoint;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::write_scratch("checkpoint_loader", "safetensors", data);
    match Checkpoint::load(path) {
        Ok(checkpoint) => {
            if common::verbose() {
                eprintln!("Checkpoint::load: ok {:?}", checkpoint.position());
            }
            let k = checkpoint.config().atoms;
            let d = checkpoint.dim();
            assert_eq!(checkpoint.atoms().len(), k * d, "atoms do not match [K, d]");
            assert_eq!(checkpoint.mean().len(), d, "mean does not match d");
            checkpoint
                .config()
                .validate()
                .expect("loading validates the configuration");
        }
        Err(e) => {
            if common::verbose() {
                eprintln!("Checkpoint::load: {e}");
            }
        }
    }
    match Dictionary::load(path) {
        Ok(dictionary) => {
            if common::verbose() {
                eprintln!(
                    "Dictionary::load: ok [{}, {}]",
                    dictionary.n_atoms, dictionary.d
                );
            }
            assert!(dictionary.n_atoms > 0 && dictionary.d > 0);
            assert_eq!(dictionary.atoms.len(), dictionary.n_atoms * dictionary.d);
            assert_eq!(dictionary.mean.len(), dictionary.d);
            assert!(dictionary.atoms.iter().chain(&dictionary.mean).all(|v| v.is_finite()));
        }
        Err(e) => {
            if common::verbose() {
                eprintln!("Dictionary::load: {e}");
            }
        }
    }
});
