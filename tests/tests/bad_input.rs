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
