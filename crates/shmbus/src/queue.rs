//! Work queues: [`Queue`] (plain-old-data items, in place) and [`SerdeQueue`] (serde items).
//!
//! A queue is a bounded multi-producer, multi-consumer line of items in one named segment:
//! every item goes to exactly one consumer. Any process opens it by name and may both put and
//! get. See [`Queue`] for the two delivery modes and what a dead participant leaves behind.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use bytemuck::Pod;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shmbus_core::layout::{short_type_name, Codec, TypeInfo};
use shmbus_core::name::Name;
use shmbus_core::queue::{
    QueueError, QueueOpenError, QueueOptions, QueueStats, RawDelivery, RawQueue,
};
use shmbus_core::segment::Lifetime;
use shmbus_core::sync::LockError;

use crate::error::{OpenError, SendError};
use crate::serde_slot::{self, EncodeFailure};

/// Items up to this size are put and got in one lock hold each (the copy holds the lock);
/// larger ones are written and read outside the lock, between two holds.
const INLINE: usize = 512;

/// Why a put failed. The item is handed back in the [`PutError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PutFailure {
    /// No slot became free before the timeout.
    #[error("timed out waiting for room in the queue")]
    Timeout,
    /// Every slot is taken (non-blocking put).
    #[error("the queue is full")]
    Full,
    /// The queue was closed.
    #[error("the queue is closed")]
    Closed,
    /// The encoded item does not fit in a slot (serde queues).
    #[error("the item needs {size} bytes; a slot holds {capacity}")]
    TooLarge {
        /// Bytes the encoding needs.
        size: usize,
        /// Bytes a slot holds.
        capacity: usize,
    },
    /// The item could not be encoded (serde queues).
    #[error("the item could not be encoded: {0}")]
    Encode(String),
    /// The array's shape or length is not valid (array queues).
    #[error("invalid array: {0}")]
    InvalidArray(String),
    /// The queue's lock or memory failed.
    #[error("the queue failed: {0}")]
    Queue(String),
    /// The handle was made before a `fork` and this process is the child.
    #[error(transparent)]
    UsedAfterFork(#[from] shmbus_core::fork::UsedAfterFork),
}

/// A failed put: why ([`PutFailure`]), and the item handed back.
pub type PutError<T> = SendError<T, PutFailure>;

impl From<QueueError> for PutFailure {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Timeout => PutFailure::Timeout,
            QueueError::Full => PutFailure::Full,
            QueueError::Closed => PutFailure::Closed,
            QueueError::UsedAfterFork(f) => PutFailure::UsedAfterFork(f),
            e => PutFailure::Queue(e.to_string()),
        }
    }
}

/// Why a get (or an acknowledgement) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// No item is ready (non-blocking get).
    #[error("the queue is empty")]
    Empty,
    /// No item before the timeout.
    #[error("no item before the timeout")]
    Timeout,
    /// The queue was closed and every item was taken.
    #[error("the queue is closed and drained")]
    Closed,
    /// The item could not be decoded (serde queues); it is refused, like a failed delivery.
    #[error("the item could not be decoded: {0}")]
    Decode(String),
    /// The item is no longer this handle's (its row was reclaimed as dead).
    #[error("the item was reclaimed from this participant")]
    Reclaimed,
    /// The array holds another element type than asked for (array queues).
    #[error("the array holds {found}, not {expected}")]
    WrongDtype {
        /// The element type asked for.
        expected: shmbus_core::dtype::Dtype,
        /// The element type of the array.
        found: shmbus_core::dtype::Dtype,
    },
    /// The queue's lock failed for good.
    #[error("the queue lock failed: {0}")]
    Lock(LockError),
    /// The queue's memory is inconsistent.
    #[error("the queue is corrupt: {0}")]
    Corrupt(String),
    /// The handle was made before a `fork` and this process is the child.
    #[error(transparent)]
    UsedAfterFork(#[from] shmbus_core::fork::UsedAfterFork),
}

impl From<QueueError> for GetError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Timeout => GetError::Timeout,
            QueueError::Empty => GetError::Empty,
            QueueError::Closed => GetError::Closed,
            QueueError::Full => GetError::Corrupt("full on a get".into()),
            QueueError::Lock(l) => GetError::Lock(l),
            QueueError::Corrupt(c) => GetError::Corrupt(c),
            QueueError::NotOwner => GetError::Reclaimed,
            QueueError::UsedAfterFork(f) => GetError::UsedAfterFork(f),
        }
    }
}

