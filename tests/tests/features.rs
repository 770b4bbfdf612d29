//! `runvm features`: the runtime spec's features document, describing what runvm applies.
//! Needs the runvm binary only (`cargo xtask test` sets RUNVM_BIN), no guest.

use runvm_tests::*;

#[test]
#[ignore = "needs the runvm binary: run through `cargo xtask test`"]
fn features_prints_the_spec_document() {
    let root = StateRoot::new();
    let out = root.cmd(&["features"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(stderr(&out), "");
    let text = stdout(&out);
    assert!(
        text.starts_with("{\n  \"ociVersionMin\": \"1.0.0\",\n  \"ociVersionMax\": \"1.0.2\",\n"),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("features prints JSON");
    assert_eq!(
        v["hooks"],
        serde_json::json!([
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop"
        ])
    );
    let linux = &v["linux"];
    assert_eq!(
        linux["namespaces"],
        serde_json::json!(["cgroup", "ipc", "mount", "network", "pid", "user", "uts"]),
    );
    let caps = linux["capabilities"].as_array().unwrap();
    assert_eq!(caps.len(), 41);
    assert!(caps.contains(&"CAP_CHECKPOINT_RESTORE".into()));
    for opt in [
        "ro", "nosuid", "nodev", "noexec", "rbind", "rprivate", "relatime",
    ] {
        assert!(
            v["mountOptions"].as_array().unwrap().contains(&opt.into()),
            "{opt}"
        );
    }
    for off in ["apparmor", "selinux", "intelRdt"] {
        assert_eq!(linux[off]["enabled"], false, "{off}");
    }
    assert_eq!(linux["seccomp"]["enabled"], true);
    let actions = linux["seccomp"]["actions"].as_array().unwrap();
    assert!(actions.contains(&"SCMP_ACT_ERRNO".into()));
    assert!(!actions.contains(&"SCMP_ACT_NOTIFY".into()));
    assert_eq!(linux["cgroup"]["v1"], true);
    assert_eq!(linux["cgroup"]["v2"], true);
    assert_eq!(linux["cgroup"]["systemd"], false);
    // Nothing of a container is made.
    assert!(root.leftovers().is_empty());
}
