//! `echo` and `hz`: join a topic as a subscriber and watch its messages.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use shmbus_core::layout::Codec;
use shmbus_core::name::Name;
use shmbus_core::pool::DESCRIPTOR_SIZE;
use shmbus_core::segment::{Kind, SegmentInfo};
use shmbus_core::time::monotonic_ns;
use shmbus_core::topic::{RawSubscriber, RawTopic, Received, TopicOptions};
use shmbus_core::wire::type_name::ARRAY_TOPIC_PREFIX;

use crate::budget::Budget;
use crate::decode::{
    decode_pod, decode_postcard, descriptor_value, hex, hexdump, pod_layout, postcard_message,
    read_descriptor, Value,
};
use crate::error::CliError;
use crate::names;
use crate::output::Out;
use crate::spec::{self, Ty};
use crate::survey::{self, codec_name};

/// Joins the topic `typed` as a subscriber that reads only new messages, waiting at most
/// `budget` for it to open.
fn subscribe(typed: &str, budget: &Budget) -> Result<(Name, SegmentInfo, RawSubscriber), CliError> {
    let name = names::existing(typed)?;
    let info = survey::peek(&name)?;
    if info.kind != Kind::Topic {
        return Err(CliError::NotATopic {
            name: name.as_str().to_owned(),
            kind: info.kind.as_str().to_owned(),
        });
    }
    if !info.in_use {
        return Err(CliError::Usage(format!(
            "topic `{name}` has no live process (nothing will be published); `shmbus gc` removes it"
        )));
    }
    let opts = TopicOptions {
        open_timeout: Some(budget.open_timeout()),
        ..TopicOptions::default()
    };
    let topic: Arc<RawTopic> = RawTopic::open(&name, &info.type_info, &opts)?;
    let sub = RawSubscriber::new(topic, 0)?;
    Ok((name, info, sub))
}

/// How `echo` turns a slot into output.
#[derive(Debug)]
pub(crate) enum Decoder {
    /// An array topic: the block descriptor, then metadata (decoded with a layout, or hex).
    Array { meta: Option<Ty>, meta_len: usize },
    /// In-memory bytes of a known layout of this size.
    Pod(Ty, u64),
    /// A postcard message of a known layout.
    Postcard(Ty),
    /// Unknown: bytes in hex, with why.
    Hex(String),
}

pub(crate) fn decoder(info: &SegmentInfo, as_spec: Option<&str>) -> Result<Decoder, CliError> {
    let t = &info.type_info;
    let user = as_spec.map(spec::parse).transpose()?;
    let mismatch = |source| CliError::SpecMismatch {
        name: info.name.as_str().to_owned(),
        source,
    };
    if t.name.starts_with(ARRAY_TOPIC_PREFIX) && t.codec == Codec::Pod {
        let meta_len = usize::try_from(t.size)
            .ok()
            .and_then(|s| s.checked_sub(DESCRIPTOR_SIZE))
            .unwrap_or(0);
        if let Some(ty) = &user {
            let (size, _) = pod_layout(ty).map_err(mismatch)?;
            if size != meta_len as u64 {
                return Err(mismatch(crate::decode::DecodeError::SizeMismatch {
                    layout: size,
                    stored: meta_len as u64,
                }));
            }
        }
        return Ok(Decoder::Array {
            meta: user,
            meta_len,
        });
    }
    match (t.codec, user) {
        (Codec::Postcard, Some(ty)) => Ok(Decoder::Postcard(ty)),
        (Codec::Pod, Some(ty)) => {
            let (size, _) = pod_layout(&ty).map_err(mismatch)?;
            if size != t.size {
                return Err(mismatch(crate::decode::DecodeError::SizeMismatch {
                    layout: size,
                    stored: t.size,
                }));
            }
            Ok(Decoder::Pod(ty, size))
        }
        (Codec::Bytes, Some(ty)) => {
            let (size, _) = pod_layout(&ty).map_err(mismatch)?;
            Ok(Decoder::Pod(ty, size))
        }
        (codec, None) => {
            let known = spec::known_type(&t.name);
            Ok(match (codec, known) {
                (Codec::Postcard, Some(ty)) => Decoder::Postcard(ty),
                (Codec::Pod, Some(ty)) if pod_layout(&ty).is_ok_and(|(s, _)| s == t.size) => {
                    Decoder::Pod(ty, t.size)
                }
                _ => Decoder::Hex(format!(
                    "{} ({}) is not a type shmbus knows; decode it with --as 'field:type,...'",
                    t.name,
                    codec_name(codec)
                )),
            })
        }
    }
}

