//! What the fuzz targets and the seed maker share: the message types of `serde_frame`, and
//! the layout of each target's input.

use arbitrary::Arbitrary;
use serde::{Deserialize, Serialize};

/// An enum with unit, struct and newtype variants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Arbitrary)]
pub enum Mode {
    Idle,
    Moving { speed: f32, heading: i16 },
    Fault(String),
}

/// A nested struct.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Arbitrary)]
pub struct Inner {
    pub id: u32,
    pub tags: Vec<String>,
    pub pose: Option<[f64; 3]>,
}

/// A message of the kind applications send: integers of every width, text, sequences,
/// options, an enum, nesting, a map-like list and raw bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Arbitrary)]
pub struct Status {
    pub seq: u64,
    pub stamp: i64,
    pub small: u8,
    pub flag: bool,
    pub ch: char,
    pub name: String,
    pub mode: Mode,
    pub items: Vec<Inner>,
    pub pairs: Vec<(u16, i32)>,
    pub blob: Vec<u8>,
    pub wide: u128,
    pub unit: (),
}

/// `serde_frame`'s first byte: what to do with the rest.
pub mod serde_op {
    /// Decode the slot as a [`Status`](super::Status).
    pub const DECODE_STATUS: u8 = 0;
    /// Decode the slot as a `String`.
    pub const DECODE_STRING: u8 = 1;
    /// Decode the slot as a `Vec<u64>`.
    pub const DECODE_VEC: u8 = 2;
    /// Decode the slot as a `(u8, Option<i32>, Mode)`.
    pub const DECODE_TUPLE: u8 = 3;
    /// Frame the slot only.
    pub const FRAME: u8 = 4;
    /// Encode an arbitrary [`Status`](super::Status).
    pub const ENCODE_STATUS: u8 = 5;
    /// Encode an arbitrary `String`.
    pub const ENCODE_STRING: u8 = 6;
    /// Encode an arbitrary `Vec<(Mode, Option<u64>)>`.
    pub const ENCODE_LIST: u8 = 7;
}
