import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import shmbus
from conftest import python_child

META = np.dtype([("index", "<u8"), ("len", "<u8")], align=True)
RUST_FRAME_META = "shmbus_tests::FrameMeta"  # the Rust test peer's metadata struct


def frame(index, n):
    """`shmbus_tests::frame_byte`, vectorised."""
    i = np.arange(n, dtype=np.uint64)
    v = ((i * 2654435761) & 0xFFFFFFFF) ^ ((index * 40503) & 0xFFFFFFFF)
    return ((v & 0xFF) ^ ((i >> 8) & 0xFF)).astype(np.uint8)


def test_array_topic_roundtrip(prefix):
    t = shmbus.Topic(prefix, capacity=4)
    sub = t.array_subscriber(META, type_name="X")
    pub = t.array_publisher(META, type_name="X")
    a = pub.loan((2, 3), np.float64)
    assert a.flags.writeable
    a[:] = 4.5
    assert pub.publish(a, (7, a.nbytes)) == 0
    s = sub.recv(timeout=2)
    assert s.array.dtype == np.float64 and s.array.shape == (2, 3) and (s.array == 4.5).all()
    assert not s.array.flags.writeable
    with pytest.raises(ValueError):
        s.array[0, 0] = 1
    assert s.meta["index"] == 7 and s.meta["len"] == 48 and s.seq == 0
    pub.send(np.arange(10, dtype=np.int32), (8, 40))
    with sub.try_recv() as s2:
        assert list(s2.array) == list(range(10))
    with pytest.raises(shmbus.Empty):
        sub.try_recv()
    with pytest.raises(shmbus.Timeout):
        sub.recv(timeout=0.05)
    assert "X" in repr(sub) and prefix in repr(pub)


def test_views_keep_block_and_close_raises(prefix):
    t = shmbus.Topic(prefix, capacity=4)
    sub, pub = t.array_subscriber(), t.array_publisher()
    pub.send(np.full(4096, 9, dtype=np.uint8))
    s = sub.recv(timeout=2)
    view = s.array[100:200]
    with pytest.raises(BufferError):
        s.release()  # a view is alive
    with pytest.raises(BufferError):
        sub.close()
    loaned = pub.loan(16)
    with pytest.raises(BufferError):
        pub.close()
    del loaned
    del s
    for _ in range(20):  # the publisher must not get this block back while `view` lives
        a = pub.loan(4096)
        a[:] = 1
        pub.publish(a)
        del a
        sub.recv(timeout=2).release()
    assert (view == 9).all()
    del view
    import gc
    gc.collect()
    sub.close()
    pub.close()


def test_lagged_carries_count(prefix):
    t = shmbus.Topic(prefix, capacity=4, overflow="overwrite")
    sub = t.subscriber("<u8")
    pub = t.publisher("<u8")
    for i in range(10):
        pub.send(i)
    with pytest.raises(shmbus.Lagged) as e:
        sub.recv(timeout=1)
    lagged, got = e.value.count, []
    assert lagged > 0
    while True:
        try:
            got.append(int(sub.try_recv().value))
        except shmbus.Lagged as again:
            lagged += again.count
        except shmbus.Empty:
            break
    assert got[-1] == 9 and got == sorted(got) and lagged + len(got) == 10


POSE = np.dtype([("x", "<f8"), ("y", "<f8"), ("theta", "<f8")], align=True)


def test_structured_and_bytes_messages(prefix):
    t = shmbus.Topic(prefix + ".pose", timestamps=True)
    sub, pub = t.subscriber(POSE, type_name="demo::Pose"), t.publisher(POSE, type_name="demo::Pose")
    pub.send((1.0, 2.0, 0.5))
    m = sub.recv(timeout=1)
    assert m["x"] == 1.0 and m["theta"] == 0.5 and m.published_at
    with pytest.raises(shmbus.WrongType):
        t.subscriber(POSE, type_name="demo::Other")
    with pytest.raises(shmbus.WrongType):
        t.subscriber(np.dtype([("x", "<f8")]), type_name="demo::Pose")
    b = shmbus.Topic(prefix + ".b")
    bs, bp = b.bytes_subscriber(), b.bytes_publisher()
    bp.send(b"hello")
    bp.send(b"")
    assert bs.recv(1).value == b"hello" and bs.recv(1).value == b""
    with pytest.raises(shmbus.OutOfSpace):
        bp.send(bytes(100_000))  # larger than a slot


