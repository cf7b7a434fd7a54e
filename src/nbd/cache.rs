//! Per-target write caches (PVS "cache on server" / "RAM with overflow to disk"); the
//! registry that hands them to connections is `nbd::target`.
//!
//! A target's overlay maps 4 KiB blocks of the virtual disk to where the target's own version
//! of the block lives: a page of RAM (up to `nbd.cache_ram_bytes_per_target`) or a slot in an
//! unlinked sparse overflow file in `nbd.cache_dir`; blocks zeroed by WRITE_ZEROES/TRIM are kept
//! as ranges (coalesced, so a whole-disk TRIM is one entry; a write inside one splits it), each
//! counted as [`RANGE_BYTES`] in the cache figures and bounded by
//! `nbd.cache_zero_ranges_per_target_max`. Blocks in neither read from the shared image chain,
//! which nobody writes. A partial write to a
//! block first copies the block from below (copy on write), so the cache never holds a block
//! it cannot serve whole.
//!
//! Memory: RAM pages come from 256 KiB chunks of the registry's [`ChunkPool`] that go back to it
//! only with the overlay, so a page handed to the kernel for a send stays this target's while the
//! connection (which holds the target) lives; the pool hands them to later boots already faulted
//! in. A block that is zeroed gives its page back to a per-target free list, but not while a reply
//! that may point at it is being sent: a connection pins the overlay's free epoch
//! ([`Overlay::pin`]) before its batch takes page pointers and unpins it when the send is complete;
//! a page freed while pins at or before its epoch are held waits in a quarantine, so a later write
//! cannot put another block's bytes under a reply in flight. Every page and file slot counts
//! against the per-target and the global limit; a write that would go past either fails whole with
//! ENOSPC before anything is changed.
//!
//! Overflow writes are plain pwrite on the worker thread (an error, ENOSPC of the disk, comes
//! back as one): the overflow file is normally in the page cache, and the RAM tier is sized so
//! the hot set stays in memory. Replies send overflow blocks from read-only shared mappings of
//! the file, [`MAP_WINDOW_SLOTS`] slots (1 GiB) each, mapped as the file grows into them (at
//! most [`MAP_WINDOWS_MAX`] in the process)
//! (`nbd.cache_overflow_mapped`, default on): the kernel copies them once, into the socket, as
//! it does RAM pages, instead of a pread into the connection's scratch and a second copy from
//! it (pread was 9% of the iSCSI mix's CPU, perf/README.md). Only the kernel reads those
//! mappings (sendmsg): a page it cannot read fails the send with EFAULT, never a SIGBUS in
//! the worker; a reply whose bytes the server itself reads (a data digest, COMPARE AND WRITE)
//! copies them with pread. Mapped slots are pinned and quarantined like RAM pages, and only
//! bytes below the file's end come from a mapping. Where a window cannot be mapped, its slots
//! are read with pread.
//!
//! In private mode the overlay is the read side of a session that also writes every changed
//! block through to a new differencing version file (image::write::Writer).

mod blocks;
mod file;
mod pool;
mod read;

use super::target::private_version;
use crate::image::write::Writer;
use crate::image::{Chain, Segment};
use file::overflow_file;
pub use file::{overflow_mappings, MAP_WINDOWS_MAX, MAP_WINDOW_SLOTS};
pub use pool::ChunkPool;
use pool::{Chunk, CHUNK_PAGES};
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub const BLOCK: u64 = 4096;
/// What one zeroed range is counted as in the cache budgets (a generous figure for a B-tree
/// entry of two u64 and its share of the node).
pub const RANGE_BYTES: u64 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Ram(u32),
    File(u32),
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheError {
    /// A cache limit (per target or total) would be exceeded, or the overflow file failed.
    NoSpace(String),
    /// The private-mode version file could not be written.
    Io(String),
}

impl std::fmt::Display for CacheError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheError::NoSpace(s) | CacheError::Io(s) => f.write_str(s),
        }
    }
}

/// What a read of the overlay yields, in disk order.
pub enum Piece<'a> {
    /// Bytes that stay valid while the target lives (image mapping, a RAM page, a mapped
    /// overflow slot).
    Data(&'a [u8]),
    /// Bytes copied into the caller's buffer (overflow file), at this range of it.
    Copied(std::ops::Range<usize>),
    Zero(u64),
}

