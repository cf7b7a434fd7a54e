//! NBD on the engine: SO_REUSEPORT listener per worker, multishot accept, one receive buffer
//! per connection parsed in place.
//!
//! Requests are pipelined: everything the client has sent (up to `nbd.queue_depth_max`
//! requests) is answered in one batch, and the batch goes out as one sendmsg whose iovecs
//! point at reply headers, at the image mapping and at the target's RAM cache pages (no copy;
//! only overflow-file blocks are copied, at most `nbd.reply_scratch_bytes_max` per batch: a
//! READ with more goes out over several batches). The next batch is parsed while nothing is being
//! sent; receiving goes on meanwhile into the free end of the buffer. When a client sends more
//! than the queue allows, reading stops until the replies are out, so TCP pushes back.
//!
//! Large batches may go out with SEND_ZC (`nbd.send_zc_min_bytes`); the batch then stays
//! untouched until the kernel's notification.
//!
//! Replies come in request order (the protocol allows any order; serving from memory gains
//! nothing by reordering). WRITE payloads are applied to the target's cache as they arrive.

use super::iov::{ZEROS, ZEROS_LEN};
use super::ring::{push, with_sock, FileSlots, SockRef};
use super::service::{Io, Service};
use super::slab::Slab;
use super::token::{ServiceId, Token};
use super::{Limit, Shared, WorkerStats};
use crate::config::{Mode, TargetIds};
use crate::config::{Snapshot, Vdisk};
use crate::metrics::Counter;
use crate::nbd::cache::{self, CacheError, Piece};
use crate::nbd::target::{self, AttachError, Target};
use crate::nbd::token;
use crate::nbd::wire::{self, Parse};
use io_uring::{cqueue, opcode, types, IoUring};
use socket2::Socket;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const K_ACCEPT: u8 = 1;
pub const K_RECV: u8 = 2;
pub const K_SEND: u8 = 3;
pub const K_CANCEL: u8 = 4;

#[inline]
fn ud(op: u8, id: u32, generation: u16, _slot: u16) -> u64 {
    Token::new(ServiceId::Nbd, op, id, generation).pack()
}

/// Receive buffer per connection: a few large WRITEs, or thousands of request headers.
const RBUF: usize = 256 * 1024;
/// Most iovecs in one sendmsg (the kernel's UIO_MAXIOV).
const IOV_MAX: usize = 1024;
/// A batch stops growing past these (reply bytes, pieces), whatever the queue depth.
const BATCH_BYTES: u64 = 64 << 20;
const BATCH_PIECES: usize = 16 * 1024;
/// Batches up to this size are first tried with a direct non-blocking sendmsg.
const DIRECT_SEND_MAX: u64 = 256 * 1024;

#[derive(PartialEq, Eq, Clone, Copy)]
enum Phase {
    ClientFlags,
    Options,
    Transmission,
}

/// Part of a batch: bytes of `out` (headers), of `scratch` (overflow-file copies), or memory
/// that outlives the send (the image mapping, cache pages, the zero page).
#[derive(Clone, Copy)]
enum P {
    Out(u32, u32),
    Scratch(u32, u32),
    Mem(*const u8, usize),
}

/// A WRITE whose payload is still arriving.
struct Incoming {
    cookie: u64,
    next: u64,
    remaining: u64,
    fua: bool,
    /// Refused up front or failed part way: the rest is skipped and this is the answer.
    error: Option<(u32, String)>,
    /// The cache slots reserved for the whole write before its first byte was applied.
    reservation: cache::Reservation,
}

struct Conn {
    generation: u16,
    fd: Option<OwnedFd>,
    /// How ring operations name `fd`: its file-table slot when one was free. The direct
    /// sendmsg uses the descriptor.
    sref: SockRef,
    peer: SocketAddr,
    ip: IpAddr,
    /// The kernel writes into it while `recv_armed` (until that receive's CQE): freed after.
    rbuf: Box<[u8]>,
    head: usize,
    tail: usize,
    recv_armed: bool,
    phase: Phase,
    no_zeroes: bool,
    structured: bool,
    meta_base: bool,
    target: Option<Arc<Target>>,
    incoming: Option<Incoming>,
    // The batch being sent.
    out: Vec<u8>,
    scratch: Vec<u8>,
    pieces: Vec<P>,
    total: u64,
    sent: u64,
    cursor: (usize, usize),
    sending: bool,
    /// SEND_ZC notifications still to come: the batch stays untouched until then.
    zc_pending: u32,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
    close_after: bool,
    closing: bool,
    dirty: bool,
    requests: u64,
    opened: Instant,
    /// Last time the client sent bytes or a send made progress (idle eviction).
    active_at: Instant,
    /// Last time a send made progress (or the batch started).
    progress_at: Instant,
    // Scratch for one read: the pieces the cache emits.
    tmp: Vec<RPiece>,
    /// A READ whose reply continues in the next batch.
    cont: Option<Cont>,
    /// The target's free epoch pinned by this batch (it points at cache pages): released when
    /// the batch is out, or when the connection goes.
    pin: Option<u64>,
}

