"""``python -m shmbus.bench [--quick] [--json PATH] [--no-rust]``: shmbus from Python beside the
usual Python ways of moving data between processes, in one interleaved run.

Scenarios (medians and p99s over every measured message):

``handoff_8MiB`` (ms)
    The producer fills 8 MiB of float64 in place and hands it off; the figure is the time from
    the publish/put/send call to the consumer holding the array. The consumer then checks every
    element (untimed) and acknowledges. Systems: ``shmbus`` (array topic: loan, fill, publish;
    recv), ``mp_queue`` (``multiprocessing.Queue.put`` of the array; ``get``),
    ``mp_shared_memory`` (``multiprocessing.shared_memory`` filled in place, a ``Pipe`` message
    as the notification), ``iceoryx2`` (its PyPI binding: ``loan_slice_uninit``, fill,
    ``send``; the subscriber polls ``receive``, which favours it).
``wake_pingpong`` (us)
    A blocking ping-pong, receivers sleep (the leader busy-waits 100 us before each ping, as
    the Rust harness does, so that the receiver has gone to sleep); round trip / 2. Systems: ``shmbus`` (two auto-reset
    events), ``mp_pipe`` (one-byte messages), ``iceoryx2`` (event services, blocking waits).

``queue_64B_c1``, ``_c2``, ``_c4`` (items/s, higher is better)
    A work queue: one producer puts 64-byte ``bytes`` items, 1, 2 or 4 consumer processes take
    them, each item to exactly one; the figure is items per second over windows of items put
    (the queue is bounded, so puts run at the rate consumers take), the last window ending when
    every consumer has taken its last item. Systems: ``shmbus`` (``Queue.put_bytes`` /
    ``get_bytes``, at most once, 256 slots), ``mp_queue`` (``multiprocessing.Queue(maxsize=256)``
    of the same ``bytes``, a ``None`` per consumer to end).
``queue_4MiB_c1``, ``_c2``, ``_c4`` (items/s, higher is better)
    The same with 4 MiB float64 arrays: the producer writes every element (``fill``) and a
    consumer reads every element (``sum``) and checks it. Systems: ``shmbus``
    (``ArrayQueue``, 8 slots, acknowledged: ``loan``, fill, ``commit``; ``receive``, sum,
    ``ack``), ``mp_queue`` (``multiprocessing.Queue(maxsize=8)`` of ``(number, array)``: a fresh
    array filled, pickled and sent through a pipe, unpickled by the consumer). Reported with
    ratios to ``mp_queue``; no ``rust`` column (the ``compare`` harness's ``queue_*`` scenarios
    are the Rust figures).

``rust`` is the same two scenarios written in Rust (``benches/py_matched.rs``: an array topic
loan/fill/publish with a Pod acknowledgement topic, two auto-reset events), run before the Python
ones when its binary is found (``SHMBUS_PY_MATCHED`` or ``target/release/py_matched`` above the
current directory). Without it, the ``compare`` harness (``benches/compare``, ``SHMBUS_COMPARE``
or ``target/release/compare``) gives approximate figures: ``wake_cross_core``'s shmbus row, and ``bulk_4MiB``'s shmbus throughput converted
to the time of 8 MiB (that figure includes the consumer reading every byte, so it is
pessimistic for Rust). A system that cannot run is reported with ``"unavailable"`` and why,
never with made-up numbers.

Each round runs every system in turn in fresh processes (leader on CPU 0, peer on CPU 1 when
there are two; queue consumers round-robin over the CPUs from the second, so on two CPUs
consumers 2 and 4 share the producer's), so that drift of the host affects them alike.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

N = 8 * 1024 * 1024 // 8  # float64 elements of the hand-off
_CTX = mp.get_context("fork")


try:
    #: The CPUs this process may use, read before any pinning (a forked peer inherits the
    #: leader's pinning, so it cannot ask its own mask).
    _CPUS = sorted(os.sched_getaffinity(0))
except AttributeError:  # not Linux
    _CPUS = []


def _pin(which: int) -> None:
    """Pins this process to the `which`-th allowed CPU (leader 0, peer 1; round-robin beyond
    the last) when there are two or more."""
    if len(_CPUS) >= 2:
        try:
            os.sched_setaffinity(0, {_CPUS[which % len(_CPUS)]})
        except OSError:
            pass


def _check(a: np.ndarray, base: np.ndarray, k: int) -> bool:
    return a.shape == base.shape and bool(np.array_equal(a, base + float(k)))


def _stats(xs: List[float]) -> Dict[str, Any]:
    if not xs:
        return {"median": None, "p99": None, "unavailable": "no samples"}
    a = np.asarray(xs)
    return {"median": float(np.median(a)), "p99": float(np.percentile(a, 99))}


# ---------------------------------------------------------------------------------------------
# Hand-off peers (consumers) and leaders (producers). A peer sends "ready", then per message
# (t1_ns, ok) on `ctl`; the leader returns the per-message latencies in ns.

def _peer_shmbus(name: str, iters: int, ctl: Any) -> None:
    import shmbus
    _pin(1)
    base = np.arange(N, dtype=np.float64)
    sub = shmbus.Topic(name).array_subscriber()
    ctl.send("ready")
    for k in range(iters):
        s = sub.recv(timeout=30)
        a = s.array
        t1 = time.perf_counter_ns()
        ok = _check(a, base, k)
        del a
        s.release()
        ctl.send((t1, ok))


def _lead_shmbus(name: str, iters: int, ctl: Any, base: np.ndarray) -> List[int]:
    import shmbus
    pub = shmbus.Topic(name).array_publisher()
    assert ctl.recv() == "ready"
    out = []
    for k in range(iters):
        arr = pub.loan(N, np.float64)
        np.add(base, float(k), out=arr)
        t0 = time.perf_counter_ns()
        pub.publish(arr)
        del arr
        t1, ok = ctl.recv()
        if not ok:
            raise RuntimeError("shmbus: the consumer saw wrong data")
        out.append(t1 - t0)
    pub.close()
    return out


def _peer_queue(q: Any, iters: int, ctl: Any) -> None:
    _pin(1)
    base = np.arange(N, dtype=np.float64)
    ctl.send("ready")
    for k in range(iters):
        a = q.get()
        t1 = time.perf_counter_ns()
        ctl.send((t1, _check(a, base, k)))


def _peer_shm(shm_name: str, iters: int, ctl: Any, note: Any) -> None:
    from multiprocessing import shared_memory
    _pin(1)
    base = np.arange(N, dtype=np.float64)
    shm = shared_memory.SharedMemory(name=shm_name)
    view = np.ndarray((N,), dtype=np.float64, buffer=shm.buf)
    ctl.send("ready")
    for _ in range(iters):
        k = note.recv()
        a = view
        t1 = time.perf_counter_ns()
        ctl.send((t1, _check(a, base, k)))
    del view, a
    shm.close()


def _f64_at(address: int) -> np.ndarray:
    """The N float64 at `address` (an iceoryx2 payload), without a copy."""
    import ctypes
    return np.frombuffer((ctypes.c_double * N).from_address(address), dtype=np.float64)


def _ice_node() -> Any:
    import iceoryx2 as iox2
    iox2.set_log_level_from_env_or(iox2.LogLevel.Warn)
    return iox2, iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)


def _ice_pubsub(name: str) -> Any:
    import ctypes
    iox2, node = _ice_node()
    svc = (node.service_builder(iox2.ServiceName.new(name))
           .publish_subscribe(iox2.Slice[ctypes.c_double]).open_or_create())
    return iox2, node, svc


def _peer_ice(name: str, iters: int, ctl: Any) -> None:
    _pin(1)
    base = np.arange(N, dtype=np.float64)
    iox2, node, svc = _ice_pubsub(name)
    sub = svc.subscriber_builder().create()
    ctl.send("ready")
    for k in range(iters):
        while True:
            s = sub.receive()
            if s is not None:
                break
        a = _f64_at(s.payload().as_ptr())
        t1 = time.perf_counter_ns()
        ok = _check(a, base, k)
        del a, s
        ctl.send((t1, ok))


def _lead_ice(name: str, iters: int, ctl: Any, base: np.ndarray) -> List[int]:
    iox2, node, svc = _ice_pubsub(name)
    pub = svc.publisher_builder().initial_max_slice_len(N).create()
    assert ctl.recv() == "ready"
    out = []
    for k in range(iters):
        s = pub.loan_slice_uninit(N)
        arr = _f64_at(s.payload().as_ptr())
        np.add(base, float(k), out=arr)
        del arr
        s = s.assume_init()
        t0 = time.perf_counter_ns()
        s.send()
        t1, ok = ctl.recv()
        if not ok:
            raise RuntimeError("iceoryx2: the consumer saw wrong data")
        out.append(t1 - t0)
    return out


def _end(p: Any) -> None:
    """Waits a little for a peer, then ends it (a peer stuck after a failure must not hang us)."""
    p.join(5)
    if p.is_alive():
        p.kill()
        p.join()


def _handoff(system: str, iters: int, base: np.ndarray, tag: str) -> List[int]:
    a, b = _CTX.Pipe()
    if system == "shmbus":
        name = f"bench-{tag}"
        p = _CTX.Process(target=_peer_shmbus, args=(name, iters, b), daemon=True)
        p.start()
        try:
            return _lead_shmbus(name, iters, a, base)
        finally:
            _end(p)
    if system == "mp_queue":
        q = _CTX.Queue(maxsize=2)
        p = _CTX.Process(target=_peer_queue, args=(q, iters, b), daemon=True)
        p.start()
        try:
            assert a.recv() == "ready"
            out = []
            for k in range(iters):
                arr = np.empty(N, dtype=np.float64)
                np.add(base, float(k), out=arr)
                t0 = time.perf_counter_ns()
                q.put(arr)
                t1, ok = a.recv()
                if not ok:
                    raise RuntimeError("mp_queue: the consumer saw wrong data")
                out.append(t1 - t0)
            return out
        finally:
            _end(p)
    if system == "mp_shared_memory":
        from multiprocessing import shared_memory
        shm = shared_memory.SharedMemory(create=True, size=N * 8)
        n1, n2 = _CTX.Pipe()
        p = _CTX.Process(target=_peer_shm, args=(shm.name, iters, b, n2), daemon=True)
        p.start()
        try:
            view = np.ndarray((N,), dtype=np.float64, buffer=shm.buf)
            assert a.recv() == "ready"
            out = []
            for k in range(iters):
                np.add(base, float(k), out=view)
                t0 = time.perf_counter_ns()
                n1.send(k)
                t1, ok = a.recv()
                if not ok:
                    raise RuntimeError("mp_shared_memory: the consumer saw wrong data")
                out.append(t1 - t0)
            del view
            return out
        finally:
            _end(p)
            shm.close()
            shm.unlink()
    if system == "iceoryx2":
        name = f"shmbus-bench/{tag}"
        p = _CTX.Process(target=_peer_ice, args=(name, iters, b), daemon=True)
        p.start()
        try:
            return _lead_ice(name, iters, a, base)
        finally:
            _end(p)
    raise ValueError(system)


# ---------------------------------------------------------------------------------------------
# Wake-up ping-pong: the leader returns round trips / 2 in ns.

def _pong_shmbus(name: str, iters: int, ctl: Any) -> None:
    import shmbus
    _pin(1)
    ping = shmbus.Event(name + "-ping", auto_reset=True)
    pong = shmbus.Event(name + "-pong", auto_reset=True)
    ctl.send("ready")
    for _ in range(iters):
        ping.wait()
        pong.set()


def _pong_pipe(conn: Any, iters: int, ctl: Any) -> None:
    _pin(1)
    ctl.send("ready")
    for _ in range(iters):
        conn.send_bytes(conn.recv_bytes())


def _ice_events(name: str) -> Any:
    iox2, node = _ice_node()
    ping = node.service_builder(iox2.ServiceName.new(name + "/ping")).event().open_or_create()
    pong = node.service_builder(iox2.ServiceName.new(name + "/pong")).event().open_or_create()
    return node, ping, pong


def _pong_ice(name: str, iters: int, ctl: Any) -> None:
    _pin(1)
    node, ping, pong = _ice_events(name)
    listener = ping.listener_builder().create()
    notifier = pong.notifier_builder().create()
    ctl.send("ready")
    for _ in range(iters):
        while not listener.blocking_wait():
            pass
        notifier.notify()


def _pause() -> None:
    """Busy-waits 100 us before a ping, so that the receiver is asleep (as in compare's
    wake_cross_core): the figure is a wake-up, not a hand-off between two spinning threads."""
    end = time.perf_counter_ns() + 100_000
    while time.perf_counter_ns() < end:
        pass


def _pingpong(system: str, iters: int, tag: str) -> List[int]:
    a, b = _CTX.Pipe()
    out: List[int] = []
    procs: List[Any] = []
    try:
        if system == "shmbus":
            import shmbus
            name = f"bench-{tag}"
            ping = shmbus.Event(name + "-ping", auto_reset=True)
            pong = shmbus.Event(name + "-pong", auto_reset=True)
            p = _CTX.Process(target=_pong_shmbus, args=(name, iters, b), daemon=True)
            p.start()
            procs.append(p)
            assert a.recv() == "ready"
            for _ in range(iters):
                _pause()
                t0 = time.perf_counter_ns()
                ping.set()
                pong.wait()
                out.append((time.perf_counter_ns() - t0) // 2)
        elif system == "mp_pipe":
            c1, c2 = _CTX.Pipe()
            p = _CTX.Process(target=_pong_pipe, args=(c2, iters, b), daemon=True)
            p.start()
            procs.append(p)
            assert a.recv() == "ready"
            for _ in range(iters):
                _pause()
                t0 = time.perf_counter_ns()
                c1.send_bytes(b"x")
                c1.recv_bytes()
                out.append((time.perf_counter_ns() - t0) // 2)
        elif system == "iceoryx2":
            name = f"shmbus-bench/{tag}"
            node, ping, pong = _ice_events(name)
            notifier = ping.notifier_builder().create()
            listener = pong.listener_builder().create()
            p = _CTX.Process(target=_pong_ice, args=(name, iters, b), daemon=True)
            p.start()
            procs.append(p)
            assert a.recv() == "ready"
            for _ in range(iters):
                _pause()
                t0 = time.perf_counter_ns()
                notifier.notify()
                while not listener.blocking_wait():
                    pass
                out.append((time.perf_counter_ns() - t0) // 2)
        else:
            raise ValueError(system)
    finally:
        for p in procs:
            _end(p)
    return out


# ---------------------------------------------------------------------------------------------
# Work queues: one producer (the leader), `consumers` consumer processes. A consumer sends
# "ready", takes items until the end, then sends (items taken, all well formed and in order).
# The leader returns its window times: one every `window` measured puts, and the time every
# consumer had finished.

QA = 4 * 1024 * 1024 // 8  # float64 elements of a queued array (4 MiB)
CONSUMERS = (1, 2, 4)
_WAIT = 30.0  # seconds any wait for another process lasts at most


def _item64(i: int) -> bytes:
    """The 64-byte item `i`: its number, eight times."""
    return i.to_bytes(8, "little") * 8


def _ok64(b: bytes, last: int) -> bool:
    return len(b) == 64 and b == b[:8] * 8 and int.from_bytes(b[:8], "little") > last


def _recv(conn: Any) -> Any:
    """A message from another process, or TimeoutError (a dead peer must not hang the bench)."""
    if not conn.poll(_WAIT):
        raise TimeoutError("no word from a peer process")
    return conn.recv()


def _c64_shmbus(name: str, which: int, ctl: Any) -> None:
    import shmbus
    _pin(which)
    q = shmbus.Queue(name, create=False)
    ctl.send("ready")
    n, last, ok = 0, -1, True
    while True:
        try:
            b = q.get_bytes(timeout=_WAIT)
        except shmbus.Closed:
            break
        ok = ok and _ok64(b, last)
        last = int.from_bytes(b[:8], "little")
        n += 1
    ctl.send((n, ok))


def _c64_mp(q: Any, which: int, ctl: Any) -> None:
    _pin(which)
    ctl.send("ready")
    n, last, ok = 0, -1, True
    while True:
        b = q.get(timeout=_WAIT)
        if b is None:
            break
        ok = ok and _ok64(b, last)
        last = int.from_bytes(b[:8], "little")
        n += 1
    ctl.send((n, ok))


def _ok_array(a: np.ndarray, k: int, last: int) -> bool:
    """Reads every element (the sum) and checks the array is item `k`'s, after `last`."""
    total = float(a.sum())
    return a.shape == (QA,) and k > last and float(a[0]) == k and total == float(k) * QA


