//! Local topics out: one thread finds the topics to export, subscribes to each, and sleeps on
//! all of them in one wait set.

use std::time::{Duration, Instant};

use shmbus_core::name::Name;
use shmbus_core::pool::{BlockReceived, PoolSubscriber};
use shmbus_core::ring::Overflow;
use shmbus_core::segment::{self, Kind};
use shmbus_core::topic::{RawSubscriber, RawTopic, Received, TopicOptions};
use shmbus_core::waitset::{RawWaitSet, Readiness, Source};
use shmbus_core::wire::type_name::ARRAY_TOPIC_PREFIX;
use zenoh::qos::CongestionControl;
use zenoh::Wait;

use crate::wire::{ArrayInfo, Header, Qos, TopicKind};
use crate::{Direction, Shared, Stats};

/// How often the thread looks for new local topics.
const SCAN_EVERY: Duration = Duration::from_millis(250);

/// How long one wait lasts at most (the stop flag is looked at in between).
const WAIT_SLICE: Duration = Duration::from_millis(100);

enum Sub {
    Raw(RawSubscriber),
    Pool(PoolSubscriber),
}

struct Exported {
    name: String,
    sub: Sub,
    header: Header,
    publisher: zenoh::pubsub::Publisher<'static>,
    min_interval: Option<Duration>,
    last_sent: Option<Instant>,
}

impl Exported {
    fn source(&self) -> Source<'_> {
        match &self.sub {
            Sub::Raw(s) => Source::Subscriber(s),
            Sub::Pool(p) => Source::Pool(p),
        }
    }

    /// Whether the rate limit lets a message through now (overwrite topics only).
    fn rate_allows(&mut self) -> bool {
        let (Some(iv), Some(last)) = (self.min_interval, self.last_sent) else {
            return true;
        };
        self.header.qos.overflow == Overflow::BackPressure || last.elapsed() >= iv
    }

    /// Puts `payload` (handed to Zenoh as it is: no copy here).
    fn put(&mut self, payload: Vec<u8>, seq: u64, stats: &Stats) {
        self.header.seq = seq;
        let r = self
            .publisher
            .put(payload)
            .attachment(self.header.encode())
            .wait();
        match r {
            Ok(()) => {
                Stats::bump(&stats.exported, 1);
                self.last_sent = Some(Instant::now());
            }
            Err(e) => tracing::warn!(topic = %self.name, error = %e, "zenoh refused a put"),
        }
    }

    /// Forwards everything the subscriber has now.
    fn drain(&mut self, stats: &Stats) {
        loop {
            let allow = self.rate_allows();
            match &self.sub {
                Sub::Raw(s) => match s.try_receive() {
                    Ok(Received::Message(held)) => {
                        let seq = held.seq();
                        let payload = match message_bytes(
                            self.header.kind,
                            s.slot(&held),
                            self.header.type_info.size,
                        ) {
                            Some(p) => p.to_vec(),
                            None => {
                                s.release(held);
                                Stats::bump(&stats.refused, 1);
                                tracing::warn!(topic = %self.name, seq, "a message with a bad frame was not forwarded");
                                continue;
                            }
                        };
                        s.release(held);
                        if allow {
                            self.put(payload, seq, stats);
                        } else {
                            Stats::bump(&stats.dropped, 1);
                        }
                    }
                    Ok(Received::Lagged(n)) => Stats::bump(&stats.lagged, n),
                    Ok(Received::Empty | Received::Disconnected) => return,
                    Err(e) => {
                        tracing::warn!(topic = %self.name, error = %e, "receive failed");
                        return;
                    }
                },
                Sub::Pool(p) => match take_array(p, allow) {
                    Taken::Array(seq, payload, array) => {
                        self.header.array = Some(array);
                        self.put(payload, seq, stats);
                    }
                    Taken::Skipped => Stats::bump(&stats.dropped, 1),
                    Taken::Lagged(n) => Stats::bump(&stats.lagged, n),
                    Taken::Refused(e) => {
                        // A refused descriptor: the subscriber released it; go on.
                        Stats::bump(&stats.refused, 1);
                        tracing::warn!(topic = %self.name, error = %e, "an array was not forwarded");
                    }
                    Taken::Nothing => return,
                },
            }
        }
    }
}

/// What one receive of an array topic gave, owned.
enum Taken {
    Array(u64, Vec<u8>, ArrayInfo),
    Skipped,
    Lagged(u64),
    Refused(String),
    Nothing,
}

/// Takes the next array: its metadata and bytes copied out (`allow`: the rate limit lets it
/// through; else it is taken and skipped).
fn take_array(p: &PoolSubscriber, allow: bool) -> Taken {
    match p.try_receive() {
        Ok(BlockReceived::Block(b)) => {
            if !allow {
                return Taken::Skipped;
            }
            let meta = b.meta();
            let mut payload = Vec::with_capacity(meta.len() + b.bytes().len());
            payload.extend_from_slice(meta);
            payload.extend_from_slice(b.bytes());
            let array = ArrayInfo {
                dtype: b.dtype(),
                shape: b.shape().to_vec(),
                meta_len: meta.len(),
            };
            Taken::Array(b.seq(), payload, array)
        }
        Ok(BlockReceived::Lagged(n)) => Taken::Lagged(n),
        Ok(BlockReceived::Empty | BlockReceived::Disconnected) => Taken::Nothing,
        Err(e) => Taken::Refused(e.to_string()),
    }
}

