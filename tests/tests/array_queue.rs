//! Work queues of arrays across processes: each array goes to exactly one consumer process,
//! intact and in place; the block of a consumer or producer SIGKILLed while it holds one comes
//! back to the queue (with the array delivered again when acknowledged).
#![forbid(unsafe_code)]

use std::collections::HashMap;

use shmbus::{ArrayQueue, GetError, PutFailure, QueueBuilder};
use shmbus_tests::{array_is_intact, fill_array, scope, Line, Peer, Scope, BULK, STEP};

type Meta = [u64; 2];

/// Every `got` line: (producer, index) → deliveries seen, checking integrity and size.
fn record(lines: &[Line], elements: u64, seen: &mut HashMap<(u64, u64), Vec<u32>>) -> u64 {
    let mut n = 0;
    for l in lines.iter().filter(|l| l.tag == "got") {
        assert_eq!(l.get("intact"), "true", "{}", l.raw);
        assert_eq!(l.num("elements"), elements, "{}", l.raw);
        seen.entry((l.num("producer"), l.num("index")))
            .or_default()
            .push(l.num("deliveries") as u32);
        n += 1;
    }
    n
}

fn consumer(s: &mut Scope, label: &str, name: &str, extra: &[&str]) -> Peer {
    let mut args = vec!["array-queue-get", "--name", name];
    args.extend_from_slice(extra);
    let mut p = s.spawn(label, &args);
    p.expect("ready", STEP);
    p
}

/// Puts arrays of `elements` written as `fill_array(producer, i)` for `i` in `range`.
fn put(q: &ArrayQueue<Meta>, producer: u64, range: std::ops::Range<u64>, elements: usize) {
    for i in range {
        let mut loan = q.loan::<u32>(&[elements]).unwrap();
        let (data, meta) = loan.parts_mut();
        fill_array(producer, i, data);
        *meta = [producer, i];
        loan.commit().unwrap();
    }
}

/// Every block of the queue can be loaned at once (none is stuck with a dead process).
fn assert_all_blocks_free(q: &ArrayQueue<Meta>) {
    let loans: Vec<_> = (0..q.capacity())
        .map(|i| {
            q.try_loan::<u32>(&[1])
                .unwrap_or_else(|e| panic!("block {i} of {}: {e}", q.capacity()))
        })
        .collect();
    assert!(matches!(q.try_loan::<u32>(&[1]), Err(PutFailure::Full)));
    drop(loans);
}

/// One producer process and three consumer processes pass 300 arrays of 1 MiB through a queue
/// of 4 blocks: each array is received by exactly one consumer, intact.
#[test]
fn each_array_goes_to_exactly_one_consumer_process_intact() {
    let mut s = scope!("aqueue-each");
    let name = s.name();
    let elements = 1 << 18;
    let q = QueueBuilder::new(&name)
        .capacity(4)
        .array_bytes(elements * 4)
        .open_arrays::<Meta>()
        .unwrap();
    let mut consumers: Vec<Peer> = (0..3)
        .map(|i| consumer(&mut s, &format!("consumer {i}"), &name, &[]))
        .collect();
    let n = 300u64;
    let (c, e) = (n.to_string(), elements.to_string());
    let mut producer = s.spawn(
        "producer",
        &[
            "array-queue-put",
            "--name",
            &name,
            "--count",
            &c,
            "--producer",
            "3",
            "--elements",
            &e,
        ],
    );
    assert_eq!(producer.finish("summary", BULK).num("put"), n);
    q.close().unwrap();
    let mut seen = HashMap::new();
    let mut total = 0;
    for c in &mut consumers {
        let (status, lines) = c.wait_output(BULK);
        assert!(status.success(), "{}", c.stderr_text());
        total += record(&lines, elements as u64, &mut seen);
    }
    assert_eq!(
        (total, seen.len() as u64),
        (n, n),
        "each array exactly once"
    );
    let st = q.stats();
    assert_eq!((st.put, st.done, st.lost), (n, n, 0));
    drop(q);
    s.assert_gone(&name);
}

