//! Bootstrap files served by TFTP and HTTP /boot, mapped read-only and cached per worker by
//! path, checked against (inode, mtime, size) at each use: a replaced file is picked up by new
//! transfers while running ones finish on the old mapping, which their Arc keeps alive.

use crate::image::Backing;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Distinct files kept mapped per worker before the cache starts over.
const FILES_MAX: usize = 4096;

/// A mapped file and the validators HTTP derives from it.
pub struct Mapped {
    pub data: Arc<Backing>,
    pub ino: u64,
    pub mtime_unix: i64,
}

#[derive(Default)]
pub struct FileCache {
    files: HashMap<PathBuf, (u64, i128, u64, Arc<Backing>)>,
}

impl FileCache {
    pub fn get(&mut self, path: &Path) -> std::io::Result<Mapped> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        let (ino, mtime_ns, size) = (m.ino(), m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128, m.size());
        let mtime_unix = m.mtime();
        if let Some((i, t, s, data)) = self.files.get(path) {
            // A damaged mapping (changed in place, image::guard) is never handed out again.
            if (*i, *t, *s) == (ino, mtime_ns, size) && !data.damaged() {
                return Ok(Mapped { data: data.clone(), ino, mtime_unix });
            }
        }
        if self.files.len() >= FILES_MAX {
            self.files.clear(); // running transfers keep their mappings through their Arcs
        }
        let data = Arc::new(Backing::map(path).map_err(|e| std::io::Error::other(e.defect))?);
        self.files.insert(path.to_path_buf(), (ino, mtime_ns, size, data.clone()));
        Ok(Mapped { data, ino, mtime_unix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_is_mapped_anew_and_the_old_mapping_lives_on() {
        let d = std::env::temp_dir().join(format!("bootfarm-files-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("f");
        std::fs::write(&p, b"one").unwrap();
        let mut c = FileCache::default();
        let a = c.get(&p).unwrap();
        assert!(Arc::ptr_eq(&a.data, &c.get(&p).unwrap().data), "unchanged: the same mapping");
        let tmp = d.join("f.new");
        std::fs::write(&tmp, b"second").unwrap();
        std::fs::rename(&tmp, &p).unwrap(); // how files are replaced safely
        let b = c.get(&p).unwrap();
        assert_eq!(b.data.bytes(), b"second");
        assert_eq!(a.data.bytes(), b"one", "a running transfer keeps the old bytes");
        let _ = std::fs::remove_dir_all(&d);
    }
}
