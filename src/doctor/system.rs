//! The machine's side of `bootfarm doctor`: io_uring, locked memory, open files, the ports
//! (who holds them, from /proc/net and /proc/*/fd), capabilities for ports below the
//! unprivileged start, and interface MTUs against TFTP's largest block.

use super::Finding;
use crate::config::Config;
use std::net::IpAddr;

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// A `Key:\tvalue` line of /proc/self/status.
fn status_field(key: &str) -> Option<String> {
    read("/proc/self/status")?.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(|v| v.trim().to_string()))
}

/// A ring as the engine builds one (SINGLE_ISSUER + DEFER_TASKRUN), then the opcodes it uses.
pub fn io_uring() -> Vec<Finding> {
    let disabled = read("/proc/sys/kernel/io_uring_disabled").and_then(|s| s.trim().parse::<u32>().ok());
    let ring: std::io::Result<io_uring::IoUring> = io_uring::IoUring::builder().setup_single_issuer().setup_defer_taskrun().build(8);
    let ring = match ring {
        Ok(r) => r,
        Err(e) => {
            let seccomp = status_field("Seccomp").is_some_and(|s| s != "0");
            let group = read("/proc/sys/kernel/io_uring_group").unwrap_or_default();
            let cause = setup_refused(e.raw_os_error(), disabled, group.trim(), seccomp);
            return vec![Finding::error("io_uring", format!("cannot create a ring ({e}): {cause}"))];
        }
    };
    let mut probe = io_uring::Probe::new();
    if let Err(e) = ring.submitter().register_probe(&mut probe) {
        return vec![Finding::error("io_uring", format!("a ring was created but io_uring_register refused a probe ({e}): a seccomp filter that allows io_uring_setup must allow io_uring_register and io_uring_enter too"))];
    }
    use io_uring::opcode::*;
    let needed = [
        ("RecvMsg (multishot TFTP receive)", RecvMsg::CODE),
        ("SendMsg", SendMsg::CODE),
        ("AcceptMulti", AcceptMulti::CODE),
        ("RecvMulti", RecvMulti::CODE),
        ("SendZc (zero-copy send)", SendZc::CODE),
        ("ProvideBuffers", ProvideBuffers::CODE),
        ("Timeout", Timeout::CODE),
    ];
    let missing: Vec<&str> = needed.iter().filter(|(_, c)| !probe.is_supported(*c)).map(|(n, _)| *n).collect();
    // A ring that submits nothing proves io_uring_enter is allowed too.
    if let Err(e) = ring.submitter().submit() {
        return vec![Finding::error("io_uring", format!("io_uring_enter refused ({e}): allow io_uring_enter in the seccomp filter"))];
    }
    if missing.is_empty() {
        vec![Finding::ok(
            "io_uring",
            format!("usable: a ring with SINGLE_ISSUER+DEFER_TASKRUN and every opcode the engine uses (kernel {})", kernel()),
        )]
    } else {
        vec![Finding::error("io_uring", format!("kernel {} lacks {}: use Linux 6.1 or later", kernel(), missing.join(", ")))]
    }
}

/// Why io_uring_setup failed, and what to do: the sysctl first (it refuses before any
/// filter), then a seccomp filter, then what the kernel lacks.
pub fn setup_refused(errno: Option<i32>, disabled: Option<u32>, group: &str, seccomp: bool) -> String {
    match (errno, disabled) {
        (_, Some(2)) => "sysctl kernel.io_uring_disabled = 2 forbids it: set it to 0 (sysctl -w kernel.io_uring_disabled=0, and in /etc/sysctl.d/)".to_string(),
        (_, Some(1)) => format!(
            "sysctl kernel.io_uring_disabled = 1 allows it only to the group kernel.io_uring_group ({group}): add the bootfarm user to that group or set the sysctl to 0"
        ),
        (Some(libc::EPERM | libc::EACCES | libc::ENOSYS), _) if seccomp => "a seccomp filter refuses it (Seccomp: 2 in /proc/self/status): allow io_uring_setup, io_uring_enter and io_uring_register (systemd SystemCallFilter=, the container's seccomp profile)".to_string(),
        (Some(libc::ENOSYS), _) => "this kernel has no io_uring (Linux 6.1 or later, built with CONFIG_IO_URING)".to_string(),
        (Some(libc::EINVAL), _) => "this kernel lacks IORING_SETUP_SINGLE_ISSUER/DEFER_TASKRUN: use Linux 6.1 or later".to_string(),
        (Some(libc::ENOMEM), _) => "not enough locked memory for a ring: raise RLIMIT_MEMLOCK (LimitMEMLOCK=, ulimit -l)".to_string(),
        _ => "see the error; bootfarm cannot serve without io_uring".to_string(),
    }
}

