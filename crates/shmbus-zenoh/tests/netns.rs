//! The bridge between "machines" simulated on this one: network namespaces joined by veth pairs
//! (or a Linux bridge for three), each machine with its own private `/dev/shm` (a mount
//! namespace held by a sleeping process that the machine's other processes join with
//! `nsenter`). Real bridges, real publishers and subscribers (`shmbus-bridge-probe`).
//!
//! Needs root (`ip netns`, `mount`): without it the tests fail, or print `SKIPPED:` and pass when
//! `SHMBUS_ALLOW_SKIP=1` is set. CI runs as root and runs them.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const BRIDGE: &str = env!("CARGO_BIN_EXE_shmbus-bridge");
const PROBE: &str = env!("CARGO_BIN_EXE_shmbus-bridge-probe");
const STEP: Duration = Duration::from_secs(20);

/// The `shmbus` command of this build (a binary of the workspace's `shmbus-cli`, beside this
/// test's own directory).
fn cli() -> String {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let cli = dir.join("shmbus");
    assert!(
        cli.exists(),
        "{} is missing: build the workspace (cargo build -p shmbus-cli) first",
        cli.display()
    );
    cli.display().to_string()
}

/// `true` if the test can run; else fails (or, with `SHMBUS_ALLOW_SKIP=1`, says SKIPPED).
fn can_run(test: &str) -> bool {
    let root = rustix::process::geteuid().is_root();
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    let nsenter = Command::new("nsenter")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if root && ip && nsenter {
        return true;
    }
    let why =
        format!("{test} needs root, ip and nsenter (root={root}, ip={ip}, nsenter={nsenter})");
    if std::env::var_os("SHMBUS_ALLOW_SKIP").is_some() {
        println!("SKIPPED: {why}");
        false
    } else {
        panic!("{why}; set SHMBUS_ALLOW_SKIP=1 to skip");
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A process of a machine, its stdout read line by line.
struct Proc {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn new(mut child: Child) -> Proc {
        let out: ChildStdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line starting with `tag`, within `timeout`.
    fn expect(&mut self, tag: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(tag) {
                        return l;
                    }
                }
                Err(_) => panic!("no {tag:?} within {timeout:?}; saw {:?}", self.seen),
            }
        }
    }

    /// Whether a line starting with `tag` comes within `timeout`.
    fn comes(&mut self, tag: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(tag) {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// Drops the lines read so far.
    fn skip_pending(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
    }

    fn signal(&mut self, sig: rustix::process::Signal) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }

    /// SIGTERM, then the exit status (SIGKILL after `STEP`).
    fn stop(&mut self) -> bool {
        self.signal(rustix::process::Signal::TERM);
        self.wait()
    }

    fn wait(&mut self) -> bool {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fields `key=value` of a summary line.
fn field(line: &str, key: &str) -> i64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .parse()
        .unwrap()
}

/// A machine: a network namespace and a process holding a mount namespace with a private
/// `/dev/shm`.
struct Machine {
    ns: String,
    addr: String,
    holder: Child,
}

impl Machine {
    fn spawn(&self, program: &str, args: &[&str]) -> Proc {
        let child = Command::new("nsenter")
            .args(["-t", &self.holder.id().to_string(), "-m", "-n", program])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Proc::new(child)
    }

    fn endpoint(&self) -> String {
        format!("tcp/{}:7447", self.addr)
    }

    /// A bridge of this machine, once it says it is ready.
    fn bridge(&self, args: &[&str]) -> Proc {
        let mut p = self.spawn(BRIDGE, args);
        p.expect("bridge ready", STEP);
        p
    }

    /// What `program args` prints, run on this machine.
    fn output(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .args(["-t", &self.holder.id().to_string(), "-m", "-n", program])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{program} {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn files(&self) -> Vec<String> {
        let out = Command::new("nsenter")
            .args(["-t", &self.holder.id().to_string(), "-m", "ls", "/dev/shm"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Machines on one link (two: a veth pair; three: a Linux bridge in a namespace of its own).
struct Net {
    tag: String,
    machines: Vec<Machine>,
    /// The interface of each machine, in its namespace.
    ifaces: Vec<String>,
}

impl Net {
    fn new(test: &str, n: usize) -> Net {
        // Short, unique names: interface names are at most 15 bytes.
        let tag = format!("z{}{}", std::process::id() % 100_000, &test[..2]);
        let mut net = Net {
            tag: tag.clone(),
            machines: Vec::new(),
            ifaces: Vec::new(),
        };
        let hub = format!("{tag}h");
        if n > 2 {
            run(&["ip", "netns", "add", &hub]);
            run(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"]);
            run(&["ip", "-n", &hub, "link", "set", "br0", "up"]);
        }
        for i in 0..n {
            let ns = format!("{tag}{i}");
            run(&["ip", "netns", "add", &ns]);
            net.ifaces.push(format!("{tag}e{i}"));
            net.machines.push(Machine {
                ns,
                addr: format!("10.78.{}.{}", std::process::id() % 200, i + 1),
                holder: Command::new("ip")
                    .args(["netns", "exec", &format!("{tag}{i}")])
                    .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
                    .arg("mount -t tmpfs -o size=256m tmpfs /dev/shm && exec sleep 1000000")
                    .spawn()
                    .unwrap(),
            });
        }
        if n == 2 {
            let (a, b) = (&net.ifaces[0], &net.ifaces[1]);
            run(&["ip", "link", "add", a, "type", "veth", "peer", "name", b]);
            run(&["ip", "link", "set", a, "netns", &net.machines[0].ns]);
            run(&["ip", "link", "set", b, "netns", &net.machines[1].ns]);
        } else {
            for i in 0..n {
                let (e, p) = (&net.ifaces[i], format!("{tag}p{i}"));
                run(&["ip", "link", "add", e, "type", "veth", "peer", "name", &p]);
                run(&["ip", "link", "set", e, "netns", &net.machines[i].ns]);
                run(&["ip", "link", "set", &p, "netns", &hub]);
                run(&["ip", "-n", &hub, "link", "set", &p, "master", "br0"]);
                run(&["ip", "-n", &hub, "link", "set", &p, "up"]);
            }
        }
        for (m, e) in net.machines.iter().zip(&net.ifaces) {
            run(&[
                "ip",
                "-n",
                &m.ns,
                "addr",
                "add",
                &format!("{}/24", m.addr),
                "dev",
                e,
            ]);
            run(&["ip", "-n", &m.ns, "link", "set", e, "up"]);
            run(&["ip", "-n", &m.ns, "link", "set", "lo", "up"]);
        }
        // The holders have mounted their /dev/shm when `ls` there shows an empty tmpfs.
        std::thread::sleep(Duration::from_millis(200));
        net
    }

    /// The usual pair: machine 0's bridge listens and exports `demo.*`, machine 1's connects
    /// and imports it.
    fn one_way(&self) -> (Proc, Proc) {
        let listen = self.machines[0].endpoint();
        let a = self.machines[0].bridge(&["--listen", &listen, "--export", "demo.*"]);
        let b = self.machines[1].bridge(&["--connect", &listen, "--import", "demo.*"]);
        (a, b)
    }

    fn set_link(&self, machine: usize, up: bool) {
        let m = &self.machines[machine];
        run(&[
            "ip",
            "-n",
            &m.ns,
            "link",
            "set",
            &self.ifaces[machine],
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for m in &mut self.machines {
            let _ = m.holder.kill();
            let _ = m.holder.wait();
            let _ = Command::new("ip").args(["netns", "del", &m.ns]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &format!("{}h", self.tag)])
            .status();
    }
}

/// A probe on `m`: `args` split at spaces (no argument holds one).
fn probe(m: &Machine, args: &str) -> Proc {
    m.spawn(PROBE, &args.split_whitespace().collect::<Vec<_>>())
}

/// `count` messages of `kind` from a probe on `from` to a probe on `to`: the summary line.
fn carry(net: &Net, from: usize, to: usize, topic: &str, kind: &str, count: u64) -> String {
    let n = count.to_string();
    let mut recv = net.machines[to].spawn(
        PROBE,
        &["recv", "--topic", topic, "--kind", kind, "--count", &n],
    );
    recv.expect("ready", STEP);
    let mut send = net.machines[from].spawn(
        PROBE,
        &[
            "send",
            "--topic",
            topic,
            "--kind",
            kind,
            "--count",
            &n,
            "--back-pressure",
            "--wait-subscribers",
            "1",
            "--settle-ms",
            "500",
        ],
    );
    send.expect("sent n=", STEP);
    let got = recv.expect("got", STEP);
    assert!(send.wait() && recv.wait(), "{got}");
    got
}

fn assert_all(got: &str, count: i64) {
    assert_eq!(field(got, "n"), count, "{got}");
    assert_eq!(field(got, "first"), 0, "{got}");
    for k in ["gaps", "dup", "bad"] {
        assert_eq!(field(got, k), 0, "{got}");
    }
}

#[test]
fn pod_serde_and_array_topics_cross_to_another_machine_intact_and_in_order() {
    if !can_run("crossing") {
        return;
    }
    let net = Net::new("cross", 2);
    let (mut ba, mut bb) = net.one_way();
    for kind in ["pod", "serde", "array"] {
        let got = carry(&net, 0, 1, &format!("demo.{kind}"), kind, 300);
        assert_all(&got, 300);
        println!("{kind}: {got}");
    }
    assert!(ba.stop() && bb.stop());
    let summary = bb.expect("bridge stopped", STEP);
    assert_eq!(field(&summary, "imported"), 900, "{summary}");
    assert_eq!(field(&summary, "refused"), 0, "{summary}");
    // Everyone left: the machines' /dev/shm are empty again.
    for m in &net.machines {
        let left: Vec<String> = m.files();
        assert!(left.is_empty(), "left in {}: {left:?}", m.ns);
    }
}

#[test]
fn bridges_that_carry_a_topic_both_ways_on_three_machines_never_loop() {
    if !can_run("loops") {
        return;
    }
    let net = Net::new("loop", 3);
    let first = net.machines[0].endpoint();
    let bridges: Vec<Proc> = net
        .machines
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let listen = m.endpoint();
            let mut args = vec![
                "--listen", &listen, "--export", "demo.*", "--import", "demo.*",
            ];
            if i > 0 {
                args.extend(["--connect", &first]);
            }
            m.bridge(&args)
        })
        .collect();
    // Receivers everywhere, the sender's machine included: each must see every message once.
    let receivers: Vec<Proc> = net
        .machines
        .iter()
        .map(|m| {
            let mut r = probe(m, "recv --topic demo.loop --back-pressure --for-ms 6000");
            r.expect("ready", STEP);
            r
        })
        .collect();
    let mut send = probe(
        &net.machines[0],
        "send --topic demo.loop --count 200 --back-pressure --wait-subscribers 2 --settle-ms 1000",
    );
    send.expect("sent n=200", STEP);
    for (i, mut r) in receivers.into_iter().enumerate() {
        let got = r.expect("got", STEP);
        assert_all(&got, 200);
        println!("machine {i}: {got}");
    }
    assert!(send.wait());
    for mut b in bridges {
        assert!(b.stop());
    }
}

#[test]
fn a_killed_bridge_and_a_cut_link_never_hang_publishers_and_forwarding_resumes() {
    if !can_run("outages") {
        return;
    }
    let net = Net::new("outage", 2);
    let (a, b) = (&net.machines[0], &net.machines[1]);
    let listen = a.endpoint();
    let mut ba = a.bridge(&["--listen", &listen, "--export", "demo.*"]);
    let importer = ["--connect", listen.as_str(), "--import", "demo.*"];
    let mut bb = b.bridge(&importer);
    let mut recv = probe(b, "recv --topic demo.live --for-ms 60000 --progress");
    recv.expect("ready", STEP);
    // An overwrite topic, sent until killed.
    let mut send = probe(a, "send --topic demo.live --count 0 --interval-ms 2");
    assert!(recv.comes("got index=", STEP), "nothing crossed");
    // `shmbus ls` on each machine says how the topic is bridged.
    let ls_a = a.output(&cli(), &["ls"]);
    assert!(ls_a.contains("bridged out"), "{ls_a}");
    let ls_b = b.output(&cli(), &["ls"]);
    assert!(ls_b.contains("bridged in"), "{ls_b}");

    // The importing bridge is killed: the publisher goes on; a new bridge resumes.
    bb.signal(rustix::process::Signal::KILL);
    assert!(!bb.wait());
    send.skip_pending();
    assert!(
        send.comes("sent index=", Duration::from_secs(2)),
        "the publisher hung"
    );
    recv.skip_pending();
    let mut bb = b.bridge(&importer);
    assert!(recv.comes("got index=", STEP), "forwarding did not resume");

    // The link is cut: the publisher goes on; restored, forwarding resumes.
    net.set_link(0, false);
    std::thread::sleep(Duration::from_secs(3));
    send.skip_pending();
    assert!(
        send.comes("sent index=", Duration::from_secs(2)),
        "the publisher hung"
    );
    net.set_link(0, true);
    recv.skip_pending();
    assert!(
        recv.comes("got index=", Duration::from_secs(40)),
        "forwarding did not resume after the link came back"
    );

    send.signal(rustix::process::Signal::TERM);
    assert!(ba.stop() && bb.stop());
}

#[test]
fn a_remote_topic_of_another_type_is_refused_as_a_local_join_would_be() {
    if !can_run("types") {
        return;
    }
    let net = Net::new("types", 2);
    let (a, b) = (&net.machines[0], &net.machines[1]);
    let (mut ba, mut bb) = net.one_way();
    // On B the topic holds serde messages; A publishes plain-old-data on it.
    let mut recv = probe(b, "recv --topic demo.typed --kind serde --for-ms 3000");
    recv.expect("ready", STEP);
    let mut send = probe(
        a,
        "send --topic demo.typed --count 50 --wait-subscribers 1 --settle-ms 500",
    );
    send.expect("sent n=50", STEP);
    let got = recv.expect("got", STEP);
    assert_eq!(field(&got, "n"), 0, "{got}");
    assert!(send.wait() && recv.wait());
    assert!(ba.stop() && bb.stop());
    let summary = bb.expect("bridge stopped", STEP);
    assert_eq!(field(&summary, "imported"), 0, "{summary}");
    assert!(field(&summary, "refused") > 0, "{summary}");
}

#[test]
fn event_sets_cross_both_ways_once_each() {
    if !can_run("events") {
        return;
    }
    let net = Net::new("events", 2);
    let (a, b) = (&net.machines[0], &net.machines[1]);
    let listen = a.endpoint();
    let both = ["--export", "demo.*", "--import", "demo.*"];
    let mut ba = a.bridge(&[&["--listen", listen.as_str()][..], &both].concat());
    let mut bb = b.bridge(&[&["--connect", listen.as_str()][..], &both].concat());
    // A waiter on each machine; the sets are made on B.
    let mut wait_a = probe(a, "event-wait --name demo.stop --for-ms 5000");
    let mut wait_b = probe(b, "event-wait --name demo.stop --for-ms 5000");
    wait_a.expect("ready", STEP);
    wait_b.expect("ready", STEP);
    // Let both watchers find the event (they scan every 250 ms).
    std::thread::sleep(Duration::from_millis(800));
    let mut set = probe(b, "event-set --name demo.stop --count 5 --interval-ms 300");
    set.expect("set n=5", STEP);
    let (woke_a, woke_b) = (wait_a.expect("woke", STEP), wait_b.expect("woke", STEP));
    // Each set wakes one waiter on B and, carried once, one on A: never carried back.
    assert_eq!(field(&woke_a, "n"), 5, "{woke_a}");
    assert_eq!(field(&woke_b, "n"), 5, "{woke_b}");
    assert!(set.wait() && wait_a.wait() && wait_b.wait());
    assert!(ba.stop() && bb.stop());
}

#[test]
fn a_config_file_sets_endpoints_and_a_rate_limit_for_large_arrays() {
    if !can_run("rates") {
        return;
    }
    let net = Net::new("rates", 2);
    let (a, b) = (&net.machines[0], &net.machines[1]);
    let dir = std::env::temp_dir().join(format!("shmbus-bridge-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("a.toml");
    std::fs::write(
        &conf,
        format!(
            "listen = [\"{}\"]\n\n[[export]]\ntopics = \"frames.*\"\nmax_rate_hz = 20.0\n",
            a.endpoint()
        ),
    )
    .unwrap();
    let conf_path = conf.display().to_string();
    let mut ba = a.bridge(&["--config", &conf_path]);
    let listen = a.endpoint();
    let mut bb = b.bridge(&["--connect", &listen, "--import", "frames.*"]);
    let mut recv = probe(
        b,
        "recv --topic frames.cam --kind array --side 256 --for-ms 4500",
    );
    recv.expect("ready", STEP);
    // 256 x 256 u32 arrays (256 KiB) every 5 ms for 2 s: about 400 frames, 20 a second pass.
    let mut send = probe(a, "send --topic frames.cam --kind array --side 256 --count 400 --interval-ms 5 --wait-subscribers 1 --settle-ms 500");
    send.expect("sent n=400", STEP);
    let got = recv.expect("got", STEP);
    let n = field(&got, "n");
    assert!(
        (10..=80).contains(&n),
        "20 a second for about 2 s, got {got}"
    );
    assert_eq!(field(&got, "bad"), 0, "{got}");
    assert_eq!(field(&got, "dup"), 0, "{got}");
    assert!(send.wait() && recv.wait());
    assert!(ba.stop() && bb.stop());
    let summary = ba.expect("bridge stopped", STEP);
    assert!(
        field(&summary, "dropped") > 200,
        "the rate limit skipped frames: {summary}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
