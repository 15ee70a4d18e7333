//! One `WaitSet` waiting on topics, queues and events fed by other processes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use shmbus::{
    Event, EventMode, Overflow, QueueBuilder, Readiness, RecvError, Subscriber, Topic, WaitSet,
};
use shmbus_tests::{scope, Msg, BULK, STEP};

const CAPACITY: u32 = 64;

fn topic(name: &str) -> Topic {
    Topic::builder(name)
        .capacity(CAPACITY)
        .overflow(Overflow::BackPressure)
}

fn publisher_args(name: &str, count: u64) -> Vec<String> {
    [
        "publish",
        "--topic",
        name,
        "--capacity",
        &CAPACITY.to_string(),
        "--overflow",
        "back-pressure",
        "--count",
        &count.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Takes every message `sub` has now, checking each is intact and the next of its producer.
fn drain(sub: &Subscriber<Msg>, next: &mut HashMap<u64, u64>) -> u64 {
    let mut n = 0;
    loop {
        match sub.try_recv() {
            Ok(m) => {
                assert!(m.is_intact(), "torn message {:?}", *m);
                let want = next.entry(m.producer).or_insert(0);
                assert_eq!(
                    m.index, *want,
                    "producer {} skipped or repeated",
                    m.producer
                );
                *want += 1;
                n += 1;
            }
            Err(RecvError::Empty | RecvError::Disconnected) => return n,
            Err(e) => panic!("receive failed: {e}"),
        }
    }
}

#[test]
fn one_set_gets_every_message_of_sixteen_publisher_processes() {
    const TOPICS: usize = 16;
    const EACH: u64 = 2000;
    let mut s = scope!("ws-sixteen");
    let names: Vec<String> = (0..TOPICS).map(|_| s.name()).collect();
    let subs: Vec<Subscriber<Msg>> = names
        .iter()
        .map(|n| topic(n).subscriber::<Msg>().unwrap())
        .collect();
    let mut set = WaitSet::new().unwrap();
    let keys: Vec<_> = subs.iter().map(|sub| set.attach(sub).unwrap()).collect();
    let mut peers: Vec<_> = names
        .iter()
        .map(|n| {
            let args = publisher_args(n, EACH);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            s.spawn("publisher", &args)
        })
        .collect();

    let start = Instant::now();
    let mut got = [0u64; TOPICS];
    let mut next = vec![HashMap::new(); TOPICS];
    let mut disconnected = [false; TOPICS];
    let mut wakes = 0u64;
    while !disconnected.iter().all(|&d| d) {
        assert!(
            start.elapsed() < BULK,
            "stuck: got {got:?}, disconnected {disconnected:?}"
        );
        let ready = set.wait_timeout(STEP).unwrap();
        assert!(!ready.is_empty(), "nothing within {STEP:?}: got {got:?}");
        wakes += 1;
        for (key, how) in &ready {
            let i = keys.iter().position(|&k| k == key).unwrap();
            got[i] += drain(&subs[i], &mut next[i]);
            if how == Readiness::Disconnected {
                assert_eq!(got[i], EACH, "topic {i} disconnected early");
                disconnected[i] = true;
                set.detach(key);
            }
        }
    }
    assert_eq!(got, [EACH; TOPICS]);
    for p in &mut peers {
        assert!(p.wait(STEP).success());
    }
    println!(
        "{} messages from {TOPICS} processes in {:?}, {wakes} wakes",
        EACH * TOPICS as u64,
        start.elapsed()
    );
}

#[test]
fn a_publisher_killed_while_the_set_sleeps_is_reported_disconnected() {
    let mut s = scope!("ws-kill");
    let (name, idle) = (s.name(), s.name());
    let sub = topic(&name).subscriber::<Msg>().unwrap();
    let other = topic(&idle).subscriber::<Msg>().unwrap();
    let mut set = WaitSet::new().unwrap();
    let key = set.attach(&sub).unwrap();
    let idle_key = set.attach(&other).unwrap();
    let mut args = publisher_args(&name, 1);
    args.push("--hold".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = s.spawn("publisher", &args);
    p.expect("done", STEP);
    let ready = set.wait_timeout(STEP).unwrap();
    assert_eq!(ready.readiness(key), Some(Readiness::Ready));
    assert_eq!(sub.try_recv().unwrap().index, 0);

    // Kill it from another thread once the set is asleep (nothing else is coming).
    let pid = rustix::process::Pid::from_raw(p.pid() as i32).unwrap();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        Instant::now()
    });
    let ready = set.wait_timeout(STEP).unwrap();
    let seen = Instant::now();
    let killed = killer.join().unwrap();
    assert_eq!(
        ready.readiness(key),
        Some(Readiness::Disconnected),
        "{ready:?}"
    );
    assert!(
        !ready.contains(idle_key),
        "the other topic has nothing: {ready:?}"
    );
    let took = seen.duration_since(killed);
    assert!(
        took < Duration::from_millis(500),
        "reported {took:?} after the kill"
    );
    println!("disconnected reported {took:?} after SIGKILL");
    assert!(!p.wait(STEP).success());
}

#[test]
fn an_event_set_by_another_process_wakes_the_set() {
    let mut s = scope!("ws-event");
    let (topic_name, auto, manual) = (s.name(), s.name(), s.name());
    let sub = topic(&topic_name).subscriber::<Msg>().unwrap();
    let auto = Event::open_or_create(&auto, EventMode::AutoReset, false).unwrap();
    let manual = Event::open_or_create(&manual, EventMode::ManualReset, false).unwrap();
    let mut set = WaitSet::new().unwrap();
    set.attach(&sub).unwrap();
    let auto_key = set.attach(&auto).unwrap();
    let manual_key = set.attach(&manual).unwrap();
    for (ev, key, name) in [
        (&auto, auto_key, auto.name()),
        (&manual, manual_key, manual.name()),
    ] {
        let start = Instant::now();
        let mut p = s.spawn("setter", &["event-set", "--name", name]);
        let ready = set.wait_timeout(STEP).unwrap();
        assert_eq!(ready.iter().collect::<Vec<_>>(), [(key, Readiness::Ready)]);
        assert!(start.elapsed() < STEP);
        assert!(p.wait(STEP).success());
        if std::ptr::eq(ev, &auto) {
            assert!(!auto.is_set(), "the wait consumed the auto-reset set");
        } else {
            assert!(manual.is_set(), "a manual-reset event stays set");
        }
    }
}

#[test]
fn a_queue_item_put_by_another_process_wakes_the_set() {
    let mut s = scope!("ws-queue");
    let (topic_name, qname) = (s.name(), s.name());
    let sub = topic(&topic_name).subscriber::<Msg>().unwrap();
    let q = QueueBuilder::new(&qname)
        .capacity(8)
        .at_most_once()
        .open::<Msg>()
        .unwrap();
    let mut set = WaitSet::new().unwrap();
    set.attach(&sub).unwrap();
    let key = set.attach(&q).unwrap();
    assert!(set
        .wait_timeout(Duration::from_millis(20))
        .unwrap()
        .is_empty());
    let mut p = s.spawn(
        "producer",
        &[
            "queue-put",
            "--name",
            &qname,
            "--capacity",
            "8",
            "--count",
            "1",
            "--producer",
            "7",
        ],
    );
    let ready = set.wait_timeout(STEP).unwrap();
    assert_eq!(ready.iter().collect::<Vec<_>>(), [(key, Readiness::Ready)]);
    let item = q.try_get().unwrap();
    assert_eq!((item.producer, item.index), (7, 0));
    assert!(p.wait(STEP).success());
    q.close().unwrap();
    assert_eq!(
        set.wait_timeout(STEP).unwrap().readiness(key),
        Some(Readiness::Disconnected)
    );
}

#[test]
fn detaching_while_publishes_are_in_flight_loses_nothing_for_the_others() {
    const EACH: u64 = 3000;
    let mut s = scope!("ws-detach");
    let (kept_name, churned_name) = (s.name(), s.name());
    let kept = topic(&kept_name).subscriber::<Msg>().unwrap();
    let churned = Topic::builder(&churned_name).subscriber::<Msg>().unwrap();
    let mut set = WaitSet::new().unwrap();
    let kept_key = set.attach(&kept).unwrap();
    let args = publisher_args(&kept_name, EACH);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p1 = s.spawn("kept", &args);
    let mut p2 = s.spawn(
        "churned",
        &[
            "publish",
            "--topic",
            &churned_name,
            "--forever",
            "--interval-us",
            "20",
        ],
    );
    p2.expect("ready", STEP);

    let start = Instant::now();
    let mut next = HashMap::new();
    let (mut got, mut churns) = (0, 0u64);
    let mut churn_key = None;
    loop {
        assert!(start.elapsed() < BULK, "stuck at {got} of {EACH}");
        // Attach or detach the busy topic on every round, while its publisher publishes.
        match churn_key.take() {
            Some(k) => assert!(set.detach(k)),
            None => churn_key = Some(set.attach(&churned).unwrap()),
        }
        churns += 1;
        let ready = set.wait_timeout(STEP).unwrap();
        assert!(!ready.is_empty());
        if let Some(how) = ready.readiness(kept_key) {
            got += drain(&kept, &mut next);
            if how == Readiness::Disconnected {
                break;
            }
        }
        while churned.try_recv().is_ok() {}
    }
    assert_eq!(got, EACH);
    assert!(p1.wait(STEP).success());
    p2.kill();
    println!("{EACH} messages kept while the other topic was attached and detached {churns} times");
}

#[test]
fn serde_and_array_subscribers_and_queues_can_be_waited_on_too() {
    let mut s = scope!("ws-kinds");
    let (serde_name, array_name, sq_name, aq_name) = (s.name(), s.name(), s.name(), s.name());
    let serde_sub = Topic::builder(&serde_name)
        .serde_subscriber::<String>()
        .unwrap();
    let mut serde_pub = Topic::builder(&serde_name)
        .serde_publisher::<String>()
        .unwrap();
    let frames = Topic::builder(&array_name)
        .array_subscriber::<u64>()
        .unwrap();
    let mut camera = Topic::builder(&array_name)
        .array_publisher::<u64>()
        .unwrap();
    let sq = QueueBuilder::new(&sq_name).open_serde::<String>().unwrap();
    let aq = QueueBuilder::new(&aq_name)
        .capacity(2)
        .array_bytes(64)
        .open_arrays::<u64>()
        .unwrap();
    let mut set = WaitSet::new().unwrap();
    let keys = [
        set.attach(&serde_sub).unwrap(),
        set.attach(&frames).unwrap(),
        set.attach(&sq).unwrap(),
        set.attach(&aq).unwrap(),
    ];
    assert!(set
        .wait_timeout(Duration::from_millis(10))
        .unwrap()
        .is_empty());
    serde_pub.send("pose".to_owned()).unwrap();
    assert_eq!(
        set.wait_timeout(STEP)
            .unwrap()
            .iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>(),
        [keys[0]]
    );
    assert_eq!(serde_sub.try_recv().unwrap(), "pose");
    camera.send(&[2, 2], &[1u8, 2, 3, 4], 9).unwrap();
    assert_eq!(
        set.wait_timeout(STEP)
            .unwrap()
            .iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>(),
        [keys[1]]
    );
    assert_eq!(*frames.try_recv().unwrap().meta(), 9);
    sq.put("job".to_owned()).unwrap();
    let mut item = aq.loan::<u8>(&[8]).unwrap();
    item.parts_mut().0.fill(5);
    item.commit().unwrap();
    let ready = set.wait_timeout(STEP).unwrap();
    assert_eq!(
        ready.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        [keys[2], keys[3]]
    );
    assert_eq!(sq.try_get().unwrap(), "job");
    assert_eq!(aq.try_receive().unwrap().as_slice::<u8>().unwrap(), [5; 8]);
    assert!(set
        .wait_timeout(Duration::from_millis(10))
        .unwrap()
        .is_empty());
}
