//! An event starts the workers and another stops them (the "control signal" of the Python
//! notes).
//!
//! `cargo run --example start_stop` starts three workers that wait for `go`, then count in a
//! shared value until `stop` is set; the parent sets `go`, lets them run, sets `stop`, and
//! checks that every worker worked and that nothing was counted before `go`.

use std::process::ExitCode;
use std::time::Duration;

use shmbus::{Event, EventMode, Value};

#[path = "common/procs.rs"]
mod procs;

fn run(args: &[&str]) -> Result<(), Box<dyn std::error::Error>> {
    match args {
        ["worker", name, i] => {
            let go = Event::open(&format!("{name}.go"))?;
            let stop = Event::open(&format!("{name}.stop"))?;
            let ready = Value::<u32>::open(&format!("{name}.ready"))?;
            let work = Value::<u64>::open(&format!("{name}.work{i}"))?;
            ready.fetch_add(1);
            if !go.wait_timeout(Duration::from_secs(10)) {
                return Err("never told to go".into());
            }
            while !stop.is_set() {
                work.fetch_add(1);
                std::thread::sleep(Duration::from_micros(100));
            }
            Ok(())
        }
        _ => {
            let name = procs::unique("startstop");
            let go = Event::open_or_create(&format!("{name}.go"), EventMode::ManualReset, false)?;
            let stop =
                Event::open_or_create(&format!("{name}.stop"), EventMode::ManualReset, false)?;
            let ready = Value::open_or_create(&format!("{name}.ready"), 0u32)?;
            let work: Vec<Value<u64>> = (0..3)
                .map(|i| Value::open_or_create(&format!("{name}.work{i}"), 0u64))
                .collect::<Result<_, _>>()?;
            let children = (0..3)
                .map(|i| procs::spawn(&["worker", &name, &i.to_string()]))
                .collect::<Result<Vec<_>, _>>()?;
            while ready.load()? < 3 {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(20));
            let before: u64 = work.iter().map(|w| w.load().unwrap_or(0)).sum();
            go.set();
            std::thread::sleep(Duration::from_millis(50));
            stop.set();
            procs::wait_all(children)?;
            let counts: Vec<u64> = work.iter().map(|w| w.load().unwrap_or(0)).collect();
            println!("work before go: {before}; after: {counts:?}");
            if before != 0 || counts.contains(&0) {
                return Err("the events did not start and stop the workers".into());
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
            eprintln!("start_stop: {e}");
            ExitCode::FAILURE
        }
    }
}

example_tests!();
