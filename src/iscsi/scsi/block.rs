//! The block commands (SBC-3): READ/WRITE 6/10/12/16, WRITE AND VERIFY, VERIFY, SYNCHRONIZE
//! CACHE, WRITE SAME 10/16, UNMAP, READ CAPACITY 10/16, GET LBA STATUS. Every LBA range is
//! checked against the end of the LUN with overflow-safe arithmetic, every length against the
//! LUN's limits (VPD page B0 announces the same figures).

use super::{be16, be32, be64, op, Action, Lun, Sense};

/// LBA + count past the end (or wrapping) is LOGICAL BLOCK ADDRESS OUT OF RANGE.
fn in_range(lba: u64, blocks: u64, lun: &Lun) -> Result<(), Sense> {
    match lba.checked_add(blocks) {
        Some(end) if end <= lun.blocks => Ok(()),
        _ => Err(Sense::lba_out_of_range()),
    }
}

/// (LBA, transfer length, offset of the length field) of a READ/WRITE/VERIFY-shaped CDB.
fn lba_len(cdb: &[u8]) -> (u64, u64, u16) {
    match cdb[0] >> 5 {
        0 => {
            let lba = u64::from(cdb[1] & 0x1F) << 16 | u64::from(be16(cdb, 2));
            // 6-byte READ/WRITE: a transfer length of 0 means 256 blocks (SBC-3 5.15).
            let n = if cdb[4] == 0 { 256 } else { u64::from(cdb[4]) };
            (lba, n, 4)
        }
        1 | 2 => (u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7)), 7),
        5 => (u64::from(be32(cdb, 2)), u64::from(be32(cdb, 6)), 6),
        _ => (be64(cdb, 2), u64::from(be32(cdb, 10)), 10),
    }
}

/// RDPROTECT / WRPROTECT / VRPROTECT: no protection information here, so anything but 0 is
/// INVALID FIELD IN CDB (what libiscsi's *_rdprotect/*_wrprotect tests expect).
fn no_protect(cdb: &[u8]) -> Result<(), Sense> {
    if cdb[1] & 0xE0 != 0 {
        return Err(Sense::invalid_field(1, Some(7)));
    }
    Ok(())
}

fn transfer_limit(n: u64, at: u16, lun: &Lun) -> Result<(), Sense> {
    if n > u64::from(lun.max_transfer_blocks) {
        return Err(Sense::invalid_field(at, None));
    }
    Ok(())
}

pub(super) fn read(cdb: &[u8], lun: &Lun) -> Result<Action, Sense> {
    if cdb[0] != op::READ_6 {
        no_protect(cdb)?;
    }
    let (lba, n, at) = lba_len(cdb);
    transfer_limit(n, at, lun)?;
    in_range(lba, n, lun)?;
    if n == 0 {
        return Ok(Action::Good);
    }
    Ok(Action::Read { lba, blocks: n as u32 })
}

/// WRITE 6/10/12/16 and WRITE AND VERIFY 10/12/16 (a write whose status waits until the data
/// is where a read finds it: the same as FUA here).
pub(super) fn write(cdb: &[u8], lun: &Lun) -> Result<Action, Sense> {
    let six = cdb[0] == op::WRITE_6;
    if !six {
        no_protect(cdb)?;
    }
    let (lba, n, at) = lba_len(cdb);
    transfer_limit(n, at, lun)?;
    if !lun.writable {
        return Err(Sense::write_protected());
    }
    in_range(lba, n, lun)?;
    if n == 0 {
        return Ok(Action::Good);
    }
    let verify = matches!(cdb[0], op::WRITE_VERIFY_10 | op::WRITE_VERIFY_12 | op::WRITE_VERIFY_16);
    let fua = verify || (!six && cdb[1] & 0x08 != 0);
    Ok(Action::Write { lba, blocks: n as u32, fua })
}

/// ORWRITE (16): a WRITE whose data is ORed with the blocks' contents (SBC-4 5.10). ORPROTECT
/// must be 0 (no protection information); BMOP other than 0 (the plain OR) is not offered.
pub(super) fn orwrite(cdb: &[u8], lun: &Lun) -> Result<Action, Sense> {
    no_protect(cdb)?;
    if cdb[1] & 0x07 != 0 {
        return Err(Sense::invalid_field(1, Some(2)));
    }
    match write(cdb, lun)? {
        Action::Write { lba, blocks, fua } => Ok(Action::OrWrite { lba, blocks, fua }),
        other => Ok(other),
    }
}

