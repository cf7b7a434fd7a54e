//! One test per command and per sense case, with CDB bytes as Linux sd, iPXE, Windows and
//! libiscsi's iscsi-test-cu send them.

use super::*;

mod block;
mod maintenance;
mod reserve;

pub(super) const DESIG: [u8; 16] = [0x60, 0x2B, 0x00, 0xF1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

pub(super) fn lun() -> Lun<'static> {
    Lun {
        blocks: 2048,
        block_len: 512,
        vdisk: "win10",
        designator: DESIG,
        writable: true,
        max_transfer_blocks: 512,
        write_same_max_blocks: 65536,
        unmap_descriptors_max: 256,
        relative_port: 1,
        port_group: 1,
    }
}

pub(super) fn ro() -> Lun<'static> {
    Lun { writable: false, ..lun() }
}

pub(super) fn run_on(cdb: &[u8], l: &Lun) -> (Action, Vec<u8>) {
    let mut out = Vec::new();
    let a = execute(cdb, 0, l, &mut out);
    (a, out)
}

pub(super) fn data(cdb: &[u8]) -> Vec<u8> {
    let (a, out) = run_on(cdb, &lun());
    assert_eq!(a, Action::Data, "{cdb:02x?}");
    out
}

pub(super) fn check_on(cdb: &[u8], l: &Lun) -> Sense {
    match run_on(cdb, l) {
        (Action::Check(s), out) => {
            assert!(out.is_empty(), "no data with a CHECK CONDITION");
            s
        }
        (a, _) => panic!("{cdb:02x?}: expected CHECK CONDITION, got {a:?}"),
    }
}

pub(super) fn check(cdb: &[u8]) -> Sense {
    check_on(cdb, &lun())
}

pub(super) fn is(s: Sense, key: u8, asc: u8, ascq: u8) {
    assert_eq!((s.key, s.asc, s.ascq), (key, asc, ascq), "{s:?}");
}

pub(super) fn invalid_field_at(s: Sense, byte: u16, bit: Option<u8>) {
    is(s, key::ILLEGAL_REQUEST, 0x24, 0);
    assert_eq!(s.field, Some(Field { cdb: true, byte, bit }));
}

pub(super) fn read10(lba: u32, n: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let [nh, nl] = n.to_be_bytes();
    [0x28, 0, l[0], l[1], l[2], l[3], 0, nh, nl, 0]
}

pub(super) fn cdb16(opcode: u8, flags: u8, lba: u64, n: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&n.to_be_bytes());
    c
}

// ---- generic CDB checks

#[test]
fn unknown_opcodes_are_invalid_command_operation_code() {
    for cdb in [&[0x04u8, 0, 0, 0, 0, 0][..], &[0xC0; 16], &[0x7F; 16], &[0x3B; 10], &[0xE8; 16], &[]] {
        is(check(cdb), key::ILLEGAL_REQUEST, 0x20, 0);
    }
}

#[test]
fn naca_and_link_in_the_control_byte_are_refused() {
    invalid_field_at(check(&[0, 0, 0, 0, 0, 0x04]), 5, Some(2));
    invalid_field_at(check(&[0, 0, 0, 0, 0, 0x01]), 5, Some(0));
    let mut c = read10(0, 1);
    c[9] = 0x04;
    invalid_field_at(check(&c), 9, Some(2));
    // Vendor-specific bits 7-6 are not ours to refuse.
    assert_eq!(run_on(&[0, 0, 0, 0, 0, 0xC0], &lun()).0, Action::Good);
}

#[test]
fn a_cdb_shorter_than_its_group_is_invalid() {
    invalid_field_at(check(&[0x28, 0, 0, 0, 0, 0]), 0, None);
}

