//! bootstorm's one TFTP client loop, for the `tftp` storm and the bootstrap phase of `boot`, on
//! io_uring: one engine thread per core holds
//! every bootstrapping target's socket with a multishot receive on the thread's provided
//! buffers (armed once per transfer, not once per packet), feeds the datagrams to the sans-IO
//! client, and sends its ACKs through the ring on the socket connected to the server's transfer
//! port, the socket named by its slot in the ring's file table (no file reference taken per
//! operation). Whoever submitted the job (a `boot` target's thread, or the `tftp` storm's
//! launcher) waits for its `Done`. Lockstep TFTP is ~730 round trips per MiB: done as blocking
//! receives on a thread per target, the task switches were the client's largest cost.

use crate::engine::{self, Inboxes, Slots};
use bootfarm::engine::ring::{push, with_sock, BufRing, SockRef};
use bootfarm::rng::XorShift;
use bootfarm::tftp::client::{Client, Outcome, Send};
use io_uring::{cqueue, opcode, types, IoUring};
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
    /// When the target started (its client was made): `Done::took` counts from here.
    pub started: Instant,
    pub done: mpsc::SyncSender<Done>,
}

/// How one transfer ended.
pub struct Done {
    pub outcome: Outcome,
    /// File bytes received (in order, checked).
    pub bytes: u64,
    pub resends: u64,
    /// From the job's start to its outcome.
    pub took: Duration,
    /// When the outcome was known.
    pub ended: Instant,
}

/// A target's own UDP socket (as a real target has its own address), non-blocking, on an
/// ephemeral port of the server's address family.
pub fn client_socket(server: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: SocketAddr = if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let sock = UdpSocket::bind(any)?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

struct T {
    job: Job,
    /// The multishot receive is armed (until a completion without MORE).
    armed: bool,
    /// Finished, in the engine's list of targets waiting for the kernel to let go (its
    /// receive's cancellation asked for).
    listed: bool,
    /// The transfer's port once known: the socket is connected to it (no route lookup per
    /// ACK) and ACKs go through the ring, one in flight.
    connected: Option<SocketAddr>,
    ack: Box<[u8; 4]>,
    sending: bool,
    /// How operations name the socket: by the target's slot in the ring's file table, or by
    /// descriptor when it could not be installed there.
    sref: SockRef,
    held: Option<(SocketAddr, Vec<u8>)>,
    finished: Option<Outcome>,
    ended: Option<Instant>,
}

/// The TFTP engine threads' inboxes.
pub type Engine = Inboxes<Job>;

/// `blksize`: the largest block the targets ask for (sizes the receive buffers).
pub fn start<'s, 'e: 's>(
    scope: &'s std::thread::Scope<'s, 'e>,
    cpus: &[Option<usize>],
    expect: Option<&'e [u8]>,
    blksize: u16,
    deadline: Instant,
) -> Engine {
    Inboxes::start(scope, cpus, move |rx| run(rx, expect, blksize, deadline))
}

const CANCEL: u64 = u64::MAX;
const SEND_BIT: u64 = 1 << 62;

