//! The NBD vDisk phase on io_uring: one engine thread per core drives every booting target's
//! connection (connect, fixed-newstyle handshake with NBD_OPT_GO) and trace replay, one request
//! in flight per target (a booting OS mostly waits on each read), all targets' sends and
//! receives batched into the same ring. A target's thread hands its job here and sleeps until
//! its trace is done: one wake-up per boot instead of one per I/O, which is what made the
//! thread-per-target replay cost more CPU than the server. Nothing here blocks: a server that
//! hangs in the handshake holds up its own targets only, until the timeout fails them over.

use crate::engine::{self, Inboxes, Pool, Slots};
use crate::phases::{block_pattern, DiskRun, Expect, Fail, Io, Written, BLOCK};
use bootfarm::image::Chain;
use bootfarm::nbd::wire as nbdw;
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
    pub export: String,
    pub done: mpsc::SyncSender<(Result<(), Fail>, DiskRun)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Connect,
    /// The server's 18-byte greeting (NBDMAGIC, IHAVEOPT, handshake flags).
    Greeting,
    /// Client flags and NBD_OPT_GO for the export (in `req`).
    Options,
    /// A 20-byte option reply header, then (OptData) its payload; until NBD_REP_ACK.
    OptHead,
    OptData,
    Send,
    /// The reply: its header and, for a read, the data behind it, received into one buffer
    /// (usually in one receive: the server sends them in one go).
    Reply,
}

struct T {
    job: Job,
    sock: Option<Socket>,
    addr: Box<SockAddr>,
    k: usize,
    seq: u64,
    /// The request being sent is `req[..req_len]`, in a buffer of the engine's pool while it
    /// is sent, overwritten in place (no memset per request).
    req: Vec<u8>,
    req_len: usize,
    sent: usize,
    buf: Vec<u8>,
    /// Bytes of `buf` the reply fills: the 16-byte header, then the read's data.
    want: usize,
    got: usize,
    step: Step,
    written: Written,
    st: DiskRun,
    /// The request in flight (a server that stops answering is given up after `timeout`).
    op: Op,
}

use engine::{Op, Outcome, RUN_OVER};

impl engine::InFlight for T {
    fn op(&mut self) -> &mut Op {
        &mut self.op
    }
}

