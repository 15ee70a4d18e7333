//! Async receives (feature `async`): futures and streams served by one waiter thread per
//! process, for any executor (tokio, async-std, smol, `futures::executor`).
//!
//! A future first tries to take what it waits for. When nothing is there it arms a
//! registration with the process's waiter thread (started on first use), which counts the task
//! in as a sleeper on the topic, queue or event exactly as a blocked `recv` is, and sleeps on
//! every awaited word at once with `futex_waitv`. A publish wakes the thread, the thread wakes
//! the task's waker, and the task takes the message in its own poll. So:
//!
//! - no thread per subscriber, and publishers pay nothing while no task waits;
//! - the futures are **cancel-safe**: a future dropped before it completed (by `select!`, a
//!   timeout) took nothing, and nothing is lost;
//! - timeouts are the executor's (`tokio::time::timeout(d, sub.recv_async())`).
//!
//! Dead publishers are looked for every 50 ms, as by a blocked `recv`, so a subscriber whose
//! publishers all died gets `Disconnected`; an acknowledged queue's items held by a dead consumer
//! come back to waiting consumers within that time.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use shmbus_core::waitset::reactor::{Interest, Registration};

/// A future over a handle `R` (a reference to a subscriber, queue or event): `attempt` takes
/// what is there (`Ok`) or hands the handle back (`Err`: nothing yet).
pub(crate) struct Op<R, T> {
    handle: Option<R>,
    registration: Registration,
    attempt: fn(R) -> Result<T, R>,
}

impl<R, T> Op<R, T> {
    pub(crate) fn new(handle: R, interest: Interest, attempt: fn(R) -> Result<T, R>) -> Self {
        Op {
            handle: Some(handle),
            registration: Registration::new(interest),
            attempt,
        }
    }
}

impl<R: Unpin, T> Future for Op<R, T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        let handle = this
            .handle
            .take()
            .expect("a shmbus future was polled after it completed");
        match poll_attempt(&mut this.registration, cx, handle, this.attempt) {
            Ok(v) => Poll::Ready(v),
            Err(handle) => {
                this.handle = Some(handle);
                Poll::Pending
            }
        }
    }
}

/// One poll: take, or arm and (if newly armed) take once more; `Err` hands the handle back
/// with the registration armed.
pub(crate) fn poll_attempt<R, T>(
    registration: &mut Registration,
    cx: &Context<'_>,
    handle: R,
    attempt: impl Fn(R) -> Result<T, R>,
) -> Result<T, R> {
    let handle = match attempt(handle) {
        Ok(v) => {
            registration.disarm();
            return Ok(v);
        }
        Err(h) => h,
    };
    if !registration.arm(cx.waker()) {
        return Err(handle);
    }
    // Newly armed: what came before the arm may not wake us, so look once more.
    match attempt(handle) {
        Ok(v) => {
            registration.disarm();
            Ok(v)
        }
        Err(h) => {
            registration.park(cx.waker());
            Err(h)
        }
    }
}

/// A stream's state: the registration it waits with and whether it ended.
#[derive(Debug)]
pub(crate) struct StreamState {
    registration: Registration,
    ended: bool,
}

impl StreamState {
    pub(crate) fn new(interest: Interest) -> StreamState {
        StreamState {
            registration: Registration::new(interest),
            ended: false,
        }
    }

    /// One `poll_next`: `attempt` gives `Some(item)` when there is one, with whether the stream
    /// ends after it (`end`: no item, the stream is over).
    pub(crate) fn poll_next<T>(
        &mut self,
        cx: &Context<'_>,
        attempt: impl Fn() -> Option<Step<T>>,
    ) -> Poll<Option<T>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let step = poll_attempt(&mut self.registration, cx, (), |()| attempt().ok_or(()));
        match step {
            Ok(Step::Item(v)) => Poll::Ready(Some(v)),
            Ok(Step::Last(v)) => {
                self.ended = true;
                Poll::Ready(Some(v))
            }
            Ok(Step::End) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Err(()) => Poll::Pending,
        }
    }
}

/// What a stream's attempt found.
pub(crate) enum Step<T> {
    /// An item, more may follow.
    Item(T),
    /// An item after which nothing can follow (a fatal error).
    Last(T),
    /// Nothing can follow.
    End,
}
