//! `ps`, `pause`/`resume`, `events`, `update` and the container's cgroups (host and
//! guest), driven as containerd drives them. Run with `cargo xtask guest-test control`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use runvm_tests::*;

/// A busybox bundle running `args`, with `linux` merged into its `linux` section.
fn bundle_with_linux(args: &[&str], linux: serde_json::Value) -> Bundle {
    let b = Bundle::new(args);
    b.edit_config(|c| {
        for (k, v) in linux.as_object().unwrap() {
            c["linux"][k] = v.clone();
        }
    });
    b
}

/// Runs `sh -c script` in the container; returns (exit code, stdout, stderr).
fn sh(root: &StateRoot, id: &str, script: &str) -> (Option<i32>, String, String) {
    let r = root.exec_detached(id, &[], &["sh", "-c", script], b"");
    assert_eq!(r.exec_code, 0, "exec {script:?}: {}", r.stderr);
    (r.code, r.stdout, r.stderr)
}

/// Runs `sh -c script` in the container, asserting it exits 0; returns its stdout.
#[track_caller]
fn sh_ok(root: &StateRoot, id: &str, script: &str) -> String {
    let (c, out, err) = sh(root, id, script);
    assert_eq!(c, Some(0), "{script:?}: stdout {out:?} stderr {err:?}");
    out
}

