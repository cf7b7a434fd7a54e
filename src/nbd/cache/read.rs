//! The read side of an overlay: what a target sees at an offset (its pages, overflow-file
//! copies, zeroed ranges, the image below) and the allocation status NBD's base:allocation
//! reports.

use super::*;

impl Overlay {
    /// [`Overlay::read`] for a reply that goes out after the lock is dropped: the pieces are
    /// appended to `out` as addresses (mapping slices, cache pages), ranges of `scratch`
    /// (overflow-file copies) and merged zero runs. The first read that may point at cache
    /// pages pins them (`pin`, released with [`Overlay::unpin`] once the reply is sent).
    /// With `mapped` (only the kernel reads the reply's bytes: no data digest) overflow blocks
    /// come as addresses in the file's mappings where it has them. Adjacent addresses merge
    /// into one piece. Shared by the NBD and iSCSI sessions.
    #[allow(clippy::too_many_arguments)] // the session's reply state, borrowed field by field
    pub fn read_reply(
        &mut self,
        off: u64,
        len: u64,
        base: &Chain,
        scratch: &mut Vec<u8>,
        scratch_max: usize,
        pin: &mut Option<u64>,
        mapped: bool,
        out: &mut Vec<ReplyPiece>,
    ) -> Result<u64, CacheError> {
        if pin.is_none() && self.has_pages() {
            // The reply may point at cache pages: they stay put until it is out.
            *pin = Some(self.pin());
        }
        self.read_as(off, len, base, scratch, scratch_max, mapped, &mut |p| match p {
            Piece::Data(d) => match out.last_mut() {
                Some(ReplyPiece::Mem(p, n)) if p.wrapping_add(*n) == d.as_ptr() => *n += d.len(),
                _ => out.push(ReplyPiece::Mem(d.as_ptr(), d.len())),
            },
            Piece::Copied(rg) => out.push(ReplyPiece::Scratch(rg.start as u32, rg.len() as u32)),
            Piece::Zero(n) => match out.last_mut() {
                Some(ReplyPiece::Zero(z)) => *z += n,
                _ => out.push(ReplyPiece::Zero(n)),
            },
        })
    }

    /// Emits `[off, off + len)` as the target sees it. Overflow blocks are copied to the end of
    /// `out` (the only copy on this path), which never grows past `out_max`: the read stops
    /// before an overflow block that would not fit and returns how many bytes it emitted (at
    /// least one block's worth when `out` has a block of room). The range must lie inside the
    /// disk.
    pub fn read<'a>(
        &'a self,
        off: u64,
        len: u64,
        base: &'a Chain,
        out: &mut Vec<u8>,
        out_max: usize,
        emit: &mut dyn FnMut(Piece<'a>),
    ) -> Result<u64, CacheError> {
        self.read_as(off, len, base, out, out_max, false, emit)
    }

