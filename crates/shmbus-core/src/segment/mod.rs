//! Named shared-memory segments: create, open, unlink, list; the header; the lifecycle.
//!
//! This is the only module that creates, maps, locks or removes shared-memory files. It is
//! split by role: [`header`] (layout and the validated snapshot), `create` (atomic creation),
//! `open` (attaching, with every retry bounded by the opener's deadline) and `admin` (listing,
//! peeking, `gc`).
//!
//! # Files
//!
//! A segment named `n` is the file `shmbus.n` in [`SHM_DIR`] (tmpfs), the file that
//! `shm_open("/shmbus.n")` would name. It starts with a [`Header`] of [`HEADER_SIZE`] bytes,
//! followed by the payload that the segment's kind lays out (a topic ring, a mutex, ...).
//!
//! # Creation is atomic
//!
//! The creator builds the segment as a file with no name (`O_TMPFILE`): it sizes it, reserves its
//! memory with `fallocate` (a full `/dev/shm` fails here with [`SegmentError::OutOfSpace`], never
//! later with `SIGBUS`), writes the header and the payload, marks the header ready, and only then
//! gives it its name with `linkat(2)`, which fails if the name exists. So an opener never sees a
//! half-built segment of ours, and a creator that dies half-way leaves nothing behind. An opener
//! still checks: a header that is not ready (a foreign tool's file) is waited for, boundedly,
//! then reported.
//!
//! # Validated once
//!
//! An opener copies the header once, validates the copy and keeps it ([`HeaderSnapshot`]); sizes
//! and types come from the copy from then on, whatever another process writes into the header.
//!
//! # Lifecycle
//!
//! Every process that maps a segment holds a shared `flock` on its own descriptor. The kernel
//! drops it when the process dies, however it dies. So:
//!
//! - **Leaving**: drop the shared lock and try an exclusive one without blocking. Granted means
//!   no one else uses the segment: a [`Lifetime::Scoped`] segment is marked closed and unlinked.
//!   The last user out removes it; it is never unlinked while another process uses it.
//! - **Stale**: a scoped segment on which an exclusive lock is granted at open time has no
//!   living user (they were all killed). The opener reclaims it and reports it as not found, so
//!   `open_or_create` starts afresh; [`gc`] does the same for every segment.
//! - **Persistent** segments outlive every process until [`unlink`]; stale cleanup never
//!   removes them.
//! - **Fork**: a forked child gets a lock of its own on every segment it inherited (see
//!   [`crate::fork`]), so it is a user in its own right: the segment lives on while the child
//!   does, whatever happens to the parent.
//!
//! An opener that races with a leaver may map a segment the leaver has just marked closed; it
//! sees the mark and retries, until its deadline.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rustix::fs::{self as rfs, FlockOperation};
use rustix::io::Errno;
use rustix::mm::{self, MapFlags, ProtFlags};

use crate::fork;
use crate::layout::TypeInfo;
use crate::name::Name;
use crate::wire::state;

mod admin;
mod create;
pub mod header;
mod open;

pub use crate::wire::{Kind, Lifetime, FORMAT_VERSION, HEADER_SIZE, MAGIC, SHM_DIR};
#[cfg(feature = "fuzzing")]
pub(crate) use admin::info_from;
pub use admin::{
    exists, gc, gc_report, gc_report_prefix, list, peek, shm_path, unlink, GcReport, SegmentInfo,
    Unreadable,
};
pub use header::{Header, HeaderSnapshot};

/// How long [`Segment::open`] waits by default for a segment that is not ready yet.
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_millis(500);

/// Why an open made no progress until its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stuck {
    /// The header stayed in its INIT state (its creator died, or it is not ours).
    NotInitialised,
    /// The header says CLOSED while the name still names it and processes use it: a leaver
    /// would have removed the name, so another process wrote the state word.
    ClosedWhileInUse,
    /// A stale segment (every user died) could not be removed: its name belongs to another user
    /// in a sticky directory, or the directory is read-only.
    StaleNotRemovable,
    /// A process kept an exclusive lock on the segment.
    LockedExclusively,
    /// The name kept being removed and created again under the opener.
    Replaced,
}

