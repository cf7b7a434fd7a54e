//! The thread-per-core engine: one pinned worker per core, each with its own io_uring, its own
//! SO_REUSEPORT sockets, sessions and timer wheel. Workers share nothing mutable: the
//! configuration comes from the snapshot store (one atomic load per new session) and counters
//! are per worker. The engine is the only code that makes system calls for the services.

mod dhcp;
mod files;
mod http;
mod iscsi;
mod nbd;
pub mod ring;
mod service;
mod slab;
mod tcp;
mod tftp;
pub mod timer;
pub mod token;
mod trace;

use crate::config::{Snapshot, Store};
use crate::metrics::{Counter, Histogram, WorkerCounters};
use service::{Io, Service};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use token::{ServiceId, Token};

/// Global admission limits shared by every worker without a lock: a total and a per-client
/// count. Clients are counted in 65536 hashed buckets, so two clients sharing a bucket share
/// their limit (stricter, never looser); SO_REUSEPORT spreads one client's ports over workers,
/// which is why a per-worker count would not do.
pub struct Admission {
    total: std::sync::atomic::AtomicUsize,
    per_ip: Box<[std::sync::atomic::AtomicU32]>,
}

impl Default for Admission {
    fn default() -> Self {
        Admission { total: Default::default(), per_ip: (0..65536).map(|_| Default::default()).collect() }
    }
}

impl Admission {
    fn bucket(ip: std::net::IpAddr) -> usize {
        let bytes: [u8; 16] = match ip {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(v6) => v6.octets(),
        };
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        (h ^ (h >> 32)) as usize & 0xFFFF
    }

    /// Takes a place for a session of `ip`, or says no (a limit is reached).
    pub fn try_admit(&self, ip: std::net::IpAddr, total_max: usize, per_ip_max: usize) -> bool {
        self.admit(ip, total_max, per_ip_max).is_ok()
    }

    /// As try_admit, saying which limit refused.
    pub fn admit(&self, ip: std::net::IpAddr, total_max: usize, per_ip_max: usize) -> Result<(), Limit> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= total_max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Limit::Total);
        }
        let b = &self.per_ip[Self::bucket(ip)];
        if b.fetch_add(1, Ordering::AcqRel) as usize >= per_ip_max {
            b.fetch_sub(1, Ordering::AcqRel);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Limit::PerIp);
        }
        Ok(())
    }

    /// Sessions `ip` holds now (its bucket's count).
    pub fn of(&self, ip: std::net::IpAddr) -> usize {
        self.per_ip[Self::bucket(ip)].load(Ordering::Relaxed) as usize
    }

    pub fn release(&self, ip: std::net::IpAddr) {
        self.per_ip[Self::bucket(ip)].fetch_sub(1, Ordering::AcqRel);
        self.total.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Places taken by `ip` (its bucket's) now.
    pub fn per_ip(&self, ip: std::net::IpAddr) -> usize {
        self.per_ip[Self::bucket(ip)].load(Ordering::Relaxed) as usize
    }
}

/// Per-source rate of new transfers: GCRA (a token bucket kept as one timestamp, the
/// "theoretical arrival time") in 65536 hashed buckets shared by every worker without a lock,
/// since SO_REUSEPORT spreads one source's ports over workers. Memory is fixed (512 KiB)
/// whatever the number of sources; two sources sharing a bucket share its rate (stricter,
/// never looser).
pub struct RateLimit {
    origin: Instant,
    tat_us: Box<[AtomicU64]>,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit { origin: Instant::now(), tat_us: (0..65536).map(|_| Default::default()).collect() }
    }
}

impl RateLimit {
    /// Takes one token for `ip` at `now` (`per_s` refill, `burst` tokens at most), or says no.
    pub fn try_take(&self, ip: std::net::IpAddr, now: Instant, per_s: u32, burst: u32) -> bool {
        let interval = (1_000_000 / per_s.max(1) as u64).max(1);
        let tolerance = interval * burst.max(1) as u64 - interval;
        // Offset so that a bucket never used (0) is a full one.
        let now_us = now.saturating_duration_since(self.origin).as_micros() as u64 + tolerance + interval;
        let cell = &self.tat_us[Admission::bucket(ip)];
        let mut tat = cell.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now_us);
            if start - now_us > tolerance {
                return false;
            }
            match cell.compare_exchange_weak(tat, start + interval, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(t) => tat = t,
            }
        }
    }
}

