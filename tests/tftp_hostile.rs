//! TFTP against a hostile network and a hurried admin, on loopback (127.0.0.x sources): files
//! truncated under a netascii transfer, netascii memory per transfer, spoofed requests that
//! never ACK, the reflection of option-less requests, `plain_rrq_subnets` and the per-source
//! rate limit.

mod common;
use bootfarm::tftp::netascii::to_netascii;
use bootfarm::tftp::wire::{self, Packet};
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

struct Fixture {
    dir: TempDir,
    server: Server,
    port: u16,
    http: u16,
}

fn fixture(extra: &str, files: &[(&str, Vec<u8>)]) -> Fixture {
    let dir = TempDir::new("tftp-hostile");
    let boot = dir.join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    for (name, data) in files {
        std::fs::write(boot.join(name), data).unwrap();
    }
    let (port, http, nbd) = (free_port(), free_port(), free_port());
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1\"\ntftp_port = {port}\nhttp_port = {http}\nnbd_port = {nbd}\nworkers = 2\n[tftp]\nroot = \"boot\"\n{extra}"
    );
    std::fs::write(dir.join("bootfarm.toml"), cfg).unwrap();
    let server = Server::start(&["--config", dir.join("bootfarm.toml").to_str().unwrap()]);
    Fixture { dir, server, port, http }
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The value of a metric line (`name{labels}` exactly as rendered).
fn metric(port: u16, name: &str) -> f64 {
    let m = http_get(port, "/metrics");
    m.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in\n{m}"))
        .parse()
        .unwrap()
}

/// Polls `cond` every 50 ms until it holds or `limit` passes; returns the time it took.
fn within(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

fn sock_on(ip: &str, timeout_ms: u64) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(timeout_ms))).unwrap();
    s
}

fn rrq(mode: &str, name: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    let opts: Vec<(&str, String)> = opts.iter().map(|(k, v)| (*k, v.to_string())).collect();
    wire::encode_rrq(&mut b, name, mode, &opts);
    b
}

fn recv(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut b = vec![0u8; 70000];
    let (n, from) = s.recv_from(&mut b).ok()?;
    b.truncate(n);
    Some((b, from))
}

/// Text with CR LF, lone LF and lone CR at and around every 512-byte block edge.
fn text(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            if i % 511 == 0 {
                b'\n'
            } else if i % 257 == 0 {
                b'\r'
            } else {
                b"line of text "[i % 13]
            }
        })
        .collect()
}

/// Netascii is converted per block from pread: a real client (tftp-hpa, `-m ascii`) gets the
/// text back exactly; a file truncated under a transfer ends it with ERROR 0 "file changed"
/// and the server keeps serving (it used to die of SIGBUS converting the whole mapping).
#[test]
fn netascii_streams_and_a_truncated_file_ends_the_transfer_not_the_server() {
    let doc = text(200_000);
    let f = fixture("", &[("doc.txt", doc.clone()), ("big.txt", text(4 << 20))]);
    let out = f.dir.join("out");
    run(Command::new("tftp").args(["127.0.0.1", &f.port.to_string(), "-m", "ascii", "-c", "get", "doc.txt", out.to_str().unwrap()]));
    assert_same("tftp-hpa netascii", &read_file(&out), &doc);
    // The raw netascii bytes, lockstep, with blksize 1000 (CR LF pairs split at block edges).
    let c = sock_on("127.0.0.1", 3000);
    c.send_to(&rrq("netascii", "doc.txt", &[("blksize", "1000"), ("tsize", "0")]), ("127.0.0.1", f.port)).unwrap();
    let (oack, tid) = recv(&c).unwrap();
    assert!(
        matches!(wire::parse(&oack), Ok(Packet::Oack { options }) if !String::from_utf8_lossy(options).contains("tsize")),
        "no tsize for netascii"
    );
    let mut got = Vec::new();
    let mut block = 0u16;
    loop {
        c.send_to(&wire::encode_ack(block), tid).unwrap();
        let (d, _) = recv(&c).unwrap();
        block += 1;
        assert_eq!(u16::from_be_bytes([d[2], d[3]]), block);
        got.extend_from_slice(&d[4..]);
        if d.len() < 1004 {
            c.send_to(&wire::encode_ack(block), tid).unwrap();
            break;
        }
    }
    assert_same("netascii bytes", &got, &to_netascii(&doc));
    // Truncate a file under a running transfer.
    c.send_to(&rrq("netascii", "big.txt", &[]), ("127.0.0.1", f.port)).unwrap();
    let (d1, tid) = recv(&c).unwrap();
    assert_eq!(&d1[..4], &[0, 3, 0, 1]);
    std::fs::OpenOptions::new().write(true).open(f.dir.join("boot/big.txt")).unwrap().set_len(1000).unwrap();
    let mut block = 1u16;
    let err = loop {
        c.send_to(&wire::encode_ack(block), tid).unwrap();
        let (d, _) = recv(&c).expect("DATA or ERROR");
        match wire::parse(&d) {
            Ok(Packet::Data { block: b, .. }) => block = b,
            Ok(Packet::Error { code, message }) => break (code, String::from_utf8_lossy(message).to_string()),
            other => panic!("{other:?}"),
        }
        assert!(block < 10, "the transfer must stop once the file is shorter");
    };
    assert_eq!(err.0, wire::ERR_NOT_DEFINED);
    assert!(err.1.contains("file changed"), "{err:?}");
    f.server.wait_for("outcome=\"file changed\"");
    assert_eq!(metric(f.http, "bootfarm_tftp_transfers_failed_total{reason=\"file_changed\"}"), 1.0);
    // Still serving.
    run(Command::new("tftp").args(["127.0.0.1", &f.port.to_string(), "-m", "ascii", "-c", "get", "doc.txt", out.to_str().unwrap()]));
    assert_same("after the truncation", &read_file(&out), &doc);
}

