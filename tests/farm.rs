//! The farm with several instances on one machine (127.0.0.1, .2, .3: one loopback, several
//! addresses): every server computes the same lists, requests are redirected to the first
//! server of the target's list, a killed server leaves the lists and its targets finish their
//! boots elsewhere, a replica that differs is reported and avoided, and 1,000 reloads of the
//! farm table during a storm never mix two tables.

mod common;
use bootfarm::config::{Affinity, FarmMember};
use bootfarm::farm::place::{self, ServerState};
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

const DISK: u64 = 4 << 20;

struct Node {
    server: Option<Server>,
}

/// A farm of `n` nodes (powers 1, 1, 2, ...), each with its own copy of one vdisk in its own
/// folder, all on `port` at their own address. `tweak(i, image)` may change node i's copy.
fn farm(dir: &TempDir, n: usize, extra: &str, tweak: impl Fn(usize, &std::path::Path)) -> (Vec<Node>, u16) {
    // TFTP and HTTP on `port`, NBD on `port + 1`, at every node's address: both must be free
    // there (free_port checks `port` on 127.0.0.1 only; a client's ephemeral port on port + 1
    // once made a node fail to bind its NBD listener).
    let port = loop {
        let p = free_port();
        let free = |ip: String| {
            std::net::TcpListener::bind((ip.as_str(), p)).is_ok()
                && std::net::UdpSocket::bind((ip.as_str(), p)).is_ok()
                && std::net::TcpListener::bind((ip.as_str(), p + 1)).is_ok()
        };
        if p < u16::MAX && (1..=n).all(|i| free(format!("127.0.0.{i}"))) {
            break p;
        }
    };
    let src = dir.join("src.raw");
    std::fs::write(&src, pattern(5, 0, DISK as usize)).unwrap();
    // One image, copied to every node (replication is a file copy: the bytes, GUIDs included,
    // are the same everywhere).
    let master = dir.join("master.vhdx");
    qemu_img(&["convert", "-f", "raw", "-O", "vhdx", "-o", "block_size=1M", src.to_str().unwrap(), master.to_str().unwrap()]);
    let powers = [1.0, 1.0, 2.0, 1.0];
    let mut table = String::new();
    assert!(n <= powers.len(), "a power per node");
    for (i, power) in powers.iter().enumerate().take(n) {
        table.push_str(&format!("[[farm.server]]\nname = \"node{}\"\naddress = \"127.0.0.{}\"\npower = {}\n", i + 1, i + 1, power));
    }
    let mut nodes = Vec::new();
    for i in 0..n {
        let d = dir.join(&format!("node{}", i + 1));
        std::fs::create_dir_all(d.join("boot")).unwrap();
        std::fs::write(d.join("boot/boot.bin"), pattern(6, 0, 100_000)).unwrap();
        let img = d.join("disk.vhdx");
        std::fs::copy(&master, &img).unwrap();
        tweak(i, &img);
        let cfg = format!(
            "[server]\nname = \"node{}\"\nlisten = \"127.0.0.{}\"\ntftp_port = {port}\nhttp_port = {port}\nnbd_port = {}\nworkers = 1\n[tftp]\nroot = \"boot\"\n[nbd]\ncache_dir = \"cache\"\n[[vdisk]]\nname = \"disk\"\npath = \"disk.vhdx\"\n[farm]\nhealth_interval_ms = 200\nhealth_timeout_ms = 200\nhealth_failures_max = 3\nhealth_successes_min = 1\n{extra}\n{table}",
            i + 1,
            i + 1,
            port + 1,
        );
        std::fs::write(d.join("bootfarm.toml"), cfg).unwrap();
        let server = Server::start(&["--config", d.join("bootfarm.toml").to_str().unwrap()]);
        nodes.push(Node { server: Some(server) });
    }
    (nodes, port)
}

