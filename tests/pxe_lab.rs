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
