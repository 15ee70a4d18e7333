//! Unix domain sockets: what people use when they do not share memory. `SOCK_SEQPACKET` for
//! messages (boundaries kept), `SOCK_STREAM` for bulk data; every message is copied twice
//! (into the kernel and out of it).

use std::hint::black_box;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::time::Instant;

use rustix::io::{fcntl_getfd, fcntl_setfd, Errno, FdFlags};
use rustix::net::{
    recv, send, socketpair, sockopt, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType,
};

use crate::ctl::{self, now_ns, RxMeter, PEER_TIMEOUT};
use crate::floor::{ack, collect_acks, wake_receiver, wake_sender, yield_now};
use crate::{Measured, Res, Run, Scenario};

/// A connected pair: the leader's end (close-on-exec) and the peer's end (inherited).
pub(crate) fn pair(sc: Scenario) -> Res<(OwnedFd, OwnedFd)> {
    let ty = if sc.bulk_bytes() > 0 {
        SocketType::STREAM
    } else {
        SocketType::SEQPACKET
    };
    let (a, b) = socketpair(AddressFamily::UNIX, ty, SocketFlags::CLOEXEC, None)?;
    fcntl_setfd(&b, FdFlags::empty())?;
    if sc.bulk_bytes() > 0 {
        for s in [&a, &b] {
            // As large as the kernel allows without privileges tuning: fewer, larger copies.
            sockopt::set_socket_send_buffer_size(s, 4 << 20)?;
            sockopt::set_socket_recv_buffer_size(s, 4 << 20)?;
        }
    }
    Ok((a, b))
}

