//! The PXE service (ProxyDHCP) of the running binary over loopback, on high ports: a DISCOVER
//! per client kind answered once, a port-4011 REQUEST answered to its source, silence for plain
//! DHCP and malformed datagrams (counted in /metrics), the per-MAC rate limit, and the refusal
//! to start on port 67 without CAP_NET_BIND_SERVICE. Broadcast answers on a real L2 segment
//! are the PXE lab's (network namespaces, real firmware).

mod common;
use bootfarm::dhcp::wire::{self, MessageType, Op, PxeVendor, Repr};
use common::*;
use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::Duration;

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

struct Fixture {
    _dir: TempDir,
    server: Server,
    proxy: u16,
    pxe: u16,
    http: u16,
    /// Bound on `pxe.client_port`: where answers to 67 go.
    client: UdpSocket,
}

fn config(dir: &TempDir, listen: &str, proxy: u16, pxe: u16, client: u16, extra: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    let (tftp, http, nbd) = (free_port(), free_port(), free_port());
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1\"\ntftp_port = {tftp}\nhttp_port = {http}\nnbd_port = {nbd}\nworkers = 2\nshutdown_grace_ms = 500\n\
         [tftp]\nroot = \"boot\"\n[nbd]\ncache_dir = \"cache\"\n\
         [pxe]\nenabled = true\nproxy_port = {proxy}\npxe_port = {pxe}\nclient_port = {client}\nlisten = \"{listen}\"\n{extra}"
    );
    let f = dir.join("bootfarm.toml");
    std::fs::write(&f, cfg).unwrap();
    f
}

fn fixture(extra: &str) -> Fixture {
    fixture_on("127.0.0.1", extra)
}

fn fixture_on(listen: &str, extra: &str) -> Fixture {
    let dir = TempDir::new("pxe");
    let client = UdpSocket::bind((LO, 0)).unwrap();
    client.set_read_timeout(Some(Duration::from_millis(400))).unwrap();
    let (proxy, pxe) = (free_port(), free_port());
    let f = config(&dir, listen, proxy, pxe, client.local_addr().unwrap().port(), extra);
    let server = Server::start(&["--config", f.to_str().unwrap()]);
    server.wait_for("PXE service (ProxyDHCP) answering");
    let http = std::fs::read_to_string(&f).unwrap().lines().find_map(|l| l.strip_prefix("http_port = ")).unwrap().parse().unwrap();
    Fixture { _dir: dir, server, proxy, pxe, http, client }
}

