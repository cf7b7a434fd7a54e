//! Literal PDUs, laid out by hand from RFC 7143 section 11's figures.

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn a_login_request_as_ipxe_sends_it() {
    // Opcode 0x43 (immediate login), T=1 CSG=0 NSG=1, version 0/0, 0x2c bytes of text,
    // ISID 0x80 0x00 0x00 0x00 0x00 0x01 (random format), TSIH 0, ITT 0x12345678, CID 0,
    // CmdSN 0, ExpStatSN 0.
    let b = hex("43 81 00 00 00 00 00 2c  80 00 00 00 00 01 00 00  12 34 56 78 00 00 00 00
         00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00");
    let bhs = Bhs::new(&b).unwrap();
    assert_eq!(bhs.opcode(), op::LOGIN);
    assert!(bhs.immediate());
    assert_eq!(bhs.data_len(), 0x2c);
    let Request::Login(l) = Request::parse(&bhs).unwrap() else { panic!() };
    assert_eq!(
        l,
        LoginReq {
            transit: true,
            cont: false,
            csg: STAGE_SECURITY,
            nsg: STAGE_OPERATIONAL,
            version_max: 0,
            version_min: 0,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0,
            itt: 0x1234_5678,
            cid: 0,
            cmdsn: 0,
            exp_statsn: 0,
            data_len: 0x2c,
        }
    );
    // 0x2c is a multiple of 4: no padding; with digests, 4 after the header and the data.
    assert_eq!(pdu_len(&bhs, Digests::default()), 48 + 0x2c);
    assert_eq!(pdu_len(&bhs, Digests { header: true, data: true }), 48 + 4 + 0x2c + 4);
    // CSG 1 -> NSG 3 with continue.
    let mut b2 = b.clone();
    b2[1] = 0x40 | (1 << 2) | 3;
    let Request::Login(l) = Request::parse(&Bhs::new(&b2).unwrap()).unwrap() else { panic!() };
    assert!(!l.transit && l.cont && l.csg == 1 && l.nsg == 3);
}

#[test]
fn a_read_10_command_with_its_cdb_and_window_fields() {
    // SCSI Command, F R, LUN 0, ITT 7, EDTL 4096, CmdSN 0x10, ExpStatSN 0x20, READ 10 of 8
    // blocks at LBA 0x01020304.
    let b = hex("01 c0 00 00 00 00 00 00  00 00 00 00 00 00 00 00  00 00 00 07 00 00 10 00
         00 00 00 10 00 00 00 20  28 00 01 02 03 04 00 00  08 00 00 00 00 00 00 00");
    let bhs = Bhs::new(&b).unwrap();
    let r = Request::parse(&bhs).unwrap();
    assert_eq!(r.cmdsn(), Some(0x10));
    let Request::Command(c) = r else { panic!() };
    assert!(c.final_ && c.read && !c.write && !c.immediate);
    assert_eq!((c.itt, c.expected_len, c.cmdsn, c.exp_statsn), (7, 4096, 0x10, 0x20));
    assert_eq!(&c.cdb[..10], &[0x28, 0, 1, 2, 3, 4, 0, 0, 8, 0]);
    assert_eq!((c.ahs_len, c.data_len), (0, 0));
    assert_eq!(pdu_len(&bhs, Digests { header: false, data: true }), 48, "no data digest without data");
}

#[test]
fn a_write_with_immediate_data_and_padding() {
    // WRITE 10 (F W, attr simple=1) with 5 bytes of immediate data: padded to 8.
    let mut b = hex("01 a1 00 00 00 00 00 05  00 01 00 00 00 00 00 00  00 00 00 09 00 00 02 00
         00 00 00 01 00 00 00 00  2a 00 00 00 00 00 00 00  01 00 00 00 00 00 00 00");
    let bhs = Bhs::new(&b).unwrap();
    let Request::Command(c) = Request::parse(&bhs).unwrap() else { panic!() };
    assert!(c.write && !c.read && c.attr == 1 && c.data_len == 5);
    assert_eq!(lun_id(c.lun), 1);
    let l = layout(&bhs, Digests::default());
    assert_eq!((l.data_off, l.data_len, l.total), (48, 5, 56));
    b[4] = 2; // 8 bytes of AHS
    let l = layout(&Bhs::new(&b).unwrap(), Digests { header: true, data: true });
    assert_eq!((l.ahs_len, l.data_off, l.total), (8, 60, 60 + 8 + 4));
}

#[test]
fn data_out_nop_out_task_mgmt_text_logout_snack() {
    let d = hex("05 80 00 00 00 00 02 00  00 00 00 00 00 00 00 00  00 00 00 09 00 00 00 2a
         00 00 00 00 00 00 00 05  00 00 00 00 00 00 00 03  00 00 10 00 00 00 00 00");
    let Request::DataOut(d) = Request::parse(&Bhs::new(&d).unwrap()).unwrap() else { panic!() };
    assert_eq!((d.final_, d.itt, d.ttt, d.exp_statsn, d.data_sn, d.offset, d.data_len), (true, 9, 42, 5, 3, 4096, 512));
    assert_eq!(Request::DataOut(d).cmdsn(), None);

    let n = hex("40 80 00 00 00 00 00 04  00 00 00 00 00 00 00 00  00 00 00 0b ff ff ff ff
         00 00 00 11 00 00 00 06  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00");
    let Request::NopOut(n) = Request::parse(&Bhs::new(&n).unwrap()).unwrap() else { panic!() };
    assert!(n.immediate && n.ttt == TAG_NONE && n.itt == 11 && n.cmdsn == 0x11 && n.data_len == 4);

    let t = hex("42 85 00 00 00 00 00 00  00 00 00 00 00 00 00 00  00 00 00 0c 00 00 00 00
         00 00 00 12 00 00 00 07  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00");
    let Request::TaskMgmt(t) = Request::parse(&Bhs::new(&t).unwrap()).unwrap() else { panic!() };
    assert_eq!((t.function, t.itt, t.cmdsn, t.immediate), (tmf::LUN_RESET, 12, 0x12, true));

    let x = hex("04 80 00 00 00 00 00 10  00 00 00 00 00 00 00 00  00 00 00 0d ff ff ff ff
         00 00 00 13 00 00 00 08  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00");
    let Request::Text(x) = Request::parse(&Bhs::new(&x).unwrap()).unwrap() else { panic!() };
    assert!(x.final_ && !x.cont && x.ttt == TAG_NONE && x.data_len == 16);

    let o = hex("46 80 00 00 00 00 00 00  00 00 00 00 00 00 00 00  00 00 00 0e 00 00 00 00
         00 00 00 14 00 00 00 09  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00");
    let Request::Logout(o) = Request::parse(&Bhs::new(&o).unwrap()).unwrap() else { panic!() };
    assert_eq!((o.reason, o.itt, o.cmdsn, o.immediate), (0, 14, 0x14, true));

    let s = hex("10 81 00 00 00 00 00 00  00 00 00 00 00 00 00 00  00 00 00 0f ff ff ff ff
         00 00 00 00 00 00 00 09  00 00 00 00 00 00 00 00  00 00 00 02 00 00 00 05");
    let Request::Snack(s) = Request::parse(&Bhs::new(&s).unwrap()).unwrap() else { panic!() };
    assert_eq!((s.kind, s.beg_run, s.run_length), (1, 2, 5));
}

#[test]
fn target_opcodes_and_unassigned_ones_are_refused_and_short_headers_too() {
    let mut b = [0u8; 48];
    for o in [op::NOP_IN, op::SCSI_RESPONSE, op::DATA_IN, op::R2T, op::REJECT, 0x07, 0x1c, 0x3e] {
        b[0] = o;
        assert_eq!(Request::parse(&Bhs::new(&b).unwrap()), Err(WireError::Opcode(o)));
    }
    assert!(Bhs::new(&b[..47]).is_err());
}

#[test]
fn data_in_with_status_and_underflow() {
    let mut out = vec![0xAA]; // emitters append
    DataIn {
        final_: true,
        status: Some(status::GOOD),
        lun: 0,
        itt: 7,
        sn: Sn { statsn: 0x21, exp_cmdsn: 0x11, max_cmdsn: 0x90 },
        data_sn: 2,
        offset: 0x2000,
        residual: 512,
        data_len: 0x1000,
    }
    .emit(&mut out);
    assert_eq!(
        out[1..],
        hex("25 83 00 00 00 00 10 00  00 00 00 00 00 00 00 00  00 00 00 07 ff ff ff ff
             00 00 00 21 00 00 00 11  00 00 00 90 00 00 00 02  00 00 20 00 00 00 02 00")[..]
    );
    // Without status: no S, no residual, StatSN reserved.
    let mut out = Vec::new();
    DataIn {
        final_: false,
        status: None,
        lun: 0,
        itt: 7,
        sn: Sn { statsn: 0x21, exp_cmdsn: 0x11, max_cmdsn: 0x90 },
        data_sn: 0,
        offset: 0,
        residual: 512,
        data_len: 8,
    }
    .emit(&mut out);
    assert_eq!(out[1], 0);
    assert_eq!(&out[24..28], &[0, 0, 0, 0]);
    assert_eq!(&out[44..48], &[0, 0, 0, 0]);
}

#[test]
fn scsi_response_with_sense_and_overflow() {
    let mut out = Vec::new();
    ScsiResponse {
        itt: 3,
        response: status::COMPLETED,
        status: status::CHECK_CONDITION,
        sn: Sn { statsn: 1, exp_cmdsn: 2, max_cmdsn: 3 },
        exp_data_sn: 0,
        residual: -4,
        data_len: 20,
    }
    .emit(&mut out);
    assert_eq!(
        out,
        hex("21 84 00 02 00 00 00 14  00 00 00 00 00 00 00 00  00 00 00 03 00 00 00 00
             00 00 00 01 00 00 00 02  00 00 00 03 00 00 00 00  00 00 00 00 00 00 00 04")
    );
}

#[test]
fn login_text_r2t_nop_in_tmf_logout_reject_async_responses() {
    let sn = Sn { statsn: 5, exp_cmdsn: 6, max_cmdsn: 7 };
    let mut out = Vec::new();
    LoginResponse {
        transit: true,
        cont: false,
        csg: 1,
        nsg: 3,
        version_max: 0,
        version_active: 0,
        isid: [0x80, 0, 0, 0, 0, 1],
        tsih: 0x0102,
        itt: 0x1234_5678,
        sn,
        status_class: 0,
        status_detail: 0,
        data_len: 0x31,
    }
    .emit(&mut out);
    assert_eq!(
        out,
        hex("23 87 00 00 00 00 00 31  80 00 00 00 00 01 01 02  12 34 56 78 00 00 00 00
             00 00 00 05 00 00 00 06  00 00 00 07 00 00 00 00  00 00 00 00 00 00 00 00")
    );
    out.clear();
    LoginResponse {
        transit: false,
        cont: false,
        csg: 0,
        nsg: 0,
        version_max: 0,
        version_active: 0,
        isid: [0; 6],
        tsih: 0,
        itt: 1,
        sn,
        status_class: 2,
        status_detail: 1,
        data_len: 0,
    }
    .emit(&mut out);
    assert_eq!((out[1], out[36], out[37]), (0, 2, 1));

    out.clear();
    TextResponse { final_: true, cont: false, lun: 0, itt: 9, ttt: TAG_NONE, sn, data_len: 3 }.emit(&mut out);
    put_padding(&mut out, 3);
    assert_eq!(out.len(), 49);
    assert_eq!(&out[..8], &hex("24 80 00 00 00 00 00 03")[..]);
    assert_eq!(&out[20..24], &[0xff; 4]);

    out.clear();
    R2t { lun: 0, itt: 9, ttt: 0x100, sn, r2t_sn: 1, offset: 0x10000, len: 0x40000 }.emit(&mut out);
    assert_eq!(
        out,
        hex("31 80 00 00 00 00 00 00  00 00 00 00 00 00 00 00  00 00 00 09 00 00 01 00
             00 00 00 05 00 00 00 06  00 00 00 07 00 00 00 01  00 01 00 00 00 04 00 00")
    );

    out.clear();
    NopIn { lun: 0, itt: TAG_NONE, ttt: 0x55, sn, data_len: 0 }.emit(&mut out);
    assert_eq!(&out[..4], &[0x20, 0x80, 0, 0]);
    assert_eq!(&out[16..24], &hex("ff ff ff ff 00 00 00 55")[..]);

    out.clear();
    TaskMgmtResponse { itt: 4, response: tmf::NOT_SUPPORTED, sn }.emit(&mut out);
    assert_eq!(&out[..4], &[0x22, 0x80, 5, 0]);

    out.clear();
    LogoutResponse { itt: 4, response: 0, sn, time2wait: 0, time2retain: 0 }.emit(&mut out);
    assert_eq!(&out[..4], &[0x26, 0x80, 0, 0]);
    assert_eq!(&out[24..28], &[0, 0, 0, 5]);

    out.clear();
    let mut bad = [0u8; 48];
    bad[0] = 0x1c;
    bad[16..20].copy_from_slice(&[0, 0, 0, 8]);
    Reject { reason: reject::COMMAND_NOT_SUPPORTED, sn }.emit(&mut out, &bad);
    assert_eq!(out.len(), 96);
    assert_eq!(&out[..8], &hex("3f 80 05 00 00 00 00 30")[..]);
    assert_eq!(&out[16..20], &[0xff; 4]);
    assert_eq!(&out[48..], &bad[..]);

    out.clear();
    Async { lun: 0, sn, event: ASYNC_LOGOUT_REQUEST, vcode: 0, params: [0, 0, 5], data_len: 0 }.emit(&mut out);
    assert_eq!(&out[36..44], &hex("01 00 00 00 00 00 00 05")[..]);
}

#[test]
fn digests_are_rfc_crc32c_least_significant_byte_first() {
    // RFC 7143 B.4: 32 bytes of zeros -> aa 36 91 8a on the wire.
    assert_eq!(digest_bytes(crc32c(&[&[0u8; 32]])), [0xaa, 0x36, 0x91, 0x8a]);
    // 0x00..0x1f ascending -> 4e 79 dd 46.
    let inc: Vec<u8> = (0..32).collect();
    assert_eq!(digest_bytes(crc32c(&[&inc[..10], &inc[10..]])), [0x4e, 0x79, 0xdd, 0x46]);
}

#[test]
fn serial_numbers_wrap() {
    assert!(sn_lt(1, 2) && !sn_lt(2, 1) && !sn_lt(3, 3));
    assert!(sn_lt(0xFFFF_FFF0, 5) && !sn_lt(5, 0xFFFF_FFF0));
    assert!(sn_le(7, 7) && sn_le(0xFFFF_FFFF, 0));
}

#[test]
fn luns_in_peripheral_and_flat_addressing() {
    assert_eq!(lun_id(0), 0);
    assert_eq!(lun_id(lun_field(1)), 1);
    assert_eq!(lun_field(1), 0x0001_0000_0000_0000);
    assert_eq!(lun_id(lun_field(300)), 300);
    assert_eq!(lun_field(300) >> 56, 0x41);
    // Multi-level or other methods: no such LUN.
    assert_eq!(lun_id(0x0001_0002_0000_0000), u64::MAX);
    assert_eq!(lun_id(0xC000_0000_0000_0000), u64::MAX);
}

#[test]
fn ahs_entries_walk_and_stop_at_a_bad_one() {
    // Extended CDB: AHSLength 17 (CDB of 32 = 16 + 16 bytes + the reserved byte), type 1.
    let mut ahs = vec![0, 17, AHS_EXTENDED_CDB, 0];
    ahs.extend(1..=16u8);
    ahs.resize(pad4(3 + 17), 0);
    // Bidi read length: AHSLength 5, type 2.
    ahs.extend_from_slice(&[0, 5, AHS_BIDI_READ_LEN, 0, 0, 0, 0x10, 0]);
    let e: Vec<_> = ahs_entries(&ahs).collect();
    assert_eq!(e.len(), 2);
    let (k, body) = e[0].unwrap();
    assert_eq!((k, body.len(), body[1], body[16]), (AHS_EXTENDED_CDB, 17, 1, 16));
    let (k, body) = e[1].unwrap();
    assert_eq!((k, &body[1..]), (AHS_BIDI_READ_LEN, &[0, 0, 0x10, 0][..]));
    // An entry that runs past the AHS.
    let bad = [0, 40, 1, 0, 0, 0, 0, 0];
    assert_eq!(ahs_entries(&bad).collect::<Vec<_>>(), vec![Err(())]);
    assert_eq!(ahs_entries(&[0, 0, 1]).collect::<Vec<_>>(), vec![Err(())]);
}
