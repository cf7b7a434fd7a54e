//! A real network boot: QEMU (TCG) with its iPXE NIC ROM gets, through QEMU's user-mode NAT,
//! a PXE network bootstrap program from bootfarm over TFTP and runs it; the program prints a
//! marker on COM1 and ends QEMU through isa-debug-exit (status 33).

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

/// Runs QEMU until it exits or `limit` passes; returns (exit code, serial output).
pub fn boot_qemu(dir: &TempDir, bootfile: &str, limit: Duration) -> (Option<i32>, String) {
    let netdev = format!("user,id=n0,bootfile={bootfile}");
    let args = ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-netdev", &netdev, "-device", "e1000,netdev=n0", "-boot", "n"];
    let (status, serial) = run_qemu(&dir.join("sercon"), 128, &args, limit);
    (status.and_then(|s| s.code()), serial)
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
