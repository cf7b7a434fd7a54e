//! HTTP on the engine: the routes' environment (`http::Env`, with the worker's bootstrap file
//! cache) and the glue that runs `http::conn` sessions on the one TCP driver (`tcp.rs`):
//! limits from `[http]`, the counters, and the 503 page for a connection refused at a limit.
//! A /boot file not open yet is opened through the ring (engine::files): the request waits
//! (its connection returns nothing) and the open's completion wakes the connection.

use super::files::{Files, Found, Get};
use super::ring::FileSlots;
use super::service::Io;
use super::tcp::{Evict, Tcp, TcpCounters, TcpGlue, TcpLimits, TcpSpec};
use super::token::{ServiceId, Token};
use super::{Shared, WorkerStats};
use crate::bootfiles::Refused;
use crate::config::Snapshot;
use crate::http;
use crate::http::conn::{self, ConnFor};
use crate::image::Backing;
use crate::metrics::Counter;
use crate::session::{ConnKey, ConnScope, Refusal, TcpProtocol};
use socket2::Socket;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub type HttpService = Tcp<HttpProto>;

/// The op of a bootstrap file's open through the ring: past the driver's own ops (1-5), within
/// the token's 4 bits.
const K_FILE_OPEN: u8 = 15;

/// Worker `worker`'s HTTP service.
pub fn service(listener: Socket, shared: Arc<Shared>, worker: usize, slots: FileSlots) -> HttpService {
    let ctx = HttpCtx {
        snap: shared.store.load(),
        shared: shared.clone(),
        stats: shared.workers[worker].clone(),
        files: Files::new("404", |op| Token::new(ServiceId::Http, K_FILE_OPEN, op, 0).pack()),
        conn: ConnKey { id: 0, generation: 0 },
        opened: HashMap::new(),
        client: IpAddr::from([0, 0, 0, 0]),
    };
    Tcp::new(HttpProto { spec: spec() }, ctx, listener, shared, worker, slots)
}

fn spec() -> TcpSpec {
    TcpSpec {
        service: ServiceId::Http,
        name: "http",
        counters: TcpCounters {
            accept_errors: Counter::HttpAcceptErrors,
            connections: Counter::HttpConnections,
            refused_total: Counter::HttpRefusedLimit,
            refused_per_ip: Counter::HttpRefusedLimit,
            idle_evicted: Counter::HttpIdleEvicted,
            timeout_send: Counter::HttpTimeoutSend,
            damaged: Counter::HttpDamaged,
            sent_bytes: Counter::HttpBodyBytes,
        },
        rbuf_initial: conn::RBUF_INITIAL,
        // One sendmsg through the ring per response, as always: no direct try.
        direct_send_max: 0,
        evict: Evict::Local,
        admission: |s| &s.http_admission,
        gauge: Some(|w| &w.http_connections),
        keys: ("http.connections_max", "http.connections_per_ip_max"),
        refusal_note: "answered 503 (no idle connection to reclaim); raise the limit if these are real targets",
    }
}

pub struct HttpProto {
    spec: TcpSpec,
}

impl TcpProtocol for HttpProto {
    type Session = ConnFor<HttpCtx>;

    fn open(&mut self, ctx: &mut HttpCtx, peer: SocketAddr, now: Instant) -> ConnFor<HttpCtx> {
        ConnFor::new(ctx, peer.ip().to_canonical(), now)
    }

    fn refusal(&mut self, _ctx: &mut HttpCtx, _why: Refusal, out: &mut Vec<u8>) {
        http::refused_at_limit(out);
    }
}

impl TcpGlue for HttpProto {
    fn spec(&self) -> &TcpSpec {
        &self.spec
    }

    fn limits(&self, snap: &Snapshot) -> TcpLimits {
        let c = &snap.config.http;
        TcpLimits {
            connections_max: c.connections_max,
            connections_per_ip_max: c.connections_per_ip_max,
            // One byte past the header limit: parse then answers 431 instead of waiting.
            rbuf_max: c.header_bytes_max + 1,
            send_timeout: Duration::from_millis(c.send_timeout_ms),
            send_zc_min_bytes: c.send_zc_min_bytes,
            idle_evict: Duration::ZERO,
        }
    }

    fn refresh(ctx: &mut HttpCtx, snap: &Arc<Snapshot>) {
        if !Arc::ptr_eq(&ctx.snap, snap) {
            ctx.snap = snap.clone();
        }
    }

