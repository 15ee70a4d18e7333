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
pub const POOL_TYPE: &str = "shmbus.array-pool";

/// Offset of the generation table in a pool segment's payload.
const GENERATIONS_OFFSET: usize = 64;
/// Lease byte a subscriber holds (shared) on a pool segment it has mapped.
const MAPPER_LEASE: u64 = 0;
const PAGE: usize = 4096;

/// The descriptor at the start of a slot of an array topic. Plain integers; written by the
/// publisher, copied out and validated by every subscriber.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockDescriptor {
    /// [`DESCRIPTOR_MAGIC`].
    pub magic: u32,
    /// [`Dtype::code`] of the elements.
    pub dtype: u32,
    /// The publisher's pool (random, chosen when the publisher joins).
    pub pool_id: u64,
    /// Segment index within the pool.
    pub segment: u32,
    /// Block index within the segment.
    pub block: u32,
    /// The block's generation when it was loaned for this message.
    pub generation: u64,
    /// Bytes of the array.
    pub len: u64,
    /// Number of dimensions (0..=[`MAX_BLOCK_NDIM`]).
    pub ndim: u32,
    /// Zero.
    pub reserved: u32,
    /// Extent of each dimension; entries past `ndim` are 0.
    pub shape: [u64; MAX_BLOCK_NDIM],
}

const _: () = assert!(size_of::<BlockDescriptor>() <= DESCRIPTOR_SIZE);

/// The shape of a block's array: at most [`MAX_BLOCK_NDIM`] dimensions, stored inline (no
/// allocation per message).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    dims: [usize; MAX_BLOCK_NDIM],
    ndim: usize,
}

impl Shape {
    /// `dims` as a shape, if it has at most [`MAX_BLOCK_NDIM`] dimensions.
    pub fn new(dims: &[usize]) -> Option<Shape> {
        let mut shape = Shape {
            dims: [0; MAX_BLOCK_NDIM],
            ndim: dims.len(),
        };
        shape.dims.get_mut(..dims.len())?.copy_from_slice(dims);
        Some(shape)
    }

    /// The extent of each dimension.
    pub fn as_slice(&self) -> &[usize] {
        &self.dims[..self.ndim]
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_slice(), f)
    }
}

impl BlockDescriptor {
    /// The dtype and shape, if well formed (known dtype, at most [`MAX_BLOCK_NDIM`] dimensions
    /// that fit in `usize`, `len` equal to their bytes).
    pub fn array(&self) -> Result<(Dtype, Shape), String> {
        if self.magic != DESCRIPTOR_MAGIC {
            return Err(format!(
                "bad magic {:#x}: not a block descriptor",
                self.magic
            ));
        }
        let dtype =
            Dtype::from_code(self.dtype).ok_or_else(|| format!("unknown dtype {}", self.dtype))?;
        let ndim = self.ndim as usize;
        if ndim > MAX_BLOCK_NDIM {
            return Err(format!("{ndim} dimensions (at most {MAX_BLOCK_NDIM})"));
        }
        let mut shape = Shape {
            dims: [0; MAX_BLOCK_NDIM],
            ndim,
        };
        for (to, &d) in shape.dims.iter_mut().zip(&self.shape[..ndim]) {
            *to = usize::try_from(d).map_err(|_| format!("dimension {d} too large"))?;
        }
        match byte_len(shape.as_slice(), dtype.itemsize()) {
            Some(n) if n as u64 == self.len => Ok((dtype, shape)),
            _ => Err(format!(
                "length {} does not match shape {shape:?} of {dtype}",
                self.len
            )),
        }
    }
}

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
    /// How long a departing publisher waits for subscribers to attach the segments of messages
    /// still in flight (default 2 s); see [`PoolPublisher`].
    pub linger: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            blocks_per_segment: 4,
            max_bytes: 1 << 30,
            max_segments: 64,
            mode: 0o600,
            linger: Duration::from_secs(2),
        }
    }
}

