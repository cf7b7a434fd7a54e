//! Helpers for the integration tests: the built binary, private temp folders, deterministic
//! patterns, and running the independent peers (qemu-img, python3-libvhdi) with clear failures
//! when one is missing (`.ci/run` installs them all).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod busybox;
pub mod iscsi;
pub mod lab;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bootfarm"))
}

/// A folder removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("bootfarm-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command; panics with its output if it fails or cannot start.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (the test needs it; .ci/run installs it)"));
    if !out.status.success() {
        panic!("{cmd:?} failed ({}):\n{}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    out
}

pub fn bootfarm(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("run bootfarm")
}

pub fn qemu_img(args: &[&str]) -> Output {
    run(Command::new("qemu-img").args(args))
}

/// Deterministic bytes for `[off, off+len)`; different seeds give different content.
pub fn pattern(seed: u64, off: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let x = ((off + i) / 8) ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z >> (8 * ((off + i) % 8))) as u8 | 1
        })
        .collect()
}

pub fn write_at(path: &Path, off: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, off).unwrap();
}

pub fn read_file(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Exports a chain (newest first) with python3-libvhdi, an independent VHD/VHDX reader.
pub fn libvhdi_export(chain: &[&Path], out: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/libvhdi_export.py");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(script).arg(out).args(chain);
    run(&mut cmd);
}

/// Asserts two byte strings are equal, reporting the first difference instead of megabytes.
pub fn assert_same(what: &str, a: &[u8], b: &[u8]) {
    if a.len() != b.len() {
        panic!("{what}: lengths differ: {} vs {}", a.len(), b.len());
    }
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!("{what}: first difference at byte {i}: {:#04x} vs {:#04x}", a[i], b[i]);
    }
}

/// A port free for both TCP and UDP on 127.0.0.1 right now (the OS may hand it out again
/// later; tests start their server immediately).
pub fn free_port() -> u16 {
    loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A running `bootfarm serve`, its log lines, killed when dropped.
pub struct Server {
    pub child: std::process::Child,
    pub lines: std::sync::mpsc::Receiver<String>,
    pub seen: std::cell::RefCell<Vec<String>>,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(Command::new(bin()).arg("serve").args(args))
    }

    /// Starts `cmd`, a command line that ends in `bootfarm serve ...` (behind prlimit, say).
    /// iSCSI is turned off (`--iscsi-port 0`) unless the command names its port: its default,
    /// 3260, would be taken by the first of the tests running at once and refused to the others.
    pub fn start_with(cmd: &mut Command) -> Server {
        use std::io::BufRead;
        if !cmd.get_args().any(|a| a == "--iscsi-port") {
            cmd.args(["--iscsi-port", "0"]);
        }
        let mut child =
            cmd.args(["--log", "info"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let s = Server { child, lines, seen: Default::default() };
        s.wait_for("engine started");
        s
    }

    /// Waits (20 s at most) for a log line containing `what`, searching lines already seen too.
    pub fn wait_for(&self, what: &str) -> String {
        if let Some(l) = self.seen.borrow().iter().find(|l| l.contains(what)) {
            return l.clone();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(l) = self.lines.recv_timeout(std::time::Duration::from_millis(50)) {
                self.seen.borrow_mut().push(l.clone());
                if l.contains(what) {
                    return l;
                }
            }
        }
        panic!("no log line containing {what:?} within 20 s; saw:\n{}", self.seen.borrow().join("\n"));
    }

    /// Every line logged so far (drains the pipe without waiting).
    pub fn log(&self) -> String {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.borrow_mut().push(l);
        }
        self.seen.borrow().join("\n")
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The NBD fixed-newstyle handshake on a connected stream, with NBD_OPT_GO for `export`: the
/// export's size, or the error reply (its type and message). The tests' raw clients use it.
pub fn nbd_go(s: &mut std::net::TcpStream, export: &str) -> Result<u64, (u32, String)> {
    use bootfarm::nbd::wire;
    use std::io::{Read, Write};
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
    let mut size = 0;
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let mut d = vec![0u8; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
        s.read_exact(&mut d).unwrap();
        match kind {
            wire::REP_ACK => return Ok(size),
            wire::REP_INFO if d.len() >= 10 && u16::from_be_bytes([d[0], d[1]]) == wire::INFO_EXPORT => {
                size = u64::from_be_bytes(d[2..10].try_into().unwrap());
            }
            wire::REP_INFO => {}
            other => return Err((other, String::from_utf8_lossy(&d).into_owned())),
        }
    }
}

/// An NBD request (simple, no flags) with its payload, as a client writes it.
pub fn nbd_request(kind: u16, cookie: u64, offset: u64, length: u32, payload: &[u8]) -> Vec<u8> {
    let mut r = bootfarm::nbd::wire::REQUEST_MAGIC.to_be_bytes().to_vec();
    r.extend_from_slice(&0u16.to_be_bytes());
    r.extend_from_slice(&kind.to_be_bytes());
    r.extend_from_slice(&cookie.to_be_bytes());
    r.extend_from_slice(&offset.to_be_bytes());
    r.extend_from_slice(&length.to_be_bytes());
    r.extend_from_slice(payload);
    r
}

/// Debian's newest installed kernel with its modules: (vmlinuz, /lib/modules/<version>).
pub fn debian_kernel() -> (PathBuf, PathBuf) {
    let mut found: Vec<(PathBuf, PathBuf)> = std::fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version = name.strip_prefix("vmlinuz-")?;
            let mods = Path::new("/lib/modules").join(version);
            mods.join("modules.dep").exists().then(|| (e.path(), mods))
        })
        .collect();
    found.sort();
    found.pop().expect("no /boot/vmlinuz-* with /lib/modules/<version>/modules.dep: apt install linux-image-amd64 (.ci/run does)")
}

/// Polls `f` every 100 ms until it holds; panics naming `what` after `secs` seconds.
pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("not within {secs} s: {what}");
}

/// Runs QEMU under TCG with its serial port on a pipe and SeaBIOS copying its text console to
/// that port (iPXE's output reaches the test), `memory_mib` of RAM and `args` added, until it
/// exits or `limit` passes (then it is killed); returns its exit status (None when killed) and
/// the serial output. `sercon` is a scratch file for the SeaBIOS switch.
pub fn run_qemu(sercon: &Path, memory_mib: u32, args: &[&str], limit: std::time::Duration) -> (Option<std::process::ExitStatus>, String) {
    use std::io::Read;
    std::fs::write(sercon, [0xf8u8, 0x03]).unwrap(); // SeaBIOS: copy the text console to COM1
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", &memory_mib.to_string(), "-display", "none", "-vga", "none", "-nodefaults", "-monitor", "none"])
        .args(["-serial", "stdio", "-fw_cfg", &format!("name=etc/sercon-port,file={}", sercon.display())])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 (Debian qemu-system-x86 + ipxe-qemu; .ci/run installs them)");
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    (status, reader.join().unwrap())
}
