//! Per-target write caches (PVS "cache on server" / "RAM with overflow to disk"), and the
//! registry that hands them to connections.
//!
//! A target's overlay maps 4 KiB blocks of the virtual disk to where the target's own version
//! of the block lives: a page of RAM (up to `nbd.cache_ram_bytes_per_target`), a slot in an
//! unlinked sparse overflow file in `nbd.cache_dir`, or "zero" (WRITE_ZEROES/TRIM). Blocks not
//! in the map read from the shared image chain, which nobody writes. A partial write to a
//! block first copies the block from below (copy on write), so the cache never holds a block
//! it cannot serve whole.
//!
//! Memory: RAM pages come from 1 MiB chunks that are only freed with the overlay, so a page
//! handed to the kernel for a send stays valid while the connection (which holds the target)
//! lives, whatever later requests do. A block that is zeroed gives its page back to a per-target
//! free list. Every page and file slot counts against the per-target and the global limit;
//! a write that would go past either fails whole with ENOSPC before anything is changed.
//!
//! Overflow reads and writes are plain pread/pwrite on the worker thread: the overflow file is
//! normally in the page cache, and the RAM tier is sized so the hot set stays in memory.
//!
//! In private mode the overlay is the read side of a session that also writes every changed
//! block through to a new differencing version file (image::write::Writer).

use crate::image::write::Writer;
use crate::image::{Chain, Segment};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BLOCK: u64 = 4096;
const PAGES_PER_CHUNK: u32 = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Ram(u32),
    File(u32),
    Zero,
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
    /// Bytes that stay valid while the target lives (image mapping or a RAM page).
    Data(&'a [u8]),
    /// Bytes copied into the caller's buffer (overflow file), at this range of it.
    Copied(std::ops::Range<usize>),
    Zero(u64),
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub ram_bytes: u64,
    pub target_bytes_max: u64,
    pub total_bytes_max: u64,
    pub dir: PathBuf,
}

pub struct Overlay {
    map: BTreeMap<u64, Slot>,
    /// Lowest and highest block ever put in `map` (lo > hi while none): a read outside this
    /// span, most reads of a boot (the system files; writes go to pagefile, registry, logs),
    /// goes straight to the image without walking the map. Not narrowed when blocks are freed.
    span: (u64, u64),
    chunks: Vec<Box<[u8]>>,
    ram_pages: u32,
    free_ram: Vec<u32>,
    file: Option<File>,
    file_slots: u32,
    free_file: Vec<u32>,
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
}

