//! What the guest is told to build and run: the process ([`ProcessSpec`] with its
//! rlimits, capabilities, seccomp filter, terminal size), the container's Linux settings
//! ([`LinuxSpec`]: sysctls, masked paths, devices, cgroup [`Resources`]), its mounts
//! ([`MountSpec`]: bind mounts come from the container's share), its network
//! ([`NetworkSpec`]) and its root filesystem ([`RootfsSpec`], also from the share).
//!
//! The host resolves and checks all of it from the OCI spec before it sends
//! [`HostMessage::Run`](crate::HostMessage::Run) or
//! [`HostMessage::Exec`](crate::HostMessage::Exec); every field added later has a
//! default, so a guest reads what an older host sent.

use serde::{Deserialize, Serialize};

/// The process to run, already resolved from the OCI spec by the host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// Whether the process gets a terminal (one stream, fd 0, both directions).
    #[serde(default)]
    pub terminal: bool,
    /// `process.rlimits`, applied with `setrlimit` before `execve`, in order.
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    /// `process.noNewPrivileges`: `PR_SET_NO_NEW_PRIVS` before `execve`.
    #[serde(default)]
    pub no_new_privileges: bool,
    /// `process.oomScoreAdj`, written to `/proc/self/oom_score_adj`.
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    /// `process.capabilities`; `None` leaves the capabilities as they are (full for root).
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    /// The terminal's initial size (`process.consoleSize`, else the host pty's size when
    /// the process starts); only used with `terminal`.
    #[serde(default)]
    pub console_size: Option<WindowSize>,
    /// The container's `linux.seccomp`, compiled by the host; installed as the very last
    /// step before `execve` (exec'd processes get the container's filter too). `None`: no
    /// filter.
    #[serde(default)]
    pub seccomp: Option<SeccompProgram>,
    /// `process.user.umask`; `None` is runc's default, `0o022`.
    #[serde(default)]
    pub umask: Option<u32>,
    /// Without a terminal: stdout and stderr are one pipe, because the host's are one
    /// file (`2>&1`), so the process's writes to both stay in the order it made them, as
    /// under runc. Set by the host from its descriptors, not from config.json.
    #[serde(default)]
    pub shared_output: bool,
    /// Without a terminal: the process's stdin is `/dev/null` in the container, because
    /// the host's is (`docker run` without `-i`: containerd gives runc `/dev/null`, which
    /// runc passes on), not a pipe that the host never writes to. Set by the host from
    /// its descriptors, not from config.json.
    #[serde(default)]
    pub stdin_null: bool,
}

/// A seccomp filter compiled to classic BPF (`struct sock_filter`, 8 bytes each, in the
/// native byte order of host and guest, both x86_64), with the `seccomp(2)` flags to
/// install it with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompProgram {
    /// The instructions: a multiple of [`SECCOMP_INSTRUCTION_LEN`] bytes.
    #[serde(with = "crate::base64_field")]
    pub filter: Vec<u8>,
    /// `SECCOMP_FILTER_FLAG_*` (`TSYNC` 1, `LOG` 2, `SPEC_ALLOW` 4).
    #[serde(default)]
    pub flags: u32,
}

/// Size of one classic BPF instruction (`struct sock_filter`).
pub const SECCOMP_INSTRUCTION_LEN: usize = 8;

/// A terminal's size in character cells.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

/// The capability sets of a process, by name (`CAP_CHOWN`, …); the guest refuses names it
/// does not know, naming them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub bounding: Vec<String>,
    #[serde(default)]
    pub effective: Vec<String>,
    #[serde(default)]
    pub permitted: Vec<String>,
    #[serde(default)]
    pub inheritable: Vec<String>,
    #[serde(default)]
    pub ambient: Vec<String>,
}