impl Stuck {
    fn describe(self) -> &'static str {
        match self {
            Stuck::NotInitialised => {
                "its header was never marked ready (its creator died, or it is not a shmbus file)"
            }
            Stuck::ClosedWhileInUse => {
                "its header says closed while processes still use it (a process wrote the state \
                 word); remove it with `shmbus rm --force` once its users are gone"
            }
            Stuck::StaleNotRemovable => {
                "it is stale (every user died) but cannot be removed by this user; its owner or \
                 root can remove it with `shmbus gc`"
            }
            Stuck::LockedExclusively => "a process kept an exclusive lock on it",
            Stuck::Replaced => "its name kept being removed and created again",
        }
    }
}

impl fmt::Display for Stuck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Why a segment could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// No segment has this name.
    #[error("no shmbus object named {0:?}")]
    NotFound(Name),
    /// A segment of this name exists already.
    #[error("a shmbus object named {0:?} exists already")]
    AlreadyExists(Name),
    /// The shared-memory directory cannot hold the segment.
    #[error("not enough space in {dir} for {name:?}: {requested} bytes asked for (is /dev/shm too small? Docker gives 64 MiB by default)")]
    OutOfSpace {
        /// The segment's name.
        name: Name,
        /// The directory.
        dir: String,
        /// Bytes asked for.
        requested: u64,
    },
    /// The operating system refused access.
    #[error("permission denied for {0:?} (segments are private to their owner unless created with a wider mode)")]
    PermissionDenied(Name),
    /// The file is not a shmbus segment, or is damaged.
    #[error("{name:?} is not a valid shmbus segment: {reason}")]
    Corrupt {
        /// The segment's name.
        name: Name,
        /// What is wrong with it.
        reason: String,
    },
    /// The segment was written by another on-shm format version.
    #[error("{name:?} has format version {found}; this build reads version {expected}")]
    Version {
        /// The segment's name.
        name: Name,
        /// The version this build reads.
        expected: u32,
        /// The version found.
        found: u32,
    },
    /// The segment holds another kind of object.
    #[error("{name:?} is a {found}, not a {expected}")]
    WrongKind {
        /// The segment's name.
        name: Name,
        /// The kind asked for.
        expected: Kind,
        /// The kind found.
        found: Kind,
    },
    /// The segment stores another type.
    #[error("{name:?} stores {found}, not {expected}")]
    WrongType {
        /// The segment's name.
        name: Name,
        /// The type asked for.
        expected: Box<TypeInfo>,
        /// The type found.
        found: Box<TypeInfo>,
    },
    /// The open could not make progress before its deadline.
    #[error("{name:?} could not be opened in time: {reason}")]
    Stuck {
        /// The segment's name.
        name: Name,
        /// What kept it from opening.
        reason: Stuck,
    },
    /// A size did not fit (too large for this machine, or zero).
    #[error("invalid size for {name:?}: {reason}")]
    InvalidSize {
        /// The segment's name.
        name: Name,
        /// Which size and why.
        reason: String,
    },
    /// Another operating-system error.
    #[error("{op} on {name:?} failed: {source}")]
    Os {
        /// The segment's name.
        name: Name,
        /// The operation that failed.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// What to create.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// The kind of object.
    pub kind: Kind,
    /// The type stored.
    pub type_info: TypeInfo,
    /// Payload bytes after the header.
    pub payload_size: usize,
    /// Permission bits of the file; `0o600` (owner only) unless widened on purpose.
    pub mode: u32,
    /// How long it lives.
    pub lifetime: Lifetime,
    /// Kind-specific figures for the header's `params`.
    pub params: [u64; 8],
}

impl CreateOptions {
    /// Options for a private (`0o600`), scoped segment.
    pub fn new(kind: Kind, type_info: TypeInfo, payload_size: usize) -> Self {
        CreateOptions {
            kind,
            type_info,
            payload_size,
            mode: 0o600,
            lifetime: Lifetime::Scoped,
            params: [0; 8],
        }
    }
}

