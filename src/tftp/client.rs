//! A TFTP read client as a sans-IO state machine (bootstorm's bootstrap phase, tests): fed
//! packets and time, it says what to send and when to be woken. It follows RFC 7440 as a
//! receiver: ACK every `windowsize` in-order blocks and the last block, ACK the last in-order
//! block once when a gap shows, re-send the ACK (or the RRQ) on timeout.

use super::wire::{self, Packet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Request {
    pub file: String,
    pub blksize: Option<u16>,
    pub windowsize: Option<u16>,
    pub tsize: bool,
    pub timeout: Duration,
    pub retries_max: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Running,
    Done,
    /// The server answered with ERROR.
    ServerError(u16),
    TimedOut,
    /// A block's bytes differ from what was expected, or the size is wrong.
    Corrupted,
}

/// What to send now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Send {
    /// The request, to the server's well-known port.
    Rrq(Vec<u8>),
    /// An ACK, to the transfer's port.
    Ack(u16, SocketAddr),
}

pub struct Client {
    req: Request,
    rrq: Vec<u8>,
    server_tid: Option<SocketAddr>,
    blksize: u64,
    window: u64,
    /// Next block expected (absolute, 1-based).
    expect: u64,
    in_window: u64,
    pub bytes: u64,
    pub tsize: Option<u64>,
    outcome: Outcome,
    deadline: Instant,
    retries: u32,
    /// ACK numbers already answered for a gap, so one gap costs one ACK.
    gap_acked_for: u64,
    pending: Option<Send>,
    pub resends: u64,
}

impl Client {
    pub fn new(req: Request, now: Instant) -> Client {
        let mut opts: Vec<(&str, String)> = Vec::new();
        if let Some(b) = req.blksize {
            opts.push(("blksize", b.to_string()));
        }
        if req.tsize {
            opts.push(("tsize", "0".into()));
        }
        if let Some(w) = req.windowsize {
            opts.push(("windowsize", w.to_string()));
        }
        let mut rrq = Vec::new();
        wire::encode_rrq(&mut rrq, &req.file, "octet", &opts);
        let deadline = now + req.timeout;
        Client {
            rrq: rrq.clone(),
            server_tid: None,
            blksize: 512,
            window: 1,
            expect: 1,
            in_window: 0,
            bytes: 0,
            tsize: None,
            outcome: Outcome::Running,
            deadline,
            retries: 0,
            gap_acked_for: u64::MAX,
            pending: Some(Send::Rrq(rrq)),
            resends: 0,
            req,
        }
    }

    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    pub fn poll_send(&mut self) -> Option<Send> {
        self.pending.take()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.outcome == Outcome::Running).then_some(self.deadline)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.outcome != Outcome::Running || now < self.deadline {
            return;
        }
        self.retries += 1;
        if self.retries > self.req.retries_max {
            self.outcome = Outcome::TimedOut;
            return;
        }
        self.resends += 1;
        self.deadline = now + self.req.timeout;
        self.pending = Some(match self.server_tid {
            None => Send::Rrq(self.rrq.clone()),
            Some(tid) => Send::Ack(((self.expect - 1) & 0xFFFF) as u16, tid),
        });
    }

    /// Handles one datagram from `from`. `verify(offset, payload)` checks received bytes.
    pub fn handle(&mut self, from: SocketAddr, packet: &[u8], now: Instant, verify: &mut dyn FnMut(u64, &[u8]) -> bool) {
        if self.outcome != Outcome::Running {
            return;
        }
        if let Some(tid) = self.server_tid {
            if tid != from {
                return; // RFC 1350: another TID; a real client would answer ERROR 5
            }
        }
        match wire::parse(packet) {
            Ok(Packet::Oack { options }) if self.server_tid.is_none() => {
                for (k, v) in wire::oack_options(options) {
                    let n: Option<u64> = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
                    match (k.to_ascii_lowercase().as_slice(), n) {
                        (b"blksize", Some(b)) => self.blksize = b,
                        (b"windowsize", Some(w)) => self.window = w,
                        (b"tsize", Some(t)) => self.tsize = Some(t),
                        _ => {}
                    }
                }
                self.server_tid = Some(from);
                self.progress(now);
                self.pending = Some(Send::Ack(0, from));
            }
            Ok(Packet::Data { block, payload }) => {
                if self.server_tid.is_none() {
                    // No OACK: the server ignored our options (RFC 2347) and starts with DATA 1.
                    // Anything else is a stray (an old transfer's packet to a reused port).
                    if block != 1 {
                        return;
                    }
                    self.server_tid = Some(from);
                }
                let want = (self.expect & 0xFFFF) as u16;
                if block != want {
                    // A gap or a duplicate: ACK the last in-order block, once per position.
                    if self.gap_acked_for != self.expect {
                        self.gap_acked_for = self.expect;
                        self.in_window = 0;
                        self.pending = Some(Send::Ack(((self.expect - 1) & 0xFFFF) as u16, from));
                    }
                    return;
                }
                if payload.len() as u64 > self.blksize || !verify(self.bytes, payload) {
                    self.outcome = Outcome::Corrupted;
                    return;
                }
                self.bytes += payload.len() as u64;
                self.expect += 1;
                self.in_window += 1;
                self.progress(now);
                let last = (payload.len() as u64) < self.blksize;
                if last {
                    if self.tsize.is_some_and(|t| t != self.bytes) {
                        self.outcome = Outcome::Corrupted;
                        return;
                    }
                    self.outcome = Outcome::Done;
                }
                if last || self.in_window >= self.window {
                    self.in_window = 0;
                    self.pending = Some(Send::Ack(block, from));
                }
            }
            Ok(Packet::Error { code, .. }) => self.outcome = Outcome::ServerError(code),
            _ => {}
        }
    }

    fn progress(&mut self, now: Instant) {
        self.retries = 0;
        self.deadline = now + self.req.timeout;
    }
}

