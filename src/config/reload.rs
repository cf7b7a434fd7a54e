//! The control thread: reloads on SIGHUP and when the file changes on disk (polled, debounced:
//! editors write in several steps), and returns on SIGTERM/SIGINT so the caller can drain.
//! Either way the file is taken only once it has stood still: the same (size, mtime, inode)
//! for `reload_debounce_ms` and around the read itself, so a file still being written (or
//! copied) is not read half way; writing a new file and renaming it into place is atomic too.
//! Signals are blocked in every thread (call [`block_signals`] before spawning any) and taken
//! here synchronously with sigtimedwait, so no handler runs in a worker.

use super::{Overrides, Store};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn signal_set() -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGHUP, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks SIGHUP/SIGTERM/SIGINT in the calling thread and every thread it spawns afterwards.
pub fn block_signals() {
    let set = signal_set();
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits up to `timeout` for one of the control signals; None on timeout.
pub fn wait_signal(timeout: Duration) -> Option<i32> {
    let set = signal_set();
    let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as libc::c_long };
    let s = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    (s > 0).then_some(s)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime_ns: i128,
    size: u64,
    ino: u64,
}

fn stamp(p: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some(Stamp { mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128, size: m.size(), ino: m.ino() })
}

/// Why the control loop returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Signal(i32),
    Stopped,
}

pub struct Control {
    pub store: std::sync::Arc<Store>,
    pub file: Option<PathBuf>,
    pub overrides: Overrides,
    /// The file as it was when the serving snapshot was read: a change made while the engine
    /// starts is still seen.
    loaded: Option<Stamp>,
    /// The service manager (NOTIFY_SOCKET): RELOADING=1 / READY=1 around every reload.
    pub notify: crate::notify::Notifier,
}

impl Control {
    /// Call right after the snapshot was loaded, before serving starts.
    pub fn new(store: std::sync::Arc<Store>, file: Option<PathBuf>, overrides: Overrides) -> Control {
        let loaded = file.as_deref().and_then(stamp);
        Control { store, file, overrides, loaded, notify: crate::notify::Notifier::from_env() }
    }

