//! Reading `/proc/self/mountinfo`: the mounts this process sees, with the fields runvm
//! uses (what is mounted where, its type and super block options). The root filesystem
//! (is `root.path` an overlay?) and the host cgroup (where are the hierarchies?) both read
//! it through this one parser.
//!
//! The kernel escapes space, tab, newline and backslash in mountinfo as `\ooo` octal
//! (`\040`), and overlayfs also escapes the option separator `,` (`\054`) inside its option
//! values.

use std::path::PathBuf;

/// Where the kernel shows this process's mounts.
pub const SELF_MOUNTINFO: &str = "/proc/self/mountinfo";

/// Errors reading mountinfo.
#[derive(Debug, thiserror::Error)]
pub enum MountinfoError {
    #[error("cannot read {SELF_MOUNTINFO}: {0}")]
    Read(#[source] std::io::Error),
    #[error("{SELF_MOUNTINFO} line {line}: {why}")]
    Malformed { line: usize, why: &'static str },
}

/// One line of mountinfo, unescaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// The directory of the mounted file system that is mounted here (`/` for its root).
    pub root: Vec<u8>,
    pub mount_point: Vec<u8>,
    pub fstype: String,
    /// The super block options, split at `,` and unescaped.
    pub super_options: Vec<Vec<u8>>,
}

impl MountEntry {
    /// The mount point as a path.
    pub fn mount_path(&self) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        PathBuf::from(std::ffi::OsStr::from_bytes(&self.mount_point))
    }
}

/// Replaces every `\ooo` octal escape with its byte; anything else is kept, including a
/// `\ooo` above `\377`, which is no byte (and no escape the kernel writes).
pub fn unescape_octal(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 3 < s.len() {
            let d = &s[i + 1..i + 4];
            if d.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = u32::from(d[0] - b'0') * 64
                    + u32::from(d[1] - b'0') * 8
                    + u32::from(d[2] - b'0');
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// Parses mountinfo text. Lines that do not parse are errors (the kernel writes it).
pub fn parse(text: &[u8]) -> Result<Vec<MountEntry>, MountinfoError> {
    let mut out = Vec::new();
    for (n, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = |why| MountinfoError::Malformed { line: n + 1, why };
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let sep = fields
            .iter()
            .position(|f| *f == b"-")
            .ok_or_else(|| bad("no ' - ' separator"))?;
        if sep < 6 || fields.len() < sep + 4 {
            return Err(bad("too few fields"));
        }
        // Split before unescaping, so an escaped `,` (`\054`) does not split.
        let super_options = fields[sep + 3]
            .split(|&b| b == b',')
            .map(unescape_octal)
            .collect();
        out.push(MountEntry {
            root: unescape_octal(fields[3]),
            mount_point: unescape_octal(fields[4]),
            fstype: String::from_utf8_lossy(&unescape_octal(fields[sep + 1])).into_owned(),
            super_options,
        });
    }
    Ok(out)
}

/// The mounts of this process.
pub fn read_own() -> Result<Vec<MountEntry>, MountinfoError> {
    parse(&std::fs::read(SELF_MOUNTINFO).map_err(MountinfoError::Read)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_escapes_become_bytes() {
        assert_eq!(unescape_octal(br"a\040b\011c\012d\134e"), b"a b\tc\nd\\e");
        assert_eq!(unescape_octal(br"x\054y"), b"x,y");
        // Not an escape: kept as is.
        assert_eq!(unescape_octal(br"a\9b\04"), br"a\9b\04");
        assert_eq!(unescape_octal(b"\\"), b"\\");
        assert_eq!(unescape_octal(b""), b"");
    }

    #[test]
    fn escapes_above_255_are_kept_not_overflowed() {
        // \400 to \777 are no byte: kept as they are, never wrapped round or a panic.
        assert_eq!(unescape_octal(br"\777"), br"\777");
        assert_eq!(unescape_octal(br"a\400b\377"), b"a\\400b\xff");
        let entries =
            parse(br"30 25 0:26 / /sys/fs/cgroup/x\777y rw - cgroup2 cgroup2 rw").unwrap();
        assert_eq!(entries[0].mount_point, br"/sys/fs/cgroup/x\777y");
    }

    #[test]
    fn optional_fields_are_skipped() {
        let text = b"20 1 8:1 / /r rw shared:1 - ext4 /dev/sda1 rw\n21 20 0:30 / /r rw shared:2 master:3 - overlay overlay rw,lowerdir=/a:/b\n";
        let entries = parse(text).unwrap();
        let e = &entries[1];
        assert_eq!(e.fstype, "overlay");
        assert_eq!(
            e.super_options,
            [b"rw".to_vec(), b"lowerdir=/a:/b".to_vec()]
        );
        assert_eq!(entries[0].mount_path(), PathBuf::from("/r"));
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert!(parse(b"1 2 3\n").is_err());
        assert!(parse(b"1 2 0:1 / /x rw -\n").is_err());
    }

    #[test]
    fn this_process_mounts_are_read() {
        let entries = read_own().unwrap();
        assert!(entries.iter().any(|e| e.mount_point == b"/"));
    }
}
