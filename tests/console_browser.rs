//! The console in a real browser (tests/console/browser.py: headless Chromium through
//! Selenium) on a 3-node farm on 127.0.0.1-3 while a bootstorm boots targets over NBD: three
//! servers up, the vdisk with its two versions identical everywhere, targets appearing and
//! finishing, a killed node shown down within the health window. It leaves its screenshot in
//! target/console.png (docs/console.png is one of those).

mod common;
use common::*;
use std::process::Command;

const DISK: usize = 8 << 20;

fn bootstorm_bin() -> std::path::PathBuf {
    let b = bin().with_file_name("bootstorm");
    if !b.exists() {
        let st = Command::new(env!("CARGO")).args(["build", "-q", "-p", "bootstorm"]).status().unwrap();
        assert!(st.success(), "cannot build bootstorm");
    }
    b
}

#[test]
fn a_person_sees_the_farm_its_targets_and_a_node_going_down() {
    let dir = TempDir::new("console-browser");
    // A two-version chain, copied to every node as files (replication is a file copy).
    let src = dir.join("src.raw");
    std::fs::write(&src, pattern(5, 0, DISK)).unwrap();
    let master = dir.join("master");
    std::fs::create_dir_all(&master).unwrap();
    let base = master.join("base.vhdx");
    qemu_img(&["convert", "-f", "raw", "-O", "vhdx", "-o", "block_size=1M", src.to_str().unwrap(), base.to_str().unwrap()]);
    let top = master.join("disk.avhdx");
    assert!(bootfarm(&["vdisk", "new-version", base.to_str().unwrap(), "-o", top.to_str().unwrap()]).status.success());
    let port = free_port();
    let nbd = free_port();
    let mut table = String::new();
    for i in 1..=3 {
        table.push_str(&format!("[[farm.server]]\nname = \"node{i}\"\naddress = \"127.0.0.{i}\"\npower = 1.0\n"));
    }
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let d = dir.join(&format!("node{i}"));
        std::fs::create_dir_all(d.join("boot")).unwrap();
        std::fs::copy(&base, d.join("base.vhdx")).unwrap();
        std::fs::copy(&top, d.join("disk.avhdx")).unwrap();
        let cfg = format!(
            "[server]\nname = \"node{i}\"\nlisten = \"127.0.0.{i}\"\ntftp_port = {port}\nhttp_port = {port}\nnbd_port = {nbd}\nworkers = 1\n[tftp]\nroot = \"boot\"\n[nbd]\ncache_dir = \"cache\"\n[[vdisk]]\nname = \"disk\"\npath = \"disk.avhdx\"\n[farm]\nhealth_interval_ms = 200\nhealth_timeout_ms = 200\nhealth_failures_max = 3\nhealth_successes_min = 1\n[console]\nevent_interval_ms = 500\n{table}"
        );
        std::fs::write(d.join("bootfarm.toml"), cfg).unwrap();
        nodes.push(Server::start(&["--config", d.join("bootfarm.toml").to_str().unwrap()]));
    }
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console.png");
    let page = Command::new("/usr/bin/python3")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/browser.py"))
        .arg(format!("http://127.0.0.1:{port}/"))
        .arg(nodes[2].child.id().to_string())
        .arg(&shot)
        // Targets boot over NBD from node1 and node2, a few at a time, so they come and go
        // while the page watches; the script starts it once the farm is on screen.
        .arg(bootstorm_bin())
        .args(["boot", "--bootstrap", "none", "--disk", "nbd", "--vdisk", "disk"])
        .args(["--nbd", &format!("127.0.0.1:{nbd},127.0.0.2:{nbd}")])
        .args(["--image", dir.join("node1/disk.avhdx").to_str().unwrap()])
        .args(["--targets", "24", "--concurrency", "4", "--arrival", "rate:2", "--scale", "0.05", "--duration-max-s", "120"])
        .env("CONSOLE_PROFILE", dir.join("chromium-profile"))
        .output()
        .expect("python3 with selenium (Debian python3-selenium), chromium, chromium-driver");
    let text = format!("{}{}", String::from_utf8_lossy(&page.stdout), String::from_utf8_lossy(&page.stderr));
    assert!(page.status.success() && text.contains("PASS"), "the browser's view:\n{text}\nnode1 log:\n{}", nodes[0].log());
    println!("{text}");
}
