//! Mounts: the init's own (`/proc`, `/sys`, `/dev`, cgroup2, `/run`), the container's
//! share (virtio-fs) and its root filesystem (a directory of the share), and the
//! container's view after the root switch (its `mounts`, or a fresh `/proc`, a minimal
//! `/dev`, `/sys` and cgroup2).

use crate::binds;
use crate::error::{Context, Error, Result};
use crate::{mount_api, mount_options, virtio_mmio};
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use runvm_protocol::{ContainerId, MountSpec, RootfsSpec, MAIN_CONTAINER};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where init builds a container: for the main one `/run` and `/newroot` in the VM (under
/// the test directory in host test mode), for member container `N` its own directory
/// `/run/runvm/c<N>` ([`Paths::for_container`]), which holds its share, root and relay
/// sockets apart from the main container's.
#[derive(Clone, Debug)]
pub struct Paths {
    pub run: PathBuf,
    pub newroot: PathBuf,
}

impl Paths {
    pub fn under(base: &Path) -> Self {
        Self {
            run: base.join("run"),
            newroot: base.join("newroot"),
        }
    }

    /// The paths of `container`, given the main container's (`self`): the same for
    /// [`MAIN_CONTAINER`], `<run>/runvm/c<N>` and its `root` for a member.
    pub fn for_container(&self, container: ContainerId) -> Self {
        if container == MAIN_CONTAINER {
            return self.clone();
        }
        let run = self.run.join("runvm").join(format!("c{container}"));
        Self {
            newroot: run.join("root"),
            run,
        }
    }

    /// Where the container's share is mounted (in init's tmpfs, never seen by the
    /// container itself).
    pub fn share(&self) -> PathBuf {
        self.run.join("share")
    }

    /// The listening socket of socket relay `relay` (in init's tmpfs, not on the share:
    /// a socket there would be a socket file in the container's directory on the host).
    pub fn relay_socket(&self, relay: u32) -> PathBuf {
        self.run.join("relays").join(relay.to_string())
    }
}

fn mkdir_p(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).with_context(|| format!("create directory {}", p.display()))
}

fn do_mount(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    mount(src, target, fstype, flags, data).with_context(|| {
        format!(
            "mount {} on {} (type {}, options {})",
            src.unwrap_or("none"),
            target.display(),
            fstype.unwrap_or("none"),
            data.unwrap_or("")
        )
    })
}

/// Makes the initramfs root a real mount with a parent, so the workload can later
/// `pivot_root` away from it (pivot_root refuses the kernel's rootfs itself): bind-mount `/`
/// onto a directory, move that mount over `/`, and chroot into it.
pub fn rebase_initramfs_root() -> Result<()> {
    let dir = Path::new("/.root");
    mkdir_p(dir)?;
    do_mount(Some("/"), dir, None, MsFlags::MS_BIND, None)?;
    std::env::set_current_dir(dir).context("chdir /.root")?;
    do_mount(Some("."), Path::new("/"), None, MsFlags::MS_MOVE, None)?;
    nix::unistd::chroot(".").context("chroot into the rebased root")?;
    std::env::set_current_dir("/").context("chdir /")?;
    Ok(())
}

