//! NBD on the engine: SO_REUSEPORT listener per worker, multishot accept, one receive buffer per
//! connection parsed in place. Replies go out as one sendmsg: the 16-byte reply header plus
//! iovecs over the vdisk's chain segments (zero runs from the static zero page). Requests on a
//! connection are answered in order, one reply in flight. Read-only in this slice: WRITE/TRIM
//! get EPERM (their payload is consumed so the stream stays in step).

use super::iov::{push_chain, IOV_MAX};
use super::ring::push;
use super::slab::Slab;
use super::{ud, Shared, WorkerStats};
use crate::config::Vdisk;
use crate::metrics::Counter;
use crate::nbd::wire::{self, Parse};
use io_uring::{cqueue, opcode, types, IoUring};
use socket2::Socket;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

pub const K_ACCEPT: u8 = 32;
pub const K_RECV: u8 = 33;
pub const K_SEND: u8 = 34;
pub const K_CANCEL: u8 = 35;

#[derive(PartialEq, Eq, Clone, Copy)]
enum Phase {
    ClientFlags,
    Options,
    Transmission,
}

struct Conn {
    generation: u16,
    fd: Option<OwnedFd>,
    peer: SocketAddr,
    ip: IpAddr,
    rbuf: Vec<u8>,
    rlen: usize,
    recv_armed: bool,
    phase: Phase,
    no_zeroes: bool,
    export: Option<Arc<Vdisk>>,
    /// Bytes of a refused WRITE's payload still to skip.
    discard: u64,
    out: Vec<u8>,
    body: Option<(Arc<Vdisk>, u64, u64)>,
    total: u64,
    sent: u64,
    sending: bool,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
    close_after: bool,
    closing: bool,
    dirty: bool,
    requests: u64,
    opened: Instant,
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
}

impl NbdService {
    pub fn new(listener: Socket, stats: Arc<WorkerStats>, shared: Arc<Shared>, worker: usize) -> NbdService {
        NbdService {
            listener: Some(listener),
            accept_armed: false,
            conns: Slab::default(),
            active: 0,
            dirty: Vec::new(),
            stats,
            shared,
            worker,
        }
    }

