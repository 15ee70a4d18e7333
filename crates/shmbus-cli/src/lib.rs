//! `shmbus`: see, check and clean up the shmbus objects of this machine.
//!
//! ```text
//! shmbus ls [PREFIX]                      every object: kind, type, size, users, stale or not
//! shmbus inspect NAME                     header, QoS, counters, publishers and subscribers
//! shmbus echo TOPIC [--count N] [--as SPEC]
//!                                         print messages (JSON when the layout is known, else hex)
//! shmbus hz TOPIC [--window N] [--duration SECS]
//!                                         message rate, intervals and publish-to-receive latency
//! shmbus rm NAME... [--force]             remove objects (and a topic's unused pool segments)
//! shmbus gc [PREFIX] [--unreadable]       remove every scoped object no live process uses; list
//!                                         (--unreadable: remove) unreadable files nobody holds
//! ```
//!
//! Every command takes `--json` and `--timeout SECS`. Names are shmbus names (`demo.frames`),
//! not file names; `/dev/shm/shmbus.demo.frames` is accepted too. An unknown name fails with
//! suggestions ("did you mean ...?"). Exit status: 0 on success, 1 on an error (one line on
//! standard error), 2 on a usage error.
//!
//! # Stuck objects (`--timeout`)
//!
//! Opening an object waits, boundedly, for a header that is not ready yet, or while its last
//! user is closing it. A broken or hostile segment (its state word set to closed while
//! processes use it, a header stuck in its initial state) would make that wait run out, so every
//! command that opens something (`ls`, `inspect`, `echo`, `hz`, `rm`; `gc` only takes locks that
//! are free and never waits) waits at most `--timeout` seconds (default 2) *in all*: once that
//! is spent, each further open gets one short try, so `ls` over many broken objects still ends
//! after about `--timeout`. An object that does not open is reported, never waited on longer:
//! `ls` lists it as kind `?` with the reason in `NOTE` (`problem` and `stuck` in JSON),
//! `inspect` shows what its header says and then fails with the reason, `echo` and `hz` fail
//! with it. With `echo`, `--timeout` also bounds the wait for each message (without it, `echo`
//! waits for messages forever). A file that is not a regular file (a FIFO) is reported, never
//! opened.
//!
//! # Unreadable files (`gc`)
//!
//! A file under the shmbus prefix that is not a readable segment of this format (corrupt,
//! foreign, written by another format version, unreadable for this user) is never removed
//! silently. `gc` lists each one with the reason and whether a process holds it. `gc
//! --unreadable` removes those that no process holds; one that a process holds is kept (`shmbus
//! rm --force NAME` removes its name; the holder keeps its mapping). `ls` shows them as kind `?`.
//!
//! Looking never changes anything: `ls` and `inspect` read headers, and attach to a topic some
//! process uses without joining it (a stale topic is not attached at all, since opening it would
//! reclaim it). `echo` and `hz` join as an ordinary subscriber that reads new messages only; on
//! a back-pressure topic a slow reader holds the publisher back like any subscriber.
//!
//! # Decoding messages (`echo`)
//!
//! A topic records its type's name, size, alignment and codec. `echo` decodes by itself the
//! types it knows by name: `u8`..`u64`, `i8`..`i64`, `f32`, `f64`, `bool`, `String`/`&str`, and
//! `Vec<T>`, `Option<T>`, `[T; N]` of those, in `Pod` or serde (postcard) topics. Array topics
//! (type `array+<metadata>`) print their block descriptor (dtype, shape, pool, segment, block,
//! generation) and the metadata bytes in hex. Anything else is a hex dump, unless `--as` gives
//! the layout, as fields in order or as one type:
//!
//! ```text
//! --as 'seq:u64,x:f64,y:f64,theta:f64'         a #[repr(C)] Pod struct (padding computed)
//! --as 'seq:u64,mode:string,warnings:[string]' a serde struct (postcard)
//! --as 'frame:u64,width:u32,height:u32,send_ns:u64'  an array topic's metadata
//! ```
//!
//! Types: `u8 u16 u32 u64 i8 i16 i32 i64 f32 f64 bool string`, `[T]` (sequence), `[T; N]`,
//! `T?` (option), `{a:T,b:U}` (nested struct). A `Pod` layout must have the topic's type size.
//! Bytes that do not decode are reported with the offset of the problem and dumped in hex.
//!
//! # JSON (`--json`)
//!
//! `ls`, `inspect`, `rm`, `gc` and `hz` print one JSON document; `echo` prints one document
//! per line (JSON Lines). Field names are stable; absent values are `null`.
//!
//! - `ls`: `{"objects": [Entry]}`, Entry = `name`, `kind` (`topic`, `array`, `pool`, `queue`,
//!   `mutex`, `semaphore`, `event`, `value`, or `?` when the header is unreadable or the object
//!   cannot be opened), `type` (`{name, size, align, codec, fingerprint}`), `dtype`, `shape`
//!   (arrays), `size` (file bytes), `lifetime` (`scoped`/`persistent`), `in_use`, `stale` (scoped and no live user:
//!   `gc` removes it), `publishers`, `subscribers` (topics), `owners` (`[{pid, alive, role}]`,
//!   role `publisher`, `subscriber` or `attached`), `creator_pid`, `topic` (pools: the topic
//!   they serve), `problem` (`corrupt: ...`, another format version, `cannot be opened: ...`),
//!   `stuck` (why an open did not finish within `--timeout`: `not_initialised`,
//!   `closed_while_in_use`, `stale_not_removable`, `locked_exclusively`, `replaced`),
//!   `bridged` (topics a `shmbus-bridge` of this machine carries: `out` or `in`; else null).
//! - `inspect`: `name`, `kind`, `format_version`, `type`, `lifetime`, `size`, `payload_size`,
//!   `mode`, `creator_pid`, `creator_alive`, `created_unix_ns`, `created`, `in_use`, `stale`,
//!   `owners`, `problem`, `stuck`, and by kind `topic` (`qos` {capacity, slot_size, slots,
//!   max_subscribers, max_publishers, max_held, overflow, timestamps}, `counters` {published,
//!   lagged, lost, backpressure_waits}, `participants_read`, `publishers` [{row, pid, alive}],
//!   `subscribers` [{row, pid, alive, cursor, lag, lagged}], `note`, `pool_segments`), `array`
//!   {dtype, itemsize, shape, strides, data_bytes} or `pool` {topic, pool_id, index,
//!   block_size, block_count}.
//! - `rm`: `{"removed": [{name, kind, note}], "kept": [{name, reason}]}`.
//! - `gc`: `{"removed": [{name, kind, note}], "unreadable": [{file, name, reason, in_use,
//!   removed}]}` (`name` is `null` when the file name holds no valid shmbus name).
//! - `hz`: `{topic, messages, lagged, elapsed_s, window, rate_hz, interval_s, latency_ns,
//!   latency_note}`, the last three statistics as `{mean, min, max, std_dev}`. With `--json`,
//!   `hz` runs for `--duration` (5 s by default) and prints once.
//! - `echo`: per message `{seq, value}` (decoded), `{seq, array, meta | meta_hex}` (array
//!   topics), or `{seq, hex, note}`; `error` when decoding failed; `{"lagged": n}` when
//!   messages were missed.
#![forbid(unsafe_code)]

