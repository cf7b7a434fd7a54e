//! One NBD connection (fixed newstyle, or plain newstyle with EXPORT_NAME only) as a sans-IO
//! [`TcpSession`]: handshake options, then transmission commands answered into a [`Batch`] that
//! points at the image mapping, the target's RAM cache pages and the zero page (only
//! overflow-file blocks are copied, at most `nbd.reply_scratch_bytes_max` per batch: a READ
//! with more goes out over several batches).
//!
//! Requests are pipelined: everything the client has sent, up to `nbd.queue_depth_max` requests
//! (and [`BATCH_BYTES`], [`Batch::PIECES_MAX`]), is answered in one batch. While a batch is held
//! by the driver, or is full, the session takes no input, so TCP pushes back on a client ahead
//! of its replies. Replies come in request order (the protocol allows any order; serving from
//! memory gains nothing by reordering). WRITE payloads are applied to the target's cache as they
//! arrive, whole blocks at a time, into slots reserved for the whole write up front.
//!
//! What the session needs from the server (the snapshot, the target registry, counters, farm
//! placement, the token key) comes through [`Env`], which the engine implements.

use crate::config::Snapshot;
use crate::metrics::Counter;
use crate::nbd::cache::{self, CacheError};
use crate::nbd::target::{Registry, Target};
use crate::nbd::trace;
use crate::nbd::wire::{self, Parse};
use crate::session::{Batch, ConnScope, Piece, TcpSession};

mod handshake;
mod reply;
#[cfg(test)]
mod tests;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A batch stops growing past this many reply bytes, whatever the queue depth.
pub const BATCH_BYTES: u64 = 64 << 20;
/// Most extents in one BLOCK_STATUS reply (one with REQ_ONE).
const EXTENTS_MAX: usize = 1024;

/// The error message of every request for a vdisk whose image changed in place (image::guard).
pub const DAMAGED: &str =
    "vdisk image changed on the server while served (copied over or truncated): refused until the administrator replaces it";