/// The NBD engine threads' inboxes.
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
    let mut pools = Pools::default();
    let mut last_scan = Instant::now();
    loop {
        // New targets.
        while let Some(j) = slots.next_job(&rx) {
            let idx = slots.reserve();
            let addr = Box::new(j.servers[0].into());
            let mut t = Box::new(T {
                job: j,
                sock: None,
                addr,
                k: 0,
                seq: 0,
                req: Vec::new(),
                req_len: 0,
                sent: 0,
                buf: Vec::new(),
                want: 0,
                got: 0,
                step: Step::Connect,
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
            // The one request of this target is over either way; its buffers are free.
            let outcome = match o {
                Outcome::Cancelled(RUN_OVER) => Adv::Fatal(("vdisk", RUN_OVER)),
                Outcome::Cancelled(why) => Adv::Broken(why),
                Outcome::Res(res) => advance(t, res, chain, &mut pools),
            };
            let finished = match outcome {
                Adv::Continue => {
                    submit(t, &mut ring, idx);
                    None
                }
                Adv::NextIo | Adv::Connected => {
                    if start_io(t, &mut ring, idx, &mut pools) {
                        None
                    } else {
                        trace_done(t)
                    }
                }
                Adv::Broken(e) => failover(t, e).and_then(|()| connect(t, &mut ring, idx)).err().map(Err),
                Adv::Fatal(f) => Some(Err(f)),
            };
            if let Some(r) = finished {
                let mut t = slots.remove(idx);
                engine::uninstall(&ring, idx);
                pools.req.give(std::mem::take(&mut t.req));
                pools.reply.give(std::mem::take(&mut t.buf));
                let _ = t.job.done.send((r, t.st));
            }
        }
    }
}

/// Request buffers circulate among sends only (a send is over at once, so the few in use stay
/// cached for the next WRITE's pattern), reply buffers among the targets awaiting a reply.
#[derive(Default)]
struct Pools {
    req: Pool,
    reply: Pool,
}

enum Adv {
    Continue,
    /// The handshake is done: the first (or, after a failover, the interrupted) I/O.
    Connected,
    NextIo,
    Broken(&'static str),
    Fatal(Fail),
}

/// An NBD request header: magic, flags, type, cookie, offset, length.
const REQ_HEAD: usize = 28;

/// Prepares I/O `t.k` (request bytes) and submits its send; false when the trace is done.
fn start_io(t: &mut T, ring: &mut IoUring, idx: usize, pools: &mut Pools) -> bool {
    let Some(io) = t.job.ios.get(t.k).copied() else { return false };
    t.req_len = REQ_HEAD + if io.write { io.len as usize } else { 0 };
    if t.req.len() < t.req_len {
        pools.req.give(std::mem::take(&mut t.req));
        t.req = pools.req.take(t.req_len);
    }
    let h = &mut t.req[..REQ_HEAD];
    h[..4].copy_from_slice(&nbdw::REQUEST_MAGIC.to_be_bytes());
    h[4..6].copy_from_slice(&0u16.to_be_bytes());
    h[6..8].copy_from_slice(&(if io.write { nbdw::CMD_WRITE } else { nbdw::CMD_READ }).to_be_bytes());
    h[8..16].copy_from_slice(&(t.k as u64).to_be_bytes());
    h[16..24].copy_from_slice(&io.off.to_be_bytes());
    h[24..28].copy_from_slice(&io.len.to_be_bytes());
    if io.write {
        t.seq += 1;
        for (j, c) in t.req[REQ_HEAD..t.req_len].chunks_mut(BLOCK as usize).enumerate() {
            block_pattern(t.job.target.wrapping_mul(1 << 32) ^ t.seq << 8 ^ j as u64, c);
        }
    }
    t.sent = 0;
    t.got = 0;
    t.step = Step::Send;
    submit(t, ring, idx);
    true
}

/// A new connection to the current server (`t.st.server`), through connect and the handshake.
fn connect(t: &mut T, ring: &mut IoUring, idx: usize) -> Result<(), Fail> {
    let at = t.job.servers[t.st.server];
    let s = Socket::new(Domain::for_address(at), Type::STREAM, Some(Protocol::TCP)).map_err(|_| ("vdisk", "no local socket"))?;
    let _ = s.set_nodelay(true);
    // Its operations name it by slot (the old socket of a failover leaves the table here).
    if !engine::install(ring, idx, s.as_raw_fd()) {
        return Err(("vdisk", "no local socket"));
    }
    *t.addr = at.into();
    t.sock = Some(s);
    t.step = Step::Connect;
    t.got = 0;
    submit(t, ring, idx);
    Ok(())
}

/// Client flags (fixed newstyle, no zeroes) and NBD_OPT_GO for the export, no info requests.
fn options(req: &mut Vec<u8>, export: &str) {
    req.clear();
    req.extend_from_slice(&3u32.to_be_bytes());
    req.extend_from_slice(&nbdw::IHAVEOPT.to_be_bytes());
    req.extend_from_slice(&nbdw::OPT_GO.to_be_bytes());
    req.extend_from_slice(&(6 + export.len() as u32).to_be_bytes());
    req.extend_from_slice(&(export.len() as u32).to_be_bytes());
    req.extend_from_slice(export.as_bytes());
    req.extend_from_slice(&0u16.to_be_bytes());
}

/// Option replies carry at most this much (an NBD_REP_INFO is 12 bytes; errors a message).
const OPT_DATA_MAX: usize = 64 << 10;

fn submit(t: &mut T, ring: &mut IoUring, idx: usize) {
    debug_assert!(t.sock.is_some(), "a socket installed at the slot");
    let fd = types::Fixed(idx as u32);
    let e = match t.step {
        Step::Connect => opcode::Connect::new(fd, t.addr.as_ptr(), t.addr.len()).build(),
        Step::Greeting | Step::OptHead | Step::OptData => {
            if t.buf.len() < t.want {
                t.buf.resize(t.want, 0);
            }
            opcode::Recv::new(fd, t.buf[t.got..t.want].as_mut_ptr(), (t.want - t.got) as u32).build()
        }
        Step::Send | Step::Options => {
            opcode::Send::new(fd, t.req[t.sent..t.req_len].as_ptr(), (t.req_len - t.sent) as u32).flags(libc::MSG_NOSIGNAL).build()
        }
        // Not MSG_WAITALL: an error reply carries no data, and must not wait for any. The
        // first receive of a reply waits for readiness first: the request just left, so an
        // immediate try would find nothing.
        Step::Reply => {
            let poll_first = if t.got == 0 { bootfarm::engine::ring::RECVSEND_POLL_FIRST } else { 0 };
            opcode::Recv::new(fd, t.buf[t.got..t.want].as_mut_ptr(), (t.want - t.got) as u32).ioprio(poll_first).build()
        }
    };
    // The buffers live in the boxed target until its completion arrives.
    t.op.submit(ring, idx, e);
}

fn advance(t: &mut T, res: i32, chain: Option<&Chain>, pools: &mut Pools) -> Adv {
    if t.step == Step::Connect {
        if res < 0 {
            return Adv::Broken("connect failed");
        }
        t.step = Step::Greeting;
        (t.got, t.want) = (0, 18);
        return Adv::Continue;
    }
    if res <= 0 {
        return Adv::Broken(if res == 0 { "server stopped answering" } else { "connection error" });
    }
    let n = res as usize;
    match t.step {
        Step::Connect => unreachable!("handled above"),
        Step::Greeting | Step::OptHead | Step::OptData => {
            t.got += n;
            if t.got < t.want {
                return Adv::Continue;
            }
            handshake(t)
        }
        Step::Options => {
            t.sent += n;
            if t.sent == t.req_len {
                pools.req.give(std::mem::take(&mut t.req));
                t.step = Step::OptHead;
                (t.got, t.want) = (0, 20);
            }
            Adv::Continue
        }
        Step::Send => {
            let io = t.job.ios[t.k];
            t.sent += n;
            if t.sent < t.req_len {
                return Adv::Continue;
            }
            pools.req.give(std::mem::take(&mut t.req));
            t.step = Step::Reply;
            t.want = 16 + if io.write { 0 } else { io.len as usize };
            // From the pool, never cleared: no memset per request (a reply overwrites it).
            if t.buf.len() < t.want {
                pools.reply.give(std::mem::take(&mut t.buf));
                t.buf = pools.reply.take(t.want);
            }
            t.got = 0;
            Adv::Continue
        }
        Step::Reply => {
            let io = t.job.ios[t.k];
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
            let buf = std::mem::take(&mut t.buf);
            let ok = io.write || (Expect { chain, written: &t.written }).check(io.off, &buf[16..t.want]);
            pools.reply.give(buf);
            if !ok {
                return Adv::Fatal(("vdisk", "corrupted"));
            }
            if io.write {
                for j in 0..io.len as u64 / BLOCK {
                    t.written.insert(io.off / BLOCK + j, t.job.target.wrapping_mul(1 << 32) ^ t.seq << 8 ^ j);
                }
            }
            done_io(t, io)
        }
    }
}

/// A whole handshake message is in `buf[..want]`: the greeting, an option reply header or its
/// payload. Anything but a fixed-newstyle server accepting the export sends the target on.
fn handshake(t: &mut T) -> Adv {
    match t.step {
        Step::Greeting => {
            if &t.buf[..16] != b"NBDMAGICIHAVEOPT" {
                return Adv::Broken("not an NBD server");
            }
            options(&mut t.req, &t.job.export);
            t.req_len = t.req.len();
            t.sent = 0;
            t.step = Step::Options;
            Adv::Continue
        }
        Step::OptHead => {
            let h = &t.buf[..20];
            let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
            if len > OPT_DATA_MAX {
                return Adv::Broken("bad option reply");
            }
            let next = match kind {
                nbdw::REP_ACK if len == 0 => return Adv::Connected,
                nbdw::REP_INFO if len == 0 => (Step::OptHead, 20),
                nbdw::REP_INFO => (Step::OptData, len),
                _ => return Adv::Broken("export refused"),
            };
            (t.step, t.got, t.want) = (next.0, 0, next.1);
            Adv::Continue
        }
        Step::OptData => {
            (t.step, t.got, t.want) = (Step::OptHead, 0, 20);
            Adv::Continue
        }
        _ => unreachable!("not a handshake step"),
    }
}

fn done_io(t: &mut T, io: Io) -> Adv {
    t.st.answered();
    t.st.bytes += io.len as u64;
    t.k += 1;
    Adv::NextIo
}

/// The server went away: the next of the list, or the end of this boot. The caller connects.
/// The target's writes stayed in the old server's cache: they are counted as lost (the boot
/// cannot succeed), and the target still expects them, as the OS above it would: a later read
/// that differs is "corrupted".
fn failover(t: &mut T, why: &'static str) -> Result<(), Fail> {
    t.sock = None;
    t.st.next_server(t.job.servers.len(), "vdisk", why)?;
    t.st.lose_writes(t.written.len() as u64);
    Ok(())
}

/// The trace is over: a boot whose writes were lost on a failover did not succeed.
fn trace_done(t: &T) -> Option<Result<(), Fail>> {
    Some(if t.st.writes_lost > 0 { Err(("vdisk", "writes lost")) } else { Ok(()) })
}
