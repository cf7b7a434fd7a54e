//! One iSCSI connection (RFC 7143, ErrorRecoveryLevel 0, one connection per session) as a
//! sans-IO [`TcpSession`]: the login phase (`login`: i1's negotiation, CHAP, the target's write
//! cache attached), then full feature phase: SCSI commands through `scsi::execute` with Data-In
//! pointing at the image mapping, cache pages and the zero page (`command`), writes through
//! immediate data, unsolicited Data-Out and R2T-solicited Data-Out into the target's cache
//! (`write`), NOP-In/Out both ways, task management, text (SendTargets), logout, Reject.
//!
//! Input is taken one whole PDU at a time (the driver grows its buffer up to one PDU of our
//! MaxRecvDataSegmentLength); everything received is answered into one batch, up to the batch
//! limits, while the driver sends nothing else; a held batch stops input (TCP pushes back).
//! Limits: the CmdSN window (`iscsi.commands_in_flight_max`), data segments, bursts, R2Ts in
//! flight, the login's text and time. Any protocol error closes the connection (ERL 0), after a
//! Reject where the RFC asks for one.

use crate::config::Snapshot;
use crate::iscsi::login::{self, Negotiated, SessionType};
use crate::iscsi::scsi::Sense;
use crate::iscsi::wire::{self, reject, Bhs, Digests, Request, Sn, BHS_LEN, TAG_NONE};
use crate::metrics::Counter;
use crate::nbd::target::{Registry, Target};
use crate::session::{Batch, ConnScope, TcpSession};
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod command;
mod handshake;
#[cfg(test)]
mod tests;
mod tmf;
mod write;

use command::{RPiece, ReadCont};
use write::Task;

/// A batch stops growing past this many bytes or half of `Batch::PIECES_MAX` pieces (one
/// command's Data-In may add a few thousand pieces).
pub const BATCH_BYTES: u64 = 64 << 20;
/// Largest READ/WRITE in bytes announced in VPD B0 (the block limits page).
pub const TRANSFER_BYTES_MAX: u32 = 16 << 20;
/// Largest WRITE SAME / UNMAP range in bytes.
pub const WRITE_SAME_BYTES_MAX: u64 = 64 << 20;
/// Most UNMAP descriptors per command.
pub const UNMAP_DESCRIPTORS_MAX: u32 = 256;
/// Largest parameter list taken for UNMAP, WRITE SAME, MODE SELECT.
pub const PARAM_BYTES_MAX: u32 = 64 * 1024;
/// ITTs of aborted tasks remembered, so that their late Data-Out is dropped quietly; as many
/// CmdSNs of commands aborted before they arrived, past those still inside the window.
const ABORTED_MAX: usize = 64;
/// Overflow-file bytes copied for one batch's Data-In.
const SCRATCH_MAX: usize = 4 << 20;