/// How a queue is made (when it does not exist yet) and joined.
///
/// # Examples
///
/// ```
/// use shmbus::QueueBuilder;
///
/// let name = format!("doc-queue-builder-{}", std::process::id());
/// let q = QueueBuilder::new(&name).capacity(8).acknowledged(3).open::<u64>()?;
/// assert_eq!((q.capacity(), q.is_acknowledged()), (8, true));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct QueueBuilder {
    name: String,
    opts: QueueOptions,
    create: bool,
    array_bytes: Option<usize>,
}

impl QueueBuilder {
    /// Starts describing the queue `name`: created if it does not exist, with the defaults
    /// unless set.
    pub fn new(name: &str) -> QueueBuilder {
        QueueBuilder {
            name: name.to_owned(),
            opts: QueueOptions::default(),
            create: true,
            array_bytes: None,
        }
    }

    /// Items the queue holds at most (default 64). On an existing queue, a requirement.
    pub fn capacity(mut self, n: u32) -> Self {
        self.opts.capacity = Some(n);
        self
    }

    /// Bytes per item slot at least (default: the item's size, or 256 for serde items).
    pub fn slot_size(mut self, bytes: u32) -> Self {
        self.opts.slot_size = Some(bytes);
        self
    }

    /// Participant rows: how many handles (producers and consumers) may be open at once
    /// (default 32).
    pub fn max_participants(mut self, n: u32) -> Self {
        self.opts.rows = Some(n);
        self
    }

    /// Acknowledged delivery: an item is done only when acknowledged ([`Delivery::ack`]); a
    /// consumer that dies (or refuses, or drops the delivery) gives it back, and after
    /// `max_deliveries` deliveries it is dead-lettered (counted in
    /// [`QueueStats::dead_lettered`] and dropped). On an existing queue, a requirement.
    pub fn acknowledged(mut self, max_deliveries: u32) -> Self {
        self.opts.acknowledged = Some(true);
        self.opts.max_deliveries = Some(max_deliveries);
        self
    }

    /// At-most-once delivery (the default): an item taken by a consumer that dies before it is
    /// done is lost, and counted ([`QueueStats::lost`]). On an existing queue, a requirement.
    pub fn at_most_once(mut self) -> Self {
        self.opts.acknowledged = Some(false);
        self
    }

    /// File mode when creating (default `0o600`).
    pub fn mode(mut self, mode: u32) -> Self {
        self.opts.mode = Some(mode & 0o777);
        self
    }

    /// Keep the queue (and its items) when its last user leaves, until
    /// [`unlink`](crate::unlink) (default: removed with its last user).
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.opts.lifetime = Some(if persistent {
            Lifetime::Persistent
        } else {
            Lifetime::Scoped
        });
        self
    }

    /// Only open an existing queue; do not create one.
    pub fn existing(mut self) -> Self {
        self.create = false;
        self
    }

    fn raw(&self, info: &TypeInfo) -> Result<RawQueue, OpenError> {
        let name = Name::new(&self.name)?;
        let r = if self.create {
            RawQueue::open_or_create(&name, info, &self.opts)
        } else {
            RawQueue::open(&name, info, &self.opts)
        };
        r.map_err(|e| match e {
            QueueOpenError::Segment(s) => OpenError::Segment(s),
            e => OpenError::Queue(e),
        })
    }

    /// Opens (creating if needed) a queue of plain-old-data items `T`.
    ///
    /// # Errors
    ///
    /// [`OpenError::UnsupportedType`] for a zero-sized `T` or one aligned above 64; those of
    /// opening a segment; [`OpenError::Queue`] for a configuration the queue does not match
    /// or when every participant row is taken.
    pub fn open<T: Pod>(&self) -> Result<Queue<T>, OpenError> {
        let (size, align) = (size_of::<T>(), align_of::<T>());
        if size == 0 || align > 64 || size > u32::MAX as usize / 2 {
            return Err(OpenError::UnsupportedType {
                type_name: short_type_name::<T>().to_owned(),
                reason: format!("size {size} and alignment {align}: a queue item needs a non-zero size and an alignment of at most 64"),
            });
        }
        Ok(Queue {
            raw: Arc::new(self.raw(&TypeInfo::pod::<T>())?),
            _t: PhantomData,
        })
    }

    /// Opens (creating if needed) a queue of serde items `T`, encoded with postcard.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_serde<T>(&self) -> Result<SerdeQueue<T>, OpenError> {
        let type_name = short_type_name::<T>();
        let info = TypeInfo::new(type_name, 0, 1, Codec::Postcard).ok_or_else(|| {
            OpenError::UnsupportedType {
                type_name: type_name.to_owned(),
                reason: format!("type names are limited to {} bytes", TypeInfo::MAX_NAME),
            }
        })?;
        let mut this = self.clone();
        if this.opts.slot_size.is_none() {
            this.opts.slot_size = Some(if self.create { 256 } else { 1 });
        }
        Ok(SerdeQueue {
            raw: Arc::new(this.raw(&info)?),
            _t: PhantomData,
        })
    }
}

