//! Every error the typed API returns.

use shmbus_core::fork::UsedAfterFork;
use shmbus_core::name::NameError;
use shmbus_core::segment::SegmentError;
use shmbus_core::topic::{LoanError as RawLoanError, PublishError as RawPublishError, TopicError};

/// Why a publisher, subscriber, [`Mutex`](crate::Mutex), [`Semaphore`](crate::Semaphore) or
/// [`Event`](crate::Event) could not be made.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The name is not valid.
    #[error("invalid name: {0}")]
    Name(#[from] NameError),
    /// The topic could not be opened, created or joined (this includes a wrong type, a QoS the
    /// topic cannot honour, too many participants, a full `/dev/shm`, missing permission).
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// The segment of a named mutex, semaphore or event could not be opened or created (a
    /// wrong kind or type, a full `/dev/shm`, missing permission, ...).
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// The work queue could not be joined (a configuration it does not match, every
    /// participant row taken, a damaged queue).
    #[error(transparent)]
    Queue(#[from] shmbus_core::queue::QueueOpenError),
    /// Every party row of the barrier is held by a live party.
    #[error(transparent)]
    Barrier(#[from] shmbus_core::value::BarrierOpenError),
    /// The message (or mutex value) type cannot live in shared memory (alignment above 64
    /// bytes; for messages, also zero-sized).
    #[error("{type_name} cannot be a message: {reason}")]
    UnsupportedType {
        /// The type.
        type_name: String,
        /// Why.
        reason: String,
    },
}

/// What kind of failure an [`OpenError`] is, without matching the nested errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenErrorKind {
    /// No object of that name (and it was not to be created).
    NotFound,
    /// The operating system refused access (another user's object, without a wider mode).
    PermissionDenied,
    /// `/dev/shm` cannot hold it.
    OutOfSpace,
    /// It holds another type, dtype or kind of object.
    WrongType,
    /// The existing object cannot honour what was asked (capacity, policy, ...).
    Qos,
    /// The name is invalid.
    InvalidName,
    /// The object is damaged, of another format version, or could not be opened in time.
    Corrupt,
    /// Anything else (too many participants, an unsupported type, an OS error).
    Other,
}

impl OpenError {
    /// The segment error underneath, if this is one.
    pub fn segment_error(&self) -> Option<&SegmentError> {
        match self {
            OpenError::Segment(e) | OpenError::Topic(TopicError::Segment(e)) => Some(e),
            _ => None,
        }
    }

    /// What kind of failure this is.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{OpenErrorKind, Semaphore};
    ///
    /// let err = Semaphore::open("doc-kind-no-such-semaphore").unwrap_err();
    /// assert_eq!(err.kind(), OpenErrorKind::NotFound);
    /// ```
    pub fn kind(&self) -> OpenErrorKind {
        match self {
            OpenError::Name(_) => OpenErrorKind::InvalidName,
            OpenError::Topic(TopicError::Qos { .. })
            | OpenError::Queue(shmbus_core::queue::QueueOpenError::Mismatch { .. }) => {
                OpenErrorKind::Qos
            }
            OpenError::Queue(shmbus_core::queue::QueueOpenError::Corrupt { .. }) => {
                OpenErrorKind::Corrupt
            }
            OpenError::UnsupportedType { .. } => OpenErrorKind::Other,
            _ => match self.segment_error() {
                Some(SegmentError::NotFound(_)) => OpenErrorKind::NotFound,
                Some(SegmentError::PermissionDenied(_)) => OpenErrorKind::PermissionDenied,
                Some(SegmentError::OutOfSpace { .. }) => OpenErrorKind::OutOfSpace,
                Some(SegmentError::WrongType { .. } | SegmentError::WrongKind { .. }) => {
                    OpenErrorKind::WrongType
                }
                Some(
                    SegmentError::Corrupt { .. }
                    | SegmentError::Version { .. }
                    | SegmentError::Stuck { .. },
                ) => OpenErrorKind::Corrupt,
                Some(_) => OpenErrorKind::Other,
                None => match self {
                    OpenError::Topic(TopicError::Corrupt { .. }) => OpenErrorKind::Corrupt,
                    _ => OpenErrorKind::Other,
                },
            },
        }
    }
}

/// Why publishing a loan failed ([`Loan::publish`](crate::Loan::publish),
/// [`ArrayLoan::publish`](crate::ArrayLoan::publish)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishFailure {
    /// The publish timeout passed: the slowest live subscriber did not make room before it
    /// (back-pressure), or another publisher held the multi-publisher lock that long (it may be
    /// waiting for room itself).
    #[error("timed out waiting for room, or for the publish lock")]
    Timeout,
    /// The multi-publisher lock failed (not recoverable, or already held by this thread).
    #[error("the publish lock failed: {0}")]
    Lock(shmbus_core::sync::LockError),
    /// The publisher was made before a `fork` and this process is the child.
    #[error(transparent)]
    UsedAfterFork(#[from] UsedAfterFork),
}

impl From<RawPublishError> for PublishFailure {
    fn from(e: RawPublishError) -> Self {
        match e {
            RawPublishError::Timeout => PublishFailure::Timeout,
            RawPublishError::Lock(l) => PublishFailure::Lock(l),
            RawPublishError::UsedAfterFork(f) => PublishFailure::UsedAfterFork(f),
        }
    }
}

/// Why [`Publisher::send`](crate::Publisher::send) or
/// [`SerdePublisher::send`](crate::SerdePublisher::send) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendFailure {
    /// The publish failed (timeout, lock, fork).
    #[error(transparent)]
    Publish(#[from] PublishFailure),
    /// No slot was free even after reclaiming dead participants.
    #[error("no free slot in the topic")]
    NoSlot,
    /// The encoded message does not fit in a slot (serde topics).
    #[error("the message needs {size} bytes; a slot holds {capacity}")]
    TooLarge {
        /// Bytes the encoding needs.
        size: usize,
        /// Bytes a slot holds.
        capacity: usize,
    },
    /// The message could not be encoded (serde topics).
    #[error("the message could not be encoded: {0}")]
    Encode(String),
}

impl From<RawLoanError> for SendFailure {
    fn from(e: RawLoanError) -> Self {
        match e {
            RawLoanError::UsedAfterFork(f) => SendFailure::Publish(f.into()),
            // `send` makes its own loan and gives it back before returning: a second loan
            // cannot be out. Both leave no slot for this message.
            RawLoanError::PoolExhausted(_) | RawLoanError::AlreadyLoaned => SendFailure::NoSlot,
        }
    }
}

/// Why [`ArrayPublisher::send`](crate::ArrayPublisher::send) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArraySendFailure {
    /// The publish failed (timeout, lock, fork).
    #[error(transparent)]
    Publish(#[from] PublishFailure),
    /// No block of the pool could be loaned.
    #[error(transparent)]
    Pool(#[from] shmbus_core::pool::PoolLoanError),
    /// The data given does not match the shape asked for.
    #[error("the shape holds {expected} elements; {found} were given")]
    Shape {
        /// Elements the shape holds.
        expected: usize,
        /// Elements given.
        found: usize,
    },
}

/// A failed send or publish: why, and the value (message, loan or metadata) handed back.
///
/// `F` says why; it is one of [`PublishFailure`] (publishing a loan), [`SendFailure`] (sending a
/// value) and [`ArraySendFailure`] (sending an array), so that each operation's error has only
/// the cases that operation can meet. `Debug` does not need `T: Debug`.
///
/// # Examples
///
/// ```
/// use shmbus::{SendFailure, Topic};
///
/// # let name = format!("doc-send-error-{}", std::process::id());
/// // Slots are whole cache lines: 64 bytes, 60 after the length prefix.
/// let mut publisher = Topic::builder(&name).slot_size(64).serde_publisher::<String>()?;
/// let err = publisher.send("far too long ".repeat(10)).unwrap_err();
/// assert!(matches!(err.reason(), SendFailure::TooLarge { capacity: 60, .. }));
/// let message: String = err.into_inner(); // nothing is lost
/// assert!(message.starts_with("far"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SendError<T, F = SendFailure> {
    value: T,
    reason: F,
}

impl<T, F> SendError<T, F> {
    pub(crate) fn new(value: T, reason: impl Into<F>) -> Self {
        SendError {
            value,
            reason: reason.into(),
        }
    }

    /// Why it failed.
    pub fn reason(&self) -> &F {
        &self.reason
    }

    /// The value handed back.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The value handed back, consuming the error.
    pub fn into_inner(self) -> T {
        self.value
    }

    /// The value and the reason.
    pub fn into_parts(self) -> (T, F) {
        (self.value, self.reason)
    }

    /// The same error with the handed-back value mapped by `f`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> SendError<U, F> {
        SendError {
            value: f(self.value),
            reason: self.reason,
        }
    }
}

