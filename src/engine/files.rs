//! Bootstrap files for TFTP and HTTP /boot, opened without blocking the worker on a path walk:
//! a name is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` issued through the
//! ring, relative to a descriptor of `tftp.root` (opened once per snapshot), then `fstat`ed (no
//! path walk) and mapped read-only. The per-worker [`Table`] keeps the mapping by normalised
//! name; past `bootfiles::TRUST` the name is opened again and the same file keeps its mapping,
//! a replaced one (rename) is mapped anew. Running transfers keep their mapping through its Arc.
//!
//! Costs per request: a fresh hit, no system call (a hash lookup); a miss or an entry past TRUST,
//! one OPENAT2 on the ring, then `fstat` and `close` of the descriptor (and `mmap` when the file
//! is new). Before: `canonicalize` (an lstat/readlink per component), `stat`, and on a new file
//! open + fstat + mmap + close, all on the worker.

use crate::bootfiles::{normalise, refusal_of_errno, Refused, Table, Wait};
use crate::image::guard::{FileId, FileMap};
use crate::image::Backing;
use io_uring::{opcode, types, IoUring};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// An open bootstrap file: its mapping, its identity (validators, revalidation), and its path
/// for log lines and the mapping guard.
pub struct Found {
    pub data: Arc<Backing>,
    pub id: FileId,
    pub path: PathBuf,
}

impl Found {
    /// Modification time in whole seconds (HTTP Last-Modified).
    pub fn mtime_unix(&self) -> i64 {
        self.id.mtime_ns.div_euclid(1_000_000_000)
    }
}

/// What an open through the ring gives its waiters: the file, and its descriptor for a reader
/// that reads with pread instead of the mapping (TFTP netascii).
#[derive(Clone)]
pub struct Opened {
    pub found: Arc<Found>,
    pub file: Arc<File>,
}

/// What [`Files::get`] did with a request.
pub enum Get {
    /// Open and fresh: serve it now.
    Ready(Arc<Found>),
    /// Waiting for an open through the ring: the request comes back from [`Files::complete`].
    Waiting,
    Refused(Refused),
    /// Too many opens or waiting requests (bootfiles::OPENS_MAX, WAITERS_MAX).
    Busy,
}

struct Root {
    generation: u64,
    path: PathBuf,
    dir: OwnedFd,
}

/// One open in flight. The kernel copies the path and `how` when it takes the entry; they stay
/// here until the completion anyway, with the root's descriptor the entry names.
struct Op {
    name: PathBuf,
    cpath: CString,
    how: types::OpenHow,
    root: Arc<Root>,
}

const HOW_FLAGS: u64 = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
const HOW_RESOLVE: u64 = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;

pub struct Files<W> {
    table: Table<Arc<Found>, W>,
    root: Option<Arc<Root>>,
    /// When the root last failed to open: tried again once per TRUST, not per request.
    root_failed: Option<(u64, Instant)>,
    ops: Vec<Option<Box<Op>>>,
    free: Vec<u32>,
    /// Opens started and not yet pushed to the ring ([`Files::submit`]).
    queued: Vec<u32>,
    /// How the service answers a file it cannot open ("404", "ERROR 1"), for its log lines.
    answer: &'static str,
    /// The ring user data of open `i`, routed back to [`Files::complete`] by the service.
    user_data: fn(u32) -> u64,
}

impl<W> Files<W> {
    /// `answer`: how the service answers a file it cannot open, named in the log line;
    /// `user_data`: the completion token of an open, by the open's index.
    pub fn new(answer: &'static str, user_data: fn(u32) -> u64) -> Files<W> {
        Files {
            table: Table::default(),
            root: None,
            root_failed: None,
            ops: Vec::new(),
            free: Vec::new(),
            queued: Vec::new(),
            answer,
            user_data,
        }
    }

