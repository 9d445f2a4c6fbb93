//! Activation files in safetensors form: `ActivationFile::open` / `open_tensor` and reading every
//! row. Errors are expected; a panic or crash is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::write_scratch("safetensors_reader", "safetensors", data);
    common::open_and_read(path);
});
