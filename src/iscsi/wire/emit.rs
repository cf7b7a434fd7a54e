//! Emitters for what a target sends (RFC 7143 section 11): each PDU is a typed struct whose
//! `emit` appends its 48-byte BHS to the caller's buffer (the data segment follows, written by
//! the caller). Fields nobody sets stay zero, as the RFC reserves them.

use super::{op, BHS_LEN, FLAG_CONTINUE, FLAG_FINAL, FLAG_OVERFLOW, FLAG_STATUS, FLAG_TRANSIT, FLAG_UNDERFLOW, TAG_NONE};

/// The sequence numbers every target PDU after login carries (StatSN is 0 where a PDU has none
/// to report: Data-In without status, R2T carries the next one unconsumed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sn {
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
}

/// The fields every target PDU here has at the same place: opcode, byte 1, DataSegmentLength,
/// LUN (bytes 8..16), the initiator's task tag (16), a target transfer tag (20) and the three
/// sequence numbers (24..36). Where a PDU reserves the LUN or the transfer tag it leaves them
/// zero (`..Common::ZERO`); its own fields are written over the returned header after.
struct Common {
    opcode: u8,
    flags: u8,
    data_len: u32,
    lun: u64,
    itt: u32,
    ttt: u32,
    sn: Sn,
}

impl Common {
    const ZERO: Common =
        Common { opcode: 0, flags: 0, data_len: 0, lun: 0, itt: 0, ttt: 0, sn: Sn { statsn: 0, exp_cmdsn: 0, max_cmdsn: 0 } };

    /// Appends a BHS with these fields to `out` and returns it for the PDU's own.
    fn emit(self, out: &mut Vec<u8>) -> &mut [u8] {
        debug_assert!(self.data_len < 1 << 24);
        let at = out.len();
        out.resize(at + BHS_LEN, 0);
        let h = &mut out[at..];
        h[0] = self.opcode;
        h[1] = self.flags;
        h[5] = (self.data_len >> 16) as u8;
        h[6] = (self.data_len >> 8) as u8;
        h[7] = self.data_len as u8;
        h[8..16].copy_from_slice(&self.lun.to_be_bytes());
        put32(h, 16, self.itt);
        put32(h, 20, self.ttt);
        put32(h, 24, self.sn.statsn);
        put32(h, 28, self.sn.exp_cmdsn);
        put32(h, 32, self.sn.max_cmdsn);
        h
    }
}

