//! The host ⇄ guest wire protocol of runvm.
//!
//! Everything here crosses the virtualization boundary, so the host treats every byte
//! that comes from the guest as untrusted: frames have a hard size limit and decode
//! into closed enums, and anything else is an error, never a panic.
//!
//! Transport: virtio-vsock. The guest init opens every connection (guest → host,
//! CID 2), so the host never polls for the guest to be ready:
//! - [`CONTROL_PORT`]: one connection carrying length-prefixed JSON frames
//!   ([`GuestMessage`] up, [`HostMessage`] down). The guest speaks first with
//!   [`GuestMessage::Hello`].
//! - [`STREAM_PORT`]: one connection per stdio stream of a process. The guest writes one
//!   [`StreamHeader`] frame, then the connection carries raw bytes. EOF (shutdown of the
//!   write side) is end of stream.
//! - [`WRITEBACK_PORT`]: one connection after the main process exited, carrying the
//!   changes of the writable layer as [`WritebackEntry`] frames (a regular file's bytes
//!   follow its frame raw), ended by [`WritebackEntry::End`].
//!
//! Frame size limits are per direction: guest → host frames are small
//! ([`MAX_FRAME_LEN`], [`MAX_WRITEBACK_FRAME_LEN`]); host → guest frames may carry the
//! copied-in files of bind mounts ([`MAX_HOST_FRAME_LEN`]).
//!
//! Shutdown handshake: after the workload exits, the guest drains its output pipes,
//! shuts down the output streams, sends [`GuestMessage::Exited`], and waits for
//! [`HostMessage::Shutdown`] (sent once the host has read every stream to EOF) before it
//! syncs and reboots. Output written just before exit is never lost.

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// Version of this protocol; the guest sends it in `Hello` and the host refuses others.
pub const PROTOCOL_VERSION: u32 = 2;
/// vsock port of the control connection (guest → host).
pub const CONTROL_PORT: u32 = 1024;
/// vsock port of the stdio stream connections (guest → host).
pub const STREAM_PORT: u32 = 1025;
/// vsock port of the write-back stream (guest → host), see [`WritebackEntry`].
pub const WRITEBACK_PORT: u32 = 1026;
/// vsock port of the DNS relay (guest → host): the guest's forwarder opens one connection
/// per query (UDP) or per client connection (TCP), sends a [`DnsRelayHeader`] frame, and
/// then the connection carries DNS messages in DNS-over-TCP framing (a big-endian `u16`
/// length before each message), which the host sends from the container's network
/// namespace to the named loopback server, port 53.
pub const DNS_PORT: u32 = 1027;
/// Largest guest → host frame (and the default of [`read_frame`]/[`write_frame`]).
/// Larger length prefixes are garbage.
pub const MAX_FRAME_LEN: u32 = 1 << 20;
/// Largest host → guest frame ([`HostMessage`]): `Run` carries the content of file bind
/// mounts. The guest reads these; the host never accepts a frame this large.
pub const MAX_HOST_FRAME_LEN: u32 = 64 << 20;
/// Largest [`WritebackEntry`] frame (guest → host): a path and a link target, no data.
pub const MAX_WRITEBACK_FRAME_LEN: u32 = 16 << 10;

/// I/O port that the guest init writes [`BootMark`] values to (one byte, `outb`).
pub const BOOT_TIMER_PORT: u16 = 0x0440;

/// Milestones the guest reports through [`BOOT_TIMER_PORT`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootMark {
    /// The guest init has started (first instruction of user space).
    InitStarted = 1,
    /// The workload's `execve` succeeded.
    WorkloadStarted = 2,
    /// The workload has exited.
    WorkloadExited = 3,
}

impl BootMark {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::InitStarted),
            2 => Some(Self::WorkloadStarted),
            3 => Some(Self::WorkloadExited),
            _ => None,
        }
    }
}

/// Identifies a process inside the guest. The container's main process is 0.
pub type ProcessId = u32;
/// The container's main process.
pub const MAIN_PROCESS: ProcessId = 0;

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
}

/// A seccomp filter compiled to classic BPF (`struct sock_filter`, 8 bytes each, in the
/// native byte order of host and guest, both x86_64), with the `seccomp(2)` flags to
/// install it with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompProgram {
    /// The instructions: a multiple of [`SECCOMP_INSTRUCTION_LEN`] bytes.
    #[serde(with = "base64")]
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
}

