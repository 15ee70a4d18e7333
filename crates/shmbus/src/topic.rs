//! Typed publish/subscribe topics.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use bytemuck::Pod;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shmbus_core::layout::{short_type_name, Codec, TypeInfo};
use shmbus_core::name::Name;
use shmbus_core::pool::{PoolOptions, PoolPublisher, PoolSubscriber};
use shmbus_core::ring::Overflow;
use shmbus_core::topic::{
    Copied, Held, Loan as RawLoan, LoanError, PublishManyError, RawPublisher, RawSubscriber,
    RawTopic, ReceiveError, Received, TopicError, TopicOptions,
};
use shmbus_core::wire::{counter, type_name::ARRAY_TOPIC_PREFIX};

#[cfg(feature = "async")]
mod aio;
#[cfg(feature = "async")]
pub use aio::{Samples, SerdeSubscriberStream, SubscriberStream};

use crate::error::{OpenError, PublishError, PublishFailure, RecvError, SendError, SendFailure};
use crate::frames::{self, ArrayPublisher, ArraySubscriber};
use crate::serde_slot::{self, DecodeFailure, EncodeFailure};

/// Builds publishers and subscribers of one topic.
///
/// Settings left alone take the topic's value when it exists (or the default when this call
/// creates it). A setting given explicitly is a requirement: opening an existing topic that
/// cannot honour it fails with a QoS error naming both values.
///
/// # Examples
///
/// ```
/// use shmbus::{Overflow, Topic};
///
/// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
/// #[repr(C)]
/// struct Pose { x: f64, y: f64, theta: f64 }
///
/// # let name = format!("doc-topic-{}", std::process::id());
/// let topic = Topic::builder(&name).capacity(8).overflow(Overflow::Overwrite);
/// let mut publisher = topic.publisher::<Pose>()?;
/// let subscriber = topic.subscriber::<Pose>()?;
///
/// let mut loan = publisher.loan()?;          // a slot in shared memory
/// *loan = Pose { x: 1.0, y: 2.0, theta: 0.5 }; // written in place
/// loan.publish().expect("an overwrite topic never refuses a publish");
///
/// let sample = subscriber.try_recv()?;      // read in place, no copy
/// assert_eq!(sample.x, 1.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Topic {
    name: String,
    opts: TopicOptions,
    history: u32,
    publish_timeout: Option<Duration>,
    type_name: Option<String>,
    /// The stable name and layout fingerprint of a `Message` type ([`Topic::join`]).
    identity: Option<(&'static str, u64)>,
    pool: PoolOptions,
}

impl Topic {
    /// Starts building publishers/subscribers of the topic `name` (validated when a publisher or
    /// subscriber is made).
    pub fn builder(name: &str) -> Topic {
        Topic {
            name: name.to_owned(),
            opts: TopicOptions::default(),
            history: 0,
            publish_timeout: Some(Duration::from_secs(1)),
            type_name: None,
            identity: None,
            pool: PoolOptions::default(),
        }
    }

    /// Array topics: blocks per new pool segment (default 4).
    pub fn pool_blocks_per_segment(mut self, n: u32) -> Self {
        self.pool.blocks_per_segment = n;
        self
    }

    /// Array topics: most bytes of blocks the publisher's pool holds (default 1 GiB). Beyond
    /// it the overflow policy applies: overwrite withdraws the oldest unread array,
    /// back-pressure waits for a block to come back.
    pub fn pool_max_bytes(mut self, bytes: u64) -> Self {
        self.pool.max_bytes = bytes;
        self
    }

