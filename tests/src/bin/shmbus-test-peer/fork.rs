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
