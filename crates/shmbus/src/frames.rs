//! Array topics: large arrays in pool blocks, handed over through descriptors in topic slots.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use bytemuck::Pod;
use shmbus_core::dtype::Dtype;
use shmbus_core::pool::{
    BlockLoan, BlockReceiveError, BlockReceived, HeldBlock, PoolPublisher, PoolStats,
    PoolSubscriber, DESCRIPTOR_SIZE,
};
use shmbus_core::topic::ReceiveError;
#[cfg(feature = "async")]
use shmbus_core::topic::Received;

pub use shmbus_core::pool::PoolLoanError;

use crate::array::Element;
use crate::error::{
    ArraySendError, ArraySendFailure, PublishError, PublishFailure, RecvError, SendError,
};
use crate::topic::{stats, TopicStats};

/// Publishes N-d arrays of any size through a topic, zero-copy: each array is written once, in
/// place, into a block of shared memory that subscribers read in place. `M` is plain-old-data
/// metadata sent with every array (a frame number, a timestamp; `()` for none).
///
/// Made by [`Topic::array_publisher`](crate::Topic::array_publisher).
///
/// # Examples
///
/// ```
/// use shmbus::Topic;
/// use std::time::Duration;
///
/// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
/// #[repr(C)]
/// struct FrameInfo { number: u64, timestamp_ns: u64 }
///
/// # let name = format!("doc-frames-{}", std::process::id());
/// let topic = Topic::builder(&name).capacity(4);
/// let mut camera = topic.array_publisher::<FrameInfo>()?;
/// let viewer = topic.array_subscriber::<FrameInfo>()?;
///
/// let mut frame = camera.loan::<u8>(&[480, 640, 3])?;   // a block in shared memory
/// let (pixels, info) = frame.parts_mut();
/// pixels.fill(7);                                         // written in place
/// *info = FrameInfo { number: 1, timestamp_ns: 0 };
/// frame.publish().expect("published");
///
/// let got = viewer.recv_timeout(Duration::from_secs(1))?; // read in place
/// assert_eq!(got.shape(), &[480, 640, 3]);
/// assert_eq!(got.meta().number, 1);
/// assert!(got.as_slice::<u8>()?.iter().all(|&p| p == 7));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ArrayPublisher<M: Pod> {
    pool: PoolPublisher,
    timeout: Option<Duration>,
    _m: PhantomData<fn(M)>,
}

impl<M: Pod> fmt::Debug for ArrayPublisher<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArrayPublisher")
            .field("pool", &self.pool)
            .finish()
    }
}

impl<M: Pod> ArrayPublisher<M> {
    pub(crate) fn new(pool: PoolPublisher, timeout: Option<Duration>) -> Self {
        ArrayPublisher {
            pool,
            timeout,
            _m: PhantomData,
        }
    }

    /// Loans a block for an array of `T` of `shape` (at most 8 dimensions). Its contents are
    /// those of an earlier array (any bytes are valid `T`): write what you need, then
    /// [`ArrayLoan::publish`]. Dropping the loan gives the block back.
    ///
    /// # Errors
    ///
    /// [`PoolLoanError::Exhausted`] when every block is in use, the pool may not grow, and the
    /// overflow policy frees none (back-pressure: none came back within the publish timeout);
    /// [`PoolLoanError::Segment`] with [`SegmentError::OutOfSpace`](crate::SegmentError) instead
    /// when the pool could not grow because `/dev/shm` is full.
    pub fn loan<T: Element>(
        &mut self,
        shape: &[usize],
    ) -> Result<ArrayLoan<'_, T, M>, PoolLoanError> {
        let raw = self.pool.loan(T::DTYPE, shape, self.timeout)?;
        Ok(ArrayLoan {
            publisher: self,
            raw: Some(raw),
            _t: PhantomData,
        })
    }

    /// Copies `data` (of `shape`) into a block and publishes it with `meta`: one copy, the
    /// write itself. Use [`ArrayPublisher::loan`] to produce the array in place instead.
    ///
    /// # Errors
    ///
    /// Every error hands `meta` back: [`ArraySendFailure::Shape`] when `data` does not hold
    /// `shape`'s elements, [`ArraySendFailure::Pool`] when no block could be loaned,
    /// [`ArraySendFailure::Publish`] when the publish failed.
    pub fn send<T: Element>(
        &mut self,
        shape: &[usize],
        data: &[T],
        meta: M,
    ) -> Result<u64, ArraySendError<M>> {
        let mut loan = match self.loan::<T>(shape) {
            Ok(l) => l,
            Err(e) => return Err(SendError::new(meta, e)),
        };
        let (block, m) = loan.parts_mut();
        if block.len() != data.len() {
            let reason = ArraySendFailure::Shape {
                expected: block.len(),
                found: data.len(),
            };
            return Err(SendError::new(meta, reason));
        }
        block.copy_from_slice(data);
        *m = meta;
        loan.publish().map_err(|e| {
            let (_, reason) = e.into_parts();
            SendError::new(meta, ArraySendFailure::Publish(reason))
        })
    }

    /// The pool's counters (segments, blocks, bytes, in flight, retired, waits).
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// The topic's counters.
    pub fn stats(&self) -> TopicStats {
        stats(self.pool.publisher().topic())
    }
}

