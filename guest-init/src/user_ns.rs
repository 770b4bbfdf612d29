//! The container's user namespace (`linux.uidMappings`/`gidMappings`), as runc gives it:
//! the workload's ids are mapped to the guest's, which are the host's (the shared files
//! carry them unchanged), so what the container's root creates is owned on the host by
//! the id its map gives it.
//!
//! The main process makes the namespace at the very end of its setup, once its view is
//! built as the guest's root and its rlimits and OOM score are set (they need the guest's
//! capabilities, which runc applies from outside too); exec'd processes join it after
//! every other namespace. A process cannot write a map of more than its own id into the
//! namespace it has just made, so the main process forks a helper first, still in the
//! guest's namespace, that writes both maps through the main process's `/proc` directory
//! (opened before the root switch, so it does not depend on the container's `/proc`).
//! The main process then takes mount and UTS namespaces owned by the new one; its PID,
//! IPC, network and cgroup namespaces stay the guest root's.

use crate::credentials::give_stdio_to;
use crate::error::{Context, Error, Result};
use crate::spawn::read_to_eof;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::sys::wait::WaitStatus;
use nix::unistd::ForkResult;
use runvm_protocol::IdMapping;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// How a container process gets into the container's user namespace.
pub enum UserNamespace {
    /// The container has none.
    None,
    /// Make it (the main process), with these maps written through `task`, the caller's
    /// own `/proc/<pid>` directory.
    Create {
        task: OwnedFd,
        uid: Vec<IdMapping>,
        gid: Vec<IdMapping>,
    },
    /// Join the main process's (an exec'd process), from `/proc/<main>/ns/user`, whose
    /// uid map is `uid`.
    Join { ns: File, uid: Vec<IdMapping> },
}

impl UserNamespace {
    /// What the main process does: nothing without maps, else make one. Opens the
    /// caller's `/proc` directory now, while init's `/proc` is in view.
    pub fn for_main(uid: &[IdMapping], gid: &[IdMapping]) -> Result<Self> {
        if uid.is_empty() {
            return Ok(Self::None);
        }
        let task = nix::fcntl::open(
            "/proc/self",
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .context("open /proc/self for the user namespace's maps")?;
        Ok(Self::Create {
            // SAFETY: `open` just returned this descriptor and nothing else owns it.
            task: unsafe { OwnedFd::from_raw_fd(task) },
            uid: uid.to_vec(),
            gid: gid.to_vec(),
        })
    }

    /// What an exec'd process does: join `ns`, the user namespace of the container's main
    /// process `main` (read now, while init's `/proc` is in view).
    pub fn join(ns: File, main: nix::unistd::Pid) -> Result<Self> {
        let map_path = format!("/proc/{main}/uid_map");
        let map = std::fs::read_to_string(&map_path).with_context(|| format!("read {map_path}"))?;
        Ok(Self::Join {
            ns,
            uid: parse_map(&map),
        })
    }

    /// Enters the namespace; the caller then has every capability in it (and none
    /// outside), and its ids are what the map makes of them. Its stdio (the pty above
    /// all) is first given to the host id of `uid`, the user it becomes, as runc's console
    /// belongs to the container's user: inside, the guest's root owns nothing.
    pub fn enter(self, uid: u32) -> Result<()> {
        match self {
            Self::None => Ok(()),
            Self::Join { ns, uid: map } => {
                give_stdio_to_mapped(&map, uid)?;
                nix::sched::setns(&ns, CloneFlags::CLONE_NEWUSER)
                    .context("join the container's user namespace")
            }
            Self::Create {
                task,
                uid: map,
                gid,
            } => {
                give_stdio_to_mapped(&map, uid)?;
                create(&task, &map, &gid)
            }
        }
    }
}

/// Gives stdio to the host id `map` gives container user `uid`, if it maps it.
fn give_stdio_to_mapped(map: &[IdMapping], uid: u32) -> Result<()> {
    match IdMapping::host_of(map, uid) {
        Some(host_uid) => give_stdio_to(nix::unistd::Uid::from_raw(host_uid)),
        None => Ok(()),
    }
}

/// The ranges of a `/proc/<pid>/uid_map` text (lines that do not parse are skipped).
fn parse_map(text: &str) -> Vec<IdMapping> {
    text.lines()
        .filter_map(|l| {
            let mut n = l.split_whitespace().map(str::parse::<u32>);
            Some(IdMapping {
                container_id: n.next()?.ok()?,
                host_id: n.next()?.ok()?,
                size: n.next()?.ok()?,
            })
        })
        .collect()
}

/// The text of an id map: one `container host size` line per range.
fn map_text(maps: &[IdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size))
        .collect()
}