/// What an NBD session consults while it decides; the engine implements it per worker.
pub trait Env: ConnScope {
    /// The configuration snapshot in use now.
    fn snapshot(&self) -> &Snapshot;
    /// Every target's write cache (shared by the workers).
    fn registry(&self) -> &Registry;
    fn count(&self, c: Counter, n: u64);
    /// The farm's server order (indices into the snapshot's farm) for `target` of `vdisk`
    /// seen from `client`.
    fn farm_place(&self, vdisk: &str, target: &str, client: IpAddr, now: Instant) -> Vec<usize>;
    /// The boot-token signing key (farm.token_key_file).
    fn token_key(&self) -> [u8; 16];
    /// Seconds since the Unix epoch (boot tokens expire by the wall clock).
    fn now_unix(&self) -> u64;
    /// For a new I/O trace (nbd.trace_dir): a connection number unique in this server's run,
    /// and the wall clock in milliseconds since the Unix epoch.
    fn trace_start(&self) -> (u64, u64);
    /// Hands trace lines to the writer; false when its queue is full (the lines are dropped).
    fn trace_out(&self, chunk: trace::Chunk) -> bool;
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum Phase {
    ClientFlags,
    Options,
    Transmission,
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

/// One NBD connection. `E` is the engine's [`Env`].
pub struct Session<E> {
    peer: SocketAddr,
    /// The peer's address, IPv4-mapped ones as IPv4 (a dual-stack socket).
    ip: IpAddr,
    phase: Phase,
    /// The client set NBD_FLAG_C_FIXED_NEWSTYLE; without it only NBD_OPT_EXPORT_NAME is taken.
    fixed: bool,
    no_zeroes: bool,
    /// The last option the client sent (for the log line of a handshake that ends).
    last_option: Option<u32>,
    structured: bool,
    meta_base: bool,
    target: Option<Arc<Target>>,
    /// The target's `cut` when this connection attached: a later value is an operator's
    /// disconnect of the target.
    cut_seen: u64,
    incoming: Option<Incoming>,
    /// The batch being built, or (while `held`) the one the driver is sending.
    batch: Batch,
    held: bool,
    /// Copies of overflow-file blocks the batch refers to.
    scratch: Vec<u8>,
    /// Pieces of `batch` that lie in `scratch` (piece index, offset): their addresses are set
    /// when the batch is handed out, since `scratch` may still move while the batch is built.
    scratch_refs: Vec<(u32, u32)>,
    /// One read's pieces (reused).
    tmp: Vec<cache::ReplyPiece>,
    /// One BLOCK_STATUS reply's extents (reused).
    extents: Vec<(u64, u32)>,
    /// A READ whose reply continues in the next batch.
    cont: Option<Cont>,
    /// The target's free epoch pinned by this batch (it points at cache pages): released when
    /// the batch is released, or when the session goes.
    pin: Option<u64>,
    /// Requests (and options) answered in the batch being built, and how many it may take
    /// (nbd.queue_depth_max as of the last input).
    answered: usize,
    depth: usize,
    /// The connection ends once the batch is out.
    done: bool,
    reason: &'static str,
    requests: u64,
    opened: Instant,
    /// Last time the client sent bytes or a batch went out (idle eviction).
    active_at: Instant,
    handshake_deadline: Instant,
    /// A GO (or EXPORT_NAME) for a private vdisk whose writer is still connected: tried again
    /// at `attach_retry`, refused once `attach_give_up` (nbd.private_writer_wait_ms) passed.
    /// No input is taken meanwhile: the option stays unread.
    attach_retry: Option<Instant>,
    attach_give_up: Option<Instant>,
    /// The I/O trace of this connection, from its attach (nbd.trace_dir).
    trace: Option<trace::Recorder>,
    _env: PhantomData<fn(&mut E)>,
}

impl<E: Env> Session<E> {
    /// A connection from `peer`, admitted: its first batch is the greeting.
    pub fn new(env: &E, peer: SocketAddr, now: Instant) -> Session<E> {
        let hs = Duration::from_millis(env.snapshot().config.nbd.handshake_timeout_ms);
        let mut s = Session {
            peer,
            ip: peer.ip().to_canonical(),
            phase: Phase::ClientFlags,
            fixed: false,
            no_zeroes: false,
            last_option: None,
            structured: false,
            meta_base: false,
            target: None,
            cut_seen: 0,
            incoming: None,
            batch: Batch { buf: Vec::with_capacity(4096), pieces: Vec::with_capacity(64), ..Default::default() },
            held: false,
            scratch: Vec::new(),
            scratch_refs: Vec::new(),
            tmp: Vec::new(),
            extents: Vec::new(),
            cont: None,
            pin: None,
            answered: 0,
            depth: env.snapshot().config.nbd.queue_depth_max.max(1),
            done: false,
            reason: "",
            requests: 0,
            opened: now,
            active_at: now,
            handshake_deadline: now + hs,
            attach_retry: None,
            attach_give_up: None,
            trace: None,
            _env: PhantomData,
        };
        s.batch.copy(&wire::greeting());
        s
    }
}

impl<E> Session<E> {
    /// The batch no longer points at cache pages: they may be reused.
    fn unpin(&mut self) {
        if let (Some(e), Some(t)) = (self.pin.take(), self.target.as_ref()) {
            t.overlay.lock().unwrap().unpin(e);
        }
    }

    fn end(&mut self, reason: &'static str) {
        self.done = true;
        if self.reason.is_empty() {
            self.reason = reason;
        }
    }

    /// Whether the batch being built takes no more replies.
    fn full(&self) -> bool {
        self.answered >= self.depth || self.batch.len >= BATCH_BYTES || self.batch.pieces.len() >= Batch::PIECES_MAX
    }

    fn reply_ok(&mut self, cookie: u64) {
        let structured = self.structured;
        self.batch.put(|o| {
            if structured {
                wire::chunk(o, wire::REPLY_FLAG_DONE, wire::REPLY_TYPE_NONE, cookie, 0)
            } else {
                wire::simple_reply(o, 0, cookie)
            }
        });
    }

    fn reply_err(&mut self, cookie: u64, error: u32, msg: &str) {
        let structured = self.structured;
        self.batch.put(|o| if structured { wire::error_chunk(o, cookie, error, msg) } else { wire::simple_reply(o, error, cookie) });
    }

    fn emit_piece(&mut self, p: cache::ReplyPiece) -> u64 {
        match p {
            cache::ReplyPiece::Mem(ptr, n) => {
                self.batch.pieces.push(Piece::Mem { ptr, len: n });
                self.batch.len += n as u64;
                self.batch.mem_len += n as u64;
                n as u64
            }
            cache::ReplyPiece::Scratch(off, n) => {
                // The address is set in `seal`, once the scratch no longer grows.
                self.scratch_refs.push((self.batch.pieces.len() as u32, off));
                self.batch.pieces.push(Piece::Mem { ptr: std::ptr::null(), len: n as usize });
                self.batch.len += n as u64;
                self.batch.mem_len += n as u64;
                n as u64
            }
            cache::ReplyPiece::Zero(n) => {
                self.batch.zeros(n);
                n
            }
        }
    }

    /// Points the batch's scratch pieces at the scratch, which stays put until the release.
    fn seal(&mut self) {
        let base = self.scratch.as_ptr();
        for &(i, off) in &self.scratch_refs {
            if let Piece::Mem { ptr, len } = &mut self.batch.pieces[i as usize] {
                debug_assert!(off as usize + *len <= self.scratch.len());
                // Safety: the range lies inside the scratch (it was copied there by the read).
                *ptr = unsafe { base.add(off as usize) };
            }
        }
    }

    /// Lets go of what the batch and an unfinished WRITE hold (idempotent).
    fn release_holds(&mut self) {
        self.unpin();
        // Gone in the middle of a WRITE: what it reserved and did not use goes back.
        if let (Some(inc), Some(t)) = (self.incoming.take(), self.target.as_ref()) {
            t.overlay.lock().unwrap().unreserve(inc.reservation);
        }
    }
}

impl<E> Drop for Session<E> {
    fn drop(&mut self) {
        self.release_holds();
    }
}

/// Handshake-end lines logged and left out in the current second (a flood of bad clients
/// writes one line a second, with the count left out).
static HANDSHAKE_LOG: std::sync::Mutex<(Option<Instant>, u64)> = std::sync::Mutex::new((None, 0));

/// Whether a handshake that ended for `why` is the client's doing (info) or a refusal or a
/// protocol violation (warn).
fn handshake_end_is_normal(why: &str) -> bool {
    why.starts_with("the client closed") || why.starts_with("the client sent NBD_OPT_ABORT")
}

impl<E: Env> Session<E> {
    /// Ends the connection during the handshake for `why`, with a log line naming the last
    /// option (one line a second at most in all, the rest counted in the next).
    pub(super) fn end_handshake(&mut self, _env: &E, why: &'static str) {
        self.end(why);
        let now = self.active_at;
        let skipped = {
            let mut g = HANDSHAKE_LOG.lock().unwrap();
            match g.0 {
                Some(t) if now.saturating_duration_since(t) < Duration::from_secs(1) => {
                    g.1 += 1;
                    return;
                }
                _ => {
                    let n = g.1;
                    *g = (Some(now), 0);
                    n
                }
            }
        };
        let option = self.last_option.map(wire::option_name).unwrap_or("none");
        if handshake_end_is_normal(why) {
            tracing::info!(client = %self.peer, option, fixed_newstyle = self.fixed, skipped, "nbd handshake ended: {why}");
        } else {
            tracing::warn!(client = %self.peer, option, fixed_newstyle = self.fixed, skipped, "nbd handshake ended: {why}");
        }
    }

    /// Parses and answers what `input` holds into the batch; returns the bytes taken.
    fn step(&mut self, env: &E, input: &[u8], now: Instant) -> usize {
        let cfg = &env.snapshot().config.nbd;
        let scratch_max = cfg.reply_scratch_bytes_max as usize;
        self.depth = cfg.queue_depth_max.max(1);
        let mut at = 0usize;
        loop {
            if self.done || self.full() {
                return at;
            }
            if let Some(k) = self.cont.take() {
                let target = self.target.clone().expect("transmission has a target");
                if self.read(&target, k, scratch_max) {
                    self.end("a read failed after its reply started");
                    return at;
                }
                if self.cont.is_some() {
                    return at;
                }
                self.answered += 1;
                continue;
            }
            if self.incoming.is_some() {
                let (answered, n) = self.payload(env, &input[at..]);
                at += n;
                match answered {
                    Some(true) => self.answered += 1,
                    Some(false) => {}
                    None => return at,
                }
                continue;
            }
            if at == input.len() {
                return at;
            }
            let avail = &input[at..];
            match self.phase {
                Phase::ClientFlags => match wire::client_flags(avail) {
                    Parse::More => return at,
                    Parse::Fatal(why) => {
                        self.end(why);
                        return at;
                    }
                    Parse::Done(f, n) => {
                        self.no_zeroes = f & wire::FLAG_NO_ZEROES as u32 != 0;
                        self.fixed = f & wire::FLAG_FIXED_NEWSTYLE as u32 != 0;
                        at += n;
                        self.phase = Phase::Options;
                    }
                },
                Phase::Options => {
                    let (opt, range, n) = match wire::option(avail) {
                        Parse::More => return at,
                        Parse::Fatal(why) => {
                            self.end_handshake(env, why);
                            return at;
                        }
                        Parse::Done((o, r), n) => (o, r, n),
                    };
                    self.last_option = Some(opt);
                    if let Some(why) = self.option(env, opt, &avail[range], now) {
                        self.end_handshake(env, why);
                        return at + n;
                    }
                    if self.attach_retry.is_some() {
                        return at; // the option is read again when the wait is over
                    }
                    at += n;
                    self.answered += 1;
                }
                Phase::Transmission => {
                    let r = match wire::request(avail) {
                        Parse::More => return at,
                        Parse::Fatal(why) => {
                            self.end(why);
                            return at;
                        }
                        Parse::Done(r, n) => {
                            at += n;
                            r
                        }
                    };
                    self.requests += 1;
                    self.trace_request(env, now, &r);
                    if r.kind == wire::CMD_DISC {
                        self.end("");
                        return at;
                    }
                    if self.command(env, r) {
                        self.answered += 1;
                    }
                    if self.cont.is_some() || self.done {
                        return at; // the rest of a READ goes first in the next batch
                    }
                }
            }
        }
    }

    /// Records a request in the trace, handing a full buffer to the writer.
    fn trace_request(&mut self, env: &E, now: Instant, r: &wire::Request) {
        let Some(t) = self.trace.as_mut() else { return };
        let chunk = t.record(now, r.kind, r.offset, r.length);
        let dropped = t.take_dropped();
        if dropped > 0 {
            env.count(Counter::NbdTraceDropped, dropped);
        }
        if let Some(c) = chunk {
            Self::trace_send(env, c);
        }
    }

    fn trace_send(env: &E, c: trace::Chunk) {
        let lines = c.lines;
        if !env.trace_out(c) {
            env.count(Counter::NbdTraceDropped, lines);
        }
    }

    /// One transmission request (a WRITE only starts here). Returns true when it was answered.
    fn command(&mut self, env: &E, r: wire::Request) -> bool {
        let target = self.target.clone().expect("transmission has a target");
        if target.vdisk.damaged() && r.kind != wire::CMD_WRITE {
            // Nothing read from a damaged image is sent (WRITE payloads are refused in payload()).
            self.reply_err(r.cookie, wire::EIO, DAMAGED);
            env.count(Counter::NbdDamaged, 1);
            return true;
        }
        let cfg = &env.snapshot().config.nbd;
        let size = target.vdisk.chain.virtual_size();
        let max = cfg.request_bytes_max as u64;
        let len = r.length as u64;
        let in_range = r.offset.checked_add(len).is_some_and(|e| e <= size);
        match r.kind {
            wire::CMD_READ => {
                if len > max {
                    self.reply_err(r.cookie, wire::EOVERFLOW, "read larger than the advertised maximum block size");
                } else if !in_range {
                    self.reply_err(r.cookie, wire::EINVAL, "read past the end of the disk");
                } else {
                    let k = Cont { r, done: 0, started: false };
                    if self.read(&target, k, cfg.reply_scratch_bytes_max as usize) {
                        self.end("a read failed after its reply started");
                    }
                    env.count(Counter::NbdReads, 1);
                    return true;
                }
                env.count(Counter::NbdErrors, 1);
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
                self.incoming = Some(Incoming { cookie: r.cookie, next: r.offset, remaining: len, fua, error, reservation });
                if len == 0 {
                    return self.payload(env, &[]).0 == Some(true);
                }
                return false;
            }
            wire::CMD_FLUSH => {
                let res = target.overlay.lock().unwrap().sync();
                match res {
                    Ok(()) => self.reply_ok(r.cookie),
                    Err(e) => {
                        self.reply_err(r.cookie, wire::EIO, &e.to_string());
                        env.count(Counter::NbdErrors, 1);
                    }
                }
                return true;
            }
            wire::CMD_TRIM | wire::CMD_WRITE_ZEROES => {
                if !in_range {
                    self.reply_err(r.cookie, wire::EINVAL, "range past the end of the disk");
                    env.count(Counter::NbdErrors, 1);
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
                        env.count(Counter::NbdWrites, 1);
                        self.reply_ok(r.cookie);
                    }
                    Err(e) => self.cache_error(env, r.cookie, &e),
                }
                return true;
            }
            wire::CMD_BLOCK_STATUS => {
                if !self.structured || !self.meta_base {
                    self.reply_err(r.cookie, wire::EINVAL, "no metadata context was negotiated");
                } else if len == 0 || !in_range {
                    self.reply_err(r.cookie, wire::EINVAL, "block status range empty or past the end of the disk");
                } else {
                    self.block_status(&target, r);
                    return true;
                }
                env.count(Counter::NbdErrors, 1);
            }
            _ => {
                self.reply_err(r.cookie, wire::EINVAL, "unknown command");
                env.count(Counter::NbdErrors, 1);
            }
        }
        true
    }

    fn cache_error(&mut self, env: &E, cookie: u64, e: &CacheError) {
        let (errno, counter) = match e {
            CacheError::NoSpace(_) => (wire::ENOSPC, Counter::NbdNoSpace),
            CacheError::Io(_) => (wire::EIO, Counter::NbdErrors),
        };
        env.count(counter, 1);
        let t = self.target.as_ref().map(|t| t.id.as_str()).unwrap_or("-");
        tracing::warn!(client = %self.peer, target = t, "nbd write refused: {e}");
        self.reply_err(cookie, errno, &e.to_string());
    }

    /// Applies the arrived part (`avail`) of a WRITE payload. Returns (Some(true) when the write
    /// was answered, Some(false) when progress was made, None when more bytes are needed;
    /// the bytes taken).
    fn payload(&mut self, env: &E, avail: &[u8]) -> (Option<bool>, usize) {
        let Incoming { next, remaining, ref error, .. } = *self.incoming.as_ref().unwrap();
        let refused = error.is_some();
        if remaining > 0 {
            let mut n = (avail.len() as u64).min(remaining);
            if !refused && n < remaining {
                // Apply whole blocks only, so a block split across receives is not copied up
                // from the image twice; wait for the rest when less than a block is here.
                let end = next + n;
                let aligned = end - end % cache::BLOCK;
                if aligned <= next {
                    return (None, 0);
                }
                n = aligned - next;
            }
            if n == 0 {
                return (None, 0);
            }
            if !refused {
                let t = self.target.as_ref().unwrap();
                let inc = self.incoming.as_mut().unwrap();
                let r = t.overlay.lock().unwrap().write_reserved(next, &avail[..n as usize], &t.vdisk.chain, &mut inc.reservation);
                if let Err(e) = r {
                    let errno = if matches!(e, CacheError::NoSpace(_)) { wire::ENOSPC } else { wire::EIO };
                    inc.error = Some((errno, e.to_string()));
                } else if t.vdisk.damaged() {
                    // A partial block was completed from a damaged image: the write is refused.
                    inc.error = Some((wire::EIO, DAMAGED.to_string()));
                }
                env.count(Counter::NbdWrittenBytes, n);
            }
            let inc = self.incoming.as_mut().unwrap();
            inc.next = inc.next.saturating_add(n); // a refused write may name an offset near u64::MAX
            inc.remaining -= n;
            if inc.remaining > 0 {
                return (Some(false), n as usize);
            }
            self.finish_write(env);
            return (Some(true), n as usize);
        }
        self.finish_write(env);
        (Some(true), 0)
    }

    /// The whole payload is in: the reservation goes back and the write is answered.
    fn finish_write(&mut self, env: &E) {
        let inc = self.incoming.take().unwrap();
        let mut error = inc.error;
        {
            let mut o = self.target.as_ref().unwrap().overlay.lock().unwrap();
            o.unreserve(inc.reservation);
            if error.is_none() && inc.fua {
                if let Err(e) = o.sync() {
                    error = Some((wire::EIO, e.to_string()));
                }
            }
        }
        match error {
            None => {
                env.count(Counter::NbdWrites, 1);
                self.reply_ok(inc.cookie);
            }
            Some((wire::ENOSPC, m)) => self.cache_error(env, inc.cookie, &CacheError::NoSpace(m)),
            Some((errno, m)) => {
                env.count(Counter::NbdErrors, 1);
                self.reply_err(inc.cookie, errno, &m);
            }
        }
    }
}

impl<E: Env> TcpSession for Session<E> {
    type Ctx = E;

