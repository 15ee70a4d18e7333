//! `py_matched`: the Rust side of `python -m shmbus.bench`, measured the same way, so that the
//! Python figures have a like-for-like Rust figure beside them.
//!
//! ```text
//! cargo run --release --bin py_matched -- [--quick]
//! ```
//!
//! Prints one JSON object: `{"handoff_8MiB": {"median": ms, "p99": ms}, "wake_pingpong":
//! {"median": us, "p99": us}}`.
//!
//! - `handoff_8MiB`: the producer loans an 8 MiB `f64` array from an array topic, fills it
//!   (`i + k`), and publishes it; one sample is the time from the publish call to the consumer
//!   holding the slice. The consumer then checks every element (untimed) and sends back the time
//!   it got it on a Pod topic, which is the acknowledgement.
//! - `wake_pingpong`: two auto-reset `shmbus::Event`s; the leader busy-waits 100 us before each
//!   ping so that the receiver is asleep; one sample is round trip / 2.
//!
//! Each round runs in a fresh peer process; the leader is pinned to CPU 0 and the peer to CPU 1.

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use shmbus::{Event, EventMode, Topic};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const N: usize = 8 * 1024 * 1024 / 8;
const TIMEOUT: Duration = Duration::from_secs(20);

fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

fn pause(us: u64) {
    let end = Instant::now() + Duration::from_micros(us);
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

fn spawn(args: &[&str]) -> Res<std::process::Child> {
    Ok(Command::new(std::env::current_exe()?)
        .arg("__peer")
        .args(args)
        .stdin(Stdio::null())
        .spawn()?)
}

fn handoff_peer(name: &str, iters: u64) -> Res<()> {
    pin(1);
    let t = Topic::builder(name);
    let sub = t.array_subscriber::<()>()?;
    let mut ack = Topic::builder(&format!("{name}.ack")).publisher::<u64>()?;
    Event::open(&format!("{name}.ready"))?.set();
    for k in 0..iters {
        let s = sub.recv_timeout(TIMEOUT)?;
        let a = s.as_slice::<f64>()?;
        let t1 = shmbus::monotonic_ns();
        let ok = a.len() == N && a.iter().enumerate().all(|(i, &v)| v == i as f64 + k as f64);
        drop(s);
        ack.send(if ok { t1 } else { 0 })
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn handoff(name: &str, iters: u64) -> Res<Vec<f64>> {
    let ready = Event::open_or_create(&format!("{name}.ready"), EventMode::ManualReset, false)?;
    let acks = Topic::builder(&format!("{name}.ack"))
        .capacity(4)
        .subscriber::<u64>()?;
    let mut publisher = Topic::builder(name).array_publisher::<()>()?;
    let mut peer = spawn(&["handoff", name, &iters.to_string()])?;
    if !ready.wait_timeout(TIMEOUT) {
        return Err("the peer did not start".into());
    }
    let mut out = Vec::new();
    for k in 0..iters {
        let mut loan = publisher.loan::<f64>(&[N])?;
        for (i, v) in loan.as_mut_slice().iter_mut().enumerate() {
            *v = i as f64 + k as f64;
        }
        let t0 = shmbus::monotonic_ns();
        loan.publish().map_err(|e| e.to_string())?;
        let t1 = *acks.recv_timeout(TIMEOUT)?;
        if t1 == 0 {
            return Err("the consumer saw wrong data".into());
        }
        out.push(t1.saturating_sub(t0) as f64 / 1e6);
    }
    peer.wait()?;
    Ok(out)
}

fn wake_peer(name: &str, iters: u64) -> Res<()> {
    pin(1);
    let ping = Event::open(&format!("{name}.ping"))?;
    let pong = Event::open(&format!("{name}.pong"))?;
    Event::open(&format!("{name}.ready"))?.set();
    for _ in 0..iters {
        if !ping.wait_timeout(TIMEOUT) {
            return Err("no ping".into());
        }
        pong.set();
    }
    Ok(())
}

fn wake(name: &str, iters: u64) -> Res<Vec<f64>> {
    let auto = EventMode::AutoReset;
    let ping = Event::open_or_create(&format!("{name}.ping"), auto, false)?;
    let pong = Event::open_or_create(&format!("{name}.pong"), auto, false)?;
    let ready = Event::open_or_create(&format!("{name}.ready"), EventMode::ManualReset, false)?;
    let mut peer = spawn(&["wake", name, &iters.to_string()])?;
    if !ready.wait_timeout(TIMEOUT) {
        return Err("the peer did not start".into());
    }
    let mut out = Vec::new();
    for _ in 0..iters {
        pause(100);
        let t0 = Instant::now();
        ping.set();
        if !pong.wait_timeout(TIMEOUT) {
            return Err("no pong".into());
        }
        out.push(t0.elapsed().as_secs_f64() * 1e6 / 2.0);
    }
    peer.wait()?;
    Ok(out)
}

fn stats(mut xs: Vec<f64>) -> serde_json::Value {
    xs.sort_by(f64::total_cmp);
    let at = |p: f64| xs[((p * xs.len() as f64).ceil() as usize).clamp(1, xs.len()) - 1];
    serde_json::json!({"median": at(0.5), "p99": at(0.99)})
}

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("__peer") {
        let iters = args[3].parse()?;
        return match args[1].as_str() {
            "handoff" => handoff_peer(&args[2], iters),
            _ => wake_peer(&args[2], iters),
        };
    }
    let quick = args.iter().any(|a| a == "--quick");
    let (rounds, h_iters, w_iters, warm_h, warm_w) = if quick {
        (2, 4, 200, 1, 20)
    } else {
        (5, 40, 4000, 3, 200)
    };
    pin(0);
    let (mut h, mut w) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let name = format!("py-matched-{}-{r}", std::process::id());
        h.extend(handoff(&format!("{name}.h"), warm_h + h_iters)?.split_off(warm_h as usize));
        w.extend(wake(&format!("{name}.w"), warm_w + w_iters)?.split_off(warm_w as usize));
    }
    println!(
        "{}",
        serde_json::json!({"handoff_8MiB": stats(h), "wake_pingpong": stats(w)})
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("py_matched: {e}");
            ExitCode::FAILURE
        }
    }
}
