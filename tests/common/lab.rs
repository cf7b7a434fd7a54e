//! The PXE lab: a real L2 segment built from network namespaces, so real firmware (qemu TCG:
//! SeaBIOS + iPXE ROM, OVMF) broadcasts DHCP on a bridge the test owns and nothing leaves the
//! machine. One namespace holds the bridge, the guests' taps and the *site* DHCP server
//! (dnsmasq, addresses only, plus router advertisements so iPXE's IPv6 wait ends at once);
//! every server under test (bootfarm nodes, a dnsmasq proxy, the test's own raw clients) gets a
//! namespace of its own joined to the bridge by a veth pair, so each can bind 0.0.0.0:67 and
//! receive the broadcasts as it would on a real segment. Everything is removed on drop, panic
//! included; every wait is bounded.
#![allow(dead_code)]

use super::TempDir;
use std::io::Read;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The segment's prefix: the bridge (site DHCP server) is .1, hosts .2-.99, leases .100-.199.
pub const NET: [u8; 3] = [10, 77, 0];
pub fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(NET[0], NET[1], NET[2], last)
}

/// Why the lab cannot be built on this machine, when the reason is one a CI machine shares
/// (no TUN device, no right to create namespaces); `None` when it can. Probed once per process.
pub fn unavailable() -> Option<String> {
    static WHY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    WHY.get_or_init(|| {
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Some("no /dev/net/tun: qemu cannot attach a guest to the lab bridge".into());
        }
        let probe = format!("bootfarm-probe-{}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &probe])
            .output()
            .unwrap_or_else(|e| panic!("cannot run `ip` ({e}): install iproute2"));
        let _ = Command::new("ip").args(["netns", "del", &probe]).stderr(Stdio::null()).status();
        if out.status.success() {
            remove_stale_namespaces();
            return None;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("Operation not permitted") || err.contains("Permission denied") {
            return Some(format!("cannot create a network namespace ({}): the lab needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN)", err.trim()));
        }
        panic!("ip netns add {probe} failed: {err}");
    })
    .clone()
}

/// Makes `cmd`'s process die with the thread that starts it (PR_SET_PDEATHSIG survives the
/// exec of `ip netns exec`): a test killed outright leaves no qemu, dnsmasq or bootfarm behind.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // Safety: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

/// Removes the namespaces of lab runs whose test process is gone (killed before its drops ran).
fn remove_stale_namespaces() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else { return };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("bflab-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        }
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    if !out.status.success() {
        panic!("{args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
}

/// A namespace joined to the bridge: a server's or a client's own network stack.
pub struct Host {
    pub ns: String,
    pub addr: Ipv4Addr,
}

impl Host {
    /// A command that runs inside this host's namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        die_with_parent(&mut c);
        c.args(["netns", "exec", &self.ns, program]);
        c
    }

    /// Runs `f` on a thread that entered this namespace: sockets it creates live there (a
    /// socket keeps its namespace after the thread ends, so `f` may return them).
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        enter_ns(&self.ns, f)
    }
}

pub fn enter_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        use std::os::fd::AsRawFd;
        // setns changes only the calling thread's namespace: the test's other threads stay out.
        let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

pub struct Lab {
    /// The bridge's namespace: br0 at .1, the taps, the site DHCP server.
    pub ns: String,
    pub dir: TempDir,
    hosts: Vec<String>,
    children: Vec<Child>,
    taps: u32,
}

impl Lab {
    /// The bridge namespace with br0 up at .1/24 and fd77::1/64 (for router advertisements).
    pub fn new(tag: &str) -> Lab {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ns = format!("bflab-{}-{n}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(Stdio::null()).status();
        sh(&["ip", "netns", "add", &ns]);
        let lab = Lab { ns: ns.clone(), dir: TempDir::new(tag), hosts: vec![], children: vec![], taps: 0 };
        let n = |a: &[&str]| {
            let mut v = vec!["ip", "-n", &ns];
            v.extend_from_slice(a);
            sh(&v);
        };
        n(&["link", "set", "lo", "up"]);
        // No STP, no forward delay, no multicast snooping: a port forwards from its first frame,
        // and IPv6 multicast (solicitations, advertisements) floods like on a dumb switch.
        n(&["link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0"]);
        n(&["addr", "add", &format!("{}/24", ip(1)), "dev", "br0"]);
        n(&["addr", "add", "fd77::1/64", "dev", "br0", "nodad"]);
        n(&["link", "set", "br0", "up"]);
        lab
    }

    /// A new namespace joined to the bridge through a veth pair, with `addr` on its eth0.
    pub fn host(&mut self, last: u8) -> Host {
        let hns = format!("{}-h{last}", self.ns);
        let _ = Command::new("ip").args(["netns", "del", &hns]).stderr(Stdio::null()).status();
        sh(&["ip", "netns", "add", &hns]);
        self.hosts.push(hns.clone());
        let side = format!("vh{last}");
        sh(&["ip", "-n", &self.ns, "link", "add", &side, "type", "veth", "peer", "name", "eth0", "netns", &hns]);
        sh(&["ip", "-n", &self.ns, "link", "set", &side, "master", "br0", "up"]);
        sh(&["ip", "-n", &hns, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &hns, "addr", "add", &format!("{}/24", ip(last)), "dev", "eth0"]);
        sh(&["ip", "-n", &hns, "link", "set", "eth0", "up"]);
        // Broadcasts to 255.255.255.255 leave through eth0 (the only route would pick it anyway;
        // this keeps a client's sendto working before any address is configured elsewhere).
        sh(&["ip", "-n", &hns, "route", "add", "255.255.255.255/32", "dev", "eth0"]);
        Host { ns: hns, addr: ip(last) }
    }

    /// The site DHCP server: dnsmasq handing out addresses from .100-.199 and nothing else (no
    /// boot options, so whatever the firmware boots comes from the server under test), plus
    /// router advertisements for fd77::/64, which end iPXE's ~16 s wait for an IPv6 router.
    pub fn site_dhcp(&mut self) {
        let leases = self.dir.join("site.leases");
        let log = self.dir.join("site-dnsmasq.log");
        let child = die_with_parent(&mut Command::new("ip"))
            .args(["netns", "exec", &self.ns, "dnsmasq", "--keep-in-foreground", "--port=0", "--interface=br0", "--bind-interfaces"])
            // Staying root keeps PR_SET_PDEATHSIG (a change of uid or gid clears it).
            .args(["--user=root", "--group=root"])
            .arg(format!("--dhcp-range={},{},255.255.255.0,10m", ip(100), ip(199)))
            .args(["--enable-ra", "--dhcp-range=fd77::,ra-only", "--dhcp-authoritative", "--log-dhcp", "--no-resolv", "--no-hosts"])
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .arg(format!("--log-facility={}", log.display()))
            .arg(format!("--pid-file={}", self.dir.join("site.pid").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dnsmasq (Debian dnsmasq; .ci/run installs it)");
        self.children.push(child);
        self.wait_udp_bound(&self.ns.clone(), 67, "the site dnsmasq");
    }

    /// Keeps `child` alive for the lab's lifetime (killed on drop).
    pub fn adopt(&mut self, child: Child) {
        self.children.push(child);
    }

    /// Waits (10 s at most) until something in `ns` listens on UDP `port`.
    pub fn wait_udp_bound(&self, ns: &str, port: u16, what: &str) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            let out = Command::new("ip").args(["netns", "exec", ns, "ss", "-Hlun"]).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            if text.lines().any(|l| l.split_whitespace().nth(3).is_some_and(|a| a.ends_with(&format!(":{port}")))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{what} did not bind UDP port {port} within 10 s");
    }

    /// A tap on the bridge for one guest; qemu (run in `self.ns`) opens it by name.
    pub fn tap(&mut self) -> String {
        let name = format!("tap{}", self.taps);
        self.taps += 1;
        sh(&["ip", "-n", &self.ns, "tuntap", "add", "dev", &name, "mode", "tap"]);
        sh(&["ip", "-n", &self.ns, "link", "set", &name, "master", "br0", "up"]);
        name
    }

    /// tcpdump on br0 writing every DHCP / PXE packet to `file` (stopped, flushed, on drop or
    /// with `Capture::stop`).
    pub fn capture(&self, file: &std::path::Path) -> Capture {
        let child = die_with_parent(&mut Command::new("ip"))
            .args(["netns", "exec", &self.ns, "tcpdump", "-i", "br0", "-U", "-s", "0", "-w"])
            .arg(file)
            .args(["udp port 67 or udp port 68 or udp port 4011"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (Debian tcpdump)");
        let mut cap = Capture { child: Some(child) };
        // tcpdump says "listening on br0" once its filter is in place.
        let mut err = cap.child.as_mut().unwrap().stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            let mut seen = Vec::new();
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(9).any(|w| w == b"listening") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("tcpdump did not start listening within 10 s");
        cap
    }

    /// Starts a qemu guest on a new tap of the bridge; its serial console is collected.
    pub fn guest(&mut self, kind: Firmware, name: &str) -> Guest {
        let mac = [0x52, 0x54, 0, 0x77, self.taps as u8 + 1, name.len() as u8];
        self.guest_with_mac(kind, name, mac)
    }

    /// A guest with a chosen MAC (a test that must know the target's placement first).
    pub fn guest_with_mac(&mut self, kind: Firmware, name: &str, mac: [u8; 6]) -> Guest {
        if !matches!(kind, Firmware::SeaBios) {
            assert!(std::path::Path::new(OVMF).exists(), "{OVMF} missing: install Debian's ovmf (.ci/run does)");
        }
        let tap = self.tap();
        let mac = mac_text(mac);
        let mut c = Command::new("ip");
        die_with_parent(&mut c);
        c.args(["netns", "exec", &self.ns, "qemu-system-x86_64", "-accel", "tcg", "-display", "none", "-vga", "none", "-nodefaults"]);
        c.args(["-monitor", "none", "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        c.args(["-netdev", &format!("tap,id=n0,ifname={tap},script=no,downscript=no")]);
        match kind {
            Firmware::SeaBios => {
                let sercon = self.dir.join("sercon");
                std::fs::write(&sercon, [0xf8u8, 0x03]).unwrap(); // SeaBIOS: text console to COM1
                c.args(["-m", "128", "-fw_cfg", &format!("name=etc/sercon-port,file={}", sercon.display())]);
                c.args(["-device", &format!("e1000,netdev=n0,mac={mac}"), "-boot", "n"]);
            }
            Firmware::OvmfPxe => {
                // romfile= empty: no iPXE ROM, so EDK2's own PXE (virtio-net: OVMF has no e1000).
                c.args(["-m", "256", "-bios", OVMF]);
                c.args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac},romfile=,bootindex=1")]);
                c.args(["-fw_cfg", "name=opt/org.tianocore/IPv6Support,string=n"]);
            }
            Firmware::OvmfHttp => {
                c.args(["-m", "256", "-bios", OVMF]);
                c.args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac},romfile=,bootindex=1")]);
                // PXE off: OVMF goes straight to HTTPv4 instead of ~128 s of PXE timeouts first.
                for k in ["IPv4PXESupport", "IPv6PXESupport", "IPv6Support"] {
                    c.args(["-fw_cfg", &format!("name=opt/org.tianocore/{k},string=n")]);
                }
            }
        }
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 (Debian qemu-system-x86, ipxe-qemu, ovmf)");
        let serial = Arc::new(Mutex::new(String::new()));
        let mut out = child.stdout.take().unwrap();
        let s = serial.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Guest { name: name.into(), mac, child, serial }
    }
}

pub const OVMF: &str = "/usr/share/qemu/OVMF.fd";

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for h in self.hosts.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", h]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Firmware {
    /// SeaBIOS with the iPXE NIC ROM (e1000): BIOS PXE.
    SeaBios,
    /// OVMF, virtio-net without a ROM: EDK2's UEFI PXE.
    OvmfPxe,
    /// OVMF with PXE disabled: EDK2's UEFI HTTP Boot.
    OvmfHttp,
}

pub struct Guest {
    pub name: String,
    pub mac: String,
    pub child: Child,
    pub serial: Arc<Mutex<String>>,
}

impl Guest {
    /// Waits until the serial console shows `what`; Err with the console text after `limit`
    /// or when qemu ended first.
    pub fn wait_for(&mut self, what: &str, limit: Duration) -> Result<(), String> {
        let t0 = Instant::now();
        loop {
            if self.serial.lock().unwrap().contains(what) {
                return Ok(());
            }
            let ended = self.child.try_wait().unwrap();
            if ended.is_some() || t0.elapsed() > limit {
                std::thread::sleep(Duration::from_millis(200)); // the reader's last bytes
                let text = self.console();
                if text.contains(what) {
                    return Ok(());
                }
                return Err(format!(
                    "guest {} ({}): {what:?} not on the serial console after {:.0?} (qemu {}):\n{text}",
                    self.name,
                    self.mac,
                    t0.elapsed(),
                    ended.map_or("still running".to_string(), |s| s.to_string())
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The serial console so far, with ANSI escapes (OVMF draws with them) removed.
    pub fn console(&self) -> String {
        strip_ansi(&self.serial.lock().unwrap())
    }

    /// Waits (`limit` at most) for qemu to end: its exit status, or None when still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            if it.peek() == Some(&'[') {
                it.next();
                while let Some(&d) = it.peek() {
                    it.next();
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c != '\r' {
            out.push(c);
        }
    }
    out
}

pub struct Capture {
    child: Option<Child>,
}

impl Capture {
    /// Stops tcpdump (SIGINT, so it flushes) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) {
                if c.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One UDP datagram out of a pcap file (Ethernet, IPv4): addresses, ports and payload.
#[derive(Debug, Clone)]
pub struct Datagram {
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub payload: Vec<u8>,
}

/// The IPv4/UDP datagrams of a classic pcap file written by tcpdump on an Ethernet link.
pub fn read_pcap(file: &std::path::Path) -> Vec<Datagram> {
    let b = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert!(b.len() >= 24 && b[..4] == [0xd4, 0xc3, 0xb2, 0xa1], "{}: not a little-endian pcap file", file.display());
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= b.len() {
        let incl = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
        let Some(frame) = b.get(at + 16..at + 16 + incl) else { break };
        at += 16 + incl;
        if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ipb = &frame[14..];
        let ihl = (ipb[0] & 0x0f) as usize * 4;
        if ipb[9] != 17 || ipb.len() < ihl + 8 {
            continue;
        }
        let total = (u16::from_be_bytes([ipb[2], ipb[3]]) as usize).min(ipb.len());
        let u = &ipb[ihl..total];
        let a = |o: usize| Ipv4Addr::new(ipb[o], ipb[o + 1], ipb[o + 2], ipb[o + 3]);
        out.push(Datagram {
            src: (a(12), u16::from_be_bytes([u[0], u[1]])),
            dst: (a(16), u16::from_be_bytes([u[2], u[3]])),
            payload: u[8..].to_vec(),
        });
    }
    out
}

/// A DHCP option's value (first occurrence) in a BOOTP packet, for the tests' checks.
pub fn dhcp_option(p: &[u8], code: u8) -> Option<&[u8]> {
    if p.len() < 240 || p[236..240] != [99, 130, 83, 99] {
        return None;
    }
    let mut i = 240;
    while i < p.len() {
        match p[i] {
            0 => i += 1,
            255 => return None,
            c => {
                let len = *p.get(i + 1)? as usize;
                let v = p.get(i + 2..i + 2 + len)?;
                if c == code {
                    return Some(v);
                }
                i += 2 + len;
            }
        }
    }
    None
}

pub fn mac_text(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// One HTTP GET from inside namespace `ns` (Connection: close): (status, body). Bounded: 5 s.
pub fn http_get(ns: &str, addr: std::net::SocketAddrV4, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::Write;
    let path = path.to_string();
    enter_ns(ns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
        let mut b = Vec::new();
        s.read_to_end(&mut b)?;
        let text = String::from_utf8_lossy(&b).into_owned();
        let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string());
        Ok((status, body))
    })
}

/// The value of one Prometheus sample (`name{labels}` exactly as exposed); 0 when absent.
pub fn metric(text: &str, sample: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
}

/// A raw DHCP client socket inside a host's namespace (port 68 as firmware uses, or 67 as a
/// relay agent does), with SO_BROADCAST: the negative and farm tests' own PXE client.
pub struct Probe {
    pub sock: std::net::UdpSocket,
}

impl Probe {
    pub fn new(host: &Host, port: u16) -> Probe {
        let sock = host.enter(move || {
            let s = std::net::UdpSocket::bind(("0.0.0.0", port)).unwrap_or_else(|e| panic!("bind 0.0.0.0:{port} in the lab: {e}"));
            s.set_broadcast(true).unwrap();
            s
        });
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        Probe { sock }
    }

    pub fn send(&self, bytes: &[u8], to: std::net::SocketAddrV4) {
        self.sock.send_to(bytes, to).unwrap_or_else(|e| panic!("send to {to}: {e}"));
    }

    pub fn broadcast(&self, bytes: &[u8]) {
        self.send(bytes, std::net::SocketAddrV4::new(Ipv4Addr::BROADCAST, 67));
    }

    /// Every reply (BOOTREPLY) whose xid is `xid` arriving within `within`: (source, bytes).
    pub fn replies(&self, xid: u32, within: Duration) -> Vec<(std::net::SocketAddr, Vec<u8>)> {
        self.replies_upto(xid, within, usize::MAX)
    }

    /// As `replies`, returning as soon as `n` have arrived.
    pub fn replies_upto(&self, xid: u32, within: Duration, n: usize) -> Vec<(std::net::SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        let end = Instant::now() + within;
        let mut b = [0u8; 2048];
        while Instant::now() < end && out.len() < n {
            if let Ok((n, from)) = self.sock.recv_from(&mut b) {
                if n >= 240 && b[0] == 2 && b[4..8] == xid.to_be_bytes() {
                    out.push((from, b[..n].to_vec()));
                }
            }
        }
        out
    }
}