/// What an iSCSI session consults while it decides; the engine implements it per worker.
pub trait Env: ConnScope {
    fn snapshot(&self) -> &Snapshot;
    /// Every target's write cache (NBD's registry: shared by the workers and both protocols).
    fn registry(&self) -> &Registry;
    /// SCSI reservations of every LUN (shared by the sessions of all workers).
    fn reservations(&self) -> &crate::iscsi::scsi::reserve::Table;
    fn count(&self, c: Counter, n: u64);
    /// The boot-token signing key (farm.token_key_file).
    fn token_key(&self) -> [u8; 16];
    /// Seconds since the Unix epoch (boot tokens expire by the wall clock).
    fn now_unix(&self) -> u64;
    /// 16 fresh random bytes (CHAP challenges, TSIHs).
    fn random(&self) -> [u8; 16];
    /// This node's portals (address and port), for SendTargets.
    fn portals(&self) -> Vec<SocketAddr>;
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum Phase {
    Login,
    Full,
}

/// The LUN as the session serves it (fixed at login: the target's image).
#[derive(Clone, Copy, Debug)]
struct LunInfo {
    blocks: u64,
    block_len: u32,
    designator: [u8; 16],
    relative_port: u16,
}

/// Our NOP-In ping waiting for its answer.
#[derive(Clone, Copy, Debug)]
struct Ping {
    ttt: u32,
    deadline: Instant,
}

/// One iSCSI connection. `E` is the engine's [`Env`].
pub struct Session<E> {
    peer: SocketAddr,
    ip: IpAddr,
    phase: Phase,
    login: handshake::LoginState,
    neg: Option<Negotiated>,
    digests: Digests,
    /// Largest data segment we may send (the initiator's MaxRecvDataSegmentLength).
    max_send: u32,
    target: Option<Arc<Target>>,
    lun: Option<LunInfo>,
    /// The session's identity: initiator name (as sent), ISID, TSIH, CID.
    initiator: String,
    isid: [u8; 6],
    /// The I_T nexus name (initiator name and ISID), set with the initiator name at login.
    nexus: String,
    tsih: u16,
    cid: u16,
    statsn: u32,
    exp_cmdsn: u32,
    max_cmdsn: u32,
    /// Writes waiting for their data, oldest first.
    tasks: Vec<Task>,
    /// ITTs of aborted tasks, so that their late Data-Out is dropped quietly.
    aborted: Vec<u32>,
    /// CmdSNs an ABORT TASK took before their command arrived (RFC 7143 11.5.1 b).
    cancelled: Vec<u32>,
    /// The reservation table's epoch when this session last took its notices (`tmf`).
    notices_seen: u64,
    next_ttt: u32,
    /// Unit attentions to report, oldest first, each on the next command it applies to
    /// (after a reset, a preempt by another initiator).
    uas: Vec<Sense>,
    /// The target's reset count this session has reported (`Target::resets`).
    resets_seen: u64,
    /// A Text Request continued over PDUs (C bit), and a long Text Response cut into parts.
    text_in: Vec<u8>,
    text_out: Vec<u8>,
    text_out_at: usize,
    text_ttt: u32,
    batch: Batch,
    held: bool,
    scratch: Vec<u8>,
    scratch_refs: Vec<(u32, u32)>,
    tmp: Vec<RPiece>,
    /// Command response data (INQUIRY and the like) being built.
    data: Vec<u8>,
    /// A READ whose Data-In continues in the next batch.
    cont: Option<ReadCont>,
    pin: Option<u64>,
    answered: usize,
    ping: Option<Ping>,
    done: bool,
    reason: &'static str,
    requests: u64,
    opened: Instant,
    active_at: Instant,
    login_deadline: Instant,
    _env: PhantomData<fn(&mut E)>,
}

impl<E: Env> Session<E> {
    /// A connection from `peer`, admitted: it waits for the first Login Request.
    pub fn new(env: &E, peer: SocketAddr, now: Instant) -> Session<E> {
        let cfg = &env.snapshot().config.iscsi;
        Session {
            peer,
            ip: peer.ip().to_canonical(),
            phase: Phase::Login,
            login: handshake::LoginState::default(),
            neg: None,
            digests: Digests::default(),
            max_send: 8192,
            target: None,
            lun: None,
            initiator: String::new(),
            isid: [0; 6],
            nexus: String::new(),
            tsih: 0,
            cid: 0,
            statsn: u32::from_be_bytes(env.random()[..4].try_into().unwrap()),
            exp_cmdsn: 0,
            max_cmdsn: 0,
            tasks: Vec::new(),
            aborted: Vec::new(),
            cancelled: Vec::new(),
            notices_seen: 0,
            next_ttt: 1,
            uas: Vec::new(),
            resets_seen: 0,
            text_in: Vec::new(),
            text_out: Vec::new(),
            text_out_at: 0,
            text_ttt: TAG_NONE,
            batch: Batch { buf: Vec::with_capacity(4096), pieces: Vec::with_capacity(64), ..Default::default() },
            held: false,
            scratch: Vec::new(),
            scratch_refs: Vec::new(),
            tmp: Vec::new(),
            data: Vec::new(),
            cont: None,
            pin: None,
            answered: 0,
            ping: None,
            done: false,
            reason: "",
            requests: 0,
            opened: now,
            active_at: now,
            login_deadline: now + Duration::from_millis(cfg.login_timeout_ms),
            _env: PhantomData,
        }
    }
}

impl<E> Session<E> {
    fn end(&mut self, reason: &'static str) {
        self.done = true;
        if self.reason.is_empty() {
            self.reason = reason;
        }
    }

