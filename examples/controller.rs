//! A controller that waits on camera frames, poses and a stop signal at once (a `WaitSet`), the
//! example of the guide's "Waiting on many things".
//!
//! `cargo run --example controller` starts a camera process (small frames on an array topic,
//! until told to stop) and a pose process (`POSES` poses, then a stop signal), and runs the
//! controller in this process: one thread, one `wait` for everything, plus a 10 Hz heartbeat.
//! It checks that every pose arrived in order and that frames kept coming.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use shmbus::{Event, EventMode, Readiness, RecvError, Topic, WaitSet};

#[path = "common/procs.rs"]
mod procs;

const POSES: u64 = 500;

#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct FrameInfo {
    number: u64,
}

#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Pose {
    seq: u64,
    x: f32,
    y: f32,
}

fn topics(name: &str) -> (Topic, Topic) {
    (
        Topic::builder(&format!("{name}.frames")).capacity(4),
        Topic::builder(&format!("{name}.poses")).capacity(1024),
    )
}

fn run(args: &[&str]) -> Result<(), Box<dyn std::error::Error>> {
    match args {
        ["camera", name] => {
            let stop = Event::open(&format!("{name}.stop"))?;
            let mut camera = topics(name).0.array_publisher::<FrameInfo>()?;
            let mut number = 0;
            while !stop.is_set() {
                let mut frame = camera.loan::<u8>(&[48, 64])?;
                let (pixels, info) = frame.parts_mut();
                pixels.fill((number % 251) as u8);
                *info = FrameInfo { number };
                frame.publish().map_err(|e| e.to_string())?;
                number += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(())
        }
        ["poses", name] => {
            let stop = Event::open(&format!("{name}.stop"))?;
            let mut poses = topics(name).1.publisher::<Pose>()?;
            for seq in 0..POSES {
                let t = seq as f32 / 100.0;
                poses.send(Pose {
                    seq,
                    x: t.cos(),
                    y: t.sin(),
                })?;
                std::thread::sleep(Duration::from_micros(500));
            }
            stop.set(); // the operator says stop
            Ok(())
        }
        _ => controller(),
    }
}

fn controller() -> Result<(), Box<dyn std::error::Error>> {
    let name = procs::unique("controller");
    let (frame_topic, pose_topic) = topics(&name);
    let frames = frame_topic.array_subscriber::<FrameInfo>()?;
    let poses = pose_topic.subscriber::<Pose>()?;
    let stop = Event::open_or_create(&format!("{name}.stop"), EventMode::ManualReset, false)?;

    let mut set = WaitSet::new()?;
    let frame_key = set.attach(&frames)?;
    let pose_key = set.attach(&poses)?;
    let stop_key = set.attach(&stop)?;
    let tick = set.attach_interval(Duration::from_millis(100))?;
    let children = vec![
        procs::spawn(&["camera", &name])?,
        procs::spawn(&["poses", &name])?,
    ];

    let start = Instant::now();
    let (mut n_frames, mut next_pose, mut beats, mut wakes) = (0u64, 0u64, 0u64, 0u64);
    let mut drain = |frames_too: bool| -> Result<(), Box<dyn std::error::Error>> {
        loop {
            match poses.try_recv() {
                Ok(p) if p.seq == next_pose => next_pose += 1,
                Ok(p) => return Err(format!("pose {} after {next_pose}", p.seq).into()),
                Err(RecvError::Empty) => break,
                Err(e) => return Err(e.into()),
            }
        }
        if !frames_too {
            return Ok(());
        }
        loop {
            match frames.try_recv() {
                Ok(f) => {
                    let pixels = f.as_slice::<u8>()?;
                    if pixels
                        .iter()
                        .any(|&p| u64::from(p) != f.meta().number % 251)
                    {
                        return Err(format!("frame {} is torn", f.meta().number).into());
                    }
                    n_frames += 1;
                }
                Err(RecvError::Empty) => break,
                Err(RecvError::Lagged(_)) => {} // overwritten while we were busy: fine for video
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    };
    'control: loop {
        if start.elapsed() > Duration::from_secs(30) {
            return Err("no stop signal within 30 s".into());
        }
        let ready = set.wait_timeout(Duration::from_secs(5))?;
        wakes += 1;
        for (key, how) in &ready {
            if key == stop_key {
                drain(true)?; // what came before the stop
                break 'control;
            } else if how == Readiness::Disconnected {
                set.detach(key);
            } else if key == frame_key {
                drain(true)?;
            } else if key == pose_key {
                drain(false)?;
            } else if key == tick {
                beats += 1;
            }
        }
    }
    procs::wait_all(children)?;
    println!(
        "controller: {n_frames} frames, {next_pose} poses, {beats} heartbeats in {:?} ({wakes} wakes)",
        start.elapsed()
    );
    if next_pose != POSES || n_frames == 0 {
        return Err(format!("expected {POSES} poses and some frames").into());
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("controller: {e}");
            ExitCode::FAILURE
        }
    }
}

example_tests!();
