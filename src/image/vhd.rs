//! VHD (Microsoft "Virtual Hard Disk Image Format Specification"): big-endian, a 512-byte
//! "conectix" footer at the end (and a copy at offset 0 for dynamic disks), a "cxsparse" dynamic
//! header, a BAT of u32 sector numbers (0xFFFFFFFF = absent) and, before each block, a sector
//! bitmap (MSB first). Differencing disks (type 4) fall through to the parent where a bit is 0.

use super::bytes::{be32, be64, bit_run, utf16be_decode, utf16le_decode, vhd_checksum, Guid};
use super::{Format, Map, ParentRef, Parsed, Run};

pub const FOOTER_COOKIE: &[u8; 8] = b"conectix";
pub const HEADER_COOKIE: &[u8; 8] = b"cxsparse";
pub const FOOTER_LEN: usize = 512;
pub const HEADER_LEN: usize = 1024;
pub const TYPE_FIXED: u32 = 2;
pub const TYPE_DYNAMIC: u32 = 3;
pub const TYPE_DIFFERENCING: u32 = 4;
pub const BAT_ABSENT: u32 = 0xFFFF_FFFF;
/// The format's own ceiling (spec: 2040 GiB).
pub const MAX_VIRTUAL_SIZE: u64 = 2040 << 30;
pub const PLATFORM_W2RU: u32 = u32::from_be_bytes(*b"W2ru");
pub const PLATFORM_W2KU: u32 = u32::from_be_bytes(*b"W2ku");
const PLATFORM_MACX: u32 = u32::from_be_bytes(*b"MacX");
/// Seconds from the Unix epoch to the VHD epoch (2000-01-01 00:00:00 UTC).
pub const VHD_EPOCH_UNIX: u64 = 946_684_800;

pub fn has_footer(b: &[u8]) -> bool {
    b.len() >= FOOTER_LEN && &b[b.len() - FOOTER_LEN..][..8] == FOOTER_COOKIE
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    pub features: u32,
    pub version: u32,
    pub data_offset: u64,
    pub timestamp: u32,
    pub creator_app: [u8; 4],
    pub creator_version: u32,
    pub creator_os: u32,
    pub original_size: u64,
    pub current_size: u64,
    pub geometry: u32,
    pub disk_type: u32,
    pub unique_id: Guid,
    pub saved_state: u8,
}

impl Footer {
    pub fn parse(f: &[u8]) -> Result<Footer, String> {
        if f.len() < FOOTER_LEN || &f[..8] != FOOTER_COOKIE {
            return Err("footer: no \"conectix\" cookie".into());
        }
        let stored = be32(f, 64);
        let computed = vhd_checksum(&f[..FOOTER_LEN], 64);
        if stored != computed {
            return Err(format!("footer: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"));
        }
        Ok(Footer {
            features: be32(f, 8),
            version: be32(f, 12),
            data_offset: be64(f, 16),
            timestamp: be32(f, 24),
            creator_app: f[28..32].try_into().unwrap(),
            creator_version: be32(f, 32),
            creator_os: be32(f, 36),
            original_size: be64(f, 40),
            current_size: be64(f, 48),
            geometry: be32(f, 56),
            disk_type: be32(f, 60),
            unique_id: f[68..84].try_into().unwrap(),
            saved_state: f[84],
        })
    }

    pub fn emit(&self) -> [u8; FOOTER_LEN] {
        use super::bytes::{put_be32, put_be64};
        let mut f = [0u8; FOOTER_LEN];
        f[..8].copy_from_slice(FOOTER_COOKIE);
        put_be32(&mut f, 8, self.features);
        put_be32(&mut f, 12, self.version);
        put_be64(&mut f, 16, self.data_offset);
        put_be32(&mut f, 24, self.timestamp);
        f[28..32].copy_from_slice(&self.creator_app);
        put_be32(&mut f, 32, self.creator_version);
        put_be32(&mut f, 36, self.creator_os);
        put_be64(&mut f, 40, self.original_size);
        put_be64(&mut f, 48, self.current_size);
        put_be32(&mut f, 56, self.geometry);
        put_be32(&mut f, 60, self.disk_type);
        f[68..84].copy_from_slice(&self.unique_id);
        f[84] = self.saved_state;
        let c = vhd_checksum(&f, 64);
        put_be32(&mut f, 64, c);
        f
    }
}

