//! Byte relays between the host's stdio descriptors and the guest's stream connections.

use std::io::{ErrorKind, Read, Write};
use std::mem::ManuallyDrop;
use std::net::Shutdown;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

fn borrowed_file(fd: RawFd) -> ManuallyDrop<std::fs::File> {
    // SAFETY: the descriptor stays open for the life of the process (it is one of the
    // monitor's stdio fds) and ManuallyDrop keeps us from closing it.
    ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Copies the guest stream to host `fd` until the guest closes it. If the host side
/// stops accepting data, the rest is read and dropped so the guest never blocks.
pub fn spawn_output(mut stream: UnixStream, fd: RawFd) -> std::io::Result<JoinHandle<u64>> {
    std::thread::Builder::new()
        .name(format!("runvm-out{fd}"))
        .spawn(move || {
            let mut out = borrowed_file(fd);
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            let mut host_open = true;
            loop {
                let n = match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                total += n as u64;
                if host_open && out.write_all(&buf[..n]).is_err() {
                    host_open = false;
                }
            }
            total
        })
}

/// Copies host `fd` to the guest stream; EOF on the host becomes EOF in the guest.
/// Not joined: it may block on a host stdin that never closes.
pub fn spawn_input(stream: UnixStream, fd: RawFd) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("runvm-stdin".into())
        .spawn(move || {
            let mut input = borrowed_file(fd);
            let mut stream = stream;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            let _ = stream.shutdown(Shutdown::Write);
        })?;
    Ok(())
}