    fn full(&self) -> bool {
        self.batch.len >= BATCH_BYTES || self.batch.pieces.len() >= Batch::PIECES_MAX / 2
    }

    /// The sequence numbers a PDU carries without consuming a StatSN (R2T, Data-In without
    /// status, our NOP-In ping, Async).
    fn sn(&self) -> Sn {
        Sn { statsn: self.statsn, exp_cmdsn: self.exp_cmdsn, max_cmdsn: self.max_cmdsn }
    }

    /// As `sn`, consuming the StatSN (every response with status).
    fn sn_take(&mut self) -> Sn {
        self.update_window();
        let s = self.sn();
        self.statsn = self.statsn.wrapping_add(1);
        s
    }

    /// MaxCmdSN moves on as commands end: `commands_in_flight_max` minus the writes still
    /// waiting for data, never backwards (RFC 7143 4.2.2.1).
    fn update_window(&mut self) {
        let window = self.neg.as_ref().map_or(1, |_| self.login.window.max(1));
        let free = window.saturating_sub(self.tasks.len() as u32).max(1);
        let candidate = self.exp_cmdsn.wrapping_add(free - 1);
        if wire::sn_lt(self.max_cmdsn, candidate) {
            self.max_cmdsn = candidate;
        }
    }

    fn tag(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == TAG_NONE {
            self.next_ttt = 1;
        }
        t
    }

    /// Appends one PDU: the header `hdr` writes (48 bytes), its digest, `data` padded and its
    /// digest.
    fn put_pdu(&mut self, hdr: impl FnOnce(&mut Vec<u8>), data: &[u8]) {
        let d = self.digests;
        self.batch.put(|o| {
            let at = o.len();
            hdr(o);
            debug_assert_eq!(o.len() - at, BHS_LEN);
            if d.header {
                let c = wire::crc32c(&[&o[at..at + BHS_LEN]]);
                o.extend_from_slice(&wire::digest_bytes(c));
            }
            o.extend_from_slice(data);
            let pad = wire::pad4(data.len()) - data.len();
            o.extend_from_slice(&[0u8; 3][..pad]);
            if d.data && !data.is_empty() {
                let c = wire::crc32c(&[data, &[0u8; 3][..pad]]);
                o.extend_from_slice(&wire::digest_bytes(c));
            }
        });
    }

    fn unpin(&mut self) {
        if let (Some(e), Some(t)) = (self.pin.take(), self.target.as_ref()) {
            t.overlay.lock().unwrap().unpin(e);
        }
    }

    /// Lets go of what the batch and the writes hold (idempotent).
    fn release_holds(&mut self) {
        self.unpin();
        let tasks = std::mem::take(&mut self.tasks);
        if let Some(t) = self.target.as_ref() {
            let mut o = t.overlay.lock().unwrap();
            for task in tasks {
                if let Some(r) = task.reservation {
                    o.unreserve(r);
                }
            }
        }
    }

    /// Points the batch's scratch pieces at the scratch, which stays put until the release.
    fn seal(&mut self) {
        let base = self.scratch.as_ptr();
        for &(i, off) in &self.scratch_refs {
            if let crate::session::Piece::Mem { ptr, len } = &mut self.batch.pieces[i as usize] {
                debug_assert!(off as usize + *len <= self.scratch.len());
                // Safety: the range lies inside the scratch (a read copied it there).
                *ptr = unsafe { base.add(off as usize) };
            }
        }
    }
}

impl<E> Drop for Session<E> {
    fn drop(&mut self) {
        self.release_holds();
    }
}

impl<E: Env> Session<E> {
    /// A protocol error: the connection ends (ERL 0), after a Reject of `bhs` when given.
    fn protocol_error(&mut self, env: &E, bhs: Option<&[u8; BHS_LEN]>, why: &'static str) {
        env.count(Counter::IscsiProtocolErrors, 1);
        if let Some(b) = bhs {
            self.reject(env, b, reject::PROTOCOL_ERROR);
        }
        tracing::warn!(initiator = %self.initiator, client = %self.peer, "iscsi connection closed: {why}");
        self.end(why);
    }