/// Why a block could not be loaned.
#[derive(Debug, thiserror::Error)]
pub enum PoolLoanError {
    /// Every block is in use, the pool may not grow, and the overflow policy could not free one
    /// (every block is held by a subscriber, or the back-pressure wait timed out).
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
    /// A new segment could not be created (for example `/dev/shm` is full).
    #[error(transparent)]
    Segment(#[from] SegmentError),
}

/// One pool segment, mapped.
#[derive(Debug)]
pub struct PoolSegment {
    seg: Segment,
    pool_id: u64,
    index: u32,
    block_count: u32,
    block_size: usize,
    data_offset: usize,
    /// A subscriber's shared lease saying "mapped here".
    _mapper: Option<Lease>,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct PoolMeta {
    pool_id: u64,
    index: u32,
    block_count: u32,
    block_size: u64,
    data_offset: u64,
}

const _: () = assert!(size_of::<PoolMeta>() <= GENERATIONS_OFFSET);

fn pool_type() -> TypeInfo {
    TypeInfo::new(POOL_TYPE, 0, PAGE as u64, Codec::Bytes).expect("short name")
}

fn data_offset(block_count: u32) -> Option<usize> {
    (block_count as usize)
        .checked_mul(8)?
        .checked_add(GENERATIONS_OFFSET)?
        .checked_next_multiple_of(PAGE)
}

/// The name of segment `index` of pool `pool_id` of `topic`.
pub fn segment_name(topic: &Name, pool_id: u64, index: u32) -> Result<Name, SegmentError> {
    topic
        .child(&format!("pool.{pool_id:016x}.{index}"))
        .map_err(|e| SegmentError::InvalidSize {
            name: topic.clone(),
            reason: format!("topic name too long for its pool segments: {e}"),
        })
}

impl PoolSegment {
    fn create(
        name: &Name,
        pool_id: u64,
        index: u32,
        block_size: usize,
        block_count: u32,
        mode: u32,
    ) -> Result<PoolSegment, SegmentError> {
        let too_big = || SegmentError::InvalidSize {
            name: name.clone(),
            reason: format!("{block_count} blocks of {block_size} bytes"),
        };
        let data_offset = data_offset(block_count).ok_or_else(too_big)?;
        let payload = block_size
            .checked_mul(block_count as usize)
            .and_then(|d| d.checked_add(data_offset))
            .ok_or_else(too_big)?;
        let mut opts = CreateOptions::new(Kind::Pool, pool_type(), payload);
        opts.mode = mode;
        opts.params = [
            pool_id,
            u64::from(index),
            block_size as u64,
            u64::from(block_count),
            0,
            0,
            0,
            0,
        ];
        let seg = Segment::create(name, &opts, |p| {
            let meta = PoolMeta {
                pool_id,
                index,
                block_count,
                block_size: block_size as u64,
                data_offset: data_offset as u64,
            };
            // SAFETY: the payload is page-aligned, zero-filled, at least GENERATIONS_OFFSET
            // bytes and ours alone (the segment has no name yet). The generation table is
            // zeroed memory, a valid array of atomics.
            unsafe { p.as_mut_ptr().cast::<PoolMeta>().write(meta) };
        })?;
        Ok(PoolSegment {
            seg,
            pool_id,
            index,
            block_count,
            block_size,
            data_offset,
            _mapper: None,
        })
    }

    /// Opens segment `index` of pool `pool_id` and checks that it says so and that its blocks
    /// fit in it.
    fn open(name: &Name, pool_id: u64, index: u32) -> Result<PoolSegment, String> {
        let expect = Expect {
            read_only: true,
            ..Expect::new(Kind::Pool, pool_type())
        };
        let seg = Segment::open(name, &expect).map_err(|e| e.to_string())?;
        let mapper = Lease::shared(seg.fd(), MAPPER_LEASE).map_err(|e| e.to_string())?;
        let len = seg.payload_len();
        if len < GENERATIONS_OFFSET {
            return Err(format!("pool segment payload of {len} bytes"));
        }
        // SAFETY: the payload is page-aligned and at least GENERATIONS_OFFSET >=
        // size_of::<PoolMeta>() bytes; PoolMeta is plain integers, written before the segment
        // was named, copied out here once (volatile: another process may write it).
        let meta =
            unsafe { std::ptr::read_volatile(seg.payload_ptr().cast::<PoolMeta>().as_ptr()) };
        if meta.pool_id != pool_id || meta.index != index {
            return Err(format!(
                "segment says pool {:016x} segment {}, descriptor says {pool_id:016x} {index}",
                meta.pool_id, meta.index
            ));
        }
        let block_size = usize::try_from(meta.block_size).map_err(|_| "block size".to_string())?;
        let fits = data_offset(meta.block_count)
            .filter(|&o| o as u64 == meta.data_offset)
            .and_then(|o| {
                block_size
                    .checked_mul(meta.block_count as usize)?
                    .checked_add(o)
            })
            .is_some_and(|end| end <= len);
        if meta.block_count == 0 || block_size == 0 || block_size % PAGE != 0 || !fits {
            return Err(format!(
                "{} blocks of {} bytes at {} do not fit a payload of {len} bytes",
                meta.block_count, meta.block_size, meta.data_offset
            ));
        }
        Ok(PoolSegment {
            seg,
            pool_id,
            index,
            block_count: meta.block_count,
            block_size,
            data_offset: meta.data_offset as usize,
            _mapper: Some(mapper),
        })
    }

