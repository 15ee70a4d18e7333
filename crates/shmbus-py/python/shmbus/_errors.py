"""The exceptions shmbus raises. Every one is a :class:`shmbus.Error`; most also inherit the
built-in exception Python code already catches (``FileNotFoundError``, ``TimeoutError``, ...)."""

from __future__ import annotations

import queue as _queue
import threading as _threading


class Error(Exception):
    """Base class of every shmbus error."""


class NotFound(Error, FileNotFoundError):
    """No object of that name exists."""


class NameReused(NotFound):
    """The name now refers to another segment than the one that was pickled (it was deleted
    and created again)."""


class AlreadyExists(Error, FileExistsError):
    """An object of that name exists already."""


class PermissionDenied(Error, PermissionError):
    """The file mode forbids it, or a write through a read-only attachment."""


class OutOfSpace(Error, MemoryError):
    """``/dev/shm`` (or the pool, or the topic's participant table) is full."""


class WrongType(Error, TypeError):
    """The object holds another kind or type than asked for (a topic of another message type,
    a lock where an array was expected)."""


class WrongDtype(WrongType):
    """The array or message has another dtype than asked for, or shmbus cannot store it."""


class InvalidName(Error, ValueError):
    """Not a valid shmbus name (1-200 bytes of ASCII letters, digits, ``_ - .``)."""


class InvalidArgument(Error, ValueError):
    """A shape, size or option shmbus cannot honour."""


class QosMismatch(InvalidArgument):
    """An explicit topic setting the existing topic does not have."""


class Corrupt(Error):
    """A segment's contents are damaged or refused by validation."""


class Timeout(Error, TimeoutError):
    """A wait ran out of time."""


class Empty(Error, _queue.Empty):
    """``try_recv`` found no message; ``Queue.get`` found no item (in time)."""


class Full(Error, _queue.Full):
    """``Queue.put`` found no free slot (in time)."""


class Closed(Error):
    """The work queue was closed (``get``: and every item was taken)."""


class BrokenBarrier(Error, _threading.BrokenBarrierError):
    """A party of the barrier died before it arrived: this generation never completes (the
    next one starts afresh)."""


class Disconnected(Error, ConnectionError):
    """Every publisher left and every message was read."""


class TooManyHeld(Error):
    """The subscriber holds as many samples as the topic allows: release one first."""


class UsedAfterFork(Error, RuntimeError):
    """A publisher, subscriber or loan made before ``fork()`` was used in the child. Open a new
    one in the child (arrays, locks, semaphores and events keep working)."""


class NotRecoverable(Error):
    """A lock whose holder died was released without ``mark_consistent()``: nobody can lock it
    again. Remove it (``shmbus.unlink``) and make it anew."""


class Deadlock(Error, RuntimeError):
    """This thread already holds the lock (reported instead of waiting forever)."""


class OwnerDiedWarning(UserWarning):
    """``Lock.acquire`` took over a lock whose previous holder died holding it: what it guards
    may be half-updated. Repair it, call ``Lock.mark_consistent()``, then release."""


class Lagged(Error):
    """The subscriber missed ``count`` messages (overwritten); the next receive resumes at the
    oldest message still there."""

    def __init__(self, count: int) -> None:
        super().__init__(f"missed {count} messages")
        self.count = count

    def __reduce__(self):  # picklable with its count
        return (type(self), (self.count,))


__all__ = [n for n in dir() if not n.startswith("_") and n != "annotations"]
