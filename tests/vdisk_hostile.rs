//! Corrupt and hostile images: each must be refused with an error that names the file and the
//! defect, with exit status 1 (never a panic, which would exit 101), by `verify`, `inspect`
//! and `export` alike.

mod common;
use bootfarm::image::bytes::{crc32c_zeroed, put_le32};
use bootfarm::image::write::{create_vhdx, ParentInfo};
use common::*;
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

fn refused(img: &Path, expect: &str) {
    for cmd in [&["vdisk", "verify"][..], &["vdisk", "inspect"][..], &["vdisk", "export"][..]] {
        let mut args: Vec<&str> = cmd.to_vec();
        args.push(img.to_str().unwrap());
        if cmd[1] == "export" {
            args.extend(["-o", "/dev/null"]);
        }
        let out = bootfarm(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?} on {}: expected a clean refusal, got {:?}\n{err}", img.display(), out.status);
        assert!(err.contains(expect), "{args:?}: expected {expect:?} in:\n{err}");
        assert!(err.contains(img.file_name().unwrap().to_str().unwrap()) || err.contains("parent"), "error must name the file:\n{err}");
    }
}

/// Our own 8 MiB VHDX (layout known: log 1 MiB, metadata 2 MiB, BAT 3 MiB) with block 0 written.
fn vhdx(dir: &TempDir, name: &str) -> PathBuf {
    let p = dir.join(name);
    assert!(bootfarm(&["vdisk", "create", p.to_str().unwrap(), "--size", "8M", "--block-size", "1M"]).status.success());
    let d = dir.join("data.bin");
    std::fs::write(&d, pattern(1, 0, 4096)).unwrap();
    assert!(bootfarm(&["vdisk", "write", p.to_str().unwrap(), "--offset", "0", "--from", d.to_str().unwrap()]).status.success());
    p
}

fn vhd(dir: &TempDir, name: &str) -> PathBuf {
    let p = dir.join(name);
    let src = dir.join("src.raw");
    std::fs::File::create(&src).unwrap().set_len(8 * MIB).unwrap();
    write_at(&src, 0, &pattern(2, 0, 4096));
    qemu_img(&["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on", src.to_str().unwrap(), p.to_str().unwrap()]);
    p
}

/// Rewrites both VHDX headers through `f`, fixing their checksums.
fn patch_headers(p: &Path, f: impl Fn(&mut [u8])) {
    let mut b = read_file(p);
    for off in [64 * 1024usize, 128 * 1024] {
        let h = &mut b[off..off + 4096];
        f(h);
        put_le32(h, 4, 0);
        let c = crc32c_zeroed(h, 4);
        put_le32(h, 4, c);
    }
    std::fs::write(p, b).unwrap();
}

#[test]
fn vhdx_defects() {
    let dir = TempDir::new("hostile-vhdx");
    let p = vhdx(&dir, "trunc.vhdx");
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(200 * 1024).unwrap();
    refused(&p, "truncated");

    let p = vhdx(&dir, "headers.vhdx");
    write_at(&p, 64 * 1024 + 100, &[0xAA]);
    write_at(&p, 128 * 1024 + 100, &[0xAA]);
    refused(&p, "no valid header");

    let p = vhdx(&dir, "regions.vhdx");
    write_at(&p, 192 * 1024 + 40, &[0x55]);
    write_at(&p, 256 * 1024 + 40, &[0x55]);
    refused(&p, "both region tables are invalid");

    let p = vhdx(&dir, "bat-eof.vhdx");
    write_at(&p, 3 * MIB + 8, &((1000 * MIB) | 6).to_le_bytes());
    refused(&p, "past the end of the file");

    let p = vhdx(&dir, "bat-overlap.vhdx");
    write_at(&p, 3 * MIB + 8, &((2 * MIB) | 6).to_le_bytes());
    refused(&p, "overlaps the image metadata");

    let p = vhdx(&dir, "bat-state.vhdx");
    write_at(&p, 3 * MIB + 8, &5u64.to_le_bytes());
    refused(&p, "invalid payload state 5");

    let p = vhdx(&dir, "huge.vhdx");
    write_at(&p, 2 * MIB + 64 * 1024 + 8, &(1u64 << 60).to_le_bytes());
    refused(&p, "exceeds the VHDX maximum");

    // An empty metadata item (length 0) whose offset lies past the region (found by fuzzing).
    let p = vhdx(&dir, "meta-empty.vhdx");
    write_at(&p, 2 * MIB + 32 + 16, &(16 * MIB as u32).to_le_bytes());
    write_at(&p, 2 * MIB + 32 + 20, &0u32.to_le_bytes());
    refused(&p, "outside the metadata region");

    let p = vhdx(&dir, "blocksize.vhdx");
    write_at(&p, 2 * MIB + 64 * 1024, &(3 * MIB as u32).to_le_bytes());
    refused(&p, "block size 3145728 is not a power of two");

    // Dirty log: a log GUID in the header and an entry carrying it in the log.
    let p = vhdx(&dir, "dirty.vhdx");
    let g = [0x42u8; 16];
    patch_headers(&p, |h| h[48..64].copy_from_slice(&g));
    let mut entry = vec![0u8; 64];
    entry[..4].copy_from_slice(b"loge");
    entry[32..48].copy_from_slice(&g);
    write_at(&p, MIB, &entry);
    refused(&p, "log holds entries");

    // Two blocks at the same offset: only the deep check of `verify` sees it.
    let p = vhdx(&dir, "overlap-blocks.vhdx");
    let e0 = u64::from_le_bytes(read_file(&p)[3 * MIB as usize..3 * MIB as usize + 8].try_into().unwrap());
    write_at(&p, 3 * MIB + 8, &e0.to_le_bytes());
    let out = bootfarm(&["vdisk", "verify", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("overlaps payload block"), "{}", String::from_utf8_lossy(&out.stderr));

    let p = dir.join("notvhdx.vhdx");
    std::fs::write(&p, vec![0u8; 4096]).unwrap();
    refused(&p, "not a VHDX image");
}

#[test]
fn vhd_defects() {
    let dir = TempDir::new("hostile-vhd");
    let p = vhd(&dir, "sum.vhd");
    let len = std::fs::metadata(&p).unwrap().len();
    write_at(&p, len - 512 + 48, &[0x7F]);
    refused(&p, "checksum mismatch");

    let p = vhd(&dir, "trunc.vhd");
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len - 512).unwrap();
    refused(&p, "copy at offset 0 is intact");

    // BAT at 1536 in qemu's layout: entry 0 points far past the end.
    let p = vhd(&dir, "bat.vhd");
    write_at(&p, 1536, &0x00FF_0000u32.to_be_bytes());
    refused(&p, "past the end of the file");

    let p = vhd(&dir, "bat-meta.vhd");
    write_at(&p, 1536, &1u32.to_be_bytes());
    refused(&p, "overlaps the image metadata");

    let p = dir.join("short.vhd");
    std::fs::write(&p, b"conectix").unwrap();
    refused(&p, "footer");
}

