//! What `ls` and `inspect` find: read without joining anything.
//!
//! Headers are read with [`segment::peek`], which never waits. A topic's participant rows are
//! read through [`RawTopic::open`], which maps the topic and takes a shared lock on it but joins
//! no row. That open is done only for a topic some process uses: opening a stale one would
//! reclaim it (remove it), and looking must not change anything. Every open is bounded by the
//! command's [`Budget`]; an object that does not open within it is listed as kind `?` with the
//! reason ([`OpenFailure`]).

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use serde::Serialize;
use shmbus_core::array::{ArrayError, Location, RawArray};
use shmbus_core::dtype::{c_strides, Dtype};
use shmbus_core::layout::{Codec, TypeInfo};
use shmbus_core::liveness;
use shmbus_core::name::Name;
use shmbus_core::pool;
use shmbus_core::ring::Overflow;
use shmbus_core::segment::{self, SegmentError, SegmentInfo, Stuck};
use shmbus_core::topic::{RawTopic, TopicError, TopicOptions};
use shmbus_core::wire::topic::param;
use shmbus_core::wire::{
    array_param, counter, lease, pool_param, Kind, Lifetime, FORMAT_VERSION, SHM_DIR,
};

use crate::budget::Budget;
use crate::decode::dtype_name;
use crate::error::CliError;

/// A stored type, as the header records it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TypeView {
    /// The type's name.
    pub(crate) name: String,
    /// Size in bytes (0: variable-length encoding).
    pub(crate) size: u64,
    /// Alignment in bytes.
    pub(crate) align: u64,
    /// `bytes`, `pod` or `postcard`.
    pub(crate) codec: &'static str,
    /// The layout fingerprint, 16 hex digits.
    pub(crate) fingerprint: String,
}

impl From<&TypeInfo> for TypeView {
    fn from(t: &TypeInfo) -> Self {
        TypeView {
            name: t.name.clone(),
            size: t.size,
            align: t.align,
            codec: codec_name(t.codec),
            fingerprint: format!("{:016x}", t.fingerprint),
        }
    }
}

/// The codec's name in the output.
pub(crate) fn codec_name(c: Codec) -> &'static str {
    match c {
        Codec::Bytes => "bytes",
        Codec::Pod => "pod",
        Codec::Postcard => "postcard",
    }
}

/// The lifetime's name in the output.
pub(crate) fn lifetime_name(l: Lifetime) -> &'static str {
    match l {
        Lifetime::Scoped => "scoped",
        Lifetime::Persistent => "persistent",
    }
}

/// A process that uses an object.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Owner {
    /// Process id.
    pub(crate) pid: u32,
    /// Whether it is alive (for topic rows: it holds the row's lease).
    pub(crate) alive: bool,
    /// `publisher`, `subscriber`, or `attached` (has the file open).
    pub(crate) role: &'static str,
}

/// One line of `ls`.
#[derive(Debug, Serialize)]
pub(crate) struct Entry {
    /// The shmbus name.
    pub(crate) name: String,
    /// `topic`, `array`, `pool`, `queue`, `mutex`, `semaphore`, `event`, `value`, or `?`.
    pub(crate) kind: String,
    /// The stored type, if the header could be read.
    #[serde(rename = "type")]
    pub(crate) type_info: Option<TypeView>,
    /// Arrays: numpy dtype name.
    pub(crate) dtype: Option<String>,
    /// Arrays: shape.
    pub(crate) shape: Option<Vec<usize>>,
    /// File size in bytes.
    pub(crate) size: Option<u64>,
    /// `scoped` or `persistent`.
    pub(crate) lifetime: Option<&'static str>,
    /// Whether some process holds the segment open (its lifecycle lock).
    pub(crate) in_use: Option<bool>,
    /// No live process uses it and it is scoped: `shmbus gc` would remove it.
    pub(crate) stale: bool,
    /// Topics: active publisher rows.
    pub(crate) publishers: Option<u32>,
    /// Topics: active subscriber rows.
    pub(crate) subscribers: Option<u32>,
    /// Processes that use it: topic rows, or processes with the file open.
    pub(crate) owners: Vec<Owner>,
    /// Who created it.
    pub(crate) creator_pid: Option<u32>,
    /// Pools: the topic the pool belongs to.
    pub(crate) topic: Option<String>,
    /// What is wrong with it, if anything (corrupt, other format version, unreadable, cannot be
    /// opened).
    pub(crate) problem: Option<String>,
    /// Why it could not be opened within `--timeout`, when it was stuck ([`stuck_name`]).
    pub(crate) stuck: Option<&'static str>,
    /// Topics carried by a `shmbus-bridge` of this machine: `out` (a bridge subscribes and
    /// exports it), `in` (a bridge publishes what it imports), or neither.
    pub(crate) bridged: Option<&'static str>,
}