/// CHS geometry per the VHD specification's algorithm (cylinders << 16 | heads << 8 | sectors).
pub fn chs_geometry(size: u64) -> u32 {
    let mut total = (size / 512).min(65535 * 16 * 255);
    let (spt, heads, cyl_x_heads);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cyl_x_heads = total / spt;
    } else {
        let mut s = 17;
        let mut c = total / s;
        let mut h = c.div_ceil(1024).max(4);
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cyl_x_heads = c;
    }
    total = cyl_x_heads / heads;
    ((total.min(65535) as u32) << 16) | ((heads as u32) << 8) | spt as u32
}

/// Table lookups for a dynamic or differencing VHD, read from the mapping in place.
pub(crate) struct VhdMap {
    pub bat_off: u64,
    /// BAT entries that cover the virtual size (the table may be longer).
    pub blocks: u64,
    pub block_size: u64,
    /// Sector bitmap before each block, padded to a sector boundary.
    pub bitmap_bytes: u64,
    pub differencing: bool,
    pub virtual_size: u64,
}

impl VhdMap {
    #[inline]
    pub fn entry(&self, b: &[u8], block: u64) -> u32 {
        be32(b, (self.bat_off + 4 * block) as usize)
    }

    #[inline]
    pub fn lookup(&self, b: &[u8], off: u64, len: u64) -> Run {
        let block = off / self.block_size;
        let in_block = off % self.block_size;
        let max = len.min(self.block_size - in_block);
        let e = self.entry(b, block);
        if e == BAT_ABSENT {
            return if self.differencing { Run::Parent(max) } else { Run::Zero(max) };
        }
        let base = e as u64 * 512;
        let data = base + self.bitmap_bytes;
        if !self.differencing {
            // Like qemu and Hyper-V readers, a dynamic disk's allocated block is read whole: its
            // unwritten sectors are zero-filled on allocation, and the bitmap is advisory.
            return Run::Data { file_off: data + in_block, len: max };
        }
        let bitmap = &b[base as usize..(base + self.bitmap_bytes) as usize];
        let first = in_block / 512;
        let last = (in_block + max - 1) / 512;
        let (present, sectors) = bit_run(bitmap, first, last - first + 1, true);
        let run = (sectors * 512 - in_block % 512).min(max);
        if present {
            Run::Data { file_off: data + in_block, len: run }
        } else {
            Run::Parent(run)
        }
    }

    pub fn allocated_blocks(&self, b: &[u8]) -> u64 {
        (0..self.blocks).filter(|&i| self.entry(b, i) != BAT_ABSENT).count() as u64
    }

    /// Bytes of block `i` that must exist in the file (bitmap + the part inside the virtual size).
    fn block_extent(&self, i: u64) -> u64 {
        self.bitmap_bytes + self.block_size.min(self.virtual_size - i * self.block_size)
    }

    pub fn deep_check(&self, b: &[u8]) -> Result<(), String> {
        let mut spans: Vec<(u64, u64, u64)> = (0..self.blocks)
            .filter_map(|i| {
                let e = self.entry(b, i);
                (e != BAT_ABSENT).then(|| (e as u64 * 512, e as u64 * 512 + self.block_extent(i), i))
            })
            .collect();
        spans.sort_unstable();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(format!(
                    "BAT entries {} and {} overlap (blocks at file offsets {:#x} and {:#x})",
                    w[0].2, w[1].2, w[0].0, w[1].0
                ));
            }
        }
        Ok(())
    }
}

