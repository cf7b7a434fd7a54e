//! The vDisk phase's driver on io_uring, for NBD (`uring.rs`) and iSCSI (`uring_iscsi.rs`):
//! one engine thread per core drives every booting target's connection and trace replay, one
//! operation in flight per target, all targets' operations batched in the same ring. A
//! protocol (`Session`) says what it submits and how a completion advances it; connecting,
//! timeouts, failover (the next server of the list, the writes made counted lost) and the
//! trace's end are the same for both. Nothing here blocks: a server that hangs holds up its own
//! targets only, until the timeout fails them over.

use crate::engine::{self, Inboxes, Op, Outcome, Pool, Slots, RUN_OVER};
use crate::phases::{DiskRun, Fail, Io, Written};
use bootfarm::image::Chain;
use io_uring::{opcode, squeue, types, IoUring};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A target's vDisk phase: its trace, its servers (a failover list), what its protocol needs
/// (`P`: the NBD export, the iSCSI names), and where the result goes.
pub struct Job<P> {
    pub target: u64,
    pub ios: Vec<Io>,
    pub servers: Vec<SocketAddr>,
    pub proto: P,
    pub done: mpsc::SyncSender<(Result<(), Fail>, DiskRun)>,
}

/// Request buffers circulate among sends only (a send is over at once, so the few in use stay
/// cached for the next WRITE's pattern), reply buffers among the targets awaiting a reply.
#[derive(Default)]
pub struct Pools {
    pub req: Pool,
    pub reply: Pool,
}

/// What a completion sees besides its target: the image to check reads against, the buffers.
pub struct Cx<'a, 'c> {
    pub chain: Option<&'c Chain>,
    pub pools: &'a mut Pools,
}

/// What became of a target after a completion.
pub enum Adv {
    /// Submit the session's next operation.
    Continue,
    /// The session is ready for the next I/O of the trace (`Session::start_io`).
    NextIo,
    /// The trace is done.
    Finished,
    /// The connection is gone: fail over.
    Broken(&'static str),
    Fatal(Fail),
}

/// A vDisk protocol's session on one connection.
pub trait Session: Sized {
    type Params: Send;
    /// A new session on a connection just made (after a failover too: the trace goes on at
    /// I/O `t.k`).
    fn open(job: &Job<Self::Params>) -> Self;
    /// The operation the session waits on now, on the socket at `fd`.
    fn entry(t: &mut Target<Self>, fd: types::Fixed) -> squeue::Entry;
    /// A completion of that operation (a positive result).
    fn advance(t: &mut Target<Self>, n: usize, cx: &mut Cx) -> Adv;
    /// Prepares I/O `t.k` (Continue submits it); false when the trace is done.
    fn start_io(t: &mut Target<Self>, cx: &mut Cx) -> bool;
    /// The target is done: the session's buffers go back to the pools.
    fn recycle(&mut self, pools: &mut Pools);
}

/// One booting target on an engine thread: the parts every protocol shares, its session `s`.
pub struct Target<S: Session> {
    pub job: Job<S::Params>,
    sock: Option<Socket>,
    addr: Box<SockAddr>,
    connecting: bool,
    /// The next I/O of the trace.
    pub k: usize,
    /// WRITEs so far: part of each written block's tag.
    pub seq: u64,
    /// Its own writes, which its reads must return.
    pub written: Written,
    pub st: DiskRun,
    /// The operation in flight (a server that stops answering is given up after `timeout`).
    op: Op,
    pub s: S,
}

impl<S: Session> engine::InFlight for Target<S> {
    fn op(&mut self) -> &mut Op {
        &mut self.op
    }
}

impl<S: Session> Target<S> {
    /// The tag of block `j` of the current WRITE: the target, the WRITE's number, the block.
    pub fn write_tag(&self, j: u64) -> u64 {
        self.job.target.wrapping_mul(1 << 32) ^ self.seq << 8 ^ j
    }

    /// Records the current WRITE (at `off`, `len` bytes) as the target's own blocks.
    pub fn wrote(&mut self, io: Io) {
        for j in 0..io.len as u64 / crate::phases::BLOCK {
            let tag = self.write_tag(j);
            self.written.insert(io.off / crate::phases::BLOCK + j, tag);
        }
    }

