//! Docker acceptance tests (issue 5's "Must show" list): the real `dockerd` and `docker`
//! CLI from Debian drive runvm as a registered runtime. Each test is one group; after
//! each, the harness removes its containers and asserts that no monitor process, state
//! directory, mount or tap device is left (`tests/src/docker.rs`).
//!
//! Run: `cargo xtask guest-test docker [-- FILTER]`. `RUNVM_DOCKER_RUNTIME=runc` runs the
//! same tests against runc as a control.

use std::io::Write;
use std::time::{Duration, Instant};

use runvm_tests::docker::{self, Cli, Harness, BUSYBOX};
use runvm_tests::socket_client;
use runvm_tests::tmux::Tmux;
use runvm_tests::wait_for;

const TESTS: &[(&str, docker::TestFn)] = &[
    ("echo_and_exit_codes", echo_and_exit_codes),
    ("stdin_is_relayed", stdin_is_relayed),
    ("ps_shows_one_process", ps_shows_one_process),
    (
        "hostname_is_short_id_or_given",
        hostname_is_short_id_or_given,
    ),
    ("uname_is_the_guest_kernel", uname_is_the_guest_kernel),
    (
        "image_entrypoint_cmd_env_user_workdir",
        image_entrypoint_cmd_env_user_workdir,
    ),
    ("run_flags_env_user_workdir", run_flags_env_user_workdir),
    (
        "memory_uts_and_limits_as_under_runc",
        memory_uts_and_limits_as_under_runc,
    ),
    (
        "detached_logs_tail_and_follow",
        detached_logs_tail_and_follow,
    ),
    ("logs_lose_no_output", logs_lose_no_output),
    (
        "attach_to_a_running_container",
        attach_to_a_running_container,
    ),
    (
        "engine_api_create_attach_start_wait_logs",
        engine_api_create_attach_start_wait_logs,
    ),
    ("interactive_tty_through_tmux", interactive_tty_through_tmux),
    (
        "stop_without_handler_waits_then_137",
        stop_without_handler_waits_then_137,
    ),
    (
        "stop_with_init_handler_or_stopsignal_is_prompt",
        stop_with_init_handler_or_stopsignal_is_prompt,
    ),
    ("kill_gives_137", kill_gives_137),
    (
        "exec_kill_15_stops_init_container_only",
        exec_kill_15_stops_init_container_only,
    ),
    ("exec_variants", exec_variants),
    ("exec_interactive_tty", exec_interactive_tty),
    ("top_lists_the_process", top_lists_the_process),
    ("pause_and_unpause", pause_and_unpause),
    ("stats_no_stream_shows_memory", stats_no_stream_shows_memory),
    ("update_memory_limit", update_memory_limit),
    (
        "oom_kill_sets_oomkilled_and_an_oom_event",
        oom_kill_sets_oomkilled_and_an_oom_event,
    ),
    (
        "oom_kill_in_a_running_container_is_an_oom_event",
        oom_kill_in_a_running_container_is_an_oom_event,
    ),
    (
        "create_holds_no_vm_until_start",
        create_holds_no_vm_until_start,
    ),
    ("restart_on_failure", restart_on_failure),
    ("restart_always_until_stop", restart_always_until_stop),
    (
        "rm_force_of_a_running_container",
        rm_force_of_a_running_container,
    ),
    (
        "daemon_restart_brings_back_restart_always",
        daemon_restart_brings_back_restart_always,
    ),
    (
        "writable_layer_persists_diff_commit_cp",
        writable_layer_persists_diff_commit_cp,
    ),
    ("read_only_rootfs_gives_erofs", read_only_rootfs_gives_erofs),
    (
        "bind_mounts_are_live_both_ways_while_running",
        bind_mounts_are_live_both_ways_while_running,
    ),
    (
        "volumes_named_image_and_volumes_from",
        volumes_named_image_and_volumes_from,
    ),
    (
        "cp_diff_commit_export_of_a_running_container",
        cp_diff_commit_export_of_a_running_container,
    ),
    (
        "a_missing_command_fails_127_and_leaves_nothing",
        a_missing_command_fails_127_and_leaves_nothing,
    ),
    ("twenty_parallel_containers", twenty_parallel_containers),
    ("default_bridge_echo", default_bridge_echo),
    (
        "default_bridge_container_has_its_address",
        default_bridge_container_has_its_address,
    ),
    ("ctr_run_with_runc_binary", ctr_run_with_runc_binary),
    (
        "ctr_tasks_through_the_shim_v2",
        ctr_tasks_through_the_shim_v2,
    ),
    (
        "ctr_terminal_and_oom_through_the_shim_v2",
        ctr_terminal_and_oom_through_the_shim_v2,
    ),
    // Last: it restarts dockerd with runvm as the default runtime, and the test after it
    // would pay for another restart back to the standard daemon (~30 s emulated).
    (
        "build_with_runvm_as_default_runtime",
        build_with_runvm_as_default_runtime,
    ),
];

fn main() {
    docker::main(docker::Engine::Docker, TESTS);
}