def _carr_shmbus(name: str, which: int, ctl: Any) -> None:
    import shmbus
    _pin(which)
    q = shmbus.ArrayQueue(name, meta=np.uint64, create=False)
    ctl.send("ready")
    n, last, ok = 0, -1, True
    while True:
        try:
            d = q.receive(timeout=_WAIT)
        except shmbus.Closed:
            break
        a, k = d.array, int(d.meta)
        ok = ok and _ok_array(a, k, last)
        del a
        d.ack()
        last = k
        n += 1
    ctl.send((n, ok))


def _carr_mp(q: Any, which: int, ctl: Any) -> None:
    _pin(which)
    ctl.send("ready")
    n, last, ok = 0, -1, True
    while True:
        item = q.get(timeout=_WAIT)
        if item is None:
            break
        k, a = item
        ok = ok and _ok_array(a, k, last)
        last = k
        n += 1
    ctl.send((n, ok))


def _queue(system: str, size: str, consumers: int, total: int, warm: int, window: int,
           tag: str) -> List[int]:
    """One run; returns the window times in ns (see above)."""
    name = f"bench-{tag}"
    ends = [_CTX.Pipe() for _ in range(consumers)]
    procs: List[Any] = []
    mpq = None
    q: Any = None
    try:
        if system == "shmbus":
            import shmbus
            if size == "64B":
                q = shmbus.Queue(name, capacity=256, item_size=64)
                target: Callable[..., None] = _c64_shmbus
            else:
                q = shmbus.ArrayQueue(name, capacity=8, array_bytes=QA * 8, meta=np.uint64,
                                      acknowledged=True)
                target = _carr_shmbus
            first: Any = name
        elif system == "mp_queue":
            mpq = _CTX.Queue(maxsize=256 if size == "64B" else 8)
            target = _c64_mp if size == "64B" else _carr_mp
            first = mpq
        else:
            raise ValueError(system)
        for j, (_, b) in enumerate(ends):
            p = _CTX.Process(target=target, args=(first, 1 + j, b), daemon=True)
            p.start()
            procs.append(p)
        for a, _ in ends:
            if _recv(a) != "ready":
                raise RuntimeError("a consumer did not start")
        times: List[int] = []
        for i in range(total):
            if i >= warm and (i - warm) % window == 0:
                times.append(time.perf_counter_ns())
            if system == "shmbus" and size == "64B":
                q.put_bytes(_item64(i), timeout=_WAIT)
            elif system == "shmbus":
                arr = q.loan(QA, np.float64, timeout=_WAIT)
                arr.fill(float(i))
                q.commit(arr, i)
                del arr
            elif size == "64B":
                mpq.put(_item64(i), timeout=_WAIT)
            else:
                arr = np.empty(QA, dtype=np.float64)
                arr.fill(float(i))
                mpq.put((i, arr), timeout=_WAIT)
        if system == "shmbus":
            q.close()
        else:
            for _ in range(consumers):
                mpq.put(None, timeout=_WAIT)
        got = [_recv(a) for a, _ in ends]
        times.append(time.perf_counter_ns())
        if not all(ok for _, ok in got):
            raise RuntimeError(f"{system}: a consumer saw a damaged or out-of-order item")
        if sum(n for n, _ in got) != total:
            raise RuntimeError(f"{system}: consumers took {sum(n for n, _ in got)} of {total}")
        return times
    finally:
        for p in procs:
            _end(p)
        if mpq is not None:
            mpq.close()
            mpq.join_thread()
        if q is not None:
            q.close()


