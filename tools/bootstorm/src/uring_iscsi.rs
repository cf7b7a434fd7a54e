//! The iSCSI vDisk phase on io_uring: one engine thread per core drives every booting target's
//! session (connect, login, TEST UNIT READY, READ CAPACITY, then the boot trace as READ/WRITE
//! commands, one in flight per target as in the NBD phase), all targets' sends and receives
//! batched into the same ring. The protocol is `iscsi.rs` (sans-IO); this file only moves its
//! bytes and checks every byte read against what the target expects (`phases::Expect`). Each
//! target logs in with its own initiator name, so a bootfarm keeps a write cache per target.

use crate::engine::{self, Inboxes, Op, Outcome, Slots, RUN_OVER};
use crate::iscsi::{Event, Initiator, Params};
use crate::phases::{block_pattern, DiskRun, Expect, Fail, Io, Written, BLOCK};
use bootfarm::image::Chain;
use io_uring::{opcode, types, IoUring};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Job {
    pub target: u64,
    pub ios: Vec<Io>,
    pub servers: Vec<SocketAddr>,
    /// This target's initiator name (its write cache on a bootfarm).
    pub initiator: String,
    pub iqn: String,
    pub lun: u64,
    pub done: mpsc::SyncSender<(Result<(), Fail>, DiskRun)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Connect,
    Send,
    Recv,
}

struct T {
    job: Job,
    sock: Option<Socket>,
    addr: Box<SockAddr>,
    s: Option<Box<Initiator>>,
    k: usize,
    seq: u64,
    step: Step,
    /// The block length READ CAPACITY gave (0 until the session is ready).
    block_len: u32,
    /// A read's buffer, handed to the session and back with each command.
    buf: Vec<u8>,
    written: Written,
    st: DiskRun,
    op: Op,
}

impl engine::InFlight for T {
    fn op(&mut self) -> &mut Op {
        &mut self.op
    }
}

/// The iSCSI engine threads' inboxes.
pub type Engine = Inboxes<Job>;

/// Starts one engine thread per entry of `cpus` (pinned where Some) in `scope`; they end when
/// the Engine is dropped and their targets are done.
pub fn start<'s, 'e: 's>(
    scope: &'s std::thread::Scope<'s, 'e>,
    cpus: &[Option<usize>],
    chain: Option<&'e Chain>,
    timeout: Duration,
    deadline: Instant,
) -> Engine {
    Inboxes::start(scope, cpus, move |rx| run(rx, chain, timeout, deadline))
}

fn run(rx: mpsc::Receiver<Job>, chain: Option<&Chain>, timeout: Duration, deadline: Instant) {
    let mut ring = engine::ring();
    let mut slots: Slots<T> = Slots::default();
    let mut last_scan = Instant::now();
    loop {
        while let Some(j) = slots.next_job(&rx) {
            let idx = slots.reserve();
            let addr = Box::new(j.servers[0].into());
            let mut t = Box::new(T {
                job: j,
                sock: None,
                addr,
                s: None,
                k: 0,
                seq: 0,
                step: Step::Connect,
                block_len: 0,
                buf: Vec::new(),
                written: Written::default(),
                st: DiskRun::default(),
                op: Op::default(),
            });
            match connect(&mut t, &mut ring, idx) {
                Ok(()) => slots.put(idx, t),
                Err(f) => {
                    let _ = t.job.done.send((Err(f), t.st));
                    engine::uninstall(&ring, idx);
                    slots.release(idx);
                }
            }
        }
        if slots.finished() {
            return;
        }
        if slots.is_idle() {
            continue;
        }
        for (idx, o) in engine::round(&mut slots, &mut ring, &mut last_scan, timeout, deadline) {
            let t = slots.get(idx).expect("a target in flight");
            let r = match o {
                Outcome::Cancelled(RUN_OVER) => Err(Adv::Fatal(("vdisk", RUN_OVER))),
                Outcome::Cancelled(why) => Err(Adv::Broken(why)),
                Outcome::Res(res) => advance(t, res, chain),
            };
            let finished = match r {
                Ok(true) => {
                    submit(t, &mut ring, idx);
                    None
                }
                Ok(false) => trace_done(t),
                Err(Adv::Broken(e)) => failover(t, e).and_then(|()| connect(t, &mut ring, idx)).err().map(Err),
                Err(Adv::Fatal(f)) => Some(Err(f)),
            };
            if let Some(r) = finished {
                let t = slots.remove(idx);
                engine::uninstall(&ring, idx);
                let _ = t.job.done.send((r, t.st));
            }
        }
    }
}

