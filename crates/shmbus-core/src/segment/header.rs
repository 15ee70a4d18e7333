//! The segment header: its layout, and the validated snapshot every user works from.
//!
//! Another process can write any byte of a header at any moment. So a header is read once, as a
//! copy, when a segment is opened; the copy is validated and kept as a [`HeaderSnapshot`], and
//! every size, offset and type the process uses afterwards comes from the snapshot. Only the
//! atomic words (the `state` word and the counters) are referenced in place.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::layout::{Codec, TypeInfo};
use crate::name::Name;
use crate::wire::{Kind, Lifetime, FORMAT_VERSION, HEADER_SIZE, MAGIC, STATE_OFFSET};

use super::{Expect, SegmentError};

/// The layout of the header at offset 0 of every segment (`docs/architecture.md` §2).
///
/// Everything except `state` and `counters` is written once by the creator before the segment
/// gets its name. `state` and `counters` are atomics in shared memory; this plain struct only
/// describes where they are ([`Segment`](super::Segment) hands out atomic references to them).
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// INIT (0), READY (1) or CLOSED (2) (see [`crate::wire::state`]). Written READY with
    /// `Release` by the creator, CLOSED by the last user out while it holds the exclusive `flock`.
    pub state: u32,
    /// [`FORMAT_VERSION`] of the creator.
    pub format_version: u32,
    /// [`Kind`] as `u32`.
    pub kind: u32,
    /// [`Lifetime`] as `u32`.
    pub lifetime: u32,
    /// Offset of the payload: [`HEADER_SIZE`].
    pub header_size: u64,
    /// Length of the file.
    pub total_size: u64,
    /// Length of the payload.
    pub payload_size: u64,
    /// Process id of the creator (for display only).
    pub creator_pid: u32,
    /// Permission bits given at creation.
    pub mode: u32,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_unix_ns: u64,
    /// The stored type's size.
    pub type_size: u64,
    /// The stored type's alignment.
    pub type_align: u64,
    /// The stored type's fingerprint ([`TypeInfo::fingerprint`]).
    pub type_fingerprint: u64,
    /// [`Codec`] as `u32`.
    pub type_codec: u32,
    /// Bytes used in `type_name`.
    pub type_name_len: u32,
    /// The stored type's name, UTF-8, not terminated.
    pub type_name: [u8; TypeInfo::MAX_NAME],
    /// Kind-specific figures that tools may show without knowing the payload layout
    /// (for a topic: capacity, slot size, ...; see [`crate::wire`]). Written once by the creator.
    pub params: [u64; 8],
    /// Kind-specific counters (for a topic: published, ...), updated atomically with `Relaxed`.
    pub counters: [u64; 8],
}

const _: () = assert!(size_of::<Header>() <= HEADER_SIZE);
const _: () = assert!(HEADER_SIZE % 4096 == 0);
const _: () = assert!(std::mem::offset_of!(Header, state) == STATE_OFFSET);
const _: () = assert!(std::mem::offset_of!(Header, counters) % 8 == 0);

/// Byte offset of the header's counters.
pub(crate) const COUNTERS_OFFSET: usize = std::mem::offset_of!(Header, counters);

impl Header {
    /// Copies the header at `base` out of shared memory. Volatile reads: another process may be
    /// writing it, and the copy must be taken as it is, once.
    ///
    /// # Safety
    ///
    /// `base` points to at least [`HEADER_SIZE`] mapped, readable bytes, page-aligned.
    pub(crate) unsafe fn read(base: NonNull<u8>) -> Header {
        // SAFETY: the caller guarantees a mapped, aligned header; every bit pattern is a valid
        // `Header` (integers and byte arrays only). A concurrent writer can make the copy
        // inconsistent, never invalid: validation below catches what matters.
        unsafe { std::ptr::read_volatile(base.as_ptr().cast::<Header>()) }
    }

    /// The stored type, if the header's type fields are well formed.
    pub fn type_info(&self) -> Option<TypeInfo> {
        let len = usize::try_from(self.type_name_len).ok()?;
        let name = std::str::from_utf8(self.type_name.get(..len)?).ok()?;
        let codec = Codec::from_raw(self.type_codec)?;
        // The fingerprint is taken as recorded: a type's layout fingerprint is mixed into it
        // (`TypeInfo::with_layout`) and not stored, so it cannot be recomputed here; openers
        // compare it with their own.
        TypeInfo::with_fingerprint(
            name,
            self.type_size,
            self.type_align,
            codec,
            self.type_fingerprint,
        )
    }

