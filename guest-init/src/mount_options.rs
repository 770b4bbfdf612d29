//! OCI mount option words (`"nosuid"`, `"rbind"`, `"mode=755"`) parsed into mount flags,
//! propagation flags and file-system data, as runc's `parseMountOptions` does. Pure
//! parsing: used by the container's own mounts and by its bind mounts.

use nix::mount::MsFlags;

/// Mount flags and file-system data parsed from OCI option words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// Propagation flags in the order given, each applied on its own after the mount
    /// (as runc does; `MS_REC` marks the recursive ones).
    pub propagation: Vec<MsFlags>,
    /// The words that are not flags, comma-joined (`mode=755,size=65536k`).
    pub data: String,
}

/// Words that set mount flags. runc's recursive attribute words (`rro`, `rnosuid`, …)
/// mean the same here: ro/nosuid/nodev/noexec of a bind mount apply to every mount below
/// it already (see `binds`), and a new mount of another type has nothing below it yet.
const SETTING: [(&str, MsFlags); 19] = [
    ("ro", MsFlags::MS_RDONLY),
    ("nosuid", MsFlags::MS_NOSUID),
    ("nodev", MsFlags::MS_NODEV),
    ("noexec", MsFlags::MS_NOEXEC),
    ("sync", MsFlags::MS_SYNCHRONOUS),
    ("dirsync", MsFlags::MS_DIRSYNC),
    ("mand", MsFlags::MS_MANDLOCK),
    ("noatime", MsFlags::MS_NOATIME),
    ("nodiratime", MsFlags::MS_NODIRATIME),
    ("relatime", MsFlags::MS_RELATIME),
    ("strictatime", MsFlags::MS_STRICTATIME),
    ("bind", MsFlags::MS_BIND),
    ("rbind", MsFlags::MS_BIND.union(MsFlags::MS_REC)),
    ("remount", MsFlags::MS_REMOUNT),
    ("rro", MsFlags::MS_RDONLY),
    ("rnosuid", MsFlags::MS_NOSUID),
    ("rnodev", MsFlags::MS_NODEV),
    ("rnoexec", MsFlags::MS_NOEXEC),
    // Not a flag in runc's table either, but it must not become data.
    ("defaults", MsFlags::empty()),
];

/// Words that clear mount flags (the opposites of some of [`SETTING`]).
const CLEARING: [(&str, MsFlags); 14] = [
    ("rw", MsFlags::MS_RDONLY),
    ("suid", MsFlags::MS_NOSUID),
    ("dev", MsFlags::MS_NODEV),
    ("exec", MsFlags::MS_NOEXEC),
    ("async", MsFlags::MS_SYNCHRONOUS),
    ("nomand", MsFlags::MS_MANDLOCK),
    ("atime", MsFlags::MS_NOATIME),
    ("diratime", MsFlags::MS_NODIRATIME),
    ("norelatime", MsFlags::MS_RELATIME),
    ("nostrictatime", MsFlags::MS_STRICTATIME),
    ("rrw", MsFlags::MS_RDONLY),
    ("rsuid", MsFlags::MS_NOSUID),
    ("rdev", MsFlags::MS_NODEV),
    ("rexec", MsFlags::MS_NOEXEC),
];

/// Words that set the propagation of the mount.
const PROPAGATION: [(&str, MsFlags); 8] = [
    ("private", MsFlags::MS_PRIVATE),
    ("rprivate", MsFlags::MS_PRIVATE.union(MsFlags::MS_REC)),
    ("shared", MsFlags::MS_SHARED),
    ("rshared", MsFlags::MS_SHARED.union(MsFlags::MS_REC)),
    ("slave", MsFlags::MS_SLAVE),
    ("rslave", MsFlags::MS_SLAVE.union(MsFlags::MS_REC)),
    ("unbindable", MsFlags::MS_UNBINDABLE),
    ("runbindable", MsFlags::MS_UNBINDABLE.union(MsFlags::MS_REC)),
];

fn lookup(table: &[(&str, MsFlags)], word: &str) -> Option<MsFlags> {
    table.iter().find(|(w, _)| *w == word).map(|(_, f)| *f)
}

/// runc's `parseMountOptions`: known words set or clear flags in order (a later word wins),
/// propagation words are kept apart in order, and everything else is file-system data.
pub fn parse(options: &[String]) -> MountOptions {
    let mut flags = MsFlags::empty();
    let mut propagation = Vec::new();
    let mut data: Vec<&str> = Vec::new();
    for word in options.iter().map(String::as_str) {
        if let Some(set) = lookup(&SETTING, word) {
            flags |= set;
        } else if let Some(clear) = lookup(&CLEARING, word) {
            flags -= clear;
        } else if let Some(p) = lookup(&PROPAGATION, word) {
            propagation.push(p);
        } else {
            data.push(word);
        }
    }
    MountOptions {
        flags,
        propagation,
        data: data.join(","),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split(',').map(String::from).collect()
    }

    #[test]
    fn mount_options_split_into_flags_and_data() {
        let o = parse(&words("nosuid,strictatime,mode=755,size=65536k"));
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.data, "mode=755,size=65536k");
        assert!(o.propagation.is_empty());

        // Propagation words stay apart, in order, one flag set each.
        let o = parse(&words("rbind,rslave,private"));
        assert_eq!(
            o.propagation,
            [MsFlags::MS_SLAVE | MsFlags::MS_REC, MsFlags::MS_PRIVATE]
        );

        // runc's recursive attribute words are the plain ones.
        let o = parse(&words("rbind,rro,rnosuid,rnodev,rnoexec"));
        assert_eq!(
            o.flags,
            MsFlags::MS_BIND
                | MsFlags::MS_REC
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC
        );
        assert_eq!(o.data, "");
        assert_eq!(parse(&words("rro,rrw")).flags, MsFlags::empty());

        let o = parse(&words("ro,nosuid,nodev,noexec,relatime"));
        assert_eq!(
            o.flags,
            MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_RELATIME
        );
        assert_eq!(o.data, "");

        // Later words win, and "clear" words undo earlier ones.
        let o = parse(&words("ro,noexec,rw,exec,defaults"));
        assert_eq!(o.flags, MsFlags::empty());

        let o = parse(&words(
            "rbind,rprivate,newinstance,ptmxmode=0666,mode=0620,gid=5",
        ));
        assert_eq!(o.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(o.propagation, [MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
        assert_eq!(o.data, "newinstance,ptmxmode=0666,mode=0620,gid=5");

        assert_eq!(parse(&[]).flags, MsFlags::empty());
    }
}
