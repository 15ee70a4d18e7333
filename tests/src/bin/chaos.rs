//! The chaos harness: real processes in every role of shmbus, SIGKILLed and paused
//! (SIGSTOP/SIGCONT) on a seeded schedule while the survivors check everything they receive.
//!
//! ```text
//! cargo run --release --bin chaos -- --kills N [--seed S] [--json PATH] [--duration SECS]
//!                                    [--python PATH]
//! ```
//!
//! Roles (each a process, replaced as soon as it is killed): topic publishers and subscribers
//! of plain-old-data, serde and array topics under both overflow policies; work-queue
//! producers and consumers in both delivery modes (copying and in-place consumers); holders
//! of a robust named mutex keeping two counters equal; writers of an atomic `Value`, of a
//! locked `Value` and of a `Shared` state; attachers of a persistent named array; and, with
//! `--python`, Python processes using the bindings (subscribers, a publisher, a queue
//! consumer, a lock holder and an adder) on the same objects.
//!
//! At the end it stops every process in order (publishers, then subscribers, which drain;
//! queues are closed and drained), checks every account, runs `gc` over the run's names, and
//! prints and writes (`--json`) the figures: `kills`, `stops`, `hangs`, `lost`, `duplicated`,
//! `corrupted`, `leaked_segments`, `owner_died_recovered`, `redelivered`, and `python` (what
//! ran, or why Python was skipped). It exits with status 1 if hangs, lost, duplicated,
//! corrupted or leaked_segments is not zero.
//!
//! The same seed (with the same other arguments) replays the same schedule of kills and
//! pauses; the interleaving of the processes is the machine's.
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[path = "chaos/account.rs"]
mod account;
#[path = "chaos/conductor.rs"]
mod conductor;
#[path = "chaos/schedule.rs"]
mod schedule;
#[path = "chaos/workers.rs"]
mod workers;

#[derive(Parser)]
#[command(about = "kill and pause every kind of shmbus process at random; check what survives")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// SIGKILLs to make (each process killed is replaced at once).
    #[arg(long, default_value_t = 100)]
    kills: u64,
    /// Seed of the schedule (default: from the clock; printed, for replay).
    #[arg(long)]
    seed: Option<u64>,
    /// Also write the JSON figures to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seconds over which the kills and pauses are spread (default: 50 ms per kill, at least
    /// 10 s).
    #[arg(long)]
    duration: Option<f64>,
    /// A Python interpreter with the `shmbus` package installed: Python workers join in.
    #[arg(long)]
    python: Option<PathBuf>,
    #[command(subcommand)]
    worker: Option<Sub>,
}

#[derive(Subcommand)]
enum Sub {
    /// A worker process (started by the conductor).
    #[command(hide = true)]
    Worker {
        #[command(subcommand)]
        role: workers::WorkerRole,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Sub::Worker { role }) = &cli.worker {
        return match workers::run(role) {
            Ok(()) => ExitCode::SUCCESS,
            Err(workers::Fail(code, msg)) => {
                println!("error code={code} msg={msg}");
                ExitCode::from(2)
            }
        };
    }
    let seed = cli.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        (t.as_nanos() as u64 ^ u64::from(std::process::id())) % 1_000_000_007
    });
    let duration = match cli.duration {
        Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s),
        Some(s) => {
            eprintln!("chaos: --duration must be a positive number of seconds, not {s}");
            return ExitCode::from(2);
        }
        None => Duration::from_millis(cli.kills.saturating_mul(50).max(10_000)),
    };
    let opts = conductor::Options {
        kills: cli.kills,
        seed,
        json: cli.json,
        duration,
        python: cli.python,
    };
    let mut run = match conductor::Run::new(opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chaos: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = run.run() {
        eprintln!("chaos: the run failed: {e}");
        return ExitCode::from(2);
    }
    if run.report() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
