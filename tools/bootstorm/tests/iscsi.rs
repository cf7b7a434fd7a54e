//! bootstorm's iSCSI initiator against an independent target, tgt (Debian's tgtd): boots over
//! `--disk iscsi` complete with every byte checked, writes included (R2T and immediate data);
//! a LUN with other bytes than the image is reported as corrupted; a wrong IQN is a refused
//! login; `iscsi-bench` runs a bounded read/write mix on one session. tgtd runs on free ports
//! on loopback and is killed with SIGKILL at the end (it ignores SIGTERM). The same boots then
//! run against bootfarm's own target (a write cache per initiator name).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const IQN: &str = "iqn.2026-12.org.bootfarm:disk";

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bootstorm-iscsi-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// tgtd with LUN 1 = `lun1` and LUN 2 = `lun2` of target IQN, on a free portal.
struct Tgt {
    child: Child,
    port: u16,
}

impl Drop for Tgt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tgt(dir: &Path, luns: &[&Path]) -> Tgt {
    assert!(Path::new("/usr/sbin/tgtd").exists(), "tgtd is needed: apt-get install tgt (.ci/run installs it)");
    let port = free_port();
    // tgtd's control "port" names a socket file and must stay below 32768: one nobody uses.
    let mut ctl = 20000 + port as u32 % 10000;
    while Path::new(&format!("/var/run/tgtd/socket.{ctl}")).exists() {
        ctl += 1;
    }
    let ctl = ctl.to_string();
    let child = Command::new("/usr/sbin/tgtd")
        .args(["-f", "--iscsi", &format!("portal=127.0.0.1:{port}"), "-C", &ctl])
        .stdout(std::fs::File::create(dir.join("tgtd.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("tgtd.err")).unwrap())
        .spawn()
        .unwrap();
    let t = Tgt { child, port };
    let adm = |args: &[&str]| {
        let t0 = Instant::now();
        loop {
            let st = Command::new("tgtadm").args(["-C", &ctl, "--lld", "iscsi"]).args(args).status().unwrap();
            if st.success() {
                return;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "tgtadm {args:?} failed");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    adm(&["--op", "new", "--mode", "target", "--tid", "1", "-T", IQN]);
    for (i, l) in luns.iter().enumerate() {
        adm(&["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", &(i + 1).to_string(), "-b", l.to_str().unwrap()]);
    }
    adm(&["--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"]);
    t
}

/// Seeded bytes: a disk whose every block differs.
fn image(path: &Path, len: usize, seed: u64) {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, v).unwrap();
}

fn boot(t: &Tgt, lun: &str, image: &Path, targets: &str, extra: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bootstorm"))
        .args(["boot", "--bootstrap", "none", "--disk", "iscsi", "--iscsi", &format!("127.0.0.1:{}", t.port), "--lun", lun])
        .args(["--vdisk", "disk", "--image", image.to_str().unwrap(), "--scale", "0.004", "--targets", targets])
        .args(["--timeout-ms", "10000", "--duration-max-s", "60"])
        .args(extra)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn boots_over_iscsi_against_tgt_check_every_byte() {
    let d = tmp("boot");
    let (img, served, other) = (d.join("img.raw"), d.join("lun1.raw"), d.join("lun2.raw"));
    image(&img, 32 << 20, 7);
    std::fs::copy(&img, &served).unwrap();
    image(&other, 32 << 20, 8);
    let t = tgt(&d, &[&served, &other]);
    // ~280 I/Os per target, a third of them writes (4 and 16 KiB): tgt takes 512-byte blocks,
    // immediate data and R2Ts as it negotiates.
    let json = d.join("out.json");
    let (code, text) = boot(&t, "1", &img, "12", &["--json", json.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("phase vdisk: 12 completed, 0 failed"), "{text}");
    let j = std::fs::read_to_string(&json).unwrap();
    assert!(j.contains("\"vdisk\"") && j.contains("iscsi"), "{j}");
    // The other LUN holds other bytes: every target sees it.
    let (code, text) = boot(&t, "2", &img, "3", &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("0 completed, 3 failed") && text.contains("corrupted"), "{text}");
    // A target IQN tgt does not have: the login is refused, the boot fails at once.
    let (code, text) = boot(&t, "1", &img, "2", &["--iqn-prefix", "iqn.2026-12.org.nowhere"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("login refused: target not found"), "{text}");
    drop(t);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn iscsi_bench_runs_a_bounded_mix_against_tgt() {
    let d = tmp("bench");
    let served = d.join("lun1.raw");
    image(&served, 16 << 20, 9);
    let t = tgt(&d, &[&served]);
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_bootstorm"))
        .args(["iscsi-bench", "--portal", &format!("127.0.0.1:{}", t.port), "--target", IQN, "--lun", "1"])
        .args(["--rw", "randrw", "--read-pct", "70", "--bs", "65536", "--qd", "8", "--seconds", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(15), "bounded");
    // iops MB/s p50_us p99_us client_us_per_io
    let f: Vec<f64> = text.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert_eq!(f.len(), 5, "{text}");
    assert!(f[0] > 10.0 && (f[1] - f[0] * 65536.0 / 1e6).abs() < 1.0 && f[2] > 0.0 && f[3] >= f[2], "{text}");
    drop(t);
    let _ = std::fs::remove_dir_all(&d);
}

fn bootfarm_bin() -> PathBuf {
    // The workspace's bootfarm binary, built alongside this test.
    let me = std::env::current_exe().unwrap();
    let b = me.parent().unwrap().parent().unwrap().join("bootfarm");
    if !b.exists() {
        let st = Command::new(env!("CARGO")).args(["build", "-q", "-p", "bootfarm", "--bin", "bootfarm"]).status().unwrap();
        assert!(st.success());
    }
    b
}

#[test]
fn boots_over_iscsi_against_bootfarm_check_every_byte() {
    let d = tmp("bootfarm");
    std::fs::create_dir_all(d.join("boot")).unwrap();
    let img = d.join("disk.raw");
    image(&img, 32 << 20, 11);
    let port = free_port();
    std::fs::write(
        d.join("bf.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1\"\ntftp_port = {}\nhttp_port = {}\nnbd_port = {}\niscsi_port = {port}\n\
             [tftp]\nroot = \"boot\"\n[nbd]\ncache_dir = \"cache\"\ntargets_per_address_max = 64\n\
             [iscsi]\nconnections_per_ip_max = 64\n[[vdisk]]\nname = \"disk\"\npath = \"disk.raw\"\n",
            free_port(),
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let mut server =
        Command::new(bootfarm_bin()).args(["serve", "--config", d.join("bf.toml").to_str().unwrap(), "--log", "warn"]).spawn().unwrap();
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(20), "bootfarm listens on its iSCSI port");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_bootstorm"))
        .args(["boot", "--bootstrap", "none", "--disk", "iscsi", "--iscsi", &format!("127.0.0.1:{port}"), "--lun", "0"])
        .args(["--vdisk", "disk", "--image", img.to_str().unwrap(), "--scale", "0.004", "--targets", "12"])
        .args(["--timeout-ms", "10000", "--duration-max-s", "60"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let bench = Command::new(env!("CARGO_BIN_EXE_bootstorm"))
        .args(["iscsi-bench", "--portal", &format!("127.0.0.1:{port}"), "--target", IQN])
        .args(["--rw", "randrw", "--bs", "65536", "--qd", "8", "--seconds", "1"])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("phase vdisk: 12 completed, 0 failed"), "{text}");
    assert!(bench.status.success(), "{}", String::from_utf8_lossy(&bench.stderr));
    let _ = std::fs::remove_dir_all(&d);
}
