//! The NBD clients real initramfs images use, against bootfarm on loopback:
//! - busybox's `nbd-client` applet (client flags 0, NBD_OPT_EXPORT_NAME, the 124 zero bytes).
//!   Debian's busybox is built without it (CONFIG_NBDCLIENT off), so the test builds one from
//!   Debian's busybox source (the orig tarball of the installed package's version, from the
//!   Debian archive; `make allnoconfig` + NBDCLIENT, about a minute), cached under target/.
//! - Debian's nbd-client 3.24 (netlink, `-connections 2`, `-persist`, `-timeout`): several
//!   connections of one boot share the target's write cache.
//!
//! Both need /dev/nbd* (root, `modprobe nbd`) to move data; a kernel without the nbd driver
//! (CONFIG_BLK_DEV_NBD off, as on some CI hosts) skips that part with a message. busybox's
//! handshake is checked in any case: given a regular file for its device, it completes the
//! handshake (it reads all 134 bytes of the answer) and only then fails at its first ioctl.

mod common;
use common::busybox::busybox_with_nbd_client;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const M: u64 = 1 << 20;

/// The first free /dev/nbdN from `first` on, loading the driver if needed; None (with the
/// reason) when this kernel cannot give one.
fn nbd_device(first: usize) -> Result<PathBuf, String> {
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root: /dev/nbd* needs root".into());
    }
    if !Path::new("/sys/module/nbd").exists() {
        let _ = Command::new("modprobe").args(["nbd", "nbds_max=8"]).stderr(Stdio::null()).status();
    }
    if !Path::new("/sys/module/nbd").exists() {
        return Err("this kernel has no nbd driver (CONFIG_BLK_DEV_NBD off, or modprobe nbd failed)".into());
    }
    for n in first..16 {
        let dev = PathBuf::from(format!("/dev/nbd{n}"));
        let busy = Path::new(&format!("/sys/block/nbd{n}/pid")).exists();
        if dev.exists() && !busy {
            return Ok(dev);
        }
    }
    Err("no free /dev/nbd* device".into())
}

fn start(dir: &TempDir) -> (Server, u16, u16) {
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    std::fs::create_dir_all(dir.join("cache")).unwrap();
    std::fs::write(dir.join("a.raw"), pattern(3, 0, 16 * M as usize)).unwrap();
    let (tftp, http, nbd) = (free_port(), free_port(), free_port());
    let text = format!(
        "[server]\ntftp_port = {tftp}\nhttp_port = {http}\nnbd_port = {nbd}\n[tftp]\nroot = \"boot\"\n[nbd]\ncache_dir = \"cache\"\n[[vdisk]]\nname = \"v\"\npath = \"a.raw\"\n"
    );
    std::fs::write(dir.join("bootfarm.toml"), text).unwrap();
    (Server::start(&["--config", dir.join("bootfarm.toml").to_str().unwrap()]), http, nbd)
}

/// Waits (bounded) for the kernel to size the device the client set up.
fn wait_device(dev: &Path, size: u64) {
    let name = dev.file_name().unwrap().to_str().unwrap().to_string();
    wait_until(&format!("{} sized {size}", dev.display()), 20, || {
        std::fs::read_to_string(format!("/sys/block/{name}/size")).is_ok_and(|s| s.trim().parse::<u64>().ok() == Some(size / 512))
    });
}

/// Reads `len` bytes at `off` of a block device, past the page cache.
fn dev_read(dev: &Path, off: u64, len: u64) -> Vec<u8> {
    let out = run(Command::new("dd")
        .arg(format!("if={}", dev.display()))
        .args(["bs=4096", "iflag=direct,skip_bytes,count_bytes", "status=none"])
        .arg(format!("skip={off}"))
        .arg(format!("count={len}")));
    out.stdout
}

/// Reads the export `export` at `off` through a raw client from this address (the same target).
fn raw_read(port: u16, export: &str, off: u64, len: u32) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    nbd_go(&mut s, export).unwrap();
    s.write_all(&nbd_request(bootfarm::nbd::wire::CMD_READ, 1, off, len, &[])).unwrap();
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    assert_eq!(&h[4..8], &[0; 4], "read error");
    let mut d = vec![0u8; len as usize];
    s.read_exact(&mut d).unwrap();
    d
}

