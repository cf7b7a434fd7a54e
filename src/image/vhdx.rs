//! VHDX ([MS-VHDX]): little-endian, CRC-32C checksums, "vhdxfile" at 0, two headers at 64/128 KiB
//! (highest valid sequence number wins), two region tables at 192/256 KiB naming the BAT and the
//! metadata region, a BAT of u64 entries (state in bits 0-2, file offset in MiB in bits 20-63) with
//! a sector-bitmap entry after every `chunk_ratio` payload entries, and a log that must be empty:
//! an image with log entries was not closed cleanly and is refused rather than served torn.

use super::bytes::{crc32c_zeroed, guid, le16, le32, le64, parse_guid, utf16le_decode, Guid, NIL_GUID};
use super::{Format, Map, ParentRef, Parsed, Run};

pub const FILE_SIGNATURE: &[u8; 8] = b"vhdxfile";
pub const MIB: u64 = 1 << 20;
pub const HEADER_OFFSETS: [u64; 2] = [64 * 1024, 128 * 1024];
pub const HEADER_LEN: usize = 4096;
pub const REGION_OFFSETS: [u64; 2] = [192 * 1024, 256 * 1024];
pub const REGION_LEN: usize = 64 * 1024;
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

pub const BAT_GUID: Guid = guid("2DC27766-F623-4200-9D64-115E9BFD4A08");
pub const METADATA_GUID: Guid = guid("8B7CA206-4790-4B9A-B8FE-575F050F886E");
pub const FILE_PARAMETERS: Guid = guid("CAA16737-FA36-4D43-B3B6-33F0AA44E76B");
pub const VIRTUAL_DISK_SIZE: Guid = guid("2FA54224-CD1B-4876-B211-5DBED83BF4B8");
pub const VIRTUAL_DISK_ID: Guid = guid("BECA12AB-B2E6-4523-93EF-C309E000C746");
pub const LOGICAL_SECTOR_SIZE: Guid = guid("8141BF1D-A96F-4709-BA47-F233A8FAAB5F");
pub const PHYSICAL_SECTOR_SIZE: Guid = guid("CDA348C7-445D-4471-9CC9-E9885251C556");
pub const PARENT_LOCATOR: Guid = guid("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C");
pub const PARENT_LOCATOR_TYPE: Guid = guid("B04AEFB7-D19E-4A81-B789-25B8E9445913");

pub const PAYLOAD_NOT_PRESENT: u64 = 0;
pub const PAYLOAD_UNDEFINED: u64 = 1;
pub const PAYLOAD_ZERO: u64 = 2;
pub const PAYLOAD_UNMAPPED: u64 = 3;
pub const PAYLOAD_FULLY_PRESENT: u64 = 6;
pub const PAYLOAD_PARTIALLY_PRESENT: u64 = 7;
pub const SB_BLOCK_PRESENT: u64 = 6;

/// One parsed header (the current one).
#[derive(Debug, Clone)]
pub struct Header {
    pub sequence: u64,
    pub file_write_guid: Guid,
    pub data_write_guid: Guid,
    pub log_guid: Guid,
    pub log_length: u32,
    pub log_offset: u64,
    pub slot: usize,
}

pub fn parse_header(h: &[u8]) -> Result<Header, String> {
    if &h[..4] != b"head" {
        return Err("no \"head\" signature".into());
    }
    let (stored, computed) = (le32(h, 4), crc32c_zeroed(&h[..HEADER_LEN], 4));
    if stored != computed {
        return Err(format!("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"));
    }
    let version = le16(h, 66);
    if version != 1 {
        return Err(format!("unsupported version {version} (expected 1)"));
    }
    Ok(Header {
        sequence: le64(h, 8),
        file_write_guid: h[16..32].try_into().unwrap(),
        data_write_guid: h[32..48].try_into().unwrap(),
        log_guid: h[48..64].try_into().unwrap(),
        log_length: le32(h, 68),
        log_offset: le64(h, 72),
        slot: 0,
    })
}

/// The current header of a VHDX file: the valid one with the highest sequence number.
pub fn current_header(b: &[u8], problems: &mut Vec<String>) -> Result<Header, String> {
    let mut best: Option<Header> = None;
    let mut errors = Vec::new();
    for (slot, &off) in HEADER_OFFSETS.iter().enumerate() {
        match parse_header(&b[off as usize..off as usize + HEADER_LEN]) {
            Ok(mut h) => {
                h.slot = slot;
                if best.as_ref().is_none_or(|b| h.sequence > b.sequence) {
                    best = Some(h);
                }
            }
            Err(e) => errors.push(format!("header {} at {off:#x}: {e}", slot + 1)),
        }
    }
    match best {
        Some(h) => {
            problems.extend(errors);
            Ok(h)
        }
        None => Err(format!("no valid header: {}", errors.join("; "))),
    }
}