def _rates(times: List[int], window: int) -> List[float]:
    """Items per second of each window."""
    return [window / (max(b - a, 1) / 1e9) for a, b in zip(times, times[1:])]


def _rate_stats(xs: List[float]) -> Dict[str, Any]:
    """Median and the bad tail of rates: "p99" is the rate 99 % of the windows beat (the 1st
    percentile), as in the Rust harness."""
    if not xs:
        return {"median": None, "p99": None, "unavailable": "no samples"}
    a = np.asarray(xs)
    return {"median": float(np.median(a)), "p99": float(np.percentile(a, 1))}


# ---------------------------------------------------------------------------------------------
# The Rust figures

def _find_compare() -> Optional[pathlib.Path]:
    env = os.environ.get("SHMBUS_COMPARE")
    if env:
        return pathlib.Path(env)
    for d in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents]:
        c = d / "target" / "release" / "compare"
        if c.exists():
            return c
    return None


def _find_matched() -> Optional[pathlib.Path]:
    env = os.environ.get("SHMBUS_PY_MATCHED")
    if env:
        return pathlib.Path(env)
    for d in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents]:
        c = d / "target" / "release" / "py_matched"
        if c.exists():
            return c
    return None


def _rust(quick: bool) -> Dict[str, Dict[str, Any]]:
    matched = _find_matched()
    if matched is not None:
        r = subprocess.run([str(matched)] + (["--quick"] if quick else []), capture_output=True,
                           text=True, timeout=600)
        if r.returncode == 0:
            got = json.loads(r.stdout)
            for v in got.values():
                v["source"] = "benches/py_matched.rs: the same scenario in Rust"
            return got
    return _rust_compare(quick)