impl Conn {
    /// The batch no longer points at cache pages: they may be reused.
    fn unpin(&mut self) {
        if let (Some(e), Some(t)) = (self.pin.take(), self.target.as_ref()) {
            t.overlay.lock().unwrap().unpin(e);
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.unpin();
        // Gone in the middle of a WRITE: what it reserved and did not use goes back.
        if let (Some(inc), Some(t)) = (self.incoming.take(), self.target.as_ref()) {
            t.overlay.lock().unwrap().unreserve(inc.reservation);
        }
    }
}

#[derive(Clone, Copy)]
enum RPiece {
    Mem(*const u8, usize),
    Scratch(u32, u32),
    Zero(u64),
}

impl Conn {
    fn avail(&self) -> &[u8] {
        &self.rbuf[self.head..self.tail]
    }
    fn consume(&mut self, n: usize) {
        self.head += n;
        if self.head == self.tail && !self.recv_armed {
            self.head = 0;
            self.tail = 0;
        }
    }
    /// Appends header bytes to the batch.
    fn put(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        let start = self.out.len();
        f(&mut self.out);
        let n = (self.out.len() - start) as u32;
        if n == 0 {
            return;
        }
        match self.pieces.last_mut() {
            Some(P::Out(s, l)) if (*s + *l) as usize == start => *l += n,
            _ => self.pieces.push(P::Out(start as u32, n)),
        }
        self.total += n as u64;
    }
    fn mem(&mut self, p: *const u8, n: usize) {
        self.pieces.push(P::Mem(p, n));
        self.total += n as u64;
    }
    fn zeros(&mut self, mut n: u64) {
        while n > 0 {
            let k = n.min(ZEROS_LEN as u64) as usize;
            self.mem(ZEROS.as_ptr(), k);
            n -= k as u64;
        }
    }
    fn reply_ok(&mut self, cookie: u64) {
        let structured = self.structured;
        self.put(|o| {
            if structured {
                wire::chunk(o, wire::REPLY_FLAG_DONE, wire::REPLY_TYPE_NONE, cookie, 0)
            } else {
                wire::simple_reply(o, 0, cookie)
            }
        });
    }
    fn reply_err(&mut self, cookie: u64, error: u32, msg: &str) {
        let structured = self.structured;
        self.put(|o| if structured { wire::error_chunk(o, cookie, error, msg) } else { wire::simple_reply(o, error, cookie) });
    }
}

/// Places wanted by connections refused at a limit, each to be made by cutting one idle
/// connection of the refused one's scope (its address at nbd.connections_per_ip_max; anyone at
/// nbd.connections_max). The connections of one address are spread over the workers, so the
/// refusing worker posts the request and the first worker holding a connection of that scope
/// idle for nbd.idle_evict_ms takes it and cuts its longest-idle one: one refusal costs one
/// eviction at most, and none when nothing in the scope is idle long enough.
#[derive(Default)]
pub struct Evictions {
    pending: AtomicUsize,
    wanted: Mutex<Vec<(Option<IpAddr>, Instant)>>,
}

/// Requests older than this are dropped: the refused client has retried or given up.
const EVICTION_REQUEST_MS: u64 = 2000;
const EVICTION_REQUESTS_MAX: usize = 1024;

impl Evictions {
    fn want(&self, scope: Option<IpAddr>, now: Instant) {
        let mut w = self.wanted.lock().unwrap();
        if w.len() < EVICTION_REQUESTS_MAX {
            w.push((scope, now));
            self.pending.store(w.len(), Ordering::Release);
        }
    }
}

pub struct NbdService {
    listener: Option<Socket>,
    accept_armed: bool,
    conns: Slab<Conn>,
    active: usize,
    dirty: Vec<u32>,
    stats: Arc<WorkerStats>,
    shared: Arc<Shared>,
    worker: usize,
    last_sweep: Instant,
    last_timeouts: Instant,
    slots: FileSlots,
    refusal_logged_at: Option<Instant>,
    refusals_unlogged: u64,
    accept_backoff: super::AcceptBackoff,
}

impl NbdService {
    pub fn new(listener: Socket, stats: Arc<WorkerStats>, shared: Arc<Shared>, worker: usize, slots: FileSlots) -> NbdService {
        NbdService {
            listener: Some(listener),
            accept_armed: false,
            conns: Slab::default(),
            active: 0,
            dirty: Vec::new(),
            stats,
            shared,
            worker,
            last_sweep: Instant::now(),
            last_timeouts: Instant::now(),
            slots,
            refusal_logged_at: None,
            refusals_unlogged: 0,
            accept_backoff: Default::default(),
        }
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
    }

    pub fn on_cqe(&mut self, kind: u8, id: u32, generation: u16, res: i32, flags: u32, ring: &IoUring, now: Instant) {
        match kind {
            K_ACCEPT => {
                if !cqueue::more(flags) {
                    self.accept_armed = false;
                }
                if res < 0 && self.accept_backoff.failed(res, now, "NBD") {
                    self.stats.counters.add(Counter::NbdAcceptErrors, 1);
                }
                if res >= 0 {
                    self.accept_backoff.succeeded("NBD");
                    // Safety: the kernel gave us this new descriptor.
                    self.accepted(unsafe { OwnedFd::from_raw_fd(res) }, ring, now);
                }
            }
            K_RECV => {
                let Some(c) = self.conns.get_mut(id, generation) else { return };
                c.recv_armed = false;
                if res <= 0 {
                    c.close_after = true;
                } else {
                    c.tail += res as usize;
                    c.active_at = now;
                }
                self.mark(id);
            }
            K_SEND => {
                let Some(c) = self.conns.get_mut(id, generation) else { return };
                if cqueue::notif(flags) {
                    c.zc_pending -= 1;
                    self.mark(id);
                    return;
                }
                if cqueue::more(flags) {
                    c.zc_pending += 1; // a notification follows
                }
                c.sending = false;
                if res < 0 {
                    c.close_after = true;
                    c.total = c.sent;
                    if res == -libc::EFAULT {
                        // The kernel read a mapping past the end of a file truncated under it.
                        self.stats.counters.add(Counter::NbdDamaged, 1);
                    }
                } else {
                    c.sent += res as u64;
                    c.progress_at = now;
                    c.active_at = now;
                    advance(c, res as usize);
                    self.stats.counters.add(Counter::NbdSentBytes, res as u64);
                }
                self.mark(id);
            }
            _ => {}
        }
    }