/// The program name a bridge runs as (`/proc/<pid>/comm`).
const BRIDGE_COMM: &str = "shmbus-bridge";

/// Whether process `pid` is a shmbus bridge.
fn is_bridge(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == BRIDGE_COMM)
}

/// How a topic is bridged, from its live rows.
fn bridged(owners: &[Owner]) -> Option<&'static str> {
    let by_bridge = |role: &str| {
        owners
            .iter()
            .any(|o| o.alive && o.role == role && is_bridge(o.pid))
    };
    if by_bridge("publisher") {
        Some("in")
    } else if by_bridge("subscriber") {
        Some("out")
    } else {
        None
    }
}

/// Processes that have shmbus files open, by file identity (device, inode), from
/// `/proc/<pid>/fd`. Only the processes this user may inspect are seen; this process is left
/// out. Identities, not paths: a creator's descriptor was opened before the file had a name
/// (`O_TMPFILE`), so its link in `/proc` does not show the name.
#[derive(Debug, Default)]
pub(crate) struct Holders(HashMap<(u64, u64), Vec<u32>>);

impl Holders {
    /// Scans `/proc`.
    pub(crate) fn scan() -> Holders {
        let me = std::process::id();
        let mut map: HashMap<(u64, u64), Vec<u32>> = HashMap::new();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return Holders(map);
        };
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                let in_shm = std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(SHM_DIR));
                if !in_shm {
                    continue;
                }
                // Follows the link to the open file itself.
                let Ok(meta) = std::fs::metadata(fd.path()) else {
                    continue;
                };
                let pids = map.entry((meta.dev(), meta.ino())).or_default();
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
        for pids in map.values_mut() {
            pids.sort_unstable();
        }
        Holders(map)
    }

    /// The processes that have `name`'s file open.
    pub(crate) fn of(&self, name: &Name) -> Vec<Owner> {
        let Ok(meta) = std::fs::symlink_metadata(segment::shm_path(name)) else {
            return Vec::new();
        };
        self.0
            .get(&(meta.dev(), meta.ino()))
            .map(|pids| {
                pids.iter()
                    .map(|&pid| Owner {
                        pid,
                        alive: true,
                        role: "attached",
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Whether a process with this id exists (it may be another process that reused the id).
pub(crate) fn pid_exists(pid: u32) -> bool {
    pid != 0 && Path::new("/proc").join(pid.to_string()).exists()
}

/// A header problem in words.
pub(crate) fn problem(e: &SegmentError) -> String {
    match e {
        SegmentError::Corrupt { reason, .. } => format!("corrupt: {reason}"),
        SegmentError::Version { found, .. } => {
            format!("format version {found}; this shmbus reads version {FORMAT_VERSION}")
        }
        SegmentError::PermissionDenied(_) => "permission denied".into(),
        SegmentError::Stuck { reason, .. } => format!("cannot be opened: {reason}"),
        other => other.to_string(),
    }
}

/// The name of a [`Stuck`] reason in JSON output (`stuck`).
pub(crate) fn stuck_name(s: Stuck) -> &'static str {
    match s {
        Stuck::NotInitialised => "not_initialised",
        Stuck::ClosedWhileInUse => "closed_while_in_use",
        Stuck::StaleNotRemovable => "stale_not_removable",
        Stuck::LockedExclusively => "locked_exclusively",
        Stuck::Replaced => "replaced",
    }
}

/// An object that is there but could not be opened (within `--timeout`, or at all).
#[derive(Debug)]
pub(crate) struct OpenFailure {
    /// What is wrong, in words (an `Entry`'s `problem`).
    pub(crate) problem: String,
    /// The typed reason, when the open was stuck.
    pub(crate) stuck: Option<&'static str>,
    /// The error itself, for commands that fail with it.
    pub(crate) error: CliError,
}

impl From<CliError> for OpenFailure {
    fn from(error: CliError) -> OpenFailure {
        let segment = match &error {
            CliError::Segment(e)
            | CliError::Topic(TopicError::Segment(e))
            | CliError::Array(ArrayError::Segment(e)) => Some(e),
            _ => None,
        };
        OpenFailure {
            problem: segment.map_or_else(|| error.to_string(), problem),
            stuck: match segment {
                Some(SegmentError::Stuck { reason, .. }) => Some(stuck_name(*reason)),
                _ => None,
            },
            error,
        }
    }
}

/// [`segment::peek`], refusing files that are not regular files first: opening a FIFO for
/// reading would wait for a writer, and `peek` must never wait.
pub(crate) fn peek(name: &Name) -> Result<SegmentInfo, SegmentError> {
    match std::fs::symlink_metadata(segment::shm_path(name)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SegmentError::NotFound(name.clone()))
        }
        Ok(m) if !m.file_type().is_file() => {
            let what = match m.file_type() {
                t if t.is_symlink() => "a symbolic link",
                t if t.is_dir() => "a directory",
                t if t.is_fifo() => "a FIFO",
                t if t.is_socket() => "a socket",
                _ => "a device",
            };
            return Err(SegmentError::Corrupt {
                name: name.clone(),
                reason: format!("{what}, not a regular file"),
            });
        }
        _ => {}
    }
    segment::peek(name)
}

/// Every object whose name starts with `prefix` (all with `None`), sorted by name.
pub(crate) fn survey(prefix: Option<&str>, budget: &Budget) -> Result<Vec<Entry>, CliError> {
    let names = segment::list().map_err(CliError::list)?;
    let holders = Holders::scan();
    Ok(names
        .iter()
        .filter(|n| prefix.is_none_or(|p| n.as_str().starts_with(p)))
        .filter_map(|n| entry(n, &holders, budget))
        .collect())
}

/// Marks `e` as an object that could not be opened: kind `?`, and why.
fn unopenable(e: &mut Entry, f: &OpenFailure) {
    e.kind = "?".into();
    e.problem = Some(f.problem.clone());
    e.stuck = f.stuck;
}

/// The `ls` line of `name`, or `None` if it vanished meanwhile.
pub(crate) fn entry(name: &Name, holders: &Holders, budget: &Budget) -> Option<Entry> {
    let mut e = Entry {
        name: name.as_str().to_owned(),
        kind: "?".into(),
        type_info: None,
        dtype: None,
        shape: None,
        size: None,
        lifetime: None,
        in_use: None,
        stale: false,
        publishers: None,
        subscribers: None,
        owners: Vec::new(),
        creator_pid: None,
        topic: None,
        problem: None,
        stuck: None,
        bridged: None,
    };
    let info = match peek(name) {
        Ok(info) => info,
        Err(SegmentError::NotFound(_)) => return None,
        Err(err) => {
            e.size = std::fs::metadata(segment::shm_path(name))
                .ok()
                .map(|m| m.len());
            e.owners = holders.of(name);
            e.problem = Some(problem(&err));
            return Some(e);
        }
    };
    e.kind = info.kind.as_str().into();
    e.type_info = Some(TypeView::from(&info.type_info));
    e.size = Some(info.total_size);
    e.lifetime = Some(lifetime_name(info.lifetime));
    e.in_use = Some(info.in_use);
    e.stale = is_stale(&info);
    e.creator_pid = Some(info.creator_pid);
    match info.kind {
        Kind::Topic => {
            if info.in_use {
                match participants(name, &info, budget) {
                    Ok(p) => {
                        e.publishers = Some(p.publishers.len() as u32);
                        e.subscribers = Some(p.subscribers.len() as u32);
                        e.owners = p.owners();
                        e.bridged = bridged(&e.owners);
                    }
                    Err(err) => {
                        e.owners = holders.of(name);
                        unopenable(&mut e, &err.into());
                    }
                }
            }
        }
        Kind::Array => {
            let (view, failed) = array_view(&info, budget);
            if let Some(a) = view {
                e.dtype = Some(a.dtype);
                e.shape = a.shape;
            }
            if let Some(f) = failed {
                unopenable(&mut e, &f);
            }
            e.owners = holders.of(name);
        }
        Kind::Pool => {
            e.topic = pool_view(&info).map(|p| p.topic);
            e.owners = holders.of(name);
        }
        _ => e.owners = holders.of(name),
    }
    Some(e)
}

/// No live process uses it and it is scoped: what [`segment::gc`] removes.
pub(crate) fn is_stale(info: &SegmentInfo) -> bool {
    !info.in_use && info.lifetime == Lifetime::Scoped
}

// ---------------------------------------------------------------------------------------------
// Topics
// ---------------------------------------------------------------------------------------------

/// A publisher row in use.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PublisherRow {
    /// Row index.
    pub(crate) row: u32,
    /// Process id the row records.
    pub(crate) pid: u32,
    /// Whether the row's owner holds its lease (is alive).
    pub(crate) alive: bool,
}

/// A subscriber row in use.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SubscriberRow {
    /// Row index.
    pub(crate) row: u32,
    /// Process id the row records.
    pub(crate) pid: u32,
    /// Whether the row's owner holds its lease (is alive).
    pub(crate) alive: bool,
    /// Sequence number of the next message it reads.
    pub(crate) cursor: u64,
    /// Messages published that it has not read yet.
    pub(crate) lag: u64,
    /// Messages it missed (overwritten before it read them).
    pub(crate) lagged: u64,
}

