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
    let mut server =
        Command::new(bootfarm_bin()).args(["serve", "--config", d.join("bf.toml").to_str().unwrap(), "--log", "warn"]).spawn().unwrap();
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
        if i > 0 && data.len() % 512 != 0 && i == data.len().div_ceil(512) {
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
