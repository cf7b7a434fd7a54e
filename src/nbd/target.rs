//! Targets and their registry: which write cache (an [`Overlay`]) a connection gets, keyed by
//! vdisk and target (the client address, or the id named in the export), bound to the address
//! that created it, limited per address, kept across a disconnect (briefly without a boot id,
//! up to `nbd.boot_cache_keep_max_ms` for the same boot id), dropped at once when the target
//! starts a new boot; and private mode's version files. The overlay itself is in `cache`.

use super::cache::{Limits, Overlay};
use crate::image::write::Writer;
use crate::metrics::{Counter, WorkerCounters};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A target (a booted machine) as the write cache knows it.
pub struct Target {
    /// The vdisk as it was when the target's cache was made: its overlay only makes sense on
    /// that chain, so a reload that changes the image gives later boots a new cache while
    /// this one keeps reading the old mapping.
    pub vdisk: Arc<crate::config::Vdisk>,
    /// Client IP, or the id given in the export name (`win10@00:11:22:33:44:55`).
    pub id: String,
    /// Whether `id` was named in the export (`vdisk@id`) rather than being the client address:
    /// the two are separate key spaces, so `vdisk@<some IP>` never reaches an anonymous target.
    pub named: bool,
    /// The address that created the target: only connections from it may attach to it.
    pub owner: IpAddr,
    pub overlay: Mutex<Overlay>,
    /// Private mode: whether the session's writes go into a new version (made at the first).
    pub private: bool,
    /// The boot this cache belongs to (`#boot` of the export, or the boot token), if named:
    /// a connection naming another boot id starts a new boot on a clean cache.
    pub boot: Option<String>,
    /// Bumped by an operator's disconnect (`POST /api/targets/<id>/disconnect`): a
    /// connection attached before the bump is cut (its session compares), the cache stays.
    pub cut: AtomicU64,
    /// LUN / target resets made by any iSCSI session of this target: the others raise the
    /// reset's unit attention too (SAM-5: on every I_T nexus of the LUN; a multipath host's
    /// paths are sessions of one target).
    pub resets: std::sync::atomic::AtomicU64,
}

/// Registry key: (vdisk, named, id); a private vdisk has one key, ("name", false, "").
type Key = (String, bool, String);

struct Entry {
    target: Arc<Target>,
    started: Instant,
    conns: usize,
    idle_since: Option<Instant>,
    client: String,
}

/// Every target's cache, shared by the workers (a reconnect may land on any of them). The
/// lock is taken on connect and disconnect only; requests lock their own target's overlay.
#[derive(Default)]
pub struct Registry {
    entries: Mutex<HashMap<Key, Entry>>,
    /// Bytes of RAM and overflow held by all overlays (nbd.cache_bytes_total_max).
    pub total: Arc<AtomicU64>,
    /// Bytes of RAM pages held by all overlays (nbd.cache_ram_bytes_total_max).
    pub ram_total: Arc<AtomicU64>,
    /// The RAM pages of every overlay come from here and go back here (nbd/cache/pool.rs).
    pub pool: Arc<super::cache::ChunkPool>,
    /// Caches dropped, by reason (bootfarm_nbd_caches_dropped_total).
    pub counters: WorkerCounters,
    /// The last [`RECENT_MAX`] target sessions that ended (last connection gone), newest last:
    /// the console's "recent boots".
    recent: Mutex<VecDeque<Ended>>,
    /// Bumped with every target's `cut`: a worker that sees it change looks for the
    /// connections to cut among its own.
    pub cuts: AtomicU64,
}

/// How many ended target sessions the registry remembers for the console (a fixed bound:
/// one line each on the page, ~150 bytes each here).
pub const RECENT_MAX: usize = 64;

/// A target as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub vdisk: String,
    pub id: String,
    /// The address:port of its latest connection.
    pub client: String,
    pub connections: usize,
    /// How long since the target's cache was made (its boot started).
    pub age: Duration,
    /// How long since its last connection ended, when none is open (its cache is kept for a
    /// reconnect).
    pub idle: Option<Duration>,
    pub cache_bytes: u64,
    pub written_bytes: u64,
}

