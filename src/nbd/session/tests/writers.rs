//! Who writes and who is served: private vdisks' single writer, plain newstyle export names,
//! writes that belong to a boot and its tokens, and the per-request trace.

use super::*;

/// A private vdisk has one writer. A second connection's GO waits for the first to go (a
/// machine that rebooted reconnects before its old connection's close is seen), taking no input
/// meanwhile, and is refused with the policy error once nbd.private_writer_wait_ms has passed.
#[test]
fn a_private_vdisks_next_writer_waits_for_the_last_then_is_refused() {
    // Private mode writes into a new differencing version: its base is a VHDX (empty here).
    let f = fixture_vdisk(
        "private-wait",
        "private_writer_wait_ms = 100",
        "[[vdisk]]\nname = \"priv\"\npath = \"priv.vhdx\"\nmode = \"private\"\n",
    );
    let mut e = env(&f);
    let t0 = Instant::now();
    let ms = |n: u64| Duration::from_millis(n);
    let mut first = Session::new(&e, peer(), t0);
    let mut run = Run { out: Vec::new(), batches: 0 };
    pump(&mut first, &mut e, &mut priv_go(), &mut run, t0);
    assert_eq!(e.registry.counts(), (1, 1));

    let mut second = Session::new(&e, peer(), t0);
    let mut rx = priv_go();
    let mut run = Run { out: Vec::new(), batches: 0 };
    pump(&mut second, &mut e, &mut rx, &mut run, t0);
    assert_eq!(rx, go("priv"), "the GO stays unread while it waits");
    assert!(!second.wants_input());
    assert_eq!(second.poll_timeout(), Some(t0 + ms(20)));
    second.on_timeout(&mut e, t0 + ms(20));
    assert!(second.wants_input(), "looks again at the retry time");
    pump(&mut second, &mut e, &mut rx, &mut run, t0 + ms(20));
    assert_eq!(rx.len(), go("priv").len(), "the writer is still there");
    first.on_closed(&mut e, false, t0 + ms(30));
    drop(first);
    second.on_timeout(&mut e, t0 + ms(40));
    pump(&mut second, &mut e, &mut rx, &mut run, t0 + ms(40));
    assert!(rx.is_empty() && second.poll_timeout().is_none(), "attached: in transmission");
    assert_eq!(e.registry.counts(), (1, 1));
    assert_eq!(e.counters.get(Counter::NbdRefusedPrivate), 0);

    // A third while the second stays: refused when the wait is over, not before.
    let t1 = t0 + ms(1000);
    let mut third = Session::new(&e, peer(), t1);
    let mut rx = priv_go();
    let mut run = Run { out: Vec::new(), batches: 0 };
    pump(&mut third, &mut e, &mut rx, &mut run, t1);
    let mut retries = 0;
    while let Some(at) = third.poll_timeout().filter(|&at| at <= t1 + ms(100)) {
        third.on_timeout(&mut e, at);
        pump(&mut third, &mut e, &mut rx, &mut run, at);
        retries += 1;
        assert!(retries <= 10, "bounded");
        if rx.is_empty() {
            break;
        }
    }
    assert_eq!(retries, 5, "every 20 ms until 100 ms");
    assert!(rx.is_empty(), "the GO was answered");
    let kind = u32::from_be_bytes(run.out[18 + 12..18 + 16].try_into().unwrap());
    assert_eq!(kind, wire::REP_ERR_POLICY);
    assert!(String::from_utf8_lossy(&run.out).contains("already has a writer"));
    assert_eq!(e.counters.get(Counter::NbdRefusedPrivate), 1);
}

