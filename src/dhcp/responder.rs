//! The ProxyDHCP decision, sans-IO: one received datagram (bytes, where from, which port, the
//! arrival interface's address, now) and the farm's placement in, at most ONE answer out (never
//! more packets than came in: no amplification), or the reason for silence. It never offers an
//! address (yiaddr 0) and answers only clients whose option 60 starts with `PXEClient` or
//! `HTTPClient`, so it coexists with the site's DHCP server. Limits: answers per MAC (GCRA in a
//! fixed table), message size and option sizes (wire.rs), one answer per request.

use super::wire::{self, MessageType, Op, PxeVendor, Repr};
use crate::config::{Pxe, Relay};
use crate::metrics::Counter;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

/// Which port a datagram arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The DHCP server port (67): DISCOVERs, broadcast.
    Proxy,
    /// The PXE boot-server port (4011): unicast REQUESTs from clients that have an address.
    Pxe,
}

/// What kind of client asked, from options 60, 93, 77 and 175.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// PXE ROM in BIOS (arch 0): gets a TFTP network boot program (undionly.kpxe).
    Bios,
    /// EDK2 PXE (arch 7 or 9): gets an EFI program over TFTP.
    Uefi,
    /// EDK2 HTTP Boot (arch 16, `HTTPClient`): gets an http:// URL of an EFI program.
    UefiHttp,
    /// iPXE (user class `iPXE` or option 175), any arch: gets the /ipxe script URL, which
    /// ends in sanboot, never in another iPXE binary (so a chainload cannot loop).
    Ipxe,
}

impl ClientKind {
    pub fn counter(self) -> Counter {
        match self {
            ClientKind::Bios => Counter::PxeAnswersBios,
            ClientKind::Uefi => Counter::PxeAnswersUefi,
            ClientKind::UefiHttp => Counter::PxeAnswersUefiHttp,
            ClientKind::Ipxe => Counter::PxeAnswersIpxe,
        }
    }
}

/// Why a datagram got no answer. Each is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not parsable as DHCP (wire::Malformed).
    Malformed(wire::Malformed),
    /// No option 60 `PXEClient`/`HTTPClient`: ordinary DHCP traffic, the site server's business.
    NotPxe,
    /// A reply, or a message type this port does not answer (REQUEST on 67 goes to the site
    /// server; only REQUEST/INFORM on 4011).
    NotForProxy,
    /// A PXE client of an architecture with no boot file configured (e.g. ARM64).
    UnsupportedArch(u16),
    /// Relayed (giaddr set) while `pxe.relay = "ignore"`.
    Relayed,
    /// This MAC is past `pxe.answers_per_mac_per_s` / burst.
    RateLimited,
    /// This node is shutting down: the other nodes answer.
    Draining,
    /// Placement named no server (all down, or none for the client's subnet).
    NoServer,
}

impl Refusal {
    pub fn counter(self) -> Counter {
        match self {
            Refusal::Malformed(_) => Counter::PxeMalformed,
            Refusal::NotPxe => Counter::PxeIgnoredNotPxe,
            Refusal::NotForProxy => Counter::PxeIgnoredNotForProxy,
            Refusal::UnsupportedArch(_) => Counter::PxeIgnoredArch,
            Refusal::Relayed => Counter::PxeIgnoredRelayed,
            Refusal::RateLimited => Counter::PxeIgnoredRateLimit,
            Refusal::Draining => Counter::PxeIgnoredDraining,
            Refusal::NoServer => Counter::PxeIgnoredNoServer,
        }
    }
}

/// The boot server the farm's placement chose for a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootServer {
    /// Its IPv4 address: siaddr (TFTP) and the host of every URL.
    pub address: Ipv4Addr,
    pub http_port: u16,
}

/// One received datagram.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub bytes: &'a [u8],
    pub source: SocketAddrV4,
    pub port: Port,
    /// The address of the interface it arrived on (IP_PKTINFO's spec_dst): option 54 unless
    /// `pxe.server_address` is set.
    pub local: Ipv4Addr,
    pub now: Instant,
    /// This node is draining: nothing is answered.
    pub draining: bool,
}

/// The answer to send: `len` bytes at the front of the caller's buffer, to `destination`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub len: usize,
    pub destination: SocketAddrV4,
    /// To a broadcast address: the socket needs SO_BROADCAST (it has it).
    pub broadcast: bool,
    pub kind: ClientKind,
}

/// Slots of the per-MAC rate table: fixed memory (64 KiB) whatever the number of MACs. Two
/// MACs in one slot: the newer takes it over (a flood of many MACs can only reset others'
/// buckets, never grant one MAC more than its burst at once).
const RATE_SLOTS: usize = 4096;