/// Every directory of cgroup `path` on this host (v2, and each v1 hierarchy).
fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let rel = path.trim_start_matches('/');
    let mut out = Vec::new();
    let top = PathBuf::from("/sys/fs/cgroup");
    if top.join(rel).is_dir() {
        out.push(top.join(rel));
    }
    for e in std::fs::read_dir(&top).into_iter().flatten().flatten() {
        let d = e.path().join(rel);
        if e.path().is_dir() && d.is_dir() {
            out.push(d);
        }
    }
    out
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test control`"]
fn ps_lists_the_workload_and_an_exec_and_json_gives_host_pids() {
    let root = StateRoot::new();
    let bundle = Bundle::new(&["sleep", "7777"]);
    let monitor = root.running(&bundle, "ps");

    // A detached exec that keeps running: its pid file names its host waiter.
    become_subreaper();
    let dir = TempDir::new("exec");
    let pid_file = dir.path().join("exec.pid");
    // Its stdio goes to the exec'd process (through the monitor): no pipe of ours, which
    // would stay open as long as it runs.
    let err_file = dir.path().join("stderr");
    let status = root
        .command(&[
            "exec",
            "--detach",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "ps",
            "sleep",
            "5555",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .status()
        .unwrap();
    let err = std::fs::read_to_string(&err_file).unwrap_or_default();
    assert!(status.success(), "exec: {err}");
    let holder = read_pid(&pid_file).expect("exec --detach wrote no pid file");

    let out = root.cmd(&["ps", "ps"]);
    assert_eq!(code(&out), 0, "ps: {}", stderr(&out));
    let table = stdout(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].contains("PID") && lines[0].contains("CMD"),
        "{table}"
    );
    let main = lines
        .iter()
        .find(|l| l.ends_with("sleep 7777"))
        .unwrap_or_else(|| panic!("the workload is not listed:\n{table}"));
    assert_eq!(
        main.split_whitespace().next(),
        Some("1"),
        "the workload is PID 1: {table}"
    );
    assert!(main.contains(" root "), "{table}");
    assert!(
        lines.iter().any(|l| l.ends_with("sleep 5555")),
        "the exec'd process is not listed:\n{table}"
    );
    assert!(
        !table.contains("runvm"),
        "the guest init must not be listed:\n{table}"
    );

    let out = root.cmd(&["ps", "--format", "json", "ps"]);
    assert_eq!(code(&out), 0, "ps json: {}", stderr(&out));
    let pids: Vec<i32> = serde_json::from_slice(&out.stdout).expect("a JSON array of pids");
    assert!(
        pids.contains(&monitor),
        "{pids:?} lacks the monitor {monitor}"
    );
    assert!(
        pids.contains(&holder),
        "{pids:?} lacks the exec waiter {holder}"
    );

    // The waiter's end kills the exec'd process, which leaves the list.
    // SAFETY: kill(2) on a child of this test (a subreaper).
    unsafe { libc::kill(holder, libc::SIGKILL) };
    assert_eq!(reap(holder, Duration::from_secs(30)), 137);
    wait_for("the exec'd process to go", Duration::from_secs(30), || {
        let out = root.cmd(&["ps", "ps"]);
        (code(&out) == 0 && !stdout(&out).contains("sleep 5555")).then_some(())
    });

    // `events` without --stats streams until the container stops.
    let mut events = root
        .command(&["events", "--interval", "1", "ps"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Lines::new(events.stdout.take().unwrap());
    lines.wait_for("a first event", Duration::from_secs(30), |_| true);
    assert_eq!(code(&root.cmd(&["kill", "ps", "KILL"])), 0);
    assert_eq!(reap(monitor, Duration::from_secs(60)), 137);
    let out = wait_with_timeout(events, Duration::from_secs(30));
    assert_eq!(code(&out), 0, "events: {}", stderr(&out));
    for line in lines.all(Duration::from_secs(5)) {
        let ev: serde_json::Value = serde_json::from_str(&line).expect("one JSON event a line");
        assert_eq!(ev["type"], "stats", "{line}");
    }
    // A stopped container has no process: runc prints the header alone, exit 0.
    let out = root.cmd(&["ps", "ps"]);
    assert_eq!(code(&out), 0, "ps of a stopped container: {}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));
    assert!(stdout(&out).contains("PID"), "{}", stdout(&out));
    assert_eq!(
        stdout(&root.cmd(&["ps", "--format", "json", "ps"])).trim(),
        "[]"
    );
    assert_eq!(code(&root.cmd(&["delete", "ps"])), 0);
    root.assert_clean(Duration::from_secs(5));
}

fn lines_of(bundle: &Bundle) -> usize {
    bundle.stdout().lines().count()
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test control`"]
fn pause_stops_the_guest_and_resume_continues_it_and_kill_works_while_paused() {
    let root = StateRoot::new();
    let bundle = Bundle::new(&[
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo $i; sleep 0.2; done",
    ]);
    let monitor = root.running(&bundle, "pz");
    wait_for("the counter to count", Duration::from_secs(60), || {
        (lines_of(&bundle) >= 3).then_some(())
    });

    let out = root.cmd(&["pause", "pz"]);
    assert_eq!(code(&out), 0, "pause: {}", stderr(&out));
    assert_eq!(root.status("pz"), "paused");
    // Part of what is tested: output already on its way may land within a second; then
    // three seconds in which a running counter (five lines a second) would have written.
    std::thread::sleep(Duration::from_secs(1));
    let frozen = lines_of(&bundle);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lines_of(&bundle), frozen, "the counter wrote while paused");
    let out = root.cmd(&["pause", "pz"]);
    assert_ne!(code(&out), 0, "a second pause must fail");
    let r = root.exec_detached("pz", &[], &["true"], b"");
    assert_ne!(r.exec_code, 0, "exec into a paused container must fail");
    assert!(r.stderr.contains("paused"), "{}", r.stderr);

    let out = root.cmd(&["resume", "pz"]);
    assert_eq!(code(&out), 0, "resume: {}", stderr(&out));
    assert_eq!(root.status("pz"), "running");
    wait_for("the counter to go on", Duration::from_secs(30), || {
        (lines_of(&bundle) > frozen + 2).then_some(())
    });
    let out = root.cmd(&["resume", "pz"]);
    assert_ne!(code(&out), 0, "resume of a running container must fail");
    assert!(stderr(&out).contains("not paused"), "{}", stderr(&out));

    // SIGKILL of a paused container: resumed, then killed (as runc thaws).
    assert_eq!(code(&root.cmd(&["pause", "pz"])), 0);
    let out = root.cmd(&["kill", "pz", "KILL"]);
    assert_eq!(code(&out), 0, "kill: {}", stderr(&out));
    assert_eq!(reap(monitor, Duration::from_secs(60)), 137);
    assert_eq!(root.status("pz"), "stopped");
    assert_eq!(code(&root.cmd(&["delete", "pz"])), 0);
    root.assert_clean(Duration::from_secs(5));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test control`"]
fn cgroups_limits_events_and_update_and_nothing_left_after_sigkill() {
    let root = StateRoot::new();
    let cg = format!("/runvm-control-test-c{}", std::process::id());
    let bundle = bundle_with_linux(
        &["sleep", "7777"],
        serde_json::json!({
            "cgroupsPath": cg,
            "resources": {
                "memory": { "limit": 64 << 20 },
                "cpu": { "quota": 50000, "period": 100000 },
                "pids": { "limit": 20 },
            },
        }),
    );
    let monitor = root.running(&bundle, "cg");

    // The monitor is in the host cgroup, which exists.
    let own = std::fs::read_to_string(format!("/proc/{monitor}/cgroup")).unwrap();
    assert!(own.lines().any(|l| l.ends_with(&format!(":{cg}"))), "{own}");
    let dirs = cgroup_dirs(&cg);
    assert!(!dirs.is_empty(), "no directory of {cg}");
    // The whole VM is in it: its memory, and a limit of the VM's RAM (64 MiB + 96 MiB for
    // the guest's own needs) plus 64 MiB for the VMM.
    let read = |f: &str| {
        dirs.iter().find_map(|d| {
            std::fs::read_to_string(d.join(f))
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    let usage = read("memory.current").or_else(|| read("memory.usage_in_bytes"));
    assert!(usage.expect("the host cgroup has memory figures") > 0);
    let limit = read("memory.max").or_else(|| read("memory.limit_in_bytes"));
    assert_eq!(limit, Some((64 + 96 + 64) << 20), "host memory limit");
    // The CPU quota: cgroup v2's cpu.max, or v1's pair of files.
    let cpu = match read("cpu.cfs_quota_us").zip(read("cpu.cfs_period_us")) {
        Some((quota, period)) => format!("{quota} {period}"),
        None => dirs
            .iter()
            .find_map(|d| std::fs::read_to_string(d.join("cpu.max")).ok())
            .unwrap_or_else(|| panic!("no cpu.max or cpu.cfs_quota_us in {dirs:?}")),
    };
    assert_eq!(cpu.trim(), "50000 100000", "host CPU quota and period");

    // events --stats: one JSON line, memory of the VM non-zero.
    let out = root.cmd(&["events", "--stats", "cg"]);
    assert_eq!(code(&out), 0, "events: {}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    let ev: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(ev["type"], "stats");
    assert_eq!(ev["id"], "cg");
    assert!(
        ev["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0,
        "{ev}"
    );
    assert!(ev["data"]["pids"]["current"].as_u64().unwrap() >= 1, "{ev}");
    assert_eq!(ev["data"]["pids"]["limit"], 20, "{ev}");

    // The guest's cgroup, as the container sees it (its own cgroup namespace).
    let out = sh_ok(
        &root,
        "cg",
        "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max /sys/fs/cgroup/cpu.max",
    );
    assert_eq!(out, format!("{}\n20\n50000 100000\n", 64 << 20));

    // update: visible in the guest; a pids limit makes forks fail.
    let out = root.cmd(&["update", "--pids-limit", "4", "--memory", "104857600", "cg"]);
    assert_eq!(code(&out), 0, "update: {}", stderr(&out));
    let out = sh_ok(
        &root,
        "cg",
        "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max",
    );
    assert_eq!(out, "104857600\n4\n");
    let (_, out, err) = sh(
        &root,
        "cg",
        "for i in 1 2 3 4 5 6 7 8; do sleep 20 >/dev/null 2>&1 & done; echo after",
    );
    assert!(
        err.to_lowercase().contains("fork") || err.contains("Resource temporarily unavailable"),
        "forks past pids.max must fail; stdout {out:?} stderr {err:?}"
    );
    let resources = TempDir::new("res");
    let file = resources.path().join("r.json");
    std::fs::write(&file, r#"{"pids":{"limit":100}}"#).unwrap();
    let out = root.cmd(&["update", "-r", file.to_str().unwrap(), "cg"]);
    assert_eq!(code(&out), 0, "update -r: {}", stderr(&out));
    let out = sh_ok(&root, "cg", "cat /sys/fs/cgroup/pids.max");
    assert_eq!(out, "100\n");
    let out = root.cmd(&["update", "--cpuset-cpus", "0", "cg"]);
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("--cpuset-cpus"), "{}", stderr(&out));
    std::fs::write(&file, r#"{"blockIO":{"weight":10}}"#).unwrap();
    let out = root.cmd(&["update", "-r", file.to_str().unwrap(), "cg"]);
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("blockIO"), "{}", stderr(&out));

    // A SIGKILLed monitor: its cgroup goes all the same.
    // SAFETY: kill(2) on the monitor, a child of this test (a subreaper).
    unsafe { libc::kill(monitor, libc::SIGKILL) };
    assert_eq!(reap(monitor, Duration::from_secs(30)), 137);
    wait_for("the cgroup to be removed", Duration::from_secs(10), || {
        cgroup_dirs(&cg).is_empty().then_some(())
    });
    assert_eq!(code(&root.cmd(&["delete", "cg"])), 0);
    root.assert_clean(Duration::from_secs(5));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test control`"]