def _rust_compare(quick: bool) -> Dict[str, Dict[str, Any]]:
    exe = _find_compare()
    if exe is None:
        why = ("neither Rust harness was found (cargo build --release --bin py_matched, or set "
               "SHMBUS_PY_MATCHED)")
        return {s: {"median": None, "p99": None, "unavailable": why}
                for s in ("handoff_8MiB", "wake_pingpong")}
    got: Dict[str, Dict[str, Any]] = {}
    for scenario, ours in (("wake_cross_core", "wake_pingpong"), ("bulk_4MiB", "handoff_8MiB")):
        with tempfile.TemporaryDirectory() as d:
            path = pathlib.Path(d) / "compare.json"
            args = [str(exe), "--only", scenario, "--json", str(path)] + (["--quick"] if quick else [])
            r = subprocess.run(args, capture_output=True, text=True, timeout=600)
            if r.returncode != 0 or not path.exists():
                got[ours] = {"median": None, "p99": None,
                             "unavailable": f"compare failed: {r.stderr.strip()[-300:]}"}
                continue
            res = json.loads(path.read_text())["scenarios"][0]["results"]["shmbus"]
        if ours == "wake_pingpong":
            got[ours] = {"median": res["median"], "p99": res["p99"],
                         "source": "compare wake_cross_core, shmbus row"}
        else:
            ms = lambda gbps: N * 8 / (gbps * 1e9) * 1e3  # noqa: E731
            got[ours] = {"median": ms(res["median"]), "p99": ms(res["p99"]),
                         "source": "compare bulk_4MiB shmbus GB/s as the time of 8 MiB "
                                   "(includes the consumer reading every byte)"}
    return got


