"""Python workers of the chaos harness (tests/src/bin/chaos.rs), on the same segments as the
Rust workers, reporting in the same line protocol (see tests/src/bin/chaos/workers.rs).

Run as `python <this file> ROLE ARGS...` (the conductor writes it out for the run):
  sub TOPIC POLICY MAX_PUBS         Pod `Msg` subscriber: checks every message, drains at the end
  fsub TOPIC POLICY TYPE_NAME       array subscriber (frames of the Rust array publishers)
  pub TOPIC POLICY MAX_PUBS ID      Pod `Msg` publisher
  qget QUEUE STYLE                  byte-string queue consumer (acknowledged), `Msg` bytes
  lock NAME ID                      robust lock holder keeping NAME.a == NAME.b
  add NAME ID                       adds to the shared u64 NAME
"""

import ctypes
import os
import sys
import threading
import time
import warnings

import numpy as np

import shmbus

M64 = (1 << 64) - 1
MSG = np.dtype([("index", "<u8"), ("producer", "<u8"), ("data", "<u8", (5,)),
                ("checksum", "<u8")], align=True)
MSG_TYPE = "shmbus_tests::Msg"
CAPACITY, MAX_SUBSCRIBERS, PUBLISH_TIMEOUT, SLICE = 16, 8, 1.0, 0.2
LOCK_TIMEOUT, SLACK_NS, BEAT = 2.0, 3_000_000_000, 0.1
ADD_BATCH = 200
STOP = threading.Event()


def out(line):
    print(line, flush=True)


def tie_to_parent():
    ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    parent = os.environ.get("SHMBUS_TEST_PARENT")
    if parent and os.getppid() != int(parent):
        sys.exit(3)


def watch_stdin():
    def run():
        for line in sys.stdin:
            if line.strip() == "quit":
                break
        STOP.set()
    threading.Thread(target=run, daemon=True).start()


def timed(op, bound_s, fn):
    start = time.monotonic_ns()
    try:
        return fn()
    finally:
        end = time.monotonic_ns()
        if end - start > int(bound_s * 1e9) + SLACK_NS:
            out(f"hang op={op} bound_ms={int(bound_s * 1000)} elapsed_ms={(end - start) // 1_000_000} "
                f"start_ns={start} end_ns={end}")


class JoinFailed(Exception):
    pass


def join(fn):
    deadline = time.monotonic() + 10
    while True:
        try:
            return fn()
        except shmbus.Error as e:
            if time.monotonic() > deadline:
                raise JoinFailed(str(e)) from e
            time.sleep(0.005)


