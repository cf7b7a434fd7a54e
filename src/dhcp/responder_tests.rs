//! The responder per client kind, relay, 97 echo, refusals, rate limit, drain, and placement
//! agreement between nodes. Requests are built with the codec (itself tested on literals).

use super::*;
use crate::config::{Affinity, FarmMember};
use crate::farm::place::{self, ServerState};
use std::time::Duration;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const UUID: &[u8] = b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10";
const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SERVER: BootServer = BootServer { address: Ipv4Addr::new(10, 0, 0, 7), http_port: 8080 };
/// iPXE's 175 with the HTTP feature (0x13) and iSCSI (0x11).
const IPXE_FEATURES: &[u8] = b"\x13\x01\x01\x11\x01\x01";

fn discover<'a>(class: &'a [u8], arch: u16) -> Repr<'a> {
    let mut r = Repr::new(Op::Request, MessageType::Discover, 0xdead_beef, MAC);
    r.vendor_class = Some(class);
    r.client_arch = Some(arch);
    r.client_ndi = Some([1, 3, 0]);
    r.client_uuid = Some(UUID);
    r.broadcast = true;
    r
}

fn bytes(r: &Repr) -> Vec<u8> {
    let mut b = vec![0u8; r.buffer_len()];
    let n = r.emit(&mut b).unwrap();
    b.truncate(n);
    b
}

struct Run {
    responder: Responder,
    cfg: Pxe,
    now: Instant,
    out: Box<[u8; wire::PACKET_MAX]>,
}

impl Run {
    fn new() -> Run {
        let now = Instant::now();
        Run { responder: Responder::new(now), cfg: Pxe::default(), now, out: Box::new([0; wire::PACKET_MAX]) }
    }

    fn send_from(&mut self, b: &[u8], port: Port, source: SocketAddrV4, draining: bool) -> Result<(Answer, Repr<'_>), Refusal> {
        let inbound = Inbound { bytes: b, source, port, local: LOCAL, now: self.now, draining };
        let a = self.responder.handle(&self.cfg, &inbound, &mut |_, _| Some(SERVER), &mut self.out)?;
        assert!(a.len >= wire::PACKET_MIN && a.len <= wire::PACKET_MAX);
        let r = wire::parse(&self.out[..a.len]).expect("the answer parses");
        Ok((a, r))
    }

    fn send(&mut self, r: &Repr, port: Port) -> Result<(Answer, Repr<'_>), Refusal> {
        let b = bytes(r);
        let src = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
        // The answer borrows self.out, not b.
        let inbound = Inbound { bytes: &b, source: src, port, local: LOCAL, now: self.now, draining: false };
        let a = self.responder.handle(&self.cfg, &inbound, &mut |_, _| Some(SERVER), &mut self.out)?;
        Ok((a, wire::parse(&self.out[..a.len]).unwrap()))
    }
}

/// What every proxy answer has: no address, the client's xid/chaddr, 54 = us, 97 echoed.
fn common(a: &Repr, t: MessageType) {
    assert_eq!(a.op, Op::Reply);
    assert_eq!(a.message_type, t);
    assert_eq!(a.xid, 0xdead_beef);
    assert_eq!(a.chaddr, MAC);
    assert_eq!(a.yiaddr, Ipv4Addr::UNSPECIFIED, "a proxy never offers an address");
    assert_eq!(a.server_id, Some(LOCAL));
    assert_eq!(a.client_uuid, Some(UUID));
}

