//! bootstorm's iSCSI initiator, sans-IO: a login (AuthMethod None, operational keys), TEST UNIT
//! READY (retried over unit attentions) and READ CAPACITY 16, then READ/WRITE 10/16 commands
//! with immediate data, unsolicited Data-Out and R2T-solicited Data-Out as negotiated, several in
//! flight (CmdSN window), NOP-In pings answered. The drivers (`uring_iscsi.rs`: a boot trace per
//! target on io_uring; `iscsi_bench.rs`: a queue-depth load on one connection) move its bytes.
//! Limits: at most `SLOTS` commands in flight, PDU data segments up to `RECV_DSL` bytes, login
//! text up to 64 KiB; anything else from the target is a protocol error that ends the session.

use std::collections::VecDeque;

use bootfarm::iscsi::text;
use bootfarm::iscsi::wire::{
    self, op, Bhs, Digests, FLAG_CONTINUE, FLAG_FINAL, FLAG_IMMEDIATE, FLAG_STATUS, FLAG_TRANSIT, TAG_NONE as NO_TAG,
};
use wire::sn_lt;

pub const BHS: usize = wire::BHS_LEN;
/// The MaxRecvDataSegmentLength we declare: the largest Data-In segment we take.
pub const RECV_DSL: u32 = 256 << 10;
/// Commands in flight on one session (the slot is the low bits of the task tag).
pub const SLOTS: usize = 256;
const LOGIN_TEXT_MAX: usize = text::TEXT_BYTES_MAX;

/// Who logs in to what.
#[derive(Clone, Debug)]
pub struct Params {
    pub initiator: String,
    pub target: String,
    pub lun: u64,
    /// ISID qualifier: distinguishes this initiator's sessions (random-vendor format).
    pub isid: u32,
}

/// What the login settled (the target's side of each key, combined with ours as RFC 7143 says).
#[derive(Clone, Copy, Debug)]
pub struct Negotiated {
    /// The target's MaxRecvDataSegmentLength: no Data-Out or immediate data segment above it.
    pub send_dsl: u32,
    pub first_burst: u32,
    pub max_burst: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
}

impl Default for Negotiated {
    fn default() -> Negotiated {
        // RFC 7143 defaults, ours as offered below where a target keeps silent.
        Negotiated { send_dsl: 8192, first_burst: 65536, max_burst: 262144, immediate_data: true, initial_r2t: false }
    }
}

/// What the session reports to its driver.
#[derive(Debug)]
pub enum Event {
    /// Logged in, the unit is ready and its size known: commands may be issued.
    Ready {
        blocks: u64,
        block_len: u32,
    },
    /// A command is over: GOOD with every byte (a read's data in `buf`), or not (`ok` false,
    /// `why` says what). The buffer comes back to the driver either way.
    Done {
        tag: u64,
        ok: bool,
        why: &'static str,
        buf: Vec<u8>,
    },
    LoggedOut,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    Security,
    Operational,
    /// Logged in: TEST UNIT READY and READ CAPACITY run as internal commands.
    Setup,
    Full,
    LoggingOut,
    Over,
}

struct Task {
    itt: u32,
    tag: u64,
    write: bool,
    lba: u64,
    blocks: u32,
    /// A read's destination or a write's source; `len` bytes of it are transferred.
    buf: Vec<u8>,
    len: u32,
    /// Data-In bytes received (reads).
    got: u32,
    /// Internal command of the setup (TEST UNIT READY / READ CAPACITY), not the driver's.
    internal: bool,
}

pub struct Initiator {
    p: Params,
    stage: Stage,
    pub neg: Negotiated,
    itt_seq: u32,
    cmdsn: u32,
    exp_statsn: u32,
    max_cmdsn: u32,
    tsih: u16,
    /// Bytes to send: `out[out_at..]`.
    out: Vec<u8>,
    out_at: usize,
    /// Received bytes not yet parsed: `inb[in_at..in_len]`.
    inb: Vec<u8>,
    in_at: usize,
    in_len: usize,
    login_text: Vec<u8>,
    tasks: Vec<Option<Task>>,
    free: Vec<usize>,
    events: VecDeque<Event>,
    unit_attentions: u32,
    pub blocks: u64,
    pub block_len: u32,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Appends a PDU: the BHS and a data segment padded to 4 bytes.
fn pdu(out: &mut Vec<u8>, bhs: &[u8; BHS], data: &[u8]) {
    let mut h = *bhs;
    let n = data.len() as u32;
    h[5..8].copy_from_slice(&n.to_be_bytes()[1..]);
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len() + (4 - data.len() % 4) % 4, 0);
}

