//! Work queues of N-d arrays: each slot is an array's block, written and read in place.

use super::*;

use shmbus_core::dtype::Dtype;
use shmbus_core::queue::array::{ArrayItem, ArrayItemError, ArrayItemLayout};
use shmbus_core::queue::RawReservation;
use shmbus_core::wire::type_name::ARRAY_QUEUE_PREFIX;

use crate::array::Element;

/// Array bytes per item when a builder creating an array queue does not say
/// ([`QueueBuilder::array_bytes`]).
pub const DEFAULT_ARRAY_BYTES: usize = 1 << 20;

impl From<ArrayItemError> for PutFailure {
    fn from(e: ArrayItemError) -> Self {
        match e {
            ArrayItemError::TooLarge { needed, max_bytes } => PutFailure::TooLarge {
                size: needed,
                capacity: max_bytes,
            },
            e => PutFailure::InvalidArray(e.to_string()),
        }
    }
}

impl QueueBuilder {
    /// Array bytes each item of an array queue holds at most (default 1 MiB; see
    /// [`open_arrays`](Self::open_arrays)). On an existing queue, a requirement.
    pub fn array_bytes(mut self, bytes: usize) -> Self {
        self.array_bytes = Some(bytes);
        self
    }

    /// Opens (creating if needed) a queue of N-d arrays with plain-old-data metadata `M` (`()`
    /// for none): each of its `capacity` slots is the block of one array of up to
    /// [`array_bytes`](Self::array_bytes) bytes. See [`ArrayQueue`].
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open); [`OpenError::Queue`] if the existing queue's items are smaller
    /// than `array_bytes`.
    pub fn open_arrays<M: Pod>(&self) -> Result<ArrayQueue<M>, OpenError> {
        let type_name = short_type_name::<M>();
        let unsupported = |reason: String| OpenError::UnsupportedType {
            type_name: type_name.to_owned(),
            reason,
        };
        if align_of::<M>() > 64 || size_of::<M>() > u32::MAX as usize / 4 {
            return Err(unsupported(
                "array metadata needs an alignment of at most 64".into(),
            ));
        }
        let meta = size_of::<M>();
        let header = ArrayItemLayout::header_size(meta).expect("metadata size checked above");
        let info = TypeInfo::new(
            &format!("{ARRAY_QUEUE_PREFIX}{type_name}"),
            header as u64,
            64,
            Codec::Pod,
        )
        .ok_or_else(|| {
            unsupported(format!(
                "type names are limited to {} bytes",
                TypeInfo::MAX_NAME
            ))
        })?;
        let mut this = self.clone();
        let bytes = match (self.array_bytes, self.create) {
            (Some(b), _) => Some(b),
            (None, true) => Some(DEFAULT_ARRAY_BYTES),
            (None, false) => None,
        };
        if let Some(b) = bytes {
            let slot = ArrayItemLayout::new(meta, b)
                .and_then(|l| l.slot_size())
                .and_then(|s| u32::try_from(s).ok())
                .ok_or_else(|| {
                    OpenError::Queue(QueueOpenError::Config(format!(
                        "array items of {b} bytes (at most about 1 GiB)"
                    )))
                })?;
            this.opts.slot_size = Some(slot);
        }
        let raw = this.raw(&info)?;
        let layout = ArrayItemLayout::from_slot(meta, raw.slot_size()).ok_or_else(|| {
            OpenError::Queue(QueueOpenError::Corrupt {
                name: raw.name().clone(),
                reason: format!("slots of {} bytes hold no array", raw.slot_size()),
            })
        })?;
        Ok(ArrayQueue {
            raw: std::sync::Arc::new(raw),
            layout,
            _m: PhantomData,
        })
    }
}

