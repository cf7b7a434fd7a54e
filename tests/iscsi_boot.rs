//! Real machines boot over iSCSI: QEMU (TCG) with its iPXE NIC ROM runs a script that
//! `sanboot`s an iSCSI LUN holding the demo vdisk; its boot sector prints the marker on COM1 and
//! ends QEMU through isa-debug-exit (status 33). First against tgt (Debian's userspace target,
//! an independent peer: it proves the harness), then against bootfarm.
//!
//! What this iPXE (1.0.0+git-20190125) sends, seen on the wire against tgt (a tcpdump on lo):
//! - Login 1 (CSG 0 -> NSG 1, T): InitiatorName=iqn.2010-04.org.ipxe:<uuid, zeros under QEMU>,
//!   TargetName, SessionType=Normal, AuthMethod=None (tgt answers TargetPortalGroupTag=1,
//!   AuthMethod=None).
//! - Login 2 (CSG 1 -> NSG 3, T), every key at once: HeaderDigest=None DataDigest=None
//!   MaxConnections=1 InitialR2T=Yes ImmediateData=No MaxRecvDataSegmentLength=8192
//!   MaxBurstLength=262144 FirstBurstLength=65536 DefaultTime2Wait=0 DefaultTime2Retain=0
//!   MaxOutstandingR2T=1 DataPDUInOrder=Yes DataSequenceInOrder=Yes ErrorRecoveryLevel=0.
//! - TEST UNIT READY until GOOD (tgt's first answer is CHECK CONDITION, a unit attention; iPXE
//!   retries), READ CAPACITY 10, READ 10 of LBA 64 x 4 blocks (iPXE's El Torito probe at byte
//!   32768), READ 10 of LBA 0 x 1 twice; every Data-In carries the status (flags 0x81: F+S), no
//!   SCSI Response PDU after it. No NOP-Out, no Logout: the connection is left open when the
//!   boot sector runs.
//! - Multipath (`sanboot URI1 URI2`): a refused first portal costs nothing visible; the second
//!   one serves.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IQN: &str = "iqn.2026-12.org.bootfarm:demo";

/// tgtd on a loopback portal, exporting one file as LUN 1 of one target; killed when dropped.
struct Tgt {
    child: std::process::Child,
    control: u16,
    port: u16,
}

