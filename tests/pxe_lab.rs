//! Real firmware on a real L2 segment: the lab (tests/common/lab.rs) puts qemu guests (SeaBIOS +
//! iPXE ROM, OVMF PXE, OVMF HTTP Boot) on a bridge in a network namespace, with dnsmasq as the
//! site DHCP server handing out addresses only; whatever the guests boot comes from the PXE
//! service under test.

mod common;
use common::lab::{self, Firmware, Lab};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn skip() -> bool {
    if let Some(why) = lab::unavailable() {
        eprintln!("skipped: {why}");
        return true;
    }
    false
}

/// A short, file-name-safe label for a client from its option 60 (what DESIGN.md's table calls
/// each firmware).
fn client_label(vendor: &[u8], to_4011: bool) -> String {
    match vendor {
        b"PXEClient:Arch:00000:UNDI:002001" => "seabios-ipxe-rom".into(),
        // The iPXE ROM's PXE boot-server request (after a proxy offer with a boot menu in 43)
        // says just `PXEClient`, as does undionly.kpxe's DISCOVER once chained.
        b"PXEClient" if to_4011 => "seabios-ipxe-rom".into(),
        b"PXEClient" => "undionly-kpxe".into(),
        b"PXEClient:Arch:00007:UNDI:003000" => "ovmf-pxe".into(),
        b"HTTPClient:Arch:00016:UNDI:003000" => "ovmf-httpboot".into(),
        b"PXEClient:Arch:00007:UNDI:003010" => "ipxe-efi".into(),
        v => String::from_utf8_lossy(v).chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect(),
    }
}

fn message_name(t: u8) -> &'static str {
    match t {
        1 => "discover",
        2 => "offer",
        3 => "request",
        4 => "decline",
        5 => "ack",
        6 => "nak",
        7 => "release",
        8 => "inform",
        _ => "unknown",
    }
}