#[test]
fn test_unit_ready_start_stop_prevent_allow() {
    let l = lun();
    assert_eq!(run_on(&[0x00, 0, 0, 0, 0, 0], &l), (Action::Good, vec![]));
    // START STOP UNIT: START=1, LOEJ=1 eject, power conditions: all accepted.
    for b4 in [0x01, 0x00, 0x02, 0x03, 0x10] {
        assert_eq!(run_on(&[0x1B, 0, 0, 0, b4, 0], &l).0, Action::Good);
    }
    assert_eq!(run_on(&[0x1E, 0, 0, 0, 1, 0], &l).0, Action::Good);
    assert_eq!(run_on(&[0x1E, 0, 0, 0, 0, 0], &l).0, Action::Good);
}

// ---- INQUIRY

#[test]
fn standard_inquiry_as_linux_scans() {
    // sd's first INQUIRY: 36 bytes.
    let d = data(&[0x12, 0, 0, 0, 0x24, 0]);
    assert_eq!(d.len(), 36);
    assert_eq!(d[0], 0x00, "qualifier 0, direct access");
    assert_eq!(d[2], 0x06, "SPC-4");
    assert_eq!(d[3], 0x12, "HiSup + response data format 2");
    assert_eq!(usize::from(d[4]) + 5, 96, "additional length of the whole data, not the cut");
    assert_eq!(d[5] & 0x30, 0x10, "TPGS implicit");
    assert_eq!(d[7] & 0x02, 0x02, "CmdQue");
    assert_eq!(&d[8..16], b"BOOTFARM");
    assert_eq!(&d[16..32], b"win10           ");
    assert!(d[32..36].iter().all(|&c| (0x20..=0x7E).contains(&c)));
    let full = data(&[0x12, 0, 0, 0x01, 0x04, 0]);
    assert_eq!(full.len(), 96);
    assert_eq!(&full[..36], &d[..]);
    // Version descriptors SAM-5, iSCSI, SPC-4, SBC-3.
    assert_eq!(&full[58..66], &[0x00, 0xA0, 0x09, 0x60, 0x04, 0x60, 0x04, 0xC0]);
    // libiscsi test_inquiry_alloc_length: 511 and 512 give the same bytes; 5 gives 5.
    assert_eq!(data(&[0x12, 0, 0, 0x01, 0xFF, 0]), data(&[0x12, 0, 0, 0x02, 0x00, 0]));
    assert_eq!(data(&[0x12, 0, 0, 0, 5, 0]).len(), 5);
    // Allocation length 0: no data, not an error.
    assert!(data(&[0x12, 0, 0, 0, 0, 0]).is_empty());
}

#[test]
fn inquiry_product_id_is_cut_and_printable() {
    let l = Lun { vdisk: "a-very-long-vdisk-name\u{e9}", ..lun() };
    let (_, d) = run_on(&[0x12, 0, 0, 0, 0x24, 0], &l);
    assert_eq!(&d[16..32], b"a-very-long-vdis");
    let l = Lun { vdisk: "w\u{e9}n", ..lun() };
    let (_, d) = run_on(&[0x12, 0, 0, 0, 0x24, 0], &l);
    assert!(d[16..32].iter().all(|&c| (0x20..=0x7E).contains(&c)), "{:?}", &d[16..32]);
}

#[test]
fn inquiry_page_code_without_evpd_and_bad_bits() {
    // libiscsi test_inquiry_evpd: EVPD=0, page 1.
    invalid_field_at(check(&[0x12, 0, 1, 0x01, 0x00, 0]), 2, None);
    invalid_field_at(check(&[0x12, 0x02, 0, 0, 36, 0]), 1, Some(1));
    invalid_field_at(check(&[0x12, 0x01, 0x81, 0, 0xFF, 0]), 2, None);
}

#[test]
fn vpd_supported_pages_sorted() {
    assert_eq!(data(&[0x12, 1, 0x00, 0, 0xFF, 0]), [0, 0, 0, 6, 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]);
}

#[test]
fn vpd_unit_serial_is_the_designator_in_hex() {
    let d = data(&[0x12, 1, 0x80, 0, 0xFF, 0]);
    assert_eq!(&d[..4], &[0, 0x80, 0, 32]);
    assert_eq!(&d[4..], b"602b00f10102030405060708090a0b0c");
}

