//! Several processes increment one counter, each under a named lock (`multiprocessing.Value`
//! with its lock, in the Python notes), and the same with an atomic shared value that needs no
//! lock at all.
//!
//! `cargo run --example counter` starts four worker processes, each adding 1 000 times to both
//! counters, and checks both hold 4 000.

use std::process::ExitCode;

use shmbus::{Mutex, Value};

#[path = "common/procs.rs"]
mod procs;

const WORKERS: u64 = 4;
const ADDS: u64 = 1000;

fn run(args: &[&str]) -> Result<(), Box<dyn std::error::Error>> {
    match args {
        ["worker", name] => {
            let locked = Mutex::<u64>::open(&format!("{name}.locked"))?;
            let atomic = Value::<u64>::open(&format!("{name}.atomic"))?;
            for _ in 0..ADDS {
                let mut n = locked.lock()?;
                if n.owner_died() {
                    // A worker died holding the lock; the count is still whole (one store).
                    n.mark_consistent();
                }
                *n += 1;
                drop(n);
                atomic.fetch_add(1u64);
            }
            Ok(())
        }
        _ => {
            let name = procs::unique("counter");
            let locked = Mutex::open_or_create(&format!("{name}.locked"), 0u64)?;
            let atomic = Value::open_or_create(&format!("{name}.atomic"), 0u64)?;
            let children = (0..WORKERS)
                .map(|_| procs::spawn(&["worker", &name]))
                .collect::<Result<Vec<_>, _>>()?;
            procs::wait_all(children)?;
            let (l, a) = (*locked.lock()?, atomic.load()?);
            println!("locked counter: {l}, atomic counter: {a}");
            if l != WORKERS * ADDS || a != WORKERS * ADDS {
                return Err(format!("expected {}", WORKERS * ADDS).into());
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
            eprintln!("counter: {e}");
            ExitCode::FAILURE
        }
    }
}

example_tests!();
