"""Locks, semaphores and events: across Python processes, with the Rust peer, and Ctrl-C."""

import os
import signal
import subprocess
import threading
import time

import pytest

import shmbus
from conftest import python_child


def test_lock_basics(prefix):
    lock = shmbus.Lock(prefix)
    assert lock.created and lock.name == prefix
    assert lock.acquire()
    assert lock.held() and not lock.owner_died
    with pytest.raises(shmbus.Deadlock):
        lock.acquire(timeout=0.1)
    other = shmbus.Lock(prefix, create=False)  # as another process would
    assert not other.created
    got = []
    th = threading.Thread(target=lambda: got.append(other.acquire(timeout=0.1)))
    th.start()
    th.join()
    assert got == [False]
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()
    with other:
        assert other.held()
        assert not lock.acquire(blocking=False)
    assert not other.held()
    with pytest.raises(shmbus.NotFound):
        shmbus.Lock(prefix + "-none", create=False)


def test_lock_is_rusts_mutex_u64(prefix, peer):
    holder = subprocess.Popen([peer.path, "hold-lock", "--name", prefix], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().startswith("locked created=true acquired=clean")
        lock = shmbus.Lock(prefix, create=False)
        t = time.monotonic()
        assert not lock.acquire(timeout=0.2)
        assert time.monotonic() - t >= 0.19
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        with pytest.warns(shmbus.OwnerDiedWarning):
            assert lock.acquire(timeout=5)
        assert lock.owner_died
        lock.mark_consistent()
        assert not lock.owner_died
        # Rust waits while Python holds it...
        r = peer("lock", "--name", prefix, "--timeout-ms", "200")
        assert r.returncode != 0 and "lock-timeout" in r.stdout + r.stderr
        lock.release()
        # ...and gets it, clean (repaired), once Python releases it. The value is the one the
        # dead Rust holder wrote: Python does not touch it.
        r = peer("lock", "--name", prefix)
        assert r.returncode == 0, r.stderr
        assert f"acquired state=clean value={0xD1D}" in r.stdout
    finally:
        holder.kill()
        holder.wait()


def test_lock_wrong_type_is_refused(prefix):
    sem = shmbus.Semaphore(prefix)  # kept: the last user out removes it
    with pytest.raises(shmbus.WrongType):
        shmbus.Lock(prefix)
    del sem


def test_killed_python_holder_then_not_recoverable(prefix):
    child = python_child(
        "import sys, time, shmbus\n"
        "l = shmbus.Lock(sys.argv[1]); l.acquire()\n"
        "print('held', flush=True); time.sleep(60)\n", prefix)
    try:
        assert child.stdout.readline().strip() == "held"
        lock = shmbus.Lock(prefix, create=False)
        assert not lock.acquire(timeout=0.1)
        child.kill()
        child.wait(10)
        with pytest.warns(shmbus.OwnerDiedWarning):
            with lock:
                assert lock.owner_died
                # not repaired: released without mark_consistent()
        with pytest.raises(shmbus.NotRecoverable):
            lock.acquire(timeout=1)
    finally:
        child.kill()
        child.wait()


def test_ctrl_c_interrupts_a_blocked_acquire(prefix):
    lock = shmbus.Lock(prefix)
    lock.acquire()
    child = python_child(
        "import sys, time, shmbus\n"
        "l = shmbus.Lock(sys.argv[1], create=False)\n"
        "print('ready', flush=True)\n"
        "try:\n"
        "    l.acquire()\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', time.monotonic(), flush=True); raise\n", prefix)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        line = child.stdout.readline().split()
        rc = child.wait(10)
        assert line and line[0] == "interrupted", child.stderr.read()
        assert float(line[1]) - sent < 0.2  # within a wait slice (50 ms) plus scheduling
        assert rc != 0 and "KeyboardInterrupt" in child.stderr.read()
    finally:
        child.kill()
        child.wait()
        lock.release()


def test_acquire_releases_the_gil(prefix):
    lock = shmbus.Lock(prefix)
    lock.acquire()
    other = shmbus.Lock(prefix, create=False)
    ticks = []
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ticks.append(1)
            time.sleep(0.001)

    def blocked():
        assert not other.acquire(timeout=0.3)

    th = threading.Thread(target=spin)
    th.start()
    b = threading.Thread(target=blocked)
    b.start()
    b.join()
    stop.set()
    th.join()
    lock.release()
    assert len(ticks) > 50


def test_semaphore_bounds_workers_across_processes(prefix):
    sem = shmbus.Semaphore(prefix, value=2)
    assert sem.value == 2 and sem.created
    code = (
        "import sys, time, shmbus\n"
        "s = shmbus.Semaphore(sys.argv[1], create=False)\n"
        "with s:\n"
        "    a = time.monotonic(); time.sleep(0.15); b = time.monotonic()\n"
        "print(a, b, flush=True)\n")
    kids = [python_child(code, prefix) for _ in range(5)]
    spans = []
    for k in kids:
        out, err = k.communicate(timeout=30)
        assert k.returncode == 0, err
        a, b = map(float, out.split())
        spans.append((a, b))
    # At no instant were more than two workers inside.
    for a, _ in spans:
        inside = sum(1 for s, e in spans if s <= a < e)
        assert inside <= 2, spans
    assert sem.value == 2
    assert sem.acquire(blocking=False) and sem.acquire(blocking=False)
    assert not sem.acquire(timeout=0.05)
    sem.release(2)
    assert sem.value == 2


def test_semaphore_with_rust(prefix, peer):
    sem = shmbus.Semaphore(prefix, value=0)
    w = subprocess.Popen([peer.path, "sem-wait", "--name", prefix], stdout=subprocess.PIPE,
                         text=True)
    assert w.stdout.readline().startswith("ready value=0")
    sem.release()
    out, _ = w.communicate(timeout=10)
    assert "outcome=acquired" in out
    r = peer("sem-post", "--name", prefix, "--count", "3")
    assert r.returncode == 0, r.stderr
    assert sem.value == 3


def test_event_start_stop_across_processes(prefix):
    start = shmbus.Event(prefix + "-start")
    stop = shmbus.Event(prefix + "-stop")
    assert not start.is_set() and not start.auto_reset
    code = (
        "import sys, shmbus\n"
        "start = shmbus.Event(sys.argv[1] + '-start', create=False)\n"
        "stop = shmbus.Event(sys.argv[1] + '-stop', create=False)\n"
        "print('waiting', flush=True)\n"
        "assert start.wait(30)\n"
        "print('started', flush=True)\n"
        "n = 0\n"
        "while not stop.wait(0.01):\n"
        "    n += 1\n"
        "print('stopped', flush=True)\n")
    kids = [python_child(code, prefix) for _ in range(3)]
    for k in kids:
        assert k.stdout.readline().strip() == "waiting"
    time.sleep(0.1)
    start.set()  # manual-reset: every waiter wakes
    for k in kids:
        assert k.stdout.readline().strip() == "started"
    stop.set()
    for k in kids:
        out, err = k.communicate(timeout=10)
        assert out.strip() == "stopped" and k.returncode == 0, err


def test_auto_reset_event_and_rust(prefix, peer):
    e = shmbus.Event(prefix, auto_reset=True)
    assert e.auto_reset
    e.set()
    assert e.is_set()
    assert e.wait(0)  # consumes it
    assert not e.is_set() and not e.wait(0.05)
    w = subprocess.Popen([peer.path, "event-wait", "--name", prefix], stdout=subprocess.PIPE,
                         text=True)
    assert w.stdout.readline().startswith("ready mode=auto")
    e.set()
    out, _ = w.communicate(timeout=10)
    assert "outcome=woken" in out
    r = peer("event-set", "--name", prefix)
    assert r.returncode == 0, r.stderr
    assert e.wait(5)
    with pytest.raises(shmbus.WrongType):
        shmbus.Event(prefix, auto_reset=False)  # the other mode is another type


def test_event_clear_and_ctrl_c(prefix):
    e = shmbus.Event(prefix)
    e.set()
    assert e.wait(0) and e.is_set()  # manual-reset: stays set
    e.clear()
    assert not e.wait(0.05)
    child = python_child(
        "import sys, shmbus\n"
        "e = shmbus.Event(sys.argv[1], create=False)\n"
        "print('ready', flush=True)\n"
        "e.wait()\n", prefix)
    assert child.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    rc = child.wait(5)
    assert rc != 0 and "KeyboardInterrupt" in child.stderr.read()


def test_locks_work_in_forked_children(prefix):
    lock = shmbus.Lock(prefix)
    pid = os.fork()
    if pid == 0:  # the child opens nothing new: handles of locks survive fork
        ok = lock.acquire(timeout=5)
        lock.release()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert lock.acquire(timeout=1)
    lock.release()