/// A topic's configuration.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Qos {
    /// Ring entries: how many published messages stay readable.
    pub(crate) capacity: u64,
    /// Payload bytes per slot.
    pub(crate) slot_size: u64,
    /// Slots in the pool.
    pub(crate) slots: u64,
    /// Most subscribers.
    pub(crate) max_subscribers: u64,
    /// Most publishers.
    pub(crate) max_publishers: u64,
    /// Most samples one subscriber holds (known only when the topic could be attached).
    pub(crate) max_held: Option<u64>,
    /// `overwrite` or `back-pressure`.
    pub(crate) overflow: &'static str,
    /// Whether publishers record publish times.
    pub(crate) timestamps: bool,
}

/// A topic's counters.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Counters {
    /// Messages published.
    pub(crate) published: u64,
    /// Messages subscribers missed, summed over subscribers.
    pub(crate) lagged: u64,
    /// Messages lost with a publisher that died while publishing them.
    pub(crate) lost: u64,
    /// Times a publisher waited for room (back-pressure).
    pub(crate) backpressure_waits: u64,
}

/// What attaching to a topic (without joining) shows.
#[derive(Debug)]
pub(crate) struct Participants {
    pub(crate) publishers: Vec<PublisherRow>,
    pub(crate) subscribers: Vec<SubscriberRow>,
    pub(crate) qos: Qos,
    pub(crate) counters: Counters,
}

