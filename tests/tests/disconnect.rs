//! `Disconnected` reaches a subscriber that waits in short slices (as the Python binding does,
//! 50 ms at a time, to run signal handlers in between) once every publisher it saw is gone.

use std::time::{Duration, Instant};

use shmbus::{RecvError, Topic};
use shmbus_tests::{scope, Msg};

/// Receives in `slice`s for at most `limit`; whether one of them ended in `Disconnected`.
fn disconnects_within(
    limit: Duration,
    mut recv: impl FnMut() -> Result<(), RecvError>,
) -> Result<Duration, String> {
    let start = Instant::now();
    while start.elapsed() < limit {
        match recv() {
            Err(RecvError::Timeout) => {}
            Err(RecvError::Disconnected) => return Ok(start.elapsed()),
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    Err(format!("no Disconnected within {limit:?}"))
}

#[test]
fn short_timeouts_still_see_the_publisher_leave() {
    let mut s = scope!("disc-slices");
    let name = s.name();
    let topic = Topic::builder(&name);
    let sub = topic.subscriber::<Msg>().unwrap();
    let mut publisher = topic.publisher::<Msg>().unwrap();
    publisher.send(Msg::new(1, 0)).unwrap();
    drop(publisher);
    assert_eq!(sub.recv_timeout(Duration::from_secs(1)).unwrap().index, 0);
    for slice in [Duration::from_millis(50), Duration::from_millis(5)] {
        let took = disconnects_within(Duration::from_secs(3), || {
            sub.recv_timeout(slice).map(|_| ())
        });
        assert!(took.is_ok(), "slices of {slice:?}: {took:?}");
    }
}

#[test]
fn short_timeouts_see_a_publisher_that_joined_and_left_unseen() {
    let mut s = scope!("disc-unseen");
    let name = s.name();
    let topic = Topic::builder(&name);
    let sub = topic.array_subscriber::<()>().unwrap();
    // A publisher joins and leaves between two of the subscriber's checks, publishing nothing:
    // the subscriber never sees it alive, only the join count it left behind.
    drop(topic.array_publisher::<()>().unwrap());
    let took = disconnects_within(Duration::from_secs(3), || {
        sub.recv_timeout(Duration::from_millis(50)).map(|_| ())
    });
    assert!(took.is_ok(), "{took:?}");
}
