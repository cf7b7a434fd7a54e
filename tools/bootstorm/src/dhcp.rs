//! The DHCP phase: N simulated PXE clients (distinct MACs; BIOS, UEFI, HTTP Boot and iPXE kinds,
//! their options as the lab's firmware sends them) broadcast a DISCOVER each, arriving spread
//! over a window, and measure the time to a *usable* answer: a proxy offer naming a boot file,
//! or for a UEFI client whose offer lacks option 43 (as EDK2 does) the DHCPACK to its follow-up
//! DHCPREQUEST on port 4011. Address offers (yiaddr set, no PXE class: the site's DHCP server)
//! are counted and ignored. Every client is bounded in retransmissions and the whole phase in
//! time. One thread with two sockets (68 and 4011) and poll(2) is enough: a storm of a few
//! thousand datagrams is three orders of magnitude below what one core sends, so the numbers
//! measure the server. Broadcast needs an L2 segment: run it in a network namespace beside the
//! server's (perf/dhcp.sh builds one), since the answers come back to port 68 and 4011.

use crate::report::Phase;
use bootfarm::dhcp::wire::{self, MessageType, Op, PxeVendor, Repr};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Where DISCOVERs go: the broadcast address (as firmware sends) or one server.
    #[arg(long, default_value = "255.255.255.255:67")]
    server: SocketAddrV4,
    /// Simulated clients in all.
    #[arg(long, alias = "targets", default_value_t = 2000)]
    clients: u64,
    /// The clients' first DISCOVERs are spread evenly over this window (0: all at once).
    #[arg(long, default_value_t = 1000)]
    arrival_ms: u64,
    /// Client kinds, cycled over the clients: bios (PXE ROM), uefi (EDK2 PXE), http (EDK2 HTTP
    /// Boot), ipxe (an iPXE ROM: user class iPXE and option 175).
    #[arg(long, value_delimiter = ',', default_value = "bios,uefi")]
    kinds: Vec<Kind>,
    /// Local port the DISCOVERs are sent from and answers arrive on (firmware: 68).
    #[arg(long, default_value_t = wire::CLIENT_PORT)]
    client_port: u16,
    /// Local port of the UEFI DHCPREQUEST to the proxy (EDK2 sends from 4011 and expects the
    /// answer there).
    #[arg(long, default_value_t = wire::PXE_PORT)]
    pxe_client_port: u16,
    /// The proxy's port-4011 service (the server's address comes from the offer's option 54).
    #[arg(long, default_value_t = wire::PXE_PORT)]
    pxe_port: u16,
    /// Retransmit a step with no usable answer after this long (doubling each time, as the
    /// firmware's backoff does).
    #[arg(long, default_value_t = 1000)]
    retry_ms: u64,
    /// Sends per step before the client counts as failed.
    #[arg(long, default_value_t = 4)]
    tries: u32,
    /// Stop after this long whatever remains (unfinished clients count as timed out).
    #[arg(long, default_value_t = 30)]
    duration_max_s: u64,
    /// Server processes whose CPU time (all threads, from /proc/PID/task/*/schedstat) is
    /// measured over the phase and reported per answer.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a one-page HTML report here.
    #[arg(long)]
    html: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Bios,
    Uefi,
    Http,
    Ipxe,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Bios => "bios",
            Kind::Uefi => "uefi",
            Kind::Http => "http",
            Kind::Ipxe => "ipxe",
        }
    }
    /// Option 60 as the lab's firmware sends it (DESIGN.md's table).
    fn vendor_class(self) -> &'static [u8] {
        match self {
            Kind::Bios | Kind::Ipxe => b"PXEClient:Arch:00000:UNDI:002001",
            Kind::Uefi => b"PXEClient:Arch:00007:UNDI:003000",
            Kind::Http => b"HTTPClient:Arch:00016:UNDI:003000",
        }
    }
    fn arch(self) -> u16 {
        match self {
            Kind::Bios | Kind::Ipxe => 0,
            Kind::Uefi => 7,
            Kind::Http => 16,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    Waiting,
    Discover,
    Request4011,
    Done,
    Failed,
}

struct Client {
    kind: Kind,
    mac: [u8; 6],
    xid: u32,
    step: Step,
    start_at: Duration,
    first_sent: Option<Instant>,
    next_send: Duration,
    sends: u32,
    proxy: Option<Ipv4Addr>,
    /// The boot server type of the proxy's menu (option 43 sub-option 9), asked for on 4011.
    boot_item: Option<u16>,
}

/// Counts beside the phase's completions: what came back, and how often.
#[derive(Default)]
struct Tally {
    sent: u64,
    answers: u64,
    /// Answers to a client already done or to a step it left: more than one answer per request
    /// would be amplification.
    extra: u64,
    address_offers: u64,
    malformed: u64,
    unknown_xid: u64,
    via_4011: u64,
    per_kind: HashMap<&'static str, (u64, u64)>,
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn udp_socket(port: u16) -> Result<Socket, String> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(|e| e.to_string())?;
    s.set_reuse_address(true).map_err(|e| e.to_string())?;
    s.set_broadcast(true).map_err(|e| e.to_string())?;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    // A storm's answers arrive in a burst: the default receive buffer (~200 KiB) holds under a
    // hundred small datagrams (each costs a whole skb). SO_RCVBUFFORCE passes rmem_max as root.
    let size: libc::c_int = 16 << 20;
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size as *const _ as *const libc::c_void,
            std::mem::size_of_val(&size) as u32,
        )
    };
    if rc != 0 {
        let _ = s.set_recv_buffer_size(size as usize);
    }
    let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    s.bind(&addr.into()).map_err(|e| {
        format!(
            "bind {addr}: {e} (port {port} is a DHCP client port: run bootstorm as root, in a network namespace of its own \
             beside the server's, as perf/dhcp.sh does)"
        )
    })?;
    Ok(s)
}