/// The bytes of a plain-old-data or serde message in its slot, checked against the slot.
fn message_bytes(kind: TopicKind, slot: &[u8], size: u64) -> Option<&[u8]> {
    match kind {
        TopicKind::Pod => slot.get(..usize::try_from(size).ok()?),
        TopicKind::Serde => {
            let len = u32::from_le_bytes(slot.get(..4)?.try_into().ok()?) as usize;
            slot.get(..len.checked_add(4)?)
        }
        TopicKind::Array => None,
    }
}

/// Subscribes to `name` if it is a topic to export; `None` (logged) if it cannot be.
fn open(shared: &Shared, session: &zenoh::Session, name: &Name) -> Option<Exported> {
    let rule = shared.config.export_rule(name.as_str())?;
    let info = segment::peek(name).ok()?;
    if info.kind != Kind::Topic {
        return None;
    }
    // Only topics someone publishes on here: a topic that only has subscribers on this machine
    // is one to import, not to export (looked at again at the next scan).
    let topic = RawTopic::open(name, &info.type_info, &TopicOptions::default()).ok()?;
    if !topic.has_publisher() {
        return None;
    }
    if !shared.claim(name.as_str(), Direction::Export) {
        // This bridge publishes into it (an import): exporting it would send its messages back.
        return None;
    }
    let opened = || -> Result<Exported, String> {
        let c = *topic.config();
        let kind = if info.type_info.name.starts_with(ARRAY_TOPIC_PREFIX) {
            TopicKind::Array
        } else if info.type_info.size == 0 {
            TopicKind::Serde
        } else {
            TopicKind::Pod
        };
        let sub = match kind {
            TopicKind::Array => {
                Sub::Pool(PoolSubscriber::new(topic, 0).map_err(|e| e.to_string())?)
            }
            _ => Sub::Raw(RawSubscriber::new(topic, 0).map_err(|e| e.to_string())?),
        };
        let congestion = match c.overflow {
            Overflow::Overwrite => CongestionControl::Drop,
            Overflow::BackPressure => CongestionControl::Block,
        };
        let publisher = session
            .declare_publisher(shared.key(name.as_str()))
            .congestion_control(congestion)
            .wait()
            .map_err(|e| e.to_string())?;
        Ok(Exported {
            name: name.as_str().to_owned(),
            sub,
            header: Header {
                bridge: shared.id,
                kind,
                type_info: info.type_info.clone(),
                qos: Qos {
                    overflow: c.overflow,
                    capacity: c.capacity,
                    slot_size: c.slot_size,
                    max_publishers: c.max_publishers,
                    max_subscribers: c.max_subscribers,
                    timestamps: c.timestamps,
                },
                seq: 0,
                array: None,
            },
            publisher,
            min_interval: rule.max_rate_hz.map(|hz| Duration::from_secs_f64(1.0 / hz)),
            last_sent: None,
        })
    };
    match opened() {
        Ok(e) => {
            tracing::info!(topic = %name, key = %shared.key(name.as_str()), "exporting");
            Some(e)
        }
        Err(reason) => {
            shared.release(name.as_str(), Direction::Export);
            tracing::debug!(topic = %name, %reason, "not exported (yet)");
            None
        }
    }
}

/// The export thread.
pub(crate) fn run(shared: &Shared, session: &zenoh::Session) {
    let mut topics: Vec<Exported> = Vec::new();
    let mut last_scan: Option<Instant> = None;
    let waits = RawWaitSet::new().is_ok();
    while !shared.stopped() {
        if last_scan.is_none_or(|t| t.elapsed() >= SCAN_EVERY) {
            last_scan = Some(Instant::now());
            if let Ok(names) = segment::list() {
                for name in names {
                    if topics.len() >= shmbus_core::waitset::MAX_ATTACHMENTS {
                        break;
                    }
                    if topics.iter().any(|t| t.name == name.as_str()) {
                        continue;
                    }
                    if let Some(e) = open(shared, session, &name) {
                        topics.push(e);
                    }
                }
            }
        }
        let mut gone: Vec<usize> = Vec::new();
        if waits && !topics.is_empty() {
            let mut set = RawWaitSet::new().expect("probed above");
            let keys: Vec<_> = topics
                .iter()
                .filter_map(|t| set.attach(t.source()).ok())
                .collect();
            let ready = set.wait(Some(WAIT_SLICE)).unwrap_or_default();
            drop(set);
            for (key, how) in ready {
                if how == Readiness::Disconnected {
                    if let Some(i) = keys.iter().position(|&k| k == key) {
                        gone.push(i);
                    }
                }
            }
        } else {
            std::thread::sleep(if topics.is_empty() {
                WAIT_SLICE
            } else {
                Duration::from_millis(1)
            });
        }
        for t in &mut topics {
            t.drain(&shared.stats);
        }
        // A topic whose publishers are all gone: leave it (a scoped topic can then go away);
        // the scan finds it again if it is still there.
        gone.sort_unstable();
        for i in gone.into_iter().rev() {
            let t = topics.remove(i);
            shared.release(&t.name, Direction::Export);
            tracing::info!(topic = %t.name, "no publisher left: stopped exporting");
        }
    }
}
