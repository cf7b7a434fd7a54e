//! One read transfer as a state machine with no I/O and no clock: fed ACKs and time, it answers
//! with what to send next and when it wants to be woken. Blocks are numbered 1.. internally as
//! u64 (the wire carries the low 16 bits, so rollover past 65535 to 0 needs no special case).
//! RFC 7440 windows with go-back-N; windowsize 1 is RFC 1350 lockstep. A duplicate ACK never
//! triggers a retransmission in lockstep, and at most one rewind per window base otherwise, so
//! duplicated packets cannot multiply traffic (Sorcerer's Apprentice).

use super::wire::{Mode, Request, ERR_OPTION};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub blksize_max: u16,
    pub windowsize_max: u16,
    /// Retransmission timeout until a round-trip time has been measured.
    pub timeout: Duration,
    /// Floor of the adaptive retransmission timeout.
    pub timeout_min: Duration,
    pub retries_max: u32,
    /// A client's RFC 2349 timeout above this is ignored (left out of the OACK; the adaptive
    /// timer runs instead), so a client cannot make a session wait minutes per retry.
    pub timeout_option_max: Duration,
    /// Retransmissions before the client's first ACK (the OACK, or DATA 1 of an option-less
    /// transfer), at the server's own `timeout`: a spoofed request is reaped in seconds and
    /// reflects at most this many copies plus one.
    pub handshake_retries_max: u32,
    /// Longest a block (or the OACK) may stay unacknowledged, retransmissions included.
    pub stall_max: Duration,
    /// Longest a whole transfer may run.
    pub lifetime_max: Duration,
}

impl Limits {
    /// The defaults of `[tftp]` (tests, tools).
    pub const DEFAULT: Limits = Limits {
        blksize_max: 1468,
        windowsize_max: 64,
        timeout: Duration::from_millis(1000),
        timeout_min: Duration::from_millis(50),
        retries_max: 6,
        timeout_option_max: Duration::from_secs(5),
        handshake_retries_max: 2,
        stall_max: Duration::from_secs(30),
        lifetime_max: Duration::from_secs(1800),
    };
}

/// The options agreed for a transfer, and which of them go into the OACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    pub windowsize: u16,
    pub timeout: Duration,
    pub tsize: u64,
    pub echo_blksize: bool,
    pub echo_windowsize: bool,
    pub echo_timeout: bool,
    pub echo_tsize: bool,
}

impl Negotiated {
    pub fn oack(&self) -> bool {
        self.echo_blksize || self.echo_windowsize || self.echo_timeout || self.echo_tsize
    }

    /// Encodes the OACK into `out` (at least 128 bytes); returns its length.
    pub fn encode_oack(&self, out: &mut [u8]) -> usize {
        use std::io::Write;
        let mut c = std::io::Cursor::new(out);
        let _ = c.write_all(&super::wire::OP_OACK.to_be_bytes());
        let mut opt = |k: &str, v: u64| {
            let _ = write!(c, "{k}\0{v}\0");
        };
        if self.echo_blksize {
            opt("blksize", self.blksize as u64);
        }
        if self.echo_tsize {
            opt("tsize", self.tsize);
        }
        if self.echo_timeout {
            opt("timeout", self.timeout.as_secs());
        }
        if self.echo_windowsize {
            opt("windowsize", self.windowsize as u64);
        }
        c.position() as usize
    }
}

