//! A pool of worker processes taking jobs from a work queue while sharing one large read-only
//! array by name: the Python notes' `multiprocessing.Pool` over a big `numpy` array, without
//! pickling the array into every worker.
//!
//! `cargo run --example job_pool` fills a named array of 1 M `f64`s, puts one job per chunk on an
//! acknowledged queue, and starts four workers. Each attaches the array read-only (no copy),
//! sums the chunks it takes, and puts the partial sums on a results queue; the parent adds them
//! up and checks the total.

use std::process::ExitCode;
use std::time::Duration;

use shmbus::{GetError, PutFailure, QueueBuilder, SharedArray};

#[path = "common/procs.rs"]
mod procs;

const LEN: usize = 1 << 20;
const CHUNK: usize = 1 << 14;

/// A job: sum `[start, start + len)`.
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Job {
    start: u64,
    len: u64,
}

/// A partial result.
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Partial {
    job: u64,
    sum: f64,
}

fn run(args: &[&str]) -> Result<(), Box<dyn std::error::Error>> {
    match args {
        ["worker", name] => {
            let data = SharedArray::<f64>::attach_read_only(&format!("{name}.data"))?;
            let jobs = QueueBuilder::new(&format!("{name}.jobs"))
                .existing()
                .open::<Job>()?;
            let results = QueueBuilder::new(&format!("{name}.results"))
                .existing()
                .open::<Partial>()?;
            let mut buf = vec![0.0; CHUNK];
            loop {
                let job = match jobs.receive_timeout(Duration::from_secs(10)) {
                    Ok(j) => j,
                    Err(GetError::Closed) => return Ok(()),
                    Err(e) => return Err(e.into()),
                };
                let n = job.len as usize;
                data.read_at(job.start as usize, &mut buf[..n])?;
                let sum = buf[..n].iter().sum();
                results
                    .put(Partial {
                        job: job.start,
                        sum,
                    })
                    .map_err(|e| e.to_string())?;
                job.ack()?; // done: not delivered again if this worker dies now
            }
        }
        _ => {
            let name = procs::unique("jobpool");
            let data = SharedArray::<f64>::options()
                .scoped()
                .create(&format!("{name}.data"), &[LEN])?;
            let values: Vec<f64> = (0..LEN).map(|i| (i % 1000) as f64).collect();
            data.write_at(0, &values)?;
            let jobs = QueueBuilder::new(&format!("{name}.jobs"))
                .capacity(16)
                .acknowledged(3)
                .open::<Job>()?;
            let results = QueueBuilder::new(&format!("{name}.results"))
                .capacity(64)
                .open::<Partial>()?;
            let workers = (0..4)
                .map(|_| procs::spawn(&["worker", &name]))
                .collect::<Result<Vec<_>, _>>()?;
            let n_jobs = LEN / CHUNK;
            let mut total = 0.0;
            let mut got = 0;
            for j in 0..n_jobs {
                let job = Job {
                    start: (j * CHUNK) as u64,
                    len: CHUNK as u64,
                };
                // Collect results while putting, so that neither queue fills up for good.
                let mut job = job;
                while let Err(e) = jobs.put_timeout(job, Duration::from_millis(1)) {
                    if !matches!(e.reason(), PutFailure::Timeout) {
                        return Err(e.to_string().into());
                    }
                    job = e.into_inner();
                    if let Ok(p) = results.try_get() {
                        total += p.sum;
                        got += 1;
                    }
                }
            }
            jobs.close()?;
            while got < n_jobs {
                total += results.get_timeout(Duration::from_secs(10))?.sum;
                got += 1;
            }
            procs::wait_all(workers)?;
            let expect: f64 = values.iter().sum();
            println!("{n_jobs} jobs over 4 workers: total {total} (expected {expect})");
            if total != expect {
                return Err("wrong total".into());
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
            eprintln!("job_pool: {e}");
            ExitCode::FAILURE
        }
    }
}

example_tests!();
