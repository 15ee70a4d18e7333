//! The fork role: a process that makes handles, really forks, and reports what each side can
//! still do with them.

use std::time::Duration;

use clap::Args;
use shmbus::{EventMode, PublishFailure, RecvError, SendFailure, SharedArray, Topic};
use shmbus_tests::Msg;

use super::Fail;

/// Arguments of `fork`.
#[derive(Args)]
pub(crate) struct ForkArgs {
    /// The topic (made with two publisher rows).
    #[arg(long)]
    topic: String,
    /// A scoped array the parent makes before forking.
    #[arg(long)]
    array: String,
    /// A manual-reset event the child waits for before it publishes through its own publisher.
    #[arg(long)]
    go: String,
    /// Messages each side publishes.
    #[arg(long, default_value_t = 10)]
    count: u64,
}

fn topic(a: &ForkArgs) -> Topic {
    Topic::builder(&a.topic).max_publishers(2).capacity(64)
}

/// Parent: publisher, subscriber and array, then `fork`. The parent publishes `count` messages
/// and waits to be killed. The child checks that the inherited handles refuse to act, drops
/// them, waits for `--go`, then publishes `count` messages through a publisher of its own and
/// reads the array the (by then dead) parent filled.
pub(crate) fn fork(a: &ForkArgs) -> Result<(), Fail> {
    let mut publisher = topic(a).publisher::<Msg>()?;
    let subscriber = topic(a).subscriber::<Msg>()?;
    let array = SharedArray::<u64>::options()
        .scoped()
        .create(&a.array, &[1024])
        .map_err(|e| Fail::new("array", e))?;
    array.fill(7);
    let go = shmbus::Event::open_or_create(&a.go, EventMode::ManualReset, false)?;
    // A work queue participant (`<topic>.q`) holding one item.
    let queue = shmbus::QueueBuilder::new(&format!("{}.q", a.topic)).open::<Msg>()?;
    queue.put(Msg::new(0, 0)).map_err(|e| Fail::new("put", e))?;
    use std::io::Write as _;
    let _ = std::io::stdout().flush();

    // SAFETY: this process has one thread (the peer never starts others), so the child may do
    // anything after `fork`; the child never returns into the parent's stack frames above
    // `main` (it exits from this function).
    #[allow(unsafe_code)]
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Fail::new("fork", std::io::Error::last_os_error()));
    }
    let me = u64::from(std::process::id());
    if pid > 0 {
        println!("forked parent={me} child={pid}");
        for i in 0..a.count {
            publisher
                .send(Msg::new(me, i))
                .map_err(|e| Fail::new("send", e))?;
        }
        println!("parent-published n={}", a.count);
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }

    // The child.
    let publish = match publisher.send(Msg::new(me, 0)) {
        Err(e)
            if matches!(
                e.reason(),
                SendFailure::Publish(PublishFailure::UsedAfterFork(_))
            ) =>
        {
            "used-after-fork"
        }
        Err(_) => "other-error",
        Ok(_) => "published",
    };
    let loan = match publisher.loan() {
        Err(shmbus::LoanError::UsedAfterFork(_)) => "used-after-fork",
        Err(_) => "other-error",
        Ok(_) => "loaned",
    };
    let receive = match subscriber.try_recv() {
        Err(RecvError::UsedAfterFork) => "used-after-fork",
        Err(_) => "other-error",
        Ok(_) => "received",
    };
    let queue_put = match queue.try_put(Msg::new(me, 1)) {
        Err(e) if matches!(e.reason(), shmbus::PutFailure::UsedAfterFork(_)) => "used-after-fork",
        Err(_) => "other-error",
        Ok(()) => "put",
    };
    let queue_get = match queue.try_get() {
        Err(shmbus::GetError::UsedAfterFork(_)) => "used-after-fork",
        Err(_) => "other-error",
        Ok(_) => "got",
    };
    println!(
        "child-checked publish={publish} loan={loan} receive={receive} queue_put={queue_put} queue_get={queue_get}"
    );
    // Dropping the parent's handles here must leave the parent's rows and leases alone.
    drop(publisher);
    drop(subscriber);
    drop(queue);
    println!("child-dropped");
    let finish = || -> Result<(), Fail> {
        if !go.wait_timeout(Duration::from_secs(10)) {
            return Err(Fail::new("timeout", "nobody set the go event"));
        }
        let mut own = topic(a).publisher::<Msg>()?;
        for i in 0..a.count {
            own.send(Msg::new(me, i))
                .map_err(|e| Fail::new("send", e))?;
        }
        println!("child-published n={}", a.count);
        let sum: u64 = array.to_vec().iter().sum();
        println!("child-array sum={sum}");
        // Let the subscriber read before this publisher leaves.
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    };
    let code = match finish() {
        Ok(()) => {
            println!("child-done");
            0
        }
        Err(Fail(code, msg)) => {
            println!("error code={code} msg={msg}");
            2
        }
    };
    drop(array);
    drop(go);
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// Arguments of `fork-async`.
#[derive(Args)]
pub(crate) struct ForkAsyncArgs {
    /// A topic the parent makes and awaits before forking.
    #[arg(long)]
    topic: String,
    /// A topic the child makes and awaits after the fork.
    #[arg(long)]
    child_topic: String,
}

