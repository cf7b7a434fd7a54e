//! vDisk images made and read by independent tools: qemu-img makes VHD and VHDX files that
//! `bootfarm vdisk export` must read exactly as `qemu-img convert -O raw` does; chains made by
//! `bootfarm vdisk new-version` + writes must read exactly as python3-libvhdi reads them; merged
//! images must read the same in qemu-img.

mod common;
use common::*;
use std::path::Path;

const MIB: u64 = 1 << 20;

/// A raw source with data, holes and a partial last block: 37 MiB + 5 sectors.
fn make_source(dir: &TempDir) -> std::path::PathBuf {
    let p = dir.join("src.raw");
    let size = 37 * MIB + 5 * 512;
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    for (i, (off, len)) in
        [(0, 4096), (MIB - 512, 1024), (3 * MIB + 512, 3 * MIB), (17 * MIB, 1), (33 * MIB, 2 * MIB), (size - 3000, 3000)].iter().enumerate()
    {
        write_at(&p, *off, &pattern(i as u64, *off, *len as usize));
    }
    p
}

fn export_equals_qemu(img: &Path, fmt: &str, dir: &TempDir, tag: &str) {
    let ours = dir.join(&format!("{tag}.ours.raw"));
    let theirs = dir.join(&format!("{tag}.qemu.raw"));
    let out = bootfarm(&["vdisk", "export", img.to_str().unwrap(), "-o", ours.to_str().unwrap()]);
    assert!(out.status.success(), "export {tag}: {}", String::from_utf8_lossy(&out.stderr));
    // Named explicitly: qemu probes a fixed VHD as raw (footer included).
    qemu_img(&["convert", "-f", fmt, "-O", "raw", img.to_str().unwrap(), theirs.to_str().unwrap()]);
    assert_same(tag, &read_file(&ours), &read_file(&theirs));
    // Standard output path too (no holes: zeros written out).
    let piped = bootfarm(&["vdisk", "export", img.to_str().unwrap(), "-o", "-"]);
    assert!(piped.status.success());
    assert_same(&format!("{tag} via stdout"), &piped.stdout, &read_file(&theirs));
    let verify = bootfarm(&["vdisk", "verify", img.to_str().unwrap()]);
    assert!(verify.status.success(), "verify {tag}: {}", String::from_utf8_lossy(&verify.stderr));
}

#[test]
fn qemu_made_images_export_like_qemu_reads_them() {
    let dir = TempDir::new("qemu-made");
    let src = make_source(&dir);
    let s = src.to_str().unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("vhd-dynamic.vhd", &["-O", "vpc", "-o", "subformat=dynamic"]),
        ("vhd-fixed.vhd", &["-O", "vpc", "-o", "subformat=fixed"]),
        ("vhd-dynamic-force.vhd", &["-O", "vpc", "-o", "subformat=dynamic,force_size=on"]),
        ("vhdx-1m.vhdx", &["-O", "vhdx", "-o", "block_size=1M"]),
        ("vhdx-8m.vhdx", &["-O", "vhdx", "-o", "block_size=8M"]),
        ("vhdx-32m.vhdx", &["-O", "vhdx", "-o", "block_size=32M"]),
        ("vhdx-256m.vhdx", &["-O", "vhdx", "-o", "block_size=256M"]),
        ("vhdx-fixed.vhdx", &["-O", "vhdx", "-o", "subformat=fixed,block_size=2M"]),
        ("disk.raw", &["-O", "raw"]),
    ];
    for (name, args) in cases {
        let img = dir.join(name);
        let mut a = vec!["convert", "-f", "raw"];
        a.extend_from_slice(args);
        a.extend([s, img.to_str().unwrap()]);
        qemu_img(&a);
        let fmt = if name.ends_with(".vhd") {
            "vpc"
        } else if name.ends_with(".vhdx") {
            "vhdx"
        } else {
            "raw"
        };
        export_equals_qemu(&img, fmt, &dir, name);
    }
}

