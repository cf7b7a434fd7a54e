//! NBD wire format (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md), big
//! endian. Parsing works on the connection's receive buffer in place.

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub const FLAG_NO_ZEROES: u16 = 2;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
pub const REP_ERR_POLICY: u32 = 0x8000_0002;
pub const REP_ERR_INVALID: u32 = 0x8000_0003;
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;

pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

pub const TFLAG_HAS_FLAGS: u16 = 1;
pub const TFLAG_READ_ONLY: u16 = 2;
pub const TFLAG_SEND_FLUSH: u16 = 4;
pub const TFLAG_SEND_FUA: u16 = 8;
pub const TFLAG_SEND_TRIM: u16 = 32;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 64;
pub const TFLAG_SEND_DF: u16 = 128;
pub const TFLAG_CAN_MULTI_CONN: u16 = 256;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
/// Not served (answered EINVAL); named for the I/O trace.
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

pub const CMD_FLAG_FUA: u16 = 1;
pub const CMD_FLAG_NO_HOLE: u16 = 2;
pub const CMD_FLAG_DF: u16 = 4;
pub const CMD_FLAG_REQ_ONE: u16 = 8;

pub const REPLY_FLAG_DONE: u16 = 1;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = 0x8001;

/// The one metadata context served, and its id on every connection.
pub const BASE_ALLOCATION: &str = "base:allocation";
pub const BASE_ALLOCATION_ID: u32 = 1;

pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;

/// Longest option payload accepted during the handshake.
pub const OPTION_BYTES_MAX: u32 = 4096;

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().unwrap())
}
fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}

/// An option's name for log lines.
pub fn option_name(opt: u32) -> &'static str {
    match opt {
        OPT_EXPORT_NAME => "EXPORT_NAME",
        OPT_ABORT => "ABORT",
        OPT_LIST => "LIST",
        OPT_INFO => "INFO",
        OPT_GO => "GO",
        OPT_STRUCTURED_REPLY => "STRUCTURED_REPLY",
        OPT_LIST_META_CONTEXT => "LIST_META_CONTEXT",
        OPT_SET_META_CONTEXT => "SET_META_CONTEXT",
        _ => "unknown",
    }
}

