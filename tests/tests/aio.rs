//! Async receives (feature `async`) fed by other processes: tokio tasks and a plain
//! `futures` executor, one waiter thread per process, cancel safety, dead peers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use shmbus::{Event, EventMode, GetError, Overflow, QueueBuilder, RecvError, Topic};
use shmbus_tests::{scope, Msg, Peer, Scope, BULK, STEP};

const CAPACITY: u32 = 64;

fn topic(name: &str) -> Topic {
    Topic::builder(name)
        .capacity(CAPACITY)
        .overflow(Overflow::BackPressure)
}

fn spawn_publisher(s: &mut Scope, name: &str, count: u64, extra: &[&str]) -> Peer {
    let (capacity, count) = (CAPACITY.to_string(), count.to_string());
    let mut args = vec![
        "publish",
        "--topic",
        name,
        "--capacity",
        &capacity,
        "--overflow",
        "back-pressure",
        "--count",
        &count,
    ];
    args.extend_from_slice(extra);
    s.spawn("publisher", &args)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap()
}

/// Threads of this process now.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Checks a message is intact and the next of its producer.
fn check(m: &Msg, next: &mut HashMap<u64, u64>) {
    assert!(m.is_intact(), "torn message {m:?}");
    let want = next.entry(m.producer).or_insert(0);
    assert_eq!(
        m.index, *want,
        "producer {} skipped or repeated",
        m.producer
    );
    *want += 1;
}

#[test]
fn sixteen_tokio_tasks_get_every_message_of_sixteen_publisher_processes() {
    const TOPICS: usize = 16;
    const EACH: u64 = 2000;
    let mut s = scope!("aio-sixteen");
    let names: Vec<String> = (0..TOPICS).map(|_| s.name()).collect();
    let rt = runtime();
    let before = threads();
    let tasks: Vec<_> = names
        .iter()
        .map(|n| {
            let mut sub = topic(n).subscriber::<Msg>().unwrap();
            rt.spawn(async move {
                let mut next = HashMap::new();
                let mut got = 0u64;
                loop {
                    match sub.recv_async().await {
                        Ok(m) => {
                            check(&m, &mut next);
                            got += 1;
                        }
                        Err(RecvError::Disconnected) => return got,
                        Err(e) => panic!("receive failed: {e}"),
                    }
                }
            })
        })
        .collect();
    // Once they all wait (nothing is published yet): they wait through one thread, not one
    // each. Counted before the publishers start: each peer process has two threads of the
    // test harness here reading its output.
    std::thread::sleep(Duration::from_millis(100));
    let during = threads();
    assert!(
        during <= before + 2,
        "{before} threads before the tasks, {during} while 16 tasks wait"
    );
    let mut peers: Vec<Peer> = names
        .iter()
        .map(|n| spawn_publisher(&mut s, n, EACH, &[]))
        .collect();
    let start = Instant::now();
    let got: Vec<u64> = rt.block_on(async {
        let mut got = Vec::new();
        for t in tasks {
            got.push(tokio::time::timeout(BULK, t).await.expect("stuck").unwrap());
        }
        got
    });
    assert_eq!(got, vec![EACH; TOPICS]);
    for p in &mut peers {
        assert!(p.wait(STEP).success());
    }
    println!(
        "{} messages from {TOPICS} processes to {TOPICS} tokio tasks in {:?}; threads {before} -> {during}",
        EACH * TOPICS as u64,
        start.elapsed()
    );
}

