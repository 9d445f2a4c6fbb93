//! Reading the header of a NumPy `.npy` file (format versions 1, 2 and 3).
//!
//! The header is a Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (4096, 384), }`, padded with spaces and ended
//! by a newline. Only what activations need is accepted: little-endian floats, C order, rank 2.

use super::file::{Dtype, Layout, NPY_MAGIC};

/// Where the array lies in the `.npy` `bytes`, or what is wrong with the file.
pub(super) fn layout(bytes: &[u8]) -> Result<Layout, String> {
    debug_assert!(bytes.starts_with(NPY_MAGIC));
    let truncated = || format!("truncated: {} bytes end inside the header", bytes.len());
    let version = *bytes.get(6).ok_or_else(truncated)?;
    let (len_bytes, start) = match version {
        1 => (2, 10),
        2 | 3 => (4, 12),
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let header_len = bytes
        .get(8..8 + len_bytes)
        .ok_or_else(truncated)?
        .iter()
        .rev()
        .fold(0usize, |acc, &b| acc << 8 | b as usize);
    let header = bytes.get(start..start + header_len).ok_or_else(|| {
        format!(
            "header length {header_len} runs past the end of the file ({} bytes)",
            bytes.len()
        )
    })?;
    // Version 1 and 2 headers are latin-1, version 3 UTF-8; the keys and values used are ASCII.
    let header = std::str::from_utf8(header).map_err(|_| "header is not text".to_string())?;
    let header = parse_header(header).map_err(|e| format!("malformed header: {e}"))?;
    let dtype = match header.descr.as_str() {
        "<f4" => Dtype::F32,
        "<f2" => Dtype::F16,
        "<f8" => Dtype::F64,
        d if d.starts_with('>') => {
            return Err(format!(
                "dtype '{d}' is big-endian; save little-endian ('<f4' or '<f2')"
            ))
        }
        d => {
            return Err(format!(
                "dtype '{d}' is not supported; save as '<f4', '<f2' or '<f8'"
            ))
        }
    };
    if header.fortran_order {
        return Err(
            "array is in Fortran (column-major) order; save a C-order array (np.ascontiguousarray)"
                .into(),
        );
    }
    let [rows, dim] = header.shape[..] else {
        return Err(format!(
            "array has shape {:?}; activations must be 2-D [rows, d]",
            header.shape
        ));
    };
    if dim == 0 {
        return Err(format!("array has shape [{rows}, 0]: rows are empty"));
    }
    let offset = start + header_len;
    let data = rows
        .checked_mul(dim)
        .and_then(|n| n.checked_mul(dtype.size()))
        .ok_or_else(|| format!("shape [{rows}, {dim}] overflows"))?;
    let actual = bytes.len() - offset;
    if actual != data {
        return Err(format!(
            "{} data: [{rows}, {dim}] {} needs {data} bytes after the header, the file has {actual}",
            if actual < data { "truncated" } else { "trailing bytes after the" },
            header.descr
        ));
    }
    Ok(Layout {
        tensor: None,
        dtype,
        rows,
        dim,
        offset,
    })
}

/// The three entries of an `.npy` header.
#[derive(Debug, PartialEq)]
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// A value in the header dict.
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// Parses the header dict; every key must be one of the three and all three must be present.
fn parse_header(text: &str) -> Result<Header, String> {
    let mut p = Parser {
        chars: text.trim_end().chars().collect(),
        at: 0,
    };
    let (mut descr, mut fortran_order, mut shape) = (None, None, None);
    p.expect('{')?;
    while !p.eat('}') {
        let key = p.string()?;
        p.expect(':')?;
        let value = p.value()?;
        match (key.as_str(), value) {
            ("descr", Value::Str(s)) => descr = Some(s),
            ("fortran_order", Value::Bool(b)) => fortran_order = Some(b),
            ("shape", Value::Tuple(t)) => shape = Some(t),
            (k @ ("descr" | "fortran_order" | "shape"), _) => {
                return Err(format!("'{k}' has the wrong type"))
            }
            (k, _) => return Err(format!("unexpected key '{k}'")),
        }
        if !p.eat(',') {
            p.expect('}')?;
            break;
        }
    }
    p.skip_space();
    if p.at != p.chars.len() {
        return Err("text after the closing brace".into());
    }
    Ok(Header {
        descr: descr.ok_or("no 'descr'")?,
        fortran_order: fortran_order.ok_or("no 'fortran_order'")?,
        shape: shape.ok_or("no 'shape'")?,
    })
}

/// A cursor over the header's characters.
struct Parser {
    chars: Vec<char>,
    at: usize,
}

impl Parser {
    fn skip_space(&mut self) {
        while self.chars.get(self.at).is_some_and(|c| c.is_whitespace()) {
            self.at += 1;
        }
    }

    /// Consumes `c` (after spaces) if it is next.
    fn eat(&mut self, c: char) -> bool {
        self.skip_space();
        if self.chars.get(self.at) == Some(&c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{c}' at character {}", self.at))
        }
    }

    /// A quoted string (either quote; escapes do not occur in valid headers).
    fn string(&mut self) -> Result<String, String> {
        self.skip_space();
        let quote = match self.chars.get(self.at) {
            Some(&q @ ('\'' | '"')) => q,
            _ => return Err(format!("expected a string at character {}", self.at)),
        };
        let from = self.at + 1;
        let len = self.chars[from..]
            .iter()
            .position(|&c| c == quote)
            .ok_or("unterminated string")?;
        self.at = from + len + 1;
        Ok(self.chars[from..from + len].iter().collect())
    }

    fn value(&mut self) -> Result<Value, String> {
        self.skip_space();
        match self.chars.get(self.at) {
            Some('\'' | '"') => self.string().map(Value::Str),
            Some('(') => {
                self.at += 1;
                let mut items = Vec::new();
                while !self.eat(')') {
                    items.push(self.integer()?);
                    if !self.eat(',') {
                        self.expect(')')?;
                        break;
                    }
                }
                Ok(Value::Tuple(items))
            }
            _ => {
                let word = self.word();
                match word.as_str() {
                    "True" => Ok(Value::Bool(true)),
                    "False" => Ok(Value::Bool(false)),
                    w => Err(format!("unexpected value '{w}'")),
                }
            }
        }
    }

    fn word(&mut self) -> String {
        let from = self.at;
        while self.chars.get(self.at).is_some_and(|c| c.is_alphanumeric()) {
            self.at += 1;
        }
        self.chars[from..self.at].iter().collect()
    }

    /// A non-negative integer; Python 2 wrote longs with an `L` suffix.
    fn integer(&mut self) -> Result<usize, String> {
        self.skip_space();
        let word = self.word();
        word.strip_suffix('L')
            .unwrap_or(&word)
            .parse()
            .map_err(|_| format!("'{word}' is not a dimension"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_numpy_writes_parse() {
        let h =
            parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (4096, 384), }   \n")
                .unwrap();
        assert_eq!(
            h,
            Header {
                descr: "<f4".into(),
                fortran_order: false,
                shape: vec![4096, 384]
            }
        );
        let h =
            parse_header("{\"shape\": (7,), \"fortran_order\": True, \"descr\": \"<f2\"}").unwrap();
        assert_eq!(h.shape, vec![7]);
        assert!(h.fortran_order);
        assert_eq!(
            parse_header("{'descr': '<f8', 'fortran_order': False, 'shape': (), }")
                .unwrap()
                .shape,
            Vec::<usize>::new()
        );
        assert_eq!(
            parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3L, 2L)}")
                .unwrap()
                .shape,
            vec![3, 2]
        );
    }

    #[test]
    fn malformed_headers_are_errors() {
        for bad in [
            "",
            "{",
            "{'descr': '<f4', 'fortran_order': False}",
            "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (1, 2)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, -2)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), 'extra': 1}",
            "{'descr': 4, 'fortran_order': False, 'shape': (1, 2)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2)} x",
            "{'descr: '<f4'}",
        ] {
            assert!(parse_header(bad).is_err(), "{bad:?} parsed");
        }
    }
}
