//! Builds the read-only EROFS images the guest mounts: of one directory, or of a stack of
//! overlay layers flattened through a lower-only overlay mount in a private mount
//! namespace (which vanishes with the `mkfs.erofs` process, however it ends).

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors building an image.
#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    #[error("cannot run mkfs.erofs (install the erofs-utils package): {0}")]
    Spawn(std::io::Error),
    #[error("mkfs.erofs failed on {dir} with {status}: {stderr}")]
    Mkfs {
        dir: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("cannot open the image layer {path}: {source}")]
    Layer {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make the mount point {path} to flatten the image layers: {source}")]
    MountPoint {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} image layers are too many to flatten in one overlay mount")]
    TooManyLayers(usize),
}

/// mkfs.erofs options: keep every file's own mtime (the guest shows it, and the write-back
/// copies it to the host for files it only changed the metadata of).
const MKFS_ARGS: [&str; 2] = ["--quiet", "--preserve-mtime"];

/// Writes an EROFS image of `dir` to `image`.
pub fn build_erofs(dir: &Path, image: &Path) -> Result<(), ErofsError> {
    let mut cmd = Command::new("mkfs.erofs");
    cmd.args(MKFS_ARGS).arg(image).arg(dir);
    run_mkfs(cmd, dir)
}

fn run_mkfs(mut cmd: Command, dir: &Path) -> Result<(), ErofsError> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(ErofsError::Spawn)?;
    if !out.status.success() {
        return Err(ErofsError::Mkfs {
            dir: dir.to_path_buf(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Writes one EROFS image of the merged view of `layers` (top layer first, as in
/// overlayfs's `lowerdir`) to `image`: whiteouts and opaque directories of the layers are
/// resolved, so the image holds exactly what a container of these layers sees.
/// `mount_point` is an empty directory to create and remove again.
pub fn build_flattened(
    layers: &[PathBuf],
    image: &Path,
    mount_point: &Path,
) -> Result<(), ErofsError> {
    if layers.len() == 1 {
        return build_erofs(&layers[0], image);
    }
    // Layers by descriptor: the option string stays short however long the paths are
    // (a mount's options must fit in one page).
    let files = layers
        .iter()
        .map(|p| {
            std::fs::File::open(p).map_err(|source| ErofsError::Layer {
                path: p.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let lowerdir = files
        .iter()
        .map(|f| format!("/proc/self/fd/{}", f.as_raw_fd()))
        .collect::<Vec<_>>()
        .join(":");
    let options = format!("lowerdir={lowerdir}");
    if options.len() >= 4000 {
        return Err(ErofsError::TooManyLayers(layers.len()));
    }
    std::fs::create_dir(mount_point).map_err(|source| ErofsError::MountPoint {
        path: mount_point.to_path_buf(),
        source,
    })?;
    let c = |s: &[u8]| CString::new(s).map_err(|_| ErofsError::TooManyLayers(layers.len()));
    let (target, data) = (
        c(mount_point.as_os_str().as_bytes())?,
        c(options.as_bytes())?,
    );
    let mut cmd = Command::new("mkfs.erofs");
    cmd.args(MKFS_ARGS).arg(image).arg(mount_point);
    // SAFETY: the closure runs in the forked child before exec and only makes syscalls
    // on memory prepared before the fork (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                || libc::mount(
                    c"overlay".as_ptr(),
                    target.as_ptr(),
                    c"overlay".as_ptr(),
                    libc::MS_RDONLY,
                    data.as_ptr().cast(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let result = run_mkfs(cmd, mount_point);
    drop(files);
    let _ = std::fs::remove_dir(mount_point);
    result
}

/// What identifies the mkfs.erofs that builds the images (its path, size and mtime), so an
/// upgrade of erofs-utils gives new cache keys.
pub fn mkfs_identity() -> String {
    let path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("mkfs.erofs"))
        .find(|p| p.is_file());
    let Some(path) = path else {
        return "mkfs.erofs:missing".into();
    };
    let real = std::fs::canonicalize(&path).unwrap_or(path);
    match std::fs::metadata(&real) {
        Ok(md) => {
            use std::os::unix::fs::MetadataExt;
            format!(
                "{}:{}:{}.{}",
                real.display(),
                md.size(),
                md.mtime(),
                md.mtime_nsec()
            )
        }
        Err(_) => format!("{}:unreadable", real.display()),
    }
}

/// The first line of `mkfs.erofs --help` ("mkfs.erofs 1.5"), for the cache's records.
pub fn mkfs_version() -> String {
    Command::new("mkfs.erofs")
        .arg("--help")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            let text = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&text)
                .lines()
                .find(|l| l.starts_with("mkfs.erofs"))
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
