//! The farm at run time: what this node knows of its peers (health, load, replica hashes, from
//! probing their `/healthz`), what it knows of itself (active and booting targets, content
//! hashes of its images), and placement (`place`) over both. The farm table itself is part of
//! the configuration snapshot, so a reload swaps it atomically with everything else.
//!
//! Threads: one prober (each round probes every peer in parallel, with a timeout, then
//! publishes a new `View` with one store) and one hasher (content hashes of new chain members,
//! computed once per file identity). Workers only read: one atomic load of the view per
//! placement.

mod activity;
pub mod place;

use crate::config::{Snapshot, Store};
use crate::image::guard::FileId;
pub use activity::{Activity, ActivityLimits, Touched};
use arc_swap::ArcSwap;
use place::ServerState;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What this node learnt of a peer from its last probes.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub up: bool,
    pub draining: bool,
    pub fails: u32,
    pub oks: u32,
    pub probed: bool,
    pub report: Option<Health>,
    pub last_error: Option<String>,
}

/// A node's `/healthz` body, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    pub node: String,
    pub generation: u64,
    pub draining: bool,
    pub booting: u32,
    pub active: HashMap<String, u32>,
    /// vdisk -> content hash (hex), absent while still being computed.
    pub hashes: HashMap<String, String>,
}

impl Health {
    /// The text body of `/healthz`: line-oriented, `key value...`, first line `ok` or `draining`.
    pub fn render(&self) -> String {
        let mut s = format!(
            "{}\nnode {}\ngeneration {}\nbooting {}\n",
            if self.draining { "draining" } else { "ok" },
            self.node,
            self.generation,
            self.booting
        );
        let mut a: Vec<_> = self.active.iter().collect();
        a.sort();
        for (v, n) in a {
            s.push_str(&format!("active {v} {n}\n"));
        }
        let mut h: Vec<_> = self.hashes.iter().collect();
        h.sort();
        for (v, x) in h {
            s.push_str(&format!("hash {v} {x}\n"));
        }
        s
    }

    pub fn parse(body: &str) -> Option<Health> {
        let mut lines = body.lines();
        let draining = match lines.next()? {
            "ok" => false,
            "draining" => true,
            _ => return None,
        };
        let mut h = Health { draining, ..Default::default() };
        for l in lines {
            let t: Vec<&str> = l.split_whitespace().collect();
            match t.as_slice() {
                ["node", n] => h.node = n.to_string(),
                ["generation", g] => h.generation = g.parse().ok()?,
                ["booting", b] => h.booting = b.parse().ok()?,
                ["active", v, n] => {
                    h.active.insert(v.to_string(), n.parse().ok()?);
                }
                ["hash", v, x] => {
                    h.hashes.insert(v.to_string(), x.to_string());
                }
                _ => {} // later versions may add lines
            }
        }
        Some(h)
    }
}

/// Peers by name, as of the last probe round.
#[derive(Debug, Default)]
pub struct View {
    pub peers: HashMap<String, Peer>,
    pub round: u64,
}

pub struct Runtime {
    pub view: ArcSwap<View>,
    activity: Mutex<Activity>,
    /// The load map's counters (evictions, per-address refusals), summed into /metrics.
    pub counters: crate::metrics::WorkerCounters,
    /// File identity at open (path, device, inode, size, mtime) -> content hash of that chain
    /// member: a layer is hashed once, and a file changed under it never re-hashed through it.
    file_hashes: Mutex<HashMap<(std::path::PathBuf, FileId), u64>>,
    stop: AtomicBool,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            view: ArcSwap::from_pointee(View::default()),
            activity: Default::default(),
            counters: Default::default(),
            file_hashes: Default::default(),
            stop: AtomicBool::new(false),
        }
    }
}

/// The hash a node reports for a vdisk it refuses because its image changed in place.
pub const DAMAGED_HASH: &str = "damaged";

/// Content hash of a byte range: 4 lanes of multiply-rotate over 8-byte words, finished with
/// the length (an xxHash64-style mix; fast enough to hash a 1 GiB image in well under a second
/// from the page cache). It detects replicas that differ, it is not a cryptographic digest.
pub fn content_hash(data: &[u8]) -> u64 {
    let mut h = ContentHasher::new();
    h.update(data);
    h.finish(data.len() as u64, data)
}

/// [`content_hash`] taken in pieces, so the hasher can stop (SIGTERM) or notice a changed file
/// between pieces of a large image instead of only after the whole of it.
struct ContentHasher {
    acc: [u64; 4],
}

