//! `shmbus-bridge-bench`: latency and throughput through two bridges, beside plain Zenoh.
//!
//! ```text
//! # machine A                                    # machine B
//! shmbus-bridge-bench ping --via shmbus ...      shmbus-bridge-bench pong --via shmbus ...
//! shmbus-bridge-bench source --via zenoh ...     shmbus-bridge-bench sink --via zenoh ...
//! ```
//!
//! - `ping`/`pong`: one message in flight; `ping` reports the round trip / 2 (median, p99 and
//!   mean over `--count` round trips, after `--warmup`).
//! - `source`/`sink`: `source` publishes as fast as back-pressure lets it for `--secs`, then a
//!   last marker; `sink` reports messages/s and MB/s (10^6 bytes of payload) from the first
//!   message it received to the last, and how many were lost (none, with back-pressure).
//!
//! `--via shmbus`: local back-pressure topics (`bench.ping.<size>`, `bench.pong.<size>`,
//! `bench.data.<size>`) that bridges carry; 64 bytes is a plain-old-data topic, larger sizes
//! array topics of `u8`. `--via zenoh`: a Zenoh peer session with explicit endpoints and no
//! scouting (as the bridge opens it), keys `bench/ping/<size>` etc., `CongestionControl::Block`.
//! Every send copies the payload once from a buffer (into a Zenoh buffer, or into a slot or
//! block); every receive reads the index in place.
//!
//! Each role prints one line starting with `result ` (`key=value` fields), or `error ...`.

use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use shmbus::{ArrayPublisher, ArraySubscriber, Overflow, Publisher, RecvError, Subscriber, Topic};
use zenoh::handlers::FifoChannelHandler;
use zenoh::qos::CongestionControl;
use zenoh::sample::Sample;
use zenoh::Wait;

/// The 64-byte message: an index and padding.
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct BenchMsg {
    index: u64,
    pad: [u64; 7],
}

/// The metadata sent with every array.
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct BenchMeta {
    index: u64,
}

/// The index that ends a run (`pong` and `sink` stop on it).
const STOP: u64 = u64::MAX;

/// The size carried as a plain-old-data message; larger sizes are arrays.
const POD_SIZE: usize = size_of::<BenchMsg>();

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Via {
    /// Plain Zenoh publisher and subscriber.
    Zenoh,
    /// Local shmbus topics carried by bridges.
    Shmbus,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// What carries the messages.
    #[arg(long, value_enum)]
    via: Via,
    /// Payload bytes: 64 (a plain-old-data message) or more (an array of u8).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Zenoh endpoint to listen on (`--via zenoh`; repeatable).
    #[arg(long)]
    listen: Vec<String>,
    /// Zenoh endpoint to connect to (`--via zenoh`; repeatable).
    #[arg(long)]
    connect: Vec<String>,
    /// Ring entries of the shmbus topics.
    #[arg(long, default_value_t = 16)]
    capacity: u32,
}

#[derive(Parser)]
#[command(about = "Latency and throughput through shmbus bridges, beside plain Zenoh")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send pings, time the pongs (machine A).
    Ping {
        #[command(flatten)]
        c: Common,
        /// Round trips measured.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Round trips before measuring.
        #[arg(long, default_value_t = 100)]
        warmup: usize,
    },
    /// Answer every ping (machine B); ends on the last ping or after `--idle-secs` of silence.
    Pong {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 60)]
        idle_secs: u64,
    },
    /// Publish as fast as the receiver takes it for `--secs` (machine A).
    Source {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
    },
    /// Count what arrives (machine B); ends on the source's last marker.
    Sink {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 60)]
        idle_secs: u64,
    },
}

/// A publisher of either system.
enum Tx {
    Pod(Publisher<BenchMsg>),
    Array(Box<ArrayPublisher<BenchMeta>>),
    Zenoh(zenoh::pubsub::Publisher<'static>),
}

/// A subscriber of either system.
enum Rx {
    Pod(Subscriber<BenchMsg>),
    Array(Box<ArraySubscriber<BenchMeta>>),
    Zenoh(zenoh::pubsub::Subscriber<FifoChannelHandler<Sample>>),
}

/// What one side holds: its Zenoh session (plain Zenoh only) and the payload it copies from.
struct Side {
    c: Common,
    session: Option<zenoh::Session>,
    buf: Vec<u8>,
}

impl Side {
    fn new(c: &Common) -> Res<Side> {
        if c.size < POD_SIZE {
            return Err(format!("--size must be at least {POD_SIZE}").into());
        }
        let session = match c.via {
            Via::Zenoh => Some(
                zenoh::open(zenoh_config(&c.listen, &c.connect)?)
                    .wait()
                    .map_err(|e| e.to_string())?,
            ),
            Via::Shmbus => None,
        };
        Ok(Side {
            c: c.clone(),
            session,
            buf: (0..c.size).map(|i| (i % 251) as u8).collect(),
        })
    }

