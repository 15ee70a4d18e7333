"""Publish/subscribe from Python, on the same topics as Rust programs."""

from __future__ import annotations

import hashlib
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _shmbus
from ._errors import Disconnected, Error, InvalidArgument

# The names Rust's `std::any::type_name` gives the primitives, for Pod topics of one number.
_RUST_NAMES = {
    "|b1": "bool", "|i1": "i8", "<i2": "i16", "<i4": "i32", "<i8": "i64", "|u1": "u8",
    "<u2": "u16", "<u4": "u32", "<u8": "u64", "<f4": "f32", "<f8": "f64",
}
#: The type name Rust records for `serde_publisher::<Vec<u8>>()`: bytes topics use its encoding.
BYTES_TYPE = "alloc::vec::Vec<u8>"


def _default_type_name(dt: np.dtype) -> str:
    if dt.str in _RUST_NAMES and dt.names is None:
        return _RUST_NAMES[dt.str]
    digest = hashlib.blake2s(repr(dt.descr).encode() + str(dt.itemsize).encode()).hexdigest()
    return f"numpy.{digest[:16]}"


def _meta_bytes(meta_dtype: Optional[np.dtype], meta: Any) -> bytes:
    if meta_dtype is None:
        if meta is not None:
            raise InvalidArgument("this topic has no metadata (made with meta=None)")
        return b""
    if meta is None:
        return bytes(meta_dtype.itemsize)
    if isinstance(meta, (bytes, bytearray, memoryview)):
        return bytes(meta)
    return np.asarray(meta, dtype=meta_dtype).tobytes()


def _find_loan(arr: Any) -> Any:
    b = arr
    while isinstance(b, np.ndarray):
        b = b.base
    if not isinstance(b, _shmbus.Loan):
        raise InvalidArgument("publish() takes an array returned by loan() (or use send())")
    return b


class Topic:
    """Settings of one topic, from which publishers and subscribers are made.

    Settings left ``None`` take the topic's value when it exists (or the default when this
    call creates it); a setting given explicitly is a requirement (:class:`QosMismatch`).
    ``overflow`` is ``"overwrite"`` (slow subscribers get :class:`Lagged`) or ``"backpressure"``
    (the publisher waits up to ``publish_timeout`` seconds).
    """

    def __init__(
        self,
        name: str,
        *,
        capacity: Optional[int] = None,
        overflow: Optional[str] = None,
        max_subscribers: Optional[int] = None,
        max_publishers: Optional[int] = None,
        max_held: Optional[int] = None,
        timestamps: Optional[bool] = None,
        mode: Optional[int] = None,
        slot_size: Optional[int] = None,
        history: int = 0,
        publish_timeout: Optional[float] = 1.0,
    ) -> None:
        self.name = name
        self.qos: Dict[str, Any] = dict(
            capacity=capacity, overflow=overflow, max_subscribers=max_subscribers,
            max_publishers=max_publishers, max_held=max_held, timestamps=timestamps, mode=mode,
            slot_size=slot_size, history=history, publish_timeout=publish_timeout,
        )

    def __repr__(self) -> str:
        given = ", ".join(f"{k}={v!r}" for k, v in self.qos.items() if v is not None)
        return f"Topic({self.name!r}{', ' if given else ''}{given})"

    def _q(self):
        return _Qos(**self.qos)

    def array_publisher(
        self, meta: Any = None, *, type_name: Optional[str] = None,
        pool_max_bytes: Optional[int] = None, pool_blocks_per_segment: Optional[int] = None,
        pool_history: Optional[int] = None,
    ) -> "ArrayPublisher":
        """The topic's (single) publisher of numpy arrays with metadata of dtype ``meta``
        (a structured dtype laid out like the Rust metadata struct, or ``None`` for Rust's
        ``()``). ``type_name`` is the Rust type's name (``"image_transfer::FrameMeta"``).

        ``pool_history`` (default 1): how many of the newest arrays of 4 MiB or more stay
        readable for late joiners once every subscriber has read them; older ones give their
        blocks back at the next loan, so a stream of large frames stays in two or three blocks.
        Smaller arrays stay until later messages push them out of the ring."""
        return ArrayPublisher(self, meta, type_name, pool_max_bytes, pool_blocks_per_segment,
                              pool_history)

    def array_subscriber(self, meta: Any = None, *, type_name: Optional[str] = None) -> "ArraySubscriber":
        """A subscriber of the topic's arrays (see :meth:`array_publisher` for ``meta``)."""
        return ArraySubscriber(self, meta, type_name)

    def publisher(self, dtype: Any, *, type_name: Optional[str] = None) -> "Publisher":
        """A publisher of fixed-size messages of ``dtype``: a numpy structured dtype made with
        ``align=True`` has the layout of the ``#[repr(C)]`` Rust struct with those fields.
        ``type_name`` must be the name the Rust side records (``"pubsub::Pose"``)."""
        return Publisher(self, np.dtype(dtype), type_name, "pod")

    def subscriber(self, dtype: Any, *, type_name: Optional[str] = None) -> "Subscriber":
        """A subscriber of fixed-size messages of ``dtype`` (see :meth:`publisher`)."""
        return Subscriber(self, np.dtype(dtype), type_name, "pod")

    def bytes_publisher(self, *, type_name: str = BYTES_TYPE) -> "Publisher":
        """A publisher of byte strings (readable in Rust by ``serde_subscriber::<Vec<u8>>``)."""
        return Publisher(self, None, type_name, "bytes")

    def bytes_subscriber(self, *, type_name: str = BYTES_TYPE) -> "Subscriber":
        """A subscriber of byte strings (from Python, or Rust's ``serde_publisher::<Vec<u8>>``)."""
        return Subscriber(self, None, type_name, "bytes")


