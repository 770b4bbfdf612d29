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
//! - [`STREAM_PORT`]: the stdio of a process: stdin and one output stream ([`output`]:
//!   stdout and stderr as chunks, in order), or one stream both ways for a terminal. The
//!   guest writes one [`StreamHeader`] frame, then the connection carries the bytes. EOF
//!   (shutdown of the write side) is end of stream.
//! - [`DNS_PORT`]: one connection per DNS query or TCP client of the guest's forwarder.
//! - [`SOCKET_PORT`]: one connection per client of a bind-mounted host UNIX socket: a
//!   [`SocketRelayHeader`] frame, then raw bytes both ways.
//!
//! Files are not carried here: the container's root filesystem and bind mounts are a
//! virtio-fs share ([`SHARE_TAG`]) that the host serves with virtiofsd.
//!
//! Frame size limits are per direction: guest → host frames are small
//! ([`MAX_FRAME_LEN`]); host → guest frames are bounded by [`MAX_HOST_FRAME_LEN`].
//!
//! Modules: [`framing`] (frames, their limits and the one decoder), [`messages`] (what
//! each connection carries), [`output`] (the chunks of a process's output stream),
//! [`spec`] (what the guest builds and runs), [`boot`] (the boot-timer port), [`scm`]
//! (descriptors over local UNIX sockets: the console socket, the exec client). The
//! wire types are re-exported here.
//!
//! Shutdown handshake: after the workload exits, the guest drains its output pipes,
//! shuts down the output streams, sends [`GuestMessage::Exited`], and waits for
//! [`HostMessage::Shutdown`] (sent once the host has read every stream to EOF) before it
//! syncs and reboots. Output written just before exit is never lost.

mod base64_field;
pub mod boot;
pub mod framing;
#[cfg(test)]
mod fuzz_tests;
pub mod messages;
pub mod output;
pub mod scm;
pub mod spec;

pub use boot::{BootMark, BOOT_TIMER_PORT};
pub use framing::{
    read_frame, read_frame_limited, write_frame, write_frame_limited, FrameDecoder, FrameError,
    MAX_FRAME_LEN, MAX_HOST_FRAME_LEN,
};
pub use messages::{
    ContainerId, DnsRelayHeader, ExitStatus, GuestMessage, GuestProcess, GuestStats, HostMessage,
    NewContainer, ProcessId, SharedNamespaces, SocketRelayHeader, StreamHeader, Wake,
    MAIN_CONTAINER, MAIN_PROCESS, WAKE_SEED_LEN,
};
pub use output::{
    chunk, chunk_header, Chunk, OutputError, OutputReader, CHUNK_HEADER_LEN, MAX_CHUNK_LEN,
    OUTPUT_STREAM_FD,
};
pub use spec::{
    AddressSpec, Capabilities, DeviceSpec, IdMapping, InterfaceSpec, Ipv6Conf, LinuxSpec,
    MountSpec, NetworkSpec, ProcessSpec, Resources, Rlimit, RootfsSpec, RouteSpec, SeccompProgram,
    WindowSize, CAPABILITY_NAMES, SECCOMP_INSTRUCTION_LEN, SHARE_ROOT, SHARE_TAG, VIRTIOFSD_FLAGS,
};

/// Version of this protocol; the guest sends it in `Hello` and the host refuses others.
pub const PROTOCOL_VERSION: u32 = 7;
/// vsock port of the control connection (guest → host).
pub const CONTROL_PORT: u32 = 1024;
/// vsock port of the stdio stream connections (guest → host).
pub const STREAM_PORT: u32 = 1025;
/// vsock port of the socket relays (guest → host), see [`SocketRelayHeader`].
pub const SOCKET_PORT: u32 = 1028;
/// vsock port of the DNS relay (guest → host): the guest's forwarder opens one connection
/// per query (UDP) or per client connection (TCP), sends a [`DnsRelayHeader`] frame, and
/// then the connection carries DNS messages in DNS-over-TCP framing (a big-endian `u16`
/// length before each message), which the host sends from the container's network
/// namespace to the named loopback server, port 53.
pub const DNS_PORT: u32 = 1027;
/// vsock port a template guest init listens on (host → guest; see [`Wake`]): one
/// connection, one [`Wake`] frame from the host, then the guest closes it and goes on as a
/// cold-booted guest does (connects to [`CONTROL_PORT`] and says `Hello`).
pub const WAKE_PORT: u32 = 1029;
/// Kernel command-line word that puts the guest init in template mode: after its own
/// mounts it reports [`BootMark::TemplateReady`] and waits on [`WAKE_PORT`].
pub const TEMPLATE_CMDLINE: &str = "runvm.template=1";
