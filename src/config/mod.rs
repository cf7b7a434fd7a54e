//! Configuration as data: a TOML file parsed and validated into an immutable [`Snapshot`]
//! (images opened, paths canonicalised, farm table built) and published through one
//! `ArcSwap` store. Readers take a snapshot with one atomic load and keep it for the whole
//! transfer; a reload builds the next snapshot off the data path and swaps it in one store, or
//! refuses it with a precise error and leaves the last good one serving.

mod console;
mod iscsi;
mod linux;
mod locate;
mod model;
mod pxe;
pub mod reload;

pub use console::{Console, TOKEN_BYTES_MIN};
pub use iscsi::{valid_iqn, Iscsi, Sanboot, IQN_PREFIX_DEFAULT};
pub use linux::{CacheSite, LinuxBoot, SERVERS_MAX};
pub use model::*;
pub use pxe::{Pxe, Relay};

use crate::image::{Chain, ChainLimits};
use crate::metrics::{Counter, WorkerCounters};
use arc_swap::ArcSwap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// A configuration error a person can act on: which file, which key, which value, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub value: String,
    pub why: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        if !self.key.is_empty() {
            write!(f, "{}", self.key)?;
            if !self.value.is_empty() {
                write!(f, " = {}", self.value)?;
            }
            write!(f, ": ")?;
        }
        write!(f, "{}", self.why)
    }
}
impl std::error::Error for ConfigError {}

/// Values given on the command line; they win over the file, at start and at every reload.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<IpAddr>,
    pub tftp_port: Option<u16>,
    pub http_port: Option<u16>,
    pub nbd_port: Option<u16>,
    pub iscsi_port: Option<u16>,
    pub workers: Option<usize>,
}

impl Overrides {
    pub fn apply(&self, c: &mut Config) {
        if let Some(v) = self.listen {
            c.server.listen = v;
        }
        if let Some(v) = self.tftp_port {
            c.server.tftp_port = v;
        }
        if let Some(v) = self.http_port {
            c.server.http_port = v;
        }
        if let Some(v) = self.nbd_port {
            c.server.nbd_port = v;
        }
        if let Some(v) = self.iscsi_port {
            c.server.iscsi_port = v;
        }
        if let Some(v) = self.workers {
            c.server.workers = v;
        }
    }
}

/// A served vDisk: its configuration and its opened chain.
pub struct Vdisk {
    pub name: String,
    pub mode: Mode,
    pub path: PathBuf,
    pub chain: Chain,
    /// (device, inode, size, mtime) of every chain member at open: a reload reuses the mapping
    /// when nothing changed, and a replaced or damaged file is opened anew.
    identity: Vec<(u64, u64, u64, i64)>,
}

/// A farm member with its subnets parsed.
#[derive(Debug, Clone)]
pub struct FarmMember {
    pub name: String,
    pub address: IpAddr,
    pub power: f64,
    pub subnets: Vec<(IpAddr, u8)>,
    pub vdisks: Vec<String>,
    pub max_booting: u32,
    pub http_port: u16,
}

/// Everything a worker needs, immutable once published.
pub struct Snapshot {
    pub generation: u64,
    pub source: Option<PathBuf>,
    pub loaded_at: SystemTime,
    /// The effective configuration (defaults filled, overrides applied, paths absolute).
    pub config: Config,
    pub tftp_root: PathBuf,
    /// `tftp.plain_rrq_subnets`, parsed.
    pub tftp_plain_subnets: Vec<(IpAddr, u8)>,
    pub vdisks: Vec<Arc<Vdisk>>,
    pub farm: Vec<FarmMember>,
    /// The top-level tables the file had (`server`, `tftp`, `vdisk`, ...), for the reload
    /// rule that refuses a file missing one (a half-written file); empty when not from a file.
    pub tables: Vec<String>,
    /// The CHAP secret read from iscsi.chap_secret_file, when CHAP is on.
    pub iscsi_chap_secret: Option<Vec<u8>>,
}

impl Vdisk {
    /// An image of the chain changed in place while served (or a read of it faulted): every
    /// request for this vdisk is refused until a reload opens it anew (image::guard).
    #[inline]
    pub fn damaged(&self) -> bool {
        self.chain.damaged()
    }