# ---------------------------------------------------------------------------------------------

def _ice_available() -> Optional[str]:
    try:
        import iceoryx2  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"the iceoryx2 package is not importable ({e}); pip install 'iceoryx2==0.10.*'"
    return None


def run(quick: bool = False, rust: bool = True, log: Callable[[str], None] = print) -> Dict[str, Any]:
    rounds, h_iters, w_iters = (2, 4, 200) if quick else (5, 40, 4000)
    warm_h, warm_w = (1, 20) if quick else (3, 200)
    # (measured items, warm-up items, items per window) per queue run.
    q_sizes = {"64B": (2000, 200, 500) if quick else (40000, 2000, 2000),
               "4MiB": (8, 2, 4) if quick else (40, 4, 4)}
    queues = [(f"queue_{size}_c{c}", size, c) for size in ("64B", "4MiB") for c in CONSUMERS]
    q_systems = ["shmbus", "mp_queue"]
    # First, while this process may use every CPU: compare pins its own processes.
    rust_res = _rust(quick) if rust else {
        s: {"median": None, "p99": None, "unavailable": "not run (--no-rust)"}
        for s in ("handoff_8MiB", "wake_pingpong")}
    _pin(0)
    base = np.arange(N, dtype=np.float64)
    ice_missing = _ice_available()
    handoff = ["shmbus", "mp_queue", "mp_shared_memory", "iceoryx2"]
    wake = ["shmbus", "mp_pipe", "iceoryx2"]
    samples: Dict[str, Dict[str, List[float]]] = {"handoff_8MiB": {s: [] for s in handoff},
                                                  "wake_pingpong": {s: [] for s in wake}}
    failed: Dict[str, Dict[str, str]] = {"handoff_8MiB": {}, "wake_pingpong": {}}
    for name, _, _ in queues:
        samples[name] = {s: [] for s in q_systems}
        failed[name] = {}
    if ice_missing:
        failed["handoff_8MiB"]["iceoryx2"] = failed["wake_pingpong"]["iceoryx2"] = ice_missing
    for r in range(rounds):
        log(f"round {r + 1}/{rounds}")
        for s in handoff:
            if s in failed["handoff_8MiB"]:
                continue
            try:
                xs = _handoff(s, warm_h + h_iters, base, f"h{os.getpid()}-{r}-{s}")
                samples["handoff_8MiB"][s] += [x / 1e6 for x in xs[warm_h:]]
            except Exception as e:  # noqa: BLE001
                failed["handoff_8MiB"][s] = f"{type(e).__name__}: {e}"
        for s in wake:
            if s in failed["wake_pingpong"]:
                continue
            try:
                xs = _pingpong(s, warm_w + w_iters, f"w{os.getpid()}-{r}-{s}")
                samples["wake_pingpong"][s] += [x / 1e3 for x in xs[warm_w:]]
            except Exception as e:  # noqa: BLE001
                failed["wake_pingpong"][s] = f"{type(e).__name__}: {e}"
        for name, size, c in queues:
            n, warm, window = q_sizes[size]
            # Rotate the order each round so that neither system always runs first.
            for s in q_systems[r % 2:] + q_systems[:r % 2]:
                if s in failed[name]:
                    continue
                try:
                    times = _queue(s, size, c, warm + n, warm, window,
                                   f"q{os.getpid()}-{r}-{name}-{s}")
                    samples[name][s] += _rates(times, window)
                except Exception as e:  # noqa: BLE001
                    failed[name][s] = f"{type(e).__name__}: {e}"
    scenarios = []
    for name, unit in (("handoff_8MiB", "ms"), ("wake_pingpong", "us")):
        results: Dict[str, Any] = {}
        for s, xs in samples[name].items():
            if s in failed[name]:
                results[s] = {"median": None, "p99": None, "unavailable": failed[name][s]}
            else:
                results[s] = _stats(xs)
        results["rust"] = rust_res[name]
        scenarios.append({"name": name, "unit": unit, "lower_is_better": True,
                          "baseline": "shmbus", "results": results})
    for name, _, _ in queues:
        results = {}
        for s, xs in samples[name].items():
            if s in failed[name]:
                results[s] = {"median": None, "p99": None, "unavailable": failed[name][s]}
            else:
                results[s] = _rate_stats(xs)
        scenarios.append({"name": name, "unit": "items/s", "lower_is_better": False,
                          "baseline": "mp_queue", "results": results})
    return {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "numpy": np.__version__},
            "quick": quick, "scenarios": scenarios}


