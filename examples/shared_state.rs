//! Shared state updated by several processes (the Python notes' `Manager().dict()`, without a
//! server process): a named serde state with a version, read as consistent snapshots.
//!
//! `cargo run --example shared_state` starts three processes that each register themselves and
//! record 100 readings in the shared state, while the parent watches versions go by with
//! `wait_changed` and finally checks every update arrived.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shmbus::Shared;

#[path = "common/procs.rs"]
mod procs;

#[derive(Serialize, Deserialize, Debug, Default)]
struct Plant {
    readings: BTreeMap<String, u64>,
    last: Option<String>,
}

fn run(args: &[&str]) -> Result<(), Box<dyn std::error::Error>> {
    match args {
        ["sensor", name, id] => {
            let plant = Shared::<Plant>::open(name)?;
            for _ in 0..100 {
                plant.update(|p| {
                    *p.readings.entry(format!("sensor-{id}")).or_default() += 1;
                    p.last = Some(format!("sensor-{id}"));
                })?;
            }
            Ok(())
        }
        _ => {
            let name = procs::unique("shared");
            let plant = Shared::open_or_create(&name, 4096, &Plant::default())?;
            let sensors = (0..3)
                .map(|i| procs::spawn(&["sensor", &name, &i.to_string()]))
                .collect::<Result<Vec<_>, _>>()?;
            let mut seen = 0;
            let mut version = plant.version();
            while version < 300 {
                version = plant.wait_changed(version, Duration::from_secs(10))?;
                seen += 1;
            }
            procs::wait_all(sensors)?;
            let (p, v) = plant.load()?;
            println!("version {v} after {seen} wake-ups: {:?}", p.readings);
            if p.readings.values().sum::<u64>() != 300 || v != 300 {
                return Err("updates were lost".into());
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
            eprintln!("shared_state: {e}");
            ExitCode::FAILURE
        }
    }
}

example_tests!();
