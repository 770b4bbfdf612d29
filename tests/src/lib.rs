//! Test harness for runvm's integration tests: bundles, a private state root per test,
//! and checks that nothing (process, socket, state directory) is left behind.
//!
//! The tests that boot a guest read what to use from the environment that
//! `cargo xtask test` sets: `RUNVM_BIN` (the runvm binary), `RUNVM_TEST_ROOTFS` (a
//! busybox root filesystem), and `RUNVM_KERNEL`/`RUNVM_INITRAMFS` (the guest). They are
//! `#[ignore]`d for a plain `cargo test`, and fail loudly if run without that environment.

pub mod docker;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let base = std::env::var_os("RUNVM_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let mut i = 0u32;
        loop {
            let p = base.join(format!("runvm-{tag}-{}-{stamp:x}-{i}", std::process::id()));
            match std::fs::create_dir(&p) {
                Ok(()) => return Self(p),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => i += 1,
                Err(e) => panic!("cannot create {}: {e}", p.display()),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A bundle whose root filesystem is the shared busybox tree.
pub struct Bundle {
    pub dir: TempDir,
}

impl Bundle {
    /// A bundle running `args` with cwd `/`, a standard PATH and `extra_env`.
    pub fn new(args: &[&str]) -> Self {
        Self::with(args, "/", &[])
    }

    pub fn with(args: &[&str], cwd: &str, extra_env: &[&str]) -> Self {
        let rootfs = required_env("RUNVM_TEST_ROOTFS");
        let mut env =
            vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
        env.extend(extra_env.iter().map(|s| s.to_string()));
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": { "terminal": false, "user": { "uid": 0, "gid": 0 }, "args": args, "env": env, "cwd": cwd },
            "root": { "path": rootfs, "readonly": false },
            "hostname": "runvm-test",
        });
        Self::from_config(&config.to_string())
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
        let mut child = self
            .command(&["run", "--bundle", bundle.path().to_str().unwrap(), id])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start runvm");
        let mut input = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = wait_with_timeout(child, Duration::from_secs(120));
        let _ = writer.join();
        out
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

impl StateRoot {
    /// `runvm create --bundle B --pid-file P ID` with the container's stdout and stderr
    /// going to files in the bundle; returns create's output and the pid from the pid file.
    pub fn create(&self, bundle: &Bundle, id: &str) -> (Output, Option<i32>) {
        become_subreaper();
        let pid_file = bundle.path().join("init.pid");
        let out_file = std::fs::File::create(bundle.path().join("stdout")).unwrap();
        let err_file = std::fs::File::create(bundle.path().join("stderr")).unwrap();
        let child = self
            .command(&[
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
        let out = wait_with_timeout(child, Duration::from_secs(120));
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        (out, pid)
    }

    /// Runs `runvm <args…>` and returns its output.
    pub fn cmd(&self, args: &[&str]) -> Output {
        let child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_with_timeout(child, Duration::from_secs(120))
    }

    /// `runvm state ID` parsed, or None when it fails.
    pub fn state(&self, id: &str) -> Option<serde_json::Value> {
        let out = self.cmd(&["state", id]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("state prints JSON"))
    }
}

impl Bundle {
    /// What the container wrote to its stdout (for bundles run with [`StateRoot::create`]).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.path().join("stdout")).unwrap_or_default()
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