#[test]
fn bios_pxe_gets_the_nbp_with_option_43() {
    let mut run = Run::new();
    let (ans, a) = run.send(&discover(b"PXEClient:Arch:00000:UNDI:002001", 0), Port::Proxy).unwrap();
    common(&a, MessageType::Offer);
    assert_eq!(ans.kind, ClientKind::Bios);
    assert_eq!(ans.destination, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    assert!(ans.broadcast);
    assert_eq!(a.siaddr, SERVER.address);
    assert_eq!(a.sname, b"10.0.0.7");
    assert_eq!(a.file, b"undionly.kpxe");
    assert_eq!(a.vendor_class, Some(&b"PXEClient"[..]));
    assert_eq!(a.vendor_specific, Some(&b"\x06\x01\x08\xff"[..]));
    assert!(a.broadcast, "the broadcast flag is kept");
}

#[test]
fn uefi_pxe_offer_without_43_then_ack_on_4011() {
    let mut run = Run::new();
    let d = discover(b"PXEClient:Arch:00007:UNDI:003000", 7);
    let (ans, a) = run.send(&d, Port::Proxy).unwrap();
    common(&a, MessageType::Offer);
    assert_eq!(ans.kind, ClientKind::Uefi);
    assert_eq!(a.vendor_specific, None, "EDK2 then asks on 4011");
    assert_eq!((a.siaddr, a.file), (SERVER.address, &b"ipxe.efi"[..]));
    // EDK2's REQUEST to 4011, from port 4011, with its address, and a boot item in 43.
    let mut r = d.clone();
    r.message_type = MessageType::Request;
    r.ciaddr = Ipv4Addr::new(10, 0, 0, 50);
    r.broadcast = false;
    r.vendor_specific = Some(b"\x47\x04\x00\x00\x00\x00\xff");
    let b = bytes(&r);
    let src = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 50), 4011);
    let (ans, a) = run.send_from(&b, Port::Pxe, src, false).unwrap();
    common(&a, MessageType::Ack);
    assert_eq!(ans.destination, src, "answered where it came from");
    assert!(!ans.broadcast);
    assert_eq!((a.siaddr, a.file), (SERVER.address, &b"ipxe.efi"[..]));
    assert_eq!(a.vendor_class, Some(&b"PXEClient"[..]));
    let v = PxeVendor::parse(a.vendor_specific.unwrap()).unwrap();
    assert_eq!(v, PxeVendor { discovery_control: None, boot_item: Some((0, 0)) }, "boot item echoed");
    assert_eq!(a.ciaddr, r.ciaddr);
    // Without a boot item in the request, no 43 in the ACK (what dnsmasq sends EDK2).
    r.vendor_specific = None;
    let (_, a) = run.send_from(&bytes(&r), Port::Pxe, src, false).unwrap();
    assert_eq!(a.vendor_specific, None);
    // Configured to skip 4011: 43 in the offer.
    run.cfg.uefi_via_pxe_port = false;
    let (_, a) = run.send(&d, Port::Proxy).unwrap();
    assert_eq!(a.vendor_specific, Some(&b"\x06\x01\x08\xff"[..]));
}

#[test]
fn uefi_http_boot_gets_an_ip_literal_url() {
    let mut run = Run::new();
    let (ans, a) = run.send(&discover(b"HTTPClient:Arch:00016:UNDI:003000", 16), Port::Proxy).unwrap();
    common(&a, MessageType::Offer);
    assert_eq!(ans.kind, ClientKind::UefiHttp);
    assert_eq!(a.vendor_class, Some(&b"HTTPClient"[..]));
    assert_eq!(a.bootfile, Some(&b"http://10.0.0.7:8080/boot/ipxe.efi"[..]));
    assert_eq!(a.file, b"http://10.0.0.7:8080/boot/ipxe.efi");
    assert_eq!(a.vendor_specific, None);
    // Other HTTP Boot arches have no file configured.
    assert_eq!(run.send(&discover(b"HTTPClient:Arch:00019:UNDI:003000", 19), Port::Proxy).unwrap_err(), Refusal::UnsupportedArch(19));
}

