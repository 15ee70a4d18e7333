//! Bad input: foreign files under our names, invalid names, missing permission, no space.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use shmbus::{NameError, OpenError, SegmentError, Topic, TopicError};
use shmbus_core::name::Name;
use shmbus_core::segment::{self, FORMAT_VERSION, HEADER_SIZE, MAGIC};
use shmbus_tests::{
    is_root, nobody, require_root, scope, segment_error_code, shm_file, GcLock, Line, Msg, Rec,
    Rng, Scope, ShmEnv, STEP,
};

/// What a file looked like, to check that nobody touched it.
#[derive(Debug, PartialEq)]
struct Snapshot {
    ino: u64,
    mode: u32,
    bytes: Vec<u8>,
}

fn snapshot(path: &Path) -> Snapshot {
    let meta = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{} should still exist: {e}", path.display()));
    Snapshot {
        ino: meta.ino(),
        mode: meta.mode(),
        bytes: std::fs::read(path).expect("read"),
    }
}

fn header_with_version(version: u32, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    b[..8].copy_from_slice(&MAGIC);
    b[8..12].copy_from_slice(&1u32.to_ne_bytes()); // state READY
    b[12..16].copy_from_slice(&version.to_ne_bytes());
    b
}

/// Scenario 11: a foreign file at `/dev/shm/shmbus.<name>` (random bytes, a 100-byte stub, an
/// empty file, valid magic with another format version) gives a typed error to every way of
/// joining (typed API in this process, another process, `peek`), never a panic, and the file is
/// left exactly as it was.
#[test]
fn foreign_files_give_typed_errors_and_are_left_alone() {
    let _gc = GcLock::shared(); // a foreign file with valid magic looks stale to gc()
    let mut s = scope!("foreign");
    let mut rng = Rng::from_env_or_clock();
    let random: Vec<u8> = (0..3 * HEADER_SIZE).map(|_| rng.next_u64() as u8).collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("random bytes", random.clone(), "corrupt"),
        ("100-byte stub", random[..100].to_vec(), "corrupt"),
        ("empty file", Vec::new(), "corrupt"),
        (
            "valid magic, format version 99",
            header_with_version(99, 2 * HEADER_SIZE),
            "version",
        ),
        (
            "valid magic, format version 0",
            header_with_version(0, 2 * HEADER_SIZE),
            "version",
        ),
    ];
    for (what, bytes, code) in cases {
        let name = s.name();
        let path = shm_file(&name);
        std::fs::write(&path, &bytes).expect("write the foreign file");
        let before = snapshot(&path);

        let topic = Topic::builder(&name);
        let results: Vec<(&str, Result<(), OpenError>)> = vec![
            ("subscriber", topic.subscriber::<Msg>().map(drop)),
            ("publisher", topic.publisher::<Msg>().map(drop)),
            (
                "serde subscriber",
                topic.serde_subscriber::<Rec>().map(drop),
            ),
        ];
        for (how, r) in results {
            match r {
                Err(OpenError::Topic(TopicError::Segment(e))) => {
                    assert_eq!(segment_error_code(&e), code, "{what}, {how}: {e}");
                    if let SegmentError::Version {
                        expected, found, ..
                    } = e
                    {
                        assert_eq!(expected, FORMAT_VERSION);
                        assert_eq!(
                            u64::from(found),
                            u64::from(u32::from_ne_bytes(bytes[12..16].try_into().unwrap()))
                        );
                    }
                }
                other => panic!("{what}, {how}: expected a {code} segment error, got {other:?}"),
            }
        }
        match segment::peek(&Name::new(&name).unwrap()) {
            Err(e) => assert_eq!(segment_error_code(&e), code, "{what}, peek: {e}"),
            Ok(info) => panic!("{what}: peek accepted a foreign file: {info:?}"),
        }
        let mut other = s.spawn("other process", &["open", "--topic", &name]);
        let err = other.expect("error", STEP);
        assert_eq!(err.get("code"), code, "{what}, other process: {}", err.raw);
        other.wait(STEP);

        assert_eq!(
            snapshot(&path),
            before,
            "{what}: the foreign file must be left untouched"
        );
        std::fs::remove_file(&path).expect("remove the foreign file");
    }
}