/// Records what each firmware sends: every distinct (client, message, port) once, as the raw
/// DHCP payload, plus the peers' answers to it. Run by hand (it takes about a minute and writes
/// files): `BOOTFARM_PXE_CAPTURES=/some/dir cargo test --test pxe_lab capture -- --ignored`.
#[test]
#[ignore = "writes the firmware's DHCP packets to $BOOTFARM_PXE_CAPTURES; run by hand"]
fn capture_firmware_dhcp() {
    if skip() {
        return;
    }
    let out = std::path::PathBuf::from(std::env::var("BOOTFARM_PXE_CAPTURES").expect("set BOOTFARM_PXE_CAPTURES to a folder"));
    std::fs::create_dir_all(&out).unwrap();
    let mut lab = Lab::new("capture");
    lab.site_dhcp();
    // A dnsmasq ProxyDHCP (the peer) on its own host: it answers PXE clients without option 43
    // for UEFI, so OVMF goes on to its DHCPREQUEST on port 4011, and its TFTP hands out iPXE, so
    // the chained iPXE's own DISCOVERs are recorded too.
    let proxy = lab.host(2);
    let tftp = lab.dir.join("tftp");
    std::fs::create_dir_all(&tftp).unwrap();
    for f in ["undionly.kpxe", "ipxe.efi"] {
        std::fs::copy(format!("/usr/lib/ipxe/{f}"), tftp.join(f)).unwrap();
    }
    // dnsmasq names a BIOS boot file `<basename>.0`.
    std::fs::copy("/usr/lib/ipxe/undionly.kpxe", tftp.join("undionly.0")).unwrap();
    let child = proxy
        .cmd("dnsmasq")
        .args(["--user=root", "--group=root"]) // keeps PR_SET_PDEATHSIG
        .args(["--keep-in-foreground", "--port=0", "--interface=eth0", "--bind-interfaces", "--no-resolv", "--no-hosts", "--log-dhcp"])
        .arg(format!("--dhcp-range={},proxy", lab::ip(0)))
        .args(["--pxe-service=x86PC,lab,undionly", "--pxe-service=X86-64_EFI,lab,ipxe.efi"])
        .args(["--enable-tftp"])
        .arg(format!("--tftp-root={}", tftp.display()))
        .arg(format!("--log-facility={}", lab.dir.join("proxy.log").display()))
        .arg(format!("--pid-file={}", lab.dir.join("proxy.pid").display()))
        .stdin(Stdio::null())
        .spawn()
        .expect("dnsmasq");
    lab.adopt(child);
    lab.wait_udp_bound(&proxy.ns, 67, "the proxy dnsmasq");
    let pcap = lab.dir.join("dhcp.pcap");
    let mut cap = lab.capture(&pcap);
    let guests =
        [lab.guest(Firmware::SeaBios, "seabios"), lab.guest(Firmware::OvmfPxe, "ovmf-pxe"), lab.guest(Firmware::OvmfHttp, "ovmf-http")];
    let wanted = [
        "seabios-ipxe-rom-discover",
        "seabios-ipxe-rom-request",
        "seabios-ipxe-rom-request-4011",
        "undionly-kpxe-discover",
        "ovmf-pxe-discover",
        "ovmf-pxe-request-4011",
        "ovmf-httpboot-discover",
        "ipxe-efi-discover",
    ];
    let t0 = Instant::now();
    let mut files: BTreeMap<String, (Vec<u8>, String)> = BTreeMap::new();
    while t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_secs(3));
        files.clear();
        let packets = lab::read_pcap(&pcap);
        // The client each transaction belongs to, by xid, so answers can be named after it.
        let mut who: BTreeMap<Vec<u8>, String> = BTreeMap::new();
        for d in &packets {
            let p = &d.payload;
            if p.len() < 240 {
                continue;
            }
            let kind = lab::dhcp_option(p, 53).map_or(0, |v| v[0]);
            let xid = p[4..8].to_vec();
            let port = if d.dst.1 == 4011 || d.src.1 == 4011 { "-4011" } else { "" };
            let name = if p[0] == 1 {
                let label = client_label(lab::dhcp_option(p, 60).unwrap_or(b"no-vendor-class"), d.dst.1 == 4011);
                who.insert(xid, label.clone());
                format!("{label}-{}{port}", message_name(kind))
            } else {
                let server = if d.src.0 == lab::ip(1) { "site-dnsmasq" } else { "proxy-dnsmasq" };
                let client = who.get(&xid).cloned().unwrap_or_else(|| "unknown".into());
                format!("{server}-{}{port}-to-{client}", message_name(kind))
            };
            let how = format!("{}:{} -> {}:{}, {} bytes", d.src.0, d.src.1, d.dst.0, d.dst.1, p.len());
            files.entry(name).or_insert((p.clone(), how));
        }
        if wanted.iter().all(|w| files.contains_key(*w)) {
            break;
        }
    }
    cap.stop();
    drop(guests);
    for (name, (bytes, _)) in &files {
        std::fs::write(out.join(format!("{name}.bin")), bytes).unwrap();
    }
    std::fs::copy(&pcap, out.join("lab.pcap")).unwrap();
    let mut readme = String::from(
        "# DHCP packets captured from real firmware in the PXE lab\n\n\
         Written by `BOOTFARM_PXE_CAPTURES=DIR cargo test --test pxe_lab capture -- --ignored`\n\
         (tests/pxe_lab.rs). Each .bin is one UDP payload (the whole BOOTP/DHCP message, from op to the\n\
         end option and any padding), exactly as it crossed the lab bridge. The site DHCP server\n\
         (dnsmasq at 10.77.0.1) hands out addresses only; a dnsmasq 2.90 ProxyDHCP at 10.77.0.2 offers\n\
         undionly.kpxe (BIOS) and ipxe.efi (UEFI) over TFTP. `lab.pcap` holds every packet.\n\n\
         | file | sender -> receiver |\n|---|---|\n",
    );
    for (name, (_, how)) in &files {
        readme.push_str(&format!("| {name}.bin | {how} |\n"));
    }
    readme.push_str(
        "\nClients: seabios-ipxe-rom = SeaBIOS + iPXE NIC ROM (e1000), undionly-kpxe = iPXE undionly.kpxe\n\
         chained over TFTP (its DISCOVER says just `PXEClient`; so does the iPXE ROM's port-4011 boot-server\n\
         request), ovmf-pxe = OVMF (EDK2 PXE, virtio-net without ROM), ovmf-httpboot = OVMF UEFI\n\
         HTTP Boot, ipxe-efi = ipxe.efi chained by OVMF. `-4011` marks the PXE port-4011 exchange.\n",
    );
    std::fs::write(out.join("README.md"), readme).unwrap();
    let missing: Vec<_> = wanted.iter().filter(|w| !files.contains_key(**w)).collect();
    assert!(missing.is_empty(), "not captured: {missing:?}; captured: {:?}", files.keys().collect::<Vec<_>>());
}

