//! Kernel-backed liveness of participants: open-file-description (OFD) byte locks.
//!
//! Every participant of a segment (a publisher, a subscriber, ...) owns an index in a table that
//! lives in the segment. It proves it is alive by holding an OFD write lock on one byte of the
//! segment file, at [`LEASE_BASE`] + a per-role offset + its index (far beyond the end of the
//! file: locks need no data there). The kernel drops the lock when the process dies, however it
//! dies, so "is participant *i* alive?" is one `fcntl(F_OFD_GETLK)` away, with no pid reuse to
//! fear. Taking the lock is also how a process claims an index, or claims the right to clean up
//! after a dead holder: two processes can never hold it at once.
//!
//! OFD locks belong to an open file description, not to a process: each [`Lease`] opens the file
//! anew (through `/proc/self/fd`) so that two participants in one process exclude each other too.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use crate::fork;

/// Byte offset of the first lease byte. Leases sit far beyond any segment's data.
pub const LEASE_BASE: i64 = 1 << 40;

/// A held OFD lock on one byte of a segment file; dropping it releases the lock.
///
/// A forked child does not inherit the lease: its copy of the descriptor is replaced by
/// `/dev/null` (see [`crate::fork`]), so the lock lives and dies with the process that took it.
#[derive(Debug)]
pub struct Lease {
    // Declared first so that it is dropped first: the fork handler must never see the
    // descriptor number after it was closed (and perhaps reused).
    _fork: fork::Registration,
    file: File,
    byte: i64,
}

fn lock_op(
    fd: BorrowedFd<'_>,
    cmd: libc::c_int,
    kind: libc::c_short,
    byte: i64,
) -> io::Result<libc::flock> {
    let mut fl = libc::flock {
        l_type: kind,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: byte,
        l_len: 1,
        // OFD locks demand l_pid = 0.
        l_pid: 0,
    };
    // SAFETY: `fd` is a valid open descriptor for the duration of the call and `fl` is a valid,
    // initialised `struct flock` that the kernel may read and (for GETLK) write.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &mut fl as *mut libc::flock) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fl)
    }
}

impl Lease {
    /// Tries to take the lease on `byte` (relative to [`LEASE_BASE`]) of the file behind `fd`.
    /// `Ok(None)`: a live participant holds it.
    pub fn try_acquire(fd: BorrowedFd<'_>, byte: u64) -> io::Result<Option<Lease>> {
        let file = File::options()
            .read(true)
            .write(true)
            .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        let byte = lease_byte(byte)?;
        match lock_op(
            file.as_fd(),
            libc::F_OFD_SETLK,
            libc::F_WRLCK as libc::c_short,
            byte,
        ) {
            Ok(_) => Ok(Some(Lease {
                _fork: fork::register_lease(file.as_raw_fd()),
                file,
                byte,
            })),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Takes a *shared* lease on `byte`: any number of holders at once, each visible to
    /// [`is_held`] from other open file descriptions (used to say "I have this mapped").
    pub fn shared(fd: BorrowedFd<'_>, byte: u64) -> io::Result<Lease> {
        let file = File::options()
            .read(true)
            .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        let byte = lease_byte(byte)?;
        lock_op(
            file.as_fd(),
            libc::F_OFD_SETLK,
            libc::F_RDLCK as libc::c_short,
            byte,
        )?;
        Ok(Lease {
            _fork: fork::register_lease(file.as_raw_fd()),
            file,
            byte,
        })
    }

    /// The lease byte, relative to [`LEASE_BASE`].
    pub fn byte(&self) -> u64 {
        (self.byte - LEASE_BASE) as u64
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Closing the file would release it too; unlocking first makes the release immediate
        // even if someone duplicated the descriptor.
        let _ = lock_op(
            self.file.as_fd(),
            libc::F_OFD_SETLK,
            libc::F_UNLCK as libc::c_short,
            self.byte,
        );
    }
}

fn lease_byte(byte: u64) -> io::Result<i64> {
    i64::try_from(byte)
        .ok()
        .and_then(|b| LEASE_BASE.checked_add(b))
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Whether some open file description other than `fd`'s holds the lease on `byte`.
///
/// Query through a descriptor that holds no leases itself (the segment's own descriptor): the
/// kernel does not report a lock that `fd`'s own description holds.
pub fn is_held(fd: BorrowedFd<'_>, byte: u64) -> io::Result<bool> {
    let fl = lock_op(
        fd,
        libc::F_OFD_GETLK,
        libc::F_WRLCK as libc::c_short,
        lease_byte(byte)?,
    )?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_excludes_and_is_visible() {
        let dir = std::env::temp_dir().join(format!("shmbus-lease-{}", std::process::id()));
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&dir)
            .unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert!(!is_held(f.as_fd(), 3).unwrap());
        let l = Lease::try_acquire(f.as_fd(), 3).unwrap().expect("free");
        assert_eq!(l.byte(), 3);
        assert!(is_held(f.as_fd(), 3).unwrap());
        assert!(!is_held(f.as_fd(), 4).unwrap());
        assert!(Lease::try_acquire(f.as_fd(), 3).unwrap().is_none());
        drop(l);
        assert!(!is_held(f.as_fd(), 3).unwrap());
        assert!(Lease::try_acquire(f.as_fd(), 3).unwrap().is_some());
    }
}