impl ContentHasher {
    const P1: u64 = 0x9E37_79B1_85EB_CA87;
    const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;

    fn new() -> Self {
        ContentHasher { acc: [Self::P1.wrapping_add(Self::P2), Self::P2, 0, Self::P1.wrapping_neg()] }
    }

    /// Takes the whole 32-byte words of `data`; every piece but the last must be a multiple of 32.
    fn update(&mut self, data: &[u8]) {
        for c in data.chunks_exact(32) {
            for (i, a) in self.acc.iter_mut().enumerate() {
                let w = u64::from_le_bytes(c[i * 8..i * 8 + 8].try_into().unwrap());
                *a = a.wrapping_add(w.wrapping_mul(Self::P2)).rotate_left(31).wrapping_mul(Self::P1);
            }
        }
    }

    /// `len` is the whole input's length and `last` its last piece (whose tail of under 32
    /// bytes `update` left out).
    fn finish(&self, len: u64, last: &[u8]) -> u64 {
        let acc = &self.acc;
        let mut h = acc[0].rotate_left(1) ^ acc[1].rotate_left(7) ^ acc[2].rotate_left(12) ^ acc[3].rotate_left(18);
        h ^= len;
        for &b in &last[last.len() - last.len() % 32..] {
            h = (h ^ b as u64).wrapping_mul(Self::P1).rotate_left(11);
        }
        place::stable_hash(&[&h.to_le_bytes()])
    }
}

/// Hashes `data` in pieces of `piece` bytes (a multiple of 32), giving up (None) as soon as
/// `go_on` says so between pieces.
fn content_hash_unless(data: &[u8], piece: usize, mut go_on: impl FnMut() -> bool) -> Option<u64> {
    debug_assert!(piece > 0 && piece % 32 == 0);
    let mut h = ContentHasher::new();
    let mut last: &[u8] = &[];
    for c in data.chunks(piece) {
        if !go_on() {
            return None;
        }
        h.update(c);
        last = c;
    }
    Some(h.finish(data.len() as u64, last))
}

/// The target key of an HTTP request: the MAC the client gave (`?mac=`), or its address.
pub fn target_key(mac: Option<&str>, client: IpAddr) -> String {
    match mac.map(|m| m.to_ascii_lowercase().replace('-', ":")) {
        Some(m) if !m.is_empty() && m.len() <= 32 && m.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') => m,
        _ => client.to_string(),
    }
}

impl Runtime {
    /// An HTTP read of `vdisk` by `target` from `client`, within the load map's limits.
    pub fn touch(&self, snap: &Snapshot, vdisk: &str, target: &str, client: IpAddr, now: Instant) {
        use crate::metrics::Counter;
        let f = &snap.config.farm;
        let mut a = self.activity.lock().unwrap();
        let t = a.touch(vdisk, target, client, now, &ActivityLimits::of(f));
        if t.evicted > 0 {
            self.counters.add(Counter::FarmTargetsEvicted, t.evicted as u64);
        }
        if t.as_address {
            self.counters.add(Counter::FarmTargetsPerAddress, 1);
            if a.warned_at.is_none_or(|w| now.saturating_duration_since(w) >= Duration::from_secs(10)) {
                let unlogged = std::mem::take(&mut a.unlogged);
                a.warned_at = Some(now);
                tracing::warn!(
                    client = %client,
                    target,
                    limit = f.targets_per_address_max,
                    unlogged,
                    "farm load figures: this address already named farm.targets_per_address_max distinct targets (?mac=); its reads count as the address itself. Raise the limit if many real targets share one address (NAT, a relay)"
                );
            } else {
                a.unlogged += 1;
            }
        }
    }

    /// Targets in the load map now (HTTP readers).
    pub fn targets(&self) -> usize {
        self.activity.lock().unwrap().len()
    }

    /// (active targets per vdisk, booting targets) on this node, recomputed at most every
    /// 200 ms. Active: an HTTP read within `farm.active_window_ms`, or an NBD connection.
    /// Booting: active and first seen within `farm.boot_window_ms`.
    /// This node's HTTP vdisk readers, for the console (see [`Activity::list`]).
    pub fn http_targets(&self, snap: &Snapshot, now: Instant, max: usize) -> Vec<(String, String, IpAddr, Duration, Duration)> {
        self.activity.lock().unwrap().list(now, Duration::from_millis(snap.config.farm.active_window_ms), max)
    }