/// Adopts the inherited socket `fd`.
pub(crate) fn inherit(fd: i32) -> Res<OwnedFd> {
    // SAFETY: only used for this call, to check that `fd` is open.
    fcntl_getfd(unsafe { BorrowedFd::borrow_raw(fd) })?;
    // SAFETY: the parent passed the number of a socket it left open across exec for us; this
    // process owns its copy and nothing else uses it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send_all(fd: &OwnedFd, mut buf: &[u8]) -> Res<()> {
    while !buf.is_empty() {
        match send(fd, buf, SendFlags::NOSIGNAL) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Receives one message (or, on a stream, fills `buf`); polls with `MSG_DONTWAIT` when `busy`,
/// calling `idle` between polls.
fn recv_msg(fd: &OwnedFd, buf: &mut [u8], busy: bool, mut idle: impl FnMut()) -> Res<usize> {
    let deadline = Instant::now() + PEER_TIMEOUT;
    let flags = if busy {
        RecvFlags::DONTWAIT
    } else {
        RecvFlags::empty()
    };
    loop {
        match recv(fd, &mut *buf, flags) {
            Ok((0, _)) => return Err("the peer closed its socket".into()),
            Ok((n, _)) => return Ok(n),
            Err(Errno::AGAIN | Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        idle();
        if Instant::now() > deadline {
            return Err("timed out waiting for a peer process".into());
        }
    }
}

fn recv_exact(fd: &OwnedFd, mut buf: &mut [u8]) -> Res<()> {
    while !buf.is_empty() {
        let n = recv_msg(fd, buf, false, || {})?;
        buf = &mut buf[n..];
    }
    Ok(())
}

fn set_timeouts(fd: &OwnedFd) -> Res<()> {
    // Blocking reads give up with the harness's peer timeout rather than hang.
    sockopt::set_socket_timeout(fd, sockopt::Timeout::Recv, Some(PEER_TIMEOUT))?;
    Ok(())
}

pub(crate) fn pingpong(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let fd = run.socks.first().ok_or("no socket")?;
    set_timeouts(fd)?;
    if leader {
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, 1)?;
    } else {
        ctl::wait_leader(run.shared)?;
        ctl::announce_ready(run.shared);
    }
    let mut buf = [0u8; 8];
    let mut recv_one = |want: u64| -> Res<()> {
        let n = recv_msg(fd, &mut buf, true, std::hint::spin_loop)?;
        let got = u64::from_ne_bytes(buf);
        if n != 8 || got != want {
            return Err(format!("expected {want}, got {got}").into());
        }
        Ok(())
    };
    let mut rt = Vec::with_capacity(run.iters as usize);
    let mut rx = RxMeter::default();
    for i in 1..=run.total() {
        if leader {
            let t = Instant::now();
            send_all(fd, &i.to_ne_bytes())?;
            recv_one(i)?;
            if i > run.warmup {
                rt.push(t.elapsed().as_nanos() as u64);
            }
        } else {
            rx.start_at(i, run.warmup + 1);
            recv_one(i)?;
            send_all(fd, &i.to_ne_bytes())?;
        }
    }
    if !leader {
        rx.report(run.shared, run.index)?;
    }
    Ok(leader.then_some(Measured::RoundTrips(rt)))
}

/// A hand-off to a sleeping receiver: `send` of 8 bytes, the receiver blocked in `recv`.
pub(crate) fn wake(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let fd = run.socks.first().ok_or("no socket")?;
    set_timeouts(fd)?;
    if leader {
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, 1)?;
        let m = wake_sender(run, |i| send_all(fd, &i.to_ne_bytes()))?;
        return Ok(Some(m));
    }
    ctl::wait_leader(run.shared)?;
    ctl::announce_ready(run.shared);
    let mut buf = [0u8; 8];
    wake_receiver(run, |i| {
        let n = recv_msg(fd, &mut buf, false, || {})?;
        let got = u64::from_ne_bytes(buf);
        if n != 8 || got != i {
            return Err(format!("expected {i}, got {got}").into());
        }
        Ok(())
    })?;
    Ok(None)
}

pub(crate) fn stream64(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let fd = run.socks.first().ok_or("no socket")?;
    set_timeouts(fd)?;
    let n = run.total();
    let mut msg = [0u8; 64];
    if leader {
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, 1)?;
        let mut times = Vec::new();
        let mut rx = RxMeter::default();
        for i in 0..n {
            run.mark_window(i, &mut times);
            rx.start_at(i, run.warmup);
            let len = recv_msg(fd, &mut msg, false, || {})?;
            let words: [u64; 8] = bytemuck::cast(msg);
            if len != 64 || words[0] != i {
                return Err(format!("expected message {i}, got {}", words[0]).into());
            }
            black_box(words.iter().fold(0u64, |a, &b| a.wrapping_add(b)));
        }
        times.push(now_ns());
        rx.report(run.shared, run.index)?;
        Ok(Some(Measured::Windows(times)))
    } else {
        ctl::wait_leader(run.shared)?;
        ctl::announce_ready(run.shared);
        for i in 0..n {
            let words: [u64; 8] = std::array::from_fn(|k| if k == 0 { i } else { i ^ k as u64 });
            msg = bytemuck::cast(words);
            send_all(fd, &msg)?;
        }
        Ok(None)
    }
}

pub(crate) fn bulk(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let fd = run.socks.first().ok_or("no socket")?;
    set_timeouts(fd)?;
    let n = run.total();
    let mut buf = vec![0u64; run.bytes / 8];
    if leader {
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, 1)?;
        let mut times = Vec::new();
        let mut rx = RxMeter::default();
        for i in 0..n {
            run.mark_window(i, &mut times);
            rx.start_at(i, run.warmup);
            recv_exact(fd, bytemuck::cast_slice_mut(&mut buf))?;
            black_box(buf.iter().fold(0u64, |a, &b| a.wrapping_add(b)));
            if buf.first() != Some(&i) {
                return Err(format!("bulk message {i} damaged").into());
            }
        }
        times.push(now_ns());
        rx.report(run.shared, run.index)?;
        Ok(Some(Measured::Windows(times)))
    } else {
        ctl::wait_leader(run.shared)?;
        ctl::announce_ready(run.shared);
        for i in 0..n {
            for (k, w) in buf.iter_mut().enumerate() {
                *w = i ^ k as u64;
            }
            send_all(fd, bytemuck::cast_slice(&buf))?;
        }
        Ok(None)
    }
}

pub(crate) fn fanout(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    for fd in &run.socks {
        set_timeouts(fd)?;
    }
    if leader {
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, run.peers as u64)?;
        let mut lat = Vec::with_capacity(run.iters as usize);
        for i in 1..=run.total() {
            let t0 = now_ns();
            for fd in &run.socks {
                send_all(fd, &i.to_ne_bytes())?;
            }
            let last = collect_acks(run, i)?;
            if i > run.warmup {
                lat.push(last.saturating_sub(t0));
            }
        }
        Ok(Some(Measured::Latencies(lat)))
    } else {
        let fd = run.socks.first().ok_or("no socket")?;
        ctl::wait_leader(run.shared)?;
        ctl::announce_ready(run.shared);
        let mut buf = [0u8; 8];
        let mut rx = RxMeter::default();
        for i in 1..=run.total() {
            rx.start_at(i, run.warmup + 1);
            recv_msg(fd, &mut buf, true, yield_now)?;
            let t = now_ns();
            if u64::from_ne_bytes(buf) != i {
                return Err(format!("expected {i}, got {}", u64::from_ne_bytes(buf)).into());
            }
            ack(run, i, t);
        }
        rx.report(run.shared, run.index)?;
        Ok(None)
    }
}
