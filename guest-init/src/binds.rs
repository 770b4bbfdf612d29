//! The container's bind mounts: a host file or directory is an entry of the container's
//! share ([`MountSpec::share`], live both ways), a host UNIX socket is the listening
//! socket of one of init's relays ([`MountSpec::relay`], see `socket_relay`).
//!
//! The workload's child takes a detached copy of each source (`open_tree`, recursive for
//! `rbind`) while init's `/run` is still visible ([`prepare`]); after the root switch it
//! makes the mount point inside the container's root as runc does (`in_root`), attaches
//! the copy there in the order of the spec's mounts, and applies the option words: `ro`,
//! `nosuid`, `nodev`, `noexec` and the access-time words (to every mount of the copy for
//! `rbind`), then the propagation words one by one ([`Prepared::attach`]).

use crate::error::{Context, Error, Result};
use crate::in_root::{self, Kind};
use crate::mount_api::{self, MountAttr};
use crate::mount_options::{self, MountOptions};
use crate::mounts::{self, Paths};
use nix::mount::MsFlags;
use runvm_protocol::MountSpec;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

/// A detached copy of one bind mount's source.
struct Tree {
    fd: OwnedFd,
    kind: Kind,
    recursive: bool,
}

/// Detached copies of the bind mounts' sources, by index in the spec's mounts.
#[derive(Default)]
pub struct Prepared {
    trees: Vec<Option<Tree>>,
}

/// Takes a detached copy of the source of every bind mount in `mounts`: its entry in the
/// share, or its relay's socket. Runs in the workload's child, before the root switch.
pub fn prepare(mounts: &[MountSpec], paths: &Paths) -> Result<Prepared> {
    let mut trees = Vec::with_capacity(mounts.len());
    for m in mounts {
        if m.fstype != "bind" {
            trees.push(None);
            continue;
        }
        let recursive = mount_options::parse(&m.options)
            .flags
            .contains(MsFlags::MS_REC);
        let source = match (&m.share, m.relay) {
            (Some(name), None) => paths
                .share()
                .join(mounts::single_component("share entry", name)?),
            (None, Some(relay)) => paths.relay_socket(relay),
            _ => {
                return Err(Error::new(format!(
                    "bind mount on {}: the host must give either a share entry or a socket \
                     relay for it",
                    m.destination
                )))
            }
        };
        trees.push(Some(clone_source(&source, recursive, &m.destination)?));
    }
    Ok(Prepared { trees })
}

fn clone_source(source: &Path, recursive: bool, destination: &str) -> Result<Tree> {
    let fd = mount_api::clone_tree(source, recursive).with_context(|| {
        format!(
            "bind mount on {destination}: take its source {}",
            source.display()
        )
    })?;
    let kind = match mount_api::file_type(&fd) {
        Ok(libc::S_IFDIR) => Kind::Dir,
        Ok(libc::S_IFLNK) => {
            return Err(Error::new(format!(
                "bind mount on {destination}: its source {} is a symlink",
                source.display()
            )))
        }
        Ok(_) => Kind::NonDir,
        Err(e) => {
            return Err(Error::new(format!(
                "bind mount on {destination}: stat {}: {e}",
                source.display()
            )))
        }
    };
    Ok(Tree {
        fd,
        kind,
        recursive,
    })
}

impl Prepared {
    /// Attaches the copy of mount `index` (`m`) on its destination inside the container's
    /// root (the caller's `/`), making the mount point if it is missing, then applies its
    /// options.
    pub fn attach(&mut self, index: usize, m: &MountSpec) -> Result<()> {
        let tree = self
            .trees
            .get_mut(index)
            .and_then(Option::take)
            .ok_or_else(|| {
                Error::new(format!(
                    "mount on {}: bind mount was not prepared",
                    m.destination
                ))
            })?;
        let root = std::fs::File::open("/").context("open the container's root")?;
        let target = in_root::mount_point(root.as_fd(), &m.destination, tree.kind)?;
        mount_api::attach_tree(tree.fd.as_fd(), target.as_fd())
            .with_context(|| format!("bind mount on {}", m.destination))?;
        let opts = mount_options::parse(&m.options);
        let attr = flag_attrs(&opts);
        if attr.attr_set != 0 || attr.attr_clr != 0 {
            mount_api::set_attr_fd(tree.fd.as_fd(), tree.recursive, &attr).with_context(|| {
                format!("bind mount on {}: apply {:?}", m.destination, m.options)
            })?;
        }
        for propagation in &opts.propagation {
            let attr = MountAttr {
                propagation: (*propagation - MsFlags::MS_REC).bits(),
                ..Default::default()
            };
            let recursive = propagation.contains(MsFlags::MS_REC);
            mount_api::set_attr_fd(tree.fd.as_fd(), recursive, &attr).with_context(|| {
                format!(
                    "bind mount on {}: set propagation {:?}",
                    m.destination, m.options
                )
            })?;
        }
        Ok(())
    }
}

/// The mount attributes the option words of a bind mount ask for. Flags it does not name
/// stay as the source has them (an `rw` bind of a read-only source stays read-only).
fn flag_attrs(opts: &MountOptions) -> MountAttr {
    let mut attr = MountAttr::default();
    for (flag, bit) in [
        (MsFlags::MS_RDONLY, mount_api::MOUNT_ATTR_RDONLY),
        (MsFlags::MS_NOSUID, mount_api::MOUNT_ATTR_NOSUID),
        (MsFlags::MS_NODEV, mount_api::MOUNT_ATTR_NODEV),
        (MsFlags::MS_NOEXEC, mount_api::MOUNT_ATTR_NOEXEC),
        (MsFlags::MS_NODIRATIME, mount_api::MOUNT_ATTR_NODIRATIME),
    ] {
        if opts.flags.contains(flag) {
            attr.attr_set |= bit;
        }
    }
    // One access-time mode: strictatime before noatime before relatime.
    let atime = if opts.flags.contains(MsFlags::MS_STRICTATIME) {
        Some(mount_api::MOUNT_ATTR_STRICTATIME)
    } else if opts.flags.contains(MsFlags::MS_NOATIME) {
        Some(mount_api::MOUNT_ATTR_NOATIME)
    } else if opts.flags.contains(MsFlags::MS_RELATIME) {
        Some(mount_api::MOUNT_ATTR_RELATIME)
    } else {
        None
    };
    if let Some(mode) = atime {
        attr.attr_clr |= mount_api::MOUNT_ATTR_ATIME;
        attr.attr_set |= mode;
    }
    attr
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split(',').map(String::from).collect()
    }

    #[test]
    fn option_words_become_mount_attributes() {
        let a = flag_attrs(&mount_options::parse(&words(
            "rbind,ro,nosuid,nodev,noexec",
        )));
        assert_eq!(
            a,
            MountAttr {
                attr_set: mount_api::MOUNT_ATTR_RDONLY
                    | mount_api::MOUNT_ATTR_NOSUID
                    | mount_api::MOUNT_ATTR_NODEV
                    | mount_api::MOUNT_ATTR_NOEXEC,
                ..Default::default()
            }
        );
        // Docker's plain `-v`: nothing to change.
        assert_eq!(
            flag_attrs(&mount_options::parse(&words("rbind,rprivate"))),
            MountAttr::default()
        );
        let a = flag_attrs(&mount_options::parse(&words("bind,noatime,nodiratime")));
        assert_eq!(
            a.attr_set,
            mount_api::MOUNT_ATTR_NOATIME | mount_api::MOUNT_ATTR_NODIRATIME
        );
        assert_eq!(a.attr_clr, mount_api::MOUNT_ATTR_ATIME);
    }
}