/// A target session that ended: from its cache's creation to its last connection's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub vdisk: String,
    pub id: String,
    pub client: String,
    pub at: Instant,
    pub duration: Duration,
    pub written_bytes: u64,
}

/// How long a target's cache outlives its last connection.
#[derive(Clone, Copy, Debug)]
pub struct Keep {
    /// Targets without a boot id (nbd.cache_keep_after_disconnect_ms).
    pub anonymous: Duration,
    /// Targets with a boot id (nbd.boot_cache_keep_max_ms).
    pub boot: Duration,
}

impl Keep {
    pub fn of(cfg: &crate::config::Nbd) -> Keep {
        Keep {
            anonymous: Duration::from_millis(cfg.cache_keep_after_disconnect_ms),
            boot: Duration::from_millis(cfg.boot_cache_keep_max_ms),
        }
    }

    fn for_target(&self, t: &Target) -> Duration {
        if t.boot.is_some() {
            self.boot
        } else {
            self.anonymous
        }
    }
}

/// Why a cache went (the label of bootfarm_nbd_caches_dropped_total).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dropped {
    NewBoot,
    Expired,
    Disconnected,
    VdiskChanged,
}

impl Dropped {
    fn counter(self) -> Counter {
        match self {
            Dropped::NewBoot => Counter::NbdDroppedNewBoot,
            Dropped::Expired => Counter::NbdDroppedExpired,
            Dropped::Disconnected => Counter::NbdDroppedDisconnected,
            Dropped::VdiskChanged => Counter::NbdDroppedVdiskChanged,
        }
    }

    fn why(self) -> &'static str {
        match self {
            Dropped::NewBoot => "the target started a new boot (another boot id); the new boot starts from the clean image",
            Dropped::Expired => "not reconnected in time",
            Dropped::Disconnected => "disconnected",
            Dropped::VdiskChanged => "the vdisk changed",
        }
    }
}

/// The parts of an export name `[vdisk][@target][#boot]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportName<'a> {
    pub vdisk: &'a str,
    pub target: Option<&'a str>,
    pub boot: Option<&'a str>,
}

/// Splits an export name `[vdisk][@target][#boot]` into its parts (unchecked; see
/// [`valid_target_id`], [`valid_boot_id`]). '#' ends the target id: everything after it is
/// the boot id.
pub fn split_export(name: &str) -> ExportName<'_> {
    let (rest, boot) = match name.split_once('#') {
        Some((r, b)) => (r, Some(b)),
        None => (name, None),
    };
    let (vdisk, target) = match rest.split_once('@') {
        Some((v, id)) => (v, Some(id)),
        None => (rest, None),
    };
    ExportName { vdisk, target, boot }
}

/// A target id given by a client: printable, no spaces, bounded, no '#' (it starts the boot id).
pub fn valid_target_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'\\' && b != b'#')
}

/// A boot id: 1-64 letters, digits, '-' or '_' (what base64url and MACs without ':' use).
pub fn valid_boot_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Why a connection did not get its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachError {
    /// A private vdisk already has its writer (the message names it).
    Busy(String),
    /// The target was created from another address, which alone may reach it.
    Foreign { owner: IpAddr },
    /// The target could not be set up (a private version file, say).
    Failed(String),
    /// The client's address already holds nbd.targets_per_address_max targets.
    TargetsPerAddress(String),
}

impl std::fmt::Display for AttachError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachError::Busy(s) | AttachError::Failed(s) | AttachError::TargetsPerAddress(s) => f.write_str(s),
            AttachError::Foreign { .. } => {
                f.write_str("this target id belongs to another machine (the address that created it); use your own id")
            }
        }
    }
}

impl Registry {
    /// A registry whose overlays take their RAM from `pool` (one the engine prefaulted).
    pub fn with_pool(pool: Arc<super::cache::ChunkPool>) -> Registry {
        Registry { pool, ..Default::default() }
    }

