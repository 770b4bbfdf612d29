//! What the host shares with the guest, live: the container's root filesystem and its
//! bind mounts, over one virtio-fs device per container served by virtiofsd
//! ([`daemon`]), and its bind-mounted host UNIX sockets, relayed over vsock ([`relay`]).
//!
//! The share is one directory (in virtiofsd's own mount namespace, nowhere on the host)
//! with an entry per thing shared: `root` (the container's `root.path`: Docker's overlay
//! `merged` directory, or a plain rootfs), and `m0`, `m1`, … (one per bind mount of a host
//! directory or file, in the order of the spec's `mounts`). What the container writes goes
//! straight to the host, and what the host writes is seen in the container: `docker cp`,
//! `diff`, `commit` and `export` of a running container see its files as under runc.
//!
//! Decisions:
//! - `ro` (a bind's, and `root.readonly`) is enforced by the host kernel: the staged bind is
//!   mounted read-only (recursively) in virtiofsd's namespace, so a guest kernel that
//!   ignores `ro` still gets `EROFS`.
//! - Submounts: `rbind` (Docker's `-v` and `--mount type=bind` default) shares the mounts
//!   under the source as they are at start (virtiofsd announces them, the guest sees them
//!   as submounts); `bind` shares the source's own mount only. Mounts made on the host
//!   under a source after the container started are not seen in it (as with `rprivate`,
//!   Docker's default). The propagation words (`rprivate`, `rslave`, `rshared`, …) are
//!   applied inside the guest, between the container's mounts; propagation between the
//!   host and the container cannot cross the VM boundary, so `rslave`/`rshared` behave as
//!   `rprivate` towards the host.
//! - A bind of Docker's per-container `/dev/shm` (a host tmpfs) becomes a guest tmpfs of
//!   the same size: shared memory cannot cross the VM boundary.
//! - A bind of a host UNIX socket (`-v /var/run/docker.sock:…`) is relayed: the guest
//!   listens at the destination and every connection is carried to the monitor, which
//!   connects to the host socket. Sockets cannot cross virtio-fs.
//! - What a guest can do to host files is bounded by the container's capabilities:
//!   virtiofsd keeps only those of `CAP_CHOWN`, `CAP_DAC_OVERRIDE`, `CAP_FOWNER`,
//!   `CAP_FSETID`, `CAP_MKNOD` and `CAP_SETFCAP` that are in the container's bounding set;
//!   without `CAP_CHOWN` and `CAP_SETUID`/`CAP_SETGID` it refuses files owned by ids
//!   other than the container's processes' (and root's); without `CAP_FSETID` a seccomp
//!   filter refuses it every setuid or setgid mode (see [`daemon`]).

pub mod daemon;
pub mod relay;

use std::path::{Path, PathBuf};

use runvm_protocol::{MountSpec, SHARE_ROOT};

/// One entry of the share: a host directory or file bound at `name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The name in the share (`root`, `m0`, …).
    pub name: String,
    /// The host directory or file.
    pub source: PathBuf,
    pub kind: EntryKind,
    /// Read-only on the host.
    pub readonly: bool,
    /// With the mounts under the source (`rbind`).
    pub recursive: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
}

/// Everything the host shares with one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SharePlan {
    /// The share's entries, the root first.
    pub entries: Vec<Entry>,
    /// Host sockets of the socket relays, by relay number.
    pub sockets: Vec<PathBuf>,
}

/// Why a mount cannot be shared.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("mounts: {dest}: bind mount source {source_path}: {source}")]
    Source {
        dest: String,
        source_path: String,
        source: std::io::Error,
    },
    #[error("mounts: {dest}: cannot make its mount point in the read-only root filesystem {root}: {source}")]
    MountPoint {
        dest: String,
        root: PathBuf,
        source: std::io::Error,
    },
    #[error("mounts: {dest}: bind mount of {source_path}, a {kind}, is not supported by runvm (a VM has its own devices; only directories, regular files and UNIX sockets can be bound)")]
    Unsupported {
        dest: String,
        source_path: String,
        kind: &'static str,
    },
}

/// Whether the OCI options ask for read-only.
fn is_readonly(options: &[String]) -> bool {
    options
        .iter()
        .rev()
        .find(|o| *o == "ro" || *o == "rw")
        .is_some_and(|o| o == "ro")
}

/// Whether a bind takes the mounts under its source with it (`rbind`).
fn is_recursive(options: &[String]) -> bool {
    options.iter().any(|o| o == "rbind")
}

