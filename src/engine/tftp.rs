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

use super::files::{Files, Found, Get};
use super::ring::{push, with_sock, FileSlots, SockRef};
use super::service::{Io, Service};
use super::slab::Slab;
use super::timer::Wheel;
use super::token::{ServiceId, Token};
use super::{Shared, WorkerStats};
use crate::bootfiles::Refused;
use crate::config::Snapshot;
use crate::image::Backing;
use crate::metrics::Counter;
use crate::tftp::ending::{self, WRONG_TID};
use crate::tftp::netascii;
use crate::tftp::server::{self, Answer, Dropped, FileFacts};
use crate::tftp::transfer::{Status, Transfer, Transmit};
use crate::tftp::wire;
use io_uring::{cqueue, opcode, types, IoUring};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod flush;

pub const K_LISTEN: u8 = 1;
pub const K_RECV: u8 = 2;
pub const K_SEND: u8 = 3;
pub const K_CANCEL: u8 = 4;
/// The transfer port's catcher of packets from other addresses (wrong TID).
pub const K_STRAY: u8 = 5;
pub const K_TIMER: u8 = 6;
/// A bootstrap file's open through the ring (engine::files); the id is the open's.
pub const K_OPEN: u8 = 7;

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
        file: Arc<std::fs::File>,
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
    /// Bootstrap files by name; a request whose file is being opened waits here.
    files: Files<Box<Waiting>>,
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

/// A request waiting for its file's open: its bytes (parsed again when the file is open), its
/// client, and the snapshot it arrived under.
struct Waiting {
    payload: Vec<u8>,
    origin: Origin,
}

/// Who asked, and under which snapshot.
struct Origin {
    peer: SocketAddr,
    peer_raw: SockAddr,
    snap: Arc<Snapshot>,
}

/// The shared session places as `tftp::server` sees them, and this worker's eviction.
struct AdmitPlaces<'a> {
    svc: &'a mut TftpService,
    ring: &'a mut IoUring,
    now: Instant,
}