/// The image the ENTRYPOINT/CMD/ENV/USER/WORKDIR tests use.
const ENTRY_IMAGE: &str = "FROM busybox
ENV GREETING=hello PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
WORKDIR /work
USER 1000:1000
EXPOSE 8080
ENTRYPOINT [\"/bin/sh\", \"-c\", \"echo \\\"$GREETING $0\\\" $(id -u):$(id -g) $(pwd)\"]
CMD [\"from-cmd\"]
";

/// An image whose STOPSIGNAL is USR1 and whose process exits 42 on it.
const STOPSIGNAL_IMAGE: &str = "FROM busybox
STOPSIGNAL SIGUSR1
CMD [\"sh\", \"-c\", \"trap 'exit 42' USR1; echo ready; sleep 600 & wait\"]
";

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The time now as Docker takes it in `--since` and `--until` (Unix seconds.nanoseconds).
fn docker_time_now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
}

/// Waits until `docker exec NAME ps -o args` lists `cmdline`: a process the container's
/// shell started runs (as the foreground job, once it has exec'd).
fn wait_for_process_in(d: &Cli, name: &str, cmdline: &str) {
    wait_for(
        &format!("{cmdline:?} to run in container {name}"),
        Duration::from_secs(60),
        || {
            let ps = d.cmd(&["exec", name, "ps", "-o", "args"]);
            (ps.code == 0 && ps.text().lines().any(|l| l.trim() == cmdline)).then_some(())
        },
    );
}

fn echo_and_exit_codes(h: &mut Harness) {
    let d = h.cli().clone();
    d.run(&["--rm", BUSYBOX, "echo", "hi"]).ok().prints("hi");
    d.run(&["--rm", BUSYBOX, "sh", "-c", "exit 3"]).code_is(3);
    d.run(&["--name", "ec", BUSYBOX, "sh", "-c", "exit 3"])
        .code_is(3);
    assert_eq!(d.inspect("ec", "{{.State.ExitCode}}"), "3");
    assert_eq!(d.inspect("ec", "{{.State.Status}}"), "exited");
    let out = d.run(&[
        "--rm",
        BUSYBOX,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 0",
    ]);
    out.ok().prints("out");
    assert_eq!(
        out.stderr.trim(),
        "err",
        "stderr stays separate from stdout"
    );
}

fn stdin_is_relayed(h: &mut Harness) {
    let d = h.cli().clone();
    // Without -i the process's stdin is /dev/null, as runc passes on containerd's, and
    // reads nothing even though the client had some.
    d.run_stdin(
        &[
            "--rm",
            BUSYBOX,
            "sh",
            "-c",
            "readlink /proc/self/fd/0; cat; echo end",
        ],
        b"not for the container\n",
    )
    .ok()
    .prints("/dev/null\nend");
    d.run_stdin(&["--rm", "-i", BUSYBOX, "cat"], b"hello\n")
        .ok()
        .prints("hello");
    let big = vec![b'x'; 1 << 20];
    d.run_stdin(&["--rm", "-i", BUSYBOX, "wc", "-c"], &big)
        .ok()
        .prints(&(1 << 20).to_string());
}

fn ps_shows_one_process(h: &mut Harness) {
    let out = h
        .cli()
        .run(&["--rm", BUSYBOX, "ps", "-e", "-o", "pid,comm"]);
    out.ok();
    let lines: Vec<&str> = out.text().lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "a header and exactly one process: {lines:?}"
    );
    let fields: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(fields, ["1", "ps"], "ps is PID 1: {lines:?}");
}

fn hostname_is_short_id_or_given(h: &mut Harness) {
    let d = h.cli().clone();
    let out = d.run(&[
        "--name",
        "hn",
        BUSYBOX,
        "sh",
        "-c",
        "hostname; cat /etc/hostname",
    ]);
    out.ok();
    let id = d.inspect("hn", "{{.Id}}");
    let short = &id[..12];
    assert_eq!(
        out.text().lines().collect::<Vec<_>>(),
        [short, short],
        "hostname and /etc/hostname are the short id: {}",
        out.stderr
    );
    d.run(&["--rm", "--hostname", "given-name", BUSYBOX, "hostname"])
        .ok()
        .prints("given-name");
}

fn uname_is_the_guest_kernel(h: &mut Harness) {
    let out = h.cli().run(&["--rm", BUSYBOX, "uname", "-r"]);
    out.ok();
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    if h.is_runvm() {
        let kernel = std::env::var("RUNVM_KERNEL").expect("RUNVM_KERNEL");
        let guest = docker::kernel_release(std::path::Path::new(&kernel))
            .expect("a version string in the guest kernel");
        assert_eq!(
            out.text(),
            guest,
            "the guest kernel's release (documented divergence)"
        );
        assert_ne!(out.text(), host.trim());
    } else {
        out.prints(host.trim());
    }
}

fn image_entrypoint_cmd_env_user_workdir(h: &mut Harness) {
    let img = h.image("runvm-test-entry", ENTRY_IMAGE);
    let d = h.cli().clone();
    d.run(&["--rm", &img])
        .ok()
        .prints("hello from-cmd 1000:1000 /work");
    d.run(&["--rm", &img, "other-arg"])
        .ok()
        .prints("hello other-arg 1000:1000 /work");
    d.run(&["--rm", "-e", "GREETING=hi", &img])
        .ok()
        .prints("hi from-cmd 1000:1000 /work");
    d.run(&["--rm", "--user", "0:0", "-w", "/tmp", &img])
        .ok()
        .prints("hello from-cmd 0:0 /tmp");
    d.run(&["--rm", "--entrypoint", "echo", &img, "a", "b"])
        .ok()
        .prints("a b");
    d.run(&["--rm", "--entrypoint", "sh", &img, "-c", "echo $GREETING"])
        .ok()
        .prints("hello");
    d.run(&["--name", "meta", &img]).ok();
    assert_eq!(
        d.inspect("meta", "{{json .Config.ExposedPorts}}"),
        r#"{"8080/tcp":{}}"#
    );
}

/// What a runc container gets that a VM must be given: all the memory `--memory` allows
/// (beyond runvm's default VM size) and its reservation as `memory.low`, the host's
/// hostname with `--uts host`, and the runtime's own process limit.
fn memory_uts_and_limits_as_under_runc(h: &mut Harness) {
    let d = h.cli().clone();
    // 400 MiB in a tmpfs under a 700 MiB limit: more than the VM's default 256 MiB.
    d.run(&[
        "--rm",
        "--memory",
        "700m",
        "--memory-reservation",
        "16m",
        "--tmpfs",
        "/big:size=600m",
        BUSYBOX,
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory.low; \
         dd if=/dev/zero of=/big/f bs=1M count=400 2>/dev/null && echo filled",
    ])
    .ok()
    .prints(&format!("{}\nfilled", 16u64 << 20));
    let host = std::process::Command::new("hostname").output().unwrap();
    let host = String::from_utf8_lossy(&host.stdout).trim().to_string();
    d.run(&["--rm", "--uts", "host", BUSYBOX, "hostname"])
        .ok()
        .prints(&host);
    // The runtime's own process limit (the test host's is about 15,000), not the guest
    // kernel's default for a 256 MiB VM (938).
    let nproc = d.run(&["--rm", BUSYBOX, "sh", "-c", "ulimit -u"]);
    nproc.ok();
    let n: u64 = nproc.text().trim().parse().unwrap_or(u64::MAX);
    assert!(n > 4096, "ulimit -u in the container: {nproc:?}");
}

fn run_flags_env_user_workdir(h: &mut Harness) {
    let d = h.cli().clone();
    d.run(&[
        "--rm",
        "-e",
        "A=1",
        "-e",
        "B=two words",
        BUSYBOX,
        "sh",
        "-c",
        "echo \"$A|$B\"",
    ])
    .ok()
    .prints("1|two words");
    d.run(&["--rm", "--user", "1000:1000", BUSYBOX, "id"])
        .ok()
        .prints("uid=1000(user) gid=1000(user) groups=1000(user)");
    d.run(&["--rm", "--user", "1000", BUSYBOX, "sh", "-c", "echo $HOME"])
        .ok()
        .prints("/home/user");
    d.run(&["--rm", "-w", "/new/dir", BUSYBOX, "pwd"])
        .ok()
        .prints("/new/dir");
    let env = d.run(&["--rm", "--hostname", "h1", BUSYBOX, "env"]);
    env.ok();
    for want in ["HOSTNAME=h1", "HOME=/root", "PATH="] {
        assert!(
            env.text().lines().any(|l| l.starts_with(want)),
            "env lacks {want}: {}",
            env.text()
        );
    }
}

fn detached_logs_tail_and_follow(h: &mut Harness) {
    let d = h.cli().clone();
    let id = d.run_detached(&[
        "--name",
        "logs",
        BUSYBOX,
        "sh",
        "-c",
        "i=1; while [ $i -le 5 ]; do echo line$i; i=$((i+1)); sleep 1; done; echo bye >&2",
    ]);
    assert_eq!(id.len(), 64, "run -d prints the full id: {id}");
    let follow = d.cmd_timeout(&["logs", "-f", "logs"], Duration::from_secs(180));
    follow.ok();
    assert_eq!(
        follow.text(),
        "line1\nline2\nline3\nline4\nline5",
        "logs -f follows until the container exits"
    );
    assert_eq!(follow.stderr.trim(), "bye");
    // The last three lines of the log: two on stdout, one on stderr.
    let tail = d.cmd(&["logs", "--tail", "3", "logs"]);
    tail.ok().prints("line4\nline5");
    assert_eq!(tail.stderr.trim(), "bye");
    assert_eq!(d.inspect("logs", "{{.State.ExitCode}}"), "0");
}

fn logs_lose_no_output(h: &mut Harness) {
    let d = h.cli().clone();
    d.run_detached(&["--name", "burst", BUSYBOX, "seq", "1", "50000"]);
    d.wait_status("burst", "exited", Duration::from_secs(180));
    let out = d.cmd(&["logs", "burst"]);
    out.ok();
    let lines: Vec<&str> = out.text().lines().collect();
    assert_eq!(lines.len(), 50000, "every line reaches docker logs");
    assert_eq!(lines.last(), Some(&"50000"));
    // The foreground path too, with a quick exit after the output.
    let out = d.run(&["--rm", BUSYBOX, "sh", "-c", "seq 1 50000; exit 4"]);
    out.code_is(4);
    assert_eq!(out.text().lines().count(), 50000);
}

fn attach_to_a_running_container(h: &mut Harness) {
    let d = h.cli().clone();
    d.run_detached(&[
        "--name",
        "att",
        BUSYBOX,
        "sh",
        "-c",
        "i=0; while [ $i -lt 20 ]; do echo tick$i; i=$((i+1)); sleep 1; done; exit 5",
    ]);
    d.wait_status("att", "running", Duration::from_secs(120));
    let out = d.cmd_timeout(&["attach", "--no-stdin", "att"], Duration::from_secs(120));
    out.code_is(5);
    assert!(
        out.text().lines().last() == Some("tick19"),
        "attach shows the output until the end: {}",
        out.text()
    );
    // Attach with stdin: a container reading its input.
    d.run_detached(&[
        "-i",
        "--name",
        "att-in",
        BUSYBOX,
        "sh",
        "-c",
        "read line; echo got:$line",
    ]);
    d.wait_status("att-in", "running", Duration::from_secs(120));
    // stdin stays open until the container has answered (closing it detaches).
    let since = docker_time_now();
    let mut attach = d
        .command(&["attach", "att-in"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("docker attach");
    let mut input = attach.stdin.take().unwrap();
    // The line is typed once the daemon has the attach (its `attach` event).
    wait_for(
        "the daemon to report the attach to att-in",
        Duration::from_secs(60),
        || {
            let events = d.cmd(&[
                "events",
                "--since",
                &since,
                "--until",
                &docker_time_now(),
                "--filter",
                "container=att-in",
                "--filter",
                "event=attach",
                "--format",
                "{{.Action}}",
            ]);
            events.text().lines().any(|l| l == "attach").then_some(())
        },
    );
    std::io::Write::write_all(&mut input, b"typed\n").unwrap();
    let out = runvm_tests::wait_with_timeout(attach, Duration::from_secs(60));
    drop(input);
    assert_eq!(docker::exit_code(out.status), 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "got:typed");
}

fn engine_api_create_attach_start_wait_logs(h: &mut Harness) {
    let sock = h.docker_socket().display().to_string();
    let runtime = h.cli().runtime.clone();
    let tmp = h.tmp.clone();
    let curl = |args: &[&str]| {
        let mut c = std::process::Command::new("curl");
        c.args(["-sS", "--unix-socket", &sock]).args(args);
        docker::run_cmd(c, None, Duration::from_secs(120))
    };
    let body = serde_json::json!({
        "Image": "busybox",
        "Cmd": ["sh", "-c", "echo hello world; echo to-stderr >&2"],
        "AttachStdout": true, "AttachStderr": true,
        "HostConfig": { "Runtime": runtime, "NetworkMode": "none" },
    })
    .to_string();
    let out = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
        "http://localhost/v1.41/containers/create?name=api",
    ]);
    out.ok();
    let created: serde_json::Value = serde_json::from_str(out.text()).expect("create answers JSON");
    let id = created["Id"].as_str().expect("an Id").to_string();

    // Attach first (a hijacked stream in the background), then start.
    let headers = tmp.join("attach.headers");
    let stream = tmp.join("attach.out");
    let mut attach = std::process::Command::new("curl")
        .args(["-sS", "-N", "--unix-socket", &sock, "-X", "POST", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&stream)
        .arg(format!(
            "http://localhost/v1.41/containers/{id}/attach?stream=1&stdout=1&stderr=1"
        ))
        .spawn()
        .expect("curl");
    wait_for("the attach to be hijacked", Duration::from_secs(30), || {
        std::fs::read_to_string(&headers)
            .ok()
            .filter(|s| s.contains("\r\n\r\n"))
    });
    let out = curl(&[
        "-X",
        "POST",
        "-w",
        "%{http_code}",
        &format!("http://localhost/v1.41/containers/{id}/start"),
    ]);
    out.ok().prints("204");
    let out = curl(&[
        "-X",
        "POST",
        &format!("http://localhost/v1.41/containers/{id}/wait"),
    ]);
    out.ok();
    let waited: serde_json::Value = serde_json::from_str(out.text()).expect("wait answers JSON");
    assert_eq!(waited["StatusCode"], 0, "{waited}");
    // (How curl ends a stream the daemon closes is curl's business: its output is checked.)
    wait_for(
        "the attach stream to end with the container",
        Duration::from_secs(30),
        || attach.try_wait().unwrap(),
    );
    let attached = demux(&std::fs::read(&stream).unwrap_or_default());
    assert_eq!(
        attached,
        vec![
            (1, "hello world\n".to_string()),
            (2, "to-stderr\n".to_string())
        ],
        "the attach stream carries both outputs"
    );
    let logs = std::process::Command::new("curl")
        .args(["-sS", "--unix-socket", &sock])
        .arg(format!(
            "http://localhost/v1.41/containers/{id}/logs?stdout=1&stderr=1"
        ))
        .output()
        .unwrap();
    let mut logged = demux(&logs.stdout);
    logged.sort();
    assert_eq!(
        logged,
        vec![
            (1, "hello world\n".to_string()),
            (2, "to-stderr\n".to_string())
        ],
        "logs has both outputs"
    );
}

/// Splits Docker's multiplexed stream (8-byte headers: stream, 0, 0, 0, big-endian length).
fn demux(mut data: &[u8]) -> Vec<(u8, String)> {
    let mut out: Vec<(u8, String)> = Vec::new();
    while data.len() >= 8 {
        let len = u32::from_be_bytes([data[4], data[5], data[6], data[7]]) as usize;
        let chunk = &data[8..(8 + len).min(data.len())];
        let text = String::from_utf8_lossy(chunk).into_owned();
        match out.last_mut() {
            Some((s, t)) if *s == data[0] => t.push_str(&text),
            _ => out.push((data[0], text)),
        }
        data = &data[(8 + len).min(data.len())..];
    }
    out
}

fn interactive_tty_through_tmux(h: &mut Harness) {
    let d = h.cli().clone();
    // `docker run -it --rm --name NAME … busybox sh` as a shell command line.
    let line = |name: &str| {
        let mut args = vec!["run".to_string(), "-it".into(), "--rm".into()];
        args.extend(["--name".to_string(), name.to_string()]);
        args.extend(d.container_args(false));
        args.extend([BUSYBOX.to_string(), "sh".into()]);
        d.shell_line(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // exit → 0; typed commands run; resize reaches the guest.
    let t = Tmux::start(&h.tmp, &line("tty-a"), 80, 24);
    t.wait_screen("the shell prompt", Duration::from_secs(120), |s| {
        s.contains("/ #")
    });
    t.type_line("echo typed-$((6*7))");
    t.wait_screen("the typed command's output", Duration::from_secs(30), |s| {
        s.contains("typed-42")
    });
    t.type_line("stty size");
    t.wait_screen("stty size 24 80", Duration::from_secs(30), |s| {
        s.contains("24 80")
    });
    // The new size travels (SIGWINCH, docker, containerd, the runtime, the guest) while
    // the shell waits: ask until the guest sees it.
    t.resize(100, 30);
    t.ask_until(
        "stty size",
        "stty size 30 100 after the resize",
        Duration::from_secs(60),
        |s| s.contains("30 100"),
    );
    t.type_line("tty");
    t.wait_screen("a pty", Duration::from_secs(30), |s| {
        s.contains("/dev/pts/")
    });
    t.type_line("exit");
    assert_eq!(t.wait_exit(Duration::from_secs(60)), 0, "exit gives 0");
    drop(t);

    // Ctrl-C kills the foreground command, not the shell; exit then gives 130.
    // (A ^C typed before `sleep` runs would reach the shell only.)
    let t = Tmux::start(&h.tmp, &line("tty-b"), 80, 24);
    t.wait_screen("the shell prompt", Duration::from_secs(120), |s| {
        s.contains("/ #")
    });
    t.type_line("sleep 600");
    wait_for_process_in(&d, "tty-b", "sleep 600");
    t.keys("C-c");
    t.type_line("echo after-$?");
    t.wait_screen("sleep interrupted (130)", Duration::from_secs(30), |s| {
        s.contains("after-130")
    });
    t.type_line("sleep 600");
    wait_for_process_in(&d, "tty-b", "sleep 600");
    t.keys("C-c");
    t.type_line("exit");
    assert_eq!(
        t.wait_exit(Duration::from_secs(60)),
        130,
        "exit after a Ctrl-C'd command gives 130"
    );
}

fn stop_without_handler_waits_then_137(h: &mut Harness) {
    let d = h.cli().clone();
    d.run_detached(&["--name", "plain", BUSYBOX, "sleep", "600"]);
    d.wait_status("plain", "running", Duration::from_secs(120));
    let out = d.cmd(&["stop", "-t", "5", "plain"]);
    out.ok().prints("plain");
    assert!(
        out.elapsed >= Duration::from_secs(5),
        "a PID 1 without a TERM handler ignores TERM: stop waits the timeout (took {:.1}s)",
        secs(out.elapsed)
    );
    assert!(
        out.elapsed < Duration::from_secs(60),
        "then it is killed: took {:.1}s",
        secs(out.elapsed)
    );
    assert_eq!(d.inspect("plain", "{{.State.ExitCode}}"), "137");
}

fn stop_with_init_handler_or_stopsignal_is_prompt(h: &mut Harness) {
    let img = h.image("runvm-test-stopsignal", STOPSIGNAL_IMAGE);
    let d = h.cli().clone();
    for (name, args, want) in [
        ("init", vec!["--init", BUSYBOX, "sleep", "600"], "143"),
        (
            "handler",
            vec![
                BUSYBOX,
                "sh",
                "-c",
                "trap 'exit 7' TERM; echo ready; sleep 600 & wait",
            ],
            "7",
        ),
        ("stopsignal", vec![img.as_str()], "42"),
    ] {
        let mut a = vec!["--name", name];
        a.extend(args);
        d.run_detached(&a);
        d.wait_status(name, "running", Duration::from_secs(120));
        if name != "init" {
            wait_for("the trap to be set", Duration::from_secs(60), || {
                d.cmd(&["logs", name])
                    .text()
                    .contains("ready")
                    .then_some(())
            });
        }
        let out = d.cmd(&["stop", "-t", "60", name]);
        out.ok();
        assert!(
            out.elapsed < Duration::from_secs(30),
            "{name}: the signal is handled at once, no 60 s wait (took {:.1}s)",
            secs(out.elapsed)
        );
        assert_eq!(d.inspect(name, "{{.State.ExitCode}}"), want, "{name}");
    }
}

fn kill_gives_137(h: &mut Harness) {
    let d = h.cli().clone();
    d.run_detached(&["--name", "k1", BUSYBOX, "sleep", "600"]);
    d.wait_status("k1", "running", Duration::from_secs(120));
    d.cmd(&["kill", "k1"]).ok().prints("k1");
    d.wait_status("k1", "exited", Duration::from_secs(60));
    assert_eq!(d.inspect("k1", "{{.State.ExitCode}}"), "137");
    // A signal with a handler: kill -s reaches the process.
    d.run_detached(&[
        "--name",
        "k2",
        BUSYBOX,
        "sh",
        "-c",
        "trap 'exit 11' HUP; echo ready; sleep 600 & wait",
    ]);
    wait_for("the trap to be set", Duration::from_secs(120), || {
        d.cmd(&["logs", "k2"])
            .text()
            .contains("ready")
            .then_some(())
    });
    d.cmd(&["kill", "-s", "HUP", "k2"]).ok();
    d.wait_status("k2", "exited", Duration::from_secs(60));
    assert_eq!(d.inspect("k2", "{{.State.ExitCode}}"), "11");
}

fn exec_kill_15_stops_init_container_only(h: &mut Harness) {
    let d = h.cli().clone();
    d.run_detached(&["--name", "withinit", "--init", BUSYBOX, "sleep", "600"]);
    d.run_detached(&["--name", "noinit", BUSYBOX, "sleep", "600"]);
    d.wait_status("withinit", "running", Duration::from_secs(120));
    d.wait_status("noinit", "running", Duration::from_secs(120));
    // (The exec'd kill may itself be cut short as the container goes down.)
    d.cmd(&["exec", "withinit", "kill", "-15", "1"]);
    d.wait_status("withinit", "exited", Duration::from_secs(60));
    assert_eq!(d.inspect("withinit", "{{.State.ExitCode}}"), "143");
    d.cmd(&["exec", "noinit", "kill", "-15", "1"]).ok();
    // Part of what is tested: three seconds in which a TERM that killed would have shown.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        d.inspect("noinit", "{{.State.Status}}"),
        "running",
        "TERM from inside to a PID 1 without a handler does nothing"
    );
}

fn exec_variants(h: &mut Harness) {
    let d = h.cli().clone();
    d.run_detached(&["--name", "ex", BUSYBOX, "sleep", "600"]);
    d.wait_status("ex", "running", Duration::from_secs(120));
    d.cmd(&["exec", "ex", "echo", "from-exec"])
        .ok()
        .prints("from-exec");
    d.cmd(&["exec", "ex", "sh", "-c", "exit 9"]).code_is(9);
    d.cmd(&["exec", "-u", "1000:1000", "ex", "id", "-u"])
        .ok()
        .prints("1000");
    d.cmd(&["exec", "-w", "/tmp", "ex", "pwd"])
        .ok()
        .prints("/tmp");
    d.cmd(&["exec", "-e", "X=from-env", "ex", "sh", "-c", "echo $X"])
        .ok()
        .prints("from-env");
    d.cmd_stdin(&["exec", "-i", "ex", "cat"], b"piped\n")
        .ok()
        .prints("piped");
    // Without -i: /dev/null, as under runc.
    d.cmd(&["exec", "ex", "readlink", "/proc/self/fd/0"])
        .ok()
        .prints("/dev/null");
    // The exec'd process is in the container's PID namespace, next to PID 1.
    let ps = d.cmd(&["exec", "ex", "ps", "-o", "pid,comm"]);
    ps.ok();
    let procs: Vec<Vec<&str>> = ps
        .text()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(procs.contains(&vec!["1", "sleep"]), "{procs:?}");
    assert_eq!(procs.len(), 2, "sleep and ps: {procs:?}");
    d.cmd(&["exec", "ex", "no-such-binary"])
        .code_is(126)
        .fails_with("no-such-binary");
}

fn exec_interactive_tty(h: &mut Harness) {
    let d = h.cli().clone();
    d.run_detached(&["--name", "exi", BUSYBOX, "sleep", "600"]);
    d.wait_status("exi", "running", Duration::from_secs(120));
    let line = d.shell_line(&["exec", "-it", "exi", "sh"]);
    let t = Tmux::start(&h.tmp, &line, 90, 20);
    t.wait_screen("the shell prompt", Duration::from_secs(60), |s| {
        s.contains("/ #")
    });
    t.type_line("stty size; tty");
    t.wait_screen("stty size 20 90 and a pty", Duration::from_secs(30), |s| {
        s.contains("20 90") && s.contains("/dev/pts/")
    });
    t.type_line("exit 3");
    assert_eq!(t.wait_exit(Duration::from_secs(60)), 3);
    assert_eq!(d.inspect("exi", "{{.State.Status}}"), "running");
}

fn top_lists_the_process(h: &mut Harness) {
    let d = h.cli().clone();
    d.run_detached(&["--name", "top", BUSYBOX, "sleep", "600"]);
    d.wait_status("top", "running", Duration::from_secs(120));
    let out = d.cmd(&["top", "top"]);
    out.ok();
    let lines: Vec<&str> = out.text().lines().collect();
    assert!(
        lines.len() >= 2,
        "a header and the container's processes: {lines:?}"
    );
    assert!(lines[0].contains("PID"), "{lines:?}");
    // Under runvm the host process is the monitor, whose command line ends with the
    // container's (README: docker top).
    assert!(
        lines[1..].iter().any(|l| l.contains("sleep 600")),
        "{lines:?}"
    );
}

fn pause_and_unpause(h: &mut Harness) {
    let d = h.cli().clone();
    d.run_detached(&[
        "--name",
        "pz",
        BUSYBOX,
        "sh",
        "-c",
        "i=0; while :; do echo $i; i=$((i+1)); sleep 0.2; done",
    ]);
    d.wait_status("pz", "running", Duration::from_secs(120));
    let count = || d.cmd(&["logs", "pz"]).text().lines().count();
    wait_for("the counter to run", Duration::from_secs(60), || {
        (count() > 3).then_some(())
    });
    d.cmd(&["pause", "pz"]).ok();
    assert_eq!(d.inspect("pz", "{{.State.Status}}"), "paused");
    // Part of what is tested: a line already on its way may land within a second; then
    // three seconds in which a running counter (five lines a second) would have written.
    std::thread::sleep(Duration::from_secs(1));
    let before = count();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count(), before, "a paused container makes no progress");
    d.cmd(&["unpause", "pz"]).ok();
    assert_eq!(d.inspect("pz", "{{.State.Status}}"), "running");
    wait_for("the counter to go on", Duration::from_secs(30), || {
        (count() > before + 3).then_some(())
    });
}

fn stats_no_stream_shows_memory(h: &mut Harness) {
    let d = h.cli().clone();
    d.run_detached(&["--name", "st", BUSYBOX, "sleep", "600"]);
    d.wait_status("st", "running", Duration::from_secs(120));
    let out = d.cmd(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.MemUsage}}|{{.PIDs}}",
        "st",
    ]);
    out.ok();
    let usage = out
        .text()
        .split('|')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    assert!(
        !usage.is_empty() && !usage.starts_with("0B"),
        "non-zero memory usage: {:?}",
        out.text()
    );
}

