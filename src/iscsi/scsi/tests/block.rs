//! READ/WRITE, VERIFY, SYNCHRONIZE CACHE, WRITE SAME, UNMAP, GET LBA STATUS.

use super::*;

#[test]
fn reads_of_every_size() {
    let l = lun();
    assert_eq!(run_on(&read10(8, 8), &l).0, Action::Read { lba: 8, blocks: 8 });
    assert_eq!(run_on(&[0x08, 0x00, 0x00, 0x10, 0x01, 0], &l).0, Action::Read { lba: 16, blocks: 1 });
    // READ 6: length 0 is 256 blocks; the LBA is 21 bits.
    assert_eq!(run_on(&[0x08, 0x00, 0x00, 0x00, 0x00, 0], &l).0, Action::Read { lba: 0, blocks: 256 });
    assert_eq!(run_on(&[0xA8, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0], &l).0, Action::Read { lba: 1, blocks: 2 });
    assert_eq!(run_on(&cdb16(0x88, 0, 2040, 8), &l).0, Action::Read { lba: 2040, blocks: 8 });
    // DPO, FUA, RARC, FUA_NV accepted on reads (DPOFUA is announced).
    for f in [0x10, 0x08, 0x18, 0x04, 0x02] {
        let mut c = read10(0, 1);
        c[1] = f;
        assert_eq!(run_on(&c, &l).0, Action::Read { lba: 0, blocks: 1 });
    }
}

#[test]
fn zero_block_reads_and_writes_are_good_but_range_checked() {
    let l = lun();
    assert_eq!(run_on(&read10(0, 0), &l).0, Action::Good);
    assert_eq!(run_on(&read10(2048, 0), &l).0, Action::Good);
    is(check(&read10(2049, 0)), key::ILLEGAL_REQUEST, 0x21, 0);
    is(check(&read10(0x8000_0000, 0)), key::ILLEGAL_REQUEST, 0x21, 0);
    is(check(&read10(u32::MAX, 0)), key::ILLEGAL_REQUEST, 0x21, 0);
    assert_eq!(run_on(&cdb16(0x8A, 0, 0, 0), &l).0, Action::Good);
}

#[test]
fn beyond_the_end_is_lba_out_of_range() {
    // libiscsi *_beyond_eol: past the end, at 2^31, at -1 (wrapping), and a run over the end.
    for i in 1..=256u16 {
        is(check(&read10(2048 + 1 - u32::from(i), i)), key::ILLEGAL_REQUEST, 0x21, 0);
        is(check(&read10(u32::MAX, i)), key::ILLEGAL_REQUEST, 0x21, 0);
        is(check(&cdb16(0x88, 0, u64::MAX, u32::from(i))), key::ILLEGAL_REQUEST, 0x21, 0);
        is(check(&cdb16(0x8A, 0, 0x8000_0000_0000_0000, u32::from(i))), key::ILLEGAL_REQUEST, 0x21, 0);
    }
    is(check(&[0x08, 0x1F, 0xFF, 0xFF, 1, 0]), key::ILLEGAL_REQUEST, 0x21, 0);
    is(check(&[0xAA, 0, 0, 0, 0x07, 0xFF, 0, 0, 0, 2, 0, 0]), key::ILLEGAL_REQUEST, 0x21, 0);
    // The last block itself is fine.
    assert_eq!(run_on(&read10(2047, 1), &lun()).0, Action::Read { lba: 2047, blocks: 1 });
}

#[test]
fn transfer_length_over_the_limit_is_invalid_field() {
    invalid_field_at(check(&read10(0, 513)), 7, None);
    invalid_field_at(check(&cdb16(0x88, 0, 0, 513)), 10, None);
    invalid_field_at(check(&[0xA8, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0]), 6, None);
    let small = Lun { max_transfer_blocks: 128, ..lun() };
    invalid_field_at(check_on(&[0x08, 0, 0, 0, 0, 0], &small), 4, None);
}