    fn reject(&mut self, env: &E, bhs: &[u8; BHS_LEN], reason: u8) {
        env.count(Counter::IscsiRejects, 1);
        let sn = self.sn_take();
        let d = self.digests;
        let b = *bhs;
        self.batch.put(|o| {
            let at = o.len();
            wire::Reject { reason, sn }.emit(o, &b);
            if d.header {
                let c = wire::crc32c(&[&o[at..at + BHS_LEN]]);
                o.splice(at + BHS_LEN..at + BHS_LEN, wire::digest_bytes(c));
            }
            if d.data {
                let c = wire::crc32c(&[&b]);
                o.extend_from_slice(&wire::digest_bytes(c));
            }
        });
    }

    /// Parses and answers whole PDUs from `input`; returns the bytes taken.
    fn step(&mut self, env: &E, input: &[u8], now: Instant) -> usize {
        let mut at = 0usize;
        loop {
            if self.done || self.full() {
                return at;
            }
            if self.phase == Phase::Full {
                self.collect_notice(env);
            }
            if let Some(k) = self.cont.take() {
                self.read_part(env, k);
                if self.cont.is_some() || self.done {
                    return at;
                }
                continue;
            }
            let avail = &input[at..];
            let Ok(bhs) = Bhs::new(avail) else { return at };
            let lay = wire::layout(&bhs, self.digests);
            let limit = match self.phase {
                Phase::Login => env.snapshot().config.iscsi.text_bytes_max as u32,
                Phase::Full => self.neg.as_ref().map_or(8192, |n| n.max_recv_data_segment_length),
            };
            if bhs.data_len() > limit {
                let why = if self.phase == Phase::Login {
                    "a login PDU's data segment exceeds iscsi.text_bytes_max"
                } else {
                    "a data segment longer than our MaxRecvDataSegmentLength"
                };
                let b = *bhs.bytes();
                self.protocol_error(env, Some(&b), why);
                return at;
            }
            if avail.len() < lay.total {
                return at;
            }
            let pdu = &avail[..lay.total];
            at += lay.total;
            if self.digests.header {
                let got = &pdu[BHS_LEN + lay.ahs_len..BHS_LEN + lay.ahs_len + 4];
                if wire::digest_bytes(wire::crc32c(&[&pdu[..BHS_LEN + lay.ahs_len]])) != got {
                    // The header cannot be trusted, not even its tag: close (RFC 7143 7.8).
                    self.protocol_error(env, None, "a header digest error");
                    return at;
                }
            }
            let data = &pdu[lay.data_off..lay.data_off + lay.data_len];
            if self.digests.data && lay.data_len > 0 {
                let padded = &pdu[lay.data_off..lay.data_off + wire::pad4(lay.data_len)];
                if wire::digest_bytes(wire::crc32c(&[padded])) != pdu[lay.total - 4..] {
                    env.count(Counter::IscsiProtocolErrors, 1);
                    let b = *bhs.bytes();
                    self.reject(env, &b, reject::DATA_DIGEST);
                    // ERL 0 cannot recover the data (no SNACK, no R2T retry): the session fails.
                    self.end("a data digest error");
                    return at;
                }
            }
            let ahs = &pdu[BHS_LEN..BHS_LEN + lay.ahs_len];
            match self.phase {
                Phase::Login => self.login_pdu(env, &bhs, data, now),
                Phase::Full => self.full_pdu(env, &bhs, ahs, data, now),
            }
        }
    }

    /// Admits a PDU into the command window: an immediate one at once, a queued one only with
    /// the expected CmdSN (which it consumes). Others are dropped and counted (RFC 7143 3.2.2.1:
    /// outside the window silently ignored; a single connection delivers in order, so a CmdSN
    /// ahead of ExpCmdSN was skipped by the initiator and never comes).
    fn admit(&mut self, env: &E, immediate: bool, cmdsn: u32) -> bool {
        if immediate {
            return true;
        }
        if cmdsn == self.exp_cmdsn {
            self.exp_cmdsn = self.exp_cmdsn.wrapping_add(1);
            self.skip_cancelled();
            return true;
        }
        env.count(Counter::IscsiWindowDrops, 1);
        tracing::debug!(initiator = %self.initiator, cmdsn, exp_cmdsn = self.exp_cmdsn, max_cmdsn = self.max_cmdsn, "iscsi command outside the CmdSN window dropped");
        false
    }

