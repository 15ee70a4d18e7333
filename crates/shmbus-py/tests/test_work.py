"""Work queues, shared values, barriers and shared state across real (spawned) processes."""

import multiprocessing as mp
import pickle
import queue
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

import shmbus
from conftest import python_child
import _work_workers as w

SPAWN = mp.get_context("spawn")


def test_queue_put_get_pickles_and_bytes(prefix):
    q = shmbus.Queue(prefix, capacity=4, item_size=256)
    assert q.created and q.empty() and not q.acknowledged
    q.put({"job": 1})
    q.put_bytes(b"raw")
    q.put_nowait([1, 2])
    assert q.qsize() == 3
    assert q.get() == {"job": 1}
    assert q.get_bytes() == b"raw"
    assert q.get_nowait() == [1, 2]
    with pytest.raises(shmbus.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):  # what multiprocessing users catch
        q.get(timeout=0.05)
    for i in range(4):
        q.put(i)
    assert q.full()
    with pytest.raises(queue.Full):
        q.put(9, timeout=0.05)
    with pytest.raises(shmbus.InvalidArgument):
        q.put_bytes(b"x" * 1000)
    q.close()
    with pytest.raises(shmbus.Closed):
        q.put(1)
    assert list(q) == [0, 1, 2, 3]  # drains, then stops at Closed


def test_queue_pickles_by_name_and_carries_numpy(prefix):
    q = shmbus.Queue(prefix)
    p = SPAWN.Process(target=w.numpy_items, args=(q,))
    p.start()
    p.join(30)
    a = q.get(timeout=5)
    assert a.dtype == np.int32 and a.shape == (3, 4) and a.sum() == 66
    q2 = pickle.loads(pickle.dumps(q))
    q2.put("x")
    assert q.get(timeout=1) == "x"


def test_existing_queue_requirements(prefix):
    q = shmbus.Queue(prefix, capacity=8)  # noqa: F841 (kept: scoped queues leave with their last user)
    assert shmbus.Queue(prefix, create=False).capacity == 8
    with pytest.raises(shmbus.InvalidArgument):
        shmbus.Queue(prefix, capacity=16)
    with pytest.raises(shmbus.NotFound):
        shmbus.Queue(prefix + "-none", create=False)


def test_pool_of_workers_sharing_a_read_only_array(prefix):
    data = shmbus.create(f"{prefix}-data", (10_000,), np.float64, scoped=True)
    data[:] = np.arange(10_000)
    jobs = shmbus.Queue(f"{prefix}-jobs", capacity=16)
    results = shmbus.Queue(f"{prefix}-results", capacity=128)
    workers = [SPAWN.Process(target=w.pool_worker, args=(f"{prefix}-data", jobs, results))
               for _ in range(3)]
    for p in workers:
        p.start()
    for lo in range(0, 10_000, 100):
        jobs.put((lo, lo + 100), timeout=30)
    jobs.close()
    got = dict(results.get(timeout=30) for _ in range(100))
    for p in workers:
        p.join(30)
        assert p.exitcode == 0
    assert sorted(got) == list(range(0, 10_000, 100))
    assert sum(got.values()) == float(data.sum())


def test_acknowledged_delivery_and_context_manager(prefix):
    q = shmbus.Queue(prefix, acknowledged=True, max_deliveries=2)
    q.put("a")
    d = q.get()
    assert isinstance(d, shmbus.Delivery) and d.value == "a" and d.deliveries == 1
    d.refuse()
    with pytest.raises(RuntimeError):
        d.ack()
    with pytest.raises(ZeroDivisionError):
        with q.get(timeout=1) as v:  # refused on the exception
            assert v == "a"
            1 / 0
    # Two deliveries: dead-lettered.
    assert q.qsize() == 0 and q.stats()["dead_lettered"] == 1
    q.put_bytes(b"b")
    with q.get_bytes(timeout=1) as v:  # acknowledged on success
        assert v == b"b"
    assert q.stats()["done"] == 1 and q.empty()