impl Initiator {
    /// A session to start: its first Login Request is queued.
    pub fn new(p: Params) -> Initiator {
        let mut s = Initiator {
            p,
            stage: Stage::Security,
            neg: Negotiated::default(),
            itt_seq: 0,
            cmdsn: 1,
            exp_statsn: 0,
            max_cmdsn: 1,
            tsih: 0,
            out: Vec::new(),
            out_at: 0,
            inb: vec![0; 2 * (BHS + RECV_DSL as usize)],
            in_at: 0,
            in_len: 0,
            login_text: Vec::new(),
            tasks: (0..SLOTS).map(|_| None).collect(),
            free: (0..SLOTS).rev().collect(),
            events: VecDeque::new(),
            unit_attentions: 0,
            blocks: 0,
            block_len: 0,
        };
        s.login(true);
        s
    }

    fn isid(&self) -> [u8; 6] {
        // Type 01b (random), qualifier from the parameters.
        let q = self.p.isid.to_be_bytes();
        [0x40 | 0x3d, 0, q[0], q[1], q[2], q[3]]
    }

    /// Queues a Login Request for the current stage; `keys`: the stage's keys (false: an
    /// empty request, to go on when the target answered without transit).
    fn login(&mut self, keys: bool) {
        let mut body = Vec::new();
        let (csg, nsg) = match self.stage {
            Stage::Security => (0u8, 1u8),
            _ => (1, 3),
        };
        if keys && self.stage == Stage::Security {
            text::push(&mut body, "InitiatorName", &self.p.initiator.clone());
            text::push(&mut body, "TargetName", &self.p.target.clone());
            text::push(&mut body, "SessionType", "Normal");
            text::push(&mut body, "AuthMethod", "None");
        } else if keys {
            for (k, v) in [
                ("HeaderDigest", "None"),
                ("DataDigest", "None"),
                ("MaxRecvDataSegmentLength", &RECV_DSL.to_string()[..]),
                ("InitialR2T", "No"),
                ("ImmediateData", "Yes"),
                ("MaxBurstLength", "262144"),
                ("FirstBurstLength", "65536"),
                ("MaxOutstandingR2T", "1"),
                ("MaxConnections", "1"),
                ("DataPDUInOrder", "Yes"),
                ("DataSequenceInOrder", "Yes"),
                ("DefaultTime2Wait", "0"),
                ("DefaultTime2Retain", "0"),
                ("ErrorRecoveryLevel", "0"),
            ] {
                text::push(&mut body, k, v);
            }
        }
        let mut h = [0u8; BHS];
        h[0] = op::LOGIN | FLAG_IMMEDIATE;
        h[1] = FLAG_TRANSIT | csg << 2 | nsg;
        h[8..14].copy_from_slice(&self.isid());
        h[14..16].copy_from_slice(&self.tsih.to_be_bytes());
        put32(&mut h, 16, self.itt_seq);
        put32(&mut h, 24, self.cmdsn);
        put32(&mut h, 28, self.exp_statsn);
        pdu(&mut self.out, &h, &body);
    }

    /// Bytes waiting to be sent.
    pub fn pending(&self) -> &[u8] {
        &self.out[self.out_at..]
    }

    pub fn sent(&mut self, n: usize) {
        self.out_at += n;
        if self.out_at == self.out.len() {
            self.out.clear();
            self.out_at = 0;
        }
    }

    /// Where the next received bytes go.
    pub fn recv_space(&mut self) -> &mut [u8] {
        // Room for a whole PDU of the largest size behind what is waiting: the move is at
        // most one partial PDU, once per half buffer received.
        if self.in_at > 0 && (self.in_at == self.in_len || self.inb.len() - self.in_len < BHS + RECV_DSL as usize) {
            self.inb.copy_within(self.in_at..self.in_len, 0);
            self.in_len -= self.in_at;
            self.in_at = 0;
        }
        &mut self.inb[self.in_len..]
    }

