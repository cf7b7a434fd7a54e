//! HTTP on the engine: a SO_REUSEPORT listener per worker with multishot accept, one receive
//! buffer per connection (requests are parsed in place, pipelined ones in order), and responses
//! sent as one sendmsg whose iovec holds the header block and slices of the file or vDisk
//! mappings; zero runs of a vDisk point at one static zero page. One send in flight per socket;
//! a partial send continues from a byte cursor, re-deriving the iovec from the chain (no
//! allocation). Large bodies may go out with SEND_ZC (http_send_zc_min_bytes), the connection
//! keeping its body alive until the kernel's notification.

use super::files::FileCache;
use super::iov::{push_chain, push_slice, IOV_MAX};
use super::ring::{push, with_sock, FileSlots, SockRef};
use super::service::{Io, Service};
use super::slab::Slab;
use super::timer::Wheel;
use super::token::{ServiceId, Token};
use super::{Shared, WorkerStats};
use crate::http::{self, wire, Body};
use crate::image::Backing;
use crate::metrics::Counter;
use io_uring::{cqueue, opcode, types, IoUring};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const K_ACCEPT: u8 = 1;
pub const K_RECV: u8 = 2;
pub const K_SEND: u8 = 3;
pub const K_CANCEL: u8 = 4;
pub const K_TIMER: u8 = 5;

#[inline]
fn ud(op: u8, id: u32, generation: u16, _slot: u16) -> u64 {
    Token::new(ServiceId::Http, op, id, generation).pack()
}

const SEND_BYTES_MAX: u64 = 4 << 20;
const RBUF_INITIAL: usize = 4096;

pub fn bind_listener(addr: SocketAddr) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s)
}

struct Conn {
    generation: u16,
    fd: Option<OwnedFd>,
    /// How ring operations name `fd`: its file-table slot when one was free.
    sref: SockRef,
    peer: SocketAddr,
    ip: IpAddr,
    /// The receive buffer. While `recv_armed` the kernel holds a pointer into it (the Recv
    /// SQE, until its CQE): it is neither resized, moved nor freed then. Closing cancels the
    /// receive and the connection stays stored until that CQE (see [`Conn::kernel_holds`]).
    rbuf: Vec<u8>,
    rlen: usize,
    recv_armed: bool,
    head: Vec<u8>,
    body: Body,
    /// Bodies and header blocks of finished zero-copy sends: the kernel may read them (a TCP
    /// retransmission, say) until its notification arrives, so they are neither freed nor
    /// reused before that.
    zc_keep: Vec<(Vec<u8>, Body)>,
    zc_pending: u32,
    total: u64,
    sent: u64,
    sending: bool,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
    close_after: bool,
    closing: bool,
    /// Header deadline (from accept until the first request is complete, or from a request's
    /// first byte) or keep-alive idle deadline (from the end of the previous response).
    deadline: Instant,
    request_started: bool,
    /// Since when no request byte is pending and no response runs (accept, or the end of the
    /// last response): the longest idle goes first when the total limit is reached.
    idle_since: Instant,
    /// Why the server closed it (for the close log line), when it did.
    why: &'static str,
    timer_due: Option<Instant>,
    /// A send must make progress by then (a client that stops reading).
    send_deadline: Instant,
    send_stalled: bool,
    status: u16,
    dirty: bool,
    requests: u64,
    opened: Instant,
}

pub struct HttpService {
    listener: Option<Socket>,
    accept_armed: bool,
    /// After a failed accept (out of descriptors), accepting resumes later, not at once.
    accept_backoff: super::AcceptBackoff,
    conns: Slab<Conn>,
    active: usize,
    dirty: Vec<u32>,
    files: FileCache,
    stats: Arc<WorkerStats>,
    shared: Arc<Shared>,
    worker: usize,
    slots: FileSlots,
    /// Refusal log lines: one per second at most, with the number left out.
    refusals: RateLog,
}

/// At most one log line per second for an event that can come by the thousand (an attack).
#[derive(Default)]
struct RateLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLog {
    /// Whether to log now; otherwise counts the event as left out.
    fn due(&mut self, now: Instant) -> bool {
        if self.last.is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1)) {
            self.suppressed += 1;
            return false;
        }
        self.last = Some(now);
        true
    }
}

struct EnvImpl<'a> {
    snap: Arc<crate::config::Snapshot>,
    shared: &'a Shared,
    files: &'a mut FileCache,
    client: std::net::IpAddr,
}

