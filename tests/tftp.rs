//! TFTP against the running binary with independent clients (curl, tftp-hpa, atftp, busybox),
//! sizes at every block boundary and past the 65535-block rollover, and the negative space
//! over raw UDP: WRQ, traversal, symlink escapes, bad options, wrong TIDs, silent clients,
//! session limits, malformed packets, no DATA before ACK 0.

mod common;
use bootfarm::tftp::wire::{self, Packet};
use common::*;
use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

struct Fixture {
    dir: TempDir,
    server: Server,
    port: u16,
}

fn fixture(extra: &str) -> Fixture {
    fixture_on("127.0.0.1", extra)
}

fn fixture_on(listen: &str, extra: &str) -> Fixture {
    let dir = TempDir::new("tftp");
    let boot = dir.join("boot");
    std::fs::create_dir_all(boot.join("sub")).unwrap();
    for (name, size) in [("empty", 0usize), ("one", 1), ("b512", 512), ("b513", 513), ("b1432", 1432), ("b1433", 1433), ("mib", 1 << 20)] {
        std::fs::write(boot.join(name), pattern(size as u64, 0, size)).unwrap();
    }
    // > 65535 blocks at the default 512-byte blocksize: the block number rolls over to 0.
    std::fs::write(boot.join("rollover"), pattern(77, 0, 512 * 66_000 + 100)).unwrap();
    std::fs::write(boot.join("sub/text.txt"), b"line one\nline two\r\nend\n").unwrap();
    std::fs::write(dir.join("secret"), b"outside the root").unwrap();
    std::os::unix::fs::symlink(dir.join("secret"), boot.join("escape")).unwrap();
    std::os::unix::fs::symlink("sub/text.txt", boot.join("inside")).unwrap();
    let port = free_port();
    let http = free_port();
    let nbd = free_port();
    let cfg = format!(
        "[server]\nlisten = \"{listen}\"\ntftp_port = {port}\nhttp_port = {http}\nnbd_port = {nbd}\nworkers = 2\nshutdown_grace_ms = 2000\n[tftp]\nroot = \"boot\"\n{extra}"
    );
    std::fs::write(dir.join("bootfarm.toml"), cfg).unwrap();
    let server = Server::start(&["--config", dir.join("bootfarm.toml").to_str().unwrap()]);
    Fixture { dir, server, port }
}

/// curl's TFTP client fetching `url` into `out` at `blksize`: the bytes it wrote.
fn curl(blksize: &str, out: &std::path::Path, url: &str) -> Vec<u8> {
    let _ = std::fs::remove_file(out);
    run(Command::new("curl").args(["-sS", "--tftp-blksize", blksize, "-o", out.to_str().unwrap(), url]));
    read_file(out)
}

fn expected(f: &Fixture, name: &str) -> Vec<u8> {
    read_file(&f.dir.join("boot").join(name))
}

