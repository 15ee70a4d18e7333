//! Remote topics in: the Zenoh subscriber's callback publishes each message into the local
//! topic of its name, in Zenoh's delivery thread (no hand-off to another thread: a message costs
//! one copy, from Zenoh's buffer into the slot or block).
//!
//! A back-pressure topic's publish may wait for its slowest local subscriber (at most 2 s a
//! message): that holds up Zenoh's delivery and, with `Block` congestion control, the sender,
//! which is what back-pressure means across the link.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use shmbus_core::name::Name;
use shmbus_core::pool::{PoolOptions, PoolPublisher};
use shmbus_core::ring::Overflow;
use shmbus_core::segment::SegmentError;
use shmbus_core::topic::{RawPublisher, RawTopic, TopicError, TopicOptions};
use zenoh::sample::Locality;
use zenoh::Wait;

use crate::wire::{Header, TopicKind};
use crate::{BridgeError, Direction, Shared, Stats};

/// How long a publish into a back-pressure topic waits for its slowest subscriber.
const BACK_PRESSURE_WAIT: Duration = Duration::from_secs(2);

/// How often a topic that could not be joined is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// One imported topic: its local publisher once joined.
struct Imported {
    name: Option<Name>,
    /// This bridge may import it (not claimed for export).
    allowed: bool,
    local: Option<(Local, u64)>,
    failed_at: Option<Instant>,
}

type Topics = Mutex<HashMap<String, Arc<Mutex<Imported>>>>;

/// The import side: keeps the Zenoh subscriber (dropping it stops the callbacks) and the
/// topics' publishers (dropping them leaves the local topics).
pub(crate) struct Importer {
    subscriber: Option<zenoh::pubsub::Subscriber<()>>,
    topics: Arc<Topics>,
    shared: Arc<Shared>,
}

impl Drop for Importer {
    fn drop(&mut self) {
        if let Some(s) = self.subscriber.take() {
            let _ = s.undeclare().wait();
        }
        let topics =
            std::mem::take(&mut *self.topics.lock().unwrap_or_else(PoisonError::into_inner));
        for (name, t) in topics {
            let mut t = t.lock().unwrap_or_else(PoisonError::into_inner);
            if t.allowed {
                t.local = None;
                self.shared.release(&name, Direction::Import);
            }
        }
    }
}

impl Importer {
    pub(crate) fn start(
        shared: Arc<Shared>,
        session: &zenoh::Session,
    ) -> Result<Importer, BridgeError> {
        let topics: Arc<Topics> = Arc::default();
        let prefix = format!("{}/", shared.config.key_prefix);
        let (t, s) = (topics.clone(), shared.clone());
        let subscriber = session
            .declare_subscriber(format!("{prefix}*"))
            // Never this session's own puts (its exports).
            .allowed_origin(Locality::Remote)
            .callback(move |sample| {
                let Some(topic) = sample.key_expr().as_str().strip_prefix(&prefix) else {
                    return;
                };
                if !s.config.imports(topic) || s.stopped() {
                    return;
                }
                let header = match sample.attachment().map(|a| Header::decode(&a.to_bytes())) {
                    Some(Ok(h)) => h,
                    Some(Err(e)) => {
                        Stats::bump(&s.stats.refused, 1);
                        tracing::warn!(topic, error = %e, "refused a message");
                        return;
                    }
                    None => {
                        Stats::bump(&s.stats.refused, 1);
                        tracing::warn!(topic, "refused a message without a shmbus header");
                        return;
                    }
                };
                if header.bridge == s.id {
                    return; // our own (the locality filter already keeps these out)
                }
                let entry = t
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(topic.to_owned())
                    .or_insert_with(|| {
                        let allowed = s.claim(topic, Direction::Import);
                        if !allowed {
                            tracing::warn!(
                                topic,
                                "not imported: this bridge exports it (a topic is bridged one way per machine)"
                            );
                        }
                        Arc::new(Mutex::new(Imported {
                            name: Name::new(topic).ok(),
                            allowed,
                            local: None,
                            failed_at: None,
                        }))
                    })
                    .clone();
                let mut entry = entry.lock().unwrap_or_else(PoisonError::into_inner);
                import(&s, topic, &mut entry, &header, &sample.payload().to_bytes());
            })
            .wait()
            .map_err(|e| BridgeError::Zenoh(e.to_string()))?;
        Ok(Importer {
            subscriber: Some(subscriber),
            topics,
            shared,
        })
    }
}

