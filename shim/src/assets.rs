//! Finds the guest kernel and initramfs, and virtiofsd (the daemon that serves each
//! container's share): `RUNVM_KERNEL`/`RUNVM_INITRAMFS`/`RUNVM_VIRTIOFSD`, then next to the
//! `runvm` binary, then `<binary dir>/../runvm/` (where `cargo xtask` puts them), then
//! `/usr/lib/runvm/` (and for virtiofsd `/usr/libexec/virtiofsd`, where Debian's package
//! puts it).

use std::path::PathBuf;

/// Errors locating guest assets.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("{what} not found: set {var}, or install {file} next to the runvm binary or in /usr/lib/runvm (searched: {searched})")]
    NotFound {
        what: &'static str,
        var: &'static str,
        file: &'static str,
        searched: String,
    },
    #[error("{var} points to {path}, which does not exist")]
    BadEnv { var: &'static str, path: PathBuf },
}

/// The kernel and initramfs every guest boots, and the file-sharing daemon.
#[derive(Debug, Clone)]
pub struct GuestAssets {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub virtiofsd: PathBuf,
}

fn find(
    what: &'static str,
    var: &'static str,
    file: &'static str,
    more: &[&str],
) -> Result<PathBuf, AssetError> {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(AssetError::BadEnv { var, path: p })
        };
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(PathBuf::from))
    {
        candidates.push(dir.join(file));
        candidates.push(dir.join("..").join("runvm").join(file));
    }
    candidates.push(PathBuf::from("/usr/lib/runvm").join(file));
    candidates.extend(more.iter().map(PathBuf::from));
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    let searched = candidates
        .iter()
        .map(|c| c.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Err(AssetError::NotFound {
        what,
        var,
        file,
        searched,
    })
}

impl GuestAssets {
    pub fn locate() -> Result<Self, AssetError> {
        Ok(Self {
            kernel: find("guest kernel", "RUNVM_KERNEL", "vmlinux", &[])?,
            initramfs: find("guest initramfs", "RUNVM_INITRAMFS", "initramfs.cpio", &[])?,
            virtiofsd: find(
                "virtiofsd (it serves each container's files to its VM)",
                "RUNVM_VIRTIOFSD",
                "virtiofsd",
                &["/usr/libexec/virtiofsd"],
            )?,
        })
    }
}
