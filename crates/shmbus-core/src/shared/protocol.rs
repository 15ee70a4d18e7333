//! The shared state's lock-free read side: a seqlock over two buffers.
//!
//! `current` holds `version << 1 | which`: buffer `which` holds the state of that version. A
//! writer (one at a time: it holds the robust mutex) fills the *other* buffer, then stores the
//! new `current` (`Release`): that store is its commit point, so a writer killed half-way leaves
//! the last complete version current. Before it overwrites a buffer, a writer fences
//! (`Release`), so that a reader that sees any overwritten word sees the newer `current` too
//! (the seqlock's write-side fence). A reader loads `current` (`Acquire`), copies that buffer,
//! fences (`Acquire`), and loads `current` again: if it changed, a writer may have reused the
//! buffer under it (two versions later), so it copies again. Buffers are words of `AtomicU64`
//! accessed with relaxed loads and stores, so a copy racing with a write is a stale read, never
//! undefined behaviour.

use crate::primitive::{fence, AtomicU64, Ordering};

/// One buffer: the encoded length, then the bytes, as words.
pub(crate) struct Buffer<'a> {
    pub(crate) len: &'a AtomicU64,
    pub(crate) words: &'a [AtomicU64],
}

/// The seqlock over two buffers.
pub(crate) struct Seqlock<'a> {
    pub(crate) current: &'a AtomicU64,
    pub(crate) buffers: [Buffer<'a>; 2],
}

/// Why a read found nothing usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// The recorded length exceeds the buffer (a peer wrote it).
    BadLength(u64),
    /// Writers kept changing the state under the reader.
    Busy,
}

impl Seqlock<'_> {
    /// Bytes a buffer holds.
    pub(crate) fn capacity(&self) -> usize {
        self.buffers[0].words.len() * 8
    }

    /// The current version.
    pub(crate) fn version(&self) -> u64 {
        self.current.load(Ordering::Acquire) >> 1
    }

    /// A consistent copy of the current state's bytes into `out`, and its version; at most
    /// `attempts` tries.
    pub(crate) fn read(&self, out: &mut Vec<u8>, attempts: u32) -> Result<u64, ReadError> {
        for _ in 0..attempts {
            let c1 = self.current.load(Ordering::Acquire);
            let b = &self.buffers[(c1 & 1) as usize];
            let len = b.len.load(Ordering::Relaxed);
            let n = match usize::try_from(len) {
                Ok(n) if n <= self.capacity() => n,
                _ => {
                    fence(Ordering::Acquire);
                    if self.current.load(Ordering::Relaxed) == c1 {
                        return Err(ReadError::BadLength(len));
                    }
                    continue;
                }
            };
            out.clear();
            for w in b.words.iter().take(n.div_ceil(8)) {
                out.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
            }
            out.truncate(n);
            fence(Ordering::Acquire);
            if self.current.load(Ordering::Relaxed) == c1 {
                return Ok(c1 >> 1);
            }
            crate::primitive::spin_loop();
        }
        Err(ReadError::Busy)
    }

    /// Writes `bytes` as the next version (the caller is the only writer: it holds the lock);
    /// returns the new version. `bytes` must fit ([`capacity`](Self::capacity)).
    pub(crate) fn write(&self, bytes: &[u8]) -> u64 {
        assert!(bytes.len() <= self.capacity());
        let c = self.current.load(Ordering::Relaxed);
        let next = &self.buffers[((c & 1) ^ 1) as usize];
        // The buffer we are about to overwrite was current two versions ago: a reader that
        // sees any of the words below must also see that `current` has moved on since (the
        // last commit, by us or by the writer before us, whom the lock ordered before us).
        fence(Ordering::Release);
        for (w, chunk) in next.words.iter().zip(bytes.chunks(8)) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            w.store(u64::from_le_bytes(word), Ordering::Relaxed);
            #[cfg(all(test, loom))]
            crate::shared::loom_tests::crash_point();
        }
        next.len.store(bytes.len() as u64, Ordering::Relaxed);
        let version = (c >> 1).wrapping_add(1);
        // Commit point.
        self.current
            .store((version << 1) | ((c & 1) ^ 1), Ordering::Release);
        version
    }
}
