//! The SCSI command set of a bootfarm LUN (SBC-3 / SPC-4 subset) as pure functions: a CDB in,
//! an [`Action`] out (data written to `out`, blocks for the session to move, or CHECK
//! CONDITION with its [`Sense`]). No I/O and no state: unit attentions and the write cache
//! live in the session. Every field is validated (reserved bits that matter, NACA/LINK,
//! lengths, LBA + count overflow and the end of the LUN) and every answer is cut at the
//! allocation length. Only LUN 0 exists: others answer INQUIRY (qualifier 3), REPORT LUNS
//! and REQUEST SENSE, everything else LOGICAL UNIT NOT SUPPORTED.

mod block;
mod ident;
mod inquiry;
mod mode;
mod opcodes;
pub mod reserve;
mod sense;
#[cfg(test)]
mod tests;

pub use block::{lba_status, LBA_STATUS_DESCRIPTORS_MAX};
pub use ident::{designator, designator_of, COMPANY_ID};
pub use inquiry::VENDOR;
pub use mode::SELECT_LEN_MAX;
pub use sense::{key, Field, Sense, FIXED_LEN as SENSE_FIXED_LEN};

/// Operation codes and service actions.
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0A;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1A;
    pub const START_STOP_UNIT: u8 = 0x1B;
    pub const PREVENT_ALLOW: u8 = 0x1E;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2A;
    pub const WRITE_VERIFY_10: u8 = 0x2E;
    pub const VERIFY_10: u8 = 0x2F;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const MODE_SENSE_10: u8 = 0x5A;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_16: u8 = 0x8A;
    pub const ORWRITE: u8 = 0x8B;
    pub const WRITE_VERIFY_16: u8 = 0x8E;
    pub const VERIFY_16: u8 = 0x8F;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    pub const SA_READ_CAPACITY_16: u16 = 0x10;
    pub const SA_GET_LBA_STATUS: u16 = 0x12;
    pub const REPORT_LUNS: u8 = 0xA0;
    pub const MAINTENANCE_IN: u8 = 0xA3;
    pub const SA_REPORT_TARGET_PORT_GROUPS: u16 = 0x0A;
    pub const SA_REPORT_SUPPORTED_OPCODES: u16 = 0x0C;
    pub const SA_REPORT_SUPPORTED_TMFS: u16 = 0x0D;
    pub const READ_12: u8 = 0xA8;
    pub const WRITE_12: u8 = 0xAA;
    pub const WRITE_VERIFY_12: u8 = 0xAE;
    pub const VERIFY_12: u8 = 0xAF;
}

/// What the command set needs to know about LUN 0.
#[derive(Debug, Clone, Copy)]
pub struct Lun<'a> {
    pub blocks: u64,
    /// Logical block length in bytes (512; 4096 for a VHDX with 4 KiB logical sectors).
    pub block_len: u32,
    /// The vdisk name: INQUIRY product id (first 16 characters) and the T10 vendor designator.
    pub vdisk: &'a str,
    /// VPD 0x83 NAA 6 designator ([`designator`]); also the unit serial number (VPD 0x80).
    pub designator: [u8; 16],
    /// A write cache exists (standard or private mode): WRITE, UNMAP, WRITE SAME allowed and
    /// thin provisioning (LBPME, LBPRZ) announced. Without one: DATA PROTECT and WP.
    pub writable: bool,
    /// Largest READ/WRITE/VERIFY (BYTCHK 1) in blocks, announced in VPD B0.
    pub max_transfer_blocks: u32,
    /// Largest WRITE SAME and UNMAP range in blocks (MAXIMUM WRITE SAME LENGTH, MAXIMUM UNMAP
    /// LBA COUNT), also the range one GET LBA STATUS describes at most.
    pub write_same_max_blocks: u32,
    /// Most UNMAP block descriptors in one command (MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT).
    pub unmap_descriptors_max: u32,
    /// This node's relative target port identifier (VPD 0x83, REPORT TARGET PORT GROUPS):
    /// non-zero, distinct per farm node so a multipath initiator tells the paths apart.
    pub relative_port: u16,
    /// This node's target port group (one group per node, all active/optimized).
    pub port_group: u16,
}