/// The client's own address on the segment, for ciaddr of the 4011 REQUEST: the source address
/// the kernel picks towards `to`.
fn own_addr(to: Ipv4Addr) -> Ipv4Addr {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| s.connect((to, 9)).map(|_| s));
    match probe.and_then(|s| s.local_addr()) {
        Ok(SocketAddr::V4(a)) => *a.ip(),
        _ => Ipv4Addr::UNSPECIFIED,
    }
}

/// The client's DISCOVER, or its DHCPREQUEST to the proxy on 4011 (`ciaddr` set), with the
/// options the firmware of its kind sends.
fn message(c: &Client, mt: MessageType, secs: u16, ciaddr: Ipv4Addr, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut uuid = [0u8; 17];
    uuid[1..7].copy_from_slice(&c.mac);
    uuid[7..11].copy_from_slice(&c.xid.to_be_bytes());
    let prl: &[u8] = &[1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135, 175];
    let mut r = Repr::new(Op::Request, mt, c.xid, c.mac);
    r.secs = secs;
    // As captured: EDK2 sets the broadcast flag on DISCOVER, not on its 4011 REQUEST; the iPXE
    // ROM the other way round.
    let bios = matches!(c.kind, Kind::Bios | Kind::Ipxe);
    r.broadcast = (mt == MessageType::Request) == bios;
    r.ciaddr = ciaddr;
    // A BIOS ROM's boot-server request names the menu item it picked (43 {71: type, layer 0}).
    let mut v43 = [0u8; PxeVendor::BUFFER_LEN];
    if mt == MessageType::Request && bios {
        let n = PxeVendor { boot_item: Some((c.boot_item.unwrap_or(0x8000), 0)), ..Default::default() }.emit(&mut v43);
        r.vendor_specific = Some(&v43[..n]);
    }
    r.max_message_size = Some(1472);
    r.vendor_class = Some(c.kind.vendor_class());
    r.client_arch = Some(c.kind.arch());
    r.client_ndi = Some(if bios { [1, 2, 1] } else { [1, 3, 0] });
    r.client_uuid = Some(&uuid);
    r.parameter_request_list = Some(prl);
    if c.kind == Kind::Ipxe {
        r.user_class = Some(b"iPXE");
        // iPXE's feature list (175): priority, keep-san, PXE extensions, HTTP, iSCSI, version.
        r.ipxe_encap = Some(&[0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e, 0x13, 0x01, 0x01, 0x11, 0x01, 0x01]);
    }
    buf.clear();
    buf.resize(r.buffer_len(), 0);
    let n = r.emit(buf).map_err(|e| format!("cannot build a {mt:?}: {e:?}"))?;
    buf.truncate(n);
    Ok(())
}