    pub fn local_load(&self, snap: &Snapshot, nbd: &crate::nbd::target::Registry, now: Instant) -> (HashMap<String, u32>, u32) {
        let mut a = self.activity.lock().unwrap();
        if let Some((at, m, b)) = &a.cached {
            if now.saturating_duration_since(*at) < Duration::from_millis(200) {
                return (m.clone(), *b);
            }
        }
        let f = &snap.config.farm;
        let (active_w, boot_w) = (Duration::from_millis(f.active_window_ms), Duration::from_millis(f.boot_window_ms));
        let (mut m, mut booting) = a.figures(now, active_w, boot_w);
        for (v, n, b) in nbd.connected_by_vdisk(now, boot_w) {
            *m.entry(v).or_default() += n;
            booting += b;
        }
        a.cached = Some((now, m.clone(), booting));
        (m, booting)
    }

    /// This node's vdisk content hashes (hex), for the vdisks already hashed; [`DAMAGED_HASH`]
    /// for a vdisk whose image changed in place (refused here until replaced).
    pub fn vdisk_hashes(&self, snap: &Snapshot) -> HashMap<String, String> {
        let fh = self.file_hashes.lock().unwrap();
        let mut out = HashMap::new();
        'v: for v in &snap.vdisks {
            if v.damaged() {
                // Peers see a copy that agrees with none: no target is placed here for it.
                out.insert(v.name.clone(), DAMAGED_HASH.to_string());
                continue;
            }
            let mut parts = Vec::new();
            for l in &v.chain.layers {
                match fh.get(&file_identity(l)) {
                    Some(h) => parts.extend_from_slice(&h.to_le_bytes()),
                    None => continue 'v,
                }
            }
            out.insert(v.name.clone(), format!("{:016x}", place::stable_hash(&[&parts])));
        }
        out
    }

    /// This node's health report (the `/healthz` body).
    pub fn health(&self, snap: &Snapshot, draining: bool, nbd: &crate::nbd::target::Registry, now: Instant) -> Health {
        let (active, booting) = self.local_load(snap, nbd, now);
        Health {
            node: snap.config.server.name.clone(),
            generation: snap.generation,
            draining,
            booting,
            active,
            hashes: self.vdisk_hashes(snap),
        }
    }

    /// The state placement sees for farm member `i` and `vdisk`.
    pub fn state_of(&self, snap: &Snapshot, i: usize, vdisk: &str, me: &Local) -> ServerState {
        let m = &snap.farm[i];
        if m.name == snap.config.server.name {
            return ServerState {
                up: !me.draining,
                // A damaged copy here (image changed in place) serves nobody.
                replica_ok: me.hashes.get(vdisk).is_none_or(|h| h != DAMAGED_HASH),
                active: me.active.get(vdisk).copied().unwrap_or(0),
                booting: me.booting,
            };
        }
        let view = self.view.load();
        let Some(p) = view.peers.get(&m.name) else {
            // Not probed yet: no hash, so not eligible until its first answer.
            return ServerState { up: true, replica_ok: false, active: 0, booting: 0 };
        };
        let r = p.report.as_ref();
        let theirs = r.and_then(|r| r.hashes.get(vdisk)).map(String::as_str).filter(|h| *h != DAMAGED_HASH);
        let replica_ok = match me.hashes.get(vdisk).map(String::as_str) {
            // Our copy is damaged (changed in place): nothing to compare with; a peer that
            // positively holds a sound copy serves it.
            Some(DAMAGED_HASH) => theirs.is_some(),
            ours => place::copy_eligible(false, ours, theirs),
        };
        ServerState {
            up: p.up && !p.draining,
            replica_ok,
            active: r.and_then(|r| r.active.get(vdisk).copied()).unwrap_or(0),
            booting: r.map_or(0, |r| r.booting),
        }
    }

    /// Placement for (target, vdisk) from this node's point of view: farm member indices.
    pub fn place(&self, snap: &Snapshot, vdisk: &str, target: &str, client: Option<IpAddr>, me: &Local) -> Vec<usize> {
        let f = &snap.config.farm;
        place::place(&snap.farm, &|i| self.state_of(snap, i, vdisk, me), vdisk, target, client, f.affinity, f.load_epsilon)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// This node's own figures, gathered once per request that places.
pub struct Local {
    pub draining: bool,
    pub active: HashMap<String, u32>,
    pub booting: u32,
    pub hashes: HashMap<String, String>,
}

/// A layer's key in the hash table: its file as it was opened, not what the path holds now.
fn file_identity(l: &crate::image::Layer) -> (std::path::PathBuf, FileId) {
    (l.path.clone(), l.file_id().unwrap_or(FileId { size: l.file_len(), ..Default::default() }))
}

/// A probe's outcome: (HTTP status, report) or why there is none.
pub type Probe = Result<(u16, Health), String>;

/// GET /healthz of one server with a timeout: its report, or why not.
pub fn probe(addr: SocketAddr, timeout: Duration) -> Probe {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    let deadline = Instant::now() + timeout;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: bootfarm-probe\r\n\r\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if Instant::now() > deadline {
            return Err("timed out".into());
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > 1 << 20 {
                    return Err("answer too large".into());
                }
            }
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("not an HTTP answer")?;
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("not an HTTP answer")?;
    let h = Health::parse(body).ok_or_else(|| format!("HTTP {status} without a bootfarm health report"))?;
    Ok((status, h))
}

/// Probes every member at once (one thread each), answers in the members' order.
fn probe_each(members: &[&crate::config::FarmMember], timeout: Duration) -> Vec<Probe> {
    std::thread::scope(|sc| {
        let hs: Vec<_> = members.iter().map(|m| sc.spawn(move || probe(SocketAddr::new(m.address, m.http_port), timeout))).collect();
        hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("probe panicked".into()))).collect()
    })
}

