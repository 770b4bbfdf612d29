//! `features`: what this runvm supports, as the JSON document of the runtime spec's
//! `features.md` (runc 1.1's `runc features`). Each list says what runvm really applies
//! today, not what it parses: update it with the code.
//!
//! Beside the spec's fields, `annotations` (which runc's consumers read only for the keys
//! they know) carries the seccomp allow-list of each confined monitor thread, under
//! `io.github.runvm.seccomp.<thread>`: the system calls, `; `-separated, each with its
//! argument checks (`vmm::seccomp::describe`).

use anyhow::Result;
use serde::Serialize;

use crate::hooks::HookKind;

/// The mount options the guest init applies (`mount_options::parse` in
/// guest-init/src/mount_options.rs: flags, and the propagation words).
pub const MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "private",
    "rbind",
    "relatime",
    "remount",
    "ro",
    "rprivate",
    "rshared",
    "rslave",
    "runbindable",
    "rw",
    "shared",
    "slave",
    "strictatime",
    "suid",
    "sync",
    "unbindable",
];

/// The namespaces a runvm container has: PID, mount and UTS namespaces of its own in the
/// guest, IPC, network and cgroup ones in that it has a kernel of its own, and a user
/// namespace in the guest when the spec maps ids (`linux.uidMappings`).
pub const NAMESPACES: &[&str] = &["cgroup", "ipc", "mount", "network", "pid", "user", "uts"];

/// The capabilities `process.capabilities` may name (guest-init/src/caps.rs applies them).
pub const CAPABILITIES: &[&str] = &runvm_protocol::CAPABILITY_NAMES;

/// The features document, its fields in the spec's order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Features {
    oci_version_min: &'static str,
    oci_version_max: &'static str,
    hooks: Vec<&'static str>,
    mount_options: &'static [&'static str],
    linux: Linux,
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Linux {
    namespaces: &'static [&'static str],
    capabilities: &'static [&'static str],
    cgroup: Cgroup,
    seccomp: Seccomp,
    apparmor: Enabled,
    selinux: Enabled,
    intel_rdt: Enabled,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Cgroup {
    v1: bool,
    v2: bool,
    systemd: bool,
    systemd_user: bool,
}

/// `linux.seccomp`: compiled on the host with libseccomp (`crate::seccomp`), installed in
/// the guest.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Seccomp {
    enabled: bool,
    actions: &'static [&'static str],
    operators: &'static [&'static str],
    archs: &'static [&'static str],
    known_flags: &'static [&'static str],
    supported_flags: &'static [&'static str],
}

const SECCOMP_FLAGS: &[&str] = &[
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
];

#[derive(Serialize)]
struct Enabled {
    enabled: bool,
}

/// What this runvm supports.
pub fn document() -> Features {
    Features {
        oci_version_min: "1.0.0",
        oci_version_max: crate::state::OCI_VERSION,
        hooks: HookKind::ALL.iter().map(|k| k.name()).collect(),
        mount_options: MOUNT_OPTIONS,
        linux: Linux {
            namespaces: NAMESPACES,
            capabilities: CAPABILITIES,
            // linux.cgroupsPath is joined on the host (v1, v2, hybrid); `slice:prefix:name`
            // paths are converted, but the directory is made without asking systemd.
            cgroup: Cgroup {
                v1: true,
                v2: true,
                systemd: false,
                systemd_user: false,
            },
            // SCMP_ACT_NOTIFY is refused (it needs a seccomp agent on the host).
            seccomp: Seccomp {
                enabled: true,
                actions: &[
                    "SCMP_ACT_ALLOW",
                    "SCMP_ACT_ERRNO",
                    "SCMP_ACT_KILL",
                    "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD",
                    "SCMP_ACT_LOG",
                    "SCMP_ACT_TRACE",
                    "SCMP_ACT_TRAP",
                ],
                operators: &[
                    "SCMP_CMP_EQ",
                    "SCMP_CMP_GE",
                    "SCMP_CMP_GT",
                    "SCMP_CMP_LE",
                    "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ",
                    "SCMP_CMP_NE",
                ],
                // The guest is x86_64; 32-bit syscalls stay available as in the profile.
                archs: &["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32"],
                known_flags: SECCOMP_FLAGS,
                supported_flags: SECCOMP_FLAGS,
            },
            apparmor: Enabled { enabled: false },
            selinux: Enabled { enabled: false },
            intel_rdt: Enabled { enabled: false },
        },
        annotations: vmm::seccomp::ThreadKind::ALL
            .iter()
            .map(|k| {
                let key = format!("{SECCOMP_ANNOTATION}{}", k.name());
                (key, vmm::seccomp::describe(*k).join("; "))
            })
            .collect(),
    }
}

/// The prefix of the annotations that list each monitor thread's seccomp allow-list.
pub const SECCOMP_ANNOTATION: &str = "io.github.runvm.seccomp.";

/// `runvm features`: prints the document.
pub fn features() -> Result<i32> {
    println!("{}", serde_json::to_string_pretty(&document())?);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_parses_as_the_spec_s_features() {
        let text = serde_json::to_string(&document()).unwrap();
        assert!(
            text.starts_with(r#"{"ociVersionMin":"1.0.0","ociVersionMax":"#),
            "{text}"
        );
        let f: oci_spec::runtime::Features = serde_json::from_str(&text).unwrap();
        assert_eq!(f.oci_version_min(), "1.0.0");
        assert_eq!(f.hooks().as_ref().unwrap().len(), 6);
        let vcpu = &f.annotations().as_ref().unwrap()["io.github.runvm.seccomp.vcpu"];
        assert!(vcpu.contains("ioctl: arg1 == KVM_RUN (0xae80)"), "{vcpu}");
        assert!(!vcpu.contains("socket"), "{vcpu}");
    }

    #[test]
    fn every_capability_listed_is_one_config_json_accepts() {
        for cap in CAPABILITIES {
            serde_json::from_value::<oci_spec::runtime::Capability>(serde_json::json!(cap))
                .unwrap_or_else(|e| panic!("{cap}: {e}"));
        }
        assert_eq!(CAPABILITIES.len(), 41);
    }
}