fn vm_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap()
}

/// 40 netascii requests of a 64 MiB file: each transfer holds a window of block starts and
/// block buffers, not a converted copy (+2.8 GB RSS and /healthz stalled for seconds before).
#[test]
fn forty_netascii_transfers_of_a_64_mib_file_keep_memory_small() {
    let f = fixture("sessions_per_ip_max = 64\n", &[("big.txt", text(64 << 20))]);
    let pid = f.server.child.id();
    let before = vm_rss_kib(pid);
    let socks: Vec<UdpSocket> = (0..40).map(|_| sock_on("127.0.0.1", 5000)).collect();
    let t0 = Instant::now();
    for s in &socks {
        s.send_to(&rrq("netascii", "big.txt", &[("blksize", "1432"), ("windowsize", "16")]), ("127.0.0.1", f.port)).unwrap();
    }
    let mut firsts = Vec::new();
    for s in &socks {
        let (oack, tid) = recv(s).expect("an OACK for every request");
        assert!(matches!(wire::parse(&oack), Ok(Packet::Oack { .. })));
        s.send_to(&wire::encode_ack(0), tid).unwrap();
        firsts.push(tid);
    }
    // Every transfer has sent its first window.
    for s in &socks {
        let (d, _) = recv(s).expect("DATA 1");
        assert_eq!(&d[..4], &[0, 3, 0, 1]);
    }
    let answered = t0.elapsed();
    let h0 = Instant::now();
    let health = http_get(f.http, "/healthz");
    let healthz = h0.elapsed();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let after = vm_rss_kib(pid);
    eprintln!("40 netascii transfers of 64 MiB: RSS {before} -> {after} KiB, first windows in {answered:?}, /healthz in {healthz:?}");
    assert!(after < before + 32 * 1024, "RSS grew {} KiB for 40 transfers", after - before);
    assert!(healthz < Duration::from_millis(500), "/healthz took {healthz:?}");
    assert!(answered < Duration::from_secs(5), "{answered:?}");
    assert_eq!(metric(f.http, "bootfarm_tftp_sessions"), 40.0);
}

/// The spoof pattern of the issue, scaled to the session table: requests with `timeout 255`
/// from 33 addresses x 8 (sessions_per_ip_max) fill all 256 sessions and never ACK. They held
/// sessions for hours (255 s x backoff x retries) and kept everyone else out; now a request
/// arriving at a full table takes the place of the oldest never-acknowledged transfer, so a
/// legitimate client is served during the flood, and the OACK is resent twice at the server's
/// timeout so every spoofed session is reclaimed within ~7 s.
#[test]
fn spoofed_requests_that_never_ack_are_reaped_in_seconds() {
    let f = fixture("sessions_max = 256\n", &[("boot.bin", pattern(3, 0, 100_000))]);
    let spoofers: Vec<UdpSocket> = (2..35).map(|i| sock_on(&format!("127.0.0.{i}"), 100)).collect();
    let t0 = Instant::now();
    for s in &spoofers {
        for _ in 0..8 {
            s.send_to(&rrq("octet", "boot.bin", &[("timeout", "255"), ("tsize", "0")]), ("127.0.0.1", f.port)).unwrap();
        }
    }
    let started = "bootfarm_tftp_transfers_started_total";
    within(Duration::from_secs(5), "every spoofed request taken", || metric(f.http, started) == 264.0);
    assert_eq!(metric(f.http, "bootfarm_tftp_sessions"), 256.0, "the table is full");
    // The 8 beyond the table took the places of the 8 oldest; a legitimate client is served
    // while the table is full.
    let fetch = || {
        let out = f.dir.join("out");
        let _ = std::fs::remove_file(&out);
        run(Command::new("curl").args(["-sS", "-o", out.to_str().unwrap(), &format!("tftp://127.0.0.1:{}/boot.bin", f.port)]));
        read_file(&out)
    };
    assert_same("legitimate client during the flood", &fetch(), &pattern(3, 0, 100_000));
    assert!(t0.elapsed() < Duration::from_secs(5), "served before the spoofed sessions expired");
    assert_eq!(metric(f.http, "bootfarm_tftp_transfers_failed_total{reason=\"evicted_unconfirmed\"}"), 9.0);
    // The timeout option above timeout_option_max_s was declined: no "timeout" in the OACKs.
    let (oack, _) = recv(&spoofers[0]).unwrap();
    assert!(matches!(wire::parse(&oack), Ok(Packet::Oack { options }) if !String::from_utf8_lossy(options).contains("timeout")));
    let took = within(Duration::from_secs(12), "every spoofed session reclaimed", || metric(f.http, "bootfarm_tftp_sessions") == 0.0);
    eprintln!("256 spoofed sessions reclaimed {:?} after the flood", t0.elapsed());
    assert!(t0.elapsed() >= Duration::from_secs(6), "reaped by the handshake timer (1 + 2 + 4 s), not at once ({took:?})");
    assert_eq!(metric(f.http, "bootfarm_tftp_transfers_failed_total{reason=\"timeout\"}"), 255.0);
    // Nothing but OACKs went to the spoofed addresses: no DATA, no ERROR (neither "busy" nor
    // "timed out").
    for s in &spoofers {
        while let Some((b, _)) = recv(s) {
            assert!(matches!(wire::parse(&b), Ok(Packet::Oack { .. })), "{:?}", wire::parse(&b));
        }
    }
    assert_same("legitimate client after the flood", &fetch(), &pattern(3, 0, 100_000));
}

