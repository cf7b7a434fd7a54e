//! Placement of a (target, vdisk) pair on the farm: a pure function of the farm table, the
//! servers' states and the target, so every server that sees the same states computes the
//! same ordered list, and the list is the failover order.
//!
//! 1. Candidates: servers holding the vdisk that are up, not draining and whose copy of the
//!    vdisk is positively known to equal ours (replica check, [`copy_eligible`]): a server
//!    that reports no content hash for it (it lacks the vdisk, or is still hashing) is not
//!    one, nor is any peer while this node's own hash is pending.
//! 2. Subnet affinity (PVS): `none` keeps all; `best-effort` keeps the servers whose subnets
//!    contain the client when there are any; `fixed` keeps only those (possibly none).
//! 3. Weighted rendezvous hashing: score = -power / ln(u), u = hash(target, server) in (0, 1).
//!    Highest score first. Each server gets a share of targets proportional to its power, and
//!    adding or removing a server only moves the targets that go to or came from it.
//! 4. Bounded load: a server with at least ceil((1 + epsilon) x its fair share) of the active
//!    targets (the fair share counting this one) moves behind those below their bound.
//! 5. `max_booting` (PVS "maximum devices booting"): a server at its limit moves behind all
//!    others, so new boots start elsewhere instead of queueing.

use crate::config::{Affinity, FarmMember};
use std::net::IpAddr;

/// What placement needs to know about one server for one vdisk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerState {
    /// Answering its health probes and not draining.
    pub up: bool,
    /// Its copy of the vdisk is known to be byte-identical to ours ([`copy_eligible`]).
    pub replica_ok: bool,
    /// Active targets of this vdisk on it.
    pub active: u32,
    /// Targets booting on it now (all vdisks).
    pub booting: u32,
}

/// Longest list handed out (the PVS bootstrap holds four servers).
pub const LIST_MAX: usize = 4;

/// 64-bit FNV-1a with a splitmix64 finish: stable across builds, platforms and versions (every
/// server of a farm must compute the same value, whatever binary it runs).
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        h = (h ^ 0xff).wrapping_mul(0x0100_0000_01b3); // separator: ("ab","c") != ("a","bc")
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The rendezvous score of `server` for `target` with weight `power`.
pub fn score(target: &str, server: &str, power: f64) -> f64 {
    let h = stable_hash(&[target.as_bytes(), server.as_bytes()]);
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64; // (0, 1), never 0 or 1
    -power / u.ln()
}

