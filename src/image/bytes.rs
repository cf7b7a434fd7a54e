//! Byte-level helpers shared by the image formats: fixed-endian loads/stores, CRC-32C (VHDX),
//! the VHD one's-complement checksum, and GUIDs in their on-disk (mixed-endian) byte order.

pub type Guid = [u8; 16];

pub const NIL_GUID: Guid = [0; 16];

#[inline]
pub fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().unwrap())
}
#[inline]
pub fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}
#[inline]
pub fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
#[inline]
pub fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
#[inline]
pub fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}
pub fn put_be32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_be_bytes());
}
pub fn put_be64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_be_bytes());
}
pub fn put_le16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
pub fn put_le32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
pub fn put_le64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

const CRC32C_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC-32C (Castagnoli) of `data`, with the 4 bytes at `zeroed_at` read as zero: VHDX checksums
/// cover their own structure with the checksum field cleared. Only used at open, never per read.
pub fn crc32c_zeroed(data: &[u8], zeroed_at: usize) -> u32 {
    let mut c = !0u32;
    for (i, &byte) in data.iter().enumerate() {
        let b = if (zeroed_at..zeroed_at + 4).contains(&i) { 0 } else { byte };
        c = CRC32C_TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

/// CRC-32C of `data` continuing `crc` (the finished CRC of the bytes before; 0 to start): iSCSI
/// header and data digests, computed over a PDU's pieces one after another.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in data {
        c = CRC32C_TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

/// VHD checksum: one's complement of the byte sum, the checksum field itself excluded.
pub fn vhd_checksum(data: &[u8], field_at: usize) -> u32 {
    let sum =
        data.iter().enumerate().filter(|(i, _)| !(field_at..field_at + 4).contains(i)).fold(0u32, |s, (_, &b)| s.wrapping_add(b as u32));
    !sum
}

/// Parses "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (braces allowed) into the on-disk layout used by
/// VHDX and Windows: the first three fields little-endian, the last eight bytes as written.
pub const fn guid(s: &str) -> Guid {
    let b = s.as_bytes();
    let mut hex = [0u8; 32];
    let mut n = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let v = match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        if let Some(v) = v {
            assert!(n < 32, "GUID has more than 32 hex digits");
            hex[n] = v;
            n += 1;
        }
        i += 1;
    }
    assert!(n == 32, "GUID needs 32 hex digits");
    let mut canon = [0u8; 16];
    let mut k = 0;
    while k < 16 {
        canon[k] = hex[2 * k] << 4 | hex[2 * k + 1];
        k += 1;
    }
    let order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
    let mut g = [0u8; 16];
    let mut j = 0;
    while j < 16 {
        g[j] = canon[order[j]];
        j += 1;
    }
    g
}

/// Parses a GUID string at run time (locator values); None when malformed.
pub fn parse_guid(s: &str) -> Option<Guid> {
    let t = s.trim().trim_start_matches('{').trim_end_matches('}');
    let groups: Vec<&str> = t.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    if groups.len() != 5 || groups.iter().zip(lens).any(|(g, l)| g.len() != l) {
        return None;
    }
    if !t.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) {
        return None;
    }
    Some(guid(t))
}

/// Formats a GUID stored mixed-endian (VHDX, Windows) as "xxxxxxxx-xxxx-...".
pub fn guid_to_string(g: &Guid) -> String {
    let order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
    let c: Vec<u8> = order.iter().map(|&i| g[i]).collect();
    format_uuid_bytes(&c)
}

/// Formats 16 bytes in plain big-endian order (VHD stores its UUIDs this way).
pub fn uuid_to_string(g: &Guid) -> String {
    format_uuid_bytes(g)
}