/// Longest URL written into option 67 (the option's bound).
const URL_MAX: usize = wire::OPTION_MAX;

pub struct Responder {
    origin: Instant,
    /// (MAC, theoretical arrival time in µs since `origin`, offset so that 0 is a full bucket).
    rate: Box<[([u8; 6], u64)]>,
}

impl Default for Responder {
    fn default() -> Self {
        Responder::new(Instant::now())
    }
}

impl Responder {
    /// `origin`: any instant not after the first `now` it will be given.
    pub fn new(origin: Instant) -> Responder {
        Responder { origin, rate: vec![([0u8; 6], 0u64); RATE_SLOTS].into_boxed_slice() }
    }

    /// GCRA, as engine::RateLimit: one timestamp per bucket.
    fn take(&mut self, mac: [u8; 6], now: Instant, per_s: u32, burst: u32) -> bool {
        let interval = (1_000_000 / per_s.max(1) as u64).max(1);
        let tolerance = interval * burst.max(1) as u64 - interval;
        let now_us = now.saturating_duration_since(self.origin).as_micros() as u64 + tolerance + interval;
        let h = crate::farm::place::stable_hash(&[&mac]) as usize % RATE_SLOTS;
        let slot = &mut self.rate[h];
        if slot.0 != mac {
            *slot = (mac, 0);
        }
        let start = slot.1.max(now_us);
        if start - now_us > tolerance {
            return false;
        }
        slot.1 = start + interval;
        true
    }

