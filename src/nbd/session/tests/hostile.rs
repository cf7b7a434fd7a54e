//! Hostile and broken clients: bad options, protocol violations, a client that stops reading,
//! handshake timeouts, writes cut by EOF, a damaged image, fuzzed fields and options.

use super::*;

#[test]
fn handshake_options_answer_errors_and_go_on() {
    let f = fixture("options", "");
    let mut e = env(&f);
    let mut st = client_flags(1);
    st.extend(opt(99, b"xyz")); // unknown: ERR_UNSUP
    st.extend(opt(wire::OPT_LIST, &[])); // two exports
    st.extend(opt(wire::OPT_LIST, b"x")); // LIST takes no payload: ERR_INVALID
    st.extend(opt(wire::OPT_STRUCTURED_REPLY, b"x")); // ERR_INVALID
    st.extend(set_meta("disk", wire::BASE_ALLOCATION)); // before structured replies: ERR_INVALID
    st.extend(opt(wire::OPT_INFO, b"\x00")); // malformed: ERR_INVALID
    st.extend(go("nosuch")); // ERR_UNKNOWN
    st.extend(go("disk@a/b")); // bad target id: ERR_UNKNOWN
    st.extend(go("other"));
    st.extend(request(wire::CMD_READ, 0, 1, 0, 16));
    let run = drive(&mut e, &st, &[], Instant::now());
    let mut at = 18;
    let mut kinds = Vec::new();
    while at + 20 <= run.out.len() && u64::from_be_bytes(run.out[at..at + 8].try_into().unwrap()) == wire::OPT_REPLY_MAGIC {
        let kind = u32::from_be_bytes(run.out[at + 12..at + 16].try_into().unwrap());
        kinds.push(kind);
        at += 20 + u32::from_be_bytes(run.out[at + 16..at + 20].try_into().unwrap()) as usize;
    }
    let (unknown, invalid) = (wire::REP_ERR_UNKNOWN, wire::REP_ERR_INVALID);
    let want =
        [wire::REP_ERR_UNSUP, wire::REP_SERVER, wire::REP_SERVER, wire::REP_ACK, invalid, invalid, invalid, invalid, unknown, unknown]
            .into_iter()
            .chain([wire::REP_INFO, wire::REP_INFO, wire::REP_ACK]) // GO: export, block size, ack
            .collect::<Vec<_>>();
    assert_eq!(kinds, want);
    let r = replies(&run.out[at..], false, &|_| Some(16));
    assert!(r.len() == 1 && r[0].error == 0 && r[0].data[..] == f.content[..16]);
}

#[test]
fn protocol_violations_close_the_connection_cleanly() {
    let f = fixture("violations", "");
    let mut too_long = client_flags(1);
    too_long.extend(wire::IHAVEOPT.to_be_bytes());
    too_long.extend(wire::OPT_GO.to_be_bytes());
    too_long.extend((wire::OPTION_BYTES_MAX + 1).to_be_bytes());
    let mut bad_magic = client_flags(1);
    bad_magic.extend(opt(wire::OPT_LIST, &[]));
    bad_magic[4] ^= 0xFF;
    let mut bad_request = handshake(false);
    bad_request.extend(request(wire::CMD_READ, 0, 1, 0, 512));
    bad_request.extend(request(wire::CMD_READ, 0, 2, 0, 512));
    let n = bad_request.len();
    bad_request[n - 28] ^= 1;
    let mut export_name_unknown = client_flags(1);
    export_name_unknown.extend(opt(wire::OPT_EXPORT_NAME, b"nosuch"));
    let mut abort = client_flags(1);
    abort.extend(opt(wire::OPT_ABORT, &[]));
    abort.extend(go("disk")); // never read
    let hs = handshake_len(&f, false);
    let mut not_fixed_go = client_flags(0);
    not_fixed_go.extend(go("disk"));
    let cases: [(&str, Vec<u8>, usize); 6] = [
        ("GO from a client without fixed newstyle", not_fixed_go, 18),
        ("option over OPTION_BYTES_MAX", too_long, 18),
        ("bad option magic", bad_magic, 18),
        ("bad request magic", bad_request, hs + 16 + 512),
        ("EXPORT_NAME of no export", export_name_unknown, 18),
        ("ABORT", abort, 18 + 20),
    ];
    for (what, stream, out_len) in cases {
        let mut e = env(&f);
        let now = Instant::now();
        let mut s = Session::new(&e, peer(), now);
        let mut run = Run { out: Vec::new(), batches: 0 };
        let mut rx = stream.clone();
        pump(&mut s, &mut e, &mut rx, &mut run, now);
        assert!(s.is_done(), "{what}: the session ends without waiting for EOF");
        assert!(!s.wants_input());
        assert_eq!(run.out.len(), out_len, "{what}");
        s.on_closed(&mut e, false, now);
    }
    // Seeded garbage in every phase: the session answers or ends, never panics.
    let mut rng = XorShift::new(0xbad);
    for prefix in [Vec::new(), client_flags(1), handshake(false), handshake(true)] {
        for _ in 0..300 {
            let mut st = prefix.clone();
            st.extend((0..rng.below(300)).map(|_| rng.next() as u8));
            let cuts: Vec<usize> = (1..st.len()).step_by(rng.below(50) as usize + 1).collect();
            drive(&mut env(&f), &st, &cuts, Instant::now());
        }
    }
}

