//! Codec tests over literal packets, built as firmware sends them (DESIGN.md's lab table).

use super::*;

/// Hex (whitespace ignored) to bytes.
pub(crate) fn hex(s: &str) -> Vec<u8> {
    let d: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    d.chunks(2).map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap()).collect()
}

/// The fixed BOOTREQUEST header of MAC 52:54:00:12:34:56, xid 0x1a2b3c4d, secs 4, then `options`.
fn request(flags: &str, options: &str) -> Vec<u8> {
    let mut p =
        hex(&format!("01 01 06 00  1a2b3c4d  0004 {flags}  00000000 00000000 00000000 00000000  525400123456 00000000000000000000"));
    p.resize(236, 0); // sname and file empty
    p.extend(hex("63825363"));
    p.extend(hex(options));
    p
}

/// SeaBIOS + iPXE ROM's DISCOVER: 53=1, 57=1472, 93=0, 94=1.2.1, 60, 77 `iPXE`, 175, 61, 97, END.
const IPXE_ROM_OPTIONS: &str = "
    35 01 01
    39 02 05c0
    5d 02 0000
    5e 03 010201
    3c 20 505845436c69656e743a417263683a30303030303a554e44493a303032303031
    4d 04 69505845
    37 0c 01030607 0c0f111a 2b3c4243
    af 0d b1 05 01 8086 100e 13 01 01 11 01 01
    3d 07 01 525400123456
    61 11 00 00112233445566778899aabbccddeeff
    ff";

