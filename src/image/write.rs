//! Writing images that are not being served: new dynamic images, new differencing versions
//! (`vdisk new-version`), sector-aligned writes into a version (`vdisk write`, private mode
//! later), flattening a chain (`vdisk merge`) and exporting it raw (`vdisk export`).
//! Order of writes on allocation: file extended and trailer rewritten first, then data, then
//! bitmap, then the table entry, so a crash leaves an unreferenced block rather than a torn one.

use super::bytes::{self, put_be32, put_be64, put_le16, put_le32, put_le64, Guid};
use super::vhd::{self, Footer};
use super::vhdx::{self, MIB};
use super::{Chain, ImageError, Layer, Segment};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

fn io<'a>(path: &'a Path, what: &str) -> impl Fn(std::io::Error) -> ImageError + 'a {
    let what = what.to_string();
    move |e| ImageError::new(path, format!("{what}: {e}"))
}

fn now_vhd_timestamp() -> u32 {
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    unix.saturating_sub(vhd::VHD_EPOCH_UNIX) as u32
}

/// Creates a file that must not exist yet (never clobber a version somebody serves).
fn create_new(path: &Path) -> Result<File, ImageError> {
    OpenOptions::new().read(true).write(true).create_new(true).open(path).map_err(io(path, "cannot create"))
}

/// What a new differencing image needs to know about its parent.
pub struct ParentInfo {
    pub path: PathBuf,
    pub id: Guid,
    pub timestamp: u32,
}

impl ParentInfo {
    pub fn of(layer: &Layer) -> ParentInfo {
        ParentInfo { path: layer.path.clone(), id: layer.id, timestamp: layer.timestamp }
    }
    fn file_name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
    fn absolute(&self) -> String {
        std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone()).to_string_lossy().into_owned()
    }
}

/// A new, empty dynamic VHD (or a differencing one when `parent` is given).
pub fn create_vhd(path: &Path, size: u64, block_size: u64, parent: Option<&ParentInfo>) -> Result<(), ImageError> {
    if size % 512 != 0 || size > vhd::MAX_VIRTUAL_SIZE {
        return Err(ImageError::new(path, format!("VHD size {size} must be a multiple of 512 and at most 2040 GiB")));
    }
    if !block_size.is_power_of_two() || !(512..=256 * MIB).contains(&block_size) {
        return Err(ImageError::new(path, format!("VHD block size {block_size} must be a power of two between 512 B and 256 MiB")));
    }
    let entries = size.div_ceil(block_size);
    let bat_off = 1536u64;
    let bat_bytes = (entries * 4).next_multiple_of(512);
    let mut tail = bat_off + bat_bytes;
    let mut header = [0u8; vhd::HEADER_LEN];
    header[..8].copy_from_slice(vhd::HEADER_COOKIE);
    put_be64(&mut header, 8, u64::MAX);
    put_be64(&mut header, 16, bat_off);
    put_be32(&mut header, 24, 0x0001_0000);
    put_be32(&mut header, 28, entries as u32);
    put_be32(&mut header, 32, block_size as u32);
    let mut locator_data: Vec<(u64, Vec<u8>)> = Vec::new();
    if let Some(p) = parent {
        header[40..56].copy_from_slice(&p.id);
        put_be32(&mut header, 56, p.timestamp);
        let name = bytes::utf16be_encode(&p.file_name());
        let n = name.len().min(512);
        header[64..64 + n].copy_from_slice(&name[..n]);
        let locators = [(vhd::PLATFORM_W2RU, format!(".\\{}", p.file_name())), (vhd::PLATFORM_W2KU, p.absolute())];
        for (k, (code, text)) in locators.iter().enumerate() {
            let data = bytes::utf16le_encode(text);
            let space = (data.len() as u64).next_multiple_of(512);
            let e = 576 + 24 * k;
            put_be32(&mut header, e, *code);
            put_be32(&mut header, e + 4, (space / 512) as u32);
            put_be32(&mut header, e + 8, data.len() as u32);
            put_be64(&mut header, e + 16, tail);
            locator_data.push((tail, data));
            tail += space;
        }
    }
    let c = bytes::vhd_checksum(&header, 36);
    put_be32(&mut header, 36, c);
    let footer = Footer {
        features: 2,
        version: 0x0001_0000,
        data_offset: 512,
        timestamp: now_vhd_timestamp(),
        // The creator code doubles as a size-semantics flag: qemu before 10.0 (still Debian
        // bookworm's) sizes a VHD by its CHS geometry unless the creator is one of "win ",
        // "qem2", "d2v ", "CTXS", "tap\0". Our disks are sized by current_size, as Hyper-V's
        // are, so they carry Hyper-V's code; any other code would shrink them in those readers.
        creator_app: *b"win ",
        creator_version: 0x0001_0000,
        creator_os: u32::from_be_bytes(*b"Wi2k"),
        original_size: size,
        current_size: size,
        geometry: vhd::chs_geometry(size),
        disk_type: if parent.is_some() { vhd::TYPE_DIFFERENCING } else { vhd::TYPE_DYNAMIC },
        unique_id: bytes::random_guid().map_err(io(path, "cannot get random bytes"))?,
        saved_state: 0,
    }
    .emit();
    let f = create_new(path)?;
    let w = |off: u64, data: &[u8]| f.write_all_at(data, off).map_err(io(path, "write failed"));
    w(0, &footer)?;
    w(512, &header)?;
    w(bat_off, &vec![0xFF; bat_bytes as usize])?;
    for (off, data) in &locator_data {
        w(*off, data)?;
    }
    f.set_len(tail).map_err(io(path, "cannot size"))?;
    w(tail, &footer)?;
    f.sync_all().map_err(io(path, "fsync failed"))
}