    /// Gives a connection from `client` its target: the cache kept from an earlier connection
    /// or a new one. `id` is the id named in the export (`vdisk@id`); without one the target is
    /// the client address. `boot` is the boot the connection belongs to: the same boot id finds
    /// the target's cache however long it was disconnected (until `nbd.boot_cache_keep_max_ms`,
    /// even across a reload that changed the vdisk: its writes only make sense on the image it
    /// booted with); another boot id drops the previous boot's cache at once and starts clean.
    /// Without a boot id: the cache of a connected target, or of one gone less than
    /// `nbd.cache_keep_after_disconnect_ms` on the same image. A target is bound to the address
    /// that created it: another address is refused, whatever id it names.
    pub fn attach(
        &self,
        vdisk: &Arc<crate::config::Vdisk>,
        id: Option<&str>,
        boot: Option<&str>,
        client: SocketAddr,
        cfg: &crate::config::Nbd,
        now: Instant,
    ) -> Result<(Arc<Target>, bool), AttachError> {
        use crate::config::Mode;
        let keep = Keep::of(cfg);
        self.sweep(now, keep);
        let private = vdisk.mode == Mode::Private;
        let boot = boot.filter(|_| !private);
        let ip = client.ip().to_canonical();
        let key: Key = match (private, id) {
            (true, _) => (vdisk.name.clone(), false, String::new()),
            (false, Some(id)) => (vdisk.name.clone(), true, id.to_string()),
            (false, None) => (vdisk.name.clone(), false, ip.to_string()),
        };
        let client = client.to_string();
        let stale = {
            let mut map = self.entries.lock().unwrap();
            match map.get_mut(&key) {
                Some(e) if e.conns > 0 && private => {
                    return Err(AttachError::Busy(format!(
                        "vdisk {} is in private mode and already has a writer ({}); one connection at a time",
                        vdisk.name, e.client
                    )));
                }
                // A cache answers its owner only while today's rule keeps it (connected, or
                // gone less than the anonymous keep time, on the image served now). Past that,
                // another address may start its own target under the id, as it could when
                // caches went after the anonymous keep time (a machine whose address changed);
                // the owner's longer keep for its boot only ever serves the owner.
                Some(e)
                    if e.target.owner != ip
                        && live(e, vdisk)
                        && (e.conns > 0 || e.idle_since.is_none_or(|t| now.saturating_duration_since(t) < keep.anonymous)) =>
                {
                    return Err(AttachError::Foreign { owner: e.target.owner });
                }
                Some(e) if e.target.owner != ip => {
                    map.remove(&key).map(|e| (e.target, if boot.is_some() { Dropped::NewBoot } else { Dropped::Expired }))
                }
                // Another boot of this machine: whatever the old boot left (connections the
                // server has not seen close yet included) is not this boot's.
                Some(e) if boot.is_some() && e.target.boot.as_deref() != boot => map.remove(&key).map(|e| (e.target, Dropped::NewBoot)),
                // The same boot, however long it was gone; without a boot id, connected or gone
                // less than the anonymous keep time.
                Some(e)
                    if live(e, vdisk)
                        && (boot.is_some()
                            || e.conns > 0
                            || e.idle_since.is_none_or(|t| now.saturating_duration_since(t) < keep.anonymous)) =>
                {
                    if !Arc::ptr_eq(&e.target.vdisk, vdisk) {
                        tracing::info!(
                            vdisk = %vdisk.name,
                            target = %e.target.id,
                            "the vdisk changed since this target connected; it keeps the image it booted with (size and data) until its last connection ends"
                        );
                    }
                    e.conns += 1;
                    e.idle_since = None;
                    e.client = client;
                    return Ok((e.target.clone(), true));
                }
                Some(e) => {
                    let why = if Arc::ptr_eq(&e.target.vdisk, vdisk) { Dropped::Expired } else { Dropped::VdiskChanged };
                    map.remove(&key).map(|e| (e.target, why))
                }
                None => None,
            }
        };
        if let Some((t, why)) = stale {
            self.end_target(&t, why);
        }
        self.room_for(&self.entries.lock().unwrap(), ip, cfg.targets_per_address_max)?;
        let limits = Limits {
            ram_bytes: cfg.cache_ram_bytes_per_target,
            target_bytes_max: cfg.cache_bytes_per_target_max,
            total_bytes_max: cfg.cache_bytes_total_max,
            dir: cfg.cache_dir.clone(),
            zero_ranges_max: cfg.cache_zero_ranges_per_target_max,
            ram_total_max: cfg.cache_ram_bytes_total_max,
            ram_total: self.ram_total.clone(),
            pool: self.pool.clone(),
            map_overflow: cfg.cache_overflow_mapped,
        };
        let mut overlay = Overlay::new(vdisk.chain.virtual_size(), limits, self.total.clone(), None);
        if private {
            private_versions_check(vdisk, cfg.private_versions_max).map_err(AttachError::Failed)?;
            overlay.version_on_first_write(vdisk.clone());
        }
        let target = Arc::new(Target {
            vdisk: vdisk.clone(),
            id: key.2.clone(),
            named: key.1,
            owner: ip,
            overlay: Mutex::new(overlay),
            private,
            boot: boot.map(str::to_string),
            cut: AtomicU64::new(0),
            resets: Default::default(),
        });
        let stale = {
            let mut map = self.entries.lock().unwrap();
            // Another worker may have made the same target meanwhile: the same checks again.
            let stale = match map.get(&key) {
                Some(e) if private && e.conns > 0 => {
                    return Err(AttachError::Busy(format!(
                        "vdisk {} is in private mode and already has a writer; one connection at a time",
                        vdisk.name
                    )));
                }
                Some(e) if e.target.owner != ip => return Err(AttachError::Foreign { owner: e.target.owner }),
                // Two connections of one boot raced: the first one's target is the boot's.
                Some(e) if boot.is_some() && e.target.boot.as_deref() == boot && !e.target.vdisk.damaged() => {
                    let e = map.get_mut(&key).unwrap();
                    e.conns += 1;
                    e.idle_since = None;
                    e.client = client;
                    return Ok((e.target.clone(), true));
                }
                Some(_) => map.remove(&key).map(|e| e.target),
                None => None,
            };
            self.room_for(&map, ip, cfg.targets_per_address_max)?;
            map.insert(key, Entry { target: target.clone(), started: now, conns: 1, idle_since: None, client });
            stale
        };
        if let Some(t) = stale {
            self.end_target(&t, Dropped::NewBoot);
        }
        Ok((target, false))
    }