#[test]
fn vpd_device_identification() {
    let d = data(&[0x12, 1, 0x83, 0, 0xFF, 0]);
    assert_eq!(&d[..2], &[0, 0x83]);
    assert_eq!(usize::from(be16(&d, 2)), d.len() - 4);
    // NAA 6, binary, LU.
    assert_eq!(&d[4..8], &[0x01, 0x03, 0, 16]);
    assert_eq!(&d[8..24], &DESIG);
    // T10 vendor id "BOOTFARM" + name, ASCII, LU.
    assert_eq!(&d[24..28], &[0x02, 0x01, 0, 13]);
    assert_eq!(&d[28..41], b"BOOTFARMwin10");
    // Relative target port 1 and target port group 1, iSCSI, PIV, target port.
    assert_eq!(&d[41..49], &[0x51, 0x94, 0, 4, 0, 0, 0, 1]);
    assert_eq!(&d[49..57], &[0x51, 0x95, 0, 4, 0, 0, 0, 1]);
    assert_eq!(d.len(), 57);
    // Cut at the allocation length like every answer.
    assert_eq!(data(&[0x12, 1, 0x83, 0, 10, 0]), d[..10]);
}

#[test]
fn vpd_block_limits() {
    let d = data(&[0x12, 1, 0xB0, 0, 0xFF, 0]);
    assert_eq!(d.len(), 64);
    assert_eq!(usize::from(d[3]) + 4, d.len(), "libiscsi: page length == size - 4");
    assert_eq!(d[4] & 1, 0, "WSNZ 0: WRITE SAME of 0 blocks runs to the end");
    assert_eq!(be16(&d, 6), 8, "optimal transfer granularity: a 4 KiB cache block");
    assert_eq!(be32(&d, 8), 512, "maximum transfer length");
    assert_eq!(be32(&d, 20), 65536, "maximum unmap LBA count");
    assert_eq!(be32(&d, 24), 256, "maximum unmap block descriptor count");
    assert_eq!(be32(&d, 28), 8, "optimal unmap granularity");
    assert_eq!(be64(&d, 36), 65536, "maximum write same length");
    // libiscsi test_inquiry_block_limits: without LBPU both unmap limits must be 0.
    let (_, d) = run_on(&[0x12, 1, 0xB0, 0, 0xFF, 0], &ro());
    assert_eq!((be32(&d, 20), be32(&d, 24), be64(&d, 36)), (0, 0, 0));
}

#[test]
fn vpd_characteristics_and_provisioning() {
    let d = data(&[0x12, 1, 0xB1, 0, 0xFF, 0]);
    assert_eq!((d.len(), d[1], d[3], be16(&d, 4)), (64, 0xB1, 0x3C, 1), "non-rotating");
    let d = data(&[0x12, 1, 0xB2, 0, 0xFF, 0]);
    assert_eq!(d, [0, 0xB2, 0, 4, 0, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0]);
    let (_, d) = run_on(&[0x12, 1, 0xB2, 0, 0xFF, 0], &ro());
    assert_eq!(d, [0, 0xB2, 0, 4, 0, 0, 0, 0], "no cache: nothing to unmap");
}

#[test]
fn other_luns() {
    let l = lun();
    let mut out = Vec::new();
    assert_eq!(execute(&[0x12, 0, 0, 0, 0x24, 0], 1, &l, &mut out), Action::Data);
    assert_eq!(out[0], 0x7F, "qualifier 3, type 1Fh");
    out.clear();
    assert_eq!(execute(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], 0x0001_0000_0000_0000, &l, &mut out), Action::Data);
    assert_eq!(&out[..4], &[0, 0, 0, 8]);
    out.clear();
    assert_eq!(execute(&[0x03, 0, 0, 0, 18, 0], 1, &l, &mut out), Action::Data);
    assert_eq!((out[2], out[12], out[13]), (0x05, 0x25, 0x00));
    for cdb in [&[0u8, 0, 0, 0, 0, 0][..], &read10(0, 1), &[0x12, 1, 0x83, 0, 0xFF, 0], &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]] {
        out.clear();
        match execute(cdb, 1, &l, &mut out) {
            Action::Check(s) => is(s, key::ILLEGAL_REQUEST, 0x25, 0),
            a => panic!("{a:?}"),
        }
    }
}