    /// Nothing received waits to be parsed: the next byte starts a PDU.
    pub fn nothing_buffered(&self) -> bool {
        self.in_at == self.in_len
    }

    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// A command may be issued now: logged in, a slot free, CmdSN inside the target's window.
    pub fn can_issue(&self) -> bool {
        self.stage == Stage::Full && !self.free.is_empty() && !sn_lt(self.max_cmdsn, self.cmdsn)
    }

    pub fn in_flight(&self) -> usize {
        SLOTS - self.free.len()
    }

    /// Queues READ (10, or 16 past 2^32 blocks) of `blocks` at `lba`, into `buf` (resized).
    pub fn read(&mut self, tag: u64, lba: u64, blocks: u32, buf: Vec<u8>) {
        self.command(tag, false, lba, blocks, buf, false);
    }

    /// Queues WRITE (10 or 16) of `buf` (a whole number of blocks) at `lba`.
    pub fn write(&mut self, tag: u64, lba: u64, buf: Vec<u8>) {
        let blocks = (buf.len() / self.block_len.max(1) as usize) as u32;
        self.command(tag, true, lba, blocks, buf, false);
    }

    /// Logout (close the session), as an immediate command.
    pub fn logout(&mut self) {
        let mut h = [0u8; BHS];
        h[0] = op::LOGOUT | FLAG_IMMEDIATE;
        h[1] = FLAG_FINAL;
        self.itt_seq = self.itt_seq.wrapping_add(1) | 0x8000_0000;
        put32(&mut h, 16, self.itt_seq);
        put32(&mut h, 24, self.cmdsn);
        put32(&mut h, 28, self.exp_statsn);
        pdu(&mut self.out, &h, &[]);
        self.stage = Stage::LoggingOut;
    }

    fn command(&mut self, tag: u64, write: bool, lba: u64, blocks: u32, mut buf: Vec<u8>, internal: bool) {
        let slot = self.free.pop().expect("can_issue checked");
        self.itt_seq = self.itt_seq.wrapping_add(1) & 0x007f_ffff;
        let itt = (self.itt_seq << 8) | slot as u32;
        let len = if internal { 0 } else { blocks * self.block_len };
        let mut cdb = [0u8; 16];
        if internal {
            if blocks == 0 {
                // TEST UNIT READY: all zeros.
            } else {
                // READ CAPACITY 16 (SERVICE ACTION IN), allocation length 32.
                cdb[0] = 0x9e;
                cdb[1] = 0x10;
                put32(&mut cdb, 10, 32);
            }
        } else if lba + blocks as u64 <= u32::MAX as u64 && blocks <= u16::MAX as u32 {
            cdb[0] = if write { 0x2a } else { 0x28 };
            put32(&mut cdb, 2, lba as u32);
            cdb[7..9].copy_from_slice(&(blocks as u16).to_be_bytes());
        } else {
            cdb[0] = if write { 0x8a } else { 0x88 };
            cdb[2..10].copy_from_slice(&lba.to_be_bytes());
            put32(&mut cdb, 10, blocks);
        }
        let edtl = if internal {
            if blocks == 0 {
                0
            } else {
                32
            }
        } else {
            len
        };
        if !write && buf.len() < edtl as usize {
            buf.resize(edtl as usize, 0);
        }
        let mut h = [0u8; BHS];
        h[0] = op::SCSI_COMMAND;
        // Final, read or write, task attribute SIMPLE.
        h[1] = FLAG_FINAL
            | if write {
                0x20
            } else if edtl > 0 {
                0x40
            } else {
                0
            }
            | 1;
        h[8..16].copy_from_slice(&wire::lun_field(self.p.lun).to_be_bytes());
        put32(&mut h, 16, itt);
        put32(&mut h, 20, edtl);
        put32(&mut h, 24, self.cmdsn);
        put32(&mut h, 28, self.exp_statsn);
        h[32..48].copy_from_slice(&cdb);
        self.cmdsn = self.cmdsn.wrapping_add(1);
        if write {
            // Immediate data, then unsolicited Data-Out up to FirstBurstLength (InitialR2T=No);
            // the rest waits for R2Ts.
            let first = if self.neg.initial_r2t { 0 } else { self.neg.first_burst.min(edtl) };
            let imm = if self.neg.immediate_data { self.neg.first_burst.min(self.neg.send_dsl).min(edtl) } else { 0 };
            pdu(&mut self.out, &h, &buf[..imm as usize]);
            if first > imm {
                self.data_out(&buf, itt, NO_TAG, imm, first - imm);
            }
        } else {
            pdu(&mut self.out, &h, &[]);
        }
        self.tasks[slot] = Some(Task { itt, tag, write, lba, blocks, buf, len: edtl, got: 0, internal });
    }

