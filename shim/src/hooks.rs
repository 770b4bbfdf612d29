//! OCI lifecycle hooks (`hooks` in config.json), run as runc runs them: each hook is the
//! program at `path` with `args` (`args[0]` is its argv[0]), exactly `env` (runvm's own
//! environment when `env` is absent, as Go's `exec.Cmd` does), the state of the container
//! as JSON on stdin, and, with `timeout`, killed (with its process group) once that many
//! seconds have passed, which fails it. Its stdout and stderr are kept and quoted in the
//! error when it fails.
//!
//! Every hook runs on the host, in runvm's own namespaces (the runtime namespace): when the
//! calling process (the foreground `run`'s monitor) has entered the container's network
//! namespace, the hook is moved back to the namespace runvm started in. Where each kind
//! runs, and with which status, is in the README ("Hooks").

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Hooks};
use serde::Serialize;

use crate::state::OCI_VERSION;

/// The six points of the lifecycle that have hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl HookKind {
    /// Every kind, in the order of the lifecycle (and of `runvm features`).
    pub const ALL: [HookKind; 6] = [
        HookKind::Prestart,
        HookKind::CreateRuntime,
        HookKind::CreateContainer,
        HookKind::StartContainer,
        HookKind::Poststart,
        HookKind::Poststop,
    ];

    /// The name config.json gives the list.
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Prestart => "prestart",
            HookKind::CreateRuntime => "createRuntime",
            HookKind::CreateContainer => "createContainer",
            HookKind::StartContainer => "startContainer",
            HookKind::Poststart => "poststart",
            HookKind::Poststop => "poststop",
        }
    }

    /// This kind's hooks in `hooks`.
    pub fn of(self, hooks: &Hooks) -> &[Hook] {
        #[allow(deprecated)] // prestart is deprecated in the spec, and still used (Docker 20.10)
        let list = match self {
            HookKind::Prestart => hooks.prestart(),
            HookKind::CreateRuntime => hooks.create_runtime(),
            HookKind::CreateContainer => hooks.create_container(),
            HookKind::StartContainer => hooks.start_container(),
            HookKind::Poststart => hooks.poststart(),
            HookKind::Poststop => hooks.poststop(),
        };
        list.as_deref().unwrap_or_default()
    }
}

/// A hook that failed: the error names its kind and index, as runc's does.
#[derive(Debug, thiserror::Error)]
#[error("error running {kind} hook #{index} ({path}): {failure}")]
pub struct HookError {
    pub kind: &'static str,
    pub index: usize,
    pub path: String,
    #[source]
    pub failure: HookFailure,
}

/// What went wrong with one hook.
#[derive(Debug, thiserror::Error)]
pub enum HookFailure {
    #[error("cannot set up the hook's stdio: {0}")]
    Stdio(#[source] std::io::Error),
    #[error("cannot execute {}: {source}", path.display())]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot wait for the hook: {0}")]
    Wait(#[source] std::io::Error),
    #[error("hook ran past specified timeout of {:.1}s", .0.as_secs_f64())]
    Timeout(Duration),
    /// It ended unsuccessfully; its output is quoted.
    #[error("{}, stdout: {stdout}, stderr: {stderr}", describe(*status))]
    Failed {
        status: std::process::ExitStatus,
        stdout: String,
        stderr: String,
    },
}

/// An exit status as runc words it: `exit status N` or `killed by signal N`.
fn describe(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{status}"),
    }
}

/// The container as its hooks see it.
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    /// The container's root filesystem on the host: the working directory of the hooks
    /// runc runs in the container's mount namespace (createContainer, startContainer).
    pub rootfs: PathBuf,
    pub annotations: HashMap<String, String>,
    /// The hooks saved at create (config.json changes after create do not count).
    pub hooks: Option<Hooks>,
    /// Where to run the hooks when the caller is no longer in runvm's own network
    /// namespace (the foreground `run`, which becomes the monitor).
    pub host_netns: Option<OwnedFd>,
}

impl Container {
    /// A created container, with the hooks saved in its state.
    pub fn from_state(state: &crate::state::ContainerState) -> Self {
        Self {
            id: state.id.clone(),
            bundle: state.bundle.clone(),
            rootfs: state.rootfs.clone(),
            annotations: state.annotations.clone(),
            hooks: state.hooks.clone(),
            host_netns: None,
        }
    }
}

