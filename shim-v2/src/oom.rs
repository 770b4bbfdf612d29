//! OOM events: the container's host cgroup (cgroup v2) counts the guest's OOM kills in
//! its `memory.events` (`oom_kill`; runvm's monitor raises it for each kill the guest
//! reports), and the shim watches that file as containerd's runc shim does, one
//! `TaskOOM` event per rise.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Why the OOM watch could not start.
#[derive(Debug, thiserror::Error)]
pub enum OomWatchError {
    #[error("process {pid} has no cgroup v2 path in /proc/{pid}/cgroup (OOM events are watched on cgroup v2 only)")]
    NoCgroup { pid: u32 },
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The cgroup v2 path of `pid` from a `/proc/PID/cgroup` text (its `0::` line).
fn cgroup_v2_path(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .filter(|p| p.starts_with('/'))
}

/// `oom_kill` of a `memory.events` text.
fn oom_kills(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Watches the `memory.events` of the cgroup `pid` is in now (the container's, just after
/// create) and calls `on_oom` once for each OOM kill counted from now on, until the
/// cgroup is removed.
pub fn watch(pid: u32, on_oom: impl Fn() + Send + 'static) -> Result<(), OomWatchError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let cgroup = cgroup_v2_path(&text).ok_or(OomWatchError::NoCgroup { pid })?;
    let events = Path::new("/sys/fs/cgroup")
        .join(cgroup.trim_start_matches('/'))
        .join("memory.events");
    let watch_error = |source| OomWatchError::Watch {
        path: events.clone(),
        source,
    };
    // SAFETY: inotify_init1 takes flags only and returns a new descriptor or -1.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(watch_error(std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel just made this descriptor; nothing else owns it.
    let inotify = unsafe { OwnedFd::from_raw_fd(fd) };
    let c_path = std::ffi::CString::new(events.as_os_str().as_encoded_bytes())
        .map_err(|e| watch_error(std::io::Error::other(e)))?;
    // SAFETY: a valid inotify descriptor and a NUL-terminated path that outlives the call.
    if unsafe { libc::inotify_add_watch(fd, c_path.as_ptr(), libc::IN_MODIFY) } < 0 {
        return Err(watch_error(std::io::Error::last_os_error()));
    }
    let mut seen = oom_kills(&std::fs::read_to_string(&events).unwrap_or_default());
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: read into a buffer of the length given.
            let n = unsafe { libc::read(inotify.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            if n <= 0 {
                return;
            }
            // The file is gone with its cgroup: the watch ended (IN_IGNORED), and a read
            // fails.
            let Ok(text) = std::fs::read_to_string(&events) else {
                return;
            };
            let now = oom_kills(&text);
            for _ in seen..now {
                on_oom();
            }
            seen = seen.max(now);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v2_path_and_the_kill_count_are_read() {
        let cgroup = "12:pids:/x\n0::/default/ctr-1\n";
        assert_eq!(cgroup_v2_path(cgroup), Some("/default/ctr-1"));
        assert_eq!(cgroup_v2_path("3:memory:/docker/x\n"), None);
        let events = "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(oom_kills(events), 2);
        assert_eq!(oom_kills(""), 0);
    }
}
