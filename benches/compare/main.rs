//! `compare`: shmbus side by side with the hardware floor, iceoryx2 and Unix sockets, in one run.
//!
//! ```text
//! cargo run --release --bin compare -- [--quick] [--json PATH] [--only SCENARIO] [--system SYSTEM]
//! ```
//!
//! For every scenario, each system runs in turn, round after round (interleaved, so that drift
//! of the host affects them alike), each run in fresh processes pinned to CPUs: the leader (this
//! process) on CPU 0 and its peers on CPU 1, or on CPU 0 too for `wake_same_core`; the work
//! queues' consumers go round-robin over the CPUs from CPU 1 (on two CPUs, consumers 2 and 4
//! share CPU 0 with the producer, and 3 shares CPU 1 with consumer 1). The table gives medians,
//! p99s, the ratio of each median to the floor's and to iceoryx2's, and what the receiving
//! processes cost (below).
//!
//! | scenario | measures | floor |
//! |---|---|---|
//! | `latency_busy_8B` | ping-pong, receivers poll; round trip / 2 | two words in a shared mapping |
//! | `wake_cross_core`, `wake_same_core` | one 8-byte message to a receiver asleep (the sender waits 200 µs, yielding its CPU, before each): from the send to the receiver holding it (shared monotonic clock; the acknowledgement goes back through the control mapping, not the system) | a futex word: store and `FUTEX_WAKE`; the receiver in `FUTEX_WAIT` |
//! | `throughput_64B` | 64-byte messages per second, one producer, one consumer | a bare SPSC ring |
//! | `bulk_4MiB`, `bulk_64MiB` | GB/s; the producer writes, the consumer reads every byte | block hand-off in a shared mapping, with 1 (the block just released, cache-hot), 2 and 4 blocks in flight: the best |
//! | `fanout4_latency_busy` | one publisher, four polling subscribers, latency to the last | one word polled by four |
//! | `queue_64B_c1`, `_c2`, `_c4` | work queue, 64-byte items per second, one producer, 1, 2 or 4 consumer processes | Vyukov's bounded MPMC ring |
//! | `queue_4MiB_c1`, `_c2`, `_c4` | work queue of 4 MiB arrays, GB/s; the producer writes and a consumer reads every byte in place | MPMC rings of full and free blocks |
//! | `waitset_wake_1`, `waitset_wake_16` | a receiver asleep on 1 or 16 topics (a message on one of them, rotating, 200 µs apart): latency from the send time in the message to the receiver holding it | one `futex_waitv` on 1 or 16 futex words |
//! | `waitset_idle_100` | CPU time (user + system) of a process asleep on 100 idle topics for 2 s (1 s with `--quick`), µs per second of waiting | one `futex_waitv` on 100 words for the whole wait |
//! | `publish_with_waitset` | one 8-byte publish, ns, each timed alone (200 µs apart), with a WaitSet asleep in another process on that topic and 15 others, or with nobody asleep | `futex_wake` of a sleeper in `futex_waitv` on 16 words |
//! | `fanout_latency_1`, `_2`, `_4`, `_8`, `_16` | as `fanout4_latency_busy` with 1 to 16 subscriber processes (all on CPU 1, yielding between polls) | one word polled by all |
//! | `fanout_throughput_1` … `_16` | 64-byte messages per second that every one of 1 to 16 subscribers (CPU 1, yielding when empty) receives; back-pressure, nothing lost | a ring of 256 × 64 B with a position per subscriber |
//! | `msg_latency_8B`, `_64B`, `_512B`, `_4KiB`, `_64KiB` | busy ping-pong of messages of that size in the slot (the writer writes, the reader reads every byte); round trip / 2 | sequence word + message in a shared mapping, going round 1, 4 or 16 buffers per direction: the best |
//! | `msg_throughput_8B` … `_64KiB` | messages per second of that size, one producer, one consumer, every byte written and read | an SPSC ring of that size's slots, with 1, 2, 4 or all of them in flight: the best |
//! | `bulk_64KiB` | as `bulk_4MiB` at 64 KiB | as `bulk_4MiB` |
//! | `publishers_throughput_1`, `_2`, `_4` | 64-byte messages per second from 1, 2 or 4 publisher processes (CPU 1) on one topic into one subscriber; back-pressure, each publisher's messages in order, none lost | Vyukov's bounded MPMC ring with one consumer (no CAS on its side) |
//!
//! Every receiving process (the echo process of `latency_busy_8B`, the consumer of
//! `throughput_64B` and of `bulk_*` (for the floor: in its fastest run), the four subscribers
//! of `fanout4_latency_busy`, the receiver of `wake_*` and `waitset_wake_*`) reads
//! `getrusage(RUSAGE_SELF)` before its first measured message and after its last. The table's
//! `sleeps/msg` is its voluntary context switches per message (per receiver: about 1 when it
//! sleeps for every message, 0 when it polls), `rx CPU ns/msg` the user + system CPU time of
//! the receivers per message (summed over the four in fan-out): what the waiting costs,
//! spinning included. The JSON has them as `sleeps_per_msg` and
//! `rx_cpu_ns_per_msg`; they are `-` (null) where the receivers are not metered (work queues,
//! whose consumers share the items; idle waiting; `publish_with_waitset`; the scaling
//! scenarios but `fanout_latency_N` and `bulk_64KiB`, which run the metered fan-out and bulk
//! code).
//!
//! The scaling scenarios (the last six rows; their code is in `scaling/`) have floor, shmbus
//! and iceoryx2 rows only, but for `bulk_64KiB`; shmbus's several-publisher topic has
//! `max_publishers` set to the number of publishers (with one, publishing takes no lock).
//!
//! A scenario where a library beats its floor by more than 10 % is printed with a `REFUSED`
//! line saying so, and marked `refused` (with the reason) in the JSON: a floor that a real
//! system beats is not a floor, and such figures are not a measurement. So is a wake-up
//! scenario (`wake_*`, `waitset_wake_*`) where a system's receiver slept fewer than 0.9 times
//! per message: it was awake when messages came, and its figure times no wake-up. The run
//! goes on.
//!
//! For rates (higher is better) the "p99" column is the rate that 99 % of the windows beat
//! (the 1st percentile): the bad tail, as for latencies.
//!
//! The last four scenarios (waiting on many topics) have rows of their own. `shmbus` is
//! [`shmbus::WaitSet`] (subscribers attached, one per topic); `shmbus-recv` is shmbus without
//! it: one subscriber blocked in `recv` (the wake-up scenarios, where it has one topic whatever
//! the set holds) or one thread blocked in `recv` per topic (`waitset_idle_100`); `iceoryx2` is
//! its `WaitSet` with one event listener per topic attached, the sender publishing and then
//! notifying (its examples' pattern); Unix sockets are left out (their multiplexer is `epoll`,
//! which iceoryx2's WaitSet already is). `waitset_idle_100` has no "× floor" ratio (the floor
//! is near 0; its figure is the cost of one call, spread over the wait). In
//! `publish_with_waitset`, `shmbus` is the publish that finds the set asleep (and makes the
//! wake-up system call), `shmbus-no-waiter` the same publish while the other process polls
//! the topic instead (nobody asleep: no system call), and the second ratio column divides by
//! the latter; it has no iceoryx2 row (iceoryx2's notify is a separate, explicit call).
//!
//! The peers are this binary again (`compare __peer ...`). Systems: `floor` (the bare mechanism,
//! the best any library could do), `shmbus`, `iceoryx2` (0.10, from crates.io, written as its
//! examples write it: loan, write, send), `uds` (Unix domain sockets: `SOCK_SEQPACKET` for
//! messages, `SOCK_STREAM` for bulk). iceoryx2 and Unix sockets have no work queue (each item
//! to exactly one of several consumers): the `queue_*` scenarios run the floor and shmbus only.

