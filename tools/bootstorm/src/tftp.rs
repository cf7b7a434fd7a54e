//! The TFTP bootstrap storm. One thread per core, each with an io_uring: every simulated target
//! has its own UDP socket (as a real target has its own address) with a multishot receive on
//! the thread's provided buffers, and sends its RRQ/ACKs with sendmsg. Every DATA payload is
//! compared with the expected file; a target that receives one wrong byte is counted as
//! corrupted, never as booted. Faults (--loss, --dup, --reorder) are injected on the client side
//! in both directions.

use crate::report::Phase;
use bootfarm::engine::ring::{self, BufRing};
use bootfarm::tftp::client::{Client, Outcome, Request, Send};
use io_uring::{cqueue, opcode, types};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// TFTP server (address:port).
    #[arg(long, default_value = "127.0.0.1:69")]
    server: SocketAddr,
    /// File name to request.
    #[arg(long)]
    file: String,
    /// Local copy of the file: every received byte is checked against it.
    #[arg(long)]
    expect: PathBuf,
    /// Targets to boot in all (`--boots` is the same bound).
    #[arg(long, alias = "boots", default_value_t = 100)]
    targets: u64,
    /// Targets booting at once (default: all of them, a storm).
    #[arg(long)]
    concurrency: Option<u64>,
    /// blksize option (iPXE asks 1432); none = RFC 1350 512-byte blocks.
    #[arg(long)]
    blksize: Option<u16>,
    /// windowsize option (RFC 7440); none = lockstep.
    #[arg(long)]
    windowsize: Option<u16>,
    /// Do not ask for tsize.
    #[arg(long)]
    no_tsize: bool,
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    #[arg(long, default_value_t = 5)]
    retries: u32,
    #[command(flatten)]
    faults: Faults,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Client threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Leave the client threads unpinned (by default thread k runs on the k-th CPU this
    /// process may use, so that each transfer's packets stay on one core against a server
    /// that steers flows by CPU).
    #[arg(long)]
    no_pin: bool,
    /// Stop after this long whatever remains (remaining targets count as timed out;
    /// `--duration` is the same bound).
    #[arg(long, alias = "duration", default_value_t = 120)]
    duration_max_s: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a one-page HTML report (plots included, no network needed) here.
    #[arg(long)]
    html: Option<PathBuf>,
}

/// Client-side faults on the UDP (TFTP) path, shared by `tftp` and `boot`.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct Faults {
    /// Probability of dropping each packet, in either direction.
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Probability of delivering a received packet twice.
    #[arg(long, default_value_t = 0.0)]
    pub dup: f64,
    /// Probability of holding a received packet back behind the next one.
    #[arg(long, default_value_t = 0.0)]
    pub reorder: f64,
}

struct Target {
    sock: Option<Socket>,
    client: Client,
    started: Instant,
    tx: Vec<u8>,
    iov: libc::iovec,
    msg: libc::msghdr,
    dest: SockAddr,
    sending: bool,
    /// Connected to the server's transfer port (its TID) once known: no route lookup or IP id
    /// hashing per ACK in the kernel, and the server's packets take the early-demux path.
    connected: bool,
    recv_armed: bool,
    held: Option<(Vec<u8>, SocketAddr)>,
    finished: bool,
}

const K_RECV: u64 = 1;
const K_SEND: u64 = 2;
const K_CANCEL: u64 = 3;

fn ud(kind: u64, idx: usize) -> u64 {
    kind | (idx as u64) << 8
}

