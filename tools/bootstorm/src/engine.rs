//! What bootstorm's phase engines (TFTP `uring_tftp.rs`, HTTP `uring_http.rs`, the NBD and
//! iSCSI disk driver `uring_disk.rs`) share: inboxes spreading jobs over one engine thread per
//! core, the slots of the targets in flight, taking new jobs (waiting only while nothing
//! runs), one wait on the ring, and a pool of buffers lent per operation.

use bootfarm::engine::ring::push;
use io_uring::{opcode, squeue, types, IoUring};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where target threads hand their jobs to the engine threads.
pub struct Inboxes<J> {
    tx: Vec<mpsc::Sender<J>>,
}

impl<J: Send> Inboxes<J> {
    /// Starts an engine thread running `run` in `scope` for each entry of `cpus`, pinned to
    /// that CPU where Some (one unpinned thread if `cpus` is empty); each ends when the
    /// Inboxes are dropped and its targets are done.
    pub fn start<'s, 'e: 's, F>(scope: &'s std::thread::Scope<'s, 'e>, cpus: &[Option<usize>], run: F) -> Inboxes<J>
    where
        J: 'e,
        F: Fn(mpsc::Receiver<J>) + Send + Copy + 'e,
    {
        let mut tx = Vec::new();
        for &cpu in if cpus.is_empty() { &[None] } else { cpus } {
            let (t, rx) = mpsc::channel::<J>();
            tx.push(t);
            scope.spawn(move || {
                if let Some(cpu) = cpu {
                    bootfarm::engine::pin(cpu);
                }
                run(rx)
            });
        }
        Inboxes { tx }
    }

    /// Gives `job` to the engine thread `key` maps to.
    pub fn submit(&self, key: u64, job: J) {
        let _ = self.tx[key as usize % self.tx.len()].send(job);
    }
}

/// Targets in flight on one engine thread, by slot (the slot is the ring's user data).
pub struct Slots<T> {
    slots: Vec<Option<Box<T>>>,
    free: Vec<usize>,
    active: usize,
    open: bool,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots { slots: Vec::new(), free: Vec::new(), active: 0, open: true }
    }
}

impl<T> Slots<T> {
    /// The next new job: waits for one while no target runs, never while some do. None when
    /// none is waiting or the inbox has closed.
    pub fn next_job<J>(&mut self, rx: &mpsc::Receiver<J>) -> Option<J> {
        if !self.open {
            return None;
        }
        let j = if self.active == 0 {
            rx.recv().ok()
        } else {
            match rx.try_recv() {
                Ok(j) => Some(j),
                Err(mpsc::TryRecvError::Empty) => return None,
                Err(mpsc::TryRecvError::Disconnected) => None,
            }
        };
        self.open &= j.is_some();
        j
    }

    /// The inbox is closed and every target is done: the thread may end.
    pub fn finished(&self) -> bool {
        !self.open && self.active == 0
    }

    pub fn is_idle(&self) -> bool {
        self.active == 0
    }

    /// Targets in flight.
    pub fn active(&self) -> usize {
        self.active
    }

    /// A free slot for a target about to be built.
    pub fn reserve(&mut self) -> usize {
        self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        })
    }

    /// A reserved slot that was not used after all.
    pub fn release(&mut self, idx: usize) {
        self.free.push(idx);
    }

    pub fn put(&mut self, idx: usize, t: Box<T>) {
        self.slots[idx] = Some(t);
        self.active += 1;
    }

    pub fn get(&mut self, idx: usize) -> Option<&mut T> {
        self.slots.get_mut(idx)?.as_deref_mut()
    }

    /// Takes the target out; its slot is free again.
    pub fn remove(&mut self, idx: usize) -> Box<T> {
        let t = self.slots[idx].take().expect("occupied slot");
        self.free.push(idx);
        self.active -= 1;
        t
    }

    /// (slot, target) for every target in flight.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut T)> {
        self.slots.iter_mut().enumerate().filter_map(|(i, s)| s.as_deref_mut().map(|t| (i, t)))
    }
}

/// Entries of each engine ring's registered file table. A target's socket is installed at
/// its slot and the NBD and TFTP engines name it by slot (`types::Fixed`), so the kernel takes
/// no file reference per operation (fget/fput were ~2% of bootstorm's CPU in the headline).
/// Slots stay below this: at most 4096 targets in flight, plus those finishing.
pub const FILES: u32 = 16384;

/// The engine's ring (the bootfarm engine's: single issuer, deferred task work), with an empty
/// registered file table of `FILES` entries.
pub fn ring() -> IoUring {
    let ring = bootfarm::engine::ring::build().expect("io_uring");
    ring.submitter().register_files_sparse(FILES).expect("io_uring registered file table");
    ring
}

/// Installs `fd` at `slot` of the ring's file table, in place of any socket there before.
/// The table holds its own reference: the socket lives until [`uninstall`] or a replacement.
pub fn install(ring: &IoUring, slot: usize, fd: std::os::fd::RawFd) -> bool {
    slot < FILES as usize && ring.submitter().register_files_update(slot as u32, &[fd]).is_ok()
}

/// Empties `slot` of the ring's file table.
pub fn uninstall(ring: &IoUring, slot: usize) {
    if slot < FILES as usize {
        let _ = ring.submitter().register_files_update(slot as u32, &[-1]);
    }
}

/// Submits what is queued and waits up to a millisecond for completions: (user data, result).
/// `active`: targets in flight on this thread.
fn wait(ring: &mut IoUring, active: usize) -> Vec<(u64, i32)> {
    wait_flags(ring, active).into_iter().map(|(u, r, _)| (u, r)).collect()
}