fn common(raw: &RawQueue) -> (u32, bool) {
    (raw.config().capacity, raw.config().acknowledged)
}

/// A bounded multi-producer, multi-consumer work queue of plain-old-data items `T`, shared by
/// every process that opens it by name. Each item goes to exactly one consumer.
///
/// Items are copied into a slot by [`put`](Self::put) and out of it by [`get`](Self::get);
/// [`receive`](Self::receive) instead hands out a [`Delivery`] that reads the item in place.
///
/// # Delivery modes
///
/// Chosen when the queue is created ([`QueueBuilder`]):
///
/// - **At most once** (default): a taken item is the consumer's. If the consumer dies while it
///   holds a [`Delivery`], the item is lost and counted in [`QueueStats::lost`].
/// - **Acknowledged**: an item is done only when [`Delivery::ack`]ed. A delivery dropped
///   without `ack`, [refused](Delivery::refuse), or held by a consumer that died, is given
///   back at the front of the line, to be delivered again ([`Delivery::deliveries`] counts);
///   after the queue's delivery limit it is dead-lettered ([`QueueStats::dead_lettered`]).
///   [`get`](Self::get) acknowledges as it copies.
///
/// # Dead participants
///
/// A producer or consumer killed at any instruction never blocks the others: the queue's lock
/// is robust, and its reservations and deliveries are reclaimed by whoever next looks for dead
/// participants (blocked calls look every 50 ms).
///
/// # Examples
///
/// ```
/// use shmbus::{GetError, QueueBuilder};
/// use std::time::Duration;
///
/// let name = format!("doc-queue-{}", std::process::id());
/// // In the producer:
/// let jobs = QueueBuilder::new(&name).capacity(16).open::<[u32; 2]>()?;
/// jobs.put([1, 2])?;
/// jobs.put([3, 4])?;
/// jobs.close()?; // no more work: consumers drain what is left, then see `Closed`
/// // In a consumer (another process, usually):
/// let worker = QueueBuilder::new(&name).existing().open::<[u32; 2]>()?;
/// assert_eq!(worker.get_timeout(Duration::from_secs(1))?, [1, 2]);
/// let job = worker.receive()?; // in place
/// assert_eq!(*job, [3, 4]);
/// job.ack()?;
/// assert!(matches!(worker.get(), Err(GetError::Closed)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Queue<T: Pod> {
    raw: Arc<RawQueue>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T: Pod> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue").field("raw", &self.raw).finish()
    }
}

/// Queue methods that do not depend on the item type.
macro_rules! queue_common {
    () => {
        /// The queue's name.
        pub fn name(&self) -> &str {
            self.raw.name().as_str()
        }

        /// Items the queue holds at most.
        pub fn capacity(&self) -> u32 {
            common(&self.raw).0
        }

        /// Whether the queue acknowledges deliveries (else: at most once).
        pub fn is_acknowledged(&self) -> bool {
            common(&self.raw).1
        }

        /// Items ready now (taken items are not counted).
        pub fn len(&self) -> u32 {
            self.raw.len()
        }

        /// Whether no item is ready now.
        pub fn is_empty(&self) -> bool {
            self.raw.is_empty()
        }

        /// Whether the queue was closed.
        pub fn is_closed(&self) -> bool {
            self.raw.is_closed()
        }

        /// The queue's counters.
        pub fn stats(&self) -> QueueStats {
            self.raw.stats()
        }

        /// Whether this handle created the queue.
        pub fn created(&self) -> bool {
            self.raw.created()
        }

        /// Closes the queue for every participant: puts fail with [`PutFailure::Closed`];
        /// gets take what is left, then fail with [`GetError::Closed`].
        ///
        /// # Errors
        ///
        /// [`GetError::Lock`] or [`GetError::UsedAfterFork`].
        pub fn close(&self) -> Result<(), GetError> {
            Ok(self.raw.close()?)
        }

        /// Looks for participants that died now (blocked calls do it every 50 ms) and gives
        /// back what they held; returns how many items were lost, delivered again, or
        /// dead-lettered.
        pub fn reclaim_dead(&self) -> shmbus_core::queue::Reclaimed {
            self.raw.reclaim_dead()
        }
    };
}