/// Multishot accept after a failure for lack of descriptors or memory (EMFILE, ENFILE, ENOMEM):
/// re-arming at once would spin (the connection stays in the backlog and fails again), so
/// accepting pauses `ACCEPT_PAUSE` and the failure is logged once per episode (until an accept
/// succeeds). Shared by the TCP services.
#[derive(Default)]
pub struct AcceptBackoff {
    retry_at: Option<Instant>,
    episode: bool,
}

pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

impl AcceptBackoff {
    /// A failed accept completion; true when it was a shortage (the caller counts it).
    pub fn failed(&mut self, res: i32, now: Instant, service: &str) -> bool {
        if res != -libc::EMFILE && res != -libc::ENFILE && res != -libc::ENOMEM {
            return false;
        }
        self.retry_at = Some(now + ACCEPT_PAUSE);
        if !self.episode {
            self.episode = true;
            // The service in capitals ("NBD: cannot accept"), whatever case its name has.
            tracing::warn!(
                "{}: cannot accept connections: {} (accepting pauses {} ms between tries until it works again); raise the open-file limit (LimitNOFILE=, ulimit -Hn) or lower the connection limits",
                service.to_ascii_uppercase(),
                std::io::Error::from_raw_os_error(-res),
                ACCEPT_PAUSE.as_millis()
            );
        }
        true
    }

    pub fn succeeded(&mut self, service: &str) {
        if self.episode {
            self.episode = false;
            tracing::info!("{}: accepting connections again", service.to_ascii_uppercase());
        }
    }

    /// Whether accepting may be armed now.
    pub fn may_arm(&mut self, now: Instant) -> bool {
        if self.retry_at.is_some_and(|t| now >= t) {
            self.retry_at = None;
        }
        self.retry_at.is_none()
    }
}

/// Which admission limit refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Total,
    PerIp,
}

/// What one worker publishes for /metrics and status.
#[derive(Default)]
pub struct WorkerStats {
    pub counters: WorkerCounters,
    pub tftp_duration: Histogram,
    pub tftp_sessions: AtomicU64,
    pub http_connections: AtomicU64,
}

pub struct Shared {
    pub store: Arc<Store>,
    pub draining: AtomicBool,
    pub workers: Vec<Arc<WorkerStats>>,
    pub grace: Duration,
    pub tftp_admission: Admission,
    pub tftp_rate: RateLimit,
    pub http_admission: Admission,
    pub nbd_admission: Admission,
    /// Connections refused at an NBD limit that an idle connection may make room for.
    pub nbd_evictions: Arc<tcp::Evictions>,
    pub nbd_targets: crate::nbd::target::Registry,
    /// SCSI reservations of every iSCSI LUN (per vdisk), shared by all sessions.
    pub iscsi_reservations: crate::iscsi::scsi::reserve::Table,
    pub iscsi_admission: Admission,
    /// Connections refused at an iSCSI limit that an idle connection may make room for.
    pub iscsi_evictions: Arc<tcp::Evictions>,
    pub farm: Arc<crate::farm::Runtime>,
    /// The operator's console: event-stream slots, the drained flag.
    pub console: crate::http::console::State,
    /// The NBD I/O trace writer (nbd.trace_dir).
    pub nbd_trace: trace::TraceWriter,
}

impl Shared {
    /// This node's own farm figures, for placement and /healthz. Drained from the console
    /// counts as draining for the farm (no new target placed here), the engine serving on.
    pub fn farm_local(&self, snap: &Snapshot, now: Instant) -> crate::farm::Local {
        let (active, booting) = self.farm.local_load(snap, &self.nbd_targets, now);
        crate::farm::Local { draining: self.farm_draining(), active, booting, hashes: self.farm.vdisk_hashes(snap) }
    }

    /// Draining (shutting down), or drained from the console.
    pub fn farm_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed) || self.console.drained.load(Ordering::Relaxed)
    }

    /// A counter summed over every worker (and the store's and the farm's blocks).
    pub fn counter_total(&self, c: Counter) -> u64 {
        self.workers.iter().map(|w| w.counters.get(c)).sum::<u64>()
            + self.store.counters.get(c)
            + self.farm.counters.get(c)
            + self.nbd_trace.counters.get(c)
    }
}