fn update_memory_limit(h: &mut Harness) {
    let d = h.cli().clone();
    d.run_detached(&["--name", "up", "--memory", "200m", BUSYBOX, "sleep", "600"]);
    d.wait_status("up", "running", Duration::from_secs(120));
    let limit = |d: &docker::Cli| {
        let out = d.cmd(&["exec", "up", "cat", "/sys/fs/cgroup/memory.max"]);
        out.ok();
        out.text().to_string()
    };
    assert_eq!(
        limit(&d),
        (200u64 << 20).to_string(),
        "the limit applies inside"
    );
    d.cmd(&["update", "--memory", "300m", "--memory-swap", "300m", "up"])
        .ok();
    assert_eq!(
        d.inspect("up", "{{.HostConfig.Memory}}"),
        (300u64 << 20).to_string()
    );
    assert_eq!(
        limit(&d),
        (300u64 << 20).to_string(),
        "the update applies inside"
    );
    // The reservation is memory.low, as runc writes it.
    d.cmd(&["update", "--memory-reservation", "20m", "up"]).ok();
    d.cmd(&["exec", "up", "cat", "/sys/fs/cgroup/memory.low"])
        .ok()
        .prints(&(20u64 << 20).to_string());
}

/// A process that needs 80 MB: one 80 MiB buffer, filled.
const ALLOC_80M: [&str; 5] = ["dd", "if=/dev/zero", "of=/dev/null", "bs=80M", "count=1"];

