//! Container ids: what runc accepts, and nothing that could escape the state directory.

/// Why an id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("container id must not be empty")]
    Empty,
    #[error("invalid container id {0:?}: it is {1} bytes long, the limit is 1024")]
    TooLong(String, usize),
    #[error("invalid container id {0:?}: only letters, digits, '_', '+', '-' and '.' are allowed, and it cannot be '.' or '..'")]
    BadChars(String),
}

/// Checks `id` the way runc does (`^[\w+\-.]+$`, not `.` or `..`), plus a length limit.
pub fn validate(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > 1024 {
        return Err(IdError::TooLong(
            id.chars().take(32).collect::<String>() + "…",
            id.len(),
        ));
    }
    let ok = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c));
    if !ok || id == "." || id == ".." {
        return Err(IdError::BadChars(id.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_runc_accepts() {
        for id in ["abc", "a-b_c.d+e", "0123456789abcdef", "..a", "a..b"] {
            assert_eq!(validate(id), Ok(()), "{id}");
        }
    }

    #[test]
    fn refuses_paths_and_oversized_ids() {
        for id in ["", ".", "..", "a/b", "../x", "/abs", "a b", "a\0b", "ü"] {
            assert!(validate(id).is_err(), "{id:?}");
        }
        assert!(matches!(
            validate(&"a".repeat(1025)),
            Err(IdError::TooLong(_, 1025))
        ));
        assert_eq!(validate(&"a".repeat(1024)), Ok(()));
    }
}