// ---- bootfarm as the segment's ProxyDHCP -------------------------------------------------

use bootfarm::config::FarmServer;
use bootfarm::dhcp::wire::{self, MessageType, Op, Repr};
use common::lab::{http_get, mac_text, metric, Host, Probe};
use common::Server;
use std::net::{Ipv4Addr, SocketAddrV4};

const HTTP: u16 = 8080;

/// A bootfarm node on the segment at .`last`: the demo store (its vDisk's boot sector prints
/// the marker) plus iPXE's boot programs in tftp.root, TFTP on 69 (firmware knows no other
/// port), PXE on. `farm`: the addresses of every node when there are several.
struct Node {
    host: Host,
    server: Option<Server>,
}

impl Node {
    fn start(lab: &mut Lab, last: u8, farm: &[u8]) -> Node {
        let dir = lab.dir.join(&format!("node{last}"));
        let mut c = bootfarm::demo::write_store(&dir, HTTP).unwrap();
        // Farm nodes place targets only on replicas with the same bytes: every node gets a
        // copy of one store's vDisk chain (a copy keeps the images' identifiers).
        let master = lab.dir.join("master");
        if !master.exists() {
            bootfarm::demo::write_store(&master, HTTP).unwrap();
        }
        for f in std::fs::read_dir(master.join("vdisks")).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), dir.join("vdisks").join(f.file_name())).unwrap();
        }
        c.server.name = format!("node{last}");
        c.server.listen = lab::ip(last).into();
        c.server.tftp_port = 69;
        c.server.nbd_port = 10809;
        c.server.workers = 1;
        for f in ["undionly.kpxe", "ipxe.efi"] {
            std::fs::copy(format!("/usr/lib/ipxe/{f}"), c.tftp.root.join(f)).expect("iPXE's boot programs (Debian ipxe)");
        }
        c.pxe.enabled = true;
        if farm.len() > 1 {
            c.farm.server = farm
                .iter()
                .map(|&n| FarmServer {
                    name: format!("node{n}"),
                    address: lab::ip(n).into(),
                    power: 1.0,
                    subnets: vec![],
                    vdisks: vec![],
                    max_booting: 0,
                    http_port: None,
                })
                .collect();
            // A dead node leaves the lists after ~3 x 200 ms.
            c.farm.health_interval_ms = 200;
            c.farm.health_timeout_ms = 200;
            c.farm.health_failures_max = 3;
            c.farm.health_successes_min = 1;
            let key = lab.dir.join("token.key");
            std::fs::write(&key, b"bootfarm-lab-token-key-16").unwrap();
            c.farm.token_key_file = Some(key);
        }
        let cfg = dir.join("bootfarm.toml");
        std::fs::write(&cfg, toml::to_string(&c).unwrap()).unwrap();
        let host = lab.host(last);
        let server = Server::start_with(host.cmd(common::bin().to_str().unwrap()).args(["serve", "--config", cfg.to_str().unwrap()]));
        lab.wait_udp_bound(&host.ns, 67, "bootfarm's PXE service");
        Node { host, server: Some(server) }
    }

    fn metrics(&self) -> String {
        let (st, body) = http_get(&self.host.ns, SocketAddrV4::new(self.host.addr, HTTP), "/metrics").expect("GET /metrics");
        assert_eq!(st, 200, "{body}");
        body
    }

    fn log(&self) -> String {
        self.server.as_ref().map_or(String::new(), |s| s.log())
    }
}

