//! Shared state: a named, bounded serde state, updated under a robust lock, read without one.
//!
//! # Payload (kind [`Kind::Shared`](crate::wire::Kind::Shared))
//!
//! | offset | what |
//! |---|---|
//! | 0 | robust mutex (writers) |
//! | 64 | `current`: `version << 1 \| buffer` (`u64`) |
//! | 72 | `changed`: the low 32 bits of the version (`u32`, a futex word) |
//! | 76 | sleepers in `wait_changed` (`u32`) |
//! | 128 | buffer 0: length (`u64`), then `capacity` bytes as little-endian words |
//! | 128 + stride | buffer 1 (`stride` = 8 + capacity rounded up to 64) |
//!
//! Readers never block a writer and never see a half-written state: see `protocol.rs`. A writer
//! killed mid-update leaves the last complete version current; the next writer gets the lock
//! with the owner-died mark, which needs no repair (the other buffer is scratch).

#[cfg(all(test, loom))]
mod loom_tests;
pub(crate) mod protocol;

#[cfg(not(loom))]
mod raw;
#[cfg(not(loom))]
pub use raw::{RawShared, SharedError, MAX_CAPACITY};