    fn accepted(&mut self, fd: OwnedFd, ring: &IoUring, now: Instant) {
        let sock = Socket::from(fd);
        let Some(peer) = sock.peer_addr().ok().and_then(|a| a.as_socket()) else { return };
        let ip = peer.ip().to_canonical(); // IPv4-mapped (dual-stack socket) counts as IPv4
        let snap = self.shared.store.load();
        let cfg = &snap.config.nbd;
        if let Err(limit) = self.shared.nbd_admission.admit(ip, cfg.connections_max, cfg.connections_per_ip_max) {
            let (counter, key, max, scope) = match limit {
                Limit::Total => (Counter::NbdRefusedLimit, "nbd.connections_max", cfg.connections_max, None),
                Limit::PerIp => (Counter::NbdRefusedPerIp, "nbd.connections_per_ip_max", cfg.connections_per_ip_max, Some(ip)),
            };
            self.stats.counters.add(counter, 1);
            self.shared.nbd_evictions.want(scope, now);
            // One line a second at most per worker: a flood of refusals must not flood the log.
            self.refusals_unlogged += 1;
            if self.refusal_logged_at.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1)) {
                tracing::warn!(
                    client = %peer,
                    limit = key,
                    max,
                    refused = self.refusals_unlogged,
                    "nbd connection refused at {key} = {max}; a connection of that scope idle for nbd.idle_evict_ms ({} ms) is cut so a retry gets in; raise {key} if this load is legitimate",
                    cfg.idle_evict_ms
                );
                self.refusal_logged_at = Some(now);
                self.refusals_unlogged = 0;
            }
            return; // closed at once: NBD has no way to say "busy" before the handshake
        }
        let _ = sock.set_nodelay(true);
        let _ = sock.set_nonblocking(true);
        self.stats.counters.add(Counter::NbdConnections, 1);
        let sref = self.slots.install(ring, sock.as_raw_fd());
        let (id, _) = self.conns.insert(|generation| {
            let mut c = Box::new(Conn {
                generation,
                fd: Some(sock.into()),
                sref,
                peer,
                ip,
                rbuf: vec![0u8; RBUF].into_boxed_slice(),
                head: 0,
                tail: 0,
                recv_armed: false,
                phase: Phase::ClientFlags,
                no_zeroes: false,
                structured: false,
                meta_base: false,
                target: None,
                incoming: None,
                out: Vec::with_capacity(4096),
                scratch: Vec::new(),
                pieces: Vec::with_capacity(64),
                total: 0,
                sent: 0,
                cursor: (0, 0),
                sending: false,
                zc_pending: 0,
                iov: Vec::with_capacity(IOV_MAX),
                msg: unsafe { std::mem::zeroed() },
                close_after: false,
                closing: false,
                dirty: false,
                requests: 0,
                opened: now,
                active_at: now,
                progress_at: now,
                tmp: Vec::new(),
                pin: None,
                cont: None,
            });
            c.put(|o| o.extend_from_slice(&wire::greeting()));
            c
        });
        self.active += 1;
        self.mark(id);
    }

    pub fn flush(&mut self, ring: &mut IoUring, now: Instant) {
        if !self.accept_armed && self.accept_backoff.may_arm(now) {
            if let Some(l) = self.listener.as_ref() {
                push(ring, &opcode::AcceptMulti::new(types::Fd(l.as_raw_fd())).build().user_data(ud(K_ACCEPT, 0, 0, 0)));
                self.accept_armed = true;
            }
        }
        if self.worker == 0 && now.duration_since(self.last_sweep) >= Duration::from_secs(1) {
            self.last_sweep = now;
            let keep = Duration::from_millis(self.shared.store.load().config.nbd.cache_keep_after_disconnect_ms);
            self.shared.nbd_targets.sweep(now, keep);
        }
        if now.duration_since(self.last_timeouts) >= Duration::from_millis(100) {
            self.last_timeouts = now;
            self.timeouts(ring, now);
        }
        let mut i = 0;
        while i < self.dirty.len() {
            let id = self.dirty[i];
            i += 1;
            self.flush_one(id, ring, now);
        }
        self.dirty.clear();
    }

    fn flush_one(&mut self, id: u32, ring: &mut IoUring, now: Instant) {
        let snap = self.shared.store.load();
        let Some(c) = self.conns.at(id) else { return };
        c.dirty = false;
        if c.closing {
            if !c.sending && c.zc_pending == 0 && !c.recv_armed {
                self.conns.remove(id);
            }
            return;
        }
        if !c.sending && c.sent == c.total && c.total > 0 && c.zc_pending == 0 {
            // The batch is out: start the next one.
            c.unpin();
            c.out.clear();
            if c.head == c.tail && c.cont.is_none() && c.scratch.capacity() > 64 * 1024 {
                c.scratch = Vec::new(); // nothing more asked for: an idle connection holds no copies
            } else {
                c.scratch.clear();
            }
            c.pieces.clear();
            c.total = 0;
            c.sent = 0;
            c.cursor = (0, 0);
        }
        if !c.sending && c.total == 0 && !c.close_after {
            let mut ctx = Ctx { snap: &snap, stats: &self.stats, shared: &self.shared, now };
            if step(c, &mut ctx) {
                c.close_after = true;
            }
        }
        if !c.sending && c.sent < c.total {
            if c.sent == 0 {
                c.progress_at = now; // a new batch: its clock starts now
                let zc_min = snap.config.nbd.send_zc_min_bytes;
                let zc = zc_min > 0 && c.total >= zc_min; // the admin asked for SEND_ZC here
                if !zc && c.total <= DIRECT_SEND_MAX && try_direct_send(c, &self.stats) {
                    // All out at once: the next batch can start in this same pass.
                    self.mark(id);
                    return;
                }
            }
            submit_send(c, id, ring, snap.config.nbd.send_zc_min_bytes);
        }
        if c.close_after && !c.sending && c.sent == c.total {
            self.close(id, ring, now);
            return;
        }
        let c = self.conns.at(id).unwrap();
        if !c.recv_armed && !c.close_after {
            if c.head == c.tail {
                c.head = 0;
                c.tail = 0;
            } else if c.tail == c.rbuf.len() && c.head > 0 {
                c.rbuf.copy_within(c.head..c.tail, 0);
                c.tail -= c.head;
                c.head = 0;
            }
            if c.tail == c.rbuf.len() {
                if c.head == 0 && !c.sending && c.total == 0 {
                    // Full of bytes that make no progress: not NBD.
                    self.close(id, ring, now);
                }
                return; // the queue is full: TCP pushes back until replies are out
            }
            // Everything received is answered: at queue depth 1 the client cannot have sent
            // its next request yet, so the receive waits for readiness first instead of trying
            // a tcp_recvmsg that would come back empty (EAGAIN) before arming the poll anyway.
            let poll_first = if c.head == c.tail { super::ring::RECVSEND_POLL_FIRST } else { 0 };
            let spare = &mut c.rbuf[c.tail..];
            let e = with_sock!(c.sref, f => opcode::Recv::new(f, spare.as_mut_ptr(), spare.len() as u32).ioprio(poll_first).build())
                .user_data(ud(K_RECV, id, c.generation, 0));
            push(ring, &e);
            c.recv_armed = true;
        }
    }

    /// Cuts off connections whose send has not moved in `nbd.send_timeout_ms` (a client that
    /// stopped reading holds its batch and a connection slot) or whose handshake is not done
    /// in `nbd.handshake_timeout_ms`. Checked every 100 ms by a scan: NBD connections are few
    /// per worker and long-lived, so no timer per connection is needed.
    fn timeouts(&mut self, ring: &mut IoUring, now: Instant) {
        if self.shared.nbd_evictions.pending.load(Ordering::Acquire) > 0 {
            self.evict_idle(ring, now);
        }
        let cfg = &self.shared.store.load().config.nbd;
        let (send, hs) = (Duration::from_millis(cfg.send_timeout_ms), Duration::from_millis(cfg.handshake_timeout_ms));
        for id in 0..self.conns.capacity_ids() {
            let Some(c) = self.conns.at(id) else { continue };
            let (counter, what) = if c.closing {
                continue;
            } else if c.sent < c.total && now.saturating_duration_since(c.progress_at) > send {
                (Counter::NbdTimeoutSend, "the client stopped reading")
            } else if c.phase != Phase::Transmission && now.saturating_duration_since(c.opened) > hs {
                (Counter::NbdTimeoutHandshake, "the handshake did not finish in time")
            } else {
                continue;
            };
            self.stats.counters.add(counter, 1);
            tracing::warn!(client = %c.peer, "nbd connection cut off: {what}");
            if c.sending {
                push(ring, &opcode::AsyncCancel::new(ud(K_SEND, id, c.generation, 0)).build().user_data(ud(K_CANCEL, 0, 0, 0)));
            }
            self.close(id, ring, now);
        }
    }

    /// Takes the eviction requests this worker can serve: for each, the longest-idle of its
    /// connections in the request's scope, idle for nbd.idle_evict_ms, is cut, provided the
    /// scope is still at its limit.
    fn evict_idle(&mut self, ring: &mut IoUring, now: Instant) {
        let snap = self.shared.store.load();
        let cfg = &snap.config.nbd;
        let idle_min = Duration::from_millis(cfg.idle_evict_ms);
        let mut cut = Vec::new();
        {
            let ev = &self.shared.nbd_evictions;
            let mut wanted = ev.wanted.lock().unwrap();
            wanted.retain(|(_, at)| now.saturating_duration_since(*at) < Duration::from_millis(EVICTION_REQUEST_MS));
            let adm = &self.shared.nbd_admission;
            let mut i = 0;
            while i < wanted.len() {
                let scope = wanted[i].0;
                let full = match scope {
                    Some(ip) => adm.of(ip) >= cfg.connections_per_ip_max,
                    None => adm.total() >= cfg.connections_max,
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
                    let idle = !c.closing
                        && !c.sending
                        && c.sent == c.total
                        && c.incoming.is_none()
                        && c.head == c.tail
                        && now.saturating_duration_since(c.active_at) >= idle_min;
                    if idle && scope.is_none_or(|ip| c.ip == ip) && victim.is_none_or(|(_, at)| c.active_at < at) {
                        victim = Some((id, c.active_at));
                    }
                }
                let victim = victim.map(|(id, _)| id);
                match (full, victim) {
                    (false, _) => {
                        wanted.swap_remove(i); // room was made meanwhile
                    }
                    (true, Some(id)) => {
                        cut.push(id);
                        wanted.swap_remove(i);
                    }
                    (true, None) => i += 1, // another worker may hold an idle one
                }
            }
            ev.pending.store(wanted.len(), Ordering::Release);
        }
        for id in cut {
            let Some(c) = self.conns.at(id) else { continue };
            self.stats.counters.add(Counter::NbdIdleEvicted, 1);
            tracing::warn!(
                client = %c.peer,
                target = c.target.as_ref().map(|t| t.id.as_str()).unwrap_or("-"),
                idle_ms = now.saturating_duration_since(c.active_at).as_millis() as u64,
                "nbd connection cut: idle, and a new connection was refused at a connection limit (nbd.idle_evict_ms)"
            );
            self.close(id, ring, now);
        }
    }

    fn close(&mut self, id: u32, ring: &mut IoUring, now: Instant) {
        let worker = self.worker;
        let Some(c) = self.conns.at(id) else { return };
        if c.closing {
            return;
        }
        c.closing = true;
        if c.recv_armed {
            // rbuf stays alive (the connection lingers) until this receive's CQE: the kernel
            // may write into it until then.
            push(ring, &opcode::AsyncCancel::new(ud(K_RECV, id, c.generation, 0)).build().user_data(ud(K_CANCEL, 0, 0, 0)));
        }
        c.fd = None;
        let sref = std::mem::replace(&mut c.sref, SockRef::Raw(-1));
        self.slots.release(ring, sref);
        let Some(c) = self.conns.at(id) else { return };
        tracing::info!(
            worker,
            client = %c.peer,
            export = c.target.as_ref().map(|t| t.vdisk.name.as_str()).unwrap_or("-"),
            target = c.target.as_ref().map(|t| t.id.as_str()).unwrap_or("-"),
            requests = c.requests,
            ms = c.opened.elapsed().as_millis() as u64,
            "nbd connection closed"
        );
        if let Some(t) = c.target.as_ref() {
            let keep = Duration::from_millis(self.shared.store.load().config.nbd.cache_keep_after_disconnect_ms);
            self.shared.nbd_targets.detach(t, keep, now);
        }
        let (ip, lingering) = (c.ip, c.sending || c.zc_pending > 0 || c.recv_armed);
        self.active -= 1;
        self.shared.nbd_admission.release(ip);
        if !lingering {
            self.conns.remove(id);
        }
    }

    pub fn abort_all(&mut self, ring: &mut IoUring) {
        let now = Instant::now();
        for id in self.conns.ids_where(|c| !c.closing) {
            self.close(id, ring, now);
        }
    }
}

