//! The NBD vDisk phase on io_uring: one engine thread per core drives every booting target's
//! trace replay, one request in flight per target (a booting OS mostly waits on each read), all
//! targets' sends and receives batched into the same ring. A target's thread hands its
//! connected socket here and sleeps until its trace is done: one wake-up per boot instead of
//! one per I/O, which is what made the thread-per-target replay cost more CPU than the server.

use crate::boot::{block_pattern, nbd_connect, DiskRun, Expect, Fail, Io, BLOCK};
use crate::engine::{self, Inboxes, Slots};
use bootfarm::engine::ring::push;
use bootfarm::image::Chain;
use bootfarm::nbd::wire as nbdw;
use io_uring::{opcode, types, IoUring};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Job {
    pub target: u64,
    pub ios: Vec<Io>,
    pub servers: Vec<SocketAddr>,
    pub export: String,
    /// Connected to servers[0], or None when that one refused (the engine fails over).
    pub stream: Option<TcpStream>,
    pub done: mpsc::SyncSender<(Result<(), Fail>, DiskRun)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Send,
    /// The reply: its header and, for a read, the data behind it, received into one buffer
    /// (usually in one receive: the server sends them in one go).
    Reply,
}

struct T {
    job: Job,
    stream: Option<TcpStream>,
    k: usize,
    seq: u64,
    req: Vec<u8>,
    sent: usize,
    buf: Vec<u8>,
    /// Bytes of `buf` the reply fills: the 16-byte header, then the read's data.
    want: usize,
    got: usize,
    step: Step,
    written: HashMap<u64, u64>,
    st: DiskRun,
    down_since: Option<Instant>,
    /// When the request in flight was submitted (a server that stops answering is given up
    /// after `timeout`), and why it is being cancelled.
    op_at: Instant,
    cancel: Option<&'static str>,
}

use engine::{CANCEL_UD, RUN_OVER};

impl engine::InFlight for T {
    fn in_flight(&mut self) -> (Instant, &mut Option<&'static str>) {
        (self.op_at, &mut self.cancel)
    }
}

/// The NBD engine threads' inboxes.
pub type Engine = Inboxes<Job>;

/// Starts one engine thread per `threads` in `scope`; they end when the Engine is dropped and
/// their targets are done.
pub fn start<'s, 'e: 's>(
    scope: &'s std::thread::Scope<'s, 'e>,
    threads: usize,
    chain: Option<&'e Chain>,
    timeout: Duration,
    deadline: Instant,
) -> Engine {
    Inboxes::start(scope, threads, move |rx| run(rx, chain, timeout, deadline))
}

