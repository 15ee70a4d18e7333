//! Async receives and streams of topic subscribers (feature `async`; see [`crate::aio`]).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytemuck::Pod;
use serde::de::DeserializeOwned;
use shmbus_core::topic::{ReceiveError, Received};
use shmbus_core::waitset::reactor::Interest;

use super::{to_held, Sample, SerdeSubscriber, Subscriber};
use crate::aio::{Op, Step, StreamState};
use crate::error::RecvError;

/// What a stream makes of a receive: an item, the end, or nothing yet (`None`).
fn step<T>(
    r: Result<Received, ReceiveError>,
    item: impl FnOnce(shmbus_core::topic::Held) -> Result<T, RecvError>,
) -> Option<Step<Result<T, RecvError>>> {
    match r {
        Ok(Received::Empty) => None,
        Ok(Received::Disconnected) => Some(Step::End),
        r => Some(match to_held(r, RecvError::Empty) {
            Ok(held) => match item(held) {
                Err(e @ RecvError::Corrupt(_)) => Step::Last(Err(e)),
                v => Step::Item(v),
            },
            Err(e @ RecvError::Lagged(_)) => Step::Item(Err(e)),
            Err(e) => Step::Last(Err(e)),
        }),
    }
}

impl<T: Pod> Subscriber<T> {
    /// The next message, read in place, awaited: [`recv`](Self::recv) for async code, on any
    /// executor. Errors as `recv`: `Lagged`, `Disconnected` (every publisher this subscriber saw
    /// is gone), `TooManyHeld`, `Corrupt`.
    ///
    /// It takes `&mut self` so that the future is `Send` (a subscriber is `Send`, not `Sync`):
    /// a sample is then held one at a time. The future is cancel-safe: dropped before it
    /// completed, it took nothing. Put a timeout on it with your executor's.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::Topic;
    ///
    /// # let name = format!("doc-recv-async-{}", std::process::id());
    /// let mut publisher = Topic::builder(&name).publisher::<u64>()?;
    /// let mut subscriber = Topic::builder(&name).subscriber::<u64>()?;
    /// let feeder = std::thread::spawn(move || {
    ///     std::thread::sleep(std::time::Duration::from_millis(20));
    ///     publisher.send(7).unwrap();
    ///     publisher
    /// });
    /// let got = futures::executor::block_on(async { *subscriber.recv_async().await.unwrap() });
    /// assert_eq!(got, 7);
    /// # drop(feeder.join().unwrap());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_async(
        &mut self,
    ) -> impl Future<Output = Result<Sample<'_, T>, RecvError>> + Send + '_ {
        let interest = Interest::topic(self.raw.topic().clone());
        Op::new(self, interest, |s: &mut Subscriber<T>| {
            match s.raw.poll_receive() {
                Ok(Received::Empty) => Err(s),
                r => {
                    let s: &Subscriber<T> = s;
                    Ok(to_held(r, RecvError::Empty).map(|held| Sample {
                        sub: &s.raw,
                        held: Some(held),
                        _t: PhantomData,
                    }))
                }
            }
        })
    }

    /// The messages as a [`Stream`](futures_core::Stream) of samples read in place: `Lagged`
    /// reports are items (`Err`), the stream ends when every publisher this subscriber saw is
    /// gone and everything was read, or after a fatal error (its last item).
    ///
    /// The stream borrows the subscriber (so it is not `Send`: use it where it was made, or
    /// use [`into_stream`](Self::into_stream), which copies each message out).
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// use shmbus::Topic;
    ///
    /// # let name = format!("doc-stream-{}", std::process::id());
    /// let mut publisher = Topic::builder(&name).publisher::<u32>()?;
    /// let subscriber = Topic::builder(&name).subscriber::<u32>()?;
    /// for i in 0..3 {
    ///     publisher.send(i)?;
    /// }
    /// drop(publisher); // the stream ends once it read everything
    /// let got: Vec<u32> = futures::executor::block_on(
    ///     subscriber.stream().map(|s| *s.unwrap()).collect(),
    /// );
    /// assert_eq!(got, [0, 1, 2]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stream(&self) -> Samples<'_, T> {
        Samples {
            sub: self,
            state: StreamState::new(Interest::topic(self.raw.topic().clone())),
        }
    }

    /// The messages as an owned, `Send` [`Stream`](futures_core::Stream) of values copied out
    /// of their slots; it ends as [`stream`](Self::stream) does.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// use shmbus::Topic;
    ///
    /// # let name = format!("doc-into-stream-{}", std::process::id());
    /// let mut publisher = Topic::builder(&name).publisher::<u32>()?;
    /// let stream = Topic::builder(&name).subscriber::<u32>()?.into_stream();
    /// let reader = std::thread::spawn(move || {
    ///     futures::executor::block_on(stream.map(Result::unwrap).collect::<Vec<u32>>())
    /// });
    /// for i in 0..3 {
    ///     publisher.send(i)?;
    /// }
    /// drop(publisher);
    /// assert_eq!(reader.join().unwrap(), [0, 1, 2]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_stream(self) -> SubscriberStream<T> {
        let state = StreamState::new(Interest::topic(self.raw.topic().clone()));
        SubscriberStream { sub: self, state }
    }
}

