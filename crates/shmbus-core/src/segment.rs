//! Named shared-memory segments: create, open, unlink, list; the header; the lifecycle.
//!
//! This is the only module that creates, maps, locks or removes shared-memory files.
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
//!
//! An opener that races with a leaver may map a segment the leaver has just marked closed; it
//! sees the mark and retries from the start.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{self as rfs, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use rustix::mm::{self, MapFlags, ProtFlags};

use crate::layout::{Codec, TypeInfo};
use crate::name::{Name, FILE_PREFIX};
use crate::time::Deadline;

/// Where segments live: the tmpfs behind POSIX shared memory.
pub const SHM_DIR: &str = "/dev/shm";

/// `b"SHMBUS\0\x01"`: the first eight bytes of every segment.
pub const MAGIC: [u8; 8] = *b"SHMBUS\0\x01";

/// Version of the on-shm format described in `docs/architecture.md`. Bumped on any change of
/// any layout; a segment of another version is refused with [`SegmentError::Version`].
pub const FORMAT_VERSION: u32 = 2;

/// Bytes reserved for the header; the payload starts here (page-aligned).
pub const HEADER_SIZE: usize = 4096;

/// How long [`Segment::open`] waits by default for a segment that is not ready yet.
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_millis(500);

/// What kind of object a segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Kind {
    /// A pub/sub topic.
    Topic = 1,
    /// A robust mutex guarding a value.
    Mutex = 2,
    /// A counting semaphore.
    Semaphore = 3,
    /// An event (auto- or manual-reset).
    Event = 4,
    /// A named N-d array.
    Array = 5,
    /// A block pool for large messages.
    Pool = 6,
    /// A work queue.
    Queue = 7,
    /// A shared value.
    Value = 8,
}

impl Kind {
    /// The kind stored as `raw`, if known.
    pub fn from_raw(raw: u32) -> Option<Kind> {
        Some(match raw {
            1 => Kind::Topic,
            2 => Kind::Mutex,
            3 => Kind::Semaphore,
            4 => Kind::Event,
            5 => Kind::Array,
            6 => Kind::Pool,
            7 => Kind::Queue,
            8 => Kind::Value,
            _ => return None,
        })
    }

    /// The lowercase name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Topic => "topic",
            Kind::Mutex => "mutex",
            Kind::Semaphore => "semaphore",
            Kind::Event => "event",
            Kind::Array => "array",
            Kind::Pool => "pool",
            Kind::Queue => "queue",
            Kind::Value => "value",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long a segment lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u32)]
pub enum Lifetime {
    /// Removed when the last process using it leaves or dies.
    #[default]
    Scoped = 0,
    /// Kept until [`unlink`], whoever uses it.
    Persistent = 1,
}

/// Header `state` values.
mod state {
    /// Zero-filled: not initialised (never seen under a final name for segments we create).
    pub(super) const INIT: u32 = 0;
    /// Initialised and usable.
    pub(super) const READY: u32 = 1;
    /// The last user left and is removing the name; openers retry.
    pub(super) const CLOSED: u32 = 2;
}

/// The header at offset 0 of every segment.
///
/// Everything except `state` and the counters is written once by the creator before the
/// segment gets its name, and only read afterwards. Every field read from a segment is checked
/// by [`Segment::open`] before use.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// INIT (0), READY (1) or CLOSED (2). Written READY with `Release` by the creator, `CLOSED`
    /// by the last user out while it holds the exclusive `flock`.
    pub state: AtomicU32,
    /// [`FORMAT_VERSION`] of the creator.
    pub format_version: u32,
    /// [`Kind`] as `u32`.
    pub kind: u32,
    /// [`Lifetime`] as `u32`.
    pub lifetime: u32,
    /// Offset of the payload: [`HEADER_SIZE`].
    pub header_size: u64,
    /// Length of the file.
    pub total_size: u64,
    /// Length of the payload.
    pub payload_size: u64,
    /// Process id of the creator (for display only).
    pub creator_pid: u32,
    /// Permission bits given at creation.
    pub mode: u32,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_unix_ns: u64,
    /// The stored type's size.
    pub type_size: u64,
    /// The stored type's alignment.
    pub type_align: u64,
    /// The stored type's fingerprint ([`TypeInfo::fingerprint`]).
    pub type_fingerprint: u64,
    /// [`Codec`] as `u32`.
    pub type_codec: u32,
    /// Bytes used in `type_name`.
    pub type_name_len: u32,
    /// The stored type's name, UTF-8, not terminated.
    pub type_name: [u8; TypeInfo::MAX_NAME],
    /// Kind-specific figures that tools may show without knowing the payload layout
    /// (for a topic: capacity, slot size, ...). Written once by the creator.
    pub params: [u64; 8],
    /// Kind-specific counters (for a topic: published, ...), updated with `Relaxed` stores.
    pub counters: [AtomicU64; 8],
}