    /// The root's descriptor for snapshot `generation` (opened once per snapshot: the one path
    /// walk left, off the per-request path).
    fn root(&mut self, root: &Path, generation: u64, now: Instant) -> Option<Arc<Root>> {
        if self.table.snapshot(generation) || self.root.as_ref().is_none_or(|r| r.generation != generation) {
            self.root = None;
        }
        if let Some(r) = &self.root {
            return Some(r.clone());
        }
        if self.root_failed.is_some_and(|(g, t)| g == generation && now < t + crate::bootfiles::TRUST) {
            return None;
        }
        let c = CString::new(root.as_os_str().as_bytes()).ok()?;
        // Safety: a NUL-terminated path; the descriptor returned is owned below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            tracing::warn!(root = %root.display(), "cannot open tftp.root: {}; bootstrap files are refused until it can be", std::io::Error::last_os_error());
            self.root_failed = Some((generation, now));
            return None;
        }
        self.root_failed = None;
        // Safety: `fd` was just opened and is owned by nobody else.
        let r = Arc::new(Root { generation, path: root.to_path_buf(), dir: unsafe { OwnedFd::from_raw_fd(fd) } });
        self.root = Some(r.clone());
        Some(r)
    }

    /// Looks `name` up under `root` (snapshot `generation`): served at once when open and
    /// fresh, else an open is queued for the ring (or joined; [`Files::submit`] pushes it) and
    /// the request `waiter` makes (only then: a hit costs no allocation) comes back from
    /// [`Files::complete`]. `need_file` asks for the descriptor too (a fresh entry does not
    /// keep one), so it always waits for an open.
    pub fn get(&mut self, root: &Path, generation: u64, name: &[u8], need_file: bool, now: Instant, waiter: impl FnOnce() -> W) -> Get {
        let rel = match normalise(name) {
            Ok(r) => r,
            Err(r) => return Get::Refused(r),
        };
        let Some(dir) = self.root(root, generation, now) else { return Get::Refused(Refused::Unreadable) };
        if !need_file {
            if let Some(f) = self.table.get(&rel, now, |f| !f.data.damaged()) {
                return Get::Ready(f.clone());
            }
        }
        match self.table.wait(&rel, waiter()) {
            Err(_) => Get::Busy,
            Ok(Wait::Joined) => Get::Waiting,
            Ok(Wait::Start) => {
                let cpath = CString::new(rel.as_os_str().as_bytes()).expect("normalise refuses NUL");
                let op = Box::new(Op { name: rel, cpath, how: types::OpenHow::new().flags(HOW_FLAGS).resolve(HOW_RESOLVE), root: dir });
                let i = match self.free.pop() {
                    Some(i) => i,
                    None => {
                        self.ops.push(None);
                        (self.ops.len() - 1) as u32
                    }
                };
                self.ops[i as usize] = Some(op);
                self.queued.push(i);
                Get::Waiting
            }
        }
    }

    /// Pushes the opens queued by [`Files::get`] to the ring (submitted with the worker's next
    /// io_uring_enter).
    pub fn submit(&mut self, ring: &mut IoUring) {
        for i in self.queued.drain(..) {
            let op = self.ops[i as usize].as_ref().expect("a queued open");
            let e = opcode::OpenAt2::new(types::Fd(op.root.dir.as_raw_fd()), op.cpath.as_ptr(), &op.how).build();
            super::ring::push(ring, &e.user_data((self.user_data)(i)));
        }
    }

    /// The open `op` completed with `res` (a descriptor or -errno): its outcome, and the
    /// requests that waited for it (oldest first). None for an unknown op (already taken).
    pub fn complete(&mut self, op: u32, res: i32, now: Instant) -> Option<(Result<Opened, Refused>, Vec<W>)> {
        let op = self.ops.get_mut(op as usize)?.take().inspect(|_| self.free.push(op))?;
        let outcome = if res < 0 {
            let r = refusal_of_errno(res);
            if r == Refused::Unreadable {
                tracing::warn!(file = %op.root.path.join(&op.name).display(), "bootstrap file refused ({}): cannot open: {}", self.answer, std::io::Error::from_raw_os_error(-res));
            }
            Err(r)
        } else {
            // Safety: the ring opened this descriptor for us; nobody else owns it.
            let file = File::from(unsafe { OwnedFd::from_raw_fd(res) });
            self.finish(&op.name, &op.root, file)
        };
        let keep = outcome.as_ref().ok().map(|o| o.found.clone());
        let waiters = self.table.done(&op.name, op.root.generation, keep, now);
        Some((outcome, waiters))
    }

    /// An open descriptor: checked to be a regular file, and mapped unless it is the file the
    /// table already maps (then that mapping is kept).
    fn finish(&self, name: &Path, root: &Root, file: File) -> Result<Opened, Refused> {
        let path = root.path.join(name);
        let m = file.metadata().map_err(|e| {
            tracing::warn!(file = %path.display(), "bootstrap file refused ({}): cannot stat: {e}", self.answer);
            Refused::Unreadable
        })?;
        if !m.is_file() {
            return Err(Refused::Outside);
        }
        let id = FileId::of(&m);
        if root.generation == self.table.generation() {
            if let Some(prev) = self.table.previous(name) {
                if prev.id == id && !prev.data.damaged() {
                    return Ok(Opened { found: prev.clone(), file: Arc::new(file) });
                }
            }
        }
        let data = if id.size == 0 {
            Backing::Bytes(Vec::new())
        } else {
            let map = FileMap::new(&file, &path, id, id.size).map_err(|e| {
                tracing::warn!(file = %path.display(), "bootstrap file refused ({}): {e}", self.answer);
                Refused::Unreadable
            })?;
            let _ = map.advise(memmap2::Advice::Random);
            Backing::Map(map)
        };
        Ok(Opened { found: Arc::new(Found { data: Arc::new(data), id, path }), file: Arc::new(file) })
    }

    /// As [`Files::get`] without the ring: a miss blocks this thread for one openat2 (no
    /// canonicalize walk). For a caller that cannot wait for a completion yet.
    pub fn get_sync(&mut self, root: &Path, generation: u64, name: &[u8], now: Instant) -> Result<Arc<Found>, Refused> {
        let rel = normalise(name)?;
        let dir = self.root(root, generation, now).ok_or(Refused::Unreadable)?;
        if let Some(f) = self.table.get(&rel, now, |f| !f.data.damaged()) {
            return Ok(f.clone());
        }
        let cpath = CString::new(rel.as_os_str().as_bytes()).map_err(|_| Refused::BadName)?;
        // The ring's OpenHow is the kernel's struct open_how (repr(transparent)).
        let how = types::OpenHow::new().flags(HOW_FLAGS).resolve(HOW_RESOLVE);
        // Safety: valid path and `how` for the call; the descriptor returned is owned below.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.dir.as_raw_fd(),
                cpath.as_ptr(),
                &how as *const types::OpenHow,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        let outcome = if fd < 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
            Err(refusal_of_errno(errno))
        } else {
            // Safety: just opened, owned by nobody else.
            self.finish(&rel, &dir, File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
        };
        self.table.put(&rel, dir.generation, outcome.as_ref().ok().map(|o| o.found.clone()), now);
        outcome.map(|o| o.found)
    }

    /// Requests waiting now (each holds its service's admission place).
    pub fn waiting(&self) -> usize {
        self.table.waiting()
    }

    /// Every waiting request, for a service that aborts everything (drain deadline passed).
    pub fn take_waiters(&mut self) -> Vec<W> {
        self.table.take_waiters()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootfiles::TRUST;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A root with a file, a folder, and symlinks in and out: (guard, canonical root).
    fn fixture(tag: &str) -> (Dir, PathBuf) {
        let d = std::env::temp_dir().join(format!("bootfarm-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let root = d.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(d.join("secret"), b"outside").unwrap();
        std::fs::write(root.join("sub/f"), b"inside").unwrap();
        let root = std::fs::canonicalize(&root).unwrap();
        std::os::unix::fs::symlink(d.join("secret"), root.join("out")).unwrap();
        std::os::unix::fs::symlink("../secret", root.join("up")).unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("sub/upup")).unwrap();
        std::os::unix::fs::symlink("sub/f", root.join("in")).unwrap();
        std::os::unix::fs::symlink("../in", root.join("sub/back")).unwrap();
        std::os::unix::fs::symlink(root.join("sub/f"), root.join("absolute-in")).unwrap();
        std::os::unix::fs::symlink("/proc/self/root/etc/hostname", root.join("magic")).unwrap();
        (Dir(d), root)
    }

    /// `name` through the ring as a worker does it: a hit at once, else the open's completion.
    fn open(
        files: &mut Files<u32>,
        ring: &mut IoUring,
        root: &Path,
        generation: u64,
        name: &[u8],
        now: Instant,
    ) -> Result<Arc<Found>, Refused> {
        match files.get(root, generation, name, false, now, || 7) {
            Get::Ready(f) => Ok(f),
            Get::Refused(r) => Err(r),
            Get::Busy => panic!("busy"),
            Get::Waiting => {
                files.submit(ring);
                ring.submit_and_wait(1).unwrap();
                let c = ring.completion().next().unwrap();
                let (outcome, waiters) = files.complete(c.user_data() as u32, c.result(), now).unwrap();
                assert_eq!(waiters, vec![7], "the request comes back once");
                outcome.map(|o| o.found)
            }
        }
    }

    #[test]
    fn names_resolve_beneath_the_root_through_the_ring_and_without_it() {
        let (_d, root) = fixture("beneath");
        let mut ring = super::super::ring::build().unwrap();
        let now = Instant::now();
        let cases: &[(&str, Result<&[u8], Refused>)] = &[
            ("sub/f", Ok(b"inside")),
            ("\\sub\\f", Ok(b"inside")),
            ("in", Ok(b"inside")),
            ("sub/back", Ok(b"inside")),
            ("out", Err(Refused::Outside)),
            ("up", Err(Refused::Outside)),
            ("sub/upup", Err(Refused::Outside)),
            // RESOLVE_BENEATH refuses every absolute symlink, even one that lands inside.
            ("absolute-in", Err(Refused::Outside)),
            ("magic", Err(Refused::Outside)),
            ("sub", Err(Refused::Outside)),
            ("none", Err(Refused::NotFound)),
            ("sub/f/x", Err(Refused::NotFound)),
            ("../secret", Err(Refused::Traversal)),
            ("sub/../../secret", Err(Refused::Traversal)),
            ("", Err(Refused::BadName)),
        ];
        for (name, want) in cases {
            let mut files = Files::new("test", |op| op as u64);
            let got = open(&mut files, &mut ring, &root, 1, name.as_bytes(), now);
            assert_eq!(got.as_ref().map(|f| f.data.bytes()).map_err(|r| *r), *want, "ring: {name}");
            let mut files: Files<u32> = Files::new("test", |op| op as u64);
            let got = files.get_sync(&root, 1, name.as_bytes(), now);
            assert_eq!(got.as_ref().map(|f| f.data.bytes()).map_err(|r| *r), *want, "sync: {name}");
        }
    }

    #[test]
    fn a_file_replaced_by_rename_while_cached_is_served_anew_after_trust() {
        let (d, root) = fixture("rename");
        let mut ring = super::super::ring::build().unwrap();
        let mut files = Files::new("test", |op| op as u64);
        let t0 = Instant::now();
        std::fs::write(root.join("f"), b"one").unwrap();
        std::fs::write(root.join("same"), b"kept").unwrap();
        let a = open(&mut files, &mut ring, &root, 1, b"f", t0).unwrap();
        let kept = open(&mut files, &mut ring, &root, 1, b"same", t0).unwrap();
        let tmp = d.0.join("f.new");
        std::fs::write(&tmp, b"second").unwrap();
        std::fs::rename(&tmp, root.join("f")).unwrap();
        let hit = open(&mut files, &mut ring, &root, 1, b"f", t0 + TRUST / 2).unwrap();
        assert!(Arc::ptr_eq(&a, &hit), "trusted for TRUST: no system call, the old mapping");
        let b = open(&mut files, &mut ring, &root, 1, b"f", t0 + TRUST).unwrap();
        assert_eq!(b.data.bytes(), b"second", "opened again past TRUST: the new file");
        assert_eq!(a.data.bytes(), b"one", "a running transfer keeps the old bytes");
        let again = open(&mut files, &mut ring, &root, 1, b"same", t0 + TRUST).unwrap();
        assert!(Arc::ptr_eq(&kept, &again), "an unchanged file keeps its mapping when opened again");
        // Removed: refused once TRUST has passed.
        std::fs::remove_file(root.join("f")).unwrap();
        assert_eq!(open(&mut files, &mut ring, &root, 1, b"f", t0 + 2 * TRUST).err(), Some(Refused::NotFound));
    }

    /// A file truncated in place under a fresh entry: once a send faults on its mapping
    /// (guard::mark_damaged_at, as the engines do on EFAULT) the entry is not served again, and
    /// the next request opens and maps the file as it is now.
    #[test]
    fn a_mapping_a_send_faulted_on_is_not_served_again() {
        let (_d, root) = fixture("fault");
        let mut ring = super::super::ring::build().unwrap();
        let mut files = Files::new("test", |op| op as u64);
        let t0 = Instant::now();
        std::fs::write(root.join("f"), vec![7u8; 3 * 4096]).unwrap();
        let a = open(&mut files, &mut ring, &root, 1, b"f", t0).unwrap();
        std::fs::OpenOptions::new().write(true).open(root.join("f")).unwrap().set_len(10).unwrap();
        assert!(Arc::ptr_eq(&a, &open(&mut files, &mut ring, &root, 1, b"f", t0).unwrap()), "fresh: trusted");
        assert!(crate::image::guard::mark_damaged_at(a.data.bytes().as_ptr() as usize + 5000));
        assert!(a.data.damaged());
        let b = open(&mut files, &mut ring, &root, 1, b"f", t0).unwrap();
        assert_eq!(b.data.bytes(), &[7u8; 10][..], "opened and mapped again at its new size");
        assert!(!crate::image::guard::mark_damaged_at(crate::session::ZEROS.as_ptr() as usize), "not a mapping");
    }

    #[test]
    fn requests_for_one_name_share_one_open_and_a_new_snapshot_starts_over() {
        let (d, root) = fixture("share");
        let mut ring = super::super::ring::build().unwrap();
        let mut files: Files<u32> = Files::new("test", |op| op as u64);
        let now = Instant::now();
        for w in [1, 2] {
            assert!(matches!(files.get(&root, 1, b"sub/f", false, now, || w), Get::Waiting));
        }
        assert_eq!(files.waiting(), 2);
        files.submit(&mut ring);
        ring.submit_and_wait(1).unwrap();
        let c = ring.completion().next().unwrap();
        assert!(ring.completion().next().is_none(), "one open for both");
        let (outcome, waiters) = files.complete(c.user_data() as u32, c.result(), now).unwrap();
        assert_eq!((outcome.unwrap().found.data.bytes(), waiters), (&b"inside"[..], vec![1, 2]));
        assert_eq!(files.waiting(), 0);
        // Another root under a new generation (a reload that moved tftp.root).
        let other = d.0.join("other");
        std::fs::create_dir_all(other.join("sub")).unwrap();
        std::fs::write(other.join("sub/f"), b"other root").unwrap();
        let f = open(&mut files, &mut ring, &other, 2, b"sub/f", now).unwrap();
        assert_eq!(f.data.bytes(), b"other root");
    }
}