pub fn in_subnet(ip: IpAddr, (net, prefix): (IpAddr, u8)) -> bool {
    match (ip.to_canonical(), net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix as u32) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix as u32) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Whether a server's copy of a vdisk may be placed on: this node's own copy always (it opened
/// it and serves what it has), a peer's only when it reports a content hash equal to this
/// node's. No hash on either side (the peer lacks the vdisk, was not probed yet, or one side
/// is still hashing) is not eligible: a redirect there could end in a 404 or other bytes.
pub fn copy_eligible(is_self: bool, ours: Option<&str>, theirs: Option<&str>) -> bool {
    is_self || matches!((ours, theirs), (Some(a), Some(b)) if a == b)
}

pub fn holds(m: &FarmMember, vdisk: &str) -> bool {
    m.vdisks.is_empty() || m.vdisks.iter().any(|v| v == vdisk)
}

/// The ordered server list (indices into `farm`) for `target` reading `vdisk`, at most
/// LIST_MAX long; empty when no server may serve it (all down, or fixed affinity and no
/// server for the client's subnet).
pub fn place(
    farm: &[FarmMember],
    state: &dyn Fn(usize) -> ServerState,
    vdisk: &str,
    target: &str,
    client: Option<IpAddr>,
    affinity: Affinity,
    epsilon: f64,
) -> Vec<usize> {
    let mut cands: Vec<(usize, ServerState)> =
        (0..farm.len()).filter(|&i| holds(&farm[i], vdisk)).map(|i| (i, state(i))).filter(|(_, s)| s.up && s.replica_ok).collect();
    if affinity != Affinity::None {
        let near: Vec<(usize, ServerState)> =
            cands.iter().copied().filter(|(i, _)| client.is_some_and(|ip| farm[*i].subnets.iter().any(|n| in_subnet(ip, *n)))).collect();
        if affinity == Affinity::Fixed || !near.is_empty() {
            cands = near;
        }
    }
    let mut scored: Vec<(f64, usize, ServerState)> =
        cands.into_iter().map(|(i, s)| (score(target, &farm[i].name, farm[i].power), i, s)).collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| farm[a.1].name.cmp(&farm[b.1].name)));
    let total_power: f64 = scored.iter().map(|(_, i, _)| farm[*i].power).sum();
    let total_active: f64 = scored.iter().map(|(_, _, s)| s.active as f64).sum::<f64>() + 1.0;
    // 0: free, 1: above its load bound, 2: at max_booting.
    let class = |i: usize, s: &ServerState| -> u8 {
        let m = &farm[i];
        if m.max_booting > 0 && s.booting >= m.max_booting {
            return 2;
        }
        let bound = ((1.0 + epsilon) * total_active * m.power / total_power).ceil();
        if s.active as f64 >= bound {
            1
        } else {
            0
        }
    };
    let mut order: Vec<(u8, usize)> = scored.iter().map(|(_, i, s)| (class(*i, s), *i)).collect();
    order.sort_by_key(|(c, _)| *c); // stable: rendezvous order kept within a class
    order.into_iter().map(|(_, i)| i).take(LIST_MAX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, power: f64, subnets: &[&str]) -> FarmMember {
        FarmMember {
            name: name.into(),
            address: "127.0.0.1".parse().unwrap(),
            power,
            subnets: subnets
                .iter()
                .map(|s| {
                    let (a, p) = s.split_once('/').unwrap();
                    (a.parse().unwrap(), p.parse().unwrap())
                })
                .collect(),
            vdisks: vec![],
            max_booting: 0,
            http_port: 8080,
        }
    }

    fn mac(i: u32) -> String {
        format!("52:54:00:{:02x}:{:02x}:{:02x}", i >> 16 & 0xff, i >> 8 & 0xff, i & 0xff)
    }

    fn up(_: usize) -> ServerState {
        ServerState { up: true, replica_ok: true, active: 0, booting: 0 }
    }

    #[test]
    fn shares_follow_power_within_five_percent() {
        let farm = vec![member("node1", 1.0, &[]), member("node2", 1.0, &[]), member("node3", 2.0, &[])];
        let mut n = [0u32; 3];
        for i in 0..10_000 {
            n[place(&farm, &up, "win10", &mac(i), None, Affinity::None, 0.25)[0]] += 1;
        }
        let want = [2500.0, 2500.0, 5000.0];
        for k in 0..3 {
            let dev = (n[k] as f64 - want[k]).abs() / want[k];
            assert!(dev < 0.05, "server {k}: {} of 10000 (want {}), off by {:.1}%", n[k], want[k], dev * 100.0);
        }
    }

    #[test]
    fn every_list_is_a_permutation_and_the_same_everywhere() {
        let farm = vec![member("a", 1.0, &[]), member("b", 3.0, &[]), member("c", 1.5, &[]), member("d", 1.0, &[]), member("e", 1.0, &[])];
        for i in 0..500 {
            let l = place(&farm, &up, "v", &mac(i), None, Affinity::None, 0.25);
            assert_eq!(l.len(), LIST_MAX);
            let mut s = l.clone();
            s.sort();
            s.dedup();
            assert_eq!(s.len(), LIST_MAX, "no server twice");
            // The same inputs, the same list (what lets any server answer for any target).
            assert_eq!(l, place(&farm, &up, "v", &mac(i), None, Affinity::None, 0.25));
        }
    }

    #[test]
    fn adding_a_fourth_server_moves_about_a_quarter() {
        let three = vec![member("node1", 1.0, &[]), member("node2", 1.0, &[]), member("node3", 1.0, &[])];
        let mut four = three.clone();
        four.push(member("node4", 1.0, &[]));
        let moved = (0..10_000)
            .filter(|&i| {
                let a = three[place(&three, &up, "v", &mac(i), None, Affinity::None, 0.25)[0]].name.clone();
                let b = four[place(&four, &up, "v", &mac(i), None, Affinity::None, 0.25)[0]].name.clone();
                if a != b {
                    assert_eq!(b, "node4", "a target only ever moves to the new server");
                }
                a != b
            })
            .count();
        assert!((2250..=2750).contains(&moved), "{moved} of 10000 moved (want ~2500)");
    }

    #[test]
    fn bounded_load_keeps_every_server_under_its_bound() {
        let farm = vec![member("node1", 1.0, &[]), member("node2", 1.0, &[]), member("node3", 2.0, &[])];
        let eps = 0.1;
        let mut active = [0u32; 3];
        // A skewed population: targets whose first choice would be node1 come first.
        let mut targets: Vec<String> = (0..4000).map(mac).collect();
        targets.sort_by_key(|t| place(&farm, &up, "v", t, None, Affinity::None, eps)[0] != 0);
        for (n, t) in targets.iter().enumerate() {
            let st = |i: usize| ServerState { up: true, replica_ok: true, active: active[i], booting: 0 };
            let first = place(&farm, &st, "v", t, None, Affinity::None, eps)[0];
            active[first] += 1;
            let total = (n + 1) as f64;
            for (i, m) in farm.iter().enumerate() {
                let bound = ((1.0 + eps) * total * m.power / 4.0).ceil();
                assert!(active[i] as f64 <= bound, "after {} placements {} holds {} > bound {bound}", n + 1, m.name, active[i]);
            }
        }
    }

    #[test]
    fn affinity_fixed_never_crosses_subnets_and_best_effort_falls_back() {
        let farm = vec![member("a", 1.0, &["10.1.0.0/16"]), member("b", 1.0, &["10.1.0.0/16"]), member("c", 1.0, &["10.2.0.0/16"])];
        for i in 0..2000u32 {
            let ip: IpAddr = format!("10.{}.{}.{}", 1 + i % 2, i >> 8 & 0xff, i & 0xff).parse().unwrap();
            let l = place(&farm, &up, "v", &mac(i), Some(ip), Affinity::Fixed, 0.25);
            assert!(!l.is_empty() && l.iter().all(|&s| farm[s].subnets.iter().any(|n| in_subnet(ip, *n))), "{ip} -> {l:?}");
        }
        let stranger: IpAddr = "192.168.1.5".parse().unwrap();
        assert!(place(&farm, &up, "v", "x", Some(stranger), Affinity::Fixed, 0.25).is_empty(), "fixed: no server for that subnet");
        assert_eq!(place(&farm, &up, "v", "x", Some(stranger), Affinity::BestEffort, 0.25).len(), 3, "best effort falls back to all");
        let near: IpAddr = "10.2.9.9".parse().unwrap();
        assert_eq!(place(&farm, &up, "v", "x", Some(near), Affinity::BestEffort, 0.25), vec![2]);
    }

    #[test]
    fn down_draining_mismatched_and_busy_servers() {
        let mut farm = vec![member("a", 1.0, &[]), member("b", 1.0, &[]), member("c", 1.0, &[])];
        farm[2].vdisks = vec!["other".into()];
        let l = place(&farm, &|i| ServerState { up: i != 0, ..up(i) }, "v", "t", None, Affinity::None, 0.25);
        assert_eq!(l, vec![1], "a is down and c does not hold v");
        let l = place(&farm, &|i| ServerState { replica_ok: i != 1, ..up(i) }, "v", "t", None, Affinity::None, 0.25);
        assert_eq!(l, vec![0], "b's copy differs");
        farm[2].vdisks.clear();
        farm[0].max_booting = 5;
        for t in 0..50 {
            let t = mac(t);
            let l = place(&farm, &|i| ServerState { booting: if i == 0 { 5 } else { 0 }, ..up(i) }, "v", &t, None, Affinity::None, 0.25);
            assert_eq!(*l.last().unwrap(), 0, "a server at max_booting comes last");
        }
        assert!(in_subnet("::ffff:10.1.2.3".parse().unwrap(), ("10.1.0.0".parse().unwrap(), 16)));
    }

    /// Only a positively equal hash makes a peer eligible: a peer without one (it lacks the
    /// vdisk, or is still hashing) gets no target, whatever its score; this node's own copy
    /// is eligible while its hash is pending, and then it is the only one.
    #[test]
    fn only_servers_that_report_an_identical_copy_are_placed_on() {
        assert!(copy_eligible(false, Some("ab"), Some("ab")));
        assert!(!copy_eligible(false, Some("ab"), Some("cd")), "a different copy");
        assert!(!copy_eligible(false, Some("ab"), None), "no hash from the peer: lacks it or still hashing");
        assert!(!copy_eligible(false, None, Some("ab")), "our own hash pending: nothing to compare with");
        assert!(!copy_eligible(false, None, None));
        assert!(copy_eligible(true, None, None), "this node serves its own copy");
        let farm: Vec<FarmMember> = (1..=8).map(|i| member(&format!("node{i}"), 1.0, &[])).collect();
        // node1 is this node; nodes 2-5 report our hash, 6 another, 7 none, 8 was never probed.
        let theirs = [None, Some("h"), Some("h"), Some("h"), Some("h"), Some("x"), None, None];
        for ours in [Some("h"), None] {
            let st = |i: usize| ServerState { replica_ok: copy_eligible(i == 0, ours, theirs[i]), ..up(i) };
            for t in 0..200 {
                let l = place(&farm, &st, "v", &mac(t), None, Affinity::None, 0.25);
                assert!(l.iter().all(|&i| i < 5), "{ours:?}: {l:?} names a server without an identical copy");
                if ours.is_none() {
                    assert_eq!(l, vec![0], "own hash pending: only this node");
                } else {
                    assert_eq!(l.len(), LIST_MAX);
                }
            }
        }
    }
}