#[test]
fn protection_fields_are_invalid() {
    // libiscsi *_rdprotect / *_wrprotect / *_vrprotect: 1..7 in bits 7-5.
    for p in 1..8u8 {
        let mut c = read10(0, 1);
        c[1] = p << 5;
        invalid_field_at(check(&c), 1, Some(7));
        invalid_field_at(check(&cdb16(0x8A, p << 5, 0, 1)), 1, Some(7));
        invalid_field_at(check(&cdb16(0x8F, p << 5, 0, 1)), 1, Some(7));
    }
}

#[test]
fn writes_and_fua() {
    let l = lun();
    assert_eq!(run_on(&[0x2A, 0, 0, 0, 0, 4, 0, 0, 1, 0], &l).0, Action::Write { lba: 4, blocks: 1, fua: false });
    assert_eq!(run_on(&[0x2A, 0x08, 0, 0, 0, 4, 0, 0, 1, 0], &l).0, Action::Write { lba: 4, blocks: 1, fua: true });
    // libiscsi test_write10_flags: DPO, FUA, FUA_NV in any mix.
    for f in [0x10, 0x08, 0x0A, 0x02, 0x1A] {
        assert!(matches!(run_on(&[0x2A, f, 0, 0, 0, 0, 0, 0, 1, 0], &l).0, Action::Write { .. }));
    }
    assert_eq!(run_on(&[0x0A, 0, 0, 1, 0, 0], &l).0, Action::Write { lba: 1, blocks: 256, fua: false });
    assert_eq!(run_on(&cdb16(0x8A, 0x08, 7, 9), &l).0, Action::Write { lba: 7, blocks: 9, fua: true });
    // WRITE AND VERIFY: data where a read finds it before the status.
    assert_eq!(run_on(&[0x2E, 0x02, 0, 0, 0, 0, 0, 0, 1, 0], &l).0, Action::Write { lba: 0, blocks: 1, fua: true });
    assert_eq!(run_on(&cdb16(0x8E, 0, 0, 1), &l).0, Action::Write { lba: 0, blocks: 1, fua: true });
}

#[test]
fn writes_without_a_cache_are_data_protect() {
    let r = ro();
    for cdb in [
        &[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0][..],
        &[0x0A, 0, 0, 0, 1, 0],
        &cdb16(0x8A, 0, 0, 1),
        &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],
        &cdb16(0x93, 0x08, 0, 1),
    ] {
        is(check_on(cdb, &r), key::DATA_PROTECT, 0x27, 0);
    }
    // Reads still work.
    assert_eq!(run_on(&read10(0, 1), &r).0, Action::Read { lba: 0, blocks: 1 });
    assert_eq!(run_on(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &r).0, Action::Good);
}

// ---- VERIFY, SYNCHRONIZE CACHE

#[test]
fn verify() {
    let l = lun();
    // BYTCHK 0: range check only.
    assert_eq!(run_on(&[0x2F, 0, 0, 0, 0, 0, 0, 0, 8, 0], &l).0, Action::Good);
    assert_eq!(run_on(&[0x2F, 0x10, 0, 0, 0, 0, 0, 0, 8, 0], &l).0, Action::Good, "DPO");
    // BYTCHK 1: compare the Data-Out.
    assert_eq!(run_on(&[0x2F, 0x02, 0, 0, 0, 0, 0, 0, 8, 0], &l).0, Action::Compare { lba: 0, blocks: 8 });
    assert_eq!(run_on(&cdb16(0x8F, 0x02, 2047, 1), &l).0, Action::Compare { lba: 2047, blocks: 1 });
    assert_eq!(run_on(&[0xAF, 0x02, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0], &l).0, Action::Compare { lba: 1, blocks: 1 });
    assert_eq!(run_on(&[0x2F, 0x02, 0, 0, 0, 0, 0, 0, 0, 0], &l).0, Action::Good, "0 blocks");
    invalid_field_at(check(&[0x2F, 0x04, 0, 0, 0, 0, 0, 0, 1, 0]), 1, Some(2));
    invalid_field_at(check(&[0x2F, 0x06, 0, 0, 0, 0, 0, 0, 1, 0]), 1, Some(2));
    is(check(&[0x2F, 0, 0, 0, 0x08, 0, 0, 0, 1, 0]), key::ILLEGAL_REQUEST, 0x21, 0);
    is(check(&cdb16(0x8F, 0, u64::MAX, 1)), key::ILLEGAL_REQUEST, 0x21, 0);
}