    /// Array topics: how many of the newest large arrays (blocks of at least
    /// [`EAGER_RETURN_BYTES`](shmbus_core::pool::EAGER_RETURN_BYTES), 4 MiB) stay in the
    /// ring for late joiners after every subscriber has read them (default 1). Older read ones
    /// give their blocks back at once, so a stream of large frames touches two or three blocks
    /// rather than `capacity + 1`; smaller arrays leave with their ring entries.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::Topic;
    ///
    /// # let name = format!("doc-pool-history-{}", std::process::id());
    /// let topic = Topic::builder(&name)
    ///     .capacity(8)
    ///     .pool_history(1)
    ///     .pool_blocks_per_segment(1); // grow a block at a time, to count them
    /// let mut publisher = topic.array_publisher::<u64>()?;
    /// let viewer = topic.array_subscriber::<u64>()?;
    /// for frame in 0..10u64 {
    ///     let mut loan = publisher.loan::<u8>(&[8 << 20])?; // an 8 MiB frame
    ///     *loan.parts_mut().1 = frame;
    ///     loan.publish().map_err(|e| e.to_string())?;
    ///     assert_eq!(*viewer.try_recv()?.meta(), frame); // read, then dropped
    /// }
    /// // Each frame read went back to the pool: two blocks served all ten.
    /// assert_eq!(publisher.pool_stats().blocks, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pool_history(mut self, n: u32) -> Self {
        self.pool.history = n;
        self
    }

    /// Array topics: how long a departing publisher waits for subscribers to map the blocks of
    /// arrays still in flight (default 2 s).
    pub fn pool_linger(mut self, t: Duration) -> Self {
        self.pool.linger = t;
        self
    }

    /// Ring entries: how many published messages stay readable (default 16).
    pub fn capacity(mut self, n: u32) -> Self {
        self.opts.capacity = Some(n);
        self
    }

    /// What happens when a subscriber falls a whole ring behind (default
    /// [`Overflow::Overwrite`]).
    pub fn overflow(mut self, o: Overflow) -> Self {
        self.opts.overflow = Some(o);
        self
    }

    /// Whether publishers record each message's publish time, which subscribers read with
    /// [`Sample::published_at`] and `shmbus hz` turns into latency (default off: it costs one
    /// clock read, about 20 ns, per publish). Asking for it on an existing topic without it is
    /// a QoS error.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::Topic;
    ///
    /// # let name = format!("doc-stamps-{}", std::process::id());
    /// let topic = Topic::builder(&name).timestamps(true);
    /// let mut publisher = topic.publisher::<u64>()?;
    /// let subscriber = topic.subscriber::<u64>()?;
    /// publisher.send(7)?;
    /// let sample = subscriber.try_recv()?;
    /// let sent = sample.published_at().expect("the topic records publish times");
    /// assert!(shmbus::monotonic_ns() >= sent);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn timestamps(mut self, on: bool) -> Self {
        self.opts.timestamps = Some(on);
        self
    }

    /// Most subscribers at once (default 8, at most 56).
    pub fn max_subscribers(mut self, n: u32) -> Self {
        self.opts.max_subscribers = Some(n);
        self
    }

    /// Most publishers at once (default 1). With one, publishing takes no lock; with more,
    /// every publish takes a robust process-shared mutex (uncontended: two atomic operations).
    pub fn max_publishers(mut self, n: u32) -> Self {
        self.opts.max_publishers = Some(n);
        self
    }

    /// Most samples one subscriber may hold at once (default 2).
    pub fn max_held(mut self, n: u32) -> Self {
        self.opts.max_held = Some(n);
        self
    }

    /// Bytes per slot for serde messages, 4 of which hold the encoded length (default 256 when
    /// creating; when opening, a requirement: the topic's slots must be at least this big).
    /// Plain-old-data messages take their size.
    pub fn slot_size(mut self, bytes: u32) -> Self {
        self.opts.slot_size = Some(bytes);
        self
    }

    /// A new subscriber first reads up to `n` of the most recent messages (default 0: only
    /// messages published after it joined). In back-pressure mode the history is best-effort:
    /// a message overwritten while the subscriber joins is reported as lag.
    pub fn history(mut self, n: u32) -> Self {
        self.history = n;
        self
    }

    /// How long a back-pressured publish waits for room (default 1 s; `None`: no limit).
    pub fn publish_timeout(mut self, t: Option<Duration>) -> Self {
        self.publish_timeout = t;
        self
    }

    /// Permission bits when creating the topic (default `0o600`, owner only).
    pub fn mode(mut self, mode: u32) -> Self {
        self.opts.mode = Some(mode);
        self
    }

    /// The type name recorded in the topic (default: Rust's type name, or the name of a
    /// [`Message`](crate::Message) type joined with [`Topic::join`]). Set the same name in
    /// every program that shares the topic when their crates name the type differently.
    pub fn type_name(mut self, name: &str) -> Self {
        self.type_name = Some(name.to_owned());
        self
    }

    /// This builder, recording the stable `name` (unless [`Topic::type_name`] set one) and
    /// the `layout` fingerprint of the type instead of Rust's type name.
    pub(crate) fn identified(&self, name: &'static str, layout: u64) -> Topic {
        let mut this = self.clone();
        this.identity = Some((name, layout));
        this
    }

    /// The name recorded for `T` unless [`Topic::type_name`] set one.
    fn default_name<T>(&self) -> &'static str {
        self.identity
            .map_or_else(short_type_name::<T>, |(name, _)| name)
    }

    fn open(&self, info: TypeInfo, slot_size: u32) -> Result<Arc<RawTopic>, OpenError> {
        let name = Name::new(&self.name)?;
        let mut opts = self.opts.clone();
        opts.slot_size = Some(slot_size);
        Ok(RawTopic::open_or_create(&name, &info, &opts)?)
    }

    fn type_info(
        &self,
        default_name: &str,
        size: u64,
        align: u64,
        codec: Codec,
    ) -> Result<TypeInfo, OpenError> {
        let name = self.type_name.as_deref().unwrap_or(default_name);
        let info = match self.identity {
            Some((_, layout)) => TypeInfo::with_layout(name, size, align, codec, layout),
            None => TypeInfo::new(name, size, align, codec),
        };
        info.ok_or_else(|| OpenError::UnsupportedType {
            type_name: name.to_owned(),
            reason: format!("type names are limited to {} bytes", TypeInfo::MAX_NAME),
        })
    }

    fn pod_topic<T: Pod>(&self) -> Result<Arc<RawTopic>, OpenError> {
        let (size, align) = (size_of::<T>(), align_of::<T>());
        if size == 0 || align > 64 || size > u32::MAX as usize {
            return Err(OpenError::UnsupportedType {
                type_name: self.default_name::<T>().to_owned(),
                reason: format!("size {size} and alignment {align}: need a non-zero size and alignment at most 64"),
            });
        }
        let info = self.type_info(
            self.default_name::<T>(),
            size as u64,
            align as u64,
            Codec::Pod,
        )?;
        self.open(info, size as u32)
    }

    fn serde_topic<T>(&self) -> Result<Arc<RawTopic>, OpenError> {
        // The slot size is a QoS (checked against the topic's), not part of the type: size 0
        // stands for "variable-length encoding".
        let info = self.type_info(self.default_name::<T>(), 0, 1, Codec::Postcard)?;
        let name = Name::new(&self.name)?;
        let mut opts = self.opts.clone();
        opts.default_slot_size = Some(256);
        Ok(RawTopic::open_or_create(&name, &info, &opts)?)
    }

    fn array_topic<M: Pod>(&self) -> Result<Arc<RawTopic>, OpenError> {
        let meta = size_of::<M>();
        if align_of::<M>() > 64 || meta > u32::MAX as usize / 2 {
            return Err(OpenError::UnsupportedType {
                type_name: self.default_name::<M>().to_owned(),
                reason: "array metadata needs an alignment of at most 64".into(),
            });
        }
        let default = format!("{ARRAY_TOPIC_PREFIX}{}", self.default_name::<M>());
        let size = frames::slot_size::<M>();
        let info = self.type_info(&default, size as u64, 64, Codec::Pod)?;
        self.open(info, size as u32)
    }

    /// Joins (creating the topic if needed) as the publisher of N-d arrays with metadata `M`
    /// (`()` for none). An array topic has one publisher; see [`ArrayPublisher`].
    pub fn array_publisher<M: Pod>(&self) -> Result<ArrayPublisher<M>, OpenError> {
        let mut this = self.clone();
        this.opts.max_publishers = Some(1);
        let topic = this.array_topic::<M>()?;
        if topic.config().max_publishers != 1 {
            return Err(OpenError::Topic(TopicError::Qos {
                name: topic.name().clone(),
                what: "max publishers",
                requested: "1 (an array topic)".into(),
                found: topic.config().max_publishers.to_string(),
            }));
        }
        let pool = PoolPublisher::new(topic, self.pool.clone())?;
        Ok(ArrayPublisher::new(pool, self.publish_timeout))
    }

    /// Joins (creating the topic if needed) as a subscriber of N-d arrays with metadata `M`.
    pub fn array_subscriber<M: Pod>(&self) -> Result<ArraySubscriber<M>, OpenError> {
        let mut this = self.clone();
        this.opts.max_publishers = None;
        let topic = this.array_topic::<M>()?;
        let pool = PoolSubscriber::new(topic, self.history)?;
        Ok(ArraySubscriber::new(pool))
    }

    /// Joins (creating the topic if needed) as a publisher of plain-old-data `T`.
    pub fn publisher<T: Pod>(&self) -> Result<Publisher<T>, OpenError> {
        let raw = RawPublisher::new(self.pod_topic::<T>()?)?;
        Ok(Publisher {
            raw,
            timeout: self.publish_timeout,
            _t: PhantomData,
        })
    }

    /// Joins (creating the topic if needed) as a subscriber of plain-old-data `T`.
    pub fn subscriber<T: Pod>(&self) -> Result<Subscriber<T>, OpenError> {
        let raw = RawSubscriber::new(self.pod_topic::<T>()?, self.history)?;
        Ok(Subscriber {
            raw,
            _t: PhantomData,
        })
    }

    /// Joins (creating the topic if needed) as a publisher of serde-encoded `T`.
    pub fn serde_publisher<T: Serialize>(&self) -> Result<SerdePublisher<T>, OpenError> {
        let raw = RawPublisher::new(self.serde_topic::<T>()?)?;
        Ok(SerdePublisher {
            raw,
            timeout: self.publish_timeout,
            _t: PhantomData,
        })
    }

    /// Joins (creating the topic if needed) as a subscriber of serde-encoded `T`.
    pub fn serde_subscriber<T: DeserializeOwned>(&self) -> Result<SerdeSubscriber<T>, OpenError> {
        let raw = RawSubscriber::new(self.serde_topic::<T>()?, self.history)?;
        Ok(SerdeSubscriber {
            raw,
            _t: PhantomData,
        })
    }
}

