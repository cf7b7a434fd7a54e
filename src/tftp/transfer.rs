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
mod tests;
