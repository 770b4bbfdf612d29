//! The messages of each connection: [`GuestMessage`] up and [`HostMessage`] down the
//! control connection, and the first frame of a stream connection ([`StreamHeader`]),
//! of a DNS relay connection ([`DnsRelayHeader`]) and of a socket relay connection
//! ([`SocketRelayHeader`]). All are closed enums or plain structs: anything else a guest
//! sends fails to decode.

use serde::{Deserialize, Serialize};

use crate::spec::{LinuxSpec, MountSpec, NetworkSpec, ProcessSpec, Resources, RootfsSpec};

/// Identifies a process inside the guest. The container's main process is 0.
pub type ProcessId = u32;
/// The container's main process.
pub const MAIN_PROCESS: ProcessId = 0;

/// Identifies a container inside the guest: the VM's own (the one of
/// [`HostMessage::Run`]) is [`MAIN_CONTAINER`]; the members of its pod, added by
/// [`HostMessage::AddContainer`], get ids from the host (never 0, never reused while the
/// VM runs).
pub type ContainerId = u32;
/// The container of [`HostMessage::Run`], whose main process the VM lives for.
pub const MAIN_CONTAINER: ContainerId = 0;

/// Which namespaces of the main container a member container joins instead of getting
/// its own ([`HostMessage::AddContainer`]). The network namespace is always the VM's.
/// Kubernetes shares IPC and UTS with the pod's sandbox, the PID namespace only with
/// `shareProcessNamespace`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedNamespaces {
    #[serde(default)]
    pub pid: bool,
    #[serde(default)]
    pub ipc: bool,
    #[serde(default)]
    pub uts: bool,
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

/// First frame on a [`DNS_PORT`](crate::DNS_PORT) connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsRelayHeader {
    /// The loopback nameserver to ask (`127.0.0.11`); the host refuses anything that is
    /// not a loopback address.
    pub server: String,
    /// Whether the messages go to the server over TCP (a TCP client) or UDP.
    pub tcp: bool,
}

/// First frame on a [`SOCKET_PORT`](crate::SOCKET_PORT) connection: which of the
/// container's socket relays ([`MountSpec::relay`]) the connection is for. The host
/// connects to the socket it recorded for that number (the guest never names a host path).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketRelayHeader {
    pub relay: u32,
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
        /// The container cgroup's `memory.events` `oom_kill` count when the exit is
        /// reported (0 from a guest that does not say): how the host learns of an OOM
        /// kill before it reports the exit (a process the guest's OOM killer killed has
        /// ended by then, its count included).
        #[serde(default)]
        oom_kills: u64,
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
    /// The answer to [`HostMessage::RemoveContainer`]: `error` names what could not be
    /// undone (the container is forgotten either way).
    ContainerRemoved {
        container: ContainerId,
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
        /// The container whose namespaces and root the process joins
        /// ([`MAIN_CONTAINER`] when absent, as before this field existed).
        #[serde(default)]
        container: ContainerId,
    },
    /// Set the window size of a process's terminal (`TIOCSWINSZ` on its pty master).
    Resize {
        process: ProcessId,
        rows: u16,
        cols: u16,
    },
    /// The host has everything it needs; sync and power off.
    Shutdown,
    /// List the processes of `container` (the main one when absent, as before the field
    /// existed); the guest answers [`GuestMessage::Processes`] with the same `request`
    /// (picked by the host, one answer per request).
    ListProcesses {
        request: u32,
        #[serde(default)]
        container: ContainerId,
    },
    /// Report the usage of `container`'s cgroup; answered by [`GuestMessage::Stats`].
    Stats {
        request: u32,
        #[serde(default)]
        container: ContainerId,
    },
    /// Change the limits of `container`'s cgroup (`runvm update`); answered by
    /// [`GuestMessage::Updated`].
    Update {
        request: u32,
        resources: Resources,
        #[serde(default)]
        container: ContainerId,
    },
    /// Freeze (`frozen`) or thaw the processes of member `container` (`runvm pause` and
    /// `resume` of a container in another's VM, which goes on); answered by
    /// [`GuestMessage::Updated`].
    Freeze {
        request: u32,
        container: ContainerId,
        frozen: bool,
    },
    /// Start another container in the VM beside the main one (see [`NewContainer`]).
    AddContainer(NewContainer),
    /// Undo a member container whose main process has exited: unmount its root and
    /// share (and unbind the share's device), remove its cgroup; answered by
    /// [`GuestMessage::ContainerRemoved`].
    RemoveContainer { container: ContainerId },
}

/// Start another container in the VM beside the main one (a member of the pod, or a
/// `--network container:` peer): its own root (the directory `rootfs.root` of the
/// virtio-fs share `rootfs.share_tag`), mount and PID namespaces, guest cgroup with
/// the limits of `linux.resources`, UTS and IPC namespaces unless `share` says it
/// joins the main container's; always the VM's network. `container` and `process`
/// are new ids from the host (never 0, never reused while the VM runs; `process`
/// shares its space with exec'd processes). The guest answers `Started` or
/// `StartFailed` (which leaves nothing of the container in the guest) for `process`,
/// then `Exited` when the container's main process has ended (with its own PID
/// namespace, everything else in it dies with it). The VM still lives as long as the
/// main container's process: when that ends, the members are killed and reported
/// first.
///
/// `device`, when given, is the guest's platform device that holds the share's
/// virtio-fs device (`virtio-mmio.<N>`: a spare slot the host filled while the VM
/// runs): the guest binds it to the virtio-mmio driver before it mounts the share
/// (waiting a little for the tag to appear), and unbinds it at `RemoveContainer`
/// after the unmount, after which the host can empty the slot. Without it, the share
/// is a device the VM booted with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewContainer {
    pub container: ContainerId,
    pub process: ProcessId,
    pub rootfs: RootfsSpec,
    pub hostname: Option<String>,
    pub spec: ProcessSpec,
    #[serde(default)]
    pub linux: LinuxSpec,
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    #[serde(default)]
    pub share: SharedNamespaces,
    #[serde(default)]
    pub device: Option<String>,
}

