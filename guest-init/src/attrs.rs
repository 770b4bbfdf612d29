//! The OCI process attributes that the child applies to itself before `execve`: resource
//! limits, the OOM score adjustment, and the privilege settings.

use crate::error::{Error, Result};
use nix::sys::resource::{setrlimit, Resource};
use runvm_protocol::Rlimit;

/// The resource an OCI rlimit name stands for.
pub fn rlimit_resource(kind: &str) -> Option<Resource> {
    Some(match kind {
        "RLIMIT_AS" => Resource::RLIMIT_AS,
        "RLIMIT_CORE" => Resource::RLIMIT_CORE,
        "RLIMIT_CPU" => Resource::RLIMIT_CPU,
        "RLIMIT_DATA" => Resource::RLIMIT_DATA,
        "RLIMIT_FSIZE" => Resource::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => Resource::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => Resource::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => Resource::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => Resource::RLIMIT_NICE,
        "RLIMIT_NOFILE" => Resource::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => Resource::RLIMIT_NPROC,
        "RLIMIT_RSS" => Resource::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => Resource::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => Resource::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => Resource::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => Resource::RLIMIT_STACK,
        _ => return None,
    })
}

/// Checks every rlimit name first, so an unknown one fails before anything is applied.
pub fn check_rlimits(limits: &[Rlimit]) -> Result<Vec<(Resource, &Rlimit)>> {
    limits
        .iter()
        .map(|l| {
            rlimit_resource(&l.kind)
                .map(|r| (r, l))
                .ok_or_else(|| Error::new(format!("unknown rlimit type {:?}", l.kind)))
        })
        .collect()
}

/// `setrlimit` for each of `limits`, in order (runc's `setupRlimits`).
pub fn apply_rlimits(limits: &[Rlimit]) -> Result<()> {
    for (res, l) in check_rlimits(limits)? {
        setrlimit(res, l.soft, l.hard).map_err(|e| {
            Error::new(format!(
                "error setting rlimit type {} (soft {}, hard {}): {e}",
                l.kind, l.soft, l.hard
            ))
        })?;
    }
    Ok(())
}

/// `process.oomScoreAdj`: inherited by the workload and its children.
pub fn set_oom_score_adj(adj: Option<i32>) -> Result<()> {
    let Some(adj) = adj else { return Ok(()) };
    std::fs::write("/proc/self/oom_score_adj", adj.to_string())
        .map_err(|e| Error::new(format!("set oom_score_adj to {adj}: {e}")))
}

/// `process.noNewPrivileges`.
pub fn set_no_new_privs(on: bool) -> Result<()> {
    if on {
        nix::sys::prctl::set_no_new_privs()
            .map_err(|e| Error::new(format!("prctl(PR_SET_NO_NEW_PRIVS): {e}")))?;
    }
    Ok(())
}

/// The file under `/proc/sys` for a sysctl key (`net.ipv4.ip_forward` or
/// `net/ipv4/ip_forward`); keys that could leave `/proc/sys` are refused.
pub fn sysctl_path(key: &str) -> Result<String> {
    let rel = key.replace('.', "/");
    if rel.is_empty() || rel.starts_with('/') || rel.split('/').any(|c| c.is_empty() || c == "..") {
        return Err(Error::new(format!("invalid sysctl key {key:?}")));
    }
    Ok(format!("/proc/sys/{rel}"))
}

/// `linux.sysctl`, written in the workload's namespaces (the host has checked that they are
/// namespaced).
pub fn apply_sysctls(sysctl: &std::collections::BTreeMap<String, String>) -> Result<()> {
    for (key, value) in sysctl {
        let path = sysctl_path(key)?;
        std::fs::write(&path, value.as_bytes())
            .map_err(|e| Error::new(format!("write sysctl {key} = {value:?} ({path}): {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_keys_map_under_proc_sys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            "/proc/sys/net/ipv4/ip_forward"
        );
        assert_eq!(
            sysctl_path("kernel/shmmax").unwrap(),
            "/proc/sys/kernel/shmmax"
        );
        for bad in ["", "/etc/passwd", "net..x", "../../etc", "net/../../x"] {
            assert!(sysctl_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_rlimit_types_are_named() {
        let ok = Rlimit {
            kind: "RLIMIT_NOFILE".into(),
            soft: 1,
            hard: 2,
        };
        let bad = Rlimit {
            kind: "RLIMIT_BOGUS".into(),
            ..ok.clone()
        };
        assert_eq!(check_rlimits(std::slice::from_ref(&ok)).unwrap().len(), 1);
        let e = check_rlimits(&[ok, bad]).unwrap_err();
        assert_eq!(e.message, r#"unknown rlimit type "RLIMIT_BOGUS""#);
    }
}
