//! Feeds arbitrary bytes to the DHCP codec and the ProxyDHCP responder, on both ports: as a
//! whole datagram, and as the options area behind a valid BOOTREQUEST header (so the options
//! parser is reached at once). Checks: no panic; a parsed message survives emit + parse; an
//! answer is one message of at most PACKET_MAX bytes that parses, offers no address and keeps
//! the request's xid and chaddr.
//! Run: RUSTC_BOOTSTRAP=1 cargo fuzz run -O dhcp_parse
#![no_main]

use bootfarm::config::Pxe;
use bootfarm::dhcp::responder::{BootServer, Inbound, Port, Responder};
use bootfarm::dhcp::wire::{self, PxeVendor};
use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

fn check(data: &[u8], responder: &mut Responder, cfg: &Pxe, now: Instant) {
    if let Ok(r) = wire::parse(data) {
        let mut out = vec![0u8; r.buffer_len()];
        let n = r.emit(&mut out).expect("a parsed message fits its own buffer_len");
        assert_eq!(wire::parse(&out[..n]).expect("what emit writes parses"), r);
        if let Some(v) = r.vendor_specific {
            if let Ok(p) = PxeVendor::parse(v) {
                let mut b = [0u8; PxeVendor::BUFFER_LEN];
                let n = p.emit(&mut b);
                assert_eq!(PxeVendor::parse(&b[..n]), Ok(p));
            }
        }
        let _ = r.has_user_class(b"iPXE");
        let _ = r.has_ipxe_feature(wire::ipxe_feature::HTTP);
    }
    let mut out = [0u8; wire::PACKET_MAX];
    for port in [Port::Proxy, Port::Pxe] {
        let inbound = Inbound {
            bytes: data,
            source: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 68),
            port,
            local: Ipv4Addr::new(10, 0, 0, 1),
            now,
            draining: false,
        };
        let server = BootServer { address: Ipv4Addr::new(10, 0, 0, 2), http_port: 8080 };
        if let Ok(a) = responder.handle(cfg, &inbound, &mut |_, _| Some(server), &mut out) {
            assert!(a.len >= wire::PACKET_MIN && a.len <= wire::PACKET_MAX);
            let req = wire::parse(data).expect("answered only what parses");
            let ans = wire::parse(&out[..a.len]).expect("the answer parses");
            assert_eq!(ans.yiaddr, Ipv4Addr::UNSPECIFIED);
            assert_eq!((ans.xid, ans.chaddr), (req.xid, req.chaddr));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    // A fresh responder per input: the rate limit must not make answers depend on history.
    let mut responder = Responder::new(now);
    let cfg = Pxe { answers_per_mac_per_s: 1_000_000, answers_per_mac_burst: 1_000_000, ..Pxe::default() };
    check(data, &mut responder, &cfg, now);
    let mut framed = Vec::with_capacity(wire::HEADER_LEN + data.len());
    framed.extend_from_slice(&[1, 1, 6, 0, 1, 2, 3, 4]);
    framed.resize(28, 0);
    framed.extend_from_slice(&[0x52, 0x54, 0, 1, 2, 3]);
    framed.resize(236, 0);
    framed.extend_from_slice(&wire::MAGIC_COOKIE);
    framed.extend_from_slice(&data[..data.len().min(wire::PACKET_MAX - wire::HEADER_LEN)]);
    check(&framed, &mut responder, &cfg, now);
});
