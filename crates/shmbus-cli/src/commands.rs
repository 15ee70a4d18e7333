//! `ls`, `inspect`, `rm` and `gc`.

use std::collections::HashMap;

use serde::Serialize;
use shmbus_core::name::Name;
use shmbus_core::segment::{self, SegmentError, SegmentInfo};
use shmbus_core::wire::{Kind, FILE_PREFIX, FORMAT_VERSION};

use crate::budget::Budget;
use crate::error::CliError;
use crate::names;
use crate::output::{age, size, utc, Out, Table};
use crate::survey::{
    self, array_view, counters_from_header, is_stale, participants, peek, pid_exists,
    pool_segments, pool_view, problem, qos_from_header, ArrayView, Counters, Entry, Holders,
    OpenFailure, Owner, PoolView, PublisherRow, Qos, SubscriberRow, TypeView,
};

// ---------------------------------------------------------------------------------------------
// ls
// ---------------------------------------------------------------------------------------------

/// `shmbus ls [PREFIX]`.
pub(crate) fn ls(
    out: &mut Out,
    prefix: Option<&str>,
    budget: &Budget,
    json: bool,
) -> Result<(), CliError> {
    let entries = survey::survey(prefix, budget)?;
    if json {
        #[derive(Serialize)]
        struct Doc<'a> {
            objects: &'a [Entry],
        }
        return out.json_pretty(&Doc { objects: &entries });
    }
    if entries.is_empty() {
        return out.line(
            match prefix {
                Some(p) => format!("no shmbus objects whose name starts with `{p}`"),
                None => "no shmbus objects".into(),
            }
            .as_str(),
        );
    }
    let mut t = Table::new(&[
        "KIND", "NAME", "TYPE", "SIZE", "PUB", "SUB", "OWNERS", "STALE", "NOTE",
    ]);
    for e in &entries {
        let count = |n: Option<u32>| n.map_or("-".into(), |n| n.to_string());
        t.row(vec![
            e.kind.clone(),
            e.name.clone(),
            type_cell(e),
            e.size.map_or("?".into(), size),
            count(e.publishers),
            count(e.subscribers),
            owners_cell(&e.owners),
            if e.stale { "yes" } else { "no" }.into(),
            note_cell(e),
        ]);
    }
    out.put(&t.render(0))
}

fn type_cell(e: &Entry) -> String {
    if let (Some(dtype), Some(shape)) = (&e.dtype, &e.shape) {
        return format!("{dtype}{shape:?}");
    }
    if let Some(dtype) = &e.dtype {
        return dtype.clone();
    }
    match &e.type_info {
        Some(t) if e.kind == "pool" => format!("blocks ({})", t.name),
        Some(t) if t.codec == "postcard" => format!("{} (serde)", t.name),
        Some(t) => t.name.clone(),
        None => "?".into(),
    }
}

fn owners_cell(owners: &[Owner]) -> String {
    if owners.is_empty() {
        return "-".into();
    }
    let mut pids: Vec<String> = Vec::new();
    for o in owners {
        let s = if o.alive {
            o.pid.to_string()
        } else {
            format!("{}(dead)", o.pid)
        };
        if !pids.contains(&s) {
            pids.push(s);
        }
    }
    pids.join(",")
}

fn note_cell(e: &Entry) -> String {
    if let Some(p) = &e.problem {
        return p.clone();
    }
    let mut notes = Vec::new();
    if e.lifetime == Some("persistent") {
        notes.push("persistent".to_owned());
    }
    if let Some(t) = &e.topic {
        notes.push(format!("pool of {t}"));
    }
    match e.bridged {
        Some("in") => notes.push("bridged in (from another machine)".to_owned()),
        Some(_) => notes.push("bridged out (to other machines)".to_owned()),
        None => {}
    }
    if e.stale {
        notes.push("no live process: gc removes it".to_owned());
    }
    notes.join("; ")
}

// ---------------------------------------------------------------------------------------------
// inspect
// ---------------------------------------------------------------------------------------------

