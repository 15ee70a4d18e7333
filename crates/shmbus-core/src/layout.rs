//! What a segment stores, described so that another process can check it before use.
//!
//! Rust has no stable type identity across builds, so a type is described by its name, size,
//! alignment, the codec its bytes are in, and a 64-bit fingerprint of all of these. Types with a
//! stable identity (shmbus's `Message` trait) have their own name and a fingerprint of their
//! layout, which is mixed into that fingerprint ([`TypeInfo::with_layout`]). Two processes agree
//! on a type when every field agrees; a mismatch is reported naming both sides.
#![deny(unsafe_code)]

use std::fmt;

/// How the bytes of a stored message are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Codec {
    /// Raw bytes with no type attached.
    Bytes = 0,
    /// A plain-old-data value, stored as its in-memory bytes (`bytemuck::Pod`).
    Pod = 1,
    /// A value encoded with serde in the postcard format, prefixed by its length.
    Postcard = 2,
}

impl Codec {
    /// The codec stored as `raw`, if it is a known one.
    pub fn from_raw(raw: u32) -> Option<Codec> {
        match raw {
            0 => Some(Codec::Bytes),
            1 => Some(Codec::Pod),
            2 => Some(Codec::Postcard),
            _ => None,
        }
    }
}

/// A description of a stored type.
///
/// # Examples
///
/// ```
/// use shmbus_core::layout::{Codec, TypeInfo};
///
/// let a = TypeInfo::new("Pose", 24, 8, Codec::Pod).unwrap();
/// let b = TypeInfo::new("Pose", 32, 8, Codec::Pod).unwrap();
/// assert_ne!(a.fingerprint, b.fingerprint);
/// assert!(TypeInfo::new(&"x".repeat(500), 1, 1, Codec::Pod).is_none());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TypeInfo {
    /// The type's name as the application chose it (by default Rust's `type_name`).
    pub name: String,
    /// Size in bytes; 0 for encoded (variable-length) types.
    pub size: u64,
    /// Alignment in bytes.
    pub align: u64,
    /// The codec the stored bytes are in.
    pub codec: Codec,
    /// FNV-1a hash of all the fields above, and of the layout fingerprint for types that have
    /// one ([`TypeInfo::with_layout`]).
    pub fingerprint: u64,
}

impl TypeInfo {
    /// The longest type name a header holds, in bytes.
    pub const MAX_NAME: usize = 96;

    /// Describes a type; `None` when the name is longer than [`TypeInfo::MAX_NAME`].
    pub fn new(name: &str, size: u64, align: u64, codec: Codec) -> Option<TypeInfo> {
        if name.len() > Self::MAX_NAME {
            return None;
        }
        let fingerprint = fingerprint(name, size, align, codec);
        Some(TypeInfo {
            name: name.to_owned(),
            size,
            align,
            codec,
            fingerprint,
        })
    }

    /// Describes a type whose layout fingerprint `layout` (from the `shmbus::Message` trait) is
    /// mixed into [`fingerprint`](TypeInfo::fingerprint), so that two types of the same name,
    /// size and alignment but other layouts differ; `None` when the name is too long.
    ///
    /// The header stores only the mixed fingerprint: the header format is the one of
    /// [`TypeInfo::new`].
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus_core::layout::{Codec, TypeInfo};
    ///
    /// let plain = TypeInfo::new("robot.Pose", 24, 8, Codec::Pod).unwrap();
    /// let a = TypeInfo::with_layout("robot.Pose", 24, 8, Codec::Pod, 1).unwrap();
    /// let b = TypeInfo::with_layout("robot.Pose", 24, 8, Codec::Pod, 2).unwrap();
    /// assert_ne!(a.fingerprint, b.fingerprint);
    /// assert_ne!(a.fingerprint, plain.fingerprint);
    /// assert!(!a.matches(&b) && a.matches(&a.clone()));
    /// ```
    pub fn with_layout(
        name: &str,
        size: u64,
        align: u64,
        codec: Codec,
        layout: u64,
    ) -> Option<TypeInfo> {
        let mut info = TypeInfo::new(name, size, align, codec)?;
        let mixed = fnv1a(info.fingerprint, b"layout");
        info.fingerprint = fnv1a(mixed, &layout.to_le_bytes());
        Some(info)
    }

    /// A description as stored in a header: the fields and the fingerprint as recorded (which
    /// [`TypeInfo::new`] recomputes only for types without a layout fingerprint); `None` when
    /// the name is too long.
    pub fn with_fingerprint(
        name: &str,
        size: u64,
        align: u64,
        codec: Codec,
        fingerprint: u64,
    ) -> Option<TypeInfo> {
        let mut info = TypeInfo::new(name, size, align, codec)?;
        info.fingerprint = fingerprint;
        Some(info)
    }

    /// Describes `T` as a plain-old-data type, named by `std::any::type_name` (shortened to fit).
    pub fn pod<T>() -> TypeInfo {
        let name = short_type_name::<T>();
        TypeInfo::new(
            name,
            size_of::<T>() as u64,
            align_of::<T>() as u64,
            Codec::Pod,
        )
        .expect("short_type_name fits")
    }

    /// Whether `self` and `other` describe the same type (every field equal).
    pub fn matches(&self, other: &TypeInfo) -> bool {
        self == other
    }
}

impl fmt::Debug for TypeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for TypeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({:?}, size {}, align {}, fingerprint {:016x})",
            self.name, self.codec, self.size, self.align, self.fingerprint
        )
    }
}

/// `std::any::type_name::<T>()`, keeping its last [`TypeInfo::MAX_NAME`] bytes on a char
/// boundary when it is longer.
pub fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    let mut start = full.len().saturating_sub(TypeInfo::MAX_NAME);
    while !full.is_char_boundary(start) {
        start += 1;
    }
    &full[start..]
}

/// The FNV-1a 64 offset basis: [`fnv1a`] of no bytes.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Continues the FNV-1a 64 hash `h` over `bytes` (start from [`FNV_OFFSET`]); usable in
/// constants.
///
/// ```
/// use shmbus_core::layout::{fnv1a, FNV_OFFSET};
///
/// const H: u64 = fnv1a(fnv1a(FNV_OFFSET, b"ab"), b"c");
/// assert_eq!(H, fnv1a(FNV_OFFSET, b"abc"));
/// ```
pub const fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(PRIME);
        i += 1;
    }
    h
}

fn fingerprint(name: &str, size: u64, align: u64, codec: Codec) -> u64 {
    let mut h = fnv1a(FNV_OFFSET, name.as_bytes());
    h = fnv1a(h, &[0xff]);
    h = fnv1a(h, &size.to_le_bytes());
    h = fnv1a(h, &align.to_le_bytes());
    fnv1a(h, &(codec as u32).to_le_bytes())
}