/// What the session does with a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Data-In bytes were appended to `out` (already cut to the allocation length); status
    /// GOOD. The session computes residuals against the Expected Data Transfer Length.
    Data,
    /// Send `blocks` from `lba` (image + write cache) as Data-In.
    Read {
        lba: u64,
        blocks: u32,
    },
    /// Receive `blocks` for `lba` (immediate/unsolicited data + R2T/Data-Out) into the cache;
    /// `fua`: make them durable (private mode: sync the version file) before the status.
    Write {
        lba: u64,
        blocks: u32,
        fua: bool,
    },
    /// ORWRITE: receive `blocks` for `lba`, OR them with what the LUN holds and write the
    /// result into the cache (as [`Action::Write`]).
    OrWrite {
        lba: u64,
        blocks: u32,
        fua: bool,
    },
    /// Receive `blocks` for `lba` and compare them with what the LUN reads (VERIFY with
    /// BYTCHK 1): equal -> GOOD, else CHECK CONDITION [`Sense::miscompare`] at the byte offset
    /// of the first difference.
    Compare {
        lba: u64,
        blocks: u32,
    },
    /// Receive `len` bytes of parameter data (UNMAP list, WRITE SAME's block, MODE SELECT),
    /// then call [`execute_data`] with the same CDB and everything received: when the
    /// Expected Data Transfer Length is larger than `len` (bounded by the session's limit),
    /// pass all of it — WRITE SAME with more or less than one block is an error
    /// (PARAMETER LIST LENGTH ERROR, libiscsi's WriteSame*.InvalidDataOutSize), which only
    /// `execute_data` can tell.
    DataOut {
        len: u32,
    },
    /// Zero (deallocate) these blocks in the cache: WRITE SAME of a zero block or NDOB.
    Zero {
        lba: u64,
        blocks: u64,
    },
    /// UNMAP: zero (deallocate) each (lba, blocks) range in the cache, in order; every range
    /// is inside the LUN and non-empty.
    Unmap(Vec<(u64, u64)>),
    /// Fill with the one block received, repeated (WRITE SAME with a non-zero block).
    Fill {
        lba: u64,
        blocks: u64,
    },
    /// SYNCHRONIZE CACHE: `cache.sync()`, then GOOD.
    Sync,
    /// GET LBA STATUS: ask the cache for the allocation of `[lba, lba + blocks)` and answer
    /// with [`lba_status`] (cut to `alloc_len`).
    LbaStatus {
        lba: u64,
        blocks: u64,
        alloc_len: u32,
    },
    /// RESERVE(6) / RELEASE(6) for this session's nexus ([`reserve::State`]).
    Reserve6,
    Release6,
    /// PERSISTENT RESERVE IN: the session answers from the LUN's [`reserve::State`].
    PrIn {
        service: u8,
        alloc_len: u16,
    },
    /// PERSISTENT RESERVE OUT (service action, SCOPE and TYPE byte) with its parameter list,
    /// to apply to the LUN's state.
    PrOut {
        service: u8,
        scope_type: u8,
        param: [u8; reserve::PROUT_PARAM_LEN as usize],
    },
    Good,
    Check(Sense),
}

#[inline]
pub(crate) fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}
#[inline]
pub(crate) fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes(b[i..i + 4].try_into().unwrap())
}
#[inline]
pub(crate) fn be64(b: &[u8], i: usize) -> u64 {
    u64::from_be_bytes(b[i..i + 8].try_into().unwrap())
}