    /// I/O `t.k` is done.
    pub fn io_done(&mut self, io: Io) {
        self.st.answered();
        self.st.bytes += io.len as u64;
        self.k += 1;
    }
}

pub type Engine<P> = Inboxes<Job<P>>;

/// Starts one engine thread per entry of `cpus` (pinned where Some) in `scope`; they end when
/// the Engine is dropped and their targets are done.
pub fn start<'s, 'e: 's, S: Session + 'e>(
    scope: &'s std::thread::Scope<'s, 'e>,
    cpus: &[Option<usize>],
    chain: Option<&'e Chain>,
    timeout: Duration,
    deadline: Instant,
) -> Engine<S::Params>
where
    S::Params: 'e,
{
    Inboxes::start(scope, cpus, move |rx| run::<S>(rx, chain, timeout, deadline))
}

fn run<S: Session>(rx: mpsc::Receiver<Job<S::Params>>, chain: Option<&Chain>, timeout: Duration, deadline: Instant) {
    let mut ring = engine::ring();
    let mut slots: Slots<Target<S>> = Slots::default();
    let mut pools = Pools::default();
    let mut last_scan = Instant::now();
    loop {
        // New targets.
        while let Some(job) = slots.next_job(&rx) {
            let idx = slots.reserve();
            let addr = Box::new(job.servers[0].into());
            let s = S::open(&job);
            let mut t = Box::new(Target {
                job,
                sock: None,
                addr,
                connecting: true,
                k: 0,
                seq: 0,
                written: Written::default(),
                st: DiskRun::default(),
                op: Op::default(),
                s,
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
            let mut cx = Cx { chain, pools: &mut pools };
            // The one operation of this target is over either way; its buffers are free.
            let adv = match o {
                Outcome::Cancelled(RUN_OVER) => Adv::Fatal(("vdisk", RUN_OVER)),
                Outcome::Cancelled(why) => Adv::Broken(why),
                Outcome::Res(res) if t.connecting && res < 0 => Adv::Broken("connect failed"),
                Outcome::Res(_) if t.connecting => {
                    t.connecting = false;
                    Adv::Continue
                }
                Outcome::Res(res) if res <= 0 => Adv::Broken(if res == 0 { "server stopped answering" } else { "connection error" }),
                Outcome::Res(res) => S::advance(t, res as usize, &mut cx),
            };
            let adv = match adv {
                Adv::NextIo if S::start_io(t, &mut cx) => Adv::Continue,
                Adv::NextIo => Adv::Finished,
                a => a,
            };
            let finished = match adv {
                Adv::Continue => {
                    submit(t, &mut ring, idx);
                    None
                }
                Adv::NextIo => unreachable!("started above"),
                // A boot whose writes were lost on a failover did not succeed.
                Adv::Finished => Some(if t.st.writes_lost > 0 { Err(("vdisk", "writes lost")) } else { Ok(()) }),
                Adv::Broken(e) => failover(t, e).and_then(|()| connect(t, &mut ring, idx)).err().map(Err),
                Adv::Fatal(f) => Some(Err(f)),
            };
            if let Some(r) = finished {
                let mut t = slots.remove(idx);
                engine::uninstall(&ring, idx);
                t.s.recycle(&mut pools);
                let _ = t.job.done.send((r, t.st));
            }
        }
    }
}

/// A new connection to the current server (`t.st.server`) and a new session on it.
fn connect<S: Session>(t: &mut Target<S>, ring: &mut IoUring, idx: usize) -> Result<(), Fail> {
    let at = t.job.servers[t.st.server];
    let s = Socket::new(Domain::for_address(at), Type::STREAM, Some(Protocol::TCP)).map_err(|_| ("vdisk", "no local socket"))?;
    let _ = s.set_nodelay(true);
    // Its operations name it by slot (the old socket of a failover leaves the table here).
    if !engine::install(ring, idx, s.as_raw_fd()) {
        return Err(("vdisk", "no local socket"));
    }
    *t.addr = at.into();
    t.sock = Some(s);
    t.connecting = true;
    t.s = S::open(&t.job);
    submit(t, ring, idx);
    Ok(())
}

fn submit<S: Session>(t: &mut Target<S>, ring: &mut IoUring, idx: usize) {
    debug_assert!(t.sock.is_some(), "a socket installed at the slot");
    let fd = types::Fixed(idx as u32);
    let e = if t.connecting { opcode::Connect::new(fd, t.addr.as_ptr(), t.addr.len()).build() } else { S::entry(t, fd) };
    // The buffers live in the boxed target until its completion arrives.
    t.op.submit(ring, idx, e);
}

/// The server went away: the next of the list, or the end of this boot. The caller connects.
/// The target's writes stayed in the old server's cache: they are counted as lost (the boot
/// cannot succeed), and the target still expects them, as the OS above it would: a later read
/// that differs is "corrupted".
fn failover<S: Session>(t: &mut Target<S>, why: &'static str) -> Result<(), Fail> {
    t.sock = None;
    t.st.next_server(t.job.servers.len(), "vdisk", why)?;
    t.st.lose_writes(t.written.len() as u64);
    Ok(())
}
