//! Work queues: a bounded multi-producer, multi-consumer queue in one named segment, where each
//! item goes to exactly one consumer.
//!
//! # Shape
//!
//! The payload holds (byte offsets in `docs/architecture.md` §15):
//!
//! - a robust mutex ([`RobustMutex`](crate::sync::RobustMutex)) that guards everything below
//!   except the data;
//! - three cache lines of words: the ready ring's `head`/`tail`, the free ring's, the next
//!   sequence number and the `closed` flag; then the word getters sleep on, and the word
//!   putters sleep on, each with a sleeper count;
//! - a **slot table**: per slot, a state word (`FREE`, `RESERVED` by row *r*, `READY`, `TAKEN`
//!   by row *r*, and the deliveries so far) and the item's sequence number;
//! - the **ready ring** (slots in line, oldest first) and the **free ring**;
//! - one word per **participant row** (the pid of the handle that holds it);
//! - the data slots.
//!
//! # Two-phase put and get
//!
//! A put *reserves* a free slot under the lock, writes the item into it **outside** the lock,
//! and *commits* it under the lock; a get *takes* the front item under the lock, reads it
//! outside, and *finishes* it under the lock. So a large item never holds the lock for longer
//! than a few stores. The slot is its row's alone between the two phases.
//!
//! # Dead participants
//!
//! Each handle owns a participant row and holds the row's OFD lease (`wire::lease::queue_row`).
//! When the lock's holder dies, the next locker rebuilds the rings from the state words (they
//! are the truth; see `protocol.rs`). A row whose lease is free while the row is marked taken
//! belongs to a dead participant: whoever takes its lease reclaims its slots (a reservation is
//! freed; a taken item is lost and counted in at-most-once mode, or delivered again, up to the
//! queue's delivery limit, in acknowledged mode). Blocked putters and getters look for dead
//! rows every 50 ms, so a dead peer never blocks the others.

#[cfg(not(loom))]
pub mod array;
pub(crate) mod protocol;
#[cfg(not(loom))]
mod raw;

#[cfg(all(test, loom))]
mod loom_tests;

pub use protocol::{QueueConfig, QueueError, Reclaimed, Taken};
#[cfg(not(loom))]
pub use raw::{
    QueueLayout, QueueOpenError, QueueOptions, QueueStats, RawDelivery, RawQueue, RawReservation,
};