impl<T: Pod> Queue<T> {
    queue_common!();

    fn put_with(&self, value: T, timeout: Option<Duration>) -> Result<(), PutError<T>> {
        if size_of::<T>() <= INLINE {
            return self
                .raw
                .put_copy(bytemuck::bytes_of(&value), timeout)
                .map_err(|e| SendError::new(value, e));
        }
        let mut r = match self.raw.reserve(timeout) {
            Ok(r) => r,
            Err(e) => return Err(SendError::new(value, e)),
        };
        r.bytes_mut()[..size_of::<T>()].copy_from_slice(bytemuck::bytes_of(&value));
        r.commit().map_err(|e| SendError::new(value, e))
    }

    /// Puts `value` at the back of the line, waiting for room as long as it takes.
    ///
    /// # Errors
    ///
    /// [`PutFailure::Closed`], [`PutFailure::Queue`], [`PutFailure::UsedAfterFork`]; the
    /// value is handed back.
    pub fn put(&self, value: T) -> Result<(), PutError<T>> {
        self.put_with(value, None)
    }

    /// As [`put`](Self::put), waiting at most `timeout` ([`PutFailure::Timeout`]).
    pub fn put_timeout(&self, value: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_with(value, Some(timeout))
    }

    /// As [`put`](Self::put), without waiting ([`PutFailure::Full`]).
    pub fn try_put(&self, value: T) -> Result<(), PutError<T>> {
        self.put_with(value, Some(Duration::ZERO))
    }

    fn receive_with(&self, timeout: Option<Duration>) -> Result<Delivery<'_, T>, GetError> {
        Ok(Delivery {
            raw: Some(self.raw.take(timeout)?),
            _t: PhantomData,
        })
    }

    /// Takes the front item in place, waiting as long as it takes. See [`Delivery`].
    ///
    /// # Errors
    ///
    /// [`GetError::Closed`] once the queue is closed and drained; [`GetError::Lock`],
    /// [`GetError::Corrupt`], [`GetError::UsedAfterFork`].
    pub fn receive(&self) -> Result<Delivery<'_, T>, GetError> {
        self.receive_with(None)
    }

    /// As [`receive`](Self::receive), waiting at most `timeout` ([`GetError::Timeout`]).
    pub fn receive_timeout(&self, timeout: Duration) -> Result<Delivery<'_, T>, GetError> {
        self.receive_with(Some(timeout))
    }

    /// As [`receive`](Self::receive), without waiting ([`GetError::Empty`]).
    pub fn try_receive(&self) -> Result<Delivery<'_, T>, GetError> {
        self.receive_with(Some(Duration::ZERO))
    }

    fn get_with(&self, timeout: Option<Duration>) -> Result<T, GetError> {
        if size_of::<T>() <= INLINE {
            let mut v = T::zeroed();
            self.raw.get_copy(bytemuck::bytes_of_mut(&mut v), timeout)?;
            return Ok(v);
        }
        let d = self.receive_with(timeout)?;
        let v = *d;
        d.ack()?;
        Ok(v)
    }

    /// Takes the front item (a copy), waiting as long as it takes; in acknowledged mode it is
    /// acknowledged as it is copied.
    ///
    /// # Errors
    ///
    /// As [`receive`](Self::receive).
    pub fn get(&self) -> Result<T, GetError> {
        self.get_with(None)
    }

    /// As [`get`](Self::get), waiting at most `timeout` ([`GetError::Timeout`]).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.get_with(Some(timeout))
    }

    /// As [`get`](Self::get), without waiting ([`GetError::Empty`]).
    pub fn try_get(&self) -> Result<T, GetError> {
        self.get_with(Some(Duration::ZERO))
    }
}

