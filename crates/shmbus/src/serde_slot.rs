//! Serde values in slots: postcard framed by [`shmbus_core::wire::frame`], written and read
//! the same way by serde topics and serde queues.

use serde::de::DeserializeOwned;
use serde::Serialize;
use shmbus_core::wire::frame;

/// Why a value could not be written into a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EncodeFailure {
    /// The encoding needs `size` bytes; the slot holds `capacity` after the length prefix.
    TooLarge { size: usize, capacity: usize },
    /// The value could not be encoded (a serializer error, or no room for the prefix).
    Encode(String),
}

/// Why a slot does not hold a value of the type asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeFailure {
    /// The length prefix does not frame a message inside the slot.
    Frame(frame::FrameError),
    /// The message is not a postcard encoding of the type.
    Decode(String),
}

impl std::fmt::Display for DecodeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeFailure::Frame(e) => e.fmt(f),
            DecodeFailure::Decode(e) => f.write_str(e),
        }
    }
}

/// Encodes `value` straight into `slot` after the length prefix, then writes the prefix;
/// returns the message's length.
pub(crate) fn encode<T: Serialize>(value: &T, slot: &mut [u8]) -> Result<usize, EncodeFailure> {
    let capacity = frame::capacity(slot.len());
    let used = match postcard::to_slice(value, frame::body_mut(slot)) {
        Ok(used) => used.len(),
        Err(postcard::Error::SerializeBufferFull) => {
            return Err(EncodeFailure::TooLarge {
                size: postcard::experimental::serialized_size(value).unwrap_or(usize::MAX),
                capacity,
            })
        }
        Err(e) => return Err(EncodeFailure::Encode(e.to_string())),
    };
    frame::set_len(slot, used).map_err(|e| EncodeFailure::Encode(e.to_string()))?;
    Ok(used)
}

/// Decodes the value framed in `slot`. The message is copied out once and the copy decoded:
/// the framing is checked against the slot, and a process that writes the slot meanwhile
/// (breaking the protocol) cannot change bytes under the decoder.
pub(crate) fn decode<T: DeserializeOwned>(slot: &[u8]) -> Result<T, DecodeFailure> {
    let msg = frame::message(slot).map_err(DecodeFailure::Frame)?.to_vec();
    postcard::from_bytes(&msg).map_err(|e| DecodeFailure::Decode(e.to_string()))
}

/// The slot encoding of serde topics and queues over plain bytes, for the fuzz targets in
/// `fuzz/` (feature `fuzzing`; not an API).
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    use super::*;

    /// Encodes `value` into `slot` as a serde publisher or producer does. `Ok`: the message's
    /// length. `Err((Some(size), capacity))`: it needs `size` bytes (`usize::MAX` if unknown)
    /// and the slot holds `capacity`; `Err((None, _))`: it could not be encoded.
    pub fn encode<T: Serialize>(
        value: &T,
        slot: &mut [u8],
    ) -> Result<usize, (Option<usize>, usize)> {
        super::encode(value, slot).map_err(|f| match f {
            EncodeFailure::TooLarge { size, capacity } => (Some(size), capacity),
            EncodeFailure::Encode(_) => (None, frame::capacity(slot.len())),
        })
    }

    /// Decodes the slot as a serde subscriber or consumer does. `Err(true)`: the framing was
    /// refused; `Err(false)`: the message did not decode.
    pub fn decode<T: DeserializeOwned>(slot: &[u8]) -> Result<T, bool> {
        super::decode(slot).map_err(|f| matches!(f, DecodeFailure::Frame(_)))
    }
}
