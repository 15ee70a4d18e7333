//! What a forked child inherits, and what it may still do with it.
//!
//! Liveness leases (open-file-description locks) and segment locks (`flock`) belong to open
//! file descriptions, which `fork` shares between parent and child. Left alone, a child would
//! silently share its parent's participant identity: a lease would outlive a killed parent
//! (tools would list a dead publisher as alive), and the two processes would act as one
//! publisher or subscriber. shmbus defines the semantics instead, in a `pthread_atfork` child
//! handler installed with the first segment:
//!
//! - **Leases** are the parent's alone. In the child, each lease descriptor is replaced by
//!   `/dev/null`, so the lock lives and dies with the parent.
//! - **Segments** stay mapped in the child, and the child becomes a user of its own: each segment
//!   descriptor is reopened (a new open file description, locked shared) and its mapping is
//!   remade in place from it (a mapping pins the description it came from, and with it the
//!   parent's lock), so the segment lives while either process does, the parent's lock dies
//!   with the parent, and the child leaving never releases the parent's lock.
//! - **Participant handles** (publishers, subscribers, their loans and samples, array pools) were
//!   made by the parent. Used in the child they fail with a `UsedAfterFork` error, and dropping
//!   them in the child touches no shared state: the child opens its own handles instead.
//!   Objects without a participant identity (named arrays, mutexes, semaphores, events) keep
//!   working in the child.
//!
//! [`generation`] counts the forks that led to this process; a handle remembers the generation
//! it was made in and compares it on use (one relaxed load of a process-global).

use std::cell::UnsafeCell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Once;

static GENERATION: AtomicU64 = AtomicU64::new(0);
static INSTALL: Once = Once::new();
/// A descriptor of `/dev/null`, kept open to stand in for leases in forked children.
static DEV_NULL: AtomicI32 = AtomicI32::new(-1);

/// How many forks lie between the process that started this program and this one (0 in the
/// original process, 1 in its child, ...).
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// A handle made in this process generation was used in a forked child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this handle was made before a fork and belongs to the parent process; open a new one in the child")]
pub struct UsedAfterFork;

/// The generation a handle was made in; [`Born::check`] tells whether it is used after a fork.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Born(u64);

impl Born {
    /// Now.
    pub fn now() -> Born {
        Born(generation())
    }

    /// `Err` when the process forked since (we are a child using the parent's handle).
    #[inline]
    pub fn check(self) -> Result<(), UsedAfterFork> {
        if self.0 == generation() {
            Ok(())
        } else {
            Err(UsedAfterFork)
        }
    }

    /// Whether this process is the one the handle was made in.
    #[inline]
    pub fn is_current(self) -> bool {
        self.check().is_ok()
    }
}

#[derive(Clone, Copy)]
enum What {
    Lease,
    Segment {
        read_only: bool,
        /// The mapping, which must be moved to the new open file description too: a mapping
        /// keeps a reference to the description it was made from, and with it the parent's
        /// `flock`.
        addr: usize,
        len: usize,
    },
}

#[derive(Clone, Copy)]
struct Entry {
    id: u64,
    fd: RawFd,
    what: What,
}

/// The descriptors the child handler fixes up, behind a spin lock that the `prepare` handler
/// takes so that no other thread is half-way through a change when the process forks.
struct Registry {
    lock: AtomicBool,
    next_id: UnsafeCell<u64>,
    entries: UnsafeCell<Vec<Entry>>,
}

// SAFETY: `next_id` and `entries` are only accessed while `lock` is held (see `with`).
unsafe impl Sync for Registry {}

static REGISTRY: Registry = Registry {
    lock: AtomicBool::new(false),
    next_id: UnsafeCell::new(0),
    entries: UnsafeCell::new(Vec::new()),
};

impl Registry {
    fn acquire(&self) {
        while self
            .lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
    }

    fn release(&self) {
        self.lock.store(false, Ordering::Release);
    }

    fn with<R>(&self, f: impl FnOnce(&mut u64, &mut Vec<Entry>) -> R) -> R {
        self.acquire();
        // SAFETY: the lock is held until `release`, so these are the only references.
        let r = unsafe { f(&mut *self.next_id.get(), &mut *self.entries.get()) };
        self.release();
        r
    }
}

