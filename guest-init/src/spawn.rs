//! Starting one child of init: a raw `clone` with fork semantics (into new namespaces when
//! asked), the plumbing of its stdio, and the report of how far it got.
//!
//! Stdio is three pipes (two when stdout and stderr share one, as the host's do for
//! `2>&1`: `ProcessSpec::shared_output`), or with `terminal` a socketpair over which the child sends the
//! master of the pty it opens ([`crate::terminal`]). When the host's stdin is `/dev/null`
//! (`ProcessSpec::stdin_null`), the child's is the container's `/dev/null` instead of the
//! stdin pipe, as under runc; the pipe's write end, which nothing reads, still takes the
//! host's (empty) stream. The child reports through a
//! close-on-exec pipe: EOF means `execve` succeeded; otherwise it writes a runc-like code
//! (`i32`, little endian) and a message, and exits with that code.

use crate::error::{Context, Error, Result, CODE_SETUP};
use crate::{signals, terminal};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::socket;
use nix::unistd::{ForkResult, Pid};
use runvm_protocol::{ProcessSpec, WindowSize};
use std::convert::Infallible;
use std::os::fd::{AsRawFd, OwnedFd};

/// The parent's side of a started process's stdio.
pub enum Stdio {
    /// Pipes: the write end of stdin, the read ends of stdout and stderr (`None`: stderr
    /// is the stdout pipe).
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: Option<OwnedFd>,
    },
    /// The master of the process's pty (allocated from the container's devpts).
    Terminal { master: OwnedFd },
}

/// What the parent keeps of a started process.
pub struct Spawned {
    pub pid: Pid,
    pub stdio: Stdio,
}

/// A process whose setup or `execve` failed: the error, and the pid to reap.
pub struct Failed {
    pub pid: Pid,
    pub error: Error,
}

/// How a start went, for a child that exists either way.
pub enum Started {
    /// The child runs its program.
    Running(Spawned),
    /// The child failed before or at `execve` (or init could not take its pty master);
    /// it exits (or was killed) and must be reaped.
    Failed(Failed),
}

/// The child's side of its stdio, set up in the container after its mounts exist.
pub enum ChildStdio {
    /// The read end of stdin (`None`: the container's `/dev/null`), the write ends of
    /// stdout and stderr.
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// Open a pty from the container's `/dev/ptmx`, send its master over `to_parent`.
    Terminal {
        to_parent: OwnedFd,
        size: Option<WindowSize>,
    },
}

impl ChildStdio {
    /// Puts the stdio on fds 0, 1 and 2 of the calling process.
    pub fn install(self) -> Result<()> {
        match self {
            Self::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                let stdin = match stdin {
                    Some(pipe) => pipe,
                    // In the container's view: its own /dev/null, read-only as the one
                    // containerd opens for runc.
                    None => std::fs::File::open("/dev/null")
                        .context("open /dev/null for stdin")?
                        .into(),
                };
                for (target, fd) in [(0, &stdin), (1, &stdout), (2, &stderr)] {
                    nix::unistd::dup2(fd.as_raw_fd(), target).context("dup2 stdio")?;
                }
                Ok(())
            }
            Self::Terminal { to_parent, size } => terminal::attach(to_parent, size),
        }
    }
}

/// The parent's ends of the stdio plumbing, before the child runs.
enum ParentStdio {
    /// The write end of stdin, the read ends of stdout and stderr (`None`: shared).
    Pipes(OwnedFd, OwnedFd, Option<OwnedFd>),
    /// Where the child sends its pty master.
    Terminal(OwnedFd),
}

/// Both ends of a child's stdio, made before the clone.
struct Plumbing {
    parent: ParentStdio,
    child: ChildStdio,
}

fn plumbing(p: &ProcessSpec) -> Result<Plumbing> {
    if p.terminal {
        let (parent, child) = socket::socketpair(
            socket::AddressFamily::Unix,
            socket::SockType::Stream,
            None,
            socket::SockFlag::SOCK_CLOEXEC,
        )
        .context("socketpair for the pty master")?;
        return Ok(Plumbing {
            parent: ParentStdio::Terminal(parent),
            child: ChildStdio::Terminal {
                to_parent: child,
                size: p.console_size,
            },
        });
    }
    let (stdin, stdout) = (Pipe::new()?, Pipe::new()?);
    let child_stdin = (!p.stdin_null).then_some(stdin.read);
    if p.shared_output {
        let stderr = stdout.write.try_clone().context("dup the output pipe")?;
        return Ok(Plumbing {
            parent: ParentStdio::Pipes(stdin.write, stdout.read, None),
            child: ChildStdio::Pipes {
                stdin: child_stdin,
                stdout: stdout.write,
                stderr,
            },
        });
    }
    let stderr = Pipe::new()?;
    Ok(Plumbing {
        parent: ParentStdio::Pipes(stdin.write, stdout.read, Some(stderr.read)),
        child: ChildStdio::Pipes {
            stdin: child_stdin,
            stdout: stdout.write,
            stderr: stderr.write,
        },
    })
}