/// Starts the prober and hasher threads; they stop with `Runtime::stop`.
pub fn start(rt: Arc<Runtime>, store: Arc<Store>) -> Vec<std::thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    let (r, s) = (rt.clone(), store.clone());
    threads.push(std::thread::Builder::new().name("bootfarm-probe".into()).spawn(move || prober(&r, &s)).expect("spawn prober"));
    threads.push(std::thread::Builder::new().name("bootfarm-hash".into()).spawn(move || hasher(&rt, &store)).expect("spawn hasher"));
    threads
}

fn sleep_unless_stopped(rt: &Runtime, d: Duration) {
    let end = Instant::now() + d;
    while !rt.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

fn prober(rt: &Runtime, store: &Store) {
    let mut round = 0u64;
    while !rt.stop.load(Ordering::Relaxed) {
        let snap = store.load();
        let f = &snap.config.farm;
        let timeout = Duration::from_millis(f.health_timeout_ms);
        let me = &snap.config.server.name;
        let peers: Vec<&crate::config::FarmMember> = snap.farm.iter().filter(|m| &m.name != me).collect();
        let results: Vec<(String, Probe)> = peers.iter().map(|m| m.name.clone()).zip(probe_each(&peers, timeout)).collect();
        let old = rt.view.load();
        let mut view = View { peers: HashMap::new(), round };
        for (name, res) in results {
            let mut p = old.peers.get(&name).cloned().unwrap_or(Peer { up: true, ..Default::default() });
            p.probed = true;
            match res {
                Ok((status, h)) if (status == 200 || status == 503) && h.node == name => {
                    p.fails = 0;
                    p.oks += 1;
                    p.draining = h.draining;
                    p.last_error = None;
                    if !p.up && p.oks >= f.health_successes_min {
                        tracing::info!(server = %name, "farm server is back");
                        p.up = true;
                    }
                    p.report = Some(h);
                }
                other => {
                    let why = match other {
                        Ok((_, h)) => format!("answered as node {:?}", h.node),
                        Err(e) => e,
                    };
                    p.oks = 0;
                    p.fails += 1;
                    if p.up && p.fails >= f.health_failures_max {
                        tracing::warn!(server = %name, "farm server left the table after {} failed probes: {why}", p.fails);
                        p.up = false;
                    }
                    p.last_error = Some(why);
                }
            }
            view.peers.insert(name, p);
        }
        rt.view.store(Arc::new(view));
        round += 1;
        sleep_unless_stopped(rt, Duration::from_millis(f.health_interval_ms));
    }
}

fn hasher(rt: &Runtime, store: &Store) {
    while !rt.stop.load(Ordering::Relaxed) {
        let snap = store.load();
        for v in &snap.vdisks {
            for l in &v.chain.layers {
                let id = file_identity(l);
                // A file changed under its mapping is never read through it (the control
                // thread refuses the vdisk and a reload opens the new file).
                if l.changed_in_place() || rt.file_hashes.lock().unwrap().contains_key(&id) {
                    continue;
                }
                let t = Instant::now();
                // One pass over the whole file: with the serving advice (random) every 4 KiB
                // page was its own fault and, when not cached, its own disk read.
                l.advise_sequential();
                // In 64 MiB pieces: SIGTERM and a file changed under us are seen within one
                // piece, not after a whole (possibly many-GiB) image.
                let h = content_hash_unless(l.bytes(), 64 << 20, || !rt.stop.load(Ordering::Relaxed) && !l.changed_in_place());
                l.advise_random();
                let Some(h) = h.filter(|_| !l.changed_in_place()) else {
                    if rt.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    continue; // changed while hashed: the hash is of nothing real
                };
                tracing::info!(file = %l.path.display(), hash = format!("{h:016x}"), ms = t.elapsed().as_millis() as u64, "image content hashed");
                rt.file_hashes.lock().unwrap().insert(id, h);
                if rt.stop.load(Ordering::Relaxed) {
                    return;
                }
            }
        }
        sleep_unless_stopped(rt, Duration::from_millis(500));
    }
}

fn json_map<V: std::fmt::Display>(m: &HashMap<String, V>, quote: bool) -> String {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    let items: Vec<String> = v
        .iter()
        .map(|(k, x)| if quote { format!("{}: \"{x}\"", crate::http::json_str(k)) } else { format!("{}: {x}", crate::http::json_str(k)) })
        .collect();
    format!("{{{}}}", items.join(", "))
}

/// Replica agreement of one server's copy of `vdisk` with ours.
pub fn replica(ours: Option<&String>, theirs: Option<&String>) -> &'static str {
    match (ours, theirs) {
        (Some(a), Some(b)) if a == b => "match",
        (Some(_), Some(_)) => "mismatch",
        _ => "pending",
    }
}