/// Keeps a descriptor registered with the fork handler; deregisters on drop.
#[derive(Debug)]
pub struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        let id = self.0;
        REGISTRY.with(|_, entries| entries.retain(|e| e.id != id));
    }
}

fn register(fd: RawFd, what: What) -> Registration {
    INSTALL.call_once(install);
    REGISTRY.with(|next, entries| {
        *next += 1;
        entries.push(Entry {
            id: *next,
            fd,
            what,
        });
        Registration(*next)
    })
}

/// Registers a segment descriptor and its mapping: a forked child reopens, locks and maps it
/// as its own.
pub(crate) fn register_segment(
    fd: RawFd,
    read_only: bool,
    addr: *mut u8,
    len: usize,
) -> Registration {
    register(
        fd,
        What::Segment {
            read_only,
            addr: addr as usize,
            len,
        },
    )
}

/// Registers a lease descriptor: in a forked child it becomes `/dev/null`.
pub(crate) fn register_lease(fd: RawFd) -> Registration {
    register(fd, What::Lease)
}

fn install() {
    // SAFETY: plain open(2) of a constant, NUL-terminated path.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    DEV_NULL.store(fd, Ordering::Relaxed);
    // SAFETY: the three handlers are `extern "C"` functions with no arguments that live for the
    // whole program; registering them has no other precondition.
    let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    if rc != 0 {
        tracing::warn!(
            rc,
            "pthread_atfork failed: forked children will share their parent's leases"
        );
    }
}

extern "C" fn prepare() {
    REGISTRY.acquire();
}

extern "C" fn parent() {
    REGISTRY.release();
}

/// Runs in the child right after `fork`, before `fork` returns there. Only async-signal-safe
/// calls: open, flock, dup3, close; no allocation.
extern "C" fn child() {
    // SAFETY: the `prepare` handler took the lock in the parent, and only this thread exists in
    // the child, so nothing else accesses the registry until we release it.
    let entries = unsafe { &*REGISTRY.entries.get() };
    let null = DEV_NULL.load(Ordering::Relaxed);
    for e in entries.iter() {
        match e.what {
            What::Lease => {
                if null >= 0 {
                    // SAFETY: dup3 onto a descriptor number this process owns (the lease's);
                    // it drops the child's reference to the parent's open file description.
                    unsafe { libc::dup3(null, e.fd, libc::O_CLOEXEC) };
                }
            }
            What::Segment {
                read_only,
                addr,
                len,
            } => reopen_locked(e.fd, read_only, addr, len),
        }
    }
    GENERATION.fetch_add(1, Ordering::Relaxed);
    REGISTRY.release();
}

/// Replaces `fd` by a new open file description of the same file, holding a shared `flock`,
/// and maps `[addr, addr + len)` anew from it (the same pages: same file, same offset).
fn reopen_locked(fd: RawFd, read_only: bool, addr: usize, len: usize) {
    let mut path = [0u8; 32];
    let prefix = b"/proc/self/fd/";
    path[..prefix.len()].copy_from_slice(prefix);
    let mut n = prefix.len();
    let mut digits = [0u8; 12];
    let mut d = 0;
    let mut v = u32::try_from(fd).unwrap_or(0);
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while d > 0 {
        d -= 1;
        path[n] = digits[d];
        n += 1;
    }
    // path[n] is already 0: the terminator.
    let flags = if read_only {
        libc::O_RDONLY
    } else {
        libc::O_RDWR
    } | libc::O_CLOEXEC;
    let prot = if read_only {
        libc::PROT_READ
    } else {
        libc::PROT_READ | libc::PROT_WRITE
    };
    // SAFETY: `path` is NUL-terminated; the calls below only touch descriptors this process
    // owns (`fd` and the new one) and the segment's own mapping, which `MAP_FIXED` replaces by a
    // mapping of the same file at the same offset and protection: every byte keeps its address
    // and its contents (the same shared pages), so references into it stay valid.
    unsafe {
        let new = libc::open(path.as_ptr().cast(), flags);
        if new < 0 {
            return;
        }
        libc::flock(new, libc::LOCK_SH);
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            prot,
            libc::MAP_SHARED | libc::MAP_FIXED,
            new,
            0,
        );
        libc::dup3(new, fd, libc::O_CLOEXEC);
        libc::close(new);
    }
}
