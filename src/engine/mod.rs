//! The thread-per-core engine: one pinned worker per core, each with its own io_uring, its own
//! SO_REUSEPORT sockets, sessions and timer wheel. Workers share nothing mutable: the
//! configuration comes from the snapshot store (one atomic load per new session) and counters
//! are per worker. The engine is the only code that makes system calls for the services.

mod files;
mod http;
mod iov;
mod nbd;
pub mod ring;
mod slab;
mod tftp;
pub mod timer;

use crate::config::{Snapshot, Store};
use crate::metrics::{Histogram, WorkerCounters};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// user_data layout: kind (8 bits) | session id (24) | generation (16) | send slot (16).
#[inline]
pub(crate) fn ud(kind: u8, id: u32, generation: u16, slot: u16) -> u64 {
    kind as u64 | ((id as u64) & 0xFF_FFFF) << 8 | (generation as u64) << 32 | (slot as u64) << 48
}

#[inline]
pub(crate) fn ud_parts(u: u64) -> (u8, u32, u16, u16) {
    (u as u8, ((u >> 8) & 0xFF_FFFF) as u32, (u >> 32) as u16, (u >> 48) as u16)
}

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
        if self.total.fetch_add(1, Ordering::AcqRel) >= total_max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let b = &self.per_ip[Self::bucket(ip)];
        if b.fetch_add(1, Ordering::AcqRel) as usize >= per_ip_max {
            b.fetch_sub(1, Ordering::AcqRel);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub fn release(&self, ip: std::net::IpAddr) {
        self.per_ip[Self::bucket(ip)].fetch_sub(1, Ordering::AcqRel);
        self.total.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
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
    pub http_admission: Admission,
    pub nbd_admission: Admission,
    pub nbd_targets: crate::nbd::cache::Registry,
    pub farm: Arc<crate::farm::Runtime>,
}

impl Shared {
    /// This node's own farm figures, for placement and /healthz.
    pub fn farm_local(&self, snap: &Snapshot, now: Instant) -> crate::farm::Local {
        let (active, booting) = self.farm.local_load(snap, &self.nbd_targets, now);
        crate::farm::Local { draining: self.draining.load(Ordering::Relaxed), active, booting, hashes: self.farm.vdisk_hashes(snap) }
    }
}

/// /metrics: every worker's counters summed, histograms, and gauges.
pub fn render_metrics(shared: &Shared) -> String {
    let snap = shared.store.load();
    let r = Ordering::Relaxed;
    let mut blocks: Vec<&WorkerCounters> = shared.workers.iter().map(|w| &w.counters).collect();
    blocks.push(&shared.store.counters);
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
            ("bootfarm_draining", "", "1 while shutting down.", shared.draining.load(r) as u8 as f64),
            ("bootfarm_nbd_targets", "", "NBD targets with a write cache (connected or kept for a reconnect).", targets as f64),
            ("bootfarm_nbd_targets_connected", "", "NBD targets with at least one connection.", connected as f64),
            (
                "bootfarm_nbd_cache_bytes",
                "",
                "RAM and overflow bytes held by all NBD write caches.",
                shared.nbd_targets.total.load(r) as f64,
            ),
        ],
    );
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

