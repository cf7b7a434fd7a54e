//! The HTTP service's routes: what to answer to a parsed request, as a status, a header block
//! written into the connection's reusable buffer, and a body that points at bytes where they
//! live (a file mapping, a vDisk chain) or, for small generated pages, owns them.
//!
//! Routes: /boot/<path> (files under tftp.root), /vdisk/<name> (the virtual disk, raw, with
//! ranges: what iPXE `sanboot` reads), /ipxe (a generated iPXE script: sanboot over HTTP or
//! iSCSI, or a Linux kernel), /metrics, /healthz,
//! /api/status, and the operator's console: / (its page), /api/events (the status as a stream
//! of server-sent events), POST /api/drain, /api/resume and /api/targets/<id>/disconnect
//! (with the configured token).
//! Multi-range requests get the whole representation (200), as RFC 9110 allows.

pub mod conn;
pub mod console;
pub mod iscsi;
pub mod linux;
pub mod wire;

use crate::config::{Snapshot, Vdisk};
use crate::image::Backing;
use std::io::Write;
use std::sync::Arc;
use wire::{Range, Request};

pub enum Body {
    Empty,
    Owned(Vec<u8>),
    File {
        data: Arc<Backing>,
        start: u64,
        len: u64,
    },
    Vdisk {
        vdisk: Arc<Vdisk>,
        start: u64,
        len: u64,
    },
    /// An event stream (`/api/events`): after the header, the connection sends an event every
    /// `console.event_interval_ms` until the client leaves or the node drains. The route took
    /// an event-stream slot for it; the connection gives it back when it closes.
    Events,
    /// No answer yet: the route waits for a bootstrap file being opened (nothing was written).
    /// The connection asks again, with the same request, once its context wakes it.
    Wait,
}

impl Body {
    pub fn len(&self) -> u64 {
        match self {
            Body::Empty | Body::Wait | Body::Events => 0,
            Body::Owned(v) => v.len() as u64,
            Body::File { len, .. } | Body::Vdisk { len, .. } => *len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the routes need from the engine.
pub trait Env {
    fn snapshot(&self) -> &Arc<Snapshot>;
    fn draining(&self) -> bool;
    fn now_unix(&self) -> i64;
    fn metrics(&self) -> String;
    fn sessions(&self) -> (u64, u64);
    /// The file a /boot request names (as sent, percent-decoded) under tftp.root: its
    /// mapping, with (inode, mtime seconds) for validators; None while it is being opened
    /// (the context wakes the connection when it is).
    #[allow(clippy::type_complexity)]
    fn file(&mut self, name: &[u8]) -> Result<Option<(Arc<Backing>, u64, i64)>, crate::bootfiles::Refused>;
    fn client_ip(&self) -> std::net::IpAddr;
    /// This node's `/healthz` report.
    fn farm_health(&self) -> crate::farm::Health;
    /// The farm's server order (indices into the snapshot's farm) for this client.
    fn farm_place(&self, vdisk: &str, target: &str) -> Vec<usize>;
    /// Counts `target` as active on `vdisk` here.
    fn farm_touch(&self, vdisk: &str, target: &str);
    fn farm_status_json(&self) -> String;
    /// Counts a request refused because its file or vdisk image changed in place.
    fn count_damaged(&self);
    /// The live members of /api/status ([`console::live_json`]): this node's targets, recent
    /// boots, counter totals.
    fn console_json(&self) -> String;
    /// Takes one of the node's `console.events_max` event-stream slots; false when none is free.
    fn events_acquire(&self) -> bool;
    fn events_release(&self);
    /// The console's drain (true) or resume (false), its token already checked.
    fn set_drained(&self, drained: bool);
    /// An operator's disconnect of NBD target `id`, its token already checked: its
    /// connections are cut, its cache kept ([`crate::nbd::target::Registry::disconnect`]).
    /// Returns (vdisk, connections) of each target hit. An environment without NBD targets
    /// has none to hit.
    fn nbd_disconnect(&self, _id: &str) -> Vec<(String, usize)> {
        Vec::new()
    }
}

/// The status document of `/api/status` and of each event.
pub fn status_body(env: &dyn Env) -> String {
    status_json(env.snapshot(), env.draining(), env.sessions(), &env.farm_status_json(), &env.console_json())
}

/// The one-line reason a damaged vdisk or bootstrap file is refused with (image::guard).
pub const DAMAGED: &str =
    "the file changed on the server while it was served (copied over or truncated); it is refused until the administrator replaces it";

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        403 => "Forbidden",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

/// A response's header block as it is written, and its status (set by [`head`], which every
/// response starts with): the caller learns the status without reading the bytes back.
pub struct Head<'a> {
    buf: &'a mut Vec<u8>,
    pub status: u16,
}

impl<'a> Head<'a> {
    /// Writes into `buf` (cleared by [`head`]).
    pub fn new(buf: &'a mut Vec<u8>) -> Head<'a> {
        Head { buf, status: 0 }
    }
}

impl std::ops::Deref for Head<'_> {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        self.buf
    }
}

impl std::ops::DerefMut for Head<'_> {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        self.buf
    }
}

