"""Rust Pod messages read field by field from Python (and the reverse), and subscribers used in
fork Pool workers."""

import multiprocessing as mp
import os
import subprocess
import time

import numpy as np
import pytest

import shmbus

#: `shmbus_tests::Msg` (`#[repr(C)]`: index, producer, data: [u64; 5], checksum).
MSG = np.dtype([("index", "<u8"), ("producer", "<u8"), ("data", "<u8", (5,)),
                ("checksum", "<u8")], align=True)
MSG_TYPE = "shmbus_tests::Msg"
M64 = (1 << 64) - 1


def _mix(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def _rotl(x, n):
    return ((x << n) | (x >> (64 - n))) & M64


def msg(producer, index):
    """`shmbus_tests::Msg::new`."""
    data = [_mix(index ^ _rotl(producer, 17) ^ _rotl(i, 40)) for i in range(5)]
    h = _mix(index) ^ _mix((producer + 1) & M64)
    for d in data:
        h = _mix(h ^ d)
    return (index, producer, data, h)


def test_rust_pod_messages_field_by_field(prefix, peer):
    sub = shmbus.Topic(prefix, capacity=64).subscriber(MSG, type_name=MSG_TYPE)
    r = peer("publish", "--topic", prefix, "--count", "20")
    assert r.returncode == 0, r.stderr
    producer = int(r.stdout.split("producer=")[1].split()[0])
    for i in range(20):
        m = sub.recv(timeout=5)
        index, prod, data, checksum = msg(producer, i)
        assert int(m["index"]) == index and int(m["producer"]) == prod
        assert [int(d) for d in m["data"]] == data
        assert int(m["checksum"]) == checksum


def test_python_pod_messages_to_rust(prefix, peer):
    pub = shmbus.Topic(prefix, capacity=64).publisher(MSG, type_name=MSG_TYPE)
    sub = subprocess.Popen([peer.path, "subscribe", "--topic", prefix, "--count", "20"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert sub.stdout.readline().strip() == "ready"
    for i in range(20):
        pub.send(msg(os.getpid(), i))
    out, err = sub.communicate(timeout=20)
    assert sub.returncode == 0, err
    assert "received=20 " in out and "bad_checksum=0 " in out and "bad_order=0 " in out, out
    assert "gaps=0 " in out and "bad_index=0 " in out


def test_rust_refuses_a_wrong_python_layout(prefix, peer):
    pub = shmbus.Topic(prefix).publisher(np.dtype([("index", "<u8")]), type_name=MSG_TYPE)
    r = peer("open", "--topic", prefix)
    assert "ok" not in r.stdout.split(), r.stdout  # another size under the same name
    del pub


_INHERITED = None


def _worker(_):
    try:
        _INHERITED.recv(timeout=0.1)
        return "ok"
    except shmbus.UsedAfterFork:
        return "UsedAfterFork"
    except Exception as e:  # noqa: BLE001
        return type(e).__name__


def test_subscriber_in_fork_pool_workers_raises_used_after_fork(prefix):
    global _INHERITED
    t = shmbus.Topic(prefix)
    _INHERITED = t.array_subscriber()
    pub = t.array_publisher()
    pub.send(np.arange(4))
    try:
        with mp.get_context("fork").Pool(2) as pool:
            assert pool.map(_worker, range(4)) == ["UsedAfterFork"] * 4
        # The parent's subscriber still works.
        assert list(_INHERITED.recv(timeout=1).array) == [0, 1, 2, 3]
    finally:
        _INHERITED = None


def bytes_message(i):
    """`bytes_message` of the Rust test peer."""
    return bytes((i * 31 + j) % 251 for j in range(i))


def test_rust_bytes_to_python(prefix, peer):
    sub = shmbus.Topic(prefix, capacity=64).bytes_subscriber()
    r = peer("bytes-pub", "--topic", prefix, "--count", "40")
    assert r.returncode == 0, r.stdout + r.stderr
    for i in range(40):
        assert sub.recv(timeout=5).value == bytes_message(i)


def test_python_bytes_to_rust(prefix, peer):
    pub = shmbus.Topic(prefix, capacity=64).bytes_publisher()
    sub = subprocess.Popen([peer.path, "bytes-sub", "--topic", prefix, "--count", "40"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert sub.stdout.readline().strip() == "ready"
    for i in range(40):
        pub.send(bytes_message(i))
    out, err = sub.communicate(timeout=20)
    assert sub.returncode == 0, out + err
    assert "summary ok=40 bad=0" in out


def test_publish_lock_held_by_a_blocked_rust_publisher_times_out(prefix, peer):
    """Found by the chaos harness: a publisher whose timeout runs out while another publisher
    holds the publish lock (a Rust publisher held back by a stalled subscriber, waiting for room
    under the lock) gets shmbus.Timeout, as for a wait for room, not a generic lock error."""
    qos = dict(capacity=4, overflow="backpressure", max_publishers=2)
    stalled = shmbus.Topic(prefix, **qos).subscriber(MSG, type_name=MSG_TYPE)
    blocked = subprocess.Popen(
        [peer.path, "publish", "--topic", prefix, "--overflow", "back-pressure", "--capacity",
         "4", "--max-publishers", "2", "--count", "5", "--progress", "--publish-timeout-ms",
         "10000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while True:
            line = blocked.stdout.readline()
            assert line, blocked.stderr.read()
            if line.startswith("sent index=3"):
                break
        time.sleep(0.1)  # into its wait for room, under the lock
        pub = shmbus.Topic(prefix, publish_timeout=0.2, **qos).publisher(MSG, type_name=MSG_TYPE)
        start = time.monotonic()
        with pytest.raises(shmbus.Timeout):
            pub.send(msg(7, 0))
        assert time.monotonic() - start >= 0.2
        stalled.close()  # room: the blocked publisher finishes and lets go of the lock
        out, err = blocked.communicate(timeout=20)
        assert blocked.returncode == 0, err
        assert "done sent=5" in out
        pub.send(msg(7, 0))
    finally:
        if blocked.poll() is None:
            blocked.kill()
            blocked.wait()