mod ctl;
mod floor;
mod ice;
mod scaling;
mod shm;
mod uds;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

use ctl::Shared;

/// Errors of the harness (a benchmark: any failure ends the run with its message).
pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Parser, Debug)]
#[command(about = "shmbus against the hardware floor, iceoryx2 and Unix sockets, side by side")]
struct Args {
    /// Fewer rounds and messages: the whole run takes under two minutes.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Run only these scenarios (by name; repeatable).
    #[arg(long)]
    only: Vec<String>,
    /// Run only these systems (floor, shmbus, iceoryx2, uds, and for the scenarios that wait on
    /// many topics shmbus-recv and shmbus-no-waiter; repeatable): to profile one, e.g. counting
    /// its system calls with `perf stat`.
    #[arg(long)]
    system: Vec<String>,
    /// Rounds per scenario (default 3 with --quick, else 10).
    #[arg(long)]
    rounds: Option<u32>,
}

/// The scenarios, named as in the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    LatencyBusy,
    WakeCross,
    WakeSame,
    Throughput,
    Bulk4,
    Bulk64,
    Fanout,
    /// A work queue of 64-byte items with this many consumer processes.
    Queue64(usize),
    /// A work queue of 4 MiB arrays with this many consumer processes.
    Queue4MiB(usize),
    /// Wake-up latency of a receiver asleep on this many topics.
    WaitsetWake(usize),
    /// CPU time of a process asleep on 100 idle topics.
    WaitsetIdle,
    /// The cost of a publish, with and without a WaitSet asleep on the topic.
    PublishWaitset,
    /// Publish to the last of this many polling subscribers (1, 2, 4, 8, 16).
    FanoutLatency(usize),
    /// 64-byte messages per second that every one of this many subscribers receives.
    FanoutThroughput(usize),
    /// Busy ping-pong of messages of this many bytes in the slot (8 B to 64 KiB).
    MsgLatency(usize),
    /// One producer, one consumer, messages of this many bytes in the slot.
    MsgThroughput(usize),
    /// The array hand-off of `bulk_4MiB` at 64 KiB.
    Bulk64KiB,
    /// This many publisher processes on one topic into one subscriber (1, 2, 4).
    Publishers(usize),
}

impl Scenario {
    const ALL: [Scenario; 41] = [
        Scenario::LatencyBusy,
        Scenario::WakeCross,
        Scenario::WakeSame,
        Scenario::Throughput,
        Scenario::Bulk4,
        Scenario::Bulk64,
        Scenario::Fanout,
        Scenario::Queue64(1),
        Scenario::Queue64(2),
        Scenario::Queue64(4),
        Scenario::Queue4MiB(1),
        Scenario::Queue4MiB(2),
        Scenario::Queue4MiB(4),
        Scenario::WaitsetWake(1),
        Scenario::WaitsetWake(16),
        Scenario::WaitsetIdle,
        Scenario::PublishWaitset,
        Scenario::FanoutLatency(1),
        Scenario::FanoutLatency(2),
        Scenario::FanoutLatency(4),
        Scenario::FanoutLatency(8),
        Scenario::FanoutLatency(16),
        Scenario::FanoutThroughput(1),
        Scenario::FanoutThroughput(2),
        Scenario::FanoutThroughput(4),
        Scenario::FanoutThroughput(8),
        Scenario::FanoutThroughput(16),
        Scenario::MsgLatency(8),
        Scenario::MsgLatency(64),
        Scenario::MsgLatency(512),
        Scenario::MsgLatency(4 << 10),
        Scenario::MsgLatency(64 << 10),
        Scenario::MsgThroughput(8),
        Scenario::MsgThroughput(64),
        Scenario::MsgThroughput(512),
        Scenario::MsgThroughput(4 << 10),
        Scenario::MsgThroughput(64 << 10),
        Scenario::Bulk64KiB,
        Scenario::Publishers(1),
        Scenario::Publishers(2),
        Scenario::Publishers(4),
    ];

    /// Topics of `waitset_idle_100`.
    const IDLE_TOPICS: usize = 100;