    fn full_pdu(&mut self, env: &E, bhs: &Bhs, ahs: &[u8], data: &[u8], now: Instant) {
        let raw = *bhs.bytes();
        let req = match Request::parse(bhs) {
            Ok(r) => r,
            Err(_) => {
                // An opcode we do not know (or a target opcode): Reject, the connection goes on.
                self.reject(env, &raw, reject::COMMAND_NOT_SUPPORTED);
                return;
            }
        };
        match req {
            Request::NopOut(n) => {
                if !self.admit(env, n.immediate, n.cmdsn) {
                    return;
                }
                if n.ttt != TAG_NONE {
                    if self.ping.is_some_and(|p| p.ttt == n.ttt) {
                        self.ping = None;
                    }
                } else if n.itt != TAG_NONE {
                    let echo = &data[..data.len().min(self.max_send as usize)];
                    let sn = self.sn_take();
                    let lun = n.lun;
                    self.put_pdu(|o| wire::NopIn { lun, itt: n.itt, ttt: TAG_NONE, sn, data_len: echo.len() as u32 }.emit(o), echo);
                }
            }
            Request::Command(c) => {
                if self.cancelled_late(c.immediate, c.cmdsn) {
                    // Its Data-Out, if any, is dropped as an aborted task's.
                    return;
                }
                if self.admit(env, c.immediate, c.cmdsn) {
                    self.requests += 1;
                    self.command(env, &raw, &c, ahs, data, now);
                }
            }
            Request::DataOut(d) => self.data_out(env, &raw, &d, data),
            Request::TaskMgmt(t) => {
                if self.admit(env, t.immediate, t.cmdsn) {
                    self.task_mgmt(env, &t);
                }
            }
            Request::Text(t) => {
                if self.admit(env, t.immediate, t.cmdsn) {
                    self.text(env, &raw, &t, data);
                }
            }
            Request::Logout(l) => {
                if self.admit(env, l.immediate, l.cmdsn) {
                    self.logout(env, &l);
                }
            }
            Request::Snack(_) => self.reject(env, &raw, reject::SNACK),
            Request::Login(_) => self.protocol_error(env, Some(&raw), "a Login Request in full feature phase"),
        }
    }

    fn logout(&mut self, env: &E, l: &wire::LogoutReq) {
        let response = match l.reason {
            0 => 0,
            1 if l.cid == self.cid => 0,
            1 => 1,
            _ => 2, // connection recovery is not supported at ERL 0
        };
        self.abort_all();
        let sn = self.sn_take();
        self.put_pdu(|o| wire::LogoutResponse { itt: l.itt, response, sn, time2wait: 0, time2retain: 0 }.emit(o), &[]);
        let _ = env;
        if response == 0 {
            self.end("logout");
            self.reason = "";
        }
    }