/// /metrics: every worker's counters summed, histograms, and gauges.
pub fn render_metrics(shared: &Shared) -> String {
    let snap = shared.store.load();
    let r = Ordering::Relaxed;
    let mut blocks: Vec<&WorkerCounters> = shared.workers.iter().map(|w| &w.counters).collect();
    blocks.push(&shared.store.counters);
    blocks.push(&shared.farm.counters);
    blocks.push(&shared.nbd_targets.counters);
    blocks.push(&shared.nbd_trace.counters);
    let tftp: u64 = shared.workers.iter().map(|w| w.tftp_sessions.load(r)).sum();
    let http: u64 = shared.workers.iter().map(|w| w.http_connections.load(r)).sum();
    let (targets, connected) = shared.nbd_targets.counts();
    let mut out = crate::metrics::render(
        &blocks,
        &[
            ("bootfarm_config_generation", "", "Generation of the configuration snapshot in use.", snap.generation as f64),
            ("bootfarm_tftp_sessions", "", "TFTP transfers running now.", tftp as f64),
            ("bootfarm_http_connections", "", "HTTP connections open now.", http as f64),
            ("bootfarm_workers", "", "Engine worker threads.", shared.workers.len() as f64),
            (
                "bootfarm_image_mapping_faults",
                "",
                "Reads of a file mapping that faulted past the end of a file changed under it, turned into refusals (since start).",
                crate::image::guard::faults() as f64,
            ),
            (
                "bootfarm_image_mappings_refused",
                "",
                "Files not mapped because image.mappings_max files were mapped already (since start).",
                crate::image::guard::refused() as f64,
            ),
            ("bootfarm_draining", "", "1 while shutting down.", shared.draining.load(r) as u8 as f64),
            (
                "bootfarm_farm_load_targets",
                "",
                "Targets in the farm load map (HTTP vdisk readers within farm.active_window_ms).",
                shared.farm.targets() as f64,
            ),
            ("bootfarm_nbd_targets", "", "NBD targets with a write cache (connected or kept for a reconnect).", targets as f64),
            ("bootfarm_nbd_targets_connected", "", "NBD targets with at least one connection.", connected as f64),
            (
                "bootfarm_nbd_cache_bytes",
                "",
                "RAM and overflow bytes held by all NBD write caches.",
                shared.nbd_targets.total.load(r) as f64,
            ),
            (
                "bootfarm_nbd_cache_ram_bytes",
                "",
                "RAM pages held by all NBD write caches (nbd.cache_ram_bytes_total_max).",
                shared.nbd_targets.ram_total.load(r) as f64,
            ),
            (
                "bootfarm_nbd_cache_pool_warm_bytes",
                "",
                "Free write-cache RAM already faulted in, for the next pages a target writes (nbd.cache_ram_prefault_bytes, caches dropped).",
                shared.nbd_targets.pool.warm_bytes.load(r) as f64,
            ),
            (
                "bootfarm_nbd_cache_pool_mapped_bytes",
                "",
                "Address space mapped for write-cache RAM (in use and free chunks; only pages written are resident).",
                shared.nbd_targets.pool.mapped_bytes.load(r) as f64,
            ),
            (
                "bootfarm_nbd_cache_overflow_mappings",
                "",
                "Read-only mappings of write-cache overflow files that replies send from (1 GiB of address space each, at most 8192).",
                crate::nbd::cache::overflow_mappings() as f64,
            ),
            (
                "bootfarm_nbd_cache_chunks_reused",
                "",
                "256 KiB write-cache chunks a target got already faulted in (from a dropped cache or the prefault), since start.",
                shared.nbd_targets.pool.reused.load(r) as f64,
            ),
            (
                "bootfarm_nbd_cache_chunks_fresh",
                "",
                "256 KiB write-cache chunks a target got fresh: each page faults on its first write (since start).",
                shared.nbd_targets.pool.fresh.load(r) as f64,
            ),
            (
                "bootfarm_nbd_cache_bytes_max",
                "",
                "nbd.cache_bytes_total_max: the write caches' bytes stop there (ENOSPC beyond).",
                snap.config.nbd.cache_bytes_total_max as f64,
            ),
            (
                "bootfarm_console_drained",
                "",
                "1 while drained from the console (no new target placed here; serving goes on).",
                shared.console.drained.load(r) as u8 as f64,
            ),
            ("bootfarm_console_event_streams", "", "Console event streams (/api/events) open now.", shared.console.events_open() as f64),
        ],
    );
    crate::farm::render_metrics(&mut out, &snap, &shared.farm, &shared.farm_local(&snap, Instant::now()));
    let hs: Vec<&Histogram> = shared.workers.iter().map(|w| &w.tftp_duration).collect();
    crate::metrics::render_histogram(&mut out, "bootfarm_tftp_transfer_duration_seconds", "Duration of completed TFTP transfers.", &hs);
    out
}

