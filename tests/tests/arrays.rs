//! Named arrays and array topics across processes: frames intact, pool exhaustion under each
//! overflow policy, a consumer killed holding blocks, a 1 GiB array shared without a copy,
//! wrong dtypes, forged descriptors, lifetimes.

use std::time::Duration;

use shmbus::{ArrayError, Overflow, PoolLoanError, RecvError, SharedArray, Topic};
use shmbus_core::segment::Lifetime;
use shmbus_tests::{
    check_frame, fill_frame, rss_kib, scope, shm_file, FrameMeta, GcLock, ShmEnv, STEP,
};

/// A subscriber process that takes two frames and keeps them until killed.
fn spawn_holder(s: &mut shmbus_tests::Scope, name: &str) -> shmbus_tests::Peer {
    let mut holder = s.spawn(
        "holder",
        &[
            "frames-hold",
            "--topic",
            name,
            "--hold",
            "2",
            "--max-held",
            "2",
        ],
    );
    holder.expect("ready", STEP);
    holder
}

/// Publishes frame `index` of `len` bytes through `publ`.
fn send_frame(publ: &mut shmbus::ArrayPublisher<FrameMeta>, index: u64, len: usize) {
    let mut loan = publ.loan::<u8>(&[len]).expect("a block");
    let (block, meta) = loan.parts_mut();
    fill_frame(index, block);
    *meta = FrameMeta {
        index,
        len: len as u64,
    };
    loan.publish().expect("published");
}

/// Takes every frame `sub` has now, checking each intact: their indices, and how many frames
/// were reported lost (`Lagged`) among them.
fn drain(sub: &shmbus::ArraySubscriber<FrameMeta>) -> (Vec<u64>, u64) {
    let (mut got, mut lagged) = (Vec::new(), 0);
    loop {
        match sub.try_recv() {
            Ok(f) => {
                assert_eq!(check_frame(f.meta().index, f.bytes()), None);
                got.push(f.meta().index);
            }
            Err(RecvError::Lagged(n)) => lagged += n,
            Err(RecvError::Empty) => return (got, lagged),
            Err(e) => panic!("{e}"),
        }
    }
}

fn summary(p: &mut shmbus_tests::Peer) -> shmbus_tests::Line {
    p.finish("summary", Duration::from_secs(30))
}

/// Frames of rotating sizes and dtypes (up to 2 × 480×640×3 bytes) cross to two subscriber
/// processes; every byte of every frame is verified by both, in order, none lost.
#[test]
fn every_frame_arrives_intact_in_two_processes() {
    let mut s = scope!("frames");
    let name = s.name();
    let topic = [
        "--topic",
        &name,
        "--overflow",
        "back-pressure",
        "--capacity",
        "8",
    ];
    let shape = ["--shape", "480,640,3", "--varying"];
    let mut subs: Vec<_> = (0..2)
        .map(|i| {
            let mut args = vec!["frames-sub", "--count", "120"];
            args.extend(topic);
            args.extend(shape);
            let mut p = s.spawn(&format!("sub{i}"), &args);
            p.expect("ready", STEP);
            p
        })
        .collect();
    let mut args = vec!["frames-pub", "--count", "120", "--wait-subscribers", "2"];
    args.extend(topic);
    args.extend(shape);
    let mut publisher = s.spawn("pub", &args);
    let done = publisher.finish("done", Duration::from_secs(30));
    assert_eq!(done.num("sent"), 120);
    for sub in &mut subs {
        let sum = summary(sub);
        assert_eq!(
            (sum.num("received"), sum.num("lagged"), sum.num("bad")),
            (120, 0, 0),
            "{}",
            sum.raw
        );
        assert_eq!(sum.num("last"), 119);
    }
    // Frames of four kinds need at least one segment per size class, and LIFO reuse keeps the
    // pool small: far fewer blocks than frames.
    assert!(done.num("segments") >= 3, "{}", done.raw);
    assert!(done.num("blocks") < 60, "blocks are reused: {}", done.raw);
}

