//! The TFTP bootstrap phase of `bootstorm boot` on io_uring: one engine thread per core holds
//! every bootstrapping target's socket with a receive armed in one ring, feeds the datagrams to
//! the sans-IO client, and sends its ACKs with non-blocking sendto. The target's own thread
//! sleeps until its file is in. Lockstep TFTP is ~730 round trips per MiB: done as blocking
//! receives on a thread per target, the task switches were the client's largest cost.

use crate::engine::{self, Inboxes, Slots};
use bootfarm::engine::ring::push;
use bootfarm::rng::XorShift;
use bootfarm::tftp::client::{Client, Outcome, Send};
use io_uring::{opcode, types, IoUring};
use socket2::SockAddr;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Job {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    pub client: Client,
    pub rng: XorShift,
    pub faults: crate::tftp::Faults,
    /// (outcome, bytes, resends)
    pub done: mpsc::SyncSender<(Outcome, u64, u64)>,
}

struct T {
    job: Job,
    buf: Box<[u8; 2048]>,
    name: Box<libc::sockaddr_storage>,
    iov: Box<libc::iovec>,
    msg: Box<libc::msghdr>,
    armed: bool,
    /// The transfer's port once known: the socket is connected to it (no route lookup per
    /// ACK) and ACKs go through the ring, one in flight.
    connected: Option<SocketAddr>,
    ack: Box<[u8; 4]>,
    sending: bool,
    held: Option<(SocketAddr, Vec<u8>)>,
    finished: Option<Outcome>,
}

/// The TFTP engine threads' inboxes.
pub type Engine = Inboxes<Job>;

pub fn start<'s, 'e: 's>(scope: &'s std::thread::Scope<'s, 'e>, threads: usize, expect: Option<&'e [u8]>, deadline: Instant) -> Engine {
    Inboxes::start(scope, threads, move |rx| run(rx, expect, deadline))
}

const CANCEL: u64 = u64::MAX;
const SEND_BIT: u64 = 1 << 62;

fn run(rx: mpsc::Receiver<Job>, expect: Option<&[u8]>, deadline: Instant) {
    let mut ring = engine::ring();
    let mut slots: Slots<T> = Slots::default();
    let mut last_scan = Instant::now();
    let mut verify = |off: u64, d: &[u8]| expect.is_none_or(|e| e.get(off as usize..off as usize + d.len()) == Some(d));
    loop {
        while let Some(j) = slots.next_job(&rx) {
            let idx = slots.reserve();
            let mut t = Box::new(T {
                job: j,
                buf: Box::new([0u8; 2048]),
                name: Box::new(unsafe { std::mem::zeroed() }),
                iov: Box::new(libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }),
                msg: Box::new(unsafe { std::mem::zeroed() }),
                armed: false,
                connected: None,
                ack: Box::new([0, 4, 0, 0]),
                sending: false,
                held: None,
                finished: None,
            });
            send_pending(&mut t, &mut ring, idx);
            arm(&mut t, &mut ring, idx);
            slots.put(idx, t);
        }
        if slots.finished() {
            return;
        }
        if slots.is_idle() {
            continue;
        }
        let cqes = engine::wait(&mut ring);
        let now = Instant::now();
        for (ud, res) in cqes {
            if ud == CANCEL {
                continue;
            }
            if ud & SEND_BIT != 0 {
                if let Some(t) = slots.get((ud & !SEND_BIT) as usize) {
                    t.sending = false;
                }
                continue;
            }
            let idx = ud as usize;
            let Some(t) = slots.get(idx) else { continue };
            t.armed = false;
            if t.finished.is_none() && res > 0 {
                let from = sockaddr(&t.name, t.msg.msg_namelen as usize);
                if let Some(from) = from {
                    deliver(t, from, res as usize, now, &mut verify);
                }
            }
            if t.finished.is_none() {
                check(t, now, deadline);
            }
            if t.finished.is_none() {
                send_pending(t, &mut ring, idx);
                arm(t, &mut ring, idx);
            }
        }
        // Timeouts (retransmit the ACK or RRQ, or give up), every few milliseconds.
        if now.duration_since(last_scan) >= Duration::from_millis(5) {
            last_scan = now;
            for (idx, t) in slots.iter_mut() {
                if t.finished.is_some() {
                    continue;
                }
                if t.job.client.poll_timeout().is_some_and(|d| d <= now) {
                    t.job.client.handle_timeout(now);
                    send_pending(t, &mut ring, idx);
                }
                check(t, now, deadline);
                if t.finished.is_some() && t.armed {
                    push(&mut ring, &opcode::AsyncCancel::new(idx as u64).build().user_data(CANCEL));
                }
            }
        }
        // Hand back finished targets whose buffers the kernel no longer holds.
        let over: Vec<usize> = slots.iter_mut().filter(|(_, t)| t.finished.is_some() && !t.armed && !t.sending).map(|(i, _)| i).collect();
        for idx in over {
            let t = slots.remove(idx);
            let c = &t.job.client;
            let _ = t.job.done.send((t.finished.unwrap(), c.bytes, c.resends));
        }
    }
}

