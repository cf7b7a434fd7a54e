//! Per-boot target tokens: what the boot path (the `/ipxe` script) hands a target so that it
//! can name its NBD write cache (`vdisk@<token>`), and nobody else can. A token is
//! self-verifying, so any farm node sharing the key (`farm.token_key_file`) accepts it:
//! 128 random bits | expiry (unix seconds) | MAC | a SipHash-2-4 tag over those, the client
//! address and the vdisk, base64url (46 characters). Pure functions: time is an argument.

use std::net::IpAddr;

const NONCE: usize = 16;
const RAW: usize = NONCE + 4 + 6 + 8;

/// SipHash-2-4 of `data` under `key` (the reference algorithm, written out).
pub fn siphash24(key: &[u8; 16], data: &[u8]) -> u64 {
    let k0 = u64::from_le_bytes(key[..8].try_into().unwrap());
    let k1 = u64::from_le_bytes(key[8..].try_into().unwrap());
    let mut v = [k0 ^ 0x736f_6d65_7073_6575, k1 ^ 0x646f_7261_6e64_6f6d, k0 ^ 0x6c79_6765_6e65_7261, k1 ^ 0x7465_6462_7974_6573];
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let m = u64::from_le_bytes(c.try_into().unwrap());
        v[3] ^= m;
        round(&mut v);
        round(&mut v);
        v[0] ^= m;
    }
    let rest = chunks.remainder();
    let mut last = [0u8; 8];
    last[..rest.len()].copy_from_slice(rest);
    let m = u64::from_le_bytes(last) | ((data.len() as u64 & 0xff) << 56);
    v[3] ^= m;
    round(&mut v);
    round(&mut v);
    v[0] ^= m;
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