/// Starts a header block: status line, Server, Date, Connection.
pub fn head(out: &mut Head, status: u16, keep_alive: bool, minor: u8, now_unix: i64) {
    out.clear();
    out.status = status;
    let _ = write!(out, "HTTP/1.1 {status} {}\r\nServer: bootfarm\r\nDate: ", reason(status));
    wire::format_date(now_unix, out);
    out.extend_from_slice(b"\r\n");
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if minor == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
}

/// A complete small response (errors, status pages). Returns the body.
#[allow(clippy::too_many_arguments)] // the fields of one status line and its headers, each a plain value
pub fn simple(
    out: &mut Head,
    status: u16,
    keep_alive: bool,
    minor: u8,
    now_unix: i64,
    content_type: &str,
    body: Vec<u8>,
    head_only: bool,
) -> Body {
    head(out, status, keep_alive, minor, now_unix);
    let _ = write!(out, "Content-Type: {content_type}\r\nContent-Length: {}\r\n", body.len());
    if status == 405 {
        out.extend_from_slice(b"Allow: GET, HEAD\r\n");
    }
    if status == 503 {
        out.extend_from_slice(b"Retry-After: 5\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if head_only {
        Body::Empty
    } else {
        Body::Owned(body)
    }
}

/// The whole answer to a connection refused at a connection limit (before any request was
/// read): a 503 that closes, header and body in `out`.
pub fn refused_at_limit(out: &mut Vec<u8>) {
    let body = error_page(&mut Head::new(out), 503, false, 1, 0, "too many connections, retry later");
    if let Body::Owned(b) = body {
        out.extend_from_slice(&b);
    }
}

pub fn error_page(out: &mut Head, status: u16, keep_alive: bool, minor: u8, now_unix: i64, detail: &str) -> Body {
    let body = format!("{status} {}: {detail}\n", reason(status)).into_bytes();
    simple(out, status, keep_alive, minor, now_unix, "text/plain; charset=utf-8", body, false)
}

/// An entity tag, formatted on the stack (no allocation per request).
struct Tag {
    buf: [u8; 64],
    len: usize,
}

impl Tag {
    fn new(args: std::fmt::Arguments) -> Tag {
        let mut t = Tag { buf: [0; 64], len: 0 };
        let mut c = std::io::Cursor::new(&mut t.buf[..]);
        let _ = c.write_fmt(args);
        t.len = c.position() as usize;
        t
    }
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

struct Validators {
    etag: Tag,
    last_modified: i64,
}

/// 304 when the client's copy is current (If-None-Match first, then If-Modified-Since).
fn not_modified(req: &Request, v: &Validators) -> bool {
    if let Some(inm) = req.if_none_match {
        return inm.split(|&c| c == b',').any(|t| {
            let t = t.trim_ascii();
            t == b"*" || t.strip_prefix(b"W/").unwrap_or(t) == v.etag.as_bytes()
        });
    }
    req.if_modified_since.and_then(wire::parse_date).is_some_and(|since| v.last_modified <= since)
}

/// Range handling shared by files and vDisks; returns (status, start, len, content-range size).
fn ranged(req: &Request, size: u64, v: &Validators) -> (u16, u64, u64) {
    let range_applies = match req.if_range {
        None => true,
        Some(ir) => ir == v.etag.as_bytes() || wire::parse_date(ir).is_some_and(|d| d >= v.last_modified),
    };
    match req.range.filter(|_| range_applies).map(|r| wire::parse_range(r, size)) {
        None | Some(Range::Full) | Some(Range::Multiple) => (200, 0, size),
        Some(Range::Single(a, b)) => (206, a, b - a + 1),
        Some(Range::Unsatisfiable) => (416, 0, 0),
    }
}

fn representation(out: &mut Head, req: &Request, now: i64, size: u64, v: &Validators, content_type: &str) -> Option<(u64, u64)> {
    let (status, start, len) = if not_modified(req, v) { (304, 0, 0) } else { ranged(req, size, v) };
    head(out, status, req.keep_alive, req.minor, now);
    out.extend_from_slice(b"Accept-Ranges: bytes\r\nETag: ");
    out.extend_from_slice(v.etag.as_bytes());
    out.extend_from_slice(b"\r\nLast-Modified: ");
    wire::format_date(v.last_modified, out);
    out.extend_from_slice(b"\r\n");
    match status {
        304 => {
            out.extend_from_slice(b"\r\n");
            None
        }
        416 => {
            let _ = write!(out, "Content-Range: bytes */{size}\r\nContent-Length: 0\r\n\r\n");
            None
        }
        _ => {
            let _ = write!(out, "Content-Type: {content_type}\r\nContent-Length: {len}\r\n");
            if status == 206 {
                let _ = write!(out, "Content-Range: bytes {start}-{}/{size}\r\n", start + len - 1);
            }
            out.extend_from_slice(b"\r\n");
            (!req.head && len > 0).then_some((start, len))
        }
    }
}

fn query<'a>(q: &'a str, key: &str) -> Option<&'a str> {
    q.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

fn vdisk_validators(v: &Vdisk) -> Validators {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for l in &v.chain.layers {
        for b in l.id.iter().chain(&l.file_len().to_le_bytes()) {
            h = (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let last_modified = v.modified_unix();
    for b in last_modified.to_le_bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    Validators { etag: Tag::new(format_args!("\"{h:016x}\"")), last_modified }
}

/// Answers one request: writes the header block into `out` (its status in `out.status`) and
/// returns the body.
pub fn respond(req: &Request, env: &mut dyn Env, out: &mut Head) -> Body {
    let now = env.now_unix();
    let (ka, minor, head_only) = (req.keep_alive, req.minor, req.head);
    let Some(target) = wire::percent_decode(req.target) else {
        return error_page(out, 400, ka, minor, now, "malformed percent-encoding");
    };
    let (path, q) = target.split_once('?').unwrap_or((target.as_ref(), ""));
    let snap = env.snapshot().clone();
    if req.post {
        return action(req, env, &snap, path, out);
    }
    if let Some(rest) = path.strip_prefix("/boot/") {
        let vdisk = query(q, "vdisk").or(snap.default_vdisk().map(|v| v.name.as_str())).unwrap_or("");
        if let Some(b) = redirect(req, env, &snap, q, vdisk, out) {
            return b;
        }
        use crate::bootfiles::Refused;
        let (data, ino, mtime) = match env.file(rest.as_bytes()) {
            Ok(Some(f)) => f,
            Ok(None) => return Body::Wait,
            Err(Refused::NotFound) => return error_page(out, 404, ka, minor, now, "no such bootstrap file"),
            Err(Refused::Unreadable) => return error_page(out, 404, ka, minor, now, "file not readable"),
            Err(Refused::Damaged) => {
                env.count_damaged();
                return error_page(out, 503, ka, minor, now, DAMAGED);
            }
            Err(Refused::BadName | Refused::Traversal | Refused::Outside) => {
                return error_page(out, 404, ka, minor, now, "not a file under the boot root")
            }
        };
        if data.damaged() {
            env.count_damaged();
            return error_page(out, 503, ka, minor, now, DAMAGED);
        }
        let size = data.bytes().len() as u64;
        let v = Validators { etag: Tag::new(format_args!("\"{ino:x}-{size:x}-{mtime:x}\"")), last_modified: mtime };
        return match representation(out, req, now, size, &v, "application/octet-stream") {
            Some((start, len)) => Body::File { data, start, len },
            None => Body::Empty,
        };
    }
    if let Some(name) = path.strip_prefix("/vdisk/") {
        let Some(vd) = snap.vdisk(name) else {
            return error_page(out, 404, ka, minor, now, "no such vdisk");
        };
        if vd.damaged() {
            env.count_damaged();
            return error_page(out, 503, ka, minor, now, DAMAGED);
        }
        if let Some(b) = redirect(req, env, &snap, q, name, out) {
            return b;
        }
        env.farm_touch(name, &crate::farm::target_key(query(q, "mac"), env.client_ip()));
        let v = vdisk_validators(vd);
        return match representation(out, req, now, vd.chain.virtual_size(), &v, "application/octet-stream") {
            Some((start, len)) => Body::Vdisk { vdisk: vd.clone(), start, len },
            None => Body::Empty,
        };
    }
    match path {
        "/healthz" => {
            // 200 "ok" or 503 "draining", then the figures peers balance on (see farm::Health).
            let h = env.farm_health().render().into_bytes();
            if env.draining() {
                simple(out, 503, false, minor, now, "text/plain", h, head_only)
            } else {
                simple(out, 200, ka, minor, now, "text/plain", h, head_only)
            }
        }
        "/metrics" => simple(out, 200, ka, minor, now, "text/plain; version=0.0.4", env.metrics().into_bytes(), head_only),
        "/api/status" => {
            let body = status_body(env).into_bytes();
            head(out, 200, ka, minor, now);
            // Read-only and the same for everyone: the console of one node reads the others'.
            let _ = write!(
                out,
                "Content-Type: application/json\r\nCache-Control: no-store\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            if head_only {
                Body::Empty
            } else {
                Body::Owned(body)
            }
        }
        "/api/events" => {
            if head_only {
                return simple(out, 200, ka, minor, now, "text/event-stream", Vec::new(), true);
            }
            if env.draining() || !env.events_acquire() {
                let why = "too many console event streams (console.events_max), or the node is draining; retry later";
                return error_page(out, 503, ka, minor, now, why);
            }
            // No length: the stream ends with the connection.
            head(out, 200, false, minor, now);
            let _ = write!(
                out,
                "Content-Type: text/event-stream\r\nCache-Control: no-store\r\nAccess-Control-Allow-Origin: *\r\nX-Accel-Buffering: no\r\n\r\nretry: {}\n\n",
                console::RETRY_MS
            );
            Body::Events
        }
        "/" | "/index.html" => simple(out, 200, ka, minor, now, "text/html; charset=utf-8", console::INDEX_HTML.into(), head_only),
        "/console.js" => simple(out, 200, ka, minor, now, "text/javascript; charset=utf-8", console::CONSOLE_JS.into(), head_only),
        "/console.css" => simple(out, 200, ka, minor, now, "text/css; charset=utf-8", console::CONSOLE_CSS.into(), head_only),
        "/ipxe" => {
            let vd = match query(q, "vdisk") {
                Some(n) => snap.vdisk(n),
                None => snap.default_vdisk(),
            };
            let Some(vd) = vd else {
                return error_page(out, 404, ka, minor, now, "no such vdisk (and no default vdisk configured)");
            };
            let host =
                req.host.and_then(|h| std::str::from_utf8(h).ok()).filter(|h| !h.is_empty() && h.bytes().all(|c| c.is_ascii_graphic()));
            let mac = query(q, "mac");
            let order =
                if snap.farm.len() > 1 { env.farm_place(&vd.name, &crate::farm::target_key(mac, env.client_ip())) } else { vec![0] };
            if order.is_empty() {
                return error_page(
                    out,
                    503,
                    ka,
                    minor,
                    now,
                    "no farm server can serve this vdisk to this client now (all down, or none for its subnet)",
                );
            }
            // The target's boot token, bound to its MAC, this client address and the vdisk:
            // the NBD export name a Linux initramfs uses to reach its own write cache.
            let token = mac.and_then(crate::nbd::token::parse_mac).map(|m| {
                use crate::nbd::token;
                let key = token::key(snap.config.farm.token_key_file.as_deref());
                let expires = (env.now_unix().max(0) as u64 + snap.config.nbd.token_ttl_ms / 1000).min(u32::MAX as u64) as u32;
                token::issue(&key, token::random16(), expires, m, env.client_ip(), &vd.name)
            });
            let mut script = match snap.linux(&vd.name) {
                Some(lb) => {
                    let export = linux::nbd_export(&vd.name, lb.cache, token.as_deref());
                    linux::linux_script(&snap, vd, lb, host, &clean_mac(mac), &order, &export)
                }
                None if sanboot_iscsi(&snap, &vd.name) => {
                    let initiator = token.as_deref().and_then(|t| {
                        let m = crate::nbd::token::parse_mac(mac?)?;
                        crate::iscsi::boot::initiator_iqn(&snap.config.iscsi.iqn_prefix, m, t)
                    });
                    iscsi::iscsi_script(&snap, vd, host, &clean_mac(mac), &order, initiator.as_deref())
                }
                None => ipxe_script(&snap, vd, host, mac, &order),
            };
            if let Some(t) = &token {
                script = script.replacen('\n', &format!("\nset bootfarm-token {t}\nset bootfarm-nbd-export {}@{t}\n", vd.name), 1);
            }
            simple(out, 200, ka, minor, now, "text/plain; charset=utf-8", script.into_bytes(), head_only)
        }
        _ => error_page(
            out,
            404,
            ka,
            minor,
            now,
            "no such route (try /, /boot/<file>, /vdisk/<name>, /ipxe, /metrics, /healthz, /api/status)",
        ),
    }
}

/// POST /api/drain, /api/resume or /api/targets/<id>/disconnect: allowed only with `console.token` configured and named in
/// `Authorization: Bearer`; 403 otherwise (the console is read-only by default).
fn action(req: &Request, env: &mut dyn Env, snap: &Snapshot, path: &str, out: &mut Head) -> Body {
    let (ka, minor, now) = (req.keep_alive, req.minor, env.now_unix());
    let Some(token) = snap.config.console.token.as_deref() else {
        return error_page(out, 403, ka, minor, now, "the console is read-only: set console.token in the configuration to allow actions");
    };
    if !console::token_ok(token, req.authorization) {
        return error_page(out, 403, ka, minor, now, "missing or wrong token (send Authorization: Bearer <console.token>)");
    }
    if let Some(id) = path.strip_prefix(wire::TARGET_ACTION.0).and_then(|r| r.strip_suffix(wire::TARGET_ACTION.1)) {
        let hit = env.nbd_disconnect(id);
        let conns: usize = hit.iter().map(|(_, n)| n).sum();
        tracing::info!(node = %snap.config.server.name, client = %env.client_ip(), target = %id, connections = conns, "console action: disconnect");
        if hit.is_empty() {
            return error_page(out, 404, ka, minor, now, "no NBD target with that id has a connection on this node (see /api/status)");
        }
        let vdisks: Vec<String> = hit.iter().map(|(v, _)| json_str(v)).collect();
        let body = format!(
            "{{\"node\": {}, \"target\": {}, \"vdisks\": [{}], \"connections\": {conns}}}\n",
            json_str(&snap.config.server.name),
            json_str(id),
            vdisks.join(", ")
        );
        return simple(out, 200, ka, minor, now, "application/json", body.into_bytes(), false);
    }
    let drained = path == "/api/drain";
    env.set_drained(drained);
    tracing::info!(node = %snap.config.server.name, client = %env.client_ip(), drained, "console action: {path}");
    let body = format!("{{\"node\": {}, \"drained\": {drained}}}\n", json_str(&snap.config.server.name)).into_bytes();
    simple(out, 200, ka, minor, now, "application/json", body, false)
}

/// In a farm, a request for a vdisk (or a bootstrap) that reaches a server other than the first
/// of the target's list is sent there with 307, marked `via=` so that the server it lands on
/// serves it whatever its own view says (one hop at most, never a loop). Served here when this
/// node is first, or when no other server is up (the list then starts with this one).
fn redirect(req: &Request, env: &mut dyn Env, snap: &Snapshot, q: &str, vdisk: &str, out: &mut Head) -> Option<Body> {
    if snap.farm.len() < 2 || vdisk.is_empty() || query(q, "via").is_some() {
        return None;
    }
    let order = env.farm_place(vdisk, &crate::farm::target_key(query(q, "mac"), env.client_ip()));
    let m = &snap.farm[*order.first()?];
    if m.name == snap.config.server.name {
        return None;
    }
    let target = std::str::from_utf8(req.target).ok()?;
    let sep = if target.contains('?') { '&' } else { '?' };
    let location = format!("http://{}{target}{sep}via={}", host_port(m.address, m.http_port), snap.config.server.name);
    let now = env.now_unix();
    head(out, 307, req.keep_alive, req.minor, now);
    let _ = write!(out, "Location: {location}\r\nContent-Length: 0\r\n\r\n");
    Some(Body::Empty)
}

/// The vdisk boots over iSCSI (`sanboot = "iscsi"` and the target is on).
fn sanboot_iscsi(snap: &Snapshot, vdisk: &str) -> bool {
    snap.config.server.iscsi_port != 0 && snap.config.vdisk.iter().any(|v| v.name == vdisk && v.sanboot == crate::config::Sanboot::Iscsi)
}

/// The `?mac=` value as scripts may repeat it: hex digits and separators only.
fn clean_mac(mac: Option<&str>) -> String {
    mac.unwrap_or("").chars().filter(|c| c.is_ascii_hexdigit() || *c == ':' || *c == '-').take(32).collect()
}

fn host_port(a: std::net::IpAddr, port: u16) -> String {
    match a {
        std::net::IpAddr::V6(a) => format!("[{a}]:{port}"),
        a => format!("{a}:{port}"),
    }
}

/// The iPXE script: `sanboot` with the farm's server list for this target as multipath URIs,
/// in failover order (this node as the client reached it, the others by address). The URIs
/// carry the target's MAC so every server places it the same way.
pub fn ipxe_script(snap: &Snapshot, vd: &Vdisk, host: Option<&str>, mac: Option<&str>, order: &[usize]) -> String {
    let me = &snap.config.server;
    let mac = clean_mac(mac);
    let q = if mac.is_empty() { String::new() } else { format!("?mac={mac}") };
    let uris: Vec<String> = order
        .iter()
        .map(|&i| {
            let s = &snap.farm[i];
            let hp = match host {
                Some(h) if s.name == me.name => h.to_string(),
                _ => host_port(s.address, s.http_port),
            };
            format!("http://{hp}/vdisk/{}{q}", vd.name)
        })
        .collect();
    let order_names: Vec<&str> = order.iter().map(|&i| snap.farm[i].name.as_str()).collect();
    format!(
        "#!ipxe\n# bootfarm node {} (configuration generation {}): vdisk {} for target {}\n# servers in failover order: {}\necho bootfarm: booting vdisk {} ({} bytes)\nsanboot {} || goto failed\n:failed\necho bootfarm: sanboot failed, no server answered\nshell\n",
        me.name,
        snap.generation,
        vd.name,
        if mac.is_empty() { "unknown" } else { &mac },
        order_names.join(" "),
        vd.name,
        vd.chain.virtual_size(),
        uris.join(" ")
    )
}

pub(crate) fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

pub fn status_json(snap: &Snapshot, draining: bool, (tftp, http): (u64, u64), farm: &str, live: &str) -> String {
    let vdisks: Vec<String> = snap
        .vdisks
        .iter()
        .map(|v| {
            let chain: Vec<String> = v
                .chain
                .layers
                .iter()
                .map(|l| {
                    let id = if l.format.is_vhd() {
                        crate::image::bytes::uuid_to_string(&l.id)
                    } else {
                        crate::image::bytes::guid_to_string(&l.id)
                    };
                    format!(
                        "{{\"path\": {}, \"format\": \"{}\", \"id\": \"{id}\", \"file_bytes\": {}}}",
                        json_str(&l.path.to_string_lossy()),
                        l.format.name(),
                        l.file_len()
                    )
                })
                .collect();
            format!(
                "{{\"name\": {}, \"mode\": \"{}\", \"bytes\": {}, \"damaged\": {}, \"chain\": [{}], \"failover\": {}{}}}",
                json_str(&v.name),
                if v.mode == crate::config::Mode::Standard { "standard" } else { "private" },
                v.chain.virtual_size(),
                v.damaged(),
                chain.join(", "),
                json_str(linux::failover_writes(v.mode, snap.linux(&v.name).map(|l| l.cache))),
                snap.linux(&v.name).map(linux::status_json).unwrap_or_default()
            )
        })
        .collect();
    format!(
        "{{\"node\": {}, \"generation\": {}, \"draining\": {draining}, \"vdisks\": [{}], \"sessions\": {{\"tftp\": {tftp}, \"http\": {http}}}, \"farm\": {farm}, {live}}}\n",
        json_str(&snap.config.server.name),
        snap.generation,
        vdisks.join(", ")
    )
}