fn format_uuid_bytes(c: &[u8]) -> String {
    let h: String = c.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// A random version-4 GUID from the kernel's CSPRNG.
pub fn random_guid() -> std::io::Result<Guid> {
    let mut g = [0u8; 16];
    let n = unsafe { libc::getrandom(g.as_mut_ptr().cast(), 16, 0) };
    if n != 16 {
        return Err(std::io::Error::last_os_error());
    }
    g[7] = (g[7] & 0x0F) | 0x40; // version 4 (in the little-endian third field)
    g[8] = (g[8] & 0x3F) | 0x80;
    Ok(g)
}

pub fn utf16le_decode(b: &[u8]) -> String {
    let units: Vec<u16> = b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    String::from_utf16_lossy(&units).trim_end_matches('\0').to_string()
}
pub fn utf16be_decode(b: &[u8]) -> String {
    let units: Vec<u16> = b.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
    String::from_utf16_lossy(&units).trim_end_matches('\0').to_string()
}
pub fn utf16le_encode(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}
pub fn utf16be_encode(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_be_bytes()).collect()
}

/// Length of the run of equal bits starting at `start` (at most `max` bits) and that bit's value.
/// `msb_first`: VHD numbers bits from the most significant bit of each byte, VHDX from the least.
/// Whole bytes of 0x00/0xFF are skipped eight bits at a time.
#[inline]
pub fn bit_run(bitmap: &[u8], start: u64, max: u64, msb_first: bool) -> (bool, u64) {
    let bit = |i: u64| -> bool {
        let byte = bitmap[(i / 8) as usize];
        let sh = if msb_first { 7 - (i % 8) } else { i % 8 };
        (byte >> sh) & 1 == 1
    };
    let value = bit(start);
    let full = if value { 0xFF } else { 0x00 };
    let mut i = start + 1;
    let end = start + max;
    while i < end {
        if i % 8 == 0 && i + 8 <= end && bitmap[(i / 8) as usize] == full {
            i += 8;
            continue;
        }
        if bit(i) != value {
            break;
        }
        i += 1;
    }
    (value, i - start)
}

pub fn set_bits(bitmap: &mut [u8], start: u64, count: u64, msb_first: bool) {
    for i in start..start + count {
        let sh = if msb_first { 7 - (i % 8) } else { i % 8 };
        bitmap[(i / 8) as usize] |= 1 << sh;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_vector() {
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c_zeroed(&[0u8; 32], usize::MAX - 4), 0x8A91_36AA);
        assert_eq!(crc32c_zeroed(b"123456789", usize::MAX - 4), 0xE306_9283);
        assert_eq!(crc32c_append(0, b"123456789"), 0xE306_9283);
        assert_eq!(crc32c_append(crc32c_append(0, b"1234"), b"56789"), 0xE306_9283);
        assert_eq!(crc32c_append(0, &[0xFF; 32]), 0x62A8_AB43);
    }

    #[test]
    fn guid_round_trip_and_layout() {
        let g = guid("2DC27766-F623-4200-9D64-115E9BFD4A08");
        assert_eq!(&g[..4], &[0x66, 0x77, 0xC2, 0x2D]);
        assert_eq!(guid_to_string(&g), "2dc27766-f623-4200-9d64-115e9bfd4a08");
        assert_eq!(parse_guid("{2dc27766-f623-4200-9d64-115e9bfd4a08}"), Some(g));
        assert_eq!(parse_guid("2dc27766-f623-4200-9d64-115e9bfd4a0"), None);
        assert_eq!(parse_guid("zzc27766-f623-4200-9d64-115e9bfd4a08"), None);
    }

    #[test]
    fn bit_runs_both_orders() {
        let bm = [0b1110_0000u8, 0xFF, 0x00];
        assert_eq!(bit_run(&bm, 0, 24, true), (true, 3));
        assert_eq!(bit_run(&bm, 3, 21, true), (false, 5));
        assert_eq!(bit_run(&bm, 8, 16, true), (true, 8));
        assert_eq!(bit_run(&bm, 0, 24, false), (false, 5));
        assert_eq!(bit_run(&bm, 5, 19, false), (true, 11));
        let mut m = [0u8; 2];
        set_bits(&mut m, 6, 4, false);
        assert_eq!(m, [0b1100_0000, 0b0000_0011]);
    }

    #[test]
    fn vhd_checksum_skips_field() {
        let mut b = [1u8; 16];
        b[4..8].copy_from_slice(&[9, 9, 9, 9]);
        assert_eq!(vhd_checksum(&b, 4), !12u32);
    }
}