/// One echoed message, as `--json` prints it.
#[derive(Debug, Serialize)]
pub(crate) struct EchoMsg {
    seq: u64,
    /// Decoded value.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Value>,
    /// Array topics: the block descriptor.
    #[serde(skip_serializing_if = "Option::is_none")]
    array: Option<Value>,
    /// Array topics: metadata decoded with `--as`.
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<Value>,
    /// Array topics: metadata bytes in hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    meta_hex: Option<String>,
    /// Undecoded bytes in hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    hex: Option<String>,
    /// Why the message is in hex, or what looks wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    /// Why decoding failed (the bytes are in `hex`).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl EchoMsg {
    fn new(seq: u64) -> EchoMsg {
        EchoMsg {
            seq,
            value: None,
            array: None,
            meta: None,
            meta_hex: None,
            hex: None,
            note: None,
            error: None,
        }
    }
}

/// The message of one slot. Never panics: the slot comes from another process.
pub(crate) fn echo_msg(
    seq: u64,
    slot: &[u8],
    d: &Decoder,
    info: &SegmentInfo,
) -> (EchoMsg, Vec<u8>) {
    let mut m = EchoMsg::new(seq);
    let mut raw = Vec::new();
    match d {
        Decoder::Array { meta, meta_len } => match read_descriptor(slot) {
            Ok(desc) => {
                m.array = Some(descriptor_value(&desc));
                let bytes = slot
                    .get(DESCRIPTOR_SIZE..DESCRIPTOR_SIZE + meta_len)
                    .unwrap_or(&[]);
                match meta {
                    Some(ty) => match decode_pod(ty, bytes, Some(*meta_len as u64)) {
                        Ok(v) => m.meta = Some(v),
                        Err(e) => {
                            m.error = Some(format!("metadata: {e}"));
                            m.meta_hex = Some(hex(bytes));
                        }
                    },
                    None if *meta_len > 0 => m.meta_hex = Some(hex(bytes)),
                    None => {}
                }
            }
            Err(e) => {
                m.error = Some(e.to_string());
                raw = slot.to_vec();
            }
        },
        Decoder::Pod(ty, size) => {
            let bytes = slot.get(..*size as usize).unwrap_or(slot);
            match decode_pod(ty, bytes, None) {
                Ok(v) => m.value = Some(v),
                Err(e) => {
                    m.error = Some(e.to_string());
                    raw = bytes.to_vec();
                }
            }
        }
        Decoder::Postcard(ty) => match postcard_message(slot) {
            Ok(msg) => match decode_postcard(ty, msg) {
                Ok(dec) => {
                    m.value = Some(dec.value);
                    if dec.trailing > 0 {
                        m.note = Some(format!(
                            "{} bytes left after the value: does the layout match the type?",
                            dec.trailing
                        ));
                    }
                }
                Err(e) => {
                    m.error = Some(e.to_string());
                    raw = msg.to_vec();
                }
            },
            Err(e) => {
                m.error = Some(e.to_string());
                raw = slot.to_vec();
            }
        },
        Decoder::Hex(why) => {
            m.note = Some(why.clone());
            raw = match info.type_info.codec {
                Codec::Postcard => match postcard_message(slot) {
                    Ok(msg) => msg.to_vec(),
                    Err(e) => {
                        m.error = Some(e.to_string());
                        slot.to_vec()
                    }
                },
                Codec::Pod => slot
                    .get(..usize::try_from(info.type_info.size).unwrap_or(usize::MAX))
                    .unwrap_or(slot)
                    .to_vec(),
                Codec::Bytes => slot.to_vec(),
            };
        }
    }
    if !raw.is_empty() || m.error.is_some() || matches!(d, Decoder::Hex(_)) {
        m.hex = Some(hex(&raw));
    }
    (m, raw)
}

pub(crate) fn render_echo(m: &EchoMsg, raw: &[u8]) -> String {
    let json = |v: &Value| serde_json::to_string(v).unwrap_or_default();
    let mut s = format!("#{}", m.seq);
    if let Some(v) = &m.value {
        s.push(' ');
        s.push_str(&json(v));
    }
    if let Some(a) = &m.array {
        s.push(' ');
        s.push_str(&json(a));
        if let Some(meta) = &m.meta {
            s.push_str(" meta ");
            s.push_str(&json(meta));
        } else if let Some(h) = &m.meta_hex {
            s.push_str(" meta ");
            s.push_str(h);
        }
    }
    if let Some(e) = &m.error {
        s.push_str(&format!(" cannot decode: {e}"));
    }
    if let Some(n) = &m.note {
        s.push_str(&format!(" ({n})"));
    }
    s.push('\n');
    if m.hex.is_some() {
        s.push_str(&format!("  {} bytes:\n", raw.len()));
        for line in hexdump(raw).lines() {
            s.push_str("  ");
            s.push_str(line);
            s.push('\n');
        }
    }
    s
}

