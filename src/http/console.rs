//! The operator's console: a static page (HTML, CSS, JS compiled into the binary: no CDN, no
//! build step) served at `/` by every node, the live members of `/api/status` (targets, recent
//! boots, counter totals) rendered from plain rows, the event stream's framing, and the token
//! check of its one action (drain / resume).
//!
//! Limits: targets listed per node [`TARGETS_SHOWN_MAX`] (NBD and HTTP each; the totals count
//! all), recent boots `nbd::target::RECENT_MAX`, event streams `console.events_max`, one event
//! per `console.event_interval_ms` of at most one status document.

use super::json_str;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub const INDEX_HTML: &str = include_str!("console/index.html");
pub const CONSOLE_JS: &str = include_str!("console/console.js");
pub const CONSOLE_CSS: &str = include_str!("console/console.css");

/// Targets of each kind (NBD write caches, HTTP vdisk readers) one node lists: a page of a few
/// hundred rows stays readable and a status document stays under ~100 KiB.
pub const TARGETS_SHOWN_MAX: usize = 256;

/// What a browser waits before reconnecting a dropped event stream (the SSE `retry:` field).
pub const RETRY_MS: u64 = 2000;

/// The console's state shared by a node's workers.
#[derive(Default)]
pub struct State {
    /// Event streams open now (at most `console.events_max`).
    events: AtomicUsize,
    /// Drained by an operator (POST /api/drain): reported as draining to the farm, so no new
    /// target is placed here, while everything keeps being served.
    pub drained: AtomicBool,
}

impl State {
    /// Takes an event-stream slot unless `max` are taken.
    pub fn events_acquire(&self, max: usize) -> bool {
        self.events.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
    }

    pub fn events_release(&self) {
        let _ = self.events.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    pub fn events_open(&self) -> usize {
        self.events.load(Ordering::Acquire)
    }
}

/// One target as the console lists it. Ages in milliseconds before the status was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRow {
    pub protocol: &'static str,
    pub vdisk: String,
    pub id: String,
    pub client: String,
    /// "booting" (within farm.boot_window_ms of its start), "running", "idle" (an HTTP reader
    /// not seen for a while) or "disconnected" (NBD cache kept for a reconnect).
    pub phase: &'static str,
    pub age_ms: u64,
    pub connections: usize,
    pub cache_bytes: u64,
    pub written_bytes: u64,
}

/// A target session that ended (NBD: its last connection closed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootRow {
    pub vdisk: String,
    pub id: String,
    pub client: String,
    pub ended_ms_ago: u64,
    pub duration_ms: u64,
    pub written_bytes: u64,
}

/// Counter totals the page turns into rates (difference between two events).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub tftp_bytes: u64,
    pub tftp_started: u64,
    pub tftp_completed: u64,
    pub tftp_failed: u64,
    pub http_bytes: u64,
    pub http_responses: u64,
    pub nbd_bytes: u64,
    pub nbd_written_bytes: u64,
    pub nbd_cache_bytes: u64,
    pub nbd_cache_bytes_max: u64,
}

/// The live members of `/api/status` (no braces): `"targets": [...], "targets_total": {...},
/// "recent": [...], "totals": {...}, "events_open": N, "drained": B, "actions": B`.
pub fn live_json(
    targets: &[TargetRow],
    (nbd_total, http_total): (usize, usize),
    recent: &[BootRow],
    t: &Totals,
    events_open: usize,
    drained: bool,
    actions: bool,
) -> String {
    let mut o = String::with_capacity(256 + targets.len() * 200 + recent.len() * 160);
    o.push_str("\"targets\": [");
    for (i, r) in targets.iter().enumerate() {
        let _ = write!(
            o,
            "{}{{\"protocol\": \"{}\", \"vdisk\": {}, \"id\": {}, \"client\": {}, \"phase\": \"{}\", \"age_ms\": {}, \"connections\": {}, \"cache_bytes\": {}, \"written_bytes\": {}}}",
            if i > 0 { ", " } else { "" },
            r.protocol,
            json_str(&r.vdisk),
            json_str(&r.id),
            json_str(&r.client),
            r.phase,
            r.age_ms,
            r.connections,
            r.cache_bytes,
            r.written_bytes
        );
    }
    let _ = write!(o, "], \"targets_total\": {{\"nbd\": {nbd_total}, \"http\": {http_total}}}, \"recent\": [");
    for (i, b) in recent.iter().enumerate() {
        let _ = write!(
            o,
            "{}{{\"vdisk\": {}, \"id\": {}, \"client\": {}, \"ended_ms_ago\": {}, \"duration_ms\": {}, \"written_bytes\": {}}}",
            if i > 0 { ", " } else { "" },
            json_str(&b.vdisk),
            json_str(&b.id),
            json_str(&b.client),
            b.ended_ms_ago,
            b.duration_ms,
            b.written_bytes
        );
    }
    let _ = write!(
        o,
        "], \"totals\": {{\"tftp_bytes\": {}, \"tftp_started\": {}, \"tftp_completed\": {}, \"tftp_failed\": {}, \"http_bytes\": {}, \"http_responses\": {}, \"nbd_bytes\": {}, \"nbd_written_bytes\": {}, \"nbd_cache_bytes\": {}, \"nbd_cache_bytes_max\": {}}}, \"events_open\": {events_open}, \"drained\": {drained}, \"actions\": {actions}",
        t.tftp_bytes,
        t.tftp_started,
        t.tftp_completed,
        t.tftp_failed,
        t.http_bytes,
        t.http_responses,
        t.nbd_bytes,
        t.nbd_written_bytes,
        t.nbd_cache_bytes,
        t.nbd_cache_bytes_max
    );
    o
}