/// An item taken from a [`Queue`], read in place: it dereferences to the item.
///
/// Finish it with [`ack`](Self::ack). Dropped without: in acknowledged mode the item is given
/// back to be delivered again (as with [`refuse`](Self::refuse)); in at-most-once mode it is
/// done. If this process dies while holding it, the item is delivered again (acknowledged) or
/// lost and counted (at most once).
///
/// # Examples
///
/// ```
/// use shmbus::QueueBuilder;
///
/// let name = format!("doc-delivery-{}", std::process::id());
/// let q = QueueBuilder::new(&name).acknowledged(2).open::<u32>()?;
/// q.put(7)?;
/// let first = q.receive()?;
/// assert_eq!((*first, first.deliveries()), (7, 1));
/// drop(first); // not acknowledged: back in line
/// let second = q.receive()?;
/// assert_eq!((*second, second.deliveries()), (7, 2));
/// second.refuse()?; // the delivery limit (2) is reached: dead-lettered
/// assert_eq!(q.stats().dead_lettered, 1);
/// assert!(q.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Delivery<'q, T: Pod> {
    raw: Option<RawDelivery<'q>>,
    _t: PhantomData<&'q T>,
}

impl<T: Pod + fmt::Debug> fmt::Debug for Delivery<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("item", &**self)
            .field("deliveries", &self.deliveries())
            .finish()
    }
}

impl<T: Pod> Deref for Delivery<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        let raw = self.raw.as_ref().expect("present until consumed");
        bytemuck::from_bytes(&raw.bytes()[..size_of::<T>()])
    }
}

impl<T: Pod> Delivery<'_, T> {
    /// How many times the item has been delivered, this time included (1: the first).
    pub fn deliveries(&self) -> u32 {
        self.raw.as_ref().map_or(0, |r| r.deliveries())
    }

    /// The item is done.
    ///
    /// # Errors
    ///
    /// [`GetError::Reclaimed`] if this handle's items were reclaimed meanwhile (it was taken
    /// for dead), [`GetError::Lock`], [`GetError::UsedAfterFork`].
    pub fn ack(mut self) -> Result<(), GetError> {
        let raw = self.raw.take().expect("present until consumed");
        Ok(raw.ack()?)
    }

    /// Gives the item back: delivered again, or dead-lettered at the delivery limit.
    ///
    /// # Errors
    ///
    /// As [`ack`](Self::ack).
    pub fn refuse(mut self) -> Result<(), GetError> {
        let raw = self.raw.take().expect("present until consumed");
        raw.refuse()?;
        Ok(())
    }
}

/// A work queue of serde items `T`, encoded with postcard into the slot (framed:
/// [`shmbus_core::wire::frame`]). Otherwise as [`Queue`].
///
/// # Examples
///
/// ```
/// use shmbus::{QueueBuilder, SerdeQueue};
///
/// let name = format!("doc-serde-queue-{}", std::process::id());
/// let q: SerdeQueue<String> = QueueBuilder::new(&name).acknowledged(3).open_serde()?;
/// q.put("resize img-001.png".to_owned())?;
/// let job = q.receive()?;
/// assert_eq!(job.value(), "resize img-001.png");
/// job.ack()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SerdeQueue<T> {
    raw: Arc<RawQueue>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> fmt::Debug for SerdeQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerdeQueue")
            .field("raw", &self.raw)
            .finish()
    }
}

impl<T> SerdeQueue<T> {
    queue_common!();
}

impl<T: Serialize> SerdeQueue<T> {
    fn put_with(&self, value: T, timeout: Option<Duration>) -> Result<(), PutError<T>> {
        let mut r = match self.raw.reserve(timeout) {
            Ok(r) => r,
            Err(e) => return Err(SendError::new(value, e)),
        };
        if let Err(f) = serde_slot::encode(&value, r.bytes_mut()) {
            let f = match f {
                EncodeFailure::TooLarge { size, capacity } => {
                    PutFailure::TooLarge { size, capacity }
                }
                EncodeFailure::Encode(e) => PutFailure::Encode(e),
            };
            return Err(SendError::new(value, f));
        }
        r.commit().map_err(|e| SendError::new(value, e))
    }

    /// Encodes `value` into a slot at the back of the line, waiting for room as long as it
    /// takes.
    ///
    /// # Errors
    ///
    /// As [`Queue::put`], and [`PutFailure::TooLarge`], [`PutFailure::Encode`].
    pub fn put(&self, value: T) -> Result<(), PutError<T>> {
        self.put_with(value, None)
    }

    /// As [`put`](Self::put), waiting at most `timeout`.
    pub fn put_timeout(&self, value: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_with(value, Some(timeout))
    }

    /// As [`put`](Self::put), without waiting.
    pub fn try_put(&self, value: T) -> Result<(), PutError<T>> {
        self.put_with(value, Some(Duration::ZERO))
    }
}

