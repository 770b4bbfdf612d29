//! The monitor's host-side API: `runvm start`/`kill` talk to a container's monitor over
//! a Unix socket in its state directory (`monitor.sock`), one request per connection,
//! framed like the guest protocol.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use runvm_protocol::{read_frame, write_frame, FrameError};
use serde::{Deserialize, Serialize};

/// File name of the socket in the state directory.
pub const SOCKET: &str = "monitor.sock";

/// What a runvm command asks of a monitor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Run the container's process (`runvm start`).
    Start,
    /// Deliver a signal to the container's process (`runvm kill`).
    Signal { signal: i32 },
}

/// The monitor's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Ok,
    Error(String),
}

/// Errors talking to a monitor.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("container not running (its monitor does not answer: {0})")]
    Unreachable(std::io::Error),
    #[error("the container's monitor gave no valid answer: {0}")]
    Frame(#[from] FrameError),
}

/// Sends `req` to the monitor whose state directory is `dir`, waiting up to `timeout`.
pub fn request(dir: &Path, req: &Request, timeout: Duration) -> Result<Response, ApiError> {
    let sockets = crate::sockpath::SocketDir::open(dir).map_err(ApiError::Unreachable)?;
    let mut s = UnixStream::connect(sockets.path(SOCKET)).map_err(ApiError::Unreachable)?;
    s.set_read_timeout(Some(timeout))
        .map_err(ApiError::Unreachable)?;
    s.set_write_timeout(Some(timeout))
        .map_err(ApiError::Unreachable)?;
    write_frame(&mut s, req)?;
    Ok(read_frame(&mut s)?)
}