#[test]
fn a_publisher_killed_while_a_task_awaits_ends_it_with_disconnected() {
    let mut s = scope!("aio-kill");
    let name = s.name();
    let mut sub = topic(&name).subscriber::<Msg>().unwrap();
    let mut p = spawn_publisher(&mut s, &name, 1, &["--hold"]);
    p.expect("done", STEP);
    let rt = runtime();
    rt.block_on(async {
        let m = tokio::time::timeout(STEP, sub.recv_async()).await.unwrap();
        assert_eq!(m.unwrap().index, 0);
    });
    let pid = rustix::process::Pid::from_raw(p.pid() as i32).unwrap();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        Instant::now()
    });
    let r = rt.block_on(async { tokio::time::timeout(STEP, sub.recv_async()).await });
    let seen = Instant::now();
    let killed = killer.join().unwrap();
    assert!(
        matches!(r, Ok(Err(RecvError::Disconnected))),
        "{:?}",
        r.map(|r| r.map(|m| *m))
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
fn receives_cancelled_by_timeouts_lose_nothing() {
    const COUNT: u64 = 300;
    let mut s = scope!("aio-cancel");
    let name = s.name();
    let mut sub = topic(&name).subscriber::<Msg>().unwrap();
    // A message every 3 ms, timeouts of 1 to 2 ms (tokio's timers have a millisecond's grain):
    // one or two receives are cancelled per message, some just as it lands.
    let mut p = spawn_publisher(&mut s, &name, COUNT, &["--interval-us", "3000"]);
    let rt = runtime();
    let (got, cancelled) = rt.block_on(async {
        let mut next = HashMap::new();
        let (mut got, mut cancelled) = (0u64, 0u64);
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < BULK, "stuck after {got} messages");
            // Short timeouts: many receives are dropped half-way, some while a message lands.
            match tokio::time::timeout(Duration::from_millis(1), sub.recv_async()).await {
                Err(_) => cancelled += 1,
                Ok(Ok(m)) => {
                    check(&m, &mut next);
                    got += 1;
                }
                Ok(Err(RecvError::Disconnected)) => return (got, cancelled),
                Ok(Err(e)) => panic!("receive failed: {e}"),
            }
        }
    });
    assert_eq!(got, COUNT);
    assert!(
        cancelled > 0,
        "no receive was cancelled: the test tested nothing"
    );
    assert!(p.wait(STEP).success());
    println!("{got} messages, {cancelled} receives cancelled");
}

#[test]
fn queue_consumers_get_each_item_once_and_a_dead_consumers_items_again() {
    const COUNT: u64 = 2000;
    let mut s = scope!("aio-queue");
    let name = s.name();
    let q = QueueBuilder::new(&name)
        .capacity(16)
        .acknowledged(5)
        .open::<Msg>()
        .unwrap();
    // A consumer process takes two items and dies holding them.
    let mut dying = s.spawn(
        "dying consumer",
        &["queue-get", "--name", &name, "--ack", "5", "--hold", "2"],
    );
    dying.expect("ready", STEP);
    let mut producer = s.spawn(
        "producer",
        &[
            "queue-put",
            "--name",
            &name,
            "--capacity",
            "16",
            "--ack",
            "5",
            "--count",
            &COUNT.to_string(),
            "--producer",
            "3",
        ],
    );
    dying.expect("holding", STEP);
    dying.expect("holding", STEP);
    dying.kill();

    let rt = runtime();
    let consumers: Vec<_> = (0..3)
        .map(|_| {
            let q = QueueBuilder::new(&name)
                .capacity(16)
                .acknowledged(5)
                .open::<Msg>()
                .unwrap();
            rt.spawn(async move {
                let mut seen = Vec::new();
                loop {
                    match q.receive_async().await {
                        Ok(d) => {
                            assert!(d.is_intact());
                            seen.push((d.index, d.deliveries()));
                            d.ack().unwrap();
                        }
                        Err(GetError::Closed) => return seen,
                        Err(e) => panic!("get failed: {e}"),
                    }
                }
            })
        })
        .collect();
    assert!(producer.wait(BULK).success());
    // Everything is in or taken: wait until the queue drained, then close it.
    let start = Instant::now();
    while !q.is_empty() {
        assert!(start.elapsed() < BULK, "the consumers stopped taking");
        std::thread::sleep(Duration::from_millis(5));
    }
    q.close().unwrap();
    let mut all: Vec<(u64, u32)> = rt.block_on(async {
        let mut all = Vec::new();
        for c in consumers {
            all.extend(tokio::time::timeout(BULK, c).await.expect("stuck").unwrap());
        }
        all
    });
    all.sort_unstable();
    let indices: Vec<u64> = all.iter().map(|&(i, _)| i).collect();
    assert_eq!(
        indices,
        (0..COUNT).collect::<Vec<_>>(),
        "lost or doubled items"
    );
    let again = all.iter().filter(|&&(_, d)| d > 1).count();
    assert_eq!(
        again, 2,
        "the dead consumer's two items come again: {all:?}"
    );
}