/// A publisher (this process) whose pool may hold only 4 blocks, on an overwrite topic, while
/// a subscriber process holds 2 frames and another never reads: publishing goes on by
/// withdrawing the oldest unread frames; the held frames are never touched; a late reader sees
/// lag, then intact recent frames.
#[test]
fn pool_exhaustion_under_overwrite_withdraws_the_oldest_unread() {
    let mut s = scope!("poolow");
    let name = s.name();
    let topic = Topic::builder(&name)
        .capacity(8)
        .overflow(Overflow::Overwrite)
        .pool_blocks_per_segment(2)
        .pool_max_bytes(4 * 65536);
    let mut publ = topic.array_publisher::<FrameMeta>().expect("publisher");
    let reader = topic.array_subscriber::<FrameMeta>().expect("reader");
    let mut holder = spawn_holder(&mut s, &name);
    send_frame(&mut publ, 0, 65536);
    send_frame(&mut publ, 1, 65536);
    let held = holder.expect("held", STEP);
    assert_eq!(held.get("indices"), "0,1");
    for index in 2..50 {
        send_frame(&mut publ, index, 65536);
    }
    let st = publ.pool_stats();
    assert_eq!(st.blocks, 4, "the pool did not grow past its limit: {st:?}");
    assert!(st.retired >= 40, "unread frames were withdrawn: {st:?}");
    holder.send("check");
    let checked = holder.expect("checked", STEP);
    assert_eq!(
        (checked.num("held"), checked.num("bad")),
        (2, 0),
        "held frames untouched"
    );
    // The reader joined before frame 0 and never read: it lags, then reads recent frames intact.
    let (got, lagged) = drain(&reader);
    assert!(lagged >= 40, "lagged {lagged}");
    assert_eq!(got.last(), Some(&49), "the newest frame is there: {got:?}");
}

/// Back-pressure: a pool of 2 blocks, both held by a subscriber process; the next loan waits
/// for the publish timeout and reports exhaustion. The holder is SIGKILLed: its blocks come
/// back and publishing goes on without the pool growing.
#[test]
fn pool_exhaustion_under_back_pressure_waits_and_a_killed_holder_returns_its_blocks() {
    let mut s = scope!("poolbp");
    let name = s.name();
    let topic = Topic::builder(&name)
        .capacity(8)
        .overflow(Overflow::BackPressure)
        .pool_blocks_per_segment(2)
        .pool_max_bytes(2 * 65536)
        .publish_timeout(Some(Duration::from_millis(300)));
    let mut publ = topic.array_publisher::<FrameMeta>().expect("publisher");
    let mut holder = spawn_holder(&mut s, &name);
    send_frame(&mut publ, 0, 65536);
    send_frame(&mut publ, 1, 65536);
    holder.expect("held", STEP);
    let t = std::time::Instant::now();
    match publ.loan::<u8>(&[65536]) {
        Err(PoolLoanError::Exhausted { needed, .. }) => assert_eq!(needed, 65536),
        other => panic!("expected exhaustion, got {other:?}"),
    }
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "it waited for a block"
    );
    assert!(publ.pool_stats().waits >= 1);

    holder.kill();
    for index in 2..10 {
        // The killed holder's blocks came back; no subscriber is left to hold us back.
        send_frame(&mut publ, index, 65536);
    }
    assert_eq!(
        publ.pool_stats().blocks,
        2,
        "no growth: the same two blocks"
    );
}

/// A consumer SIGKILLed while holding blocks: the publisher reclaims its row (within its
/// reclaim period, 10 to 100 ms) and the two held blocks come back to the pool; the pool never
/// grows past its limit meanwhile.
#[test]
fn blocks_held_by_a_killed_consumer_come_back() {
    let mut s = scope!("poolkill");
    let name = s.name();
    let topic = Topic::builder(&name)
        .capacity(2)
        .pool_blocks_per_segment(1)
        .pool_max_bytes(4 * 4096);
    let mut publ = topic.array_publisher::<FrameMeta>().expect("publisher");
    let mut holder = spawn_holder(&mut s, &name);
    send_frame(&mut publ, 0, 4096);
    send_frame(&mut publ, 1, 4096);
    holder.expect("held", STEP);
    holder.kill();
    let mut index = 2;
    let came_back = shmbus_tests::wait_until(STEP, || {
        send_frame(&mut publ, index, 4096);
        index += 1;
        std::thread::sleep(Duration::from_millis(2));
        // While frames 0 and 1 are held, all 4 blocks are in flight (0, 1 and the ring's
        // two). Once they come back: the ring's two plus the one just evicted, not yet collected.
        publ.pool_stats().in_flight <= 3
    });
    let st = publ.pool_stats();
    assert!(
        came_back,
        "the dead consumer's blocks never came back: {st:?}"
    );
    assert!(st.blocks <= 4, "{st:?}");
    assert_eq!(st.free + st.in_flight, st.blocks, "{st:?}");
}