fn a_cgroup_is_removed_at_delete() {
    let root = StateRoot::new();
    let cg = format!("/runvm-control-test-d{}", std::process::id());
    let bundle = bundle_with_linux(&["sleep", "7777"], serde_json::json!({ "cgroupsPath": cg }));
    let (out, pid) = root.create(&bundle, "del");
    assert_eq!(code(&out), 0, "create: {}", stderr(&out));
    assert!(!cgroup_dirs(&cg).is_empty(), "create makes the cgroup");
    let out = root.cmd(&["delete", "--force", "del"]);
    assert_eq!(code(&out), 0, "delete: {}", stderr(&out));
    reap(pid.unwrap(), Duration::from_secs(30));
    assert!(
        cgroup_dirs(&cg).is_empty(),
        "left behind: {:?}",
        cgroup_dirs(&cg)
    );
    root.assert_clean(Duration::from_secs(5));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test control`"]
fn events_streams_an_oom_kill_as_it_happens() {
    let root = StateRoot::new();
    // runc's events.bats: a 32 MiB limit without swap, and an exec'd process that
    // allocates more.
    let bundle = bundle_with_linux(
        &["sleep", "7777"],
        serde_json::json!({
            "resources": { "memory": { "limit": 32 << 20, "swap": 32 << 20 } },
        }),
    );
    let monitor = root.running(&bundle, "oom");
    // A long interval between stats: the oom event must not wait for it.
    let mut events = root
        .command(&["events", "--interval", "60s", "oom"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Lines::new(events.stdout.take().unwrap());
    lines.wait_for("a first stats event", Duration::from_secs(30), |l| {
        l.contains(r#""type":"stats""#)
    });
    let (c, _, _) = sh(&root, "oom", "dd if=/dev/zero of=/dev/null bs=80M count=1");
    assert_eq!(c, Some(137), "the allocation must be OOM-killed");
    // Long before the next stats event is due.
    lines.wait_for("the oom event", Duration::from_secs(15), |l| {
        l == r#"{"type":"oom","id":"oom"}"#
    });
    assert_eq!(code(&root.cmd(&["kill", "oom", "KILL"])), 0);
    assert_eq!(reap(monitor, Duration::from_secs(60)), 137);
    let out = wait_with_timeout(events, Duration::from_secs(30));
    assert_eq!(code(&out), 0, "events: {}", stderr(&out));
    assert_eq!(code(&root.cmd(&["delete", "oom"])), 0);
    root.assert_clean(Duration::from_secs(5));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test control`"]
fn a_small_cpu_quota_without_period_starts_and_holds_on_the_host() {
    let root = StateRoot::new();
    let cg = format!("/runvm-control-test-q{}", std::process::id());
    // update.bats: 5 % of a CPU, runc's default period of 100 ms.
    let bundle = bundle_with_linux(
        &["sleep", "7777"],
        serde_json::json!({ "cgroupsPath": cg, "resources": { "cpu": { "quota": 5000 } } }),
    );
    let monitor = root.running(&bundle, "quota");
    let host = cgroup_dirs(&cg)
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join("cpu.max")).ok())
        .expect("the host cgroup has cpu.max");
    assert_eq!(
        host.trim(),
        "5000 100000",
        "the VM's quota once the process runs"
    );
    assert_eq!(code(&root.cmd(&["kill", "quota", "KILL"])), 0);
    assert_eq!(reap(monitor, Duration::from_secs(60)), 137);
    assert_eq!(code(&root.cmd(&["delete", "quota"])), 0);
    root.assert_clean(Duration::from_secs(5));
}

