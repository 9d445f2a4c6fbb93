//! Plain f64 CPU versions of every GPU kernel: the oracle for tests.
//!
//! Written to be read next to the paper's pseudocode, not to be fast. Inputs are the same f32
//! data the GPU sees; results are f64 so a test measures only the GPU's rounding.

pub mod dbksvd;
pub mod gemm;
pub mod omp;
pub mod power;
pub mod reduce;
pub mod split;

pub use gemm::{gemm, gemm_abs};