    fn end_target(&self, t: &Arc<Target>, why: Dropped) {
        if !t.private {
            self.counters.add(why.counter(), 1);
        }
        end_target(t, why.why());
    }

    /// Refuses a new target from an address that already holds `max` (connected or kept).
    fn room_for(&self, map: &HashMap<Key, Entry>, ip: IpAddr, max: usize) -> Result<(), AttachError> {
        let held = map.values().filter(|e| e.target.owner == ip).count();
        if held >= max {
            return Err(AttachError::TargetsPerAddress(format!(
                "address {ip} already holds {held} write caches (nbd.targets_per_address_max {max}, connected or kept for a reconnect): \
                 reuse the target id, wait nbd.cache_keep_after_disconnect_ms for old ones to go, or raise the limit"
            )));
        }
        Ok(())
    }

    /// Whether a standard vdisk's named target `id` exists, created from `ip`, in boot `boot`.
    pub fn holds(&self, vdisk: &str, id: &str, ip: IpAddr, boot: Option<&str>) -> bool {
        let map = self.entries.lock().unwrap();
        map.get(&(vdisk.to_string(), true, id.to_string())).is_some_and(|e| e.target.owner == ip && e.target.boot.as_deref() == boot)
    }

    /// A connection of `t` ended; with a keep time of zero its cache goes at once when it was
    /// the last.
    pub fn detach(&self, t: &Arc<Target>, keep: Keep, now: Instant) {
        let key: Key = (t.vdisk.name.clone(), t.named, t.id.clone());
        let mut ended = None;
        let gone = {
            let mut map = self.entries.lock().unwrap();
            match map.get_mut(&key) {
                Some(e) if Arc::ptr_eq(&e.target, t) => {
                    e.conns -= 1;
                    if e.conns == 0 {
                        e.idle_since = Some(now);
                        ended = Some((e.client.clone(), now.saturating_duration_since(e.started)));
                    }
                    if e.conns == 0 && keep.for_target(t).is_zero() {
                        map.remove(&key).map(|e| e.target)
                    } else {
                        None
                    }
                }
                _ => None,
            }
        };
        if let Some((client, duration)) = ended {
            // The overlay's lock is never taken under the registry's.
            let written_bytes = t.overlay.lock().unwrap().bytes_written;
            let mut r = self.recent.lock().unwrap();
            if r.len() == RECENT_MAX {
                r.pop_front();
            }
            r.push_back(Ended { vdisk: t.vdisk.name.clone(), id: t.id.clone(), client, at: now, duration, written_bytes });
        }
        if let Some(t) = gone {
            self.end_target(&t, Dropped::Disconnected);
        }
    }

