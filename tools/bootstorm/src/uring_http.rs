//! The HTTP phases of `bootstorm boot` on io_uring: the bootstrap (`/boot/<file>`), the iPXE
//! script (`/ipxe?mac=…`) and the vDisk read trace as Range GETs (`/vdisk/<name>`), as iPXE does
//! them: one keep-alive connection per target, one request in flight, a 307 followed (a farm
//! sends a target to its server), the next server of the target's list when one goes away or
//! stops answering. One engine thread per core holds every target's connection in one ring;
//! the target's own thread sleeps until its phase is done.
//!
//! Per request: one send, usually one receive for the head (and the start of the body) and one
//! MSG_WAITALL receive for the rest of the body, straight into the target's buffer, which grows
//! to the largest answer once and is then reused (no copy or allocation per request).

use crate::engine::{self, Inboxes, Slots};
use crate::phases::{DiskRun, Expect, Fail, Io, Written};
use bootfarm::image::Chain;
use io_uring::{opcode, types, IoUring};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What a target fetches.
pub enum Kind {
    /// One GET of the bootstrap; the body must equal the expected file (when given).
    Bootstrap,
    /// One GET of the iPXE script; its body comes back in the result.
    Script,
    /// The read I/Os of a boot trace as Range GETs (writes are skipped: iPXE's HTTP SAN device
    /// is read-only), every body checked against the image.
    Disk(Vec<Io>),
}

pub struct Job {
    pub kind: Kind,
    /// Failover order; the first one is tried first.
    pub servers: Vec<SocketAddr>,
    /// Path and query of the request (the same on every server).
    pub path: String,
    pub done: mpsc::SyncSender<Done>,
}

pub struct Done {
    pub result: Result<(), Fail>,
    pub run: DiskRun,
    /// The last body (the iPXE script for Kind::Script).
    pub body: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    Connect,
    Send,
    Head,
    Body,
}

struct T {
    job: Job,
    /// Where the request goes now: the list's server, or where it redirected us.
    at: SocketAddr,
    addr: Box<SockAddr>,
    path: String,
    sock: Option<Socket>,
    step: Step,
    /// Index in the trace (Disk), skipping writes.
    k: usize,
    req: Vec<u8>,
    sent: usize,
    /// Head bytes, then the body: grown to the largest answer once, never cleared.
    buf: Vec<u8>,
    got: usize,
    head_len: usize,
    body_len: usize,
    status: u16,
    close_after: bool,
    location: Option<String>,
    hops: u32,
    /// The connection has carried an answer: if it breaks before the next answer starts, the
    /// server may just have closed an idle keep-alive connection, and the request is retried
    /// once on a new connection to the same server before failing over (as HTTP clients do).
    reused: bool,
    retried: bool,
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
/// A response head larger than this is refused (bootfarm's are ~300 bytes).
const HEAD_MAX: usize = 16 << 10;
/// Bodies larger than this are refused (a bootstrap is a few MiB; a range at most 1 MiB).
const BODY_MAX: usize = 256 << 20;
/// Redirects followed for one request (a farm answers at most one).
const HOPS_MAX: u32 = 2;

/// The HTTP engine threads' inboxes.
pub type Engine = Inboxes<Job>;

pub fn start<'s, 'e: 's>(
    scope: &'s std::thread::Scope<'s, 'e>,
    cpus: &[Option<usize>],
    chain: Option<&'e Chain>,
    expect_boot: Option<&'e [u8]>,
    timeout: Duration,
    deadline: Instant,
) -> Engine {
    Inboxes::start(scope, cpus, move |rx| run(rx, chain, expect_boot, timeout, deadline))
}

enum Adv {
    /// Submit the next operation of this step.
    Continue,
    /// Send the next request (the next read, or the same one where a redirect points).
    Next,
    /// The target's work is done.
    Finished,
    /// The connection is unusable: fail over.
    Broken(&'static str),
    Fatal(Fail),
}

impl Kind {
    /// The phase a failure is reported under.
    pub fn phase(&self) -> &'static str {
        match self {
            Kind::Bootstrap => "bootstrap",
            Kind::Script => "ipxe",
            Kind::Disk(_) => "vdisk",
        }
    }
}

