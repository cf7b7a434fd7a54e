//! bootstorm's own checks: a small storm against a real bootfarm completes with zero failures
//! and writes parseable JSON; a server that corrupts one byte (a test double, here) is reported
//! as a corrupted boot, never as a success; an unreachable server ends in timeouts, bounded.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bootstorm-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> u16 {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

fn bootfarm_bin() -> PathBuf {
    // The workspace's bootfarm binary, built alongside this test.
    let me = std::env::current_exe().unwrap();
    let dir = me.parent().unwrap().parent().unwrap();
    let b = dir.join("bootfarm");
    if !b.exists() {
        let st = Command::new(env!("CARGO")).args(["build", "-q", "-p", "bootfarm", "--bin", "bootfarm"]).status().unwrap();
        assert!(st.success());
    }
    b
}

fn content(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + i / 7) as u8).collect()
}

#[test]
fn tiny_storm_against_bootfarm_completes_with_json() {
    let d = tmp("ok");
    std::fs::create_dir_all(d.join("boot")).unwrap();
    std::fs::write(d.join("boot/boot.bin"), content(200_000)).unwrap();
    let port = free_port();
    std::fs::write(
        d.join("bf.toml"),
        format!(
            "[server]\ntftp_port = {port}\nhttp_port = {}\nnbd_port = {}\n[tftp]\nroot = \"boot\"\nsessions_per_ip_max = 64\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let mut server = Command::new(bootfarm_bin())
        .args(["serve", "--config", d.join("bf.toml").to_str().unwrap(), "--log", "warn", "--iscsi-port", "0"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let json = d.join("out.json");
    let html = d.join("report.html");
    let out = Command::new(env!("CARGO_BIN_EXE_bootstorm"))
        .args([
            "tftp",
            "--server",
            &format!("127.0.0.1:{port}"),
            "--file",
            "boot.bin",
            "--expect",
            d.join("boot/boot.bin").to_str().unwrap(),
        ])
        .args([
            "--targets",
            "20",
            "--blksize",
            "1432",
            "--loss",
            "0.02",
            "--dup",
            "0.02",
            "--reorder",
            "0.02",
            "--duration-max-s",
            "60",
            "--json",
            json.to_str().unwrap(),
        ])
        .args(["--html", html.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("20 completed, 0 failed"), "{text}");
    let j = std::fs::read_to_string(&json).unwrap();
    // The JSON parses (Python's parser: an independent check) and says the same.
    let check = Command::new("python3")
        .args(["-c", "import json,sys; d=json.load(open(sys.argv[1])); p=d['phases'][0]; assert p['completed']==20 and p['failed']==0 and p['ms']['p99']>0, p", json.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(check.success(), "{j}");
    // The HTML report: self-contained, both plots present and well-formed SVG (XML parser).
    let h = std::fs::read_to_string(&html).unwrap();
    assert!(h.starts_with("<!doctype html>") && h.trim_end().ends_with("</html>"), "{h}");
    assert!(!h.contains("<script") && !h.contains("src="), "no scripts, nothing fetched");
    assert!(h.contains("Completed over time") && h.contains("Time to complete") && h.contains("<td>20</td>"), "{h}");
    let svg_ok = Command::new("python3")
        .args(["-c", "import re,sys,xml.etree.ElementTree as E; t=open(sys.argv[1]).read(); s=re.findall(r'<svg.*?</svg>', t, re.S); assert len(s)==2; [E.fromstring(x) for x in s]", html.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(svg_ok.success(), "plots are well-formed SVG");
    let _ = std::fs::remove_dir_all(&d);
}

/// A minimal RFC 1350 server that flips one byte of block 2.
fn corrupting_server(sock: UdpSocket, data: Vec<u8>) {
    let mut b = [0u8; 1500];
    let (_, client) = sock.recv_from(&mut b).unwrap();
    let tid = UdpSocket::bind("127.0.0.1:0").unwrap();
    tid.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    for (i, chunk) in data.chunks(512).chain(std::iter::once(&[][..])).enumerate() {
        if i > 0 && !data.len().is_multiple_of(512) && i == data.len().div_ceil(512) {
            break;
        }
        let block = (i + 1) as u16;
        let mut p = vec![0, 3];
        p.extend_from_slice(&block.to_be_bytes());
        p.extend_from_slice(chunk);
        if block == 2 {
            p[4 + 100] ^= 0x01;
        }
        tid.send_to(&p, client).unwrap();
        if tid.recv_from(&mut b).is_err() {
            return;
        }
    }
}

#[test]
fn a_corrupted_byte_is_reported_as_a_corrupted_boot() {
    let d = tmp("corrupt");
    let data = content(5000);
    std::fs::write(d.join("f.bin"), &data).unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    let t = std::thread::spawn(move || corrupting_server(sock, data));
    let out = Command::new(env!("CARGO_BIN_EXE_bootstorm"))
        .args([
            "tftp",
            "--server",
            &format!("127.0.0.1:{port}"),
            "--file",
            "f.bin",
            "--expect",
            d.join("f.bin").to_str().unwrap(),
            "--targets",
            "1",
            "--no-tsize",
            "--duration-max-s",
            "20",
        ])
        .output()
        .unwrap();
    t.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a corrupted boot is a failed run: {text}");
    assert!(text.contains("0 completed, 1 failed") && text.contains("corrupted"), "{text}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn an_unreachable_server_ends_in_bounded_timeouts() {
    let d = tmp("silent");
    std::fs::write(d.join("f.bin"), b"x").unwrap();
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap(); // never answers
    let port = silent.local_addr().unwrap().port();
    let t0 = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_bootstorm"))
        .args([
            "tftp",
            "--server",
            &format!("127.0.0.1:{port}"),
            "--file",
            "f.bin",
            "--expect",
            d.join("f.bin").to_str().unwrap(),
            "--targets",
            "3",
            "--timeout-ms",
            "100",
            "--retries",
            "2",
        ])
        .output()
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3 failed") && text.contains("timed out"), "{text}");
    let _ = std::fs::remove_dir_all(&d);
}

/// A bootfarm serving `boot/boot.bin` and a VHDX vdisk "disk" made by qemu-img from `content`.
/// A bootfarm with a VHDX vdisk, steering flows by CPU (bootstorm pins its engine threads, so
/// every boot through this fixture runs that way; the tiny storm keeps the hash).
fn boot_fixture(tag: &str) -> (PathBuf, std::process::Child, u16, u16, u16) {
    let d = tmp(tag);
    std::fs::create_dir_all(d.join("boot")).unwrap();
    std::fs::write(d.join("boot/boot.bin"), content(300_000)).unwrap();
    std::fs::write(d.join("disk.raw"), content(16 << 20)).unwrap();
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vhdx", "-o", "block_size=1M"])
        .args([d.join("disk.raw"), d.join("disk.vhdx")])
        .status()
        .unwrap();
    assert!(st.success());
    let (tftp, http, nbd) = (free_port(), free_port(), free_port());
    std::fs::write(
        d.join("bf.toml"),
        format!(
            "[server]\ntftp_port = {tftp}\nhttp_port = {http}\nnbd_port = {nbd}\nsteer = \"cpu\"\n[tftp]\nroot = \"boot\"\nsessions_per_ip_max = 64\n[nbd]\ncache_dir = \"cache\"\nconnections_per_ip_max = 1024\n[[vdisk]]\nname = \"disk\"\npath = \"disk.vhdx\"\n"
        ),
    )
    .unwrap();
    let server = Command::new(bootfarm_bin())
        .args(["serve", "--config", d.join("bf.toml").to_str().unwrap(), "--log", "warn", "--iscsi-port", "0"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    (d, server, tftp, http, nbd)
}

fn bootstorm(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bootstorm")).args(args).output().unwrap();
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn whole_boots_over_tftp_and_nbd_and_over_http_with_the_ipxe_list() {
    let (d, mut server, tftp, http, nbd) = boot_fixture("boot");
    let (json, html) = (d.join("boot.json"), d.join("boot.html"));
    let (boot, img) = (d.join("boot/boot.bin"), d.join("disk.vhdx"));
    let common = ["--file", "boot.bin", "--expect", boot.to_str().unwrap(), "--vdisk", "disk", "--image", img.to_str().unwrap()];
    let (code, text) = bootstorm(
        &[
            &["boot", "--tftp", &format!("127.0.0.1:{tftp}"), "--nbd", &format!("127.0.0.1:{nbd}"), "--blksize", "1432", "--loss", "0.01"]
                [..],
            &common,
            &[
                "--targets",
                "20",
                "--scale",
                "0.01",
                "--arrival",
                "ramp:0.5",
                "--json",
                json.to_str().unwrap(),
                "--html",
                html.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("phase boot: 20 completed, 0 failed") && text.contains("phase vdisk: 20 completed"), "{text}");
    let check = Command::new("python3")
        .args([
            "-c",
            "import json,sys; d=json.load(open(sys.argv[1])); ph={p['phase']: p for p in d['phases']}; \
             assert set(ph)=={'bootstrap','vdisk','boot'}, ph.keys(); \
             assert all(p['completed']==20 and p['failed']==0 for p in ph.values()), ph; \
             assert ph['vdisk']['bytes']>20*5e6 and d['boots_per_second']>0",
            json.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(check.success());
    let h = std::fs::read_to_string(&html).unwrap();
    assert!(h.contains("phase vdisk") && h.contains("phase bootstrap") && h.matches("<svg").count() == 6, "three phases, two plots each");
    // HTTP all the way: bootstrap from /boot, the /ipxe list, vdisk ranges.
    let (code, text) = bootstorm(
        &[
            &["boot", "--http", &format!("127.0.0.1:{http}"), "--bootstrap", "http", "--ipxe", "--disk", "http"][..],
            &common,
            &["--targets", "10", "--scale", "0.01"],
        ]
        .concat(),
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("phase boot: 10 completed, 0 failed") && text.contains("phase ipxe: 10 completed"), "{text}");
    // A dead first server in the list: every target fails over to the next and boots.
    let dead = free_port();
    let (code, text) = bootstorm(
        &[
            &["boot", "--bootstrap", "none", "--nbd", &format!("127.0.0.1:{dead},127.0.0.1:{nbd}")][..],
            &common[4..],
            &["--targets", "5", "--scale", "0.005"],
        ]
        .concat(),
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("failovers 5"), "{text}");
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&d);
}

/// A fixed-newstyle NBD server (test double) that serves `data` with one byte flipped at
/// `flip`, one connection, simple replies.
fn corrupting_nbd(l: std::net::TcpListener, data: Vec<u8>, flip: usize) {
    nbd_double(l, data, Some(flip), usize::MAX, false)
}

/// The same double, optionally exact; after `replies` it drops the connection, or with `hang`
/// holds it open without answering (a hung server).
fn nbd_double(l: std::net::TcpListener, mut data: Vec<u8>, flip: Option<usize>, replies: usize, hang: bool) {
    use std::io::{Read, Write};
    let (mut s, _) = l.accept().unwrap();
    s.write_all(b"NBDMAGICIHAVEOPT\x00\x03").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    let mut p = vec![0u8; u32::from_be_bytes(h[12..16].try_into().unwrap()) as usize];
    s.read_exact(&mut p).unwrap();
    let mut info = 0u16.to_be_bytes().to_vec();
    info.extend_from_slice(&(data.len() as u64).to_be_bytes());
    info.extend_from_slice(&1u16.to_be_bytes());
    for (kind, d) in [(3u32, info), (1u32, vec![])] {
        s.write_all(&0x0003_e889_0455_65a9u64.to_be_bytes()).unwrap();
        s.write_all(&7u32.to_be_bytes()).unwrap();
        s.write_all(&kind.to_be_bytes()).unwrap();
        s.write_all(&(d.len() as u32).to_be_bytes()).unwrap();
        s.write_all(&d).unwrap();
    }
    let mut r = [0u8; 28];
    let mut answered = 0;
    while answered < replies && s.read_exact(&mut r).is_ok() {
        answered += 1;
        let off = u64::from_be_bytes(r[16..24].try_into().unwrap()) as usize;
        let len = u32::from_be_bytes(r[24..28].try_into().unwrap()) as usize;
        let mut out = 0x6744_6698u32.to_be_bytes().to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&r[8..16]);
        if u16::from_be_bytes([r[6], r[7]]) == 1 {
            // A WRITE: kept in this server's own copy (its "write cache"), answered without data.
            if s.read_exact(&mut data[off..off + len]).is_err() || s.write_all(&out).is_err() {
                return;
            }
            continue;
        }
        let mut d = data[off..off + len].to_vec();
        if let Some(flip) = flip.filter(|f| (off..off + len).contains(f)) {
            d[flip - off] ^= 0x40;
        }
        out.extend_from_slice(&d);
        if s.write_all(&out).is_err() {
            return;
        }
    }
    if hang {
        std::thread::sleep(Duration::from_secs(3));
    }
}

#[test]
fn a_vdisk_byte_flipped_by_the_server_is_a_corrupted_boot() {
    let (d, data) = trace_fixture("nbd-corrupt", 0);
    std::fs::write(d.join("trace.csv"), "offset,length,op\n0,65536,r\n524288,65536,r\n65536,4096,r\n").unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || corrupting_nbd(l, data, 524_288 + 777));
    let (code, text) = trace_boot(&d, "trace.csv", &format!("127.0.0.1:{port}"), &[]);
    t.join().unwrap();
    assert_eq!(code, Some(1), "a corrupted boot fails the run: {text}");
    assert!(text.contains("phase vdisk: 0 completed, 1 failed") && text.contains("1 corrupted"), "{text}");
    // A trace that is not 4 KiB aligned is refused up front with its line.
    std::fs::write(d.join("bad.csv"), "100,4096,r\n").unwrap();
    let (code, text) = trace_boot(&d, "bad.csv", "127.0.0.1:9", &[]);
    assert_eq!(code, Some(2));
    assert!(text.contains("bad.csv:1") && text.contains("multiples of 4096"), "{text}");
    let _ = std::fs::remove_dir_all(&d);
}

/// A folder with a 1 MiB `disk.raw` and a trace of `reads` 16 KiB reads, 64 KiB apart.
fn trace_fixture(tag: &str, reads: u64) -> (PathBuf, Vec<u8>) {
    let d = tmp(tag);
    let data = content(1 << 20);
    std::fs::write(d.join("disk.raw"), &data).unwrap();
    std::fs::write(d.join("trace.csv"), (0..reads).map(|i| format!("{},16384,r\n", i * 65536)).collect::<String>()).unwrap();
    (d, data)
}

/// One target replaying `trace` (in `d`) over NBD from `nbd` (a failover list), every read
/// checked against `d/disk.raw`.
fn trace_boot(d: &std::path::Path, trace: &str, nbd: &str, extra: &[&str]) -> (Option<i32>, String) {
    let (img, tr) = (d.join("disk.raw"), d.join(trace));
    let args = ["boot", "--bootstrap", "none", "--nbd", nbd, "--vdisk", "disk", "--image", img.to_str().unwrap()];
    bootstorm(&[&args[..], &["--trace", tr.to_str().unwrap(), "--targets", "1"], extra].concat())
}

/// Two NBD doubles serving `data`: the first answers `replies` requests, then drops the
/// connection or (`hang`) goes silent; the second serves everything. Returns "a,b" and the
/// threads.
fn failing_pair(data: Vec<u8>, replies: usize, hang: bool) -> (String, [std::thread::JoinHandle<()>; 2]) {
    let (a, b) = (std::net::TcpListener::bind("127.0.0.1:0").unwrap(), std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let list = format!("127.0.0.1:{},127.0.0.1:{}", a.local_addr().unwrap().port(), b.local_addr().unwrap().port());
    let da = data.clone();
    let ta = std::thread::spawn(move || nbd_double(a, da, None, replies, hang));
    let tb = std::thread::spawn(move || nbd_double(b, data, None, usize::MAX, false));
    (list, [ta, tb])
}

#[test]
fn a_server_lost_mid_trace_hands_the_target_to_the_next_one() {
    let (d, data) = trace_fixture("nbd-failover", 8);
    let (list, threads) = failing_pair(data, 3, false); // the first is gone after 3 replies
    let (code, text) = trace_boot(&d, "trace.csv", &list, &[]);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("phase boot: 1 completed, 0 failed") && text.contains("failovers 1"), "{text}");
    let _ = std::fs::remove_dir_all(&d);
}

/// A failover after writes: the writes stayed on the first server, so the boot is never a
/// success. Read back on the next server they differ ("corrupted"); not read back, the boot
/// still ends "writes lost", and the summary counts the blocks left behind.
#[test]
fn a_failover_that_loses_writes_is_never_a_success() {
    let (d, data) = trace_fixture("nbd-lost-writes", 0);
    // A write, its read-back (served by the first), a read; the first goes after 3 replies.
    let traces = [
        ("read-back.csv", "0,8192,w\n0,8192,r\n65536,4096,r\n0,4096,r\n", "1 corrupted"),
        ("no-read-back.csv", "0,8192,w\n0,8192,r\n65536,4096,r\n131072,4096,r\n", "1 writes lost"),
    ];
    for (name, trace, reason) in traces {
        std::fs::write(d.join(name), trace).unwrap();
        let (list, threads) = failing_pair(data.clone(), 3, false);
        let (code, text) = trace_boot(&d, name, &list, &[]);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(code, Some(1), "{name}: a boot that lost its writes fails the run: {text}");
        assert!(text.contains("phase vdisk: 0 completed, 1 failed") && text.contains(reason), "{name}: {text}");
        assert!(text.contains("failovers 1") && text.contains("2 written blocks left behind"), "{name}: {text}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_hung_server_is_given_up_after_the_timeout() {
    let (d, data) = trace_fixture("nbd-hang", 6);
    let (list, threads) = failing_pair(data, 2, true); // the first goes silent after 2 replies
    let t0 = std::time::Instant::now();
    let (code, text) = trace_boot(&d, "trace.csv", &list, &["--timeout-ms", "300"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("phase boot: 1 completed, 0 failed") && text.contains("failovers 1"), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(3), "given up after the timeout, not the server's 3 s");
    for t in threads {
        t.join().unwrap();
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// How an HTTP test double misbehaves.
#[derive(Clone, Copy)]
enum HttpFault {
    None,
    /// Answers this many ranges in all, then closes its connections and its listener.
    DropAfter(usize),
    /// Answers this many ranges, then holds the connection without answering.
    HangAfter(usize),
    /// Flips the byte at this disk offset.
    Flip(usize),
    /// Answers every /vdisk request with a 307 to this port (keeping the path).
    RedirectTo(u16),
    /// Closes each connection after this many ranges without saying so (an idle keep-alive
    /// connection closed by the server), but keeps accepting new ones.
    CloseEvery(usize),
    /// Answers ranges with a head of 20 KiB of headers (past bootstorm's 16 KiB).
    HugeHead,
    /// Announces a 300 MB body for a range (past bootstorm's 256 MiB).
    HugeBody,
}

/// An HTTP/1.1 double on `l`: `/ipxe` gives a script whose sanboot line lists `list`
/// (ports on 127.0.0.1), `/vdisk/…` answers single ranges of `data`, keep-alive, with `fault`.
fn http_double(l: std::net::TcpListener, data: std::sync::Arc<Vec<u8>>, list: Vec<u16>, fault: HttpFault) {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let served = std::sync::Arc::new(AtomicUsize::new(0));
    l.set_nonblocking(true).unwrap();
    let t0 = std::time::Instant::now();
    // Bounded: a double lives at most 10 s.
    while t0.elapsed() < Duration::from_secs(10) {
        let (s, _) = match l.accept() {
            Ok(c) => c,
            Err(_) => {
                if matches!(fault, HttpFault::DropAfter(n) if served.load(Ordering::Relaxed) >= n) {
                    return; // the listener goes with the server
                }
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        let (data, list, served) = (data.clone(), list.clone(), served.clone());
        std::thread::spawn(move || {
            s.set_nonblocking(false).unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let mut on_this = 0;
            loop {
                if matches!(fault, HttpFault::CloseEvery(k) if on_this == k) {
                    return;
                }
                on_this += 1;
                let mut first = String::new();
                if r.read_line(&mut first).unwrap_or(0) == 0 {
                    return;
                }
                let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
                let mut range = None;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 {
                        return;
                    }
                    if h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.strip_prefix("Range: bytes=") {
                        let (a, b) = v.trim().split_once('-').unwrap();
                        range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()));
                    }
                }
                if path.starts_with("/ipxe") {
                    let uris: Vec<String> = list.iter().map(|p| format!("http://127.0.0.1:{p}/vdisk/disk")).collect();
                    let body = format!("#!ipxe\nsanboot {}\n", uris.join(" "));
                    let _ = write!(w, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                    continue;
                }
                if let HttpFault::HugeHead = fault {
                    let _ = write!(w, "HTTP/1.1 206 Partial Content\r\nX-Pad: {}\r\nContent-Length: 1\r\n\r\nx", "p".repeat(20 << 10));
                    continue;
                }
                if let HttpFault::HugeBody = fault {
                    let _ = write!(w, "HTTP/1.1 206 Partial Content\r\nContent-Length: 300000000\r\n\r\n");
                    continue;
                }
                if let HttpFault::RedirectTo(p) = fault {
                    let _ =
                        write!(w, "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{p}{path}\r\nContent-Length: 0\r\n\r\n");
                    continue;
                }
                let n = served.fetch_add(1, Ordering::Relaxed);
                match fault {
                    HttpFault::DropAfter(k) if n >= k => return,
                    HttpFault::HangAfter(k) if n >= k => {
                        std::thread::sleep(Duration::from_secs(3));
                        return;
                    }
                    _ => {}
                }
                let (a, b) = range.unwrap();
                let mut body = data[a..=b].to_vec();
                if let HttpFault::Flip(f) = fault {
                    if (a..=b).contains(&f) {
                        body[f - a] ^= 0x40;
                    }
                }
                let head = format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{}\r\nContent-Length: {}\r\n\r\n",
                    data.len(),
                    body.len()
                );
                if w.write_all(head.as_bytes()).and_then(|_| w.write_all(&body)).is_err() {
                    return;
                }
            }
        });
    }
}

/// One target: the /ipxe list from the first double, then the trace over HTTP ranges down that
/// list. `faults[i]` is the i-th double's.
fn http_trace_boot(tag: &str, reads: u64, faults: &[HttpFault], extra: &[&str]) -> (Option<i32>, String) {
    let (d, data) = trace_fixture(tag, reads);
    let data = std::sync::Arc::new(data);
    let ls: Vec<std::net::TcpListener> = faults.iter().map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let ports: Vec<u16> = ls.iter().map(|l| l.local_addr().unwrap().port()).collect();
    let faults: Vec<HttpFault> =
        faults.iter().map(|f| if let HttpFault::RedirectTo(i) = f { HttpFault::RedirectTo(ports[*i as usize]) } else { *f }).collect();
    for (l, f) in ls.into_iter().zip(faults) {
        let (data, list) = (data.clone(), ports.clone());
        std::thread::spawn(move || http_double(l, data, list, f));
    }
    let (img, tr) = (d.join("disk.raw"), d.join("trace.csv"));
    let http = format!("127.0.0.1:{}", ports[0]);
    let args = ["boot", "--bootstrap", "none", "--http", &http, "--ipxe", "--disk", "http", "--vdisk", "disk"];
    let r = bootstorm(&[&args[..], &["--image", img.to_str().unwrap(), "--trace", tr.to_str().unwrap(), "--targets", "1"], extra].concat());
    let _ = std::fs::remove_dir_all(&d);
    r
}

#[test]
fn http_ranges_fail_over_follow_redirects_and_catch_a_flipped_byte() {
    use HttpFault::*;
    // The first server is gone after 3 ranges: the rest come from the second.
    let (code, text) = http_trace_boot("http-drop", 8, &[DropAfter(3), None], &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("phase boot: 1 completed, 0 failed") && text.contains("failovers 1"), "{text}");
    // The first goes silent after 2: given up after the timeout, not after the double's 3 s.
    let t0 = std::time::Instant::now();
    let (code, text) = http_trace_boot("http-hang", 6, &[HangAfter(2), None], &["--timeout-ms", "300"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("failovers 1") && t0.elapsed() < Duration::from_secs(3), "{text}");
    // Every range redirected from the first to the second (as a farm does): no failover.
    let (code, text) = http_trace_boot("http-307", 5, &[RedirectTo(1), None], &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("phase vdisk: 1 completed, 0 failed") && text.contains("failovers 0"), "{text}");
    // A server that closes its keep-alive connections every 2 ranges: the request is retried on
    // a new connection to the same server, not counted as a failover.
    let (code, text) = http_trace_boot("http-close", 7, &[CloseEvery(2), DropAfter(0)], &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("phase vdisk: 1 completed, 0 failed") && text.contains("failovers 0"), "{text}");
    // The limits on answers: a redirect loop (a server sending every range to itself), a head
    // past 16 KiB and a body past 256 MiB each end the boot with their reason, no failover.
    for (tag, fault, why) in [
        ("http-loop", RedirectTo(0), "redirect loop"),
        ("http-head", HugeHead, "response head too large"),
        ("http-body", HugeBody, "body too large"),
    ] {
        let (code, text) = http_trace_boot(tag, 2, &[fault, None], &[]);
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains("phase vdisk: 0 completed, 1 failed") && text.contains(&format!("1 {why}")), "{tag}: {text}");
    }
    // One byte flipped in the 5th range: corrupted, never booted.
    let (code, text) = http_trace_boot("http-flip", 8, &[Flip(4 * 65536 + 99), None], &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("phase vdisk: 0 completed, 1 failed") && text.contains("1 corrupted"), "{text}");
}

#[test]
fn a_server_hung_in_the_nbd_handshake_is_given_up_after_the_timeout() {
    let (d, data) = trace_fixture("nbd-hang-handshake", 4);
    // The first server accepts and never greets; the second is a working double.
    let (a, b) = (std::net::TcpListener::bind("127.0.0.1:0").unwrap(), std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let list = format!("127.0.0.1:{},127.0.0.1:{}", a.local_addr().unwrap().port(), b.local_addr().unwrap().port());
    let ta = std::thread::spawn(move || {
        let held = a.accept();
        std::thread::sleep(Duration::from_secs(3));
        drop(held);
    });
    let tb = std::thread::spawn(move || nbd_double(b, data, None, usize::MAX, false));
    let t0 = std::time::Instant::now();
    let (code, text) = trace_boot(&d, "trace.csv", &list, &["--timeout-ms", "300"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("phase boot: 1 completed, 0 failed") && text.contains("failovers 1"), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(3), "given up after the timeout, not the server's 3 s");
    tb.join().unwrap();
    ta.join().unwrap();
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_low_soft_open_file_limit_is_raised_for_the_storm() {
    use std::os::unix::process::CommandExt;
    let (d, mut server, tftp, http, _) = boot_fixture("nofile");
    let boot = d.join("boot/boot.bin");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bootstorm"));
    cmd.args(["boot", "--tftp", &format!("127.0.0.1:{tftp}"), "--file", "boot.bin", "--expect", boot.to_str().unwrap()]).args([
        "--blksize",
        "1432",
        "--disk",
        "none",
        "--targets",
        "120",
        "--concurrency",
        "30",
    ]);
    // 30 targets in flight need more than 20 descriptors; the hard limit stays as it is. (The
    // server allows 64 transfers per client: 30 running plus 30 whose final ACK it has not
    // read yet stay under it.)
    // Safety: only setrlimit between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
            r.rlim_cur = 20;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // Every target sent its final ACK: the server saw 120 transfers complete, none time out.
    let metrics = http_get_text(http, "/metrics");
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("phase boot: 120 completed, 0 failed") && !text.contains("open-file limit"), "{text}");
    assert!(metrics.contains("bootfarm_tftp_transfers_completed_total 120\n"), "{metrics}");
    assert!(metrics.contains("bootfarm_tftp_transfers_failed_total{reason=\"timeout\"} 0\n"), "{metrics}");
    let _ = std::fs::remove_dir_all(&d);
}

/// The body of a plain GET on 127.0.0.1:`port` (the connection closes after it).
fn http_get_text(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut t = String::new();
    s.read_to_string(&mut t).unwrap();
    t
}

/// An NBD server that greets, takes the client's NBD_OPT_GO and answers it with `reply`
/// (an option reply type) carrying `len` bytes (announced; as many sent as fit a buffer).
fn nbd_option_double(l: std::net::TcpListener, reply: u32, len: u32) {
    use std::io::{Read, Write};
    let (mut s, _) = l.accept().unwrap();
    s.write_all(b"NBDMAGICIHAVEOPT\x00\x03").unwrap();
    let mut b = [0u8; 20];
    s.read_exact(&mut b).unwrap();
    let mut rest = vec![0u8; u32::from_be_bytes(b[16..20].try_into().unwrap()) as usize];
    s.read_exact(&mut rest).unwrap();
    let mut out = 0x0003_e889_0455_65a9u64.to_be_bytes().to_vec();
    out.extend_from_slice(&7u32.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.resize(out.len() + (len as usize).min(4096), 0);
    let _ = s.write_all(&out);
    std::thread::sleep(Duration::from_millis(500));
}

#[test]
fn nbd_handshake_refusals_end_the_boot_with_their_reason() {
    let (d, _) = trace_fixture("nbd-opt", 2);
    // An error reply (NBD_REP_ERR_UNKNOWN) to GO, then an option reply far past 64 KiB.
    for (reply, len, why) in [(0x8000_0006u32, 0u32, "export refused"), (3, 1 << 30, "bad option reply")] {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || nbd_option_double(l, reply, len));
        let (code, text) = trace_boot(&d, "trace.csv", &format!("127.0.0.1:{port}"), &[]);
        t.join().unwrap();
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains("phase vdisk: 0 completed, 1 failed") && text.contains(&format!("1 {why}")), "{why}: {text}");
    }
    let _ = std::fs::remove_dir_all(&d);
}
