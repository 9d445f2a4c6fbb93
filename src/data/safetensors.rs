//! Finding the activation tensor in a safetensors file.

use safetensors::tensor::{Dtype as StDtype, Metadata, TensorInfo};
use safetensors::SafeTensors;

use super::file::{Dtype, Layout};

/// The tensor a file is read from when the caller names none and the file has it.
const DEFAULT_TENSOR: &str = "activations";

/// Where tensor `wanted` (or the default choice) lies in the safetensors `bytes`, or what is wrong.
///
/// The safetensors crate validates the header: its length against the file, the JSON, and that the
/// tensors' offsets are contiguous, match their shapes and dtypes, and end exactly at the file's end.
pub(super) fn layout(bytes: &[u8], wanted: Option<&str>) -> Result<Layout, String> {
    check_offsets(bytes)?;
    let (header_len, metadata) = SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("not a valid safetensors file: {}", describe(&e)))?;
    let (name, info) = choose(&metadata, wanted)?;
    if info.shape.len() != 2 {
        return Err(format!(
            "tensor `{name}` has shape {:?}; activations must be 2-D [rows, d]",
            info.shape
        ));
    }
    let dtype = match info.dtype {
        StDtype::F32 => Dtype::F32,
        StDtype::F16 => Dtype::F16,
        StDtype::BF16 => Dtype::BF16,
        StDtype::F64 => Dtype::F64,
        other => {
            return Err(format!(
                "tensor `{name}` has dtype {other:?}; supported are F32, F16, BF16 and F64"
            ))
        }
    };
    let (rows, dim) = (info.shape[0], info.shape[1]);
    if dim == 0 {
        return Err(format!(
            "tensor `{name}` has shape [{rows}, 0]: rows are empty"
        ));
    }
    Ok(Layout {
        tensor: Some(name),
        dtype,
        rows,
        dim,
        offset: 8 + header_len + info.data_offsets.0,
    })
}

/// The tensor to read: `wanted`, else `activations`, else the only 2-D floating tensor.
fn choose<'m>(
    metadata: &'m Metadata,
    wanted: Option<&str>,
) -> Result<(String, &'m TensorInfo), String> {
    let tensors = metadata.tensors();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let listing = || {
        if names.is_empty() {
            "the file holds no tensors".to_string()
        } else {
            let list: Vec<String> = names
                .iter()
                .map(|n| format!("`{n}` {:?} {:?}", tensors[*n].dtype, tensors[*n].shape))
                .collect();
            format!("the file holds {}", list.join(", "))
        }
    };
    if let Some(name) = wanted {
        return match tensors.get(name) {
            Some(info) => Ok((name.to_string(), info)),
            None => Err(format!("no tensor `{name}`; {}", listing())),
        };
    }
    if let Some(info) = tensors.get(DEFAULT_TENSOR) {
        return Ok((DEFAULT_TENSOR.to_string(), info));
    }
    let candidates: Vec<&&String> = names
        .iter()
        .filter(|n| {
            let info = tensors[**n];
            info.shape.len() == 2
                && matches!(
                    info.dtype,
                    StDtype::F32 | StDtype::F16 | StDtype::BF16 | StDtype::F64
                )
        })
        .collect();
    match candidates.as_slice() {
        [only] => Ok(((**only).clone(), tensors[**only])),
        [] => Err(format!(
            "no tensor `{DEFAULT_TENSOR}` and no 2-D floating tensor; {}",
            listing()
        )),
        _ => Err(format!(
            "no tensor `{DEFAULT_TENSOR}` and several 2-D floating tensors, name one; {}",
            listing()
        )),
    }
}

/// Refuses tensor data offsets near 2⁶⁴ before the safetensors crate sees them: its
/// `read_metadata` adds the last offset to the header length unchecked, which overflows (a
/// panic where overflow checks are on; found by fuzzing). Anything else wrong with the header
/// is left to the crate, which words it better.
pub(crate) fn check_offsets(bytes: &[u8]) -> Result<(), String> {
    let Some(length) = bytes.get(..8) else {
        return Ok(());
    };
    let header_len = u64::from_le_bytes(length.try_into().expect("8 bytes"));
    let data_start = 8u64.saturating_add(header_len);
    if data_start > bytes.len() as u64 {
        return Ok(());
    }
    let data_len = bytes.len() as u64 - data_start;
    let Ok(serde_json::Value::Object(tensors)) =
        serde_json::from_slice::<serde_json::Value>(&bytes[8..data_start as usize])
    else {
        return Ok(());
    };
    // Only offsets whose sum with the header would overflow: the crate reports the others.
    let most = (usize::MAX as u64).saturating_sub(data_start);
    for (name, info) in &tensors {
        let offsets = info.get("data_offsets").and_then(|o| o.as_array());
        for end in offsets.into_iter().flatten().filter_map(|o| o.as_u64()) {
            if end > most {
                return Err(format!(
                    "truncated: data of tensor `{name}` runs to byte {end} but the file holds \
                     {data_len} bytes of data"
                ));
            }
        }
    }
    Ok(())
}

/// The safetensors crate's error in words a user can act on.
fn describe(error: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match error {
        E::HeaderTooSmall => "truncated: too short for the 8-byte header length".into(),
        E::HeaderTooLarge => "header length is implausibly large (corrupt file?)".into(),
        E::InvalidHeaderLength => "header length runs past the end of the file".into(),
        E::InvalidHeader(_) => "header is not UTF-8".into(),
        E::InvalidHeaderDeserialization(e) => format!("header is not valid JSON metadata ({e})"),
        E::InvalidOffset(t) => format!("data offsets of tensor `{t}` are not contiguous"),
        E::TensorInvalidInfo => "a tensor's data size does not match its shape and dtype".into(),
        E::MetadataIncompleteBuffer => {
            "tensor data does not end at the end of the file (truncated or trailing bytes)".into()
        }
        E::ValidationOverflow => "a tensor's shape overflows".into(),
        other => other.to_string(),
    }
}
