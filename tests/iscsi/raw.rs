//! A raw iSCSI initiator for what no real initiator sends: PDUs built byte by byte from RFC 7143
//! section 11 here (not with bootfarm's code), responses framed with `wire::pdu_len` and read
//! at their RFC offsets. Login without digests (AuthMethod=None), SCSI commands with Data-In,
//! immediate data and R2T-solicited Data-Out; every read bounded by a 5 s timeout.

#![allow(dead_code)]

use bootfarm::iscsi::wire;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One PDU from the target: its BHS (AHS dropped) and its data segment (padding dropped).
pub struct Pdu {
    pub bhs: [u8; 48],
    pub data: Vec<u8>,
}

impl Pdu {
    pub fn op(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }
    pub fn u32(&self, off: usize) -> u32 {
        u32::from_be_bytes(self.bhs[off..off + 4].try_into().unwrap())
    }
    pub fn itt(&self) -> u32 {
        self.u32(16)
    }
}

impl std::fmt::Debug for Pdu {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "PDU op {:#04x} flags {:#04x} itt {:#x} data {} bytes, BHS {:02x?}",
            self.op(),
            self.flags(),
            self.itt(),
            self.data.len(),
            self.bhs
        )
    }
}

/// How a target answered something it should not have been sent.
#[derive(Debug)]
pub enum Refusal {
    Closed,
    Reject { reason: u8, rejected: Vec<u8> },
}

