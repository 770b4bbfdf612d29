//! Finding the program of `process.args[0]` as runc does (Go's `exec.LookPath` with the
//! container's environment), and runc's exit codes for a program that cannot run: 127
//! when it is not found, 126 when it is found but cannot be executed.

use crate::error::{Error, Result, CODE_NOT_EXECUTABLE, CODE_NOT_FOUND};
use nix::errno::Errno;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// runc's mapping of an `execve` (or `stat`) errno to an exit code.
pub fn exec_errno_code(e: Errno) -> i32 {
    match e {
        Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::ENAMETOOLONG => CODE_NOT_FOUND,
        _ => CODE_NOT_EXECUTABLE,
    }
}

/// What path resolution needs to know about a candidate file.
pub trait Probe {
    /// `Ok(true)` regular file with an execute bit, `Ok(false)` exists but is not
    /// executable (or a directory), `Err(errno)` when `stat` fails.
    fn executable(&self, p: &Path) -> std::result::Result<bool, Errno>;
}

/// The real filesystem.
pub struct FsProbe;

impl Probe for FsProbe {
    fn executable(&self, p: &Path) -> std::result::Result<bool, Errno> {
        let md = std::fs::metadata(p)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT)))?;
        Ok(md.is_file() && md.permissions().mode() & 0o111 != 0)
    }
}

/// Resolves `args[0]` like runc: a name with a `/` is used as is (checked with `stat`);
/// otherwise each entry of the spec's `PATH` is tried in order (an empty entry is the
/// current directory), and a name that is found nowhere is "executable file not found in
/// $PATH". Relative results are taken relative to `cwd`.
pub fn resolve_executable(
    arg0: &str,
    env: &[String],
    cwd: &Path,
    probe: &dyn Probe,
) -> Result<PathBuf> {
    if arg0.is_empty() {
        return Err(not_found(arg0));
    }
    if arg0.contains('/') {
        return check_path(arg0, probe);
    }
    search_path(arg0, path_variable(env), cwd, probe).ok_or_else(|| not_found(arg0))
}

fn not_found(arg0: &str) -> Error {
    Error::with_code(
        CODE_NOT_FOUND,
        format!("exec: {arg0:?}: executable file not found in $PATH"),
    )
}

/// A name with a `/`: the file itself, if it is executable.
fn check_path(arg0: &str, probe: &dyn Probe) -> Result<PathBuf> {
    let p = PathBuf::from(arg0);
    match probe.executable(&p) {
        Ok(true) => Ok(p),
        Ok(false) => Err(Error::with_code(
            CODE_NOT_EXECUTABLE,
            format!("exec: {arg0:?}: permission denied"),
        )),
        Err(e) => Err(Error::with_code(
            exec_errno_code(e),
            format!("exec: {arg0:?}: stat {arg0}: {}", e.desc().to_lowercase()),
        )),
    }
}

/// The value of the last `PATH=` in `env` (runc applies the spec's env in order), or "".
fn path_variable(env: &[String]) -> &str {
    env.iter()
        .rev()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or("")
}

/// The first executable `dir/arg0` for the entries of `path`, as it would be passed to
/// `execve` (relative when the entry is).
fn search_path(arg0: &str, path: &str, cwd: &Path, probe: &dyn Probe) -> Option<PathBuf> {
    if path.is_empty() {
        return None;
    }
    path.split(':').find_map(|dir| {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(arg0);
        let absolute = cwd.join(&candidate);
        matches!(probe.executable(&absolute), Ok(true)).then_some(candidate)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeFs(HashMap<&'static str, bool>);

    impl Probe for FakeFs {
        fn executable(&self, p: &Path) -> std::result::Result<bool, Errno> {
            self.0
                .get(p.to_str().unwrap())
                .copied()
                .ok_or(Errno::ENOENT)
        }
    }

    fn fs() -> FakeFs {
        FakeFs(HashMap::from([
            ("/usr/bin/sh", true),
            ("/bin/sh", true),
            ("/bin/noexec", false),
            ("/usr/bin/noexec", true),
            ("/work/./tool", true),
            ("/work/rel/tool2", true),
            ("/abs/script", true),
            ("/abs/plain", false),
        ]))
    }

    fn env(path: Option<&str>) -> Vec<String> {
        let mut v = vec!["HOME=/root".to_string()];
        if let Some(p) = path {
            v.push(format!("PATH={p}"));
        }
        v
    }

    fn resolve(arg0: &str, path: Option<&str>) -> Result<PathBuf> {
        resolve_executable(arg0, &env(path), Path::new("/work"), &fs())
    }

    #[test]
    fn path_lookup_uses_the_spec_path_in_order() {
        assert_eq!(
            resolve("sh", Some("/usr/bin:/bin")).unwrap(),
            Path::new("/usr/bin/sh")
        );
        assert_eq!(
            resolve("sh", Some("/bin:/usr/bin")).unwrap(),
            Path::new("/bin/sh")
        );
        // A non-executable match is skipped, like Go's LookPath.
        assert_eq!(
            resolve("noexec", Some("/bin:/usr/bin")).unwrap(),
            Path::new("/usr/bin/noexec")
        );
    }

    #[test]
    fn relative_and_empty_path_entries_are_relative_to_cwd() {
        assert_eq!(
            resolve("tool", Some("/bin::/usr/bin")).unwrap(),
            Path::new("./tool")
        );
        assert_eq!(
            resolve("tool2", Some("rel")).unwrap(),
            Path::new("rel/tool2")
        );
    }

    #[test]
    fn missing_path_or_name_is_127_with_runc_message() {
        let e = resolve("sh", None).unwrap_err();
        assert_eq!(e.code, 127);
        let e = resolve("nosuchcmd", Some("/bin")).unwrap_err();
        assert_eq!(e.code, 127);
        assert_eq!(
            e.message,
            r#"exec: "nosuchcmd": executable file not found in $PATH"#
        );
        let e = resolve("", Some("/bin")).unwrap_err();
        assert_eq!(e.code, 127);
        assert_eq!(e.message, r#"exec: "": executable file not found in $PATH"#);
        // The last PATH= wins: runc applies the spec's env with os.Setenv in order.
        let mut env = env(Some("/nothing"));
        env.push("PATH=/bin".into());
        assert!(resolve_executable("sh", &env, Path::new("/"), &fs()).is_ok());
    }

    #[test]
    fn names_with_a_slash_are_not_searched() {
        assert_eq!(
            resolve("/abs/script", Some("/bin")).unwrap(),
            Path::new("/abs/script")
        );
        let e = resolve("/abs/plain", Some("/bin")).unwrap_err();
        assert_eq!(e.code, 126);
        let e = resolve("/abs/missing", Some("/bin")).unwrap_err();
        assert_eq!(e.code, 127);
        assert_eq!(
            e.message,
            r#"exec: "/abs/missing": stat /abs/missing: no such file or directory"#
        );
    }

    #[test]
    fn exec_errnos_map_like_runc() {
        assert_eq!(exec_errno_code(Errno::ENOENT), 127);
        assert_eq!(exec_errno_code(Errno::EACCES), 126);
        assert_eq!(exec_errno_code(Errno::ENOEXEC), 126);
        assert_eq!(exec_errno_code(Errno::EPERM), 126);
    }
}
