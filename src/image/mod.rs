//! vDisk images: raw, VHD (fixed, dynamic, differencing) and VHDX (fixed, dynamic, differencing),
//! and chains of them. Every file is memory-mapped read-only; a read of (offset, len) of the
//! virtual disk yields [`Segment`]s — slices of the mappings or runs of zeros — with no copy and no
//! allocation, O(1) per block. Images are never written while mapped: `write` works on files that
//! are not being served (new versions, merges), with plain positioned writes. A file changed by
//! someone else while mapped is detected and refused, never a crash (see [`guard`]).

pub mod bytes;
mod chain;
pub mod guard;
pub mod vhd;
pub mod vhdx;
pub mod write;

pub use chain::{Chain, ChainLimits};

use std::fmt;
use std::path::{Path, PathBuf};

/// A piece of a read: bytes that live in a mapping, or a run of zeros that lives nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    Data(&'a [u8]),
    Zero(u64),
}

impl Segment<'_> {
    pub fn len(&self) -> u64 {
        match self {
            Segment::Data(d) => d.len() as u64,
            Segment::Zero(n) => *n,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An image defect or an I/O failure, always naming the file.
#[derive(Debug)]
pub struct ImageError {
    pub file: PathBuf,
    pub defect: String,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.defect)
    }
}
impl std::error::Error for ImageError {}

impl ImageError {
    pub fn new(file: &Path, defect: impl Into<String>) -> Self {
        ImageError { file: file.to_path_buf(), defect: defect.into() }
    }
}

/// Where a layer's bytes live. Parsers only see `&[u8]`, so fuzzing needs no files.
pub enum Backing {
    Map(guard::FileMap),
    Bytes(Vec<u8>),
}

/// What kind of thing a path names, in words, for a refusal.
fn kind_of(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Opens a file to be read: without blocking (a FIFO would block `open` until a writer comes,
/// hanging the thread that opens it) and only if it is a regular file or, with
/// `block_devices`, a block device. Returns the file, its identity and its size.
pub fn open_readable(path: &Path, block_devices: bool) -> Result<(std::fs::File, guard::FileId, u64), String> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(|e| format!("cannot open: {e}"))?;
    let m = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    let t = m.file_type();
    let len = if t.is_file() {
        m.len()
    } else if t.is_block_device() && block_devices {
        use std::io::Seek;
        (&file).seek(std::io::SeekFrom::End(0)).map_err(|e| format!("cannot size the block device: {e}"))?
    } else {
        let must = if block_devices { "a regular file or a block device" } else { "a regular file" };
        return Err(format!("is {}; it must be {must}", kind_of(t)));
    };
    Ok((file, guard::FileId::of(&m), len))
}

impl Backing {
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Bytes(v) => v,
        }
    }

    /// True when the mapped file changed in place or a read of it faulted (see [`guard`]):
    /// what was read may be wrong; refuse it.
    #[inline]
    pub fn damaged(&self) -> bool {
        match self {
            Backing::Map(m) => m.damaged(),
            Backing::Bytes(_) => false,
        }
    }

    /// The file's identity when it was mapped (None for bytes in memory).
    pub fn file_id(&self) -> Option<guard::FileId> {
        match self {
            Backing::Map(m) => Some(m.id()),
            Backing::Bytes(_) => None,
        }
    }

    /// Maps a regular file or a block device read-only. An empty file (a legal 0-byte raw
    /// disk) cannot be mapped. The mapping is registered with the [`guard`]: a file changed
    /// under it is detected and refused, never a crash.
    pub fn map(path: &Path) -> Result<Backing, ImageError> {
        let (file, id, len) = open_readable(path, true).map_err(|e| ImageError::new(path, e))?;
        if len == 0 {
            return Ok(Backing::Bytes(Vec::new()));
        }
        let map = guard::FileMap::new(&file, path, id, len).map_err(|e| ImageError::new(path, e))?;
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::Random);
        Ok(Backing::Map(map))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    VhdFixed,
    VhdDynamic,
    VhdDifferencing,
    VhdxFixed,
    VhdxDynamic,
    VhdxDifferencing,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::VhdFixed => "vhd-fixed",
            Format::VhdDynamic => "vhd-dynamic",
            Format::VhdDifferencing => "vhd-differencing",
            Format::VhdxFixed => "vhdx-fixed",
            Format::VhdxDynamic => "vhdx-dynamic",
            Format::VhdxDifferencing => "vhdx-differencing",
        }
    }
    pub fn is_vhd(self) -> bool {
        matches!(self, Format::VhdFixed | Format::VhdDynamic | Format::VhdDifferencing)
    }
    pub fn is_vhdx(self) -> bool {
        matches!(self, Format::VhdxFixed | Format::VhdxDynamic | Format::VhdxDifferencing)
    }
}

