//! Netascii (RFC 764 as TFTP uses it: LF -> CR LF, CR -> CR NUL) as a stream, one block at a
//! time, with no I/O of its own: the caller passes a `read_at` (pread on the file). Memory per
//! transfer is one scratch block and the start of each block still in the window, never the
//! converted file. A block is regenerated from where it started, so a retransmission carries
//! the same bytes; a short read (the file was truncated under us) ends the transfer.

use std::collections::VecDeque;

/// Where a block starts in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    /// Next source byte to convert.
    pub offset: u64,
    /// The second byte of a pair (the LF of CR LF, the NUL of CR NUL) whose CR ended the
    /// previous block.
    pub pending: Option<u8>,
}

/// Converts `src` (the source bytes from `c.offset` on) into `out` until `out` is full or `src`
/// is used up; returns the bytes written and where the next block starts.
pub fn encode(c: Cursor, src: &[u8], out: &mut [u8]) -> (usize, Cursor) {
    let mut w = 0;
    if let Some(p) = c.pending {
        if out.is_empty() {
            return (0, c);
        }
        out[0] = p;
        w = 1;
    }
    let mut used = 0;
    while w < out.len() && used < src.len() {
        let (a, b) = match src[used] {
            b'\n' => (b'\r', Some(b'\n')),
            b'\r' => (b'\r', Some(0)),
            x => (x, None),
        };
        used += 1;
        out[w] = a;
        w += 1;
        if let Some(b) = b {
            if w == out.len() {
                return (w, Cursor { offset: c.offset + used as u64, pending: Some(b) });
            }
            out[w] = b;
            w += 1;
        }
    }
    (w, Cursor { offset: c.offset + used as u64, pending: None })
}

/// Why a block could not be produced.
#[derive(Debug)]
pub enum Failed {
    /// The file is shorter than when the transfer started (or its bytes changed so that a
    /// block no longer ends where it first did).
    Changed {
        offset: u64,
        size: u64,
    },
    Io(std::io::Error),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Changed { offset, size } => {
                write!(f, "file changed during the transfer (short read at offset {offset} of {size} bytes)")
            }
            Failed::Io(e) => write!(f, "read error: {e}"),
        }
    }
}

/// The netascii blocks of one transfer.
#[derive(Debug)]
pub struct Stream {
    /// Source size when the transfer started: bytes past it are never read.
    size: u64,
    blksize: usize,
    /// Block number (1-based) whose start is `starts[0]`.
    first: u64,
    /// Start of blocks `first`, `first + 1`, …: at most a window and one more.
    starts: VecDeque<Cursor>,
    scratch: Vec<u8>,
}

impl Stream {
    pub fn new(size: u64, blksize: u16) -> Stream {
        let mut starts = VecDeque::new();
        starts.push_back(Cursor::default());
        Stream { size, blksize: blksize as usize, first: 1, starts, scratch: vec![0; blksize as usize] }
    }

    /// Block starts kept (the window's bound on memory).
    pub fn kept(&self) -> usize {
        self.starts.len()
    }

    /// Writes block `block` (1-based) into `out` (at least blksize bytes) and returns its length:
    /// shorter than blksize means the last block. Blocks below `base` (acknowledged) are
    /// forgotten first. `block` must be at most one past the highest produced so far.
    pub fn block(
        &mut self,
        block: u64,
        base: u64,
        out: &mut [u8],
        mut read_at: impl FnMut(u64, &mut [u8]) -> std::io::Result<usize>,
    ) -> Result<usize, Failed> {
        while self.first < base.min(block) && self.starts.len() > 1 {
            self.starts.pop_front();
            self.first += 1;
        }
        let i = block.checked_sub(self.first).map(|i| i as usize).filter(|&i| i < self.starts.len());
        let Some(i) = i else {
            return Err(Failed::Io(std::io::Error::other(format!("block {block} is outside the window kept from {}", self.first))));
        };
        let c = self.starts[i];
        let room = self.blksize - c.pending.is_some() as usize;
        let want = (self.size.saturating_sub(c.offset)).min(room as u64) as usize;
        let mut got = 0;
        while got < want {
            match read_at(c.offset + got as u64, &mut self.scratch[got..want]) {
                Ok(0) => return Err(Failed::Changed { offset: c.offset + got as u64, size: self.size }),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Failed::Io(e)),
            }
        }
        let (n, next) = encode(c, &self.scratch[..want], &mut out[..self.blksize]);
        if n == self.blksize {
            match self.starts.get(i + 1) {
                None => self.starts.push_back(next),
                Some(known) if *known != next => return Err(Failed::Changed { offset: c.offset, size: self.size }),
                Some(_) => {}
            }
        }
        Ok(n)
    }
}

