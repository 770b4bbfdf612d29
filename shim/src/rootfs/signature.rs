//! The signature of a directory tree: a hash of every entry's relative path and `lstat`
//! metadata (type and mode, owner, size, inode and device, modification and change times
//! to the nanosecond, device numbers). Any change to the tree's content or metadata
//! changes an entry's ctime, which the kernel sets and nobody can set back, so two equal
//! signatures mean the same tree: a plain root filesystem's image can be reused from the
//! cache. Symlinks are not followed; mount points inside the tree are walked as mkfs.erofs
//! walks them.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// The tree's signature (hex), or the first error of the walk.
pub fn tree_signature(root: &Path) -> std::io::Result<String> {
    let mut h = Sha256::new();
    h.update(b"runvm-tree-v1\0");
    walk(root, Path::new(""), &mut h)?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn entry(h: &mut Sha256, rel: &Path, md: &std::fs::Metadata) {
    h.update(rel.as_os_str().as_bytes());
    h.update(b"\0");
    for v in [
        u64::from(md.mode()),
        u64::from(md.uid()),
        u64::from(md.gid()),
        md.size(),
        md.ino(),
        md.dev(),
        md.rdev(),
        md.mtime() as u64,
        md.mtime_nsec() as u64,
        md.ctime() as u64,
        md.ctime_nsec() as u64,
    ] {
        h.update(v.to_le_bytes());
    }
}

fn walk(dir: &Path, rel: &Path, h: &mut Sha256) -> std::io::Result<()> {
    let md = std::fs::symlink_metadata(dir)?;
    entry(h, rel, &md);
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let rel = rel.join(&name);
        let md = std::fs::symlink_metadata(&path)?;
        if md.is_dir() {
            walk(&path, &rel, h)?;
        } else {
            entry(h, &rel, &md);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_change_in_the_tree_changes_the_signature() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/f"), "one").unwrap();
        let s0 = tree_signature(dir).unwrap();
        assert_eq!(s0, tree_signature(dir).unwrap(), "stable");
        // Same size, new content: the file's mtime/ctime move.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(dir.join("a/b/f"), "two").unwrap();
        let s1 = tree_signature(dir).unwrap();
        assert_ne!(s0, s1);
        // A mode change alone.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("a/b/f"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let s2 = tree_signature(dir).unwrap();
        assert_ne!(s1, s2);
        // A new empty file deep down.
        std::fs::write(dir.join("a/b/g"), "").unwrap();
        assert_ne!(s2, tree_signature(dir).unwrap());
    }
}
