"""Functions the work-queue tests run in spawned processes (importable by name: spawn pickles
functions by module and name)."""

import time

import numpy as np

import shmbus


def pool_init(array_name):
    # The Pool-plus-initializer pattern: each worker attaches the read-only array by name once.
    global DATA
    DATA = shmbus.attach(array_name, ro=True)


def pool_worker(array_name, jobs, results):
    pool_init(array_name)
    assert not DATA.flags.writeable
    for lo, hi in jobs:  # until the queue is closed and drained
        results.put((lo, float(DATA[lo:hi].sum())))


def count(value, n):
    for _ in range(n):
        value.fetch_add(1)


def dict_writer(d, who, n):
    for k in range(n):
        d[f"{who}-{k}"] = k
        d.update(lambda s: s.__setitem__("n", s.get("n", 0) + 1))


def barrier_party(name, parties, out):
    b = shmbus.Barrier(name, parties)
    try:
        b.wait(timeout=20)
        out.put("passed")
    except shmbus.BrokenBarrier:
        out.put("broken")


def array_consumer(q, out):
    out.put(q.get(timeout=10))


def hold_delivery(q, out):
    d = q.get(timeout=10)
    out.put(("holding", d.value, d.deliveries))
    time.sleep(60)


def numpy_items(q):
    q.put(np.arange(12, dtype=np.int32).reshape(3, 4))


def array_worker(q, results):
    # Each array in place: its sum, then acknowledged; until the queue is closed and drained.
    for d in q:
        with d:
            results.put((int(d.meta["job"]), int(d.array.sum()), d.deliveries))


def hold_array(q, out):
    d = q.receive(timeout=10)
    out.put(("holding", int(d.meta["job"]), d.deliveries))
    time.sleep(60)