#[test]
fn a_client_that_stops_reading_holds_its_batch_and_asks_nothing_more() {
    let f = fixture("stall", "");
    let mut e = env(&f);
    let now = Instant::now();
    let mut s = Session::new(&e, peer(), now);
    let mut rx = handshake(false);
    for c in 0..4u64 {
        rx.extend(request(wire::CMD_READ, 0, c, 0, 65536));
    }
    let mut run = Run { out: Vec::new(), batches: 0 };
    pump(&mut s, &mut e, &mut rx, &mut run, now); // greeting, then GO and the four reads
    let mut more = Vec::new();
    for c in 4..8u64 {
        more.extend(request(wire::CMD_READ, 0, c, 0, 65536));
    }
    assert_eq!(s.on_input(&mut e, &more, now), 4 * 28, "taken while no batch is held");
    let b = s.poll_transmit(&mut e, now).expect("replies");
    assert_eq!(b.len, 4 * (16 + 65536));
    // The client reads nothing: the batch stays held; nothing more is taken or asked.
    for i in 1..100u64 {
        let t = now + Duration::from_millis(i * 100);
        assert_eq!(s.on_input(&mut e, &more, t), 0);
        assert!(s.poll_transmit(&mut e, t).is_none());
        assert!(!s.wants_input() && !s.is_done() && s.idle_since().is_none());
    }
    assert_eq!(s.poll_timeout(), None, "no handshake deadline after GO: the driver's send deadline applies");
    s.on_closed(&mut e, true, now + Duration::from_secs(30));
    assert_eq!(e.registry.counts(), (1, 0), "detached at the close");
    drop(s);
    assert_eq!(e.registry.counts(), (1, 0), "the target is kept for a reconnect, with no connection");
}

#[test]
fn the_handshake_times_out() {
    let f = fixture("hs-timeout", "handshake_timeout_ms = 500");
    let mut e = env(&f);
    let t0 = Instant::now();
    let mut s = Session::new(&e, peer(), t0);
    assert!(s.poll_transmit(&mut e, t0).is_some());
    s.on_released(&mut e, t0);
    assert_eq!(s.on_input(&mut e, &client_flags(1), t0), 4);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_millis(500)));
    s.on_timeout(&mut e, t0 + Duration::from_millis(499));
    assert!(!s.is_done(), "not before the deadline");
    s.on_timeout(&mut e, t0 + Duration::from_millis(500));
    assert!(s.is_done() && s.close_reason().contains("handshake"));
    assert_eq!(e.counters.get(Counter::NbdTimeoutHandshake), 1);
    assert!(s.poll_transmit(&mut e, t0).is_none());
    // After GO, no deadline.
    let mut s = Session::new(&e, peer(), t0);
    let mut rx = handshake(false);
    pump(&mut s, &mut e, &mut rx, &mut Run { out: Vec::new(), batches: 0 }, t0);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn a_write_cut_by_eof_gives_its_reservation_back() {
    let f = fixture("write-eof", "");
    let mut e = env(&f);
    let now = Instant::now();
    let mut s = Session::new(&e, peer(), now);
    let mut rx = handshake(false);
    rx.extend(request(wire::CMD_WRITE, 0, 1, 0, 8 * 4096));
    rx.extend(std::iter::repeat_n(0x5Au8, 3 * 4096 + 100));
    let mut run = Run { out: Vec::new(), batches: 0 };
    pump(&mut s, &mut e, &mut rx, &mut run, now);
    assert_eq!(rx.len(), 100, "whole blocks are applied; the partial one waits");
    assert_eq!(e.registry.total.load(std::sync::atomic::Ordering::Relaxed), 8 * 4096, "the whole write is reserved");
    assert!(s.idle_since().is_none(), "a write in progress is not idle");
    s.on_eof(&mut e, now);
    assert!(s.is_done() && s.poll_transmit(&mut e, now).is_none(), "no reply to a write never finished");
    s.on_closed(&mut e, false, now);
    drop(s);
    assert_eq!(e.registry.total.load(std::sync::atomic::Ordering::Relaxed), 3 * 4096, "the unused part went back");
    // A reconnect (the target is kept) reads the three blocks written and the image after.
    let mut st = request(wire::CMD_READ, 0, 2, 0, 5 * 4096);
    st.extend(request(wire::CMD_DISC, 0, 0, 0, 0));
    let mut bytes = handshake(false);
    bytes.extend(st);
    let out = drive(&mut e, &bytes, &[], now).out;
    let r = replies(&out[handshake_len(&f, false)..], false, &|_| Some(5 * 4096));
    assert!(r[0].data[..3 * 4096].iter().all(|&b| b == 0x5A));
    assert!(r[0].data[3 * 4096..] == f.content[3 * 4096..5 * 4096]);
}