pub struct Engine {
    pub shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
    farm_threads: Vec<std::thread::JoinHandle<()>>,
    pub tftp_addr: SocketAddr,
    pub http_addr: SocketAddr,
}

/// The CPUs this process may run on, in order: workers are pinned to them round robin. When
/// the set cannot be read, 0..available_parallelism.
pub fn allowed_cpus() -> Vec<usize> {
    // Safety: a zeroed cpu_set_t is valid; sched_getaffinity fills it; CPU_ISSET reads inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let v: Vec<usize> = (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect();
            if !v.is_empty() {
                return v;
            }
        }
    }
    (0..std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1)).collect()
}

/// Steers each new flow (a TFTP request, a TCP connection) to the worker pinned on the CPU
/// that processes its packet, instead of the SO_REUSEPORT hash: a classic BPF program on the
/// group returns the index of that CPU's worker (worker i's socket is the i-th of the group).
/// With a NIC's receive queues spread over the cores (RSS), or a client on the same host, the
/// flow then stays on one core: no cross-core wake-up or cache line per packet. A CPU with no
/// worker gets an index past the group, and the kernel falls back to the hash.
fn steer_by_cpu(sock: &socket2::Socket, worker_cpus: &[usize]) -> std::io::Result<()> {
    const SKF_AD_CPU: u32 = 36;
    let n = worker_cpus.len();
    let mut prog = vec![libc::sock_filter {
        code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
        jt: 0,
        jf: 0,
        k: (libc::SKF_AD_OFF as u32).wrapping_add(SKF_AD_CPU),
    }];
    for (i, &cpu) in worker_cpus.iter().enumerate() {
        // A second worker on one CPU (more workers than CPUs) is never matched: the first is.
        prog.push(libc::sock_filter { code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16, jt: 0, jf: 1, k: cpu as u32 });
        prog.push(libc::sock_filter { code: (libc::BPF_RET | libc::BPF_K) as u16, jt: 0, jf: 0, k: i as u32 });
    }
    prog.push(libc::sock_filter { code: (libc::BPF_RET | libc::BPF_K) as u16, jt: 0, jf: 0, k: n as u32 });
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_mut_ptr() };
    // Safety: fprog points at `prog`, alive for the call; the kernel copies the program.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            &fprog as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Pins the calling thread to `cpu` (a worker here; bootstorm's engine threads too). A failure
/// is logged and the thread runs unpinned.
pub fn pin(cpu: usize) {
    // Safety: a zeroed cpu_set_t is valid; CPU_SET stays inside it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % libc::CPU_SETSIZE as usize, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(cpu, "cannot pin thread to its CPU: {}", std::io::Error::last_os_error());
        }
    }
}

/// Fails when another socket already holds `addr`: a second bootfarm (or any server that set
/// SO_REUSEPORT as the same user) would otherwise let this one join its port and take a share
/// of its flows, each instance silently serving part of the traffic. A probe without
/// SO_REUSEPORT cannot bind exactly then. Other errors are left to the real bind to report;
/// port 0 (any free port) is not checked.
fn ensure_free(addr: SocketAddr, tcp: bool) -> Result<(), String> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() == 0 {
        return Ok(());
    }
    let (ty, proto) = if tcp { (Type::STREAM, Protocol::TCP) } else { (Type::DGRAM, Protocol::UDP) };
    let Ok(probe) = Socket::new(Domain::for_address(addr), ty, Some(proto)) else { return Ok(()) };
    if tcp {
        // Connections of an earlier run still in TIME_WAIT own nothing.
        let _ = probe.set_reuse_address(true);
    }
    match probe.bind(&addr.into()) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            Err("the port is already in use by another process (a second bootfarm would share it through SO_REUSEPORT and take part of the traffic)".into())
        }
        _ => Ok(()),
    }
}