/// Capability names by number (`include/uapi/linux/capability.h`): what
/// `process.capabilities` may name, and what the guest applies.
pub const CAPABILITY_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// One resource limit. `kind` is the OCI name (`RLIMIT_NOFILE`, …); the guest refuses names
/// it does not know, naming them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub kind: String,
    pub soft: u64,
    pub hard: u64,
}

/// The Linux settings of the container (OCI `linux.*`) that the guest applies in the
/// workload's namespaces, already checked by the host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinuxSpec {
    /// `linux.sysctl`: key (dotted, `net.ipv4.ip_forward`) → value, written under
    /// `/proc/sys`. The host lets through only the namespaced ones, as runc does.
    #[serde(default)]
    pub sysctl: std::collections::BTreeMap<String, String>,
    /// `linux.maskedPaths`: `/dev/null` is bound over files, a read-only tmpfs over
    /// directories; missing paths are skipped.
    #[serde(default)]
    pub masked_paths: Vec<String>,
    /// `linux.readonlyPaths`: bind-remounted read-only; missing paths are skipped.
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    /// `linux.devices`: nodes the guest creates in the container (after its mounts).
    #[serde(default)]
    pub devices: Vec<DeviceSpec>,
    /// `linux.resources` the guest applies to the workload's own cgroup (v2), which every
    /// exec'd process joins too. Empty: no limits, as before this field existed.
    #[serde(default)]
    pub resources: Resources,
    /// `linux.uidMappings`: when not empty, the workload runs in a user namespace of its
    /// own with this uid map (and [`LinuxSpec::gid_mappings`]); exec'd processes join it.
    #[serde(default)]
    pub uid_mappings: Vec<IdMapping>,
    /// `linux.gidMappings`, with [`LinuxSpec::uid_mappings`].
    #[serde(default)]
    pub gid_mappings: Vec<IdMapping>,
}

/// One line of a user namespace's id map: `size` ids from `container_id` in the
/// namespace are `host_id`… in the guest's initial namespace, whose ids are the host's
/// (the shared files carry them unchanged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

impl IdMapping {
    /// The ids the range covers in the namespace (end exclusive; 64-bit, so a range that
    /// runs past the last 32-bit id shows it).
    pub fn container_ids(&self) -> std::ops::Range<u64> {
        let start = u64::from(self.container_id);
        start..start + u64::from(self.size)
    }

    /// The ids the range covers in the guest's initial namespace, as
    /// [`IdMapping::container_ids`].
    pub fn host_ids(&self) -> std::ops::Range<u64> {
        let start = u64::from(self.host_id);
        start..start + u64::from(self.size)
    }

    /// The host id of `container_id` in `maps`, if one maps it.
    pub fn host_of(maps: &[IdMapping], container_id: u32) -> Option<u32> {
        let m = maps
            .iter()
            .find(|m| m.container_ids().contains(&u64::from(container_id)))?;
        m.host_id.checked_add(container_id - m.container_id)
    }
}

/// One `linux.devices` entry, checked by the host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    /// Absolute path in the container.
    pub path: String,
    /// `c` (or `u`), `b` or `p`.
    pub kind: char,
    pub major: u64,
    pub minor: u64,
    /// Permission bits (`fileMode`; 0666 when unset, as runc).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Resource limits of the container's cgroup (the OCI `linux.resources` subset runvm
