//! What a worker runs: a list of services (TFTP, HTTP, NBD, next ProxyDHCP), each fed the
//! completions and timer expiries whose [`Token`] names it, and one [`Io`] context they share:
//! the ring, the provided receive buffers, the timer wheel, the loop's `now` and the snapshot
//! store. A service never waits: it queues operations on the ring and returns.

use super::ring::BufRing;
use super::timer::Wheel;
use super::token::Token;
use crate::config::Store;
use io_uring::IoUring;
use std::sync::Arc;
use std::time::Instant;

/// A worker's means of doing anything: shared by its services, one call at a time.
pub struct Io {
    pub ring: IoUring,
    /// Provided buffers that multishot receives pick from (UDP services).
    pub bufs: BufRing,
    /// Every service's deadlines, keyed by Token.
    pub wheel: Wheel,
    /// The time of the loop's current pass (read once per pass, after the wait).
    pub now: Instant,
    pub(crate) store: Arc<Store>,
}

impl Io {
    pub fn new(ring: IoUring, bufs: BufRing, store: Arc<Store>, now: Instant) -> Io {
        Io { ring, bufs, wheel: Wheel::new(now), now, store }
    }
}

/// One protocol's engine side, as the worker's loop drives it. Ids and generations in tokens
/// are the service's own (its slab); a stale token (the generation moved on) is ignored.
pub trait Service {
    /// Short name for log lines ("tftp", "http"...).
    fn name(&self) -> &'static str;

    /// A completion of an operation this service queued with `token`.
    fn on_completion(&mut self, io: &mut Io, token: Token, res: i32, flags: u32);

    /// A wheel entry this service armed with `token` expired.
    fn on_timer(&mut self, io: &mut Io, token: Token);

    /// After each batch of completions and timers: queue whatever the sessions touched since
    /// the last flush need (sends, receives, accepts, closes).
    fn flush(&mut self, io: &mut Io);

    /// Draining: no new session; running ones finish.
    fn stop_listening(&mut self, io: &mut Io);

    /// The drain deadline passed: close everything now.
    fn abort_all(&mut self, io: &mut Io);

    /// Sessions or connections running.
    fn active(&self) -> usize;

    /// Entries still stored: running, or closed while the kernel holds some of their memory.
    fn lingering(&self) -> usize;
}
