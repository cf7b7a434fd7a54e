//! The PXE service in a farm of three instances on one machine (127.0.0.1, .2, .3): for every
//! MAC the three nodes' answers name the same boot server, the first of the list `/ipxe?mac=`
//! gives that MAC; after the placed node is killed, the two left name the same next one.

mod common;
use bootfarm::dhcp::wire::{self, MessageType, Op, Repr};
use common::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::time::Duration;

fn ipxe_first(node: usize, http: u16, mac: &str) -> Option<(usize, String)> {
    let mut s = TcpStream::connect((Ipv4Addr::new(127, 0, 0, node as u8), http)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET /ipxe?mac={mac} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let order: Vec<String> =
        out.lines().find_map(|l| l.strip_prefix("# servers in failover order: "))?.split(' ').map(String::from).collect();
    Some((order.len(), order[0].clone()))
}

/// The server node `node`'s answer names for `mac` (siaddr), asked by unicast as a client
/// that has 127.0.0.1 would.
fn named(client: &UdpSocket, node: usize, proxy: u16, mac: [u8; 6]) -> Option<Ipv4Addr> {
    let mut d = Repr::new(Op::Request, MessageType::Discover, u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]), mac);
    d.ciaddr = Ipv4Addr::LOCALHOST;
    d.vendor_class = Some(b"PXEClient:Arch:00000:UNDI:002001");
    d.client_arch = Some(0);
    let mut b = vec![0u8; d.buffer_len()];
    let n = d.emit(&mut b).unwrap();
    client.send_to(&b[..n], (Ipv4Addr::new(127, 0, 0, node as u8), proxy)).unwrap();
    let mut buf = [0u8; 1500];
    let (len, _) = client.recv_from(&mut buf).ok()?;
    let a = wire::parse(&buf[..len]).unwrap();
    assert_eq!(a.xid, d.xid);
    Some(a.siaddr)
}

#[test]
fn every_node_names_the_placed_server_and_fails_over() {
    let dir = TempDir::new("pxe-farm");
    let (http, nbd, proxy, pxe) = (free_port(), free_port(), free_port(), free_port());
    let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    client.set_read_timeout(Some(Duration::from_millis(800))).unwrap();
    let cport = client.local_addr().unwrap().port();
    std::fs::write(dir.join("disk.raw"), pattern(9, 0, 1 << 20)).unwrap();
    let mut table = String::new();
    for i in 1..=3 {
        table.push_str(&format!("[[farm.server]]\nname = \"node{i}\"\naddress = \"127.0.0.{i}\"\n"));
    }
    let mut nodes: Vec<Option<Server>> = Vec::new();
    for i in 1..=3 {
        let d = dir.join(&format!("node{i}"));
        std::fs::create_dir_all(d.join("boot")).unwrap();
        std::fs::copy(dir.join("disk.raw"), d.join("disk.raw")).unwrap();
        let cfg = format!(
            "[server]\nname = \"node{i}\"\nlisten = \"127.0.0.{i}\"\ntftp_port = {http}\nhttp_port = {http}\nnbd_port = {nbd}\nworkers = 1\n\
             [tftp]\nroot = \"boot\"\n[nbd]\ncache_dir = \"cache\"\n[[vdisk]]\nname = \"disk\"\npath = \"disk.raw\"\n\
             [pxe]\nenabled = true\nlisten = \"127.0.0.{i}\"\nproxy_port = {proxy}\npxe_port = {pxe}\nclient_port = {cport}\n\
             [farm]\nhealth_interval_ms = 200\nhealth_timeout_ms = 200\nhealth_failures_max = 3\nhealth_successes_min = 1\n{table}"
        );
        std::fs::write(d.join("bootfarm.toml"), cfg).unwrap();
        nodes.push(Some(Server::start(&["--config", d.join("bootfarm.toml").to_str().unwrap()])));
    }
    for i in 1..=3 {
        wait_until(&format!("node{i} lists all three servers"), 30, || ipxe_first(i, http, "02:00:00:00:00:00").is_some_and(|o| o.0 == 3));
    }
    let addr_of = |name: &str| -> Ipv4Addr { format!("127.0.0.{}", &name[4..]).parse().unwrap() };
    let macs: Vec<[u8; 6]> = (0..24u8).map(|k| [2, 0, 0, 0, 7, k]).collect();
    let mac_text = |m: &[u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let mut placed = std::collections::HashSet::new();
    for m in &macs {
        let want = addr_of(&ipxe_first(1, http, &mac_text(m)).unwrap().1);
        for node in 1..=3 {
            assert_eq!(named(&client, node, proxy, *m), Some(want), "node{node} for {}", mac_text(m));
        }
        placed.insert(want);
    }
    assert!(placed.len() >= 2, "24 MACs spread over the farm: {placed:?}");
    // Kill the server the first MAC is placed on; the other two agree on the next one.
    let first = named(&client, 1, proxy, macs[0]).unwrap();
    let k = first.octets()[3] as usize;
    drop(nodes[k - 1].take());
    let left: Vec<usize> = (1..=3).filter(|&i| i != k).collect();
    for &i in &left {
        wait_until(&format!("node{i} drops node{k}"), 15, || ipxe_first(i, http, "02:00:00:00:00:00").is_some_and(|o| o.0 == 2));
    }
    for m in &macs {
        let want = addr_of(&ipxe_first(left[0], http, &mac_text(m)).unwrap().1);
        for &node in &left {
            let got = named(&client, node, proxy, *m);
            assert_eq!(got, Some(want), "node{node} for {} after node{k} died", mac_text(m));
            assert_ne!(got, Some(first), "the dead node is never named");
        }
    }
}