/// The `oom` events of container `name` since `since` (up to now).
fn oom_events(d: &docker::Cli, name: &str, since: &str) -> usize {
    let until = docker_time_now();
    let out = d.cmd(&[
        "events",
        "--since",
        since,
        "--until",
        &until,
        "--filter",
        &format!("container={name}"),
        "--filter",
        "event=oom",
        "--format",
        "{{.Action}}",
    ]);
    out.ok();
    out.text().lines().filter(|l| l.trim() == "oom").count()
}

/// What is in each of `dirs` (child cgroups, processes, memory), for a failure's message.
fn describe_cgroups(dirs: &[std::path::PathBuf]) -> String {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    dirs.iter()
        .map(|d| {
            let children: Vec<String> = std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            let procs: Vec<String> = read(d.join("cgroup.procs"))
                .lines()
                .map(|pid| {
                    format!(
                        "{pid} {}",
                        read(format!("/proc/{pid}/cmdline").into()).replace('\0', " ")
                    )
                })
                .collect();
            format!(
                "{}: children {children:?}, processes {procs:?}, memory.current {}",
                d.display(),
                read(d.join("memory.current")).trim()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The host cgroup directories whose name has `id` in it (the container's, whatever the
/// cgroup driver), a few levels down from /sys/fs/cgroup.
fn host_cgroups_named(id: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut level = vec![std::path::PathBuf::from("/sys/fs/cgroup")];
    for _ in 0..4 {
        let mut next = Vec::new();
        for dir in &level {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if e.file_name().to_string_lossy().contains(id) {
                    found.push(e.path());
                }
                next.push(e.path());
            }
        }
        level = next;
    }
    found
}

fn oom_kill_sets_oomkilled_and_an_oom_event(h: &mut Harness) {
    let d = h.cli().clone();
    let since = docker_time_now();
    let limited = [
        &["--name", "oom1", "--memory", "32m", BUSYBOX][..],
        &ALLOC_80M,
    ]
    .concat();
    d.run(&limited).code_is(137);
    let id = d.inspect("oom1", "{{.Id}}");
    wait_for(
        "the container's host cgroup to go with it",
        Duration::from_secs(10),
        || {
            let left = host_cgroups_named(&id);
            if left.is_empty() {
                return Some(());
            }
            eprintln!("[oom1] still there: {}", describe_cgroups(&left));
            None
        },
    );
    assert_eq!(d.inspect("oom1", "{{.State.ExitCode}}"), "137");
    assert_eq!(
        d.inspect("oom1", "{{.State.OOMKilled}}"),
        "true",
        "a process killed for the memory limit is OOMKilled"
    );
    assert!(
        oom_events(&d, "oom1", &since) >= 1,
        "docker events shows an oom event of oom1"
    );
    // The same process without the limit completes, and nothing says OOM.
    let free = [&["--name", "oom2", BUSYBOX][..], &ALLOC_80M].concat();
    d.run(&free).ok();
    assert_eq!(d.inspect("oom2", "{{.State.OOMKilled}}"), "false");
    assert_eq!(oom_events(&d, "oom2", &since), 0);
}

/// A process killed while the container goes on (not its main process, nor an exec):
/// the `oom` event comes while it runs, and the container's cgroup keeps working.
fn oom_kill_in_a_running_container_is_an_oom_event(h: &mut Harness) {
    let d = h.cli().clone();
    let since = docker_time_now();
    let script = format!("{}; echo dd ended $?; sleep 600", ALLOC_80M.join(" "));
    d.run_detached(&[
        "--name", "oomr", "--memory", "32m", BUSYBOX, "sh", "-c", &script,
    ]);
    wait_for("dd to be killed", Duration::from_secs(120), || {
        d.cmd(&["logs", "oomr"])
            .text()
            .contains("dd ended 137")
            .then_some(())
    });
    wait_for("the oom event", Duration::from_secs(30), || {
        (oom_events(&d, "oomr", &since) >= 1).then_some(())
    });
    assert_eq!(d.inspect("oomr", "{{.State.Status}}"), "running");
    // The container's host cgroup, from its pid's (the monitor's under runvm): the
    // container's own, with no cgroup of runvm's left in it.
    let pid = d.inspect("oomr", "{{.State.Pid}}");
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 host");
    let id = d.inspect("oomr", "{{.Id}}");
    assert!(
        path.rsplit('/')
            .next()
            .is_some_and(|leaf| leaf.contains(&id)),
        "the container's pid is in the container's cgroup: {path}"
    );
    let dir = std::path::PathBuf::from("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let children: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name())
        .collect();
    assert!(children.is_empty(), "cgroups left in {dir:?}: {children:?}");
    // docker stats still reads the container's memory, and update still applies.
    let usage = d.cmd(&["stats", "--no-stream", "--format", "{{.MemUsage}}", "oomr"]);
    usage.ok();
    assert!(!usage.text().starts_with("0B"), "{}", usage.text());
    d.cmd(&["update", "--memory", "64m", "--memory-swap", "64m", "oomr"])
        .ok();
    let out = d.cmd(&["exec", "oomr", "cat", "/sys/fs/cgroup/memory.max"]);
    out.ok().prints(&(64u64 << 20).to_string());
    d.cmd(&["rm", "-f", "oomr"]).ok();
    wait_for(
        "the host cgroup to be removed",
        Duration::from_secs(10),
        || (!dir.exists()).then_some(()),
    );
}

fn create_holds_no_vm_until_start(h: &mut Harness) {
    let d = h.cli().clone();
    let out = d.create(&[
        "--name",
        "cr",
        BUSYBOX,
        "sh",
        "-c",
        "echo started; sleep 600",
    ]);
    out.ok();
    let id = out.text().to_string();
    assert_eq!(d.inspect("cr", "{{.State.Status}}"), "created");
    let vm_holders = || {
        docker::process_table()
            .into_iter()
            .filter(|(pid, _, _)| runvm_tests::holds_vm(*pid))
            .map(|(pid, comm, cmd)| format!("{pid} {comm} {cmd}"))
            .collect::<Vec<_>>()
    };
    if h.is_runvm() {
        assert_eq!(
            vm_holders(),
            Vec::<String>::new(),
            "a created container holds no VM"
        );
    }
    assert_eq!(
        d.cmd(&["logs", "cr"]).text(),
        "",
        "nothing ran before start"
    );
    d.cmd(&["start", "cr"]).ok();
    d.wait_status("cr", "running", Duration::from_secs(120));
    wait_for("the process to run", Duration::from_secs(60), || {
        (d.cmd(&["logs", "cr"]).text() == "started").then_some(())
    });
    if h.is_runvm() {
        let pid: i32 = d.inspect("cr", "{{.State.Pid}}").parse().unwrap();
        assert!(
            runvm_tests::holds_vm(pid),
            "after start, State.Pid ({pid}) is the monitor holding the VM of {id}"
        );
    }
}

fn restart_on_failure(h: &mut Harness) {
    let d = h.cli().clone();
    d.run_detached(&[
        "--name",
        "rf",
        "--restart",
        "on-failure:2",
        BUSYBOX,
        "sh",
        "-c",
        "echo run; exit 3",
    ]);
    wait_for(
        "two restarts and a final exit",
        Duration::from_secs(240),
        || {
            let s = d.inspect("rf", "{{.RestartCount}} {{.State.Status}}");
            (s == "2 exited").then_some(())
        },
    );
    assert_eq!(d.inspect("rf", "{{.State.ExitCode}}"), "3");
    assert_eq!(d.cmd(&["logs", "rf"]).text(), "run\nrun\nrun", "three runs");
    // A success is not restarted.
    d.run_detached(&["--name", "rf0", "--restart", "on-failure", BUSYBOX, "true"]);
    d.wait_status("rf0", "exited", Duration::from_secs(120));
    // Part of what is tested: three seconds in which a restart would have shown.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        d.inspect("rf0", "{{.RestartCount}} {{.State.Status}}"),
        "0 exited"
    );
}

fn restart_always_until_stop(h: &mut Harness) {
    let d = h.cli().clone();
    d.run_detached(&[
        "--name",
        "ra",
        "--restart",
        "always",
        BUSYBOX,
        "sh",
        "-c",
        "echo run; sleep 1",
    ]);
    wait_for("at least two restarts", Duration::from_secs(240), || {
        let n: u32 = d.inspect("ra", "{{.RestartCount}}").parse().unwrap_or(0);
        (n >= 2).then_some(())
    });
    d.cmd(&["stop", "-t", "5", "ra"]).ok();
    let n = d.inspect("ra", "{{.RestartCount}}");
    assert_eq!(d.inspect("ra", "{{.State.Status}}"), "exited");
    // Part of what is tested: five seconds in which a restart would have shown.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        d.inspect("ra", "{{.RestartCount}} {{.State.Status}}"),
        format!("{n} exited"),
        "stop ends the loop"
    );
}

fn rm_force_of_a_running_container(h: &mut Harness) {
    let d = h.cli().clone();
    d.run_detached(&["--name", "rmf", BUSYBOX, "sleep", "600"]);
    d.wait_status("rmf", "running", Duration::from_secs(120));
    let out = d.cmd(&["rm", "-f", "rmf"]);
    out.ok().prints("rmf");
    assert!(
        out.elapsed < Duration::from_secs(30),
        "rm -f kills at once: {:.1}s",
        secs(out.elapsed)
    );
    d.cmd(&["inspect", "rmf"]).fails_with("No such");
    h.assert_nothing_left();
}

fn daemon_restart_brings_back_restart_always(h: &mut Harness) {
    let d = h.cli().clone();
    d.run_detached(&[
        "--name",
        "back",
        "--restart",
        "always",
        BUSYBOX,
        "sh",
        "-c",
        "echo up; sleep 600",
    ]);
    d.wait_status("back", "running", Duration::from_secs(120));
    let pid_before = d.inspect("back", "{{.State.Pid}}");
    h.restart_daemon("runc");
    let d = h.cli().clone();
    d.wait_status("back", "running", Duration::from_secs(180));
    let pid_after = d.inspect("back", "{{.State.Pid}}");
    assert_ne!(
        pid_before, pid_after,
        "a new instance runs after the daemon restart"
    );
    if h.is_runvm() {
        assert!(
            runvm_tests::holds_vm(pid_after.parse().unwrap()),
            "and it holds a VM"
        );
    }
    wait_for(
        "the second instance's output",
        Duration::from_secs(60),
        || {
            (d.cmd(&["logs", "back"])
                .text()
                .lines()
                .filter(|l| *l == "up")
                .count()
                == 2)
                .then_some(())
        },
    );
}

fn writable_layer_persists_diff_commit_cp(h: &mut Harness) {
    let d = h.cli().clone();
    let script = "cat /from-host 2>/dev/null; echo x >> /data; cat /data";
    d.run(&["--name", "wl", BUSYBOX, "sh", "-c", script])
        .ok()
        .prints("x");
    d.cmd(&["start", "-a", "wl"]).ok().prints("x\nx");
    let diff = d.cmd(&["diff", "wl"]);
    diff.ok();
    assert!(
        diff.text().lines().any(|l| l == "A /data"),
        "docker diff shows the new file: {}",
        diff.text()
    );
    let host_copy = h.tmp.join("data.copy");
    d.cmd(&["cp", "wl:/data", &host_copy.display().to_string()])
        .ok();
    assert_eq!(
        std::fs::read_to_string(&host_copy).unwrap(),
        "x\nx\n",
        "docker cp out"
    );
    let from_host = h.tmp.join("from-host");
    std::fs::write(&from_host, "copied in\n").unwrap();
    d.cmd(&["cp", &from_host.display().to_string(), "wl:/from-host"])
        .ok();
    d.cmd(&["start", "-a", "wl"])
        .ok()
        .prints("copied in\nx\nx\nx");
    d.cmd(&["commit", "wl", "runvm-test-committed"]).ok();
    d.run(&["--rm", "runvm-test-committed", "cat", "/data", "/from-host"])
        .ok()
        .prints("x\nx\nx\ncopied in");
    // Deleting an image file is a whiteout in the diff.
    d.run(&["--name", "wl2", BUSYBOX, "rm", "/bin/ls"]).ok();
    let diff = d.cmd(&["diff", "wl2"]);
    assert!(
        diff.text().lines().any(|l| l == "D /bin/ls"),
        "{}",
        diff.text()
    );
}

fn read_only_rootfs_gives_erofs(h: &mut Harness) {
    let d = h.cli().clone();
    let out = d.run(&["--rm", "--read-only", BUSYBOX, "touch", "/x"]);
    out.code_is(1);
    assert!(
        out.stderr.contains("Read-only file system"),
        "{}",
        out.stderr
    );
    d.run(&[
        "--rm",
        "--read-only",
        "--tmpfs",
        "/scratch",
        BUSYBOX,
        "sh",
        "-c",
        "echo ok > /scratch/f && cat /scratch/f",
    ])
    .ok()
    .prints("ok");
}

/// How long a host change may take to show in a container: virtio-fs keeps a guest's
/// cached attributes and names for one second (`--cache auto`).
const HOST_CHANGE_SEEN: Duration = Duration::from_secs(10);

/// Waits until `docker exec NAME cat PATH` prints `want` (a host change reaching the
/// container); panics with the last output after [`HOST_CHANGE_SEEN`].
fn wait_for_cat(d: &Cli, name: &str, path: &str, want: &str) {
    let mut last = String::new();
    let found = wait_for_or_none(HOST_CHANGE_SEEN, || {
        let out = d.cmd(&["exec", name, "cat", path]);
        last = format!("{} {}", out.stdout, out.stderr);
        (out.code == 0 && out.text() == want).then_some(())
    });
    assert!(
        found.is_some(),
        "{path} in container {name} did not become {want:?} within {HOST_CHANGE_SEEN:?}; it was {last:?}"
    );
}

/// Polls `f` every 100 ms until it returns `Some`, or `None` after `timeout`.
fn wait_for_or_none<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `-v` binds of a host directory, a read-only directory, a file and a UNIX socket, seen
/// live both ways while the container runs: what the container writes is on the host at
/// once, what the host writes is seen in the container, `:ro` refuses writes, and a
/// client in the container reaches the host's socket server.
fn bind_mounts_are_live_both_ways_while_running(h: &mut Harness) {
    let d = h.cli().clone();
    let app = h.tmp.join("app");
    let ro = h.tmp.join("ro");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(app.join("at-start"), "at start\n").unwrap();
    std::fs::write(ro.join("present"), "read-only\n").unwrap();
    let numbers = h.tmp.join("numbers");
    std::fs::write(&numbers, "1\n").unwrap();
    let sock = h.tmp.join("app.sock");
    let server = socket_client::Server::start(&sock);
    let kit = h.tmp.join("kit");
    socket_client::install(&kit);
    let v = |host: &std::path::Path, rest: &str| format!("{}:{rest}", host.display());
    let sock_s = sock.display().to_string();
    d.run_detached(&[
        "--name",
        "binds",
        "-v",
        &v(&app, "/app"),
        "-v",
        &v(&ro, "/ro:ro"),
        "-v",
        &v(&numbers, "/numbers"),
        "-v",
        &format!("{sock_s}:{sock_s}"),
        "-v",
        &v(&kit, "/kit:ro"),
        BUSYBOX,
        "sleep",
        "600",
    ]);

    // The container's writes, on the host at once.
    d.cmd(&[
        "exec",
        "binds",
        "sh",
        "-c",
        "cat /app/at-start /ro/present && echo from-container > /app/from-container && \
         echo 2 >> /numbers",
    ])
    .ok()
    .prints("at start\nread-only");
    assert_eq!(
        std::fs::read_to_string(app.join("from-container")).unwrap(),
        "from-container\n"
    );
    assert_eq!(
        std::fs::read_to_string(&numbers).unwrap(),
        "1\n2\n",
        "the container's append is in the host file"
    );

    // The host's writes, in the container: a new file in the directory, and the bound
    // file rewritten in place.
    std::fs::write(app.join("from-host"), "from host\n").unwrap();
    wait_for_cat(&d, "binds", "/app/from-host", "from host");
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&numbers)
        .unwrap()
        .write_all(b"rewritten\n")
        .unwrap();
    wait_for_cat(&d, "binds", "/numbers", "rewritten");

    // `:ro`.
    d.cmd(&["exec", "binds", "touch", "/ro/x"])
        .fails_with("Read-only file system");
    assert!(!ro.join("x").exists());

    // The host's socket, from the container.
    let mut exec = vec![
        "exec".to_string(),
        "-e".into(),
        format!("{}={sock_s}", socket_client::SOCKET_ENV),
        "-e".into(),
        format!("{}=hello from docker", socket_client::REQUEST_ENV),
        "binds".into(),
    ];
    exec.extend(socket_client::argv("/kit", &[]));
    d.cmd(&exec.iter().map(String::as_str).collect::<Vec<_>>())
        .ok()
        .prints("reply: host got: hello from docker");
    assert_eq!(server.received(), ["hello from docker"]);
}

/// A named volume outlives its container, an image's `VOLUME` starts with the image's
/// files, and `--volumes-from` shares a running container's volume both ways.
fn volumes_named_image_and_volumes_from(h: &mut Harness) {
    let img = h.image(
        "runvm-test-volume",
        "FROM busybox\nRUN mkdir /seed && echo seeded > /seed/file\nVOLUME /seed\n",
    );
    let d = h.cli().clone();
    d.run(&[
        "--rm",
        "-v",
        "runvm-test-vol:/vol",
        BUSYBOX,
        "sh",
        "-c",
        "echo first > /vol/f",
    ])
    .ok();
    // The next container has the named volume and its image's VOLUME.
    d.run_detached(&[
        "--name",
        "vol-a",
        "-v",
        "runvm-test-vol:/vol",
        &img,
        "sleep",
        "600",
    ]);
    d.cmd(&["exec", "vol-a", "cat", "/vol/f", "/seed/file"])
        .ok()
        .prints("first\nseeded");
    d.cmd(&["exec", "vol-a", "sh", "-c", "echo from-a > /seed/a"])
        .ok();
    d.run(&[
        "--rm",
        "--volumes-from",
        "vol-a",
        BUSYBOX,
        "sh",
        "-c",
        "cat /seed/file /seed/a && echo from-b > /seed/b",
    ])
    .ok()
    .prints("seeded\nfrom-a");
    wait_for_cat(&d, "vol-a", "/seed/b", "from-b");

    d.cmd(&["rm", "-f", "-v", "vol-a"]).ok();
    d.cmd(&["volume", "rm", "runvm-test-vol"]).ok();
}

/// `docker cp` (both ways), `diff`, `export` and `commit` of a running container show
/// what it wrote a moment before.
fn cp_diff_commit_export_of_a_running_container(h: &mut Harness) {
    let d = h.cli().clone();
    d.run_detached(&["--name", "live", BUSYBOX, "sleep", "600"]);
    d.cmd(&[
        "exec",
        "live",
        "sh",
        "-c",
        "echo moment > /written && mkdir /made && echo inner > /made/f && rm /bin/ls",
    ])
    .ok();

    let out_copy = h.tmp.join("written.copy");
    d.cmd(&["cp", "live:/written", &out_copy.display().to_string()])
        .ok();
    assert_eq!(std::fs::read_to_string(&out_copy).unwrap(), "moment\n");
    let in_copy = h.tmp.join("copied-in");
    std::fs::write(&in_copy, "copied in\n").unwrap();
    d.cmd(&["cp", &in_copy.display().to_string(), "live:/copied-in"])
        .ok();
    wait_for_cat(&d, "live", "/copied-in", "copied in");

    let diff = d.cmd(&["diff", "live"]);
    diff.ok();
    let changes: Vec<&str> = diff.text().lines().collect();
    for want in [
        "A /written",
        "A /made",
        "A /made/f",
        "D /bin/ls",
        "A /copied-in",
    ] {
        assert!(
            changes.contains(&want),
            "docker diff lacks {want:?}: {changes:?}"
        );
    }

    let tar = h.tmp.join("live.tar");
    let tar_s = tar.display().to_string();
    d.cmd(&["export", "-o", &tar_s, "live"]).ok();
    let listing = docker::run_cmd(
        {
            let mut c = std::process::Command::new("tar");
            c.args(["-tf", &tar_s]);
            c
        },
        None,
        Duration::from_secs(60),
    );
    listing.ok();
    let names: Vec<&str> = listing
        .text()
        .lines()
        .map(|l| l.trim_start_matches("./"))
        .collect();
    for want in ["written", "made/f", "copied-in"] {
        assert!(names.contains(&want), "docker export lacks {want}");
    }
    assert!(
        !names.contains(&"bin/ls"),
        "docker export has the removed /bin/ls"
    );

    d.cmd(&["exec", "live", "sh", "-c", "echo late > /late"])
        .ok();
    d.cmd(&["commit", "live", "runvm-test-live-commit"]).ok();
    d.run(&[
        "--rm",
        "runvm-test-live-commit",
        "sh",
        "-c",
        "cat /written /made/f /copied-in /late; test -e /bin/ls || echo ls-gone",
    ])
    .ok()
    .prints("moment\ninner\ncopied in\nlate\nls-gone");
    d.cmd(&["rm", "-f", "live"]).ok();
    d.cmd(&["rmi", "runvm-test-live-commit"]).ok();
}

/// `docker run busybox no-such-command` fails with 127, naming the command, and nothing
/// of it runs on afterwards (no monitor, no virtiofsd, no containerd shim), before and
/// after the container is removed.
fn a_missing_command_fails_127_and_leaves_nothing(h: &mut Harness) {
    let d = h.cli().clone();
    d.run(&["--name", "nocmd", BUSYBOX, "no-such-command"])
        .code_is(127)
        .fails_with("no-such-command");
    let mut left = Vec::new();
    let gone = wait_for_or_none(Duration::from_secs(30), || {
        left = docker::container_processes();
        left.is_empty().then_some(())
    });
    if gone.is_none() {
        // What containerd thinks of the task, and what Docker said when it tried to
        // clean up after the failed start.
        let id = d.inspect("nocmd", "{{.Id}}");
        let sock = h.docker_exec_root().join("containerd/containerd.sock");
        let mut ctr = std::process::Command::new("ctr");
        ctr.arg("--address")
            .arg(&sock)
            .args(["--namespace", "moby", "task", "ls"]);
        let tasks = docker::run_cmd(ctr, None, Duration::from_secs(30));
        panic!(
            "processes left by the failed start of container nocmd (not removed yet): \
             {left:#?}\ncontainerd's tasks:\n{}\ndockerd's log about it:\n{}",
            tasks.stdout,
            h.docker_log_lines(&id).join("\n")
        );
    }
    d.cmd(&["rm", "nocmd"]).ok();
    h.assert_nothing_left();
}

fn build_with_runvm_as_default_runtime(h: &mut Harness) {
    let runtime = h.cli().runtime.clone();
    h.restart_daemon(&runtime);
    let d = h.cli().clone();
    let dir = h.tmp.join("build");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox\nRUN echo built-in-a-vm > /built && uname -r > /kernel\nRUN cat /built\nCMD [\"cat\", \"/built\", \"/kernel\"]\n",
    )
    .unwrap();
    let out = d.cmd_timeout(
        &[
            "build",
            "--network",
            "none",
            "-t",
            "runvm-test-built",
            &dir.display().to_string(),
        ],
        Duration::from_secs(600),
    );
    out.ok();
    assert!(
        out.text().contains("built-in-a-vm"),
        "the second RUN step saw the first's file: {}",
        out.text()
    );
    let run = d.cmd(&["run", "--rm", "--network", "none", "runvm-test-built"]);
    run.ok();
    let lines: Vec<&str> = run.text().lines().collect();
    assert_eq!(lines.first(), Some(&"built-in-a-vm"), "{lines:?}");
    if h.is_runvm() {
        let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_ne!(
            lines.get(1).copied(),
            Some(host.trim()),
            "the RUN step ran in a guest kernel"
        );
    }
    let info = d.cmd(&["info", "--format", "{{.DefaultRuntime}}"]);
    info.ok().prints(&runtime);
}

/// Twenty containers run and stop at once. Their PID 1 is `sleep`, which as a PID 1
/// without a handler ignores `docker stop`'s SIGTERM, so after `-t 2` Docker sends
/// SIGKILL to all twenty and waits a fixed 10 s for each one's exit event: every one must
/// end by the SIGKILL (137) within that deadline, or Docker SIGKILLs the monitor itself
/// (logged as "trying direct SIGKILL"), and nothing may be left. runvm's part is bounded
/// by design: the host stops a VM whose guest has not reported the kill within
/// 250 ms, however slow the guest is.
fn twenty_parallel_containers(h: &mut Harness) {
    let d = h.cli().clone();
    let names: Vec<String> = (0..20).map(|i| format!("par{i}")).collect();
    let results: Vec<docker::Out> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|n| {
                let d = d.clone();
                {
                    let args = d.with_runtime("run", &["-d", "--name", n, BUSYBOX, "sleep", "600"]);
                    // Twenty CLIs, shims and guests at once are slow under TCG.
                    s.spawn(move || {
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        d.cmd_timeout(&args, Duration::from_secs(900))
                    })
                }
            })
            .collect();
        handles.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for r in &results {
        r.ok();
    }
    for n in &names {
        d.wait_status(n, "running", Duration::from_secs(600));
    }
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1;
    let mut args = vec!["stop", "-t", "2"];
    args.extend(names.iter().map(String::as_str));
    // What the monitors are doing while they stop (printed if the test fails).
    let stopping = std::sync::atomic::AtomicBool::new(true);
    let (out, samples) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let start = Instant::now();
            let mut samples = Vec::new();
            while stopping.load(std::sync::atomic::Ordering::Relaxed) {
                samples.push(format!(
                    "{:.1}s: {}",
                    secs(start.elapsed()),
                    monitor_tasks().join("; ")
                ));
                // The sampling period, not a wait for anything.
                std::thread::sleep(Duration::from_secs(2));
            }
            samples
        });
        let out = d.cmd_timeout(&args, Duration::from_secs(900));
        stopping.store(false, std::sync::atomic::Ordering::Relaxed);
        (out, sampler.join().unwrap())
    });
    let statuses: Vec<String> = names
        .iter()
        .map(|n| d.inspect(n, "{{.State.Status}} {{.State.ExitCode}}"))
        .collect();
    // Each container's SIGKILL and its end, as Docker saw them.
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let events = d.cmd(&[
        "events",
        "--since",
        &started.to_string(),
        "--until",
        &until.to_string(),
        "--filter",
        "type=container",
        "--format",
        "{{json .}}",
    ]);
    events.ok();
    let mut kill_to_die = Vec::new();
    for n in &names {
        let mut killed = None;
        let mut died = None;
        for line in events.stdout.lines() {
            let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if e["Actor"]["Attributes"]["name"] != n.as_str() {
                continue;
            }
            let t = e["timeNano"].as_u64().unwrap_or(0);
            match e["Action"].as_str() {
                Some("kill") if e["Actor"]["Attributes"]["signal"] == "9" => killed = Some(t),
                Some("die") => died = Some(t),
                _ => {}
            }
        }
        kill_to_die.push((n.clone(), killed, died));
    }
    let late: Vec<String> = kill_to_die
        .iter()
        .filter(|(_, k, d)| match (k, d) {
            (Some(k), Some(d)) => d.saturating_sub(*k) >= 10_000_000_000,
            _ => true,
        })
        .map(|(n, k, d)| format!("{n}: kill {k:?} die {d:?}"))
        .collect();
    if out.code != 0 || statuses.iter().any(|s| s != "exited 137") || !late.is_empty() {
        println!(
            "[twenty] runvm tasks while stopping:\n{}",
            samples.join("\n")
        );
    }
    out.ok();
    for (n, st) in names.iter().zip(&statuses) {
        assert_eq!(st, "exited 137", "{n}");
    }
    let mut took: Vec<String> = kill_to_die
        .iter()
        .map(|(n, k, d)| match (k, d) {
            (Some(k), Some(d)) => format!("{n} {:.1}s", d.saturating_sub(*k) as f64 / 1e9),
            _ => format!("{n} (kill {k:?}, die {d:?})"),
        })
        .collect();
    took.sort();
    println!(
        "[twenty] Docker's SIGKILL to die: {}; {} of 20 beyond Docker's 10 s",
        took.join(", "),
        late.len()
    );
    // Whether Docker gave up waiting and SIGKILLed the containers' pids (the monitors)
    // itself, which it does 10 s after its own SIGKILL.
    let direct = h.docker_log_lines("trying direct SIGKILL");
    println!(
        "[twenty] Docker killed a container's pid directly {} time(s){}",
        direct.len(),
        direct
            .first()
            .map(|l| format!(", first: {l}"))
            .unwrap_or_default()
    );
    assert!(
        late.is_empty() && direct.is_empty(),
        "every container must end within the 10 s Docker waits after its SIGKILL; late: {late:?}; Docker killed a pid itself: {direct:?}"
    );
}

