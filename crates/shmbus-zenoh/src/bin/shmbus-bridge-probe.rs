//! `shmbus-bridge-probe`: checks a bridged link end to end with verifiable messages.
//!
//! ```text
//! # machine A                                   # machine B
//! shmbus-bridge-probe send --topic demo.pose    shmbus-bridge-probe recv --topic demo.pose
//!     --kind pod --count 1000                       --kind pod --count 1000
//! ```
//!
//! Every message carries its index and a check derived from it (plain-old-data: a 64-byte
//! struct; serde: a struct with a string; array: a 2-D `u32` array and metadata), so the
//! receiver tells lost, repeated, reordered and corrupted messages apart. Each command prints
//! one summary line (`sent ...`, `got ...`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use shmbus::{Overflow, RecvError, Topic};

#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable, shmbus::Message)]
#[repr(C)]
struct ProbeMsg {
    index: u64,
    check: u64,
    pad: [u64; 6],
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct ProbeRec {
    index: u64,
    text: String,
}

#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct ProbeMeta {
    index: u64,
    check: u64,
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

fn pod(index: u64) -> ProbeMsg {
    ProbeMsg {
        index,
        check: mix(index),
        pad: [mix(index + 1); 6],
    }
}

fn rec(index: u64) -> ProbeRec {
    ProbeRec {
        index,
        text: format!("probe message {index} {}", mix(index)),
    }
}

fn array(index: u64, side: usize) -> Vec<u32> {
    (0..side * side)
        .map(|i| (mix(index) as u32) ^ (i as u32))
        .collect()
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum Kind {
    Pod,
    Serde,
    Array,
}

#[derive(Parser)]
#[command(about = "Check a bridged shmbus link end to end with verifiable messages")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct Common {
    /// The topic.
    #[arg(long)]
    topic: String,
    /// Which kind of message.
    #[arg(long, value_enum, default_value = "pod")]
    kind: Kind,
    /// Back-pressure topic (default: overwrite), when this side creates it.
    #[arg(long)]
    back_pressure: bool,
    /// Ring entries, when this side creates the topic.
    #[arg(long, default_value_t = 64)]
    capacity: u32,
    /// Side of the square array (array messages).
    #[arg(long, default_value_t = 64)]
    side: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// Publish `--count` messages (0: until killed, printing `sent index=..` every 100).
    Send {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 100)]
        count: u64,
        /// Pause between messages.
        #[arg(long, default_value_t = 1)]
        interval_ms: u64,
        /// Wait until this many subscribers joined (a bridge is one) before sending.
        #[arg(long, default_value_t = 0)]
        wait_subscribers: u32,
        /// Then wait this long more (for the remote side's routes to settle).
        #[arg(long, default_value_t = 0)]
        settle_ms: u64,
    },
    /// Set the auto-reset event `--name` `--count` times, `--interval-ms` apart; print `set n=..`.
    EventSet {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
    },
    /// Count the wakes of a waiter on the auto-reset event `--name` for `--for-ms`; print
    /// `woke n=..`.
    EventWait {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 5000)]
        for_ms: u64,
    },
    /// Receive and verify `--count` messages (or for `--for-ms`); print `got ...`.
    Recv {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 100)]
        count: u64,
        /// Give up after this long without the count.
        #[arg(long, default_value_t = 20_000)]
        timeout_ms: u64,
        /// Receive for this long regardless of the count, then report.
        #[arg(long)]
        for_ms: Option<u64>,
        /// Print `got index=..` every 50 messages.
        #[arg(long)]
        progress: bool,
    },
}

