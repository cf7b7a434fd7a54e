//! One io_uring per worker (SINGLE_ISSUER + DEFER_TASKRUN: completions run only when this thread
//! waits, so no other thread ever touches the ring) and a ring of provided receive buffers that
//! multishot receives pick from, recycled as soon as a packet has been handled.

use io_uring::{squeue, types, IoUring};
use std::io;
use std::os::fd::RawFd;

pub const SQ_ENTRIES: u32 = 1024;
pub const CQ_ENTRIES: u32 = 8192;

/// Builds the ring, or explains why io_uring is not available here.
pub fn build() -> io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(CQ_ENTRIES)
        .setup_submit_all()
        .build(SQ_ENTRIES)
        .map_err(explain)
}

/// Turns an io_uring_setup failure into a message naming the cause and what to check.
pub fn explain(e: io::Error) -> io::Error {
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "io_uring is not permitted: check `sysctl kernel.io_uring_disabled` (must be 0, or 1 with this user in kernel.io_uring_group) and, in a container, that its seccomp profile allows io_uring_setup, io_uring_enter and io_uring_register"
        }
        Some(libc::ENOSYS) => "this kernel has no io_uring (needs Linux 6.1 or later, built with CONFIG_IO_URING)",
        Some(libc::EINVAL) => "this kernel lacks IORING_SETUP_SINGLE_ISSUER/DEFER_TASKRUN (needs Linux 6.1 or later)",
        Some(libc::ENOMEM) => "not enough locked memory for the ring: raise `ulimit -l` (RLIMIT_MEMLOCK)",
        _ => "io_uring_setup failed",
    };
    io::Error::new(e.kind(), format!("cannot create an io_uring ({e}): {hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_failures_say_what_to_check() {
        let m = explain(io::Error::from_raw_os_error(libc::EPERM)).to_string();
        assert!(m.contains("kernel.io_uring_disabled") && m.contains("seccomp"), "{m}");
        let m = explain(io::Error::from_raw_os_error(libc::ENOSYS)).to_string();
        assert!(m.contains("6.1"), "{m}");
        let m = explain(io::Error::from_raw_os_error(libc::ENOMEM)).to_string();
        assert!(m.contains("RLIMIT_MEMLOCK"), "{m}");
    }

    /// Slots go out until the range is used up, then plain descriptors; a released slot is
    /// empty (an operation on it fails with EBADF), parked while entries are queued, and handed
    /// out again once the queue is submitted.
    #[test]
    fn file_slots_fixed_then_raw_and_reused() {
        let mut ring = build().unwrap();
        assert!(register_file_table(&ring) >= 4, "a file table registers here");
        let mut slots = FileSlots::new(2..4);
        let socks: Vec<std::net::UdpSocket> = (0..3).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        use std::os::fd::AsRawFd;
        let got: Vec<SockRef> = socks.iter().map(|s| slots.install(&ring, s.as_raw_fd())).collect();
        assert_eq!(got[..2], [SockRef::Fixed(2), SockRef::Fixed(3)]);
        assert_eq!(got[2], SockRef::Raw(socks[2].as_raw_fd()));
        // A send through slot 3 reaches the socket behind it.
        let dest = socks[0].local_addr().unwrap();
        let sa = socket2::SockAddr::from(dest);
        let payload = *b"slot";
        let e = with_sock!(got[1], f => io_uring::opcode::Send::new(f, payload.as_ptr(), 4).dest_addr(sa.as_ptr()).dest_addr_len(sa.len()).build());
        push(&mut ring, &e);
        ring.submit_and_wait(1).unwrap();
        assert_eq!(ring.completion().next().unwrap().result(), 4);
        let mut b = [0u8; 8];
        let (n, from) = socks[0].recv_from(&mut b).unwrap();
        assert_eq!((&b[..n], from), (&payload[..], socks[1].local_addr().unwrap()));
        // Released while an entry naming it is still queued: that entry finds the slot empty,
        // and the slot is not handed out again before the queue has been submitted.
        let e = with_sock!(got[1], f => io_uring::opcode::Send::new(f, payload.as_ptr(), 4).dest_addr(sa.as_ptr()).dest_addr_len(sa.len()).build());
        push(&mut ring, &e);
        slots.release(&ring, got[1]);
        assert_eq!(slots.free(), 0, "parked until the queue is submitted");
        assert_eq!(slots.install(&ring, socks[2].as_raw_fd()), SockRef::Raw(socks[2].as_raw_fd()), "not reused while parked");
        ring.submit_and_wait(1).unwrap();
        assert_eq!(ring.completion().next().unwrap().result(), -libc::EBADF, "released: empty");
        assert_eq!(slots.install(&ring, socks[2].as_raw_fd()), SockRef::Fixed(3), "reused once the queue is submitted");
        // Released with nothing queued: free at once.
        slots.release(&ring, SockRef::Fixed(3));
        assert_eq!(slots.free(), 1);
    }

    #[test]
    fn a_ring_and_its_buffers_can_be_built_here() {
        let ring = build().expect("io_uring available on the test machine");
        let mut b = BufRing::new(&ring, 3, 8, 256).unwrap();
        b.recycle(0);
        assert_eq!(b.get(1, 300).len(), 256, "reads are clamped to the buffer");
        b.unregister(&ring);
    }
}

