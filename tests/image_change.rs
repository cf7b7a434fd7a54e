//! Files that change under the server: images truncated or copied over while served (refused as
//! damaged, never a crash), images replaced the safe way (served again with the new bytes),
//! FIFOs where a file is expected (refused at once, nothing hangs).

mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn mkfifo(p: &std::path::Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", p.display());
}

/// Runs bootfarm with a deadline: a hang is a failure, not a stuck test.
fn bootfarm_within(args: &[&str], limit: Duration) -> (Option<i32>, String) {
    let mut child =
        Command::new(bin()).args(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let end = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            return (st.code(), text);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bootfarm {args:?} still running after {limit:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn config_text(tftp: u16, http: u16, nbd: u16, vdisks: &[(&str, &str)]) -> String {
    let mut s = format!(
        "[server]\ntftp_port = {tftp}\nhttp_port = {http}\nnbd_port = {nbd}\nworkers = 2\nreload_poll_ms = 50\nreload_debounce_ms = 50\n[tftp]\nroot = \"boot\"\n"
    );
    for (name, path) in vdisks {
        s.push_str(&format!("[[vdisk]]\nname = \"{name}\"\npath = \"{path}\"\n"));
    }
    s
}

#[test]
fn a_fifo_as_vdisk_or_config_is_refused_at_once_and_a_reload_to_one_keeps_serving() {
    let dir = TempDir::new("fifo");
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    std::fs::write(dir.join("a.raw"), pattern(1, 0, MIB as usize)).unwrap();
    let fifo = dir.join("pipe.vhdx");
    mkfifo(&fifo);

    let (code, out) = bootfarm_within(&["vdisk", "inspect", fifo.to_str().unwrap()], Duration::from_secs(10));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("is a FIFO") && out.contains("regular file or a block device"), "{out}");
    // A FIFO in the place of a chain's parent.
    let (base, top) = (dir.join("base.vhdx"), dir.join("v2.avhdx"));
    assert!(bootfarm(&["vdisk", "create", base.to_str().unwrap(), "--size", "8M", "--block-size", "1M"]).status.success());
    assert!(bootfarm(&["vdisk", "new-version", base.to_str().unwrap(), "-o", top.to_str().unwrap()]).status.success());
    std::fs::remove_file(&base).unwrap();
    mkfifo(&base);
    let (code, out) = bootfarm_within(&["vdisk", "inspect", top.to_str().unwrap()], Duration::from_secs(10));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("base.vhdx: is a FIFO"), "{out}");

    let (http, tftp, nbd) = (free_port(), free_port(), free_port());
    let cfg = dir.join("bootfarm.toml");
    std::fs::write(&cfg, config_text(tftp, http, nbd, &[("a", "a.raw"), ("p", "pipe.vhdx")])).unwrap();
    let (code, out) = bootfarm_within(&["config", "check", cfg.to_str().unwrap()], Duration::from_secs(10));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("vdisk[1].path") && out.contains("is a FIFO"), "{out}");

    // The other paths of a configuration: a FIFO as tftp.root or nbd.cache_dir is refused too.
    let pipe_dir = dir.join("pipe.d");
    mkfifo(&pipe_dir);
    for (what, text) in [
        ("tftp.root", config_text(tftp, http, nbd, &[("a", "a.raw")]).replace("root = \"boot\"", "root = \"pipe.d\"")),
        ("nbd.cache_dir", config_text(tftp, http, nbd, &[("a", "a.raw")]) + "[nbd]\ncache_dir = \"pipe.d\"\n"),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let (code, out) = bootfarm_within(&["config", "check", cfg.to_str().unwrap()], Duration::from_secs(10));
        assert_eq!(code, Some(1), "{what}: {out}");
        assert!(out.contains(what) && out.contains("is not a directory"), "{what}: {out}");
    }

    let cfg_fifo = dir.join("fifo.toml");
    mkfifo(&cfg_fifo);
    let (code, out) = bootfarm_within(&["config", "check", cfg_fifo.to_str().unwrap()], Duration::from_secs(10));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("is a FIFO"), "{out}");

    // Serving: a reload to a FIFO vdisk is refused, the last good configuration keeps serving,
    // and the control thread still takes SIGTERM.
    std::fs::write(&cfg, config_text(tftp, http, nbd, &[("a", "a.raw")])).unwrap();
    let mut server = Server::start(&["--config", cfg.to_str().unwrap()]);
    std::fs::write(&cfg, config_text(tftp, http, nbd, &[("a", "a.raw"), ("p", "pipe.vhdx")])).unwrap();
    let refused = server.wait_for("configuration refused");
    assert!(refused.contains("is a FIFO"), "{refused}");
    server.signal(libc::SIGHUP);
    let body = run(Command::new("curl").args(["-sS", "-r", "0-15", &format!("http://127.0.0.1:{http}/vdisk/a")])).stdout;
    assert_eq!(body, pattern(1, 0, 16));
    let t = Instant::now();
    server.signal(libc::SIGTERM);
    let end = t + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "SIGTERM did not stop the server within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}

