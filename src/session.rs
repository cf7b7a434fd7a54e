//! The contract between the engine's one TCP driver (`engine/tcp.rs`) and a protocol session on
//! one TCP connection (`nbd::session`, `http::conn`, next `iscsi`). A session makes every
//! protocol decision and never touches a socket, a descriptor or a clock: the driver feeds it
//! the bytes received with `now`, asks it for the next batch to send, tells it when that batch is
//! released, and wakes it at the deadline it asked for (quinn-proto's shape). A unit test drives
//! a session the same way, with a byte stream split anywhere and a fake `now`.
//!
//! Limits: a batch holds at most `Batch::PIECES_MAX` pieces (the driver sends it over as many
//! sendmsg calls as IOV_MAX requires, from a byte cursor; no allocation per send once its vectors
//! have grown). Memory a `Piece::Mem` points at must stay valid and unchanged until
//! [`TcpSession::on_released`]: the session owns it (an `Arc` of the image, a pinned cache page,
//! the static zero page).

use std::net::SocketAddr;
use std::time::Instant;

/// The zero page every zero run of every TCP service points at (64 KiB, read only).
pub const ZEROS_LEN: usize = 64 * 1024;
pub static ZEROS: [u8; ZEROS_LEN] = [0; ZEROS_LEN];

/// One piece of an outgoing batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// `len` bytes of the batch's own buffer from `off`: headers, status, small copies.
    Own { off: u32, len: u32 },
    /// Memory the session keeps alive and unchanged until the batch is released: a slice of
    /// an image mapping, a cache page, the zero page.
    Mem { ptr: *const u8, len: usize },
}

/// What a session sends next: its pieces in order. Built in place by the session and reused
/// batch after batch (clear keeps the capacity).
#[derive(Default, Debug)]
pub struct Batch {
    /// The bytes `Piece::Own` refers to.
    pub buf: Vec<u8>,
    pub pieces: Vec<Piece>,
    /// Bytes in the batch (own and referenced).
    pub len: u64,
    /// Of those, the bytes referenced (`Mem`): what a zero-copy send would save copying.
    pub mem_len: u64,
    /// The bytes come from a file or an image that may have changed in place under the
    /// mapping (image::guard): the driver asks [`TcpSession::still_valid`] before each send.
    pub guarded: bool,
}

impl Batch {
    /// Most pieces in one batch: a session stops adding replies past it.
    pub const PIECES_MAX: usize = 16 * 1024;

    pub fn clear(&mut self) {
        self.buf.clear();
        self.pieces.clear();
        self.len = 0;
        self.mem_len = 0;
        self.guarded = false;
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends own bytes written by `f` (merged with the previous piece when contiguous).
    pub fn put(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        f(&mut self.buf);
        let n = (self.buf.len() - start) as u32;
        if n == 0 {
            return;
        }
        match self.pieces.last_mut() {
            Some(Piece::Own { off, len }) if (*off + *len) as usize == start => *len += n,
            _ => self.pieces.push(Piece::Own { off: start as u32, len: n }),
        }
        self.len += n as u64;
    }

    /// Appends a copy of `bytes`.
    pub fn copy(&mut self, bytes: &[u8]) {
        self.put(|b| b.extend_from_slice(bytes));
    }

    /// Appends a reference to `bytes`, which the caller keeps alive and unchanged until the
    /// batch is released (see the module's contract).
    pub fn mem(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.pieces.push(Piece::Mem { ptr: bytes.as_ptr(), len: bytes.len() });
        self.len += bytes.len() as u64;
        self.mem_len += bytes.len() as u64;
    }

    /// Appends `n` zero bytes, as references to the static zero page.
    pub fn zeros(&mut self, mut n: u64) {
        while n > 0 {
            let k = n.min(ZEROS_LEN as u64) as usize;
            self.mem(&ZEROS[..k]);
            n -= k as u64;
        }
    }

    /// Appends `[start, start + len)` of a vdisk chain: mapping slices and zero runs.
    pub fn chain(&mut self, chain: &crate::image::Chain, start: u64, len: u64) {
        let _ = chain.read(start, len, &mut |s| match s {
            crate::image::Segment::Data(d) => self.mem(d),
            crate::image::Segment::Zero(n) => self.zeros(n),
        });
    }

    /// The bytes of piece `p` (for tests and for a copy into a direct send).
    ///
    /// # Safety
    /// For `Mem` pieces, the memory must still be alive: the batch was not released yet.
    pub unsafe fn piece_bytes(&self, p: &Piece) -> &[u8] {
        match *p {
            Piece::Own { off, len } => &self.buf[off as usize..(off + len) as usize],
            // Safety: the caller upholds the batch contract.
            Piece::Mem { ptr, len } => unsafe { std::slice::from_raw_parts(ptr, len) },
        }
    }

    /// The whole batch as one vector (tests).
    ///
    /// # Safety
    /// As [`Batch::piece_bytes`].
    pub unsafe fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len as usize);
        for p in &self.pieces {
            // Safety: forwarded from the caller.
            v.extend_from_slice(unsafe { self.piece_bytes(p) });
        }
        v
    }
}

/// Why the driver refused a connection at admission (the session never existed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The service's total connection limit.
    Total,
    /// The per-client-address limit.
    PerIp,
}

