//! `ps`: the container's processes. The table lists the guest's processes (pid in the
//! container, user, command, from the guest's `/proc`); `--format json` prints the
//! container's **host** pids (the monitor, which holds the VM, and the `runvm exec`
//! processes that wait for exec'd ones), as runc prints its cgroup's pids: `docker top`
//! runs the host's `ps -ef` and keeps the lines of those pids.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use runvm_protocol::GuestProcess;

use crate::monitor::api::{self, ControlResponse, Request};
use crate::state::{ContainerState, Status};

pub fn ps(root: &Option<PathBuf>, id: &str, format: &str, ps_options: &[String]) -> Result<i32> {
    let table = match format {
        "table" => true,
        "json" => false,
        other => bail!("invalid format option {other:?}: use table or json"),
    };
    if table && !ps_options.is_empty() {
        bail!(
            "ps options {ps_options:?} are not supported: runvm lists the guest's processes itself (no host ps to pass them to)"
        );
    }
    let state = super::load(root, id)?;
    let root_dir = super::root_dir(root);
    if state.status(&root_dir) == Status::Stopped {
        if table {
            bail!("container not running");
        }
        println!("[]");
        return Ok(0);
    }
    let dir = ContainerState::runtime_dir(&root_dir, id);
    let req = Request::Processes { guest: table };
    match api::request_control(&dir, &req, Duration::from_secs(10))? {
        ControlResponse::Processes { host_pids, guest } => {
            if table {
                print!("{}", render_table(&guest, &users(&state)));
            } else {
                println!("{}", serde_json::to_string(&host_pids)?);
            }
            Ok(0)
        }
        ControlResponse::Error(e) => bail!("cannot list the processes of container {id:?}: {e}"),
        other => {
            bail!("cannot list the processes of container {id:?}: unexpected answer {other:?}")
        }
    }
}

/// Sets this process's command line as `ps` shows it (`/proc/self/cmdline`) to `title`,
/// cut to the length of the original one: the monitor calls it, so `docker top` (the
/// host's `ps -ef` of the pids of `ps --format json`) shows what the VM runs instead of
/// runvm's long `create` command line.
pub fn set_process_title(title: &str) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name (which may hold spaces) start at field 3; arg_start
    // and arg_end are fields 48 and 49.
    let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
        return;
    };
    let f: Vec<&str> = rest.split(' ').collect();
    let num = |i: usize| f.get(i).and_then(|s| s.trim().parse::<usize>().ok());
    let (Some(start), Some(end)) = (num(45), num(46)) else {
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

/// uid → name from the container's `/etc/passwd` on the host (its root filesystem).
fn users(state: &ContainerState) -> Vec<(u32, String)> {
    let text = std::fs::read_to_string(state.rootfs.join("etc/passwd")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let uid = f.nth(1)?.parse().ok()?;
            Some((uid, name.to_string()))
        })
        .collect()
}

/// The guest's processes as a table: `PID PPID USER RSS COMMAND`.
pub fn render_table(procs: &[GuestProcess], users: &[(u32, String)]) -> String {
    let mut out = format!(
        "{:>7} {:>7} {:<10} {:>8} CMD\n",
        "PID", "PPID", "USER", "RSS"
    );
    for p in procs {
        let user = users
            .iter()
            .find(|(u, _)| *u == p.uid)
            .map_or_else(|| p.uid.to_string(), |(_, n)| n.clone());
        out.push_str(&format!(
            "{:>7} {:>7} {:<10} {:>8} {}\n",
            p.pid, p.ppid, user, p.rss_kib, p.cmd
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_title_replaces_the_command_line() {
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "container::ps::tests::title_child",
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
        if std::env::var_os("RUNVM_TITLE_CHILD").is_none() {
            return;
        }
        set_process_title("runvm-vm c1: sleep 10");
        let cmdline = std::fs::read("/proc/self/cmdline").unwrap();
        let text = String::from_utf8_lossy(&cmdline);
        assert!(text.starts_with("runvm-vm c1: sleep 10"), "{text:?}");
    }

    #[test]
    fn the_table_names_users_and_keeps_unknown_uids() {
        let procs = [
            GuestProcess {
                pid: 1,
                ppid: 0,
                uid: 0,
                cmd: "sleep 100".into(),
                rss_kib: 500,
            },
            GuestProcess {
                pid: 7,
                ppid: 1,
                uid: 4242,
                cmd: "[kworker]".into(),
                rss_kib: 0,
            },
        ];
        let t = render_table(&procs, &[(0, "root".into())]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains("PID") && lines[0].ends_with("CMD"));
        assert!(lines[1].contains(" root ") && lines[1].ends_with("sleep 100"));
        assert!(lines[2].contains(" 4242 ") && lines[2].ends_with("[kworker]"));
    }
}
