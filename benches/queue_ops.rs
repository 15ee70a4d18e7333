//! `queue_ops`: one process putting and taking work-queue items, with nobody to wait for or
//! contend with: the instructions of the queue's own path, for callgrind (which counts them
//! repeatably where the `compare` harness's timings move with the host).
//!
//! ```text
//! RUSTFLAGS="--cfg rustix_use_libc" CARGO_TARGET_DIR=target/cg \
//!     cargo build --release --bin queue_ops
//! valgrind --tool=callgrind --toggle-collect='queue_ops::put_*' --toggle-collect='queue_ops::get_*' \
//!     target/cg/release/queue_ops 64B 20000
//! callgrind_annotate --inclusive=yes callgrind.out.<pid>
//! ```
//!
//! (`rustix_use_libc`: rustix's own vDSO lookup reads memory valgrind 3.19 does not map, and
//! the process dies at its first clock read; through libc it runs. Each function's inclusive
//! count divided by N is its cost per item (for `4MiB`, less `write_all` and `read_all`: the
//! data's). System calls are not instructions: callgrind does not show that the queue's robust
//! lock makes a `gettid` call on every hold; `strace -c -f` does.)
//!
//! - `64B`: `Queue<[u64; 8]>::put`, then `get` (one lock hold each), N times.
//! - `4MiB`: `ArrayQueue` loan, write every byte in place, commit; receive, read every byte in
//!   place, acknowledge (two lock holds on each side), N times.
//!
//! Prints the mean time per item (both sides, one CPU; for orientation only).

use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

use shmbus::QueueBuilder;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Bytes of an array item.
const ARRAY_BYTES: usize = 4 << 20;

fn name(kind: &str) -> String {
    format!("queue-ops.{}.{kind}", std::process::id())
}

/// `n` puts and gets of 64-byte items.
#[inline(never)]
fn ops_64b(n: u64) -> Res<()> {
    let q = QueueBuilder::new(&name("64B"))
        .capacity(256)
        .open::<[u64; 8]>()?;
    for i in 0..n {
        put_64b(&q, i)?;
        let got = get_64b(&q)?;
        if got[0] != i {
            return Err(format!("expected item {i}, got {}", got[0]).into());
        }
    }
    Ok(())
}

#[inline(never)]
fn put_64b(q: &shmbus::Queue<[u64; 8]>, i: u64) -> Res<()> {
    q.put(std::array::from_fn(|k| i ^ k as u64))
        .map_err(|e| e.to_string().into())
}

#[inline(never)]
fn get_64b(q: &shmbus::Queue<[u64; 8]>) -> Res<[u64; 8]> {
    Ok(black_box(q.try_get()?))
}

/// `n` loans, writes and commits of 4 MiB arrays, each received, read and acknowledged.
#[inline(never)]
fn ops_arrays(n: u64) -> Res<()> {
    let q = QueueBuilder::new(&name("4MiB"))
        .capacity(8)
        .array_bytes(ARRAY_BYTES)
        .acknowledged(3)
        .open_arrays::<u64>()?;
    for i in 0..n {
        put_array(&q, i)?;
        get_array(&q, i)?;
    }
    Ok(())
}

#[inline(never)]
fn put_array(q: &shmbus::ArrayQueue<u64>, i: u64) -> Res<()> {
    let mut loan = q
        .try_loan::<u64>(&[ARRAY_BYTES / 8])
        .map_err(|e| e.to_string())?;
    let (data, meta) = loan.parts_mut();
    write_all(data, i);
    *meta = i;
    loan.commit().map_err(|e| e.to_string().into())
}

#[inline(never)]
fn get_array(q: &shmbus::ArrayQueue<u64>, i: u64) -> Res<()> {
    let d = q.try_receive()?;
    let data = d.as_slice::<u64>()?;
    black_box(read_all(data));
    let last = data.len() as u64 - 1;
    if *d.meta() != i || data.first() != Some(&i) || data.last() != Some(&(i ^ last)) {
        return Err(format!("array {i} damaged").into());
    }
    d.ack()?;
    Ok(())
}

/// Writes every word (the time of the data, apart from the queue's).
#[inline(never)]
fn write_all(data: &mut [u64], i: u64) {
    for (k, w) in data.iter_mut().enumerate() {
        *w = i ^ k as u64;
    }
}

/// Reads every word.
#[inline(never)]
fn read_all(data: &[u64]) -> u64 {
    data.iter().fold(0u64, |a, &b| a.wrapping_add(b))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (kind, n) = match args.as_slice() {
        [k, n] => match n.parse::<u64>() {
            Ok(n) => (k.as_str(), n),
            Err(e) => {
                eprintln!("queue_ops: N: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => {
            eprintln!("usage: queue_ops 64B|4MiB N");
            return ExitCode::FAILURE;
        }
    };
    let start = Instant::now();
    let r = match kind {
        "64B" => ops_64b(n),
        "4MiB" => ops_arrays(n),
        _ => Err(format!("unknown kind {kind:?} (64B or 4MiB)").into()),
    };
    match r {
        Ok(()) => {
            let per = start.elapsed().as_nanos() as f64 / n.max(1) as f64;
            println!("{kind}: {n} items put and taken in one process, {per:.0} ns per item");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("queue_ops: {e}");
            ExitCode::FAILURE
        }
    }
}
