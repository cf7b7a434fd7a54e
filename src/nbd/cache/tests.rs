use super::pool::CHUNK_BYTES;
use super::*;
use crate::image::ChainLimits;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn base(dir: &Path, size: u64) -> (Chain, Vec<u8>) {
    let p = dir.join("base.raw");
    let content: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 1).collect();
    std::fs::write(&p, &content).unwrap();
    (Chain::open(&p, ChainLimits::default()).unwrap(), content)
}

fn read_all(o: &Overlay, chain: &Chain, off: u64, len: u64) -> Vec<u8> {
    let mut scratch = Vec::new();
    let mut pieces: Vec<(u8, usize, usize, u64)> = Vec::new();
    let mut out = Vec::new();
    o.read(off, len, chain, &mut scratch, usize::MAX, &mut |p| match p {
        Piece::Data(d) => out.extend_from_slice(d),
        Piece::Copied(r) => pieces.push((1, r.start, r.end, out.len() as u64)),
        Piece::Zero(n) => out.extend(std::iter::repeat_n(0u8, n as usize)),
    })
    .unwrap();
    // Copied pieces are placed where they were emitted.
    for (_, s, e, at) in pieces.into_iter().rev() {
        let at = at as usize;
        out.splice(at..at, scratch[s..e].iter().copied());
    }
    out
}

/// One round of a random workload over the whole disk, applied to `o` and `model`: a zeroing
/// (1 in 10), a write (5 in 10) of up to 3 blocks (1 in 4: up to `long` blocks), any alignment;
/// or the range the caller should read and check.
fn random_round(o: &mut Overlay, chain: &Chain, model: &mut [u8], rng: &mut crate::rng::XorShift, long: u64) -> Option<(u64, u64)> {
    let size = model.len() as u64;
    let off = rng.below(size);
    let span = if rng.below(4) == 0 { long * BLOCK } else { 3 * BLOCK };
    let len = (rng.below(span) + 1).min(size - off);
    let at = off as usize..(off + len) as usize;
    match rng.below(10) {
        0 => {
            o.zero(off, len, chain).unwrap();
            model[at].fill(0);
        }
        1..=5 => {
            let d: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            o.write(off, &d, chain).unwrap();
            model[at].copy_from_slice(&d);
        }
        _ => return Some((off, len)),
    }
    None
}