fn put32(out: &mut [u8], o: usize, v: u32) {
    out[o..o + 4].copy_from_slice(&v.to_be_bytes());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NopIn {
    pub lun: u64,
    /// The NOP-Out's tag when answering one; TAG_NONE for our own ping.
    pub itt: u32,
    /// TAG_NONE when answering; our ping's tag (an answer is asked for) otherwise.
    pub ttt: u32,
    pub sn: Sn,
    pub data_len: u32,
}

impl NopIn {
    pub fn emit(&self, out: &mut Vec<u8>) {
        Common { opcode: op::NOP_IN, flags: FLAG_FINAL, data_len: self.data_len, lun: self.lun, itt: self.itt, ttt: self.ttt, sn: self.sn }
            .emit(out);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScsiResponse {
    pub itt: u32,
    /// iSCSI response byte (`status::COMPLETED` or `TARGET_FAILURE`).
    pub response: u8,
    pub status: u8,
    pub sn: Sn,
    pub exp_data_sn: u32,
    /// Positive: underflow by that much; negative: overflow.
    pub residual: i64,
    /// Sense data bytes that follow (SenseLength's 2 bytes included).
    pub data_len: u32,
}

fn residual_flags(residual: i64) -> (u8, u32) {
    match residual {
        0 => (0, 0),
        r if r > 0 => (FLAG_UNDERFLOW, r.min(u32::MAX as i64) as u32),
        r => (FLAG_OVERFLOW, (-r).min(u32::MAX as i64) as u32),
    }
}

impl ScsiResponse {
    pub fn emit(&self, out: &mut Vec<u8>) {
        let (rf, count) = residual_flags(self.residual);
        let h = Common {
            opcode: op::SCSI_RESPONSE,
            flags: FLAG_FINAL | rf,
            data_len: self.data_len,
            itt: self.itt,
            sn: self.sn,
            ..Common::ZERO
        }
        .emit(out);
        h[2] = self.response;
        h[3] = self.status;
        put32(h, 36, self.exp_data_sn);
        put32(h, 44, count);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskMgmtResponse {
    pub itt: u32,
    pub response: u8,
    pub sn: Sn,
}

impl TaskMgmtResponse {
    pub fn emit(&self, out: &mut Vec<u8>) {
        let h = Common { opcode: op::TASK_MGMT_RESPONSE, flags: FLAG_FINAL, itt: self.itt, sn: self.sn, ..Common::ZERO }.emit(out);
        h[2] = self.response;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginResponse {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub sn: Sn,
    pub status_class: u8,
    pub status_detail: u8,
    pub data_len: u32,
}

impl LoginResponse {
    pub fn emit(&self, out: &mut Vec<u8>) {
        let mut f = (self.csg & 3) << 2 | (self.nsg & 3);
        if self.transit {
            f |= FLAG_TRANSIT;
        }
        if self.cont {
            f |= FLAG_CONTINUE;
        }
        let h =
            Common { opcode: op::LOGIN_RESPONSE, flags: f, data_len: self.data_len, itt: self.itt, sn: self.sn, ..Common::ZERO }.emit(out);
        h[2] = self.version_max;
        h[3] = self.version_active;
        h[8..14].copy_from_slice(&self.isid);
        h[14..16].copy_from_slice(&self.tsih.to_be_bytes());
        h[36] = self.status_class;
        h[37] = self.status_detail;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextResponse {
    pub final_: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    /// TAG_NONE when final; a tag of ours when more text follows.
    pub ttt: u32,
    pub sn: Sn,
    pub data_len: u32,
}

impl TextResponse {
    pub fn emit(&self, out: &mut Vec<u8>) {
        let f = if self.final_ { FLAG_FINAL } else { 0 } | if self.cont { FLAG_CONTINUE } else { 0 };
        Common { opcode: op::TEXT_RESPONSE, flags: f, data_len: self.data_len, lun: self.lun, itt: self.itt, ttt: self.ttt, sn: self.sn }
            .emit(out);
    }
}

/// Data-In. With `status: Some(s)` it is the command's last PDU and carries its status (then
/// `sn.statsn` is consumed); without, StatSN is not sent (the field is reserved: 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataIn {
    pub final_: bool,
    pub status: Option<u8>,
    pub lun: u64,
    pub itt: u32,
    pub sn: Sn,
    pub data_sn: u32,
    pub offset: u32,
    /// Meaningful with status only, as in [`ScsiResponse::residual`].
    pub residual: i64,
    pub data_len: u32,
}

impl DataIn {
    pub fn emit(&self, out: &mut Vec<u8>) {
        let mut f = if self.final_ { FLAG_FINAL } else { 0 };
        let (rf, count) = if self.status.is_some() { residual_flags(self.residual) } else { (0, 0) };
        if self.status.is_some() {
            f |= FLAG_STATUS | rf;
        }
        let statsn = if self.status.is_some() { self.sn.statsn } else { 0 };
        let sn = Sn { statsn, ..self.sn };
        let h =
            Common { opcode: op::DATA_IN, flags: f, data_len: self.data_len, lun: self.lun, itt: self.itt, ttt: TAG_NONE, sn }.emit(out);
        h[3] = self.status.unwrap_or(0);
        put32(h, 36, self.data_sn);
        put32(h, 40, self.offset);
        put32(h, 44, count);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogoutResponse {
    pub itt: u32,
    pub response: u8,
    pub sn: Sn,
    pub time2wait: u16,
    pub time2retain: u16,
}

impl LogoutResponse {
    pub fn emit(&self, out: &mut Vec<u8>) {
        let h = Common { opcode: op::LOGOUT_RESPONSE, flags: FLAG_FINAL, itt: self.itt, sn: self.sn, ..Common::ZERO }.emit(out);
        h[2] = self.response;
        h[40..42].copy_from_slice(&self.time2wait.to_be_bytes());
        h[42..44].copy_from_slice(&self.time2retain.to_be_bytes());
    }
}

/// Ready To Transfer: asks for `len` bytes at `offset` of command `itt`'s data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct R2t {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    /// StatSN here is the next one, not consumed.
    pub sn: Sn,
    pub r2t_sn: u32,
    pub offset: u32,
    pub len: u32,
}

impl R2t {
    pub fn emit(&self, out: &mut Vec<u8>) {
        let h =
            Common { opcode: op::R2T, flags: FLAG_FINAL, data_len: 0, lun: self.lun, itt: self.itt, ttt: self.ttt, sn: self.sn }.emit(out);
        put32(h, 36, self.r2t_sn);
        put32(h, 40, self.offset);
        put32(h, 44, self.len);
    }
}

/// Reject: the data segment is the rejected PDU's 48-byte header (the caller appends it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub reason: u8,
    pub sn: Sn,
}

impl Reject {
    pub fn emit(&self, out: &mut Vec<u8>, rejected: &[u8; BHS_LEN]) {
        let h = Common { opcode: op::REJECT, flags: FLAG_FINAL, data_len: BHS_LEN as u32, itt: TAG_NONE, sn: self.sn, ..Common::ZERO }
            .emit(out);
        h[2] = self.reason;
        out.extend_from_slice(rejected);
    }
}

/// Asynchronous Message (11.9): event 1 asks the initiator to log out (a draining target),
/// with the seconds it has for it in parameter 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Async {
    pub lun: u64,
    pub sn: Sn,
    pub event: u8,
    pub vcode: u8,
    pub params: [u16; 3],
    pub data_len: u32,
}

pub const ASYNC_LOGOUT_REQUEST: u8 = 1;

impl Async {
    pub fn emit(&self, out: &mut Vec<u8>) {
        let h = Common {
            opcode: op::ASYNC,
            flags: FLAG_FINAL,
            data_len: self.data_len,
            lun: self.lun,
            itt: TAG_NONE,
            sn: self.sn,
            ..Common::ZERO
        }
        .emit(out);
        h[36] = self.event;
        h[37] = self.vcode;
        for (i, p) in self.params.iter().enumerate() {
            h[38 + 2 * i..40 + 2 * i].copy_from_slice(&p.to_be_bytes());
        }
    }
}