    /// An operator's disconnect: every connection of the targets whose id is `id` (on any
    /// vdisk) is cut within ~100 ms by the worker holding it; their caches stay for the
    /// reconnect (a boot's writes are still there when it comes back). Returns (vdisk,
    /// connections now open) of each such target; empty when none has a connection.
    pub fn disconnect(&self, id: &str) -> Vec<(String, usize)> {
        let map = self.entries.lock().unwrap();
        let hit: Vec<(String, usize)> = map
            .values()
            .filter(|e| e.target.id == id && e.conns > 0)
            .map(|e| {
                e.target.cut.fetch_add(1, Ordering::AcqRel);
                (e.target.vdisk.name.clone(), e.conns)
            })
            .collect();
        if !hit.is_empty() {
            self.cuts.fetch_add(1, Ordering::AcqRel);
        }
        hit
    }

    /// Every target (connected, or kept for a reconnect), for the console: at most `max`, the
    /// most recently started first.
    pub fn list(&self, now: Instant, max: usize) -> Vec<Listed> {
        let mut rows: Vec<(Arc<Target>, Listed)> = {
            let map = self.entries.lock().unwrap();
            map.values()
                .map(|e| {
                    let row = Listed {
                        vdisk: e.target.vdisk.name.clone(),
                        id: e.target.id.clone(),
                        client: e.client.clone(),
                        connections: e.conns,
                        age: now.saturating_duration_since(e.started),
                        idle: e.idle_since.map(|t| now.saturating_duration_since(t)),
                        cache_bytes: 0,
                        written_bytes: 0,
                    };
                    (e.target.clone(), row)
                })
                .collect()
        };
        rows.sort_by_key(|(_, r)| r.age);
        rows.truncate(max);
        // The overlays' locks are taken after the registry's is released.
        rows.into_iter()
            .map(|(t, mut r)| {
                let o = t.overlay.lock().unwrap();
                (r.cache_bytes, r.written_bytes) = (o.allocated_bytes(), o.bytes_written);
                r
            })
            .collect()
    }

    /// The target sessions that ended last, newest first.
    pub fn recent(&self) -> Vec<Ended> {
        self.recent.lock().unwrap().iter().rev().cloned().collect()
    }

    /// Drops caches whose target has been gone longer than its keep time.
    pub fn sweep(&self, now: Instant, keep: Keep) {
        let gone: Vec<Arc<Target>> = {
            let mut map = self.entries.lock().unwrap();
            let old: Vec<Key> = map
                .iter()
                .filter(|(_, e)| e.idle_since.is_some_and(|t| now.saturating_duration_since(t) >= keep.for_target(&e.target)))
                .map(|(k, _)| k.clone())
                .collect();
            old.into_iter().filter_map(|k| map.remove(&k)).map(|e| e.target).collect()
        };
        for t in gone {
            self.end_target(&t, Dropped::Expired);
        }
    }

