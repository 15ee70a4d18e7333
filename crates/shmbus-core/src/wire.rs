//! The wire format: every on-shm constant and convention in one place.
//!
//! Anything that another process (another build of shmbus, the `shmbus` CLI, the Python
//! bindings, a debugging script) must agree on to read a segment is defined here and nowhere
//! else: the magic and format version, the header's state words, the kinds and lifetimes, where
//! each participant's liveness lease sits, what the header counters and parameters mean, the
//! framing of serde messages in a slot, and the prefixes of derived type names. The layouts of
//! the structures themselves (`Header`, the ring, the pool) live with the code that owns them and
//! are described byte by byte in `docs/architecture.md`; their sizes and offsets are checked
//! against the constants here at compile time.
//!
//! This module holds no `unsafe` code.
#![deny(unsafe_code)]

use std::fmt;

/// Where segments live: the tmpfs behind POSIX shared memory.
pub const SHM_DIR: &str = "/dev/shm";

/// The prefix of every shmbus file in [`SHM_DIR`]: the segment `n` is the file `shmbus.n`.
pub const FILE_PREFIX: &str = "shmbus.";

/// `b"SHMBUS\0\x01"`: the first eight bytes of every segment.
pub const MAGIC: [u8; 8] = *b"SHMBUS\0\x01";

/// Version of the on-shm format described in `docs/architecture.md`. Bumped on any change of
/// any layout; a segment of another version is refused.
pub const FORMAT_VERSION: u32 = 5;

/// Bytes reserved for the segment header; the payload starts here (page-aligned).
pub const HEADER_SIZE: usize = 4096;

/// Byte offset of the header's `state` word (a `u32`, see [`state`]).
pub const STATE_OFFSET: usize = 8;

/// Values of the header's `state` word.
pub mod state {
    /// Zero-filled: not initialised (never seen under a final name for segments we create).
    pub const INIT: u32 = 0;
    /// Initialised and usable.
    pub const READY: u32 = 1;
    /// The last user left and is removing the name; openers retry.
    pub const CLOSED: u32 = 2;
}

/// What kind of object a segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Kind {
    /// A pub/sub topic.
    Topic = 1,
    /// A robust mutex guarding a value.
    Mutex = 2,
    /// A counting semaphore.
    Semaphore = 3,
    /// An event (auto- or manual-reset).
    Event = 4,
    /// A named N-d array.
    Array = 5,
    /// A block pool for large messages.
    Pool = 6,
    /// A work queue.
    Queue = 7,
    /// A shared value.
    Value = 8,
    /// A barrier for a fixed number of processes.
    Barrier = 9,
    /// A shared serde state with a version counter.
    Shared = 10,
}

impl Kind {
    /// The kind stored as `raw`, if known.
    pub fn from_raw(raw: u32) -> Option<Kind> {
        Some(match raw {
            1 => Kind::Topic,
            2 => Kind::Mutex,
            3 => Kind::Semaphore,
            4 => Kind::Event,
            5 => Kind::Array,
            6 => Kind::Pool,
            7 => Kind::Queue,
            8 => Kind::Value,
            9 => Kind::Barrier,
            10 => Kind::Shared,
            _ => return None,
        })
    }

    /// The lowercase name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Topic => "topic",
            Kind::Mutex => "mutex",
            Kind::Semaphore => "semaphore",
            Kind::Event => "event",
            Kind::Array => "array",
            Kind::Pool => "pool",
            Kind::Queue => "queue",
            Kind::Value => "value",
            Kind::Barrier => "barrier",
            Kind::Shared => "shared",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long a segment lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u32)]
pub enum Lifetime {
    /// Removed when the last process using it leaves or dies.
    #[default]
    Scoped = 0,
    /// Kept until it is unlinked, whoever uses it.
    Persistent = 1,
}

impl Lifetime {
    /// The lifetime stored as `raw`, if known.
    pub fn from_raw(raw: u32) -> Option<Lifetime> {
        match raw {
            0 => Some(Lifetime::Scoped),
            1 => Some(Lifetime::Persistent),
            _ => None,
        }
    }
}

