//! A connection's outgoing side: the session's batch being sent, a byte cursor over its
//! pieces, and the iovecs and message header the kernel reads while a send is in flight.

use super::IOV_MAX;
use crate::engine::ring::{push, with_sock, SockRef};
use crate::session::{Batch, Piece};
use io_uring::opcode;
use std::os::fd::RawFd;

pub(super) struct Outgoing {
    /// The session's batch (from its `poll_transmit`); the session leaves it untouched until
    /// `on_released`, and it lives inside the session, boxed in the slab: the pointer stays
    /// valid while it is held.
    pub batch: Option<*const Batch>,
    pub total: u64,
    pub sent: u64,
    /// (piece, offset in it) of the first byte not sent.
    pub cursor: (usize, usize),
    pub sending: bool,
    /// SEND_ZC notifications still to come: the batch stays held until then.
    pub zc_pending: u32,
    pub iov: Vec<libc::iovec>,
    pub msg: libc::msghdr,
}

impl Default for Outgoing {
    fn default() -> Self {
        Outgoing {
            batch: None,
            total: 0,
            sent: 0,
            cursor: (0, 0),
            sending: false,
            zc_pending: 0,
            iov: Vec::with_capacity(8),
            // Safety: an all-zero msghdr is a valid empty one.
            msg: unsafe { std::mem::zeroed() },
        }
    }
}

impl Outgoing {
    /// Holds `b` (just returned by the session's poll_transmit) until released.
    pub fn hold(&mut self, b: &Batch) {
        self.total = b.len;
        self.sent = 0;
        self.cursor = (0, 0);
        self.batch = Some(b as *const Batch);
    }

    fn held(&self) -> &Batch {
        // Safety: only called while the batch is held, so the session keeps it alive and
        // untouched.
        unsafe { &*self.batch.expect("a batch is held") }
    }

    pub fn guarded(&self) -> bool {
        self.held().guarded
    }

    /// Moves the cursor over `n` bytes that went out.
    pub fn advance(&mut self, n: usize) {
        self.sent += n as u64;
        // Safety: as `held`; the borrow does not outlive this call.
        let b = unsafe { &*self.batch.expect("a batch is held") };
        let mut n = n;
        while n > 0 && self.cursor.0 < b.pieces.len() {
            let left = piece_len(&b.pieces[self.cursor.0]) - self.cursor.1;
            if n >= left {
                n -= left;
                self.cursor = (self.cursor.0 + 1, 0);
            } else {
                self.cursor.1 += n;
                n = 0;
            }
        }
    }

    /// The iovecs from the cursor, IOV_MAX at most.
    fn fill_iov(&mut self) {
        // Safety: as `held`.
        let b = unsafe { &*self.batch.expect("a batch is held") };
        self.iov.clear();
        let (mut i, mut skip) = self.cursor;
        while i < b.pieces.len() && self.iov.len() < IOV_MAX {
            let (p, n) = match b.pieces[i] {
                Piece::Own { off, len } => (b.buf[off as usize..].as_ptr(), len as usize),
                Piece::Mem { ptr, len } => (ptr, len),
            };
            // Safety: `skip` < n; the pointer stays inside the piece.
            self.iov.push(libc::iovec { iov_base: unsafe { p.add(skip) } as *mut _, iov_len: n - skip });
            skip = 0;
            i += 1;
        }
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = self.iov.len() as _;
    }

    /// A small batch is first offered to the socket with one non-blocking sendmsg: on an idle
    /// connection it fits in the socket buffer, and the reply leaves without a submission, a
    /// completion and another pass of the loop. What does not fit goes through the ring.
    /// Returns the bytes sent.
    pub fn direct(&mut self, fd: RawFd) -> u64 {
        self.fill_iov();
        // Safety: msg points at iovecs over memory the held batch keeps alive.
        let n = unsafe { libc::sendmsg(fd, &self.msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        if n <= 0 {
            return 0;
        }
        self.advance(n as usize);
        n as u64
    }

    /// One sendmsg from the cursor through the ring, IOV_MAX pieces at most; SEND_ZC when
    /// asked. The message header and iovecs stay put (the connection is boxed) until its CQE.
    pub fn submit(&mut self, ring: &mut io_uring::IoUring, sref: SockRef, zc: bool, token: u64) {
        self.fill_iov();
        let flags = libc::MSG_NOSIGNAL as u32;
        let e = if zc {
            with_sock!(sref, f => opcode::SendMsgZc::new(f, &self.msg).flags(flags).build())
        } else {
            with_sock!(sref, f => opcode::SendMsg::new(f, &self.msg).flags(flags).build())
        }
        .user_data(token);
        push(ring, &e);
        self.sending = true;
    }
}

fn piece_len(p: &Piece) -> usize {
    match *p {
        Piece::Own { len, .. } => len as usize,
        Piece::Mem { len, .. } => len,
    }
}