#[test]
fn independent_clients_get_exact_bytes() {
    let f = fixture("");
    let out = f.dir.join("out");
    let url = |name: &str| format!("tftp://127.0.0.1:{}/{name}", f.port);
    for name in ["empty", "one", "b512", "b513", "b1432", "b1433", "mib", "rollover"] {
        let want = expected(&f, name);
        // curl: default blocksize (512, with tsize/blksize options) and the iPXE-like 1432.
        for blk in ["512", "1432"] {
            assert_same(&format!("curl blksize {blk} {name}"), &curl(blk, &out, &url(name)), &want);
        }
        // tftp-hpa: RFC 1350 without options.
        let _ = std::fs::remove_file(&out);
        run(Command::new("tftp").args(["127.0.0.1", &f.port.to_string(), "-m", "binary", "-c", "get", name, out.to_str().unwrap()]));
        assert_same(&format!("tftp-hpa {name}"), &read_file(&out), &want);
        if name == "rollover" {
            continue; // atftp and busybox at small blocks would only repeat the same work
        }
        // atftp with RFC 7440 windowsize.
        for w in ["8", "16"] {
            let _ = std::fs::remove_file(&out);
            run(Command::new("atftp").args([
                "--option",
                &format!("windowsize {w}"),
                "--option",
                "blksize 1468",
                "-g",
                "-r",
                name,
                "-l",
                out.to_str().unwrap(),
                "127.0.0.1",
                &f.port.to_string(),
            ]));
            assert_same(&format!("atftp windowsize {w} {name}"), &read_file(&out), &want);
        }
        let _ = std::fs::remove_file(&out);
        run(Command::new("busybox").args([
            "tftp",
            "-g",
            "-b",
            "1432",
            "-r",
            name,
            "-l",
            out.to_str().unwrap(),
            "127.0.0.1",
            &f.port.to_string(),
        ]));
        assert_same(&format!("busybox {name}"), &read_file(&out), &want);
    }
    // Netascii: tftp-hpa converts back, so the text arrives as it is on disk.
    let _ = std::fs::remove_file(&out);
    run(Command::new("tftp").args(["127.0.0.1", &f.port.to_string(), "-m", "ascii", "-c", "get", "sub/text.txt", out.to_str().unwrap()]));
    assert_same("netascii", &read_file(&out), &expected(&f, "sub/text.txt"));
    // PXE ROMs send Windows separators and leading slashes; a symlink inside the root is fine.
    for name in ["\\sub\\text.txt", "/sub/text.txt", "inside"] {
        let _ = std::fs::remove_file(&out);
        run(Command::new("tftp").args(["127.0.0.1", &f.port.to_string(), "-m", "binary", "-c", "get", name, out.to_str().unwrap()]));
        assert_same(name, &read_file(&out), &expected(&f, "sub/text.txt"));
    }
    let log = f.server.log();
    assert!(log.contains("outcome=\"completed\""), "{log}");
    assert!(log.contains("blksize=1432"));
    assert!(log.contains("windowsize=16"));
}

/// A raw client socket for the negative tests.
struct Raw {
    sock: UdpSocket,
    server: std::net::SocketAddr,
}

impl Raw {
    fn new(port: u16) -> Raw {
        Raw::on("127.0.0.1", port)
    }
    /// A client socket on loopback address `ip` ("127.0.0.1" or "::1").
    fn on(ip: &str, port: u16) -> Raw {
        let server = std::net::SocketAddr::new(ip.parse().unwrap(), port);
        let sock = UdpSocket::bind(std::net::SocketAddr::new(server.ip(), 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(3000))).unwrap();
        Raw { sock, server }
    }
    fn rrq(&self, name: &str, opts: &[(&str, &str)]) {
        let mut b = Vec::new();
        let opts: Vec<(&str, String)> = opts.iter().map(|(k, v)| (*k, v.to_string())).collect();
        wire::encode_rrq(&mut b, name, "octet", &opts);
        self.sock.send_to(&b, self.server).unwrap();
    }
    fn recv(&self) -> Option<(Vec<u8>, std::net::SocketAddr)> {
        let mut b = vec![0u8; 70000];
        let (n, from) = self.sock.recv_from(&mut b).ok()?;
        b.truncate(n);
        Some((b, from))
    }
    /// Lockstep from DATA 1 (`first`, 512-byte blocks) to the end: ACKs every block, returns
    /// the bytes.
    fn finish(&self, first: &[u8], tid: std::net::SocketAddr) -> Vec<u8> {
        let mut got = first[4..].to_vec();
        for block in 1u16.. {
            self.sock.send_to(&wire::encode_ack(block), tid).unwrap();
            let (d, _) = self.recv().unwrap();
            got.extend_from_slice(&d[4..]);
            if d.len() < 516 {
                self.sock.send_to(&wire::encode_ack(block + 1), tid).unwrap();
                break;
            }
        }
        got
    }

