//! What the processes of one run share besides the systems under test: a memfd mapping (for
//! start barriers, acknowledgements and the bare floors), CPU pinning, and spin waits that give up.
//!
//! The mapping is an anonymous `memfd` inherited across `exec` (no name in `/dev/shm`, so
//! nothing can leak), laid out as:
//!
//! - 192 control lines of 128 bytes each (one word per line: no false sharing);
//! - from [`DATA_OFFSET`], the floors' data: a ring of 64-byte slots, bulk blocks, or the
//!   work-queue floor's rings and blocks.

use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

use crate::Res;

/// Bytes per control line.
const LINE: usize = 128;
/// Number of control lines.
pub(crate) const LINES: usize = 192;
/// Where the floors' data starts (page-aligned).
pub(crate) const DATA_OFFSET: usize = 1 << 20;

/// Control lines (indices into the mapping).
pub(crate) mod line {
    /// Peers add 1 once they are ready.
    pub(crate) const READY: usize = 0;
    /// The leader sets 1 once its ports exist (peers open theirs after).
    pub(crate) const LEADER: usize = 1;
    /// Floor ping / pong words.
    pub(crate) const PING: usize = 2;
    /// See [`PING`].
    pub(crate) const PONG: usize = 3;
    /// Producer position of a floor ring.
    pub(crate) const HEAD: usize = 6;
    /// Consumer position of a floor ring.
    pub(crate) const TAIL: usize = 7;
    /// Fan-out: subscriber `k` acknowledges message `i` at `ACK + k` (up to
    /// [`MAX_PEERS`] of them).
    pub(crate) const ACK: usize = 64;
    /// Fan-out: subscriber `k` stores its receive time at `RECV_NS + k`.
    pub(crate) const RECV_NS: usize = ACK + MAX_PEERS;
    /// Most peers that acknowledge through [`ACK`] and [`RECV_NS`] (the fan-out scenarios
    /// go up to 16 subscribers).
    pub(crate) const MAX_PEERS: usize = 16;
    /// Fan-out floor: the published sequence number.
    pub(crate) const FAN_SEQ: usize = 24;
    /// iceoryx2: the consumer has connected to the producer's publisher.
    pub(crate) const CONNECTED: usize = 26;
    /// iceoryx2: the consumer has read everything (the producer may drop its publisher).
    pub(crate) const DONE: usize = 27;
    /// Work queues: items taken, summed over the consumers as each one finishes.
    pub(crate) const CONSUMED: usize = 28;
    /// Work queues: consumers that have finished.
    pub(crate) const FINISHED: usize = 29;
    /// Work-queue floor: enqueue position of the ring of items (or of full blocks).
    pub(crate) const Q_ENQ: usize = 30;
    /// Work-queue floor: dequeue position of that ring.
    pub(crate) const Q_DEQ: usize = 31;
    /// Work-queue floor, 4 MiB: enqueue position of the ring of free blocks.
    pub(crate) const FREE_ENQ: usize = 32;
    /// Work-queue floor, 4 MiB: dequeue position of the ring of free blocks.
    pub(crate) const FREE_DEQ: usize = 33;
    /// Work-queue floor: the events its waiters sleep on, two lines each (futex word, sleeper
    /// count): items pushed to and cells freed in the ring of items, the same for the ring of
    /// free blocks.
    pub(crate) const Q_EVENTS: usize = 34;
    /// Waiting on many topics, floor: the send time of the message (the futex words are in the
    /// data area, [`Shared::data_word32`](super::Shared::data_word32)).
    pub(crate) const STAMP: usize = 42;
    /// Idle waiting: the waiter's CPU time (ns) while it waited.
    pub(crate) const CPU_NS: usize = 43;
    /// Idle waiting: the wall time (ns) it waited.
    pub(crate) const WALL_NS: usize = 44;
    /// The receivers' CPU time (ns, user + system) over the measured messages, one line per
    /// process: the leader's at `RX_CPU_NS`, peer `k`'s at `RX_CPU_NS + k` ([`RxMeter`]).
    ///
    /// [`RxMeter`]: super::RxMeter
    /// (the leader and up to [`MAX_PEERS`] peers).
    pub(crate) const RX_CPU_NS: usize = RECV_NS + MAX_PEERS;
    /// The receivers' voluntary context switches over the measured messages, as above.
    pub(crate) const RX_SLEEPS: usize = RX_CPU_NS + MAX_PEERS + 1;
    /// How many processes reported to `RX_CPU_NS` and `RX_SLEEPS`.
    pub(crate) const RX_REPORTS: usize = RX_SLEEPS + MAX_PEERS + 1;
}