/// Every runvm process as `pid:state[thread:state:wchan,…]`.
fn monitor_tasks() -> Vec<String> {
    let field = |path: std::path::PathBuf| std::fs::read_to_string(path).unwrap_or_default();
    docker::process_table()
        .into_iter()
        .filter(|(_, comm, _)| comm == "runvm")
        .map(|(pid, _, _)| {
            let stat = field(format!("/proc/{pid}/stat").into());
            let state = stat
                .rsplit(") ")
                .next()
                .unwrap_or("")
                .chars()
                .next()
                .unwrap_or('?');
            let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|t| {
                    let st = field(t.path().join("stat"));
                    let ts = st
                        .rsplit(") ")
                        .next()
                        .unwrap_or("")
                        .chars()
                        .next()
                        .unwrap_or('?');
                    format!(
                        "{}:{}:{}:{}",
                        t.file_name().to_string_lossy(),
                        field(t.path().join("comm")).trim(),
                        ts,
                        field(t.path().join("wchan")).trim()
                    )
                })
                .collect();
            format!("{pid}:{state}[{}]", tasks.join(","))
        })
        .collect()
}

fn default_bridge_echo(h: &mut Harness) {
    h.cli()
        .run_bridge(&["--rm", BUSYBOX, "echo", "hi"])
        .ok()
        .prints("hi");
}

