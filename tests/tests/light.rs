//! Light publishes (decision 47): a topic's only publisher drops its fence while nobody
//! sleeps, sleepers make a heavy barrier instead, and the slots it evicts in chunks all come
//! back, whether it leaves or is killed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shmbus::{Overflow, RecvError, Topic};
use shmbus_core::layout::TypeInfo;
use shmbus_core::name::Name;
use shmbus_core::topic::{RawPublisher, RawTopic, TopicOptions};
use shmbus_tests::{scope, Msg, STEP};

/// Opens `name` raw, to look at its ring.
fn raw<T: bytemuck::Pod>(name: &str) -> Arc<RawTopic> {
    RawTopic::open(
        &Name::new(name).unwrap(),
        &TypeInfo::pod::<T>(),
        &TopicOptions::default(),
    )
    .expect("raw open")
}

/// Slots nobody uses: neither named by an entry, nor held, nor on loan. Joins as the topic's
/// publisher to ask (which repairs what a dead publisher left).
fn free_slots(raw: &Arc<RawTopic>) -> usize {
    let p = RawPublisher::new(Arc::clone(raw)).expect("publisher row");
    (0..raw.ring().layout().slots)
        .filter(|&s| p.slot_is_free(s))
        .count()
}

/// The mode follows the subscribers: light after a run of publishes that found nobody asleep,
/// fenced again as soon as a publish finds a sleeper (woken all the same), and off when the
/// publisher leaves, with every slot it had still to evict given back.
#[test]
fn publisher_goes_light_while_nobody_sleeps_and_fences_for_a_sleeper() {
    let mut s = scope!("light");
    let name = s.name();
    let topic = Topic::builder(&name)
        .capacity(16)
        .overflow(Overflow::Overwrite);
    let mut publisher = topic.publisher::<u64>().expect("publisher");
    let sub = topic.subscriber::<u64>().expect("subscriber");
    let raw = raw::<u64>(&name);
    let ring = raw.ring();
    let mut next = 0u64;
    let mut send = |n: u64| {
        for _ in 0..n {
            publisher.send(next).expect("send");
            next += 1;
        }
    };
    send(10);
    assert!(!ring.publishes_light(), "a publisher starts fenced");
    send(100);
    assert!(
        ring.publishes_light(),
        "100 publishes in a row found nobody asleep"
    );
    // A receive that sleeps, woken by a light publish, until a publish finds it counted in
    // (the receive counts out for a moment between its 50 ms sleeps, so a publish may land
    // in that gap: then the sleeper sees it after its heavy barrier, and we try again).
    let mut sub = sub;
    let mut expected = 110;
    let mut attempts = 0;
    while ring.publishes_light() {
        attempts += 1;
        assert!(attempts <= 20, "no publish found the sleeper counted in");
        loop {
            match sub.try_recv_copy() {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Empty) => break,
                Err(e) => panic!("{e:?}"),
            }
        }
        let (last, back) = std::thread::scope(|t| {
            let waiter = t.spawn(move || (sub.recv_copy_timeout(STEP), sub));
            // Past the receive's spin phase: it is asleep, counted in.
            let deadline = Instant::now() + STEP;
            while ring.subscribers_asleep() == 0 {
                assert!(Instant::now() < deadline, "the receive never slept");
                std::thread::sleep(Duration::from_millis(1));
            }
            send(1);
            waiter.join().expect("waiter")
        });
        sub = back;
        assert_eq!(last, Ok(expected), "the sleeper got the light publish");
        expected += 1;
    }
    send(100);
    assert!(ring.publishes_light(), "and light again once nobody sleeps");
    drop(publisher);
    assert!(
        !ring.publishes_light(),
        "a publisher that leaves clears the flag"
    );
    let slots = ring.layout().slots as usize;
    assert_eq!(
        free_slots(&raw),
        slots - 16,
        "every slot but the 16 the entries name is free: the pending evictions came back"
    );
    drop((sub, raw));
    s.assert_gone(&name);
}

