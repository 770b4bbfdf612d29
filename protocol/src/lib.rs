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
//!
//! Shutdown handshake: after the workload exits, the guest drains its output pipes,
//! shuts down the output streams, sends [`GuestMessage::Exited`], and waits for
//! [`HostMessage::Shutdown`] (sent once the host has read every stream to EOF) before it
//! syncs and reboots. Output written just before exit is never lost.

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// Version of this protocol; the guest sends it in `Hello` and the host refuses others.
pub const PROTOCOL_VERSION: u32 = 1;
/// vsock port of the control connection (guest → host).
pub const CONTROL_PORT: u32 = 1024;
/// vsock port of the stdio stream connections (guest → host).
pub const STREAM_PORT: u32 = 1025;
/// Largest frame either side accepts. Larger length prefixes are garbage.
pub const MAX_FRAME_LEN: u32 = 1 << 20;

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
}

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
}

/// One OCI `mounts` entry the guest makes itself (proc, sysfs, tmpfs, devpts, mqueue,
/// cgroup/cgroup2). Bind mounts never get here: the host refuses them.
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
}

/// How the guest builds the container's root filesystem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsSpec {
    /// Read-only EROFS block devices, lowest layer last (overlayfs `lowerdir` order).
    pub lower_devices: Vec<String>,
    /// Mount the result read-only (`root.readonly`).
    #[serde(default)]
    pub readonly: bool,
}

impl Default for RootfsSpec {
    fn default() -> Self {
        Self {
            lower_devices: vec!["/dev/vda".into()],
            readonly: false,
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
}

/// First frame on a [`STREAM_PORT`] connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    pub process: ProcessId,
    /// 0 stdin, 1 stdout, 2 stderr.
    pub fd: u8,
}

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("I/O error on the connection: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes is over the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(u32),
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Writes one frame: a little-endian `u32` length, then the JSON body.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let body = serde_json::to_vec(msg)?;
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge(u32::MAX))?;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)?;
    Ok(())
}

/// Reads one frame. A clean EOF before the first byte is [`FrameError::Closed`].
pub fn read_frame<R: Read, T: for<'de> Deserialize<'de>>(r: &mut R) -> Result<T, FrameError> {
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
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
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
            ..
        } = serde_json::from_slice(old).unwrap()
        else {
            panic!("not a Run")
        };
        assert!(mounts.is_empty());
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
            Err(FrameError::TooLarge(_))
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
