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
    std::fs::create_dir_all(dir.join("traces")).unwrap();
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
        "[server]\ntftp_port = {}\nhttp_port = {}\nnbd_port = {port}\n[tftp]\nroot = \"boot\"\n[nbd]\ncache_dir = \"cache\"\n{extra}\n[[vdisk]]\nname = \"chain\"\npath = \"v2.avhdx\"\n[[vdisk]]\nname = \"base\"\npath = \"base.vhdx\"\n[[vdisk]]\nname = \"priv\"\npath = \"base.vhdx\"\nmode = \"private\"\n",
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
    // Block status (structured replies + base:allocation) as nbdinfo --map sees it: the image's
    // allocated blocks are data, the rest holes; a target's write shows as data for it alone.
    let map = |export: &str| -> Vec<(u64, u64, u32)> {
        let o = run(Command::new("nbdinfo").args(["--map", &format!("nbd://127.0.0.1:{}/{export}", f.port)]));
        String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let t: Vec<&str> = l.split_whitespace().collect();
                (t[0].parse().unwrap(), t[1].parse().unwrap(), t[2].parse().unwrap())
            })
            .collect()
    };
    let m = 1u64 << 20;
    assert_eq!(map("base"), vec![(0, 3 * m, 0), (3 * m, 6 * m, 3), (9 * m, m, 0), (10 * m, 2 * m, 3)]);
    qemu_io(f.port, "base@mapper", &format!("write -P 7 {} 4096", 5 * m));
    assert_eq!(
        map("base@mapper"),
        vec![(0, 3 * m, 0), (3 * m, 2 * m, 3), (5 * m, 4096, 0), (5 * m + 4096, 4 * m - 4096, 3), (9 * m, m, 0), (10 * m, 2 * m, 3)]
    );
    assert_eq!(map("base@someone-else").len(), 4);
    let bad = Command::new("nbdinfo").arg(format!("nbd://127.0.0.1:{}/nope", f.port)).output().unwrap();
    assert!(!bad.status.success(), "an unknown export is refused");
}

