//! The write caches' RAM: chunks of [`CHUNK_PAGES`] pages, cut from large anonymous mappings,
//! handed to overlays and given back when an overlay is dropped, so a reboot storm writes into
//! pages the kernel already faulted in and zeroed once, instead of taking a fault, a clear and
//! a memory-cgroup charge per 4 KiB page (38.7% of the server's CPU in the replayed Linux boot,
//! perf/README.md). `nbd.cache_ram_prefault_bytes` commits part of the RAM tier at start, so
//! first boots skip the faults too.
//!
//! A chunk given back still holds its last owner's bytes. That is safe because an overlay
//! never lets a page be read before it wrote it (every block is written whole, copy on write
//! first, before it enters the overlay's map; the bytes past a short last block are cleared),
//! and because an overlay, with its chunks, is dropped only after every connection that
//! points a send at its pages is gone (the TCP driver frees a connection once the kernel holds
//! none of its sends). Warm free chunks are kept only while the RAM tier has room for them
//! (`nbd.cache_ram_bytes_total_max` minus the pages in use); beyond it a chunk's pages go back
//! to the kernel (MADV_DONTNEED) and the chunk waits, cold, for the next allocation. Mappings
//! are never unmapped before the pool goes: their number is bounded by the most chunks ever in
//! use at once.

use memmap2::{Advice, MmapMut, MmapOptions};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Pages of one chunk: an overlay's RAM grows by this much at a time.
pub const CHUNK_PAGES: u32 = 64;
pub const CHUNK_BYTES: usize = CHUNK_PAGES as usize * 4096;
/// Bytes of one mapping chunks are cut from (a prefault maps what it needs at once).
const REGION_BYTES: usize = 64 << 20;

/// `CHUNK_BYTES` of memory owned by one overlay until it gives it back.
pub struct Chunk(NonNull<u8>);

// Safety: a chunk is plain memory with one owner at a time (the overlay, behind its mutex, or
// the pool's free lists); the mapping it points into outlives every chunk (see ChunkPool).
unsafe impl Send for Chunk {}
unsafe impl Sync for Chunk {}

impl Chunk {
    pub fn bytes(&self) -> &[u8] {
        // Safety: the chunk's CHUNK_BYTES lie in a live mapping owned by the pool.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr(), CHUNK_BYTES) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // Safety: as above, and `&mut self` is the only way to it.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_ptr(), CHUNK_BYTES) }
    }
}

#[derive(Default)]
struct Lists {
    /// Faulted in, holding some earlier owner's bytes: taken first.
    warm: Vec<Chunk>,
    /// Given back to the kernel: the next write to each page faults a zeroed one in.
    cold: Vec<Chunk>,
    /// What is left of the newest mapping: (start, chunks).
    carve: Option<(NonNull<u8>, usize)>,
    regions: Vec<MmapMut>,
}

/// Chunks for every overlay of one registry (NBD and iSCSI targets alike).
#[derive(Default)]
pub struct ChunkPool {
    lists: Mutex<Lists>,
    /// Chunks handed out warm (no page fault on their first write).
    pub reused: AtomicU64,
    /// Chunks handed out cold or new.
    pub fresh: AtomicU64,
    /// Bytes of warm free chunks, and of all chunks cut so far (metrics).
    pub warm_bytes: AtomicU64,
    pub mapped_bytes: AtomicU64,
}

// Safety: `carve` points into `regions`, which the mutex guards with it.
unsafe impl Send for Lists {}

impl ChunkPool {
    /// A chunk, warm if one is free; None when no memory can be mapped (the caller puts the
    /// block in its overflow file).
    pub fn take(&self) -> Option<Chunk> {
        let mut l = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = l.warm.pop() {
            self.warm_bytes.fetch_sub(CHUNK_BYTES as u64, Ordering::Relaxed);
            self.reused.fetch_add(1, Ordering::Relaxed);
            return Some(c);
        }
        self.fresh.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = l.cold.pop() {
            return Some(c);
        }
        if l.carve.is_none() {
            let mut m = self.map(REGION_BYTES).ok()?;
            l.carve = Some((NonNull::new(m.as_mut_ptr()).expect("a mapping is not at 0"), REGION_BYTES / CHUNK_BYTES));
            l.regions.push(m);
        }
        let (p, n) = l.carve.take().expect("just made");
        if n > 1 {
            // Safety: the carve's n chunks from p lie in its region.
            l.carve = Some((unsafe { NonNull::new_unchecked(p.as_ptr().add(CHUNK_BYTES)) }, n - 1));
        }
        Some(Chunk(p))
    }

    fn map(&self, bytes: usize) -> std::io::Result<MmapMut> {
        let m = MmapOptions::new().len(bytes).map_anon()?;
        self.mapped_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(m)
    }

    /// Gives back an overlay's chunks. `room`: bytes the RAM tier has free now; warm chunks
    /// past it are handed back to the kernel.
    pub fn give_back(&self, chunks: Vec<Chunk>, room: u64) {
        if chunks.is_empty() {
            return;
        }
        let mut l = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        for c in chunks {
            let warm = self.warm_bytes.load(Ordering::Relaxed);
            if warm + CHUNK_BYTES as u64 <= room {
                self.warm_bytes.fetch_add(CHUNK_BYTES as u64, Ordering::Relaxed);
                l.warm.push(c);
            } else {
                release(&c);
                l.cold.push(c);
            }
        }
    }

    /// Commits `bytes` of RAM now: maps and faults in that many chunks and keeps them warm.
    /// Returns how many bytes are warm afterwards.
    pub fn prefault(&self, bytes: u64) -> std::io::Result<u64> {
        let n = (bytes as usize).div_ceil(CHUNK_BYTES);
        if n == 0 {
            return Ok(self.warm_bytes.load(Ordering::Relaxed));
        }
        let mut m = self.map(n * CHUNK_BYTES)?;
        if m.advise(Advice::PopulateWrite).is_err() {
            // Kernels before 5.14: touch every page instead.
            for i in (0..m.len()).step_by(4096) {
                m[i] = 0;
            }
        }
        let p = m.as_mut_ptr();
        let mut l = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..n {
            // Safety: chunk i lies in the mapping, which the pool keeps from now on.
            l.warm.push(Chunk(unsafe { NonNull::new_unchecked(p.add(i * CHUNK_BYTES)) }));
        }
        l.regions.push(m);
        let add = (n * CHUNK_BYTES) as u64;
        Ok(self.warm_bytes.fetch_add(add, Ordering::Relaxed) + add)
    }

    /// Free chunks (warm, cold) now.
    pub fn free_chunks(&self) -> (usize, usize) {
        let l = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        (l.warm.len(), l.cold.len())
    }
}

/// Hands a chunk's pages back to the kernel; the next write to each faults in a zeroed page.
fn release(c: &Chunk) {
    // Safety: MADV_DONTNEED on private anonymous memory inside a live mapping only drops the
    // pages' contents (they read as zeros afterwards), and nobody reads a free chunk.
    if unsafe { libc::madvise(c.0.as_ptr().cast(), CHUNK_BYTES, libc::MADV_DONTNEED) } != 0 {
        tracing::debug!("madvise(MADV_DONTNEED) on a free cache chunk: {}", std::io::Error::last_os_error());
    }
}

impl std::fmt::Debug for ChunkPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (warm, cold) = self.free_chunks();
        f.debug_struct("ChunkPool").field("warm", &warm).field("cold", &cold).finish()
    }
}