/// busybox's nbd-client sends client flags 0 and EXPORT_NAME: it gets the export's size, flags
/// and the 124 zero bytes (NO_ZEROES was not agreed), then is served; with NO_ZEROES alone
/// (plain newstyle too) the zeros are left out. An unknown export just closes.
#[test]
fn a_plain_newstyle_client_gets_its_export_by_name() {
    let f = fixture("plain", "");
    for (flags, pad) in [(0u32, 124usize), (2, 0)] {
        let mut e = env(&f);
        let run = drive(&mut e, &export_name(flags, "disk", &request(wire::CMD_READ, 0, 9, 4096, 512)), &[], Instant::now());
        let hs = 18 + 8 + 2 + pad;
        assert_eq!(u64::from_be_bytes(run.out[18..26].try_into().unwrap()), SIZE as u64, "flags {flags}");
        assert!(run.out[28..hs].iter().all(|&b| b == 0));
        let r = replies(&run.out[hs..], false, &|_| Some(512));
        assert_eq!(r, vec![Reply { cookie: 9, error: 0, data: f.content[4096..4608].to_vec() }], "flags {flags}");
    }
    let mut e = env(&f);
    let run = drive(&mut e, &export_name(0, "nosuch", &[]), &[], Instant::now());
    assert_eq!(run.out.len(), 18, "an unknown export: closed without a reply, as the protocol answers");
    // A plain-newstyle client asking anything but EXPORT_NAME is closed (it cannot read replies).
    let mut s = Session::new(&e, peer(), Instant::now());
    let mut rx = client_flags(0);
    rx.extend(opt(wire::OPT_LIST, &[]));
    let mut run = Run { out: Vec::new(), batches: 0 };
    pump(&mut s, &mut e, &mut rx, &mut run, Instant::now());
    assert!(s.is_done() && run.out.len() == 18);
    assert!(s.close_reason().contains("only send NBD_OPT_EXPORT_NAME"), "{}", s.close_reason());
    s.on_closed(&mut e, false, Instant::now());
    // Every handshake end says why.
    let mut s = Session::new(&e, peer(), Instant::now());
    s.on_eof(&mut e, Instant::now());
    assert!(s.close_reason().contains("before sending its flags"), "{}", s.close_reason());
}

/// Writes belong to a boot: the same boot id finds its writes after any outage (up to
/// nbd.boot_cache_keep_max_ms), another boot id starts from the clean image and drops the old
/// cache at once; without a boot id, today's rule (nbd.cache_keep_after_disconnect_ms).
#[test]
fn writes_belong_to_a_boot() {
    let f = fixture("boots", "cache_keep_after_disconnect_ms = 15000\nboot_cache_keep_max_ms = 3600000");
    let mut e = env(&f);
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let clean = f.content[..4096].to_vec();
    let dropped = |e: &TestEnv, c| e.registry.counters.get(c);

    assert_eq!(session_reads(&mut e, "disk@m1#boot1", &write_then_read(0, 4096, 0xA1), t0), vec![0xA1; 4096]);
    // An outage of 50 minutes: the same boot finds its writes (the anonymous keep is 15 s).
    e.registry.sweep(t0 + s(3000), crate::nbd::target::Keep::of(&f.snap.config.nbd));
    assert_eq!(session_reads(&mut e, "disk@m1#boot1", &[], t0 + s(3000)), vec![0xA1; 4096]);
    assert_eq!(dropped(&e, Counter::NbdDroppedExpired), 0);
    // A new boot of the machine: clean, and the old cache is gone at once.
    assert_eq!(session_reads(&mut e, "disk@m1#boot2", &[], t0 + s(3001)), clean);
    assert_eq!(dropped(&e, Counter::NbdDroppedNewBoot), 1);
    assert_eq!(session_reads(&mut e, "disk@m1#boot1", &[], t0 + s(3002)), clean, "the old boot is gone for good");
    assert_eq!(e.registry.counts(), (1, 0), "one cache for the machine, not one per boot");
    // Past boot_cache_keep_max_ms the cache goes, counted as expired.
    e.registry.sweep(t0 + s(3002 + 3600), crate::nbd::target::Keep::of(&f.snap.config.nbd));
    assert_eq!(e.registry.counts(), (0, 0));
    assert_eq!(dropped(&e, Counter::NbdDroppedExpired), 1);

    // No boot id: a reconnect within 15 s keeps the writes, a later one starts clean.
    assert_eq!(session_reads(&mut e, "disk@m2", &write_then_read(0, 4096, 0xB2), t0), vec![0xB2; 4096]);
    assert_eq!(session_reads(&mut e, "disk@m2", &[], t0 + s(10)), vec![0xB2; 4096]);
    assert_eq!(session_reads(&mut e, "disk@m2", &[], t0 + s(30)), clean);
    // A boot id on a target made without one is a new boot too.
    assert_eq!(session_reads(&mut e, "disk@m2", &write_then_read(0, 4096, 0xB3), t0 + s(31)), vec![0xB3; 4096]);
    assert_eq!(session_reads(&mut e, "disk@m2#b", &[], t0 + s(32)), clean);
    // A bad boot id is refused like a bad target id (EXPORT_NAME: closed).
    let run = drive(&mut e, &export_name(1 | 2, "disk@m3#a b", &[]), &[], t0);
    assert_eq!(run.out.len(), 18);
}