/// nbd.trace_dir: nbdcopy (several connections, multi-conn) and qemu-io leave one CSV file per
/// connection, named by its target, whose header names export, target and disk size and
/// whose lines (µs since connect, op, offset, length) are the requests they sent: the reads
/// cover the whole disk, the write is there as written, times never go back.
#[test]
fn a_traced_server_writes_one_line_per_request_per_connection() {
    let f = fixture("trace_dir = \"traces\"");
    let out = f.dir.join("copy.raw");
    run(Command::new("nbdcopy").args(["--no-extents", &format!("nbd://127.0.0.1:{}/chain@tracer", f.port), out.to_str().unwrap()]));
    qemu_io(f.port, "chain@writer", "write -P 7 4096 8192");
    let size = 12u64 << 20;
    // The writer thread appends a connection's last lines after its close.
    let files = |who: &str| -> Vec<String> {
        std::fs::read_dir(f.dir.join("traces"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(&format!("-{who}.csv")))
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .collect()
    };
    let complete = |t: &String| t.lines().last().is_some_and(|l| l.contains(",d,"));
    wait_until("trace files of both clients, each ending with its disconnect", 20, || {
        let (a, b) = (files("tracer"), files("writer"));
        !a.is_empty() && a.iter().all(complete) && b.len() == 1 && b.iter().all(complete)
    });
    let mut covered = vec![false; (size / 4096) as usize];
    for t in files("tracer").iter().chain(&files("writer")) {
        let mut lines = t.lines();
        let head = lines.next().unwrap();
        assert!(head.starts_with("# bootfarm nbd trace: connection=") && head.contains(" export=chain "), "{head}");
        assert!(head.contains(&format!(" disk_bytes={size} ")) && head.contains(" client=127.0.0.1:"), "{head}");
        assert_eq!(lines.next(), Some("us,op,offset,length"));
        let mut last_us = 0u64;
        for l in lines {
            let v: Vec<&str> = l.split(',').collect();
            let [us, op, off, len] = v.as_slice() else { panic!("line {l:?}") };
            let (us, off, len): (u64, u64, u64) = (us.parse().unwrap(), off.parse().unwrap(), len.parse().unwrap());
            assert!(us >= last_us, "times never go back: {l:?} in\n{t}");
            last_us = us;
            assert!(["r", "w", "f", "d", "b"].contains(op), "{l:?}");
            if *op == "r" {
                assert!(off + len <= size && off % 4096 == 0 && len % 4096 == 0, "{l:?}");
                covered[(off / 4096) as usize..((off + len) / 4096) as usize].iter_mut().for_each(|c| *c = true);
            }
        }
    }
    assert!(covered.iter().all(|&c| c), "nbdcopy's reads, as traced, cover the whole disk");
    let w = &files("writer")[0];
    assert!(w.contains(" target=writer ") && w.lines().any(|l| l.ends_with(",w,4096,8192")), "{w}");
    assert!(http_get(&f, "/metrics").contains("bootfarm_nbd_trace_lines_dropped_total 0"));
}

/// A minimal fixed-newstyle client: handshake with GO, then raw requests.
struct Raw(TcpStream);

impl Raw {
    fn try_go(port: u16, export: &str) -> Result<Raw, (u32, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        nbd_go(&mut s, export).map(|_| Raw(s))
    }
    fn go(port: u16, export: &str) -> Raw {
        Raw::try_go(port, export).unwrap_or_else(|e| panic!("GO {export}: {e:?}"))
    }
    fn read(&mut self, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        assert_eq!(self.request(wire::CMD_READ, cookie, offset, len, &[]), (0, cookie), "READ {len} at {offset}");
        let mut d = vec![0u8; len as usize];
        self.0.read_exact(&mut d).unwrap();
        d
    }
    fn request(&mut self, kind: u16, cookie: u64, offset: u64, length: u32, payload: &[u8]) -> (u32, u64) {
        self.0.write_all(&nbd_request(kind, cookie, offset, length, payload)).unwrap();
        self.reply()
    }
    fn reply(&mut self) -> (u32, u64) {
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
    // An oversized WRITE: EOVERFLOW, its payload skipped so the stream stays in step.
    assert_eq!(c.request(wire::CMD_WRITE, 40, 0, 65537, &vec![9u8; 65537]), (wire::EOVERFLOW, 40));
    assert_eq!(c.request(wire::CMD_BLOCK_STATUS, 41, 0, 4096, &[]), (wire::EINVAL, 41), "no meta context negotiated");
    assert_eq!(c.request(77, 42, 0, 0, &[]), (wire::EINVAL, 42), "unknown command");
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

fn qemu_io(port: u16, export: &str, cmd: &str) -> String {
    let (ok, text) = qemu_io_status(port, export, cmd);
    assert!(ok, "qemu-io {cmd} on {export}: {text}");
    text
}

fn qemu_io_status(port: u16, export: &str, cmd: &str) -> (bool, String) {
    let o = Command::new("qemu-io")
        .args(["--image-opts", &format!("driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export={export}"), "-c", cmd])
        .output()
        .unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

/// qemu-io's `read -P` (it fails on a mismatch).
fn pattern_ok(port: u16, export: &str, byte: u8, off: u64, len: u64) -> bool {
    let (ok, text) = qemu_io_status(port, export, &format!("read -P {byte} {off} {len}"));
    assert!(ok != text.contains("Pattern verification failed"), "{text}");
    ok
}

#[test]
fn writes_are_per_target_and_gone_after_a_reboot() {
    let f = fixture("cache_keep_after_disconnect_ms = 1500");
    let orig = export(&f, "v2.avhdx");
    let at = 2093056 - 1024; // across the version's block boundary, unaligned
    qemu_io(f.port, "chain@aa:bb:cc:00:00:01", &format!("write -P 171 {at} 70000"));
    // The same target on a new connection (within the keep window) reads its writes...
    assert!(pattern_ok(f.port, "chain@aa:bb:cc:00:00:01", 171, at, 70000));
    // ...and every other target reads the image.
    let mut other = Raw::go(f.port, "chain@aa:bb:cc:00:00:02");
    assert_same("another target", &other.read(1, at, 70000), &orig[at as usize..at as usize + 70000]);
    let mut base = Raw::go(f.port, "base@aa:bb:cc:00:00:01");
    let want = export(&f, "base.vhdx");
    assert_same("the same target id on another vdisk", &base.read(2, at, 4096), &want[at as usize..at as usize + 4096]);
    drop((other, base));
    // The bytes around the write are untouched (copy on write of the edge blocks).
    let mut same = Raw::go(f.port, "chain@aa:bb:cc:00:00:01");
    let edge = same.read(3, at - 3072, 4096);
    assert_same("bytes before the write", &edge[..3072], &orig[(at - 3072) as usize..at as usize]);
    assert!(edge[3072..].iter().all(|&b| b == 171));
    drop(same);
    // A reconnect after the keep window is a new boot: the cache is gone.
    std::thread::sleep(Duration::from_millis(2600));
    assert!(!pattern_ok(f.port, "chain@aa:bb:cc:00:00:01", 171, at, 70000), "the write survived a reboot");
    let mut fresh = Raw::go(f.port, "chain@aa:bb:cc:00:00:01");
    assert_same("after the reboot", &fresh.read(4, at, 70000), &orig[at as usize..at as usize + 70000]);
    // Without an id in the export name the client address is the target: qemu-io writes, a raw
    // client from the same address (within the window) sees it, and the image file is untouched.
    let before = read_file(&f.dir.join("v2.avhdx"));
    qemu_io(f.port, "chain", "write -z 0 1M");
    assert_same("another target's write", &fresh.read(5, 0, 4096), &orig[..4096]);
    let mut by_ip = Raw::go(f.port, "chain");
    assert!(by_ip.read(6, 0, 1 << 20).iter().all(|&b| b == 0), "write -z reads back as zeros");
    assert!(read_file(&f.dir.join("v2.avhdx")) == before, "the shared image is never written");
}

#[test]
fn private_mode_takes_one_writer_and_writes_a_new_version() {
    let f = fixture("cache_keep_after_disconnect_ms = 0");
    let base_before = read_file(&f.dir.join("base.vhdx"));
    let mut expect = export(&f, "base.vhdx");
    let mut w = Raw::go(f.port, "priv");
    let (e, why) = Raw::try_go(f.port, "priv").err().expect("a second writer is refused");
    assert_eq!(e, wire::REP_ERR_POLICY);
    assert!(why.contains("private mode"), "{why}");
    for (i, (off, len)) in [(0u64, 4096usize), (1_000_003, 70_001), (9 << 20, 512), ((12 << 20) - 100, 100)].into_iter().enumerate() {
        let d = pattern(40 + i as u64, off, len);
        assert_eq!(w.request(wire::CMD_WRITE, i as u64, off, len as u32, &d), (0, i as u64));
        expect[off as usize..off as usize + len].copy_from_slice(&d);
    }
    assert_eq!(w.request(wire::CMD_WRITE_ZEROES, 10, 2 << 20, 1 << 20, &[]), (0, 10));
    expect[2 << 20..3 << 20].fill(0);
    assert_eq!(w.request(wire::CMD_FLUSH, 11, 0, 0, &[]), (0, 11));
    assert_same("read back in the session", &w.read(12, 0, 12 << 20), &expect);
    drop(w);
    // The session ends at disconnect: its version is complete, the base untouched.
    let mut version = None;
    for _ in 0..50 {
        version = std::fs::read_dir(&f.dir.0)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("priv.private-"));
        if version.is_some() && _server_log(&f).contains("private session ended") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let version = version.expect("a new version file");
    assert!(read_file(&f.dir.join("base.vhdx")) == base_before, "the base is never written");
    let out = f.dir.join("libvhdi.raw");
    libvhdi_export(&[&version, &f.dir.join("base.vhdx")], &out);
    assert_same("the new version read by libvhdi", &read_file(&out), &expect);
    let ours = f.dir.join("ours.raw");
    assert!(bootfarm(&["vdisk", "export", version.to_str().unwrap(), "-o", ours.to_str().unwrap()]).status.success());
    assert_same("the new version read by bootfarm", &read_file(&ours), &expect);
    // The writer gone, the next one gets in.
    drop(Raw::go(f.port, "priv"));
}

fn _server_log(f: &Fixture) -> String {
    f._server.log()
}

#[test]
fn cache_limits_overflow_and_enospc() {
    let f = fixture("cache_ram_bytes_per_target = 65536\ncache_bytes_per_target_max = 262144\ncache_bytes_total_max = 393216\ncache_keep_after_disconnect_ms = 0");
    let orig = export(&f, "v2.avhdx");
    let mut a = Raw::go(f.port, "chain@a");
    let big = pattern(7, 4096, 256 * 1024);
    // 256 KiB at 4096: 64 blocks, 16 in RAM and 48 in the overflow file.
    assert_eq!(a.request(wire::CMD_WRITE, 1, 4096, big.len() as u32, &big), (0, 1));
    assert_same(
        "RAM and overflow read back",
        &a.read(2, 0, 300 * 1024),
        &[&orig[..4096], &big[..], &orig[4096 + big.len()..300 * 1024]].concat(),
    );
    // One block more than the target may hold: ENOSPC, nothing changed, the stream in step.
    assert_eq!(a.request(wire::CMD_WRITE, 3, 1 << 20, 4096, &[9u8; 4096]), (wire::ENOSPC, 3));
    assert_same("a refused write changes nothing", &a.read(4, 1 << 20, 4096), &orig[1 << 20..(1 << 20) + 4096]);
    // Rewrites within what it holds still work.
    assert_eq!(a.request(wire::CMD_WRITE, 5, 8192, 10, &[3u8; 10]), (0, 5));
    // Another target has its own budget but meets the total: 128 KiB left of 384 KiB.
    let mut b = Raw::go(f.port, "chain@b");
    assert_eq!(b.request(wire::CMD_WRITE, 6, 0, 128 * 1024, &[5u8; 128 * 1024]), (0, 6));
    assert_eq!(b.request(wire::CMD_WRITE, 7, 1 << 20, 4096, &[5u8; 4096]), (wire::ENOSPC, 7));
    assert_same("b does not see a's writes", &b.read(8, 128 * 1024, 64 * 1024), &orig[128 * 1024..192 * 1024]);
    // a disconnects: its cache is discarded and the room comes back for b.
    drop(a);
    let (mut ok, mut refused) = (false, 2);
    for i in 0..50 {
        match b.request(wire::CMD_WRITE, 100 + i, 1 << 20, 4096, &[5u8; 4096]).0 {
            0 => {
                ok = true;
                break;
            }
            e => assert_eq!(e, wire::ENOSPC),
        }
        refused += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ok, "room freed by a discarded cache is reused");
    let m = http_get(&f, "/metrics");
    let nospace = m.lines().find(|l| l.starts_with("bootfarm_nbd_nospace_total ")).unwrap_or_default();
    assert_eq!(nospace, format!("bootfarm_nbd_nospace_total {refused}"), "ENOSPC replies are counted");
}

fn http_get(f: &Fixture, path: &str) -> String {
    let cfg = std::fs::read_to_string(f.dir.join("bootfarm.toml")).unwrap();
    let port: u16 = cfg.lines().find_map(|l| l.strip_prefix("http_port = ")).unwrap().trim().parse().unwrap();
    String::from_utf8(run(Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{port}{path}")])).stdout).unwrap()
}

#[test]
fn a_flood_beyond_the_queue_and_a_client_gone_mid_write() {
    let f = fixture("queue_depth_max = 8\ncache_keep_after_disconnect_ms = 0\nsend_zc_min_bytes = 8192");
    let orig = export(&f, "v2.avhdx");
    // A client gone half way through a WRITE payload: the server carries on.
    let mut gone = Raw::go(f.port, "chain@gone");
    gone.0.write_all(&nbd_request(wire::CMD_WRITE, 1, 0, 65536, &[1u8; 1000])).unwrap();
    drop(gone);
    // 20,000 reads sent before any reply is read: TCP pushes back at the queue limit, and every
    // reply comes, in order, with the right bytes (the batches go out with SEND_ZC here).
    let c = Raw::go(f.port, "chain");
    let mut tx = c.0.try_clone().unwrap();
    let n = 20_000u64;
    let sender = std::thread::spawn(move || {
        for i in 0..n {
            let off = (i * 7919 * 512) % ((12 << 20) - 4096);
            tx.write_all(&nbd_request(wire::CMD_READ, i, off, 4096, &[])).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut c = c;
    let mut d = vec![0u8; 4096];
    for i in 0..n {
        assert_eq!(c.reply(), (0, i));
        c.0.read_exact(&mut d).unwrap();
        let off = ((i * 7919 * 512) % ((12 << 20) - 4096)) as usize;
        assert!(d == orig[off..off + 4096], "reply {i}");
    }
    sender.join().unwrap();
}

#[test]
fn clients_that_stop_reading_or_never_finish_the_handshake_are_cut_off() {
    let f = fixture("send_timeout_ms = 400\nhandshake_timeout_ms = 300");
    // Connected, greeted, then silent: closed after the handshake timeout.
    let mut idle = TcpStream::connect(("127.0.0.1", f.port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut g = [0u8; 18];
    idle.read_exact(&mut g).unwrap();
    let t0 = std::time::Instant::now();
    let mut b = [0u8; 1];
    assert_eq!(idle.read(&mut b).unwrap_or(0), 0, "closed");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    // 64 reads of 1 MiB asked for and never read: the send stalls, the connection is cut off.
    let mut c = Raw::go(f.port, "chain");
    for i in 0..64 {
        c.0.write_all(&nbd_request(wire::CMD_READ, i, 0, 1 << 20, &[])).unwrap();
    }
    let mut cut = false;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let m = http_get(&f, "/metrics");
        if m.lines().any(|l| l == "bootfarm_nbd_timeouts_total{kind=\"send\"} 1") {
            assert!(m.lines().any(|l| l == "bootfarm_nbd_timeouts_total{kind=\"handshake\"} 1"), "{m}");
            cut = true;
            break;
        }
    }
    assert!(cut, "the stalled connection was cut off");
    // The server still serves others.
    let mut d = Raw::go(f.port, "chain");
    assert_eq!(d.read(1, 0, 512).len(), 512);
}