/// The two ends of a close-on-exec pipe.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe")?;
        Ok(Self { read, write })
    }
}

/// Clones a child into `namespaces` (fork semantics), runs `child` in it with its side of
/// the stdio of `p`, and waits for it to `execve` (the status pipe reaches EOF) or to
/// report an error. `Err(_)` is a failure of init itself.
pub fn start(
    namespaces: CloneFlags,
    p: &ProcessSpec,
    child: impl FnOnce(ChildStdio) -> Result<Infallible>,
) -> Result<Started> {
    let plumbing = plumbing(p)?;
    let status = Pipe::new()?;
    let pid = match clone(namespaces)? {
        ForkResult::Child => {
            drop((plumbing.parent, status.read));
            child_main(child, plumbing.child, status.write)
        }
        ForkResult::Parent { child: pid } => pid,
    };
    drop((plumbing.child, status.write));
    let report = read_to_eof(&status.read)
        .map_err(|e| Error::new(format!("read the workload's exec status: {e}")))?;
    if let Some(error) = decode_report(&report) {
        return Ok(Started::Failed(Failed { pid, error }));
    }
    Ok(match take_stdio(pid, plumbing.parent) {
        Ok(stdio) => Started::Running(Spawned { pid, stdio }),
        Err(error) => Started::Failed(Failed { pid, error }),
    })
}

/// `clone` with `namespaces` and SIGCHLD on exit, and no new stack: fork semantics.
fn clone(namespaces: CloneFlags) -> Result<ForkResult> {
    let flags = namespaces.bits() | libc::SIGCHLD;
    // SAFETY: a raw clone without CLONE_VM and with a null stack has fork semantics: the
    // child gets a copy of our (single-threaded) address space and returns here on its own
    // copy of the stack. nix's `clone` wants a separate stack and a callback, and glibc's
    // `fork` cannot create namespaces. The child never returns from `child_main`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match ret {
        r if r < 0 => Err(Error::new(format!("clone: {}", Errno::last()))),
        0 => Ok(ForkResult::Child),
        child => Ok(ForkResult::Parent {
            child: Pid::from_raw(child as i32),
        }),
    }
}

/// The parent's side of the child's stdio once it runs: the pipes, or the pty master it
/// sent (a child whose master cannot be received is killed).
fn take_stdio(pid: Pid, parent: ParentStdio) -> Result<Stdio> {
    match parent {
        ParentStdio::Pipes(stdin, stdout, stderr) => Ok(Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        }),
        ParentStdio::Terminal(sock) => match terminal::receive_master(&sock) {
            Ok(master) => Ok(Stdio::Terminal { master }),
            Err(e) => {
                signals::kill(pid);
                Err(Error::new(format!("receive the pty master: {e}")))
            }
        },
    }
}

/// Everything a child wrote on a report pipe until EOF (here: the status pipe, until its
/// `execve` or its exit).
pub fn read_to_eof(pipe: &OwnedFd) -> std::result::Result<Vec<u8>, Errno> {
    let mut report = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match nix::unistd::read(pipe.as_raw_fd(), &mut chunk) {
            Ok(0) => return Ok(report),
            Ok(n) => report.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// The child: a clean signal state, then `child`; its error is reported and ends the
/// child with its code. Never returns.
fn child_main(
    child: impl FnOnce(ChildStdio) -> Result<Infallible>,
    stdio: ChildStdio,
    status: OwnedFd,
) -> ! {
    let e = match signals::reset_in_child().and_then(|()| child(stdio)) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    write_report(&status, &e);
    // SAFETY: _exit ends this forked child at once, without running atexit handlers or
    // flushing stdio buffers that are copies of the parent's. nix 0.29 has no wrapper.
    unsafe { libc::_exit(e.code & 0xff) }
}

/// Writes the report of `e` whole (or as far as the pipe takes it).
fn write_report(status: &OwnedFd, e: &Error) {
    let report = encode_report(e);
    let mut off = 0;
    while off < report.len() {
        match nix::unistd::write(status, &report[off..]) {
            Ok(n) => off += n,
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
}

fn encode_report(e: &Error) -> Vec<u8> {
    let mut v = e.code.to_le_bytes().to_vec();
    v.extend_from_slice(e.message.as_bytes());
    v
}

/// `None` for an empty report (exec succeeded).
fn decode_report(b: &[u8]) -> Option<Error> {
    if b.is_empty() {
        return None;
    }
    let Some((code, message)) = b.split_first_chunk::<4>() else {
        return Some(Error::with_code(
            CODE_SETUP,
            "truncated error report from the workload",
        ));
    };
    Some(Error::with_code(
        i32::from_le_bytes(*code),
        String::from_utf8_lossy(message),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_reports_round_trip() {
        assert!(decode_report(&[]).is_none());
        let e = Error::with_code(127, "exec: \"x\": executable file not found in $PATH");
        assert_eq!(decode_report(&encode_report(&e)), Some(e));
        assert_eq!(decode_report(&[1, 2]).unwrap().code, 1);
    }
}
