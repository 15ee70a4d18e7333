"""shmbus: typed, zero-copy, daemonless shared memory for processes on one Linux machine.

Named numpy arrays (``create``/``attach``/``delete``/``list``, SharedArray-compatible),
publish/subscribe topics of arrays, structured messages and bytes (interoperable with Rust
programs using the ``shmbus`` crate), and process-shared locks, semaphores and events.
``wait`` sleeps on many subscribers, queues and events at once.
"""

from __future__ import annotations

from typing import List as _List

from . import _shmbus
from ._array import ArrayDesc, SharedNDArray, attach, create, delete, list
from ._errors import *  # noqa: F401,F403
from ._errors import __all__ as _error_names
from ._shmbus import ArrayBuffer, Event, Lock, Semaphore, unlink
from ._work import Barrier, Delivery, Dict, Queue, Shared, Value
from ._array_queue import ArrayDelivery, ArrayQueue
from ._topic import (BYTES_TYPE, ArrayPublisher, ArraySubscriber, Message, Publisher, Sample,
                     Subscriber, Topic)
from ._wait import wait

__version__ = "0.1.0"


def gc() -> _List[str]:
    """Removes every scoped shmbus object that no live process uses (left by killed
    processes); returns the file names removed. Persistent arrays are never removed."""
    return _shmbus.gc()


def names() -> _List[str]:
    """Every shmbus object name in shared memory (arrays, topics, pools, locks...)."""
    return _shmbus.list_names()


__all__ = [
    "ArrayBuffer", "ArrayDesc", "SharedNDArray", "attach", "create", "delete", "list", "gc",
    "names", "unlink", "Topic", "ArrayPublisher", "ArraySubscriber", "Sample", "Publisher",
    "Subscriber", "Message", "BYTES_TYPE", "Lock", "Semaphore", "Event", "Queue", "Delivery", "ArrayQueue", "ArrayDelivery", "Value", "Barrier", "Shared", "Dict", "wait",
    *_error_names,
]