impl Tgt {
    fn start(dir: &TempDir, iqn: &str, backing: &Path) -> Tgt {
        // Up when this tgtd's portal is listed (not another test's tgtd on the same socket name).
        let ours = |control: u16, port: u16| {
            Command::new("tgtadm")
                .args(["-C", &control.to_string(), "--lld", "iscsi", "--op", "show", "--mode", "portal"])
                .stderr(Stdio::null())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("127.0.0.1:{port},")))
                .unwrap_or(false)
        };
        let mut tries = 0;
        let t = loop {
            let port = free_port();
            // The management socket is /var/run/tgtd/socket.<control> (tgtd takes 0..32767):
            // derived from the free portal port; a tgtd of another test holding the same name
            // makes this one exit at once, and then another port is drawn.
            let control = port % 32000 + 700;
            let log = std::fs::File::create(dir.join("tgtd.log")).unwrap();
            let child = Command::new("tgtd")
                .args(["-f", "--iscsi", &format!("portal=127.0.0.1:{port}"), "-C", &control.to_string()])
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("tgtd (Debian tgt; .ci/run installs it)");
            let mut t = Tgt { child, control, port };
            let t0 = Instant::now();
            let up = loop {
                if ours(control, port) {
                    break true;
                }
                if t.child.try_wait().unwrap().is_some() || t0.elapsed() > Duration::from_secs(10) {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            if up {
                break t;
            }
            tries += 1;
            let log = String::from_utf8_lossy(&std::fs::read(dir.join("tgtd.log")).unwrap_or_default()).into_owned();
            assert!(tries < 5, "tgtd does not start (portal 127.0.0.1:{port}, -C {control}); its log:\n{log}");
        };
        t.adm(&["--op", "new", "--mode", "target", "--tid", "1", "-T", iqn]);
        t.adm(&["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", backing.to_str().unwrap()]);
        t.adm(&["--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"]);
        t
    }

    fn adm(&self, args: &[&str]) {
        run(Command::new("tgtadm").args(["-C", &self.control.to_string(), "--lld", "iscsi"]).args(args));
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The demo store (a two-version VHDX chain whose boot sector prints the marker) served by
/// bootfarm over HTTP (the iPXE scripts come from its /boot), and the vdisk's raw bytes.
/// bootfarm's own iSCSI target listens on `iscsi` (its demo vdisk: `IQN`, LUN 0).
struct Demo {
    dir: TempDir,
    http: u16,
    iscsi: u16,
    raw: PathBuf,
}

fn demo(tag: &str) -> (Demo, Server) {
    let dir = TempDir::new(tag);
    let (http, iscsi) = (free_port(), free_port());
    let mut c = bootfarm::demo::write_store(&dir.0, http).unwrap();
    c.vdisk[0].sanboot = bootfarm::config::Sanboot::Iscsi;
    c.server.tftp_port = free_port();
    c.server.nbd_port = free_port();
    c.server.iscsi_port = iscsi;
    std::fs::write(dir.join("bootfarm.toml"), toml::to_string(&c).unwrap()).unwrap();
    let raw = dir.join("demo.raw");
    run(Command::new(bin()).args(["vdisk", "export"]).arg(&c.vdisk[0].path).arg("-o").arg(&raw));
    let server = Server::start(&["--config", dir.join("bootfarm.toml").to_str().unwrap(), "--iscsi-port", &iscsi.to_string()]);
    (Demo { dir, http, iscsi, raw }, server)
}

/// Boots QEMU with `script` as the iPXE script (from bootfarm's /boot); (exit code, serial).
fn boot_script(d: &Demo, script: &str, limit: Duration) -> (Option<i32>, String) {
    std::fs::write(d.dir.join("boot/iscsi.ipxe"), script).unwrap();
    let netdev = format!("user,id=n0,bootfile=http://10.0.2.2:{}/boot/iscsi.ipxe", d.http);
    let args = ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-netdev", &netdev, "-device", "e1000,netdev=n0", "-boot", "n"];
    let (status, serial) = run_qemu(&d.dir.join("sercon"), 128, &args, limit);
    (status.and_then(|s| s.code()), serial)
}

#[test]
fn ipxe_sanboots_the_demo_vdisk_from_tgt() {
    let (d, _server) = demo("iscsi-tgt");
    let tgt = Tgt::start(&d.dir, IQN, &d.raw);
    let t0 = Instant::now();
    let script = format!("#!ipxe\necho test: sanboot over iscsi\nsanboot iscsi:10.0.2.2::{}:1:{IQN}\n", tgt.port);
    let (code, serial) = boot_script(&d, &script, Duration::from_secs(90));
    let ctx = || {
        format!(
            "serial output:\n{serial}\ntgtd log:\n{}",
            String::from_utf8_lossy(&std::fs::read(d.dir.join("tgtd.log")).unwrap_or_default())
        )
    };
    assert!(serial.contains("Registered SAN device 0x80"), "iPXE logged in and read the capacity; {}", ctx());
    assert!(serial.contains(bootfarm::demo::BOOT_MARKER), "marker missing; {}", ctx());
    assert_eq!(code, Some(33), "the boot sector ends QEMU through isa-debug-exit; {}", ctx());
    eprintln!("iPXE sanboot from tgt: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn ipxe_multipath_sanboot_skips_a_dead_portal_tgt() {
    let (d, _server) = demo("iscsi-tgt-mp");
    let tgt = Tgt::start(&d.dir, IQN, &d.raw);
    let dead = free_port(); // nothing listens there: the first path is refused
    let script = format!("#!ipxe\nsanboot iscsi:10.0.2.2::{dead}:1:{IQN} iscsi:10.0.2.2::{}:1:{IQN}\n", tgt.port);
    let (code, serial) = boot_script(&d, &script, Duration::from_secs(90));
    assert!(serial.contains(bootfarm::demo::BOOT_MARKER), "marker missing; serial output:\n{serial}");
    assert_eq!(code, Some(33));
}

const MAC: &str = "52:54:00:12:34:56";

fn curl(url: &str) -> String {
    String::from_utf8(run(Command::new("curl").args(["-sS", url])).stdout).unwrap()
}

/// The sum of a metric's samples in a /metrics page.
fn metric(page: &str, name: &str) -> u64 {
    page.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum()
}

/// The demo vdisk configured with `sanboot = "iscsi"`: QEMU's DHCP names bootfarm's /ipxe, the
/// script sanboots `iscsi:10.0.2.2::<port>:0:<iqn>` with an initiator name that carries the
/// boot token, and bootfarm's target serves the boot sector.
#[test]
fn ipxe_sanboots_the_demo_vdisk_from_bootfarm_via_its_ipxe_script() {
    let (d, server) = demo("iscsi-bf");
    let s = curl(&format!("http://127.0.0.1:{}/ipxe?mac={MAC}", d.http));
    assert!(s.contains(&format!("\nsanboot iscsi:127.0.0.1::{}:0:{IQN} || goto failed\n", d.iscsi)), "{s}");
    assert!(s.contains("\nset initiator-iqn iqn.2026-12.org.bootfarm:initiator.525400123456."), "{s}");
    let netdev = format!("user,id=n0,bootfile=http://10.0.2.2:{}/ipxe?mac=${{mac}}", d.http);
    let device = format!("e1000,netdev=n0,mac={MAC}");
    let args = ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-netdev", &netdev, "-device", &device, "-boot", "n"];
    let (status, serial) = run_qemu(&d.dir.join("sercon"), 128, &args, Duration::from_secs(90));
    let ctx = || format!("serial output:\n{serial}\nserver log:\n{}", server.log());
    assert!(serial.contains("bootfarm: booting vdisk demo (16777216 bytes) over iSCSI"), "the generated script ran; {}", ctx());
    assert!(serial.contains(bootfarm::demo::BOOT_MARKER), "marker missing; {}", ctx());
    assert_eq!(status.and_then(|s| s.code()), Some(33), "{}", ctx());
    // The login named the boot token: the target is the machine's MAC, the boot its token.
    let l = server.wait_for("iscsi target attached");
    assert!(l.contains("cache=52:54:00:12:34:56"), "{l}");
    assert!(!l.contains("boot=\"\""), "the boot token came through the initiator name: {l}");
    let m = curl(&format!("http://127.0.0.1:{}/metrics", d.http));
    assert_eq!(metric(&m, "bootfarm_iscsi_logins_total{session=\"normal\"}"), 1, "{m}");
    assert!(metric(&m, "bootfarm_iscsi_read_bytes_total") >= 512, "{m}");
}

/// Two bootfarm nodes in a farm (127.0.0.1 and 127.0.0.2, the same ports, one token key),
/// each with its own byte-identical copy of the demo vdisk. The first server of the target's
/// list is killed before the boot (the survivor still counts it up: a failure not yet
/// detected), the survivor's /ipxe lists both, and iPXE's multipath sanboot boots from the
/// second.
#[test]
fn ipxe_multipath_sanboot_fails_over_to_the_second_bootfarm_node() {
    let dir = TempDir::new("iscsi-farm");
    let (tftp, http, nbd, iscsi) = (free_port(), free_port(), free_port(), free_port());
    std::fs::write(dir.join("token.key"), pattern(3, 0, 32)).unwrap();
    let mut table = String::new();
    for i in 1..=2 {
        table.push_str(&format!("[[farm.server]]\nname = \"node{i}\"\naddress = \"127.0.0.{i}\"\n"));
    }
    let mut nodes: Vec<Option<Server>> = Vec::new();
    for i in 1..=2 {
        let d = dir.join(&format!("node{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let c = bootfarm::demo::write_store(&d, http).unwrap();
        // The second node's image files are the first's, copied (replication is a file copy).
        if i == 2 {
            for f in ["demo.1.vhdx", "demo.2.avhdx"] {
                std::fs::copy(dir.join(&format!("node1/vdisks/{f}")), d.join("vdisks").join(f)).unwrap();
            }
        }
        let cfg = format!(
            "[server]\nname = \"node{i}\"\nlisten = \"127.0.0.{i}\"\ntftp_port = {tftp}\nhttp_port = {http}\nnbd_port = {nbd}\niscsi_port = {iscsi}\nworkers = 1\n\
             [tftp]\nroot = \"boot\"\n[nbd]\ncache_dir = \"cache\"\n[[vdisk]]\nname = \"demo\"\npath = \"{}\"\nsanboot = \"iscsi\"\n\
             [farm]\ntoken_key_file = \"{}\"\nhealth_interval_ms = 200\nhealth_timeout_ms = 200\nhealth_failures_max = 100000\nhealth_successes_min = 1\n{table}",
            c.vdisk[0].path.display(),
            dir.join("token.key").display()
        );
        std::fs::write(d.join("bootfarm.toml"), cfg).unwrap();
        nodes.push(Some(Server::start(&["--config", d.join("bootfarm.toml").to_str().unwrap(), "--iscsi-port", &iscsi.to_string()])));
    }
    // Both nodes up in each other's eyes, then the target's order.
    let script = |n: usize| curl(&format!("http://127.0.0.{n}:{http}/ipxe?mac={MAC}"));
    wait_until("both nodes list both servers", 20, || {
        script(1).contains("servers in failover order: node") && script(1).matches("iscsi:").count() == 2
    });
    let s = script(1);
    let order = s.lines().find_map(|l| l.strip_prefix("# servers in failover order: ")).unwrap().to_string();
    let first: usize = order.split(' ').next().unwrap().trim_start_matches("node").parse().unwrap();
    let second = 3 - first;
    drop(nodes[first - 1].take());
    // The survivor still lists the dead one first: iPXE gets both paths.
    let s = script(second);
    let (dead_uri, live_uri) = (format!("iscsi:127.0.0.{first}::{iscsi}:0:{IQN}"), format!("iscsi:127.0.0.{second}::{iscsi}:0:{IQN}"));
    assert!(s.contains(&format!("sanboot {dead_uri} {live_uri} || goto failed")), "{s}");
    let netdev = format!("user,id=n0,bootfile=http://127.0.0.{second}:{http}/ipxe?mac=${{mac}}");
    let device = format!("e1000,netdev=n0,mac={MAC}");
    let args = ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-netdev", &netdev, "-device", &device, "-boot", "n"];
    let (status, serial) = run_qemu(&dir.join("sercon"), 128, &args, Duration::from_secs(120));
    let live = nodes[second - 1].as_ref().unwrap();
    let ctx = || format!("serial output:\n{serial}\nlog of node{second}:\n{}", live.log());
    assert!(serial.contains("over iSCSI"), "the survivor's script ran; {}", ctx());
    assert!(serial.contains(bootfarm::demo::BOOT_MARKER), "marker missing; {}", ctx());
    assert_eq!(status.and_then(|s| s.code()), Some(33), "{}", ctx());
    live.wait_for("iscsi target attached");
}

// --- A Linux guest initiator: root on the LUN --------------------------------------------------

fn contrib(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib").join(p)
}

/// contrib/initramfs/build.sh with ISCSI=yes for Debian's kernel, built once per kernel and
/// content of contrib/initramfs and kept under target/ (a build takes seconds, a boot a minute:
/// every test of this file shares one); (vmlinuz, initrd).
fn iscsi_kernel_and_initrd() -> (PathBuf, PathBuf) {
    use std::hash::{Hash, Hasher};
    let (vmlinuz, mods) = debian_kernel();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    mods.hash(&mut h);
    for f in ["build.sh", "init", "bootfarm-root.sh", "udhcpc.script"] {
        read_file(&contrib(&format!("initramfs/{f}"))).hash(&mut h);
    }
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let initrd = tmp.join(format!("initrd-iscsi-{:016x}.img", h.finish()));
    if !initrd.exists() {
        // Built aside and renamed: the tests of this file run in parallel.
        let part = tmp.join(format!("initrd-iscsi-{}-{:?}.part", std::process::id(), std::thread::current().id()));
        run(Command::new("sh").arg(contrib("initramfs/build.sh")).arg(&part).arg(&mods).env("ISCSI", "yes"));
        std::fs::rename(&part, &initrd).unwrap();
    }
    (vmlinuz, initrd)
}

/// What the booted system does with its root: says what it is, checks a known file, writes
/// 4 MiB, syncs, drops the page cache, reads them back and powers off.
const VDISK_INIT: &str = r#"#!/bin/sh
export PATH=/bin
echo "VDISK-INIT: root is $(grep ' / ' /proc/mounts | head -n 1)"
[ -e /data.bin ] && echo "VDISK-DIRTY: a previous boot's file is here"
echo "VDISK-KNOWN: $(sha256sum /etc/known | cut -d ' ' -f 1)"
dd if=/dev/urandom of=/data.bin bs=1M count=4 2>/dev/null
a=$(sha256sum /data.bin | cut -d ' ' -f 1)
sync
echo 3 > /proc/sys/vm/drop_caches
b=$(sha256sum /data.bin | cut -d ' ' -f 1)
[ -n "$a" ] && [ "$a" = "$b" ] && echo "VDISK-READBACK-OK $a"
echo "VDISK-DONE"
sync
poweroff -f
"#;

/// A Linux root file system (busybox, the init above, /etc/known) as an ext4 VHDX made by
/// contrib/linux-vdisk.sh at `dir/lab.vhdx`; returns the sha256 of /etc/known.
fn linux_vdisk(dir: &TempDir) -> String {
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "dev", "proc", "sys", "run", "tmp", "sbin"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let busybox = PathBuf::from("/bin/busybox");
    std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    let ldd = String::from_utf8(run(Command::new("ldd").arg(&busybox)).stdout).unwrap();
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let to = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
    for a in ["sh", "echo", "grep", "head", "sha256sum", "cut", "dd", "sync", "poweroff", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(root.join("sbin/init"), VDISK_INIT).unwrap();
    run(Command::new("chmod").args(["755"]).arg(root.join("sbin/init")));
    let known = pattern(11, 0, 256 << 10);
    std::fs::write(root.join("etc/known"), &known).unwrap();
    std::fs::write(dir.join("known"), &known).unwrap();
    run(Command::new("sh").arg(contrib("linux-vdisk.sh")).arg(&root).arg(dir.join("lab.vhdx")).arg("64M").env("BOOTFARM", bin()));
    let o = run(Command::new("sha256sum").arg(dir.join("known")));
    String::from_utf8(o.stdout).unwrap().split(' ').next().unwrap().to_string()
}

/// A bootfarm serving `dir/boot` over HTTP (the kernel, the initrd and the iPXE scripts) and
/// `extra` config; returns its HTTP port.
fn http_server(dir: &TempDir, extra: &str) -> (Server, u16) {
    let (tftp, http, nbd) = (free_port(), free_port(), free_port());
    let cfg = format!("[server]\ntftp_port = {tftp}\nhttp_port = {http}\nnbd_port = {nbd}\n[tftp]\nroot = \"boot\"\n{extra}");
    std::fs::write(dir.join("bootfarm.toml"), cfg).unwrap();
    (Server::start(&["--config", dir.join("bootfarm.toml").to_str().unwrap()]), http)
}

/// Boots Linux: QEMU runs `script` (from /boot) that loads the kernel and the initrd from
/// `dir/boot/linux`; (powered off by itself, serial output).
fn boot_linux(dir: &TempDir, http: u16, script: &str, limit: Duration) -> (bool, String) {
    std::fs::write(dir.join("boot/linux.ipxe"), script).unwrap();
    let netdev = format!("user,id=n0,bootfile=http://10.0.2.2:{http}/boot/linux.ipxe");
    let args = ["-no-reboot", "-netdev", &netdev, "-device", "e1000,netdev=n0,mac=52:54:00:12:34:56", "-boot", "n"];
    let (status, serial) = run_qemu(&dir.join("sercon"), 512, &args, limit);
    (status.is_some(), serial)
}

/// The iPXE lines that load and boot the kernel with the initramfs's `keys`.
fn linux_lines(http: u16, keys: &str) -> String {
    format!(
        "kernel http://10.0.2.2:{http}/boot/linux/vmlinuz initrd=initrd.img console=ttyS0 panic=1 ip=${{ip}}::${{gateway}}:${{netmask}}:::off {keys}\n\
         initrd http://10.0.2.2:{http}/boot/linux/initrd.img\nboot\n"
    )
}

fn linux_store(tag: &str) -> (TempDir, String) {
    let dir = TempDir::new(tag);
    let (vmlinuz, initrd) = iscsi_kernel_and_initrd();
    std::fs::create_dir_all(dir.join("boot/linux")).unwrap();
    std::fs::copy(vmlinuz, dir.join("boot/linux/vmlinuz")).unwrap();
    std::fs::copy(initrd, dir.join("boot/linux/initrd.img")).unwrap();
    let known = linux_vdisk(&dir);
    (dir, known)
}

fn assert_linux_ran(exited: bool, serial: &str, known: &str, ctx: &dyn Fn() -> String) {
    assert!(serial.contains("bootfarm-init: iSCSI disk /dev/sd"), "the initramfs logged in and found the disk; {}", ctx());
    assert!(serial.contains("VDISK-INIT: root is /dev/sd"), "the vdisk's init ran from the LUN; {}", ctx());
    assert!(serial.contains(&format!("VDISK-KNOWN: {known}")), "/etc/known reads as written; {}", ctx());
    assert!(!serial.contains("VDISK-DIRTY"), "a first boot starts from the clean image; {}", ctx());
    assert!(serial.contains("VDISK-READBACK-OK"), "4 MiB written, synced and read back; {}", ctx());
    assert!(serial.contains("VDISK-DONE") && exited, "the machine powered off by itself; {}", ctx());
}

/// iPXE `sanhook`s the LUN (publishing the iBFT), then boots Linux; the initramfs logs in
/// with `iscsistart -b` from that iBFT and mounts its root on the LUN, here from tgt.
#[test]
fn linux_boots_with_root_on_a_tgt_lun_from_the_ibft() {
    let (dir, known) = linux_store("iscsi-linux-tgt");
    let raw = dir.join("lab.raw");
    run(Command::new(bin()).args(["vdisk", "export"]).arg(dir.join("lab.vhdx")).arg("-o").arg(&raw));
    let tgt = Tgt::start(&dir, "iqn.2026-12.org.bootfarm:lab", &raw);
    let (_server, http) = http_server(&dir, "");
    let script = format!(
        "#!ipxe\nsanhook iscsi:10.0.2.2::{}:1:iqn.2026-12.org.bootfarm:lab || shell\n{}",
        tgt.port,
        linux_lines(http, "bootfarm.iscsi=ibft")
    );
    let t0 = Instant::now();
    let (exited, serial) = boot_linux(&dir, http, &script, Duration::from_secs(300));
    let ctx = || format!("serial output:\n{serial}");
    assert!(serial.contains("iBFT found at"), "the kernel found iPXE's iBFT; {}", ctx());
    assert!(serial.contains("logging in from the iBFT: iqn.2026-12.org.bootfarm:lab at 10.0.2.2:"), "{}", ctx());
    assert_linux_ran(exited, &serial, &known, &ctx);
    eprintln!("linux boot with root on tgt's LUN: {:.1} s", t0.elapsed().as_secs_f64());
}