    fn generation(&self, block: u32) -> &AtomicU64 {
        assert!(block < self.block_count, "block index out of range");
        // SAFETY: the table of `block_count` u64 words starts at GENERATIONS_OFFSET (8-aligned)
        // and ends before `data_offset`, inside the payload (checked at open/create); atomics
        // are the only access to it.
        unsafe {
            &*self
                .seg
                .payload_ptr()
                .add(GENERATIONS_OFFSET)
                .cast::<AtomicU64>()
                .as_ptr()
                .add(block as usize)
        }
    }

    fn block_ptr(&self, block: u32) -> NonNull<u8> {
        assert!(block < self.block_count, "block index out of range");
        // SAFETY: `data_offset + block_count * block_size <= payload_len` (checked at open and
        // by construction at create), so the block starts inside the payload.
        unsafe {
            self.seg
                .payload_ptr()
                .add(self.data_offset + block as usize * self.block_size)
        }
    }

    /// Whether another process has the segment mapped (holds a mapper lease on it).
    fn used_by_others(&self) -> bool {
        liveness::is_held(self.seg.fd(), MAPPER_LEASE).unwrap_or(true)
    }

    /// Bytes of each block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BlockRef {
    segment: u32,
    block: u32,
}

#[derive(Debug)]
struct InFlight {
    seq: u64,
    slot: u32,
    block: BlockRef,
}

/// A block and a slot on loan to a [`PoolPublisher`]: fill them, then publish or cancel.
#[derive(Debug)]
#[must_use = "a block loan is only given back by publish or cancel"]
pub struct BlockLoan {
    loan: Loan,
    block: BlockRef,
    generation: u64,
    dtype: Dtype,
    shape: Shape,
    len: usize,
    owner: u64,
}

impl BlockLoan {
    /// The array's dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
    /// The array's shape.
    pub fn shape(&self) -> &[usize] {
        self.shape.as_slice()
    }
    /// The array's bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the array has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
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
    /// Messages withdrawn to reuse their blocks (overwrite on exhaustion).
    pub retired: u64,
    /// Loans that waited for a block (back-pressure on exhaustion).
    pub waits: u64,
}

/// A publisher of arrays: a topic publisher plus the pool of blocks it owns.
///
/// Dropping it waits up to [`PoolOptions::linger`] until every segment that messages still in
/// the ring refer to is mapped by some subscriber (so a subscriber that has not read them yet
/// can still resolve them once the publisher is gone), then leaves.
pub struct PoolPublisher {
    publisher: RawPublisher,
    pool_id: u64,
    opts: PoolOptions,
    segments: Vec<PoolSegment>,
    free: Vec<BlockRef>,
    in_flight: VecDeque<InFlight>,
    bytes: u64,
    loaned: bool,
    last_reclaim: Instant,
    stats: PoolStats,
    id: u64,
}

impl fmt::Debug for PoolPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolPublisher")
            .field("topic", self.publisher.topic().name())
            .field("pool_id", &format_args!("{:016x}", self.pool_id))
            .field("segments", &self.segments.len())
            .field("free", &self.free.len())
            .field("in_flight", &self.in_flight.len())
            .finish()
    }
}

