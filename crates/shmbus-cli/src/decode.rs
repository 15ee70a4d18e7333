//! Decoding slot bytes written by another process: `Pod` (in-memory `#[repr(C)]` bytes),
//! postcard (serde), array-topic block descriptors, and hex dumps of everything else.
//!
//! What the format says about a slot comes from `shmbus_core`: a serde slot's framing from
//! `shmbus_core::wire::frame`, the block descriptor's layout from [`BlockDescriptor`] itself. This module
//! only decodes the bytes in between.
//!
//! The bytes may be garbage. Every read is bounds-checked and every failure is an error value
//! naming the byte offset; nothing here panics on any input.

use std::fmt::Write as _;
use std::mem::offset_of;

use serde::ser::{SerializeMap, SerializeSeq};
use shmbus_core::dtype::Dtype;
use shmbus_core::pool::{BlockDescriptor, DESCRIPTOR_SIZE, MAX_BLOCK_NDIM};
use shmbus_core::wire::frame::{self, FrameError};

use crate::spec::Ty;

/// A decoded value: JSON-like, with struct fields kept in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// `null` (an empty option).
    Null,
    /// A boolean.
    Bool(bool),
    /// An unsigned integer.
    Uint(u64),
    /// A signed integer.
    Int(i64),
    /// A float; NaN and infinities print as the strings `"NaN"`, `"inf"`, `"-inf"`.
    Float(f64),
    /// A string.
    Str(String),
    /// A sequence or array.
    List(Vec<Value>),
    /// Struct fields, in order.
    Fields(Vec<(String, Value)>),
}

impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_none(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Uint(v) => s.serialize_u64(*v),
            Value::Int(v) => s.serialize_i64(*v),
            Value::Float(v) if v.is_finite() => s.serialize_f64(*v),
            Value::Float(v) if v.is_nan() => s.serialize_str("NaN"),
            Value::Float(v) => s.serialize_str(if *v > 0.0 { "inf" } else { "-inf" }),
            Value::Str(v) => s.serialize_str(v),
            Value::List(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Fields(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// The layout cannot describe in-memory (`Pod`) bytes.
    #[error("`{0}` has no fixed in-memory layout (strings, sequences and options exist only in serde topics)")]
    NotPod(String),
    /// The layout's size differs from the stored type's.
    #[error("the layout is {layout} bytes, the topic's type is {stored} bytes")]
    SizeMismatch {
        /// Bytes the layout describes.
        layout: u64,
        /// Bytes of the stored type.
        stored: u64,
    },
    /// The bytes end too early.
    #[error("at byte {offset}: the message ends while reading {what} ({len} bytes in all)")]
    Truncated {
        /// Where the read started.
        offset: usize,
        /// What was being read.
        what: String,
        /// Bytes available.
        len: usize,
    },
    /// A byte sequence is not a valid value of its type.
    #[error("at byte {offset}: {what}")]
    Invalid {
        /// Where the value starts.
        offset: usize,
        /// What is wrong.
        what: String,
    },
    /// A serde slot's length prefix does not frame a message.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

// ---------------------------------------------------------------------------------------------
// Pod: `#[repr(C)]` in-memory bytes of this machine.
// ---------------------------------------------------------------------------------------------

/// Size and alignment of `ty` as a `#[repr(C)]` type.
pub(crate) fn pod_layout(ty: &Ty) -> Result<(u64, u64), DecodeError> {
    let too_big = || DecodeError::NotPod(format!("{ty} (too large)"));
    Ok(match ty {
        Ty::Bool => (1, 1),
        Ty::Uint(n) | Ty::Int(n) => (u64::from(*n), u64::from(*n)),
        Ty::F32 => (4, 4),
        Ty::F64 => (8, 8),
        Ty::Str | Ty::Seq(_) | Ty::Opt(_) => return Err(DecodeError::NotPod(ty.to_string())),
        Ty::Array(t, n) => {
            let (size, align) = pod_layout(t)?;
            let n = u64::try_from(*n).map_err(|_| too_big())?;
            (size.checked_mul(n).ok_or_else(too_big)?, align)
        }
        Ty::Struct(fields) => {
            let (mut offset, mut max_align) = (0u64, 1u64);
            for (_, t) in fields {
                let (size, align) = pod_layout(t)?;
                offset = offset
                    .checked_next_multiple_of(align)
                    .and_then(|o| o.checked_add(size))
                    .ok_or_else(too_big)?;
                max_align = max_align.max(align);
            }
            (
                offset
                    .checked_next_multiple_of(max_align)
                    .ok_or_else(too_big)?,
                max_align,
            )
        }
    })
}

/// Decodes the `#[repr(C)]` value `ty` from the start of `bytes`. When `stored_size` is given
/// (the topic's type size), the layout must have exactly that size.
pub(crate) fn decode_pod(
    ty: &Ty,
    bytes: &[u8],
    stored_size: Option<u64>,
) -> Result<Value, DecodeError> {
    let (size, _) = pod_layout(ty)?;
    if let Some(stored) = stored_size {
        if stored != size {
            return Err(DecodeError::SizeMismatch {
                layout: size,
                stored,
            });
        }
    }
    if (bytes.len() as u64) < size {
        return Err(DecodeError::Truncated {
            offset: 0,
            what: format!("a {size}-byte {ty}"),
            len: bytes.len(),
        });
    }
    pod_at(ty, bytes, 0)
}

fn fixed<const N: usize>(bytes: &[u8], at: usize, what: &Ty) -> Result<[u8; N], DecodeError> {
    at.checked_add(N)
        .and_then(|end| bytes.get(at..end))
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| DecodeError::Truncated {
            offset: at,
            what: what.to_string(),
            len: bytes.len(),
        })
}

fn pod_at(ty: &Ty, bytes: &[u8], at: usize) -> Result<Value, DecodeError> {
    Ok(match ty {
        Ty::Bool => match fixed::<1>(bytes, at, ty)? {
            [0] => Value::Bool(false),
            [1] => Value::Bool(true),
            [b] => {
                return Err(DecodeError::Invalid {
                    offset: at,
                    what: format!("{b} is not a bool (0 or 1)"),
                })
            }
        },
        Ty::Uint(1) => Value::Uint(u64::from(fixed::<1>(bytes, at, ty)?[0])),
        Ty::Uint(2) => Value::Uint(u64::from(u16::from_ne_bytes(fixed(bytes, at, ty)?))),
        Ty::Uint(4) => Value::Uint(u64::from(u32::from_ne_bytes(fixed(bytes, at, ty)?))),
        Ty::Uint(_) => Value::Uint(u64::from_ne_bytes(fixed(bytes, at, ty)?)),
        Ty::Int(1) => Value::Int(i64::from(i8::from_ne_bytes(fixed(bytes, at, ty)?))),
        Ty::Int(2) => Value::Int(i64::from(i16::from_ne_bytes(fixed(bytes, at, ty)?))),
        Ty::Int(4) => Value::Int(i64::from(i32::from_ne_bytes(fixed(bytes, at, ty)?))),
        Ty::Int(_) => Value::Int(i64::from_ne_bytes(fixed(bytes, at, ty)?)),
        Ty::F32 => Value::Float(f64::from(f32::from_ne_bytes(fixed(bytes, at, ty)?))),
        Ty::F64 => Value::Float(f64::from_ne_bytes(fixed(bytes, at, ty)?)),
        Ty::Str | Ty::Seq(_) | Ty::Opt(_) => return Err(DecodeError::NotPod(ty.to_string())),
        Ty::Array(t, n) => {
            let (size, _) = pod_layout(t)?;
            let size = usize::try_from(size).map_err(|_| DecodeError::NotPod(ty.to_string()))?;
            let mut items = Vec::new();
            for i in 0..*n {
                let off = i
                    .checked_mul(size)
                    .and_then(|o| o.checked_add(at))
                    .ok_or_else(|| DecodeError::NotPod(ty.to_string()))?;
                items.push(pod_at(t, bytes, off)?);
            }
            Value::List(items)
        }
        Ty::Struct(fields) => {
            let mut out = Vec::with_capacity(fields.len());
            let mut offset = 0u64;
            for (name, t) in fields {
                let (size, align) = pod_layout(t)?;
                offset = offset.next_multiple_of(align);
                let off = usize::try_from(offset)
                    .ok()
                    .and_then(|o| o.checked_add(at))
                    .ok_or_else(|| DecodeError::NotPod(ty.to_string()))?;
                out.push((name.clone(), pod_at(t, bytes, off)?));
                offset += size;
            }
            Value::Fields(out)
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Postcard (serde): the wire format of postcard 1.x.
// ---------------------------------------------------------------------------------------------

/// What a postcard decode produced.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decoded {
    /// The value.
    pub(crate) value: Value,
    /// Bytes of the message left after the value (non-zero suggests a wrong layout).
    pub(crate) trailing: usize,
}

/// The postcard message of a serde slot, as [`frame::message`] frames it.
pub(crate) fn postcard_message(slot: &[u8]) -> Result<&[u8], DecodeError> {
    Ok(frame::message(slot)?)
}

/// Decodes `ty` from a postcard message.
pub(crate) fn decode_postcard(ty: &Ty, message: &[u8]) -> Result<Decoded, DecodeError> {
    let mut r = Reader {
        bytes: message,
        pos: 0,
    };
    let value = r.value(ty)?;
    Ok(Decoded {
        value,
        trailing: message.len() - r.pos,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&[u8], DecodeError> {
        let b = self
            .pos
            .checked_add(n)
            .and_then(|end| self.bytes.get(self.pos..end))
            .ok_or_else(|| DecodeError::Truncated {
                offset: self.pos,
                what: what(),
                len: self.bytes.len(),
            })?;
        self.pos += n;
        Ok(b)
    }

    fn byte(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, &|| what.to_owned())?[0])
    }

    /// A LEB128 varint of a `bits`-bit unsigned integer, as postcard reads it: at most
    /// `ceil(bits / 7)` bytes, and the last of a maximal-length one may only carry the bits left.
    fn varint(&mut self, bits: u32, what: &str) -> Result<u64, DecodeError> {
        let start = self.pos;
        let max_bytes = bits.div_ceil(7);
        let last_max = (1u32 << (bits % 7)) - 1;
        let mut out = 0u64;
        for i in 0..max_bytes {
            let b = self.byte(what)?;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if i == max_bytes - 1 && u32::from(b) > last_max {
                    break;
                }
                return Ok(out);
            }
        }
        Err(DecodeError::Invalid {
            offset: start,
            what: format!("bad varint for {what}"),
        })
    }

    fn length(&mut self, what: &str) -> Result<usize, DecodeError> {
        let start = self.pos;
        let n = self.varint(64, what)?;
        // Every element takes at least one byte, so a longer length cannot be right.
        match usize::try_from(n) {
            Ok(n) if n <= self.bytes.len() - self.pos => Ok(n),
            _ => Err(DecodeError::Invalid {
                offset: start,
                what: format!(
                    "{what} of {n} elements, but only {} bytes follow",
                    self.bytes.len() - self.pos
                ),
            }),
        }
    }

    fn value(&mut self, ty: &Ty) -> Result<Value, DecodeError> {
        let start = self.pos;
        let name = ty.to_string();
        Ok(match ty {
            Ty::Bool => match self.byte("a bool")? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(DecodeError::Invalid {
                        offset: start,
                        what: format!("{b} is not a bool (0 or 1)"),
                    })
                }
            },
            Ty::Uint(1) => Value::Uint(u64::from(self.byte("a u8")?)),
            Ty::Uint(n) => Value::Uint(self.varint(u32::from(*n) * 8, &name)?),
            Ty::Int(1) => Value::Int(i64::from(self.byte("an i8")? as i8)),
            Ty::Int(n) => {
                let z = self.varint(u32::from(*n) * 8, &name)?;
                // Zigzag: 0, -1, 1, -2, ... <- 0, 1, 2, 3, ...
                Value::Int((z >> 1) as i64 ^ -((z & 1) as i64))
            }
            Ty::F32 => {
                let b = self.take(4, &|| "an f32".into())?;
                let b: [u8; 4] = b.try_into().map_err(|_| DecodeError::Invalid {
                    offset: start,
                    what: "f32".into(),
                })?;
                Value::Float(f64::from(f32::from_le_bytes(b)))
            }
            Ty::F64 => {
                let b = self.take(8, &|| "an f64".into())?;
                let b: [u8; 8] = b.try_into().map_err(|_| DecodeError::Invalid {
                    offset: start,
                    what: "f64".into(),
                })?;
                Value::Float(f64::from_le_bytes(b))
            }
            Ty::Str => {
                let n = self.length("a string")?;
                let b = self.take(n, &|| format!("a string of {n} bytes"))?;
                let s = std::str::from_utf8(b).map_err(|e| DecodeError::Invalid {
                    offset: start,
                    what: format!("string is not UTF-8: {e}"),
                })?;
                Value::Str(s.to_owned())
            }
            Ty::Opt(t) => match self.byte("an option tag")? {
                0 => Value::Null,
                1 => self.value(t)?,
                b => {
                    return Err(DecodeError::Invalid {
                        offset: start,
                        what: format!("option tag {b} (0 or 1)"),
                    })
                }
            },
            Ty::Seq(t) => {
                let n = self.length("a sequence")?;
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(self.value(t)?);
                }
                Value::List(items)
            }
            Ty::Array(t, n) => {
                let mut items = Vec::new();
                for _ in 0..*n {
                    items.push(self.value(t)?);
                }
                Value::List(items)
            }
            Ty::Struct(fields) => {
                let mut out = Vec::with_capacity(fields.len());
                for (k, t) in fields {
                    out.push((k.clone(), self.value(t)?));
                }
                Value::Fields(out)
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Array topics.
// ---------------------------------------------------------------------------------------------

/// The block descriptor at the start of an array topic's slot, read field by field.
pub(crate) fn read_descriptor(slot: &[u8]) -> Result<BlockDescriptor, DecodeError> {
    let d = slot
        .get(..DESCRIPTOR_SIZE)
        .ok_or_else(|| DecodeError::Truncated {
            offset: 0,
            what: "the block descriptor".into(),
            len: slot.len(),
        })?;
    // Field by field at the offsets of the `#[repr(C)]` struct itself, in this machine's byte
    // order (the publisher wrote the struct in place). Every field ends within `d`: the struct
    // fits in DESCRIPTOR_SIZE (checked below), so the indexing cannot fail.
    const _: () = assert!(size_of::<BlockDescriptor>() <= DESCRIPTOR_SIZE);
    let u32_at = |o: usize| -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&d[o..o + 4]);
        u32::from_ne_bytes(b)
    };
    let u64_at = |o: usize| -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[o..o + 8]);
        u64::from_ne_bytes(b)
    };
    let shape_at = offset_of!(BlockDescriptor, shape);
    Ok(BlockDescriptor {
        magic: u32_at(offset_of!(BlockDescriptor, magic)),
        dtype: u32_at(offset_of!(BlockDescriptor, dtype)),
        pool_id: u64_at(offset_of!(BlockDescriptor, pool_id)),
        segment: u32_at(offset_of!(BlockDescriptor, segment)),
        block: u32_at(offset_of!(BlockDescriptor, block)),
        generation: u64_at(offset_of!(BlockDescriptor, generation)),
        len: u64_at(offset_of!(BlockDescriptor, len)),
        ndim: u32_at(offset_of!(BlockDescriptor, ndim)),
        reserved: u32_at(offset_of!(BlockDescriptor, reserved)),
        shape: std::array::from_fn(|i| u64_at(shape_at + 8 * i)),
    })
}

/// The descriptor as a JSON-like value, with a `problem` field when it does not validate.
pub(crate) fn descriptor_value(d: &BlockDescriptor) -> Value {
    let mut f = Vec::new();
    match d.array() {
        Ok((dtype, shape)) => {
            f.push(("dtype".into(), Value::Str(dtype_name(dtype))));
            f.push((
                "shape".into(),
                Value::List(
                    shape
                        .as_slice()
                        .iter()
                        .map(|&x| Value::Uint(x as u64))
                        .collect(),
                ),
            ));
        }
        Err(problem) => {
            f.push(("dtype".into(), Value::Uint(u64::from(d.dtype))));
            let ndim = (d.ndim as usize).min(MAX_BLOCK_NDIM);
            f.push((
                "shape".into(),
                Value::List(d.shape[..ndim].iter().map(|&x| Value::Uint(x)).collect()),
            ));
            f.push(("problem".into(), Value::Str(problem)));
        }
    }
    f.push(("bytes".into(), Value::Uint(d.len)));
    f.push(("pool_id".into(), Value::Str(format!("{:016x}", d.pool_id))));
    f.push(("segment".into(), Value::Uint(u64::from(d.segment))));
    f.push(("block".into(), Value::Uint(u64::from(d.block))));
    f.push(("generation".into(), Value::Uint(d.generation)));
    Value::Fields(f)
}

/// A dtype as numpy names it (`uint8`, `float32`, ...).
pub(crate) fn dtype_name(d: Dtype) -> String {
    d.numpy_name().to_owned()
}

// ---------------------------------------------------------------------------------------------
// Hex.
// ---------------------------------------------------------------------------------------------

/// `bytes` as lowercase hex, no separators.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A hex dump: offset, 16 bytes in hex, the same bytes as ASCII (`.` for the rest). Runs of
/// identical all-zero lines after the first are folded into one `*` line, like `hexdump -C`.
pub(crate) fn hexdump(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut folded = false;
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let offset = i * 16;
        let zero = chunk.iter().all(|&b| b == 0);
        let prev_zero = i > 0 && bytes[offset - 16..offset].iter().all(|&b| b == 0);
        let last = offset + chunk.len() == bytes.len();
        if zero && prev_zero && chunk.len() == 16 && !last {
            if !folded {
                out.push_str("*\n");
                folded = true;
            }
            continue;
        }
        folded = false;
        let _ = write!(out, "{offset:08x}  ");
        for j in 0..16 {
            match chunk.get(j) {
                Some(b) => {
                    let _ = write!(out, "{b:02x} ");
                }
                None => out.push_str("   "),
            }
            if j == 7 {
                out.push(' ');
            }
        }
        out.push_str(" |");
        for &b in chunk {
            out.push(if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            });
        }
        out.push_str("|\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse;
    use serde::Serialize;

    fn json(v: &Value) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[derive(Serialize)]
    struct Status {
        seq: u64,
        mode: String,
        warnings: Vec<String>,
    }

    #[derive(Serialize)]
    struct Mixed {
        a: i8,
        b: i16,
        c: i32,
        d: i64,
        e: u16,
        f: u32,
        g: u64,
        h: f32,
        i: f64,
        j: bool,
        k: Option<u8>,
        l: Option<String>,
        m: [u16; 3],
        n: Vec<i64>,
        o: Inner,
    }

    #[derive(Serialize)]
    struct Inner {
        x: u8,
        y: Vec<bool>,
    }

    #[test]
    fn postcard_matches_the_real_encoding() {
        let bytes = postcard::to_allocvec(&Status {
            seq: 300,
            mode: "auto".into(),
            warnings: vec!["w1".into(), "é!".into()],
        })
        .unwrap();
        let ty = parse("seq:u64,mode:string,warnings:[string]").unwrap();
        let d = decode_postcard(&ty, &bytes).unwrap();
        assert_eq!(d.trailing, 0);
        assert_eq!(
            json(&d.value),
            r#"{"seq":300,"mode":"auto","warnings":["w1","é!"]}"#
        );

        let v = Mixed {
            a: -128,
            b: -300,
            c: i32::MIN,
            d: i64::MIN,
            e: u16::MAX,
            f: u32::MAX,
            g: u64::MAX,
            h: 1.5,
            i: -0.25,
            j: true,
            k: None,
            l: Some("x".into()),
            m: [1, 200, 65535],
            n: vec![0, -1, 1, i64::MAX],
            o: Inner {
                x: 7,
                y: vec![false, true],
            },
        };
        let bytes = postcard::to_allocvec(&v).unwrap();
        let ty = parse(
            "a:i8,b:i16,c:i32,d:i64,e:u16,f:u32,g:u64,h:f32,i:f64,j:bool,k:u8?,l:string?,\
             m:[u16;3],n:[i64],o:{x:u8,y:[bool]}",
        )
        .unwrap();
        let d = decode_postcard(&ty, &bytes).unwrap();
        assert_eq!(d.trailing, 0);
        assert_eq!(
            json(&d.value),
            format!(
                r#"{{"a":-128,"b":-300,"c":{},"d":{},"e":65535,"f":{},"g":{},"h":1.5,"i":-0.25,"j":true,"k":null,"l":"x","m":[1,200,65535],"n":[0,-1,1,{}],"o":{{"x":7,"y":[false,true]}}}}"#,
                i32::MIN,
                i64::MIN,
                u32::MAX,
                u64::MAX,
                i64::MAX
            )
        );
    }

    #[test]
    fn postcard_builtin_types() {
        let ty = crate::spec::known_type("alloc::vec::Vec<f32>").unwrap();
        let bytes = postcard::to_allocvec(&vec![1.0f32, f32::NAN, f32::NEG_INFINITY]).unwrap();
        let d = decode_postcard(&ty, &bytes).unwrap();
        assert_eq!(json(&d.value), r#"[1.0,"NaN","-inf"]"#);
        let ty = crate::spec::known_type("alloc::string::String").unwrap();
        let bytes = postcard::to_allocvec(&"hello".to_string()).unwrap();
        assert_eq!(
            decode_postcard(&ty, &bytes).unwrap().value,
            Value::Str("hello".into())
        );
    }

    #[test]
    fn postcard_garbage_is_an_error_never_a_panic() {
        let ty = parse("a:u64,b:string,c:[string],d:bool,e:u8?").unwrap();
        // Truncations of a valid message.
        let good = postcard::to_allocvec(&(5u64, "abc", vec!["x", "yz"], true, Some(3u8))).unwrap();
        assert!(decode_postcard(&ty, &good).is_ok());
        for cut in 0..good.len() {
            assert!(decode_postcard(&ty, &good[..cut]).is_err(), "cut {cut}");
        }
        // A huge length, a bad varint, a bad bool, bad UTF-8, a bad option tag.
        let huge = [0x01, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(
            decode_postcard(&parse("a:u8,b:string").unwrap(), &huge),
            Err(DecodeError::Invalid { offset: 1, .. })
        ));
        let long_varint = [0xff; 11];
        assert!(decode_postcard(&parse("u64").unwrap(), &long_varint).is_err());
        // u32's fifth byte may carry 4 bits only (postcard's rule).
        assert!(decode_postcard(&parse("u32").unwrap(), &[0xff, 0xff, 0xff, 0xff, 0x1f]).is_err());
        assert_eq!(
            decode_postcard(&parse("u32").unwrap(), &[0xff, 0xff, 0xff, 0xff, 0x0f])
                .unwrap()
                .value,
            Value::Uint(u64::from(u32::MAX))
        );
        assert!(decode_postcard(&parse("bool").unwrap(), &[2]).is_err());
        assert!(decode_postcard(&parse("string").unwrap(), &[2, 0xff, 0xfe]).is_err());
        assert!(decode_postcard(&parse("u8?").unwrap(), &[9, 1]).is_err());
        // Random bytes against a deep layout: any outcome but a panic.
        let ty = parse("a:[{b:[string],c:i64?,d:[f64;3]}],e:[[u16]]").unwrap();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode_postcard(&ty, &bytes);
        }
    }

    #[test]
    fn postcard_slots_are_framed_as_the_core_frames_them() {
        let mut slot = vec![0u8; 64];
        let value = (300u64, "abc".to_string());
        let used = postcard::to_slice(&value, frame::body_mut(&mut slot))
            .unwrap()
            .len();
        frame::set_len(&mut slot, used).unwrap();
        let msg = postcard_message(&slot).unwrap();
        let d = decode_postcard(&parse("a:u64,b:string").unwrap(), msg).unwrap();
        assert_eq!(json(&d.value), r#"{"a":300,"b":"abc"}"#);
        assert_eq!(d.trailing, 0);
        // A prefix past the end of the slot, and a slot too short for a prefix.
        slot[..frame::LEN_PREFIX].fill(0xff);
        assert!(matches!(
            postcard_message(&slot),
            Err(DecodeError::Frame(FrameError::Overrun { .. }))
        ));
        assert!(matches!(
            postcard_message(&[1, 0]),
            Err(DecodeError::Frame(FrameError::TooShort(2)))
        ));
    }

    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    #[repr(C)]
    struct Pose {
        seq: u64,
        x: f64,
        y: f64,
        theta: f64,
    }

    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    #[repr(C)]
    struct Padded {
        a: u8,
        _pad0: u8,
        b: u16,
        c: u32,
        d: i8,
        _pad1: [u8; 3],
        e: [f32; 2],
        _pad2: [u8; 4],
        f: u64,
    }

    #[test]
    fn pod_matches_repr_c() {
        let p = Pose {
            seq: 42,
            x: 1.5,
            y: -2.0,
            theta: 0.25,
        };
        let ty = parse("seq:u64,x:f64,y:f64,theta:f64").unwrap();
        let v = decode_pod(&ty, bytemuck::bytes_of(&p), Some(32)).unwrap();
        assert_eq!(json(&v), r#"{"seq":42,"x":1.5,"y":-2.0,"theta":0.25}"#);

        // Alignment padding is computed, not spelled out.
        let p = Padded {
            a: 1,
            _pad0: 0xee,
            b: 0x1234,
            c: 7,
            d: -3,
            _pad1: [0xee; 3],
            e: [0.5, 2.0],
            _pad2: [0xee; 4],
            f: u64::MAX,
        };
        let ty = parse("a:u8,b:u16,c:u32,d:i8,e:[f32;2],f:u64").unwrap();
        assert_eq!(
            pod_layout(&ty).unwrap(),
            (size_of::<Padded>() as u64, align_of::<Padded>() as u64)
        );
        let v = decode_pod(
            &ty,
            bytemuck::bytes_of(&p),
            Some(size_of::<Padded>() as u64),
        )
        .unwrap();
        assert_eq!(
            json(&v),
            format!(
                r#"{{"a":1,"b":4660,"c":7,"d":-3,"e":[0.5,2.0],"f":{}}}"#,
                u64::MAX
            )
        );
        // Trailing padding: {u64, u8} is 16 bytes.
        assert_eq!(pod_layout(&parse("a:u64,b:u8").unwrap()).unwrap(), (16, 8));
    }

    #[test]
    fn pod_mismatches_are_errors() {
        let ty = parse("seq:u64,x:f64").unwrap();
        assert_eq!(
            decode_pod(&ty, &[0; 32], Some(32)),
            Err(DecodeError::SizeMismatch {
                layout: 16,
                stored: 32
            })
        );
        assert!(matches!(
            decode_pod(&ty, &[0; 8], None),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            decode_pod(&parse("a:string").unwrap(), &[0; 8], None),
            Err(DecodeError::NotPod(_))
        ));
        assert!(decode_pod(&parse("bool").unwrap(), &[3], None).is_err());
        assert!(pod_layout(&parse(&format!("[u64; {}]", usize::MAX)).unwrap()).is_err());
    }

    #[test]
    fn descriptors() {
        let d = BlockDescriptor {
            magic: shmbus_core::pool::DESCRIPTOR_MAGIC,
            dtype: Dtype::U8.code(),
            pool_id: 0xabc,
            segment: 1,
            block: 2,
            generation: 9,
            len: 2 * 3 * 3,
            ndim: 3,
            reserved: 0,
            shape: [2, 3, 3, 0, 0, 0, 0, 0],
        };
        let mut slot = vec![0u8; 160];
        let fields: [&[u8]; 10] = [
            &d.magic.to_ne_bytes(),
            &d.dtype.to_ne_bytes(),
            &d.pool_id.to_ne_bytes(),
            &d.segment.to_ne_bytes(),
            &d.block.to_ne_bytes(),
            &d.generation.to_ne_bytes(),
            &d.len.to_ne_bytes(),
            &d.ndim.to_ne_bytes(),
            &d.reserved.to_ne_bytes(),
            &[],
        ];
        let mut at = 0;
        for f in fields {
            slot[at..at + f.len()].copy_from_slice(f);
            at += f.len();
        }
        assert_eq!(
            at,
            offset_of!(BlockDescriptor, shape),
            "no padding before shape"
        );
        for (i, s) in d.shape.iter().enumerate() {
            slot[at + 8 * i..at + 8 * i + 8].copy_from_slice(&s.to_ne_bytes());
        }
        assert_eq!(read_descriptor(&slot).unwrap(), d);
        assert_eq!(
            json(&descriptor_value(&d)),
            r#"{"dtype":"uint8","shape":[2,3,3],"bytes":18,"pool_id":"0000000000000abc","segment":1,"block":2,"generation":9}"#
        );
        let garbage = BlockDescriptor { ndim: 99, ..d };
        assert!(json(&descriptor_value(&garbage)).contains("problem"));
        assert!(read_descriptor(&slot[..100]).is_err());
    }

    #[test]
    fn hexdump_format() {
        let mut b: Vec<u8> = b"Hello, shmbus!\x00\x01".to_vec();
        b.extend([0u8; 64]);
        b.push(0xff);
        let dump = hexdump(&b);
        let lines: Vec<&str> = dump.lines().collect();
        assert_eq!(
            lines[0],
            "00000000  48 65 6c 6c 6f 2c 20 73  68 6d 62 75 73 21 00 01  |Hello, shmbus!..|"
        );
        assert_eq!(lines[2], "*");
        assert!(lines.last().unwrap().starts_with("00000050  ff "));
        assert_eq!(hex(&[0, 0xab]), "00ab");
    }
}
