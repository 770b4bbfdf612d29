//! Per-container disk images (the writable layer, images of per-container layers): made
//! in the cache's `scratch/` directory, opened, and unlinked at once, so they live exactly
//! as long as the monitor holds them and nothing is left behind however it ends. The VMM
//! opens them again through `/proc/self/fd/N`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::tool::{self, ToolFailed};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Errors making a scratch image.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("cannot make the scratch image {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run mkfs.ext4 (install the e2fsprogs package): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("mkfs.ext4 failed on {path} with {failed}")]
    Mkfs {
        path: PathBuf,
        #[source]
        failed: ToolFailed,
    },
}

/// An open, unlinked image file.
#[derive(Debug)]
pub struct ScratchFile {
    pub file: File,
}

impl ScratchFile {
    /// The path through which this process (and its forked monitor) can open it again.
    pub fn proc_path(&self) -> PathBuf {
        proc_path(&self.file)
    }
}

/// `/proc/self/fd/N` of an open file.
pub fn proc_path(f: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

/// A fresh name in `dir` for a scratch file of `kind`.
pub fn scratch_name(dir: &Path, kind: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    dir.join(format!(
        "{}.{}.{kind}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

/// Runs `make(path)` to create the file at a fresh scratch path, opens it (read-write if
/// `writable`) and unlinks it.
pub fn make<E: From<ScratchError>>(
    dir: &Path,
    kind: &str,
    writable: bool,
    create: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<ScratchFile, E> {
    let path = scratch_name(dir, kind);
    let result = create(&path);
    let opened = result.and_then(|()| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&path)
            .map_err(|source| {
                E::from(ScratchError::Io {
                    path: path.clone(),
                    source,
                })
            })
    });
    let _ = std::fs::remove_file(&path);
    Ok(ScratchFile { file: opened? })
}

/// Makes an empty ext4 file system of `size` bytes at `path` (a sparse file: only the
/// metadata mkfs writes takes space). No journal: the layer lives for one boot of the VM.
pub fn make_ext4(path: &Path, size: u64) -> Result<(), ScratchError> {
    let io = |source| ScratchError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = File::create(path).map_err(io)?;
    f.set_len(size).map_err(io)?;
    drop(f);
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args([
        "-q",
        "-F",
        "-m",
        "0",
        "-O",
        "^has_journal",
        "-E",
        "lazy_itable_init=1,nodiscard,root_owner=0:0",
    ])
    .arg(path);
    tool::run(&mut cmd)
        .map_err(ScratchError::Spawn)?
        .map_err(|failed| ScratchError::Mkfs {
            path: path.to_path_buf(),
            failed,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_files_are_unlinked_but_stay_readable() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let s = make::<ScratchError>(dir, "img", false, |p| {
            std::fs::write(p, b"data").map_err(|source| ScratchError::Io {
                path: p.to_path_buf(),
                source,
            })
        })
        .unwrap();
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);
        assert_eq!(std::fs::read(s.proc_path()).unwrap(), b"data");
        let e = make::<ScratchError>(dir, "img", false, |p| {
            std::fs::write(p, b"x").unwrap();
            Err(ScratchError::Io {
                path: p.to_path_buf(),
                source: std::io::Error::other("failed"),
            })
        });
        assert!(e.is_err());
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);
    }

    #[test]
    fn ext4_layers_are_sparse() {
        crate::test_support::require_tool("mkfs.ext4", "e2fsprogs");
        let tmp = tempfile::tempdir().unwrap();
        let s = make::<ScratchError>(tmp.path(), "ext4", true, |p| make_ext4(p, 8 << 30)).unwrap();
        use std::os::unix::fs::MetadataExt;
        let md = s.file.metadata().unwrap();
        assert_eq!(md.len(), 8 << 30);
        assert!(
            md.blocks() * 512 < 64 << 20,
            "{} bytes used",
            md.blocks() * 512
        );
    }
}