/// Scenario 11: invalid names are `OpenError::Name` with the right reason, from every
/// constructor, and create nothing; the longest valid name works.
#[test]
fn invalid_names_are_name_errors() {
    let mut s = scope!("names");
    let long = "x".repeat(Name::MAX_LEN + 1);
    let cases: Vec<(&str, NameError)> = vec![
        ("", NameError::Empty),
        ("a/b", NameError::InvalidChar { ch: '/', index: 1 }),
        ("../x", NameError::InvalidChar { ch: '/', index: 2 }),
        (".hidden", NameError::BadStart('.')),
        ("-x", NameError::BadStart('-')),
        ("with space", NameError::InvalidChar { ch: ' ', index: 4 }),
        (
            "caf\u{e9}",
            NameError::InvalidChar {
                ch: '\u{e9}',
                index: 3,
            },
        ),
        ("nul\0", NameError::InvalidChar { ch: '\0', index: 3 }),
        (
            &long,
            NameError::TooLong {
                len: Name::MAX_LEN + 1,
                max: Name::MAX_LEN,
            },
        ),
    ];
    // The files these names would stand for, where a path can name them at all.
    let would_be: Vec<_> = cases
        .iter()
        .map(|(n, _)| n)
        .filter(|n| !n.contains(['/', '\0']) && n.len() < 250)
        .map(|n| Path::new("/dev/shm").join(format!("shmbus.{n}")))
        .collect();
    let existing: Vec<_> = would_be.iter().filter(|p| p.exists()).cloned().collect();
    for (name, expected) in &cases {
        let topic = Topic::builder(name);
        let results: Vec<(&str, Result<(), OpenError>)> = vec![
            ("publisher", topic.publisher::<Msg>().map(drop)),
            ("subscriber", topic.subscriber::<Msg>().map(drop)),
            ("serde publisher", topic.serde_publisher::<Rec>().map(drop)),
            (
                "serde subscriber",
                topic.serde_subscriber::<Rec>().map(drop),
            ),
        ];
        for (how, r) in results {
            match r {
                Err(OpenError::Name(e)) => assert_eq!(&e, expected, "{name:?} as {how}"),
                other => panic!(
                    "{name:?} as {how}: expected OpenError::Name({expected:?}), got {other:?}"
                ),
            }
        }
    }
    // From another process (names that fit on a command line).
    for name in ["a/b", ".hidden", "with space"] {
        let mut p = s.spawn("other process", &["open", "--topic", name]);
        assert_eq!(p.expect("error", STEP).get("code"), "name");
        p.wait(STEP);
    }
    let created: Vec<_> = would_be
        .iter()
        .filter(|p| p.exists() && !existing.contains(p))
        .collect();
    assert!(
        created.is_empty(),
        "invalid names created files: {created:?}"
    );

    // The longest valid name works, and the last user out removes it.
    let mut longest = s.name();
    longest.push_str(&"y".repeat(Name::MAX_LEN - longest.len()));
    s.track_file(shm_file(&longest));
    let publ = Topic::builder(&longest)
        .publisher::<Msg>()
        .expect("a name of exactly MAX_LEN bytes");
    assert!(shm_file(&longest).exists());
    drop(publ);
    s.assert_gone(&longest);
}