/// A boot token is a boot: its target is the MAC inside it and its boot the token, so a new
/// token (the next /ipxe fetch) starts clean and drops the last boot's cache, and the same
/// token finds its writes even once it has expired.
#[test]
fn a_boot_token_is_a_boot_of_its_mac() {
    let f = fixture("token-boots", "");
    let mut e = env(&f);
    let t0 = Instant::now();
    let mac = crate::nbd::token::parse_mac("aa:bb:cc:dd:ee:01").unwrap();
    let ip = peer().ip();
    let first = crate::nbd::token::issue(&KEY, [1; 16], 1_800_000_100, mac, ip, "disk");
    let second = crate::nbd::token::issue(&KEY, [2; 16], 1_800_000_100, mac, ip, "disk");
    let expired = crate::nbd::token::issue(&KEY, [3; 16], 1_700_000_000, mac, ip, "disk");
    let clean = f.content[..4096].to_vec();
    assert_eq!(session_reads(&mut e, &format!("disk@{first}"), &write_then_read(0, 4096, 0xC1), t0), vec![0xC1; 4096]);
    assert!(e.registry.holds("disk", "aa:bb:cc:dd:ee:01", ip, Some(&first)), "the target is the MAC");
    assert_eq!(session_reads(&mut e, &format!("disk@{first}"), &[], t0 + Duration::from_secs(600)), vec![0xC1; 4096]);
    assert_eq!(session_reads(&mut e, &format!("disk@{second}"), &[], t0 + Duration::from_secs(601)), clean);
    assert_eq!(e.registry.counters.get(Counter::NbdDroppedNewBoot), 1);
    assert_eq!(e.registry.counts(), (1, 0));
    // In the default "bound" mode an expired token still starts a boot (any id may).
    assert_eq!(session_reads(&mut e, &format!("disk@{expired}"), &write_then_read(0, 4096, 0xC3), t0), vec![0xC3; 4096]);
    assert_eq!(session_reads(&mut e, &format!("disk@{expired}"), &[], t0 + Duration::from_secs(1)), vec![0xC3; 4096]);
}

/// nbd.target_ids = "token": an expired token cannot start a boot, but the boot it started
/// reconnects to its writes after the expiry (a Linux root that lost its server for hours).
#[test]
fn an_expired_token_reconnects_its_boot_and_starts_none() {
    let f = fixture("token-expiry", "target_ids = \"token\"");
    let mut e = env(&f);
    let t0 = Instant::now();
    let mac = crate::nbd::token::parse_mac("aa:bb:cc:dd:ee:07").unwrap();
    let ip = peer().ip();
    let live = crate::nbd::token::issue(&KEY, [4; 16], 1_800_000_010, mac, ip, "disk");
    let other = crate::nbd::token::issue(&KEY, [5; 16], 1_800_000_010, mac, ip, "disk");
    assert_eq!(session_reads(&mut e, &format!("disk@{live}"), &write_then_read(0, 4096, 0xD4), t0), vec![0xD4; 4096]);
    e.unix = 1_800_003_600; // both tokens expired an hour ago
    assert_eq!(session_reads(&mut e, &format!("disk@{live}"), &[], t0 + Duration::from_secs(3600)), vec![0xD4; 4096]);
    assert_eq!(e.counters.get(Counter::NbdRefusedToken), 0);
    let run = drive(&mut e, &export_name(1 | 2, &format!("disk@{other}"), &[]), &[], t0 + Duration::from_secs(3601));
    assert_eq!(run.out.len(), 18, "an expired token starts no boot (EXPORT_NAME: closed)");
    assert_eq!(e.counters.get(Counter::NbdRefusedToken), 1);
    assert_eq!(
        session_reads(&mut e, &format!("disk@{live}"), &[], t0 + Duration::from_secs(3602)),
        vec![0xD4; 4096],
        "nor drops the live boot"
    );
}

