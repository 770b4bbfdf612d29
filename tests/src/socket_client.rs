//! A UNIX socket client to run inside a busybox container, for the tests of bind-mounted
//! host sockets (`-v /path/app.sock:/path/app.sock`): busybox's `nc` speaks TCP and UDP
//! only, and the container has no `socat`.
//!
//! The client is the running suite binary itself. [`install`] copies it, with the dynamic
//! loader and the shared libraries this process runs with (read from `/proc/self/maps`),
//! into a directory a test puts in the container; [`argv`] is the command that runs it
//! there through that loader (nothing of the image's own libraries is needed). Started
//! with [`SOCKET_ENV`] set, the binary is a client ([`run_if_asked`]): it connects to that
//! socket, sends [`REQUEST_ENV`]'s text, closes its sending half, reads the answer to its
//! end and prints it as one line, `reply: <answer>`.
//!
//! A suite with its own `main` (the Docker and Podman suites) calls [`run_if_asked`]
//! first thing; a libtest suite runs the one test that calls it first thing, by name.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// The socket the client connects to (a path in the container).
pub const SOCKET_ENV: &str = "RUNVM_TEST_SOCKET_CLIENT";
/// What the client sends.
pub const REQUEST_ENV: &str = "RUNVM_TEST_SOCKET_REQUEST";
/// The prefix of the line the client prints with the answer.
pub const REPLY_PREFIX: &str = "reply: ";

/// The loader's name in the kit.
const LOADER: &str = "ld.so";
/// The binary's name in the kit.
const CLIENT: &str = "client";

/// The shared objects mapped into this process (the loader first), as files on disk.
fn mapped_libraries() -> Vec<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("reading /proc/self/maps");
    let mut libs: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        let p = PathBuf::from(path);
        let is_lib = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains(".so"));
        if path.starts_with('/') && is_lib && !libs.contains(&p) {
            libs.push(p);
        }
    }
    libs.sort_by_key(|p| !is_loader(p));
    assert!(
        libs.first().is_some_and(|p| is_loader(p)),
        "no dynamic loader (ld-linux) is mapped into this process: {libs:?}"
    );
    libs
}

fn is_loader(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("ld-linux"))
}

/// Copies this binary, its loader and its shared libraries into `dir` (created if
/// missing), for [`argv`] to run in a container that sees `dir` somewhere.
pub fn install(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let exe = std::fs::read_link("/proc/self/exe").expect("reading /proc/self/exe");
    let copy = |from: &Path, name: &str| {
        let to = dir.join(name);
        std::fs::copy(from, &to)
            .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
    };
    copy(&exe, CLIENT);
    for (i, lib) in mapped_libraries().iter().enumerate() {
        if i == 0 {
            copy(lib, LOADER);
        } else {
            let name = lib.file_name().unwrap().to_string_lossy().into_owned();
            copy(lib, &name);
        }
    }
}

/// The command that runs the client installed in the container's `kit` directory, with
/// `args` for the binary.
pub fn argv(kit: &str, args: &[&str]) -> Vec<String> {
    let mut v = vec![
        format!("{kit}/{LOADER}"),
        "--library-path".to_string(),
        kit.to_string(),
        format!("{kit}/{CLIENT}"),
    ];
    v.extend(args.iter().map(|a| a.to_string()));
    v
}

/// When [`SOCKET_ENV`] is set, acts as the client (see the module's doc) and returns
/// true; panics if the connection fails. Returns false otherwise.
pub fn run_if_asked() -> bool {
    let Some(path) = std::env::var_os(SOCKET_ENV) else {
        return false;
    };
    let request = std::env::var(REQUEST_ENV).unwrap_or_default();
    let mut conn = UnixStream::connect(&path)
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", Path::new(&path).display()));
    conn.write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("sending the request: {e}"));
    conn.shutdown(Shutdown::Write)
        .unwrap_or_else(|e| panic!("closing the sending half: {e}"));
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .unwrap_or_else(|e| panic!("reading the answer: {e}"));
    println!("{REPLY_PREFIX}{answer}");
    true
}

/// The host end: a UNIX socket server that reads each connection's request to its end,
/// records it, and answers `host got: <request>`. Stops (and removes its socket) when
/// dropped.
pub struct Server {
    path: PathBuf,
    received: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Listens at `path` (which must not exist).
    pub fn start(path: &Path) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::os::unix::net::UnixListener::bind(path)
            .unwrap_or_else(|e| panic!("binding {}: {e}", path.display()));
        listener.set_nonblocking(true).unwrap();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r, s) = (received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                let mut conn = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        continue;
                    }
                    Err(e) => panic!("accept: {e}"),
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(std::time::Duration::from_secs(60)))
                    .unwrap();
                let mut request = String::new();
                // A client that breaks off is recorded with what it sent.
                let _ = conn.read_to_string(&mut request);
                let _ = conn.write_all(format!("host got: {request}").as_bytes());
                r.lock().unwrap().push(request);
            }
        });
        Self {
            path: path.to_path_buf(),
            received,
            stop,
            thread: Some(thread),
        }
    }

    /// The requests received so far, in order.
    pub fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