impl Participants {
    fn owners(&self) -> Vec<Owner> {
        let mut v: Vec<Owner> = self
            .publishers
            .iter()
            .map(|p| Owner {
                pid: p.pid,
                alive: p.alive,
                role: "publisher",
            })
            .chain(self.subscribers.iter().map(|s| Owner {
                pid: s.pid,
                alive: s.alive,
                role: "subscriber",
            }))
            .collect();
        v.sort();
        v
    }
}

/// Attaches to the topic `name` (without joining) and reads its rows and counters. Only for
/// a topic in use: see the module docs.
pub(crate) fn participants(
    name: &Name,
    info: &SegmentInfo,
    budget: &Budget,
) -> Result<Participants, CliError> {
    let opts = TopicOptions {
        open_timeout: Some(budget.open_timeout()),
        ..TopicOptions::default()
    };
    let topic = RawTopic::open(name, &info.type_info, &opts)?;
    let ring = topic.ring();
    let fd = topic.segment().fd();
    let c = ring.config();
    let alive = |byte: u64| liveness::is_held(fd, byte).unwrap_or(true);
    let published = ring.published();
    let publishers = (0..c.max_publishers)
        .filter_map(|p| {
            let (active, pid) = ring.publisher_info(p);
            active.then(|| PublisherRow {
                row: p,
                pid,
                alive: alive(lease::topic_publisher(p)),
            })
        })
        .collect();
    let subscribers = (0..c.max_subscribers)
        .filter_map(|k| {
            let (active, pid, cursor, lagged) = ring.subscriber_info(k);
            active.then(|| SubscriberRow {
                row: k,
                pid,
                alive: alive(lease::topic_subscriber(k)),
                cursor,
                lag: published.saturating_sub(cursor),
                lagged,
            })
        })
        .collect();
    Ok(Participants {
        publishers,
        subscribers,
        qos: Qos {
            capacity: u64::from(c.capacity),
            slot_size: u64::from(c.slot_size),
            slots: u64::from(ring.layout().slots),
            max_subscribers: u64::from(c.max_subscribers),
            max_publishers: u64::from(c.max_publishers),
            max_held: Some(u64::from(c.max_held)),
            overflow: overflow_name(c.overflow),
            timestamps: c.timestamps,
        },
        counters: Counters {
            published: ring.counter_value(counter::PUBLISHED),
            lagged: ring.counter_value(counter::LAGGED),
            lost: ring.counter_value(counter::LOST),
            backpressure_waits: ring.counter_value(counter::BACKPRESSURE_WAITS),
        },
    })
}