/// A bounded multi-producer, multi-consumer work queue of N-d arrays with metadata `M`, shared
/// by every process that opens it by name ([`QueueBuilder::open_arrays`]). Each array goes to
/// exactly one consumer, zero-copy: the producer writes it in place into a slot
/// ([`loan`](Self::loan)) and the consumer reads it in place ([`receive`](Self::receive)).
///
/// The queue is its own pool of `capacity` blocks of
/// [`max_array_bytes`](Self::max_array_bytes) each: a block is the producer's from loan to
/// [`commit`](ArrayQueueLoan::commit), then the consumer's until it finishes the
/// [`ArrayDelivery`] (acknowledges it, or drops it in at-most-once mode), and then free again.
/// A producer or consumer that dies gives its block back with its slot, as described for
/// [`Queue`] (delivery modes, dead participants): in acknowledged mode the array is delivered
/// again, to another consumer.
///
/// # Examples
///
/// ```
/// use shmbus::QueueBuilder;
/// use std::time::Duration;
///
/// # let name = format!("doc-array-queue-{}", std::process::id());
/// let jobs = QueueBuilder::new(&name)
///     .capacity(4)
///     .array_bytes(640 * 480 * 4)
///     .acknowledged(3)
///     .open_arrays::<u64>()?;                       // metadata: a job id
///
/// let mut frame = jobs.loan::<f32>(&[480, 640])?;  // a free block, in shared memory
/// let (pixels, job_id) = frame.parts_mut();
/// pixels.fill(0.5);                                 // written in place
/// *job_id = 17;
/// frame.commit()?;
///
/// // In a worker process (opened with `.existing()`):
/// let job = jobs.receive_timeout(Duration::from_secs(1))?; // read in place
/// assert_eq!((job.shape(), *job.meta()), (&[480, 640][..], 17));
/// let sum: f32 = job.as_slice::<f32>()?.iter().sum();
/// assert_eq!(sum, 0.5 * 480.0 * 640.0);
/// job.ack()?;                                       // the block is free again
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ArrayQueue<M: Pod = ()> {
    pub(super) raw: std::sync::Arc<RawQueue>,
    layout: ArrayItemLayout,
    _m: PhantomData<fn(M) -> M>,
}

impl<M: Pod> fmt::Debug for ArrayQueue<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArrayQueue")
            .field("raw", &self.raw)
            .field("max_array_bytes", &self.layout.max_bytes)
            .finish()
    }
}

impl<M: Pod> ArrayQueue<M> {
    queue_common!();

    /// Most bytes one array may have.
    pub fn max_array_bytes(&self) -> usize {
        self.layout.max_bytes
    }