def table(report: Dict[str, Any]) -> str:
    lines = []
    for sc in report["scenarios"]:
        res = sc["results"]
        baseline = sc.get("baseline", "shmbus")
        base = res.get(baseline, {}).get("median")
        better = "lower" if sc["lower_is_better"] else "higher"
        lines.append(f"{sc['name']} ({sc['unit']}, {better} is better)")
        lines.append(f"  {'system':<18}{'median':>12}{'p99':>12}{'ratio to ' + baseline:>20}")
        for s, v in res.items():
            if v.get("median") is None:
                lines.append(f"  {s:<18}unavailable: {v.get('unavailable')}")
                continue
            ratio = f"{v['median'] / base:.2f}" if base else "-"
            lines.append(f"  {s:<18}{v['median']:>12.4g}{v['p99']:>12.4g}{ratio:>20}")
    return "\n".join(lines)


def _iceoryx2_files() -> set:
    """iceoryx2's own files in /dev/shm and /tmp/iceoryx2 (it keeps a global segment after its
    last node): the bench removes those it made, so that it leaves the machine as it found it."""
    found = set()
    for d in (pathlib.Path("/dev/shm"), pathlib.Path("/tmp/iceoryx2")):
        if d.is_dir():
            found |= {p for p in d.rglob("*") if d.name == "iceoryx2" or p.name.startswith("iox2_")}
    return found


def main(argv: Optional[List[str]] = None) -> int:
    before = _iceoryx2_files()
    try:
        return _main(argv)
    finally:
        for p in sorted(_iceoryx2_files() - before, key=lambda p: len(p.parts), reverse=True):
            try:
                p.rmdir() if p.is_dir() else p.unlink()
            except OSError:
                pass


def _main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shmbus.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small run, for tests (seconds)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    ap.add_argument("--no-rust", action="store_true", help="skip the Rust figures")
    a = ap.parse_args(argv)
    report = run(quick=a.quick, rust=not a.no_rust, log=lambda m: print(m, file=sys.stderr))
    print(table(report))
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