/// Layout of the VHDX files bootfarm writes: log at 1 MiB, metadata at 2 MiB, BAT at 3 MiB.
const LOG_OFF: u64 = MIB;
const META_OFF: u64 = 2 * MIB;
const BAT_OFF: u64 = 3 * MIB;

fn vhdx_header(seq: u64, file_write: Guid, data_write: Guid) -> [u8; vhdx::HEADER_LEN] {
    let mut h = [0u8; vhdx::HEADER_LEN];
    h[..4].copy_from_slice(b"head");
    put_le64(&mut h, 8, seq);
    h[16..32].copy_from_slice(&file_write);
    h[32..48].copy_from_slice(&data_write);
    put_le16(&mut h, 64, 0);
    put_le16(&mut h, 66, 1);
    put_le32(&mut h, 68, MIB as u32);
    put_le64(&mut h, 72, LOG_OFF);
    let c = bytes::crc32c_zeroed(&h, 4);
    put_le32(&mut h, 4, c);
    h
}

fn vhdx_locator(p: &ParentInfo) -> Vec<u8> {
    let pairs = [
        ("parent_linkage", format!("{{{}}}", bytes::guid_to_string(&p.id))),
        ("relative_path", format!(".\\{}", p.file_name())),
        ("absolute_win32_path", p.absolute()),
    ];
    let mut l = vec![0u8; 20 + 12 * pairs.len()];
    l[..16].copy_from_slice(&vhdx::PARENT_LOCATOR_TYPE);
    put_le16(&mut l, 18, pairs.len() as u16);
    for (i, (k, v)) in pairs.iter().enumerate() {
        let (kb, vb) = (bytes::utf16le_encode(k), bytes::utf16le_encode(v));
        let e = 20 + 12 * i;
        let ko = l.len();
        l.extend_from_slice(&kb);
        let vo = l.len();
        l.extend_from_slice(&vb);
        put_le32(&mut l, e, ko as u32);
        put_le32(&mut l, e + 4, vo as u32);
        put_le16(&mut l, e + 8, kb.len() as u16);
        put_le16(&mut l, e + 10, vb.len() as u16);
    }
    l
}