    /// The newest modification time of any chain member (seconds since the epoch).
    pub fn modified_unix(&self) -> i64 {
        self.identity.iter().map(|i| i.3.div_euclid(1_000_000_000)).max().unwrap_or(0)
    }
}

impl Snapshot {
    pub fn vdisk(&self, name: &str) -> Option<&Arc<Vdisk>> {
        self.vdisks.iter().find(|v| v.name == name)
    }
    /// The default vdisk (NBD's empty export name, `/ipxe` without arguments): the first one.
    pub fn default_vdisk(&self) -> Option<&Arc<Vdisk>> {
        self.vdisks.first()
    }
    /// The vdisk's Linux boot (`[vdisk.linux]`), read from the configuration so that a reload
    /// that changes only these keys takes effect without reopening the image.
    pub fn linux(&self, vdisk: &str) -> Option<&LinuxBoot> {
        self.config.vdisk.iter().find(|v| v.name == vdisk)?.linux.as_ref()
    }
}

/// Parses TOML text into a Config, with errors naming the key, the value and the line
/// (`server.listen = "not-an-ip": not an IP address (line 2)`).
pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
    toml::from_str::<Config>(text).map_err(|e| {
        let why = locate::explain(e.message());
        let Some(span) = e.span() else {
            return ConfigError { file: file.to_path_buf(), key: String::new(), value: String::new(), why };
        };
        let (line, key, value) = locate::locate(text, span.start);
        match key {
            Some(key) => ConfigError { file: file.to_path_buf(), key, value, why: format!("{why} (line {line})") },
            None => {
                let before = &text[..span.start.min(text.len())];
                let col = span.start.min(text.len()) - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                ConfigError { file: file.to_path_buf(), key: format!("line {line}, column {col}"), value: String::new(), why }
            }
        }
    })
}

/// Reads, parses and validates a file into a snapshot with the given generation.
pub fn load(file: &Path, overrides: &Overrides, generation: u64, previous: Option<&Snapshot>) -> Result<Snapshot, ConfigError> {
    // Opened without blocking and only if it is a regular file: a FIFO here would hang the
    // control thread (no more reloads, SIGTERM ignored) or `config check`.
    let cannot = |why: String| ConfigError { file: file.to_path_buf(), key: String::new(), value: String::new(), why };
    let (mut f, _, _) = crate::image::open_readable(file, false).map_err(|e| cannot(e.replacen("cannot open", "cannot read", 1)))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut f, &mut text).map_err(|e| cannot(format!("cannot read: {e}")))?;
    from_text(file, &text, overrides, generation, previous)
}

/// Parses and validates the text of `file` (read by the caller) into a snapshot.
pub fn from_text(
    file: &Path,
    text: &str,
    overrides: &Overrides,
    generation: u64,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, ConfigError> {
    let mut config = parse(file, text)?;
    overrides.apply(&mut config);
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut snap = build(file, &base, config, generation, previous)?;
    snap.tables = text.parse::<toml::Table>().map(|t| t.keys().cloned().collect()).unwrap_or_default();
    Ok(snap)
}

/// The rules a reload must pass on top of validation, comparing with the running snapshot:
/// every key is optional, so a file cut short (an editor or a copy half done when SIGHUP or
/// the watcher fires) parses, and would silently serve defaults or no vdisks at all.
pub fn reload_rules(file: &Path, running: &Snapshot, next: &Snapshot) -> Result<(), ConfigError> {
    if !running.vdisks.is_empty() && next.vdisks.is_empty() && !next.config.server.reload_allow_no_vdisks {
        return Err(err(
            file,
            "vdisk",
            "none",
            format!(
                "the running configuration serves {} vdisk(s) and this file has no [[vdisk]] (a half-written file?); refused, targets keep their vdisks. To really remove every vdisk set server.reload_allow_no_vdisks = true, or restart",
                running.vdisks.len()
            ),
        ));
    }
    for t in &running.tables {
        if t != "vdisk" && !next.tables.contains(t) {
            return Err(err(
                file,
                t.as_str(),
                "missing",
                format!("the running file has a [{t}] table and this one has none (a half-written file?); refused. To go back to its defaults write an empty [{t}]"),
            ));
        }
    }
    Ok(())
}

fn err(file: &Path, key: impl Into<String>, value: impl fmt::Display, why: impl Into<String>) -> ConfigError {
    ConfigError { file: file.to_path_buf(), key: key.into(), value: value.to_string(), why: why.into() }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) && !s.starts_with('.')
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (a, p) = s.split_once('/')?;
    let addr: IpAddr = a.parse().ok()?;
    let prefix: u8 = p.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((addr, prefix))
}

