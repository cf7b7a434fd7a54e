//! busybox with the `nbd-client` applet, which Debian's busybox lacks (CONFIG_NBDCLIENT off):
//! built once from Debian's source (the orig tarball of the installed package's version, from
//! the Debian archive; `make allnoconfig` + NBDCLIENT, about a minute) and cached under
//! target/tmp, shared by tests/nbd_clients.rs and tests/linux_boot.rs.

use super::run;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The cached binary, built on first use (a lock file keeps two test binaries from building
/// it at once).
pub fn busybox_with_nbd_client() -> PathBuf {
    let v = String::from_utf8(run(Command::new("dpkg-query").args(["-W", "-f", "${source:Upstream-Version}", "busybox"])).stdout).unwrap();
    assert!(!v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'), "busybox version {v:?}");
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("busybox-nbd-{v}"));
    let bin = root.join("busybox");
    std::fs::create_dir_all(&root).unwrap();
    let lock = std::fs::File::create(root.join("build.lock")).unwrap();
    use std::os::fd::AsRawFd;
    // Safety: flock on a descriptor this function owns; released when `lock` is dropped.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0, "flock {}", root.display());
    if bin.exists() {
        return bin;
    }
    let tarball = root.join("busybox.orig.tar.bz2");
    let url = format!("http://deb.debian.org/debian/pool/main/b/busybox/busybox_{v}.orig.tar.bz2");
    run(Command::new("curl").args(["-sfL", "--retry", "3", "-o"]).arg(&tarball).arg(&url));
    let src = root.join(format!("busybox-{v}"));
    let _ = std::fs::remove_dir_all(&src);
    run(Command::new("tar").arg("xjf").arg(&tarball).arg("-C").arg(&root));
    run(Command::new("make").arg("-C").arg(&src).arg("allnoconfig").stdout(Stdio::null()));
    let cfg = src.join(".config");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("# CONFIG_NBDCLIENT is not set", "CONFIG_NBDCLIENT=y");
    std::fs::write(&cfg, text).unwrap();
    // `oldconfig` asks about the applet's own options, if any: the defaults.
    let mut old = Command::new("make").arg("-C").arg(&src).arg("oldconfig").stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let _ = old.stdin.take().unwrap().write_all(&b"\n".repeat(200));
    assert!(old.wait().unwrap().success(), "make oldconfig");
    run(Command::new("make").arg("-C").arg(&src).args(["-j2", "busybox"]).stdout(Stdio::null()));
    // Copied under another name, then renamed: a build killed half-way leaves no `busybox`.
    std::fs::copy(src.join("busybox"), root.join("busybox.part")).unwrap();
    std::fs::rename(root.join("busybox.part"), &bin).unwrap();
    let _ = std::fs::remove_dir_all(&src);
    let _ = std::fs::remove_file(&tarball);
    bin
}
