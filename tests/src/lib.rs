//! Test harness for runvm's integration tests: bundles, a private state root per test,
//! checks that nothing (process, socket, state directory) is left behind, and waits for
//! events (a line of output, a process, a file's content) with a deadline and a message
//! saying what never happened: a test never sleeps in the hope that something happened.
//!
//! The tests that boot a guest read what to use from the environment that
//! `cargo xtask test` sets: `RUNVM_BIN` (the runvm binary), `RUNVM_TEST_ROOTFS` (a
//! busybox root filesystem), and `RUNVM_KERNEL`/`RUNVM_INITRAMFS` (the guest). They are
//! `#[ignore]`d for a plain `cargo test`, and fail loudly if run without that environment.

pub mod docker;
pub mod socket_client;
pub mod tmux;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the guest tests through `cargo xtask test`, which builds and sets everything")
    })
}

/// The runvm binary under test.
pub fn runvm_bin() -> PathBuf {
    PathBuf::from(required_env("RUNVM_BIN"))
}

/// The busybox root filesystem the tests' bundles share (`RUNVM_TEST_ROOTFS`).
pub fn test_rootfs() -> String {
    required_env("RUNVM_TEST_ROOTFS")
}

/// A temporary directory (the `tempfile` crate's) named after what it is for, mode 0755
/// like a directory made by `mkdir` (it may be a container's root or a bundle); removed on drop.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix(&format!("runvm-{tag}-"))
            .permissions(std::fs::Permissions::from_mode(0o755))
            .tempdir()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot create a temporary directory in {}: {e}",
                    std::env::temp_dir().display()
                )
            });
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// An OCI process JSON file for `runvm exec --process`, in a temporary directory kept
/// alive with it; the file's path as a string.
pub fn process_file(process: &serde_json::Value) -> (TempDir, String) {
    let dir = TempDir::new("process");
    let path = dir.path().join("p.json");
    std::fs::write(&path, process.to_string()).unwrap();
    let s = path.to_str().unwrap().to_string();
    (dir, s)
}

/// Polls `f` every 100 ms until it returns `Some`; panics after `timeout`, saying what
/// never happened (`what` completes "waiting for …").
#[track_caller]
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the file at `path` contains `needle`; returns its text. Panics after
/// `timeout` with what the file held.
#[track_caller]
pub fn wait_for_text(path: &Path, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} did not appear in {} within {timeout:?}; it holds {text:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pid in a pid file, if the file exists and holds one.
pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The lines a child writes to a pipe, read on a thread of their own, so that a test can
/// wait for one (with a deadline) while the child runs.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    pub fn new(pipe: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(pipe);
            let mut line = Vec::new();
            while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                let text = String::from_utf8_lossy(&line).into_owned();
                if tx.send(text).is_err() {
                    return;
                }
                line.clear();
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for the next line for which `pred` holds, and returns it. Panics after
    /// `timeout`, or when the output ends first, with every line read.
    #[track_caller]
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "timed out after {timeout:?} waiting for {what}; lines read: {:?}",
                    self.seen
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                    "the output ended before {what}; lines read: {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Every line read, from the first, once the output has ended (the caller makes it
    /// end, e.g. by waiting for the child). Panics if it has not ended within `timeout`.
    #[track_caller]
    pub fn all(mut self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return self.seen,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "the output did not end within {timeout:?}; lines read: {:?}",
                    self.seen
                ),
            }
        }
    }
}

/// Runs `cmd` to its end with `stdin` written to it (then closed) and its stdout and
/// stderr captured; kills it after `timeout` (then the test fails on its status).
pub fn run_with_input(mut cmd: Command, stdin: &[u8], timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    // A process that ends without reading all its input makes this write fail: what the
    // test checks is the process's output and status, not that.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = wait_with_timeout(child, timeout);
    let _ = writer.join();
    out
}

/// Runs `cmd` to its end with no input and its stdout and stderr captured; kills it after
/// `timeout` (then the test fails on its status).
pub fn output_of(mut cmd: Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    wait_with_timeout(child, timeout)
}