#[derive(Debug, Clone, Copy)]
struct Region {
    guid: Guid,
    offset: u64,
    length: u64,
    required: bool,
}

fn parse_region_table(t: &[u8]) -> Result<Vec<Region>, String> {
    if &t[..4] != b"regi" {
        return Err("no \"regi\" signature".into());
    }
    let (stored, computed) = (le32(t, 4), crc32c_zeroed(&t[..REGION_LEN], 4));
    if stored != computed {
        return Err(format!("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"));
    }
    let count = le32(t, 8) as usize;
    if count > 2047 {
        return Err(format!("{count} entries, more than the 2047 allowed"));
    }
    Ok((0..count)
        .map(|i| {
            let e = &t[16 + 32 * i..48 + 32 * i];
            Region { guid: e[..16].try_into().unwrap(), offset: le64(e, 16), length: le32(e, 24) as u64, required: le32(e, 28) & 1 == 1 }
        })
        .collect())
}

/// Table lookups for a VHDX file, read from the mapping in place.
pub(crate) struct VhdxMap {
    pub bat_off: u64,
    pub block_size: u64,
    pub chunk_ratio: u64,
    pub logical_sector: u64,
    pub data_blocks: u64,
    pub has_parent: bool,
    pub virtual_size: u64,
}

impl VhdxMap {
    #[inline]
    pub fn payload_index(&self, block: u64) -> u64 {
        block + block / self.chunk_ratio
    }
    #[inline]
    pub fn bitmap_index(&self, chunk: u64) -> u64 {
        chunk * (self.chunk_ratio + 1) + self.chunk_ratio
    }
    #[inline]
    pub fn entry(&self, b: &[u8], index: u64) -> u64 {
        le64(b, (self.bat_off + 8 * index) as usize)
    }

    #[inline]
    pub fn lookup(&self, b: &[u8], off: u64, len: u64) -> Run {
        let block = off / self.block_size;
        let in_block = off % self.block_size;
        let max = len.min(self.block_size - in_block);
        let e = self.entry(b, self.payload_index(block));
        match e & 7 {
            PAYLOAD_FULLY_PRESENT => Run::Data { file_off: (e & !(MIB - 1)) + in_block, len: max },
            PAYLOAD_PARTIALLY_PRESENT => {
                let chunk = block / self.chunk_ratio;
                let sb = self.entry(b, self.bitmap_index(chunk)) & !(MIB - 1);
                let bitmap = &b[sb as usize..(sb + MIB) as usize];
                let spb = self.block_size / self.logical_sector;
                let first = (block % self.chunk_ratio) * spb + in_block / self.logical_sector;
                let last = (block % self.chunk_ratio) * spb + (in_block + max - 1) / self.logical_sector;
                let (present, sectors) = super::bytes::bit_run(bitmap, first, last - first + 1, false);
                let run = (sectors * self.logical_sector - in_block % self.logical_sector).min(max);
                if present {
                    Run::Data { file_off: (e & !(MIB - 1)) + in_block, len: run }
                } else {
                    Run::Parent(run)
                }
            }
            PAYLOAD_NOT_PRESENT | PAYLOAD_UNDEFINED if self.has_parent => Run::Parent(max),
            _ => Run::Zero(max),
        }
    }

    pub fn allocated_blocks(&self, b: &[u8]) -> u64 {
        (0..self.data_blocks)
            .filter(|&i| matches!(self.entry(b, self.payload_index(i)) & 7, PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT))
            .count() as u64
    }

    fn chunks(&self) -> u64 {
        self.data_blocks.div_ceil(self.chunk_ratio)
    }

    /// Every allocated payload and sector-bitmap block as (start, end, description).
    fn spans(&self, b: &[u8]) -> Vec<(u64, u64, String)> {
        let mut v = Vec::new();
        for i in 0..self.data_blocks {
            let e = self.entry(b, self.payload_index(i));
            if matches!(e & 7, PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT) {
                let start = e & !(MIB - 1);
                v.push((start, start + self.block_size.min(self.virtual_size - i * self.block_size), format!("payload block {i}")));
            }
        }
        if self.has_parent {
            for c in 0..self.chunks() {
                let e = self.entry(b, self.bitmap_index(c));
                if e & 7 == SB_BLOCK_PRESENT {
                    let start = e & !(MIB - 1);
                    v.push((start, start + MIB, format!("sector bitmap block {c}")));
                }
            }
        }
        v
    }