/// A piece of a reply read by [`Overlay::read_reply`], kept while the overlay is locked and
/// turned into batch pieces once it is known whether the image was found damaged meanwhile.
#[derive(Clone, Copy, Debug)]
pub enum ReplyPiece {
    Mem(*const u8, usize),
    /// `len` bytes of the session's scratch from `off` (an overflow-file block's copy).
    Scratch(u32, u32),
    Zero(u64),
}

impl ReplyPiece {
    pub fn len(&self) -> u64 {
        match *self {
            ReplyPiece::Mem(_, n) => n as u64,
            ReplyPiece::Scratch(_, n) => n as u64,
            ReplyPiece::Zero(n) => n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The part `[from, from + n)` of the piece.
    pub fn cut(&self, from: u64, n: u64) -> ReplyPiece {
        match *self {
            // Safety: from + n lies inside the piece.
            ReplyPiece::Mem(p, _) => ReplyPiece::Mem(unsafe { p.add(from as usize) }, n as usize),
            ReplyPiece::Scratch(o, _) => ReplyPiece::Scratch(o + from as u32, n as u32),
            ReplyPiece::Zero(_) => ReplyPiece::Zero(n),
        }
    }
}

/// What [`Overlay::reserve`] set aside for one write: free slots of the overlay and new bytes
/// of the budgets. Must go back with [`Overlay::unreserve`] when the write ends.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reservation {
    free: u32,
    bytes: u64,
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub ram_bytes: u64,
    pub target_bytes_max: u64,
    pub total_bytes_max: u64,
    pub dir: PathBuf,
    /// Most zeroed ranges one overlay keeps (nbd.cache_zero_ranges_per_target_max).
    pub zero_ranges_max: usize,
    /// RAM pages of all overlays (nbd.cache_ram_bytes_total_max): beyond it new blocks go to
    /// the overflow file.
    pub ram_total_max: u64,
    pub ram_total: Arc<AtomicU64>,
    /// Where RAM pages come from and go back to (the registry's, shared by all overlays).
    pub pool: Arc<ChunkPool>,
    /// Replies may send overflow blocks from mappings of the file (nbd.cache_overflow_mapped).
    pub map_overflow: bool,
}

pub struct Overlay {
    map: blocks::Blocks,
    /// Zeroed blocks: start -> end (exclusive), disjoint, not adjacent, no block also in `map`.
    zeros: BTreeMap<u64, u64>,
    /// Lowest and highest block ever put in `map` (lo > hi while none): a read outside this
    /// span, most reads of a boot (the system files; writes go to pagefile, registry, logs),
    /// goes straight to the image without walking the map. Not narrowed when blocks are freed.
    span: (u64, u64),
    chunks: Vec<Chunk>,
    ram_pages: u32,
    free_ram: Vec<u32>,
    /// Free epoch: goes up by one each time a page is freed while replies hold pins.
    epoch: u64,
    /// Pins held by batches in flight: epoch -> count.
    pins: BTreeMap<u64, u32>,
    /// Slots (RAM pages, mapped overflow slots) freed at an epoch some pin may still see
    /// (epoch, slot), oldest first.
    quarantine: VecDeque<(u64, Slot)>,
    file: Option<File>,
    /// Read-only mappings of the overflow file, window `w` covering slots
    /// `w * MAP_WINDOW_SLOTS..`; None where mapping failed (those slots are read with pread).
    file_maps: Vec<Option<memmap2::Mmap>>,
    /// The overflow file's length: the furthest end of a write that succeeded. A slot past it
    /// (its write failed) is read with pread, which reports the short read, where the mapping
    /// would fail the send (EFAULT); below it both read the same bytes (zeros in a hole).
    file_len: u64,
    file_slots: u32,
    free_file: Vec<u32>,
    /// Free slots promised to reservations of writes in progress.
    promised_free: u32,
    /// New bytes reserved by writes in progress (counted in `total` too).
    reserved_bytes: u64,
    limits: Limits,
    total: Arc<AtomicU64>,
    size: u64,
    /// Private mode: every changed block is also written here.
    persist: Option<Writer>,
    /// Private mode before the first write: the vdisk whose new version that write creates (a
    /// session that only reads leaves no file behind).
    pending_version: Option<Arc<crate::config::Vdisk>>,
    /// Private mode: the version file, once made.
    pub version_file: Option<PathBuf>,
    pub bytes_written: u64,
    /// The global RAM cap was met (logged once per overlay).
    ram_capped: bool,
}

impl Overlay {
    pub fn new(size: u64, limits: Limits, total: Arc<AtomicU64>, persist: Option<Writer>) -> Overlay {
        Overlay {
            map: Default::default(),
            zeros: BTreeMap::new(),
            span: (u64::MAX, 0),
            chunks: Vec::new(),
            ram_pages: 0,
            free_ram: Vec::new(),
            epoch: 0,
            pins: BTreeMap::new(),
            quarantine: VecDeque::new(),
            file: None,
            file_maps: Vec::new(),
            file_len: 0,
            file_slots: 0,
            free_file: Vec::new(),
            promised_free: 0,
            reserved_bytes: 0,
            limits,
            total,
            size,
            persist,
            pending_version: None,
            version_file: None,
            bytes_written: 0,
            ram_capped: false,
        }
    }