/// applies, in cgroup v2 units). `None` leaves a limit as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// `memory.max` in bytes; a negative value is "max" (no limit).
    #[serde(default)]
    pub memory_limit: Option<i64>,
    /// `memory.low` in bytes (OCI `memory.reservation`, as runc writes it); a negative
    /// value is "max".
    #[serde(default)]
    pub memory_reservation: Option<i64>,
    /// `cpu.max` quota in microseconds per period; a negative value is "max".
    #[serde(default)]
    pub cpu_quota: Option<i64>,
    /// `cpu.max` period in microseconds.
    #[serde(default)]
    pub cpu_period: Option<u64>,
    /// OCI `cpu.shares` (2..262144), converted to `cpu.weight` as runc does.
    #[serde(default)]
    pub cpu_shares: Option<u64>,
    /// `pids.max`; zero or negative is "max".
    #[serde(default)]
    pub pids_limit: Option<i64>,
    /// The device cgroup: `linux.resources.devices` in order, with runc's own allowed
    /// devices appended by the host, as runc does. The guest emulates them as cgroup v1
    /// would and attaches the result as an eBPF program to the container's cgroup. `None`
    /// leaves the rules in force as they are (an update); `Some` of an empty list is
    /// runc's start: every device denied.
    #[serde(default)]
    pub devices: Option<Vec<DeviceRule>>,
}

/// One device cgroup rule (OCI `linux.resources.devices[]`), checked by the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    /// Allow (else deny) the access.
    pub allow: bool,
    pub kind: DeviceRuleKind,
    /// `None` matches every major number.
    #[serde(default)]
    pub major: Option<u32>,
    /// `None` matches every minor number.
    #[serde(default)]
    pub minor: Option<u32>,
    /// The access (`r`, `w`, `m` of the OCI `access` string).
    #[serde(default)]
    pub read: bool,
    #[serde(default)]
    pub write: bool,
    #[serde(default)]
    pub mknod: bool,
}

/// The devices a [`DeviceRule`] is about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceRuleKind {
    /// `a`: every device and every access, whatever the rule's numbers and access say
    /// (cgroup v1's reset of the whole list to allow-all or deny-all).
    #[default]
    #[serde(rename = "a")]
    All,
    /// `c`: character devices.
    #[serde(rename = "c")]
    Char,
    /// `b`: block devices.
    #[serde(rename = "b")]
    Block,
}

impl Resources {
    /// Whether any memory, CPU or pids limit is given (the device rules aside): what
    /// makes the host give a container without `cgroupsPath` a cgroup of its own.
    pub fn has_limits(&self) -> bool {
        Self {
            devices: None,
            ..self.clone()
        } != Self::default()
    }

    /// The cgroup v2 `cpu.max` line for this quota and period over `current` (the file's
    /// present content): what is not given stays as it is; a quota ≤ 0 is "max".
    pub fn cpu_max(&self, current: &str) -> Option<String> {
        if self.cpu_quota.is_none() && self.cpu_period.is_none() {
            return None;
        }
        let mut old = current.split_whitespace();
        let old_quota = old.next().unwrap_or("max").to_string();
        let old_period = old.next().unwrap_or("100000").to_string();
        let quota = match self.cpu_quota {
            Some(q) if q > 0 => q.to_string(),
            Some(_) => "max".into(),
            None => old_quota,
        };
        let period = self.cpu_period.map_or(old_period, |p| p.to_string());
        Some(format!("{quota} {period}"))
    }
}

/// One OCI `mounts` entry: one the guest makes itself (proc, sysfs, tmpfs, devpts,
/// mqueue, cgroup/cgroup2), or a bind mount (`fstype` "bind") of a host file or
/// directory, which the host shares live with the guest ([`MountSpec::share`]), or of a
/// host UNIX socket, which the guest relays to the host ([`MountSpec::relay`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub destination: String,
    pub fstype: String,
    #[serde(default)]
    pub source: String,
    /// The OCI option words (`ro`, `nosuid`, `mode=755`, `size=64m`, …), parsed by the
    /// guest into mount flags and file-system data as runc does.
    #[serde(default)]
    pub options: Vec<String>,
    /// For a bind mount of a host file or directory: its name in the container's share
    /// (a single path component). The guest binds `<share>/<name>` on `destination`.
    #[serde(default)]
    pub share: Option<String>,
    /// For a bind mount of a host UNIX socket: its number among the container's socket
    /// relays. The guest listens on `destination` and carries each connection to the host
    /// over [`SOCKET_PORT`](crate::SOCKET_PORT) with a [`SocketRelayHeader`](crate::SocketRelayHeader).
    #[serde(default)]
    pub relay: Option<u32>,
}

