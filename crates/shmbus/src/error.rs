//! Every error the typed API returns.

use shmbus_core::name::NameError;
use shmbus_core::segment::SegmentError;
use shmbus_core::topic::{LoanError as RawLoanError, TopicError};

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

/// Why a message was not published. The message (or loan) is handed back where there is one.
///
/// `Debug` does not need `T: Debug`: it shows the variant, not the message.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum SendError<T> {
    /// Back-pressure: the slowest live subscriber did not make room before the timeout.
    #[error("timed out waiting for a slow subscriber to make room")]
    Timeout(T),
    /// The encoded message does not fit in a slot.
    #[error("the message needs {size} bytes; a slot holds {capacity}")]
    TooLarge {
        /// The message, handed back.
        value: T,
        /// Bytes the encoding needs.
        size: usize,
        /// Bytes a slot holds.
        capacity: usize,
    },
    /// The message could not be encoded.
    #[error("the message could not be encoded: {reason}")]
    Encode {
        /// The message, handed back.
        value: T,
        /// The encoder's error.
        reason: String,
    },
    /// No slot could be loaned.
    #[error(transparent)]
    Loan(#[from] RawLoanError),
    /// The multi-publisher lock failed.
    #[error("the publish lock failed: {0}")]
    Lock(shmbus_core::sync::LockError),
    /// No block of an array pool could be loaned.
    #[error(transparent)]
    Pool(shmbus_core::pool::PoolLoanError),
    /// The data given does not match the shape asked for.
    #[error("the shape holds {expected} elements; {found} were given")]
    Shape {
        /// Elements the shape holds.
        expected: usize,
        /// Elements given.
        found: usize,
    },
}

impl<T> std::fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Timeout(_) => f.write_str("Timeout(..)"),
            SendError::TooLarge { size, capacity, .. } => f
                .debug_struct("TooLarge")
                .field("size", size)
                .field("capacity", capacity)
                .finish_non_exhaustive(),
            SendError::Encode { reason, .. } => f
                .debug_struct("Encode")
                .field("reason", reason)
                .finish_non_exhaustive(),
            SendError::Loan(e) => f.debug_tuple("Loan").field(e).finish(),
            SendError::Lock(e) => f.debug_tuple("Lock").field(e).finish(),
            SendError::Pool(e) => f.debug_tuple("Pool").field(e).finish(),
            SendError::Shape { expected, found } => f
                .debug_struct("Shape")
                .field("expected", expected)
                .field("found", found)
                .finish(),
        }
    }
}

impl<T> SendError<T> {
    /// The message handed back, if any.
    pub fn into_inner(self) -> Option<T> {
        match self {
            SendError::Timeout(v)
            | SendError::TooLarge { value: v, .. }
            | SendError::Encode { value: v, .. } => Some(v),
            SendError::Loan(_)
            | SendError::Lock(_)
            | SendError::Pool(_)
            | SendError::Shape { .. } => None,
        }
    }

    /// The same error with the handed-back value mapped by `f`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> SendError<U> {
        match self {
            SendError::Timeout(v) => SendError::Timeout(f(v)),
            SendError::TooLarge {
                value,
                size,
                capacity,
            } => SendError::TooLarge {
                value: f(value),
                size,
                capacity,
            },
            SendError::Encode { value, reason } => SendError::Encode {
                value: f(value),
                reason,
            },
            SendError::Loan(e) => SendError::Loan(e),
            SendError::Lock(e) => SendError::Lock(e),
            SendError::Pool(e) => SendError::Pool(e),
            SendError::Shape { expected, found } => SendError::Shape { expected, found },
        }
    }
}

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