    fn on_input(&mut self, env: &mut E, input: &[u8], now: Instant) -> usize {
        if !input.is_empty() {
            self.active_at = now;
        }
        if self.held || self.done || self.attach_retry.is_some() {
            return 0; // answered once the batch is out or the wait is over (offered again then)
        }
        self.step(env, input, now)
    }

    fn wants_input(&self) -> bool {
        !self.held && !self.done && self.cont.is_none() && !self.full() && self.attach_retry.is_none()
    }

    fn on_eof(&mut self, env: &mut E, _now: Instant) {
        if self.phase != Phase::Transmission && !self.done {
            self.end_handshake(
                env,
                match self.phase {
                    Phase::ClientFlags => "the client closed the connection before sending its flags (not an NBD newstyle client?)",
                    _ => "the client closed the connection during the handshake",
                },
            );
        }
        self.end("");
    }

    fn poll_transmit(&mut self, env: &mut E, now: Instant) -> Option<&Batch> {
        if self.held {
            return None;
        }
        if self.cont.is_some() {
            self.step(env, &[], now); // the rest of a READ, after the batch before it
        }
        if self.batch.is_empty() {
            return None;
        }
        self.seal();
        self.held = true;
        Some(&self.batch)
    }

    fn on_released(&mut self, _env: &mut E, now: Instant) {
        self.held = false;
        self.unpin();
        self.batch.clear();
        self.scratch_refs.clear();
        if self.cont.is_none() && self.incoming.is_none() && self.scratch.capacity() > 64 * 1024 {
            self.scratch = Vec::new(); // nothing more asked for: an idle connection holds no copies
        } else {
            self.scratch.clear();
        }
        self.answered = 0;
        self.active_at = now;
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let hs = (self.phase != Phase::Transmission && !self.done).then_some(self.handshake_deadline);
        match (hs, self.attach_retry) {
            (Some(h), Some(r)) => Some(h.min(r)),
            (h, r) => h.or(r),
        }
    }