    fn on_glue_completion(ctx: &mut HttpCtx, t: Token, res: i32, now: Instant, wake: &mut Vec<ConnKey>) {
        if t.op != K_FILE_OPEN {
            return;
        }
        let Some((outcome, waiters)) = ctx.files.complete(t.id, res, now) else { return };
        if ctx.opened.len() + waiters.len() > crate::bootfiles::WAITERS_MAX {
            // Left by connections that closed before they were polled again.
            ctx.opened.clear();
        }
        for k in waiters {
            ctx.opened.insert(k, outcome.as_ref().map(|o| o.found.clone()).map_err(|r| *r));
            wake.push(k);
        }
    }

    fn submit(ctx: &mut HttpCtx, io: &mut Io) {
        ctx.files.submit(&mut io.ring);
    }
}

/// What the routes see of the engine, one per worker.
pub struct HttpCtx {
    snap: Arc<Snapshot>,
    shared: Arc<Shared>,
    stats: Arc<WorkerStats>,
    /// Bootstrap files; a connection whose file is being opened waits here by its key.
    files: Files<ConnKey>,
    /// The connection the driver is calling into now.
    conn: ConnKey,
    /// Opens completed for connections not yet polled again: what their request's file() gets
    /// (the table does not keep a refusal). Bounded by bootfiles::WAITERS_MAX.
    opened: HashMap<ConnKey, Result<Arc<Found>, Refused>>,
    client: IpAddr,
}

impl ConnScope for HttpCtx {
    fn enter(&mut self, conn: ConnKey) {
        self.conn = conn;
    }
}

fn validators(f: &Found) -> (Arc<Backing>, u64, i64) {
    (f.data.clone(), f.id.ino, f.mtime_unix())
}

impl conn::Ctx for HttpCtx {
    fn serve_client(&mut self, ip: IpAddr) {
        self.client = ip;
    }
    fn count(&self, c: Counter, n: u64) {
        self.stats.counters.add(c, n);
    }
}

impl http::Env for HttpCtx {
    fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snap
    }
    fn draining(&self) -> bool {
        self.shared.draining.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn now_unix(&self) -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
    }
    fn metrics(&self) -> String {
        super::render_metrics(&self.shared)
    }
    fn count_damaged(&self) {
        self.shared.store.counters.add(Counter::HttpDamaged, 1);
    }
    fn sessions(&self) -> (u64, u64) {
        let r = std::sync::atomic::Ordering::Relaxed;
        (
            self.shared.workers.iter().map(|w| w.tftp_sessions.load(r)).sum(),
            self.shared.workers.iter().map(|w| w.http_connections.load(r)).sum(),
        )
    }
    fn file(&mut self, name: &[u8]) -> Result<Option<(Arc<Backing>, u64, i64)>, Refused> {
        if let Some(r) = self.opened.remove(&self.conn) {
            return r.map(|f| Some(validators(&f)));
        }
        let (conn, now) = (self.conn, Instant::now());
        match self.files.get(&self.snap.tftp_root, self.snap.generation, name, false, now, || conn) {
            Get::Ready(f) => Ok(Some(validators(&f))),
            Get::Waiting => Ok(None),
            Get::Refused(r) => Err(r),
            // Too many opens in flight (bootfiles::OPENS_MAX): this one is opened at once on
            // the worker (one openat2) rather than refused.
            Get::Busy => self.files.get_sync(&self.snap.tftp_root, self.snap.generation, name, now).map(|f| Some(validators(&f))),
        }
    }
    fn client_ip(&self) -> IpAddr {
        self.client
    }
    fn farm_health(&self) -> crate::farm::Health {
        self.shared.farm.health(&self.snap, self.shared.farm_draining(), &self.shared.nbd_targets, Instant::now())
    }
    fn farm_place(&self, vdisk: &str, target: &str) -> Vec<usize> {
        let me = self.shared.farm_local(&self.snap, Instant::now());
        self.shared.farm.place(&self.snap, vdisk, target, Some(self.client), &me)
    }
    fn farm_touch(&self, vdisk: &str, target: &str) {
        self.shared.farm.touch(&self.snap, vdisk, target, self.client, Instant::now());
    }
    fn farm_status_json(&self) -> String {
        crate::farm::status_json(&self.snap, &self.shared.farm, &self.shared.farm_local(&self.snap, Instant::now()))
    }
    fn console_json(&self) -> String {
        console_json(&self.shared, &self.snap, Instant::now())
    }
    fn events_acquire(&self) -> bool {
        self.shared.console.events_acquire(self.snap.config.console.events_max)
    }
    fn events_release(&self) {
        self.shared.console.events_release();
    }
    fn set_drained(&self, drained: bool) {
        self.shared.console.drained.store(drained, std::sync::atomic::Ordering::Relaxed);
    }
    fn nbd_disconnect(&self, id: &str) -> Vec<(String, usize)> {
        self.shared.nbd_targets.disconnect(id)
    }
}