/// The init's own mounts in the initramfs root (VM only).
pub fn early() -> Result<()> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for (fstype, target, flags, data) in [
        ("proc", "/proc", nodev, None),
        ("sysfs", "/sys", nodev, None),
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
        ("cgroup2", "/sys/fs/cgroup", nodev, None),
        (
            "tmpfs",
            "/run",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
    ] {
        let target = Path::new(target);
        mkdir_p(target)?;
        match do_mount(Some(fstype), target, Some(fstype), flags, data) {
            Ok(()) => {}
            // devtmpfs may already be mounted by the kernel (CONFIG_DEVTMPFS_MOUNT).
            Err(_) if fstype == "devtmpfs" && Path::new("/dev/null").exists() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Where the container's share is: a virtio-fs device found by its tag (the VM), or, in
/// host test mode, a directory standing in for each tag.
#[derive(Clone, Debug)]
pub enum ShareSource {
    VirtioFs,
    /// `<dir>/<tag>` is the share of tag `<tag>`.
    Directories(PathBuf),
}

/// Mounts the container's share (`spec.share_tag`) at [`Paths::share`], once, before the
/// root filesystem is built. A tag no virtio-fs device has fails at once, naming the tag.
pub fn share(paths: &Paths, spec: &RootfsSpec, source: &ShareSource) -> Result<()> {
    share_within(paths, spec, source, Duration::ZERO)
}

/// [`share`], where the virtio-fs device with the tag may take up to `wait` to appear (a
/// device just bound, [`bind_share_device`]).
pub fn share_within(
    paths: &Paths,
    spec: &RootfsSpec,
    source: &ShareSource,
    wait: Duration,
) -> Result<()> {
    let tag = &spec.share_tag;
    let target = paths.share();
    mkdir_p(&target)?;
    let deadline = Instant::now() + wait;
    let stand_in = match source {
        ShareSource::VirtioFs => None,
        ShareSource::Directories(dir) => Some(dir.join(single_component("share tag", tag)?)),
    };
    let attempt = || match &stand_in {
        None => mount(
            Some(tag.as_str()),
            &target,
            Some("virtiofs"),
            MsFlags::empty(),
            None::<&str>,
        ),
        Some(stand_in) => mount(
            Some(stand_in),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ),
    };
    let mounted = loop {
        match attempt() {
            Err(Errno::EINVAL) if stand_in.is_none() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            other => break other,
        }
    };
    mounted.map_err(|e| {
        let why = match (source, e) {
            (ShareSource::VirtioFs, Errno::EINVAL) if !wait.is_zero() => {
                "no virtio-fs device has this tag, though its device was bound (did the host fill the slot?)"
            }
            (ShareSource::VirtioFs, Errno::EINVAL) => {
                "no virtio-fs device has this tag (the host attaches it before the guest boots)"
            }
            (ShareSource::VirtioFs, Errno::ENODEV) => "the guest kernel has no virtiofs support",
            (ShareSource::Directories(_), Errno::ENOENT) => "no directory stands in for this tag",
            _ => "mount failed",
        };
        Error::new(format!(
            "mount the container's share (virtio-fs tag {tag:?}) on {}: {why}: {e}",
            target.display()
        ))
    })?;
    if let ShareSource::VirtioFs = source {
        raise_readahead(&target);
    }
    Ok(())
}

/// How long a member's share may take to appear once its device is bound (the probe runs
/// within the bind, so it is there at once unless something is wrong).
pub const SHARE_DEVICE_WAIT: Duration = Duration::from_secs(2);

/// Binds the virtio-mmio platform device `name` (a spare slot the host has filled with
/// the share's virtio-fs device, see [`virtio_mmio`]). In host test mode there is no such
/// device: the name is only checked.
pub fn bind_share_device(name: &str, source: &ShareSource) -> Result<()> {
    match source {
        ShareSource::VirtioFs => virtio_mmio::bind(name),
        ShareSource::Directories(_) => virtio_mmio::check_device_name(name).map(drop),
    }
    .context("the container's share")
}

/// Unbinds the platform device `name` after its share was unmounted, so that the host
/// can empty the slot. In host test mode the name is only checked.
pub fn unbind_share_device(name: &str, source: &ShareSource) -> Result<()> {
    match source {
        ShareSource::VirtioFs => virtio_mmio::unbind(name),
        ShareSource::Directories(_) => virtio_mmio::check_device_name(name).map(drop),
    }
    .context("the container's share")
}

/// Read-ahead of the share, in KiB: as large as one FUSE request can be (virtiofsd takes
/// 1 MiB), where the kernel's default, 128 KiB, made a cold sequential read eight times
/// as many requests, each a round trip to virtiofsd.
pub const SHARE_READ_AHEAD_KIB: u32 = 1024;

/// Sets the read-ahead of the file system mounted at `target` (its backing device
/// info, shared by the submounts virtiofsd announces) to [`SHARE_READ_AHEAD_KIB`].
/// Best effort: a slower read is no reason to fail the container.
fn raise_readahead(target: &Path) {
    use std::os::unix::fs::MetadataExt;
    let dev = match std::fs::metadata(target) {
        Ok(m) => m.dev(),
        Err(e) => {
            crate::log::error(&format!(
                "cannot stat the share at {}: {e}",
                target.display()
            ));
            return;
        }
    };
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    if let Err(e) = std::fs::write(&knob, SHARE_READ_AHEAD_KIB.to_string()) {
        crate::log::error(&format!(
            "cannot raise the share's read-ahead ({knob}): {e}"
        ));
    }
}

/// `name` if it is a single path component (what the host names share entries with).
pub fn single_component<'a>(what: &str, name: &'a str) -> Result<&'a str> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(Error::new(format!(
            "{what} {name:?} is not a single path component"
        )));
    }
    Ok(name)
}