def _use_inherited(sub, pub, out):
    res = []
    for f in (lambda: sub.recv(timeout=0.1), lambda: pub.send(1)):
        try:
            f()
            res.append("ok")
        except shmbus.UsedAfterFork:
            res.append("UsedAfterFork")
        except Exception as e:  # noqa: BLE001
            res.append(type(e).__name__)
    out.put(res)


def test_handles_refuse_after_fork(prefix):
    t = shmbus.Topic(prefix)
    sub, pub = t.subscriber("<u8"), t.publisher("<u8")
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    p = ctx.Process(target=_use_inherited, args=(sub, pub, out))
    p.start()
    assert out.get(timeout=20) == ["UsedAfterFork", "UsedAfterFork"]
    p.join(20)
    pub.send(5)  # the parent's handles still work
    assert sub.recv(timeout=1).value == 5


def _recv_one(args):
    sub = args
    return int(sub.recv(timeout=10).array.sum())


def test_handle_pickles_and_reopens(prefix):
    t = shmbus.Topic(prefix)
    sub = t.array_subscriber()
    sub2 = pickle.loads(pickle.dumps(sub))  # a new subscriber of the same topic
    pub = t.array_publisher()
    pub.send(np.ones(8, dtype=np.uint8))
    assert sub.recv(1).array.sum() == 8 and sub2.recv(1).array.sum() == 8


def test_ctrl_c_interrupts_recv(prefix):
    child = python_child(
        "import sys, time, shmbus\n"
        "sub = shmbus.Topic(sys.argv[1]).array_subscriber()\n"
        "print('ready', flush=True)\n"
        "t = time.monotonic()\n"
        "try:\n"
        "    sub.recv()\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', time.monotonic(), flush=True); raise\n", prefix)
    assert child.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    sent = time.monotonic()
    child.send_signal(signal.SIGINT)
    line = child.stdout.readline().split()
    rc = child.wait(10)
    assert line and line[0] == "interrupted", child.stderr.read()
    assert float(line[1]) - sent < 0.2  # within a wait slice (50 ms) plus scheduling
    assert rc != 0 and "KeyboardInterrupt" in child.stderr.read()


def test_recv_releases_the_gil(prefix):
    sub = shmbus.Topic(prefix).array_subscriber()
    ticks = []
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ticks.append(1)
            time.sleep(0.001)

    th = threading.Thread(target=spin)
    th.start()
    with pytest.raises(shmbus.Timeout):
        sub.recv(timeout=0.3)
    stop.set()
    th.join()
    assert len(ticks) > 50


def test_killed_subscriber_holding_frames(prefix):
    t = shmbus.Topic(prefix, capacity=4)
    pub = t.array_publisher()
    child = python_child(
        "import sys, time, shmbus\n"
        "sub = shmbus.Topic(sys.argv[1]).array_subscriber()\n"
        "print('ready', flush=True)\n"
        "s = sub.recv(timeout=10); print('holding', flush=True); time.sleep(60)\n", prefix)
    assert child.stdout.readline().strip() == "ready"
    pub.send(np.zeros(1 << 16, dtype=np.uint8))
    assert child.stdout.readline().strip() == "holding"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    for _ in range(50):  # the dead holder's block comes back: the pool does not grow forever
        pub.send(np.zeros(1 << 16, dtype=np.uint8))