fn topic(c: &Common) -> Topic {
    let t = Topic::builder(&c.topic).capacity(c.capacity);
    if c.back_pressure {
        t.overflow(Overflow::BackPressure)
    } else {
        t
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn send(
    c: &Common,
    count: u64,
    interval: Duration,
    wait_subscribers: u32,
    settle: Duration,
) -> Res<()> {
    enum P {
        Pod(shmbus::Publisher<ProbeMsg>),
        Serde(shmbus::SerdePublisher<ProbeRec>),
        Array(Box<shmbus::ArrayPublisher<ProbeMeta>>),
    }
    let t = topic(c);
    let mut p = match c.kind {
        Kind::Pod => P::Pod(t.publisher::<ProbeMsg>()?),
        Kind::Serde => P::Serde(t.slot_size(256).serde_publisher::<ProbeRec>()?),
        Kind::Array => P::Array(Box::new(t.array_publisher::<ProbeMeta>()?)),
    };
    let subscribers = |p: &P| match p {
        P::Pod(p) => p.stats().subscribers,
        P::Serde(p) => p.stats().subscribers,
        P::Array(p) => p.stats().subscribers,
    };
    let start = Instant::now();
    while subscribers(&p) < wait_subscribers {
        if start.elapsed() > Duration::from_secs(20) {
            return Err("no subscriber came".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(settle);
    println!("sending");
    let mut i = 0u64;
    while count == 0 || i < count {
        match &mut p {
            P::Pod(p) => p.send(pod(i)).map(drop).map_err(|e| e.to_string())?,
            P::Serde(p) => p.send(rec(i)).map(drop).map_err(|e| e.to_string())?,
            P::Array(p) => {
                let meta = ProbeMeta {
                    index: i,
                    check: mix(i),
                };
                p.send(&[c.side, c.side], &array(i, c.side), meta)
                    .map(drop)
                    .map_err(|e| e.to_string())?
            }
        }
        i += 1;
        if count == 0 && i % 100 == 0 {
            println!("sent index={i}");
        }
        std::thread::sleep(interval);
    }
    println!("sent n={i}");
    // Let the bridge read the last ones before this publisher leaves.
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

#[derive(Default)]
struct Tally {
    got: u64,
    bad: u64,
    dup: u64,
    gaps: u64,
    first: Option<u64>,
    last: Option<u64>,
}

impl Tally {
    fn see(&mut self, index: u64, intact: bool) {
        if !intact {
            self.bad += 1;
            return;
        }
        match self.last {
            Some(l) if index <= l => self.dup += 1,
            Some(l) if index > l + 1 => self.gaps += index - l - 1,
            _ => {}
        }
        self.first.get_or_insert(index);
        if self.last.is_none_or(|l| index > l) {
            self.last = Some(index);
        }
        self.got += 1;
    }
}

fn recv(c: &Common, count: u64, timeout: Duration, for_ms: Option<u64>, progress: bool) -> Res<()> {
    enum S {
        Pod(shmbus::Subscriber<ProbeMsg>),
        Serde(shmbus::SerdeSubscriber<ProbeRec>),
        Array(Box<shmbus::ArraySubscriber<ProbeMeta>>),
    }
    let t = topic(c);
    let s = match c.kind {
        Kind::Pod => S::Pod(t.subscriber::<ProbeMsg>()?),
        Kind::Serde => S::Serde(t.slot_size(256).serde_subscriber::<ProbeRec>()?),
        Kind::Array => S::Array(Box::new(t.array_subscriber::<ProbeMeta>()?)),
    };
    println!("ready");
    let mut tally = Tally::default();
    let start = Instant::now();
    let until = for_ms.map(|ms| start + Duration::from_millis(ms));
    let mut lagged = 0u64;
    loop {
        let now = Instant::now();
        match until {
            Some(u) if now >= u => break,
            None if tally.got >= count => break,
            None if now.duration_since(start) > timeout => break,
            _ => {}
        }
        let slice = Duration::from_millis(50);
        let r = match &s {
            S::Pod(s) => s.recv_timeout(slice).map(|m| {
                let m = *m;
                (
                    m.index,
                    m.check == mix(m.index) && m.pad == [mix(m.index + 1); 6],
                )
            }),
            S::Serde(s) => s.recv_timeout(slice).map(|m| (m.index, m == rec(m.index))),
            S::Array(s) => s.recv_timeout(slice).and_then(|a| {
                let meta = *a.meta();
                let data = a.as_slice::<u32>()?;
                let ok = meta.check == mix(meta.index)
                    && a.shape() == [c.side, c.side]
                    && data == array(meta.index, c.side).as_slice();
                Ok((meta.index, ok))
            }),
        };
        match r {
            Ok((index, intact)) => {
                tally.see(index, intact);
                if progress && tally.got % 50 == 0 {
                    println!("got index={index}");
                }
            }
            Err(RecvError::Timeout | RecvError::Disconnected) => {}
            Err(RecvError::Lagged(n)) => lagged += n,
            Err(e) => return Err(e.into()),
        }
    }
    println!(
        "got n={} first={} last={} gaps={} dup={} bad={} lagged={lagged} ms={}",
        tally.got,
        tally.first.map_or(-1, |f| f as i64),
        tally.last.map_or(-1, |l| l as i64),
        tally.gaps,
        tally.dup,
        tally.bad,
        start.elapsed().as_millis()
    );
    Ok(())
}

fn event_set(name: &str, count: u64, interval: Duration) -> Res<()> {
    let e = shmbus::Event::open_or_create(name, shmbus::EventMode::AutoReset, false)?;
    println!("ready");
    for _ in 0..count {
        std::thread::sleep(interval);
        e.set();
    }
    println!("set n={count}");
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

fn event_wait(name: &str, for_ms: u64) -> Res<()> {
    let e = shmbus::Event::open_or_create(name, shmbus::EventMode::AutoReset, false)?;
    println!("ready");
    let until = Instant::now() + Duration::from_millis(for_ms);
    let mut n = 0u64;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if e.wait_timeout(left) {
            n += 1;
        }
    }
    println!("woke n={n}");
    Ok(())
}

fn main() -> ExitCode {
    let r = match Cli::parse().cmd {
        Cmd::EventSet {
            name,
            count,
            interval_ms,
        } => event_set(&name, count, Duration::from_millis(interval_ms)),
        Cmd::EventWait { name, for_ms } => event_wait(&name, for_ms),
        Cmd::Send {
            c,
            count,
            interval_ms,
            wait_subscribers,
            settle_ms,
        } => send(
            &c,
            count,
            Duration::from_millis(interval_ms),
            wait_subscribers,
            Duration::from_millis(settle_ms),
        ),
        Cmd::Recv {
            c,
            count,
            timeout_ms,
            for_ms,
            progress,
        } => recv(
            &c,
            count,
            Duration::from_millis(timeout_ms),
            for_ms,
            progress,
        ),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("error {e}");
            ExitCode::FAILURE
        }
    }
}