// ---- READ CAPACITY, REPORT LUNS

#[test]
fn read_capacity_10() {
    assert_eq!(data(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]), [0, 0, 0x07, 0xFF, 0, 0, 2, 0]);
    // Past 2^32 blocks: FFFFFFFFh, and iPXE / Linux go to READ CAPACITY 16.
    let big = Lun { blocks: 1 << 33, ..lun() };
    assert_eq!(run_on(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &big).1[..4], [0xFF; 4]);
    let edge = Lun { blocks: 1 << 32, ..lun() };
    assert_eq!(run_on(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &edge).1[..4], [0xFF; 4]);
    let under = Lun { blocks: (1 << 32) - 1, ..lun() };
    assert_eq!(run_on(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &under).1[..4], [0xFF, 0xFF, 0xFF, 0xFE]);
    // LBA without PMI is invalid.
    invalid_field_at(check(&[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0]), 2, None);
}

#[test]
fn read_capacity_16() {
    let c = [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0];
    let d = data(&c);
    assert_eq!(d.len(), 32);
    assert_eq!(be64(&d, 0), 2047);
    assert_eq!(be32(&d, 8), 512);
    assert_eq!(d[12], 0, "no protection");
    assert_eq!(d[13], 0, "LBPPBE 0: the 4 KiB cache block is announced in VPD B0 only");
    assert_eq!(d[14], 0xC0, "LBPME + LBPRZ");
    assert_eq!(run_on(&c, &ro()).1[14], 0, "no cache, no provisioning");
    // libiscsi test_readcapacity16_alloclen: 0..16 all GOOD, cut.
    for n in 0..16u8 {
        let mut c = c;
        c[13] = n;
        assert_eq!(data(&c).len(), usize::from(n));
    }
    invalid_field_at(check(&[0x9E, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0]), 1, Some(4));
}

