//! Unit tests of the ring protocol on the heap.
use super::*;
use crate::futex::Futex;

fn cfg(capacity: u32, overflow: Overflow) -> RingConfig {
    RingConfig {
        capacity,
        slot_size: 8,
        max_subscribers: 2,
        max_publishers: 1,
        max_held: 1,
        overflow,
        timestamps: false,
        inline: 0,
    }
}

#[test]
fn publish_times_travel_with_the_message_only_when_asked_for() {
    let off = HeapRing::new(cfg(4, Overflow::Overwrite)).unwrap();
    let on = HeapRing::new(RingConfig {
        timestamps: true,
        ..cfg(4, Overflow::Overwrite)
    })
    .unwrap();
    assert_eq!(off.ring().layout().stamps, off.ring().layout().subscribers);
    assert!(on.ring().layout().subscribers > on.ring().layout().stamps);
    for (h, want) in [(&off, None), (&on, Some(1234))] {
        let r = h.ring();
        let mut hint = 0;
        let mut cursor = r.join_subscriber(0, 1, 0);
        let s = r.loan(0, &mut hint).unwrap();
        r.set_stamp(s, 1234);
        // SAFETY: single-threaded test: we have publish rights and the loan of `s`.
        unsafe { r.publish(s, &Futex) };
        match r.try_acquire(0, &mut cursor, &Futex).unwrap() {
            Acquired::Message { slot, .. } => {
                assert_eq!(r.stamp_of(slot), want);
                r.release(0, slot);
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

fn send(r: &Ring, hint: &mut u32, v: u64) {
    let s = r.loan(0, hint).expect("free slot");
    // SAFETY: we hold the loan of `s`; the slot is 64 bytes, aligned.
    unsafe { r.slot_ptr(s).cast::<u64>().as_ptr().write(v) };
    // SAFETY: single-threaded test: we have publish rights.
    let (_, freed) = unsafe { r.publish(s, &Futex) };
    if let Some(f) = freed {
        *hint = f;
    }
}

fn recv(r: &Ring, k: u32, cursor: &mut u64) -> Result<Option<u64>, u64> {
    match r.try_acquire(k, cursor, &Futex).unwrap() {
        Acquired::Message { slot, .. } => {
            // SAFETY: we hold `slot`.
            let v = unsafe { r.slot_ptr(slot).cast::<u64>().as_ptr().read() };
            r.release(k, slot);
            Ok(Some(v))
        }
        Acquired::Empty => Ok(None),
        Acquired::Lagged { skipped } => Err(skipped),
    }
}

#[test]
fn room_cache_is_a_lower_bound_until_a_subscriber_joins() {
    let h = HeapRing::new(cfg(2, Overflow::BackPressure)).unwrap();
    let r = h.ring();
    let mut hint = 0;
    let mut cache = RoomCache::new();
    let mut c0 = r.join_subscriber(0, 1, 0);
    assert!(r.has_room_cached(&mut cache));
    send(r, &mut hint, 1);
    send(r, &mut hint, 2);
    assert!(
        !r.has_room_cached(&mut cache),
        "subscriber 0 has read nothing"
    );
    assert!(r.is_full());
    assert_eq!(recv(r, 0, &mut c0), Ok(Some(1)));
    assert_eq!(recv(r, 0, &mut c0), Ok(Some(2)));
    assert!(
        r.has_room_cached(&mut cache),
        "refilled: subscriber 0 is at 2"
    );
    // A late joiner that wants both messages lowers the minimum: the cache must notice.
    let _c1 = r.join_subscriber(1, 2, 2);
    assert!(!r.has_room_cached(&mut cache));
    assert!(r.is_full());
}

#[test]
fn layout_is_aligned_and_bounded() {
    let l = RingLayout::new(cfg(8, Overflow::Overwrite)).unwrap();
    assert_eq!(l.data % 128, 0);
    // Small slots: a publisher may have BATCH_LOANS loans (the batch reserve).
    assert_eq!(l.slots, 8 + BATCH_LOANS + 2 + 1);
    assert_eq!(l.size, l.data + l.slots as usize * 64);
    assert!(RingLayout::new(cfg(0, Overflow::Overwrite)).is_err());
    // Above BATCH_SLOT_MAX a publisher has one loan.
    let big = RingLayout::new(RingConfig {
        slot_size: BATCH_SLOT_MAX + 1,
        ..cfg(8, Overflow::Overwrite)
    })
    .unwrap();
    assert_eq!(big.slots, 8 + 1 + 2 + 1);
}

#[test]
fn in_order_and_lag() {
    let h = HeapRing::new(cfg(4, Overflow::Overwrite)).unwrap();
    let r = h.ring();
    let mut hint = 0;
    let mut c = r.join_subscriber(0, 1, 0);
    assert_eq!(recv(r, 0, &mut c), Ok(None));
    for v in 0..3 {
        send(r, &mut hint, v);
    }
    assert_eq!(recv(r, 0, &mut c), Ok(Some(0)));
    for v in 3..10 {
        send(r, &mut hint, v);
    }
    // 10 published, capacity 4: 6..=9 remain; we were at 1.
    assert_eq!(recv(r, 0, &mut c), Err(5));
    for v in 6..10 {
        assert_eq!(recv(r, 0, &mut c), Ok(Some(v)));
    }
    assert_eq!(recv(r, 0, &mut c), Ok(None));
    assert_eq!(r.counter_value(counter::LAGGED), 5);
    // Every slot but the four in the ring is free again.
    let free = (0..r.layout().slots)
        .filter(|&s| r.state(s).load(Ordering::Relaxed) == 0)
        .count();
    assert_eq!(free as u32, r.layout().slots - 4);
}

#[test]
fn held_slot_is_never_reused() {
    let h = HeapRing::new(cfg(2, Overflow::Overwrite)).unwrap();
    let r = h.ring();
    let mut hint = 0;
    let mut c = r.join_subscriber(0, 1, 0);
    send(r, &mut hint, 7);
    let Acquired::Message { slot, .. } = r.try_acquire(0, &mut c, &Futex).unwrap() else {
        panic!()
    };
    for v in 0..20 {
        send(r, &mut hint, v);
    }
    // SAFETY: still held.
    assert_eq!(unsafe { r.slot_ptr(slot).cast::<u64>().as_ptr().read() }, 7);
    r.release(0, slot);
    assert_eq!(r.state(slot).load(Ordering::Relaxed), 0);
}

#[test]
fn history_and_backpressure() {
    let h = HeapRing::new(cfg(4, Overflow::BackPressure)).unwrap();
    let r = h.ring();
    let mut hint = 0;
    assert!(!r.is_full(), "no subscriber: never full");
    for v in 0..6 {
        send(r, &mut hint, v);
    }
    let mut c = r.join_subscriber(1, 1, 2);
    assert_eq!(recv(r, 1, &mut c), Ok(Some(4)));
    for v in 6..9 {
        assert!(!r.is_full());
        send(r, &mut hint, v);
    }
    assert!(r.is_full());
    assert_eq!(r.laggards(), vec![1]);
    assert_eq!(recv(r, 1, &mut c), Ok(Some(5)));
    assert!(!r.is_full());
    r.reclaim_subscriber(1, &Futex);
    assert!(!r.is_full());
}

#[test]
fn repair_after_death_mid_publish() {
    let h = HeapRing::new(cfg(4, Overflow::Overwrite)).unwrap();
    let r = h.ring();
    let mut hint = 0;
    let mut c = r.join_subscriber(0, 1, 0);
    send(r, &mut hint, 1);
    // A publisher dies after marking its slot RING and invalidating the entry.
    let s = r.loan(0, &mut hint).unwrap();
    r.state(s).store(RING_BIT, Ordering::Release);
    r.entry(1).seq.store(SEQ_INVALID, Ordering::Relaxed);
    // SAFETY: single-threaded: nobody else publishes.
    assert!(unsafe { r.repair(&Futex) });
    assert_eq!(r.counter_value(counter::LOST), 1);
    assert_eq!(
        r.state(s).load(Ordering::Relaxed),
        0,
        "orphan RING reference dropped"
    );
    send(r, &mut hint, 2);
    assert_eq!(recv(r, 0, &mut c), Ok(Some(1)));
    assert_eq!(recv(r, 0, &mut c), Ok(Some(2)), "the hole is skipped");
    // A publisher that dies holding a loan gives it back through reclaim.
    let s = r.loan(0, &mut hint).unwrap();
    assert_eq!(r.reclaim_publisher(0), 1);
    assert_eq!(r.state(s).load(Ordering::Relaxed), 0);
}

#[test]
fn corrupt_slot_index_is_an_error() {
    let h = HeapRing::new(cfg(4, Overflow::Overwrite)).unwrap();
    let r = h.ring();
    let mut c = r.join_subscriber(0, 1, 0);
    r.entry(0).slot.store(999, Ordering::Relaxed);
    r.entry(0).seq.store(1, Ordering::Release);
    assert!(r.try_acquire(0, &mut c, &Futex).is_err());
}

#[test]
fn entries_carry_the_first_inline_bytes_of_their_message() {
    let plain = HeapRing::new(cfg(4, Overflow::Overwrite)).unwrap();
    let inl = HeapRing::new(RingConfig {
        inline: 12,
        ..cfg(4, Overflow::Overwrite)
    })
    .unwrap();
    assert_eq!(plain.ring().layout().entry_size, 16);
    assert_eq!(inl.ring().layout().entry_size, 64);
    assert_eq!(
        inl.ring().layout().entries % 64,
        0,
        "an entry per cache line"
    );
    assert!(RingLayout::new(RingConfig {
        inline: INLINE_MAX + 1,
        ..cfg(4, Overflow::Overwrite)
    })
    .is_err());
    let r = inl.ring();
    let mut hint = 0;
    let mut cursor = r.join_subscriber(0, 1, 0);
    // Six messages through four entries: every entry is rewritten, and its words with it.
    for v in 0..6u64 {
        let s = r.loan(0, &mut hint).unwrap();
        // SAFETY: we hold the loan of `s`; slots are 64 bytes, aligned.
        unsafe {
            let p = r.slot_ptr(s).cast::<u64>().as_ptr();
            p.write(v * 1000 + 7);
            p.add(1).write(u64::MAX - v);
        }
        // SAFETY: single-threaded test: we have publish rights and the loan of `s`.
        let (_, freed) = unsafe { r.publish(s, &Futex) };
        if let Some(f) = freed {
            hint = f;
        }
        let mut buf = [0u8; 12];
        let read = r
            .try_read(0, &mut cursor, true, None, |_, words| {
                assert_eq!(words.len(), 2, "12 bytes are two words");
                Ring::copy_inline(words, &mut buf);
            })
            .unwrap();
        assert!(matches!(read, Read::Message { seq, .. } if seq == v));
        assert_eq!(buf[..8], (v * 1000 + 7).to_ne_bytes());
        assert_eq!(buf[8..], (u64::MAX - v).to_ne_bytes()[..4]);
    }
    // A config word that lies about the inline size is refused at attach.
    // SAFETY: the ring's memory is ours (single-threaded test), header at its start.
    unsafe {
        let h = inl.ring().header.as_ptr();
        (*h).inline = u64::from(INLINE_MAX) + 8;
        let err = Ring::read_layout(inl.ring().header.cast(), inl.ring().layout().size);
        assert!(err.is_err(), "inline of 56 bytes accepted");
        (*h).inline = 12;
    }
}