/// `RUNVM create --bundle B --pid-file P ID` as containerd runs it, `runvm` being the
/// runvm command with its global options and environment (as [`StateRoot::command`]
/// makes it with no arguments). The container's stdout and stderr go to the files
/// `stdout` and `stderr` of the bundle (see [`Bundle::stdout`]). Returns create's output,
/// its stderr being that file, and the pid from the pid file.
pub fn create_with(mut runvm: Command, bundle: &Bundle, id: &str) -> (Output, Option<i32>) {
    become_subreaper();
    let pid_file = bundle.path().join("init.pid");
    let out_file = std::fs::File::create(bundle.path().join("stdout")).unwrap();
    let err_file = std::fs::File::create(bundle.path().join("stderr")).unwrap();
    let child = runvm
        .args([
            "create",
            "--bundle",
            bundle.path().to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            id,
        ])
        .stdin(Stdio::null())
        .stdout(out_file)
        .stderr(err_file)
        .spawn()
        .expect("cannot start runvm create");
    let mut out = wait_with_timeout(child, Duration::from_secs(180));
    // What create itself said (the file then carries the container's stderr too).
    out.stderr = std::fs::read(bundle.path().join("stderr")).unwrap_or_default();
    (out, read_pid(&pid_file))
}

/// The namespaces of `runc spec` (a new network namespace included: runvm refuses to run
/// without one, as it cannot share the host's network stack).
pub fn default_namespaces() -> serde_json::Value {
    serde_json::json!([
        { "type": "pid" }, { "type": "network" }, { "type": "ipc" },
        { "type": "uts" }, { "type": "mount" },
    ])
}

/// Copies the busybox tree into `dir/rootfs` (`cp -a`: owners, modes, links) and returns
/// that path. The container's root filesystem is shared live with the host, as under
/// runc, so a container that writes needs a tree of its own: one shared by every test
/// would carry one test's files into the next (and into later runs).
pub fn private_rootfs(dir: &Path) -> PathBuf {
    let to = dir.join("rootfs");
    let out = Command::new("cp")
        .arg("-a")
        .arg(test_rootfs())
        .arg(&to)
        .output()
        .expect("running cp");
    assert!(
        out.status.success(),
        "copying the test rootfs to {}: {}",
        to.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    to
}

/// A bundle with its own copy of the busybox tree (`rootfs/` in the bundle).
pub struct Bundle {
    pub dir: TempDir,
}

impl Bundle {
    /// A bundle running `args` with cwd `/`, a standard PATH and `extra_env`.
    pub fn new(args: &[&str]) -> Self {
        Self::with(args, "/", &[])
    }

    pub fn with(args: &[&str], cwd: &str, extra_env: &[&str]) -> Self {
        let mut env =
            vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
        env.extend(extra_env.iter().map(|s| s.to_string()));
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": { "terminal": false, "user": { "uid": 0, "gid": 0 }, "args": args, "env": env, "cwd": cwd },
            "root": { "path": "rootfs", "readonly": false },
            "hostname": "runvm-test",
            "linux": { "namespaces": default_namespaces() },
        });
        let b = Self::from_config(&config.to_string());
        private_rootfs(b.path());
        b
    }

    /// A bundle with this exact config.json text (for malformed-input tests).
    pub fn from_config(text: &str) -> Self {
        let dir = TempDir::new("bundle");
        std::fs::write(dir.path().join("config.json"), text).unwrap();
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Changes the bundle's config.json with `edit`.
    pub fn edit_config(&self, edit: impl FnOnce(&mut serde_json::Value)) {
        let path = self.path().join("config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(&path, v.to_string()).unwrap();
    }

    /// A bundle whose process gets a terminal (`process.terminal: true`).
    pub fn terminal(args: &[&str]) -> Self {
        let b = Self::new(args);
        b.edit_config(|v| v["process"]["terminal"] = true.into());
        b
    }

    /// What the container wrote to its stdout (for bundles run with [`StateRoot::create`]).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.path().join("stdout")).unwrap_or_default()
    }

    /// Waits until the container's stdout (see [`Bundle::stdout`]) contains `needle`;
    /// returns it. Panics after `timeout` with what it holds.
    #[track_caller]
    pub fn wait_for_stdout(&self, needle: &str, timeout: Duration) -> String {
        wait_for_text(&self.path().join("stdout"), needle, timeout)
    }
}

