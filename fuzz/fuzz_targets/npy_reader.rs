//! Activation files in `.npy` form (the reader tells formats apart by content; the seeds are
//! `.npy` files so the fuzzer starts inside the npy header parser). Errors are expected; a panic
//! or crash is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::write_scratch("npy_reader", "npy", data);
    common::open_and_read(path);
});