fn default_bridge_container_has_its_address(h: &mut Harness) {
    let d = h.cli().clone();
    let out = d.run_bridge(&["-d", "--name", "net", BUSYBOX, "sleep", "600"]);
    out.ok();
    d.wait_status("net", "running", Duration::from_secs(120));
    let ip = d.inspect("net", "{{.NetworkSettings.IPAddress}}");
    assert!(!ip.is_empty(), "docker gave the container an address");
    let addr = d.cmd(&["exec", "net", "ip", "-4", "-o", "addr", "show", "eth0"]);
    addr.ok();
    assert!(
        addr.text().contains(&format!("inet {ip}/")),
        "eth0 has {ip}: {}",
        addr.text()
    );
    let mut c = std::process::Command::new("ping");
    c.args(["-c", "1", "-W", "10", &ip]);
    docker::run_cmd(c, None, Duration::from_secs(30)).ok();
}

/// A `ctr` client of the daemon's containerd in `namespace`, with the busybox image
/// imported from Docker's.
/// containerd's own client, `ctr`, against the Docker daemon's containerd in one
/// namespace, with the busybox image imported there.
struct Ctr {
    global: Vec<String>,
}

impl Ctr {
    fn with_busybox(h: &Harness, namespace: &str) -> Self {
        let sock = h.docker_exec_root().join("containerd/containerd.sock");
        let tar = h.tmp.join(format!("busybox-image-{namespace}.tar"));
        h.cli()
            .cmd(&["save", "-o", &tar.display().to_string(), "busybox:latest"])
            .ok();
        let ctr = Self {
            global: vec![
                "--address".into(),
                sock.display().to_string(),
                "--namespace".into(),
                namespace.into(),
            ],
        };
        ctr.run(&["images", "import", &tar.display().to_string()])
            .ok();
        ctr
    }