/// Acknowledged: the arrays a consumer holds when it is SIGKILLed are delivered again, intact,
/// to another consumer; afterwards every block is free.
#[test]
fn a_killed_consumers_arrays_are_delivered_again_and_its_blocks_come_back() {
    let mut s = scope!("aqueue-redeliver");
    let name = s.name();
    let elements = 4096;
    let q = QueueBuilder::new(&name)
        .capacity(6)
        .array_bytes(elements * 4)
        .acknowledged(3)
        .open_arrays::<Meta>()
        .unwrap();
    put(&q, 5, 0..6, elements);
    let mut holder = consumer(&mut s, "holder", &name, &["--ack", "3", "--hold", "2"]);
    for i in 0..2 {
        let l = holder.expect("holding", STEP);
        assert_eq!((l.num("index"), l.get("intact")), (i, "true"));
    }
    // The queue is full: four ready, two held.
    assert!(matches!(q.try_loan::<u32>(&[1]), Err(PutFailure::Full)));
    holder.kill();
    let mut worker = consumer(&mut s, "worker", &name, &["--ack", "3"]);
    assert!(shmbus_tests::wait_until(STEP, || q.stats().done == 6));
    assert_all_blocks_free(&q);
    q.close().unwrap();
    let (status, lines) = worker.wait_output(STEP);
    assert!(status.success(), "{}", worker.stderr_text());
    let mut seen = HashMap::new();
    assert_eq!(record(&lines, elements as u64, &mut seen), 6);
    for i in 0..6 {
        let want: &[u32] = if i < 2 { &[2] } else { &[1] };
        assert_eq!(seen[&(5, i)], want, "array {i}");
    }
    let st = q.stats();
    assert_eq!((st.redelivered, st.lost, st.dead_lettered), (2, 0, 0));
}

/// At most once: the arrays a killed consumer held are lost and counted, and their blocks
/// come back; a producer killed holding a half-written loan gives its block back too, and
/// the half-written array is never delivered.
#[test]
fn blocks_of_killed_consumers_and_producers_come_back_at_most_once() {
    let mut s = scope!("aqueue-lost");
    let name = s.name();
    let elements = 4096;
    let e = elements.to_string();
    let q = QueueBuilder::new(&name)
        .capacity(4)
        .array_bytes(elements * 4)
        .open_arrays::<Meta>()
        .unwrap();
    put(&q, 1, 0..3, elements);
    let mut holder = consumer(&mut s, "holder", &name, &["--hold", "2"]);
    holder.expect("holding", STEP);
    holder.expect("holding", STEP);
    holder.kill();
    holder.wait(STEP);
    let mut producer = s.spawn(
        "producer",
        &[
            "array-queue-put",
            "--name",
            &name,
            "--count",
            "0",
            "--producer",
            "2",
            "--elements",
            &e,
            "--hold-loan",
        ],
    );
    producer.expect("loaned", STEP);
    producer.kill();
    producer.wait(STEP);
    let got = q.reclaim_dead();
    assert_eq!(q.stats().lost, 2, "{got:?}");
    assert_eq!(q.stats().abandoned, 1, "{got:?}");
    // Only the one array nobody took is left, intact.
    let d = q.try_receive().unwrap();
    assert_eq!(*d.meta(), [1, 2]);
    assert!(array_is_intact(1, 2, d.as_slice::<u32>().unwrap()));
    assert!(matches!(
        d.as_slice::<f32>(),
        Err(GetError::WrongDtype { .. })
    ));
    d.ack().unwrap();
    assert!(matches!(q.try_receive(), Err(GetError::Empty)));
    assert_all_blocks_free(&q);
}

/// An opener's requirements are checked against the queue, and arrays that do not fit are
/// refused before a block is taken.
#[test]
fn sizes_and_shapes_are_checked() {
    let mut s = scope!("aqueue-sizes");
    let name = s.name();
    let q = QueueBuilder::new(&name)
        .capacity(2)
        .array_bytes(1000)
        .open_arrays::<Meta>()
        .unwrap();
    assert_eq!(q.max_array_bytes(), 1024);
    assert!(matches!(
        q.try_loan::<u64>(&[129]),
        Err(PutFailure::TooLarge {
            size: 1032,
            capacity: 1024
        })
    ));
    assert!(matches!(
        q.put::<u8>(&[2, 3], &[0; 5], [0, 0]),
        Err(PutFailure::InvalidArray(_))
    ));
    assert_eq!(q.len(), 0);
    let bigger = QueueBuilder::new(&name)
        .array_bytes(4096)
        .open_arrays::<Meta>();
    assert!(bigger.is_err(), "{bigger:?}");
    let other_meta = QueueBuilder::new(&name).existing().open_arrays::<u8>();
    assert!(other_meta.is_err(), "{other_meta:?}");
    let opener = QueueBuilder::new(&name)
        .existing()
        .open_arrays::<Meta>()
        .unwrap();
    assert_eq!(opener.max_array_bytes(), 1024);
    q.put::<u16>(&[2, 256], &[7; 512], [9, 9]).unwrap();
    let d = opener.try_receive().unwrap();
    assert_eq!((d.shape(), d.dtype()), (&[2, 256][..], shmbus::Dtype::U16));
    assert!(d.as_slice::<u16>().unwrap().iter().all(|&x| x == 7));
}