#[test]
fn a_damaged_image_is_refused() {
    let f = fixture("damaged", "");
    let mut e = env(&f);
    let now = Instant::now();
    let mut s = Session::new(&e, peer(), now);
    let mut rx = handshake(true);
    let mut run = Run { out: Vec::new(), batches: 0 };
    pump(&mut s, &mut e, &mut rx, &mut run, now);
    let hs = run.out.len();
    // Truncated under its mapping: a partial-block write copies the rest of its block from the
    // image, past the new end: that load faults, reads zeros and marks the mapping damaged.
    std::fs::OpenOptions::new().write(true).open(f.dir.join("disk.raw")).unwrap().set_len(65536).unwrap();
    let mut rx = request(wire::CMD_WRITE, 0, 1, 512 * 1024, 512);
    rx.extend(std::iter::repeat_n(1u8, 512));
    rx.extend(request(wire::CMD_READ, 0, 2, 0, 512));
    rx.extend(request(wire::CMD_WRITE, 0, 3, 0, 512));
    rx.extend(std::iter::repeat_n(1u8, 512));
    pump(&mut s, &mut e, &mut rx, &mut run, now);
    let got = replies(&run.out[hs..], true, &|_| None);
    assert_eq!(got.iter().map(|r| (r.cookie, r.error)).collect::<Vec<_>>(), [(1, wire::EIO), (2, wire::EIO), (3, wire::EIO)]);
    assert!(got.iter().all(|r| r.data.is_empty()), "no byte of the damaged image is sent");
    assert!(e.counters.get(Counter::NbdDamaged) >= 1);
    // A new connection is refused at GO.
    let mut e2 = env(&f);
    let out = drive(&mut e2, &handshake(false), &[], now).out;
    let kind = u32::from_be_bytes(out[18 + 12..18 + 16].try_into().unwrap());
    assert_eq!(kind, wire::REP_ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(&out).contains("changed on the server"));
}

