//! The shape every host service the guest reaches over vsock has (the DNS relay, the
//! socket relays): a listener (the vsock Unix socket of its port) served on a thread of
//! its own for as long as the monitor lives, one thread per guest connection, a bound on
//! how many run at once (more are closed), and two-way byte copies with half-close.

use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Serves `listener` on a thread named `name`, confined as `kind` (its connections'
/// threads inherit the filter): each connection is handed to `handle` on a thread of its
/// own, at most `max` at once (more are closed at once). `handle`'s error is logged
/// (debug: it is the guest's doing).
pub fn serve(
    listener: UnixListener,
    name: &'static str,
    kind: vmm::seccomp::ThreadKind,
    max: usize,
    handle: impl Fn(UnixStream) -> Result<(), String> + Send + Sync + 'static,
) -> std::io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    let handle = Arc::new(handle);
    std::thread::Builder::new()
        .name(format!("runvm-{name}"))
        .spawn(move || {
            vmm::seccomp::enter(kind);
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if active.fetch_add(1, Ordering::SeqCst) >= max {
                    active.fetch_sub(1, Ordering::SeqCst);
                    log::debug!("{name}: {max} connections already; one refused");
                    continue;
                }
                let (a, h) = (active.clone(), handle.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("runvm-{name}-conn"))
                    .spawn(move || {
                        if let Err(e) = h(conn) {
                            log::debug!("{name}: {e}");
                        }
                        a.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })?;
    Ok(())
}

/// A stream that can be cloned for the other direction and shut down for writing.
pub trait Duplex: std::io::Read + std::io::Write + Send + Sized + 'static {
    fn clone_stream(&self) -> std::io::Result<Self>;
    fn shutdown_write(&self);
}

impl Duplex for UnixStream {
    fn clone_stream(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl Duplex for std::net::TcpStream {
    fn clone_stream(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// Copies bytes both ways between `a` and `b` until both directions ended; the end of
/// one direction (EOF) shuts down writing on the other side, so half-closes carry over.
pub fn splice<A: Duplex, B: Duplex>(a: A, b: B) -> std::io::Result<()> {
    let (mut a_r, mut b_w) = (a.clone_stream()?, b.clone_stream()?);
    let up = std::thread::Builder::new()
        .name("runvm-splice".into())
        .spawn(move || {
            let _ = std::io::copy(&mut a_r, &mut b_w);
            b_w.shutdown_write();
        })?;
    let (mut b_r, mut a_w) = (b, a);
    let _ = std::io::copy(&mut b_r, &mut a_w);
    a_w.shutdown_write();
    let _ = up.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use vmm::seccomp::ThreadKind::SocketRelay;

    #[test]
    fn splice_carries_both_ways_and_half_closes() {
        let (mut guest, host_side) = UnixStream::pair().unwrap();
        let (server_side, mut server) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || splice(host_side, server_side).unwrap());
        guest.write_all(b"ping").unwrap();
        guest.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"ping", "the guest's EOF reached the server");
        server.write_all(b"pong").unwrap();
        drop(server);
        let mut back = Vec::new();
        guest.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"pong");
        t.join().unwrap();
    }

    #[test]
    fn serve_bounds_the_connections_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = std::sync::Mutex::new(rx);
        serve(listener, "test", SocketRelay, 1, move |mut c| {
            c.write_all(b"hi").map_err(|e| e.to_string())?;
            // Holds its slot until told.
            let _ = rx.lock().unwrap().recv();
            Ok(())
        })
        .unwrap();
        let mut first = UnixStream::connect(&path).unwrap();
        let mut b = [0u8; 2];
        first.read_exact(&mut b).unwrap();
        let mut second = UnixStream::connect(&path).unwrap();
        let mut rest = Vec::new();
        second.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "the second connection is closed at once");
        tx.send(()).unwrap();
    }
}
