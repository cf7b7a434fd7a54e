//! dissect.hypervisor (PyPI; `pip install dissect.hypervisor`, .ci/run puts it in a venv under
//! target/) as a second independent reader of the VHDX files bootfarm writes, beside
//! python3-libvhdi: `vdisk new-version` (empty, then written), `vdisk write`, `vdisk merge`,
//! contrib/linux-vdisk.sh's output and a private-mode session's version file. Each reads the
//! same in dissect, in libvhdi and in `bootfarm vdisk export`, with one known exception:
//! libvhdi 20210425 misreads an empty differencing VHDX (it reads the sector bitmap at file
//! offset 0 when the bitmap's BAT entry is NOT_PRESENT), which dissect reads right.

mod common;
use common::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The Python with dissect.hypervisor: `DISSECT_PYTHON`, or the venv .ci/run makes.
fn dissect_python() -> PathBuf {
    let p = std::env::var_os("DISSECT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dissect-venv/bin/python"));
    let ok = Command::new(&p).args(["-c", "import dissect.hypervisor.disk.vhdx"]).output().is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} cannot import dissect.hypervisor: python3 -m venv target/dissect-venv && target/dissect-venv/bin/pip install dissect.hypervisor (bash .ci/run does)",
        p.display()
    );
    p
}

fn dissect(file: &Path, out: &Path) -> Vec<u8> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dissect_export.py");
    run(Command::new(dissect_python()).arg(script).arg(out).arg(file));
    read_file(out)
}

fn ours(file: &Path, out: &Path) -> Vec<u8> {
    run(Command::new(bin()).args(["vdisk", "export"]).arg(file).arg("-o").arg(out));
    read_file(out)
}

/// `chain` newest first (libvhdi needs the parents named; dissect and bootfarm follow the
/// locators). Asserts dissect reads what bootfarm reads, and libvhdi too when `libvhdi`;
/// returns the bytes.
fn readers_agree(dir: &TempDir, chain: &[&Path], tag: &str, libvhdi: bool) -> Vec<u8> {
    let t0 = std::time::Instant::now();
    let b = ours(chain[0], &dir.join(&format!("{tag}.ours.raw")));
    let d = dissect(chain[0], &dir.join(&format!("{tag}.dissect.raw")));
    assert_same(&format!("{tag}: dissect vs bootfarm"), &d, &b);
    if libvhdi {
        let l = dir.join(&format!("{tag}.libvhdi.raw"));
        libvhdi_export(chain, &l);
        assert_same(&format!("{tag}: libvhdi vs bootfarm"), &read_file(&l), &b);
    }
    eprintln!("{tag}: three readers in {:.1} s", t0.elapsed().as_secs_f64());
    for f in ["ours", "dissect", "libvhdi"] {
        let _ = std::fs::remove_file(dir.join(&format!("{tag}.{f}.raw")));
    }
    b
}

fn write(file: &Path, dir: &TempDir, off: u64, data: &[u8]) {
    let w = dir.join("w.bin");
    std::fs::write(&w, data).unwrap();
    run(Command::new(bin()).args(["vdisk", "write"]).arg(file).args(["--offset", &off.to_string(), "--from"]).arg(&w));
}