/// One HTTP/1.1 GET (Connection: close): (status, headers, body).
fn get(addr: &str, path: &str, range: Option<(u64, u64)>) -> std::io::Result<(u16, String, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let r = range.map(|(a, b)| format!("Range: bytes={a}-{b}\r\n")).unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{r}Connection: close\r\n\r\n").as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or(std::io::ErrorKind::UnexpectedEof)?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, head, buf[end + 4..].to_vec()))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
}

/// The server order an /ipxe script lists.
fn ipxe_order(addr: &str, mac: &str) -> (u64, Vec<String>) {
    let (st, _, body) = get(addr, &format!("/ipxe?mac={mac}"), None).unwrap();
    let text = String::from_utf8(body).unwrap();
    assert_eq!(st, 200, "{text}");
    let generation = text.split("configuration generation ").nth(1).unwrap().split(')').next().unwrap().parse().unwrap();
    let order = text.lines().find_map(|l| l.strip_prefix("# servers in failover order: ")).unwrap().split(' ').map(String::from).collect();
    (generation, order)
}

fn members(powers: &[(&str, f64)]) -> Vec<FarmMember> {
    powers
        .iter()
        .enumerate()
        .map(|(i, (n, p))| FarmMember {
            name: n.to_string(),
            address: format!("127.0.0.{}", i + 1).parse().unwrap(),
            power: *p,
            subnets: vec![],
            vdisks: vec![],
            max_booting: 0,
            http_port: 0,
        })
        .collect()
}

fn expected(farm: &[FarmMember], mac: &str) -> Vec<String> {
    let up = |_: usize| ServerState { up: true, replica_ok: true, active: 0, booting: 0 };
    place::place(farm, &up, "disk", mac, None, Affinity::None, 0.25).into_iter().map(|i| farm[i].name.clone()).collect()
}

