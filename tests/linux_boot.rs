//! A Linux machine boots with its root on a vDisk: QEMU (TCG, e1000, user-mode NAT) runs iPXE,
//! which fetches `/ipxe?mac=` from bootfarm, loads Debian's kernel and an initramfs built by
//! contrib/initramfs/build.sh over HTTP, and boots; the initramfs connects /dev/nbd0 with
//! Debian's nbd-client to bootfarm and switch_roots into an ext4 root on a VHDX version chain
//! built by contrib/linux-vdisk.sh. The vdisk's own init prints a marker and the checksum of a
//! file that the second version changed, writes 4 MiB, syncs, drops the page cache, reads them
//! back and powers off. The image files are unchanged afterwards; a second boot of the same
//! machine (server cache) starts from the clean image.
//!
//! The same boot through Debian's own initramfs-tools with contrib/initramfs-tools (boot=bootfarm),
//! and with busybox's nbd-client applet instead of Debian's client. With tools/bootfarm-nbd as
//! the initramfs' client: a connection cut from the server side (`POST
//! /api/targets/<mac>/disconnect`) between the guest's writes and its read-back is reconnected
//! and the writes are there; and two nodes of one farm (a network namespace of the test's own)
//! serve a device-cache boot whose serving node is killed mid-boot: it finishes on the other.
//!
//! Needs Debian's linux-image-amd64 (its vmlinuz and modules), nbd-client, busybox, e2fsprogs,
//! cpio, qemu-system-x86 and ipxe-qemu (.ci/run installs them).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MAC: &str = "52:54:00:12:34:56";

fn contrib(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib").join(p)
}

fn sha256(p: &Path) -> String {
    let o = run(Command::new("sha256sum").arg(p));
    String::from_utf8(o.stdout).unwrap().split(' ').next().unwrap().to_string()
}

/// The vdisk's init: what a booted system does with its root, reported on the console.
const VDISK_INIT: &str = r#"#!/bin/sh
export PATH=/bin
echo "VDISK-INIT: root is $(grep ' / ' /proc/mounts | head -n 1)"
[ -e /data.bin ] && echo "VDISK-DIRTY: a previous boot's file is here"
echo "VDISK-KNOWN: $(sha256sum /etc/known | cut -d ' ' -f 1)"
dd if=/dev/urandom of=/data.bin bs=1M count=4 2>/dev/null
a=$(sha256sum /data.bin | cut -d ' ' -f 1)
sync
# vdisk.wait: the test acts (cuts the connection, kills the server), then says go.
if grep -q vdisk.wait /proc/cmdline; then
	echo "VDISK-WRITTEN $a"
	read -r go
	echo "VDISK-GO $go"
fi
echo 3 > /proc/sys/vm/drop_caches
b=$(sha256sum /data.bin | cut -d ' ' -f 1)
echo "VDISK-KNOWN-AFTER: $(sha256sum /etc/known | cut -d ' ' -f 1)"
[ -n "$a" ] && [ "$a" = "$b" ] && echo "VDISK-READBACK-OK $a"
echo "VDISK-DONE"
sync
poweroff -f
"#;

/// A store with a kernel, an initramfs and a Linux vdisk of two versions; returns the config
/// file, the chain's files and the sha256 the guest must print for /etc/known.
struct Store {
    dir: TempDir,
    http: u16,
    files: Vec<PathBuf>,
    known_sha: String,
}

/// Which initramfs the target boots.
#[derive(PartialEq, Clone, Copy)]
enum Initramfs {
    /// contrib/initramfs/build.sh: busybox, Debian's nbd-client, bootfarm's /init.
    Busybox,
    /// The same with busybox's own nbd-client applet (built from Debian's busybox source,
    /// tests/common/busybox.rs) instead of Debian's client: `NBD_CLIENT=<that busybox>`.
    BusyboxApplet,
    /// Debian's mkinitramfs with contrib/initramfs-tools (boot=bootfarm).
    Tools,
    /// build.sh with `BOOTFARM_NBD=<tools/bootfarm-nbd>`: the init connects with it, and its
    /// watcher reconnects a lost connection.
    BootfarmNbd,
}

/// tools/bootfarm-nbd, built (incrementally) once per test run.
fn bootfarm_nbd() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let st = Command::new(env!("CARGO")).args(["build", "-q", "-p", "bootfarm-nbd"]).status().unwrap();
            assert!(st.success(), "cannot build tools/bootfarm-nbd");
            bin().with_file_name("bootfarm-nbd")
        })
        .clone()
}

