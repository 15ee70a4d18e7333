//! Events both ways: a thread watches the local events that match an export rule and puts one
//! message per observed set; the import side sets the local event of that name.
//!
//! An event is a signal, not a stream, so it may be carried both ways by one bridge: the
//! import side records the set count its own set produced (under a lock it holds across the set),
//! and the watcher skips exactly those sets, so a set is never sent back.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use shmbus_core::name::Name;
use shmbus_core::named::RawEvent;
use shmbus_core::segment::{self, Kind, Lifetime};
use shmbus_core::waitset::reactor::{Interest, Registration};
use zenoh::sample::Locality;
use zenoh::Wait;

use crate::wire::EventHeader;
use crate::{BridgeError, Shared, Stats};

/// How often the watcher looks for new local events.
const SCAN_EVERY: Duration = Duration::from_millis(250);

/// The set counts this bridge's own sets produced, per event, not yet seen by the watcher.
#[derive(Default)]
pub(crate) struct Injected(Mutex<HashMap<String, HashSet<u32>>>);

impl Injected {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<u32>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The key of event `name`.
pub(crate) fn key(shared: &Shared, name: &str) -> String {
    format!("{}/_event/{name}", shared.config.key_prefix)
}

struct Thread(std::thread::Thread);

impl Wake for Thread {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

struct Watched {
    name: String,
    event: Arc<RawEvent>,
    seen: u32,
    registration: Registration,
}

/// The watcher thread: forwards every set of the local events to export.
pub(crate) fn watch(shared: &Shared, session: &zenoh::Session, injected: &Injected) {
    let waker = Waker::from(Arc::new(Thread(std::thread::current())));
    let mut watched: Vec<Watched> = Vec::new();
    let mut last_scan: Option<Instant> = None;
    while !shared.stopped() {
        if last_scan.is_none_or(|t| t.elapsed() >= SCAN_EVERY) {
            last_scan = Some(Instant::now());
            for name in segment::list().unwrap_or_default() {
                if shared.config.export_rule(name.as_str()).is_none()
                    || watched.iter().any(|w| w.name == name.as_str())
                    || !segment::peek(&name).is_ok_and(|i| i.kind == Kind::Event)
                {
                    continue;
                }
                if let Ok(e) = RawEvent::open(&name) {
                    let event = Arc::new(e);
                    tracing::info!(event = %name, "exporting its sets");
                    watched.push(Watched {
                        name: name.as_str().to_owned(),
                        seen: event.sets(),
                        registration: Registration::new(Interest::event(event.clone())),
                        event,
                    });
                }
            }
        }
        let mut pending = false;
        for w in &mut watched {
            // Under the import side's lock: every set it made up to `now` is recorded.
            let (now, local) = {
                let mut inj = injected.lock();
                let now = w.event.sets();
                let mut mine = inj.get_mut(&w.name);
                let mut local = false;
                if now != w.seen {
                    let mut g = w.seen;
                    // Every set since the last look (bounded: a burst is one message anyway).
                    for _ in 0..1024 {
                        if g == now {
                            break;
                        }
                        g = g.wrapping_add(1) & (u32::MAX >> 1);
                        let injected_here = mine.as_mut().is_some_and(|m| m.remove(&g));
                        local |= !injected_here;
                    }
                    if g != now {
                        local = true;
                    }
                }
                (now, local)
            };
            w.seen = now;
            if local {
                let header = EventHeader {
                    bridge: shared.id,
                    mode: w.event.event_mode(),
                };
                match session
                    .put(key(shared, &w.name), Vec::<u8>::new())
                    .attachment(header.encode())
                    .wait()
                {
                    Ok(()) => Stats::bump(&shared.stats.exported, 1),
                    Err(e) => tracing::warn!(event = %w.name, error = %e, "zenoh refused a put"),
                }
            }
            if w.registration.arm(&waker) {
                if w.event.sets() == w.seen {
                    w.registration.park(&waker);
                } else {
                    w.registration.disarm();
                    pending = true;
                }
            }
        }
        if pending {
            continue;
        }
        std::thread::park_timeout(SCAN_EVERY);
    }
}

/// The import side of events: keeps the Zenoh subscriber.
pub(crate) struct EventImporter {
    _subscriber: zenoh::pubsub::Subscriber<()>,
}

impl EventImporter {
    pub(crate) fn start(
        shared: Arc<Shared>,
        session: &zenoh::Session,
        injected: Arc<Injected>,
    ) -> Result<EventImporter, BridgeError> {
        let prefix = format!("{}/_event/", shared.config.key_prefix);
        let events: Mutex<HashMap<String, Arc<RawEvent>>> = Mutex::default();
        let subscriber = session
            .declare_subscriber(format!("{prefix}*"))
            .allowed_origin(Locality::Remote)
            .callback(move |sample| {
                let Some(name) = sample.key_expr().as_str().strip_prefix(&prefix) else {
                    return;
                };
                if !shared.config.imports(name) {
                    return;
                }
                let header = match sample.attachment().map(|a| EventHeader::decode(&a.to_bytes())) {
                    Some(Ok(h)) if h.bridge != shared.id => h,
                    Some(Ok(_)) => return,
                    Some(Err(e)) => {
                        Stats::bump(&shared.stats.refused, 1);
                        tracing::warn!(event = name, error = %e, "refused an event set");
                        return;
                    }
                    None => {
                        Stats::bump(&shared.stats.refused, 1);
                        return;
                    }
                };
                let event = {
                    let mut ev = events.lock().unwrap_or_else(PoisonError::into_inner);
                    match ev.get(name) {
                        Some(e) => e.clone(),
                        None => {
                            let opened = Name::new(name).map_err(|e| e.to_string()).and_then(|n| {
                                RawEvent::open(&n)
                                    .or_else(|_| {
                                        RawEvent::open_or_create(
                                            &n,
                                            header.mode,
                                            false,
                                            0o600,
                                            Lifetime::Scoped,
                                        )
                                    })
                                    .map_err(|e| e.to_string())
                            });
                            match opened {
                                Ok(e) => {
                                    let e = Arc::new(e);
                                    ev.insert(name.to_owned(), e.clone());
                                    e
                                }
                                Err(reason) => {
                                    Stats::bump(&shared.stats.refused, 1);
                                    tracing::warn!(event = name, %reason, "cannot open the local event");
                                    return;
                                }
                            }
                        }
                    }
                };
                let mut inj = injected.lock();
                let count = event.set_counted();
                inj.entry(name.to_owned()).or_default().insert(count);
                drop(inj);
                Stats::bump(&shared.stats.imported, 1);
            })
            .wait()
            .map_err(|e| BridgeError::Zenoh(e.to_string()))?;
        Ok(EventImporter {
            _subscriber: subscriber,
        })
    }
}
