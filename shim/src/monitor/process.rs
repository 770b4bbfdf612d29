//! The monitor's table entry for one process of the container (the main one, id 0, or an
//! exec'd one): its host descriptors, the relays of its guest streams, its exit, and for
//! an exec'd one the `runvm exec` connection that waits for it.
//!
//! A process is complete when the guest reported its end and every output stream it has
//! (two with pipes, one with a terminal) was relayed to its end; only then are its host
//! descriptors closed and its waiter told, so no output is lost and no caller's pipe is
//! held open after the process.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use runvm_protocol::{ContainerId, ExitStatus, WindowSize, MAIN_CONTAINER, OUTPUT_STREAM_FD};
use vmm_sys_util::eventfd::EventFd;

use super::stdio::{self, HostOutput, InputRelay, OutputRelay};

/// A process's descriptors on the host side.
pub enum HostStdio {
    /// Pipes, FIFOs or files: stdin, stdout, stderr.
    Pipes {
        stdin: File,
        stdout: File,
        stderr: File,
    },
    /// A terminal: what is typed on `input` goes to the guest pty, its output to `output`
    /// (the same terminal, or the caller's stdin and stdout). `input`'s window size is
    /// the process's.
    Terminal { input: File, output: File },
}

impl HostStdio {
    /// Copies of this process's own fds 0, 1 and 2.
    pub fn inherited() -> std::io::Result<Self> {
        let dup =
            |fd: BorrowedFd<'_>| -> std::io::Result<File> { Ok(fd.try_clone_to_owned()?.into()) };
        Ok(Self::Pipes {
            stdin: dup(std::io::stdin().as_fd())?,
            stdout: dup(std::io::stdout().as_fd())?,
            stderr: dup(std::io::stderr().as_fd())?,
        })
    }

    /// The descriptors of the host's stdio.
    pub fn raw_fds(&self) -> Vec<i32> {
        use std::os::fd::AsRawFd;
        match self {
            Self::Pipes {
                stdin,
                stdout,
                stderr,
            } => vec![stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()],
            Self::Terminal { input, output } => vec![input.as_raw_fd(), output.as_raw_fd()],
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Terminal { .. })
    }

    /// Whether stdout and stderr are one file, as `2>&1` makes them: the same pipe,
    /// socket, device or file. The guest process then gets one pipe for both, as it would
    /// get the one file under runc. (Two separate opens of one regular file, `>f 2>f`,
    /// count as one too: under runc their writes overwrite each other, here they follow
    /// each other.)
    pub fn output_shared(&self) -> bool {
        let Self::Pipes { stdout, stderr, .. } = self else {
            return false;
        };
        use std::os::unix::fs::MetadataExt;
        match (stdout.metadata(), stderr.metadata()) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => false,
        }
    }

    /// Whether stdin (without a terminal) is `/dev/null`: what containerd gives runc for
    /// a process without stdin (`docker run` or `docker exec` without `-i`), and what
    /// runc passes on. The guest then gives the process its own `/dev/null`, so that
    /// `readlink /proc/self/fd/0` says so, as under runc.
    pub fn stdin_is_null(&self) -> bool {
        let Self::Pipes { stdin, .. } = self else {
            return false;
        };
        stdin.metadata().is_ok_and(|m| is_dev_null(&m))
    }
}

/// Whether `m` is the null device: a character device with `/dev/null`'s numbers (1, 3),
/// whatever its path.
fn is_dev_null(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    m.file_type().is_char_device() && m.rdev() == libc::makedev(1, 3)
}

/// Why a guest stream could not be attached to its process.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The guest opened the stream a second time.
    #[error("stream {0} of the process was opened twice")]
    OpenedTwice(u8),
    /// The guest named a stream the process does not have.
    #[error("unexpected stream fd {0}")]
    UnexpectedFd(u8),
    #[error("cannot start a relay thread: {0}")]
    Relay(#[source] std::io::Error),
}

/// One process of the container, as the monitor tracks it.
pub struct Process {
    /// Host descriptors not yet handed to a relay: stdin/stdout/stderr, or a terminal's
    /// input and output.
    slots: [Option<File>; 3],
    terminal: bool,
    /// Where the window size is read (a terminal's input), for resizes.
    size_from: Option<File>,
    inputs: Vec<InputRelay>,
    /// The relay of the output stream (both outputs, or a terminal's).
    output: Option<OutputRelay>,
    /// The guest's word on how it ended (set for a start failure too).
    pub status: Option<ExitStatus>,
    pub started: bool,
    /// `runvm exec`'s connection (exec'd processes only).
    pub client: Option<UnixStream>,
    /// The host pid of the `runvm exec` waiting for this process (for `runvm ps`).
    pub holder: Option<i32>,
    /// The container it runs in: the VM's own, or a member's.
    pub container: ContainerId,
    /// Its container cgroup's OOM kills when the guest reported its exit.
    pub oom_kills: u64,
}