    /// Decides on one datagram. `place` maps the target key (the MAC as iPXE's `${mac}`
    /// writes it, what /ipxe?mac= places by) and an address of the client's subnet to the
    /// placed server. On `Ok`, the answer's bytes are in `out[..len]`.
    pub fn handle(
        &mut self,
        cfg: &Pxe,
        inbound: &Inbound,
        place: &mut dyn FnMut(&str, Ipv4Addr) -> Option<BootServer>,
        out: &mut [u8; wire::PACKET_MAX],
    ) -> Result<Answer, Refusal> {
        let req = wire::parse(inbound.bytes).map_err(Refusal::Malformed)?;
        if req.op != Op::Request {
            return Err(Refusal::NotForProxy);
        }
        let answer_type = match (inbound.port, req.message_type) {
            (Port::Proxy, MessageType::Discover) => MessageType::Offer,
            // Answered by unicast to the source: it must be one (a client on 4011 has its address).
            (Port::Pxe, _) if inbound.source.ip().is_unspecified() || inbound.source.ip().is_broadcast() || inbound.source.port() == 0 => {
                return Err(Refusal::NotForProxy)
            }
            (Port::Pxe, MessageType::Request | MessageType::Inform) => MessageType::Ack,
            _ => return Err(Refusal::NotForProxy),
        };
        let class = req.vendor_class.unwrap_or(b"");
        let http = class.starts_with(b"HTTPClient");
        if !http && !class.starts_with(b"PXEClient") {
            return Err(Refusal::NotPxe);
        }
        // Option 93, else the `Arch:xxxxx` field of 60 (some ROMs send only that), else BIOS.
        let arch = req.client_arch.or_else(|| arch_of_class(class)).unwrap_or(0);
        // An iPXE that cannot speak HTTP (175 without the feature) is booted by its arch: the
        // NBP it gets then is an iPXE with HTTP, which comes back as iPXE.
        let ipxe = req.has_user_class(b"iPXE") || req.ipxe_encap.is_some();
        let kind = if ipxe && (req.ipxe_encap.is_none() || req.has_ipxe_feature(wire::ipxe_feature::HTTP)) {
            ClientKind::Ipxe
        } else if http {
            match arch {
                16 => ClientKind::UefiHttp,
                a => return Err(Refusal::UnsupportedArch(a)),
            }
        } else {
            match arch {
                0 => ClientKind::Bios,
                7 | 9 => ClientKind::Uefi,
                a => return Err(Refusal::UnsupportedArch(a)),
            }
        };
        let relayed = inbound.port == Port::Proxy && req.giaddr != Ipv4Addr::UNSPECIFIED;
        if relayed && cfg.relay == Relay::Ignore {
            return Err(Refusal::Relayed);
        }
        if inbound.draining {
            return Err(Refusal::Draining);
        }
        if !self.take(req.chaddr, inbound.now, cfg.answers_per_mac_per_s, cfg.answers_per_mac_burst) {
            return Err(Refusal::RateLimited);
        }
        let m = req.chaddr;
        let mac = format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5]);
        // The client has no address yet: its relay's, or the arrival interface's, is on its subnet.
        let near = if relayed { req.giaddr } else { inbound.local };
        let server = place(&mac, near).ok_or(Refusal::NoServer)?;
        let me = cfg.server_address.unwrap_or(inbound.local);

        let mut a = Repr::new(Op::Reply, answer_type, req.xid, req.chaddr);
        a.broadcast = req.broadcast;
        a.giaddr = if relayed { req.giaddr } else { Ipv4Addr::UNSPECIFIED };
        a.hops = if relayed { req.hops } else { 0 };
        a.server_id = Some(me);
        a.vendor_class = Some(if kind == ClientKind::UefiHttp { b"HTTPClient" } else { b"PXEClient" });
        a.client_uuid = req.client_uuid;
        a.relay_agent = if relayed { req.relay_agent } else { None };
        // Option 43: an offer says "boot the file in this packet" (6 = 8) to every PXE client
        // but UEFI when 4011 is to be used (EDK2 without 43 asks there); an ACK on 4011 echoes
        // the boot item (71) the request named, as dnsmasq does and EDK2 and iPXE accept.
        let mut vend = [0u8; PxeVendor::BUFFER_LEN];
        let vendor = if answer_type == MessageType::Ack {
            let boot_item = req.vendor_specific.and_then(|v| PxeVendor::parse(v).ok()).and_then(|v| v.boot_item);
            PxeVendor { discovery_control: None, boot_item }
        } else if kind == ClientKind::UefiHttp || (kind == ClientKind::Uefi && cfg.uefi_via_pxe_port) {
            PxeVendor::default()
        } else {
            PxeVendor { discovery_control: Some(wire::pxe_sub::USE_BOOT_FILE), boot_item: None }
        };
        let n = vendor.emit(&mut vend);
        if n > 0 {
            a.vendor_specific = Some(&vend[..n]);
        }
        if answer_type == MessageType::Ack {
            a.ciaddr = req.ciaddr;
        }
        let mut url = String::new();
        let mut sname = [0u8; 16];
        let sname_len = {
            use std::io::Write;
            let mut c = std::io::Cursor::new(&mut sname[..]);
            let _ = write!(c, "{}", server.address);
            c.position() as usize
        };
        match kind {
            ClientKind::Bios | ClientKind::Uefi => {
                let file = if kind == ClientKind::Bios { &cfg.bios_boot_file } else { &cfg.uefi_boot_file };
                a.siaddr = server.address;
                a.sname = &sname[..sname_len];
                a.file = file.as_bytes();
            }
            ClientKind::UefiHttp => {
                url = format!("http://{}:{}/boot/{}", server.address, server.http_port, cfg.http_boot_file);
            }
            ClientKind::Ipxe => {
                // iPXE expands ${mac} itself; the script names the vdisk servers in failover order.
                url = format!("http://{}:{}/ipxe?mac=${{mac}}", server.address, server.http_port);
                a.siaddr = server.address;
            }
        }
        if !url.is_empty() {
            debug_assert!(url.len() <= URL_MAX);
            a.bootfile = Some(url.as_bytes());
            if url.len() < 128 {
                // Some ROMs read only the file field.
                a.file = url.as_bytes();
            }
        }
        // Cannot fail with a validated [pxe] (names of at most 100 bytes, URLs under 255).
        let len = a.emit(out).map_err(|_| Refusal::Malformed(wire::Malformed::TooLong))?;
        let destination = match inbound.port {
            // Unicast to where the request came from (EDK2: port 4011, iPXE: 68).
            Port::Pxe => inbound.source,
            Port::Proxy if relayed => SocketAddrV4::new(req.giaddr, wire::SERVER_PORT),
            Port::Proxy if req.ciaddr != Ipv4Addr::UNSPECIFIED && !req.broadcast => SocketAddrV4::new(req.ciaddr, cfg.client_port),
            // No address yet (yiaddr 0, so nothing to unicast to): broadcast, as dnsmasq does.
            Port::Proxy => SocketAddrV4::new(Ipv4Addr::BROADCAST, cfg.client_port),
        };
        Ok(Answer { len, destination, broadcast: destination.ip().is_broadcast(), kind })
    }
}

/// The architecture in `PXEClient:Arch:00007:UNDI:003000` (decimal, PXE 2.1 §2.2.1).
fn arch_of_class(class: &[u8]) -> Option<u16> {
    let mut f = class.split(|&b| b == b':');
    let (_, tag, digits) = (f.next()?, f.next()?, f.next()?);
    if tag != b"Arch" || digits.len() != 5 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
#[path = "responder_tests.rs"]
mod tests;
