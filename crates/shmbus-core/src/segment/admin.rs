//! Looking at segments from outside: list, peek, unlink, and `gc`.
//!
//! Nothing here joins a segment. A header is read as one copy and validated like an opener's.

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use rustix::fs::{self as rfs, FlockOperation, Mode, OFlags};

use super::{os, same_file, Header, Mapping, SegmentError};
use crate::layout::TypeInfo;
use crate::name::Name;
use crate::wire::{state, Kind, Lifetime, FILE_PREFIX, HEADER_SIZE, MAGIC, SHM_DIR};

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
    let in_use = in_use(&fd);
    let h = read_header(&fd).ok_or_else(|| SegmentError::Corrupt {
        name: name.clone(),
        reason: "shorter than the header".into(),
    })?;
    info_from(name, &h, in_use)
}

/// What [`peek`] reports of the header copy `h`: validated as an opener validates it, without
/// a file length to compare with (the file may be resized; openers compare).
pub(crate) fn info_from(
    name: &Name,
    h: &Header,
    in_use: bool,
) -> Result<SegmentInfo, SegmentError> {
    let s = h.validate(name, None)?;
    Ok(SegmentInfo {
        name: name.clone(),
        kind: s.kind,
        type_info: s.type_info,
        lifetime: s.lifetime,
        total_size: s.total_size,
        creator_pid: s.creator_pid,
        created_unix_ns: s.created_unix_ns,
        mode: s.mode,
        payload_size: s.payload_size as u64,
        in_use,
        params: s.params,
        counters: h.counters,
    })
}

/// Whether some process holds a lock on the segment open as `fd`.
fn in_use(fd: &OwnedFd) -> bool {
    match rfs::flock(fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {
            let _ = rfs::flock(fd, FlockOperation::Unlock);
            false
        }
        Err(_) => true,
    }
}

/// A file under the shmbus prefix that `gc` could not read as a segment of this format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The file name in [`SHM_DIR`].
    pub file: String,
    /// Why it cannot be read.
    pub reason: String,
    /// Whether some process holds it (then it is never removed).
    pub in_use: bool,
    /// Whether this `gc` removed it (only when asked to, and only when nobody holds it).
    pub removed: bool,
}

/// What [`gc_report`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// File names of the scoped segments removed: no living process used them.
    pub removed: Vec<String>,
    /// Files under the shmbus prefix that are not readable segments of this format (corrupt,
    /// foreign, another version, unreadable for this user). Kept unless asked otherwise.
    pub unreadable: Vec<Unreadable>,
}

/// Removes every scoped segment that no living process uses. Persistent segments, and files
/// under our prefix that are not shmbus segments of this format version, are kept. Returns the
/// file names removed.
pub fn gc() -> io::Result<Vec<String>> {
    gc_report(false).map(|r| r.removed)
}

/// [`gc`], also reporting every file under the shmbus prefix that it cannot read as a segment
/// of this format, and removing those that nobody holds when `remove_unreadable` is set.
pub fn gc_report(remove_unreadable: bool) -> io::Result<GcReport> {
    gc_report_prefix("", remove_unreadable)
}

/// [`gc_report`] for the files whose shmbus name (the file name after [`FILE_PREFIX`]) starts
/// with `prefix` only.
pub fn gc_report_prefix(prefix: &str, remove_unreadable: bool) -> io::Result<GcReport> {
    let mut report = GcReport::default();
    for entry in std::fs::read_dir(SHM_DIR)? {
        let Ok(entry) = entry else { continue };
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        if !file
            .strip_prefix(FILE_PREFIX)
            .is_some_and(|n| n.starts_with(prefix))
        {
            continue;
        }
        let path = entry.path();
        let name = Name::from_file_name(file);
        let mut unreadable = |reason: String, in_use: bool, fd: Option<&OwnedFd>| {
            let removed = remove_unreadable
                && !in_use
                && fd.is_none_or(|fd| same_file(fd, &path))
                && rfs::unlink(&path).is_ok();
            if removed {
                tracing::info!(file, %reason, "gc removed an unreadable file nobody holds");
            }
            report.unreadable.push(Unreadable {
                file: file.to_owned(),
                reason,
                in_use,
                removed,
            });
        };
        let fd = match rfs::open(
            &path,
            OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // Its last user removed it since the listing: nothing to collect or report (and
            // nothing to unlink: the name may already be another file's).
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => {
                unreadable(format!("cannot open it: {e}"), false, None);
                continue;
            }
        };
        if rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_err() {
            // In use by a living process: never removed, but reported if it is unreadable.
            let reason = match (&name, read_header(&fd)) {
                (None, _) => Some("not a valid shmbus name".to_owned()),
                (Some(_), None) => Some("shorter than the header".to_owned()),
                (Some(n), Some(h)) => h.validate(n, None).err().map(|e| e.to_string()),
            };
            if let Some(reason) = reason {
                unreadable(reason, true, Some(&fd));
            }
            continue;
        }
        let Some(name) = name else {
            unreadable("not a valid shmbus name".into(), false, Some(&fd));
            continue;
        };
        let Some(h) = read_header(&fd) else {
            unreadable("shorter than the header".into(), false, Some(&fd));
            continue;
        };
        match h.validate(&name, None) {
            Ok(s) if s.lifetime == Lifetime::Scoped => {
                mark_closed(&fd);
                if same_file(&fd, &path) && rfs::unlink(&path).is_ok() {
                    tracing::info!(file, "gc removed a segment no living process uses");
                    report.removed.push(file.to_owned());
                }
            }
            Ok(_) => {} // persistent: kept until unlinked
            Err(e) => unreadable(e.to_string(), false, Some(&fd)),
        }
    }
    Ok(report)
}

/// A copy of the header of the file open as `fd`, if it is long enough to have one.
fn read_header(fd: &OwnedFd) -> Option<Header> {
    let len = rfs::fstat(fd).ok()?.st_size;
    if len < HEADER_SIZE as i64 {
        return None;
    }
    let map = Mapping::new(fd, HEADER_SIZE, true).ok()?;
    // SAFETY: a fresh mapping of HEADER_SIZE bytes, page-aligned.
    Some(unsafe { Header::read(map.ptr) })
}

fn mark_closed(fd: &OwnedFd) {
    let Ok(map) = Mapping::new(fd, HEADER_SIZE, false) else {
        return;
    };
    // SAFETY: a fresh mapping of the header, page-aligned, that outlives the reference.
    let h = unsafe { Header::read(map.ptr) };
    if h.magic == MAGIC {
        // SAFETY: as above.
        unsafe { super::header::state_word(map.ptr) }.store(state::CLOSED, Ordering::Release);
    }
}

/// The path of the file behind `name` (for tests and tools that inspect files directly).
pub fn shm_path(name: &Name) -> PathBuf {
    PathBuf::from(SHM_DIR).join(name.file_name())
}
