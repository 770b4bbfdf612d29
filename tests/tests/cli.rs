//! runvm's command line against runc's, side by side on this host: what `spec` writes,
//! what `-v` says, and the verbs' answers that need no container. Needs the runvm
//! binary (`cargo xtask test` sets RUNVM_BIN) and Debian's runc (`cargo xtask test`
//! installs it), no guest.

use std::path::Path;
use std::process::Command;

use runvm_tests::*;

/// `RUNTIME spec [extra…]` in a fresh directory; the bytes it wrote.
fn spec_of(runtime: &Path, extra: &[&str]) -> Vec<u8> {
    let dir = TempDir::new("spec");
    let out = Command::new(runtime)
        .arg("spec")
        .args(extra)
        .current_dir(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", runtime.display()));
    assert!(
        out.status.success(),
        "{} spec {extra:?}: {}",
        runtime.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(dir.path().join("config.json")).unwrap()
}

fn runc() -> std::path::PathBuf {
    let runc = Path::new("/usr/sbin/runc");
    assert!(
        runc.exists(),
        "this suite compares with Debian's runc: apt-get install runc"
    );
    runc.to_path_buf()
}

#[test]
#[ignore = "needs the runvm binary: run through `cargo xtask test`"]
fn spec_writes_byte_for_byte_what_runc_spec_writes() {
    for extra in [&[][..], &["--rootless"][..]] {
        let ours = spec_of(&runvm_bin(), extra);
        let theirs = spec_of(&runc(), extra);
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs),
            "spec {extra:?}"
        );
        let v: serde_json::Value = serde_json::from_slice(&ours).expect("spec writes JSON");
        assert_eq!(v["process"]["terminal"], true);
    }
    // --bundle writes there, and an existing config.json is never overwritten.
    let dir = TempDir::new("spec-bundle");
    let bundle = dir.path().to_str().unwrap();
    let run = |args: &[&str]| Command::new(runvm_bin()).args(args).output().unwrap();
    assert!(run(&["spec", "--bundle", bundle]).status.success());
    assert_eq!(
        std::fs::read(dir.path().join("config.json")).unwrap(),
        spec_of(&runc(), &[])
    );
    let again = run(&["spec", "-b", bundle]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("File config.json exists. Remove it first"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
#[ignore = "needs the runvm binary: run through `cargo xtask test`"]
fn version_prints_runcs_lines_with_runvms_values() {
    for flag in ["-v", "--version"] {
        let out = Command::new(runvm_bin()).arg(flag).output().unwrap();
        assert!(out.status.success(), "{flag}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{flag}: {text}");
        assert!(
            lines[0].starts_with("runvm version ")
                && lines[0]["runvm version ".len()..]
                    .split('.')
                    .all(|n| n.parse::<u32>().is_ok()),
            "{text}"
        );
        assert!(
            lines[1].starts_with("commit: ") && lines[1].len() > "commit: ".len(),
            "{text}"
        );
        assert_eq!(lines[2], "spec: 1.0.2", "{text}");
        assert!(lines[3].starts_with("rust: 1."), "{text}");
        // The libseccomp runvm is linked with, as runc prints it.
        let runc = Command::new(runc()).arg("--version").output().unwrap();
        let runc_seccomp = String::from_utf8_lossy(&runc.stdout)
            .lines()
            .find(|l| l.starts_with("libseccomp: "))
            .map(str::to_string);
        assert_eq!(Some(lines[4].to_string()), runc_seccomp, "{text}");
    }
}

#[test]
#[ignore = "needs the runvm binary: run through `cargo xtask test`"]
fn delete_force_of_a_missing_container_succeeds_as_under_runc() {
    let root = StateRoot::new();
    for runtime in [runvm_bin(), runc()] {
        let state = TempDir::new("state");
        let run = |args: &[&str]| {
            Command::new(&runtime)
                .arg("--root")
                .arg(state.path())
                .args(args)
                .output()
                .unwrap()
        };
        let out = run(&["delete", "--force", "no-such-container"]);
        assert_eq!(out.status.code(), Some(0), "{}: {out:?}", runtime.display());
        let out = run(&["delete", "no-such-container"]);
        assert_eq!(out.status.code(), Some(1), "{}: {out:?}", runtime.display());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("does not exist"),
            "{}: {out:?}",
            runtime.display()
        );
    }
    root.assert_clean(std::time::Duration::from_millis(100));
}

#[test]
#[ignore = "needs the runvm binary: run through `cargo xtask test`"]
fn help_is_laid_out_as_runcs_and_an_unknown_topic_is_runcs_error() {
    let run = |args: &[&str]| Command::new(runvm_bin()).args(args).output().unwrap();
    for args in [&["-h"][..], &["--help"], &[]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NAME:", "{args:?}: {text}");
        assert!(
            lines[1].starts_with("   runvm - Open Container Initiative runtime"),
            "{text}"
        );
    }
    // Every command runc documents answers -h with its NAME section (runc's commands,
    // checkpoint and restore included, which runvm refuses to run).
    for cmd in [
        "checkpoint",
        "create",
        "delete",
        "events",
        "exec",
        "kill",
        "list",
        "pause",
        "ps",
        "restore",
        "resume",
        "run",
        "spec",
        "start",
        "state",
        "update",
        "features",
    ] {
        let out = run(&[cmd, "-h"]);
        assert_eq!(out.status.code(), Some(0), "{cmd}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            text.lines()
                .nth(1)
                .map(|l| l.starts_with(&format!("   runvm {cmd} - "))),
            Some(true),
            "{cmd}: {text}"
        );
    }
    let out = run(&["foo", "-h"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No help topic for 'foo'"),
        "{out:?}"
    );
    // checkpoint is refused with the reason, not mistaken for another command.
    let out = run(&["checkpoint", "c1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CRIU"),
        "{out:?}"
    );
}

#[test]
#[ignore = "needs the runvm binary: run through `cargo xtask test`"]
fn debug_lines_go_to_stderr_or_the_log_as_runcs_do() {
    let state = TempDir::new("state");
    let root = state.path().to_str().unwrap();
    // Without --log: logrus lines on stderr.
    let out = Command::new(runvm_bin())
        .args(["--debug", "--root", root, "delete", "--force", "gone"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("level=debug"),
        "{out:?}"
    );
    // With --log, in the log (text or JSON), and not on stderr.
    for (format, needle) in [("text", "level=debug"), ("json", "\"level\":\"debug\"")] {
        let log = state.path().join(format!("log.{format}"));
        let out = Command::new(runvm_bin())
            .args([
                "--debug",
                "--log",
                log.to_str().unwrap(),
                "--log-format",
                format,
            ])
            .args(["--root", root, "delete", "--force", "gone"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("level=debug"),
            "{out:?}"
        );
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains(needle), "{format}: {text}");
    }
}