/// Binds every socket, starts the workers and waits until each has its ring, so that any
/// setup error (port in use, io_uring unavailable) is reported here, before serving begins.
pub fn start(store: Arc<Store>) -> Result<Engine, String> {
    let snap = store.load();
    let s = &snap.config.server;
    let n = crate::serve::worker_count(s.workers);
    let tftp_addr = SocketAddr::new(s.listen, s.tftp_port);
    let http_addr = SocketAddr::new(s.listen, s.http_port);
    let nbd_addr = SocketAddr::new(s.listen, s.nbd_port);
    let tftp_err = |e: &dyn std::fmt::Display| format!("cannot bind TFTP on udp/{tftp_addr}: {e}");
    let http_err = |e: &dyn std::fmt::Display| format!("cannot bind HTTP on tcp/{http_addr}: {e}");
    let nbd_err = |e: &dyn std::fmt::Display| format!("cannot bind NBD on tcp/{nbd_addr}: {e}");
    let iscsi_addr = (s.iscsi_port != 0).then(|| SocketAddr::new(s.listen, s.iscsi_port));
    let iscsi_err = |e: &dyn std::fmt::Display| {
        format!("cannot bind iSCSI on tcp/{}: {e} (server.iscsi_port = 0 turns iSCSI off)", iscsi_addr.unwrap())
    };
    ensure_free(tftp_addr, false).map_err(|e| tftp_err(&e))?;
    ensure_free(http_addr, true).map_err(|e| http_err(&e))?;
    ensure_free(nbd_addr, true).map_err(|e| nbd_err(&e))?;
    if let Some(a) = iscsi_addr {
        ensure_free(a, true).map_err(|e| iscsi_err(&e))?;
    }
    // The PXE service: bound here so that a port or capability problem stops the start.
    let mut dhcp_sockets = if snap.config.pxe.enabled { Some(dhcp::bind(&snap.config.pxe)?) } else { None };
    // Before the ports open: a client that can connect finds the RAM committed, and first
    // boots write into pages already faulted in.
    let pool = Arc::new(crate::nbd::cache::ChunkPool::default());
    let prefault = snap.config.nbd.cache_ram_prefault_bytes;
    if prefault > 0 {
        let t = Instant::now();
        match pool.prefault(prefault) {
            Ok(b) => {
                tracing::info!(bytes = b, ms = t.elapsed().as_millis() as u64, "write-cache RAM committed (nbd.cache_ram_prefault_bytes)")
            }
            Err(e) => tracing::warn!(
                "cannot commit nbd.cache_ram_prefault_bytes = {prefault} of write-cache RAM ({e}); pages are faulted in as targets write"
            ),
        }
    }
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n {
        let t = tftp::bind_listener(tftp_addr).map_err(|e| tftp_err(&e))?;
        let h = tcp::bind_listener(http_addr).map_err(|e| http_err(&e))?;
        let b = tcp::bind_listener(nbd_addr).map_err(|e| nbd_err(&e))?;
        let i = match iscsi_addr {
            Some(a) => Some(tcp::bind_listener(a).map_err(|e| iscsi_err(&e))?),
            None => None,
        };
        listeners.push((t, h, b, i));
    }
    let cpus = allowed_cpus();
    let worker_cpus: Vec<usize> = (0..n).map(|i| cpus[i % cpus.len()]).collect();
    // Steering needs a worker per CPU at most: a second worker on one CPU would get no flow.
    if s.steer == crate::config::Steer::Cpu && n > 1 && n <= cpus.len() {
        let (t, h, b, i) = &listeners[0];
        for (what, sock) in [("TFTP", Some(t)), ("HTTP", Some(h)), ("NBD", Some(b)), ("iSCSI", i.as_ref())] {
            let Some(sock) = sock else { continue };
            if let Err(e) = steer_by_cpu(sock, &worker_cpus) {
                tracing::warn!("{what}: cannot steer flows to the worker on their CPU ({e}); the kernel's hash picks the worker");
            }
        }
        tracing::info!(cpus = ?worker_cpus, "new flows go to the worker on the CPU that receives them");
    } else if s.steer == crate::config::Steer::Cpu && n > cpus.len() {
        tracing::warn!(
            workers = n,
            cpus = cpus.len(),
            "server.steer = cpu needs at most one worker per CPU; the kernel's hash picks the worker"
        );
    }
    let workers: Vec<Arc<WorkerStats>> = (0..n).map(|_| Arc::new(WorkerStats::default())).collect();
    let shared = Arc::new(Shared {
        store,
        draining: AtomicBool::new(false),
        console: Default::default(),
        workers,
        grace: Duration::from_millis(s.shutdown_grace_ms),
        tftp_admission: Admission::default(),
        tftp_rate: RateLimit::default(),
        http_admission: Admission::default(),
        nbd_admission: Admission::default(),
        nbd_evictions: Default::default(),
        nbd_targets: crate::nbd::target::Registry::with_pool(pool),
        iscsi_reservations: Default::default(),
        iscsi_admission: Admission::default(),
        iscsi_evictions: Default::default(),
        farm: Default::default(),
        nbd_trace: Default::default(),
    });
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::with_capacity(n);
    for (i, (listener, http_listener, nbd_listener, iscsi_listener)) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let listen_ip = tftp_addr.ip();
        let cpu = worker_cpus[i];
        // One worker answers DHCP: a broadcast reaches every socket on the port.
        let dhcp = dhcp_sockets.take();
        let t = std::thread::Builder::new()
            .name(format!("bootfarm-w{i}"))
            .spawn(move || {
                pin(cpu);
                let mut w = match Worker::new(i, shared, listener, http_listener, nbd_listener, iscsi_listener, listen_ip, dhcp) {
                    Ok(w) => w,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                w.run();
            })
            .map_err(|e| format!("cannot start worker {i}: {e}"))?;
        threads.push(t);
    }
    drop(ready_tx);
    for _ in 0..n {
        let failure = match ready_rx.recv() {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(_) => "a worker died during setup".to_string(),
        };
        shared.draining.store(true, Ordering::Relaxed);
        return Err(failure);
    }
    let iscsi = iscsi_addr.map_or("off".to_string(), |a| a.to_string());
    tracing::info!(workers = n, tftp = %tftp_addr, http = %http_addr, nbd = %nbd_addr, iscsi = %iscsi, "engine started");
    let farm_threads = crate::farm::start(shared.farm.clone(), shared.store.clone());
    Ok(Engine { shared, threads, farm_threads, tftp_addr, http_addr })
}

