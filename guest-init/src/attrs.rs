//! The OCI process attributes that the child applies to itself before `execve` and that
//! are not credentials: resource limits, the OOM score adjustment, `HOME`, and the
//! container's sysctls.

use crate::error::{Error, Result};
use nix::sys::resource::{setrlimit, Resource};
use runvm_protocol::Rlimit;

/// The resource an OCI rlimit name stands for.
fn rlimit_resource(kind: &str) -> Option<Resource> {
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

/// An rlimit of the spec with the resource its name stands for.
#[derive(Debug)]
struct KnownRlimit<'a> {
    resource: Resource,
    limit: &'a Rlimit,
}

/// Checks every rlimit name first, so an unknown one fails before anything is applied.
fn check_rlimits(limits: &[Rlimit]) -> Result<Vec<KnownRlimit<'_>>> {
    limits
        .iter()
        .map(|limit| {
            rlimit_resource(&limit.kind)
                .map(|resource| KnownRlimit { resource, limit })
                .ok_or_else(|| Error::new(format!("unknown rlimit type {:?}", limit.kind)))
        })
        .collect()
}

/// `setrlimit` for each of `limits`, in order (runc's `setupRlimits`).
pub fn apply_rlimits(limits: &[Rlimit]) -> Result<()> {
    for KnownRlimit { resource, limit: l } in check_rlimits(limits)? {
        setrlimit(resource, l.soft, l.hard).map_err(|e| {
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

/// The home directory of `uid` in an `/etc/passwd` text (the first entry with that uid,
/// as runc's user lookup), `None` when it has none.
pub fn passwd_home(passwd: &str, uid: u32) -> Option<&str> {
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 6 && f[2].trim().parse::<u32>().ok() == Some(uid))
        .map(|f| f[5])
        .filter(|h| !h.is_empty())
}

/// `env` as runc sets it: one entry per name, where the name first appears, with its last
/// value (runc sets the variables one by one), and `HOME` set when the environment has
/// none (or an empty one): the home of `uid` in the container's `passwd`, else `/`.
pub fn env_with_home(env: &[String], uid: u32, passwd: &str) -> Vec<String> {
    let env = one_per_name(env);
    let home = env.iter().rev().find_map(|kv| kv.strip_prefix("HOME="));
    if home.is_some_and(|h| !h.is_empty()) {
        return env;
    }
    let mut out: Vec<String> = env
        .iter()
        .filter(|kv| !kv.starts_with("HOME="))
        .cloned()
        .collect();
    out.push(format!("HOME={}", passwd_home(passwd, uid).unwrap_or("/")));
    out
}

/// `env` with each name once, at its first place, with its last value.
fn one_per_name(env: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(env.len());
    for kv in env {
        let name = kv.split_once('=').map_or(kv.as_str(), |(n, _)| n);
        let same = |o: &String| o.split_once('=').map_or(o.as_str(), |(n, _)| n) == name;
        match out.iter_mut().find(|o| same(o)) {
            Some(o) => o.clone_from(kv),
            None => out.push(kv.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_given_twice_is_set_once_with_its_last_value() {
        let env = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            env_with_home(&env(&["C=1", "PATH=/bin", "C=2", "HOME=/h"]), 0, ""),
            ["C=2", "PATH=/bin", "HOME=/h"]
        );
    }

    #[test]
    fn home_comes_from_passwd_only_when_the_environment_has_none() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n# comment\nuser:x:1000:1000::/home/user:/bin/sh\nnohome:x:7:7::\nuser2:x:1000:1000::/elsewhere:/bin/sh\n";
        let env = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            env_with_home(&env(&["PATH=/bin"]), 0, passwd),
            ["PATH=/bin", "HOME=/root"]
        );
        assert_eq!(
            env_with_home(&env(&["PATH=/bin"]), 1000, passwd),
            ["PATH=/bin", "HOME=/home/user"]
        );
        // Unknown uid, an entry without a home, no passwd at all: "/".
        for (uid, pw) in [(4242, passwd), (7, passwd), (0, "")] {
            assert_eq!(env_with_home(&env(&[]), uid, pw), ["HOME=/"], "{uid}");
        }
        // A set HOME is kept; an empty one is replaced.
        assert_eq!(
            env_with_home(&env(&["HOME=/x", "A=1"]), 0, passwd),
            ["HOME=/x", "A=1"]
        );
        assert_eq!(
            env_with_home(&env(&["HOME=", "A=1"]), 0, passwd),
            ["A=1", "HOME=/root"]
        );
    }

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