#[test]
fn prefetch() {
    let l = lun();
    // libiscsi Prefetch10/16: Simple, Flags (IMMED, GROUP), ZeroBlocks, BeyondEol.
    assert_eq!(run_on(&[0x34, 0, 0, 0, 0, 0, 0, 0, 1, 0], &l).0, Action::Good);
    assert_eq!(run_on(&[0x34, 0x02, 0, 0, 0, 0, 0x03, 0, 1, 0], &l).0, Action::Good);
    assert_eq!(run_on(&[0x34, 0, 0, 0, 0x08, 0, 0, 0, 0, 0], &l).0, Action::Good);
    is(check(&[0x34, 0, 0, 0, 0x08, 0x01, 0, 0, 0, 0]), key::ILLEGAL_REQUEST, 0x21, 0);
    is(check(&[0x34, 0, 0, 0, 0x07, 0xFF, 0, 0, 2, 0]), key::ILLEGAL_REQUEST, 0x21, 0);
    assert_eq!(run_on(&cdb16(0x90, 0x02, 2047, 1), &l).0, Action::Good);
    is(check(&cdb16(0x90, 0, u64::MAX, 1)), key::ILLEGAL_REQUEST, 0x21, 0);
}

#[test]
fn synchronize_cache() {
    let l = lun();
    assert_eq!(run_on(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &l).0, Action::Sync);
    assert_eq!(run_on(&[0x35, 0x02, 0, 0, 0, 0, 0, 0, 8, 0], &l).0, Action::Sync, "IMMED");
    assert_eq!(run_on(&cdb16(0x91, 0, 2040, 8), &l).0, Action::Sync);
    is(check(&cdb16(0x91, 0, 2040, 9)), key::ILLEGAL_REQUEST, 0x21, 0);
    is(check(&[0x35, 0, 0, 0, 0x08, 0x01, 0, 0, 0, 0]), key::ILLEGAL_REQUEST, 0x21, 0);
}

#[test]
fn prefetch_checks_the_range_only() {
    let l = lun();
    // 10 and 16, IMMED and a group number, 0 blocks (to the end) included: GOOD inside the LUN.
    assert_eq!(run_on(&[0x34, 0, 0, 0, 0, 0, 0, 0, 8, 0], &l).0, Action::Good);
    assert_eq!(run_on(&[0x34, 0x02, 0, 0, 0x07, 0xF8, 0x05, 0, 8, 0], &l).0, Action::Good, "IMMED, group, the last blocks");
    assert_eq!(run_on(&[0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0], &l).0, Action::Good);
    assert_eq!(run_on(&cdb16(0x90, 0, 2040, 8), &l).0, Action::Good);
    is(check(&cdb16(0x90, 0, 2040, 9)), key::ILLEGAL_REQUEST, 0x21, 0);
    is(check(&[0x34, 0, 0, 0, 0x08, 0x01, 0, 0, 0, 0]), key::ILLEGAL_REQUEST, 0x21, 0);
}

// ---- WRITE SAME, UNMAP