/// A light publisher SIGKILLed with evictions pending: the next publisher's repair finds the
/// slots no entry names, and the flag is cleared.
#[test]
fn light_publisher_killed_with_evictions_pending_leaves_no_slot_behind() {
    let mut s = scope!("lightkill");
    let name = s.name();
    let sub = Topic::builder(&name)
        .overflow(Overflow::Overwrite)
        .capacity(8)
        .subscriber::<Msg>()
        .expect("subscriber");
    let raw = raw::<Msg>(&name);
    for round in 0..4 {
        let mut publ = s.spawn(
            &format!("publisher {round}"),
            &["publish", "--forever", "--topic", &name],
        );
        publ.expect("ready", STEP);
        // Polled, never asleep: the publisher goes light and stays light.
        let deadline = Instant::now() + STEP;
        let mut got = 0;
        while got < 2000 + round * 37 {
            assert!(Instant::now() < deadline, "round {round}: too slow");
            match sub.try_recv() {
                Ok(m) => {
                    assert!(m.is_intact(), "{m:?}");
                    got += 1;
                }
                Err(RecvError::Empty | RecvError::Lagged(_)) => std::hint::spin_loop(),
                Err(e) => panic!("round {round}: {e:?}"),
            }
        }
        assert!(raw.ring().publishes_light(), "round {round}: light");
        publ.kill();
        let slots = raw.ring().layout().slots as usize;
        // Every slot but those the 8 entries name; one fewer named if the kill came in the
        // middle of an entry's rewrite (the repair makes it a hole: that message is lost).
        let free = free_slots(&raw);
        assert!(
            free == slots - 8 || free == slots - 7,
            "round {round}: {free} of {slots} slots free; a slot to evict was left behind"
        );
        assert!(
            !raw.ring().publishes_light(),
            "the next publisher cleared it"
        );
    }
    drop((sub, raw));
    s.assert_gone(&name);
}

/// A publisher process that goes light and fenced again as its subscriber keeps up, falls
/// behind and sleeps: every message the subscriber gets is intact and in order, and it is
/// woken each time it sleeps (a lost wake-up would stall it until its 50 ms re-check, and
/// the run's deadline bounds those).
#[test]
fn sleeping_subscriber_follows_a_publisher_switching_modes() {
    let mut s = scope!("lightwake");
    let name = s.name();
    let sub = Topic::builder(&name)
        .overflow(Overflow::Overwrite)
        .capacity(64)
        .subscriber::<Msg>()
        .expect("subscriber");
    let raw = raw::<Msg>(&name);
    let mut publ = s.spawn(
        "publisher",
        &[
            "publish",
            "--forever",
            "--interval-us",
            "20",
            "--topic",
            &name,
        ],
    );
    let producer = publ.expect("ready", STEP).num("producer");
    let mut last = None;
    let mut seen_light = false;
    let deadline = Instant::now() + STEP;
    for i in 0..20_000u32 {
        if i % 1000 == 999 {
            // Fall behind for a moment: the publisher finds nobody asleep and goes light;
            // the receives after it catch up and sleep while it is.
            seen_light |= raw.ring().publishes_light();
            std::thread::sleep(Duration::from_millis(10));
            seen_light |= raw.ring().publishes_light();
        }
        let m = match sub.recv_timeout(STEP) {
            Ok(m) => m,
            Err(RecvError::Lagged(_)) => continue,
            Err(e) => panic!("message {i}: {e:?}"),
        };
        assert!(m.is_intact() && m.producer == producer, "{m:?}");
        if let Some(prev) = last {
            assert!(m.index > prev, "{} after {prev}", m.index);
        }
        last = Some(m.index);
        assert!(
            Instant::now() < deadline,
            "20000 messages took over {STEP:?}"
        );
    }
    assert!(seen_light, "the publisher never went light");
    publ.kill();
    drop((sub, raw));
    s.assert_gone(&name);
}
