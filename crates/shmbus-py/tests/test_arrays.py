import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import shmbus
from conftest import python_child


def test_create_attach_roundtrip(prefix):
    a = shmbus.create(f"shm://{prefix}", (3, 4), dtype=np.float32)
    assert a.dtype == np.float32 and a.shape == (3, 4) and (a == 0).all()
    a[1, 2] = 5
    b = shmbus.attach(prefix)  # bare name, like SharedArray
    assert b.dtype == np.float32 and b.shape == (3, 4) and b[1, 2] == 5
    b[0, 0] = 7
    assert a[0, 0] == 7  # same memory
    assert "float32" in repr(a) and prefix in repr(a)
    assert any(d.name == prefix and d.shape == (3, 4) for d in shmbus.list())
    shmbus.delete(prefix)


def test_every_dtype(prefix):
    for i, dt in enumerate([np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                            np.uint32, np.uint64, np.float16, np.float32, np.float64,
                            np.complex64, np.complex128]):
        a = shmbus.create(f"{prefix}.{i}", (5,), dtype=dt, scoped=True)
        b = shmbus.attach(f"{prefix}.{i}")
        assert b.dtype == np.dtype(dt)


def test_read_only_attach_refuses_writes(prefix):
    a = shmbus.create(prefix, 10, dtype=np.int64)
    a[:] = np.arange(10)
    r = shmbus.attach(prefix, ro=True)
    assert not r.flags.writeable
    with pytest.raises(ValueError):
        r[0] = 1
    with pytest.raises(ValueError):
        r.flags.writeable = True  # the mapping itself is read-only: numpy refuses
    assert r.sum() == 45


def test_view_outlives_every_other_reference(prefix):
    a = shmbus.create(prefix, (1000,), dtype=np.float64)
    a[:] = 3.0
    v = a[10:20]
    del a
    shmbus.delete(prefix)  # name gone, mapping kept by the view's base
    import gc
    gc.collect()
    assert (v == 3.0).all()
    v[:] = 4.0
    assert v.sum() == 40.0


def test_persistent_outlives_creator(prefix):
    child = python_child(
        "import sys, shmbus, numpy as np\n"
        "a = shmbus.create(sys.argv[1], (4, 4), dtype='u2'); a[:] = 9\n", prefix)
    assert child.wait(30) == 0, child.stderr.read()
    b = shmbus.attach(prefix)
    assert b.dtype == np.uint16 and b.shape == (4, 4) and (b == 9).all()
    shmbus.delete(prefix)
    assert (b == 9).all()
    with pytest.raises(shmbus.NotFound):
        shmbus.attach(prefix)


def test_scoped_removed_by_last_user(prefix):
    a = shmbus.create(prefix, 3, scoped=True)
    assert os.path.exists(f"/dev/shm/shmbus.{prefix}")
    del a
    import gc
    gc.collect()
    assert not os.path.exists(f"/dev/shm/shmbus.{prefix}")


def test_file_backed(tmpfile):
    url = f"file://{tmpfile}"
    a = shmbus.create(url, (2, 2), dtype=np.int32)
    a[:] = 6
    a.base.flush()
    b = shmbus.attach(url)
    assert (b == 6).all() and b.dtype == np.int32
    shmbus.delete(url)
    assert not tmpfile.exists()


def test_bad_input(prefix):
    with pytest.raises(shmbus.InvalidName):
        shmbus.create("bad/name", 3)
    with pytest.raises(shmbus.InvalidName):
        shmbus.create("", 3)
    with pytest.raises(shmbus.WrongDtype):
        shmbus.create(prefix, 3, dtype=object)
    with pytest.raises(shmbus.WrongDtype):
        shmbus.create(prefix, 3, dtype=">f8")  # big-endian
    with pytest.raises(shmbus.Error):
        shmbus.create(prefix, (1 << 62, 1 << 62))  # overflows
    with pytest.raises((shmbus.OutOfSpace, shmbus.InvalidArgument)):
        shmbus.create(prefix, (1 << 45,), dtype=np.uint8)  # 32 TiB: more than /dev/shm holds
    with pytest.raises(shmbus.NotFound):
        shmbus.attach(prefix + "-missing")
    a = shmbus.create(prefix, 3)
    with pytest.raises(shmbus.AlreadyExists):
        shmbus.create(prefix, 3)
    t = shmbus.Topic(prefix + ".t").bytes_publisher()
    with pytest.raises(shmbus.WrongType):
        shmbus.attach(prefix + ".t")  # a topic, not an array
    del t, a