    /// Reads the file if it is still as `seen` (stamped `debounce` ago) after the read, and
    /// reloads from that text. None when it changed meanwhile: its new stamp, to wait on.
    fn take(&self, seen: Stamp, why: &str) -> Option<Stamp> {
        let file = self.file.as_deref()?;
        // Opened without blocking and only if it is a regular file (a FIFO would hang this thread).
        let text = crate::image::open_readable(file, false).map_err(std::io::Error::other).and_then(|(mut f, _, _)| {
            let mut t = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut t).map(|_| t)
        });
        let after = stamp(file);
        if after != Some(seen) || text.as_ref().is_ok_and(|t| t.len() as u64 != seen.size) {
            tracing::info!(why, file = %file.display(), "configuration file changed while read; reading it once it has stood still");
            return after;
        }
        match text.map(String::from_utf8) {
            Ok(Ok(text)) => self.reload(why, Some(&text)),
            Ok(Err(_)) => self.refused(why, &format!("{}: not UTF-8 text (a half-written file?)", file.display())),
            Err(e) => self.refused(why, &format!("{}: cannot read: {e}", file.display())),
        }
        None
    }

    fn refused(&self, why: &str, e: &str) {
        let g = self.store.load().generation;
        self.store.counters.add(crate::metrics::Counter::ConfigReloadsFailed, 1);
        tracing::error!(generation = g, why, "configuration refused, generation {g} keeps serving: {e}");
    }

    fn reload(&self, why: &str, text: Option<&str>) {
        let Some(file) = &self.file else {
            tracing::info!(why, "reload requested, but this instance runs without a config file (--demo): nothing to reload");
            return;
        };
        let old = self.store.load();
        self.notify.reloading();
        let result = match text {
            Some(t) => self.store.reload_text(file, t, &self.overrides),
            None => self.store.reload(file, &self.overrides),
        };
        match &result {
            Ok(g) => self.notify.reloaded(*g, false),
            Err(_) => self.notify.reloaded(old.generation, true),
        }
        match result {
            Ok(generation) => {
                let new = self.store.load();
                let s = (&old.config.server, &new.config.server);
                if s.0.listen != s.1.listen
                    || s.0.tftp_port != s.1.tftp_port
                    || s.0.http_port != s.1.http_port
                    || s.0.nbd_port != s.1.nbd_port
                    || s.0.iscsi_port != s.1.iscsi_port
                    || s.0.workers != s.1.workers
                    || s.0.steer != s.1.steer
                {
                    tracing::warn!(generation, "server.listen/ports/workers/steer changed: they take effect at the next restart");
                }
                if old.config.pxe.sockets_differ(&new.config.pxe) {
                    tracing::warn!(generation, "pxe.enabled/listen/interface/ports changed: they take effect at the next restart");
                }
                if old.config.image.mappings_max != new.config.image.mappings_max {
                    tracing::warn!(generation, "image.mappings_max changed: it takes effect at the next restart");
                }
                if old.config.nbd.cache_ram_prefault_bytes != new.config.nbd.cache_ram_prefault_bytes {
                    tracing::warn!(generation, "nbd.cache_ram_prefault_bytes changed: it takes effect at the next restart");
                }
                tracing::info!(generation, why, vdisks = new.vdisks.len(), farm = new.farm.len(), "configuration loaded");
            }
            Err(e) => {
                tracing::error!(generation = old.generation, why, "configuration refused, generation {} keeps serving: {e}", old.generation)
            }
        }
    }

    /// Stats every mapped file (image::guard::sweep): a vdisk image changed in place is refused
    /// from now on (one error logged, counted), one replaced by a new file at its path makes a
    /// reload that opens the new file. Called every poll.
    pub fn check_images(&self) {
        use crate::image::guard::{sweep, Change, FileId};
        use crate::metrics::Counter;
        let changes = sweep();
        if changes.is_empty() {
            return;
        }
        let snap = self.store.load();
        let using = |path: &Path, id: FileId| -> Vec<String> {
            snap.vdisks
                .iter()
                .filter(|v| v.chain.layers.iter().any(|l| l.path == path && l.file_id() == Some(id)))
                .map(|v| v.name.clone())
                .collect()
        };
        let mut reported: Vec<(PathBuf, FileId)> = Vec::new();
        let mut replaced = Vec::new();
        for c in changes {
            match c {
                Change::Damaged { path, old, new, faulted } => {
                    // A file mapped by several workers is one damage, logged once.
                    if reported.contains(&(path.clone(), old)) {
                        continue;
                    }
                    reported.push((path.clone(), old));
                    self.store.counters.add(Counter::ImageDamaged, 1);
                    let new_size = new.map_or("unknown (read past its end)".to_string(), |n| n.size.to_string());
                    let how = if faulted { "read past its new end" } else { "same file, new size or time" };
                    let names = using(&path, old);
                    if names.is_empty() {
                        tracing::error!(
                            file = %path.display(),
                            old_size = old.size,
                            new_size,
                            how,
                            "a served file changed in place (copied over, truncated or written): transfers and reads of it are refused; \
                             update files by writing a new file in the same folder and renaming it into place (mv)"
                        );
                    } else {
                        tracing::error!(
                            vdisk = %names.join(","),
                            file = %path.display(),
                            old_size = old.size,
                            new_size,
                            how,
                            "vdisk image changed in place while served (copied over, truncated or written): the vdisk is refused (NBD EIO, HTTP 503) until it is replaced; \
                             write the new image as a new file in the same folder and mv it into place (or send SIGHUP once the file is complete)"
                        );
                    }
                }
                Change::Replaced { path, old, new } => {
                    let names = using(&path, old);
                    if !names.is_empty() && !replaced.contains(&path) {
                        self.store.counters.add(Counter::ImageReplaced, 1);
                        tracing::info!(vdisk = %names.join(","), file = %path.display(), old_size = old.size, new_size = new.size, "vdisk image replaced by a new file: reloading to serve it");
                        replaced.push(path);
                    }
                }
            }
        }
        if !replaced.is_empty() {
            self.reload("image replaced", None);
        }
    }

    /// Runs until SIGTERM/SIGINT (returned) or until `stop` is set.
    pub fn run(&self, stop: &std::sync::atomic::AtomicBool) -> Exit {
        let cfg = self.store.load().config.server.clone();
        let poll = Duration::from_millis(cfg.reload_poll_ms);
        let debounce = Duration::from_millis(cfg.reload_debounce_ms);
        let mut last = self.loaded;
        // A stamp waiting to stand still for `debounce`, since when, and who asked.
        let mut pending: Option<(Stamp, Instant, &'static str)> = None;
        loop {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Exit::Stopped;
            }
            // Wake when a pending file is due, so a SIGHUP costs the debounce and no more.
            let due = pending.map(|(_, since, _)| (since + debounce).saturating_duration_since(Instant::now()));
            let signal = wait_signal(due.map_or(poll.min(debounce.max(Duration::from_millis(10))), |d| d.max(Duration::from_millis(1))));
            let Some(file) = &self.file else {
                match signal {
                    Some(libc::SIGHUP) => self.reload("SIGHUP", None),
                    Some(s) => return Exit::Signal(s),
                    None => self.check_images(),
                }
                continue;
            };
            let now = stamp(file);
            match signal {
                // SIGHUP reads the file too, once it has stood still (it may be mid-write).
                Some(libc::SIGHUP) => match now {
                    Some(n) => pending = Some((n, Instant::now(), "SIGHUP")),
                    None => {
                        pending = None;
                        self.reload("SIGHUP", None); // reports why it cannot be read
                    }
                },
                Some(s) => return Exit::Signal(s),
                None => self.check_images(),
            }
            match (now, pending) {
                (Some(n), Some((p, since, why))) if n == p && since.elapsed() >= debounce => {
                    pending = None;
                    last = Some(n);
                    if let Some(changed) = self.take(n, why) {
                        pending = Some((changed, Instant::now(), why));
                    }
                }
                (Some(n), Some((p, _, _))) if n == p => {} // not due yet
                // Still changing: wait again, for whoever asked.
                (Some(n), Some((_, _, why))) => pending = Some((n, Instant::now(), why)),
                (Some(n), None) if Some(n) != last => pending = Some((n, Instant::now(), "file changed")),
                _ => {}
            }
        }
    }
}
