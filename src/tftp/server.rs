//! RRQ admission: every decision on a packet that arrives at the listening port, from the bytes
//! to "start this transfer with these parameters" or a refusal (TFTP error code, message,
//! counter) or a silent drop. Sans-IO: the engine supplies the shared places (the per-source
//! rate, the session limits) through [`Places`] and the file through `bootfiles`, then applies
//! the answer: it sends the ERROR, counts, and gives an admission place back when asked to.
//!
//! Order (each step only when the one before passed): a request at all; draining; rate per
//! source; read-only; session limits (total, per source; a full table first evicts the oldest
//! transfer its client never acknowledged); the file; the options; plain RRQs by subnet.

use super::transfer::{self, Limits, Negotiated};
use super::wire::{self, Packet, Request};
use crate::bootfiles::Refused;
use crate::config::Tftp;
use crate::metrics::Counter;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// An answer with a TFTP ERROR packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub message: &'static str,
    pub counter: Counter,
}

/// Why a packet is dropped without an answer (answering would make the server a reflector, or
/// the server is going away).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Not a request (DATA/ACK/ERROR/OACK, an unknown opcode, too short, truncated).
    NotARequest,
    /// The worker is draining: no new transfer.
    Draining,
    /// Over tftp.requests_per_ip_per_s / requests_per_ip_burst.
    Rate,
    /// An option-less RRQ from outside tftp.plain_rrq_subnets.
    Plain,
}

impl Dropped {
    /// The counter a drop adds to (none for draining: the server is going away).
    pub fn counter(self) -> Option<Counter> {
        match self {
            Dropped::NotARequest => Some(Counter::TftpMalformed),
            Dropped::Draining => None,
            Dropped::Rate => Some(Counter::TftpDroppedRate),
            Dropped::Plain => Some(Counter::TftpDroppedPlain),
        }
    }
}

/// A request not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Drop(Dropped),
    Refuse(Refusal),
}

/// Session places shared by every worker, and this worker's way to make room.
pub trait Places {
    /// Takes one token of `ip`'s request rate at `now`, or says no.
    fn rate(&mut self, ip: IpAddr, now: Instant, per_s: u32, burst: u32) -> bool;
    /// Takes a session place for `ip` under both limits, or says no.
    fn admit(&mut self, ip: IpAddr, total_max: usize, per_ip_max: usize) -> bool;
    /// Places taken now, all sources.
    fn total(&self) -> usize;
    /// Ends this worker's oldest transfer whose client has not acknowledged anything (a
    /// spoofed request never does), giving its place back; false when there is none.
    fn evict_unconfirmed(&mut self) -> bool;
}

pub const BUSY: Refusal =
    Refusal { code: wire::ERR_NOT_DEFINED, message: "server busy: too many transfers, retry later", counter: Counter::TftpRefusedLimit };
pub const NO_PORT: Refusal =
    Refusal { code: wire::ERR_NOT_DEFINED, message: "server cannot open a transfer port", counter: Counter::TftpRefusedLimit };
const READ_ONLY: Refusal =
    Refusal { code: wire::ERR_ACCESS, message: "access violation: this server is read-only", counter: Counter::TftpRefusedWrite };

/// The request in a packet at the listening port.
pub fn request(payload: &[u8], truncated: bool) -> Result<Request<'_>, Answer> {
    if truncated {
        return Err(Answer::Drop(Dropped::NotARequest));
    }
    match wire::parse(payload) {
        Ok(Packet::Request(r)) => Ok(r),
        // DATA/ACK/ERROR/OACK at the listening port, garbage opcodes: answering every stray
        // packet would make us a reflector.
        Ok(_) | Err(wire::Malformed::UnknownOpcode(_)) | Err(wire::Malformed::TooShort) => Err(Answer::Drop(Dropped::NotARequest)),
        Err(m) => Err(Answer::Refuse(Refusal { code: wire::ERR_ILLEGAL, message: m.message(), counter: Counter::TftpMalformed })),
    }
}