fn pin(cpu: usize) {
    // Safety: a zeroed cpu_set_t is valid; CPU_SET stays inside it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % libc::CPU_SETSIZE as usize, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(cpu, "cannot pin worker: {}", std::io::Error::last_os_error());
        }
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
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n {
        let t = tftp::bind_listener(tftp_addr).map_err(|e| format!("cannot bind TFTP on udp/{tftp_addr}: {e}"))?;
        let h = http::bind_listener(http_addr).map_err(|e| format!("cannot bind HTTP on tcp/{http_addr}: {e}"))?;
        let b = http::bind_listener(nbd_addr).map_err(|e| format!("cannot bind NBD on tcp/{nbd_addr}: {e}"))?;
        listeners.push((t, h, b));
    }
    let workers: Vec<Arc<WorkerStats>> = (0..n).map(|_| Arc::new(WorkerStats::default())).collect();
    let shared = Arc::new(Shared {
        store,
        draining: AtomicBool::new(false),
        workers,
        grace: Duration::from_millis(s.shutdown_grace_ms),
        tftp_admission: Admission::default(),
        http_admission: Admission::default(),
        nbd_admission: Admission::default(),
        nbd_targets: Default::default(),
        farm: Default::default(),
    });
    let cpus = std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::with_capacity(n);
    for (i, (listener, http_listener, nbd_listener)) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let listen_ip = tftp_addr.ip();
        let t = std::thread::Builder::new()
            .name(format!("bootfarm-w{i}"))
            .spawn(move || {
                pin(i % cpus);
                let mut w = match Worker::new(i, shared, listener, http_listener, nbd_listener, listen_ip) {
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
    tracing::info!(workers = n, tftp = %tftp_addr, http = %http_addr, nbd = %nbd_addr, "engine started");
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
    ring: io_uring::IoUring,
    bufs: ring::BufRing,
    wheel: timer::Wheel,
    tftp: tftp::TftpService,
    http: http::HttpService,
    nbd: nbd::NbdService,
    shared: Arc<Shared>,
    cqes: Vec<(u64, i32, u32)>,
    expired: Vec<(u32, u16)>,
}

impl Worker {
    fn new(
        index: usize,
        shared: Arc<Shared>,
        listener: socket2::Socket,
        http_listener: socket2::Socket,
        nbd_listener: socket2::Socket,
        listen_ip: std::net::IpAddr,
    ) -> Result<Worker, String> {
        let ring = ring::build().map_err(|e| e.to_string())?;
        let bufs = ring::BufRing::new(&ring, 0, 1024, 2048).map_err(|e| format!("cannot register receive buffers: {e}"))?;
        let stats = shared.workers[index].clone();
        Ok(Worker {
            index,
            ring,
            bufs,
            wheel: timer::Wheel::new(Instant::now()),
            tftp: tftp::TftpService::new(listener, listen_ip, stats.clone(), shared.clone(), index),
            http: http::HttpService::new(http_listener, stats.clone(), shared.clone(), index),
            nbd: nbd::NbdService::new(nbd_listener, stats, shared.clone(), index),
            shared,
            cqes: Vec::with_capacity(ring::CQ_ENTRIES as usize),
            expired: Vec::new(),
        })
    }

    fn run(&mut self) {
        let store = self.shared.store.clone();
        let snapshot = move || -> Arc<Snapshot> { store.load() };
        let mut drain_deadline: Option<Instant> = None;
        let mut now = Instant::now();
        self.tftp.flush(&mut self.ring, &mut self.wheel, self.bufs.bgid, now);
        self.http.flush(&mut self.ring, &mut self.wheel, now);
        loop {
            let ts = io_uring::types::Timespec::from(self.wheel.wait_hint());
            let args = io_uring::types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)) => {}
                Err(e) => panic!("worker {}: io_uring_enter failed: {e}", self.index),
            }
            now = Instant::now();
            self.cqes.clear();
            self.cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
            for i in 0..self.cqes.len() {
                let (u, res, flags) = self.cqes[i];
                let (kind, id, generation, slot) = ud_parts(u);
                if kind >= nbd::K_ACCEPT {
                    self.nbd.on_cqe(kind, id, generation, res, flags, now);
                } else if kind >= http::K_ACCEPT {
                    self.http.on_cqe(kind, id, generation, res, flags, &mut self.ring, now);
                } else {
                    self.tftp.on_cqe(kind, id, generation, slot, res, flags, &mut self.bufs, &mut self.ring, now, &snapshot);
                }
            }
            self.expired.clear();
            self.wheel.advance(now, &mut self.expired);
            for i in 0..self.expired.len() {
                let (id, g) = self.expired[i];
                if id & http::TIMER_BIT != 0 {
                    self.http.on_timer(id & !http::TIMER_BIT, g, now);
                } else {
                    self.tftp.on_timer(id, g, now);
                }
            }
            self.tftp.flush(&mut self.ring, &mut self.wheel, self.bufs.bgid, now);
            self.http.flush(&mut self.ring, &mut self.wheel, now);
            self.nbd.flush(&mut self.ring, now);
            if self.shared.draining.load(Ordering::Relaxed) {
                let deadline = *drain_deadline.get_or_insert_with(|| {
                    tracing::info!(worker = self.index, tftp = self.tftp.active(), http = self.http.active(), "draining");
                    self.http.stop_listening(&mut self.ring);
                    self.nbd.stop_listening(&mut self.ring);
                    now + self.shared.grace
                });
                self.tftp.stop_listening(&mut self.ring);
                if now >= deadline && self.tftp.active() + self.http.active() + self.nbd.active() > 0 {
                    self.tftp.abort_all(&mut self.ring, now);
                    self.http.abort_all(&mut self.ring);
                    self.nbd.abort_all(&mut self.ring);
                    self.nbd.flush(&mut self.ring, now);
                    self.tftp.flush(&mut self.ring, &mut self.wheel, self.bufs.bgid, now);
                    self.http.flush(&mut self.ring, &mut self.wheel, now);
                }
                // Done when nothing runs and the kernel holds no session memory.
                if self.tftp.active() + self.http.active() + self.nbd.active() == 0
                    && self.tftp.lingering() + self.http.lingering() + self.nbd.lingering() == 0
                {
                    break;
                }
                if now >= deadline + Duration::from_secs(5) {
                    tracing::error!(worker = self.index, "sends still in flight 5 s after the drain deadline; exiting anyway");
                    std::process::exit(1);
                }
            }
        }
        let _ = self.ring.submit();
        self.bufs.unregister(&self.ring);
        tracing::info!(worker = self.index, "worker stopped");
    }
}