#[test]
fn an_event_set_by_another_process_wakes_an_awaiting_task() {
    let mut s = scope!("aio-event");
    let name = s.name();
    let event = Event::open_or_create(&name, EventMode::AutoReset, false).unwrap();
    let rt = runtime();
    let waiting = rt.spawn(async move {
        event.wait_async().await;
        assert!(!event.try_wait(), "the wait consumed the set");
        Instant::now()
    });
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    let mut p = s.spawn("setter", &["event-set", "--name", &name]);
    let woke = rt
        .block_on(async { tokio::time::timeout(STEP, waiting).await })
        .expect("not woken")
        .unwrap();
    assert!(woke >= start);
    assert!(p.wait(STEP).success());
}

#[test]
fn two_streams_on_a_futures_executor_merge_two_publisher_processes() {
    const EACH: u64 = 1500;
    let mut s = scope!("aio-streams");
    let (a, b) = (s.name(), s.name());
    let sa = topic(&a).subscriber::<Msg>().unwrap().into_stream();
    let sb = topic(&b).subscriber::<Msg>().unwrap().into_stream();
    let mut peers = [
        spawn_publisher(&mut s, &a, EACH, &[]),
        spawn_publisher(&mut s, &b, EACH, &[]),
    ];
    // No tokio here: `futures`' own executor, on this thread.
    let merged: Vec<Msg> = futures::executor::block_on(
        futures::stream::select(sa, sb)
            .map(|m| m.expect("receive failed"))
            .collect(),
    );
    let mut next = HashMap::new();
    for m in &merged {
        check(m, &mut next);
    }
    assert_eq!(merged.len() as u64, 2 * EACH);
    assert_eq!(next.len(), 2);
    for p in &mut peers {
        assert!(p.wait(STEP).success());
    }
}

#[test]
fn a_task_awaiting_many_kinds_at_once_takes_each_as_it_comes() {
    let mut s = scope!("aio-select");
    let (t, qn, en) = (s.name(), s.name(), s.name());
    let mut sub = topic(&t).subscriber::<Msg>().unwrap();
    let q = QueueBuilder::new(&qn)
        .capacity(8)
        .at_most_once()
        .open::<Msg>()
        .unwrap();
    let stop = Event::open_or_create(&en, EventMode::ManualReset, false).unwrap();
    let mut publisher = spawn_publisher(&mut s, &t, 3, &[]);
    let mut producer = s.spawn(
        "producer",
        &[
            "queue-put",
            "--name",
            &qn,
            "--capacity",
            "8",
            "--count",
            "2",
            "--producer",
            "1",
        ],
    );
    let rt = runtime();
    let (messages, items) = rt.block_on(async {
        let (mut messages, mut items) = (0, 0);
        let start = Instant::now();
        let mut stopping = false;
        loop {
            assert!(
                start.elapsed() < BULK,
                "stuck: {messages} messages, {items} items"
            );
            if messages == 3 && items == 2 && !stopping {
                stopping = true;
                let mut setter = Scope::spawn(&mut s, "setter", &["event-set", "--name", &en]);
                assert!(setter.wait(STEP).success());
            }
            tokio::select! {
                m = sub.recv_async(), if messages < 3 => {
                    assert_eq!(m.unwrap().index, messages);
                    messages += 1;
                }
                i = q.get_async(), if items < 2 => {
                    assert_eq!(i.unwrap().index, items);
                    items += 1;
                }
                () = stop.wait_async() => return (messages, items),
            }
        }
    });
    assert_eq!((messages, items), (3, 2));
    assert!(publisher.wait(STEP).success());
    assert!(producer.wait(STEP).success());
}