/// VERIFY 10/12/16: BYTCHK 0 checks the range only (the medium is memory and an image that
/// verified at load); BYTCHK 1 compares the Data-Out with the blocks.
pub(super) fn verify(cdb: &[u8], lun: &Lun) -> Result<Action, Sense> {
    no_protect(cdb)?;
    let bytchk = (cdb[1] >> 1) & 3;
    if bytchk > 1 {
        // 10b is reserved; 11b (one block compared with every block) is not offered.
        return Err(Sense::invalid_field(1, Some(2)));
    }
    let (lba, n, at) = lba_len(cdb);
    if bytchk == 1 {
        transfer_limit(n, at, lun)?;
    }
    in_range(lba, n, lun)?;
    if n == 0 || bytchk == 0 {
        return Ok(Action::Good);
    }
    Ok(Action::Compare { lba, blocks: n as u32 })
}

/// PRE-FETCH 10/16: everything is in memory already (the image mapping, the cache), so after
/// the range check the answer is GOOD (SBC-3 allows GOOD instead of CONDITION MET).
pub(super) fn prefetch(cdb: &[u8], lun: &Lun) -> Result<Action, Sense> {
    let (lba, n) = if cdb[0] == op::PRE_FETCH_10 {
        (u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7)))
    } else {
        (be64(cdb, 2), u64::from(be32(cdb, 10)))
    };
    in_range(lba, n, lun)?;
    Ok(Action::Good)
}

/// SYNCHRONIZE CACHE 10/16: the range (0 blocks = to the end) must lie inside the LUN.
pub(super) fn sync(cdb: &[u8], lun: &Lun) -> Result<Action, Sense> {
    let (lba, n) = if cdb[0] == op::SYNCHRONIZE_CACHE_10 {
        (u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7)))
    } else {
        (be64(cdb, 2), u64::from(be32(cdb, 10)))
    };
    if lba > lun.blocks {
        return Err(Sense::lba_out_of_range());
    }
    in_range(lba, n, lun)?;
    Ok(if lun.writable { Action::Sync } else { Action::Good })
}

/// The range of a WRITE SAME: a count of 0 means "to the end of the LUN" (WSNZ is 0 in VPD
/// B0); either way at most `write_same_max_blocks`.
fn write_same_range(cdb: &[u8], lun: &Lun) -> Result<(u64, u64), Sense> {
    let sixteen = cdb[0] == op::WRITE_SAME_16;
    let (lba, n, at) =
        if sixteen { (be64(cdb, 2), u64::from(be32(cdb, 10)), 10) } else { (u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7)), 7) };
    if lba > lun.blocks {
        return Err(Sense::lba_out_of_range());
    }
    let n = if n == 0 { lun.blocks - lba } else { n };
    if n > u64::from(lun.write_same_max_blocks) {
        return Err(Sense::invalid_field(at, None));
    }
    Ok((lba, n))
}

/// WRITE SAME 10/16: one block of Data-Out (or none with NDOB) repeated over a range of at
/// most `write_same_max_blocks`.
pub(super) fn write_same(cdb: &[u8], lun: &Lun) -> Result<Action, Sense> {
    let sixteen = cdb[0] == op::WRITE_SAME_16;
    no_protect(cdb)?;
    if cdb[1] & 0x10 != 0 {
        // ANCHOR: no anchored state (ANC_SUP = 0 in VPD B2).
        return Err(Sense::invalid_field(1, Some(4)));
    }
    if cdb[1] & 0x06 != 0 {
        // PBDATA / LBDATA (obsolete in SBC-3): no block-address stamping.
        return Err(Sense::invalid_field(1, Some(2)));
    }
    if !sixteen && cdb[1] & 0x01 != 0 {
        return Err(Sense::invalid_field(1, Some(0)));
    }
    let ndob = sixteen && cdb[1] & 0x01 != 0;
    if !lun.writable {
        return Err(Sense::write_protected());
    }
    let (lba, n) = write_same_range(cdb, lun)?;
    in_range(lba, n, lun)?;
    if n == 0 {
        // 0 blocks at the very end: nothing to write.
        return Ok(Action::Good);
    }
    if ndob {
        return Ok(Action::Zero { lba, blocks: n });
    }
    Ok(Action::DataOut { len: lun.block_len })
}

