//! The OCI process settings as a workload sees them in the guest: `linux.seccomp` (an
//! errno profile, Docker's default profile, the kill action, exec'd processes under the
//! container's filter), `HOME` from the container's `/etc/passwd`, `process.user.umask`,
//! and the other process and `linux` fields (rlimits, capabilities, no_new_privs, OOM
//! score, sysctls, masked and read-only paths, additional gids, `root.readonly`).
//! Run with `cargo xtask guest-test process`.

use std::time::Duration;

use runvm_tests::*;
use serde_json::{json, Value};

const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `runc spec`'s mounts, and a tmpfs on `/tmp` so that the read-only root stays as it is.
fn mounts() -> Value {
    json!([
        { "destination": "/proc", "type": "proc", "source": "proc" },
        { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
          "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
        { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
          "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] },
        { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
          "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
        { "destination": "/sys", "type": "sysfs", "source": "sysfs",
          "options": ["nosuid", "noexec", "nodev", "ro"] },
        { "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
          "options": ["nosuid", "nodev", "mode=1777"] },
    ])
}

/// A bundle on the shared busybox tree (read-only) running `script` with `sh -c`;
/// `process` and `linux` are merged over the defaults. The environment has no HOME.
fn bundle(script: &str, process: Value, linux: Value) -> Bundle {
    let rootfs = test_rootfs();
    let mut config = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": ["sh", "-c", script],
            "env": [PATH],
            "cwd": "/",
        },
        "root": { "path": rootfs, "readonly": true },
        "hostname": "process-test",
        "mounts": mounts(),
        "linux": { "namespaces": default_namespaces() },
    });
    merge(&mut config["process"], process);
    merge(&mut config["linux"], linux);
    Bundle::from_config(&config.to_string())
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// A profile that allows everything but `mkdir`, which fails with `action`.
fn deny_mkdir(action: &str) -> Value {
    json!({ "seccomp": {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [ { "names": ["mkdir", "mkdirat"], "action": action } ],
    }})
}

/// An OCI process JSON file for `runvm exec --process` (kept alive with its directory).
fn process(script: &str, user: Value) -> (TempDir, String) {
    process_file(&json!({
        "terminal": false,
        "user": user,
        "args": ["sh", "-c", script],
        "env": [PATH],
        "cwd": "/",
    }))
}

/// Runs `script` in the container until it prints something, for a file the main
/// process writes before it sleeps.
fn exec_until(root: &StateRoot, id: &str, script: &str) -> ExecResult {
    for _ in 0..60 {
        let r = root.exec_detached(id, &[], &["sh", "-c", script], b"");
        if !r.stdout.is_empty() {
            return r;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{script:?} printed nothing in the container");
}

fn stop(root: &StateRoot, id: &str, monitor: i32) {
    let out = root.cmd(&["kill", id, "KILL"]);
    assert_eq!(code(&out), 0, "kill: {}", stderr(&out));
    assert_eq!(reap(monitor, Duration::from_secs(60)), 137);
    let out = root.cmd(&["delete", id]);
    assert_eq!(code(&out), 0, "delete: {}", stderr(&out));
    root.assert_clean(Duration::from_secs(5));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn an_errno_profile_denies_mkdir_in_the_main_process_and_in_exec() {
    become_subreaper();
    let root = StateRoot::new();
    let b = bundle(
        "mkdir /tmp/x 2>/tmp/err; echo rc=$? >/tmp/rc; ls / >/dev/null && echo ls-ok >>/tmp/rc; sleep 7777",
        json!({}),
        deny_mkdir("SCMP_ACT_ERRNO"),
    );
    let monitor = root.running(&b, "secerr");
    let r = exec_until(&root, "secerr", "cat /tmp/rc /tmp/err 2>/dev/null");
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(
        r.stdout,
        "rc=1\nls-ok\nmkdir: can't create directory '/tmp/x': Operation not permitted\n"
    );
    // Both kinds of exec run under the container's filter: command-line args, and
    // `--process` (as containerd runs it), whose file has no seccomp of its own.
    let r = root.exec_detached(
        "secerr",
        &[],
        &[
            "sh",
            "-c",
            "mkdir /tmp/y; echo rc=$?; touch /tmp/z && echo touch-ok",
        ],
        b"",
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(r.stdout, "rc=1\ntouch-ok\n");
    assert!(r.stderr.contains("Operation not permitted"), "{r:?}");
    let (_dir, p) = process(
        "mkdir /tmp/y; echo rc=$?; grep Seccomp: /proc/self/status",
        json!({ "uid": 0, "gid": 0 }),
    );
    let r = root.exec_detached("secerr", &["--process", &p], &[], b"");
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(r.stdout, "rc=1\nSeccomp:\t2\n");
    stop(&root, "secerr", monitor);
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn docker_s_default_profile_runs_a_shell_and_denies_namespaces_and_mounts() {
    // The process keeps every capability (no `capabilities`), so what fails here is
    // refused by the filter, not by a missing capability.
    let profile: Value =
        serde_json::from_str(include_str!("../data/docker-default-seccomp.json")).unwrap();
    let script =
        "ls / >/dev/null && echo ls-ok; ps >/dev/null && echo ps-ok; echo $(echo sub)shell; \
        unshare -u true 2>&1; mount -t tmpfs none /tmp 2>&1; hostname other 2>&1; hostname; \
        grep Seccomp: /proc/self/status";
    let b = bundle(script, json!({}), json!({ "seccomp": profile }));
    let root = StateRoot::new();
    let out = root.run(&b, "secdocker", b"");
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8, "{text:?}");
    assert_eq!(lines[..3], ["ls-ok", "ps-ok", "subshell"], "{text:?}");
    assert_eq!(
        lines[3],
        "unshare: unshare(0x4000000): Operation not permitted"
    );
    // busybox words mount's EPERM as "permission denied (are you root?)".
    assert!(
        lines[4].starts_with("mount: ")
            && (lines[4].contains("permission denied") || lines[4].contains("not permitted")),
        "{text:?}"
    );
    assert_eq!(lines[5], "hostname: sethostname: Operation not permitted");
    assert_eq!(lines[6..], ["process-test", "Seccomp:\t2"]);
    root.assert_clean(Duration::from_secs(5));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn the_kill_action_kills_with_sigsys_159() {
    let b = bundle(
        "echo before; exec mkdir /tmp/x",
        json!({}),
        deny_mkdir("SCMP_ACT_KILL"),
    );
    let root = StateRoot::new();
    let out = root.run(&b, "seckill", b"");
    assert_eq!(code(&out), 128 + 31, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "before\n");
    root.assert_clean(Duration::from_secs(5));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn home_comes_from_passwd_and_umask_from_the_spec_for_main_and_exec() {
    become_subreaper();
    let root = StateRoot::new();
    // The main process: uid 0, umask 077.
    let b = bundle(
        "echo $HOME >/tmp/home; umask >>/tmp/home; chmod 644 /tmp/home; touch /tmp/f; sleep 7777",
        json!({ "user": { "uid": 0, "gid": 0, "umask": 0o077 } }),
        json!({}),
    );
    let monitor = root.running(&b, "home");
    let r = exec_until(&root, "home", "cat /tmp/home 2>/dev/null");
    assert_eq!(r.stdout, "/root\n0077\n");
    // An exec'd process as uid 1000, without HOME or umask: its passwd home, 0022.
    let (_d1, p) = process(
        "echo $HOME; umask; stat -c %a /tmp/f",
        json!({ "uid": 1000, "gid": 1000 }),
    );
    let r = root.exec_detached("home", &["--process", &p], &[], b"");
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(r.stdout, "/home/user\n0022\n600\n");
    // A uid without a passwd entry gets "/"; an exec's own umask is honoured.
    let (_d2, p) = process(
        "echo $HOME; umask; touch /tmp/g; stat -c %a /tmp/g",
        json!({ "uid": 4242, "gid": 4242, "umask": 0o027 }),
    );
    let r = root.exec_detached("home", &["--process", &p], &[], b"");
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(r.stdout, "/\n0027\n640\n");
    stop(&root, "home", monitor);
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn the_other_process_and_linux_fields_are_applied() {
    let script =
        "ulimit -n; ulimit -Hn; grep -E '^(CapEff|CapBnd|NoNewPrivs|Groups):' /proc/self/status; \
        cat /proc/self/oom_score_adj; cat /proc/sys/kernel/shmmni; \
        echo 1 >/proc/sys/kernel/shmmni 2>/dev/null || echo sysctl-ro; \
        touch /dev/shm/x 2>/dev/null || echo shm-ro; wc -c </proc/version; \
        awk '$2 == \"/\" { o = $4 } END { split(o, a, \",\"); print a[1] }' /proc/mounts; \
        touch /tmp/x && echo tmp-rw; id -u; id -g; ulimit -u";
    let b = bundle(
        script,
        json!({
            "user": { "uid": 1000, "gid": 1000, "additionalGids": [10, 20] },
            "rlimits": [ { "type": "RLIMIT_NOFILE", "soft": 321, "hard": 654 } ],
            "noNewPrivileges": true,
            "oomScoreAdj": 123,
            "capabilities": {
                "bounding": ["CAP_CHOWN", "CAP_KILL"],
                "effective": ["CAP_KILL"],
                "permitted": ["CAP_KILL"],
                "inheritable": ["CAP_KILL"],
                "ambient": ["CAP_KILL"],
            },
        }),
        json!({
            "sysctl": { "kernel.shmmni": "1234" },
            "maskedPaths": ["/proc/kcore", "/proc/version", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/dev/shm"],
        }),
    );
    // A limit the spec does not set is runvm's own, as a runc container inherits runc's
    // (not the guest kernel's default, which depends on the VM's memory).
    let mut nproc = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut nproc) };
    assert_eq!(rc, 0);
    let nproc = if nproc.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".to_string()
    } else {
        nproc.rlim_cur.to_string()
    };
    let root = StateRoot::new();
    let out = root.run(&b, "fields", b"");
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "321\n654\n\
         Groups:\t10 20 \n\
         CapEff:\t0000000000000020\n\
         CapBnd:\t0000000000000021\n\
         NoNewPrivs:\t1\n\
         123\n1234\nsysctl-ro\nshm-ro\n0\nro\ntmp-rw\n1000\n1000\n"
            .to_string()
            + &nproc
            + "\n",
        "stderr: {}",
        stderr(&out)
    );
    root.assert_clean(Duration::from_secs(5));
}
