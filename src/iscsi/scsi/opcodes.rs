//! MAINTENANCE IN (0xA3) service actions: REPORT SUPPORTED OPERATION CODES (one table, below,
//! is the list of what `execute` accepts and the CDB bits it looks at), REPORT SUPPORTED TASK
//! MANAGEMENT FUNCTIONS and REPORT TARGET PORT GROUPS (one group, this node's port).

use super::{be16, be32, op, Action, Lun, Sense};

/// One supported command: opcode, service action, CDB usage data (the bits the device server
/// evaluates; byte 0 is the opcode, the service action field holds its value).
struct Cmd {
    op: u8,
    sa: Option<u16>,
    usage: &'static [u8],
}

const fn c(op: u8, usage: &'static [u8]) -> Cmd {
    Cmd { op, sa: None, usage }
}
const fn s(op: u8, sa: u16, usage: &'static [u8]) -> Cmd {
    Cmd { op, sa: Some(sa), usage }
}

/// Control byte: NACA and LINK are evaluated (and refused).
const CTL: u8 = 0x05;
const FF: u8 = 0xFF;

/// In opcode order. READ/WRITE byte 1 shows DPO and FUA (0x18): libiscsi's *_dpofua tests
/// check it against DPOFUA in MODE SENSE.
const COMMANDS: &[Cmd] = &[
    c(op::TEST_UNIT_READY, &[0x00, 0, 0, 0, 0, CTL]),
    c(op::REQUEST_SENSE, &[0x03, 0x01, 0, 0, FF, CTL]),
    c(op::READ_6, &[0x08, 0x1F, FF, FF, FF, CTL]),
    c(op::WRITE_6, &[0x0A, 0x1F, FF, FF, FF, CTL]),
    c(op::INQUIRY, &[0x12, 0x01, FF, FF, FF, CTL]),
    c(op::MODE_SELECT_6, &[0x15, 0x11, 0, 0, FF, CTL]),
    c(op::RESERVE_6, &[0x16, 0, 0, 0, 0, CTL]),
    c(op::RELEASE_6, &[0x17, 0, 0, 0, 0, CTL]),
    c(op::MODE_SENSE_6, &[0x1A, 0x08, FF, FF, FF, CTL]),
    c(op::START_STOP_UNIT, &[0x1B, 0x01, 0, 0x0F, 0xF7, CTL]),
    c(op::PREVENT_ALLOW, &[0x1E, 0, 0, 0, 0x03, CTL]),
    c(op::READ_CAPACITY_10, &[0x25, 0, FF, FF, FF, FF, 0, 0, 0x01, CTL]),
    c(op::READ_10, &[0x28, 0xFE, FF, FF, FF, FF, 0, FF, FF, CTL]),
    c(op::WRITE_10, &[0x2A, 0xFA, FF, FF, FF, FF, 0, FF, FF, CTL]),
    c(op::WRITE_VERIFY_10, &[0x2E, 0xF2, FF, FF, FF, FF, 0, FF, FF, CTL]),
    c(op::VERIFY_10, &[0x2F, 0xF6, FF, FF, FF, FF, 0, FF, FF, CTL]),
    c(op::PRE_FETCH_10, &[0x34, 0x02, FF, FF, FF, FF, 0, FF, FF, CTL]),
    c(op::SYNCHRONIZE_CACHE_10, &[0x35, 0x06, FF, FF, FF, FF, 0, FF, FF, CTL]),
    c(op::WRITE_SAME_10, &[0x41, 0xF9, FF, FF, FF, FF, 0, FF, FF, CTL]),
    c(op::UNMAP, &[0x42, 0x01, 0, 0, 0, 0, 0, FF, FF, CTL]),
    c(op::MODE_SELECT_10, &[0x55, 0x11, 0, 0, 0, 0, 0, FF, FF, CTL]),
    c(op::MODE_SENSE_10, &[0x5A, 0x18, FF, FF, 0, 0, 0, FF, FF, CTL]),
    s(op::PERSISTENT_RESERVE_IN, 0, &[0x5E, 0x00, 0, 0, 0, 0, 0, FF, FF, CTL]),
    s(op::PERSISTENT_RESERVE_IN, 1, &[0x5E, 0x01, 0, 0, 0, 0, 0, FF, FF, CTL]),
    s(op::PERSISTENT_RESERVE_IN, 2, &[0x5E, 0x02, 0, 0, 0, 0, 0, FF, FF, CTL]),
    s(op::PERSISTENT_RESERVE_OUT, 0, &[0x5F, 0x00, 0xFF, 0, 0, FF, FF, FF, FF, CTL]),
    s(op::PERSISTENT_RESERVE_OUT, 1, &[0x5F, 0x01, 0xFF, 0, 0, FF, FF, FF, FF, CTL]),
    s(op::PERSISTENT_RESERVE_OUT, 2, &[0x5F, 0x02, 0xFF, 0, 0, FF, FF, FF, FF, CTL]),
    s(op::PERSISTENT_RESERVE_OUT, 3, &[0x5F, 0x03, 0xFF, 0, 0, FF, FF, FF, FF, CTL]),
    s(op::PERSISTENT_RESERVE_OUT, 4, &[0x5F, 0x04, 0xFF, 0, 0, FF, FF, FF, FF, CTL]),
    s(op::PERSISTENT_RESERVE_OUT, 5, &[0x5F, 0x05, 0xFF, 0, 0, FF, FF, FF, FF, CTL]),
    s(op::PERSISTENT_RESERVE_OUT, 6, &[0x5F, 0x06, 0xFF, 0, 0, FF, FF, FF, FF, CTL]),
    c(op::READ_16, &[0x88, 0xFE, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    c(op::WRITE_16, &[0x8A, 0xFA, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    c(op::ORWRITE, &[0x8B, 0xF8, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    c(op::WRITE_VERIFY_16, &[0x8E, 0xF2, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    c(op::VERIFY_16, &[0x8F, 0xF6, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    c(op::PRE_FETCH_16, &[0x90, 0x02, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    c(op::SYNCHRONIZE_CACHE_16, &[0x91, 0x06, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    c(op::WRITE_SAME_16, &[0x93, 0xF9, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    s(op::SERVICE_ACTION_IN_16, op::SA_READ_CAPACITY_16, &[0x9E, 0x10, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x01, CTL]),
    s(op::SERVICE_ACTION_IN_16, op::SA_GET_LBA_STATUS, &[0x9E, 0x12, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    c(op::REPORT_LUNS, &[0xA0, 0, FF, 0, 0, 0, FF, FF, FF, FF, 0, CTL]),
    s(op::MAINTENANCE_IN, op::SA_REPORT_TARGET_PORT_GROUPS, &[0xA3, 0xEA, 0, 0, 0, 0, FF, FF, FF, FF, 0, CTL]),
    s(op::MAINTENANCE_IN, op::SA_REPORT_SUPPORTED_OPCODES, &[0xA3, 0x0C, 0x87, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    s(op::MAINTENANCE_IN, op::SA_REPORT_SUPPORTED_TMFS, &[0xA3, 0x0D, 0x80, 0, 0, 0, FF, FF, FF, FF, 0, CTL]),
    c(op::READ_12, &[0xA8, 0xFE, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    c(op::WRITE_12, &[0xAA, 0xFA, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    c(op::WRITE_VERIFY_12, &[0xAE, 0xF2, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    c(op::VERIFY_12, &[0xAF, 0xF6, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
];

/// True when `execute` accepts this opcode (any of its service actions).
pub(super) fn known(opcode: u8) -> bool {
    COMMANDS.iter().any(|c| c.op == opcode)
}

/// Timeouts descriptor: length 0Ah, nominal and recommended timeouts "not specified".
const TIMEOUTS: [u8; 12] = [0, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

pub(super) fn report_opcodes(cdb: &[u8], out: &mut Vec<u8>) -> Result<Action, Sense> {
    if cdb[2] & 0x78 != 0 {
        return Err(Sense::invalid_field(2, Some(6)));
    }
    let rctd = cdb[2] & 0x80 != 0;
    let options = cdb[2] & 0x07;
    let (req_op, req_sa) = (cdb[3], be16(cdb, 4));
    let alloc = be32(cdb, 6) as usize;
    let start = out.len();
    let has_sa = COMMANDS.iter().any(|c| c.op == req_op && c.sa.is_some());
    let one = |found: Option<&Cmd>, out: &mut Vec<u8>| match found {
        Some(cmd) => {
            out.extend_from_slice(&[0, 0x03 | if rctd { 0x80 } else { 0 }]);
            out.extend_from_slice(&(cmd.usage.len() as u16).to_be_bytes());
            out.extend_from_slice(cmd.usage);
            if rctd {
                out.extend_from_slice(&TIMEOUTS);
            }
        }
        // SUPPORT 001b: not supported (as the standard defines it), no usage data.
        None => out.extend_from_slice(&[0, 0x01, 0, 0]),
    };
    match options {
        0 => {
            out.extend_from_slice(&[0; 4]);
            for cmd in COMMANDS {
                let [h, l] = cmd.sa.unwrap_or(0).to_be_bytes();
                let flags = if rctd { 0x02 } else { 0 } | u8::from(cmd.sa.is_some());
                let [lh, ll] = (cmd.usage.len() as u16).to_be_bytes();
                out.extend_from_slice(&[cmd.op, 0, h, l, 0, flags, lh, ll]);
                if rctd {
                    out.extend_from_slice(&TIMEOUTS);
                }
            }
            let len = (out.len() - start - 4) as u32;
            out[start..start + 4].copy_from_slice(&len.to_be_bytes());
        }
        // One command by opcode: refused for an opcode that has service actions.
        1 if has_sa => return Err(Sense::invalid_field(2, Some(2))),
        1 => one(COMMANDS.iter().find(|c| c.op == req_op), out),
        // One command by opcode and service action: refused for one without.
        2 if COMMANDS.iter().any(|c| c.op == req_op && c.sa.is_none()) => return Err(Sense::invalid_field(2, Some(2))),
        2 => one(COMMANDS.iter().find(|c| c.op == req_op && c.sa == Some(req_sa)), out),
        // Either: the service action counts only for opcodes that have them.
        3 => one(COMMANDS.iter().find(|c| c.op == req_op && (c.sa.is_none() || c.sa == Some(req_sa))), out),
        _ => return Err(Sense::invalid_field(2, Some(2))),
    }
    out.truncate(start + alloc.min(out.len() - start));
    Ok(Action::Data)
}

/// ABORT TASK, ABORT TASK SET, LOGICAL UNIT RESET, TARGET RESET (iSCSI TARGET WARM RESET).
pub(super) fn report_tmfs(cdb: &[u8], out: &mut Vec<u8>) -> Result<Action, Sense> {
    let repd = cdb[2] & 0x80 != 0;
    let alloc = be32(cdb, 6) as usize;
    if alloc < 4 {
        return Err(Sense::invalid_field(6, None));
    }
    let start = out.len();
    out.extend_from_slice(&[0x80 | 0x40 | 0x08 | 0x02, 0, 0, 0]);
    if repd {
        out[start + 3] = 0x0C;
        out.extend_from_slice(&[0; 12]);
    }
    out.truncate(start + alloc.min(out.len() - start));
    Ok(Action::Data)
}

/// One target port group (this node's), active/optimized, holding this node's one port. The
/// LU is the same on every node (one designator), so a multipath initiator sees one path
/// per node, each in its own group, all optimized.
pub(super) fn report_port_groups(cdb: &[u8], lun: &Lun, out: &mut Vec<u8>) -> Result<Action, Sense> {
    let format = cdb[1] >> 5;
    if format > 1 {
        return Err(Sense::invalid_field(1, Some(7)));
    }
    let alloc = be32(cdb, 6) as usize;
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    if format == 1 {
        // Extended header: format type 1, implicit transition time 0.
        out.extend_from_slice(&[0x10, 0, 0, 0]);
    }
    let [gh, gl] = lun.port_group.to_be_bytes();
    let [ph, pl] = lun.relative_port.to_be_bytes();
    // PREF, state 0 (active/optimized); AO_SUP; group; status 0; one port.
    out.extend_from_slice(&[0x80, 0x01, gh, gl, 0, 0, 0, 1, 0, 0, ph, pl]);
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    out.truncate(start + alloc.min(out.len() - start));
    Ok(Action::Data)
}