impl Resources {
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

/// One process of the container, as the guest's `/proc` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestProcess {
    /// The pid in the container's PID namespace (what `ps` inside it shows).
    pub pid: i32,
    /// The parent's pid in the container's PID namespace (0 for its PID 1).
    pub ppid: i32,
    /// Real uid.
    pub uid: u32,
    /// The command line (`/proc/<pid>/cmdline`, NULs as spaces), or `[comm]` if empty.
    pub cmd: String,
    /// Resident memory in KiB.
    #[serde(default)]
    pub rss_kib: u64,
}

/// Usage figures of the container's cgroup in the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStats {
    /// `memory.current`, bytes.
    pub memory_usage: u64,
    /// `memory.max` in bytes; `None` for "max".
    #[serde(default)]
    pub memory_limit: Option<u64>,
    /// `cpu.stat` `usage_usec`.
    pub cpu_usage_usec: u64,
    /// `pids.current`.
    pub pids_current: u64,
    /// `pids.max`; `None` for "max".
    #[serde(default)]
    pub pids_limit: Option<u64>,
    /// `memory.events` `oom_kill`: processes the guest kernel killed for the limit.
    #[serde(default)]
    pub oom_kills: u64,
}

/// One OCI `mounts` entry the guest makes itself (proc, sysfs, tmpfs, devpts, mqueue,
/// cgroup/cgroup2), or a file bind mount (`fstype` "bind") whose content the host copied
/// into [`MountSpec::file`]. Directory bind mounts never get here: the host refuses them
/// (or turns Docker's `/dev/shm` into a tmpfs).
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
    /// For a file bind mount: the source file as the host read it at start. The guest
    /// recreates it and binds it on `destination` (a copy: later host changes are not seen).
    #[serde(default)]
    pub file: Option<FileContent>,
}

/// A copied-in file: its bytes and attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileContent {
    #[serde(with = "base64")]
    pub data: Vec<u8>,
    /// Permission bits (`0o644`, setuid and sticky included).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The guest's network, mirrored by the host from the container's network namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// One per virtio-net device; an empty list leaves the guest with loopback only.
    #[serde(default)]
    pub interfaces: Vec<InterfaceSpec>,
    /// Loopback nameservers of the container's `resolv.conf` (Docker's `127.0.0.11`):
    /// the guest runs a DNS forwarder on each (UDP and TCP port 53) that relays to the
    /// host over [`DNS_PORT`].
    #[serde(default)]
    pub dns_forward: Vec<String>,
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

/// First frame on a [`DNS_PORT`] connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsRelayHeader {
    /// The loopback nameserver to ask (`127.0.0.11`); the host refuses anything that is
    /// not a loopback address.
    pub server: String,
    /// Whether the messages go to the server over TCP (a TCP client) or UDP.
    pub tcp: bool,
}

/// How the guest builds the container's root filesystem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsSpec {
    /// Read-only EROFS block devices, lowest layer last (overlayfs `lowerdir` order).
    pub lower_devices: Vec<String>,
    /// Mount the result read-only (`root.readonly`).
    #[serde(default)]
    pub readonly: bool,
    /// The writable layer: an ext4 block device holding the overlay's upper and work
    /// directories. When set, the guest sends its changes on [`WRITEBACK_PORT`] after the
    /// main process exits. `None`: a tmpfs upper whose changes are dropped (read-only
    /// roots, and hosts from before this field).
    #[serde(default)]
    pub writable_device: Option<String>,
}

impl Default for RootfsSpec {
    fn default() -> Self {
        Self {
            lower_devices: vec!["/dev/vda".into()],
            readonly: false,
            writable_device: None,
        }
    }
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by a signal.
    Signaled(i32),
}

impl ExitStatus {
    /// The shell/containerd convention: the exit code, or 128+signo for a signal death.
    /// Never panics, whatever numbers a guest sent (the host refuses impossible ones).
    pub fn code(self) -> i32 {
        match self {
            Self::Exited(c) => c & 0xff,
            Self::Signaled(s) => 128 + (s & 0x7f),
        }
    }
}

