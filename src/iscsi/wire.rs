//! iSCSI PDU codec (RFC 7143 section 11): the 48-byte Basic Header Segment of every PDU, typed
//! views of what an initiator sends and emitters for what a target sends. Big endian. Parsing
//! reads a BHS in place and allocates nothing; the data segment, AHS and digests stay in the
//! caller's buffer (their lengths come from [`pdu_len`]).

use crate::image::bytes::crc32c_append;

mod emit;
pub use emit::*;

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// The reserved tag ("no task", "no transfer tag").
pub const TAG_NONE: u32 = 0xFFFF_FFFF;

/// Opcodes, initiator to target.
pub mod op {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_COMMAND: u8 = 0x01;
    pub const TASK_MGMT: u8 = 0x02;
    pub const LOGIN: u8 = 0x03;
    pub const TEXT: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT: u8 = 0x06;
    pub const SNACK: u8 = 0x10;
    // Target to initiator.
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RESPONSE: u8 = 0x21;
    pub const TASK_MGMT_RESPONSE: u8 = 0x22;
    pub const LOGIN_RESPONSE: u8 = 0x23;
    pub const TEXT_RESPONSE: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RESPONSE: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC: u8 = 0x32;
    pub const REJECT: u8 = 0x3F;
}

/// Byte 0: the immediate-delivery bit; the opcode is the low six bits.
pub const FLAG_IMMEDIATE: u8 = 0x40;
/// Byte 1, most PDUs: the final bit.
pub const FLAG_FINAL: u8 = 0x80;
/// Byte 1 of Login and Text: continue (the text goes on in the next PDU).
pub const FLAG_CONTINUE: u8 = 0x40;
/// Byte 1 of a Login: transit to the next stage.
pub const FLAG_TRANSIT: u8 = 0x80;
/// Byte 1 of a SCSI Command: read / write.
pub const FLAG_READ: u8 = 0x40;
pub const FLAG_WRITE: u8 = 0x20;
/// Byte 1 of Data-In: acknowledge, residual overflow / underflow, status present.
pub const FLAG_ACK: u8 = 0x40;
pub const FLAG_OVERFLOW: u8 = 0x04;
pub const FLAG_UNDERFLOW: u8 = 0x02;
pub const FLAG_STATUS: u8 = 0x01;

/// Login stages (CSG / NSG).
pub const STAGE_SECURITY: u8 = 0;
pub const STAGE_OPERATIONAL: u8 = 1;
pub const STAGE_FULL_FEATURE: u8 = 3;

/// Reject reasons (11.17.1).
pub mod reject {
    pub const DATA_DIGEST: u8 = 0x02;
    pub const SNACK: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_COMMAND: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_DATA_ACK: u8 = 0x08;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const OUT_OF_RESOURCES: u8 = 0x0A;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0C;
}

/// Task management functions (11.5.1) and responses (11.6.1).
pub mod tmf {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_ACA: u8 = 3;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LUN_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;

    pub const COMPLETE: u8 = 0;
    pub const NO_TASK: u8 = 1;
    pub const NO_LUN: u8 = 2;
    pub const NOT_SUPPORTED: u8 = 5;
    pub const REJECTED: u8 = 255;
}

/// SCSI status bytes and the iSCSI response byte of a SCSI Response.
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const TASK_ABORTED: u8 = 0x40;
    /// Response byte: completed at the target (the status says how).
    pub const COMPLETED: u8 = 0x00;
    pub const TARGET_FAILURE: u8 = 0x01;
}

/// Why a BHS was not understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Fewer than 48 bytes.
    Short,
    /// An opcode an initiator may not send (a target opcode or an unassigned one).
    Opcode(u8),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Short => write!(f, "PDU header shorter than 48 bytes"),
            WireError::Opcode(o) => write!(f, "opcode {o:#04x} is not an initiator opcode"),
        }
    }
}

#[inline]
fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
#[inline]
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
#[inline]
fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}

/// A view of a BHS: the fields every PDU has at the same place.
#[derive(Clone, Copy)]
pub struct Bhs<'a>(&'a [u8; BHS_LEN]);

impl<'a> Bhs<'a> {
    /// The header at the start of `buf`, if 48 bytes are there.
    pub fn new(buf: &'a [u8]) -> Result<Bhs<'a>, WireError> {
        buf.get(..BHS_LEN).map(|b| Bhs(b.try_into().unwrap())).ok_or(WireError::Short)
    }
    pub fn bytes(&self) -> &'a [u8; BHS_LEN] {
        self.0
    }
    pub fn opcode(&self) -> u8 {
        self.0[0] & 0x3F
    }
    pub fn immediate(&self) -> bool {
        self.0[0] & FLAG_IMMEDIATE != 0
    }
    pub fn flags(&self) -> u8 {
        self.0[1]
    }
    pub fn is_final(&self) -> bool {
        self.0[1] & FLAG_FINAL != 0
    }
    /// TotalAHSLength in bytes (the field counts 4-byte words).
    pub fn ahs_len(&self) -> usize {
        self.0[4] as usize * 4
    }
    /// DataSegmentLength in bytes, without padding.
    pub fn data_len(&self) -> u32 {
        (self.0[5] as u32) << 16 | (self.0[6] as u32) << 8 | self.0[7] as u32
    }
    pub fn lun(&self) -> u64 {
        be64(self.0, 8)
    }
    /// Initiator Task Tag.
    pub fn itt(&self) -> u32 {
        be32(self.0, 16)
    }
    pub fn u32_at(&self, off: usize) -> u32 {
        be32(self.0, off)
    }
}