    /// Text Request: SendTargets and the few keys full feature phase allows (i1's
    /// `login::text_request`); continued requests reassembled, long answers cut at our send
    /// limit and continued on the initiator's empty requests.
    fn text(&mut self, env: &E, raw: &[u8; BHS_LEN], t: &wire::TextReq, data: &[u8]) {
        let max = env.snapshot().config.iscsi.text_bytes_max;
        if t.ttt != TAG_NONE && t.ttt == self.text_ttt && !self.text_out.is_empty() {
            self.text_part(t);
            return;
        }
        if self.text_in.len() + data.len() > max {
            self.text_in = Vec::new();
            self.protocol_error(env, Some(raw), "a Text Request's text exceeds iscsi.text_bytes_max");
            return;
        }
        self.text_in.extend_from_slice(data);
        if t.cont {
            let ttt = self.tag();
            self.text_ttt = ttt;
            let sn = self.sn_take();
            self.put_pdu(|o| wire::TextResponse { final_: false, cont: false, lun: t.lun, itt: t.itt, ttt, sn, data_len: 0 }.emit(o), &[]);
            return;
        }
        let text = std::mem::take(&mut self.text_in);
        let snap = env.snapshot();
        let tpgt = snap.config.iscsi.portal_group_tag;
        let portals: Vec<String> = env.portals().into_iter().map(|p| login::target_address(p, tpgt)).collect();
        let kind = self.neg.as_ref().map_or(SessionType::Discovery, |n| n.session_type);
        let names: Vec<String> = match (&self.target, kind) {
            (Some(tg), _) => vec![snap.config.iscsi.target_iqn(&tg.vdisk.name)],
            (None, _) => snap.vdisks.iter().map(|v| snap.config.iscsi.target_iqn(&v.name)).collect(),
        };
        let pairs: Vec<(&str, &str)> = names.iter().flat_map(|n| portals.iter().map(move |p| (n.as_str(), p.as_str()))).collect();
        let mut out = Vec::new();
        match login::text_request(&text, &mut pairs.iter().copied(), kind, &mut out) {
            Ok(outcome) => {
                if let Some(n) = outcome.max_send_data_segment_length {
                    self.max_send = n;
                }
                self.text_out = out;
                self.text_out_at = 0;
                self.text_part(t);
            }
            Err(e) => {
                tracing::warn!(initiator = %self.initiator, "iscsi text request refused: {e}");
                self.reject(env, raw, reject::INVALID_PDU_FIELD);
            }
        }
    }

    /// The next part of the Text Response in `text_out`.
    fn text_part(&mut self, t: &wire::TextReq) {
        let rest = self.text_out.len() - self.text_out_at;
        let n = rest.min(self.max_send as usize);
        let last = n == rest;
        let ttt = if last { TAG_NONE } else { self.tag() };
        self.text_ttt = ttt;
        let sn = self.sn_take();
        let part = std::mem::take(&mut self.text_out);
        let (lun, itt, at) = (t.lun, t.itt, self.text_out_at);
        self.put_pdu(
            |o| wire::TextResponse { final_: last, cont: !last, lun, itt, ttt, sn, data_len: n as u32 }.emit(o),
            &part[at..at + n],
        );
        if last {
            self.text_out_at = 0;
        } else {
            self.text_out = part;
            self.text_out_at += n;
        }
    }
}

impl<E: Env> TcpSession for Session<E> {
    type Ctx = E;

    fn on_input(&mut self, env: &mut E, input: &[u8], now: Instant) -> usize {
        if !input.is_empty() {
            self.active_at = now;
        }
        if self.held || self.done {
            return 0;
        }
        self.step(env, input, now)
    }

    fn wants_input(&self) -> bool {
        !self.held && !self.done && self.cont.is_none() && !self.full()
    }

    fn on_eof(&mut self, env: &mut E, _now: Instant) {
        if self.phase == Phase::Login && !self.done {
            env.count(Counter::IscsiLoginFailedProtocol, 1);
            self.end("the initiator closed the connection during login");
            return;
        }
        self.end("");
    }

