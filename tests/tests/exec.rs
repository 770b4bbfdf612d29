//! `runvm exec` driven the way containerd's shim drives it: `exec --process p.json
//! --detach --pid-file F ID` with pipes, the pid-file process reaped by us (a subreaper)
//! for the exit code, signals sent straight to that pid. Run with `cargo xtask test`.

use std::time::Duration;

use runvm_tests::*;

const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An OCI process JSON file in a temporary directory (kept alive with it).
fn process(args: &[&str], env: &[&str], cwd: &str, uid: u32) -> (TempDir, String) {
    let mut e = vec![PATH.to_string()];
    e.extend(env.iter().map(|s| s.to_string()));
    process_file(&serde_json::json!({
        "terminal": false,
        "user": { "uid": uid, "gid": uid },
        "args": args,
        "env": e,
        "cwd": cwd,
    }))
}

fn exec_p(root: &StateRoot, id: &str, args: &[&str], stdin: &[u8]) -> ExecResult {
    let (_dir, p) = process(args, &[], "/", 0);
    root.exec_detached(id, &["--process", &p], &[], stdin)
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn exec_codes_settings_output_and_stdin() {
    let root = StateRoot::new();
    let bundle = Bundle::new(&["sleep", "7777"]);
    let monitor = root.running(&bundle, "ex");

    for (script, want) in [
        ("true", 0),
        ("echo out; echo err >&2; exit 3", 3),
        ("nosuchcmd", 127),
        ("kill -9 $$", 137),
    ] {
        let r = exec_p(&root, "ex", &["sh", "-c", script], b"");
        assert_eq!(r.exec_code, 0, "exec {script:?}: {}", r.stderr);
        assert_eq!(r.code, Some(want), "exit code of {script:?}: {r:?}");
        if want == 3 {
            assert_eq!(r.stdout, "out\n");
            assert!(r.stderr.ends_with("err\n"), "{:?}", r.stderr);
        }
    }

    // env and cwd from --process.
    let (_d, p) = process(&["sh", "-c", "echo $FOO; pwd"], &["FOO=bar"], "/tmp", 0);
    let r = root.exec_detached("ex", &["--process", &p], &[], b"");
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (Some(0), "bar\n/tmp\n"),
        "{r:?}"
    );

    // The command-line form: the container's process gives the defaults.
    let r = root.exec_detached(
        "ex",
        &["--user", "1000:1000", "--env", "A=b", "--cwd", "/tmp"],
        &["sh", "-c", "id; echo $A; pwd; echo $PATH"],
        b"",
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    // The test root filesystem names uid and gid 1000 "user"; busybox's id prints no
    // groups= for a process without supplementary groups.
    assert_eq!(
        r.stdout,
        format!(
            "uid=1000(user) gid=1000(user)\nb\n/tmp\n{}\n",
            PATH.trim_start_matches("PATH=")
        )
    );

    // 1 MiB of output arrives whole.
    let r = exec_p(
        &root,
        "ex",
        &["sh", "-c", "yes 0123456789abcde | head -c 1048576"],
        b"",
    );
    assert_eq!(r.code, Some(0));
    assert_eq!(r.stdout.len(), 1 << 20);
    assert!(r.stdout.lines().all(|l| l == "0123456789abcde"));

    // stdin, with its EOF, reaches the process.
    let r = exec_p(
        &root,
        "ex",
        &["sh", "-c", "cat; echo end"],
        b"line one\nline two\n",
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (Some(0), "line one\nline two\nend\n")
    );

    // Same PID namespace: the container's main process is PID 1.
    let r = exec_p(&root, "ex", &["ps", "-o", "pid,args"], b"");
    assert!(
        r.stdout.lines().any(|l| l.trim() == "1 sleep 7777"),
        "{:?}",
        r.stdout
    );

    // A missing executable: runvm exec fails as runc's does (255, runc's message), and
    // no pid file is written.
    let r = exec_p(&root, "ex", &["nosuchbinary"], b"");
    assert_eq!(r.exec_code, 255, "{r:?}");
    assert!(
        r.stderr.contains("exec failed") && r.stderr.contains("executable file not found in $PATH"),
        "{}",
        r.stderr
    );
    assert_eq!(r.code, None);

    assert_eq!(code(&root.cmd(&["kill", "ex", "KILL"])), 0);
    assert_eq!(reap(monitor, Duration::from_secs(60)), 137);
    assert_eq!(code(&root.cmd(&["delete", "ex"])), 0);
    root.assert_clean(Duration::from_secs(5));
}

/// Spawns a detached exec whose stdout goes to a file; returns (pid-file pid, out file).
fn exec_to_file(
    root: &StateRoot,
    id: &str,
    script: &str,
    dir: &TempDir,
    n: u32,
) -> (i32, std::path::PathBuf) {
    become_subreaper();
    let pid_file = dir.path().join(format!("{n}.pid"));
    let out = dir.path().join(format!("{n}.out"));
    let (_d, p) = process(&["sh", "-c", script], &[], "/", 0);
    let child = root
        .command(&[
            "exec",
            "--process",
            &p,
            "--detach",
            "--pid-file",
            pid_file.to_str().unwrap(),
            id,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        // Not a pipe: the monitor holds the process's stderr until it ends.
        .stderr(std::fs::File::create(dir.path().join(format!("{n}.err"))).unwrap())
        .spawn()
        .unwrap();
    let o = wait_with_timeout(child, Duration::from_secs(120));
    let err = std::fs::read_to_string(dir.path().join(format!("{n}.err"))).unwrap_or_default();
    assert_eq!(code(&o), 0, "exec {script:?}: {err}");
    let pid = read_pid(&pid_file).expect("exec --detach wrote no pid file");
    (pid, out)
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn exec_signals_kills_concurrency_and_refusals() {
    let root = StateRoot::new();
    let bundle = Bundle::new(&["sleep", "7777"]);
    let monitor = root.running(&bundle, "sig");
    let dir = TempDir::new("execsig");

    // kill -TERM <exec pid> reaches the process's handler.
    let (pid, out) = exec_to_file(
        &root,
        "sig",
        "trap 'echo got term; exit 7' TERM; echo ready; while :; do sleep 1; done",
        &dir,
        1,
    );
    wait_for_text(&out, "ready\n", Duration::from_secs(60));
    // SAFETY: signalling the pid-file process, our (inherited) child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_eq!(reap(pid, Duration::from_secs(60)), 7);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "ready\ngot term\n");

    // SIGKILL of the pid-file process kills the exec'd process in the guest.
    let (pid, out) = exec_to_file(&root, "sig", "echo up; exec sleep 4242", &dir, 2);
    wait_for_text(&out, "up\n", Duration::from_secs(60));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    assert_eq!(reap(pid, Duration::from_secs(60)), 137);
    wait_for(
        "the killed exec's process to go",
        Duration::from_secs(30),
        || {
            let r = exec_p(&root, "sig", &["ps", "-o", "args"], b"");
            (r.code == Some(0) && !r.stdout.contains("sleep 4242")).then_some(())
        },
    );

    // Two execs at once.
    let (a, a_out) = exec_to_file(&root, "sig", "sleep 2; echo A", &dir, 3);
    let (b, b_out) = exec_to_file(&root, "sig", "sleep 2; echo B; exit 4", &dir, 4);
    assert_eq!(reap(a, Duration::from_secs(60)), 0);
    assert_eq!(reap(b, Duration::from_secs(60)), 4);
    assert_eq!(std::fs::read_to_string(a_out).unwrap(), "A\n");
    assert_eq!(std::fs::read_to_string(b_out).unwrap(), "B\n");

    // An exec'd process dies with the container's main process (137).
    let (c, c_out) = exec_to_file(&root, "sig", "echo up; sleep 5555", &dir, 5);
    wait_for_text(&c_out, "up\n", Duration::from_secs(60));
    assert_eq!(code(&root.cmd(&["kill", "sig", "KILL"])), 0);
    assert_eq!(reap(c, Duration::from_secs(60)), 137);
    assert_eq!(reap(monitor, Duration::from_secs(60)), 137);

    // Refusals with runc's wording.
    let out = root.cmd(&["exec", "sig", "true"]);
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("cannot exec in a stopped container"),
        "{}",
        stderr(&out)
    );
    let out = root.cmd(&["exec", "nosuch", "true"]);
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert_eq!(code(&root.cmd(&["delete", "sig"])), 0);

    let created = Bundle::new(&["true"]);
    let (o, pid) = root.create(&created, "cr");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = root.cmd(&["exec", "cr", "true"]);
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("container not running"),
        "{}",
        stderr(&out)
    );
    assert_eq!(code(&root.cmd(&["kill", "cr", "KILL"])), 0);
    assert_eq!(reap(pid.unwrap(), Duration::from_secs(60)), 137);
    assert_eq!(code(&root.cmd(&["delete", "cr"])), 0);
    root.assert_clean(Duration::from_secs(5));
}
