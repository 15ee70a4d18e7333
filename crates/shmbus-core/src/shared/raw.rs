//! A shared state over a segment.

use std::fmt;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::protocol::{Buffer, ReadError, Seqlock};
use crate::futex;
use crate::layout::TypeInfo;
use crate::name::Name;
use crate::segment::{CreateOptions, Expect, Kind, Lifetime, Segment, SegmentError};
use crate::sync::{Acquired, LockError, RobustMutex};
use crate::time::Deadline;
use crate::wire::value as wv;

const CURRENT: usize = 64;
const CHANGED: usize = 72;
const SLEEPERS: usize = 76;
const BUFFERS: usize = 128;
/// Most bytes of an encoded state.
pub const MAX_CAPACITY: usize = 1 << 30;

/// Why a shared-state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The lock failed.
    #[error("the shared state's lock failed: {0}")]
    Lock(#[from] LockError),
    /// The encoded state does not fit.
    #[error("the state needs {size} bytes; the shared state holds {capacity}")]
    TooLarge {
        /// Bytes needed.
        size: usize,
        /// Bytes a buffer holds.
        capacity: usize,
    },
    /// No change before the timeout.
    #[error("timed out")]
    Timeout,
    /// Writers kept changing the state while this reader copied it (about a thousand times).
    #[error("the state kept changing while it was read")]
    Busy,
    /// The memory is inconsistent (a peer wrote into it).
    #[error("the shared state is corrupt: {0}")]
    Corrupt(String),
}

fn stride(capacity: usize) -> Option<usize> {
    capacity
        .max(8)
        .checked_next_multiple_of(64)?
        .checked_add(64)
}

/// A named shared state of at most `capacity` encoded bytes.
///
/// # Examples
///
/// ```
/// use shmbus_core::layout::{Codec, TypeInfo};
/// use shmbus_core::name::Name;
/// use shmbus_core::segment::Lifetime;
/// use shmbus_core::shared::RawShared;
///
/// let name = Name::new(&format!("doc-rawshared-{}", std::process::id())).unwrap();
/// let ty = TypeInfo::new("notes", 0, 1, Codec::Postcard).unwrap();
/// let s = RawShared::open_or_create(&name, &ty, 64, b"v0", 0o600, Lifetime::Scoped)?;
/// let v = s.update(|old| Ok::<_, std::convert::Infallible>([old, b"+1"].concat()))?.unwrap();
/// let mut out = Vec::new();
/// assert_eq!(s.read(&mut out)?, v);
/// assert_eq!(out, b"v0+1");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RawShared {
    segment: Segment,
    /// This handle\'s holder row for the segment\'s mutex.
    rows: crate::named::HolderRows,
    capacity: usize,
    stride: usize,
}

