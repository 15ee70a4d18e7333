//! Camera-sized frames from one producer process to several consumer processes, zero-copy.
//!
//! ```sh
//! cargo run --release --example image_transfer
//! cargo run --release --example image_transfer -- --consumers 3 --frames 100 --width 640 --height 480
//! cargo run --release --example image_transfer -- --fps 0      # as fast as the machine goes
//! ```
//!
//! The program starts itself again as one **producer** and `--consumers` **consumer** processes
//! (default 2), waits for them with a deadline (killing them if anything hangs) and prints what
//! they measured.
//!
//! - The producer renders synthetic RGB frames (`--width` x `--height`, shape `[h, w, 3]`,
//!   `u8`) *directly into a block of the topic's shared-memory pool*: it loans the block
//!   ([`ArrayPublisher::loan`](shmbus::ArrayPublisher::loan)), writes every pixel in place
//!   through [`parts_mut`](shmbus::ArrayLoan::parts_mut) and publishes. No frame is ever
//!   copied: every consumer reads the very block the producer wrote.
//! - Each frame carries plain-old-data metadata ([`FrameMeta`]: frame number, size, send time).
//! - Every consumer checks every byte of every frame against the pattern, which is cheap to
//!   recompute (byte `(y, x, c)` of frame `f` is `x + 2y + 3f + 85c` modulo 256, and the first
//!   8 bytes hold `f`), measures each frame's latency (receive time minus send time) and
//!   reports. Consumer 0 also saves one frame as a PNG (`--png PATH`).
//! - The topic uses back-pressure ([`Overflow::BackPressure`]): the producer waits for the
//!   slowest consumer, so every frame reaches every consumer.
//! - Consumers subscribe first and then post a named [`Semaphore`]; the producer starts when
//!   it has counted all of them. Every name starts with `example.image_transfer.<parent pid>.`,
//!   so parallel runs never collide, and every object is scoped: the last process out removes
//!   it from `/dev/shm`. The parent checks that nothing of its run is left there at the end.
//!
//! The exit status is 0 only when every consumer verified every frame.
//!
//! The roles can be run by hand in separate terminals with the same `--topic`, in any order:
//! `-- consumer --index 0 --topic demo`, `-- consumer --index 1 --topic demo` and
//! `-- producer --topic demo --consumers 2`.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::error::Error;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use shmbus::{Overflow, RecvError, Semaphore, Topic};

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

/// Metadata sent with every frame, in the topic slot next to the block descriptor.
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct FrameMeta {
    /// Frame number, from 0.
    frame: u64,
    /// Pixels per row.
    width: u32,
    /// Rows.
    height: u32,
    /// When the producer published the frame: nanoseconds since the Unix epoch
    /// (`SystemTime`, the one clock every process shares).
    send_ns: u64,
}

#[derive(Parser, Debug)]
#[command(about = "Zero-copy frames from one producer process to N consumer processes")]
struct Args {
    #[command(subcommand)]
    role: Option<Role>,
    /// Frame width in pixels (at least 3).
    #[arg(long, default_value_t = 1920, global = true)]
    width: u32,
    /// Frame height in pixels.
    #[arg(long, default_value_t = 1080, global = true)]
    height: u32,
    /// Frames to send.
    #[arg(long, default_value_t = 300, global = true)]
    frames: u64,
    /// Frame rate limit of the producer; 0 sends as fast as the consumers keep up.
    #[arg(long, default_value_t = 60.0, global = true)]
    fps: f64,
    /// Consumer processes (1 to 56).
    #[arg(long, default_value_t = 2, global = true)]
    consumers: u32,
    /// Where consumer 0 writes one received frame as a PNG (default: a file in the temporary
    /// directory named with the process id).
    #[arg(long, global = true)]
    png: Option<PathBuf>,
    /// Seconds the whole run may take before the children are killed (default: 30 plus twice
    /// the expected duration).
    #[arg(long, global = true)]
    timeout: Option<f64>,
    /// Name prefix of the run's shared-memory objects (default:
    /// `example.image_transfer.<pid>`).
    #[arg(long, global = true)]
    topic: Option<String>,
}