    /// Private mode: the first write (or zeroing) creates a new version of `vdisk`.
    pub fn version_on_first_write(&mut self, vdisk: Arc<crate::config::Vdisk>) {
        self.pending_version = Some(vdisk);
    }

    fn persist_ready(&mut self) -> Result<(), CacheError> {
        if let Some(vd) = self.pending_version.take() {
            let (w, p) = private_version(&vd).map_err(CacheError::Io)?;
            self.persist = Some(w);
            self.version_file = Some(p);
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty() && self.zeros.is_empty()
    }

    /// Bytes of RAM and overflow file this overlay holds, and its zeroed ranges.
    pub fn allocated_bytes(&self) -> u64 {
        (self.ram_pages as u64 + self.file_slots as u64) * BLOCK + self.zeros.len() as u64 * RANGE_BYTES
    }

    pub fn zero_ranges(&self) -> usize {
        self.zeros.len()
    }

    fn is_zeroed(&self, b: u64) -> bool {
        self.zeros.range(..=b).next_back().is_some_and(|(_, &e)| e > b)
    }

    /// Whether a zeroed range touches or overlaps blocks `first..end` (a new one would merge).
    fn zeros_touch(&self, first: u64, end: u64) -> bool {
        self.zeros.range(..=end).next_back().is_some_and(|(_, &e)| e >= first)
    }

    /// Map entries and zeroed ranges over blocks `first..=last`, in disk order, clipped:
    /// (first block, end block, the slot of a single block or None for zeros).
    fn extents(&self, first: u64, last: u64) -> impl Iterator<Item = (u64, u64, Option<Slot>)> + '_ {
        let head = self.zeros.range(..first).next_back().filter(|&(_, &e)| e > first).map(|(&s, &e)| (s, e));
        let mut zs = head
            .into_iter()
            .chain(self.zeros.range(first..=last).map(|(&s, &e)| (s, e)))
            .map(move |(s, e)| (s.max(first), e.min(last + 1), None))
            .peekable();
        let mut ms = self.map.range(first, last).map(|(b, s)| (b, b + 1, Some(s))).peekable();
        std::iter::from_fn(move || match (ms.peek(), zs.peek()) {
            (Some(m), Some(z)) if m.0 < z.0 => ms.next(),
            (Some(_), None) => ms.next(),
            _ => zs.next(),
        })
    }

    /// Keeps the global count in step with the number of zeroed ranges (was `before`). Ranges
    /// are counted but never refused for bytes (a TRIM at the byte limit must still work):
    /// their number is what is bounded.
    fn ranges_changed(&mut self, before: usize) {
        let after = self.zeros.len();
        if after > before {
            self.total.fetch_add((after - before) as u64 * RANGE_BYTES, Ordering::AcqRel);
        } else if before > after {
            self.total.fetch_sub((before - after) as u64 * RANGE_BYTES, Ordering::AcqRel);
        }
    }

    /// Block `b` is no longer zeroed (it is about to get a slot): its range is split.
    fn unzero(&mut self, b: u64) {
        let before = self.zeros.len();
        if let Some((&s, &e)) = self.zeros.range(..=b).next_back().filter(|&(_, &e)| e > b) {
            self.zeros.remove(&s);
            if s < b {
                self.zeros.insert(s, b);
            }
            if b + 1 < e {
                self.zeros.insert(b + 1, e);
            }
        }
        self.ranges_changed(before);
    }

