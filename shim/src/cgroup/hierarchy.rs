//! The cgroup hierarchies mounted on the host (v2, v1, or a hybrid of both), from the
//! mount table, and where a cgroup path lies in each.

use std::path::PathBuf;

use crate::mountinfo::MountEntry;

/// Where cgroup file systems are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// One mounted cgroup hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    pub mountpoint: PathBuf,
    /// The hierarchy's directory that is mounted there (`/` unless in a cgroup namespace).
    pub root: String,
    /// v1 controllers (`cpu`, `cpuacct`, `name=systemd`); empty for v2.
    pub controllers: Vec<String>,
    pub v2: bool,
}

/// The cgroup hierarchies mounted under /sys/fs/cgroup.
pub fn hierarchies(mounts: &[MountEntry]) -> Vec<Hierarchy> {
    let mut out: Vec<Hierarchy> = Vec::new();
    for m in mounts {
        let mountpoint = m.mount_path();
        if !mountpoint.starts_with(CGROUP_ROOT) {
            continue;
        }
        let root = String::from_utf8_lossy(&m.root).into_owned();
        let h = match m.fstype.as_str() {
            "cgroup2" => Hierarchy {
                mountpoint,
                root,
                controllers: Vec::new(),
                v2: true,
            },
            "cgroup" => {
                let controllers: Vec<String> = m
                    .super_options
                    .iter()
                    .map(|o| String::from_utf8_lossy(o).into_owned())
                    .filter(|o| !matches!(o.as_str(), "rw" | "ro") && !o.contains("release_agent"))
                    .filter(|o| !o.contains('=') || o.starts_with("name="))
                    .filter(|o| !matches!(o.as_str(), "noprefix" | "clone_children" | "xattr"))
                    .collect();
                if controllers.is_empty() {
                    continue;
                }
                Hierarchy {
                    mountpoint,
                    root,
                    controllers,
                    v2: false,
                }
            }
            _ => continue,
        };
        // The same hierarchy mounted twice counts once.
        if !out
            .iter()
            .any(|o| o.v2 == h.v2 && o.controllers == h.controllers)
        {
            out.push(h);
        }
    }
    out
}

/// The directory of cgroup `path` in hierarchy `h`, if the hierarchy's mount shows it.
pub fn dir_in(h: &Hierarchy, path: &str) -> Option<PathBuf> {
    let root = h.root.trim_end_matches('/');
    let rel = if root.is_empty() {
        path
    } else {
        path.strip_prefix(root)?
    };
    Some(h.mountpoint.join(rel.trim_start_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mountinfo;

    #[test]
    fn hybrid_and_unified_mounts_are_found() {
        let hybrid = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 /docker/x /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
35 30 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct
40 25 0:40 / /proc rw - proc proc rw";
        let h = hierarchies(&mountinfo::parse(hybrid.as_bytes()).unwrap());
        assert_eq!(h.len(), 4, "{h:?}");
        assert!(h[0].v2);
        assert_eq!(h[1].controllers, ["name=systemd"]);
        assert_eq!(h[2].controllers, ["cpu", "cpuacct"]);
        assert_eq!(
            dir_in(&h[3], "/docker/x/c1"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/c1"))
        );
        assert_eq!(dir_in(&h[3], "/elsewhere"), None);
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate";
        let h = hierarchies(&mountinfo::parse(unified.as_bytes()).unwrap());
        assert_eq!(h.len(), 1);
        assert_eq!(
            dir_in(&h[0], "/system.slice/docker-a.scope"),
            Some(PathBuf::from("/sys/fs/cgroup/system.slice/docker-a.scope"))
        );
    }
}