/// What `inspect` prints.
#[derive(Debug, Serialize)]
struct Inspect {
    name: String,
    kind: String,
    format_version: Option<u32>,
    #[serde(rename = "type")]
    type_info: Option<TypeView>,
    lifetime: Option<&'static str>,
    size: Option<u64>,
    payload_size: Option<u64>,
    mode: Option<String>,
    creator_pid: Option<u32>,
    creator_alive: Option<bool>,
    created_unix_ns: Option<u64>,
    created: Option<String>,
    in_use: Option<bool>,
    stale: bool,
    owners: Vec<Owner>,
    topic: Option<TopicDetail>,
    array: Option<ArrayView>,
    pool: Option<PoolView>,
    problem: Option<String>,
    stuck: Option<&'static str>,
}

/// The topic part of `inspect`.
#[derive(Debug, Serialize)]
struct TopicDetail {
    qos: Qos,
    counters: Counters,
    /// Whether the rows below were read (not for a stale topic: attaching would remove it).
    participants_read: bool,
    publishers: Vec<PublisherRow>,
    subscribers: Vec<SubscriberRow>,
    note: Option<String>,
    pool_segments: Vec<String>,
}

/// `shmbus inspect NAME`. An object that is there but cannot be opened (within `--timeout`) is
/// shown as far as its header tells, as kind `?` with the reason; then the command fails with
/// the error that kept it from opening.
pub(crate) fn inspect(
    out: &mut Out,
    typed: &str,
    budget: &Budget,
    json: bool,
) -> Result<(), CliError> {
    let name = names::existing(typed)?;
    let holders = Holders::scan();
    let mut doc = Inspect {
        name: name.as_str().to_owned(),
        kind: "?".into(),
        format_version: None,
        type_info: None,
        lifetime: None,
        size: None,
        payload_size: None,
        mode: None,
        creator_pid: None,
        creator_alive: None,
        created_unix_ns: None,
        created: None,
        in_use: None,
        stale: false,
        owners: holders.of(&name),
        topic: None,
        array: None,
        pool: None,
        problem: None,
        stuck: None,
    };
    let mut failed = None;
    match peek(&name) {
        Err(SegmentError::NotFound(_)) => return Err(names::not_found(name.as_str())),
        Err(e) => {
            if let SegmentError::Version { found, .. } = &e {
                doc.format_version = Some(*found);
            }
            doc.size = std::fs::metadata(segment::shm_path(&name))
                .ok()
                .map(|m| m.len());
            doc.problem = Some(problem(&e));
        }
        Ok(info) => failed = fill(&mut doc, &name, &info, budget),
    }
    if let Some(f) = &failed {
        doc.kind = "?".into();
        doc.problem = Some(f.problem.clone());
        doc.stuck = f.stuck;
    }
    if json {
        out.json_pretty(&doc)?;
    } else {
        out.put(&render_inspect(&doc))?;
    }
    match failed {
        Some(f) => {
            out.flush()?;
            Err(f.error)
        }
        None => Ok(()),
    }
}