/// Where each participant's liveness lease sits: byte offsets relative to
/// [`LEASE_BASE`](crate::liveness::LEASE_BASE) of the segment file (see [`crate::liveness`]).
pub mod lease {
    /// A topic's publisher row `p` is alive while lease byte `TOPIC_PUBLISHER + p` is held.
    pub const TOPIC_PUBLISHER: u64 = 0;
    /// A topic's subscriber row `k` is alive while lease byte `TOPIC_SUBSCRIBER + k` is held.
    pub const TOPIC_SUBSCRIBER: u64 = 1024;
    /// Every process that maps a pool segment holds a shared lease on this byte of it.
    pub const POOL_MAPPER: u64 = 0;
    /// A handle's row `r` for the robust mutex of its segment (its holder id `r + 1`) is alive
    /// while lease byte `MUTEX_HOLDER + r` is held (apart from every other role's bytes).
    pub const MUTEX_HOLDER: u64 = 1 << 20;
    /// Mutex rows of a segment: how many handles may use its mutex at once.
    pub const MUTEX_ROWS: u32 = 4096;
    /// A queue's participant row `r` is alive while lease byte `QUEUE_ROW + r` is held.
    pub const QUEUE_ROW: u64 = 0;
    /// A barrier's party row `r` is alive while lease byte `BARRIER_PARTY + r` is held.
    pub const BARRIER_PARTY: u64 = 0;

    /// The lease byte of topic publisher row `p`.
    pub fn topic_publisher(p: u32) -> u64 {
        TOPIC_PUBLISHER + u64::from(p)
    }

    /// The lease byte of topic subscriber row `k`.
    pub fn topic_subscriber(k: u32) -> u64 {
        TOPIC_SUBSCRIBER + u64::from(k)
    }

    /// The lease byte of queue participant row `r`.
    pub fn queue_row(r: u32) -> u64 {
        QUEUE_ROW + u64::from(r)
    }

    /// The lease byte of barrier party row `r`.
    pub fn barrier_party(r: u32) -> u64 {
        BARRIER_PARTY + u64::from(r)
    }
}

/// A work queue segment's payload (`docs/architecture.md` §15): the robust queue mutex at offset
/// 0, the header words at [`HEADER_OFFSET`](queue::HEADER_OFFSET), then the slot table, the ready
/// ring, the free ring, the participant rows and the slots' data.
pub mod queue {
    /// Payload offset of the queue's header words (after the robust mutex).
    pub const HEADER_OFFSET: usize = 64;
    /// Payload offset of the slot table (after the four cache lines of header words).
    pub const SLOTS_OFFSET: usize = 320;
    /// Bytes of one slot table entry: the state word and the sequence number.
    pub const SLOT_ENTRY_SIZE: usize = 16;
    /// Data slots are a multiple of this many bytes, and start at a multiple of it.
    pub const SLOT_ALIGN: usize = 64;
    /// Most items a queue can hold.
    pub const MAX_CAPACITY: u32 = 1 << 20;
    /// Most participant rows a queue can have (the row field of a slot word has 24 bits).
    pub const MAX_ROWS: u32 = 4096;

    /// Delivery modes (the header's `params[MODE]`).
    pub mod mode {
        /// An item taken by a consumer that dies before it is done is lost, and counted.
        pub const AT_MOST_ONCE: u64 = 0;
        /// An item is done only when acknowledged; a dead or refusing consumer's items are
        /// delivered again, up to `MAX_DELIVERIES` times, then dead-lettered.
        pub const ACKNOWLEDGED: u64 = 1;
    }

    /// States of a slot (bits 0..8 of its state word; bits 8..32 hold the participant row,
    /// bits 32..64 the deliveries so far).
    pub mod slot {
        /// Free: in the free ring.
        pub const FREE: u64 = 0;
        /// Reserved by a producer row, being written.
        pub const RESERVED: u64 = 1;
        /// Holds an item, in the ready ring.
        pub const READY: u64 = 2;
        /// Taken by a consumer row, not done yet.
        pub const TAKEN: u64 = 3;
        /// Bit position of the row.
        pub const ROW_SHIFT: u32 = 8;
        /// Bit position of the delivery count.
        pub const DELIVERIES_SHIFT: u32 = 32;
    }

    /// Indices of a queue header's `params` (written once by the creator).
    pub mod param {
        /// Items the queue holds at most.
        pub const CAPACITY: usize = 0;
        /// Bytes per data slot.
        pub const SLOT_SIZE: usize = 1;
        /// Participant rows.
        pub const ROWS: usize = 2;
        /// Delivery mode (see [`mode`](super::mode)).
        pub const MODE: usize = 3;
        /// Deliveries after which an item is dead-lettered (acknowledged mode).
        pub const MAX_DELIVERIES: usize = 4;
    }

