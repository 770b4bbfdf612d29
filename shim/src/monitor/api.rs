//! The monitor's host-side API: `runvm start`/`kill`/`exec` talk to a container's
//! monitor over a Unix socket in its state directory (`monitor.sock`), one request per
//! connection, framed like the guest protocol. The callers' side is [`request`] (and
//! [`request_control`]); the monitor's is [`accept_request`] and [`answer`].

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use runvm_protocol::{read_frame, write_frame, FrameError};
use serde::{Deserialize, Serialize};

/// File name of the socket in the state directory.
pub const SOCKET: &str = "monitor.sock";

/// What a runvm command asks of a monitor.
// `Exec` is large, but a request is built once per command; boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Run the container's process (`runvm start`).
    Start,
    /// Deliver a signal to the container's process (`runvm kill`).
    Signal { signal: i32 },
    /// Run another process in the container (`runvm exec`). The frame is followed by one
    /// message carrying [`exec_fd_count`] descriptors (SCM_RIGHTS); then the connection
    /// stays open: [`ExecEvent`]s come back, [`ExecControl`]s go in, and its end (the
    /// `runvm exec` process died) kills the process.
    Exec {
        spec: runvm_protocol::ProcessSpec,
        /// The container of the VM the process joins: the VM's own
        /// ([`runvm_protocol::MAIN_CONTAINER`]), or a member's (the id its
        /// [`ExecEvent::Added`] gave).
        #[serde(default)]
        container: runvm_protocol::ContainerId,
    },
    /// Run another container in this container's VM: one that joins its network
    /// namespace (`docker run --network container:…`, the containers of a pod). Framed
    /// like `Exec`: the frame is followed by one message carrying [`exec_fd_count`]
    /// stdio descriptors and then a connection to the virtiofsd that serves the
    /// member's share (SCM_RIGHTS), and the connection stays open the same way: an
    /// [`ExecEvent::Added`], then the events of the member's main process, whose end (or
    /// the connection's) removes the member from the VM.
    AddContainer { member: MemberSpec },
    /// `Processes`, `Stats` or `Update` of member `container` (from the member's own
    /// monitor, which `runvm ps`, `events` and `update` of the member ask).
    Member {
        container: runvm_protocol::ContainerId,
        query: Box<Request>,
    },
    /// Stop the VM's vCPUs (`runvm pause`): the guest freezes entirely.
    Pause,
    /// Let a paused VM run again (`runvm resume`).
    Resume,
    /// The container's processes (`runvm ps`): the host pids (the monitor, the waiting
    /// `runvm exec` processes) and, with `guest`, the guest's process list.
    Processes { guest: bool },
    /// The guest cgroup's usage (`runvm events`).
    Stats,
    /// Change the guest cgroup's limits (`runvm update`; the host side is done by it).
    Update {
        resources: runvm_protocol::Resources,
    },
}

/// A member container, as its `runvm create` asks the VM's monitor for it: what the
/// guest's [`runvm_protocol::NewContainer`] needs but the ids, the share's tag and its
/// device, which the monitor gives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSpec {
    pub process: runvm_protocol::ProcessSpec,
    /// The member's root filesystem is read-only (`root.readonly`).
    pub readonly: bool,
    pub hostname: Option<String>,
    pub linux: runvm_protocol::LinuxSpec,
    pub mounts: Vec<runvm_protocol::MountSpec>,
    pub share: runvm_protocol::SharedNamespaces,
}

/// The monitor's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Ok,
    Error(String),
}

/// The monitor's answer to the requests of `pause`, `resume`, `ps`, `events`, `update`.
/// `Ok` and `Error` are encoded as [`Response`]'s, so a [`Response`] reads as one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlResponse {
    Ok,
    Error(String),
    /// The answer to [`Request::Processes`].
    Processes {
        host_pids: Vec<i32>,
        guest: Vec<runvm_protocol::GuestProcess>,
    },
    /// The answer to [`Request::Stats`].
    Stats(runvm_protocol::GuestStats),
}

/// Errors talking to a monitor.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("container not running (its monitor does not answer: {0})")]
    Unreachable(std::io::Error),
    #[error("the container's monitor gave no valid answer: {0}")]
    Frame(#[from] FrameError),
}

/// Connects to the monitor whose runtime directory is `dir` (through a short path where
/// the direct one is too long for a socket address).
pub fn connect(dir: &Path) -> Result<UnixStream, ApiError> {
    let sockets = crate::sockpath::SocketDir::open(dir).map_err(ApiError::Unreachable)?;
    UnixStream::connect(sockets.path(SOCKET)).map_err(ApiError::Unreachable)
}

/// Sends `req` to the monitor whose runtime directory is `dir`, waiting up to `timeout`.
pub fn request(dir: &Path, req: &Request, timeout: Duration) -> Result<Response, ApiError> {
    exchange(dir, req, timeout)
}