    fn on_timeout(&mut self, env: &mut E, now: Instant) {
        if self.attach_retry.is_some_and(|r| now >= r) {
            self.attach_retry = None; // the driver offers the waiting option again
        }
        if self.phase == Phase::Transmission || self.done || now < self.handshake_deadline {
            return;
        }
        env.count(Counter::NbdTimeoutHandshake, 1);
        tracing::warn!(client = %self.peer, "nbd connection cut off: the handshake did not finish in time");
        if !self.held {
            self.batch.clear();
            self.scratch_refs.clear();
        }
        self.end("the handshake did not finish in time (nbd.handshake_timeout_ms)");
    }

    fn on_drain(&mut self, _env: &mut E, _now: Instant) {
        // Nothing to finish: an NBD connection is a disk, cut at the end of the grace period.
    }

    fn is_done(&self) -> bool {
        self.done && (self.held || self.batch.is_empty())
    }

    fn idle_since(&self) -> Option<Instant> {
        let idle = !self.done && !self.held && self.batch.is_empty() && self.incoming.is_none() && self.cont.is_none();
        idle.then_some(self.active_at)
    }

    fn cut_requested(&self) -> bool {
        self.target.as_ref().is_some_and(|t| t.cut.load(std::sync::atomic::Ordering::Acquire) != self.cut_seen)
    }

    fn close_reason(&self) -> &'static str {
        self.reason
    }

    fn requests(&self) -> u64 {
        self.requests
    }

    fn on_closed(&mut self, env: &mut E, stalled: bool, now: Instant) {
        // The driver counts the send timeout and logs the close; the cache pages this batch
        // may point at stay pinned until the session is dropped (the kernel may hold them).
        if stalled {
            tracing::warn!(client = %self.peer, "nbd connection cut off: the client stopped reading");
        }
        if let Some(t) = self.target.as_ref() {
            tracing::info!(
                client = %self.peer,
                export = %t.vdisk.name,
                target = %t.id,
                requests = self.requests,
                ms = now.saturating_duration_since(self.opened).as_millis() as u64,
                "nbd target detached"
            );
            let keep = crate::nbd::target::Keep::of(&env.snapshot().config.nbd);
            env.registry().detach(t, keep, now);
        }
        if let Some(mut t) = self.trace.take() {
            Self::trace_send(env, t.chunk(true));
        }
        self.done = true;
    }
}