    fn expect_error(&self, code: u16, text: &str) {
        let (b, _) = self.recv().expect("an ERROR reply");
        match wire::parse(&b) {
            Ok(Packet::Error { code: c, message }) => {
                assert_eq!(c, code, "error code (message {:?})", String::from_utf8_lossy(message));
                assert!(String::from_utf8_lossy(message).contains(text), "{:?}", String::from_utf8_lossy(message));
            }
            other => panic!("expected ERROR {code}, got {other:?}"),
        }
    }
}

#[test]
fn refusals_and_bad_options() {
    let f = fixture("");
    let c = Raw::new(f.port);
    // WRQ: read-only appliance.
    let mut w = b"\x00\x02x\x00octet\x00".to_vec();
    c.sock.send_to(&w, c.server).unwrap();
    c.expect_error(wire::ERR_ACCESS, "read-only");
    // Traversal, absolute paths outside, symlink escapes, directories.
    for name in ["../secret", "sub/../../secret", "escape", "sub"] {
        c.rrq(name, &[]);
        c.expect_error(wire::ERR_ACCESS, "access violation");
    }
    c.rrq("nothing-here", &[]);
    c.expect_error(wire::ERR_NOT_FOUND, "not found");
    // Options out of range: ERROR 8.
    c.rrq("mib", &[("blksize", "4")]);
    c.expect_error(wire::ERR_OPTION, "blksize");
    c.rrq("mib", &[("windowsize", "0")]);
    c.expect_error(wire::ERR_OPTION, "windowsize");
    // Malformed requests: ERROR 4; garbage opcodes are dropped, not answered.
    w = b"\x00\x01file\x00mail\x00".to_vec();
    c.sock.send_to(&w, c.server).unwrap();
    c.expect_error(wire::ERR_ILLEGAL, "mode");
    c.sock.send_to(b"\x00\x09junk", c.server).unwrap();
    c.sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    assert!(c.recv().is_none(), "garbage must not be answered");
    c.sock.set_read_timeout(Some(Duration::from_millis(3000))).unwrap();
    // blksize above the maximum is lowered; unknown options are left out of the OACK.
    c.rrq("b1433", &[("blksize", "65464"), ("frobnicate", "1"), ("tsize", "0")]);
    let (oack, tid) = c.recv().unwrap();
    let opts: Vec<(String, String)> = match wire::parse(&oack) {
        Ok(Packet::Oack { options }) => {
            wire::oack_options(options).map(|(k, v)| (String::from_utf8_lossy(k).into(), String::from_utf8_lossy(v).into())).collect()
        }
        other => panic!("expected OACK, got {other:?}"),
    };
    assert_eq!(opts, vec![("blksize".to_string(), "1468".to_string()), ("tsize".to_string(), "1433".to_string())]);
    assert_ne!(tid.port(), f.port, "a transfer answers from its own port (new TID)");
    c.sock.send_to(&wire::encode_ack(0), tid).unwrap();
    let (d, _) = c.recv().unwrap();
    assert_eq!(d.len(), 4 + 1433, "one block of up to 1468 bytes holds the whole file");
    c.sock.send_to(&wire::encode_ack(1), tid).unwrap();
    f.server.wait_for("outcome=\"completed\"");
    // Only unknown options: no OACK at all, DATA 1 straight away (RFC 2347).
    c.rrq("b512", &[("frobnicate", "1")]);
    let (d, _) = c.recv().unwrap();
    assert_eq!(&d[..4], &[0, 3, 0, 1]);
}

