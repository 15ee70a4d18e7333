//! `shmbus-bridge`: carries chosen shmbus topics between machines over Zenoh.
//!
//! ```text
//! shmbus-bridge [--config FILE] [--listen ENDPOINT]... [--connect ENDPOINT]...
//!               [--export PATTERN]... [--import PATTERN]... [--max-rate HZ] [--prefix KEY]
//!               [--scouting]
//! ```
//!
//! Flags add to the file (lists are extended; `--prefix` and `--scouting` replace). It runs until
//! SIGINT or SIGTERM, then leaves every local topic and prints its counters.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use shmbus_zenoh::{Bridge, Config, Rule};

#[derive(Parser, Debug)]
#[command(
    name = "shmbus-bridge",
    about = "Carry chosen shmbus topics between machines over Zenoh"
)]
struct Args {
    /// A TOML configuration file (see the shmbus guide, "Across machines").
    #[arg(long)]
    config: Option<PathBuf>,
    /// A Zenoh endpoint to listen on, e.g. tcp/10.0.0.1:7447 (repeatable).
    #[arg(long)]
    listen: Vec<String>,
    /// A Zenoh endpoint to connect to, e.g. tcp/10.0.0.2:7447 (repeatable).
    #[arg(long)]
    connect: Vec<String>,
    /// Local topics to carry out: a name or a glob (`*`, `?`) (repeatable).
    #[arg(long)]
    export: Vec<String>,
    /// Remote topics to bring in: a name or a glob (repeatable).
    #[arg(long)]
    import: Vec<String>,
    /// Most messages a second per exported topic, for the exports given as flags.
    #[arg(long)]
    max_rate: Option<f64>,
    /// The first chunk of every Zenoh key (default `shmbus`).
    #[arg(long)]
    prefix: Option<String>,
    /// Turn on Zenoh's multicast scouting (off by default: endpoints are explicit).
    #[arg(long)]
    scouting: bool,
}

fn config(a: Args) -> Result<Config, String> {
    let mut c = match &a.config {
        Some(p) => Config::from_file(p).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    c.listen.extend(a.listen);
    c.connect.extend(a.connect);
    c.export.extend(a.export.into_iter().map(|topics| Rule {
        topics,
        max_rate_hz: a.max_rate,
    }));
    c.import.extend(a.import.into_iter().map(|topics| Rule {
        topics,
        max_rate_hz: None,
    }));
    if let Some(p) = a.prefix {
        c.key_prefix = p;
    }
    c.scouting |= a.scouting;
    c.validate().map_err(|e| e.to_string())?;
    Ok(c)
}

fn main() -> ExitCode {
    tracing_subscriber_init();
    let c = match config(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shmbus-bridge: {e}");
            return ExitCode::from(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("shmbus-bridge: cannot handle signal {sig}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let bridge = match Bridge::start(c) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("shmbus-bridge: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("bridge ready zid={}", bridge.zid());
    let stats = bridge.stats();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    bridge.stop();
    println!(
        "bridge stopped exported={} imported={} refused={} dropped={} lagged={}",
        stats.exported.load(Ordering::Relaxed),
        stats.imported.load(Ordering::Relaxed),
        stats.refused.load(Ordering::Relaxed),
        stats.dropped.load(Ordering::Relaxed),
        stats.lagged.load(Ordering::Relaxed),
    );
    ExitCode::SUCCESS
}

/// Logs to stderr, filtered by `RUST_LOG` (default: warnings and errors).
fn tracing_subscriber_init() {
    zenoh::init_log_from_env_or("warn");
}