/// The same with each completion's flags (multishot MORE, provided buffer id).
///
/// With many targets in flight the thread waits for a batch of completions (one per 16
/// targets, at most 32) rather than the first one: with deferred task work the kernel wakes it
/// only when the batch is in or the millisecond is over, so a storm costs a few wake-ups per
/// batch instead of one per packet. One in-flight target waits for its own completion alone.
pub fn wait_flags(ring: &mut IoUring, active: usize) -> Vec<(u64, i32, u32)> {
    let ts = types::Timespec::from(Duration::from_millis(1));
    let args = types::SubmitArgs::new().timespec(&ts);
    let _ = ring.submitter().submit_with_args((active / 16).clamp(1, 32), &args);
    ring.completion().map(|c| (c.user_data(), c.result(), c.flags())).collect()
}

/// User data of the engines' cancel requests (their own completions are skipped).
const CANCEL_UD: u64 = u64::MAX;
/// The reason a cancel gives when the run's deadline has passed.
pub const RUN_OVER: &str = "run time over";

/// A target's one operation in flight (NBD and HTTP engines): when it was submitted, its
/// number, and why the overdue scan cancelled it. The user data is the slot and the number,
/// so that a cancel reaches that operation and never the one submitted after it (by this
/// target or by the next one in the same slot).
pub struct Op {
    at: Instant,
    num: u32,
    cancel: Option<&'static str>,
}

impl Default for Op {
    fn default() -> Op {
        Op { at: Instant::now(), num: 0, cancel: None }
    }
}

thread_local! {
    /// Operation numbers, unique within an engine thread (its ring) until they wrap at 2^32.
    static OPS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

fn op_ud(slot: usize, num: u32) -> u64 {
    slot as u64 | (num as u64) << 32
}

impl Op {
    /// Queues `e` as the operation of the target in `slot`, numbered and timed.
    pub fn submit(&mut self, ring: &mut IoUring, slot: usize, e: squeue::Entry) {
        self.at = Instant::now();
        self.num = OPS.with(|c| {
            let n = c.get().wrapping_add(1);
            c.set(n);
            n
        });
        push(ring, &e.user_data(op_ud(slot, self.num)));
    }
}

/// A target with one operation in flight.
pub trait InFlight {
    fn op(&mut self) -> &mut Op;
}

/// Every 20 ms: operations that waited past `timeout` (the server hangs) or past the run's
/// deadline are cancelled; their cancelled completion then fails the target over, or ends it.
fn cancel_overdue<T: InFlight>(slots: &mut Slots<T>, ring: &mut IoUring, last_scan: &mut Instant, timeout: Duration, deadline: Instant) {
    let now = Instant::now();
    if now.duration_since(*last_scan) < Duration::from_millis(20) {
        return;
    }
    *last_scan = now;
    for (idx, t) in slots.iter_mut() {
        let op = t.op();
        if op.cancel.is_some() {
            continue;
        }
        op.cancel = if now > deadline {
            Some(RUN_OVER)
        } else if now.duration_since(op.at) > timeout {
            Some("server stopped answering")
        } else {
            None
        };
        if op.cancel.is_some() {
            push(ring, &opcode::AsyncCancel::new(op_ud(idx, op.num)).build().user_data(CANCEL_UD));
        }
    }
}

/// What became of a target's one operation: its result, or why the overdue scan cancelled it.
/// An operation that completed on its own in the round its cancel was asked for keeps its
/// result (the answer came, if late), unless the run's time is over.
pub enum Outcome {
    Res(i32),
    Cancelled(&'static str),
}

/// One round of the NBD and HTTP engines: submits what is queued, waits, cancels overdue
/// operations, and gives each completion as (slot, outcome), without the cancel requests' own.
pub fn round<T: InFlight>(
    slots: &mut Slots<T>,
    ring: &mut IoUring,
    last_scan: &mut Instant,
    timeout: Duration,
    deadline: Instant,
) -> Vec<(usize, Outcome)> {
    let cqes = wait(ring, slots.active());
    cancel_overdue(slots, ring, last_scan, timeout, deadline);
    cqes.into_iter()
        .filter(|&(ud, _)| ud != CANCEL_UD)
        .filter_map(|(ud, res)| {
            let idx = (ud & 0xffff_ffff) as usize;
            let op = slots.get(idx)?.op();
            if ud != op_ud(idx, op.num) {
                return None; // not the operation in flight (cannot happen: one at a time)
            }
            Some((
                idx,
                match op.cancel.take() {
                    Some(why) if res == -libc::ECANCELED || why == RUN_OVER => Outcome::Cancelled(why),
                    _ => Outcome::Res(res),
                },
            ))
        })
        .collect()
}

/// Buffers an engine thread lends its targets for one operation at a time (a request while it
/// is sent, a reply while it is awaited), the most recently returned first: its cache lines
/// are the likeliest still cached, where a buffer per target (200 targets x 128 KiB x 2) left
/// every WRITE pattern stored to cold memory, and each boot's new buffers cost page faults.
/// At most `POOL_MAX` buffers are kept; their size is the largest operation's.
#[derive(Default)]
pub struct Pool {
    free: Vec<Vec<u8>>,
}

pub const POOL_MAX: usize = 256;

impl Pool {
    /// A buffer of at least `len` bytes (its contents are old bytes: the caller overwrites).
    pub fn take(&mut self, len: usize) -> Vec<u8> {
        let mut b = self.free.pop().unwrap_or_default();
        if b.len() < len {
            b.resize(len, 0);
        }
        b
    }

    /// Returns a buffer (an empty one is dropped, as are those past `POOL_MAX`).
    pub fn give(&mut self, b: Vec<u8>) {
        if !b.is_empty() && self.free.len() < POOL_MAX {
            self.free.push(b);
        }
    }
}
