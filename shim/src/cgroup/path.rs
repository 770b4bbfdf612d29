//! Where the container's cgroup is: `linux.cgroupsPath` as runc reads it, either a
//! cgroupfs path (absolute, or relative to the monitor's own cgroup) or, with
//! `--systemd-cgroup`, a systemd `slice:prefix:name` turned into runc's path.

use super::CgroupError;

/// How `linux.cgroupsPath` is written: a cgroupfs path, or (with `--systemd-cgroup`)
/// systemd's `slice:prefix:name`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PathSyntax {
    #[default]
    Cgroupfs,
    Systemd,
}

impl PathSyntax {
    /// The syntax the global `--systemd-cgroup` flag selects.
    pub fn from_systemd_flag(systemd_cgroup: bool) -> Self {
        if systemd_cgroup {
            Self::Systemd
        } else {
            Self::Cgroupfs
        }
    }
}

/// Turns a systemd `slice:prefix:name` into a path, as runc does: the slice expands to
/// its parents (`a-b.slice` → `a.slice/a-b.slice`), the unit is `prefix-name.scope` (or
/// `name` itself when it is a slice).
pub fn systemd_path(spec: &str) -> Result<String, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [slice, prefix, name] = parts[..] else {
        return Err("with --systemd-cgroup it must be \"slice:prefix:name\"".into());
    };
    if name.is_empty() {
        return Err("the name part of \"slice:prefix:name\" is empty".into());
    }
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let expanded = expand_slice(slice)?;
    let unit = if name.ends_with(".slice") {
        expand_slice(name)?
            .rsplit('/')
            .next()
            .unwrap_or(name)
            .to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    Ok(format!("/{expanded}/{unit}"))
}

fn expand_slice(slice: &str) -> Result<String, String> {
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(format!(
            "{slice:?} is not a systemd slice (it must end in .slice)"
        ));
    };
    if slice.contains('/') {
        return Err(format!(
            "{slice:?} is not a systemd slice (it contains a /)"
        ));
    }
    if stem == "-" {
        return Ok(String::new());
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for component in stem.split('-') {
        if component.is_empty() {
            return Err(format!("{slice:?} is not a valid systemd slice name"));
        }
        path.push_str(&format!("{prefix}{component}.slice/"));
        prefix.push_str(component);
        prefix.push('-');
    }
    Ok(path.trim_end_matches('/').to_string())
}

/// The container's cgroup path inside each hierarchy (absolute, from the hierarchy's
/// root), or `None` when it gets none: no `cgroupsPath` and no limits (a relative path is
/// taken from the monitor's current cgroup, as runc does).
pub fn cgroup_path(
    cgroups_path: Option<&str>,
    syntax: PathSyntax,
    id: &str,
    has_limits: bool,
) -> Result<Option<String>, CgroupError> {
    let invalid = |p: &str, m: String| CgroupError::Path {
        path: p.to_string(),
        message: m,
    };
    let systemd = syntax == PathSyntax::Systemd;
    let path = match cgroups_path {
        None if !has_limits => return Ok(None),
        None if systemd => format!("/system.slice/runvm-{id}.scope"),
        None => format!("/runvm/{id}"),
        Some(p) if systemd => systemd_path(p).map_err(|m| invalid(p, m))?,
        Some(p) if p.starts_with('/') => p.to_string(),
        Some(p) => {
            let own = own_cgroup_v2().unwrap_or_else(|| "/".into());
            format!("{}/{p}", own.trim_end_matches('/'))
        }
    };
    if path.split('/').any(|c| c == "..") {
        return Err(invalid(&path, "must not contain \"..\"".into()));
    }
    Ok(Some(path))
}

/// This process's cgroup in the v2 hierarchy (`0::/path`).
fn own_cgroup_v2() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_paths_convert_like_runc() {
        assert_eq!(
            systemd_path("system.slice:docker:abc").unwrap(),
            "/system.slice/docker-abc.scope"
        );
        assert_eq!(
            systemd_path("user-1000.slice:libpod:x").unwrap(),
            "/user.slice/user-1000.slice/libpod-x.scope"
        );
        assert_eq!(
            systemd_path(":runvm:x").unwrap(),
            "/system.slice/runvm-x.scope"
        );
        assert_eq!(
            systemd_path("system.slice::x").unwrap(),
            "/system.slice/x.scope"
        );
        assert!(systemd_path("/abs/path").is_err());
        assert!(systemd_path("nope:docker:x").is_err());
        assert!(systemd_path("a--b.slice:p:x").is_err());
        assert!(systemd_path("system.slice:docker:").is_err());
    }

    #[test]
    fn paths_default_only_with_limits_and_refuse_dotdot() {
        assert_eq!(
            cgroup_path(None, PathSyntax::Cgroupfs, "c", false).unwrap(),
            None
        );
        assert_eq!(
            cgroup_path(None, PathSyntax::Cgroupfs, "c", true)
                .unwrap()
                .unwrap(),
            "/runvm/c"
        );
        assert_eq!(
            cgroup_path(Some("/a/b"), PathSyntax::Cgroupfs, "c", false)
                .unwrap()
                .unwrap(),
            "/a/b"
        );
        assert!(cgroup_path(Some("/a/../b"), PathSyntax::Cgroupfs, "c", false).is_err());
    }

    #[test]
    fn the_systemd_flag_reads_slice_prefix_name() {
        let systemd = |p| cgroup_path(p, PathSyntax::from_systemd_flag(true), "c", true);
        assert_eq!(
            systemd(None).unwrap().unwrap(),
            "/system.slice/runvm-c.scope"
        );
        assert_eq!(
            systemd(Some("system.slice:docker:abc")).unwrap().unwrap(),
            "/system.slice/docker-abc.scope"
        );
        // A cgroupfs path is no systemd one, and the other way round.
        assert!(systemd(Some("/a/b")).is_err());
        assert_eq!(
            cgroup_path(
                Some("system.slice:docker:abc"),
                PathSyntax::from_systemd_flag(false),
                "c",
                true
            )
            .unwrap()
            .unwrap()
            .rsplit('/')
            .next(),
            Some("system.slice:docker:abc")
        );
    }
}