def test_killed_consumer_item_is_redelivered(prefix):
    q = shmbus.Queue(prefix, acknowledged=True, max_deliveries=5)
    out = SPAWN.Queue()
    q.put({"job": 42})
    p = SPAWN.Process(target=w.hold_delivery, args=(q, out))
    p.start()
    try:
        assert out.get(timeout=30) == ("holding", {"job": 42}, 1)
        assert q.qsize() == 0
        p.kill()
        p.join(10)
        d = q.get(timeout=10)  # reclaimed from the dead consumer
        assert d.value == {"job": 42} and d.deliveries == 2
        d.ack()
        assert q.stats()["redelivered"] == 1
    finally:
        p.kill()
        p.join()


def test_ctrl_c_interrupts_a_blocked_get(prefix):
    q = shmbus.Queue(prefix)  # noqa: F841 (kept open)
    child = python_child(
        "import sys, time, shmbus\n"
        "q = shmbus.Queue(sys.argv[1], create=False)\n"
        "print('ready', flush=True)\n"
        "try:\n"
        "    q.get()\n"
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
        assert float(line[1]) - sent < 0.2
        assert rc != 0 and "KeyboardInterrupt" in child.stderr.read()
    finally:
        child.kill()
        child.wait()


def test_get_releases_the_gil(prefix):
    q = shmbus.Queue(prefix)
    ticks = []
    t = threading.Thread(target=lambda: [ticks.append(1) or time.sleep(0.001)
                                         for _ in range(100)])
    t.start()
    with pytest.raises(shmbus.Empty):
        q.get(timeout=0.3)
    t.join()
    assert len(ticks) == 100


def test_value_counter_across_processes(prefix):
    v = shmbus.Value(prefix, "q", 0)
    procs = [SPAWN.Process(target=w.count, args=(v, 500)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert v.value == 2000


@pytest.mark.parametrize("tc,initial,delta,after", [
    ("b", 127, 1, -128), ("B", 255, 1, 0), ("i", -3, 2, -1), ("Q", 0, -1, 2**64 - 1),
])
def test_value_fetch_add_wraps(prefix, tc, initial, delta, after):
    v = shmbus.Value(prefix, tc, initial)
    assert v.fetch_add(delta) == initial
    assert v.value == after


def test_value_float_update_and_dtypes(prefix):
    f = shmbus.Value(prefix, np.float64, 1.5)
    assert f.value == 1.5 and f.typecode == "d"
    assert f.update(lambda x: x * 2) == 3.0
    f.value = -0.25
    assert shmbus.Value(prefix, "d", create=False).value == -0.25
    with pytest.raises(shmbus.WrongDtype):
        f.fetch_add(1)
    with pytest.raises(shmbus.WrongType):
        shmbus.Value(prefix, "i", create=False)  # another type under the name
    with pytest.raises(shmbus.WrongDtype):
        shmbus.Value(prefix + "-c", complex)


def test_barrier_passes_and_breaks_when_a_party_is_killed(prefix):
    out = SPAWN.Queue()
    kids = [SPAWN.Process(target=w.barrier_party, args=(f"{prefix}-ok", 3, out))
            for _ in range(2)]
    for p in kids:
        p.start()
    b = shmbus.Barrier(f"{prefix}-ok", 3)
    assert b.wait(timeout=30) in (0, 1)
    assert sorted(out.get(timeout=10) for _ in kids) == ["passed", "passed"]
    for p in kids:
        p.join(10)

    # A party that joined, then is killed before it arrives: the others see BrokenBarrier.
    name = f"{prefix}-broken"
    sleeper = python_child(
        "import sys, time, shmbus\n"
        "b = shmbus.Barrier(sys.argv[1], 3)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n", name)
    other = SPAWN.Process(target=w.barrier_party, args=(name, 3, out))
    try:
        assert sleeper.stdout.readline().strip() == "ready"
        other.start()
        b = shmbus.Barrier(name, 3)
        # The kill must come after `other` has arrived (a spawned interpreter may take seconds
        # to start on a busy machine): then both arrivals see the party die.
        deadline = time.monotonic() + 30
        while b.n_waiting < 1:
            assert time.monotonic() < deadline, "the spawned party never arrived"
            time.sleep(0.01)
        threading.Timer(0.5, sleeper.kill).start()
        with pytest.raises(shmbus.BrokenBarrier) as e:
            b.wait(timeout=20)
        assert isinstance(e.value, threading.BrokenBarrierError)
        assert out.get(timeout=10) == "broken"
    finally:
        sleeper.kill()
        sleeper.wait()
        other.join(10)


def test_barrier_timeout(prefix):
    b = shmbus.Barrier(prefix, 2)
    with pytest.raises(shmbus.Timeout):
        b.wait(timeout=0.1)
    assert b.n_waiting == 0 and b.parties == 2


def test_dict_updated_by_several_processes(prefix):
    d = shmbus.Dict(prefix, {"start": True})
    procs = [SPAWN.Process(target=w.dict_writer, args=(d, i, 25)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    snap = d.copy()
    assert snap["n"] == 75 and len(snap) == 1 + 75 + 1
    assert all(snap[f"{i}-{k}"] == k for i in range(3) for k in range(25))
    assert d.version == 150


def test_dict_mapping_and_wait_changed(prefix):
    d = shmbus.Dict(prefix)
    assert len(d) == 0 and d.version == 0
    d["a"] = 1
    d.update({"b": 2}, c=3)
    assert d.setdefault("a", 9) == 1 and d.pop("b") == 2 and "b" not in d
    assert dict(d.items()) == {"a": 1, "c": 3}
    del d["c"]
    assert list(d) == ["a"]
    v = d.version
    with pytest.raises(shmbus.Timeout):
        d.wait_changed(v, timeout=0.05)
    threading.Timer(0.1, lambda: d.__setitem__("z", 0)).start()
    assert d.wait_changed(v, timeout=10) == v + 1
    with pytest.raises(KeyError):
        d.update(lambda s: s.pop("missing"))  # nothing changes
    assert d.version == v + 1
    small = shmbus.Dict(prefix + "-small", capacity=64)
    with pytest.raises(shmbus.OutOfSpace):
        small["big"] = "x" * 1000


def test_shared_state_object(prefix):
    s = shmbus.Shared(prefix, {"workers": 1, "tags": []})
    assert s.update(lambda c: c["tags"].append("night")) == 1
    assert s.set([1, 2]) == 2
    state, version = s.snapshot()
    assert (state, version) == ([1, 2], 2)
    assert pickle.loads(pickle.dumps(s)).get() == [1, 2]


def test_rust_producer_of_byte_strings(prefix, peer):
    q = shmbus.Queue(prefix, capacity=4)  # the Rust side opens it as SerdeQueue<Vec<u8>>
    p = subprocess.Popen([peer.path, "queue-put-bytes", "--name", prefix, "--count", "10"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        got = []
        while True:
            try:
                got.append(q.get_bytes(timeout=30))
            except shmbus.Closed:  # the producer closes it after its last item
                break
        assert p.wait(30) == 0, p.stderr.read()
        assert got == [f"item-{i}".encode() for i in range(10)]
    finally:
        p.kill()
        p.wait()


def test_rust_and_python_share_a_counter(prefix, peer):
    v = shmbus.Value(prefix, "Q", 0)  # Rust Value<u64>
    p = subprocess.Popen([peer.path, "value-add", "--name", prefix, "--count", "1000"],
                         stdout=subprocess.PIPE, text=True)
    for _ in range(1000):
        v.fetch_add(1)
    assert p.wait(30) == 0
    assert v.value == 2000
