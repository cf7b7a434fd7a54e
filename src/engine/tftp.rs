//! TFTP on the engine: a SO_REUSEPORT listener per worker, and per transfer a new UDP socket
//! (a new TID, RFC 1350) with a multishot recvmsg sharing the worker's provided buffers. DATA
//! goes out as sendmsg with iovec [4-byte header, slice of the file mapping]: no copy in user
//! space, no allocation per packet. Error replies (rare, off the data path) use sendto.
//! Costs per DATA block: one SQE, one CQE, zero copies; per ACK: one CQE and a buffer recycle.
//!
//! The transfer socket is connected to the client: the kernel then keeps the route and takes
//! the IP ID from the socket instead of a route lookup and a keyed hash per datagram (measured
//! 2.5% of a TFTP storm's samples). A connected socket hears only its client, so a second
//! socket on the same port (SO_REUSEPORT, same user only) catches packets from anyone else, and
//! they get the RFC 1350 ERROR 5 from the transfer's own port as before.

use super::files::FileCache;
use super::ring::{push, with_sock, FileSlots, SockRef};
use super::service::{Io, Service};
use super::slab::Slab;
use super::timer::Wheel;
use super::token::{ServiceId, Token};
use super::{Shared, WorkerStats};
use crate::config::Snapshot;
use crate::image::Backing;
use crate::metrics::Counter;
use crate::tftp::netascii;
use crate::tftp::path::{self, Refused};
use crate::tftp::transfer::{self, Limits, Status, Transfer, Transmit};
use crate::tftp::wire::{self, Packet};
use io_uring::{cqueue, opcode, types, IoUring};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const K_LISTEN: u8 = 1;
pub const K_RECV: u8 = 2;
pub const K_SEND: u8 = 3;
pub const K_CANCEL: u8 = 4;
/// The transfer port's catcher of packets from other addresses (wrong TID).
pub const K_STRAY: u8 = 5;
pub const K_TIMER: u8 = 6;

#[inline]
fn ud(op: u8, id: u32, generation: u16, slot: u16) -> u64 {
    Token::new(ServiceId::Tftp, op, id, generation).with_slot(slot).pack()
}

/// Sends in flight per transfer (the rest of a large window waits for completions).
const SEND_SLOTS_MAX: usize = 64;

/// Binds one worker's SO_REUSEPORT listening socket.
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    // Room for a storm's worth of RRQs arriving at once.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

enum Source {
    Map(Arc<Backing>),
    /// Netascii: converted block by block as it is sent, read from the file with pread (a
    /// truncated file gives a short read and ends the transfer, never a SIGBUS), into one
    /// block buffer per send slot: O(blksize x window) per transfer, nothing per file byte.
    Netascii {
        file: std::fs::File,
        stream: netascii::Stream,
        bufs: Vec<u8>,
    },
}

/// A log line for requests dropped without an answer, at most one per `EVERY` per worker with
/// the count of those not logged: a flood must not turn into a flood of log lines.
#[derive(Default)]
struct DropLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl DropLog {
    const EVERY: Duration = Duration::from_secs(10);