/// What an opener expects to find.
#[derive(Debug, Clone)]
pub struct Expect {
    /// The kind of object.
    pub kind: Kind,
    /// The stored type, or `None` to accept any (tools that inspect).
    pub type_info: Option<TypeInfo>,
    /// Map read-only.
    pub read_only: bool,
    /// How long the whole open may take, retries included.
    pub timeout: Duration,
}

impl Expect {
    /// Expect `kind` storing `type_info`, read-write, with the default timeout.
    pub fn new(kind: Kind, type_info: TypeInfo) -> Self {
        Expect {
            kind,
            type_info: Some(type_info),
            read_only: false,
            timeout: DEFAULT_OPEN_TIMEOUT,
        }
    }
}

/// A mapped, named segment that this process uses.
///
/// Dropping it unmaps it and, if it was the last user of a scoped segment, removes the name.
#[derive(Debug)]
pub struct Segment {
    // Declared first so that it is dropped first: the fork handler must never see the
    // descriptor number after it was closed (and perhaps reused).
    _fork: fork::Registration,
    name: Name,
    path: PathBuf,
    fd: OwnedFd,
    map: Mapping,
    snapshot: HeaderSnapshot,
    /// Whether dropping this handle may remove the name (false until the segment is fully
    /// validated, so an early return never unlinks anything).
    scoped: bool,
    read_only: bool,
}

// SAFETY: `Segment` owns its mapping and descriptor; the mapping is shared memory whose contents
// are only accessed through atomics or through protocols that synchronise access, so moving or
// sharing the handle between threads is sound.
unsafe impl Send for Segment {}
// SAFETY: as above; `&Segment` gives out only the snapshot (a private copy), atomics, and raw
// payload pointers whose use is the caller's (protocol's) responsibility.
unsafe impl Sync for Segment {}

fn os<'a>(name: &'a Name, op: &'static str) -> impl FnOnce(Errno) -> SegmentError + 'a {
    move |e| match e {
        Errno::NOENT => SegmentError::NotFound(name.clone()),
        Errno::EXIST => SegmentError::AlreadyExists(name.clone()),
        Errno::ACCESS | Errno::PERM => SegmentError::PermissionDenied(name.clone()),
        Errno::NOSPC => SegmentError::OutOfSpace {
            name: name.clone(),
            dir: SHM_DIR.to_owned(),
            requested: 0,
        },
        e => SegmentError::Os {
            name: name.clone(),
            op,
            source: e.into(),
        },
    }
}

impl Segment {
    /// The segment's name.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// The header as validated when this handle was made. Never re-read: another process
    /// writing the header does not change it.
    pub fn snapshot(&self) -> &HeaderSnapshot {
        &self.snapshot
    }

    /// The header's `state` word (see [`crate::wire::state`]).
    pub(crate) fn state_word(&self) -> &AtomicU32 {
        // SAFETY: the mapping holds the whole header and lives as long as `self`.
        unsafe { header::state_word(self.map.ptr) }
    }

    /// The header's kind-specific counters.
    pub fn counters(&self) -> &[AtomicU64; 8] {
        // SAFETY: the mapping holds the whole header and lives as long as `self`.
        unsafe { header::counters(self.map.ptr) }
    }

    /// Start of the payload (page-aligned).
    pub fn payload_ptr(&self) -> NonNull<u8> {
        // SAFETY: HEADER_SIZE < len, so the result stays inside the mapping and is non-null.
        unsafe { NonNull::new_unchecked(self.map.ptr.as_ptr().add(HEADER_SIZE)) }
    }

    /// Length of the payload, from the validated snapshot (it fits in the mapping).
    pub fn payload_len(&self) -> usize {
        self.snapshot.payload_size
    }

    /// Whether this mapping is read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The segment's lifetime.
    pub fn lifetime(&self) -> Lifetime {
        self.snapshot.lifetime
    }