def test_pickle_travels_by_name(prefix):
    a = shmbus.create(prefix, (1 << 20,), dtype=np.float64)  # 8 MiB
    data = pickle.dumps(a)
    assert len(data) < 1000  # the name, not the data
    b = pickle.loads(data)
    b[5] = 1.25
    assert a[5] == 1.25
    # A slice pickles as an ordinary copy.
    s = pickle.loads(pickle.dumps(a[:4]))
    assert type(s) is np.ndarray and s[1] == 0


def test_pickle_detects_reused_name(prefix):
    a = shmbus.create(prefix, 4)
    data = pickle.dumps(a)
    shmbus.delete(prefix)
    time.sleep(0.001)
    c = shmbus.create(prefix, 4)
    with pytest.raises(shmbus.NameReused):
        pickle.loads(data)
    del a, c


def _fill(arr, value):
    arr[:] = value
    return float(arr.sum())


def _worker_write(q, done):
    arr = q.get(timeout=20)
    arr[0] = 42
    done.put(arr.base.identity)


@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
def test_multiprocessing_queue_and_pool(prefix, method):
    ctx = mp.get_context(method)
    a = shmbus.create(prefix, (256, 256), dtype=np.float32)
    q, done = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=_worker_write, args=(q, done))
    p.start()
    q.put(a)
    assert tuple(done.get(timeout=30)) == tuple(a.base.identity)
    p.join(30)
    assert p.exitcode == 0 and a[0, 0] == 42
    # One worker: two filling the same array at once race, and a sum can mix both values.
    with ctx.Pool(1) as pool:
        sums = pool.starmap(_fill, [(a, 1.0), (a, 2.0)])
    assert sums == [65536.0, 131072.0]
    assert a[1, 1] == 2.0


MODULE_ARRAY = None


def _touch_module_array(i):
    MODULE_ARRAY[i] = i + 100
    return int(MODULE_ARRAY[i])


def test_array_made_before_fork_works_in_pool_workers(prefix):
    global MODULE_ARRAY
    MODULE_ARRAY = shmbus.create(prefix, 8, dtype=np.int64)
    try:
        with mp.get_context("fork").Pool(2) as pool:
            assert pool.map(_touch_module_array, range(8)) == list(range(100, 108))
        assert list(MODULE_ARRAY) == list(range(100, 108))
    finally:
        MODULE_ARRAY = None


def test_holder_killed_with_sigkill(prefix):
    child = python_child(
        "import sys, time, shmbus\n"
        "a = shmbus.create(sys.argv[1], 100, scoped=True); a[:] = 5\n"
        "print('ready', flush=True); time.sleep(60)\n", prefix)
    assert child.stdout.readline().strip() == "ready"
    b = shmbus.attach(prefix)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    assert (b == 5).all()  # still mapped
    del b
    import gc
    gc.collect()
    shmbus.gc()
    assert not os.path.exists(f"/dev/shm/shmbus.{prefix}")


def test_rust_creates_python_attaches(prefix, peer):
    r = peer("array-create", "--name", prefix, "--dtype", "f32", "--shape", "3,5", "--fill", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    a = shmbus.attach(prefix)
    assert a.dtype == np.float32 and a.shape == (3, 5) and (a == 2).all()
    shmbus.delete(prefix)


def test_python_creates_rust_attaches(prefix, peer):
    a = shmbus.create(prefix, (4, 5), dtype=np.uint8)
    a[:] = 3
    r = peer("array-attach", "--name", prefix, "--dtype", "u8")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sum=60" in r.stdout and "4" in r.stdout, r.stdout
    r = peer("array-attach", "--name", prefix, "--dtype", "f32")
    assert r.returncode != 0 and "dtype" in (r.stdout + r.stderr).lower()
