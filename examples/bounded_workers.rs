//! Workers bounded by a named semaphore: six worker processes, at most two working at once.
//!
//! `cargo run --example bounded_workers` starts the workers; each waits for a permit, counts
//! itself in a shared value of active workers (recording the most ever seen), works a little,
//! counts itself out and gives the permit back. The parent checks that never more than two
//! worked at once.

use std::process::ExitCode;
use std::time::Duration;

use shmbus::{Semaphore, Value};

#[path = "common/procs.rs"]
mod procs;

const PERMITS: u32 = 2;

/// Active workers now (low 32 bits) and the most ever (high 32 bits).
fn run(args: &[&str]) -> Result<(), Box<dyn std::error::Error>> {
    match args {
        ["worker", name] => {
            let permits = Semaphore::open(&format!("{name}.permits"))?;
            let active = Value::<u64>::open(&format!("{name}.active"))?;
            if !permits.wait_timeout(Duration::from_secs(10)) {
                return Err("no permit within 10 s".into());
            }
            active.update(|v| {
                let now = (v & 0xffff_ffff) + 1;
                let most = (v >> 32).max(now);
                (most << 32) | now
            })?;
            std::thread::sleep(Duration::from_millis(20));
            active.update(|v| v - 1)?;
            permits.post()?;
            Ok(())
        }
        _ => {
            let name = procs::unique("bounded");
            let _permits = Semaphore::open_or_create(&format!("{name}.permits"), PERMITS)?;
            let active = Value::open_or_create(&format!("{name}.active"), 0u64)?;
            let children = (0..6)
                .map(|_| procs::spawn(&["worker", &name]))
                .collect::<Result<Vec<_>, _>>()?;
            procs::wait_all(children)?;
            let v = active.load()?;
            let (now, most) = (v & 0xffff_ffff, v >> 32);
            println!("at most {most} workers at once ({PERMITS} permits)");
            if now != 0 || most == 0 || most > u64::from(PERMITS) {
                return Err(format!("active {now}, most {most}").into());
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bounded_workers: {e}");
            ExitCode::FAILURE
        }
    }
}

example_tests!();