/// `shmbus echo TOPIC [--count N] [--as SPEC] [--timeout SECS]`: `timeout` (given only with
/// `--timeout`) also bounds the wait for each message.
pub(crate) fn echo(
    out: &mut Out,
    typed: &str,
    count: Option<u64>,
    as_spec: Option<&str>,
    budget: &Budget,
    timeout: Option<Duration>,
    json: bool,
) -> Result<(), CliError> {
    // Check the layout before joining: a bad spec is a usage error, not a subscriber.
    if let Some(s) = as_spec {
        spec::parse(s)?;
    }
    let (name, info, sub) = subscribe(typed, budget)?;
    let d = decoder(&info, as_spec)?;
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        match sub.receive(timeout)? {
            Received::Message(held) => {
                let (m, raw) = echo_msg(held.seq(), sub.slot(&held), &d, &info);
                sub.release(held);
                if json {
                    out.json(&m)?;
                } else {
                    out.put(&render_echo(&m, &raw))?;
                }
                out.flush()?;
                seen += 1;
            }
            Received::Lagged(n) => {
                if json {
                    #[derive(Serialize)]
                    struct Lag {
                        lagged: u64,
                    }
                    out.json(&Lag { lagged: n })?;
                } else {
                    out.line(&format!(
                        "(missed {n} messages: overwritten before they were read)"
                    ))?;
                }
                out.flush()?;
            }
            Received::Empty => {
                return Err(CliError::Usage(format!(
                    "no message on `{name}` within {:.1} s",
                    timeout.unwrap_or_default().as_secs_f64()
                )))
            }
            Received::Disconnected => {
                crate::note(&format!("`{name}`: every publisher left"));
                break;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// hz
// ---------------------------------------------------------------------------------------------

/// Mean, min, max and standard deviation of a window of samples.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub(crate) struct Stats {
    pub(crate) mean: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) std_dev: f64,
}

impl Stats {
    /// Statistics of `xs` (`None` when empty).
    pub(crate) fn of(xs: impl Iterator<Item = f64> + Clone) -> Option<Stats> {
        let n = xs.clone().count();
        if n == 0 {
            return None;
        }
        let mean = xs.clone().sum::<f64>() / n as f64;
        let var = xs.clone().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        Some(Stats {
            mean,
            min: xs.clone().fold(f64::INFINITY, f64::min),
            max: xs.fold(f64::NEG_INFINITY, f64::max),
            std_dev: var.sqrt(),
        })
    }
}

/// What `hz` reports.
#[derive(Debug, Serialize)]
struct HzReport {
    topic: String,
    /// Messages received in all.
    messages: u64,
    /// Messages the subscriber missed (overwritten before it read them).
    lagged: u64,
    /// Seconds spent watching.
    elapsed_s: f64,
    /// Intervals in the window.
    window: usize,
    /// Messages per second over the window (1 / mean interval).
    rate_hz: Option<f64>,
    /// Intervals between receptions, seconds.
    interval_s: Option<Stats>,
    /// Publish-to-receive latency, nanoseconds (topics that record publish times).
    latency_ns: Option<Stats>,
    /// Why there is no latency, if there is none.
    latency_note: Option<String>,
}

struct Window {
    size: usize,
    arrivals: VecDeque<Instant>,
    latencies: VecDeque<u64>,
}

impl Window {
    fn push(&mut self, at: Instant, latency: Option<u64>) {
        self.arrivals.push_back(at);
        if self.arrivals.len() > self.size + 1 {
            self.arrivals.pop_front();
        }
        if let Some(l) = latency {
            self.latencies.push_back(l);
            if self.latencies.len() > self.size {
                self.latencies.pop_front();
            }
        }
    }

    fn intervals(&self) -> impl Iterator<Item = f64> + Clone + '_ {
        self.arrivals
            .iter()
            .zip(self.arrivals.iter().skip(1))
            .map(|(a, b)| b.duration_since(*a).as_secs_f64())
    }
}

