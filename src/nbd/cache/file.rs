//! The overflow file of an overlay: its slots read and written with pread/pwrite, and the
//! read-only shared mappings (windows of [`MAP_WINDOW_SLOTS`] slots) that replies point into.

use super::{CacheError, Overlay, BLOCK};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Overflow-file slots one read-only mapping covers (1 GiB of address space, populated only
/// where sends read: a small overflow file costs one mapping, not its size).
pub const MAP_WINDOW_SLOTS: u32 = 256 * 1024;
/// Overflow mappings of all overlays together (8 TiB of overflow): each is one VMA, and the
/// process's image mappings and RAM chunks need vm.max_map_count (65530 by default) too.
/// Windows past it are read with pread.
pub const MAP_WINDOWS_MAX: usize = 8192;
static MAP_WINDOWS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Overflow-file mappings in use by all overlays (the metrics' gauge).
pub fn overflow_mappings() -> usize {
    MAP_WINDOWS.load(Ordering::Relaxed)
}

impl Overlay {
    /// Maps window `w` of the overflow file (read only, shared: the pages pwrite fills),
    /// before any slot of it is written. A failure is logged and leaves the window to pread.
    pub(super) fn map_window(&mut self, w: u32) {
        static TOLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if MAP_WINDOWS.fetch_add(1, Ordering::AcqRel) >= MAP_WINDOWS_MAX {
            MAP_WINDOWS.fetch_sub(1, Ordering::AcqRel);
            if !TOLD.swap(true, Ordering::Relaxed) {
                tracing::info!("{MAP_WINDOWS_MAX} overflow-file mappings in use: later overflow blocks are sent after a pread");
            }
            self.file_maps.push(None);
            return;
        }
        let f = self.file.as_ref().expect("file slots imply the file");
        let len = MAP_WINDOW_SLOTS as usize * BLOCK as usize;
        // Safety: the file is this overlay's own unlinked file, which nothing truncates; only
        // the kernel reads the mapping (sends), and only below `file_len`.
        let m = unsafe { memmap2::MmapOptions::new().offset(w as u64 * len as u64).len(len).map(f) };
        match m {
            Ok(m) => self.file_maps.push(Some(m)),
            Err(e) => {
                MAP_WINDOWS.fetch_sub(1, Ordering::AcqRel);
                if !TOLD.swap(true, Ordering::Relaxed) {
                    tracing::warn!(window = w, error = %e, "cannot map an overflow file: its blocks are sent after a pread");
                }
                self.file_maps.push(None);
            }
        }
    }

    /// The mapped bytes of overflow slot `f` from `at`, `n` long, when a mapping has them.
    pub(super) fn mapped(&self, f: u32, at: usize, n: usize) -> Option<&[u8]> {
        let end = f as u64 * BLOCK + (at + n) as u64;
        if end > self.file_len {
            return None;
        }
        let i = (f % MAP_WINDOW_SLOTS) as usize * BLOCK as usize + at;
        Some(&self.window(f)?[i..i + n])
    }

    /// The mapping of the window overflow slot `f` lies in, if it is mapped.
    pub(super) fn window(&self, f: u32) -> Option<&memmap2::Mmap> {
        self.file_maps.get((f / MAP_WINDOW_SLOTS) as usize)?.as_ref()
    }

    /// Gives back this overlay's share of [`MAP_WINDOWS_MAX`] (the mappings go with the overlay).
    pub(super) fn unmap_windows(&mut self) {
        MAP_WINDOWS.fetch_sub(self.file_maps.iter().filter(|m| m.is_some()).count(), Ordering::AcqRel);
    }

    pub(super) fn file_read(&self, slot: u32, buf: &mut [u8]) -> Result<(), CacheError> {
        let f = self.file.as_ref().expect("file slots imply the file");
        f.read_exact_at(buf, slot as u64 * BLOCK).map_err(|e| CacheError::NoSpace(format!("overflow file: {e}")))
    }

    /// Writes `d` at slot `slot` + `at` of the overflow file.
    pub(super) fn file_write(&mut self, slot: u32, at: usize, d: &[u8]) -> Result<(), CacheError> {
        let f = self.file.as_ref().expect("file slots imply the file");
        let pos = slot as u64 * BLOCK + at as u64;
        f.write_all_at(d, pos).map_err(|e| CacheError::NoSpace(format!("overflow file: {e}")))?;
        self.file_len = self.file_len.max(pos + d.len() as u64);
        Ok(())
    }
}

/// An unlinked, sparse file in `dir` (O_TMPFILE where the file system has it).
pub(super) fn overflow_file(dir: &Path) -> std::io::Result<File> {
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
