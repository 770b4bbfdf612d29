//! The monitor's file system once its setup is done: a mount namespace of its own whose
//! root is a small read-only tmpfs, holding nothing of the host's tree but the few paths
//! the monitor still opens by name, bound at the same places.
//!
//! What the monitor uses after [`enter`], and how it reaches it:
//!
//! - opened before and kept: the TAPs (`/dev/net/tun`), the vsock and relay listeners,
//!   virtiofsd's log pipe, the log file, the API socket, stdio, the signalfd, the
//!   cleanup guard's pipes;
//! - bound at its own path: what the VM is built from, in the jail because building it
//!   starts a thread (`/dev/kvm`, the only device node; the guest kernel and initramfs,
//!   read-only; `/sys/module/kvm_pvm` where it exists, for the PVM check), the
//!   container's state directory (its started, exited, paused and exit files, the cgroup
//!   record, and the runtime directory with virtiofsd's socket and the vsock sockets),
//!   the cgroup file system under `/sys/fs/cgroup` (`cpu.max` at start, the OOM report's
//!   leaf cgroups, leaving and removing the container's cgroup at the end), the host
//!   sockets the container binds (the socket relays connect to them), and the boot
//!   timings file if one was asked for;
//! - a procfs of the jail's own, mounted `hidepid=invisible,subset=pid` where the
//!   kernel knows them (Linux 5.8): the monitor's own `/proc/self` (its descriptors for
//!   the sockets named through `/proc/self/fd/N` when their path is too long, its
//!   threads for the privilege check, its mountinfo for the cgroup's end, the OOM
//!   victim's `oom_score_adj`), and no other process it could not trace anyway. On an
//!   older kernel it is a plain procfs, mounted without options (they would change the
//!   host's).
//!
//! Nothing in the jail is the host's root: the old root is detached after
//! `pivot_root`, the new one is read-only, and the binds are `nosuid,nodev,noexec`
//! (`/dev/kvm`'s but `nodev`) where the kernel takes it.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Errors setting up the monitor's jail: the container does not start.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("cannot make a mount namespace for the monitor: {0}")]
    Unshare(#[source] nix::Error),
    #[error("cannot {what} {path} in the monitor's new root: {source}")]
    Mount {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot make {path} in the monitor's new root: {source}")]
    Make {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot move the monitor into its new root {path} (pivot_root): {source}")]
    Pivot {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// The flags of everything mounted in the jail that needs none of setuid, devices or
/// programs.
const LOCKED: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// A path of the host bound into the jail at its own place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    pub path: PathBuf,
    /// Read-only in the jail (the guest kernel and initramfs).
    pub read_only: bool,
    /// A device node the monitor opens (`/dev/kvm`): its bind keeps devices working.
    pub device: bool,
}

impl Bind {
    /// A path the monitor writes in or connects to.
    pub fn writable(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            read_only: false,
            device: false,
        }
    }

    /// A file the monitor only reads.
    pub fn read_only(path: impl Into<PathBuf>) -> Self {
        Self {
            read_only: true,
            ..Self::writable(path)
        }
    }

    /// A device node the monitor opens.
    pub fn device(path: impl Into<PathBuf>) -> Self {
        Self {
            device: true,
            ..Self::writable(path)
        }
    }
}

/// Moves the calling thread (the monitor's main thread, before it starts any other) into
/// a mount namespace of its own whose root is a fresh read-only tmpfs, mounted first on
/// `base` (an empty directory the monitor made; the mount is its namespace's only), with
/// `binds` bound at their own paths and a procfs at `/proc`. Needs `CAP_SYS_ADMIN`: call
/// it before the privilege drop. Threads made before keep the host's root.
pub fn enter(base: &Path, binds: &[Bind]) -> Result<(), JailError> {
    let mount_err = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| JailError::Mount { what, path, source }
    };
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(JailError::Unshare)?;
    // Nothing done here may reach the host's namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(mount_err("make private", Path::new("/")))?;
    mount(
        Some("tmpfs"),
        base,
        Some("tmpfs"),
        LOCKED,
        Some("mode=0755,size=64k,nr_inodes=256"),
    )
    .map_err(mount_err("mount a tmpfs on", base))?;
    for b in outermost(binds) {
        bind(base, &b)?;
    }
    let proc_dir = base.join("proc");
    make_dir(&proc_dir)?;
    let proc_mount =
        |data: Option<&str>| mount(Some("proc"), &proc_dir, Some("proc"), LOCKED, data);
    // A kernel before 5.8 refuses these options; its procfs is then the one of the pid
    // namespace, mounted without any (options there would change the host's /proc).
    proc_mount(Some("hidepid=invisible,subset=pid"))
        .or_else(|_| proc_mount(None))
        .map_err(mount_err("mount a procfs on", &proc_dir))?;
    mount(
        None::<&str>,
        base,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | LOCKED,
        None::<&str>,
    )
    .map_err(mount_err("make read-only", base))?;
    let pivot = |source| JailError::Pivot {
        path: base.to_path_buf(),
        source,
    };
    nix::unistd::chdir(base).map_err(pivot)?;
    // The old root goes on top of the new one, and is detached at once: nothing of the
    // host's tree is left in the namespace.
    nix::unistd::pivot_root(".", ".").map_err(pivot)?;
    umount2(".", MntFlags::MNT_DETACH).map_err(mount_err("detach the old root from", base))?;
    nix::unistd::chdir("/").map_err(pivot)?;
    log::debug!("monitor: jailed in a new root");
    Ok(())
}

/// Of `binds`, those whose path is not under another's (which brings it along),
/// shortest first.
fn outermost(binds: &[Bind]) -> Vec<Bind> {
    let mut sorted: Vec<Bind> = binds
        .iter()
        .filter(|b| b.path.is_absolute())
        .cloned()
        .collect();
    sorted.sort_by_key(|b| b.path.components().count());
    let mut kept: Vec<Bind> = Vec::new();
    for b in sorted {
        if !kept.iter().any(|k| b.path.starts_with(&k.path)) {
            kept.push(b);
        }
    }
    kept
}

/// Where a lookup of `path` lands in the new root at `base`, component by component as
/// the kernel walks it there (`..` goes back a directory, never above `base`; the new
/// root has no symlinks), and the directories it walks through on the way, which must
/// exist for it to get there (`<exe>/../runvm/vmlinux` needs `<exe>` as well).
fn lookup(base: &Path, path: &Path) -> (PathBuf, Vec<PathBuf>) {
    let at = |names: &[&OsStr]| {
        let mut p = base.to_path_buf();
        p.extend(names);
        p
    };
    let components: Vec<Component> = path.components().collect();
    let mut names: Vec<&OsStr> = Vec::new();
    let mut walked = Vec::new();
    for (i, c) in components.iter().enumerate() {
        match c {
            Component::Normal(n) => names.push(n),
            Component::ParentDir => {
                names.pop();
            }
            _ => continue,
        }
        if i + 1 < components.len() {
            walked.push(at(&names));
        }
    }
    (at(&names), walked)
}

fn make_dir(dir: &Path) -> Result<(), JailError> {
    std::fs::create_dir_all(dir).map_err(|source| JailError::Make {
        path: dir.to_path_buf(),
        source,
    })
}

/// Binds `b`'s path (a directory, with what is mounted under it unless it holds `base`,
/// or a file) at its own place under `base`, then makes the bind `nosuid,nodev,noexec`
/// (but a device's `nodev`), and read-only if asked or if it was.
fn bind(base: &Path, b: &Bind) -> Result<(), JailError> {
    let source = b.path.as_path();
    // A directory that holds `base` comes without what is mounted under it (the new
    // root among them).
    let recursive = !base.starts_with(source);
    let Ok(meta) = std::fs::metadata(source) else {
        // Gone since it was planned (a bound socket whose daemon went away): a
        // connection to it fails in the jail as it would have outside.
        log::debug!("monitor jail: {} is gone, not bound", source.display());
        return Ok(());
    };
    let (target, walked) = lookup(base, source);
    for dir in &walked {
        make_dir(dir)?;
    }
    if meta.is_dir() {
        make_dir(&target)?;
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&target)
            .map_err(|source| JailError::Make {
                path: target.clone(),
                source,
            })?;
    }
    let err = |what| {
        let path = source.to_path_buf();
        move |source| JailError::Mount { what, path, source }
    };
    mount(
        Some(source),
        &target,
        None::<&str>,
        if recursive {
            MsFlags::MS_BIND | MsFlags::MS_REC
        } else {
            MsFlags::MS_BIND
        },
        None::<&str>,
    )
    .map_err(err("bind"))?;
    // Only the top of a recursive bind takes the flags; a mount whose flags are locked
    // (read-only cgroup tmpfs) may refuse them: a hardening, not a need.
    let readonly = nix::sys::statvfs::statvfs(&target)
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        .unwrap_or(false);
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | LOCKED;
    if readonly || b.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    if b.device {
        flags.remove(MsFlags::MS_NODEV);
    }
    if let Err(e) = mount(None::<&str>, &target, None::<&str>, flags, None::<&str>) {
        log::debug!(
            "monitor jail: {} stays bound without nosuid,nodev,noexec: {e}",
            source.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_under_another_is_brought_along_by_it() {
        let binds: Vec<Bind> = [
            "/run/state/c1/run",
            "/sys/fs/cgroup",
            "/run/state/c1",
            "/run/state/c1-other.sock",
            "relative",
        ]
        .iter()
        .map(Bind::writable)
        .collect();
        let kept: Vec<PathBuf> = outermost(&binds).into_iter().map(|b| b.path).collect();
        assert_eq!(
            kept,
            [
                "/sys/fs/cgroup",
                "/run/state/c1",
                "/run/state/c1-other.sock"
            ]
            .iter()
            .map(PathBuf::from)
            .collect::<Vec<_>>()
        );
    }

    #[test]
    fn no_path_climbs_out_of_the_new_root() {
        let (target, walked) = lookup(Path::new("/base"), Path::new("/a/../../etc/./x"));
        assert_eq!(target, PathBuf::from("/base/etc/x"));
        assert_eq!(
            walked,
            ["/base/a", "/base", "/base", "/base/etc"]
                .iter()
                .map(PathBuf::from)
                .collect::<Vec<_>>()
        );
        // The guest kernel next to runvm: the lookup goes through `release`.
        let (target, walked) = lookup(
            Path::new("/base"),
            Path::new("/w/target/release/../runvm/vmlinux"),
        );
        assert_eq!(target, PathBuf::from("/base/w/target/runvm/vmlinux"));
        assert!(walked.contains(&PathBuf::from("/base/w/target/release")));
    }
}
