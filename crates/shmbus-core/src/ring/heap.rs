//! A topic's memory on the heap, for loom models and unit tests.

use super::*;

/// A topic's memory on the heap, for loom models and unit tests.
#[derive(Debug)]
pub(crate) struct HeapRing {
    ring: Ring,
    mem: *mut u8,
    size: usize,
    counters: Box<[AtomicU64; counter::COUNT]>,
}

// SAFETY: the memory is owned and only reached through the protocol.
unsafe impl Send for HeapRing {}
// SAFETY: as above.
unsafe impl Sync for HeapRing {}

impl HeapRing {
    /// Builds a topic of `config` in fresh heap memory.
    pub(crate) fn new(config: RingConfig) -> Result<HeapRing, ConfigError> {
        let layout = RingLayout::new(config)?;
        let alloc = std::alloc::Layout::from_size_align(layout.size, 128)
            .map_err(|e| ConfigError(e.to_string()))?;
        // SAFETY: `alloc` has non-zero size (the header alone is several hundred bytes).
        let mem = unsafe { std::alloc::alloc_zeroed(alloc) };
        let base = NonNull::new(mem).ok_or_else(|| ConfigError("out of memory".into()))?;
        // Atomics built by loom must be constructed by loom: write them in place.
        // SAFETY: every atomic lives at an offset computed by the layout, inside the allocation.
        unsafe { write_atomics(base, &layout) };
        // SAFETY: fresh, zeroed (apart from the atomics' initial zero values), exclusive memory
        // of `layout.size` bytes aligned to 128.
        unsafe { Ring::init(base, &layout) };
        let counters = Box::new(std::array::from_fn(|_| AtomicU64::new(0)));
        let cptr = NonNull::from(&counters[0]);
        // SAFETY: laid out by `init` with `layout`; the allocation and the boxed counters live
        // as long as the `HeapRing`, which owns both and drops the ring view first.
        let ring = unsafe { Ring::from_raw(base, layout, cptr) };
        Ok(HeapRing {
            ring,
            mem,
            size: layout.size,
            counters,
        })
    }

    /// The ring view.
    pub(crate) fn ring(&self) -> &Ring {
        &self.ring
    }
}

/// Writes fresh atomics over every atomic of the layout (required for loom's atomics; a no-op in
/// effect for std's, whose zero value is all-zero bytes).
///
/// # Safety
///
/// `base` points to `layout.size` writable bytes aligned to 128 that nobody else accesses.
unsafe fn write_atomics(base: NonNull<u8>, layout: &RingLayout) {
    // SAFETY: (for each write below) offsets come from the layout, lie within `layout.size`,
    // and are aligned for the type (the layout aligns every part).
    unsafe {
        let h = base.as_ptr().cast::<RingHeader>();
        std::ptr::addr_of_mut!((*h).tail).write(AtomicU64::new(0));
        std::ptr::addr_of_mut!((*h).publisher_joins).write(AtomicU64::new(0));
        std::ptr::addr_of_mut!((*h).subscriber_joins).write(AtomicU64::new(0));
        std::ptr::addr_of_mut!((*h).notify_word).write(AtomicU32::new(0));
        std::ptr::addr_of_mut!((*h).notify_sleepers).write(AtomicU32::new(0));
        std::ptr::addr_of_mut!((*h).light).write(AtomicU32::new(0));
        std::ptr::addr_of_mut!((*h).progress_word).write(AtomicU32::new(0));
        std::ptr::addr_of_mut!((*h).progress_sleepers).write(AtomicU32::new(0));
        for i in 0..layout.config.capacity as usize {
            let e = base.as_ptr().add(layout.entries + i * layout.entry_size);
            let entry = || Entry {
                seq: AtomicU64::new(0),
                slot: AtomicU64::new(0),
            };
            if layout.config.inline > 0 {
                e.cast::<InlineEntry>().write(InlineEntry {
                    entry: entry(),
                    words: std::array::from_fn(|_| AtomicU64::new(0)),
                });
            } else {
                e.cast::<Entry>().write(entry());
            }
        }
        let parts: &[usize] = if layout.config.timestamps {
            &[layout.states, layout.stamps]
        } else {
            &[layout.states]
        };
        for i in 0..layout.slots as usize {
            for &part in parts {
                base.as_ptr()
                    .add(part)
                    .cast::<AtomicU64>()
                    .add(i)
                    .write(AtomicU64::new(0));
            }
        }
        for i in 0..layout.config.max_subscribers as usize {
            let e = base
                .as_ptr()
                .add(layout.subscribers)
                .cast::<SubscriberEntry>()
                .add(i);
            e.write(SubscriberEntry {
                state: AtomicU32::new(0),
                pid: AtomicU32::new(0),
                cursor: AtomicU64::new(0),
                lagged: AtomicU64::new(0),
            });
        }
        for i in 0..layout.config.max_publishers as usize {
            let e = base
                .as_ptr()
                .add(layout.publishers)
                .cast::<PublisherEntry>()
                .add(i);
            e.write(PublisherEntry {
                state: AtomicU32::new(0),
                pid: AtomicU32::new(0),
            });
        }
    }
}

impl Drop for HeapRing {
    fn drop(&mut self) {
        let _ = &self.counters;
        // SAFETY: allocated in `new` with this size and alignment; the ring view dies with us.
        // Loom's atomics own no resources that need dropping beyond what loom tracks per model.
        unsafe {
            std::alloc::dealloc(
                self.mem,
                std::alloc::Layout::from_size_align_unchecked(self.size, 128),
            )
        };
    }
}