/// Whether `req` from `ip` gets a session place. `Ok` means a place was taken: every later
/// refusal of this request must give it back.
pub fn admit(req: &Request<'_>, ip: IpAddr, cfg: &Tftp, draining: bool, now: Instant, places: &mut impl Places) -> Result<(), Answer> {
    if draining {
        return Err(Answer::Drop(Dropped::Draining));
    }
    if !places.rate(ip, now, cfg.requests_per_ip_per_s, cfg.requests_per_ip_burst) {
        return Err(Answer::Drop(Dropped::Rate));
    }
    if req.write {
        return Err(Answer::Refuse(READ_ONLY));
    }
    let admitted = places.admit(ip, cfg.sessions_max, cfg.sessions_per_ip_max)
        || (places.total() >= cfg.sessions_max
            && places.evict_unconfirmed()
            && places.admit(ip, cfg.sessions_max, cfg.sessions_per_ip_max));
    if !admitted {
        return Err(Answer::Refuse(BUSY));
    }
    Ok(())
}

/// Whether a request that waited for its file's open goes on: not when the worker began to
/// drain meanwhile (no new transfer, as at the listener). On Err the caller gives its place back.
pub fn resume(draining: bool) -> Result<(), Answer> {
    if draining {
        return Err(Answer::Drop(Dropped::Draining));
    }
    Ok(())
}

/// The refusal for a file that is not served.
pub fn file_refusal(r: Refused) -> Refusal {
    match r {
        Refused::NotFound => Refusal { code: wire::ERR_NOT_FOUND, message: "file not found", counter: Counter::TftpRefusedNotFound },
        Refused::Unreadable => Refusal { code: wire::ERR_NOT_FOUND, message: "file not readable", counter: Counter::TftpRefusedNotFound },
        Refused::Damaged => Refusal {
            code: wire::ERR_NOT_DEFINED,
            message: "file changed on the server (copied over or truncated); retry",
            counter: Counter::TftpRefusedNotFound,
        },
        Refused::BadName | Refused::Traversal | Refused::Outside => {
            Refusal { code: wire::ERR_ACCESS, message: "access violation", counter: Counter::TftpRefusedAccess }
        }
    }
}

/// The transfer limits of a configuration.
pub fn limits(cfg: &Tftp) -> Limits {
    Limits {
        blksize_max: cfg.blksize_max,
        windowsize_max: cfg.windowsize_max,
        timeout: Duration::from_millis(cfg.timeout_ms),
        timeout_min: Duration::from_millis(cfg.timeout_min_ms),
        retries_max: cfg.retries_max,
        timeout_option_max: Duration::from_secs(cfg.timeout_option_max_s),
        handshake_retries_max: cfg.handshake_retries_max,
        stall_max: Duration::from_millis(cfg.stall_max_ms),
        lifetime_max: Duration::from_millis(cfg.transfer_lifetime_max_ms),
    }
}

/// What is known of the file when the decision is made.
#[derive(Debug, Clone, Copy)]
pub struct FileFacts {
    pub size: u64,
    pub damaged: bool,
}