impl Process {
    pub fn new(stdio: HostStdio, client: Option<UnixStream>) -> Self {
        let terminal = stdio.is_terminal();
        let (slots, size_from) = match stdio {
            HostStdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => ([Some(stdin), Some(stdout), Some(stderr)], None),
            HostStdio::Terminal { input, output } => {
                let size = input.try_clone().ok();
                ([Some(input), Some(output), None], size)
            }
        };
        Self {
            slots,
            terminal,
            size_from,
            inputs: Vec::new(),
            output: None,
            status: None,
            started: false,
            client,
            holder: None,
            container: MAIN_CONTAINER,
            oom_kills: 0,
        }
    }

    pub fn terminal(&self) -> bool {
        self.terminal
    }

    /// The current window size of this process's host terminal.
    pub fn window_size(&self) -> Option<WindowSize> {
        self.size_from
            .as_ref()
            .and_then(|f| super::tty::window_size(f.as_raw_fd()))
    }

    /// Starts relaying the guest stream for `fd`; `done` fires when an output relay ends.
    pub fn attach(
        &mut self,
        fd: u8,
        stream: UnixStream,
        done: &EventFd,
    ) -> Result<(), AttachError> {
        let taken = |slots: &mut [Option<File>; 3], i: usize| {
            slots[i].take().ok_or(AttachError::OpenedTwice(fd))
        };
        let relay = AttachError::Relay;
        match (self.terminal, fd) {
            (false, 0) => {
                let stdin = taken(&mut self.slots, 0)?;
                self.inputs
                    .push(stdio::spawn_input(stdin, stream).map_err(relay)?);
            }
            (false, OUTPUT_STREAM_FD) => {
                let stdout = taken(&mut self.slots, 1)?;
                let stderr = taken(&mut self.slots, 2)?;
                let done = done.try_clone().map_err(relay)?;
                let out = HostOutput::Chunked { stdout, stderr };
                self.output = Some(stdio::spawn_output(stream, out, done).map_err(relay)?);
            }
            (true, 0) => {
                let input = taken(&mut self.slots, 0)?;
                let output = taken(&mut self.slots, 1)?;
                let theirs = stream.try_clone().map_err(relay)?;
                self.inputs
                    .push(stdio::spawn_input(input, theirs).map_err(relay)?);
                let done = done.try_clone().map_err(relay)?;
                let out = HostOutput::Raw(output);
                self.output = Some(stdio::spawn_output(stream, out, done).map_err(relay)?);
            }
            _ => return Err(AttachError::UnexpectedFd(fd)),
        }
        Ok(())
    }

    /// Ended in the guest and every output relayed to its end.
    pub fn complete(&self) -> bool {
        self.status.is_some() && self.outputs_done()
    }

    /// The output stream, if the guest opened it, was relayed to its end.
    pub fn accepted_outputs_done(&self) -> bool {
        self.output.as_ref().is_none_or(OutputRelay::finished)
    }

    pub fn outputs_done(&self) -> bool {
        self.output.as_ref().is_some_and(OutputRelay::finished)
    }

    /// Stops the input relays and closes every host descriptor of the process.
    pub fn end(self) {
        for i in &self.inputs {
            i.cancel();
        }
        if let Some(t) = self.output {
            if t.finished() {
                let _ = t.join();
            } else {
                log::warn!("an output stream did not reach its end; some output may be missing");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipes_with_stdin(stdin: File) -> HostStdio {
        let out = || File::create("/dev/null").unwrap();
        HostStdio::Pipes {
            stdin,
            stdout: out(),
            stderr: out(),
        }
    }

    #[test]
    fn only_the_null_device_is_a_null_stdin() {
        let null = File::open("/dev/null").unwrap();
        assert!(pipes_with_stdin(null).stdin_is_null());
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(!pipes_with_stdin(File::from(r)).stdin_is_null(), "a pipe");
        let zero = File::open("/dev/zero").unwrap();
        assert!(!pipes_with_stdin(zero).stdin_is_null(), "another device");
        let empty = std::env::temp_dir().join(format!("runvm-empty-{}", std::process::id()));
        std::fs::write(&empty, "").unwrap();
        let file = File::open(&empty).unwrap();
        std::fs::remove_file(&empty).unwrap();
        assert!(!pipes_with_stdin(file).stdin_is_null(), "an empty file");
        let terminal = HostStdio::Terminal {
            input: File::open("/dev/null").unwrap(),
            output: File::create("/dev/null").unwrap(),
        };
        assert!(!terminal.stdin_is_null(), "a terminal's input is the pty");
    }
}