fn overflow_name(o: Overflow) -> &'static str {
    match o {
        Overflow::Overwrite => "overwrite",
        Overflow::BackPressure => "back-pressure",
    }
}

/// A topic's QoS as its creator wrote it into the header's `params` ([`param`]).
pub(crate) fn qos_from_header(info: &SegmentInfo) -> Qos {
    let p = info.params;
    Qos {
        capacity: p[param::CAPACITY],
        slot_size: p[param::SLOT_SIZE],
        slots: p[param::SLOTS],
        max_subscribers: p[param::MAX_SUBSCRIBERS],
        max_publishers: p[param::MAX_PUBLISHERS],
        max_held: None,
        overflow: if p[param::BACK_PRESSURE] == 1 {
            "back-pressure"
        } else {
            "overwrite"
        },
        timestamps: timestamps(info),
    }
}

/// Whether the topic's publishers record publish times, as its header says.
pub(crate) fn timestamps(info: &SegmentInfo) -> bool {
    info.params[param::TIMESTAMPS] == 1
}

/// A topic's counters from the header.
pub(crate) fn counters_from_header(info: &SegmentInfo) -> Counters {
    let c = info.counters;
    Counters {
        published: c[counter::PUBLISHED],
        lagged: c[counter::LAGGED],
        lost: c[counter::LOST],
        backpressure_waits: c[counter::BACKPRESSURE_WAITS],
    }
}

// ---------------------------------------------------------------------------------------------
// Arrays and pools
// ---------------------------------------------------------------------------------------------

/// What the header (and, when it is safe to attach, the array) tells of an array.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ArrayView {
    /// numpy dtype name.
    pub(crate) dtype: String,
    /// Bytes per element.
    pub(crate) itemsize: usize,
    /// Shape (`None` if it has more dimensions than the header holds and it could not be
    /// attached).
    pub(crate) shape: Option<Vec<usize>>,
    /// Byte strides (C order).
    pub(crate) strides: Option<Vec<usize>>,
    /// Bytes of elements.
    pub(crate) data_bytes: Option<u64>,
}

