//! NBD admission and target identity against the running binary, with clients on two source
//! addresses (127.0.0.1 and 127.0.0.2): a target's write cache is reached only from the address
//! that created it.

mod common;
use bootfarm::nbd::wire;
use common::*;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

struct Fixture {
    dir: TempDir,
    server: Server,
    port: u16,
    http: u16,
}

/// A 12 MiB dynamic VHDX written with a pattern, served as `disk` (standard) and `priv`
/// (private); `extra` goes into [nbd].
fn fixture(extra: &str) -> Fixture {
    let dir = TempDir::new("nbd-admission");
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    let img = dir.join("disk.vhdx");
    assert!(bootfarm(&["vdisk", "create", img.to_str().unwrap(), "--size", "12M", "--block-size", "1M"]).status.success());
    let w = dir.join("w.bin");
    std::fs::write(&w, pattern(1, 0, 1 << 20)).unwrap();
    assert!(bootfarm(&["vdisk", "write", img.to_str().unwrap(), "--offset", "0", "--from", w.to_str().unwrap()]).status.success());
    let (port, http) = (free_port(), free_port());
    let cfg = format!(
        "[server]\ntftp_port = {}\nhttp_port = {http}\nnbd_port = {port}\n[tftp]\nroot = \"boot\"\n[nbd]\ncache_dir = \"cache\"\n{extra}\n[[vdisk]]\nname = \"disk\"\npath = \"disk.vhdx\"\n[[vdisk]]\nname = \"priv\"\npath = \"disk.vhdx\"\nmode = \"private\"\n",
        free_port()
    );
    std::fs::write(dir.join("bootfarm.toml"), cfg).unwrap();
    let server = Server::start(&["--config", dir.join("bootfarm.toml").to_str().unwrap()]);
    Fixture { dir, server, port, http }
}

impl Fixture {
    fn metrics(&self) -> String {
        http_get(self.http, "/metrics")
    }
    fn metric(&self, line_start: &str) -> u64 {
        let m = self.metrics();
        m.lines().find_map(|l| l.strip_prefix(line_start).map(|v| v.trim().parse().unwrap())).unwrap_or(0)
    }
}

fn http_get(port: u16, path: &str) -> String {
    String::from_utf8(run(Command::new("curl").args(["-sf", "-m", "5", &format!("http://127.0.0.1:{port}{path}")])).stdout).unwrap()
}

/// A TCP connection to the server from a chosen source address.
fn connect_from(src: &str, port: u16) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let from: SocketAddr = SocketAddr::new(src.parse::<IpAddr>().unwrap(), 0);
    s.bind(&from.into()).unwrap();
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    s.connect_timeout(&to.into(), Duration::from_secs(5)).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// A minimal fixed-newstyle client bound to a source address: GO, then simple requests.
struct Raw(TcpStream);

impl Raw {
    fn try_go(src: &str, port: u16, export: &str) -> Result<Raw, (u32, String)> {
        let mut s = connect_from(src, port);
        nbd_go(&mut s, export).map(|_| Raw(s))
    }
    fn go(src: &str, port: u16, export: &str) -> Raw {
        Raw::try_go(src, port, export).unwrap_or_else(|e| panic!("GO {export} from {src}: {e:?}"))
    }
    fn request(&mut self, kind: u16, cookie: u64, offset: u64, length: u32, payload: &[u8]) -> (u32, u64) {
        self.0.write_all(&nbd_request(kind, cookie, offset, length, payload)).unwrap();
        let mut h = [0u8; 16];
        self.0.read_exact(&mut h).unwrap();
        assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), wire::SIMPLE_REPLY_MAGIC);
        (u32::from_be_bytes(h[4..8].try_into().unwrap()), u64::from_be_bytes(h[8..16].try_into().unwrap()))
    }
    fn read(&mut self, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        assert_eq!(self.request(wire::CMD_READ, cookie, offset, len, &[]), (0, cookie), "READ {len} at {offset}");
        let mut d = vec![0u8; len as usize];
        self.0.read_exact(&mut d).unwrap();
        d
    }
    fn write(&mut self, cookie: u64, offset: u64, data: &[u8]) {
        assert_eq!(self.request(wire::CMD_WRITE, cookie, offset, data.len() as u32, data), (0, cookie), "WRITE at {offset}");
    }
}

