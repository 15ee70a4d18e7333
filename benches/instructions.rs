//! The hot paths, one kind of message at a time, for instruction counts under callgrind.
//!
//! `instructions <scenario> <phase> <iters>` opens a topic (or a queue) in this one process,
//! warms it up (publishes and receives `WARM` messages one at a time, so that an array pool has
//! grown to the blocks it needs), then either publishes `iters` messages (`publish`), or publishes
//! them and then receives them all (`both`), or publishes and receives one at a time
//! (`pairs`). Run under `valgrind --tool=callgrind` at two values of `iters`, the difference
//! divided by the difference of `iters` is the cost of one operation, without the setup:
//! `scripts/instruction-counts` does that and prints the table. Scenarios: `pod8` (a `u64`, a held
//! sample), `pod8_copy` (the same copied out, `try_recv_copy`), `pod8_many` (copied out in batches
//! of up to 64, `try_recv_many`), `pod64_many` (64-byte messages, too big for the ring entry's
//! words, copied out in batches), `pod64_send_many` (64-byte messages written 32 at a time in place
//! with `send_many_with` into a ring of 256 that overwrites, received in batches with
//! `try_recv_many`, as `throughput_64B`'s batch row does: `publish` and `pairs` only),
//! `pod8_send_many` (sent 8 at a time with `send_many` into a ring of 256 that overwrites: the
//! `publish` phase, every publish evicting one), `serde` (a small struct with a string and a
//! vector), `array` (a 64-byte array through an array topic's descriptor, in a ring of 8: `pairs`
//! only; `array_long`: in a ring of 4096), `queue64` (a 64-byte `Queue` item: `put`, then `get`;
//! valgrind 3.19 runs it only in a build with `--cfg rustix_use_libc`: rustix's own vDSO lookup for
//! the queue's clock reads memory valgrind does not map; `benches/queue_ops.rs` counts the queue).
//!
//! Instructions do not move with the noise of a shared machine, so they judge a change to the
//! hot path where timings cannot; they do not show cache misses between processes (the
//! `compare` harness measures those).

use std::process::ExitCode;

use serde::{Deserialize, Serialize};
use shmbus::{Overflow, QueueBuilder, Topic};

#[derive(Serialize, Deserialize)]
struct Status {
    seq: u64,
    mode: String,
    values: Vec<f32>,
}

/// What a run measures after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `n` publishes, nothing received.
    Publish,
    /// `n` publishes, then `n` receives (up to `n` messages in flight).
    Both,
    /// `n` times a publish and a receive (one message in flight).
    Pairs,
}

/// Messages published and received before the measured ones.
const WARM: u64 = 2048;

/// Publishes `n` messages with `publish(i)`, then (if `receive`) receives `n` with `recv()`, after
/// a warm-up of `WARM` of each.
fn rounds(
    n: u64,
    phase: Phase,
    mut publish: impl FnMut(u64) -> Result<(), Box<dyn std::error::Error>>,
    mut recv: impl FnMut() -> Result<u64, Box<dyn std::error::Error>>,
) -> Result<u64, Box<dyn std::error::Error>> {
    let mut sum = 0u64;
    for (count, phase) in [(WARM, Phase::Pairs), (n, phase)] {
        if phase == Phase::Pairs {
            for i in 0..count {
                publish(i)?;
                sum = sum.wrapping_add(recv()?);
            }
            continue;
        }
        for i in 0..count {
            publish(i)?;
        }
        if phase == Phase::Both {
            for _ in 0..count {
                sum = sum.wrapping_add(recv()?);
            }
        }
    }
    Ok(sum)
}