/// Sends `value` on `publisher` from another thread after a moment, while the caller awaits.
fn send_soon(mut publisher: shmbus::Publisher<u64>, value: u64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        publisher.send(value).expect("send");
        std::thread::sleep(Duration::from_millis(200));
    })
}

/// The async waiter thread across a fork: the parent awaits a message (starting its waiter
/// thread), then forks with that thread running. The child's inherited subscriber refuses at
/// once (`used-after-fork`, no hang on a thread it does not have); a subscriber the child makes
/// is served by a waiter thread of its own. Prints `child-async inherited=.. own=..` (from the
/// child), then `parent-done status=<child's exit code>`.
pub(crate) fn fork_async(a: &ForkAsyncArgs) -> Result<(), Fail> {
    let publisher = Topic::builder(&a.topic).publisher::<u64>()?;
    let mut subscriber = Topic::builder(&a.topic).subscriber::<u64>()?;
    let feeder = send_soon(publisher, 1);
    let got = futures::executor::block_on(subscriber.recv_async()).map(|s| *s);
    if got.as_ref().ok() != Some(&1) {
        return Err(Fail::new("parent-recv", format!("{got:?}")));
    }
    feeder.join().expect("feeder");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();

    // SAFETY: the child only allocates, starts threads and uses its own handles; glibc's fork
    // handlers leave the allocator usable in the child although the parent has other threads
    // (the waiter thread, which may have held its own lock: the child never touches that lock,
    // it makes a waiter of its own). The child exits from this function.
    #[allow(unsafe_code)]
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Fail::new("fork", std::io::Error::last_os_error()));
    }
    if pid > 0 {
        let status = rustix::process::waitpid(
            rustix::process::Pid::from_raw(pid),
            rustix::process::WaitOptions::empty(),
        )
        .map_err(|e| Fail::new("waitpid", e))?
        .and_then(|(_, s)| s.exit_status());
        println!("parent-done status={}", status.map_or(-1, i64::from));
        return Ok(());
    }
    // A child that hangs (the bug this role looks for) dies with its parent, which the test
    // kills, rather than outliving the test.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let inherited = match futures::executor::block_on(subscriber.recv_async()) {
        Err(RecvError::UsedAfterFork) => "used-after-fork",
        Err(_) => "other-error",
        Ok(_) => "received",
    };
    let own = (|| -> Result<&'static str, Fail> {
        let publisher = Topic::builder(&a.child_topic).publisher::<u64>()?;
        let mut own = Topic::builder(&a.child_topic).subscriber::<u64>()?;
        let feeder = send_soon(publisher, 2);
        let got = futures::executor::block_on(own.recv_async()).map(|s| *s);
        feeder.join().expect("feeder");
        Ok(if got.ok() == Some(2) {
            "received"
        } else {
            "wrong"
        })
    })();
    let code = match own {
        Ok(own) => {
            println!("child-async inherited={inherited} own={own}");
            0
        }
        Err(Fail(code, msg)) => {
            println!("error code={code} msg={msg}");
            2
        }
    };
    drop(subscriber);
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}
