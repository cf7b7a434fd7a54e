//! MODE SENSE 6/10 and MODE SELECT 6/10 (SPC-4 6.11-6.14, SBC-3 6.4): the caching, control and
//! informational exceptions pages. Nothing is changeable (the changeable mask is all zeros), so
//! MODE SELECT accepts exactly the current values and refuses any change by field.
//!
//! Caching: WCE = 1. The write cache is volatile — RAM with overflow to an unlinked file,
//! discarded at reboot in standard mode — and in private mode SYNCHRONIZE CACHE is what makes
//! the version file durable (image::write::Writer::sync), so initiators must be told to send it.

use super::{be16, Action, Lun, Sense};

const CACHING: u8 = 0x08;
const CONTROL: u8 = 0x0A;
const INFO_EXCEPTIONS: u8 = 0x1C;
const ALL: u8 = 0x3F;

/// The current (= default) value of a page, or None for one we do not have.
fn page(code: u8) -> Option<&'static [u8]> {
    match code {
        // WCE (byte 2 bit 2) set, RCD 0.
        CACHING => Some(&[0x08, 0x12, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        // GLTSD (no log parameters saved), D_SENSE 0 (fixed-format sense), QAM 0, QERR 0,
        // SWP 0, BUSY TIMEOUT PERIOD FFFFh (unlimited).
        CONTROL => Some(&[0x0A, 0x0A, 0x02, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0]),
        // DEXCPT: no informational exception reporting.
        INFO_EXCEPTIONS => Some(&[0x1C, 0x0A, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        _ => None,
    }
}

pub(super) fn sense(cdb: &[u8], lun: &Lun, out: &mut Vec<u8>) -> Result<Action, Sense> {
    let ten = cdb[0] == super::op::MODE_SENSE_10;
    let llbaa = ten && cdb[1] & 0x10 != 0;
    let dbd = cdb[1] & 0x08 != 0;
    let pc = cdb[2] >> 6;
    let code = cdb[2] & 0x3F;
    let subpage = cdb[3];
    let alloc = if ten { usize::from(be16(cdb, 7)) } else { usize::from(cdb[4]) };
    if pc == 3 {
        return Err(Sense::saving_not_supported());
    }
    let one;
    let codes: &[u8] = match (code, subpage) {
        (ALL, 0x00 | 0xFF) => &[CACHING, CONTROL, INFO_EXCEPTIONS],
        (c, 0x00) if page(c).is_some() => {
            one = [c];
            &one
        }
        (c, _) if c == ALL || page(c).is_some() => return Err(Sense::invalid_field(3, None)),
        _ => return Err(Sense::invalid_field(2, Some(5))),
    };
    let start = out.len();
    // Header: mode data length (filled below), medium type 0, WP when there is no write cache,
    // DPOFUA (DPO and FUA are accepted), block descriptor length.
    let dsp = if lun.writable { 0x10 } else { 0x90 };
    let desc_len: u8 = if dbd {
        0
    } else if llbaa {
        16
    } else {
        8
    };
    if ten {
        out.extend_from_slice(&[0, 0, 0, dsp, u8::from(llbaa && !dbd), 0, 0, desc_len]);
    } else {
        out.extend_from_slice(&[0, 0, dsp, desc_len]);
    }
    match desc_len {
        8 => {
            // Short descriptor: the block count saturates at FFFFFFFFh.
            let n = u32::try_from(lun.blocks).unwrap_or(u32::MAX);
            out.extend_from_slice(&n.to_be_bytes());
            out.push(0);
            out.extend_from_slice(&lun.block_len.to_be_bytes()[1..]);
        }
        16 => {
            out.extend_from_slice(&lun.blocks.to_be_bytes());
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&lun.block_len.to_be_bytes());
        }
        _ => {}
    }
    for &c in codes {
        let p = page(c).expect("listed pages exist");
        if pc == 1 {
            // Changeable values: nothing is.
            out.extend_from_slice(&p[..2]);
            out.extend(std::iter::repeat_n(0, p.len() - 2));
        } else {
            out.extend_from_slice(p);
        }
    }
    // The mode data length counts what follows it, before the allocation length cuts.
    let n = out.len() - start;
    if ten {
        out[start..start + 2].copy_from_slice(&((n - 2) as u16).to_be_bytes());
    } else {
        out[start] = (n - 1) as u8;
    }
    out.truncate(start + alloc.min(n));
    Ok(Action::Data)
}

/// Most bytes of MODE SELECT parameter data received: header, a long block descriptor and
/// every page we have, twice over for slack.
pub const SELECT_LEN_MAX: u32 = 2 * (8 + 16 + 20 + 12 + 12);

pub(super) fn select(cdb: &[u8]) -> Result<Action, Sense> {
    if cdb[1] & 0x01 != 0 {
        // SP: parameters cannot be saved.
        return Err(Sense::invalid_field(1, Some(0)));
    }
    let len = if cdb[0] == super::op::MODE_SELECT_10 { u32::from(be16(cdb, 7)) } else { u32::from(cdb[4]) };
    if len == 0 {
        return Ok(Action::Good);
    }
    if len > SELECT_LEN_MAX {
        return Err(Sense::param_list_length());
    }
    Ok(Action::DataOut { len })
}

/// Checks MODE SELECT parameter data: every page must hold its current values (nothing is
/// changeable), a block descriptor must describe the LUN as it is.
pub(super) fn select_data(cdb: &[u8], data: &[u8], lun: &Lun) -> Result<Action, Sense> {
    let ten = cdb[0] == super::op::MODE_SELECT_10;
    // The parameter list is what the CDB says; more Data-Out than that (a larger Expected Data
    // Transfer Length) is not part of it.
    let len = if ten { usize::from(be16(cdb, 7)) } else { usize::from(cdb[4]) };
    let data = &data[..data.len().min(len)];
    let hdr = if ten { 8 } else { 4 };
    if data.len() < hdr {
        return Err(Sense::param_list_length());
    }
    let (desc_len, long) = if ten { (usize::from(be16(data, 6)), data[4] & 0x01 != 0) } else { (usize::from(data[3]), false) };
    let want = if long { 16 } else { 8 };
    if desc_len != 0 && desc_len != want {
        return Err(Sense::invalid_param(if ten { 6 } else { 3 } as u16, None));
    }
    if data.len() < hdr + desc_len {
        return Err(Sense::param_list_length());
    }
    if desc_len > 0 {
        let d = &data[hdr..hdr + desc_len];
        let (count, len_at, bl) = if long {
            (u64::from_be_bytes(d[..8].try_into().unwrap()), 12, u32::from_be_bytes(d[12..16].try_into().unwrap()))
        } else {
            (u64::from(u32::from_be_bytes(d[..4].try_into().unwrap())), 5, u32::from_be_bytes([0, d[5], d[6], d[7]]))
        };
        // A block count of 0 means "leave it"; otherwise it and the block length must be ours.
        let short_max = u64::from(u32::try_from(lun.blocks).unwrap_or(u32::MAX));
        if count != 0 && count != if long { lun.blocks } else { short_max } {
            return Err(Sense::invalid_param(hdr as u16, None));
        }
        if bl != lun.block_len {
            return Err(Sense::invalid_param((hdr + len_at) as u16, None));
        }
    }
    let mut at = hdr + desc_len;
    while at < data.len() {
        if data.len() - at < 2 {
            return Err(Sense::param_list_length());
        }
        let code = data[at] & 0x3F;
        if data[at] & 0x40 != 0 {
            // SPF: no subpages here.
            return Err(Sense::invalid_param(at as u16, Some(6)));
        }
        let Some(cur) = page(code) else { return Err(Sense::invalid_param(at as u16, Some(5))) };
        let plen = usize::from(data[at + 1]) + 2;
        if plen != cur.len() {
            return Err(Sense::invalid_param((at + 1) as u16, None));
        }
        if data.len() - at < plen {
            return Err(Sense::param_list_length());
        }
        if let Some(i) = (2..plen).find(|&i| data[at + i] != cur[i]) {
            return Err(Sense::invalid_param((at + i) as u16, None));
        }
        at += plen;
    }
    Ok(Action::Good)
}