    /// The segment's kind, if known.
    pub fn kind(&self) -> Option<Kind> {
        Kind::from_raw(self.kind)
    }

    /// The segment's lifetime, if known.
    pub fn lifetime(&self) -> Option<Lifetime> {
        Lifetime::from_raw(self.lifetime)
    }

    /// Checks that this is a shmbus header of this format version.
    pub(crate) fn validate_identity(&self, name: &Name) -> Result<(), SegmentError> {
        if self.magic != MAGIC {
            return Err(SegmentError::Corrupt {
                name: name.clone(),
                reason: "bad magic: not a shmbus segment".into(),
            });
        }
        if self.format_version != FORMAT_VERSION {
            return Err(SegmentError::Version {
                name: name.clone(),
                expected: FORMAT_VERSION,
                found: self.format_version,
            });
        }
        Ok(())
    }

    /// What an opener checks on its first copy, before the header is ready: magic, version
    /// and lifetime, which decide what the opener does next (wait, reclaim, refuse).
    pub(crate) fn opening_lifetime(&self, name: &Name) -> Result<Lifetime, SegmentError> {
        self.validate_identity(name)?;
        self.lifetime().ok_or_else(|| SegmentError::Corrupt {
            name: name.clone(),
            reason: format!("unknown lifetime {}", self.lifetime),
        })
    }

    /// Checks this copy against the rules of the format and, when given, the length of the file
    /// it came from, and returns what a user of the segment may rely on.
    pub(crate) fn validate(
        &self,
        name: &Name,
        file_len: Option<usize>,
    ) -> Result<HeaderSnapshot, SegmentError> {
        let corrupt = |reason: String| SegmentError::Corrupt {
            name: name.clone(),
            reason,
        };
        self.validate_identity(name)?;
        let lifetime = self
            .lifetime()
            .ok_or_else(|| corrupt(format!("unknown lifetime {}", self.lifetime)))?;
        let kind = self
            .kind()
            .ok_or_else(|| corrupt(format!("unknown kind {}", self.kind)))?;
        if self.header_size != HEADER_SIZE as u64 {
            return Err(corrupt(format!(
                "header size {} (expected {HEADER_SIZE})",
                self.header_size
            )));
        }
        if let Some(len) = file_len {
            if self.total_size != len as u64 {
                return Err(corrupt(format!(
                    "header says {} bytes, the file has {len}",
                    self.total_size
                )));
            }
        }
        // Checked, not saturating: a file too short for its own header is corrupt, not a file
        // with an empty payload (peek and gc have no file length to compare with).
        let room = self
            .total_size
            .checked_sub(HEADER_SIZE as u64)
            .ok_or_else(|| {
                corrupt(format!(
                    "header says {} bytes, shorter than the {HEADER_SIZE}-byte header",
                    self.total_size
                ))
            })?;
        let payload_size = usize::try_from(self.payload_size)
            .ok()
            .filter(|&p| p as u64 <= room)
            .ok_or_else(|| {
                corrupt(format!(
                    "payload of {} bytes does not fit in {}",
                    self.payload_size, self.total_size
                ))
            })?;
        let type_info = self
            .type_info()
            .ok_or_else(|| corrupt("malformed type description".into()))?;
        Ok(HeaderSnapshot {
            kind,
            lifetime,
            total_size: self.total_size,
            payload_size,
            type_info,
            creator_pid: self.creator_pid,
            mode: self.mode,
            created_unix_ns: self.created_unix_ns,
            params: self.params,
        })
    }
}

/// What a validated header says: copied once when the segment was opened (or created) and
/// never re-read, so another process writing the header cannot change it under its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSnapshot {
    /// The kind of object.
    pub kind: Kind,
    /// How long it lives.
    pub lifetime: Lifetime,
    /// Length of the file.
    pub total_size: u64,
    /// Length of the payload (checked to fit in the file).
    pub payload_size: usize,
    /// The stored type.
    pub type_info: TypeInfo,
    /// Process id of the creator (for display only).
    pub creator_pid: u32,
    /// Permission bits the creator asked for.
    pub mode: u32,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_unix_ns: u64,
    /// Kind-specific figures (see [`crate::wire`]).
    pub params: [u64; 8],
}

