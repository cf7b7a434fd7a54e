//! Writes belong to a boot, against the running binary with a raw NBD client: the same boot id
//! finds its writes after an outage longer than the anonymous keep time, a new boot id starts
//! clean and drops the last boot's cache at once (logged, counted by reason), a target without
//! a boot id keeps today's rule; and a plain-newstyle client (flags 0, EXPORT_NAME, as busybox's
//! nbd-client) is served, while every handshake that ends early is logged with its reason.

mod common;
use bootfarm::nbd::wire;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

const M: u64 = 1 << 20;

struct Raw {
    s: TcpStream,
}

impl Raw {
    fn go(port: u16, export: &str) -> Raw {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        nbd_go(&mut s, export).unwrap_or_else(|e| panic!("GO {export}: {e:?}"));
        Raw { s }
    }
    fn request(&mut self, kind: u16, cookie: u64, offset: u64, length: u32, payload: &[u8]) -> u32 {
        self.s.write_all(&nbd_request(kind, cookie, offset, length, payload)).unwrap();
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), wire::SIMPLE_REPLY_MAGIC);
        assert_eq!(u64::from_be_bytes(h[8..16].try_into().unwrap()), cookie);
        u32::from_be_bytes(h[4..8].try_into().unwrap())
    }
    fn read(&mut self, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        assert_eq!(self.request(wire::CMD_READ, cookie, offset, len, &[]), 0);
        let mut d = vec![0u8; len as usize];
        self.s.read_exact(&mut d).unwrap();
        d
    }
    /// Ends the connection as a client does (DISC), so the server sees it go.
    fn close(mut self) {
        let _ = self.s.write_all(&nbd_request(wire::CMD_DISC, 0, 0, 0, &[]));
        let mut b = [0u8; 1];
        let _ = self.s.read(&mut b); // EOF once the server closed
    }
}

fn start(dir: &TempDir, nbd: &str) -> (Server, u16, u16) {
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    std::fs::create_dir_all(dir.join("cache")).unwrap();
    std::fs::write(dir.join("a.raw"), pattern(1, 0, 8 * M as usize)).unwrap();
    let (tftp, http, nbd_port) = (free_port(), free_port(), free_port());
    let text = format!(
        "[server]\ntftp_port = {tftp}\nhttp_port = {http}\nnbd_port = {nbd_port}\n[tftp]\nroot = \"boot\"\n[nbd]\ncache_dir = \"cache\"\n{nbd}\n[[vdisk]]\nname = \"v\"\npath = \"a.raw\"\n"
    );
    std::fs::write(dir.join("bootfarm.toml"), text).unwrap();
    (Server::start(&["--config", dir.join("bootfarm.toml").to_str().unwrap()]), http, nbd_port)
}

fn metric(http: u16, sample: &str) -> u64 {
    let m = String::from_utf8(run(Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{http}/metrics")])).stdout).unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {sample} in\n{m}"))
        .parse::<f64>()
        .unwrap() as u64
}

#[test]
fn a_reconnect_of_the_same_boot_finds_its_writes_and_a_new_boot_starts_clean() {
    let dir = TempDir::new("nbd-boots");
    // A short anonymous keep: the boot's outage below outlasts it by far.
    let (s, http, port) = start(&dir, "cache_keep_after_disconnect_ms = 300");
    let clean = pattern(1, 0, 4096);
    let mut c = Raw::go(port, "v@m1#boot1");
    assert_eq!(c.request(wire::CMD_WRITE, 1, 0, 4096, &[0xAB; 4096]), 0);
    c.close();
    // Beyond the anonymous keep and the 1 s sweep: the boot's cache stays.
    std::thread::sleep(Duration::from_millis(2500));
    let mut c = Raw::go(port, "v@m1#boot1");
    assert_eq!(c.read(2, 0, 4096), vec![0xAB; 4096], "the same boot finds its writes");
    // A second connection of the boot (nbd-client -connections 2) shares the cache.
    let mut c2 = Raw::go(port, "v@m1#boot1");
    assert_eq!(c2.read(3, 0, 4096), vec![0xAB; 4096]);
    // A new boot while the old one's connections are open (the machine rebooted before the
    // server saw them close): clean image, the old cache dropped at once.
    let mut n = Raw::go(port, "v@m1#boot2");
    assert_same("a new boot reads the clean image", &n.read(4, 0, 4096), &clean);
    assert_eq!(metric(http, "bootfarm_nbd_caches_dropped_total{reason=\"new_boot\"}"), 1);
    assert!(s.wait_for("write cache discarded").contains("new boot"), "the drop is logged with its reason");
    c.close();
    c2.close();
    n.close();

    // No boot id: today's rule, the cache goes once the keep time has passed.
    let mut a = Raw::go(port, "v@m2");
    assert_eq!(a.request(wire::CMD_WRITE, 5, 4096, 4096, &[0xCD; 4096]), 0);
    a.close();
    std::thread::sleep(Duration::from_millis(1600));
    let mut a = Raw::go(port, "v@m2");
    assert_same("no boot id: a reconnect after the keep time starts clean", &a.read(6, 4096, 4096), &pattern(1, 4096, 4096));
    assert!(metric(http, "bootfarm_nbd_caches_dropped_total{reason=\"expired\"}") >= 1);
    a.close();
}