/// The last decision, once the file is known: the transfer's parameters, or a refusal (the
/// caller gives the place back).
pub fn accept(
    req: &Request<'_>,
    file: Result<FileFacts, Refused>,
    ip: IpAddr,
    plain_subnets: &[(IpAddr, u8)],
    limits: &Limits,
) -> Result<Negotiated, Answer> {
    let file = file.map_err(|r| Answer::Refuse(file_refusal(r)))?;
    if file.damaged {
        return Err(Answer::Refuse(file_refusal(Refused::Damaged)));
    }
    let negotiated = transfer::negotiate(req, file.size, limits)
        .map_err(|(code, message)| Answer::Refuse(Refusal { code, message, counter: Counter::TftpRefusedOption }))?;
    // An option-less request is answered with DATA 1 at once, without a handshake: from
    // outside tftp.plain_rrq_subnets it is dropped unanswered, so nothing is reflected.
    if !negotiated.oack() && !plain_subnets.iter().any(|&n| crate::farm::place::in_subnet(ip, n)) {
        return Err(Answer::Drop(Dropped::Plain));
    }
    Ok(negotiated)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Places as the engine keeps them, in one worker: a token count per source, a total and
    /// per-source session count, and transfers that may be evicted.
    #[derive(Default)]
    struct Table {
        tokens: std::collections::HashMap<IpAddr, u32>,
        sessions: Vec<IpAddr>,
        unconfirmed: Vec<IpAddr>,
    }

    impl Places for Table {
        fn rate(&mut self, ip: IpAddr, _now: Instant, _per_s: u32, burst: u32) -> bool {
            let used = self.tokens.entry(ip).or_default();
            *used += 1;
            *used <= burst
        }
        fn admit(&mut self, ip: IpAddr, total_max: usize, per_ip_max: usize) -> bool {
            if self.sessions.len() >= total_max || self.sessions.iter().filter(|&&s| s == ip).count() >= per_ip_max {
                return false;
            }
            self.sessions.push(ip);
            true
        }
        fn total(&self) -> usize {
            self.sessions.len()
        }
        fn evict_unconfirmed(&mut self) -> bool {
            let Some(ip) = self.unconfirmed.pop() else { return false };
            let i = self.sessions.iter().position(|&s| s == ip).unwrap();
            self.sessions.remove(i);
            true
        }
    }

    fn cfg() -> Tftp {
        Tftp { sessions_max: 2, sessions_per_ip_max: 1, requests_per_ip_burst: 3, ..Tftp::default() }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));
    const C: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 3));

    fn rrq(opts: &str) -> Vec<u8> {
        let mut b = b"\x00\x01pxelinux.0\x00octet\x00".to_vec();
        for kv in opts.split_whitespace() {
            let (k, v) = kv.split_once('=').unwrap();
            b.extend_from_slice(k.as_bytes());
            b.push(0);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b
    }

    #[test]
    fn what_is_not_a_request_is_dropped_or_answered_error_4() {
        let drop = Err(Answer::Drop(Dropped::NotARequest));
        assert_eq!(request(b"\x00\x04\x00\x01", false).map(|_| ()), drop, "an ACK at the listening port");
        assert_eq!(request(b"\x00\x09junk", false).map(|_| ()), drop, "an unknown opcode");
        assert_eq!(request(b"\x00", false).map(|_| ()), drop, "too short");
        assert_eq!(request(&rrq(""), true).map(|_| ()), drop, "truncated by the receive buffer");
        let Err(Answer::Refuse(r)) = request(b"\x00\x01file\x00mail\x00", false) else { panic!("a bad mode is answered") };
        assert_eq!((r.code, r.message, r.counter), (wire::ERR_ILLEGAL, "unknown transfer mode", Counter::TftpMalformed));
        assert!(request(&rrq("blksize=1432"), false).is_ok());
    }

    #[test]
    fn draining_rate_and_write_requests() {
        let (c, now) = (cfg(), Instant::now());
        let mut p = Table::default();
        let req = rrq("");
        let r = request(&req, false).unwrap();
        assert_eq!(admit(&r, A, &c, true, now, &mut p), Err(Answer::Drop(Dropped::Draining)));
        assert_eq!(Dropped::Draining.counter(), None);
        assert_eq!(resume(true), Err(Answer::Drop(Dropped::Draining)), "a waiting request is dropped once draining");
        assert_eq!(resume(false), Ok(()));
        assert!(p.tokens.is_empty(), "a draining server takes no token");
        let wrq = b"\x00\x02x\x00octet\x00";
        let w = request(wrq, false).unwrap();
        assert_eq!(admit(&w, A, &c, false, now, &mut p), Err(Answer::Refuse(READ_ONLY)));
        assert!(p.sessions.is_empty(), "a WRQ takes no place");
        // The burst is 3 requests; the WRQ took one.
        assert_eq!(admit(&r, A, &c, false, now, &mut p), Ok(()));
        p.sessions.clear();
        assert_eq!(admit(&r, A, &c, false, now, &mut p), Ok(()));
        p.sessions.clear();
        assert_eq!(admit(&r, A, &c, false, now, &mut p), Err(Answer::Drop(Dropped::Rate)));
        assert_eq!(Dropped::Rate.counter(), Some(Counter::TftpDroppedRate));
    }

    #[test]
    fn session_limits_total_and_per_source_with_eviction() {
        let (c, now) = (cfg(), Instant::now());
        let mut p = Table::default();
        let req = rrq("");
        let r = request(&req, false).unwrap();
        assert_eq!(admit(&r, A, &c, false, now, &mut p), Ok(()));
        assert_eq!(admit(&r, A, &c, false, now, &mut p), Err(Answer::Refuse(BUSY)), "sessions_per_ip_max = 1");
        assert_eq!(admit(&r, B, &c, false, now, &mut p), Ok(()));
        assert_eq!(admit(&r, C, &c, false, now, &mut p), Err(Answer::Refuse(BUSY)), "sessions_max = 2, nothing to evict");
        p.unconfirmed.push(B);
        assert_eq!(admit(&r, C, &c, false, now, &mut p), Ok(()), "B never acknowledged: its place goes to C");
        assert_eq!(p.sessions, vec![A, C]);
        assert_eq!(BUSY.counter, Counter::TftpRefusedLimit);
    }

    #[test]
    fn file_refusals_by_kind() {
        let l = limits(&cfg());
        let req = rrq("tsize=0");
        let r = request(&req, false).unwrap();
        let refuse = |f| match accept(&r, Err(f), A, &[], &l) {
            Err(Answer::Refuse(x)) => (x.code, x.message, x.counter),
            other => panic!("{other:?}"),
        };
        assert_eq!(refuse(Refused::NotFound), (wire::ERR_NOT_FOUND, "file not found", Counter::TftpRefusedNotFound));
        assert_eq!(refuse(Refused::Unreadable), (wire::ERR_NOT_FOUND, "file not readable", Counter::TftpRefusedNotFound));
        for r in [Refused::BadName, Refused::Traversal, Refused::Outside] {
            assert_eq!(refuse(r), (wire::ERR_ACCESS, "access violation", Counter::TftpRefusedAccess), "{r:?}");
        }
        assert_eq!(refuse(Refused::Damaged).0, wire::ERR_NOT_DEFINED);
        let damaged = accept(&r, Ok(FileFacts { size: 10, damaged: true }), A, &[], &l);
        assert!(matches!(damaged, Err(Answer::Refuse(x)) if x.message.contains("changed")), "{damaged:?}");
    }

    #[test]
    fn options_and_plain_requests() {
        let l = limits(&cfg());
        let ok = FileFacts { size: 1 << 20, damaged: false };
        let bad = rrq("blksize=4");
        let r = request(&bad, false).unwrap();
        let Err(Answer::Refuse(x)) = accept(&r, Ok(ok), A, &[], &l) else { panic!() };
        assert_eq!((x.code, x.counter), (wire::ERR_OPTION, Counter::TftpRefusedOption));
        assert!(x.message.contains("blksize"), "{}", x.message);
        let with = rrq("blksize=1432 tsize=0");
        let n = accept(&request(&with, false).unwrap(), Ok(ok), A, &[], &l).unwrap();
        assert!(n.oack() && n.blksize == 1432 && n.tsize == 1 << 20, "options are served from anywhere");
        // Option-less: DATA 1 at once, so only inside tftp.plain_rrq_subnets.
        let plain = rrq("");
        let p = request(&plain, false).unwrap();
        assert_eq!(accept(&p, Ok(ok), A, &[], &l).map(|_| ()), Err(Answer::Drop(Dropped::Plain)));
        assert_eq!(Dropped::Plain.counter(), Some(Counter::TftpDroppedPlain));
        let n = accept(&p, Ok(ok), A, &[(IpAddr::from([10, 0, 0, 0]), 8)], &l).unwrap();
        assert!(!n.oack() && n.blksize == 512);
    }
}