    /// Blocks `first..end` become zero: their slots are freed and the range merges with its
    /// neighbours.
    fn add_zeros(&mut self, first: u64, end: u64) {
        let before = self.zeros.len();
        let held: Vec<u64> = if end > first { self.map.range(first, end - 1).map(|(b, _)| b).collect() } else { Vec::new() };
        for b in held {
            let s = self.map.remove(b).expect("just listed");
            self.release(s);
        }
        let (mut s0, mut e0) = (first, end);
        if let Some((&s, &e)) = self.zeros.range(..first).next_back().filter(|&(_, &e)| e >= first) {
            self.zeros.remove(&s);
            s0 = s;
            e0 = e0.max(e);
        }
        let inside: Vec<u64> = self.zeros.range(first..=end).map(|(&s, _)| s).collect();
        for s in inside {
            e0 = e0.max(self.zeros.remove(&s).expect("just listed"));
        }
        self.zeros.insert(s0, e0);
        self.ranges_changed(before);
    }

    pub fn ram_bytes(&self) -> u64 {
        self.ram_pages as u64 * BLOCK
    }

    fn page(&self, p: u32) -> &[u8] {
        let (c, i) = ((p / CHUNK_PAGES) as usize, (p % CHUNK_PAGES) as usize * BLOCK as usize);
        &self.chunks[c].bytes()[i..i + BLOCK as usize]
    }

    fn page_mut(&mut self, p: u32) -> &mut [u8] {
        let (c, i) = ((p / CHUNK_PAGES) as usize, (p % CHUNK_PAGES) as usize * BLOCK as usize);
        &mut self.chunks[c].bytes_mut()[i..i + BLOCK as usize]
    }

    /// Bytes of the block at `b` that lie inside the disk (the last block may be short).
    fn widen(&mut self, first: u64, last: u64) {
        self.span = (self.span.0.min(first), self.span.1.max(last));
    }

    /// Whether blocks `first..=last` may have an entry in the map.
    fn may_hold(&self, first: u64, last: u64) -> bool {
        first <= self.span.1 && last >= self.span.0
    }

    fn block_len(&self, b: u64) -> usize {
        (self.size - b * BLOCK).min(BLOCK) as usize
    }

    /// Reserves, for a write over `[off, off + len)`, every slot it will need: free slots of
    /// this overlay and new bytes of the per-target and the global budget, the global one taken
    /// with a compare-and-swap, so two writes racing for the last bytes cannot both pass and
    /// then fail half way. The write draws on the reservation ([`Overlay::write_reserved`]);
    /// what it did not use goes back with [`Overlay::unreserve`].
    pub fn reserve(&mut self, off: u64, len: u64) -> Result<Reservation, CacheError> {
        self.reserve_for(off, len, false)
    }

    /// `zeroing`: the range is written with zeros (blocks already zero are left alone).
    fn reserve_for(&mut self, off: u64, len: u64, zeroing: bool) -> Result<Reservation, CacheError> {
        if len == 0 {
            return Ok(Reservation::default());
        }
        let (first, last) = (off / BLOCK, (off + len - 1) / BLOCK);
        let backed = self.map.range(first, last).count() as u64;
        let want = last - first + 1 - backed;
        let spare = (self.free_ram.len() + self.free_file.len()) as u64 - self.promised_free as u64;
        let free = want.min(spare);
        let grow = (want - free) * BLOCK;
        // Data written into the middle of a zeroed range splits it: one range more.
        if !zeroing && self.zeros.range(..=first).next_back().is_some_and(|(&s, &e)| s < first && e > last + 1) {
            self.ranges_room()?;
        }
        self.take_bytes(grow)?;
        self.promised_free += free as u32;
        self.reserved_bytes += grow;
        Ok(Reservation { free: free as u32, bytes: grow })
    }

    /// Room for one more zeroed range, or the refusal.
    fn ranges_room(&self) -> Result<(), CacheError> {
        if self.zeros.len() >= self.limits.zero_ranges_max {
            return Err(CacheError::NoSpace(format!(
                "target write cache holds {} zeroed ranges, nbd.cache_zero_ranges_per_target_max {}: zero larger, adjacent ranges",
                self.zeros.len(),
                self.limits.zero_ranges_max
            )));
        }
        Ok(())
    }

    /// Gives back what a write did not use of its reservation.
    pub fn unreserve(&mut self, r: Reservation) {
        self.promised_free -= r.free;
        self.reserved_bytes -= r.bytes;
        if r.bytes > 0 {
            self.total.fetch_sub(r.bytes, Ordering::AcqRel);
        }
    }

