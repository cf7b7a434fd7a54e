//! iSCSI against the running binary with independent initiators: libiscsi's iscsi-ls (discovery),
//! iscsi-inq (standard + VPD pages), iscsi-readcapacity16, qemu's libiscsi driver (whole-LUN
//! reads equal to `vdisk export`, writes isolated per initiator name, kept on reconnect, never in
//! the image), CHAP with the right and wrong secret, unknown IQNs; the LUN designator read raw.

mod common;
#[path = "iscsi/raw.rs"]
mod raw;
use common::iscsi::{bounded, output, text};
use common::*;
use raw::Raw;
use std::path::PathBuf;

const PREFIX: &str = "iqn.2026-12.org.bootfarm";

struct Fixture {
    dir: TempDir,
    server: Option<Server>,
    port: u16,
}

fn iqn(vdisk: &str) -> String {
    format!("{PREFIX}:{vdisk}")
}

/// A store: `base.vhdx` (12 MiB, data at the start and near 9 MiB, holes between) and `v2.avhdx`
/// over it with 8 KiB written across a block boundary; vdisks "chain" (v2), "base" and "copy"
/// (a byte copy of base.vhdx: another file, the same disk). `iscsi` is added to [iscsi]; a
/// CHAP secret is in chap.secret.
fn fixture(iscsi: &str) -> Fixture {
    let dir = TempDir::new("iscsi");
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    let src = dir.join("src.raw");
    std::fs::File::create(&src).unwrap().set_len(12 << 20).unwrap();
    write_at(&src, 0, &pattern(1, 0, 3 << 20));
    write_at(&src, 9 << 20, &pattern(2, 9 << 20, 5000));
    let base = dir.join("base.vhdx");
    qemu_img(&["convert", "-f", "raw", "-O", "vhdx", "-o", "block_size=1M", src.to_str().unwrap(), base.to_str().unwrap()]);
    let top = dir.join("v2.avhdx");
    assert!(bootfarm(&["vdisk", "new-version", base.to_str().unwrap(), "-o", top.to_str().unwrap()]).status.success());
    let w = dir.join("w.bin");
    std::fs::write(&w, pattern(3, 0, 8192)).unwrap();
    assert!(bootfarm(&["vdisk", "write", top.to_str().unwrap(), "--offset", "2093056", "--from", w.to_str().unwrap()]).status.success());
    std::fs::copy(&base, dir.join("copy.vhdx")).unwrap();
    // Used when `iscsi` turns CHAP on (the trailing newline is dropped).
    std::fs::write(dir.join("chap.secret"), "correct-horse-battery\n").unwrap();
    let port = free_port();
    let cfg = format!(
        "[server]\ntftp_port = {}\nhttp_port = {}\nnbd_port = {}\niscsi_port = {port}\n[tftp]\nroot = \"boot\"\n[nbd]\ncache_dir = \"cache\"\n[iscsi]\niqn_prefix = \"{PREFIX}\"\n{iscsi}\n[[vdisk]]\nname = \"chain\"\npath = \"v2.avhdx\"\n[[vdisk]]\nname = \"base\"\npath = \"base.vhdx\"\n[[vdisk]]\nname = \"copy\"\npath = \"copy.vhdx\"\n",
        free_port(),
        free_port(),
        free_port()
    );
    std::fs::write(dir.join("bootfarm.toml"), cfg).unwrap();
    let mut f = Fixture { dir, server: None, port };
    f.start();
    f
}

