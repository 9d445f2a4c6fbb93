//! Checks that a `#[repr(C)]` Rust struct mirrors a shader's uniform struct byte for byte.
//!
//! Every shader's `Params` is written twice, in WGSL and in Rust; a field added, removed,
//! reordered or resized on one side only would shift the uniforms the kernels read, silently.
//! Each kernel module's tests compare its mirror with the WGSL struct as naga lays it out: every
//! named field at the same offset with the same size, and the same total size (which also covers
//! the unnamed padding, `_pad…` fields on either side).

use naga::proc::Layouter;

/// The test `params_mirror_the_shader` for a kernel module: its `#[repr(C)]` struct `$ty`
/// against the WGSL struct `Params` of the module's `SHADER`, with the named fields listed
/// (padding fields, `_pad…`, need not be):
/// `params_mirror_test!(Params { a, b, c });` inside the module's tests.
macro_rules! params_mirror_test {
    ($ty:ty { $($field:ident),* $(,)? }) => {
        /// The Rust mirror of `Params` matches the shader's, field by field (see
        /// `uniform_layout`).
        #[test]
        fn params_mirror_the_shader() {
            $crate::gpu::uniform_layout::assert_mirrors(
                SHADER,
                "Params",
                std::mem::size_of::<$ty>(),
                &[$((
                    stringify!($field),
                    std::mem::offset_of!($ty, $field),
                    $crate::gpu::uniform_layout::field_size(|p: &$ty| &p.$field),
                )),*],
            );
        }
    };
}
pub(crate) use params_mirror_test;

/// Size of the field that `get` borrows.
pub(crate) fn field_size<T, F>(_get: fn(&T) -> &F) -> usize {
    std::mem::size_of::<F>()
}

/// Panics unless struct `name` of the WGSL `source` has exactly the named fields `fields` at
/// their offsets and sizes, and `size` bytes in all.
pub(crate) fn assert_mirrors(
    source: &str,
    name: &str,
    size: usize,
    fields: &[(&str, usize, usize)],
) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{}", e.emit_to_string(source)));
    let mut layouter = Layouter::default();
    layouter
        .update(module.to_ctx())
        .expect("uniform types have a layout");
    let (members, span) = module
        .types
        .iter()
        .find_map(|(_, ty)| match (&ty.name, &ty.inner) {
            (Some(n), naga::TypeInner::Struct { members, span }) if n == name => {
                Some((members, *span))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no struct `{name}` in the shader"));
    let wgsl: Vec<(String, usize, usize)> = members
        .iter()
        .filter_map(|m| {
            let field = m.name.clone()?;
            (!field.starts_with('_'))
                .then(|| (field, m.offset as usize, layouter[m.ty].size as usize))
        })
        .collect();
    let rust: Vec<(String, usize, usize)> = fields
        .iter()
        .map(|&(field, offset, bytes)| (field.to_string(), offset, bytes))
        .collect();
    assert_eq!(
        rust, wgsl,
        "struct {name}: the Rust mirror (left) and the WGSL struct (right) differ \
         as (field, offset, size)"
    );
    assert_eq!(
        size, span as usize,
        "struct {name}: {size} bytes in Rust, {span} in WGSL"
    );
}