pub fn run(a: Args) -> Result<bool, String> {
    let file = std::fs::File::open(&a.expect).map_err(|e| format!("{}: {e}", a.expect.display()))?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let expect: Vec<u8> = if len == 0 { Vec::new() } else { unsafe { memmap2::Mmap::map(&file) }.map_err(|e| e.to_string())?.to_vec() };
    let threads = if a.threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { a.threads };
    let concurrency = a.concurrency.unwrap_or(a.targets).max(1);
    crate::report::open_files_for(concurrency, 1);
    let expect = std::sync::Arc::new(expect);
    let t0 = Instant::now();
    let cpus = bootfarm::engine::allowed_cpus();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let cpu = (!a.no_pin).then(|| cpus[t % cpus.len()]);
            let a = a.clone();
            let expect = expect.clone();
            let share = |n: u64| n / threads as u64 + (t as u64).lt(&(n % threads as u64)) as u64;
            let (targets, conc) = (share(a.targets), share(concurrency).max(1));
            std::thread::spawn(move || {
                if let Some(cpu) = cpu {
                    bootfarm::engine::pin(cpu);
                }
                storm(&a, targets, conc, &expect, a.seed.wrapping_add(t as u64 * 7919) | 1, t0)
            })
        })
        .collect();
    let mut total = Phase::new("tftp");
    for h in handles {
        let p = h.join().map_err(|_| "a client thread panicked".to_string())??;
        total.merge(&p);
    }
    let wall = t0.elapsed();
    print!("{}", total.text(wall));
    if let Some(j) = &a.json {
        let body = format!(
            "{{\"tool\": \"bootstorm\", \"targets\": {}, \"concurrency\": {}, \"server\": \"{}\", \"file\": \"{}\", \"blksize\": {}, \"windowsize\": {}, \"loss\": {}, \"client_cpu_ms\": {:.0}, \"phases\": [{}]}}\n",
            a.targets,
            concurrency,
            a.server,
            a.file,
            a.blksize.unwrap_or(512),
            a.windowsize.unwrap_or(1),
            a.faults.loss,
            crate::report::own_cpu_ms(),
            total.json(wall)
        );
        std::fs::write(j, body).map_err(|e| format!("{}: {e}", j.display()))?;
    }
    if let Some(h) = &a.html {
        let context = format!(
            "{} targets ({} at once) fetching {} from {} over TFTP, blksize {}, windowsize {}, loss {}",
            a.targets,
            concurrency,
            a.file,
            a.server,
            a.blksize.unwrap_or(512),
            a.windowsize.unwrap_or(1),
            a.faults.loss
        );
        std::fs::write(h, total.html(wall, &context)).map_err(|e| format!("{}: {e}", h.display()))?;
    }
    Ok(total.failed() == 0 && total.completed == a.targets)
}

