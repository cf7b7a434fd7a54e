//! NBD on the engine: the sessions' environment (`nbd::session::Env` over the worker's shared
//! state: snapshot, target registry, counters, farm placement, token key) and the glue that runs
//! `nbd::session` on the one TCP driver (`tcp.rs`): limits from `[nbd]`, the counters, the
//! 256 KiB receive buffer, direct sends for small batches, and the periodic sweep of targets
//! whose keep time after a disconnect ran out. Every protocol decision is in `nbd::session`.

use super::ring::FileSlots;
use super::service::Io;
use super::tcp::{Evict, Tcp, TcpCounters, TcpGlue, TcpLimits, TcpSpec};
use super::token::ServiceId;
use super::{Shared, WorkerStats};
use crate::config::Snapshot;
use crate::metrics::Counter;
use crate::nbd::session::{self, Session};
use crate::nbd::target::Registry;
use crate::nbd::token;
use crate::session::{ConnScope, Refusal, TcpProtocol};
use socket2::Socket;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Receive buffer per connection, fixed: a few large WRITEs, or thousands of request headers.
const RBUF: usize = 256 * 1024;
/// Batches up to this size are first tried with a direct non-blocking sendmsg (a client at
/// queue depth 1 gets its reply without a trip through the ring).
const DIRECT_SEND_MAX: u64 = 256 * 1024;
/// How often worker 0 drops targets whose keep time after their last disconnect ran out.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub type NbdService = Tcp<NbdProto>;

pub fn service(listener: Socket, stats: Arc<WorkerStats>, shared: Arc<Shared>, worker: usize, slots: FileSlots) -> NbdService {
    let ctx = NbdCtx { snap: shared.store.load(), shared: shared.clone(), stats: stats.clone() };
    let proto = NbdProto { spec: spec(), worker, last_sweep: Instant::now() };
    Tcp::new(proto, ctx, listener, shared, worker, slots)
}

fn spec() -> TcpSpec {
    TcpSpec {
        service: ServiceId::Nbd,
        name: "nbd",
        counters: TcpCounters {
            accept_errors: Counter::NbdAcceptErrors,
            connections: Counter::NbdConnections,
            refused_total: Counter::NbdRefusedLimit,
            refused_per_ip: Counter::NbdRefusedPerIp,
            idle_evicted: Counter::NbdIdleEvicted,
            timeout_send: Counter::NbdTimeoutSend,
            damaged: Counter::NbdDamaged,
            sent_bytes: Counter::NbdSentBytes,
        },
        rbuf_initial: RBUF,
        direct_send_max: DIRECT_SEND_MAX,
        evict: Evict::Shared(|s| &s.nbd_evictions),
        admission: |s| &s.nbd_admission,
        gauge: None,
        keys: ("nbd.connections_max", "nbd.connections_per_ip_max"),
        refusal_note: "closed at once (NBD has no way to say busy before the handshake); a connection of that scope idle for nbd.idle_evict_ms is cut so a retry gets in; raise the limit if this load is legitimate",
    }
}

pub struct NbdProto {
    spec: TcpSpec,
    worker: usize,
    last_sweep: Instant,
}

impl TcpProtocol for NbdProto {
    type Session = Session<NbdCtx>;

    fn open(&mut self, ctx: &mut NbdCtx, peer: SocketAddr, now: Instant) -> Session<NbdCtx> {
        Session::new(ctx, peer, now)
    }

    fn refusal(&mut self, _ctx: &mut NbdCtx, _why: Refusal, _out: &mut Vec<u8>) {
        // Nothing to write: the connection is closed before the greeting.
    }
}

impl TcpGlue for NbdProto {
    fn spec(&self) -> &TcpSpec {
        &self.spec
    }

    fn limits(&self, snap: &Snapshot) -> TcpLimits {
        let c = &snap.config.nbd;
        TcpLimits {
            connections_max: c.connections_max,
            connections_per_ip_max: c.connections_per_ip_max,
            rbuf_max: RBUF,
            send_timeout: Duration::from_millis(c.send_timeout_ms),
            send_zc_min_bytes: c.send_zc_min_bytes,
            idle_evict: Duration::from_millis(c.idle_evict_ms),
        }
    }

    fn refresh(ctx: &mut NbdCtx, snap: &Arc<Snapshot>) {
        if !Arc::ptr_eq(&ctx.snap, snap) {
            ctx.snap = snap.clone();
        }
    }

    fn cuts(&self, shared: &Shared) -> Option<(u64, Counter)> {
        Some((shared.nbd_targets.cuts.load(std::sync::atomic::Ordering::Acquire), Counter::NbdOperatorCut))
    }

    fn tick(&mut self, ctx: &mut NbdCtx, io: &Io) {
        // One worker sweeps for all: the registry is shared.
        if self.worker == 0 && io.now.saturating_duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.last_sweep = io.now;
            let keep = crate::nbd::target::Keep::of(&io.snapshot().config.nbd);
            ctx.shared.nbd_targets.sweep(io.now, keep);
        }
    }
}

/// What NBD sessions see of the engine, one per worker.
pub struct NbdCtx {
    snap: Arc<Snapshot>,
    shared: Arc<Shared>,
    stats: Arc<WorkerStats>,
}

impl ConnScope for NbdCtx {}

impl session::Env for NbdCtx {
    fn snapshot(&self) -> &Snapshot {
        &self.snap
    }
    fn registry(&self) -> &Registry {
        &self.shared.nbd_targets
    }
    fn count(&self, c: Counter, n: u64) {
        self.stats.counters.add(c, n);
    }
    fn farm_place(&self, vdisk: &str, target: &str, client: IpAddr, now: Instant) -> Vec<usize> {
        let me = self.shared.farm_local(&self.snap, now);
        self.shared.farm.place(&self.snap, vdisk, target, Some(client), &me)
    }
    fn token_key(&self) -> [u8; 16] {
        token::key(self.snap.config.farm.token_key_file.as_deref())
    }
    fn now_unix(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }
    fn trace_start(&self) -> (u64, u64) {
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        (self.shared.nbd_trace.next_id(), ms)
    }
    fn trace_out(&self, chunk: crate::nbd::trace::Chunk) -> bool {
        self.shared.nbd_trace.send(chunk, self.snap.config.nbd.trace_queue_bytes_max)
    }
}