/// (device, inode, size, mtime) of every chain member as it was opened (fstat of the file
/// mapped, not a later stat of the path, which may already name another file).
fn identity(chain: &Chain) -> Vec<(u64, u64, u64, i64)> {
    chain
        .layers
        .iter()
        .map(|l| {
            let id = l.file_id().or_else(|| crate::image::guard::FileId::at(&l.path)).unwrap_or_default();
            (id.dev, id.ino, id.size, id.mtime_ns)
        })
        .collect()
}

/// The files at the chain's paths are still the ones mapped, unchanged and not damaged: a
/// reload may keep the chain. Otherwise it is opened anew (never the old mapping re-read).
fn unchanged(v: &Vdisk) -> bool {
    !v.chain.damaged()
        && v.chain
            .layers
            .iter()
            .zip(&v.identity)
            .all(|(l, i)| crate::image::guard::FileId::at(&l.path).is_some_and(|n| (n.dev, n.ino, n.size, n.mtime_ns) == *i))
}

/// Validates a parsed configuration and builds the snapshot. `base` resolves relative paths.
pub fn build(file: &Path, base: &Path, mut c: Config, generation: u64, previous: Option<&Snapshot>) -> Result<Snapshot, ConfigError> {
    let s = &c.server;
    if !valid_name(&s.name) {
        return Err(err(file, "server.name", format!("{:?}", s.name), "must be 1-64 letters, digits, '.', '_' or '-'"));
    }
    for (k, v) in [("server.tftp_port", s.tftp_port), ("server.http_port", s.http_port), ("server.nbd_port", s.nbd_port)] {
        if v == 0 {
            return Err(err(file, k, v, "port 0 is not a usable port; pick a fixed one (clients must know it)"));
        }
    }
    if s.http_port == s.nbd_port {
        return Err(err(file, "server.nbd_port", s.nbd_port, "is the same TCP port as server.http_port"));
    }
    if s.iscsi_port != 0 && (s.iscsi_port == s.http_port || s.iscsi_port == s.nbd_port) {
        let other = if s.iscsi_port == s.http_port { "server.http_port" } else { "server.nbd_port" };
        return Err(err(file, "server.iscsi_port", s.iscsi_port, format!("is the same TCP port as {other} (0 turns iSCSI off)")));
    }
    if let Err((key, value, why)) = c.iscsi.validate() {
        return Err(err(file, key, value, why));
    }
    if s.workers > 1024 {
        return Err(err(file, "server.workers", s.workers, "at most 1024 workers (0 = one per core)"));
    }
    if s.reload_poll_ms == 0 || s.reload_poll_ms > 60_000 {
        return Err(err(file, "server.reload_poll_ms", s.reload_poll_ms, "must be between 1 and 60000"));
    }
    if let Err((key, value, why)) = c.pxe.validate() {
        return Err(err(file, key, value, why));
    }
    if let Err((key, value, why)) = c.console.validate() {
        return Err(err(file, key, value, why));
    }
    let t = &c.tftp;
    if t.root.as_os_str().is_empty() {
        // "" would resolve to the configuration's own folder and serve it over TFTP and HTTP.
        return Err(err(
            file,
            "tftp.root",
            "\"\"",
            "is empty; give the folder of the bootstrap files (\".\" for the configuration's folder)",
        ));
    }
    if !(8..=65464).contains(&t.blksize_max) {
        return Err(err(file, "tftp.blksize_max", t.blksize_max, "RFC 2348 allows block sizes from 8 to 65464"));
    }
    if t.windowsize_max == 0 {
        return Err(err(file, "tftp.windowsize_max", 0, "RFC 7440 allows window sizes from 1 to 65535"));
    }
    if t.timeout_ms == 0 || t.timeout_ms > 255_000 {
        return Err(err(file, "tftp.timeout_ms", t.timeout_ms, "must be between 1 and 255000 (RFC 2349 allows up to 255 s)"));
    }
    if t.timeout_min_ms == 0 || t.timeout_min_ms > t.timeout_ms {
        return Err(err(file, "tftp.timeout_min_ms", t.timeout_min_ms, "must be between 1 and tftp.timeout_ms"));
    }
    if t.retries_max == 0 || t.retries_max > 100 {
        return Err(err(file, "tftp.retries_max", t.retries_max, "must be between 1 and 100"));
    }
    if t.timeout_option_max_s == 0 || t.timeout_option_max_s > 255 {
        return Err(err(file, "tftp.timeout_option_max_s", t.timeout_option_max_s, "must be between 1 and 255 (RFC 2349's range)"));
    }
    if t.handshake_retries_max > t.retries_max {
        return Err(err(file, "tftp.handshake_retries_max", t.handshake_retries_max, "must be at most tftp.retries_max"));
    }
    if t.stall_max_ms < t.timeout_ms {
        return Err(err(file, "tftp.stall_max_ms", t.stall_max_ms, "must be at least tftp.timeout_ms (one retransmission timeout)"));
    }
    if t.transfer_lifetime_max_ms < t.stall_max_ms {
        return Err(err(file, "tftp.transfer_lifetime_max_ms", t.transfer_lifetime_max_ms, "must be at least tftp.stall_max_ms"));
    }
    let mut tftp_plain_subnets = Vec::new();
    for n in &t.plain_rrq_subnets {
        tftp_plain_subnets.push(parse_cidr(n).ok_or_else(|| {
            err(
                file,
                "tftp.plain_rrq_subnets",
                format!("{n:?}"),
                "is not a CIDR subnet such as \"10.0.0.0/8\" (\"0.0.0.0/0\" and \"::/0\": any)",
            )
        })?);
    }
    let nonzero = [
        ("tftp.sessions_max", t.sessions_max as u64),
        ("tftp.sessions_per_ip_max", t.sessions_per_ip_max as u64),
        ("tftp.requests_per_ip_per_s", t.requests_per_ip_per_s as u64),
        ("tftp.requests_per_ip_burst", t.requests_per_ip_burst as u64),
        ("http.request_line_bytes_max", c.http.request_line_bytes_max as u64),
        ("http.header_bytes_max", c.http.header_bytes_max as u64),
        ("http.headers_max", c.http.headers_max as u64),
        ("http.connections_max", c.http.connections_max as u64),
        ("http.connections_per_ip_max", c.http.connections_per_ip_max as u64),
        ("http.keepalive_idle_ms", c.http.keepalive_idle_ms),
        ("http.header_timeout_ms", c.http.header_timeout_ms),
        ("http.send_timeout_ms", c.http.send_timeout_ms),
        ("nbd.connections_max", c.nbd.connections_max as u64),
        ("nbd.connections_per_ip_max", c.nbd.connections_per_ip_max as u64),
        ("nbd.idle_evict_ms", c.nbd.idle_evict_ms),
        ("nbd.private_versions_max", c.nbd.private_versions_max as u64),
        ("nbd.token_ttl_ms", c.nbd.token_ttl_ms),
        ("nbd.queue_depth_max", c.nbd.queue_depth_max as u64),
        ("nbd.request_bytes_max", c.nbd.request_bytes_max as u64),
        ("nbd.cache_bytes_per_target_max", c.nbd.cache_bytes_per_target_max),
        ("nbd.cache_bytes_total_max", c.nbd.cache_bytes_total_max),
        ("nbd.cache_zero_ranges_per_target_max", c.nbd.cache_zero_ranges_per_target_max as u64),
        ("nbd.targets_per_address_max", c.nbd.targets_per_address_max as u64),
        ("nbd.send_timeout_ms", c.nbd.send_timeout_ms),
        ("nbd.handshake_timeout_ms", c.nbd.handshake_timeout_ms),
        ("farm.health_failures_max", c.farm.health_failures_max as u64),
        ("farm.health_successes_min", c.farm.health_successes_min as u64),
        ("farm.active_window_ms", c.farm.active_window_ms),
        ("farm.boot_window_ms", c.farm.boot_window_ms),
        ("farm.targets_max", c.farm.targets_max as u64),
        ("farm.targets_per_address_max", c.farm.targets_per_address_max as u64),
    ];
    if let Some((k, v)) = nonzero.iter().find(|(_, v)| *v == 0) {
        return Err(err(file, *k, v, "a limit of 0 would refuse every client; raise it"));
    }
    // Each worker names a session by a slab id in the 24 bits of an io_uring user_data.
    let ids = [
        ("tftp.sessions_max", t.sessions_max),
        ("http.connections_max", c.http.connections_max),
        ("nbd.connections_max", c.nbd.connections_max),
        ("iscsi.connections_max", c.iscsi.connections_max),
    ];
    if let Err((k, v)) = crate::engine::token::check_ids(&ids) {
        let max = crate::engine::token::ID_MAX;
        return Err(err(
            file,
            k,
            v,
            format!(
                "exceeds {max}, the most sessions a worker can name (a 24-bit id, half of it kept for connections still closing); lower it"
            ),
        ));
    }
    if c.http.header_bytes_max < c.http.request_line_bytes_max {
        return Err(err(file, "http.header_bytes_max", c.http.header_bytes_max, "must be at least http.request_line_bytes_max"));
    }
    if c.nbd.request_bytes_max < 4096 || !c.nbd.request_bytes_max.is_power_of_two() {
        return Err(err(file, "nbd.request_bytes_max", c.nbd.request_bytes_max, "must be a power of two of at least 4096"));
    }
    if c.nbd.reply_scratch_bytes_max < 4096 || c.nbd.reply_scratch_bytes_max > 1 << 30 {
        return Err(err(
            file,
            "nbd.reply_scratch_bytes_max",
            c.nbd.reply_scratch_bytes_max,
            "must be between 4096 (one cache block) and 1 GiB",
        ));
    }
    if c.nbd.cache_ram_bytes_per_target > c.nbd.cache_ram_bytes_total_max {
        return Err(err(file, "nbd.cache_ram_bytes_per_target", c.nbd.cache_ram_bytes_per_target, "exceeds nbd.cache_ram_bytes_total_max"));
    }
    if c.nbd.cache_ram_prefault_bytes > c.nbd.cache_ram_bytes_total_max {
        return Err(err(file, "nbd.cache_ram_prefault_bytes", c.nbd.cache_ram_prefault_bytes, "exceeds nbd.cache_ram_bytes_total_max"));
    }
    if c.nbd.cache_bytes_per_target_max > c.nbd.cache_bytes_total_max {
        return Err(err(file, "nbd.cache_bytes_per_target_max", c.nbd.cache_bytes_per_target_max, "exceeds nbd.cache_bytes_total_max"));
    }
    if c.image.chain_depth_max == 0 || c.image.chain_depth_max > 256 {
        return Err(err(file, "image.chain_depth_max", c.image.chain_depth_max, "must be between 1 and 256"));
    }
    let (lo, hi) = crate::image::guard::MAPPINGS_RANGE;
    if !(lo..=hi).contains(&c.image.mappings_max) {
        return Err(err(file, "image.mappings_max", c.image.mappings_max, format!("must be between {lo} and {hi}")));
    }
    // Before the first image is mapped; later values wait for a restart.
    crate::image::guard::set_mappings_max(c.image.mappings_max);
    if !(0.0..=10.0).contains(&c.farm.load_epsilon) {
        return Err(err(file, "farm.load_epsilon", c.farm.load_epsilon, "must be between 0 and 10"));
    }
    if c.farm.health_timeout_ms == 0 || c.farm.health_timeout_ms > c.farm.health_interval_ms {
        return Err(err(file, "farm.health_timeout_ms", c.farm.health_timeout_ms, "must be non-zero and at most farm.health_interval_ms"));
    }

    // Paths: relative to the config file, canonical, checked.
    let root = base.join(&c.tftp.root);
    let tftp_root = std::fs::canonicalize(&root).map_err(|e| err(file, "tftp.root", root.display(), format!("cannot be used: {e}")))?;
    if !tftp_root.is_dir() {
        return Err(err(file, "tftp.root", tftp_root.display(), "is not a directory"));
    }
    c.tftp.root = tftp_root.clone();
    c.nbd.cache_dir = base.join(&c.nbd.cache_dir);
    if let Ok(m) = std::fs::metadata(&c.nbd.cache_dir) {
        if !m.is_dir() {
            return Err(err(file, "nbd.cache_dir", c.nbd.cache_dir.display(), "is not a directory (write-cache overflow files go there)"));
        }
    }
    if let Some(d) = c.nbd.trace_dir.as_mut() {
        *d = base.join(&*d);
        if !d.is_dir() {
            return Err(err(file, "nbd.trace_dir", d.display(), "is not a directory (create it: NBD traces are written there)"));
        }
    }
    if c.nbd.trace_bytes_max < 4096 || c.nbd.trace_queue_bytes_max < crate::nbd::trace::CHUNK_BYTES as u64 {
        let (k, v) = if c.nbd.trace_bytes_max < 4096 {
            ("nbd.trace_bytes_max", c.nbd.trace_bytes_max)
        } else {
            ("nbd.trace_queue_bytes_max", c.nbd.trace_queue_bytes_max)
        };
        return Err(err(file, k, v, "must be at least 4096 (trace_bytes_max) and 65536 (trace_queue_bytes_max: one chunk)"));
    }
    if let Some(k) = c.farm.token_key_file.as_mut() {
        *k = base.join(&*k);
        // Read without blocking, regular files only (a FIFO here would hang a reload).
        let read = crate::image::open_readable(k, false).and_then(|(mut f, _, _)| {
            let mut d = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut d).map(|_| d).map_err(|e| format!("cannot read: {e}"))
        });
        match read {
            Ok(d) if d.len() >= 16 => {}
            Ok(d) => {
                return Err(err(
                    file,
                    "farm.token_key_file",
                    k.display(),
                    format!("holds {} bytes; it needs at least 16 random bytes", d.len()),
                ))
            }
            Err(e) => return Err(err(file, "farm.token_key_file", k.display(), e)),
        }
    }

    let iscsi_chap_secret = match c.iscsi.chap_secret_file.as_mut() {
        None => None,
        Some(k) => {
            *k = base.join(&*k);
            Some(read_chap_secret(file, k)?)
        }
    };

    let limits = ChainLimits { depth_max: c.image.chain_depth_max };
    let mut vdisks: Vec<Arc<Vdisk>> = Vec::new();
    for (i, v) in c.vdisk.iter_mut().enumerate() {
        let key = |k: &str| format!("vdisk[{i}].{k}");
        if !valid_name(&v.name) {
            return Err(err(
                file,
                key("name"),
                format!("{:?}", v.name),
                "must be 1-64 letters, digits, '.', '_' or '-' (it is a URL path and an NBD export name)",
            ));
        }
        if vdisks.iter().any(|o| o.name == v.name) {
            return Err(err(file, key("name"), format!("{:?}", v.name), "is used by an earlier [[vdisk]]; names must be unique"));
        }
        if c.server.iscsi_port != 0 && !iscsi::valid_suffix(&v.name) {
            return Err(err(
                file,
                key("name"),
                format!("{:?}", v.name),
                format!(
                    "is served over iSCSI as {}:{}, and an IQN allows only lowercase letters, digits, '.' and '-'; rename the vdisk or set server.iscsi_port = 0",
                    c.iscsi.iqn_prefix, v.name
                ),
            ));
        }
        if c.iscsi.target_iqn(&v.name).len() > iscsi::IQN_BYTES_MAX && c.server.iscsi_port != 0 {
            return Err(err(file, key("name"), format!("{:?}", v.name), "with iscsi.iqn_prefix it makes an IQN longer than 223 bytes"));
        }
        if let Some(l) = &v.linux {
            l.validate().map_err(|(k, value, why)| err(file, key(&format!("linux.{k}")), value, why))?;
        }
        let p = base.join(&v.path);
        let path = std::fs::canonicalize(&p).map_err(|e| err(file, key("path"), p.display(), format!("cannot be used: {e}")))?;
        v.path = path.clone();
        let reused = previous.and_then(|prev| prev.vdisk(&v.name)).filter(|old| old.path == path && old.mode == v.mode && unchanged(old));
        let vd = match reused {
            Some(old) => old.clone(),
            None => {
                let chain = Chain::open(&path, limits).map_err(|e| err(file, key("path"), path.display(), e.to_string()))?;
                if v.mode == Mode::Private && !(chain.top().format.is_vhd() || chain.top().format.is_vhdx()) {
                    return Err(err(
                        file,
                        key("mode"),
                        "\"private\"",
                        "needs a VHD or VHDX image (writes go into a new differencing version); convert with `bootfarm vdisk merge RAW -o BASE.vhdx`",
                    ));
                }
                let identity = identity(&chain);
                Arc::new(Vdisk { name: v.name.clone(), mode: v.mode, path, chain, identity })
            }
        };
        vdisks.push(vd);
    }

    let mut farm: Vec<FarmMember> = Vec::new();
    for (i, s) in c.farm.server.iter().enumerate() {
        let key = |k: &str| format!("farm.server[{i}].{k}");
        if !valid_name(&s.name) {
            return Err(err(file, key("name"), format!("{:?}", s.name), "must be 1-64 letters, digits, '.', '_' or '-'"));
        }
        if farm.iter().any(|f| f.name == s.name) {
            return Err(err(file, key("name"), format!("{:?}", s.name), "is listed twice in [[farm.server]]"));
        }
        let port = s.http_port.unwrap_or(c.server.http_port);
        if farm.iter().any(|f| f.address == s.address && f.http_port == port) {
            return Err(err(file, key("address"), s.address, "another farm server already uses this address and HTTP port"));
        }
        if !s.power.is_finite() || s.power <= 0.0 || s.power > 1000.0 {
            return Err(err(file, key("power"), s.power, "must be a positive weight, at most 1000"));
        }
        let mut subnets = Vec::new();
        for n in &s.subnets {
            subnets.push(
                parse_cidr(n).ok_or_else(|| err(file, key("subnets"), format!("{n:?}"), "is not a CIDR subnet such as \"10.1.0.0/16\""))?,
            );
        }
        for v in &s.vdisks {
            if !c.vdisk.iter().any(|d| &d.name == v) {
                return Err(err(file, key("vdisks"), format!("{v:?}"), "names no [[vdisk]] of this file"));
            }
        }
        farm.push(FarmMember {
            name: s.name.clone(),
            address: s.address,
            power: s.power,
            subnets,
            vdisks: s.vdisks.clone(),
            max_booting: s.max_booting,
            http_port: port,
        });
    }
    if !farm.is_empty() && !farm.iter().any(|f| f.name == c.server.name) {
        return Err(err(
            file,
            "server.name",
            format!("{:?}", c.server.name),
            "is not one of the [[farm.server]] names; a node must be in its own farm",
        ));
    }
    if farm.is_empty() {
        farm.push(FarmMember {
            name: c.server.name.clone(),
            address: c.server.listen,
            power: 1.0,
            subnets: Vec::new(),
            vdisks: Vec::new(),
            max_booting: 0,
            http_port: c.server.http_port,
        });
    }
    Ok(Snapshot {
        generation,
        source: Some(file.to_path_buf()),
        loaded_at: SystemTime::now(),
        config: c,
        tftp_root,
        tftp_plain_subnets,
        vdisks,
        farm,
        tables: Vec::new(),
        iscsi_chap_secret,
    })
}