/// Counters of a topic, shared by every participant (what `shmbus inspect` shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicStats {
    /// Messages published.
    pub published: u64,
    /// Messages subscribers missed by lagging, summed over subscribers.
    pub lagged: u64,
    /// Messages lost with a publisher that died while publishing them.
    pub lost: u64,
    /// Times a publisher waited for a slow subscriber.
    pub backpressure_waits: u64,
    /// Subscribers joined right now.
    pub subscribers: u32,
    /// Publishers joined right now.
    pub publishers: u32,
}

pub(crate) fn stats(topic: &RawTopic) -> TopicStats {
    let r = topic.ring();
    TopicStats {
        published: r.counter_value(counter::PUBLISHED),
        lagged: r.counter_value(counter::LAGGED),
        lost: r.counter_value(counter::LOST),
        backpressure_waits: r.counter_value(counter::BACKPRESSURE_WAITS),
        subscribers: (0..r.config().max_subscribers)
            .filter(|&k| r.subscriber_active(k))
            .count() as u32,
        publishers: (0..r.config().max_publishers)
            .filter(|&p| r.publisher_active(p))
            .count() as u32,
    }
}

/// Publishes plain-old-data messages of type `T`, written in place in shared memory.
///
/// What is zero-copy: [`loan`](Publisher::loan) hands out the slot itself, so the message is
/// written once, where every subscriber reads it. [`send`](Publisher::send) copies a value you
/// already have into the slot (one copy, the write itself).
pub struct Publisher<T: Pod> {
    raw: RawPublisher,
    timeout: Option<Duration>,
    _t: PhantomData<fn(T)>,
}