/// The console's live members of /api/status from the NBD registry, the farm load map and
/// the counters (see http::console::live_json).
fn console_json(shared: &Shared, snap: &Snapshot, now: Instant) -> String {
    use crate::http::console::{self as c, BootRow, TargetRow, Totals};
    let boot = Duration::from_millis(snap.config.farm.boot_window_ms);
    let ms = |d: Duration| d.as_millis() as u64;
    let nbd = shared.nbd_targets.list(now, c::TARGETS_SHOWN_MAX);
    let http = shared.farm.http_targets(snap, now, c::TARGETS_SHOWN_MAX);
    let (nbd_total, _) = shared.nbd_targets.counts();
    let http_total = shared.farm.targets();
    let mut rows: Vec<TargetRow> = nbd
        .into_iter()
        .map(|t| TargetRow {
            protocol: "nbd",
            phase: if t.connections == 0 {
                "disconnected"
            } else if t.age < boot {
                "booting"
            } else {
                "running"
            },
            vdisk: t.vdisk,
            id: t.id,
            client: t.client,
            age_ms: ms(t.age),
            connections: t.connections,
            cache_bytes: t.cache_bytes,
            written_bytes: t.written_bytes,
        })
        .collect();
    // An HTTP reader not seen for 10 s is shown idle (iPXE reads on every INT13 call).
    rows.extend(http.into_iter().map(|(vdisk, id, from, age, last)| TargetRow {
        protocol: "http",
        phase: if last > Duration::from_secs(10) {
            "idle"
        } else if age < boot {
            "booting"
        } else {
            "running"
        },
        vdisk,
        id,
        client: from.to_string(),
        age_ms: ms(age),
        connections: 0,
        cache_bytes: 0,
        written_bytes: 0,
    }));
    let recent: Vec<BootRow> = shared
        .nbd_targets
        .recent()
        .into_iter()
        .map(|e| BootRow {
            vdisk: e.vdisk,
            id: e.id,
            client: e.client,
            ended_ms_ago: ms(now.saturating_duration_since(e.at)),
            duration_ms: ms(e.duration),
            written_bytes: e.written_bytes,
        })
        .collect();
    let t = |x: Counter| shared.counter_total(x);
    let failed = [
        Counter::TftpFailedTimeout,
        Counter::TftpFailedClient,
        Counter::TftpFailedShutdown,
        Counter::TftpFailedLifetime,
        Counter::TftpFailedEvicted,
        Counter::TftpFailedFileChanged,
    ];
    let responses = [Counter::HttpResponses2xx, Counter::HttpResponses3xx, Counter::HttpResponses4xx, Counter::HttpResponses5xx];
    let totals = Totals {
        tftp_bytes: t(Counter::TftpDataBytes),
        tftp_started: t(Counter::TftpStarted),
        tftp_completed: t(Counter::TftpCompleted),
        tftp_failed: failed.iter().map(|&x| t(x)).sum(),
        http_bytes: t(Counter::HttpBodyBytes),
        http_responses: responses.iter().map(|&x| t(x)).sum(),
        nbd_bytes: t(Counter::NbdSentBytes),
        nbd_written_bytes: t(Counter::NbdWrittenBytes),
        nbd_cache_bytes: shared.nbd_targets.total.load(std::sync::atomic::Ordering::Relaxed),
        nbd_cache_bytes_max: snap.config.nbd.cache_bytes_total_max,
    };
    c::live_json(
        &rows,
        (nbd_total, http_total),
        &recent,
        &totals,
        shared.console.events_open(),
        shared.console.drained.load(std::sync::atomic::Ordering::Relaxed),
        snap.config.console.token.is_some(),
    )
}