/// `linux.resources.devices` as runc's deny-all rule list, with `/dev/kmsg` made as a node.
fn kmsg_bundle(args: &[&str], rules: serde_json::Value) -> Bundle {
    bundle_with_linux(
        args,
        serde_json::json!({
            "devices": [ { "path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11 } ],
            "resources": { "devices": rules },
        }),
    )
}

/// Runs `sh -c script` in the container, asserting it fails with EPERM.
#[track_caller]
fn sh_eperm(root: &StateRoot, id: &str, script: &str) {
    let (c, out, err) = sh(root, id, script);
    assert!(
        c != Some(0) && err.contains("Operation not permitted"),
        "{script:?} must fail with EPERM: code {c:?} stdout {out:?} stderr {err:?}"
    );
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test control`"]
fn device_rules_deny_kmsg_in_main_and_exec_through_updates_and_keep_the_standard_nodes() {
    let root = StateRoot::new();
    // runc's "update devices [minimal transition rules]": the main process reads
    // /dev/kmsg in a loop; nothing it reads may ever come through, updates or not.
    let bundle = kmsg_bundle(
        &[
            "sh",
            "-c",
            "while true; do head -c 100 /dev/kmsg; echo . >/dev/null; sleep 0.05; done",
        ],
        serde_json::json!([{ "allow": false, "access": "rwm" }]),
    );
    let monitor = root.running(&bundle, "devd");

    // runc's "runc run/update [device cgroup deny]".
    sh_eperm(&root, "devd", "hostname | tee /dev/kmsg");
    sh_eperm(&root, "devd", "head -n 1 /dev/kmsg");
    // runc's own allowed devices stay allowed: the standard nodes, mknod of any node.
    let out = sh_ok(
        &root,
        "devd",
        "echo x >/dev/null && head -c 3 /dev/zero | wc -c && head -c 3 /dev/urandom | wc -c \
         && mknod /dev/sda b 8 0 && echo made",
    );
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["3", "3", "made"]
    );
    sh_eperm(&root, "devd", "head -c 1 /dev/sda");

    for _ in 0..30 {
        let out = root.cmd(&["update", "--pids-limit", "42", "devd"]);
        assert_eq!(code(&out), 0, "update: {}", stderr(&out));
    }
    sh_eperm(&root, "devd", "hostname | tee /dev/kmsg");
    sh_eperm(&root, "devd", "head -n 1 /dev/kmsg");
    // The loop ran all along (its reads failed with EPERM), and read nothing.
    let errors = std::fs::read_to_string(bundle.path().join("stderr")).unwrap_or_default();
    assert!(errors.contains("Operation not permitted"), "{errors}");
    assert_eq!(bundle.stdout(), "", "the main process read /dev/kmsg");

    // SAFETY: kill(2) on the monitor, a child of this test (a subreaper).
    unsafe { libc::kill(monitor, libc::SIGKILL) };
    reap(monitor, Duration::from_secs(30));
    assert_eq!(code(&root.cmd(&["delete", "--force", "devd"])), 0);
    root.assert_clean(Duration::from_secs(5));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test control`"]
fn docker_s_device_rules_with_an_allow_rule_open_kmsg_and_the_standard_nodes_only() {
    let root = StateRoot::new();
    // What dockerd sends (deny all, the standard nodes, ptys, fuse denied), and
    // `--device-cgroup-rule 'c 1:11 rw'`.
    let mut rules = vec![serde_json::json!({ "allow": false, "access": "rwm" })];
    for (major, minor) in [(1, 5), (1, 3), (1, 9), (1, 8), (5, 0), (5, 1)] {
        rules.push(serde_json::json!({ "allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm" }));
    }
    rules.push(serde_json::json!({ "allow": false, "type": "c", "major": 10, "minor": 229, "access": "rwm" }));
    rules.push(serde_json::json!({ "allow": true, "type": "c", "major": 136, "access": "rwm" }));
    rules.push(
        serde_json::json!({ "allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm" }),
    );
    rules.push(
        serde_json::json!({ "allow": true, "type": "c", "major": 1, "minor": 11, "access": "rw" }),
    );
    let bundle = kmsg_bundle(&["sleep", "7777"], serde_json::Value::Array(rules));
    root.running(&bundle, "deva");

    let out = sh_ok(
        &root,
        "deva",
        "hostname | tee /dev/kmsg && head -n 1 /dev/kmsg",
    );
    assert!(
        out.starts_with("runvm-test\n") && out.lines().count() == 2,
        "{out:?}"
    );
    let out = sh_ok(
        &root,
        "deva",
        "echo x >/dev/null && head -c 3 /dev/zero | wc -c && head -c 3 /dev/random | wc -c \
         && head -c 1 /dev/full | wc -c",
    );
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["3", "3", "1"]);
    // Docker's own example: the node can be made, not opened.
    sh_eperm(&root, "deva", "mknod /dev/sda b 8 0 && head -c 1 /dev/sda");
    sh_eperm(
        &root,
        "deva",
        "mknod /dev/fuse c 10 229 && head -c 1 /dev/fuse",
    );

    assert_eq!(code(&root.cmd(&["delete", "--force", "deva"])), 0);
    root.assert_clean(Duration::from_secs(10));
}