    /// Indices of a queue header's `counters`.
    pub mod counter {
        /// Items put.
        pub const PUT: usize = 0;
        /// Deliveries (items taken, redeliveries included).
        pub const TAKEN: usize = 1;
        /// Items done (acknowledged, or released by an at-most-once consumer).
        pub const DONE: usize = 2;
        /// Items lost with an at-most-once consumer that died holding them.
        pub const LOST: usize = 3;
        /// Items given back (refused or held by a dead consumer) and queued again.
        pub const REDELIVERED: usize = 4;
        /// Items given up after `MAX_DELIVERIES` deliveries.
        pub const DEAD_LETTERED: usize = 5;
        /// Reservations given back unwritten (dropped, or of producers that died).
        pub const ABANDONED: usize = 6;
        /// Times a locker found the lock's holder dead and rebuilt the rings.
        pub const REPAIRS: usize = 7;
    }
}

/// Shared values, barriers and shared states (`docs/architecture.md` §16).
pub mod value {
    /// Payload offset of a locked value's bytes, or of a shared state's first buffer header
    /// (after the robust mutex).
    pub const DATA_OFFSET: usize = 64;
    /// The header's `params[ATOMIC]`: 1 when the value is accessed with atomic instructions
    /// (sizes 1, 2, 4, 8), 0 when under the robust mutex.
    pub const ATOMIC: usize = 0;
    /// The header's `params[SIZE]`: the value's size.
    pub const SIZE: usize = 1;
    /// A barrier's `params[PARTIES]`: how many parties each generation waits for.
    pub const PARTIES: usize = 0;
    /// A shared state's `params[CAPACITY]`: bytes of one encoded state buffer.
    pub const CAPACITY: usize = 0;
}

/// A topic segment's payload: the publish mutex, then the ring at [`RING_OFFSET`](topic::RING_OFFSET).
pub mod topic {
    /// Payload offset of the ring (after the robust publish mutex).
    pub const RING_OFFSET: usize = 128;

    /// Indices of a topic header's `params` (written once by the creator, for tools).
    pub mod param {
        /// Ring entries.
        pub const CAPACITY: usize = 0;
        /// Bytes per slot.
        pub const SLOT_SIZE: usize = 1;
        /// Most subscribers.
        pub const MAX_SUBSCRIBERS: usize = 2;
        /// Most publishers.
        pub const MAX_PUBLISHERS: usize = 3;
        /// 1 for back-pressure, 0 for overwrite.
        pub const BACK_PRESSURE: usize = 4;
        /// Number of slots.
        pub const SLOTS: usize = 5;
        /// 1 when publishers record publish times.
        pub const TIMESTAMPS: usize = 6;
    }
}

/// Indices of a topic header's `counters` (what tools show).
pub mod counter {
    /// Messages published.
    pub const PUBLISHED: usize = 0;
    /// Messages subscribers missed by lagging, summed over subscribers.
    pub const LAGGED: usize = 1;
    /// Messages lost with a publisher that died while publishing them.
    pub const LOST: usize = 2;
    /// Times a publisher had to wait for a slow subscriber.
    pub const BACKPRESSURE_WAITS: usize = 3;
    /// Number of counters the ring uses.
    pub const COUNT: usize = 4;
}

/// Indices of an array header's `params`: `[dtype, ndim, shape[0..6]]`.
pub mod array_param {
    /// The dtype's code.
    pub const DTYPE: usize = 0;
    /// Number of dimensions.
    pub const NDIM: usize = 1;
    /// The first dimension's extent; at most six fit.
    pub const SHAPE: usize = 2;
}

/// Indices of an array-pool segment's `params`: `[pool_id, index, block_size, block_count]`.
pub mod pool_param {
    /// The publisher's pool id.
    pub const POOL_ID: usize = 0;
    /// The segment's index within the pool.
    pub const INDEX: usize = 1;
    /// Bytes per block.
    pub const BLOCK_SIZE: usize = 2;
    /// Blocks in the segment.
    pub const BLOCK_COUNT: usize = 3;
}