use bootfarm::nbd::wire as nbdw;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// A minimal NBD client: GO, then simple READ replies (errors are values, never panics, so a
/// reader can keep going while the image under it changes).
struct Nbd(TcpStream);

impl Nbd {
    fn go(port: u16, export: &str) -> Result<Nbd, String> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut g = [0u8; 18];
        s.read_exact(&mut g).map_err(|e| e.to_string())?;
        s.write_all(&3u32.to_be_bytes()).map_err(|e| e.to_string())?;
        let mut o = nbdw::IHAVEOPT.to_be_bytes().to_vec();
        o.extend_from_slice(&nbdw::OPT_GO.to_be_bytes());
        o.extend_from_slice(&(6 + export.len() as u32).to_be_bytes());
        o.extend_from_slice(&(export.len() as u32).to_be_bytes());
        o.extend_from_slice(export.as_bytes());
        o.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&o).map_err(|e| e.to_string())?;
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h).map_err(|e| e.to_string())?;
            let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let mut d = vec![0u8; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
            s.read_exact(&mut d).map_err(|e| e.to_string())?;
            match kind {
                nbdw::REP_ACK => return Ok(Nbd(s)),
                nbdw::REP_INFO => {}
                other => return Err(format!("option reply {other:#x}: {}", String::from_utf8_lossy(&d))),
            }
        }
    }
    /// Ok(bytes) or Err(errno) for an error reply; Err(0) when the connection failed.
    fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        let mut r = nbdw::REQUEST_MAGIC.to_be_bytes().to_vec();
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&nbdw::CMD_READ.to_be_bytes());
        r.extend_from_slice(&7u64.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        self.0.write_all(&r).map_err(|_| 0u32)?;
        let mut h = [0u8; 16];
        self.0.read_exact(&mut h).map_err(|_| 0u32)?;
        let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
        if err != 0 {
            return Err(err);
        }
        let mut d = vec![0u8; len as usize];
        self.0.read_exact(&mut d).map_err(|_| 0u32)?;
        Ok(d)
    }
}

/// One HTTP/1.1 GET on its own connection: (status, body as received, Content-Length).
fn http_get(port: u16, path: &str, range: Option<(u64, u64)>) -> Result<(u16, Vec<u8>, u64), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = range.map(|(a, b)| format!("Range: bytes={a}-{b}\r\n")).unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{r}Connection: close\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all); // a cut-off response ends early: what came is returned
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no header")?;
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    let status = head.get(9..12).and_then(|x| x.parse().ok()).ok_or("no status")?;
    let len = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    Ok((status, all[end + 4..].to_vec(), len))
}

fn alive(server: &mut Server, http: u16) {
    assert!(server.child.try_wait().unwrap().is_none(), "the server died:\n{}", server.log());
    let (status, _, _) = http_get(http, "/healthz", None).unwrap();
    assert_eq!(status, 200, "/healthz");
}

fn count(log: &str, what: &str, also: &str) -> usize {
    log.lines().filter(|l| l.contains(what) && l.contains(also)).count()
}