fn random_u64() -> u64 {
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
fn check_slots(topic: &RawTopic) -> Result<(), TopicError> {
    let slot_size = topic.config().slot_size;
    if (slot_size as usize) < DESCRIPTOR_SIZE {
        return Err(TopicError::Config(format!(
            "slots of {slot_size} bytes cannot hold a {DESCRIPTOR_SIZE}-byte block descriptor"
        )));
    }
    Ok(())
}

impl PoolPublisher {
    /// Joins `topic` as its publisher of arrays. The topic must allow one publisher only and
    /// have slots of at least [`DESCRIPTOR_SIZE`] bytes.
    pub fn new(topic: Arc<RawTopic>, opts: PoolOptions) -> Result<PoolPublisher, TopicError> {
        let c = topic.config();
        if c.max_publishers != 1 {
            return Err(TopicError::Config(format!(
                "an array topic has one publisher; {:?} allows {}",
                topic.name(),
                c.max_publishers
            )));
        }
        check_slots(&topic)?;
        if opts.blocks_per_segment == 0 || !(1..=MAX_POOL_SEGMENTS).contains(&opts.max_segments) {
            return Err(TopicError::Config(format!(
                "blocks_per_segment must be at least 1 and max_segments 1..={MAX_POOL_SEGMENTS}"
            )));
        }
        let swept = sweep_stale(topic.name());
        if swept > 0 {
            tracing::info!(topic = %topic.name(), swept, "removed stale pool segments");
        }
        let publisher = RawPublisher::new(topic)?;
        Ok(PoolPublisher {
            publisher,
            pool_id: random_u64(),
            opts,
            segments: Vec::new(),
            free: Vec::new(),
            in_flight: VecDeque::new(),
            bytes: 0,
            loaned: false,
            last_reclaim: Instant::now(),
            stats: PoolStats::default(),
            id: random_u64(),
        })
    }

    /// The topic publisher.
    pub fn publisher(&self) -> &RawPublisher {
        &self.publisher
    }

    /// The pool's id (part of its segments' names).
    pub fn pool_id(&self) -> u64 {
        self.pool_id
    }

    /// Counters.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            segments: self.segments.len() as u32,
            blocks: self.segments.iter().map(|s| s.block_count).sum(),
            bytes: self.bytes,
            free: self.free.len() as u32,
            in_flight: self.in_flight.len() as u32,
            ..self.stats
        }
    }

    /// Moves blocks whose slot is free to the free list (most recently freed on top).
    fn collect(&mut self) {
        let publisher = &self.publisher;
        // The publisher's spare slot was free when it loaned it: its old message is gone.
        let spare = publisher.spare_slot();
        let free = &mut self.free;
        self.in_flight.retain(|m| {
            if publisher.slot_is_free(m.slot) || Some(m.slot) == spare {
                free.push(m.block);
                false
            } else {
                true
            }
        });
    }

    fn size_of_block(&self, b: BlockRef) -> usize {
        self.segments[b.segment as usize].block_size
    }

    /// Takes the most recently freed block that fits `len`, preferring one not more than four
    /// times too large (so a small array does not pin a huge block) unless `any`.
    fn take_free(&mut self, len: usize, any: bool) -> Option<BlockRef> {
        let limit = len.saturating_mul(4).max(PAGE);
        let i = self.free.iter().rposition(|&b| {
            let size = self.size_of_block(b);
            size >= len && (any || size <= limit)
        })?;
        Some(self.free.remove(i))
    }

    /// Adds a segment of blocks of `len` bytes (rounded to pages), if the limits allow.
    fn grow(&mut self, len: usize) -> Result<bool, PoolLoanError> {
        let block_size = len
            .max(1)
            .checked_next_multiple_of(PAGE)
            .unwrap_or(usize::MAX);
        let room = self.opts.max_bytes.saturating_sub(self.bytes) / block_size as u64;
        let count = room.min(u64::from(self.opts.blocks_per_segment)) as u32;
        if count == 0 || self.segments.len() as u32 >= self.opts.max_segments {
            return Ok(false);
        }
        let index = self.segments.len() as u32;
        let name = segment_name(self.publisher.topic().name(), self.pool_id, index)?;
        let seg = match PoolSegment::create(
            &name,
            self.pool_id,
            index,
            block_size,
            count,
            self.opts.mode,
        ) {
            Ok(s) => s,
            // A full /dev/shm is exhaustion: the overflow policy may still free a block.
            Err(SegmentError::OutOfSpace { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        tracing::debug!(topic = %self.publisher.topic().name(), index, block_size, count, "array pool grew");
        self.bytes += block_size as u64 * u64::from(count);
        self.segments.push(seg);
        // Block 0 on top.
        self.free.extend((0..count).rev().map(|block| BlockRef {
            segment: index,
            block,
        }));
        Ok(true)
    }

    /// Collects freed blocks, reclaiming dead participants first if that was last done more
    /// than `max_age` ago.
    fn refresh(&mut self, max_age: Duration) {
        if self.last_reclaim.elapsed() > max_age {
            self.reclaim_dead_now();
        } else {
            self.collect();
        }
    }

    fn reclaim_dead_now(&mut self) {
        self.publisher.topic().reclaim_dead();
        self.last_reclaim = Instant::now();
        self.collect();
    }

    /// Withdraws the oldest in-flight message whose block fits `len` and that nobody holds
    /// (with `read_only`: that every subscriber has read, or any if there is no subscriber);
    /// returns its block.
    fn retire_oldest(&mut self, len: usize, read_only: bool) -> Option<BlockRef> {
        let read_before = if read_only {
            self.publisher
                .topic()
                .ring()
                .min_cursor()
                .unwrap_or(u64::MAX)
        } else {
            u64::MAX
        };
        let i = (0..self.in_flight.len()).find(|&i| {
            let m = &self.in_flight[i];
            m.seq < read_before
                && self.size_of_block(m.block) >= len
                && self.publisher.retire(m.seq, m.slot)
        })?;
        self.stats.retired += 1;
        self.in_flight.remove(i).map(|m| m.block)
    }

    /// Finds a block of at least `len` bytes, applying the overflow policy when the pool is
    /// exhausted.
    fn find_block(
        &mut self,
        len: usize,
        timeout: Option<Duration>,
    ) -> Result<BlockRef, PoolLoanError> {
        // Blocks held by subscribers that died come back once their rows are reclaimed.
        self.refresh(Duration::from_millis(100));
        if let Some(b) = self.take_free(len, false) {
            return Ok(b);
        }
        if self.grow(len)? {
            return Ok(self.take_free(len, true).expect("a fresh segment fits"));
        }
        // Messages every subscriber has read stay in the ring only as history for late
        // joiners: their blocks are the first to take back, under either policy. (A pool at its
        // limit takes this path on every loan, so it must stay cheap: no syscall.)
        if let Some(b) = self.retire_oldest(len, true) {
            return Ok(b);
        }
        // Dead subscribers' holds, at most every 10 ms (a few `fcntl`s per participant).
        self.refresh(Duration::from_millis(10));
        if let Some(b) = self.take_free(len, true) {
            return Ok(b);
        }
        match self.publisher.topic().config().overflow {
            Overflow::Overwrite => {
                // Withdraw the oldest message nobody holds, read or not.
                if let Some(b) = self.retire_oldest(len, false) {
                    return Ok(b);
                }
                self.collect();
                if let Some(b) = self.take_free(len, true) {
                    return Ok(b);
                }
            }
            Overflow::BackPressure => {
                self.stats.waits += 1;
                let deadline = Deadline::after(timeout);
                let mut nap = Duration::from_micros(20);
                while !deadline.expired() {
                    std::thread::sleep(match deadline.remaining() {
                        Some(r) => nap.min(r),
                        None => nap,
                    });
                    nap = (nap * 2).min(Duration::from_millis(1));
                    self.refresh(Duration::from_millis(50));
                    if let Some(b) = self.take_free(len, true) {
                        return Ok(b);
                    }
                    if let Some(b) = self.retire_oldest(len, true) {
                        return Ok(b);
                    }
                }
            }
        }
        Err(PoolLoanError::Exhausted {
            topic: self.publisher.topic().name().clone(),
            needed: len,
            pool_bytes: self.bytes,
            max_bytes: self.opts.max_bytes,
        })
    }

    /// Loans a block for an array of `dtype` and `shape`, and a slot for its descriptor.
    /// Under back-pressure, waits up to `timeout` for a block when the pool is exhausted.
    pub fn loan(
        &mut self,
        dtype: Dtype,
        shape: &[usize],
        timeout: Option<Duration>,
    ) -> Result<BlockLoan, PoolLoanError> {
        self.publisher.check_fork().map_err(LoanError::from)?;
        if self.loaned {
            return Err(LoanError::AlreadyLoaned.into());
        }
        let shape_err = |reason: &str| PoolLoanError::Shape {
            shape: shape.to_vec(),
            dtype,
            reason: reason.to_owned(),
        };
        let Some(inline) = Shape::new(shape) else {
            return Err(shape_err(&format!("more than {MAX_BLOCK_NDIM} dimensions")));
        };
        let len = byte_len(shape, dtype.itemsize()).ok_or_else(|| shape_err("too many bytes"))?;
        let block = self.find_block(len, timeout)?;
        let loan = match self.publisher.loan() {
            Ok(l) => l,
            Err(e) => {
                self.free.push(block);
                return Err(e.into());
            }
        };
        // The slot was free, so whatever an older message in it referenced is free too.
        let slot = loan.slot();
        let free = &mut self.free;
        self.in_flight.retain(|m| {
            if m.slot == slot {
                free.push(m.block);
                false
            } else {
                true
            }
        });
        let seg = &self.segments[block.segment as usize];
        // Release: pairs with a subscriber's Acquire load after it took the slot (the publish
        // orders it anyway); a new generation makes any older descriptor of this block stale.
        let generation = seg.generation(block.block).fetch_add(1, Ordering::Release) + 1;
        self.loaned = true;
        Ok(BlockLoan {
            loan,
            block,
            generation,
            dtype,
            shape: inline,
            len,
            owner: self.id,
        })
    }

    fn check_owner(&self, loan: &BlockLoan) {
        assert_eq!(
            loan.owner, self.id,
            "a block loan used with a publisher that did not make it"
        );
    }

    /// The loaned block (exactly the array's bytes, page-aligned) and the slot's metadata bytes
    /// after the descriptor, both writable.
    ///
    /// # Panics
    ///
    /// If `loan` came from another publisher.
    pub fn parts_mut(&mut self, loan: &BlockLoan) -> (&mut [u8], &mut [u8]) {
        self.check_owner(loan);
        let block = self.segments[loan.block.segment as usize].block_ptr(loan.block.block);
        let ring = self.publisher.topic().ring();
        let slot = ring.slot_ptr(loan.loan.slot());
        let slot_size = ring.config().slot_size as usize;
        // SAFETY: the block was free (its last message's slot was free, or it was never used)
        // when loaned, and it and the slot are on loan to this publisher alone until publish or
        // cancel consume the `BlockLoan`, which cannot be forged or copied; subscribers read
        // them only after the publish. `len <= block_size` and `DESCRIPTOR_SIZE <= slot_size`
        // (checked when joining); the two ranges lie in different mappings, both alive as long
        // as `self`, whose `&mut` borrow the slices carry.
        unsafe {
            (
                std::slice::from_raw_parts_mut(block.as_ptr(), loan.len),
                std::slice::from_raw_parts_mut(
                    slot.as_ptr().add(DESCRIPTOR_SIZE),
                    slot_size - DESCRIPTOR_SIZE,
                ),
            )
        }
    }

    /// Writes `desc` at the start of the slot on `loan`.
    fn write_descriptor(&mut self, loan: &Loan, desc: &BlockDescriptor) {
        let p = self.publisher.topic().ring().slot_ptr(loan.slot());
        // SAFETY: the slot is on loan to this publisher (checked by the callers, who hold the
        // `Loan`), at least DESCRIPTOR_SIZE bytes (checked when joining) and 64-aligned
        // (BlockDescriptor needs 8); nobody else reads or writes it before the publish.
        unsafe { p.cast::<BlockDescriptor>().as_ptr().write(*desc) };
    }

    /// Publishes the loaned array; on error (back-pressure timeout) the loan is handed back.
    // The error hands the loan back by value; it is rare (a timeout) and boxing it would cost
    // an allocation on that path for no gain on the hot one.
    #[allow(clippy::result_large_err)]
    pub fn publish(
        &mut self,
        loan: BlockLoan,
        timeout: Option<Duration>,
    ) -> Result<u64, (PublishError, BlockLoan)> {
        self.check_owner(&loan);
        let mut desc = BlockDescriptor {
            magic: DESCRIPTOR_MAGIC,
            dtype: loan.dtype.code(),
            pool_id: self.pool_id,
            segment: loan.block.segment,
            block: loan.block.block,
            generation: loan.generation,
            len: loan.len as u64,
            ndim: loan.shape.ndim as u32,
            reserved: 0,
            shape: [0; MAX_BLOCK_NDIM],
        };
        for (d, &s) in desc.shape.iter_mut().zip(loan.shape.as_slice()) {
            *d = s as u64;
        }
        self.write_descriptor(&loan.loan, &desc);
        let BlockLoan {
            loan: slot_loan,
            block,
            generation,
            dtype,
            shape,
            len,
            owner,
        } = loan;
        let slot = slot_loan.slot();
        match self.publisher.publish(slot_loan, timeout) {
            Ok(seq) => {
                self.loaned = false;
                self.in_flight.push_back(InFlight { seq, slot, block });
                Ok(seq)
            }
            Err((e, slot_loan)) => Err((
                e,
                BlockLoan {
                    loan: slot_loan,
                    block,
                    generation,
                    dtype,
                    shape,
                    len,
                    owner,
                },
            )),
        }
    }

    /// Publishes `desc` as it is, with no block behind it: what a buggy or hostile process
    /// with the topic mapped could write. For tests of descriptor validation and for tools.
    #[doc(hidden)]
    pub fn publish_raw(
        &mut self,
        desc: &BlockDescriptor,
        timeout: Option<Duration>,
    ) -> Result<u64, PoolLoanError> {
        let loan = self.publisher.loan()?;
        self.write_descriptor(&loan, desc);
        self.publisher.publish(loan, timeout).map_err(|(_, loan)| {
            self.publisher.cancel(loan);
            PoolLoanError::Exhausted {
                topic: self.publisher.topic().name().clone(),
                needed: 0,
                pool_bytes: self.bytes,
                max_bytes: self.opts.max_bytes,
            }
        })
    }

    /// Gives an unpublished loan back.
    pub fn cancel(&mut self, loan: BlockLoan) {
        self.check_owner(&loan);
        self.publisher.cancel(loan.loan);
        self.free.push(loan.block);
        self.loaned = false;
    }

    /// Waits (up to `linger`) until every segment named by a message still in flight is mapped
    /// by some other process, or no subscriber is left to read it.
    fn linger(&mut self) {
        let deadline = Instant::now() + self.opts.linger;
        loop {
            self.collect();
            let ring = self.publisher.topic().ring();
            let subscribers = (0..ring.config().max_subscribers).any(|k| ring.subscriber_active(k));
            let unmapped = self
                .in_flight
                .iter()
                .any(|m| !self.segments[m.block.segment as usize].used_by_others());
            if !subscribers || !unmapped || Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for PoolPublisher {
    fn drop(&mut self) {
        // A forked child's copy has nothing of its own in flight: the frames are the parent's.
        if !self.in_flight.is_empty()
            && !std::thread::panicking()
            && self.publisher.check_fork().is_ok()
        {
            self.linger();
        }
    }
}

/// A block held by a [`PoolSubscriber`]: read it in place; dropping it releases it.
pub struct HeldBlock<'a> {
    subscriber: &'a PoolSubscriber,
    held: Option<Held>,
    segment: Arc<PoolSegment>,
    desc: BlockDescriptor,
    dtype: Dtype,
    shape: Shape,
}

impl fmt::Debug for HeldBlock<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldBlock")
            .field("seq", &self.seq())
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .finish()
    }
}

impl HeldBlock<'_> {
    /// The message's sequence number.
    pub fn seq(&self) -> u64 {
        self.held.as_ref().map_or(0, Held::seq)
    }
    /// The descriptor, as validated.
    pub fn descriptor(&self) -> &BlockDescriptor {
        &self.desc
    }
    /// The array's dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
    /// The array's shape.
    pub fn shape(&self) -> &[usize] {
        self.shape.as_slice()
    }
    /// The array's bytes, in place (page-aligned).
    pub fn bytes(&self) -> &[u8] {
        let p = self.segment.block_ptr(self.desc.block);
        // SAFETY: the descriptor was validated against the segment (block index in range,
        // `len <= block_size`, current generation); this subscriber holds the slot that names
        // the block, and the publisher reuses a block only once that slot is free, so nobody
        // writes it while `self` (which keeps the hold and, through `Arc`, the mapping) lives.
        unsafe { std::slice::from_raw_parts(p.as_ptr(), self.desc.len as usize) }
    }
    /// The publisher's metadata bytes after the descriptor in the slot.
    pub fn meta(&self) -> &[u8] {
        let held = self.held.as_ref().expect("held until drop");
        &self.subscriber.subscriber.slot(held)[DESCRIPTOR_SIZE..]
    }
}

/// A [`HeldBlock`] that no longer borrows its subscriber ([`HeldBlock::detach`]), for owners
/// that cannot express the borrow (language bindings keeping a sample in a heap object).
///
/// It keeps the pool segment mapped and the slot held; give it back with
/// [`PoolSubscriber::release_detached`] on the subscriber that received it. Until then the
/// block is never reused, provided that subscriber lives: a subscriber dropped first releases
/// its holds, and the block may then be rewritten (still mapped: a stale read, never a fault).
pub struct DetachedBlock {
    held: Held,
    segment: Arc<PoolSegment>,
    desc: BlockDescriptor,
    dtype: Dtype,
    shape: Shape,
}

impl fmt::Debug for DetachedBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DetachedBlock")
            .field("seq", &self.held.seq())
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .finish()
    }
}