/// Messages from the guest init to the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestMessage {
    Hello {
        version: u32,
    },
    /// The process is running (its `execve` succeeded). `pid` is in the guest's root PID namespace.
    Started {
        process: ProcessId,
        pid: i32,
    },
    /// The process could not be started; `code` is what runc would exit with (126 not
    /// executable, 127 not found, 1 other setup failures).
    StartFailed {
        process: ProcessId,
        code: i32,
        message: String,
    },
    /// The process has exited and its output streams are closed.
    Exited {
        process: ProcessId,
        status: ExitStatus,
    },
    /// The answer to [`HostMessage::ListProcesses`]: the container's processes.
    Processes {
        request: u32,
        processes: Vec<GuestProcess>,
    },
    /// The answer to [`HostMessage::Stats`].
    Stats {
        request: u32,
        stats: GuestStats,
    },
    /// The answer to [`HostMessage::Update`]: `error` names what could not be applied.
    Updated {
        request: u32,
        #[serde(default)]
        error: Option<String>,
    },
}

/// Messages from the host to the guest init.
// `Run` is large, but it is sent once per container; boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMessage {
    /// Set up the root filesystem and run the container's main process.
    Run {
        rootfs: RootfsSpec,
        hostname: Option<String>,
        process: ProcessSpec,
        #[serde(default)]
        linux: LinuxSpec,
        /// The container's mounts, in order. Empty: the guest's default set (proc, /dev,
        /// devpts, /dev/shm, mqueue, sysfs, cgroup2), as before this field existed.
        #[serde(default)]
        mounts: Vec<MountSpec>,
        /// The container's network (interfaces to configure, DNS to forward). Empty:
        /// loopback only, as before this field existed.
        #[serde(default)]
        network: NetworkSpec,
    },
    /// Deliver a signal to a process.
    Signal { process: ProcessId, signal: i32 },
    /// Run another process in the running container (`runvm exec`): it joins the main
    /// process's namespaces. `process` is a new id picked by the host (never 0, never
    /// reused while the VM runs). The guest answers `Started` or `StartFailed`, then
    /// `Exited`, for that id, and opens that process's streams only once it runs.
    Exec {
        process: ProcessId,
        spec: ProcessSpec,
    },
    /// Set the window size of a process's terminal (`TIOCSWINSZ` on its pty master).
    Resize {
        process: ProcessId,
        rows: u16,
        cols: u16,
    },
    /// The host has everything it needs; sync and power off.
    Shutdown,
    /// List the container's processes; the guest answers [`GuestMessage::Processes`]
    /// with the same `request` (picked by the host, one answer per request).
    ListProcesses { request: u32 },
    /// Report the container cgroup's usage; answered by [`GuestMessage::Stats`].
    Stats { request: u32 },
    /// Change the container cgroup's limits (`runvm update`); answered by
    /// [`GuestMessage::Updated`].
    Update { request: u32, resources: Resources },
}

/// First frame on a [`STREAM_PORT`] connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    pub process: ProcessId,
    /// 0 stdin, 1 stdout, 2 stderr.
    pub fd: u8,
}

/// Ownership, permissions and modification time of a written-back file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Permission bits only (`0o7777`); the file type is the entry's kind.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
}

/// The kind of a [`WritebackEntry::Special`] file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpecialKind {
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// One change of the writable layer, in the order the guest walks it (a directory before
/// its contents). Paths are relative to the container's root, as raw bytes (base64 in the
/// JSON), `/`-separated, with no empty, `.` or `..` component; the host refuses others.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WritebackEntry {
    /// A directory that exists in the writable layer. `opaque`: it replaces the one below
    /// (what was in it before is gone), otherwise it is merged with it.
    Dir {
        #[serde(with = "base64")]
        path: Vec<u8>,
        meta: FileMeta,
        opaque: bool,
    },
    /// A regular file; exactly `size` raw bytes follow this frame on the connection.
    File {
        #[serde(with = "base64")]
        path: Vec<u8>,
        meta: FileMeta,
        size: u64,
    },
    Symlink {
        #[serde(with = "base64")]
        path: Vec<u8>,
        meta: FileMeta,
        #[serde(with = "base64")]
        target: Vec<u8>,
    },
    /// Another name of a file sent earlier (`target`, a path like `path`).
    Hardlink {
        #[serde(with = "base64")]
        path: Vec<u8>,
        #[serde(with = "base64")]
        target: Vec<u8>,
    },
    Special {
        #[serde(with = "base64")]
        path: Vec<u8>,
        meta: FileMeta,
        kind: SpecialKind,
        rdev: u64,
    },
    /// The path was deleted (an overlay whiteout).
    Whiteout {
        #[serde(with = "base64")]
        path: Vec<u8>,
    },
    /// End of the stream: `entries` entries came before it; `skipped` changes the guest
    /// could not read (it logged them). A stream without `End` is truncated.
    End { entries: u64, skipped: u64 },
}