impl<T: Pod> fmt::Debug for Publisher<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher").field("raw", &self.raw).finish()
    }
}

impl<T: Pod> Publisher<T> {
    /// Loans a slot to write the next message in. It holds the bytes of an earlier message
    /// (any bytes are a valid `T`); overwrite what you need, then [`Loan::publish`].
    /// Dropping the loan unpublished gives the slot back.
    pub fn loan(&mut self) -> Result<Loan<'_, T>, LoanError> {
        let raw = self.raw.loan()?;
        Ok(Loan {
            publisher: self,
            raw: Some(raw),
        })
    }

    /// Copies `value` into a slot and publishes it; returns its sequence number.
    ///
    /// # Errors
    ///
    /// Every error hands `value` back ([`SendError::into_inner`]). The reason is
    /// [`PublishFailure::Timeout`] (in [`SendFailure::Publish`]) in back-pressure mode when the
    /// slowest live subscriber made no room in time, [`PublishFailure::UsedAfterFork`] in a
    /// forked child, and [`SendFailure::NoSlot`] if no slot is free.
    pub fn send(&mut self, value: T) -> Result<u64, SendError<T>> {
        let loan = match self.raw.loan() {
            Ok(l) => l,
            Err(e) => return Err(SendError::new(value, e)),
        };
        self.raw.slot_mut(&loan)[..size_of::<T>()].copy_from_slice(bytemuck::bytes_of(&value));
        self.raw.publish(loan, self.timeout).map_err(|(e, loan)| {
            self.raw.cancel(loan);
            SendError::new(value, PublishFailure::from(e))
        })
    }

    /// Publishes every value of `values`, in order, as consecutive messages, and returns the
    /// sequence number of the first (for no values, the number the next message will have).
    /// Faster than a `send` per value: the publisher fences and looks for sleeping subscribers
    /// once per chunk of up to 8 messages (and before it waits for room), evicts the messages
    /// a chunk overwrites without an atomic read-modify-write while nobody holds them, and on a
    /// topic with several publishers takes the publish lock once.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send)'s; the error's [`value`](SendError::value) is how many of
    /// `values` were published before it (the first ones; the rest were not).
    ///
    /// ```
    /// # let name = format!("doc-send-many-{}", std::process::id());
    /// let topic = shmbus::Topic::builder(&name).capacity(16);
    /// let mut publisher = topic.publisher::<u32>()?;
    /// let subscriber = topic.subscriber::<u32>()?;
    /// assert_eq!(publisher.send_many(&[7, 8, 9]).unwrap(), 0);
    /// let mut got = Vec::new();
    /// subscriber.try_recv_many(&mut got, 16)?;
    /// assert_eq!(got, [7, 8, 9]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_many(&mut self, values: &[T]) -> Result<u64, SendError<usize>> {
        self.send_many_with(values.len(), |i, m| *m = values[i])
    }

    /// Publishes `count` messages in a row as [`send_many`](Self::send_many) does, each written
    /// in place: `write(i, message)` fills message `i` straight in its slot in shared memory,
    /// as a [`loan`](Self::loan) is written, with nothing copied on the way. The message starts
    /// as whatever its slot held last (any bytes are a valid `T`): write all of it.
    ///
    /// # Errors
    ///
    /// As [`send_many`](Self::send_many)'s: the error's [`value`](SendError::value) is how many
    /// messages were published before it (`write` was not called for the rest).
    ///
    /// ```
    /// # let name = format!("doc-send-many-with-{}", std::process::id());
    /// let topic = shmbus::Topic::builder(&name).capacity(16);
    /// let mut publisher = topic.publisher::<[u64; 4]>()?;
    /// let subscriber = topic.subscriber::<[u64; 4]>()?;
    /// publisher.send_many_with(3, |i, m| *m = [i as u64; 4]).unwrap();
    /// let mut got = Vec::new();
    /// subscriber.try_recv_many(&mut got, 16)?;
    /// assert_eq!(got, [[0; 4], [1; 4], [2; 4]]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_many_with(
        &mut self,
        count: usize,
        mut write: impl FnMut(usize, &mut T),
    ) -> Result<u64, SendError<usize>> {
        // The slots are 64-byte aligned and hold a `T` (checked at open), as for a loan.
        self.raw
            .publish_many_pod(count, self.timeout, &mut write)
            .map_err(|(e, sent)| match e {
                PublishManyError::Publish(e) => SendError::new(sent, PublishFailure::from(e)),
                PublishManyError::Loan(e) => SendError::new(sent, e),
            })
    }

    /// The topic's counters.
    pub fn stats(&self) -> TopicStats {
        stats(self.raw.topic())
    }

    /// Whether this handle created the topic.
    pub fn created_topic(&self) -> bool {
        self.raw.topic().created()
    }
}