fn kernel() -> String {
    read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|| "unknown".into())
}

fn rlimit(resource: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // Safety: getrlimit writes the local struct.
    unsafe { libc::getrlimit(resource, &mut r) };
    (r.rlim_cur, r.rlim_max)
}

fn limit_text(v: u64) -> String {
    if v == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

/// Since Linux 5.12 rings and buffer rings are charged to the memory cgroup, not RLIMIT_MEMLOCK;
/// older kernels need room for every worker's rings.
pub fn memlock() -> Finding {
    let (soft, _) = rlimit(libc::RLIMIT_MEMLOCK);
    let k = kernel();
    let mut v = k.split(['.', '-']).map(|x| x.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    if (major, minor) >= (5, 12) || soft == libc::RLIM_INFINITY || soft >= 64 << 20 {
        Finding::ok(
            "memlock",
            format!("RLIMIT_MEMLOCK {} (kernel {k} charges io_uring memory to the cgroup, not this limit)", limit_text(soft)),
        )
    } else {
        Finding::warn(
            "memlock",
            format!(
                "RLIMIT_MEMLOCK {} on kernel {k}, which charges rings to it: raise it to 64 MiB or more (LimitMEMLOCK=, ulimit -l)",
                limit_text(soft)
            ),
        )
    }
}

/// The descriptors the configured limits can use against RLIMIT_NOFILE (serve raises the soft
/// limit to the hard one, so the hard one is what counts).
pub fn open_files(c: &Config) -> Finding {
    let workers = crate::serve::worker_count(c.server.workers);
    let needed = crate::serve::descriptors_needed(c, workers);
    let (soft, hard) = rlimit(libc::RLIMIT_NOFILE);
    let how = format!(
        "{needed} needed by the limits (2 x tftp.sessions_max + http.connections_max + 2 x nbd.connections_max + 2 x iscsi.connections_max + 4 x {workers} workers + 64)"
    );
    if hard < needed {
        Finding::warn(
            "nofile",
            format!("open-file limit {} (hard) is below the {how}: raise it (LimitNOFILE={needed} in the unit, ulimit -Hn) or lower those limits; connections past it are refused", limit_text(hard)),
        )
    } else {
        Finding::ok("nofile", format!("open-file limit {} soft, {} hard: enough for the {how}", limit_text(soft), limit_text(hard)))
    }
}

/// A socket of /proc/net/{tcp,udp}{,6}: local address, port, state, inode.
#[derive(Debug, Clone, PartialEq)]
pub struct NetEntry {
    pub addr: IpAddr,
    pub port: u16,
    pub state: u8,
    pub inode: u64,
}

/// Parses one /proc/net table; addresses are in the host's byte order per 32-bit word.
pub fn parse_net_table(text: &str, v6: bool) -> Vec<NetEntry> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (a, p) = f.get(1)?.split_once(':')?;
            let port = u16::from_str_radix(p, 16).ok()?;
            let state = u8::from_str_radix(f.get(3)?, 16).ok()?;
            let inode = f.get(9)?.parse().ok()?;
            let words: Vec<u32> = (0..a.len() / 8).map(|i| u32::from_str_radix(&a[i * 8..i * 8 + 8], 16)).collect::<Result<_, _>>().ok()?;
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let addr = match (v6, bytes.len()) {
                (false, 4) => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
                (true, 16) => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
                _ => return None,
            };
            Some(NetEntry { addr, port, state, inode })
        })
        .collect()
}

/// The processes with a descriptor on socket `inode`: (pid, command name).
pub fn socket_owners(inode: u64) -> Vec<(u32, String)> {
    let want = format!("socket:[{inode}]");
    let mut owners = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return owners };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str())) {
            let comm = read(&format!("/proc/{pid}/comm")).map(|s| s.trim().to_string()).unwrap_or_default();
            owners.push((pid, comm));
        }
    }
    owners
}

/// Whether a socket bound to `held` takes the port from a bind to `want` (same address, or
/// either one the wildcard of any family: a `::` socket takes IPv4 too unless v6only).
fn overlaps(held: IpAddr, want: IpAddr) -> bool {
    held == want || held.is_unspecified() || want.is_unspecified()
}

