//! Hot reload: readers never see a half-built snapshot while thousands are swapped in; an
//! invalid file is refused and the last good snapshot keeps serving; the running binary reloads
//! on file change and on SIGHUP and exits 0 on SIGTERM.

mod common;
use bootfarm::config::{self, Overrides, Store};
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn store_dir(dir: &TempDir) {
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    let v = dir.join("a.vhdx");
    assert!(bootfarm(&["vdisk", "create", v.to_str().unwrap(), "--size", "8M", "--block-size", "1M"]).status.success());
}

/// A config whose every part encodes `n`, so a reader can tell a mixed snapshot.
fn text(n: u64) -> String {
    format!(
        "[server]\nname = \"n{n}\"\ntftp_port = 6969\nhttp_port = 18080\nnbd_port = 20809\n[tftp]\nroot = \"boot\"\nblksize_max = {}\n[[vdisk]]\nname = \"v{n}\"\npath = \"a.vhdx\"\n[[farm.server]]\nname = \"n{n}\"\naddress = \"127.0.0.1\"\npower = {}.0\n",
        512 + n % 1000,
        1 + n % 7
    )
}

#[test]
fn readers_never_see_a_mixed_snapshot_across_thousands_of_swaps() {
    let dir = TempDir::new("reload-stress");
    store_dir(&dir);
    let file = dir.join("bootfarm.toml");
    let parse = |n: u64, prev: Option<&config::Snapshot>| config::build(&file, &dir.0, toml::from_str(&text(n)).unwrap(), n, prev).unwrap();
    let store = Arc::new(Store::new(parse(1, None)));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut reads, mut last) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let s = store.load();
                    let n = s.generation;
                    assert!(n >= last, "generation went back from {last} to {n}");
                    last = n;
                    assert_eq!(s.config.server.name, format!("n{n}"));
                    assert_eq!(s.config.tftp.blksize_max as u64, 512 + n % 1000);
                    assert_eq!(s.vdisks.len(), 1);
                    assert_eq!(s.vdisks[0].name, format!("v{n}"));
                    assert_eq!(s.farm[0].power, (1 + n % 7) as f64);
                    assert_eq!(s.farm[0].name, format!("n{n}"));
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let swaps = 3000;
    for n in 2..2 + swaps {
        let prev = store.load();
        store.publish(parse(n, Some(&prev)));
    }
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert_eq!(store.load().generation, 1 + swaps);
    assert!(reads > 0);
    // The image was mapped once and reused by every later snapshot (nothing changed on disk).
    let a = store.load();
    let b = parse(99_999, Some(&a));
    assert!(Arc::ptr_eq(&a.vdisks[0], &b.vdisks[0]) || a.vdisks[0].name != b.vdisks[0].name);
}

#[test]
fn invalid_file_keeps_the_last_good_snapshot() {
    let dir = TempDir::new("reload-invalid");
    store_dir(&dir);
    let file = dir.join("bootfarm.toml");
    std::fs::write(&file, text(1)).unwrap();
    let store = Store::new(config::load(&file, &Overrides::default(), 1, None).unwrap());
    std::fs::write(&file, text(2)).unwrap();
    let g = store.reload(&file, &Overrides::default()).unwrap();
    assert_eq!(store.load().config.server.name, "n2");
    std::fs::write(&file, text(3).replace("blksize_max", "blksize_mx")).unwrap();
    let e = store.reload(&file, &Overrides::default()).unwrap_err();
    assert!(e.to_string().contains("unknown field `blksize_mx`"), "{e}");
    assert_eq!(store.load().generation, g, "the refused file must not replace the snapshot");
    assert_eq!(store.load().config.server.name, "n2");
    std::fs::write(&file, text(4)).unwrap();
    let o = Overrides { http_port: Some(18181), ..Overrides::default() };
    store.reload(&file, &o).unwrap();
    assert_eq!(store.load().config.server.name, "n4");
    assert_eq!(store.load().config.server.http_port, 18181, "command-line overrides survive reloads");
}