/// One connection's protocol, driven by the engine's TCP driver. `Ctx` is what the session
/// may consult while it decides (the snapshot, the target registry, counters, the farm): the
/// protocol folder declares it as a trait, the engine glue implements it.
pub trait TcpSession {
    type Ctx: ConnScope;

    /// Bytes received and not taken yet, oldest first; returns how many it took. Bytes not
    /// taken are offered again once more arrive or after [`TcpSession::on_released`]. A
    /// session that takes nothing from a full receive buffer while it has nothing to send
    /// makes no progress: the driver closes it (its `close_reason` says why).
    fn on_input(&mut self, ctx: &mut Self::Ctx, input: &[u8], now: Instant) -> usize;

    /// Whether the session takes input now; while false the driver stops receiving into a
    /// full buffer and TCP pushes back (a pipelining client ahead of its replies).
    fn wants_input(&self) -> bool;

    /// The client closed its side (FIN) or the connection was reset.
    fn on_eof(&mut self, ctx: &mut Self::Ctx, now: Instant);

    /// The next batch to send, or None when there is nothing to send now. Called only when no
    /// earlier batch is held; the returned batch stays untouched, and its `Mem` pieces valid,
    /// until [`TcpSession::on_released`].
    fn poll_transmit(&mut self, ctx: &mut Self::Ctx, now: Instant) -> Option<&Batch>;

    /// The batch from the last `poll_transmit` is sent in full and the kernel holds none of it
    /// (a zero-copy send's notification came): its memory may be reused.
    fn on_released(&mut self, ctx: &mut Self::Ctx, now: Instant);

    /// For a `guarded` batch: whether its file or image is still the one it was read from.
    /// False cuts the connection off (what was read may be wrong).
    fn still_valid(&self) -> bool {
        true
    }

    /// When the session next wants [`TcpSession::on_timeout`] (a handshake, header or idle
    /// deadline), or None.
    fn poll_timeout(&self) -> Option<Instant>;

    /// Its deadline passed; it may queue a last answer (HTTP 408) and be done.
    fn on_timeout(&mut self, ctx: &mut Self::Ctx, now: Instant);

    /// The service is draining: finish the exchange under way, then be done.
    fn on_drain(&mut self, ctx: &mut Self::Ctx, now: Instant);

    /// Whether it wants the connection closed once the batch being sent (if any) is out.
    fn is_done(&self) -> bool;

    /// Since when it has been idle (nothing pending in either direction), when it is: at a
    /// connection limit the driver may close the longest-idle one to admit a new client.
    fn idle_since(&self) -> Option<Instant>;

    /// Whether an operator asked for this connection to be cut (NBD: a disconnect of its
    /// target); the driver asks when the spec's `cuts` generation changed.
    fn cut_requested(&self) -> bool {
        false
    }

    /// Why it ended, for the close log line ("" when the client simply left).
    fn close_reason(&self) -> &'static str;

    /// Requests (or commands) answered so far, for the close log line.
    fn requests(&self) -> u64 {
        0
    }

    /// Called once when the connection is gone (closed by either side, cut off by the driver
    /// for a stalled send with `stalled`), so the session can let go of what it holds.
    fn on_closed(&mut self, ctx: &mut Self::Ctx, stalled: bool, now: Instant);
}

/// A connection as the driver names it (its slab id and generation): what a context needs to
/// wake that connection later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub id: u32,
    pub generation: u16,
}

/// Implemented by every session context: before each call into a session the driver says
/// which connection it is, so that a context that starts something asynchronous for it (a file
/// opened through the ring, say) can have the driver wake it when that completes. A session
/// waiting for such a thing returns None from `poll_transmit`; the engine glue calls the
/// driver's `wake(ConnKey)` when the thing is ready, and the driver polls the session again.
pub trait ConnScope {
    fn enter(&mut self, _conn: ConnKey) {}
}

/// What a per-worker protocol tells the driver about new connections.
pub trait TcpProtocol {
    type Session: TcpSession;

    /// A new connection from `peer`, admitted.
    fn open(&mut self, ctx: &mut <Self::Session as TcpSession>::Ctx, peer: SocketAddr, now: Instant) -> Self::Session;

    /// Bytes to write (one non-blocking send) before closing a connection refused at
    /// admission: HTTP's 503 page; nothing for NBD.
    fn refusal(&mut self, ctx: &mut <Self::Session as TcpSession>::Ctx, why: Refusal, out: &mut Vec<u8>);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_merges_own_bytes_and_counts_references() {
        let mut b = Batch::default();
        b.copy(b"ab");
        b.put(|v| v.extend_from_slice(b"cd"));
        let data = vec![7u8; 10];
        b.mem(&data);
        b.copy(b"e");
        b.zeros(ZEROS_LEN as u64 + 3);
        assert_eq!(b.pieces.len(), 5, "{:?}", b.pieces);
        assert_eq!(b.len, 4 + 10 + 1 + ZEROS_LEN as u64 + 3);
        assert_eq!(b.mem_len, 10 + ZEROS_LEN as u64 + 3);
        // Safety: `data` and ZEROS are alive.
        let all = unsafe { b.to_vec() };
        assert_eq!(&all[..15], b"abcd\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07e");
        assert!(all[15..].iter().all(|&x| x == 0));
        b.clear();
        assert!(b.is_empty() && b.pieces.is_empty() && b.buf.is_empty());
    }
}