pub fn text_keys(data: &[u8]) -> BTreeMap<String, String> {
    data.split(|&b| b == 0)
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let s = String::from_utf8_lossy(kv);
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

pub fn text_bytes(keys: &[(&str, &str)]) -> Vec<u8> {
    let mut t = Vec::new();
    for (k, v) in keys {
        t.extend_from_slice(format!("{k}={v}").as_bytes());
        t.push(0);
    }
    t
}

/// A BHS with the fields every initiator PDU has: byte 0 (I bit + opcode), byte 1 (flags),
/// the data segment length (bytes 5..8), the LUN or ISID/TSIH (8..16) and the ITT (16..20).
pub fn bhs(opcode: u8, immediate: bool, flags: u8, data_len: usize, lun_or_isid: [u8; 8], itt: u32) -> [u8; 48] {
    let mut b = [0u8; 48];
    b[0] = opcode | if immediate { 0x40 } else { 0 };
    b[1] = flags;
    b[5..8].copy_from_slice(&(data_len as u32).to_be_bytes()[1..]);
    b[8..16].copy_from_slice(&lun_or_isid);
    b[16..20].copy_from_slice(&itt.to_be_bytes());
    b
}

pub fn put32(b: &mut [u8; 48], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

/// LUN 0 in the single-level flat format every initiator uses for small LUNs.
pub const LUN0: [u8; 8] = [0; 8];

pub struct Raw {
    pub s: TcpStream,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub max_cmdsn: u32,
    pub itt: u32,
    /// The LUN field of commands (LUN 0 unless changed: tgt's disk is LUN 1).
    pub lun: [u8; 8],
    /// What the target declared in the login (its MaxRecvDataSegmentLength, bursts, R2T).
    pub keys: BTreeMap<String, String>,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_nodelay(true).unwrap();
        Raw { s, cmdsn: 1, exp_statsn: 0, max_cmdsn: 1, itt: 0x1000, lun: LUN0, keys: BTreeMap::new() }
    }

    pub fn send(&mut self, bhs: &[u8; 48], data: &[u8]) -> std::io::Result<()> {
        let mut v = bhs.to_vec();
        v.extend_from_slice(data);
        v.resize(48 + data.len().div_ceil(4) * 4, 0);
        self.s.write_all(&v)
    }

    /// The next PDU; the target's NOP-In pings are answered and skipped.
    pub fn recv(&mut self) -> std::io::Result<Pdu> {
        loop {
            let mut h = [0u8; 48];
            self.s.read_exact(&mut h)?;
            let view = wire::Bhs::new(&h).unwrap();
            let total = wire::pdu_len(&view, wire::Digests::default());
            let mut rest = vec![0u8; total - 48];
            self.s.read_exact(&mut rest)?;
            let ahs = view.ahs_len();
            let data = rest[ahs..ahs + view.data_len() as usize].to_vec();
            let pdu = Pdu { bhs: h, data };
            if pdu.op() == wire::op::NOP_IN && pdu.u32(20) != wire::TAG_NONE {
                let mut b = bhs(wire::op::NOP_OUT, true, 0x80, 0, LUN0, wire::TAG_NONE);
                put32(&mut b, 20, pdu.u32(20));
                put32(&mut b, 24, self.cmdsn);
                put32(&mut b, 28, self.exp_statsn);
                self.send(&b, &[])?;
                continue;
            }
            // StatSN advances with every status-bearing PDU (Data-In only with the S bit; an
            // R2T's is the next one, not its own); every target PDU carries MaxCmdSN at 32.
            let advances = match pdu.op() {
                wire::op::DATA_IN => pdu.flags() & 1 != 0,
                wire::op::R2T => false,
                _ => true,
            };
            if advances {
                self.exp_statsn = pdu.u32(24).wrapping_add(1);
            }
            self.max_cmdsn = pdu.u32(32);
            return Ok(pdu);
        }
    }

    /// After something a target must refuse: a Reject (then the connection may go on, except
    /// after a protocol error, which ends it under ERL 0) or the connection closed, within 5 s.
    /// R2Ts the target had sent for an earlier write are skipped; anything else fails the test.
    pub fn refused(&mut self) -> Refusal {
        loop {
            match self.recv() {
                Ok(p) if p.op() == wire::op::R2T => continue,
                Ok(p) if p.op() == wire::op::REJECT => {
                    if p.bhs[2] == wire::reject::PROTOCOL_ERROR {
                        assert!(self.closed(), "a Reject for a protocol error, then the connection goes on (ERL 0 ends it)");
                    }
                    return Refusal::Reject { reason: p.bhs[2], rejected: p.data };
                }
                Ok(p) => panic!("expected a Reject or a closed connection, got {p:?}"),
                Err(e) if Raw::is_close(&e) => return Refusal::Closed,
                Err(e) => panic!("expected a Reject or a closed connection within 5 s: {e}"),
            }
        }
    }

    fn is_close(e: &std::io::Error) -> bool {
        matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
    }

    /// The target closes the connection within 5 s (PDUs before the close are skipped).
    pub fn closed(&mut self) -> bool {
        loop {
            match self.recv() {
                Ok(_) => continue,
                Err(e) => return Raw::is_close(&e),
            }
        }
    }

    /// Logs in (security stage with AuthMethod=None, then the operational keys `ops` on top of
    /// plain defaults): a Normal session to `target`, or Discovery when it is None. Err: the
    /// status class and detail of a refused login.
    pub fn login(port: u16, initiator: &str, target: Option<&str>, ops: &[(&str, &str)]) -> Result<Raw, (u8, u8)> {
        let mut r = Raw::connect(port);
        static N: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_be_bytes();
        // ISID type "random" (0x80), distinct per connection: no session reinstatement.
        let isid = [0x80, 0x42, 0x17, std::process::id() as u8, n[0], n[1], 0, 0];
        let mut sec = vec![("InitiatorName", initiator), ("AuthMethod", "None")];
        match target {
            Some(t) => sec.extend([("SessionType", "Normal"), ("TargetName", t)]),
            None => sec.push(("SessionType", "Discovery")),
        }
        let mut op_keys: Vec<(&str, &str)> = vec![
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "262144"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "262144"),
            ("FirstBurstLength", "65536"),
            ("MaxOutstandingR2T", "1"),
            ("ErrorRecoveryLevel", "0"),
            ("MaxConnections", "1"),
            ("DefaultTime2Wait", "0"),
            ("DefaultTime2Retain", "0"),
        ];
        for (k, v) in ops {
            match op_keys.iter_mut().find(|(key, _)| key == k) {
                Some(e) => e.1 = v,
                None => op_keys.push((k, v)),
            }
        }
        let mut stage = (0u8, 1u8, text_bytes(&sec));
        for _ in 0..8 {
            let (csg, nsg, text) = (stage.0, stage.1, std::mem::take(&mut stage.2));
            let mut b = bhs(wire::op::LOGIN, true, 0x80 | (csg << 2) | nsg, text.len(), isid, 7);
            put32(&mut b, 24, r.cmdsn);
            put32(&mut b, 28, r.exp_statsn);
            r.send(&b, &text).unwrap();
            let p = r.recv().unwrap_or_else(|e| panic!("no Login Response: {e}"));
            assert_eq!(p.op(), wire::op::LOGIN_RESPONSE, "{p:?}");
            let (class, detail) = (p.bhs[36], p.bhs[37]);
            if class != 0 {
                return Err((class, detail));
            }
            r.keys.extend(text_keys(&p.data));
            let transit = p.flags() & 0x80 != 0;
            let next = p.flags() & 3;
            match (transit, next) {
                (true, 3) => return Ok(r),
                (true, _) => stage = (1, 3, text_bytes(&op_keys)),
                // The target stays in this stage (it wants another request): an empty one.
                (false, _) => stage = (csg, nsg, Vec::new()),
            }
        }
        panic!("login did not reach full feature phase in 8 requests");
    }

    pub fn next_itt(&mut self) -> u32 {
        self.itt += 1;
        self.itt
    }

    /// A SCSI Command BHS (simple task attribute) for `cdb` expecting `edtl` bytes, with
    /// `immediate` bytes of data after it, at the current CmdSN (which it takes).
    pub fn command_bhs(&mut self, cdb: &[u8], edtl: u32, read: bool, write: bool, immediate: usize) -> [u8; 48] {
        let itt = self.next_itt();
        let flags = 0x80 | if read { 0x40 } else { 0 } | if write { 0x20 } else { 0 } | 1;
        let mut b = bhs(wire::op::SCSI_COMMAND, false, flags, immediate, self.lun, itt);
        put32(&mut b, 20, edtl);
        put32(&mut b, 24, self.cmdsn);
        put32(&mut b, 28, self.exp_statsn);
        b[32..32 + cdb.len()].copy_from_slice(cdb);
        self.cmdsn = self.cmdsn.wrapping_add(1);
        b
    }

    /// A command without data out; its Data-In bytes (by buffer offset), SCSI status and sense.
    pub fn scsi_in(&mut self, cdb: &[u8], edtl: u32) -> (u8, Vec<u8>, Vec<u8>) {
        let b = self.command_bhs(cdb, edtl, edtl > 0, false, 0);
        let itt = u32::from_be_bytes(b[16..20].try_into().unwrap());
        self.send(&b, &[]).unwrap();
        let mut data = Vec::new();
        loop {
            let p = self.recv().unwrap_or_else(|e| panic!("no answer to CDB {cdb:02x?}: {e}"));
            assert_eq!(p.itt(), itt, "{p:?}");
            match p.op() {
                wire::op::DATA_IN => {
                    let off = p.u32(40) as usize;
                    if data.len() < off + p.data.len() {
                        data.resize(off + p.data.len(), 0);
                    }
                    data[off..off + p.data.len()].copy_from_slice(&p.data);
                    if p.flags() & 1 != 0 {
                        return (p.bhs[3], data, Vec::new());
                    }
                }
                wire::op::SCSI_RESPONSE => {
                    let sense = if p.data.len() >= 2 {
                        p.data[2..2 + u16::from_be_bytes([p.data[0], p.data[1]]) as usize].to_vec()
                    } else {
                        Vec::new()
                    };
                    return (p.bhs[3], data, sense);
                }
                _ => panic!("unexpected answer to CDB {cdb:02x?}: {p:?}"),
            }
        }
    }

    /// A WRITE-type command with `data`: immediate data up to what the login allowed, then
    /// Data-Out for each R2T. Returns the SCSI status and sense.
    pub fn scsi_out(&mut self, cdb: &[u8], data: &[u8]) -> (u8, Vec<u8>) {
        let immediate_ok = self.keys.get("ImmediateData").is_none_or(|v| v == "Yes");
        let seg = self.keys.get("MaxRecvDataSegmentLength").map_or(8192, |v| v.parse::<usize>().unwrap());
        let first = self.keys.get("FirstBurstLength").map_or(65536, |v| v.parse::<usize>().unwrap());
        let imm = if immediate_ok { data.len().min(seg).min(first) } else { 0 };
        let b = self.command_bhs(cdb, data.len() as u32, false, true, imm);
        let itt = u32::from_be_bytes(b[16..20].try_into().unwrap());
        self.send(&b, &data[..imm]).unwrap();
        loop {
            let p = self.recv().unwrap_or_else(|e| panic!("no answer to CDB {cdb:02x?}: {e}"));
            assert_eq!(p.itt(), itt, "{p:?}");
            match p.op() {
                wire::op::R2T => {
                    let (ttt, off, len) = (p.u32(20), p.u32(40) as usize, p.u32(44) as usize);
                    let mut sent = 0;
                    let mut datasn = 0;
                    while sent < len {
                        let n = (len - sent).min(seg);
                        let fin = sent + n == len;
                        let mut d = bhs(wire::op::DATA_OUT, false, if fin { 0x80 } else { 0 }, n, self.lun, itt);
                        put32(&mut d, 20, ttt);
                        put32(&mut d, 28, self.exp_statsn);
                        put32(&mut d, 36, datasn);
                        put32(&mut d, 40, (off + sent) as u32);
                        self.send(&d, &data[off + sent..off + sent + n]).unwrap();
                        sent += n;
                        datasn += 1;
                    }
                }
                wire::op::SCSI_RESPONSE => {
                    let sense = if p.data.len() >= 2 {
                        p.data[2..2 + u16::from_be_bytes([p.data[0], p.data[1]]) as usize].to_vec()
                    } else {
                        Vec::new()
                    };
                    return (p.bhs[3], sense);
                }
                _ => panic!("unexpected answer to CDB {cdb:02x?}: {p:?}"),
            }
        }
    }
}
