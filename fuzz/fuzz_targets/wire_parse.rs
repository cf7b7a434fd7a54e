//! Feeds arbitrary bytes to the network parsers that face clients: TFTP packets (and option
//! negotiation on requests), HTTP request heads and Range headers, NBD options, requests and meta-context queries,
//! export names with target ids and boot tokens, and the farm's health reports from peers.
//! Run: RUSTC_BOOTSTRAP=1 cargo fuzz run wire_parse
#![no_main]

use bootfarm::http::wire as http;
use bootfarm::nbd::wire as nbd;
use bootfarm::tftp::transfer::{negotiate, Limits};
use bootfarm::tftp::wire as tftp;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    if let Ok(tftp::Packet::Request(r)) = tftp::parse(data) {
        let limits = Limits { blksize_max: 1468, windowsize_max: 64, timeout: Duration::from_secs(1), timeout_min: Duration::from_millis(50), retries_max: 5, ..Limits::DEFAULT };
        let _ = negotiate(&r, 12345, &limits);
        let _ = bootfarm::tftp::path::normalise(r.filename);
    }
    let limits = http::Limits { request_line_bytes_max: 4096, header_bytes_max: 16384, headers_max: 64 };
    if let Ok((r, used)) = http::parse(data, &limits) {
        assert!(used <= data.len());
        if let Some(range) = r.range {
            match http::parse_range(range, 1 << 30) {
                http::Range::Single(a, b) => assert!(a <= b && b < 1 << 30),
                _ => {}
            }
        }
        let _ = http::percent_decode(r.target);
    }
    let _ = http::parse_date(data);
    if let nbd::Parse::Done((_, range), used) = nbd::option(data) {
        assert!(range.end <= used && used <= data.len());
        let _ = nbd::info_request(&data[range.clone()]);
        let _ = nbd::meta_request(&data[range]);
    }
    let _ = nbd::meta_request(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let (vdisk, id) = bootfarm::nbd::target::split_export(text);
        let _ = id.map(bootfarm::nbd::target::valid_target_id);
        // A boot token as an NBD client names it (`vdisk@token`): any text is refused or
        // verified, never a panic.
        if let Some(t) = id {
            let ip = std::net::IpAddr::from([10, 0, 0, 1]);
            let _ = bootfarm::nbd::token::verify(&[7; 16], t, ip, vdisk, 1_700_000_000);
        }
        let _ = bootfarm::nbd::token::parse_mac(text);
        // A peer's /healthz body: whatever it says, parsing ends cleanly.
        if let Some(h) = bootfarm::farm::Health::parse(text) {
            assert_eq!(bootfarm::farm::Health::parse(&h.render()).map(|x| x.generation), Some(h.generation));
        }
        let _ = bootfarm::farm::target_key(Some(text), std::net::IpAddr::from([10, 0, 0, 1]));
    }
    let _ = nbd::request(data);
    let _ = nbd::client_flags(data);
});