/// The CHAP secret in `path` (without a trailing newline), read without blocking.
fn read_chap_secret(file: &Path, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let key = "iscsi.chap_secret_file";
    let mut d = crate::image::open_readable(path, false)
        .and_then(|(mut f, _, _)| {
            let mut d = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut d).map(|_| d).map_err(|e| format!("cannot read: {e}"))
        })
        .map_err(|e| err(file, key, path.display(), e))?;
    while d.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
        d.pop();
    }
    if !(iscsi::CHAP_SECRET_MIN..=iscsi::CHAP_SECRET_MAX).contains(&d.len()) {
        return Err(err(
            file,
            key,
            path.display(),
            format!(
                "holds {} bytes; a CHAP secret needs {} to {} (RFC 7143 12.1.3; e.g. head -c 16 /dev/urandom | base64)",
                d.len(),
                iscsi::CHAP_SECRET_MIN,
                iscsi::CHAP_SECRET_MAX
            ),
        ));
    }
    Ok(d)
}

/// The published snapshot and its reload statistics.
pub struct Store {
    current: ArcSwap<Snapshot>,
    next_generation: AtomicU64,
    /// The control plane's counters (reloads); workers have their own blocks.
    pub counters: WorkerCounters,
}

impl Store {
    pub fn new(first: Snapshot) -> Store {
        let next = first.generation + 1;
        Store { current: ArcSwap::from_pointee(first), next_generation: AtomicU64::new(next), counters: WorkerCounters::default() }
    }

