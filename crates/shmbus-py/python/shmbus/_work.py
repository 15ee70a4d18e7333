"""Work queues, shared values, barriers and shared state: the Python side of Rust's
``shmbus::SerdeQueue<Vec<u8>>``, ``shmbus::Value<T>``, ``shmbus::Barrier`` and a shared state
of pickled bytes. Every handle pickles as its name (open it again in the child: no fork tricks).
"""

from __future__ import annotations

import pickle
import struct
from typing import Any, Callable, Dict as _DictT, Iterator, Optional

from . import _shmbus
from ._shmbus import Barrier

__all__ = ["Queue", "Delivery", "Value", "Barrier", "Shared", "Dict"]


def _dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


class Delivery:
    """An item taken from an acknowledged queue: ``ack()`` when done, ``refuse()`` to give it
    back for redelivery. As a context manager it acknowledges on success and refuses on an
    exception. A delivery dropped (or whose process dies) without either is given back."""

    __slots__ = ("_raw", "_pickled", "_value", "_has_value")

    def __init__(self, raw: Any, pickled: bool) -> None:
        self._raw = raw
        self._pickled = pickled
        self._has_value = False
        self._value = None

    @property
    def data(self) -> bytes:
        """The item's bytes (the pickle, for items ``put()``)."""
        return self._raw.data

    @property
    def value(self) -> Any:
        """The item: unpickled for ``get()``, the bytes for ``get_bytes()``."""
        if not self._pickled:
            return self._raw.data
        if not self._has_value:
            self._value = pickle.loads(self._raw.data)
            self._has_value = True
        return self._value

    @property
    def deliveries(self) -> int:
        """How many times the item has been delivered, this time included (1: the first)."""
        return self._raw.deliveries

    @property
    def pending(self) -> bool:
        """Whether neither ``ack()`` nor ``refuse()`` was called yet."""
        return self._raw.pending

    def ack(self) -> None:
        """The item is done: it is removed from the queue for good."""
        self._raw.ack()

    def refuse(self) -> None:
        """Gives the item back, first in line, for another delivery (dead-lettered, that is
        dropped and counted, after the queue's ``max_deliveries``)."""
        self._raw.refuse()

    def __enter__(self) -> Any:
        return self.value

    def __exit__(self, et, ev, tb) -> bool:
        if self._raw.pending:
            if et is None:
                self.ack()
            else:
                self.refuse()
        return False

    def __repr__(self) -> str:
        return f"shmbus.Delivery(deliveries={self.deliveries}, pending={self.pending})"


class _QueueState:
    """What every queue handle tells of its queue (``self._q`` is the native queue)."""

    _q: Any

    def qsize(self) -> int:
        """Items ready now (taken, unacknowledged items are not counted)."""
        return self._q.qsize()

    def empty(self) -> bool:
        return self._q.qsize() == 0

    def full(self) -> bool:
        return self._q.qsize() >= self._q.capacity

    def close(self) -> None:
        """Closes the queue for every process: puts fail, gets drain what is left, then raise
        :class:`shmbus.Closed`. (``multiprocessing.Queue.close`` closes only this handle.)"""
        self._q.close()

    def stats(self) -> _DictT[str, int]:
        """Counters: put, taken, done, lost, redelivered, dead_lettered, abandoned, repairs."""
        return self._q.stats()

    @property
    def closed(self) -> bool:
        return self._q.closed

    @property
    def capacity(self) -> int:
        return self._q.capacity

    @property
    def acknowledged(self) -> bool:
        return self._q.acknowledged

    @property
    def name(self) -> str:
        return self._q.name

    @property
    def created(self) -> bool:
        return self._q.created