    pub fn deep_check(&self, b: &[u8]) -> Result<(), String> {
        let mut spans = self.spans(b);
        spans.sort_unstable_by_key(|s| s.0);
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(format!("{} at {:#x} overlaps {} at {:#x}", w[0].2, w[0].0, w[1].2, w[1].0));
            }
        }
        Ok(())
    }
}

struct Metadata {
    block_size: u64,
    leave_allocated: bool,
    has_parent: bool,
    virtual_size: u64,
    logical_sector: u64,
    physical_sector: u64,
    /// Page 83 Data (the Virtual Disk ID item).
    disk_id: Guid,
    parent: Option<ParentRef>,
}

fn parse_metadata(b: &[u8], region: Region) -> Result<Metadata, String> {
    let m = &b[region.offset as usize..(region.offset + region.length) as usize];
    if &m[..8] != b"metadata" {
        return Err(format!("metadata region at {:#x}: no \"metadata\" signature", region.offset));
    }
    let count = le16(m, 10) as usize;
    if count > 2047 {
        return Err(format!("metadata table: {count} entries, more than the 2047 allowed"));
    }
    let mut items: Vec<(Guid, &[u8])> = Vec::with_capacity(count);
    for i in 0..count {
        let e = &m[32 + 32 * i..64 + 32 * i];
        let id: Guid = e[..16].try_into().unwrap();
        let (off, len, flags) = (le32(e, 16) as u64, le32(e, 20) as u64, le32(e, 24));
        // Found by fuzzing: an empty item's offset must be checked too before slicing at it.
        if off + len > region.length || (len > 0 && off < 64 * 1024) {
            return Err(format!("metadata item {i}: {len} bytes at {off:#x} lie outside the metadata region"));
        }
        let known = [FILE_PARAMETERS, VIRTUAL_DISK_SIZE, VIRTUAL_DISK_ID, LOGICAL_SECTOR_SIZE, PHYSICAL_SECTOR_SIZE, PARENT_LOCATOR];
        if !known.contains(&id) && flags & 4 != 0 {
            return Err(format!("metadata item {} is required but unknown to this reader", super::bytes::guid_to_string(&id)));
        }
        items.push((id, &m[off as usize..(off + len) as usize]));
    }
    let item = |id: Guid, name: &str, min: usize| -> Result<&[u8], String> {
        let it = items.iter().find(|(g, _)| *g == id).ok_or_else(|| format!("metadata: required item {name} is missing"))?;
        if it.1.len() < min {
            return Err(format!("metadata: item {name} is {} bytes, expected at least {min}", it.1.len()));
        }
        Ok(it.1)
    };
    let fp = item(FILE_PARAMETERS, "File Parameters", 8)?;
    let block_size = le32(fp, 0) as u64;
    let flags = le32(fp, 4);
    if !block_size.is_power_of_two() || !(MIB..=256 * MIB).contains(&block_size) {
        return Err(format!("metadata: block size {block_size} is not a power of two between 1 MiB and 256 MiB"));
    }
    let virtual_size = le64(item(VIRTUAL_DISK_SIZE, "Virtual Disk Size", 8)?, 0);
    let logical_sector = le32(item(LOGICAL_SECTOR_SIZE, "Logical Sector Size", 4)?, 0) as u64;
    let physical_sector = le32(item(PHYSICAL_SECTOR_SIZE, "Physical Sector Size", 4)?, 0) as u64;
    let disk_id: Guid = item(VIRTUAL_DISK_ID, "Virtual Disk ID", 16)?[..16].try_into().unwrap();
    if logical_sector != 512 && logical_sector != 4096 {
        return Err(format!("metadata: logical sector size {logical_sector} (must be 512 or 4096)"));
    }
    if physical_sector != 512 && physical_sector != 4096 {
        return Err(format!("metadata: physical sector size {physical_sector} (must be 512 or 4096)"));
    }
    if virtual_size > MAX_VIRTUAL_SIZE || virtual_size % logical_sector != 0 {
        return Err(format!(
            "metadata: virtual size {virtual_size} bytes is not a multiple of the {logical_sector}-byte sector or exceeds the VHDX maximum of 64 TiB"
        ));
    }
    let has_parent = flags & 2 != 0;
    let parent = if has_parent { Some(parse_locator(item(PARENT_LOCATOR, "Parent Locator", 20)?)?) } else { None };
    Ok(Metadata { block_size, leave_allocated: flags & 1 != 0, has_parent, virtual_size, logical_sector, physical_sector, disk_id, parent })
}