/// A slot on loan from a [`Publisher`]: dereferences to the message in shared memory.
pub struct Loan<'a, T: Pod> {
    publisher: &'a mut Publisher<T>,
    raw: Option<RawLoan>,
}

impl<T: Pod> fmt::Debug for Loan<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loan").field("raw", &self.raw).finish()
    }
}

impl<'a, T: Pod> Loan<'a, T> {
    /// Publishes the message; returns its sequence number.
    ///
    /// # Errors
    ///
    /// In back-pressure mode, [`PublishFailure::Timeout`] with the loan handed back.
    pub fn publish(mut self) -> Result<u64, PublishError<Loan<'a, T>>> {
        let raw = self.raw.take().expect("a loan is published once");
        let timeout = self.publisher.timeout;
        match self.publisher.raw.publish(raw, timeout) {
            Ok(seq) => Ok(seq),
            Err((e, raw)) => {
                self.raw = Some(raw);
                Err(SendError::new(self, PublishFailure::from(e)))
            }
        }
    }
}

impl<T: Pod> Deref for Loan<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        let raw = self.raw.as_ref().expect("loan present until published");
        // The slot is 64-byte aligned and at least size_of::<T>() long (checked at open).
        let bytes = self.publisher.raw.slot(raw);
        bytemuck::from_bytes(&bytes[..size_of::<T>()])
    }
}

impl<T: Pod> DerefMut for Loan<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        let raw = self.raw.as_ref().expect("loan present until published");
        let bytes = self.publisher.raw.slot_mut(raw);
        bytemuck::from_bytes_mut(&mut bytes[..size_of::<T>()])
    }
}

impl<T: Pod> Drop for Loan<'_, T> {
    fn drop(&mut self) {
        if let Some(raw) = self.raw.take() {
            self.publisher.raw.cancel(raw);
        }
    }
}

fn receive(raw: &RawSubscriber, timeout: Option<Option<Duration>>) -> Result<Held, RecvError> {
    let r = match timeout {
        None => raw.try_receive(),
        Some(t) => raw.receive(t),
    };
    let empty = if timeout.is_none() {
        RecvError::Empty
    } else {
        RecvError::Timeout
    };
    to_held(r, empty)
}

/// What a receive found, as the typed API reports it (`empty`: what nothing is).
pub(crate) fn to_held(
    r: Result<Received, ReceiveError>,
    empty: RecvError,
) -> Result<Held, RecvError> {
    match r {
        Ok(Received::Message(h)) => Ok(h),
        Ok(Received::Empty) => Err(empty),
        Ok(Received::Lagged(n)) => Err(RecvError::Lagged(n)),
        Ok(Received::Disconnected) => Err(RecvError::Disconnected),
        Err(ReceiveError::TooManyHeld(n)) => Err(RecvError::TooManyHeld(n)),
        Err(ReceiveError::Corrupt { reason, .. }) => Err(RecvError::Corrupt(reason)),
        Err(ReceiveError::UsedAfterFork(_)) => Err(RecvError::UsedAfterFork),
    }
}