/// A new, empty dynamic VHDX (or a differencing one when `parent` is given).
pub fn create_vhdx(path: &Path, size: u64, block_size: u64, logical_sector: u32, parent: Option<&ParentInfo>) -> Result<(), ImageError> {
    let lss = logical_sector as u64;
    if lss != 512 && lss != 4096 {
        return Err(ImageError::new(path, format!("logical sector size {lss} must be 512 or 4096")));
    }
    if size == 0 || size % lss != 0 || size > vhdx::MAX_VIRTUAL_SIZE {
        return Err(ImageError::new(path, format!("VHDX size {size} must be a non-zero multiple of {lss} and at most 64 TiB")));
    }
    if !block_size.is_power_of_two() || !(MIB..=256 * MIB).contains(&block_size) {
        return Err(ImageError::new(path, format!("VHDX block size {block_size} must be a power of two between 1 MiB and 256 MiB")));
    }
    let chunk_ratio = ((1u64 << 23) * lss) / block_size;
    let blocks = size.div_ceil(block_size);
    let entries = if parent.is_some() { blocks.div_ceil(chunk_ratio) * (chunk_ratio + 1) } else { blocks + (blocks - 1) / chunk_ratio };
    let bat_len = (entries * 8).next_multiple_of(MIB);

    let mut ident = vec![0u8; 64 * 1024];
    ident[..8].copy_from_slice(vhdx::FILE_SIGNATURE);
    let creator = bytes::utf16le_encode(concat!("bootfarm ", env!("CARGO_PKG_VERSION")));
    ident[8..8 + creator.len()].copy_from_slice(&creator);

    let mut regions = vec![0u8; vhdx::REGION_LEN];
    regions[..4].copy_from_slice(b"regi");
    put_le32(&mut regions, 8, 2);
    for (i, (g, off, len)) in [(vhdx::BAT_GUID, BAT_OFF, bat_len), (vhdx::METADATA_GUID, META_OFF, MIB)].iter().enumerate() {
        let e = 16 + 32 * i;
        regions[e..e + 16].copy_from_slice(g);
        put_le64(&mut regions, e + 16, *off);
        put_le32(&mut regions, e + 24, *len as u32);
        put_le32(&mut regions, e + 28, 1);
    }
    let c = bytes::crc32c_zeroed(&regions, 4);
    put_le32(&mut regions, 4, c);

    let random = || bytes::random_guid().map_err(io(path, "cannot get random bytes"));
    let disk_id = random()?;
    let mut items: Vec<(Guid, Vec<u8>, u32)> = vec![
        (vhdx::FILE_PARAMETERS, [(block_size as u32).to_le_bytes(), (if parent.is_some() { 2u32 } else { 0 }).to_le_bytes()].concat(), 4),
        (vhdx::VIRTUAL_DISK_SIZE, size.to_le_bytes().to_vec(), 6),
        (vhdx::VIRTUAL_DISK_ID, disk_id.to_vec(), 6),
        (vhdx::LOGICAL_SECTOR_SIZE, logical_sector.to_le_bytes().to_vec(), 6),
        (vhdx::PHYSICAL_SECTOR_SIZE, 4096u32.to_le_bytes().to_vec(), 6),
    ];
    if let Some(p) = parent {
        items.push((vhdx::PARENT_LOCATOR, vhdx_locator(p), 4));
    }
    let mut meta = vec![0u8; MIB as usize];
    meta[..8].copy_from_slice(b"metadata");
    put_le16(&mut meta, 10, items.len() as u16);
    let mut at = 64 * 1024usize;
    for (i, (g, data, flags)) in items.iter().enumerate() {
        let e = 32 + 32 * i;
        meta[e..e + 16].copy_from_slice(g);
        put_le32(&mut meta, e + 16, at as u32);
        put_le32(&mut meta, e + 20, data.len() as u32);
        put_le32(&mut meta, e + 24, *flags);
        meta[at..at + data.len()].copy_from_slice(data);
        at = (at + data.len()).next_multiple_of(8);
    }
    let (fw, dw) = (random()?, random()?);
    let f = create_new(path)?;
    let w = |off: u64, data: &[u8]| f.write_all_at(data, off).map_err(io(path, "write failed"));
    w(0, &ident)?;
    w(vhdx::HEADER_OFFSETS[0], &vhdx_header(1, fw, dw))?;
    w(vhdx::HEADER_OFFSETS[1], &vhdx_header(2, fw, dw))?;
    w(vhdx::REGION_OFFSETS[0], &regions)?;
    w(vhdx::REGION_OFFSETS[1], &regions)?;
    w(META_OFF, &meta)?;
    f.set_len(BAT_OFF + bat_len).map_err(io(path, "cannot size"))?;
    f.sync_all().map_err(io(path, "fsync failed"))
}

/// `vdisk new-version`: an empty differencing child of `parent` in the parent's family. The
/// parent's whole chain is opened first, so a broken chain never gets a new version.
pub fn new_version(parent: &Path, child: &Path, limits: super::ChainLimits) -> Result<(), ImageError> {
    Chain::open(parent, limits)?;
    new_version_of(parent, child)
}

/// An empty differencing child of one image (its own parents are not checked).
pub fn new_version_of(parent: &Path, child: &Path) -> Result<(), ImageError> {
    let top = Layer::open(parent)?;
    let info = ParentInfo::of(&top);
    if top.format.is_vhdx() {
        create_vhdx(child, top.virtual_size, top.block_size, top.logical_sector, Some(&info))
    } else if top.format.is_vhd() {
        create_vhd(child, top.virtual_size, if top.block_size > 0 { top.block_size } else { 2 * MIB }, Some(&info))
    } else {
        Err(ImageError::new(
            parent,
            "a raw image has no identity a differencing child could refer to: convert it to VHDX first (`vdisk merge RAW -o BASE.vhdx`)",
        ))
    }
}

enum Kind {
    Raw,
    Vhd { bat_off: u64, block_size: u64, bitmap_bytes: u64, differencing: bool },
    Vhdx { bat_off: u64, block_size: u64, chunk_ratio: u64, differencing: bool, slot: usize, sequence: u64 },
}

