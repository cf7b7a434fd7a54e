//! The PXE service on the engine: one UDP socket on `pxe.proxy_port` (67) and one on
//! `pxe.pxe_port` (4011), on worker 0 only and without SO_REUSEPORT: a broadcast reaches every
//! socket of a port, so a second socket would mean a second answer. Receives are recvmsg through
//! the ring with IP_PKTINFO (which interface and address a broadcast arrived on: the address
//! named in option 54, and the interface the broadcast answer leaves by), a fixed set of
//! slots per socket; answers are sendmsg from a fixed pool of send slots (none free: the answer
//! is dropped and counted, the client retries). Every decision is `dhcp::responder`'s.

use super::ring::push;
use super::service::{Io, Service};
use super::token::{ServiceId, Token};
use super::{Shared, WorkerStats};
use crate::config::Pxe;
use crate::dhcp::responder::{BootServer, Inbound, Port, Responder};
use crate::dhcp::wire::PACKET_MAX;
use crate::metrics::Counter;
use io_uring::{opcode, types};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const OP_RECV: u8 = 1;
const OP_SEND: u8 = 2;
const OP_CANCEL: u8 = 3;

/// Receives armed per socket: datagrams arriving while all are being handled wait in the
/// socket's buffer (4 MiB), so a storm's burst is not lost.
const RECV_SLOTS: usize = 16;
/// Answers in flight at once.
const SEND_SLOTS: usize = 64;
/// Room for one IP_PKTINFO control message (cmsghdr 16 + in_pktinfo 12, aligned), doubled.
const CONTROL_LEN: usize = 64;

/// The bound sockets, made in `engine::start` (so a bind error stops the start) and handed to
/// worker 0.
pub struct Sockets {
    proxy: Socket,
    pxe: Option<Socket>,
    pub proxy_addr: SocketAddrV4,
    pub pxe_addr: Option<SocketAddrV4>,
}

fn bind_one(cfg: &Pxe, port: u16) -> Result<Socket, String> {
    let addr = SocketAddrV4::new(cfg.listen, port);
    let what = |e: &dyn std::fmt::Display| format!("cannot bind the PXE service on udp/{addr}: {e}");
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(|e| what(&e))?;
    s.set_broadcast(true).map_err(|e| what(&e))?;
    let on: libc::c_int = 1;
    // Safety: a c_int option value valid for the call.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(what(&std::io::Error::last_os_error()));
    }
    if !cfg.interface.is_empty() {
        s.bind_device(Some(cfg.interface.as_bytes())).map_err(|e| {
            what(&format!(
                "SO_BINDTODEVICE {:?}: {e} (check that the interface exists; binding to one needs CAP_NET_RAW on some kernels)",
                cfg.interface
            ))
        })?;
    }
    let _ = s.set_recv_buffer_size(4 << 20);
    s.set_nonblocking(true).map_err(|e| what(&e))?;
    s.bind(&std::net::SocketAddr::V4(addr).into()).map_err(|e| match e.raw_os_error() {
        Some(libc::EACCES) if port < 1024 => what(&format!(
            "{e}: ports below 1024 need the capability CAP_NET_BIND_SERVICE: run as root, or give it to the binary \
             (`setcap cap_net_bind_service=+ep $(command -v bootfarm)`) or to the service (systemd: \
             AmbientCapabilities=CAP_NET_BIND_SERVICE); a test can set pxe.proxy_port/pxe.pxe_port above 1023"
        )),
        Some(libc::EADDRINUSE) => what(&format!(
            "{e}: another DHCP server (dnsmasq, dhcpd, kea) or a second bootfarm holds it on this host; \
             stop it or give it another address (pxe.listen / pxe.interface)"
        )),
        _ => what(&e),
    })?;
    Ok(s)
}