impl DetachedBlock {
    /// The message's sequence number.
    pub fn seq(&self) -> u64 {
        self.held.seq()
    }
    /// The array's dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
    /// The array's shape.
    pub fn shape(&self) -> &[usize] {
        self.shape.as_slice()
    }
    /// Bytes of the array.
    pub fn len(&self) -> usize {
        self.desc.len as usize
    }
    /// Whether the array has no bytes.
    pub fn is_empty(&self) -> bool {
        self.desc.len == 0
    }
    /// The first byte of the array (page-aligned), mapped for `len()` bytes as long as `self`
    /// lives; nobody writes it while the receiving subscriber lives and `self` is not released.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.segment.block_ptr(self.desc.block)
    }
}

impl HeldBlock<'_> {
    /// Gives up the borrow of the subscriber, keeping the hold (see [`DetachedBlock`]). Also
    /// returns a copy of the publisher's metadata bytes.
    pub fn detach(mut self) -> (DetachedBlock, Vec<u8>) {
        let meta = self.meta().to_vec();
        let held = self.held.take().expect("held until drop");
        let block = DetachedBlock {
            held,
            segment: self.segment.clone(),
            desc: self.desc,
            dtype: self.dtype,
            shape: self.shape,
        };
        (block, meta)
    }
}

impl Drop for HeldBlock<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.held.take() {
            self.subscriber.subscriber.release(h);
        }
    }
}