fn parse_locator(l: &[u8]) -> Result<ParentRef, String> {
    if l[..16] != PARENT_LOCATOR_TYPE {
        return Err(format!("parent locator: unknown locator type {}", super::bytes::guid_to_string(&l[..16].try_into().unwrap())));
    }
    let count = le16(l, 18) as usize;
    if 20 + 12 * count > l.len() {
        return Err(format!("parent locator: {count} entries do not fit in {} bytes", l.len()));
    }
    let mut kv = Vec::new();
    for i in 0..count {
        let e = &l[20 + 12 * i..32 + 12 * i];
        let (ko, vo, kl, vl) = (le32(e, 0) as usize, le32(e, 4) as usize, le16(e, 8) as usize, le16(e, 10) as usize);
        if ko + kl > l.len() || vo + vl > l.len() {
            return Err(format!("parent locator entry {i}: key or value lies outside the locator"));
        }
        kv.push((utf16le_decode(&l[ko..ko + kl]), utf16le_decode(&l[vo..vo + vl])));
    }
    let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let linkage = get("parent_linkage").ok_or("parent locator: no parent_linkage entry")?;
    let id = parse_guid(&linkage).ok_or_else(|| format!("parent locator: parent_linkage {linkage:?} is not a GUID"))?;
    let locators: Vec<String> = ["relative_path", "absolute_win32_path", "volume_path"].iter().filter_map(|k| get(k)).collect();
    if locators.is_empty() {
        return Err("parent locator: no relative_path, absolute_win32_path or volume_path entry".into());
    }
    Ok(ParentRef { id, timestamp: None, locators })
}

/// A log with entries for the current log GUID means writes were not checkpointed.
fn check_log(b: &[u8], h: &Header) -> Result<(), String> {
    if h.log_guid == NIL_GUID {
        return Ok(());
    }
    let (off, len) = (h.log_offset, h.log_length as u64);
    if off % MIB != 0 || len % MIB != 0 || off < MIB || off.checked_add(len).is_none_or(|e| e > b.len() as u64) {
        return Err(format!("header: log of {len} bytes at {off:#x} is misaligned or outside the file"));
    }
    let mut pos = off;
    while pos < off + len {
        let e = &b[pos as usize..pos as usize + 64];
        if &e[..4] == b"loge" && e[32..48] == h.log_guid {
            return Err(format!(
                "the log holds entries (log GUID {}): the image was not closed cleanly and replaying it is required before it can be served; run `qemu-img check -r all FILE` or attach it once in Hyper-V",
                super::bytes::guid_to_string(&h.log_guid)
            ));
        }
        pos += 4096;
    }
    Ok(())
}

