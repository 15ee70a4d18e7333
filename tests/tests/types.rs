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