/// Digests in force on a connection (after login: CRC32C or none, per direction the same).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// Where the parts of a PDU lie, from its BHS: the AHS after the BHS, then the header digest,
/// then the data segment padded to 4 bytes, then the data digest (only when there is data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub ahs_len: usize,
    /// Offset of the data segment from the PDU's start.
    pub data_off: usize,
    pub data_len: usize,
    /// The whole PDU, padding and digests included.
    pub total: usize,
}

/// The layout of the PDU whose header is `bhs`.
pub fn layout(bhs: &Bhs, d: Digests) -> Layout {
    let ahs_len = bhs.ahs_len();
    let data_off = BHS_LEN + ahs_len + if d.header { 4 } else { 0 };
    let data_len = bhs.data_len() as usize;
    let mut total = data_off + pad4(data_len);
    if d.data && data_len > 0 {
        total += 4;
    }
    Layout { ahs_len, data_off, data_len, total }
}

/// Total length of a PDU from its BHS.
pub fn pdu_len(bhs: &Bhs, d: Digests) -> usize {
    layout(bhs, d).total
}

/// `n` rounded up to a multiple of 4.
pub const fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends the zero padding that follows a data segment of `len` bytes.
pub fn put_padding(out: &mut Vec<u8>, len: usize) {
    out.resize(out.len() + (pad4(len) - len), 0);
}

/// A digest as sent: CRC32C, least significant byte first (RFC 7143 B.4's byte order).
pub fn digest_bytes(crc: u32) -> [u8; 4] {
    crc.to_le_bytes()
}

/// The CRC32C over `parts` one after another (a header digest covers BHS + AHS; a data digest
/// the data and its padding).
pub fn crc32c(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0, |c, p| crc32c_append(c, p))
}

/// Serial number arithmetic (RFC 1982, 32 bits) for CmdSN/StatSN: `a < b`.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}
/// `a <= b` in serial number arithmetic.
pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

/// The LUN number of an 8-byte LUN field (SAM: peripheral or flat space addressing, single
/// level). Any other form comes back as `u64::MAX` (no such LUN).
pub fn lun_id(field: u64) -> u64 {
    let b = field.to_be_bytes();
    if b[2..].iter().any(|&x| x != 0) {
        return u64::MAX;
    }
    match b[0] >> 6 {
        0 if b[0] == 0 => b[1] as u64,
        0b01 => ((b[0] as u64 & 0x3F) << 8) | b[1] as u64,
        _ => u64::MAX,
    }
}

/// The LUN field for LUN `id` (peripheral addressing below 256, flat space up to 16383), as
/// REPORT LUNS and every target PDU carry it.
pub fn lun_field(id: u64) -> u64 {
    let b0 = if id < 256 { 0 } else { 0x40 | ((id >> 8) as u8 & 0x3F) };
    u64::from_be_bytes([b0, id as u8, 0, 0, 0, 0, 0, 0])
}

/// Additional header segment type 1: an extended CDB's bytes past the first 16.
pub const AHS_EXTENDED_CDB: u8 = 1;
/// AHS type 2: the expected read length of a bidirectional command.
pub const AHS_BIDI_READ_LEN: u8 = 2;

/// The AHS entries of `ahs` as (type, its AHS-specific bytes: byte 3 of the entry on, AHSLength
/// of them); a malformed entry ends the walk with `Err`.
pub fn ahs_entries(ahs: &[u8]) -> impl Iterator<Item = Result<(u8, &[u8]), ()>> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at >= ahs.len() {
            return None;
        }
        let len = if at + 4 <= ahs.len() { be16(ahs, at) as usize } else { 0 };
        let end = at + 3 + len;
        if len == 0 || end > ahs.len() {
            at = ahs.len();
            return Some(Err(()));
        }
        let entry = (ahs[at + 2], &ahs[at + 3..end]);
        at += pad4(3 + len);
        Some(Ok(entry))
    })
}

// ---------- initiator PDUs ----------

