//! Work-queue roles: producers and consumers that report every item, and consumers that take
//! items and hold them until killed.

use std::time::Duration;

use clap::Args;
use shmbus::{ArrayQueue, GetError, PutFailure, Queue, QueueBuilder};
use shmbus_tests::{array_is_intact, fill_array, Msg};

use super::Fail;

/// Arguments every queue role shares.
#[derive(Args)]
pub(crate) struct QueueArgs {
    #[arg(long)]
    name: String,
    #[arg(long)]
    capacity: Option<u32>,
    /// Acknowledged delivery with this delivery limit (default: at most once).
    #[arg(long)]
    ack: Option<u32>,
}

fn open(a: &QueueArgs) -> Result<Queue<Msg>, Fail> {
    let mut b = QueueBuilder::new(&a.name);
    if let Some(c) = a.capacity {
        b = b.capacity(c);
    }
    b = match a.ack {
        Some(max) => b.acknowledged(max),
        None => b.at_most_once(),
    };
    Ok(b.open::<Msg>()?)
}

/// An array queue's metadata: who made the array, and which one.
type ArrayMeta = [u64; 2];

fn open_arrays(a: &QueueArgs, bytes: usize) -> Result<ArrayQueue<ArrayMeta>, Fail> {
    let mut b = QueueBuilder::new(&a.name).array_bytes(bytes);
    if let Some(c) = a.capacity {
        b = b.capacity(c);
    }
    b = match a.ack {
        Some(max) => b.acknowledged(max),
        None => b.at_most_once(),
    };
    Ok(b.open_arrays::<ArrayMeta>()?)
}

fn get_code(e: &GetError) -> &'static str {
    match e {
        GetError::Empty => "empty",
        GetError::Timeout => "timeout",
        GetError::Closed => "closed",
        GetError::Decode(_) => "decode",
        GetError::Reclaimed => "reclaimed",
        GetError::Lock(_) => "lock",
        GetError::Corrupt(_) => "corrupt",
        _ => "get",
    }
}

/// Arguments of `queue-put`.
#[derive(Args)]
pub(crate) struct QueuePutArgs {
    #[command(flatten)]
    queue: QueueArgs,
    /// Items to put (0: until killed).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// The producer id written into each item.
    #[arg(long)]
    producer: u64,
    /// Print `put index=<i>` after each item.
    #[arg(long)]
    verbose: bool,
}

/// Puts `count` items `Msg::new(producer, i)` (or until killed), then prints `summary`.
pub(crate) fn queue_put(a: &QueuePutArgs) -> Result<(), Fail> {
    let q = open(&a.queue)?;
    println!("ready row-created={}", q.created());
    let mut i = 0;
    while a.count == 0 || i < a.count {
        match q.put_timeout(Msg::new(a.producer, i), Duration::from_secs(10)) {
            Ok(()) => {}
            Err(e) if matches!(e.reason(), PutFailure::Closed) => break,
            Err(e) => return Err(Fail::new("put", e)),
        }
        if a.verbose {
            println!("put index={i}");
        }
        i += 1;
    }
    println!("summary put={i}");
    Ok(())
}

/// Arguments of `queue-get`.
#[derive(Args)]
pub(crate) struct QueueGetArgs {
    #[command(flatten)]
    queue: QueueArgs,
    /// After this many items, take one more, print `holding`, and keep it until killed.
    #[arg(long)]
    hold_after: Option<u64>,
    /// Take this many items at once and hold them all until killed (prints `holding` each).
    #[arg(long)]
    hold: Option<u64>,
    /// Microseconds of "work" per item.
    #[arg(long, default_value_t = 0)]
    work_us: u64,
}

/// Receives items until the queue is closed and drained: prints `got producer= index=
/// deliveries= intact=` for each *before* acknowledging it, then `done count=<n>`.
pub(crate) fn queue_get(a: &QueueGetArgs) -> Result<(), Fail> {
    let q = open(&a.queue)?;
    println!("ready");
    if let Some(n) = a.hold {
        let mut held = Vec::new();
        for _ in 0..n {
            let d = q
                .receive_timeout(Duration::from_secs(10))
                .map_err(|e| Fail::new(get_code(&e), e))?;
            println!(
                "holding producer={} index={} deliveries={}",
                d.producer,
                d.index,
                d.deliveries()
            );
            held.push(d);
        }
        super::sleep_forever();
    }
    let mut n = 0u64;
    loop {
        let d = match q.receive_timeout(Duration::from_secs(20)) {
            Ok(d) => d,
            Err(GetError::Closed) => break,
            Err(e) => return Err(Fail::new(get_code(&e), e)),
        };
        if a.hold_after == Some(n) {
            println!(
                "holding producer={} index={} deliveries={}",
                d.producer,
                d.index,
                d.deliveries()
            );
            super::sleep_forever();
        }
        if a.work_us > 0 {
            std::thread::sleep(Duration::from_micros(a.work_us));
        }
        println!(
            "got producer={} index={} deliveries={} intact={}",
            d.producer,
            d.index,
            d.deliveries(),
            d.is_intact()
        );
        d.ack().map_err(|e| Fail::new(get_code(&e), e))?;
        n += 1;
    }
    println!("done count={n}");
    Ok(())
}

