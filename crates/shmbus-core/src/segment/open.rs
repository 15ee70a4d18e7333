//! Opening a segment: probe, lock, wait for a ready header, validate a copy of it once.
//!
//! Every retry is bounded by the opener's deadline ([`Expect::timeout`]); each way an open can
//! fail to make progress ends in [`SegmentError::Stuck`] naming the reason.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustix::fs::{self as rfs, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use super::{
    fork_registration, os, same_file, shm_path, unlink_if_same, CreateOptions, Expect, Header,
    Mapping, Segment, SegmentError, Stuck,
};
use crate::name::Name;
use crate::time::Deadline;
use crate::wire::{state, Lifetime, HEADER_SIZE};

/// What one attempt at opening found.
// Once per open: not worth boxing the segment.
#[allow(clippy::large_enum_variant)]
enum Attempt {
    Opened(Segment),
    /// Try again (after a short pause) until the deadline; `Stuck` says why if it passes.
    Retry(Stuck),
}

/// A pause between attempts that grows from 100 µs to 5 ms.
fn pause(round: u32) {
    let us = 100u64.saturating_mul(1 << round.min(6)).min(5_000);
    std::thread::sleep(Duration::from_micros(us));
}

impl Segment {
    /// Opens the existing segment `name` and checks it against `expect`, within
    /// `expect.timeout` (retries included).
    ///
    /// A stale scoped segment (every user died) is reclaimed and reported as
    /// [`SegmentError::NotFound`].
    pub fn open(name: &Name, expect: &Expect) -> Result<Segment, SegmentError> {
        let deadline = Deadline::after(Some(expect.timeout));
        Self::open_until(name, &shm_path(name), expect, &deadline)
    }

    /// Opens a segment backed by the regular file `path` (see [`Segment::create_file`]).
    pub fn open_file(path: &Path, expect: &Expect) -> Result<Segment, SegmentError> {
        let name = Name::label_for_path(path);
        let deadline = Deadline::after(Some(expect.timeout));
        Self::open_until(&name, path, expect, &deadline)
    }

    fn open_until(
        name: &Name,
        path: &Path,
        expect: &Expect,
        deadline: &Deadline,
    ) -> Result<Segment, SegmentError> {
        let mut round = 0;
        loop {
            match Self::try_open(name, path.to_owned(), expect, deadline)? {
                Attempt::Opened(seg) => return Ok(seg),
                Attempt::Retry(reason) if deadline.expired() => {
                    return Err(SegmentError::Stuck {
                        name: name.clone(),
                        reason,
                    })
                }
                // Raced with a leaver or reclaimed a stale one: look again.
                Attempt::Retry(_) => {
                    if round > 0 {
                        pause(round);
                    }
                    round += 1;
                }
            }
        }
    }