/// The OCI state document on a hook's stdin, with runc's fields in runc's order (`pid`
/// left out when 0, for a stopped container; `annotations` when there are none).
#[derive(Serialize)]
struct StateDoc<'a> {
    #[serde(rename = "ociVersion")]
    oci_version: &'a str,
    id: &'a str,
    status: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    pid: i32,
    bundle: &'a Path,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'a str, &'a str>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

impl Container {
    /// The state JSON for `status` and `pid` (0: none).
    pub fn state_json(&self, status: &str, pid: i32) -> Vec<u8> {
        let doc = StateDoc {
            oci_version: OCI_VERSION,
            id: &self.id,
            status,
            pid,
            bundle: &self.bundle,
            annotations: self
                .annotations
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        };
        serde_json::to_vec(&doc).unwrap_or_default()
    }

    /// Where `kind`'s hooks run: runc runs createContainer and startContainer in the
    /// container's mount namespace, where the working directory is its root filesystem
    /// (a hook that writes `./lib/x` writes into it); runvm runs them on the host in the
    /// root filesystem's directory, which the container sees live. The others run where
    /// runvm was started.
    fn cwd(&self, kind: HookKind) -> Option<&Path> {
        matches!(kind, HookKind::CreateContainer | HookKind::StartContainer)
            .then_some(self.rootfs.as_path())
    }

    /// Runs `kind`'s hooks in order; the first failure stops them and is returned (for
    /// the hooks whose failure fails the operation).
    pub fn run(&self, kind: HookKind, status: &str, pid: i32) -> Result<(), HookError> {
        let Some(hooks) = &self.hooks else {
            return Ok(());
        };
        let state = self.state_json(status, pid);
        for (index, hook) in kind.of(hooks).iter().enumerate() {
            run_hook(
                hook,
                &state,
                self.cwd(kind),
                self.host_netns.as_ref().map(|f| f.as_fd()),
            )
            .map_err(|failure| HookError::new(kind, index, hook, failure))?;
        }
        Ok(())
    }

    /// Runs every one of `kind`'s hooks, logging each failure as a warning (poststart and
    /// poststop: the spec's "the remaining hooks and lifecycle continue").
    pub fn run_warn(&self, kind: HookKind, status: &str, pid: i32) {
        let Some(hooks) = &self.hooks else {
            return;
        };
        let state = self.state_json(status, pid);
        for (index, hook) in kind.of(hooks).iter().enumerate() {
            if let Err(failure) = run_hook(
                hook,
                &state,
                self.cwd(kind),
                self.host_netns.as_ref().map(|f| f.as_fd()),
            ) {
                let e = HookError::new(kind, index, hook, failure);
                log::warn!("container {:?}: {e}", self.id);
            }
        }
    }
}

impl HookError {
    fn new(kind: HookKind, index: usize, hook: &Hook, failure: HookFailure) -> Self {
        Self {
            kind: kind.name(),
            index,
            path: hook.path().display().to_string(),
            failure,
        }
    }
}

/// Checks the hooks of a config.json: what the spec requires of each (an absolute
/// `path`, a `timeout` above zero), with the hook named.
pub fn validate(hooks: &Hooks) -> Result<(), String> {
    for kind in HookKind::ALL {
        for (i, h) in kind.of(hooks).iter().enumerate() {
            let at = format!("hooks.{}[{i}]", kind.name());
            if !h.path().is_absolute() {
                return Err(format!(
                    "{at}.path {:?} must be an absolute path",
                    h.path().display().to_string()
                ));
            }
            if let Some(t) = h.timeout() {
                if t <= 0 {
                    return Err(format!("{at}.timeout {t} must be greater than zero"));
                }
            }
        }
    }
    Ok(())
}

/// Most bytes of a failed hook's stdout or stderr quoted in its error.
const MAX_QUOTED: usize = 4096;