/// The room [`Subscriber::recv_each`] makes for a batch at first: one run of
/// [`RawSubscriber::try_copy_into`].
const BATCH_RUN: usize = 32;

/// Copies up to `max` messages out (see [`RawSubscriber::try_copy`]), handing each to `each`
/// with its sequence number, waiting as [`receive`] does when `timeout` is `Some`.
fn copy_each<T: Pod>(
    raw: &RawSubscriber,
    max: usize,
    timeout: Option<Option<Duration>>,
    mut each: impl FnMut(u64, T),
) -> Result<usize, RecvError> {
    let mut buf = T::zeroed();
    let buf = bytemuck::bytes_of_mut(&mut buf);
    let mut give = |bytes: &[u8], seq: u64, _: Option<u64>| {
        each(seq, bytemuck::pod_read_unaligned(bytes));
    };
    let r = match timeout {
        None => raw.try_copy(buf, max, &mut give),
        Some(t) => raw.copy(buf, max, t, &mut give),
    };
    copied(r, timeout)
}

/// What a copying receive found, as the typed API reports it (`timeout` as [`copy_each`] takes
/// it: `None` for a receive that does not wait).
#[inline]
fn copied(
    r: Result<Copied, ReceiveError>,
    timeout: Option<Option<Duration>>,
) -> Result<usize, RecvError> {
    match r {
        Ok(Copied::Messages(n)) => Ok(n),
        Ok(Copied::Empty) if timeout.is_none() => Err(RecvError::Empty),
        Ok(Copied::Empty) => Err(RecvError::Timeout),
        Ok(Copied::Lagged(n)) => Err(RecvError::Lagged(n)),
        Ok(Copied::Disconnected) => Err(RecvError::Disconnected),
        Err(ReceiveError::TooManyHeld(n)) => Err(RecvError::TooManyHeld(n)),
        Err(ReceiveError::Corrupt { reason, .. }) => Err(RecvError::Corrupt(reason)),
        Err(ReceiveError::UsedAfterFork(_)) => Err(RecvError::UsedAfterFork),
    }
}

/// Receives plain-old-data messages of type `T`, read in place in shared memory or copied out.
///
/// What is zero-copy: a [`Sample`] dereferences to the slot the publisher wrote; nothing is
/// copied, in either overflow mode. While a sample is held its slot is never reused (the
/// publisher takes another one), so a sample never changes under the reader.
///
/// For small messages, copying is cheaper than holding: [`try_recv_copy`](Self::try_recv_copy)
/// and [`try_recv_many`](Self::try_recv_many) copy the message out and check afterwards that it
/// was not overwritten meanwhile, so they write nothing shared per message (a held sample costs
/// two atomic read-modify-writes on a word the publisher also writes); the batch stores the
/// subscriber's cursor once for all the messages it takes.
///
/// ```
/// # let name = format!("doc-many-{}", std::process::id());
/// let topic = shmbus::Topic::builder(&name).capacity(64);
/// let mut publisher = topic.publisher::<u64>()?;
/// let subscriber = topic.subscriber::<u64>()?;
/// for i in 0..10 {
///     publisher.send(i).unwrap();
/// }
/// let mut batch = Vec::new();
/// assert_eq!(subscriber.try_recv_many(&mut batch, 100)?, 10);
/// assert_eq!(batch, (0..10).collect::<Vec<u64>>());
/// assert!(matches!(subscriber.try_recv_copy(), Err(shmbus::RecvError::Empty)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Subscriber<T: Pod> {
    raw: RawSubscriber,
    _t: PhantomData<fn() -> T>,
}

impl<T: Pod> fmt::Debug for Subscriber<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("raw", &self.raw)
            .finish()
    }
}