/// The guest-side form of a bind mount of host `source` on `dest`, checked at create: a
/// share entry or a socket relay (numbered by [`SharePlan::number`]), or Docker's
/// `/dev/shm` as a tmpfs.
pub fn bind_mount(dest: &str, source: &str, options: &[String]) -> Result<MountSpec, ShareError> {
    use std::os::unix::fs::FileTypeExt;
    let md = std::fs::metadata(source).map_err(|e| ShareError::Source {
        dest: dest.to_string(),
        source_path: source.to_string(),
        source: e,
    })?;
    let spec = |share: Option<String>, relay: Option<u32>| MountSpec {
        destination: dest.to_string(),
        fstype: "bind".into(),
        source: source.to_string(),
        options: options.to_vec(),
        share,
        relay,
    };
    let ft = md.file_type();
    if ft.is_dir() && dest == "/dev/shm" {
        return Ok(shm_tmpfs(source, options));
    }
    if ft.is_dir() || ft.is_file() {
        // The name is given when the plan numbers the entries.
        return Ok(spec(Some(String::new()), None));
    }
    if ft.is_socket() {
        return Ok(spec(None, Some(0)));
    }
    let kind = if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_fifo() {
        "FIFO"
    } else {
        "special file"
    };
    Err(ShareError::Unsupported {
        dest: dest.to_string(),
        source_path: source.to_string(),
        kind,
    })
}

/// A guest tmpfs for a bind of the host's shm directory: the same size, `mode=1777`, the
/// bind's nosuid/nodev/noexec/ro words.
fn shm_tmpfs(source: &str, options: &[String]) -> MountSpec {
    let size = nix::sys::statvfs::statvfs(source)
        .ok()
        .map(|s| s.blocks() * s.fragment_size())
        .filter(|s| *s > 0)
        .unwrap_or(64 << 20);
    let mut opts: Vec<String> = options
        .iter()
        .filter(|o| ["nosuid", "nodev", "noexec", "ro", "rw"].contains(&o.as_str()))
        .cloned()
        .collect();
    opts.push("mode=1777".into());
    opts.push(format!("size={size}"));
    MountSpec {
        destination: "/dev/shm".into(),
        fstype: "tmpfs".into(),
        source: "shm".into(),
        options: opts,
        share: None,
        relay: None,
    }
}

impl SharePlan {
    /// Names the share entries and numbers the socket relays of `mounts` (converted by
    /// [`bind_mount`]), and plans the share: `rootfs` as the root, then one entry per bind.
    pub fn number(rootfs: &Path, readonly: bool, mounts: &mut [MountSpec]) -> SharePlan {
        let mut plan = SharePlan {
            entries: vec![Entry {
                name: SHARE_ROOT.into(),
                source: rootfs.to_path_buf(),
                kind: EntryKind::Dir,
                readonly,
                recursive: true,
            }],
            sockets: Vec::new(),
        };
        for m in mounts.iter_mut() {
            if m.share.is_some() {
                let name = format!("m{}", plan.entries.len() - 1);
                let kind = if Path::new(&m.source).is_dir() {
                    EntryKind::Dir
                } else {
                    EntryKind::File
                };
                plan.entries.push(Entry {
                    name: name.clone(),
                    source: PathBuf::from(&m.source),
                    kind,
                    readonly: is_readonly(&m.options),
                    recursive: is_recursive(&m.options),
                });
                m.share = Some(name);
            } else if m.relay.is_some() {
                m.relay = Some(plan.sockets.len() as u32);
                plan.sockets.push(PathBuf::from(&m.source));
            }
        }
        plan
    }

    /// On a read-only root, makes the mount points of `mounts` in the root filesystem on
    /// the host (the guest cannot: the host enforces the read-only root), as runc makes
    /// them; a writable root gets them from the guest, through the share. Mount points
    /// below an earlier mount the guest makes itself (`/dev/pts` in the `/dev` tmpfs)
    /// are the guest's to make, in that mount.
    pub fn make_mount_points(&self, mounts: &[MountSpec]) -> Result<(), ShareError> {
        let root = &self.entries[0];
        if !root.readonly {
            return Ok(());
        }
        let mut guest_made: Vec<&str> = Vec::new();
        for m in mounts {
            let below_guest_mount = guest_made.iter().any(|d| {
                m.destination
                    .strip_prefix(d.trim_end_matches('/'))
                    .is_some_and(|rest| rest.starts_with('/'))
            });
            if m.fstype != "bind" {
                guest_made.push(&m.destination);
            }
            if below_guest_mount {
                continue;
            }
            let dir = match (&m.share, m.relay) {
                (Some(name), _) => self
                    .entries
                    .iter()
                    .find(|e| &e.name == name)
                    .is_none_or(|e| e.kind == EntryKind::Dir),
                (None, Some(_)) => false,
                (None, None) => true,
            };
            crate::in_root::make_mount_point(&root.source, &m.destination, dir).map_err(
                |source| ShareError::MountPoint {
                    dest: m.destination.clone(),
                    root: root.source.clone(),
                    source,
                },
            )?;
        }
        Ok(())
    }

