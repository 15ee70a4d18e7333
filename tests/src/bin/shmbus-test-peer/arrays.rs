//! Peer roles for named arrays and array topics.

use std::io::BufRead;
use std::time::{Duration, Instant};

use clap::Args;
use shmbus::{ArrayError, ArraySample, PublishError, PublishFailure, RecvError, SharedArray};
use shmbus_core::dtype::Dtype;
use shmbus_core::layout::{Codec, TypeInfo};
use shmbus_core::name::Name;
use shmbus_core::pool::{BlockDescriptor, PoolOptions, PoolPublisher, DESCRIPTOR_MAGIC};
use shmbus_core::topic::{RawTopic, TopicOptions};
use shmbus_tests::{check_frame, fill_frame, frame_shape, rss_kib, segment_error_code, FrameMeta};

use super::{Fail, TopicArgs};

#[derive(Args)]
pub(crate) struct FramesPubArgs {
    #[command(flatten)]
    topic: TopicArgs,
    #[arg(long, default_value_t = 100)]
    count: u64,
    /// Shape of the (u8) frames, comma-separated.
    #[arg(long, default_value = "120,160,3")]
    shape: String,
    /// Rotate sizes and dtypes (see `shmbus_tests::frame_shape`).
    #[arg(long)]
    varying: bool,
    #[arg(long)]
    pool_max_bytes: Option<u64>,
    #[arg(long)]
    blocks_per_segment: Option<u32>,
    /// Keep the publisher until killed after sending.
    #[arg(long)]
    hold: bool,
    /// Wait for this many subscribers before sending.
    #[arg(long, default_value_t = 0)]
    wait_subscribers: u32,
}

#[derive(Args)]
pub(crate) struct FramesSubArgs {
    #[command(flatten)]
    topic: TopicArgs,
    /// Stop after this many frames (default: until `Disconnected`).
    #[arg(long)]
    count: Option<u64>,
    #[arg(long, default_value = "120,160,3")]
    shape: String,
    #[arg(long)]
    varying: bool,
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

#[derive(Args)]
pub(crate) struct FramesHoldArgs {
    #[command(flatten)]
    topic: TopicArgs,
    /// Frames to take and keep.
    #[arg(long, default_value_t = 1)]
    hold: usize,
}

#[derive(Args)]
pub(crate) struct ForgeArgs {
    #[command(flatten)]
    topic: TopicArgs,
}

#[derive(Args)]
pub(crate) struct ArrayCreateArgs {
    #[arg(long)]
    name: String,
    #[arg(long, default_value = "u8")]
    dtype: String,
    #[arg(long, default_value = "4,5")]
    shape: String,
    #[arg(long)]
    scoped: bool,
    /// Fill every element with this value.
    #[arg(long, default_value_t = 0)]
    fill: u8,
    /// Stay attached until killed.
    #[arg(long)]
    hold: bool,
}

#[derive(Args)]
pub(crate) struct ArrayAttachArgs {
    #[arg(long)]
    name: String,
    #[arg(long, default_value = "u8")]
    dtype: String,
    #[arg(long)]
    read_only: bool,
    /// Fill every byte with this value (read-write attachments).
    #[arg(long)]
    fill: Option<u8>,
    /// Read every page, report resident memory, and stay attached until killed.
    #[arg(long)]
    touch_and_hold: bool,
}

fn shape(s: &str) -> Vec<usize> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().expect("a shape of integers"))
        .collect()
}

fn dims(shape: &[usize]) -> String {
    shape
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("x")
}

fn array_error(e: &ArrayError) -> Fail {
    let code = match e {
        ArrayError::WrongDtype { .. } => "wrong-dtype",
        ArrayError::Segment(s) => segment_error_code(s),
        ArrayError::Corrupt { .. } => "array-corrupt",
        ArrayError::ReadOnly(_) => "read-only",
        _ => "other",
    };
    Fail::new(code, e)
}

fn recv_code(e: &RecvError) -> &'static str {
    match e {
        RecvError::Timeout => "timeout",
        RecvError::Disconnected => "disconnected",
        RecvError::BadDescriptor { .. } => "bad-descriptor",
        RecvError::Lagged(_) => "lagged",
        _ => "recv",
    }
}