    /// Connected targets per vdisk, and how many of them connected within `boot` (farm load).
    pub fn connected_by_vdisk(&self, now: Instant, boot: Duration) -> Vec<(String, u32, u32)> {
        let map = self.entries.lock().unwrap();
        let mut out: Vec<(String, u32, u32)> = Vec::new();
        for ((v, _, _), e) in map.iter().filter(|(_, e)| e.conns > 0) {
            let booting = (now.saturating_duration_since(e.started) < boot) as u32;
            match out.iter_mut().find(|(n, _, _)| n == v) {
                Some(x) => {
                    x.1 += 1;
                    x.2 += booting;
                }
                None => out.push((v.clone(), 1, booting)),
            }
        }
        out
    }

    /// (targets, of which connected) for status and metrics.
    pub fn counts(&self) -> (usize, usize) {
        let map = self.entries.lock().unwrap();
        (map.len(), map.values().filter(|e| e.conns > 0).count())
    }
}

/// Whether an entry's cache is still its target's: connected, of a named boot (kept until
/// nbd.boot_cache_keep_max_ms by the sweep), or kept on the image served now; never when its
/// image was found damaged.
fn live(e: &Entry, vdisk: &Arc<crate::config::Vdisk>) -> bool {
    !e.target.vdisk.damaged() && (e.conns > 0 || e.target.boot.is_some() || Arc::ptr_eq(&e.target.vdisk, vdisk))
}

fn end_target(t: &Arc<Target>, why: &str) {
    let mut o = t.overlay.lock().unwrap();
    let (written, held) = (o.bytes_written, o.allocated_bytes());
    match &o.version_file.clone() {
        None if t.private => {
            tracing::info!(vdisk = %t.vdisk.name, "private session ended ({why}) without a write; no version was made")
        }
        Some(p) => match o.sync() {
            Ok(()) => tracing::info!(
                vdisk = %t.vdisk.name,
                bytes_written = written,
                file = %p.display(),
                "private session ended ({why}); its writes are in the new version: point the vdisk's path at it and reload to serve it"
            ),
            Err(e) => {
                tracing::error!(vdisk = %t.vdisk.name, file = %p.display(), "private session ended but the version file could not be synced: {e}")
            }
        },
        None => {
            tracing::info!(vdisk = %t.vdisk.name, target = %t.id, bytes_written = written, cache_bytes = held, "write cache discarded ({why})")
        }
    }
}

/// The version files private sessions made beside the newest image of `vdisk`
/// (`<vdisk>.private-*`), in that folder.
fn private_versions(vdisk: &crate::config::Vdisk) -> usize {
    let top = vdisk.chain.top();
    let dir = top.path.parent().unwrap_or(Path::new("."));
    let prefix = format!("{}.private-", vdisk.name);
    std::fs::read_dir(dir)
        .map(|d| d.flatten().filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix))).count())
        .unwrap_or(0)
}

/// Refuses a private session once `max` version files exist: every session that writes leaves
/// one, and without a bound a client reconnecting in a loop fills the disk with them.
fn private_versions_check(vdisk: &crate::config::Vdisk, max: usize) -> Result<(), String> {
    let n = private_versions(vdisk);
    if n >= max {
        return Err(format!(
            "vdisk {} already has {n} private version files (nbd.private_versions_max = {max}) beside its image: merge or remove old ones, or raise the limit",
            vdisk.name
        ));
    }
    Ok(())
}

