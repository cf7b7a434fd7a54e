//! The load map: which targets read which vdisk from this node (HTTP) and since when, held to
//! its limits; `Runtime` turns it into the load figures of /api/status and /metrics.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// This node's targets: who read which vdisk (HTTP) and when it started, for load figures and
/// "booting" counts. NBD targets are counted from the write-cache registry.
///
/// `?mac=` is unauthenticated, so the map is held to its limits: entries not read within the
/// active window go (pruned at most once a second as requests come, and at every figure);
/// at most `farm.targets_max` entries (the least recently read go first, counted); one client
/// address names at most `farm.targets_per_address_max` distinct targets, beyond which its
/// reads count as the address itself (one target). Time is an argument.
#[derive(Default)]
pub struct Activity {
    pub(super) seen: HashMap<(String, String), Seen>,
    /// Entries per client address that count against it (a `?mac=` target, not the address).
    pub(super) per_address: HashMap<IpAddr, u32>,
    pub(super) cached: Option<(Instant, HashMap<String, u32>, u32)>,
    pub(super) pruned_at: Option<Instant>,
    /// Per-address refusals: the last log line and how many were left out since.
    pub(super) warned_at: Option<Instant>,
    pub(super) unlogged: u64,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Seen {
    first: Instant,
    last: Instant,
    from: IpAddr,
    /// Counts against `from`'s per-address bound.
    counted: bool,
}

/// The load map's limits (from `[farm]`).
#[derive(Debug, Clone, Copy)]
pub struct ActivityLimits {
    pub active_window: Duration,
    pub targets_max: usize,
    pub targets_per_address_max: usize,
}

impl ActivityLimits {
    pub fn of(f: &crate::config::Farm) -> ActivityLimits {
        ActivityLimits {
            active_window: Duration::from_millis(f.active_window_ms),
            targets_max: f.targets_max,
            targets_per_address_max: f.targets_per_address_max,
        }
    }
}

/// What a touch did beyond recording the target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Touched {
    /// Entries dropped at `targets_max`.
    pub evicted: usize,
    /// The target was counted as its address: the address had its distinct targets.
    pub as_address: bool,
}

impl Activity {
    fn forget(&mut self, key: &(String, String)) {
        if let Some(e) = self.seen.remove(key) {
            self.uncount(e);
        }
    }

    fn uncount(&mut self, e: Seen) {
        if e.counted {
            if let Some(n) = self.per_address.get_mut(&e.from) {
                *n -= 1;
                if *n == 0 {
                    self.per_address.remove(&e.from);
                }
            }
        }
    }

    /// Drops the entries not read within `window`.
    pub fn prune(&mut self, now: Instant, window: Duration) {
        self.pruned_at = Some(now);
        let before = self.seen.len();
        let mut gone = Vec::new();
        self.seen.retain(|_, e| {
            let keep = now.saturating_duration_since(e.last) < window;
            if !keep {
                gone.push(*e);
            }
            keep
        });
        for e in gone {
            self.uncount(e);
        }
        if self.seen.len() != before {
            self.cached = None;
        }
    }

    /// Records a read of `vdisk` by `target` from `client` at `now`.
    pub fn touch(&mut self, vdisk: &str, target: &str, client: IpAddr, now: Instant, lim: &ActivityLimits) -> Touched {
        let mut out = Touched::default();
        let mut key = (vdisk.to_string(), target.to_string());
        if let Some(e) = self.seen.get_mut(&key) {
            e.last = now;
            return out;
        }
        if self.pruned_at.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1)) {
            self.prune(now, lim.active_window);
        }
        let address = client.to_string();
        let mut counted = target != address;
        if counted && self.per_address.get(&client).copied().unwrap_or(0) as usize >= lim.targets_per_address_max {
            // This address has named its share of targets: it counts as one more, itself.
            out.as_address = true;
            counted = false;
            key.1 = address;
            if let Some(e) = self.seen.get_mut(&key) {
                e.last = now;
                return out;
            }
        }
        if self.seen.len() >= lim.targets_max {
            self.prune(now, lim.active_window);
        }
        if self.seen.len() >= lim.targets_max {
            // The least recently read sixteenth goes at once, so a flood costs one selection
            // per targets_max / 16 new targets, not a scan each.
            let mut lasts: Vec<(Instant, &(String, String))> = self.seen.iter().map(|(k, e)| (e.last, k)).collect();
            let n = (lim.targets_max / 16).max(1).min(lasts.len());
            lasts.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
            let victims: Vec<(String, String)> = lasts[..n].iter().map(|(_, k)| (*k).clone()).collect();
            for k in &victims {
                self.forget(k);
            }
            out.evicted = victims.len();
        }
        self.seen.insert(key, Seen { first: now, last: now, from: client, counted });
        if counted {
            *self.per_address.entry(client).or_default() += 1;
        }
        self.cached = None;
        out
    }

    /// (active targets per vdisk, booting targets) from HTTP reads: read within the active
    /// window, and first read within `boot_window`.
    pub fn figures(&mut self, now: Instant, active_window: Duration, boot_window: Duration) -> (HashMap<String, u32>, u32) {
        self.prune(now, active_window);
        let mut m: HashMap<String, u32> = HashMap::new();
        let mut booting = 0;
        for ((v, _), e) in &self.seen {
            *m.entry(v.clone()).or_default() += 1;
            if now.saturating_duration_since(e.first) < boot_window {
                booting += 1;
            }
        }
        (m, booting)
    }

    /// The targets read within `window`, for the console: (vdisk, target, client address,
    /// since the first read, since the last), at most `max`, the most recently started first.
    pub fn list(&mut self, now: Instant, window: Duration, max: usize) -> Vec<(String, String, IpAddr, Duration, Duration)> {
        self.prune(now, window);
        let mut v: Vec<_> = self
            .seen
            .iter()
            .map(|((vd, t), e)| {
                (vd.clone(), t.clone(), e.from, now.saturating_duration_since(e.first), now.saturating_duration_since(e.last))
            })
            .collect();
        v.sort_by_key(|x| x.3);
        v.truncate(max);
        v
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}