/// The guest's network, mirrored by the host from the container's network namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// One per virtio-net device; an empty list leaves the guest with loopback only.
    #[serde(default)]
    pub interfaces: Vec<InterfaceSpec>,
    /// Loopback nameservers of the container's `resolv.conf` (Docker's `127.0.0.11`):
    /// the guest runs a DNS forwarder on each (UDP and TCP port 53) that relays to the
    /// host over [`DNS_PORT`](crate::DNS_PORT).
    #[serde(default)]
    pub dns_forward: Vec<String>,
    /// IPv6 as the namespace has it (`net.ipv6.conf.{all,default,lo}.disable_ipv6`;
    /// each interface's is in [`InterfaceSpec::ipv6_disabled`]): Docker disables it on a
    /// network without IPv6. Applied by the guest before it brings its interfaces up, so
    /// that a disabled interface gets no address (`::1`, link-local). Not given: the
    /// guest kernel's default (enabled).
    #[serde(default)]
    pub ipv6: Ipv6Conf,
}

/// `net.ipv6.conf.<name>.disable_ipv6` of the namespace for `all`, `default` and `lo`;
/// `Some(true)` is disabled, `None` leaves the guest's as it is. The guest writes them
/// in this order (`all` sets every interface and `default`, as the kernel does), then
/// each interface's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Conf {
    #[serde(default)]
    pub all: Option<bool>,
    #[serde(default)]
    pub default: Option<bool>,
    #[serde(default)]
    pub lo: Option<bool>,
}

/// One network interface: the guest finds its NIC by `mac` and gives it the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceSpec {
    /// The interface's name in the namespace (`eth0`); the guest renames its NIC to it.
    pub name: String,
    /// `02:42:ac:11:00:02`.
    pub mac: String,
    pub mtu: u32,
    #[serde(default)]
    pub addresses: Vec<AddressSpec>,
    /// Routes through this interface (main table), in the order to add them.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// `net.ipv6.conf.<name>.disable_ipv6` of the interface in the namespace (`None`:
    /// left as the guest has it after [`NetworkSpec::ipv6`]).
    #[serde(default)]
    pub ipv6_disabled: Option<bool>,
}

/// An address with its prefix length (`172.17.0.2`/16, `fd00::2`/64).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressSpec {
    pub addr: String,
    pub prefix_len: u8,
}

/// A route of the main table through an interface.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    /// Destination network; `None` is the default route.
    #[serde(default)]
    pub dst: Option<String>,
    #[serde(default)]
    pub dst_len: u8,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub prefsrc: Option<String>,
    #[serde(default)]
    pub metric: Option<u32>,
    /// `RT_SCOPE_*` (0 universe, 253 link).
    #[serde(default)]
    pub scope: u8,
    #[serde(default)]
    pub ipv6: bool,
}

/// How the guest builds the container's root filesystem: a directory of the container's
/// share (virtio-fs, served by the host from `root.path` itself, so that what the
/// container writes is on the host at once and what the host writes is seen inside).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsSpec {
    /// The virtio-fs tag of the container's share.
    pub share_tag: String,
    /// The root's directory in the share (a single path component).
    pub root: String,
    /// Mount it read-only (`root.readonly`); the host enforces it too.
    #[serde(default)]
    pub readonly: bool,
}

impl Default for RootfsSpec {
    fn default() -> Self {
        Self {
            share_tag: SHARE_TAG.into(),
            root: SHARE_ROOT.into(),
            readonly: false,
        }
    }
}