    fn name(self) -> &'static str {
        match self {
            Scenario::LatencyBusy => "latency_busy_8B",
            Scenario::WakeCross => "wake_cross_core",
            Scenario::WakeSame => "wake_same_core",
            Scenario::Throughput => "throughput_64B",
            Scenario::Bulk4 => "bulk_4MiB",
            Scenario::Bulk64 => "bulk_64MiB",
            Scenario::Fanout => "fanout4_latency_busy",
            Scenario::Queue64(1) => "queue_64B_c1",
            Scenario::Queue64(2) => "queue_64B_c2",
            // `ALL` has 1, 2 and 4 consumers only.
            Scenario::Queue64(_) => "queue_64B_c4",
            Scenario::Queue4MiB(1) => "queue_4MiB_c1",
            Scenario::Queue4MiB(2) => "queue_4MiB_c2",
            Scenario::Queue4MiB(_) => "queue_4MiB_c4",
            Scenario::WaitsetWake(1) => "waitset_wake_1",
            // `ALL` has 1 and 16 topics only.
            Scenario::WaitsetWake(_) => "waitset_wake_16",
            Scenario::WaitsetIdle => "waitset_idle_100",
            Scenario::PublishWaitset => "publish_with_waitset",
            Scenario::FanoutLatency(n) => scaling_name(n, "fanout_latency"),
            Scenario::FanoutThroughput(n) => scaling_name(n, "fanout_throughput"),
            Scenario::MsgLatency(b) => scaling_name(b, "msg_latency"),
            Scenario::MsgThroughput(b) => scaling_name(b, "msg_throughput"),
            Scenario::Bulk64KiB => "bulk_64KiB",
            Scenario::Publishers(n) => scaling_name(n, "publishers_throughput"),
        }
    }

    fn parse(s: &str) -> Option<Scenario> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }

    fn unit(self) -> &'static str {
        match self {
            Scenario::LatencyBusy
            | Scenario::Fanout
            | Scenario::PublishWaitset
            | Scenario::FanoutLatency(_)
            | Scenario::MsgLatency(_) => "ns",
            Scenario::WakeCross | Scenario::WakeSame | Scenario::WaitsetWake(_) => "us",
            Scenario::WaitsetIdle => "CPU-us/s",
            Scenario::Throughput
            | Scenario::FanoutThroughput(_)
            | Scenario::MsgThroughput(_)
            | Scenario::Publishers(_) => "Mmsg/s",
            Scenario::Queue64(_) => "Mitems/s",
            Scenario::Bulk4 | Scenario::Bulk64 | Scenario::Bulk64KiB | Scenario::Queue4MiB(_) => {
                "GB/s"
            }
        }
    }

    fn lower_is_better(self) -> bool {
        matches!(
            self,
            Scenario::LatencyBusy
                | Scenario::WakeCross
                | Scenario::WakeSame
                | Scenario::Fanout
                | Scenario::WaitsetWake(_)
                | Scenario::WaitsetIdle
                | Scenario::PublishWaitset
                | Scenario::FanoutLatency(_)
                | Scenario::MsgLatency(_)
        )
    }

    /// Wake-up scenarios: the receiver must sleep for every message (checked: see
    /// [`not_asleep`]).
    fn receiver_sleeps(self) -> bool {
        matches!(
            self,
            Scenario::WakeCross | Scenario::WakeSame | Scenario::WaitsetWake(_)
        )
    }

    fn peers(self) -> usize {
        match self {
            Scenario::Fanout => 4,
            Scenario::Queue64(c) | Scenario::Queue4MiB(c) => c,
            Scenario::FanoutLatency(n)
            | Scenario::FanoutThroughput(n)
            | Scenario::Publishers(n) => n,
            _ => 1,
        }
    }

    /// The CPU of peer `index` (1-based) on a machine of `cpus` CPUs; the leader is on CPU 0.
    fn peer_cpu(self, index: usize, cpus: usize) -> usize {
        match self {
            Scenario::WakeSame => 0,
            // Round-robin from CPU 1: with more consumers than CPUs, they share.
            Scenario::Queue64(_) | Scenario::Queue4MiB(_) => index % cpus.max(1),
            _ => 1,
        }
    }

    /// The systems that have this scenario's mechanism (iceoryx2 and Unix sockets have no work
    /// queue); the scenarios that wait on many topics have rows of their own (see [`System`]).
    /// Unix sockets are left out of those: waiting on many sockets is `epoll`, which
    /// iceoryx2's WaitSet already is.
    fn systems(self) -> &'static [System] {
        match self {
            Scenario::Queue64(_) | Scenario::Queue4MiB(_) => &[System::Floor, System::Shmbus],
            Scenario::WaitsetWake(_) | Scenario::WaitsetIdle => &[
                System::Floor,
                System::Shmbus,
                System::ShmbusRecv,
                System::Iceoryx2,
            ],
            Scenario::PublishWaitset => &[System::Floor, System::Shmbus, System::ShmbusNoWaiter],
            Scenario::Throughput => &[
                System::Floor,
                System::Shmbus,
                System::ShmbusBatch,
                System::Iceoryx2,
                System::Uds,
            ],
            // Unix sockets add nothing to the scaling curves but time (they are in `bulk_*`).
            Scenario::FanoutLatency(_)
            | Scenario::FanoutThroughput(_)
            | Scenario::MsgLatency(_)
            | Scenario::MsgThroughput(_)
            | Scenario::Publishers(_) => &[System::Floor, System::Shmbus, System::Iceoryx2],
            _ => &System::ALL,
        }
    }

    /// The two ratio columns of the table: their headings and the system whose median each
    /// divides by. `waitset_idle_100` has no floor ratio (the floor is about 0);
    /// `publish_with_waitset` has no iceoryx2 row: its second ratio divides by the publish that
    /// finds nobody asleep.
    fn ratio_columns(self) -> [(&'static str, Option<System>); 2] {
        match self {
            Scenario::WaitsetIdle => [("× floor", None), ("× iceoryx2", Some(System::Iceoryx2))],
            Scenario::PublishWaitset => [
                ("× floor", Some(System::Floor)),
                ("× no waiter", Some(System::ShmbusNoWaiter)),
            ],
            _ => [
                ("× floor", Some(System::Floor)),
                ("× iceoryx2", Some(System::Iceoryx2)),
            ],
        }
    }

    /// Bytes per bulk message (or array item).
    fn bulk_bytes(self) -> usize {
        match self {
            Scenario::Bulk4 | Scenario::Queue4MiB(_) => 4 << 20,
            Scenario::Bulk64 => 64 << 20,
            Scenario::Bulk64KiB => 64 << 10,
            Scenario::MsgLatency(b) | Scenario::MsgThroughput(b) => b,
            _ => 0,
        }
    }

    /// (measured messages, warm-up messages, messages per rate window) per run.
    fn sizes(self, quick: bool) -> (u64, u64, u64) {
        let q = |full: u64, quick_n: u64| if quick { quick_n } else { full };
        match self {
            Scenario::LatencyBusy => (q(20_000, 5_000), 2_000, 1),
            Scenario::WakeCross | Scenario::WakeSame => (q(3_000, 600), 100, 1),
            Scenario::Throughput => (q(2_000_000, 400_000), 50_000, 10_000),
            Scenario::Bulk4 => (q(400, 100), 8, 4),
            Scenario::Bulk64 => (q(32, 10), 2, 1),
            Scenario::Fanout => (q(5_000, 1_000), 200, 1),
            Scenario::Queue64(_) => (q(1_000_000, 100_000), 20_000, 10_000),
            Scenario::Queue4MiB(_) => (q(400, 64), 16, 8),
            Scenario::WaitsetWake(_) => (q(3_000, 500), 100, 1),
            // The wall time of the wait, in ms.
            Scenario::WaitsetIdle => (q(2_000, 1_000), 0, 1),
            Scenario::PublishWaitset => (q(10_000, 1_500), 200, 1),
            Scenario::FanoutLatency(_) => (q(5_000, 500), 100, 1),
            Scenario::FanoutThroughput(_) => (q(400_000, 40_000), 10_000, 5_000),
            Scenario::MsgLatency(b) if b >= 64 << 10 => (q(5_000, 500), 200, 1),
            Scenario::MsgLatency(_) => (q(20_000, 2_000), 1_000, 1),
            Scenario::MsgThroughput(b) if b >= 64 << 10 => (q(20_000, 2_000), 500, 200),
            Scenario::MsgThroughput(b) if b >= 4 << 10 => (q(200_000, 20_000), 5_000, 2_000),
            Scenario::MsgThroughput(_) => (q(1_000_000, 100_000), 20_000, 10_000),
            Scenario::Bulk64KiB => (q(20_000, 2_000), 256, 256),
            Scenario::Publishers(_) => (q(1_000_000, 100_000), 20_000, 10_000),
        }
    }
}