/// A private `--root` for one test; checks on drop that nothing was left in it.
pub struct StateRoot {
    pub dir: TempDir,
}

impl Default for StateRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl StateRoot {
    pub fn new() -> Self {
        Self {
            dir: TempDir::new("root"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `runvm --root <this> <args…>`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(runvm_bin());
        c.arg("--root").arg(self.path()).args(args);
        c
    }

    /// Runs `runvm run --bundle B ID` to completion with `stdin` as input.
    pub fn run(&self, bundle: &Bundle, id: &str, stdin: &[u8]) -> Output {
        let cmd = self.command(&["run", "--bundle", bundle.path().to_str().unwrap(), id]);
        run_with_input(cmd, stdin, Duration::from_secs(120))
    }

    /// Runs `runvm <args…>` and returns its output.
    pub fn cmd(&self, args: &[&str]) -> Output {
        output_of(self.command(args), Duration::from_secs(120))
    }

    /// `runvm create --bundle B --pid-file P ID` (see [`create_with`]).
    pub fn create(&self, bundle: &Bundle, id: &str) -> (Output, Option<i32>) {
        create_with(self.command(&[]), bundle, id)
    }

    /// Creates and starts `bundle` as `id`, asserting both succeed; the monitor's pid.
    #[track_caller]
    pub fn running(&self, bundle: &Bundle, id: &str) -> i32 {
        let (out, pid) = self.create(bundle, id);
        assert_eq!(code(&out), 0, "create: {}", stderr(&out));
        let out = self.cmd(&["start", id]);
        assert_eq!(code(&out), 0, "start: {}", stderr(&out));
        pid.expect("create wrote no pid file")
    }

    /// `runvm state ID` parsed, or None when it fails.
    pub fn state(&self, id: &str) -> Option<serde_json::Value> {
        let out = self.cmd(&["state", id]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("state prints JSON"))
    }

    /// The container's status from `runvm state`, or "gone" when state fails.
    pub fn status(&self, id: &str) -> String {
        self.state(id)
            .map(|s| s["status"].as_str().unwrap_or("?").to_string())
            .unwrap_or_else(|| "gone".into())
    }

    /// Waits until `runvm ps ID` lists a guest process whose command line is `cmdline`
    /// (a process the workload started, once it has exec'd). Panics after `timeout` with
    /// the last table.
    #[track_caller]
    pub fn wait_for_guest_process(&self, id: &str, cmdline: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.cmd(&["ps", id]);
            let table = stdout(&out);
            if code(&out) == 0 && table.lines().any(|l| l.ends_with(&format!(" {cmdline}"))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`runvm ps {id}` did not list {cmdline:?} within {timeout:?}; it printed {table:?}, stderr {:?}",
                stderr(&out)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Entries left in the state root.
    pub fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.path())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Processes whose command line mentions this root (monitors of its containers).
    pub fn processes(&self) -> Vec<String> {
        processes_mentioning(&self.path().to_string_lossy())
    }

    /// Asserts that no state directory and no process of this root remain, allowing
    /// `grace` for the cleanup guard to finish.
    #[track_caller]
    pub fn assert_clean(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        loop {
            let (l, p) = (self.leftovers(), self.processes());
            if l.is_empty() && p.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "left behind in {}: entries {l:?}, processes {p:?}",
                    self.path().display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Command lines of live processes (other than this one) that contain `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        if let Ok(raw) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmd.contains(needle) {
                out.push(format!("{name}: {cmd}"));
            }
        }
    }
    out
}

/// Waits for `child`, killing it after `timeout` (then the test fails on its status).
pub fn wait_with_timeout(child: Child, timeout: Duration) -> Output {
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = done.clone();
    let killer = std::thread::spawn(move || {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if d.load(std::sync::atomic::Ordering::Acquire) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: sending a signal to our own child's pid.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        true
    });
    let out = child.wait_with_output().expect("waiting for runvm");
    done.store(true, std::sync::atomic::Ordering::Release);
    assert!(
        !killer.join().unwrap(),
        "runvm did not finish within {timeout:?}"
    );
    out
}

/// Exit code, panicking with the output if the process died of a signal.
pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or_else(|| {
        panic!(
            "runvm died of a signal: {:?}\nstderr: {}",
            out.status,
            stderr(out)
        )
    })
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Makes this process a subreaper (as containerd's shim is), so monitors that `create`
/// leaves behind become our children and we can take their exit status.
pub fn become_subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER has no memory effects.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER failed");
    });
}

/// Waits for the process `pid` (our child or an orphan we inherited) and returns its
/// exit code the way containerd reports it (128+signo for a signal death).
pub fn reap(pid: i32, timeout: Duration) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on a specific pid with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            if libc::WIFEXITED(status) {
                return libc::WEXITSTATUS(status);
            }
            return 128 + libc::WTERMSIG(status);
        }
        assert!(
            r == 0,
            "waitpid({pid}) failed: {}",
            std::io::Error::last_os_error()
        );
        assert!(
            Instant::now() < deadline,
            "process {pid} did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` holds a KVM VM (an `anon_inode:kvm-vm` descriptor).
pub fn holds_vm(pid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .any(|l| l.to_string_lossy().contains("kvm-vm"))
}

impl StateRoot {
    /// `runvm create --bundle B --pid-file P --console-socket S ID` with create's stdout
    /// and stderr piped and read to their end, as go-runc does (so the monitor must not
    /// hold them): returns create's output and the monitor's pid from the pid file.
    pub fn create_with_console(
        &self,
        bundle: &Bundle,
        id: &str,
        console: &ConsoleSocket,
    ) -> (Output, Option<i32>) {
        become_subreaper();
        let pid_file = bundle.path().join("init.pid");
        let cmd = self.command(&[
            "create",
            "--bundle",
            bundle.path().to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--console-socket",
            console.path().to_str().unwrap(),
            id,
        ]);
        let out = output_of(cmd, Duration::from_secs(120));
        (out, read_pid(&pid_file))
    }
}

/// A console socket as containerd's shim makes one (go-runc's `NewTempConsoleSocket`):
/// runvm connects and sends a pty master with SCM_RIGHTS, the pty's name as the data.
pub struct ConsoleSocket {
    dir: TempDir,
    listener: std::os::unix::net::UnixListener,
}

impl Default for ConsoleSocket {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsoleSocket {
    pub fn new() -> Self {
        let dir = TempDir::new("console");
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("pty.sock"))
            .expect("cannot bind the console socket");
        Self { dir, listener }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("pty.sock")
    }

    /// Accepts one connection and receives exactly one descriptor, as go-runc's `recvFd`
    /// does; returns the master and the pty name.
    pub fn receive(&self, timeout: Duration) -> (std::fs::File, String) {
        use std::os::fd::{AsRawFd, FromRawFd};
        self.listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + timeout;
        let conn = loop {
            match self.listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        Instant::now() < deadline,
                        "no pty arrived on the console socket"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("accept on the console socket: {e}"),
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(timeout)).unwrap();
        let mut name = vec![0u8; 4096];
        let mut iov = libc::iovec {
            iov_base: name.as_mut_ptr().cast(),
            iov_len: name.len(),
        };
        // Room for exactly one descriptor, like go-runc (a second one would be truncated).
        // SAFETY: CMSG_SPACE is a size computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
        let mut cmsg = vec![0u8; space];
        // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: recvmsg writes into the buffers described by `msg`.
        let n = unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        assert!(
            n > 0,
            "recvmsg on the console socket: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            msg.msg_flags & libc::MSG_CTRUNC,
            0,
            "more than one fd was sent"
        );
        // SAFETY: the control buffer was filled by the kernel; CMSG_FIRSTHDR/CMSG_DATA walk
        // it within its length.
        let fd = unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            assert!(!c.is_null(), "no descriptor was sent");
            assert_eq!((*c).cmsg_level, libc::SOL_SOCKET);
            assert_eq!((*c).cmsg_type, libc::SCM_RIGHTS);
            assert_eq!(
                (*c).cmsg_len as usize,
                libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as usize,
                "exactly one descriptor"
            );
            std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>())
        };
        name.truncate(n as usize);
        // SAFETY: the kernel installed this descriptor for us.
        let master = unsafe { std::fs::File::from_raw_fd(fd) };
        (master, String::from_utf8_lossy(&name).into_owned())
    }
}

/// A pty master as a test drives it: write keys, read output until some text appears.
pub struct Terminal {
    pub master: std::fs::File,
    seen: Vec<u8>,
}

impl Terminal {
    pub fn new(master: std::fs::File) -> Self {
        Self {
            master,
            seen: Vec::new(),
        }
    }

    pub fn type_keys(&mut self, keys: &[u8]) {
        self.master
            .write_all(keys)
            .expect("write to the pty master");
    }

    /// Reads until `want` appears after what earlier calls consumed; returns the text read
    /// up to and including it. Panics after `timeout` with everything seen.
    pub fn expect(&mut self, want: &str, timeout: Duration) -> String {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let deadline = Instant::now() + timeout;
        loop {
            let text = String::from_utf8_lossy(&self.seen).into_owned();
            if let Some(i) = self
                .seen
                .windows(want.len())
                .position(|w| w == want.as_bytes())
            {
                let end = i + want.len();
                let upto = String::from_utf8_lossy(&self.seen[..end]).into_owned();
                self.seen.drain(..end);
                return upto;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{want:?} did not appear on the terminal; got {text:?}"
            );
            let mut pfd = libc::pollfd {
                fd: self.master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
            if r <= 0 {
                continue;
            }
            let mut buf = [0u8; 4096];
            match self.master.read(&mut buf) {
                Ok(0) | Err(_) => {
                    panic!("the terminal closed before {want:?}; got {text:?}")
                }
                Ok(n) => self.seen.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// TIOCSWINSZ on the master, as containerd's ResizePty does.
    pub fn resize(&self, rows: u16, cols: u16) {
        use std::os::fd::AsRawFd;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize struct.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }
}

/// The result of a detached exec: `runvm exec`'s own output and code, and the exit code
/// of the pid-file process (reaped by us, a subreaper, as containerd's shim does).
#[derive(Debug)]
pub struct ExecResult {
    /// `runvm exec --detach`'s exit code.
    pub exec_code: i32,
    /// Everything written to the stdout pipe: the process's output.
    pub stdout: String,
    pub stderr: String,
    /// The pid-file process's exit code, if a pid file was written.
    pub code: Option<i32>,
}

impl StateRoot {
    /// `runvm exec --detach --pid-file F <args…> ID [cmd…]` with pipes, as containerd runs
    /// it: `args` go before the id (e.g. `--process p.json`), `cmd` after it. `stdin` is
    /// written and closed. Waits for the process's output to end and reaps the pid.
    pub fn exec_detached(&self, id: &str, args: &[&str], cmd: &[&str], stdin: &[u8]) -> ExecResult {
        become_subreaper();
        let dir = TempDir::new("exec");
        let pid_file = dir.path().join("exec.pid");
        let mut full = vec!["exec", "--detach", "--pid-file", pid_file.to_str().unwrap()];
        full.extend_from_slice(args);
        full.push(id);
        full.extend_from_slice(cmd);
        // The pipes reach EOF once runvm exec has returned and the monitor has closed its
        // copies, i.e. when the process has ended.
        let out = run_with_input(self.command(&full), stdin, Duration::from_secs(120));
        let pid = read_pid(&pid_file);
        ExecResult {
            exec_code: code(&out),
            stdout: stdout(&out),
            stderr: stderr(&out),
            code: pid.map(|p| reap(p, Duration::from_secs(60))),
        }
    }
}

/// Docker's default capabilities.
pub const DOCKER_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];
