//! One io_uring per worker (SINGLE_ISSUER + DEFER_TASKRUN: completions run only when this thread
//! waits, so no other thread ever touches the ring) and a ring of provided receive buffers that
//! multishot receives pick from, recycled as soon as a packet has been handled.

use io_uring::{squeue, types, IoUring};
use std::io;

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

    #[test]
    fn a_ring_and_its_buffers_can_be_built_here() {
        let ring = build().expect("io_uring available on the test machine");
        let mut b = BufRing::new(&ring, 3, 8, 256).unwrap();
        b.recycle(0);
        assert_eq!(b.get(1, 300).len(), 256, "reads are clamped to the buffer");
        b.unregister(&ring);
    }
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