/// The boot file an answer names: option 67, else the file field.
fn boot_file<'a>(r: &Repr<'a>) -> Option<&'a [u8]> {
    r.bootfile.filter(|f| !f.is_empty()).or(Some(r.file).filter(|f| !f.is_empty() && f[0] != 0))
}

enum Verdict {
    Usable,
    Ask4011(Ipv4Addr),
    Unusable(&'static str),
}

/// The first boot server type of a PXE boot menu (option 43 sub-option 9: type, length,
/// description, ...), which a BIOS ROM asks for on 4011.
fn menu_item(v43: &[u8]) -> Option<u16> {
    let mut i = 0;
    while i + 1 < v43.len() && v43[i] != 255 {
        let (code, len) = (v43[i], v43[i + 1] as usize);
        let val = v43.get(i + 2..i + 2 + len)?;
        if code == 9 && len >= 2 {
            return Some(u16::from_be_bytes([val[0], val[1]]));
        }
        i += 2 + len;
    }
    None
}

/// What a firmware of `kind` does with a proxy offer (DESIGN.md: what real firmware does).
fn judge_offer(kind: Kind, r: &Repr, from: Ipv4Addr) -> Verdict {
    let file = boot_file(r);
    let proxy = r.server_id.or(Some(r.siaddr).filter(|a| !a.is_unspecified())).unwrap_or(from);
    match kind {
        Kind::Http => match file {
            _ if !r.vendor_class.is_some_and(|v| v.starts_with(b"HTTPClient")) => {
                Verdict::Unusable("HTTP Boot offer without option 60 HTTPClient")
            }
            Some(f) if f.starts_with(b"http://") => Verdict::Usable,
            _ => Verdict::Unusable("HTTP Boot offer without an http:// URL"),
        },
        // EDK2: a PXEClient offer without option 43 is a "BINL" offer: ask the proxy on 4011.
        Kind::Uefi if r.vendor_specific.is_none() => Verdict::Ask4011(proxy),
        Kind::Ipxe => match file {
            Some(f) if f.starts_with(b"http://") || f.starts_with(b"tftp://") || !f.contains(&b':') => Verdict::Usable,
            _ => Verdict::Unusable("iPXE offer without a boot file"),
        },
        _ => {
            let use_file = r
                .vendor_specific
                .and_then(|v| PxeVendor::parse(v).ok())
                .and_then(|p| p.discovery_control)
                .is_some_and(|d| d & wire::pxe_sub::USE_BOOT_FILE != 0);
            match file {
                Some(_) if use_file || r.vendor_specific.is_none() => Verdict::Usable,
                // A boot menu / server list without a file: PXE boot-server discovery on 4011.
                _ if r.vendor_specific.is_some() => Verdict::Ask4011(proxy),
                _ => Verdict::Unusable("PXE offer without a boot file"),
            }
        }
    }
}

/// CPU time of every thread of `pid` so far, in nanoseconds (schedstat's first field).
fn cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let p = t.ok()?.path().join("schedstat");
        let s = std::fs::read_to_string(p).ok()?;
        total += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

pub fn run(a: Args) -> Result<bool, String> {
    if a.kinds.is_empty() {
        return Err("--kinds is empty: name at least one of bios, uefi, http, ipxe".into());
    }
    let s68 = udp_socket(a.client_port)?;
    let s4011 = udp_socket(a.pxe_client_port)?;
    let mut rng = a.seed ^ 0xD4C9;
    let n = a.clients as usize;
    let mut clients: Vec<Client> = Vec::with_capacity(n);
    let mut by_xid: HashMap<u32, usize> = HashMap::with_capacity(n);
    for i in 0..n {
        let mut xid = splitmix(&mut rng) as u32;
        while by_xid.contains_key(&xid) {
            xid = splitmix(&mut rng) as u32;
        }
        by_xid.insert(xid, i);
        // Locally administered, unicast, distinct per client: 02:bf:<seed byte>:<index>.
        let mac = [0x02, 0xbf, a.seed as u8, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let start_at = Duration::from_micros(a.arrival_ms * 1000 * i as u64 / a.clients.max(1));
        clients.push(Client {
            kind: a.kinds[i % a.kinds.len()],
            mac,
            xid,
            step: Step::Waiting,
            start_at,
            first_sent: None,
            next_send: start_at,
            sends: 0,
            proxy: None,
            boot_item: None,
        });
    }
    let cpu0: Vec<Option<u64>> = a.server_pid.iter().map(|&p| cpu_ns(p)).collect();
    let own0 = crate::report::own_cpu_ms();
    let mut phase = Phase::new("dhcp");
    let mut tally = Tally::default();
    let mut buf = Vec::with_capacity(wire::PACKET_MAX);
    let mut rx = vec![0u8; 2048];
    let limit = Duration::from_secs(a.duration_max_s);
    let mut ciaddr: Option<Ipv4Addr> = None;
    let mut open = n;
    let t0 = Instant::now();
    // Clients are visited in start order; `cursor` is the first not yet started.
    let mut cursor = 0;
    let mut retry: std::collections::BinaryHeap<std::cmp::Reverse<(Duration, usize)>> = Default::default();
    while open > 0 && t0.elapsed() < limit {
        let now = t0.elapsed();
        while cursor < n && clients[cursor].start_at <= now {
            clients[cursor].step = Step::Discover;
            retry.push(std::cmp::Reverse((clients[cursor].start_at, cursor)));
            cursor += 1;
        }
        // Sends due now: first DISCOVERs and retransmissions, at most a batch before the
        // answers are read (a storm's answers must not wait behind thousands of sends).
        let mut batch = 0;
        while let Some(&std::cmp::Reverse((at, i))) = retry.peek() {
            if at > now || batch == 64 {
                break;
            }
            batch += 1;
            retry.pop();
            let c = &mut clients[i];
            if c.next_send != at || !matches!(c.step, Step::Discover | Step::Request4011) {
                continue; // superseded by an answer or a later schedule
            }
            if c.sends >= a.tries {
                c.step = Step::Failed;
                open -= 1;
                phase.fail(if c.proxy.is_some() { "no answer on 4011" } else { "no usable answer" });
                continue;
            }
            let secs = c.first_sent.map_or(0, |f| f.elapsed().as_secs().min(u16::MAX as u64) as u16);
            let (sock, dest) = match c.step {
                Step::Discover => {
                    message(c, MessageType::Discover, secs, Ipv4Addr::UNSPECIFIED, &mut buf)?;
                    (&s68, SocketAddr::V4(a.server))
                }
                _ => {
                    let proxy = c.proxy.unwrap();
                    let ci = *ciaddr.get_or_insert_with(|| own_addr(proxy));
                    message(c, MessageType::Request, secs, ci, &mut buf)?;
                    (&s4011, SocketAddr::V4(SocketAddrV4::new(proxy, a.pxe_port)))
                }
            };
            match sock.send_to(&buf, &SockAddr::from(dest)) {
                Ok(_) => tally.sent += 1,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("send to {dest}: {e}")),
            }
            if c.sends > 0 {
                phase.resends += 1;
            }
            c.first_sent.get_or_insert_with(Instant::now);
            c.sends += 1;
            c.next_send = now + Duration::from_millis(a.retry_ms << (c.sends - 1).min(6));
            retry.push(std::cmp::Reverse((c.next_send, i)));
        }
        // Answers.
        for sock in [&s68, &s4011] {
            loop {
                let got = {
                    let uninit = unsafe { &mut *(rx.as_mut_slice() as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
                    sock.recv_from(uninit)
                };
                let (len, from) = match got {
                    Ok(v) => v,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(format!("receive: {e}")),
                };
                let from_ip = from.as_socket_ipv4().map_or(Ipv4Addr::UNSPECIFIED, |a| *a.ip());
                let Ok(r) = wire::parse(&rx[..len]) else {
                    tally.malformed += 1;
                    continue;
                };
                if r.op != Op::Reply {
                    continue; // another client's broadcast, looped back by the segment
                }
                let Some(&i) = by_xid.get(&r.xid) else {
                    tally.unknown_xid += 1;
                    continue;
                };
                let c = &mut clients[i];
                if r.chaddr != c.mac {
                    tally.unknown_xid += 1;
                    continue;
                }
                tally.answers += 1;
                let pxe = r.vendor_class.is_some_and(|v| v.starts_with(b"PXEClient") || v.starts_with(b"HTTPClient"));
                if !pxe && !r.yiaddr.is_unspecified() {
                    tally.address_offers += 1;
                    continue;
                }
                let verdict = match (c.step, r.message_type) {
                    (Step::Discover, MessageType::Offer) => judge_offer(c.kind, &r, from_ip),
                    (Step::Request4011, MessageType::Ack) => match boot_file(&r) {
                        Some(_) => Verdict::Usable,
                        None => Verdict::Unusable("4011 answer without a boot file"),
                    },
                    _ => {
                        tally.extra += 1;
                        continue;
                    }
                };
                let kind = c.kind.name();
                match verdict {
                    Verdict::Usable => {
                        let took = c.first_sent.map_or(Duration::ZERO, |f| f.elapsed());
                        phase.micros.record((took.as_micros() as u64).max(1)).ok();
                        phase.done_at_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                        phase.completed += 1;
                        phase.bytes += len as u64;
                        if c.step == Step::Request4011 {
                            tally.via_4011 += 1;
                        }
                        tally.per_kind.entry(kind).or_default().0 += 1;
                        c.step = Step::Done;
                        open -= 1;
                    }
                    Verdict::Ask4011(proxy) => {
                        c.step = Step::Request4011;
                        c.proxy = Some(proxy);
                        c.boot_item = r.vendor_specific.and_then(menu_item);
                        c.sends = 0;
                        c.next_send = t0.elapsed();
                        retry.push(std::cmp::Reverse((c.next_send, i)));
                    }
                    Verdict::Unusable(why) => {
                        tally.per_kind.entry(kind).or_default().1 += 1;
                        phase.fail(why);
                        c.step = Step::Failed;
                        open -= 1;
                    }
                }
            }
        }
        if open == 0 {
            break;
        }
        // Sleep until the next send is due or an answer arrives: ppoll with a timeout in
        // microseconds, since arrivals 0.5 ms apart would make a millisecond poll spin (and the
        // client would take a core from the server it measures).
        let next = retry.peek().map(|r| r.0 .0).into_iter().chain((cursor < n).then(|| clients[cursor].start_at)).min();
        let wait = next.map_or(Duration::from_millis(50), |at| at.saturating_sub(t0.elapsed()).min(Duration::from_millis(50)));
        let wait = if batch == 64 { Duration::ZERO } else { wait };
        let ts = libc::timespec { tv_sec: 0, tv_nsec: wait.as_nanos() as libc::c_long };
        let mut fds = [
            libc::pollfd { fd: s68.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: s4011.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &ts, std::ptr::null()) };
    }
    let wall = t0.elapsed();
    for c in &clients {
        if !matches!(c.step, Step::Done | Step::Failed) {
            phase.fail("not finished in time");
        }
    }
    let own_ms = crate::report::own_cpu_ms() - own0;
    let server_ms: Option<f64> = a
        .server_pid
        .iter()
        .zip(&cpu0)
        .map(|(&p, before)| Some((cpu_ns(p)? - (*before)?) as f64 / 1e6))
        .sum::<Option<f64>>()
        .filter(|_| !a.server_pid.is_empty());
    let mut text = phase.text(wall);
    let per_answer = |ms: f64| if phase.completed > 0 { ms * 1000.0 / phase.completed as f64 } else { 0.0 };
    text += &format!(
        "  requests:    {} sent ({} resends), {} answers, {} beyond one per request, {} usable via 4011\n",
        tally.sent, phase.resends, tally.answers, tally.extra, tally.via_4011
    );
    text += &format!(
        "  ignored:     {} address offers (site DHCP), {} malformed, {} for unknown clients\n",
        tally.address_offers, tally.malformed, tally.unknown_xid
    );
    let mut kinds: Vec<_> = tally.per_kind.iter().collect();
    kinds.sort();
    for (k, (ok, bad)) in &kinds {
        text += &format!("  kind {k:<6}   {ok} usable, {bad} unusable\n");
    }
    text += &format!("  client cpu:  {own_ms:.0} ms ({:.1} us per answer)\n", per_answer(own_ms));
    if let Some(ms) = server_ms {
        let per_request = ms * 1000.0 / tally.answers.max(1) as f64;
        text +=
            &format!("  server cpu:  {ms:.1} ms ({:.1} us per usable answer, {per_request:.1} us per datagram answered)\n", per_answer(ms));
    }
    print!("{text}");
    if let Some(j) = &a.json {
        let kinds_json: Vec<String> =
            kinds.iter().map(|(k, (ok, bad))| format!("\"{k}\": {{\"usable\": {ok}, \"unusable\": {bad}}}")).collect();
        let body = format!(
            "{{\"tool\": \"bootstorm\", \"clients\": {}, \"arrival_ms\": {}, \"server\": \"{}\", \"sent\": {}, \"answers\": {}, \"extra_answers\": {}, \"via_4011\": {}, \"address_offers\": {}, \"malformed\": {}, \"kinds\": {{{}}}, \"client_cpu_ms\": {own_ms:.1}, \"server_cpu_ms\": {}, \"server_cpu_us_per_answer\": {}, \"server_cpu_us_per_datagram\": {}, \"phases\": [{}]}}\n",
            a.clients,
            a.arrival_ms,
            a.server,
            tally.sent,
            tally.answers,
            tally.extra,
            tally.via_4011,
            tally.address_offers,
            tally.malformed,
            kinds_json.join(", "),
            server_ms.map_or("null".into(), |m| format!("{m:.3}")),
            server_ms.map_or("null".into(), |m| format!("{:.3}", per_answer(m))),
            server_ms.map_or("null".into(), |m| format!("{:.3}", m * 1000.0 / tally.answers.max(1) as f64)),
            phase.json(wall)
        );
        std::fs::write(j, body).map_err(|e| format!("{}: {e}", j.display()))?;
    }
    if let Some(h) = &a.html {
        let kinds: Vec<&str> = a.kinds.iter().map(|k| k.name()).collect();
        let context =
            format!("{} PXE clients ({}) arriving within {} ms, DISCOVER to {}", a.clients, kinds.join(", "), a.arrival_ms, a.server);
        std::fs::write(h, phase.html(wall, &context)).map_err(|e| format!("{}: {e}", h.display()))?;
    }
    Ok(phase.failed() == 0 && phase.completed == a.clients)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(kind: Kind) -> Client {
        Client {
            kind,
            mac: [2, 0xbf, 1, 0, 0, 7],
            xid: 0x1234_5678,
            step: Step::Discover,
            start_at: Duration::ZERO,
            first_sent: None,
            next_send: Duration::ZERO,
            sends: 0,
            proxy: None,
            boot_item: None,
        }
    }

    #[test]
    fn messages_carry_each_kinds_options() {
        let mut buf = Vec::new();
        for kind in [Kind::Bios, Kind::Uefi, Kind::Http, Kind::Ipxe] {
            message(&client(kind), MessageType::Discover, 0, Ipv4Addr::UNSPECIFIED, &mut buf).unwrap();
            let r = wire::parse(&buf).unwrap();
            assert_eq!(r.message_type, MessageType::Discover);
            assert_eq!((r.xid, r.chaddr), (0x1234_5678, [2, 0xbf, 1, 0, 0, 7]));
            assert_eq!(r.vendor_class, Some(kind.vendor_class()));
            assert_eq!(r.client_arch, Some(kind.arch()));
            assert_eq!(r.client_uuid.map(|u| (u.len(), u[0])), Some((17, 0)));
            assert_eq!(r.has_user_class(b"iPXE"), kind == Kind::Ipxe);
        }
        message(&client(Kind::Uefi), MessageType::Request, 3, Ipv4Addr::new(10, 77, 0, 9), &mut buf).unwrap();
        let r = wire::parse(&buf).unwrap();
        assert_eq!((r.message_type, r.ciaddr, r.secs), (MessageType::Request, Ipv4Addr::new(10, 77, 0, 9), 3));
    }

    fn offer<'a>(vendor: &'a [u8], file: &'a [u8], v43: Option<&'a [u8]>) -> Repr<'a> {
        let mut r = Repr::new(Op::Reply, MessageType::Offer, 1, [2, 0, 0, 0, 0, 1]);
        r.vendor_class = Some(vendor);
        r.file = file;
        r.vendor_specific = v43;
        r.server_id = Some(Ipv4Addr::new(10, 77, 0, 2));
        r
    }

    #[test]
    fn offers_are_judged_as_the_firmware_does() {
        let from = Ipv4Addr::new(10, 77, 0, 3);
        let use_file: &[u8] = &[6, 1, 8, 255];
        let menu: &[u8] = &[6, 1, 3, 255];
        assert!(matches!(judge_offer(Kind::Bios, &offer(b"PXEClient", b"undionly.kpxe", Some(use_file)), from), Verdict::Usable));
        // dnsmasq's boot menu without a file: the ROM asks the proxy on 4011.
        assert!(
            matches!(judge_offer(Kind::Bios, &offer(b"PXEClient", b"", Some(menu)), from), Verdict::Ask4011(a) if a == Ipv4Addr::new(10, 77, 0, 2))
        );
        assert!(matches!(judge_offer(Kind::Bios, &offer(b"PXEClient", b"", None), from), Verdict::Unusable(_)));
        // EDK2: no 43 means 4011 even when a file is named; with 43 {6: 8} the file is used.
        assert!(matches!(judge_offer(Kind::Uefi, &offer(b"PXEClient", b"ipxe.efi", None), from), Verdict::Ask4011(_)));
        assert!(matches!(judge_offer(Kind::Uefi, &offer(b"PXEClient", b"ipxe.efi", Some(use_file)), from), Verdict::Usable));
        assert!(matches!(
            judge_offer(Kind::Http, &offer(b"HTTPClient", b"http://10.77.0.2:8080/boot/ipxe.efi", None), from),
            Verdict::Usable
        ));
        assert!(matches!(
            judge_offer(Kind::Http, &offer(b"PXEClient", b"http://10.77.0.2:8080/boot/ipxe.efi", None), from),
            Verdict::Unusable(_)
        ));
        assert!(matches!(judge_offer(Kind::Http, &offer(b"HTTPClient", b"ipxe.efi", None), from), Verdict::Unusable(_)));
        assert!(matches!(
            judge_offer(Kind::Ipxe, &offer(b"PXEClient", b"http://10.77.0.2:8080/ipxe?mac=${mac}", None), from),
            Verdict::Usable
        ));
    }

    #[test]
    fn the_menu_item_is_read_from_dnsmasqs_offer() {
        // dnsmasq 2.90's option 43 to a BIOS client (captured in the lab): 6=3, 8 (servers),
        // 9 (menu: type 0x8000 "lab"), 10 (prompt).
        let v43 = [6, 1, 3, 10, 4, 0, 80, 88, 69, 8, 7, 128, 0, 1, 10, 77, 0, 2, 9, 6, 128, 0, 3, 108, 97, 98, 255];
        assert_eq!(menu_item(&v43), Some(0x8000));
        assert_eq!(menu_item(&[6, 1, 8, 255]), None);
        assert_eq!(menu_item(&[9, 40, 1]), None, "a length past the end is no item");
        let mut c = client(Kind::Bios);
        c.boot_item = Some(0x8000);
        let mut buf = Vec::new();
        message(&c, MessageType::Request, 0, Ipv4Addr::new(10, 77, 0, 9), &mut buf).unwrap();
        let r = wire::parse(&buf).unwrap();
        assert_eq!(PxeVendor::parse(r.vendor_specific.unwrap()).unwrap().boot_item, Some((0x8000, 0)));
        assert!(r.broadcast, "the iPXE ROM sets the broadcast flag on its 4011 request");
    }
}
