//! # shmbus
//!
//! A typed, zero-copy, daemonless shared-memory message bus for processes on one Linux machine.
//!
//! - **Topics**: publishers loan a slot in shared memory, write the message in place and publish
//!   it; every subscriber reads it in place. Per topic, a slow subscriber either lags (the oldest
//!   messages are overwritten and it is told how many it missed) or holds the publisher back.
//! - **Typed**: plain-old-data types ([`bytemuck::Pod`]) live in the slot as they are; serde
//!   types are encoded into it. The topic records the type's name, size, alignment and a
//!   fingerprint; a process that attaches with another type gets an error naming both.
//! - **Crash-safe**: a process killed at any instruction leaves nobody blocked; what it held is
//!   reclaimed; the last process out removes the topic from `/dev/shm`.
//! - **Blocking without cost**: subscribers sleep on a futex; a publisher makes a system call
//!   only when someone sleeps.
//!
//! # Example
//!
//! ```
//! use shmbus::Topic;
//! use std::time::Duration;
//!
//! #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
//! #[repr(C)]
//! struct Reading { sensor: u32, celsius: f32 }
//!
//! # let name = format!("doc-lib-{}", std::process::id());
//! // In one process:
//! let mut publisher = Topic::builder(&name).publisher::<Reading>()?;
//! // In another (here the same one, for the example):
//! let subscriber = Topic::builder(&name).subscriber::<Reading>()?;
//!
//! publisher.send(Reading { sensor: 7, celsius: 21.5 })?;
//! let sample = subscriber.recv_timeout(Duration::from_secs(1))?;
//! assert_eq!(*sample, Reading { sensor: 7, celsius: 21.5 });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Large arrays (camera frames, tensors) travel through **array topics**: the publisher writes
//! each array once into a block of its pool, the slot carries a small descriptor, and every
//! subscriber reads the block in place ([`Topic::array_publisher`]). Named N-d arrays that any
//! process attaches by name are [`SharedArray`]s.
//!
//! Alongside topics, [`Mutex`], [`Semaphore`] and [`Event`] live in named segments that any
//! process opens by name, and so do work queues ([`Queue`], [`SerdeQueue`]), where each item goes
//! to exactly one consumer, shared values ([`Value`]), barriers ([`Barrier`]) and shared serde
//! state ([`Shared`]). One thread waits on many subscribers, queues and events at once with a
//! [`WaitSet`].
//!
//! # Features
//!
//! - `async`: `recv_async` on subscribers, `receive_async`/`get_async` on queues,
//!   `Event::wait_async` and `Stream`s of samples, for any executor (see the `aio` module).
//! - `fuzzing`: entry points for the fuzz targets (not an API).
// Unsafe code is denied everywhere but at the in-place accessors of named arrays (`array.rs`,
// `#[allow(unsafe_code)]` on each), whose callers take on the aliasing contract.
#![deny(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]

#[cfg(feature = "async")]
pub mod aio;
pub mod array;
mod error;
mod frames;
pub mod identity;
mod queue;
mod serde_slot;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use serde_slot::fuzzing;
mod shared;
mod sync;
mod topic;
mod value;
mod waitset;

pub use array::{ArrayError, ArrayOptions, Element, ReadOnlyArray, SharedArray};
pub use bytemuck;
pub use error::{
    ArraySendError, ArraySendFailure, OpenError, OpenErrorKind, PublishError, PublishFailure,
    RecvError, SendError, SendFailure,
};
pub use frames::{ArrayLoan, ArrayPublisher, ArraySample, ArraySubscriber, PoolLoanError};
pub use identity::{Join, Message};
pub use queue::{
    ArrayDelivery, ArrayQueue, ArrayQueueLoan, Delivery, GetError, PutError, PutFailure, Queue,
    QueueBuilder, SerdeDelivery, SerdeQueue, DEFAULT_ARRAY_BYTES,
};
pub use shared::{Shared, SharedError, UpdateError};
pub use shmbus_core::dtype::Dtype;
pub use shmbus_core::fork::UsedAfterFork;
pub use shmbus_core::name::{Name, NameError};
pub use shmbus_core::pool::PoolStats;
pub use shmbus_core::queue::{QueueOpenError, QueueStats, Reclaimed};
pub use shmbus_core::ring::Overflow;
pub use shmbus_core::segment::Lifetime;
pub use shmbus_core::segment::{gc, gc_report, list, unlink, GcReport, SegmentError, Stuck};
pub use shmbus_core::sync::{LockError, SemaphoreError, TryLockError};
pub use shmbus_core::time::monotonic_ns;
pub use shmbus_core::topic::{LoanError, TopicError};
pub use shmbus_core::value::{BarrierError, BarrierOpenError};
pub use sync::{Event, EventMode, Mutex, MutexGuard, Semaphore, SyncOptions};
pub use topic::{
    Loan, Publisher, Sample, SerdePublisher, SerdeSubscriber, Subscriber, Topic, TopicStats,
};
#[cfg(feature = "async")]
pub use topic::{Samples, SerdeSubscriberStream, SubscriberStream};
pub use value::{Barrier, Value, ValueInt};
pub use waitset::{Key, Readiness, Ready, WaitSet, WaitSetError, Waitable};
