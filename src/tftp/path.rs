//! Mapping a requested file name to a file under the root, safely: PXE ROMs send Windows
//! separators and leading slashes, attackers send `..`, absolute paths and symlinks that leave
//! the root. The same rules serve HTTP /boot/<path>.

use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not valid UTF-8, a NUL, a control character, or empty after normalisation.
    BadName,
    /// `..` components.
    Traversal,
    NotFound,
    /// Resolves (through a symlink) outside the root, or is not a regular file.
    Outside,
}

/// Normalises a request name: `\` becomes `/`, leading `/` are dropped, `.` and empty
/// components vanish, `..` is refused. Returns a relative path.
pub fn normalise(name: &[u8]) -> Result<PathBuf, Refused> {
    let s = std::str::from_utf8(name).map_err(|_| Refused::BadName)?;
    if s.chars().any(|c| c.is_control()) || s.len() > 1024 {
        return Err(Refused::BadName);
    }
    let unix = s.replace('\\', "/");
    let mut out = PathBuf::new();
    for c in Path::new(&unix).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => return Err(Refused::Traversal),
            Component::Prefix(_) => return Err(Refused::BadName),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(Refused::BadName);
    }
    Ok(out)
}

/// Resolves a request under `root` (canonical) to a canonical regular file inside it.
pub fn resolve(root: &Path, name: &[u8]) -> Result<PathBuf, Refused> {
    let rel = normalise(name)?;
    let full = root.join(&rel);
    let canon = std::fs::canonicalize(&full).map_err(|_| Refused::NotFound)?;
    if !canon.starts_with(root) || !canon.is_file() {
        return Err(Refused::Outside);
    }
    Ok(canon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        assert_eq!(normalise(b"pxelinux.0").unwrap(), PathBuf::from("pxelinux.0"));
        assert_eq!(normalise(b"\\boot\\x86\\wdsnbp.com").unwrap(), PathBuf::from("boot/x86/wdsnbp.com"));
        assert_eq!(normalise(b"//a/./b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(normalise(b"../etc/passwd"), Err(Refused::Traversal));
        assert_eq!(normalise(b"a\\..\\..\\x"), Err(Refused::Traversal));
        assert_eq!(normalise(b"/"), Err(Refused::BadName));
        assert_eq!(normalise(b"a\x01b"), Err(Refused::BadName));
        assert_eq!(normalise(b"\xff"), Err(Refused::BadName));
    }

    #[test]
    fn symlinks_must_stay_inside() {
        let d = std::env::temp_dir().join(format!("bootfarm-path-{}", std::process::id()));
        let root = d.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(d.join("secret"), b"x").unwrap();
        std::fs::write(root.join("sub/f"), b"y").unwrap();
        let _ = std::os::unix::fs::symlink(d.join("secret"), root.join("out"));
        let _ = std::os::unix::fs::symlink("sub/f", root.join("in"));
        let root = std::fs::canonicalize(&root).unwrap();
        assert_eq!(resolve(&root, b"out"), Err(Refused::Outside));
        assert_eq!(resolve(&root, b"in").unwrap(), root.join("sub/f"));
        assert_eq!(resolve(&root, b"sub"), Err(Refused::Outside), "directories are not served");
        assert_eq!(resolve(&root, b"none"), Err(Refused::NotFound));
        let _ = std::fs::remove_dir_all(&d);
    }
}