/// Scenario 11: a topic created with the default mode is private: a process running as `nobody`
/// gets `PermissionDenied`; one created with mode 0o666 is open to it, and messages flow.
/// Needs root, to run a process as another user (see `require_root`).
#[test]
fn other_users_get_permission_denied_on_private_topics() {
    if !require_root(
        "other_users_get_permission_denied_on_private_topics",
        "only root can run a process as another user (nobody)",
    ) {
        return;
    }
    let mut s = scope!("perm");

    let private = s.name();
    let publ = Topic::builder(&private)
        .publisher::<Msg>()
        .expect("publisher");
    assert_eq!(
        std::fs::metadata(shm_file(&private)).unwrap().mode() & 0o777,
        0o600,
        "default mode"
    );
    for extra in [&[][..], &["--publisher"][..]] {
        let mut args = vec!["open", "--topic", &private];
        args.extend_from_slice(extra);
        let mut p = s.spawn_as_nobody("nobody", &args);
        let err = p.expect("error", STEP);
        assert_eq!(err.get("code"), "permission-denied", "{}", err.raw);
        p.wait(STEP);
    }
    drop(publ);
    s.assert_gone(&private);

    let shared = s.name();
    let mut publ = Topic::builder(&shared)
        .mode(0o666)
        .publisher::<Msg>()
        .expect("publisher");
    assert_eq!(
        std::fs::metadata(shm_file(&shared)).unwrap().mode() & 0o777,
        0o666,
        "the mode asked for, whatever the umask"
    );
    let mut sub = s.spawn_as_nobody(
        "nobody",
        &[
            "subscribe",
            "--topic",
            &shared,
            "--count",
            "5",
            "--timeout-ms",
            "3000",
        ],
    );
    sub.expect("ready", STEP);
    for i in 0..5 {
        publ.send(Msg::new(1, i)).expect("send");
    }
    let summary = sub.finish("summary", STEP);
    assert_eq!(
        (summary.num("received"), summary.num("bad_checksum")),
        (5, 0),
        "{}",
        summary.raw
    );
    drop(publ);
    s.assert_gone(&shared);
}

/// Scenario 11: a topic file whose permission bits refuse its own owner (mode 0o000) gives
/// `PermissionDenied` to every way of joining it and is left alone. Runs as any user: not as
/// root, the owner is this user (the typed API in this process and another process are
/// refused); root may open any file, so as root the file is handed to `nobody`, whose
/// processes are refused.
#[test]
fn a_topic_its_owner_may_not_open_is_permission_denied() {
    let mut s = scope!("perm0");
    let name = s.name();
    let publ = Topic::builder(&name).publisher::<Msg>().expect("publisher");
    let path = shm_file(&name);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).expect("chmod 000");
    let root = is_root();
    if root {
        let (uid, gid) = nobody();
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown to nobody");
    } else {
        let topic = Topic::builder(&name);
        let results: Vec<(&str, Result<(), OpenError>)> = vec![
            ("subscriber", topic.subscriber::<Msg>().map(drop)),
            ("publisher", topic.publisher::<Msg>().map(drop)),
        ];
        for (how, r) in results {
            match r {
                Err(OpenError::Topic(TopicError::Segment(SegmentError::PermissionDenied(_)))) => {}
                other => panic!("{how} in this process: expected PermissionDenied, got {other:?}"),
            }
        }
    }
    let meta = |p: &Path| {
        let m = std::fs::metadata(p).expect("the file should still exist");
        (m.ino(), m.mode(), m.uid(), m.len())
    };
    let before = meta(&path);
    for extra in [&[][..], &["--publisher"][..]] {
        let mut args = vec!["open", "--topic", &name];
        args.extend_from_slice(extra);
        let mut p = if root {
            s.spawn_as_nobody("owner (nobody)", &args)
        } else {
            s.spawn("owner", &args)
        };
        let err = p.expect("error", STEP);
        assert_eq!(
            err.get("code"),
            "permission-denied",
            "{args:?}: {}",
            err.raw
        );
        p.wait(STEP);
    }
    assert_eq!(
        meta(&path),
        before,
        "a file its owner may not open must be left alone"
    );
    drop(publ);
    s.assert_gone(&name);
}

/// What one creation in a peer came to: its `result` line (the peer must exit normally: a
/// SIGBUS or any other signal fails the test).
fn create_segment(env: &ShmEnv, s: &mut Scope, name: &str, size: u64) -> Line {
    let size = size.to_string();
    let mut p = env.spawn(
        s,
        "creator",
        &["segment-create", "--name", name, "--size", &size],
    );
    p.finish("result", STEP)
}

/// Joins `name` as a publisher in a peer with `extra` options; returns its error code, or "ok".
fn create_topic(env: &ShmEnv, s: &mut Scope, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["open", "--publisher", "--topic", name];
    args.extend_from_slice(extra);
    let mut p = env.spawn(s, "topic creator", &args);
    let (status, lines) = p.wait_output(STEP);
    let t = p.transcript();
    assert!(
        status.signal().is_none(),
        "the topic creator was killed by a signal ({status}), not refused\n{t}"
    );
    match lines.iter().find(|l| l.tag == "ok" || l.tag == "error") {
        Some(l) if l.tag == "ok" => "ok".to_owned(),
        Some(l) => l.get("code").to_owned(),
        None => panic!("the topic creator printed neither ok nor error ({status})\n{t}"),
    }
}