#[derive(Subcommand, Debug, Clone, Copy)]
enum Role {
    /// Render and publish the frames.
    Producer,
    /// Receive, verify and time the frames.
    Consumer {
        /// This consumer's number (consumer 0 writes the PNG).
        #[arg(long, default_value_t = 0)]
        index: u32,
    },
}

/// How long the producer waits for every consumer to subscribe.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Ring entries of the topic: how far the producer may run ahead of the slowest consumer.
const CAPACITY: u32 = 4;
/// Frames one consumer holds at once.
const MAX_HELD: u32 = 1;

fn frame_topic(prefix: &str, args: &Args) -> Topic {
    Topic::builder(&format!("{prefix}.frames"))
        .capacity(CAPACITY)
        // Publish times in the ring, for `shmbus hz` to show publish-to-receive latency.
        .timestamps(true)
        // Every frame reaches every consumer: a slow consumer holds the producer back (a dead
        // one never does).
        .overflow(Overflow::BackPressure)
        .max_subscribers(args.consumers.max(8))
        .max_held(MAX_HELD)
        // Blocks for the frames in the ring, the ones consumers hold, the one being drawn and
        // a spare; the pool grows to that and then reuses its blocks.
        .pool_max_bytes(block_bytes(args) * u64::from(CAPACITY + MAX_HELD * args.consumers + 2))
        // A consumer that stalls this long is an error, not a hang.
        .publish_timeout(Some(Duration::from_secs(10)))
}

fn ready_name(prefix: &str) -> String {
    format!("{prefix}.ready")
}

fn frame_bytes(args: &Args) -> u64 {
    u64::from(args.width) * u64::from(args.height) * 3
}