/// The systems, named as in the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum System {
    Floor,
    Shmbus,
    /// shmbus without a WaitSet (the scenarios that wait on many topics): one subscriber
    /// blocked in `recv`, or one thread blocked in `recv` per topic.
    ShmbusRecv,
    /// `publish_with_waitset`: the publish that finds nobody asleep.
    ShmbusNoWaiter,
    /// `throughput_64B` with the publisher writing batches in place (`send_many_with`, 32 at a
    /// time).
    ShmbusBatch,
    Iceoryx2,
    Uds,
}

impl System {
    /// The systems of most scenarios.
    const ALL: [System; 4] = [System::Floor, System::Shmbus, System::Iceoryx2, System::Uds];
    /// Every name `--system` and the peers accept.
    const NAMED: [System; 7] = [
        System::Floor,
        System::Shmbus,
        System::ShmbusRecv,
        System::ShmbusNoWaiter,
        System::ShmbusBatch,
        System::Iceoryx2,
        System::Uds,
    ];

    fn name(self) -> &'static str {
        match self {
            System::Floor => "floor",
            System::Shmbus => "shmbus",
            System::ShmbusRecv => "shmbus-recv",
            System::ShmbusNoWaiter => "shmbus-no-waiter",
            System::ShmbusBatch => "shmbus-batch",
            System::Iceoryx2 => "iceoryx2",
            System::Uds => "uds",
        }
    }

    fn parse(s: &str) -> Option<System> {
        Self::NAMED.into_iter().find(|c| c.name() == s)
    }
}

/// What one process of a run knows.
#[derive(Debug)]
pub(crate) struct Run<'a> {
    /// The control/floor mapping.
    pub(crate) shared: &'a Shared,
    /// A name private to this run (for topics and services).
    pub(crate) tag: &'a str,
    /// Messages measured, after `warmup` unmeasured ones.
    pub(crate) iters: u64,
    /// Messages before measuring starts.
    pub(crate) warmup: u64,
    /// Messages per rate window (throughput and bulk).
    pub(crate) window: u64,
    /// This peer's number (0 for the leader).
    pub(crate) index: usize,
    /// Number of peers.
    pub(crate) peers: usize,
    /// Bytes per bulk message.
    pub(crate) bytes: usize,
    /// The socket of each peer (the leader holds one per peer; a peer holds its own).
    pub(crate) socks: Vec<OwnedFd>,
}

impl Run<'_> {
    /// Total messages of the run.
    pub(crate) fn total(&self) -> u64 {
        self.warmup + self.iters
    }

    /// Records the time at which a rate window starts, before message `i` is taken: at the end
    /// of the warm-up and every `window` messages after it.
    pub(crate) fn mark_window(&self, i: u64, times: &mut Vec<u64>) {
        if i >= self.warmup && (i - self.warmup) % self.window == 0 {
            times.push(ctl::now_ns());
        }
    }
}

/// What the leader's side of a run returns.
#[derive(Debug)]
pub(crate) enum Measured {
    /// Round-trip times in ns (one per measured message).
    RoundTrips(Vec<u64>),
    /// One-way latencies in ns.
    Latencies(Vec<u64>),
    /// Times (ns) at which each window of `window` measured messages completed, starting with
    /// the time measuring began.
    Windows(Vec<u64>),
    /// Samples already in the scenario's unit.
    Values(Vec<f64>),
}