    /// Checks, at start, that every source is still what it was at create (Docker and
    /// Podman may replace a file between the two); the error names the mount.
    pub fn recheck(&self) -> Result<(), ShareError> {
        for e in &self.entries {
            let md = std::fs::metadata(&e.source).map_err(|source| ShareError::Source {
                dest: e.name.clone(),
                source_path: e.source.display().to_string(),
                source,
            })?;
            let same = match e.kind {
                EntryKind::Dir => md.is_dir(),
                EntryKind::File => md.is_file(),
            };
            if !same {
                return Err(ShareError::Source {
                    dest: e.name.clone(),
                    source_path: e.source.display().to_string(),
                    source: std::io::Error::other("it changed type since create"),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn directories_and_files_are_shared_sockets_relayed_devices_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let sock = dir.path().join("s");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let d = dir.path().to_str().unwrap();
        let mut mounts = vec![
            bind_mount("/data", d, &opts(&["rbind", "ro"])).unwrap(),
            bind_mount("/etc/hosts", file.to_str().unwrap(), &opts(&["bind"])).unwrap(),
            bind_mount("/run/s.sock", sock.to_str().unwrap(), &opts(&["rbind"])).unwrap(),
            bind_mount("/more", d, &opts(&["rbind", "ro", "rw"])).unwrap(),
        ];
        let plan = SharePlan::number(Path::new("/root/fs"), true, &mut mounts);
        let names: Vec<_> = mounts.iter().map(|m| (m.share.clone(), m.relay)).collect();
        assert_eq!(
            names,
            vec![
                (Some("m0".into()), None),
                (Some("m1".into()), None),
                (None, Some(0)),
                (Some("m2".into()), None),
            ]
        );
        assert_eq!(plan.entries[0].name, "root");
        assert!(plan.entries[0].readonly && plan.entries[0].recursive);
        let e = &plan.entries[1];
        assert_eq!(
            (e.kind, e.readonly, e.recursive),
            (EntryKind::Dir, true, true)
        );
        let e = &plan.entries[2];
        assert_eq!(
            (e.kind, e.readonly, e.recursive),
            (EntryKind::File, false, false)
        );
        // The last of ro/rw wins, as in runc.
        assert!(!plan.entries[3].readonly);
        assert_eq!(plan.sockets, vec![sock.clone()]);
        plan.recheck().unwrap_err(); // /root/fs does not exist
        let e = bind_mount("/dev/null", "/dev/null", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("character device") && e.contains("/dev/null"),
            "{e}"
        );
        let e = bind_mount("/x", "/no/such/dir", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("/x") && e.contains("/no/such/dir"), "{e}");
    }

    #[test]
    fn a_read_only_root_gets_its_mount_points_from_the_host() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let file = t.path().join("hosts");
        std::fs::write(&file, "").unwrap();
        let m = |dest: &str, fstype: &str| MountSpec {
            destination: dest.into(),
            fstype: fstype.into(),
            ..Default::default()
        };
        let mut mounts = vec![
            m("/dev", "tmpfs"),
            m("/dev/pts", "devpts"),
            m("/scratch", "tmpfs"),
            bind_mount("/etc/hosts", file.to_str().unwrap(), &[]).unwrap(),
            bind_mount("/data/in", t.path().to_str().unwrap(), &[]).unwrap(),
        ];
        let writable = SharePlan::number(&root, false, &mut mounts);
        writable.make_mount_points(&mounts).unwrap();
        assert!(
            !root.join("dev").exists(),
            "a writable root is the guest's to change"
        );
        let plan = SharePlan::number(&root, true, &mut mounts);
        plan.make_mount_points(&mounts).unwrap();
        assert!(root.join("dev").is_dir() && root.join("scratch").is_dir());
        assert!(
            !root.join("dev/pts").exists(),
            "made by the guest, in its /dev tmpfs"
        );
        assert!(root.join("etc/hosts").is_file());
        assert!(root.join("data/in").is_dir());
    }

    #[test]
    fn docker_shm_becomes_a_guest_tmpfs() {
        let m = bind_mount("/dev/shm", "/tmp", &opts(&["rbind", "nosuid", "rprivate"])).unwrap();
        assert_eq!(m.fstype, "tmpfs");
        assert!(m.options.contains(&"nosuid".to_string()));
        assert!(m.options.iter().any(|o| o.starts_with("size=")));
        assert_eq!((m.share, m.relay), (None, None));
    }
}
