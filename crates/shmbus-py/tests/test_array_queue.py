"""Work queues of numpy arrays (shmbus.ArrayQueue): zero-copy in place, across spawned
processes, a killed consumer's array delivered again, and both ways with a Rust peer."""

import gc
import multiprocessing as mp
import pickle
import subprocess

import numpy as np
import pytest

import shmbus
import _work_workers as w

SPAWN = mp.get_context("spawn")
JOB = np.dtype([("job", "<u8"), ("scale", "<f8")])


def test_loan_commit_receive_in_place(prefix):
    q = shmbus.ArrayQueue(prefix, capacity=2, array_bytes=64 * 64 * 4, meta=JOB)
    assert (q.capacity, q.max_array_bytes, q.acknowledged) == (2, 16384, False)
    a = q.loan((64, 64), np.float32)
    a[...] = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    q.commit(a, (7, 0.5))
    del a
    d = q.receive(timeout=5)
    assert d.array.shape == (64, 64) and d.array.dtype == np.float32
    assert not d.array.flags.writeable
    assert d.meta["job"] == 7 and d.meta["scale"] == 0.5
    assert float(d.array[63, 63]) == 64 * 64 - 1
    # The view is over the queue's slot: a second receive-free loan does not touch it.
    view = d.array[10:20]
    with pytest.raises(BufferError):
        d.ack()  # `view` is alive
    del view
    d.ack()
    assert q.stats()["done"] == 1
    # Two slots: both can be loaned again, a third cannot.
    l1, l2 = q.loan(1), q.loan(1)
    with pytest.raises(shmbus.Full):
        q.loan(1, block=False)
    del l1, l2
    gc.collect()
    q.loan(1, block=False)


def test_put_get_copies_and_shape_errors(prefix):
    q = shmbus.ArrayQueue(prefix, capacity=4, array_bytes=1000)
    assert q.max_array_bytes == 1024
    src = np.arange(256, dtype=np.int32)
    q.put(src)
    out = q.get(timeout=5)
    assert np.array_equal(out, src) and out.flags.writeable
    with pytest.raises(shmbus.InvalidArgument):
        q.put(np.zeros(129, dtype=np.float64))  # 1032 bytes
    with pytest.raises(shmbus.InvalidArgument):
        q.put(np.zeros(2), meta=(1, 2.0))  # this queue has no metadata
    with pytest.raises(shmbus.InvalidArgument):
        q.commit(np.zeros(4))  # not a loan
    with pytest.raises(shmbus.Empty):
        q.receive(timeout=0.05)
    q.close()
    with pytest.raises(shmbus.Closed):
        q.put(src)
    with pytest.raises(shmbus.Closed):
        q.receive(timeout=1)


def test_context_manager_acks_when_the_last_view_dies(prefix):
    q = shmbus.ArrayQueue(prefix, capacity=1, array_bytes=4096, acknowledged=True)
    q.put(np.ones(16, dtype=np.uint8))
    with q.receive(timeout=5) as d:
        kept = d.array[:4]  # outlives the block
    assert q.stats()["done"] == 0, "acknowledged only once no view can read the slot"
    assert int(kept.sum()) == 4
    del kept
    gc.collect()
    assert q.stats()["done"] == 1
    q.put(np.ones(16, dtype=np.uint8))
    with pytest.raises(ZeroDivisionError):
        with q.receive(timeout=5):
            1 / 0
    d = q.receive(timeout=5)  # refused on the exception: delivered again
    assert d.deliveries == 2
    d.ack()


def test_workers_in_spawned_processes_get_each_array_once(prefix):
    q = shmbus.ArrayQueue(prefix, capacity=4, array_bytes=256 * 256 * 2, meta=JOB,
                          acknowledged=True)
    assert pickle.loads(pickle.dumps(q)).name == q.name
    results = SPAWN.Queue()
    workers = [SPAWN.Process(target=w.array_worker, args=(q, results)) for _ in range(3)]
    for p in workers:
        p.start()
    try:
        n = 60
        for job in range(n):
            a = q.loan((256, 256), np.uint16)
            a[...] = job
            q.commit(a, (job, 1.0))
        got = sorted(results.get(timeout=30) for _ in range(n))
        assert got == [(job, job * 256 * 256, 1) for job in range(n)]
        q.close()
        for p in workers:
            p.join(30)
            assert p.exitcode == 0
        s = q.stats()
        assert (s["put"], s["done"], s["lost"], s["redelivered"]) == (n, n, 0, 0)
    finally:
        for p in workers:
            p.kill()
            p.join()


def test_killed_consumers_array_is_delivered_again(prefix):
    q = shmbus.ArrayQueue(prefix, capacity=2, array_bytes=1 << 16, meta=JOB, acknowledged=True)
    q.put(np.full(1000, 3, dtype=np.int64), meta=(42, 1.0))
    out = SPAWN.Queue()
    p = SPAWN.Process(target=w.hold_array, args=(q, out))
    p.start()
    try:
        assert out.get(timeout=30) == ("holding", 42, 1)
        p.kill()
        p.join(10)
        d = q.receive(timeout=10)  # reclaimed from the dead consumer
        assert (int(d.meta["job"]), d.deliveries, int(d.array.sum())) == (42, 2, 3000)
        d.ack()
        assert q.stats()["redelivered"] == 1
    finally:
        p.kill()
        p.join()


# The Rust peer's arrays: `u32` elements `(mix(producer << 40 ^ index) ^ i) as u32`, metadata
# `[u64; 2]` = (producer, index) (tests/src/lib.rs `fill_array`).
RUST_META = np.dtype([("producer", "<u8"), ("index", "<u8")])
RUST_TYPE = "[u64; 2]"
M64 = (1 << 64) - 1


def _mix(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def _rust_array(producer, index, n):
    seed = _mix(((producer << 40) ^ index) & M64) & 0xFFFFFFFF
    return np.arange(n, dtype=np.uint32) ^ np.uint32(seed)


def test_rust_producer_python_consumer(prefix, peer):
    n = 5000
    q = shmbus.ArrayQueue(prefix, capacity=3, array_bytes=n * 4, meta=RUST_META,
                          type_name=RUST_TYPE)
    p = subprocess.Popen([peer.path, "array-queue-put", "--name", prefix, "--count", "20",
                          "--producer", "9", "--elements", str(n)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for i in range(20):
            with q.receive(timeout=30) as d:
                assert (int(d.meta["producer"]), int(d.meta["index"])) == (9, i)
                assert np.array_equal(d.array, _rust_array(9, i, n))
        assert p.wait(30) == 0, p.stderr.read()
    finally:
        p.kill()
        p.wait()


def test_python_producer_rust_consumer(prefix, peer):
    n = 3000
    q = shmbus.ArrayQueue(prefix, capacity=3, array_bytes=n * 4, meta=RUST_META,
                          type_name=RUST_TYPE)
    c = subprocess.Popen([peer.path, "array-queue-get", "--name", prefix],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert c.stdout.readline().startswith("ready")
        for i in range(12):
            a = q.loan(n, np.uint32)
            a[...] = _rust_array(4, i, n)
            q.commit(a, (4, i))
        q.close()
        out, err = c.communicate(timeout=30)
        assert c.returncode == 0, err
        got = [l for l in out.splitlines() if l.startswith("got ")]
        assert len(got) == 12
        assert all("intact=true" in l and f"elements={n}" in l for l in got), got
    finally:
        c.kill()
        c.wait()