fn farm_status(dir: &TempDir, node: usize) -> (i32, String) {
    let o = bootfarm(&["farm", "status", "--config", dir.join(&format!("node{node}/bootfarm.toml")).to_str().unwrap()]);
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn every_server_agrees_redirects_and_a_killed_server_is_left_out() {
    let dir = TempDir::new("farm");
    // The reads below make targets active; a loose load bound keeps that from reordering the
    // lists, so they can be compared with plain rendezvous (bounded load: see farm::place tests).
    let (mut nodes, port) = farm(&dir, 3, "load_epsilon = 10.0", |_, _| {});
    let addr = |i: usize| format!("127.0.0.{}:{port}", i + 1);
    // Every node up and its replica hashed and agreeing.
    wait_until("farm status reports every server up with agreeing replicas", 20, || farm_status(&dir, 1).0 == 0);
    let (_, table) = farm_status(&dir, 2);
    for n in ["node1", "node2", "node3"] {
        assert!(table.lines().any(|l| l.starts_with(n) && l.contains(" up ") && l.contains("disk:ok")), "{table}");
    }
    // `farm status` probes from outside; each server's own prober may not have seen every
    // peer answer yet (one that started later was refused twice and is down until its next
    // answer), so wait until every server lists all three.
    for i in 0..3 {
        wait_until(&format!("node{} sees all three servers up", i + 1), 20, || ipxe_order(&addr(i), "52:54:00:00:00:00").1.len() == 3);
    }
    // Every server hands out the same list for a target, the one the library computes.
    let table3 = members(&[("node1", 1.0), ("node2", 1.0), ("node3", 2.0)]);
    for t in 0..40 {
        let mac = format!("52:54:00:00:01:{t:02x}");
        let want = expected(&table3, &mac);
        for i in 0..3 {
            assert_eq!(ipxe_order(&addr(i), &mac).1, want, "node{} for {mac}", i + 1);
        }
    }
    // A vdisk read reaching a server that is not first is redirected there, once.
    let content = pattern(5, 0, DISK as usize);
    let mut redirected = 0;
    for t in 0..20 {
        let mac = format!("52:54:00:00:02:{t:02x}");
        let want = expected(&table3, &mac);
        for i in 0..3 {
            let (st, head, body) = get(&addr(i), &format!("/vdisk/disk?mac={mac}"), Some((4096, 8191))).unwrap();
            if format!("node{}", i + 1) == want[0] {
                assert_eq!(st, 206);
                assert!(body == content[4096..8192]);
            } else {
                assert_eq!(st, 307, "{head}");
                let loc = header(&head, "location").unwrap();
                let first_ip = format!("127.0.0.{}", &want[0][4..]);
                assert_eq!(loc, format!("http://{first_ip}:{port}/vdisk/disk?mac={mac}&via=node{}", i + 1));
                let (st, _, body) = get(&format!("{first_ip}:{port}"), &loc[loc.find("/vdisk").unwrap()..], Some((4096, 8191))).unwrap();
                assert_eq!(st, 206, "the redirect target serves it");
                assert!(body == content[4096..8192]);
                redirected += 1;
            }
        }
    }
    assert!(redirected >= 20);
    // curl follows the redirect to the same bytes.
    let out = dir.join("curl.bin");
    run(Command::new("curl").args([
        "-sfL",
        "-o",
        out.to_str().unwrap(),
        &format!("http://{}/boot/boot.bin?mac=52:54:00:00:03:01", addr(0)),
    ]));
    assert!(read_file(&out) == pattern(6, 0, 100_000));
    // Kill node3 (the heaviest): within a few probe intervals no list names it, and redirects
    // go to the remaining servers only.
    nodes[2].server.take();
    let t0 = Instant::now();
    wait_until("node1 and node2 drop node3 from their lists", 10, || {
        (0..10).all(|t| {
            let mac = format!("52:54:00:00:04:{t:02x}");
            (0..2).all(|i| !ipxe_order(&addr(i), &mac).1.contains(&"node3".to_string()))
        })
    });
    eprintln!("node3 left every list {} ms after it was killed", t0.elapsed().as_millis());
    let table2 = members(&[("node1", 1.0), ("node2", 1.0)]);
    for t in 0..20 {
        let mac = format!("52:54:00:00:05:{t:02x}");
        assert_eq!(ipxe_order(&addr(0), &mac).1, expected(&table2, &mac), "{mac} on the two survivors");
    }
    let (code, table) = farm_status(&dir, 1);
    assert_eq!(code, 2, "a server down: exit 2\n{table}");
    assert!(table.lines().any(|l| l.starts_with("node3") && l.contains("down")), "{table}");
    // /api/status shows the view of the farm.
    let (_, _, body) = get(&addr(0), "/api/status", None).unwrap();
    let s = String::from_utf8(body).unwrap();
    assert!(s.contains("\"name\": \"node3\"") && s.contains("\"up\": false"), "{s}");
    drop(nodes);
}

#[test]
fn a_replica_that_differs_is_reported_and_avoided() {
    let dir = TempDir::new("farm-replica");
    // node2's copy has one byte changed.
    let (nodes, port) = farm(&dir, 3, "", |i, img| {
        if i == 1 {
            let w = img.with_extension("w");
            std::fs::write(&w, [0xEEu8; 512]).unwrap();
            assert!(bootfarm(&["vdisk", "write", img.to_str().unwrap(), "--offset", "1048576", "--from", w.to_str().unwrap()])
                .status
                .success());
        }
    });
    wait_until("node2 reported as a mismatching replica", 20, || {
        farm_status(&dir, 1).1.lines().any(|l| l.starts_with("node2") && l.contains("disk:MISMATCH"))
    });
    let (code, table) = farm_status(&dir, 3);
    assert_eq!(code, 2, "{table}");
    assert!(table.lines().any(|l| l.starts_with("node1") && l.contains("disk:ok")), "{table}");
    // node1 never places a target on node2 (before it has both hashes node2 is not eligible
    // either: only a positively identical copy is); its own view shows the mismatch.
    wait_until("node1's own view reports node2's copy as a mismatch", 10, || {
        let (_, _, body) = get(&format!("127.0.0.1:{port}"), "/api/status", None).unwrap();
        String::from_utf8(body).unwrap().contains("\"replicas\": {\"disk\": \"mismatch\"}")
    });
    for t in 0..30 {
        let (_, order) = ipxe_order(&format!("127.0.0.1:{port}"), &format!("52:54:00:00:06:{t:02x}"));
        assert!(!order.contains(&"node2".to_string()), "{order:?}");
    }
    drop(nodes);
}

/// A target booting over HTTP the way iPXE sanboot does: the script's server list, then the
/// disk in 128 KiB ranges from the first server that answers, moving down the list when one
/// stops answering. Returns the time lost to failover.
fn boot(port: u16, entry: &str, mac: &str, content: &[u8]) -> Duration {
    let (_, order) = ipxe_order(&format!("{entry}:{port}"), mac);
    let addrs: Vec<String> = order.iter().map(|n| format!("127.0.0.{}:{port}", &n[4..])).collect();
    let mut server = 0;
    let mut lost = Duration::ZERO;
    let mut at = 0u64;
    while at < DISK {
        let end = (at + (128 << 10)).min(DISK) - 1;
        let t = Instant::now();
        match get(&addrs[server], &format!("/vdisk/disk?mac={mac}&via=test"), Some((at, end))) {
            Ok((206, _, body)) => {
                assert!(body == content[at as usize..=end as usize], "{mac}: wrong bytes at {at}");
                at = end + 1;
                std::thread::sleep(Duration::from_millis(15)); // a booting OS between reads
            }
            other => {
                assert!(server + 1 < addrs.len(), "{mac}: no server left ({other:?})");
                server += 1;
                lost += t.elapsed();
            }
        }
    }
    lost
}

#[test]
fn targets_booting_when_a_server_is_killed_finish_on_another() {
    let dir = TempDir::new("farm-failover");
    let (mut nodes, port) = farm(&dir, 3, "", |_, _| {});
    wait_until("farm up", 20, || farm_status(&dir, 1).0 == 0);
    // Each server places on a peer only once its own prober has that peer's content hash
    // (farm status probes from outside): wait until every server's own lists name all three,
    // or the targets may all be placed on the first two and none fail over (1 run in 6).
    for i in 0..3 {
        let a = format!("127.0.0.{}:{port}", i + 1);
        wait_until(&format!("node{} sees all three servers up", i + 1), 20, || ipxe_order(&a, "52:54:00:00:00:00").1.len() == 3);
    }
    let content = std::sync::Arc::new(pattern(5, 0, DISK as usize));
    let killed_at = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
    let mut handles = Vec::new();
    for t in 0..24 {
        let content = content.clone();
        handles.push(std::thread::spawn(move || {
            let mac = format!("52:54:00:00:07:{t:02x}");
            let lost = boot(port, "127.0.0.1", &mac, &content);
            (mac, lost, Instant::now())
        }));
    }
    std::thread::sleep(Duration::from_millis(150));
    nodes[2].server.take(); // node3 dies mid-boot (SIGKILL)
    *killed_at.lock().unwrap() = Some(Instant::now());
    let mut affected = 0;
    let mut worst = Duration::ZERO;
    for h in handles {
        let (mac, lost, _) = h.join().expect("every target completes its boot");
        if lost > Duration::ZERO {
            affected += 1;
            worst = worst.max(lost);
            eprintln!("{mac}: failed over, {} ms lost", lost.as_millis());
        }
    }
    eprintln!(
        "{affected} of 24 targets failed over; the last affected one resumed {} ms after its server stopped answering",
        worst.as_millis()
    );
    assert!(affected > 0, "some targets were on node3 (power 2 of 4)");
    drop(nodes);
}

#[test]
fn a_thousand_reloads_during_a_storm_never_mix_two_tables() {
    let dir = TempDir::new("farm-reload");
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    std::fs::write(dir.join("src.raw"), pattern(5, 0, 1 << 20)).unwrap();
    qemu_img(&["convert", "-f", "raw", "-O", "vhdx", dir.join("src.raw").to_str().unwrap(), dir.join("disk.vhdx").to_str().unwrap()]);
    let port = free_port();
    // Two farm tables that place differently (the same servers, other powers); the peers are
    // stand-ins that answer every probe with node1's hash of the vdisk (placement takes only
    // servers that report an identical copy), a huge failure limit keeps them in the table,
    // and a loose load bound keeps the storm's own load from moving node1 down, so placement
    // depends on the table alone. A 1 ms debounce: SIGHUP reads the file once it stood still.
    let variant = |b: bool| {
        let names = ["node1", "node2", "node3"];
        let powers = if b { [3.0, 1.0, 1.5] } else { [1.0, 1.0, 2.0] };
        let mut t = format!(
            "[server]\nname = \"node1\"\ntftp_port = {port}\nhttp_port = {port}\nnbd_port = {}\nreload_poll_ms = 60000\nreload_debounce_ms = 1\n[tftp]\nroot = \"boot\"\n[[vdisk]]\nname = \"disk\"\npath = \"disk.vhdx\"\n[farm]\nhealth_failures_max = 1000000000\nhealth_interval_ms = 100\nhealth_timeout_ms = 100\nload_epsilon = 10.0\n",
            port + 1
        );
        for i in 0..3 {
            t.push_str(&format!("[[farm.server]]\nname = \"{}\"\naddress = \"127.0.0.{}\"\npower = {}\n", names[i], i + 1, powers[i]));
        }
        (t, members(&[(names[0], powers[0]), (names[1], powers[1]), (names[2], powers[2])]))
    };
    let (text_a, table_a) = variant(false);
    let (text_b, table_b) = variant(true);
    let cfg = dir.join("bootfarm.toml");
    std::fs::write(&cfg, &text_a).unwrap();
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let addr = format!("127.0.0.1:{port}");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut hash = String::new();
    wait_until("node1 hashed its vdisk", 20, || {
        let (_, _, body) = get(&addr, "/healthz", None).unwrap();
        hash = String::from_utf8_lossy(&body).lines().find_map(|l| l.strip_prefix("hash disk ")).unwrap_or("").to_string();
        !hash.is_empty()
    });
    let peers: Vec<_> =
        (2..=3).map(|i| stand_in_peer(format!("127.0.0.{i}:{port}"), format!("node{i}"), hash.clone(), stop.clone())).collect();
    wait_until("node1 has both peers' reports", 20, || ipxe_order(&addr, "52:54:00:ff:ff:fe").1.len() == 3);
    let content = std::sync::Arc::new(pattern(5, 0, 1 << 20));
    let mut storm = Vec::new();
    for w in 0..4 {
        let (stop, addr, content, ta, tb) = (stop.clone(), addr.clone(), content.clone(), table_a.clone(), table_b.clone());
        storm.push(std::thread::spawn(move || {
            let (mut n, mut a, mut b) = (0u64, 0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mac = format!("52:54:00:{w:02x}:{:02x}:{:02x}", n >> 8 & 0xff, n & 0xff);
                let (_, order) = ipxe_order(&addr, &mac);
                if order == expected(&ta, &mac) {
                    a += 1;
                } else if order == expected(&tb, &mac) {
                    b += 1;
                } else {
                    panic!("{mac}: {order:?} is neither table's list: a mix");
                }
                let off = (n * 4096) % ((1 << 20) - 4096);
                let (st, _, body) = get(&addr, &format!("/vdisk/disk?mac={mac}&via=storm"), Some((off, off + 4095))).unwrap();
                assert_eq!(st, 206);
                assert!(body == content[off as usize..off as usize + 4096], "wrong bytes at {off}");
                n += 1;
            }
            (n, a, b)
        }));
    }
    let metric = || -> u64 {
        let (_, _, body) = get(&addr, "/metrics", None).unwrap();
        let m = String::from_utf8(body).unwrap();
        m.lines().find_map(|l| l.strip_prefix("bootfarm_config_reloads_total{result=\"ok\"} ")).unwrap().trim().parse().unwrap()
    };
    let t0 = Instant::now();
    for i in 0..1000u64 {
        std::fs::write(&cfg, if i % 2 == 0 { &text_b } else { &text_a }).unwrap();
        server.signal(libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric() < i + 1 {
            assert!(Instant::now() < deadline, "reload {i} not done");
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let reload_ms = t0.elapsed().as_millis();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut total, mut a, mut b) = (0, 0, 0);
    for h in storm {
        let (n, x, y) = h.join().expect("no failed request, no mixed list");
        total += n;
        a += x;
        b += y;
    }
    eprintln!("1000 reloads in {reload_ms} ms; {total} requests during them ({a} on table A, {b} on table B), none failed, none mixed");
    assert!(a > 0 && b > 0, "both tables were seen ({a}/{b})");
    assert_eq!(ipxe_order(&addr, "52:54:00:ff:ff:ff").0, 1001, "1000 reloads, each one generation");
    for p in peers {
        p.join().unwrap();
    }
}

/// A farm server stand-in on `addr`: answers every `/healthz` probe as `node`, holding the
/// vdisk "disk" with content hash `hash`, until `stop`.
fn stand_in_peer(
    addr: String,
    node: String,
    hash: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let l = std::net::TcpListener::bind(&addr).unwrap();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let body = format!("ok\nnode {node}\ngeneration 1\nbooting 0\nhash disk {hash}\n");
        let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
                    let mut b = [0u8; 1024];
                    let _ = s.read(&mut b);
                    let _ = s.write_all(answer.as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    })
}

/// A peer that does not have the vdisk reports no content hash for it: it is never placed on
/// (before, "no hash" counted as "still hashing" and it got its share of targets, each
/// redirected to a 404). Every list names only the servers holding an identical copy.
#[test]
fn a_peer_without_the_vdisk_gets_no_target() {
    let dir = TempDir::new("farm-lacking");
    let (nodes, port) = farm(&dir, 3, "load_epsilon = 10.0", |_, _| {});
    let addr = |i: usize| format!("127.0.0.{}:{port}", i + 1);
    // node3 (power 2: the largest share) serves another vdisk instead of "disk".
    let cfg3 = dir.join("node3/bootfarm.toml");
    let text = std::fs::read_to_string(&cfg3).unwrap().replace("name = \"disk\"", "name = \"other\"");
    std::fs::write(&cfg3, text).unwrap();
    let n3 = nodes[2].server.as_ref().unwrap();
    n3.signal(libc::SIGHUP);
    let l = n3.wait_for("why=\"SIGHUP\"");
    assert!(l.contains("configuration loaded"), "{l}");
    let (st, _, _) = get(&addr(2), "/vdisk/disk?via=test", None).unwrap();
    assert_eq!(st, 404, "node3 has no vdisk \"disk\"");
    let table2 = members(&[("node1", 1.0), ("node2", 1.0)]);
    let macs: Vec<String> = (0..16).map(|t| format!("52:54:00:00:08:{t:02x}")).collect();
    for i in 0..2 {
        wait_until(&format!("node{}'s lists name node1 and node2 only", i + 1), 20, || {
            macs.iter().all(|m| ipxe_order(&addr(i), m).1 == expected(&table2, m))
        });
    }
    // Every read through node1 ends on a server that has the bytes.
    let content = pattern(5, 0, DISK as usize);
    for m in &macs {
        let (st, head, body) = get(&addr(0), &format!("/vdisk/disk?mac={m}"), Some((0, 4095))).unwrap();
        let body = if st == 307 {
            let loc = header(&head, "location").unwrap();
            assert!(!loc.contains("127.0.0.3"), "{m} redirected to node3: {loc}");
            let host = &loc["http://".len()..loc[7..].find('/').unwrap() + 7];
            let (st, _, body) = get(host, &loc[loc[7..].find('/').unwrap() + 7..], Some((0, 4095))).unwrap();
            assert_eq!(st, 206, "{m} at {loc}");
            body
        } else {
            assert_eq!(st, 206, "{m}: {head}");
            body
        };
        assert!(body == content[..4096], "{m}: wrong bytes");
    }
    drop(nodes);
}
