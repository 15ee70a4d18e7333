//! Array pools: large blocks in separate segments, handed over through topic descriptors.
//!
//! A [`PoolPublisher`] owns *pool segments* (kind [`Kind::Pool`]), each cut into equal,
//! page-aligned blocks. To send an array it loans a free block and a topic slot, the caller
//! writes the array into the block in place, and the slot carries a small [`BlockDescriptor`]
//! (pool, segment, block, generation, length, dtype, shape) followed by the caller's own
//! metadata. A [`PoolSubscriber`] validates the descriptor and reads the block in place.
//!
//! # A block lives as long as the slot that names it
//!
//! The topic's slots are already reference-counted across processes: a slot is free only once
//! it has left the ring and every subscriber holding it has released it or died (and been
//! reclaimed). So the publisher needs no second count: the block named by the message in slot
//! `s` is free once `s` is free. The publisher, the only one to loan from its pool, keeps its
//! in-flight messages `(seq, slot, block)` and moves a block to its free list when it finds the
//! slot free. Free blocks are reused last-in, first-out, so the next frame lands in memory that
//! is still in cache.
//!
//! # Growth and exhaustion
//!
//! When no free block fits, the pool grows by a segment of `blocks_per_segment` blocks sized
//! for the request (frames of different sizes get segments of their own), up to `max_bytes`
//! and `max_segments`. Beyond that the topic's overflow policy applies: under
//! [`Overflow::Overwrite`] the oldest message nobody has taken yet is withdrawn from the ring
//! ([`Ring::retire`]) and its block reused; under [`Overflow::BackPressure`] the publisher
//! waits, up to its timeout, for a block to come back.
//!
//! # Validation
//!
//! Descriptors come from another process and are checked before any pointer is formed: known
//! magic and dtype, `len` equal to the shape's bytes, a segment that exists under this topic's
//! pool names and whose own header agrees, a block index inside it, a length inside the block,
//! and a generation equal to the block's current one (a descriptor replayed after its block was
//! reused is stale). Segment names are derived from numbers in the descriptor and the topic's
//! own name, so a forged descriptor cannot make a subscriber open an arbitrary file.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dtype::{byte_len, Dtype};
use crate::layout::{Codec, TypeInfo};
use crate::liveness::{self, Lease};
use crate::name::Name;
use crate::primitive::{AtomicU64, Ordering};
use crate::ring::Overflow;
use crate::segment::{self, CreateOptions, Expect, Kind, Segment, SegmentError};
use crate::time::Deadline;
use crate::topic::{
    Held, Loan, LoanError, PublishError, RawPublisher, RawSubscriber, RawTopic, ReceiveError,
    Received, TopicError,
};

#[cfg(doc)]
use crate::ring::Ring;

mod descriptor;
mod publisher;
mod segment_file;
mod subscriber;

pub use descriptor::{BlockDescriptor, Shape};
pub use publisher::{BlockLoan, PoolPublisher};
pub(crate) use segment_file::pool_type;
#[cfg(feature = "fuzzing")]
pub(crate) use segment_file::{data_offset, PoolMeta};
pub use segment_file::{segment_name, PoolSegment};
#[cfg(feature = "fuzzing")]
pub(crate) use subscriber::{check_block, read_descriptor};
pub use subscriber::{BlockReceiveError, BlockReceived, DetachedBlock, HeldBlock, PoolSubscriber};

/// Bytes at the start of a slot reserved for the [`BlockDescriptor`]; the caller's metadata
/// follows.
pub const DESCRIPTOR_SIZE: usize = 128;
/// Most dimensions a block descriptor carries.
pub const MAX_BLOCK_NDIM: usize = 8;
/// Most segments one pool has.
pub const MAX_POOL_SEGMENTS: u32 = 1024;
/// `BlockDescriptor::magic`.
pub const DESCRIPTOR_MAGIC: u32 = u32::from_le_bytes(*b"SBLK");
/// The type name of pool segments.
pub const POOL_TYPE: &str = crate::wire::type_name::POOL;

/// Offset of the generation table in a pool segment's payload.
pub(crate) const GENERATIONS_OFFSET: usize = 64;
/// Lease byte a subscriber holds (shared) on a pool segment it has mapped.
pub(crate) const MAPPER_LEASE: u64 = crate::wire::lease::POOL_MAPPER;
pub(crate) const PAGE: usize = 4096;

