//! The error type of the guest init's steps, its edge to the host (the one typed error
//! below it is `cgroup::LimitsError`, which the host receives as text in `Updated`).
//!
//! An [`Error`] is a human-readable message plus the exit code that runc would use for the
//! same failure (126 not executable, 127 not found, 1 anything else). The code travels to
//! the host in `GuestMessage::StartFailed`, so every failure path ends in a message the
//! user can read, never in a panic.

use std::fmt;

/// Code for setup failures that are not about the executable itself.
pub const CODE_SETUP: i32 = 1;
/// Code for "found but cannot be executed" (runc/Docker convention).
pub const CODE_NOT_EXECUTABLE: i32 = 126;
/// Code for "no such executable" (runc/Docker convention).
pub const CODE_NOT_FOUND: i32 = 127;

/// A failure of the guest init, with the runc-like exit code it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: i32,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A setup failure (code 1).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            code: CODE_SETUP,
            message: message.into(),
        }
    }

    /// A failure with an explicit code.
    pub fn with_code(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Adds "what we were doing" to any displayable error, like `anyhow::Context`.
pub trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T>;
    fn with_context<D: fmt::Display, F: FnOnce() -> D>(self, what: F) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error::new(format!("{what}: {e}")))
    }

    fn with_context<D: fmt::Display, F: FnOnce() -> D>(self, what: F) -> Result<T> {
        self.map_err(|e| Error::new(format!("{}: {e}", what())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_prefixes_the_message_and_keeps_code_1() {
        let r: std::result::Result<(), nix::Error> = Err(nix::Error::ENOENT);
        let e = r.context("mount /proc").unwrap_err();
        assert_eq!(e.code, CODE_SETUP);
        assert_eq!(e.message, "mount /proc: ENOENT: No such file or directory");
    }
}