class _Qos:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


class _Handle:
    _native: Any

    def close(self) -> None:
        """Leaves the topic (raises ``BufferError`` while arrays of this handle are alive)."""
        self._native.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def name(self) -> str:
        return self._native.name

    @property
    def type_name(self) -> str:
        """The type name recorded in the topic."""
        return self._native.type_name

    def __reduce__(self):
        # A handle travels as what made it; the receiver joins the topic afresh.
        return (type(self), self._args)


class ArrayPublisher(_Handle):
    """Publishes numpy arrays zero-copy: :meth:`loan` a block, fill it, :meth:`publish` it."""

    def __init__(self, topic: Topic, meta: Any, type_name: Optional[str],
                 pool_max_bytes: Optional[int] = None, pool_blocks_per_segment: Optional[int] = None,
                 pool_history: Optional[int] = None) -> None:
        self._args = (topic, meta, type_name, pool_max_bytes, pool_blocks_per_segment, pool_history)
        self.topic = topic
        self.meta_dtype = None if meta is None else np.dtype(meta)
        if type_name is None:
            type_name = "()" if self.meta_dtype is None else _default_type_name(self.meta_dtype)
        size = 0 if self.meta_dtype is None else self.meta_dtype.itemsize
        self._native = _shmbus.ArrayPublisher(topic.name, type_name, size, topic._q(),
                                              pool_max_bytes, pool_blocks_per_segment, pool_history)

    def loan(self, shape: Union[int, Sequence[int]], dtype: Any = np.uint8) -> np.ndarray:
        """A writable numpy array of ``shape``/``dtype`` living in a block of shared memory.
        Its contents are an earlier array's: overwrite them, then :meth:`publish`. Dropping it
        unpublished gives the block back."""
        shape = [int(shape)] if isinstance(shape, (int, np.integer)) else [int(d) for d in shape]
        return self._native.loan(np.ndarray, shape, np.dtype(dtype).str)

    def publish(self, array: np.ndarray, meta: Any = None) -> int:
        """Publishes a loaned array with ``meta`` (a tuple, numpy value or bytes of the meta
        dtype); returns its sequence number. Don't write the array afterwards."""
        return self._native.publish(_find_loan(array), _meta_bytes(self.meta_dtype, meta))

    def send(self, array: Any, meta: Any = None) -> int:
        """Copies ``array`` into a block and publishes it (one copy: the write itself)."""
        src = np.ascontiguousarray(array)
        dst = self.loan(src.shape, src.dtype)
        dst[...] = src
        return self.publish(dst, meta)

    def __repr__(self) -> str:
        return f"<shmbus.ArrayPublisher {self.name!r} type={self.type_name!r} meta={self.meta_dtype}>"