    fn topic(&self, what: &str) -> Topic {
        Topic::builder(&format!("bench.{what}.{}", self.c.size))
            .overflow(Overflow::BackPressure)
            .capacity(self.c.capacity)
            .publish_timeout(Some(Duration::from_secs(30)))
    }

    fn key(&self, what: &str) -> String {
        format!("bench/{what}/{}", self.c.size)
    }

    fn publisher(&self, what: &str) -> Res<Tx> {
        Ok(match &self.session {
            Some(s) => Tx::Zenoh(
                s.declare_publisher(self.key(what))
                    .congestion_control(CongestionControl::Block)
                    .wait()
                    .map_err(|e| e.to_string())?,
            ),
            None if self.c.size == POD_SIZE => Tx::Pod(self.topic(what).publisher()?),
            None => Tx::Array(Box::new(self.topic(what).array_publisher()?)),
        })
    }

    fn subscriber(&self, what: &str) -> Res<Rx> {
        Ok(match &self.session {
            Some(s) => Rx::Zenoh(
                s.declare_subscriber(self.key(what))
                    .wait()
                    .map_err(|e| e.to_string())?,
            ),
            None if self.c.size == POD_SIZE => Rx::Pod(self.topic(what).subscriber()?),
            None => Rx::Array(Box::new(self.topic(what).array_subscriber()?)),
        })
    }