    /// Takes `n` new bytes of the per-target and the global budget, or refuses.
    fn take_bytes(&self, n: u64) -> Result<(), CacheError> {
        if n == 0 {
            return Ok(());
        }
        let held = self.allocated_bytes() + self.reserved_bytes;
        if held + n > self.limits.target_bytes_max {
            return Err(CacheError::NoSpace(format!(
                "target write cache full: {held} of nbd.cache_bytes_per_target_max {} in use or reserved, {n} more needed",
                self.limits.target_bytes_max
            )));
        }
        let max = self.limits.total_bytes_max;
        self.total.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| (t + n <= max).then_some(t + n)).map(|_| ()).map_err(|t| {
            CacheError::NoSpace(format!("write caches full: {t} of nbd.cache_bytes_total_max {max} in use or reserved, {n} more needed"))
        })
    }

    /// One more RAM page in the global RAM budget, or false (the block goes to the file).
    fn take_ram(&mut self) -> bool {
        let max = self.limits.ram_total_max;
        let ok =
            self.limits.ram_total.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| (t + BLOCK <= max).then_some(t + BLOCK)).is_ok();
        if !ok && !self.ram_capped {
            self.ram_capped = true;
            tracing::info!(
                ram_bytes = self.ram_bytes(),
                "write caches hold nbd.cache_ram_bytes_total_max {max} of RAM: this target's new blocks go to its overflow file"
            );
        }
        ok
    }

    /// A slot for a block that has none: from the reservation first, then (a concurrent TRIM
    /// freed blocks of the range after it was reserved) from what is left.
    fn alloc(&mut self, r: &mut Reservation) -> Result<Slot, CacheError> {
        let spare = self.free_ram.len() + self.free_file.len() > self.promised_free as usize;
        if r.free > 0 || spare {
            if r.free > 0 {
                r.free -= 1;
                self.promised_free -= 1;
            }
            return Ok(match self.free_ram.pop() {
                Some(p) => Slot::Ram(p),
                None => Slot::File(self.free_file.pop().expect("promised free slots exist")),
            });
        }
        let from_reservation = r.bytes >= BLOCK;
        if from_reservation {
            r.bytes -= BLOCK;
            self.reserved_bytes -= BLOCK;
        } else {
            self.take_bytes(BLOCK)?;
        }
        if (self.ram_pages as u64 + 1) * BLOCK <= self.limits.ram_bytes && self.take_ram() {
            let p = self.ram_pages;
            let room = p % CHUNK_PAGES != 0
                || match self.limits.pool.take() {
                    Some(c) => {
                        self.chunks.push(c);
                        true
                    }
                    None => {
                        // No memory could be mapped: this block goes to the overflow file.
                        self.limits.ram_total.fetch_sub(BLOCK, Ordering::AcqRel);
                        false
                    }
                };
            if room {
                self.ram_pages += 1;
                return Ok(Slot::Ram(p));
            }
        }
        if self.file.is_none() {
            match overflow_file(&self.limits.dir) {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    if from_reservation {
                        r.bytes += BLOCK;
                        self.reserved_bytes += BLOCK;
                    } else {
                        self.total.fetch_sub(BLOCK, Ordering::AcqRel);
                    }
                    return Err(CacheError::NoSpace(format!("cannot create an overflow file in {}: {e}", self.limits.dir.display())));
                }
            }
        }
        let slot = self.file_slots;
        self.file_slots += 1;
        if self.limits.map_overflow && slot % MAP_WINDOW_SLOTS == 0 {
            self.map_window(slot / MAP_WINDOW_SLOTS);
        }
        Ok(Slot::File(slot))
    }

    /// Pins the pages a reply is about to point at: none of the pages this overlay holds now is
    /// reused before [`Overlay::unpin`] with the returned epoch (the send completed).
    pub fn pin(&mut self) -> u64 {
        *self.pins.entry(self.epoch).or_default() += 1;
        self.epoch
    }

    /// A reply pinned at `epoch` is out: pages freed since then may be reused, unless an older
    /// pin is still held.
    pub fn unpin(&mut self, epoch: u64) {
        if let Some(n) = self.pins.get_mut(&epoch) {
            *n -= 1;
            if *n == 0 {
                self.pins.remove(&epoch);
            }
        }
        let oldest = self.pins.keys().next().copied().unwrap_or(u64::MAX);
        while let Some(&(_, s)) = self.quarantine.front().filter(|(e, _)| *e < oldest) {
            self.quarantine.pop_front();
            self.free_slot(s);
        }
    }

    /// Whether a read may point at cache pages or mapped overflow slots (a reply then pins
    /// them).
    pub fn has_pages(&self) -> bool {
        self.ram_pages > 0 || self.file_maps.iter().any(Option::is_some)
    }

    fn release(&mut self, s: Slot) {
        let pointed = match s {
            Slot::Ram(_) => true,
            Slot::File(f) => self.window(f).is_some(),
        };
        if pointed && !self.pins.is_empty() {
            self.quarantine.push_back((self.epoch, s));
            self.epoch += 1;
        } else {
            self.free_slot(s);
        }
    }

    fn free_slot(&mut self, s: Slot) {
        match s {
            Slot::Ram(p) => self.free_ram.push(p),
            Slot::File(f) => self.free_file.push(f),
        }
    }

    /// Writes `data` at `off` (any alignment), whole or not at all when a limit is in the way.
    /// The range must lie inside the disk.
    pub fn write(&mut self, off: u64, data: &[u8], base: &Chain) -> Result<(), CacheError> {
        let mut r = self.reserve(off, data.len() as u64)?;
        if let Err(e) = self.persist_ready() {
            self.unreserve(r);
            return Err(e);
        }
        let res = self.apply(off, data.len() as u64, Some(data), base, &mut r);
        self.unreserve(r);
        res
    }

    /// Writes a part of a write whose whole range was reserved (a WRITE whose payload arrives
    /// in pieces), drawing on `r`.
    pub fn write_reserved(&mut self, off: u64, data: &[u8], base: &Chain, r: &mut Reservation) -> Result<(), CacheError> {
        // Private mode: the session's first write makes its version file.
        self.persist_ready()?;
        self.apply(off, data.len() as u64, Some(data), base, r)
    }

    /// WRITE_ZEROES and TRIM: whole blocks become one zeroed range (their storage is freed),
    /// the edges of the range are written with zeros. Refused whole (ENOSPC) when the edges
    /// find no room or the range would be one too many.
    pub fn zero(&mut self, off: u64, len: u64, base: &Chain) -> Result<(), CacheError> {
        self.persist_ready()?;
        let end = off + len;
        // A short last block is whole when the range reaches the end of the disk.
        let end_full = if end == self.size { end.div_ceil(BLOCK) } else { end / BLOCK };
        let first_full = off.div_ceil(BLOCK);
        if first_full >= end_full {
            let mut r = self.reserve_for(off, len, true)?;
            let res = self.apply(off, len, None, base, &mut r);
            self.unreserve(r);
            return res;
        }
        let head = first_full * BLOCK - off;
        let tail = end.saturating_sub(end_full * BLOCK);
        let adds = !self.zeros_touch(first_full, end_full);
        if adds {
            self.ranges_room()?;
        }
        // Both edges reserved before either is written.
        let mut r = self.reserve_for(off, head, true)?;
        match self.reserve_for(end_full * BLOCK, tail, true) {
            Ok(t) => {
                r.free += t.free;
                r.bytes += t.bytes;
            }
            Err(e) => {
                self.unreserve(r);
                return Err(e);
            }
        }
        let res = self.apply(off, head, None, base, &mut r).and_then(|()| self.apply(end_full * BLOCK, tail, None, base, &mut r));
        if res.is_ok() {
            self.widen(first_full, end_full - 1);
            self.add_zeros(first_full, end_full);
        }
        self.unreserve(r);
        res?;
        if let Some(w) = self.persist.as_mut() {
            let zeros = [0u8; BLOCK as usize];
            for b in first_full..end_full {
                let n = (self.size - b * BLOCK).min(BLOCK) as usize;
                w.write(b * BLOCK, &zeros[..n]).map_err(|e| CacheError::Io(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Puts `data` (or zeros) over `[off, off + len)`, block by block.
    fn apply(&mut self, off: u64, len: u64, data: Option<&[u8]>, base: &Chain, r: &mut Reservation) -> Result<(), CacheError> {
        if len == 0 {
            return Ok(());
        }
        let mut block = [0u8; BLOCK as usize];
        let mut at = off;
        let end = off + len;
        // Whole blocks bound for consecutive overflow slots go out in one pwrite:
        // (first slot, blocks, start in `data`).
        let mut run: Option<(u32, u32, usize)> = None;
        while at < end {
            let b = at / BLOCK;
            let in_block = (at - b * BLOCK) as usize;
            let n = ((b + 1) * BLOCK).min(end) - at;
            let src_range = (at - off) as usize..(at - off + n) as usize;
            let blen = self.block_len(b);
            let whole = in_block == 0 && n as usize == blen;
            let slot = match self.map.get(b) {
                Some(s) => s,
                None => {
                    let zeroed = self.is_zeroed(b);
                    if zeroed && data.is_none() {
                        at += n; // zeros onto a zeroed block: nothing changes
                        continue;
                    }
                    let s = self.alloc(r)?;
                    if let (Slot::Ram(p), true) = (s, blen < BLOCK as usize) {
                        // A page may come from another overlay (the pool): past a short last
                        // block nothing writes it, so it is cleared (no read reaches it either).
                        self.page_mut(p)[blen..].fill(0);
                    }
                    if !whole {
                        // Copy on write: the block's current content first.
                        block[..blen].fill(0);
                        if !zeroed {
                            base.read_into(b * BLOCK, &mut block[..blen]).expect("block inside the disk");
                        }
                        self.store(s, 0, &block[..blen])?;
                    }
                    if zeroed {
                        self.unzero(b);
                    }
                    self.widen(b, b);
                    self.map.insert(b, s);
                    s
                }
            };
            match (data, slot) {
                (Some(_), Slot::File(f)) if whole && blen == BLOCK as usize && self.persist.is_none() => {
                    run = match run {
                        Some((first, k, src)) if first + k == f && src + k as usize * BLOCK as usize == src_range.start => {
                            Some((first, k + 1, src))
                        }
                        other => {
                            self.flush_run(other, data)?;
                            Some((f, 1, src_range.start))
                        }
                    };
                }
                (Some(d), _) => {
                    self.flush_run(run.take(), data)?;
                    self.store(slot, in_block, &d[src_range])?
                }
                (None, _) => {
                    block[..n as usize].fill(0);
                    self.store(slot, in_block, &block[..n as usize])?
                }
            }
            if self.persist.is_some() {
                self.load(slot, &mut block[..blen])?;
                if let Some(w) = self.persist.as_mut() {
                    w.write(b * BLOCK, &block[..blen]).map_err(|e| CacheError::Io(e.to_string()))?;
                }
            }
            at += n;
        }
        self.flush_run(run, data)?;
        self.bytes_written += len;
        Ok(())
    }

    fn flush_run(&mut self, run: Option<(u32, u32, usize)>, data: Option<&[u8]>) -> Result<(), CacheError> {
        match (run, data) {
            (Some((first, k, src)), Some(d)) => self.file_write(first, 0, &d[src..src + k as usize * BLOCK as usize]),
            _ => Ok(()),
        }
    }

    fn store(&mut self, s: Slot, at: usize, d: &[u8]) -> Result<(), CacheError> {
        match s {
            Slot::Ram(p) => {
                self.page_mut(p)[at..at + d.len()].copy_from_slice(d);
                Ok(())
            }
            Slot::File(f) => self.file_write(f, at, d),
        }
    }

    fn load(&self, s: Slot, buf: &mut [u8]) -> Result<(), CacheError> {
        match s {
            Slot::Ram(p) => {
                buf.copy_from_slice(&self.page(p)[..buf.len()]);
                Ok(())
            }
            Slot::File(f) => self.file_read(f, buf),
        }
    }

    /// Private mode: makes the version file durable (FLUSH, FUA).
    pub fn sync(&mut self) -> Result<(), CacheError> {
        match self.persist.as_mut() {
            Some(w) => w.sync().map_err(|e| CacheError::Io(e.to_string())),
            None => Ok(()),
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        self.unmap_windows();
        self.total.fetch_sub(self.allocated_bytes() + self.reserved_bytes, Ordering::AcqRel);
        let in_use = self.limits.ram_total.fetch_sub(self.ram_bytes(), Ordering::AcqRel) - self.ram_bytes();
        // Every send that pointed at these pages is complete: the connections that made them
        // held this overlay (through its target) until the kernel gave their buffers back.
        self.limits.pool.give_back(std::mem::take(&mut self.chunks), self.limits.ram_total_max.saturating_sub(in_use));
    }
}

#[cfg(test)]
mod tests;