/// A block on loan from an [`ArrayPublisher`]: the array's elements and its metadata, both in
/// shared memory.
pub struct ArrayLoan<'a, T: Element, M: Pod> {
    publisher: &'a mut ArrayPublisher<M>,
    raw: Option<BlockLoan>,
    _t: PhantomData<T>,
}

impl<T: Element, M: Pod> fmt::Debug for ArrayLoan<'_, T, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArrayLoan").field("raw", &self.raw).finish()
    }
}

impl<'a, T: Element, M: Pod> ArrayLoan<'a, T, M> {
    /// The array's shape.
    pub fn shape(&self) -> &[usize] {
        self.raw.as_ref().expect("present until published").shape()
    }

    /// The elements and the metadata, writable in place.
    pub fn parts_mut(&mut self) -> (&mut [T], &mut M) {
        let raw = self.raw.as_ref().expect("present until published");
        let (block, meta) = self.publisher.pool.parts_mut(raw);
        (
            bytemuck::try_cast_slice_mut(block).expect("page-aligned block of T's dtype"),
            // The metadata starts 128 bytes into a 64-aligned slot; the topic's slot size was
            // checked to fit it when the topic was opened.
            bytemuck::from_bytes_mut(&mut meta[..size_of::<M>()]),
        )
    }

    /// The elements, writable in place.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        self.parts_mut().0
    }

    /// Publishes the array; returns its sequence number.
    ///
    /// # Errors
    ///
    /// In back-pressure mode, [`PublishFailure::Timeout`] with the loan handed back.
    // The error hands the loan back by value on a rare path (a back-pressure timeout).
    #[allow(clippy::result_large_err)]
    pub fn publish(mut self) -> Result<u64, PublishError<ArrayLoan<'a, T, M>>> {
        let raw = self.raw.take().expect("published once");
        let timeout = self.publisher.timeout;
        match self.publisher.pool.publish(raw, timeout) {
            Ok(seq) => Ok(seq),
            Err((e, raw)) => {
                self.raw = Some(raw);
                Err(SendError::new(self, PublishFailure::from(e)))
            }
        }
    }
}

impl<T: Element, M: Pod> Drop for ArrayLoan<'_, T, M> {
    fn drop(&mut self) {
        if let Some(raw) = self.raw.take() {
            self.publisher.pool.cancel(raw);
        }
    }
}

/// Receives N-d arrays published by an [`ArrayPublisher`], read in place.
///
/// Every descriptor is validated before use (segment, block, bounds, generation); a bad one is
/// reported as [`RecvError::BadDescriptor`] and skipped. While an [`ArraySample`] is held its
/// block is never reused; it returns to the publisher's pool when every subscriber has dropped
/// it, or died.
pub struct ArraySubscriber<M: Pod> {
    pool: PoolSubscriber,
    _m: PhantomData<fn() -> M>,
}

impl<M: Pod> fmt::Debug for ArraySubscriber<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArraySubscriber")
            .field("pool", &self.pool)
            .finish()
    }
}

impl<M: Pod> ArraySubscriber<M> {
    pub(crate) fn new(pool: PoolSubscriber) -> Self {
        ArraySubscriber {
            pool,
            _m: PhantomData,
        }
    }