#[derive(Args)]
pub(crate) struct QueuePutBytesArgs {
    /// An existing queue of byte strings (`SerdeQueue<Vec<u8>>`, what Python's `shmbus.Queue`
    /// makes).
    #[arg(long)]
    name: String,
    #[arg(long)]
    count: u64,
}

/// Puts `count` items `b"item-<i>"` into an existing byte-string queue, then closes it.
pub(crate) fn queue_put_bytes(a: &QueuePutBytesArgs) -> Result<(), Fail> {
    let q = QueueBuilder::new(&a.name)
        .existing()
        .open_serde::<Vec<u8>>()?;
    println!("ready");
    for i in 0..a.count {
        q.put_timeout(format!("item-{i}").into_bytes(), Duration::from_secs(10))
            .map_err(|e| Fail::new("put", e))?;
    }
    q.close().map_err(|e| Fail::new("close", e))?;
    println!("summary put={}", a.count);
    Ok(())
}

/// Arguments of `array-queue-put`.
#[derive(Args)]
pub(crate) struct ArrayQueuePutArgs {
    #[command(flatten)]
    queue: QueueArgs,
    /// Arrays to put.
    #[arg(long)]
    count: u64,
    /// The producer id, in each array's metadata and contents.
    #[arg(long)]
    producer: u64,
    /// `u32` elements per array (a 1-d array).
    #[arg(long)]
    elements: usize,
    /// Loan one more block after `count`, print `loaned`, and hold it until killed.
    #[arg(long)]
    hold_loan: bool,
}

/// Puts `count` arrays of `elements` `u32`s, written in place ([`fill_array`]), then prints
/// `summary put=<n>`.
pub(crate) fn array_queue_put(a: &ArrayQueuePutArgs) -> Result<(), Fail> {
    let q = open_arrays(&a.queue, a.elements * 4)?;
    println!("ready");
    for i in 0..a.count {
        let mut loan = q
            .loan_timeout::<u32>(&[a.elements], Duration::from_secs(20))
            .map_err(|e| Fail::new("loan", e))?;
        let (data, meta) = loan.parts_mut();
        fill_array(a.producer, i, data);
        *meta = [a.producer, i];
        loan.commit().map_err(|e| Fail::new("commit", e))?;
    }
    println!("summary put={}", a.count);
    if a.hold_loan {
        let mut loan = q
            .loan_timeout::<u32>(&[a.elements], Duration::from_secs(20))
            .map_err(|e| Fail::new("loan", e))?;
        // Half written when killed.
        let half = a.elements / 2;
        loan.as_mut_slice()[..half].fill(u32::MAX);
        println!("loaned");
        super::sleep_forever();
    }
    Ok(())
}

/// Arguments of `array-queue-get`.
#[derive(Args)]
pub(crate) struct ArrayQueueGetArgs {
    #[command(flatten)]
    queue: QueueArgs,
    /// Take this many arrays and hold them all until killed (prints `holding` each).
    #[arg(long)]
    hold: Option<u64>,
}

/// Receives arrays until the queue is closed and drained, verifying each in place: prints
/// `got producer= index= deliveries= intact=` before acknowledging it, then `done count=<n>`.
pub(crate) fn array_queue_get(a: &ArrayQueueGetArgs) -> Result<(), Fail> {
    // An opener that does not create: the item size is the queue's.
    let q = {
        let mut b = QueueBuilder::new(&a.queue.name).existing();
        if let Some(max) = a.queue.ack {
            b = b.acknowledged(max);
        }
        b.open_arrays::<ArrayMeta>()?
    };
    println!("ready");
    let report = |tag: &str, d: &shmbus::ArrayDelivery<'_, ArrayMeta>| -> Result<(), Fail> {
        let [producer, index] = *d.meta();
        let data = d.as_slice::<u32>().map_err(|e| Fail::new("dtype", e))?;
        println!(
            "{tag} producer={producer} index={index} deliveries={} intact={} elements={}",
            d.deliveries(),
            array_is_intact(producer, index, data),
            data.len()
        );
        Ok(())
    };
    if let Some(n) = a.hold {
        let mut held = Vec::new();
        for _ in 0..n {
            let d = q
                .receive_timeout(Duration::from_secs(10))
                .map_err(|e| Fail::new(get_code(&e), e))?;
            report("holding", &d)?;
            held.push(d);
        }
        super::sleep_forever();
    }
    let mut n = 0u64;
    loop {
        let d = match q.receive_timeout(Duration::from_secs(20)) {
            Ok(d) => d,
            Err(GetError::Closed) => break,
            Err(e) => return Err(Fail::new(get_code(&e), e)),
        };
        report("got", &d)?;
        d.ack().map_err(|e| Fail::new(get_code(&e), e))?;
        n += 1;
    }
    println!("done count={n}");
    Ok(())
}