/// A DHCP request as `kind`'s firmware sends it (DESIGN.md's table): "ipxe" (iPXE ROM: user
/// class iPXE, 175), "bios" (a PXE ROM), "uefi" (EDK2 PXE), "http" (EDK2 HTTP Boot), "plain" (an
/// ordinary DHCP client: no option 60).
fn request(kind: &str, mt: MessageType, mac: [u8; 6], xid: u32) -> Vec<u8> {
    let mut r = Repr::new(Op::Request, mt, xid, mac);
    r.max_message_size = Some(1472);
    let (vendor, arch): (&[u8], u16) = match kind {
        "ipxe" | "bios" => (b"PXEClient:Arch:00000:UNDI:002001", 0),
        "uefi" => (b"PXEClient:Arch:00007:UNDI:003000", 7),
        "http" => (b"HTTPClient:Arch:00016:UNDI:003000", 16),
        _ => (b"", 0),
    };
    let uuid = [0u8; 17];
    if kind != "plain" {
        r.vendor_class = Some(vendor);
        r.client_arch = Some(arch);
        r.client_ndi = Some([1, 2, 1]);
        r.client_uuid = Some(&uuid);
        r.broadcast = true;
    }
    if kind == "ipxe" {
        r.user_class = Some(b"iPXE");
        r.ipxe_encap = Some(&[0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e, 0x13, 0x01, 0x01, 0x11, 0x01, 0x01]);
    }
    let mut b = vec![0u8; r.buffer_len()];
    let n = r.emit(&mut b).unwrap();
    b.truncate(n);
    b
}

/// The boot server an answer names: the host of its URL (option 67 or file), else siaddr.
fn named_server(answer: &[u8]) -> String {
    let r = wire::parse(answer).expect("bootfarm's answer parses");
    let file = r.bootfile.unwrap_or(r.file);
    let text = String::from_utf8_lossy(file).trim_end_matches('\0').to_string();
    match text.strip_prefix("http://") {
        Some(rest) => rest.split([':', '/']).next().unwrap().to_string(),
        None => r.siaddr.to_string(),
    }
}

fn booted_or_panic(g: &mut lab::Guest, what: &str, limit: Duration, nodes: &[&Node]) {
    if let Err(e) = g.wait_for(what, limit) {
        let logs: Vec<String> = nodes.iter().map(|n| format!("--- bootfarm at {} ---\n{}", n.host.addr, n.log())).collect();
        panic!("{e}\n{}", logs.join("\n"));
    }
}

#[test]
fn seabios_ipxe_rom_boots_the_demo_vdisk_from_bootfarms_proxy_offer() {
    if skip() {
        return;
    }
    let mut lab = Lab::new("bios");
    lab.site_dhcp();
    let node = Node::start(&mut lab, 2, &[]);
    let mut g = lab.guest(Firmware::SeaBios, "seabios");
    // The iPXE ROM takes its address from the site server and the script URL from bootfarm's
    // proxy offer, runs /ipxe and sanboots the vDisk over HTTP; its boot sector ends QEMU.
    booted_or_panic(&mut g, bootfarm::demo::BOOT_MARKER, Duration::from_secs(180), &[&node]);
    assert_eq!(g.wait_exit(Duration::from_secs(10)), Some(33), "the boot sector ends QEMU through isa-debug-exit");
    let console = g.console();
    assert!(console.contains("bootfarm: booting vdisk demo"), "the generated script ran:\n{console}");
    let m = node.metrics();
    assert!(metric(&m, "bootfarm_pxe_answers_total{kind=\"ipxe\"}") >= 1, "{m}");
}

#[test]
fn ovmf_uefi_pxe_asks_on_4011_and_runs_ipxe_efi_over_tftp() {
    if skip() {
        return;
    }
    let mut lab = Lab::new("uefi");
    lab.site_dhcp();
    let node = Node::start(&mut lab, 2, &[]);
    let mut g = lab.guest(Firmware::OvmfPxe, "ovmf-pxe");
    // EDK2's PXE: the offer on 67 lacks 43, so it asks on 4011, fetches ipxe.efi over TFTP;
    // ipxe.efi asks again (as iPXE) and runs the script bootfarm names.
    booted_or_panic(&mut g, "bootfarm: booting vdisk demo", Duration::from_secs(240), &[&node]);
    let m = node.metrics();
    assert!(metric(&m, "bootfarm_pxe_answers_total{kind=\"uefi\"}") >= 2, "offer and 4011 ACK:\n{m}");
    assert!(metric(&m, "bootfarm_pxe_answers_total{kind=\"ipxe\"}") >= 1, "{m}");
    let log = node.log();
    assert!(
        log.lines().any(|l| l.contains("tftp transfer started") && l.contains("ipxe.efi") && l.contains("blksize=1468")),
        "EDK2 asks blksize 1468:\n{log}"
    );
}

