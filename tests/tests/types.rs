//! Attaching with another type, kind or QoS than the topic has.

use shmbus::{Mutex, OpenError, Overflow, SegmentError, Topic, TopicError};
use shmbus_core::segment::Kind;
use shmbus_tests::{scope, Msg, OtherMsg, Rec, SmallMsg, STEP};

fn wrong_type(r: Result<impl std::fmt::Debug, OpenError>) -> (String, String, String) {
    match r {
        Err(e @ OpenError::Topic(TopicError::Segment(SegmentError::WrongType { .. }))) => {
            let text = e.to_string();
            let OpenError::Topic(TopicError::Segment(SegmentError::WrongType { expected, found, .. })) = e else {
                unreachable!()
            };
            (expected.name, found.name, text)
        }
        other => panic!("expected OpenError::Topic(TopicError::Segment(SegmentError::WrongType)), got {other:?}"),
    }
}

/// Scenario 7: a process attaching to a topic of `Msg` (created by another process) with another
/// type gets `WrongType` naming both types, whether the size, the name or the codec differs;
/// another process gets the same; a `Kind` mismatch is `WrongKind`.
#[test]
fn attaching_with_another_type_names_both_types() {
    let mut s = scope!("wrongtype");
    let name = s.name();
    let mut creator = s.spawn(
        "creator",
        &[
            "pub-repl",
            "--topic",
            &name,
            "--overflow",
            "back-pressure",
            "--capacity",
            "8",
        ],
    );
    creator.expect("ready", STEP);
    let topic = Topic::builder(&name);
    let ours = std::any::type_name::<Msg>();

    // Another size.
    let (expected, found, text) = wrong_type(topic.subscriber::<SmallMsg>());
    assert_eq!(
        (expected.as_str(), found.as_str()),
        (std::any::type_name::<SmallMsg>(), ours)
    );
    assert!(
        text.contains(&expected) && text.contains(&found),
        "the message names both types: {text}"
    );
    // Same size, another name.
    let (expected, found, text) = wrong_type(topic.publisher::<OtherMsg>());
    assert_eq!(
        (expected.as_str(), found.as_str()),
        (std::any::type_name::<OtherMsg>(), ours)
    );
    assert!(text.contains(&expected) && text.contains(&found), "{text}");
    // Same type, another recorded name.
    let (expected, found, _) =
        wrong_type(topic.clone().type_name("renamed::Msg").subscriber::<Msg>());
    assert_eq!((expected.as_str(), found.as_str()), ("renamed::Msg", ours));
    // Another codec.
    let (expected, found, _) = wrong_type(topic.serde_subscriber::<Rec>());
    assert_eq!(
        (expected.as_str(), found.as_str()),
        (std::any::type_name::<Rec>(), ours)
    );

    // From another process.
    let mut other = s.spawn(
        "other process",
        &["open", "--topic", &name, "--type", "small"],
    );
    let err = other.expect("error", STEP);
    assert_eq!(err.get("code"), "wrong-type", "{}", err.raw);
    assert!(
        err.get("msg").contains("SmallMsg") && err.get("msg").contains(ours),
        "{}",
        err.raw
    );
    other.wait(STEP);

    // Another kind of object under the name.
    match Mutex::<u64>::open(&name) {
        Err(OpenError::Segment(SegmentError::WrongKind {
            expected: Kind::Mutex,
            found: Kind::Topic,
            ..
        })) => {}
        other => panic!("expected WrongKind, got {other:?}"),
    }

    // The right type still works, and the refused attempts left the topic intact.
    let sub = topic.subscriber::<Msg>().expect("the right type");
    creator.send("send 3");
    creator.expect("sent", STEP);
    for i in 0..3 {
        let m = sub.try_recv().expect("message");
        assert!(m.is_intact() && m.index == i, "{m:?}");
    }
    creator.send("quit");
    creator.finish("bye", STEP);
    drop(sub);
    s.assert_gone(&name);
}