/// The CDB length of an opcode's group (SPC-4 4.2.5.1); None for the reserved and vendor groups.
pub fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// Length check and the CONTROL byte: NACA (no ACA support) and LINK (obsolete) refused.
fn check_cdb(cdb: &[u8]) -> Result<usize, Sense> {
    let Some(&opcode) = cdb.first() else { return Err(Sense::invalid_opcode()) };
    let len = match cdb_len(opcode) {
        Some(n) => n,
        None => return Err(Sense::invalid_opcode()),
    };
    if !opcodes::known(opcode) {
        return Err(Sense::invalid_opcode());
    }
    if cdb.len() < len {
        return Err(Sense::invalid_field(0, None));
    }
    let control = cdb[len - 1];
    if control & 0x04 != 0 {
        return Err(Sense::invalid_field((len - 1) as u16, Some(2)));
    }
    if control & 0x01 != 0 {
        return Err(Sense::invalid_field((len - 1) as u16, Some(0)));
    }
    Ok(len)
}

/// True when a pending unit attention is reported instead of running this command (SAM-5
/// 5.14: INQUIRY, REPORT LUNS and REQUEST SENSE run and leave it pending; REQUEST SENSE
/// reports it through [`request_sense`]).
pub fn unit_attention_applies(cdb: &[u8]) -> bool {
    !matches!(cdb.first(), Some(&(op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE)))
}

/// Runs one command on `lun_id` (the 8-byte LUN field as a number; only 0 exists). Data is
/// appended to `out`; on CHECK CONDITION `out` is left as it was.
pub fn execute(cdb: &[u8], lun_id: u64, lun: &Lun, out: &mut Vec<u8>) -> Action {
    let start = out.len();
    match run(cdb, lun_id, lun, out) {
        Ok(a) => a,
        Err(s) => {
            out.truncate(start);
            Action::Check(s)
        }
    }
}

fn run(cdb: &[u8], lun_id: u64, lun: &Lun, out: &mut Vec<u8>) -> Result<Action, Sense> {
    check_cdb(cdb)?;
    let opcode = cdb[0];
    if lun_id != 0 && !matches!(opcode, op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE) {
        return Err(Sense::lun_not_supported());
    }
    match opcode {
        op::TEST_UNIT_READY | op::PREVENT_ALLOW => Ok(Action::Good),
        // A shared disk is never stopped or ejected: START STOP UNIT is accepted as done.
        op::START_STOP_UNIT => Ok(Action::Good),
        op::REQUEST_SENSE => {
            let pending = (lun_id != 0).then(Sense::lun_not_supported);
            Ok(request_sense(cdb, pending.as_ref(), out))
        }
        op::INQUIRY => inquiry::inquiry(cdb, lun_id, lun, out),
        op::REPORT_LUNS => report_luns(cdb, out),
        op::READ_CAPACITY_10 => block::read_capacity_10(cdb, lun, out),
        op::SERVICE_ACTION_IN_16 => match u16::from(cdb[1] & 0x1F) {
            op::SA_READ_CAPACITY_16 => block::read_capacity_16(cdb, lun, out),
            op::SA_GET_LBA_STATUS => block::get_lba_status(cdb, lun),
            _ => Err(Sense::invalid_field(1, Some(4))),
        },
        op::MAINTENANCE_IN => match u16::from(cdb[1] & 0x1F) {
            op::SA_REPORT_SUPPORTED_OPCODES => opcodes::report_opcodes(cdb, out),
            op::SA_REPORT_SUPPORTED_TMFS => opcodes::report_tmfs(cdb, out),
            op::SA_REPORT_TARGET_PORT_GROUPS => opcodes::report_port_groups(cdb, lun, out),
            _ => Err(Sense::invalid_field(1, Some(4))),
        },
        op::MODE_SENSE_6 | op::MODE_SENSE_10 => mode::sense(cdb, lun, out),
        op::MODE_SELECT_6 | op::MODE_SELECT_10 => mode::select(cdb),
        op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => block::read(cdb, lun),
        op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16 | op::WRITE_VERIFY_10 | op::WRITE_VERIFY_12 | op::WRITE_VERIFY_16 => {
            block::write(cdb, lun)
        }
        op::ORWRITE => block::orwrite(cdb, lun),
        op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => block::verify(cdb, lun),
        op::SYNCHRONIZE_CACHE_10 | op::SYNCHRONIZE_CACHE_16 => block::sync(cdb, lun),
        op::PRE_FETCH_10 | op::PRE_FETCH_16 => block::prefetch(cdb, lun),
        op::WRITE_SAME_10 | op::WRITE_SAME_16 => block::write_same(cdb, lun),
        op::UNMAP => block::unmap(cdb, lun),
        op::RESERVE_6 | op::RELEASE_6 => {
            // Third-party and extent reservations are obsolete: byte 1 must be zero.
            if cdb[1] != 0 {
                return Err(Sense::invalid_field(1, None));
            }
            Ok(if opcode == op::RESERVE_6 { Action::Reserve6 } else { Action::Release6 })
        }
        op::PERSISTENT_RESERVE_IN => match cdb[1] & 0x1F {
            service @ 0..=2 => Ok(Action::PrIn { service, alloc_len: be16(cdb, 7) }),
            _ => Err(Sense::invalid_field(1, Some(4))),
        },
        op::PERSISTENT_RESERVE_OUT => match be32(cdb, 5) {
            reserve::PROUT_PARAM_LEN => Ok(Action::DataOut { len: reserve::PROUT_PARAM_LEN }),
            _ => Err(Sense::param_list_length()),
        },
        _ => Err(Sense::invalid_opcode()),
    }
}

