use super::*;
use std::net::{TcpStream, UdpSocket};

#[test]
fn rate_limit_allows_a_burst_then_the_rate_per_source() {
    let r = RateLimit::default();
    let t0 = Instant::now();
    let a: std::net::IpAddr = "10.0.0.1".parse().unwrap();
    let b: std::net::IpAddr = "10.0.0.2".parse().unwrap();
    let taken = (0..150).filter(|_| r.try_take(a, t0, 50, 100)).count();
    assert_eq!(taken, 100, "the burst, then nothing at the same instant");
    assert!(r.try_take(b, t0, 50, 100), "another source has its own bucket");
    assert!(!r.try_take(a, t0 + Duration::from_millis(10), 50, 100));
    assert!(r.try_take(a, t0 + Duration::from_millis(20), 50, 100), "one token per 20 ms at 50/s");
    assert!(!r.try_take(a, t0 + Duration::from_millis(21), 50, 100));
    // Over 10 s at most burst + 10 s x rate.
    let n = (0..100_000u64).filter(|i| r.try_take(a, t0 + Duration::from_micros(100 * i), 50, 100)).count();
    assert!((495..=501).contains(&n), "{n}");
}

/// Counts what each socket of a group holds: datagrams (UDP) or pending connections (TCP).
fn drain(socks: &[socket2::Socket], tcp: bool) -> Vec<usize> {
    socks
        .iter()
        .map(|s| {
            let mut n = 0;
            let mut buf = [std::mem::MaybeUninit::new(0u8); 64];
            loop {
                let got = if tcp { s.accept().map(|_| ()) } else { s.recv(&mut buf).map(|_| ()) };
                match got {
                    Ok(()) => n += 1,
                    Err(_) => return n,
                }
            }
        })
        .collect()
}

/// Sends `flows` new flows (each its own source port) from a thread pinned on `cpu`.
fn flows_from(cpu: usize, to: SocketAddr, tcp: bool, flows: usize) -> Vec<TcpStream> {
    std::thread::scope(|s| {
        s.spawn(|| {
            pin(cpu);
            let mut keep = Vec::new();
            for _ in 0..flows {
                if tcp {
                    keep.push(TcpStream::connect(to).unwrap());
                } else {
                    UdpSocket::bind("127.0.0.1:0").unwrap().send_to(b"x", to).unwrap();
                }
            }
            keep
        })
        .join()
        .unwrap()
    })
}

fn group(tcp: bool, n: usize) -> (Vec<socket2::Socket>, SocketAddr) {
    let bind = |a: SocketAddr| if tcp { tcp::bind_listener(a) } else { tftp::bind_listener(a) };
    let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let at = first.local_addr().unwrap().as_socket().unwrap();
    let mut socks = vec![first];
    socks.extend((1..n).map(|_| bind(at).unwrap()));
    (socks, at)
}

/// On loopback the kernel processes a packet on the sender's CPU, so a client pinned on
/// CPU k must reach the socket of the worker on CPU k, for every one of its flows (the
/// hash would spread 16 flows over both).
#[test]
fn steering_sends_every_flow_to_the_worker_on_its_cpu() {
    let cpus = allowed_cpus();
    if cpus.len() < 2 {
        eprintln!("skipped: this test needs two CPUs, the process may use {cpus:?}");
        return;
    }
    let cpus = &cpus[..2];
    for tcp in [false, true] {
        let (socks, at) = group(tcp, 2);
        steer_by_cpu(&socks[0], cpus).unwrap();
        for (k, &cpu) in cpus.iter().enumerate() {
            let _conns = flows_from(cpu, at, tcp, 16);
            std::thread::sleep(Duration::from_millis(50));
            let mut want = vec![0; 2];
            want[k] = 16;
            assert_eq!(drain(&socks, tcp), want, "tcp {tcp}: flows from CPU {cpu} by socket");
        }
    }
}

/// A port held by another process's SO_REUSEPORT socket is refused (joining its group would
/// split the traffic silently); a free one, or one whose connections only linger, is not.
#[test]
fn a_port_held_elsewhere_is_refused_before_joining_it() {
    for tcp in [false, true] {
        let (held, at) = group(tcp, 1);
        let e = ensure_free(at, tcp).unwrap_err();
        assert!(e.contains("already in use by another process"), "tcp {tcp}: {e}");
        drop(held);
        assert_eq!(ensure_free(at, tcp), Ok(()), "tcp {tcp}: free again");
    }
    // A listener gone, its accepted connection still open: the port is free to listen on.
    let (l, at) = group(true, 1);
    let _c = TcpStream::connect(at).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let _accepted = l[0].accept().unwrap();
    drop(l);
    assert_eq!(ensure_free(at, true), Ok(()));
}

/// A CPU without a worker (here: none of the program's CPUs exist) falls back to the hash:
/// nothing is dropped.
#[test]
fn steering_falls_back_to_the_hash_on_other_cpus() {
    for tcp in [false, true] {
        let (socks, at) = group(tcp, 2);
        steer_by_cpu(&socks[0], &[100_000, 100_001]).unwrap();
        let _conns = flows_from(allowed_cpus()[0], at, tcp, 16);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(drain(&socks, tcp).iter().sum::<usize>(), 16, "tcp {tcp}");
    }
}