/// Publishes one message into its local topic, joining it first if needed.
fn import(shared: &Shared, topic: &str, t: &mut Imported, h: &Header, payload: &[u8]) {
    let Some(name) = t.name.as_ref().filter(|_| t.allowed) else {
        Stats::bump(&shared.stats.refused, 1);
        return;
    };
    // Another type than the one joined: join again (and be refused as a local join is).
    if t.local
        .as_ref()
        .is_some_and(|(_, fp)| *fp != h.type_info.fingerprint)
    {
        t.local = None;
    }
    if t.local.is_none() {
        if t.failed_at.is_some_and(|at| at.elapsed() < RETRY_EVERY) {
            Stats::bump(&shared.stats.refused, 1);
            return;
        }
        match join(name, h) {
            Ok(l) => {
                tracing::info!(topic, "importing");
                t.local = Some((l, h.type_info.fingerprint));
                t.failed_at = None;
            }
            Err(e) => {
                tracing::warn!(topic, error = %e, "cannot publish into the local topic");
                t.failed_at = Some(Instant::now());
                Stats::bump(&shared.stats.refused, 1);
                return;
            }
        }
    }
    let (l, _) = t.local.as_mut().expect("joined above");
    match publish(l, h, payload) {
        Ok(()) => Stats::bump(&shared.stats.imported, 1),
        Err(reason) => {
            Stats::bump(&shared.stats.refused, 1);
            tracing::warn!(topic, seq = h.seq, %reason, "a message was not published");
        }
    }
}

enum Local {
    Raw(RawPublisher),
    Pool(Box<PoolPublisher>),
}

/// Joins `name` as a publisher: an existing topic as it is (its type must be the sender's), a
/// missing one created with the sender's QoS.
fn join(name: &Name, h: &Header) -> Result<Local, TopicError> {
    let topic = match RawTopic::open(name, &h.type_info, &TopicOptions::default()) {
        Ok(t) => t,
        Err(TopicError::Segment(SegmentError::NotFound(_))) => {
            let q = h.qos;
            let opts = TopicOptions {
                capacity: Some(q.capacity),
                slot_size: Some(q.slot_size),
                max_publishers: Some(q.max_publishers),
                max_subscribers: Some(q.max_subscribers),
                overflow: Some(q.overflow),
                timestamps: Some(q.timestamps),
                ..TopicOptions::default()
            };
            RawTopic::open_or_create(name, &h.type_info, &opts)?
        }
        Err(e) => return Err(e),
    };
    Ok(match h.kind {
        TopicKind::Array => {
            Local::Pool(Box::new(PoolPublisher::new(topic, PoolOptions::default())?))
        }
        _ => Local::Raw(RawPublisher::new(topic)?),
    })
}

/// Publishes one message; `Err` says why it was refused.
fn publish(local: &mut Local, h: &Header, payload: &[u8]) -> Result<(), String> {
    let (meta, data) = h.check(payload).map_err(|e| e.to_string())?;
    let timeout = Some(match h.qos.overflow {
        Overflow::BackPressure => BACK_PRESSURE_WAIT,
        Overflow::Overwrite => Duration::from_secs(1),
    });
    match local {
        Local::Raw(p) => {
            let loan = p.loan().map_err(|e| e.to_string())?;
            let slot = p.slot_mut(&loan);
            if data.len() > slot.len() {
                let n = slot.len();
                p.cancel(loan);
                return Err(format!("{} bytes do not fit a slot of {n}", data.len()));
            }
            slot[..data.len()].copy_from_slice(data);
            p.publish(loan, timeout).map(drop).map_err(|(e, loan)| {
                p.cancel(loan);
                e.to_string()
            })
        }
        Local::Pool(p) => {
            let a = h
                .array
                .as_ref()
                .ok_or("an array message without its description")?;
            let loan = p
                .loan(a.dtype, &a.shape, timeout)
                .map_err(|e| e.to_string())?;
            let (block, meta_area) = p.parts_mut(&loan);
            if block.len() != data.len() || meta.len() > meta_area.len() {
                let (b, m) = (block.len(), meta_area.len());
                p.cancel(loan);
                return Err(format!(
                    "{} array bytes and {} of metadata for a block of {b} and metadata of {m}",
                    data.len(),
                    meta.len()
                ));
            }
            block.copy_from_slice(data);
            meta_area[..meta.len()].copy_from_slice(meta);
            p.publish(loan, timeout).map(drop).map_err(|(e, loan)| {
                p.cancel(loan);
                e.to_string()
            })
        }
    }
}