/// What a differencing layer says about its parent.
#[derive(Debug, Clone)]
pub struct ParentRef {
    /// VHD: the parent footer's unique id; VHDX: the parent header's DataWriteGuid.
    pub id: bytes::Guid,
    /// VHD only: the parent's time stamp as recorded in the child (0 when absent).
    pub timestamp: Option<u32>,
    /// Locator paths, in the order they should be tried (relative first).
    pub locators: Vec<String>,
}

/// How a layer maps virtual offsets to file offsets. Tables are read from the mapping in place.
pub(crate) enum Map {
    /// Raw and fixed VHD: virtual offset + `data_off`.
    Flat {
        data_off: u64,
    },
    Vhd(vhd::VhdMap),
    Vhdx(vhdx::VhdxMap),
}

/// One lookup answer: at most `len` bytes from the requested offset share one fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Run {
    Data { file_off: u64, len: u64 },
    Zero(u64),
    Parent(u64),
}

/// One image file of a chain.
pub struct Layer {
    pub path: PathBuf,
    pub format: Format,
    pub virtual_size: u64,
    /// Allocation unit (0 for raw and fixed VHD, where every byte is present).
    pub block_size: u64,
    pub logical_sector: u32,
    pub physical_sector: u32,
    /// The identity children refer to: VHD footer unique id, VHDX DataWriteGuid.
    pub id: bytes::Guid,
    /// The disk's own unique id, which SCSI VPD page 0x83 is meant to carry: VHD footer unique
    /// id, VHDX metadata item Page 83 Data (Virtual Disk ID); NIL for raw disks.
    pub disk_id: bytes::Guid,
    /// VHD footer time stamp (children record it), 0 for other formats.
    pub timestamp: u32,
    pub parent: Option<ParentRef>,
    /// Non-fatal findings (a damaged redundant copy, a time stamp mismatch…) for inspect/verify.
    pub problems: Vec<String>,
    pub(crate) map: Map,
    backing: Backing,
}

impl Layer {
    /// Opens and fully validates one image file (not its parents).
    pub fn open(path: &Path) -> Result<Layer, ImageError> {
        let backing = Backing::map(path)?;
        Layer::parse(path, backing)
    }

