"""shmbus.wait: one Python thread waiting on Rust publishers (the test peer), Python queues and
events at once."""

import os
import signal
import subprocess
import threading
import time

import pytest

import shmbus
from conftest import python_child
from test_interop import MSG, MSG_TYPE


def _publishers(peer, names, count):
    return [subprocess.Popen([peer.path, "publish", "--topic", n, "--capacity", "64",
                              "--overflow", "back-pressure", "--count", str(count)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for n in names]


def test_wait_gets_every_message_of_rust_publishers(prefix, peer):
    names = [f"{prefix}-{i}" for i in range(4)]
    subs = [shmbus.Topic(n, capacity=64, overflow="back-pressure").subscriber(
        MSG, type_name=MSG_TYPE) for n in names]
    procs = _publishers(peer, names, 500)
    got = {i: [] for i in range(4)}
    done = set()
    deadline = time.monotonic() + 30
    while len(done) < 4:
        assert time.monotonic() < deadline, {i: len(v) for i, v in got.items()}
        ready = shmbus.wait(subs, timeout=5)
        assert ready, "nothing within 5 s"
        for s in ready:
            i = subs.index(s)
            while True:
                try:  # recv, not try_recv: only a receive that may wait reports Disconnected
                    got[i].append(int(s.recv(timeout=0)["index"]))
                except shmbus.Timeout:
                    break
                except shmbus.Disconnected:
                    done.add(i)
                    break
    for i in range(4):
        assert got[i] == list(range(500)), i
    for p in procs:
        assert p.wait(10) == 0, p.stderr.read()


def test_wait_on_python_event_and_queue_across_processes(prefix, peer):
    sub = shmbus.Topic(prefix + "-t", capacity=64).subscriber(MSG, type_name=MSG_TYPE)
    q = shmbus.Queue(prefix + "-q", capacity=8)
    ev = shmbus.Event(prefix + "-e", auto_reset=True)
    assert shmbus.wait([sub, q, ev], timeout=0.05) == []

    # Another Python process puts an item.
    child = python_child("import shmbus, sys; shmbus.Queue(sys.argv[1], create=False).put('hi')",
                         prefix + "-q")
    assert shmbus.wait([sub, q, ev], timeout=10) == [q]
    assert q.get(timeout=1) == "hi"
    assert child.wait(10) == 0, child.stderr.read()

    # Another Python process sets the event: the wait consumes the auto-reset set.
    child = python_child("import shmbus, sys; shmbus.Event(sys.argv[1], create=False).set()",
                         prefix + "-e")
    assert shmbus.wait([sub, q, ev], timeout=10) == [ev]
    assert not ev.is_set()
    assert child.wait(10) == 0, child.stderr.read()

    # A Rust publisher that publishes once and leaves: a message, then disconnected.
    r = peer("publish", "--topic", prefix + "-t", "--capacity", "64", "--count", "1")
    assert r.returncode == 0, r.stderr
    assert shmbus.wait([sub, q, ev], timeout=10) == [sub]
    assert int(sub.try_recv()["index"]) == 0
    assert shmbus.wait([sub, q, ev], timeout=10) == [sub]
    with pytest.raises(shmbus.Disconnected):
        sub.recv(timeout=0)


def test_wait_releases_the_gil_and_honours_ctrl_c(prefix):
    ev = shmbus.Event(prefix)
    ticks = []
    t = threading.Thread(target=lambda: [ticks.append(time.sleep(0.01)) for _ in range(10)])
    t.start()
    start = time.monotonic()
    assert shmbus.wait([ev], timeout=0.3) == []
    assert time.monotonic() - start >= 0.3
    t.join()
    assert len(ticks) == 10  # the other thread ran while we waited

    # SIGINT during a wait without timeout raises KeyboardInterrupt promptly.
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        shmbus.wait([ev])
    assert time.monotonic() - start < 2
    timer.join()


def test_wait_refuses_other_objects(prefix):
    with pytest.raises(TypeError):
        shmbus.wait([object()], timeout=0)


def test_recv_async_from_a_rust_publisher_and_cancellation_loses_nothing(prefix, peer):
    import asyncio

    sub = shmbus.Topic(prefix, capacity=64).subscriber(MSG, type_name=MSG_TYPE)
    other = shmbus.Topic(prefix + "-b").bytes_subscriber()

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        t = asyncio.ensure_future(ticker())
        # Nothing yet: the loop keeps running while we wait, and a timed-out receive takes
        # nothing.
        with pytest.raises(shmbus.Timeout):
            await sub.recv_async(timeout=0.2)
        assert ticks > 10, ticks
        task = asyncio.ensure_future(sub.recv_async())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Two subscribers awaited at once from one loop.
        quiet = asyncio.ensure_future(other.recv_async(timeout=10))
        proc = await asyncio.create_subprocess_exec(
            peer.path, "publish", "--topic", prefix, "--capacity", "64", "--count", "50",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        got = []
        while len(got) < 50:
            got.append(int((await sub.recv_async(timeout=10)).value["index"]))
        with pytest.raises(shmbus.Disconnected):
            await sub.recv_async(timeout=10)
        assert not quiet.done()
        t.cancel()
        quiet.cancel()
        assert await proc.wait() == 0
        return got

    got = asyncio.run(main())
    assert got == list(range(50))  # none lost to the cancelled receives
