//! Async gets of work-queue consumers (feature `async`; see [`crate::aio`]).

use std::future::Future;

use bytemuck::Pod;
use serde::de::DeserializeOwned;
use shmbus_core::waitset::reactor::Interest;

use super::arrays::{ArrayDelivery, ArrayQueue};
use super::{Delivery, GetError, Queue, SerdeDelivery, SerdeQueue};
use crate::aio::Op;

/// An attempt's answer: `Empty` is "not yet", anything else is the result.
fn ready<Q, T>(q: Q, r: Result<T, GetError>) -> Result<Result<T, GetError>, Q> {
    match r {
        Err(GetError::Empty) => Err(q),
        r => Ok(r),
    }
}

impl<T: Pod> Queue<T> {
    /// The front item, read in place, awaited: [`receive`](Self::receive) for async code, on
    /// any executor. Errors as `receive`: `Closed` once the queue is closed and drained.
    ///
    /// The future is cancel-safe (dropped before it completed, it took nothing) and `Send`.
    /// Several consumers may await one queue; each item goes to one of them.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::QueueBuilder;
    ///
    /// # let name = format!("doc-queue-receive-async-{}", std::process::id());
    /// let queue = QueueBuilder::new(&name).acknowledged(3).open::<u64>()?;
    /// queue.put(5)?;
    /// let delivery = futures::executor::block_on(queue.receive_async())?;
    /// assert_eq!(*delivery, 5);
    /// delivery.ack()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn receive_async(
        &self,
    ) -> impl Future<Output = Result<Delivery<'_, T>, GetError>> + Send + '_ {
        Op::new(self, Interest::queue(self.raw.clone()), |q: &Queue<T>| {
            ready(q, q.try_receive())
        })
    }

    /// The front item, copied out (and acknowledged in acknowledged mode), awaited: [`get`](Self::get)
    /// for async code.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::QueueBuilder;
    ///
    /// # let name = format!("doc-queue-get-async-{}", std::process::id());
    /// let queue = QueueBuilder::new(&name).open::<u64>()?;
    /// let producer = {
    ///     let name = name.clone();
    ///     std::thread::spawn(move || {
    ///         let q = QueueBuilder::new(&name).open::<u64>().unwrap();
    ///         std::thread::sleep(std::time::Duration::from_millis(20));
    ///         q.put(9).unwrap();
    ///     })
    /// };
    /// assert_eq!(futures::executor::block_on(queue.get_async())?, 9);
    /// producer.join().unwrap();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_async(&self) -> impl Future<Output = Result<T, GetError>> + Send + '_ {
        Op::new(self, Interest::queue(self.raw.clone()), |q: &Queue<T>| {
            ready(q, q.try_get())
        })
    }
}

impl<T: DeserializeOwned> SerdeQueue<T> {
    /// The front item, decoded, awaited (see [`Queue::receive_async`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::QueueBuilder;
    ///
    /// # let name = format!("doc-serde-queue-receive-async-{}", std::process::id());
    /// let queue = QueueBuilder::new(&name).acknowledged(3).open_serde::<String>()?;
    /// queue.put("job".to_string())?;
    /// let delivery = futures::executor::block_on(queue.receive_async())?;
    /// assert_eq!(delivery.value(), "job");
    /// delivery.ack()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn receive_async(
        &self,
    ) -> impl Future<Output = Result<SerdeDelivery<'_, T>, GetError>> + Send + '_ {
        Op::new(
            self,
            Interest::queue(self.raw.clone()),
            |q: &SerdeQueue<T>| ready(q, q.try_receive()),
        )
    }

    /// The front item, decoded (and acknowledged in acknowledged mode), awaited (see
    /// [`Queue::get_async`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::QueueBuilder;
    ///
    /// # let name = format!("doc-serde-queue-get-async-{}", std::process::id());
    /// let queue = QueueBuilder::new(&name).open_serde::<Vec<u32>>()?;
    /// queue.put(vec![1, 2])?;
    /// assert_eq!(futures::executor::block_on(queue.get_async())?, [1, 2]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_async(&self) -> impl Future<Output = Result<T, GetError>> + Send + '_ {
        Op::new(
            self,
            Interest::queue(self.raw.clone()),
            |q: &SerdeQueue<T>| ready(q, q.try_get()),
        )
    }
}

impl<M: Pod> ArrayQueue<M> {
    /// The front array, read in place, awaited (see [`Queue::receive_async`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::QueueBuilder;
    ///
    /// # let name = format!("doc-array-queue-receive-async-{}", std::process::id());
    /// let queue = QueueBuilder::new(&name).capacity(2).array_bytes(64).acknowledged(3).open_arrays::<()>()?;
    /// queue.put(&[2, 2], &[1.0f32, 2.0, 3.0, 4.0], ())?;
    /// let delivery = futures::executor::block_on(queue.receive_async())?;
    /// assert_eq!(delivery.as_slice::<f32>()?, [1.0, 2.0, 3.0, 4.0]);
    /// delivery.ack()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn receive_async(
        &self,
    ) -> impl Future<Output = Result<ArrayDelivery<'_, M>, GetError>> + Send + '_ {
        Op::new(
            self,
            Interest::queue(self.raw.clone()),
            |q: &ArrayQueue<M>| ready(q, q.try_receive()),
        )
    }
}
