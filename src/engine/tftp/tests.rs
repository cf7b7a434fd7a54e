//! The engine's own test of the transfer sockets: a port per transfer, shared only with its catcher.

use super::*;
use std::collections::HashSet;

/// Every transfer gets a port of its own (a new TID, RFC 1350), shared only with its own
/// catcher: 1000 transfers at once. With SO_REUSEPORT set before the ephemeral bind, the
/// kernel hands out ports already held by earlier transfers (same user, reuseport), and
/// this test fails on the first one.
#[test]
fn each_transfer_has_its_own_port_and_its_catcher_shares_it() {
    crate::serve::raise_nofile_limit();
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer = client.local_addr().unwrap();
    let mut ports = HashSet::new();
    let mut keep = Vec::new();
    for _ in 0..1000 {
        let (sock, stray) = transfer_sockets(peer, IpAddr::from([127, 0, 0, 1])).unwrap();
        let port = sock.local_addr().unwrap().as_socket().unwrap().port();
        assert_eq!(stray.local_addr().unwrap().as_socket().unwrap().port(), port, "the catcher is on the transfer's port");
        assert!(ports.insert(port), "port {port} handed out twice");
        keep.push((sock, stray));
    }
    // The client's datagram reaches the connected socket; a stranger's reaches the catcher.
    let (sock, stray) = &keep[0];
    let to = sock.local_addr().unwrap().as_socket().unwrap();
    client.send_to(b"ack", to).unwrap();
    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger.send_to(b"who", to).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let mut b = [std::mem::MaybeUninit::<u8>::uninit(); 8];
    let (n, from) = sock.recv_from(&mut b).unwrap();
    assert_eq!((n, from.as_socket().unwrap()), (3, peer));
    let (n, from) = stray.recv_from(&mut b).unwrap();
    assert_eq!((n, from.as_socket().unwrap()), (3, stranger.local_addr().unwrap()));
    assert!(sock.recv_from(&mut b).is_err(), "nothing else on the connected socket");
}
