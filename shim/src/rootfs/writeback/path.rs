//! Paths the guest writes: what a path in a write-back entry may be (relative, no empty,
//! `.` or `..` component, no NUL byte, within PATH_MAX and NAME_MAX), checked before
//! anything is looked up, and how a checked path splits into directory and name.

/// Longest path the host accepts (PATH_MAX).
pub const MAX_PATH: usize = 4096;
/// Longest path component (NAME_MAX).
pub const MAX_NAME: usize = 255;

/// Checks a path from the guest; the error says why it is refused.
pub fn check_path(p: &[u8]) -> Result<(), &'static str> {
    if p.is_empty() {
        return Err("empty");
    }
    if p.len() > MAX_PATH {
        return Err("longer than 4096 bytes");
    }
    if p[0] == b'/' {
        return Err("absolute");
    }
    if p.contains(&0) {
        return Err("contains a NUL byte");
    }
    for c in p.split(|&b| b == b'/') {
        match c {
            b"" => return Err("has an empty component"),
            b"." | b".." => return Err("has a . or .. component"),
            c if c.len() > MAX_NAME => return Err("has a component longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a symlink's target: any text the guest's symlink held, but not empty, not
/// longer than PATH_MAX and without a NUL byte (the host never follows it).
pub fn check_symlink_target(t: &[u8]) -> Result<(), &'static str> {
    if t.is_empty() || t.len() > MAX_PATH || t.contains(&0) {
        return Err("a symlink target that is empty, too long or has a NUL byte");
    }
    Ok(())
}

/// `(parent, name)` of a checked path; the parent of a name in the root is `""`.
pub fn split(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (&[], p),
    }
}

/// A path for messages.
pub fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_pass() {
        assert_eq!(check_path(b"etc/passwd"), Ok(()));
        assert_eq!(check_path(b"a"), Ok(()));
        for (bad, why) in [
            (&b""[..], "empty"),
            (b"/etc", "absolute"),
            (b"etc/", "has an empty component"),
            (b"a//b", "has an empty component"),
            (b"./a", "has a . or .. component"),
            (b"a/..", "has a . or .. component"),
            (b"a\0b", "contains a NUL byte"),
        ] {
            assert_eq!(check_path(bad), Err(why), "{}", show(bad));
        }
        assert!(check_path(&[b'n'; MAX_NAME]).is_ok());
        assert_eq!(
            check_path(&[b'n'; MAX_NAME + 1]),
            Err("has a component longer than 255 bytes")
        );
        assert_eq!(
            check_path("a/".repeat(2049).as_bytes()),
            Err("longer than 4096 bytes")
        );
        assert!(check_symlink_target(b"/anywhere/../at all").is_ok());
        assert!(check_symlink_target(b"").is_err());
        assert!(check_symlink_target(b"a\0").is_err());
    }

    #[test]
    fn paths_split_at_their_last_slash() {
        assert_eq!(split(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split(b"c"), (&b""[..], &b"c"[..]));
    }
}