/// Private mode: a new differencing version beside the newest image, and its writer.
pub(super) fn private_version(vdisk: &crate::config::Vdisk) -> Result<(Writer, PathBuf), String> {
    let top = vdisk.chain.top();
    let ext = if top.format.is_vhdx() {
        "vhdx"
    } else if top.format.is_vhd() {
        "vhd"
    } else {
        return Err(format!("vdisk {} is raw; private mode needs a VHD or VHDX image", vdisk.name));
    };
    let dir = top.path.parent().unwrap_or(Path::new("."));
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut path = dir.join(format!("{}.private-{secs}.{ext}", vdisk.name));
    let mut n = 1;
    while path.exists() {
        path = dir.join(format!("{}.private-{secs}-{n}.{ext}", vdisk.name));
        n += 1;
    }
    crate::image::write::new_version_of(&top.path, &path).map_err(|e| format!("cannot create the private version: {e}"))?;
    let w = Writer::open(&path).map_err(|e| format!("cannot open the private version: {e}"))?;
    tracing::info!(vdisk = %vdisk.name, file = %path.display(), "private session: writes go into a new version");
    Ok((w, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The console's view: targets listed newest first with their cache use, each ended
    /// session remembered once (a second connection ending first adds nothing), and no more
    /// than RECENT_MAX of them, the oldest dropped first.
    #[test]
    fn targets_are_listed_and_ended_sessions_kept_up_to_recent_max() {
        let dir = std::env::temp_dir().join(format!("bootfarm-nbd-target-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("boot")).unwrap();
        std::fs::write(dir.join("disk.raw"), vec![7u8; 1 << 20]).unwrap();
        let text = "[tftp]\nroot = \"boot\"\n[nbd]\ntargets_per_address_max = 1000\n[[vdisk]]\nname = \"disk\"\npath = \"disk.raw\"\n";
        let snap = crate::config::from_text(&dir.join("bootfarm.toml"), text, &Default::default(), 1, None).unwrap();
        let (vd, cfg) = (snap.vdisk("disk").unwrap().clone(), snap.config.nbd.clone());
        let r = Registry::default();
        let t0 = Instant::now();
        let client: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let ms = Duration::from_millis;
        let (a, _) = r.attach(&vd, Some("aa"), None, client, &cfg, t0).unwrap();
        let (b, _) = r.attach(&vd, Some("bb"), None, client, &cfg, t0 + ms(10)).unwrap();
        let (a2, again) = r.attach(&vd, Some("aa"), None, client, &cfg, t0 + ms(20)).unwrap();
        assert!(again, "a second connection of the same target");
        a.overlay.lock().unwrap().write(0, &[1u8; 4096], &vd.chain).unwrap();
        let l = r.list(t0 + ms(100), 10);
        assert_eq!(l.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["bb", "aa"], "newest first");
        assert_eq!((l[1].connections, l[1].age, l[1].idle), (2, ms(100), None));
        assert!(l[1].cache_bytes >= 4096 && l[1].written_bytes == 4096, "{:?}", l[1]);
        assert_eq!(r.list(t0 + ms(100), 1).len(), 1, "bounded by its caller");
        let keep = Keep { anonymous: Duration::from_secs(60), boot: Duration::from_secs(60) };
        r.detach(&a2, keep, t0 + ms(200));
        assert!(r.recent().is_empty(), "one connection of aa is still open");
        r.detach(&a, keep, t0 + ms(300));
        r.detach(&b, keep, t0 + ms(400));
        let rec = r.recent();
        assert_eq!(rec.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["bb", "aa"], "newest first");
        assert_eq!((rec[1].duration, rec[1].written_bytes, rec[1].client.as_str()), (ms(300), 4096, "10.0.0.1:5000"));
        assert_eq!(r.list(t0 + ms(500), 10)[1].idle, Some(ms(200)), "kept for a reconnect, idle since its last connection");
        for i in 0..RECENT_MAX + 5 {
            let (t, _) = r.attach(&vd, Some(&format!("t{i}")), None, client, &cfg, t0 + ms(1000)).unwrap();
            r.detach(&t, Keep { anonymous: Duration::ZERO, boot: Duration::ZERO }, t0 + ms(1000 + i as u64));
        }
        let rec = r.recent();
        assert_eq!(rec.len(), RECENT_MAX);
        assert_eq!(rec[0].id, format!("t{}", RECENT_MAX + 4));
        assert_eq!(rec[RECENT_MAX - 1].id, "t5", "the oldest went first");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An operator's disconnect marks the connected targets of that id (on any vdisk) and
    /// bumps the registry's generation once; the cache stays for the boot's reconnect, and a
    /// target kept without a connection, or an unknown id, is not hit.
    #[test]
    fn a_disconnect_marks_the_connected_targets_of_an_id_and_keeps_their_caches() {
        let dir = std::env::temp_dir().join(format!("bootfarm-nbd-cut-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("boot")).unwrap();
        std::fs::write(dir.join("disk.raw"), vec![7u8; 1 << 20]).unwrap();
        let text = "[tftp]\nroot = \"boot\"\n[[vdisk]]\nname = \"disk\"\npath = \"disk.raw\"\n";
        let snap = crate::config::from_text(&dir.join("bootfarm.toml"), text, &Default::default(), 1, None).unwrap();
        let (vd, cfg) = (snap.vdisk("disk").unwrap().clone(), snap.config.nbd.clone());
        let r = Registry::default();
        let t0 = Instant::now();
        let client: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let (a, _) = r.attach(&vd, Some("aa"), Some("b1"), client, &cfg, t0).unwrap();
        let (other, _) = r.attach(&vd, Some("bb"), None, client, &cfg, t0).unwrap();
        a.overlay.lock().unwrap().write(0, &[1u8; 4096], &vd.chain).unwrap();
        assert!(r.disconnect("zz").is_empty() && r.cuts.load(Ordering::Acquire) == 0, "no such target: nothing changes");
        assert_eq!(r.disconnect("aa"), vec![("disk".to_string(), 1)]);
        assert_eq!((a.cut.load(Ordering::Acquire), other.cut.load(Ordering::Acquire), r.cuts.load(Ordering::Acquire)), (1, 0, 1));
        let keep = Keep::of(&cfg);
        r.detach(&a, keep, t0);
        let (back, resumed) = r.attach(&vd, Some("aa"), Some("b1"), client, &cfg, t0 + Duration::from_secs(1)).unwrap();
        assert!(resumed && Arc::ptr_eq(&back, &a), "the boot's reconnect finds its cache");
        assert_eq!(back.overlay.lock().unwrap().bytes_written, 4096);
        r.detach(&back, keep, t0 + Duration::from_secs(2));
        assert!(r.disconnect("aa").is_empty(), "a target without a connection has nothing to cut");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn export_names_and_target_ids() {
        let e = |v, t, b| ExportName { vdisk: v, target: t, boot: b };
        assert_eq!(split_export("win10@00:11:22:33:44:55"), e("win10", Some("00:11:22:33:44:55"), None));
        assert_eq!(split_export("win10"), e("win10", None, None));
        assert_eq!(split_export(""), e("", None, None));
        assert_eq!(split_export("win10@aa:bb:cc:dd:ee:ff#b00t_1-x"), e("win10", Some("aa:bb:cc:dd:ee:ff"), Some("b00t_1-x")));
        assert_eq!(split_export("win10#b1"), e("win10", None, Some("b1")), "a boot of the anonymous target");
        assert_eq!(split_export("win10@a#b#c"), e("win10", Some("a"), Some("b#c")), "the boot id is all after the first #");
        assert_eq!(split_export("v@#"), e("v", Some(""), Some("")));
        assert!(valid_target_id("00:11:22:33:44:55") && !valid_target_id("a/b") && !valid_target_id(""));
        assert!(!valid_target_id("a#b"), "'#' starts the boot id");
        assert!(valid_boot_id("AZaz09-_") && valid_boot_id(&"x".repeat(64)));
        assert!(
            !valid_boot_id("")
                && !valid_boot_id(&"x".repeat(65))
                && !valid_boot_id("b#c")
                && !valid_boot_id("a b")
                && !valid_boot_id("a:b")
        );
    }
}