pub(crate) fn parse(b: &[u8]) -> Result<Parsed, String> {
    let len = b.len() as u64;
    if len < REGION_OFFSETS[1] + REGION_LEN as u64 {
        return Err(format!("file is {len} bytes, shorter than the 320 KiB of VHDX headers and region tables: truncated"));
    }
    let mut problems = Vec::new();
    let header = current_header(b, &mut problems)?;
    check_log(b, &header)?;
    let mut regions = None;
    for (i, &off) in REGION_OFFSETS.iter().enumerate() {
        match parse_region_table(&b[off as usize..off as usize + REGION_LEN]) {
            Ok(r) if regions.is_none() => regions = Some(r),
            Ok(_) => {}
            Err(e) if i == 0 => problems.push(format!("region table 1 at {off:#x}: {e}")),
            Err(e) if regions.is_none() => return Err(format!("both region tables are invalid; table 2 at {off:#x}: {e}")),
            Err(e) => problems.push(format!("region table 2 at {off:#x}: {e}")),
        }
    }
    let regions = regions.expect("either table parsed or we returned");
    let mut bat = None;
    let mut meta = None;
    for r in &regions {
        if r.offset < MIB
            || r.offset % MIB != 0
            || r.length % MIB != 0
            || r.length == 0
            || r.offset.checked_add(r.length).is_none_or(|e| e > len)
        {
            return Err(format!(
                "region {}: {} bytes at {:#x} must be MiB-aligned, non-empty and inside the file ({len} bytes)",
                super::bytes::guid_to_string(&r.guid),
                r.length,
                r.offset
            ));
        }
        if r.guid == BAT_GUID {
            bat = Some(*r);
        } else if r.guid == METADATA_GUID {
            meta = Some(*r);
        } else if r.required {
            return Err(format!("region {} is required but unknown to this reader", super::bytes::guid_to_string(&r.guid)));
        }
    }
    let bat = bat.ok_or("region table: no BAT region")?;
    let meta_r = meta.ok_or("region table: no metadata region")?;
    if bat.offset < meta_r.offset + meta_r.length && meta_r.offset < bat.offset + bat.length {
        return Err(format!("BAT region at {:#x} overlaps the metadata region at {:#x}", bat.offset, meta_r.offset));
    }
    let m = parse_metadata(b, meta_r)?;
    let chunk_ratio = ((1u64 << 23) * m.logical_sector) / m.block_size;
    let data_blocks = m.virtual_size.div_ceil(m.block_size);
    let entries = if m.has_parent {
        data_blocks.div_ceil(chunk_ratio) * (chunk_ratio + 1)
    } else if data_blocks == 0 {
        0
    } else {
        data_blocks + (data_blocks - 1) / chunk_ratio
    };
    if entries * 8 > bat.length {
        return Err(format!(
            "BAT region holds {} entries but a {}-byte disk with {}-byte blocks needs {entries}",
            bat.length / 8,
            m.virtual_size,
            m.block_size
        ));
    }
    let map = VhdxMap {
        bat_off: bat.offset,
        block_size: m.block_size,
        chunk_ratio,
        logical_sector: m.logical_sector,
        data_blocks,
        has_parent: m.has_parent,
        virtual_size: m.virtual_size,
    };
    // Every entry is checked once here so that lookups never need to.
    let mut metadata = vec![(0, MIB), (bat.offset, bat.length), (meta_r.offset, meta_r.length)];
    if header.log_length > 0 {
        metadata.push((header.log_offset, header.log_length as u64));
    }
    let check_span = |what: &str, start: u64, extent: u64| -> Result<(), String> {
        if start.checked_add(extent).is_none_or(|e| e > len) {
            return Err(format!("{what}: file offset {start:#x} + {extent} bytes lies past the end of the file ({len} bytes)"));
        }
        if let Some((s, _)) = metadata.iter().find(|(s, l)| start < s + l && *s < start + extent) {
            return Err(format!("{what}: file offset {start:#x} overlaps the image metadata at {s:#x}"));
        }
        Ok(())
    };
    for i in 0..data_blocks {
        let e = map.entry(b, map.payload_index(i));
        let state = e & 7;
        let what = || format!("BAT entry for block {i}");
        match state {
            PAYLOAD_NOT_PRESENT | PAYLOAD_UNDEFINED | PAYLOAD_ZERO | PAYLOAD_UNMAPPED => {}
            PAYLOAD_FULLY_PRESENT => check_span(&what(), e & !(MIB - 1), m.block_size.min(m.virtual_size - i * m.block_size))?,
            PAYLOAD_PARTIALLY_PRESENT if m.has_parent => {
                check_span(&what(), e & !(MIB - 1), m.block_size.min(m.virtual_size - i * m.block_size))?;
                let c = i / chunk_ratio;
                let sb = map.entry(b, map.bitmap_index(c));
                if sb & 7 != SB_BLOCK_PRESENT {
                    return Err(format!("block {i} is partially present but the sector bitmap block of chunk {c} is not"));
                }
                check_span(&format!("sector bitmap block {c}"), sb & !(MIB - 1), MIB)?;
            }
            s => return Err(format!("{}: invalid payload state {s}", what())),
        }
    }
    let format = if m.has_parent {
        Format::VhdxDifferencing
    } else if m.leave_allocated {
        Format::VhdxFixed
    } else {
        Format::VhdxDynamic
    };
    Ok(Parsed {
        format,
        virtual_size: m.virtual_size,
        block_size: m.block_size,
        logical_sector: m.logical_sector as u32,
        physical_sector: m.physical_sector as u32,
        id: header.data_write_guid,
        disk_id: m.disk_id,
        timestamp: 0,
        parent: m.parent,
        problems,
        map: Map::Vhdx(map),
    })
}