/// Verifies `s` as frame `meta.index`; returns its index.
fn verify(s: &ArraySample<'_, FrameMeta>, base: &[usize], varying: bool) -> Result<u64, Fail> {
    let m = *s.meta();
    let (dtype, shape) = frame_shape(m.index, base, varying);
    let want = if dtype == "u8" { Dtype::U8 } else { Dtype::F32 };
    if s.dtype() != want || s.shape() != shape.as_slice() || s.bytes().len() as u64 != m.len {
        return Err(Fail::new(
            "bad-frame",
            format!(
                "frame {}: {} {:?} ({} bytes), expected {want} {shape:?} ({} bytes)",
                m.index,
                s.dtype(),
                s.shape(),
                s.bytes().len(),
                m.len
            ),
        ));
    }
    if let Some(at) = check_frame(m.index, s.bytes()) {
        return Err(Fail::new(
            "bad-frame",
            format!("frame {} differs at byte {at}", m.index),
        ));
    }
    Ok(m.index)
}

pub(crate) fn frames_pub(a: &FramesPubArgs) -> Result<(), Fail> {
    let mut topic = a.topic.builder();
    if let Some(b) = a.pool_max_bytes {
        topic = topic.pool_max_bytes(b);
    }
    if let Some(n) = a.blocks_per_segment {
        topic = topic.pool_blocks_per_segment(n);
    }
    let mut publisher = topic.array_publisher::<FrameMeta>()?;
    println!("ready");
    let deadline = Instant::now() + Duration::from_secs(10);
    while publisher.stats().subscribers < a.wait_subscribers {
        if Instant::now() > deadline {
            return Err(Fail::new("timeout", "subscribers did not join"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let base = shape(&a.shape);
    for index in 0..a.count {
        let (dtype, shape) = frame_shape(index, &base, a.varying);
        if dtype == "u8" {
            send_frame::<u8>(&mut publisher, index, &shape)?;
        } else {
            send_frame::<f32>(&mut publisher, index, &shape)?;
        }
    }
    let st = publisher.pool_stats();
    println!(
        "done sent={} segments={} blocks={} bytes={} retired={} waits={}",
        a.count, st.segments, st.blocks, st.bytes, st.retired, st.waits
    );
    if a.hold {
        super::sleep_forever();
    }
    Ok(())
}

/// Loans a block of `T` of `shape`, fills its bytes as frame `index`, publishes.
fn send_frame<T: shmbus::Element>(
    publisher: &mut shmbus::ArrayPublisher<FrameMeta>,
    index: u64,
    shape: &[usize],
) -> Result<(), Fail> {
    let mut loan = publisher.loan::<T>(shape).map_err(pool_error)?;
    let (block, meta) = loan.parts_mut();
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(block);
    fill_frame(index, bytes);
    *meta = FrameMeta {
        index,
        len: bytes.len() as u64,
    };
    loan.publish().map(drop).map_err(|e| send_code(&e))
}

fn pool_error(e: shmbus::PoolLoanError) -> Fail {
    let code = match e {
        shmbus::PoolLoanError::Exhausted { .. } => "pool-exhausted",
        _ => "pool",
    };
    Fail::new(code, e)
}

fn send_code<T>(e: &PublishError<T>) -> Fail {
    Fail::new(
        match e.reason() {
            PublishFailure::Timeout => "timeout",
            _ => "send",
        },
        e,
    )
}

pub(crate) fn frames_sub(a: &FramesSubArgs) -> Result<(), Fail> {
    let sub = a.topic.builder().array_subscriber::<FrameMeta>()?;
    println!("ready");
    let base = shape(&a.shape);
    let (mut received, mut lagged, mut bad, mut last) = (0u64, 0u64, 0u64, None::<u64>);
    let mut reasons = Vec::new();
    loop {
        if a.count.is_some_and(|c| received >= c) {
            break;
        }
        match sub.recv_timeout(Duration::from_millis(a.timeout_ms)) {
            Ok(s) => {
                let index = verify(&s, &base, a.varying)?;
                if last.is_some_and(|l| index <= l) {
                    return Err(Fail::new("order", format!("{index} after {last:?}")));
                }
                last = Some(index);
                received += 1;
            }
            Err(RecvError::Lagged(n)) => lagged += n,
            Err(RecvError::BadDescriptor { seq, reason }) => {
                bad += 1;
                reasons.push(format!("{seq}:{}", reason.replace(' ', "_")));
            }
            Err(RecvError::Disconnected) => break,
            Err(e) => return Err(Fail::new(recv_code(&e), e)),
        }
    }
    println!(
        "summary received={received} lagged={lagged} bad={bad} last={} reasons={}",
        last.map_or(-1, |l| l as i64),
        reasons.join(",")
    );
    Ok(())
}

pub(crate) fn frames_hold(a: &FramesHoldArgs) -> Result<(), Fail> {
    let sub = a.topic.builder().array_subscriber::<FrameMeta>()?;
    println!("ready");
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.len() < a.hold {
        if Instant::now() > deadline {
            return Err(Fail::new("timeout", "not enough frames to hold"));
        }
        match sub.recv_timeout(Duration::from_millis(100)) {
            Ok(s) => held.push(s),
            Err(RecvError::Lagged(_) | RecvError::Timeout) => {}
            Err(e) => return Err(Fail::new(recv_code(&e), e)),
        }
    }
    let indices: Vec<String> = held.iter().map(|s| s.meta().index.to_string()).collect();
    println!("held indices={}", indices.join(","));
    // On `check`, verify the held frames are still intact (nobody reused their blocks).
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "check" {
            let bad = held
                .iter()
                .filter(|s| check_frame(s.meta().index, s.bytes()).is_some())
                .count();
            println!("checked held={} bad={bad}", held.len());
        }
    }
    super::sleep_forever();
}

/// Joins an array topic (metadata `FrameMeta`) as its publisher through the core API, sends one
/// real frame, then descriptors that must all be refused, then a real frame again.
pub(crate) fn frames_forge(a: &ForgeArgs) -> Result<(), Fail> {
    let name = Name::new(&a.topic.topic).map_err(|e| Fail::new("name", e))?;
    let ty = TypeInfo::new(
        &format!(
            "array+{}",
            shmbus_core::layout::short_type_name::<FrameMeta>()
        ),
        (shmbus_core::pool::DESCRIPTOR_SIZE + size_of::<FrameMeta>()) as u64,
        64,
        Codec::Pod,
    )
    .expect("short name");
    let opts = TopicOptions {
        slot_size: Some(ty.size as u32),
        max_publishers: Some(1),
        ..TopicOptions::default()
    };
    let topic = RawTopic::open_or_create(&name, &ty, &opts).map_err(|e| Fail::new("topic", e))?;
    let mut p =
        PoolPublisher::new(topic, PoolOptions::default()).map_err(|e| Fail::new("pool", e))?;
    println!("ready");
    let timeout = Some(Duration::from_secs(5));
    let real = |p: &mut PoolPublisher, index: u64| -> Result<(), Fail> {
        let loan = p
            .loan(Dtype::U8, &[64, 64], timeout)
            .map_err(|e| Fail::new("pool", e))?;
        let (block, meta) = p.parts_mut(&loan);
        fill_frame(index, block);
        meta[..16].copy_from_slice(bytemuck::bytes_of(&FrameMeta { index, len: 4096 }));
        p.publish(loan, timeout)
            .map_err(|(e, _)| Fail::new("publish", e))?;
        Ok(())
    };
    real(&mut p, 0)?;
    // The real frame used segment 0, block 0, generation 1 (a fresh pool hands out block 0).
    let good = BlockDescriptor {
        magic: DESCRIPTOR_MAGIC,
        dtype: Dtype::U8.code(),
        pool_id: p.pool_id(),
        segment: 0,
        block: 0,
        generation: 1,
        len: 4096,
        ndim: 2,
        reserved: 0,
        shape: [64, 64, 0, 0, 0, 0, 0, 0],
    };
    let forged = [
        (
            "bad-magic",
            BlockDescriptor {
                magic: 0x1234,
                ..good
            },
        ),
        ("bad-dtype", BlockDescriptor { dtype: 999, ..good }),
        ("too-many-dims", BlockDescriptor { ndim: 9, ..good }),
        ("len-vs-shape", BlockDescriptor { len: 5000, ..good }),
        (
            "unknown-pool",
            BlockDescriptor {
                pool_id: good.pool_id ^ 1,
                ..good
            },
        ),
        ("unknown-segment", BlockDescriptor { segment: 7, ..good }),
        (
            "huge-segment",
            BlockDescriptor {
                segment: u32::MAX,
                ..good
            },
        ),
        (
            "block-out-of-range",
            BlockDescriptor {
                block: 1000,
                ..good
            },
        ),
        (
            "overrun",
            BlockDescriptor {
                len: 1 << 20,
                shape: [1 << 20, 0, 0, 0, 0, 0, 0, 0],
                ndim: 1,
                ..good
            },
        ),
        (
            "stale-generation",
            BlockDescriptor {
                generation: 0,
                ..good
            },
        ),
        (
            "future-generation",
            BlockDescriptor {
                generation: 9,
                ..good
            },
        ),
    ];
    for (what, d) in &forged {
        p.publish_raw(d, timeout)
            .map_err(|e| Fail::new("publish", e))?;
        println!("forged what={what}");
    }
    real(&mut p, 1)?;
    println!("done forged={}", forged.len());
    super::sleep_forever();
}

pub(crate) fn array_create(a: &ArrayCreateArgs) -> Result<(), Fail> {
    let shape = shape(&a.shape);
    match a.dtype.as_str() {
        "u8" => {
            let opts = SharedArray::<u8>::options();
            let opts = if a.scoped { opts.scoped() } else { opts };
            let arr = opts.create(&a.name, &shape).map_err(|e| array_error(&e))?;
            arr.fill(a.fill);
            println!("created len={}", arr.len());
            if a.hold {
                super::sleep_forever();
            }
        }
        "f32" => {
            let opts = SharedArray::<f32>::options();
            let opts = if a.scoped { opts.scoped() } else { opts };
            let arr = opts.create(&a.name, &shape).map_err(|e| array_error(&e))?;
            arr.fill(f32::from(a.fill));
            println!("created len={}", arr.len());
            if a.hold {
                super::sleep_forever();
            }
        }
        other => return Err(Fail::new("usage", format!("dtype {other}"))),
    }
    Ok(())
}

pub(crate) fn array_attach(a: &ArrayAttachArgs) -> Result<(), Fail> {
    match a.dtype.as_str() {
        "u8" if a.read_only => {
            let arr = SharedArray::<u8>::attach_read_only(&a.name).map_err(|e| array_error(&e))?;
            let sum: u64 = arr.to_vec().iter().map(|&b| u64::from(b)).sum();
            println!("attached shape={} sum={sum}", dims(arr.shape()));
        }
        "u8" => {
            let arr = SharedArray::<u8>::attach(&a.name).map_err(|e| array_error(&e))?;
            if let Some(v) = a.fill {
                arr.fill(v);
            }
            if a.touch_and_hold {
                let (rss0, _, _) = rss_kib(std::process::id());
                // Read one byte per page: every page becomes resident in this process.
                let mut sum = 0u64;
                for chunk in arr.to_vec().chunks(4096) {
                    sum += u64::from(chunk[0]);
                }
                let (rss, anon, shmem) = rss_kib(std::process::id());
                println!(
                    "touched len={} sum={sum} rss_before_kib={rss0} rss_kib={rss} anon_kib={anon} shmem_kib={shmem}",
                    arr.len()
                );
                super::sleep_forever();
            }
            let sum: u64 = arr.to_vec().iter().map(|&b| u64::from(b)).sum();
            println!("attached shape={} sum={sum}", dims(arr.shape()));
        }
        "f32" => {
            let arr = SharedArray::<f32>::attach(&a.name).map_err(|e| array_error(&e))?;
            let sum: f64 = arr.to_vec().iter().map(|&x| f64::from(x)).sum();
            println!("attached shape={} sum={sum}", dims(arr.shape()));
        }
        other => return Err(Fail::new("usage", format!("dtype {other}"))),
    }
    Ok(())
}
