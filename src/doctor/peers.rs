//! The farm's side of `bootfarm doctor`: every [[farm.server]] asked for its /healthz (with a
//! timeout), then compared: up, the node it should be, the same configuration generation,
//! byte-identical replicas (the content hashes the nodes report), clocks within a few seconds
//! (the HTTP Date header against ours, half the round trip allowed for).

use super::Finding;
use crate::config::{FarmMember, Snapshot};
use crate::farm::Health;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A clock further off than this is reported (the Date header has one-second resolution).
pub const SKEW_MAX_S: i64 = 2;
/// The most of an answer read: a /healthz body is a few hundred bytes.
const ANSWER_BYTES_MAX: usize = 1 << 20;

pub struct Answer {
    pub status: u16,
    pub health: Health,
    /// Their clock minus ours, in seconds, when they sent a Date header.
    pub skew_s: Option<i64>,
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// GET /healthz with a deadline for the whole exchange.
pub fn ask(addr: SocketAddr, timeout: Duration) -> Result<Answer, String> {
    let deadline = Instant::now() + timeout;
    let sent = unix_now();
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_write_timeout(Some(timeout)).ok();
    s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: bootfarm-doctor\r\n\r\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no whole answer within {} ms", timeout.as_millis()));
        }
        s.set_read_timeout(Some(left)).ok();
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) if buf.len() + n <= ANSWER_BYTES_MAX => buf.extend_from_slice(&chunk[..n]),
            Ok(_) => return Err("answer too large for a health report".into()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(format!("no whole answer within {} ms", timeout.as_millis()))
            }
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
    let received = unix_now();
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("not an HTTP answer")?;
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("not an HTTP answer")?;
    let date = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("date").then(|| crate::http::wire::parse_date(v.trim().as_bytes())).flatten()
    });
    let health =
        Health::parse(body).ok_or_else(|| format!("HTTP {status} without a bootfarm health report (another server on this port?)"))?;
    // Their second was stamped somewhere in the round trip: compare with its middle.
    let skew_s = date.map(|d| {
        let mid = (sent + received) / 2.0;
        let off = d as f64 + 0.5 - mid;
        if off.abs() < 1.0 {
            0
        } else {
            off.round() as i64
        }
    });
    Ok(Answer { status, health, skew_s })
}

/// Every finding about the farm of `snap`.
pub fn farm(snap: &Snapshot) -> Vec<Finding> {
    if snap.config.farm.server.is_empty() {
        return vec![Finding::ok("farm", "a single node (no [[farm.server]]): nothing to compare")];
    }
    let timeout = Duration::from_millis(snap.config.farm.health_timeout_ms.saturating_mul(4));
    let me = snap.config.server.name.as_str();
    let answers: Vec<Result<Answer, String>> = std::thread::scope(|sc| {
        let hs: Vec<_> = snap.farm.iter().map(|m| sc.spawn(move || ask(SocketAddr::new(m.address, m.http_port), timeout))).collect();
        hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("probe failed".into()))).collect()
    });
    judge(snap, me, &answers)
}

fn label(m: &FarmMember, me: &str) -> String {
    let this = if m.name == me { ", this node" } else { "" };
    format!("{} ({}:{}{this})", m.name, m.address, m.http_port)
}