#[test]
fn wrong_tid_gets_error_5_and_does_not_disturb_the_transfer() {
    let f = fixture("");
    let c = Raw::new(f.port);
    c.rrq("b1433", &[]);
    let (d1, tid) = c.recv().unwrap();
    assert_eq!(&d1[..4], &[0, 3, 0, 1]);
    let stranger = Raw::new(f.port);
    stranger.sock.send_to(&wire::encode_ack(1), tid).unwrap();
    stranger.expect_error(wire::ERR_UNKNOWN_TID, "unknown transfer ID");
    let mut got = d1[4..].to_vec();
    let mut block = 1u16;
    loop {
        c.sock.send_to(&wire::encode_ack(block), tid).unwrap();
        let (d, from) = c.recv().unwrap();
        assert_eq!(from, tid);
        block += 1;
        assert_eq!(u16::from_be_bytes([d[2], d[3]]), block);
        got.extend_from_slice(&d[4..]);
        if d.len() < 4 + 512 {
            c.sock.send_to(&wire::encode_ack(block), tid).unwrap();
            break;
        }
    }
    assert_same("after a stranger's packet", &got, &expected(&f, "b1433"));
    f.server.wait_for("outcome=\"completed\"");
}

/// A dual-stack listener ("::"): IPv6 and IPv4 clients get their bytes from transfer sockets
/// connected to them, and a stranger on IPv6 still gets ERROR 5 from the transfer's port.
#[test]
fn dual_stack_listener_serves_ipv6_and_ipv4_and_answers_wrong_tids() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here: test not run");
        return;
    }
    let f = fixture_on("::", "");
    let want = expected(&f, "b1433");
    for ip in ["::1", "127.0.0.1"] {
        let c = Raw::on(ip, f.port);
        c.rrq("b1433", &[]);
        let (d1, tid) = c.recv().expect("DATA 1");
        assert_eq!(&d1[..4], &[0, 3, 0, 1], "from {ip}");
        let stranger = Raw::on(ip, f.port);
        stranger.sock.send_to(&wire::encode_ack(1), tid).unwrap();
        stranger.expect_error(wire::ERR_UNKNOWN_TID, "unknown transfer ID");
        assert_same(&format!("over {ip}"), &c.finish(&d1, tid), &want);
    }
    let got = curl("1432", &f.dir.join("out"), &format!("tftp://[::1]:{}/mib", f.port));
    assert_same("curl over IPv6", &got, &expected(&f, "mib"));
    f.server.wait_for("outcome=\"completed\"");
}