impl http::Env for EnvImpl<'_> {
    fn snapshot(&self) -> &Arc<crate::config::Snapshot> {
        &self.snap
    }
    fn draining(&self) -> bool {
        self.shared.draining.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn now_unix(&self) -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
    }
    fn metrics(&self) -> String {
        super::render_metrics(self.shared)
    }
    fn count_damaged(&self) {
        self.shared.store.counters.add(Counter::HttpDamaged, 1);
    }
    fn sessions(&self) -> (u64, u64) {
        let r = std::sync::atomic::Ordering::Relaxed;
        (
            self.shared.workers.iter().map(|w| w.tftp_sessions.load(r)).sum(),
            self.shared.workers.iter().map(|w| w.http_connections.load(r)).sum(),
        )
    }
    fn file(&mut self, path: &Path) -> std::io::Result<(Arc<Backing>, u64, i64)> {
        self.files.get(path).map(|m| (m.data, m.ino, m.mtime_unix)).inspect_err(|e| {
            tracing::warn!(file = %path.display(), client = %self.client, "bootstrap file refused (404): {e}");
        })
    }
    fn client_ip(&self) -> std::net::IpAddr {
        self.client
    }
    fn farm_health(&self) -> crate::farm::Health {
        self.shared.farm.health(&self.snap, self.draining(), &self.shared.nbd_targets, std::time::Instant::now())
    }
    fn farm_place(&self, vdisk: &str, target: &str) -> Vec<usize> {
        let me = self.shared.farm_local(&self.snap, std::time::Instant::now());
        self.shared.farm.place(&self.snap, vdisk, target, Some(self.client), &me)
    }
    fn farm_touch(&self, vdisk: &str, target: &str) {
        self.shared.farm.touch(&self.snap, vdisk, target, self.client, std::time::Instant::now());
    }
    fn farm_status_json(&self) -> String {
        crate::farm::status_json(&self.snap, &self.shared.farm, &self.shared.farm_local(&self.snap, std::time::Instant::now()))
    }
}

fn body_bytes(body: &Body) -> Option<&[u8]> {
    match body {
        Body::Owned(v) => Some(v),
        Body::File { data, start, len } => Some(&data.bytes()[*start as usize..(*start + *len) as usize]),
        _ => None,
    }
}

impl HttpService {
    pub fn new(listener: Socket, stats: Arc<WorkerStats>, shared: Arc<Shared>, worker: usize, slots: FileSlots) -> HttpService {
        HttpService {
            listener: Some(listener),
            accept_armed: false,
            accept_backoff: Default::default(),
            conns: Slab::default(),
            active: 0,
            dirty: Vec::new(),
            files: FileCache::default(),
            stats,
            shared,
            worker,
            slots,
            refusals: RateLog::default(),
        }
    }

    fn count(&self, c: Counter, n: u64) {
        self.stats.counters.add(c, n);
    }

    fn conn(&mut self, id: u32, generation: u16) -> Option<&mut Conn> {
        self.conns.get_mut(id, generation)
    }