    /// One atomic load; keep the Arc for as long as a transfer runs.
    #[inline]
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Publishes a fully built snapshot with one store.
    pub fn publish(&self, s: Snapshot) {
        self.current.store(Arc::new(s));
    }

    /// Rebuilds from `file`; on success publishes and returns the new generation, otherwise
    /// keeps the current snapshot and returns the error. Generations count published snapshots
    /// only (a refused file takes no number). One control thread calls this.
    pub fn reload(&self, file: &Path, overrides: &Overrides) -> Result<u64, ConfigError> {
        match std::fs::read_to_string(file) {
            Ok(text) => self.reload_text(file, &text, overrides),
            Err(e) => {
                self.counters.add(Counter::ConfigReloadsFailed, 1);
                Err(err(file, "", "", format!("cannot read: {e}")))
            }
        }
    }

    /// As [`Store::reload`], from the file's text as the caller read it (the control thread
    /// reads it only once it has stood still). The new snapshot must also pass
    /// [`reload_rules`] against the running one.
    pub fn reload_text(&self, file: &Path, text: &str, overrides: &Overrides) -> Result<u64, ConfigError> {
        let prev = self.load();
        let g = self.next_generation.load(Ordering::Relaxed);
        match from_text(file, text, overrides, g, Some(&prev)).and_then(|s| reload_rules(file, &prev, &s).map(|()| s)) {
            Ok(s) => {
                self.next_generation.store(g + 1, Ordering::Relaxed);
                self.publish(s);
                self.counters.add(Counter::ConfigReloadsOk, 1);
                Ok(g)
            }
            Err(e) => {
                self.counters.add(Counter::ConfigReloadsFailed, 1);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A limit the engine's token cannot encode is refused with its key; the largest that it
    /// can is accepted (the check runs before any path of the file is looked at).
    #[test]
    fn a_limit_past_the_session_id_width_is_refused_by_name() {
        let max = crate::engine::token::ID_MAX;
        let file = Path::new("/nonexistent/bootfarm.toml");
        for (table, key) in
            [("tftp", "sessions_max"), ("http", "connections_max"), ("nbd", "connections_max"), ("iscsi", "connections_max")]
        {
            let text = format!("[{table}]\n{key} = {}\n", max + 1);
            let e = from_text(file, &text, &Overrides::default(), 1, None).err().expect("refused");
            assert_eq!(e.key, format!("{table}.{key}"), "{e}");
            assert!(e.to_string().contains(&max.to_string()), "{e}");
            // At the edge the id check passes: what may fail next is the default tftp.root,
            // which exists where the package is installed (tests/package.rs installs it).
            let text = format!("[{table}]\n{key} = {max}\n");
            if let Err(e) = from_text(file, &text, &Overrides::default(), 1, None) {
                assert_ne!(e.key, format!("{table}.{key}"), "{e}");
            }
        }
    }
}
