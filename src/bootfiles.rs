//! Bootstrap files served by TFTP and HTTP /boot: the rules that map a requested name to a file
//! under `tftp.root`, and the per-worker table of files already opened. Sans-IO: the engine
//! (`engine/files.rs`) opens with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` through the
//! ring relative to a descriptor of the root and feeds the outcome in; nothing here touches a
//! file or a clock.
//!
//! Limits: `ENTRIES_MAX` files per worker, `OPENS_MAX` opens in flight per worker, `WAITERS_MAX`
//! requests waiting for them; a table entry is trusted `TRUST` after its open, then opened again
//! (the same file keeps its mapping) so that a file replaced by rename is served anew.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// Distinct files kept per worker before the table starts over (running transfers keep their
/// mappings through their own `Arc`s).
pub const ENTRIES_MAX: usize = 4096;
/// Distinct names being opened at once per worker: a storm asks for a handful of files, a
/// scan of random names is what fills this, and it is answered "busy" instead of queueing.
pub const OPENS_MAX: usize = 64;
/// Requests waiting for an open per worker (each holds its transfer's admission place).
pub const WAITERS_MAX: usize = 4096;
/// How long an open file is served without looking at the name again. A file replaced by
/// rename is picked up by requests arriving after this; running transfers finish on the old.
pub const TRUST: Duration = Duration::from_secs(1);

/// Why a name is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not valid UTF-8, a NUL, a control character, too long, or empty after normalisation.
    BadName,
    /// `..` components.
    Traversal,
    NotFound,
    /// Resolves (through a symlink, absolute or escaping) outside the root, or is not a
    /// regular file.
    Outside,
    /// Exists but cannot be opened or mapped (permissions, the mapping limit): the server log
    /// says why.
    Unreadable,
    /// Changed in place while mapped (image::guard): refused until replaced.
    Damaged,
}

/// Longest request name taken, in bytes.
pub const NAME_MAX: usize = 1024;

/// Normalises a request name: `\` becomes `/`, leading `/` are dropped, `.` and empty
/// components vanish, `..` is refused. Returns a relative path, the table's key.
pub fn normalise(name: &[u8]) -> Result<PathBuf, Refused> {
    let s = std::str::from_utf8(name).map_err(|_| Refused::BadName)?;
    if s.chars().any(|c| c.is_control()) || s.len() > NAME_MAX {
        return Err(Refused::BadName);
    }
    let unix = s.replace('\\', "/");
    let mut out = PathBuf::new();
    for c in Path::new(&unix).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => return Err(Refused::Traversal),
            Component::Prefix(_) => return Err(Refused::BadName),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(Refused::BadName);
    }
    Ok(out)
}

/// The refusal an `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` error means (a negative
/// errno as a ring completion gives it, or a positive one).
pub fn refusal_of_errno(errno: i32) -> Refused {
    match errno.abs() {
        libc::ENOENT | libc::ENOTDIR => Refused::NotFound,
        // EXDEV: a component (`..` inside a symlink, an absolute symlink) leaves the root;
        // ELOOP: too many links, or a magic link (/proc/self/fd/N).
        libc::EXDEV | libc::ELOOP => Refused::Outside,
        _ => Refused::Unreadable,
    }
}

/// What a caller of [`Table::wait`] does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Wait {
    /// First waiter for this name: start its open, then report it with [`Table::done`].
    Start,
    /// An open of this name is in flight already; the waiter is served when it completes.
    Joined,
}

struct Entry<V> {
    value: V,
    checked: Instant,
}

/// Per-worker table of open bootstrap files by normalised name, with the requests waiting for
/// a name's open. `V` is what an open gives (the mapping), `W` a waiting request.
pub struct Table<V, W> {
    generation: u64,
    entries: HashMap<PathBuf, Entry<V>>,
    pending: HashMap<PathBuf, Vec<W>>,
    waiters: usize,
}

impl<V, W> Default for Table<V, W> {
    fn default() -> Self {
        Table { generation: 0, entries: HashMap::new(), pending: HashMap::new(), waiters: 0 }
    }
}