#[test]
fn write_same_16() {
    let l = lun();
    let mut out = Vec::new();
    let c = cdb16(0x93, 0, 0, 256);
    assert_eq!(run_on(&c, &l).0, Action::DataOut { len: 512 });
    assert_eq!(execute_data(&c, &[0; 512], &l, &mut out), Action::Zero { lba: 0, blocks: 256 });
    assert_eq!(execute_data(&c, &[7; 512], &l, &mut out), Action::Fill { lba: 0, blocks: 256 });
    // UNMAP bit: deallocated whatever the block holds (libiscsi's UnmapUntilEnd sends 0xFF).
    let u = cdb16(0x93, 0x08, 2047, 1);
    assert_eq!(run_on(&u, &l).0, Action::DataOut { len: 512 });
    assert_eq!(execute_data(&u, &[0; 512], &l, &mut out), Action::Zero { lba: 2047, blocks: 1 });
    assert_eq!(execute_data(&u, &[0xFF; 512], &l, &mut out), Action::Zero { lba: 2047, blocks: 1 });
    let u10 = [0x41, 0x08, 0, 0, 0x07, 0xFF, 0, 0, 0, 0];
    assert_eq!(execute_data(&u10, &[0xFF; 512], &l, &mut out), Action::Zero { lba: 2047, blocks: 1 });
    // NDOB: no Data-Out at all.
    assert_eq!(run_on(&cdb16(0x93, 0x09, 8, 8), &l).0, Action::Zero { lba: 8, blocks: 8 });
    // libiscsi test_writesame16_invalid_dataout_size: half or double a block.
    assert_eq!(execute_data(&c, &[0; 256], &l, &mut out), Action::Check(Sense::param_list_length()));
    assert_eq!(execute_data(&c, &[0; 1024], &l, &mut out), Action::Check(Sense::param_list_length()));
}

#[test]
fn write_same_edges() {
    // 0 blocks: to the end of the LUN (WSNZ 0), as libiscsi's WriteSame16.ZeroBlocks checks.
    let l = lun();
    let mut out = Vec::new();
    let c = cdb16(0x93, 0, 2000, 0);
    assert_eq!(run_on(&c, &l).0, Action::DataOut { len: 512 });
    assert_eq!(execute_data(&c, &[0; 512], &l, &mut out), Action::Zero { lba: 2000, blocks: 48 });
    assert_eq!(run_on(&cdb16(0x93, 0x09, 0, 0), &l).0, Action::Zero { lba: 0, blocks: 2048 });
    assert_eq!(run_on(&cdb16(0x93, 0, 2048, 0), &l).0, Action::Good, "nothing left at the end");
    is(check(&cdb16(0x93, 0, 2049, 0)), key::ILLEGAL_REQUEST, 0x21, 0);
    is(check(&cdb16(0x93, 0, 0x8000_0000_0000_0000, 0)), key::ILLEGAL_REQUEST, 0x21, 0);
    is(check(&cdb16(0x93, 0, u64::MAX, 0)), key::ILLEGAL_REQUEST, 0x21, 0);
    // Over the maximum write same length, counted or "to the end".
    let small = Lun { write_same_max_blocks: 16, ..lun() };
    invalid_field_at(check_on(&cdb16(0x93, 0x08, 0, 17), &small), 10, None);
    assert_eq!(run_on(&cdb16(0x93, 0x08, 0, 16), &small).0, Action::DataOut { len: 512 });
    invalid_field_at(check_on(&cdb16(0x93, 0, 2048 - 17, 0), &small), 10, None);
    assert_eq!(run_on(&cdb16(0x93, 0, 2048 - 16, 0), &small).0, Action::DataOut { len: 512 });
    // ANCHOR (no ANC_SUP), PBDATA/LBDATA, WRPROTECT.
    invalid_field_at(check(&cdb16(0x93, 0x10, 0, 1)), 1, Some(4));
    invalid_field_at(check(&cdb16(0x93, 0x18, 0, 1)), 1, Some(4));
    invalid_field_at(check(&cdb16(0x93, 0x04, 0, 1)), 1, Some(2));
    invalid_field_at(check(&cdb16(0x93, 0x20, 0, 1)), 1, Some(7));
    // libiscsi test_writesame16_beyond_eol.
    for i in 1..=256u32 {
        is(check(&cdb16(0x93, 0, 2048 - u64::from(i) + 1, i)), key::ILLEGAL_REQUEST, 0x21, 0);
        is(check(&cdb16(0x93, 0, 0x8000_0000_0000_0000, i)), key::ILLEGAL_REQUEST, 0x21, 0);
        is(check(&cdb16(0x93, 0, u64::MAX, i)), key::ILLEGAL_REQUEST, 0x21, 0);
    }
}