class Sample:
    """A received array. ``array`` is a read-only numpy view of the block (no copy), ``meta``
    the metadata (a numpy structured scalar, or ``None``), ``seq`` the sequence number.

    The block is held (never reused by the publisher) while the sample or any view of it is
    alive. :meth:`release` gives it back at once (``BufferError`` if views are alive); the
    context manager gives it back on exit, or when the last view dies."""

    __slots__ = ("_native", "_array", "_meta_dtype")

    def __init__(self, native: Any, meta_dtype: Optional[np.dtype]) -> None:
        self._native = native
        self._meta_dtype = meta_dtype
        self._array: Optional[np.ndarray] = native.array(np.ndarray)

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            raise Error("this sample was released")
        return self._array

    @property
    def meta(self) -> Any:
        if self._meta_dtype is None:
            return None
        return np.frombuffer(self._native.meta, dtype=self._meta_dtype)[0]

    @property
    def seq(self) -> int:
        return self._native.seq

    def release(self) -> None:
        """Gives the block back now; ``BufferError`` while other numpy views of it live."""
        arr, self._array = self._array, None
        try:
            del arr
            self._native.release()
        except BufferError:
            raise

    def __enter__(self) -> "Sample":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._array = None
        try:
            self._native.release()
        except BufferError:
            pass  # views outlive the block's use here: it goes back when the last one dies

    def __repr__(self) -> str:
        a = self._array
        what = "released" if a is None else f"dtype={a.dtype}, shape={a.shape}"
        return f"<shmbus.Sample seq={self.seq} {what} meta={self.meta!r}>"


class ArraySubscriber(_Handle):
    """Receives numpy arrays in place (read-only views of the publisher's blocks)."""

    def __init__(self, topic: Topic, meta: Any, type_name: Optional[str]) -> None:
        self._args = (topic, meta, type_name)
        self.topic = topic
        self.meta_dtype = None if meta is None else np.dtype(meta)
        if type_name is None:
            type_name = "()" if self.meta_dtype is None else _default_type_name(self.meta_dtype)
        size = 0 if self.meta_dtype is None else self.meta_dtype.itemsize
        self._native = _shmbus.ArraySubscriber(topic.name, type_name, size, topic._q())

    def recv(self, timeout: Optional[float] = None) -> Sample:
        """The next array, waiting up to ``timeout`` seconds (``None``: while a publisher
        lives). Raises :class:`Timeout`, :class:`Lagged` (``.count`` missed),
        :class:`Disconnected`; Ctrl-C interrupts the wait."""
        return Sample(self._native.recv(timeout), self.meta_dtype)

    def try_recv(self) -> Sample:
        """The next array if there is one now, else :class:`Empty`."""
        return Sample(self._native.try_recv(), self.meta_dtype)

    async def recv_async(self, timeout: Optional[float] = None) -> Sample:
        """``recv`` for asyncio: ``await sub.recv_async()`` yields to the event loop while it
        waits (one waiter thread per process watches every awaited subscriber). Raises as
        ``recv``; cancelling it loses no message."""
        from ._aio import recv_async
        return await recv_async(self._native, lambda: self.recv(0), timeout)

    def __iter__(self) -> Iterator[Sample]:
        """Samples until every publisher is gone (:class:`Lagged` propagates)."""
        while True:
            try:
                yield self.recv()
            except Disconnected:
                return

    def __repr__(self) -> str:
        return f"<shmbus.ArraySubscriber {self.name!r} type={self.type_name!r} meta={self.meta_dtype}>"


class Publisher(_Handle):
    """Publishes fixed-size structured messages, or byte strings (:meth:`Topic.bytes_publisher`)."""

    def __init__(self, topic: Topic, dtype: Optional[np.dtype], type_name: Optional[str], codec: str) -> None:
        self._args = (topic, dtype, type_name, codec)
        self.topic, self.dtype = topic, dtype
        if dtype is not None:
            if dtype.itemsize == 0:
                raise InvalidArgument("a message dtype needs a size")
            if type_name is None:
                type_name = _default_type_name(dtype)
            size, align = dtype.itemsize, dtype.alignment
        else:
            size, align = 0, 1
        self._native = _shmbus.Publisher(topic.name, type_name, codec, size, align, topic._q())

    def send(self, value: Any) -> int:
        """Publishes ``value`` (a tuple or numpy value of the dtype; bytes for a bytes topic);
        returns its sequence number."""
        if self.dtype is None:
            return self._native.send(bytes(value))
        return self._native.send(np.asarray(value, dtype=self.dtype).tobytes())

    def send_many(self, values: Any) -> int:
        """Publishes every element of ``values`` (an array or a sequence of values of the dtype)
        as consecutive messages, in one batch: one call and one wake-up check for all of them.
        Returns the sequence number of the first. On a failure part way (:class:`Timeout` under
        back-pressure), the message says how many were published."""
        if self.dtype is None:
            raise InvalidArgument("send_many is for dtype topics; send bytes one by one")
        data = np.ascontiguousarray(np.asarray(values, dtype=self.dtype).reshape(-1))
        return self._native.send_many(data.tobytes())

    def __repr__(self) -> str:
        return f"<shmbus.Publisher {self.name!r} type={self.type_name!r} dtype={self.dtype}>"


