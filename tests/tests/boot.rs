//! Boots real guests through `runvm run`: output bytes, exit codes, PID 1, and that
//! nothing is left behind, including after the host side is SIGKILLed.
//! Run with `cargo xtask test` (directly, or inside the nested test host).

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use runvm_tests::*;

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn echo_reaches_stdout_exactly() {
    let root = StateRoot::new();
    let out = root.run(&Bundle::new(&["echo", "hello from a microVM"]), "echo", b"");
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "hello from a microVM\n");
    assert_eq!(stderr(&out), "");
    root.assert_clean(Duration::from_secs(2));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn exit_code_passes_through() {
    let root = StateRoot::new();
    let out = root.run(
        &Bundle::new(&["sh", "-c", "echo out; echo err >&2; exit 42"]),
        "exit42",
        b"",
    );
    assert_eq!(code(&out), 42, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(stderr(&out), "err\n");
    root.assert_clean(Duration::from_secs(2));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn kernel_sigkill_gives_137() {
    // A PID 1 cannot SIGKILL itself (the kernel ignores it, as under runc), but a
    // SIGKILL the kernel sends (here: the RLIMIT_CPU hard limit) kills it.
    let root = StateRoot::new();
    let script = "trap '' XCPU; ulimit -t 1; while :; do :; done";
    let out = root.run(&Bundle::new(&["sh", "-c", script]), "cpukill", b"");
    assert_eq!(code(&out), 137, "stderr: {}", stderr(&out));
    root.assert_clean(Duration::from_secs(2));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn pid1_ignores_its_own_sigkill_like_runc() {
    let root = StateRoot::new();
    let out = root.run(
        &Bundle::new(&["sh", "-c", "kill -9 $$; echo survived; exit 5"]),
        "selfkill",
        b"",
    );
    assert_eq!(code(&out), 5, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "survived\n");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn signal_death_gives_128_plus_signo() {
    // A child of PID 1 killed by SIGKILL: the shell reports 137, and exits with it.
    let root = StateRoot::new();
    let out = root.run(
        &Bundle::new(&["sh", "-c", "sh -c 'kill -9 $$'; exit $?"]),
        "childkill",
        b"",
    );
    assert_eq!(code(&out), 137, "stderr: {}", stderr(&out));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn one_mib_written_just_before_exit_is_not_lost() {
    let root = StateRoot::new();
    let out = root.run(
        &Bundle::new(&["sh", "-c", "seq 1 200000; seq 1 1000 >&2; exit 3"]),
        "mib",
        b"",
    );
    assert_eq!(
        code(&out),
        3,
        "stderr tail: {}",
        &stderr(&out)[..stderr(&out).len().min(300)]
    );
    // 1,288,895 bytes: more than 1 MiB.
    let want: String = (1..=200000).map(|i| format!("{i}\n")).collect();
    assert_eq!(out.stdout.len(), want.len(), "stdout length");
    assert!(out.stdout == want.as_bytes(), "stdout bytes differ");
    let want_err: String = (1..=1000).map(|i| format!("{i}\n")).collect();
    assert_eq!(stderr(&out), want_err);
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn workload_is_pid1_and_alone() {
    let root = StateRoot::new();
    let out = root.run(&Bundle::new(&["ps", "-e", "-o", "pid,comm"]), "ps", b"");
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().skip(1).map(str::trim).collect();
    assert_eq!(lines, vec!["1 ps"], "ps -e output:\n{text}");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn stdin_env_cwd_and_hostname() {
    let root = StateRoot::new();
    let bundle = Bundle::with(
        &["sh", "-c", "pwd; echo $FOO; hostname; cat; echo done"],
        "/tmp",
        &["FOO=bar baz"],
    );
    let out = root.run(&bundle, "stdin", b"line one\nline two");
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "/tmp\nbar baz\nrunvm-test\nline one\nline twodone\n"
    );
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn missing_program_is_127() {
    let root = StateRoot::new();
    let out = root.run(&Bundle::new(&["no-such-program"]), "enoent", b"");
    assert_eq!(code(&out), 127, "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("no-such-program"),
        "stderr: {}",
        stderr(&out)
    );
    root.assert_clean(Duration::from_secs(2));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn sigkill_of_the_host_side_leaves_nothing() {
    let root = StateRoot::new();
    let bundle = Bundle::new(&["sh", "-c", "echo running; exec sleep 60"]);
    let mut child = root
        .command(&["run", "--bundle", bundle.path().to_str().unwrap(), "killed"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The guest runs the workload once it has printed: SIGKILL then.
    let mut out = Lines::new(child.stdout.take().unwrap());
    out.wait_for(
        "the workload to print `running`",
        Duration::from_secs(60),
        |l| l == "running",
    );
    assert!(
        holds_vm(child.id() as i32),
        "runvm run holds the VM while its workload runs"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    root.assert_clean(Duration::from_secs(5));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn duplicate_id_is_refused_while_the_first_runs() {
    let root = StateRoot::new();
    // The first container runs until it is given a line.
    let first_bundle = Bundle::new(&["sh", "-c", "echo running; read line; echo got $line"]);
    let mut first = root
        .command(&[
            "run",
            "--bundle",
            first_bundle.path().to_str().unwrap(),
            "dup",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_out = Lines::new(first.stdout.take().unwrap());
    first_out.wait_for(
        "the first container's workload to print `running`",
        Duration::from_secs(60),
        |l| l == "running",
    );

    let out = root.run(&Bundle::new(&["true"]), "dup", b"");
    assert_eq!(code(&out), 1, "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("already exists"),
        "stderr: {}",
        stderr(&out)
    );
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first container still runs after the refusal"
    );

    let mut input = first.stdin.take().unwrap();
    input.write_all(b"go\n").unwrap();
    drop(input);
    let done = wait_with_timeout(first, Duration::from_secs(60));
    assert_eq!(
        code(&done),
        0,
        "the first container is unaffected: {}",
        stderr(&done)
    );
    assert_eq!(
        first_out.all(Duration::from_secs(5)),
        ["running", "got go"],
        "the first container's output"
    );
    root.assert_clean(Duration::from_secs(2));
}
