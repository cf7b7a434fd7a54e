//! TFTP packets (RFC 1350, options RFC 2347) as borrowed views: parsing never copies the file
//! name or options, encoding writes into caller-provided buffers. DATA payloads are never
//! encoded here: the engine sends a 4-byte header plus a slice of the file mapping.

pub const OP_RRQ: u16 = 1;
pub const OP_WRQ: u16 = 2;
pub const OP_DATA: u16 = 3;
pub const OP_ACK: u16 = 4;
pub const OP_ERROR: u16 = 5;
pub const OP_OACK: u16 = 6;

/// Error codes (RFC 1350 §5, RFC 2347 adds 8).
pub const ERR_NOT_DEFINED: u16 = 0;
pub const ERR_NOT_FOUND: u16 = 1;
pub const ERR_ACCESS: u16 = 2;
pub const ERR_ILLEGAL: u16 = 4;
pub const ERR_UNKNOWN_TID: u16 = 5;
pub const ERR_OPTION: u16 = 8;

/// Most options a request may carry before it is refused as malformed.
pub const OPTIONS_MAX: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Octet,
    Netascii,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub write: bool,
    pub filename: &'a [u8],
    pub mode: Mode,
    /// (name, value) pairs as sent; names compared case-insensitively by the negotiator.
    pub options: [(&'a [u8], &'a [u8]); OPTIONS_MAX],
    pub option_count: usize,
}

impl<'a> Request<'a> {
    pub fn options(&self) -> &[(&'a [u8], &'a [u8])] {
        &self.options[..self.option_count]
    }
}

// A parsed request (its options inline, no allocation) lives on the stack for one packet:
// boxing it would allocate per RRQ.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Request(Request<'a>),
    Data { block: u16, payload: &'a [u8] },
    Ack { block: u16 },
    Error { code: u16, message: &'a [u8] },
    Oack { options: &'a [u8] },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    TooShort,
    UnknownOpcode(u16),
    MissingNul,
    UnknownMode,
    TooManyOptions,
    EmptyFilename,
}

impl Malformed {
    pub fn message(self) -> &'static str {
        match self {
            Malformed::TooShort => "packet too short",
            Malformed::UnknownOpcode(_) => "unknown opcode",
            Malformed::MissingNul => "string not NUL-terminated",
            Malformed::UnknownMode => "unknown transfer mode",
            Malformed::TooManyOptions => "too many options",
            Malformed::EmptyFilename => "empty file name",
        }
    }
}

fn cstr(b: &[u8]) -> Result<(&[u8], &[u8]), Malformed> {
    let i = b.iter().position(|&c| c == 0).ok_or(Malformed::MissingNul)?;
    Ok((&b[..i], &b[i + 1..]))
}

pub fn parse(b: &[u8]) -> Result<Packet<'_>, Malformed> {
    if b.len() < 2 {
        return Err(Malformed::TooShort);
    }
    let op = u16::from_be_bytes([b[0], b[1]]);
    let rest = &b[2..];
    match op {
        OP_RRQ | OP_WRQ => {
            let (filename, rest) = cstr(rest)?;
            if filename.is_empty() {
                return Err(Malformed::EmptyFilename);
            }
            let (mode, mut rest) = cstr(rest)?;
            let mode = if mode.eq_ignore_ascii_case(b"octet") {
                Mode::Octet
            } else if mode.eq_ignore_ascii_case(b"netascii") {
                Mode::Netascii
            } else {
                return Err(Malformed::UnknownMode);
            };
            let mut options = [(&[][..], &[][..]); OPTIONS_MAX];
            let mut n = 0;
            while !rest.is_empty() {
                let (name, r) = cstr(rest)?;
                let (value, r) = cstr(r)?;
                if n == OPTIONS_MAX {
                    return Err(Malformed::TooManyOptions);
                }
                options[n] = (name, value);
                n += 1;
                rest = r;
            }
            Ok(Packet::Request(Request { write: op == OP_WRQ, filename, mode, options, option_count: n }))
        }
        OP_DATA if rest.len() >= 2 => Ok(Packet::Data { block: u16::from_be_bytes([rest[0], rest[1]]), payload: &rest[2..] }),
        // Some clients pad ACKs; only the first four bytes matter.
        OP_ACK if rest.len() >= 2 => Ok(Packet::Ack { block: u16::from_be_bytes([rest[0], rest[1]]) }),
        OP_ERROR if rest.len() >= 2 => {
            let code = u16::from_be_bytes([rest[0], rest[1]]);
            let message = rest[2..].split(|&c| c == 0).next().unwrap_or(&[]);
            Ok(Packet::Error { code, message })
        }
        OP_OACK => Ok(Packet::Oack { options: rest }),
        OP_DATA | OP_ACK | OP_ERROR => Err(Malformed::TooShort),
        other => Err(Malformed::UnknownOpcode(other)),
    }
}