/// The "farm" object of /api/status: every server as this node sees it.
pub fn status_json(snap: &Snapshot, rt: &Runtime, me: &Local) -> String {
    let view = rt.view.load();
    let servers: Vec<String> = snap
        .farm
        .iter()
        .map(|m| {
            let is_me = m.name == snap.config.server.name;
            let peer = view.peers.get(&m.name);
            let report = peer.and_then(|p| p.report.as_ref());
            let (up, draining) = if is_me { (!me.draining, me.draining) } else { peer.map_or((true, false), |p| (p.up, p.draining)) };
            let (generation, booting, active, hashes) = if is_me {
                (Some(snap.generation), Some(me.booting), Some(me.active.clone()), Some(me.hashes.clone()))
            } else {
                (report.map(|r| r.generation), report.map(|r| r.booting), report.map(|r| r.active.clone()), report.map(|r| r.hashes.clone()))
            };
            let replicas: HashMap<String, &str> = snap
                .vdisks
                .iter()
                .filter(|v| place::holds(m, &v.name))
                .map(|v| (v.name.clone(), replica(me.hashes.get(&v.name), hashes.as_ref().and_then(|h| h.get(&v.name)))))
                .collect();
            let opt = |x: Option<String>| x.unwrap_or_else(|| "null".into());
            format!(
                "{{\"name\": {}, \"address\": \"{}\", \"http_port\": {}, \"power\": {}, \"max_booting\": {}, \"self\": {is_me}, \"up\": {up}, \"draining\": {draining}, \"probed\": {}, \"last_error\": {}, \"generation\": {}, \"booting\": {}, \"active\": {}, \"hashes\": {}, \"replicas\": {}}}",
                crate::http::json_str(&m.name),
                m.address,
                m.http_port,
                m.power,
                m.max_booting,
                is_me || peer.is_some_and(|p| p.probed),
                opt(peer.and_then(|p| p.last_error.as_deref()).map(crate::http::json_str)),
                opt(generation.map(|g| g.to_string())),
                opt(booting.map(|b| b.to_string())),
                opt(active.as_ref().map(|a| json_map(a, false))),
                opt(hashes.as_ref().map(|h| json_map(h, true))),
                json_map(&replicas, true),
            )
        })
        .collect();
    format!(
        "{{\"affinity\": \"{:?}\", \"load_epsilon\": {}, \"probe_round\": {}, \"servers\": [{}]}}",
        snap.config.farm.affinity,
        snap.config.farm.load_epsilon,
        view.round,
        servers.join(", ")
    )
}