/// Each service port: free, held by a running bootfarm (this node serving), or held by whom.
pub fn ports(c: &Config) -> Vec<Finding> {
    let s = &c.server;
    let tables = |name: &str| -> Vec<NetEntry> {
        let mut v = read(&format!("/proc/net/{name}")).map(|t| parse_net_table(&t, false)).unwrap_or_default();
        v.extend(read(&format!("/proc/net/{name}6")).map(|t| parse_net_table(&t, true)).unwrap_or_default());
        v
    };
    let (tcp, udp) = (tables("tcp"), tables("udp"));
    const TCP_LISTEN: u8 = 0x0A;
    let mut services =
        vec![("udp", "server.tftp_port", s.tftp_port), ("tcp", "server.http_port", s.http_port), ("tcp", "server.nbd_port", s.nbd_port)];
    if s.iscsi_port != 0 {
        services.push(("tcp", "server.iscsi_port", s.iscsi_port));
    }
    services
        .iter()
        .map(|&(proto, key, port)| {
            let held: Vec<&NetEntry> = if proto == "tcp" {
                tcp.iter().filter(|e| e.port == port && e.state == TCP_LISTEN && overlaps(e.addr, s.listen)).collect()
            } else {
                udp.iter().filter(|e| e.port == port && overlaps(e.addr, s.listen)).collect()
            };
            if held.is_empty() {
                return Finding::ok("port", format!("{proto}/{port} ({key}) on {} is free", s.listen));
            }
            let mut owners: Vec<(u32, String)> = held.iter().flat_map(|e| socket_owners(e.inode)).collect();
            owners.sort();
            owners.dedup();
            let addrs: Vec<String> = held.iter().map(|e| e.addr.to_string()).collect();
            if !owners.is_empty() && owners.iter().all(|(_, c)| c == "bootfarm") {
                let pids: Vec<String> = owners.iter().map(|(p, _)| p.to_string()).collect();
                return Finding::ok(
                    "port",
                    format!("{proto}/{port} ({key}) is served by bootfarm (pid {}): this node is running", pids.join(",")),
                );
            }
            let who = if owners.is_empty() {
                "a process this user cannot see (run bootfarm doctor as root to name it)".to_string()
            } else {
                owners.iter().map(|(p, c)| format!("{c} (pid {p})")).collect::<Vec<_>>().join(", ")
            };
            Finding::error(
                "port",
                format!(
                    "{proto}/{port} ({key}) is held on {} by {who}: stop it (another TFTP/HTTP/NBD/iSCSI server, tgtd?) or choose another {key}",
                    addrs.join(",")
                ),
            )
        })
        .collect()
}

const CAP_NET_BIND_SERVICE: u32 = 10;

/// Ports below net.ipv4.ip_unprivileged_port_start need CAP_NET_BIND_SERVICE.
pub fn capabilities(c: &Config) -> Vec<Finding> {
    let start: u16 = read("/proc/sys/net/ipv4/ip_unprivileged_port_start").and_then(|s| s.trim().parse().ok()).unwrap_or(1024);
    let s = &c.server;
    let low: Vec<String> = [
        ("server.tftp_port", s.tftp_port),
        ("server.http_port", s.http_port),
        ("server.nbd_port", s.nbd_port),
        ("server.iscsi_port", s.iscsi_port),
    ]
    .iter()
    .filter(|(_, p)| *p != 0 && *p < start)
    .map(|(k, p)| format!("{k} = {p}"))
    .collect();
    if low.is_empty() {
        return vec![Finding::ok("caps", format!("no port below {start} (net.ipv4.ip_unprivileged_port_start): no capability needed"))];
    }
    let eff = status_field("CapEff").and_then(|v| u64::from_str_radix(&v, 16).ok()).unwrap_or(0);
    if eff & (1 << CAP_NET_BIND_SERVICE) != 0 {
        vec![Finding::ok(
            "caps",
            format!(
                "{} below {start}: this process has CAP_NET_BIND_SERVICE (the packaged unit grants the bootfarm user exactly that)",
                low.join(", ")
            ),
        )]
    } else {
        vec![Finding::error(
            "caps",
            format!(
                "{} below {start} and this process lacks CAP_NET_BIND_SERVICE: run as the packaged service (AmbientCapabilities=CAP_NET_BIND_SERVICE), or `setcap cap_net_bind_service=+ep /usr/bin/bootfarm`, or use ports from {start} up",
                low.join(", ")
            ),
        )]
    }
}