fn number(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 12 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// RFC 2347/2348/2349/7440 negotiation. Unknown options are ignored (left out of the OACK);
/// values the RFCs forbid get ERROR 8; values above our limits are lowered to them.
pub fn negotiate(req: &Request<'_>, size: u64, limits: &Limits) -> Result<Negotiated, (u16, &'static str)> {
    let mut n = Negotiated {
        blksize: 512,
        windowsize: 1,
        timeout: limits.timeout,
        tsize: size,
        echo_blksize: false,
        echo_windowsize: false,
        echo_timeout: false,
        echo_tsize: false,
    };
    for &(k, v) in req.options() {
        if k.eq_ignore_ascii_case(b"blksize") {
            match number(v) {
                Some(b) if b >= 8 => {
                    n.blksize = b.min(65464).min(limits.blksize_max as u64) as u16;
                    n.echo_blksize = true;
                }
                _ => return Err((ERR_OPTION, "blksize must be a number from 8 to 65464")),
            }
        } else if k.eq_ignore_ascii_case(b"windowsize") {
            match number(v) {
                Some(w) if (1..=65535).contains(&w) => {
                    n.windowsize = (w as u16).min(limits.windowsize_max);
                    n.echo_windowsize = true;
                }
                _ => return Err((ERR_OPTION, "windowsize must be a number from 1 to 65535")),
            }
        } else if k.eq_ignore_ascii_case(b"timeout") {
            // RFC 2349: 1..255 seconds; anything else is ignored rather than refused, and so
            // is a value above our cap (the RFC lets a server decline an option).
            if let Some(t) = number(v).filter(|t| (1..=255).contains(t) && Duration::from_secs(*t) <= limits.timeout_option_max) {
                n.timeout = Duration::from_secs(t);
                n.echo_timeout = true;
            }
        } else if k.eq_ignore_ascii_case(b"tsize") {
            // In a read request the client sends 0 and we answer with the size. For an
            // empty file tsize is left out (RFC 2349 allows it): curl (7.x, 8.x) refuses an
            // OACK saying "tsize 0" and could not fetch the file at all. Netascii is
            // converted block by block as it is sent, so its size is not known up front:
            // tsize is left out rather than announced wrong.
            if number(v).is_some() && size > 0 && req.mode == Mode::Octet {
                n.echo_tsize = true;
            }
        }
    }
    Ok(n)
}

/// What the transfer wants sent now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transmit {
    Oack,
    /// DATA with wire block number `block`: `len` bytes of the file at `offset`.
    Data {
        block: u16,
        offset: u64,
        len: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Done,
    /// No acknowledgement after the retry limit or `stall_max`.
    TimedOut,
    /// Still running at `lifetime_max`.
    TooLong,
    /// The source could not give the next block (the file changed under the transfer).
    SourceFailed,
    /// Ended before the client's first ACK to make room for a new request (the session
    /// table was full; see [`Transfer::evict`]).
    Evicted,
    /// The client sent an ERROR packet with this code.
    ClientError(u16),
}

#[derive(Debug)]
pub struct Transfer {
    size: u64,
    blksize: u64,
    window: u64,
    /// RTO before any RTT sample; also the base of the backoff cap (8x).
    rto_initial: Duration,
    rto_min: Duration,
    /// Adaptive (RFC 6298 estimator) unless the client fixed the timeout (RFC 2349).
    adaptive: bool,
    srtt: Option<Duration>,
    rttvar: Duration,
    /// A block sent once, and when: its ACK gives an RTT sample (Karn: never a resent one).
    sample: Option<(u64, Instant)>,
    rto: Duration,
    retries: u32,
    retries_max: u32,
    /// The client acknowledged something: until then it may be a spoofed address, and the
    /// handshake limits apply (server timeout, `handshake_retries_max`).
    confirmed: bool,
    handshake_rto: Duration,
    handshake_retries_max: u32,
    stall_max: Duration,
    /// Since when the oldest outstanding packet waits for its ACK.
    unacked_since: Instant,
    ends_at: Instant,
    oack_unsent: bool,
    waiting_ack0: bool,
    /// First unacknowledged block.
    base: u64,
    /// Next block to send.
    next: u64,
    /// Number of the last block (size / blksize + 1: the last one is shorter, maybe empty).
    last: u64,
    highest_sent: u64,
    /// After a go-back, blocks below this were already sent again: an ACK pointing into them is
    /// an echo of duplicates and old reorderings, not a new loss, and must not rewind again.
    rewind_horizon: u64,
    progress_at: Instant,
    status: Status,
    pub retransmits: u64,
    pub negotiated: Negotiated,
}

impl Transfer {
    /// A transfer of a source whose size is not known before its end (netascii): the engine
    /// says how long each block came out with [`Transfer::produced`].
    pub fn new_stream(n: Negotiated, limits: &Limits, now: Instant) -> Transfer {
        Transfer::new(n, u64::MAX, limits, now)
    }

    pub fn new(n: Negotiated, size: u64, limits: &Limits, now: Instant) -> Transfer {
        let blksize = n.blksize as u64;
        Transfer {
            size,
            blksize,
            window: n.windowsize as u64,
            rto_initial: n.timeout,
            rto_min: limits.timeout_min.min(n.timeout),
            adaptive: !n.echo_timeout,
            srtt: None,
            rttvar: Duration::ZERO,
            sample: None,
            rto: limits.timeout.min(n.timeout),
            retries: 0,
            retries_max: limits.retries_max,
            confirmed: false,
            handshake_rto: limits.timeout.min(n.timeout),
            handshake_retries_max: limits.handshake_retries_max,
            stall_max: limits.stall_max,
            unacked_since: now,
            ends_at: now + limits.lifetime_max,
            oack_unsent: n.oack(),
            waiting_ack0: n.oack(),
            base: 1,
            next: 1,
            last: size / blksize + 1,
            highest_sent: 0,
            rewind_horizon: 0,
            progress_at: now,
            status: Status::Active,
            retransmits: 0,
            negotiated: n,
        }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    /// Whether the client has acknowledged anything yet (proved it is at its address).
    pub fn confirmed(&self) -> bool {
        self.confirmed
    }

    /// First block not yet acknowledged (1-based, not wrapped).
    pub fn base(&self) -> u64 {
        self.base
    }

    /// For [`Transfer::new_stream`]: block `block` (1-based) came out `len` bytes long; a
    /// short one is the last, which fixes the size.
    pub fn produced(&mut self, block: u64, len: usize) {
        if (len as u64) < self.blksize && block < self.last {
            self.last = block;
            self.size = (block - 1) * self.blksize + len as u64;
            self.next = self.next.min(block + 1);
        }
    }

    /// Ends a transfer whose client never acknowledged anything, to give its place to a new
    /// request: spoofed requests then cannot keep a full table from legitimate clients.
    pub fn evict(&mut self) {
        if self.status == Status::Active && !self.confirmed {
            self.status = Status::Evicted;
        }
    }

    /// The source failed (see [`Status::SourceFailed`]).
    pub fn source_failed(&mut self) {
        if self.status == Status::Active {
            self.status = Status::SourceFailed;
        }
    }

    /// Bytes the client has acknowledged.
    pub fn acked_bytes(&self) -> u64 {
        ((self.base - 1) * self.blksize).min(self.size)
    }

    fn outstanding(&self) -> bool {
        self.status == Status::Active && (self.waiting_ack0 || self.next > self.base)
    }

    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if self.status != Status::Active {
            return None;
        }
        if self.oack_unsent {
            self.oack_unsent = false;
            self.progress_at = now;
            return Some(Transmit::Oack);
        }
        if self.waiting_ack0 || self.next > self.last || self.next >= self.base + self.window {
            return None;
        }
        let b = self.next;
        if self.next == self.base {
            self.progress_at = now; // the timer runs from the first block of a window
        }
        self.next += 1;
        if b <= self.highest_sent {
            self.retransmits += 1;
            self.sample = None;
        } else if self.sample.is_none() {
            self.sample = Some((b, now));
        }
        self.highest_sent = self.highest_sent.max(b);
        let offset = (b - 1) * self.blksize;
        Some(Transmit::Data { block: b as u16, offset, len: self.blksize.min(self.size - offset) as usize })
    }

    pub fn handle_ack(&mut self, block: u16, now: Instant) {
        if self.status != Status::Active {
            return;
        }
        if self.waiting_ack0 {
            if block == 0 && !self.oack_unsent {
                self.waiting_ack0 = false;
                self.confirmed = true;
                self.acknowledged(now);
            }
            return;
        }
        // The only blocks that can be acknowledged lie in [base-1, next-1]: map the wire
        // number into that range (at most one match, since a window is below 65536).
        let lo = self.base - 1;
        let k = lo + block.wrapping_sub(lo as u16) as u64;
        if k + 1 > self.next {
            return; // an ACK for a block we have not sent: stale from before a wrap, or bogus
        }
        if k >= self.base {
            self.base = k + 1;
            self.confirmed = true;
            if let Some((b, sent)) = self.sample.filter(|(b, _)| k >= *b) {
                let _ = b;
                self.sample = None;
                self.rtt_sample(now.saturating_duration_since(sent));
            }
            self.acknowledged(now);
            if self.base > self.last {
                self.status = Status::Done;
                return;
            }
        } else if self.window == 1 {
            return; // lockstep: a duplicate ACK never causes a resend
        }
        // An ACK short of what was sent (or a repeated one while a window is out) means the
        // client misses block k+1: go back to it (RFC 7440 §4), once per loss.
        if k + 1 < self.next && k + 1 >= self.rewind_horizon {
            self.rewind_horizon = self.next;
            self.next = k + 1;
        }
    }

    fn acknowledged(&mut self, now: Instant) {
        self.retries = 0;
        self.rto = self.base_rto();
        self.progress_at = now;
        self.unacked_since = now;
    }

    /// RFC 6298 §2: SRTT and RTTVAR from each sample.
    fn rtt_sample(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                self.rttvar = (self.rttvar * 3 + srtt.abs_diff(r)) / 4;
                self.srtt = Some((srtt * 7 + r) / 8);
            }
        }
    }

    /// The timeout before any backoff: SRTT + 4 RTTVAR within [rto_min, 8 x initial], or the
    /// configured/requested timeout when not adaptive or not measured yet.
    pub fn base_rto(&self) -> Duration {
        match (self.adaptive, self.srtt) {
            (true, Some(srtt)) => (srtt + (self.rttvar * 4).max(Duration::from_millis(1))).clamp(self.rto_min, self.rto_initial * 8),
            _ => self.rto_initial,
        }
    }

    pub fn handle_error(&mut self, code: u16) {
        if self.status == Status::Active {
            self.status = Status::ClientError(code);
        }
    }

    /// The next retransmission, the stall limit or the end of the lifetime, whichever is first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.status != Status::Active {
            return None;
        }
        let mut t = self.ends_at;
        if self.outstanding() {
            t = t.min(self.progress_at + self.rto).min(self.unacked_since + self.stall_max);
        }
        Some(t)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self.poll_timeout() {
            Some(t) if t <= now => {}
            _ => return,
        }
        if now >= self.ends_at {
            self.status = Status::TooLong;
            return;
        }
        if !self.outstanding() {
            return;
        }
        if now >= self.unacked_since + self.stall_max {
            self.status = Status::TimedOut;
            return;
        }
        self.retries += 1;
        if self.retries > if self.confirmed { self.retries_max } else { self.handshake_retries_max } {
            self.status = Status::TimedOut;
            return;
        }
        // Exponential backoff, capped: a storm's congestion clears instead of doubling.
        let cap = if self.confirmed { self.rto_initial } else { self.handshake_rto } * 8;
        self.rto = (self.rto * 2).min(cap);
        self.progress_at = now;
        self.sample = None;
        if self.waiting_ack0 {
            self.oack_unsent = true;
        } else {
            self.next = self.base;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::{self, Packet};
    use super::*;
    use std::collections::BinaryHeap;

    const LIMITS: Limits = Limits {
        blksize_max: 1468,
        windowsize_max: 64,
        timeout: Duration::from_millis(1000),
        timeout_min: Duration::from_millis(1000),
        retries_max: 5,
        ..Limits::DEFAULT
    };

    fn req(opts: &[u8]) -> Vec<u8> {
        let mut v = b"\x00\x01f\x00octet\x00".to_vec();
        v.extend_from_slice(opts);
        v
    }
    fn neg(opts: &[u8], size: u64) -> Result<Negotiated, (u16, &'static str)> {
        let r = req(opts);
        let Packet::Request(r) = wire::parse(&r).unwrap() else { panic!() };
        negotiate(&r, size, &LIMITS)
    }

    #[test]
    fn negotiation_clamps_refuses_and_ignores() {
        let n = neg(b"blksize\x001432\x00tsize\x000\x00", 5000).unwrap();
        assert_eq!((n.blksize, n.echo_blksize, n.echo_tsize, n.tsize), (1432, true, true, 5000));
        let mut b = [0u8; 128];
        let len = n.encode_oack(&mut b);
        assert_eq!(&b[..len], b"\x00\x06blksize\x001432\x00tsize\x005000\x00");
        assert_eq!(neg(b"BLKSIZE\x0065464\x00", 1).unwrap().blksize, 1468);
        assert_eq!(neg(b"blksize\x004\x00", 1).unwrap_err().0, ERR_OPTION);
        assert_eq!(neg(b"blksize\x00abc\x00", 1).unwrap_err().0, ERR_OPTION);
        assert_eq!(neg(b"windowsize\x000\x00", 1).unwrap_err().0, ERR_OPTION);
        assert_eq!(neg(b"windowsize\x0065536\x00", 1).unwrap_err().0, ERR_OPTION);
        assert_eq!(neg(b"windowsize\x00500\x00", 1).unwrap().windowsize, 64);
        let n = neg(b"timeout\x000\x00foo\x00bar\x00", 1).unwrap();
        assert!(!n.oack(), "invalid timeout and unknown options are ignored");
        assert_eq!(neg(b"timeout\x003\x00", 1).unwrap().timeout, Duration::from_secs(3));
        assert!(!neg(b"tsize\x000\x00", 0).unwrap().oack(), "no tsize 0 in an OACK (curl refuses it)");
    }

    #[test]
    fn no_data_before_ack0_when_options_were_negotiated() {
        let t0 = Instant::now();
        let n = neg(b"tsize\x000\x00", 10).unwrap();
        let mut t = Transfer::new(n, 10, &LIMITS, t0);
        assert_eq!(t.poll_transmit(t0), Some(Transmit::Oack));
        assert_eq!(t.poll_transmit(t0), None, "no DATA before ACK 0 (no amplification)");
        t.handle_ack(1, t0);
        assert_eq!(t.poll_transmit(t0), None);
        t.handle_ack(0, t0);
        assert_eq!(t.poll_transmit(t0), Some(Transmit::Data { block: 1, offset: 0, len: 10 }));
        t.handle_ack(1, t0);
        assert_eq!(t.status(), Status::Done);
    }

    #[test]
    fn sizes_at_block_boundaries() {
        let t0 = Instant::now();
        for (size, blocks) in [(0u64, 1u64), (1, 1), (512, 2), (513, 2), (1024, 3)] {
            let n = neg(b"", size).unwrap();
            let mut t = Transfer::new(n, size, &LIMITS, t0);
            let mut sent = Vec::new();
            while let Some(Transmit::Data { block, len, .. }) = t.poll_transmit(t0) {
                sent.push(len);
                t.handle_ack(block, t0);
            }
            assert_eq!(sent.len() as u64, blocks, "size {size}");
            assert!(*sent.last().unwrap() < 512, "the last block is short (maybe empty)");
            assert_eq!(t.status(), Status::Done);
        }
    }

    #[test]
    fn lockstep_ignores_duplicate_acks_and_retries_with_backoff() {
        let t0 = Instant::now();
        let mut t = Transfer::new(neg(b"", 2000).unwrap(), 2000, &LIMITS, t0);
        assert!(matches!(t.poll_transmit(t0), Some(Transmit::Data { block: 1, .. })));
        t.handle_ack(1, t0);
        assert!(matches!(t.poll_transmit(t0), Some(Transmit::Data { block: 2, .. })));
        t.handle_ack(1, t0); // duplicate: must not resend (Sorcerer's Apprentice)
        assert_eq!(t.poll_transmit(t0), None);
        let d1 = t.poll_timeout().unwrap();
        assert_eq!(d1 - t0, Duration::from_secs(1));
        t.handle_timeout(d1);
        assert!(matches!(t.poll_transmit(d1), Some(Transmit::Data { block: 2, .. })));
        assert_eq!(t.retransmits, 1);
        assert_eq!(t.poll_timeout().unwrap() - d1, Duration::from_secs(2), "backoff doubles");
        let mut now = d1;
        for _ in 0..LIMITS.retries_max {
            now = t.poll_timeout().unwrap();
            t.handle_timeout(now);
            let _ = t.poll_transmit(now);
        }
        assert_eq!(t.status(), Status::TimedOut);
        assert!(now - t0 < Duration::from_secs(40), "bounded give-up time");
    }

    #[test]
    fn adaptive_timeout_follows_measured_rtt_but_not_a_fixed_one() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let limits = Limits { timeout_min: ms(50), ..LIMITS };
        let r = req(b"");
        let Packet::Request(r) = wire::parse(&r).unwrap() else { panic!() };
        let n = negotiate(&r, 100_000, &limits).unwrap();
        let mut t = Transfer::new(n, 100_000, &limits, t0);
        assert_eq!(t.base_rto(), ms(1000), "no sample yet: the configured timeout");
        let mut now = t0;
        for b in 1..=20u16 {
            assert!(matches!(t.poll_transmit(now), Some(Transmit::Data { .. })));
            now += ms(2);
            t.handle_ack(b, now);
        }
        assert_eq!(t.base_rto(), ms(50), "2 ms round trips: the floor");
        assert!(matches!(t.poll_transmit(now), Some(Transmit::Data { block: 21, .. })));
        assert_eq!(t.poll_timeout().unwrap() - now, ms(50));
        // A timeout doubles it; the resent block gives no sample (Karn).
        let d = t.poll_timeout().unwrap();
        t.handle_timeout(d);
        assert!(matches!(t.poll_transmit(d), Some(Transmit::Data { block: 21, .. })));
        assert_eq!(t.poll_timeout().unwrap() - d, ms(100));
        t.handle_ack(21, d + ms(500));
        assert_eq!(t.base_rto(), ms(50), "a resent block's late ACK is no RTT sample");
        // A client that sets RFC 2349 timeout gets exactly that.
        let n = neg(b"timeout\x002\x00", 100_000).unwrap();
        let mut t = Transfer::new(n, 100_000, &limits, t0);
        let _ = t.poll_transmit(t0);
        t.handle_ack(0, t0);
        for b in 1..=5u16 {
            let _ = t.poll_transmit(t0);
            t.handle_ack(b, t0 + ms(1));
        }
        assert_eq!(t.base_rto(), Duration::from_secs(2));
    }

    #[test]
    fn window_goes_back_after_a_gap() {
        let t0 = Instant::now();
        let mut t = Transfer::new(neg(b"windowsize\x004\x00", 512 * 10).unwrap(), 5120, &LIMITS, t0);
        assert_eq!(t.poll_transmit(t0), Some(Transmit::Oack));
        t.handle_ack(0, t0);
        let blocks: Vec<u16> = std::iter::from_fn(|| match t.poll_transmit(t0) {
            Some(Transmit::Data { block, .. }) => Some(block),
            _ => None,
        })
        .collect();
        assert_eq!(blocks, [1, 2, 3, 4]);
        t.handle_ack(2, t0); // block 3 lost: resend 3, 4, then 5, 6
        let again: Vec<u16> = std::iter::from_fn(|| match t.poll_transmit(t0) {
            Some(Transmit::Data { block, .. }) => Some(block),
            _ => None,
        })
        .collect();
        assert_eq!(again, [3, 4, 5, 6]);
        t.handle_ack(2, t0); // echoes of the same loss rewind no further …
        assert_eq!(t.poll_transmit(t0), None);
        t.handle_ack(3, t0); // nor does an ACK inside the blocks already re-sent (3, 4) …
        assert_eq!(t.poll_transmit(t0), Some(Transmit::Data { block: 7, offset: 3072, len: 512 }));
        assert_eq!(t.poll_transmit(t0), None);
        t.handle_ack(5, t0); // … but a loss beyond them (block 6, sent once) rewinds again
        assert_eq!(t.poll_transmit(t0), Some(Transmit::Data { block: 6, offset: 2560, len: 512 }));
    }

    #[test]
    fn rollover_past_65535() {
        let t0 = Instant::now();
        let size = 8 * 70_000;
        let mut t = Transfer::new(neg(b"blksize\x008\x00windowsize\x0016\x00", size).unwrap(), size, &LIMITS, t0);
        assert_eq!(t.poll_transmit(t0), Some(Transmit::Oack));
        t.handle_ack(0, t0);
        let mut expect_offset = 0;
        while t.status() == Status::Active {
            let mut last = None;
            while let Some(Transmit::Data { block, offset, .. }) = t.poll_transmit(t0) {
                assert_eq!(offset, expect_offset);
                assert_eq!(block, ((offset / 8 + 1) % 65536) as u16);
                expect_offset += 8;
                last = Some(block);
            }
            t.handle_ack(last.unwrap(), t0);
        }
        assert_eq!(t.status(), Status::Done);
        assert_eq!(expect_offset, size + 8);
    }

    #[test]
    fn a_large_client_timeout_is_declined_and_handshakes_are_reaped_quickly() {
        let t0 = Instant::now();
        // timeout 255 (RFC 2349's maximum) is above timeout_option_max: left out of the OACK,
        // the adaptive timer runs instead.
        let n = neg(b"timeout\x00255\x00blksize\x00512\x00", 10_000).unwrap();
        assert!(!n.echo_timeout && n.echo_blksize);
        assert_eq!(n.timeout, LIMITS.timeout);
        let n5 = neg(b"timeout\x005\x00", 10_000).unwrap();
        assert!(n5.echo_timeout, "up to the cap the client's timeout is honoured");
        // Waiting for ACK 0 (a spoofed RRQ never sends it): the OACK goes out 1 +
        // handshake_retries_max times at the server's timeout, then the session ends.
        for n in [n, n5] {
            let mut t = Transfer::new(n, 10_000, &LIMITS, t0);
            let mut oacks = 0;
            let mut now = t0;
            while t.status() == Status::Active {
                while let Some(tx) = t.poll_transmit(now) {
                    assert_eq!(tx, Transmit::Oack);
                    oacks += 1;
                }
                now = t.poll_timeout().unwrap();
                t.handle_timeout(now);
            }
            assert_eq!((t.status(), oacks, t.confirmed()), (Status::TimedOut, 1 + LIMITS.handshake_retries_max, false));
            assert!(now - t0 <= Duration::from_secs(7), "reaped after 1 + 2 + 4 s, not {:?}", now - t0);
        }
        // Option-less: DATA 1 is sent 1 + handshake_retries_max times before the first ACK.
        let mut t = Transfer::new(neg(b"", 10_000).unwrap(), 10_000, &LIMITS, t0);
        let mut data1 = 0;
        let mut now = t0;
        while t.status() == Status::Active {
            while let Some(Transmit::Data { block: 1, .. }) = t.poll_transmit(now) {
                data1 += 1;
            }
            now = t.poll_timeout().unwrap();
            t.handle_timeout(now);
        }
        assert_eq!(data1, 1 + LIMITS.handshake_retries_max);
    }

    #[test]
    fn stall_and_lifetime_caps() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // A client that set timeout 5 and then stops ACKing: given up at stall_max at most,
        // whatever retries_max says.
        let limits = Limits { retries_max: 100, stall_max: s(20), ..LIMITS };
        let r = req(b"timeout\x005\x00");
        let Packet::Request(r) = wire::parse(&r).unwrap() else { panic!() };
        let n = negotiate(&r, 100_000, &limits).unwrap();
        let mut t = Transfer::new(n, 100_000, &limits, t0);
        let _ = t.poll_transmit(t0);
        t.handle_ack(0, t0);
        let mut now = t0;
        while t.status() == Status::Active {
            while t.poll_transmit(now).is_some() {}
            now = t.poll_timeout().unwrap();
            t.handle_timeout(now);
        }
        assert_eq!(t.status(), Status::TimedOut);
        assert_eq!(now - t0, s(20), "the stall cap ends it exactly");
        // A client that ACKs just often enough never stalls, but the lifetime ends it.
        let limits = Limits { lifetime_max: s(60), ..LIMITS };
        let mut t = Transfer::new(neg(b"", 1 << 30).unwrap(), 1 << 30, &limits, t0);
        let mut now = t0;
        let mut block = 0u16;
        while t.status() == Status::Active {
            if let Some(Transmit::Data { block: b, .. }) = t.poll_transmit(now) {
                block = b;
            }
            now += s(1);
            t.handle_timeout(now);
            t.handle_ack(block, now);
        }
        assert_eq!(t.status(), Status::TooLong);
        assert_eq!(now - t0, s(60));
    }

    #[test]
    fn netascii_stream_across_rollover_with_go_back() {
        use super::super::netascii::Stream;
        let t0 = Instant::now();
        // 8-byte blocks, > 65536 of them after conversion; a window of 16 with one loss per
        // window: the bytes the client assembles equal the whole-file conversion.
        let src: Vec<u8> = (0..500_000u32).map(|i| [b'a', b'\n', b'b', b'\r', b'c'][(i % 5 + i / 7 % 3) as usize % 5]).collect();
        let mut want = Vec::new();
        for &c in &src {
            match c {
                b'\n' => want.extend_from_slice(b"\r\n"),
                b'\r' => want.extend_from_slice(b"\r\0"),
                c => want.push(c),
            }
        }
        let mut read = |off: u64, buf: &mut [u8]| {
            let o = off as usize;
            let n = buf.len().min(src.len() - o);
            buf[..n].copy_from_slice(&src[o..o + n]);
            Ok(n)
        };
        let r = b"\x00\x01f\x00netascii\x00blksize\x008\x00windowsize\x0016\x00tsize\x000\x00".to_vec();
        let Packet::Request(r) = wire::parse(&r).unwrap() else { panic!() };
        let n = negotiate(&r, src.len() as u64, &LIMITS).unwrap();
        assert!(!n.echo_tsize, "no tsize for netascii: its size is known only at the end");
        let mut t = Transfer::new_stream(n, &LIMITS, t0);
        let mut stream = Stream::new(src.len() as u64, 8);
        assert_eq!(t.poll_transmit(t0), Some(Transmit::Oack));
        t.handle_ack(0, t0);
        let mut got = Vec::new();
        let mut out = [0u8; 8];
        let mut round = 0u64;
        while t.status() == Status::Active {
            round += 1;
            let mut in_order = None;
            while let Some(Transmit::Data { block, offset, .. }) = t.poll_transmit(t0) {
                let abs = offset / 8 + 1;
                assert_eq!(block, abs as u16);
                let len = stream.block(abs, t.base(), &mut out, &mut read).unwrap();
                t.produced(abs, len);
                // Every third round the third block of the window is lost.
                let lost = round % 3 == 0 && abs == t.base() + 2;
                if !lost && abs == got.len() as u64 / 8 + 1 && in_order.is_none_or(|b: u64| b + 1 == abs) {
                    got.extend_from_slice(&out[..len]);
                    in_order = Some(abs);
                }
                assert!(stream.kept() <= 17);
            }
            t.handle_ack(in_order.unwrap_or(t.base() - 1) as u16, t0);
        }
        assert_eq!(t.status(), Status::Done);
        assert!(want.len() / 8 > 65_536);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the client assembles exactly the converted file");
        assert_eq!(t.acked_bytes(), want.len() as u64);
    }

    // ---- Simulation: a lossy, duplicating, reordering network between this state machine and
    // an RFC 7440 client model, in virtual time with a seeded RNG. ----

    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    enum Msg {
        Oack,
        Data(u16, u64, usize),
        Ack(u16),
    }

    /// Returns (outcome, bytes the client assembled, client finished).
    fn simulate(seed: u64, size: u64, blksize: u16, window: u16, loss: f64, dup: f64, reorder: f64) -> (Status, Vec<u8>, bool) {
        let mut rng = crate::rng::XorShift::new(seed);
        let file: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
        let t0 = Instant::now();
        let ms = |n: u64| Duration::from_millis(n);
        let opts = format!("blksize\0{blksize}\0windowsize\0{window}\0tsize\x000\0");
        let n = neg(opts.as_bytes(), size).unwrap();
        let mut srv = Transfer::new(n, size, &LIMITS, t0);
        let mut net: BinaryHeap<std::cmp::Reverse<(Duration, u64, bool, Msg)>> = BinaryHeap::new();
        let mut seq = 0u64;
        let mut send = |net: &mut BinaryHeap<_>, rng: &mut crate::rng::XorShift, at: Duration, to_client: bool, m: Msg| {
            if rng.chance(loss) {
                return;
            }
            let copies = if rng.chance(dup) { 2 } else { 1 };
            for _ in 0..copies {
                let delay = 1 + if rng.chance(reorder) { rng.next() % 20 } else { 0 };
                seq += 1;
                net.push(std::cmp::Reverse((
                    at + ms(delay),
                    seq,
                    to_client,
                    match &m {
                        Msg::Oack => Msg::Oack,
                        Msg::Data(b, o, l) => Msg::Data(*b, *o, *l),
                        Msg::Ack(b) => Msg::Ack(*b),
                    },
                )));
            }
        };
        // Client model (RFC 7440): ACKs every `window` in-order blocks, the short last block,
        // and once per out-of-order arrival; re-ACKs after its own timeout; gives up after 8.
        let mut got: Vec<u8> = Vec::new();
        let mut expect: u64 = 1;
        let mut in_window = 0u16;
        let mut client_done = false;
        let mut client_last_rx = Duration::ZERO;
        let mut client_timeouts = 0;
        let mut started = false;
        let mut now = Duration::ZERO;
        for _ in 0..2_000_000 {
            while let Some(tx) = srv.poll_transmit(t0 + now) {
                let m = match tx {
                    Transmit::Oack => Msg::Oack,
                    Transmit::Data { block, offset, len } => Msg::Data(block, offset, len),
                };
                send(&mut net, &mut rng, now, true, m);
            }
            if srv.status() != Status::Active && (client_done || net.is_empty()) {
                break;
            }
            let srv_t = srv.poll_timeout().map(|t| t - t0);
            let cli_t = (!client_done).then(|| client_last_rx + ms(1500));
            let net_t = net.peek().map(|r| r.0 .0);
            let Some(next) = [srv_t, cli_t, net_t].into_iter().flatten().min() else { break };
            now = next.max(now);
            if net_t == Some(next) {
                let std::cmp::Reverse((_, _, to_client, m)) = net.pop().unwrap();
                if to_client {
                    if client_done {
                        // Dally (RFC 1350 §6): re-acknowledge a repeated last block.
                        if let Msg::Data(b, _, len) = m {
                            if len < blksize as usize && got.len() as u64 == size {
                                send(&mut net, &mut rng, now, false, Msg::Ack(b));
                            }
                        }
                        continue;
                    }
                    client_last_rx = now;
                    client_timeouts = 0;
                    match m {
                        Msg::Oack => {
                            started = true;
                            send(&mut net, &mut rng, now, false, Msg::Ack(0));
                        }
                        Msg::Data(b, off, len) if started => {
                            if b == (expect % 65536) as u16 {
                                assert_eq!(off, got.len() as u64, "in-order block at the right offset");
                                got.extend_from_slice(&file[off as usize..off as usize + len]);
                                expect += 1;
                                in_window += 1;
                                let last = len < blksize as usize;
                                if in_window == window || last {
                                    in_window = 0;
                                    send(&mut net, &mut rng, now, false, Msg::Ack(b));
                                }
                                if last {
                                    client_done = true;
                                }
                            } else if b != ((expect - 1) % 65536) as u16 || window > 1 {
                                in_window = 0;
                                send(&mut net, &mut rng, now, false, Msg::Ack(((expect - 1) % 65536) as u16));
                            }
                        }
                        _ => {}
                    }
                } else if let Msg::Ack(b) = m {
                    srv.handle_ack(b, t0 + now);
                }
            } else if srv_t == Some(next) {
                srv.handle_timeout(t0 + now);
            } else {
                client_timeouts += 1;
                client_last_rx = now;
                if client_timeouts > 8 {
                    client_done = true;
                } else if started {
                    send(&mut net, &mut rng, now, false, Msg::Ack(((expect - 1) % 65536) as u16));
                }
                // Before the OACK a real client re-sends its RRQ, which reaches the listener
                // (a new transfer), not this one: this transfer re-sends its OACK on timeout.
            }
        }
        if std::env::var("SIM_DEBUG").is_ok() {
            eprintln!(
                "end: status {:?} base {} next {} last {} now {:?} client_done {} got {} net {}",
                srv.status(),
                srv.base,
                srv.next,
                srv.last,
                now,
                client_done,
                got.len(),
                net.len()
            );
        }
        (srv.status(), got, client_done)
    }

    #[test]
    fn thousands_of_lossy_transfers_complete_exactly_or_fail_cleanly() {
        let mut rng = crate::rng::XorShift::new(0xDEC0_DE00_1234_5678);
        let (mut done, mut failed, mut failed_low_loss) = (0, 0, 0);
        for i in 0..3000 {
            let blksize = [8u16, 64, 512, 1432][(rng.next() % 4) as usize];
            let window = [1u16, 2, 8, 16, 64][(rng.next() % 5) as usize];
            let size = rng.next() % (blksize as u64 * 40);
            let loss = [0.0, 0.01, 0.05, 0.2][(rng.next() % 4) as usize];
            let (status, got, _) = simulate(rng.next(), size, blksize, window, loss, 0.05, 0.1);
            let file: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
            assert!(file.starts_with(&got), "transfer {i}: the client never holds a wrong byte");
            match status {
                Status::Done => {
                    assert_eq!(got, file, "transfer {i}: done means every byte arrived");
                    done += 1;
                }
                Status::TimedOut => {
                    failed += 1;
                    failed_low_loss += (loss <= 0.05) as u32;
                }
                s => panic!("transfer {i}: unexpected status {s:?}"),
            }
        }
        assert_eq!(failed_low_loss, 0, "at up to 5% loss every transfer completes ({done} done, {failed} timed out)");
        assert!(done > 2950, "nearly all transfers complete even at 20% loss ({done} done, {failed} timed out)");
    }

    #[test]
    fn lossy_transfer_across_rollover() {
        let (status, got, _) = simulate(99, 8 * 66_000, 8, 16, 0.01, 0.01, 0.05);
        assert_eq!(status, Status::Done);
        assert_eq!(got.len(), 8 * 66_000);
    }
}