/// A DISCOVER from a client that already has 127.0.0.1 (ciaddr, no broadcast flag), so the
/// answer comes back by unicast over loopback.
fn discover(mac: [u8; 6], class: &'static [u8], arch: u16) -> Repr<'static> {
    let mut r = Repr::new(Op::Request, MessageType::Discover, 0x0bad_cafe, mac);
    r.ciaddr = LO;
    r.vendor_class = Some(class);
    r.client_arch = Some(arch);
    r.client_uuid = Some(b"\x00ABCDEFGHIJKLMNOP");
    r
}

fn bytes(r: &Repr) -> Vec<u8> {
    let mut b = vec![0u8; r.buffer_len()];
    let n = r.emit(&mut b).unwrap();
    b.truncate(n);
    b
}

/// The next datagram on `s`, or None after its timeout.
fn recv(s: &UdpSocket) -> Option<Vec<u8>> {
    let mut b = vec![0u8; 2048];
    let (n, _) = s.recv_from(&mut b).ok()?;
    b.truncate(n);
    Some(b)
}

fn metrics(http: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect((LO, http)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn metric(text: &str, name_labels: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(name_labels)).map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

#[test]
fn each_client_kind_gets_one_answer() {
    // Bound to the wildcard, as in production: 54 and the URLs name the address the request
    // arrived on (IP_PKTINFO), here 127.0.0.1.
    let f = fixture_on("0.0.0.0", "");
    let mac = [2, 0, 0, 0, 0, 1];
    // BIOS PXE: the NBP over TFTP, 43 = {6: 8}, no address.
    f.client.send_to(&bytes(&discover(mac, b"PXEClient:Arch:00000:UNDI:002001", 0)), (LO, f.proxy)).unwrap();
    let b = recv(&f.client).expect("an offer");
    let a = wire::parse(&b).unwrap();
    assert_eq!((a.op, a.message_type, a.xid, a.chaddr), (Op::Reply, MessageType::Offer, 0x0bad_cafe, mac));
    assert_eq!(a.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!((a.siaddr, a.file, a.server_id), (LO, &b"undionly.kpxe"[..], Some(LO)));
    assert_eq!(a.vendor_specific.map(PxeVendor::parse), Some(Ok(PxeVendor { discovery_control: Some(8), boot_item: None })));
    assert_eq!(a.client_uuid, Some(&b"\x00ABCDEFGHIJKLMNOP"[..]));
    assert!(recv(&f.client).is_none(), "one answer per request");
    // UEFI HTTP Boot: an http:// URL on this node's HTTP port.
    f.client.send_to(&bytes(&discover(mac, b"HTTPClient:Arch:00016:UNDI:003000", 16)), (LO, f.proxy)).unwrap();
    let b = recv(&f.client).unwrap();
    let a = wire::parse(&b).unwrap();
    assert_eq!(a.vendor_class, Some(&b"HTTPClient"[..]));
    assert_eq!(a.bootfile.map(|u| String::from_utf8_lossy(u).into_owned()), Some(format!("http://127.0.0.1:{}/boot/ipxe.efi", f.http)));
    // iPXE: the script URL.
    let mut d = discover(mac, b"PXEClient:Arch:00007:UNDI:003010", 7);
    d.user_class = Some(b"iPXE");
    f.client.send_to(&bytes(&d), (LO, f.proxy)).unwrap();
    let a = wire::parse(&recv(&f.client).unwrap()).unwrap().bootfile.map(|u| String::from_utf8_lossy(u).into_owned());
    assert_eq!(a, Some(format!("http://127.0.0.1:{}/ipxe?mac=${{mac}}", f.http)));
    // UEFI PXE: offer without 43, then the REQUEST to 4011 is answered to its own source port.
    f.client.send_to(&bytes(&discover(mac, b"PXEClient:Arch:00007:UNDI:003000", 7)), (LO, f.proxy)).unwrap();
    let a = wire::parse(&recv(&f.client).unwrap()).unwrap().vendor_specific.map(<[u8]>::to_vec);
    assert_eq!(a, None);
    let efi = UdpSocket::bind((LO, 0)).unwrap();
    efi.set_read_timeout(Some(Duration::from_millis(400))).unwrap();
    let mut r = discover(mac, b"PXEClient:Arch:00007:UNDI:003000", 7);
    r.message_type = MessageType::Request;
    efi.send_to(&bytes(&r), (LO, f.pxe)).unwrap();
    let b = recv(&efi).expect("an ACK from 4011");
    let a = wire::parse(&b).unwrap();
    assert_eq!((a.message_type, a.siaddr, a.file), (MessageType::Ack, LO, &b"ipxe.efi"[..]));
    assert_eq!(a.vendor_class, Some(&b"PXEClient"[..]));
    let m = metrics(f.http);
    for kind in ["bios", "uefi_http", "ipxe"] {
        assert_eq!(metric(&m, &format!("bootfarm_pxe_answers_total{{kind=\"{kind}\"}}")), 1, "{kind}\n{m}");
    }
    assert_eq!(metric(&m, "bootfarm_pxe_answers_total{kind=\"uefi\"}"), 2, "offer + ACK");
}

#[test]
fn plain_dhcp_and_malformed_datagrams_get_nothing_and_are_counted() {
    let f = fixture("");
    let mut plain = discover([2, 0, 0, 0, 0, 2], b"", 0);
    plain.vendor_class = None;
    plain.client_arch = None;
    let good = bytes(&discover([2, 0, 0, 0, 0, 2], b"PXEClient", 0));
    let mut bad_len = good[..wire::HEADER_LEN].to_vec();
    bad_len.extend_from_slice(b"\x35\x01\x01\x3c\xf0PXEClient");
    let mut oversized = good.clone();
    oversized.resize(2000, 0);
    for b in [bytes(&plain), good[..200].to_vec(), bad_len, oversized, vec![], b"hello".to_vec()] {
        f.client.send_to(&b, (LO, f.proxy)).unwrap();
    }
    assert!(recv(&f.client).is_none(), "no answer to any of them");
    // Still serving.
    f.client.send_to(&good, (LO, f.proxy)).unwrap();
    assert!(recv(&f.client).is_some());
    let m = metrics(f.http);
    assert_eq!(metric(&m, "bootfarm_pxe_requests_ignored_total{reason=\"not_pxe\"}"), 1, "{m}");
    assert_eq!(metric(&m, "bootfarm_pxe_packets_malformed_total"), 5, "{m}");
}

#[test]
fn a_flood_from_one_mac_is_rate_limited() {
    let f = fixture("answers_per_mac_per_s = 2\nanswers_per_mac_burst = 5\n");
    let d = bytes(&discover([2, 0, 0, 0, 0, 3], b"PXEClient", 0));
    for _ in 0..200 {
        f.client.send_to(&d, (LO, f.proxy)).unwrap();
    }
    let mut got = 0;
    while recv(&f.client).is_some() {
        got += 1;
    }
    assert!((5..=7).contains(&got), "the burst (5) and what 2/s adds meanwhile: {got}");
    let m = metrics(f.http);
    assert!(metric(&m, "bootfarm_pxe_requests_ignored_total{reason=\"rate_limit\"}") >= 190, "{m}");
    // Another MAC is served.
    f.client.send_to(&bytes(&discover([2, 0, 0, 0, 0, 4], b"PXEClient", 0)), (LO, f.proxy)).unwrap();
    assert!(recv(&f.client).is_some());
    drop(f.server);
}

/// Port 67 as an unprivileged user: the start is refused, naming the capability.
#[test]
fn port_67_without_the_capability_is_refused() {
    let dir = TempDir::new("pxe-cap");
    let f = config(&dir, "127.0.0.1", 67, 0, 68, "");
    std::fs::create_dir_all(dir.join("cache")).unwrap();
    let out = run_unchecked(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
            .arg(bin())
            .args(["serve", "--iscsi-port", "0", "--config", f.to_str().unwrap()]),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must not start: {err}");
    assert!(err.contains("CAP_NET_BIND_SERVICE") && err.contains("udp/127.0.0.1:67"), "{err}");
}

fn run_unchecked(cmd: &mut Command) -> std::process::Output {
    let mut child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("setpriv (util-linux)");
    // Bounded: a start that wrongly succeeds is killed after 10 s.
    for _ in 0..100 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

/// Two network namespaces joined by a veth pair, removed when dropped: the server's side
/// (10.66.0.1, `vs`) and a client's (`vc`). Nothing outside them changes.
struct Netns {
    server: String,
    client: String,
}

impl Netns {
    fn new() -> Option<Netns> {
        let id = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
        );
        let n = Netns { server: format!("bfpxe-s-{id}"), client: format!("bfpxe-c-{id}") };
        let ip = |args: &[&str]| Command::new("ip").args(args).output().map(|o| o.status.success()).unwrap_or(false);
        if !ip(&["netns", "add", &n.server]) {
            return None; // not root, or no iproute2: the caller says it skipped
        }
        let ok = ip(&["netns", "add", &n.client])
            && ip(&["-n", &n.server, "link", "add", "vs", "type", "veth", "peer", "name", "vc", "netns", &n.client])
            && ip(&["-n", &n.server, "addr", "add", "10.66.0.1/24", "dev", "vs"])
            && ip(&["-n", &n.client, "addr", "add", "10.66.0.2/24", "dev", "vc"])
            && ip(&["-n", &n.server, "link", "set", "vs", "up"])
            && ip(&["-n", &n.client, "link", "set", "vc", "up"])
            && ip(&["-n", &n.server, "link", "set", "lo", "up"]);
        assert!(ok, "cannot build the namespace pair");
        Some(n)
    }

    /// Runs `f` on a thread that has entered the client namespace (sockets made there stay there).
    fn in_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = std::fs::File::open(format!("/run/netns/{}", self.client)).unwrap();
                use std::os::fd::AsRawFd;
                // Safety: setns on this thread only, with a namespace descriptor.
                assert_eq!(unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// The real ports on a real (virtual) L2 segment: a broadcast DISCOVER from port 68 to
/// 255.255.255.255:67 is answered by broadcast to port 68 from the interface it came in on,
/// naming that interface's address; a relayed one goes back to giaddr:67 with option 82.
#[test]
fn broadcast_and_relay_on_a_veth_segment() {
    let Some(ns) = Netns::new() else {
        eprintln!("skipped: needs root and iproute2 (ip netns)");
        return;
    };
    let dir = TempDir::new("pxe-netns");
    // No pxe.interface and no default route in the server's namespace: the broadcast answer
    // leaves by the arrival interface only because the engine names it (IP_PKTINFO).
    let f = config(&dir, "0.0.0.0", 67, 4011, 68, "");
    let server = Server::start_with(Command::new("ip").args(["netns", "exec", &ns.server]).arg(bin()).args([
        "serve",
        "--config",
        f.to_str().unwrap(),
    ]));
    server.wait_for("PXE service (ProxyDHCP) answering");
    let mac = [2, 0x66, 0, 0, 0, 2];
    let (offer, relayed) = ns.in_client(|| {
        let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        c.set_broadcast(true).unwrap();
        // As DHCP clients do: no route yet, the interface is named.
        c.bind_device(Some(b"vc")).unwrap();
        c.bind(&std::net::SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into()).unwrap();
        let c: UdpSocket = c.into();
        c.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
        let mut d = discover(mac, b"PXEClient:Arch:00000:UNDI:002001", 0);
        d.ciaddr = Ipv4Addr::UNSPECIFIED;
        d.broadcast = true;
        c.send_to(&bytes(&d), (Ipv4Addr::BROADCAST, 67)).unwrap();
        let offer = recv(&c);
        let extra = recv(&c);
        assert!(extra.is_none(), "one answer");
        // A relay agent at 10.66.0.2:67 forwarding a client's DISCOVER.
        let relay = UdpSocket::bind((Ipv4Addr::new(10, 66, 0, 2), 67)).unwrap();
        relay.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
        let mut r = discover([2, 0x66, 0, 0, 0, 3], b"PXEClient:Arch:00000:UNDI:002001", 0);
        r.ciaddr = Ipv4Addr::UNSPECIFIED;
        r.giaddr = Ipv4Addr::new(10, 66, 0, 2);
        r.hops = 1;
        r.relay_agent = Some(b"\x01\x03vc0");
        relay.send_to(&bytes(&r), (Ipv4Addr::new(10, 66, 0, 1), 67)).unwrap();
        (offer, recv(&relay))
    });
    let offer = offer.expect("a broadcast offer on port 68");
    let a = wire::parse(&offer).unwrap();
    let me = Ipv4Addr::new(10, 66, 0, 1);
    assert_eq!((a.message_type, a.chaddr, a.yiaddr), (MessageType::Offer, mac, Ipv4Addr::UNSPECIFIED));
    assert_eq!((a.server_id, a.siaddr, a.file), (Some(me), me, &b"undionly.kpxe"[..]), "named by its address on the segment");
    let relayed = relayed.expect("the relay's answer at giaddr:67");
    let r = wire::parse(&relayed).unwrap();
    assert_eq!((r.giaddr, r.hops, r.relay_agent), (Ipv4Addr::new(10, 66, 0, 2), 1, Some(&b"\x01\x03vc0"[..])));
    drop(server);
}