/// The stream of [`Subscriber::stream`]: samples read in place.
#[derive(Debug)]
pub struct Samples<'a, T: Pod> {
    sub: &'a Subscriber<T>,
    state: StreamState,
}

impl<'a, T: Pod> futures_core::Stream for Samples<'a, T> {
    type Item = Result<Sample<'a, T>, RecvError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let sub: &'a Subscriber<T> = this.sub;
        this.state.poll_next(cx, || {
            step(sub.raw.poll_receive(), |held| {
                Ok(Sample {
                    sub: &sub.raw,
                    held: Some(held),
                    _t: PhantomData,
                })
            })
        })
    }
}

/// The stream of [`Subscriber::into_stream`]: values copied out of their slots.
#[derive(Debug)]
pub struct SubscriberStream<T: Pod> {
    sub: Subscriber<T>,
    state: StreamState,
}

impl<T: Pod> SubscriberStream<T> {
    /// The subscriber back.
    pub fn into_inner(self) -> Subscriber<T> {
        self.sub
    }
}

impl<T: Pod> futures_core::Stream for SubscriberStream<T> {
    type Item = Result<T, RecvError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let sub = &this.sub;
        this.state.poll_next(cx, || {
            step(sub.raw.poll_receive(), |held| {
                let sample = Sample::<T> {
                    sub: &sub.raw,
                    held: Some(held),
                    _t: PhantomData,
                };
                Ok(*sample)
            })
        })
    }
}

impl<T: DeserializeOwned> SerdeSubscriber<T> {
    /// The next message, decoded, awaited (see [`Subscriber::recv_async`]). Errors as
    /// [`recv`](Self::recv), including `Decode`.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::Topic;
    ///
    /// # let name = format!("doc-serde-recv-async-{}", std::process::id());
    /// let mut publisher = Topic::builder(&name).serde_publisher::<String>()?;
    /// let mut subscriber = Topic::builder(&name).serde_subscriber::<String>()?;
    /// publisher.send("hello".to_string())?;
    /// let got = futures::executor::block_on(subscriber.recv_async())?;
    /// assert_eq!(got, "hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_async(&mut self) -> impl Future<Output = Result<T, RecvError>> + Send + '_ {
        let interest = Interest::topic(self.raw.topic().clone());
        Op::new(self, interest, |s: &mut SerdeSubscriber<T>| {
            match s.raw.poll_receive() {
                Ok(Received::Empty) => Err(s),
                r => Ok(to_held(r, RecvError::Empty).and_then(|h| s.decode(h).map(|(_, v)| v))),
            }
        })
    }

    /// The messages as an owned, `Send` [`Stream`](futures_core::Stream) of decoded values:
    /// `Lagged` and `Decode` failures are items (`Err`); it ends when every publisher this
    /// subscriber saw is gone and everything was read, or after a fatal error.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// use shmbus::Topic;
    ///
    /// # let name = format!("doc-serde-stream-{}", std::process::id());
    /// let mut publisher = Topic::builder(&name).serde_publisher::<String>()?;
    /// let stream = Topic::builder(&name).serde_subscriber::<String>()?.into_stream();
    /// publisher.send("a".to_string())?;
    /// publisher.send("b".to_string())?;
    /// drop(publisher);
    /// let got: Vec<String> = futures::executor::block_on(stream.map(Result::unwrap).collect());
    /// assert_eq!(got, ["a", "b"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_stream(self) -> SerdeSubscriberStream<T> {
        let state = StreamState::new(Interest::topic(self.raw.topic().clone()));
        SerdeSubscriberStream { sub: self, state }
    }
}

/// The stream of [`SerdeSubscriber::into_stream`]: decoded values.
#[derive(Debug)]
pub struct SerdeSubscriberStream<T: DeserializeOwned> {
    sub: SerdeSubscriber<T>,
    state: StreamState,
}

impl<T: DeserializeOwned> SerdeSubscriberStream<T> {
    /// The subscriber back.
    pub fn into_inner(self) -> SerdeSubscriber<T> {
        self.sub
    }
}

impl<T: DeserializeOwned> futures_core::Stream for SerdeSubscriberStream<T> {
    type Item = Result<T, RecvError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let sub = &this.sub;
        this.state.poll_next(cx, || {
            step(sub.raw.poll_receive(), |held| {
                sub.decode(held).map(|(_, v)| v)
            })
        })
    }
}
