//! A vDisk as served: the newest image and its parents. Reads fall through the chain per block and
//! per sector bitmap; the answer is a sequence of segments emitted to a callback, allocation-free.

use super::{bytes, ImageError, Layer, Run, Segment};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy)]
pub struct ChainLimits {
    /// Most images in one chain (the newest included). Deep chains cost a lookup per level.
    pub depth_max: usize,
}

impl Default for ChainLimits {
    fn default() -> Self {
        ChainLimits { depth_max: 16 }
    }
}

pub struct Chain {
    /// layers[0] is the newest image, the last one the base.
    pub layers: Vec<Layer>,
}

impl Chain {
    /// Opens `path` and every parent it names, checking identities, loops and depth.
    pub fn open(path: &Path, limits: ChainLimits) -> Result<Chain, ImageError> {
        let mut layers = vec![Layer::open(path)?];
        let mut seen: Vec<PathBuf> = vec![canonical(path)];
        loop {
            let child = layers.last().unwrap();
            let Some(pref) = child.parent.clone() else { break };
            if layers.len() >= limits.depth_max {
                return Err(ImageError::new(path, format!("chain is deeper than the limit of {} images", limits.depth_max)));
            }
            let candidates = locator_candidates(&child.path, &pref.locators);
            // Anything there but a folder is taken and opened, so a FIFO or socket in a parent's
            // place is refused by name (Backing::map) rather than reported missing.
            let Some(ppath) = candidates.iter().find(|p| p.metadata().is_ok_and(|m| !m.is_dir())).cloned() else {
                return Err(ImageError::new(
                    &child.path,
                    format!(
                        "parent image not found; tried {}",
                        candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                    ),
                ));
            };
            let canon = canonical(&ppath);
            if seen.contains(&canon) {
                return Err(ImageError::new(&child.path, format!("parent {} is already in this chain: the chain loops", ppath.display())));
            }
            // Opened by its canonical path, so logs and /api/status show a clean one.
            let parent = Layer::open(&canon)?;
            let child = layers.last_mut().unwrap();
            check_link(child, &parent, &pref)?;
            seen.push(canon);
            layers.push(parent);
        }
        Ok(Chain { layers })
    }

    /// A chain over already-parsed layers (newest first), with the same link checks as `open`.
    pub fn from_layers(mut layers: Vec<Layer>) -> Result<Chain, ImageError> {
        assert!(!layers.is_empty(), "a chain has at least one image");
        for i in 0..layers.len() - 1 {
            let (a, b) = layers.split_at_mut(i + 1);
            let pref = a[i].parent.clone().ok_or_else(|| ImageError::new(&a[i].path, "has no parent but a parent was given"))?;
            check_link(&mut a[i], &b[0], &pref)?;
        }
        if let Some(last) = layers.last() {
            if last.parent.is_some() {
                return Err(ImageError::new(&last.path, "differencing image given without its parent"));
            }
        }
        Ok(Chain { layers })
    }