fn storm(a: &Args, targets: u64, concurrency: u64, expect: &[u8], seed: u64, t0: Instant) -> Result<Phase, String> {
    let mut phase = Phase::new("tftp");
    if targets == 0 {
        return Ok(phase);
    }
    let mut uring = ring::build().map_err(|e| e.to_string())?;
    let buf_size = (a.blksize.unwrap_or(512) as usize + 4 + 256).next_power_of_two().max(2048);
    let mut bufs = BufRing::new(&uring, 0, 4096, buf_size).map_err(|e| format!("cannot register buffers: {e}"))?;
    let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
    let mut rng = bootfarm::rng::XorShift::new(seed);
    let req = Request {
        file: a.file.clone(),
        blksize: a.blksize,
        windowsize: a.windowsize,
        tsize: !a.no_tsize,
        timeout: Duration::from_millis(a.timeout_ms),
        retries_max: a.retries,
    };
    let server: SockAddr = a.server.into();
    let mut slots: Vec<Option<Box<Target>>> = Vec::with_capacity(targets as usize);
    let (mut launched, mut running, mut lingering) = (0u64, 0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(a.duration_max_s);
    let mut cqes: Vec<(u64, i32, u32)> = Vec::new();
    let mut last_scan = Instant::now();
    let mut verify = |off: u64, p: &[u8]| expect.get(off as usize..off as usize + p.len()) == Some(p);
    loop {
        let now = Instant::now();
        while launched < targets && running < concurrency {
            let sock = Socket::new(Domain::for_address(a.server), Type::DGRAM, Some(Protocol::UDP)).map_err(|e| e.to_string())?;
            sock.set_nonblocking(true).map_err(|e| e.to_string())?;
            let bind: SocketAddr = if a.server.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
            sock.bind(&bind.into()).map_err(|e| format!("cannot bind a client socket: {e}"))?;
            let idx = slots.len();
            let t = Box::new(Target {
                sock: Some(sock),
                client: Client::new(req.clone(), now),
                started: now,
                tx: Vec::with_capacity(600),
                iov: libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 },
                msg: unsafe { std::mem::zeroed() },
                dest: server.clone(),
                sending: false,
                connected: false,
                recv_armed: true,
                held: None,
                finished: false,
            });
            let fd = t.sock.as_ref().unwrap().as_raw_fd();
            ring::push(&mut uring, &opcode::RecvMsgMulti::new(types::Fd(fd), &*msg, bufs.bgid).build().user_data(ud(K_RECV, idx)));
            slots.push(Some(t));
            launched += 1;
            running += 1;
            flush(&mut uring, &mut slots, idx, &mut rng, a.faults.loss);
        }
        if (running == 0 && lingering == 0 && launched == targets) || now > deadline {
            break;
        }
        let ts = types::Timespec::from(Duration::from_millis(2));
        let args = types::SubmitArgs::new().timespec(&ts);
        match uring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)) => {}
            Err(e) => return Err(format!("io_uring_enter: {e}")),
        }
        let now = Instant::now();
        cqes.clear();
        cqes.extend(uring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
        for &(u, res, flags) in &cqes {
            let (kind, idx) = (u & 0xFF, (u >> 8) as usize);
            let bid = cqueue::buffer_select(flags);
            match kind {
                K_RECV => {
                    if let Some(t) = slots[idx].as_deref_mut() {
                        if !cqueue::more(flags) {
                            t.recv_armed = false;
                        }
                        if let (Some(bid), true, false) = (bid, res >= 0, t.finished) {
                            if let Ok(out) = types::RecvMsgOut::parse(bufs.get(bid, res as usize), &msg) {
                                let from = sockaddr(out.name_data());
                                let payload = out.payload_data();
                                if let Some(from) = from {
                                    if !rng.chance(a.faults.loss) {
                                        if rng.chance(a.faults.reorder) && t.held.is_none() {
                                            t.held = Some((payload.to_vec(), from));
                                        } else {
                                            t.client.handle(from, payload, now, &mut verify);
                                            if rng.chance(a.faults.dup) {
                                                t.client.handle(from, payload, now, &mut verify);
                                            }
                                            if let Some((p, f)) = t.held.take() {
                                                t.client.handle(f, &p, now, &mut verify);
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                K_SEND => {
                    if let Some(t) = slots[idx].as_deref_mut() {
                        t.sending = false;
                        if t.finished {
                            // A finished target may still owe its final ACK.
                            flush(&mut uring, &mut slots, idx, &mut rng, a.faults.loss);
                            if !slots[idx].as_ref().unwrap().sending {
                                slots[idx] = None;
                                lingering -= 1;
                            }
                        }
                    }
                }
                _ => {}
            }
            if let Some(bid) = bid {
                bufs.recycle(bid);
            }
            if kind == K_RECV || kind == K_SEND {
                settle(
                    &mut uring,
                    &mut slots,
                    idx,
                    &mut phase,
                    &mut running,
                    &mut lingering,
                    &mut rng,
                    a.faults.loss,
                    &msg,
                    bufs.bgid,
                    now,
                    t0,
                );
            }
        }
        if now.duration_since(last_scan) >= Duration::from_millis(5) {
            last_scan = now;
            for idx in 0..slots.len() {
                let due = slots[idx].as_ref().is_some_and(|t| !t.finished && t.client.poll_timeout().is_some_and(|d| d <= now));
                if due {
                    slots[idx].as_mut().unwrap().client.handle_timeout(now);
                    settle(
                        &mut uring,
                        &mut slots,
                        idx,
                        &mut phase,
                        &mut running,
                        &mut lingering,
                        &mut rng,
                        a.faults.loss,
                        &msg,
                        bufs.bgid,
                        now,
                        t0,
                    );
                }
            }
        }
    }
    // Whatever is still running at the time limit failed.
    for t in slots.iter().flatten().filter(|t| !t.finished) {
        let _ = t;
        phase.fail("time limit reached");
    }
    bufs.unregister(&uring);
    Ok(phase)
}

/// After a target's client changed: send what it wants, re-arm its receive, record its end.
#[allow(clippy::too_many_arguments)]
fn settle(
    uring: &mut io_uring::IoUring,
    slots: &mut [Option<Box<Target>>],
    idx: usize,
    phase: &mut Phase,
    running: &mut u64,
    lingering: &mut u64,
    rng: &mut bootfarm::rng::XorShift,
    loss: f64,
    msg: &libc::msghdr,
    bgid: u16,
    now: Instant,
    t0: Instant,
) {
    flush(uring, slots, idx, rng, loss);
    let Some(t) = slots[idx].as_deref_mut() else { return };
    if t.finished {
        return;
    }
    match t.client.outcome() {
        Outcome::Running => {
            if !t.recv_armed {
                let fd = t.sock.as_ref().unwrap().as_raw_fd();
                ring::push(uring, &opcode::RecvMsgMulti::new(types::Fd(fd), msg, bgid).build().user_data(ud(K_RECV, idx)));
                t.recv_armed = true;
            }
            return;
        }
        Outcome::Done => {
            phase.completed += 1;
            phase.micros.record((now - t.started).as_micros().max(1) as u64).ok();
            phase.done_at_ms.push((now - t0).as_secs_f64() * 1000.0);
        }
        Outcome::Corrupted => phase.fail("corrupted: wrong bytes or size"),
        Outcome::TimedOut => phase.fail("timed out"),
        Outcome::ServerError(_) => phase.fail("server sent ERROR"),
    }
    phase.bytes += t.client.bytes;
    phase.resends += t.client.resends;
    t.finished = true;
    *running -= 1;
    if t.recv_armed {
        ring::push(uring, &opcode::AsyncCancel::new(ud(K_RECV, idx)).build().user_data(ud(K_CANCEL, idx)));
    }
    if t.sending {
        // A send (maybe the final ACK, maybe one before it with the final ACK still owed) is in
        // flight, and io_uring looks the socket up only at submission: the socket and the
        // target stay until the sends complete (see K_SEND).
        *lingering += 1;
    } else {
        slots[idx] = None;
    }
}

fn flush(uring: &mut io_uring::IoUring, slots: &mut [Option<Box<Target>>], idx: usize, rng: &mut bootfarm::rng::XorShift, loss: f64) {
    let Some(t) = slots[idx].as_deref_mut() else { return };
    // One send at a time per target; a finished one still sends what it owes (its last ACK).
    if t.sending || t.sock.is_none() {
        return;
    }
    let Some(s) = t.client.poll_send() else { return };
    t.tx.clear();
    match s {
        Send::Rrq(b) => {
            t.tx.extend_from_slice(&b);
            t.dest = SockAddr::from(t.dest.as_socket().unwrap());
        }
        Send::Ack(block, to) => {
            t.tx.extend_from_slice(&bootfarm::tftp::wire::encode_ack(block));
            if !t.connected {
                // The client accepts packets from this TID only from now on (RFC 1350).
                t.connected = t.sock.as_ref().unwrap().connect(&to.into()).is_ok();
            }
            t.dest = to.into();
        }
    }
    if rng.chance(loss) {
        return; // lost on the way out
    }
    t.iov = libc::iovec { iov_base: t.tx.as_mut_ptr().cast(), iov_len: t.tx.len() };
    if t.connected {
        t.msg.msg_name = std::ptr::null_mut();
        t.msg.msg_namelen = 0;
    } else {
        t.msg.msg_name = t.dest.as_ptr() as *mut _;
        t.msg.msg_namelen = t.dest.len();
    }
    t.msg.msg_iov = &mut t.iov;
    t.msg.msg_iovlen = 1;
    let fd = t.sock.as_ref().unwrap().as_raw_fd();
    ring::push(uring, &opcode::SendMsg::new(types::Fd(fd), &t.msg).build().user_data(ud(K_SEND, idx)));
    t.sending = true;
}

/// The socket address a recvmsg wrote (`name`: the bytes the kernel gave).
pub(crate) fn sockaddr(name: &[u8]) -> Option<SocketAddr> {
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let n = name.len().min(std::mem::size_of::<libc::sockaddr_storage>());
    // Safety: at most sizeof(sockaddr_storage) bytes the kernel wrote, into the storage.
    unsafe { std::ptr::copy_nonoverlapping(name.as_ptr(), (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(), n) };
    unsafe { SockAddr::new(storage, n as libc::socklen_t) }.as_socket()
}