/// The second half of a command that asked for [`Action::DataOut`]: `data` is what the
/// initiator sent (at most the length asked for).
pub fn execute_data(cdb: &[u8], data: &[u8], lun: &Lun, out: &mut Vec<u8>) -> Action {
    let start = out.len();
    let r = check_cdb(cdb).and_then(|_| match cdb[0] {
        op::WRITE_SAME_10 | op::WRITE_SAME_16 => block::write_same_data(cdb, data, lun),
        op::UNMAP => block::unmap_data(data, lun),
        op::MODE_SELECT_6 | op::MODE_SELECT_10 => mode::select_data(cdb, data, lun),
        op::PERSISTENT_RESERVE_OUT => match data.try_into() {
            Ok(param) => Ok(Action::PrOut { service: cdb[1] & 0x1F, scope_type: cdb[2], param }),
            Err(_) => Err(Sense::param_list_length()),
        },
        _ => Err(Sense::invalid_opcode()),
    });
    r.unwrap_or_else(|s| {
        out.truncate(start);
        Action::Check(s)
    })
}

/// REQUEST SENSE: `pending` (a unit attention the session holds, or LOGICAL UNIT NOT
/// SUPPORTED for a LUN that does not exist) or NO SENSE, in the format DESC asks for, cut to
/// the allocation length. Status GOOD either way (SPC-4 6.29).
pub fn request_sense(cdb: &[u8], pending: Option<&Sense>, out: &mut Vec<u8>) -> Action {
    if cdb.len() < 6 || cdb[1] & 0xFE != 0 {
        return Action::Check(Sense::invalid_field(1, Some(7)));
    }
    let start = out.len();
    let s = pending.copied().unwrap_or(Sense::no_sense());
    if cdb[1] & 0x01 != 0 {
        s.write_descriptor(out);
    } else {
        s.write(out);
    }
    out.truncate(start + usize::from(cdb[4]).min(out.len() - start));
    Action::Data
}

/// REPORT LUNS: LUN 0 only (select report 0 all, 1 well-known: none, 2 all), 16 bytes at least.
fn report_luns(cdb: &[u8], out: &mut Vec<u8>) -> Result<Action, Sense> {
    let alloc = be32(cdb, 6) as usize;
    if alloc < 16 {
        return Err(Sense::invalid_field(6, None));
    }
    let luns: u32 = match cdb[2] {
        0x00 | 0x02 => 1,
        0x01 => 0,
        _ => return Err(Sense::invalid_field(2, None)),
    };
    let start = out.len();
    out.extend_from_slice(&(8 * luns).to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend(std::iter::repeat_n(0, 8 * luns as usize));
    out.truncate(start + alloc.min(out.len() - start));
    Ok(Action::Data)
}
