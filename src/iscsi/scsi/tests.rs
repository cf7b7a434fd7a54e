//! One test per command and per sense case, with CDB bytes as Linux sd, iPXE, Windows and
//! libiscsi's iscsi-test-cu send them.

use super::*;

const DESIG: [u8; 16] = [0x60, 0x2B, 0x00, 0xF1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

fn lun() -> Lun<'static> {
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

fn ro() -> Lun<'static> {
    Lun { writable: false, ..lun() }
}

fn run_on(cdb: &[u8], l: &Lun) -> (Action, Vec<u8>) {
    let mut out = Vec::new();
    let a = execute(cdb, 0, l, &mut out);
    (a, out)
}

fn data(cdb: &[u8]) -> Vec<u8> {
    let (a, out) = run_on(cdb, &lun());
    assert_eq!(a, Action::Data, "{cdb:02x?}");
    out
}

fn check_on(cdb: &[u8], l: &Lun) -> Sense {
    match run_on(cdb, l) {
        (Action::Check(s), out) => {
            assert!(out.is_empty(), "no data with a CHECK CONDITION");
            s
        }
        (a, _) => panic!("{cdb:02x?}: expected CHECK CONDITION, got {a:?}"),
    }
}

fn check(cdb: &[u8]) -> Sense {
    check_on(cdb, &lun())
}

fn is(s: Sense, key: u8, asc: u8, ascq: u8) {
    assert_eq!((s.key, s.asc, s.ascq), (key, asc, ascq), "{s:?}");
}

fn invalid_field_at(s: Sense, byte: u16, bit: Option<u8>) {
    is(s, key::ILLEGAL_REQUEST, 0x24, 0);
    assert_eq!(s.field, Some(Field { cdb: true, byte, bit }));
}

fn read10(lba: u32, n: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let [nh, nl] = n.to_be_bytes();
    [0x28, 0, l[0], l[1], l[2], l[3], 0, nh, nl, 0]
}

