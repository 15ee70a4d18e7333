//! Peer roles for stable type identity (`shmbus::Message`).
//!
//! The types here are this binary's own copies, compiled in this crate: `tests/tests/types.rs`
//! declares the same ones in another crate, so that the two sides share no definition, only
//! the declared names and fields.

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use shmbus::{Message, Publisher, SerdePublisher, SerdeSubscriber, Subscriber};

use super::{Fail, TopicArgs};

/// A pose, as `types.rs` declares it.
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable, Message)]
#[repr(C)]
#[shmbus(name = "test.Pose")]
pub(crate) struct Pose {
    x: f64,
    y: f64,
    theta: f64,
    stamp: u64,
}

/// `Pose` with `x` and `y` swapped: the same name, size and field types, other offsets.
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable, Message)]
#[repr(C)]
#[shmbus(name = "test.Pose")]
pub(crate) struct PoseReordered {
    y: f64,
    x: f64,
    theta: f64,
    stamp: u64,
}

/// A tuple struct.
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable, Message)]
#[repr(C)]
#[shmbus(name = "test.Cell")]
pub(crate) struct Cell(u32, f32);

/// A generic struct.
#[derive(Clone, Copy, Debug, PartialEq, Message)]
#[repr(C)]
pub(crate) struct Stamped<T> {
    stamp: u64,
    value: T,
}

/// A serde message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Message)]
#[shmbus(name = "test.Plan")]
pub(crate) struct Plan {
    label: String,
    waypoints: Vec<[f64; 2]>,
    speed: Option<f32>,
}

impl Pose {
    /// Message `i` of a stream (as `types.rs` computes it).
    fn at(i: u64) -> Pose {
        Pose {
            x: i as f64,
            y: -(i as f64),
            theta: 0.25,
            stamp: 1000 + i,
        }
    }
}

impl Plan {
    /// Message `i` of a stream (as `types.rs` computes it).
    fn at(i: u64) -> Plan {
        Plan {
            label: format!("plan {i}"),
            waypoints: (0..i % 4).map(|k| [k as f64, i as f64]).collect(),
            speed: (i % 2 == 0).then_some(0.5),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum IdentType {
    /// [`Pose`], joined with `Topic::join`.
    Pose,
    /// [`PoseReordered`], joined with `Topic::join`.
    PoseReordered,
    /// [`Plan`] (serde), joined with `Topic::join`.
    Plan,
}

#[derive(Args)]
pub(crate) struct IdentOpenArgs {
    #[command(flatten)]
    topic: TopicArgs,
    #[arg(long = "ident", value_enum)]
    ident: IdentType,
    /// Join as a publisher and publish `--count` messages (`Pose::at`, `Plan::at`).
    #[arg(long)]
    publisher: bool,
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Join with `Topic::publisher`/`subscriber` (Rust's type name) instead of `Topic::join`.
    #[arg(long)]
    plain: bool,
    /// After joining (and publishing), keep the topic open until killed.
    #[arg(long)]
    hold: bool,
}

/// Prints `layout type=<key> name=<NAME> value=<LAYOUT, 16 hex digits>` for each type above.
pub(crate) fn ident_layouts() -> Result<(), Fail> {
    fn print<T: Message>(key: &str) {
        println!(
            "layout type={key} name={} value={:016x}",
            T::NAME,
            T::LAYOUT
        );
    }
    print::<Pose>("pose");
    print::<PoseReordered>("pose-reordered");
    print::<Cell>("cell");
    print::<Stamped<[f32; 3]>>("stamped");
    print::<Plan>("plan");
    println!("done");
    Ok(())
}

/// Joins the topic with one of the types above; prints `ok`, then `sent count=N` for a
/// publisher.
pub(crate) fn ident_open(a: &IdentOpenArgs) -> Result<(), Fail> {
    let t = a.topic.builder();
    let send_err = |e: &dyn std::fmt::Display| Fail::new("send", e);
    let joined: Box<dyn std::any::Any> = match (a.ident, a.publisher, a.plain) {
        (IdentType::Pose, true, plain) => {
            let mut p: Publisher<Pose> = if plain { t.publisher()? } else { t.join()? };
            println!("ok");
            for i in 0..a.count {
                p.send(Pose::at(i)).map_err(|e| send_err(&e))?;
            }
            Box::new(p)
        }
        (IdentType::Pose, false, plain) => {
            let s: Subscriber<Pose> = if plain { t.subscriber()? } else { t.join()? };
            println!("ok");
            Box::new(s)
        }
        (IdentType::PoseReordered, true, false) => {
            let p = t.join::<Publisher<PoseReordered>>()?;
            println!("ok");
            Box::new(p)
        }
        (IdentType::PoseReordered, false, false) => {
            let s = t.join::<Subscriber<PoseReordered>>()?;
            println!("ok");
            Box::new(s)
        }
        (IdentType::Plan, true, false) => {
            let mut p = t.join::<SerdePublisher<Plan>>()?;
            println!("ok");
            for i in 0..a.count {
                p.send(Plan::at(i)).map_err(|e| send_err(&e))?;
            }
            Box::new(p)
        }
        (IdentType::Plan, false, false) => {
            let s = t.join::<SerdeSubscriber<Plan>>()?;
            println!("ok");
            Box::new(s)
        }
        (_, _, true) => return Err(Fail::new("usage", "--plain supports pose only")),
    };
    if a.publisher {
        println!("sent count={}", a.count);
    }
    if a.hold {
        super::sleep_forever();
    }
    drop(joined);
    Ok(())
}