/// The comparisons, apart from the probing so a test can feed answers.
pub fn judge(snap: &Snapshot, me: &str, answers: &[Result<Answer, String>]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut up: Vec<(&FarmMember, &Answer)> = Vec::new();
    for (m, a) in snap.farm.iter().zip(answers) {
        let who = label(m, me);
        match a {
            Err(e) if m.name == me => out.push(Finding::warn(
                "farm",
                format!("{who} does not answer /healthz ({e}): this node is not serving; start it (systemctl start bootfarm) to compare it with the others"),
            )),
            Err(e) => out.push(Finding::error(
                "farm",
                format!("{who} does not answer /healthz ({e}): its targets fail over to the others; start bootfarm there or check the network between the nodes"),
            )),
            Ok(a) if a.health.node != m.name => out.push(Finding::error(
                "farm",
                format!("{who} answers as node {:?}: fix its server.name or this [[farm.server]] address", a.health.node),
            )),
            Ok(a) => {
                if a.health.draining {
                    out.push(Finding::warn("farm", format!("{who} is draining (stopping): new targets go to the others")));
                } else if a.status != 200 {
                    out.push(Finding::warn("farm", format!("{who} answers HTTP {}: look at its log (journalctl -u bootfarm)", a.status)));
                } else {
                    out.push(Finding::ok("farm", format!("{who} is up, generation {}, {} target(s) booting", a.health.generation, a.health.booting)));
                }
                up.push((m, a));
            }
        }
    }
    out.extend(generations(&up, me));
    out.extend(replicas(snap, &up));
    for (m, a) in &up {
        match a.skew_s {
            Some(s) if s.abs() > SKEW_MAX_S => out.push(Finding::warn(
                "clock",
                format!(
                    "{}: clock {} s {} ours: boot tokens (nbd.token_ttl_ms) and logs disagree between nodes; run NTP on every node (systemd-timesyncd, chrony)",
                    label(m, me),
                    s.abs(),
                    if s > 0 { "ahead of" } else { "behind" }
                ),
            )),
            Some(s) => out.push(Finding::ok("clock", format!("{}: clock within {SKEW_MAX_S} s of ours ({s} s)", label(m, me)))),
            None => out.push(Finding::warn("clock", format!("{}: no Date header, clock not compared", label(m, me)))),
        }
    }
    out
}

/// The configuration generation every node serves: this node's, or the most common one.
fn generations(up: &[(&FarmMember, &Answer)], me: &str) -> Vec<Finding> {
    let mut count: HashMap<u64, usize> = HashMap::new();
    for (_, a) in up {
        *count.entry(a.health.generation).or_default() += 1;
    }
    let reference = up
        .iter()
        .find(|(m, _)| m.name == me)
        .map(|(_, a)| a.health.generation)
        .or_else(|| count.iter().max_by_key(|(g, n)| (**n, std::cmp::Reverse(**g))).map(|(g, _)| *g));
    let Some(reference) = reference else { return Vec::new() };
    let odd: Vec<String> = up
        .iter()
        .filter(|(_, a)| a.health.generation != reference)
        .map(|(m, a)| format!("{} at {}", m.name, a.health.generation))
        .collect();
    if odd.is_empty() {
        if up.len() > 1 {
            return vec![Finding::ok("farm", format!("every node that answers serves configuration generation {reference}"))];
        }
        return Vec::new();
    }
    vec![Finding::warn(
        "farm",
        format!(
            "configuration generations differ: {} where the reference is {reference}: the nodes did not load the same number of configurations; copy the same bootfarm.toml to every node and reload each (systemctl reload bootfarm)",
            odd.join(", ")
        ),
    )]
}

/// Per vdisk, the content hashes of the nodes that hold it: one value, or who differs.
fn replicas(snap: &Snapshot, up: &[(&FarmMember, &Answer)]) -> Vec<Finding> {
    let mut out = Vec::new();
    for v in &snap.vdisks {
        let holders: Vec<&(&FarmMember, &Answer)> = up.iter().filter(|(m, _)| crate::farm::place::holds(m, &v.name)).collect();
        if holders.len() < 2 {
            continue;
        }
        let pending: Vec<&str> =
            holders.iter().filter(|(_, a)| !a.health.hashes.contains_key(&v.name)).map(|(m, _)| m.name.as_str()).collect();
        let mut by_hash: Vec<(String, Vec<&str>)> = Vec::new();
        for (m, a) in &holders {
            if let Some(h) = a.health.hashes.get(&v.name) {
                match by_hash.iter_mut().find(|(x, _)| x == h) {
                    Some((_, names)) => names.push(&m.name),
                    None => by_hash.push((h.clone(), vec![&m.name])),
                }
            }
        }
        if by_hash.len() > 1 {
            let groups: Vec<String> = by_hash.iter().map(|(h, n)| format!("{} has {h}", n.join("+"))).collect();
            out.push(Finding::error(
                "replica",
                format!(
                    "vdisk {}: the copies differ ({}): failover between them would change the disk under a target; copy the image file byte for byte to every node (rsync, then mv into place)",
                    v.name,
                    groups.join(", ")
                ),
            ));
        } else if !pending.is_empty() {
            out.push(Finding::warn(
                "replica",
                format!("vdisk {}: {} still hashing its copy; run doctor again in a minute", v.name, pending.join(", ")),
            ));
        } else {
            out.push(Finding::ok("replica", format!("vdisk {}: {} node(s) hold byte-identical copies", v.name, holders.len())));
        }
    }
    out
}
