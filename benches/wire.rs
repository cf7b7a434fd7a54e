//! The per-packet and per-request hot paths: TFTP RRQ parse (with options) and ACK/DATA header
//! encode, HTTP request parse (an iPXE-like Range request), NBD request header decode, farm
//! placement of one target over a 4-server table, the write cache's read of 64 KiB, and the
//! ProxyDHCP path: parse of a real iPXE DISCOVER and the whole answer to it.

use bootfarm::config::{Affinity, FarmMember};
use bootfarm::dhcp::responder::{BootServer, Inbound, Port, Responder};
use bootfarm::dhcp::wire as dhcp;
use bootfarm::farm::place::{place, ServerState};
use bootfarm::http::wire as http;
use bootfarm::nbd::wire as nbd;
use bootfarm::tftp::wire as tftp;
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn benches(c: &mut Criterion) {
    let mut rrq = Vec::new();
    tftp::encode_rrq(&mut rrq, "undionly.kpxe", "octet", &[("blksize", "1432".into()), ("tsize", "0".into()), ("windowsize", "16".into())]);
    c.bench_function("tftp: parse an RRQ with 3 options", |b| b.iter(|| black_box(tftp::parse(black_box(&rrq)).is_ok())));
    let ack = tftp::encode_ack(4711);
    c.bench_function("tftp: parse an ACK", |b| b.iter(|| black_box(tftp::parse(black_box(&ack)).is_ok())));
    c.bench_function("tftp: DATA header", |b| b.iter(|| black_box(tftp::data_header(black_box(4711)))));

    let req = b"GET /vdisk/win10?mac=52:54:00:12:34:56 HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nUser-Agent: iPXE/1.21.1\r\nRange: bytes=1048576-1114111\r\nConnection: keep-alive\r\n\r\n";
    let limits = http::Limits { request_line_bytes_max: 4096, header_bytes_max: 16384, headers_max: 64 };
    c.bench_function("http: parse an iPXE Range request", |b| b.iter(|| black_box(http::parse(black_box(req), &limits).is_ok())));

    let mut r = nbd::REQUEST_MAGIC.to_be_bytes().to_vec();
    r.extend_from_slice(&0u16.to_be_bytes());
    r.extend_from_slice(&nbd::CMD_READ.to_be_bytes());
    r.extend_from_slice(&7u64.to_be_bytes());
    r.extend_from_slice(&(1u64 << 30).to_be_bytes());
    r.extend_from_slice(&65536u32.to_be_bytes());
    c.bench_function("nbd: decode a request header", |b| b.iter(|| black_box(nbd::request(black_box(&r)))));

    let farm: Vec<FarmMember> = (0..4)
        .map(|i| FarmMember {
            name: format!("node{i}"),
            address: format!("10.0.0.{i}").parse().unwrap(),
            power: 1.0 + i as f64,
            subnets: vec![],
            vdisks: vec![],
            max_booting: 0,
            http_port: 8080,
        })
        .collect();
    let st = |i: usize| ServerState { up: true, replica_ok: true, active: 10 * i as u32, booting: 0 };
    c.bench_function("farm: place one target on 4 servers", |b| {
        b.iter(|| black_box(place(&farm, &st, "win10", black_box("52:54:00:12:34:56"), None, Affinity::None, 0.25)))
    });

    // Captured from SeaBIOS + the iPXE ROM in the PXE lab.
    let discover = include_bytes!("../src/dhcp/captures/seabios-ipxe-rom-discover.bin");
    c.bench_function("dhcp: parse an iPXE DISCOVER", |b| b.iter(|| black_box(dhcp::parse(black_box(discover)).is_ok())));
    let now = std::time::Instant::now();
    let mut responder = Responder::new(now);
    // No rate limit in the way: the same MAC asks every time.
    let cfg = bootfarm::config::Pxe { answers_per_mac_per_s: u32::MAX, answers_per_mac_burst: u32::MAX, ..Default::default() };
    let server = BootServer { address: "10.0.0.2".parse().unwrap(), http_port: 8080 };
    let mut out = [0u8; dhcp::PACKET_MAX];
    c.bench_function("dhcp: answer an iPXE DISCOVER (parse, decide, emit)", |b| {
        b.iter(|| {
            let inbound = Inbound {
                bytes: black_box(discover),
                source: "0.0.0.0:68".parse().unwrap(),
                port: Port::Proxy,
                local: "10.0.0.1".parse().unwrap(),
                now,
                draining: false,
            };
            black_box(responder.handle(&cfg, &inbound, &mut |_, _| Some(server), &mut out).is_ok())
        })
    });
}

criterion_group!(wire, benches);
criterion_main!(wire);