const _: () = assert!(size_of::<Header>() <= HEADER_SIZE);
const _: () = assert!(HEADER_SIZE % 4096 == 0);

impl Header {
    /// The stored type, if the header's type fields are well formed.
    pub fn type_info(&self) -> Option<TypeInfo> {
        let len = usize::try_from(self.type_name_len).ok()?;
        let name = std::str::from_utf8(self.type_name.get(..len)?).ok()?;
        let codec = Codec::from_raw(self.type_codec)?;
        // The fingerprint is taken as recorded: a type's layout fingerprint is mixed into it
        // (`TypeInfo::with_layout`) and not stored, so it cannot be recomputed here.
        TypeInfo::with_fingerprint(
            name,
            self.type_size,
            self.type_align,
            codec,
            self.type_fingerprint,
        )
    }

    /// The segment's kind, if known.
    pub fn kind(&self) -> Option<Kind> {
        Kind::from_raw(self.kind)
    }

    /// The segment's lifetime, if known.
    pub fn lifetime(&self) -> Option<Lifetime> {
        match self.lifetime {
            0 => Some(Lifetime::Scoped),
            1 => Some(Lifetime::Persistent),
            _ => None,
        }
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
    /// The segment's header is still not ready after the wait.
    #[error("{0:?} was not initialised in time (its creator may have died, or it is not ours)")]
    NotReady(Name),
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
    /// How long to wait for a segment that is not ready.
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
    name: Name,
    path: PathBuf,
    fd: OwnedFd,
    map: NonNull<u8>,
    len: usize,
    lifetime: Lifetime,
    read_only: bool,
}

// SAFETY: `Segment` owns its mapping and descriptor; the mapping is shared memory whose contents
// are only accessed through atomics or through protocols that synchronise access, so moving or
// sharing the handle between threads is sound.
unsafe impl Send for Segment {}
// SAFETY: as above; `&Segment` gives out only `&Header` (atomics, read-only fields) and raw
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

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Segment {
    /// Creates the segment `name`; fails with [`SegmentError::AlreadyExists`] if it exists.
    ///
    /// `init` receives the zero-filled payload to lay out before anyone else can open it.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus_core::layout::{Codec, TypeInfo};
    /// use shmbus_core::name::Name;
    /// use shmbus_core::segment::{CreateOptions, Expect, Kind, Segment, SegmentError};
    ///
    /// let name = Name::new(&format!("doc-segment-{}", std::process::id())).unwrap();
    /// let ty = TypeInfo::new("u64", 8, 8, Codec::Pod).unwrap();
    /// let seg = Segment::create(&name, &CreateOptions::new(Kind::Value, ty.clone(), 8), |p| {
    ///     p[..8].copy_from_slice(&42u64.to_le_bytes());
    /// })?;
    /// let other = Segment::open(&name, &Expect::new(Kind::Value, ty))?;
    /// assert_eq!(other.payload_len(), 8);
    /// drop(seg);
    /// drop(other); // the last user out removes the name
    /// assert!(matches!(Segment::open(&name, &Expect::new(Kind::Value,
    ///     TypeInfo::new("u64", 8, 8, Codec::Pod).unwrap())), Err(SegmentError::NotFound(_))));
    /// # Ok::<(), SegmentError>(())
    /// ```
    pub fn create(
        name: &Name,
        opts: &CreateOptions,
        init: impl FnOnce(&mut [u8]),
    ) -> Result<Segment, SegmentError> {
        Self::create_at(name, shm_path(name), opts, init)
    }

    /// Creates a segment backed by the regular file `path` (outside the shared-memory
    /// directory), for data that must outlive a reboot. Same atomic creation as
    /// [`Segment::create`]; such a segment is always [`Lifetime::Persistent`]. Call
    /// [`Segment::flush`] to write it to disk.
    pub fn create_file(
        path: &Path,
        opts: &CreateOptions,
        init: impl FnOnce(&mut [u8]),
    ) -> Result<Segment, SegmentError> {
        let opts = CreateOptions {
            lifetime: Lifetime::Persistent,
            ..opts.clone()
        };
        Self::create_at(&Name::label_for_path(path), path.to_owned(), &opts, init)
    }

    /// Opens a segment backed by the regular file `path` (see [`Segment::create_file`]).
    pub fn open_file(path: &Path, expect: &Expect) -> Result<Segment, SegmentError> {
        let name = Name::label_for_path(path);
        let deadline = Deadline::after(Some(expect.timeout));
        loop {
            if let Some(seg) = Self::try_open(&name, path.to_owned(), expect, &deadline)? {
                return Ok(seg);
            }
        }
    }

    fn create_at(
        name: &Name,
        path: PathBuf,
        opts: &CreateOptions,
        init: impl FnOnce(&mut [u8]),
    ) -> Result<Segment, SegmentError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let bad = |reason: &str| SegmentError::InvalidSize {
            name: name.clone(),
            reason: reason.to_owned(),
        };
        let total = HEADER_SIZE
            .checked_add(opts.payload_size)
            .and_then(|t| t.checked_next_multiple_of(4096))
            .filter(|&t| t <= isize::MAX as usize)
            .ok_or_else(|| bad("payload too large for this machine"))?;

        // A file with no name yet: nobody can open it, and it vanishes if we die. A file system
        // without O_TMPFILE gets a hidden temporary name instead, removed once linked.
        let mode = Mode::from_raw_mode(opts.mode & 0o777);
        let (fd, temp) =
            match rfs::open(&dir, OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC, mode) {
                Ok(fd) => (fd, None),
                Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {
                    let temp = dir.join(format!(
                        ".{}.tmp-{}-{}",
                        path.file_name().map_or("x".into(), |f| f.to_string_lossy()),
                        std::process::id(),
                        now_ns()
                    ));
                    let fd = rfs::open(
                        &temp,
                        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                        mode,
                    )
                    .map_err(os(name, "create"))?;
                    (fd, Some(TempName(temp)))
                }
                Err(e) => return Err(os(name, "create (O_TMPFILE)")(e)),
            };
        // The umask may have narrowed the mode; set exactly what was asked for.
        rfs::fchmod(&fd, Mode::from_raw_mode(opts.mode & 0o777)).map_err(os(name, "fchmod"))?;
        // Our shared lock, held before the file has a name, so that no prober ever finds it
        // unused.
        rfs::flock(&fd, FlockOperation::LockShared).map_err(os(name, "flock"))?;
        rfs::ftruncate(&fd, total as u64).map_err(os(name, "ftruncate"))?;
        match rfs::fallocate(&fd, rfs::FallocateFlags::empty(), 0, total as u64) {
            Ok(()) => {}
            Err(Errno::NOSPC) => {
                return Err(SegmentError::OutOfSpace {
                    name: name.clone(),
                    dir: dir.display().to_string(),
                    requested: total as u64,
                })
            }
            // A file system without fallocate: go on unreserved (tmpfs supports it).
            Err(Errno::OPNOTSUPP) => {}
            Err(e) => return Err(os(name, "fallocate")(e)),
        }
        let map = map_fd(&fd, total, false).map_err(os(name, "mmap"))?;
        let mut seg = Segment {
            name: name.clone(),
            path,
            fd,
            map,
            len: total,
            lifetime: opts.lifetime,
            read_only: false,
        };
        {
            // SAFETY: the mapping is `total >= HEADER_SIZE` bytes, page-aligned (so aligned for
            // `Header`), zero-filled, and no other process can reach the temporary file yet, so
            // this exclusive reference aliases nothing.
            let h = unsafe { &mut *seg.map.as_ptr().cast::<Header>() };
            h.magic = MAGIC;
            h.format_version = FORMAT_VERSION;
            h.kind = opts.kind as u32;
            h.lifetime = opts.lifetime as u32;
            h.header_size = HEADER_SIZE as u64;
            h.total_size = total as u64;
            h.payload_size = opts.payload_size as u64;
            h.creator_pid = std::process::id();
            h.mode = opts.mode & 0o777;
            h.created_unix_ns = now_ns();
            let t = &opts.type_info;
            h.type_size = t.size;
            h.type_align = t.align;
            h.type_fingerprint = t.fingerprint;
            h.type_codec = t.codec as u32;
            h.type_name_len = t.name.len() as u32;
            h.type_name[..t.name.len()].copy_from_slice(t.name.as_bytes());
            h.params = opts.params;
        }
        // SAFETY: as above, the payload `[HEADER_SIZE, HEADER_SIZE + payload_size)` lies inside
        // the mapping and nobody else can see it yet.
        let payload = unsafe {
            std::slice::from_raw_parts_mut(seg.map.as_ptr().add(HEADER_SIZE), opts.payload_size)
        };
        init(payload);
        seg.header().state.store(state::READY, Ordering::Release);
        let linked = match &temp {
            Some(TempName(t)) => rfs::link(t, &seg.path),
            None => {
                let proc_path =
                    format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&seg.fd));
                rfs::linkat(
                    rfs::CWD,
                    proc_path.as_str(),
                    rfs::CWD,
                    &seg.path,
                    rfs::AtFlags::SYMLINK_FOLLOW,
                )
            }
        };
        drop(temp);
        if let Err(e) = linked {
            // Not named: nobody else can know it, so it must not be "left" by name. Unmapping
            // and closing frees it.
            seg.lifetime = Lifetime::Persistent;
            return Err(os(name, "link")(e));
        }
        tracing::debug!(name = %name, kind = %opts.kind, bytes = total, "created segment");
        Ok(seg)
    }

    /// Opens the existing segment `name` and checks it against `expect`.
    ///
    /// A stale scoped segment (every user died) is reclaimed and reported as
    /// [`SegmentError::NotFound`].
    pub fn open(name: &Name, expect: &Expect) -> Result<Segment, SegmentError> {
        let deadline = Deadline::after(Some(expect.timeout));
        loop {
            match Self::try_open(name, shm_path(name), expect, &deadline)? {
                Some(seg) => return Ok(seg),
                // Raced with a leaver or reclaimed a stale one: look again.
                None => continue,
            }
        }
    }

    /// Opens `name` if it exists, otherwise creates it with `opts` and `init`.
    pub fn open_or_create(
        name: &Name,
        expect: &Expect,
        opts: &CreateOptions,
        init: impl Fn(&mut [u8]),
    ) -> Result<(Segment, bool), SegmentError> {
        for _ in 0..64 {
            match Self::open(name, expect) {
                Ok(s) => return Ok((s, false)),
                Err(SegmentError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            match Self::create(name, opts, &init) {
                Ok(s) => return Ok((s, true)),
                Err(SegmentError::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Err(SegmentError::Os {
            name: name.clone(),
            op: "open_or_create",
            source: io::Error::other("the name kept appearing and disappearing"),
        })
    }

    /// One attempt; `Ok(None)` means "retry".
    fn try_open(
        name: &Name,
        path: PathBuf,
        expect: &Expect,
        deadline: &Deadline,
    ) -> Result<Option<Segment>, SegmentError> {
        let flags = if expect.read_only {
            OFlags::RDONLY
        } else {
            OFlags::RDWR
        };
        let fd = rfs::open(
            &path,
            flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(os(name, "open"))?;
        let corrupt = |reason: String| SegmentError::Corrupt {
            name: name.clone(),
            reason,
        };
        let st = rfs::fstat(&fd).map_err(os(name, "fstat"))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(corrupt("not a regular file".into()));
        }
        let len = usize::try_from(st.st_size).map_err(|_| corrupt("negative size".into()))?;
        if len < HEADER_SIZE {
            return Err(corrupt(format!(
                "{len} bytes, shorter than the {HEADER_SIZE}-byte header"
            )));
        }

        // Probe: an exclusive lock granted means nobody uses the segment.
        let alone = match rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => true,
            Err(Errno::WOULDBLOCK) => false,
            Err(e) => return Err(os(name, "flock")(e)),
        };
        let map = map_fd(&fd, len, expect.read_only).map_err(os(name, "mmap"))?;
        let mut seg = Segment {
            name: name.clone(),
            path,
            fd,
            map,
            len,
            lifetime: Lifetime::Persistent, // never unlink on an early return
            read_only: expect.read_only,
        };
        let h = seg.header();
        if h.magic != MAGIC {
            return Err(corrupt("bad magic: not a shmbus segment".into()));
        }
        if h.format_version != FORMAT_VERSION {
            return Err(SegmentError::Version {
                name: name.clone(),
                expected: FORMAT_VERSION,
                found: h.format_version,
            });
        }
        let lifetime = h
            .lifetime()
            .ok_or_else(|| corrupt(format!("unknown lifetime {}", h.lifetime)))?;

        if alone {
            let st = h.state.load(Ordering::Acquire);
            if lifetime == Lifetime::Persistent && st == state::READY {
                rfs::flock(&seg.fd, FlockOperation::LockShared).map_err(os(name, "flock"))?;
            } else if st == state::CLOSED || lifetime == Lifetime::Scoped {
                if !expect.read_only {
                    h.state.store(state::CLOSED, Ordering::Release);
                }
                seg.unlink_if_same();
                tracing::info!(name = %name, "reclaimed a stale segment: every user had died");
                return Ok(None);
            } else {
                // A persistent segment that is not ready (a foreign tool's file): wait, boundedly,
                // holding a shared lock like any user.
                rfs::flock(&seg.fd, FlockOperation::LockShared).map_err(os(name, "flock"))?;
            }
        } else {
            // Someone uses it. Take our shared lock; exclusive holders (leavers, gc, probes) hold
            // theirs only for a moment.
            loop {
                match rfs::flock(&seg.fd, FlockOperation::NonBlockingLockShared) {
                    Ok(()) => break,
                    Err(Errno::WOULDBLOCK) if !deadline.expired() => {
                        std::thread::sleep(Duration::from_micros(200))
                    }
                    Err(Errno::WOULDBLOCK) => return Err(SegmentError::NotReady(name.clone())),
                    Err(e) => return Err(os(name, "flock")(e)),
                }
            }
        }

        // Wait (bounded) for a header that is not ready yet.
        loop {
            match seg.header().state.load(Ordering::Acquire) {
                state::READY => break,
                state::CLOSED => return Ok(None),
                state::INIT if !deadline.expired() => std::thread::sleep(Duration::from_millis(1)),
                state::INIT => return Err(SegmentError::NotReady(name.clone())),
                s => return Err(corrupt(format!("unknown state {s}"))),
            }
        }
        let h = seg.header();
        if h.header_size != HEADER_SIZE as u64 {
            return Err(corrupt(format!(
                "header size {} (expected {HEADER_SIZE})",
                h.header_size
            )));
        }
        if h.total_size != len as u64 {
            return Err(corrupt(format!(
                "header says {} bytes, the file has {len}",
                h.total_size
            )));
        }
        if h.payload_size > (len - HEADER_SIZE) as u64 {
            return Err(corrupt(format!(
                "payload of {} bytes does not fit in {len}",
                h.payload_size
            )));
        }
        let found_kind = h
            .kind()
            .ok_or_else(|| corrupt(format!("unknown kind {}", h.kind)))?;
        if found_kind != expect.kind {
            return Err(SegmentError::WrongKind {
                name: name.clone(),
                expected: expect.kind,
                found: found_kind,
            });
        }
        let found_type = h
            .type_info()
            .ok_or_else(|| corrupt("malformed type description".into()))?;
        if let Some(t) = &expect.type_info {
            if !t.matches(&found_type) {
                return Err(SegmentError::WrongType {
                    name: name.clone(),
                    expected: Box::new(t.clone()),
                    found: Box::new(found_type),
                });
            }
        }
        seg.lifetime = lifetime;
        tracing::debug!(name = %name, kind = %found_kind, "attached segment");
        Ok(Some(seg))
    }

    /// The segment's name.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// The header.
    pub fn header(&self) -> &Header {
        // SAFETY: the mapping is at least HEADER_SIZE bytes and page-aligned, `Header` is
        // `repr(C)` with only integers, arrays and atomics (every bit pattern valid), and
        // non-atomic fields are never written after the segment is named.
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    /// Start of the payload (page-aligned).
    pub fn payload_ptr(&self) -> NonNull<u8> {
        // SAFETY: HEADER_SIZE < len, so the result stays inside the mapping and is non-null.
        unsafe { NonNull::new_unchecked(self.map.as_ptr().add(HEADER_SIZE)) }
    }

    /// Length of the payload, as checked against the file size at open.
    pub fn payload_len(&self) -> usize {
        // Checked at open/create to fit in the mapping.
        self.header().payload_size as usize
    }

    /// Whether this mapping is read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The segment's lifetime.
    pub fn lifetime(&self) -> Lifetime {
        self.lifetime
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
        unsafe { mm::msync(self.map.as_ptr().cast(), self.len, mm::MsyncFlags::SYNC) }
            .map_err(os(&self.name, "msync"))?;
        rfs::fsync(&self.fd).map_err(os(&self.name, "fsync"))
    }

    /// Locks the segment's pages in RAM (`mlock`) so they are never swapped out; fails with
    /// [`SegmentError::Os`] when `RLIMIT_MEMLOCK` is too low. Unmapping unlocks.
    pub fn lock_memory(&self) -> Result<(), SegmentError> {
        // SAFETY: the range is this handle's own live mapping; mlock changes no contents.
        unsafe { mm::mlock(self.map.as_ptr().cast(), self.len) }.map_err(|e| SegmentError::Os {
            name: self.name.clone(),
            op: "mlock (is RLIMIT_MEMLOCK, `ulimit -l`, large enough?)",
            source: e.into(),
        })
    }

    /// Undoes [`Segment::lock_memory`].
    pub fn unlock_memory(&self) -> Result<(), SegmentError> {
        // SAFETY: as in `lock_memory`.
        unsafe { mm::munlock(self.map.as_ptr().cast(), self.len) }
            .map_err(os(&self.name, "munlock"))
    }

    /// The file behind the segment.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the name if it still names this very file (not a successor of the same name).
    fn unlink_if_same(&self) {
        if same_file(&self.fd, &self.path) {
            let _ = rfs::unlink(&self.path);
            tracing::debug!(name = %self.name, "removed segment name");
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.lifetime == Lifetime::Scoped {
            let _ = rfs::flock(&self.fd, FlockOperation::Unlock);
            if rfs::flock(&self.fd, FlockOperation::NonBlockingLockExclusive).is_ok() {
                // Last user out. Mark it closed first so an opener that got in just before our
                // unlink retries instead of using a segment without a name.
                if !self.read_only {
                    self.header().state.store(state::CLOSED, Ordering::Release);
                }
                self.unlink_if_same();
            }
        }
        // SAFETY: `map`/`len` describe a mapping this handle created and still owns; every
        // reference into it borrows `self`, so none outlives this point.
        let _ = unsafe { mm::munmap(self.map.as_ptr().cast(), self.len) };
    }
}

/// Whether `path` still names the file open as `fd` (not a successor of the same name).
fn same_file(fd: &OwnedFd, path: &Path) -> bool {
    match (rfs::fstat(fd), rfs::stat(path)) {
        (Ok(ours), Ok(named)) => ours.st_ino == named.st_ino && ours.st_dev == named.st_dev,
        _ => false,
    }
}

fn map_fd(fd: &OwnedFd, len: usize, read_only: bool) -> Result<NonNull<u8>, Errno> {
    let prot = if read_only {
        ProtFlags::READ
    } else {
        ProtFlags::READ | ProtFlags::WRITE
    };
    // SAFETY: a fresh shared mapping of `len` bytes of a file we hold open, at an address the
    // kernel picks, aliases no Rust object. The file is at least `len` bytes long (checked by
    // fstat or set by ftruncate), and its space is reserved, so accesses inside do not fault.
    let p = unsafe { mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0)? };
    NonNull::new(p.cast()).ok_or(Errno::NOMEM)
}

/// A temporary file name, removed when dropped.
struct TempName(PathBuf);

impl Drop for TempName {
    fn drop(&mut self) {
        let _ = rfs::unlink(&self.0);
    }
}

/// Removes the name `name`. Processes that have it mapped keep using it; the memory is freed
/// when the last of them unmaps it.
pub fn unlink(name: &Name) -> Result<(), SegmentError> {
    rfs::unlink(shm_path(name)).map_err(os(name, "unlink"))
}

/// Whether the segment `name` exists.
pub fn exists(name: &Name) -> bool {
    shm_path(name).exists()
}

/// The names of every shmbus segment, sorted.
pub fn list() -> io::Result<Vec<Name>> {
    let mut names: Vec<Name> = std::fs::read_dir(SHM_DIR)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(Name::from_file_name))
        .collect();
    names.sort();
    Ok(names)
}

/// What [`peek`] tells of a segment without joining it.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    /// The name.
    pub name: Name,
    /// The kind.
    pub kind: Kind,
    /// The stored type.
    pub type_info: TypeInfo,
    /// The lifetime.
    pub lifetime: Lifetime,
    /// File length in bytes.
    pub total_size: u64,
    /// Creator's process id.
    pub creator_pid: u32,
    /// Creation time, nanoseconds since the Unix epoch (0 if unknown).
    pub created_unix_ns: u64,
    /// Permission bits the creator asked for.
    pub mode: u32,
    /// Payload bytes laid out by the creator.
    pub payload_size: u64,
    /// Whether some process uses the segment (holds its lock).
    pub in_use: bool,
    /// Kind-specific figures.
    pub params: [u64; 8],
    /// Kind-specific counters at the time of the peek.
    pub counters: [u64; 8],
}

/// Reads a segment's header without joining it (used by tools).
pub fn peek(name: &Name) -> Result<SegmentInfo, SegmentError> {
    let path = shm_path(name);
    let fd = rfs::open(
        &path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(os(name, "open"))?;
    let in_use = match rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {
            let _ = rfs::flock(&fd, FlockOperation::Unlock);
            false
        }
        Err(_) => true,
    };
    let corrupt = |r: &str| SegmentError::Corrupt {
        name: name.clone(),
        reason: r.into(),
    };
    with_header(&fd, true, |h| {
        if h.magic != MAGIC {
            return Err(corrupt("bad magic: not a shmbus segment"));
        }
        if h.format_version != FORMAT_VERSION {
            return Err(SegmentError::Version {
                name: name.clone(),
                expected: FORMAT_VERSION,
                found: h.format_version,
            });
        }
        Ok(SegmentInfo {
            name: name.clone(),
            kind: h.kind().ok_or_else(|| corrupt("unknown kind"))?,
            type_info: h
                .type_info()
                .ok_or_else(|| corrupt("malformed type description"))?,
            lifetime: h.lifetime().ok_or_else(|| corrupt("unknown lifetime"))?,
            total_size: h.total_size,
            creator_pid: h.creator_pid,
            created_unix_ns: h.created_unix_ns,
            mode: h.mode,
            payload_size: h.payload_size,
            in_use,
            params: h.params,
            counters: std::array::from_fn(|i| h.counters[i].load(Ordering::Relaxed)),
        })
    })
    .unwrap_or_else(|| Err(corrupt("shorter than the header")))
}

/// Removes every scoped segment that no living process uses. Persistent segments, and files
/// under our prefix that are not shmbus segments of this format version, are kept. Returns the
/// file names removed.
pub fn gc() -> io::Result<Vec<String>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(SHM_DIR)? {
        let Ok(entry) = entry else { continue };
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        if !file.starts_with(FILE_PREFIX) {
            continue;
        }
        let path = entry.path();
        let Ok(fd) = rfs::open(
            &path,
            OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        ) else {
            continue;
        };
        if rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_err() {
            continue; // in use
        }
        // A file under our prefix that is not ours (bad magic, other version) is left alone.
        if header_says_scoped(&fd) {
            mark_closed(&fd);
            if same_file(&fd, &path) && rfs::unlink(&path).is_ok() {
                tracing::info!(file, "gc removed a segment no living process uses");
                removed.push(file.to_owned());
            }
        }
    }
    Ok(removed)
}

fn with_header<R>(fd: &OwnedFd, read_only: bool, f: impl FnOnce(&Header) -> R) -> Option<R> {
    let len = rfs::fstat(fd).ok()?.st_size;
    if len < HEADER_SIZE as i64 {
        return None;
    }
    let map = map_fd(fd, HEADER_SIZE, read_only).ok()?;
    // SAFETY: a fresh mapping of HEADER_SIZE bytes, page-aligned; every bit pattern is a valid
    // `Header`.
    let r = f(unsafe { &*map.as_ptr().cast::<Header>() });
    // SAFETY: unmapping the mapping made above; the reference does not escape `f`.
    let _ = unsafe { mm::munmap(map.as_ptr().cast(), HEADER_SIZE) };
    Some(r)
}

fn header_says_scoped(fd: &OwnedFd) -> bool {
    with_header(fd, true, |h| {
        h.magic == MAGIC
            && h.format_version == FORMAT_VERSION
            && h.lifetime != Lifetime::Persistent as u32
    })
    .unwrap_or(false)
}

fn mark_closed(fd: &OwnedFd) {
    with_header(fd, false, |h| {
        if h.magic == MAGIC {
            h.state.store(state::CLOSED, Ordering::Release);
        }
    });
}

/// The path of the file behind `name` (for tests and tools that inspect files directly).
pub fn shm_path(name: &Name) -> PathBuf {
    PathBuf::from(SHM_DIR).join(name.file_name())
}