    /// Opens `name` if it exists, otherwise creates it with `opts` and `init`; the whole of it
    /// within `expect.timeout`.
    pub fn open_or_create(
        name: &Name,
        expect: &Expect,
        opts: &CreateOptions,
        init: impl Fn(&mut [u8]),
    ) -> Result<(Segment, bool), SegmentError> {
        let deadline = Deadline::after(Some(expect.timeout));
        let path = shm_path(name);
        let mut round = 0;
        loop {
            match Self::open_until(name, &path, expect, &deadline) {
                Ok(s) => return Ok((s, false)),
                Err(SegmentError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            match Self::create(name, opts, &init) {
                Ok(s) => return Ok((s, true)),
                Err(SegmentError::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
            if deadline.expired() {
                return Err(SegmentError::Stuck {
                    name: name.clone(),
                    reason: Stuck::Replaced,
                });
            }
            pause(round);
            round += 1;
        }
    }

    /// One attempt.
    fn try_open(
        name: &Name,
        path: PathBuf,
        expect: &Expect,
        deadline: &Deadline,
    ) -> Result<Attempt, SegmentError> {
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
        let map = Mapping::new(&fd, len, expect.read_only).map_err(os(name, "mmap"))?;
        // SAFETY: a fresh mapping of `len >= HEADER_SIZE` bytes, page-aligned.
        let first = unsafe { Header::read(map.ptr) };
        // SAFETY: as above; `map` outlives every use of the word in this function.
        let state_word = unsafe { super::header::state_word(map.ptr) };
        // Magic, version and lifetime decide what to do next; the rest is validated below, on a
        // copy taken once the header is ready.
        let lifetime = first.opening_lifetime(name)?;

        if alone {
            let st = state_word.load(Ordering::Acquire);
            match (lifetime, st) {
                (Lifetime::Persistent, state::CLOSED) => {
                    // Only scoped segments are ever closed: another process wrote the word.
                    // A persistent segment is never removed by an opener.
                    return Err(corrupt("a persistent segment marked closed".into()));
                }
                (Lifetime::Persistent, _) => {
                    // Ready, or a foreign tool's file that is not ready yet: wait for it below,
                    // holding a shared lock like any user.
                    rfs::flock(&fd, FlockOperation::LockShared).map_err(os(name, "flock"))?;
                }
                (Lifetime::Scoped, _) => {
                    if !expect.read_only {
                        state_word.store(state::CLOSED, Ordering::Release);
                    }
                    return match unlink_if_same(&fd, &path) {
                        Ok(true) => {
                            tracing::info!(name = %name, "reclaimed a stale segment: every user had died");
                            Ok(Attempt::Retry(Stuck::Replaced))
                        }
                        Ok(false) => Ok(Attempt::Retry(Stuck::Replaced)),
                        // Sticky /dev/shm and another user's file, or a read-only directory:
                        // waiting will not change that.
                        Err(Errno::PERM | Errno::ACCESS | Errno::ROFS) => {
                            Err(SegmentError::Stuck {
                                name: name.clone(),
                                reason: Stuck::StaleNotRemovable,
                            })
                        }
                        Err(e) => Err(os(name, "unlink")(e)),
                    };
                }
            }
        } else {
            // Someone uses it. Take our shared lock; exclusive holders (leavers, gc, probes) hold
            // theirs only for a moment.
            let mut round = 0;
            loop {
                match rfs::flock(&fd, FlockOperation::NonBlockingLockShared) {
                    Ok(()) => break,
                    Err(Errno::WOULDBLOCK) if !deadline.expired() => {
                        pause(round);
                        round += 1;
                    }
                    Err(Errno::WOULDBLOCK) => {
                        return Err(SegmentError::Stuck {
                            name: name.clone(),
                            reason: Stuck::LockedExclusively,
                        })
                    }
                    Err(e) => return Err(os(name, "flock")(e)),
                }
            }
        }

        // Wait (bounded) for a header that is not ready yet.
        let mut round = 0;
        loop {
            match state_word.load(Ordering::Acquire) {
                state::READY => break,
                state::CLOSED => {
                    // A leaver marks CLOSED and removes the name while holding the exclusive
                    // lock; we hold a shared one, so if the name still names this file, no
                    // leaver wrote it.
                    let reason = if same_file(&fd, &path) {
                        Stuck::ClosedWhileInUse
                    } else {
                        Stuck::Replaced
                    };
                    return Ok(Attempt::Retry(reason));
                }
                state::INIT if !deadline.expired() => {
                    pause(round);
                    round += 1;
                }
                state::INIT => {
                    return Err(SegmentError::Stuck {
                        name: name.clone(),
                        reason: Stuck::NotInitialised,
                    })
                }
                s => return Err(corrupt(format!("unknown state {s}"))),
            }
        }
        // The one copy this handle works from.
        // SAFETY: as above: the mapping holds the header.
        let snapshot = unsafe { Header::read(map.ptr) }.validate(name, Some(len))?;
        snapshot.check_expected(name, lifetime, expect)?;
        tracing::debug!(name = %name, kind = %snapshot.kind, "attached segment");
        let _fork = fork_registration(&fd, &map, expect.read_only);
        Ok(Attempt::Opened(Segment {
            name: name.clone(),
            path,
            fd,
            map,
            scoped: snapshot.lifetime == Lifetime::Scoped,
            snapshot,
            read_only: expect.read_only,
            _fork,
        }))
    }
}