def test_rust_frames_to_python(prefix, peer):
    t = shmbus.Topic(prefix, capacity=32)  # room for every frame: no lag
    sub = t.array_subscriber(META, type_name=RUST_FRAME_META)
    rust = subprocess.Popen([peer.path, "frames-pub", "--topic", prefix, "--count", "20",
                             "--shape", "48,64,3", "--wait-subscribers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        while len(seen) < 20:
            with sub.recv(timeout=10) as s:
                n = int(s.meta["len"])
                assert s.array.shape == (48, 64, 3) and s.array.nbytes == n
                assert (s.array.reshape(-1) == frame(int(s.meta["index"]), n)).all()
                seen.append(int(s.meta["index"]))
    finally:
        out, err = rust.communicate(timeout=30)
    assert rust.returncode == 0, out + err
    assert seen == list(range(20))


def test_python_frames_to_rust(prefix, peer):
    rust = subprocess.Popen([peer.path, "frames-sub", "--topic", prefix, "--count", "10",
                             "--shape", "32,32,3", "--timeout-ms", "10000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert rust.stdout.readline().strip().startswith("ready")
    pub = shmbus.Topic(prefix).array_publisher(META, type_name=RUST_FRAME_META)
    n = 32 * 32 * 3
    for i in range(10):
        a = pub.loan((32, 32, 3), np.uint8)
        a.reshape(-1)[:] = frame(i, n)
        pub.publish(a, (i, n))
        del a
    out, err = rust.communicate(timeout=30)
    assert rust.returncode == 0, out + err
    assert "received=10" in out or "ok" in out, out



def test_disconnected_after_the_rust_publisher_leaves(prefix, peer):
    """A Python array subscriber gets every frame of a Rust publisher, then `Disconnected` once
    it is killed (it used to wait forever: the binding waits in 50 ms slices, and the core skipped
    its liveness check when a slice ran out)."""
    t = shmbus.Topic(prefix, capacity=32)
    sub = t.array_subscriber(META, type_name=RUST_FRAME_META)
    rust = subprocess.Popen([peer.path, "frames-pub", "--topic", prefix, "--count", "5",
                             "--shape", "8,8", "--wait-subscribers", "1", "--hold"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        for _ in range(5):
            with sub.recv(timeout=10) as s:
                seen.append(int(s.meta["index"]))
    finally:
        rust.kill()
        rust.wait()
    start = time.monotonic()
    with pytest.raises(shmbus.Disconnected):
        sub.recv(timeout=10)
    assert time.monotonic() - start < 5
    assert seen == list(range(5))


def test_frames_then_disconnected_from_a_rust_publisher_that_exits_quickly(prefix, peer):
    """The reported scenario: the publisher publishes and exits at once while Python receives.
    Its exit waits (up to the pool's linger, 2 s) for a subscriber to map the frames' segment, so
    every frame arrives, then `Disconnected` (a publisher that leaves wakes the waiters; one that
    is killed does not, the case above). A subscriber that does not receive within the linger
    loses the frames: `Corrupt`, their segment is gone."""
    t = shmbus.Topic(prefix, capacity=32)
    sub = t.array_subscriber(META, type_name=RUST_FRAME_META)
    rust = subprocess.Popen([peer.path, "frames-pub", "--topic", prefix, "--count", "5",
                             "--shape", "8,8", "--wait-subscribers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, start = [], time.monotonic()
    try:
        with pytest.raises(shmbus.Disconnected):
            while True:
                with sub.recv(timeout=10) as s:
                    seen.append(int(s.meta["index"]))
    finally:
        out, err = rust.communicate(timeout=30)
    assert rust.returncode == 0, out + err
    assert time.monotonic() - start < 5
    assert seen == list(range(5))


def test_recv_many_takes_a_batch_as_one_array(prefix):
    t = shmbus.Topic(prefix + ".many", capacity=64, overflow="back-pressure")
    sub, pub = t.subscriber(POSE, type_name="demo::Pose"), t.publisher(POSE, type_name="demo::Pose")
    with pytest.raises(shmbus.Empty):
        sub.try_recv_many()
    for i in range(50):
        pub.send((float(i), 2.0 * i, 0.5))
    values, seqs = sub.recv_many(32, timeout=1, seqs=True)
    assert values.dtype == POSE and len(values) == 32
    assert list(values["x"]) == [float(i) for i in range(32)] and list(seqs) == list(range(32))
    rest = sub.try_recv_many()
    assert list(rest["y"]) == [2.0 * i for i in range(32, 50)]
    with pytest.raises(shmbus.Timeout):
        sub.recv_many(timeout=0.01)
    batch = np.zeros(20, POSE)
    batch["x"] = np.arange(20)
    assert pub.send_many(batch) == 50
    assert pub.send_many([(1.0, 1.0, 1.0)]) == 70
    got = sub.try_recv_many()
    assert list(got["x"]) == list(range(20)) + [1.0]
    with pytest.raises(shmbus.InvalidArgument):
        t2 = shmbus.Topic(prefix + ".bytes")
        t2.bytes_subscriber().recv_many()


def test_recv_many_stops_before_a_lag_then_reports_it(prefix):
    t = shmbus.Topic(prefix + ".lag", capacity=4)
    sub, pub = t.subscriber("<u8"), t.publisher("<u8")
    for i in range(10):
        pub.send(i)
    lagged, got = 0, []
    with pytest.raises(shmbus.Lagged) as first:
        sub.try_recv_many()  # a lag comes first, alone (it may come in two parts: see the docs)
    lagged = first.value.count
    while True:
        try:
            got.extend(sub.try_recv_many().tolist())
        except shmbus.Lagged as e:
            lagged += e.count
        except shmbus.Empty:
            break
    assert got == [6, 7, 8, 9] and lagged + len(got) == 10


def test_recv_many_from_another_process_loses_nothing(prefix):
    name = prefix + ".xproc"
    t = shmbus.Topic(name, capacity=16, overflow="back-pressure")
    sub = t.subscriber("<u8")
    child = python_child(
        "import sys, shmbus\n"
        "t = shmbus.Topic(sys.argv[1], capacity=16, overflow='back-pressure')\n"
        "import numpy as np\n"
        "p = t.publisher('<u8')\n"
        "for i in range(10000):\n"
        "    p.send(i)\n"
        "for start in range(10000, 20000, 500):\n"
        "    p.send_many(np.arange(start, start + 500, dtype='<u8'))\n",
        name,
    )
    got = []
    while len(got) < 20000:
        got.extend(sub.recv_many(1000, timeout=10).tolist())
    assert got == list(range(20000))
    assert child.wait(10) == 0, child.stderr.read()


def test_read_large_arrays_keep_only_pool_history_for_late_joiners(prefix):
    """Arrays of 4 MiB or more that every subscriber has read give their blocks back at the
    next loan, but for the newest ``pool_history``: a late joiner finds only those (and the
    one published last); small arrays all stay in the ring."""
    big, small = 4 << 20, 64 << 10
    for n, keep, expect in ((big, 1, [4, 5]), (big, 3, [2, 3, 4, 5]), (small, 1, [0, 1, 2, 3, 4, 5])):
        name = f"{prefix}.{n}.{keep}"
        t = shmbus.Topic(name, capacity=8)
        pub = t.array_publisher(META, pool_history=keep)
        sub = t.array_subscriber(META)
        for i in range(6):
            pub.send(np.full(n, i, dtype=np.uint8), (i, n))
            with sub.recv(timeout=2) as s:
                assert s.meta["index"] == i and (s.array == i).all()
        late = shmbus.Topic(name, capacity=8, history=8).array_subscriber(META)
        got = []
        while True:
            try:
                with late.try_recv() as s:
                    assert (s.array == s.meta["index"]).all(), "a withdrawn block is never read"
                    got.append(int(s.meta["index"]))
            except shmbus.Lagged:
                continue  # the withdrawn ones
            except shmbus.Empty:
                break
        assert got == expect, (n, keep, got)
        del s  # the last sample (released by `with`, still referenced)
        for h in (late, sub, pub):
            h.close()
