//! Podman acceptance tests (issue 5's items marked "podman too"): `podman --runtime
//! <runvm>` with its own storage root, driving runvm through conmon. After each test the
//! harness removes its containers and asserts that nothing is left (`tests/src/docker.rs`).
//!
//! Run: `cargo xtask guest-test podman [-- FILTER]`. `RUNVM_DOCKER_RUNTIME=runc` runs the
//! same tests against runc as a control.

use std::time::Duration;

use runvm_tests::docker::{self, Harness};
use runvm_tests::wait_for;

const TESTS: &[(&str, docker::TestFn)] = &[
    ("echo_and_exit_codes", echo_and_exit_codes),
    (
        "image_entrypoint_cmd_env_user_workdir",
        image_entrypoint_cmd_env_user_workdir,
    ),
    ("run_flags_env_user_workdir", run_flags_env_user_workdir),
    (
        "bind_mount_is_live_both_ways_while_running",
        bind_mount_is_live_both_ways_while_running,
    ),
    (
        "uidmap_gives_the_containers_files_the_mapped_ids",
        uidmap_gives_the_containers_files_the_mapped_ids,
    ),
];

fn main() {
    docker::main(docker::Engine::Podman, TESTS);
}

const ENTRY_IMAGE: &str = "FROM localhost/busybox
ENV GREETING=hello
WORKDIR /work
USER 1000:1000
ENTRYPOINT [\"/bin/sh\", \"-c\", \"echo \\\"$GREETING $0\\\" $(id -u):$(id -g) $(pwd)\"]
CMD [\"from-cmd\"]
";

fn echo_and_exit_codes(h: &mut Harness) {
    let bb = h.busybox();
    let p = h.cli().clone();
    p.run(&["--rm", bb, "echo", "hi"]).ok().prints("hi");
    p.run(&["--rm", bb, "sh", "-c", "exit 3"]).code_is(3);
    p.run(&["--name", "ec", bb, "sh", "-c", "exit 3"])
        .code_is(3);
    assert_eq!(p.inspect("ec", "{{.State.ExitCode}}"), "3");
    let out = p.run(&["--rm", bb, "sh", "-c", "echo out; echo err >&2"]);
    out.ok().prints("out");
    assert_eq!(out.stderr.trim(), "err");
}

fn image_entrypoint_cmd_env_user_workdir(h: &mut Harness) {
    let img = h.image("localhost/runvm-test-entry", ENTRY_IMAGE);
    let p = h.cli().clone();
    p.run(&["--rm", &img])
        .ok()
        .prints("hello from-cmd 1000:1000 /work");
    p.run(&["--rm", &img, "other-arg"])
        .ok()
        .prints("hello other-arg 1000:1000 /work");
    p.run(&["--rm", "-e", "GREETING=hi", &img])
        .ok()
        .prints("hi from-cmd 1000:1000 /work");
    p.run(&["--rm", "--user", "0:0", "-w", "/tmp", &img])
        .ok()
        .prints("hello from-cmd 0:0 /tmp");
    p.run(&["--rm", "--entrypoint", "echo", &img, "a", "b"])
        .ok()
        .prints("a b");
}

fn run_flags_env_user_workdir(h: &mut Harness) {
    let bb = h.busybox();
    let p = h.cli().clone();
    p.run(&["--rm", "-e", "A=1", bb, "sh", "-c", "echo $A"])
        .ok()
        .prints("1");
    p.run(&["--rm", "--user", "1000:1000", bb, "id", "-u"])
        .ok()
        .prints("1000");
    // (Podman itself refuses a `-w` directory missing from the image, whatever the
    // runtime: `workdir "/new/dir" does not exist on container …`.)
    p.run(&["--rm", "-w", "/tmp", bb, "pwd"])
        .ok()
        .prints("/tmp");
}

/// `-v /hostdir:/app` while the container runs: what it writes is on the host at once,
/// what the host writes is seen in it, and `:ro` refuses writes.
fn bind_mount_is_live_both_ways_while_running(h: &mut Harness) {
    let bb = h.busybox();
    let p = h.cli().clone();
    let app = h.tmp.join("app");
    let ro = h.tmp.join("ro");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("present"), "read-only\n").unwrap();
    p.run(&[
        "-d",
        "--name",
        "binds",
        "-v",
        &format!("{}:/app", app.display()),
        "-v",
        &format!("{}:/ro:ro", ro.display()),
        bb,
        "sleep",
        "600",
    ])
    .ok();
    p.cmd(&[
        "exec",
        "binds",
        "sh",
        "-c",
        "cat /ro/present && echo from-container > /app/from-container",
    ])
    .ok()
    .prints("read-only");
    assert_eq!(
        std::fs::read_to_string(app.join("from-container")).unwrap(),
        "from-container\n"
    );
    std::fs::write(app.join("from-host"), "from host\n").unwrap();
    // (virtio-fs keeps a guest's cached names and attributes for one second.)
    wait_for(
        "the host's file to show in the container",
        Duration::from_secs(10),
        || {
            let out = p.cmd(&["exec", "binds", "cat", "/app/from-host"]);
            (out.code == 0 && out.text() == "from host").then_some(())
        },
    );
    p.cmd(&["exec", "binds", "touch", "/ro/x"])
        .fails_with("Read-only file system");
    assert!(!ro.join("x").exists());
}

/// `--uidmap`/`--gidmap` (a user namespace): the container's root is the mapped id on the
/// host, in the main process and in `exec`, and in what it writes to a volume.
fn uidmap_gives_the_containers_files_the_mapped_ids(h: &mut Harness) {
    use std::os::unix::fs::MetadataExt;
    let bb = h.busybox();
    let p = h.cli().clone();
    let vol = h.tmp.join("userns-vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::os::unix::fs::chown(&vol, Some(100_000), Some(100_000)).unwrap();
    let map = |l: &str| l.split_whitespace().collect::<Vec<_>>().join(" ");
    let out = p.run(&[
        "-d",
        "--name",
        "userns",
        "--uidmap",
        "0:100000:65536",
        "--gidmap",
        "0:100000:65536",
        "-v",
        &format!("{}:/vol", vol.display()),
        bb,
        "sh",
        "-c",
        "touch /vol/from-main; sleep 600",
    ]);
    out.ok();
    let out = p.cmd(&[
        "exec",
        "userns",
        "sh",
        "-c",
        "cat /proc/1/uid_map /proc/self/gid_map; id -u; touch /vol/from-exec",
    ]);
    let lines: Vec<String> = out.ok().text().lines().map(map).collect();
    assert_eq!(lines, ["0 100000 65536", "0 100000 65536", "0"]);
    wait_for("the main process's file", Duration::from_secs(30), || {
        vol.join("from-main").exists().then_some(())
    });
    for f in ["from-main", "from-exec"] {
        let m = std::fs::metadata(vol.join(f)).unwrap();
        assert_eq!((m.uid(), m.gid()), (100_000, 100_000), "{f}");
    }
}