/// The whole-buffer conversion (LF → CR LF, CR → CR NUL) in one pass: the reference the
/// per-block [`Stream`] is checked against, here and in the tests that drive real clients.
pub fn to_netascii(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    for &c in b {
        match c {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(src: &[u8]) -> impl FnMut(u64, &mut [u8]) -> std::io::Result<usize> + '_ {
        move |off, buf| {
            let off = (off as usize).min(src.len());
            let n = buf.len().min(src.len() - off);
            buf[..n].copy_from_slice(&src[off..off + n]);
            Ok(n)
        }
    }

    /// All blocks in order, each acknowledged before the next.
    fn stream_all(src: &[u8], blksize: u16) -> Vec<Vec<u8>> {
        let mut s = Stream::new(src.len() as u64, blksize);
        let mut out = vec![0u8; blksize as usize];
        let mut blocks = Vec::new();
        for b in 1u64.. {
            let n = s.block(b, b, &mut out, reader(src)).unwrap();
            blocks.push(out[..n].to_vec());
            assert!(s.kept() <= 2);
            if n < blksize as usize {
                break;
            }
        }
        blocks
    }

    #[test]
    fn cr_and_lf_at_every_block_edge() {
        // Every position of CR LF, lone CR, lone LF, and runs of them around block edges.
        for blksize in [8u16, 9, 16] {
            for pos in 0..40usize {
                for pat in [&b"\r\n"[..], b"\r", b"\n", b"\n\n", b"\r\r", b"\r\n\r\n", b"\n\r"] {
                    let mut src: Vec<u8> = (0..40u8).map(|i| b'a' + i % 26).collect();
                    src.splice(pos..pos, pat.iter().copied());
                    let blocks = stream_all(&src, blksize);
                    assert!(blocks[..blocks.len() - 1].iter().all(|b| b.len() == blksize as usize));
                    assert!(blocks.last().unwrap().len() < blksize as usize, "the last block is short (maybe empty)");
                    assert_eq!(blocks.concat(), to_netascii(&src), "blksize {blksize} pos {pos} {pat:?}");
                }
            }
        }
        // Output exactly a multiple of blksize: an empty last block; a file ending in CR.
        assert_eq!(stream_all(b"abcdefg\n", 8), vec![b"abcdefg\r".to_vec(), b"\n".to_vec()]);
        assert_eq!(stream_all(b"abcdef\n", 8), vec![b"abcdef\r\n".to_vec(), vec![]]);
        assert_eq!(stream_all(b"", 8), vec![Vec::<u8>::new()]);
        assert_eq!(stream_all(b"x\r", 8).concat(), b"x\r\0");
    }

    #[test]
    fn every_block_of_a_window_regenerates_identically() {
        let src: Vec<u8> = (0..5000u32)
            .map(|i| {
                if i % 7 == 0 {
                    b'\n'
                } else if i % 11 == 0 {
                    b'\r'
                } else {
                    b'x'
                }
            })
            .collect();
        let want = to_netascii(&src);
        let blksize = 16u16;
        let window = 8u64;
        let mut s = Stream::new(src.len() as u64, blksize);
        let mut out = vec![0u8; 16];
        let mut base = 1u64;
        let mut got = Vec::new();
        loop {
            // Send a window, then resend every block of it in every order the engine may use
            // (go-back from the base, or any single one), comparing bytes.
            let mut first_pass = Vec::new();
            let mut last = None;
            for b in base..base + window {
                let n = s.block(b, base, &mut out, reader(&src)).unwrap();
                first_pass.push(out[..n].to_vec());
                if n < 16 {
                    last = Some(b);
                    break;
                }
            }
            for (k, b) in (base..base + first_pass.len() as u64).enumerate().collect::<Vec<_>>().into_iter().rev() {
                let n = s.block(b, base, &mut out, reader(&src)).unwrap();
                assert_eq!(&out[..n], &first_pass[k][..], "block {b} resent");
            }
            assert!(s.kept() as u64 <= window + 1, "memory bounded by the window");
            got.extend(first_pass.concat());
            if last.is_some() {
                break;
            }
            base += window;
        }
        assert_eq!(got, want);
    }

    #[test]
    fn a_short_read_ends_the_transfer() {
        let src = vec![b'a'; 100];
        let mut s = Stream::new(200, 16); // the file was 200 bytes when the transfer started
        let mut out = vec![0u8; 16];
        let mut b = 1;
        let err = loop {
            match s.block(b, b, &mut out, reader(&src)) {
                Ok(_) => b += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(err, Failed::Changed { offset: 100, size: 200 }), "{err:?}");
        assert!(err.to_string().contains("file changed"));
        // An I/O error is an error, not a panic.
        let mut s = Stream::new(10, 16);
        let e = s.block(1, 1, &mut out, |_, _| Err(std::io::Error::other("EIO"))).unwrap_err();
        assert!(matches!(e, Failed::Io(_)));
    }
}