fn dispatch(sc: Scenario, sys: System, run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    use Scenario::*;
    use System::*;
    match (sc, sys) {
        (LatencyBusy, Floor) => floor::pingpong(run, leader),
        (LatencyBusy, Shmbus) => shm::pingpong(run, leader),
        (LatencyBusy, Iceoryx2) => ice::pingpong(run, leader),
        (LatencyBusy, Uds) => uds::pingpong(run, leader),
        (WakeCross | WakeSame, Floor) => floor::wake(run, leader),
        (WakeCross | WakeSame, Shmbus) => shm::wake(run, leader),
        (WakeCross | WakeSame, Iceoryx2) => ice::wake(run, leader),
        (WakeCross | WakeSame, Uds) => uds::wake(run, leader),
        (Throughput, Floor) => floor::stream64(run, leader),
        (Throughput, Shmbus) => shm::stream64(run, leader, 1),
        (Throughput, ShmbusBatch) => shm::stream64(run, leader, shm::SEND_BATCH),
        (Throughput, Iceoryx2) => ice::stream64(run, leader),
        (Throughput, Uds) => uds::stream64(run, leader),
        (Bulk4 | Bulk64, Floor) => floor::bulk(run, leader),
        (Bulk4 | Bulk64, Shmbus) => shm::bulk(run, leader),
        (Bulk4 | Bulk64, Iceoryx2) => ice::bulk(run, leader),
        (Bulk4 | Bulk64, Uds) => uds::bulk(run, leader),
        (Fanout, Floor) => floor::fanout(run, leader),
        (Fanout, Shmbus) => shm::fanout(run, leader),
        (Fanout, Iceoryx2) => ice::fanout(run, leader),
        (Fanout, Uds) => uds::fanout(run, leader),
        (Queue64(_), Floor) => floor::queue64(run, leader),
        (Queue64(_), Shmbus) => shm::queue64(run, leader),
        (Queue4MiB(_), Floor) => floor::queue_arrays(run, leader),
        (Queue4MiB(_), Shmbus) => shm::queue_arrays(run, leader),
        (WaitsetWake(k), Floor) => floor::wake_many(run, leader, k),
        (WaitsetWake(k), Shmbus) => shm::wake_waitset(run, leader, k),
        (WaitsetWake(_), ShmbusRecv) => shm::wake_recv(run, leader),
        (WaitsetWake(k), Iceoryx2) => ice::wake_waitset(run, leader, k),
        (WaitsetIdle, Floor) => floor::idle_many(run, leader, Scenario::IDLE_TOPICS),
        (WaitsetIdle, Shmbus) => shm::idle_waitset(run, leader, Scenario::IDLE_TOPICS),
        (WaitsetIdle, ShmbusRecv) => shm::idle_threads(run, leader, Scenario::IDLE_TOPICS),
        (WaitsetIdle, Iceoryx2) => ice::idle_waitset(run, leader, Scenario::IDLE_TOPICS),
        (PublishWaitset, Floor) => floor::publish_cost(run, leader),
        (PublishWaitset, Shmbus) => shm::publish_cost(run, leader, true),
        (PublishWaitset, ShmbusNoWaiter) => shm::publish_cost(run, leader, false),
        (Queue64(_) | Queue4MiB(_), Iceoryx2 | Uds) => {
            Err(format!("{} has no work queue", sys.name()).into())
        }
        (FanoutLatency(_), Floor) => floor::fanout(run, leader),
        (FanoutLatency(_), Shmbus) => shm::fanout(run, leader),
        (FanoutLatency(_), Iceoryx2) => ice::fanout(run, leader),
        (FanoutThroughput(_), Floor) => scaling::floor::fanout_stream(run, leader),
        (FanoutThroughput(_), Shmbus) => scaling::shm::fanout_stream(run, leader),
        (FanoutThroughput(_), Iceoryx2) => scaling::ice::fanout_stream(run, leader),
        (MsgLatency(_), Floor) => scaling::floor::pingpong(run, leader),
        (MsgLatency(_), Shmbus) => scaling::shm::pingpong(run, leader),
        (MsgLatency(_), Iceoryx2) => scaling::ice::pingpong(run, leader),
        (MsgThroughput(_), Floor) => scaling::floor::stream(run, leader),
        (MsgThroughput(_), Shmbus) => scaling::shm::stream(run, leader),
        (MsgThroughput(_), Iceoryx2) => scaling::ice::stream(run, leader),
        (Bulk64KiB, Floor) => floor::bulk(run, leader),
        (Bulk64KiB, Shmbus) => shm::bulk(run, leader),
        (Bulk64KiB, Iceoryx2) => ice::bulk(run, leader),
        (Bulk64KiB, Uds) => uds::bulk(run, leader),
        (Publishers(_), Floor) => scaling::floor::publishers(run, leader),
        (Publishers(_), Shmbus) => scaling::shm::publishers(run, leader),
        (Publishers(_), Iceoryx2) => scaling::ice::publishers(run, leader),
        (_, ShmbusRecv | ShmbusNoWaiter | ShmbusBatch)
        | (PublishWaitset, Iceoryx2)
        | (
            FanoutLatency(_) | FanoutThroughput(_) | MsgLatency(_) | MsgThroughput(_)
            | Publishers(_),
            Uds,
        )
        | (WaitsetWake(_) | WaitsetIdle | PublishWaitset, Uds) => Err(no_row(sc, sys)),
    }
}

