//! Terminals as containerd drives them: `create --console-socket S` with
//! `process.terminal`, the pty master received on S (go-runc's protocol), keys typed and
//! the window resized on the master; and `exec -t --console-socket`. Run with
//! `cargo xtask test`.

use std::time::{Duration, Instant};

use runvm_tests::tmux::Tmux;
use runvm_tests::*;

const T: Duration = Duration::from_secs(60);

/// Asks the shell on `t` for its terminal's size until it is `rows` `cols`: a size set on
/// the master travels to the guest's pty while the shell waits.
fn wait_for_size(t: &mut Terminal, rows: u16, cols: u16) {
    let want = format!("\r\n{rows} {cols}\r\n");
    let deadline = Instant::now() + T;
    loop {
        // (`e''nd` is echoed as typed; only the command prints `end`.)
        t.type_keys(b"stty size; echo e''nd\n");
        let answer = t.expect("end\r\n", T);
        if answer.contains(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the guest's pty did not become {rows}x{cols} within {T:?}; the last answer: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Types `sleep 100` on `t`, waits until it runs in container `id` (listed by `runvm ps`,
/// so it is the foreground job), then ^C.
fn interrupt_a_sleep(root: &StateRoot, id: &str, t: &mut Terminal) {
    t.type_keys(b"sleep 100\n");
    root.wait_for_guest_process(id, "sleep 100", T);
    t.type_keys(b"\x03");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn console_socket_shell_resize_interrupt_and_exit() {
    let root = StateRoot::new();
    let bundle = Bundle::terminal(&["sh"]);
    let console = ConsoleSocket::new();
    let (out, pid) = root.create_with_console(&bundle, "tty", &console);
    assert_eq!(code(&out), 0, "create: {}", stderr(&out));
    let (master, name) = console.receive(Duration::from_secs(30));
    assert!(name.starts_with("/dev/pts/"), "pty name {name:?}");
    let mut t = Terminal::new(master);
    t.resize(24, 80);
    assert_eq!(code(&root.cmd(&["start", "tty"])), 0);

    t.type_keys(b"echo h''i\n");
    t.expect("\r\nhi\r\n", T);

    // The guest's pty follows TIOCSWINSZ on the master.
    t.resize(40, 123);
    wait_for_size(&mut t, 40, 123);

    // ^C interrupts a foreground sleep; the shell goes on.
    interrupt_a_sleep(&root, "tty", &mut t);
    t.type_keys(b"echo af''ter $?\n");
    t.expect("after 130", T);

    // exec -t --console-socket into the same container.
    let exec_console = ConsoleSocket::new();
    let dir = TempDir::new("exectty");
    let pid_file = dir.path().join("exec.pid");
    let child = root
        .command(&[
            "exec",
            "-t",
            "--detach",
            "--console-socket",
            exec_console.path().to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "tty",
            "sh",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (emaster, _) = exec_console.receive(Duration::from_secs(30));
    let o = wait_with_timeout(child, Duration::from_secs(60));
    assert_eq!(code(&o), 0, "exec -t: {}", stderr(&o));
    let epid = read_pid(&pid_file).expect("exec -t wrote no pid file");
    let mut e = Terminal::new(emaster);
    e.type_keys(b"tty\n");
    e.expect("/dev/pts/", T);
    e.resize(30, 90);
    wait_for_size(&mut e, 30, 90);
    interrupt_a_sleep(&root, "tty", &mut e);
    e.type_keys(b"echo ex''ec $?; exit 5\n");
    e.expect("exec 130", T);
    assert_eq!(reap(epid, T), 5);

    t.type_keys(b"exit\n");
    assert_eq!(reap(pid.unwrap(), T), 0);
    assert_eq!(code(&root.cmd(&["delete", "tty"])), 0);
    root.assert_clean(Duration::from_secs(5));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn interrupted_foreground_command_exits_130() {
    let root = StateRoot::new();
    // Not `sh -c 'sleep 100'`: busybox's sh execs a lone command, and a `sleep` that is
    // PID 1 ignores ^C (SIGINT without a handler), under runc too.
    let bundle = Bundle::terminal(&["sh", "-c", "echo started; sleep 100; exit $?"]);
    let console = ConsoleSocket::new();
    let (out, pid) = root.create_with_console(&bundle, "int", &console);
    assert_eq!(code(&out), 0, "create: {}", stderr(&out));
    let (master, _) = console.receive(Duration::from_secs(30));
    let mut t = Terminal::new(master);
    assert_eq!(code(&root.cmd(&["start", "int"])), 0);
    t.expect("started", T);
    // A ^C before `sleep` runs would reach only the shell, a PID 1 that ignores it.
    root.wait_for_guest_process("int", "sleep 100", T);
    t.type_keys(b"\x03");
    assert_eq!(reap(pid.unwrap(), T), 130);
    assert_eq!(code(&root.cmd(&["delete", "int"])), 0);
    root.assert_clean(Duration::from_secs(5));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn run_in_the_foreground_relays_the_callers_terminal() {
    let root = StateRoot::new();
    let bundle = Bundle::terminal(&["sh"]);
    let dir = TempDir::new("tmux");
    let (before, after) = (dir.path().join("before"), dir.path().join("after"));
    // The terminal's settings before and after `runvm run`; the line's code is run's.
    let line = format!(
        "stty -g > {b}; {bin} --root {root} run --bundle {bundle} fg; rc=$?; stty -g > {a}; (exit $rc)",
        b = before.display(),
        a = after.display(),
        bin = runvm_bin().display(),
        root = root.path().display(),
        bundle = bundle.path().display(),
    );
    let t = Tmux::start(dir.path(), &line, 100, 30);
    t.type_line("echo h''i");
    t.wait_screen("the shell's answer", T, |s| s.contains("\nhi\n"));
    t.type_line("stty size");
    t.wait_screen("stty size 30 100", T, |s| s.contains("30 100"));
    // The caller's terminal changes size: SIGWINCH reaches runvm, the guest follows.
    t.resize(120, 40);
    t.ask_until("clear; stty size", "stty size 40 120", T, |s| {
        s.contains("40 120")
    });
    t.type_line("exit 3");
    assert_eq!(t.wait_exit(T), 3, "runvm run exits with the shell's code");
    assert_eq!(
        std::fs::read_to_string(&before).unwrap(),
        std::fs::read_to_string(&after).unwrap(),
        "the caller's terminal settings are restored"
    );
    drop(t);
    root.assert_clean(Duration::from_secs(5));
}
