//! Bad input: foreign files under our names, invalid names, missing permission, no space.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use shmbus::{NameError, OpenError, SegmentError, Topic, TopicError};
use shmbus_core::layout::{Codec, TypeInfo};
use shmbus_core::name::Name;
use shmbus_core::segment::{
    self, CreateOptions, Kind, Segment, FORMAT_VERSION, HEADER_SIZE, MAGIC,
};
use shmbus_tests::{
    is_root, nobody, require_root, scope, segment_error_code, shm_file, wait_until, GcLock, Msg,
    Rec, Rng, STEP,
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

/// Hidden shmbus files (segments are built as unnamed `O_TMPFILE` files, so there should be none).
fn tmp_files_of_this_process() -> Vec<String> {
    let prefix = ".shmbus".to_owned();
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with(&prefix))
        .collect()
}

/// Scenario 11: a segment larger than `/dev/shm` can hold fails with `OutOfSpace` at creation
/// (not with SIGBUS later), and leaves no file behind: neither the name nor a temporary file.
/// The request exceeds the file system's total size, so tmpfs refuses it up front instead of
/// filling memory first.
#[test]
fn segment_larger_than_dev_shm_is_out_of_space() {
    const GIB: u64 = 1 << 30;
    let st = rustix::fs::statvfs("/dev/shm").expect("statvfs /dev/shm");
    let total = st.f_blocks * st.f_frsize;
    let free = st.f_bavail * st.f_frsize;
    let request = total.max(free) + GIB;
    if total == 0 || request >= isize::MAX as u64 / 2 {
        eprintln!("NOTE: skipping the out-of-space test: /dev/shm reports {total} bytes in total");
        return;
    }
    let mut s = scope!("nospace");

    // Raw segment.
    let name = s.name();
    let ty = TypeInfo::new("bytes", 1, 1, Codec::Bytes).unwrap();
    let r = Segment::create(
        &Name::new(&name).unwrap(),
        &CreateOptions::new(Kind::Value, ty, request as usize),
        |_| panic!("init must not run for a segment that could not be reserved"),
    );
    match r {
        Err(SegmentError::OutOfSpace { requested, .. }) => {
            assert!(requested >= request, "requested {requested} < {request}")
        }
        other => panic!("expected OutOfSpace for {request} bytes ({free} free), got {other:?}"),
    }
    assert!(
        !shm_file(&name).exists(),
        "no file may be left under the name"
    );
    assert!(
        wait_until(Duration::from_secs(2), || tmp_files_of_this_process()
            .is_empty()),
        "temporary files left behind: {:?}",
        tmp_files_of_this_process()
    );

    // A topic whose slots add up to more than /dev/shm holds.
    let name = s.name();
    let slot = GIB as u32;
    let capacity = (total / GIB + 2) as u32;
    match Topic::builder(&name)
        .slot_size(slot)
        .capacity(capacity)
        .serde_publisher::<Rec>()
    {
        Err(OpenError::Topic(TopicError::Segment(SegmentError::OutOfSpace { .. }))) => {}
        other => {
            panic!("expected OutOfSpace for a topic of {capacity}+ slots of 1 GiB, got {other:?}")
        }
    }
    assert!(
        !shm_file(&name).exists(),
        "no file may be left under the name"
    );
    assert!(
        wait_until(Duration::from_secs(2), || tmp_files_of_this_process()
            .is_empty()),
        "temporary files left behind: {:?}",
        tmp_files_of_this_process()
    );
}