/// Polls `f` every 50 ms until it holds or `max` passes.
fn eventually(max: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + max;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Another address naming the victim's id (its MAC), or the victim's address as an id, never
/// reaches the victim's cache: the first is refused with NBD_REP_ERR_POLICY, logged with both
/// addresses and counted; the second is a target of its own. The owner resumes its cache.
#[test]
fn a_target_is_reached_only_from_the_address_that_created_it() {
    let f = fixture("cache_keep_after_disconnect_ms = 10000");
    let secret = vec![0x5au8; 8192];
    let victim = "disk@aa:bb:cc:dd:ee:01";
    // The victim writes into its named target and, anonymously, into its address's target.
    let mut v = Raw::go("127.0.0.1", f.port, victim);
    v.write(1, 4096, &secret);
    let mut anon = Raw::go("127.0.0.1", f.port, "disk");
    anon.write(2, 8 << 20, &secret);
    // From 127.0.0.2, the victim's id: refused while connected...
    let (e, why) = Raw::try_go("127.0.0.2", f.port, victim).err().expect("a foreign target id is refused");
    assert_eq!(e, wire::REP_ERR_POLICY);
    assert!(why.contains("another machine"), "{why}");
    // ...and while its cache is kept for a reconnect.
    drop(v);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(Raw::try_go("127.0.0.2", f.port, victim).err().map(|e| e.0), Some(wire::REP_ERR_POLICY));
    // The victim's address as an id is another key space: a fresh target reading the image.
    let image = Raw::go("127.0.0.2", f.port, "disk@other").read(3, 0, 12 << 20);
    let mut a = Raw::go("127.0.0.2", f.port, "disk@127.0.0.1");
    assert_same("disk@<victim IP> from another address", &a.read(4, 8 << 20, 8192), &image[8 << 20..(8 << 20) + 8192]);
    a.write(5, 8 << 20, &[1u8; 4096]);
    assert_eq!(anon.read(6, 8 << 20, 8192), secret, "the victim's anonymous target is untouched");
    // The owner (nbdinfo from 127.0.0.1) gets its target back.
    run(Command::new("nbdinfo").arg(format!("nbd://127.0.0.1:{}/{victim}", f.port)));
    assert_eq!(Raw::go("127.0.0.1", f.port, victim).read(7, 4096, 8192), secret, "the owner resumes its cache");
    assert!(f.server.log().contains("resumed=true"));
    // Logged with both addresses, counted.
    let line = f.server.wait_for("the target belongs to the address that created it");
    assert!(line.contains("127.0.0.2") && line.contains("owner=127.0.0.1") && line.contains("WARN"), "{line}");
    assert_eq!(f.metric("bootfarm_nbd_targets_refused_total{reason=\"foreign_target\"} "), 2);
}

/// Whether the server has closed `s` (a read returns end of file within `max`).
fn closed_within(s: &mut TcpStream, max: Duration) -> bool {
    s.set_read_timeout(Some(max)).unwrap();
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0)) || matches!(s.read(&mut b), Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

/// One address holds at most nbd.connections_per_ip_max connections; its idle connections are
/// left alone while nobody needs their place, and the longest-idle one is cut for a newcomer
/// refused at the limit, so the newcomer's retry gets in.
#[test]
fn per_address_limit_and_idle_eviction_only_under_pressure() {
    // Eviction wants 3 s of idleness; a refusal's request lives 2 s.
    let f = fixture("connections_per_ip_max = 2\nidle_evict_ms = 3000");
    let mut a = Raw::go("127.0.0.1", f.port, "disk@a");
    let mut b = Raw::go("127.0.0.1", f.port, "disk@b");
    // The third from 127.0.0.1 is closed at once; 127.0.0.2 has its own allowance.
    let mut third = connect_from("127.0.0.1", f.port);
    assert!(closed_within(&mut third, Duration::from_secs(3)), "the connection beyond the per-address limit is closed");
    let mut other = Raw::go("127.0.0.2", f.port, "disk@c");
    assert_eq!(other.read(1, 0, 512).len(), 512);
    assert_eq!(f.metric("bootfarm_nbd_connections_refused_total{limit=\"per_ip\"} "), 1);
    // Idle past nbd.idle_evict_ms with nobody waiting any more: both stay (nothing was idle
    // long enough while the refused one waited).
    std::thread::sleep(Duration::from_millis(3300));
    assert_eq!(a.read(2, 0, 512).len(), 512, "idle without pressure: kept");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(b.read(3, 0, 512).len(), 512, "idle without pressure: kept");
    assert_eq!(f.metric("bootfarm_nbd_idle_evicted_total "), 0);
    // Both idle again past the limit; a newcomer is refused, and the longest idle (a) is cut.
    std::thread::sleep(Duration::from_millis(3200));
    let mut newcomer = connect_from("127.0.0.1", f.port);
    assert!(closed_within(&mut newcomer, Duration::from_secs(3)), "refused at the limit");
    assert!(eventually(Duration::from_secs(3), || f.metric("bootfarm_nbd_idle_evicted_total ") == 1));
    // The longest-idle (a) of the worker that took the request: a, or b when only b's worker
    // holds one of them (the kernel spreads connections over the workers).
    let a_cut = closed_within(&mut a.0, Duration::from_millis(500));
    if !a_cut {
        assert!(closed_within(&mut b.0, Duration::from_secs(1)), "one of the idle connections was cut");
    }
    let survivor = if a_cut { &mut b } else { &mut a };
    survivor.0.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(survivor.read(4, 0, 512).len(), 512, "the other one stays");
    // The retry gets in.
    let mut retry = Raw::go("127.0.0.1", f.port, "disk@a");
    assert_eq!(retry.read(5, 0, 512).len(), 512);
    assert_eq!(f.metric("bootfarm_nbd_idle_evicted_total "), 1, "one refusal, one eviction");
    assert!(f.server.log().contains("nbd.connections_per_ip_max = 2"));
    drop(f.dir);
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &st[st.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Out of descriptors (RLIMIT_NOFILE lowered for the server), NBD accepting pauses instead of
/// spinning: the server's CPU time stays low while connections wait in the backlog, the
/// shortage is counted and logged once, and /healthz answers once the connections are gone.
#[test]
fn out_of_descriptors_nbd_accept_backs_off() {
    let dir = TempDir::new("nbd-emfile");
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    let img = dir.join("disk.vhdx");
    assert!(bootfarm(&["vdisk", "create", img.to_str().unwrap(), "--size", "8M"]).status.success());
    let (port, http) = (free_port(), free_port());
    std::fs::write(
        dir.join("bootfarm.toml"),
        format!("[server]\nworkers = 1\ntftp_port = {}\nhttp_port = {http}\nnbd_port = {port}\n[tftp]\nroot = \"boot\"\n[nbd]\ncache_dir = \"cache\"\nconnections_per_ip_max = 1000\n[[vdisk]]\nname = \"disk\"\npath = \"disk.vhdx\"\n", free_port()),
    )
    .unwrap();
    // prlimit sets the hard limit too, so the server cannot raise it back.
    let cfg = dir.join("bootfarm.toml");
    let bin = bin();
    let server = Server::start_with(Command::new("prlimit").args(["--nofile=48:48", "--"]).arg(&bin).args([
        "serve",
        "--config",
        cfg.to_str().unwrap(),
    ]));
    let pid = server.child.id();
    // Connections until the server cannot take more: the rest wait in its backlog.
    let mut conns = Vec::new();
    for _ in 0..120 {
        conns.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
    }
    server.wait_for("cannot accept connections");
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(pid) - t0;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(used * 100 < 20 * 2 * hz, "the server used {used} ticks of CPU in 2 s while out of descriptors (at most 20% allowed)");
    drop(conns);
    let mut ok = false;
    for _ in 0..50 {
        let o = Command::new("curl").args(["-sf", "-m", "2", &format!("http://127.0.0.1:{http}/healthz")]).output().unwrap();
        if o.status.success() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "/healthz answers once the connections are gone");
    let m = http_get(http, "/metrics");
    let errors: u64 = m.lines().find_map(|l| l.strip_prefix("bootfarm_nbd_accept_errors_total ")).unwrap().parse().unwrap();
    assert!(errors >= 1, "{m}");
    // Once per episode (an accept that works in between, when a descriptor came free, ends one).
    let logged = server.log().matches("NBD: cannot accept connections").count() as u64;
    assert!((1..=5).contains(&logged) && logged <= errors, "logged {logged} times for {errors} failed accepts");
    eprintln!("CPU {used} ticks (of {hz}/s) in 2 s out of descriptors; {errors} failed accepts, {logged} log lines");
}

fn private_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).unwrap().flatten().filter(|e| e.file_name().to_str().unwrap().starts_with("priv.private-")).count()
}

/// Private mode makes its version file at the first write, not per session: a session that only
/// reads leaves none; and once nbd.private_versions_max files exist a new session is refused.
#[test]
fn private_versions_are_made_at_the_first_write_and_bounded() {
    let f = fixture("cache_keep_after_disconnect_ms = 0\nprivate_versions_max = 2");
    for _ in 0..3 {
        let mut r = Raw::go("127.0.0.1", f.port, "priv");
        assert_eq!(r.read(1, 0, 4096).len(), 4096);
    }
    assert!(eventually(Duration::from_secs(5), || f.server.log().matches("without a write; no version was made").count() == 3));
    assert_eq!(private_files(&f.dir.0), 0, "sessions that only read make no version file");
    for i in 0..2u64 {
        let mut w = Raw::go("127.0.0.1", f.port, "priv");
        w.write(10 + i, 4096 * i, &[7u8; 4096]);
        drop(w);
        assert!(
            eventually(Duration::from_secs(5), || f.server.log().matches("its writes are in the new version").count() == i as usize + 1)
        );
    }
    assert_eq!(private_files(&f.dir.0), 2, "one version per session that wrote");
    let (e, why) = Raw::try_go("127.0.0.1", f.port, "priv").err().expect("refused at nbd.private_versions_max");
    assert_eq!(e, wire::REP_ERR_POLICY);
    assert!(why.contains("nbd.private_versions_max = 2"), "{why}");
    assert_eq!(private_files(&f.dir.0), 2);
}

/// nbd.target_ids = "token": only the boot token of the `/ipxe?mac=` script names a target,
/// from the address that fetched it; nbdinfo uses the script's export name from that address,
/// another address (or a made-up or altered id) is refused and counted.
#[test]
fn token_mode_takes_only_boot_tokens_from_their_address() {
    let f = fixture("target_ids = \"token\"");
    let script = http_get(f.http, "/ipxe?mac=aa:bb:cc:dd:ee:01&vdisk=disk");
    let export = script
        .lines()
        .find_map(|l| l.strip_prefix("set bootfarm-nbd-export "))
        .unwrap_or_else(|| panic!("no export name in the script:\n{script}"))
        .to_string();
    let token = script.lines().find_map(|l| l.strip_prefix("set bootfarm-token ")).unwrap().to_string();
    assert_eq!(export, format!("disk@{token}"));
    assert!(token.len() >= 40, "{token}");
    // A second fetch hands out another token (a new boot, a new cache).
    let again = http_get(f.http, "/ipxe?mac=aa:bb:cc:dd:ee:01&vdisk=disk");
    assert!(!again.contains(&token), "tokens are per boot");
    // The owner: nbdinfo from 127.0.0.1, and a raw client writing into it.
    let info = run(Command::new("nbdinfo").arg(format!("nbd://127.0.0.1:{}/{export}", f.port)));
    assert!(String::from_utf8_lossy(&info.stdout).contains("export-size: 12582912"));
    let mut own = Raw::go("127.0.0.1", f.port, &export);
    own.write(1, 0, &[9u8; 4096]);
    // Another address with the same export name, a made-up id, an altered token: refused.
    let mut refused = 0;
    for (src, name) in [
        ("127.0.0.2", export.clone()),
        ("127.0.0.1", "disk@aa:bb:cc:dd:ee:01".to_string()),
        ("127.0.0.1", format!("disk@{}{}{}", &token[..10], if &token[10..11] == "A" { "B" } else { "A" }, &token[11..])),
    ] {
        let (e, why) = Raw::try_go(src, f.port, &name).err().unwrap_or_else(|| panic!("{name} from {src} was accepted"));
        assert_eq!(e, wire::REP_ERR_POLICY, "{name} from {src}");
        assert!(why.contains("token"), "{why}");
        refused += 1;
    }
    // Without an id, the client address is the target, in this mode too.
    assert_eq!(Raw::go("127.0.0.2", f.port, "disk").read(2, 0, 4096).len(), 4096);
    assert_eq!(f.metric("bootfarm_nbd_targets_refused_total{reason=\"token\"} "), refused);
    assert_eq!(own.read(3, 0, 4096), vec![9u8; 4096]);
}
