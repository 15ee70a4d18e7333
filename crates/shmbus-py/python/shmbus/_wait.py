"""``shmbus.wait``: one thread waiting on many subscribers, queues and events at once."""

from __future__ import annotations

from typing import Any, Iterable, List, Optional, TypeVar

from . import _shmbus
from ._array_queue import ArrayQueue
from ._topic import ArraySubscriber, Subscriber
from ._work import Queue

T = TypeVar("T")


def _native(obj: Any) -> Any:
    if isinstance(obj, (Subscriber, ArraySubscriber)):
        return obj._native
    if isinstance(obj, (Queue, ArrayQueue)):
        return obj._q
    if isinstance(obj, _shmbus.Event):
        return obj
    raise TypeError(
        f"shmbus.wait takes subscribers, queues and events, not {type(obj).__name__}")


def wait(objects: Iterable[T], timeout: Optional[float] = None) -> List[T]:
    """Waits until at least one of ``objects`` is ready, at most ``timeout`` seconds (``None``:
    no limit), and returns the list of those that are, in the order given (empty: the timeout
    passed), in the manner of ``multiprocessing.connection.wait``.

    ``objects`` are ``Subscriber``, ``ArraySubscriber``, ``Queue``, ``ArrayQueue`` (as a
    consumer) and ``Event`` objects, in any mix (at most 128).

    - A subscriber is ready when a receive would find something (a message, or a lag report),
      or once every publisher it saw is gone (dead or closed) and everything was read: then
      ``recv(timeout=0)`` raises ``Disconnected`` (``try_recv``, which never waits, raises
      ``Empty``). A closed handle is ready too (using it raises).
    - A queue is ready when an item waits (another consumer may take it first: ``get`` with a
      short timeout, or catch ``Empty``), or when it is closed and drained (``get`` raises
      ``Closed``).
    - A manual-reset event is ready while set. An auto-reset event's set is *consumed* by the
      wait that returns it: this call was the one waiter it let through.

    The GIL is released while waiting, which happens in slices of at most 50 ms with signal
    checks in between, so Ctrl-C interrupts it. Publishers pay nothing while nobody waits; the
    wait sleeps on every object at once (Linux 5.16 or newer, else ``shmbus.Error``).

    >>> import shmbus
    >>> stop = shmbus.Event("doc-wait-stop")
    >>> shmbus.wait([stop], timeout=0.01)
    []
    >>> stop.set()
    >>> shmbus.wait([stop], timeout=1) == [stop]
    True
    """
    objs = list(objects)
    ready = _shmbus.wait([_native(o) for o in objs], timeout)
    return [objs[i] for i in ready]