/// Builds the container's root filesystem at `paths.newroot`: the share's root
/// directory (`spec.root`), bound with every mount below it, and made read-only in the
/// guest too, recursively, when `spec.readonly` (mounts the host announces below it later
/// inherit that). What the container writes there is on the host at once.
pub fn rootfs(paths: &Paths, spec: &RootfsSpec) -> Result<()> {
    let root = paths
        .share()
        .join(single_component("root directory", &spec.root)?);
    mkdir_p(&paths.newroot)?;
    do_mount(
        Some(&root.display().to_string()),
        &paths.newroot,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    if spec.readonly {
        let attr = mount_api::MountAttr {
            attr_set: mount_api::MOUNT_ATTR_RDONLY,
            ..Default::default()
        };
        mount_api::set_attr_path(&paths.newroot, true, &attr).with_context(|| {
            format!(
                "make the root filesystem {} read-only",
                paths.newroot.display()
            )
        })?;
    }
    Ok(())
}

/// Undoes [`share`] and [`rootfs`] of a member container at `paths` (its processes have
/// ended), and removes the directories init made for them. A directory whose mount could
/// not be detached is left alone (removing it would mean descending into the share).
pub fn undo_container(paths: &Paths) -> Result<()> {
    let mut first_error = None;
    for target in [paths.newroot.clone(), paths.share()] {
        let detached = match umount2(&target, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => true,
            Err(e) => {
                first_error.get_or_insert_with(|| {
                    Error::new(format!("unmount {}: {e}", target.display()))
                });
                false
            }
        };
        if detached {
            match std::fs::remove_dir(&target) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_error.get_or_insert_with(|| {
                        Error::new(format!("remove {}: {e}", target.display()))
                    });
                }
            }
        }
    }
    // The relay sockets (init's own files, in its tmpfs).
    let relays = paths.run.join("relays");
    if let Ok(entries) = std::fs::read_dir(&relays) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        let _ = std::fs::remove_dir(&relays);
    }
    if first_error.is_none() {
        match std::fs::remove_dir(&paths.run) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                first_error = Some(Error::new(format!("remove {}: {e}", paths.run.display())))
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Switches the calling process (the container's child, in its own mount namespace) into
/// `newroot` and detaches the old root, so nothing of init stays visible.
pub fn switch_root(newroot: &Path) -> Result<()> {
    do_mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    // pivot_root needs the new root to be a mount point.
    do_mount(
        Some(&newroot.display().to_string()),
        newroot,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    std::env::set_current_dir(newroot).with_context(|| format!("chdir {}", newroot.display()))?;
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            // The old root is now stacked on "/" under the new one; detach it (runc's trick).
            do_mount(
                None,
                Path::new("."),
                None,
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
                None,
            )?;
            umount2(".", MntFlags::MNT_DETACH).context("detach the old root")?;
        }
        Err(Errno::EINVAL) => {
            // Still on the kernel's rootfs (the rebase failed): move + chroot instead.
            do_mount(Some("."), Path::new("/"), None, MsFlags::MS_MOVE, None)?;
            nix::unistd::chroot(".").context("chroot into the container root")?;
        }
        Err(e) => return Err(Error::new(format!("pivot_root: {e}"))),
    }
    std::env::set_current_dir("/").context("chdir / in the container root")
}

/// The container's own mounts, after [`switch_root`]: the spec's `mounts` in order (bind
/// mounts from `binds`, prepared before the switch), or the default set when there are
/// none. (A read-only root is read-only since [`rootfs`]; the bind of [`switch_root`]
/// keeps that.)
pub fn container(spec_mounts: &[MountSpec], binds: &mut binds::Prepared) -> Result<()> {
    if spec_mounts.is_empty() {
        default_mounts()?;
    } else {
        let mut dev_done = false;
        for (i, m) in spec_mounts.iter().enumerate() {
            if m.fstype == "bind" {
                binds.attach(i, m)?;
                continue;
            }
            spec_mount(m)?;
            if m.destination == "/dev" && m.fstype == "tmpfs" {
                // Like runc: the default devices go into a tmpfs /dev.
                dev_nodes()?;
                dev_done = true;
            }
        }
        if !dev_done {
            dev_nodes()?;
        }
    }
    Ok(())
}

/// One of the spec's mounts, inside the container's root.
fn spec_mount(m: &MountSpec) -> Result<()> {
    let fstype = match m.fstype.as_str() {
        "proc" | "sysfs" | "tmpfs" | "devpts" | "mqueue" | "cgroup2" => m.fstype.as_str(),
        // The guest kernel has cgroup v2 only; runc does the same on a v2 host.
        "cgroup" => "cgroup2",
        other => {
            return Err(Error::new(format!(
                "mount on {}: type {other:?} is not supported",
                m.destination
            )))
        }
    };
    if !m.destination.starts_with('/') {
        return Err(Error::new(format!(
            "mount destination {:?} must be an absolute path",
            m.destination
        )));
    }
    let opts = mount_options::parse(&m.options);
    if opts.flags.contains(MsFlags::MS_BIND) {
        return Err(Error::new(format!(
            "mount on {}: type {fstype:?} with a bind option is not supported (a bind \
             mount has type \"bind\")",
            m.destination
        )));
    }
    let target = Path::new(&m.destination);
    if matches!(fstype, "proc" | "sysfs") {
        // As runc: never through a symlink (or onto anything but a directory), which
        // could point the kernel's files somewhere else.
        if let Ok(meta) = std::fs::symlink_metadata(target) {
            if !meta.is_dir() {
                return Err(Error::new(format!(
                    "mount on {}: filesystem {fstype:?} must be mounted on ordinary directory",
                    m.destination
                )));
            }
        }
    }
    mkdir_p(target)?;
    let mut flags = opts.flags;
    if is_dev(&m.destination) {
        // As runc: a read-only /dev is made read-only only once its devices are in it
        // (`finalize_dev`).
        flags -= MsFlags::MS_RDONLY;
    }
    let source = if m.source.is_empty() {
        fstype
    } else {
        m.source.as_str()
    };
    let data = if fstype == "cgroup2" || opts.data.is_empty() {
        None
    } else {
        Some(opts.data.as_str())
    };
    do_mount(Some(source), target, Some(fstype), flags, data)?;
    for propagation in opts.propagation {
        do_mount(None, target, None, propagation, None)?;
    }
    Ok(())
}

fn is_dev(destination: &str) -> bool {
    destination.trim_end_matches('/') == "/dev"
}

/// The read-only remount of a `/dev` mount with `ro`, after the devices were made in it
/// (`linux.devices` and the default ones), as runc finalizes its root filesystem.
pub fn finalize_dev(spec_mounts: &[MountSpec]) -> Result<()> {
    for m in spec_mounts
        .iter()
        .filter(|m| m.fstype != "bind" && is_dev(&m.destination))
    {
        let opts = mount_options::parse(&m.options);
        if opts.flags.contains(MsFlags::MS_RDONLY) {
            do_mount(
                None,
                Path::new("/dev"),
                None,
                opts.flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None,
            )?;
        }
    }
    Ok(())
}

/// The mounts a container gets when the host sends none.
fn default_mounts() -> Result<()> {
    let secure = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let m = |fstype: &str, target: &str, flags: MsFlags, data: Option<&str>| -> Result<()> {
        let t = Path::new(target);
        mkdir_p(t)?;
        do_mount(Some(fstype), t, Some(fstype), flags, data)
    };
    m("proc", "/proc", secure, None)?;
    m(
        "tmpfs",
        "/dev",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    dev_nodes()?;
    m(
        "devpts",
        "/dev/pts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    m("tmpfs", "/dev/shm", secure, Some("mode=1777,size=65536k"))?;
    m("mqueue", "/dev/mqueue", secure, None)?;
    m("sysfs", "/sys", secure | MsFlags::MS_RDONLY, None)?;
    m(
        "cgroup2",
        "/sys/fs/cgroup",
        secure | MsFlags::MS_RDONLY,
        None,
    )
}

/// `linux.readonlyPaths`: bind the path onto itself and remount the bind read-only,
/// keeping its nosuid/nodev/noexec flags. A missing path is skipped, as in runc.
pub fn readonly_path(path: &str) -> Result<()> {
    let p = Path::new(path);
    if !p.exists() {
        return Ok(());
    }
    do_mount(
        Some(path),
        p,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    if let Ok(st) = nix::sys::statvfs::statvfs(p) {
        use nix::sys::statvfs::FsFlags;
        for (have, keep) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        ] {
            if st.flags().contains(have) {
                flags |= keep;
            }
        }
    }
    do_mount(None, p, None, flags, None)
}

/// `linux.maskedPaths`: `/dev/null` over a file, an empty read-only tmpfs over a
/// directory. A missing path is skipped, as in runc.
pub fn mask_path(path: &str) -> Result<()> {
    let p = Path::new(path);
    match std::fs::metadata(p) {
        Err(_) => Ok(()),
        Ok(md) if md.is_dir() => {
            do_mount(Some("tmpfs"), p, Some("tmpfs"), MsFlags::MS_RDONLY, None)
        }
        Ok(_) => do_mount(Some("/dev/null"), p, None, MsFlags::MS_BIND, None),
    }
}

/// `linux.devices`: each node made at its path (parents created, whatever was there
/// replaced), with its mode and owner, as runc makes them.
pub fn devices(devices: &[runvm_protocol::DeviceSpec]) -> Result<()> {
    for d in devices {
        let p = Path::new(&d.path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("linux.devices: mkdir {}", parent.display()))?;
        }
        if p.symlink_metadata().is_ok() {
            std::fs::remove_file(p)
                .with_context(|| format!("linux.devices: replacing {}", p.display()))?;
        }
        let kind = match d.kind {
            'b' => SFlag::S_IFBLK,
            'p' => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        let mode = Mode::from_bits_truncate(d.mode);
        make_node(p, kind, mode, makedev(d.major, d.minor))
            .with_context(|| format!("linux.devices: mknod {}", p.display()))?;
        // mknod is subject to the umask; the node just made is no symlink.
        nix::sys::stat::fchmodat(None, p, mode, nix::sys::stat::FchmodatFlags::FollowSymlink)
            .with_context(|| format!("linux.devices: chmod {}", p.display()))?;
        nix::unistd::chown(
            p,
            Some(nix::unistd::Uid::from_raw(d.uid)),
            Some(nix::unistd::Gid::from_raw(d.gid)),
        )
        .with_context(|| format!("linux.devices: chown {}", p.display()))?;
    }
    Ok(())
}

/// Makes a device node at `p`. Where the container's `/dev` is no tmpfs of its own (a
/// config without a `/dev` mount), `p` is on the host's share, and the host refuses
/// device nodes to a container without `CAP_MKNOD` (the file server keeps only the
/// container's capabilities). Then, as runc does where it cannot make nodes (in a user
/// namespace), the node is made in a tmpfs of the init's, mounted for the moment beside
/// `p`, and bind-mounted on an empty file at `p`; the tmpfs is then detached and its
/// directory removed. The host sees an empty file, the container a working device.
fn make_node(p: &Path, kind: SFlag, mode: Mode, dev: libc::dev_t) -> Result<()> {
    match mknod(p, kind, mode, dev) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            let dir = p.with_file_name(".runvm-node");
            std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            let made = (|| {
                do_mount(
                    Some("tmpfs"),
                    &dir,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                    Some("mode=0700,size=4k"),
                )?;
                let node = dir.join("node");
                mknod(&node, kind, mode, dev)
                    .with_context(|| format!("mknod {}", node.display()))?;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(p)
                    .with_context(|| format!("creating the mount point {}", p.display()))?;
                do_mount(
                    Some(&node.to_string_lossy()),
                    p,
                    None,
                    MsFlags::MS_BIND,
                    None,
                )
            })();
            let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&dir);
            made
        }
        Err(e) => Err(Error::new(e.to_string())),
    }
}