mod budget;
mod commands;
mod decode;
mod error;
mod names;
mod output;
mod spec;
mod survey;
mod watch;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::budget::{Budget, DEFAULT_TIMEOUT};
use crate::error::CliError;
use crate::output::Out;

#[derive(Parser, Debug)]
#[command(
    name = "shmbus",
    version,
    about = "See, check and clean up shmbus topics, arrays and locks on this machine"
)]
struct Cli {
    /// Print JSON for scripts instead of tables (one document; one per line for `echo`).
    #[arg(long, global = true)]
    json: bool,
    /// Wait at most this long, in all, for objects that do not open [default: 2].
    ///
    /// A segment that does not open in time (a header stuck in its initial state, a state word
    /// set to closed while processes use it) is reported with the reason instead: `ls` lists it
    /// as kind `?`, `inspect`, `echo` and `hz` fail with it. The time is shared by all the opens
    /// of one command; once it is spent, each further open gets one short try. `echo` also
    /// gives up (exit status 1) when no message comes for this long; without --timeout it waits
    /// for messages forever.
    #[arg(long, global = true, value_name = "SECS")]
    timeout: Option<f64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List every shmbus object: kind, type, size, users, and whether it is stale.
    Ls {
        /// Only names that start with this.
        prefix: Option<String>,
    },
    /// Show an object's header, QoS, counters and participants.
    Inspect {
        /// The object's shmbus name.
        name: String,
    },
    /// Print a topic's messages: JSON when the layout is known, otherwise a hex dump.
    Echo {
        /// The topic.
        topic: String,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// The message layout, e.g. 'seq:u64,x:f64' or 'seq:u64,mode:string,warnings:[string]'.
        #[arg(long = "as", value_name = "SPEC")]
        layout: Option<String>,
    },
    /// Measure a topic's message rate and publish-to-receive latency.
    Hz {
        /// The topic.
        topic: String,
        /// Intervals the statistics are computed over.
        #[arg(long, default_value_t = 10_000)]
        window: usize,
        /// Stop after this many seconds (default: run until interrupted; 5 with --json).
        #[arg(long, value_name = "SECS")]
        duration: Option<f64>,
    },
    /// Remove objects by name (a topic's unused pool segments with it).
    Rm {
        /// The objects' shmbus names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Remove objects that live processes still use (they keep their mapping).
        #[arg(long)]
        force: bool,
    },
    /// Remove every scoped object that no live process uses; list unreadable files.
    ///
    /// Persistent objects are kept. Files under the shmbus prefix that are not readable shmbus
    /// segments (corrupt, foreign, another format version) are listed with the reason and
    /// whether a process holds them, and kept unless --unreadable.
    Gc {
        /// Only names that start with this.
        prefix: Option<String>,
        /// Also remove the unreadable files that no process holds.
        ///
        /// A file that a process holds is kept; `shmbus rm --force NAME` removes its name (the
        /// holder keeps its mapping).
        #[arg(long)]
        unreadable: bool,
    },
}