/// A shared mapping that child processes inherit.
#[derive(Debug)]
pub(crate) struct Shared {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is only accessed through atomics and raw pointers whose use the scenarios
// coordinate; it is shared with other processes anyway.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    /// A fresh zero-filled mapping of `DATA_OFFSET + data` bytes, inheritable by children.
    pub(crate) fn create(data: usize) -> Res<Shared> {
        // No CLOEXEC: the peer processes find it at the same descriptor number.
        let fd = memfd_create("shmbus-compare", MemfdFlags::empty())?;
        let len = DATA_OFFSET + data;
        ftruncate(&fd, len as u64)?;
        Self::map(fd, len)
    }

    /// Maps the inherited descriptor `fd` of a mapping `len` bytes long.
    pub(crate) fn inherit(fd: i32, len: usize) -> Res<Shared> {
        // Refuse descriptors that are not open, rather than adopting a random one.
        rustix::io::fcntl_getfd(
            // SAFETY: only used for the duration of this call, while `fd` is open or not.
            unsafe { rustix::fd::BorrowedFd::borrow_raw(fd) },
        )?;
        // SAFETY: the parent passed the number of a memfd it left open across exec; this
        // process owns its copy of that descriptor and nothing else uses it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> Res<Shared> {
        // SAFETY: a fresh shared mapping of a memfd of `len` bytes; no existing memory is
        // replaced (null hint without MAP_FIXED).
        let p = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        let ptr = NonNull::new(p.cast::<u8>()).ok_or("mmap returned null")?;
        Ok(Shared { ptr, len, fd })
    }

    /// The descriptor number children inherit.
    pub(crate) fn fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Length of the mapping.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The 64-bit word of control line `i`.
    pub(crate) fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < LINES);
        // SAFETY: line `i` lies within the first LINES × LINE bytes of the mapping, is 128-byte
        // aligned (the mapping is page-aligned), and lives as long as `self`.
        unsafe { &*self.ptr.as_ptr().add(i * LINE).cast::<AtomicU64>() }
    }

    /// The 32-bit word at the start of control line `i` (futex words).
    pub(crate) fn word32(&self, i: usize) -> &AtomicU32 {
        assert!(i < LINES);
        // SAFETY: as for `word`; 4-byte alignment holds a fortiori.
        unsafe { &*self.ptr.as_ptr().add(i * LINE).cast::<AtomicU32>() }
    }

    /// The 32-bit word at the start of line `i` of the data area (one futex word per
    /// [`LINE`] bytes, as topics have theirs in separate mappings): the floors of waiting on
    /// many topics.
    pub(crate) fn data_word32(&self, i: usize) -> &AtomicU32 {
        assert!(DATA_OFFSET + (i + 1) * LINE <= self.len);
        // SAFETY: in bounds (checked), 128-byte aligned (the data area is page-aligned), and
        // lives as long as `self`; every bit pattern is a valid `AtomicU32`.
        unsafe {
            &*self
                .ptr
                .as_ptr()
                .add(DATA_OFFSET + i * LINE)
                .cast::<AtomicU32>()
        }
    }

    /// `len` bytes of the data area from `offset`, as 64-bit words.
    ///
    /// Callers coordinate who writes which words (as the protocols under test do); the words
    /// are atomics so that concurrent access is never undefined behaviour.
    pub(crate) fn data_words(&self, offset: usize, len: usize) -> &[AtomicU64] {
        assert!(offset % 8 == 0 && len % 8 == 0);
        assert!(DATA_OFFSET + offset + len <= self.len);
        // SAFETY: the range lies within the mapping (checked), is 8-byte aligned (the data area
        // is page-aligned and `offset` a multiple of 8), and lives as long as `self`; every bit
        // pattern is a valid `AtomicU64`.
        unsafe {
            std::slice::from_raw_parts(
                self.ptr
                    .as_ptr()
                    .add(DATA_OFFSET + offset)
                    .cast::<AtomicU64>(),
                len / 8,
            )
        }
    }

    /// `len` bytes of the data area from `offset` as plain words, for bulk data that a
    /// hand-off protocol (Release/Acquire on control words) gives to one process at a time:
    /// plain slices let the compiler vectorise the copy loops, as it does for the systems
    /// under test.
    ///
    /// # Safety
    ///
    /// While the returned slice lives, no other process or thread accesses those bytes (the
    /// caller's protocol hands the block over with Release/Acquire before and after).
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn block_mut(&self, offset: usize, len: usize) -> &mut [u64] {
        assert!(offset % 8 == 0 && len % 8 == 0);
        assert!(DATA_OFFSET + offset + len <= self.len);
        // SAFETY: in bounds and 8-byte aligned (checked; the data area is page-aligned); the
        // caller guarantees exclusive access for the slice's life.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.ptr.as_ptr().add(DATA_OFFSET + offset).cast::<u64>(),
                len / 8,
            )
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; every reference into it borrows `self`.
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Pins the calling process to `cpu`.
pub(crate) fn pin(cpu: usize) -> Res<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set)?;
    Ok(())
}