/// A 1 GiB array created here is attached by another process that touches every page: the
/// segment's file holds 1 GiB once, and both processes' resident pages are those shared pages
/// (`RssShmem`), with no private copy (`RssAnon` stays small).
#[test]
fn a_1gib_array_is_shared_without_a_copy() {
    use std::os::unix::fs::MetadataExt;
    const GIB: usize = 1 << 30;
    const GIB_KIB: u64 = (GIB / 1024) as u64;
    let mut s = scope!("gib");
    let name = s.name();
    let a = SharedArray::<u8>::options()
        .scoped()
        .create(&name, &[GIB])
        .expect("a 1 GiB array");
    for page in (0..GIB).step_by(4096) {
        a.set(page, 1).expect("in bounds");
    }
    let (_, _, my_shmem) = rss_kib(std::process::id());
    assert!(my_shmem >= GIB_KIB * 99 / 100, "ours: {my_shmem} KiB");
    let mut peer = s.spawn(
        "toucher",
        &["array-attach", "--name", &name, "--touch-and-hold"],
    );
    let t = peer.expect("touched", Duration::from_secs(60));
    assert_eq!(t.num("len"), GIB as u64);
    assert_eq!(t.num("sum"), (GIB / 4096) as u64, "it sees our writes");
    let (rss, anon, shmem) = (t.num("rss_kib"), t.num("anon_kib"), t.num("shmem_kib"));
    assert!(
        shmem >= GIB_KIB * 99 / 100,
        "the peer's resident pages are the shared ones: {}",
        t.raw
    );
    assert!(
        anon < 64 * 1024,
        "the peer made no private copy: {} (rss {rss} KiB)",
        t.raw
    );
    // The memory behind both mappings: the file's blocks, 1 GiB (plus header pages), once.
    let file = std::fs::metadata(shmbus_tests::shm_file(&name)).expect("the file");
    let allocated = file.blocks() * 512;
    assert!(
        (GIB as u64..GIB as u64 + (1 << 20)).contains(&allocated),
        "{allocated} bytes allocated"
    );
    peer.kill();
}

/// Attaching with a wrong element type fails in the other process with a typed error naming
/// both dtypes; with the right one it sees the creator's data.
#[test]
fn wrong_dtype_on_attach_is_a_typed_error() {
    let mut s = scope!("dtype");
    let name = s.name();
    let a = SharedArray::<f32>::options()
        .scoped()
        .create(&name, &[3, 4])
        .expect("create");
    a.fill(0.5);
    let mut wrong = s.spawn("u8", &["array-attach", "--name", &name, "--dtype", "u8"]);
    let e = wrong.expect("error", STEP);
    assert_eq!(e.get("code"), "wrong-dtype", "{}", e.raw);
    assert!(
        e.raw.contains("float32") && e.raw.contains("uint8"),
        "{}",
        e.raw
    );
    let mut right = s.spawn("f32", &["array-attach", "--name", &name, "--dtype", "f32"]);
    let ok = right.finish("attached", STEP);
    assert_eq!((ok.get("shape"), ok.get("sum")), ("3x4", "6"));
    match SharedArray::<u16>::attach(&name) {
        Err(ArrayError::WrongDtype { .. }) => {}
        other => panic!("{other:?}"),
    }
}

