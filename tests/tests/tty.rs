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
