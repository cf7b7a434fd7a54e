//! iovecs for TCP sends: slices of mappings and zero runs from one static zero page, capped at
//! IOV_MAX entries per send (what does not fit goes in the next send, from the byte cursor).

use crate::image::{Chain, Segment};

pub const IOV_MAX: usize = 64;
pub const ZEROS_LEN: usize = 64 * 1024;
/// The one zero page every send of a zero run points at (HTTP and NBD).
pub static ZEROS: [u8; ZEROS_LEN] = [0; ZEROS_LEN];

/// Appends one slice if there is room; returns the bytes it added (0 when full).
pub fn push_slice(iov: &mut Vec<libc::iovec>, p: *const u8, n: usize) -> u64 {
    if iov.len() >= IOV_MAX {
        return 0;
    }
    iov.push(libc::iovec { iov_base: p as *mut _, iov_len: n });
    n as u64
}

/// Appends `[start, start + len)` of the virtual disk, as far as IOV_MAX allows; returns the
/// bytes covered.
pub fn push_chain(iov: &mut Vec<libc::iovec>, chain: &Chain, start: u64, len: u64) -> u64 {
    let mut added = 0;
    let _ = chain.read(start, len, &mut |s| match s {
        Segment::Data(d) => added += push_slice(iov, d.as_ptr(), d.len()),
        Segment::Zero(mut n) => {
            while n > 0 {
                let k = n.min(ZEROS_LEN as u64);
                added += push_slice(iov, ZEROS.as_ptr(), k as usize);
                n -= k;
            }
        }
    });
    added
}