/// With nbd.trace_dir, a connection that reached an export hands out its trace at the close:
/// the header names connection, client, export, target, boot and disk size, then one line per
/// request in order (handshake options are not requests). A full writer queue or the file's
/// byte limit drops lines, counted.
#[test]
fn a_traced_connection_hands_out_one_line_per_request() {
    let f = fixture("trace", "trace_dir = \"traces\"");
    let mut e = env(&f);
    let mut stream = client_flags(1 | 2);
    stream.extend(go("disk@m1#b1"));
    stream.extend(request(wire::CMD_READ, 0, 1, 8192, 4096));
    stream.extend(request(wire::CMD_WRITE, 0, 2, 4096, 512));
    stream.extend(vec![0xEE; 512]);
    stream.extend(request(wire::CMD_FLUSH, 0, 3, 0, 0));
    stream.extend(request(wire::CMD_TRIM, 0, 4, 0, 4096));
    stream.extend(request(wire::CMD_DISC, 0, 5, 0, 0));
    let t0 = Instant::now();
    drive(&mut e, &stream, &[40, 77], t0);
    let chunks = std::mem::take(&mut *e.traced.lock().unwrap());
    assert_eq!(chunks.len(), 1, "one chunk, at the close");
    let c = &chunks[0];
    assert!(c.last && c.lines == 5, "{c:?}");
    let dir = std::fs::canonicalize(f.dir.join("traces")).unwrap();
    assert_eq!(c.path, dir.join("nbd-1800000000000-42-m1.csv"));
    let text = String::from_utf8(c.bytes.clone()).unwrap();
    let want = format!(
        "# bootfarm nbd trace: connection=42 client={} export=disk target=m1 boot=b1 disk_bytes={SIZE} connected_unix_ms=1800000000000\n\
         us,op,offset,length\n0,r,8192,4096\n0,w,4096,512\n0,f,0,0\n0,t,0,4096\n0,d,0,0\n",
        peer()
    );
    assert_eq!(text, want);
    assert_eq!(e.counters.get(Counter::NbdTraceDropped), 0);

    // The writer's queue is full: the chunk's lines are counted as dropped.
    let mut e = env(&f);
    e.trace_full = true;
    drive(&mut e, &stream, &[], t0);
    assert_eq!(e.counters.get(Counter::NbdTraceDropped), 5);

    // Without nbd.trace_dir nothing is traced.
    let g = fixture("notrace", "");
    let mut e = env(&g);
    drive(&mut e, &stream, &[], t0);
    assert!(e.traced.lock().unwrap().is_empty());

    // At nbd.trace_bytes_max (its floor, 4096) the file stops: the rest is dropped, counted.
    let h = fixture("tracemax", "trace_dir = \"traces\"\ntrace_bytes_max = 4096");
    let mut e = env(&h);
    let mut stream = client_flags(1 | 2);
    stream.extend(go("disk@m1"));
    for i in 0..1000 {
        stream.extend(request(wire::CMD_READ, 0, i, 0, 512));
    }
    drive(&mut e, &stream, &[], t0);
    let chunks = std::mem::take(&mut *e.traced.lock().unwrap());
    let (lines, bytes) = chunks.iter().fold((0, 0), |(l, b), c| (l + c.lines, b + c.bytes.len()));
    let dropped = e.counters.get(Counter::NbdTraceDropped);
    assert!(bytes <= 4096 && bytes > 4096 - 16 && dropped > 0, "{bytes} bytes, {dropped} dropped");
    assert_eq!(lines + dropped, 1000);
}
