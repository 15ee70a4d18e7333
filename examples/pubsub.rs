//! Two processes exchanging plain-old-data and serde messages over shmbus.
//!
//! `cargo run --release --example pubsub` starts itself a second time as the subscriber, then
//! publishes. The subscriber checks every message and reports; both exit, and the last one out
//! removes the topics from `/dev/shm`.
//!
//! Run the roles by hand in two terminals with `-- subscribe` and `-- publish`.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use shmbus::{Overflow, RecvError, Topic};

/// A robot pose: plain old data, read in place by the subscriber.
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Pose {
    seq: u64,
    x: f64,
    y: f64,
    theta: f64,
}

/// A status report: a serde type, encoded into the slot.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Status {
    seq: u64,
    mode: String,
    warnings: Vec<String>,
}

#[derive(Parser)]
#[command(about = "shmbus pub/sub between two processes")]
struct Args {
    #[command(subcommand)]
    role: Option<Role>,
    /// Messages of each kind.
    #[arg(long, default_value_t = 100_000, global = true)]
    count: u64,
    /// Topic name prefix (the example adds `.pose` and `.status`).
    #[arg(long, global = true)]
    topic: Option<String>,
}

#[derive(Subcommand, Clone, Copy)]
enum Role {
    /// Publish poses and status reports.
    Publish,
    /// Receive and check them.
    Subscribe,
}

fn topics(prefix: &str) -> (Topic, Topic) {
    // Back-pressure: a slow subscriber holds the publisher back instead of missing messages.
    let pose = Topic::builder(&format!("{prefix}.pose"))
        .capacity(256)
        .overflow(Overflow::BackPressure)
        // Publish times, for `shmbus hz` to show latency.
        .timestamps(true);
    let status = Topic::builder(&format!("{prefix}.status"))
        .capacity(64)
        .overflow(Overflow::BackPressure)
        .slot_size(256);
    (pose, status)
}

fn status_of(seq: u64) -> Status {
    Status {
        seq,
        mode: if seq % 2 == 0 {
            "auto".into()
        } else {
            "manual".into()
        },
        warnings: vec![format!("w{}", seq % 7)],
    }
}

fn publish(prefix: &str, count: u64) -> Result<(), Box<dyn std::error::Error>> {
    let (pose_topic, status_topic) = topics(prefix);
    let mut poses = pose_topic.publisher::<Pose>()?;
    let mut status = status_topic.serde_publisher::<Status>()?;
    let start = Instant::now();
    for seq in 0..count {
        // Loan a slot, write the pose in place, publish: zero copies.
        let mut loan = poses.loan()?;
        *loan = Pose {
            seq,
            x: seq as f64,
            y: -(seq as f64),
            theta: (seq % 360) as f64,
        };
        loan.publish().map_err(|e| e.to_string())?;
        if seq % 10 == 0 {
            status.send(status_of(seq)).map_err(|e| e.to_string())?;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "publisher: {count} poses in {secs:.3} s ({:.2} M msg/s)",
        count as f64 / secs / 1e6
    );
    Ok(())
}

fn subscribe(prefix: &str, count: u64) -> Result<(), Box<dyn std::error::Error>> {
    let (pose_topic, status_topic) = topics(prefix);
    let poses = pose_topic.subscriber::<Pose>()?;
    let status = status_topic.serde_subscriber::<Status>()?;
    println!("subscriber: ready");
    let (mut next, mut statuses) = (0u64, 0u64);
    while next < count {
        match poses.recv_timeout(Duration::from_secs(10)) {
            Ok(p) => {
                // `p` reads the publisher's slot in place.
                if p.seq != next || p.x != next as f64 || p.y != -(next as f64) {
                    return Err(format!("pose {next} arrived damaged: {:?}", *p).into());
                }
                next += 1;
            }
            Err(RecvError::Disconnected) => {
                return Err(format!("publisher left after {next} poses").into())
            }
            Err(e) => return Err(e.into()),
        }
        while let Ok(s) = status.try_recv() {
            if s != status_of(s.seq) {
                return Err(format!("status {} arrived damaged", s.seq).into());
            }
            statuses += 1;
        }
    }
    println!("subscriber: {next} poses and {statuses} status reports, all intact");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let prefix = args
        .topic
        .clone()
        .unwrap_or_else(|| format!("example.pubsub.{}", std::process::id()));
    let result = match args.role {
        Some(Role::Publish) => publish(&prefix, args.count),
        Some(Role::Subscribe) => subscribe(&prefix, args.count),
        None => run_both(&prefix, args.count),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the subscriber as a second process, waits until it is ready, then publishes.
fn run_both(prefix: &str, count: u64) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "subscribe",
            "--topic",
            prefix,
            "--count",
            &count.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    lines.read_line(&mut line)?;
    print!("{line}");
    if line.trim() != "subscriber: ready" {
        let _ = child.kill();
        let _ = child.wait();
        return Err("the subscriber did not start".into());
    }
    let published = publish(prefix, count);
    for line in lines.lines() {
        println!("{}", line?);
    }
    let status = child.wait()?;
    published?;
    if !status.success() {
        return Err(format!("the subscriber failed: {status}").into());
    }
    Ok(())
}