    fn loan_with<T: Element>(
        &self,
        shape: &[usize],
        timeout: Option<Duration>,
    ) -> Result<ArrayQueueLoan<'_, T, M>, PutFailure> {
        // Refuse a bad shape before taking a slot.
        let len = self.layout.check_shape(T::DTYPE, shape)?;
        let mut raw = self.raw.reserve(timeout)?;
        let slot = raw.slot();
        self.layout
            .prepare(raw.bytes_mut(), slot, T::DTYPE, shape)?;
        Ok(ArrayQueueLoan {
            raw,
            layout: self.layout,
            len,
            shape: shape.to_vec(),
            _t: PhantomData,
        })
    }

    /// Loans a free block for an array of `T` of `shape`, waiting for one as long as it takes.
    /// Write the array (it holds an earlier item's bytes) and the metadata, then
    /// [`commit`](ArrayQueueLoan::commit); dropped uncommitted, the block is given back.
    ///
    /// # Errors
    ///
    /// [`PutFailure::TooLarge`] for an array larger than
    /// [`max_array_bytes`](Self::max_array_bytes), [`PutFailure::InvalidArray`] for a bad
    /// shape, and those of [`Queue::put`].
    pub fn loan<T: Element>(
        &self,
        shape: &[usize],
    ) -> Result<ArrayQueueLoan<'_, T, M>, PutFailure> {
        self.loan_with(shape, None)
    }

    /// As [`loan`](Self::loan), waiting at most `timeout` ([`PutFailure::Timeout`]).
    pub fn loan_timeout<T: Element>(
        &self,
        shape: &[usize],
        timeout: Duration,
    ) -> Result<ArrayQueueLoan<'_, T, M>, PutFailure> {
        self.loan_with(shape, Some(timeout))
    }

    /// As [`loan`](Self::loan), without waiting ([`PutFailure::Full`]).
    pub fn try_loan<T: Element>(
        &self,
        shape: &[usize],
    ) -> Result<ArrayQueueLoan<'_, T, M>, PutFailure> {
        self.loan_with(shape, Some(Duration::ZERO))
    }

    /// Copies `data`, an array of `shape`, and `meta` into a free block and puts it in line,
    /// waiting for room as long as it takes (a [`loan`](Self::loan) filled from `data`).
    ///
    /// # Errors
    ///
    /// As [`loan`](Self::loan); [`PutFailure::InvalidArray`] if `data` does not have the
    /// shape's length.
    pub fn put<T: Element>(&self, shape: &[usize], data: &[T], meta: M) -> Result<(), PutFailure> {
        self.put_with(shape, data, meta, None)
    }

    /// As [`put`](Self::put), waiting at most `timeout`.
    pub fn put_timeout<T: Element>(
        &self,
        shape: &[usize],
        data: &[T],
        meta: M,
        timeout: Duration,
    ) -> Result<(), PutFailure> {
        self.put_with(shape, data, meta, Some(timeout))
    }

    fn put_with<T: Element>(
        &self,
        shape: &[usize],
        data: &[T],
        meta: M,
        timeout: Option<Duration>,
    ) -> Result<(), PutFailure> {
        let elements = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if elements != Some(data.len()) {
            return Err(PutFailure::InvalidArray(format!(
                "{} elements for a shape of {shape:?}",
                data.len()
            )));
        }
        let mut loan = self.loan_with::<T>(shape, timeout)?;
        let (to, m) = loan.parts_mut();
        to.copy_from_slice(data);
        *m = meta;
        loan.commit()
    }

    fn receive_with(&self, timeout: Option<Duration>) -> Result<ArrayDelivery<'_, M>, GetError> {
        let raw = self.raw.take(timeout)?;
        match self.layout.read(raw.bytes(), raw.slot()) {
            Ok(item) => Ok(ArrayDelivery {
                raw: Some(raw),
                item,
                _m: PhantomData,
            }),
            Err(e) => {
                // An item nobody can read is refused (and so dead-lettered at the limit).
                let _ = raw.refuse();
                Err(GetError::Decode(e.to_string()))
            }
        }
    }

    /// Takes the front array, in place, waiting as long as it takes. See [`ArrayDelivery`].
    ///
    /// # Errors
    ///
    /// As [`Queue::receive`]; [`GetError::Decode`] for an item whose descriptor is damaged
    /// (it is refused).
    pub fn receive(&self) -> Result<ArrayDelivery<'_, M>, GetError> {
        self.receive_with(None)
    }

    /// As [`receive`](Self::receive), waiting at most `timeout` ([`GetError::Timeout`]).
    pub fn receive_timeout(&self, timeout: Duration) -> Result<ArrayDelivery<'_, M>, GetError> {
        self.receive_with(Some(timeout))
    }

    /// As [`receive`](Self::receive), without waiting ([`GetError::Empty`]).
    pub fn try_receive(&self) -> Result<ArrayDelivery<'_, M>, GetError> {
        self.receive_with(Some(Duration::ZERO))
    }
}

/// A block loaned from an [`ArrayQueue`] for one array: write it in place, then
/// [`commit`](Self::commit). Dropped uncommitted, the block is given back unused.
pub struct ArrayQueueLoan<'q, T: Element, M: Pod> {
    raw: RawReservation<'q>,
    layout: ArrayItemLayout,
    len: usize,
    shape: Vec<usize>,
    _t: PhantomData<fn() -> (T, M)>,
}

impl<T: Element, M: Pod> fmt::Debug for ArrayQueueLoan<'_, T, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArrayQueueLoan")
            .field("slot", &self.raw.slot())
            .field("shape", &self.shape)
            .finish()
    }
}

