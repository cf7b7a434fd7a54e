//! What the engine glue of a TCP service tells the driver: its counters, fixed properties,
//! limits from the snapshot, and the cross-worker eviction requests of `Evict::Shared`.

use super::super::service::Io;
use super::super::token::{ServiceId, Token};
use super::super::{Admission, Shared, WorkerStats};
use crate::config::Snapshot;
use crate::metrics::Counter;
use crate::session::{ConnKey, TcpProtocol, TcpSession};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The counters a TCP service keeps, named by the glue (every service keeps its own names).
#[derive(Clone, Copy)]
pub struct TcpCounters {
    pub accept_errors: Counter,
    pub connections: Counter,
    pub refused_total: Counter,
    pub refused_per_ip: Counter,
    pub idle_evicted: Counter,
    pub timeout_send: Counter,
    /// A send that faulted (EFAULT: a mapping past the end of a truncated file), or a guarded
    /// batch whose file changed before it was sent.
    pub damaged: Counter,
    pub sent_bytes: Counter,
}

/// How a service makes room at its connection limits.
#[derive(Clone, Copy)]
pub enum Evict {
    /// At the total limit, this worker closes its longest-idle connection and admits the new
    /// one (HTTP: as nginx reuses idle keep-alive connections).
    Local,
    /// A refusal posts a request to `Evictions`, and the first worker holding an idle
    /// connection of that scope (idle for `TcpLimits::idle_evict`) cuts it (NBD: the client
    /// retries and gets in). The requests of the service's workers are the ones given.
    Shared(fn(&Shared) -> &Arc<Evictions>),
}

/// What does not change for a service.
pub struct TcpSpec {
    pub service: ServiceId,
    /// "http", "nbd": log lines ("http connection closed").
    pub name: &'static str,
    pub counters: TcpCounters,
    /// The receive buffer a connection starts with; it grows, doubling, to `TcpLimits::rbuf_max`.
    pub rbuf_initial: usize,
    /// Batches up to this size are first offered with one non-blocking sendmsg (0: never).
    pub direct_send_max: u64,
    pub evict: Evict,
    /// The service's share of the global admission counts.
    pub admission: fn(&Shared) -> &Admission,
    /// The per-worker gauge of open connections, where the service publishes one.
    pub gauge: Option<fn(&WorkerStats) -> &std::sync::atomic::AtomicU64>,
    /// The configuration keys of the two connection limits, for refusal log lines.
    pub keys: (&'static str, &'static str),
    /// Said in the refusal log line after the limit: what happens and what to do.
    pub refusal_note: &'static str,
}

/// The limits a service reads from the snapshot in force.
#[derive(Clone, Copy)]
pub struct TcpLimits {
    pub connections_max: usize,
    pub connections_per_ip_max: usize,
    pub rbuf_max: usize,
    pub send_timeout: Duration,
    pub send_zc_min_bytes: u64,
    /// For `Evict::Shared`: how long a connection must have been idle to be cut.
    pub idle_evict: Duration,
}

/// The engine glue of one TCP service: the protocol, plus what the driver needs to know of it.
pub trait TcpGlue: TcpProtocol {
    fn spec(&self) -> &TcpSpec;
    fn limits(&self, snap: &Snapshot) -> TcpLimits;
    /// Called before the driver calls into sessions in a new pass: the context takes the
    /// snapshot in force.
    fn refresh(ctx: &mut Ctx<Self>, snap: &Arc<Snapshot>);
    /// Each pass of the loop, before the connections are flushed: a service's own periodic
    /// housekeeping (NBD sweeps expired write caches). Nothing by default.
    fn tick(&mut self, _ctx: &mut Ctx<Self>, _io: &Io) {}
    /// A completion of the glue's own ring work (an op the driver does not use: HTTP's
    /// bootstrap-file opens); the connections it pushes into `wake` are polled again.
    fn on_glue_completion(_ctx: &mut Ctx<Self>, _t: Token, _res: i32, _now: Instant, _wake: &mut Vec<ConnKey>) {}
    /// At the end of each flush: the glue pushes what its context queued for the ring.
    fn submit(_ctx: &mut Ctx<Self>, _io: &mut Io) {}
    /// Operators' cuts (NBD: `POST /api/targets/<id>/disconnect`): a generation that changes
    /// with every request, and the counter of the connections cut. When it changed since the
    /// last pass, the driver cuts its connections whose session says `cut_requested`. None:
    /// the service has no such action.
    fn cuts(&self, _shared: &Shared) -> Option<(u64, Counter)> {
        None
    }
}

pub type Ctx<P> = <<P as TcpProtocol>::Session as TcpSession>::Ctx;

/// Places wanted by connections refused at a limit of a service with `Evict::Shared`, each to
/// be made by cutting one idle connection of the refused one's scope (its address at the
/// per-address limit; anyone at the total). The connections of one address are spread over
/// the workers, so the refusing worker posts the request and the first worker holding a
/// connection of that scope idle long enough takes it and cuts its longest-idle one: one
/// refusal costs one eviction at most, and none when nothing in the scope is idle long enough.
#[derive(Default)]
pub struct Evictions {
    pub(in crate::engine) pending: AtomicUsize,
    pub(in crate::engine) wanted: Mutex<Vec<(Option<IpAddr>, Instant)>>,
}

/// Requests older than this are dropped: the refused client has retried or given up.
pub(in crate::engine) const EVICTION_REQUEST_MS: u64 = 2000;
const EVICTION_REQUESTS_MAX: usize = 1024;

impl Evictions {
    pub fn want(&self, scope: Option<IpAddr>, now: Instant) {
        let mut w = self.wanted.lock().unwrap();
        if w.len() < EVICTION_REQUESTS_MAX {
            w.push((scope, now));
            self.pending.store(w.len(), Ordering::Release);
        }
    }
}