/// IORING_RECVSEND_POLL_FIRST (Linux 5.19), in a receive's ioprio: arm the poll at once
/// instead of first trying a receive the caller knows will find nothing (the io-uring crate
/// does not export it).
pub const RECVSEND_POLL_FIRST: u16 = 1;

/// Registered file table of a worker's ring, at most this many slots.
pub const FILE_SLOTS: u32 = 32768;

/// Registers an empty file table of up to `FILE_SLOTS` slots (fewer under a lower open-file
/// limit, which the kernel applies to it) and returns its size, 0 when the kernel refuses.
pub fn register_file_table(ring: &IoUring) -> u32 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // Safety: getrlimit writes into `r`.
    let limit = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 { r.rlim_cur } else { 0 };
    let n = FILE_SLOTS.min(limit.min(u32::MAX as u64) as u32);
    if n == 0 || ring.submitter().register_files_sparse(n).is_err() {
        return 0;
    }
    n
}

/// How an operation names its socket: by slot in the ring's file table (no fget/fput per
/// operation) or by plain descriptor when no slot was free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockRef {
    Fixed(u32),
    Raw(RawFd),
}

/// Builds an entry for `$s` (a [`SockRef`]) with `$f` bound to `types::Fixed` or `types::Fd`
/// (the caller depends on the io-uring crate; bootstorm's engines use it too).
#[macro_export]
macro_rules! with_sock {
    ($s:expr, $f:ident => $e:expr) => {
        match $s {
            $crate::engine::ring::SockRef::Fixed(i) => {
                let $f = io_uring::types::Fixed(i);
                $e
            }
            $crate::engine::ring::SockRef::Raw(d) => {
                let $f = io_uring::types::Fd(d);
                $e
            }
        }
    };
}
pub use with_sock;

/// One service's range of the file table, a slot per socket. Install and release are one
/// io_uring_register each, once per transfer or connection; operations in flight keep their
/// own reference, so a slot is released with the socket while sends still complete.
///
/// A slot released while the submission queue holds entries is parked: one of them may name
/// it, and it must find the slot empty (EBADF), never a socket installed there since for
/// another client. Once the queue is empty (everything queued has reached the kernel and
/// taken its file reference), parked slots are handed out again.
pub struct FileSlots {
    free: Vec<u32>,
    parked: Vec<u32>,
}

impl FileSlots {
    pub fn new(range: std::ops::Range<u32>) -> FileSlots {
        FileSlots { free: range.rev().collect(), parked: Vec::new() }
    }