#[cfg(test)]
mod tests {
    use super::super::transfer::{negotiate, Limits, Transfer, Transmit};
    use super::*;

    /// Our client against our server state machine, lossless: bytes and ACK pattern.
    #[test]
    fn client_and_transfer_agree() {
        let t0 = Instant::now();
        let file: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let tid: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let req = Request {
            file: "f".into(),
            blksize: Some(1432),
            windowsize: Some(8),
            tsize: true,
            timeout: Duration::from_secs(1),
            retries_max: 3,
        };
        let mut c = Client::new(req, t0);
        let Some(Send::Rrq(rrq)) = c.poll_send() else { panic!() };
        let Ok(Packet::Request(r)) = wire::parse(&rrq) else { panic!() };
        let limits = Limits {
            blksize_max: 1468,
            windowsize_max: 64,
            timeout: Duration::from_secs(1),
            timeout_min: Duration::from_millis(50),
            retries_max: 3,
            ..Limits::DEFAULT
        };
        let n = negotiate(&r, file.len() as u64, &limits).unwrap();
        let mut s = Transfer::new(n, file.len() as u64, &limits, t0);
        let mut acks = 0;
        let mut verify = |off: u64, p: &[u8]| p == &file[off as usize..off as usize + p.len()];
        while c.outcome() == Outcome::Running {
            while let Some(tx) = s.poll_transmit(t0) {
                let pkt = match tx {
                    Transmit::Oack => {
                        let mut b = [0u8; 128];
                        let l = n.encode_oack(&mut b);
                        b[..l].to_vec()
                    }
                    Transmit::Data { block, offset, len } => {
                        let mut v = wire::data_header(block).to_vec();
                        v.extend_from_slice(&file[offset as usize..offset as usize + len]);
                        v
                    }
                };
                c.handle(tid, &pkt, t0, &mut verify);
                if let Some(Send::Ack(b, to)) = c.poll_send() {
                    assert_eq!(to, tid);
                    acks += 1;
                    s.handle_ack(b, t0);
                }
            }
        }
        assert_eq!(c.outcome(), Outcome::Done);
        assert_eq!(c.bytes, file.len() as u64);
        assert_eq!(c.tsize, Some(file.len() as u64));
        // ACK 0 plus one per window of 8 (70 blocks -> 9 windows).
        assert_eq!(acks, 1 + 9);
    }

    #[test]
    fn wrong_bytes_are_corruption() {
        let t0 = Instant::now();
        let tid: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let req =
            Request { file: "f".into(), blksize: None, windowsize: None, tsize: false, timeout: Duration::from_secs(1), retries_max: 3 };
        let mut c = Client::new(req, t0);
        c.poll_send();
        let mut pkt = wire::data_header(1).to_vec();
        pkt.extend_from_slice(b"abc");
        c.handle(tid, &pkt, t0, &mut |_, p| p == b"abd");
        assert_eq!(c.outcome(), Outcome::Corrupted);
    }

    #[test]
    fn only_data_1_can_start_a_transfer_without_oack() {
        let t0 = Instant::now();
        let stray: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let real: SocketAddr = "127.0.0.1:4002".parse().unwrap();
        let req =
            Request { file: "f".into(), blksize: None, windowsize: None, tsize: false, timeout: Duration::from_secs(1), retries_max: 3 };
        let mut c = Client::new(req, t0);
        c.poll_send();
        let mut old = wire::data_header(733).to_vec();
        old.extend_from_slice(b"zz");
        c.handle(stray, &old, t0, &mut |_, _| true);
        assert_eq!(c.poll_send(), None, "a stray DATA is neither the TID nor acknowledged");
        let mut d1 = wire::data_header(1).to_vec();
        d1.extend_from_slice(b"ok");
        c.handle(real, &d1, t0, &mut |_, p| p == b"ok");
        assert_eq!(c.poll_send(), Some(Send::Ack(1, real)));
        assert_eq!(c.outcome(), Outcome::Done);
    }

    #[test]
    fn resends_rrq_then_acks_then_gives_up() {
        let t0 = Instant::now();
        let req = Request {
            file: "f".into(),
            blksize: None,
            windowsize: None,
            tsize: false,
            timeout: Duration::from_millis(100),
            retries_max: 2,
        };
        let mut c = Client::new(req, t0);
        assert!(matches!(c.poll_send(), Some(Send::Rrq(_))));
        c.handle_timeout(t0 + Duration::from_millis(100));
        assert!(matches!(c.poll_send(), Some(Send::Rrq(_))));
        c.handle_timeout(t0 + Duration::from_millis(200));
        c.handle_timeout(t0 + Duration::from_millis(300));
        assert_eq!(c.outcome(), Outcome::TimedOut);
    }
}