impl Service for NbdService {
    fn name(&self) -> &'static str {
        "nbd"
    }
    fn on_completion(&mut self, io: &mut Io, token: Token, res: i32, flags: u32) {
        self.on_cqe(token.op, token.id, token.generation, res, flags, &io.ring, io.now);
    }
    fn on_timer(&mut self, _io: &mut Io, _token: Token) {}
    fn flush(&mut self, io: &mut Io) {
        NbdService::flush(self, &mut io.ring, io.now);
    }
    fn stop_listening(&mut self, io: &mut Io) {
        NbdService::stop_listening(self, &mut io.ring);
    }
    fn abort_all(&mut self, io: &mut Io) {
        NbdService::abort_all(self, &mut io.ring);
    }
    fn active(&self) -> usize {
        self.active
    }
    fn lingering(&self) -> usize {
        self.conns.stored()
    }
}

struct Ctx<'a> {
    snap: &'a Snapshot,
    stats: &'a WorkerStats,
    shared: &'a Shared,
    now: Instant,
}

/// Moves the send cursor over `n` bytes that went out.
fn advance(c: &mut Conn, mut n: usize) {
    while n > 0 && c.cursor.0 < c.pieces.len() {
        let len = match c.pieces[c.cursor.0] {
            P::Out(_, l) | P::Scratch(_, l) => l as usize,
            P::Mem(_, l) => l,
        };
        let left = len - c.cursor.1;
        if n >= left {
            n -= left;
            c.cursor = (c.cursor.0 + 1, 0);
        } else {
            c.cursor.1 += n;
            n = 0;
        }
    }
}

/// Parses and answers what the buffer holds, building one batch. Returns true when the
/// connection must end once the batch is out.
fn step(c: &mut Conn, ctx: &mut Ctx) -> bool {
    let depth = ctx.snap.config.nbd.queue_depth_max.max(1);
    let mut answered = 0usize;
    loop {
        if answered >= depth || c.total >= BATCH_BYTES || c.pieces.len() >= BATCH_PIECES {
            return false;
        }
        if let Some(k) = c.cont.take() {
            let target = c.target.clone().expect("transmission has a target");
            if read(c, &target, k, ctx.snap.config.nbd.reply_scratch_bytes_max as usize) {
                return true;
            }
            if c.cont.is_some() {
                return false;
            }
            answered += 1;
            continue;
        }
        if c.incoming.is_some() {
            match payload(c, ctx) {
                Some(true) => answered += 1,
                Some(false) => {}
                None => return false,
            }
            continue;
        }
        if c.head == c.tail {
            return false;
        }
        match c.phase {
            Phase::ClientFlags => match wire::client_flags(c.avail()) {
                Parse::More => return false,
                Parse::Fatal(_) => return true,
                Parse::Done(f, n) => {
                    c.no_zeroes = f & wire::FLAG_NO_ZEROES as u32 != 0;
                    c.consume(n);
                    c.phase = Phase::Options;
                }
            },
            Phase::Options => {
                let (opt, range, n) = match wire::option(c.avail()) {
                    Parse::More => return false,
                    Parse::Fatal(_) => return true,
                    Parse::Done((o, r), n) => (o, r, n),
                };
                let payload = c.avail()[range].to_vec();
                c.consume(n);
                if option(c, opt, &payload, ctx) {
                    return true;
                }
                answered += 1;
            }
            Phase::Transmission => {
                let r = match wire::request(c.avail()) {
                    Parse::More => return false,
                    Parse::Fatal(_) => return true,
                    Parse::Done(r, n) => {
                        c.consume(n);
                        r
                    }
                };
                c.requests += 1;
                if r.kind == wire::CMD_DISC {
                    return true;
                }
                if command(c, r, ctx) {
                    answered += 1;
                }
                if c.cont.is_some() || c.close_after {
                    return c.close_after; // the rest of a READ goes first in the next batch
                }
            }
        }
    }
}