enum Adv {
    /// The connection is gone: fail over.
    Broken(&'static str),
    Fatal(Fail),
}

/// A new connection and session to the current server (`t.st.server`).
fn connect(t: &mut T, ring: &mut IoUring, idx: usize) -> Result<(), Fail> {
    let at = t.job.servers[t.st.server];
    let s = Socket::new(Domain::for_address(at), Type::STREAM, Some(Protocol::TCP)).map_err(|_| ("vdisk", "no local socket"))?;
    let _ = s.set_nodelay(true);
    if !engine::install(ring, idx, s.as_raw_fd()) {
        return Err(("vdisk", "no local socket"));
    }
    *t.addr = at.into();
    t.sock = Some(s);
    t.s = Some(Box::new(Initiator::new(Params {
        initiator: t.job.initiator.clone(),
        target: t.job.iqn.clone(),
        lun: t.job.lun,
        isid: t.job.target as u32,
    })));
    t.block_len = 0;
    t.step = Step::Connect;
    submit(t, ring, idx);
    Ok(())
}

fn submit(t: &mut T, ring: &mut IoUring, idx: usize) {
    let fd = types::Fixed(idx as u32);
    let s = t.s.as_mut().expect("a session");
    let e = match t.step {
        Step::Connect => opcode::Connect::new(fd, t.addr.as_ptr(), t.addr.len()).build(),
        Step::Send => {
            let p = s.pending();
            opcode::Send::new(fd, p.as_ptr(), p.len() as u32).flags(libc::MSG_NOSIGNAL).build()
        }
        // The first receive of an answer waits for readiness first: the command just left.
        Step::Recv => {
            let poll_first = if s.nothing_buffered() { bootfarm::engine::ring::RECVSEND_POLL_FIRST } else { 0 };
            let r = s.recv_space();
            opcode::Recv::new(fd, r.as_mut_ptr(), r.len() as u32).ioprio(poll_first).build()
        }
    };
    // The buffers live in the boxed session until the completion arrives.
    t.op.submit(ring, idx, e);
}

/// One completion: Ok(true) when the next operation is set in `t.step`, Ok(false) when the
/// trace is done.
fn advance(t: &mut T, res: i32, chain: Option<&Chain>) -> Result<bool, Adv> {
    if t.step == Step::Connect {
        if res < 0 {
            return Err(Adv::Broken("connect failed"));
        }
        t.step = Step::Send;
        return Ok(true);
    }
    if res <= 0 {
        return Err(Adv::Broken(if res == 0 { "server stopped answering" } else { "connection error" }));
    }
    let s = t.s.as_mut().expect("a session");
    match t.step {
        Step::Send => s.sent(res as usize),
        _ => s.received(res as usize).map_err(|why| Adv::Fatal(("vdisk", why)))?,
    }
    while let Some(ev) = t.s.as_mut().unwrap().next_event() {
        match ev {
            Event::Ready { block_len, .. } => {
                if block_len == 0 || !BLOCK.is_multiple_of(block_len as u64) {
                    return Err(Adv::Fatal(("vdisk", "block length not a divisor of 4096")));
                }
                t.block_len = block_len;
                t.st.answered();
                if !start_io(t) {
                    return Ok(false);
                }
            }
            Event::Done { ok: false, why, .. } => return Err(Adv::Fatal(("vdisk", why))),
            Event::Done { buf, .. } => {
                let io = t.job.ios[t.k];
                if io.write {
                    for j in 0..io.len as u64 / BLOCK {
                        t.written.insert(io.off / BLOCK + j, write_tag(t, j));
                    }
                } else {
                    if !(Expect { chain, written: &t.written }).check(io.off, &buf[..io.len as usize]) {
                        return Err(Adv::Fatal(("vdisk", "corrupted")));
                    }
                }
                t.buf = buf;
                t.st.answered();
                t.st.bytes += io.len as u64;
                t.k += 1;
                if !start_io(t) {
                    return Ok(false);
                }
            }
            Event::LoggedOut => return Err(Adv::Broken("logged out")),
        }
    }
    t.step = if t.s.as_ref().unwrap().pending().is_empty() { Step::Recv } else { Step::Send };
    Ok(true)
}

fn write_tag(t: &T, j: u64) -> u64 {
    t.job.target.wrapping_mul(1 << 32) ^ t.seq << 8 ^ j
}

/// Queues I/O `t.k` as a command; false when the trace is done.
fn start_io(t: &mut T) -> bool {
    let Some(io) = t.job.ios.get(t.k).copied() else { return false };
    let bl = t.block_len as u64;
    let (lba, blocks) = (io.off / bl, (io.len as u64 / bl) as u32);
    let mut buf = std::mem::take(&mut t.buf);
    if io.write {
        t.seq += 1;
        buf.resize(io.len as usize, 0);
        for (j, c) in buf.chunks_mut(BLOCK as usize).enumerate() {
            block_pattern(write_tag(t, j as u64), c);
        }
        t.s.as_mut().unwrap().write(t.k as u64, lba, buf);
    } else {
        t.s.as_mut().unwrap().read(t.k as u64, lba, blocks, buf);
    }
    true
}

/// The server went away: the next of the list, or the end of this boot (the caller connects).
/// Writes made stay in the old server's cache: the boot cannot succeed (see `uring.rs`).
fn failover(t: &mut T, why: &'static str) -> Result<(), Fail> {
    t.sock = None;
    t.st.next_server(t.job.servers.len(), "vdisk", why)?;
    t.st.lose_writes(t.written.len() as u64);
    Ok(())
}

fn trace_done(t: &T) -> Option<Result<(), Fail>> {
    Some(if t.st.writes_lost > 0 { Err(("vdisk", "writes lost")) } else { Ok(()) })
}