/// The name of a scaling scenario: `family_N` (a count) or `family_SIZE` (bytes: `8B`, `4KiB`);
/// `ALL` holds only the counts and sizes of the [`scaling`] families.
fn scaling_name(n: usize, family: &str) -> &'static str {
    const NAMES: [&str; 24] = [
        "fanout_latency_1",
        "fanout_latency_2",
        "fanout_latency_4",
        "fanout_latency_8",
        "fanout_latency_16",
        "fanout_throughput_1",
        "fanout_throughput_2",
        "fanout_throughput_4",
        "fanout_throughput_8",
        "fanout_throughput_16",
        "msg_latency_8B",
        "msg_latency_64B",
        "msg_latency_512B",
        "msg_latency_4KiB",
        "msg_latency_64KiB",
        "msg_throughput_8B",
        "msg_throughput_64B",
        "msg_throughput_512B",
        "msg_throughput_4KiB",
        "msg_throughput_64KiB",
        "publishers_throughput_1",
        "publishers_throughput_2",
        "publishers_throughput_4",
        "unknown",
    ];
    let suffix = match n {
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b if family.starts_with("msg") => format!("{b}B"),
        n => n.to_string(),
    };
    let want = format!("{family}_{suffix}");
    NAMES.into_iter().find(|&s| s == want).unwrap_or("unknown")
}

fn no_row(sc: Scenario, sys: System) -> Box<dyn std::error::Error + Send + Sync> {
    format!("{} has no {} row", sc.name(), sys.name()).into()
}

/// Bytes of floor data each scenario needs in the shared mapping.
fn data_bytes(sc: Scenario, sys: System) -> usize {
    match (sc, sys) {
        (Scenario::Throughput, System::Floor) => floor::RING_SLOTS * 64,
        (Scenario::Bulk4 | Scenario::Bulk64 | Scenario::Bulk64KiB, System::Floor) => {
            floor::BULK_BLOCKS * sc.bulk_bytes()
        }
        (Scenario::FanoutThroughput(_), System::Floor) => scaling::floor::fanout_stream_bytes(),
        (Scenario::MsgLatency(b), System::Floor) => scaling::floor::pingpong_bytes(b),
        (Scenario::MsgThroughput(b), System::Floor) => scaling::floor::stream_bytes(b),
        (Scenario::Publishers(_), System::Floor) => scaling::floor::publishers_bytes(),
        (Scenario::Queue64(_), System::Floor) => floor::QUEUE_SLOTS * floor::CELL_BYTES,
        (Scenario::Queue4MiB(_), System::Floor) => {
            floor::QUEUE_BLOCKS_OFFSET + floor::QUEUE_BLOCKS * sc.bulk_bytes()
        }
        // One futex word per 128-byte line.
        (
            Scenario::WaitsetWake(_) | Scenario::WaitsetIdle | Scenario::PublishWaitset,
            System::Floor,
        ) => Scenario::IDLE_TOPICS * 128,
        _ => 0,
    }
}

/// Kills and reaps peer processes that are still running when a run ends early.
struct Peers(Vec<Child>);