    /// Parses an image from any backing; the format comes from the signatures, and a name ending
    /// in .vhd/.avhd/.vhdx/.avhdx without its signature is an error rather than a raw disk.
    pub fn parse(path: &Path, backing: Backing) -> Result<Layer, ImageError> {
        let b = backing.bytes();
        let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).unwrap_or_default();
        let parsed = if b.len() >= 8 && &b[..8] == vhdx::FILE_SIGNATURE {
            vhdx::parse(b)
        } else if vhd::has_footer(b) || (b.len() >= 8 && &b[..8] == vhd::FOOTER_COOKIE) {
            vhd::parse(b)
        } else if ext == "vhdx" || ext == "avhdx" {
            Err("no \"vhdxfile\" signature at offset 0: not a VHDX image (or its first 64 KiB are damaged)".to_string())
        } else if ext == "vhd" || ext == "avhd" {
            Err("no \"conectix\" footer in the last 512 bytes nor at offset 0: not a VHD image (or it was truncated)".to_string())
        } else {
            Ok(Parsed::raw(b.len() as u64))
        };
        let p = parsed.map_err(|d| ImageError::new(path, d))?;
        Ok(Layer {
            path: path.to_path_buf(),
            format: p.format,
            virtual_size: p.virtual_size,
            block_size: p.block_size,
            logical_sector: p.logical_sector,
            physical_sector: p.physical_sector,
            id: p.id,
            disk_id: p.disk_id,
            timestamp: p.timestamp,
            parent: p.parent,
            problems: p.problems,
            map: p.map,
            backing,
        })
    }

    #[inline]
    pub fn bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    pub fn file_len(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// The file changed in place since it was opened, or a read of it faulted: refuse it.
    #[inline]
    pub fn damaged(&self) -> bool {
        self.backing.damaged()
    }

    /// Stats the file now: true when the same inode has another size or mtime than at open (a
    /// `cp` over it, a truncate, a write in place), or a read of it faulted.
    pub fn changed_in_place(&self) -> bool {
        self.damaged() || self.file_id().zip(guard::FileId::at(&self.path)).is_some_and(|(was, now)| was.same_file(&now) && was != now)
    }

    /// The file's identity when it was opened (None for an empty or in-memory layer).
    pub fn file_id(&self) -> Option<guard::FileId> {
        self.backing.file_id()
    }

    /// Resolves `[off, off+len)` (inside the virtual size, len > 0) to its first run.
    #[inline]
    pub(crate) fn lookup(&self, off: u64, len: u64) -> Run {
        match &self.map {
            Map::Flat { data_off } => Run::Data { file_off: data_off + off, len },
            Map::Vhd(m) => m.lookup(self.bytes(), off, len),
            Map::Vhdx(m) => m.lookup(self.bytes(), off, len),
        }
    }

    /// Bytes of the virtual disk stored in this file (whole allocated blocks).
    pub fn allocated_bytes(&self) -> u64 {
        match &self.map {
            Map::Flat { .. } => self.virtual_size,
            Map::Vhd(m) => m.allocated_blocks(self.bytes()) * m.block_size,
            Map::Vhdx(m) => m.allocated_blocks(self.bytes()) * m.block_size,
        }
    }

    /// Tells the kernel this mapping will be read front to back (export, merge): readahead
    /// instead of the random-access advice that suits serving.
    pub fn advise_sequential(&self) {
        if let Backing::Map(m) = &self.backing {
            let _ = m.advise(memmap2::Advice::Sequential);
        }
    }

    /// Back to the serving advice (random: no readahead, no fault-around), after a pass that
    /// read the whole file through [`Layer::advise_sequential`].
    pub fn advise_random(&self) {
        if let Backing::Map(m) = &self.backing {
            let _ = m.advise(memmap2::Advice::Random);
        }
    }

    /// Maps every page of the file into this process now (MADV_POPULATE_READ, reading what is
    /// not cached) instead of one page fault per first touch: for a reader that will touch
    /// most of the file soon, like bootstorm checking a storm's reads. False when the kernel
    /// refuses (before Linux 5.14) or the layer is not a mapping.
    pub fn populate(&self) -> bool {
        match &self.backing {
            Backing::Map(m) => m.advise(memmap2::Advice::PopulateRead).is_ok(),
            Backing::Bytes(_) => false,
        }
    }

    /// Checks that can take a while (every table entry against every other): run by `verify`.
    pub fn deep_check(&self) -> Result<(), String> {
        match &self.map {
            Map::Flat { .. } => Ok(()),
            Map::Vhd(m) => m.deep_check(self.bytes()),
            Map::Vhdx(m) => m.deep_check(self.bytes()),
        }
    }
}

/// What a format parser returns.
pub(crate) struct Parsed {
    pub format: Format,
    pub virtual_size: u64,
    pub block_size: u64,
    pub logical_sector: u32,
    pub physical_sector: u32,
    pub id: bytes::Guid,
    pub disk_id: bytes::Guid,
    pub timestamp: u32,
    pub parent: Option<ParentRef>,
    pub problems: Vec<String>,
    pub map: Map,
}

impl Parsed {
    fn raw(len: u64) -> Parsed {
        Parsed {
            format: Format::Raw,
            virtual_size: len,
            block_size: 0,
            logical_sector: 512,
            physical_sector: 512,
            id: bytes::NIL_GUID,
            disk_id: bytes::NIL_GUID,
            timestamp: 0,
            parent: None,
            problems: Vec::new(),
            map: Map::Flat { data_off: 0 },
        }
    }
}
