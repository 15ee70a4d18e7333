//! The payload layouts openers derive from a segment: a topic's ring from its ring header
//! (`Ring::read_layout`, run by `RawTopic::open`) and a work queue's from its header's
//! `params` (`QueueLayout::from_header`, run by `RawQueue::open`). Every offset the protocols
//! then use comes from these layouts.
//!
//! Input: one byte choosing the topic (even) or the queue (odd), the payload length (4 bytes,
//! little-endian; a topic's at most 256 KiB, as the buffer is allocated), then the ring
//! header's bytes or eight little-endian `u64` params.
//!
//! Checks: nothing panics; an accepted layout fits in the payload, its parts follow each other
//! in order without overlapping, aligned as the protocols need, and the data slots fill it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmbus_core::fuzzing::{queue_layout, ring_layout, RING_HEADER_SIZE};
use shmbus_core::wire::queue::{SLOTS_OFFSET, SLOT_ALIGN, SLOT_ENTRY_SIZE};

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let len = u32::from_le_bytes(data[1..5].try_into().unwrap()) as usize;
    let rest = &data[5..];
    if data[0] % 2 == 0 {
        let len = len % (256 * 1024 + 1);
        let Ok(l) = ring_layout(rest, len) else {
            return;
        };
        let c = &l.config;
        assert!(l.size <= len && RING_HEADER_SIZE <= len);
        assert_eq!(l.entries, RING_HEADER_SIZE);
        assert!(l.entries < l.states && l.states <= l.stamps);
        assert!(l.stamps <= l.subscribers && l.subscribers < l.publishers);
        assert!(l.publishers < l.data && l.data <= l.size);
        assert!(l.states % 64 == 0 && l.stamps % 64 == 0 && l.subscribers % 64 == 0);
        assert!(l.data % 128 == 0);
        assert!(c.capacity > 0 && c.max_subscribers > 0 && c.max_publishers > 0);
        assert!(c.slot_size > 0 && c.slot_size % 64 == 0 && c.max_held > 0);
        assert!(l.slots >= c.capacity, "fewer slots than ring entries");
        let states_end = l.states + l.slots as usize * 8;
        assert!(states_end <= l.stamps);
        if c.timestamps {
            assert!(l.stamps + l.slots as usize * 8 <= l.subscribers);
        }
        let slots = (l.slots as usize)
            .checked_mul(c.slot_size as usize)
            .unwrap();
        assert_eq!(l.data.checked_add(slots), Some(l.size));
    } else {
        let mut p = [0u64; 8];
        for (w, c) in p.iter_mut().zip(rest.chunks_exact(8)) {
            *w = u64::from_le_bytes(c.try_into().unwrap());
        }
        let Ok(l) = queue_layout(&p, len) else {
            return;
        };
        let c = &l.config;
        assert!(l.size <= len);
        let cap = c.capacity as usize;
        assert!(cap > 0 && c.rows > 0 && c.max_deliveries > 0);
        assert!(c.slot_size > 0 && c.slot_size as usize % SLOT_ALIGN == 0);
        assert_eq!(l.ready, SLOTS_OFFSET + cap * SLOT_ENTRY_SIZE);
        assert_eq!(l.free, l.ready + cap * 4);
        assert_eq!(l.rows, l.free + cap * 4);
        assert!(l.rows + c.rows as usize * 4 <= l.data && l.data % SLOT_ALIGN == 0);
        assert_eq!(l.data + cap * c.slot_size as usize, l.size);
        assert_eq!(u64::from(c.capacity), p[0]);
    }
});
