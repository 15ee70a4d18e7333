"""``await sub.recv_async()``: asyncio receives served by one waiter thread per process.

The thread sleeps in ``shmbus.wait`` on every subscriber some coroutine awaits, plus a private
auto-reset event that a new registration sets to make it look again. When a subscriber is
ready, the thread only *tells* the awaiting coroutines (through their event loop); the receive
itself runs in the coroutine, so a cancelled ``recv_async`` never loses a message.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import _shmbus
from ._errors import Timeout


class _Waiter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # id(native) -> (native, [(loop, future), ...])
        self._pending: Dict[int, Tuple[Any, List[Tuple[asyncio.AbstractEventLoop,
                                                       asyncio.Future]]]] = {}
        self._wake: Any = _shmbus.Event(f"aio-wake-{os.getpid()}-{id(self)}", auto_reset=True)
        self._stop = False
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="shmbus-aio-waiter", daemon=True)
        self._thread.start()

    def register(self, native: Any, loop: asyncio.AbstractEventLoop,
                 fut: asyncio.Future) -> None:
        with self._lock:
            self._pending.setdefault(id(native), (native, []))[1].append((loop, fut))
        self._wake.set()

    def unregister(self, native: Any, fut: asyncio.Future) -> None:
        with self._lock:
            entry = self._pending.get(id(native))
            if entry is None:
                return
            entry[1][:] = [(lp, f) for (lp, f) in entry[1] if f is not fut]
            if not entry[1]:
                del self._pending[id(native)]

    def close(self) -> None:
        """Stops the thread and drops the wake-up event (at exit: its segment goes with it)."""
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=2)
        if not self._thread.is_alive():
            self._wake = None

    def _run(self) -> None:
        wake = self._wake
        while not self._stop:
            with self._lock:
                natives = [n for (n, _) in self._pending.values()]
            ready = _shmbus.wait([wake, *natives], None)
            woken: List[Tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
            with self._lock:
                for i in ready:
                    if i == 0:
                        continue  # a new registration: look again
                    entry = self._pending.pop(id(natives[i - 1]), None)
                    if entry is not None:
                        woken.extend(entry[1])
            for loop, fut in woken:
                try:
                    loop.call_soon_threadsafe(_resolve, fut)
                except RuntimeError:
                    pass  # that loop is closed


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


_waiter: Optional[_Waiter] = None
_waiter_lock = threading.Lock()


def _get_waiter() -> _Waiter:
    global _waiter
    with _waiter_lock:
        if _waiter is None or _waiter._pid != os.getpid():
            _waiter = _Waiter()
        return _waiter


@atexit.register
def _close_waiter() -> None:
    global _waiter
    with _waiter_lock:
        w, _waiter = _waiter, None
    if w is not None and w._pid == os.getpid():
        w.close()


async def recv_async(native: Any, recv_now: Callable[[], Any], timeout: Optional[float]) -> Any:
    """Receives with ``recv_now()`` (a receive that does not wait: ``recv(timeout=0)``), waiting
    in the waiter thread while it raises ``Timeout``, for at most ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + max(timeout, 0.0)
    while True:
        try:
            return recv_now()
        except Timeout:
            pass
        remaining = None if deadline is None else deadline - loop.time()
        if remaining is not None and remaining <= 0:
            raise Timeout("recv_async timed out")
        waiter = _get_waiter()
        fut = loop.create_future()
        waiter.register(native, loop, fut)
        try:
            await asyncio.wait_for(fut, remaining)
        except asyncio.TimeoutError:
            pass  # the loop above raises Timeout if nothing came
        finally:
            waiter.unregister(native, fut)