#[test]
fn dissect_reads_the_versions_merges_and_linux_vdisks_bootfarm_writes() {
    let dir = TempDir::new("vdisk-dissect");
    const M: u64 = 1 << 20;
    let base = dir.join("base.vhdx");
    run(Command::new(bin()).args(["vdisk", "create"]).arg(&base).args(["--size", "24M", "--block-size", "2M"]));
    write(&base, &dir, 0, &pattern(1, 0, 3 * M as usize));
    write(&base, &dir, 9 * M + 4096, &pattern(2, 0, 69_632));
    let mut expect = vec![0u8; 24 * M as usize];
    expect[..3 * M as usize].copy_from_slice(&pattern(1, 0, 3 * M as usize));
    expect[(9 * M + 4096) as usize..(9 * M + 4096) as usize + 69_632].copy_from_slice(&pattern(2, 0, 69_632));
    assert_same("the base", &readers_agree(&dir, &[&base], "base", true), &expect);

    // An empty version: every BAT entry NOT_PRESENT, sector bitmaps absent. libvhdi 20210425
    // reads a bitmap from offset 0 there; dissect (and bootfarm) read the parent through.
    let v2 = dir.join("v2.avhdx");
    run(Command::new(bin()).args(["vdisk", "new-version"]).arg(&base).arg("-o").arg(&v2));
    assert_same("the empty version", &readers_agree(&dir, &[&v2, &base], "v2-empty", false), &expect);

    // Written: partial sectors of a block over the parent's data, a block of its own.
    write(&v2, &dir, M + 512, &pattern(3, 0, 5120));
    write(&v2, &dir, 20 * M, &pattern(4, 0, 2 * M as usize));
    expect[(M + 512) as usize..(M + 512) as usize + 5120].copy_from_slice(&pattern(3, 0, 5120));
    expect[20 * M as usize..22 * M as usize].copy_from_slice(&pattern(4, 0, 2 * M as usize));
    assert_same("version 2 written", &readers_agree(&dir, &[&v2, &base], "v2", true), &expect);
    let v3 = dir.join("v3.avhdx");
    run(Command::new(bin()).args(["vdisk", "new-version"]).arg(&v2).arg("-o").arg(&v3));
    write(&v3, &dir, 2 * M - 512, &pattern(5, 0, 1024));
    expect[(2 * M - 512) as usize..(2 * M + 512) as usize].copy_from_slice(&pattern(5, 0, 1024));
    assert_same("version 3", &readers_agree(&dir, &[&v3, &v2, &base], "v3", true), &expect);

    // The chain merged into one VHDX.
    let merged = dir.join("merged.vhdx");
    run(Command::new(bin()).args(["vdisk", "merge"]).arg(&v3).arg("-o").arg(&merged));
    assert_same("merged", &readers_agree(&dir, &[&merged], "merged", true), &expect);

    // contrib/linux-vdisk.sh: an ext4 file system from a folder, as a dynamic VHDX.
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/known"), pattern(6, 0, 300_000)).unwrap();
    let lab = dir.join("lab.vhdx");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/linux-vdisk.sh");
    run(Command::new("sh").arg(script).arg(&root).arg(&lab).arg("24M").env("BOOTFARM", bin()));
    let fs = readers_agree(&dir, &[&lab], "linux-vdisk", true);
    assert_eq!(&fs[1024 + 56..1024 + 58], &[0x53, 0xef], "an ext4 superblock magic at 1080");

    // A private-mode session's version file, written over NBD.
    let port = free_port();
    let cfg = format!(
        "[server]\ntftp_port = {}\nhttp_port = {}\nnbd_port = {port}\n[tftp]\nroot = \"boot\"\n[nbd]\ncache_dir = \"cache\"\n\
         [[vdisk]]\nname = \"priv\"\npath = \"v3.avhdx\"\nmode = \"private\"\n",
        free_port(),
        free_port()
    );
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    std::fs::write(dir.join("bootfarm.toml"), cfg).unwrap();
    let server = Server::start(&["--config", dir.join("bootfarm.toml").to_str().unwrap()]);
    {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        nbd_go(&mut s, "priv").unwrap();
        for (i, (off, len)) in [(4096u64, 8192usize), (12 * M + 1000, 100_000), (23 * M, M as usize)].into_iter().enumerate() {
            let d = pattern(10 + i as u64, 0, len);
            s.write_all(&nbd_request(bootfarm::nbd::wire::CMD_WRITE, i as u64, off, len as u32, &d)).unwrap();
            let mut h = [0u8; 16];
            s.read_exact(&mut h).unwrap();
            assert_eq!(&h[4..8], &[0; 4], "write {i} answered without error");
            expect[off as usize..off as usize + len].copy_from_slice(&d);
        }
        s.write_all(&nbd_request(bootfarm::nbd::wire::CMD_DISC, 9, 0, 0, &[])).unwrap();
    }
    server.wait_for("private session ended");
    let version = std::fs::read_dir(&dir.0)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("priv.private-"))
        .expect("the private session's version file");
    assert_same("the private version", &readers_agree(&dir, &[&version, &v3, &v2, &base], "private", true), &expect);
}