impl Overlay {
    pub fn new(size: u64, limits: Limits, total: Arc<AtomicU64>, persist: Option<Writer>) -> Overlay {
        Overlay {
            map: BTreeMap::new(),
            span: (u64::MAX, 0),
            chunks: Vec::new(),
            ram_pages: 0,
            free_ram: Vec::new(),
            file: None,
            file_slots: 0,
            free_file: Vec::new(),
            limits,
            total,
            size,
            persist,
            pending_version: None,
            version_file: None,
            bytes_written: 0,
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
        self.map.is_empty()
    }

    /// Bytes of RAM and overflow file this overlay holds.
    pub fn allocated_bytes(&self) -> u64 {
        (self.ram_pages as u64 + self.file_slots as u64) * BLOCK
    }

    pub fn ram_bytes(&self) -> u64 {
        self.ram_pages as u64 * BLOCK
    }

    fn page(&self, p: u32) -> &[u8] {
        let (c, i) = ((p / PAGES_PER_CHUNK) as usize, (p % PAGES_PER_CHUNK) as usize * BLOCK as usize);
        &self.chunks[c][i..i + BLOCK as usize]
    }

    fn page_mut(&mut self, p: u32) -> &mut [u8] {
        let (c, i) = ((p / PAGES_PER_CHUNK) as usize, (p % PAGES_PER_CHUNK) as usize * BLOCK as usize);
        &mut self.chunks[c][i..i + BLOCK as usize]
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

    /// Checks that a write over `[off, off + len)` can get the slots it needs.
    pub fn reserve(&self, off: u64, len: u64) -> Result<(), CacheError> {
        if len == 0 {
            return Ok(());
        }
        let (first, last) = (off / BLOCK, (off + len - 1) / BLOCK);
        let backed = self.map.range(first..=last).filter(|(_, s)| !matches!(s, Slot::Zero)).count() as u64;
        let want = (last - first + 1 - backed).saturating_sub((self.free_ram.len() + self.free_file.len()) as u64);
        if want == 0 {
            return Ok(());
        }
        let grow = want * BLOCK;
        if self.allocated_bytes() + grow > self.limits.target_bytes_max {
            return Err(CacheError::NoSpace(format!(
                "target write cache full: {} of nbd.cache_bytes_per_target_max {} in use",
                self.allocated_bytes(),
                self.limits.target_bytes_max
            )));
        }
        let total = self.total.load(Ordering::Relaxed);
        if total + grow > self.limits.total_bytes_max {
            return Err(CacheError::NoSpace(format!(
                "write caches full: {total} of nbd.cache_bytes_total_max {} in use",
                self.limits.total_bytes_max
            )));
        }
        Ok(())
    }

    fn alloc(&mut self) -> Result<Slot, CacheError> {
        if let Some(p) = self.free_ram.pop() {
            return Ok(Slot::Ram(p));
        }
        if let Some(s) = self.free_file.pop() {
            return Ok(Slot::File(s));
        }
        if self.allocated_bytes() + BLOCK > self.limits.target_bytes_max {
            return Err(CacheError::NoSpace(format!(
                "target write cache full (nbd.cache_bytes_per_target_max {})",
                self.limits.target_bytes_max
            )));
        }
        // The global count moves first, so two targets cannot both take the last bytes.
        if self.total.fetch_add(BLOCK, Ordering::AcqRel) + BLOCK > self.limits.total_bytes_max {
            self.total.fetch_sub(BLOCK, Ordering::AcqRel);
            return Err(CacheError::NoSpace(format!("write caches full (nbd.cache_bytes_total_max {})", self.limits.total_bytes_max)));
        }
        if (self.ram_pages as u64 + 1) * BLOCK <= self.limits.ram_bytes {
            let p = self.ram_pages;
            if p % PAGES_PER_CHUNK == 0 {
                self.chunks.push(vec![0u8; (PAGES_PER_CHUNK as u64 * BLOCK) as usize].into_boxed_slice());
            }
            self.ram_pages += 1;
            return Ok(Slot::Ram(p));
        }
        if self.file.is_none() {
            match overflow_file(&self.limits.dir) {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    self.total.fetch_sub(BLOCK, Ordering::AcqRel);
                    return Err(CacheError::NoSpace(format!("cannot create an overflow file in {}: {e}", self.limits.dir.display())));
                }
            }
        }
        self.file_slots += 1;
        Ok(Slot::File(self.file_slots - 1))
    }

    fn release(&mut self, s: Slot) {
        match s {
            Slot::Ram(p) => self.free_ram.push(p),
            Slot::File(f) => self.free_file.push(f),
            Slot::Zero => {}
        }
    }

    fn file_io(&self, slot: u32, at: usize, buf: &mut [u8], write: Option<&[u8]>) -> Result<(), CacheError> {
        let f = self.file.as_ref().expect("file slots imply the file");
        let pos = slot as u64 * BLOCK + at as u64;
        let r = match write {
            Some(d) => f.write_all_at(d, pos),
            None => f.read_exact_at(buf, pos),
        };
        r.map_err(|e| CacheError::NoSpace(format!("overflow file: {e}")))
    }

    /// Writes `data` at `off` (any alignment). The range must lie inside the disk.
    pub fn write(&mut self, off: u64, data: &[u8], base: &Chain) -> Result<(), CacheError> {
        self.reserve(off, data.len() as u64)?;
        self.persist_ready()?;
        self.apply(off, data.len() as u64, Some(data), base)
    }

    /// WRITE_ZEROES and TRIM: whole blocks become "zero" (their storage is freed), the edges of
    /// the range are written with zeros.
    pub fn zero(&mut self, off: u64, len: u64, base: &Chain) -> Result<(), CacheError> {
        self.persist_ready()?;
        let end = off + len;
        let (first_full, end_full) = (off.div_ceil(BLOCK), end / BLOCK);
        if first_full >= end_full {
            self.reserve(off, len)?;
            return self.apply(off, len, None, base);
        }
        let head = first_full * BLOCK - off;
        let tail = end - end_full * BLOCK;
        self.reserve(off, head)?;
        self.reserve(end_full * BLOCK, tail)?;
        self.apply(off, head, None, base)?;
        self.apply(end_full * BLOCK, tail, None, base)?;
        if first_full < end_full {
            self.widen(first_full, end_full - 1);
        }
        for b in first_full..end_full {
            if let Some(old) = self.map.insert(b, Slot::Zero) {
                self.release(old);
            }
        }
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
    fn apply(&mut self, off: u64, len: u64, data: Option<&[u8]>, base: &Chain) -> Result<(), CacheError> {
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
            let slot = match self.map.get(&b).copied() {
                Some(s @ (Slot::Ram(_) | Slot::File(_))) => s,
                prior => {
                    let s = self.alloc()?;
                    if !whole {
                        // Copy on write: the block's current content first.
                        block[..blen].fill(0);
                        if prior.is_none() {
                            base.read_into(b * BLOCK, &mut block[..blen]).expect("block inside the disk");
                        }
                        self.store(s, 0, &block[..blen])?;
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
            (Some((first, k, src)), Some(d)) => self.file_io(first, 0, &mut [], Some(&d[src..src + k as usize * BLOCK as usize])),
            _ => Ok(()),
        }
    }

    fn store(&mut self, s: Slot, at: usize, d: &[u8]) -> Result<(), CacheError> {
        match s {
            Slot::Ram(p) => {
                self.page_mut(p)[at..at + d.len()].copy_from_slice(d);
                Ok(())
            }
            Slot::File(f) => self.file_io(f, at, &mut [], Some(d)),
            Slot::Zero => unreachable!("zero blocks have no storage"),
        }
    }

    fn load(&self, s: Slot, buf: &mut [u8]) -> Result<(), CacheError> {
        match s {
            Slot::Ram(p) => {
                buf.copy_from_slice(&self.page(p)[..buf.len()]);
                Ok(())
            }
            Slot::File(f) => self.file_io(f, 0, buf, None),
            Slot::Zero => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    /// Private mode: makes the version file durable (FLUSH, FUA).
    pub fn sync(&mut self) -> Result<(), CacheError> {
        match self.persist.as_mut() {
            Some(w) => w.sync().map_err(|e| CacheError::Io(e.to_string())),
            None => Ok(()),
        }
    }

    /// Emits `[off, off + len)` as the target sees it. Overflow blocks are copied to the end of
    /// `out` (the only copy on this path). The range must lie inside the disk.
    pub fn read<'a>(
        &'a self,
        off: u64,
        len: u64,
        base: &'a Chain,
        out: &mut Vec<u8>,
        emit: &mut dyn FnMut(Piece<'a>),
    ) -> Result<(), CacheError> {
        if len == 0 {
            return Ok(());
        }
        let end = off + len;
        let mut at = off;
        let below = |from: u64, to: u64, emit: &mut dyn FnMut(Piece<'a>)| {
            base.read(from, to - from, &mut |s| match s {
                Segment::Data(d) => emit(Piece::Data(d)),
                Segment::Zero(n) => emit(Piece::Zero(n)),
            })
            .expect("inside the disk")
        };
        if !self.may_hold(off / BLOCK, (end - 1) / BLOCK) {
            below(off, end, emit);
            return Ok(());
        }
        // Whole blocks in consecutive overflow slots come in with one pread:
        // (first slot, blocks, start in `out`).
        let mut run: Option<(u32, u32, usize)> = None;
        let flush = |run: &mut Option<(u32, u32, usize)>, out: &mut Vec<u8>, emit: &mut dyn FnMut(Piece<'a>)| -> Result<(), CacheError> {
            if let Some((first, k, start)) = run.take() {
                let n = k as usize * BLOCK as usize;
                out.resize(start + n, 0);
                self.file_io(first, 0, &mut out[start..start + n], None)?;
                emit(Piece::Copied(start..start + n));
            }
            Ok(())
        };
        for (&b, &s) in self.map.range(off / BLOCK..=(end - 1) / BLOCK) {
            let bstart = (b * BLOCK).max(at);
            if bstart > at {
                flush(&mut run, out, emit)?;
                below(at, bstart, emit);
                at = bstart;
            }
            let bend = ((b + 1) * BLOCK).min(end);
            let (i, n) = ((at - b * BLOCK) as usize, (bend - at) as usize);
            match s {
                Slot::File(f) if i == 0 && n == BLOCK as usize => {
                    run = match run {
                        Some((first, k, start)) if first + k == f => Some((first, k + 1, start)),
                        other => {
                            let mut other = other;
                            flush(&mut other, out, emit)?;
                            Some((f, 1, out.len()))
                        }
                    };
                }
                Slot::Ram(p) => {
                    flush(&mut run, out, emit)?;
                    emit(Piece::Data(&self.page(p)[i..i + n]))
                }
                Slot::File(f) => {
                    flush(&mut run, out, emit)?;
                    let start = out.len();
                    out.resize(start + n, 0);
                    self.file_io(f, i, &mut out[start..], None)?;
                    emit(Piece::Copied(start..start + n));
                }
                Slot::Zero => {
                    flush(&mut run, out, emit)?;
                    emit(Piece::Zero(n as u64))
                }
            }
            at = bend;
        }
        flush(&mut run, out, emit)?;
        if at < end {
            below(at, end, emit);
        }
        Ok(())
    }

    /// Allocation status (NBD base:allocation) of `[off, off + len)`: (length, flags) runs with
    /// flags 1 = hole, 2 = reads as zeros. Written blocks are data; zeroed blocks read as zeros;
    /// the rest is what the chain says.
    pub fn status(&self, off: u64, len: u64, base: &Chain, emit: &mut dyn FnMut(u64, u32)) {
        let end = off + len;
        let mut at = off;
        let mut run: Option<(u64, u32)> = None;
        let mut push = |n: u64, flags: u32| match run.as_mut() {
            Some((l, f)) if *f == flags => *l += n,
            _ => {
                if let Some((l, f)) = run.take() {
                    emit(l, f);
                }
                run = Some((n, flags));
            }
        };
        let below = |from: u64, to: u64, push: &mut dyn FnMut(u64, u32)| {
            let _ = base.allocation(from, to - from, &mut |_, n, allocated| push(n, if allocated { 0 } else { 3 }));
        };
        for (&b, s) in self.map.range(off / BLOCK..=(end - 1) / BLOCK) {
            let bstart = (b * BLOCK).max(at);
            if bstart > at {
                below(at, bstart, &mut push);
            }
            let bend = ((b + 1) * BLOCK).min(end);
            push(bend - bstart, if matches!(s, Slot::Zero) { 2 } else { 0 });
            at = bend;
        }
        if at < end {
            below(at, end, &mut push);
        }
        if let Some((l, f)) = run {
            emit(l, f);
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        self.total.fetch_sub(self.allocated_bytes(), Ordering::AcqRel);
    }
}

/// An unlinked, sparse file in `dir` (O_TMPFILE where the file system has it).
fn overflow_file(dir: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    match std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_TMPFILE).mode(0o600).open(dir) {
        Ok(f) => Ok(f),
        Err(_) => {
            static N: AtomicU64 = AtomicU64::new(0);
            let p = dir.join(format!(".bootfarm-cache-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
            let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&p)?;
            std::fs::remove_file(&p)?;
            Ok(f)
        }
    }
}

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
}

/// Splits an export name into (vdisk, explicit target id).
pub fn split_export(name: &str) -> (&str, Option<&str>) {
    match name.split_once('@') {
        Some((v, id)) => (v, Some(id)),
        None => (name, None),
    }
}

/// A target id given by a client: printable, no spaces, bounded.
pub fn valid_target_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'\\')
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
}

impl std::fmt::Display for AttachError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachError::Busy(s) | AttachError::Failed(s) => f.write_str(s),
            AttachError::Foreign { .. } => {
                f.write_str("this target id belongs to another machine (the address that created it); use your own id")
            }
        }
    }
}

impl Registry {
    /// Gives a connection from `client` its target: the cache kept from an earlier connection
    /// (still open, or closed less than `keep` ago, on the same image) or a new one. `id` is
    /// the id named in the export (`vdisk@id`); without one the target is the client address.
    /// A target is bound to the address that created it: another address is refused, whatever
    /// id it names.
    pub fn attach(
        &self,
        vdisk: &Arc<crate::config::Vdisk>,
        id: Option<&str>,
        client: SocketAddr,
        cfg: &crate::config::Nbd,
        now: Instant,
    ) -> Result<(Arc<Target>, bool), AttachError> {
        use crate::config::Mode;
        let keep = Duration::from_millis(cfg.cache_keep_after_disconnect_ms);
        self.sweep(now, keep);
        let private = vdisk.mode == Mode::Private;
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
                Some(e) if e.conns > 0 || Arc::ptr_eq(&e.target.vdisk, vdisk) => {
                    if e.target.owner != ip {
                        return Err(AttachError::Foreign { owner: e.target.owner });
                    }
                    e.conns += 1;
                    e.idle_since = None;
                    e.client = client;
                    return Ok((e.target.clone(), true));
                }
                Some(_) => map.remove(&key).map(|e| e.target),
                None => None,
            }
        };
        if let Some(t) = stale {
            end_target(&t, "the vdisk changed");
        }
        let limits = Limits {
            ram_bytes: cfg.cache_ram_bytes_per_target,
            target_bytes_max: cfg.cache_bytes_per_target_max,
            total_bytes_max: cfg.cache_bytes_total_max,
            dir: cfg.cache_dir.clone(),
        };
        let mut overlay = Overlay::new(vdisk.chain.virtual_size(), limits, self.total.clone(), None);
        if private {
            private_versions_check(vdisk, cfg.private_versions_max).map_err(AttachError::Failed)?;
            overlay.version_on_first_write(vdisk.clone());
        }
        let target =
            Arc::new(Target { vdisk: vdisk.clone(), id: key.2.clone(), named: key.1, owner: ip, overlay: Mutex::new(overlay), private });
        let mut map = self.entries.lock().unwrap();
        // Another worker may have made the same target meanwhile: the same checks again.
        match map.get(&key) {
            Some(e) if private && e.conns > 0 => {
                return Err(AttachError::Busy(format!(
                    "vdisk {} is in private mode and already has a writer; one connection at a time",
                    vdisk.name
                )));
            }
            Some(e) if e.target.owner != ip => return Err(AttachError::Foreign { owner: e.target.owner }),
            _ => {}
        }
        map.insert(key, Entry { target: target.clone(), started: now, conns: 1, idle_since: None, client });
        Ok((target, false))
    }

    /// Whether a standard vdisk's named target `id` exists, created from `ip`.
    pub fn holds(&self, vdisk: &str, id: &str, ip: IpAddr) -> bool {
        let map = self.entries.lock().unwrap();
        map.get(&(vdisk.to_string(), true, id.to_string())).is_some_and(|e| e.target.owner == ip)
    }

    /// A connection of `t` ended; with `keep` zero its cache goes at once when it was the last.
    pub fn detach(&self, t: &Arc<Target>, keep: Duration, now: Instant) {
        let key: Key = (t.vdisk.name.clone(), t.named, t.id.clone());
        let gone = {
            let mut map = self.entries.lock().unwrap();
            match map.get_mut(&key) {
                Some(e) if Arc::ptr_eq(&e.target, t) => {
                    e.conns -= 1;
                    if e.conns == 0 {
                        e.idle_since = Some(now);
                    }
                    if e.conns == 0 && keep.is_zero() {
                        map.remove(&key).map(|e| e.target)
                    } else {
                        None
                    }
                }
                _ => None,
            }
        };
        if let Some(t) = gone {
            end_target(&t, "disconnected");
        }
    }

    /// Drops caches whose target has been gone longer than `keep`.
    pub fn sweep(&self, now: Instant, keep: Duration) {
        let gone: Vec<Arc<Target>> = {
            let mut map = self.entries.lock().unwrap();
            let old: Vec<Key> = map
                .iter()
                .filter(|(_, e)| e.idle_since.is_some_and(|t| now.saturating_duration_since(t) >= keep))
                .map(|(k, _)| k.clone())
                .collect();
            old.into_iter().filter_map(|k| map.remove(&k)).map(|e| e.target).collect()
        };
        for t in gone {
            end_target(&t, "not reconnected in time");
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
fn private_version(vdisk: &crate::config::Vdisk) -> Result<(Writer, PathBuf), String> {
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
    use crate::image::ChainLimits;

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
        o.read(off, len, chain, &mut scratch, &mut |p| match p {
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
        let limits = Limits { ram_bytes: 16 * BLOCK, target_bytes_max: 1 << 30, total_bytes_max: 1 << 30, dir: dir.clone() };
        let mut o = Overlay::new(size, limits, total.clone(), None);
        let mut rng = crate::rng::XorShift::new(0x9e37_79b9_7f4a_7c15);
        for round in 0..3000 {
            let off = rng.below(size);
            let span = if rng.below(4) == 0 { 24 * BLOCK } else { 3 * BLOCK };
            let len = (rng.below(span) + 1).min(size - off);
            match rng.below(10) {
                0 => {
                    o.zero(off, len, &chain).unwrap();
                    model[off as usize..(off + len) as usize].fill(0);
                }
                1..=5 => {
                    let d: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    o.write(off, &d, &chain).unwrap();
                    model[off as usize..(off + len) as usize].copy_from_slice(&d);
                }
                _ => {
                    let got = read_all(&o, &chain, off, len);
                    assert!(got == model[off as usize..(off + len) as usize], "round {round}: read of {len} at {off} differs");
                }
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
        let limits = Limits { ram_bytes: 4 * BLOCK, target_bytes_max: 8 * BLOCK, total_bytes_max: 12 * BLOCK, dir: dir.clone() };
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
        a.write(20 * BLOCK, &vec![0xcc; 2 * BLOCK as usize], &chain).unwrap();
        // The other target sees none of it, and meets the global limit.
        assert!(read_all(&b, &chain, 0, 1 << 20) == content);
        b.write(0, &vec![1; 4 * BLOCK as usize], &chain).unwrap();
        let e = b.write(4 * BLOCK, &[1], &chain).unwrap_err();
        assert!(matches!(e, CacheError::NoSpace(ref m) if m.contains("total")), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn block_status_reports_written_zeroed_and_base() {
        let dir = tmpdir("status");
        let (chain, _) = base(&dir, 64 * BLOCK);
        let limits = Limits { ram_bytes: 1 << 20, target_bytes_max: 1 << 20, total_bytes_max: 1 << 20, dir: dir.clone() };
        let mut o = Overlay::new(64 * BLOCK, limits, Arc::new(AtomicU64::new(0)), None);
        o.zero(4 * BLOCK, 4 * BLOCK, &chain).unwrap();
        o.write(8 * BLOCK, &[9; 4096], &chain).unwrap();
        let mut runs = Vec::new();
        o.status(0, 64 * BLOCK, &chain, &mut |l, f| runs.push((l, f)));
        // A raw base is all data; the zeroed blocks read as zeros.
        assert_eq!(runs, vec![(4 * BLOCK, 0), (4 * BLOCK, 2), (56 * BLOCK, 0)]);
        assert_eq!(split_export("win10@00:11:22:33:44:55"), ("win10", Some("00:11:22:33:44:55")));
        assert!(valid_target_id("00:11:22:33:44:55") && !valid_target_id("a/b") && !valid_target_id(""));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