/// The error message of every request for a vdisk whose image changed in place (image::guard).
const DAMAGED: &str =
    "vdisk image changed on the server while served (copied over or truncated): refused until the administrator replaces it";

/// One transmission request (a WRITE only starts here). Returns true when it was answered.
fn command(c: &mut Conn, r: wire::Request, ctx: &mut Ctx) -> bool {
    let target = c.target.clone().expect("transmission has a target");
    if target.vdisk.damaged() && r.kind != wire::CMD_WRITE {
        // Nothing read from a damaged image is sent (WRITE payloads are refused in payload()).
        c.reply_err(r.cookie, wire::EIO, DAMAGED);
        ctx.stats.counters.add(Counter::NbdDamaged, 1);
        return true;
    }
    let size = target.vdisk.chain.virtual_size();
    let max = ctx.snap.config.nbd.request_bytes_max as u64;
    let len = r.length as u64;
    let in_range = r.offset.checked_add(len).is_some_and(|e| e <= size);
    let counters = &ctx.stats.counters;
    match r.kind {
        wire::CMD_READ => {
            if len > max {
                c.reply_err(r.cookie, wire::EOVERFLOW, "read larger than the advertised maximum block size");
            } else if !in_range {
                c.reply_err(r.cookie, wire::EINVAL, "read past the end of the disk");
            } else {
                let close = read(c, &target, Cont { r, done: 0, started: false }, ctx.snap.config.nbd.reply_scratch_bytes_max as usize);
                c.close_after |= close;
                counters.add(Counter::NbdReads, 1);
                return true;
            }
            counters.add(Counter::NbdErrors, 1);
        }
        wire::CMD_WRITE => {
            // Refused whole before any byte lands: too large, out of range, or no room (the
            // slots of the whole write are reserved here, before its payload arrives).
            let mut reservation = cache::Reservation::default();
            let error = if len > max {
                Some((wire::EOVERFLOW, "write larger than the advertised maximum block size".to_string()))
            } else if !in_range {
                Some((wire::EINVAL, "write past the end of the disk".to_string()))
            } else if target.vdisk.damaged() {
                Some((wire::EIO, DAMAGED.to_string()))
            } else {
                match target.overlay.lock().unwrap().reserve(r.offset, len) {
                    Ok(res) => {
                        reservation = res;
                        None
                    }
                    Err(e) => Some((wire::ENOSPC, e.to_string())),
                }
            };
            let fua = r.flags & wire::CMD_FLAG_FUA != 0;
            c.incoming = Some(Incoming { cookie: r.cookie, next: r.offset, remaining: len, fua, error, reservation });
            if len == 0 {
                return payload(c, ctx) == Some(true);
            }
            return false;
        }
        wire::CMD_FLUSH => {
            match target.overlay.lock().unwrap().sync() {
                Ok(()) => c.reply_ok(r.cookie),
                Err(e) => {
                    c.reply_err(r.cookie, wire::EIO, &e.to_string());
                    counters.add(Counter::NbdErrors, 1);
                }
            }
            return true;
        }
        wire::CMD_TRIM | wire::CMD_WRITE_ZEROES => {
            if !in_range {
                c.reply_err(r.cookie, wire::EINVAL, "range past the end of the disk");
                counters.add(Counter::NbdErrors, 1);
                return true;
            }
            let mut o = target.overlay.lock().unwrap();
            let mut res = o.zero(r.offset, len, &target.vdisk.chain);
            if res.is_ok() && r.flags & wire::CMD_FLAG_FUA != 0 {
                res = o.sync();
            }
            drop(o);
            match res {
                Ok(()) => {
                    counters.add(Counter::NbdWrites, 1);
                    c.reply_ok(r.cookie);
                }
                Err(e) => cache_error(c, r.cookie, &e, ctx),
            }
            return true;
        }
        wire::CMD_BLOCK_STATUS => {
            if !c.structured || !c.meta_base {
                c.reply_err(r.cookie, wire::EINVAL, "no metadata context was negotiated");
            } else if len == 0 || !in_range {
                c.reply_err(r.cookie, wire::EINVAL, "block status range empty or past the end of the disk");
            } else {
                block_status(c, &target, r);
                return true;
            }
            counters.add(Counter::NbdErrors, 1);
        }
        _ => {
            c.reply_err(r.cookie, wire::EINVAL, "unknown command");
            counters.add(Counter::NbdErrors, 1);
        }
    }
    true
}

fn cache_error(c: &mut Conn, cookie: u64, e: &CacheError, ctx: &Ctx) {
    let (errno, counter) = match e {
        CacheError::NoSpace(_) => (wire::ENOSPC, Counter::NbdNoSpace),
        CacheError::Io(_) => (wire::EIO, Counter::NbdErrors),
    };
    ctx.stats.counters.add(counter, 1);
    let t = c.target.as_ref().map(|t| t.id.as_str()).unwrap_or("-");
    tracing::warn!(client = %c.peer, target = t, "nbd write refused: {e}");
    c.reply_err(cookie, errno, &e.to_string());
}

/// Applies the arrived part of a WRITE payload. Some(true) when the write was answered,
/// Some(false) when progress was made, None when more bytes are needed.
fn payload(c: &mut Conn, ctx: &mut Ctx) -> Option<bool> {
    let Incoming { next, remaining, ref error, .. } = *c.incoming.as_ref().unwrap();
    let refused = error.is_some();
    if remaining > 0 {
        let avail = (c.tail - c.head) as u64;
        let mut n = avail.min(remaining);
        if !refused && n < remaining {
            // Apply whole blocks only, so a block split across receives is not copied up
            // from the image twice; wait for the rest when less than a block is here.
            let end = next + n;
            let aligned = end - end % cache::BLOCK;
            if aligned <= next {
                return None;
            }
            n = aligned - next;
        }
        if n == 0 {
            return None;
        }
        if !refused {
            let t = c.target.as_ref().unwrap();
            let data = &c.rbuf[c.head..c.head + n as usize];
            let inc = c.incoming.as_mut().unwrap();
            let r = t.overlay.lock().unwrap().write_reserved(next, data, &t.vdisk.chain, &mut inc.reservation);
            if let Err(e) = r {
                let errno = if matches!(e, CacheError::NoSpace(_)) { wire::ENOSPC } else { wire::EIO };
                c.incoming.as_mut().unwrap().error = Some((errno, e.to_string()));
            } else if t.vdisk.damaged() {
                // A partial block was completed from a damaged image: the write is refused.
                c.incoming.as_mut().unwrap().error = Some((wire::EIO, DAMAGED.to_string()));
            }
            ctx.stats.counters.add(Counter::NbdWrittenBytes, n);
        }
        let inc = c.incoming.as_mut().unwrap();
        inc.next += n;
        inc.remaining -= n;
        let more = inc.remaining > 0;
        c.consume(n as usize);
        if more {
            return Some(false);
        }
    }
    let inc = c.incoming.take().unwrap();
    let mut error = inc.error;
    {
        let mut o = c.target.as_ref().unwrap().overlay.lock().unwrap();
        o.unreserve(inc.reservation);
        if error.is_none() && inc.fua {
            if let Err(e) = o.sync() {
                error = Some((wire::EIO, e.to_string()));
            }
        }
    }
    match error {
        None => {
            ctx.stats.counters.add(Counter::NbdWrites, 1);
            c.reply_ok(inc.cookie);
        }
        Some((wire::ENOSPC, m)) => cache_error(c, inc.cookie, &CacheError::NoSpace(m), ctx),
        Some((errno, m)) => {
            ctx.stats.counters.add(Counter::NbdErrors, 1);
            c.reply_err(inc.cookie, errno, &m);
        }
    }
    Some(true)
}