/// busybox's nbd-client handshake, byte for byte: client flags 0, EXPORT_NAME, then the
/// export's size, flags and 124 zero bytes; a LIST from such a client closes the connection,
/// logged with the reason, as is an unknown export.
#[test]
fn a_plain_newstyle_client_is_served_and_handshake_ends_are_logged() {
    let dir = TempDir::new("nbd-plain");
    let (s, _http, port) = start(&dir, "");
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut g = [0u8; 18];
    c.read_exact(&mut g).unwrap();
    let mut o = 0u32.to_be_bytes().to_vec();
    o.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
    o.extend_from_slice(&wire::OPT_EXPORT_NAME.to_be_bytes());
    o.extend_from_slice(&(b"v@m1#b1".len() as u32).to_be_bytes());
    o.extend_from_slice(b"v@m1#b1");
    c.write_all(&o).unwrap();
    let mut r = [0u8; 8 + 2 + 124];
    c.read_exact(&mut r).unwrap();
    assert_eq!(u64::from_be_bytes(r[..8].try_into().unwrap()), 8 * M);
    assert!(r[10..].iter().all(|&b| b == 0), "the 124 zero bytes");
    let mut c = Raw { s: c };
    assert_same("data", &c.read(1, 65536, 4096), &pattern(1, 65536, 4096));
    c.close();
    for (opt, payload, why) in
        [(wire::OPT_LIST, &b""[..], "may only send NBD_OPT_EXPORT_NAME"), (wire::OPT_EXPORT_NAME, &b"nosuch"[..], "named no export")]
    {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.read_exact(&mut g).unwrap();
        let mut o = 0u32.to_be_bytes().to_vec();
        o.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
        o.extend_from_slice(&opt.to_be_bytes());
        o.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        o.extend_from_slice(payload);
        c.write_all(&o).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(c.read(&mut b).unwrap(), 0, "closed without a reply");
        assert!(s.wait_for(why).contains("nbd handshake ended"), "{why}");
        // The next line may fall in the same second as this one (one a second): wait it out.
        std::thread::sleep(Duration::from_millis(1100));
    }
}

/// An operator's disconnect (`POST /api/targets/<id>/disconnect`, with the console token) cuts
/// every connection of that target from the server side, and only those; the boot's reconnect
/// finds its writes; logged and counted. Without the token, or for an id with no connection
/// here, nothing is cut.
#[test]
fn an_operator_disconnect_cuts_the_targets_connections_and_its_reconnect_keeps_the_writes() {
    let dir = TempDir::new("nbd-cut");
    let (s, http, port) = start(&dir, "[console]\ntoken = \"cut-token-0123456789\"");
    let post = |path: &str, token: &str| -> (String, String) {
        let o = run(Command::new("curl")
            .args(["-sS", "-X", "POST", "-H", &format!("Authorization: Bearer {token}")])
            .arg("-w")
            .arg("\n%{http_code}")
            .arg(format!("http://127.0.0.1:{http}{path}")));
        let out = String::from_utf8(o.stdout).unwrap();
        let (body, code) = out.rsplit_once('\n').unwrap();
        (code.to_string(), body.to_string())
    };
    let mut a = Raw::go(port, "v@52:54:00:00:00:01#b1");
    let mut a2 = Raw::go(port, "v@52:54:00:00:00:01#b1");
    let mut other = Raw::go(port, "v@52:54:00:00:00:02#b1");
    assert_eq!(a.request(wire::CMD_WRITE, 1, M, 8192, &pattern(5, 0, 8192)), 0);
    assert_eq!(post("/api/targets/52:54:00:00:00:01/disconnect", "wrong").0, "403");
    assert_eq!(post("/api/targets/52:54:00:00:00:09/disconnect", "cut-token-0123456789").0, "404");
    assert_eq!(a.read(2, M, 4096), pattern(5, 0, 4096), "nothing was cut yet");
    let (code, body) = post("/api/targets/52%3A54%3A00%3A00%3A00%3A01/disconnect", "cut-token-0123456789");
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("\"target\": \"52:54:00:00:00:01\"") && body.contains("\"connections\": 2"), "{body}");
    // Both connections of the target see the server close them (EOF, within the driver's
    // ~100 ms pass); the other target's connection keeps working.
    for c in [&mut a, &mut a2] {
        let mut b = [0u8; 1];
        assert_eq!(c.s.read(&mut b).unwrap_or(0), 0, "the server closed the connection");
    }
    assert_eq!(other.read(3, 0, 4096), pattern(1, 0, 4096));
    assert!(s.wait_for("nbd connection cut: disconnected by the operator").contains("client="));
    assert_eq!(metric(http, "bootfarm_nbd_operator_disconnects_total"), 2);
    // The boot comes back: its writes are there.
    let mut back = Raw::go(port, "v@52:54:00:00:00:01#b1");
    assert_same("the boot's writes after the cut", &back.read(4, M, 8192), &pattern(5, 0, 8192));
    back.close();
    other.close();
}
