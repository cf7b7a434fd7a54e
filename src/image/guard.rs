//! Read-only file mappings that cannot kill the process when their file changes under them.
//!
//! The design: every mapping records its file's identity (device, inode, size, mtime) at open
//! and a control-side sweep ([`sweep`]) stats every mapped path: a new inode there (the safe
//! update, `mv` of a new file) is reported so the vdisk is re-opened; the same inode with another
//! size or mtime (`cp` over it, `truncate`, an editor writing in place) marks the mapping damaged
//! at once, and readers refuse damaged mappings. Nothing re-reads a mapping it knows is stale.
//!
//! The last line of defence, for the window before a sweep sees the change: a lock-free,
//! async-signal-safe registry of every mapping bootfarm makes (an array of atomics allocated
//! once, `image.mappings_max` slots) and a SIGBUS handler. A fault inside a registered mapping (a page past the file's new end) maps
//! anonymous zero pages over the rest of that mapping (mmap MAP_FIXED is async-signal-safe),
//! marks it damaged and returns, so the faulting load reads zeros; the reader checks
//! [`FileMap::damaged`] after its read and refuses. A fault anywhere else goes to the previous
//! handler (Rust's stack-overflow reporter) or the default action: real bugs still crash.
//! Kernel-side reads of a mapping (sendmsg, SEND_ZC) never raise SIGBUS: they fail with EFAULT,
//! which the engines treat as an error of that one transfer.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// Mappings alive at once by default, all files together (vdisk layers, bootstrap files mapped
/// by each worker): `image.mappings_max`.
pub const MAPPINGS_MAX_DEFAULT: usize = 1 << 16;
/// The accepted range of `image.mappings_max` (24 bytes a slot).
pub const MAPPINGS_RANGE: (usize, usize) = (16, 1 << 22);

const FREE: u8 = 0;
const CLAIMED: u8 = 1;
const LIVE: u8 = 2;

struct Slot {
    state: AtomicU8,
    /// (generation << 1) | damaged: the generation changes at each claim, so the sweep, which
    /// may hold a mapping's record after the mapping is gone, never marks the slot's next user.
    tag: AtomicU64,
    start: AtomicUsize,
    end: AtomicUsize,
}

/// The registry: allocated once, before the first mapping, never freed or resized, so the
/// handler reads it with plain atomic loads (a signal handler cannot allocate or lock).
static SLOTS: OnceLock<Box<[Slot]>> = OnceLock::new();
static CAPACITY: AtomicUsize = AtomicUsize::new(MAPPINGS_MAX_DEFAULT);
/// One past the highest slot ever used: the handler scans no further.
static HIGH: AtomicUsize = AtomicUsize::new(0);
static NEXT: AtomicUsize = AtomicUsize::new(0);
static PAGE: AtomicUsize = AtomicUsize::new(4096);
/// Faults turned into zero pages since start (shown in /metrics).
static FAULTS: AtomicU64 = AtomicU64::new(0);
/// Mappings refused because the registry was full (shown in /metrics).
static REFUSED: AtomicU64 = AtomicU64::new(0);
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
static INSTALL: std::sync::Once = std::sync::Once::new();

/// Sets the registry's size (`image.mappings_max`); only before the first mapping is made.
/// Returns whether it took effect.
pub fn set_mappings_max(n: usize) -> bool {
    if SLOTS.get().is_some() {
        return SLOTS.get().is_some_and(|s| s.len() == n);
    }
    CAPACITY.store(n.clamp(MAPPINGS_RANGE.0, MAPPINGS_RANGE.1), Ordering::Relaxed);
    true
}

fn slots() -> &'static [Slot] {
    SLOTS.get_or_init(|| {
        (0..CAPACITY.load(Ordering::Relaxed))
            .map(|_| Slot { state: AtomicU8::new(FREE), tag: AtomicU64::new(0), start: AtomicUsize::new(0), end: AtomicUsize::new(0) })
            .collect()
    })
}

/// Mappings refused because `image.mappings_max` files were mapped already.
pub fn refused() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