    fn mark(&mut self, id: u32) {
        if let Some(c) = self.conns.at(id) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    pub fn stop_listening(&mut self, ring: &mut IoUring) {
        if self.listener.take().is_some() {
            push(ring, &opcode::AsyncCancel::new(ud(K_ACCEPT, 0, 0, 0)).build().user_data(ud(K_CANCEL, 0, 0, 0)));
        }
        // Idle keep-alive connections are closed now; busy ones after their response.
        for id in 0..self.conns.capacity_ids() {
            if let Some(c) = self.conns.at(id) {
                c.close_after = true;
                if !c.sending && c.rlen == 0 && !c.closing {
                    self.mark(id);
                }
            }
        }
    }

    pub fn on_cqe(&mut self, kind: u8, id: u32, generation: u16, res: i32, flags: u32, ring: &mut IoUring, now: Instant) {
        match kind {
            K_ACCEPT => {
                if !cqueue::more(flags) {
                    self.accept_armed = false;
                }
                if res >= 0 {
                    self.accept_backoff.succeeded("HTTP");
                    // Safety: the kernel gave us this new descriptor.
                    let fd = unsafe { OwnedFd::from_raw_fd(res) };
                    self.accepted(fd, ring, now);
                } else if self.accept_backoff.failed(res, now, "HTTP") {
                    self.count(Counter::HttpAcceptErrors, 1);
                }
            }
            K_RECV => {
                let Some(c) = self.conn(id, generation) else { return };
                c.recv_armed = false;
                if res <= 0 {
                    // 0: the peer closed; < 0: reset. Either way this connection is over.
                    c.close_after = true;
                    c.rlen = 0;
                    if !c.sending {
                        c.closing_requested();
                    }
                } else {
                    c.rlen += res as usize;
                    if !c.request_started {
                        c.request_started = true;
                        // The first request's header timer runs from accept (set there); a
                        // keep-alive request's from its first byte.
                        if c.requests > 0 {
                            let t = Duration::from_millis(self.shared.store.load().config.http.header_timeout_ms);
                            let c = self.conn(id, generation).unwrap();
                            c.deadline = now + t;
                        }
                    }
                }
                self.mark(id);
            }
            K_SEND => {
                let Some(c) = self.conn(id, generation) else { return };
                if cqueue::notif(flags) {
                    c.zc_pending -= 1;
                    if c.zc_pending == 0 {
                        c.zc_keep.clear();
                    }
                    self.mark(id);
                    return;
                }
                if cqueue::more(flags) {
                    c.zc_pending += 1; // a notification follows
                }
                c.sending = false;
                if res < 0 {
                    c.close_after = true;
                    c.closing_requested();
                    if res == -libc::EFAULT {
                        // The kernel read a mapping past the end of a file truncated under it.
                        self.stats.counters.add(Counter::HttpDamaged, 1);
                    }
                } else {
                    c.sent += res as u64;
                }
                self.count(Counter::HttpBodyBytes, res.max(0) as u64);
                self.mark(id);
            }
            _ => {}
        }
    }

    fn accepted(&mut self, fd: OwnedFd, ring: &mut IoUring, now: Instant) {
        let sock = Socket::from(fd);
        let Ok(peer) = sock.peer_addr().map(|a| a.as_socket()) else { return };
        let Some(peer) = peer else { return };
        let ip = peer.ip().to_canonical(); // IPv4-mapped (dual-stack socket) counts as IPv4
        let snap = self.shared.store.load();
        let cfg = &snap.config.http;
        let _ = sock.set_nodelay(true); // never leave a response corked
        let _ = sock.set_nonblocking(true);
        let adm = &self.shared.http_admission;
        let mut admitted = adm.try_admit(ip, cfg.connections_max, cfg.connections_per_ip_max);
        if !admitted && adm.total() >= cfg.connections_max && adm.per_ip(ip) < cfg.connections_per_ip_max && self.evict_idle(ring) {
            // At the total limit, as nginx reuses idle connections: the longest-idle one of this
            // worker made room, so a new client is served rather than answered 503.
            admitted = self.shared.http_admission.try_admit(ip, cfg.connections_max, cfg.connections_per_ip_max);
        }
        if !admitted {
            self.count(Counter::HttpRefusedLimit, 1);
            let total = self.shared.http_admission.total() >= cfg.connections_max;
            let (limit, value) = if total {
                ("http.connections_max", cfg.connections_max)
            } else {
                ("http.connections_per_ip_max", cfg.connections_per_ip_max)
            };
            if self.refusals.due(now) {
                tracing::warn!(
                    worker = self.worker,
                    client = %peer,
                    limit,
                    value,
                    suppressed = self.refusals.suppressed,
                    "http connection refused with 503 at {limit} = {value} (no idle connection to reclaim); raise {limit} if these are real targets"
                );
                self.refusals.suppressed = 0;
            }
            let mut out = Vec::new();
            let body = http::error_page(&mut out, 503, false, 1, 0, "too many connections, retry later");
            if let Some(b) = body_bytes(&body) {
                out.extend_from_slice(b);
            }
            // Off the data path: one non-blocking write, then close.
            unsafe { libc::send(sock.as_raw_fd(), out.as_ptr().cast(), out.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
            return;
        }
        self.count(Counter::HttpConnections, 1);
        self.stats.http_connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sref = self.slots.install(ring, sock.as_raw_fd());
        let (id, _) = self.conns.insert(|generation| {
            Box::new(Conn {
                generation,
                fd: Some(sock.into()),
                sref,
                peer,
                ip,
                rbuf: vec![0u8; RBUF_INITIAL],
                rlen: 0,
                recv_armed: false,
                head: Vec::with_capacity(512),
                body: Body::Empty,
                zc_keep: Vec::new(),
                zc_pending: 0,
                total: 0,
                sent: 0,
                sending: false,
                iov: Vec::with_capacity(IOV_MAX),
                msg: unsafe { std::mem::zeroed() },
                close_after: false,
                closing: false,
                // A connection that never sends a byte is closed at the header timeout.
                deadline: now + Duration::from_millis(cfg.header_timeout_ms),
                request_started: false,
                idle_since: now,
                why: "",
                timer_due: None,
                send_deadline: now,
                send_stalled: false,
                status: 0,
                dirty: false,
                requests: 0,
                opened: now,
            })
        });
        self.active += 1;
        let _ = ring;
        self.mark(id);
    }

    pub fn on_timer(&mut self, id: u32, generation: u16, now: Instant) {
        let Some(c) = self.conn(id, generation) else { return };
        c.timer_due = None;
        if c.sending && !c.closing && now >= c.send_deadline {
            // The client stopped reading: the send is cancelled and the connection closed.
            c.send_stalled = true;
            self.count(Counter::HttpTimeoutSend, 1);
            self.mark(id);
            return;
        }
        if c.closing || c.sending || now < c.deadline {
            self.mark(id);
            return;
        }
        if c.request_started {
            // Slowloris: the request's header did not complete in time.
            c.close_after = true;
            c.status = 408;
            c.why = "request header not complete within http.header_timeout_ms (408)";
            self.count(Counter::HttpTimeoutHeader, 1);
        } else if c.requests == 0 {
            // Connected and silent: held a connection slot for header_timeout_ms, no longer.
            c.closing_requested();
            c.why = "no request within http.header_timeout_ms";
            self.count(Counter::HttpTimeoutHeader, 1);
        } else {
            c.closing_requested();
            c.why = "keep-alive idle for http.keepalive_idle_ms";
            self.count(Counter::HttpTimeoutIdle, 1);
        }
        self.mark(id);
    }

    pub fn flush(&mut self, ring: &mut IoUring, wheel: &mut Wheel, now: Instant) {
        if !self.accept_armed && self.accept_backoff.may_arm(now) {
            if let Some(l) = self.listener.as_ref() {
                push(ring, &opcode::AcceptMulti::new(types::Fd(l.as_raw_fd())).build().user_data(ud(K_ACCEPT, 0, 0, 0)));
                self.accept_armed = true;
            }
        }
        let mut i = 0;
        while i < self.dirty.len() {
            let id = self.dirty[i];
            i += 1;
            self.flush_one(id, ring, wheel, now);
        }
        self.dirty.clear();
    }

    fn flush_one(&mut self, id: u32, ring: &mut IoUring, wheel: &mut Wheel, now: Instant) {
        let snap = self.shared.store.load();
        let cfg = snap.config.http.clone();
        let zc_min = cfg_zc_min(&snap);
        let send_deadline = now + Duration::from_millis(cfg.send_timeout_ms);
        let Some(c) = self.conns.at(id) else { return };
        c.dirty = false;
        if c.closing {
            if !c.kernel_holds() {
                self.free_conn(id);
            }
            return;
        }
        if c.sending {
            if c.send_stalled {
                c.send_stalled = false;
                c.close_after = true;
                push(ring, &opcode::AsyncCancel::new(ud(K_SEND, id, c.generation, 0)).build().user_data(ud(K_CANCEL, 0, 0, 0)));
            } else {
                arm_timer(c, id, wheel, c.send_deadline);
            }
            return;
        }
        // A response in progress: continue it, or finish it.
        if c.total > 0 && !c.sending {
            if c.sent < c.total {
                self.send(id, ring, zc_min, wheel, send_deadline);
                return;
            }
            let status = c.status;
            c.requests += 1;
            c.total = 0;
            c.sent = 0;
            let old = std::mem::replace(&mut c.body, Body::Empty);
            if c.zc_pending > 0 {
                let head = std::mem::take(&mut c.head);
                c.zc_keep.push((head, old));
            }
            c.request_started = c.rlen > 0;
            c.deadline = now + Duration::from_millis(if c.request_started { cfg.header_timeout_ms } else { cfg.keepalive_idle_ms });
            c.idle_since = now;
            if c.rbuf.len() > RBUF_INITIAL && c.rlen <= RBUF_INITIAL && !c.recv_armed {
                // A long header grew the buffer: an idle connection goes back to the small one.
                c.rbuf.truncate(RBUF_INITIAL);
                c.rbuf.shrink_to_fit();
            }
            let class = match status {
                200..=299 => Counter::HttpResponses2xx,
                300..=399 => Counter::HttpResponses3xx,
                400..=499 => Counter::HttpResponses4xx,
                _ => Counter::HttpResponses5xx,
            };
            self.stats.counters.add(class, 1);
            let c = self.conns.at(id).unwrap();
            if c.close_after {
                self.close(id, ring);
                return;
            }
        }
        let c = self.conns.at(id).unwrap();
        if c.sending {
            return;
        }
        if c.status == 408 && c.total == 0 {
            // Header timeout: answer 408 and close.
            let body = http::error_page(&mut c.head, 408, false, 1, unix_now(), "request header not received in time");
            start_response(c, 408, body, true);
            self.send(id, ring, zc_min, wheel, send_deadline);
            return;
        }
        if c.close_after && c.rlen == 0 && c.total == 0 {
            self.close(id, ring);
            return;
        }
        // Parse the next request, if a whole one is buffered. Never while a receive into the
        // buffer is armed: only its completion changes what the buffer holds, and the kernel
        // holds a pointer into it.
        if c.rlen > 0 && !c.recv_armed {
            let limits = wire::Limits {
                request_line_bytes_max: cfg.request_line_bytes_max,
                header_bytes_max: cfg.header_bytes_max,
                headers_max: cfg.headers_max,
            };
            let client = c.ip;
            let mut env = EnvImpl { snap: snap.clone(), shared: &self.shared, files: &mut self.files, client };
            let c = self.conns.at(id).unwrap();
            match wire::parse(&c.rbuf[..c.rlen], &limits) {
                Ok((req, used)) => {
                    let mut head = std::mem::take(&mut c.head);
                    let body = http::respond(&req, &mut env, &mut head);
                    let keep = req.keep_alive && !env_draining(&self.shared);
                    let status = status_of(&head);
                    c.head = head;
                    c.rbuf.copy_within(used..c.rlen, 0);
                    c.rlen -= used;
                    start_response(c, status, body, !keep);
                    self.send(id, ring, zc_min, wheel, send_deadline);
                    return;
                }
                Err(wire::Error::Incomplete) => {
                    if c.rlen == c.rbuf.len() {
                        // Grow up to the limit (parse answers 431/414 beyond it).
                        let cap = (c.rbuf.len() * 2).min(cfg.header_bytes_max + 1);
                        c.rbuf.resize(cap.max(c.rbuf.len()), 0);
                    }
                }
                Err(e) => {
                    let detail = match e {
                        wire::Error::BadRequest(d) => d,
                        wire::Error::MethodNotAllowed => "only GET and HEAD are served",
                        wire::Error::UriTooLong => "request line too long",
                        wire::Error::HeadersTooLarge => "request header too large or too many fields",
                        wire::Error::PayloadTooLarge => "request bodies are not accepted",
                        wire::Error::VersionNotSupported => "HTTP/1.0 and HTTP/1.1 only",
                        wire::Error::Incomplete => unreachable!(),
                    };
                    let status = e.status();
                    let body = http::error_page(&mut c.head, status, false, 1, unix_now(), detail);
                    c.rlen = 0;
                    self.stats.counters.add(Counter::HttpBadRequests, 1);
                    start_response(c, status, body, true);
                    self.send(id, ring, zc_min, wheel, send_deadline);
                    return;
                }
            }
        }
        let c = self.conns.at(id).unwrap();
        if !c.recv_armed && !c.close_after {
            let spare = &mut c.rbuf[c.rlen..];
            if spare.is_empty() {
                // Full buffer at the limit: parse will refuse it (431).
                let body = http::error_page(&mut c.head, 431, false, 1, unix_now(), "request header too large");
                start_response(c, 431, body, true);
                self.send(id, ring, zc_min, wheel, send_deadline);
                return;
            }
            // Nothing left unparsed: a keep-alive client (iPXE) sends its next request only
            // after this response, so wait for readiness instead of an empty first try.
            let poll_first = if c.rlen == 0 { super::ring::RECVSEND_POLL_FIRST } else { 0 };
            let e = with_sock!(c.sref, f => opcode::Recv::new(f, spare.as_mut_ptr(), spare.len() as u32).ioprio(poll_first).build())
                .user_data(ud(K_RECV, id, c.generation, 0));
            push(ring, &e);
            c.recv_armed = true;
        }
        let deadline = c.deadline;
        arm_timer(c, id, wheel, deadline);
    }

    /// Submits the next send of connection `id`; a response whose file or vdisk image changed
    /// in place (image::guard) is cut off instead: what was read from it may be wrong.
    fn send(&mut self, id: u32, ring: &mut IoUring, zc_min: u64, wheel: &mut Wheel, deadline: Instant) {
        let Some(c) = self.conns.at(id) else { return };
        if !submit_send(c, id, ring, zc_min, wheel, deadline) {
            self.count(Counter::HttpDamaged, 1);
            let c = self.conns.at(id).unwrap();
            tracing::debug!(client = %c.ip, "response cut off: {}", http::DAMAGED);
            c.closing_requested();
            self.close(id, ring);
        }
    }

    fn close(&mut self, id: u32, ring: &mut IoUring) {
        let Some(c) = self.conns.at(id) else { return };
        if c.closing {
            return;
        }
        c.closing = true;
        if c.recv_armed {
            // The receive stays armed (the kernel may still write into rbuf) until its CQE,
            // ECANCELED or data: the connection lingers until then.
            push(ring, &opcode::AsyncCancel::new(ud(K_RECV, id, c.generation, 0)).build().user_data(ud(K_CANCEL, 0, 0, 0)));
        }
        if let Some(fd) = c.fd.take() {
            // Let an in-flight send finish into the socket; the descriptor closes now.
            drop(fd);
        }
        let sref = std::mem::replace(&mut c.sref, SockRef::Raw(-1));
        self.slots.release(ring, sref);
        let Some(c) = self.conns.at(id) else { return };
        let ip = c.ip;
        tracing::info!(worker = self.worker, client = %c.peer, requests = c.requests, ms = c.opened.elapsed().as_millis() as u64, why = c.why, "http connection closed");
        let lingering = c.kernel_holds();
        self.active -= 1;
        self.stats.http_connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.shared.http_admission.release(ip);
        if !lingering {
            self.free_conn(id);
        }
    }

    /// Closes this worker's longest-idle connection (no request byte pending, no response
    /// running: between keep-alive requests, or connected and silent) to admit a new one at
    /// `http.connections_max`. False when it has none.
    fn evict_idle(&mut self, ring: &mut IoUring) -> bool {
        let mut oldest: Option<(Instant, u32)> = None;
        for id in 0..self.conns.capacity_ids() {
            let Some(c) = self.conns.at(id) else { continue };
            if c.closing || c.close_after || c.sending || c.total > 0 || c.rlen > 0 || c.status == 408 {
                continue;
            }
            if oldest.is_none_or(|(t, _)| c.idle_since < t) {
                oldest = Some((c.idle_since, id));
            }
        }
        let Some((_, id)) = oldest else { return false };
        let c = self.conns.at(id).unwrap();
        c.why = "idle, closed to admit a new connection at http.connections_max";
        self.count(Counter::HttpIdleEvicted, 1);
        self.close(id, ring);
        true
    }

    /// Frees a connection's memory: only once the kernel holds none of it.
    fn free_conn(&mut self, id: u32) {
        if let Some(c) = self.conns.at(id) {
            assert!(!c.kernel_holds(), "http connection {id} freed while the kernel holds its buffers");
        }
        self.conns.remove(id);
    }

    /// Closes everything (drain deadline).
    pub fn abort_all(&mut self, ring: &mut IoUring) {
        for id in self.conns.ids_where(|c| !c.closing) {
            self.close(id, ring);
        }
    }
}

impl Service for HttpService {
    fn name(&self) -> &'static str {
        "http"
    }
    fn on_completion(&mut self, io: &mut Io, token: Token, res: i32, flags: u32) {
        self.on_cqe(token.op, token.id, token.generation, res, flags, &mut io.ring, io.now);
    }
    fn on_timer(&mut self, io: &mut Io, token: Token) {
        HttpService::on_timer(self, token.id, token.generation, io.now);
    }
    fn flush(&mut self, io: &mut Io) {
        HttpService::flush(self, &mut io.ring, &mut io.wheel, io.now);
    }
    fn stop_listening(&mut self, io: &mut Io) {
        HttpService::stop_listening(self, &mut io.ring);
    }
    fn abort_all(&mut self, io: &mut Io) {
        HttpService::abort_all(self, &mut io.ring);
    }
    fn active(&self) -> usize {
        self.active
    }
    fn lingering(&self) -> usize {
        self.conns.stored()
    }
}

impl Conn {
    /// Whether an operation the kernel has not completed yet points into this connection:
    /// a receive into `rbuf`, a send from `head`/`body`/`iov`/`msg`, or a zero-copy body
    /// awaiting its notification. The lifetime rule (as FileSlots keeps for descriptors): a
    /// connection is freed only when this is false, i.e. after the last of those CQEs.
    fn kernel_holds(&self) -> bool {
        self.recv_armed || self.sending || self.zc_pending > 0
    }

    fn closing_requested(&mut self) {
        self.close_after = true;
        self.total = 0;
    }
}

fn env_draining(s: &Shared) -> bool {
    s.draining.load(std::sync::atomic::Ordering::Relaxed)
}

fn cfg_zc_min(snap: &crate::config::Snapshot) -> u64 {
    snap.config.http.send_zc_min_bytes
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn status_of(head: &[u8]) -> u16 {
    head.get(9..12).and_then(|s| std::str::from_utf8(s).ok()).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn start_response(c: &mut Conn, status: u16, body: Body, close: bool) {
    c.status = status;
    c.body = body;
    c.total = c.head.len() as u64 + c.body.len();
    c.sent = 0;
    c.close_after |= close;
}

/// Makes sure a wake-up is armed no later than `at` (one live wheel entry per connection).
fn arm_timer(c: &mut Conn, id: u32, wheel: &mut Wheel, at: Instant) {
    if c.timer_due.is_none_or(|d| at < d) {
        wheel.insert(at, Token::new(ServiceId::Http, K_TIMER, id, c.generation));
        c.timer_due = Some(at);
    }
}

/// Builds the iovec from the byte cursor and submits one send, which must complete (make
/// progress) before `deadline`. False, with nothing submitted, when the body's file or image
/// was found damaged (after the lookups that built the iovec, which may be what faulted).
fn submit_send(c: &mut Conn, id: u32, ring: &mut IoUring, zc_min: u64, wheel: &mut Wheel, deadline: Instant) -> bool {
    c.send_deadline = deadline;
    arm_timer(c, id, wheel, deadline);
    if c.fd.is_none() {
        return true;
    }
    c.iov.clear();
    let head_len = c.head.len() as u64;
    let mut budget = SEND_BYTES_MAX;
    if c.sent < head_len {
        let h = &c.head[c.sent as usize..];
        c.iov.push(libc::iovec { iov_base: h.as_ptr() as *mut _, iov_len: h.len() });
        budget -= h.len() as u64;
    }
    let body_off = c.sent.saturating_sub(head_len);
    let body_left = c.body.len() - body_off;
    let want = body_left.min(budget);
    let mut body_bytes_now = 0u64;
    if want > 0 {
        body_bytes_now = match &c.body {
            Body::Empty => 0,
            Body::Owned(v) => push_slice(&mut c.iov, v[body_off as usize..].as_ptr(), want as usize),
            Body::File { data, start, .. } => push_slice(&mut c.iov, data.bytes()[(start + body_off) as usize..].as_ptr(), want as usize),
            Body::Vdisk { vdisk, start, .. } => push_chain(&mut c.iov, &vdisk.chain, start + body_off, want),
        };
        let damaged = match &c.body {
            Body::File { data, .. } => data.damaged(),
            Body::Vdisk { vdisk, .. } => vdisk.damaged(),
            _ => false,
        };
        if damaged {
            c.iov.clear();
            return false;
        }
    }
    c.msg.msg_iov = c.iov.as_mut_ptr();
    c.msg.msg_iovlen = c.iov.len() as _;
    let user_data = ud(K_SEND, id, c.generation, 0);
    let flags = libc::MSG_NOSIGNAL as u32;
    let e = if zc_min > 0 && body_bytes_now >= zc_min {
        with_sock!(c.sref, f => opcode::SendMsgZc::new(f, &c.msg).flags(flags).build())
    } else {
        with_sock!(c.sref, f => opcode::SendMsg::new(f, &c.msg).flags(flags).build())
    }
    .user_data(user_data);
    push(ring, &e);
    c.sending = true;
    true
}