/// Scenario 7: an explicit QoS that the existing topic cannot honour is `TopicError::Qos` naming
/// the setting and both values; settings left alone take the topic's.
#[test]
fn qos_mismatch_is_a_qos_error() {
    let mut s = scope!("qos");
    let name = s.name();
    let mut creator = s.spawn(
        "creator",
        &[
            "pub-repl",
            "--topic",
            &name,
            "--overflow",
            "back-pressure",
            "--capacity",
            "8",
        ],
    );
    creator.expect("ready", STEP);

    let qos = |r: Result<shmbus::Subscriber<Msg>, OpenError>| match r {
        Err(e @ OpenError::Topic(TopicError::Qos { .. })) => {
            let text = e.to_string();
            let OpenError::Topic(TopicError::Qos {
                what,
                requested,
                found,
                ..
            }) = e
            else {
                unreachable!()
            };
            (what, requested, found, text)
        }
        other => panic!("expected TopicError::Qos, got {other:?}"),
    };
    let (what, requested, found, text) = qos(Topic::builder(&name)
        .overflow(Overflow::Overwrite)
        .subscriber::<Msg>());
    assert_eq!(
        (what, requested.as_str(), found.as_str()),
        ("overflow policy", "Overwrite", "BackPressure")
    );
    assert!(
        text.contains("Overwrite") && text.contains("BackPressure"),
        "{text}"
    );
    let (what, _, found, _) = qos(Topic::builder(&name).capacity(64).subscriber::<Msg>());
    assert_eq!((what, found.as_str()), ("capacity", "8"));

    // From another process.
    let mut other = s.spawn(
        "other process",
        &["open", "--topic", &name, "--overflow", "overwrite"],
    );
    assert_eq!(other.expect("error", STEP).get("code"), "qos");
    other.wait(STEP);

    // Compatible requests are accepted.
    let a = Topic::builder(&name)
        .subscriber::<Msg>()
        .expect("no explicit QoS");
    let b = Topic::builder(&name)
        .overflow(Overflow::BackPressure)
        .capacity(4)
        .subscriber::<Msg>()
        .expect("honoured QoS");
    creator.send("quit");
    creator.finish("bye", STEP);
    drop((a, b));
    s.assert_gone(&name);
}

/// Stable type identity (`shmbus::Message`, `Topic::join`) between this crate and the peer
/// binary, each with its own copy of the types (`shmbus-test-peer/identity.rs`): two crates,
/// two compilations, one declared name and layout.
mod identity {
    use serde::{Deserialize, Serialize};
    use shmbus::{
        ArrayPublisher, ArraySubscriber, Message, OpenError, Publisher, SegmentError,
        SerdeSubscriber, Subscriber, Topic, TopicError,
    };
    use shmbus_core::layout::TypeInfo;
    use shmbus_tests::{scope, STEP};

    /// The peer's `Pose`, declared again here.
    #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable, Message)]
    #[repr(C)]
    #[shmbus(name = "test.Pose")]
    struct Pose {
        x: f64,
        y: f64,
        theta: f64,
        stamp: u64,
    }

    /// The peer's `PoseReordered`: `Pose` with `x` and `y` swapped.
    #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable, Message)]
    #[repr(C)]
    #[shmbus(name = "test.Pose")]
    struct PoseReordered {
        y: f64,
        x: f64,
        theta: f64,
        stamp: u64,
    }

    #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable, Message)]
    #[repr(C)]
    #[shmbus(name = "test.Cell")]
    struct Cell(u32, f32);