#[test]
fn ipxe_gets_the_script_url_and_cannot_loop() {
    let mut run = Run::new();
    for (class, arch) in [(&b"PXEClient:Arch:00000:UNDI:002001"[..], 0), (b"PXEClient:Arch:00007:UNDI:003010", 7), (b"PXEClient", 0)] {
        let mut d = discover(class, arch);
        d.user_class = Some(b"iPXE");
        d.ipxe_encap = Some(IPXE_FEATURES);
        let (ans, a) = run.send(&d, Port::Proxy).unwrap();
        common(&a, MessageType::Offer);
        assert_eq!(ans.kind, ClientKind::Ipxe);
        let url = &b"http://10.0.0.7:8080/ipxe?mac=${mac}"[..];
        assert_eq!((a.bootfile, a.file), (Some(url), url), "the script, never another iPXE binary");
        // Its ProxyDHCPREQUEST to 4011 from port 68 gets the same.
        d.message_type = MessageType::Request;
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 51), 68);
        let (ans, a) = run.send_from(&bytes(&d), Port::Pxe, src, false).unwrap();
        assert_eq!((ans.kind, ans.destination, a.bootfile), (ClientKind::Ipxe, src, Some(url)));
    }
    // Option 175 alone marks iPXE too; one without the HTTP feature is booted as its arch.
    let mut d = discover(b"PXEClient", 0);
    d.ipxe_encap = Some(b"\x11\x01\x01");
    assert_eq!(run.send(&d, Port::Proxy).unwrap().0.kind, ClientKind::Bios);
    d.ipxe_encap = Some(IPXE_FEATURES);
    assert_eq!(run.send(&d, Port::Proxy).unwrap().0.kind, ClientKind::Ipxe);
}

#[test]
fn the_ipxe_rom_literal_discover_is_answered_as_ipxe() {
    // SeaBIOS + iPXE ROM, as in wire_tests (DESIGN.md's lab table).
    let mut p = super::super::wire::tests::hex(
        "01 01 06 00  1a2b3c4d  0004 0000  00000000 00000000 00000000 00000000  525400123456 00000000000000000000",
    );
    p.resize(236, 0);
    p.extend(super::super::wire::tests::hex(
        "63825363 35 01 01  39 02 05c0  5d 02 0000  5e 03 010201
         3c 20 505845436c69656e743a417263683a30303030303a554e44493a303032303031
         4d 04 69505845  af 0d b1 05 01 8086 100e 13 01 01 11 01 01
         61 11 00 00112233445566778899aabbccddeeff ff",
    ));
    let mut run = Run::new();
    let src = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
    let (ans, a) = run.send_from(&p, Port::Proxy, src, false).unwrap();
    assert_eq!(ans.kind, ClientKind::Ipxe);
    assert_eq!(a.xid, 0x1a2b3c4d);
    assert_eq!(a.client_uuid.unwrap()[1..4], [0, 0x11, 0x22]);
}

#[test]
fn plain_dhcp_and_other_messages_get_nothing() {
    let mut run = Run::new();
    let mut plain = discover(b"", 0);
    plain.vendor_class = None;
    plain.client_arch = None;
    assert_eq!(run.send(&plain, Port::Proxy).unwrap_err(), Refusal::NotPxe);
    plain.vendor_class = Some(b"MSFT 5.0");
    assert_eq!(run.send(&plain, Port::Proxy).unwrap_err(), Refusal::NotPxe);
    let pxe = discover(b"PXEClient:Arch:00000:UNDI:002001", 0);
    // A REQUEST on 67 is the site server's; a DISCOVER on 4011 is not PXE boot-server traffic.
    let mut r = pxe.clone();
    r.message_type = MessageType::Request;
    assert_eq!(run.send(&r, Port::Proxy).unwrap_err(), Refusal::NotForProxy);
    assert_eq!(run.send(&pxe, Port::Pxe).unwrap_err(), Refusal::NotForProxy);
    // A REQUEST on 4011 from no address (nothing to unicast the ACK to).
    let mut r4011 = pxe.clone();
    r4011.message_type = MessageType::Request;
    assert_eq!(run.send(&r4011, Port::Pxe).unwrap_err(), Refusal::NotForProxy, "source 0.0.0.0");
    let b = bytes(&r4011);
    let src = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 5), 0);
    assert_eq!(run.send_from(&b, Port::Pxe, src, false).unwrap_err(), Refusal::NotForProxy, "source port 0");
    // Another server's offer (a BOOTREPLY) is never answered.
    let mut o = pxe.clone();
    o.op = Op::Reply;
    o.message_type = MessageType::Offer;
    assert_eq!(run.send(&o, Port::Proxy).unwrap_err(), Refusal::NotForProxy);
    assert_eq!(run.send(&discover(b"PXEClient:Arch:00011:UNDI:003000", 11), Port::Proxy).unwrap_err(), Refusal::UnsupportedArch(11));
}