#[test]
fn parses_ipxe_rom_discover() {
    let p = request("0000", IPXE_ROM_OPTIONS);
    let r = parse(&p).unwrap();
    assert_eq!(r.op, Op::Request);
    assert_eq!(r.message_type, MessageType::Discover);
    assert_eq!(r.xid, 0x1a2b3c4d);
    assert_eq!(r.secs, 4);
    assert!(!r.broadcast);
    assert_eq!(r.chaddr, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    assert_eq!(r.max_message_size, Some(1472));
    assert_eq!(r.client_arch, Some(0));
    assert_eq!(r.client_ndi, Some([1, 2, 1]));
    assert_eq!(r.vendor_class, Some(&b"PXEClient:Arch:00000:UNDI:002001"[..]));
    assert!(r.has_user_class(b"iPXE"));
    assert!(r.ipxe_encap.is_some());
    assert_eq!(r.client_id, Some(&hex("01525400123456")[..]));
    assert_eq!(r.client_uuid.unwrap().len(), 17);
    assert_eq!(r.parameter_request_list.unwrap().len(), 12);
    assert_eq!(r.giaddr, Ipv4Addr::UNSPECIFIED);
    assert!(r.sname.is_empty() && r.file.is_empty());
}

#[test]
fn parses_ovmf_pxe_and_http_boot_discovers() {
    // EDK2 PXE: arch 7, UNDI 3.0, 97 with the GUID, broadcast flag set.
    let p = request(
        "8000",
        "35 01 01  39 02 05dc  5d 02 0007  5e 03 010300
         3c 20 505845436c69656e743a417263683a30303030373a554e44493a303033303030
         61 11 00 0102030405060708090a0b0c0d0e0f10  ff",
    );
    let r = parse(&p).unwrap();
    assert!(r.broadcast);
    assert_eq!(r.client_arch, Some(7));
    assert!(r.vendor_class.unwrap().starts_with(b"PXEClient:Arch:00007"));
    assert!(r.user_class.is_none() && r.ipxe_encap.is_none());
    // EDK2 HTTP Boot: arch 16 and HTTPClient.
    let p = request(
        "8000",
        "35 01 01  5d 02 0010  5e 03 010300
         3c 21 48545450436c69656e743a417263683a30303031363a554e44493a303033303030 ff",
    );
    let r = parse(&p).unwrap();
    assert_eq!(r.client_arch, Some(16));
    assert!(r.vendor_class.unwrap().starts_with(b"HTTPClient"));
}

#[test]
fn user_class_rfc3004_entries() {
    let p = request("0000", "35 01 01  4d 0b 04 69505845 05 6f74686572  ff");
    let r = parse(&p).unwrap();
    assert!(r.has_user_class(b"iPXE"));
    assert!(r.has_user_class(b"other"));
    assert!(!r.has_user_class(b"iPX"));
    let p = request("0000", "35 01 01  4d 03 09 6162  ff");
    assert!(!parse(&p).unwrap().has_user_class(b"ab"));
}

#[test]
fn pads_missing_end_and_unknown_options() {
    // Pads between options, an unknown option skipped, no END: lenient, as ROMs vary.
    let p = request("0000", "00 00 35 01 03 00 fe 02 aabb 36 04 c0a80001");
    let r = parse(&p).unwrap();
    assert_eq!(r.message_type, MessageType::Request);
    assert_eq!(r.server_id, Some(Ipv4Addr::new(192, 168, 0, 1)));
    // Anything after END is ignored.
    let p = request("0000", "35 01 01 ff 36 03 01");
    assert_eq!(parse(&p).unwrap().server_id, None);
}

#[test]
fn first_instance_of_a_repeated_option_wins() {
    let p = request("0000", "35 01 01 3c 03 616263 3c 03 78797a ff");
    assert_eq!(parse(&p).unwrap().vendor_class, Some(&b"abc"[..]));
}

#[test]
fn malformed_messages() {
    let good = request("0000", IPXE_ROM_OPTIONS);
    assert_eq!(parse(&good[..239]), Err(Malformed::TooShort));
    assert_eq!(parse(&[]), Err(Malformed::TooShort));
    let mut long = good.clone();
    long.resize(PACKET_MAX + 1, 0);
    assert_eq!(parse(&long), Err(Malformed::TooLong));
    long.truncate(PACKET_MAX);
    assert!(parse(&long).is_ok(), "padding up to the limit is fine");
    let mut b = good.clone();
    b[236] = 0;
    assert_eq!(parse(&b), Err(Malformed::BadCookie));
    let mut b = good.clone();
    b[0] = 3;
    assert_eq!(parse(&b), Err(Malformed::BadOp));
    let mut b = good.clone();
    b[2] = 16;
    assert_eq!(parse(&b), Err(Malformed::BadHardware));
    // An option running past the end, a length byte missing, fixed sizes wrong.
    assert_eq!(parse(&request("0000", "35 01 01 3c 20 5058")), Err(Malformed::BadOptionLength(60)));
    assert_eq!(parse(&request("0000", "35 01 01 3c")), Err(Malformed::BadOptionLength(60)));
    assert_eq!(parse(&request("0000", "35 02 0101 ff")), Err(Malformed::BadOptionLength(53)));
    assert_eq!(parse(&request("0000", "35 01 01 36 03 010203 ff")), Err(Malformed::BadOptionLength(54)));
    assert_eq!(parse(&request("0000", "35 01 01 5d 03 000000 ff")), Err(Malformed::BadOptionLength(93)));
    assert_eq!(parse(&request("0000", "35 01 01 5e 02 0102 ff")), Err(Malformed::BadOptionLength(94)));
    assert_eq!(parse(&request("0000", "35 01 01 61 00 ff")), Err(Malformed::BadOptionLength(97)));
    let mut uuid18 = "35 01 01 61 12".to_string();
    uuid18.push_str(&"00".repeat(18));
    assert_eq!(parse(&request("0000", &uuid18)), Err(Malformed::BadOptionLength(97)));
    assert_eq!(parse(&request("0000", "39 01 05 35 01 01 ff")), Err(Malformed::BadOptionLength(57)));
    // Message type missing or unknown.
    assert_eq!(parse(&request("0000", "3c 01 41 ff")), Err(Malformed::BadMessageType));
    assert_eq!(parse(&request("0000", "35 01 09 ff")), Err(Malformed::BadMessageType));
    assert_eq!(parse(&request("0000", "35 01 01 34 01 04 ff")), Err(Malformed::BadOverload));
}

#[test]
fn overloaded_file_and_sname_carry_options() {
    let mut p = request("0000", "35 01 01 34 01 03 ff");
    // file (108..236) holds 60 "PXEClient", sname (44..108) holds 67 "a.efi".
    let f = hex("3c 09 505845436c69656e74 ff");
    p[108..108 + f.len()].copy_from_slice(&f);
    let s = hex("43 05 612e656669 ff");
    p[44..44 + s.len()].copy_from_slice(&s);
    let r = parse(&p).unwrap();
    assert_eq!(r.vendor_class, Some(&b"PXEClient"[..]));
    assert_eq!(r.bootfile, Some(&b"a.efi"[..]));
    assert!(r.file.is_empty() && r.sname.is_empty(), "overloaded fields are not names");
    // Without option 52 the same bytes are just the names (up to their NUL).
    let mut p = request("0000", "35 01 01 ff");
    p[108..113].copy_from_slice(b"x.efi");
    let r = parse(&p).unwrap();
    assert_eq!(r.file, b"x.efi");
    assert_eq!(r.vendor_class, None);
}

#[test]
fn pxe_vendor_sub_options() {
    let v = PxeVendor { discovery_control: Some(pxe_sub::USE_BOOT_FILE), boot_item: Some((0x8000, 0)) };
    let mut b = [0u8; PxeVendor::BUFFER_LEN];
    let n = v.emit(&mut b);
    assert_eq!(&b[..n], &hex("06 01 08  47 04 8000 0000  ff")[..]);
    assert_eq!(PxeVendor::parse(&b[..n]), Ok(v));
    assert_eq!(PxeVendor::default().emit(&mut b), 0);
    assert_eq!(PxeVendor::parse(&hex("06 02 0808 ff")), Err(Malformed::BadOptionLength(43)));
    assert_eq!(PxeVendor::parse(&hex("06 05 08")), Err(Malformed::BadOptionLength(43)));
    // Unknown sub-options (a boot menu, 9) are skipped.
    assert_eq!(PxeVendor::parse(&hex("09 02 0000 06 01 08 ff")).unwrap().discovery_control, Some(8));
}

/// The BIOS proxy offer, byte for byte: what DESIGN.md says boots all three PXE clients.
#[test]
fn emits_proxy_offer_literal() {
    let uuid = hex("00 00112233445566778899aabbccddeeff");
    let mut vend = [0u8; PxeVendor::BUFFER_LEN];
    let n = PxeVendor { discovery_control: Some(pxe_sub::USE_BOOT_FILE), boot_item: None }.emit(&mut vend);
    let mut r = Repr::new(Op::Reply, MessageType::Offer, 0x1a2b3c4d, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    r.broadcast = true;
    r.siaddr = Ipv4Addr::new(10, 0, 0, 2);
    r.sname = b"10.0.0.2";
    r.file = b"undionly.kpxe";
    r.server_id = Some(Ipv4Addr::new(10, 0, 0, 1));
    r.vendor_class = Some(b"PXEClient");
    r.client_uuid = Some(&uuid);
    r.vendor_specific = Some(&vend[..n]);
    let mut buf = [0u8; PACKET_MAX];
    let len = r.emit(&mut buf).unwrap();
    assert_eq!(len, PACKET_MIN, "padded to BOOTP's minimum");
    assert_eq!(len, r.buffer_len());
    let mut want = hex("02 01 06 00  1a2b3c4d  0000 8000  00000000 00000000 0a000002 00000000  525400123456");
    want.resize(44, 0);
    want.extend_from_slice(b"10.0.0.2");
    want.resize(108, 0);
    want.extend_from_slice(b"undionly.kpxe");
    want.resize(236, 0);
    want.extend(hex("63825363  35 01 02  36 04 0a000001  3c 09 505845436c69656e74
         61 11 00 00112233445566778899aabbccddeeff  2b 04 060108ff  ff"));
    want.resize(PACKET_MIN, 0);
    assert_eq!(&buf[..len], &want[..]);
    assert_eq!(parse(&buf[..len]).unwrap(), r);
}

#[test]
fn round_trips_every_field() {
    let pr = [1u8, 3, 43, 60, 66, 67];
    let mut r = Repr::new(Op::Request, MessageType::Request, 7, [2, 0, 0, 0, 0, 9]);
    r.hops = 1;
    r.secs = 9;
    r.ciaddr = Ipv4Addr::new(10, 1, 2, 3);
    r.giaddr = Ipv4Addr::new(10, 9, 9, 1);
    r.requested_ip = Some(Ipv4Addr::new(10, 1, 2, 3));
    r.server_id = Some(Ipv4Addr::new(10, 0, 0, 1));
    r.parameter_request_list = Some(&pr);
    r.max_message_size = Some(1472);
    r.vendor_class = Some(b"PXEClient:Arch:00007:UNDI:003000");
    r.client_id = Some(b"\x01\x02\x00\x00\x00\x00\x09");
    r.tftp_server = Some(b"10.0.0.2");
    r.bootfile = Some(b"ipxe.efi");
    r.user_class = Some(b"iPXE");
    r.client_arch = Some(7);
    r.client_ndi = Some([1, 3, 16]);
    r.client_uuid = Some(b"\x00abcdefghijklmnop");
    r.ipxe_encap = Some(b"\x10\x01\x01");
    r.relay_agent = Some(b"\x01\x04eth0");
    r.vendor_specific = Some(b"\x06\x01\x08\xff");
    let mut buf = vec![0u8; r.buffer_len()];
    let n = r.emit(&mut buf).unwrap();
    assert_eq!(parse(&buf[..n]).unwrap(), r);
    // 82 is the last option before END.
    assert_eq!(&buf[n - 9..n], b"\x52\x06\x01\x04eth0\xff");
}

#[test]
fn emit_refuses_what_does_not_fit() {
    let long = [b'a'; 256];
    let mut r = Repr::new(Op::Reply, MessageType::Ack, 1, [0; 6]);
    r.bootfile = Some(&long);
    let mut buf = [0u8; PACKET_MAX];
    assert_eq!(r.emit(&mut buf), Err(EmitError::ValueTooLong(67)));
    r.bootfile = Some(&long[..255]);
    assert!(r.emit(&mut buf).is_ok());
    r.file = &long[..129];
    assert_eq!(r.emit(&mut buf), Err(EmitError::ValueTooLong(0)));
    r.sname = &long[..65];
    r.file = &long[..128];
    assert_eq!(r.emit(&mut buf), Err(EmitError::ValueTooLong(0)));
    r.file = b"a\0b";
    r.sname = b"";
    assert_eq!(r.emit(&mut buf), Err(EmitError::ValueTooLong(0)), "a NUL would cut the name");
    // Full fields without a NUL (found by the fuzz target: what parse reads, emit writes).
    r.sname = &long[..64];
    r.file = &long[..128];
    let n = r.emit(&mut buf).unwrap();
    let back = parse(&buf[..n]).unwrap();
    assert_eq!((back.sname.len(), back.file.len()), (64, 128));
    assert_eq!(r.emit(&mut buf[..299]), Err(EmitError::BufferTooShort));
}

/// Every packet h5 captured from real firmware and dnsmasq in the lab (captures/README.md)
/// parses, and its Repr survives emit + parse.
#[test]
fn real_captures_parse_and_round_trip() {
    let mut n = 0;
    for e in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/dhcp/captures")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "bin") {
            continue;
        }
        let b = std::fs::read(&p).unwrap();
        let r = parse(&b).unwrap_or_else(|e| panic!("{}: {e:?}", p.display()));
        let mut out = vec![0u8; r.buffer_len()];
        let len = r.emit(&mut out).unwrap();
        assert_eq!(parse(&out[..len]).unwrap(), r, "{}", p.display());
        n += 1;
    }
    assert_eq!(n, 23);
}

#[test]
fn real_firmware_fields() {
    let rom = parse(include_bytes!("captures/seabios-ipxe-rom-discover.bin")).unwrap();
    assert_eq!(rom.vendor_class, Some(&b"PXEClient:Arch:00000:UNDI:002001"[..]));
    assert!(rom.has_user_class(b"iPXE") && rom.has_ipxe_feature(ipxe_feature::HTTP));
    assert_eq!((rom.client_arch, rom.max_message_size, rom.broadcast), (Some(0), Some(1472), false));
    let undi = parse(include_bytes!("captures/undionly-kpxe-discover.bin")).unwrap();
    assert_eq!(undi.vendor_class, Some(&b"PXEClient"[..]), "exactly PXEClient");
    assert!(undi.has_user_class(b"iPXE") && undi.broadcast);
    let ovmf = parse(include_bytes!("captures/ovmf-pxe-request-4011.bin")).unwrap();
    assert_eq!((ovmf.message_type, ovmf.client_arch), (MessageType::Request, Some(7)));
    assert_eq!(ovmf.ciaddr, Ipv4Addr::new(10, 77, 0, 136));
    assert_eq!(ovmf.client_uuid.map(<[u8]>::len), Some(17));
    let http = parse(include_bytes!("captures/ovmf-httpboot-discover.bin")).unwrap();
    assert!(http.vendor_class.unwrap().starts_with(b"HTTPClient:Arch:00016"));
    let bs = parse(include_bytes!("captures/seabios-ipxe-rom-request-4011.bin")).unwrap();
    assert_eq!(PxeVendor::parse(bs.vendor_specific.unwrap()).unwrap().boot_item, Some((0x8000, 0)));
    // dnsmasq's proxy offer carries a boot menu (43: 6=3, 8, 9, 10): read without error.
    let offer = parse(include_bytes!("captures/proxy-dnsmasq-offer-to-seabios-ipxe-rom.bin")).unwrap();
    assert_eq!(PxeVendor::parse(offer.vendor_specific.unwrap()).unwrap().discovery_control, Some(3));
}