/// How many CPUs this process may run on.
pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// How long any wait for a peer lasts before the run is declared broken.
pub(crate) const PEER_TIMEOUT: Duration = Duration::from_secs(20);

/// Spins until `done` returns true, calling `idle` between polls; fails after
/// [`PEER_TIMEOUT`] (a dead peer must not hang the harness).
pub(crate) fn spin_until(mut done: impl FnMut() -> bool, mut idle: impl FnMut()) -> Res<()> {
    let start = Instant::now();
    let mut n = 0u32;
    while !done() {
        idle();
        n = n.wrapping_add(1);
        if n % 1024 == 0 && start.elapsed() > PEER_TIMEOUT {
            return Err("timed out waiting for a peer process".into());
        }
    }
    Ok(())
}

/// Marks this peer ready.
pub(crate) fn announce_ready(shared: &Shared) {
    shared.word(line::READY).fetch_add(1, Ordering::Release);
}

/// Raises the one-shot flag on control line `l`.
pub(crate) fn signal(shared: &Shared, l: usize) {
    shared.word(l).store(1, Ordering::Release);
}

/// Waits until the flag on control line `l` is raised ([`signal`]).
pub(crate) fn wait_signal(shared: &Shared, l: usize) -> Res<()> {
    spin_until(
        || shared.word(l).load(Ordering::Acquire) == 1,
        || std::thread::sleep(Duration::from_micros(50)),
    )
}

/// Tells the peers that the leader's ports exist.
pub(crate) fn leader_ready(shared: &Shared) {
    signal(shared, line::LEADER);
}

/// Waits for [`leader_ready`].
pub(crate) fn wait_leader(shared: &Shared) -> Res<()> {
    wait_signal(shared, line::LEADER)
}

/// Waits until `n` peers announced themselves.
pub(crate) fn wait_ready(shared: &Shared, n: u64) -> Res<()> {
    spin_until(
        || shared.word(line::READY).load(Ordering::Acquire) >= n,
        || std::thread::sleep(Duration::from_micros(50)),
    )
}

/// `CLOCK_MONOTONIC` in nanoseconds: comparable across processes.
pub(crate) fn now_ns() -> u64 {
    shmbus::monotonic_ns()
}

/// How long the sender of `wake_cross_core` and `wake_same_core` waits before each message, so
/// that the receiver has certainly gone to sleep: far longer than any receiver spins before it
/// sleeps (shmbus: 16 pauses and 16 `sched_yield`s, a few µs), as [`WAITSET_GAP`]. The
/// receivers' voluntary context switches check it ([`RxMeter`]).
const SETTLE: Duration = WAITSET_GAP;

/// Waits [`SETTLE`] without sleeping (the sender's own wake-up must not be measured), yielding
/// the CPU between clock reads: a receiver sharing the CPU (`wake_same_core`) runs through its
/// spin and falls asleep meanwhile, instead of waiting behind a busy sender and finding the
/// next message still awake.
pub(crate) fn settle() {
    let until = Instant::now() + SETTLE;
    while Instant::now() < until {
        std::thread::yield_now();
    }
}

/// How long a sender of the scenarios that wait on many topics leaves between messages: far
/// longer than any receiver spins before it sleeps (tens of spins), so that every message
/// finds it asleep. Busy-waited, as [`settle`].
pub(crate) const WAITSET_GAP: Duration = Duration::from_micros(200);

/// Busy-waits `d`.
pub(crate) fn busy_wait(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// CPU time (user + system, all threads) this process has used, in ns: `CLOCK_PROCESS_CPUTIME_ID`,
/// the sum `getrusage(RUSAGE_SELF)` gives, at a finer grain.
pub(crate) fn process_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// What the kernel counts for this process (all its threads, `getrusage(RUSAGE_SELF)`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    /// User + system CPU time, ns (the kernel keeps µs here).
    pub(crate) cpu_ns: u64,
    /// Voluntary context switches: the times a thread blocked (slept), not preemptions and
    /// not `sched_yield`s (a yielding thread stays runnable).
    pub(crate) sleeps: u64,
}

impl Usage {
    pub(crate) fn now() -> Usage {
        let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: `ru` is valid for writes of one `rusage`, which is all `getrusage` writes;
        // RUSAGE_SELF is a valid `who`.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
        assert_eq!(rc, 0, "getrusage(RUSAGE_SELF) cannot fail");
        // SAFETY: zero is a valid `rusage` (integers only) and `getrusage` filled it in.
        let ru = unsafe { ru.assume_init() };
        let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
        Usage {
            cpu_ns: ns(ru.ru_utime) + ns(ru.ru_stime),
            sleeps: ru.ru_nvcsw as u64,
        }
    }
}