/// The server's opening: NBDMAGIC, IHAVEOPT, handshake flags.
pub fn greeting() -> [u8; 18] {
    let mut g = [0u8; 18];
    g[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    g[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    g
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse<T> {
    /// Need more bytes.
    More,
    Done(T, usize),
    /// A protocol violation: the connection ends.
    Fatal(&'static str),
}

/// Client flags (4 bytes) after the greeting. Flags 0 (plain newstyle, busybox's nbd-client)
/// are taken: such a client may send NBD_OPT_EXPORT_NAME only (the session enforces it).
pub fn client_flags(b: &[u8]) -> Parse<u32> {
    if b.len() < 4 {
        return Parse::More;
    }
    Parse::Done(be32(b, 0), 4)
}

/// One option: (option, payload range in `b`).
pub fn option(b: &[u8]) -> Parse<(u32, std::ops::Range<usize>)> {
    if b.len() < 16 {
        return Parse::More;
    }
    if be64(b, 0) != IHAVEOPT {
        return Parse::Fatal("bad option magic");
    }
    let (opt, len) = (be32(b, 8), be32(b, 12));
    if len > OPTION_BYTES_MAX {
        return Parse::Fatal("option payload too large");
    }
    let end = 16 + len as usize;
    if b.len() < end {
        return Parse::More;
    }
    Parse::Done((opt, 16..end), end)
}

pub fn option_reply(out: &mut Vec<u8>, opt: u32, kind: u32, data: &[u8]) {
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&opt.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// INFO/GO payload: export name and the information types asked for.
pub fn info_request(p: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    if p.len() < 6 {
        return None;
    }
    let n = be32(p, 0) as usize;
    if p.len() < 4 + n + 2 {
        return None;
    }
    let name = &p[4..4 + n];
    let count = be16(p, 4 + n) as usize;
    let reqs = &p[6 + n..];
    if reqs.len() != 2 * count {
        return None;
    }
    Some((name, (0..count).map(|i| be16(reqs, 2 * i)).collect()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

/// A transmission request header (28 bytes; a WRITE's payload follows it).
pub fn request(b: &[u8]) -> Parse<Request> {
    if b.len() < 28 {
        return Parse::More;
    }
    if be32(b, 0) != REQUEST_MAGIC {
        return Parse::Fatal("bad request magic");
    }
    Parse::Done(Request { flags: be16(b, 4), kind: be16(b, 6), cookie: be64(b, 8), offset: be64(b, 16), length: be32(b, 24) }, 28)
}

pub fn simple_reply(out: &mut Vec<u8>, error: u32, cookie: u64) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

/// A structured reply chunk header (20 bytes); `len` is the payload that follows.
pub fn chunk(out: &mut Vec<u8>, flags: u16, kind: u16, cookie: u64, len: u32) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// An error chunk (the final one of its reply), with a message for the client's log.
pub fn error_chunk(out: &mut Vec<u8>, cookie: u64, error: u32, msg: &str) {
    let m = &msg.as_bytes()[..msg.len().min(256)];
    chunk(out, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, 6 + m.len() as u32);
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(m.len() as u16).to_be_bytes());
    out.extend_from_slice(m);
}

/// LIST/SET_META_CONTEXT payload: export name and queries.
pub fn meta_request(p: &[u8]) -> Option<(&[u8], Vec<&[u8]>)> {
    if p.len() < 8 {
        return None;
    }
    let n = be32(p, 0) as usize;
    if p.len() < 4 + n + 4 {
        return None;
    }
    let name = &p[4..4 + n];
    let count = be32(p, 4 + n) as usize;
    let mut at = 8 + n;
    let mut queries = Vec::new();
    for _ in 0..count {
        if p.len() < at + 4 {
            return None;
        }
        let l = be32(p, at) as usize;
        if p.len() < at + 4 + l {
            return None;
        }
        queries.push(&p[at + 4..at + 4 + l]);
        at += 4 + l;
    }
    (at == p.len()).then_some((name, queries))
}

/// Whether a metadata query selects base:allocation (the exact name, or the "base:" namespace).
pub fn selects_base_allocation(q: &[u8]) -> bool {
    q == BASE_ALLOCATION.as_bytes() || q == b"base:"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_pieces() {
        assert_eq!(&greeting()[..8], b"NBDMAGIC");
        assert_eq!(&greeting()[8..16], b"IHAVEOPT");
        assert_eq!(client_flags(&[0, 0, 0, 3]), Parse::Done(3, 4));
        assert_eq!(client_flags(&[0, 0, 0, 0]), Parse::Done(0, 4), "plain newstyle (busybox)");
        let mut o = IHAVEOPT.to_be_bytes().to_vec();
        o.extend_from_slice(&OPT_GO.to_be_bytes());
        o.extend_from_slice(&8u32.to_be_bytes());
        assert_eq!(option(&o), Parse::More);
        o.extend_from_slice(&[0, 0, 0, 2, b'v', b'd', 0, 0]);
        assert_eq!(option(&o), Parse::Done((OPT_GO, 16..24), 24));
        assert_eq!(info_request(&o[16..24]), Some((&b"vd"[..], vec![])));
        let mut big = IHAVEOPT.to_be_bytes().to_vec();
        big.extend_from_slice(&OPT_GO.to_be_bytes());
        big.extend_from_slice(&(OPTION_BYTES_MAX + 1).to_be_bytes());
        assert!(matches!(option(&big), Parse::Fatal(_)));
    }

    #[test]
    fn requests() {
        let mut r = REQUEST_MAGIC.to_be_bytes().to_vec();
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&CMD_READ.to_be_bytes());
        r.extend_from_slice(&7u64.to_be_bytes());
        r.extend_from_slice(&4096u64.to_be_bytes());
        r.extend_from_slice(&512u32.to_be_bytes());
        assert_eq!(request(&r), Parse::Done(Request { flags: 0, kind: CMD_READ, cookie: 7, offset: 4096, length: 512 }, 28));
        r[0] = 0;
        assert!(matches!(request(&r), Parse::Fatal(_)));
    }

    #[test]
    fn meta_contexts() {
        let mut p = 2u32.to_be_bytes().to_vec();
        p.extend_from_slice(b"vd");
        p.extend_from_slice(&2u32.to_be_bytes());
        for q in [&b"base:allocation"[..], b"qemu:dirty-bitmap:x"] {
            p.extend_from_slice(&(q.len() as u32).to_be_bytes());
            p.extend_from_slice(q);
        }
        let (name, qs) = meta_request(&p).unwrap();
        assert_eq!(name, b"vd");
        assert_eq!(qs.len(), 2);
        assert!(selects_base_allocation(qs[0]) && !selects_base_allocation(qs[1]));
        assert!(meta_request(&p[..p.len() - 1]).is_none(), "truncated query");
        let mut extra = p.clone();
        extra.push(0);
        assert!(meta_request(&extra).is_none(), "trailing bytes");
        let mut out = Vec::new();
        error_chunk(&mut out, 9, ENOSPC, "full");
        assert_eq!(out.len(), 20 + 6 + 4);
        assert_eq!(&out[..4], &STRUCTURED_REPLY_MAGIC.to_be_bytes());
    }
}
