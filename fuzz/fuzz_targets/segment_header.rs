//! Segment headers: the checks an opener runs on a header copy (`Segment::open`), and what
//! `segment::peek` (the tools' `ls`, `inspect`, `gc`) reports of one.
//!
//! Input: the header's first `size_of::<Header>()` bytes (zero-filled when shorter), then
//! optionally the file's length (8 bytes, little-endian; otherwise the header's own
//! `total_size`), the kind the opener expects (1 byte; otherwise the header's own kind) and
//! whether it names a type (1 byte: odd = the header's own type, even = none).
//!
//! Checks: nothing panics; an accepted header says what the raw bytes say (kind, lifetime,
//! sizes, type, params), its payload lies inside the file after the header page, its length
//! is the file's, its kind and type are what the opener asked for; `peek` accepts every header
//! an opener accepts and reports the same; every error formats.
#![no_main]

use std::mem::offset_of;

use libfuzzer_sys::fuzz_target;
use shmbus_core::fuzzing;
use shmbus_core::layout::TypeInfo;
use shmbus_core::segment::{Expect, Header, Kind, HEADER_SIZE};

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
}

fuzz_target!(|data: &[u8]| {
    let n = data.len().min(size_of::<Header>());
    let mut raw = [0u8; size_of::<Header>()];
    raw[..n].copy_from_slice(&data[..n]);
    let rest = &data[n..];

    let peeked = fuzzing::peek_header(&raw, true);
    if let Err(e) = &peeked {
        let _ = e.to_string();
    }
    if let Ok(info) = &peeked {
        // What peek reports is what the bytes say.
        assert_eq!(info.kind as u32, u32_at(&raw, offset_of!(Header, kind)));
        assert_eq!(
            info.lifetime as u32,
            u32_at(&raw, offset_of!(Header, lifetime))
        );
        assert_eq!(
            info.total_size,
            u64_at(&raw, offset_of!(Header, total_size))
        );
        assert_eq!(
            info.payload_size,
            u64_at(&raw, offset_of!(Header, payload_size))
        );
        assert!(info.in_use);
        let end = info.payload_size.checked_add(HEADER_SIZE as u64).unwrap();
        assert!(end <= info.total_size, "payload past the end of the file");
        let t = &info.type_info;
        assert!(t.name.len() <= TypeInfo::MAX_NAME);
        let name_at = offset_of!(Header, type_name);
        assert_eq!(t.name.as_bytes(), &raw[name_at..name_at + t.name.len()]);
        assert_eq!(
            t.name.len() as u32,
            u32_at(&raw, offset_of!(Header, type_name_len))
        );
        assert_eq!(t.size, u64_at(&raw, offset_of!(Header, type_size)));
        assert_eq!(t.align, u64_at(&raw, offset_of!(Header, type_align)));
        assert_eq!(
            t.fingerprint,
            u64_at(&raw, offset_of!(Header, type_fingerprint))
        );
        assert_eq!(t.codec as u32, u32_at(&raw, offset_of!(Header, type_codec)));
        for i in 0..8 {
            assert_eq!(
                info.params[i],
                u64_at(&raw, offset_of!(Header, params) + 8 * i)
            );
            assert_eq!(
                info.counters[i],
                u64_at(&raw, offset_of!(Header, counters) + 8 * i)
            );
        }
        let _ = format!("{:?} {}", info, info.type_info);
    }

    let file_len = match rest.get(..8) {
        Some(b) => u64::from_le_bytes(b.try_into().unwrap()),
        None => u64_at(&raw, offset_of!(Header, total_size)),
    };
    let Ok(file_len) = usize::try_from(file_len) else {
        return;
    };
    let kind = match rest.get(8) {
        Some(&k) => Kind::from_raw(u32::from(k)),
        None => peeked.as_ref().ok().map(|i| i.kind),
    };
    let Some(kind) = kind else { return };
    let type_info = match (rest.get(9), &peeked) {
        (Some(b), Ok(info)) if b % 2 == 1 => Some(info.type_info.clone()),
        (None, Ok(info)) => Some(info.type_info.clone()),
        _ => None,
    };
    let expect = Expect {
        type_info: type_info.clone(),
        ..Expect::new(kind, TypeInfo::pod::<u8>())
    };
    match fuzzing::open_header(&raw, file_len, &expect) {
        Ok(s) => {
            assert_eq!(s.total_size, file_len as u64);
            assert!(
                HEADER_SIZE + s.payload_size <= file_len,
                "payload past the mapping"
            );
            assert_eq!(s.kind, kind);
            if let Some(t) = &type_info {
                assert!(t.matches(&s.type_info));
            }
            let info = peeked.expect("peek refused a header an opener accepts");
            assert_eq!(info.kind, s.kind);
            assert_eq!(info.lifetime, s.lifetime);
            assert_eq!(info.type_info, s.type_info);
            assert_eq!(info.payload_size, s.payload_size as u64);
            assert_eq!(info.total_size, s.total_size);
            assert_eq!(info.params, s.params);
            assert_eq!(info.mode, s.mode);
            assert_eq!(info.creator_pid, s.creator_pid);
            assert_eq!(info.created_unix_ns, s.created_unix_ns);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
