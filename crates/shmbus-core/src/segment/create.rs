//! Creating a segment: built with no name, then linked into place whole.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{self as rfs, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use super::{
    fork_registration, os, shm_path, CreateOptions, Header, HeaderSnapshot, Mapping, Segment,
    SegmentError,
};
use crate::name::Name;
use crate::wire::{state, Lifetime, FORMAT_VERSION, HEADER_SIZE, MAGIC};

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A temporary file name, removed when dropped.
struct TempName(PathBuf);

impl Drop for TempName {
    fn drop(&mut self) {
        let _ = rfs::unlink(&self.0);
    }
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

        // Every step that can run out of room (the inode, the reservation, the name) reports it
        // as `OutOfSpace` for this directory and this request, whichever step it was.
        let dir_name = dir.display().to_string();
        let fail = |op: &'static str| {
            let dir_name = &dir_name;
            move |e: Errno| match e {
                Errno::NOSPC | Errno::DQUOT => SegmentError::OutOfSpace {
                    name: name.clone(),
                    dir: dir_name.clone(),
                    requested: total as u64,
                },
                e => os(name, op)(e),
            }
        };
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
                    .map_err(fail("create"))?;
                    (fd, Some(TempName(temp)))
                }
                Err(e) => return Err(fail("create (O_TMPFILE)")(e)),
            };
        // The umask may have narrowed the mode; set exactly what was asked for.
        rfs::fchmod(&fd, Mode::from_raw_mode(opts.mode & 0o777)).map_err(os(name, "fchmod"))?;
        // Our shared lock, held before the file has a name, so that no prober ever finds it
        // unused.
        rfs::flock(&fd, FlockOperation::LockShared).map_err(os(name, "flock"))?;
        rfs::ftruncate(&fd, total as u64).map_err(fail("ftruncate"))?;
        // Reserve every page before any is touched: a full /dev/shm fails here, with an error,
        // instead of with SIGBUS at the first write to a page it cannot supply.
        match rfs::fallocate(&fd, rfs::FallocateFlags::empty(), 0, total as u64) {
            Ok(()) => {}
            // A file system without fallocate: go on unreserved (tmpfs supports it).
            Err(Errno::OPNOTSUPP) => {}
            Err(e) => return Err(fail("fallocate")(e)),
        }
        let map = Mapping::new(&fd, total, false).map_err(os(name, "mmap"))?;
        let snapshot = HeaderSnapshot {
            kind: opts.kind,
            lifetime: opts.lifetime,
            total_size: total as u64,
            payload_size: opts.payload_size,
            type_info: opts.type_info.clone(),
            creator_pid: std::process::id(),
            mode: opts.mode & 0o777,
            created_unix_ns: now_ns(),
            params: opts.params,
        };
        let _fork = fork_registration(&fd, &map, false);
        let mut seg = Segment {
            name: name.clone(),
            path,
            fd,
            map,
            snapshot,
            scoped: false, // until it has its name
            read_only: false,
            _fork,
        };
        {
            // SAFETY: the mapping is `total >= HEADER_SIZE` bytes, page-aligned (so aligned for
            // `Header`), zero-filled, and no other process can reach the temporary file yet, so
            // this exclusive reference aliases nothing.
            let h = unsafe { &mut *seg.map.ptr.as_ptr().cast::<Header>() };
            let s = &seg.snapshot;
            h.magic = MAGIC;
            h.format_version = FORMAT_VERSION;
            h.kind = s.kind as u32;
            h.lifetime = s.lifetime as u32;
            h.header_size = HEADER_SIZE as u64;
            h.total_size = s.total_size;
            h.payload_size = s.payload_size as u64;
            h.creator_pid = s.creator_pid;
            h.mode = s.mode;
            h.created_unix_ns = s.created_unix_ns;
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
            std::slice::from_raw_parts_mut(seg.map.ptr.as_ptr().add(HEADER_SIZE), opts.payload_size)
        };
        init(payload);
        seg.state_word().store(state::READY, Ordering::Release);
        let linked = match &temp {
            Some(TempName(t)) => rfs::link(t, &seg.path),
            None => {
                let proc_path = format!("/proc/self/fd/{}", seg.fd.as_raw_fd());
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
            // Not named: nobody else can know it, so it must not be "left" by name (`scoped` is
            // still false). Unmapping and closing frees it.
            return Err(fail("link")(e));
        }
        seg.scoped = opts.lifetime == Lifetime::Scoped;
        tracing::debug!(name = %name, kind = %opts.kind, bytes = total, "created segment");
        Ok(seg)
    }
}