    /// [`Overlay::read`], or with `mapped` overflow blocks emitted as `Data` slices of the
    /// file's mappings where it has them (no room taken in `out`).
    #[allow(clippy::too_many_arguments)]
    fn read_as<'a>(
        &'a self,
        off: u64,
        len: u64,
        base: &'a Chain,
        out: &mut Vec<u8>,
        out_max: usize,
        mapped: bool,
        emit: &mut dyn FnMut(Piece<'a>),
    ) -> Result<u64, CacheError> {
        if len == 0 {
            return Ok(0);
        }
        let end = off + len;
        let mut at = off;
        let below = |from: u64, to: u64, emit: &mut dyn FnMut(Piece<'a>)| {
            base.read(from, to - from, &mut |s| match s {
                Segment::Data(d) => emit(Piece::Data(d)),
                Segment::Zero(n) => emit(Piece::Zero(n)),
            })
            .expect("inside the disk")
        };
        if !self.may_hold(off / BLOCK, (end - 1) / BLOCK) {
            below(off, end, emit);
            return Ok(len);
        }
        // Whole blocks in consecutive overflow slots come in with one pread:
        // (first slot, blocks, start in `out`).
        let mut run: Option<(u32, u32, usize)> = None;
        let flush = |run: &mut Option<(u32, u32, usize)>, out: &mut Vec<u8>, emit: &mut dyn FnMut(Piece<'a>)| -> Result<(), CacheError> {
            if let Some((first, k, start)) = run.take() {
                let n = k as usize * BLOCK as usize;
                debug_assert_eq!(out.len(), start);
                self.file_append(first, 0, n, out)?;
                emit(Piece::Copied(start..start + n));
            }
            Ok(())
        };
        for (b, be, s) in self.extents(off / BLOCK, (end - 1) / BLOCK) {
            let bstart = (b * BLOCK).max(at);
            if bstart > at {
                flush(&mut run, out, emit)?;
                below(at, bstart, emit);
                at = bstart;
            }
            let bend = (be * BLOCK).min(end);
            let (i, n) = ((at - b * BLOCK) as usize, (bend - at) as usize);
            if let (Some(Slot::File(f)), true) = (s, mapped) {
                if let Some(d) = self.mapped(f, i, n) {
                    flush(&mut run, out, emit)?;
                    emit(Piece::Data(d));
                    at = bend;
                    continue;
                }
            }
            if matches!(s, Some(Slot::File(_))) {
                let pending = run.map_or(0, |(_, k, _)| k as usize * BLOCK as usize);
                if out.len() + pending + n > out_max {
                    flush(&mut run, out, emit)?;
                    return Ok(at - off); // the rest in a later batch
                }
            }
            match s {
                Some(Slot::File(f)) if i == 0 && n == BLOCK as usize => {
                    run = match run {
                        Some((first, k, start)) if first + k == f => Some((first, k + 1, start)),
                        other => {
                            let mut other = other;
                            flush(&mut other, out, emit)?;
                            Some((f, 1, out.len()))
                        }
                    };
                }
                Some(Slot::Ram(p)) => {
                    flush(&mut run, out, emit)?;
                    emit(Piece::Data(&self.page(p)[i..i + n]))
                }
                Some(Slot::File(f)) => {
                    flush(&mut run, out, emit)?;
                    let start = out.len();
                    self.file_append(f, i, n, out)?;
                    emit(Piece::Copied(start..start + n));
                }
                None => {
                    flush(&mut run, out, emit)?;
                    emit(Piece::Zero(n as u64))
                }
            }
            at = bend;
        }
        flush(&mut run, out, emit)?;
        if at < end {
            below(at, end, emit);
        }
        Ok(len)
    }

    /// Allocation status (NBD base:allocation) of `[off, off + len)`: (length, flags) runs with
    /// flags 1 = hole, 2 = reads as zeros. Written blocks are data; zeroed blocks read as zeros;
    /// the rest is what the chain says.
    pub fn status(&self, off: u64, len: u64, base: &Chain, emit: &mut dyn FnMut(u64, u32)) {
        let end = off + len;
        let mut at = off;
        let mut run: Option<(u64, u32)> = None;
        let mut push = |n: u64, flags: u32| match run.as_mut() {
            Some((l, f)) if *f == flags => *l += n,
            _ => {
                if let Some((l, f)) = run.take() {
                    emit(l, f);
                }
                run = Some((n, flags));
            }
        };
        let below = |from: u64, to: u64, push: &mut dyn FnMut(u64, u32)| {
            let _ = base.allocation(from, to - from, &mut |_, n, allocated| push(n, if allocated { 0 } else { 3 }));
        };
        for (b, be, s) in self.extents(off / BLOCK, (end - 1) / BLOCK) {
            let bstart = (b * BLOCK).max(at);
            if bstart > at {
                below(at, bstart, &mut push);
            }
            let bend = (be * BLOCK).min(end);
            push(bend - bstart, if s.is_none() { 2 } else { 0 });
            at = bend;
        }
        if at < end {
            below(at, end, &mut push);
        }
        if let Some((l, f)) = run {
            emit(l, f);
        }
    }

    /// Appends `n` bytes of the overflow file from slot `slot` + `at` to `out`, read straight
    /// into its spare capacity (no zero fill first: a 64 KiB read from the file would clear
    /// 64 KiB only to overwrite it; that memset was 3.5% of the iSCSI mix's CPU).
    fn file_append(&self, slot: u32, at: usize, n: usize, out: &mut Vec<u8>) -> Result<(), CacheError> {
        use std::os::fd::AsRawFd;
        let f = self.file.as_ref().expect("file slots imply the file");
        let pos = slot as u64 * BLOCK + at as u64;
        out.reserve(n);
        let mut done = 0;
        while done < n {
            let spare = &mut out.spare_capacity_mut()[done..n];
            // Safety: pread writes at most spare.len() bytes into the spare capacity, which is
            // ours (reserved above); nothing reads it before set_len below counts it.
            let r = unsafe { libc::pread(f.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), (pos + done as u64) as libc::off_t) };
            match r {
                r if r > 0 => done += r as usize,
                0 => return Err(CacheError::NoSpace("overflow file: read past its end".into())),
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(CacheError::NoSpace(format!("overflow file: {e}")));
                    }
                }
            }
        }
        // Safety: the n bytes after len were written by pread.
        unsafe { out.set_len(out.len() + n) };
        Ok(())
    }
}
