//! The one TCP driver: everything a TCP service does with descriptors, buffers and time, for
//! any protocol written as a [`TcpSession`] (HTTP, NBD, next iSCSI). Per worker: a SO_REUSEPORT
//! listener with multishot accept (paused after a descriptor shortage), admission against the
//! service's global and per-client-address limits (with eviction of an idle connection at a
//! limit), a registered file slot per connection, receives with POLL_FIRST into the
//! connection's own buffer, and the session's batches sent from a byte cursor: a direct
//! non-blocking sendmsg for small ones where the service asks for it, else SendMsg or
//! SendMsgZc through the ring. Every deadline (a send that makes no progress, the session's
//! own) is an entry on the worker's timer wheel.
//!
//! Lifetime rule: a connection's memory (receive buffer, the batch the kernel reads, iovecs and
//! message header) is freed only once the kernel holds none of it ([`Conn::kernel_holds`]): a
//! closed connection lingers in the slab until its last receive, send or zero-copy
//! notification has completed. Limits: IOV_MAX iovecs per sendmsg, the receive buffer grows
//! to the service's `rbuf_max`, sessions' batches are bounded by `Batch::PIECES_MAX`.

use super::ring::{push, with_sock, FileSlots, SockRef, RECVSEND_POLL_FIRST};
use super::service::{Io, Service};
use super::slab::Slab;
use super::token::Token;
use super::{AcceptBackoff, Limit, Shared, WorkerStats};
use crate::metrics::Counter;
use crate::session::{ConnKey, ConnScope, Refusal, TcpSession};
use io_uring::{cqueue, opcode, types};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod send;
mod spec;

use send::Outgoing;
pub use spec::*;

/// Most iovecs in one sendmsg: the kernel's UIO_MAXIOV (sendmsg fails with EMSGSIZE past it).
/// What a batch holds beyond it goes out in the next sendmsg, from the byte cursor.
pub const IOV_MAX: usize = 1024;

/// A receive buffer grown past the service's initial size shrinks back after this long without
/// needing more.
const RBUF_SHRINK_AFTER: Duration = Duration::from_secs(1);

/// Whether a drained receive buffer of `len` bytes goes back to the service's `initial` size:
/// when it is larger and has not held more than that for [`RBUF_SHRINK_AFTER`].
fn rbuf_shrinks(len: usize, initial: usize, big_at: Option<Instant>, now: Instant) -> bool {
    len > initial && big_at.is_none_or(|t| now.saturating_duration_since(t) >= RBUF_SHRINK_AFTER)
}

const K_ACCEPT: u8 = 1;
const K_RECV: u8 = 2;
const K_SEND: u8 = 3;
const K_CANCEL: u8 = 4;
const K_TIMER: u8 = 5;

/// Binds one worker's SO_REUSEPORT listening socket.
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s)
}

struct Conn<S> {
    generation: u16,
    session: S,
    fd: Option<OwnedFd>,
    /// How ring operations name `fd`: its file-table slot when one was free.
    sref: SockRef,
    peer: SocketAddr,
    ip: IpAddr,
    /// Received bytes not taken by the session yet are `rbuf[head..tail]`. While `recv_armed`
    /// the kernel writes into `rbuf[tail..]`: the buffer is neither moved, resized nor freed.
    rbuf: Vec<u8>,
    head: usize,
    tail: usize,
    recv_armed: bool,
    /// When the buffer last held more than the service's initial size: it goes back to that
    /// size only once it has not needed more for [`RBUF_SHRINK_AFTER`] (a client whose writes
    /// are larger than the initial buffer, between smaller requests, would otherwise have it
    /// freed and grown again, zero filled and faulted in, for each write).
    rbuf_big_at: Option<Instant>,
    eof: bool,
    eof_told: bool,
    /// The batch being sent, and how far.
    out: Outgoing,
    /// While a batch is held, the kernel must make progress with it by then (a send
    /// completes, or a zero-copy notification comes: the client acknowledges): a client that
    /// stops reading holds its batch and a connection slot no longer.
    send_deadline: Option<Instant>,
    stalled: bool,
    /// A send failed: the connection is over once nothing is in flight.
    broken: bool,
    timer_due: Option<Instant>,
    closing: bool,
    dirty: bool,
    opened: Instant,
    /// Set by the driver when it closes for its own reason (eviction, send timeout).
    why: &'static str,
}

