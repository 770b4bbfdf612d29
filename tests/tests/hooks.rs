//! OCI hooks, as runc runs them: each kind at its point of the lifecycle, in order, with
//! the container's state on stdin (the bytes are checked), failures that fail `create`
//! or `start` and leave nothing behind, timeouts, warnings for poststart and poststop;
//! and `run --detach`. The hooks are host shell scripts that write into the bundle
//! directory. Run with `cargo xtask guest-test hooks`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use runvm_tests::*;

/// A `/bin/sh -c SCRIPT` hook.
fn sh(script: &str) -> serde_json::Value {
    serde_json::json!({ "path": "/bin/sh", "args": ["sh", "-c", script] })
}

/// A hook that saves its stdin as `<dir>/<kind>.json` and appends its kind to
/// `<dir>/order`.
fn recorder(dir: &Path, kind: &str) -> serde_json::Value {
    sh(&format!(
        "cat > {0}/{kind}.json && echo {kind} >> {0}/order",
        dir.display()
    ))
}

/// Sets `hooks` (and an annotation) in the bundle's config.json.
fn with_hooks(bundle: &Bundle, hooks: serde_json::Value) {
    bundle.edit_config(|v| {
        v["hooks"] = hooks;
        v["annotations"] = serde_json::json!({ "org.example.hook-test": "yes" });
    });
}

/// The state JSON a hook must get, byte for byte (runc's fields and order).
fn expected_state(bundle: &Bundle, id: &str, status: &str, pid: Option<i32>) -> String {
    let dir = std::fs::canonicalize(bundle.path()).unwrap();
    let pid = pid.map(|p| format!("\"pid\":{p},")).unwrap_or_default();
    format!(
        "{{\"ociVersion\":\"1.0.2\",\"id\":\"{id}\",\"status\":\"{status}\",{pid}\"bundle\":{},\"annotations\":{{\"org.example.hook-test\":\"yes\"}}}}",
        serde_json::Value::String(dir.display().to_string())
    )
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every kind's recorder, and a prestart hook that records the network namespace of the
/// state's pid and its own.
fn all_recorders(dir: &Path) -> serde_json::Value {
    let netns = sh(&format!(
        "p=$(sed -e 's/.*\"pid\":\\([0-9]*\\).*/\\1/'); readlink /proc/$p/ns/net > {0}/pid-netns; readlink /proc/self/ns/net > {0}/own-netns",
        dir.display()
    ));
    serde_json::json!({
        "prestart": [recorder(dir, "prestart"), netns],
        "createRuntime": [recorder(dir, "createRuntime")],
        "createContainer": [recorder(dir, "createContainer")],
        "startContainer": [recorder(dir, "startContainer")],
        "poststart": [recorder(dir, "poststart")],
        "poststop": [recorder(dir, "poststop")],
    })
}

const ORDER: &str =
    "prestart\ncreateRuntime\ncreateContainer\nstartContainer\npoststart\npoststop\n";

fn my_netns() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .unwrap()
        .display()
        .to_string()
}

