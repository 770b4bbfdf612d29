//! Byte relays between host descriptors (the caller's pipes, FIFOs, files or terminal)
//! and the guest's stream connections, one thread per direction: host descriptors are
//! used blocking, as they are (the monitor never changes the caller's file flags).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use runvm_protocol::{Chunk, OutputReader, MAX_CHUNK_LEN};
use vmm_sys_util::eventfd::EventFd;

/// A running output relay.
pub struct OutputRelay {
    handle: JoinHandle<u64>,
    /// Set (before `done` fires) once the stream ended and `out` is closed.
    finished: Arc<AtomicBool>,
}

impl OutputRelay {
    /// The guest closed the stream and everything was written (or dropped).
    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Waits for the thread (it is about to return once [`Self::finished`]).
    pub fn join(self) -> u64 {
        self.handle.join().unwrap_or(0)
    }
}

/// Where an output stream goes on the host.
pub enum HostOutput {
    /// A terminal's output: the stream's bytes as they are.
    Raw(File),
    /// stdout and stderr, from the chunks of the output stream, in the order the guest
    /// read them.
    Chunked { stdout: File, stderr: File },
}

/// Copies the guest stream to the host until the guest closes it, then closes the host
/// descriptors and fires `done`. If the host side stops accepting data, or the guest
/// sends what is not an output stream, the rest is read and dropped so the guest never
/// blocks.
pub fn spawn_output(
    stream: UnixStream,
    out: HostOutput,
    done: EventFd,
) -> std::io::Result<OutputRelay> {
    let finished = Arc::new(AtomicBool::new(false));
    let flag = finished.clone();
    let handle = std::thread::Builder::new()
        .name("runvm-out".into())
        .spawn(move || {
            vmm::seccomp::enter(vmm::seccomp::ThreadKind::StdioRelay);
            let total = match out {
                HostOutput::Raw(out) => copy_raw(stream, Some(out)),
                HostOutput::Chunked { stdout, stderr } => copy_chunks(stream, stdout, stderr),
            };
            // The flag first: whoever wakes on `done` must see it set.
            flag.store(true, Ordering::Release);
            let _ = done.write(1);
            total
        })?;
    Ok(OutputRelay { handle, finished })
}

/// Copies `stream` to `out` (or nowhere) to its end; the bytes read.
fn copy_raw(mut stream: UnixStream, mut out: Option<File>) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        total += n as u64;
        if out
            .as_mut()
            .is_some_and(|f| f.write_all(&buf[..n]).is_err())
        {
            out = None;
        }
    }
    total
}

/// Writes the chunks of `stream` to `stdout` and `stderr`, closing each at its end
/// chunk; the data bytes read.
fn copy_chunks(stream: UnixStream, stdout: File, stderr: File) -> u64 {
    let mut outs = [Some(stdout), Some(stderr)];
    let mut reader = OutputReader::new(stream);
    let mut buf = vec![0u8; MAX_CHUNK_LEN];
    let mut total = 0u64;
    loop {
        match reader.next_chunk(&mut buf) {
            Ok(None) => break,
            Ok(Some(Chunk::Data { fd, len })) => {
                total += len as u64;
                let slot = &mut outs[usize::from(fd - 1)];
                if slot
                    .as_mut()
                    .is_some_and(|f| f.write_all(&buf[..len]).is_err())
                {
                    *slot = None;
                }
            }
            Ok(Some(Chunk::End { fd })) => outs[usize::from(fd - 1)] = None,
            Err(e) => {
                log::warn!("the guest's output stream is broken ({e}); the rest is dropped");
                drop(outs);
                total += copy_raw(reader.into_inner(), None);
                break;
            }
        }
    }
    total
}

/// A running input relay; [`InputRelay::cancel`] ends it (and closes its descriptor)
/// even while the host side never sends anything.
pub struct InputRelay {
    cancel: EventFd,
}

impl InputRelay {
    pub fn cancel(&self) {
        let _ = self.cancel.write(1);
    }
}