fn cdb16(opcode: u8, flags: u8, lba: u64, n: u32) -> [u8; 16] {
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
    assert_eq!(d[4] & 1, 1, "WSNZ");
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
    assert_eq!(d[13], 3, "LBPPBE: 8 logical blocks per 4 KiB");
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

// ---- READ / WRITE

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
fn synchronize_cache() {
    let l = lun();
    assert_eq!(run_on(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &l).0, Action::Sync);
    assert_eq!(run_on(&[0x35, 0x02, 0, 0, 0, 0, 0, 0, 8, 0], &l).0, Action::Sync, "IMMED");
    assert_eq!(run_on(&cdb16(0x91, 0, 2040, 8), &l).0, Action::Sync);
    is(check(&cdb16(0x91, 0, 2040, 9)), key::ILLEGAL_REQUEST, 0x21, 0);
    is(check(&[0x35, 0, 0, 0, 0x08, 0x01, 0, 0, 0, 0]), key::ILLEGAL_REQUEST, 0x21, 0);
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
    // UNMAP bit with a zero block deallocates; with data it must write it (LBPRZ).
    let u = cdb16(0x93, 0x08, 2047, 1);
    assert_eq!(run_on(&u, &l).0, Action::DataOut { len: 512 });
    assert_eq!(execute_data(&u, &[0; 512], &l, &mut out), Action::Zero { lba: 2047, blocks: 1 });
    assert_eq!(execute_data(&u, &[1; 512], &l, &mut out), Action::Fill { lba: 2047, blocks: 1 });
    // NDOB: no Data-Out at all.
    assert_eq!(run_on(&cdb16(0x93, 0x09, 8, 8), &l).0, Action::Zero { lba: 8, blocks: 8 });
    // libiscsi test_writesame16_invalid_dataout_size: half or double a block.
    assert_eq!(execute_data(&c, &[0; 256], &l, &mut out), Action::Check(Sense::param_list_length()));
    assert_eq!(execute_data(&c, &[0; 1024], &l, &mut out), Action::Check(Sense::param_list_length()));
}

#[test]
fn write_same_edges() {
    // WSNZ: 0 blocks is INVALID FIELD (libiscsi test_writesame16_0blocks).
    invalid_field_at(check(&cdb16(0x93, 0, 0, 0)), 10, None);
    // Over the maximum write same length.
    let small = Lun { write_same_max_blocks: 16, ..lun() };
    invalid_field_at(check_on(&cdb16(0x93, 0x08, 0, 17), &small), 10, None);
    assert_eq!(run_on(&cdb16(0x93, 0x08, 0, 16), &small).0, Action::DataOut { len: 512 });
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
    invalid_field_at(check(&[0x41, 0, 0, 0, 0, 1, 0, 0, 0, 0]), 7, None);
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

// ---- MAINTENANCE IN

fn rsoc(options: u8, opcode: u8, sa: u16, alloc: u32) -> [u8; 12] {
    let mut c = [0xA3, 0x0C, options, opcode, 0, 0, 0, 0, 0, 0, 0, 0];
    c[4..6].copy_from_slice(&sa.to_be_bytes());
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

#[test]
fn report_supported_opcodes_all() {
    let d = data(&rsoc(0, 0, 0, 65535));
    let n = be32(&d, 0) as usize;
    assert_eq!(n + 4, d.len());
    assert_eq!(n % 8, 0);
    let descs: Vec<&[u8]> = d[4..].chunks(8).collect();
    // Every listed command runs (not INVALID COMMAND OPERATION CODE) and has its CDB length.
    for e in &descs {
        assert_eq!(cdb_len(e[0]), Some(usize::from(be16(e, 6))), "{e:02x?}");
        // libiscsi test_report_supported_opcodes_servactv: SA only with SERVACTV.
        if e[5] & 1 == 0 {
            assert_eq!(be16(e, 2), 0);
        }
    }
    for want in [0x00u8, 0x03, 0x12, 0x25, 0x28, 0x2A, 0x35, 0x42, 0x88, 0x8A, 0x93, 0x9E, 0xA0, 0xA3] {
        assert!(descs.iter().any(|e| e[0] == want), "{want:02x} listed");
    }
    // RCTD: 20 bytes per command, CTDP set, timeouts descriptor length 0Ah.
    let d = data(&rsoc(0x80, 0, 0, 65535));
    assert_eq!((be32(&d, 0) as usize) / 20, descs.len());
    for e in d[4..].chunks(20) {
        assert_eq!(e[5] & 0x02, 0x02);
        assert_eq!(be16(e, 8), 0x0A);
    }
    // Cut at the allocation length.
    assert_eq!(data(&rsoc(0, 0, 0, 10)).len(), 10);
}

#[test]
fn report_supported_opcodes_one_command() {
    // READ 10: CDB usage data with DPO/FUA (libiscsi test_read10_dpofua).
    let d = data(&rsoc(1, 0x28, 0, 65535));
    assert_eq!(d[1] & 0x07, 3, "supported");
    assert_eq!(be16(&d, 2), 10);
    assert_eq!(d[4], 0x28);
    assert_eq!(d[5] & 0x18, 0x18);
    // By opcode for a command with service actions: invalid; by opcode + SA: fine.
    invalid_field_at(check(&rsoc(1, 0x9E, 0x10, 65535)), 2, Some(2));
    let d = data(&rsoc(2, 0x9E, 0x10, 65535));
    assert_eq!((d[1] & 7, be16(&d, 2), d[4], d[5]), (3, 16, 0x9E, 0x10));
    // By opcode + SA for a command without: invalid.
    invalid_field_at(check(&rsoc(2, 0x28, 0, 65535)), 2, Some(2));
    // Not supported: SUPPORT 001b, no usage data.
    assert_eq!(data(&rsoc(1, 0x04, 0, 65535)), [0, 1, 0, 0]);
    assert_eq!(data(&rsoc(2, 0x9E, 0x11, 65535)), [0, 1, 0, 0]);
    // Option 3 takes either.
    assert_eq!(data(&rsoc(3, 0x28, 0x55, 65535))[4], 0x28);
    // RCTD adds the timeouts descriptor and CTDP.
    let d = data(&rsoc(0x81, 0x28, 0, 65535));
    assert_eq!(d[1] & 0x80, 0x80);
    assert_eq!(d.len(), 4 + 10 + 12);
    invalid_field_at(check(&rsoc(4, 0x28, 0, 65535)), 2, Some(2));
}

#[test]
fn every_listed_command_is_accepted_and_every_unlisted_refused() {
    // One-command answers agree with execute: a listed opcode never gets 20h/00h, an unlisted
    // one always does.
    let all = data(&rsoc(0, 0, 0, 65535));
    let listed: Vec<u8> = all[4..].chunks(8).map(|e| e[0]).collect();
    for opcode in 0..=255u8 {
        let mut cdb = [0u8; 16];
        cdb[0] = opcode;
        let (a, _) = run_on(&cdb, &lun());
        let refused = a == Action::Check(Sense::invalid_opcode());
        assert_eq!(refused, !listed.contains(&opcode), "{opcode:02x}: {a:?}");
    }
}

#[test]
fn report_supported_task_management_functions() {
    let d = data(&[0xA3, 0x0D, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0]);
    assert_eq!(d, [0xCA, 0, 0, 0], "ABORT TASK, ABORT TASK SET, LU RESET, TARGET RESET");
    let d = data(&[0xA3, 0x0D, 0x80, 0, 0, 0, 0, 0, 0, 16, 0, 0]);
    assert_eq!((d.len(), d[3]), (16, 0x0C));
    invalid_field_at(check(&[0xA3, 0x0D, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0]), 6, None);
}

#[test]
fn report_target_port_groups() {
    let l = Lun { relative_port: 2, port_group: 3, ..lun() };
    let (a, d) = run_on(&[0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &l);
    assert_eq!(a, Action::Data);
    assert_eq!(d, [0, 0, 0, 12, 0x80, 0x01, 0, 3, 0, 0, 0, 1, 0, 0, 0, 2]);
    let (_, d) = run_on(&[0xA3, 0x2A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &l);
    assert_eq!(&d[..8], &[0, 0, 0, 16, 0x10, 0, 0, 0]);
    invalid_field_at(check(&[0xA3, 0x4A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]), 1, Some(7));
    invalid_field_at(check(&[0xA3, 0x05, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]), 1, Some(4));
}

#[test]
fn what_ipxe_sends() {
    // iPXE: TEST UNIT READY, READ CAPACITY 10 (16 past 2^32), READ 10 / WRITE 10.
    let l = Lun { blocks: 16384, ..lun() };
    assert_eq!(run_on(&[0; 6], &l).0, Action::Good);
    assert_eq!(run_on(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &l).1, [0, 0, 0x3F, 0xFF, 0, 0, 2, 0]);
    assert_eq!(run_on(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &l).0, Action::Read { lba: 0, blocks: 1 });
    assert_eq!(run_on(&[0x2A, 0, 0, 0, 0x10, 0, 0, 0, 1, 0], &l).0, Action::Write { lba: 4096, blocks: 1, fua: false });
}