/// Bytes of the pool block a frame takes (whole pages).
fn block_bytes(args: &Args) -> u64 {
    frame_bytes(args).next_multiple_of(4096)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The pattern of one row without its per-row offset: byte `3x + c` is `x + 85c`.
fn row_pattern(width: u32) -> Vec<u8> {
    (0..width as usize * 3)
        .map(|i| ((i / 3) + 85 * (i % 3)) as u8)
        .collect()
}

/// The offset of row `y` of frame `frame`: `2y + 3 * frame` (mod 256).
fn row_offset(y: usize, frame: u64) -> u8 {
    (2 * y as u64).wrapping_add(3 * frame) as u8
}

/// Draws frame `frame` into `pixels` (`height` rows of `pattern.len()` bytes).
fn render(pixels: &mut [u8], pattern: &[u8], frame: u64) {
    for (y, row) in pixels.chunks_exact_mut(pattern.len()).enumerate() {
        let offset = row_offset(y, frame);
        for (p, &base) in row.iter_mut().zip(pattern) {
            *p = base.wrapping_add(offset);
        }
    }
    pixels[..8].copy_from_slice(&frame.to_le_bytes());
}

/// A byte that differs from the pattern.
#[derive(Debug)]
struct Mismatch {
    bad_bytes: usize,
    first: (usize, usize, usize, u8, u8),
}

/// Checks every byte of `pixels` against frame `frame`.
fn verify(pixels: &[u8], pattern: &[u8], frame: u64) -> Option<Mismatch> {
    let row_len = pattern.len();
    let mut bad_bytes = 0;
    let mut first = None;
    let mut report = |y: usize, i: usize, expected: u8, found: u8| {
        bad_bytes += 1;
        first.get_or_insert((y, i / 3, i % 3, expected, found));
    };
    let header = frame.to_le_bytes();
    for (i, (&found, &expected)) in pixels.iter().zip(&header).enumerate() {
        if found != expected {
            report(0, i, expected, found);
        }
    }
    for (y, row) in pixels.chunks_exact(row_len).enumerate() {
        let offset = row_offset(y, frame);
        let skip = if y == 0 { header.len() } else { 0 };
        let (row, pat) = (&row[skip..], &pattern[skip..]);
        // The fast path: one pass that the compiler vectorises; the slow one finds the bytes.
        let diff = row
            .iter()
            .zip(pat)
            .fold(0u8, |acc, (&p, &b)| acc | (p ^ b.wrapping_add(offset)));
        if diff != 0 {
            for (i, (&p, &b)) in row.iter().zip(pat).enumerate() {
                if p != b.wrapping_add(offset) {
                    report(y, i + skip, b.wrapping_add(offset), p);
                }
            }
        }
    }
    first.map(|first| Mismatch { bad_bytes, first })
}

fn produce(prefix: &str, args: &Args) -> Result<()> {
    let (w, h) = (args.width, args.height);
    let shape = [h as usize, w as usize, 3];
    let pattern = row_pattern(w);
    let mut publisher = frame_topic(prefix, args).array_publisher::<FrameMeta>()?;

    // Every consumer subscribes, then posts: once all have, none can miss frame 0.
    let ready = Semaphore::open_or_create(&ready_name(prefix), 0)?;
    let wait_start = Instant::now();
    for n in 0..args.consumers {
        let left = READY_TIMEOUT.saturating_sub(wait_start.elapsed());
        if !ready.wait_timeout(left) {
            return Err(format!(
                "only {n} of {} consumers subscribed within {READY_TIMEOUT:?}",
                args.consumers
            )
            .into());
        }
    }
    drop(ready);

    let period = (args.fps > 0.0).then(|| Duration::from_secs_f64(1.0 / args.fps));
    let start = Instant::now();
    let start_ns = now_ns();
    let mut render_time = Duration::ZERO;
    for frame in 0..args.frames {
        if let Some(period) = period {
            let due = start + period.mul_f64(frame as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        // A block of shared memory: the frame is drawn where the consumers will read it.
        let mut loan = publisher
            .loan::<u8>(&shape)
            .map_err(|e| format!("frame {frame}: no block to draw in: {e}"))?;
        let (pixels, meta) = loan.parts_mut();
        let t = Instant::now();
        render(pixels, &pattern, frame);
        render_time += t.elapsed();
        *meta = FrameMeta {
            frame,
            width: w,
            height: h,
            send_ns: now_ns(),
        };
        loan.publish()
            .map_err(|e| format!("frame {frame} not published: {e}"))?;
    }
    let secs = start.elapsed().as_secs_f64();
    let topic = publisher.stats();
    let pool = publisher.pool_stats();
    println!(
        "published {} frames in {secs:.2} s ({:.1} fps); drawing took {:.2} ms a frame; \
         waited for consumers {} times; pool: {} blocks in {} segments ({:.0} MB)",
        args.frames,
        args.frames as f64 / secs,
        render_time.as_secs_f64() * 1e3 / args.frames.max(1) as f64,
        topic.backpressure_waits + pool.waits,
        pool.blocks,
        pool.segments,
        pool.bytes as f64 / 1e6,
    );
    println!(
        "stats start_ns={start_ns} lost={} backpressure_waits={}",
        topic.lost,
        topic.backpressure_waits + pool.waits
    );
    // Dropping the publisher lets the consumers read what is left, then tells them it is gone.
    Ok(())
}

/// The `p`-th percentile (nearest rank) of sorted `v`.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn consume(prefix: &str, args: &Args, index: u32) -> Result<()> {
    let (w, h) = (args.width, args.height);
    let shape = [h as usize, w as usize, 3];
    let pattern = row_pattern(w);
    let subscriber = frame_topic(prefix, args).array_subscriber::<FrameMeta>()?;
    let ready = Semaphore::open_or_create(&ready_name(prefix), 0)?;
    ready.post()?;

    // A frame should come at least every frame period; well past that, something is wrong.
    let stall = Duration::from_secs(10)
        + if args.fps > 0.0 {
            Duration::from_secs_f64(2.0 / args.fps)
        } else {
            Duration::ZERO
        };
    let png_frame = args.frames / 2;
    let mut png_copy: Option<Vec<u8>> = None;
    let mut latencies = Vec::with_capacity(args.frames as usize);
    let (mut next, mut verified, mut bad_frames, mut lagged) = (0u64, 0u64, 0u64, 0u64);
    let mut skipped = 0u64;
    let mut last_ns = 0;
    let mut disconnected = false;
    let mut complain = |what: String| {
        bad_frames += 1;
        if bad_frames <= 5 {
            eprintln!("{what}");
        }
    };
    while next < args.frames {
        let sample = match subscriber.recv_timeout(stall) {
            Ok(s) => s,
            Err(RecvError::Lagged(n)) => {
                lagged += n;
                continue;
            }
            Err(RecvError::Disconnected) => {
                disconnected = true;
                break;
            }
            Err(RecvError::Timeout) => {
                return Err(format!("no frame for {stall:?} after frame {next}").into())
            }
            Err(e @ RecvError::BadDescriptor { .. }) => {
                complain(e.to_string());
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let recv_ns = now_ns();
        let meta = *sample.meta();
        latencies.push(recv_ns.saturating_sub(meta.send_ns));
        if meta.frame != next {
            complain(format!("frame {} arrived where {next} was due", meta.frame));
            skipped += meta.frame.saturating_sub(next);
        }
        next = meta.frame.max(next) + 1;
        if sample.shape() != shape || meta.width != w || meta.height != h {
            complain(format!(
                "frame {}: shape {:?} ({}x{} in its metadata), expected {shape:?}",
                meta.frame,
                sample.shape(),
                meta.width,
                meta.height
            ));
            continue;
        }
        // Read in place: `pixels` is the block the producer drew into.
        let pixels = sample.as_slice::<u8>()?;
        match verify(pixels, &pattern, meta.frame) {
            None => verified += 1,
            Some(m) => {
                let (y, x, c, expected, found) = m.first;
                complain(format!(
                    "frame {}: {} wrong byte(s); the first at y {y}, x {x}, channel {c}: \
                     {found}, expected {expected}",
                    meta.frame, m.bad_bytes
                ));
            }
        }
        if index == 0 && meta.frame == png_frame {
            // The PNG is encoded after the stream, so that it does not hold the producer back;
            // this copy is the only one the example makes.
            png_copy = Some(pixels.to_vec());
        }
        last_ns = now_ns();
    }
    drop(subscriber);

    latencies.sort_unstable();
    let (p50, p99, max) = (
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(0),
    );
    println!(
        "verified {verified} of {} frames ({bad_frames} bad); latency p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        args.frames,
        p50 as f64 / 1e6,
        p99 as f64 / 1e6,
        max as f64 / 1e6
    );
    if let Some(pixels) = png_copy {
        let path = args
            .png
            .clone()
            .unwrap_or_else(|| default_png_path(std::process::id()));
        write_png(&path, w, h, &pixels)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("wrote frame {png_frame} to {}", path.display());
    }
    println!(
        "stats verified={verified} bad={bad_frames} lagged={lagged} skipped={skipped} \
         p50_ns={p50} p99_ns={p99} max_ns={max} last_ns={last_ns}"
    );
    if disconnected {
        return Err(format!("the producer left after {next} of {} frames", args.frames).into());
    }
    if verified != args.frames || bad_frames > 0 || lagged > 0 {
        return Err(format!(
            "{verified} of {} frames verified ({bad_frames} bad, {lagged} lagged)",
            args.frames
        )
        .into());
    }
    Ok(())
}

fn default_png_path(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("shmbus-image-transfer-{pid}.png"))
}

fn write_png(path: &Path, w: u32, h: u32, rgb: &[u8]) -> Result<()> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut encoder = png::Encoder::new(file, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(())
}

fn check_args(args: &Args) -> Result<()> {
    if args.width < 3 || args.height == 0 {
        return Err("frames need a width of at least 3 and a height of at least 1".into());
    }
    if frame_bytes(args) > 1 << 32 {
        return Err("frames of more than 4 GiB are not supported".into());
    }
    if !(1..=56).contains(&args.consumers) {
        return Err("--consumers must be 1 to 56".into());
    }
    if args.frames == 0 {
        return Err("--frames must be at least 1".into());
    }
    if !(args.fps >= 0.0 && args.fps.is_finite()) {
        return Err("--fps must be 0 or a positive number".into());
    }
    if args.timeout.is_some_and(|t| !(t > 0.0 && t.is_finite())) {
        return Err("--timeout must be a positive number of seconds".into());
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let prefix = args
        .topic
        .clone()
        .unwrap_or_else(|| format!("example.image_transfer.{}", std::process::id()));
    let result = check_args(&args).and_then(|()| match args.role {
        Some(Role::Producer) => produce(&prefix, &args),
        Some(Role::Consumer { index }) => consume(&prefix, &args, index),
        None => run_all(&prefix, &args),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The parent: starts the roles, waits for them with a deadline, reports.
// ---------------------------------------------------------------------------------------------

/// A child process, its output forwarded (each line tagged with its name) by two threads;
/// the stdout one keeps the `stats` line.
struct Proc {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    output: Option<JoinHandle<HashMap<String, String>>>,
    errors: Option<JoinHandle<()>>,
}

/// The children; any still running when this is dropped are killed.
struct Fleet(Vec<Proc>);

impl Drop for Fleet {
    fn drop(&mut self) {
        for p in self.0.iter_mut().filter(|p| p.status.is_none()) {
            let _ = p.child.kill();
            p.status = p.child.wait().ok();
        }
    }
}

impl Fleet {
    fn spawn(&mut self, name: &str, role_args: &[String], common: &[String]) -> Result<()> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(role_args)
            .args(common)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the {name}: {e}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or("the child's stdout is not piped")?;
        let stderr = child
            .stderr
            .take()
            .ok_or("the child's stderr is not piped")?;
        let label = name.to_owned();
        let errors = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{label}] {line}");
            }
        });
        let label = name.to_owned();
        let output = std::thread::spawn(move || {
            let mut stats = HashMap::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match line.strip_prefix("stats ") {
                    Some(kv) => stats.extend(kv.split_whitespace().filter_map(|pair| {
                        pair.split_once('=')
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    })),
                    None => println!("[{label}] {line}"),
                }
            }
            stats
        });
        self.0.push(Proc {
            name: name.to_owned(),
            child,
            status: None,
            output: Some(output),
            errors: Some(errors),
        });
        Ok(())
    }

    /// Waits until every child has exited, or kills them all at `deadline`. Once one fails,
    /// the others get a few seconds to finish and report.
    fn wait_all(&mut self, deadline: Instant) -> Result<()> {
        let mut deadline = deadline;
        let mut failed = Vec::new();
        loop {
            for p in self.0.iter_mut().filter(|p| p.status.is_none()) {
                if let Some(status) = p.child.try_wait()? {
                    p.status = Some(status);
                    if !status.success() {
                        failed.push(format!("the {} failed ({status})", p.name));
                        deadline = deadline.min(Instant::now() + Duration::from_secs(3));
                    }
                }
            }
            if self.0.iter().all(|p| p.status.is_some()) {
                break;
            }
            if Instant::now() >= deadline {
                for p in self.0.iter_mut().filter(|p| p.status.is_none()) {
                    let _ = p.child.kill();
                    p.status = Some(p.child.wait()?);
                    failed.push(format!("the {} did not finish in time: killed", p.name));
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; ").into())
        }
    }

    /// The `stats` of each child, by name, once its output has ended (call after they exited).
    fn stats(&mut self) -> Vec<(String, HashMap<String, String>)> {
        self.0
            .iter_mut()
            .map(|p| {
                if let Some(h) = p.errors.take() {
                    let _ = h.join();
                }
                let stats = p
                    .output
                    .take()
                    .and_then(|h| h.join().ok())
                    .unwrap_or_default();
                (p.name.clone(), stats)
            })
            .collect()
    }
}

fn get(stats: &HashMap<String, String>, key: &str) -> Option<u64> {
    stats.get(key).and_then(|v| v.parse().ok())
}

fn run_all(prefix: &str, args: &Args) -> Result<()> {
    let png = args
        .png
        .clone()
        .unwrap_or_else(|| default_png_path(std::process::id()));
    let result = run_children(prefix, args, &png);
    // Whatever happened, nothing of this run may stay in /dev/shm.
    let cleanup = check_shm(prefix);
    match (result, cleanup) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) => Err(e),
        (Ok(()), Err(c)) => Err(c),
        (Err(e), Err(c)) => Err(format!("{e}; {c}").into()),
    }
}

fn run_children(prefix: &str, args: &Args, png: &Path) -> Result<()> {
    let timeout = args.timeout.unwrap_or_else(|| {
        let expected = if args.fps > 0.0 {
            args.frames as f64 / args.fps
        } else {
            args.frames as f64 * 0.05
        };
        30.0 + 2.0 * expected
    });
    let deadline = Instant::now() + Duration::from_secs_f64(timeout);
    let common: Vec<String> = [
        ("--topic", prefix.to_owned()),
        ("--width", args.width.to_string()),
        ("--height", args.height.to_string()),
        ("--frames", args.frames.to_string()),
        ("--fps", args.fps.to_string()),
        ("--consumers", args.consumers.to_string()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_owned(), v])
    .collect();
    let frame_mb = frame_bytes(args) as f64 / 1e6;
    println!(
        "image_transfer: {} frames of {}x{} RGB ({frame_mb:.2} MB) to {} consumers, {}, topic {prefix}.frames",
        args.frames,
        args.width,
        args.height,
        args.consumers,
        if args.fps > 0.0 {
            format!("at most {} fps", args.fps)
        } else {
            "as fast as possible".to_owned()
        }
    );

    let mut fleet = Fleet(Vec::new());
    for i in 0..args.consumers {
        let mut role = vec!["consumer".to_owned(), "--index".to_owned(), i.to_string()];
        if i == 0 {
            role.extend(["--png".to_owned(), png.display().to_string()]);
        }
        fleet.spawn(&format!("consumer {i}"), &role, &common)?;
    }
    // The producer waits on the semaphore until every consumer has subscribed.
    fleet.spawn("producer", &["producer".to_owned()], &common)?;
    let waited = fleet.wait_all(deadline);
    let stats = fleet.stats();
    waited?;

    // Every child succeeded: every consumer verified every frame.
    let producer = stats
        .iter()
        .find(|(name, _)| name == "producer")
        .map(|(_, s)| s)
        .ok_or("no producer report")?;
    let consumers: Vec<_> = stats.iter().filter(|(n, _)| n != "producer").collect();
    let start_ns = get(producer, "start_ns").ok_or("the producer sent no start time")?;
    let end_ns = consumers
        .iter()
        .filter_map(|(_, s)| get(s, "last_ns"))
        .max()
        .ok_or("no consumer report")?;
    let secs = end_ns.saturating_sub(start_ns) as f64 / 1e9;
    let delivered = (args.frames * u64::from(args.consumers)) as f64 * frame_mb / 1e3;
    println!("---");
    println!(
        "{} frames x {} consumers in {secs:.2} s: {:.1} fps, delivered {:.2} GB/s ({frame_mb:.2} MB a frame)",
        args.frames,
        args.consumers,
        args.frames as f64 / secs,
        delivered / secs
    );
    let ms = |ns: Option<u64>| ns.map_or("?".to_owned(), |n| format!("{:.3} ms", n as f64 / 1e6));
    for (name, s) in &consumers {
        println!(
            "{name}: latency p50 {}, p99 {}, max {}; {} verified",
            ms(get(s, "p50_ns")),
            ms(get(s, "p99_ns")),
            ms(get(s, "max_ns")),
            get(s, "verified").unwrap_or(0),
        );
    }
    let lost = get(producer, "lost").unwrap_or(0);
    let lagged: u64 = consumers.iter().filter_map(|(_, s)| get(s, "lagged")).sum();
    let skipped: u64 = consumers
        .iter()
        .filter_map(|(_, s)| get(s, "skipped"))
        .sum();
    if lost + lagged + skipped == 0 {
        println!("frames lost or lagged: none");
    } else {
        println!("frames lost: {lost}, lagged: {lagged}, skipped: {skipped}");
    }
    println!(
        "producer waited for consumers {} times",
        get(producer, "backpressure_waits").unwrap_or(0)
    );
    println!("png: {}", png.display());
    Ok(())
}

/// Checks that no shared-memory object of this run is left. Children that were killed may
/// leave theirs behind: those (scoped, and used by nobody alive) are collected.
fn check_shm(prefix: &str) -> Result<()> {
    let ours = || -> Result<Vec<String>> {
        Ok(shmbus::list()?
            .into_iter()
            .map(|n| n.as_str().to_owned())
            .filter(|n| n.starts_with(&format!("{prefix}.")))
            .collect())
    };
    let left = ours()?;
    if left.is_empty() {
        println!("/dev/shm: nothing of this run is left");
        return Ok(());
    }
    // Only scoped segments that no living process uses are removed.
    shmbus::gc()?;
    let still = ours()?;
    println!(
        "/dev/shm: collected {} objects of this run left by dead processes",
        left.len() - still.len()
    );
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!("left in /dev/shm: {}", still.join(", ")).into())
    }
}
