//! Remote topics in: a Zenoh subscriber hands each message to a thread per local topic, which
//! publishes it there.

use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
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

/// Messages waiting for one local topic.
const QUEUE: usize = 64;

/// How long a publish into a back-pressure topic waits for its slowest subscriber.
const BACK_PRESSURE_WAIT: Duration = Duration::from_secs(2);

/// How often a topic that could not be joined is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

type Job = (Header, Vec<u8>);

/// The import side: keeps the Zenoh subscriber (dropping it stops the callbacks) and the
/// workers' queues (dropping them ends the workers).
pub(crate) struct Importer {
    _subscriber: zenoh::pubsub::Subscriber<()>,
    workers: Arc<Mutex<HashMap<String, Option<SyncSender<Job>>>>>,
    threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
}

impl Drop for Importer {
    fn drop(&mut self) {
        self.workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Importer {
    pub(crate) fn start(
        shared: Arc<Shared>,
        session: &zenoh::Session,
    ) -> Result<Importer, BridgeError> {
        let workers: Arc<Mutex<HashMap<String, Option<SyncSender<Job>>>>> = Arc::default();
        let threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>> = Arc::default();
        let prefix = format!("{}/", shared.config.key_prefix);
        let (w, t, s) = (workers.clone(), threads.clone(), shared.clone());
        let subscriber = session
            .declare_subscriber(format!("{}*", prefix))
            // Never this session's own puts (its exports).
            .allowed_origin(Locality::Remote)
            .callback(move |sample| {
                let Some(topic) = sample.key_expr().as_str().strip_prefix(&prefix) else {
                    return;
                };
                if !s.config.imports(topic) {
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
                let payload = sample.payload().to_bytes().into_owned();
                dispatch(&s, &w, &t, topic, header, payload);
            })
            .wait()
            .map_err(|e| BridgeError::Zenoh(e.to_string()))?;
        Ok(Importer {
            _subscriber: subscriber,
            workers,
            threads,
        })
    }
}

/// Hands a message to its topic's worker, starting one if needed. Overwrite topics drop a
/// message when their queue is full; back-pressure topics wait (which holds up Zenoh's delivery,
/// and so the sender: that is what back-pressure means across the link).
fn dispatch(
    shared: &Arc<Shared>,
    workers: &Mutex<HashMap<String, Option<SyncSender<Job>>>>,
    threads: &Mutex<Vec<std::thread::JoinHandle<()>>>,
    topic: &str,
    header: Header,
    payload: Vec<u8>,
) {
    let tx = {
        let mut w = workers.lock().unwrap_or_else(PoisonError::into_inner);
        match w.get(topic) {
            Some(Some(tx)) => tx.clone(),
            Some(None) => {
                Stats::bump(&shared.stats.refused, 1);
                return;
            }
            None => {
                if !shared.claim(topic, Direction::Import) {
                    tracing::warn!(
                        topic,
                        "not imported: this bridge exports it (a topic is bridged one way per machine)"
                    );
                    w.insert(topic.to_owned(), None);
                    Stats::bump(&shared.stats.refused, 1);
                    return;
                }
                let (tx, rx) = sync_channel(QUEUE);
                let (s, name) = (shared.clone(), topic.to_owned());
                let spawned = std::thread::Builder::new()
                    .name(format!("shmbus-bridge-in-{topic}"))
                    .spawn(move || worker(&s, &name, &rx));
                match spawned {
                    Ok(h) => threads
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(h),
                    Err(e) => {
                        tracing::error!(topic, error = %e, "cannot start an import thread");
                        return;
                    }
                }
                w.insert(topic.to_owned(), Some(tx.clone()));
                tx
            }
        }
    };
    let job = (header, payload);
    if job.0.qos.overflow == Overflow::BackPressure {
        let _ = tx.send(job);
    } else if let Err(TrySendError::Full(_)) = tx.try_send(job) {
        Stats::bump(&shared.stats.dropped, 1);
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

/// One local topic's import thread: ends when the importer drops its queue.
fn worker(shared: &Shared, topic: &str, rx: &Receiver<Job>) {
    let name = match Name::new(topic) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(topic, error = %e, "not a topic name: not imported");
            return;
        }
    };
    let mut local: Option<(Local, u64)> = None;
    let mut failed_at: Option<Instant> = None;
    while let Ok((h, payload)) = rx.recv() {
        if shared.stopped() {
            break;
        }
        // Another type than the one joined: join again (and be refused as a local join is).
        if local
            .as_ref()
            .is_some_and(|(_, fp)| *fp != h.type_info.fingerprint)
        {
            local = None;
        }
        if local.is_none() {
            if failed_at.is_some_and(|t| t.elapsed() < RETRY_EVERY) {
                Stats::bump(&shared.stats.refused, 1);
                continue;
            }
            match join(&name, &h) {
                Ok(l) => {
                    tracing::info!(topic, "importing");
                    local = Some((l, h.type_info.fingerprint));
                    failed_at = None;
                }
                Err(e) => {
                    tracing::warn!(topic, error = %e, "cannot publish into the local topic");
                    failed_at = Some(Instant::now());
                    Stats::bump(&shared.stats.refused, 1);
                    continue;
                }
            }
        }
        let (l, _) = local.as_mut().expect("joined above");
        match publish(l, &h, &payload) {
            Ok(()) => Stats::bump(&shared.stats.imported, 1),
            Err(reason) => {
                Stats::bump(&shared.stats.refused, 1);
                tracing::warn!(topic, seq = h.seq, %reason, "a message was not published");
            }
        }
    }
    drop(local);
    shared.release(topic, Direction::Import);
}