impl fmt::Debug for RawShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawShared")
            .field("name", self.segment.name())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl RawShared {
    /// Opens the shared state `name`, creating it (holding the encoded `initial`, buffers of
    /// `capacity` bytes) if it does not exist.
    ///
    /// # Errors
    ///
    /// Those of [`Segment::open_or_create`]; [`SegmentError::InvalidSize`] if `initial` does
    /// not fit in `capacity` or that exceeds [`MAX_CAPACITY`].
    pub fn open_or_create(
        name: &Name,
        type_info: &TypeInfo,
        capacity: usize,
        initial: &[u8],
        mode: u32,
        lifetime: Lifetime,
    ) -> Result<RawShared, SegmentError> {
        let invalid = |reason: String| SegmentError::InvalidSize {
            name: name.clone(),
            reason,
        };
        if capacity > MAX_CAPACITY || initial.len() > capacity {
            return Err(invalid(format!(
                "a state of {} bytes in buffers of {capacity} (at most {MAX_CAPACITY})",
                initial.len()
            )));
        }
        let st = stride(capacity).ok_or_else(|| invalid(format!("{capacity} bytes")))?;
        let payload = BUFFERS + 2 * st;
        let mut opts = CreateOptions::new(Kind::Shared, type_info.clone(), payload);
        opts.mode = mode;
        opts.lifetime = lifetime;
        opts.params[wv::CAPACITY] = capacity as u64;
        let expect = Expect::new(Kind::Shared, type_info.clone());
        let (segment, _) = Segment::open_or_create(name, &expect, &opts, |p| {
            // SAFETY: fresh, zero-filled, page-aligned payload nobody else can see yet.
            unsafe { RobustMutex::init(p.as_mut_ptr().cast()) }
                .expect("initialising a process-shared robust mutex on fresh memory");
            p[BUFFERS..BUFFERS + 8].copy_from_slice(&(initial.len() as u64).to_ne_bytes());
            for (i, chunk) in initial.chunks(8).enumerate() {
                let mut w = [0u8; 8];
                w[..chunk.len()].copy_from_slice(chunk);
                let at = BUFFERS + 8 + i * 8;
                p[at..at + 8].copy_from_slice(&u64::from_le_bytes(w).to_ne_bytes());
            }
        })?;
        Self::attach(segment)
    }

    /// Opens the existing shared state `name`.
    ///
    /// # Errors
    ///
    /// Those of [`Segment::open`]; [`SegmentError::Corrupt`] for a payload that does not match
    /// its recorded capacity.
    pub fn open(name: &Name, type_info: &TypeInfo) -> Result<RawShared, SegmentError> {
        Self::attach(Segment::open(
            name,
            &Expect::new(Kind::Shared, type_info.clone()),
        )?)
    }

    fn attach(segment: Segment) -> Result<RawShared, SegmentError> {
        let cap = segment.snapshot().params[wv::CAPACITY];
        let fits = usize::try_from(cap)
            .ok()
            .filter(|&c| c <= MAX_CAPACITY)
            .and_then(|c| Some((c, stride(c)?)))
            .filter(|&(_, st)| BUFFERS + 2 * st <= segment.payload_len());
        match fits {
            Some((capacity, stride)) => Ok(RawShared {
                rows: crate::named::HolderRows::default(),
                segment,
                capacity,
                stride,
            }),
            None => Err(SegmentError::Corrupt {
                name: segment.name().clone(),
                reason: format!(
                    "a capacity of {cap} does not fit a payload of {} bytes",
                    segment.payload_len()
                ),
            }),
        }
    }

    /// The state's name.
    pub fn name(&self) -> &Name {
        self.segment.name()
    }

    /// Bytes of encoded state it holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn word<T>(&self, off: usize) -> &T {
        // SAFETY: used for the atomics at CURRENT, CHANGED, SLEEPERS and the buffer words, all
        // inside the payload (checked at attach) and aligned for their type; they are only
        // accessed atomically, and live as long as the borrowed segment.
        unsafe { &*self.segment.payload_ptr().as_ptr().add(off).cast::<T>() }
    }

    fn buffer(&self, k: usize) -> Buffer<'_> {
        let base = BUFFERS + k * self.stride;
        let n = self.capacity.div_ceil(8);
        // SAFETY: the buffer's `n` words follow its length word inside the payload (its
        // stride is at least 8 + 8n bytes, checked at attach), 8-aligned; only accessed
        // atomically.
        let words = unsafe {
            std::slice::from_raw_parts(
                self.segment
                    .payload_ptr()
                    .as_ptr()
                    .add(base + 8)
                    .cast::<AtomicU64>(),
                n,
            )
        };
        Buffer {
            len: self.word::<AtomicU64>(base),
            words,
        }
    }

    fn seqlock(&self) -> Seqlock<'_> {
        Seqlock {
            current: self.word(CURRENT),
            buffers: [self.buffer(0), self.buffer(1)],
        }
    }

    fn mutex(&self) -> &RobustMutex {
        self.word(0)
    }

    /// The current version (0 for the initial state; each update adds 1).
    pub fn version(&self) -> u64 {
        self.seqlock().version()
    }

    /// Copies the current state's bytes into `out`; returns its version. Never waits for a
    /// writer (it copies again if a writer committed meanwhile).
    ///
    /// # Errors
    ///
    /// [`SharedError::Busy`] if writers changed it a thousand times in a row under the copy,
    /// [`SharedError::Corrupt`].
    pub fn read(&self, out: &mut Vec<u8>) -> Result<u64, SharedError> {
        self.seqlock().read(out, 1000).map_err(|e| match e {
            ReadError::Busy => SharedError::Busy,
            ReadError::BadLength(l) => SharedError::Corrupt(format!("a recorded length of {l}")),
        })
    }

    /// Under the lock, replaces the state by `f(current bytes)` as the next version; returns
    /// `Ok(Ok(version))`, or `Ok(Err(e))` when `f` refused (nothing changes).
    ///
    /// # Errors
    ///
    /// [`SharedError::Lock`] (after 10 s: [`LockError::Timeout`]), [`SharedError::TooLarge`].
    pub fn update<E>(
        &self,
        f: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
    ) -> Result<Result<u64, E>, SharedError> {
        if self.mutex().lock(
            &self.rows.holders(&self.segment).map_err(LockError::Os)?,
            Some(Duration::from_secs(10)),
        )? == Acquired::OwnerDied
        {
            // The dead writer's buffer was not current: nothing to repair.
            // SAFETY: we hold the mutex after OwnerDied, and the state is consistent.
            unsafe { self.mutex().make_consistent() }.map_err(LockError::Os)?;
        }
        let r = self.update_locked(f);
        if let Ok(h) = self.rows.holders(&self.segment) {
            // SAFETY: locked on this thread as this handle's row (cached since that lock, so
            // `holders` gives the same id and cannot fail here).
            unsafe { self.mutex().unlock(&h) }
        };
        let r = r?;
        if r.is_ok() {
            let w = self.word::<AtomicU32>(CHANGED);
            w.fetch_add(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if self.word::<AtomicU32>(SLEEPERS).load(Ordering::Relaxed) > 0 {
                futex::wake(w, u32::MAX);
            }
        }
        Ok(r)
    }

    fn update_locked<E>(
        &self,
        f: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
    ) -> Result<Result<u64, E>, SharedError> {
        let mut cur = Vec::new();
        self.read(&mut cur)?;
        match f(&cur) {
            Ok(next) if next.len() > self.capacity => Err(SharedError::TooLarge {
                size: next.len(),
                capacity: self.capacity,
            }),
            Ok(next) => Ok(Ok(self.seqlock().write(&next))),
            Err(e) => Ok(Err(e)),
        }
    }

    /// Waits until the version differs from `version`, at most `timeout`; returns the new one.
    ///
    /// # Errors
    ///
    /// [`SharedError::Timeout`].
    pub fn wait_changed(
        &self,
        version: u64,
        timeout: Option<Duration>,
    ) -> Result<u64, SharedError> {
        let deadline = Deadline::after(timeout);
        let changed = self.word::<AtomicU32>(CHANGED);
        let sleepers = self.word::<AtomicU32>(SLEEPERS);
        loop {
            let seen = changed.load(Ordering::Acquire);
            let v = self.version();
            if v != version {
                return Ok(v);
            }
            if deadline.expired() {
                return Err(SharedError::Timeout);
            }
            sleepers.fetch_add(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            // Bounded even without a timeout, in case a writer died between its commit and its
            // wake-up.
            let step = deadline.remaining().map_or(Duration::from_millis(50), |r| {
                r.min(Duration::from_millis(50))
            });
            futex::wait(changed, seen, Some(step));
            sleepers.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