/// How a publisher's pool grows.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Blocks in each new segment (default 4).
    pub blocks_per_segment: u32,
    /// Most bytes of blocks the pool holds (default 1 GiB).
    pub max_bytes: u64,
    /// Most segments (default 64, at most [`MAX_POOL_SEGMENTS`]).
    pub max_segments: u32,
    /// File mode of the segments (default `0o600`).
    pub mode: u32,
    /// How many of the newest large arrays (blocks of at least [`EAGER_RETURN_BYTES`]) stay
    /// in the ring as history for late joiners once every subscriber has read them (default
    /// 1: a subscriber joining with `history(1)` gets the current frame). Older read ones give
    /// their blocks back at the next loan, so a stream of large arrays whose subscribers keep
    /// up cycles through two or three blocks instead of `capacity + 1`. Smaller arrays stay
    /// in the ring until later messages push them out, whatever this says.
    pub history: u32,
    /// How long a departing publisher waits for subscribers to attach the segments of messages
    /// still in flight (default 2 s); see [`PoolPublisher`].
    pub linger: Duration,
}

/// Blocks of at least this many bytes go back to the pool as soon as every subscriber has read
/// them (beyond [`PoolOptions::history`]); smaller ones leave with their ring entry. It is
/// above the cache private to one core on current servers (1–2 MiB of L2): a block of this size
/// cannot be in the reader's own cache when the publisher rewrites it.
pub const EAGER_RETURN_BYTES: usize = 4 << 20;

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            blocks_per_segment: 4,
            max_bytes: 1 << 30,
            max_segments: 64,
            mode: 0o600,
            history: 1,
            linger: Duration::from_secs(2),
        }
    }
}

/// Why a block could not be loaned.
#[derive(Debug, thiserror::Error)]
pub enum PoolLoanError {
    /// Every block is in use, the pool is at its limits (`max_bytes`, `max_segments`), and the
    /// overflow policy could not free one (every block is held by a subscriber, or the
    /// back-pressure wait timed out).
    #[error("array pool of {topic:?} exhausted: {needed} bytes needed, {pool_bytes} of at most {max_bytes} bytes in use")]
    Exhausted {
        /// The topic.
        topic: Name,
        /// Bytes asked for.
        needed: usize,
        /// Bytes of blocks the pool holds.
        pool_bytes: u64,
        /// The limit.
        max_bytes: u64,
    },
    /// The shape is not valid.
    #[error("invalid array shape {shape:?} of {dtype}: {reason}")]
    Shape {
        /// The shape.
        shape: Vec<usize>,
        /// The dtype.
        dtype: Dtype,
        /// What is wrong.
        reason: String,
    },
    /// A topic slot could not be loaned.
    #[error(transparent)]
    Slot(#[from] LoanError),
    /// A new segment could not be created. When `/dev/shm` is full this is
    /// [`SegmentError::OutOfSpace`], returned once the overflow policy could free no block
    /// either (a full `/dev/shm` never faults: the segment's memory is reserved before use).
    #[error(transparent)]
    Segment(#[from] SegmentError),
}

/// Counters of a pool, for tools and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Segments created.
    pub segments: u32,
    /// Blocks in all segments.
    pub blocks: u32,
    /// Bytes of blocks.
    pub bytes: u64,
    /// Blocks free right now (as last collected).
    pub free: u32,
    /// Messages whose blocks are still referenced.
    pub in_flight: u32,
    /// Messages withdrawn to reuse their blocks when the pool was exhausted (not counting the
    /// read ones beyond [`PoolOptions::history`], which every loan gives back).
    pub retired: u64,
    /// Loans that waited for a block (back-pressure on exhaustion).
    pub waits: u64,
}

pub(crate) fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Removes pool segments of `topic` that no living process uses (left by publishers that were
/// killed before any subscriber mapped them). Returns how many.
pub fn sweep_stale(topic: &Name) -> usize {
    let prefix = format!("{}.pool.", topic.as_str());
    let Ok(names) = segment::list() else { return 0 };
    let mut removed = 0;
    for name in names.iter().filter(|n| n.as_str().starts_with(&prefix)) {
        let expect = Expect {
            type_info: None,
            read_only: true,
            ..Expect::new(Kind::Pool, pool_type())
        };
        // Opening reclaims a stale scoped segment (and reports it as not found).
        if let Err(SegmentError::NotFound(_)) = Segment::open(name, &expect) {
            removed += 1;
        }
    }
    removed
}

/// An array topic's slots must hold a descriptor.
pub(crate) fn check_slots(topic: &RawTopic) -> Result<(), TopicError> {
    let slot_size = topic.config().slot_size;
    if (slot_size as usize) < DESCRIPTOR_SIZE {
        return Err(TopicError::Config(format!(
            "slots of {slot_size} bytes cannot hold a {DESCRIPTOR_SIZE}-byte block descriptor"
        )));
    }
    Ok(())
}