fn seconds(s: Option<f64>, what: &str) -> Result<Option<Duration>, CliError> {
    s.map(|s| {
        Duration::try_from_secs_f64(s)
            .map_err(|_| CliError::Usage(format!("--{what} must be a number of seconds >= 0")))
    })
    .transpose()
}

fn run(cli: Cli) -> Result<(), CliError> {
    let mut out = Out::new();
    let json = cli.json;
    let timeout = seconds(cli.timeout, "timeout")?;
    let budget = Budget::new(timeout.unwrap_or(DEFAULT_TIMEOUT));
    match cli.command {
        Command::Ls { prefix } => commands::ls(&mut out, prefix.as_deref(), &budget, json)?,
        Command::Inspect { name } => commands::inspect(&mut out, &name, &budget, json)?,
        Command::Echo {
            topic,
            count,
            layout,
        } => watch::echo(
            &mut out,
            &topic,
            count,
            layout.as_deref(),
            &budget,
            timeout,
            json,
        )?,
        Command::Hz {
            topic,
            window,
            duration,
        } => {
            let duration = match seconds(duration, "duration")? {
                None if json => Some(Duration::from_secs(5)),
                d => d,
            };
            watch::hz(&mut out, &topic, window, duration, &budget, json)?
        }
        Command::Rm { names, force } => commands::rm(&mut out, &names, force, &budget, json)?,
        Command::Gc { prefix, unreadable } => {
            commands::gc(&mut out, prefix.as_deref(), unreadable, json)?
        }
    }
    out.flush()
}

/// A remark on standard error that is not an error.
pub(crate) fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "shmbus: {msg}");
}

/// Runs the `shmbus` command on this process's arguments (the binary's `main`).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) | Err(CliError::BrokenPipe) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "shmbus: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "shmbus", "echo", "t", "--as", "a:u8", "--count", "3", "--json",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(
            cli.timeout, None,
            "echo waits for messages forever by default"
        );
        assert!(Cli::try_parse_from(["shmbus", "rm"]).is_err());
        // --timeout is global: before or after the command, for every command.
        for args in [
            &["shmbus", "--timeout", "0.5", "ls"][..],
            &["shmbus", "inspect", "x", "--timeout", "0.5"],
            &["shmbus", "echo", "t", "--count", "3", "--timeout", "0.5"],
            &["shmbus", "gc", "--timeout", "0.5", "--unreadable"],
            &["shmbus", "rm", "x", "--timeout", "0.5"],
            &["shmbus", "hz", "t", "--timeout", "0.5"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(cli.timeout, Some(0.5), "{args:?}");
        }
        assert!(seconds(Some(-1.0), "timeout").is_err());
        assert!(seconds(Some(f64::NAN), "timeout").is_err());
    }
}