#[test]
fn report_luns_select_reports() {
    let mut c = [0xA0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0];
    assert_eq!(data(&c), [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    c[2] = 2;
    assert_eq!(data(&c).len(), 16);
    c[2] = 1;
    assert_eq!(data(&c), [0; 8], "no well-known LUNs");
    c[2] = 3;
    invalid_field_at(check(&c), 2, None);
    invalid_field_at(check(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0]), 6, None);
}

// ---- MODE SENSE / SELECT

#[test]
fn mode_sense_6_all_pages_and_header() {
    // sd's write-protect probe: all pages, 4 bytes.
    let d = data(&[0x1A, 0, 0x3F, 0, 4, 0]);
    assert_eq!(d.len(), 4);
    assert_eq!(d[2], 0x10, "DPOFUA, not write protected");
    let d = data(&[0x1A, 0, 0x3F, 0, 0xFF, 0]);
    assert_eq!(usize::from(d[0]) + 1, d.len());
    assert_eq!(d[3], 8, "block descriptor");
    assert_eq!(&d[4..12], &[0, 0, 0x08, 0x00, 0, 0, 2, 0]);
    let pages: Vec<u8> = walk_pages(&d[12..]).iter().map(|p| p[0]).collect();
    assert_eq!(pages, [0x08, 0x0A, 0x1C]);
    let (_, d) = run_on(&[0x1A, 0, 0x3F, 0, 4, 0], &ro());
    assert_eq!(d[2], 0x90, "WP when there is no write cache");
}

fn walk_pages(mut b: &[u8]) -> Vec<&[u8]> {
    let mut v = Vec::new();
    while !b.is_empty() {
        let n = usize::from(b[1]) + 2;
        v.push(&b[..n]);
        b = &b[n..];
    }
    v
}

#[test]
fn mode_sense_caching_page_as_sd_reads_it() {
    // sd_read_cache_type: DBD, caching page.
    let d = data(&[0x1A, 0x08, 0x08, 0, 0xFF, 0]);
    assert_eq!(d[3], 0, "DBD: no block descriptor");
    assert_eq!(&d[4..], &[0x08, 0x12, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(d[6] & 0x05, 0x04, "WCE 1, RCD 0");
    // Changeable: nothing.
    let d = data(&[0x1A, 0x08, 0x48, 0, 0xFF, 0]);
    assert_eq!(&d[4..6], &[0x08, 0x12]);
    assert!(d[6..].iter().all(|&b| b == 0));
    // Default = current.
    assert_eq!(data(&[0x1A, 0x08, 0x88, 0, 0xFF, 0]), data(&[0x1A, 0x08, 0x08, 0, 0xFF, 0]));
}

#[test]
fn mode_sense_control_page() {
    let d = data(&[0x1A, 0x08, 0x0A, 0, 0xFF, 0]);
    let p = &d[4..];
    assert_eq!(p.len(), 12);
    assert_eq!(p[2] & 0x04, 0, "D_SENSE 0: fixed-format sense, as execute returns");
    assert_eq!(p[2] >> 5, 0, "TST 0");
    assert_eq!(p[3] >> 4, 0, "QAM 0");
    assert_eq!(be16(p, 8), 0xFFFF, "busy timeout unlimited");
    // libiscsi test_modesense6_control: the page in all pages equals the page alone.
    let all = data(&[0x1A, 0x08, 0x3F, 0, 0xFF, 0]);
    assert!(walk_pages(&all[4..]).contains(&p));
}

#[test]
fn mode_sense_saved_subpages_unknown_pages() {
    is(check(&[0x1A, 0, 0xC8, 0, 0xFF, 0]), key::ILLEGAL_REQUEST, 0x39, 0);
    invalid_field_at(check(&[0x1A, 0, 0x19, 0, 0xFF, 0]), 2, Some(5));
    invalid_field_at(check(&[0x1A, 0, 0x08, 0x01, 0xFF, 0]), 3, None);
    // All pages and subpages (3Fh/FFh) is the same list.
    assert_eq!(data(&[0x1A, 0, 0x3F, 0xFF, 0xFF, 0]), data(&[0x1A, 0, 0x3F, 0, 0xFF, 0]));
}

#[test]
fn mode_sense_10_long_lba_descriptor() {
    let d = data(&[0x5A, 0x10, 0x3F, 0, 0, 0, 0, 0x01, 0x00, 0]);
    assert_eq!(usize::from(be16(&d, 0)) + 2, d.len());
    assert_eq!(d[4] & 1, 1, "LONGLBA");
    assert_eq!(be16(&d, 6), 16);
    assert_eq!(be64(&d, 8), 2048);
    assert_eq!(be32(&d, 20), 512);
    let d = data(&[0x5A, 0x00, 0x08, 0, 0, 0, 0, 0x01, 0x00, 0]);
    assert_eq!((d[4], be16(&d, 6)), (0, 8));
    assert_eq!(d[16], 0x08);
    // libiscsi test_modesense6_residuals: a short allocation gets at most that.
    assert_eq!(data(&[0x5A, 0x00, 0x3F, 0, 0, 0, 0, 0, 3, 0]).len(), 3);
}

#[test]
fn mode_select_accepts_current_values_only() {
    let l = lun();
    let mut out = Vec::new();
    // What sense gives back is what select accepts.
    let cur = data(&[0x1A, 0, 0x08, 0, 0xFF, 0]);
    let mut sel = cur.clone();
    sel[0] = 0; // mode data length is reserved in MODE SELECT
    let cdb = [0x15, 0x10, 0, 0, sel.len() as u8, 0];
    assert_eq!(execute(&cdb, 0, &l, &mut out), Action::DataOut { len: sel.len() as u32 });
    assert_eq!(execute_data(&cdb, &sel, &l, &mut out), Action::Good);
    // Clearing WCE is a change: refused at that byte.
    let mut off = sel.clone();
    off[12 + 2] = 0;
    match execute_data(&cdb, &off, &l, &mut out) {
        Action::Check(s) => {
            is(s, key::ILLEGAL_REQUEST, 0x26, 0);
            assert_eq!(s.field, Some(Field { cdb: false, byte: 14, bit: None }));
        }
        a => panic!("{a:?}"),
    }
    // Data-Out past the parameter list length is not part of it.
    let mut more = sel.clone();
    more.extend_from_slice(&[0; 12]);
    assert_eq!(execute_data(&cdb, &more, &l, &mut out), Action::Good);
    // A page cut short.
    let short = &sel[..sel.len() - 3];
    let c2 = [0x15, 0x10, 0, 0, short.len() as u8, 0];
    assert_eq!(execute_data(&c2, short, &l, &mut out), Action::Check(Sense::param_list_length()));
    // An unknown page.
    let mut unk = sel.clone();
    unk[12] = 0x19;
    assert!(matches!(execute_data(&cdb, &unk, &l, &mut out), Action::Check(s) if s.asc == 0x26));
    // SP=1: nothing is saved.
    invalid_field_at(check(&[0x15, 0x11, 0, 0, 12, 0]), 1, Some(0));
    assert_eq!(run_on(&[0x15, 0x10, 0, 0, 0, 0], &l).0, Action::Good);
    is(check(&[0x55, 0x10, 0, 0, 0, 0, 0, 0x10, 0, 0]), key::ILLEGAL_REQUEST, 0x1A, 0);
    // MODE SELECT 10 with the control page, no block descriptor.
    let cur = data(&[0x5A, 0x08, 0x0A, 0, 0, 0, 0, 0, 0xFF, 0]);
    let mut sel = cur.clone();
    sel[0] = 0;
    sel[1] = 0;
    let cdb = [0x55, 0x10, 0, 0, 0, 0, 0, 0, sel.len() as u8, 0];
    assert_eq!(execute(&cdb, 0, &l, &mut out), Action::DataOut { len: sel.len() as u32 });
    assert_eq!(execute_data(&cdb, &sel, &l, &mut out), Action::Good);
}

#[test]
fn mode_select_block_descriptor_must_match() {
    let l = lun();
    let mut out = Vec::new();
    let cdb = [0x15, 0x10, 0, 0, 12, 0];
    let ok = [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 2, 0];
    assert_eq!(execute_data(&cdb, &ok, &l, &mut out), Action::Good);
    let bad = [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 16, 0];
    match execute_data(&cdb, &bad, &l, &mut out) {
        Action::Check(s) => assert_eq!((s.asc, s.field.map(|f| f.byte)), (0x26, Some(9))),
        a => panic!("{a:?}"),
    }
}

// ---- REQUEST SENSE

#[test]
fn request_sense() {
    let d = data(&[0x03, 0, 0, 0, 0xFC, 0]);
    assert_eq!(d.len(), 18);
    assert_eq!((d[0], d[2], d[12], d[13]), (0x70, 0, 0, 0), "NO SENSE");
    let d = data(&[0x03, 1, 0, 0, 0xFC, 0]);
    assert_eq!(d, [0x72, 0, 0, 0, 0, 0, 0, 0], "descriptor format");
    assert_eq!(data(&[0x03, 0, 0, 0, 8, 0]).len(), 8);
    // The session's pending unit attention.
    let mut out = Vec::new();
    assert_eq!(super::request_sense(&[0x03, 0, 0, 0, 18, 0], Some(&Sense::lun_reset()), &mut out), Action::Data);
    assert_eq!((out[2], out[12], out[13]), (0x06, 0x29, 0x03));
    invalid_field_at(check(&[0x03, 2, 0, 0, 18, 0]), 1, Some(7));
}

#[test]
fn unit_attention_skips_inquiry_report_luns_request_sense() {
    assert!(!unit_attention_applies(&[0x12, 0, 0, 0, 36, 0]));
    assert!(!unit_attention_applies(&[0xA0; 12]));
    assert!(!unit_attention_applies(&[0x03, 0, 0, 0, 18, 0]));
    assert!(unit_attention_applies(&[0x00; 6]));
    assert!(unit_attention_applies(&read10(0, 1)));
}