    /// The segment file's descriptor (for [`crate::liveness`] leases).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Writes the mapping back to its file and waits for the write (`msync(MS_SYNC)`); for
    /// file-backed segments ([`Segment::create_file`]), whose data must reach the disk.
    pub fn flush(&self) -> Result<(), SegmentError> {
        // SAFETY: `map`/`len` describe this handle's own live mapping; msync reads no Rust
        // object and changes no memory.
        unsafe {
            mm::msync(
                self.map.ptr.as_ptr().cast(),
                self.map.len,
                mm::MsyncFlags::SYNC,
            )
        }
        .map_err(os(&self.name, "msync"))?;
        rfs::fsync(&self.fd).map_err(os(&self.name, "fsync"))
    }

    /// Locks the segment's pages in RAM (`mlock`) so they are never swapped out; fails with
    /// [`SegmentError::Os`] when `RLIMIT_MEMLOCK` is too low. Unmapping unlocks.
    pub fn lock_memory(&self) -> Result<(), SegmentError> {
        // SAFETY: the range is this handle's own live mapping; mlock changes no contents.
        unsafe { mm::mlock(self.map.ptr.as_ptr().cast(), self.map.len) }.map_err(|e| {
            SegmentError::Os {
                name: self.name.clone(),
                op: "mlock (is RLIMIT_MEMLOCK, `ulimit -l`, large enough?)",
                source: e.into(),
            }
        })
    }

    /// Undoes [`Segment::lock_memory`].
    pub fn unlock_memory(&self) -> Result<(), SegmentError> {
        // SAFETY: as in `lock_memory`.
        unsafe { mm::munlock(self.map.ptr.as_ptr().cast(), self.map.len) }
            .map_err(os(&self.name, "munlock"))
    }

    /// The file behind the segment.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Removes `path` if it still names the file open as `fd` (not a successor of the same name).
/// `Ok(false)`: the name names another file (or none) now.
fn unlink_if_same(fd: &OwnedFd, path: &Path) -> Result<bool, Errno> {
    if !same_file(fd, path) {
        return Ok(false);
    }
    match rfs::unlink(path) {
        Ok(()) | Err(Errno::NOENT) => {
            tracing::debug!(path = %path.display(), "removed segment name");
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.scoped {
            let _ = rfs::flock(&self.fd, FlockOperation::Unlock);
            if rfs::flock(&self.fd, FlockOperation::NonBlockingLockExclusive).is_ok() {
                // Last user out. Mark it closed first so an opener that got in just before our
                // unlink retries instead of using a segment without a name.
                if !self.read_only {
                    self.state_word().store(state::CLOSED, Ordering::Release);
                }
                let _ = unlink_if_same(&self.fd, &self.path);
            }
        }
        // The mapping is unmapped when `map` drops, right after this.
    }
}

/// A shared mapping of a segment file, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: &OwnedFd, len: usize, read_only: bool) -> Result<Mapping, Errno> {
        let prot = if read_only {
            ProtFlags::READ
        } else {
            ProtFlags::READ | ProtFlags::WRITE
        };
        // SAFETY: a fresh shared mapping of `len` bytes of a file we hold open, at an address the
        // kernel picks, aliases no Rust object. The file is at least `len` bytes long (checked by
        // fstat or set by ftruncate), and its space is reserved, so accesses inside do not fault
        // (unless another process truncates the file: see the trust model in
        // docs/architecture.md).
        let p = unsafe { mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0)? };
        let ptr = NonNull::new(p.cast()).ok_or(Errno::NOMEM)?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping this value created and still owns; every
        // reference into it borrows the `Segment` that owns this value, so none outlives it.
        let _ = unsafe { mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Whether `path` still names the file open as `fd` (not a successor of the same name).
fn same_file(fd: &OwnedFd, path: &Path) -> bool {
    match (rfs::fstat(fd), rfs::stat(path)) {
        (Ok(ours), Ok(named)) => ours.st_ino == named.st_ino && ours.st_dev == named.st_dev,
        _ => false,
    }
}

/// Registers `fd` and `map` with the fork handler (a forked child re-locks and re-maps the
/// segment as its own user).
fn fork_registration(fd: &OwnedFd, map: &Mapping, read_only: bool) -> fork::Registration {
    fork::register_segment(fd.as_raw_fd(), read_only, map.ptr.as_ptr(), map.len)
}