/// A PDU an initiator sends, decoded from its BHS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    NopOut(NopOut),
    Command(Command),
    TaskMgmt(TaskMgmt),
    Login(LoginReq),
    Text(TextReq),
    DataOut(DataOut),
    Logout(LogoutReq),
    Snack(Snack),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: u64,
    pub itt: u32,
    /// TAG_NONE for a ping of its own; else the tag of our NOP-In it answers.
    pub ttt: u32,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub data_len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    pub immediate: bool,
    pub final_: bool,
    pub read: bool,
    pub write: bool,
    pub attr: u8,
    pub lun: u64,
    pub itt: u32,
    pub expected_len: u32,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub cdb: [u8; 16],
    pub ahs_len: usize,
    /// Immediate data that follows the header.
    pub data_len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskMgmt {
    pub immediate: bool,
    pub function: u8,
    pub lun: u64,
    pub itt: u32,
    pub referenced_tag: u32,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub ref_cmdsn: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginReq {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub data_len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextReq {
    pub immediate: bool,
    pub final_: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub data_len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataOut {
    pub final_: bool,
    pub lun: u64,
    pub itt: u32,
    /// The R2T's tag, or TAG_NONE for unsolicited data.
    pub ttt: u32,
    pub exp_statsn: u32,
    pub data_sn: u32,
    pub offset: u32,
    pub data_len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogoutReq {
    pub immediate: bool,
    /// 0 close the session, 1 close the connection, 2 remove it for recovery.
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmdsn: u32,
    pub exp_statsn: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snack {
    pub kind: u8,
    pub itt: u32,
    pub ttt: u32,
    pub exp_statsn: u32,
    pub beg_run: u32,
    pub run_length: u32,
}

impl Request {
    /// Decodes an initiator's BHS.
    pub fn parse(bhs: &Bhs) -> Result<Request, WireError> {
        let b = bhs.bytes();
        let immediate = bhs.immediate();
        let final_ = bhs.is_final();
        let data_len = bhs.data_len();
        let (itt, lun) = (bhs.itt(), bhs.lun());
        Ok(match bhs.opcode() {
            op::NOP_OUT => {
                Request::NopOut(NopOut { immediate, lun, itt, ttt: be32(b, 20), cmdsn: be32(b, 24), exp_statsn: be32(b, 28), data_len })
            }
            op::SCSI_COMMAND => Request::Command(Command {
                immediate,
                final_,
                read: b[1] & FLAG_READ != 0,
                write: b[1] & FLAG_WRITE != 0,
                attr: b[1] & 0x07,
                lun,
                itt,
                expected_len: be32(b, 20),
                cmdsn: be32(b, 24),
                exp_statsn: be32(b, 28),
                cdb: b[32..48].try_into().unwrap(),
                ahs_len: bhs.ahs_len(),
                data_len,
            }),
            op::TASK_MGMT => Request::TaskMgmt(TaskMgmt {
                immediate,
                function: b[1] & 0x7F,
                lun,
                itt,
                referenced_tag: be32(b, 20),
                cmdsn: be32(b, 24),
                exp_statsn: be32(b, 28),
                ref_cmdsn: be32(b, 32),
            }),
            op::LOGIN => Request::Login(LoginReq {
                transit: b[1] & FLAG_TRANSIT != 0,
                cont: b[1] & FLAG_CONTINUE != 0,
                csg: (b[1] >> 2) & 3,
                nsg: b[1] & 3,
                version_max: b[2],
                version_min: b[3],
                isid: b[8..14].try_into().unwrap(),
                tsih: be16(b, 14),
                itt,
                cid: be16(b, 20),
                cmdsn: be32(b, 24),
                exp_statsn: be32(b, 28),
                data_len,
            }),
            op::TEXT => Request::Text(TextReq {
                immediate,
                final_,
                cont: b[1] & FLAG_CONTINUE != 0,
                lun,
                itt,
                ttt: be32(b, 20),
                cmdsn: be32(b, 24),
                exp_statsn: be32(b, 28),
                data_len,
            }),
            op::DATA_OUT => Request::DataOut(DataOut {
                final_,
                lun,
                itt,
                ttt: be32(b, 20),
                exp_statsn: be32(b, 28),
                data_sn: be32(b, 36),
                offset: be32(b, 40),
                data_len,
            }),
            op::LOGOUT => Request::Logout(LogoutReq {
                immediate,
                reason: b[1] & 0x7F,
                itt,
                cid: be16(b, 20),
                cmdsn: be32(b, 24),
                exp_statsn: be32(b, 28),
            }),
            op::SNACK => Request::Snack(Snack {
                kind: b[1] & 0x0F,
                itt,
                ttt: be32(b, 20),
                exp_statsn: be32(b, 28),
                beg_run: be32(b, 40),
                run_length: be32(b, 44),
            }),
            o => return Err(WireError::Opcode(o)),
        })
    }

    /// The CmdSN a PDU carries, for those that have one in the command window.
    pub fn cmdsn(&self) -> Option<u32> {
        match self {
            Request::NopOut(p) => Some(p.cmdsn),
            Request::Command(p) => Some(p.cmdsn),
            Request::TaskMgmt(p) => Some(p.cmdsn),
            Request::Login(p) => Some(p.cmdsn),
            Request::Text(p) => Some(p.cmdsn),
            Request::Logout(p) => Some(p.cmdsn),
            Request::DataOut(_) | Request::Snack(_) => None,
        }
    }
}

#[cfg(test)]
mod tests;