/// A READ whose reply goes out over more than one batch (its overflow-file blocks would not
/// fit in what is left of `nbd.reply_scratch_bytes_max`).
#[derive(Clone, Copy)]
struct Cont {
    r: wire::Request,
    /// Bytes of the reply's data already in earlier batches.
    done: u64,
    /// Whether the reply's header (simple) or first chunk (structured) is out.
    started: bool,
}

/// A READ reply, or the next part of one: simple (header + bytes) or structured (data and
/// hole chunks). A part ends where the connection's scratch would pass
/// `nbd.reply_scratch_bytes_max`; the rest is left in `c.cont` for the next batch. Returns
/// true when the connection must end (an overflow-file error after the reply started).
fn read(c: &mut Conn, target: &Arc<Target>, k: Cont, scratch_max: usize) -> bool {
    let Cont { r, done, started } = k;
    let len = r.length as u64;
    let structured = c.structured;
    if len == 0 {
        if structured {
            c.reply_ok(r.cookie);
        } else {
            c.put(|o| wire::simple_reply(o, 0, r.cookie));
        }
        return false;
    }
    if c.scratch.len() + cache::BLOCK as usize > scratch_max {
        c.cont = Some(k); // no room for even one overflow block: after this batch
        return false;
    }
    let (from, left) = (r.offset + done, len - done);
    c.tmp.clear();
    let part = {
        let mut o = target.overlay.lock().unwrap();
        if c.pin.is_none() && o.has_pages() {
            // The reply may point at cache pages: they stay put until this batch is out.
            c.pin = Some(o.pin());
        }
        let (tmp, scratch) = (&mut c.tmp, &mut c.scratch);
        let res = o.read(from, left, &target.vdisk.chain, scratch, scratch_max, &mut |p| match p {
            Piece::Data(d) => tmp.push(RPiece::Mem(d.as_ptr(), d.len())),
            Piece::Copied(rg) => tmp.push(RPiece::Scratch(rg.start as u32, rg.len() as u32)),
            Piece::Zero(n) => match tmp.last_mut() {
                Some(RPiece::Zero(z)) => *z += n,
                _ => tmp.push(RPiece::Zero(n)),
            },
        });
        match res {
            Ok(n) => n,
            Err(e) => {
                drop(o);
                if started {
                    tracing::warn!(client = %c.peer, "nbd read failed after its reply started: {e}; closing the connection");
                    return true;
                }
                c.reply_err(r.cookie, wire::EIO, &e.to_string());
                return false;
            }
        }
    };
    // The lookups just made may be what found the image changed (a fault past its end reads
    // zeros and marks it damaged): then these pieces are not the disk's bytes.
    if target.vdisk.damaged() {
        c.tmp.clear();
        if started {
            tracing::warn!(client = %c.peer, "nbd read found the image damaged after its reply started; closing the connection");
            return true;
        }
        c.reply_err(r.cookie, wire::EIO, DAMAGED);
        return false;
    }
    let last = part == left;
    if !last {
        c.cont = Some(Cont { r, done: done + part, started: true });
    }
    let tmp = std::mem::take(&mut c.tmp);
    let df = r.flags & wire::CMD_FLAG_DF != 0;
    if !structured {
        if !started {
            c.put(|o| wire::simple_reply(o, 0, r.cookie));
        }
        for p in &tmp {
            emit_piece(c, *p);
        }
    } else if df {
        // One data chunk for the whole reply (DF): its header, with the full length, goes
        // out with the first part.
        if !started {
            c.put(|o| {
                wire::chunk(o, wire::REPLY_FLAG_DONE, wire::REPLY_TYPE_OFFSET_DATA, r.cookie, 8 + len as u32);
                o.extend_from_slice(&r.offset.to_be_bytes());
            });
        }
        for p in &tmp {
            emit_piece(c, *p);
        }
    } else {
        // Chunks: holes as OFFSET_HOLE, data runs as OFFSET_DATA whose length is patched when
        // the run ends; the last chunk of the last part ends the reply.
        let mut at = from;
        let mut open: Option<(usize, u64)> = None; // (length field position in out, bytes)
        let mut last_hdr = 0usize;
        for p in &tmp {
            match *p {
                RPiece::Zero(n) => {
                    if let Some((pos, l)) = open.take() {
                        c.out[pos..pos + 4].copy_from_slice(&(8 + l as u32).to_be_bytes());
                    }
                    last_hdr = c.out.len();
                    c.put(|o| {
                        wire::chunk(o, 0, wire::REPLY_TYPE_OFFSET_HOLE, r.cookie, 12);
                        o.extend_from_slice(&at.to_be_bytes());
                        o.extend_from_slice(&(n as u32).to_be_bytes());
                    });
                    at += n;
                }
                p => {
                    if open.is_none() {
                        last_hdr = c.out.len();
                        c.put(|o| {
                            wire::chunk(o, 0, wire::REPLY_TYPE_OFFSET_DATA, r.cookie, 0);
                            o.extend_from_slice(&at.to_be_bytes());
                        });
                        open = Some((last_hdr + 16, 0));
                    }
                    let n = emit_piece(c, p);
                    open.as_mut().unwrap().1 += n;
                    at += n;
                }
            }
        }
        if let Some((pos, l)) = open.take() {
            c.out[pos..pos + 4].copy_from_slice(&(8 + l as u32).to_be_bytes());
        }
        if last {
            c.out[last_hdr + 4..last_hdr + 6].copy_from_slice(&wire::REPLY_FLAG_DONE.to_be_bytes());
        }
    }
    c.tmp = tmp;
    false
}

fn emit_piece(c: &mut Conn, p: RPiece) -> u64 {
    match p {
        RPiece::Mem(ptr, n) => {
            c.mem(ptr, n);
            n as u64
        }
        RPiece::Scratch(s, n) => {
            c.pieces.push(P::Scratch(s, n));
            c.total += n as u64;
            n as u64
        }
        RPiece::Zero(n) => {
            c.zeros(n);
            n
        }
    }
}