/// First frame on a [`STREAM_PORT`](crate::STREAM_PORT) connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    pub process: ProcessId,
    /// 0 stdin (or a terminal, both ways), [`OUTPUT_STREAM_FD`](crate::OUTPUT_STREAM_FD)
    /// stdout and stderr together.
    pub fd: u8,
}

/// The one frame on a [`WAKE_PORT`](crate::WAKE_PORT) connection: the host wakes a guest
/// restored from a template. Everything in it differs from one clone to the next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wake {
    /// Fresh random bytes from the host ([`WAKE_SEED_LEN`] of them): the guest mixes them
    /// into its entropy pool and reseeds its random number generator before anything of
    /// the container runs, so clones of one template never share random numbers.
    pub seed: Vec<u8>,
    /// The host's wall-clock time (`CLOCK_REALTIME`) when it sent this: seconds and
    /// nanoseconds since the epoch. The guest sets its clock to it.
    pub realtime_secs: i64,
    pub realtime_nanos: u32,
    /// Platform devices (`virtio-mmio.<n>`) the host filled after the restore (the
    /// container's share, its NICs): the guest binds each before it goes on.
    pub bind: Vec<u32>,
}

/// Length of [`Wake::seed`].
pub const WAKE_SEED_LEN: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{read_frame, read_frame_limited, write_frame, FrameError, WindowSize};

    #[test]
    fn a_run_without_the_newer_fields_still_decodes() {
        let old = br#"{"Run":{"rootfs":{"share_tag":"runvm","root":"root"},"hostname":null,
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
    fn queries_without_a_container_are_the_main_containers() {
        for (old, want) in [
            (
                &br#"{"ListProcesses":{"request":1}}"#[..],
                HostMessage::ListProcesses {
                    request: 1,
                    container: MAIN_CONTAINER,
                },
            ),
            (
                br#"{"Stats":{"request":2}}"#,
                HostMessage::Stats {
                    request: 2,
                    container: MAIN_CONTAINER,
                },
            ),
        ] {
            assert_eq!(serde_json::from_slice::<HostMessage>(old).unwrap(), want);
        }
        let member = HostMessage::Update {
            request: 3,
            resources: Resources::default(),
            container: 4,
        };
        let json = serde_json::to_vec(&member).unwrap();
        assert_eq!(
            serde_json::from_slice::<HostMessage>(&json).unwrap(),
            member
        );
    }

    #[test]
    fn an_exit_without_its_oom_count_still_decodes() {
        let old = br#"{"Exited":{"process":3,"status":{"Signaled":9}}}"#;
        assert_eq!(
            serde_json::from_slice::<GuestMessage>(old).unwrap(),
            GuestMessage::Exited {
                process: 3,
                status: ExitStatus::Signaled(9),
                oom_kills: 0,
            }
        );
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
                container: 3,
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
    fn an_exec_without_a_container_joins_the_main_one() {
        let old = br#"{"Exec":{"process":4,"spec":{"args":["id"],"env":[],"cwd":"/"}}}"#;
        let HostMessage::Exec { container, .. } = serde_json::from_slice(old).unwrap() else {
            panic!("not an Exec")
        };
        assert_eq!(container, MAIN_CONTAINER);
    }

    #[test]
    fn container_messages_round_trip() {
        for msg in [
            HostMessage::AddContainer(NewContainer {
                container: 2,
                process: 9,
                rootfs: RootfsSpec {
                    share_tag: "runvm-c2".into(),
                    root: "root".into(),
                    readonly: true,
                },
                hostname: Some("pod".into()),
                spec: ProcessSpec {
                    args: vec!["sh".into()],
                    ..Default::default()
                },
                linux: LinuxSpec::default(),
                mounts: vec![],
                share: SharedNamespaces {
                    pid: false,
                    ipc: true,
                    uts: true,
                },
                device: Some("virtio-mmio.4".into()),
            }),
            HostMessage::RemoveContainer { container: 2 },
        ] {
            let mut buf = Vec::new();
            write_frame(&mut buf, &msg).unwrap();
            let back: HostMessage = read_frame(&mut buf.as_slice()).unwrap();
            assert_eq!(back, msg);
        }
        let removed = GuestMessage::ContainerRemoved {
            container: 2,
            error: Some("busy".into()),
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &removed).unwrap();
        let back: GuestMessage = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!(back, removed);
        // Namespaces the protocol does not know do not decode.
        let bad = br#"{"pid":true,"net":true}"#;
        assert!(serde_json::from_slice::<SharedNamespaces>(bad).is_err());
    }

    #[test]
    fn a_socket_relay_header_is_a_number_and_nothing_else() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &SocketRelayHeader { relay: 3 }).unwrap();
        let back: SocketRelayHeader = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!(back.relay, 3);
        // A guest naming a host path gets nowhere: the frame does not decode.
        let bad = br#"{"relay":1,"path":"/var/run/docker.sock"}"#;
        let mut f = (bad.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(bad);
        assert!(matches!(
            read_frame_limited::<_, SocketRelayHeader>(&mut f.as_slice(), 64),
            Err(FrameError::Malformed(_))
        ));
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
}
