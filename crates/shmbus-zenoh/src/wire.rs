//! What a bridge puts on Zenoh: a message's bytes as the payload, and a small header (the
//! Zenoh attachment) that carries the topic's type identity and QoS, the sending bridge and
//! the message's number.
//!
//! | bytes | field |
//! |---:|---|
//! | 4 | magic `SBZ` and the format version (1) |
//! | 16 | the sending bridge's id (its Zenoh session id) |
//! | 1 | kind: 0 plain-old-data, 1 serde, 2 array |
//! | 1 | overflow: 0 overwrite, 1 back-pressure |
//! | 1 | codec of the type ([`Codec`]) |
//! | 1 | flags: bit 0 publish times recorded |
//! | 8 × 3 | type size, alignment, fingerprint |
//! | 4 × 4 | ring capacity, slot size, most publishers, most subscribers |
//! | 8 | the message's number on the sending side |
//! | 2 + n | type name length, UTF-8 name (at most [`TypeInfo::MAX_NAME`] bytes) |
//! | arrays: 4, 1, 8 × ndim, 4 | dtype code, ndim (at most 8), shape, metadata length |
//!
//! All integers are little-endian. The payload is the slot's message (plain-old-data: the type's
//! `size` bytes; serde: the `[u32 length][postcard]` frame), or for arrays the metadata bytes then
//! the array's bytes. Everything a peer sends is untrusted: [`Header::decode`] and
//! [`Message::check`] refuse anything inconsistent with a typed error.

use shmbus_core::dtype::Dtype;
use shmbus_core::layout::{Codec, TypeInfo};
use shmbus_core::pool::MAX_BLOCK_NDIM;
use shmbus_core::ring::Overflow;

const MAGIC: [u8; 4] = *b"SBZ\x01";

/// What kind of topic a message comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    /// Plain-old-data messages in the slot.
    Pod,
    /// Serde-encoded messages in the slot.
    Serde,
    /// Arrays in pool blocks, described in the slot.
    Array,
}

/// The QoS of the topic on the sending side, for the receiving side to create its topic alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qos {
    /// What a full ring does.
    pub overflow: Overflow,
    /// Ring entries.
    pub capacity: u32,
    /// Bytes per slot.
    pub slot_size: u32,
    /// Most publishers.
    pub max_publishers: u32,
    /// Most subscribers.
    pub max_subscribers: u32,
    /// Whether publish times are recorded.
    pub timestamps: bool,
}

/// An array's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrayInfo {
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Bytes of metadata at the start of the payload.
    pub meta_len: usize,
}

/// The attachment of a bridged message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The bridge that sent it.
    pub bridge: [u8; 16],
    /// The kind of topic.
    pub kind: TopicKind,
    /// The topic's type identity.
    pub type_info: TypeInfo,
    /// The topic's QoS.
    pub qos: Qos,
    /// The message's number on the sending side.
    pub seq: u64,
    /// For arrays.
    pub array: Option<ArrayInfo>,
}