impl<T: Pod> Subscriber<T> {
    /// The next message, if there is one now. Errors: `Empty`, `Lagged`, `TooManyHeld`,
    /// `Corrupt` (see [`RecvError`]).
    pub fn try_recv(&self) -> Result<Sample<'_, T>, RecvError> {
        receive(&self.raw, None).map(|held| Sample {
            sub: &self.raw,
            held: Some(held),
            _t: PhantomData,
        })
    }

    /// The next message, waiting up to `timeout`. Errors: `Timeout`, `Lagged`, `Disconnected`,
    /// `TooManyHeld`, `Corrupt`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Sample<'_, T>, RecvError> {
        receive(&self.raw, Some(Some(timeout))).map(|held| Sample {
            sub: &self.raw,
            held: Some(held),
            _t: PhantomData,
        })
    }

    /// The next message, waiting as long as a publisher lives. Errors: `Lagged`,
    /// `Disconnected` (every publisher this subscriber saw is gone), `TooManyHeld`, `Corrupt`.
    pub fn recv(&self) -> Result<Sample<'_, T>, RecvError> {
        receive(&self.raw, Some(None)).map(|held| Sample {
            sub: &self.raw,
            held: Some(held),
            _t: PhantomData,
        })
    }

    /// The next message, copied out, if there is one now. No slot is held: the copy is checked
    /// afterwards to be intact (a message overwritten while it was copied is reported as
    /// `Lagged`), so nothing shared is written but the cursor. Errors: `Empty`, `Lagged`,
    /// `Corrupt`, `UsedAfterFork`.
    pub fn try_recv_copy(&self) -> Result<T, RecvError> {
        let mut got = None;
        copy_each(&self.raw, 1, None, |_, v| got = Some(v))?;
        got.ok_or(RecvError::Empty)
    }

    /// [`try_recv_copy`](Self::try_recv_copy), waiting up to `timeout`. Errors: `Timeout`,
    /// `Lagged`, `Disconnected`, `Corrupt`, `UsedAfterFork`.
    pub fn recv_copy_timeout(&self, timeout: Duration) -> Result<T, RecvError> {
        let mut got = None;
        copy_each(&self.raw, 1, Some(Some(timeout)), |_, v| got = Some(v))?;
        got.ok_or(RecvError::Timeout)
    }

    /// [`try_recv_copy`](Self::try_recv_copy), waiting as long as a publisher lives. Errors:
    /// `Lagged`, `Disconnected`, `Corrupt`, `UsedAfterFork`.
    pub fn recv_copy(&self) -> Result<T, RecvError> {
        let mut got = None;
        copy_each(&self.raw, 1, Some(None), |_, v| got = Some(v))?;
        got.ok_or(RecvError::Timeout)
    }

    /// Appends every message available now, up to `max`, to `out`, copied out as by
    /// [`try_recv_copy`](Self::try_recv_copy), and returns how many (at least one). The cursor
    /// is stored once for the whole batch (under back-pressure that is also one fence and one
    /// check for a waiting publisher, not one per message). A batch ends before a lag: the
    /// messages read before it are returned, and the next call reports it. Errors: `Empty`,
    /// `Lagged`, `Corrupt`, `UsedAfterFork`.
    pub fn try_recv_many(&self, out: &mut Vec<T>, max: usize) -> Result<usize, RecvError> {
        copied(self.raw.try_copy_into(out, max, |_, _| {}), None)
    }

    /// [`try_recv_many`](Self::try_recv_many), waiting up to `timeout` for the first message.
    /// Errors: `Timeout`, `Lagged`, `Disconnected`, `Corrupt`, `UsedAfterFork`.
    pub fn recv_many_timeout(
        &self,
        out: &mut Vec<T>,
        max: usize,
        timeout: Duration,
    ) -> Result<usize, RecvError> {
        copied(
            self.raw.copy_into(out, max, Some(timeout), |_, _| {}),
            Some(Some(timeout)),
        )
    }

    /// A batch as [`try_recv_many`](Self::try_recv_many) takes it, handed to `each` message by
    /// message with its sequence number instead of collected; waits up to `timeout` for the
    /// first message (`None`: as long as a publisher lives; `Some(Duration::ZERO)` does not
    /// wait, and reports `Timeout` for nothing). Returns how many were handed over.
    pub fn recv_each(
        &self,
        max: usize,
        timeout: Option<Duration>,
        mut each: impl FnMut(u64, T),
    ) -> Result<usize, RecvError> {
        if max <= 1 {
            // One message: straight from the slot to `each`, no buffer to allocate.
            return copy_each(&self.raw, max, Some(timeout), each);
        }
        // Runs are copied into a buffer, then handed over (`RawSubscriber::try_copy_into`).
        let mut batch = Vec::with_capacity(max.min(BATCH_RUN));
        let r = self.raw.copy_into(&mut batch, max, timeout, |seq, values| {
            for (i, &v) in values.iter().enumerate() {
                each(seq.wrapping_add(i as u64), v);
            }
        });
        copied(r, Some(timeout))
    }

    /// The topic's counters.
    pub fn stats(&self) -> TopicStats {
        stats(self.raw.topic())
    }
}

/// A received message, read in place. The slot returns to the pool when the sample is dropped.
pub struct Sample<'a, T: Pod> {
    sub: &'a RawSubscriber,
    held: Option<Held>,
    _t: PhantomData<&'a T>,
}

impl<T: Pod> Sample<'_, T> {
    /// The message's sequence number (0 for the first message of the topic).
    pub fn seq(&self) -> u64 {
        self.held.as_ref().map_or(0, Held::seq)
    }

    /// When the message was published, in [`monotonic_ns`](crate::monotonic_ns) (`None`
    /// unless the topic was made with [`Topic::timestamps`]).
    pub fn published_at(&self) -> Option<u64> {
        self.held.as_ref().and_then(|h| self.sub.published_at(h))
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for Sample<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sample")
            .field("seq", &self.seq())
            .field("value", &**self)
            .finish()
    }
}