/// Limits for a test overlay in `dir`: the given RAM tier and byte budgets; zero ranges
/// and the global RAM tier out of the way.
fn test_limits(dir: &Path, ram_bytes: u64, target_bytes_max: u64, total_bytes_max: u64) -> Limits {
    Limits {
        ram_bytes,
        target_bytes_max,
        total_bytes_max,
        dir: dir.to_path_buf(),
        zero_ranges_max: 1 << 16,
        ram_total_max: u64::MAX,
        ram_total: Default::default(),
        pool: Default::default(),
        map_overflow: true,
    }
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bootfarm-cache-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Random writes and zeroings of any alignment against a flat model, with a RAM tier small
/// enough that most blocks overflow to the file: every read equals the model.
#[test]
fn overlay_matches_a_flat_model() {
    let dir = tmpdir("model");
    let size = 1 << 20 | 1536; // a short last block
    let (chain, mut model) = base(&dir, size);
    let total = Arc::new(AtomicU64::new(0));
    let limits = test_limits(&dir, 16 * BLOCK, 1 << 30, 1 << 30);
    let mut o = Overlay::new(size, limits, total.clone(), None);
    let mut rng = crate::rng::XorShift::new(0x9e37_79b9_7f4a_7c15);
    for round in 0..3000 {
        if let Some((off, len)) = random_round(&mut o, &chain, &mut model, &mut rng, 24) {
            let got = read_all(&o, &chain, off, len);
            assert!(got == model[off as usize..(off + len) as usize], "round {round}: read of {len} at {off} differs");
        }
    }
    assert!(read_all(&o, &chain, 0, size) == model, "the whole disk equals the model");
    assert!(o.file_slots > 0 && o.ram_pages == 16, "both tiers were used");
    assert_eq!(total.load(Ordering::Relaxed), o.allocated_bytes());
    drop(o);
    assert_eq!(total.load(Ordering::Relaxed), 0, "dropping the overlay returns its bytes");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn limits_refuse_whole_writes_and_targets_are_isolated() {
    let dir = tmpdir("limits");
    let (chain, content) = base(&dir, 1 << 20);
    let total = Arc::new(AtomicU64::new(0));
    // The total has room for the zeroed range `a` keeps below (counted, never refused).
    let limits = test_limits(&dir, 4 * BLOCK, 8 * BLOCK, 12 * BLOCK + RANGE_BYTES);
    let mut a = Overlay::new(1 << 20, limits.clone(), total.clone(), None);
    let mut b = Overlay::new(1 << 20, limits, total.clone(), None);
    a.write(0, &vec![0xaa; 8 * BLOCK as usize], &chain).unwrap();
    // A write needing one more block than the target may hold is refused before any byte lands.
    let e = a.write(7 * BLOCK, &vec![0xbb; 2 * BLOCK as usize], &chain).unwrap_err();
    assert!(matches!(e, CacheError::NoSpace(ref m) if m.contains("per_target")), "{e}");
    assert_eq!(read_all(&a, &chain, 7 * BLOCK, 2 * BLOCK)[..BLOCK as usize], vec![0xaa; BLOCK as usize][..]);
    // Rewriting blocks it already holds needs no room.
    a.write(BLOCK + 5, b"again", &chain).unwrap();
    // Zeroing frees blocks for reuse.
    a.zero(0, 2 * BLOCK, &chain).unwrap();
    assert_eq!(a.allocated_bytes(), 8 * BLOCK + RANGE_BYTES, "the zeroed range is counted");
    a.write(20 * BLOCK, &vec![0xcc; 2 * BLOCK as usize], &chain).unwrap();
    // The other target sees none of it, and meets the global limit.
    assert!(read_all(&b, &chain, 0, 1 << 20) == content);
    b.write(0, &vec![1; 4 * BLOCK as usize], &chain).unwrap();
    let e = b.write(4 * BLOCK, &[1], &chain).unwrap_err();
    assert!(matches!(e, CacheError::NoSpace(ref m) if m.contains("total")), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Item 6 of #20: a whole-disk TRIM of 64 GiB is one zeroed range, counted in the cache
/// bytes; a write inside it splits it; reads and block status stay right.
#[test]
fn a_whole_disk_trim_is_one_counted_range() {
    let dir = tmpdir("trim");
    let size = 64u64 << 30;
    let p = dir.join("big.raw");
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    let chain = Chain::open(&p, ChainLimits::default()).unwrap();
    let total = Arc::new(AtomicU64::new(0));
    let limits = Limits {
        ram_bytes: 1 << 20,
        target_bytes_max: 1 << 30,
        total_bytes_max: 1 << 30,
        dir: dir.clone(),
        zero_ranges_max: 2,
        ram_total_max: u64::MAX,
        ram_total: Default::default(),
        pool: Default::default(),
        map_overflow: true,
    };
    let mut o = Overlay::new(size, limits, total.clone(), None);
    let t0 = Instant::now();
    o.zero(0, size, &chain).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!((o.zero_ranges(), o.allocated_bytes(), total.load(Ordering::Relaxed)), (1, RANGE_BYTES, RANGE_BYTES));
    o.write(1 << 30, &[5; 4096], &chain).unwrap();
    assert_eq!(o.zero_ranges(), 2, "the write split the range");
    assert_eq!(total.load(Ordering::Relaxed), o.allocated_bytes());
    assert_eq!(o.allocated_bytes(), BLOCK + 2 * RANGE_BYTES);
    let mut runs = Vec::new();
    o.status(0, size, &chain, &mut |l, f| runs.push((l, f)));
    assert_eq!(runs, vec![(1 << 30, 2), (BLOCK, 0), (size - (1 << 30) - BLOCK, 2)]);
    assert_eq!(read_all(&o, &chain, (1 << 30) - 2, 4), vec![0, 0, 5, 5]);
    // A third range is one too many: refused whole, nothing changed.
    let e = o.write(2 << 30, &[6; 4096], &chain).unwrap_err();
    assert!(e.to_string().contains("nbd.cache_zero_ranges_per_target_max"), "{e}");
    assert_eq!(read_all(&o, &chain, 2 << 30, 4), vec![0; 4]);
    let e = o.zero(4 << 30, 8192, &chain);
    assert!(e.is_ok(), "zeroing inside a zeroed range adds nothing: {e:?}");
    // Zeroing over the written block merges everything back into one range.
    o.zero(0, 2 << 30, &chain).unwrap();
    assert_eq!((o.zero_ranges(), o.allocated_bytes()), (1, BLOCK + RANGE_BYTES), "the freed page stays for reuse");
    drop(o);
    assert_eq!(total.load(Ordering::Relaxed), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]
    /// Writes and zeroings against a model of bytes and per-block state: reads, block status,
    /// the range invariants (disjoint, coalesced, no block both zeroed and held) and the
    /// byte count all agree after every step.
    #[test]
    fn zeroed_ranges_match_a_model(ops in proptest::collection::vec((0u8..3, 0u64..(40 * BLOCK), 1u64..(12 * BLOCK)), 1..40)) {
        let dir = tmpdir(&format!("prop-{:?}", std::thread::current().id()).replace(['(', ')'], ""));
        let size = 40 * BLOCK + 1000;
        let (chain, mut model) = base(&dir, size);
        let nblocks = size.div_ceil(BLOCK) as usize;
        let mut state = vec![0u32; nblocks]; // flags as block status reports them
        let total = Arc::new(AtomicU64::new(0));
        let limits = test_limits(&dir, 8 * BLOCK, 1 << 30, 1 << 30);
        let mut o = Overlay::new(size, limits, total.clone(), None);
        for (kind, off, len) in ops {
            let len = len.min(size - off);
            let (first, last) = (off / BLOCK, (off + len - 1) / BLOCK);
            if kind == 0 {
                o.zero(off, len, &chain).unwrap();
                model[off as usize..(off + len) as usize].fill(0);
                for b in first..=last {
                    let whole = b * BLOCK >= off && ((b + 1) * BLOCK).min(size) <= off + len;
                    if whole {
                        state[b as usize] = 2;
                    } else if state[b as usize] != 2 {
                        state[b as usize] = 0;
                    }
                }
            } else {
                let d: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(kind)).collect();
                o.write(off, &d, &chain).unwrap();
                model[off as usize..(off + len) as usize].copy_from_slice(&d);
                for b in first..=last {
                    state[b as usize] = 0;
                }
            }
            proptest::prop_assert!(read_all(&o, &chain, 0, size) == model);
            let mut got = Vec::new();
            o.status(0, size, &chain, &mut |l, f| got.push((l, f)));
            let mut want: Vec<(u64, u32)> = Vec::new();
            for (b, &f) in state.iter().enumerate() {
                let n = (size - b as u64 * BLOCK).min(BLOCK);
                match want.last_mut() {
                    Some((l, g)) if *g == f => *l += n,
                    _ => want.push((n, f)),
                }
            }
            proptest::prop_assert_eq!(got, want);
            let mut prev_end = None;
            for (&s, &e) in &o.zeros {
                proptest::prop_assert!(s < e && prev_end.is_none_or(|p| p < s), "disjoint, not adjacent");
                proptest::prop_assert!(o.map.range(s, e - 1).next().is_none(), "no held block in a zeroed range");
                prev_end = Some(e);
            }
            proptest::prop_assert_eq!(total.load(Ordering::Relaxed), o.allocated_bytes());
        }
        drop(o);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Item 7 of #20: the RAM tier of all overlays together stops at its global cap; blocks
/// beyond it go to the overflow file and read back the same.
#[test]
fn the_ram_tier_has_a_global_cap() {
    let dir = tmpdir("ramcap");
    let (chain, _) = base(&dir, 64 * BLOCK);
    let (total, ram) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let limits = Limits {
        ram_bytes: 4 * BLOCK,
        target_bytes_max: 1 << 20,
        total_bytes_max: 1 << 20,
        dir: dir.clone(),
        zero_ranges_max: 16,
        ram_total_max: 5 * BLOCK,
        ram_total: ram.clone(),
        pool: Default::default(),
        map_overflow: true,
    };
    let mut a = Overlay::new(64 * BLOCK, limits.clone(), total.clone(), None);
    let mut b = Overlay::new(64 * BLOCK, limits, total.clone(), None);
    a.write(0, &[1; 3 * BLOCK as usize], &chain).unwrap();
    b.write(0, &[2; 4 * BLOCK as usize], &chain).unwrap();
    assert_eq!((a.ram_pages, b.ram_pages, b.file_slots), (3, 2, 2), "b met the global cap");
    assert_eq!(ram.load(Ordering::Relaxed), 5 * BLOCK);
    assert_eq!(read_all(&b, &chain, 0, 4 * BLOCK), vec![2; 4 * BLOCK as usize]);
    drop(a);
    assert_eq!(ram.load(Ordering::Relaxed), 2 * BLOCK, "a's pages went back");
    b.write(8 * BLOCK, &[3; 2 * BLOCK as usize], &chain).unwrap();
    assert_eq!(b.ram_pages, 4, "b's next blocks are in RAM again, up to its own limit");
    drop(b);
    assert_eq!((ram.load(Ordering::Relaxed), total.load(Ordering::Relaxed)), (0, 0));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Item 12 of #20: two targets race, each with a write of 6 blocks applied in 6 pieces
/// (as a WRITE payload arrives), for a global budget of 8 blocks. The first to reserve
/// writes everything; the other is refused before any byte lands, never half of each.
#[test]
fn racing_writes_reserve_the_global_budget_first() {
    let dir = tmpdir("race");
    let (chain, content) = base(&dir, 64 * BLOCK);
    let chain = Arc::new(chain);
    for round in 0..200 {
        let total = Arc::new(AtomicU64::new(0));
        let limits = test_limits(&dir, 4 * BLOCK, 8 * BLOCK, 8 * BLOCK);
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let threads: Vec<_> = (0..2u8)
            .map(|i| {
                let o = Arc::new(Mutex::new(Overlay::new(64 * BLOCK, limits.clone(), total.clone(), None)));
                let (chain, barrier, o2) = (chain.clone(), barrier.clone(), o.clone());
                let h = std::thread::spawn(move || {
                    barrier.wait();
                    let off = (i as u64 * 16 + 1) * BLOCK;
                    let mut r = o2.lock().unwrap().reserve(off, 6 * BLOCK)?;
                    for k in 0..6 {
                        std::thread::yield_now();
                        let mut g = o2.lock().unwrap();
                        g.write_reserved(off + k * BLOCK, &[i + 1; BLOCK as usize], &chain, &mut r).expect("reserved");
                    }
                    o2.lock().unwrap().unreserve(r);
                    Ok::<(), CacheError>(())
                });
                (o, h)
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|(o, h)| (o, h.join().unwrap())).collect();
        assert_eq!(results.iter().filter(|(_, r)| r.is_ok()).count(), 1, "round {round}: exactly one write fits");
        for (o, r) in &results {
            let o = o.lock().unwrap();
            match r {
                Ok(()) => assert_eq!(o.allocated_bytes(), 6 * BLOCK),
                Err(e) => {
                    assert!(e.to_string().contains("nbd.cache_bytes_total_max"), "{e}");
                    assert!(o.is_empty() && o.allocated_bytes() == 0, "round {round}: the refused write left nothing");
                    assert!(read_all(&o, &chain, 0, 64 * BLOCK) == content);
                }
            }
        }
        assert_eq!(total.load(Ordering::Relaxed), 6 * BLOCK, "nothing stays reserved");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Item 13 of #20: a page a reply points at is not handed to another block before the
/// reply's pin is released, whatever other connections of the target do meanwhile.
#[test]
fn a_page_under_a_reply_in_flight_is_not_reused() {
    let dir = tmpdir("pin");
    let (chain, _) = base(&dir, 64 * BLOCK);
    let limits = test_limits(&dir, 1 << 20, 1 << 20, 1 << 20);
    let mut o = Overlay::new(64 * BLOCK, limits, Arc::new(AtomicU64::new(0)), None);
    o.write(0, &[0xaa; BLOCK as usize], &chain).unwrap();
    let epoch = o.pin();
    let mut ptr = None;
    o.read(0, BLOCK, &chain, &mut Vec::new(), usize::MAX, &mut |p| {
        if let Piece::Data(d) = p {
            ptr = Some(d.as_ptr())
        }
    })
    .unwrap();
    let ptr = ptr.expect("a RAM page");
    let second = o.pin(); // another reply, later
    o.zero(0, BLOCK, &chain).unwrap(); // TRIM X ...
    o.write(BLOCK, &[0xbb; BLOCK as usize], &chain).unwrap(); // ... then write Y
                                                              // Safety: chunks live as long as the overlay.
    let seen = unsafe { std::slice::from_raw_parts(ptr, BLOCK as usize) };
    assert!(seen.iter().all(|&b| b == 0xaa), "the reply's page still holds X");
    assert_eq!(o.ram_pages, 2, "Y got a new page");
    o.unpin(second);
    o.write(2 * BLOCK, &[0xcc; BLOCK as usize], &chain).unwrap();
    assert_eq!(o.ram_pages, 3, "an older pin still holds the page");
    o.unpin(epoch);
    o.write(3 * BLOCK, &[0xdd; BLOCK as usize], &chain).unwrap();
    assert_eq!(o.ram_pages, 3, "once the reply is out the page is reused");
    assert!(seen.iter().all(|&b| b == 0xdd));
    assert_eq!(read_all(&o, &chain, 0, 4 * BLOCK), [[0u8; 4096], [0xbb; 4096], [0xcc; 4096], [0xdd; 4096]].concat());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn block_status_reports_written_zeroed_and_base() {
    let dir = tmpdir("status");
    let (chain, _) = base(&dir, 64 * BLOCK);
    let limits = test_limits(&dir, 1 << 20, 1 << 20, 1 << 20);
    let mut o = Overlay::new(64 * BLOCK, limits, Arc::new(AtomicU64::new(0)), None);
    o.zero(4 * BLOCK, 4 * BLOCK, &chain).unwrap();
    o.write(8 * BLOCK, &[9; 4096], &chain).unwrap();
    let mut runs = Vec::new();
    o.status(0, 64 * BLOCK, &chain, &mut |l, f| runs.push((l, f)));
    // A raw base is all data; the zeroed blocks read as zeros.
    assert_eq!(runs, vec![(4 * BLOCK, 0), (4 * BLOCK, 2), (56 * BLOCK, 0)]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A cache written all over with one target's bytes, dropped; the next target's cache gets
/// its chunks (no fault: `reused`) and, through random partial writes, zeroings and a write
/// of the short last block, reads exactly the image and its own writes, never a byte of the
/// first target's, also in the page bytes past the short block.
#[test]
fn a_chunk_from_a_dropped_cache_shows_none_of_its_bytes() {
    let dir = tmpdir("reuse");
    let size = 48 * BLOCK + 1000; // a short last block
    let (chain, mut model) = base(&dir, size);
    let limits = test_limits(&dir, 1 << 30, 1 << 30, 1 << 30);
    let pool = limits.pool.clone();
    let total = Arc::new(AtomicU64::new(0));
    let mut a = Overlay::new(size, limits.clone(), total.clone(), None);
    a.write(0, &vec![0xA5; size as usize], &chain).unwrap();
    let chunks = a.chunks.len() as u64;
    for c in &mut a.chunks {
        c.bytes_mut().fill(0xA5); // the pages' unused bytes too
    }
    drop(a);
    assert_eq!(pool.free_chunks(), (chunks as usize, 0), "the chunks went back warm");
    let mut b = Overlay::new(size, limits, total.clone(), None);
    let mut rng = crate::rng::XorShift::new(0x5eed);
    for _ in 0..400 {
        let off = rng.below(size);
        let len = (rng.below(3 * BLOCK) + 1).min(size - off);
        if rng.below(4) == 0 {
            b.zero(off, len, &chain).unwrap();
            model[off as usize..(off + len) as usize].fill(0);
        } else {
            let d: Vec<u8> = (0..len).map(|_| rng.next() as u8 | 1).collect();
            b.write(off, &d, &chain).unwrap();
            model[off as usize..(off + len) as usize].copy_from_slice(&d);
        }
    }
    b.write(size - 10, &[7; 10], &chain).unwrap();
    model[size as usize - 10..].fill(7);
    assert!(read_all(&b, &chain, 0, size) == model, "the second target reads only the image and its own writes");
    assert_eq!(pool.reused.load(Ordering::Relaxed), chunks, "every chunk it took was warm");
    let Some(Slot::Ram(last)) = b.map.get(size / BLOCK) else { panic!("the last block is in RAM") };
    assert!(b.page(last)[1000..].iter().all(|&x| x == 0), "past the short block the page is cleared");
    drop(b);
    assert_eq!(total.load(Ordering::Relaxed), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Free chunks stay warm only while the RAM tier has room for them; the rest go back to the
/// kernel and read as zeros when they are handed out again. A prefault hands out warm chunks.
#[test]
fn the_pool_keeps_warm_only_what_the_ram_tier_has_room_for() {
    let pool = ChunkPool::default();
    let mut taken: Vec<Chunk> = (0..4).map(|_| pool.take().unwrap()).collect();
    for c in &mut taken {
        c.bytes_mut().fill(0xEE);
    }
    assert_eq!(pool.fresh.load(Ordering::Relaxed), 4);
    pool.give_back(taken, 2 * CHUNK_BYTES as u64);
    assert_eq!(pool.free_chunks(), (2, 2));
    assert_eq!(pool.warm_bytes.load(Ordering::Relaxed), 2 * CHUNK_BYTES as u64);
    let warm: Vec<Chunk> = (0..2).map(|_| pool.take().unwrap()).collect();
    assert!(warm.iter().all(|c| c.bytes()[0] == 0xEE), "warm chunks keep their pages");
    let cold = pool.take().unwrap();
    assert!(cold.bytes().iter().all(|&x| x == 0), "a released chunk's pages were given back to the kernel");
    assert_eq!((pool.reused.load(Ordering::Relaxed), pool.fresh.load(Ordering::Relaxed)), (2, 5));

    let pre = ChunkPool::default();
    assert_eq!(pre.prefault(CHUNK_BYTES as u64 * 3 + 1).unwrap(), 4 * CHUNK_BYTES as u64, "whole chunks");
    let c = pre.take().unwrap();
    assert_eq!(pre.reused.load(Ordering::Relaxed), 1);
    assert!(c.bytes().iter().all(|&x| x == 0), "a prefaulted chunk is zeroed memory");
    assert_eq!(pre.mapped_bytes.load(Ordering::Relaxed), 4 * CHUNK_BYTES as u64);
}

/// A reply's bytes through `read_reply` (what the sessions send): the bytes, and how many of
/// them were copied into the scratch.
fn reply_all(o: &mut Overlay, chain: &Chain, off: u64, len: u64, mapped: bool) -> (Vec<u8>, usize) {
    let (mut scratch, mut pin, mut pieces) = (Vec::new(), None, Vec::new());
    assert_eq!(o.read_reply(off, len, chain, &mut scratch, usize::MAX, &mut pin, mapped, &mut pieces).unwrap(), len);
    let mut out = Vec::new();
    for p in &pieces {
        match *p {
            // Safety: the overlay is alive and pinned; nothing wrote since.
            ReplyPiece::Mem(ptr, n) => out.extend_from_slice(unsafe { std::slice::from_raw_parts(ptr, n) }),
            ReplyPiece::Scratch(s, n) => out.extend_from_slice(&scratch[s as usize..(s + n) as usize]),
            ReplyPiece::Zero(n) => out.extend(std::iter::repeat_n(0u8, n as usize)),
        }
    }
    if let Some(e) = pin {
        o.unpin(e);
    }
    (out, scratch.len())
}

/// With no RAM tier every written block lives in the overflow file: mapped replies point into
/// the file's mappings (nothing copied, adjacent slots merged into one piece), unmapped ones
/// and an overlay with `map_overflow` off copy with pread; all of them equal the model.
#[test]
fn overflow_replies_point_into_the_file_mapping() {
    let dir = tmpdir("mapped");
    let size = 4 << 20 | 1536; // a short last block
    let (chain, content) = base(&dir, size);
    for map_overflow in [true, false] {
        let mut model = content.clone();
        let limits = Limits { map_overflow, ..test_limits(&dir, 0, 1 << 30, 1 << 30) };
        let mut o = Overlay::new(size, limits, Arc::new(AtomicU64::new(0)), None);
        let mut rng = crate::rng::XorShift::new(0x5eed_0f11e);
        for round in 0..2000 {
            let Some((off, len)) = random_round(&mut o, &chain, &mut model, &mut rng, 40) else { continue };
            for mapped in [true, false] {
                let (got, copied) = reply_all(&mut o, &chain, off, len, mapped);
                assert!(got == model[off as usize..(off + len) as usize], "round {round}: reply of {len} at {off} differs");
                if mapped && map_overflow {
                    assert_eq!(copied, 0, "round {round}: a mapped reply copies nothing");
                }
            }
        }
        assert!(o.file_slots > 100 && o.ram_pages == 0, "{} slots", o.file_slots);
        assert_eq!(o.has_pages(), map_overflow, "mapped slots are pinned like pages");
        let (all, copied) = reply_all(&mut o, &chain, 0, size, true);
        assert!(all == model, "the whole disk equals the model");
        assert_eq!(copied == 0, map_overflow, "mapped, nothing copied; without the mappings, pread ({copied} bytes)");
        // Consecutive slots are one piece: 64 blocks written in one go to a new cache read as
        // one address range.
        let limits = Limits { map_overflow, ..test_limits(&dir, 0, 1 << 30, 1 << 30) };
        let mut o = Overlay::new(size, limits, Arc::new(AtomicU64::new(0)), None);
        o.write(BLOCK, &vec![0x5a; 64 * BLOCK as usize], &chain).unwrap();
        let (mut scratch, mut pin, mut pieces) = (Vec::new(), None, Vec::new());
        o.read_reply(BLOCK, 64 * BLOCK, &chain, &mut scratch, usize::MAX, &mut pin, true, &mut pieces).unwrap();
        assert_eq!(pieces.len(), 1, "one piece: {pieces:?}");
        assert!(
            matches!(pieces[0], ReplyPiece::Mem(..)) == map_overflow && scratch.len() == if map_overflow { 0 } else { 64 * BLOCK as usize }
        );
        assert_eq!(pin.is_some(), map_overflow, "pinned only when the reply points into a mapping");
        if let Some(e) = pin {
            o.unpin(e);
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// As a RAM page: an overflow slot a reply points into is not reused while the reply is in
/// flight (a TRIM then a write of another block get another slot), and is once it is out.
#[test]
fn a_mapped_slot_under_a_reply_in_flight_is_not_reused() {
    let dir = tmpdir("pin-file");
    let (chain, _) = base(&dir, 64 * BLOCK);
    let mut o = Overlay::new(64 * BLOCK, test_limits(&dir, 0, 1 << 20, 1 << 20), Arc::new(AtomicU64::new(0)), None);
    o.write(0, &[0xaa; BLOCK as usize], &chain).unwrap();
    let (mut scratch, mut pin, mut pieces) = (Vec::new(), None, Vec::new());
    o.read_reply(0, BLOCK, &chain, &mut scratch, usize::MAX, &mut pin, true, &mut pieces).unwrap();
    let [ReplyPiece::Mem(ptr, n)] = pieces[..] else { panic!("one mapped piece: {pieces:?}") };
    assert_eq!(n, BLOCK as usize);
    o.zero(0, BLOCK, &chain).unwrap(); // TRIM X ...
    o.write(BLOCK, &[0xbb; BLOCK as usize], &chain).unwrap(); // ... then write Y
                                                              // Safety: the mapping lives as long as the overlay.
    let seen = unsafe { std::slice::from_raw_parts(ptr, n) };
    assert!(seen.iter().all(|&b| b == 0xaa), "the reply's slot still holds X");
    assert_eq!(o.file_slots, 2, "Y got a new slot");
    o.unpin(pin.take().unwrap());
    o.write(2 * BLOCK, &[0xcc; BLOCK as usize], &chain).unwrap();
    assert_eq!(o.file_slots, 2, "once the reply is out the slot is reused");
    assert!(seen.iter().all(|&b| b == 0xcc));
    std::fs::remove_dir_all(&dir).unwrap();
}
