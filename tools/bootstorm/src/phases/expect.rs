//! What a target expects to read back, and the patterns it writes: the image with the target's
//! own writes over it, one pattern per written 4 KiB block. Checking is the client's main cost
//! per boot after the kernel's copies, so it touches each byte once: image runs with memcmp
//! against the mapped image, own blocks word by word against the pattern (no expected copy).

use bootfarm::image::{Chain, Segment};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

pub(crate) const BLOCK: u64 = 4096;
const WORDS: usize = BLOCK as usize / 8;
/// Compared against with memcmp: a byte-by-byte zero test was a tenth of bootstorm's CPU.
static ZEROS: [u8; 16384] = [0; 16384];

/// A target's own writes: block number -> the tag of the pattern written there.
pub(crate) type Written = HashMap<u64, u64, BuildHasherDefault<BlockHasher>>;

/// Block numbers hashed with one multiply: block numbers need no DoS-resistant hash, and
/// SipHash (the default) showed in the NBD engine's profile, a lookup per 4 KiB block of every
/// read and an insert per block of every write. Runs of 8 blocks keep their low 3 bits (the
/// table's bucket is the hash's low bits): a read's blocks then probe neighbouring buckets, a
/// cache line or two, where a hash of each block alone missed the cache once per block (~30% of
/// `check` in the Linux boot replay, 200 targets' tables no longer fitting the cache).
#[derive(Default)]
pub(crate) struct BlockHasher(u64);

impl Hasher for BlockHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u64(&mut self, n: u64) {
        let n = self.0 ^ n;
        self.0 = ((n >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15) & !7) | (n & 7);
    }
}

/// Word j of every pattern is `mix(tag) ^ LANE[j]`: LANE's 512 words are distinct, so the
/// words of a block all differ, and `mix` is a bijection (odd multiply), so two tags' blocks
/// differ in every word. One XOR per word to write or to check, which vectorizes; the multiply
/// per word before (`(tag ^ j) * K`, emulated with SSE2) was ~10% of bootstorm's CPU in the
/// Linux boot replay, and its check went through a copy of the expected bytes.
static LANE: [u64; WORDS] = lanes();

const fn lanes() -> [u64; WORDS] {
    let mut l = [0u64; WORDS];
    let mut j = 0;
    while j < WORDS {
        l[j] = (j as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        j += 1;
    }
    l
}

fn mix(tag: u64) -> u64 {
    (tag ^ 0x5851_F42D_4C95_7F2D).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// What a target writes to a block (and later expects back): `buf` is a block or its start
/// (at most 4 KiB), word j little-endian `mix(tag) ^ LANE[j]`, the last word cut to fit.
pub(crate) fn block_pattern(tag: u64, buf: &mut [u8]) {
    debug_assert!(buf.len() <= BLOCK as usize);
    let h = mix(tag);
    let j = buf.len() / 8;
    let mut words = buf.chunks_exact_mut(8);
    for (c, l) in (&mut words).zip(LANE.iter()) {
        c.copy_from_slice(&(h ^ l).to_le_bytes());
    }
    let tail = words.into_remainder();
    if !tail.is_empty() {
        let n = tail.len();
        tail.copy_from_slice(&(h ^ LANE[j]).to_le_bytes()[..n]);
    }
}

/// Whether a whole block holds `tag`'s pattern: the words' differences ORed together, four
/// lanes at a time (the compiler's vector loop), no early exit (a good block is read whole
/// anyway, and a bad one fails the target).
fn block_holds(tag: u64, got: &[u8]) -> bool {
    debug_assert_eq!(got.len(), BLOCK as usize);
    let h = mix(tag);
    let mut acc = [0u64; 4];
    for (c, l) in got.chunks_exact(32).zip(LANE.chunks_exact(4)) {
        for k in 0..4 {
            acc[k] |= u64::from_le_bytes(c[8 * k..8 * k + 8].try_into().unwrap()) ^ h ^ l[k];
        }
    }
    acc == [0; 4]
}

/// What a target expects to read: the image, with its own writes over it.
pub(crate) struct Expect<'a> {
    pub chain: Option<&'a Chain>,
    pub written: &'a Written,
}

impl Expect<'_> {
    /// Whether `got`, read at `off`, is what the target must see: its own pattern where it
    /// wrote a block, the image elsewhere (a run of image blocks in one pass over the image's
    /// segments). Without an image there is nothing to compare with: true.
    pub fn check(&self, off: u64, got: &[u8]) -> bool {
        let Some(c) = self.chain else { return true };
        let end = off + got.len() as u64;
        // Walk the blocks, each run of image blocks compared in one go.
        let mut at = off;
        let mut run_from = off;
        while at < end {
            let b = at / BLOCK;
            let next = ((b + 1) * BLOCK).min(end);
            if let Some(&tag) = self.written.get(&b) {
                if !image_same(c, run_from, &got[(run_from - off) as usize..(at - off) as usize]) {
                    return false;
                }
                let piece = &got[(at - off) as usize..(next - off) as usize];
                let ok = if piece.len() == BLOCK as usize {
                    block_holds(tag, piece)
                } else {
                    // A read that starts or ends inside the block: the pattern's bytes there.
                    let mut want = [0u8; BLOCK as usize];
                    block_pattern(tag, &mut want[..(next - b * BLOCK) as usize]);
                    want[(at - b * BLOCK) as usize..(next - b * BLOCK) as usize] == *piece
                };
                if !ok {
                    return false;
                }
                run_from = next;
            }
            at = next;
        }
        image_same(c, run_from, &got[(run_from - off) as usize..])
    }
}

