//! Processes on the host: a pid's state and start time (from `/proc/<pid>/stat`, so that
//! a reused pid is not taken for the monitor), this process's title as `ps` shows it, and
//! pid files.

use std::path::{Path, PathBuf};

/// The fields of `/proc/<pid>/stat` from field 3 (the state letter) on: the command name
/// before them may hold spaces and parentheses, so they start after the last `)`.
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.trim_end().split(' ').map(str::to_string).collect())
}

/// Field `n` (1-based, as proc(5) numbers them, at least 3) of `fields`, as a number.
fn stat_field<T: std::str::FromStr>(fields: &[String], n: usize) -> Option<T> {
    fields.get(n.checked_sub(3)?)?.parse().ok()
}

/// The state letter (`R`, `S`, `Z`, …) and start time (clock ticks since boot) of `pid`.
pub fn stat(pid: i32) -> Option<(char, u64)> {
    let fields = stat_fields(&pid.to_string())?;
    let state = fields.first()?.chars().next()?;
    Some((state, stat_field(&fields, 22)?))
}

/// Start time of `pid` in clock ticks since boot, if it is alive.
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, t)| t)
}

/// Puts `/dev/null` on the calling process's fds 0, 1 and 2 (a waiter that must hold none
/// of its caller's stdio, whose copies went elsewhere).
pub fn stdio_to_dev_null() {
    use std::os::fd::AsRawFd;
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
}

/// Sets this process's command line as `ps` shows it (`/proc/self/cmdline`) to `title`,
/// cut to the length of the original one: the monitor calls it, so `docker top` (the
/// host's `ps -ef` of the pids of `ps --format json`) shows what the VM runs instead of
/// runvm's long `create` command line.
pub fn set_title(title: &str) {
    let Some(fields) = stat_fields("self") else {
        return;
    };
    let (Some(start), Some(end)) = (
        stat_field::<usize>(&fields, 48),
        stat_field::<usize>(&fields, 49),
    ) else {
        return;
    };
    if start == 0 || end <= start + 1 {
        return;
    }
    let len = end - start;
    let bytes = title.as_bytes();
    let n = bytes.len().min(len - 1);
    // SAFETY: [arg_start, arg_end) is this process's own argument area, mapped and
    // writable (the initial stack); the kernel reads /proc/self/cmdline from it. The
    // arguments were parsed into owned strings at startup and are not read again.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), start as *mut u8, n);
        std::ptr::write_bytes((start + n) as *mut u8, 0, len - n);
    }
}

/// A pid file that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write pid file {}: {source}", path.display())]
pub struct PidFileError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Writes `pid` to `path` (`--pid-file`), if one is given.
pub fn write_pid_file_if(path: Option<&Path>, pid: u32) -> Result<(), PidFileError> {
    match path {
        Some(path) => write_pid_file(path, pid).map_err(|source| PidFileError {
            path: path.to_path_buf(),
            source,
        }),
        None => Ok(()),
    }
}

/// Writes `pid` to `path` atomically (a temporary file in the same directory, then a
/// rename), as runc does, so a reader never sees a partial pid.
fn write_pid_file(path: &Path, pid: u32) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("pid file path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, pid.to_string())?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_this_process_is_stable_and_dead_pids_have_none() {
        let me = std::process::id() as i32;
        let t = start_time(me).unwrap();
        assert_eq!(start_time(me), Some(t));
        assert_eq!(start_time(i32::MAX), None);
        assert!(matches!(stat(me), Some(('R' | 'S', _))), "{:?}", stat(me));
    }

    #[test]
    fn pid_files_are_written_whole_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pid");
        write_pid_file(&path, 1234).unwrap();
        write_pid_file(&path, 42).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "42");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(
            write_pid_file_if(Some(Path::new("/")), 1)
                .unwrap_err()
                .to_string(),
            "cannot write pid file /: pid file path has no file name"
        );
        write_pid_file_if(None, 1).unwrap();
    }

    #[test]
    fn the_title_replaces_the_command_line() {
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "host_process::tests::title_child",
                "--ignored",
                "--nocapture",
            ])
            .env("RUNVM_TITLE_CHILD", "1")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&child.stdout);
        let err = String::from_utf8_lossy(&child.stderr);
        assert!(child.status.success(), "{out}{err}");
        assert!(
            out.contains("1 passed"),
            "the child test did not run: {out}"
        );
    }

    #[test]
    #[ignore = "run by the_title_replaces_the_command_line in a child of its own"]
    fn title_child() {
        assert!(
            std::env::var_os("RUNVM_TITLE_CHILD").is_some(),
            "run by the_title_replaces_the_command_line only: it rewrites the test process's command line"
        );
        set_title("runvm-vm c1: sleep 10");
        let cmdline = std::fs::read("/proc/self/cmdline").unwrap();
        let text = String::from_utf8_lossy(&cmdline);
        assert!(text.starts_with("runvm-vm c1: sleep 10"), "{text:?}");
    }
}