/// Sector-aligned writes into one image file that nobody is serving.
pub struct Writer {
    file: File,
    path: PathBuf,
    kind: Kind,
    /// VHD: where the footer sits (new blocks go there); VHDX: the MiB-aligned end of the file.
    eof: u64,
    /// VHDX: the header was already renewed in this session.
    bumped: bool,
    /// Differencing VHD: the parents, read to complete 8-sector groups (see `write_block`).
    parents: Option<Chain>,
    pub virtual_size: u64,
    pub logical_sector: u64,
}

impl Writer {
    pub fn open(path: &Path) -> Result<Writer, ImageError> {
        let layer = Layer::open(path)?;
        let (kind, eof) = match &layer.map {
            // Raw and fixed VHD: data at offset 0; a fixed VHD's footer is never touched.
            super::Map::Flat { .. } => (Kind::Raw, layer.file_len()),
            super::Map::Vhd(m) => (
                Kind::Vhd { bat_off: m.bat_off, block_size: m.block_size, bitmap_bytes: m.bitmap_bytes, differencing: m.differencing },
                layer.file_len() - vhd::FOOTER_LEN as u64,
            ),
            super::Map::Vhdx(m) => {
                let h = vhdx::current_header(layer.bytes(), &mut Vec::new()).map_err(|e| ImageError::new(path, e))?;
                (
                    Kind::Vhdx {
                        bat_off: m.bat_off,
                        block_size: m.block_size,
                        chunk_ratio: m.chunk_ratio,
                        differencing: m.has_parent,
                        slot: h.slot,
                        sequence: h.sequence,
                    },
                    layer.file_len().next_multiple_of(MIB),
                )
            }
        };
        let (virtual_size, logical_sector) = (layer.virtual_size, layer.logical_sector as u64);
        let parents = match kind {
            Kind::Vhd { differencing: true, .. } => {
                drop(layer);
                let mut chain = Chain::open(path, super::ChainLimits::default())?;
                let below = chain.layers.split_off(1);
                Some(Chain::from_layers(below)?)
            }
            _ => None,
        };
        // The image itself is unmapped before the first write.
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(io(path, "cannot open for writing"))?;
        Ok(Writer { file, path: path.to_path_buf(), kind, eof, bumped: false, parents, virtual_size, logical_sector })
    }

    /// Writes `data` at virtual offset `off`; both must be multiples of the logical sector size.
    pub fn write(&mut self, off: u64, data: &[u8]) -> Result<(), ImageError> {
        let len = data.len() as u64;
        if off % self.logical_sector != 0 || len % self.logical_sector != 0 {
            return Err(ImageError::new(
                &self.path,
                format!("write of {len} bytes at {off} is not aligned to the {}-byte sector", self.logical_sector),
            ));
        }
        if off.checked_add(len).is_none_or(|e| e > self.virtual_size) {
            return Err(ImageError::new(
                &self.path,
                format!("write of {len} bytes at {off} goes past the end of the {}-byte disk", self.virtual_size),
            ));
        }
        let block_size = match self.kind {
            Kind::Raw => return self.file.write_all_at(data, off).map_err(io(&self.path, "write failed")),
            Kind::Vhd { block_size, .. } | Kind::Vhdx { block_size, .. } => block_size,
        };
        let mut done = 0u64;
        while done < len {
            let at = off + done;
            let n = (block_size - at % block_size).min(len - done);
            self.write_block(at / block_size, at % block_size, &data[done as usize..(done + n) as usize])?;
            done += n;
        }
        Ok(())
    }

    fn pread(&self, off: u64, n: usize) -> Result<Vec<u8>, ImageError> {
        let mut b = vec![0u8; n];
        self.file.read_exact_at(&mut b, off).map_err(io(&self.path, "read failed"))?;
        Ok(b)
    }
    fn pwrite(&self, off: u64, data: &[u8]) -> Result<(), ImageError> {
        self.file.write_all_at(data, off).map_err(io(&self.path, "write failed"))
    }

    fn read_u32_be(&self, off: u64) -> Result<u32, ImageError> {
        Ok(u32::from_be_bytes(self.pread(off, 4)?.try_into().unwrap()))
    }
    fn read_u64_le(&self, off: u64) -> Result<u64, ImageError> {
        Ok(u64::from_le_bytes(self.pread(off, 8)?.try_into().unwrap()))
    }
    fn extend(&mut self, by: u64) -> Result<u64, ImageError> {
        let start = self.eof;
        self.eof += by;
        self.file.set_len(self.eof).map_err(io(&self.path, "cannot extend"))?;
        Ok(start)
    }