fn run(scenario: &str, phase: Phase, n: u64) -> Result<u64, Box<dyn std::error::Error>> {
    let name = format!("bench-instr-{scenario}-{}", std::process::id());
    // Room for every message: nothing is overwritten or waited for.
    let topic = Topic::builder(&name)
        .capacity(4096)
        .overflow(Overflow::BackPressure);
    match scenario {
        "pod8" => {
            let sub = topic.subscriber::<u64>()?;
            let mut publisher = topic.publisher::<u64>()?;
            rounds(
                n,
                phase,
                |i| Ok(publisher.send(i).map(|_| ()).map_err(|e| e.to_string())?),
                || Ok(*sub.try_recv()?),
            )
        }
        "pod8_copy" => {
            let sub = topic.subscriber::<u64>()?;
            let mut publisher = topic.publisher::<u64>()?;
            rounds(
                n,
                phase,
                |i| Ok(publisher.send(i).map(|_| ()).map_err(|e| e.to_string())?),
                || Ok(sub.try_recv_copy()?),
            )
        }
        "pod8_many" => {
            // Receives in batches of up to 64 (`try_recv_many`), handed out one by one: in the
            // `both` phase the cost per message of a batched receive.
            let sub = topic.subscriber::<u64>()?;
            let mut publisher = topic.publisher::<u64>()?;
            let mut batch = std::collections::VecDeque::new();
            let mut buf = Vec::with_capacity(64);
            rounds(
                n,
                phase,
                |i| Ok(publisher.send(i).map(|_| ()).map_err(|e| e.to_string())?),
                || {
                    if batch.is_empty() {
                        buf.clear();
                        sub.try_recv_many(&mut buf, 64)?;
                        batch.extend(buf.drain(..));
                    }
                    Ok(batch.pop_front().ok_or("a batch of at least one")?)
                },
            )
        }
        "pod64_many" => {
            // 64-byte messages (too big for the entry's words: copied from their slots),
            // received in batches of up to 64 (`try_recv_many`), as `throughput_64B` does.
            let sub = topic.subscriber::<[u64; 8]>()?;
            let mut publisher = topic.publisher::<[u64; 8]>()?;
            let mut batch = std::collections::VecDeque::new();
            let mut buf = Vec::with_capacity(64);
            rounds(
                n,
                phase,
                |i| {
                    Ok(publisher
                        .send([i; 8])
                        .map(|_| ())
                        .map_err(|e| e.to_string())?)
                },
                || {
                    if batch.is_empty() {
                        buf.clear();
                        sub.try_recv_many(&mut buf, 64)?;
                        batch.extend(buf.drain(..));
                    }
                    Ok(batch.pop_front().ok_or("a batch of at least one")?[0])
                },
            )
        }
        "pod8_send_many" => {
            // Sent 8 at a time (`send_many`) into a ring of 256 that overwrites, so that (after
            // the warm-up) every publish evicts a message, as a stream does: the `publish`
            // phase only (a receiver of `both` would lag).
            let topic = Topic::builder(&name).capacity(256);
            let sub = topic.subscriber::<u64>()?;
            let mut publisher = topic.publisher::<u64>()?;
            let mut buf = Vec::with_capacity(8);
            rounds(
                n,
                phase,
                |i| {
                    buf.push(i);
                    if buf.len() == 8 {
                        publisher.send_many(&buf).map_err(|e| e.to_string())?;
                        buf.clear();
                    }
                    Ok(())
                },
                || Ok(sub.try_recv_copy().unwrap_or(0)),
            )
        }
        "pod64_send_many" => {
            // What `throughput_64B`'s batch row does, in one process: 64-byte messages sent 32 at
            // a time (`send_many`) into a ring of 256 that overwrites, so that (after the
            // warm-up) every publish evicts a message and its slot comes back as a loan, as in a
            // stream. `pairs`: each full batch is then drained with `try_recv_many` (up to 64);
            // `publish`: nothing is received (`both` would lag).
            let topic = Topic::builder(&name).capacity(256);
            let sub = topic.subscriber::<[u64; 8]>()?;
            let mut publisher = topic.publisher::<[u64; 8]>()?;
            let sent = std::cell::Cell::new(0usize);
            let mut got = Vec::with_capacity(64);
            let mut next = 0;
            rounds(
                n,
                phase,
                |i| {
                    // Every 32nd call publishes the 32 messages up to it, written in place.
                    if i % 32 == 31 {
                        let base = i - 31;
                        publisher
                            .send_many_with(32, |k, m| *m = [base + k as u64; 8])
                            .map_err(|e| e.to_string())?;
                        sent.set(sent.get() + 32);
                    }
                    Ok(())
                },
                || {
                    // Receives only what whole batches sent: no empty polls counted.
                    if sent.get() == 0 {
                        return Ok(0);
                    }
                    if next == got.len() {
                        got.clear();
                        next = 0;
                        sub.try_recv_many(&mut got, 64)?;
                    }
                    sent.set(sent.get() - 1);
                    next += 1;
                    Ok(got[next - 1][0])
                },
            )
        }
        "serde" => {
            let topic = topic.slot_size(128);
            let sub = topic.serde_subscriber::<Status>()?;
            let mut publisher = topic.serde_publisher::<Status>()?;
            let status = |seq| Status {
                seq,
                mode: "auto".into(),
                values: vec![1.0; 4],
            };
            rounds(
                n,
                phase,
                |i| {
                    Ok(publisher
                        .send(status(i))
                        .map(|_| ())
                        .map_err(|e| e.to_string())?)
                },
                || Ok(sub.try_recv()?.seq),
            )
        }
        "array" | "array_long" => {
            // `array`: as array topics are mostly used, a short ring (only the `pairs` phase
            // fits in it). `array_long`: a ring of 4096 with a block for each message it keeps,
            // to show what the pool's bookkeeping costs when many messages stay in the ring.
            let topic = if scenario == "array" {
                Topic::builder(&name).capacity(8)
            } else {
                topic.pool_blocks_per_segment(64)
            };
            let sub = topic.array_subscriber::<u64>()?;
            let mut publisher = topic.array_publisher::<u64>()?;
            rounds(
                n,
                phase,
                |i| {
                    let mut loan = publisher.loan::<u8>(&[64])?;
                    let (data, meta) = loan.parts_mut();
                    data[0] = i as u8;
                    *meta = i;
                    loan.publish().map_err(|e| e.to_string())?;
                    Ok(())
                },
                || {
                    let s = sub.try_recv()?;
                    Ok(*s.meta() + u64::from(s.as_slice::<u8>()?[0]))
                },
            )
        }
        "queue64" => {
            let q = QueueBuilder::new(&name).capacity(4096).open::<[u64; 8]>()?;
            rounds(
                n,
                phase,
                |i| Ok(q.put([i; 8]).map_err(|e| e.to_string())?),
                || Ok(q.get()?[0]),
            )
        }
        other => Err(format!("unknown scenario {other:?}").into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [scenario, phase, iters] = args.as_slice() else {
        eprintln!(
            "usage: instructions <pod8|pod8_copy|pod8_many|serde|array|array_long|queue64> <publish|both|pairs> <iters ≤ 2048>"
        );
        return ExitCode::from(2);
    };
    let phase_of = match phase.as_str() {
        "publish" => Phase::Publish,
        "both" => Phase::Both,
        "pairs" => Phase::Pairs,
        _ => {
            eprintln!("phase is publish, both or pairs");
            return ExitCode::from(2);
        }
    };
    let Some(n) = iters.parse::<u64>().ok().filter(|&n| n <= 2048) else {
        eprintln!("iters is a number, at most 2048 (the ring holds 4096)");
        return ExitCode::from(2);
    };
    match run(scenario, phase_of, n) {
        Ok(sum) => {
            println!("{scenario} {phase} {n} checksum={sum}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("instructions: {e}");
            ExitCode::FAILURE
        }
    }
}