/// The virtio-fs tag of a container's share.
pub const SHARE_TAG: &str = "runvm";
/// The root filesystem's directory in the share.
pub const SHARE_ROOT: &str = "root";
/// The flags virtiofsd serves every share with (the monitor adds the descriptor, the
/// directory and the container's capabilities): what the guest sees of the share.
/// `--killpriv-v2`: the guest kernel leaves it to virtiofsd to clear setuid/setgid bits
/// and file capabilities on write, truncate and chown (asking with the request when its
/// caller lacks CAP_FSETID), and stops asking for `security.capability` before every
/// write: one FUSE request fewer per write. virtiofsd drops CAP_FSETID for such a
/// request, and has none at all when the container lacks it.
pub const VIRTIOFSD_FLAGS: &[&str] = &[
    "--sandbox",
    "namespace",
    "--seccomp",
    "kill",
    "--cache",
    "auto",
    "--xattr",
    "--killpriv-v2",
    "--announce-submounts",
    "--log-level",
    "error",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_keeps_what_is_not_given() {
        let r = |q, p| Resources {
            cpu_quota: q,
            cpu_period: p,
            ..Default::default()
        };
        assert_eq!(r(None, None).cpu_max("max 100000"), None);
        assert_eq!(
            r(Some(50000), None).cpu_max("max 100000\n").unwrap(),
            "50000 100000"
        );
        assert_eq!(
            r(None, Some(20000)).cpu_max("30000 100000").unwrap(),
            "30000 20000"
        );
        assert_eq!(r(Some(-1), Some(1000)).cpu_max("").unwrap(), "max 1000");
    }

    #[test]
    fn messages_of_an_older_host_parse_with_ipv6_stdin_and_reservation_as_before() {
        let net: NetworkSpec = serde_json::from_str(
            r#"{"interfaces":[{"name":"eth0","mac":"02:42:ac:11:00:02","mtu":1500}]}"#,
        )
        .unwrap();
        assert_eq!(
            net.ipv6,
            Ipv6Conf::default(),
            "IPv6 left as the guest has it"
        );
        assert_eq!(net.interfaces[0].ipv6_disabled, None);
        let p: ProcessSpec =
            serde_json::from_str(r#"{"args":["cat"],"env":[],"cwd":"/"}"#).unwrap();
        assert!(!p.stdin_null, "stdin stays a stream");
        let r: Resources = serde_json::from_str(r#"{"memory_limit":5}"#).unwrap();
        assert_eq!(r.memory_reservation, None);
        // And a newer one's fields arrive.
        let net: NetworkSpec =
            serde_json::from_str(r#"{"ipv6":{"all":true,"default":true,"lo":false}}"#).unwrap();
        assert_eq!(
            net.ipv6,
            Ipv6Conf {
                all: Some(true),
                default: Some(true),
                lo: Some(false)
            }
        );
        let r: Resources = serde_json::from_str(r#"{"memory_reservation":16777216}"#).unwrap();
        assert!(r.has_limits(), "a reservation is a limit of the cgroup");
    }

    #[test]
    fn device_rules_are_optional_and_older_messages_parse() {
        // What a host without device rules sent.
        let old: Resources = serde_json::from_str(r#"{"pids_limit":5}"#).unwrap();
        assert_eq!(old.devices, None);
        assert!(old.has_limits());
        let rules: Resources = serde_json::from_str(
            r#"{"devices":[{"allow":false,"kind":"a"},
                           {"allow":true,"kind":"c","major":1,"minor":11,"read":true,"write":true}]}"#,
        )
        .unwrap();
        let d = rules.devices.as_deref().unwrap();
        assert_eq!(d[0].kind, DeviceRuleKind::All);
        assert_eq!(
            (d[1].major, d[1].minor, d[1].read, d[1].mknod),
            (Some(1), Some(11), true, false)
        );
        // Device rules alone are no limit of the host's.
        assert!(!rules.has_limits());
        // A kind the protocol does not define is refused, not guessed.
        assert!(serde_json::from_str::<DeviceRule>(r#"{"allow":true,"kind":"x"}"#).is_err());
    }
}