/// Debian's mkinitramfs with bootfarm's hook and boot script, in a copy of
/// /etc/initramfs-tools (MODULES=list: the hook's modules and the network drivers only).
fn mkinitramfs(dir: &TempDir, mods: &Path, out: &Path) {
    let conf = dir.join("initramfs-tools");
    run(Command::new("cp").args(["-a", "/etc/initramfs-tools"]).arg(&conf));
    let c = std::fs::read_to_string(conf.join("initramfs.conf")).unwrap();
    let c: String = c
        .lines()
        .map(|l| match l.split('=').next() {
            Some("MODULES") => "MODULES=list".to_string(),
            Some("COMPRESS") => "COMPRESS=gzip".to_string(),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(conf.join("initramfs.conf"), c + "\n").unwrap();
    std::fs::copy(contrib("initramfs-tools/hooks/bootfarm"), conf.join("hooks/bootfarm")).unwrap();
    std::fs::copy(contrib("initramfs-tools/scripts/bootfarm"), conf.join("scripts/bootfarm")).unwrap();
    std::fs::copy(contrib("initramfs/bootfarm-root.sh"), conf.join("scripts/bootfarm-root.sh")).unwrap();
    let version = mods.file_name().unwrap().to_str().unwrap();
    run(Command::new("mkinitramfs").arg("-d").arg(&conf).arg("-o").arg(out).arg(version).env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"));
}

/// BOOTFARM_TEST_NBD_TRACE_DIR=DIR keeps each boot's NBD I/O trace there (nbd.trace_dir):
/// how perf/traces/linux-boot.csv was made (perf/traces/README.md).
fn store(tag: &str, cache: &str, initramfs: Initramfs) -> Store {
    let trace = std::env::var("BOOTFARM_TEST_NBD_TRACE_DIR").map(|d| format!("trace_dir = {d:?}")).unwrap_or_default();
    store_with(tag, cache, initramfs, "", &trace)
}

/// [`store`] with `cmdline` added to the kernel command line template and `config` to the
/// configuration (before the vdisk).
fn store_with(tag: &str, cache: &str, initramfs: Initramfs, cmdline: &str, config: &str) -> Store {
    let dir = TempDir::new(tag);
    let (vmlinuz, mods) = debian_kernel();
    std::fs::create_dir_all(dir.join("boot/linux")).unwrap();
    std::fs::copy(&vmlinuz, dir.join("boot/linux/vmlinuz")).unwrap();
    let initrd = dir.join("boot/linux/initrd.img");
    match initramfs {
        Initramfs::Busybox => drop(run(Command::new("sh").arg(contrib("initramfs/build.sh")).arg(&initrd).arg(&mods))),
        Initramfs::BusyboxApplet => drop(run(Command::new("sh")
            .arg(contrib("initramfs/build.sh"))
            .arg(&initrd)
            .arg(&mods)
            .env("NBD_CLIENT", common::busybox::busybox_with_nbd_client()))),
        Initramfs::BootfarmNbd => {
            drop(run(Command::new("sh").arg(contrib("initramfs/build.sh")).arg(&initrd).arg(&mods).env("BOOTFARM_NBD", bootfarm_nbd())))
        }
        Initramfs::Tools => mkinitramfs(&dir, &mods, &initrd),
    }
    let boot_opt = if initramfs == Initramfs::Tools { "boot=bootfarm " } else { "" };

    // The root file system: busybox with its libraries, the init above, a known file.
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
    std::fs::write(root.join("etc/known"), vec![b'A'; 64 << 10]).unwrap();

    let base = dir.join("lab.vhdx");
    run(Command::new("sh").arg(contrib("linux-vdisk.sh")).arg(&root).arg(&base).arg("64M").env("BOOTFARM", bin()));
    // Version 2 changes /etc/known in place: the guest's checksum proves it reads the chain.
    let v2 = dir.join("lab-v2.avhdx");
    run(Command::new(bin()).args(["vdisk", "new-version"]).arg(&base).arg("-o").arg(&v2));
    let raw = dir.join("check.raw");
    run(Command::new(bin()).args(["vdisk", "export"]).arg(&base).arg("-o").arg(&raw));
    let bmap = |i: u32| -> u64 {
        let o = run(Command::new("debugfs").args(["-R", &format!("bmap /etc/known {i}")]).arg(&raw).stderr(Stdio::null()));
        String::from_utf8(o.stdout).unwrap().trim().parse().expect("debugfs bmap gives a block number")
    };
    let first = bmap(0);
    assert_eq!(bmap(15), first + 15, "mkfs.ext4 -d laid /etc/known out in one extent");
    std::fs::remove_file(&raw).unwrap();
    let content = pattern(7, 0, 64 << 10);
    std::fs::write(dir.join("known.new"), &content).unwrap();
    let offset = (first * 4096).to_string();
    run(Command::new(bin()).args(["vdisk", "write"]).arg(&v2).args(["--offset", &offset, "--from"]).arg(dir.join("known.new")));
    let known_sha = sha256(&dir.join("known.new"));

    let (tftp, http, nbd) = (free_port(), free_port(), free_port());
    let cfg = format!(
        "[server]\ntftp_port = {tftp}\nhttp_port = {http}\nnbd_port = {nbd}\n[tftp]\nroot = \"boot\"\n[nbd]\ncache_dir = \"cache\"\n{config}\n\
         [[vdisk]]\nname = \"lab\"\npath = \"lab-v2.avhdx\"\n[vdisk.linux]\nkernel = \"linux/vmlinuz\"\ninitrd = \"linux/initrd.img\"\n\
         cmdline = \"console=ttyS0 panic=1 {boot_opt}{{ip}} {{nbd}} {cmdline}\"\ncache = \"{cache}\"\n"
    );
    std::fs::create_dir_all(dir.join("cache")).unwrap();
    std::fs::write(dir.join("bootfarm.toml"), cfg).unwrap();
    Store { files: vec![base, v2], dir, http, known_sha }
}

/// Runs QEMU until it powers off or `limit` passes; returns (exited by itself, serial output).
fn boot(dir: &TempDir, http: u16, limit: Duration) -> (bool, String) {
    let netdev = format!("user,id=n0,bootfile=http://10.0.2.2:{http}/ipxe?mac=${{mac}}");
    let device = format!("e1000,netdev=n0,mac={MAC}");
    let args = ["-no-reboot", "-netdev", &netdev, "-device", &device, "-boot", "n"];
    let (status, serial) = run_qemu(&dir.join("sercon"), 512, &args, limit);
    (status.is_some(), serial)
}

fn metric(http: u16, name: &str) -> u64 {
    let m = String::from_utf8(run(Command::new("curl").args(["-sS", &format!("http://127.0.0.1:{http}/metrics")])).stdout).unwrap();
    m.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum()
}

fn boots_and_powers_off(cache: &str, initramfs: Initramfs) {
    let tools = initramfs == Initramfs::Tools;
    let applet = initramfs == Initramfs::BusyboxApplet;
    let kind = if tools {
        "tools"
    } else if applet {
        "applet"
    } else {
        "busybox"
    };
    let s = store(&format!("linux-{cache}-{kind}"), cache, initramfs);
    let before: Vec<Vec<u8>> = s.files.iter().map(|f| read_file(f)).collect();
    let hashes: Vec<String> = s.files.iter().map(|f| sha256(f)).collect();
    let server = Server::start(&["--config", s.dir.join("bootfarm.toml").to_str().unwrap()]);
    let t0 = Instant::now();
    let (exited, serial) = boot(&s.dir, s.http, Duration::from_secs(300));
    let took = t0.elapsed();
    let log = server.log();
    let ctx = || format!("serial output:\n{serial}\nserver log:\n{log}");
    assert!(serial.contains("bootfarm: booting Linux vdisk lab"), "the generated script ran; {}", ctx());
    assert!(serial.contains("root: /dev/nbd0 from 10.0.2.2"), "the initramfs mounted the vdisk; {}", ctx());
    if tools {
        assert!(serial.contains("Mounting root file system"), "initramfs-tools' init ran the boot script; {}", ctx());
    }
    assert!(serial.contains("VDISK-INIT: root is"), "the vdisk's init ran; {}", ctx());
    assert!(serial.contains(&format!("VDISK-KNOWN: {}", s.known_sha)), "the file version 2 changed reads as written there; {}", ctx());
    assert!(!serial.contains("VDISK-DIRTY"), "a first boot starts from the clean image; {}", ctx());
    assert!(serial.contains("VDISK-READBACK-OK"), "4 MiB written, synced and read back; {}", ctx());
    assert!(serial.contains("VDISK-DONE") && exited, "the machine powered off by itself; {}", ctx());
    let written = metric(s.http, "bootfarm_nbd_written_bytes_total");
    if cache == "server" {
        assert!(serial.contains("read-write (writes in the server's cache)"), "{}", ctx());
        assert!(written >= 4 << 20, "the writes went to the server's write cache: {written} bytes; {}", ctx());
        // The initramfs named the boot token from /ipxe, and the server took it as a boot of
        // the machine the token names (its MAC, as iPXE printed it).
        let token = serial.split("export lab@").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("none");
        let mac = serial.split("net0: ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("none");
        assert!(
            log.contains(&format!("export=lab target={mac} boot=\"{token}\"")),
            "the connection named the boot token {token} of {mac}; {}",
            ctx()
        );
        // Which client connected: busybox's applet speaks plain newstyle, Debian's fixed.
        let plain = log.contains("resumed=false fixed_newstyle=false");
        assert_eq!(plain, applet, "busybox's applet (plain newstyle) connected: {applet}; {}", ctx());
    } else {
        assert!(serial.contains("read-only, writes in RAM"), "{}", ctx());
        assert_eq!(written, 0, "a device-cache boot writes nothing to the server; {}", ctx());
    }
    if cache == "server" && initramfs == Initramfs::Busybox {
        // The same machine boots again: a new /ipxe fetch is a new boot, from the clean image.
        let (exited, again) = boot(&s.dir, s.http, Duration::from_secs(300));
        let ctx = || format!("serial output:\n{again}\nserver log:\n{}", server.log());
        assert!(again.contains("VDISK-READBACK-OK") && exited, "the second boot ran; {}", ctx());
        assert!(!again.contains("VDISK-DIRTY"), "the second boot does not see the first one's writes; {}", ctx());
        let token = |t: &str| t.split("export lab@").nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_string);
        assert_ne!(token(&again), token(&serial), "each boot has its own token; {}", ctx());
        // The first boot's cache (kept for its reconnect until then) went when the second began.
        assert_eq!(metric(s.http, "bootfarm_nbd_caches_dropped_total{reason=\"new_boot\"}"), 1, "{}", ctx());
        assert!(server.log().contains("write cache discarded (the target started a new boot"), "{}", ctx());
    }
    for (f, (b, h)) in s.files.iter().zip(before.iter().zip(&hashes)) {
        assert_same(&format!("{} after the boot", f.display()), &read_file(f), b);
        assert_eq!(&sha256(f), h, "{} hashes as before the boot", f.display());
    }
    eprintln!("linux boot with the {cache} cache: {:.1} s from QEMU start to power-off", took.as_secs_f64());
}

#[test]
fn linux_boots_with_root_on_a_vdisk_chain_over_nbd_server_cache() {
    boots_and_powers_off("server", Initramfs::Busybox);
}

/// busybox's nbd-client applet (client flags 0, NBD_OPT_EXPORT_NAME, the 124 zero bytes) as
/// the initramfs' client: the same boot, writes and read-back.
#[test]
fn linux_boots_with_busybox_nbd_client_applet_server_cache() {
    boots_and_powers_off("server", Initramfs::BusyboxApplet);
}

#[test]
fn linux_boots_with_root_read_only_and_an_overlay_in_ram() {
    boots_and_powers_off("device", Initramfs::Busybox);
}

#[test]
fn linux_boots_from_an_initramfs_tools_image_with_the_bootfarm_hook() {
    boots_and_powers_off("server", Initramfs::Tools);
}

/// The script itself, without a kernel: kernel, initrd and boot from each server in turn, with
/// the command line the initramfs reads; a reload that changes only `[vdisk.linux]` applies.
#[test]
fn ipxe_answers_a_linux_vdisk_with_kernel_initrd_and_the_nbd_keys() {
    let dir = TempDir::new("linux-ipxe");
    std::fs::create_dir_all(dir.join("boot/linux")).unwrap();
    std::fs::write(dir.join("boot/linux/vmlinuz"), b"kernel").unwrap();
    run(Command::new(bin()).args(["vdisk", "create"]).arg(dir.join("lab.vhdx")).args(["--size", "16M"]));
    let (tftp, http, nbd) = (free_port(), free_port(), free_port());
    let cfg = |cache: &str| {
        format!(
            "[server]\ntftp_port = {tftp}\nhttp_port = {http}\nnbd_port = {nbd}\nreload_poll_ms = 50\nreload_debounce_ms = 50\n[tftp]\nroot = \"boot\"\n\
             [[vdisk]]\nname = \"lab\"\npath = \"lab.vhdx\"\n[vdisk.linux]\nkernel = \"linux/vmlinuz\"\ninitrd = \"linux/initrd.img\"\ncache = \"{cache}\"\n"
        )
    };
    std::fs::write(dir.join("bootfarm.toml"), cfg("server")).unwrap();
    let _server = Server::start(&["--config", dir.join("bootfarm.toml").to_str().unwrap()]);
    let get =
        |q: &str| String::from_utf8(run(Command::new("curl").args(["-sS", &format!("http://127.0.0.1:{http}/ipxe{q}")])).stdout).unwrap();
    let s = get(&format!("?mac={MAC}"));
    let kernel = s.lines().find(|l| l.starts_with("kernel ")).unwrap_or_else(|| panic!("no kernel line:\n{s}"));
    assert!(
        kernel.starts_with(&format!("kernel http://127.0.0.1:{http}/boot/linux/vmlinuz?vdisk=lab&mac={MAC} initrd=initrd.img ")),
        "{s}"
    );
    assert!(kernel.contains("ip=${ip}::${gateway}:${netmask}:::off"), "{s}");
    assert!(kernel.contains(&format!("bootfarm.servers=127.0.0.1 bootfarm.port={nbd} bootfarm.export=lab@")), "{s}");
    assert!(kernel.ends_with("bootfarm.cache=server || goto failed"), "{s}");
    assert!(
        s.contains(&format!(
            "\ninitrd http://127.0.0.1:{http}/boot/linux/initrd.img?vdisk=lab&mac={MAC} || goto failed\nboot || goto failed\n"
        )),
        "{s}"
    );
    assert!(!s.contains("sanboot"), "{s}");
    // The export on the command line is the boot token the script sets: a new one per fetch.
    let token = s.lines().find_map(|l| l.strip_prefix("set bootfarm-token ")).unwrap().to_string();
    assert!(kernel.contains(&format!("bootfarm.export=lab@{token} ")), "{s}");
    assert_ne!(get(&format!("?mac={MAC}")), s, "each fetch is a new boot");
    // Without a MAC: no token, the target is the client address.
    assert!(get("").contains("bootfarm.export=lab bootfarm.cache=server"));
    // The kernel is served where the script says.
    let k = run(Command::new("curl").args(["-sS", &format!("http://127.0.0.1:{http}/boot/linux/vmlinuz?vdisk=lab&mac={MAC}")])).stdout;
    assert_eq!(k, b"kernel");
    // /api/status says where the writes of this vdisk's targets live.
    let j = String::from_utf8(run(Command::new("curl").args(["-sS", &format!("http://127.0.0.1:{http}/api/status")])).stdout).unwrap();
    assert!(j.contains("\"linux\": {\"kernel\": \"linux/vmlinuz\", \"initrd\": \"linux/initrd.img\", \"cache\": \"server\", \"writes\": \"in the serving node's write cache"), "{j}");
    assert!(j.contains("\"failover\": \"lost: the writes are in the serving node's write cache"), "{j}");
    // A template without {nbd} is refused, naming the key; the running one keeps serving.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, cfg("server").replace("cache = \"server\"", "cmdline = \"console=ttyS0\"")).unwrap();
    let o = bootfarm(&["config", "check", bad.to_str().unwrap()]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("vdisk[0].linux.cmdline") && e.contains("lacks {nbd}"), "{e}");
    // The device cache: the export is the vdisk alone (no server state), after a reload.
    std::fs::write(dir.join("bootfarm.toml"), cfg("device")).unwrap();
    let t0 = Instant::now();
    while !get(&format!("?mac={MAC}")).contains("bootfarm.export=lab bootfarm.cache=device") {
        assert!(t0.elapsed() < Duration::from_secs(10), "the reload did not apply:\n{}", get(""));
        std::thread::sleep(Duration::from_millis(100));
    }
    let j = String::from_utf8(run(Command::new("curl").args(["-sS", &format!("http://127.0.0.1:{http}/api/status")])).stdout).unwrap();
    assert!(j.contains("\"failover\": \"kept: the writes are in the target's RAM"), "the device cache survives a failover: {j}");
}

/// QEMU as [`boot`] runs it, but interactive: the serial output is read while it runs and
/// lines can be typed into the guest's console (its standard input), so a test acts at a
/// point of the boot the guest names. `netns`: run inside that network namespace.
struct Guest {
    child: std::process::Child,
    serial: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Guest {
    fn start(dir: &TempDir, bootfile: &str, netns: Option<&str>) -> Guest {
        use std::io::Read;
        let sercon = dir.join("sercon");
        std::fs::write(&sercon, [0xf8u8, 0x03]).unwrap(); // SeaBIOS: copy the text console to COM1
        let mut c = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "qemu-system-x86_64"]);
                c
            }
            None => Command::new("qemu-system-x86_64"),
        };
        c.args(["-accel", "tcg", "-m", "512", "-display", "none", "-vga", "none", "-nodefaults", "-monitor", "none"]);
        c.args(["-serial", "stdio", "-fw_cfg", &format!("name=etc/sercon-port,file={}", sercon.display()), "-no-reboot"]);
        c.args(["-netdev", &format!("user,id=n0,bootfile={bootfile}"), "-device", &format!("e1000,netdev=n0,mac={MAC}"), "-boot", "n"]);
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 (Debian qemu-system-x86 + ipxe-qemu; .ci/run installs them)");
        let serial = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (mut out, s) = (child.stdout.take().unwrap(), serial.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Guest { child, serial }
    }

    fn serial(&self) -> String {
        self.serial.lock().unwrap().clone()
    }

    /// Waits (`limit` at most, or until QEMU ends) for `what` on the console; returns the
    /// text after its first occurrence, or Err with the whole console.
    fn wait_for(&mut self, what: &str, limit: Duration) -> Result<String, String> {
        let t0 = Instant::now();
        loop {
            let s = self.serial();
            if let Some(i) = s.find(what) {
                return Ok(s[i + what.len()..].to_string());
            }
            if t0.elapsed() > limit || self.child.try_wait().unwrap().is_some() {
                std::thread::sleep(Duration::from_millis(200));
                let s = self.serial();
                return s.find(what).map(|i| s[i + what.len()..].to_string()).ok_or(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `line` and Enter on the guest's console.
    fn type_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\r").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits (`limit` at most) for QEMU to end by itself (the guest powered off).
    fn exited(&mut self, limit: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first word after `key` in `text`.
fn word_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split(key).nth(1)?.split_whitespace().next()
}

/// A reconnect within the boot keeps its writes: the guest (server cache, the initramfs with
/// bootfarm-nbd) writes 4 MiB and syncs; the test cuts its connection from the server side
/// (`POST /api/targets/<mac>/disconnect`); the guest then drops its page cache and reads
/// everything back through the connection bootfarm-nbd's watcher made again, with the same
/// boot token, to the same node's cache: the checksums match.
#[test]
fn a_reconnect_within_the_boot_keeps_its_writes() {
    let token = "reconnect-test-token-01";
    let s = store_with("linux-reconnect", "server", Initramfs::BootfarmNbd, "vdisk.wait", &format!("[console]\ntoken = \"{token}\""));
    let before: Vec<Vec<u8>> = s.files.iter().map(|f| read_file(f)).collect();
    let server = Server::start(&["--config", s.dir.join("bootfarm.toml").to_str().unwrap()]);
    let mut g = Guest::start(&s.dir, &format!("http://10.0.2.2:{}/ipxe?mac=${{mac}}", s.http), None);
    let ctx = |g: &Guest, server: &Server| format!("serial output:\n{}\nserver log:\n{}", g.serial(), server.log());
    let t0 = Instant::now();
    let written = match g.wait_for("VDISK-WRITTEN ", Duration::from_secs(300)) {
        Ok(rest) => rest.split_whitespace().next().unwrap_or("").to_string(),
        Err(_) => panic!("the guest did not write its data; {}", ctx(&g, &server)),
    };
    eprintln!("reconnect boot: {:.1} s from QEMU start to the writes", t0.elapsed().as_secs_f64());
    let serial = g.serial();
    assert!(serial.contains("bootfarm-nbd: /dev/nbd0 connected to 10.0.2.2"), "bootfarm-nbd connected; {}", ctx(&g, &server));
    let boot = word_after(&serial, "export lab@").unwrap_or("none").to_string();
    let o = run(Command::new("curl")
        .args(["-sS", "-X", "POST", "-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("http://127.0.0.1:{}/api/targets/{MAC}/disconnect", s.http)));
    let body = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(body.contains("\"connections\": 1"), "the boot's one connection is cut: {body}; {}", ctx(&g, &server));
    server.wait_for("nbd connection cut: disconnected by the operator");
    let t_cut = Instant::now();
    g.type_line("go");
    let done = g.wait_for("VDISK-DONE", Duration::from_secs(180));
    let exited = g.exited(Duration::from_secs(30));
    let (serial, log) = (g.serial(), server.log());
    eprintln!("reconnect boot: {:.1} s from the cut to VDISK-DONE", t_cut.elapsed().as_secs_f64());
    for l in serial.lines().filter(|l| l.contains("bootfarm-nbd")) {
        eprintln!("  {l}");
    }
    let ctx = format!("serial output:\n{serial}\nserver log:\n{log}");
    assert!(done.is_ok() && exited, "the boot finished and powered off; {ctx}");
    assert!(serial.contains("bootfarm-nbd: /dev/nbd0: reconnected to 10.0.2.2"), "the watcher reconnected; {ctx}");
    assert!(serial.contains(&format!("VDISK-READBACK-OK {written}")), "what it wrote reads back after the reconnect; {ctx}");
    assert!(serial.contains(&format!("VDISK-KNOWN-AFTER: {}", s.known_sha)), "{ctx}");
    let attached: Vec<&str> =
        log.lines().filter(|l| l.contains("nbd target attached") && l.contains(&format!("boot=\"{boot}\""))).collect();
    assert!(attached.len() >= 2 && attached[1].contains("resumed=true"), "the reconnect named the same boot and found its cache; {ctx}");
    assert_eq!(metric(s.http, "bootfarm_nbd_operator_disconnects_total"), 1, "{ctx}");
    for (f, b) in s.files.iter().zip(&before) {
        assert_same(&format!("{} after the boot", f.display()), &read_file(f), b);
    }
}

/// A network namespace of the test's own with addresses on its loopback, removed on drop:
/// QEMU's user-mode network inside it reaches every server bound there, each at its own
/// address, as a guest on a LAN reaches a farm's nodes.
struct Netns(String);

impl Netns {
    fn new(addrs: &[&str]) -> Netns {
        let ns = format!("bflinux-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(Stdio::null()).status();
        run(Command::new("ip").args(["netns", "add", &ns]));
        let n = Netns(ns);
        run(Command::new("ip").args(["-n", &n.0, "link", "set", "lo", "up"]));
        for a in addrs {
            run(Command::new("ip").args(["-n", &n.0, "addr", "add", &format!("{a}/32"), "dev", "lo"]));
        }
        n
    }

    fn cmd(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The device cache fails over: two bootfarm nodes in one farm (192.0.2.1 and .2 in the
/// test's namespace), `/ipxe` lists both, the guest mounts the vdisk read-only under a tmpfs
/// overlay and writes 4 MiB into RAM; the test kills the node serving its NBD connection
/// (root mounted, init not finished); the guest drops its page cache and reads the vdisk
/// again: bootfarm-nbd's watcher has moved /dev/nbd0 to the other node, the reads wait for
/// it, and the boot ends with the right checksums.
#[test]
fn a_device_cache_boot_survives_the_death_of_its_server() {
    if let Some(why) = common::lab::unavailable() {
        eprintln!("SKIPPED the two-node failover boot: {why}");
        return;
    }
    let s = store_with("linux-failover", "device", Initramfs::BootfarmNbd, "vdisk.wait", "");
    let before: Vec<Vec<u8>> = s.files.iter().map(|f| read_file(f)).collect();
    let ns = Netns::new(&["192.0.2.1", "192.0.2.2"]);
    let cfg = std::fs::read_to_string(s.dir.join("bootfarm.toml")).unwrap();
    let mut nodes = Vec::new();
    for i in 1..=2 {
        let c = cfg.replacen("[server]\n", &format!("[server]\nname = \"node{i}\"\nlisten = \"192.0.2.{i}\"\nworkers = 1\n"), 1).replacen(
            "cache_dir = \"cache\"",
            &format!("cache_dir = \"cache{i}\""),
            1,
        ) + "[farm]\nhealth_interval_ms = 500\nhealth_timeout_ms = 400\nhealth_failures_max = 3\nhealth_successes_min = 1\n\
               [[farm.server]]\nname = \"node1\"\naddress = \"192.0.2.1\"\n[[farm.server]]\nname = \"node2\"\naddress = \"192.0.2.2\"\n";
        std::fs::create_dir_all(s.dir.join(&format!("cache{i}"))).unwrap();
        std::fs::write(s.dir.join(&format!("node{i}.toml")), c).unwrap();
        let conf = s.dir.join(&format!("node{i}.toml"));
        nodes.push(Some(Server::start_with(ns.cmd(&bin()).arg("serve").arg("--config").arg(conf))));
    }
    let ipxe = |node: u8| {
        let url = format!("http://192.0.2.{node}:{}/ipxe?mac={MAC}", s.http);
        String::from_utf8_lossy(&run(ns.cmd(Path::new("curl")).args(["-sS", &url])).stdout).into_owned()
    };
    wait_until("node1's /ipxe lists both nodes", 30, || {
        ipxe(1).contains("bootfarm.servers=192.0.2.1,192.0.2.2 ") || ipxe(1).contains("bootfarm.servers=192.0.2.2,192.0.2.1 ")
    });
    let mut g = Guest::start(&s.dir, &format!("http://192.0.2.1:{}/ipxe?mac=${{mac}}", s.http), Some(&ns.0));
    let log = |nodes: &Vec<Option<Server>>| nodes.iter().flatten().map(|n| n.log()).collect::<Vec<_>>().join("\n----\n");
    let written = match g.wait_for("VDISK-WRITTEN ", Duration::from_secs(300)) {
        Ok(rest) => rest.split_whitespace().next().unwrap_or("").to_string(),
        Err(serial) => panic!("the guest did not get to its writes; serial output:\n{serial}\nserver logs:\n{}", log(&nodes)),
    };
    let serial = g.serial();
    assert!(serial.contains("read-only, writes in RAM"), "the device cache; serial output:\n{serial}");
    let first = word_after(&serial, "root: /dev/nbd0 from ").unwrap_or("none").trim_end_matches(',').to_string();
    let (dead, alive) = match first.as_str() {
        "192.0.2.1" => (0, "192.0.2.2"),
        "192.0.2.2" => (1, "192.0.2.1"),
        _ => panic!("which node serves the root? serial output:\n{serial}"),
    };
    // The serving node dies (SIGKILL: no goodbye on its connections), then the guest reads.
    nodes[dead].as_ref().unwrap().signal(libc::SIGKILL);
    let _ = nodes[dead].as_mut().unwrap().child.wait();
    let t_kill = Instant::now();
    g.type_line("go");
    let done = g.wait_for("VDISK-DONE", Duration::from_secs(240));
    let exited = g.exited(Duration::from_secs(30));
    let serial = g.serial();
    eprintln!("failover boot: {:.1} s from the kill to VDISK-DONE", t_kill.elapsed().as_secs_f64());
    for l in serial.lines().filter(|l| l.contains("bootfarm-nbd")) {
        eprintln!("  {l}");
    }
    let ctx = format!("serial output:\n{serial}\nserver logs:\n{}", log(&nodes));
    assert!(done.is_ok() && exited, "the boot finished and powered off; {ctx}");
    // The kernel's messages land on the same console, at times inside a line of ours.
    let plain = without_printk(&serial);
    assert!(plain.contains(&format!("bootfarm-nbd: /dev/nbd0: the connection to {first} was lost")), "{ctx}");
    assert!(plain.contains(&format!("bootfarm-nbd: /dev/nbd0: reconnected to {alive}")), "the next server took over; {ctx}");
    assert!(serial.contains(&format!("VDISK-KNOWN-AFTER: {}", s.known_sha)), "the vdisk reads right from the other node; {ctx}");
    assert!(serial.contains(&format!("VDISK-READBACK-OK {written}")), "its RAM writes are intact; {ctx}");
    assert!(nodes[1 - dead].as_ref().unwrap().log().contains("nbd target attached"), "{ctx}");
    for (f, b) in s.files.iter().zip(&before) {
        assert_same(&format!("{} after the boot", f.display()), &read_file(f), b);
    }
}

/// The console text without the kernel's messages (`[   13.366063] ...` up to the end of its
/// line), which can cut into a line another program is writing.
fn without_printk(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('[') {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 1..];
        let stamp = tail.find(']').filter(|&j| {
            let t = tail[..j].trim_start();
            !t.is_empty() && t.contains('.') && t.chars().all(|c| c.is_ascii_digit() || c == '.')
        });
        match stamp {
            Some(j) => rest = tail[j..].find('\n').map_or("", |k| &tail[j + k + 1..]),
            None => {
                out.push('[');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn kernel_messages_inside_a_console_line_are_taken_out() {
    let s = "bootfarm-nbd: [   13.366063] init (1): drop_caches: 3\n/dev/nbd0: the connection to x was lost\n[ok] [a.b]\n";
    assert_eq!(without_printk(s), "bootfarm-nbd: /dev/nbd0: the connection to x was lost\n[ok] [a.b]\n");
}
