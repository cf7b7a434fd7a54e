//! A real network boot: QEMU (TCG) with its iPXE NIC ROM gets, through QEMU's user-mode NAT,
//! a PXE network bootstrap program from bootfarm over TFTP and runs it; the program prints a
//! marker on COM1 and ends QEMU through isa-debug-exit (status 33).

mod common;
use common::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs QEMU until it exits or `limit` passes; returns (exit code, serial output).
pub fn boot_qemu(dir: &TempDir, bootfile: &str, limit: Duration) -> (Option<i32>, String) {
    let sercon = dir.join("sercon");
    std::fs::write(&sercon, [0xf8u8, 0x03]).unwrap(); // SeaBIOS: copy the text console to COM1
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "128", "-display", "none", "-vga", "none", "-nodefaults", "-monitor", "none", "-serial", "stdio"])
        .args(["-fw_cfg", &format!("name=etc/sercon-port,file={}", sercon.display())])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .args(["-netdev", &format!("user,id=n0,bootfile={bootfile}"), "-device", "e1000,netdev=n0", "-boot", "n"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 (Debian qemu-system-x86 + ipxe-qemu; .ci/run installs them)");
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let t0 = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (code, reader.join().unwrap())
}

#[test]
fn ipxe_boots_a_pxe_program_over_tftp() {
    let dir = TempDir::new("ipxe-tftp");
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    std::fs::write(dir.join("boot/bootsect.0"), bootfarm::demo::boot_sector()).unwrap();
    let (tftp, http, nbd) = (free_port(), free_port(), free_port());
    let cfg = format!("[server]\ntftp_port = {tftp}\nhttp_port = {http}\nnbd_port = {nbd}\n[tftp]\nroot = \"boot\"\n");
    std::fs::write(dir.join("bootfarm.toml"), cfg).unwrap();
    let server = Server::start(&["--config", dir.join("bootfarm.toml").to_str().unwrap()]);
    let (code, serial) = boot_qemu(&dir, &format!("tftp://10.0.2.2:{tftp}/bootsect.0"), Duration::from_secs(90));
    assert!(serial.contains(bootfarm::demo::BOOT_MARKER), "marker missing; serial output:\n{serial}");
    assert_eq!(code, Some(33), "the boot program ends QEMU through isa-debug-exit");
    // iPXE asked what DESIGN.md says it asks: blksize 1432 with tsize, and completed.
    let l = server.wait_for("tftp transfer started");
    assert!(l.contains("blksize=1432") && l.contains("bootsect.0"), "{l}");
    server.wait_for("outcome=\"completed\"");
}

#[test]
fn ipxe_sanboots_a_vhdx_chain_over_http() {
    // The demo store: a two-version VHDX chain whose boot sector prints the marker.
    let dir = TempDir::new("ipxe-http");
    let http = free_port();
    let mut c = bootfarm::demo::write_store(&dir.0, http).unwrap();
    c.server.tftp_port = free_port();
    c.server.nbd_port = free_port();
    let text = toml::to_string(&c).unwrap();
    std::fs::write(dir.join("bootfarm.toml"), text).unwrap();
    let server = Server::start(&["--config", dir.join("bootfarm.toml").to_str().unwrap()]);
    // DHCP option 67 as a full URL, no TFTP involved: script, then sanboot over HTTP ranges.
    let (code, serial) = boot_qemu(&dir, &format!("http://10.0.2.2:{http}/ipxe"), Duration::from_secs(90));
    assert!(serial.contains("bootfarm: booting vdisk demo"), "the generated script ran:\n{serial}");
    assert!(serial.contains(bootfarm::demo::BOOT_MARKER), "marker missing; serial output:\n{serial}");
    assert_eq!(code, Some(33));
    let m = String::from_utf8(run(Command::new("curl").args(["-sS", &format!("http://127.0.0.1:{http}/metrics")])).stdout).unwrap();
    let line = m.lines().find(|l| l.starts_with("bootfarm_http_responses_total{class=\"2xx\"}")).unwrap();
    let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 4, "script, HEAD and range reads were answered: {line}");
    drop(server);
}