/// The farm as Prometheus gauges, for alerts: `bootfarm_farm_server_up{server}` (1 up, 0 down
/// or draining, as this node sees it) and `bootfarm_farm_replica_match{server,vdisk}` (1 the
/// same content as this node's copy, 0 a mismatch; absent while a hash is pending).
pub fn render_metrics(out: &mut String, snap: &Snapshot, rt: &Runtime, me: &Local) {
    use std::fmt::Write as _;
    let view = rt.view.load();
    let _ = writeln!(out, "# HELP bootfarm_farm_server_up Farm servers answering their health probes and not draining, as this node sees them.\n# TYPE bootfarm_farm_server_up gauge");
    let mut replicas = String::new();
    for m in &snap.farm {
        let is_me = m.name == snap.config.server.name;
        let peer = view.peers.get(&m.name);
        let up = if is_me { !me.draining } else { peer.is_some_and(|p| p.up && !p.draining) };
        let _ = writeln!(out, "bootfarm_farm_server_up{{server=\"{}\"}} {}", m.name, up as u8);
        let theirs = if is_me { Some(&me.hashes) } else { peer.and_then(|p| p.report.as_ref()).map(|r| &r.hashes) };
        for v in snap.vdisks.iter().filter(|v| place::holds(m, &v.name)) {
            let r = replica(me.hashes.get(&v.name), theirs.and_then(|h| h.get(&v.name)));
            if r != "pending" {
                let _ = writeln!(
                    replicas,
                    "bootfarm_farm_replica_match{{server=\"{}\",vdisk=\"{}\"}} {}",
                    m.name,
                    v.name,
                    (r == "match") as u8
                );
            }
        }
    }
    let _ = writeln!(out, "# HELP bootfarm_farm_replica_match Whether a farm server's copy of a vdisk has the same content hash as this node's (1) or not (0).\n# TYPE bootfarm_farm_replica_match gauge");
    out.push_str(&replicas);
}

/// `bootfarm farm status`: probes every server of the farm table and lays out what they say.
/// Returns the table and whether every server is up with replicas that agree.
pub fn status_table(snap: &Snapshot, timeout: Duration) -> (String, bool) {
    let reports = probe_each(&snap.farm.iter().collect::<Vec<_>>(), timeout);
    // The reference copy of each vdisk: the hash most servers report.
    let mut reference: HashMap<&str, String> = HashMap::new();
    for v in &snap.vdisks {
        let mut counts: HashMap<&String, usize> = HashMap::new();
        for (m, r) in snap.farm.iter().zip(&reports) {
            if let (true, Ok((_, h))) = (place::holds(m, &v.name), r) {
                if let Some(x) = h.hashes.get(&v.name) {
                    *counts.entry(x).or_default() += 1;
                }
            }
        }
        if let Some((x, _)) = counts.into_iter().max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0))) {
            reference.insert(&v.name, x.clone());
        }
    }
    let mut all_good = true;
    let mut rows = vec![["SERVER", "ADDRESS", "POWER", "HEALTH", "GEN", "BOOTING", "ACTIVE", "REPLICAS"].map(String::from).to_vec()];
    for (m, r) in snap.farm.iter().zip(&reports) {
        let addr = format!("{}:{}", m.address, m.http_port);
        let mut row = vec![m.name.clone(), addr, format!("{}", m.power)];
        match r {
            Ok((status, h)) if h.node == m.name => {
                let health = if h.draining {
                    "draining"
                } else if *status == 200 {
                    "up"
                } else {
                    "error"
                };
                all_good &= health == "up";
                let mut active: Vec<String> = h.active.iter().map(|(v, n)| format!("{v}={n}")).collect();
                active.sort();
                let mut reps = Vec::new();
                for v in snap.vdisks.iter().filter(|v| place::holds(m, &v.name)) {
                    let state = match (reference.get(v.name.as_str()), h.hashes.get(&v.name)) {
                        (Some(a), Some(b)) if a == b => "ok",
                        (Some(_), Some(_)) => {
                            all_good = false;
                            "MISMATCH"
                        }
                        _ => {
                            all_good = false; // still hashing: agreement not known yet
                            "pending"
                        }
                    };
                    reps.push(format!("{}:{state}", v.name));
                }
                row.extend([
                    health.to_string(),
                    h.generation.to_string(),
                    h.booting.to_string(),
                    if active.is_empty() { "-".into() } else { active.join(",") },
                    if reps.is_empty() { "-".into() } else { reps.join(",") },
                ]);
            }
            Ok((_, h)) => {
                all_good = false;
                row.extend([format!("wrong node ({})", h.node), "-".into(), "-".into(), "-".into(), "-".into()]);
            }
            Err(e) => {
                all_good = false;
                row.extend([format!("down ({e})"), "-".into(), "-".into(), "-".into(), "-".into()]);
            }
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in &rows {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    (out, all_good)
}

#[cfg(test)]
mod tests;