#[test]
fn chain_defects() {
    let dir = TempDir::new("hostile-chain");
    // Missing parent.
    let a = vhdx(&dir, "a.vhdx");
    let b = dir.join("b.avhdx");
    assert!(bootfarm(&["vdisk", "new-version", a.to_str().unwrap(), "-o", b.to_str().unwrap()]).status.success());
    let moved = dir.join("a-moved.vhdx");
    std::fs::rename(&a, &moved).unwrap();
    refused(&b, "parent image not found");
    std::fs::rename(&moved, &a).unwrap();
    assert!(bootfarm(&["vdisk", "verify", b.to_str().unwrap()]).status.success());

    // Parent changed after the version was made: its DataWriteGuid no longer matches.
    let d = dir.join("d.bin");
    std::fs::write(&d, vec![7u8; 512]).unwrap();
    assert!(bootfarm(&["vdisk", "write", a.to_str().unwrap(), "--offset", "4096", "--from", d.to_str().unwrap()]).status.success());
    refused(&b, "the parent was modified or replaced");

    // VHD parent replaced by another disk of the same name.
    let v = vhd(&dir, "v.vhd");
    let w = dir.join("w.avhd");
    assert!(bootfarm(&["vdisk", "new-version", v.to_str().unwrap(), "-o", w.to_str().unwrap()]).status.success());
    std::fs::remove_file(&v).unwrap();
    vhd(&dir, "v.vhd");
    refused(&w, "the parent was modified or replaced");

    // A loop: an image whose parent is itself (same path, matching identity).
    let l = dir.join("loop.avhdx");
    let g = [0x24u8; 16];
    create_vhdx(&l, 8 * MIB, MIB, 512, Some(&ParentInfo { path: l.clone(), id: g, timestamp: 0 })).unwrap();
    patch_headers(&l, |h| h[32..48].copy_from_slice(&g));
    refused(&l, "the chain loops");

    // Depth beyond the limit.
    let mut top = a.clone();
    let _ = std::fs::remove_file(&b);
    let fresh = vhdx(&dir, "base.vhdx");
    top.clone_from(&fresh);
    for i in 0..4 {
        let c = dir.join(&format!("c{i}.avhdx"));
        assert!(bootfarm(&["vdisk", "new-version", top.to_str().unwrap(), "-o", c.to_str().unwrap()]).status.success());
        top = c;
    }
    let out = bootfarm(&["vdisk", "verify", top.to_str().unwrap(), "--chain-depth-max", "3"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("deeper than the limit of 3"));
    assert!(bootfarm(&["vdisk", "verify", top.to_str().unwrap(), "--chain-depth-max", "5"]).status.success());

    // new-version refuses to overwrite and refuses raw parents.
    let out = bootfarm(&["vdisk", "new-version", fresh.to_str().unwrap(), "-o", top.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("exists"));
    let raw = dir.join("r.raw");
    std::fs::write(&raw, vec![0u8; 4096]).unwrap();
    let out = bootfarm(&["vdisk", "new-version", raw.to_str().unwrap(), "-o", dir.join("r2.vhdx").to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("raw image"));
}
