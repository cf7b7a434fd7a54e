//! What bootstorm's phases and their engines share: the vDisk I/O a boot replays (one `Io`,
//! the built-in Windows-like profile, CSV traces), what a target expects to read back (the
//! image with its own writes over it, in block patterns), a phase's failure (`Fail`) and the
//! figures of a vDisk run with failover (`DiskRun`). Phases: `boot.rs` orders them per target;
//! engines: `uring_tftp.rs` (TFTP), `uring.rs` (NBD), `uring_http.rs` (HTTP).

use bootfarm::rng::XorShift;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

mod expect;
pub(crate) use expect::{block_pattern, Expect, Written, BLOCK};

/// One I/O of a boot trace.
#[derive(Clone, Copy, Debug)]
pub struct Io {
    pub off: u64,
    pub len: u32,
    pub write: bool,
}

/// The built-in profile for one target: reads confined to the first 3/4 of the disk (system
/// files, partly sequential), writes to the target's own slice of the last quarter (pagefile,
/// registry, logs), so that servers sharing one overlay between targets can be measured too.
/// Sizes follow published boot traces: 65% reads averaging ~12 KiB (~557 MB over ~45,500 reads
/// at scale 1), writes of 4 KiB (80%) and 16 KiB (~160 MB); `windows_profile_totals` checks it.
pub fn windows_profile(scale: f64, disk: u64, target: u64, targets: u64, seed: u64) -> Vec<Io> {
    let ops = ((70_000.0 * scale).round() as u64).max(1);
    let mut r = XorShift::new(seed ^ target.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let read_area = (disk / 4 * 3) / BLOCK * BLOCK;
    let slice = ((disk - read_area) / targets.max(1)) / BLOCK * BLOCK;
    let wbase = read_area + (target % targets.max(1)) * slice;
    let mut seq = 0u64;
    let mut out = Vec::with_capacity(ops as usize);
    for _ in 0..ops {
        if r.unit() < 0.65 || slice < 16 * BLOCK {
            let x = r.unit();
            // 55% 4 KiB, 10% 8 KiB, 20% 16 KiB, 12% 32 KiB, 3% 64 KiB: 11.96 KiB on average.
            let len = if x < 0.55 {
                4096
            } else if x < 0.65 {
                8192
            } else if x < 0.85 {
                16384
            } else if x < 0.97 {
                32768
            } else {
                65536
            };
            let off = if r.unit() < 0.6 && seq + len <= read_area { seq } else { (r.next() % (read_area / BLOCK)) * BLOCK };
            let len = len.min(read_area - off);
            seq = off + len;
            out.push(Io { off, len: len as u32, write: false });
        } else {
            let len = if r.unit() < 0.8 { 4096 } else { 16384 };
            let off = wbase + (r.next() % ((slice - len) / BLOCK + 1)) * BLOCK;
            out.push(Io { off, len: len as u32, write: true });
        }
    }
    out
}

pub fn load_trace(p: &std::path::Path, disk: u64) -> Result<Vec<Io>, String> {
    let f = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
    let mut out = Vec::new();
    for (n, l) in BufReader::new(f).lines().enumerate() {
        let l = l.map_err(|e| format!("{}: {e}", p.display()))?;
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with("offset") {
            continue;
        }
        let bad = |why: &str| format!("{}:{}: {why}: {l:?}", p.display(), n + 1);
        let t: Vec<&str> = l.split(',').map(str::trim).collect();
        let [off, len, op] = t.as_slice() else { return Err(bad("want offset,length,op")) };
        let off: u64 = off.parse().map_err(|_| bad("bad offset"))?;
        let len: u32 = len.parse().map_err(|_| bad("bad length"))?;
        let write = match *op {
            "r" | "R" | "read" => false,
            "w" | "W" | "write" => true,
            _ => return Err(bad("op must be r or w")),
        };
        if !off.is_multiple_of(BLOCK) || !(len as u64).is_multiple_of(BLOCK) || len == 0 {
            return Err(bad("offset and length must be non-zero multiples of 4096"));
        }
        if off + len as u64 > disk {
            return Err(bad("past the end of the disk"));
        }
        out.push(Io { off, len, write });
    }
    Ok(out)
}

/// The span a trace covers: its last byte, rounded up to 1 MiB.
pub fn trace_span(ios: &[Io]) -> u64 {
    ios.iter().map(|i| i.off + i.len as u64).max().unwrap_or(0).div_ceil(1 << 20) << 20
}

/// A trace for servers that share one write overlay between all targets (qemu-nbd
/// `--snapshot`): target `t`'s writes, and its reads of blocks it wrote before, move to its own
/// area `(1 + t) * span` further on; reads of blocks it has not written stay where the trace has
/// them (a read over both kinds is split at the boundaries). Every target then reads the image
/// or its own writes, as with a write cache per target. The image must hold
/// `(targets + 1) * span` bytes.
pub fn own_areas(ios: &[Io], t: u64, span: u64) -> Vec<Io> {
    let shift = (1 + t) * span;
    let mut written = std::collections::HashSet::<u64>::new();
    let mut out = Vec::with_capacity(ios.len());
    for io in ios {
        let (first, n) = (io.off / BLOCK, io.len as u64 / BLOCK);
        if io.write {
            written.extend(first..first + n);
            out.push(Io { off: io.off + shift, ..*io });
            continue;
        }
        let mut b = first;
        while b < first + n {
            let own = written.contains(&b);
            let mut e = b + 1;
            while e < first + n && written.contains(&e) == own {
                e += 1;
            }
            out.push(Io { off: b * BLOCK + if own { shift } else { 0 }, len: ((e - b) * BLOCK) as u32, write: false });
            b = e;
        }
    }
    out
}

/// A target failed in a phase: (phase, reason).
pub(crate) type Fail = (&'static str, &'static str);

#[derive(Default)]
pub(crate) struct DiskRun {
    pub server: usize,
    pub failovers: u64,
    pub lost: Duration,
    pub bytes: u64,
    /// Blocks the target had written when it failed over: they stayed in the old server's
    /// write cache (counted once per failover that left writes behind).
    pub writes_lost: u64,
    /// Since when no server has answered (an outage in progress).
    down_since: Option<Instant>,
}

impl DiskRun {
    /// An answer came: the outage, if one was in progress, is time lost.
    pub fn answered(&mut self) {
        if let Some(d) = self.down_since.take() {
            self.lost += d.elapsed();
        }
    }

    /// A failover left `blocks` written blocks behind on the old server.
    pub fn lose_writes(&mut self, blocks: u64) {
        self.writes_lost += blocks;
    }

    /// The current server went away: the next of the `servers` in the list (a failover), or
    /// the end of the phase.
    pub fn next_server(&mut self, servers: usize, phase: &'static str, why: &'static str) -> Result<(), Fail> {
        self.down_since.get_or_insert_with(Instant::now);
        if self.server + 1 >= servers {
            return Err((phase, if why == "connect failed" { "no server left" } else { why }));
        }
        self.server += 1;
        self.failovers += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At scale 1 the built-in profile is the published boot it models: ~70,000 I/Os, 60-70%
    /// of them reads, 500-600 MB read; every I/O 4 KiB aligned, reads in the first three
    /// quarters of the disk, writes in the target's own slice of the last quarter.
    #[test]
    fn windows_profile_totals() {
        let disk = 40u64 << 30;
        let targets = 100;
        for target in [0u64, 37, 99] {
            let p = windows_profile(1.0, disk, target, targets, 1);
            assert_eq!(p.len(), 70_000);
            let reads: Vec<&Io> = p.iter().filter(|i| !i.write).collect();
            let share = reads.len() as f64 / p.len() as f64;
            assert!((0.60..=0.70).contains(&share), "read share {share}");
            let read_mb = reads.iter().map(|i| i.len as u64).sum::<u64>() as f64 / 1e6;
            assert!((500.0..=600.0).contains(&read_mb), "read {read_mb} MB");
            let read_area = disk / 4 * 3;
            let slice = (disk - read_area) / targets / BLOCK * BLOCK;
            let wbase = read_area + target * slice;
            for i in &p {
                assert!(i.off.is_multiple_of(BLOCK) && (i.len as u64).is_multiple_of(BLOCK) && i.len > 0, "{i:?}");
                if i.write {
                    assert!(i.off >= wbase && i.off + i.len as u64 <= wbase + slice, "write outside the slice: {i:?}");
                } else {
                    assert!(i.off + i.len as u64 <= read_area, "read outside the read area: {i:?}");
                }
            }
        }
        let small = windows_profile(0.005, disk, 0, targets, 1);
        assert_eq!(small.len(), 350, "scale 0.005: 350 I/Os");
    }

    /// Writes move to the target's area, reads of its own written blocks follow them (split
    /// where a read covers both), other reads stay; the span is the trace's end in MiB.
    #[test]
    fn own_areas_move_writes_and_the_reads_of_them() {
        let io = |off: u64, len: u32, write: bool| Io { off, len, write };
        let trace = [io(0, 8192, false), io(4096, 4096, true), io(0, 12288, false), io(4096, 4096, false)];
        assert_eq!(trace_span(&trace), 1 << 20);
        let m = 1u64 << 20;
        let got: Vec<(u64, u32, bool)> = own_areas(&trace, 2, m).iter().map(|i| (i.off, i.len, i.write)).collect();
        assert_eq!(
            got,
            [
                (0, 8192, false),
                (3 * m + 4096, 4096, true),
                (0, 4096, false),
                (3 * m + 4096, 4096, false),
                (8192, 4096, false),
                (3 * m + 4096, 4096, false)
            ]
        );
    }
}