/// BLOCK_STATUS for base:allocation: at most 1024 extents (one with REQ_ONE).
fn block_status(c: &mut Conn, target: &Arc<Target>, r: wire::Request) {
    let cap = if r.flags & wire::CMD_FLAG_REQ_ONE != 0 { 1 } else { 1024 };
    let mut ext: Vec<(u64, u32)> = Vec::new();
    target.overlay.lock().unwrap().status(r.offset, r.length as u64, &target.vdisk.chain, &mut |l, f| {
        if ext.len() < cap {
            ext.push((l, f));
        }
    });
    c.put(|o| {
        wire::chunk(o, wire::REPLY_FLAG_DONE, wire::REPLY_TYPE_BLOCK_STATUS, r.cookie, 4 + 8 * ext.len() as u32);
        o.extend_from_slice(&wire::BASE_ALLOCATION_ID.to_be_bytes());
        for (l, f) in &ext {
            o.extend_from_slice(&(*l as u32).to_be_bytes());
            o.extend_from_slice(&f.to_be_bytes());
        }
    });
}

/// The transmission flags of an export.
fn export_flags(vd: &Vdisk, structured: bool) -> u16 {
    let mut f =
        wire::TFLAG_HAS_FLAGS | wire::TFLAG_SEND_FLUSH | wire::TFLAG_SEND_FUA | wire::TFLAG_SEND_TRIM | wire::TFLAG_SEND_WRITE_ZEROES;
    if structured {
        f |= wire::TFLAG_SEND_DF;
    }
    // Every connection of a target shares one cache, so what one connection wrote (and
    // flushed) is what any other reads: multi-conn holds. A private vdisk takes one writer.
    if vd.mode == Mode::Standard {
        f |= wire::TFLAG_CAN_MULTI_CONN;
    }
    f
}

/// Handshake options; returns true when the connection must end after the reply.
fn option(c: &mut Conn, opt: u32, payload: &[u8], ctx: &mut Ctx) -> bool {
    let snap = ctx.snap;
    let find = |name: &[u8]| -> Result<(Arc<Vdisk>, Option<String>), &'static str> {
        let name = std::str::from_utf8(name).map_err(|_| "export name is not UTF-8")?;
        let (vd, id) = target::split_export(name);
        if id.is_some_and(|i| !target::valid_target_id(i)) {
            return Err("bad target id after @ (1-64 printable characters, no slashes)");
        }
        let v = if vd.is_empty() { snap.default_vdisk() } else { snap.vdisk(vd) };
        let v = v.ok_or("no such export")?;
        if v.damaged() {
            return Err(DAMAGED);
        }
        Ok((v.clone(), id.map(str::to_string)))
    };
    match opt {
        wire::OPT_EXPORT_NAME => {
            let Ok((vd, id)) = find(payload) else { return true }; // the protocol's only answer
            if attach(c, &vd, id, ctx).is_err() {
                return true;
            }
            // The target's own image: a reconnect after a reload keeps the one it booted with.
            let vd = c.target.as_ref().expect("attached").vdisk.clone();
            let flags = export_flags(&vd, c.structured);
            let no_zeroes = c.no_zeroes;
            c.put(|o| {
                o.extend_from_slice(&vd.chain.virtual_size().to_be_bytes());
                o.extend_from_slice(&flags.to_be_bytes());
                if !no_zeroes {
                    o.extend_from_slice(&[0u8; 124]);
                }
            });
            c.phase = Phase::Transmission;
        }
        wire::OPT_ABORT => {
            c.put(|o| wire::option_reply(o, opt, wire::REP_ACK, &[]));
            return true;
        }
        wire::OPT_LIST => {
            c.put(|o| {
                if !payload.is_empty() {
                    wire::option_reply(o, opt, wire::REP_ERR_INVALID, &[]);
                } else {
                    for v in &snap.vdisks {
                        let mut d = (v.name.len() as u32).to_be_bytes().to_vec();
                        d.extend_from_slice(v.name.as_bytes());
                        wire::option_reply(o, opt, wire::REP_SERVER, &d);
                    }
                    wire::option_reply(o, opt, wire::REP_ACK, &[]);
                }
            });
        }
        wire::OPT_STRUCTURED_REPLY => {
            c.structured = payload.is_empty();
            let kind = if payload.is_empty() { wire::REP_ACK } else { wire::REP_ERR_INVALID };
            c.put(|o| wire::option_reply(o, opt, kind, &[]));
        }
        wire::OPT_LIST_META_CONTEXT | wire::OPT_SET_META_CONTEXT => {
            let set = opt == wire::OPT_SET_META_CONTEXT;
            let Some((name, queries)) = wire::meta_request(payload) else {
                c.put(|o| wire::option_reply(o, opt, wire::REP_ERR_INVALID, b"malformed meta context request"));
                return false;
            };
            if set && !c.structured {
                c.put(|o| wire::option_reply(o, opt, wire::REP_ERR_INVALID, b"structured replies first"));
                return false;
            }
            if find(name).is_err() {
                c.put(|o| wire::option_reply(o, opt, wire::REP_ERR_UNKNOWN, b"no such export"));
                return false;
            }
            let chosen = if queries.is_empty() { !set } else { queries.iter().any(|q| wire::selects_base_allocation(q)) };
            if set {
                c.meta_base = chosen;
            }
            c.put(|o| {
                if chosen {
                    let mut d = wire::BASE_ALLOCATION_ID.to_be_bytes().to_vec();
                    d.extend_from_slice(wire::BASE_ALLOCATION.as_bytes());
                    wire::option_reply(o, opt, wire::REP_META_CONTEXT, &d);
                }
                wire::option_reply(o, opt, wire::REP_ACK, &[]);
            });
        }
        wire::OPT_INFO | wire::OPT_GO => {
            let Some((name, reqs)) = wire::info_request(payload) else {
                c.put(|o| wire::option_reply(o, opt, wire::REP_ERR_INVALID, &[]));
                return false;
            };
            let (vd, id) = match find(name) {
                Ok(v) => v,
                Err(why) => {
                    if why == DAMAGED {
                        ctx.stats.counters.add(Counter::NbdDamaged, 1);
                    }
                    // NBD_REP_ERR_UNKNOWN: "the requested export is not available".
                    c.put(|o| wire::option_reply(o, opt, wire::REP_ERR_UNKNOWN, why.as_bytes()));
                    return false;
                }
            };
            let vd = if opt == wire::OPT_GO {
                if let Err(why) = attach(c, &vd, id, ctx) {
                    c.put(|o| wire::option_reply(o, opt, wire::REP_ERR_POLICY, why.as_bytes()));
                    return false;
                }
                // Size and flags of the image the target is served from (the one it booted
                // with, when it was already connected before a reload changed the vdisk).
                c.target.as_ref().expect("attached").vdisk.clone()
            } else {
                vd
            };
            let flags = export_flags(&vd, c.structured);
            let max = snap.config.nbd.request_bytes_max;
            c.put(|o| {
                let mut d = wire::INFO_EXPORT.to_be_bytes().to_vec();
                d.extend_from_slice(&vd.chain.virtual_size().to_be_bytes());
                d.extend_from_slice(&flags.to_be_bytes());
                wire::option_reply(o, opt, wire::REP_INFO, &d);
                if reqs.contains(&wire::INFO_BLOCK_SIZE) {
                    let mut d = wire::INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    d.extend_from_slice(&1u32.to_be_bytes());
                    d.extend_from_slice(&(cache::BLOCK as u32).to_be_bytes());
                    d.extend_from_slice(&max.to_be_bytes());
                    wire::option_reply(o, opt, wire::REP_INFO, &d);
                }
                wire::option_reply(o, opt, wire::REP_ACK, &[]);
            });
            if opt == wire::OPT_GO {
                c.phase = Phase::Transmission;
            }
        }
        _ => c.put(|o| wire::option_reply(o, opt, wire::REP_ERR_UNSUP, &[])),
    }
    false
}