/// Binds the sockets `[pxe]` asks for.
pub fn bind(cfg: &Pxe) -> Result<Sockets, String> {
    let proxy = bind_one(cfg, cfg.proxy_port)?;
    let pxe = if cfg.pxe_port == 0 { None } else { Some(bind_one(cfg, cfg.pxe_port)?) };
    let local = |s: &Socket| s.local_addr().ok().and_then(|a| a.as_socket_ipv4());
    let proxy_addr = local(&proxy).unwrap_or(SocketAddrV4::new(cfg.listen, cfg.proxy_port));
    let pxe_addr = pxe.as_ref().map(|s| local(s).unwrap_or(SocketAddrV4::new(cfg.listen, cfg.pxe_port)));
    Ok(Sockets { proxy, pxe, proxy_addr, pxe_addr })
}

/// One armed (or armable) receive: its header points into itself, so it is boxed.
struct RecvSlot {
    msg: libc::msghdr,
    iov: libc::iovec,
    name: libc::sockaddr_in,
    control: [u64; CONTROL_LEN / 8],
    /// One byte more than the largest message read: a datagram that fills it was longer
    /// (the kernel cuts it) and is refused as oversized.
    buf: [u8; PACKET_MAX + 1],
    socket: usize,
    armed: bool,
}

struct SendSlot {
    msg: libc::msghdr,
    iov: libc::iovec,
    name: libc::sockaddr_in,
    control: [u64; CONTROL_LEN / 8],
    buf: [u8; PACKET_MAX],
    busy: bool,
}

pub struct DhcpService {
    /// [proxy, pxe]: the index is the `Port`.
    socks: Vec<(Socket, Port)>,
    // The kernel holds pointers into armed slots: a box keeps each where it is, whatever the
    // Vec does.
    #[allow(clippy::vec_box)]
    recvs: Vec<Box<RecvSlot>>,
    #[allow(clippy::vec_box)]
    sends: Vec<Box<SendSlot>>,
    responder: Responder,
    stats: Arc<WorkerStats>,
    shared: Arc<Shared>,
    stopped: bool,
    inflight: usize,
}

fn zeroed<T>() -> T {
    // Safety: used only for plain C structs (msghdr, iovec, sockaddr_in) and byte arrays.
    unsafe { std::mem::zeroed() }
}

impl DhcpService {
    pub fn new(s: Sockets, stats: Arc<WorkerStats>, shared: Arc<Shared>) -> DhcpService {
        tracing::info!(proxy = %s.proxy_addr, pxe = ?s.pxe_addr, "PXE service (ProxyDHCP) answering");
        let mut socks = vec![(s.proxy, Port::Proxy)];
        if let Some(p) = s.pxe {
            socks.push((p, Port::Pxe));
        }
        let mut recvs = Vec::with_capacity(socks.len() * RECV_SLOTS);
        for socket in 0..socks.len() {
            for _ in 0..RECV_SLOTS {
                let mut r: Box<RecvSlot> = Box::new(RecvSlot {
                    msg: zeroed(),
                    iov: zeroed(),
                    name: zeroed(),
                    control: [0; CONTROL_LEN / 8],
                    buf: [0; PACKET_MAX + 1],
                    socket,
                    armed: false,
                });
                r.iov = libc::iovec { iov_base: r.buf.as_mut_ptr().cast(), iov_len: r.buf.len() };
                r.msg.msg_name = (&mut r.name as *mut libc::sockaddr_in).cast();
                r.msg.msg_iov = &mut r.iov;
                r.msg.msg_iovlen = 1;
                r.msg.msg_control = r.control.as_mut_ptr().cast();
                recvs.push(r);
            }
        }
        let sends = (0..SEND_SLOTS)
            .map(|_| {
                Box::new(SendSlot {
                    msg: zeroed(),
                    iov: zeroed(),
                    name: zeroed(),
                    control: [0; CONTROL_LEN / 8],
                    buf: [0; PACKET_MAX],
                    busy: false,
                })
            })
            .collect();
        DhcpService {
            socks,
            recvs,
            sends,
            responder: Responder::new(std::time::Instant::now()),
            stats,
            shared,
            stopped: false,
            inflight: 0,
        }
    }