/// `shmbus hz TOPIC [--window N] [--duration SECS]`.
pub(crate) fn hz(
    out: &mut Out,
    typed: &str,
    window: usize,
    duration: Option<Duration>,
    budget: &Budget,
    json: bool,
) -> Result<(), CliError> {
    if window == 0 {
        return Err(CliError::Usage("--window must be at least 1".into()));
    }
    let (name, info, sub) = subscribe(typed, budget)?;
    let stamps = survey::timestamps(&info);
    let start = Instant::now();
    let end = duration.map(|d| start + d);
    let mut w = Window {
        size: window,
        arrivals: VecDeque::new(),
        latencies: VecDeque::new(),
    };
    let (mut messages, mut lagged) = (0u64, 0u64);
    let mut next_report = start + Duration::from_secs(1);
    let mut printed: Option<Instant> = None;
    let report = |w: &Window, messages: u64, lagged: u64| {
        let interval = Stats::of(w.intervals());
        HzReport {
            topic: name.as_str().to_owned(),
            messages,
            lagged,
            elapsed_s: start.elapsed().as_secs_f64(),
            window: w.arrivals.len().saturating_sub(1),
            rate_hz: interval.filter(|s| s.mean > 0.0).map(|s| 1.0 / s.mean),
            interval_s: interval,
            latency_ns: Stats::of(w.latencies.iter().map(|&l| l as f64)),
            latency_note: (!stamps).then(|| "n/a (topic has no timestamps)".to_owned()),
        }
    };
    loop {
        let now = Instant::now();
        if end.is_some_and(|e| now >= e) {
            break;
        }
        let wait = end
            .map_or(next_report, |e| e.min(next_report))
            .saturating_duration_since(now);
        match sub.receive(Some(wait))? {
            Received::Message(held) => {
                let at = Instant::now();
                let latency = sub
                    .published_at(&held)
                    .map(|t| monotonic_ns().saturating_sub(t));
                sub.release(held);
                w.push(at, latency);
                messages += 1;
            }
            Received::Lagged(n) => lagged += n,
            Received::Empty => {}
            Received::Disconnected => {
                crate::note(&format!("`{name}`: every publisher left"));
                break;
            }
        }
        if Instant::now() >= next_report {
            if !json {
                out.put(&render_hz(&report(&w, messages, lagged)))?;
                out.flush()?;
                printed = Some(Instant::now());
            }
            next_report += Duration::from_secs(1);
        }
    }
    let r = report(&w, messages, lagged);
    if json {
        out.json_pretty(&r)
    } else if printed.is_none_or(|t| t.elapsed() > Duration::from_millis(200)) {
        out.put(&render_hz(&r))
    } else {
        Ok(()) // the report just printed is the final one
    }
}

fn render_hz(r: &HzReport) -> String {
    let mut s = String::new();
    match (r.rate_hz, r.interval_s) {
        (Some(rate), Some(i)) => s.push_str(&format!(
            "average rate: {rate:.3} msg/s\n  min: {:.6} s  max: {:.6} s  std dev: {:.6} s  window: {}\n",
            i.min, i.max, i.std_dev, r.window
        )),
        _ => s.push_str(&format!(
            "no rate yet: {} messages received in {:.1} s\n",
            r.messages, r.elapsed_s
        )),
    }
    match (&r.latency_ns, &r.latency_note) {
        (Some(l), _) => s.push_str(&format!(
            "  latency: mean {}  min {}  max {}  std dev {}\n",
            ns(l.mean),
            ns(l.min),
            ns(l.max),
            ns(l.std_dev)
        )),
        (None, Some(note)) => s.push_str(&format!("  latency: {note}\n")),
        (None, None) => {}
    }
    if r.lagged > 0 {
        s.push_str(&format!("  missed {} messages (overwritten)\n", r.lagged));
    }
    s
}

fn ns(v: f64) -> String {
    if v < 1e3 {
        format!("{v:.0} ns")
    } else if v < 1e6 {
        format!("{:.1} µs", v / 1e3)
    } else if v < 1e9 {
        format!("{:.2} ms", v / 1e6)
    } else {
        format!("{:.3} s", v / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats() {
        let s = Stats::of([1.0, 2.0, 3.0, 4.0].into_iter()).unwrap();
        assert_eq!(s.mean, 2.5);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 4.0);
        assert!((s.std_dev - 1.25f64.sqrt()).abs() < 1e-12);
        assert!(Stats::of(std::iter::empty()).is_none());
    }

    #[test]
    fn window_keeps_the_last_n_intervals() {
        let t0 = Instant::now();
        let mut w = Window {
            size: 2,
            arrivals: VecDeque::new(),
            latencies: VecDeque::new(),
        };
        for i in 0..5 {
            w.push(t0 + Duration::from_millis(10 * i * i), Some(i));
        }
        let iv: Vec<f64> = w.intervals().collect();
        assert_eq!(iv.len(), 2);
        assert!((iv[0] - 0.05).abs() < 1e-9 && (iv[1] - 0.07).abs() < 1e-9);
        assert_eq!(w.latencies, [3, 4]);
    }

    #[test]
    fn durations_print_in_units() {
        assert_eq!(ns(512.0), "512 ns");
        assert_eq!(ns(12_345.0), "12.3 µs");
        assert_eq!(ns(2_500_000.0), "2.50 ms");
    }
}