/// (interface, address, flags) of every configured address (getifaddrs).
fn interfaces() -> Vec<(String, Option<IpAddr>, u32)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // Safety: getifaddrs allocates a list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut p = head;
        while !p.is_null() {
            let ifa = &*p;
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
            let addr = if ifa.ifa_addr.is_null() {
                None
            } else {
                match (*ifa.ifa_addr).sa_family as i32 {
                    libc::AF_INET => {
                        let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        Some(IpAddr::from(a.sin_addr.s_addr.to_ne_bytes()))
                    }
                    libc::AF_INET6 => {
                        let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        Some(IpAddr::from(a.sin6_addr.s6_addr))
                    }
                    _ => None,
                }
            };
            out.push((name, addr, ifa.ifa_flags));
            p = ifa.ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

/// IP (20) + UDP (8) + TFTP DATA header (4): a block of B bytes is a packet of B + 32.
const TFTP_OVERHEAD: u32 = 32;

/// tftp.blksize_max against the MTU of each interface the server listens on (every one that
/// is up for a wildcard address, loopback aside).
pub fn mtu(c: &Config) -> Vec<Finding> {
    let listen = c.server.listen;
    let mut names: Vec<String> = interfaces()
        .into_iter()
        .filter(|(_, a, flags)| {
            if listen.is_unspecified() {
                flags & libc::IFF_UP as u32 != 0 && flags & libc::IFF_LOOPBACK as u32 == 0
            } else {
                *a == Some(listen)
            }
        })
        .map(|(n, _, _)| n)
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        if listen.is_unspecified() {
            return vec![Finding::ok("mtu", "no interface up besides loopback")];
        }
        return vec![Finding::error(
            "mtu",
            format!("no interface has the address server.listen = {listen}: bind fails; give an address of this machine (ip -br addr) or 0.0.0.0"),
        )];
    }
    let blk = c.tftp.blksize_max as u32;
    names
        .iter()
        .map(|n| {
            let mtu: Option<u32> = read(&format!("/sys/class/net/{n}/mtu")).and_then(|s| s.trim().parse().ok());
            match mtu {
                Some(m) if blk + TFTP_OVERHEAD > m => Finding::warn(
                    "mtu",
                    format!(
                        "{n}: MTU {m}, but tftp.blksize_max = {blk} makes {}-byte packets: a client asking that block size gets IP fragments (lost where fragments are dropped); set tftp.blksize_max = {}",
                        blk + TFTP_OVERHEAD,
                        m.saturating_sub(TFTP_OVERHEAD).max(8)
                    ),
                ),
                Some(m) => Finding::ok("mtu", format!("{n}: MTU {m} carries tftp.blksize_max = {blk} unfragmented")),
                None => Finding::warn("mtu", format!("{n}: cannot read /sys/class/net/{n}/mtu")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n";
        let e = parse_net_table(tcp, false);
        assert_eq!(e, vec![NetEntry { addr: "127.0.0.1".parse().unwrap(), port: 8080, state: 0x0A, inode: 12345 }]);
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000000000000000000001000000:0045 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 777 2 0000000000000000 0\n";
        let e = parse_net_table(tcp6, true);
        assert_eq!(e[0].addr, "::1".parse::<IpAddr>().unwrap());
        assert_eq!((e[0].port, e[0].state, e[0].inode), (69, 7, 777));
        assert!(parse_net_table("header\ngarbage line\n", false).is_empty());
    }

    #[test]
    fn finds_the_holder_of_a_listening_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let c = Config { server: crate::config::Server { http_port: port, ..Default::default() }, ..Default::default() };
        let f = ports(&c);
        let http = f.iter().find(|f| f.text.contains("server.http_port")).unwrap();
        assert_eq!(http.level, super::super::Level::Error, "{}", http.text);
        assert!(http.text.contains(&format!("pid {}", std::process::id())), "{}", http.text);
    }

    #[test]
    fn io_uring_refusals_name_their_cause() {
        let c = |e, d, s| setup_refused(Some(e), d, "1001", s);
        assert!(c(libc::EPERM, Some(2), true).contains("io_uring_disabled = 2"), "the sysctl wins over a filter");
        assert!(c(libc::EPERM, Some(1), false).contains("io_uring_group (1001)"));
        assert!(c(libc::EPERM, Some(0), true).contains("seccomp filter"));
        assert!(c(libc::ENOSYS, None, true).contains("seccomp filter"), "filters may answer ENOSYS");
        assert!(c(libc::ENOSYS, Some(0), false).contains("CONFIG_IO_URING"));
        assert!(c(libc::EINVAL, Some(0), false).contains("6.1"));
        assert!(c(libc::ENOMEM, Some(0), false).contains("RLIMIT_MEMLOCK"));
    }

    #[test]
    fn loopback_carries_the_default_block() {
        let f = mtu(&Config::default());
        assert!(f.iter().all(|f| f.level == super::super::Level::Ok) && f[0].text.starts_with("lo: MTU"), "{f:?}");
    }
}
