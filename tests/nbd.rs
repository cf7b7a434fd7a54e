//! NBD against the running binary: nbdinfo lists the exports, nbdcopy and qemu-img read them
//! exactly as `vdisk export` does, and a raw client checks the protocol's negative space
//! (unknown exports, reads past the end or too large, writes on a read-only export, bad magic).

mod common;
use bootfarm::nbd::wire;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

struct Fixture {
    dir: TempDir,
    _server: Server,
    port: u16,
}

fn fixture(extra: &str) -> Fixture {
    let dir = TempDir::new("nbd");
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
    let port = free_port();
    let cfg = format!(
        "[server]\ntftp_port = {}\nhttp_port = {}\nnbd_port = {port}\n[tftp]\nroot = \"boot\"\n[nbd]\ncache_dir = \"cache\"\n{extra}\n[[vdisk]]\nname = \"chain\"\npath = \"v2.avhdx\"\n[[vdisk]]\nname = \"base\"\npath = \"base.vhdx\"\n",
        free_port(),
        free_port()
    );
    std::fs::write(dir.join("bootfarm.toml"), cfg).unwrap();
    let server = Server::start(&["--config", dir.join("bootfarm.toml").to_str().unwrap()]);
    Fixture { dir, _server: server, port }
}

fn export(f: &Fixture, file: &str) -> Vec<u8> {
    let p = f.dir.join(&format!("{file}.export"));
    assert!(bootfarm(&["vdisk", "export", f.dir.join(file).to_str().unwrap(), "-o", p.to_str().unwrap()]).status.success());
    read_file(&p)
}

#[test]
fn nbdinfo_nbdcopy_and_qemu_img_read_the_exports() {
    let f = fixture("");
    let list = String::from_utf8(run(Command::new("nbdinfo").args(["--list", &format!("nbd://127.0.0.1:{}", f.port)])).stdout).unwrap();
    assert!(list.contains("export=\"chain\"") && list.contains("export=\"base\""), "{list}");
    assert!(list.contains("is_read_only: false") && list.contains("export-size: 12582912"), "{list}");
    for (name, file) in [("chain", "v2.avhdx"), ("base", "base.vhdx"), ("", "v2.avhdx")] {
        let out = f.dir.join(&format!("copy-{name}.raw"));
        run(Command::new("nbdcopy").args([&format!("nbd://127.0.0.1:{}/{name}", f.port), out.to_str().unwrap()]));
        assert_same(&format!("nbdcopy of {name:?}"), &read_file(&out), &export(&f, file));
    }
    let raw = f.dir.join("chain.raw");
    std::fs::write(&raw, export(&f, "v2.avhdx")).unwrap();
    let cmp = run(Command::new("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        raw.to_str().unwrap(),
        &format!("nbd://127.0.0.1:{}/chain", f.port),
    ]));
    assert!(String::from_utf8_lossy(&cmp.stdout).contains("identical"));
    let bad = Command::new("nbdinfo").arg(format!("nbd://127.0.0.1:{}/nope", f.port)).output().unwrap();
    assert!(!bad.status.success(), "an unknown export is refused");
}

/// A minimal fixed-newstyle client: handshake with GO, then raw requests.
struct Raw(TcpStream);

impl Raw {
    fn go(port: u16, export: &str) -> Raw {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut g = [0u8; 18];
        s.read_exact(&mut g).unwrap();
        assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
        s.write_all(&3u32.to_be_bytes()).unwrap();
        let mut o = wire::IHAVEOPT.to_be_bytes().to_vec();
        o.extend_from_slice(&wire::OPT_GO.to_be_bytes());
        o.extend_from_slice(&(6 + export.len() as u32).to_be_bytes());
        o.extend_from_slice(&(export.len() as u32).to_be_bytes());
        o.extend_from_slice(export.as_bytes());
        o.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&o).unwrap();
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h).unwrap();
            let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let mut d = vec![0u8; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
            s.read_exact(&mut d).unwrap();
            match kind {
                wire::REP_ACK => return Raw(s),
                wire::REP_INFO => {}
                other => panic!("GO answered {other:#x}"),
            }
        }
    }
    fn request(&mut self, kind: u16, cookie: u64, offset: u64, length: u32, payload: &[u8]) -> (u32, u64) {
        let mut r = wire::REQUEST_MAGIC.to_be_bytes().to_vec();
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&kind.to_be_bytes());
        r.extend_from_slice(&cookie.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&length.to_be_bytes());
        r.extend_from_slice(payload);
        self.0.write_all(&r).unwrap();
        let mut h = [0u8; 16];
        self.0.read_exact(&mut h).unwrap();
        assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), wire::SIMPLE_REPLY_MAGIC);
        (u32::from_be_bytes(h[4..8].try_into().unwrap()), u64::from_be_bytes(h[8..16].try_into().unwrap()))
    }
}

#[test]
fn protocol_negative_space() {
    let f = fixture("request_bytes_max = 65536");
    let want = export(&f, "v2.avhdx");
    let mut c = Raw::go(f.port, "chain");
    // A read across the block boundary where the version wrote: the chain's bytes.
    assert_eq!(c.request(wire::CMD_READ, 1, 2093056 - 512, 4096, &[]), (0, 1));
    let mut d = vec![0u8; 4096];
    c.0.read_exact(&mut d).unwrap();
    assert_same("raw READ", &d, &want[2093056 - 512..2093056 + 3584]);
    // Past the end, too large, writes on a read-only export: errors, and the stream stays in step.
    assert_eq!(c.request(wire::CMD_READ, 2, 12 << 20, 512, &[]), (wire::EINVAL, 2));
    assert_eq!(c.request(wire::CMD_READ, 3, 0, 65537, &[]), (wire::EOVERFLOW, 3));
    assert_eq!(c.request(wire::CMD_WRITE, 4, (12 << 20) - 512, 1024, &[7u8; 1024]), (wire::EINVAL, 4));
    assert_eq!(c.request(wire::CMD_FLUSH, 5, 0, 0, &[]), (0, 5));
    assert_eq!(c.request(wire::CMD_READ, 6, 0, 512, &[]), (0, 6));
    let mut d = vec![0u8; 512];
    c.0.read_exact(&mut d).unwrap();
    assert_same("READ after the errors", &d, &want[..512]);
    // Bad request magic: the server ends the connection.
    c.0.write_all(&[0u8; 28]).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(c.0.read(&mut b).unwrap_or(0), 0);
    // An unknown export in GO: NBD_REP_ERR_UNKNOWN, and the client may try another.
    let mut s = TcpStream::connect(("127.0.0.1", f.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut o = wire::IHAVEOPT.to_be_bytes().to_vec();
    o.extend_from_slice(&wire::OPT_GO.to_be_bytes());
    o.extend_from_slice(&10u32.to_be_bytes());
    o.extend_from_slice(&4u32.to_be_bytes());
    o.extend_from_slice(b"nope");
    o.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&o).unwrap();
    let mut h = [0u8; 20];
    s.read_exact(&mut h).unwrap();
    assert_eq!(u32::from_be_bytes(h[12..16].try_into().unwrap()), wire::REP_ERR_UNKNOWN);
}

#[test]
fn connection_limit() {
    let f = fixture("connections_max = 1");
    let _first = Raw::go(f.port, "chain");
    let mut s = TcpStream::connect(("127.0.0.1", f.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut b = [0u8; 18];
    assert_eq!(s.read(&mut b).unwrap_or(0), 0, "the connection beyond nbd.connections_max is closed");
}