/// The array view of `info` (an array segment), if its dtype is known, and why the array
/// could not be attached if that failed (the view then holds what the header says).
pub(crate) fn array_view(
    info: &SegmentInfo,
    budget: &Budget,
) -> (Option<ArrayView>, Option<OpenFailure>) {
    let Some(dtype) = u32::try_from(info.params[array_param::DTYPE])
        .ok()
        .and_then(Dtype::from_code)
    else {
        return (None, None);
    };
    let ndim = usize::try_from(info.params[array_param::NDIM]).unwrap_or(usize::MAX);
    // Attaching a scoped array nobody uses would reclaim it: only attach live or persistent ones.
    let attachable = info.in_use || info.lifetime == Lifetime::Persistent;
    let mut failed = None;
    let attached = if attachable {
        let location = Location::Shm(info.name.clone());
        match RawArray::open(&location, Some(dtype), true, Some(budget.open_timeout())) {
            Ok(a) => Some(a),
            Err(e) => {
                failed = Some(OpenFailure::from(CliError::Array(e)));
                None
            }
        }
    } else {
        None
    };
    let (shape, strides) = match &attached {
        Some(a) => (Some(a.shape().to_vec()), Some(a.strides().to_vec())),
        // The header holds the first six dimensions only.
        None => {
            let shape: Option<Vec<usize>> = info.params[array_param::SHAPE..]
                .get(..ndim)
                .and_then(|dims| dims.iter().map(|&d| usize::try_from(d).ok()).collect());
            let strides = shape.as_ref().map(|s| c_strides(s, dtype.itemsize()));
            (shape, strides)
        }
    };
    let data_bytes = shape.as_ref().and_then(|s| {
        s.iter()
            .try_fold(dtype.itemsize() as u64, |acc, &d| acc.checked_mul(d as u64))
    });
    let view = ArrayView {
        dtype: dtype_name(dtype),
        itemsize: dtype.itemsize(),
        shape,
        strides,
        data_bytes,
    };
    (Some(view), failed)
}

/// What a pool segment's header tells.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PoolView {
    /// The array topic the pool serves.
    pub(crate) topic: String,
    /// The publisher's pool id, 16 hex digits.
    pub(crate) pool_id: String,
    /// Segment index within the pool.
    pub(crate) index: u64,
    /// Bytes per block.
    pub(crate) block_size: u64,
    /// Blocks in this segment.
    pub(crate) block_count: u64,
}

/// The pool view of `info` (a pool segment).
pub(crate) fn pool_view(info: &SegmentInfo) -> Option<PoolView> {
    let p = info.params;
    Some(PoolView {
        topic: pool_topic(info.name.as_str())?.to_owned(),
        pool_id: format!("{:016x}", p[pool_param::POOL_ID]),
        index: p[pool_param::INDEX],
        block_size: p[pool_param::BLOCK_SIZE],
        block_count: p[pool_param::BLOCK_COUNT],
    })
}

/// The topic a pool segment belongs to, if `name` is the name [`pool::segment_name`] gives a
/// segment of a topic's pool: the last two dotted parts are taken as pool id and index, and
/// the name is accepted only if `segment_name` spells them back the same.
pub(crate) fn pool_topic(name: &str) -> Option<&str> {
    let (rest, index) = name.rsplit_once('.')?;
    let (rest, id) = rest.rsplit_once('.')?;
    let (topic, _) = rest.rsplit_once('.')?;
    let index: u32 = index.parse().ok()?;
    let id = u64::from_str_radix(id, 16).ok()?;
    let spelled = pool::segment_name(&Name::new(topic).ok()?, id, index).ok()?;
    (spelled.as_str() == name).then_some(topic)
}

/// Pool segments of `topic` (names `<topic>.pool.*`), from the names listed now.
pub(crate) fn pool_segments(topic: &Name) -> Vec<Name> {
    segment::list()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| pool_topic(n.as_str()) == Some(topic.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_names() {
        assert_eq!(
            pool_topic("demo.frames.pool.00000000deadbeef.3"),
            Some("demo.frames")
        );
        assert_eq!(pool_topic("demo.frames.pool.deadbeef.3"), None);
        assert_eq!(pool_topic("demo.frames.pool.00000000deadbeef."), None);
        assert_eq!(pool_topic("pool.00000000deadbeef.1"), None);
        assert_eq!(pool_topic("demo.frames"), None);
    }
}