#[test]
fn malformed_datagrams_are_refused_not_answered() {
    let mut run = Run::new();
    let good = bytes(&discover(b"PXEClient", 0));
    let src = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
    for (b, why) in [
        (&good[..100], wire::Malformed::TooShort),
        (&[][..], wire::Malformed::TooShort),
        (&[0u8; wire::PACKET_MAX + 1][..], wire::Malformed::TooLong),
    ] {
        assert_eq!(run.send_from(b, Port::Proxy, src, false).unwrap_err(), Refusal::Malformed(why));
    }
    // An option length running past the end.
    let mut bad = good[..wire::HEADER_LEN].to_vec();
    bad.extend_from_slice(b"\x35\x01\x01\x3c\x40PXE");
    assert_eq!(run.send_from(&bad, Port::Proxy, src, false).unwrap_err(), Refusal::Malformed(wire::Malformed::BadOptionLength(60)));
}

#[test]
fn relayed_requests_go_back_to_the_relay_with_82() {
    let mut run = Run::new();
    let mut d = discover(b"PXEClient:Arch:00000:UNDI:002001", 0);
    d.giaddr = Ipv4Addr::new(10, 9, 0, 1);
    d.hops = 1;
    d.relay_agent = Some(b"\x01\x04eth3\x02\x02ab");
    let b = bytes(&d);
    let mut seen = None;
    let inbound =
        Inbound { bytes: &b, source: SocketAddrV4::new(d.giaddr, 67), port: Port::Proxy, local: LOCAL, now: run.now, draining: false };
    let ans = run
        .responder
        .handle(
            &run.cfg,
            &inbound,
            &mut |mac, near| {
                seen = Some((mac.to_string(), near));
                Some(SERVER)
            },
            &mut run.out,
        )
        .unwrap();
    assert_eq!(seen, Some(("52:54:00:12:34:56".to_string(), d.giaddr)), "placed by the MAC, near the relay's subnet");
    assert_eq!(ans.destination, SocketAddrV4::new(d.giaddr, 67));
    assert!(!ans.broadcast);
    let a = wire::parse(&run.out[..ans.len]).unwrap();
    assert_eq!((a.giaddr, a.hops), (d.giaddr, 1));
    assert_eq!(a.relay_agent, d.relay_agent, "option 82 echoed");
    run.cfg.relay = Relay::Ignore;
    assert_eq!(run.send(&d, Port::Proxy).unwrap_err(), Refusal::Relayed);
}

#[test]
fn uuid_echoed_only_when_sent_and_unicast_to_ciaddr() {
    let mut run = Run::new();
    let mut d = discover(b"PXEClient", 0);
    d.client_uuid = None;
    d.broadcast = false;
    d.ciaddr = Ipv4Addr::new(10, 0, 0, 99);
    let (ans, a) = run.send(&d, Port::Proxy).unwrap();
    assert_eq!(a.client_uuid, None);
    assert_eq!(ans.destination, SocketAddrV4::new(d.ciaddr, 68), "a client with an address gets unicast");
    // server_address overrides the arrival address; client_port the broadcast port.
    run.cfg.server_address = Some(Ipv4Addr::new(192, 0, 2, 1));
    run.cfg.client_port = 6868;
    d.ciaddr = Ipv4Addr::UNSPECIFIED;
    let (ans, a) = run.send(&d, Port::Proxy).unwrap();
    assert_eq!(a.server_id, Some(Ipv4Addr::new(192, 0, 2, 1)));
    assert_eq!(ans.destination, SocketAddrV4::new(Ipv4Addr::BROADCAST, 6868));
}

