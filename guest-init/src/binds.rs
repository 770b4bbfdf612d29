//! File bind mounts, copied in: the host sends each bind-mounted file's content in `Run`
//! ([`MountSpec::file`]); the workload's child writes it under init's `/run/binds/`, takes
//! a detached bind mount of it (`open_tree(OPEN_TREE_CLONE)`) while init's `/run` is still
//! visible, and after the root switch attaches it on the destination in the order of the
//! spec's mounts (`move_mount`), remounted read-only for `ro`. The copy is private to the
//! guest: writes to it never reach the host.

use crate::error::{Context, Error, Result};
use crate::mount_options;
use nix::mount::MsFlags;
use runvm_protocol::MountSpec;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

// From <linux/mount.h> (not in the libc crate).
const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
const MOVE_MOUNT_T_SYMLINKS: libc::c_uint = 0x10;

/// Detached bind mounts of the copied-in files, by index in the spec's mounts.
#[derive(Default)]
pub struct Prepared {
    trees: Vec<Option<OwnedFd>>,
}

/// Writes the content of every file bind in `mounts` under `run/binds/` and takes a
/// detached bind mount of each. Runs in the workload's child, before the root switch.
pub fn prepare(mounts: &[MountSpec], run: &Path) -> Result<Prepared> {
    let mut trees = Vec::with_capacity(mounts.len());
    for (i, m) in mounts.iter().enumerate() {
        if m.fstype != "bind" {
            trees.push(None);
            continue;
        }
        let Some(file) = &m.file else {
            return Err(Error::new(format!(
                "mount on {}: the host sent no content for this file bind mount",
                m.destination
            )));
        };
        let dir = run.join("binds");
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let path = dir.join(i.to_string());
        std::fs::write(&path, &file.data).with_context(|| format!("write {}", path.display()))?;
        nix::unistd::chown(
            &path,
            Some(nix::unistd::Uid::from_raw(file.uid)),
            Some(nix::unistd::Gid::from_raw(file.gid)),
        )
        .with_context(|| format!("chown {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode & 0o7777))
            .with_context(|| format!("chmod {}", path.display()))?;
        trees.push(Some(open_tree(&path)?));
    }
    Ok(Prepared { trees })
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::new(format!("path {} has a NUL byte", p.display())))
}

/// A detached bind mount of `path`.
fn open_tree(path: &Path) -> Result<OwnedFd> {
    let c = cstring(path)?;
    // SAFETY: open_tree reads the NUL-terminated path and returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Error::new(format!(
            "open_tree {}: {}",
            path.display(),
            nix::errno::Errno::last()
        )));
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl Prepared {
    /// Attaches the copy of mount `index` (`m`) on its destination, inside the container's
    /// root: the destination file is created if missing (as runc creates mount points),
    /// symlinks on the way are followed within the root.
    pub fn attach(&mut self, index: usize, m: &MountSpec) -> Result<()> {
        let tree = self
            .trees
            .get_mut(index)
            .and_then(Option::take)
            .ok_or_else(|| {
                Error::new(format!(
                    "mount on {}: file bind was not prepared",
                    m.destination
                ))
            })?;
        let dest = Path::new(&m.destination);
        if !dest.is_absolute() {
            return Err(Error::new(format!(
                "mount destination {:?} must be an absolute path",
                m.destination
            )));
        }
        match std::fs::metadata(dest) {
            Ok(md) if md.is_dir() => {
                return Err(Error::new(format!(
                    "mount on {}: cannot bind a file on a directory",
                    m.destination
                )))
            }
            Ok(_) => {}
            Err(_) => {
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("create {}", parent.display()))?;
                }
                // Through a dangling symlink this creates its target, as runc does.
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(dest)
                    .with_context(|| format!("create the mount point {}", dest.display()))?;
            }
        }
        let c = cstring(dest)?;
        // SAFETY: move_mount reads the NUL-terminated paths ("" and `c`) and two fds.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                c.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_SYMLINKS,
            )
        };
        if rc != 0 {
            return Err(Error::new(format!(
                "mount on {}: move_mount: {}",
                m.destination,
                nix::errno::Errno::last()
            )));
        }
        let opts = mount_options::parse(&m.options);
        let keep = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let flags = opts.flags & keep;
        if !flags.is_empty() {
            nix::mount::mount(
                None::<&str>,
                dest,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
                None::<&str>,
            )
            .with_context(|| format!("remount {} with {:?}", m.destination, m.options))?;
        }
        Ok(())
    }
}