/// What one option-less RRQ from a never-ACKing (spoofed) source makes the server send:
/// DATA 1 and its handshake_retries_max copies, no ERROR. Returns (bytes sent, RRQ bytes).
fn reflection(port: u16, from: &str, name: &str) -> (usize, usize) {
    let s = sock_on(from, 1000);
    let r = rrq("octet", name, &[]);
    s.send_to(&r, ("127.0.0.1", port)).unwrap();
    let mut bytes = 0;
    while let Some((b, _)) = recv(&s) {
        bytes += b.len();
    }
    (bytes, r.len())
}

/// RFC 1350 requests are answered with DATA 1 at once: the reflection is bounded by
/// handshake_retries_max (3 x 516 bytes, no ERROR), and `plain_rrq_subnets` stops it
/// entirely for sources outside the subnets, while requests with options are served from
/// anywhere. The per-source rate limit drops requests beyond its burst unanswered.
#[test]
fn option_less_requests_reflection_subnets_and_rate_limit() {
    let f = fixture(
        "timeout_ms = 200\nplain_rrq_subnets = [\"127.0.0.2/32\"]\nrequests_per_ip_per_s = 1\nrequests_per_ip_burst = 3\n",
        &[("bootstrap.bin", pattern(9, 0, 100_000))],
    );
    // Inside the subnet: DATA 1 three times, nothing else.
    let (bytes, rrq_len) = reflection(f.port, "127.0.0.2", "bootstrap.bin");
    eprintln!("option-less RRQ of {rrq_len} bytes reflected as {bytes} bytes: factor {:.1}", bytes as f64 / rrq_len as f64);
    assert_eq!(bytes, 3 * 516, "DATA 1 and its 2 retransmissions, no ERROR");
    // Outside: no answer at all, counted.
    let (bytes, _) = reflection(f.port, "127.0.0.3", "bootstrap.bin");
    assert_eq!(bytes, 0, "nothing reflected from outside plain_rrq_subnets");
    assert_eq!(metric(f.http, "bootfarm_tftp_requests_dropped_total{reason=\"plain_rrq_subnet\"}"), 1.0);
    f.server.wait_for("outside tftp.plain_rrq_subnets");
    // With options the same source is served (OACK first, nothing before ACK 0).
    let c = sock_on("127.0.0.3", 2000);
    c.send_to(&rrq("octet", "bootstrap.bin", &[("blksize", "1432")]), ("127.0.0.1", f.port)).unwrap();
    let (b, _) = recv(&c).unwrap();
    assert!(matches!(wire::parse(&b), Ok(Packet::Oack { .. })));
    // Rate limit: 127.0.0.4 may start 3 transfers at once, then 1 per second; the rest get
    // no answer (here: "file not found" errors are the answers counted).
    let c = sock_on("127.0.0.4", 500);
    let mut answers = 0;
    for _ in 0..6 {
        c.send_to(&rrq("octet", "missing", &[("tsize", "0")]), ("127.0.0.1", f.port)).unwrap();
    }
    while recv(&c).is_some() {
        answers += 1;
    }
    assert_eq!(answers, 3, "the burst is answered, the rest dropped");
    assert_eq!(metric(f.http, "bootfarm_tftp_requests_dropped_total{reason=\"rate_limit\"}"), 3.0);
    f.server.wait_for("over tftp.requests_per_ip_per_s");
    std::thread::sleep(Duration::from_millis(1100)); // the bucket refills one token per second
    c.send_to(&rrq("octet", "missing", &[("tsize", "0")]), ("127.0.0.1", f.port)).unwrap();
    assert!(recv(&c).is_some(), "a token came back after a second");
}