#[test]
fn rate_limit_per_mac_and_drain() {
    let mut run = Run::new();
    let d = discover(b"PXEClient", 0);
    let answered = (0..40).filter(|_| run.send(&d, Port::Proxy).is_ok()).count();
    assert_eq!(answered, 16, "the burst, then nothing at the same instant");
    assert_eq!(run.send(&d, Port::Proxy).unwrap_err(), Refusal::RateLimited);
    let mut other = d.clone();
    other.chaddr = [2, 0, 0, 0, 0, 1];
    assert!(run.send(&other, Port::Proxy).is_ok(), "another MAC has its own bucket");
    run.now += Duration::from_millis(250);
    assert!(run.send(&d, Port::Proxy).is_ok(), "one answer per 250 ms at 4/s");
    assert_eq!(run.send(&d, Port::Proxy).unwrap_err(), Refusal::RateLimited);
    // Over 10 s of a flood: burst + rate x time at most.
    let t0 = run.now;
    let mut n = 0;
    for i in 0..10_000u64 {
        run.now = t0 + Duration::from_millis(i);
        n += run.send(&d, Port::Proxy).is_ok() as u32;
    }
    assert!((39..=41).contains(&n), "{n}");
    let b = bytes(&other);
    let src = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
    assert_eq!(run.send_from(&b, Port::Proxy, src, true).unwrap_err(), Refusal::Draining);
    // No server placed: nothing.
    let inbound = Inbound { bytes: &b, source: src, port: Port::Proxy, local: LOCAL, now: run.now, draining: false };
    assert_eq!(run.responder.handle(&run.cfg, &inbound, &mut |_, _| None, &mut run.out).unwrap_err(), Refusal::NoServer);
}

/// Three nodes, one farm table: whichever node's offer a client takes names the same server,
/// and after the placed one goes down, all three name the same next one.
#[test]
fn three_nodes_name_the_same_server() {
    let farm: Vec<FarmMember> = (1..=3)
        .map(|i| FarmMember {
            name: format!("node{i}"),
            address: std::net::IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)),
            power: 1.0,
            subnets: vec![],
            vdisks: vec![],
            max_booting: 0,
            http_port: 8080,
        })
        .collect();
    let now = Instant::now();
    let mut nodes: Vec<Responder> = (0..3).map(|_| Responder::new(now)).collect();
    let cfg = Pxe::default();
    let mut out = [0u8; wire::PACKET_MAX];
    let mut firsts = std::collections::HashSet::new();
    for down in [None, Some(0usize), Some(1)] {
        for m in 0..60u8 {
            let mut d = discover(b"PXEClient", 0);
            d.chaddr = [2, 0, 0, 0, 1, m];
            let b = bytes(&d);
            let mut named = Vec::new();
            for (k, node) in nodes.iter_mut().enumerate() {
                let state = |i: usize| ServerState { up: Some(i) != down, replica_ok: true, active: 0, booting: 0 };
                let mut placer = |mac: &str, _near: Ipv4Addr| {
                    let order = place::place(&farm, &state, "win10", mac, None, Affinity::None, 0.25);
                    let m = &farm[*order.first()?];
                    let std::net::IpAddr::V4(address) = m.address else { return None };
                    Some(BootServer { address, http_port: m.http_port })
                };
                let local = Ipv4Addr::new(10, 0, 0, k as u8 + 1);
                let src = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
                let inbound = Inbound { bytes: &b, source: src, port: Port::Proxy, local, now, draining: false };
                let ans = node.handle(&cfg, &inbound, &mut placer, &mut out).unwrap();
                let a = wire::parse(&out[..ans.len]).unwrap();
                assert_eq!(a.server_id, Some(local), "54 is each node's own");
                named.push(a.siaddr);
            }
            assert!(named.iter().all(|s| *s == named[0]), "mac {m}: {named:?}");
            if let Some(d) = down {
                assert_ne!(named[0], Ipv4Addr::new(10, 0, 0, d as u8 + 1), "a down node is never named");
            }
            firsts.insert(named[0]);
        }
    }
    assert_eq!(firsts.len(), 3, "targets spread over the farm");
}