impl Peers {
    fn wait(mut self) -> Res<()> {
        let deadline = Instant::now() + ctl::PEER_TIMEOUT;
        for c in &mut self.0 {
            loop {
                if let Some(st) = c.try_wait()? {
                    if !st.success() {
                        return Err(format!("a peer process failed: {st}").into());
                    }
                    break;
                }
                if Instant::now() > deadline {
                    return Err("a peer process did not finish".into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.0.clear();
        Ok(())
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What one run gave: the leader's measurement, and what the receiving processes reported
/// about themselves over the measured messages (if they are metered in this scenario).
struct RunResult {
    measured: Measured,
    rx: Option<ctl::RxUsage>,
    /// Messages measured.
    iters: u64,
}

/// One run: fresh peers, the leader's side here; returns what the leader measured.
/// `cpus` is how many CPUs the harness may use (read before the leader pinned itself).
fn run_once(sc: Scenario, sys: System, round: u32, quick: bool, cpus: usize) -> Res<RunResult> {
    let (iters, warmup, window) = sc.sizes(quick);
    let shared = Shared::create(data_bytes(sc, sys))?;
    let tag = format!(
        "compare.{}.{}.{}.{round}",
        std::process::id(),
        sc.name(),
        sys.name()
    );
    let mut mine = Vec::new();
    let mut theirs = Vec::new();
    if sys == System::Uds {
        for _ in 0..sc.peers() {
            let (a, b) = uds::pair(sc)?;
            mine.push(a);
            theirs.push(b);
        }
    }
    let exe = std::env::current_exe()?;
    let mut peers = Peers(Vec::new());
    for index in 0..sc.peers() {
        let sock = theirs.get(index).map_or(-1, |s| s.as_raw_fd());
        let child = Command::new(&exe)
            .args([
                "__peer".to_string(),
                sc.name().into(),
                sys.name().into(),
                shared.fd().to_string(),
                shared.len().to_string(),
                (index + 1).to_string(),
                tag.clone(),
                iters.to_string(),
                warmup.to_string(),
                window.to_string(),
                sock.to_string(),
                sc.peer_cpu(index + 1, cpus).to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        peers.0.push(child);
    }
    drop(theirs);
    let mut run = Run {
        shared: &shared,
        tag: &tag,
        iters,
        warmup,
        window,
        index: 0,
        peers: sc.peers(),
        bytes: sc.bulk_bytes(),
        socks: mine,
    };
    let measured = dispatch(sc, sys, &mut run, true)?.ok_or("the leader measured nothing")?;
    drop(run);
    peers.wait()?;
    Ok(RunResult {
        measured,
        rx: ctl::collect_rx(&shared, sc.peers()),
        iters,
    })
}

/// The peer side: `compare __peer SCENARIO SYSTEM FD LEN INDEX TAG ITERS WARMUP WINDOW SOCK CPU`.
fn peer_main(args: &[String]) -> Res<()> {
    let [sc, sys, fd, len, index, tag, iters, warmup, window, sock, cpu] = args else {
        return Err(
            "usage: compare __peer SCENARIO SYSTEM FD LEN INDEX TAG ITERS WARMUP WINDOW SOCK CPU"
                .into(),
        );
    };
    let sc = Scenario::parse(sc).ok_or("unknown scenario")?;
    let sys = System::parse(sys).ok_or("unknown system")?;
    ctl::pin(cpu.parse()?)?;
    let shared = Shared::inherit(fd.parse()?, len.parse()?)?;
    let sock: i32 = sock.parse()?;
    let socks = if sock >= 0 {
        vec![uds::inherit(sock)?]
    } else {
        Vec::new()
    };
    let mut run = Run {
        shared: &shared,
        tag,
        iters: iters.parse()?,
        warmup: warmup.parse()?,
        window: window.parse()?,
        index: index.parse()?,
        peers: sc.peers(),
        bytes: sc.bulk_bytes(),
        socks,
    };
    dispatch(sc, sys, &mut run, false)?;
    Ok(())
}

/// Median and p99 (for rates: the 1st percentile) of one system in one scenario, and what its
/// receivers cost ([`RxCost`]) where they are metered.
#[derive(Debug, Clone, Copy)]
struct Summary {
    median: f64,
    p99: f64,
    rx: Option<RxCost>,
}

/// The receiving processes of one system in one scenario, over the measured messages of all
/// rounds: their voluntary context switches per message and receiver (a receiver that sleeps
/// for each message has about 1), and their CPU time (user + system, summed over the
/// receivers) per message.
#[derive(Debug, Clone, Copy)]
struct RxCost {
    sleeps_per_msg: f64,
    cpu_ns_per_msg: f64,
}

/// Sums what the receivers of each run reported.
#[derive(Debug, Default)]
struct RxTotals {
    cpu_ns: u64,
    sleeps: u64,
    /// Messages measured.
    msgs: u64,
    /// Messages measured times receivers: the receptions.
    receptions: u64,
    /// Runs that reported nothing.
    unmetered: u32,
}

impl RxTotals {
    fn add(&mut self, r: &RunResult) {
        match r.rx {
            Some(u) => {
                self.cpu_ns += u.cpu_ns;
                self.sleeps += u.sleeps;
                self.msgs += r.iters;
                self.receptions += r.iters * u.receivers;
            }
            None => self.unmetered += 1,
        }
    }

    fn cost(&self) -> Option<RxCost> {
        (self.unmetered == 0 && self.msgs > 0).then(|| RxCost {
            sleeps_per_msg: self.sleeps as f64 / self.receptions as f64,
            cpu_ns_per_msg: self.cpu_ns as f64 / self.msgs as f64,
        })
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Turns what the leader measured into samples in the scenario's unit.
fn samples(sc: Scenario, m: &Measured) -> Vec<f64> {
    let (_, _, window) = sc.sizes(false);
    match m {
        Measured::RoundTrips(rt) => {
            let scale = if sc.unit() == "us" { 2000.0 } else { 2.0 };
            rt.iter().map(|&t| t as f64 / scale).collect()
        }
        Measured::Latencies(l) => {
            let scale = if sc.unit() == "us" { 1000.0 } else { 1.0 };
            l.iter().map(|&t| t as f64 / scale).collect()
        }
        Measured::Values(v) => v.clone(),
        Measured::Windows(w) => w
            .windows(2)
            .map(|p| {
                let secs = p[1].saturating_sub(p[0]).max(1) as f64 / 1e9;
                match sc.unit() {
                    "GB/s" => (window as usize * sc.bulk_bytes()) as f64 / secs / 1e9,
                    _ => window as f64 / secs / 1e6,
                }
            })
            .collect(),
    }
}

fn summarize(sc: Scenario, mut v: Vec<f64>) -> Summary {
    v.sort_by(f64::total_cmp);
    Summary {
        median: percentile(&v, 0.5),
        p99: percentile(&v, if sc.lower_is_better() { 0.99 } else { 0.01 }),
        rx: None,
    }
}

fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn print_table(sc: Scenario, res: &BTreeMap<System, Summary>) {
    let better = if sc.lower_is_better() {
        "lower is better"
    } else {
        "higher is better"
    };
    println!("\n{} ({}, {better})", sc.name(), sc.unit());
    let [(head1, base1), (head2, base2)] = sc.ratio_columns();
    println!(
        "  {:<16} {:>10} {:>10} {:>11} {:>11} {:>11} {:>14}",
        "system", "median", "p99", head1, head2, "sleeps/msg", "rx CPU ns/msg"
    );
    let base = |b: Option<System>| b.and_then(|b| res.get(&b)).map(|s| s.median);
    let (first, second) = (base(base1), base(base2));
    for (sys, s) in res {
        let ratio = |base: Option<f64>| base.map_or("-".into(), |b| format!("{:.2}", s.median / b));
        let (sleeps, cpu) = s.rx.map_or((f64::NAN, f64::NAN), |r| {
            (r.sleeps_per_msg, r.cpu_ns_per_msg)
        });
        println!(
            "  {:<16} {:>10} {:>10} {:>11} {:>11} {:>11} {:>14}",
            sys.name(),
            fmt_num(s.median),
            fmt_num(s.p99),
            ratio(first),
            ratio(second),
            fmt_num(sleeps),
            fmt_num(cpu)
        );
    }
}

/// How much a system may beat the floor by before the run is refused: medians of a few rounds
/// on a shared machine move by this much between runs.
const NOISE: f64 = 0.10;

/// Why a scenario's figures cannot stand, if they cannot: a library beat the bare mechanism by
/// more than noise, so either the floor does work it need not do, or the library skips work
/// the floor does (a receiver not really asleep, a copy not made). The table is printed; the
/// JSON marks the scenario `refused` with the reason.
fn floor_beaten(sc: Scenario, res: &BTreeMap<System, Summary>) -> Option<String> {
    let [(_, base), _] = sc.ratio_columns();
    if base != Some(System::Floor) {
        return None; // no floor to beat (idle CPU), or a floor of another kind
    }
    let floor = res.get(&System::Floor)?.median;
    res.iter()
        // Rows of another mechanism than the floor's: a publish with nobody asleep, and a
        // single subscriber's `recv` beside a floor that sleeps on 16 words.
        .filter(|(sys, _)| **sys != System::Floor && **sys != System::ShmbusNoWaiter)
        .filter(|(sys, _)| {
            !(**sys == System::ShmbusRecv && matches!(sc, Scenario::WaitsetWake(k) if k > 1))
        })
        .find_map(|(sys, s)| {
            let beaten = if sc.lower_is_better() {
                s.median < floor * (1.0 - NOISE)
            } else {
                s.median > floor * (1.0 + NOISE)
            };
            beaten.then(|| {
                format!(
                    "{} beat the floor ({} against {} {}): the floor does more than the \
                     mechanism needs, or {} skips part of the work; these figures are not a \
                     measurement",
                    sys.name(),
                    fmt_num(s.median),
                    fmt_num(floor),
                    sc.unit(),
                    sys.name()
                )
            })
        })
}

/// A receiver of a wake-up scenario must sleep for (nearly) every message: one that sleeps for
/// fewer than this many per message was still awake (spinning) when messages came, and its
/// wake-up figure measures no wake-up.
const MIN_SLEEPS: f64 = 0.9;

/// Why a wake-up scenario's figures cannot stand, if they cannot: a system's receiver did not
/// sleep for each message (or was not metered).
fn not_asleep(sc: Scenario, res: &BTreeMap<System, Summary>) -> Option<String> {
    if !sc.receiver_sleeps() {
        return None;
    }
    let awake: Vec<String> = res
        .iter()
        .filter_map(|(sys, s)| match s.rx {
            Some(r) if r.sleeps_per_msg >= MIN_SLEEPS => None,
            Some(r) => Some(format!(
                "{} slept {:.2} times per message",
                sys.name(),
                r.sleeps_per_msg
            )),
            None => Some(format!("{}'s receiver was not metered", sys.name())),
        })
        .collect();
    (!awake.is_empty()).then(|| {
        format!(
            "{}: a receiver awake when the message came measures no wake-up (at least \
             {MIN_SLEEPS} sleeps per message expected)",
            awake.join(", ")
        )
    })
}

fn to_json(all: &[(Scenario, BTreeMap<System, Summary>, Option<String>)]) -> serde_json::Value {
    let scenarios: Vec<serde_json::Value> = all
        .iter()
        .map(|(sc, res, refused)| {
            let results: serde_json::Map<String, serde_json::Value> = res
                .iter()
                .map(|(sys, s)| {
                    (
                        sys.name().to_string(),
                        serde_json::json!({
                            "median": s.median,
                            "p99": s.p99,
                            "sleeps_per_msg": s.rx.map(|r| r.sleeps_per_msg),
                            "rx_cpu_ns_per_msg": s.rx.map(|r| r.cpu_ns_per_msg),
                        }),
                    )
                })
                .collect();
            serde_json::json!({
                "name": sc.name(),
                "unit": sc.unit(),
                "lower_is_better": sc.lower_is_better(),
                "results": results,
                "refused": refused,
            })
        })
        .collect();
    serde_json::json!({ "scenarios": scenarios })
}

fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("__peer") {
        return match peer_main(&argv[2..]) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("compare peer: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    let residue = ice::Residue::before();
    let result = leader_main(args);
    residue.remove();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn leader_main(args: Args) -> Res<()> {
    let scenarios: Vec<Scenario> = if args.only.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.only
            .iter()
            .map(|n| Scenario::parse(n).ok_or_else(|| format!("unknown scenario {n:?}")))
            .collect::<Result<_, _>>()?
    };
    let only_systems: Vec<System> = args
        .system
        .iter()
        .map(|n| System::parse(n).ok_or_else(|| format!("unknown system {n:?}")))
        .collect::<Result<_, _>>()?;
    let cpus = ctl::cpus();
    if cpus < 2 {
        return Err("needs at least 2 CPUs (leader and peers are pinned apart)".into());
    }
    ctl::pin(0)?;
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 10 });
    let started = Instant::now();
    println!(
        "shmbus compare: {} rounds per scenario{}; leader on CPU 0, peers on CPU 1 (CPU 0 for \
         wake_same_core; queue consumers round-robin from CPU 1)",
        rounds,
        if args.quick { " (quick)" } else { "" }
    );
    let mut all = Vec::new();
    for sc in scenarios {
        let systems: Vec<System> = sc
            .systems()
            .iter()
            .copied()
            .filter(|s| only_systems.is_empty() || only_systems.contains(s))
            .collect();
        if systems.is_empty() {
            continue;
        }
        let mut raw: BTreeMap<System, Vec<f64>> = BTreeMap::new();
        let mut rx: BTreeMap<System, RxTotals> = BTreeMap::new();
        for round in 0..rounds {
            // Rotate the order each round so that no system always runs first or last.
            for k in 0..systems.len() {
                let sys = systems[(k + round as usize) % systems.len()];
                let r = run_once(sc, sys, round, args.quick, cpus)
                    .map_err(|e| format!("{} / {}: {e}", sc.name(), sys.name()))?;
                raw.entry(sys).or_default().extend(samples(sc, &r.measured));
                rx.entry(sys).or_default().add(&r);
            }
            print!(".");
            std::io::stdout().flush()?;
        }
        let res: BTreeMap<System, Summary> = raw
            .into_iter()
            .map(|(sys, v)| {
                let rx = rx.get(&sys).and_then(RxTotals::cost);
                (
                    sys,
                    Summary {
                        rx,
                        ..summarize(sc, v)
                    },
                )
            })
            .collect();
        print_table(sc, &res);
        let reasons: Vec<String> = [floor_beaten(sc, &res), not_asleep(sc, &res)]
            .into_iter()
            .flatten()
            .collect();
        for why in &reasons {
            println!("  REFUSED: {why}");
        }
        let refused = (!reasons.is_empty()).then(|| reasons.join("; "));
        all.push((sc, res, refused));
    }
    println!("\ntotal time {:.0} s", started.elapsed().as_secs_f64());
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&to_json(&all))? + "\n")?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