    /// Whether to log now, and how many drops went unlogged before this one.
    fn due(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|t| now < t + Self::EVERY) {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

impl Source {
    /// The mapped file changed in place (image::guard): what it holds now is not the file.
    /// (Netascii reads with pread: a changed file shows as a short read instead.)
    fn damaged(&self) -> bool {
        matches!(self, Source::Map(b) if b.damaged())
    }
}

struct SendSlot {
    msg: libc::msghdr,
    iov: [libc::iovec; 2],
    head: [u8; 4],
}

struct Session {
    generation: u16,
    sock: Option<Socket>,
    /// How ring operations name `sock`: its slot in the ring's file table when one was free.
    sref: SockRef,
    /// Unconnected, on the same port: receives what does not come from the client.
    stray: Option<Socket>,
    stray_armed: bool,
    peer: SocketAddr,
    peer_raw: SockAddr,
    transfer: Transfer,
    source: Source,
    /// The snapshot the transfer started on; it finishes on it whatever reloads happen.
    _snapshot: Arc<Snapshot>,
    slots: Vec<SendSlot>,
    free_slots: Vec<u16>,
    inflight: u16,
    oack: [u8; 128],
    oack_len: usize,
    recv_armed: bool,
    closing: bool,
    dirty: bool,
    timer_due: Option<Instant>,
    started: Instant,
    file: PathBuf,
    /// The file changed under the transfer (damaged mapping, or a send that faulted past its
    /// end): it ends with an ERROR instead of sending what the file holds now.
    file_changed: bool,
}

pub struct TftpService {
    listener: Option<Socket>,
    listen_ip: IpAddr,
    listen_armed: bool,
    /// Template for multishot recvmsg: room for any peer address, no control data.
    msg: Box<libc::msghdr>,
    sessions: Slab<Session>,
    active: usize,
    files: FileCache,
    dirty: Vec<u32>,
    stats: Arc<WorkerStats>,
    shared: Arc<Shared>,
    worker: usize,
    slots: FileSlots,
    dropped_rate: DropLog,
    dropped_plain: DropLog,
    /// Sessions in start order whose client may not have acknowledged yet (stale entries are
    /// skipped): when the table is full the oldest of them gives its place to a new request.
    unconfirmed: std::collections::VecDeque<(u32, u16)>,
}

fn same_peer(a: &SocketAddr, b: &SocketAddr) -> bool {
    a == b || (a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical())
}

impl TftpService {
    pub fn new(
        listener: Socket,
        listen_ip: IpAddr,
        stats: Arc<WorkerStats>,
        shared: Arc<Shared>,
        worker: usize,
        slots: FileSlots,
    ) -> TftpService {
        let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        TftpService {
            listener: Some(listener),
            listen_ip,
            listen_armed: false,
            msg,
            sessions: Slab::default(),
            active: 0,
            files: FileCache::default(),
            dirty: Vec::new(),
            stats,
            shared,
            worker,
            slots,
            dropped_rate: DropLog::default(),
            dropped_plain: DropLog::default(),
            unconfirmed: Default::default(),
        }
    }

    fn count(&self, c: Counter, n: u64) {
        self.stats.counters.add(c, n);
    }

    fn arm_recv(ring: &mut IoUring, sock: SockRef, msg: &libc::msghdr, bgid: u16, user_data: u64) {
        let e = with_sock!(sock, f => opcode::RecvMsgMulti::new(f, msg, bgid).build().user_data(user_data));
        push(ring, &e);
    }

    /// Stops taking new transfers (drain): the listener's receive is cancelled and it is closed.
    pub fn stop_listening(&mut self, ring: &mut IoUring) {
        if self.listener.take().is_some() {
            push(ring, &opcode::AsyncCancel::new(ud(K_LISTEN, 0, 0, 0)).build().user_data(ud(K_CANCEL, 0, 0, 0)));
        }
    }

    fn send_error_from(fd: i32, to: &SockAddr, code: u16, message: &str) {
        let mut b = [0u8; 160];
        let n = wire::encode_error(&mut b, code, message);
        // Off the data path, non-blocking: a full socket buffer just drops this courtesy.
        // Safety: `b` and `to` are valid for the call.
        unsafe { libc::sendto(fd, b.as_ptr().cast(), n, libc::MSG_DONTWAIT, to.as_ptr(), to.len()) };
    }

    pub fn on_cqe(&mut self, io: &mut Io, t: Token, res: i32, flags: u32) {
        let (kind, id, generation, slot) = (t.op, t.id, t.generation, t.slot);
        let (bufs, ring, now, store) = (&mut io.bufs, &mut io.ring, io.now, &io.store);
        let snapshot = &|| store.load();
        let bid = cqueue::buffer_select(flags);
        match kind {
            K_LISTEN => {
                if !cqueue::more(flags) {
                    self.listen_armed = false;
                }
                if res == -libc::ENOBUFS {
                    self.count(Counter::RecvBuffersExhausted, 1);
                } else if res >= 0 {
                    if let Some(bid) = bid {
                        let bgid = bufs.bgid;
                        self.on_listener_packet(bufs.get(bid, res as usize), ring, bgid, now, snapshot);
                    }
                }
            }
            K_RECV => {
                let live = self.session_mut(id, generation).is_some();
                if live {
                    if !cqueue::more(flags) {
                        self.session_mut(id, generation).unwrap().recv_armed = false;
                        self.mark(id);
                    }
                    if res == -libc::ENOBUFS {
                        self.count(Counter::RecvBuffersExhausted, 1);
                    } else if res >= 0 {
                        if let Some(bid) = bid {
                            self.on_session_packet(id, generation, bufs.get(bid, res as usize), now);
                        }
                    }
                }
            }
            K_STRAY => {
                if let Some(s) = self.session_mut(id, generation) {
                    if !cqueue::more(flags) {
                        s.stray_armed = false;
                        self.mark(id);
                    }
                    if res >= 0 {
                        if let Some(bid) = bid {
                            self.on_stray_packet(id, generation, bufs.get(bid, res as usize));
                        }
                    }
                }
            }
            K_SEND => {
                if let Some(s) = self.session_mut(id, generation) {
                    s.inflight -= 1;
                    s.free_slots.push(slot);
                    if res == -libc::EFAULT {
                        // The kernel read the mapping past the file's end: it was truncated.
                        s.file_changed = true;
                    }
                    if res < 0 {
                        self.count(Counter::TftpSendErrors, 1);
                    }
                    self.mark(id);
                }
            }
            _ => {}
        }
        if let Some(bid) = bid {
            bufs.recycle(bid);
        }
    }

    fn session_mut(&mut self, id: u32, generation: u16) -> Option<&mut Session> {
        self.sessions.get_mut(id, generation)
    }

    fn mark(&mut self, id: u32) {
        if let Some(s) = self.sessions.at(id) {
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    pub fn on_timer(&mut self, id: u32, generation: u16, now: Instant) {
        if let Some(s) = self.session_mut(id, generation) {
            s.timer_due = None;
            s.transfer.handle_timeout(now);
            self.mark(id);
        }
    }

    fn on_listener_packet(&mut self, raw: &[u8], ring: &mut IoUring, bgid: u16, now: Instant, snapshot: &dyn Fn() -> Arc<Snapshot>) {
        let Ok(out) = types::RecvMsgOut::parse(raw, &self.msg) else { return };
        let Some(peer_raw) = sockaddr_from(out.name_data()) else { return };
        let Some(peer) = peer_raw.as_socket() else { return };
        let Some(listener) = self.listener.as_ref().map(|l| l.as_raw_fd()) else { return };
        if out.is_payload_truncated() {
            self.count(Counter::TftpMalformed, 1);
            return;
        }
        let req = match wire::parse(out.payload_data()) {
            Ok(Packet::Request(r)) => r,
            Ok(_) => {
                // DATA/ACK/ERROR/OACK at the listening port: not a request; dropped (answering
                // every stray packet would make us a reflector).
                self.count(Counter::TftpMalformed, 1);
                return;
            }
            Err(wire::Malformed::UnknownOpcode(_)) | Err(wire::Malformed::TooShort) => {
                self.count(Counter::TftpMalformed, 1);
                return;
            }
            Err(m) => {
                self.count(Counter::TftpMalformed, 1);
                Self::send_error_from(listener, &peer_raw, wire::ERR_ILLEGAL, m.message());
                return;
            }
        };
        let snap = snapshot();
        let cfg = &snap.config.tftp;
        let ip = peer.ip().to_canonical();
        if !self.shared.tftp_rate.try_take(ip, now, cfg.requests_per_ip_per_s, cfg.requests_per_ip_burst) {
            self.count(Counter::TftpDroppedRate, 1);
            if let Some(unlogged) = self.dropped_rate.due(now) {
                tracing::warn!(
                    worker = self.worker,
                    client = %peer,
                    per_s = cfg.requests_per_ip_per_s,
                    burst = cfg.requests_per_ip_burst,
                    unlogged,
                    "tftp request dropped unanswered: this address is over tftp.requests_per_ip_per_s/requests_per_ip_burst \
                     (raise them if many targets share it behind a NAT)"
                );
            }
            return;
        }
        if req.write {
            self.count(Counter::TftpRefusedWrite, 1);
            Self::send_error_from(listener, &peer_raw, wire::ERR_ACCESS, "access violation: this server is read-only");
            return;
        }
        let admitted = self.shared.tftp_admission.try_admit(ip, cfg.sessions_max, cfg.sessions_per_ip_max)
            || (self.shared.tftp_admission.total() >= cfg.sessions_max
                && self.evict_unconfirmed(ring, now)
                && self.shared.tftp_admission.try_admit(ip, cfg.sessions_max, cfg.sessions_per_ip_max));
        if !admitted {
            self.count(Counter::TftpRefusedLimit, 1);
            Self::send_error_from(listener, &peer_raw, wire::ERR_NOT_DEFINED, "server busy: too many transfers, retry later");
            return;
        }
        // From here every refusal gives the place back.
        let refuse = |this: &Self, c: Counter, code: u16, msg: &str| {
            this.shared.tftp_admission.release(ip);
            this.count(c, 1);
            Self::send_error_from(listener, &peer_raw, code, msg);
        };
        let file = match path::resolve(&snap.tftp_root, req.filename) {
            Ok(f) => f,
            Err(Refused::NotFound) => return refuse(self, Counter::TftpRefusedNotFound, wire::ERR_NOT_FOUND, "file not found"),
            Err(_) => return refuse(self, Counter::TftpRefusedAccess, wire::ERR_ACCESS, "access violation"),
        };
        // Octet is sent from the mapping; netascii is read with pread as it is converted.
        let opened = match req.mode {
            wire::Mode::Octet => self.files.get(&file).map(|m| {
                let n = m.data.bytes().len() as u64;
                (Ok(m.data), n)
            }),
            wire::Mode::Netascii => std::fs::File::open(&file).and_then(|f| {
                let n = f.metadata()?.len();
                Ok((Err(f), n))
            }),
        };
        let (opened, size) = match opened {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(file = %file.display(), "cannot open: {e}");
                return refuse(self, Counter::TftpRefusedNotFound, wire::ERR_NOT_FOUND, "file not readable");
            }
        };
        let limits = Limits {
            blksize_max: cfg.blksize_max,
            windowsize_max: cfg.windowsize_max,
            timeout: Duration::from_millis(cfg.timeout_ms),
            timeout_min: Duration::from_millis(cfg.timeout_min_ms),
            retries_max: cfg.retries_max,
            timeout_option_max: Duration::from_secs(cfg.timeout_option_max_s),
            handshake_retries_max: cfg.handshake_retries_max,
            stall_max: Duration::from_millis(cfg.stall_max_ms),
            lifetime_max: Duration::from_millis(cfg.transfer_lifetime_max_ms),
        };
        let negotiated = match transfer::negotiate(&req, size, &limits) {
            Ok(n) => n,
            Err((code, msg)) => return refuse(self, Counter::TftpRefusedOption, code, msg),
        };
        // An option-less request is answered with DATA 1 at once, without a handshake: from
        // outside tftp.plain_rrq_subnets it is dropped unanswered, so nothing is reflected.
        if !negotiated.oack() && !snap.tftp_plain_subnets.iter().any(|&n| crate::farm::place::in_subnet(ip, n)) {
            self.shared.tftp_admission.release(ip);
            self.count(Counter::TftpDroppedPlain, 1);
            if let Some(unlogged) = self.dropped_plain.due(now) {
                tracing::warn!(
                    worker = self.worker,
                    client = %peer,
                    file = %file.display(),
                    unlogged,
                    "tftp request without options dropped unanswered: the client is outside tftp.plain_rrq_subnets \
                     (add its subnet if it is a PXE ROM that sends no options)"
                );
            }
            return;
        }
        let bind_ip = if peer.is_ipv4() && self.listen_ip.is_ipv6() { IpAddr::from([0, 0, 0, 0]) } else { self.listen_ip };
        let (sock, stray) = match transfer_sockets(peer, bind_ip) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot open a transfer socket: {e}");
                return refuse(self, Counter::TftpRefusedLimit, wire::ERR_NOT_DEFINED, "server cannot open a transfer port");
            }
        };
        let sref = self.slots.install(ring, sock.as_raw_fd());
        let slots_n = (negotiated.windowsize as usize).clamp(2, SEND_SLOTS_MAX);
        let (source, transfer) = match opened {
            Ok(map) => (Source::Map(map), Transfer::new(negotiated, size, &limits, now)),
            Err(file) => (
                Source::Netascii {
                    file,
                    stream: netascii::Stream::new(size, negotiated.blksize),
                    bufs: vec![0; slots_n * negotiated.blksize as usize],
                },
                Transfer::new_stream(negotiated, &limits, now),
            ),
        };
        let mut s = Box::new(Session {
            generation: 0,
            sock: Some(sock),
            sref,
            stray: Some(stray),
            stray_armed: false,
            peer,
            peer_raw,
            transfer,
            source,
            _snapshot: snap.clone(),
            slots: Vec::with_capacity(slots_n),
            free_slots: (0..slots_n as u16).rev().collect(),
            inflight: 0,
            oack: [0; 128],
            oack_len: 0,
            recv_armed: false,
            closing: false,
            dirty: false,
            timer_due: None,
            started: now,
            file: file.clone(),
            file_changed: false,
        });
        s.oack_len = negotiated.encode_oack(&mut s.oack);
        for _ in 0..slots_n {
            s.slots.push(SendSlot {
                msg: unsafe { std::mem::zeroed() },
                iov: [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 2],
                head: [0; 4],
            });
        }
        let (id, _) = self.sessions.insert(|g| {
            s.generation = g;
            s
        });
        let generation = self.sessions.at(id).unwrap().generation;
        self.unconfirmed.push_back((id, generation));
        if self.unconfirmed.len() > 2 * self.sessions.stored() + 64 {
            let sessions = &mut self.sessions;
            self.unconfirmed.retain(|&(id, g)| sessions.get_mut(id, g).is_some_and(|s| !s.closing && !s.transfer.confirmed()));
        }
        self.active += 1;
        self.stats.tftp_sessions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.count(Counter::TftpStarted, 1);
        tracing::info!(
            worker = self.worker,
            client = %peer,
            file = %file.display(),
            bytes = size,
            blksize = negotiated.blksize,
            windowsize = negotiated.windowsize,
            oack = negotiated.oack(),
            "tftp transfer started"
        );
        let sess = self.sessions.at(id).unwrap();
        Self::arm_recv(ring, sess.sref, &self.msg, bgid, ud(K_RECV, id, sess.generation, 0));
        sess.recv_armed = true;
        let fd = sess.stray.as_ref().unwrap().as_raw_fd();
        Self::arm_recv(ring, SockRef::Raw(fd), &self.msg, bgid, ud(K_STRAY, id, sess.generation, 0));
        sess.stray_armed = true;
        self.mark(id);
    }

    /// Ends this worker's oldest transfer whose client has not acknowledged anything yet (a
    /// spoofed request never does), without a packet to it; false if there is none.
    fn evict_unconfirmed(&mut self, ring: &mut IoUring, now: Instant) -> bool {
        while let Some((id, g)) = self.unconfirmed.pop_front() {
            let Some(s) = self.sessions.get_mut(id, g) else { continue };
            if s.closing || s.transfer.confirmed() {
                continue;
            }
            s.transfer.evict();
            let status = s.transfer.status();
            self.end(id, ring, status, now);
            return true;
        }
        false
    }

    /// A packet at the transfer port from another address than the client's: RFC 1350 says
    /// answer it with ERROR 5 and leave the transfer alone.
    fn on_stray_packet(&mut self, id: u32, generation: u16, raw: &[u8]) {
        let Ok(out) = types::RecvMsgOut::parse(raw, &self.msg) else { return };
        let Some(from_raw) = sockaddr_from(out.name_data()) else { return };
        let Some(s) = self.session_mut(id, generation) else { return };
        if let Some(stray) = s.stray.as_ref() {
            Self::send_error_from(stray.as_raw_fd(), &from_raw, wire::ERR_UNKNOWN_TID, "unknown transfer ID");
        }
        self.count(Counter::TftpWrongTid, 1);
    }

    fn on_session_packet(&mut self, id: u32, generation: u16, raw: &[u8], now: Instant) {
        let Ok(out) = types::RecvMsgOut::parse(raw, &self.msg) else { return };
        let Some(from_raw) = sockaddr_from(out.name_data()) else { return };
        let Some(from) = from_raw.as_socket() else { return };
        let payload = out.payload_data();
        let Some(s) = self.session_mut(id, generation) else { return };
        if !same_peer(&from, &s.peer) {
            if let Some(sock) = s.sock.as_ref() {
                Self::send_error_from(sock.as_raw_fd(), &from_raw, wire::ERR_UNKNOWN_TID, "unknown transfer ID");
            }
            self.count(Counter::TftpWrongTid, 1);
            return;
        }
        match wire::parse(payload) {
            Ok(Packet::Ack { block }) => s.transfer.handle_ack(block, now),
            Ok(Packet::Error { code, .. }) => s.transfer.handle_error(code),
            _ => {
                self.count(Counter::TftpMalformed, 1);
                return;
            }
        }
        self.mark(id);
    }

    /// Sends what dirty sessions want to send, re-arms receives and timers, ends finished
    /// transfers and frees sessions whose last send completed.
    pub fn flush(&mut self, ring: &mut IoUring, wheel: &mut Wheel, bgid: u16, now: Instant) {
        if !self.listen_armed {
            if let Some(l) = self.listener.as_ref() {
                Self::arm_recv(ring, SockRef::Raw(l.as_raw_fd()), &self.msg, bgid, ud(K_LISTEN, 0, 0, 0));
                self.listen_armed = true;
            }
        }
        let mut i = 0;
        while i < self.dirty.len() {
            let id = self.dirty[i];
            i += 1;
            self.flush_one(id, ring, wheel, bgid, now);
        }
        self.dirty.clear();
    }

    fn flush_one(&mut self, id: u32, ring: &mut IoUring, wheel: &mut Wheel, bgid: u16, now: Instant) {
        let msg_template: *const libc::msghdr = &*self.msg;
        let Some(s) = self.sessions.at(id) else { return };
        s.dirty = false;
        if s.closing {
            if s.inflight == 0 {
                self.free_session(id);
            }
            return;
        }
        if s.file_changed || s.source.damaged() {
            s.file_changed = true;
            return self.end(id, ring, Status::Active, now);
        }
        let mut data_packets = 0u64;
        let mut data_bytes = 0u64;
        let retransmits_before = s.transfer.retransmits;
        while let Some(&slot_i) = s.free_slots.last() {
            let Some(tx) = s.transfer.poll_transmit(now) else { break };
            let slot = &mut s.slots[slot_i as usize];
            let (first, second): (&[u8], &[u8]) = match tx {
                Transmit::Oack => (&s.oack[..s.oack_len], &[]),
                Transmit::Data { block, offset, len } => {
                    slot.head = wire::data_header(block);
                    let payload: &[u8] = match &mut s.source {
                        Source::Map(b) => &b.bytes()[offset as usize..offset as usize + len],
                        Source::Netascii { file, stream, bufs } => {
                            let blk = s.transfer.negotiated.blksize as usize;
                            let abs = offset / blk as u64 + 1;
                            let buf = &mut bufs[slot_i as usize * blk..(slot_i as usize + 1) * blk];
                            match stream.block(abs, s.transfer.base(), buf, |o, b| file.read_at(b, o)) {
                                Ok(n) => {
                                    s.transfer.produced(abs, n);
                                    &buf[..n]
                                }
                                Err(e) => {
                                    tracing::warn!(client = %s.peer, file = %s.file.display(), block = abs, "tftp netascii transfer stopped: {e}");
                                    s.transfer.source_failed();
                                    break;
                                }
                            }
                        }
                    };
                    data_packets += 1;
                    data_bytes += payload.len() as u64;
                    (&slot.head[..], payload)
                }
            };
            s.free_slots.pop();
            slot.iov[0] = libc::iovec { iov_base: first.as_ptr() as *mut _, iov_len: first.len() };
            slot.iov[1] = libc::iovec { iov_base: second.as_ptr() as *mut _, iov_len: second.len() };
            // Connected: no address, so the kernel uses the socket's cached route.
            slot.msg.msg_name = std::ptr::null_mut();
            slot.msg.msg_namelen = 0;
            slot.msg.msg_iov = slot.iov.as_mut_ptr();
            slot.msg.msg_iovlen = if second.is_empty() { 1 } else { 2 };
            let e = with_sock!(s.sref, f => opcode::SendMsg::new(f, &slot.msg).build().user_data(ud(K_SEND, id, s.generation, slot_i)));
            push(ring, &e);
            s.inflight += 1;
        }
        let retransmits = s.transfer.retransmits - retransmits_before;
        if !s.recv_armed && s.transfer.status() == Status::Active {
            // Safety: the template lives in the service for the worker's whole life.
            Self::arm_recv(ring, s.sref, unsafe { &*msg_template }, bgid, ud(K_RECV, id, s.generation, 0));
            s.recv_armed = true;
        }
        if !s.stray_armed && s.transfer.status() == Status::Active {
            if let Some(stray) = s.stray.as_ref() {
                // Safety: as above.
                Self::arm_recv(ring, SockRef::Raw(stray.as_raw_fd()), unsafe { &*msg_template }, bgid, ud(K_STRAY, id, s.generation, 0));
                s.stray_armed = true;
            }
        }
        if let Some(t) = s.transfer.poll_timeout() {
            if s.timer_due.is_none_or(|d| t < d) {
                wheel.insert(t, Token::new(ServiceId::Tftp, K_TIMER, id, s.generation));
                s.timer_due = Some(t);
            }
        }
        let status = s.transfer.status();
        self.count(Counter::TftpDataPackets, data_packets);
        self.count(Counter::TftpDataBytes, data_bytes);
        self.count(Counter::TftpRetransmits, retransmits);
        if status != Status::Active {
            self.end(id, ring, status, now);
        }
    }

    fn end(&mut self, id: u32, ring: &mut IoUring, status: Status, now: Instant) {
        let worker = self.worker;
        let s = self.sessions.at(id).unwrap();
        if s.closing {
            return;
        }
        s.closing = true;
        let elapsed = now - s.started;
        let (counter, outcome) = match status {
            _ if s.file_changed => (Counter::TftpFailedFileChanged, "aborted: the file changed on the server (copied over or truncated)"),
            Status::Done => (Counter::TftpCompleted, "completed"),
            Status::TimedOut => (Counter::TftpFailedTimeout, "timed out"),
            Status::TooLong => (Counter::TftpFailedLifetime, "longer than tftp.transfer_lifetime_max_ms"),
            Status::SourceFailed => (Counter::TftpFailedFileChanged, "file changed"),
            Status::Evicted => (Counter::TftpFailedEvicted, "evicted before its first ACK (table full)"),
            Status::ClientError(_) => (Counter::TftpFailedClient, "ended by the client"),
            Status::Active => (Counter::TftpFailedShutdown, "aborted by shutdown"),
        };
        let why = match status {
            _ if s.file_changed => Some("file changed on the server during the transfer; retry"),
            // A client that never acknowledged anything may be a spoofed address: no more
            // packets to it.
            Status::TimedOut if s.transfer.confirmed() => Some("transfer timed out"),
            Status::TooLong => Some("transfer took too long"),
            Status::SourceFailed => Some("file changed during the transfer, retry"),
            Status::Active => Some("server shutting down"),
            _ => None,
        };
        if let (Some(why), Some(sock)) = (why, s.sock.as_ref()) {
            Self::send_error_from(sock.as_raw_fd(), &s.peer_raw, wire::ERR_NOT_DEFINED, why);
        }
        tracing::info!(
            worker,
            client = %s.peer,
            file = %s.file.display(),
            outcome,
            acked_bytes = s.transfer.acked_bytes(),
            retransmits = s.transfer.retransmits,
            ms = elapsed.as_millis() as u64,
            "tftp transfer ended"
        );
        if s.recv_armed {
            push(ring, &opcode::AsyncCancel::new(ud(K_RECV, id, s.generation, 0)).build().user_data(ud(K_CANCEL, 0, 0, 0)));
            s.recv_armed = false;
        }
        if s.stray_armed {
            push(ring, &opcode::AsyncCancel::new(ud(K_STRAY, id, s.generation, 0)).build().user_data(ud(K_CANCEL, 0, 0, 0)));
            s.stray_armed = false;
        }
        s.sock = None; // closed; the kernel keeps its own references for operations in flight
        s.stray = None;
        let sref = std::mem::replace(&mut s.sref, SockRef::Raw(-1));
        let ip = s.peer.ip().to_canonical();
        let lingering = s.inflight > 0;
        if status == Status::Done {
            self.stats.tftp_duration.observe(elapsed);
        }
        self.count(counter, 1);
        self.active -= 1;
        self.stats.tftp_sessions.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.shared.tftp_admission.release(ip);
        self.slots.release(ring, sref);
        if !lingering {
            self.free_session(id);
        }
    }

    fn free_session(&mut self, id: u32) {
        self.sessions.remove(id);
    }

    /// Ends every running transfer (drain deadline passed).
    pub fn abort_all(&mut self, ring: &mut IoUring, now: Instant) {
        let ids = self.sessions.ids_where(|s| !s.closing);
        for id in ids {
            self.end(id, ring, Status::Active, now);
        }
    }
}

/// A transfer's sockets: the TID port connected to the client, and an unconnected catcher on
/// the same port for packets from anyone else. The connected socket takes its port from a
/// plain bind (a port nobody holds, so transfers never share one and never join another
/// program's SO_REUSEPORT group); SO_REUSEPORT is set on it only afterwards, so that the
/// catcher (same user only) can bind the same port. The kernel gives the client's datagrams to
/// the connected socket (an exact 4-tuple match) and the rest to the catcher.
fn transfer_sockets(peer: SocketAddr, bind_ip: IpAddr) -> std::io::Result<(Socket, Socket)> {
    let open = || -> std::io::Result<Socket> {
        let s = Socket::new(Domain::for_address(peer), Type::DGRAM, Some(Protocol::UDP))?;
        s.set_nonblocking(true)?;
        Ok(s)
    };
    let sock = open()?;
    sock.bind(&SocketAddr::new(bind_ip, 0).into())?;
    sock.set_reuse_port(true)?;
    let local = sock.local_addr()?;
    let stray = open()?;
    stray.set_reuse_port(true)?;
    stray.bind(&local)?;
    sock.connect(&peer.into())?;
    Ok((sock, stray))
}

impl Service for TftpService {
    fn name(&self) -> &'static str {
        "tftp"
    }
    fn on_completion(&mut self, io: &mut Io, token: Token, res: i32, flags: u32) {
        self.on_cqe(io, token, res, flags);
    }
    fn on_timer(&mut self, io: &mut Io, token: Token) {
        TftpService::on_timer(self, token.id, token.generation, io.now);
    }
    fn flush(&mut self, io: &mut Io) {
        TftpService::flush(self, &mut io.ring, &mut io.wheel, io.bufs.bgid, io.now);
    }
    fn stop_listening(&mut self, io: &mut Io) {
        TftpService::stop_listening(self, &mut io.ring);
    }
    fn abort_all(&mut self, io: &mut Io) {
        TftpService::abort_all(self, &mut io.ring, io.now);
    }
    fn active(&self) -> usize {
        self.active
    }
    fn lingering(&self) -> usize {
        self.sessions.stored()
    }
}