/// A publisher process sends a real frame, eleven forged descriptors (bad magic, dtype, rank,
/// length, unknown pool and segments, block and byte bounds, stale and future generations) and
/// a real frame: the subscriber refuses each forgery with a reason and reads both real frames.
#[test]
fn forged_descriptors_are_rejected() {
    let mut s = scope!("forge");
    let name = s.name();
    let sub = Topic::builder(&name)
        .array_subscriber::<FrameMeta>()
        .expect("subscriber");
    let mut forger = s.spawn("forger", &["frames-forge", "--topic", &name]);
    forger.expect("ready", STEP);
    let done = forger.expect("done", STEP);
    let n = done.num("forged");
    let first = sub.recv_timeout(STEP).expect("the real frame");
    assert_eq!(first.meta().index, 0);
    assert_eq!(check_frame(0, first.bytes()), None);
    drop(first);
    let mut reasons = Vec::new();
    for _ in 0..n {
        match sub.recv_timeout(STEP) {
            Err(RecvError::BadDescriptor { reason, .. }) => reasons.push(reason),
            other => panic!("a forged descriptor got through: {other:?}"),
        }
    }
    let last = sub
        .recv_timeout(STEP)
        .expect("the real frame after the forgeries");
    assert_eq!(last.meta().index, 1);
    assert_eq!(check_frame(1, last.bytes()), None);
    let all = reasons.join("\n");
    for needle in [
        "magic",
        "dtype",
        "dimensions",
        "does not match",
        "unknown",
        "out of range",
        "block 1000",
        "overrun",
        "stale generation",
    ] {
        assert!(
            all.contains(needle),
            "no reason mentions {needle:?}:\n{all}"
        );
    }
}

/// Lifetimes: a persistent array outlives its creator; a scoped one goes with its last user;
/// `delete` removes the name while attachments stay valid; `gc()` never removes a persistent
/// array; listing shows both.
#[test]
fn persistent_and_scoped_arrays_and_delete() {
    let mut s = scope!("arrlife");
    let env = ShmEnv::private_or_global(&mut s);
    // Exclusive from the start in the machine's /dev/shm: the killed scoped array must stay
    // stale until this test's own gc() (see GcLock).
    let _gc = (!env.is_private()).then(GcLock::exclusive);
    let (persistent, scoped) = (s.name(), s.name());
    let mut p = env.spawn(
        &mut s,
        "persistent",
        &["array-create", "--name", &persistent, "--fill", "3"],
    );
    p.finish("created", STEP);
    let mut q = env.spawn(
        &mut s,
        "scoped",
        &["array-create", "--name", &scoped, "--scoped", "--hold"],
    );
    q.expect("created", STEP);
    assert!(env.file(&persistent).exists(), "outlives its creator");
    assert!(env.file(&scoped).exists());
    q.kill(); // a scoped array whose only user was killed is stale
    let removed = env.gc(&mut s);
    assert!(
        removed.iter().any(|f| f.ends_with(&scoped)),
        "gc removed the stale scoped array: {removed:?}"
    );
    assert!(
        !removed.iter().any(|f| f.ends_with(&persistent)),
        "gc never removes a persistent array: {removed:?}"
    );
    assert!(env.file(&persistent).exists());

    // The rest uses this process's /dev/shm (a private one is not this process's): a persistent
    // array made there by a process that has exited (the same one unless /dev/shm is private).
    // gc() never removes a persistent array, so this needs no gc lock.
    let persistent = if env.is_private() {
        let name = s.name();
        let mut p = s.spawn(
            "persistent (here)",
            &["array-create", "--name", &name, "--fill", "3"],
        );
        p.finish("created", STEP);
        assert!(shm_file(&name).exists(), "outlives its creator");
        name
    } else {
        persistent
    };
    let a = SharedArray::<u8>::attach(&persistent).expect("attach");
    assert_eq!(a.lifetime(), Lifetime::Persistent);
    let listed = shmbus::array::list().expect("list");
    let me = listed
        .iter()
        .find(|i| i.name.as_str() == persistent)
        .expect("listed");
    assert_eq!(
        (me.shape.as_slice(), me.lifetime),
        (&[4, 5][..], Lifetime::Persistent)
    );
    shmbus::array::delete(&persistent).expect("delete");
    assert!(!shm_file(&persistent).exists(), "the name is gone");
    assert!(
        a.to_vec().iter().all(|&b| b == 3),
        "the attachment is still valid"
    );
    assert!(matches!(
        SharedArray::<u8>::attach(&persistent),
        Err(ArrayError::Segment(shmbus::SegmentError::NotFound(_)))
    ));
}