/// What a [`PoolSubscriber`] receive found.
// Returned by value once per message: boxing the large variant would add the allocation per
// message that the inline `Shape` exists to avoid.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum BlockReceived<'a> {
    /// An array.
    Block(HeldBlock<'a>),
    /// Nothing new (or the timeout passed).
    Empty,
    /// `n` messages were missed.
    Lagged(u64),
    /// The publisher is gone and everything was read.
    Disconnected,
}

/// Why a [`PoolSubscriber`] receive failed.
#[derive(Debug, thiserror::Error)]
pub enum BlockReceiveError {
    /// The topic failed.
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    /// The message's descriptor was refused; the message was dropped and the next receive goes
    /// on with the one after it.
    #[error("message {seq} has an invalid block descriptor: {reason}")]
    BadDescriptor {
        /// The message.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
}

/// A subscriber of arrays: resolves descriptors to blocks of the publisher's pool segments,
/// which it maps on first use and keeps mapped while it may need them.
pub struct PoolSubscriber {
    subscriber: RawSubscriber,
    cache: RefCell<Vec<Arc<PoolSegment>>>,
}

impl fmt::Debug for PoolSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolSubscriber")
            .field("topic", self.subscriber.topic().name())
            .field("mapped_segments", &self.cache.borrow().len())
            .finish()
    }
}