class Message:
    """A received structured or bytes message: ``value`` (a numpy scalar/structured scalar, or
    bytes), ``seq``, ``published_at`` (monotonic ns, if the topic records timestamps)."""

    __slots__ = ("value", "seq", "published_at")

    def __init__(self, value: Any, seq: int, published_at: Optional[int]) -> None:
        self.value, self.seq, self.published_at = value, seq, published_at

    def __getitem__(self, field: str) -> Any:
        return self.value[field]

    def __repr__(self) -> str:
        return f"<shmbus.Message seq={self.seq} {self.value!r}>"


class Subscriber(_Handle):
    """Receives structured messages or byte strings (copied out: they are small)."""

    def __init__(self, topic: Topic, dtype: Optional[np.dtype], type_name: Optional[str], codec: str) -> None:
        self._args = (topic, dtype, type_name, codec)
        self.topic, self.dtype = topic, dtype
        if dtype is not None:
            if type_name is None:
                type_name = _default_type_name(dtype)
            size, align = dtype.itemsize, dtype.alignment
        else:
            size, align = 0, 1
        self._native = _shmbus.Subscriber(topic.name, type_name, codec, size, align, topic._q())

    def _wrap(self, got: Tuple[int, bytes, Optional[int]]) -> Message:
        seq, data, stamp = got
        value: Any = data if self.dtype is None else np.frombuffer(data, dtype=self.dtype)[0]
        return Message(value, seq, stamp)

    def recv(self, timeout: Optional[float] = None) -> Message:
        """The next message, waiting up to ``timeout`` seconds (GIL released, Ctrl-C honoured)."""
        return self._wrap(self._native.recv(timeout))

    def try_recv(self) -> Message:
        """The next message if there is one now, else :class:`Empty`."""
        return self._wrap(self._native.try_recv())

    def _batch(self, got: Tuple[bytes, List[int]], seqs: bool) -> Any:
        data, numbers = got
        values = np.frombuffer(data, dtype=self.dtype)
        return (values, np.asarray(numbers, dtype=np.uint64)) if seqs else values

    def recv_many(self, max: int = 1024, timeout: Optional[float] = None, *,
                  seqs: bool = False) -> Any:
        """Every message there is, up to ``max``, as one numpy array of the dtype (a copy, in
        this process's memory), taken with one update of this subscriber's cursor: far cheaper
        per message than ``recv`` in a loop. Waits up to ``timeout`` seconds for the first
        (``None``: while a publisher lives). With ``seqs=True``, returns ``(values, seq
        numbers)``. A batch ends before a lag: the next call raises :class:`Lagged`. Raises as
        ``recv``; fixed-size (dtype) topics only."""
        if self.dtype is None:
            raise InvalidArgument("recv_many is for dtype topics; receive bytes one by one")
        return self._batch(self._native.recv_many(max, timeout), seqs)

    def try_recv_many(self, max: int = 1024, *, seqs: bool = False) -> Any:
        """``recv_many`` without waiting: :class:`Empty` when nothing is there."""
        if self.dtype is None:
            raise InvalidArgument("recv_many is for dtype topics; receive bytes one by one")
        return self._batch(self._native.try_recv_many(max), seqs)

    async def recv_async(self, timeout: Optional[float] = None) -> Message:
        """``recv`` for asyncio: ``await sub.recv_async()`` yields to the event loop while it
        waits (one waiter thread per process watches every awaited subscriber). Raises as
        ``recv``; cancelling it loses no message."""
        from ._aio import recv_async
        return await recv_async(self._native, lambda: self.recv(0), timeout)

    def __iter__(self) -> Iterator[Message]:
        while True:
            try:
                yield self.recv()
            except Disconnected:
                return

    def __repr__(self) -> str:
        return f"<shmbus.Subscriber {self.name!r} type={self.type_name!r} dtype={self.dtype}>"