/// Makes a user namespace for the caller and has a helper write its maps.
fn create(task: &OwnedFd, uid: &[IdMapping], gid: &[IdMapping]) -> Result<()> {
    let maps = [("uid_map", map_text(uid)), ("gid_map", map_text(gid))];
    let (go_read, go_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe")?;
    let (report_read, report_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe")?;
    // SAFETY: the caller is a single-threaded child of init (a container process being
    // set up); the helper only writes the maps and ends with _exit.
    let helper = match unsafe { nix::unistd::fork() }.context("fork the id-map writer")? {
        ForkResult::Child => {
            drop((go_write, report_read));
            let result = wait_for(&go_read).and_then(|()| write_maps(task, &maps));
            let code = match result {
                Ok(()) => 0,
                Err(e) => {
                    let _ = nix::unistd::write(&report_write, e.message.as_bytes());
                    1
                }
            };
            // SAFETY: ends the forked helper without running the parent's atexit
            // handlers or flushing its copied buffers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    };
    drop((go_read, report_write));
    let unshared = nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
        .context("unshare the user namespace (linux.uidMappings)");
    // Told to go on either way: on failure it would write the maps of init's namespace,
    // which the kernel refuses (written once), so it is killed instead.
    if unshared.is_err() {
        let _ = nix::sys::signal::kill(helper, nix::sys::signal::Signal::SIGKILL);
    } else {
        let _ = nix::unistd::write(&go_write, b"g");
    }
    drop(go_write);
    let report = read_to_eof(&report_read).unwrap_or_default();
    let status = loop {
        match nix::sys::wait::waitpid(helper, None) {
            Err(Errno::EINTR) => {}
            other => break other.context("wait for the id-map writer")?,
        }
    };
    unshared?;
    if !matches!(status, WaitStatus::Exited(_, 0)) {
        return Err(Error::new(format!(
            "write the user namespace's maps (linux.uidMappings/gidMappings): {}",
            String::from_utf8_lossy(&report)
        )));
    }
    // Mount and UTS namespaces of the new user namespace's own, copies of those the
    // container's view was built in (its mounts locked together, as the kernel does for a
    // less privileged owner): as under runc, the container's root may mount and set the
    // hostname with CAP_SYS_ADMIN, and exec'd processes join these.
    nix::sched::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
        .context("unshare the mount and UTS namespaces of the user namespace")
}

/// Blocks until the parent writes its byte (EOF: it gave up).
fn wait_for(go: &OwnedFd) -> Result<()> {
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(go.as_raw_fd(), &mut b) {
            Ok(1) => return Ok(()),
            Ok(_) => return Err(Error::new("the container process ended before its maps")),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::new(format!("read the go-ahead: {e}"))),
        }
    }
}

/// Writes each map with one `write`, as the kernel requires.
fn write_maps(task: &OwnedFd, maps: &[(&str, String)]) -> Result<()> {
    for (name, text) in maps {
        let fd = nix::fcntl::openat(
            Some(task.as_raw_fd()),
            *name,
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("open {name}"))?;
        // SAFETY: `openat` just returned this descriptor and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let written =
            nix::unistd::write(&fd, text.as_bytes()).with_context(|| format!("write {name}"))?;
        if written != text.len() {
            return Err(Error::new(format!("write {name}: short write")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_is_one_line_per_range_and_proc_s_text_reads_back() {
        let m = |container_id, host_id, size| IdMapping {
            container_id,
            host_id,
            size,
        };
        assert_eq!(
            map_text(&[m(0, 100_000, 65_536), m(65_536, 5, 1)]),
            "0 100000 65536\n65536 5 1\n"
        );
        let proc_text = "         0     100000      65536\n     65536          5          1\n";
        assert_eq!(
            parse_map(proc_text),
            [m(0, 100_000, 65_536), m(65_536, 5, 1)]
        );
    }
}