fn run(rx: mpsc::Receiver<Job>, chain: Option<&Chain>, expect_boot: Option<&[u8]>, timeout: Duration, deadline: Instant) {
    let mut ring = engine::ring();
    let mut slots: Slots<T> = Slots::default();
    let mut last_scan = Instant::now();
    loop {
        while let Some(j) = slots.next_job(&rx) {
            let idx = slots.reserve();
            let at = j.servers[0];
            let path = j.path.clone();
            let mut t = Box::new(T {
                job: j,
                at,
                addr: Box::new(at.into()),
                path,
                sock: None,
                step: Step::Connect,
                k: 0,
                req: Vec::with_capacity(256),
                sent: 0,
                buf: Vec::new(),
                got: 0,
                head_len: 0,
                body_len: 0,
                status: 0,
                close_after: false,
                location: None,
                hops: 0,
                reused: false,
                retried: false,
                st: DiskRun::default(),
                op: Op::default(),
            });
            match next_request(&mut t, &mut ring, idx) {
                Ok(true) => slots.put(idx, t),
                r => {
                    finish(t, r.map(|_| ()));
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
            let outcome = match o {
                Outcome::Cancelled(RUN_OVER) => Adv::Fatal((t.job.kind.phase(), RUN_OVER)),
                Outcome::Cancelled(why) => Adv::Broken(why),
                Outcome::Res(res) => advance(t, res, chain, expect_boot),
            };
            let finished = match outcome {
                Adv::Continue => {
                    submit(t, &mut ring, idx);
                    None
                }
                Adv::Finished => Some(Ok(())),
                Adv::Next => next_or_done(t, &mut ring, idx),
                Adv::Broken(why) => match failover(t, why) {
                    Ok(()) => next_or_done(t, &mut ring, idx),
                    Err(f) => Some(Err(f)),
                },
                Adv::Fatal(f) => Some(Err(f)),
            };
            if let Some(r) = finished {
                finish(slots.remove(idx), r);
            }
        }
    }
}

fn next_or_done(t: &mut T, ring: &mut IoUring, idx: usize) -> Option<Result<(), Fail>> {
    match next_request(t, ring, idx) {
        Ok(true) => None,
        Ok(false) => Some(Ok(())),
        Err(f) => Some(Err(f)),
    }
}

fn finish(t: Box<T>, result: Result<(), Fail>) {
    let T { job, st, buf, head_len, body_len, .. } = *t;
    let body = if result.is_ok() && matches!(job.kind, Kind::Script) { buf[head_len..head_len + body_len].to_vec() } else { Vec::new() };
    let _ = job.done.send(Done { result, run: st, body });
}

/// The next read of the trace (or the one request of a fetch), built and submitted, connecting
/// first where needed. Ok(false): nothing left to fetch.
fn next_request(t: &mut T, ring: &mut IoUring, idx: usize) -> Result<bool, Fail> {
    let range = match &t.job.kind {
        Kind::Disk(ios) => {
            while ios.get(t.k).is_some_and(|io| io.write) {
                t.k += 1;
            }
            match ios.get(t.k) {
                Some(io) => Some((io.off, io.off + io.len as u64 - 1)),
                None => return Ok(false),
            }
        }
        _ => None,
    };
    t.req.clear();
    let _ = write!(t.req, "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: bootstorm\r\n", t.path, t.at);
    if let Some((a, b)) = range {
        let _ = write!(t.req, "Range: bytes={a}-{b}\r\n");
    }
    t.req.extend_from_slice(b"\r\n");
    t.sent = 0;
    t.got = 0;
    t.step = if t.sock.is_some() { Step::Send } else { Step::Connect };
    if t.sock.is_none() {
        let s = Socket::new(Domain::for_address(t.at), Type::STREAM, Some(Protocol::TCP))
            .map_err(|_| (t.job.kind.phase(), "no local socket"))?;
        let _ = s.set_nodelay(true);
        *t.addr = t.at.into();
        t.sock = Some(s);
    }
    submit(t, ring, idx);
    Ok(true)
}

fn submit(t: &mut T, ring: &mut IoUring, idx: usize) {
    let fd = types::Fd(t.sock.as_ref().expect("a socket").as_raw_fd());
    let e = match t.step {
        Step::Connect => opcode::Connect::new(fd, t.addr.as_ptr(), t.addr.len()).build(),
        Step::Send => opcode::Send::new(fd, t.req[t.sent..].as_ptr(), (t.req.len() - t.sent) as u32).flags(libc::MSG_NOSIGNAL).build(),
        Step::Head => {
            if t.buf.len() < HEAD_MAX + 64 * 1024 {
                t.buf.resize(HEAD_MAX + 64 * 1024, 0);
            }
            opcode::Recv::new(fd, t.buf[t.got..].as_mut_ptr(), (t.buf.len() - t.got) as u32).build()
        }
        Step::Body => {
            let end = t.head_len + t.body_len;
            opcode::Recv::new(fd, t.buf[t.got..end].as_mut_ptr(), (end - t.got) as u32).flags(libc::MSG_WAITALL).build()
        }
    };
    // The buffers and the address live in the boxed target until the completion arrives.
    t.op.submit(ring, idx, e);
}

fn advance(t: &mut T, res: i32, chain: Option<&Chain>, expect_boot: Option<&[u8]>) -> Adv {
    let ph = t.job.kind.phase();
    match t.step {
        Step::Connect => {
            if res < 0 {
                return Adv::Broken("connect failed");
            }
            t.step = Step::Send;
            Adv::Continue
        }
        Step::Send => {
            if res <= 0 {
                return Adv::Broken("send failed");
            }
            t.sent += res as usize;
            if t.sent == t.req.len() {
                t.step = Step::Head;
                t.got = 0;
            }
            Adv::Continue
        }
        Step::Head => {
            if res <= 0 {
                return Adv::Broken(if res == 0 { "server closed the connection" } else { "connection error" });
            }
            let was = t.got;
            t.got += res as usize;
            // The blank line may straddle two receives.
            let from = was.saturating_sub(3);
            let Some(end) = t.buf[from..t.got].windows(4).position(|w| w == b"\r\n\r\n").map(|p| from + p + 4) else {
                return if t.got >= HEAD_MAX { Adv::Fatal((ph, "response head too large")) } else { Adv::Continue };
            };
            if end > HEAD_MAX {
                return Adv::Fatal((ph, "response head too large"));
            }
            let Some(h) = parse_head(&t.buf[..end]) else { return Adv::Fatal((ph, "not an HTTP answer")) };
            if h.length > BODY_MAX {
                return Adv::Fatal((ph, "body too large"));
            }
            t.head_len = end;
            t.body_len = h.length;
            t.status = h.status;
            t.close_after = h.close;
            t.location = h.location;
            if t.got > end + h.length {
                return Adv::Fatal((ph, "more bytes than the answer"));
            }
            if t.buf.len() < end + h.length {
                t.buf.resize(end + h.length, 0);
            }
            t.step = Step::Body;
            if t.got == end + h.length {
                return body_done(t, chain, expect_boot);
            }
            Adv::Continue
        }
        Step::Body => {
            if res <= 0 {
                return Adv::Broken(if res == 0 { "server closed the connection" } else { "connection error" });
            }
            t.got += res as usize;
            if t.got < t.head_len + t.body_len {
                return Adv::Continue;
            }
            body_done(t, chain, expect_boot)
        }
    }
}

/// A whole answer is in: follow a redirect, check the body, go on with the next request.
fn body_done(t: &mut T, chain: Option<&Chain>, expect_boot: Option<&[u8]>) -> Adv {
    let ph = t.job.kind.phase();
    t.reused = true;
    t.retried = false;
    if t.close_after {
        t.sock = None;
        t.reused = false;
    }
    if t.status == 307 {
        t.hops += 1;
        if t.hops > HOPS_MAX {
            return Adv::Fatal((ph, "redirect loop"));
        }
        let Some((at, path)) = t.location.as_deref().and_then(parse_location) else { return Adv::Fatal((ph, "bad redirect")) };
        if at != t.at {
            t.sock = None;
            t.reused = false;
        }
        t.at = at;
        t.path = path;
        return Adv::Next;
    }
    t.hops = 0;
    t.st.answered();
    let body = &t.buf[t.head_len..t.head_len + t.body_len];
    match &t.job.kind {
        Kind::Bootstrap | Kind::Script => {
            if t.status != 200 {
                return Adv::Fatal((ph, "http error status"));
            }
            if matches!(t.job.kind, Kind::Bootstrap) && expect_boot.is_some_and(|e| e != body) {
                return Adv::Fatal((ph, "corrupted"));
            }
            t.st.bytes += body.len() as u64;
            Adv::Finished
        }
        Kind::Disk(ios) => {
            let io = ios[t.k];
            if t.status != 206 {
                return Adv::Fatal((ph, "http error status"));
            }
            if body.len() != io.len as usize {
                return Adv::Fatal((ph, "corrupted"));
            }
            // HTTP SAN is read-only: the image is all a target can expect.
            if !(Expect { chain, written: &Written::default() }).check(io.off, body) {
                return Adv::Fatal((ph, "corrupted"));
            }
            t.st.bytes += io.len as u64;
            t.k += 1;
            Adv::Next
        }
    }
}

/// After a broken connection: the same server once more if a kept-alive connection broke
/// before any answer, else the next server of the list, from the original path.
fn failover(t: &mut T, why: &'static str) -> Result<(), Fail> {
    let stale = t.reused && !t.retried && matches!(t.step, Step::Send | Step::Head) && t.got == 0;
    t.sock = None;
    t.reused = false;
    if stale && why != "server stopped answering" {
        t.retried = true;
        return Ok(());
    }
    t.st.next_server(t.job.servers.len(), t.job.kind.phase(), why)?;
    t.at = t.job.servers[t.st.server];
    t.path = t.job.path.clone();
    t.hops = 0;
    Ok(())
}

struct Head {
    status: u16,
    length: usize,
    close: bool,
    location: Option<String>,
}

/// Status, Content-Length, Connection and Location of a response head (ending in CRLFCRLF).
fn parse_head(b: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(b).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    let mut h = Head { status, length: 0, close: version == "HTTP/1.0", location: None };
    let mut have_length = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { continue };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            h.length = v.parse().ok()?;
            have_length = true;
        } else if k.eq_ignore_ascii_case("connection") {
            h.close = v.eq_ignore_ascii_case("close");
        } else if k.eq_ignore_ascii_case("location") {
            h.location = Some(v.to_string());
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            return None; // bootfarm and the peers measured answer with lengths; chunked is not read
        }
    }
    // A body without a length would run to the close; bootstorm insists on lengths.
    (have_length || status == 204 || status == 304).then_some(h)
}

/// `http://host:port/path` → (address, path).
fn parse_location(loc: &str) -> Option<(SocketAddr, String)> {
    let rest = loc.strip_prefix("http://")?;
    let (hp, p) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let at: SocketAddr = hp.parse().ok()?;
    Some((at, if p.is_empty() { "/".into() } else { p.into() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_read_case_blind_and_refused_without_a_length() {
        let h = parse_head(b"HTTP/1.1 206 Partial Content\r\ncontent-length: 512\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert_eq!((h.status, h.length, h.close), (206, 512, false));
        let h = parse_head(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.2:8080/vdisk/d?via=1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        assert_eq!((h.status, h.close), (307, true));
        assert_eq!(parse_location(h.location.as_deref().unwrap()), Some(("127.0.0.2:8080".parse().unwrap(), "/vdisk/d?via=1".into())));
        assert!(parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n").unwrap().close);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_none());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_none());
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_none());
        assert!(parse_head(b"HTTP/1.1 abc OK\r\nContent-Length: 1\r\n\r\n").is_none());
        assert_eq!(parse_location("https://x/"), None);
        assert_eq!(parse_location("http://127.0.0.1:80"), Some(("127.0.0.1:80".parse().unwrap(), "/".into())));
    }
}