#[test]
fn write_same_10() {
    let l = lun();
    let mut out = Vec::new();
    let c = [0x41, 0x08, 0, 0, 0, 1, 0, 0, 7, 0];
    assert_eq!(run_on(&c, &l).0, Action::DataOut { len: 512 });
    assert_eq!(execute_data(&c, &[0; 512], &l, &mut out), Action::Zero { lba: 1, blocks: 7 });
    // Bit 0 is reserved in WRITE SAME 10 (no NDOB).
    invalid_field_at(check(&[0x41, 0x01, 0, 0, 0, 1, 0, 0, 7, 0]), 1, Some(0));
    let small = Lun { write_same_max_blocks: 16, ..lun() };
    invalid_field_at(check_on(&[0x41, 0, 0, 0, 0, 1, 0, 0, 0, 0], &small), 7, None);
    assert_eq!(run_on(&[0x41, 0x08, 0, 0, 0x07, 0xF0, 0, 0, 0, 0], &small).0, Action::DataOut { len: 512 });
}

fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((6 + 16 * ranges.len()) as u16).to_be_bytes());
    v.extend_from_slice(&((16 * ranges.len()) as u16).to_be_bytes());
    v.extend_from_slice(&[0; 4]);
    for &(lba, n) in ranges {
        v.extend_from_slice(&lba.to_be_bytes());
        v.extend_from_slice(&n.to_be_bytes());
        v.extend_from_slice(&[0; 4]);
    }
    v
}

fn unmap_cdb(len: u16) -> [u8; 10] {
    let [h, l] = len.to_be_bytes();
    [0x42, 0, 0, 0, 0, 0, 0, h, l, 0]
}

#[test]
fn unmap() {
    let l = lun();
    let mut out = Vec::new();
    let list = unmap_list(&[(0, 8), (100, 0), (2040, 8)]);
    let c = unmap_cdb(list.len() as u16);
    assert_eq!(run_on(&c, &l).0, Action::DataOut { len: 56 });
    assert_eq!(execute_data(&c, &list, &l, &mut out), Action::Unmap(vec![(0, 8), (2040, 8)]));
    // libiscsi test_unmap_0blocks: empty ranges, even at the end, and an empty list are GOOD.
    for lba in [0, 255, 2048] {
        let list = unmap_list(&[(lba, 0)]);
        assert_eq!(execute_data(&unmap_cdb(24), &list, &l, &mut out), Action::Good);
    }
    let empty = unmap_list(&[]);
    assert_eq!(execute_data(&unmap_cdb(8), &empty, &l, &mut out), Action::Good);
    assert_eq!(run_on(&unmap_cdb(0), &l).0, Action::Good, "no parameter list");
    // A range over the end.
    let over = unmap_list(&[(2040, 9)]);
    assert_eq!(execute_data(&unmap_cdb(24), &over, &l, &mut out), Action::Check(Sense::lba_out_of_range()));
    let wrap = unmap_list(&[(u64::MAX, 2)]);
    assert_eq!(execute_data(&unmap_cdb(24), &wrap, &l, &mut out), Action::Check(Sense::lba_out_of_range()));
    // ANCHOR.
    invalid_field_at(check(&[0x42, 1, 0, 0, 0, 0, 0, 0, 24, 0]), 1, Some(0));
}

#[test]
fn unmap_limits() {
    let l = Lun { unmap_descriptors_max: 2, write_same_max_blocks: 64, ..lun() };
    let mut out = Vec::new();
    // Parameter list length: under a header, or over what the descriptor limit needs.
    is(check_on(&unmap_cdb(7), &l), key::ILLEGAL_REQUEST, 0x1A, 0);
    is(check_on(&unmap_cdb(8 + 16 * 3), &l), key::ILLEGAL_REQUEST, 0x1A, 0);
    assert_eq!(run_on(&unmap_cdb(8 + 16 * 2), &l).0, Action::DataOut { len: 40 });
    assert_eq!(execute_data(&unmap_cdb(4), &[0; 4], &l, &mut out), Action::Check(Sense::param_list_length()));
    // More descriptors than the limit (a list longer than the CDB said is cut, not trusted).
    let three = unmap_list(&[(0, 1), (1, 1), (2, 1)]);
    assert_eq!(execute_data(&unmap_cdb(56), &three, &l, &mut out), Action::Check(Sense::invalid_param(2, None)));
    // A range over the maximum unmap LBA count.
    let big = unmap_list(&[(0, 65)]);
    assert_eq!(execute_data(&unmap_cdb(24), &big, &l, &mut out), Action::Check(Sense::invalid_param(16, None)));
    // The block descriptor data length is cut to what arrived.
    let mut short = unmap_list(&[(0, 1), (8, 1)]);
    short.truncate(24);
    assert_eq!(execute_data(&unmap_cdb(40), &short, &l, &mut out), Action::Unmap(vec![(0, 1)]));
}