fn sockaddr_from(name: &[u8]) -> Option<SockAddr> {
    if name.len() < 2 {
        return None;
    }
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let n = name.len().min(std::mem::size_of::<libc::sockaddr_storage>());
    // Safety: copying at most sizeof(sockaddr_storage) bytes into it.
    unsafe { std::ptr::copy_nonoverlapping(name.as_ptr(), (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(), n) };
    // Safety: the storage holds an address of `n` bytes written by the kernel.
    Some(unsafe { SockAddr::new(storage, n as libc::socklen_t) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Every transfer gets a port of its own (a new TID, RFC 1350), shared only with its own
    /// catcher: 1000 transfers at once. With SO_REUSEPORT set before the ephemeral bind, the
    /// kernel hands out ports already held by earlier transfers (same user, reuseport), and
    /// this test fails on the first one.
    #[test]
    fn each_transfer_has_its_own_port_and_its_catcher_shares_it() {
        crate::serve::raise_nofile_limit();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = client.local_addr().unwrap();
        let mut ports = HashSet::new();
        let mut keep = Vec::new();
        for _ in 0..1000 {
            let (sock, stray) = transfer_sockets(peer, IpAddr::from([127, 0, 0, 1])).unwrap();
            let port = sock.local_addr().unwrap().as_socket().unwrap().port();
            assert_eq!(stray.local_addr().unwrap().as_socket().unwrap().port(), port, "the catcher is on the transfer's port");
            assert!(ports.insert(port), "port {port} handed out twice");
            keep.push((sock, stray));
        }
        // The client's datagram reaches the connected socket; a stranger's reaches the catcher.
        let (sock, stray) = &keep[0];
        let to = sock.local_addr().unwrap().as_socket().unwrap();
        client.send_to(b"ack", to).unwrap();
        let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(b"who", to).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut b = [std::mem::MaybeUninit::<u8>::uninit(); 8];
        let (n, from) = sock.recv_from(&mut b).unwrap();
        assert_eq!((n, from.as_socket().unwrap()), (3, peer));
        let (n, from) = stray.recv_from(&mut b).unwrap();
        assert_eq!((n, from.as_socket().unwrap()), (3, stranger.local_addr().unwrap()));
        assert!(sock.recv_from(&mut b).is_err(), "nothing else on the connected socket");
    }
}
