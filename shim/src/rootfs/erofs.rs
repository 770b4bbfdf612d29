//! Builds the read-only EROFS images the guest mounts: of one directory, or of a stack of
//! overlay layers flattened through a lower-only overlay mount in a private mount
//! namespace (which vanishes with the `mkfs.erofs` process, however it ends).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::tool::{self, ToolFailed};

/// Errors building an image.
#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    #[error("cannot run mkfs.erofs (install the erofs-utils package): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("mkfs.erofs failed on {dir} with {failed}")]
    Mkfs {
        dir: PathBuf,
        #[source]
        failed: ToolFailed,
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
    #[error("cannot flatten the {layers} image layers with an overlay mount (or run mkfs.erofs on it): {source}")]
    Flatten {
        layers: usize,
        source: std::io::Error,
    },
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
    tool::run(&mut cmd)
        .map_err(ErofsError::Spawn)?
        .map_err(|failed| ErofsError::Mkfs {
            dir: dir.to_path_buf(),
            failed,
        })
}

/// Writes one EROFS image of the merged view of `layers` (top layer first, as in
/// overlayfs's `lowerdir`) to `image`: whiteouts and opaque directories of the layers are
/// resolved, so the image holds exactly what a container of these layers sees.
/// `mount_point` is an empty directory to create and remove again; `<mount_point>.links`
/// (likewise) holds short symlinks to the layers, so that the option string fits in a
/// page however many layers there are and however long their paths (Docker's `l/` trick).
pub fn build_flattened(
    layers: &[PathBuf],
    image: &Path,
    mount_point: &Path,
) -> Result<(), ErofsError> {
    if layers.len() == 1 {
        return build_erofs(&layers[0], image);
    }
    let image = std::path::absolute(image).map_err(|source| ErofsError::MountPoint {
        path: image.to_path_buf(),
        source,
    })?;
    let mount_point =
        std::path::absolute(mount_point).map_err(|source| ErofsError::MountPoint {
            path: mount_point.to_path_buf(),
            source,
        })?;
    let links = mount_point.with_extension("links");
    let result = flatten_in(layers, &image, &mount_point, &links);
    let _ = std::fs::remove_dir(&mount_point);
    let _ = std::fs::remove_dir_all(&links);
    result
}

fn flatten_in(
    layers: &[PathBuf],
    image: &Path,
    mount_point: &Path,
    links: &Path,
) -> Result<(), ErofsError> {
    let mp_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ErofsError::MountPoint { path, source }
    };
    std::fs::create_dir(mount_point).map_err(mp_err(mount_point))?;
    std::fs::create_dir(links).map_err(mp_err(links))?;
    for (i, layer) in layers.iter().enumerate() {
        let abs = std::path::absolute(layer).map_err(|source| ErofsError::Layer {
            path: layer.clone(),
            source,
        })?;
        std::os::unix::fs::symlink(&abs, links.join(i.to_string())).map_err(mp_err(links))?;
    }
    let lowerdir = (0..layers.len())
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(":");
    let options = format!("lowerdir={lowerdir}");
    if options.len() >= 4000 {
        return Err(ErofsError::TooManyLayers(layers.len()));
    }
    let c = |s: &[u8]| CString::new(s).map_err(|_| ErofsError::TooManyLayers(layers.len()));
    let (target, data, dir) = (
        c(mount_point.as_os_str().as_bytes())?,
        c(options.as_bytes())?,
        c(links.as_os_str().as_bytes())?,
    );
    let mut cmd = Command::new("mkfs.erofs");
    cmd.args(MKFS_ARGS).arg(image).arg(mount_point);
    // SAFETY: the closure runs in the forked child before exec and only makes syscalls
    // on memory prepared before the fork (no allocation, no locks). The layers are looked
    // up after the unshare (through the symlinks, relative to the working directory): an
    // overlay refuses lower layers on mounts of another mount namespace.
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
                || libc::chdir(dir.as_ptr()) != 0
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
    run_mkfs(cmd, mount_point).map_err(|e| match e {
        ErofsError::Spawn(source) => ErofsError::Flatten {
            layers: layers.len(),
            source,
        },
        other => other,
    })
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

/// What `mkfs.erofs -V` prints ("mkfs.erofs 1.5"; erofs-utils 1.5 also prints it, on
/// stdout, before refusing the option), for the cache's records.
pub fn mkfs_version() -> String {
    Command::new("mkfs.erofs")
        .arg("-V")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattening_resolves_whiteouts_and_opaque_directories() {
        crate::test_support::require_tool("mkfs.erofs", "erofs-utils");
        crate::test_support::require_tool("fsck.erofs", "erofs-utils");
        crate::test_support::require_root("the overlay mount that flattens the layers");
        let v = mkfs_version();
        assert!(
            v.starts_with("mkfs.erofs ") && v.chars().any(|c| c.is_ascii_digit()),
            "{v}"
        );
        assert!(
            mkfs_identity().contains("mkfs.erofs:"),
            "{}",
            mkfs_identity()
        );
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        let (l1, l2) = (base.join("l1"), base.join("l2"));
        for d in [
            l1.join("etc"),
            l1.join("opq"),
            l2.join("etc"),
            l2.join("opq"),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(l1.join("etc/kept"), "kept").unwrap();
        std::fs::write(l1.join("etc/hidden"), "hidden").unwrap();
        std::fs::write(l1.join("opq/old"), "old").unwrap();
        std::fs::write(l2.join("opq/new"), "new").unwrap();
        std::fs::write(l2.join("etc/kept"), "upper kept").unwrap();
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: plain syscalls on valid NUL-terminated paths.
        unsafe {
            assert_eq!(
                libc::mknod(c(&l2.join("etc/hidden")).as_ptr(), libc::S_IFCHR | 0o600, 0),
                0
            );
            assert_eq!(
                libc::setxattr(
                    c(&l2.join("opq")).as_ptr(),
                    c"trusted.overlay.opaque".as_ptr(),
                    b"y".as_ptr().cast(),
                    1,
                    0
                ),
                0
            );
        }
        let image = base.join("img");
        build_flattened(&[l2.clone(), l1.clone()], &image, &base.join("mnt")).unwrap();
        assert!(!base.join("mnt").exists() && !base.join("mnt.links").exists());
        let out = base.join("out");
        let st = Command::new("fsck.erofs")
            .arg(format!("--extract={}", out.display()))
            .arg(&image)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(
            std::fs::read_to_string(out.join("etc/kept")).unwrap(),
            "upper kept"
        );
        assert!(!out.join("etc/hidden").exists(), "the whiteout hid it");
        assert!(!out.join("opq/old").exists(), "the opaque directory hid it");
        assert_eq!(std::fs::read_to_string(out.join("opq/new")).unwrap(), "new");
        // Nothing of the private mount is visible here.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&base.display().to_string()));
    }
}
