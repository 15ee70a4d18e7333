//! The framing of serde topics and queues: a `u32` length prefix, then postcard
//! (`shmbus_core::wire::frame`, the slot encoder and decoder of `SerdePublisher`,
//! `SerdeSubscriber`, `SerdeQueue`).
//!
//! Input: one byte choosing what to do, then either a slot to decode (as one of a few message
//! types) or a value to encode (built with `Arbitrary`) and a slot size.
//!
//! Checks: nothing panics; a frame that is accepted lies inside the slot, after the prefix,
//! and is as long as the prefix says; a decoded value re-encodes into a slot of the same size,
//! no longer than it was, and re-encoding is then a fixed point; an encoded value frames a
//! message inside the slot that decodes to the same value; a value refused as too large says
//! how many bytes it needs, more than the slot holds, and fits a slot of that size exactly.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shmbus::fuzzing::{decode, encode};
use shmbus_core::wire::frame::{self, LEN_PREFIX};
use shmbus_fuzz::{serde_op, Mode, Status};

/// Decodes `slot` as `T`; on success checks the re-encoding properties.
fn decoded<T: Serialize + DeserializeOwned>(slot: &[u8]) {
    let framed = frame::message(slot);
    let value = match decode::<T>(slot) {
        Ok(v) => v,
        Err(frame_refused) => {
            assert_eq!(frame_refused, framed.is_err());
            return;
        }
    };
    let msg = framed.expect("decoded a slot whose frame is refused");
    let mut again = vec![0u8; slot.len()];
    let n = encode(&value, &mut again).expect("a decoded value does not re-encode in its slot");
    assert!(n <= msg.len(), "re-encoding grew from {} to {n}", msg.len());
    let value2: T = decode(&again).expect("a re-encoded value does not decode");
    let mut third = vec![0u8; slot.len()];
    let n2 = encode(&value2, &mut third).expect("re-encoding failed");
    assert_eq!(
        &again[..LEN_PREFIX + n],
        &third[..LEN_PREFIX + n2],
        "not a fixed point"
    );
}

/// Encodes `value` into a slot of `slot_len` bytes and checks the result.
fn encoded<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    value: &T,
    slot_len: usize,
) {
    let mut slot = vec![0xa5u8; slot_len];
    match encode(value, &mut slot) {
        Ok(n) => {
            let msg = frame::message(&slot).expect("an encoded slot does not frame");
            assert_eq!(msg.len(), n);
            assert!(LEN_PREFIX + n <= slot_len);
            let back: T = decode(&slot).expect("an encoded value does not decode");
            // Floats may be NaN: compare encodings, not values.
            let mut again = vec![0u8; slot_len];
            let n2 = encode(&back, &mut again).unwrap();
            assert_eq!(&slot[..LEN_PREFIX + n], &again[..LEN_PREFIX + n2]);
        }
        Err((Some(size), capacity)) => {
            assert_eq!(capacity, slot_len.saturating_sub(LEN_PREFIX));
            assert!(
                size > capacity,
                "refused {size} bytes for a slot of {capacity}"
            );
            let mut exact = vec![0u8; size + LEN_PREFIX];
            assert_eq!(
                encode(value, &mut exact),
                Ok(size),
                "does not fit its own size"
            );
        }
        Err((None, _)) => assert!(
            slot_len < LEN_PREFIX,
            "encoding failed in a slot of {slot_len}"
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&op, rest)) = data.split_first() else {
        return;
    };
    match op % 8 {
        serde_op::DECODE_STATUS => decoded::<Status>(rest),
        serde_op::DECODE_STRING => decoded::<String>(rest),
        serde_op::DECODE_VEC => decoded::<Vec<u64>>(rest),
        serde_op::DECODE_TUPLE => decoded::<(u8, Option<i32>, Mode)>(rest),
        serde_op::FRAME => {
            let f = frame::message(rest);
            if let Ok(m) = f {
                let len = u32::from_le_bytes(rest[..LEN_PREFIX].try_into().unwrap()) as usize;
                assert_eq!(m.len(), len);
                assert_eq!(m, &rest[LEN_PREFIX..LEN_PREFIX + len]);
            } else {
                let too_short = rest.len() < LEN_PREFIX;
                assert!(
                    too_short
                        || u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize
                            > rest.len() - LEN_PREFIX
                );
            }
        }
        _ => {
            let mut u = Unstructured::new(rest);
            let Ok(slot_len) = u.int_in_range(0..=4096usize) else {
                return;
            };
            match op % 8 {
                serde_op::ENCODE_STATUS => {
                    if let Ok(v) = Status::arbitrary(&mut u) {
                        encoded(&v, slot_len);
                    }
                }
                serde_op::ENCODE_STRING => {
                    if let Ok(v) = String::arbitrary(&mut u) {
                        encoded(&v, slot_len);
                    }
                }
                _ => {
                    if let Ok(v) = <Vec<(Mode, Option<u64>)>>::arbitrary(&mut u) {
                        encoded(&v, slot_len);
                    }
                }
            }
        }
    }
});