    pub fn active(&self) -> usize {
        self.active
    }
    pub fn lingering(&self) -> usize {
        self.conns.stored()
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

    pub fn on_cqe(&mut self, kind: u8, id: u32, generation: u16, res: i32, flags: u32, now: Instant) {
        match kind {
            K_ACCEPT => {
                if !cqueue::more(flags) {
                    self.accept_armed = false;
                }
                if res >= 0 {
                    // Safety: the kernel gave us this new descriptor.
                    self.accepted(unsafe { OwnedFd::from_raw_fd(res) }, now);
                }
            }
            K_RECV => {
                let Some(c) = self.conns.get_mut(id, generation) else { return };
                c.recv_armed = false;
                if res <= 0 {
                    c.close_after = true;
                    c.rlen = 0;
                } else {
                    c.rlen += res as usize;
                }
                self.mark(id);
            }
            K_SEND => {
                let Some(c) = self.conns.get_mut(id, generation) else { return };
                c.sending = false;
                if res < 0 {
                    c.close_after = true;
                    c.total = 0;
                } else {
                    c.sent += res as u64;
                    self.stats.counters.add(Counter::NbdSentBytes, res as u64);
                }
                self.mark(id);
            }
            _ => {}
        }
    }

    fn accepted(&mut self, fd: OwnedFd, now: Instant) {
        let sock = Socket::from(fd);
        let Some(peer) = sock.peer_addr().ok().and_then(|a| a.as_socket()) else { return };
        let ip = match peer.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        let max = self.shared.store.load().config.nbd.connections_max;
        if !self.shared.nbd_admission.try_admit(ip, max, max) {
            self.stats.counters.add(Counter::NbdRefusedLimit, 1);
            return; // closed at once: NBD has no way to say "busy" before the handshake
        }
        let _ = sock.set_nodelay(true);
        let _ = sock.set_nonblocking(true);
        self.stats.counters.add(Counter::NbdConnections, 1);
        let (id, _) = self.conns.insert(|generation| {
            let mut c = Box::new(Conn {
                generation,
                fd: Some(sock.into()),
                peer,
                ip,
                rbuf: vec![0u8; 64 * 1024],
                rlen: 0,
                recv_armed: false,
                phase: Phase::ClientFlags,
                no_zeroes: false,
                export: None,
                discard: 0,
                out: Vec::with_capacity(256),
                body: None,
                total: 0,
                sent: 0,
                sending: false,
                iov: Vec::with_capacity(IOV_MAX),
                msg: unsafe { std::mem::zeroed() },
                close_after: false,
                closing: false,
                dirty: false,
                requests: 0,
                opened: now,
            });
            c.out.extend_from_slice(&wire::greeting());
            c.total = c.out.len() as u64;
            c
        });
        self.active += 1;
        self.mark(id);
    }

    pub fn flush(&mut self, ring: &mut IoUring) {
        if !self.accept_armed {
            if let Some(l) = self.listener.as_ref() {
                push(ring, &opcode::AcceptMulti::new(types::Fd(l.as_raw_fd())).build().user_data(ud(K_ACCEPT, 0, 0, 0)));
                self.accept_armed = true;
            }
        }
        let mut i = 0;
        while i < self.dirty.len() {
            let id = self.dirty[i];
            i += 1;
            self.flush_one(id, ring);
        }
        self.dirty.clear();
    }

    fn flush_one(&mut self, id: u32, ring: &mut IoUring) {
        let snap = self.shared.store.load();
        let Some(c) = self.conns.at(id) else { return };
        c.dirty = false;
        if c.closing {
            if !c.sending {
                self.conns.remove(id);
            }
            return;
        }
        if c.sending {
            return;
        }
        if c.total > 0 {
            if c.sent < c.total {
                submit_send(c, id, ring);
                return;
            }
            c.total = 0;
            c.sent = 0;
            c.out.clear();
            c.body = None;
        }
        // Answer what is buffered, one reply at a time.
        if !c.close_after && !c.recv_armed && c.rlen > 0 {
            if let Some(close) = step(c, &snap, &self.stats) {
                if close {
                    c.close_after = true;
                }
            }
            if c.total > 0 {
                submit_send(c, id, ring);
                return;
            }
        }
        if c.close_after {
            self.close(id, ring);
            return;
        }
        let c = self.conns.at(id).unwrap();
        if !c.recv_armed && c.total == 0 {
            if c.rlen == c.rbuf.len() {
                // A request header never exceeds 28 bytes and options are capped: a full buffer
                // here is a client that is not speaking NBD.
                self.close(id, ring);
                return;
            }
            let fd = c.fd.as_ref().unwrap().as_raw_fd();
            let spare = &mut c.rbuf[c.rlen..];
            let e =
                opcode::Recv::new(types::Fd(fd), spare.as_mut_ptr(), spare.len() as u32).build().user_data(ud(K_RECV, id, c.generation, 0));
            push(ring, &e);
            c.recv_armed = true;
        }
    }

    fn close(&mut self, id: u32, ring: &mut IoUring) {
        let worker = self.worker;
        let Some(c) = self.conns.at(id) else { return };
        if c.closing {
            return;
        }
        c.closing = true;
        if c.recv_armed {
            push(ring, &opcode::AsyncCancel::new(ud(K_RECV, id, c.generation, 0)).build().user_data(ud(K_CANCEL, 0, 0, 0)));
            c.recv_armed = false;
        }
        c.fd = None;
        tracing::info!(
            worker,
            client = %c.peer,
            export = c.export.as_ref().map(|v| v.name.as_str()).unwrap_or("-"),
            requests = c.requests,
            ms = c.opened.elapsed().as_millis() as u64,
            "nbd connection closed"
        );
        let (ip, lingering) = (c.ip, c.sending);
        self.active -= 1;
        self.shared.nbd_admission.release(ip);
        if !lingering {
            self.conns.remove(id);
        }
    }

    pub fn abort_all(&mut self, ring: &mut IoUring) {
        for id in self.conns.ids_where(|c| !c.closing) {
            self.close(id, ring);
        }
    }
}

fn consume(c: &mut Conn, n: usize) {
    c.rbuf.copy_within(n..c.rlen, 0);
    c.rlen -= n;
}

/// Handles what the buffer holds until a reply is ready or more bytes are needed. Returns
/// Some(true) when the connection must end after what was queued.
fn step(c: &mut Conn, snap: &crate::config::Snapshot, stats: &WorkerStats) -> Option<bool> {
    loop {
        if c.total > 0 || c.rlen == 0 {
            return None;
        }
        match c.phase {
            Phase::ClientFlags => match wire::client_flags(&c.rbuf[..c.rlen]) {
                Parse::More => return None,
                Parse::Fatal(_) => return Some(true),
                Parse::Done(f, n) => {
                    c.no_zeroes = f & wire::FLAG_NO_ZEROES as u32 != 0;
                    consume(c, n);
                    c.phase = Phase::Options;
                }
            },
            Phase::Options => {
                let (opt, range, n) = match wire::option(&c.rbuf[..c.rlen]) {
                    Parse::More => return None,
                    Parse::Fatal(_) => return Some(true),
                    Parse::Done((o, r), n) => (o, r, n),
                };
                let payload = c.rbuf[range].to_vec();
                consume(c, n);
                let close = option(c, opt, &payload, snap);
                c.total = c.out.len() as u64;
                if close {
                    return Some(true);
                }
            }
            Phase::Transmission => {
                if c.discard > 0 {
                    let n = (c.discard as usize).min(c.rlen);
                    consume(c, n);
                    c.discard -= n as u64;
                    continue;
                }
                let r = match wire::request(&c.rbuf[..c.rlen]) {
                    Parse::More => return None,
                    Parse::Fatal(_) => return Some(true),
                    Parse::Done(r, n) => {
                        consume(c, n);
                        r
                    }
                };
                c.requests += 1;
                let vd = c.export.clone().expect("transmission has an export");
                let size = vd.chain.virtual_size();
                let max = snap.config.nbd.request_bytes_max as u64;
                match r.kind {
                    wire::CMD_READ => {
                        let err = if r.length as u64 > max {
                            wire::EOVERFLOW
                        } else if r.offset.checked_add(r.length as u64).is_none_or(|e| e > size) {
                            wire::EINVAL
                        } else {
                            0
                        };
                        wire::simple_reply(&mut c.out, err, r.cookie);
                        if err == 0 && r.length > 0 {
                            c.body = Some((vd, r.offset, r.length as u64));
                        }
                        stats.counters.add(if err == 0 { Counter::NbdReads } else { Counter::NbdErrors }, 1);
                    }
                    wire::CMD_WRITE => {
                        c.discard = r.length as u64;
                        wire::simple_reply(&mut c.out, wire::EPERM, r.cookie);
                        stats.counters.add(Counter::NbdErrors, 1);
                    }
                    wire::CMD_DISC => return Some(true),
                    wire::CMD_FLUSH => wire::simple_reply(&mut c.out, 0, r.cookie),
                    4 | 6 => wire::simple_reply(&mut c.out, wire::EPERM, r.cookie), // TRIM, WRITE_ZEROES
                    _ => wire::simple_reply(&mut c.out, wire::EINVAL, r.cookie),
                }
                c.total = c.out.len() as u64 + c.body.as_ref().map_or(0, |b| b.2);
            }
        }
    }
}

/// Handshake options; returns true when the connection must end after the reply.
fn option(c: &mut Conn, opt: u32, payload: &[u8], snap: &crate::config::Snapshot) -> bool {
    let find = |name: &[u8]| -> Option<Arc<Vdisk>> {
        if name.is_empty() {
            snap.default_vdisk().cloned()
        } else {
            std::str::from_utf8(name).ok().and_then(|n| snap.vdisk(n).cloned())
        }
    };
    let tflags = wire::TFLAG_HAS_FLAGS | wire::TFLAG_READ_ONLY | wire::TFLAG_SEND_FLUSH | wire::TFLAG_CAN_MULTI_CONN;
    match opt {
        wire::OPT_EXPORT_NAME => {
            let Some(vd) = find(payload) else { return true }; // the protocol's only answer
            c.out.extend_from_slice(&vd.chain.virtual_size().to_be_bytes());
            c.out.extend_from_slice(&tflags.to_be_bytes());
            if !c.no_zeroes {
                c.out.extend_from_slice(&[0u8; 124]);
            }
            c.export = Some(vd);
            c.phase = Phase::Transmission;
        }
        wire::OPT_ABORT => {
            wire::option_reply(&mut c.out, opt, wire::REP_ACK, &[]);
            return true;
        }
        wire::OPT_LIST => {
            if !payload.is_empty() {
                wire::option_reply(&mut c.out, opt, wire::REP_ERR_INVALID, &[]);
            } else {
                for v in &snap.vdisks {
                    let mut d = (v.name.len() as u32).to_be_bytes().to_vec();
                    d.extend_from_slice(v.name.as_bytes());
                    wire::option_reply(&mut c.out, opt, wire::REP_SERVER, &d);
                }
                wire::option_reply(&mut c.out, opt, wire::REP_ACK, &[]);
            }
        }
        wire::OPT_INFO | wire::OPT_GO => {
            let Some((name, reqs)) = wire::info_request(payload) else {
                wire::option_reply(&mut c.out, opt, wire::REP_ERR_INVALID, &[]);
                return false;
            };
            let Some(vd) = find(name) else {
                wire::option_reply(&mut c.out, opt, wire::REP_ERR_UNKNOWN, b"no such export");
                return false;
            };
            let mut d = wire::INFO_EXPORT.to_be_bytes().to_vec();
            d.extend_from_slice(&vd.chain.virtual_size().to_be_bytes());
            d.extend_from_slice(&tflags.to_be_bytes());
            wire::option_reply(&mut c.out, opt, wire::REP_INFO, &d);
            if reqs.contains(&wire::INFO_BLOCK_SIZE) {
                let mut d = wire::INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                d.extend_from_slice(&1u32.to_be_bytes());
                d.extend_from_slice(&4096u32.to_be_bytes());
                d.extend_from_slice(&snap.config.nbd.request_bytes_max.to_be_bytes());
                wire::option_reply(&mut c.out, opt, wire::REP_INFO, &d);
            }
            wire::option_reply(&mut c.out, opt, wire::REP_ACK, &[]);
            if opt == wire::OPT_GO {
                c.export = Some(vd);
                c.phase = Phase::Transmission;
            }
        }
        _ => wire::option_reply(&mut c.out, opt, wire::REP_ERR_UNSUP, &[]),
    }
    false
}

fn submit_send(c: &mut Conn, id: u32, ring: &mut IoUring) {
    let Some(fd) = c.fd.as_ref().map(|f| f.as_raw_fd()) else { return };
    c.iov.clear();
    let head = c.out.len() as u64;
    if c.sent < head {
        let h = &c.out[c.sent as usize..];
        c.iov.push(libc::iovec { iov_base: h.as_ptr() as *mut _, iov_len: h.len() });
    }
    if let Some((vd, start, len)) = &c.body {
        let off = c.sent.saturating_sub(head);
        let want = (len - off).min(4 << 20);
        if want > 0 {
            push_chain(&mut c.iov, &vd.chain, start + off, want);
        }
    }
    c.msg.msg_iov = c.iov.as_mut_ptr();
    c.msg.msg_iovlen = c.iov.len() as _;
    let e = opcode::SendMsg::new(types::Fd(fd), &c.msg).flags(libc::MSG_NOSIGNAL as u32).build().user_data(ud(K_SEND, id, c.generation, 0));
    push(ring, &e);
    c.sending = true;
}