/// Type names that shmbus derives rather than the application.
pub mod type_name {
    /// Array topics record `array+<metadata type name>`.
    pub const ARRAY_TOPIC_PREFIX: &str = "array+";
    /// Queues of array items record `array-item+<metadata type name>`.
    pub const ARRAY_QUEUE_PREFIX: &str = "array-item+";
    /// The type name of array-pool segments.
    pub const POOL: &str = "shmbus.array-pool";
}

/// The framing of serde (postcard) messages in a slot: a little-endian `u32` length, then that
/// many bytes of postcard.
///
/// # Examples
///
/// ```
/// use shmbus_core::wire::frame;
///
/// let mut slot = [0u8; 16];
/// let body = frame::body_mut(&mut slot);
/// body[..3].copy_from_slice(b"abc");
/// frame::set_len(&mut slot, 3).unwrap();
/// assert_eq!(frame::message(&slot).unwrap(), b"abc");
/// slot[0] = 200; // a length past the end of the slot
/// assert!(frame::message(&slot).is_err());
/// ```
pub mod frame {
    /// Bytes of the length prefix.
    pub const LEN_PREFIX: usize = 4;

    /// Why a slot does not hold a well-framed message.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum FrameError {
        /// The slot cannot even hold the prefix.
        #[error("a slot of {0} bytes cannot hold the {LEN_PREFIX}-byte length prefix")]
        TooShort(usize),
        /// The prefix names more bytes than follow it.
        #[error("length prefix {len} exceeds the {room} bytes after it")]
        Overrun {
            /// The length found.
            len: u64,
            /// The bytes after the prefix.
            room: usize,
        },
    }

    /// The bytes after the prefix, where the encoder writes (empty if the slot is too short).
    pub fn body_mut(slot: &mut [u8]) -> &mut [u8] {
        slot.get_mut(LEN_PREFIX..).unwrap_or_default()
    }

    /// How many message bytes a slot of `slot_len` bytes holds.
    pub fn capacity(slot_len: usize) -> usize {
        slot_len.saturating_sub(LEN_PREFIX)
    }

    /// Writes the prefix for a message of `len` bytes already in [`body_mut`].
    pub fn set_len(slot: &mut [u8], len: usize) -> Result<(), FrameError> {
        let room = capacity(slot.len());
        if slot.len() < LEN_PREFIX {
            return Err(FrameError::TooShort(slot.len()));
        }
        let small = u32::try_from(len).ok().filter(|&l| l as usize <= room);
        let Some(l) = small else {
            return Err(FrameError::Overrun {
                len: len as u64,
                room,
            });
        };
        slot[..LEN_PREFIX].copy_from_slice(&l.to_le_bytes());
        Ok(())
    }

    /// The message bytes of a framed slot, checked against the slot's length.
    pub fn message(slot: &[u8]) -> Result<&[u8], FrameError> {
        let Some((prefix, body)) = slot.split_first_chunk::<LEN_PREFIX>() else {
            return Err(FrameError::TooShort(slot.len()));
        };
        let len = u32::from_le_bytes(*prefix);
        usize::try_from(len)
            .ok()
            .and_then(|l| body.get(..l))
            .ok_or(FrameError::Overrun {
                len: u64::from(len),
                room: body.len(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_lifetimes_round_trip() {
        for raw in 0..16 {
            if let Some(k) = Kind::from_raw(raw) {
                assert_eq!(k as u32, raw);
            }
            if let Some(l) = Lifetime::from_raw(raw) {
                assert_eq!(l as u32, raw);
            }
        }
        assert_eq!(Kind::from_raw(0), None);
        assert_eq!(Lifetime::from_raw(2), None);
    }

    #[test]
    fn frames_refuse_overruns_at_every_length() {
        for slot_len in 0..12 {
            let mut slot = vec![0u8; slot_len];
            for len in 0..16 {
                match frame::set_len(&mut slot, len) {
                    Ok(()) => assert_eq!(frame::message(&slot).unwrap().len(), len),
                    Err(_) => assert!(slot_len < frame::LEN_PREFIX || len > slot_len - 4),
                }
            }
        }
        let mut slot = [0xffu8; 8];
        assert_eq!(
            frame::message(&slot),
            Err(frame::FrameError::Overrun {
                len: u64::from(u32::MAX),
                room: 4
            })
        );
        slot[..4].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(frame::message(&slot).unwrap(), &[0xff; 4]);
    }
}
