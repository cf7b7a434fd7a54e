//! `bootfarm serve --demo`: a complete store generated into a fresh temporary folder, so a
//! newcomer can try every protocol without a config file, root, or images of their own.
//! The vDisk is a two-version VHDX chain whose boot sector prints a marker on the first serial
//! port and powers QEMU off through isa-debug-exit (exit status 33).

use crate::config::{self, Config, Mode, VdiskEntry};
use crate::image::write::{create_vhdx, new_version_of, Writer};
use std::path::{Path, PathBuf};

/// What the demo's boot sector prints on COM1.
pub const BOOT_MARKER: &str = "bootfarm demo vdisk booted";
pub const VDISK_NAME: &str = "demo";
pub const VDISK_BYTES: u64 = 16 << 20;
pub const BOOTSTRAP_NAME: &str = "bootstrap.bin";
pub const BOOTSTRAP_BYTES: usize = 1 << 20;
/// A PXE network bootstrap program: the boot sector alone (PXE loads NBPs at 0:7C00 too).
pub const NBP_NAME: &str = "bootsect.0";

/// Real-mode boot sector: print BOOT_MARKER on COM1 (0x3F8), then write 0x10 to port 0xF4.
pub fn boot_sector() -> [u8; 512] {
    let mut s = [0u8; 512];
    #[rustfmt::skip]
    let code: [u8; 29] = [
        0xFA,             // cli
        0xFC,             // cld
        0x31, 0xC0,       // xor ax, ax
        0x8E, 0xD8,       // mov ds, ax
        0xBE, 0x1D, 0x7C, // mov si, 0x7C1D (message)
        0xBA, 0xF8, 0x03, // mov dx, 0x3F8
        0xAC,             // .loop: lodsb
        0x84, 0xC0,       // test al, al
        0x74, 0x03,       // jz .done
        0xEE,             // out dx, al
        0xEB, 0xF8,       // jmp .loop
        0xBA, 0xF4, 0x00, // .done: mov dx, 0xF4
        0xB0, 0x10,       // mov al, 0x10
        0xEE,             // out dx, al
        0xF4,             // hlt
        0xEB, 0xFD,       // jmp hlt
    ];
    s[..code.len()].copy_from_slice(&code);
    let msg = format!("\r\n{BOOT_MARKER}\r\n\0");
    s[code.len()..code.len() + msg.len()].copy_from_slice(msg.as_bytes());
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

/// Deterministic bootstrap content, so clients can check what they received.
pub fn bootstrap_bytes() -> Vec<u8> {
    let mut x: u32 = 0x2545_F491;
    (0..BOOTSTRAP_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Writes the demo store under `dir` and returns the configuration that serves it.
pub fn write_store(dir: &Path, http_port: u16) -> Result<Config, String> {
    let boot = dir.join("boot");
    let vdisks = dir.join("vdisks");
    for d in [&boot, &vdisks, &dir.join("cache")] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: cannot create: {e}", d.display()))?;
    }
    let write = |p: PathBuf, data: &[u8]| std::fs::write(&p, data).map_err(|e| format!("{}: cannot write: {e}", p.display()));
    write(boot.join(BOOTSTRAP_NAME), &bootstrap_bytes())?;
    write(boot.join(NBP_NAME), &boot_sector())?;
    write(
        boot.join("demo.ipxe"),
        format!("#!ipxe\necho bootfarm demo: booting vdisk {VDISK_NAME}\nsanboot http://${{next-server}}:{http_port}/vdisk/{VDISK_NAME}\n")
            .as_bytes(),
    )?;
    // Base version: the boot sector and a text block; version 2 adds a block of its own.
    let base = vdisks.join("demo.1.vhdx");
    let top = vdisks.join("demo.2.avhdx");
    create_vhdx(&base, VDISK_BYTES, 1 << 20, 512, None).map_err(|e| e.to_string())?;
    let mut w = Writer::open(&base).map_err(|e| e.to_string())?;
    w.write(0, &boot_sector()).map_err(|e| e.to_string())?;
    let mut text = b"bootfarm demo vdisk, version 1\n".to_vec();
    text.resize(4096, 0);
    w.write(1 << 20, &text).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    new_version_of(&base, &top).map_err(|e| e.to_string())?;
    let mut w = Writer::open(&top).map_err(|e| e.to_string())?;
    let mut text = b"bootfarm demo vdisk, version 2\n".to_vec();
    text.resize(4096, 0);
    w.write(2 << 20, &text).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;

    let mut c = Config::default();
    c.server.name = "demo".into();
    c.server.tftp_port = 6969;
    c.server.http_port = http_port;
    c.server.nbd_port = 10809;
    c.server.iscsi_port = 3260;
    c.tftp.root = boot;
    c.nbd.cache_dir = dir.join("cache");
    // Every demo client comes from 127.0.0.1: let a local boot storm through.
    c.tftp.sessions_per_ip_max = 1024;
    c.tftp.requests_per_ip_per_s = 1_000_000;
    c.tftp.requests_per_ip_burst = 1_000_000;
    c.http.connections_per_ip_max = 1024;
    c.nbd.connections_per_ip_max = 1024;
    c.iscsi.connections_per_ip_max = 1024;
    c.vdisk.push(VdiskEntry { name: VDISK_NAME.into(), path: top, mode: Mode::Standard, linux: None, sanboot: config::Sanboot::Http });
    Ok(c)
}

/// A fresh private folder for the demo store (removed by the caller at exit).
pub fn temp_dir() -> Result<PathBuf, String> {
    let base = std::env::temp_dir();
    for i in 0..100u32 {
        let d = base.join(format!("bootfarm-demo-{}-{i}", std::process::id()));
        match std::fs::create_dir(&d) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("{}: cannot create: {e}", d.display())),
        }
    }
    Err("cannot find a free name for the demo folder".into())
}

/// Builds the demo snapshot (generation 1) from a store written by `write_store`.
pub fn snapshot(dir: &Path, c: Config) -> Result<config::Snapshot, String> {
    config::build(&dir.join("(demo)"), dir, c, 1, None).map_err(|e| e.to_string())
}