    fn poll_transmit(&mut self, env: &mut E, _now: Instant) -> Option<&Batch> {
        if self.held {
            return None;
        }
        if self.cont.is_some() && !self.done && self.phase == Phase::Full {
            self.collect_notice(env);
        }
        if self.cont.is_some() && !self.done {
            let k = self.cont.take().unwrap();
            self.read_part(env, k);
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
        if self.cont.is_none() && self.scratch.capacity() > 64 * 1024 {
            self.scratch = Vec::new();
        } else {
            self.scratch.clear();
        }
        self.answered = 0;
        self.active_at = now;
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        match self.phase {
            Phase::Login => Some(self.login_deadline),
            Phase::Full => match self.ping {
                Some(p) => Some(p.deadline),
                None => {
                    let iv = self.login.nop_interval;
                    (!iv.is_zero()).then(|| self.active_at + iv)
                }
            },
        }
    }

    fn on_timeout(&mut self, env: &mut E, now: Instant) {
        if self.done {
            return;
        }
        match self.phase {
            Phase::Login if now >= self.login_deadline => {
                env.count(Counter::IscsiTimeoutLogin, 1);
                env.count(Counter::IscsiLoginFailedTimeout, 1);
                tracing::warn!(client = %self.peer, "iscsi connection cut off: the login did not finish in time (iscsi.login_timeout_ms)");
                if !self.held {
                    self.batch.clear();
                    self.scratch_refs.clear();
                }
                self.end("the login did not finish in time (iscsi.login_timeout_ms)");
            }
            Phase::Login => {}
            Phase::Full => match self.ping {
                Some(p) if now >= p.deadline => {
                    env.count(Counter::IscsiTimeoutNop, 1);
                    tracing::warn!(initiator = %self.initiator, client = %self.peer, "iscsi connection closed: no answer to a NOP-In ping within iscsi.nop_in_timeout_ms");
                    self.end("no answer to a NOP-In ping (iscsi.nop_in_timeout_ms)");
                }
                Some(_) => {}
                None => {
                    let iv = self.login.nop_interval;
                    if iv.is_zero() || now < self.active_at + iv || self.held {
                        return;
                    }
                    // Our ping: TTT set, ITT reserved, StatSN not consumed (RFC 7143 11.19).
                    let ttt = self.tag();
                    self.ping = Some(Ping { ttt, deadline: now + self.login.nop_timeout });
                    self.update_window();
                    let sn = self.sn();
                    self.put_pdu(|o| wire::NopIn { lun: 0, itt: TAG_NONE, ttt, sn, data_len: 0 }.emit(o), &[]);
                }
            },
        }
    }

    fn on_drain(&mut self, env: &mut E, _now: Instant) {
        // Ask the initiator to log out (Async event 1) so that it logs in again elsewhere in the
        // farm before the grace period ends; those that do not are cut at its end.
        if self.phase == Phase::Full && !self.done && !self.held && self.target.is_some() {
            let grace = env.snapshot().config.server.shutdown_grace_ms / 1000;
            self.update_window();
            let sn = self.sn();
            self.put_pdu(
                |o| {
                    wire::Async {
                        lun: 0,
                        sn,
                        event: wire::ASYNC_LOGOUT_REQUEST,
                        vcode: 0,
                        params: [0, 0, grace.min(3600) as u16],
                        data_len: 0,
                    }
                    .emit(o)
                },
                &[],
            );
        }
    }

    fn is_done(&self) -> bool {
        self.done && (self.held || self.batch.is_empty())
    }

    fn idle_since(&self) -> Option<Instant> {
        let idle = !self.done && !self.held && self.batch.is_empty() && self.tasks.is_empty() && self.cont.is_none();
        idle.then_some(self.active_at)
    }

    fn close_reason(&self) -> &'static str {
        self.reason
    }

    fn requests(&self) -> u64 {
        self.requests
    }

    fn on_closed(&mut self, env: &mut E, stalled: bool, now: Instant) {
        if stalled {
            tracing::warn!(initiator = %self.initiator, client = %self.peer, "iscsi connection cut off: the initiator stopped reading");
        }
        // Writes still waiting for data never complete: their reservations go back.
        let tasks = std::mem::take(&mut self.tasks);
        if let Some(t) = self.target.clone() {
            // An SPC-2 reservation ends with its nexus; PR registrations stay (SPC-4 5.13.1).
            let nexus = self.nexus();
            env.reservations().with(&t.vdisk.name, |r| r.nexus_gone(nexus));
            {
                let mut o = t.overlay.lock().unwrap();
                for task in tasks {
                    if let Some(r) = task.reservation {
                        o.unreserve(r);
                    }
                }
            }
            tracing::info!(
                initiator = %self.initiator,
                client = %self.peer,
                target = %env.snapshot().config.iscsi.target_iqn(&t.vdisk.name),
                cache = %t.id,
                commands = self.requests,
                reason = self.reason,
                ms = now.saturating_duration_since(self.opened).as_millis() as u64,
                "iscsi session ended"
            );
            let keep = crate::nbd::target::Keep::of(&env.snapshot().config.nbd);
            env.registry().detach(&t, keep, now);
        }
        self.done = true;
    }
}
