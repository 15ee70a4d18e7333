//! Element types of shared arrays, named the way numpy names them.
//!
//! A [`Dtype`] is stored in array headers and block descriptors as its [`Dtype::code`], and
//! shown as numpy's array-interface type string (`"<f4"`, `"|u1"`), so a Python process reading
//! the same array agrees on what the bytes are.
#![deny(unsafe_code)]

use std::fmt;

/// The element type of an array (little-endian, as on every machine shmbus runs on).
///
/// # Examples
///
/// ```
/// use shmbus_core::dtype::Dtype;
///
/// assert_eq!(Dtype::F32.itemsize(), 4);
/// assert_eq!(Dtype::F32.typestr(), "<f4");
/// assert_eq!(Dtype::from_typestr("|u1"), Some(Dtype::U8));
/// assert_eq!(Dtype::from_code(Dtype::C64.code()), Some(Dtype::C64));
/// assert_eq!(Dtype::from_code(999), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Dtype {
    /// `bool`, one byte.
    Bool = 1,
    /// `int8`.
    I8 = 2,
    /// `int16`.
    I16 = 3,
    /// `int32`.
    I32 = 4,
    /// `int64`.
    I64 = 5,
    /// `uint8`.
    U8 = 6,
    /// `uint16`.
    U16 = 7,
    /// `uint32`.
    U32 = 8,
    /// `uint64`.
    U64 = 9,
    /// `float16` (IEEE half).
    F16 = 10,
    /// `float32`.
    F32 = 11,
    /// `float64`.
    F64 = 12,
    /// `complex64` (two `float32`).
    C64 = 13,
    /// `complex128` (two `float64`).
    C128 = 14,
}

const ALL: [Dtype; 14] = [
    Dtype::Bool,
    Dtype::I8,
    Dtype::I16,
    Dtype::I32,
    Dtype::I64,
    Dtype::U8,
    Dtype::U16,
    Dtype::U32,
    Dtype::U64,
    Dtype::F16,
    Dtype::F32,
    Dtype::F64,
    Dtype::C64,
    Dtype::C128,
];

impl Dtype {
    /// Every dtype.
    pub const ALL: [Dtype; 14] = ALL;

    /// The stored code.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The dtype stored as `code`, if it is a known one.
    pub fn from_code(code: u32) -> Option<Dtype> {
        ALL.into_iter().find(|d| d.code() == code)
    }

    /// Bytes per element.
    pub fn itemsize(self) -> usize {
        match self {
            Dtype::Bool | Dtype::I8 | Dtype::U8 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::U64 | Dtype::F64 | Dtype::C64 => 8,
            Dtype::C128 => 16,
        }
    }

    /// numpy's array-interface type string (`"<f4"`).
    pub fn typestr(self) -> &'static str {
        match self {
            Dtype::Bool => "|b1",
            Dtype::I8 => "|i1",
            Dtype::I16 => "<i2",
            Dtype::I32 => "<i4",
            Dtype::I64 => "<i8",
            Dtype::U8 => "|u1",
            Dtype::U16 => "<u2",
            Dtype::U32 => "<u4",
            Dtype::U64 => "<u8",
            Dtype::F16 => "<f2",
            Dtype::F32 => "<f4",
            Dtype::F64 => "<f8",
            Dtype::C64 => "<c8",
            Dtype::C128 => "<c16",
        }
    }

    /// The dtype a type string names.
    pub fn from_typestr(s: &str) -> Option<Dtype> {
        ALL.into_iter().find(|d| d.typestr() == s)
    }

    /// numpy's name (`"float32"`).
    pub fn numpy_name(self) -> &'static str {
        match self {
            Dtype::Bool => "bool",
            Dtype::I8 => "int8",
            Dtype::I16 => "int16",
            Dtype::I32 => "int32",
            Dtype::I64 => "int64",
            Dtype::U8 => "uint8",
            Dtype::U16 => "uint16",
            Dtype::U32 => "uint32",
            Dtype::U64 => "uint64",
            Dtype::F16 => "float16",
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
            Dtype::C64 => "complex64",
            Dtype::C128 => "complex128",
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.numpy_name())
    }
}

/// Bytes of a C-ordered array of `shape` with elements of `itemsize` bytes, if that fits in
/// `usize`.
pub fn byte_len(shape: &[usize], itemsize: usize) -> Option<usize> {
    shape
        .iter()
        .try_fold(itemsize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= isize::MAX as usize)
}

/// C-order (row-major) strides in bytes of `shape`.
///
/// ```
/// assert_eq!(shmbus_core::dtype::c_strides(&[2, 3, 4], 4), vec![48, 16, 4]);
/// ```
pub fn c_strides(shape: &[usize], itemsize: usize) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = itemsize;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc = acc.saturating_mul(d);
    }
    strides
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_strings_round_trip() {
        for d in Dtype::ALL {
            assert_eq!(Dtype::from_code(d.code()), Some(d));
            assert_eq!(Dtype::from_typestr(d.typestr()), Some(d));
            let n: usize = d.typestr()[2..].parse().unwrap();
            assert_eq!(n, d.itemsize(), "{d}");
        }
        assert_eq!(Dtype::from_code(0), None);
        assert_eq!(Dtype::from_typestr(">f4"), None);
    }

    #[test]
    fn byte_len_checks_overflow() {
        assert_eq!(byte_len(&[1080, 1920, 3], 1), Some(6_220_800));
        assert_eq!(byte_len(&[], 8), Some(8));
        assert_eq!(byte_len(&[0, 5], 8), Some(0));
        assert_eq!(byte_len(&[usize::MAX, 2], 1), None);
    }
}
