//! The layers of an overlay mount, from its mountinfo entry ([`crate::mountinfo`]).
//!
//! Inside `lowerdir`, layers are separated by `:`, and overlayfs itself lets a backslash
//! escape the next character (`\:` is a colon inside a path); `upperdir` is escaped the
//! same way.

use std::path::{Path, PathBuf};

use crate::mountinfo::MountEntry;

/// An overlay mount runvm cannot take apart.
#[derive(Debug, thiserror::Error)]
#[error("the overlay mount on {root} has {why}; runvm cannot use it as a root filesystem")]
pub struct UnsupportedOverlay {
    pub root: PathBuf,
    pub why: String,
}

/// The layers of an overlay mount, as the mount options name them (possibly relative).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayLayers {
    /// Top layer first (overlayfs `lowerdir` order).
    pub lower: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
}

/// Splits an overlay `lowerdir` value at unescaped `:` and removes overlayfs's backslash
/// escapes. An empty element (`a::b`, the data-only layers of newer kernels) is an error.
pub fn split_lowerdir(value: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut layers = Vec::new();
    let mut cur = Vec::new();
    let mut it = value.iter();
    while let Some(&c) = it.next() {
        match c {
            b'\\' => match it.next() {
                Some(&n) => cur.push(n),
                None => return Err("a lowerdir ending in a backslash".into()),
            },
            b':' => layers.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    layers.push(cur);
    if layers.iter().any(Vec::is_empty) {
        return Err("an empty lowerdir element (data-only layers are not supported)".into());
    }
    Ok(layers)
}

/// The layers of an overlay mount entry. Paths are as the mount options give them;
/// relative ones are resolved by the caller.
pub fn overlay_layers(e: &MountEntry, root: &Path) -> Result<OverlayLayers, UnsupportedOverlay> {
    use std::os::unix::ffi::OsStrExt;
    let unsupported = |why: String| UnsupportedOverlay {
        root: root.to_path_buf(),
        why,
    };
    let path = |b: &[u8]| PathBuf::from(std::ffi::OsStr::from_bytes(b));
    let mut lower = None;
    let mut upper = None;
    for o in &e.super_options {
        if let Some(v) = o.strip_prefix(b"lowerdir=") {
            let layers = split_lowerdir(v).map_err(unsupported)?;
            lower = Some(layers.iter().map(|l| path(l)).collect::<Vec<_>>());
        } else if let Some(v) = o.strip_prefix(b"upperdir=") {
            // overlayfs escapes upperdir and workdir like lowerdir elements.
            let mut layers = split_lowerdir(v).map_err(unsupported)?;
            if layers.len() != 1 {
                return Err(unsupported("an upperdir with an unescaped ':'".into()));
            }
            upper = layers.pop().map(|l| path(&l));
        } else if o.starts_with(b"lowerdir+=") || o.starts_with(b"datadir+=") {
            return Err(unsupported(
                "layers given with lowerdir+/datadir+ (not supported yet)".into(),
            ));
        }
    }
    let lower = lower.ok_or_else(|| unsupported("no lowerdir option".into()))?;
    Ok(OverlayLayers { lower, upper })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mountinfo::{mount_at, parse};

    const DOCKER: &str = "1049 29 0:120 / /var/lib/docker/overlay2/5f0c/merged rw,relatime shared:570 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/ABC:/var/lib/docker/overlay2/l/DEF,upperdir=/var/lib/docker/overlay2/5f0c/diff,workdir=/var/lib/docker/overlay2/5f0c/work\n";

    #[test]
    fn docker_overlay_lines_give_their_layers() {
        let entries = parse(DOCKER.as_bytes()).unwrap();
        let e = mount_at(&entries, Path::new("/var/lib/docker/overlay2/5f0c/merged")).unwrap();
        assert_eq!(e.fstype, "overlay");
        assert_eq!(e.root, b"/");
        let l = overlay_layers(e, Path::new("/x")).unwrap();
        assert_eq!(
            l.lower,
            vec![
                PathBuf::from("/var/lib/docker/overlay2/l/ABC"),
                PathBuf::from("/var/lib/docker/overlay2/l/DEF")
            ]
        );
        assert_eq!(
            l.upper,
            Some(PathBuf::from("/var/lib/docker/overlay2/5f0c/diff"))
        );
        assert!(mount_at(&entries, Path::new("/var/lib/docker")).is_none());
    }

    #[test]
    fn escaped_spaces_commas_and_colons_in_layer_paths() {
        // A mount point with a space, a layer with a comma (overlayfs escapes it as \054
        // in its options) and one with a colon (escaped by the user as "\:", whose
        // backslash mountinfo shows as \134).
        let line = br"7 1 0:9 / /tmp/my\040root rw - overlay overlay rw,lowerdir=/l/a\054b:/l/c\134:d:/l/e\040f,upperdir=/u/x\054y,workdir=/w,index=off";
        let entries = parse(line).unwrap();
        let e = mount_at(&entries, Path::new("/tmp/my root")).unwrap();
        let l = overlay_layers(e, Path::new("/tmp/my root")).unwrap();
        assert_eq!(
            l.lower,
            vec![
                PathBuf::from("/l/a,b"),
                PathBuf::from("/l/c:d"),
                PathBuf::from("/l/e f")
            ]
        );
        assert_eq!(l.upper, Some(PathBuf::from("/u/x,y")));
    }

    #[test]
    fn long_lowerdir_lists_and_relative_docker_paths() {
        let lowers: Vec<String> = (0..125)
            .map(|i| format!("l/LAYER{i:03}ABCDEFGHIJKLMNOPQRSTU"))
            .collect();
        let line = format!(
            "99 1 0:50 / /var/lib/docker/overlay2/abc/merged rw,relatime - overlay overlay rw,lowerdir={},upperdir=abc/diff,workdir=abc/work",
            lowers.join(":")
        );
        let mut text = String::from(DOCKER);
        text.push_str(&line);
        text.push('\n');
        let entries = parse(text.as_bytes()).unwrap();
        assert_eq!(entries.len(), 2);
        let e = mount_at(&entries, Path::new("/var/lib/docker/overlay2/abc/merged")).unwrap();
        let l = overlay_layers(e, Path::new("/r")).unwrap();
        assert_eq!(l.lower.len(), 125);
        assert_eq!(l.lower[0], PathBuf::from(&lowers[0]));
        assert_eq!(l.lower[124], PathBuf::from(&lowers[124]));
        assert_eq!(l.upper, Some(PathBuf::from("abc/diff")));
    }

    #[test]
    fn a_lower_only_overlay_has_no_upper_layer() {
        let entries = parse(b"21 20 0:30 / /r rw - overlay overlay ro,lowerdir=/a:/b\n").unwrap();
        let l = overlay_layers(&entries[0], Path::new("/r")).unwrap();
        assert_eq!(l.upper, None);
        assert_eq!(l.lower.len(), 2);
    }

    #[test]
    fn unsupported_layer_options_are_errors() {
        for opts in [
            "rw,lowerdir=/a::/b",
            "rw,upperdir=/u",
            "rw,lowerdir=/a\\",
            "rw,lowerdir+=/a,lowerdir+=/b",
        ] {
            let line = format!("1 0 0:1 / /x rw - overlay overlay {opts}");
            let entries = parse(line.as_bytes()).unwrap();
            let e = &entries[0];
            assert!(overlay_layers(e, Path::new("/x")).is_err(), "{opts}");
        }
    }
}