#[inline]
pub fn data_header(block: u16) -> [u8; 4] {
    let b = block.to_be_bytes();
    [0, OP_DATA as u8, b[0], b[1]]
}

/// ERROR packet into `out`; returns its length. Messages are truncated to fit.
pub fn encode_error(out: &mut [u8], code: u16, message: &str) -> usize {
    let m = message.as_bytes();
    let n = m.len().min(out.len().saturating_sub(5));
    out[..2].copy_from_slice(&OP_ERROR.to_be_bytes());
    out[2..4].copy_from_slice(&code.to_be_bytes());
    out[4..4 + n].copy_from_slice(&m[..n]);
    out[4 + n] = 0;
    5 + n
}

pub fn encode_ack(block: u16) -> [u8; 4] {
    let b = block.to_be_bytes();
    [0, OP_ACK as u8, b[0], b[1]]
}

/// RRQ with options (used by clients: bootstorm, tests).
pub fn encode_rrq(out: &mut Vec<u8>, filename: &str, mode: &str, options: &[(&str, String)]) {
    out.clear();
    out.extend_from_slice(&OP_RRQ.to_be_bytes());
    for s in [filename, mode] {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    for (k, v) in options {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
}

/// Iterates the (name, value) pairs of an OACK body.
pub fn oack_options(body: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut parts = body.split(|&c| c == 0);
    std::iter::from_fn(move || {
        let k = parts.next().filter(|k| !k.is_empty())?;
        let v = parts.next()?;
        Some((k, v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipxe_rrq() {
        let p = b"\x00\x01undionly.kpxe\x00octet\x00blksize\x001432\x00tsize\x000\x00";
        let Packet::Request(r) = parse(p).unwrap() else { panic!() };
        assert!(!r.write);
        assert_eq!(r.filename, b"undionly.kpxe");
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(r.options(), &[(&b"blksize"[..], &b"1432"[..]), (&b"tsize"[..], &b"0"[..])]);
    }

    #[test]
    fn mode_is_case_insensitive_and_checked() {
        assert!(matches!(parse(b"\x00\x01f\x00NetASCII\x00"), Ok(Packet::Request(Request { mode: Mode::Netascii, .. }))));
        assert_eq!(parse(b"\x00\x01f\x00mail\x00"), Err(Malformed::UnknownMode));
    }

    #[test]
    fn malformed_packets() {
        assert_eq!(parse(b"\x00"), Err(Malformed::TooShort));
        assert_eq!(parse(b"\x00\x09xx"), Err(Malformed::UnknownOpcode(9)));
        assert_eq!(parse(b"\x00\x01file"), Err(Malformed::MissingNul));
        assert_eq!(parse(b"\x00\x01\x00octet\x00"), Err(Malformed::EmptyFilename));
        assert_eq!(parse(b"\x00\x01f\x00octet\x00blksize\x00"), Err(Malformed::MissingNul));
        assert_eq!(parse(b"\x00\x04\x00"), Err(Malformed::TooShort));
        let mut many = b"\x00\x01f\x00octet\x00".to_vec();
        for _ in 0..=OPTIONS_MAX {
            many.extend_from_slice(b"x\x001\x00");
        }
        assert_eq!(parse(&many), Err(Malformed::TooManyOptions));
    }

    #[test]
    fn ack_error_round_trip() {
        assert_eq!(parse(&encode_ack(65535)), Ok(Packet::Ack { block: 65535 }));
        assert_eq!(parse(b"\x00\x04\x00\x07padding"), Ok(Packet::Ack { block: 7 }));
        let mut b = [0u8; 64];
        let n = encode_error(&mut b, ERR_ACCESS, "read-only");
        assert_eq!(parse(&b[..n]), Ok(Packet::Error { code: 2, message: b"read-only" }));
        assert_eq!(data_header(0x1234), [0, 3, 0x12, 0x34]);
        let mut r = Vec::new();
        encode_rrq(&mut r, "a", "octet", &[("tsize", "0".into())]);
        assert_eq!(r, b"\x00\x01a\x00octet\x00tsize\x000\x00");
        let opts: Vec<_> = oack_options(b"blksize\x001432\x00tsize\x0099\x00").collect();
        assert_eq!(opts, vec![(&b"blksize"[..], &b"1432"[..]), (&b"tsize"[..], &b"99"[..])]);
    }
}