/// SIGBUS faults inside a file mapping turned into a refused read since the process started.
pub fn faults() -> u64 {
    FAULTS.load(Ordering::Relaxed)
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // Only atomics, mmap and sigaction here: all async-signal-safe.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = PAGE.load(Ordering::Relaxed);
    let all: &[Slot] = SLOTS.get().map_or(&[], |s| s);
    let high = HIGH.load(Ordering::Acquire).min(all.len());
    for s in &all[..high] {
        if s.state.load(Ordering::Acquire) != LIVE {
            continue;
        }
        let (start, end) = (s.start.load(Ordering::Relaxed), s.end.load(Ordering::Relaxed));
        if addr < start || addr >= end {
            continue;
        }
        // Zeros from the faulting page to the end: the file is shorter than the mapping, so
        // every later page would fault too (one signal per page of a 1 GiB hash otherwise).
        let at = addr & !(page - 1);
        let r = unsafe {
            libc::mmap(at as *mut libc::c_void, end - at, libc::PROT_READ, libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        if r != libc::MAP_FAILED {
            s.tag.fetch_or(1, Ordering::AcqRel);
            FAULTS.fetch_add(1, Ordering::Relaxed);
            return;
        }
        break;
    }
    // Not a mapping of ours: whoever handled SIGBUS before us, else the default (the fault
    // repeats when this returns and the process dies with SIGBUS, as it would have).
    if let Some(prev) = PREVIOUS.get() {
        let h = prev.sa_sigaction;
        if h != libc::SIG_DFL && h != libc::SIG_IGN && prev.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = unsafe { std::mem::transmute(h) };
            f(sig, info, ctx);
            return;
        }
    }
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
    }
}

fn install() {
    INSTALL.call_once(|| unsafe {
        let p = libc::sysconf(libc::_SC_PAGESIZE);
        if p > 0 {
            PAGE.store(p as usize, Ordering::Relaxed);
        }
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old);
        let _ = PREVIOUS.set(old);
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as *const () as usize;
        // SIGBUS stays blocked while the handler runs: a fault inside it kills the process.
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
    });
}

/// Marks damaged the mapping that holds `addr`, if one of ours does: a kernel read of it
/// (sendmsg, SEND_ZC) failed with EFAULT, so the file is shorter than the mapping now. Without
/// this, a reader that trusts a mapping between two sweeps (a bootstrap file served from the
/// worker's table) would fault again on its next request. False when no mapping holds it (the
/// static zero page, a page of the process).
pub fn mark_damaged_at(addr: usize) -> bool {
    let all: &[Slot] = SLOTS.get().map_or(&[], |s| s);
    let high = HIGH.load(Ordering::Acquire).min(all.len());
    for s in &all[..high] {
        if s.state.load(Ordering::Acquire) == LIVE && (s.start.load(Ordering::Relaxed)..s.end.load(Ordering::Relaxed)).contains(&addr) {
            s.tag.fetch_or(1, Ordering::AcqRel);
            return true;
        }
    }
    false
}

/// Claims a slot for `[start, start + len)`: (slot, generation).
fn register(start: usize, len: usize) -> Option<(usize, u64)> {
    install();
    let page = PAGE.load(Ordering::Relaxed);
    let end = start + len.div_ceil(page) * page;
    let all = slots();
    let first = NEXT.load(Ordering::Relaxed);
    for k in 0..all.len() {
        let i = (first + k) % all.len();
        let s = &all[i];
        if s.state.compare_exchange(FREE, CLAIMED, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            let generation = (s.tag.load(Ordering::Relaxed) >> 1) + 1;
            s.tag.store(generation << 1, Ordering::Release);
            s.start.store(start, Ordering::Relaxed);
            s.end.store(end, Ordering::Relaxed);
            HIGH.fetch_max(i + 1, Ordering::AcqRel);
            s.state.store(LIVE, Ordering::Release);
            NEXT.store(i + 1, Ordering::Relaxed);
            return Some((i, generation));
        }
    }
    REFUSED.fetch_add(1, Ordering::Relaxed);
    None
}

/// What a file was when it was opened: a later stat that differs means it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileId {
    pub fn of(m: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId { dev: m.dev(), ino: m.ino(), size: m.size(), mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec() }
    }
    /// The identity of what is at `path` now (following symlinks); None when nothing is.
    pub fn at(path: &Path) -> Option<FileId> {
        std::fs::metadata(path).ok().map(|m| FileId::of(&m))
    }
    pub fn same_file(&self, o: &FileId) -> bool {
        self.dev == o.dev && self.ino == o.ino
    }
}

/// What the sweep knows of one mapping; shared by the mapping and the sweep's list.
struct Watched {
    path: PathBuf,
    id: FileId,
    slot: usize,
    generation: u64,
    /// A damage already reported by a sweep (one log line per damaged mapping).
    reported: AtomicBool,
    /// The replacement already reported (one reload per new file at the path).
    replaced_by: Mutex<Option<FileId>>,
}