#[test]
fn running_server_reloads_on_change_and_sighup_and_exits_on_sigterm() {
    let dir = TempDir::new("reload-live");
    store_dir(&dir);
    let file = dir.join("bootfarm.toml");
    std::fs::write(&file, text(1)).unwrap();
    // Every port its own: tests run at once, and bootfarm refuses a port another server holds.
    let (tftp, http, nbd) = (free_port().to_string(), free_port().to_string(), free_port().to_string());
    let mut s = Server::start(&["--config", file.to_str().unwrap(), "--tftp-port", &tftp, "--http-port", &http, "--nbd-port", &nbd]);
    s.wait_for("vdisk ready");
    std::thread::sleep(Duration::from_millis(50));
    std::fs::write(&file, text(2)).unwrap();
    let l = s.wait_for("generation=2 why=\"file changed\"");
    assert!(l.contains("configuration loaded"), "{l}");
    std::fs::write(&file, "[server\n").unwrap();
    let l = s.wait_for("configuration refused");
    assert!(l.contains("generation 2 keeps serving") && l.contains("bootfarm.toml"), "{l}");
    std::fs::write(&file, text(3)).unwrap();
    s.wait_for("generation=3 why=\"file changed\""); // the refused file took no number
    s.signal(1); // SIGHUP
    let l = s.wait_for("why=\"SIGHUP\"");
    assert!(l.contains("configuration loaded") && l.contains("generation=4"), "{l}");
    s.signal(15); // SIGTERM
    let status = s.child.wait().unwrap();
    assert!(status.success(), "SIGTERM must end in exit 0, got {status:?}");
}

#[test]
fn open_file_limit_is_raised_to_the_hard_limit_and_checked() {
    let dir = TempDir::new("nofile");
    store_dir(&dir);
    let file = dir.join("bootfarm.toml");
    std::fs::write(&file, text(1)).unwrap();
    let start = |limits: &str| {
        std::process::Command::new("prlimit")
            .args([&format!("--nofile={limits}"), "--"])
            .arg(bin())
            .args(["serve", "--config", file.to_str().unwrap(), "--log", "info", "--iscsi-port", "0"])
            .args([
                "--tftp-port",
                &free_port().to_string(),
                "--http-port",
                &free_port().to_string(),
                "--nbd-port",
                &free_port().to_string(),
            ])
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // Soft 256, hard 20000 (the most this test may set on some CI hosts): raised to 20000.
    let c = start("256:20000");
    std::thread::sleep(Duration::from_millis(700));
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let out = c.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("open_files=20000"), "raised to the hard limit: {log}");
    // Hard 512: cannot be raised enough, so a warning says what to do.
    let c = start("256:512");
    std::thread::sleep(Duration::from_millis(700));
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let out = c.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("open_files=512") && log.contains("LimitNOFILE"), "{log}");
}