    fn arm(&mut self, io: &mut Io, i: usize) {
        let r = &mut self.recvs[i];
        // Reset what the kernel changes; a zeroed control area ends the cmsg walk whether or
        // not the kernel writes the used length back.
        r.msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        r.control = [0; CONTROL_LEN / 8];
        r.msg.msg_controllen = CONTROL_LEN as _;
        r.msg.msg_flags = 0;
        let fd = types::Fd(self.socks[r.socket].0.as_raw_fd());
        let e = opcode::RecvMsg::new(fd, &mut r.msg).build().user_data(Token::new(ServiceId::Dhcp, OP_RECV, i as u32, 0).pack());
        push(&mut io.ring, &e);
        r.armed = true;
        self.inflight += 1;
    }

    fn on_datagram(&mut self, io: &mut Io, i: usize, len: usize) {
        let r = &self.recvs[i];
        let (sock_index, port) = (r.socket, self.socks[r.socket].1);
        let source = SocketAddrV4::new(Ipv4Addr::from(u32::from_be(r.name.sin_addr.s_addr)), u16::from_be(r.name.sin_port));
        let (ifindex, spec_dst) = pktinfo(&r.msg).unwrap_or((0, Ipv4Addr::UNSPECIFIED));
        let snap = io.store.load();
        let cfg = &snap.config.pxe;
        let local = match (cfg.server_address, spec_dst, cfg.listen) {
            (Some(a), _, _) => a,
            (None, a, _) if !a.is_unspecified() => a,
            (None, _, l) => l,
        };
        let Some(slot) = self.sends.iter().position(|s| !s.busy) else {
            self.stats.counters.add(Counter::PxeSendErrors, 1);
            return;
        };
        let inbound =
            Inbound { bytes: &r.buf[..len], source, port, local, now: io.now, draining: self.shared.draining.load(Ordering::Relaxed) };
        let shared = &self.shared;
        let mut place = |mac: &str, near: Ipv4Addr| -> Option<BootServer> {
            if snap.farm.len() < 2 {
                // This node alone: named by the address the client reached it on.
                return (!local.is_unspecified()).then_some(BootServer { address: local, http_port: snap.config.server.http_port });
            }
            // The same order /ipxe?mac= computes (the default vdisk's placement for this MAC).
            let vdisk = snap.default_vdisk().map(|v| v.name.as_str()).unwrap_or("");
            let me = shared.farm_local(&snap, io.now);
            let order = shared.farm.place(&snap, vdisk, mac, Some(IpAddr::V4(near)), &me);
            order.iter().find_map(|&k| {
                let m = &snap.farm[k];
                match m.address {
                    IpAddr::V4(address) => Some(BootServer { address, http_port: m.http_port }),
                    IpAddr::V6(_) => None,
                }
            })
        };
        let s = &mut self.sends[slot];
        let out: &mut [u8; PACKET_MAX] = &mut s.buf;
        match self.responder.handle(cfg, &inbound, &mut place, out) {
            Err(why) => {
                self.stats.counters.add(why.counter(), 1);
                tracing::debug!(%source, ?port, ?why, "PXE: no answer");
            }
            Ok(a) => {
                self.stats.counters.add(a.kind.counter(), 1);
                tracing::debug!(%source, to = %a.destination, kind = ?a.kind, "PXE: answered");
                s.name = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.destination.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from(*a.destination.ip()).to_be() },
                    sin_zero: [0; 8],
                };
                s.iov = libc::iovec { iov_base: s.buf.as_mut_ptr().cast(), iov_len: a.len };
                s.msg = zeroed();
                s.msg.msg_name = (&mut s.name as *mut libc::sockaddr_in).cast();
                s.msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                s.msg.msg_iov = &mut s.iov;
                s.msg.msg_iovlen = 1;
                // From the address the request reached; a broadcast leaves by the interface
                // it came in on (255.255.255.255 would otherwise follow the default route).
                // The source is the arrival address itself (pxe.server_address, named in 54,
                // may be an address this host does not hold).
                let oif = if a.broadcast { ifindex } else { 0 };
                if !spec_dst.is_unspecified() || oif != 0 {
                    s.control = [0; CONTROL_LEN / 8];
                    s.msg.msg_control = s.control.as_mut_ptr().cast();
                    s.msg.msg_controllen = CONTROL_LEN as _;
                    // Safety: the control area is CONTROL_LEN bytes, aligned, room for one
                    // in_pktinfo; CMSG_* stay inside it.
                    unsafe {
                        let c = libc::CMSG_FIRSTHDR(&s.msg);
                        (*c).cmsg_level = libc::IPPROTO_IP;
                        (*c).cmsg_type = libc::IP_PKTINFO;
                        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::in_pktinfo>() as u32) as _;
                        let p = libc::CMSG_DATA(c).cast::<libc::in_pktinfo>();
                        p.write_unaligned(libc::in_pktinfo {
                            ipi_ifindex: oif,
                            ipi_spec_dst: libc::in_addr { s_addr: u32::from(spec_dst).to_be() },
                            ipi_addr: libc::in_addr { s_addr: 0 },
                        });
                        s.msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::in_pktinfo>() as u32) as _;
                    }
                }
                let fd = types::Fd(self.socks[sock_index].0.as_raw_fd());
                let e = opcode::SendMsg::new(fd, &s.msg).build().user_data(Token::new(ServiceId::Dhcp, OP_SEND, slot as u32, 0).pack());
                push(&mut io.ring, &e);
                s.busy = true;
                self.inflight += 1;
            }
        }
    }
}