    fn run(&self, args: &[&str]) -> docker::Out {
        let mut c = std::process::Command::new("ctr");
        c.args(&self.global).args(args);
        docker::run_cmd(c, None, Duration::from_secs(180))
    }

    /// SIGKILLs task `name`, waits for it to be STOPPED, removes it and its container.
    fn kill_and_remove(&self, name: &str) {
        self.run(&["tasks", "kill", "-s", "KILL", name]).ok();
        wait_for("the killed task to stop", Duration::from_secs(60), || {
            self.run(&["tasks", "ls"])
                .stdout
                .lines()
                .any(|l| l.starts_with(name) && l.contains("STOPPED"))
                .then_some(())
        });
        self.run(&["tasks", "rm", name]).ok();
        self.run(&["containers", "rm", name]).ok();
    }

    /// `ctr … ARGS` as a shell command line (for a terminal in tmux).
    fn shell_line(&self, args: &[&str]) -> String {
        let global = self.global.iter().map(String::as_str);
        std::iter::once("ctr")
            .chain(global)
            .chain(args.iter().copied())
            .map(docker::sh_quote)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn ctr_run_with_runc_binary(h: &mut Harness) {
    let runtime_bin = if h.is_runvm() {
        h.runvm_bin().to_string()
    } else {
        "runc".to_string()
    };
    let client = Ctr::with_busybox(h, "runvm-test");
    let ctr = |args: &[&str]| client.run(args);
    let out = ctr(&[
        "run",
        "--rm",
        "--runc-binary",
        &runtime_bin,
        "docker.io/library/busybox:latest",
        "ctr-test",
        "sh",
        "-c",
        "echo from-ctr; exit 0",
    ]);
    let _ = ctr(&["tasks", "kill", "-s", "KILL", "ctr-test"]);
    let _ = ctr(&["containers", "rm", "ctr-test"]);
    let _ = ctr(&["images", "rm", "docker.io/library/busybox:latest"]);
    out.ok().prints("from-ctr");
}

/// containerd's own client against the runtime's shim v2 (`io.containerd.runvm.v2`, the
/// `containerd-shim-runvm-v2` beside runvm; runc's `io.containerd.runc.v2` for the peer):
/// a foreground run passes output and exit code through; a detached task is listed,
/// exec'd into, paused and resumed, killed and removed, and nothing is left.
fn ctr_tasks_through_the_shim_v2(h: &mut Harness) {
    let runtime = shim_runtime(h);
    let image = "docker.io/library/busybox:latest";
    let client = Ctr::with_busybox(h, "runvm-shim-test");
    let ctr = |args: &[&str]| client.run(args);

    let out = ctr(&[
        "run",
        "--rm",
        "--runtime",
        runtime,
        image,
        "shim-fg",
        "sh",
        "-c",
        "echo from-shim; echo to-stderr >&2; exit 3",
    ]);
    out.code_is(3).prints("from-shim");
    assert!(out.stderr.contains("to-stderr"), "{out:?}");
    // A process that cannot start: the runtime's own error, through the shim.
    ctr(&[
        "run",
        "--rm",
        "--runtime",
        runtime,
        image,
        "shim-bad",
        "nosuchcmd",
    ])
    .fails_with("nosuchcmd");
    let _ = ctr(&["containers", "rm", "shim-bad"]);
    // A runtime option runvm cannot honour (ctr sends CRI's generic options type for a
    // runtime other than runc's, so runc's shim is not asked): refused by name, and
    // nothing is left.
    if h.is_runvm() {
        ctr(&[
            "run",
            "--rm",
            "--runtime",
            runtime,
            "--runtime-config-path",
            "/etc/runvm-none.toml",
            image,
            "shim-opt",
            "true",
        ])
        .fails_with("ConfigPath");
        let _ = ctr(&["containers", "rm", "shim-opt"]);
        let st = std::process::Command::new(h.runvm_bin())
            .args([
                "--root",
                "/run/containerd/runvm/runvm-shim-test",
                "list",
                "-q",
            ])
            .output()
            .expect("runvm list");
        assert!(
            !String::from_utf8_lossy(&st.stdout).contains("shim-opt"),
            "{st:?}"
        );
    } else {
        eprintln!("    (runtime options: runvm's own case, not run against runc's shim)");
    }

    ctr(&[
        "run",
        "-d",
        "--runtime",
        runtime,
        image,
        "shim-bg",
        "sleep",
        "600",
    ])
    .ok();
    let listed = ctr(&["tasks", "ls"]);
    listed.ok();
    assert!(
        listed
            .stdout
            .lines()
            .any(|l| l.starts_with("shim-bg") && l.contains("RUNNING")),
        "{listed:?}"
    );
    // The task is a runvm container (its state in the shim's runvm root), with its VM.
    let runvm_state = || {
        let mut c = std::process::Command::new(h.runvm_bin());
        c.args([
            "--root",
            "/run/containerd/runvm/runvm-shim-test",
            "state",
            "shim-bg",
        ]);
        docker::run_cmd(c, None, Duration::from_secs(30))
    };
    if h.is_runvm() {
        let st = runvm_state();
        st.ok();
        assert!(st.stdout.contains("\"running\""), "{st:?}");
    }
    let exec = ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "shim-bg",
        "sh",
        "-c",
        "echo exec-out; exit 4",
    ]);
    exec.code_is(4).prints("exec-out");
    let ps = ctr(&["tasks", "ps", "shim-bg"]);
    ps.ok();
    assert!(
        ps.stdout.lines().count() >= 2,
        "a header and the task's pid: {ps:?}"
    );
    // Metrics: the task's processes are counted (the cgroups v1 names from runvm's shim,
    // v2's from runc's; `pids.current` in both).
    let metrics = ctr(&["tasks", "metrics", "shim-bg"]);
    metrics.ok();
    let pids: u64 = metrics
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("pids.current"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pids.current: {metrics:?}"));
    assert!(pids >= 1, "{metrics:?}");
    ctr(&["tasks", "pause", "shim-bg"]).ok();
    assert!(ctr(&["tasks", "ls"])
        .stdout
        .lines()
        .any(|l| l.starts_with("shim-bg") && l.contains("PAUSED")));
    ctr(&["tasks", "resume", "shim-bg"]).ok();
    client.kill_and_remove("shim-bg");
    if h.is_runvm() {
        runvm_state().fails_with("does not exist");
    }
    let _ = ctr(&["images", "rm", image]);
    wait_for_no_runvm_shim();
}

/// The shim v2 runtime under test: runvm's, or runc's for a control run.
fn shim_runtime(h: &Harness) -> &'static str {
    if h.is_runvm() {
        "io.containerd.runvm.v2"
    } else {
        "io.containerd.runc.v2"
    }
}

