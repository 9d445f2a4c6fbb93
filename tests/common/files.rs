//! Writers for activation files, well-formed and not, for the data-source tests.

use std::path::Path;

use half::{bf16, f16};

/// Little-endian bytes of `values` stored as `dtype` (`F32`, `F16`, `BF16` or `F64`).
pub fn encode(values: &[f32], dtype: &str) -> Vec<u8> {
    match dtype {
        "F32" => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        "F16" => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
        "BF16" => values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
        "F64" => values
            .iter()
            .flat_map(|&v| (v as f64).to_le_bytes())
            .collect(),
        other => panic!("no encoder for {other}"),
    }
}

/// What `values` become after a round trip through `dtype`.
pub fn rounded(values: &[f32], dtype: &str) -> Vec<f32> {
    match dtype {
        "F32" | "F64" => values.to_vec(),
        "F16" => values.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
        "BF16" => values.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
        other => panic!("no rounding for {other}"),
    }
}

/// A tensor for [`safetensors_bytes`]: name, dtype as in the header, shape, data bytes.
pub struct Tensor<'a> {
    pub name: &'a str,
    pub dtype: &'a str,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// A safetensors file holding `tensors` in the given order (offsets contiguous), header padded
/// with spaces to a multiple of 8 as the format's writers do.
pub fn safetensors_bytes(tensors: &[Tensor]) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut offset = 0;
    for t in tensors {
        let shape: Vec<String> = t.shape.iter().map(|s| s.to_string()).collect();
        entries.push(format!(
            "\"{}\":{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            t.name,
            t.dtype,
            shape.join(","),
            offset,
            offset + t.data.len()
        ));
        offset += t.data.len();
    }
    let header = format!("{{{}}}", entries.join(","));
    safetensors_raw(
        &header,
        &tensors
            .iter()
            .flat_map(|t| t.data.clone())
            .collect::<Vec<_>>(),
    )
}

/// A safetensors file from a literal header (padded to a multiple of 8) and data.
pub fn safetensors_raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut header = header.as_bytes().to_vec();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend(data);
    bytes
}

/// A one-tensor safetensors file: `activations` [rows, d] of `values` stored as `dtype`.
pub fn activations_safetensors(values: &[f32], [rows, d]: [usize; 2], dtype: &str) -> Vec<u8> {
    assert_eq!(values.len(), rows * d);
    safetensors_bytes(&[Tensor {
        name: "activations",
        dtype,
        shape: vec![rows, d],
        data: encode(values, dtype),
    }])
}

/// A version-1 `.npy` file with a literal header dict (padded so the data is 64-byte aligned).
pub fn npy_raw(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut header = dict.to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    bytes
}

/// A C-order `.npy` file of `values` as [rows, d] with `descr` `<f4`, `<f2` or `<f8`.
pub fn activations_npy(values: &[f32], [rows, d]: [usize; 2], descr: &str) -> Vec<u8> {
    assert_eq!(values.len(), rows * d);
    let dtype = match descr {
        "<f4" => "F32",
        "<f2" => "F16",
        "<f8" => "F64",
        other => panic!("no npy encoder for {other}"),
    };
    npy_raw(
        &format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {d}), }}"),
        &encode(values, dtype),
    )
}

/// Writes `bytes` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("writing a test file");
    path
}