/// Raw bytes as a standard base64 string in JSON (much denser than serde's number arrays).
pub mod base64 {
    use serde::{Deserialize, Deserializer, Serializer};

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Encodes `data` with padding.
    pub fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }

    /// Decodes padded base64; `None` for anything else.
    pub fn decode(text: &str) -> Option<Vec<u8>> {
        let t = text.as_bytes();
        if !t.len().is_multiple_of(4) {
            return None;
        }
        let mut out = Vec::with_capacity(t.len() / 4 * 3);
        for (i, q) in t.chunks(4).enumerate() {
            let last = i + 1 == t.len() / 4;
            let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
            if pad > 2 || (pad > 0 && !last) {
                return None;
            }
            let mut n = 0u32;
            for &c in &q[..4 - pad] {
                n = n << 6 | value(c)?;
            }
            n <<= 6 * pad as u32;
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..3 - pad]);
        }
        Some(out)
    }

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        decode(&text).ok_or_else(|| serde::de::Error::custom("invalid base64"))
    }
}

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("I/O error on the connection: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {len} bytes is over the {limit}-byte limit of this connection")]
    TooLarge { len: u32, limit: u32 },
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Writes one frame: a little-endian `u32` length, then the JSON body.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    write_frame_limited(w, msg, MAX_FRAME_LEN)
}

/// [`write_frame`] with the size limit of the connection (e.g. [`MAX_HOST_FRAME_LEN`]).
pub fn write_frame_limited<W: Write, T: Serialize>(
    w: &mut W,
    msg: &T,
    limit: u32,
) -> Result<(), FrameError> {
    let body = serde_json::to_vec(msg)?;
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
        len: u32::MAX,
        limit,
    })?;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)?;
    Ok(())
}

/// Reads one frame. A clean EOF before the first byte is [`FrameError::Closed`].
pub fn read_frame<R: Read, T: for<'de> Deserialize<'de>>(r: &mut R) -> Result<T, FrameError> {
    read_frame_limited(r, MAX_FRAME_LEN)
}

