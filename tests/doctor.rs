//! `bootfarm doctor`: one test per finding this machine can produce, each by making the fault
//! for real: a port held by another process, a bad file, a damaged vdisk chain, farm peers
//! down / at another generation / with a different copy, a low open-file limit (prlimit), no
//! capability for port 69 (setpriv), a small MTU (a veth pair in a network namespace), io_uring
//! refused by a seccomp filter (packaging/syscall-filter.py). The clock check's peer is the one
//! stand-in: a socket answering /healthz with a Date an hour late (no node here has a wrong clock).

mod common;

use common::*;
use std::io::{Read, Write};
use std::process::{Command, Output};

/// Limits small enough for the open-file check to pass under this machine's 20000 hard limit.
const SMALL_LIMITS: &str = "[tftp]\nroot = \"boot\"\nsessions_max = 64\n[http]\nconnections_max = 64\n[nbd]\nconnections_max = 64\n[iscsi]\nconnections_max = 64\n";

fn store(tag: &str) -> TempDir {
    let d = TempDir::new(tag);
    std::fs::create_dir_all(d.join("boot")).unwrap();
    std::fs::create_dir_all(d.join("vdisks")).unwrap();
    d
}

/// A config with free ports on `listen`, SMALL_LIMITS and `extra` appended.
fn config(d: &TempDir, name: &str, listen: &str, http: u16, extra: &str) -> std::path::PathBuf {
    let text = format!(
        "[server]\nname = \"{name}\"\nlisten = \"{listen}\"\ntftp_port = {}\nhttp_port = {http}\nnbd_port = {}\niscsi_port = {}\n{SMALL_LIMITS}{extra}",
        free_port(),
        free_port(),
        free_port()
    );
    let p = d.join(&format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn doctor_with(cmd: &mut Command, file: &std::path::Path) -> (i32, String) {
    let out: Output = cmd.args(["doctor", "--config", file.to_str().unwrap()]).output().expect("run bootfarm doctor");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn doctor(file: &std::path::Path) -> (i32, String) {
    doctor_with(&mut Command::new(bin()), file)
}

/// The one line of `level check` that contains `what`.
fn line<'a>(report: &'a str, level: &str, check: &str, what: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(&format!("{level:<5} {check:<9}")) && l.contains(what))
        .unwrap_or_else(|| panic!("no `{level} {check}` line containing {what:?} in:\n{report}"))
}

#[test]
fn a_healthy_node_exits_0_with_every_check_ok() {
    let d = store("doctor-ok");
    let f = config(&d, "node1", "127.0.0.1", free_port(), "");
    let (code, r) = doctor(&f);
    assert_eq!(code, 0, "{r}");
    for check in ["io_uring", "memlock", "nofile", "port", "caps", "mtu", "config", "farm"] {
        line(&r, "ok", check, "");
    }
    line(&r, "ok", "io_uring", "usable");
    line(&r, "ok", "mtu", "lo: MTU");
    assert!(r.contains("0 warning(s), 0 error(s)"), "{r}");
}

#[test]
fn a_port_held_by_another_process_names_it() {
    let d = store("doctor-port");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let f = config(&d, "node1", "127.0.0.1", port, "");
    let (code, r) = doctor(&f);
    assert_eq!(code, 2, "{r}");
    let l = line(&r, "error", "port", &format!("tcp/{port} (server.http_port)"));
    assert!(l.contains(&format!("(pid {})", std::process::id())) && l.contains("choose another server.http_port"), "{l}");
    drop(held);

    // The same ports held by a running bootfarm: this node serving, not a fault.
    let s = Server::start(&["--config", f.to_str().unwrap()]);
    let (code, r) = doctor(&f);
    assert_eq!(code, 0, "{r}");
    let l = line(&r, "ok", "port", &format!("tcp/{port}"));
    assert!(l.contains(&format!("served by bootfarm (pid {})", s.child.id())), "{l}");
    line(&r, "ok", "port", "(server.tftp_port) is served by bootfarm");
}

#[test]
fn a_bad_configuration_is_an_error_that_names_key_and_value() {
    let d = store("doctor-config");
    let f = d.join("bad.toml");
    std::fs::write(&f, "[server]\nlisten = \"not-an-ip\"\n").unwrap();
    let (code, r) = doctor(&f);
    assert_eq!(code, 2, "{r}");
    let l = line(&r, "error", "config", "server.listen = \"not-an-ip\": not an IP address");
    assert!(l.contains("(line 2)") && l.contains("bootfarm config check"), "{l}");
    // The machine was still checked (with the defaults).
    line(&r, "ok", "io_uring", "usable");
}

#[test]
fn a_damaged_vdisk_chain_is_an_error() {
    const MIB: u64 = 1 << 20;
    let d = store("doctor-vdisk");
    let good = d.join("vdisks/good.vhdx");
    let bad = d.join("vdisks/bad.vhdx");
    for p in [&good, &bad] {
        assert!(bootfarm(&["vdisk", "create", p.to_str().unwrap(), "--size", "8M", "--block-size", "1M"]).status.success());
        let data = d.join("data.bin");
        std::fs::write(&data, pattern(1, 0, 4096)).unwrap();
        assert!(bootfarm(&["vdisk", "write", p.to_str().unwrap(), "--offset", "0", "--from", data.to_str().unwrap()]).status.success());
    }
    // Two BAT entries at the same payload offset: it opens (and serves) but is not sound.
    let e0 = u64::from_le_bytes(read_file(&bad)[3 * MIB as usize..3 * MIB as usize + 8].try_into().unwrap());
    write_at(&bad, 3 * MIB + 8, &e0.to_le_bytes());
    let vdisks = "[[vdisk]]\nname = \"good\"\npath = \"vdisks/good.vhdx\"\n[[vdisk]]\nname = \"bad\"\npath = \"vdisks/bad.vhdx\"\n";
    let f = config(&d, "node1", "127.0.0.1", free_port(), vdisks);
    let (code, r) = doctor(&f);
    assert_eq!(code, 2, "{r}");
    line(&r, "ok", "config", "valid (2 vdisk(s)");
    line(&r, "ok", "vdisk", "good: ");
    let l = line(&r, "error", "vdisk", "bad: ");
    assert!(l.contains("overlaps payload block") && l.contains("restore the image"), "{l}");
}

#[test]
fn a_low_open_file_limit_is_a_warning() {
    let d = store("doctor-nofile");
    let f = config(&d, "node1", "127.0.0.1", free_port(), "");
    let (code, r) = doctor_with(Command::new("prlimit").arg("--nofile=200:200").arg("--").arg(bin()), &f);
    assert_eq!(code, 1, "{r}");
    let l = line(&r, "warn", "nofile", "open-file limit 200 (hard) is below the");
    assert!(l.contains("LimitNOFILE="), "{l}");
}

#[test]
fn port_69_without_the_capability_is_an_error() {
    let d = store("doctor-caps");
    let f = d.join("caps.toml");
    std::fs::write(
        &f,
        format!(
            "[server]\ntftp_port = 69\nhttp_port = {}\nnbd_port = {}\niscsi_port = {}\n{SMALL_LIMITS}",
            free_port(),
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap().trim().parse().unwrap();
    if start <= 69 {
        // This kernel lets anyone bind port 69: that is what doctor must say.
        let (_, r) = doctor(&f);
        line(&r, "ok", "caps", "no capability needed");
        return;
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(["--inh-caps=-net_bind_service", "--bounding-set=-net_bind_service", "--"]).arg(bin());
    let (code, r) = doctor_with(&mut cmd, &f);
    assert_eq!(code, 2, "{r}");
    let l = line(&r, "error", "caps", "server.tftp_port = 69 below");
    assert!(l.contains("lacks CAP_NET_BIND_SERVICE") && l.contains("setcap"), "{l}");
    // As root (CI, this test's own user) it has the capability.
    if unsafe { libc::geteuid() } == 0 {
        let (_, r) = doctor(&f);
        line(&r, "ok", "caps", "has CAP_NET_BIND_SERVICE");
    }
}

#[test]
fn io_uring_refused_by_seccomp_names_the_cause() {
    let d = store("doctor-seccomp");
    let unit = d.join("no-uring.service");
    std::fs::write(&unit, "[Service]\nSystemCallFilter=~io_uring_setup\nSystemCallErrorNumber=EPERM\n").unwrap();
    let f = config(&d, "node1", "127.0.0.1", free_port(), "");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/syscall-filter.py");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(script).arg(&unit).arg("--").arg(bin());
    let (code, r) = doctor_with(&mut cmd, &f);
    assert_eq!(code, 2, "{r}");
    let l = line(&r, "error", "io_uring", "cannot create a ring");
    assert!(l.contains("seccomp filter refuses it") && l.contains("io_uring_setup"), "{l}");
}

/// A network namespace with a veth pair of MTU 1280, removed when dropped.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn an_mtu_below_the_tftp_block_is_a_warning() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test makes a network namespace: run it as root (CI does)");
    let ns = Netns(format!("bfdoc{}", std::process::id()));
    let ip = |args: &[&str]| run(Command::new("ip").args(args));
    ip(&["netns", "add", &ns.0]);
    ip(&["-n", &ns.0, "link", "add", "bf0", "mtu", "1280", "type", "veth", "peer", "name", "bf1", "mtu", "1280"]);
    ip(&["-n", &ns.0, "addr", "add", "10.77.0.1/24", "dev", "bf0"]);
    ip(&["-n", &ns.0, "link", "set", "bf0", "up"]);
    ip(&["-n", &ns.0, "link", "set", "bf1", "up"]);
    let d = store("doctor-mtu");
    let f = config(&d, "node1", "10.77.0.1", free_port(), "");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0]).arg(bin());
    let (code, r) = doctor_with(&mut cmd, &f);
    assert_eq!(code, 1, "{r}");
    let l = line(&r, "warn", "mtu", "bf0: MTU 1280");
    assert!(l.contains("tftp.blksize_max = 1468 makes 1500-byte packets") && l.contains("set tftp.blksize_max = 1248"), "{l}");
    // Listening on an address no interface has is an error (bind would fail).
    let f = config(&d, "node2", "10.77.9.9", free_port(), "");
    let (_, r) = doctor_with(Command::new("ip").args(["netns", "exec", &ns.0]).arg(bin()), &f);
    line(&r, "error", "mtu", "no interface has the address server.listen = 10.77.9.9");
}

/// Two nodes of one farm on 127.0.0.1 and 127.0.0.2, each with its own copy of vdisk "v".
fn farm_files(d: &TempDir, copy2_differs: bool) -> (std::path::PathBuf, std::path::PathBuf) {
    let (h1, h2) = (free_port(), free_port());
    let mut paths = Vec::new();
    for (n, differs) in [(1, false), (2, copy2_differs)] {
        let raw = d.join(&format!("vdisks/v{n}.raw"));
        let mut data = pattern(7, 0, 1 << 20);
        if differs {
            data[4096] ^= 0xFF;
        }
        std::fs::write(&raw, data).unwrap();
        paths.push(raw);
    }
    let farm = format!(
        "[farm]\nhealth_interval_ms = 200\nhealth_timeout_ms = 200\n[[farm.server]]\nname = \"node1\"\naddress = \"127.0.0.1\"\nhttp_port = {h1}\n[[farm.server]]\nname = \"node2\"\naddress = \"127.0.0.2\"\nhttp_port = {h2}\n"
    );
    let vdisk = |n: u32| format!("[[vdisk]]\nname = \"v\"\npath = \"vdisks/v{n}.raw\"\n");
    let f1 = config(d, "node1", "127.0.0.1", h1, &format!("{}{farm}", vdisk(1)));
    let f2 = config(d, "node2", "127.0.0.2", h2, &format!("{}{farm}", vdisk(2)));
    (f1, f2)
}

/// Runs doctor until `done` holds for its report (the nodes hash their copies after start).
fn doctor_until(f: &std::path::Path, done: impl Fn(&str) -> bool) -> (i32, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, r) = doctor(f);
        if done(&r) || std::time::Instant::now() > deadline {
            return (code, r);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn farm_peer_down_then_at_another_generation() {
    let d = store("doctor-farm");
    let (f1, f2) = farm_files(&d, false);
    let n1 = Server::start(&["--config", f1.to_str().unwrap()]);
    // node2 not started: down is an error.
    let (code, r) = doctor(&f1);
    assert_eq!(code, 2, "{r}");
    let l = line(&r, "error", "farm", "node2 (127.0.0.2:");
    assert!(l.contains("does not answer /healthz") && l.contains("start bootfarm there"), "{l}");
    line(&r, "ok", "farm", "node1 (127.0.0.1:");

    let n2 = Server::start(&["--config", f2.to_str().unwrap()]);
    let (code, r) = doctor_until(&f1, |r| r.contains("byte-identical"));
    assert_eq!(code, 0, "{r}");
    line(&r, "ok", "farm", "every node that answers serves configuration generation 1");
    line(&r, "ok", "replica", "vdisk v: 2 node(s) hold byte-identical copies");
    line(&r, "ok", "clock", "node2 (127.0.0.2:");

    // node2 reloads once: generation 2 there, 1 here.
    n2.signal(libc::SIGHUP);
    n2.wait_for("generation=2");
    let (code, r) = doctor(&f1);
    assert_eq!(code, 1, "{r}");
    let l = line(&r, "warn", "farm", "configuration generations differ: node2 at 2 where the reference is 1");
    assert!(l.contains("systemctl reload bootfarm"), "{l}");
    drop((n1, n2));
}

#[test]
fn farm_replicas_that_differ_are_an_error() {
    let d = store("doctor-replica");
    let (f1, f2) = farm_files(&d, true);
    let _n1 = Server::start(&["--config", f1.to_str().unwrap()]);
    let _n2 = Server::start(&["--config", f2.to_str().unwrap()]);
    let (code, r) = doctor_until(&f1, |r| r.contains("the copies differ"));
    assert_eq!(code, 2, "{r}");
    let l = line(&r, "error", "replica", "vdisk v: the copies differ");
    assert!(l.contains("node1 has ") && l.contains("node2 has ") && l.contains("byte for byte"), "{l}");
}

#[test]
fn a_peer_clock_an_hour_late_is_a_warning() {
    let d = store("doctor-clock");
    let peer = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let port = peer.local_addr().unwrap().port();
    let farm = format!(
        "[[farm.server]]\nname = \"node1\"\naddress = \"127.0.0.1\"\n[[farm.server]]\nname = \"node2\"\naddress = \"127.0.0.2\"\nhttp_port = {port}\n"
    );
    let f = config(&d, "node1", "127.0.0.1", free_port(), &farm);
    let answer = std::thread::spawn(move || {
        let (mut s, _) = peer.accept().unwrap();
        // Stamped when answering, as a server does: an hour behind.
        let late = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 - 3600;
        let mut req = [0u8; 1024];
        let _ = s.read(&mut req);
        let mut date = Vec::new();
        bootfarm::http::wire::format_date(late, &mut date);
        let body = "ok\nnode node2\ngeneration 1\nbooting 0\n";
        let head = format!(
            "HTTP/1.1 200 OK\r\nDate: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            String::from_utf8_lossy(&date),
            body.len()
        );
        s.write_all(format!("{head}{body}").as_bytes()).unwrap();
    });
    let (code, r) = doctor(&f);
    answer.join().unwrap();
    assert_eq!(code, 1, "{r}");
    let l = line(&r, "warn", "clock", "node2 (127.0.0.2:");
    // 3600 s, give or take the second the Date header cannot resolve.
    let skew: i64 = l.split("): clock ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap();
    assert!((3599..=3601).contains(&skew) && l.contains("s behind ours") && l.contains("NTP"), "{l}");
    // node1 (this node) is not running: a warning, not an error.
    let l = line(&r, "warn", "farm", "node1 (127.0.0.1:");
    assert!(l.contains(", this node) does not answer /healthz") && l.contains("systemctl start bootfarm"), "{l}");
}
