//! Shared-value and barrier roles.

use std::time::Duration;

use clap::Args;
use shmbus::{Barrier, BarrierError, Value};

use super::Fail;

/// Arguments of `value-add`.
#[derive(Args)]
pub(crate) struct ValueAddArgs {
    #[arg(long)]
    name: String,
    #[arg(long)]
    count: u64,
}

/// Adds 1 to the `u64` value `--name` `--count` times, then prints `done`.
pub(crate) fn value_add(a: &ValueAddArgs) -> Result<(), Fail> {
    let v = Value::open_or_create(&a.name, 0u64)?;
    println!("ready");
    for _ in 0..a.count {
        v.fetch_add(1);
    }
    println!("done value={}", v.load().map_err(|e| Fail::new("lock", e))?);
    Ok(())
}

/// The locked value of the tests: 32 words that every complete update keeps equal.
pub(crate) type Words = [u64; 32];

/// Arguments of `value-scribble`.
#[derive(Args)]
pub(crate) struct ValueScribbleArgs {
    #[arg(long)]
    name: String,
}

/// Updates the `[u64; 32]` value `--name` (every word to the first plus one) until killed.
pub(crate) fn value_scribble(a: &ValueScribbleArgs) -> Result<(), Fail> {
    let v = Value::open_or_create(&a.name, [0u64; 32])?;
    println!("ready");
    loop {
        v.update(|w: Words| [w[0] + 1; 32])
            .map_err(|e| Fail::new("lock", e))?;
    }
}

/// Arguments of `barrier-wait`.
#[derive(Args)]
pub(crate) struct BarrierArgs {
    #[arg(long)]
    name: String,
    #[arg(long)]
    parties: u32,
    /// Generations to pass (0: join, print `ready`, and never arrive, until killed).
    #[arg(long, default_value_t = 1)]
    rounds: u32,
}

/// Passes `--rounds` generations, printing `passed round= leader=` or `broken round=`.
pub(crate) fn barrier_wait(a: &BarrierArgs) -> Result<(), Fail> {
    let b = Barrier::open(&a.name, a.parties)?;
    println!("ready");
    if a.rounds == 0 {
        super::sleep_forever();
    }
    for r in 0..a.rounds {
        match b.wait_timeout(Duration::from_secs(10)) {
            Ok(leader) => println!("passed round={r} leader={leader}"),
            Err(BarrierError::PartyDied) => println!("broken round={r}"),
            Err(e) => return Err(Fail::new("barrier", e)),
        }
    }
    println!("done");
    Ok(())
}

/// Arguments of `shared-update`.
#[derive(Args)]
pub(crate) struct SharedArgs {
    #[arg(long)]
    name: String,
    /// Updates (0: until killed).
    #[arg(long, default_value_t = 0)]
    count: u64,
}

/// Increments the shared `Tally` `--count` times (or until killed), then prints `done`.
pub(crate) fn shared_update(a: &SharedArgs) -> Result<(), Fail> {
    let s = shmbus::Shared::open_or_create(&a.name, 4096, &shmbus_tests::Tally::default())?;
    println!("ready");
    let mut i = 0;
    while a.count == 0 || i < a.count {
        s.update(shmbus_tests::Tally::bump)
            .map_err(|e| Fail::new("update", e))?;
        i += 1;
    }
    println!("done");
    Ok(())
}