/// A receiving process's meter over the measured messages: started before the first measured
/// message is received, reported to the leader after the last ([`collect_rx`]).
#[derive(Debug, Default)]
pub(crate) struct RxMeter(Option<Usage>);

impl RxMeter {
    /// Starts the meter before message `i` if `i` is `first`, the first measured message.
    pub(crate) fn start_at(&mut self, i: u64, first: u64) {
        if i == first {
            self.0 = Some(Usage::now());
        }
    }

    /// After the last message: stores this process's CPU time and sleeps since the start in
    /// its lines (`index` 0 is the leader, 1.. the peers).
    pub(crate) fn report(&self, shared: &Shared, index: usize) -> crate::Res<()> {
        report_rx(shared, index, self.so_far()?);
        Ok(())
    }

    /// What this process used since the meter started.
    pub(crate) fn so_far(&self) -> crate::Res<Usage> {
        let start = self.0.ok_or("the receiver's meter never started")?;
        let end = Usage::now();
        Ok(Usage {
            cpu_ns: end.cpu_ns - start.cpu_ns,
            sleeps: end.sleeps - start.sleeps,
        })
    }
}

/// Stores what receiving process `index` used over the measured messages ([`RxMeter`]).
pub(crate) fn report_rx(shared: &Shared, index: usize, used: Usage) {
    assert!(index < line::RX_SLEEPS - line::RX_CPU_NS);
    shared
        .word(line::RX_CPU_NS + index)
        .store(used.cpu_ns, Ordering::Relaxed);
    shared
        .word(line::RX_SLEEPS + index)
        .store(used.sleeps, Ordering::Relaxed);
    shared
        .word(line::RX_REPORTS)
        .fetch_add(1, Ordering::Release);
}

/// What the receiving processes of a run reported ([`RxMeter`]), summed.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RxUsage {
    /// CPU time, ns.
    pub(crate) cpu_ns: u64,
    /// Voluntary context switches.
    pub(crate) sleeps: u64,
    /// Receiving processes that reported.
    pub(crate) receivers: u64,
}

/// The leader, after every peer of the run has exited: what the receivers reported, if any
/// did (scenarios whose receivers are not metered report nothing).
pub(crate) fn collect_rx(shared: &Shared, peers: usize) -> Option<RxUsage> {
    let receivers = shared.word(line::RX_REPORTS).load(Ordering::Acquire);
    (receivers > 0).then(|| {
        let sum = |l: usize| {
            (0..=peers)
                .map(|k| shared.word(l + k).load(Ordering::Relaxed))
                .sum()
        };
        RxUsage {
            cpu_ns: sum(line::RX_CPU_NS),
            sleeps: sum(line::RX_SLEEPS),
            receivers,
        }
    })
}

/// An idle waiter's report: it used `cpu_ns` of CPU time in `wall_ns` of waiting.
pub(crate) fn report_idle(shared: &Shared, cpu_ns: u64, wall_ns: u64) {
    shared.word(line::CPU_NS).store(cpu_ns, Ordering::Relaxed);
    shared.word(line::WALL_NS).store(wall_ns, Ordering::Relaxed);
    signal(shared, line::DONE);
}

/// The leader's side of an idle wait: waits (sleeping, 1 ms at a time: the leader's own
/// wake-ups are on another CPU and not counted) for [`report_idle`]; returns the waiter's CPU
/// time per second of waiting, in µs.
pub(crate) fn collect_idle(shared: &Shared) -> Res<f64> {
    spin_until(
        || shared.word(line::DONE).load(Ordering::Acquire) == 1,
        || std::thread::sleep(Duration::from_millis(1)),
    )?;
    let cpu = shared.word(line::CPU_NS).load(Ordering::Relaxed) as f64;
    let wall = shared.word(line::WALL_NS).load(Ordering::Relaxed).max(1) as f64;
    Ok(cpu / 1e3 / (wall / 1e9))
}

/// A work-queue consumer's last word: it took `count` items and is done.
pub(crate) fn finish_consumer(shared: &Shared, count: u64) {
    shared
        .word(line::CONSUMED)
        .fetch_add(count, Ordering::Relaxed);
    shared.word(line::FINISHED).fetch_add(1, Ordering::Release);
}

/// Waits until `n` work-queue consumers finished ([`finish_consumer`]), polling (the leader's
/// last window ends here, so a sleep would lengthen it); returns the items they took in all.
pub(crate) fn wait_consumers(shared: &Shared, n: u64) -> Res<u64> {
    spin_until(
        || shared.word(line::FINISHED).load(Ordering::Acquire) >= n,
        std::thread::yield_now,
    )?;
    Ok(shared.word(line::CONSUMED).load(Ordering::Relaxed))
}
