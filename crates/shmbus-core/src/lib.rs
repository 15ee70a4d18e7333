//! Segments, process-shared primitives and lock-free protocols behind [shmbus].
//!
//! This crate holds every line of `unsafe` code in shmbus. It is layered, each layer using only
//! the ones below it:
//!
//! | module | what it does |
//! |---|---|
//! | [`wire`] | the wire format: every on-shm constant and convention, in one place |
//! | [`segment`] | named shared-memory segments: create, open, unlink, list; header; lifecycle |
//! | [`fork`] | what a forked child inherits: leases stay the parent's, segments become its own |
//! | [`liveness`] | kernel-backed liveness of participants (open-file-description locks) |
//! | [`futex`], [`sync`] | futex wait/wake, robust mutex, semaphore, event living inside segments |
//! | [`ring`] | the topic protocol: slot pool, publication ring, subscriber table |
//! | [`array`], [`dtype`] | named N-d arrays; element types |
//! | [`pool`] | array pools: blocks in separate segments behind topic descriptors |
//! | [`value`] | shared values (atomic, or double-buffered under a robust lock) and barriers |
//! | [`shared`] | shared serde state: updates under a robust lock, lock-free seqlock reads |
//! | [`queue`] | work queues: each item to exactly one consumer, at most once or acknowledged |
//! | [`waitset`] | one thread waiting on many topics, queues, events and timers at once |
//!
//! Most users want the typed API of the `shmbus` crate instead.
//!
//! [shmbus]: https://docs.rs/shmbus
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs, missing_debug_implementations)]
// The loom build exists to run the ring's models (`cargo test --lib`); without the modules that
// loom cannot run (segments' users: topics, pools), the ring's crate-private API looks unused.
#![cfg_attr(loom, allow(dead_code, unused_imports))]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "shmbus supports Linux only: it relies on futexes, tmpfs and open-file-description locks"
);

#[cfg(not(loom))]
pub mod array;
mod barrier;
pub mod dtype;
pub mod fork;
pub mod futex;
#[cfg(all(feature = "fuzzing", not(loom)))]
#[doc(hidden)]
pub mod fuzzing;
pub mod layout;
pub mod liveness;
pub mod name;
#[cfg(not(loom))]
pub mod named;
#[cfg(not(loom))]
pub mod pool;
mod primitive;
pub mod queue;
pub mod ring;
pub mod segment;
pub mod shared;
pub mod sync;
pub mod time;
#[cfg(not(loom))]
pub mod topic;
#[cfg(not(loom))]
pub mod value;
pub mod waitset;
pub mod wire;