impl<T: DeserializeOwned> SerdeQueue<T> {
    fn receive_with(&self, timeout: Option<Duration>) -> Result<SerdeDelivery<'_, T>, GetError> {
        let raw = self.raw.take(timeout)?;
        let decoded = serde_slot::decode(raw.bytes()).map_err(|e| e.to_string());
        match decoded {
            Ok(value) => Ok(SerdeDelivery {
                value,
                raw: Some(raw),
            }),
            Err(e) => {
                // An item nobody can decode is refused (and so dead-lettered at the limit).
                let _ = raw.refuse();
                Err(GetError::Decode(e))
            }
        }
    }

    /// Takes and decodes the front item, waiting as long as it takes. See [`SerdeDelivery`].
    ///
    /// # Errors
    ///
    /// As [`Queue::receive`], and [`GetError::Decode`].
    pub fn receive(&self) -> Result<SerdeDelivery<'_, T>, GetError> {
        self.receive_with(None)
    }

    /// As [`receive`](Self::receive), waiting at most `timeout`.
    pub fn receive_timeout(&self, timeout: Duration) -> Result<SerdeDelivery<'_, T>, GetError> {
        self.receive_with(Some(timeout))
    }

    /// As [`receive`](Self::receive), without waiting.
    pub fn try_receive(&self) -> Result<SerdeDelivery<'_, T>, GetError> {
        self.receive_with(Some(Duration::ZERO))
    }

    fn get_with(&self, timeout: Option<Duration>) -> Result<T, GetError> {
        self.receive_with(timeout)?.into_acked()
    }

    /// Takes and decodes the front item; in acknowledged mode it is acknowledged at once.
    ///
    /// # Errors
    ///
    /// As [`receive`](Self::receive).
    pub fn get(&self) -> Result<T, GetError> {
        self.get_with(None)
    }

    /// As [`get`](Self::get), waiting at most `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.get_with(Some(timeout))
    }

    /// As [`get`](Self::get), without waiting.
    pub fn try_get(&self) -> Result<T, GetError> {
        self.get_with(Some(Duration::ZERO))
    }
}

/// A decoded item taken from a [`SerdeQueue`]; finished as a [`Delivery`] is.
pub struct SerdeDelivery<'q, T> {
    value: T,
    raw: Option<RawDelivery<'q>>,
}

impl<T: fmt::Debug> fmt::Debug for SerdeDelivery<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerdeDelivery")
            .field("value", &self.value)
            .field("deliveries", &self.deliveries())
            .finish()
    }
}

impl<T> SerdeDelivery<'_, T> {
    /// The decoded item.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// How many times the item has been delivered, this time included.
    pub fn deliveries(&self) -> u32 {
        self.raw.as_ref().map_or(0, |r| r.deliveries())
    }

    /// The item is done.
    ///
    /// # Errors
    ///
    /// As [`Delivery::ack`].
    pub fn ack(mut self) -> Result<(), GetError> {
        let raw = self.raw.take().expect("present until consumed");
        Ok(raw.ack()?)
    }

    /// Acknowledges the item and hands it out.
    ///
    /// # Errors
    ///
    /// As [`Delivery::ack`].
    pub fn into_acked(mut self) -> Result<T, GetError> {
        let raw = self.raw.take().expect("present until consumed");
        raw.ack()?;
        Ok(self.value)
    }

    /// Gives the item back: delivered again, or dead-lettered at the delivery limit.
    ///
    /// # Errors
    ///
    /// As [`Delivery::ack`].
    pub fn refuse(mut self) -> Result<(), GetError> {
        let raw = self.raw.take().expect("present until consumed");
        raw.refuse()?;
        Ok(())
    }
}

// After `queue_common!`, which it uses.
#[cfg(feature = "async")]
mod aio;
mod arrays;
pub use arrays::{ArrayDelivery, ArrayQueue, ArrayQueueLoan, DEFAULT_ARRAY_BYTES};

impl<T: Pod> crate::waitset::sealed::Sealed for Queue<T> {
    fn source(&self) -> shmbus_core::waitset::Source<'_> {
        shmbus_core::waitset::Source::Queue(&self.raw)
    }
}

impl<T> crate::waitset::sealed::Sealed for SerdeQueue<T> {
    fn source(&self) -> shmbus_core::waitset::Source<'_> {
        shmbus_core::waitset::Source::Queue(&self.raw)
    }
}