    #[derive(Clone, Copy, Debug, PartialEq, Message)]
    #[repr(C)]
    struct Stamped<T> {
        stamp: u64,
        value: T,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Message)]
    #[shmbus(name = "test.Plan")]
    struct Plan {
        label: String,
        waypoints: Vec<[f64; 2]>,
        speed: Option<f32>,
    }

    impl Pose {
        fn at(i: u64) -> Pose {
            Pose {
                x: i as f64,
                y: -(i as f64),
                theta: 0.25,
                stamp: 1000 + i,
            }
        }
    }

    impl Plan {
        fn at(i: u64) -> Plan {
            Plan {
                label: format!("plan {i}"),
                waypoints: (0..i % 4).map(|k| [k as f64, i as f64]).collect(),
                speed: (i % 2 == 0).then_some(0.5),
            }
        }
    }

    /// The two sides of a `WrongType`, and the error's text.
    fn wrong_type(r: Result<impl std::fmt::Debug, OpenError>) -> (TypeInfo, TypeInfo, String) {
        match r {
            Err(e @ OpenError::Topic(TopicError::Segment(SegmentError::WrongType { .. }))) => {
                let text = e.to_string();
                let OpenError::Topic(TopicError::Segment(SegmentError::WrongType {
                    expected,
                    found,
                    ..
                })) = e
                else {
                    unreachable!()
                };
                (*expected, *found, text)
            }
            other => panic!("expected WrongType, got {other:?}"),
        }
    }

    /// A struct of the same name, size and field types but other field offsets is refused,
    /// in this process and in another one, and the error names both sides with their
    /// fingerprints; the topic stays usable for the right type.
    #[test]
    fn reordered_fields_under_one_name_are_a_wrong_type() {
        let mut s = scope!("ident-reorder");
        let name = s.name();
        let mut creator = s.spawn(
            "creator",
            &[
                "ident-open",
                "--topic",
                &name,
                "--ident",
                "pose",
                "--publisher",
                "--hold",
            ],
        );
        creator.expect("ok", STEP);
        let topic = Topic::builder(&name);

        let (expected, found, text) = wrong_type(topic.join::<Subscriber<PoseReordered>>());
        assert_eq!(
            (expected.name.as_str(), found.name.as_str()),
            ("test.Pose", "test.Pose")
        );
        assert_eq!((expected.size, expected.align), (found.size, found.align));
        assert_ne!(expected.fingerprint, found.fingerprint);
        for side in [&expected, &found] {
            assert!(
                text.contains(&format!("{:016x}", side.fingerprint)),
                "the message shows both fingerprints: {text}"
            );
        }
        assert_eq!(text.matches("test.Pose").count(), 2, "{text}");
        // As a publisher too.
        let (expected, _, _) = wrong_type(topic.join::<Publisher<PoseReordered>>());
        assert_eq!(expected.name, "test.Pose");
        // An explicit name does not hide the layout.
        let renamed = topic.clone().type_name("test.Pose");
        let (expected, found, _) = wrong_type(renamed.join::<Subscriber<PoseReordered>>());
        assert_eq!(
            (expected.name, found.name),
            ("test.Pose".into(), "test.Pose".into())
        );
        // Rust's type name is not the declared one.
        let (expected, found, _) = wrong_type(topic.subscriber::<Pose>());
        assert_eq!(
            (expected.name.as_str(), found.name.as_str()),
            (std::any::type_name::<Pose>(), "test.Pose")
        );

        // From another process.
        let mut other = s.spawn(
            "other process",
            &["ident-open", "--topic", &name, "--ident", "pose-reordered"],
        );
        let err = other.expect("error", STEP);
        assert_eq!(err.get("code"), "wrong-type", "{}", err.raw);
        assert_eq!(
            err.get("msg").matches("test.Pose").count(),
            2,
            "{}",
            err.raw
        );
        other.wait(STEP);

        // The declared type still joins, from this crate's own copy.
        let sub = topic.join::<Subscriber<Pose>>().expect("the same layout");
        creator.kill();
        drop(sub);
        s.assert_gone(&name);
    }

    /// This crate's and the peer's copies of a message share a topic through their declared
    /// name (plain and serde), where their Rust type names differ.
    #[test]
    fn copies_in_two_crates_share_a_topic_by_name() {
        let mut s = scope!("ident-copies");

        // Plain old data.
        let name = s.name();
        let mut publisher = s.spawn(
            "pose publisher",
            &[
                "ident-open",
                "--topic",
                &name,
                "--ident",
                "pose",
                "--publisher",
                "--count",
                "5",
                "--hold",
            ],
        );
        assert_eq!(publisher.expect("sent", STEP).num("count"), 5);
        let sub = Topic::builder(&name)
            .history(5)
            .join::<Subscriber<Pose>>()
            .expect("the peer's copy of the type");
        for i in 0..5 {
            assert_eq!(*sub.try_recv().expect("a pose"), Pose::at(i));
        }
        publisher.kill();
        drop(sub);
        s.assert_gone(&name);

        // Serde.
        let name = s.name();
        let mut publisher = s.spawn(
            "plan publisher",
            &[
                "ident-open",
                "--topic",
                &name,
                "--ident",
                "plan",
                "--publisher",
                "--count",
                "6",
                "--hold",
            ],
        );
        assert_eq!(publisher.expect("sent", STEP).num("count"), 6);
        let sub = Topic::builder(&name)
            .history(6)
            .join::<SerdeSubscriber<Plan>>()
            .expect("the peer's copy of the type");
        for i in 0..6 {
            assert_eq!(sub.try_recv().expect("a plan"), Plan::at(i));
        }
        publisher.kill();
        drop(sub);
        s.assert_gone(&name);

        // Without the declared names, the two copies do not agree.
        let name = s.name();
        let mut publisher = s.spawn(
            "plain publisher",
            &[
                "ident-open",
                "--topic",
                &name,
                "--ident",
                "pose",
                "--publisher",
                "--plain",
                "--hold",
            ],
        );
        publisher.expect("ok", STEP);
        let (expected, found, _) = wrong_type(Topic::builder(&name).subscriber::<Pose>());
        assert_eq!(expected.name, std::any::type_name::<Pose>());
        assert!(
            found.name.ends_with("::Pose") && found.name != expected.name,
            "the peer's type name: {}",
            found.name
        );
        // Killed as the last user: the scope removes the file it leaves.
        publisher.kill();
    }

    /// The derive computes the same fingerprints in the peer binary's compilation as in this
    /// one, and moving fields changes them in both.
    #[test]
    fn layout_fingerprints_agree_between_compilations() {
        let mut s = scope!("ident-layouts");
        let mut peer = s.spawn("layouts", &["ident-layouts"]);
        let mut theirs = std::collections::HashMap::new();
        for _ in 0..5 {
            let line = peer.expect("layout", STEP);
            theirs.insert(
                line.get("type").to_owned(),
                (line.get("name").to_owned(), line.get("value").to_owned()),
            );
        }
        peer.expect("done", STEP);
        peer.wait(STEP);
        fn ours<T: Message>() -> (String, String) {
            (T::NAME.to_owned(), format!("{:016x}", T::LAYOUT))
        }
        let expected = [
            ("pose", ours::<Pose>()),
            ("pose-reordered", ours::<PoseReordered>()),
            ("cell", ours::<Cell>()),
            ("stamped", ours::<Stamped<[f32; 3]>>()),
            ("plan", ours::<Plan>()),
        ];
        assert_eq!(theirs.len(), expected.len(), "{theirs:?}");
        for (key, mine) in expected {
            assert_eq!(theirs[key], mine, "{key}: the peer's, then ours");
        }
        assert_ne!(theirs["pose"].1, theirs["pose-reordered"].1);
        assert_ne!(Pose::LAYOUT, PoseReordered::LAYOUT);
        assert_ne!(<Stamped<[f32; 3]>>::LAYOUT, <Stamped<[u32; 3]>>::LAYOUT);
    }

    /// An array topic records `array+<name>` and its metadata's layout.
    #[test]
    fn array_topics_record_the_metadata_identity() {
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Message)]
        #[repr(C)]
        #[shmbus(name = "test.FrameMeta")]
        struct Meta {
            index: u64,
            exposure: f32,
            gain: f32,
        }
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Message)]
        #[repr(C)]
        #[shmbus(name = "test.FrameMeta")]
        struct Swapped {
            index: u64,
            gain: f32,
            exposure: f32,
        }
        let mut s = scope!("ident-array");
        let name = s.name();
        let topic = Topic::builder(&name);
        let publisher = topic.join::<ArrayPublisher<Meta>>().expect("creates");
        let subscriber = topic.join::<ArraySubscriber<Meta>>().expect("same type");
        let (expected, found, _) = wrong_type(topic.join::<ArraySubscriber<Swapped>>());
        assert_eq!(
            (expected.name.as_str(), found.name.as_str()),
            ("array+test.FrameMeta", "array+test.FrameMeta")
        );
        assert_ne!(expected.fingerprint, found.fingerprint);
        drop((publisher, subscriber));
        s.assert_gone(&name);
    }
}