    /// Bytes of all the chain's files.
    pub fn file_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.bytes().len() as u64).sum()
    }

    /// [`Layer::populate`] for every layer; true when all of them are mapped in.
    pub fn populate(&self) -> bool {
        self.layers.iter().all(|l| l.populate())
    }

    /// True when any member changed in place or faulted since it was opened: what a read
    /// returned may be wrong, so readers check this after reading and refuse (see guard.rs).
    #[inline]
    pub fn damaged(&self) -> bool {
        self.layers.iter().any(|l| l.damaged())
    }

    pub fn virtual_size(&self) -> u64 {
        self.layers[0].virtual_size
    }

    pub fn top(&self) -> &Layer {
        &self.layers[0]
    }

    /// Emits the segments covering `[off, off + len)` in order. Errors when the range leaves the
    /// disk; otherwise the emitted lengths add up to `len` exactly.
    #[inline]
    pub fn read<'a, F: FnMut(Segment<'a>)>(&'a self, off: u64, len: u64, emit: &mut F) -> Result<(), OutOfRange> {
        let size = self.virtual_size();
        if off.checked_add(len).is_none_or(|end| end > size) {
            return Err(OutOfRange { off, len, size });
        }
        self.resolve(0, off, len, emit);
        Ok(())
    }

    fn resolve<'a, F: FnMut(Segment<'a>)>(&'a self, depth: usize, mut off: u64, mut len: u64, emit: &mut F) {
        let Some(layer) = self.layers.get(depth) else {
            emit(Segment::Zero(len));
            return;
        };
        while len > 0 {
            if off >= layer.virtual_size {
                emit(Segment::Zero(len));
                return;
            }
            let n = match layer.lookup(off, len.min(layer.virtual_size - off)) {
                Run::Data { file_off, len: n } => {
                    emit(Segment::Data(&layer.bytes()[file_off as usize..(file_off + n) as usize]));
                    n
                }
                Run::Zero(n) => {
                    emit(Segment::Zero(n));
                    n
                }
                Run::Parent(n) => {
                    self.resolve(depth + 1, off, n, emit);
                    n
                }
            };
            debug_assert!(n > 0 && n <= len);
            off += n;
            len -= n;
        }
    }

    /// Copies `[off, off + buf.len())` into `buf` (export, merge, tests).
    pub fn read_into(&self, off: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let mut at = 0usize;
        self.read(off, buf.len() as u64, &mut |s| {
            let n = s.len() as usize;
            match s {
                Segment::Data(d) => buf[at..at + n].copy_from_slice(d),
                Segment::Zero(_) => buf[at..at + n].fill(0),
            }
            at += n;
        })
    }

    /// Runs of the virtual disk that hold data in some layer vs. read as zeros without any layer
    /// storing them: (offset, len, allocated). Used by merge and by NBD block status.
    pub fn allocation<F: FnMut(u64, u64, bool)>(&self, off: u64, len: u64, f: &mut F) -> Result<(), OutOfRange> {
        let mut at = off;
        self.read(off, len, &mut |s| {
            f(at, s.len(), matches!(s, Segment::Data(_)));
            at += s.len();
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfRange {
    pub off: u64,
    pub len: u64,
    pub size: u64,
}

impl std::fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "read of {} bytes at {} goes past the end of the {}-byte disk", self.len, self.off, self.size)
    }
}
impl std::error::Error for OutOfRange {}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn check_link(child: &mut Layer, parent: &Layer, pref: &super::ParentRef) -> Result<(), ImageError> {
    if child.format.is_vhd() != parent.format.is_vhd() || child.format.is_vhdx() != parent.format.is_vhdx() {
        return Err(ImageError::new(
            &child.path,
            format!("a {} image cannot have the {} image {} as parent", child.format.name(), parent.format.name(), parent.path.display()),
        ));
    }
    if parent.id != pref.id {
        let show = if child.format.is_vhd() { bytes::uuid_to_string } else { bytes::guid_to_string };
        return Err(ImageError::new(
            &child.path,
            format!(
                "parent {} has identity {} but this image expects {}: the parent was modified or replaced after this version was made",
                parent.path.display(),
                show(&parent.id),
                show(&pref.id)
            ),
        ));
    }
    if parent.virtual_size != child.virtual_size {
        return Err(ImageError::new(
            &child.path,
            format!("virtual size {} differs from the parent's {} ({})", child.virtual_size, parent.virtual_size, parent.path.display()),
        ));
    }
    if parent.logical_sector != child.logical_sector {
        return Err(ImageError::new(
            &child.path,
            format!("logical sector size {} differs from the parent's {}", child.logical_sector, parent.logical_sector),
        ));
    }
    if let Some(ts) = pref.timestamp {
        if ts != parent.timestamp {
            child.problems.push(format!(
                "parent time stamp {ts} differs from the parent footer's {} (UUID matches, so the chain is used)",
                parent.timestamp
            ));
        }
    }
    Ok(())
}

/// Paths to try for a parent locator, relative ones against the child's folder. Windows paths
/// (`.\x.vhdx`, `C:\store\x.vhdx`) are translated; as a last resort the bare file name is looked
/// up beside the child, since PVS keeps every version of a vDisk in one store folder.
fn locator_candidates(child: &Path, locators: &[String]) -> Vec<PathBuf> {
    let dir = child.parent().unwrap_or(Path::new("."));
    let mut out: Vec<PathBuf> = Vec::new();
    let mut push = |p: PathBuf| {
        if !out.contains(&p) {
            out.push(p);
        }
    };
    for l in locators {
        let unix = l.replace('\\', "/");
        let is_windows_abs = unix.len() >= 2 && unix.as_bytes()[1] == b':' || unix.starts_with("//");
        if !is_windows_abs {
            let p = Path::new(&unix);
            push(if p.is_absolute() { p.to_path_buf() } else { dir.join(p) });
        }
    }
    for l in locators {
        let unix = l.replace('\\', "/");
        if let Some(name) = unix.rsplit('/').next().filter(|n| !n.is_empty() && *n != "..") {
            push(dir.join(name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locators_translate_windows_paths() {
        let c = locator_candidates(Path::new("/s/v.2.avhdx"), &[".\\v.1.vhdx".into(), "C:\\store\\v.1.vhdx".into()]);
        // "/s/./v.1.vhdx" and "/s/v.1.vhdx" are one path (components ignore "."): tried once.
        assert_eq!(c, vec![PathBuf::from("/s/./v.1.vhdx")]);
        let c = locator_candidates(Path::new("/s/v.2.avhdx"), &["/abs/base.vhdx".into()]);
        assert_eq!(c, vec![PathBuf::from("/abs/base.vhdx"), PathBuf::from("/s/base.vhdx")]);
    }
}