impl Engine {
    /// Stops accepting, lets transfers finish up to the grace period, and joins the workers.
    pub fn shutdown(self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.shared.farm.stop();
        for t in self.farm_threads {
            let _ = t.join();
        }
    }
}

struct Worker {
    index: usize,
    io: Io,
    /// Indexed by `ServiceId`: a token's service field picks the one its completion is for.
    services: Vec<Option<Box<dyn Service>>>,
    shared: Arc<Shared>,
    cqes: Vec<(u64, i32, u32)>,
    expired: Vec<Token>,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    fn new(
        index: usize,
        shared: Arc<Shared>,
        listener: socket2::Socket,
        http_listener: socket2::Socket,
        nbd_listener: socket2::Socket,
        iscsi_listener: Option<socket2::Socket>,
        listen_ip: std::net::IpAddr,
        dhcp: Option<dhcp::Sockets>,
    ) -> Result<Worker, String> {
        let ring = ring::build().map_err(|e| e.to_string())?;
        let bufs = ring::BufRing::new(&ring, 0, 1024, 2048).map_err(|e| format!("cannot register receive buffers: {e}"))?;
        let stats = shared.workers[index].clone();
        // The registered file table, split between the services: half for TFTP transfers, a
        // quarter for HTTP, an eighth each for NBD and iSCSI connections; beyond that, plain
        // descriptors.
        let n = ring::register_file_table(&ring);
        if n == 0 {
            tracing::debug!(worker = index, "no registered file table: operations name sockets by descriptor");
        }
        let (t, h, b) = (n / 2, n / 2 + n / 4, n / 2 + n / 4 + n / 8);
        let mut w = Worker {
            index,
            io: Io::new(ring, bufs, shared.store.clone(), Instant::now()),
            services: Vec::with_capacity(token::ServiceId::MAX),
            shared: shared.clone(),
            cqes: Vec::with_capacity(ring::CQ_ENTRIES as usize),
            expired: Vec::new(),
        };
        let tftp = tftp::TftpService::new(listener, listen_ip, stats.clone(), shared.clone(), index, ring::FileSlots::new(0..t));
        w.add(ServiceId::Tftp, Box::new(tftp));
        let http = http::service(http_listener, shared.clone(), index, ring::FileSlots::new(t..h));
        w.add(ServiceId::Http, Box::new(http));
        w.add(ServiceId::Nbd, Box::new(nbd::service(nbd_listener, stats.clone(), shared.clone(), index, ring::FileSlots::new(h..b))));
        if let Some(d) = dhcp {
            w.add(ServiceId::Dhcp, Box::new(dhcp::DhcpService::new(d, stats.clone(), shared.clone())));
        }
        if let Some(l) = iscsi_listener {
            w.add(ServiceId::Iscsi, Box::new(iscsi::service(l, stats, shared, index, ring::FileSlots::new(b..n))));
        }
        Ok(w)
    }

