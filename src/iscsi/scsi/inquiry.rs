//! INQUIRY (SPC-4 6.6): the standard data and the VPD pages initiators read before they use a
//! disk — 0x00 supported pages, 0x80 unit serial, 0x83 device identification (what Windows
//! and multipath key the disk on), 0xB0 block limits, 0xB1 characteristics, 0xB2 provisioning.

use super::{be16, block, Action, Lun, Sense};

/// Pages in ascending order, as SPC-4 requires for page 0x00.
const PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2];
/// Standard INQUIRY data length: 96 bytes (36 + vendor-specific + 8 version descriptors).
const STANDARD_LEN: usize = 96;
/// Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
const VERSIONS: [u16; 4] = [0x00A0, 0x0960, 0x0460, 0x04C0];
/// The T10 vendor identification, 8 bytes.
pub const VENDOR: &[u8; 8] = b"BOOTFARM";

/// ASCII text for an identification field: printable bytes kept, others '_', padded with
/// spaces (SPC-4 4.4.1 allows 0x20..=0x7E only).
fn ascii_field(dst: &mut [u8], text: &str) {
    dst.fill(b' ');
    for (d, c) in dst.iter_mut().zip(text.bytes()) {
        *d = if (0x20..=0x7E).contains(&c) { c } else { b'_' };
    }
}

pub(super) fn inquiry(cdb: &[u8], lun_id: u64, lun: &Lun, out: &mut Vec<u8>) -> Result<Action, Sense> {
    if cdb[1] & 0xFE != 0 {
        // CMDDT (obsolete) and the reserved bits.
        return Err(Sense::invalid_field(1, Some(if cdb[1] & 0x02 != 0 { 1 } else { 7 })));
    }
    let evpd = cdb[1] & 0x01 != 0;
    let page = cdb[2];
    let alloc = usize::from(be16(cdb, 3));
    if !evpd && page != 0 {
        return Err(Sense::invalid_field(2, None));
    }
    let start = out.len();
    if !evpd {
        standard(lun_id != 0, lun, out);
    } else if lun_id != 0 {
        return Err(Sense::lun_not_supported());
    } else {
        match page {
            0x00 => {
                out.extend_from_slice(&[0, 0x00, 0, PAGES.len() as u8]);
                out.extend_from_slice(&PAGES);
            }
            0x80 => serial(lun, out),
            0x83 => identification(lun, out),
            0xB0 => block_limits(lun, out),
            0xB1 => {
                let mut p = [0u8; 64];
                p[1] = 0xB1;
                p[3] = 0x3C;
                // MEDIUM ROTATION RATE 1: non-rotating (Windows and Linux then skip seek tuning).
                p[5] = 0x01;
                out.extend_from_slice(&p);
            }
            0xB2 => provisioning(lun, out),
            _ => return Err(Sense::invalid_field(2, None)),
        }
    }
    out.truncate(start + alloc.min(out.len() - start));
    Ok(Action::Data)
}

fn standard(absent: bool, lun: &Lun, out: &mut Vec<u8>) {
    let mut d = [0u8; STANDARD_LEN];
    // Peripheral qualifier 3 / type 1Fh: no logical unit at this LUN.
    d[0] = if absent { 0x7F } else { 0x00 };
    d[2] = 0x06; // SPC-4
    d[3] = 0x10 | 0x02; // HISUP, response data format 2
    d[4] = (STANDARD_LEN - 5) as u8;
    d[5] = 0x10; // TPGS 01b: implicit ALUA (REPORT TARGET PORT GROUPS answers)
    d[7] = 0x02; // CMDQUE
    d[8..16].copy_from_slice(VENDOR);
    ascii_field(&mut d[16..32], lun.vdisk);
    // Revision: "major.minor" of the package (4 characters; "0.1.0" would be cut to "0.1.").
    let v = env!("CARGO_PKG_VERSION");
    let minor_end = v.match_indices('.').nth(1).map_or(v.len(), |(i, _)| i);
    ascii_field(&mut d[32..36], &v[..minor_end]);
    for (i, v) in VERSIONS.iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&d);
}

/// Unit serial number: the designator in hex, so it is as unique and as stable as VPD 0x83.
fn serial(lun: &Lun, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(&[0, 0x80, 0, 32]);
    for b in lun.designator {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

/// Longest vdisk name carried in the T10 vendor id designator (the designator length is a byte).
const T10_NAME_MAX: usize = 200;

fn identification(lun: &Lun, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0, 0x83, 0, 0]);
    // NAA 6 (IEEE Registered Extended), binary, associated with the logical unit.
    out.extend_from_slice(&[0x01, 0x03, 0, 16]);
    out.extend_from_slice(&lun.designator);
    // T10 vendor id: "BOOTFARM" + the vdisk name, ASCII, logical unit.
    let name: Vec<u8> = lun.vdisk.bytes().take(T10_NAME_MAX).map(|c| if (0x20..=0x7E).contains(&c) { c } else { b'_' }).collect();
    out.extend_from_slice(&[0x02, 0x01, 0, (8 + name.len()) as u8]);
    out.extend_from_slice(VENDOR);
    out.extend_from_slice(&name);
    // Relative target port and target port group, iSCSI (protocol 5), PIV, target port.
    let [ph, pl] = lun.relative_port.to_be_bytes();
    out.extend_from_slice(&[0x51, 0x94, 0, 4, 0, 0, ph, pl]);
    let [gh, gl] = lun.port_group.to_be_bytes();
    out.extend_from_slice(&[0x51, 0x95, 0, 4, 0, 0, gh, gl]);
    let len = (out.len() - start - 4) as u16;
    out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn block_limits(lun: &Lun, out: &mut Vec<u8>) {
    let mut p = [0u8; 64];
    p[1] = 0xB0;
    p[3] = 0x3C;
    // WSNZ 0 (byte 4): WRITE SAME with 0 blocks means "to the end", within the maximum length.
    let gran = block::cache_granularity(lun) as u16;
    p[6..8].copy_from_slice(&gran.to_be_bytes());
    p[8..12].copy_from_slice(&lun.max_transfer_blocks.to_be_bytes());
    p[12..16].copy_from_slice(&lun.max_transfer_blocks.to_be_bytes());
    if lun.writable {
        p[20..24].copy_from_slice(&lun.write_same_max_blocks.to_be_bytes());
        p[24..28].copy_from_slice(&lun.unmap_descriptors_max.to_be_bytes());
        p[28..32].copy_from_slice(&u32::from(gran).to_be_bytes());
        p[36..44].copy_from_slice(&u64::from(lun.write_same_max_blocks).to_be_bytes());
    }
    out.extend_from_slice(&p);
}

fn provisioning(lun: &Lun, out: &mut Vec<u8>) {
    let mut p = [0u8; 8];
    p[1] = 0xB2;
    p[3] = 4;
    if lun.writable {
        // LBPU, LBPWS, LBPWS10, LBPRZ: UNMAP and WRITE SAME (10/16) with UNMAP deallocate in
        // the cache, and deallocated blocks read as zeros. Provisioning type 2: thin.
        p[5] = 0x80 | 0x40 | 0x20 | 0x04;
        p[6] = 0x02;
    }
    out.extend_from_slice(&p);
}