#[test]
fn busybox_nbd_client_boots_from_an_export_name() {
    let bb = busybox_with_nbd_client();
    let dir = TempDir::new("nbd-busybox");
    let (s, _http, port) = start(&dir);
    // The handshake, with any kernel: a regular file as the device.
    std::fs::write(dir.join("not-a-device"), b"").unwrap();
    let t0 = Instant::now();
    let out = Command::new(&bb)
        .args(["nbd-client", "-N", "v@aa:bb:cc:dd:ee:01#boot1", "127.0.0.1", &port.to_string()])
        .arg(dir.join("not-a-device"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("BLKROSET"), "the handshake completed, then the first ioctl failed: {err}");
    assert!(t0.elapsed() < Duration::from_secs(10), "it did not wait for bytes that never came");
    assert!(s.wait_for("nbd target attached").contains("boot1"), "the target with its boot");

    let dev = match nbd_device(0) {
        Ok(d) => d,
        Err(why) => {
            eprintln!("SKIPPED the busybox nbd-client data check: {why}");
            return;
        }
    };
    let mut client = Command::new(&bb)
        .args(["nbd-client", "-N", "v@aa:bb:cc:dd:ee:01#boot2", "127.0.0.1", &port.to_string()])
        .arg(&dev)
        .spawn()
        .unwrap();
    wait_device(&dev, 16 * M);
    assert_same("busybox reads the image", &dev_read(&dev, 0, 16 * M), &pattern(3, 0, 16 * M as usize));
    // A write through the kernel lands in the boot's cache: a raw client of the same boot sees it.
    std::fs::write(dir.join("w.bin"), pattern(9, 0, 65536)).unwrap();
    run(Command::new("dd").arg(format!("if={}", dir.join("w.bin").display())).arg(format!("of={}", dev.display())).args([
        "bs=65536",
        "seek=16",
        "oflag=direct",
        "conv=fsync",
        "status=none",
    ]));
    assert_same(
        "its write, read by another connection of the boot",
        &raw_read(port, "v@aa:bb:cc:dd:ee:01#boot2", M, 65536),
        &pattern(9, 0, 65536),
    );
    run(Command::new(&bb).args(["nbd-client", "-d"]).arg(&dev));
    let _ = client.wait(); // the applet daemonized: this is its parent, gone already
}

#[test]
fn debian_nbd_client_with_two_connections_shares_one_cache() {
    let have = Command::new("nbd-client").arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    assert!(have, "nbd-client is missing: apt-get install nbd-client (the CI script installs it)");
    let dev = match nbd_device(4) {
        Ok(d) => d,
        Err(why) => {
            eprintln!("SKIPPED Debian nbd-client test: {why}");
            return;
        }
    };
    let dir = TempDir::new("nbd-debian-client");
    let (s, http, port) = start(&dir);
    let export = "v@aa:bb:cc:dd:ee:02#boot1";
    run(Command::new("nbd-client").args(["127.0.0.1", &port.to_string()]).arg(&dev).args([
        "-N",
        export,
        "-connections",
        "2",
        "-persist",
        "-timeout",
        "30",
    ]));
    wait_device(&dev, 16 * M);
    assert_same("nbd-client reads the image", &dev_read(&dev, 8 * M, 4 * M), &pattern(3, 8 * M, 4 * M as usize));
    std::fs::write(dir.join("w.bin"), pattern(11, 0, 4 * M as usize)).unwrap();
    run(Command::new("dd").arg(format!("if={}", dir.join("w.bin").display())).arg(format!("of={}", dev.display())).args([
        "bs=1M",
        "seek=2",
        "oflag=direct",
        "conv=fsync",
        "status=none",
    ]));
    // The kernel spreads requests over both connections: whatever each wrote, both read back.
    assert_same("read back through the device", &dev_read(&dev, 2 * M, 4 * M), &pattern(11, 0, 4 * M as usize));
    assert_same("read back by a third connection of the boot", &raw_read(port, export, 2 * M, 65536), &pattern(11, 0, 65536));
    let log = s.log();
    assert!(log.matches("nbd target attached").count() >= 2, "two connections: {log}");
    assert!(log.contains("resumed=true"), "the second connection joined the first one's target: {log}");
    let m = String::from_utf8(run(Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{http}/metrics")])).stdout).unwrap();
    assert!(m.contains("bootfarm_nbd_targets 1\n"), "one cache for the boot: {m}");
    run(Command::new("nbd-client").arg("-d").arg(&dev));
}