    fn write_block(&mut self, block: u64, in_block: u64, data: &[u8]) -> Result<(), ImageError> {
        let len = data.len() as u64;
        match self.kind {
            Kind::Raw => unreachable!("raw writes never reach block handling"),
            Kind::Vhd { bat_off, block_size, bitmap_bytes, differencing } => {
                let eoff = bat_off + 4 * block;
                let e = self.read_u32_be(eoff)?;
                let grown;
                let (in_block, data) = if differencing {
                    grown = self.complete_groups(block, in_block, data, e, block_size, bitmap_bytes)?;
                    (grown.0, &grown.1[..])
                } else {
                    (in_block, data)
                };
                let len = data.len() as u64;
                let start = if e == vhd::BAT_ABSENT {
                    // The footer moves to the new end first; then data, bitmap, BAT entry.
                    let footer = self.pread(self.eof, vhd::FOOTER_LEN)?;
                    let start = self.eof;
                    self.eof += bitmap_bytes + block_size;
                    self.file.set_len(self.eof + vhd::FOOTER_LEN as u64).map_err(io(&self.path, "cannot extend"))?;
                    self.pwrite(self.eof, &footer)?;
                    let mut bitmap = vec![0u8; bitmap_bytes as usize];
                    if !differencing {
                        // A dynamic disk's block is defined whole (zero-filled), as qemu writes it.
                        bitmap[..(block_size / 512).div_ceil(8) as usize].fill(0xFF);
                    }
                    self.pwrite(start, &bitmap)?;
                    self.pwrite(start + bitmap_bytes + in_block, data)?;
                    self.set_vhd_bits(start, in_block, len, differencing)?;
                    return self.pwrite(eoff, &((start / 512) as u32).to_be_bytes());
                } else {
                    e as u64 * 512
                };
                self.pwrite(start + bitmap_bytes + in_block, data)?;
                self.set_vhd_bits(start, in_block, len, differencing)
            }
            Kind::Vhdx { bat_off, block_size, chunk_ratio, differencing, .. } => {
                self.bump_vhdx_header()?;
                let eoff = bat_off + 8 * (block + block / chunk_ratio);
                let e = self.read_u64_le(eoff)?;
                let state = e & 7;
                if matches!(state, vhdx::PAYLOAD_FULLY_PRESENT | vhdx::PAYLOAD_PARTIALLY_PRESENT) {
                    self.pwrite((e & !(MIB - 1)) + in_block, data)?;
                    if state == vhdx::PAYLOAD_PARTIALLY_PRESENT {
                        self.set_vhdx_bits(block, in_block, len)?;
                    }
                    return Ok(());
                }
                // Without a parent, or over a block defined as zeros, the rest of a fresh
                // (zero-filled) block is already right: fully present. Otherwise the untouched
                // sectors must still come from the parent: partially present.
                let partial = differencing && matches!(state, vhdx::PAYLOAD_NOT_PRESENT | vhdx::PAYLOAD_UNDEFINED);
                let start = self.extend(block_size)?;
                if partial {
                    let sidx = (block / chunk_ratio) * (chunk_ratio + 1) + chunk_ratio;
                    if self.read_u64_le(bat_off + 8 * sidx)? & 7 != vhdx::SB_BLOCK_PRESENT {
                        let sb = self.extend(MIB)?;
                        self.pwrite(bat_off + 8 * sidx, &(sb | vhdx::SB_BLOCK_PRESENT).to_le_bytes())?;
                    }
                }
                self.pwrite(start + in_block, data)?;
                let state = if partial {
                    self.set_vhdx_bits(block, in_block, len)?;
                    vhdx::PAYLOAD_PARTIALLY_PRESENT
                } else {
                    vhdx::PAYLOAD_FULLY_PRESENT
                };
                self.pwrite(eoff, &(start | state).to_le_bytes())
            }
        }
    }