    /// Adds the service that tokens with `id` name (in ServiceId order).
    fn add(&mut self, id: ServiceId, s: Box<dyn Service>) {
        assert!(self.services.len() <= id as usize, "services are added in ServiceId order");
        // A service that is off (PXE, iSCSI) leaves its index empty.
        self.services.resize_with(id as usize, || None);
        self.services.push(Some(s));
    }

    fn active(&self) -> usize {
        self.services.iter().flatten().map(|s| s.active()).sum()
    }

    fn flush_all(&mut self) {
        for s in self.services.iter_mut().flatten() {
            s.flush(&mut self.io);
        }
    }

    fn run(&mut self) {
        let mut drain_deadline: Option<Instant> = None;
        self.io.now = Instant::now();
        self.flush_all();
        loop {
            let ts = io_uring::types::Timespec::from(self.io.wheel.wait_hint());
            let args = io_uring::types::SubmitArgs::new().timespec(&ts);
            match self.io.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)) => {}
                Err(e) => panic!("worker {}: io_uring_enter failed: {e}", self.index),
            }
            let now = Instant::now();
            self.io.now = now;
            self.cqes.clear();
            self.cqes.extend(self.io.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
            for i in 0..self.cqes.len() {
                let (u, res, flags) = self.cqes[i];
                let t = Token::unpack(u);
                if let Some(Some(s)) = self.services.get_mut(t.service as usize) {
                    s.on_completion(&mut self.io, t, res, flags);
                }
            }
            self.expired.clear();
            self.io.wheel.advance(now, &mut self.expired);
            for i in 0..self.expired.len() {
                let t = self.expired[i];
                if let Some(Some(s)) = self.services.get_mut(t.service as usize) {
                    s.on_timer(&mut self.io, t);
                }
            }
            self.flush_all();
            if self.shared.draining.load(Ordering::Relaxed) {
                let deadline = match drain_deadline {
                    Some(d) => d,
                    None => {
                        let active: Vec<(&str, usize)> = self.services.iter().flatten().map(|s| (s.name(), s.active())).collect();
                        tracing::info!(worker = self.index, ?active, "draining");
                        for s in self.services.iter_mut().flatten() {
                            s.stop_listening(&mut self.io);
                        }
                        *drain_deadline.insert(now + self.shared.grace)
                    }
                };
                if now >= deadline && self.active() > 0 {
                    for s in self.services.iter_mut().flatten() {
                        s.abort_all(&mut self.io);
                    }
                    self.flush_all();
                }
                // Done when nothing runs and the kernel holds no session memory.
                if self.active() == 0 && self.services.iter().flatten().all(|s| s.lingering() == 0) {
                    break;
                }
                if now >= deadline + Duration::from_secs(5) {
                    tracing::error!(worker = self.index, "sends still in flight 5 s after the drain deadline; exiting anyway");
                    std::process::exit(1);
                }
            }
        }
        let _ = self.io.ring.submit();
        self.io.bufs.unregister(&self.io.ring);
        tracing::info!(worker = self.index, "worker stopped");
    }
}

#[cfg(test)]
mod tests;