#[test]
fn ovmf_uefi_http_boot_gets_the_efi_program_from_boot() {
    if skip() {
        return;
    }
    let mut lab = Lab::new("http");
    lab.site_dhcp();
    let node = Node::start(&mut lab, 2, &[]);
    let mut g = lab.guest(Firmware::OvmfHttp, "ovmf-http");
    booted_or_panic(&mut g, "bootfarm: booting vdisk demo", Duration::from_secs(240), &[&node]);
    let m = node.metrics();
    assert!(metric(&m, "bootfarm_pxe_answers_total{kind=\"uefi_http\"}") >= 1, "{m}");
}

/// Asks every node (one broadcast) which server boots `mac`: the servers named, one per answer.
fn ask_farm(probe: &Probe, mac: [u8; 6], xid: u32, answers: usize) -> Vec<String> {
    probe.broadcast(&request("ipxe", MessageType::Discover, mac, xid));
    // The site server's address offers (yiaddr set) are not PXE answers. Waits 1.5 s at most,
    // and 200 ms past the expected count for an extra answer (which would be a bug).
    let pxe =
        |v: Vec<(std::net::SocketAddr, Vec<u8>)>| v.into_iter().filter(|(_, b)| wire::parse(b).is_ok_and(|r| r.yiaddr.is_unspecified()));
    let t0 = Instant::now();
    let mut got = Vec::new();
    while t0.elapsed() < Duration::from_millis(1500) {
        got.extend(pxe(probe.replies(xid, Duration::from_millis(100))));
        if got.len() >= answers {
            got.extend(pxe(probe.replies(xid, Duration::from_millis(200))));
            break;
        }
    }
    let from: Vec<String> =
        got.iter().map(|(a, b)| format!("{a} (option 54 {:?})", wire::parse(b).ok().and_then(|r| r.server_id))).collect();
    assert!(got.len() <= answers, "one answer per node at most, {answers} nodes up: {from:?}");
    got.iter().map(|(_, b)| named_server(b)).collect()
}