impl Fixture {
    fn start(&mut self) {
        self.server = None;
        let cfg = self.dir.join("bootfarm.toml");
        self.server = Some(Server::start(&["--config", cfg.to_str().unwrap(), "--iscsi-port", &self.port.to_string()]));
    }
    fn url(&self, vdisk: &str) -> String {
        format!("iscsi://127.0.0.1:{}/{}/0", self.port, iqn(vdisk))
    }
    fn export(&self, file: &str) -> Vec<u8> {
        let p = self.dir.join(&format!("{file}.export"));
        let o = bootfarm(&["vdisk", "export", self.dir.join(file).to_str().unwrap(), "-o", p.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        read_file(&p)
    }
    fn log(&self) -> String {
        self.server.as_ref().map(|s| s.log()).unwrap_or_default()
    }
    /// A libiscsi tool against this server; panics with its output and the server's log when
    /// it fails.
    fn tool(&self, program: &str, args: &[&str]) -> String {
        let o = output(bounded(30, program).args(args));
        assert!(o.status.success(), "{program} {args:?} failed ({}):\n{}\nserver log:\n{}", o.status, text(&o), self.log());
        text(&o)
    }
    /// qemu-io through qemu's libiscsi driver as initiator `initiator`, one command.
    fn qemu_io(&self, vdisk: &str, initiator: &str, cmd: &str) -> String {
        let o = output(bounded(60, "qemu-io").args(["--image-opts", &self.opts(vdisk, initiator), "-c", cmd]));
        let t = text(&o);
        assert!(
            o.status.success() && !t.contains("failed") && !t.contains("Pattern verification failed"),
            "qemu-io {cmd:?} as {initiator}: {t}\nserver log:\n{}",
            self.log()
        );
        t
    }
    fn opts(&self, vdisk: &str, initiator: &str) -> String {
        format!("driver=iscsi,transport=tcp,portal=127.0.0.1:{},target={},lun=0,initiator-name={initiator}", self.port, iqn(vdisk))
    }
    /// The whole LUN read by qemu-img (qemu's libiscsi driver) as `initiator`.
    fn read_lun(&self, vdisk: &str, initiator: &str) -> Vec<u8> {
        let out: PathBuf = self.dir.join(&format!("lun-{vdisk}-{}.raw", initiator.len()));
        let _ = std::fs::remove_file(&out);
        let o = output(bounded(120, "qemu-img").args([
            "convert",
            "-O",
            "raw",
            "--image-opts",
            &self.opts(vdisk, initiator),
            out.to_str().unwrap(),
        ]));
        assert!(o.status.success(), "qemu-img convert of {vdisk} as {initiator}: {}\nserver log:\n{}", text(&o), self.log());
        read_file(&out)
    }
}

/// The 16-byte NAA designator (association: logical unit) and the T10 vendor id text from
/// VPD page 0x83, read with the raw initiator.
fn designators(port: u16, vdisk: &str) -> ([u8; 16], String) {
    let mut r = Raw::login(port, "iqn.2026-12.test:vpd", Some(&iqn(vdisk)), &[]).unwrap_or_else(|e| panic!("login to {vdisk}: {e:?}"));
    let (st, d, sense) = r.scsi_in(&[0x12, 1, 0x83, 0x01, 0, 0], 256);
    assert_eq!(st, 0, "INQUIRY VPD 83: sense {sense:02x?}");
    assert_eq!(d[1], 0x83);
    let end = 4 + u16::from_be_bytes([d[2], d[3]]) as usize;
    let (mut naa, mut t10) = (None, None);
    let mut i = 4;
    while i + 4 <= end.min(d.len()) {
        let (kind, assoc, len) = (d[i + 1] & 0x0f, (d[i + 1] >> 4) & 3, d[i + 3] as usize);
        let body = &d[i + 4..i + 4 + len];
        match (kind, assoc) {
            (3, 0) => naa = Some(<[u8; 16]>::try_from(body).expect("NAA IEEE Registered Extended: 16 bytes")),
            (1, 0) => t10 = Some(String::from_utf8_lossy(body).into_owned()),
            _ => {}
        }
        i += 4 + len;
    }
    let naa = naa.unwrap_or_else(|| panic!("no NAA designator in {d:02x?}"));
    assert_eq!(naa[0] >> 4, 6, "NAA 6 (IEEE Registered Extended)");
    assert!(naa[1..].iter().any(|&b| b != 0), "a designator that is not empty");
    (naa, t10.unwrap_or_else(|| panic!("no T10 vendor id designator in {d:02x?}")))
}

#[test]
fn iscsi_ls_inq_readcapacity16_and_whole_lun_reads() {
    let mut f = fixture("");
    // Discovery: every vdisk's IQN at this portal, LUN 0 a disk of the right size.
    let ls = f.tool("iscsi-ls", &["-s", &format!("iscsi://127.0.0.1:{}", f.port)]);
    for v in ["chain", "base", "copy"] {
        assert!(ls.contains(&format!("Target:{} Portal:127.0.0.1:{},1", iqn(v), f.port)), "{v} not listed:\n{ls}");
    }
    assert!(ls.contains("Lun:0    Type:DIRECT_ACCESS (Size:11M)"), "{ls}");
    let urls = f.tool("iscsi-ls", &["--url", &format!("iscsi://127.0.0.1:{}", f.port)]);
    assert_eq!(urls.lines().filter(|l| l.starts_with("iscsi://")).count(), 3, "{urls}");

    let inq = f.tool("iscsi-inq", &[&f.url("chain")]);
    for want in
        ["Peripheral Qualifier:CONNECTED", "Peripheral Device Type:DIRECT_ACCESS", "Removable:0", "Vendor:BOOTFARM", "Product:chain"]
    {
        assert!(inq.contains(want), "{want:?} not in:\n{inq}");
    }
    let pages = f.tool("iscsi-inq", &["-e", "1", "-c", "0", &f.url("chain")]);
    for p in ["0x00", "0x80", "0x83", "0xb0", "0xb1", "0xb2"] {
        assert!(pages.contains(&format!("Page:{p} ")), "VPD page {p} not supported:\n{pages}");
        let page = u8::from_str_radix(&p[2..], 16).unwrap().to_string();
        f.tool("iscsi-inq", &["-e", "1", "-c", &page, &f.url("chain")]);
    }
    let serial = f.tool("iscsi-inq", &["-e", "1", "-c", "128", &f.url("chain")]);
    assert!(serial.contains("Unit Serial Number:["), "{serial}");
    let limits = f.tool("iscsi-inq", &["-e", "1", "-c", "176", &f.url("chain")]);
    assert!(!limits.contains("maximum transfer length:0\n"), "VPD B0 names a transfer limit:\n{limits}");

    let cap = f.tool("iscsi-readcapacity16", &[&f.url("chain")]);
    assert!(cap.contains("RETURNED LOGICAL BLOCK ADDRESS:24575") && cap.contains("LOGICAL BLOCK LENGTH IN BYTES:512"), "{cap}");
    assert!(cap.contains("Total size:12582912"), "{cap}");

    // The whole LUN as qemu's libiscsi driver reads it is what `vdisk export` writes.
    for (v, file) in [("chain", "v2.avhdx"), ("base", "base.vhdx")] {
        assert_same(&format!("LUN of {v} read by qemu-img"), &f.read_lun(v, "iqn.2026-12.test:reader"), &f.export(file));
    }
    let raw = f.dir.join("chain.raw");
    std::fs::write(&raw, f.export("v2.avhdx")).unwrap();
    let cmp = output(bounded(120, "qemu-img").args(["compare", "-f", "raw", raw.to_str().unwrap(), &f.url("chain")]));
    assert!(text(&cmp).contains("identical"), "{}", text(&cmp));

    // VPD 0x83: one designator per disk, never empty; "copy" is another file holding the same
    // bytes under another name: another LUN. The same after a restart.
    let (chain, t10) = designators(f.port, "chain");
    assert_eq!(t10, "BOOTFARMchain");
    let (base, _) = designators(f.port, "base");
    let (copy, _) = designators(f.port, "copy");
    assert!(chain != base && base != copy && chain != copy, "designators unique per vdisk: {chain:02x?} {base:02x?} {copy:02x?}");
    f.start();
    assert_eq!(designators(f.port, "chain").0, chain, "designator stable across a restart");
    assert_eq!(designators(f.port, "base").0, base);

    let bad = output(bounded(30, "iscsi-inq").arg(format!("iscsi://127.0.0.1:{}/{}/0", f.port, iqn("nope"))));
    assert!(!bad.status.success(), "an unknown IQN is refused: {}", text(&bad));
    assert_eq!(
        Raw::login(f.port, "iqn.2026-12.test:x", Some(&iqn("nope")), &[]).err(),
        Some((2, 3)),
        "login to an unknown IQN: target not found"
    );
    assert_eq!(Raw::login(f.port, "iqn.2026-12.test:x", Some("iqn.2026-12.org.other:chain"), &[]).err(), Some((2, 3)));
}

/// Two nodes holding byte-identical replicas of a vdisk show one disk to multipath: the same
/// designator from both.
#[test]
fn replicas_on_two_nodes_have_one_designator() {
    let a = fixture("");
    let b = fixture("");
    std::fs::copy(a.dir.join("v2.avhdx"), b.dir.join("v2.avhdx")).unwrap();
    std::fs::copy(a.dir.join("base.vhdx"), b.dir.join("base.vhdx")).unwrap();
    let mut b = b;
    b.start();
    assert_eq!(designators(a.port, "chain").0, designators(b.port, "chain").0);
    assert_eq!(designators(a.port, "base").0, designators(b.port, "base").0);
}

#[test]
fn writes_are_isolated_per_initiator_kept_on_reconnect_never_in_the_image() {
    let f = fixture("");
    let images: Vec<(String, Vec<u8>)> = ["v2.avhdx", "base.vhdx"].iter().map(|n| (n.to_string(), read_file(&f.dir.join(n)))).collect();
    let (a, b) = ("iqn.2026-12.test:machine-a", "iqn.2026-12.test:machine-b");
    let m = 1u64 << 20;
    // A writes over data and over a hole; B writes elsewhere; each sees its own only.
    f.qemu_io("chain", a, &format!("write -P 0xa1 {} 65536", m));
    f.qemu_io("chain", a, &format!("write -P 0xa2 {} 4096", 6 * m));
    f.qemu_io("chain", b, &format!("write -P 0xb1 {} 8192", 7 * m));
    // Reconnects (every qemu-io is a new login) find the writes of the same name.
    f.qemu_io("chain", a, &format!("read -P 0xa1 {} 65536", m));
    f.qemu_io("chain", a, &format!("read -P 0xa2 {} 4096", 6 * m));
    f.qemu_io("chain", b, &format!("read -P 0xb1 {} 8192", 7 * m));
    f.qemu_io("chain", b, &format!("read -P 0 {} 4096", 6 * m));
    // The initiator name is case-insensitive: the same target.
    f.qemu_io("chain", &a.to_uppercase().replace("IQN.", "iqn."), &format!("read -P 0xa2 {} 4096", 6 * m));
    let export = f.export("v2.avhdx");
    let mut want_a = export.clone();
    want_a[m as usize..(m + 65536) as usize].fill(0xa1);
    want_a[(6 * m) as usize..(6 * m + 4096) as usize].fill(0xa2);
    assert_same("LUN as A sees it", &f.read_lun("chain", a), &want_a);
    let mut want_b = export.clone();
    want_b[(7 * m) as usize..(7 * m + 8192) as usize].fill(0xb1);
    assert_same("LUN as B sees it", &f.read_lun("chain", b), &want_b);
    assert_same("LUN as a third initiator sees it", &f.read_lun("chain", "iqn.2026-12.test:machine-c"), &export);
    // A's writes to "chain" are not in "base" (another vdisk, another cache).
    assert_same("base as A sees it", &f.read_lun("base", a), &f.export("base.vhdx"));
    for (n, bytes) in &images {
        assert!(read_file(&f.dir.join(n)) == *bytes, "{n} changed on disk");
    }
}

#[test]
fn chap_right_secret_logs_in_wrong_or_none_is_refused() {
    let f = fixture("chap_user = \"farmuser\"\nchap_secret_file = \"chap.secret\"");
    let url = |cred: &str| format!("iscsi://{cred}127.0.0.1:{}/{}/0", f.port, iqn("base"));
    let ok = f.tool("iscsi-inq", &[&url("farmuser%correct-horse-battery@")]);
    assert!(ok.contains("Vendor:BOOTFARM"), "{ok}");
    f.tool("iscsi-readcapacity16", &["-s", &url("farmuser%correct-horse-battery@")]);
    for cred in ["farmuser%wrong-horse-battery@", "someone%correct-horse-battery@", ""] {
        let o = output(bounded(30, "iscsi-inq").arg(url(cred)));
        assert!(!o.status.success(), "CHAP {cred:?} must be refused: {}", text(&o));
    }
    // Without CHAP the raw initiator (AuthMethod=None only) is refused with an
    // authentication failure (02 01).
    assert_eq!(Raw::login(f.port, "iqn.2026-12.test:x", Some(&iqn("base")), &[]).err().map(|e| e.0), Some(2));
    // qemu's driver with the secret reads the whole disk.
    let opts = format!(
        "driver=iscsi,transport=tcp,portal=127.0.0.1:{},target={},lun=0,user=farmuser,password=correct-horse-battery",
        f.port,
        iqn("base")
    );
    let out = f.dir.join("chap.raw");
    let o = output(bounded(120, "qemu-img").args(["convert", "-O", "raw", "--image-opts", &opts, out.to_str().unwrap()]));
    assert!(o.status.success(), "{}", text(&o));
    assert_same("LUN read with CHAP", &read_file(&out), &f.export("base.vhdx"));
}