/// Fills `doc` from the header `info`, attaching where that is safe; returns why an attach
/// failed, if one did.
fn fill(
    doc: &mut Inspect,
    name: &Name,
    info: &SegmentInfo,
    budget: &Budget,
) -> Option<OpenFailure> {
    let mut failed = None;
    doc.kind = info.kind.as_str().into();
    doc.format_version = Some(FORMAT_VERSION);
    doc.type_info = Some(TypeView::from(&info.type_info));
    doc.lifetime = Some(survey::lifetime_name(info.lifetime));
    doc.size = Some(info.total_size);
    doc.payload_size = Some(info.payload_size);
    doc.mode = Some(format!("{:04o}", info.mode));
    doc.creator_pid = Some(info.creator_pid);
    doc.creator_alive = Some(pid_exists(info.creator_pid));
    if info.created_unix_ns != 0 {
        doc.created_unix_ns = Some(info.created_unix_ns);
        doc.created = Some(utc(info.created_unix_ns));
    }
    doc.in_use = Some(info.in_use);
    doc.stale = is_stale(info);
    match info.kind {
        Kind::Topic => {
            let pools = pool_segments(name)
                .into_iter()
                .map(|n| n.as_str().to_owned())
                .collect();
            let mut detail = TopicDetail {
                qos: qos_from_header(info),
                counters: counters_from_header(info),
                participants_read: false,
                publishers: Vec::new(),
                subscribers: Vec::new(),
                note: None,
                pool_segments: pools,
            };
            if info.in_use {
                match participants(name, info, budget) {
                    Ok(p) => {
                        detail.qos = p.qos;
                        detail.counters = p.counters;
                        detail.publishers = p.publishers;
                        detail.subscribers = p.subscribers;
                        detail.participants_read = true;
                    }
                    Err(e) => {
                        detail.note = Some(
                            "participants not read: the topic cannot be opened; QoS and \
                             counters are what its header says"
                                .into(),
                        );
                        failed = Some(e.into());
                    }
                }
            } else {
                detail.note = Some(
                    "no live process uses this topic: participants not read (attaching would \
                     remove it); `shmbus gc` removes it"
                        .into(),
                );
            }
            doc.topic = Some(detail);
        }
        Kind::Array => (doc.array, failed) = array_view(info, budget),
        Kind::Pool => doc.pool = pool_view(info),
        _ => {}
    }
    failed
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn render_inspect(d: &Inspect) -> String {
    let mut s = format!("{} {}\n", d.kind, d.name);
    let mut kv = Table::new(&["", ""]);
    let mut add = |k: &str, v: String| kv.row(vec![k.to_owned(), v]);
    if let Some(p) = &d.problem {
        add("problem", p.clone());
    }
    if let Some(t) = &d.type_info {
        add(
            "type",
            format!(
                "{} ({}, size {}, align {}, fingerprint {})",
                t.name, t.codec, t.size, t.align, t.fingerprint
            ),
        );
    }
    if let Some(v) = d.format_version {
        add("format", format!("version {v}"));
    }
    if let Some(l) = d.lifetime {
        add("lifetime", l.into());
    }
    if let Some(sz) = d.size {
        let payload = d
            .payload_size
            .map(|p| format!(", payload {p} bytes"))
            .unwrap_or_default();
        let mode = d
            .mode
            .as_ref()
            .map(|m| format!(", mode {m}"))
            .unwrap_or_default();
        add("size", format!("{} ({sz} bytes{payload}){mode}", size(sz)));
    }
    if let Some(pid) = d.creator_pid {
        let alive = if d.creator_alive == Some(true) {
            "running"
        } else {
            "exited"
        };
        let when = d
            .created_unix_ns
            .map(|ns| format!("{} ({}), ", utc(ns), age(ns)))
            .unwrap_or_default();
        add("created", format!("{when}by pid {pid} ({alive})"));
    }
    if let Some(u) = d.in_use {
        add(
            "in use",
            format!("{}; stale: {}", yes(u), yes(d.stale))
                + if d.stale {
                    " (no live process; `shmbus gc` removes it)"
                } else {
                    ""
                },
        );
    }
    if !d.owners.is_empty() {
        let pids: Vec<String> = d.owners.iter().map(|o| o.pid.to_string()).collect();
        add("open by", format!("pids {}", pids.join(", ")));
    }
    if let Some(a) = &d.array {
        add("dtype", format!("{} ({} bytes each)", a.dtype, a.itemsize));
        add(
            "shape",
            a.shape
                .as_ref()
                .map_or("? (not readable without attaching)".into(), |s| {
                    format!("{s:?}")
                }),
        );
        add(
            "strides",
            a.strides
                .as_ref()
                .map_or("?".into(), |s| format!("{s:?} bytes (C order)")),
        );
        if let Some(b) = a.data_bytes {
            add("data", format!("{} ({b} bytes)", size(b)));
        }
    }
    if let Some(p) = &d.pool {
        add("pool of", format!("topic {}", p.topic));
        add("pool id", format!("{} (segment {})", p.pool_id, p.index));
        add(
            "blocks",
            format!(
                "{} × {} ({} bytes each)",
                p.block_count,
                size(p.block_size),
                p.block_size
            ),
        );
    }
    s.push_str(
        &kv.render(2)
            .lines()
            .skip(1)
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    );
    if let Some(t) = &d.topic {
        let q = &t.qos;
        s.push_str("QoS\n");
        let mut kv = Table::new(&["", ""]);
        let mut add = |k: &str, v: String| kv.row(vec![k.to_owned(), v]);
        add("capacity", format!("{} messages", q.capacity));
        add(
            "slot size",
            format!("{} bytes ({} slots)", q.slot_size, q.slots),
        );
        add("max subscribers", q.max_subscribers.to_string());
        add("max publishers", q.max_publishers.to_string());
        if let Some(h) = q.max_held {
            add("max held", format!("{h} per subscriber"));
        }
        add("overflow", q.overflow.into());
        add("timestamps", if q.timestamps { "on" } else { "off" }.into());
        s.push_str(
            &kv.render(2)
                .lines()
                .skip(1)
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
        );
        let c = &t.counters;
        s.push_str("Counters\n");
        let mut kv = Table::new(&["", ""]);
        kv.row(vec!["published".into(), c.published.to_string()]);
        kv.row(vec!["lagged".into(), c.lagged.to_string()]);
        kv.row(vec!["lost".into(), c.lost.to_string()]);
        kv.row(vec![
            "back-pressure waits".into(),
            c.backpressure_waits.to_string(),
        ]);
        s.push_str(
            &kv.render(2)
                .lines()
                .skip(1)
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
        );
        if t.participants_read {
            s.push_str(&format!("Publishers ({})\n", t.publishers.len()));
            let mut pt = Table::new(&["ROW", "PID", "ALIVE"]);
            for p in &t.publishers {
                pt.row(vec![
                    p.row.to_string(),
                    p.pid.to_string(),
                    yes(p.alive).into(),
                ]);
            }
            if !pt.is_empty() {
                s.push_str(&pt.render(2));
            }
            s.push_str(&format!("Subscribers ({})\n", t.subscribers.len()));
            let mut st = Table::new(&["ROW", "PID", "ALIVE", "CURSOR", "LAG", "LAGGED"]);
            for r in &t.subscribers {
                st.row(vec![
                    r.row.to_string(),
                    r.pid.to_string(),
                    yes(r.alive).into(),
                    r.cursor.to_string(),
                    r.lag.to_string(),
                    r.lagged.to_string(),
                ]);
            }
            if !st.is_empty() {
                s.push_str(&st.render(2));
            }
        }
        if let Some(n) = &t.note {
            s.push_str(&format!("Note: {n}\n"));
        }
        if !t.pool_segments.is_empty() {
            s.push_str(&format!("Pool segments ({})\n", t.pool_segments.len()));
            for p in &t.pool_segments {
                s.push_str(&format!("  {p}\n"));
            }
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// rm
// ---------------------------------------------------------------------------------------------

/// One removed object.
#[derive(Debug, Serialize)]
struct Removed {
    name: String,
    kind: String,
    note: Option<String>,
}

/// One object `rm` left in place, and why.
#[derive(Debug, Serialize)]
struct Kept {
    name: String,
    reason: String,
}

#[derive(Debug, Serialize, Default)]
struct RmReport {
    removed: Vec<Removed>,
    kept: Vec<Kept>,
}

fn users(owners: &[Owner]) -> String {
    let mut pids: Vec<u32> = owners.iter().filter(|o| o.alive).map(|o| o.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    match pids.as_slice() {
        [] => "a process this user cannot see".into(),
        [p] => format!("process {p}"),
        ps => format!(
            "{} processes ({})",
            ps.len(),
            ps.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// `shmbus rm NAME... [--force]`: every name is checked before anything is removed.
pub(crate) fn rm(
    out: &mut Out,
    typed: &[String],
    force: bool,
    budget: &Budget,
    json: bool,
) -> Result<(), CliError> {
    let holders = Holders::scan();
    let mut plan = Vec::new();
    for t in typed {
        let name = names::existing(t)?;
        let peeked = peek(&name);
        let (in_use, kind, owners) = match &peeked {
            Ok(info) => {
                let owners = match (info.kind, info.in_use) {
                    (Kind::Topic, true) => survey::entry(&name, &holders, budget)
                        .map(|e| e.owners)
                        .unwrap_or_default(),
                    _ => holders.of(&name),
                };
                (info.in_use, info.kind.as_str().to_owned(), owners)
            }
            Err(_) => {
                let owners = holders.of(&name);
                (!owners.is_empty(), "?".to_owned(), owners)
            }
        };
        if in_use && !force {
            return Err(CliError::InUse {
                name: name.as_str().to_owned(),
                users: users(&owners),
            });
        }
        plan.push((name, peeked, in_use, kind, owners));
    }
    let mut report = RmReport::default();
    for (name, peeked, in_use, kind, owners) in plan {
        segment::unlink(&name)?;
        let note = match &peeked {
            Err(e) => Some(format!(
                "it was not a readable shmbus segment ({})",
                problem(e)
            )),
            Ok(_) if in_use => Some(format!(
                "still mapped by {}: they keep using it until they let go; new openers create \
                 a new one",
                users(&owners)
            )),
            Ok(_) => None,
        };
        report.removed.push(Removed {
            name: name.as_str().to_owned(),
            kind: kind.clone(),
            note,
        });
        if kind == "topic" {
            for pool in pool_segments(&name) {
                match peek(&pool) {
                    Ok(info) if info.in_use => report.kept.push(Kept {
                        name: pool.as_str().to_owned(),
                        reason: format!(
                            "pool segment of `{}` in use by {} (its array publisher or \
                             subscribers); the last of them removes it when it lets go",
                            name,
                            users(&holders.of(&pool))
                        ),
                    }),
                    Err(SegmentError::NotFound(_)) => {}
                    _ => {
                        segment::unlink(&pool)?;
                        report.removed.push(Removed {
                            name: pool.as_str().to_owned(),
                            kind: "pool".into(),
                            note: Some(format!("unused pool segment of `{name}`")),
                        });
                    }
                }
            }
        }
    }
    if json {
        return out.json_pretty(&report);
    }
    for r in &report.removed {
        let note = r
            .note
            .as_ref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        out.line(&format!("removed {} `{}`{note}", r.kind, r.name))?;
    }
    for k in &report.kept {
        out.line(&format!("kept `{}`: {}", k.name, k.reason))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// gc
// ---------------------------------------------------------------------------------------------

/// A file under the shmbus prefix that is not a readable segment of this format.
#[derive(Debug, Serialize)]
struct GcUnreadable {
    /// The file name in the shared-memory directory.
    file: String,
    /// Its shmbus name, if the file name holds a valid one (what `rm` takes).
    name: Option<String>,
    /// Why it cannot be read.
    reason: String,
    /// Whether a process holds it (then gc never removes it).
    in_use: bool,
    /// Whether this gc removed it (`--unreadable`).
    removed: bool,
}

#[derive(Debug, Serialize)]
struct GcReport {
    removed: Vec<Removed>,
    unreadable: Vec<GcUnreadable>,
}

/// `shmbus gc [PREFIX] [--unreadable]`: removes every scoped object no live process uses (only
/// those whose name starts with `PREFIX`, if given), and lists the files under the shmbus
/// prefix that are not readable segments of this format (corrupt, foreign, another format
/// version, unreadable for this user), which it keeps unless `unreadable` asks to remove those
/// that nobody holds. Persistent objects are kept. Nothing here waits: gc only takes locks
/// that are free.
pub(crate) fn gc(
    out: &mut Out,
    prefix: Option<&str>,
    unreadable: bool,
    json: bool,
) -> Result<(), CliError> {
    // For the report (gc itself returns file names and its own words): the kind of what is
    // stale now, and the problem of what is unreadable, worded as `ls` words it.
    let mut kinds: HashMap<String, String> = HashMap::new();
    let mut problems: HashMap<String, String> = HashMap::new();
    let names = segment::list().map_err(CliError::list)?;
    for n in names
        .iter()
        .filter(|n| prefix.is_none_or(|p| n.as_str().starts_with(p)))
    {
        match peek(n) {
            Ok(info) if is_stale(&info) => {
                kinds.insert(n.as_str().to_owned(), info.kind.as_str().to_owned());
            }
            Ok(_) | Err(SegmentError::NotFound(_)) => {}
            Err(e) => {
                problems.insert(n.as_str().to_owned(), problem(&e));
            }
        }
    }
    let done =
        segment::gc_report_prefix(prefix.unwrap_or(""), unreadable).map_err(CliError::list)?;
    let bare = |file: &str| file.strip_prefix(FILE_PREFIX).unwrap_or(file).to_owned();
    let mut report = GcReport {
        removed: done
            .removed
            .iter()
            .map(|f| {
                let name = bare(f);
                Removed {
                    kind: kinds.get(&name).cloned().unwrap_or_else(|| "?".into()),
                    name,
                    note: None,
                }
            })
            .collect(),
        unreadable: done
            .unreadable
            .into_iter()
            .map(|u| {
                let name = Name::from_file_name(&u.file).map(|n| n.as_str().to_owned());
                GcUnreadable {
                    reason: name
                        .as_ref()
                        .and_then(|n| problems.get(n).cloned())
                        .unwrap_or(u.reason),
                    name,
                    file: u.file,
                    in_use: u.in_use,
                    removed: u.removed,
                }
            })
            .collect(),
    };
    report.removed.sort_by(|a, b| a.name.cmp(&b.name));
    report.unreadable.sort_by(|a, b| a.file.cmp(&b.file));
    if json {
        return out.json_pretty(&report);
    }
    out.put(&render_gc(&report, unreadable))
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn render_gc(r: &GcReport, asked: bool) -> String {
    let mut s = String::new();
    if r.removed.is_empty() && r.unreadable.is_empty() {
        return "nothing to remove: every scoped object has a live user\n".into();
    }
    if r.removed.is_empty() {
        s.push_str("no stale object to remove: every scoped object has a live user\n");
    } else {
        s.push_str(&format!(
            "removed {} no live process used:\n",
            plural(r.removed.len(), "object", "objects")
        ));
        let mut t = Table::new(&["KIND", "NAME"]);
        for x in &r.removed {
            t.row(vec![x.kind.clone(), x.name.clone()]);
        }
        s.push_str(&t.render(2));
    }
    if r.unreadable.is_empty() {
        return s;
    }
    s.push_str(&format!(
        "{} (not readable as shmbus segments of this version):\n",
        plural(r.unreadable.len(), "unreadable file", "unreadable files"),
    ));
    let mut t = Table::new(&["NAME", "IN USE", "STATUS", "REASON"]);
    for u in &r.unreadable {
        let status = match (u.removed, u.in_use, asked) {
            (true, _, _) => "removed",
            (false, true, _) => "kept (in use)",
            (false, false, true) => "kept (could not remove)",
            (false, false, false) => "kept",
        };
        t.row(vec![
            u.name
                .clone()
                .unwrap_or_else(|| format!("(file {})", u.file)),
            yes(u.in_use).into(),
            status.into(),
            u.reason.clone(),
        ]);
    }
    s.push_str(&t.render(2));
    let left: Vec<&GcUnreadable> = r.unreadable.iter().filter(|u| !u.removed).collect();
    if !asked && left.iter().any(|u| !u.in_use) {
        s.push_str(
            "`shmbus gc --unreadable` removes the unreadable files nobody holds; \
             `shmbus rm --force NAME` removes one\n",
        );
    }
    if left.iter().any(|u| u.in_use) {
        s.push_str(
            "gc never removes a file a process holds: stop that process, or remove the name \
             with `shmbus rm --force NAME` (it keeps its mapping)\n",
        );
    }
    s
}