/// The usual device nodes and links of a container's `/dev` (what runc creates).
fn dev_nodes() -> Result<()> {
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = Path::new("/dev").join(name);
        let mode = Mode::from_bits_truncate(0o666);
        if p.symlink_metadata().is_ok() {
            // Already there (a /dev that is not a fresh tmpfs).
            continue;
        }
        make_node(&p, SFlag::S_IFCHR, mode, makedev(major, minor))
            .with_context(|| format!("mknod {}", p.display()))?;
        // mknod is subject to the umask; set the mode explicitly.
        nix::sys::stat::fchmodat(None, &p, mode, nix::sys::stat::FchmodatFlags::FollowSymlink)
            .with_context(|| format!("chmod {}", p.display()))?;
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/core", "/proc/kcore"),
    ] {
        if Path::new(link).symlink_metadata().is_ok() {
            continue;
        }
        std::os::unix::fs::symlink(target, link).with_context(|| format!("symlink {link}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_test_mode_checks_the_device_name_and_binds_nothing() {
        let source = ShareSource::Directories(PathBuf::from("/nonexistent"));
        bind_share_device("virtio-mmio.3", &source).unwrap();
        unbind_share_device("virtio-mmio.3", &source).unwrap();
        assert!(bind_share_device("virtio-mmio.3/..", &source).is_err());
        assert!(unbind_share_device("platform", &source).is_err());
    }
}