fn check(t: &mut T, now: Instant, deadline: Instant) {
    match t.job.client.outcome() {
        Outcome::Running if now > deadline => t.finished = Some(Outcome::TimedOut),
        Outcome::Running => {}
        o => t.finished = Some(o),
    }
}

/// The `n` bytes just received, through the client-side faults, into the client.
fn deliver(t: &mut T, from: SocketAddr, n: usize, now: Instant, verify: &mut dyn FnMut(u64, &[u8]) -> bool) {
    if t.job.rng.chance(t.job.faults.loss) {
        return;
    }
    if t.job.rng.chance(t.job.faults.reorder) && t.held.is_none() {
        t.held = Some((from, t.buf[..n].to_vec()));
        return;
    }
    t.job.client.handle(from, &t.buf[..n], now, verify);
    if t.job.rng.chance(t.job.faults.dup) {
        t.job.client.handle(from, &t.buf[..n], now, verify);
    }
    if let Some((f, p)) = t.held.take() {
        t.job.client.handle(f, &p, now, verify);
    }
}

fn send_pending(t: &mut T, ring: &mut IoUring, idx: usize) {
    while let Some(s) = t.job.client.poll_send() {
        if t.job.rng.chance(t.job.faults.loss) {
            continue;
        }
        match s {
            Send::Rrq(p) => {
                let _ = t.job.sock.send_to(&p, t.job.server);
            }
            Send::Ack(n, to) => {
                if t.connected.is_none() && t.job.sock.connect(to).is_ok() {
                    t.connected = Some(to);
                }
                if t.connected == Some(to) && !t.sending {
                    t.ack[2..].copy_from_slice(&n.to_be_bytes());
                    let e =
                        opcode::Send::new(types::Fd(t.job.sock.as_raw_fd()), t.ack.as_ptr(), 4).build().user_data(idx as u64 | SEND_BIT);
                    // Safety: the ACK buffer is boxed in the target, kept until the send completes.
                    unsafe {
                        while ring.submission().push(&e).is_err() {
                            let _ = ring.submit();
                        }
                    }
                    t.sending = true;
                } else {
                    let _ = t.job.sock.send_to(&[0, 4, (n >> 8) as u8, n as u8], to);
                }
            }
        }
    }
}

fn arm(t: &mut T, ring: &mut IoUring, idx: usize) {
    t.iov.iov_base = t.buf.as_mut_ptr().cast();
    t.iov.iov_len = t.buf.len();
    t.msg.msg_name = (&mut *t.name as *mut libc::sockaddr_storage).cast();
    t.msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
    t.msg.msg_iov = &mut *t.iov;
    t.msg.msg_iovlen = 1;
    // The buffers are boxed in the target, which stays until this completes.
    push(ring, &opcode::RecvMsg::new(types::Fd(t.job.sock.as_raw_fd()), &mut *t.msg).build().user_data(idx as u64));
    t.armed = true;
}

fn sockaddr(name: &libc::sockaddr_storage, len: usize) -> Option<SocketAddr> {
    let len = len.min(std::mem::size_of::<libc::sockaddr_storage>());
    // Safety: the kernel wrote a socket address of `len` bytes there.
    unsafe { SockAddr::new(*name, len as libc::socklen_t) }.as_socket()
}