impl<T, F: std::fmt::Debug> std::fmt::Debug for SendError<T, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendError")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl<T, F: std::fmt::Display> std::fmt::Display for SendError<T, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.reason.fmt(f)
    }
}

impl<T, F: std::error::Error + 'static> std::error::Error for SendError<T, F> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.reason)
    }
}

/// [`SendError`] of publishing a loan: the loan is handed back.
pub type PublishError<L> = SendError<L, PublishFailure>;

/// [`SendError`] of sending an array: the metadata is handed back.
pub type ArraySendError<M> = SendError<M, ArraySendFailure>;

/// Why a receive returned no message.
///
/// [`try_recv`](crate::Subscriber::try_recv) returns `Empty` where
/// [`recv_timeout`](crate::Subscriber::recv_timeout) returns `Timeout`; `recv` returns neither.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// No new message (non-blocking receive).
    #[error("no new message")]
    Empty,
    /// No message before the timeout.
    #[error("no message before the timeout")]
    Timeout,
    /// The subscriber fell behind and `n` messages were overwritten; the next receive resumes at
    /// the oldest message still in the topic.
    #[error("lagged behind: {0} messages were overwritten")]
    Lagged(u64),
    /// Every publisher this subscriber saw is gone (left or died) and nothing is left to read.
    /// A publisher may join again later.
    #[error("no publisher is alive and every message was read")]
    Disconnected,
    /// This subscriber already holds as many samples as the topic allows.
    #[error("already holding {0} samples, the most the topic allows; drop one first")]
    TooManyHeld(u32),
    /// The topic's memory is damaged.
    #[error("the topic is corrupt: {0}")]
    Corrupt(String),
    /// The subscriber was made before a `fork` and this process is the child.
    #[error("this subscriber was made before a fork and belongs to the parent process")]
    UsedAfterFork,
    /// A serde message could not be decoded.
    #[error("the message could not be decoded: {0}")]
    Decode(String),
    /// An array message's block descriptor was refused (unknown segment, stale generation,
    /// out of bounds, ...); the message is skipped.
    #[error("message {seq} has an invalid block descriptor: {reason}")]
    BadDescriptor {
        /// The message's sequence number.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// The array holds another element type than the one asked for.
    #[error("the array holds {found} elements, not {expected}")]
    WrongDtype {
        /// The dtype asked for.
        expected: shmbus_core::dtype::Dtype,
        /// The dtype found.
        found: shmbus_core::dtype::Dtype,
    },
}