#[test]
fn out_of_descriptors_pauses_accepting_and_recovers() {
    use std::io::{Read, Write};
    let dir = TempDir::new("emfile");
    store_dir(&dir);
    let file = dir.join("bootfarm.toml");
    let http = free_port();
    std::fs::write(&file, text(1).replace("http_port = 18080", &format!("http_port = {http}"))).unwrap();
    // A hard limit of 48 descriptors: the server runs, but cannot accept 100 connections.
    let mut child = std::process::Command::new("prlimit")
        .args(["--nofile=48:48", "--"])
        .arg(bin())
        .args([
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--tftp-port",
            &free_port().to_string(),
            "--workers",
            "1",
            "--log",
            "warn",
            "--iscsi-port",
            "0",
        ])
        .args(["--nbd-port", &free_port().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let held: Vec<std::net::TcpStream> = (0..100).filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", http)).ok()).collect();
    std::thread::sleep(Duration::from_millis(500));
    drop(held);
    std::thread::sleep(Duration::from_millis(400));
    // Accepting resumed: a fresh request is answered, and the failures were counted.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    let _ = child.kill();
    let _ = child.wait();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let n: u64 =
        body.lines().find_map(|l| l.strip_prefix("bootfarm_http_accept_errors_total ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    assert!(n > 0, "accept failures are counted:\n{body}");
}

/// `text(n)` without its `[[vdisk]]` table.
fn without_vdisk(n: u64) -> String {
    let t = text(n);
    let (a, b) = t.split_once("[[vdisk]]").unwrap();
    let (_, rest) = b.split_once("[[farm.server]]").unwrap();
    format!("{a}[[farm.server]]{rest}")
}

#[test]
fn a_reload_that_drops_every_vdisk_or_a_table_is_refused() {
    let dir = TempDir::new("reload-rules");
    store_dir(&dir);
    let file = dir.join("bootfarm.toml");
    let o = Overrides::default();
    std::fs::write(&file, text(1)).unwrap();
    let store = Store::new(config::load(&file, &o, 1, None).unwrap());
    // No vdisk left: refused, the running one keeps its vdisk.
    std::fs::write(&file, without_vdisk(2)).unwrap();
    let e = store.reload(&file, &o).unwrap_err().to_string();
    assert!(e.contains("no [[vdisk]]") && e.contains("reload_allow_no_vdisks"), "{e}");
    assert_eq!((store.load().generation, store.load().vdisks.len()), (1, 1));
    // A file cut short (the farm table is gone): refused, naming the table.
    let t = text(3);
    std::fs::write(&file, &t[..t.find("[[farm.server]]").unwrap()]).unwrap();
    let e = store.reload(&file, &o).unwrap_err().to_string();
    assert!(e.contains("farm = missing") && e.contains("[farm] table"), "{e}");
    // An empty [farm] says "defaults" on purpose: taken.
    std::fs::write(&file, format!("{}[farm]\n", &t[..t.find("[[farm.server]]").unwrap()])).unwrap();
    store.reload(&file, &o).unwrap();
    assert_eq!(store.load().farm.len(), 1);
    // An empty tftp.root would serve the configuration's own folder: refused, always.
    std::fs::write(&file, text(4).replace("root = \"boot\"", "root = \"\"")).unwrap();
    let e = store.reload(&file, &o).unwrap_err().to_string();
    assert!(e.contains("tftp.root") && e.contains("is empty"), "{e}");
    // The explicit way to remove every vdisk.
    std::fs::write(&file, without_vdisk(5).replace("[server]\n", "[server]\nreload_allow_no_vdisks = true\n")).unwrap();
    store.reload(&file, &o).unwrap();
    assert!(store.load().vdisks.is_empty());
    // And a restart takes a file without vdisks as it is.
    std::fs::write(&file, without_vdisk(6)).unwrap();
    assert!(config::load(&file, &o, 1, None).unwrap().vdisks.is_empty());
}

/// The running binary: a file written in two steps with SIGHUP between is read only once it
/// stood still (the whole file, no refusal); a half-written file that did stand still is
/// refused and the complete one then taken; a file without vdisks is refused via the watcher
/// and via SIGHUP.
#[test]
fn half_written_and_vdiskless_files_are_refused_on_sighup_and_change() {
    let dir = TempDir::new("reload-half");
    store_dir(&dir);
    let file = dir.join("bootfarm.toml");
    let debounced = |t: String| t.replace("[server]\n", "[server]\nreload_debounce_ms = 1000\n");
    std::fs::write(&file, debounced(text(1))).unwrap();
    let (tftp, http, nbd) = (free_port().to_string(), free_port().to_string(), free_port().to_string());
    let s = Server::start(&["--config", file.to_str().unwrap(), "--tftp-port", &tftp, "--http-port", &http, "--nbd-port", &nbd]);
    s.wait_for("vdisk ready");
    let half = |n: u64| {
        let t = debounced(text(n));
        let cut = t.find("[[vdisk]]").unwrap();
        (t[..cut].to_string(), t[cut..].to_string())
    };
    let append = |rest: &str| {
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(&file).unwrap().write_all(rest.as_bytes()).unwrap();
    };
    // 1. First half, SIGHUP, the rest 150 ms later (within the 1 s debounce): only the whole
    //    file is read.
    let (a, b) = half(2);
    std::fs::write(&file, &a).unwrap();
    s.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(150));
    append(&b);
    let l = s.wait_for("generation=2 why=\"SIGHUP\"");
    assert!(l.contains("configuration loaded"), "{l}");
    assert!(!s.log().contains("configuration refused"), "the half file was read:\n{}", s.log());
    // 2. First half, left standing, SIGHUP: refused (no vdisk: a half-written file); then
    //    the rest: taken by the watcher.
    let (a, b) = half(3);
    std::fs::write(&file, &a).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.signal(libc::SIGHUP);
    let l = s.wait_for("configuration refused");
    assert!(l.contains("why=\"SIGHUP\"") && l.contains("generation 2 keeps serving") && l.contains("half-written"), "{l}");
    append(&b);
    let l = s.wait_for("generation=3 why=\"file changed\"");
    assert!(l.contains("configuration loaded") && l.contains("vdisks=1"), "{l}");
    // 3. A complete file without vdisks: refused by the watcher, and by SIGHUP.
    let before = s.log().matches("configuration refused").count();
    std::fs::write(&file, debounced(without_vdisk(4))).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while s.log().matches("configuration refused").count() == before {
        assert!(std::time::Instant::now() < deadline, "no refusal:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = s.log();
    let l = log.lines().rfind(|l| l.contains("configuration refused")).unwrap();
    assert!(l.contains("why=\"file changed\"") && l.contains("no [[vdisk]]") && l.contains("generation 3 keeps serving"), "{l}");
    s.signal(libc::SIGHUP);
    while s.log().matches("configuration refused").count() == before + 1 {
        assert!(std::time::Instant::now() < deadline, "no refusal on SIGHUP:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = s.log();
    let l = log.lines().rfind(|l| l.contains("configuration refused")).unwrap();
    assert!(l.contains("why=\"SIGHUP\"") && l.contains("no [[vdisk]]"), "{l}");
    // Still serving the vdisk of generation 3.
    let r = std::process::Command::new("curl").args(["-sS", &format!("http://127.0.0.1:{http}/api/status")]).output().unwrap();
    let j = String::from_utf8_lossy(&r.stdout);
    assert!(j.contains("\"generation\": 3") && j.contains("\"name\": \"v3\""), "{j}");
}