impl<S> Conn<S> {
    /// Whether an operation the kernel has not completed yet points into this connection: a
    /// receive into `rbuf`, a send from the batch/`iov`/`msg`, or a zero-copy send awaiting its
    /// notification. A connection is freed only when this is false.
    fn kernel_holds(&self) -> bool {
        self.recv_armed || self.out.sending || self.out.zc_pending > 0
    }

    fn key(&self, id: u32) -> ConnKey {
        ConnKey { id, generation: self.generation }
    }
}

/// At most one log line per second for an event that can come by the thousand (an attack).
#[derive(Default)]
struct RateLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLog {
    fn due(&mut self, now: Instant) -> bool {
        if self.last.is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1)) {
            self.suppressed += 1;
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// One worker's side of a TCP service.
pub struct Tcp<P: TcpGlue> {
    proto: P,
    ctx: Ctx<P>,
    listener: Option<Socket>,
    accept_armed: bool,
    accept_backoff: AcceptBackoff,
    conns: Slab<Conn<P::Session>>,
    active: usize,
    dirty: Vec<u32>,
    stats: Arc<WorkerStats>,
    shared: Arc<Shared>,
    /// The eviction requests of an `Evict::Shared` service.
    evictions: Option<Arc<Evictions>>,
    worker: usize,
    slots: FileSlots,
    refusals: RateLog,
    limits: TcpLimits,
    /// The glue's `cuts` generation as of the last pass.
    cuts_seen: u64,
}

impl<P: TcpGlue> Tcp<P> {
    /// Worker `worker`'s side of the service, listening on `listener`, its sockets in `slots`.
    pub fn new(proto: P, ctx: Ctx<P>, listener: Socket, shared: Arc<Shared>, worker: usize, slots: FileSlots) -> Tcp<P> {
        let limits = proto.limits(&shared.store.load());
        let stats = shared.workers[worker].clone();
        let evictions = match proto.spec().evict {
            Evict::Shared(of) => Some(of(&shared).clone()),
            Evict::Local => None,
        };
        Tcp {
            proto,
            ctx,
            listener: Some(listener),
            accept_armed: false,
            accept_backoff: AcceptBackoff::default(),
            conns: Slab::default(),
            active: 0,
            dirty: Vec::new(),
            stats,
            shared,
            evictions,
            worker,
            slots,
            refusals: RateLog::default(),
            limits,
            cuts_seen: 0,
        }
    }

    fn token(&self, op: u8, id: u32, generation: u16) -> u64 {
        Token::new(self.proto.spec().service, op, id, generation).pack()
    }

    fn count(&self, c: Counter, n: u64) {
        self.stats.counters.add(c, n);
    }

    fn mark(&mut self, id: u32) {
        if let Some(c) = self.conns.at(id) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// Re-polls a session that returned None from `poll_transmit` while it waited for an
    /// asynchronous resource (the contract's ConnScope): its connection is flushed in the
    /// next pass. A stale key (the connection is gone) is ignored.
    #[allow(dead_code)] // for the bootstrap-file resolver through the ring (#15, h3)
    pub fn wake(&mut self, key: ConnKey) {
        if self.conns.get_mut(key.id, key.generation).is_some() {
            self.mark(key.id);
        }
    }

    /// The protocol's context (the glue reaches its own state through it).
    #[allow(dead_code)] // for the glue's completions outside a session (#15, h3)
    pub fn ctx(&mut self) -> &mut Ctx<P> {
        &mut self.ctx
    }

    fn begin(&mut self, io: &Io) {
        let snap = io.snapshot();
        self.limits = self.proto.limits(&snap);
        P::refresh(&mut self.ctx, &snap);
    }

    fn accepted(&mut self, fd: OwnedFd, io: &mut Io) {
        let now = io.now;
        let sock = Socket::from(fd);
        let Some(peer) = sock.peer_addr().ok().and_then(|a| a.as_socket()) else { return };
        let ip = peer.ip().to_canonical(); // IPv4-mapped (dual-stack socket) counts as IPv4
        self.begin(io);
        let l = self.limits;
        let spec = self.proto.spec();
        let (evict, counters, admission) = (spec.evict, spec.counters, spec.admission);
        let adm = admission(&self.shared);
        let mut admitted = adm.admit(ip, l.connections_max, l.connections_per_ip_max);
        if let Err(limit) = admitted {
            match evict {
                Evict::Local => {
                    if limit == Limit::Total && adm.per_ip(ip) < l.connections_per_ip_max && self.evict_local(io) {
                        let adm = admission(&self.shared);
                        admitted = adm.admit(ip, l.connections_max, l.connections_per_ip_max);
                    }
                }
                Evict::Shared(_) => {
                    if let Some(ev) = &self.evictions {
                        ev.want(if limit == Limit::PerIp { Some(ip) } else { None }, now);
                    }
                }
            }
        }
        if let Err(limit) = admitted {
            let (counter, key, max, why) = match limit {
                Limit::Total => (counters.refused_total, self.proto.spec().keys.0, l.connections_max, Refusal::Total),
                Limit::PerIp => (counters.refused_per_ip, self.proto.spec().keys.1, l.connections_per_ip_max, Refusal::PerIp),
            };
            self.count(counter, 1);
            if self.refusals.due(now) {
                let spec = self.proto.spec();
                tracing::warn!(
                    worker = self.worker,
                    client = %peer,
                    limit = key,
                    value = max,
                    suppressed = self.refusals.suppressed,
                    "{} connection refused at {key} = {max}: {}",
                    spec.name,
                    spec.refusal_note
                );
                self.refusals.suppressed = 0;
            }
            let mut out = Vec::new();
            self.proto.refusal(&mut self.ctx, why, &mut out);
            if !out.is_empty() {
                // Off the data path: one non-blocking write, then close.
                // Safety: `out` is valid for the call.
                unsafe { libc::send(sock.as_raw_fd(), out.as_ptr().cast(), out.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
            }
            return;
        }
        let _ = sock.set_nodelay(true); // never leave a reply corked
        let _ = sock.set_nonblocking(true);
        self.count(counters.connections, 1);
        if let Some(g) = self.proto.spec().gauge {
            g(&self.stats).fetch_add(1, Ordering::Relaxed);
        }
        let sref = self.slots.install(&io.ring, sock.as_raw_fd());
        let session = self.proto.open(&mut self.ctx, peer, now);
        let rbuf_initial = self.proto.spec().rbuf_initial.min(l.rbuf_max.max(1));
        let (id, _) = self.conns.insert(|generation| {
            Box::new(Conn {
                generation,
                session,
                fd: Some(sock.into()),
                sref,
                peer,
                ip,
                rbuf: vec![0u8; rbuf_initial],
                head: 0,
                tail: 0,
                recv_armed: false,
                rbuf_big_at: None,
                eof: false,
                eof_told: false,
                out: Outgoing::default(),
                send_deadline: None,
                stalled: false,
                broken: false,
                timer_due: None,
                closing: false,
                dirty: false,
                opened: now,
                why: "",
            })
        });
        self.active += 1;
        self.mark(id);
    }

    /// Closes this worker's longest-idle connection to admit a new one at the total limit;
    /// false when it has none.
    fn evict_local(&mut self, io: &mut Io) -> bool {
        let mut oldest: Option<(Instant, u32)> = None;
        for id in 0..self.conns.capacity_ids() {
            let Some(c) = self.conns.at(id) else { continue };
            if let Some(t) = idle_since(c) {
                if oldest.is_none_or(|(o, _)| t < o) {
                    oldest = Some((t, id));
                }
            }
        }
        let Some((_, id)) = oldest else { return false };
        let spec = self.proto.spec();
        let (counter, why) = (spec.counters.idle_evicted, eviction_reason(spec.keys.0));
        self.count(counter, 1);
        self.conns.at(id).unwrap().why = why;
        self.close(id, io, false);
        true
    }

    /// Takes the eviction requests this worker can serve: for each, the longest-idle of its
    /// connections in the request's scope, idle for `idle_evict`, is cut, provided the scope
    /// is still at its limit.
    fn evict_shared(&mut self, io: &mut Io) {
        let Some(ev) = self.evictions.clone() else { return };
        if ev.pending.load(Ordering::Acquire) == 0 {
            return;
        }
        let now = io.now;
        let l = self.limits;
        let adm = (self.proto.spec().admission)(&self.shared);
        let mut cut = Vec::new();
        {
            let mut wanted = ev.wanted.lock().unwrap();
            wanted.retain(|(_, at)| now.saturating_duration_since(*at) < Duration::from_millis(EVICTION_REQUEST_MS));
            let mut i = 0;
            while i < wanted.len() {
                let scope = wanted[i].0;
                let full = match scope {
                    Some(ip) => adm.of(ip) >= l.connections_per_ip_max,
                    None => adm.total() >= l.connections_max,
                };
                let mut victim: Option<(u32, Instant)> = None;
                for id in 0..self.conns.capacity_ids() {
                    if !full {
                        break;
                    }
                    if cut.contains(&id) {
                        continue;
                    }
                    let Some(c) = self.conns.at(id) else { continue };
                    let Some(t) = idle_since(c) else { continue };
                    if now.saturating_duration_since(t) >= l.idle_evict
                        && scope.is_none_or(|ip| c.ip == ip)
                        && victim.is_none_or(|(_, at)| t < at)
                    {
                        victim = Some((id, t));
                    }
                }
                match (full, victim) {
                    (false, _) => {
                        wanted.swap_remove(i); // room was made meanwhile
                    }
                    (true, Some((id, _))) => {
                        cut.push(id);
                        wanted.swap_remove(i);
                    }
                    (true, None) => i += 1, // another worker may hold an idle one
                }
            }
            ev.pending.store(wanted.len(), Ordering::Release);
        }
        for id in cut {
            let spec = self.proto.spec();
            let (counter, name) = (spec.counters.idle_evicted, spec.name);
            self.count(counter, 1);
            let Some(c) = self.conns.at(id) else { continue };
            let idle_ms = idle_since(c).map(|t| now.saturating_duration_since(t).as_millis() as u64).unwrap_or(0);
            tracing::warn!(client = %c.peer, idle_ms, "{name} connection cut: idle, and a new connection was refused at a connection limit");
            c.why = "idle, cut to admit a connection refused at a connection limit";
            self.close(id, io, false);
        }
    }

    /// Cuts the connections an operator asked to be cut (the glue's `cuts` changed).
    fn operator_cuts(&mut self, io: &mut Io) {
        let Some((generation, counter)) = self.proto.cuts(&self.shared) else { return };
        if generation == self.cuts_seen {
            return;
        }
        self.cuts_seen = generation;
        let cut = self.conns.ids_where(|c| !c.closing && c.session.cut_requested());
        if cut.is_empty() {
            return;
        }
        self.begin(io);
        let name = self.proto.spec().name;
        for id in cut {
            self.count(counter, 1);
            let c = self.conns.at(id).unwrap();
            tracing::info!(client = %c.peer, "{name} connection cut: disconnected by the operator");
            c.why = "disconnected by the operator";
            self.close(id, io, false);
        }
    }

    fn flush_one(&mut self, id: u32, io: &mut Io) {
        let now = io.now;
        let l = self.limits;
        let direct_max = self.proto.spec().direct_send_max;
        let rbuf_initial = self.proto.spec().rbuf_initial.min(l.rbuf_max.max(1));
        let counters = self.proto.spec().counters;
        let svc = self.proto.spec().service;
        let Some(c) = self.conns.at(id) else { return };
        c.dirty = false;
        if c.closing {
            if !c.kernel_holds() {
                self.free(id);
            }
            return;
        }
        self.ctx.enter(c.key(id));
        if c.stalled {
            // The client stopped reading: the send is cancelled and the connection closed.
            self.stats.counters.add(counters.timeout_send, 1);
            c.why = "the client stopped reading (send timeout)";
            return self.close(id, io, true);
        }
        if c.broken && !c.out.sending {
            return self.close(id, io, false);
        }
        if c.eof && !c.eof_told {
            c.eof_told = true;
            c.session.on_eof(&mut self.ctx, now);
        }
        // The batch is out and the kernel holds none of it: the session may reuse it.
        if c.out.batch.is_some() && !c.out.sending && c.out.sent == c.out.total && c.out.zc_pending == 0 {
            c.out.batch = None;
            c.send_deadline = None;
            c.session.on_released(&mut self.ctx, now);
        }
        if c.head < c.tail && c.session.wants_input() {
            let n = c.session.on_input(&mut self.ctx, &c.rbuf[c.head..c.tail], now);
            c.head += n.min(c.tail - c.head);
        }
        if c.out.batch.is_none() && c.fd.is_some() {
            if let Some(b) = c.session.poll_transmit(&mut self.ctx, now) {
                if !b.is_empty() {
                    let guarded = b.guarded;
                    c.out.hold(b);
                    c.send_deadline = Some(now + l.send_timeout);
                    let zc = l.send_zc_min_bytes > 0 && c.out.total >= l.send_zc_min_bytes;
                    if (!guarded || c.session.still_valid()) && !zc && c.out.total <= direct_max {
                        let n = c.fd.as_ref().map_or(0, |f| c.out.direct(f.as_raw_fd()));
                        self.stats.counters.add(counters.sent_bytes, n);
                        if c.out.sent == c.out.total {
                            // All out at once: the next batch can start in this same pass.
                            self.mark(id);
                            return;
                        }
                    }
                }
            }
        }
        let c = self.conns.at(id).unwrap();
        if c.out.batch.is_some() && !c.out.sending && c.out.sent < c.out.total {
            let guarded = c.out.guarded();
            if guarded && !c.session.still_valid() {
                // The file or image changed in place: what was read from it may be wrong.
                self.stats.counters.add(counters.damaged, 1);
                tracing::debug!(client = %c.ip, "reply cut off: its file or image changed on the server");
                c.why = "reply cut off: its file or image changed on the server";
                return self.close(id, io, false);
            }
            let zc = l.send_zc_min_bytes > 0 && c.out.total - c.out.sent >= l.send_zc_min_bytes;
            if c.fd.is_some() {
                c.out.submit(&mut io.ring, c.sref, zc, Token::new(svc, K_SEND, id, c.generation).pack());
            }
        }
        let c = self.conns.at(id).unwrap();
        if c.session.is_done() && c.out.batch.is_none() {
            return self.close(id, io, false);
        }
        if !c.recv_armed && !c.eof && !c.closing {
            if c.head == c.tail {
                if c.tail > rbuf_initial {
                    c.rbuf_big_at = Some(now);
                }
                c.head = 0;
                c.tail = 0;
                if rbuf_shrinks(c.rbuf.len(), rbuf_initial, c.rbuf_big_at, now) {
                    // A long request grew the buffer: a connection that has not needed it for
                    // a while goes back to the small one.
                    c.rbuf.truncate(rbuf_initial);
                    c.rbuf.shrink_to_fit();
                    c.rbuf_big_at = None;
                }
            } else if c.tail == c.rbuf.len() && c.head > 0 {
                c.rbuf.copy_within(c.head..c.tail, 0);
                c.tail -= c.head;
                c.head = 0;
            }
            if c.tail == c.rbuf.len() && c.rbuf.len() < l.rbuf_max {
                let grown = (c.rbuf.len() * 2).clamp(1, l.rbuf_max);
                c.rbuf.resize(grown, 0);
                c.rbuf_big_at = Some(now);
            }
            if c.tail < c.rbuf.len() {
                // Everything received is taken: a client at queue depth 1 (iPXE, a keep-alive
                // HTTP client) sends its next request only after this reply, so the receive
                // waits for readiness first instead of a try that comes back empty.
                let poll_first = if c.head == c.tail { RECVSEND_POLL_FIRST } else { 0 };
                let spare = &mut c.rbuf[c.tail..];
                let e = with_sock!(c.sref, f => opcode::Recv::new(f, spare.as_mut_ptr(), spare.len() as u32).ioprio(poll_first).build())
                    .user_data(Token::new(svc, K_RECV, id, c.generation).pack());
                push(&mut io.ring, &e);
                c.recv_armed = true;
            } else if c.head == 0 && c.out.batch.is_none() && c.session.wants_input() {
                // A full buffer the session takes nothing from, nothing to send: no progress.
                c.why = c.session.close_reason();
                return self.close(id, io, false);
            }
            // Otherwise the buffer is full: TCP pushes back until the session takes input.
        }
        // One live wheel entry per connection, at its earliest deadline.
        let due = match (c.session.poll_timeout(), c.send_deadline.filter(|_| c.out.batch.is_some())) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(at) = due {
            if c.timer_due.is_none_or(|d| at < d) {
                io.wheel.insert(at, Token::new(svc, K_TIMER, id, c.generation));
                c.timer_due = Some(at);
            }
        }
    }

    fn close(&mut self, id: u32, io: &mut Io, stalled: bool) {
        let now = io.now;
        let spec = self.proto.spec();
        let (name, gauge, admission) = (spec.name, spec.gauge, spec.admission);
        let cancel = self.token(K_CANCEL, 0, 0);
        let Some(c) = self.conns.at(id) else { return };
        if c.closing {
            return;
        }
        c.closing = true;
        let g = c.generation;
        if c.recv_armed {
            // The receive stays armed (the kernel may still write into rbuf) until its CQE,
            // ECANCELED or data: the connection lingers until then.
            let t = Token::new(spec.service, K_RECV, id, g).pack();
            push(&mut io.ring, &opcode::AsyncCancel::new(t).build().user_data(cancel));
        }
        if stalled && c.out.sending {
            let t = Token::new(spec.service, K_SEND, id, g).pack();
            push(&mut io.ring, &opcode::AsyncCancel::new(t).build().user_data(cancel));
        }
        // The descriptor closes now; an in-flight send keeps the kernel's own reference.
        c.fd = None;
        let sref = std::mem::replace(&mut c.sref, SockRef::Raw(-1));
        self.slots.release(&io.ring, sref);
        let c = self.conns.at(id).unwrap();
        let why = if c.why.is_empty() { c.session.close_reason() } else { c.why };
        tracing::info!(
            worker = self.worker,
            client = %c.peer,
            requests = c.session.requests(),
            ms = now.saturating_duration_since(c.opened).as_millis() as u64,
            why,
            "{name} connection closed"
        );
        c.session.on_closed(&mut self.ctx, stalled, now);
        let ip = c.ip;
        let lingering = c.kernel_holds();
        self.active -= 1;
        if let Some(g) = gauge {
            g(&self.stats).fetch_sub(1, Ordering::Relaxed);
        }
        admission(&self.shared).release(ip);
        if !lingering {
            self.free(id);
        }
    }

    /// Frees a connection's memory: only once the kernel holds none of it.
    fn free(&mut self, id: u32) {
        if let Some(c) = self.conns.at(id) {
            assert!(!c.kernel_holds(), "connection {id} freed while the kernel holds its buffers");
        }
        self.conns.remove(id);
    }
}

/// Since when a connection is idle in the driver's view too (nothing received and not taken,
/// nothing being sent), when it is.
fn idle_since<S: TcpSession>(c: &Conn<S>) -> Option<Instant> {
    if c.closing || c.out.batch.is_some() || c.head != c.tail || c.broken {
        return None;
    }
    c.session.idle_since()
}

fn eviction_reason(key: &'static str) -> &'static str {
    match key {
        "http.connections_max" => "idle, closed to admit a new connection at http.connections_max",
        _ => "idle, closed to admit a new connection at the connection limit",
    }
}

impl<P: TcpGlue> Service for Tcp<P> {
    fn name(&self) -> &'static str {
        self.proto.spec().name
    }

    fn on_completion(&mut self, io: &mut Io, t: Token, res: i32, flags: u32) {
        let now = io.now;
        let counters = self.proto.spec().counters;
        match t.op {
            K_ACCEPT => {
                if !cqueue::more(flags) {
                    self.accept_armed = false;
                }
                let label = self.proto.spec().name;
                if res >= 0 {
                    self.accept_backoff.succeeded(label);
                    // Safety: the kernel gave us this new descriptor.
                    let fd = unsafe { OwnedFd::from_raw_fd(res) };
                    self.accepted(fd, io);
                } else if self.accept_backoff.failed(res, now, label) {
                    self.count(counters.accept_errors, 1);
                }
            }
            K_RECV => {
                let Some(c) = self.conns.get_mut(t.id, t.generation) else { return };
                c.recv_armed = false;
                if res <= 0 {
                    // 0: the peer closed; < 0: reset (or the cancel of a closing connection).
                    c.eof = true;
                } else {
                    c.tail += res as usize;
                }
                self.mark(t.id);
            }
            K_SEND => {
                let Some(c) = self.conns.get_mut(t.id, t.generation) else { return };
                if cqueue::notif(flags) {
                    c.out.zc_pending -= 1;
                    c.send_deadline = Some(now + self.limits.send_timeout);
                    self.mark(t.id);
                    return;
                }
                if cqueue::more(flags) {
                    c.out.zc_pending += 1; // a notification follows
                }
                c.out.sending = false;
                if res < 0 {
                    c.broken = true;
                    if res == -libc::EFAULT {
                        // The kernel read a mapping past the end of a file truncated under it:
                        // the piece at the cursor (nothing was sent, so the fault is there) is
                        // marked damaged, and no later reply is read from that mapping.
                        self.stats.counters.add(counters.damaged, 1);
                        if let Some(b) = c.out.batch {
                            // Safety: the batch is held until released; this send did not release it.
                            if let Some(crate::session::Piece::Mem { ptr, .. }) = unsafe { &*b }.pieces.get(c.out.cursor.0) {
                                crate::image::guard::mark_damaged_at(*ptr as usize + c.out.cursor.1);
                            }
                        }
                    }
                } else {
                    if res > 0 {
                        c.out.advance(res as usize);
                        c.send_deadline = Some(now + self.limits.send_timeout);
                    }
                }
                self.count(counters.sent_bytes, res.max(0) as u64);
                self.mark(t.id);
            }
            _ => {
                let mut wake = Vec::new();
                P::on_glue_completion(&mut self.ctx, t, res, now, &mut wake);
                for k in wake {
                    self.wake(k);
                }
            }
        }
    }

    fn on_timer(&mut self, io: &mut Io, t: Token) {
        let now = io.now;
        let Some(c) = self.conns.get_mut(t.id, t.generation) else { return };
        c.timer_due = None;
        if c.closing {
            return;
        }
        if c.out.batch.is_some() && c.send_deadline.is_some_and(|d| now >= d) {
            c.stalled = true;
        } else if c.session.poll_timeout().is_some_and(|d| now >= d) {
            self.begin(io);
            let c = self.conns.at(t.id).unwrap();
            self.ctx.enter(c.key(t.id));
            c.session.on_timeout(&mut self.ctx, now);
        }
        self.mark(t.id);
    }

    fn flush(&mut self, io: &mut Io) {
        if !self.accept_armed && self.accept_backoff.may_arm(io.now) {
            if let Some(l) = self.listener.as_ref() {
                let t = self.token(K_ACCEPT, 0, 0);
                push(&mut io.ring, &opcode::AcceptMulti::new(types::Fd(l.as_raw_fd())).build().user_data(t));
                self.accept_armed = true;
            }
        }
        if self.evictions.is_some() {
            self.evict_shared(io);
        }
        self.operator_cuts(io);
        self.proto.tick(&mut self.ctx, io);
        if self.dirty.is_empty() {
            return;
        }
        self.begin(io);
        let mut i = 0;
        while i < self.dirty.len() {
            let id = self.dirty[i];
            i += 1;
            self.flush_one(id, io);
        }
        self.dirty.clear();
        P::submit(&mut self.ctx, io);
    }

    fn stop_listening(&mut self, io: &mut Io) {
        if self.listener.take().is_some() {
            let (accept, cancel) = (self.token(K_ACCEPT, 0, 0), self.token(K_CANCEL, 0, 0));
            push(&mut io.ring, &opcode::AsyncCancel::new(accept).build().user_data(cancel));
        }
        self.begin(io);
        for id in self.conns.ids_where(|c| !c.closing) {
            let c = self.conns.at(id).unwrap();
            self.ctx.enter(c.key(id));
            c.session.on_drain(&mut self.ctx, io.now);
            self.mark(id);
        }
    }

    fn abort_all(&mut self, io: &mut Io) {
        self.begin(io);
        for id in self.conns.ids_where(|c| !c.closing) {
            self.close(id, io, false);
        }
    }

    fn active(&self) -> usize {
        self.active
    }

    fn lingering(&self) -> usize {
        self.conns.stored()
    }
}

#[cfg(test)]
mod tests;