fn wait_for_no_runvm_shim() {
    wait_for("the shims to end", Duration::from_secs(30), || {
        let shims = std::process::Command::new("pgrep")
            .args(["-f", "containerd-shim-runvm-v2"])
            .output()
            .ok()?;
        shims.stdout.is_empty().then_some(())
    });
}

/// Terminals and OOM kills through the shim v2 (runc's shim as the control): `ctr run -t`
/// gives a shell on a pty whose size follows the client's window, `ctr task exec -t`
/// another, each with its exit code; a task killed by the OOM killer exits 137 with a
/// `/tasks/oom` event.
fn ctr_terminal_and_oom_through_the_shim_v2(h: &mut Harness) {
    let runtime = shim_runtime(h);
    let image = "docker.io/library/busybox:latest";
    let client = Ctr::with_busybox(h, "runvm-shim-tty");
    let ctr = |args: &[&str]| client.run(args);

    let line = client.shell_line(&[
        "run",
        "-t",
        "--rm",
        "--runtime",
        runtime,
        image,
        "shim-tty",
        "sh",
    ]);
    let t = Tmux::start(&h.tmp, &line, 80, 24);
    t.wait_screen("the shell prompt", Duration::from_secs(120), |s| {
        s.contains("/ #")
    });
    t.type_line("stty size; tty");
    t.wait_screen("stty size 24 80 on a pty", Duration::from_secs(30), |s| {
        s.contains("24 80") && s.contains("/dev/pts/")
    });
    t.resize(100, 30);
    t.ask_until(
        "stty size",
        "stty size 30 100 after the resize",
        Duration::from_secs(60),
        |s| s.contains("30 100"),
    );
    t.type_line("exit 5");
    assert_eq!(t.wait_exit(Duration::from_secs(60)), 5, "exit 5 gives 5");
    drop(t);

    ctr(&[
        "run",
        "-d",
        "--runtime",
        runtime,
        image,
        "shim-tty-bg",
        "sleep",
        "600",
    ])
    .ok();
    let line = client.shell_line(&[
        "tasks",
        "exec",
        "-t",
        "--exec-id",
        "t1",
        "shim-tty-bg",
        "sh",
    ]);
    let t = Tmux::start(&h.tmp, &line, 90, 20);
    t.wait_screen("the exec'd shell's prompt", Duration::from_secs(120), |s| {
        s.contains("/ #")
    });
    t.type_line("echo in-$((2+3)); stty size");
    t.wait_screen("its output and size", Duration::from_secs(30), |s| {
        s.contains("in-5") && s.contains("20 90")
    });
    t.type_line("exit 7");
    assert_eq!(t.wait_exit(Duration::from_secs(60)), 7, "exit 7 gives 7");
    drop(t);
    client.kill_and_remove("shim-tty-bg");

    // OOM: `ctr events` sees the task's oom event.
    let events_file = h.tmp.join("ctr-events.txt");
    let mut events = std::process::Command::new("ctr")
        .args(&client.global)
        .arg("events")
        .stdout(std::fs::File::create(&events_file).unwrap())
        .spawn()
        .expect("ctr events");
    let mut hog = vec![
        "run",
        "--rm",
        "--runtime",
        runtime,
        "--memory-limit",
        "33554432",
        image,
        "shim-oom",
    ];
    hog.extend(ALLOC_80M);
    ctr(&hog).code_is(137);
    let seen = wait_for("the task's oom event", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&events_file).ok()?;
        text.lines()
            .find(|l| l.contains("/tasks/oom") && l.contains("shim-oom"))
            .map(str::to_string)
    });
    let _ = events.kill();
    let _ = events.wait();
    assert!(seen.contains("shim-oom"), "{seen}");
    let _ = ctr(&["images", "rm", image]);
    wait_for_no_runvm_shim();
}
