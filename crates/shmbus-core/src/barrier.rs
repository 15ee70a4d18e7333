//! Asymmetric fences between processes: a cheap side that publishes often and a costly side
//! that sleeps rarely (decision 47).
//!
//! A publish stores its entry and then looks at the sleeper count; a subscriber about to sleep
//! counts itself in and then looks at the entry. Each side needs its store ordered before its
//! load, or both can miss the other (a lost wake-up). With a `fence(SeqCst)` on both sides that
//! holds, but the publisher's fence waits for its stores to leave the CPU, the cache lines the
//! reader just read among them: measured, a third of a single publish's time.
//!
//! So a publisher whose process registered for `MEMBARRIER_CMD_GLOBAL_EXPEDITED`
//! ([`register_light`]) keeps only a compiler fence, and the sleeper calls [`heavy`] after its
//! own fence: the kernel runs a full memory barrier on every CPU that is running a thread of a
//! registered process (a thread that is not running went through one when it was switched out).
//! Either the publisher's load of the sleeper count comes after that barrier, and sees the
//! count; or it came before, and then so did its entry store, which the barrier made visible
//! before [`heavy`] returned, and the sleeper's re-check sees the entry.
//!
//! Where the kernel refuses the call (a seccomp filter, a kernel before 4.16), a publisher does
//! not register and keeps its fence. A sleeper that cannot make the heavy barrier while a
//! publisher in another process might be registered cannot rely on being woken: it sleeps in
//! slices of at most [`FALLBACK_SLICE`] and re-checks ([`heavy_unavailable`]).
//!
//! Loom cannot model the kernel's barrier; under `--cfg loom` no publisher is light, so the
//! models check the fenced protocol, and this argument rests on the kernel's documentation
//! (`membarrier(2)`).

use std::time::Duration;

/// The longest a sleeper sleeps at a time when it cannot make the heavy barrier.
pub(crate) const FALLBACK_SLICE: Duration = Duration::from_millis(1);

#[cfg(not(loom))]
mod imp {
    use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

    use rustix::thread::{membarrier, membarrier_query, MembarrierCommand};

    /// The process that registered (its pid), or 0: a forked child registers again.
    static REGISTERED: AtomicU32 = AtomicU32::new(0);

    const UNKNOWN: u8 = 0;
    const YES: u8 = 1;
    const NO: u8 = 2;
    /// Whether this process can make the heavy barrier.
    static HEAVY: AtomicU8 = AtomicU8::new(UNKNOWN);

    pub(crate) fn register_light() -> bool {
        let pid = std::process::id();
        if REGISTERED.load(Ordering::Relaxed) == pid {
            return true;
        }
        let q = membarrier_query();
        let ok = q.contains_command(MembarrierCommand::GlobalExpedited)
            && q.contains_command(MembarrierCommand::RegisterGlobalExpedited)
            && membarrier(MembarrierCommand::RegisterGlobalExpedited).is_ok();
        if ok {
            REGISTERED.store(pid, Ordering::Relaxed);
        } else {
            tracing::debug!("membarrier refused: publishes keep their fence");
        }
        ok
    }

    pub(crate) fn heavy() -> bool {
        match HEAVY.load(Ordering::Relaxed) {
            NO => return false,
            UNKNOWN => {
                let yes = membarrier_query().contains_command(MembarrierCommand::GlobalExpedited);
                HEAVY.store(if yes { YES } else { NO }, Ordering::Relaxed);
                if !yes {
                    return false;
                }
            }
            _ => {}
        }
        if membarrier(MembarrierCommand::GlobalExpedited).is_ok() {
            true
        } else {
            HEAVY.store(NO, Ordering::Relaxed);
            false
        }
    }

    pub(crate) fn heavy_unavailable() -> bool {
        HEAVY.load(Ordering::Relaxed) == NO
    }
}

#[cfg(loom)]
mod imp {
    pub(crate) fn register_light() -> bool {
        false
    }

    pub(crate) fn heavy() -> bool {
        true
    }

    pub(crate) fn heavy_unavailable() -> bool {
        false
    }
}

/// Registers this process for the sleepers' heavy barriers; `true` if its publishes may keep
/// only a compiler fence before they look at the sleeper count. Call it once per publisher (a
/// forked child registers again; registering twice is harmless).
pub(crate) fn register_light() -> bool {
    imp::register_light()
}

/// The sleeper's side, after its count-in and `fence(SeqCst)`, before its re-check: a full
/// barrier on every CPU running a registered (light) publisher. `false` when this process
/// cannot make it: the caller then sleeps no longer than [`FALLBACK_SLICE`] at a time.
pub(crate) fn heavy() -> bool {
    imp::heavy()
}

/// Whether a [`heavy`] call of this process was refused (its sleepers must poll).
pub(crate) fn heavy_unavailable() -> bool {
    imp::heavy_unavailable()
}

/// `timeout`, capped at [`FALLBACK_SLICE`] when `heavy_made` is false.
pub(crate) fn cap(timeout: Option<Duration>, heavy_made: bool) -> Option<Duration> {
    if heavy_made {
        timeout
    } else {
        Some(timeout.map_or(FALLBACK_SLICE, |t| t.min(FALLBACK_SLICE)))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn registered_process_makes_heavy_barriers_and_caps_nothing() {
        // The machines this runs on have membarrier (Linux 4.16 or later, no filter).
        assert!(register_light());
        assert!(register_light(), "registering twice is harmless");
        assert!(heavy());
        assert!(!heavy_unavailable());
        assert_eq!(cap(None, true), None);
        assert_eq!(
            cap(Some(Duration::from_secs(1)), false),
            Some(FALLBACK_SLICE)
        );
        assert_eq!(cap(None, false), Some(FALLBACK_SLICE));
        let short = Duration::from_micros(10);
        assert_eq!(cap(Some(short), false), Some(short));
    }
}
