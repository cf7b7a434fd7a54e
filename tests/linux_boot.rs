//! A Linux machine boots with its root on a vDisk: QEMU (TCG, e1000, user-mode NAT) runs iPXE,
//! which fetches `/ipxe?mac=` from bootfarm, loads Debian's kernel and an initramfs built by
//! contrib/initramfs/build.sh over HTTP, and boots; the initramfs connects /dev/nbd0 with
//! Debian's nbd-client to bootfarm and switch_roots into an ext4 root on a VHDX version chain
//! built by contrib/linux-vdisk.sh. The vdisk's own init prints a marker and the checksum of a
//! file that the second version changed, writes 4 MiB, syncs, drops the page cache, reads them
//! back and powers off. The image files are unchanged afterwards; a second boot of the same
//! machine (server cache) starts from the clean image.
//!
//! The same boot through Debian's own initramfs-tools with contrib/initramfs-tools (boot=bootfarm).
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
echo 3 > /proc/sys/vm/drop_caches
b=$(sha256sum /data.bin | cut -d ' ' -f 1)
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
#[derive(PartialEq)]
enum Initramfs {
    /// contrib/initramfs/build.sh: busybox, nbd-client, bootfarm's /init.
    Busybox,
    /// Debian's mkinitramfs with contrib/initramfs-tools (boot=bootfarm).
    Tools,
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

fn store(tag: &str, cache: &str, initramfs: Initramfs) -> Store {
    let dir = TempDir::new(tag);
    let (vmlinuz, mods) = debian_kernel();
    std::fs::create_dir_all(dir.join("boot/linux")).unwrap();
    std::fs::copy(&vmlinuz, dir.join("boot/linux/vmlinuz")).unwrap();
    let initrd = dir.join("boot/linux/initrd.img");
    match initramfs {
        Initramfs::Busybox => drop(run(Command::new("sh").arg(contrib("initramfs/build.sh")).arg(&initrd).arg(&mods))),
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
        "[server]\ntftp_port = {tftp}\nhttp_port = {http}\nnbd_port = {nbd}\n[tftp]\nroot = \"boot\"\n[nbd]\ncache_dir = \"cache\"\n\
         [[vdisk]]\nname = \"lab\"\npath = \"lab-v2.avhdx\"\n[vdisk.linux]\nkernel = \"linux/vmlinuz\"\ninitrd = \"linux/initrd.img\"\n\
         cmdline = \"console=ttyS0 panic=1 {boot_opt}{{ip}} {{nbd}}\"\ncache = \"{cache}\"\n"
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
    let s = store(&format!("linux-{cache}-{}", if tools { "tools" } else { "busybox" }), cache, initramfs);
    let before: Vec<Vec<u8>> = s.files.iter().map(|f| read_file(f)).collect();
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
    } else {
        assert!(serial.contains("read-only, writes in RAM"), "{}", ctx());
        assert_eq!(written, 0, "a device-cache boot writes nothing to the server; {}", ctx());
    }
    if cache == "server" && !tools {
        // The same machine boots again: a new /ipxe fetch is a new boot, from the clean image.
        let (exited, again) = boot(&s.dir, s.http, Duration::from_secs(300));
        let ctx = || format!("serial output:\n{again}\nserver log:\n{}", server.log());
        assert!(again.contains("VDISK-READBACK-OK") && exited, "the second boot ran; {}", ctx());
        assert!(!again.contains("VDISK-DIRTY"), "the second boot does not see the first one's writes; {}", ctx());
        let token = |t: &str| t.split("export lab@").nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_string);
        assert_ne!(token(&again), token(&serial), "each boot has its own token; {}", ctx());
    }
    for (f, b) in s.files.iter().zip(&before) {
        assert_same(&format!("{} after the boot", f.display()), &read_file(f), b);
    }
    eprintln!("linux boot with the {cache} cache: {:.1} s from QEMU start to power-off", took.as_secs_f64());
}

#[test]
fn linux_boots_with_root_on_a_vdisk_chain_over_nbd_server_cache() {
    boots_and_powers_off("server", Initramfs::Busybox);
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
}