/// [`read_frame`] with the size limit of the connection.
pub fn read_frame_limited<R: Read, T: for<'de> Deserialize<'de>>(
    r: &mut R,
    limit: u32,
) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(len);
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {

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

    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        let msg = GuestMessage::Exited {
            process: 0,
            status: ExitStatus::Signaled(9),
        };
        write_frame(&mut buf, &msg).unwrap();
        let back: GuestMessage = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn a_run_without_the_newer_fields_still_decodes() {
        let old = br#"{"Run":{"rootfs":{"lower_devices":["/dev/vda"]},"hostname":null,
            "process":{"args":["sh"],"env":[],"cwd":"/"}}}"#;
        let HostMessage::Run {
            process,
            linux,
            mounts,
            network,
            ..
        } = serde_json::from_slice(old).unwrap()
        else {
            panic!("not a Run")
        };
        assert!(mounts.is_empty());
        assert_eq!(network, NetworkSpec::default());
        assert_eq!(linux, LinuxSpec::default());
        assert!(process.rlimits.is_empty());
        assert!(!process.no_new_privileges);
        assert_eq!(process.oom_score_adj, None);
        assert_eq!(process.capabilities, None);
        assert_eq!(process.console_size, None);
    }

    #[test]
    fn exec_and_resize_round_trip() {
        for msg in [
            HostMessage::Exec {
                process: 7,
                spec: ProcessSpec {
                    args: vec!["id".into()],
                    terminal: true,
                    console_size: Some(WindowSize { rows: 24, cols: 80 }),
                    ..Default::default()
                },
            },
            HostMessage::Resize {
                process: 7,
                rows: 50,
                cols: 132,
            },
        ] {
            let mut buf = Vec::new();
            write_frame(&mut buf, &msg).unwrap();
            let back: HostMessage = read_frame(&mut buf.as_slice()).unwrap();
            assert_eq!(back, msg);
        }
    }

    #[test]
    fn base64_round_trips_and_rejects_garbage() {
        for len in 0..70 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = base64::encode(&data);
            assert_eq!(text.len() % 4, 0);
            assert_eq!(base64::decode(&text).unwrap(), data, "{text}");
        }
        assert_eq!(base64::encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64::encode(b"fo"), "Zm8=");
        for bad in ["Zm8", "Zm8*", "Z===", "Zm==Zm8=", "====", "Zm9v\n"] {
            assert!(base64::decode(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn writeback_entries_carry_raw_byte_paths() {
        let e = WritebackEntry::File {
            path: b"etc/\xff\n name".to_vec(),
            meta: FileMeta {
                mode: 0o4755,
                uid: 1,
                gid: 2,
                mtime: -5,
                mtime_nsec: 7,
            },
            size: 3,
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &e).unwrap();
        let back: WritebackEntry =
            read_frame_limited(&mut buf.as_slice(), MAX_WRITEBACK_FRAME_LEN).unwrap();
        assert_eq!(back, e);
        let bad = br#"{"Whiteout":{"path":"not base64!"}}"#;
        let mut f = (bad.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(bad);
        assert!(matches!(
            read_frame_limited::<_, WritebackEntry>(&mut f.as_slice(), MAX_WRITEBACK_FRAME_LEN),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn limits_are_per_connection() {
        let run = HostMessage::Run {
            rootfs: RootfsSpec::default(),
            hostname: None,
            process: ProcessSpec::default(),
            linux: LinuxSpec::default(),
            mounts: vec![MountSpec {
                destination: "/sbin/docker-init".into(),
                fstype: "bind".into(),
                file: Some(FileContent {
                    data: vec![0x7f; 2 << 20],
                    mode: 0o755,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            network: NetworkSpec::default(),
        };
        let mut buf = Vec::new();
        assert!(matches!(
            write_frame(&mut buf, &run),
            Err(FrameError::TooLarge { .. })
        ));
        write_frame_limited(&mut buf, &run, MAX_HOST_FRAME_LEN).unwrap();
        assert!(matches!(
            read_frame::<_, HostMessage>(&mut buf.as_slice()),
            Err(FrameError::TooLarge { .. })
        ));
        let back: HostMessage =
            read_frame_limited(&mut buf.as_slice(), MAX_HOST_FRAME_LEN).unwrap();
        assert_eq!(back, run);
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(ExitStatus::Exited(42).code(), 42);
        assert_eq!(ExitStatus::Exited(256 + 3).code(), 3);
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
        assert_eq!(ExitStatus::Signaled(15).code(), 143);
        // Garbage from a guest does not overflow.
        let _ = ExitStatus::Signaled(i32::MAX).code();
        let _ = ExitStatus::Signaled(i32::MIN).code();
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let huge = (MAX_FRAME_LEN + 1).to_le_bytes();
        assert!(matches!(
            read_frame::<_, GuestMessage>(&mut &huge[..]),
            Err(FrameError::TooLarge { .. })
        ));
        let mut junk = 5u32.to_le_bytes().to_vec();
        junk.extend_from_slice(b"{{{{{");
        assert!(matches!(
            read_frame::<_, GuestMessage>(&mut junk.as_slice()),
            Err(FrameError::Malformed(_))
        ));
        let short = [1u8, 0];
        assert!(matches!(
            read_frame::<_, GuestMessage>(&mut &short[..]),
            Err(FrameError::Io(_))
        ));
        assert!(matches!(
            read_frame::<_, GuestMessage>(&mut &[][..]),
            Err(FrameError::Closed)
        ));
        let unknown = br#"{"Reboot":{}}"#;
        let mut f = (unknown.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(unknown);
        assert!(read_frame::<_, GuestMessage>(&mut f.as_slice()).is_err());
    }
}
