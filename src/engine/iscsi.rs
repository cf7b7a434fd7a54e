//! iSCSI on the engine: the sessions' environment (`iscsi::session::Env` over the worker's
//! shared state: snapshot, the write-cache registry NBD also uses, counters, token key, this
//! node's portals) and the glue that runs `iscsi::session` on the one TCP driver: limits from
//! `[iscsi]`, the counters, a receive buffer that grows to one whole PDU of our
//! MaxRecvDataSegmentLength, direct sends for small batches. Every protocol decision is in
//! `iscsi::session`.

use super::ring::FileSlots;
use super::tcp::{Evict, Tcp, TcpCounters, TcpGlue, TcpLimits, TcpSpec};
use super::token::ServiceId;
use super::{Shared, WorkerStats};
use crate::config::Snapshot;
use crate::iscsi::session::{self, Session};
use crate::metrics::Counter;
use crate::nbd::target::Registry;
use crate::session::{ConnScope, Refusal, TcpProtocol};
use socket2::Socket;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Receive buffer a connection starts with: login text and a few commands.
const RBUF_INITIAL: usize = 64 * 1024;
/// Batches up to this size are first tried with a direct non-blocking sendmsg.
const DIRECT_SEND_MAX: u64 = 256 * 1024;

pub type IscsiService = Tcp<IscsiProto>;

pub fn service(listener: Socket, stats: Arc<WorkerStats>, shared: Arc<Shared>, worker: usize, slots: FileSlots) -> IscsiService {
    let ctx = IscsiCtx { snap: shared.store.load(), shared: shared.clone(), stats: stats.clone() };
    Tcp::new(IscsiProto { spec: spec() }, ctx, listener, shared, worker, slots)
}

fn spec() -> TcpSpec {
    TcpSpec {
        service: ServiceId::Iscsi,
        name: "iscsi",
        counters: TcpCounters {
            accept_errors: Counter::IscsiAcceptErrors,
            connections: Counter::IscsiConnections,
            refused_total: Counter::IscsiRefusedLimit,
            refused_per_ip: Counter::IscsiRefusedPerIp,
            idle_evicted: Counter::IscsiIdleEvicted,
            timeout_send: Counter::IscsiTimeoutSend,
            damaged: Counter::IscsiDamaged,
            sent_bytes: Counter::IscsiSentBytes,
        },
        rbuf_initial: RBUF_INITIAL,
        direct_send_max: DIRECT_SEND_MAX,
        evict: Evict::Shared(|s| &s.iscsi_evictions),
        admission: |s| &s.iscsi_admission,
        gauge: None,
        keys: ("iscsi.connections_max", "iscsi.connections_per_ip_max"),
        refusal_note: "closed at once (before the login); a connection of that scope idle for iscsi.idle_evict_ms is cut so a retry gets in; raise the limit if this load is legitimate",
    }
}

pub struct IscsiProto {
    spec: TcpSpec,
}

impl TcpProtocol for IscsiProto {
    type Session = Session<IscsiCtx>;

    fn open(&mut self, ctx: &mut IscsiCtx, peer: SocketAddr, now: std::time::Instant) -> Session<IscsiCtx> {
        Session::new(ctx, peer, now)
    }

    fn refusal(&mut self, _ctx: &mut IscsiCtx, _why: Refusal, _out: &mut Vec<u8>) {
        // Nothing to write: a login response needs the initiator's login request first.
    }
}

impl TcpGlue for IscsiProto {
    fn spec(&self) -> &TcpSpec {
        &self.spec
    }

    fn limits(&self, snap: &Snapshot) -> TcpLimits {
        let c = &snap.config.iscsi;
        // One whole PDU: header, the largest AHS, digests and a data segment of our limit
        // (the login's text limit during login).
        let pdu_max = 48 + 1020 + 8 + (c.max_recv_data_segment_length as usize).max(c.text_bytes_max) + 3;
        TcpLimits {
            connections_max: c.connections_max,
            connections_per_ip_max: c.connections_per_ip_max,
            rbuf_max: pdu_max.next_power_of_two().max(RBUF_INITIAL),
            send_timeout: Duration::from_millis(c.send_timeout_ms),
            send_zc_min_bytes: c.send_zc_min_bytes,
            idle_evict: Duration::from_millis(c.idle_evict_ms),
        }
    }

    fn refresh(ctx: &mut IscsiCtx, snap: &Arc<Snapshot>) {
        if !Arc::ptr_eq(&ctx.snap, snap) {
            ctx.snap = snap.clone();
        }
    }
}

/// What iSCSI sessions see of the engine, one per worker.
pub struct IscsiCtx {
    snap: Arc<Snapshot>,
    shared: Arc<Shared>,
    stats: Arc<WorkerStats>,
}

impl ConnScope for IscsiCtx {}

impl session::Env for IscsiCtx {
    fn snapshot(&self) -> &Snapshot {
        &self.snap
    }
    fn registry(&self) -> &Registry {
        &self.shared.nbd_targets
    }
    fn reservations(&self) -> &crate::iscsi::scsi::reserve::Table {
        &self.shared.iscsi_reservations
    }
    fn count(&self, c: Counter, n: u64) {
        self.stats.counters.add(c, n);
    }
    fn token_key(&self) -> [u8; 16] {
        crate::nbd::token::key(self.snap.config.farm.token_key_file.as_deref())
    }
    fn now_unix(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }
    fn random(&self) -> [u8; 16] {
        crate::nbd::token::random16()
    }
    fn portals(&self) -> Vec<SocketAddr> {
        let s = &self.snap.config.server;
        // Listening on every address: the address this node has in the farm table.
        let ip: IpAddr = if s.listen.is_unspecified() {
            self.snap.farm.iter().find(|f| f.name == s.name).map_or(s.listen, |f| f.address)
        } else {
            s.listen
        };
        vec![SocketAddr::new(ip, s.iscsi_port)]
    }
}