class Queue(_QueueState):
    """A named bounded work queue shared by every process that opens it: each item goes to
    exactly one consumer. ``multiprocessing.Queue``'s methods; any picklable object (numpy
    arrays included, copied) goes through ``put``/``get``; ``put_bytes``/``get_bytes`` move
    raw bytes and are what Rust's ``SerdeQueue<Vec<u8>>`` of the same name sees.

    ``capacity`` (items, default 64) and ``item_size`` (bytes per item, default 4096) are used
    when the queue is created; ``acknowledged`` (default ``False`` when creating) and
    ``max_deliveries`` (default 3) choose the delivery mode. On an existing queue, a value
    given is a requirement (``InvalidArgument`` if it differs); ``None`` takes what it has.

    At most once (default): ``get()`` returns the item. Acknowledged: ``get()`` and
    ``get_bytes()`` return a :class:`Delivery` to ``ack()`` or ``refuse()``; a consumer that
    dies holding one gives the item back to the others.

    Waits release the GIL and honour Ctrl-C. ``get`` raises :class:`shmbus.Empty` (a
    ``queue.Empty``) on timeout, ``put`` :class:`shmbus.Full` (a ``queue.Full``), both raise
    :class:`shmbus.Closed` after ``close()`` (``get`` once the queue is drained).
    """

    def __init__(self, name: str, capacity: Optional[int] = None,
                 item_size: Optional[int] = None, acknowledged: Optional[bool] = None,
                 max_deliveries: Optional[int] = None, create: bool = True,
                 max_participants: Optional[int] = None, mode: int = 0o600,
                 persistent: bool = False) -> None:
        self._q = _shmbus.RawWorkQueue(name, capacity, item_size, acknowledged, max_deliveries,
                                       create, max_participants, mode, persistent)

    # -- producing
    def put(self, obj: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """Pickles ``obj`` and puts it (waits for a free slot at most ``timeout`` seconds)."""
        self._q.put_bytes(_dumps(obj), block, timeout)

    def put_nowait(self, obj: Any) -> None:
        self.put(obj, False)

    def put_bytes(self, data: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """Puts the bytes of a bytes-like ``data`` as they are."""
        self._q.put_bytes(data, block, timeout)

    # -- consuming
    def _get(self, block: bool, timeout: Optional[float], pickled: bool) -> Any:
        if self._q.acknowledged:
            return Delivery(self._q.receive(block, timeout), pickled)
        data = self._q.get_bytes(block, timeout)
        return pickle.loads(data) if pickled else data

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """The next item, unpickled (a :class:`Delivery` in an acknowledged queue)."""
        return self._get(block, timeout, True)

    def get_nowait(self) -> Any:
        return self.get(False)

    def get_bytes(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """The next item's bytes (a :class:`Delivery` in an acknowledged queue)."""
        return self._get(block, timeout, False)

    def __iter__(self) -> Iterator[Any]:
        """Items until the queue is closed and drained."""
        from ._errors import Closed
        while True:
            try:
                yield self.get()
            except Closed:
                return

    @property
    def item_size(self) -> int:
        """Bytes an item (its pickle, for ``put``) may hold at most."""
        return self._q.item_size

    def __reduce__(self):
        return (Queue, (self.name, None, None, None, None, False))

    def __repr__(self) -> str:
        return f"shmbus.Queue({self.name!r}, capacity={self.capacity})"


_TYPECODES = {"b": "b", "B": "B", "h": "h", "H": "H", "i": "i", "I": "I", "l": "q", "L": "Q",
              "q": "q", "Q": "Q", "f": "f", "d": "d"}
_NUMPY = {"int8": "b", "uint8": "B", "int16": "h", "uint16": "H", "int32": "i", "uint32": "I",
          "int64": "q", "uint64": "Q", "float32": "f", "float64": "d"}


def _typecode(t: Any) -> str:
    if isinstance(t, str) and t in _TYPECODES:
        return t
    if t is int:
        return "q"
    if t is float:
        return "d"
    try:
        import numpy as np
        return _NUMPY[np.dtype(t).name]
    except (TypeError, KeyError, ImportError):
        raise _errors().WrongDtype(
            f"{t!r}: shmbus.Value takes a typecode (b B h H i I l L q Q f d) or an integer or "
            "float dtype") from None


def _errors():
    from . import _errors as e
    return e


class Value:
    """A named scalar shared by every process that opens it, like ``multiprocessing.Value``
    but lock-free: every value is one atomic word, so ``value`` reads and writes never wait
    and never tear, ``fetch_add`` (integers) is one atomic read-modify-write, and ``update(fn)``
    a compare-and-swap loop (``fn`` may run more than once: keep it pure). There is no
    ``get_lock()``: ``v.value += 1`` is *not* atomic, ``v.fetch_add(1)`` is.

    ``typecode_or_dtype``: ``"b" "B" "h" "H" "i" "I" "l" "L" "q" "Q" "f" "d"`` (``l``/``L``
    are 64-bit), ``int``, ``float`` or a numpy integer/float dtype. The segment is Rust's
    ``shmbus::Value<T>`` of the matching type (``"q"``: ``Value<i64>``, ``"d"``:
    ``Value<f64>``...). ``initial`` is used only when this call creates it.
    """

    def __init__(self, name: str, typecode_or_dtype: Any = "q", initial: Any = 0,
                 create: bool = True, mode: int = 0o600, persistent: bool = False) -> None:
        self._tc = _typecode(typecode_or_dtype)
        self._fmt = "=" + _TYPECODES[self._tc]
        self._size = struct.calcsize(self._fmt)
        self._v = _shmbus.RawValueHandle(name, self._tc, struct.pack(self._fmt, initial), create,
                                         mode, persistent)

    @property
    def value(self) -> Any:
        return struct.unpack(self._fmt, self._v.load())[0]

    @value.setter
    def value(self, v: Any) -> None:
        self._v.store(struct.pack(self._fmt, v))

    def _from_bits(self, bits: int) -> int:
        bits &= (1 << (8 * self._size)) - 1
        return struct.unpack(self._fmt, bits.to_bytes(self._size, "little" if struct.pack(
            "=H", 1)[0] == 1 else "big"))[0]

    def fetch_add(self, delta: int = 1) -> int:
        """Adds ``delta`` (wrapping at the type's width) atomically; returns the previous
        value. Integers only."""
        if self._tc in "fd":
            raise _errors().WrongDtype("fetch_add needs an integer Value")
        return self._from_bits(self._v.fetch_add(int(delta)))

    def update(self, fn: Callable[[Any], Any]) -> Any:
        """Replaces the value by ``fn(value)`` atomically; returns the new value."""
        fmt = self._fmt
        new = self._v.update(lambda b: struct.pack(fmt, fn(struct.unpack(fmt, b)[0])))
        return struct.unpack(fmt, new)[0]

    @property
    def typecode(self) -> str:
        return self._tc

    @property
    def name(self) -> str:
        return self._v.name

    def __reduce__(self):
        return (Value, (self.name, self._tc, 0, False))

    def __repr__(self) -> str:
        return f"shmbus.Value({self.name!r}, {self._tc!r}, {self.value!r})"


class Shared:
    """A named state object (anything picklable) shared by every process that opens it,
    versioned: ``get()`` is a consistent snapshot read without the lock; ``update(fn)`` runs
    ``fn`` on the current state under a robust process-shared lock and stores the result (its
    return value, or the state itself if ``fn`` returns ``None`` after mutating it) as the next
    ``version``; ``wait_changed(version, timeout)`` sleeps until a newer version exists.

    ``capacity``: bytes the pickled state may take (used when creating; default 64 KiB).
    ``initial`` is used only when this call creates it. A writer killed mid-update leaves the
    last complete version. Only Python reads it (the bytes are a pickle).
    """

    def __init__(self, name: str, initial: Any = None, capacity: int = 65536,
                 create: bool = True, mode: int = 0o600, persistent: bool = False) -> None:
        self._s = _shmbus.RawSharedHandle(name, capacity, _dumps(initial), create, mode,
                                          persistent)

    def get(self) -> Any:
        """A snapshot of the state."""
        return pickle.loads(self._s.read()[0])

    def snapshot(self) -> "tuple[Any, int]":
        """``(state, version)``, consistent with each other."""
        b, v = self._s.read()
        return pickle.loads(b), v

    def set(self, state: Any) -> int:
        """Replaces the state; returns the new version."""
        data = _dumps(state)
        return self._s.update(lambda _old: data)

    def update(self, fn: Callable[[Any], Any]) -> int:
        """Read-modify-write under the lock; returns the new version. An exception from ``fn``
        changes nothing and propagates."""
        def step(old: bytes) -> bytes:
            state = pickle.loads(old)
            r = fn(state)
            return _dumps(state if r is None else r)
        return self._s.update(step)

    @property
    def version(self) -> int:
        """0 for the initial state; every update adds 1."""
        return self._s.version

    def wait_changed(self, version: int, timeout: Optional[float] = None) -> int:
        """Waits (GIL released, Ctrl-C honoured) until the version differs from ``version``;
        returns the newer one; raises :class:`shmbus.Timeout`."""
        return self._s.wait_changed(version, timeout)

    @property
    def capacity(self) -> int:
        return self._s.capacity

    @property
    def name(self) -> str:
        return self._s.name

    def __reduce__(self):
        return (type(self), (self.name, None, 0, False))


class Dict(Shared):
    """A dict shared by every process that opens it, instead of ``Manager().dict()`` (no
    server process). Reads are lock-free snapshots; every write (``d[k] = v``, ``del d[k]``,
    ``setdefault``, ``pop``, ``update``) is one read-modify-write of the whole pickled dict
    under the lock, so concurrent writers never lose each other's keys. For a compound change
    use ``d.update(fn)`` with a function of the dict. Values must pickle."""

    def __init__(self, name: str, initial: Optional[Any] = None, capacity: int = 65536,
                 create: bool = True, mode: int = 0o600, persistent: bool = False) -> None:
        super().__init__(name, dict(initial or {}), capacity, create, mode, persistent)

    def __getitem__(self, key: Any) -> Any:
        return self.get()[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        super().update(lambda d: d.__setitem__(key, value))

    def __delitem__(self, key: Any) -> None:
        super().update(lambda d: d.__delitem__(key))

    def __contains__(self, key: Any) -> bool:
        return key in self.get()

    def __len__(self) -> int:
        return len(self.get())

    def __iter__(self) -> Iterator[Any]:
        return iter(self.get())

    def keys(self):
        return self.get().keys()

    def values(self):
        return self.get().values()

    def items(self):
        return self.get().items()

    def copy(self) -> dict:
        return self.get()

    def setdefault(self, key: Any, default: Any = None) -> Any:
        out = []
        super().update(lambda d: out.append(d.setdefault(key, default)))
        return out[-1]

    def pop(self, key: Any, *default: Any) -> Any:
        out = []
        super().update(lambda d: out.append(d.pop(key, *default)))
        return out[-1]

    def update(self, fn: Any = None, **kw: Any) -> int:  # type: ignore[override]
        """``update(fn)``: ``fn(d)`` mutates the dict (or returns a new one) under the lock.
        ``update(mapping, **kw)``: like ``dict.update``. Returns the new version."""
        if callable(fn):
            return super().update(fn)
        items = dict(fn or {}, **kw)
        return super().update(lambda d: d.update(items))

    def __repr__(self) -> str:
        return f"shmbus.Dict({self.name!r}, {self.get()!r})"
