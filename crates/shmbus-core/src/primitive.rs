//! Atomics and friends, from `std` normally and from `loom` when built with `--cfg loom`.
//!
//! The lock-free protocols import everything through this module so that the very same code runs
//! under loom's model checker on heap memory.
#![deny(unsafe_code)]

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// Tells the processor (or loom) that we are spinning.
#[inline]
pub(crate) fn spin_loop() {
    #[cfg(not(loom))]
    std::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}