impl<T: Element, M: Pod> ArrayQueueLoan<'_, T, M> {
    /// The array's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The array's elements and the metadata, to write in place. They hold an earlier item's
    /// bytes.
    pub fn parts_mut(&mut self) -> (&mut [T], &mut M) {
        let (data_offset, len, meta) = (self.layout.data_offset, self.len, size_of::<M>());
        let (head, data) = self.raw.bytes_mut().split_at_mut(data_offset);
        let meta_bytes = &mut head[shmbus_core::pool::DESCRIPTOR_SIZE..][..meta];
        (
            bytemuck::cast_slice_mut(&mut data[..len]),
            bytemuck::from_bytes_mut(meta_bytes),
        )
    }

    /// The array's elements, to write in place.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        self.parts_mut().0
    }

    /// Puts the array in line.
    ///
    /// # Errors
    ///
    /// [`PutFailure::Closed`] if the queue was closed meanwhile (the block is given back),
    /// [`PutFailure::Queue`], [`PutFailure::UsedAfterFork`].
    pub fn commit(self) -> Result<(), PutFailure> {
        Ok(self.raw.commit()?)
    }
}

/// An array taken from an [`ArrayQueue`], read in place.
///
/// Finish it with [`ack`](Self::ack) (the block is free again). Dropped without: in
/// acknowledged mode the array is given back to be delivered again (as with
/// [`refuse`](Self::refuse)); in at-most-once mode it is done. If this process dies while
/// holding it, the array is delivered again (acknowledged) or lost and counted (at most once),
/// and its block is free again either way.
pub struct ArrayDelivery<'q, M: Pod> {
    raw: Option<RawDelivery<'q>>,
    item: ArrayItem,
    _m: PhantomData<&'q M>,
}

impl<M: Pod> fmt::Debug for ArrayDelivery<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArrayDelivery")
            .field("dtype", &self.item.dtype)
            .field("shape", &self.item.shape)
            .field("deliveries", &self.deliveries())
            .finish()
    }
}

impl<M: Pod> ArrayDelivery<'_, M> {
    fn slot(&self) -> &[u8] {
        self.raw.as_ref().expect("present until consumed").bytes()
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.item.dtype
    }

    /// The extent of each dimension.
    pub fn shape(&self) -> &[usize] {
        self.item.shape.as_slice()
    }

    /// The metadata the producer put with the array.
    pub fn meta(&self) -> &M {
        bytemuck::from_bytes(&self.slot()[self.item.meta.clone()])
    }

    /// The array's bytes, in place.
    pub fn bytes(&self) -> &[u8] {
        &self.slot()[self.item.data.clone()]
    }

    /// The elements as `T`, in place; [`GetError::WrongDtype`] if the array holds another
    /// element type.
    pub fn as_slice<T: Element>(&self) -> Result<&[T], GetError> {
        if self.item.dtype != T::DTYPE {
            return Err(GetError::WrongDtype {
                expected: T::DTYPE,
                found: self.item.dtype,
            });
        }
        Ok(bytemuck::try_cast_slice(self.bytes()).expect("a 64-aligned block of T's dtype"))
    }

    /// How many times the array has been delivered, this time included (1: the first).
    pub fn deliveries(&self) -> u32 {
        self.raw.as_ref().map_or(0, |r| r.deliveries())
    }

    /// The array is done: its block is free again.
    ///
    /// # Errors
    ///
    /// As [`Delivery::ack`].
    pub fn ack(mut self) -> Result<(), GetError> {
        let raw = self.raw.take().expect("present until consumed");
        Ok(raw.ack()?)
    }

    /// Gives the array back: delivered again, or dead-lettered at the delivery limit.
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

impl<M: Pod> crate::waitset::sealed::Sealed for ArrayQueue<M> {
    fn source(&self) -> shmbus_core::waitset::Source<'_> {
        shmbus_core::waitset::Source::Queue(&self.raw)
    }
}