/// Whether `got` is the image's bytes at `off`: its segments compared in place, no copy.
fn image_same(c: &Chain, off: u64, got: &[u8]) -> bool {
    if got.is_empty() {
        return true;
    }
    let mut at = 0usize;
    let mut same = true;
    let r = c.read(off, got.len() as u64, &mut |seg| {
        let n = seg.len() as usize;
        same &= match seg {
            Segment::Data(d) => got[at..at + n] == *d,
            Segment::Zero(_) => got[at..at + n].chunks(ZEROS.len()).all(|c| *c == ZEROS[..c.len()]),
        };
        at += n;
    });
    r.is_ok() && same
}

#[cfg(test)]
mod tests {
    use super::*;
    use bootfarm::image::ChainLimits;

    /// A raw image of 16 blocks of seeded random bytes, in a file of its own.
    fn image(name: &str) -> (Chain, Vec<u8>, std::path::PathBuf) {
        let mut r = bootfarm::rng::XorShift::new(18);
        let bytes: Vec<u8> = (0..16 * BLOCK).map(|_| r.next() as u8).collect();
        let p = std::env::temp_dir().join(format!("bootstorm-expect-{name}-{}.raw", std::process::id()));
        std::fs::write(&p, &bytes).unwrap();
        (Chain::open(&p, ChainLimits::default()).unwrap(), bytes, p)
    }

    fn pattern(tag: u64) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK as usize];
        block_pattern(tag, &mut b);
        b
    }

    /// Word j is `mix(tag) ^ LANE[j]` little-endian, the last one cut to fit; the words of a
    /// block all differ, and two tags' blocks differ in every word.
    #[test]
    fn block_pattern_words() {
        for len in [0usize, 1, 7, 8, 9, 4095, 4096] {
            let mut got = vec![0u8; len];
            block_pattern(42, &mut got);
            let want: Vec<u8> = (0..WORDS).flat_map(|j| (mix(42) ^ LANE[j]).to_le_bytes()).take(len).collect();
            assert_eq!(got, want, "length {len}");
        }
        let b = pattern(7);
        let words: std::collections::HashSet<&[u8]> = b.chunks(8).collect();
        assert_eq!(words.len(), WORDS, "every word of a block differs");
        let (a, b) = (pattern(1 << 40), pattern(2 << 40));
        assert!(a.chunks(8).zip(b.chunks(8)).all(|(x, y)| x != y), "two tags differ in every word");
        assert!(block_holds(7, &pattern(7)) && !block_holds(8, &pattern(7)));
    }

    /// A read of 4 blocks at block 2: image, own (tag 5), own (tag 6), image. What the target
    /// must see passes; one wrong byte at the first or last byte of any block, or in its middle,
    /// fails; so do another target's pattern, an older write's pattern, the image's stale bytes
    /// where it wrote, and its own pattern where it never wrote (another target's cache).
    #[test]
    fn check_catches_a_wrong_byte_anywhere() {
        let (c, img, p) = image("wrong-byte");
        let mut written = Written::default();
        written.insert(3, 5);
        written.insert(4, 6);
        let ex = Expect { chain: Some(&c), written: &written };
        let (off, bl) = (2 * BLOCK, BLOCK as usize);
        let mut good = img[off as usize..off as usize + 4 * bl].to_vec();
        good[bl..2 * bl].copy_from_slice(&pattern(5));
        good[2 * bl..3 * bl].copy_from_slice(&pattern(6));
        assert!(ex.check(off, &good), "what the target must see");
        for blk in 0..4 {
            for at in [blk * bl, blk * bl + 1, blk * bl + bl / 2, blk * bl + bl - 8, blk * bl + bl - 1] {
                let mut bad = good.clone();
                bad[at] ^= 0x20;
                assert!(!ex.check(off, &bad), "a wrong byte at {at} (block {blk})");
            }
        }
        let swap = |blk: usize, with: &[u8]| {
            let mut bad = good.clone();
            bad[blk * bl..(blk + 1) * bl].copy_from_slice(with);
            ex.check(off, &bad)
        };
        let other_target = (1u64 << 32) ^ 5;
        assert!(!swap(1, &pattern(other_target)), "another target's pattern in an own block");
        assert!(!swap(2, &pattern(5)), "an older write's pattern (tag 5 where 6 was written)");
        assert!(!swap(1, &img[3 * bl..4 * bl]), "stale image bytes where the target wrote");
        assert!(!swap(2, &vec![0u8; bl]), "zeros where the target wrote");
        assert!(!swap(0, &pattern(5)), "a written pattern where the target never wrote");
        assert!(!swap(3, &img[0..bl]), "the image's bytes of another block");
        // Reads that start or end inside an own block check the part they cover.
        assert!(ex.check(3 * BLOCK + 100, &good[bl + 100..2 * bl + 50]));
        let mut bad = good[bl + 100..2 * bl + 50].to_vec();
        *bad.last_mut().unwrap() ^= 1;
        assert!(!ex.check(3 * BLOCK + 100, &bad), "the last byte of a partial read");
        assert!(!ex.check(15 * BLOCK, &img[15 * bl..].repeat(2)), "a read past the image's end");
        let none = Expect { chain: None, written: &written };
        assert!(none.check(off, &vec![1u8; 4 * bl]), "no image: nothing to compare with");
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn written_blocks_hash_apart() {
        let mut w = Written::default();
        for b in 0..10_000u64 {
            w.insert(b * 3, b);
        }
        assert_eq!(w.len(), 10_000);
        assert!((0..10_000u64).all(|b| w.get(&(b * 3)) == Some(&b) && !w.contains_key(&(b * 3 + 1))));
    }
}