impl HeaderSnapshot {
    /// Checks a validated snapshot against what the opener expects: the lifetime it saw on its
    /// first copy (`lifetime`), the kind, and the stored type when the opener names one.
    pub(crate) fn check_expected(
        &self,
        name: &Name,
        lifetime: Lifetime,
        expect: &Expect,
    ) -> Result<(), SegmentError> {
        if self.lifetime != lifetime {
            return Err(SegmentError::Corrupt {
                name: name.clone(),
                reason: "its lifetime changed while it was opened".into(),
            });
        }
        if self.kind != expect.kind {
            return Err(SegmentError::WrongKind {
                name: name.clone(),
                expected: expect.kind,
                found: self.kind,
            });
        }
        if let Some(t) = &expect.type_info {
            if !t.matches(&self.type_info) {
                return Err(SegmentError::WrongType {
                    name: name.clone(),
                    expected: Box::new(t.clone()),
                    found: Box::new(self.type_info.clone()),
                });
            }
        }
        Ok(())
    }
}

/// The atomic words of a mapped header.
///
/// # Safety
///
/// `base` points to a mapped header of [`HEADER_SIZE`] bytes, page-aligned, that outlives `'a`.
pub(crate) unsafe fn state_word<'a>(base: NonNull<u8>) -> &'a AtomicU32 {
    // SAFETY: STATE_OFFSET is 4-aligned inside the mapped header (checked at compile time
    // above); an `AtomicU32` has the layout of a `u32`, and shared memory is only ever accessed
    // atomically at this offset.
    unsafe { &*base.as_ptr().add(STATE_OFFSET).cast::<AtomicU32>() }
}

/// The header's counters.
///
/// # Safety
///
/// As for [`state_word`].
pub(crate) unsafe fn counters<'a>(base: NonNull<u8>) -> &'a [AtomicU64; 8] {
    // SAFETY: COUNTERS_OFFSET is 8-aligned inside the mapped header; `[AtomicU64; 8]` has the
    // layout of `[u64; 8]`, and the counters are only ever accessed atomically.
    unsafe { &*base.as_ptr().add(COUNTERS_OFFSET).cast::<[AtomicU64; 8]>() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A well-formed header of a file of `total_size` bytes and an empty payload.
    fn header(total_size: u64) -> Header {
        let t = TypeInfo::new("u8", 1, 1, Codec::Pod).unwrap();
        let mut type_name = [0u8; TypeInfo::MAX_NAME];
        type_name[..t.name.len()].copy_from_slice(t.name.as_bytes());
        Header {
            magic: MAGIC,
            state: crate::wire::state::READY,
            format_version: FORMAT_VERSION,
            kind: Kind::Topic as u32,
            lifetime: Lifetime::Scoped as u32,
            header_size: HEADER_SIZE as u64,
            total_size,
            payload_size: 0,
            creator_pid: 1,
            mode: 0o600,
            created_unix_ns: 0,
            type_size: t.size,
            type_align: t.align,
            type_fingerprint: t.fingerprint,
            type_codec: t.codec as u32,
            type_name_len: t.name.len() as u32,
            type_name,
            params: [0; 8],
            counters: [0; 8],
        }
    }

    // Found by the `segment_header` fuzz target: a header whose `total_size` is below the
    // header's own size passed `peek`'s validation (no file length to compare with) as a
    // file with an empty payload.
    #[test]
    fn a_total_size_shorter_than_the_header_is_corrupt() {
        let name = Name::new("header.test").unwrap();
        for total in [0, 1, HEADER_SIZE as u64 - 1] {
            let err = header(total).validate(&name, None).unwrap_err();
            assert!(
                matches!(&err, SegmentError::Corrupt { reason, .. } if reason.contains("shorter")),
                "{total}: {err}"
            );
        }
        let s = header(HEADER_SIZE as u64).validate(&name, None).unwrap();
        assert_eq!((s.total_size, s.payload_size), (HEADER_SIZE as u64, 0));
        assert!(header(HEADER_SIZE as u64)
            .validate(&name, Some(HEADER_SIZE))
            .is_ok());
    }
}