/// WRITE SAME with its one block received: with UNMAP set the range is deallocated whatever
/// the block holds (and reads as zeros after, LBPRZ; what LIO does and libiscsi's
/// WriteSame10/16.UnmapUntilEnd check, sending a block of 0xFF); without it a zero block is a
/// Zero too, anything else a Fill.
pub(super) fn write_same_data(cdb: &[u8], data: &[u8], lun: &Lun) -> Result<Action, Sense> {
    let (lba, n) = write_same_range(cdb, lun)?;
    if data.len() != lun.block_len as usize {
        return Err(Sense::param_list_length());
    }
    let unmap = cdb[1] & 0x08 != 0;
    if unmap || data.iter().all(|&b| b == 0) {
        Ok(Action::Zero { lba, blocks: n })
    } else {
        Ok(Action::Fill { lba, blocks: n })
    }
}

/// Bytes of one UNMAP block descriptor and of the parameter list header.
const UNMAP_HEADER: u32 = 8;
const UNMAP_DESCRIPTOR: u32 = 16;

/// UNMAP: receive the parameter list, bounded by `unmap_descriptors_max` descriptors.
pub(super) fn unmap(cdb: &[u8], lun: &Lun) -> Result<Action, Sense> {
    if cdb[1] & 0x01 != 0 {
        return Err(Sense::invalid_field(1, Some(0)));
    }
    if !lun.writable {
        return Err(Sense::write_protected());
    }
    let len = u32::from(be16(cdb, 7));
    if len == 0 {
        return Ok(Action::Good);
    }
    if len < UNMAP_HEADER || len > UNMAP_HEADER + UNMAP_DESCRIPTOR * lun.unmap_descriptors_max {
        return Err(Sense::param_list_length());
    }
    Ok(Action::DataOut { len })
}

/// UNMAP's parameter list (SBC-3 5.28.2): ranges checked against the end of the LUN and the
/// MAXIMUM UNMAP LBA COUNT; empty ones dropped.
pub(super) fn unmap_data(data: &[u8], lun: &Lun) -> Result<Action, Sense> {
    if data.len() < UNMAP_HEADER as usize {
        return Err(Sense::param_list_length());
    }
    // The block descriptor data length names the list; a shorter Data-Out cuts it.
    let bd_len = usize::from(be16(data, 2)).min(data.len() - UNMAP_HEADER as usize);
    let count = bd_len / UNMAP_DESCRIPTOR as usize;
    if count > lun.unmap_descriptors_max as usize {
        return Err(Sense::invalid_param(2, None));
    }
    let mut ranges = Vec::with_capacity(count);
    for i in 0..count {
        let at = UNMAP_HEADER as usize + i * UNMAP_DESCRIPTOR as usize;
        let (lba, n) = (be64(data, at), u64::from(be32(data, at + 8)));
        if n > u64::from(lun.write_same_max_blocks) {
            return Err(Sense::invalid_param((at + 8) as u16, None));
        }
        in_range(lba, n, lun)?;
        if n > 0 {
            ranges.push((lba, n));
        }
    }
    if ranges.is_empty() {
        return Ok(Action::Good);
    }
    Ok(Action::Unmap(ranges))
}

/// Thin provisioning (LBPME) is on exactly when the LUN has a write cache to unmap into.
fn lbpme(lun: &Lun) -> bool {
    lun.writable
}

/// Logical blocks per write-cache block (4 KiB; a partial one is copied first, so 4 KiB-aligned
/// I/O is what the cache does best). Announced as the optimal transfer and unmap granularity
/// in VPD B0 (Linux takes it as minimum_io_size), not as the physical block exponent of READ
/// CAPACITY 16: libiscsi's GetLBAStatus.UnmapSingle expects a descriptor starting past the
/// requested LBA when LBPPBE > 0, contrary to SBC-4 5.8, and every write is correct at any
/// alignment here.
pub(super) fn cache_granularity(lun: &Lun) -> u32 {
    (crate::nbd::cache::BLOCK as u32 / lun.block_len.max(1)).max(1)
}