impl<T: Pod> Deref for Sample<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        let held = self.held.as_ref().expect("held until dropped");
        let bytes = self.sub.slot(held);
        bytemuck::from_bytes(&bytes[..size_of::<T>()])
    }
}

impl<T: Pod> Drop for Sample<'_, T> {
    fn drop(&mut self) {
        if let Some(h) = self.held.take() {
            self.sub.release(h);
        }
    }
}

/// Publishes serde messages of type `T`, encoded with postcard straight into the slot.
///
/// What is zero-copy: the encoder writes into shared memory (no intermediate buffer); a
/// subscriber decodes from shared memory. The encoding and decoding are the only passes over
/// the data.
pub struct SerdePublisher<T: Serialize> {
    raw: RawPublisher,
    timeout: Option<Duration>,
    _t: PhantomData<fn(T)>,
}

impl<T: Serialize> fmt::Debug for SerdePublisher<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerdePublisher")
            .field("raw", &self.raw)
            .finish()
    }
}

impl<T: Serialize> SerdePublisher<T> {
    /// Encodes `value` into a slot and publishes it; returns its sequence number.
    ///
    /// # Errors
    ///
    /// Every error hands `value` back. [`SendFailure::TooLarge`] (with both sizes) when the
    /// encoding does not fit in a slot; [`PublishFailure::Timeout`] under back-pressure.
    pub fn send(&mut self, value: T) -> Result<u64, SendError<T>> {
        let loan = match self.raw.loan() {
            Ok(l) => l,
            Err(e) => return Err(SendError::new(value, e)),
        };
        if let Err(f) = serde_slot::encode(&value, self.raw.slot_mut(&loan)) {
            self.raw.cancel(loan);
            let f = match f {
                EncodeFailure::TooLarge { size, capacity } => {
                    SendFailure::TooLarge { size, capacity }
                }
                EncodeFailure::Encode(e) => SendFailure::Encode(e),
            };
            return Err(SendError::new(value, f));
        }
        match self.raw.publish(loan, self.timeout) {
            Ok(seq) => Ok(seq),
            Err((e, loan)) => {
                self.raw.cancel(loan);
                Err(SendError::new(value, PublishFailure::from(e)))
            }
        }
    }

    /// The topic's counters.
    pub fn stats(&self) -> TopicStats {
        stats(self.raw.topic())
    }
}

/// Receives serde messages of type `T`, decoded from the slot.
pub struct SerdeSubscriber<T: DeserializeOwned> {
    raw: RawSubscriber,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> fmt::Debug for SerdeSubscriber<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerdeSubscriber")
            .field("raw", &self.raw)
            .finish()
    }
}

impl<T: DeserializeOwned> SerdeSubscriber<T> {
    fn decode(&self, held: Held) -> Result<(u64, T), RecvError> {
        let seq = held.seq();
        let r = serde_slot::decode(self.raw.slot(&held)).map_err(|e| match e {
            DecodeFailure::Frame(e) => RecvError::Corrupt(e.to_string()),
            DecodeFailure::Decode(e) => RecvError::Decode(e),
        });
        self.raw.release(held);
        r.map(|v| (seq, v))
    }

    /// The next message, if there is one now (see [`Subscriber::try_recv`]).
    pub fn try_recv(&self) -> Result<T, RecvError> {
        self.decode(receive(&self.raw, None)?).map(|(_, v)| v)
    }

    /// The next message, waiting up to `timeout` (see [`Subscriber::recv_timeout`]).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvError> {
        self.decode(receive(&self.raw, Some(Some(timeout)))?)
            .map(|(_, v)| v)
    }

    /// The next message, waiting as long as a publisher lives (see [`Subscriber::recv`]).
    pub fn recv(&self) -> Result<T, RecvError> {
        self.decode(receive(&self.raw, Some(None))?).map(|(_, v)| v)
    }

    /// The next message with its sequence number, waiting up to `timeout`.
    pub fn recv_timeout_with_seq(&self, timeout: Duration) -> Result<(u64, T), RecvError> {
        self.decode(receive(&self.raw, Some(Some(timeout)))?)
    }

    /// The topic's counters.
    pub fn stats(&self) -> TopicStats {
        stats(self.raw.topic())
    }
}

impl<T: Pod> crate::waitset::sealed::Sealed for Subscriber<T> {
    fn source(&self) -> shmbus_core::waitset::Source<'_> {
        shmbus_core::waitset::Source::Subscriber(&self.raw)
    }
}

impl<T: DeserializeOwned> crate::waitset::sealed::Sealed for SerdeSubscriber<T> {
    fn source(&self) -> shmbus_core::waitset::Source<'_> {
        shmbus_core::waitset::Source::Subscriber(&self.raw)
    }
}