/// Why a received message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not a shmbus bridge message (no attachment, or another magic or version).
    #[error("not a shmbus bridge message ({0})")]
    Foreign(&'static str),
    /// The header ended early.
    #[error("the header ends after {0} bytes")]
    Truncated(usize),
    /// A field holds a value no bridge sends.
    #[error("bad {field}: {value}")]
    Bad {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The payload does not match what the header says.
    #[error("the payload has {got} bytes, the header says {expected}")]
    PayloadSize {
        /// What the header implies.
        expected: u64,
        /// What came.
        got: u64,
    },
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(WireError::Truncated(self.bytes.len()))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

impl Header {
    /// The attachment's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(96 + self.type_info.name.len());
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&self.bridge);
        b.push(match self.kind {
            TopicKind::Pod => 0,
            TopicKind::Serde => 1,
            TopicKind::Array => 2,
        });
        b.push(u8::from(self.qos.overflow == Overflow::BackPressure));
        b.push(self.type_info.codec as u8);
        b.push(u8::from(self.qos.timestamps));
        for v in [
            self.type_info.size,
            self.type_info.align,
            self.type_info.fingerprint,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in [
            self.qos.capacity,
            self.qos.slot_size,
            self.qos.max_publishers,
            self.qos.max_subscribers,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.seq.to_le_bytes());
        let name = self.type_info.name.as_bytes();
        // Type names are at most TypeInfo::MAX_NAME (96) bytes: they fit in a u16.
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(name);
        if let Some(a) = &self.array {
            b.extend_from_slice(&a.dtype.code().to_le_bytes());
            b.push(a.shape.len() as u8);
            for &d in &a.shape {
                b.extend_from_slice(&(d as u64).to_le_bytes());
            }
            b.extend_from_slice(&(a.meta_len as u32).to_le_bytes());
        }
        b
    }

    /// Reads an attachment, checking every field.
    pub fn decode(bytes: &[u8]) -> Result<Header, WireError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4).map_err(|_| WireError::Foreign("too short"))? != MAGIC {
            return Err(WireError::Foreign("another magic or version"));
        }
        let bridge: [u8; 16] = r.take(16)?.try_into().expect("16 bytes");
        let kind = match r.u8()? {
            0 => TopicKind::Pod,
            1 => TopicKind::Serde,
            2 => TopicKind::Array,
            v => {
                return Err(WireError::Bad {
                    field: "kind",
                    value: v.into(),
                })
            }
        };
        let overflow = match r.u8()? {
            0 => Overflow::Overwrite,
            1 => Overflow::BackPressure,
            v => {
                return Err(WireError::Bad {
                    field: "overflow",
                    value: v.into(),
                })
            }
        };
        let codec_raw = r.u8()?;
        let codec = Codec::from_raw(codec_raw.into()).ok_or(WireError::Bad {
            field: "codec",
            value: codec_raw.into(),
        })?;
        let flags = r.u8()?;
        let (size, align, fingerprint) = (r.u64()?, r.u64()?, r.u64()?);
        let (capacity, slot_size, max_publishers, max_subscribers) =
            (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
        let seq = r.u64()?;
        let name_len = usize::from(r.u16()?);
        if name_len > TypeInfo::MAX_NAME {
            return Err(WireError::Bad {
                field: "type name length",
                value: name_len as u64,
            });
        }
        let name = std::str::from_utf8(r.take(name_len)?)
            .map_err(|_| WireError::Bad {
                field: "type name (not UTF-8)",
                value: name_len as u64,
            })?
            .to_owned();
        let array = if kind == TopicKind::Array {
            let code = r.u32()?;
            let dtype = Dtype::from_code(code).ok_or(WireError::Bad {
                field: "dtype",
                value: code.into(),
            })?;
            let ndim = usize::from(r.u8()?);
            if ndim > MAX_BLOCK_NDIM {
                return Err(WireError::Bad {
                    field: "ndim",
                    value: ndim as u64,
                });
            }
            let mut shape = Vec::with_capacity(ndim);
            for _ in 0..ndim {
                let d = r.u64()?;
                shape.push(usize::try_from(d).map_err(|_| WireError::Bad {
                    field: "dimension",
                    value: d,
                })?);
            }
            let meta_len = r.u32()? as usize;
            Some(ArrayInfo {
                dtype,
                shape,
                meta_len,
            })
        } else {
            None
        };
        if r.at != bytes.len() {
            return Err(WireError::Bad {
                field: "header length",
                value: bytes.len() as u64,
            });
        }
        Ok(Header {
            bridge,
            kind,
            type_info: TypeInfo {
                name,
                size,
                align,
                codec,
                fingerprint,
            },
            qos: Qos {
                overflow,
                capacity,
                slot_size,
                max_publishers,
                max_subscribers,
                timestamps: flags & 1 != 0,
            },
            seq,
            array,
        })
    }

    /// Checks that `payload` is what the header describes; for arrays returns the split into
    /// metadata and array bytes.
    pub fn check<'p>(&self, payload: &'p [u8]) -> Result<(&'p [u8], &'p [u8]), WireError> {
        let got = payload.len() as u64;
        match (&self.kind, &self.array) {
            (TopicKind::Pod, None) => {
                if got != self.type_info.size || got > u64::from(self.qos.slot_size) {
                    return Err(WireError::PayloadSize {
                        expected: self.type_info.size,
                        got,
                    });
                }
                Ok((&[], payload))
            }
            (TopicKind::Serde, None) => {
                // A `[u32 length][postcard]` frame that fits the slot.
                let Some(len) = payload.get(..4) else {
                    return Err(WireError::PayloadSize { expected: 4, got });
                };
                let len = u64::from(u32::from_le_bytes(len.try_into().expect("4 bytes")));
                let expected = len + 4;
                if got != expected || got > u64::from(self.qos.slot_size) {
                    return Err(WireError::PayloadSize { expected, got });
                }
                Ok((&[], payload))
            }
            (TopicKind::Array, Some(a)) => {
                let elements = a
                    .shape
                    .iter()
                    .try_fold(1u64, |n, &d| n.checked_mul(d as u64));
                let data = elements.and_then(|n| n.checked_mul(a.dtype.itemsize() as u64));
                let expected = data.and_then(|d| d.checked_add(a.meta_len as u64));
                match expected {
                    Some(e) if e == got => Ok(payload.split_at(a.meta_len)),
                    _ => Err(WireError::PayloadSize {
                        expected: expected.unwrap_or(u64::MAX),
                        got,
                    }),
                }
            }
            _ => Err(WireError::Bad {
                field: "kind and array description",
                value: 0,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: TopicKind) -> Header {
        Header {
            bridge: [7; 16],
            kind,
            type_info: TypeInfo::new("Pose", 12, 4, Codec::Pod).unwrap(),
            qos: Qos {
                overflow: Overflow::BackPressure,
                capacity: 64,
                slot_size: 64,
                max_publishers: 2,
                max_subscribers: 8,
                timestamps: true,
            },
            seq: 41,
            array: (kind == TopicKind::Array).then(|| ArrayInfo {
                dtype: Dtype::U16,
                shape: vec![2, 3],
                meta_len: 8,
            }),
        }
    }

    #[test]
    fn headers_round_trip() {
        for kind in [TopicKind::Pod, TopicKind::Serde, TopicKind::Array] {
            let h = header(kind);
            assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        }
    }

    #[test]
    fn every_truncation_and_a_trailing_byte_are_refused() {
        for kind in [TopicKind::Pod, TopicKind::Array] {
            let b = header(kind).encode();
            for n in 0..b.len() {
                assert!(Header::decode(&b[..n]).is_err(), "{n} of {} bytes", b.len());
            }
            let mut longer = b.clone();
            longer.push(0);
            assert!(Header::decode(&longer).is_err());
        }
    }

    #[test]
    fn bad_fields_are_refused_by_name() {
        let mut b = header(TopicKind::Pod).encode();
        b[20] = 9; // kind
        assert_eq!(
            Header::decode(&b),
            Err(WireError::Bad {
                field: "kind",
                value: 9
            })
        );
        let mut b = header(TopicKind::Array).encode();
        let ndim_at = b.len() - 4 - 16 - 1;
        b[ndim_at] = 200;
        assert!(Header::decode(&b).is_err());
        assert!(matches!(
            Header::decode(b"XXXXrest"),
            Err(WireError::Foreign(_))
        ));
    }

    #[test]
    fn payloads_must_match_the_header() {
        let pod = header(TopicKind::Pod);
        assert!(pod.check(&[0; 12]).is_ok());
        assert!(pod.check(&[0; 11]).is_err());
        let serde = header(TopicKind::Serde);
        assert!(serde.check(&[3, 0, 0, 0, 1, 2, 3]).is_ok());
        assert!(serde.check(&[200, 0, 0, 0, 1]).is_err());
        assert!(serde.check(&[1, 0]).is_err());
        let array = header(TopicKind::Array);
        let (meta, data) = array.check(&[0; 8 + 12]).unwrap();
        assert_eq!((meta.len(), data.len()), (8, 12));
        assert!(array.check(&[0; 8 + 11]).is_err());
        let mut huge = array.clone();
        huge.array.as_mut().unwrap().shape = vec![usize::MAX, usize::MAX];
        assert!(huge.check(&[0; 20]).is_err());
    }
}

/// The attachment of a bridged event set: magic `SBE\x01`, the sending bridge's id, the mode
/// (0 auto-reset, 1 manual-reset). The payload is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHeader {
    /// The bridge that sent it.
    pub bridge: [u8; 16],
    /// The event's mode where it was set.
    pub mode: shmbus_core::sync::EventMode,
}

const EVENT_MAGIC: [u8; 4] = *b"SBE\x01";

impl EventHeader {
    /// The attachment's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(21);
        b.extend_from_slice(&EVENT_MAGIC);
        b.extend_from_slice(&self.bridge);
        b.push(match self.mode {
            shmbus_core::sync::EventMode::AutoReset => 0,
            shmbus_core::sync::EventMode::ManualReset => 1,
        });
        b
    }

    /// Reads an attachment, checking every field.
    pub fn decode(bytes: &[u8]) -> Result<EventHeader, WireError> {
        if bytes.len() < 4 || bytes[..4] != EVENT_MAGIC {
            return Err(WireError::Foreign("not an event set"));
        }
        if bytes.len() != 21 {
            return Err(WireError::Bad {
                field: "event header length",
                value: bytes.len() as u64,
            });
        }
        let mode = match bytes[20] {
            0 => shmbus_core::sync::EventMode::AutoReset,
            1 => shmbus_core::sync::EventMode::ManualReset,
            v => {
                return Err(WireError::Bad {
                    field: "event mode",
                    value: v.into(),
                })
            }
        };
        Ok(EventHeader {
            bridge: bytes[4..20].try_into().expect("16 bytes"),
            mode,
        })
    }
}

#[cfg(test)]
mod event_tests {
    use super::*;

    #[test]
    fn event_headers_round_trip_and_refuse_bad_bytes() {
        let h = EventHeader {
            bridge: [3; 16],
            mode: shmbus_core::sync::EventMode::ManualReset,
        };
        let b = h.encode();
        assert_eq!(EventHeader::decode(&b).unwrap(), h);
        for n in 0..b.len() {
            assert!(EventHeader::decode(&b[..n]).is_err());
        }
        let mut bad = b.clone();
        bad[20] = 7;
        assert!(EventHeader::decode(&bad).is_err());
    }
}