    /// Data-Out PDUs for `buf[off..off + len]`, each at most the target's MaxRecvDataSegmentLength,
    /// DataSN from 0, the last one Final.
    fn data_out(&mut self, buf: &[u8], itt: u32, ttt: u32, off: u32, len: u32) {
        let step = self.neg.send_dsl.max(512);
        let mut at = 0;
        let mut sn = 0;
        while at < len {
            let n = step.min(len - at);
            let mut h = [0u8; BHS];
            h[0] = op::DATA_OUT;
            h[1] = if at + n == len { FLAG_FINAL } else { 0 };
            h[8..16].copy_from_slice(&wire::lun_field(self.p.lun).to_be_bytes());
            put32(&mut h, 16, itt);
            put32(&mut h, 20, ttt);
            put32(&mut h, 28, self.exp_statsn);
            put32(&mut h, 36, sn);
            put32(&mut h, 40, off + at);
            let s = (off + at) as usize;
            pdu(&mut self.out, &h, &buf[s..s + n as usize]);
            at += n;
            sn += 1;
        }
    }

    /// `n` bytes were received into `recv_space()`: parses every whole PDU. Err: a protocol
    /// error (or a refused login); the session is over.
    pub fn received(&mut self, n: usize) -> Result<(), &'static str> {
        self.in_len += n;
        loop {
            let avail = self.in_len - self.in_at;
            if avail < BHS {
                return Ok(());
            }
            let h: [u8; BHS] = self.inb[self.in_at..self.in_at + BHS].try_into().unwrap();
            // No digests negotiated; an AHS (none is sent to an initiator here) is refused.
            let l = wire::layout(&Bhs::new(&h).expect("48 bytes"), Digests::default());
            let (dsl, total) = (l.data_len, l.total);
            if dsl > RECV_DSL as usize || l.ahs_len > 0 {
                return Err("target PDU over the limits");
            }
            if avail < total {
                return Ok(());
            }
            let d0 = self.in_at + BHS;
            self.in_at += total;
            // The data segment is `inb[d0..d0 + dsl]`; taken out of `self` for the borrow.
            let inb = std::mem::take(&mut self.inb);
            let r = self.on_pdu(&h, &inb[d0..d0 + dsl]);
            self.inb = inb;
            r?;
            if self.stage == Stage::Over {
                return Ok(());
            }
        }
    }

    /// ExpCmdSN/MaxCmdSN of a target PDU: the window only ever opens (RFC 7143 4.2.2.1: a
    /// MaxCmdSN below ExpCmdSN - 1 is ignored).
    fn window(&mut self, h: &[u8; BHS]) {
        let (exp, max) = (be32(h, 28), be32(h, 32));
        if !sn_lt(max.wrapping_add(1), exp) && sn_lt(self.max_cmdsn, max) {
            self.max_cmdsn = max;
        }
    }

    fn status_sn(&mut self, h: &[u8; BHS]) {
        let sn = be32(h, 24);
        if !sn_lt(sn.wrapping_add(1), self.exp_statsn) {
            self.exp_statsn = sn.wrapping_add(1);
        }
    }

    fn task(&mut self, itt: u32) -> Result<usize, &'static str> {
        let slot = (itt & 0xff) as usize;
        match &self.tasks[slot] {
            Some(t) if t.itt == itt => Ok(slot),
            _ => Err("answer for no command in flight"),
        }
    }

    fn on_pdu(&mut self, h: &[u8; BHS], data: &[u8]) -> Result<(), &'static str> {
        match Bhs::new(h).expect("48 bytes").opcode() {
            op::LOGIN_RESPONSE => self.on_login(h, data),
            op::DATA_IN => {
                let slot = self.task(be32(h, 16))?;
                let (off, n) = (be32(h, 40) as usize, data.len());
                let t = self.tasks[slot].as_mut().unwrap();
                if t.write || off + n > t.len as usize {
                    return Err("Data-In outside the command's buffer");
                }
                t.buf[off..off + n].copy_from_slice(data);
                t.got += n as u32;
                self.window(h);
                if h[1] & FLAG_STATUS != 0 {
                    self.status_sn(h);
                    // Status in the last Data-In; residual underflow (U) is a short read.
                    let good = h[3] == 0 && h[1] & 0x06 == 0;
                    self.finish(slot, good, if good { "" } else { "check condition" }, &[]);
                }
                Ok(())
            }
            op::SCSI_RESPONSE => {
                let slot = self.task(be32(h, 16))?;
                self.window(h);
                self.status_sn(h);
                let good = h[2] == 0 && h[3] == 0 && h[1] & 0x06 == 0;
                let why = if h[2] != 0 {
                    "target failure"
                } else if h[3] != 0 {
                    "check condition"
                } else if good {
                    ""
                } else {
                    "residual"
                };
                // Sense data: a 2-byte length, then fixed-format sense (key in byte 2).
                let sense = if data.len() >= 2 { &data[2..] } else { &[][..] };
                self.finish(slot, good, why, sense);
                Ok(())
            }
            op::R2T => {
                let slot = self.task(be32(h, 16))?;
                self.window(h);
                let (ttt, off, len) = (be32(h, 20), be32(h, 40), be32(h, 44));
                let t = self.tasks[slot].take().unwrap();
                let bad = !t.write || off as u64 + len as u64 > t.len as u64 || len > self.neg.max_burst || len == 0;
                if !bad {
                    self.data_out(&t.buf, t.itt, ttt, off, len);
                }
                self.tasks[slot] = Some(t);
                if bad {
                    return Err("R2T outside the command's data");
                }
                Ok(())
            }
            op::NOP_IN => {
                self.window(h);
                let ttt = be32(h, 20);
                if ttt != NO_TAG {
                    // A ping: answer with a NOP-Out echoing the target's tag.
                    let mut o = [0u8; BHS];
                    o[0] = op::NOP_OUT | FLAG_IMMEDIATE;
                    o[1] = FLAG_FINAL;
                    o[8..16].copy_from_slice(&h[8..16]);
                    put32(&mut o, 16, NO_TAG);
                    put32(&mut o, 20, ttt);
                    put32(&mut o, 24, self.cmdsn);
                    put32(&mut o, 28, self.exp_statsn);
                    pdu(&mut self.out, &o, &[]);
                }
                Ok(())
            }
            op::LOGOUT_RESPONSE => {
                self.status_sn(h);
                self.stage = Stage::Over;
                self.events.push_back(Event::LoggedOut);
                Ok(())
            }
            op::ASYNC => {
                self.window(h);
                self.status_sn(h);
                // 1: the target asks for a logout; anything else is noted and ignored.
                if h[36] == 1 && self.stage == Stage::Full {
                    return Err("target asked for a logout");
                }
                Ok(())
            }
            op::REJECT => Err("target rejected a PDU"),
            _ => Err("unexpected PDU from the target"),
        }
    }

    fn finish(&mut self, slot: usize, good: bool, why: &'static str, sense: &[u8]) {
        let t = self.tasks[slot].take().unwrap();
        self.free.push(slot);
        let complete = !good || t.write || t.got == t.len;
        let (ok, why) = if good && !complete { (false, "short read") } else { (good, why) };
        if !t.internal {
            self.events.push_back(Event::Done { tag: t.tag, ok, why, buf: t.buf });
            return;
        }
        // The setup: TEST UNIT READY until no unit attention is left, then READ CAPACITY 16.
        let unit_attention = sense.len() >= 3 && sense[2] & 0x0f == 6;
        match (t.blocks, ok) {
            (0, true) => self.command(0, false, 0, 1, Vec::new(), true),
            (_, true) => {
                let b = &t.buf;
                self.blocks = u64::from_be_bytes(b[..8].try_into().unwrap()) + 1;
                self.block_len = be32(b, 8);
                self.stage = Stage::Full;
                self.events.push_back(Event::Ready { blocks: self.blocks, block_len: self.block_len });
            }
            _ if unit_attention && self.unit_attentions < 8 => {
                self.unit_attentions += 1;
                self.command(0, false, t.lba, t.blocks, t.buf, true);
            }
            _ => {
                self.stage = Stage::Over;
                self.events.push_back(Event::Done { tag: u64::MAX, ok: false, why: "unit not ready", buf: Vec::new() });
            }
        }
    }

    fn on_login(&mut self, h: &[u8; BHS], data: &[u8]) -> Result<(), &'static str> {
        if !matches!(self.stage, Stage::Security | Stage::Operational) {
            return Err("login response outside the login");
        }
        if h[36] != 0 {
            return Err(match (h[36], h[37]) {
                (2, 1) => "login refused: authentication",
                (2, 3) => "login refused: target not found",
                (2, _) => "login refused: initiator error",
                _ => "login refused: target error",
            });
        }
        self.status_sn(h);
        self.window(h);
        self.tsih = u16::from_be_bytes([h[14], h[15]]);
        if self.login_text.len() + data.len() > LOGIN_TEXT_MAX {
            return Err("login text over the limit");
        }
        self.login_text.extend_from_slice(data);
        if h[1] & FLAG_CONTINUE != 0 {
            // Continued: ask for the rest with an empty request.
            self.login(false);
            return Ok(());
        }
        let all = std::mem::take(&mut self.login_text);
        let pairs = text::parse(&all, text::PAIRS_MAX).map_err(|_| "bad login text")?;
        for (k, v) in pairs {
            let num = |what| text::number(v, 1 << 24).map(|n| n as u32).ok_or(what);
            match k {
                "MaxRecvDataSegmentLength" => self.neg.send_dsl = num("bad MaxRecvDataSegmentLength")?.max(512),
                "FirstBurstLength" => self.neg.first_burst = num("bad FirstBurstLength")?.min(65536),
                "MaxBurstLength" => self.neg.max_burst = num("bad MaxBurstLength")?.min(262144),
                "ImmediateData" => self.neg.immediate_data = text::boolean(v).ok_or("bad ImmediateData")?,
                "InitialR2T" => self.neg.initial_r2t = text::boolean(v).ok_or("bad InitialR2T")?,
                "AuthMethod" if v != "None" => return Err("target wants authentication"),
                _ => {}
            }
        }
        let transit = h[1] & FLAG_TRANSIT != 0;
        let nsg = h[1] & 0x03;
        match (self.stage, transit, nsg) {
            (Stage::Security, true, 1) => {
                self.stage = Stage::Operational;
                self.login(true);
            }
            (Stage::Security, true, 3) | (Stage::Operational, true, 3) => {
                // Full feature phase: the setup commands first.
                self.stage = Stage::Setup;
                self.command(0, false, 0, 0, Vec::new(), true);
            }
            (_, false, _) => self.login(false),
            _ => return Err("login response with an unexpected stage"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params { initiator: "iqn.2026-12.org.bootstorm:t1".into(), target: "iqn.x:disk".into(), lun: 0, isid: 7 }
    }

    #[test]
    fn first_login_request_names_both_ends() {
        let s = Initiator::new(params());
        let p = s.pending();
        assert_eq!(p[0], 0x43, "Login Request, immediate");
        assert_eq!(p[1], 0x81, "transit, CSG 0, NSG 1");
        let dsl = be32(p, 4) as usize & 0xff_ffff;
        let text = std::str::from_utf8(&p[BHS..BHS + dsl]).unwrap();
        assert!(text.contains("InitiatorName=iqn.2026-12.org.bootstorm:t1\0"));
        assert!(text.contains("TargetName=iqn.x:disk\0AuthMethod=None\0") || text.contains("AuthMethod=None\0"));
        assert_eq!(p.len() % 4, 0, "padded");
    }
}