static WATCHED: Mutex<Vec<Weak<Watched>>> = Mutex::new(Vec::new());

/// A read-only mapping of a whole file, registered with the SIGBUS guard and the sweep.
pub struct FileMap {
    map: memmap2::Mmap,
    w: Arc<Watched>,
}

impl FileMap {
    /// Maps `len` bytes (> 0) of `file`, opened from `path`, whose identity at open was `id`.
    pub fn new(file: &std::fs::File, path: &Path, id: FileId, len: u64) -> Result<FileMap, String> {
        // Safety: a read-only mapping; a file changed under it is what this module contains
        // (sweep + SIGBUS guard), never undefined behaviour we rely on.
        let map = unsafe { memmap2::MmapOptions::new().len(len as usize).map(file) }.map_err(|e| format!("cannot map: {e}"))?;
        let (slot, generation) = register(map.as_ptr() as usize, map.len()).ok_or_else(|| {
            format!(
                "cannot map: {} files are mapped already, the limit image.mappings_max; raise it (and restart) or serve fewer files or workers",
                slots().len()
            )
        })?;
        let w = Arc::new(Watched {
            path: path.to_path_buf(),
            id,
            slot,
            generation,
            reported: AtomicBool::new(false),
            replaced_by: Mutex::new(None),
        });
        let mut list = WATCHED.lock().unwrap();
        if list.len() >= 64 && list.len().is_power_of_two() {
            list.retain(|x| x.strong_count() > 0);
        }
        list.push(Arc::downgrade(&w));
        drop(list);
        Ok(FileMap { map, w })
    }

    /// True once the file was seen changed in place or a read faulted past its end: what was
    /// read from this mapping may be wrong and must not be used.
    #[inline]
    pub fn damaged(&self) -> bool {
        slots()[self.w.slot].tag.load(Ordering::Acquire) & 1 != 0
    }

    pub fn mark_damaged(&self) {
        slots()[self.w.slot].tag.fetch_or(1, Ordering::AcqRel);
    }

    /// The file's identity when it was opened.
    pub fn id(&self) -> FileId {
        self.w.id
    }

    pub fn advise(&self, a: memmap2::Advice) -> std::io::Result<()> {
        self.map.advise(a)
    }
}

impl std::ops::Deref for FileMap {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // Out of the registry before the munmap (the field drop after this body): an address
        // is never both free and registered.
        slots()[self.w.slot].state.store(FREE, Ordering::Release);
    }
}

/// What a sweep found for one mapped file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Another file is at the path now (the safe update): the old mapping stays valid.
    Replaced { path: PathBuf, old: FileId, new: FileId },
    /// The mapped file itself changed (or a read faulted past its end): it is marked damaged.
    Damaged { path: PathBuf, old: FileId, new: Option<FileId>, faulted: bool },
}