/// (interface index, local address) from a received IP_PKTINFO.
fn pktinfo(msg: &libc::msghdr) -> Option<(i32, Ipv4Addr)> {
    // Safety: msg_control points at the slot's CONTROL_LEN bytes, zeroed before the receive
    // and filled by the kernel; CMSG_NXTHDR stops at a header shorter than a cmsghdr.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                let p = libc::CMSG_DATA(c).cast::<libc::in_pktinfo>().read_unaligned();
                return Some((p.ipi_ifindex, Ipv4Addr::from(u32::from_be(p.ipi_spec_dst.s_addr))));
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    None
}

impl Service for DhcpService {
    fn name(&self) -> &'static str {
        "dhcp"
    }

    fn on_completion(&mut self, io: &mut Io, token: Token, res: i32, _flags: u32) {
        let i = token.id as usize;
        match token.op {
            OP_RECV if i < self.recvs.len() => {
                self.recvs[i].armed = false;
                self.inflight -= 1;
                if res >= 0 {
                    self.on_datagram(io, i, res as usize);
                } else if res != -libc::ECANCELED {
                    tracing::debug!("PXE: receive failed: {}", std::io::Error::from_raw_os_error(-res));
                }
            }
            OP_SEND if i < self.sends.len() => {
                self.sends[i].busy = false;
                self.inflight -= 1;
                if res < 0 {
                    self.stats.counters.add(Counter::PxeSendErrors, 1);
                    tracing::debug!("PXE: send failed: {}", std::io::Error::from_raw_os_error(-res));
                }
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, _io: &mut Io, _token: Token) {}

    fn flush(&mut self, io: &mut Io) {
        if self.stopped {
            return;
        }
        for i in 0..self.recvs.len() {
            if !self.recvs[i].armed {
                self.arm(io, i);
            }
        }
    }

    /// Draining: the other nodes answer; armed receives are cancelled.
    fn stop_listening(&mut self, io: &mut Io) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        for i in 0..self.recvs.len() {
            if self.recvs[i].armed {
                let t = Token::new(ServiceId::Dhcp, OP_RECV, i as u32, 0).pack();
                push(&mut io.ring, &opcode::AsyncCancel::new(t).build().user_data(Token::of_service(ServiceId::Dhcp, OP_CANCEL).pack()));
            }
        }
    }

    fn abort_all(&mut self, io: &mut Io) {
        self.stop_listening(io);
    }

    fn active(&self) -> usize {
        0
    }

    /// Receives and sends the kernel still holds (their slots must outlive them).
    fn lingering(&self) -> usize {
        self.inflight
    }
}