/// Appends one SSE event carrying `json` (one line: a status document has no raw newline,
/// json_str escapes them; any left would end the event early, so they become spaces).
pub fn event(out: &mut Vec<u8>, json: &str) {
    out.extend_from_slice(b"data: ");
    out.extend(json.trim_end().bytes().map(|b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
    out.extend_from_slice(b"\n\n");
}

/// The keep-alive comment sent when nothing changed (proxies and browsers see the stream live).
pub const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// Whether the request's `Authorization: Bearer <token>` names the configured token; compared
/// in constant time (every byte of the longer is looked at), so timing tells nothing of it.
pub fn token_ok(configured: &str, authorization: Option<&[u8]>) -> bool {
    let Some(given) = authorization.and_then(|a| a.strip_prefix(b"Bearer ")) else { return false };
    let want = configured.as_bytes();
    let mut diff = (given.len() ^ want.len()) as u64;
    for i in 0..given.len().max(want.len()) {
        let (a, b) = (given.get(i).copied().unwrap_or(0), want.get(i).copied().unwrap_or(0));
        diff |= (a ^ b) as u64;
    }
    std::hint::black_box(diff) == 0
}

/// FNV-1a of a status document: an event is sent when it differs from the last one sent.
pub fn digest(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_compared_whole() {
        let t = "0123456789abcdef";
        assert!(token_ok(t, Some(b"Bearer 0123456789abcdef")));
        for bad in
            [&b"Bearer 0123456789abcdeF"[..], b"Bearer 0123456789abcde", b"Bearer 0123456789abcdef0", b"0123456789abcdef", b"Bearer ", b""]
        {
            assert!(!token_ok(t, Some(bad)), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(!token_ok(t, None));
    }

    #[test]
    fn event_slots_stop_at_the_limit_and_come_back() {
        let s = State::default();
        assert!(s.events_acquire(2) && s.events_acquire(2));
        assert!(!s.events_acquire(2), "the third is refused");
        s.events_release();
        assert!(s.events_acquire(2));
        assert_eq!(s.events_open(), 2);
        assert!(!State::default().events_acquire(0), "0 = no event stream");
        let z = State::default();
        z.events_release();
        assert_eq!(z.events_open(), 0, "a release never goes below zero");
    }

    #[test]
    fn live_members_are_valid_json_and_events_are_one_line() {
        let rows = [TargetRow {
            protocol: "nbd",
            vdisk: "win\"10".into(),
            id: "52:54:00:00:00:01".into(),
            client: "127.0.0.1:4000".into(),
            phase: "booting",
            age_ms: 1500,
            connections: 1,
            cache_bytes: 4096,
            written_bytes: 512,
        }];
        let recent =
            [BootRow { vdisk: "win10".into(), id: "x\ny".into(), client: "c".into(), ended_ms_ago: 5, duration_ms: 900, written_bytes: 0 }];
        let t = Totals { nbd_bytes: 7, ..Default::default() };
        let doc = format!("{{{}}}", live_json(&rows, (1, 0), &recent, &t, 3, false, true));
        // Python's json module is the judge: the page's JSON.parse is as strict.
        let check = "import json,sys; v=json.load(sys.stdin); t=v['targets'][0]; \
            assert t['vdisk']=='win\"10' and t['phase']=='booting', t; \
            assert v['recent'][0]['id']=='x\\ny' and v['totals']['nbd_bytes']==7; \
            assert v['events_open']==3 and v['actions'] is True; print('ok')";
        let mut p = std::process::Command::new("python3")
            .args(["-c", check])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        p.stdin.take().unwrap().write_all(doc.as_bytes()).unwrap();
        let got = p.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "ok", "{doc}");
        let mut out = Vec::new();
        event(&mut out, &format!("{doc}\n"));
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("data: {") && text.ends_with("}\n\n"));
        assert_eq!(text.matches('\n').count(), 2, "one data line, then the blank line");
    }
}