fn run(rx: mpsc::Receiver<Job>, expect: Option<&[u8]>, blksize: u16, deadline: Instant) {
    let mut ring = engine::ring();
    // Room for the recvmsg header, any address and a whole DATA packet.
    let buf_size = (blksize as usize + 4 + 256).next_power_of_two().max(2048);
    let mut bufs = BufRing::new(&ring, 0, 4096, buf_size).expect("io_uring provided buffers");
    let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
    let mut slots: Slots<T> = Slots::default();
    // Finished targets still waiting for their receive's cancellation or their last send.
    let mut ending: Vec<usize> = Vec::new();
    let mut last_scan = Instant::now();
    let mut verify = |off: u64, d: &[u8]| expect.is_none_or(|e| e.get(off as usize..off as usize + d.len()) == Some(d));
    loop {
        while let Some(j) = slots.next_job(&rx) {
            let idx = slots.reserve();
            let mut t = Box::new(T {
                job: j,
                armed: false,
                listed: false,
                connected: None,
                ack: Box::new([0, 4, 0, 0]),
                sending: false,
                sref: SockRef::Raw(-1),
                held: None,
                finished: None,
                ended: None,
            });
            let fd = t.job.sock.as_raw_fd();
            t.sref = if engine::install(&ring, idx, fd) { SockRef::Fixed(idx as u32) } else { SockRef::Raw(fd) };
            arm(&mut t, &mut ring, &msg, bufs.bgid, idx);
            send_pending(&mut t, &mut ring, idx);
            slots.put(idx, t);
        }
        if slots.finished() {
            bufs.unregister(&ring);
            return;
        }
        if slots.is_idle() {
            continue;
        }
        let cqes = engine::wait_flags(&mut ring, slots.active());
        let now = Instant::now();
        for (ud, res, flags) in cqes {
            let bid = cqueue::buffer_select(flags);
            if ud != CANCEL && ud & SEND_BIT != 0 {
                if let Some(t) = slots.get((ud & !SEND_BIT) as usize) {
                    t.sending = false;
                }
            } else if let Some(t) = slots.get(ud as usize).filter(|_| ud != CANCEL) {
                let idx = ud as usize;
                if !cqueue::more(flags) {
                    t.armed = false;
                }
                if let (Some(bid), true, None) = (bid, res > 0, t.finished) {
                    if let Ok(out) = types::RecvMsgOut::parse(bufs.get(bid, res as usize), &msg) {
                        // A truncated datagram is no DATA of ours: as if lost (the client resends).
                        if let (Some(from), false) = (sockaddr(out.name_data()), out.is_payload_truncated()) {
                            deliver(t, from, out.payload_data(), now, &mut verify);
                        }
                    }
                }
                if t.finished.is_none() {
                    check(t, now, deadline);
                }
                // What the client owes goes out even when it has just finished: its final ACK,
                // without which the server retransmits the last block until it gives up.
                send_pending(t, &mut ring, idx);
                if t.finished.is_some() {
                    retire(t, &mut ring, idx, &mut ending);
                } else if !t.armed {
                    arm(t, &mut ring, &msg, bufs.bgid, idx);
                }
            }
            if let Some(bid) = bid {
                bufs.recycle(bid);
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
                if t.finished.is_some() {
                    retire(t, &mut ring, idx, &mut ending);
                }
            }
        }
        // Hand back finished targets whose buffers the kernel no longer holds (only those: a
        // scan of every slot per loop was a cost per packet).
        ending.retain(|&idx| {
            let t = slots.get(idx).expect("a listed target");
            if t.armed || t.sending {
                return true;
            }
            let t = slots.remove(idx);
            if let SockRef::Fixed(_) = t.sref {
                engine::uninstall(&ring, idx);
            }
            let c = &t.job.client;
            let ended = t.ended.unwrap_or(now);
            let _ = t.job.done.send(Done {
                outcome: t.finished.unwrap(),
                bytes: c.bytes,
                resends: c.resends,
                took: ended - t.job.started,
                ended,
            });
            false
        });
    }
}

/// A finished target, once: into the list of those waiting to be handed back, its receive
/// cancelled.
fn retire(t: &mut T, ring: &mut IoUring, idx: usize, ending: &mut Vec<usize>) {
    if t.listed {
        return;
    }
    t.listed = true;
    ending.push(idx);
    if t.armed {
        push(ring, &opcode::AsyncCancel::new(idx as u64).build().user_data(CANCEL));
    }
}

fn check(t: &mut T, now: Instant, deadline: Instant) {
    match t.job.client.outcome() {
        Outcome::Running if now > deadline => t.finished = Some(Outcome::TimedOut),
        Outcome::Running => return,
        o => t.finished = Some(o),
    }
    t.ended = Some(now);
}

/// The `n` bytes just received, through the client-side faults, into the client.
fn deliver(t: &mut T, from: SocketAddr, payload: &[u8], now: Instant, verify: &mut dyn FnMut(u64, &[u8]) -> bool) {
    if t.job.rng.chance(t.job.faults.loss) {
        return;
    }
    if t.job.rng.chance(t.job.faults.reorder) && t.held.is_none() {
        t.held = Some((from, payload.to_vec()));
        return;
    }
    t.job.client.handle(from, payload, now, verify);
    if t.job.rng.chance(t.job.faults.dup) {
        t.job.client.handle(from, payload, now, verify);
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
                    let e = with_sock!(t.sref, f => opcode::Send::new(f, t.ack.as_ptr(), 4).build()).user_data(idx as u64 | SEND_BIT);
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

fn arm(t: &mut T, ring: &mut IoUring, msg: &libc::msghdr, bgid: u16, idx: usize) {
    // The template lives in the engine thread for its whole run.
    push(ring, &with_sock!(t.sref, f => opcode::RecvMsgMulti::new(f, msg, bgid).build()).user_data(idx as u64));
    t.armed = true;
}

/// The socket address a recvmsg wrote (`name`: the bytes the kernel gave).
fn sockaddr(name: &[u8]) -> Option<SocketAddr> {
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let n = name.len().min(std::mem::size_of::<libc::sockaddr_storage>());
    // Safety: at most sizeof(sockaddr_storage) bytes the kernel wrote, into the storage.
    unsafe { std::ptr::copy_nonoverlapping(name.as_ptr(), (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(), n) };
    // Safety: the storage holds an address of `n` bytes.
    unsafe { SockAddr::new(storage, n as libc::socklen_t) }.as_socket()
}
