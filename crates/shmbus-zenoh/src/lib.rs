//! A bridge that carries chosen shmbus topics between machines over [Zenoh](https://zenoh.io).
//!
//! Run one bridge per machine (`shmbus-bridge`). It **exports** the local topics whose names
//! match its export rules: it subscribes to each (through a wait set, one thread for all of them)
//! and puts every message on the Zenoh key `<prefix>/<topic>`. It **imports** the keys whose
//! topics match its import rules: it publishes what it hears into the local topic of that name,
//! creating the topic with the type identity and QoS the sender's topic has. Local publishers
//! and subscribers on either side are unchanged.
//!
//! - Plain-old-data and serde topics carry their slot bytes; array topics carry the descriptor's
//!   dtype and shape, the metadata and the array (the importing bridge loans a block of its own
//!   pool and writes into it: one copy on each side).
//! - The type identity (name, size, alignment, fingerprint) travels with every message; a local
//!   topic of another type refuses it as a local join would (`WrongType`), and the bridge says so.
//! - Overwrite topics are sent with Zenoh's `Drop` congestion control (a slow link drops, as a
//!   slow subscriber lags); back-pressure topics with `Block`, and the importing side publishes
//!   with back-pressure (bounded waits, never a hang).
//! - No loops: a bridge never hears its own session (Zenoh's locality filter), every message
//!   names the bridge that sent it, and a bridge never exports a topic it imports into (a topic is
//!   bridged one way per machine; see decision 40).
//!
//! See [`config`] for the file and flags, and [`wire`] for what travels.

pub mod config;
mod events;
mod export;
mod import;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use zenoh::Wait;

pub use config::{Config, ConfigError, Rule};

/// Why a bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Zenoh refused the configuration or could not open a session.
    #[error("zenoh: {0}")]
    Zenoh(String),
    /// A thread could not be started.
    #[error("starting a bridge thread: {0}")]
    Thread(std::io::Error),
}

/// Counters of a running bridge.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages put on Zenoh.
    pub exported: AtomicU64,
    /// Messages published into local topics.
    pub imported: AtomicU64,
    /// Messages refused: malformed, of another type than the local topic, or for a topic
    /// bridged the other way.
    pub refused: AtomicU64,
    /// Messages dropped: skipped by an export's rate limit.
    pub dropped: AtomicU64,
    /// Messages the exporting subscribers missed (overwrite topics outrun by their publisher).
    pub lagged: AtomicU64,
}

impl Stats {
    fn bump(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Which way this bridge carries a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Export,
    Import,
}

/// What the bridge's threads share.
struct Shared {
    config: Config,
    /// This bridge's id on the wire (its Zenoh session id).
    id: [u8; 16],
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    /// The way each topic is bridged, claimed by the first side that meets it.
    directions: Mutex<HashMap<String, Direction>>,
}

impl Shared {
    /// Claims `topic` for `dir`; `false` if it is already bridged the other way.
    fn claim(&self, topic: &str, dir: Direction) -> bool {
        let mut d = self
            .directions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *d.entry(topic.to_owned()).or_insert(dir) == dir
    }

    fn release(&self, topic: &str, dir: Direction) {
        let mut d = self
            .directions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if d.get(topic) == Some(&dir) {
            d.remove(topic);
        }
    }

    fn key(&self, topic: &str) -> String {
        format!("{}/{topic}", self.config.key_prefix)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A running bridge: its Zenoh session and its threads.
pub struct Bridge {
    shared: Arc<Shared>,
    session: zenoh::Session,
    threads: Vec<std::thread::JoinHandle<()>>,
    _import: Option<import::Importer>,
    _events: Option<events::EventImporter>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("zid", &self.session.zid().to_string())
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// The Zenoh configuration of a bridge: peer mode, the given endpoints, multicast scouting only
/// when asked.
fn zenoh_config(c: &Config) -> Result<zenoh::Config, BridgeError> {
    let z = |e: zenoh::Error| BridgeError::Zenoh(e.to_string());
    let list = |v: &[String]| {
        let quoted: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
        format!("[{}]", quoted.join(","))
    };
    let mut zc = zenoh::Config::default();
    zc.insert_json5("mode", "\"peer\"").map_err(z)?;
    zc.insert_json5("listen/endpoints", &list(&c.listen))
        .map_err(z)?;
    zc.insert_json5("connect/endpoints", &list(&c.connect))
        .map_err(z)?;
    zc.insert_json5(
        "scouting/multicast/enabled",
        if c.scouting { "true" } else { "false" },
    )
    .map_err(z)?;
    Ok(zc)
}

impl Bridge {
    /// Opens the Zenoh session and starts forwarding; runs until [`stop`](Self::stop) or drop.
    ///
    /// # Errors
    ///
    /// [`BridgeError`] when the configuration is invalid, Zenoh cannot open a session (e.g. an
    /// endpoint to listen on is taken), or a thread cannot start.
    pub fn start(config: Config) -> Result<Bridge, BridgeError> {
        config.validate()?;
        let session = zenoh::open(zenoh_config(&config)?)
            .wait()
            .map_err(|e| BridgeError::Zenoh(e.to_string()))?;
        let id = session.zid().to_le_bytes();
        let shared = Arc::new(Shared {
            config,
            id,
            stop: Arc::new(AtomicBool::new(false)),
            stats: Arc::new(Stats::default()),
            directions: Mutex::new(HashMap::new()),
        });
        let mut threads = Vec::new();
        if !shared.config.export.is_empty() {
            let (s, z) = (shared.clone(), session.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("shmbus-bridge-export".into())
                    .spawn(move || export::run(&s, &z))
                    .map_err(BridgeError::Thread)?,
            );
        }
        let injected = Arc::new(events::Injected::default());
        if !shared.config.export.is_empty() {
            let (s, z, i) = (shared.clone(), session.clone(), injected.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("shmbus-bridge-events".into())
                    .spawn(move || events::watch(&s, &z, &i))
                    .map_err(BridgeError::Thread)?,
            );
        }
        let (importer, event_importer) = if shared.config.import.is_empty() {
            (None, None)
        } else {
            (
                Some(import::Importer::start(shared.clone(), &session)?),
                Some(events::EventImporter::start(
                    shared.clone(),
                    &session,
                    injected,
                )?),
            )
        };
        tracing::info!(zid = %session.zid(), "bridge started");
        Ok(Bridge {
            shared,
            session,
            threads,
            _import: importer,
            _events: event_importer,
        })
    }

    /// The counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// The flag that stops the bridge when set (for signal handlers).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.shared.stop.clone()
    }

    /// This bridge's Zenoh session id.
    pub fn zid(&self) -> String {
        self.session.zid().to_string()
    }

    /// Stops forwarding, leaves every local topic, and closes the session.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self._import.take();
        self._events.take();
        for t in self.threads.drain(..) {
            t.thread().unpark();
            let _ = t.join();
        }
        let _ = self.session.close().wait();
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.shutdown();
    }
}