impl PoolSubscriber {
    /// Joins `topic` as a subscriber of arrays.
    pub fn new(topic: Arc<RawTopic>, history: u32) -> Result<PoolSubscriber, TopicError> {
        check_slots(&topic)?;
        Ok(PoolSubscriber {
            subscriber: RawSubscriber::new(topic, history)?,
            cache: RefCell::new(Vec::new()),
        })
    }

    /// The topic subscriber.
    pub fn subscriber(&self) -> &RawSubscriber {
        &self.subscriber
    }

    /// Releases a block detached from a [`HeldBlock`] this subscriber received.
    ///
    /// # Panics
    ///
    /// If `block` came from another subscriber.
    pub fn release_detached(&self, block: DetachedBlock) {
        self.subscriber.release(block.held);
    }

    /// Pool segments mapped right now.
    pub fn mapped_segments(&self) -> usize {
        self.cache.borrow().len()
    }

    /// Takes the next array without waiting.
    pub fn try_receive(&self) -> Result<BlockReceived<'_>, BlockReceiveError> {
        let r = self.subscriber.try_receive()?;
        self.resolve_received(r)
    }

    /// Takes the next array, waiting up to `timeout` (`None`: no limit).
    pub fn receive(
        &self,
        timeout: Option<Duration>,
    ) -> Result<BlockReceived<'_>, BlockReceiveError> {
        let r = self.subscriber.receive(timeout)?;
        self.resolve_received(r)
    }

    fn resolve_received(&self, r: Received) -> Result<BlockReceived<'_>, BlockReceiveError> {
        match r {
            Received::Message(held) => {
                let seq = held.seq();
                match self.resolve(&held) {
                    Ok((segment, desc, dtype, shape)) => Ok(BlockReceived::Block(HeldBlock {
                        subscriber: self,
                        held: Some(held),
                        segment,
                        desc,
                        dtype,
                        shape,
                    })),
                    Err(reason) => {
                        self.subscriber.release(held);
                        tracing::warn!(topic = %self.subscriber.topic().name(), seq, %reason, "refused a block descriptor");
                        Err(BlockReceiveError::BadDescriptor { seq, reason })
                    }
                }
            }
            Received::Empty => Ok(BlockReceived::Empty),
            Received::Lagged(n) => Ok(BlockReceived::Lagged(n)),
            Received::Disconnected => Ok(BlockReceived::Disconnected),
        }
    }

    #[allow(clippy::type_complexity)]
    fn resolve(
        &self,
        held: &Held,
    ) -> Result<(Arc<PoolSegment>, BlockDescriptor, Dtype, Shape), String> {
        let slot = self.subscriber.slot(held);
        // SAFETY: the slot is held (nobody writes it) and at least DESCRIPTOR_SIZE bytes
        // (checked when joining); BlockDescriptor is plain integers, so any bytes are a value,
        // read unaligned-tolerantly and copied out.
        let desc = unsafe { slot.as_ptr().cast::<BlockDescriptor>().read_unaligned() };
        let (dtype, shape) = desc.array()?;
        if desc.segment >= MAX_POOL_SEGMENTS {
            return Err(format!("segment index {} out of range", desc.segment));
        }
        let segment = self.segment(desc.pool_id, desc.segment)?;
        if desc.block >= segment.block_count {
            return Err(format!(
                "block {} of a segment of {}",
                desc.block, segment.block_count
            ));
        }
        if desc.len > segment.block_size as u64 {
            return Err(format!(
                "{} bytes overrun a block of {}",
                desc.len, segment.block_size
            ));
        }
        let current = segment.generation(desc.block).load(Ordering::Acquire);
        if current != desc.generation {
            return Err(format!(
                "stale generation {} (the block is at {current})",
                desc.generation
            ));
        }
        Ok((segment, desc, dtype, shape))
    }

    fn segment(&self, pool_id: u64, index: u32) -> Result<Arc<PoolSegment>, String> {
        let mut cache = self.cache.borrow_mut();
        if let Some(s) = cache
            .iter()
            .find(|s| s.pool_id == pool_id && s.index == index)
        {
            return Ok(s.clone());
        }
        let name = segment_name(self.subscriber.topic().name(), pool_id, index)
            .map_err(|e| e.to_string())?;
        let seg = Arc::new(
            PoolSegment::open(&name, pool_id, index)
                .map_err(|e| format!("pool segment {name} unknown: {e}"))?,
        );
        // Segments of an earlier publisher (another pool) that nothing here holds any more
        // are unmapped, so a departed publisher's memory is freed.
        cache.retain(|s| s.pool_id == pool_id || Arc::strong_count(s) > 1);
        cache.push(seg.clone());
        Ok(seg)
    }
}