/// Copies `input` to the guest stream; EOF on the host becomes EOF in the guest.
pub fn spawn_input(input: File, stream: UnixStream) -> std::io::Result<InputRelay> {
    let cancel = EventFd::new(libc::EFD_CLOEXEC)?;
    let theirs = cancel.try_clone()?;
    std::thread::Builder::new()
        .name("runvm-stdin".into())
        .spawn(move || {
            vmm::seccomp::enter(vmm::seccomp::ThreadKind::StdioRelay);
            let mut input = input;
            let mut stream = stream;
            let mut buf = vec![0u8; 64 * 1024];
            let cancel = super::poll::eventfd(&theirs);
            loop {
                let mut fds = [
                    PollFd::new(input.as_fd(), PollFlags::POLLIN),
                    PollFd::new(cancel, PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => break,
                }
                if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                    // The process is gone: nobody reads this input any more.
                    return;
                }
                match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    // EIO: a terminal whose other side was closed.
                    Err(_) => break,
                }
            }
            let _ = stream.shutdown(Shutdown::Write);
        })?;
    Ok(InputRelay { cancel })
}

#[cfg(test)]
mod tests {
    use super::*;
    use runvm_protocol::{chunk, chunk_header};

    /// Relays `wire` with stdout and stderr both going into one pipe (so the order of
    /// the writes shows) and returns what the pipe got, and the bytes counted.
    fn relay_into_one_pipe(wire: Vec<u8>) -> (Vec<u8>, u64) {
        let (guest, host) = UnixStream::pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let stdout = File::from(w);
        let stderr = stdout.try_clone().unwrap();
        let done = EventFd::new(libc::EFD_CLOEXEC).unwrap();
        let relay = spawn_output(
            host,
            HostOutput::Chunked { stdout, stderr },
            done.try_clone().unwrap(),
        )
        .unwrap();
        let writer = std::thread::spawn(move || {
            let mut guest = guest;
            guest.write_all(&wire).unwrap();
        });
        let mut got = Vec::new();
        File::from(r).read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert_eq!(done.read().unwrap(), 1);
        assert!(relay.finished());
        (got, relay.join())
    }

    #[test]
    fn stdout_and_stderr_are_written_in_the_order_the_guest_sent_them() {
        let mut wire = Vec::new();
        for (fd, data) in [(1, "one\n"), (2, "two\n"), (1, "three\n"), (2, "four\n")] {
            wire.extend(chunk(fd, data.as_bytes()));
        }
        let (got, total) = relay_into_one_pipe(wire);
        assert_eq!(got, b"one\ntwo\nthree\nfour\n");
        assert_eq!(total, 19);
    }

    #[test]
    fn an_end_chunk_closes_that_output_while_the_other_goes_on() {
        let (guest, host) = UnixStream::pair().unwrap();
        let (out_r, out_w) = nix::unistd::pipe().unwrap();
        let (err_r, err_w) = nix::unistd::pipe().unwrap();
        let done = EventFd::new(libc::EFD_CLOEXEC).unwrap();
        let out = HostOutput::Chunked {
            stdout: File::from(out_w),
            stderr: File::from(err_w),
        };
        let relay = spawn_output(host, out, done.try_clone().unwrap()).unwrap();
        let mut guest = guest;
        guest.write_all(&chunk(1, b"bye\n")).unwrap();
        guest.write_all(&chunk_header(1, 0)).unwrap();
        guest.write_all(&chunk(2, b"still here\n")).unwrap();
        // stdout is at EOF while the stream (and stderr) is still open.
        let mut stdout = Vec::new();
        File::from(out_r).read_to_end(&mut stdout).unwrap();
        assert_eq!(stdout, b"bye\n");
        assert!(!relay.finished());
        drop(guest);
        let mut stderr = Vec::new();
        File::from(err_r).read_to_end(&mut stderr).unwrap();
        assert_eq!(stderr, b"still here\n");
        assert_eq!(done.read().unwrap(), 1);
        assert_eq!(relay.join(), 15);
    }

    #[test]
    fn what_follows_a_broken_chunk_is_read_and_dropped() {
        let mut wire = chunk(1, b"good\n");
        wire.extend(chunk(7, b"bad fd\n"));
        wire.extend(chunk(2, b"after\n"));
        wire.extend(vec![b'x'; 256 * 1024]);
        let len = wire.len() as u64;
        let (got, total) = relay_into_one_pipe(wire);
        assert_eq!(got, b"good\n");
        // All of it was read, so a guest writing garbage never blocks.
        assert_eq!(total, len - 5 - 5);
    }
}