/// Readers of one vdisk over NBD and HTTP ranges until stopped (bounded: 20 s, 100k reads).
fn readers(
    http: u16,
    nbd: u16,
    vdisk: &'static str,
    size: u64,
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<()>> {
    let end = Instant::now() + Duration::from_secs(20);
    let (s1, r1) = (stop.clone(), reads.clone());
    let a = std::thread::spawn(move || {
        let mut c = Nbd::go(nbd, vdisk).ok();
        for i in 0..100_000u64 {
            if s1.load(Ordering::Relaxed) || Instant::now() > end {
                break;
            }
            let off = (i * 65536 * 7) % (size - 65536);
            match c.as_mut().map(|c| c.read(off, 65536)) {
                Some(Ok(_)) | Some(Err(5)) => {}
                _ => c = Nbd::go(nbd, vdisk).ok(),
            }
            r1.fetch_add(1, Ordering::Relaxed);
        }
    });
    let b = std::thread::spawn(move || {
        for i in 0..100_000u64 {
            if stop.load(Ordering::Relaxed) || Instant::now() > end {
                break;
            }
            let off = (i * 65536 * 5) % (size - 65536);
            let _ = http_get(http, &format!("/vdisk/{vdisk}"), Some((off, off + 65535)));
            reads.fetch_add(1, Ordering::Relaxed);
        }
    });
    vec![a, b]
}

fn assert_refused(http: u16, nbd: u16, vdisk: &str, open: &mut Nbd) {
    let (status, body, _) = http_get(http, &format!("/vdisk/{vdisk}"), Some((0, 511))).unwrap();
    assert_eq!(status, 503, "HTTP /vdisk/{vdisk} of a damaged image");
    assert!(String::from_utf8_lossy(&body).contains("changed on the server"), "{}", String::from_utf8_lossy(&body));
    let e = Nbd::go(nbd, vdisk).err().expect("GO of a damaged vdisk is refused");
    assert!(e.contains(&format!("{:#x}", nbdw::REP_ERR_UNKNOWN)) && e.contains("changed on the server"), "{e}");
    assert_eq!(open.read(0, 4096).err(), Some(nbdw::EIO), "a connection opened before gets EIO");
}

#[test]
fn an_image_truncated_or_copied_over_while_served_is_refused_and_a_renamed_one_is_served() {
    let dir = TempDir::new("change");
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    let size = 4 * MIB;
    std::fs::write(dir.join("r.raw"), pattern(1, 0, size as usize)).unwrap();
    std::fs::write(dir.join("o.raw"), pattern(3, 0, MIB as usize)).unwrap();
    let src = dir.join("x.src");
    std::fs::write(&src, pattern(2, 0, size as usize)).unwrap();
    let vhdx = |from: &std::path::Path, to: &str| {
        qemu_img(&["convert", "-f", "raw", "-O", "vhdx", "-o", "block_size=1M", from.to_str().unwrap(), dir.join(to).to_str().unwrap()])
    };
    vhdx(&src, "x.vhdx");
    let (http, tftp, nbd) = (free_port(), free_port(), free_port());
    let cfg = dir.join("bootfarm.toml");
    std::fs::write(&cfg, config_text(tftp, http, nbd, &[("r", "r.raw"), ("x", "x.vhdx"), ("o", "o.raw")])).unwrap();
    let mut server = Server::start(&["--config", cfg.to_str().unwrap()]);
    server.wait_for("image content hashed"); // the hasher is what used to crash

    // 1. truncate a raw image while NBD and HTTP range reads run.
    let mut open_r = Nbd::go(nbd, "r").unwrap();
    assert_eq!(open_r.read(MIB, 4096).unwrap(), pattern(1, MIB, 4096));
    let (stop, reads) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let rs = readers(http, nbd, "r", size, stop.clone(), reads.clone());
    let t = Instant::now();
    while reads.load(Ordering::Relaxed) < 20 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::OpenOptions::new().write(true).open(dir.join("r.raw")).unwrap().set_len(MIB).unwrap();
    server.wait_for("vdisk=r file=");
    std::thread::sleep(Duration::from_millis(300)); // readers keep hitting it meanwhile
    stop.store(true, Ordering::Relaxed);
    rs.into_iter().for_each(|r| r.join().unwrap());
    alive(&mut server, http);
    assert_refused(http, nbd, "r", &mut open_r);
    let (status, body, _) = http_get(http, "/vdisk/o", Some((0, 4095))).unwrap();
    assert_eq!((status, body), (206, pattern(3, 0, 4096)), "another vdisk is still served");
    let st = http_get(http, "/api/status", None).unwrap().1;
    assert!(
        String::from_utf8_lossy(&st).contains("\"name\": \"r\", \"mode\": \"standard\", \"bytes\": 4194304, \"damaged\": true"),
        "{}",
        String::from_utf8_lossy(&st)
    );

    // 2. `cp` a new VHDX over the served one (O_TRUNC, then written) while reads run.
    let mut open_x = Nbd::go(nbd, "x").unwrap();
    assert_eq!(open_x.read(0, 4096).unwrap(), pattern(2, 0, 4096));
    std::fs::write(&src, pattern(4, 0, size as usize)).unwrap();
    vhdx(&src, "x.next");
    let (stop, reads) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let rs = readers(http, nbd, "x", size, stop.clone(), reads.clone());
    std::thread::sleep(Duration::from_millis(100));
    std::fs::copy(dir.join("x.next"), dir.join("x.vhdx")).unwrap();
    server.wait_for("vdisk=x file=");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    rs.into_iter().for_each(|r| r.join().unwrap());
    alive(&mut server, http);
    assert_refused(http, nbd, "x", &mut open_x);

    let log = server.log();
    assert_eq!(count(&log, "vdisk image changed in place", "vdisk=r file="), 1, "one logged refusal per damage:\n{log}");
    assert_eq!(count(&log, "vdisk image changed in place", "vdisk=x file="), 1, "{log}");
    let m = String::from_utf8_lossy(&http_get(http, "/metrics", None).unwrap().1).into_owned();
    assert!(m.contains("bootfarm_image_files_damaged_total 2\n"), "{m}");

    // 3. The safe update: a new file renamed into place is served at once (a reload opens it).
    let new = dir.join("r.raw.new");
    std::fs::write(&new, pattern(5, 0, 2 * MIB as usize)).unwrap();
    std::fs::rename(&new, dir.join("r.raw")).unwrap();
    server.wait_for("vdisk image replaced by a new file");
    let t = Instant::now();
    loop {
        let (status, body, _) = http_get(http, "/vdisk/r", Some((MIB, MIB + 4095))).unwrap();
        if status == 206 {
            assert_eq!(body, pattern(5, MIB, 4096), "the new bytes");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the renamed image is not served: {status}\n{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(Nbd::go(nbd, "r").unwrap().read(0, 4096).unwrap(), pattern(5, 0, 4096));
    // And the copied-over one, complete now, is served again after a reload (SIGHUP).
    server.signal(libc::SIGHUP);
    let t = Instant::now();
    while http_get(http, "/vdisk/x", Some((0, 4095))).unwrap().0 != 206 {
        assert!(t.elapsed() < Duration::from_secs(10), "x not served after SIGHUP:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(Nbd::go(nbd, "x").unwrap().read(MIB, 4096).unwrap(), pattern(4, MIB, 4096));
    alive(&mut server, http);
    if std::env::var("SHOWLOG").is_ok() {
        eprintln!("{}", server.log());
        eprintln!("{}", String::from_utf8_lossy(&http_get(http, "/metrics", None).unwrap().1));
    }
}

#[test]
fn a_bootstrap_file_truncated_during_tftp_and_http_transfers_ends_them_with_an_error() {
    use bootfarm::tftp::wire as tw;
    let dir = TempDir::new("boot-change");
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    let big = dir.join("boot/big.bin");
    let size = 8 * MIB as usize;
    std::fs::write(&big, pattern(6, 0, size)).unwrap();
    std::fs::write(dir.join("o.raw"), pattern(3, 0, MIB as usize)).unwrap();
    let (http, tftp, nbd) = (free_port(), free_port(), free_port());
    let cfg = dir.join("bootfarm.toml");
    std::fs::write(&cfg, config_text(tftp, http, nbd, &[("o", "o.raw")])).unwrap();
    let mut server = Server::start(&["--config", cfg.to_str().unwrap()]);

    // TFTP: a lockstep transfer, the file truncated after a few blocks.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rrq = Vec::new();
    tw::encode_rrq(&mut rrq, "big.bin", "octet", &[("blksize", "1432".to_string())]);
    sock.send_to(&rrq, ("127.0.0.1", tftp)).unwrap();
    let mut b = vec![0u8; 2000];
    let (n, tid) = sock.recv_from(&mut b).unwrap();
    assert!(matches!(tw::parse(&b[..n]), Ok(tw::Packet::Oack { .. })), "{:?}", tw::parse(&b[..n]));
    sock.send_to(&tw::encode_ack(0), tid).unwrap();
    let mut error = None;
    for block in 1u16..=6000 {
        let Ok((n, _)) = sock.recv_from(&mut b) else { break };
        match tw::parse(&b[..n]) {
            Ok(tw::Packet::Data { block: got, payload }) => {
                assert_eq!(got, block);
                if block <= 4 {
                    assert_eq!(payload, &pattern(6, (block as u64 - 1) * 1432, 1432)[..]);
                }
                if block == 4 {
                    std::fs::OpenOptions::new().write(true).open(&big).unwrap().set_len(4096).unwrap();
                }
                sock.send_to(&tw::encode_ack(block), tid).unwrap();
            }
            Ok(tw::Packet::Error { message, .. }) => {
                error = Some(String::from_utf8_lossy(message).into_owned());
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let error = error.expect("the transfer ends with an ERROR, not the whole old file");
    assert!(error.contains("changed on the server"), "{error}");
    server.wait_for("the file changed on the server");
    alive(&mut server, http);

    // HTTP /boot: a response in progress is cut off, the next one gets the file as it is now.
    std::fs::write(&big, pattern(7, 0, size)).unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", http)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A small receive window keeps most of the body in the server while the file changes.
    socket2::SockRef::from(&s).set_recv_buffer_size(64 << 10).unwrap();
    s.write_all(b"GET /boot/big.bin HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut first = vec![0u8; 64 << 10];
    s.read_exact(&mut first).unwrap();
    std::fs::OpenOptions::new().write(true).open(&big).unwrap().set_len(4096).unwrap();
    let mut rest = Vec::new();
    let t = Instant::now();
    let _ = s.read_to_end(&mut rest); // ends (closed by the server) instead of hanging
    assert!(t.elapsed() < Duration::from_secs(9), "the response was not cut off");
    assert!(first.len() + rest.len() < size, "the whole old file was not sent: {} bytes", first.len() + rest.len());
    alive(&mut server, http);
    let (status, body, _) = http_get(http, "/boot/big.bin", None).unwrap();
    assert_eq!((status, body.len()), (200, 4096));
    assert_eq!(body, pattern(7, 0, 4096));
    let m = String::from_utf8_lossy(&http_get(http, "/metrics", None).unwrap().1).into_owned();
    assert!(m.contains("bootfarm_tftp_transfers_failed_total{reason=\"file_changed\"} 1\n"), "{m}");
}

#[test]
fn files_beyond_image_mappings_max_are_refused_with_a_message() {
    let dir = TempDir::new("mappings");
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    for i in 0..20 {
        std::fs::write(dir.join(&format!("boot/f{i}")), pattern(i, 0, 5000)).unwrap();
    }
    std::fs::write(dir.join("o.raw"), pattern(3, 0, MIB as usize)).unwrap();
    let (http, tftp, nbd) = (free_port(), free_port(), free_port());
    let cfg = dir.join("bootfarm.toml");
    let text = config_text(tftp, http, nbd, &[("o", "o.raw")]).replace("[tftp]", "[image]\nmappings_max = 16\n[tftp]");
    std::fs::write(&cfg, text).unwrap();
    let mut server = Server::start(&["--config", cfg.to_str().unwrap()]);
    // 16 mappings: the vdisk and the files, each mapped by at most the 2 workers.
    let mut refused = 0;
    for i in 0..20u64 {
        let (status, body, _) = http_get(http, &format!("/boot/f{i}"), None).unwrap();
        match status {
            200 => assert_eq!(body, pattern(i, 0, 5000)),
            404 => refused += 1,
            s => panic!("f{i}: status {s}"),
        }
        if i < 7 {
            assert_eq!(status, 200, "f{i} fits under the limit");
        }
    }
    assert!(refused > 0, "21 or more mappings fit in 16");
    let line = server.wait_for("bootstrap file refused (404)");
    assert!(line.contains("image.mappings_max"), "{line}");
    let m = String::from_utf8_lossy(&http_get(http, "/metrics", None).unwrap().1).into_owned();
    assert!(m.contains(&format!("bootfarm_image_mappings_refused {refused}\n")), "{m}");
    alive(&mut server, http);
}
