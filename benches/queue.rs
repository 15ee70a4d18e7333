//! Work-queue throughput across processes: one producer, 1, 2 and 4 consumer processes, 64-byte
//! items, both delivery modes.
//!
//! `cargo bench -p shmbus-benches --bench queue` (`-- --quick` for a short run). The consumers
//! are this binary again (`queue __consume <name> <mode>`). Each run puts `N` items as fast as
//! the queue takes them, closes the queue, and stops the clock when every consumer has drained
//! it. The floor to compare with is the compare harness's `throughput_64B` floor (a bare SPSC
//! ring of 64-byte slots), e.g. `cargo run --release -p shmbus-benches --bin compare --
//! --quick --scenario throughput_64B`.

use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use shmbus::{GetError, QueueBuilder, Value};

type Item = [u64; 8];

fn consume(name: &str, acked: bool) -> Result<(), Box<dyn std::error::Error>> {
    let b = QueueBuilder::new(name).existing();
    let q = if acked {
        b.acknowledged(3)
    } else {
        b.at_most_once()
    }
    .open::<Item>()?;
    Value::<u32>::open(&format!("{name}.ready"))?.fetch_add(1);
    let mut n = 0u64;
    loop {
        let r = if acked {
            q.receive().and_then(|d| {
                std::hint::black_box(d[0]);
                d.ack()
            })
        } else {
            q.get().map(|v| {
                std::hint::black_box(v);
            })
        };
        match r {
            Ok(()) => n += 1,
            Err(GetError::Closed) => break,
            Err(e) => return Err(e.into()),
        }
    }
    std::hint::black_box(n);
    Ok(())
}

fn run(consumers: usize, acked: bool, n: u64) -> Result<f64, Box<dyn std::error::Error>> {
    let name = format!("bench-queue-{}-{consumers}-{acked}", std::process::id());
    let b = QueueBuilder::new(&name).capacity(256);
    let q = if acked {
        b.acknowledged(3)
    } else {
        b.at_most_once()
    }
    .open::<Item>()?;
    let ready = Value::open_or_create(&format!("{name}.ready"), 0u32)?;
    let mode = if acked { "acked" } else { "once" };
    let exe = std::env::current_exe()?;
    let children: Vec<Child> = (0..consumers)
        .map(|_| Command::new(&exe).args(["__consume", &name, mode]).spawn())
        .collect::<Result<_, _>>()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready.load()? < consumers as u32 {
        if Instant::now() > deadline {
            return Err("consumers did not start".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = Instant::now();
    for i in 0..n {
        q.put([i; 8]).map_err(|e| e.to_string())?;
    }
    q.close()?;
    for mut c in children {
        if !c.wait()?.success() {
            return Err("a consumer failed".into());
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let st = q.stats();
    if st.done != n {
        return Err(format!("{} of {n} items done", st.done).into());
    }
    Ok(n as f64 / secs / 1e6)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, name, mode] = args.as_slice() {
        if cmd == "__consume" {
            return match consume(name, mode == "acked") {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("consumer: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    }
    let quick = args.iter().any(|a| a == "--quick");
    let (n, rounds) = if quick { (100_000, 3) } else { (500_000, 7) };
    println!("queue throughput, 64 B items, 1 producer (Mitems/s; median of {rounds} runs)");
    println!(
        "{:<14} {:>10} {:>10} {:>10}",
        "mode", "1 cons", "2 cons", "4 cons"
    );
    for acked in [false, true] {
        let mut row = Vec::new();
        for consumers in [1, 2, 4] {
            let mut rates = Vec::new();
            for _ in 0..rounds {
                match run(consumers, acked, n) {
                    Ok(r) => rates.push(r),
                    Err(e) => {
                        eprintln!("queue bench: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            rates.sort_by(f64::total_cmp);
            row.push(rates[rates.len() / 2]);
        }
        let mode = if acked {
            "acknowledged"
        } else {
            "at-most-once"
        };
        println!(
            "{mode:<14} {:>10.3} {:>10.3} {:>10.3}",
            row[0], row[1], row[2]
        );
    }
    ExitCode::SUCCESS
}
