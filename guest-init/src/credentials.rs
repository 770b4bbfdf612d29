//! Dropping a container process's privileges before `execve`, in runc's order (its
//! `finalizeNamespace`): `no_new_privs`; the seccomp filter early when there is no
//! `no_new_privs` (loading it then needs `CAP_SYS_ADMIN`, which is about to go), or last
//! before `execve` when there is; the bounding set and `PR_SET_KEEPCAPS` before the user
//! switch; supplementary groups, gid and uid; and, once the working directory is entered
//! with the full permitted set, the process's own capability sets.
//!
//! [`Credentials`] holds what was resolved from the spec; its steps are called in the
//! order of their docs, with the caller's own work between them.

use crate::caps;
use crate::error::{Context, Error, Result};
use crate::seccomp;
use nix::unistd::{Gid, Uid};
use runvm_protocol::ProcessSpec;

/// The identity and restrictions a container process ends up with.
pub struct Credentials {
    uid: Uid,
    gid: Gid,
    additional_gids: Vec<Gid>,
    capabilities: Option<caps::Sets>,
    no_new_privileges: bool,
    seccomp: Option<seccomp::Filter>,
}

impl Credentials {
    /// Resolves the capability names of `p` (all unknown ones are reported together) and
    /// takes its already decoded seccomp filter.
    pub fn resolve(p: &ProcessSpec, seccomp: Option<seccomp::Filter>) -> Result<Self> {
        let capabilities = p.capabilities.as_ref().map(caps::resolve).transpose()?;
        Ok(Self {
            uid: Uid::from_raw(p.uid),
            gid: Gid::from_raw(p.gid),
            additional_gids: p
                .additional_gids
                .iter()
                .map(|g| Gid::from_raw(*g))
                .collect(),
            capabilities,
            no_new_privileges: p.no_new_privileges,
            seccomp,
        })
    }

    /// Step 1, still as root: `no_new_privs`, the seccomp filter if it goes early, the
    /// bounding set and `PR_SET_KEEPCAPS`.
    pub fn drop_before_user_switch(&self) -> Result<()> {
        if self.no_new_privileges {
            nix::sys::prctl::set_no_new_privs()
                .map_err(|e| Error::new(format!("prctl(PR_SET_NO_NEW_PRIVS): {e}")))?;
        } else {
            self.install_seccomp()?;
        }
        if let Some(c) = &self.capabilities {
            caps::before_user_switch(c)?;
        }
        Ok(())
    }

    /// Step 2: the owner of the stdio, supplementary groups, gid, uid.
    pub fn switch_user(&self) -> Result<()> {
        give_stdio_to(self.uid)?;
        nix::unistd::setgroups(&self.additional_gids).context("setgroups")?;
        nix::unistd::setgid(self.gid).with_context(|| format!("setgid {}", self.gid))?;
        nix::unistd::setuid(self.uid).with_context(|| format!("setuid {}", self.uid))?;
        Ok(())
    }

    /// Step 3, after the working directory is entered: the effective, permitted,
    /// inheritable and ambient capability sets.
    pub fn set_capabilities(&self) -> Result<()> {
        match &self.capabilities {
            Some(c) => caps::after_user_switch(c),
            None => Ok(()),
        }
    }

    /// Step 4, the last call before `execve`: the seccomp filter if it goes late.
    pub fn install_late_seccomp(&self) -> Result<()> {
        if self.no_new_privileges {
            self.install_seccomp()?;
        }
        Ok(())
    }

    fn install_seccomp(&self) -> Result<()> {
        match &self.seccomp {
            Some(filter) => filter.install(),
            None => Ok(()),
        }
    }
}

/// Makes `uid` the owner of fds 0–2 (the pty slave above all, whose owner `tty` users
/// and `mesg` check), keeping their group (the devpts `gid=5`), as runc's
/// `fixStdioPermissions` does: `/dev/null` and what `uid` already owns stay as they are,
/// and EINVAL or EPERM (an owner the user namespace does not map) leave the fd untouched.
pub fn give_stdio_to(uid: Uid) -> Result<()> {
    let null = nix::sys::stat::stat("/dev/null").ok().map(|s| s.st_rdev);
    for fd in 0..3 {
        let Ok(st) = nix::sys::stat::fstat(fd) else {
            continue;
        };
        let is_null = st.st_mode & libc::S_IFMT == libc::S_IFCHR && Some(st.st_rdev) == null;
        if is_null || st.st_uid == uid.as_raw() {
            continue;
        }
        match nix::unistd::fchown(fd, Some(uid), Some(Gid::from_raw(st.st_gid))) {
            Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::EPERM) => {}
            Err(e) => {
                return Err(Error::new(format!(
                    "fchown stdio fd {fd} to uid {uid}: {e}"
                )))
            }
        }
    }
    Ok(())
}