#[test]
fn every_farm_node_names_the_same_server_and_a_killed_one_is_replaced() {
    if skip() {
        return;
    }
    let mut lab = Lab::new("farm");
    lab.site_dhcp();
    let mut nodes: Vec<Node> = [2u8, 3, 4].iter().map(|&n| Node::start(&mut lab, n, &[2, 3, 4])).collect();
    // Each node places only on peers its own prober has seen up: wait until every /ipxe lists three.
    for n in &nodes {
        let t0 = Instant::now();
        loop {
            let r = http_get(&n.host.ns, SocketAddrV4::new(n.host.addr, HTTP), "/ipxe?mac=52:54:00:00:00:00");
            if r.as_ref().is_ok_and(|(_, b)| b.lines().any(|l| l.starts_with("# servers in failover order:") && l.split(' ').count() == 8))
            {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "node {} does not see all three servers: {r:?}", n.host.addr);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let client = lab.host(50);
    let probe = Probe::new(&client, 68);
    // Every node's answer names the same server for a MAC; over 12 MACs, more than one server.
    let mut placed = BTreeMap::new();
    for t in 0..12u8 {
        let mac = [0x52, 0x54, 0, 0x77, 0xfa, t];
        let named = ask_farm(&probe, mac, 0x7a00 + t as u32, 3);
        assert_eq!(named.len(), 3, "every node answers {}", mac_text(mac));
        assert!(named.iter().all(|s| *s == named[0]), "{}: the nodes name {named:?}", mac_text(mac));
        placed.insert(t, named[0].clone());
    }
    let servers: std::collections::BTreeSet<_> = placed.values().collect();
    assert!(servers.len() >= 2, "placement spreads targets: {placed:?}");
    // Kill the node that boots MAC 0: within the health window the others name another one.
    let mac = [0x52, 0x54, 0, 0x77, 0xfa, 0];
    let first = placed[&0].clone();
    let victim = nodes.iter().position(|n| n.host.addr.to_string() == first).unwrap();
    nodes[victim].server.take();
    let t0 = Instant::now();
    let next = loop {
        let named = ask_farm(&probe, mac, 0x7b00 + t0.elapsed().as_millis() as u32, 2);
        if named.len() == 2 && named.iter().all(|s| *s == named[0] && *s != first) {
            break named[0].clone();
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "10 s after killing {first}, the nodes still name {named:?}");
    };
    eprintln!("killed {first}; after {:.1?} every node names {next}", t0.elapsed());
    // And a real guest with that MAC boots from the survivors.
    let mut g = lab.guest_with_mac(Firmware::SeaBios, "farm-guest", mac);
    let alive: Vec<&Node> = nodes.iter().filter(|n| n.server.is_some()).collect();
    booted_or_panic(&mut g, bootfarm::demo::BOOT_MARKER, Duration::from_secs(180), &alive);
    let named_node = alive.iter().find(|n| n.host.addr.to_string() == next).unwrap();
    let m = named_node.metrics();
    assert!(metric(&m, "bootfarm_http_responses_total{class=\"2xx\"}") >= 3, "the guest booted from {next}:\n{m}");
}

#[test]
fn hostile_and_foreign_dhcp_traffic_gets_no_answer_and_is_counted() {
    if skip() {
        return;
    }
    let mut lab = Lab::new("negative");
    let node = Node::start(&mut lab, 2, &[]);
    let client = lab.host(50);
    let probe = Probe::new(&client, 68);
    let server67 = SocketAddrV4::new(lab::ip(2), 67);
    let mac = [0x52, 0x54, 0, 0x77, 0xee, 1];
    // A valid iPXE DISCOVER is answered (the baseline the refusals are measured against).
    probe.broadcast(&request("ipxe", MessageType::Discover, mac, 1));
    assert_eq!(probe.replies(1, Duration::from_millis(800)).len(), 1, "one answer per request");
    // A plain DHCP client (no option 60) is the site server's: nothing.
    let m0 = node.metrics();
    probe.broadcast(&request("plain", MessageType::Discover, [0x52, 0x54, 0, 0x77, 0xee, 2], 2));
    assert!(probe.replies(2, Duration::from_millis(800)).is_empty(), "a plain DISCOVER got an answer");
    // Truncated, oversized (a 2,000-byte datagram: fragments on the wire), a length running past
    // the end: dropped, counted.
    let good = request("ipxe", MessageType::Discover, [0x52, 0x54, 0, 0x77, 0xee, 3], 3);
    let mut oversized = good.clone();
    oversized.resize(2000, 0); // PAD options past the 1472-byte limit
    let mut bad_len = good.clone();
    bad_len[240 + 1] = 250; // the first option's length now runs past the end
    for (what, p) in [("truncated", &good[..200]), ("oversized", &oversized[..]), ("bad option length", &bad_len[..])] {
        probe.send(p, server67);
        assert!(probe.replies(3, Duration::from_millis(500)).is_empty(), "{what} packet got an answer");
    }
    let m1 = node.metrics();
    let d = |m: &str, s: &str| metric(m, s) - metric(&m0, s);
    assert!(d(&m1, "bootfarm_pxe_requests_ignored_total{reason=\"not_pxe\"}") >= 1, "{m1}");
    assert!(d(&m1, "bootfarm_pxe_packets_malformed_total") >= 3, "{m1}");
    // A flood from one MAC: at most the burst plus the rate answers, the rest counted.
    let flood_mac = [0x52, 0x54, 0, 0x77, 0xee, 4];
    let t0 = Instant::now();
    for i in 0..200u32 {
        probe.broadcast(&request("ipxe", MessageType::Discover, flood_mac, 0x1000));
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let answers = probe.replies(0x1000, Duration::from_millis(800)).len();
    let secs = t0.elapsed().as_secs_f64();
    let cfg = bootfarm::config::Config::default().pxe;
    let bound = cfg.answers_per_mac_burst as f64 + cfg.answers_per_mac_per_s as f64 * secs + 1.0;
    assert!(answers >= 1 && answers as f64 <= bound, "{answers} answers to 200 DISCOVERs in {secs:.2} s (bound {bound:.0})");
    let m2 = node.metrics();
    assert!(d(&m2, "bootfarm_pxe_requests_ignored_total{reason=\"rate_limit\"}") >= (200 - answers) as u64, "{m2}");
    // The service still answers after all that (no stalled worker).
    probe.broadcast(&request("ipxe", MessageType::Discover, [0x52, 0x54, 0, 0x77, 0xee, 5], 5));
    assert_eq!(probe.replies(5, Duration::from_millis(800)).len(), 1);
    // A relayed request (giaddr set, option 82 from the agent): the answer goes to giaddr:67.
    let relay = Probe::new(&client, 67);
    let mut r = Repr::new(Op::Request, MessageType::Discover, 6, [0x52, 0x54, 0, 0x77, 0xee, 6]);
    r.vendor_class = Some(b"PXEClient:Arch:00000:UNDI:002001");
    r.client_arch = Some(0);
    r.user_class = Some(b"iPXE");
    r.giaddr = client.addr;
    r.hops = 1;
    let agent: &[u8] = &[1, 4, b'p', b'o', b'r', b't'];
    r.relay_agent = Some(agent);
    let mut b = vec![0u8; r.buffer_len()];
    let n = r.emit(&mut b).unwrap();
    relay.send(&b[..n], server67);
    let got = relay.replies(6, Duration::from_millis(1000));
    assert_eq!(got.len(), 1, "the relayed request is answered once, to giaddr:67");
    assert_eq!(got[0].0, std::net::SocketAddr::from(server67), "from the server's port 67");
    let a = wire::parse(&got[0].1).unwrap();
    assert_eq!(a.relay_agent, Some(agent), "option 82 echoed");
    assert_eq!(a.giaddr, client.addr);
    assert_eq!(a.yiaddr, Ipv4Addr::UNSPECIFIED, "a proxy never offers an address");
    assert!(probe.replies(6, Duration::from_millis(200)).is_empty(), "nothing broadcast to the client port for a relayed request");
}

/// qemu's only BIOS PXE ROMs are iPXE builds, which bootfarm (rightly) sends straight to the
/// script; a plain PXE ROM's path is checked here with a real TFTP client instead: the answer
/// (43 {6: 8}, siaddr, file) names an NBP that downloads, byte for byte, from the server named.
#[test]
fn a_bios_pxe_answer_names_an_nbp_that_downloads_over_tftp() {
    if skip() {
        return;
    }
    let mut lab = Lab::new("bios-nbp");
    let node = Node::start(&mut lab, 2, &[]);
    let client = lab.host(50);
    let probe = Probe::new(&client, 68);
    probe.broadcast(&request("bios", MessageType::Discover, [0x52, 0x54, 0, 0x77, 0xbb, 1], 0xb105));
    let got = probe.replies(0xb105, Duration::from_millis(1000));
    assert_eq!(got.len(), 1, "one answer");
    let r = wire::parse(&got[0].1).unwrap();
    assert_eq!(r.message_type, MessageType::Offer);
    assert_eq!(r.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(r.vendor_class, Some(&b"PXEClient"[..]));
    let pxe = wire::PxeVendor::parse(r.vendor_specific.expect("option 43 for a BIOS ROM")).unwrap();
    assert_eq!(pxe.discovery_control, Some(wire::pxe_sub::USE_BOOT_FILE), "43 {{6: 8}}: boot the file named");
    assert_eq!(r.siaddr, node.host.addr);
    let file = String::from_utf8_lossy(r.bootfile.unwrap_or(r.file)).trim_end_matches('\0').to_string();
    assert_eq!(file, "undionly.kpxe");
    let out = lab.dir.join("nbp");
    let st = client
        .cmd("curl")
        .args(["-sS", "--max-time", "20", "-o"])
        .arg(&out)
        .arg(format!("tftp://{}/{file}", r.siaddr))
        .status()
        .expect("curl (Debian curl)");
    assert!(st.success(), "curl tftp://{}/{file}: {st}", r.siaddr);
    common::assert_same("the NBP", &common::read_file(&out), &common::read_file(std::path::Path::new("/usr/lib/ipxe/undionly.kpxe")));
    let m = node.metrics();
    assert_eq!(metric(&m, "bootfarm_pxe_answers_total{kind=\"bios\"}"), 1, "{m}");
}
