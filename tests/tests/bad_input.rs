//! Bad input to `runvm run`: a clear error, a non-zero exit, and no state left behind.
//! These never boot a guest, but need the runvm binary (`cargo xtask test` sets RUNVM_BIN).

use std::time::Duration;

use runvm_tests::*;

fn refused(root: &StateRoot, bundle: &Bundle, id: &str, needle: &str) {
    let out = root.run(bundle, id, b"");
    assert_eq!(
        code(&out),
        1,
        "stdout: {} stderr: {}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(needle),
        "expected {needle:?} in stderr: {}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "");
    root.assert_clean(Duration::from_millis(500));
}

#[test]
#[ignore = "needs the runvm binary: run through `cargo xtask test`"]
fn malformed_config_json() {
    let root = StateRoot::new();
    refused(
        &root,
        &Bundle::from_config("{\"ociVersion\": "),
        "bad",
        "config.json",
    );
    refused(&root, &Bundle::from_config("[]"), "bad", "config.json");
}

#[test]
#[ignore = "needs the runvm binary: run through `cargo xtask test`"]
fn missing_config_and_missing_rootfs() {
    let root = StateRoot::new();
    let b = Bundle::from_config("{}");
    std::fs::remove_file(b.path().join("config.json")).unwrap();
    refused(&root, &b, "noconfig", "config.json");
    let cfg = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": { "args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0} },
        "root": { "path": "/nonexistent/rootfs" },
    });
    refused(
        &root,
        &Bundle::from_config(&cfg.to_string()),
        "norootfs",
        "/nonexistent/rootfs",
    );
}

#[test]
#[ignore = "needs the runvm binary: run through `cargo xtask test`"]
fn ids_that_could_escape_the_state_root() {
    let root = StateRoot::new();
    let b = Bundle::new(&["true"]);
    for id in ["a/b", "..", ".", "../escape", "x y"] {
        refused(&root, &b, id, "invalid container id");
    }
    refused(&root, &b, &"a".repeat(1025), "1025 bytes");
    assert!(!root.path().parent().unwrap().join("escape").exists());
}

#[test]
#[ignore = "needs the runvm binary: run through `cargo xtask test`"]
fn relative_cwd_and_empty_args() {
    let root = StateRoot::new();
    refused(
        &root,
        &Bundle::with(&["true"], "relative", &[]),
        "cwd",
        "absolute",
    );
    refused(&root, &Bundle::new(&[]), "noargs", "process.args");
}

#[test]
#[ignore = "needs the runvm binary: run through `cargo xtask test`"]
fn unknown_ids_and_bad_signals() {
    let root = StateRoot::new();
    for args in [
        &["state", "nope"][..],
        &["start", "nope"],
        &["kill", "nope", "KILL"],
        &["delete", "nope"],
    ] {
        let out = root.cmd(args);
        assert_eq!(code(&out), 1, "{args:?}");
        assert!(
            stderr(&out).contains("does not exist"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = root.cmd(&["kill", "nope", "SIGNOPE"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("invalid signal"), "{}", stderr(&out));
    let out = root.cmd(&["state", "../etc"]);
    assert!(
        stderr(&out).contains("invalid container id"),
        "{}",
        stderr(&out)
    );
    root.assert_clean(Duration::from_millis(100));
}

#[test]
#[ignore = "needs the runvm binary: run through `cargo xtask test`"]
fn unknown_keys_are_ignored_and_named_in_the_log() {
    // A config that parses gets as far as looking for the guest kernel: pointing
    // RUNVM_KERNEL at nothing stops it there, before any state is made.
    let root = StateRoot::new();
    let rootfs = test_rootfs();
    let cfg = |extra: serde_json::Value| {
        let mut c = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": { "args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0} },
            "root": { "path": rootfs },
            "annotations": { "io.kubernetes.cri.sandbox-id": "x", "any/key": "y" },
            "linux": {
                "sysctl": { "net.core.somaxconn": "64" },
                "namespaces": runvm_tests::default_namespaces(),
            },
        });
        if let (Some(c), serde_json::Value::Object(e)) = (c.as_object_mut(), extra) {
            c.extend(e);
        }
        Bundle::from_config(&c.to_string())
    };
    let logs = TempDir::new("log");
    let log = logs.path().join("runvm.log");
    let run = |bundle: &Bundle| {
        let mut c = root.command(&[
            "--log",
            log.to_str().unwrap(),
            "run",
            "--bundle",
            bundle.path().to_str().unwrap(),
            "open",
        ]);
        c.env("RUNVM_KERNEL", "/nonexistent/vmlinux")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        wait_with_timeout(c.spawn().unwrap(), Duration::from_secs(60))
    };
    // The open maps (annotations, sysctl) take any key without a word.
    let out = run(&cfg(serde_json::json!({})));
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("/nonexistent/vmlinux"),
        "{}",
        stderr(&out)
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("unknown key"), "{text}");
    // An unknown top-level key and one inside process: ignored (on to the kernel), and
    // one warning in the log names both.
    let out = run(&cfg(serde_json::json!({
        "hostName": "x",
        "process": { "args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "argz": ["y"] },
    })));
    assert!(
        stderr(&out).contains("/nonexistent/vmlinux"),
        "{}",
        stderr(&out)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("unknown key")).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(
        warnings[0].contains("level=warning")
            && warnings[0].contains("hostName")
            && warnings[0].contains("process.argz"),
        "{text}"
    );
    // A known key of the wrong type is still an error naming the key.
    let out = run(&cfg(serde_json::json!({ "hostname": 7 })));
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("hostname: invalid type"),
        "{}",
        stderr(&out)
    );
    root.assert_clean(Duration::from_millis(500));
}

#[test]
#[ignore = "needs the runvm binary: run through `cargo xtask test`"]
fn a_namespace_path_of_the_wrong_type_is_refused_naming_both() {
    let root = StateRoot::new();
    let rootfs = test_rootfs();
    let mut namespaces = runvm_tests::default_namespaces();
    for ns in namespaces.as_array_mut().unwrap() {
        if ns["type"] == "uts" {
            ns["path"] = "/proc/self/ns/cgroup".into();
        }
    }
    let bundle = Bundle::from_config(
        &serde_json::json!({
            "ociVersion": "1.0.2",
            "process": { "args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0} },
            "root": { "path": rootfs },
            "linux": { "namespaces": namespaces },
        })
        .to_string(),
    );
    let pid_file = root.path().join("pid");
    let out = root.cmd(&[
        "create",
        "--bundle",
        bundle.path().to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "wrongns",
    ]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains(
            "the uts namespace path /proc/self/ns/cgroup is a cgroup namespace, not a uts namespace"
        ),
        "{}",
        stderr(&out)
    );
    assert!(!pid_file.exists());
    root.assert_clean(Duration::from_millis(500));
}