    fn wrap<'a>(
        r: Result<BlockReceived<'a>, BlockReceiveError>,
        blocking: bool,
    ) -> Result<ArraySample<'a, M>, RecvError> {
        match r {
            Ok(BlockReceived::Block(block)) => Ok(ArraySample {
                block,
                _m: PhantomData,
            }),
            Ok(BlockReceived::Empty) if blocking => Err(RecvError::Timeout),
            Ok(BlockReceived::Empty) => Err(RecvError::Empty),
            Ok(BlockReceived::Lagged(n)) => Err(RecvError::Lagged(n)),
            Ok(BlockReceived::Disconnected) => Err(RecvError::Disconnected),
            Err(BlockReceiveError::BadDescriptor { seq, reason }) => {
                Err(RecvError::BadDescriptor { seq, reason })
            }
            Err(BlockReceiveError::Receive(ReceiveError::TooManyHeld(n))) => {
                Err(RecvError::TooManyHeld(n))
            }
            Err(BlockReceiveError::Receive(ReceiveError::Corrupt { reason, .. })) => {
                Err(RecvError::Corrupt(reason))
            }
            Err(BlockReceiveError::Receive(ReceiveError::UsedAfterFork(_))) => {
                Err(RecvError::UsedAfterFork)
            }
        }
    }

    /// The next array, read in place, awaited: [`recv`](Self::recv) for async code, on any
    /// executor (feature `async`; see [`Subscriber::recv_async`](crate::Subscriber::recv_async)).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::Topic;
    ///
    /// # let name = format!("doc-array-recv-async-{}", std::process::id());
    /// let mut publisher = Topic::builder(&name).array_publisher::<()>()?;
    /// let mut subscriber = Topic::builder(&name).array_subscriber::<()>()?;
    /// publisher.send(&[3], &[1u16, 2, 3], ())?;
    /// let sample = futures::executor::block_on(subscriber.recv_async())?;
    /// assert_eq!(sample.as_slice::<u16>()?, [1, 2, 3]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "async")]
    pub fn recv_async(
        &mut self,
    ) -> impl std::future::Future<Output = Result<ArraySample<'_, M>, RecvError>> + Send + '_ {
        let interest =
            shmbus_core::waitset::reactor::Interest::topic(self.pool.subscriber().topic().clone());
        crate::aio::Op::new(self, interest, |s: &mut ArraySubscriber<M>| {
            match s.pool.subscriber().poll_receive() {
                Ok(Received::Empty) => Err(s),
                r => {
                    let s: &ArraySubscriber<M> = s;
                    let r = r
                        .map_err(BlockReceiveError::Receive)
                        .and_then(|r| s.pool.resolve_received(r));
                    Ok(Self::wrap(r, false))
                }
            }
        })
    }

    /// The next array, if there is one now.
    pub fn try_recv(&self) -> Result<ArraySample<'_, M>, RecvError> {
        Self::wrap(self.pool.try_receive(), false)
    }

    /// The next array, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<ArraySample<'_, M>, RecvError> {
        Self::wrap(self.pool.receive(Some(timeout)), true)
    }

    /// The next array, waiting as long as the publisher lives.
    pub fn recv(&self) -> Result<ArraySample<'_, M>, RecvError> {
        Self::wrap(self.pool.receive(None), true)
    }

    /// The topic's counters.
    pub fn stats(&self) -> TopicStats {
        stats(self.pool.subscriber().topic())
    }

    /// Pool segments this subscriber has mapped right now.
    pub fn mapped_segments(&self) -> usize {
        self.pool.mapped_segments()
    }
}

/// A received array, read in place; its block is released when this is dropped.
pub struct ArraySample<'a, M: Pod> {
    block: HeldBlock<'a>,
    _m: PhantomData<&'a M>,
}

impl<M: Pod> fmt::Debug for ArraySample<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArraySample")
            .field("block", &self.block)
            .finish()
    }
}

impl<M: Pod> ArraySample<'_, M> {
    /// The message's sequence number.
    pub fn seq(&self) -> u64 {
        self.block.seq()
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.block.dtype()
    }

    /// The extent of each dimension.
    pub fn shape(&self) -> &[usize] {
        self.block.shape()
    }

    /// The metadata the publisher sent with the array.
    pub fn meta(&self) -> &M {
        bytemuck::from_bytes(&self.block.meta()[..size_of::<M>()])
    }

    /// The elements as `T`, in place; [`RecvError::WrongDtype`] if the array holds another
    /// element type.
    pub fn as_slice<T: Element>(&self) -> Result<&[T], RecvError> {
        if self.dtype() != T::DTYPE {
            return Err(RecvError::WrongDtype {
                expected: T::DTYPE,
                found: self.dtype(),
            });
        }
        Ok(bytemuck::try_cast_slice(self.block.bytes()).expect("page-aligned block of T's dtype"))
    }

    /// The array's bytes, in place.
    pub fn bytes(&self) -> &[u8] {
        self.block.bytes()
    }
}

/// Slot bytes an array topic needs for metadata `M`.
pub(crate) fn slot_size<M: Pod>() -> usize {
    DESCRIPTOR_SIZE + size_of::<M>()
}

impl<M: Pod> crate::waitset::sealed::Sealed for ArraySubscriber<M> {
    fn source(&self) -> shmbus_core::waitset::Source<'_> {
        shmbus_core::waitset::Source::Pool(&self.pool)
    }
}