    /// Widens a write into a differencing VHD to whole 8-sector groups (one bitmap byte each),
    /// filling the added sectors with what the disk reads there now (this image's sector where
    /// its bit is set, otherwise the parents'). Bitmap bytes then stay 0x00 or 0xFF, which every
    /// reader interprets alike: python3-libvhdi, for one, treats a bitmap byte as all-or-nothing.
    fn complete_groups(
        &self,
        block: u64,
        in_block: u64,
        data: &[u8],
        entry: u32,
        block_size: u64,
        bitmap_bytes: u64,
    ) -> Result<(u64, Vec<u8>), ImageError> {
        let block_start = block * block_size;
        let block_end = block_size.min(self.virtual_size - block_start);
        let g0 = in_block & !4095;
        let g1 = (in_block + data.len() as u64).next_multiple_of(4096).min(block_end);
        let mut buf = vec![0u8; (g1 - g0) as usize];
        let bitmap = if entry != vhd::BAT_ABSENT { Some(self.pread(entry as u64 * 512, bitmap_bytes as usize)?) } else { None };
        let parents = self.parents.as_ref().expect("differencing writers have their parents");
        let mut s = g0;
        while s < g1 {
            let inside = s >= in_block && s < in_block + data.len() as u64;
            let dst = &mut buf[(s - g0) as usize..(s - g0 + 512) as usize];
            if inside {
                dst.copy_from_slice(&data[(s - in_block) as usize..(s - in_block + 512) as usize]);
            } else if bitmap.as_ref().is_some_and(|bm| bytes::bit_run(bm, s / 512, 1, true).0) {
                self.file.read_exact_at(dst, entry as u64 * 512 + bitmap_bytes + s).map_err(io(&self.path, "read failed"))?;
            } else {
                parents.read_into(block_start + s, dst).map_err(|e| ImageError::new(&self.path, e.to_string()))?;
            }
            s += 512;
        }
        Ok((g0, buf))
    }

    fn set_vhd_bits(&self, start: u64, in_block: u64, len: u64, differencing: bool) -> Result<(), ImageError> {
        if !differencing {
            return Ok(());
        }
        let (first, count) = (in_block / 512, len / 512);
        let (b0, b1) = (first / 8, (first + count).div_ceil(8));
        let mut bm = self.pread(start + b0, (b1 - b0) as usize)?;
        bytes::set_bits(&mut bm, first - b0 * 8, count, true);
        self.pwrite(start + b0, &bm)
    }

    fn set_vhdx_bits(&self, block: u64, in_block: u64, len: u64) -> Result<(), ImageError> {
        let Kind::Vhdx { bat_off, block_size, chunk_ratio, .. } = self.kind else { unreachable!() };
        let lss = self.logical_sector;
        let sidx = (block / chunk_ratio) * (chunk_ratio + 1) + chunk_ratio;
        let sb = self.read_u64_le(bat_off + 8 * sidx)? & !(MIB - 1);
        let first = (block % chunk_ratio) * (block_size / lss) + in_block / lss;
        let count = len / lss;
        let (b0, b1) = (first / 8, (first + count).div_ceil(8));
        let mut bm = self.pread(sb + b0, (b1 - b0) as usize)?;
        bytes::set_bits(&mut bm, first - b0 * 8, count, false);
        self.pwrite(sb + b0, &bm)
    }

    /// Before the first change of user data, [MS-VHDX] asks for new FileWrite/DataWrite GUIDs in a
    /// new header (written into the older slot, so one valid header always survives a crash).
    fn bump_vhdx_header(&mut self) -> Result<(), ImageError> {
        let Kind::Vhdx { slot, sequence, .. } = self.kind else { return Ok(()) };
        if self.bumped {
            return Ok(());
        }
        let random = || bytes::random_guid().map_err(io(&self.path, "cannot get random bytes"));
        let mut h = self.pread(vhdx::HEADER_OFFSETS[slot], vhdx::HEADER_LEN)?;
        put_le64(&mut h, 8, sequence + 1);
        h[16..32].copy_from_slice(&random()?);
        h[32..48].copy_from_slice(&random()?);
        put_le32(&mut h, 4, 0);
        let c = bytes::crc32c_zeroed(&h, 4);
        put_le32(&mut h, 4, c);
        let other = vhdx::HEADER_OFFSETS[1 - slot];
        self.bumped = true;
        self.file.write_all_at(&h, other).map_err(io(&self.path, "header write failed"))
    }

    pub fn finish(mut self) -> Result<(), ImageError> {
        self.sync()
    }

    /// Makes everything written so far durable (NBD FLUSH and FUA in private mode).
    pub fn sync(&mut self) -> Result<(), ImageError> {
        self.file.sync_all().map_err(io(&self.path, "fsync failed"))
    }
}

/// `vdisk merge`: the chain's content as one standalone image. The output format follows the
/// extension (.vhdx, .vhd, anything else raw); only blocks holding non-zero data are written.
/// The result is written beside `out` and renamed into place when complete.
pub fn merge(chain: &Chain, out: &Path) -> Result<(), ImageError> {
    if out.exists() {
        return Err(ImageError::new(out, "already exists; choose a new name (versions are never overwritten)"));
    }
    let tmp = out.with_extension(format!("{}.partial", out.extension().and_then(|e| e.to_str()).unwrap_or("raw")));
    let _ = std::fs::remove_file(&tmp);
    let result = merge_into(chain, out, &tmp);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    std::fs::rename(&tmp, out).map_err(io(out, "cannot rename into place"))
}

