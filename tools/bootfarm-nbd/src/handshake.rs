//! The client side of the NBD fixed-newstyle handshake, as far as a kernel device needs it:
//! NBD_OPT_GO for one export, its size and transmission flags. Bounded: every read has the
//! socket's timeout, an option reply's data is read only up to `REPLY_DATA_MAX`.

use std::io::{Read, Write};
use std::net::TcpStream;

const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const INFO_EXPORT: u16 = 0;
/// A server's reply data beyond this is refused (an error message, an info block: small).
const REPLY_DATA_MAX: usize = 64 << 10;

/// What the handshake gives the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Export {
    pub size: u64,
    pub flags: u16,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// Negotiates `export` on `s` (fixed newstyle, NBD_OPT_GO); the socket is then in the
/// transmission phase, ready for the kernel.
pub fn go(s: &mut TcpStream, export: &str) -> Result<Export, String> {
    let io = |e: std::io::Error| format!("handshake: {e}");
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).map_err(io)?;
    if &greeting[..8] != b"NBDMAGIC" || u64_at(&greeting, 8) != IHAVEOPT {
        return Err("not an NBD server speaking newstyle (no NBDMAGIC/IHAVEOPT greeting)".into());
    }
    let server = u16_at(&greeting, 16);
    if server & FLAG_FIXED_NEWSTYLE == 0 {
        return Err("the server does not speak fixed newstyle".into());
    }
    let client = (FLAG_FIXED_NEWSTYLE | (server & FLAG_NO_ZEROES)) as u32;
    let mut o = client.to_be_bytes().to_vec();
    o.extend_from_slice(&IHAVEOPT.to_be_bytes());
    o.extend_from_slice(&OPT_GO.to_be_bytes());
    o.extend_from_slice(&(4 + export.len() as u32 + 2).to_be_bytes());
    o.extend_from_slice(&(export.len() as u32).to_be_bytes());
    o.extend_from_slice(export.as_bytes());
    o.extend_from_slice(&0u16.to_be_bytes()); // no information requests: INFO_EXPORT comes anyway
    s.write_all(&o).map_err(io)?;
    let mut found = None;
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).map_err(io)?;
        if u64_at(&h, 0) != REPLY_MAGIC || u32_at(&h, 8) != OPT_GO {
            return Err("malformed option reply".into());
        }
        let (kind, len) = (u32_at(&h, 12), u32_at(&h, 16) as usize);
        if len > REPLY_DATA_MAX {
            return Err(format!("option reply of {len} bytes (at most {REPLY_DATA_MAX})"));
        }
        let mut d = vec![0u8; len];
        s.read_exact(&mut d).map_err(io)?;
        match kind {
            REP_ACK => return found.ok_or_else(|| "NBD_OPT_GO acknowledged without NBD_INFO_EXPORT".to_string()),
            REP_INFO if d.len() >= 12 && u16_at(&d, 0) == INFO_EXPORT => {
                found = Some(Export { size: u64_at(&d, 2), flags: u16_at(&d, 10) });
            }
            REP_INFO => {}
            k if k & 0x8000_0000 != 0 => {
                return Err(format!("export {export} refused (error {k:#x}): {}", String::from_utf8_lossy(&d)));
            }
            k => return Err(format!("unexpected option reply type {k}")),
        }
    }
}