/// Bytes in use in the file system of `dir`.
fn used_bytes(dir: &Path) -> u64 {
    let st = rustix::fs::statvfs(dir).expect("statvfs");
    (st.f_blocks - st.f_bfree) * st.f_frsize
}

/// Scenario 11: a segment larger than `/dev/shm` can hold fails with `OutOfSpace` at creation
/// (not with SIGBUS later), and leaves nothing behind: neither a file (named or hidden) nor used
/// space. Runs in a private 1 MiB `/dev/shm` (a tmpfs in a mount namespace of the peers, see
/// `ShmEnv`), both with a request above its total size and with one that fits its size but not
/// its free space (the case that would fault on first touch without `fallocate`).
#[test]
fn segment_larger_than_dev_shm_is_out_of_space() {
    const TEST: &str = "segment_larger_than_dev_shm_is_out_of_space";
    const KIB: u64 = 1 << 10;
    const SIZE: u64 = 1 << 20;
    let mut s = scope!("nospace");
    let Some(env) = ShmEnv::private_or_skip(&mut s, TEST, SIZE) else {
        return;
    };
    let dir = env.dir();
    let st = rustix::fs::statvfs(&dir).expect("statvfs of the private /dev/shm");
    assert_eq!(
        st.f_blocks * st.f_frsize,
        SIZE,
        "the private /dev/shm's size"
    );
    let empty = used_bytes(&dir);
    let left_over = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .expect("read the private /dev/shm")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    };

    // Raw segments: above the total size; above the free space (a filler takes most of it).
    let filler = dir.join("filler");
    for (what, request, fill) in [
        ("above the total size", 4 * SIZE, 0),
        (
            "within the size but above the free space",
            512 * KIB,
            640 * KIB,
        ),
    ] {
        if fill > 0 {
            std::fs::write(&filler, vec![0x5a; fill as usize]).expect("write the filler");
        }
        let name = s.name();
        let r = create_segment(&env, &mut s, &name, request);
        let ctx = format!("{what}: {request} bytes: {}", r.raw);
        assert_eq!(r.get("code"), "out-of-space", "{ctx}");
        assert!(r.num("requested") >= request, "{ctx}");
        assert_eq!(
            r.get("init"),
            "no",
            "init ran for a segment not reserved: {ctx}"
        );
        assert!(
            !env.file(&name).exists(),
            "a file was left under the name: {ctx}"
        );
        if fill > 0 {
            std::fs::remove_file(&filler).expect("remove the filler");
        }
        assert_eq!(
            left_over(&dir),
            Vec::<String>::new(),
            "files left behind: {ctx}"
        );
        assert_eq!(used_bytes(&dir), empty, "space left in use: {ctx}");
    }

    // Topics whose slots add up to more than the private /dev/shm holds: serde and POD.
    for extra in [
        &["--type", "rec", "--slot-size", "65536", "--capacity", "32"][..],
        &["--capacity", "32768"][..],
    ] {
        let name = s.name();
        let code = create_topic(&env, &mut s, &name, extra);
        assert_eq!(code, "out-of-space", "a topic {extra:?} of 2 MiB in 1 MiB");
        assert!(!env.file(&name).exists(), "a file was left under the name");
        assert_eq!(left_over(&dir), Vec::<String>::new(), "files left behind");
        assert_eq!(used_bytes(&dir), empty, "space left in use: {extra:?}");
    }

    // What fits is created (the refusals above were for want of space, not of anything else).
    let name = s.name();
    let r = create_segment(&env, &mut s, &name, 256 * KIB);
    assert_eq!(
        (r.get("code"), r.get("init")),
        ("created", "ran"),
        "{}",
        r.raw
    );
    let name = s.name();
    assert_eq!(create_topic(&env, &mut s, &name, &[]), "ok");
    assert_eq!(
        left_over(&dir),
        Vec::<String>::new(),
        "the last user out removes its file"
    );
}