fn merge_into(chain: &Chain, out: &Path, tmp: &Path) -> Result<(), ImageError> {
    let size = chain.virtual_size();
    for l in &chain.layers {
        l.advise_sequential();
    }
    let ext = out.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).unwrap_or_default();
    let vhdx_block = chain.layers.iter().find(|l| l.format.is_vhdx()).map(|l| l.block_size).unwrap_or(32 * MIB);
    let (unit, mut writer): (u64, Option<Writer>) = match ext.as_str() {
        "vhdx" => {
            create_vhdx(tmp, size, vhdx_block, chain.top().logical_sector, None)?;
            (vhdx_block, Some(Writer::open(tmp)?))
        }
        "vhd" => {
            create_vhd(tmp, size, 2 * MIB, None)?;
            (2 * MIB, Some(Writer::open(tmp)?))
        }
        _ => {
            create_new(tmp)?.set_len(size).map_err(io(tmp, "cannot size"))?;
            (MIB, None)
        }
    };
    let raw = if writer.is_none() { Some(OpenOptions::new().write(true).open(tmp).map_err(io(tmp, "cannot open"))?) } else { None };
    let mut buf = vec![0u8; unit as usize];
    let mut off = 0;
    while off < size {
        let n = unit.min(size - off);
        let mut any_data = false;
        chain.read(off, n, &mut |s| any_data |= matches!(s, Segment::Data(_))).expect("inside the disk");
        if any_data {
            let b = &mut buf[..n as usize];
            chain.read_into(off, b).expect("inside the disk");
            if b.iter().any(|&x| x != 0) {
                match (&mut writer, &raw) {
                    (Some(w), _) => w.write(off, b)?,
                    (None, Some(f)) => f.write_all_at(b, off).map_err(io(tmp, "write failed"))?,
                    (None, None) => unreachable!(),
                }
            }
        }
        off += n;
    }
    match (writer, raw) {
        (Some(w), _) => w.finish(),
        (None, Some(f)) => f.sync_all().map_err(io(tmp, "fsync failed")),
        (None, None) => unreachable!(),
    }
}

/// `vdisk export`: the virtual disk as raw bytes. Into a regular file, extents are read in
/// parallel (one thread per core, pread from the image files) and written by one writer, and
/// zero runs — the unallocated ones and all-zero 4 KiB sectors inside allocated blocks — become
/// holes; into a pipe, bytes are written from the mappings in order.
pub fn export(chain: &Chain, out: &mut File, seekable: bool, path_for_errors: &Path) -> Result<u64, ImageError> {
    if seekable {
        return export_to_file(chain, out, path_for_errors);
    }
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let size = chain.virtual_size();
    for l in &chain.layers {
        l.advise_sequential();
    }
    let mut err: Option<std::io::Error> = None;
    let mut out_w = std::io::BufWriter::with_capacity(1 << 20, &mut *out);
    let mut pos = 0u64;
    let step = 64 * MIB;
    while pos < size && err.is_none() {
        let n = step.min(size - pos);
        chain
            .read(pos, n, &mut |s| {
                if err.is_some() {
                    return;
                }
                let r = match s {
                    Segment::Data(d) => out_w.write_all(d),
                    Segment::Zero(mut z) => loop {
                        if z == 0 {
                            break Ok(());
                        }
                        let k = z.min(ZEROS.len() as u64);
                        if let Err(e) = out_w.write_all(&ZEROS[..k as usize]) {
                            break Err(e);
                        }
                        z -= k;
                    },
                };
                if let Err(e) = r {
                    err = Some(e);
                }
            })
            .expect("inside the disk");
        pos += n;
    }
    if let Some(e) = err {
        return Err(ImageError::new(path_for_errors, format!("write failed: {e}")));
    }
    out_w.flush().map_err(io(path_for_errors, "write failed"))?;
    Ok(size)
}

const SECTOR: usize = 4096;

/// Bit i set: the i-th 4 KiB sector of `data` holds a non-zero byte (data up to 2 MiB).
fn nonzero_map(data: &[u8]) -> [u64; 8] {
    let mut map = [0u64; 8];
    for (i, c) in data.chunks(SECTOR).enumerate() {
        let (words, tail) = c.split_at(c.len() / 8 * 8);
        let zero = words.chunks_exact(8).all(|w| u64::from_ne_bytes(w.try_into().unwrap()) == 0) && tail.iter().all(|&b| b == 0);
        if !zero {
            map[i / 64] |= 1 << (i % 64);
        }
    }
    map
}