/// A sealed-off anonymous file (a memfd) for a hook's stdin or its captured output: the
/// hook never blocks on a pipe nobody reads, and one that leaves a child holding its
/// stdout open does not keep runvm waiting.
fn anonymous_file(name: &std::ffi::CStr) -> std::io::Result<std::fs::File> {
    // SAFETY: memfd_create with a valid C string and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and is owned by nothing else.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn read_quoted(mut f: &std::fs::File) -> String {
    let mut buf = Vec::new();
    let _ = f.rewind();
    let _ = f.take(MAX_QUOTED as u64).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Runs one hook with `state` on its stdin; the error says what happened (its exit
/// status or the timeout, with its output).
fn run_hook(
    hook: &Hook,
    state: &[u8],
    cwd: Option<&Path>,
    host_netns: Option<BorrowedFd>,
) -> Result<(), HookFailure> {
    let io = HookFailure::Stdio;
    let mut stdin = anonymous_file(c"runvm-hook-stdin").map_err(io)?;
    stdin.write_all(state).map_err(io)?;
    stdin.rewind().map_err(io)?;
    let stdout = anonymous_file(c"runvm-hook-stdout").map_err(io)?;
    let stderr = anonymous_file(c"runvm-hook-stderr").map_err(io)?;

    let mut cmd = Command::new(hook.path());
    if let Some([argv0, rest @ ..]) = hook.args().as_deref() {
        cmd.arg0(argv0).args(rest);
    }
    if let Some(env) = hook.env() {
        cmd.env_clear();
        for entry in env {
            match entry.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    cmd.env(k, v);
                }
                _ => log::warn!(
                    "hook {}: ignoring env entry {entry:?} (not KEY=VALUE)",
                    hook.path().display()
                ),
            }
        }
    }
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd.stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout.try_clone().map_err(io)?))
        .stderr(Stdio::from(stderr.try_clone().map_err(io)?));
    let netns: Option<RawFd> = host_netns.map(|fd| fd.as_raw_fd());
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe syscalls (setpgid, setns) on values copied into it.
    unsafe {
        cmd.pre_exec(move || {
            // Its own process group, so a timeout kills what it started too.
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = netns {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| HookFailure::Spawn {
        path: hook.path().clone(),
        source,
    })?;
    let timeout = hook
        .timeout()
        .map(|t| Duration::from_secs(u64::try_from(t).unwrap_or(1)));
    let status = match timeout {
        None => child.wait(),
        Some(t) => match wait_until(&mut child, Instant::now() + t) {
            Ok(Some(s)) => Ok(s),
            Ok(None) => {
                // SAFETY: the hook leads its own process group (setpgid above); signal
                // the group, then reap the hook.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.kill();
                let _ = child.wait();
                return Err(HookFailure::Timeout(t));
            }
            Err(e) => Err(e),
        },
    }
    .map_err(HookFailure::Wait)?;
    if status.success() {
        return Ok(());
    }
    Err(HookFailure::Failed {
        status,
        stdout: read_quoted(&stdout).trim_end().to_string(),
        stderr: read_quoted(&stderr).trim_end().to_string(),
    })
}

/// Waits for `child` until `deadline`: `None` when it is still running then.
fn wait_until(
    child: &mut Child,
    deadline: Instant,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    // SAFETY: pidfd_open on our own unreaped child's pid; the result is checked.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    // SAFETY: a descriptor pidfd_open returned, owned by nothing else.
    let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) });
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        match &pidfd {
            Some(fd) => {
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
                // SAFETY: poll on one valid pollfd for at most `ms`.
                unsafe { libc::poll(&mut pfd, 1, ms) };
            }
            // A kernel without pidfds (before 5.3): look again shortly.
            None => std::thread::sleep(left.min(Duration::from_millis(10))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks(json: serde_json::Value) -> Hooks {
        serde_json::from_value(json).unwrap()
    }

    fn container(hooks: Option<&Hooks>, annotations: &HashMap<String, String>) -> Container {
        Container {
            id: "c1".into(),
            bundle: "/b".into(),
            rootfs: std::env::temp_dir(),
            annotations: annotations.clone(),
            hooks: hooks.cloned(),
            host_netns: None,
        }
    }

    #[test]
    fn create_and_start_container_hooks_run_in_the_root_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("cwd");
        let hook = |kind: &str| serde_json::json!({ kind: [ { "path": "/bin/sh", "args": ["sh", "-c", format!("pwd >> {}", out.display())] } ] });
        for (kind, k, want) in [
            (
                "createContainer",
                HookKind::CreateContainer,
                dir.path().to_path_buf(),
            ),
            (
                "startContainer",
                HookKind::StartContainer,
                dir.path().to_path_buf(),
            ),
            (
                "prestart",
                HookKind::Prestart,
                std::env::current_dir().unwrap(),
            ),
        ] {
            let hooks: Hooks = serde_json::from_value(hook(kind)).unwrap();
            let mut c = container(Some(&hooks), &HashMap::new());
            c.rootfs = dir.path().to_path_buf();
            let _ = std::fs::remove_file(&out);
            c.run(k, "created", 1).unwrap();
            let got = std::fs::read_to_string(&out).unwrap();
            assert_eq!(std::path::Path::new(got.trim()), want, "{kind}");
        }
    }

    #[test]
    fn state_json_has_runc_fields_in_runc_order() {
        let none = HashMap::new();
        let c = container(None, &none);
        assert_eq!(
            String::from_utf8(c.state_json("creating", 42)).unwrap(),
            r#"{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":42,"bundle":"/b"}"#
        );
        let ann = HashMap::from([("b".to_string(), "2".to_string()), ("a".into(), "1".into())]);
        let c = container(None, &ann);
        assert_eq!(
            String::from_utf8(c.state_json("stopped", 0)).unwrap(),
            r#"{"ociVersion":"1.0.2","id":"c1","status":"stopped","bundle":"/b","annotations":{"a":"1","b":"2"}}"#
        );
    }

    #[test]
    fn hooks_get_state_args_and_exact_env_and_run_in_order() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let sh = |tag: &str| {
            serde_json::json!({
                "path": "/bin/sh",
                "args": ["hook-argv0", "-c", format!("echo {tag} \"$0\" \"$X\" \"${{HOME:-nohome}}\" >> {0}; cat >> {0}; echo >> {0}", out.display())],
                "env": ["X=x1"],
            })
        };
        let h = hooks(serde_json::json!({ "prestart": [sh("one"), sh("two")] }));
        let none = HashMap::new();
        let c = container(Some(&h), &none);
        c.run(HookKind::Prestart, "creating", 7).unwrap();
        let state = String::from_utf8(c.state_json("creating", 7)).unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            format!("one hook-argv0 x1 nohome\n{state}\ntwo hook-argv0 x1 nohome\n{state}\n")
        );
        // Other kinds are not run.
        c.run(HookKind::Poststop, "stopped", 0).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 4);
    }

    #[test]
    fn a_failure_stops_the_list_and_says_why() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("second-ran");
        let h = hooks(serde_json::json!({ "createRuntime": [
            { "path": "/bin/sh", "args": ["sh", "-c", "echo out; echo err >&2; exit 3"] },
            { "path": "/bin/sh", "args": ["sh", "-c", format!("touch {}", marker.display())] },
        ]}));
        let none = HashMap::new();
        let c = container(Some(&h), &none);
        let e = c.run(HookKind::CreateRuntime, "creating", 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "error running createRuntime hook #0 (/bin/sh): exit status 3, stdout: out, stderr: err"
        );
        assert!(!marker.exists(), "the hooks after a failed one do not run");
        // As a warning, every hook runs.
        c.run_warn(HookKind::CreateRuntime, "creating", 1);
        assert!(marker.exists());
    }

    #[test]
    fn a_timeout_kills_the_hook_and_what_it_started() {
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("pid");
        let h = hooks(serde_json::json!({ "poststart": [
            { "path": "/bin/sh", "args": ["sh", "-c", format!("sleep 30 & echo $! > {}; wait", pidfile.display())], "timeout": 1 },
        ]}));
        let none = HashMap::new();
        let c = container(Some(&h), &none);
        let t = Instant::now();
        let e = c.run(HookKind::Poststart, "running", 1).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
        assert!(
            e.to_string()
                .ends_with("hook ran past specified timeout of 1.0s"),
            "{e}"
        );
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The sleep was in the hook's process group: it is gone (or a zombie of init).
        std::thread::sleep(Duration::from_millis(200));
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z"),
            "the hook's child still runs: {state}"
        );
    }

    #[test]
    fn a_missing_program_fails_with_its_path() {
        let h = hooks(serde_json::json!({ "prestart": [ { "path": "/nonexistent/hook" } ] }));
        let none = HashMap::new();
        let e = container(Some(&h), &none)
            .run(HookKind::Prestart, "creating", 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot execute /nonexistent/hook"), "{e}");
    }

    #[test]
    fn validation_wants_absolute_paths_and_positive_timeouts() {
        assert!(validate(&hooks(
            serde_json::json!({ "poststop": [ { "path": "/bin/true", "timeout": 5 } ] })
        ))
        .is_ok());
        assert_eq!(
            validate(&hooks(
                serde_json::json!({ "poststop": [ { "path": "/bin/true" }, { "path": "true" } ] })
            ))
            .unwrap_err(),
            "hooks.poststop[1].path \"true\" must be an absolute path"
        );
        assert_eq!(
            validate(&hooks(
                serde_json::json!({ "startContainer": [ { "path": "/bin/true", "timeout": 0 } ] })
            ))
            .unwrap_err(),
            "hooks.startContainer[0].timeout 0 must be greater than zero"
        );
    }
}