fn run(rx: mpsc::Receiver<Job>, chain: Option<&Chain>, timeout: Duration, deadline: Instant) {
    let mut ring = engine::ring();
    let mut slots: Slots<T> = Slots::default();
    let mut scratch = Vec::new();
    let mut last_scan = Instant::now();
    loop {
        // New targets.
        while let Some(mut j) = slots.next_job(&rx) {
            let idx = slots.reserve();
            let stream = j.stream.take();
            let first_up = stream.is_some();
            let mut t = Box::new(T {
                job: j,
                stream,
                k: 0,
                seq: 0,
                req: Vec::new(),
                sent: 0,
                buf: Vec::new(),
                want: 0,
                got: 0,
                step: Step::Send,
                written: HashMap::new(),
                st: DiskRun::default(),
                down_since: None,
                op_at: Instant::now(),
                cancel: None,
            });
            let started = if first_up { Ok(()) } else { failover(&mut t, "connect failed", timeout) };
            match started.map(|()| start_io(&mut t, &mut ring, idx)) {
                Ok(true) => slots.put(idx, t),
                r => {
                    let _ = t.job.done.send((r.map(|_| ()), t.st));
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
        let cqes = engine::wait(&mut ring);
        engine::cancel_overdue(&mut slots, &mut ring, &mut last_scan, timeout, deadline);
        for (ud, res) in cqes {
            if ud == CANCEL_UD {
                continue;
            }
            let idx = ud as usize;
            let Some(t) = slots.get(idx) else { continue };
            // The one request of this target is over either way; its buffers are free.
            let outcome = match t.cancel.take() {
                Some(RUN_OVER) => Adv::Fatal(("vdisk", RUN_OVER)),
                Some(why) => Adv::Broken(why),
                None => advance(t, res, chain, &mut scratch),
            };
            let finished = match outcome {
                Adv::Continue => {
                    submit(t, &mut ring, idx);
                    None
                }
                Adv::NextIo => {
                    if start_io(t, &mut ring, idx) {
                        None
                    } else {
                        Some(Ok(()))
                    }
                }
                Adv::Broken(e) => {
                    failover(t, e, timeout).err().map(Err).or_else(|| if start_io(t, &mut ring, idx) { None } else { Some(Ok(())) })
                }
                Adv::Fatal(f) => Some(Err(f)),
            };
            if let Some(r) = finished {
                let t = slots.remove(idx);
                let _ = t.job.done.send((r, t.st));
            }
        }
    }
}

enum Adv {
    Continue,
    NextIo,
    Broken(&'static str),
    Fatal(Fail),
}

/// Prepares I/O `t.k` (request bytes) and submits its send; false when the trace is done.
fn start_io(t: &mut T, ring: &mut IoUring, idx: usize) -> bool {
    let Some(io) = t.job.ios.get(t.k).copied() else { return false };
    t.req.clear();
    t.req.extend_from_slice(&nbdw::REQUEST_MAGIC.to_be_bytes());
    t.req.extend_from_slice(&0u16.to_be_bytes());
    t.req.extend_from_slice(&(if io.write { nbdw::CMD_WRITE } else { nbdw::CMD_READ }).to_be_bytes());
    t.req.extend_from_slice(&(t.k as u64).to_be_bytes());
    t.req.extend_from_slice(&io.off.to_be_bytes());
    t.req.extend_from_slice(&io.len.to_be_bytes());
    if io.write {
        t.seq += 1;
        let at = t.req.len();
        t.req.resize(at + io.len as usize, 0);
        for (j, c) in t.req[at..].chunks_mut(BLOCK as usize).enumerate() {
            block_pattern(t.job.target.wrapping_mul(1 << 32) ^ t.seq << 8 ^ j as u64, c);
        }
    }
    t.sent = 0;
    t.got = 0;
    t.step = Step::Send;
    submit(t, ring, idx);
    true
}

fn submit(t: &mut T, ring: &mut IoUring, idx: usize) {
    t.op_at = Instant::now();
    let fd = types::Fd(t.stream.as_ref().expect("connected").as_raw_fd());
    let e = match t.step {
        Step::Send => opcode::Send::new(fd, t.req[t.sent..].as_ptr(), (t.req.len() - t.sent) as u32).flags(libc::MSG_NOSIGNAL).build(),
        // Not MSG_WAITALL: an error reply carries no data, and must not wait for any.
        Step::Reply => opcode::Recv::new(fd, t.buf[t.got..t.want].as_mut_ptr(), (t.want - t.got) as u32).build(),
    };
    // The buffers live in the boxed target until its completion arrives.
    push(ring, &e.user_data(idx as u64));
}

fn advance(t: &mut T, res: i32, chain: Option<&Chain>, scratch: &mut Vec<u8>) -> Adv {
    if res <= 0 {
        return Adv::Broken(if res == 0 { "server stopped answering" } else { "connection error" });
    }
    let n = res as usize;
    let io = t.job.ios[t.k];
    match t.step {
        Step::Send => {
            t.sent += n;
            if t.sent < t.req.len() {
                return Adv::Continue;
            }
            t.step = Step::Reply;
            t.want = 16 + if io.write { 0 } else { io.len as usize };
            // Grown once to the largest reply, never cleared: no memset per request.
            if t.buf.len() < t.want {
                t.buf.resize(t.want, 0);
            }
            t.got = 0;
            Adv::Continue
        }
        Step::Reply => {
            let before = t.got;
            t.got += n;
            if before < 16 && t.got >= 16 {
                let h = &t.buf[..16];
                if u32::from_be_bytes(h[..4].try_into().unwrap()) != nbdw::SIMPLE_REPLY_MAGIC
                    || u64::from_be_bytes(h[8..].try_into().unwrap()) != t.k as u64
                {
                    return Adv::Fatal(("vdisk", "protocol error"));
                }
                if u32::from_be_bytes(h[4..8].try_into().unwrap()) != 0 {
                    return Adv::Fatal(("vdisk", "nbd error reply"));
                }
            }
            if t.got < t.want {
                return Adv::Continue;
            }
            if io.write {
                for j in 0..io.len as u64 / BLOCK {
                    t.written.insert(io.off / BLOCK + j, t.job.target.wrapping_mul(1 << 32) ^ t.seq << 8 ^ j);
                }
                return done_io(t, io);
            }
            let ex = Expect { chain, written: std::mem::take(&mut t.written) };
            let ok = ex.check(io.off, &t.buf[16..t.want], scratch);
            t.written = ex.written;
            if !ok {
                return Adv::Fatal(("vdisk", "corrupted"));
            }
            done_io(t, io)
        }
    }
}

fn done_io(t: &mut T, io: Io) -> Adv {
    if let Some(d) = t.down_since.take() {
        t.st.lost += d.elapsed();
    }
    t.st.bytes += io.len as u64;
    t.k += 1;
    Adv::NextIo
}

/// The server went away: the next of the list (its cache, and so the target's writes, stay
/// behind), or the end of this boot.
fn failover(t: &mut T, why: &'static str, timeout: Duration) -> Result<(), Fail> {
    t.stream = None;
    t.down_since.get_or_insert_with(Instant::now);
    loop {
        if t.st.server + 1 >= t.job.servers.len() {
            return Err(("vdisk", if why == "connect failed" { "no server left" } else { why }));
        }
        t.st.server += 1;
        t.st.failovers += 1;
        t.written.clear();
        match nbd_connect(t.job.servers[t.st.server], &t.job.export, timeout) {
            Ok(s) => {
                t.stream = Some(s);
                return Ok(());
            }
            Err(_) => continue,
        }
    }
}
