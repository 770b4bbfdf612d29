//! The runc lifecycle as containerd drives it: `create` (detached, stdio to files,
//! `--pid-file`), `state`, `start`, `kill`, `delete`, with the monitor's exit status as
//! the container's exit code. Run with `cargo xtask test`.

use std::time::Duration;

use runvm_tests::*;

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn create_start_wait_delete_and_exit_codes() {
    let root = StateRoot::new();
    for (script, want) in [
        ("echo ran; exit 0", 0),
        ("echo ran; exit 1", 1),
        ("echo ran; exit 42", 42),
    ] {
        let bundle = Bundle::new(&["sh", "-c", script]);
        let (out, pid) = root.create(&bundle, "life");
        assert_eq!(code(&out), 0, "create failed: {}", stderr(&out));
        let pid = pid.expect("create wrote no pid file");
        let st = root.state("life").unwrap();
        assert_eq!(st["status"], "created");
        assert_eq!(st["pid"], pid, "state.pid is the pid in --pid-file");
        // Part of what is tested: half a second in which a process started too early
        // would have printed.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(bundle.stdout(), "", "the process must not run before start");
        assert!(
            !holds_vm(pid),
            "a created container must hold no VM until start"
        );

        let out = root.cmd(&["start", "life"]);
        assert_eq!(code(&out), 0, "start failed: {}", stderr(&out));
        assert_eq!(
            reap(pid, Duration::from_secs(60)),
            want,
            "the monitor exits with the workload's code"
        );
        assert_eq!(bundle.stdout(), "ran\n");
        assert_eq!(root.status("life"), "stopped");
        assert_ne!(
            code(&root.cmd(&["start", "life"])),
            0,
            "start of a stopped container must fail"
        );

        let out = root.cmd(&["delete", "life"]);
        assert_eq!(code(&out), 0, "delete failed: {}", stderr(&out));
        let out = root.cmd(&["state", "life"]);
        assert_ne!(code(&out), 0);
        assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    }
    root.assert_clean(Duration::from_secs(2));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn kill_follows_pid1_rules() {
    let root = StateRoot::new();
    // No handler: TERM is ignored by a PID 1, KILL is not.
    let plain = Bundle::new(&["sleep", "600"]);
    let (out, pid) = root.create(&plain, "plain");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let pid = pid.unwrap();
    assert_eq!(code(&root.cmd(&["start", "plain"])), 0);
    assert_eq!(root.status("plain"), "running");
    assert!(holds_vm(pid), "a running container's monitor holds its VM");
    assert_eq!(code(&root.cmd(&["kill", "plain", "TERM"])), 0);
    // Part of what is tested: two seconds in which a TERM that killed would have shown.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        root.status("plain"),
        "running",
        "TERM to a PID 1 without a handler does nothing"
    );
    assert_eq!(code(&root.cmd(&["kill", "plain", "SIGKILL"])), 0);
    assert_eq!(reap(pid, Duration::from_secs(30)), 137);
    let out = root.cmd(&["kill", "plain", "KILL"]);
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("container not running"),
        "{}",
        stderr(&out)
    );
    assert_eq!(code(&root.cmd(&["delete", "plain"])), 0);

    // With handlers: TERM and INT reach the process.
    for (sig, want) in [("15", 143), ("INT", 130)] {
        let script = "trap 'exit 143' TERM; trap 'exit 130' INT; echo ready; sleep 600 & wait";
        let b = Bundle::new(&["sh", "-c", script]);
        let (out, pid) = root.create(&b, "trap");
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(code(&root.cmd(&["start", "trap"])), 0);
        b.wait_for_stdout("ready\n", Duration::from_secs(60));
        assert_eq!(code(&root.cmd(&["kill", "trap", sig])), 0);
        assert_eq!(
            reap(pid.unwrap(), Duration::from_secs(30)),
            want,
            "signal {sig}"
        );
        assert_eq!(code(&root.cmd(&["delete", "trap"])), 0);
    }
    root.assert_clean(Duration::from_secs(2));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn kill_before_start_and_delete_rules() {
    let root = StateRoot::new();
    let b = Bundle::new(&["sh", "-c", "echo ran"]);
    let (out, pid) = root.create(&b, "early");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(code(&root.cmd(&["kill", "early", "KILL"])), 0);
    assert_eq!(reap(pid.unwrap(), Duration::from_secs(30)), 137);
    assert_eq!(root.status("early"), "stopped");
    assert_eq!(b.stdout(), "", "a container killed before start never runs");
    assert_eq!(code(&root.cmd(&["delete", "early"])), 0);

    let b = Bundle::new(&["sleep", "600"]);
    let (out, pid) = root.create(&b, "busy");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(code(&root.cmd(&["start", "busy"])), 0);
    let out = root.cmd(&["delete", "busy"]);
    assert_ne!(code(&out), 0, "delete of a running container must fail");
    assert!(stderr(&out).contains("not stopped"), "{}", stderr(&out));
    assert_eq!(root.status("busy"), "running");
    let out = root.cmd(&["delete", "--force", "busy"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(reap(pid.unwrap(), Duration::from_secs(30)), 137);
    assert_eq!(root.status("busy"), "gone");
    root.assert_clean(Duration::from_secs(2));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn two_containers_at_once() {
    let root = StateRoot::new();
    let (a, b) = (
        Bundle::new(&["sh", "-c", "sleep 1; echo a"]),
        Bundle::new(&["sh", "-c", "sleep 1; echo b; exit 3"]),
    );
    let (oa, pa) = root.create(&a, "a");
    let (ob, pb) = root.create(&b, "b");
    assert_eq!(
        (code(&oa), code(&ob)),
        (0, 0),
        "{} {}",
        stderr(&oa),
        stderr(&ob)
    );
    assert_eq!(code(&root.cmd(&["start", "a"])), 0);
    assert_eq!(code(&root.cmd(&["start", "b"])), 0);
    let list = root.cmd(&["list", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(v.as_array().map(|a| a.len()), Some(2), "{v}");
    assert_eq!(reap(pa.unwrap(), Duration::from_secs(60)), 0);
    assert_eq!(reap(pb.unwrap(), Duration::from_secs(60)), 3);
    assert_eq!((a.stdout(), b.stdout()), ("a\n".into(), "b\n".into()));
    assert_eq!(code(&root.cmd(&["delete", "a"])), 0);
    assert_eq!(code(&root.cmd(&["delete", "b"])), 0);
    root.assert_clean(Duration::from_secs(2));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn a_foreground_run_is_a_container_others_can_see_signal_and_exec_into() {
    let root = StateRoot::new();
    let bundle = Bundle::new(&["sh", "-c", "echo running; exec sleep 600"]);
    let mut child = root
        .command(&["run", "--bundle", bundle.path().to_str().unwrap(), "fg"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Lines::new(child.stdout.take().unwrap());
    lines.wait_for("the workload's first line", Duration::from_secs(90), |l| {
        l == "running"
    });
    // As under runc: the running container is listed, with `run` as its process.
    let st = root.state("fg").expect("state of a foreground run");
    assert_eq!(st["status"], "running");
    assert_eq!(st["pid"], child.id());
    assert!(stdout(&root.cmd(&["list", "-q"]))
        .lines()
        .any(|l| l == "fg"));
    // exec reaches into it.
    let out = root.cmd(&["exec", "fg", "sh", "-c", "echo from-exec"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "from-exec\n");
    // kill ends it, and `run` exits with the signal's code; nothing is left.
    assert_eq!(code(&root.cmd(&["kill", "fg", "KILL"])), 0);
    let out = wait_with_timeout(child, Duration::from_secs(60));
    assert_eq!(code(&out), 137, "{}", stderr(&out));
    assert!(root.state("fg").is_none());
    root.assert_clean(Duration::from_secs(2));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn run_keep_leaves_the_stopped_container_until_delete() {
    let root = StateRoot::new();
    let bundle = Bundle::new(&["sh", "-c", "exit 3"]);
    let out = wait_with_timeout(
        root.command(&[
            "run",
            "--keep",
            "--bundle",
            bundle.path().to_str().unwrap(),
            "kept",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap(),
        Duration::from_secs(90),
    );
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert_eq!(root.status("kept"), "stopped");
    assert!(root.processes().is_empty(), "{:?}", root.processes());
    let out = root.cmd(&["delete", "kept"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(root.state("kept").is_none());
    root.assert_clean(Duration::from_secs(2));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn a_restrictive_umask_of_the_caller_changes_nothing() {
    // A containerd shim ran runvm with a umask that left the state directories 0500,
    // which the monitor, without capabilities once the VM is set up, could not write.
    use std::os::unix::process::CommandExt;
    let root = StateRoot::new();
    let bundle = Bundle::new(&["sh", "-c", "echo up; exit 3"]);
    let mut runvm = root.command(&[]);
    // SAFETY: umask(2) in the child before exec; async-signal-safe, no memory touched.
    unsafe {
        runvm.pre_exec(|| {
            libc::umask(0o277);
            Ok(())
        });
    }
    let (out, pid) = create_with(runvm, &bundle, "um");
    assert_eq!(code(&out), 0, "create: {}", stderr(&out));
    let pid = pid.expect("create wrote the pid file");
    let out = root.cmd(&["start", "um"]);
    assert_eq!(code(&out), 0, "start: {}", stderr(&out));
    assert_eq!(reap(pid, Duration::from_secs(60)), 3);
    assert_eq!(bundle.stdout(), "up\n");
    assert_eq!(code(&root.cmd(&["delete", "um"])), 0);
    root.assert_clean(Duration::from_secs(5));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn stdout_and_stderr_keep_their_order_in_one_file_or_pipe_as_under_runc() {
    let root = StateRoot::new();
    let lines = "i=0; while [ $i -lt 300 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done";
    let want: String = (0..300).map(|i| format!("out{i}\nerr{i}\n")).collect();
    let bundle = Bundle::new(&["sh", "-c", &format!("{lines}; exec sleep 600")]);
    // `runvm run … >f 2>&1`: one file description for both.
    let dir = TempDir::new("order");
    let out = dir.path().join("run.out");
    let f = std::fs::File::create(&out).unwrap();
    let child = root
        .command(&["run", "--bundle", bundle.path().to_str().unwrap(), "ord"])
        .stdin(std::process::Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    wait_for("the 600 lines of run", Duration::from_secs(90), || {
        let got = std::fs::read_to_string(&out).unwrap_or_default();
        (got.len() >= want.len()).then_some(got)
    });
    assert_eq!(std::fs::read_to_string(&out).unwrap(), want);
    // `runvm exec … 2>&1 | …`: one pipe for both.
    let (mut r, w) = std::io::pipe().unwrap();
    let exec = root
        .command(&["exec", "ord", "sh", "-c", lines])
        .stdin(std::process::Stdio::null())
        .stdout(w.try_clone().unwrap())
        .stderr(w)
        .spawn()
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut r, &mut s).map(|_| s)
    });
    let o = wait_with_timeout(exec, Duration::from_secs(60));
    assert_eq!(code(&o), 0);
    assert_eq!(reader.join().unwrap().unwrap(), want);
    // Separate pipes: each gets its own lines, whole and in order.
    let o = root.cmd(&["exec", "ord", "sh", "-c", lines]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let only = |p: &str| -> String { (0..300).map(|i| format!("{p}{i}\n")).collect() };
    assert_eq!((stdout(&o), stderr(&o)), (only("out"), only("err")));

    assert_eq!(code(&root.cmd(&["kill", "ord", "KILL"])), 0);
    let o = wait_with_timeout(child, Duration::from_secs(60));
    assert_eq!(code(&o), 137);
    root.assert_clean(Duration::from_secs(2));
}