pub(crate) fn parse(b: &[u8]) -> Result<Parsed, String> {
    let len = b.len() as u64;
    let mut problems = Vec::new();
    let end_footer =
        if len >= FOOTER_LEN as u64 { Footer::parse(&b[b.len() - FOOTER_LEN..]) } else { Err("file shorter than a footer".into()) };
    let footer = match end_footer {
        Ok(f) => f,
        Err(e) => {
            // A dynamic disk keeps a copy at offset 0: say what happened instead of guessing.
            match Footer::parse(b) {
                Ok(_) => {
                    return Err(format!(
                    "{e} at the end of the file, but the copy at offset 0 is intact: the file was truncated or its last sector overwritten"
                ))
                }
                Err(_) => return Err(e),
            }
        }
    };
    if footer.version != 0x0001_0000 {
        return Err(format!("footer: unsupported format version {:#010x} (expected 0x00010000)", footer.version));
    }
    let size = footer.current_size;
    if size > MAX_VIRTUAL_SIZE {
        return Err(format!("footer: virtual size {size} bytes exceeds the VHD maximum of 2040 GiB"));
    }
    let footer_pos = len - FOOTER_LEN as u64;
    let base = |format, map, parent| Parsed {
        format,
        virtual_size: size,
        block_size: 0,
        logical_sector: 512,
        physical_sector: 512,
        id: footer.unique_id,
        disk_id: footer.unique_id,
        timestamp: footer.timestamp,
        parent,
        problems: Vec::new(),
        map,
    };
    match footer.disk_type {
        TYPE_FIXED => {
            if size > footer_pos {
                return Err(format!("fixed disk of {size} bytes needs {} bytes of file, found {len}: truncated", size + FOOTER_LEN as u64));
            }
            return Ok(base(Format::VhdFixed, Map::Flat { data_off: 0 }, None));
        }
        TYPE_DYNAMIC | TYPE_DIFFERENCING => {}
        t => return Err(format!("footer: unsupported disk type {t} (2 fixed, 3 dynamic, 4 differencing)")),
    }
    // Dynamic and differencing: the copy at offset 0 must agree (a mismatch is repairable).
    match Footer::parse(b) {
        Ok(copy) if copy == footer => {}
        Ok(_) => problems.push("footer copy at offset 0 differs from the footer at the end".into()),
        Err(e) => problems.push(format!("footer copy at offset 0 is damaged ({e})")),
    }
    let hoff = footer.data_offset;
    if hoff.checked_add(HEADER_LEN as u64).is_none_or(|end| end > footer_pos) {
        return Err(format!("footer: dynamic header offset {hoff:#x} lies outside the file ({len} bytes)"));
    }
    let h = &b[hoff as usize..hoff as usize + HEADER_LEN];
    if &h[..8] != HEADER_COOKIE {
        return Err(format!("dynamic header at {hoff:#x}: no \"cxsparse\" cookie"));
    }
    let (stored, computed) = (be32(h, 36), vhd_checksum(h, 36));
    if stored != computed {
        return Err(format!("dynamic header at {hoff:#x}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"));
    }
    let bat_off = be64(h, 16);
    let max_entries = be32(h, 28) as u64;
    let block_size = be32(h, 32) as u64;
    if !block_size.is_power_of_two() || !(512..=256 << 20).contains(&block_size) {
        return Err(format!("dynamic header: block size {block_size} is not a power of two between 512 B and 256 MiB"));
    }
    let blocks = size.div_ceil(block_size);
    if max_entries < blocks {
        return Err(format!(
            "dynamic header: BAT has {max_entries} entries but a {size}-byte disk with {block_size}-byte blocks needs {blocks}"
        ));
    }
    let bat_bytes = max_entries * 4;
    if bat_off.checked_add(bat_bytes).is_none_or(|end| end > footer_pos) {
        return Err(format!("BAT at {bat_off:#x} ({max_entries} entries) extends past the end of the file ({len} bytes)"));
    }
    let bitmap_bytes = (block_size / 512).div_ceil(8).next_multiple_of(512);
    let differencing = footer.disk_type == TYPE_DIFFERENCING;
    let map = VhdMap { bat_off, blocks, block_size, bitmap_bytes, differencing, virtual_size: size };
    let metadata = [(0, FOOTER_LEN as u64), (hoff, HEADER_LEN as u64), (bat_off, bat_bytes)];
    for i in 0..blocks {
        let e = map.entry(b, i);
        if e == BAT_ABSENT {
            continue;
        }
        let start = e as u64 * 512;
        let end = start + map.block_extent(i);
        if end > footer_pos {
            return Err(format!("BAT entry {i} points to sector {e} (file offset {start:#x}), past the end of the file ({len} bytes)"));
        }
        if let Some((m, _)) = metadata.iter().find(|(m, l)| start < m + l && *m < end) {
            return Err(format!("BAT entry {i} (file offset {start:#x}) overlaps the image metadata at {m:#x}"));
        }
    }
    let parent = if differencing { Some(parse_parent(b, h, footer_pos, &mut problems)?) } else { None };
    let mut p = base(if differencing { Format::VhdDifferencing } else { Format::VhdDynamic }, Map::Vhd(map), parent);
    p.block_size = block_size;
    p.problems = problems;
    Ok(p)
}