/// Builds a chain of `depth` images (base first) with writes in each, checks every prefix of
/// it against libvhdi and returns the paths newest first.
fn build_chain(dir: &TempDir, base: &Path, ext: &str, depth: usize, sector: u64) -> Vec<std::path::PathBuf> {
    let mut chain = vec![base.to_path_buf()];
    for level in 1..depth {
        let child = dir.join(&format!("v{level}.{ext}"));
        let out = bootfarm(&["vdisk", "new-version", chain.last().unwrap().to_str().unwrap(), "-o", child.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // Writes: one inside a block, one across a block boundary, one sector at the end.
        for (k, off) in [(0u64, 5 * sector), (1, 2 * MIB - 3 * sector), (2, 16 * MIB - sector)] {
            let data = pattern(100 * level as u64 + k, off, (7 * sector) as usize);
            let data = if off + data.len() as u64 > 16 * MIB { &data[..sector as usize] } else { &data[..] };
            let f = dir.join("w.bin");
            std::fs::write(&f, data).unwrap();
            let out = bootfarm(&[
                "vdisk",
                "write",
                child.to_str().unwrap(),
                "--offset",
                &(off + level as u64 * sector).min(16 * MIB - data.len() as u64).to_string(),
                "--from",
                f.to_str().unwrap(),
            ]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        chain.push(child);
    }
    chain.reverse();
    chain
}

fn check_chain_against_libvhdi(dir: &TempDir, chain: &[std::path::PathBuf], tag: &str) {
    let ours = dir.join(&format!("{tag}.ours.raw"));
    let theirs = dir.join(&format!("{tag}.libvhdi.raw"));
    let out = bootfarm(&["vdisk", "export", chain[0].to_str().unwrap(), "-o", ours.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let refs: Vec<&Path> = chain.iter().map(|p| p.as_path()).collect();
    libvhdi_export(&refs, &theirs);
    assert_same(tag, &read_file(&ours), &read_file(&theirs));
    let verify = bootfarm(&["vdisk", "verify", chain[0].to_str().unwrap()]);
    assert!(verify.status.success(), "verify {tag}: {}", String::from_utf8_lossy(&verify.stderr));
    let inspect = String::from_utf8(bootfarm(&["vdisk", "inspect", chain[0].to_str().unwrap()]).stdout).unwrap();
    assert!(inspect.contains(&format!("chain: {} image(s)", chain.len())), "{inspect}");

    // Merged into each format, the chain reads the same in libvhdi and, where it supports the
    // format (not 4096-byte sectors), in qemu-img.
    let qemu_reads_it = !tag.contains("4k");
    for ext in ["vhdx", "vhd", "raw"] {
        let merged = dir.join(&format!("{tag}.merged.{ext}"));
        let out = bootfarm(&["vdisk", "merge", chain[0].to_str().unwrap(), "-o", merged.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        if ext == "raw" {
            assert_same(&format!("{tag} merged to raw"), &read_file(&merged), &read_file(&theirs));
        } else {
            let l = dir.join(&format!("{tag}.merged.{ext}.libvhdi.raw"));
            libvhdi_export(&[merged.as_path()], &l);
            assert_same(&format!("{tag} merged to {ext}, read by libvhdi"), &read_file(&l), &read_file(&theirs));
        }
        if qemu_reads_it {
            let q = dir.join(&format!("{tag}.merged.{ext}.qemu.raw"));
            let fmt = if ext == "vhd" { "vpc" } else { ext };
            qemu_img(&["convert", "-f", fmt, "-O", "raw", merged.to_str().unwrap(), q.to_str().unwrap()]);
            assert_same(&format!("{tag} merged to {ext}, read by qemu-img"), &read_file(&q), &read_file(&theirs));
        }
        let again = bootfarm(&["vdisk", "merge", chain[0].to_str().unwrap(), "-o", merged.to_str().unwrap()]);
        assert!(!again.status.success(), "merge must refuse to overwrite");
    }
}

#[test]
fn vhdx_chain_of_depth_4_reads_like_libvhdi() {
    let dir = TempDir::new("vhdx-chain");
    // Base made by qemu-img from a patterned source, then three versions by bootfarm.
    let src = dir.join("src.raw");
    std::fs::File::create(&src).unwrap().set_len(16 * MIB).unwrap();
    write_at(&src, 0, &pattern(1, 0, 3 * MIB as usize));
    write_at(&src, 9 * MIB, &pattern(2, 9 * MIB, 4096));
    let base = dir.join("base.vhdx");
    qemu_img(&["convert", "-f", "raw", "-O", "vhdx", "-o", "block_size=1M", src.to_str().unwrap(), base.to_str().unwrap()]);
    let chain = build_chain(&dir, &base, "avhdx", 4, 512);
    check_chain_against_libvhdi(&dir, &chain, "vhdx-chain");
}

#[test]
fn vhdx_4k_sector_chain_reads_like_libvhdi() {
    let dir = TempDir::new("vhdx-4k");
    let base = dir.join("base.vhdx");
    let out = bootfarm(&["vdisk", "create", base.to_str().unwrap(), "--size", "16M", "--block-size", "2M", "--sector-size", "4096"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let f = dir.join("b.bin");
    std::fs::write(&f, pattern(9, 0, 3 * 4096)).unwrap();
    assert!(bootfarm(&["vdisk", "write", base.to_str().unwrap(), "--offset", "8192", "--from", f.to_str().unwrap()]).status.success());
    let unaligned = bootfarm(&["vdisk", "write", base.to_str().unwrap(), "--offset", "512", "--from", f.to_str().unwrap()]);
    assert!(!unaligned.status.success() && String::from_utf8_lossy(&unaligned.stderr).contains("not aligned to the 4096-byte sector"));
    let chain = build_chain(&dir, &base, "avhdx", 3, 4096);
    check_chain_against_libvhdi(&dir, &chain, "vhdx-4k");
}

#[test]
fn vhd_chain_of_depth_4_reads_like_libvhdi() {
    let dir = TempDir::new("vhd-chain");
    let src = dir.join("src.raw");
    std::fs::File::create(&src).unwrap().set_len(16 * MIB).unwrap();
    write_at(&src, MIB, &pattern(3, MIB, 5 * MIB as usize));
    let base = dir.join("base.vhd");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vpc",
        "-o",
        "subformat=dynamic,force_size=on",
        src.to_str().unwrap(),
        base.to_str().unwrap(),
    ]);
    let chain = build_chain(&dir, &base, "avhd", 4, 512);
    check_chain_against_libvhdi(&dir, &chain, "vhd-chain");
}