/// The real firmware packets (captures/README.md) through the responder: the kind each gets,
/// and silence for everything that is not a proxy's business.
#[test]
fn real_captures_get_the_right_answers() {
    let mut run = Run::new();
    let bcast = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
    let cases: &[(&[u8], Port, SocketAddrV4, ClientKind, MessageType)] = &[
        (include_bytes!("captures/seabios-ipxe-rom-discover.bin"), Port::Proxy, bcast, ClientKind::Ipxe, MessageType::Offer),
        (include_bytes!("captures/undionly-kpxe-discover.bin"), Port::Proxy, bcast, ClientKind::Ipxe, MessageType::Offer),
        (include_bytes!("captures/ipxe-efi-discover.bin"), Port::Proxy, bcast, ClientKind::Ipxe, MessageType::Offer),
        (include_bytes!("captures/ovmf-pxe-discover.bin"), Port::Proxy, bcast, ClientKind::Uefi, MessageType::Offer),
        (include_bytes!("captures/ovmf-httpboot-discover.bin"), Port::Proxy, bcast, ClientKind::UefiHttp, MessageType::Offer),
        (
            include_bytes!("captures/ovmf-pxe-request-4011.bin"),
            Port::Pxe,
            SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 136), 4011),
            ClientKind::Uefi,
            MessageType::Ack,
        ),
        (
            include_bytes!("captures/seabios-ipxe-rom-request-4011.bin"),
            Port::Pxe,
            SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 135), 68),
            ClientKind::Ipxe,
            MessageType::Ack,
        ),
    ];
    for &(b, port, src, kind, t) in cases {
        let (ans, a) = run.send_from(b, port, src, false).unwrap();
        assert_eq!((ans.kind, a.message_type), (kind, t));
        assert_eq!(a.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(a.client_uuid.map(<[u8]>::len), Some(17), "97 echoed");
        match port {
            Port::Pxe => assert_eq!(ans.destination, src),
            Port::Proxy => assert_eq!(ans.destination, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)),
        }
        match kind {
            ClientKind::Uefi => assert_eq!((a.siaddr, a.file), (SERVER.address, &b"ipxe.efi"[..])),
            ClientKind::UefiHttp => assert_eq!(a.bootfile, Some(&b"http://10.0.0.7:8080/boot/ipxe.efi"[..])),
            ClientKind::Ipxe => assert_eq!(a.bootfile, Some(&b"http://10.0.0.7:8080/ipxe?mac=${mac}"[..])),
            ClientKind::Bios => unreachable!(),
        }
    }
    // The boot-server request's item is echoed.
    let (_, a) = run
        .send_from(
            include_bytes!("captures/seabios-ipxe-rom-request-4011.bin"),
            Port::Pxe,
            SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 135), 68),
            false,
        )
        .unwrap();
    assert_eq!(PxeVendor::parse(a.vendor_specific.unwrap()).unwrap().boot_item, Some((0x8000, 0)));
    // REQUESTs to the site server and every server's replies: nothing.
    for b in [
        &include_bytes!("captures/ovmf-pxe-request.bin")[..],
        include_bytes!("captures/seabios-ipxe-rom-request.bin"),
        include_bytes!("captures/undionly-kpxe-request.bin"),
        include_bytes!("captures/site-dnsmasq-offer-to-ovmf-pxe.bin"),
        include_bytes!("captures/site-dnsmasq-ack-to-seabios-ipxe-rom.bin"),
        include_bytes!("captures/proxy-dnsmasq-offer-to-ovmf-pxe.bin"),
        include_bytes!("captures/proxy-dnsmasq-ack-4011-to-ovmf-pxe.bin"),
    ] {
        assert_eq!(run.send_from(b, Port::Proxy, bcast, false).unwrap_err(), Refusal::NotForProxy);
    }
}

#[test]
fn arch_from_option_60_when_93_is_missing() {
    assert_eq!(arch_of_class(b"PXEClient:Arch:00007:UNDI:003000"), Some(7));
    assert_eq!(arch_of_class(b"HTTPClient:Arch:00016:UNDI:003000"), Some(16));
    assert_eq!(arch_of_class(b"PXEClient"), None);
    assert_eq!(arch_of_class(b"PXEClient:Arch:0x007"), None);
    assert_eq!(arch_of_class(b"PXEClient:Arch:"), None);
    let mut run = Run::new();
    let mut d = discover(b"PXEClient:Arch:00007:UNDI:003000", 0);
    d.client_arch = None;
    assert_eq!(run.send(&d, Port::Proxy).unwrap().0.kind, ClientKind::Uefi);
}
