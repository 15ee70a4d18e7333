"""Work queues of numpy arrays, zero-copy: the Python side of Rust's ``shmbus::ArrayQueue<M>``.
A producer writes an array in place into a slot of the queue (``loan`` then ``commit``, or
``put`` for one copy); a consumer reads it in place (``receive``). The queue's slots are its
blocks: a slot is free again when its consumer finishes the delivery, or dies."""

from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from . import _shmbus
from ._errors import Closed, InvalidArgument
from ._topic import _default_type_name, _meta_bytes
from ._work import _QueueState

__all__ = ["ArrayQueue", "ArrayDelivery"]


def _shape(shape: Union[int, Sequence[int]]) -> list:
    return [int(shape)] if isinstance(shape, (int, np.integer)) else [int(d) for d in shape]


class ArrayDelivery:
    """An array taken from an :class:`ArrayQueue`. ``array`` is a read-only numpy view of its
    slot (no copy), ``meta`` the metadata (a numpy structured scalar, or ``None``),
    ``deliveries`` how many times it was delivered (1: the first).

    ``ack()`` when done (the slot is free again) or ``refuse()`` to give it back for another
    delivery; both raise ``BufferError`` while other numpy views of it are alive. As a context
    manager it acknowledges on success and refuses on an exception, once the last view is
    gone. A delivery dropped (or whose process dies) unfinished is given back in an
    acknowledged queue, and done (lost, if the process died) in an at-most-once one."""

    __slots__ = ("_native", "_array", "_meta_dtype")

    def __init__(self, native: Any, meta_dtype: Optional[np.dtype]) -> None:
        self._native = native
        self._meta_dtype = meta_dtype
        self._array: Optional[np.ndarray] = native.array(np.ndarray)

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            raise InvalidArgument("this delivery was finished")
        return self._array

    @property
    def meta(self) -> Any:
        if self._meta_dtype is None:
            return None
        return np.frombuffer(self._native.meta, dtype=self._meta_dtype)[0]

    @property
    def deliveries(self) -> int:
        return self._native.deliveries

    @property
    def pending(self) -> bool:
        """Whether neither ``ack()`` nor ``refuse()`` has run yet."""
        return self._native.pending

    def ack(self) -> None:
        """The array is done: its slot is free again."""
        self._array = None
        self._native.ack()

    def refuse(self) -> None:
        """Gives the array back, first in line, for another delivery (dead-lettered after the
        queue's ``max_deliveries``)."""
        self._array = None
        self._native.refuse()

    def __enter__(self) -> "ArrayDelivery":
        return self

    def __exit__(self, et, ev, tb) -> bool:
        self._array = None
        if self._native.pending:
            if et is None:
                self._native.ack(deferred=True)
            else:
                self._native.refuse(deferred=True)
        return False

    def __repr__(self) -> str:
        a = self._array
        what = "finished" if a is None else f"dtype={a.dtype}, shape={a.shape}"
        return f"<shmbus.ArrayDelivery {what} deliveries={self.deliveries}>"


class ArrayQueue(_QueueState):
    """A named bounded work queue of numpy arrays shared by every process that opens it: each
    array goes to exactly one consumer, written and read in place.

    ``capacity`` (arrays, default 8) and ``array_bytes`` (bytes per array at most, default
    1 MiB) are used when the queue is created: the queue holds ``capacity`` blocks of
    ``array_bytes``. ``meta`` is the dtype of metadata sent with each array (a structured dtype
    laid out like the Rust metadata struct, or ``None`` for Rust's ``()``), ``type_name`` the
    Rust type's name. ``acknowledged`` and ``max_deliveries`` choose the delivery mode as for
    :class:`shmbus.Queue`. On an existing queue, a value given is a requirement.

    Waits release the GIL and honour Ctrl-C; ``receive``/``get`` raise :class:`shmbus.Empty`
    on timeout, ``loan``/``put`` :class:`shmbus.Full`, both :class:`shmbus.Closed` after
    ``close()`` (``receive`` once the queue is drained). Pickles as its name."""

    def __init__(self, name: str, capacity: Optional[int] = None,
                 array_bytes: Optional[int] = None, *, meta: Any = None,
                 type_name: Optional[str] = None, acknowledged: Optional[bool] = None,
                 max_deliveries: Optional[int] = None, create: bool = True,
                 max_participants: Optional[int] = None, mode: int = 0o600,
                 persistent: bool = False) -> None:
        self._args = (name, meta, type_name)
        self.meta_dtype = None if meta is None else np.dtype(meta)
        if type_name is None:
            type_name = "()" if self.meta_dtype is None else _default_type_name(self.meta_dtype)
        size = 0 if self.meta_dtype is None else self.meta_dtype.itemsize
        self._q = _shmbus.RawArrayQueue(name, type_name, size, capacity, array_bytes,
                                        acknowledged, max_deliveries, create, max_participants,
                                        mode, persistent)

    # -- producing
    def loan(self, shape: Union[int, Sequence[int]], dtype: Any = np.uint8,
             block: bool = True, timeout: Optional[float] = None) -> np.ndarray:
        """A writable numpy array of ``shape``/``dtype`` in a free slot of the queue (waits for
        one at most ``timeout`` seconds). Its contents are an earlier array's: overwrite them,
        then :meth:`commit`. Dropping it uncommitted gives the slot back."""
        return self._q.loan(np.ndarray, _shape(shape), np.dtype(dtype).str, block, timeout)

    def commit(self, array: np.ndarray, meta: Any = None) -> None:
        """Puts a loaned array in line with ``meta``. Don't write the array afterwards."""
        b = array
        while isinstance(b, np.ndarray):
            b = b.base
        if not isinstance(b, _shmbus.ArrayLoan):
            raise InvalidArgument("commit() takes an array returned by loan() (or use put())")
        self._q.commit(b, _meta_bytes(self.meta_dtype, meta))

    def put(self, array: Any, meta: Any = None, block: bool = True,
            timeout: Optional[float] = None) -> None:
        """Copies ``array`` into a free slot and puts it in line (one copy: the write)."""
        src = np.ascontiguousarray(array)
        dst = self.loan(src.shape, src.dtype, block, timeout)
        dst[...] = src
        self.commit(dst, meta)

    # -- consuming
    def receive(self, block: bool = True, timeout: Optional[float] = None) -> ArrayDelivery:
        """The next array, in place, as an :class:`ArrayDelivery`."""
        return ArrayDelivery(self._q.receive(block, timeout), self.meta_dtype)

    def get(self, block: bool = True, timeout: Optional[float] = None) -> np.ndarray:
        """The next array, copied out (and acknowledged)."""
        d = self.receive(block, timeout)
        out = np.array(d.array)
        d.ack()
        return out

    def __iter__(self) -> Iterator[ArrayDelivery]:
        """Deliveries until the queue is closed and drained (finish each one)."""
        while True:
            try:
                yield self.receive()
            except Closed:
                return

    @property
    def max_array_bytes(self) -> int:
        """Bytes one array may have at most."""
        return self._q.max_array_bytes

    def __reduce__(self):
        name, meta, type_name = self._args
        return (_open_existing, (name, meta, type_name))

    def __repr__(self) -> str:
        return (f"shmbus.ArrayQueue({self.name!r}, capacity={self.capacity}, "
                f"max_array_bytes={self.max_array_bytes})")


def _open_existing(name: str, meta: Any, type_name: Optional[str]) -> ArrayQueue:
    return ArrayQueue(name, meta=meta, type_name=type_name, create=False)