    /// A slot holding `fd`, or the plain descriptor when the range is used up (or empty).
    pub fn install(&mut self, ring: &IoUring, fd: RawFd) -> SockRef {
        if !self.parked.is_empty() && queue_empty(ring) {
            self.free.append(&mut self.parked);
        }
        if let Some(slot) = self.free.pop() {
            if ring.submitter().register_files_update(slot, &[fd]).is_ok() {
                return SockRef::Fixed(slot);
            }
            self.free.push(slot);
        }
        SockRef::Raw(fd)
    }

    /// Empties the slot (the table drops its reference); it is free again at once when nothing
    /// is queued, else parked until the queue is empty.
    pub fn release(&mut self, ring: &IoUring, s: SockRef) {
        if let SockRef::Fixed(slot) = s {
            if ring.submitter().register_files_update(slot, &[-1]).is_ok() {
                if queue_empty(ring) {
                    self.free.push(slot);
                } else {
                    self.parked.push(slot);
                }
            }
        }
    }

    pub fn free(&self) -> usize {
        self.free.len()
    }
}

/// Whether every entry pushed on the ring has been submitted.
fn queue_empty(ring: &IoUring) -> bool {
    // Safety: a `SubmissionQueue` borrows the ring mutably, so none is alive while the caller
    // holds `&IoUring`; the ring has one thread (SINGLE_ISSUER).
    unsafe { ring.submission_shared().is_empty() }
}

/// Pushes an entry, submitting first if the submission queue is full.
pub fn push(ring: &mut IoUring, e: &squeue::Entry) {
    loop {
        // Safety: every entry built by the engine points at memory that outlives the operation
        // (boxed sessions, the worker's buffer ring and message headers).
        if unsafe { ring.submission().push(e) }.is_ok() {
            return;
        }
        if let Err(err) = ring.submit() {
            if err.raw_os_error() != Some(libc::EBUSY) && err.raw_os_error() != Some(libc::EINTR) {
                panic!("io_uring submit failed: {err}");
            }
        }
    }
}

/// Provided buffers: `count` buffers of `size` bytes, registered as group `bgid`.
pub struct BufRing {
    ring: *mut types::BufRingEntry,
    ring_bytes: usize,
    bufs: Vec<u8>,
    pub size: usize,
    count: u16,
    tail: u16,
    pub bgid: u16,
}

impl BufRing {
    pub fn new(uring: &IoUring, bgid: u16, count: u16, size: usize) -> io::Result<BufRing> {
        assert!(count.is_power_of_two());
        let ring_bytes = count as usize * std::mem::size_of::<types::BufRingEntry>();
        // Page-aligned, as the kernel requires.
        let ring = unsafe {
            libc::mmap(std::ptr::null_mut(), ring_bytes, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        if ring == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut br = BufRing { ring: ring.cast(), ring_bytes, bufs: vec![0u8; count as usize * size], size, count, tail: 0, bgid };
        // Safety: the ring memory lives until drop, which unregisters first (the worker drops
        // its BufRing before its IoUring).
        unsafe { uring.submitter().register_buf_ring_with_flags(br.ring as u64, count, bgid, 0)? };
        for bid in 0..count {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }

    fn push(&mut self, bid: u16) {
        let idx = (self.tail & (self.count - 1)) as usize;
        // Safety: idx < count; the entry belongs to user space until the tail is published.
        let e = unsafe { &mut *self.ring.add(idx) };
        e.set_addr(self.bufs.as_ptr() as u64 + bid as u64 * self.size as u64);
        e.set_len(self.size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // Safety: the tail field lives in the first entry; a release store makes the entries
        // written above visible to the kernel before the new tail.
        unsafe {
            let tail = types::BufRingEntry::tail(self.ring) as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }

    /// The received bytes of buffer `bid`.
    pub fn get(&self, bid: u16, len: usize) -> &[u8] {
        let start = bid as usize * self.size;
        &self.bufs[start..start + len.min(self.size)]
    }

    /// Gives a buffer back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }

    pub fn unregister(&self, uring: &IoUring) {
        let _ = uring.submitter().unregister_buf_ring(self.bgid);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.ring.cast(), self.ring_bytes) };
    }
}