    /// Sends message `index`: one copy of the payload.
    fn send(&mut self, tx: &mut Tx, index: u64) -> Res<()> {
        match tx {
            Tx::Pod(p) => {
                let mut m: BenchMsg = bytemuck::pod_read_unaligned(&self.buf[..POD_SIZE]);
                m.index = index;
                p.send(m).map(drop).map_err(|e| e.to_string())?;
            }
            Tx::Array(p) => {
                p.send(&[self.buf.len()], &self.buf, BenchMeta { index })
                    .map(drop)
                    .map_err(|e| e.to_string())?;
            }
            Tx::Zenoh(p) => {
                let mut v = self.buf.clone();
                v[..8].copy_from_slice(&index.to_le_bytes());
                p.put(v).wait().map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Waits until `tx` has a receiver (a bridge, or a matching Zenoh subscriber).
    fn wait_receiver(tx: &Tx, timeout: Duration) -> Res<()> {
        let start = Instant::now();
        loop {
            let ready = match tx {
                Tx::Pod(p) => p.stats().subscribers > 0,
                Tx::Array(p) => p.stats().subscribers > 0,
                Tx::Zenoh(p) => p
                    .matching_status()
                    .wait()
                    .map_err(|e| e.to_string())?
                    .matching(),
            };
            if ready {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err("no receiver came".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Receives one message within `timeout`: its index, or `None`.
fn recv(rx: &Rx, size: usize, timeout: Duration) -> Res<Option<u64>> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let r = match rx {
            Rx::Pod(s) => s.recv_timeout(left).map(|m| (m.index, POD_SIZE)),
            Rx::Array(s) => s
                .recv_timeout(left)
                .and_then(|a| Ok((a.meta().index, a.as_slice::<u8>()?.len()))),
            Rx::Zenoh(s) => match s.recv_timeout(left).map_err(|e| e.to_string())? {
                None => return Ok(None),
                Some(sample) => {
                    let p = sample.payload();
                    let mut b = [0u8; 8];
                    p.reader().read_exact(&mut b)?;
                    Ok((u64::from_le_bytes(b), p.len()))
                }
            },
        };
        match r {
            Ok((_, n)) if n != size => return Err(format!("{n} bytes, not {size}").into()),
            Ok((i, _)) => return Ok(Some(i)),
            // No publisher yet (the bridge has not joined): wait for one.
            Err(RecvError::Timeout | RecvError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The Zenoh configuration the bridge uses: peer mode, explicit endpoints, no scouting.
fn zenoh_config(listen: &[String], connect: &[String]) -> Res<zenoh::Config> {
    let list = |v: &[String]| {
        let quoted: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
        format!("[{}]", quoted.join(","))
    };
    let mut zc = zenoh::Config::default();
    let z = |e: zenoh::Error| e.to_string();
    zc.insert_json5("mode", "\"peer\"").map_err(z)?;
    zc.insert_json5("listen/endpoints", &list(listen))
        .map_err(z)?;
    zc.insert_json5("connect/endpoints", &list(connect))
        .map_err(z)?;
    zc.insert_json5("scouting/multicast/enabled", "false")
        .map_err(z)?;
    Ok(zc)
}

fn via_name(v: Via) -> &'static str {
    match v {
        Via::Zenoh => "zenoh",
        Via::Shmbus => "shmbus",
    }
}

fn ping(c: &Common, count: usize, warmup: usize) -> Res<()> {
    let mut side = Side::new(c)?;
    let pongs = side.subscriber("pong")?;
    let mut tx = side.publisher("ping")?;
    Side::wait_receiver(&tx, Duration::from_secs(30))?;
    // Until the first pong: the far side's routes (and, through bridges, its export scan)
    // settle. Pings that find no one are sent again.
    let start = Instant::now();
    let mut index = 0u64;
    'hello: loop {
        if start.elapsed() > Duration::from_secs(30) {
            return Err("no pong came".into());
        }
        index += 1;
        side.send(&mut tx, index)?;
        let asked = Instant::now();
        while asked.elapsed() < Duration::from_millis(300) {
            if recv(&pongs, c.size, Duration::from_millis(50))? == Some(index) {
                break 'hello;
            }
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut one_way_us = Vec::with_capacity(count);
    for n in 0..warmup + count {
        index += 1;
        let t0 = Instant::now();
        side.send(&mut tx, index)?;
        loop {
            match recv(&pongs, c.size, Duration::from_secs(10))? {
                Some(i) if i == index => break,
                Some(_) => {} // a late answer to a hello
                None => return Err(format!("pong {index} did not come").into()),
            }
        }
        if n >= warmup {
            one_way_us.push(t0.elapsed().as_secs_f64() * 1e6 / 2.0);
        }
    }
    side.send(&mut tx, STOP)?;
    one_way_us.sort_by(f64::total_cmp);
    let at =
        |q: f64| one_way_us[((one_way_us.len() as f64 * q) as usize).min(one_way_us.len() - 1)];
    let mean = one_way_us.iter().sum::<f64>() / one_way_us.len() as f64;
    println!(
        "result role=ping via={} size={} n={} median_us={:.1} p99_us={:.1} mean_us={:.1} min_us={:.1}",
        via_name(c.via),
        c.size,
        one_way_us.len(),
        at(0.5),
        at(0.99),
        mean,
        one_way_us[0]
    );
    // Let the bridge read the stop before this publisher leaves.
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

fn pong(c: &Common, idle: Duration) -> Res<()> {
    let mut side = Side::new(c)?;
    let pings = side.subscriber("ping")?;
    let mut tx = side.publisher("pong")?;
    println!("ready");
    let mut answered = 0u64;
    loop {
        match recv(&pings, c.size, idle)? {
            Some(STOP) => break,
            Some(i) => {
                side.send(&mut tx, i)?;
                answered += 1;
            }
            None => return Err("no ping for too long".into()),
        }
    }
    println!(
        "result role=pong via={} size={} answered={answered}",
        via_name(c.via),
        c.size
    );
    Ok(())
}

fn source(c: &Common, secs: f64) -> Res<()> {
    let mut side = Side::new(c)?;
    let mut tx = side.publisher("data")?;
    Side::wait_receiver(&tx, Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_secs(1));
    let run = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < run {
        side.send(&mut tx, sent)?;
        sent += 1;
    }
    let took = start.elapsed().as_secs_f64();
    side.send(&mut tx, STOP)?;
    println!(
        "result role=source via={} size={} sent={sent} msgs_per_s={:.0}",
        via_name(c.via),
        c.size,
        sent as f64 / took
    );
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

fn sink(c: &Common, idle: Duration) -> Res<()> {
    let side = Side::new(c)?;
    let rx = side.subscriber("data")?;
    println!("ready");
    let (mut got, mut max) = (0u64, None::<u64>);
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    loop {
        match recv(&rx, c.size, idle)? {
            Some(STOP) => break,
            Some(i) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = Some(now);
                got += 1;
                max = Some(max.map_or(i, |m: u64| m.max(i)));
            }
            None => return Err(format!("nothing for {idle:?} after {got} messages").into()),
        }
    }
    let (Some(first), Some(last)) = (first, last) else {
        return Err("no message came".into());
    };
    let secs = last.duration_since(first).as_secs_f64();
    let rate = if secs > 0.0 {
        (got - 1) as f64 / secs
    } else {
        0.0
    };
    let lost = max.map_or(0, |m| m + 1).saturating_sub(got);
    println!(
        "result role=sink via={} size={} n={got} lost={lost} secs={secs:.3} msgs_per_s={rate:.0} mb_per_s={:.1}",
        via_name(c.via),
        c.size,
        rate * c.size as f64 / 1e6
    );
    Ok(())
}

fn main() -> ExitCode {
    let r = match Cli::parse().cmd {
        Cmd::Ping { c, count, warmup } => ping(&c, count.max(1), warmup),
        Cmd::Pong { c, idle_secs } => pong(&c, Duration::from_secs(idle_secs)),
        Cmd::Source { c, secs } => source(&c, secs),
        Cmd::Sink { c, idle_secs } => sink(&c, Duration::from_secs(idle_secs)),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("error {e}");
            ExitCode::FAILURE
        }
    }
}