fn parse_parent(b: &[u8], h: &[u8], footer_pos: u64, problems: &mut Vec<String>) -> Result<ParentRef, String> {
    let id: Guid = h[40..56].try_into().unwrap();
    let timestamp = be32(h, 56);
    let name = utf16be_decode(&h[64..576]);
    let mut relative = Vec::new();
    let mut absolute = Vec::new();
    for k in 0..8 {
        let e = &h[576 + 24 * k..600 + 24 * k];
        let code = be32(e, 0);
        if code == 0 {
            continue;
        }
        let data_len = be32(e, 8) as u64;
        let data_off = be64(e, 16);
        if data_off.checked_add(data_len).is_none_or(|end| end > footer_pos) || data_len > 64 * 1024 {
            return Err(format!("parent locator {k}: data at {data_off:#x} ({data_len} bytes) lies outside the file"));
        }
        let data = &b[data_off as usize..(data_off + data_len) as usize];
        match code {
            PLATFORM_W2RU => relative.push(utf16le_decode(data)),
            PLATFORM_W2KU => absolute.push(utf16le_decode(data)),
            PLATFORM_MACX => absolute.push(String::from_utf8_lossy(data).trim_start_matches("file://").trim_end_matches('\0').to_string()),
            other => {
                problems.push(format!("parent locator {k}: platform code {:?} ignored", String::from_utf8_lossy(&other.to_be_bytes())))
            }
        }
    }
    let mut locators = relative;
    locators.extend(absolute);
    if !name.is_empty() {
        locators.push(name);
    }
    if locators.is_empty() {
        return Err("differencing disk without any usable parent locator or parent name".into());
    }
    Ok(ParentRef { id, timestamp: Some(timestamp), locators })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_matches_spec_examples() {
        // 20 MiB: 40960 sectors -> 17 sectors/track, 4 heads, 602 cylinders.
        let g = chs_geometry(20 << 20);
        assert_eq!((g >> 16, (g >> 8) & 0xFF, g & 0xFF), (602, 4, 17));
        let g = chs_geometry(127 << 30);
        assert_eq!((g >> 8) & 0xFF, 16);
    }

    #[test]
    fn footer_round_trip_and_checksum() {
        let f = Footer {
            features: 2,
            version: 0x10000,
            data_offset: 512,
            timestamp: 7,
            creator_app: *b"bfrm",
            creator_version: 1,
            creator_os: 0,
            original_size: 1 << 20,
            current_size: 1 << 20,
            geometry: chs_geometry(1 << 20),
            disk_type: TYPE_DYNAMIC,
            unique_id: [3; 16],
            saved_state: 0,
        };
        let mut bytes = f.emit();
        assert_eq!(Footer::parse(&bytes).unwrap(), f);
        bytes[100] ^= 1;
        assert!(Footer::parse(&bytes).unwrap_err().contains("checksum mismatch"));
    }
}