// ---- GET LBA STATUS

#[test]
fn get_lba_status() {
    let l = lun();
    let c = cdb16(0x9E, 0x12, 8, 24);
    assert_eq!(run_on(&c, &l).0, Action::LbaStatus { lba: 8, blocks: 2040, alloc_len: 24 });
    is(check(&cdb16(0x9E, 0x12, 2048, 24)), key::ILLEGAL_REQUEST, 0x21, 0);
    // Runs as the cache reports them: 4 KiB data, 8 KiB zeroed, 4 KiB hole, the rest data.
    let mut out = Vec::new();
    lba_status(8, &[(4096, 0), (8192, 2), (4096, 3), (1 << 20, 0)], &l, 1024, &mut out);
    assert_eq!(be32(&out, 0), 4 + 3 * 16);
    let desc = |i: usize| (be64(&out, 8 + 16 * i), be32(&out, 16 + 16 * i), out[20 + 16 * i]);
    assert_eq!(desc(0), (8, 8, 0));
    assert_eq!(desc(1), (16, 24, 1), "zeroed and hole merge: both deallocated");
    assert_eq!(desc(2), (40, 2048, 0));
    // libiscsi reads 24 bytes: header + the first descriptor.
    out.clear();
    lba_status(8, &[(4096, 0), (8192, 2)], &l, 24, &mut out);
    assert_eq!(out.len(), 24);
    assert_eq!(be32(&out, 0), 4 + 2 * 16, "the length counts every descriptor, not the cut");
}

#[test]
fn get_lba_status_descriptor_limit() {
    let l = lun();
    let runs: Vec<(u64, u32)> = (0..200).map(|i| (512, (i % 2) * 3)).collect();
    let mut out = Vec::new();
    lba_status(0, &runs, &l, 1 << 20, &mut out);
    assert_eq!(out.len(), 8 + 16 * LBA_STATUS_DESCRIPTORS_MAX);
}

#[test]
fn orwrite_is_a_write_that_ors() {
    let l = lun();
    let mut o = Vec::new();
    let mut c = [0u8; 16];
    c[0] = op::ORWRITE;
    c[9] = 8;
    c[13] = 2;
    assert_eq!(execute(&c, 0, &l, &mut o), Action::OrWrite { lba: 8, blocks: 2, fua: false });
    c[1] = 0x08;
    assert_eq!(execute(&c, 0, &l, &mut o), Action::OrWrite { lba: 8, blocks: 2, fua: true });
    c[1] = 0x20;
    assert_eq!(execute(&c, 0, &l, &mut o), Action::Check(Sense::invalid_field(1, Some(7))), "ORPROTECT");
    c[1] = 0x01;
    assert_eq!(execute(&c, 0, &l, &mut o), Action::Check(Sense::invalid_field(1, Some(2))), "BMOP");
    c[1] = 0;
    c[13] = 0;
    assert_eq!(execute(&c, 0, &l, &mut o), Action::Good, "zero blocks");
    c[9] = 0;
    c[2..10].copy_from_slice(&(l.blocks - 1).to_be_bytes());
    c[13] = 2;
    assert_eq!(execute(&c, 0, &l, &mut o), Action::Check(Sense::lba_out_of_range()));
    let ro = Lun { writable: false, ..l };
    c[2..10].copy_from_slice(&0u64.to_be_bytes());
    assert_eq!(execute(&c, 0, &ro, &mut o), Action::Check(Sense::write_protected()));
}
