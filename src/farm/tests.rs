use super::*;

#[test]
fn health_reports_round_trip() {
    let mut h = Health { node: "node2".into(), generation: 7, draining: false, booting: 3, ..Default::default() };
    h.active.insert("win10".into(), 12);
    h.hashes.insert("win10".into(), "00ff".into());
    let text = h.render();
    assert!(text.starts_with("ok\nnode node2\n"), "{text}");
    assert_eq!(Health::parse(&text), Some(h.clone()));
    h.draining = true;
    assert!(Health::parse(&h.render()).unwrap().draining);
    assert_eq!(Health::parse("ok\nfuture-line 1 2 3\n").map(|h| h.node), Some(String::new()), "unknown lines are skipped");
    assert!(Health::parse("<html>").is_none());
    assert!(Health::parse("ok\nbooting many\n").is_none());
}

#[test]
fn content_hash_sees_one_changed_byte_anywhere() {
    let mut d: Vec<u8> = (0..100_003u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let h = content_hash(&d);
    for at in [0, 31, 32, 4096, 99_999, 100_002] {
        d[at] ^= 1;
        assert_ne!(content_hash(&d), h, "byte {at}");
        d[at] ^= 1;
    }
    assert_eq!(content_hash(&d), h);
    assert_ne!(content_hash(&d[..100_000]), content_hash(&d[..100_001]));
}

#[test]
fn content_hash_in_pieces_is_the_same_and_stops_when_asked() {
    let d: Vec<u8> = (0..100_003u32).map(|i| (i * 13 + i / 97) as u8).collect();
    for piece in [32, 4096, 65_536, 1 << 20] {
        assert_eq!(content_hash_unless(&d, piece, || true), Some(content_hash(&d)), "pieces of {piece}");
        assert_eq!(content_hash_unless(&d[..64], piece, || true), Some(content_hash(&d[..64])));
    }
    assert_eq!(content_hash_unless(&[], 64, || true), Some(content_hash(&[])));
    let mut n = 0;
    assert_eq!(
        content_hash_unless(&d, 4096, || {
            n += 1;
            n < 3
        }),
        None
    );
    assert_eq!(n, 3, "asked before each piece, stopped at the third");
}

/// `?mac=` is unauthenticated: one address naming 100,000 targets adds at most
/// targets_per_address_max (and itself) to the figures; many addresses fill the map only
/// up to targets_max, the least recently read going first; old entries are pruned.
#[test]
fn the_load_map_is_pruned_bounded_and_per_address() {
    let lim = ActivityLimits { active_window: Duration::from_secs(60), targets_max: 1024, targets_per_address_max: 4 };
    let t0 = Instant::now();
    let mut a = Activity::default();
    let one: IpAddr = "10.0.0.1".parse().unwrap();
    let mut as_address = 0;
    for i in 0..100_000u32 {
        let t = a.touch(
            "win10",
            &target_key(Some(&format!("52:54:00:{:02x}:{:02x}:{:02x}", i >> 16, i >> 8 & 0xff, i & 0xff)), one),
            one,
            t0,
            &lim,
        );
        as_address += t.as_address as u32;
        assert_eq!(t.evicted, 0);
    }
    assert_eq!(a.len(), 5, "4 targets and the address itself");
    assert_eq!(as_address, 100_000 - 4);
    let (active, booting) = a.figures(t0, lim.active_window, Duration::from_secs(120));
    assert_eq!((active.get("win10").copied(), booting), (Some(5), 5));
    // Its own address (no ?mac=) was always allowed; re-reading a known target is not new.
    assert!(!a.touch("win10", &target_key(Some("52:54:00:00:00:01"), one), one, t0, &lim).as_address);
    // 5,000 addresses, two targets each: the map stays at targets_max, oldest out first.
    let mut evicted = 0;
    for i in 0..5000u32 {
        let ip: IpAddr = format!("10.1.{}.{}", i >> 8, i & 0xff).parse().unwrap();
        let now = t0 + Duration::from_millis(1 + i as u64);
        for m in 0..2 {
            evicted += a.touch("win10", &format!("02:00:00:00:{:04x}:{m}", i), ip, now, &lim).evicted;
            assert!(a.len() <= lim.targets_max, "{} entries", a.len());
        }
    }
    assert!(evicted >= 10_000 + 5 - 1024, "{evicted} evicted");
    assert!(a.seen.keys().any(|(_, t)| t == "02:00:00:00:1387:1"), "the newest stays");
    assert!(!a.seen.keys().any(|(_, t)| t.starts_with("52:54")), "the oldest went first");
    assert!(a.per_address.values().all(|&n| n <= 2) && a.per_address.len() <= 1024, "per-address counts follow the entries");
    // Past the active window everything goes, and the per-address counts with it.
    let (active, booting) = a.figures(t0 + Duration::from_secs(120), lim.active_window, Duration::from_secs(120));
    assert!(active.is_empty() && booting == 0 && a.is_empty() && a.per_address.is_empty());
    // Touches alone prune too (a single node nobody probes): once a second.
    for i in 0..10u32 {
        a.touch("win10", &format!("ip{i}"), one, t0 + Duration::from_secs(200), &lim);
    }
    a.touch("win10", "later", one, t0 + Duration::from_secs(300), &lim);
    assert_eq!(a.len(), 1, "the entries of 100 s ago were pruned by a touch");
}

#[test]
fn a_damaged_copy_is_placed_nowhere_and_does_not_make_peers_mismatch() {
    let d = std::env::temp_dir().join(format!("bootfarm-farm-damaged-{}", std::process::id()));
    std::fs::create_dir_all(d.join("boot")).unwrap();
    std::fs::write(d.join("v.raw"), vec![1u8; 8192]).unwrap();
    let text = "[server]\nname = \"n1\"\n[tftp]\nroot = \"boot\"\n[[vdisk]]\nname = \"v\"\npath = \"v.raw\"\n\
                [[farm.server]]\nname = \"n1\"\naddress = \"127.0.0.1\"\n[[farm.server]]\nname = \"n2\"\naddress = \"127.0.0.2\"\n";
    let snap = crate::config::build(&d.join("f.toml"), &d, toml::from_str(text).unwrap(), 1, None).unwrap();
    let rt = Runtime::default();
    let peer = |hash: &str| {
        let mut h = Health { node: "n2".into(), ..Default::default() };
        h.hashes.insert("v".into(), hash.into());
        Peer { up: true, probed: true, report: Some(h), ..Default::default() }
    };
    let me = |hash: &str| Local {
        draining: false,
        active: HashMap::new(),
        booting: 0,
        hashes: [("v".to_string(), hash.to_string())].into_iter().collect(),
    };
    rt.view.store(Arc::new(View { peers: [("n2".to_string(), peer("abc"))].into_iter().collect(), round: 1 }));
    // Our copy damaged: only the peer serves it, and it is not taken for a mismatch.
    assert!(!rt.state_of(&snap, 0, "v", &me(DAMAGED_HASH)).replica_ok);
    assert!(rt.state_of(&snap, 1, "v", &me(DAMAGED_HASH)).replica_ok);
    assert_eq!(rt.place(&snap, "v", "t", None, &me(DAMAGED_HASH)), vec![1]);
    // The peer's copy damaged: it agrees with nobody's.
    rt.view.store(Arc::new(View { peers: [("n2".to_string(), peer(DAMAGED_HASH))].into_iter().collect(), round: 2 }));
    assert!(!rt.state_of(&snap, 1, "v", &me("abc")).replica_ok);
    assert_eq!(rt.place(&snap, "v", "t", None, &me("abc")), vec![0]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn target_keys() {
    let ip: IpAddr = "10.0.0.9".parse().unwrap();
    assert_eq!(target_key(Some("52-54-00-AB-CD-EF"), ip), "52:54:00:ab:cd:ef");
    assert_eq!(target_key(Some("<script>"), ip), "10.0.0.9");
    assert_eq!(target_key(None, ip), "10.0.0.9");
}
