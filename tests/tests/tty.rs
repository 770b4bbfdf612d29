//! Terminals as containerd drives them: `create --console-socket S` with
//! `process.terminal`, the pty master received on S (go-runc's protocol), keys typed and
//! the window resized on the master; and `exec -t --console-socket`. Run with
//! `cargo xtask test`.

use std::time::Duration;

use runvm_tests::*;

const T: Duration = Duration::from_secs(60);

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
    std::thread::sleep(Duration::from_millis(500));
    t.type_keys(b"stty size\n");
    t.expect("\r\n40 123\r\n", T);

    // ^C interrupts a foreground sleep; the shell goes on.
    t.type_keys(b"sleep 100\n");
    std::thread::sleep(Duration::from_secs(2));
    t.type_keys(b"\x03");
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
    let epid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut e = Terminal::new(emaster);
    e.resize(30, 90);
    std::thread::sleep(Duration::from_millis(500));
    e.type_keys(b"tty; stty size\n");
    e.expect("/dev/pts/", T);
    e.expect("30 90\r\n", T);
    e.type_keys(b"sleep 100\n");
    std::thread::sleep(Duration::from_secs(2));
    e.type_keys(b"\x03");
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
    std::thread::sleep(Duration::from_secs(1));
    t.type_keys(b"\x03");
    assert_eq!(reap(pid.unwrap(), T), 130);
    assert_eq!(code(&root.cmd(&["delete", "int"])), 0);
    root.assert_clean(Duration::from_secs(5));
}

/// Runs `tmux -L <socket> args…`, panicking on failure; returns stdout.
fn tmux(socket: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("tmux")
        .arg("-L")
        .arg(socket)
        .args(args)
        .output()
        .expect("tmux is installed in the test host");
    assert!(
        out.status.success(),
        "tmux {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the tmux pane shows `want`.
fn pane_shows(socket: &str, want: &str) -> String {
    let deadline = std::time::Instant::now() + T;
    loop {
        let screen = tmux(socket, &["capture-pane", "-p", "-t", "t"]);
        if screen.contains(want) {
            return screen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{want:?} never appeared in the pane:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn run_in_the_foreground_relays_the_callers_terminal() {
    let root = StateRoot::new();
    let bundle = Bundle::terminal(&["sh"]);
    let dir = TempDir::new("tmux");
    let socket = format!("runvm-test-{}", std::process::id());
    let (before, after, exit) = (
        dir.path().join("before"),
        dir.path().join("after"),
        dir.path().join("exit"),
    );
    let script = format!(
        "stty -g > {b}; {bin} --root {root} run --bundle {bundle} fg; echo $? > {e}.tmp; stty -g > {a}; mv {e}.tmp {e}; sleep 600",
        b = before.display(),
        a = after.display(),
        e = exit.display(),
        bin = runvm_bin().display(),
        root = root.path().display(),
        bundle = bundle.path().display(),
    );
    tmux(
        &socket,
        &[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "100",
            "-y",
            "30",
            &script,
        ],
    );
    let result = std::panic::catch_unwind(|| {
        tmux(&socket, &["send-keys", "-t", "t", "echo h''i", "Enter"]);
        pane_shows(&socket, "\nhi\n");
        tmux(&socket, &["send-keys", "-t", "t", "stty size", "Enter"]);
        pane_shows(&socket, "30 100");
        // The caller's terminal changes size: SIGWINCH reaches runvm, the guest follows.
        tmux(
            &socket,
            &["resize-window", "-t", "t", "-x", "120", "-y", "40"],
        );
        std::thread::sleep(Duration::from_secs(1));
        tmux(
            &socket,
            &["send-keys", "-t", "t", "clear; stty size", "Enter"],
        );
        pane_shows(&socket, "40 120");
        tmux(&socket, &["send-keys", "-t", "t", "exit 3", "Enter"]);
        let deadline = std::time::Instant::now() + T;
        while !exit.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "runvm run did not end"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(std::fs::read_to_string(&exit).unwrap().trim(), "3");
        assert_eq!(
            std::fs::read_to_string(&before).unwrap(),
            std::fs::read_to_string(&after).unwrap(),
            "the caller's terminal settings are restored"
        );
    });
    let _ = std::process::Command::new("tmux")
        .args(["-L", &socket, "kill-server"])
        .status();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    root.assert_clean(Duration::from_secs(5));
}