def mix(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def rotl(x, n):
    return ((x << n) | (x >> (64 - n))) & M64


def msg(producer, index):
    """`shmbus_tests::Msg::new` as a tuple of the MSG dtype."""
    data = [mix(index ^ rotl(producer, 17) ^ rotl(i, 40)) for i in range(5)]
    h = mix(index) ^ mix((producer + 1) & M64)
    for d in data:
        h = mix(h ^ d)
    return (index, producer, data, h)


def intact(v):
    index, producer = int(v["index"]), int(v["producer"])
    _, _, data, h = msg(producer, index)
    return [int(d) for d in v["data"]] == data and int(v["checksum"]) == h


def topic(name, policy, max_pubs):
    return shmbus.Topic(name, capacity=CAPACITY, max_subscribers=MAX_SUBSCRIBERS,
                        max_publishers=max_pubs, publish_timeout=PUBLISH_TIMEOUT,
                        overflow="overwrite" if policy == "ow" else "backpressure")


class StreamCheck:
    """`account::StreamCheck` of the Rust side."""

    def __init__(self, policy):
        self.bp = policy == "bp"
        self.producers = {}  # id -> [first, last, count, lag_mark]
        self.lag_events = 0
        self.next_seq = None
        self.received = 0
        self.lagged = 0

    def lag(self, n):
        self.lagged += n
        self.lag_events += 1
        if self.next_seq is not None:
            self.next_seq += n
        if self.bp:
            out(f"joinlag n={n}" if self.received == 0 else f"viol kind=lost n={n} what=py-lag")

    def message(self, seq, producer, index, ok):
        self.received += 1
        what = f"py-p{producer}-i{index}-s{seq}"
        if self.next_seq is not None and seq < self.next_seq:
            out(f"viol kind=dup n=1 what={what}")
        else:
            if self.next_seq is not None and seq > self.next_seq:
                out(f"hole n={seq - self.next_seq}")
            self.next_seq = seq + 1
        if not ok:
            out(f"viol kind=corrupt n=1 what={what}")
            return
        s = self.producers.get(producer)
        if s is None:
            self.producers[producer] = [index, index, 1, self.lag_events]
        elif index <= s[1]:
            out(f"viol kind=dup n=1 what={what}")
        else:
            skipped = index - s[1] - 1
            if skipped and s[3] == self.lag_events:
                out(f"viol kind=lost n={skipped} what={what}")
            s[1], s[2], s[3] = index, s[2] + 1, self.lag_events

    def seen(self):
        parts = [f"{p}:{s[0]}:{s[1]}:{s[2]}" for p, s in sorted(self.producers.items())]
        return ",".join(parts) or "none"


def sub(name, policy, max_pubs):
    s = join(lambda: topic(name, policy, int(max_pubs)).subscriber(MSG, type_name=MSG_TYPE))
    out(f"ready ns={time.monotonic_ns()}")
    check, beat, quiet = StreamCheck(policy), time.monotonic(), None
    while True:
        draining = STOP.is_set()
        try:
            m = timed("recv", SLICE, lambda: s.recv(timeout=SLICE))
            quiet = None
            check.message(m.seq, int(m["producer"]), int(m["index"]), intact(m.value))
        except shmbus.Lagged as e:
            check.lag(e.count)
        except shmbus.Timeout:
            if draining:
                quiet = quiet or time.monotonic()
                if time.monotonic() - quiet > 1.0:
                    end = "quiet"
                    break
        except shmbus.Disconnected:
            if draining:
                end = "disconnected"
                break
            time.sleep(0.01)
        if time.monotonic() - beat > BEAT:
            beat = time.monotonic()
            out(f"prog received={check.received}")
    out(f"final producers={check.seen()} received={check.received} lagged={check.lagged} end={end}")


FRAME = np.dtype([("producer", "<u8"), ("index", "<u8"), ("len", "<u8")])


def frame_ok(sample, producer, index, length):
    """`workers::frame_got` of the Rust side: `fill_frame(frame_key(producer, index))`."""
    a = sample.array
    want_len = 256 + (index % 15) * 256
    if a.dtype != np.uint8 or a.shape != (want_len,) or length != want_len:
        return False
    key = (index ^ rotl(producer, 32)) & 0xFFFFFFFF
    i = np.arange(want_len, dtype=np.uint64)
    v = ((i * 2654435761) & 0xFFFFFFFF) ^ ((key * 40503) & 0xFFFFFFFF)
    want = ((v & 0xFF) ^ ((i >> 8) & 0xFF)).astype(np.uint8)
    return bool(np.array_equal(a, want))


def fsub(name, policy, type_name):
    t = shmbus.Topic(name, capacity=CAPACITY, max_subscribers=MAX_SUBSCRIBERS,
                     overflow="overwrite" if policy == "ow" else "backpressure")
    s = join(lambda: t.array_subscriber(FRAME, type_name=type_name))
    out(f"ready ns={time.monotonic_ns()}")
    check, beat, quiet = StreamCheck(policy), time.monotonic(), None
    while True:
        draining = STOP.is_set()
        try:
            with timed("recv", SLICE, lambda: s.recv(timeout=SLICE)) as m:
                quiet = None
                meta = m.meta
                p, i, n = int(meta["producer"]), int(meta["index"]), int(meta["len"])
                check.message(m.seq, p, i, frame_ok(m, p, i, n))
        except shmbus.Lagged as e:
            check.lag(e.count)
        except shmbus.Timeout:
            if draining:
                quiet = quiet or time.monotonic()
                if time.monotonic() - quiet > 1.0:
                    end = "quiet"
                    break
        except shmbus.Disconnected:
            if draining:
                end = "disconnected"
                break
            time.sleep(0.01)
        except shmbus.Corrupt:
            out("baddesc n=1")
        if time.monotonic() - beat > BEAT:
            beat = time.monotonic()
            out(f"prog received={check.received}")
    out(f"final producers={check.seen()} received={check.received} lagged={check.lagged} end={end}")


def pub(name, policy, max_pubs, ident):
    ident = int(ident)
    p = join(lambda: topic(name, policy, int(max_pubs)).publisher(MSG, type_name=MSG_TYPE))
    out(f"ready ns={time.monotonic_ns()}")
    sent, timeouts, beat = 0, 0, time.monotonic()
    while not STOP.is_set():
        for _ in range(4):
            try:
                timed("publish", PUBLISH_TIMEOUT, lambda: p.send(msg(ident, sent)))
                sent += 1
            except shmbus.Timeout:
                timeouts += 1
                break
        if time.monotonic() - beat > BEAT:
            beat = time.monotonic()
            out(f"prog sent={sent} ns={time.monotonic_ns()}")
        time.sleep(0.003)
    out(f"final sent={sent} timeouts={timeouts}")
    p.close()


def qget(name, style):
    q = join(lambda: shmbus.Queue(name, create=False))
    out(f"ready ns={time.monotonic_ns()}")
    got, beat = 0, time.monotonic()
    while True:
        try:
            d = timed("get", SLICE, lambda: q.get_bytes(timeout=SLICE))
        except shmbus.Empty:
            d = None
        except shmbus.Closed:
            break
        if d is not None:
            data = d.data
            ok = len(data) == MSG.itemsize
            if ok:
                v = np.frombuffer(data, dtype=MSG)[0]
                p, i, ok = int(v["producer"]), int(v["index"]), intact(v)
            else:
                p, i = 0, 0
            out(f"got p={p} i={i} d={d.deliveries} ok={str(ok).lower()}")
            if style == "refuse-some" and i % 7 == 3 and d.deliveries == 1:
                d.refuse()  # given back: delivered again, counted as redelivered
            else:
                d.ack()
            got += 1
        if time.monotonic() - beat > BEAT:
            beat = time.monotonic()
            out(f"prog got={got}")
    out(f"final got={got}")


def lock(name, ident):
    ident = int(ident)
    warnings.simplefilter("ignore")
    lk = join(lambda: shmbus.Lock(name, create=False))
    a, b, h = (join(lambda n=n: shmbus.Value(f"{name}.{n}", "Q", create=False)) for n in "abh")
    out(f"ready ns={time.monotonic_ns()}")
    done, timeouts, beat = 0, 0, time.monotonic()
    while not STOP.is_set():
        if timed("lock", LOCK_TIMEOUT, lambda: lk.acquire(timeout=LOCK_TIMEOUT)):
            try:
                x, y, held = a.value, b.value, h.value
                if lk.owner_died:
                    h.value = ident
                    b.value = x
                    lk.mark_consistent()
                    out(f"recovered dead={held} gap={(x - y) & M64}")
                elif x != y or held != 0:
                    out(f"viol kind=corrupt n=1 what=py-lock-a{x}-b{y}-h{held}")
                    b.value = x
                h.value = ident
                x = a.value
                a.value = (x + 1) & M64
                b.value = (x + 1) & M64
                h.value = 0
            finally:
                lk.release()
            done += 1
        else:
            timeouts += 1
        if time.monotonic() - beat > BEAT:
            beat = time.monotonic()
            out(f"prog done={done}")
        time.sleep(0.002)
    out(f"final done={done} timeouts={timeouts}")


def add(name, ident):
    v = join(lambda: shmbus.Value(name, "Q", create=False))
    out(f"ready ns={time.monotonic_ns()}")
    added = 0
    while not STOP.is_set():
        for _ in range(ADD_BATCH):
            v.fetch_add(1)
        added += ADD_BATCH
        out(f"prog added={added}")
        time.sleep(0.005)
    out(f"final added={added}")


if __name__ == "__main__":
    tie_to_parent()
    watch_stdin()
    role, args = sys.argv[1], sys.argv[2:]
    try:
        {"sub": sub, "fsub": fsub, "pub": pub, "qget": qget, "lock": lock, "add": add}[role](*args)
    except Exception as e:  # noqa: BLE001 - reported to the conductor, which judges it
        code = "join" if isinstance(e, JoinFailed) else f"py-{type(e).__name__}"
        msg_ = f"{type(e).__name__}: {e}".replace("\n", " ")
        out(f"error code={code} msg={msg_}")
        sys.exit(2)