/// Gives the connection its target's write cache (or refuses: a private vdisk's second writer,
/// a target created from another address).
fn attach(c: &mut Conn, vd: &Arc<Vdisk>, id: Option<String>, ctx: &mut Ctx) -> Result<(), String> {
    let mut key = id.clone().unwrap_or_else(|| c.ip.to_string());
    if let Some(i) = id.as_deref() {
        let k = token::key(ctx.snap.config.farm.token_key_file.as_deref());
        let now_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        match token::verify(&k, i, c.ip, &vd.name, now_unix) {
            // A boot token: the farm places the target by its MAC, as the boot script did.
            Ok(m) => key = m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
            Err(_) if ctx.snap.config.nbd.target_ids == TargetIds::Bound => {}
            // An expired token still reaches the target it made (a reconnect, hours later).
            Err(why) if why.contains("expired") && ctx.shared.nbd_targets.holds(&vd.name, i, c.ip) => {}
            Err(why) => {
                ctx.stats.counters.add(Counter::NbdRefusedToken, 1);
                tracing::warn!(
                    client = %c.peer,
                    export = %vd.name,
                    "nbd connection refused: {why} (nbd.target_ids = \"token\": a target id must be the boot token of the /ipxe script, used from the address that fetched it)"
                );
                return Err(format!("{why}; nbd.target_ids = token: use the export name the boot script gives (bootfarm-nbd-export)"));
            }
        }
    }
    if ctx.snap.farm.len() > 1 {
        let me = ctx.shared.farm_local(ctx.snap, ctx.now);
        let order = ctx.shared.farm.place(ctx.snap, &vd.name, &key, Some(c.ip), &me);
        if let Some(&first) = order.first().filter(|&&i| ctx.snap.farm[i].name != ctx.snap.config.server.name) {
            ctx.stats.counters.add(Counter::NbdMisplaced, 1);
            tracing::debug!(client = %c.peer, export = %vd.name, first = %ctx.snap.farm[first].name, "nbd target is placed on another server; serving it here");
        }
    }
    match ctx.shared.nbd_targets.attach(vd, id.as_deref(), c.peer, &ctx.snap.config.nbd, ctx.now) {
        Ok((t, resumed)) => {
            tracing::info!(client = %c.peer, export = %vd.name, target = %t.id, resumed, "nbd target attached");
            c.target = Some(t);
            Ok(())
        }
        Err(e @ AttachError::Foreign { owner }) => {
            ctx.stats.counters.add(Counter::NbdRefusedForeign, 1);
            tracing::warn!(
                client = %c.peer,
                owner = %owner,
                export = %vd.name,
                target = %key,
                "nbd connection refused: the target belongs to the address that created it; a target id reaches only its own machine's cache (a machine whose address changed gets a new cache once the old one expires, nbd.cache_keep_after_disconnect_ms)"
            );
            Err(e.to_string())
        }
        Err(e) => {
            let counter = match e {
                AttachError::Busy(_) | AttachError::Failed(_) => Counter::NbdRefusedPrivate,
                AttachError::TargetsPerAddress(_) => Counter::NbdRefusedTargets,
                AttachError::Foreign { .. } => Counter::NbdRefusedForeign,
            };
            ctx.stats.counters.add(counter, 1);
            tracing::warn!(client = %c.peer, export = %vd.name, "nbd connection refused: {e}");
            Err(e.to_string())
        }
    }
}

/// A small batch is first offered to the socket with one non-blocking sendmsg: on an idle
/// connection (a client at queue depth 1) it fits in the socket buffer, and the reply leaves
/// without a submission, a completion and another pass of the loop. Whatever does not fit goes
/// through the ring as usual. Returns true when the whole batch went out.
fn try_direct_send(c: &mut Conn, stats: &WorkerStats) -> bool {
    let Some(fd) = c.fd.as_ref().map(|f| f.as_raw_fd()) else { return false };
    fill_iov(c);
    // Safety: msg points at iovecs over memory the connection keeps alive.
    let n = unsafe { libc::sendmsg(fd, &c.msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if n <= 0 {
        return false;
    }
    c.sent += n as u64;
    advance(c, n as usize);
    stats.counters.add(Counter::NbdSentBytes, n as u64);
    c.sent == c.total
}

fn fill_iov(c: &mut Conn) {
    c.iov.clear();
    let (mut i, mut skip) = c.cursor;
    while i < c.pieces.len() && c.iov.len() < IOV_MAX {
        let (p, n) = match c.pieces[i] {
            P::Out(s, l) => (c.out[s as usize..].as_ptr(), l as usize),
            P::Scratch(s, l) => (c.scratch[s as usize..].as_ptr(), l as usize),
            P::Mem(p, l) => (p, l),
        };
        // Safety: `skip` < n; the pointer stays inside the piece.
        c.iov.push(libc::iovec { iov_base: unsafe { p.add(skip) } as *mut _, iov_len: n - skip });
        skip = 0;
        i += 1;
    }
    c.msg.msg_iov = c.iov.as_mut_ptr();
    c.msg.msg_iovlen = c.iov.len() as _;
}

/// One sendmsg from the cursor, up to IOV_MAX pieces; SEND_ZC when the batch is large enough.
fn submit_send(c: &mut Conn, id: u32, ring: &mut IoUring, zc_min: u64) {
    if c.fd.is_none() {
        return;
    }
    fill_iov(c);
    let user_data = ud(K_SEND, id, c.generation, 0);
    let flags = libc::MSG_NOSIGNAL as u32;
    let e = if zc_min > 0 && c.total - c.sent >= zc_min {
        with_sock!(c.sref, f => opcode::SendMsgZc::new(f, &c.msg).flags(flags).build())
    } else {
        with_sock!(c.sref, f => opcode::SendMsg::new(f, &c.msg).flags(flags).build())
    }
    .user_data(user_data);
    push(ring, &e);
    c.sending = true;
}