#[test]
fn silent_clients_time_out_and_no_data_before_ack0() {
    let f = fixture("timeout_ms = 200\nretries_max = 2\n");
    let c = Raw::new(f.port);
    // Options negotiated: only OACKs (retransmitted) until ACK 0, never DATA — a spoofed RRQ
    // cannot turn the server into an amplifier.
    c.rrq("mib", &[("tsize", "0"), ("blksize", "1432")]);
    let t0 = Instant::now();
    let mut oacks = 0;
    c.sock.set_read_timeout(Some(Duration::from_millis(1000))).unwrap();
    while let Some((b, _)) = c.recv() {
        match wire::parse(&b) {
            Ok(Packet::Oack { .. }) => oacks += 1,
            // A client that never acknowledged may be a spoofed address: not even an ERROR.
            other => panic!("only OACKs may arrive before ACK 0, got {other:?}"),
        }
    }
    c.sock.set_read_timeout(Some(Duration::from_millis(3000))).unwrap();
    assert_eq!(oacks, 3, "the OACK and its 2 retransmissions (handshake_retries_max)");
    // 200 + 400 + 800 ms of backoff, then the give-up.
    f.server.wait_for("outcome=\"timed out\"");
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(1300) && waited < Duration::from_secs(4), "{waited:?}");
    // A client that stops ACKing mid-transfer: DATA 2 is retransmitted, then the server gives up.
    c.rrq("mib", &[]);
    let (_, tid) = c.recv().unwrap();
    c.sock.send_to(&wire::encode_ack(1), tid).unwrap();
    let mut data2 = 0;
    while let Some((b, _)) = c.recv() {
        match wire::parse(&b) {
            Ok(Packet::Data { block: 2, .. }) => data2 += 1,
            Ok(Packet::Error { .. }) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(data2, 3);
}

#[test]
fn per_client_session_limit() {
    let f = fixture("sessions_per_ip_max = 2\ntimeout_ms = 5000\n");
    let clients: Vec<Raw> = (0..3).map(|_| Raw::new(f.port)).collect();
    for c in &clients[..2] {
        c.rrq("mib", &[("tsize", "0")]);
        let (b, _) = c.recv().unwrap();
        assert!(matches!(wire::parse(&b), Ok(Packet::Oack { .. })));
    }
    clients[2].rrq("mib", &[("tsize", "0")]);
    clients[2].expect_error(wire::ERR_NOT_DEFINED, "too many transfers");
}

#[test]
fn sigterm_lets_a_running_transfer_finish() {
    let f = fixture("");
    let c = Raw::new(f.port);
    c.rrq("b1433", &[]);
    let (d1, tid) = c.recv().unwrap();
    f.server.signal(libc::SIGTERM);
    f.server.wait_for("draining worker=0");
    f.server.wait_for("draining worker=1");
    // New requests are no longer taken …
    let late = Raw::new(f.port);
    late.sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    late.rrq("b512", &[]);
    assert!(late.recv().is_none(), "no new transfer while draining");
    // … but the running one completes.
    let got = c.finish(&d1, tid);
    assert_same("drained transfer", &got, &expected(&f, "b1433"));
    let mut server = f.server;
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_transfer_finishes_on_the_snapshot_it_started_with() {
    let f = fixture("");
    let c = Raw::new(f.port);
    c.rrq("b1433", &[]);
    let (d1, tid) = c.recv().unwrap();
    // Reload: the new configuration serves an empty root.
    std::fs::create_dir_all(f.dir.join("empty-root")).unwrap();
    let cfg = std::fs::read_to_string(f.dir.join("bootfarm.toml")).unwrap().replace("root = \"boot\"", "root = \"empty-root\"");
    std::fs::write(f.dir.join("bootfarm.toml"), cfg).unwrap();
    f.server.wait_for("generation=2");
    // The running transfer still completes with the old root's bytes …
    let got = c.finish(&d1, tid);
    assert_same("transfer across a reload", &got, &expected(&f, "b1433"));
    f.server.wait_for("outcome=\"completed\"");
    // … while a new request sees the new snapshot.
    let late = Raw::new(f.port);
    late.rrq("b1433", &[]);
    late.expect_error(wire::ERR_NOT_FOUND, "not found");
}

/// `server.steer = "cpu"`: with one worker per CPU the listeners steer, and clients get their
/// files; with more workers than CPUs it says why it keeps the hash, and still serves.
#[test]
fn steering_by_cpu_serves_and_refuses_more_workers_than_cpus() {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    for (workers, log) in
        [(cpus, "new flows go to the worker on the CPU that receives them"), (cpus + 1, "needs at most one worker per CPU")]
    {
        if workers < 2 {
            continue; // one worker: nothing to steer, nothing logged
        }
        let dir = TempDir::new("tftp-steer");
        std::fs::create_dir_all(dir.join("boot")).unwrap();
        let want = pattern(5, 0, 300_000);
        std::fs::write(dir.join("boot/f"), &want).unwrap();
        let (port, http, nbd) = (free_port(), free_port(), free_port());
        std::fs::write(
            dir.join("bootfarm.toml"),
            format!(
                "[server]\nlisten = \"127.0.0.1\"\ntftp_port = {port}\nhttp_port = {http}\nnbd_port = {nbd}\nworkers = {workers}\nsteer = \"cpu\"\n[tftp]\nroot = \"boot\"\n"
            ),
        )
        .unwrap();
        let server = Server::start(&["--config", dir.join("bootfarm.toml").to_str().unwrap()]);
        server.wait_for(log);
        let out = dir.join("out");
        for i in 0..4 {
            assert_same(&format!("workers {workers}, fetch {i}"), &curl("1432", &out, &format!("tftp://127.0.0.1:{port}/f")), &want);
        }
    }
}