/// A file-backed array: written, flushed, dropped by every process; attached again later from
/// another process with its data; deleted.
#[test]
fn file_backed_array_keeps_its_data() {
    let mut s = scope!("arrfile");
    let path = std::env::temp_dir().join(format!("shmbus-test-{}-array", std::process::id()));
    s.track_file(path.clone());
    let url = format!("file://{}", path.display());
    {
        let a = SharedArray::<u8>::create(&url, &[64, 64]).expect("create a file array");
        a.fill(2);
        a.flush().expect("msync");
    }
    assert!(path.exists(), "a file array is persistent");
    let mut peer = s.spawn("reader", &["array-attach", "--name", &url]);
    let ok = peer.finish("attached", STEP);
    assert_eq!(ok.num("sum"), 64 * 64 * 2);
    assert!(matches!(
        SharedArray::<u8>::create(&url, &[1]),
        Err(ArrayError::Segment(shmbus::SegmentError::AlreadyExists(_)))
    ));
    shmbus::array::delete(&url).expect("delete");
    assert!(!path.exists());
}

/// A read-only attachment reads but cannot be turned writable; bad shapes are typed errors.
#[test]
fn read_only_attach_and_bad_shapes() {
    let mut s = scope!("arrro");
    let name = s.name();
    let _a = SharedArray::<u8>::options()
        .scoped()
        .create(&name, &[8])
        .expect("create");
    let mut ro = s.spawn("ro", &["array-attach", "--name", &name, "--read-only"]);
    assert_eq!(ro.finish("attached", STEP).get("sum"), "0");
    let any = shmbus::array::AnyArray::attach_with(&name, true, None).expect("attach ro");
    assert!(matches!(
        any.into_typed::<u8>(),
        Err(ArrayError::ReadOnly(_))
    ));
    let other = s.name();
    assert!(matches!(
        SharedArray::<u64>::create(&other, &[usize::MAX / 4, 8]),
        Err(ArrayError::Shape { .. })
    ));
    assert!(matches!(
        SharedArray::<u8>::create(&other, &[1; 33]),
        Err(ArrayError::Shape { .. })
    ));
    assert!(matches!(
        SharedArray::<u8>::create("bad/name", &[1]),
        Err(ArrayError::Name(_))
    ));
}

/// Large frames every subscriber has read go back to the pool at the next loan, but for the
/// newest `pool_history` (default 1, for late joiners), so a stream that keeps up touches two
/// blocks, not `capacity + 1`; small frames stay in the ring as history until pushed out.
#[test]
fn read_large_frames_return_their_blocks_at_once_small_ones_stay_as_history() {
    let mut s = scope!("poolret");
    const BIG: usize = shmbus_core::pool::EAGER_RETURN_BYTES;
    const SMALL: usize = 64 << 10;
    // (frame bytes, pool_history, blocks the stream needs, what a late `history(4)` joiner gets)
    let cases: [(usize, u32, u32, &[u64]); 4] = [
        (BIG, 1, 2, &[8, 9]),
        (BIG, 0, 1, &[9]),
        (BIG, 3, 4, &[6, 7, 8, 9]),
        (SMALL, 1, 9, &[6, 7, 8, 9]),
    ];
    for (len, history, blocks, late) in cases {
        let name = s.name();
        let topic = Topic::builder(&name)
            .capacity(8)
            .pool_blocks_per_segment(1)
            .pool_history(history);
        let mut publ = topic.array_publisher::<FrameMeta>().expect("publisher");
        let reader = topic.array_subscriber::<FrameMeta>().expect("reader");
        for index in 0..10 {
            send_frame(&mut publ, index, len);
            let f = reader.try_recv().expect("the frame just published");
            assert_eq!(f.meta().index, index);
            assert_eq!(check_frame(index, f.bytes()), None, "frame {index} intact");
        }
        let st = publ.pool_stats();
        assert_eq!(
            st.blocks, blocks,
            "{len} bytes, pool_history {history}: {st:?}"
        );
        let joiner = topic
            .clone()
            .history(4)
            .array_subscriber::<FrameMeta>()
            .expect("late joiner");
        // The returned frames' entries are withdrawn: a lag, never a wrong frame.
        let (got, _lagged) = drain(&joiner);
        assert_eq!(got, late, "{len} bytes, pool_history {history}");
        drop((joiner, reader, publ));
        s.assert_gone(&name);
    }
}