impl server::Places for AdmitPlaces<'_> {
    fn rate(&mut self, ip: IpAddr, now: Instant, per_s: u32, burst: u32) -> bool {
        self.svc.shared.tftp_rate.try_take(ip, now, per_s, burst)
    }
    fn admit(&mut self, ip: IpAddr, total_max: usize, per_ip_max: usize) -> bool {
        self.svc.shared.tftp_admission.try_admit(ip, total_max, per_ip_max)
    }
    fn total(&self) -> usize {
        self.svc.shared.tftp_admission.total()
    }
    fn evict_unconfirmed(&mut self) -> bool {
        self.svc.evict_unconfirmed(self.ring, self.now)
    }
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
            files: Files::new("ERROR 1", |op| ud(K_OPEN, op, 0, 0)),
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
            K_OPEN => self.on_open(id, res, ring, bufs.bgid, now),
            K_SEND => {
                if let Some(s) = self.session_mut(id, generation) {
                    s.inflight -= 1;
                    s.free_slots.push(slot);
                    if res == -libc::EFAULT {
                        // The kernel read the mapping past the file's end: it was truncated.
                        // Marked damaged, so the next request for the file opens it again.
                        s.file_changed = true;
                        if let Source::Map(b) = &s.source {
                            if let Backing::Map(m) = &**b {
                                m.mark_damaged();
                            }
                        }
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
        if self.listener.is_none() {
            return;
        }
        let req = match server::request(out.payload_data(), out.is_payload_truncated()) {
            Ok(r) => r,
            Err(a) => return self.answer(a, &peer, &peer_raw, None, None, now),
        };
        let snap = snapshot();
        let ip = peer.ip().to_canonical();
        let draining = self.shared.draining.load(std::sync::atomic::Ordering::Relaxed);
        if let Err(a) = server::admit(&req, ip, &snap.config.tftp, draining, now, &mut AdmitPlaces { svc: self, ring, now }) {
            return self.answer(a, &peer, &peer_raw, Some(&snap.config.tftp), None, now);
        }
        // From here every refusal gives the place back. Netascii reads the file with pread as
        // it converts, so it needs the descriptor: it always waits for an open.
        let need_file = req.mode == wire::Mode::Netascii;
        let payload = out.payload_data();
        let origin = Origin { peer, peer_raw, snap };
        let waiter = || {
            Box::new(Waiting {
                payload: payload.to_vec(),
                origin: Origin { peer, peer_raw: origin.peer_raw.clone(), snap: origin.snap.clone() },
            })
        };
        let got = self.files.get(&origin.snap.tftp_root, origin.snap.generation, req.filename, need_file, now, waiter);
        self.files.submit(ring);
        let peer_raw = &origin.peer_raw;
        match got {
            Get::Ready(found) => self.start(&req, &origin, Ok((found, None)), ring, bgid, now),
            Get::Waiting => {}
            Get::Refused(r) => self.start(&req, &origin, Err(r), ring, bgid, now),
            Get::Busy => {
                self.shared.tftp_admission.release(ip);
                self.answer(Answer::Refuse(server::BUSY), &peer, peer_raw, None, None, now);
            }
        }
    }

    /// A file open through the ring completed: the requests that waited for it go on.
    fn on_open(&mut self, op: u32, res: i32, ring: &mut IoUring, bgid: u16, now: Instant) {
        let Some((outcome, waiters)) = self.files.complete(op, res, now) else { return };
        for w in waiters {
            let ip = w.origin.peer.ip().to_canonical();
            let draining = self.shared.draining.load(std::sync::atomic::Ordering::Relaxed);
            let Ok(req) = server::request(&w.payload, false) else {
                self.shared.tftp_admission.release(ip);
                continue;
            };
            if let Err(a) = server::resume(draining || self.listener.is_none()) {
                self.shared.tftp_admission.release(ip);
                self.answer(a, &w.origin.peer, &w.origin.peer_raw, None, None, now);
                continue;
            }
            let file = outcome.clone().map(|o| (o.found, Some(o.file)));
            self.start(&req, &w.origin, file, ring, bgid, now);
        }
    }

    /// Applies a refusal or a drop decided by `tftp::server` (the caller gave any place back).
    fn answer(
        &mut self,
        a: Answer,
        peer: &SocketAddr,
        peer_raw: &SockAddr,
        cfg: Option<&crate::config::Tftp>,
        file: Option<&std::path::Path>,
        now: Instant,
    ) {
        match a {
            Answer::Refuse(r) => {
                self.count(r.counter, 1);
                if let Some(l) = self.listener.as_ref() {
                    Self::send_error_from(l.as_raw_fd(), peer_raw, r.code, r.message);
                }
            }
            Answer::Drop(d) => {
                if let Some(c) = d.counter() {
                    self.count(c, 1);
                }
                match d {
                    Dropped::Rate => {
                        if let (Some(unlogged), Some(cfg)) = (self.dropped_rate.due(now), cfg) {
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
                    }
                    Dropped::Plain => {
                        if let Some(unlogged) = self.dropped_plain.due(now) {
                            tracing::warn!(
                                worker = self.worker,
                                client = %peer,
                                file = %file.map(|f| f.display().to_string()).unwrap_or_default(),
                                unlogged,
                                "tftp request without options dropped unanswered: the client is outside tftp.plain_rrq_subnets \
                                 (add its subnet if it is a PXE ROM that sends no options)"
                            );
                        }
                    }
                    Dropped::NotARequest | Dropped::Draining => {}
                }
            }
        }
    }

    /// The request's file is known (`file`: its mapping, and its descriptor for netascii):
    /// `tftp::server::accept` decides, and an accepted transfer gets its sockets and session.
    fn start(
        &mut self,
        req: &wire::Request<'_>,
        origin: &Origin,
        file: Result<(Arc<Found>, Option<Arc<std::fs::File>>), Refused>,
        ring: &mut IoUring,
        bgid: u16,
        now: Instant,
    ) {
        let (peer, peer_raw, snap) = (origin.peer, &origin.peer_raw, &origin.snap);
        let cfg = &snap.config.tftp;
        let ip = peer.ip().to_canonical();
        let limits = server::limits(cfg);
        let netascii = req.mode == wire::Mode::Netascii;
        let file = file.and_then(|(found, fd)| match (netascii, fd) {
            (false, _) => Ok((found, None)),
            (true, Some(fd)) => Ok((found, Some(fd))),
            (true, None) => Err(Refused::Unreadable),
        });
        let facts = file.as_ref().map_err(|r| *r).map(|(f, fd)| FileFacts {
            size: if fd.is_some() { f.id.size } else { f.data.bytes().len() as u64 },
            damaged: fd.is_none() && f.data.damaged(),
        });
        let negotiated = match server::accept(req, facts, ip, &snap.tftp_plain_subnets, &limits) {
            Ok(n) => n,
            Err(a) => {
                self.shared.tftp_admission.release(ip);
                let path = file.as_ref().ok().map(|(f, _)| f.path.clone());
                return self.answer(a, &peer, peer_raw, Some(cfg), path.as_deref(), now);
            }
        };
        let (found, fd) = file.expect("accepted with a file");
        let size = facts.map(|f| f.size).unwrap_or(0);
        let bind_ip = if peer.is_ipv4() && self.listen_ip.is_ipv6() { IpAddr::from([0, 0, 0, 0]) } else { self.listen_ip };
        let (sock, stray) = match transfer_sockets(peer, bind_ip) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot open a transfer socket: {e}");
                self.shared.tftp_admission.release(ip);
                return self.answer(Answer::Refuse(server::NO_PORT), &peer, peer_raw, None, None, now);
            }
        };
        let sref = self.slots.install(ring, sock.as_raw_fd());
        let slots_n = (negotiated.windowsize as usize).clamp(2, SEND_SLOTS_MAX);
        // Octet is sent from the mapping; netascii is read with pread as it is converted.
        let (source, transfer) = match fd {
            None => (Source::Map(found.data.clone()), Transfer::new(negotiated, size, &limits, now)),
            Some(file) => (
                Source::Netascii {
                    file,
                    stream: netascii::Stream::new(size, negotiated.blksize),
                    bufs: vec![0; slots_n * negotiated.blksize as usize],
                },
                Transfer::new_stream(negotiated, &limits, now),
            ),
        };
        let file = found.path.clone();
        let mut s = Box::new(Session {
            generation: 0,
            sock: Some(sock),
            sref,
            stray: Some(stray),
            stray_armed: false,
            peer,
            peer_raw: peer_raw.clone(),
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
            Self::send_error_from(stray.as_raw_fd(), &from_raw, WRONG_TID.code, WRONG_TID.message);
        }
        self.count(WRONG_TID.counter, 1);
    }

    fn on_session_packet(&mut self, id: u32, generation: u16, raw: &[u8], now: Instant) {
        let Ok(out) = types::RecvMsgOut::parse(raw, &self.msg) else { return };
        let Some(from_raw) = sockaddr_from(out.name_data()) else { return };
        let Some(from) = from_raw.as_socket() else { return };
        let payload = out.payload_data();
        let Some(s) = self.session_mut(id, generation) else { return };
        if !same_peer(&from, &s.peer) {
            if let Some(sock) = s.sock.as_ref() {
                Self::send_error_from(sock.as_raw_fd(), &from_raw, WRONG_TID.code, WRONG_TID.message);
            }
            self.count(WRONG_TID.counter, 1);
            return;
        }
        match ending::from_client(&mut s.transfer, payload, now) {
            Ok(()) => self.mark(id),
            Err(c) => self.count(c, 1),
        }
    }

    /// Ends every running transfer (drain deadline passed).
    pub fn abort_all(&mut self, ring: &mut IoUring, now: Instant) {
        for w in self.files.take_waiters() {
            self.shared.tftp_admission.release(w.origin.peer.ip().to_canonical());
        }
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
    /// Transfers running, and requests waiting for their file (each holds its place).
    fn active(&self) -> usize {
        self.active + self.files.waiting()
    }
    /// Sessions whose memory is still referenced by the kernel (sends in flight).
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
mod tests;