/// Well-formed requests with hostile fields (every command number, flag bits, offsets and
/// lengths at and past the edges, payloads cut short): no panic, and every reply that comes is
/// whole, for a request that was sent, in request order. NBD_SEED and NBD_ROUNDS search longer
/// (45,000 rounds of three seeds passed).
#[test]
fn requests_with_hostile_fields_get_whole_replies_in_order() {
    let f = fixture("hostile-fields", "request_bytes_max = 65536\ncache_ram_bytes_per_target = 8192\nreply_scratch_bytes_max = 8192");
    let size = SIZE as u64;
    let mut rng = XorShift::new(std::env::var("NBD_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0xf1e1d5));
    let rounds = std::env::var("NBD_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    for round in 0..rounds {
        let structured = round % 2 == 1;
        let mut st = handshake(structured);
        let (mut lens, mut sent) = (std::collections::HashMap::new(), Vec::new());
        for cookie in 1..=rng.below(12) + 1 {
            let pick = |rng: &mut XorShift, edges: &[u64]| {
                if rng.chance(0.5) {
                    edges[rng.below(edges.len() as u64) as usize]
                } else {
                    rng.next()
                }
            };
            let kind = if rng.chance(0.8) { [0u16, 1, 3, 4, 6, 7][rng.below(6) as usize] } else { rng.below(16) as u16 };
            let offset = pick(&mut rng, &[0, 1, 4095, 4096, size - 1, size, size + 1, u64::MAX, u64::MAX - 4095]);
            let length = pick(&mut rng, &[0, 1, 511, 4096, 65536, 65537, u32::MAX as u64, (size - offset.min(size)) & 0xFFFF]) as u32;
            let flags = rng.below(16) as u16;
            st.extend(request(kind, flags, cookie, offset, length));
            if kind == wire::CMD_WRITE {
                let n = if rng.chance(0.8) { length.min(70_000) as usize } else { rng.below(5000) as usize };
                st.extend((0..n).map(|_| rng.next() as u8));
            }
            sent.push(cookie);
            if kind == wire::CMD_READ {
                lens.insert(cookie, length as usize); // an answered simple READ carries its data
            }
        }
        let mut cuts: Vec<usize> = (0..rng.below(6)).map(|_| rng.below(st.len() as u64) as usize).collect();
        cuts.sort();
        let run = drive(&mut env(&f), &st, &cuts, Instant::now());
        let hs = handshake_len(&f, structured);
        let got = replies(&run.out[hs..], structured, &|c| lens.get(&c).copied());
        assert!(
            got.windows(2).all(|w| w[0].cookie < w[1].cookie),
            "in request order: {:?}",
            got.iter().map(|r| r.cookie).collect::<Vec<_>>()
        );
        assert!(got.iter().all(|r| sent.contains(&r.cookie)));
    }
}

/// Option sequences with hostile fields (every option number, names well-formed or not, info
/// and meta payloads with wrong counts), then a READ: no panic, the greeting first, and a fair
/// share of the sequences gets into transmission and has the READ served.
#[test]
fn handshakes_with_hostile_options_serve_or_end() {
    let f = fixture("hostile-options", "");
    let mut rng = XorShift::new(0x0b7);
    let names: [&[u8]; 7] = [b"disk", b"other", b"", b"nosuch", b"disk@id-1", b"disk@a/b", b"\xff\xfe"];
    let (mut attached, mut served) = (0, 0);
    for _ in 0..2000 {
        let mut st = client_flags(1 | rng.below(4) as u32);
        for _ in 0..rng.below(6) + 1 {
            let o = if rng.chance(0.8) { rng.below(12) as u32 } else { rng.next() as u32 };
            let name = names[rng.below(names.len() as u64) as usize];
            let mut p = Vec::new();
            match rng.below(4) {
                0 => p.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
                1 => {}
                _ => {
                    let claimed = if rng.chance(0.8) { name.len() as u32 } else { rng.next() as u32 % 300 };
                    p.extend(claimed.to_be_bytes());
                    p.extend_from_slice(name);
                    let count = rng.below(4);
                    if o == wire::OPT_GO || o == wire::OPT_INFO {
                        p.extend((count as u16 + rng.below(2) as u16).to_be_bytes());
                        p.extend((0..count).flat_map(|_| (rng.below(5) as u16).to_be_bytes()));
                    } else {
                        p.extend((count as u32 + rng.below(2) as u32).to_be_bytes());
                        for _ in 0..count {
                            let q: &[u8] = [b"base:allocation" as &[u8], b"base:", b"qemu:dirty-bitmap:x", b""][rng.below(4) as usize];
                            p.extend((q.len() as u32).to_be_bytes());
                            p.extend_from_slice(q);
                        }
                    }
                }
            }
            st.extend(opt(o, &p));
        }
        st.extend(request(wire::CMD_READ, 0, 77, 0, 512));
        let cuts: Vec<usize> =
            (0..rng.below(4)).map(|_| rng.below(st.len() as u64) as usize).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let mut e = env(&f);
        let run = drive(&mut e, &st, &cuts, Instant::now());
        assert!(run.out.starts_with(&wire::greeting()));
        // Into transmission: the READ's reply ends the stream with the export's first bytes.
        let simple = [&wire::SIMPLE_REPLY_MAGIC.to_be_bytes()[..], &0u32.to_be_bytes(), &77u64.to_be_bytes(), &f.content[..512]].concat();
        if e.registry.counts().0 == 1 {
            attached += 1;
            served += run.out.ends_with(&simple) as usize;
        }
    }
    // The generator reaches transmission often enough to matter (132 and 38 with this seed).
    assert!(attached > 50 && served > 10, "attached {attached}, served {served}");
}