/// Stats every mapped file once and reports each change once: the control thread calls this
/// every poll. A mapping changed in place is marked damaged here, before this returns.
pub fn sweep() -> Vec<Change> {
    let live: Vec<Arc<Watched>> = {
        let mut list = WATCHED.lock().unwrap();
        list.retain(|w| w.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    };
    let mut stats: std::collections::HashMap<&Path, Option<FileId>> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for w in &live {
        let now = *stats.entry(&w.path).or_insert_with(|| FileId::at(&w.path));
        let slot = &slots()[w.slot];
        let tag = slot.tag.load(Ordering::Acquire);
        if tag >> 1 != w.generation {
            continue; // the mapping is gone (its record outlived it by a moment)
        }
        let faulted = tag & 1 != 0;
        if let Some(n) = now.filter(|n| !n.same_file(&w.id)) {
            let mut r = w.replaced_by.lock().unwrap();
            if *r != Some(n) {
                *r = Some(n);
                out.push(Change::Replaced { path: w.path.clone(), old: w.id, new: n });
            }
        }
        // A path gone or holding another file leaves the mapped inode as it was (it lives
        // while mapped); only the same inode with another size or mtime, or a fault, damages.
        let in_place = now.filter(|n| n.same_file(&w.id));
        if in_place.is_none_or(|n| n == w.id) && !faulted {
            continue;
        }
        // Only this mapping's generation is marked, should the slot be reused meanwhile.
        let _ = slot.tag.compare_exchange(w.generation << 1, w.generation << 1 | 1, Ordering::AcqRel, Ordering::Relaxed);
        if !w.reported.swap(true, Ordering::AcqRel) {
            out.push(Change::Damaged { path: w.path.clone(), old: w.id, new: in_place, faulted });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sweep is process-wide: tests that look at what it reports take turns.
    static SWEEPS: Mutex<()> = Mutex::new(());

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bootfarm-guard-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn map(p: &Path) -> FileMap {
        let f = std::fs::File::open(p).unwrap();
        let m = f.metadata().unwrap();
        FileMap::new(&f, p, FileId::of(&m), m.len()).unwrap()
    }

    #[test]
    fn a_read_past_the_new_end_of_a_truncated_file_reads_zeros_and_marks_the_mapping_damaged() {
        let _turn = SWEEPS.lock().unwrap_or_else(|e| e.into_inner());
        let d = temp("truncate");
        let p = d.join("img");
        std::fs::write(&p, vec![0xAB; 64 << 10]).unwrap();
        let m = map(&p);
        let other = {
            std::fs::write(d.join("other"), vec![0xCD; 16 << 10]).unwrap();
            map(&d.join("other"))
        };
        assert_eq!(m[40_000], 0xAB);
        assert!(!m.damaged());
        let before = faults();
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(8192).unwrap();
        // Without the guard this load is a SIGBUS that kills the test process.
        let tail: u64 = m[16 << 10..].iter().map(|&b| b as u64).sum();
        assert_eq!(tail, 0, "pages past the new end read as zeros");
        assert!(m.damaged(), "the fault marked the mapping damaged");
        assert!(faults() > before);
        assert_eq!(m[100], 0xAB, "pages before the fault keep the file's bytes");
        assert!(!other.damaged(), "another mapping is not touched");
        assert_eq!(other[10_000], 0xCD);
        let changes = sweep();
        assert!(changes.iter().any(|c| matches!(c, Change::Damaged { path, new: Some(n), .. } if path == &p && n.size == 8192)));
        assert!(sweep().iter().all(|c| !matches!(c, Change::Damaged { path, .. } if path == &p)), "reported once");
        drop(m);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_sweep_marks_a_file_changed_in_place_and_reports_a_replaced_one_without_damage() {
        let _turn = SWEEPS.lock().unwrap_or_else(|e| e.into_inner());
        let d = temp("sweep");
        let (a, b) = (d.join("a"), d.join("b"));
        std::fs::write(&a, vec![1u8; 8192]).unwrap();
        std::fs::write(&b, vec![2u8; 8192]).unwrap();
        let (ma, mb) = (map(&a), map(&b));
        assert!(sweep()
            .iter()
            .all(|c| !matches!(c, Change::Replaced { path, .. } | Change::Damaged { path, .. } if path == &a || path == &b)));
        // In place, same size (cp over a file of the same length): only the mtime tells.
        std::thread::sleep(std::time::Duration::from_millis(5));
        common_write_at(&a, 0, b"changed");
        let tmp = d.join("b.new");
        std::fs::write(&tmp, vec![3u8; 4096]).unwrap();
        std::fs::rename(&tmp, &b).unwrap();
        let changes = sweep();
        assert!(changes.iter().any(|c| matches!(c, Change::Damaged { path, faulted: false, .. } if path == &a)), "{changes:?}");
        assert!(changes.iter().any(|c| matches!(c, Change::Replaced { path, .. } if path == &b)), "{changes:?}");
        assert!(ma.damaged());
        assert!(!mb.damaged(), "a replaced file's old mapping stays valid");
        assert_eq!(mb[8191], 2);
        assert!(sweep()
            .iter()
            .all(|c| !matches!(c, Change::Replaced { path, .. } | Change::Damaged { path, .. } if path == &a || path == &b)));
        let _ = std::fs::remove_dir_all(&d);
    }

    fn common_write_at(p: &Path, off: u64, data: &[u8]) {
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new().write(true).open(p).unwrap().write_all_at(data, off).unwrap();
    }

    #[test]
    fn a_dropped_mapping_leaves_the_registry_before_it_is_unmapped() {
        // A freed slot no longer covers its old range, so a later fault there (a real bug) is
        // not swallowed as a changed file.
        let d = temp("free");
        let p = d.join("f");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        let m = map(&p);
        let (slot, start) = (m.w.slot, m.as_ptr() as usize);
        assert_eq!(slots()[slot].state.load(Ordering::Relaxed), LIVE);
        assert_eq!(slots()[slot].start.load(Ordering::Relaxed), start);
        drop(m);
        assert_ne!(slots()[slot].state.load(Ordering::Relaxed), LIVE);
        let _ = std::fs::remove_dir_all(&d);
    }
}