pub(super) fn read_capacity_10(cdb: &[u8], lun: &Lun, out: &mut Vec<u8>) -> Result<Action, Sense> {
    if cdb[8] & 0x01 == 0 && be32(cdb, 2) != 0 {
        return Err(Sense::invalid_field(2, None));
    }
    // Past 2^32 blocks the answer is 0xFFFFFFFF: the initiator then asks READ CAPACITY 16.
    let last = u32::try_from(lun.blocks.saturating_sub(1)).unwrap_or(u32::MAX);
    out.extend_from_slice(&last.to_be_bytes());
    out.extend_from_slice(&lun.block_len.to_be_bytes());
    Ok(Action::Data)
}

pub(super) fn read_capacity_16(cdb: &[u8], lun: &Lun, out: &mut Vec<u8>) -> Result<Action, Sense> {
    if cdb[14] & 0x01 == 0 && be64(cdb, 2) != 0 {
        return Err(Sense::invalid_field(2, None));
    }
    let alloc = be32(cdb, 10) as usize;
    let mut d = [0u8; 32];
    d[..8].copy_from_slice(&lun.blocks.saturating_sub(1).to_be_bytes());
    d[8..12].copy_from_slice(&lun.block_len.to_be_bytes());
    // LBPPBE 0 (see cache_granularity).
    if lbpme(lun) {
        // LBPME + LBPRZ: unmapped blocks read as zeros (the cache keeps them as zero ranges).
        d[14] = 0xC0;
    }
    out.extend_from_slice(&d[..alloc.min(d.len())]);
    Ok(Action::Data)
}

/// GET LBA STATUS: the session asks the cache what is mapped from `lba` on and answers with
/// [`lba_status`].
pub(super) fn get_lba_status(cdb: &[u8], lun: &Lun) -> Result<Action, Sense> {
    let lba = be64(cdb, 2);
    if lba >= lun.blocks {
        return Err(Sense::lba_out_of_range());
    }
    let alloc_len = be32(cdb, 10);
    if alloc_len == 0 {
        return Ok(Action::Good);
    }
    // Bound the range asked of the cache: one descriptor per run, at most what fits.
    let blocks = (lun.blocks - lba).min(u64::from(lun.write_same_max_blocks.max(1)));
    Ok(Action::LbaStatus { lba, blocks, alloc_len })
}

/// Most descriptors one GET LBA STATUS answer carries.
pub const LBA_STATUS_DESCRIPTORS_MAX: usize = 64;

/// Writes the GET LBA STATUS parameter data for `lba` from the cache's allocation runs
/// (`(bytes, flags)` in disk order as `nbd::cache::Overlay::status` emits them: flag 1 = hole,
/// 2 = reads as zeros; either is reported deallocated, since LBPRZ holds), cut to `alloc_len`.
pub fn lba_status(lba: u64, runs: &[(u64, u32)], lun: &Lun, alloc_len: u32, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    let bl = u64::from(lun.block_len.max(1));
    let mut at = lba;
    let mut n = 0;
    let mut pending: Option<(u64, u64, u8)> = None;
    let flush = |d: (u64, u64, u8), out: &mut Vec<u8>| {
        // A descriptor holds at most 2^32-1 blocks.
        let blocks = d.1.min(u64::from(u32::MAX));
        out.extend_from_slice(&d.0.to_be_bytes());
        out.extend_from_slice(&(blocks as u32).to_be_bytes());
        out.extend_from_slice(&[d.2, 0, 0, 0]);
    };
    for &(bytes, flags) in runs {
        let blocks = bytes / bl;
        if blocks == 0 {
            continue;
        }
        let status = if flags & 3 != 0 { 1 } else { 0 };
        pending = match pending {
            Some((l, b, s)) if s == status => Some((l, b + blocks, s)),
            Some(d) => {
                if n < LBA_STATUS_DESCRIPTORS_MAX {
                    flush(d, out);
                    n += 1;
                }
                Some((at, blocks, status))
            }
            None => Some((at, blocks, status)),
        };
        at += blocks;
    }
    if let Some(d) = pending {
        if n < LBA_STATUS_DESCRIPTORS_MAX {
            flush(d, out);
        }
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    out.truncate(start + (alloc_len as usize).min(out.len() - start));
}