/// [`request`] for the requests answered by a [`ControlResponse`].
pub fn request_control(
    dir: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<ControlResponse, ApiError> {
    exchange(dir, req, timeout)
}

/// One request and its answer, of whichever type the request is answered with.
fn exchange<T: for<'de> serde::Deserialize<'de>>(
    dir: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<T, ApiError> {
    let mut s = connect(dir)?;
    s.set_read_timeout(Some(timeout))
        .map_err(ApiError::Unreachable)?;
    s.set_write_timeout(Some(timeout))
        .map_err(ApiError::Unreachable)?;
    write_frame(&mut s, req)?;
    Ok(read_frame(&mut s)?)
}

/// How long the monitor waits for a request's frame once a caller connected.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The next request on the monitor's socket, with the connection to answer on. `None`
/// when no caller was there after all, or its request was not one (it is logged and
/// dropped).
pub(super) fn accept_request(api: &UnixListener) -> Option<(UnixStream, Request)> {
    let (mut conn, _) = api.accept().ok()?;
    let _ = conn.set_read_timeout(Some(REQUEST_READ_TIMEOUT));
    match read_frame::<_, Request>(&mut conn) {
        Ok(req) => Some((conn, req)),
        Err(e) => {
            log::warn!("ignoring a malformed request on the monitor socket: {e}");
            None
        }
    }
}

/// Sends the monitor's answer ([`Response`], [`ControlResponse`] or [`ExecEvent`]) on
/// `conn`; a caller that went away only misses it.
pub(super) fn answer<T: Serialize>(conn: &mut UnixStream, answer: &T) {
    let _ = write_frame(conn, answer);
}

/// What the monitor sends on an exec connection, after `Request::Exec`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecEvent {
    /// The member of an `AddContainer` has been asked of the guest, as `container` (the
    /// id its `Exec`s name).
    Added {
        container: runvm_protocol::ContainerId,
    },
    /// The process runs; `pid` is its pid in the guest.
    Started { pid: i32 },
    /// It could not be started; `code` is the guest's runc-like code (126, 127, 1).
    Failed { code: i32, message: String },
    /// It ended, and all its output has been written: the shell convention's code. For
    /// the main process of a member container, `oom_kills` is its guest cgroup's count of
    /// OOM kills (the guest's word: its member monitor shows them in its host cgroup).
    Exited {
        code: i32,
        #[serde(default)]
        oom_kills: u64,
    },
}

/// What `runvm exec` sends on its connection once the process was asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecControl {
    /// Deliver a signal to the exec'd process.
    Signal { signal: i32 },
    /// Its terminal's window size changed.
    Resize { rows: u16, cols: u16 },
    /// The host process that waits for the exec'd process (a detached `runvm exec` forks
    /// it after connecting), which `runvm ps` lists.
    Holder { pid: i32 },
}

impl ExecControl {
    /// A resize to the window size the terminal `fd` has now (`None` without one).
    pub fn resize_to(fd: std::os::fd::RawFd) -> Option<Self> {
        super::tty::window_size(fd).map(|ws| Self::Resize {
            rows: ws.rows,
            cols: ws.cols,
        })
    }

    /// Sends this on the exec connection `conn`; a monitor that went away only misses it.
    pub fn send(&self, conn: &mut UnixStream) {
        if let Err(e) = write_frame(conn, self) {
            log::debug!("cannot pass {self:?} to the monitor: {e}");
        }
    }
}

/// How many stdio descriptors follow an exec or member request: the stdio of the process
/// (stdin, stdout, stderr), or a terminal's input and output.
pub fn exec_fd_count(terminal: bool) -> usize {
    if terminal {
        2
    } else {
        3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_requests_round_trip_and_an_exec_without_container_is_the_main_ones() {
        let req = Request::Member {
            container: 2,
            query: Box::new(Request::Update {
                resources: Default::default(),
            }),
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &req).unwrap();
        assert_eq!(read_frame::<_, Request>(&mut buf.as_slice()).unwrap(), req);
        let old = br#"{"Exec":{"spec":{"args":["id"],"env":[],"cwd":"/"}}}"#;
        let mut frame = (old.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(old);
        let Request::Exec { container, .. } = read_frame(&mut frame.as_slice()).unwrap() else {
            panic!("not an exec")
        };
        assert_eq!(container, runvm_protocol::MAIN_CONTAINER);
    }

    #[test]
    fn exec_messages_round_trip_and_garbage_is_an_error() {
        let mut buf = Vec::new();
        let ev = ExecEvent::Failed {
            code: 127,
            message: "exec: \"x\": executable file not found in $PATH".into(),
        };
        write_frame(&mut buf, &ev).unwrap();
        write_frame(&mut buf, &ExecControl::Resize { rows: 5, cols: 6 }).unwrap();
        let mut r = buf.as_slice();
        assert_eq!(read_frame::<_, ExecEvent>(&mut r).unwrap(), ev);
        assert_eq!(
            read_frame::<_, ExecControl>(&mut r).unwrap(),
            ExecControl::Resize { rows: 5, cols: 6 }
        );
        // An exit from a monitor older than member containers still decodes.
        let old = br#"{"Exited":{"code":3}}"#;
        let mut frame = (old.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(old);
        assert_eq!(
            read_frame::<_, ExecEvent>(&mut frame.as_slice()).unwrap(),
            ExecEvent::Exited {
                code: 3,
                oom_kills: 0
            }
        );
        let mut junk = 9u32.to_le_bytes().to_vec();
        junk.extend_from_slice(br#"{"Boom":1}"#);
        assert!(read_frame::<_, ExecControl>(&mut junk.as_slice()).is_err());
        assert!(matches!(
            read_frame::<_, ExecEvent>(&mut &b""[..]),
            Err(FrameError::Closed)
        ));
    }
}