/// Writes the runs of non-zero sectors of `data` at `off`; zero sectors stay holes (the file
/// was sized first, so they read as zeros). Allocated image blocks often hold long zero runs.
fn write_runs(out: &File, data: &[u8], off: u64, map: &[u64; 8]) -> std::io::Result<()> {
    let sectors = data.len().div_ceil(SECTOR);
    let set = |i: usize| map[i / 64] >> (i % 64) & 1 == 1;
    let mut i = 0;
    while i < sectors {
        if !set(i) {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < sectors && set(j) {
            j += 1;
        }
        let (a, b) = (i * SECTOR, (j * SECTOR).min(data.len()));
        out.write_all_at(&data[a..b], off + a as u64)?;
        i = j;
    }
    Ok(())
}

fn export_to_file(chain: &Chain, out: &mut File, path: &Path) -> Result<u64, ImageError> {
    use std::sync::mpsc::{channel, sync_channel};
    use std::sync::Mutex;
    let size = chain.virtual_size();
    // Each layer's file, and where its mapping starts, to turn a segment into a file offset.
    let mut sources = Vec::with_capacity(chain.layers.len());
    for l in &chain.layers {
        let f = File::open(&l.path).map_err(io(&l.path, "cannot open"))?;
        let base = l.bytes().as_ptr() as usize;
        sources.push((f, base, base + l.bytes().len()));
    }
    // Full size first (sparse): writes then never extend the file, and ext4 need not update
    // and journal the inode size on every one of them.
    out.set_len(0).map_err(io(path, "cannot truncate"))?;
    out.set_len(size).map_err(io(path, "cannot size"))?;
    let out: &File = out;
    // Readers (one per core) pread extents into recycled buffers; ONE writer writes them. With
    // several writers, buffered writes to one ext4 file spin on its inode lock (measured: a
    // fifth of the time), which is also why qemu-img issues its writes one at a time.
    const EXTENT: u64 = 64 * MIB;
    const BUF: usize = 2 << 20;
    let extents = size.div_ceil(EXTENT);
    let readers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8);
    let next = std::sync::atomic::AtomicU64::new(0);
    // Each buffer travels with a map of its non-zero 4 KiB sectors, computed by its reader.
    const _: () = assert!(BUF / SECTOR == 8 * 64, "one map bit per sector of a buffer");
    type Item = Result<(u64, Vec<u8>, usize, [u64; 8]), ImageError>;
    let (full_tx, full_rx) = sync_channel::<Item>(readers * 2);
    let (free_tx, free_rx) = channel::<Vec<u8>>();
    for _ in 0..readers * 3 {
        free_tx.send(vec![0u8; BUF]).expect("receiver alive");
    }
    let free_rx = Mutex::new(free_rx);
    std::thread::scope(|scope| {
        for _ in 0..readers {
            let full_tx = full_tx.clone();
            let (next, free_rx, sources) = (&next, &free_rx, &sources);
            scope.spawn(move || loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if k >= extents {
                    return;
                }
                let at = k * EXTENT;
                let mut vpos = at;
                let mut failed = false;
                chain
                    .read(at, EXTENT.min(size - at), &mut |s| {
                        let len = s.len();
                        if let (Segment::Data(d), false) = (s, failed) {
                            let p = d.as_ptr() as usize;
                            let (src, base, _) =
                                sources.iter().find(|(_, b, e)| p >= *b && p < *e).expect("segments come from the chain's mappings");
                            let mut done = 0usize;
                            while done < d.len() {
                                let Ok(mut buf) = free_rx.lock().expect("no poisoning").recv() else {
                                    failed = true;
                                    return;
                                };
                                let n = (d.len() - done).min(BUF);
                                let item = match src.read_exact_at(&mut buf[..n], (p - base + done) as u64) {
                                    Ok(()) => {
                                        let map = nonzero_map(&buf[..n]);
                                        Ok((vpos + done as u64, buf, n, map))
                                    }
                                    Err(e) => Err(ImageError::new(path, format!("read failed: {e}"))),
                                };
                                failed |= item.is_err();
                                if full_tx.send(item).is_err() || failed {
                                    failed = true;
                                    return;
                                }
                                done += n;
                            }
                        }
                        vpos += len;
                    })
                    .expect("inside the disk");
                if failed {
                    return;
                }
            });
        }
        drop(full_tx);
        // The writer: this thread.
        for item in full_rx.iter() {
            let (off, buf, n, map) = item?;
            write_runs(out, &buf[..n], off, &map).map_err(io(path, "write failed"))?;
            let _ = free_tx.send(buf);
        }
        Ok(size)
    })
}