/// Checks what the recorders saw for a container whose monitor was `pid`.
fn check_recorded(b: &Bundle, id: &str, pid: i32, monitor_netns: Option<&str>) {
    let dir = b.path();
    assert_eq!(
        read(dir.join("order")),
        ORDER,
        "hooks run in the spec's order"
    );
    for (kind, st) in [
        ("prestart", "creating"),
        ("createRuntime", "creating"),
        ("createContainer", "creating"),
        ("startContainer", "created"),
        ("poststart", "running"),
    ] {
        assert_eq!(
            read(dir.join(format!("{kind}.json"))),
            expected_state(b, id, st, Some(pid)),
            "the state on {kind}'s stdin"
        );
    }
    assert_eq!(
        read(dir.join("poststop.json")),
        expected_state(b, id, "stopped", None),
        "poststop's state has no pid"
    );
    let own = read(dir.join("own-netns"));
    assert_eq!(
        own.trim(),
        my_netns(),
        "hooks run in the runtime's network namespace"
    );
    let seen = read(dir.join("pid-netns"));
    assert_ne!(
        seen.trim(),
        own.trim(),
        "the state's pid lives in the container's own network namespace"
    );
    if let Some(m) = monitor_netns {
        assert_eq!(seen.trim(), m, "the pid's namespace is the monitor's");
    }
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hooks`"]
fn every_hook_kind_runs_in_order_with_its_state() {
    let root = StateRoot::new();
    let b = Bundle::new(&["sh", "-c", "echo ran"]);
    with_hooks(&b, all_recorders(b.path()));
    let (out, pid) = root.create(&b, "hk");
    assert_eq!(
        code(&out),
        0,
        "create failed: {}",
        read(b.path().join("stderr"))
    );
    let pid = pid.expect("create wrote no pid file");
    assert_eq!(
        read(b.path().join("order")),
        "prestart\ncreateRuntime\ncreateContainer\n",
        "create runs prestart, createRuntime and createContainer, and nothing else"
    );
    let monitor_netns = std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .display()
        .to_string();
    assert_eq!(b.stdout(), "", "the process must not run before start");

    let out = root.cmd(&["start", "hk"]);
    assert_eq!(code(&out), 0, "start failed: {}", stderr(&out));
    assert_eq!(reap(pid, Duration::from_secs(60)), 0);
    assert_eq!(b.stdout(), "ran\n");
    assert!(
        !b.path().join("poststop.json").exists(),
        "poststop waits for delete"
    );
    let out = root.cmd(&["delete", "hk"]);
    assert_eq!(code(&out), 0, "delete failed: {}", stderr(&out));
    check_recorded(&b, "hk", pid, Some(&monitor_netns));
    root.assert_clean(Duration::from_secs(2));

    // The foreground run: the same hooks, the pid is run's own (the monitor's).
    let b = Bundle::new(&["sh", "-c", "echo ran"]);
    with_hooks(&b, all_recorders(b.path()));
    let pid_file = b.path().join("run.pid");
    let child = root
        .command(&[
            "run",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--bundle",
            b.path().to_str().unwrap(),
            "hr",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_with_timeout(child, Duration::from_secs(120));
    assert_eq!(code(&out), 0, "run failed: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "ran\n",
        "the hooks' output is not the container's"
    );
    let pid: i32 = read(pid_file).trim().parse().unwrap();
    check_recorded(&b, "hr", pid, None);
    root.assert_clean(Duration::from_secs(2));
}

/// Asserts that a failed create left nothing: no state, no pid file, no process.
fn assert_create_failed(root: &StateRoot, b: &Bundle, out: &std::process::Output, want: &[&str]) {
    // StateRoot::create sends create's stderr to a file in the bundle.
    let err = read(b.path().join("stderr"));
    assert_eq!(code(out), 1, "create must fail: {err}");
    for w in want {
        assert!(err.contains(w), "expected {w:?} in: {err}");
    }
    assert!(
        !b.path().join("init.pid").exists(),
        "a failed create writes no pid file"
    );
    let st = root.cmd(&["state", "bad"]);
    assert!(stderr(&st).contains("does not exist"), "{}", stderr(&st));
    root.assert_clean(Duration::from_secs(5));
    assert_eq!(b.stdout(), "", "the process never ran");
}

#[test]
#[ignore = "boots no guest, but needs the runvm binary: run through `cargo xtask guest-test hooks`"]
fn a_failing_create_hook_fails_create_and_leaves_nothing() {
    let root = StateRoot::new();
    for kind in ["prestart", "createRuntime", "createContainer"] {
        let b = Bundle::new(&["sh", "-c", "echo ran"]);
        let d = b.path().display().to_string();
        let mut hooks = serde_json::json!({
            (kind): [
                sh("echo to-stdout; echo to-stderr >&2; exit 2"),
                sh(&format!("touch {d}/after-failure")),
            ],
            "poststop": [sh(&format!("cat > {d}/poststop.json"))],
        });
        if kind != "prestart" {
            hooks["prestart"] = serde_json::json!([recorder(b.path(), "prestart")]);
        }
        with_hooks(&b, hooks);
        let (out, _) = root.create(&b, "bad");
        assert_create_failed(
            &root,
            &b,
            &out,
            &[
                &format!("error running {kind} hook #0"),
                "exit status 2, stdout: to-stdout, stderr: to-stderr",
            ],
        );
        assert!(
            !b.path().join("after-failure").exists(),
            "{kind}: the hooks after a failed one do not run"
        );
        assert_eq!(
            read(b.path().join("poststop.json")),
            expected_state(&b, "bad", "stopped", None),
            "{kind}: the destroyed container's poststop hooks run"
        );
    }
}

#[test]
#[ignore = "boots no guest, but needs the runvm binary: run through `cargo xtask guest-test hooks`"]
fn a_hook_past_its_timeout_is_killed_and_fails_create() {
    let root = StateRoot::new();
    let b = Bundle::new(&["sh", "-c", "echo ran"]);
    let marker = b.path().join("slept");
    let mut slow = sh(&format!("sleep 61; touch {}", marker.display()));
    slow["timeout"] = 1.into();
    with_hooks(&b, serde_json::json!({ "prestart": [slow] }));
    let t = Instant::now();
    let (out, _) = root.create(&b, "bad");
    let took = t.elapsed();
    assert_create_failed(
        &root,
        &b,
        &out,
        &[
            "error running prestart hook #0",
            "hook ran past specified timeout of 1.0s",
        ],
    );
    assert!(took < Duration::from_secs(30), "create took {took:?}");
    assert!(
        processes_mentioning("sleep 61").is_empty(),
        "the timed-out hook's children are killed too"
    );
    assert!(!marker.exists());
}

#[test]
#[ignore = "boots no guest, but needs the runvm binary: run through `cargo xtask guest-test hooks`"]
fn a_failing_start_container_hook_fails_start_and_stops_the_container() {
    let root = StateRoot::new();
    let b = Bundle::new(&["sh", "-c", "echo ran"]);
    let d = b.path().display().to_string();
    with_hooks(
        &b,
        serde_json::json!({
            "startContainer": [sh("echo no >&2; exit 1")],
            "poststart": [sh(&format!("touch {d}/poststart-ran"))],
            "poststop": [sh(&format!("cat > {d}/poststop.json"))],
        }),
    );
    let (out, pid) = root.create(&b, "sc");
    assert_eq!(code(&out), 0, "create failed: {}", stderr(&out));
    let pid = pid.unwrap();
    let out = root.cmd(&["start", "sc"]);
    assert_eq!(code(&out), 1, "start must fail: {}", stderr(&out));
    assert!(
        stderr(&out).contains("error running startContainer hook #0")
            && stderr(&out).contains("stderr: no"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        reap(pid, Duration::from_secs(30)),
        137,
        "the container is killed"
    );
    assert_eq!(root.status("sc"), "stopped");
    assert_eq!(b.stdout(), "", "the process never ran");
    assert!(!b.path().join("poststart-ran").exists());
    assert_eq!(code(&root.cmd(&["delete", "sc"])), 0);
    assert_eq!(
        read(b.path().join("poststop.json")),
        expected_state(&b, "sc", "stopped", None)
    );
    root.assert_clean(Duration::from_secs(2));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hooks`"]
fn failing_poststart_and_poststop_hooks_are_warnings() {
    let root = StateRoot::new();
    let b = Bundle::new(&["sh", "-c", "echo ran; exit 3"]);
    let d = b.path().display().to_string();
    with_hooks(
        &b,
        serde_json::json!({
            "poststart": [sh("exit 4"), sh(&format!("echo second >> {d}/poststart"))],
            "poststop": [sh("exit 5"), sh(&format!("echo second >> {d}/poststop"))],
        }),
    );
    let (out, pid) = root.create(&b, "warn");
    assert_eq!(code(&out), 0, "create failed: {}", stderr(&out));
    let out = root.cmd(&["start", "warn"]);
    assert_eq!(
        code(&out),
        0,
        "a failed poststart hook does not fail start: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("warn") && stderr(&out).contains("error running poststart hook #0"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        reap(pid.unwrap(), Duration::from_secs(60)),
        3,
        "the process ran to its end"
    );
    assert_eq!(b.stdout(), "ran\n");
    assert_eq!(read(b.path().join("poststart")), "second\n");
    let out = root.cmd(&["delete", "warn"]);
    assert_eq!(
        code(&out),
        0,
        "a failed poststop hook does not fail delete: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("error running poststop hook #0")
            && stderr(&out).contains("exit status 5"),
        "{}",
        stderr(&out)
    );
    assert_eq!(read(b.path().join("poststop")), "second\n");
    root.assert_clean(Duration::from_secs(2));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hooks`"]
fn run_detach_returns_with_the_container_running() {
    become_subreaper();
    let root = StateRoot::new();
    let b = Bundle::new(&["sh", "-c", "echo hello; sleep 600"]);
    let pid_file = b.path().join("init.pid");
    let out_path = b.path().join("stdout");
    let err_path = b.path().join("stderr");
    let child = root
        .command(&[
            "run",
            "--detach",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--bundle",
            b.path().to_str().unwrap(),
            "det",
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        // Files, not pipes: the monitor keeps them (a pipe would not reach EOF here).
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let out = wait_with_timeout(child, Duration::from_secs(120));
    assert_eq!(code(&out), 0, "run --detach failed: {}", read(err_path));
    let pid: i32 = read(pid_file).trim().parse().unwrap();
    let st = root.state("det").expect("state of a detached run");
    assert_eq!(st["status"], "running");
    assert_eq!(st["pid"], pid, "state.pid is the pid in --pid-file");
    assert!(
        holds_vm(pid),
        "the monitor holds the VM after run --detach returned"
    );
    // The container writes to the stdout run --detach was given.
    assert_eq!(b.wait_for_stdout("\n", Duration::from_secs(30)), "hello\n");
    assert_eq!(code(&root.cmd(&["kill", "det", "KILL"])), 0);
    assert_eq!(reap(pid, Duration::from_secs(30)), 137);
    assert_eq!(root.status("det"), "stopped");
    assert_eq!(code(&root.cmd(&["delete", "det"])), 0);
    root.assert_clean(Duration::from_secs(2));
}