impl<V, W> Table<V, W> {
    /// The snapshot generation the entries belong to. A new one (tftp.root may have changed)
    /// drops every entry; opens in flight complete, but what they give is not kept.
    pub fn snapshot(&mut self, generation: u64) -> bool {
        if generation == self.generation {
            return false;
        }
        self.generation = generation;
        self.entries.clear();
        true
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The file for `name` if it was opened less than `TRUST` ago and `usable` says it still
    /// serves (a damaged mapping does not).
    pub fn get(&self, name: &Path, now: Instant, usable: impl Fn(&V) -> bool) -> Option<&V> {
        let e = self.entries.get(name)?;
        (now < e.checked + TRUST && usable(&e.value)).then_some(&e.value)
    }

    /// The entry for `name` whatever its age (to keep its mapping when an open finds the same
    /// file again).
    pub fn previous(&self, name: &Path) -> Option<&V> {
        self.entries.get(name).map(|e| &e.value)
    }

    /// Queues `waiter` for `name`'s open; gives it back when a limit is reached (the caller
    /// answers "busy").
    pub fn wait(&mut self, name: &Path, waiter: W) -> Result<Wait, W> {
        if self.waiters >= WAITERS_MAX {
            return Err(waiter);
        }
        if let Some(list) = self.pending.get_mut(name) {
            list.push(waiter);
            self.waiters += 1;
            return Ok(Wait::Joined);
        }
        if self.pending.len() >= OPENS_MAX {
            return Err(waiter);
        }
        self.pending.insert(name.to_path_buf(), vec![waiter]);
        self.waiters += 1;
        Ok(Wait::Start)
    }

    /// Names being opened now.
    pub fn opening(&self) -> usize {
        self.pending.len()
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiters
    }

    /// `name`'s open (started for snapshot `generation`) completed: its value is kept when it
    /// opened and belongs to the current snapshot, the entry dropped when it did not open.
    /// Returns the waiters, oldest first.
    pub fn done(&mut self, name: &Path, generation: u64, opened: Option<V>, now: Instant) -> Vec<W> {
        self.put(name, generation, opened, now);
        let w = self.pending.remove(name).unwrap_or_default();
        self.waiters -= w.len();
        w
    }

    /// Records the outcome of an open of `name` (for snapshot `generation`) made now, by a
    /// ring completion or by a synchronous open that had no waiter.
    pub fn put(&mut self, name: &Path, generation: u64, opened: Option<V>, now: Instant) {
        if generation == self.generation {
            match opened {
                Some(value) => {
                    if self.entries.len() >= ENTRIES_MAX && !self.entries.contains_key(name) {
                        self.entries.clear();
                    }
                    self.entries.insert(name.to_path_buf(), Entry { value, checked: now });
                }
                None => {
                    self.entries.remove(name);
                }
            }
        }
    }

    /// Every waiting request, for a worker that stops (drain deadline passed).
    pub fn take_waiters(&mut self) -> Vec<W> {
        self.waiters = 0;
        self.pending.values_mut().flat_map(std::mem::take).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        assert_eq!(normalise(b"pxelinux.0").unwrap(), PathBuf::from("pxelinux.0"));
        assert_eq!(normalise(b"\\boot\\x86\\wdsnbp.com").unwrap(), PathBuf::from("boot/x86/wdsnbp.com"));
        assert_eq!(normalise(b"//a/./b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(normalise(b"../etc/passwd"), Err(Refused::Traversal));
        assert_eq!(normalise(b"a\\..\\..\\x"), Err(Refused::Traversal));
        assert_eq!(normalise(b"/"), Err(Refused::BadName));
        assert_eq!(normalise(b"a\x01b"), Err(Refused::BadName));
        assert_eq!(normalise(b"\xff"), Err(Refused::BadName));
        assert!(normalise(&[b'a'; NAME_MAX]).is_ok());
        assert_eq!(normalise(&[b'a'; NAME_MAX + 1]), Err(Refused::BadName), "one byte over the limit");
    }

    #[test]
    fn errno_meanings() {
        assert_eq!(refusal_of_errno(-libc::ENOENT), Refused::NotFound);
        assert_eq!(refusal_of_errno(libc::ENOTDIR), Refused::NotFound);
        assert_eq!(refusal_of_errno(-libc::EXDEV), Refused::Outside);
        assert_eq!(refusal_of_errno(-libc::ELOOP), Refused::Outside);
        assert_eq!(refusal_of_errno(-libc::EACCES), Refused::Unreadable);
    }

    #[test]
    fn entries_are_trusted_for_a_while_then_opened_again() {
        let t0 = Instant::now();
        let mut t: Table<u32, u8> = Table::default();
        t.snapshot(1);
        let n = Path::new("f");
        assert_eq!(t.get(n, t0, |_| true), None);
        assert_eq!(t.wait(n, 1), Ok(Wait::Start));
        assert_eq!(t.wait(n, 2), Ok(Wait::Joined), "a second request joins the open in flight");
        assert_eq!(t.done(n, 1, Some(7), t0), vec![1, 2]);
        assert_eq!((t.opening(), t.waiting()), (0, 0));
        assert_eq!(t.get(n, t0 + TRUST - Duration::from_millis(1), |_| true), Some(&7));
        assert_eq!(t.get(n, t0, |v| *v != 7), None, "an unusable (damaged) entry is not served");
        assert_eq!(t.get(n, t0 + TRUST, |_| true), None, "past TRUST it is opened again");
        assert_eq!(t.previous(n), Some(&7), "its mapping can be kept if the file is the same");
        // A failed open drops the entry.
        assert_eq!(t.wait(n, 3), Ok(Wait::Start));
        assert_eq!(t.done(n, 1, None, t0 + TRUST), vec![3]);
        assert_eq!(t.previous(n), None);
    }

    #[test]
    fn a_new_snapshot_drops_entries_and_stale_opens_are_not_kept() {
        let t0 = Instant::now();
        let mut t: Table<u32, u8> = Table::default();
        t.snapshot(1);
        let n = Path::new("f");
        assert_eq!(t.wait(n, 1), Ok(Wait::Start));
        assert_eq!(t.done(n, 1, Some(7), t0), vec![1]);
        assert_eq!(t.wait(n, 2), Ok(Wait::Start));
        assert!(t.snapshot(2));
        assert!(!t.snapshot(2), "the same generation changes nothing");
        assert_eq!(t.get(n, t0, |_| true), None, "dropped with the old snapshot");
        assert_eq!(t.done(n, 1, Some(8), t0), vec![2], "its waiter is still answered");
        assert_eq!(t.previous(n), None, "an open from the old root is not kept");
    }

    #[test]
    fn opens_and_waiters_stop_at_their_limits() {
        let mut t: Table<u32, usize> = Table::default();
        for i in 0..OPENS_MAX {
            assert_eq!(t.wait(Path::new(&format!("f{i}")), i), Ok(Wait::Start));
        }
        assert_eq!(t.wait(Path::new("one-more"), 99), Err(99), "OPENS_MAX names in flight");
        // Waiters for names already being opened are still taken, up to WAITERS_MAX.
        for i in OPENS_MAX..WAITERS_MAX {
            assert_eq!(t.wait(Path::new("f0"), i), Ok(Wait::Joined));
        }
        assert_eq!(t.waiting(), WAITERS_MAX);
        assert_eq!(t.wait(Path::new("f1"), 0), Err(0), "WAITERS_MAX requests waiting");
        let w = t.done(Path::new("f0"), 0, None, Instant::now());
        assert_eq!(w.len(), 1 + WAITERS_MAX - OPENS_MAX);
        assert_eq!(t.wait(Path::new("f1"), 0), Ok(Wait::Joined), "room again");
        assert_eq!(t.take_waiters().len(), OPENS_MAX);
        assert_eq!(t.waiting(), 0);
    }
}