fn tag(key: &[u8; 16], body: &[u8], ip: IpAddr, vdisk: &str) -> u64 {
    let ip: [u8; 16] = match ip.to_canonical() {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    let mut m = Vec::with_capacity(body.len() + 16 + vdisk.len());
    m.extend_from_slice(body);
    m.extend_from_slice(&ip);
    m.extend_from_slice(vdisk.as_bytes());
    siphash24(key, &m)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

pub(crate) fn b64(data: &[u8]) -> String {
    let mut o = String::new();
    for c in data.chunks(3) {
        let n = c.iter().enumerate().fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..=c.len() {
            o.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    o
}

pub(crate) fn unb64(s: &str) -> Option<Vec<u8>> {
    let mut o = Vec::new();
    for c in s.as_bytes().chunks(4) {
        if c.len() < 2 {
            return None;
        }
        let mut n = 0u32;
        for (i, &ch) in c.iter().enumerate() {
            n |= (B64.iter().position(|&b| b == ch)? as u32) << (18 - 6 * i);
        }
        for i in 0..c.len() - 1 {
            o.push((n >> (16 - 8 * i)) as u8);
        }
    }
    // One spelling per token: unused low bits of the last character must be zero.
    (b64(&o) == s).then_some(o)
}

/// A token for the target with `mac` booting `vdisk` from `ip`, valid until `expires_unix`.
pub fn issue(key: &[u8; 16], nonce: [u8; NONCE], expires_unix: u32, mac: [u8; 6], ip: IpAddr, vdisk: &str) -> String {
    let mut raw = nonce.to_vec();
    raw.extend_from_slice(&expires_unix.to_be_bytes());
    raw.extend_from_slice(&mac);
    let t = tag(key, &raw, ip, vdisk);
    raw.extend_from_slice(&t.to_le_bytes());
    b64(&raw)
}

/// Checks a token presented from `ip` for `vdisk`: the MAC it was issued to, or why not.
pub fn verify(key: &[u8; 16], token: &str, ip: IpAddr, vdisk: &str, now_unix: u64) -> Result<[u8; 6], &'static str> {
    match check(key, token, ip, vdisk, now_unix)? {
        (_, true) => Err(EXPIRED),
        (mac, false) => Ok(mac),
    }
}

/// Why an authentic token is refused when it creates a target.
pub const EXPIRED: &str = "boot token expired: fetch the boot script again";

/// Checks a token's tag (issued to `ip` for `vdisk` under `key`): (its MAC, whether it has
/// expired). An expired token still names its boot: a reconnect of that boot is let in.
pub fn check(key: &[u8; 16], token: &str, ip: IpAddr, vdisk: &str, now_unix: u64) -> Result<([u8; 6], bool), &'static str> {
    let raw = unb64(token).filter(|r| r.len() == RAW).ok_or("not a boot token")?;
    let (body, t) = raw.split_at(RAW - 8);
    // A constant-time comparison is not needed for a 64-bit tag checked per connection attempt
    // against a per-process-or-farm secret; the tag binds the address, so a guess must also come
    // from the owner's address.
    if tag(key, body, ip, vdisk).to_le_bytes() != t {
        return Err("boot token not issued to this address for this vdisk");
    }
    let expires = u32::from_be_bytes(body[NONCE..NONCE + 4].try_into().unwrap()) as u64;
    Ok((body[NONCE + 4..].try_into().unwrap(), now_unix > expires))
}

/// A fresh boot id for an export name's `#boot` (128 random bits, base64url, 22 characters):
/// what a boot script without a boot token gives the connections of one boot.
pub fn new_boot_id() -> String {
    b64(&random16())
}

/// A MAC as target id: lowercase hex pairs with ':' (how a boot token's target is named).
pub fn mac_id(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Parses a MAC written with ':' or '-' separators (or none).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let hex: String = s.chars().filter(|c| *c != ':' && *c != '-').collect();
    // Hex digits only, checked before slicing by bytes: `?mac=` is any client's text, and a
    // multi-byte character would put a slice inside it (a panic, found by fuzzing).
    if hex.len() != 12 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut m = [0u8; 6];
    for (i, b) in m.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(m)
}

/// The signing key: the first 16 bytes of `farm.token_key_file` (the same file on every farm
/// node), or, without one, a random key made once per process (logged: tokens then work only
/// on the node that issued them, until it restarts).
pub fn key(file: Option<&std::path::Path>) -> [u8; 16] {
    use std::sync::Mutex;
    static CACHE: Mutex<Option<(Option<std::path::PathBuf>, [u8; 16])>> = Mutex::new(None);
    let mut c = CACHE.lock().unwrap();
    if let Some((p, k)) = c.as_ref() {
        if p.as_deref() == file {
            return *k;
        }
    }
    let k = match file.and_then(|p| std::fs::read(p).ok()).filter(|d| d.len() >= 16) {
        Some(d) => d[..16].try_into().unwrap(),
        None => {
            static RANDOM: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
            *RANDOM.get_or_init(|| {
                tracing::info!("farm.token_key_file is not set: boot tokens are signed with a random per-process key (only this node accepts them, until it restarts); set the same key file on every farm node for failover");
                random16()
            })
        }
    };
    *c = Some((file.map(|p| p.to_path_buf()), k));
    k
}

/// 128 bits from getrandom.
pub fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    // Safety: getrandom writes at most 16 bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 16, 0) };
    assert_eq!(n, 16, "getrandom failed");
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siphash_matches_the_reference_vectors() {
        // The paper's key 00..0f; messages 00..(n-1): vectors for n = 0, 1, 15 (Appendix A / vectors.h).
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let msg: Vec<u8> = (0..64u8).collect();
        assert_eq!(siphash24(&key, &msg[..0]), 0x726f_db47_dd0e_0e31);
        assert_eq!(siphash24(&key, &msg[..1]), 0x74f8_39c5_93dc_67fd);
        assert_eq!(siphash24(&key, &msg[..15]), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn tokens_bind_address_vdisk_and_expiry() {
        let key = [7u8; 16];
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(parse_mac("ՎՎxx\n刷"), None, "multi-byte text is refused, not sliced");
        assert_eq!(parse_mac("ՎՎՎՎՎՎ"), None, "12 bytes that are not hex digits");
        assert_eq!(parse_mac("+a:bb:cc:dd:ee:01"), None, "from_str_radix would take the sign");
        assert_eq!(parse_mac("AABBCCDDEE01"), Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x01]));
        let mac = parse_mac("aa:bb:cc:dd:ee:01").unwrap();
        let t = issue(&key, [1; 16], 1000, mac, ip, "disk");
        assert!(t.len() <= 64 && crate::nbd::target::valid_target_id(&t), "{t}");
        assert_eq!(verify(&key, &t, ip, "disk", 999), Ok(mac));
        assert!(verify(&key, &t, "127.0.0.2".parse().unwrap(), "disk", 999).is_err(), "another address");
        assert!(verify(&key, &t, ip, "other", 999).is_err(), "another vdisk");
        assert!(verify(&[8; 16], &t, ip, "disk", 999).is_err(), "another key");
        assert!(verify(&key, &t, ip, "disk", 1001).unwrap_err().contains("expired"));
        let mut bad = t.clone().into_bytes();
        bad[3] = if bad[3] == b'A' { b'B' } else { b'A' };
        assert!(verify(&key, std::str::from_utf8(&bad).unwrap(), ip, "disk", 999).is_err(), "a changed byte");
        assert!(verify(&key, "aa:bb:cc:dd:ee:01", ip, "disk", 0).is_err());
        assert_eq!(check(&key, &t, ip, "disk", 1001), Ok((mac, true)), "expired, still authentic");
        assert_eq!(mac_id(mac), "aa:bb:cc:dd:ee:01");
        let b = new_boot_id();
        assert!(b.len() == 22 && crate::nbd::target::valid_boot_id(&b) && b != new_boot_id(), "{b}");
        assert!(crate::nbd::target::valid_boot_id(&t), "a token is a valid boot id: {t}");
    }
}
