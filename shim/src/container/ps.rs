//! `ps`: the container's processes. The table lists the guest's processes (pid in the
//! container, user, command, from the guest's `/proc`); `--format json` prints the
//! container's **host** pids (the monitor, which holds the VM, and the `runvm exec`
//! processes that wait for exec'd ones), as runc prints its cgroup's pids: `docker top`
//! runs the host's `ps -ef` and keeps the lines of those pids.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use runvm_protocol::GuestProcess;

use crate::monitor::api::{self, ControlResponse, Request};
use crate::state::ContainerState;

pub fn ps(root: &Path, args: &liboci_cli::Ps) -> Result<i32> {
    let (id, ps_options) = (&args.container_id, &args.ps_options);
    let table = match args.format.as_str() {
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
    if state.status(root).can_ps().is_err() {
        // runc lists no processes for a stopped container: the header alone, or no pids.
        if table {
            print!("{}", render_table(&[], &[]));
        } else {
            println!("[]");
        }
        return Ok(0);
    }
    let dir = ContainerState::runtime_dir(root, id);
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

/// uid → name from the container's `/etc/passwd` on the host (its root filesystem, read
/// as the guest left it: inside the root, a regular file of at most 1 MiB).
fn users(state: &ContainerState) -> Vec<(u32, String)> {
    let text = crate::in_root::read(&state.rootfs, "/etc/passwd", 1 << 20)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
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
