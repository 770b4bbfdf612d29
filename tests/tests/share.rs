//! Live host sharing (issue 13): a container's root filesystem and its bind mounts are the
//! host's own files, served to the guest over virtio-fs while it runs. What the container
//! writes is on the host at once and what the host writes is seen in the container; `ro`
//! (a bind's, and `root.readonly`) holds whatever the guest does; `rbind` takes the
//! mounts under its source and `bind` does not; in a user namespace the container's
//! files carry the ids its map gives them; the share reads ahead 1 MiB (one FUSE
//! request) at a time; a bind-mounted host UNIX socket is
//! reached from the container; and whatever way a container ends, no virtiofsd, no
//! process and no mount of it is left on the host. Run with `cargo xtask guest-test share`.

use std::io::{Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use runvm_tests::socket_client;
use runvm_tests::*;
use serde_json::{json, Value};

/// How long an event in a booting, emulated guest may take.
const EVENT: Duration = Duration::from_secs(120);

/// Docker's default capabilities and `CAP_SYS_ADMIN` (for a container that remounts), in
/// every set that bounds what the container and its virtiofsd may do.
fn capabilities() -> Value {
    let mut caps = runvm_tests::DOCKER_CAPS.to_vec();
    caps.push("CAP_SYS_ADMIN");
    json!({ "bounding": caps, "effective": caps, "permitted": caps })
}

/// A bind mount of host `source` on `dest` with OCI `options`.
fn bind(dest: &str, source: &Path, options: &[&str]) -> Value {
    json!({ "destination": dest, "type": "bind", "source": source, "options": options })
}

/// A bundle running `sh -c script` as root with [`capabilities`] on its own copy of the
/// busybox tree (`rootfs/` in the bundle), with `/proc`, a tmpfs `/dev` and `binds`.
fn bundle(script: &str, readonly: bool, binds: Vec<Value>) -> Bundle {
    bundle_args(&["sh", "-c", script], readonly, binds)
}

fn bundle_args(args: &[&str], readonly: bool, binds: Vec<Value>) -> Bundle {
    let b = Bundle::with(args, "/", &[]);
    b.edit_config(|v| {
        v["root"]["readonly"] = readonly.into();
        v["process"]["capabilities"] = capabilities();
        let mut mounts = vec![
            json!({ "destination": "/proc", "type": "proc", "source": "proc" }),
            json!({ "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                    "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] }),
        ];
        mounts.extend(binds);
        v["mounts"] = mounts.into();
    });
    b
}

fn rootfs(b: &Bundle) -> PathBuf {
    b.path().join("rootfs")
}

/// What a container created with [`StateRoot::create`] wrote to its stderr.
fn container_stderr(b: &Bundle) -> String {
    std::fs::read_to_string(b.path().join("stderr")).unwrap_or_default()
}

/// Writes `content` to `path` whole (a new file renamed into place): a reader never sees
/// it half-written.
fn write_atomically(path: &Path, content: &str) {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Mount points in this process's mount table at or under any of `dirs`.
fn host_mounts_under(dirs: &[&Path]) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| dirs.iter().any(|d| Path::new(m).starts_with(d)))
        .map(str::to_string)
        .collect()
}

/// The virtiofsd processes serving containers of `root` (their command line names their
/// share directory, in the root): two per container, as virtiofsd's namespace sandbox
/// runs in a child of its own.
fn virtiofsd_of(root: &StateRoot) -> Vec<String> {
    root.processes()
        .into_iter()
        .filter(|p| {
            let pid = p.split(':').next().unwrap_or_default();
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "virtiofsd")
        })
        .collect()
}

/// A tmpfs mounted at `at` on the host for the length of a test.
struct HostTmpfs {
    at: PathBuf,
}

impl HostTmpfs {
    fn mount(at: &Path) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "runvm-test-submount"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount -t tmpfs on {} failed", at.display());
        Self {
            at: at.to_path_buf(),
        }
    }
}

impl Drop for HostTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
    }
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn the_root_filesystem_is_live_both_ways_while_the_container_runs() {
    let root = StateRoot::new();
    let b = bundle(
        "echo guest-wrote > /from-guest && mkdir /guest-dir && echo nested > /guest-dir/f && \
         rm /etc/hostname && echo ready; \
         until [ -e /from-host ]; do sleep 0.1; done; cat /from-host; \
         until [ ! -e /bin/removed-by-host ]; do sleep 0.1; done; echo gone-in-guest",
        false,
        vec![],
    );
    let r = rootfs(&b);
    std::fs::write(r.join("bin/removed-by-host"), "x").unwrap();
    let pid = root.running(&b, "live");

    // The container's writes, on the host while it waits for the host's.
    wait_for_text(&r.join("from-guest"), "guest-wrote\n", EVENT);
    b.wait_for_stdout("ready\n", EVENT);
    assert_eq!(
        std::fs::read_to_string(r.join("guest-dir/f")).unwrap(),
        "nested\n"
    );
    assert!(
        !r.join("etc/hostname").exists(),
        "a file the container removed is gone on the host"
    );
    assert_eq!(root.status("live"), "running");

    // The host's writes, in the container.
    write_atomically(&r.join("from-host"), "host-wrote\n");
    b.wait_for_stdout("host-wrote\n", EVENT);
    std::fs::remove_file(r.join("bin/removed-by-host")).unwrap();
    b.wait_for_stdout("gone-in-guest\n", EVENT);

    assert_eq!(reap(pid, EVENT), 0, "stderr: {}", container_stderr(&b));
    assert_eq!(code(&root.cmd(&["delete", "live"])), 0);
    root.assert_clean(Duration::from_secs(5));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn a_read_only_root_refuses_writes_even_remounted_and_its_binds_stay_writable() {
    let root = StateRoot::new();
    let data = TempDir::new("data");
    // The guest remounts its root read-write (its own mount's flag): the host still
    // refuses, so the write fails all the same.
    let b = bundle(
        "touch /before 2>&1; \
         mount -o remount,bind,rw / && echo \"root mount: $(awk '$5 == \"/\" { print $6 }' /proc/self/mountinfo)\"; \
         touch /after 2>&1; mkdir /dir 2>&1; \
         echo data > /data/written && echo data-written",
        true,
        vec![bind("/data", data.path(), &["rbind", "rprivate"])],
    );
    let out = root.run(&b, "ro", b"");
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(code(&out), 0, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.contains(&"touch: /before: Read-only file system"),
        "{text}"
    );
    let remounted = lines
        .iter()
        .find(|l| l.starts_with("root mount: "))
        .unwrap_or_else(|| panic!("the guest could not remount its root: {text}"));
    assert!(
        remounted.starts_with("root mount: rw"),
        "the guest's own root mount is read-write after the remount: {text}"
    );
    assert!(
        lines.contains(&"touch: /after: Read-only file system"),
        "the host refuses the write: {text}"
    );
    assert!(
        lines.contains(&"mkdir: can't create directory '/dir': Read-only file system"),
        "{text}"
    );
    assert!(lines.contains(&"data-written"), "{text}");
    let r = rootfs(&b);
    for p in ["before", "after", "dir"] {
        assert!(
            !r.join(p).exists(),
            "/{p} was written to the read-only root"
        );
    }
    assert_eq!(
        std::fs::read_to_string(data.path().join("written")).unwrap(),
        "data\n",
        "a bind in a read-only root is writable"
    );
    root.assert_clean(Duration::from_secs(5));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn directory_and_file_binds_are_live_both_ways_and_ro_is_enforced_by_the_host() {
    let root = StateRoot::new();
    let host = TempDir::new("binds");
    let data = host.path().join("data");
    let ro = host.path().join("ro");
    let numbers = host.path().join("numbers");
    std::fs::create_dir(&data).unwrap();
    std::fs::create_dir(&ro).unwrap();
    std::fs::write(ro.join("present"), "ro-present\n").unwrap();
    std::fs::write(&numbers, "1\n").unwrap();
    let b = bundle(
        "cat /ro/present; touch /ro/x 2>&1; \
         mount -o remount,bind,rw /ro && echo \"ro mount: $(awk '$5 == \"/ro\" { print $6 }' /proc/self/mountinfo)\"; \
         touch /ro/y 2>&1; \
         echo from-container > /data/from-container; echo 2 >> /numbers; echo ready; \
         until [ -e /data/from-host ]; do sleep 0.1; done; cat /data/from-host; \
         until grep -q rewritten /numbers; do sleep 0.1; done; cat /numbers",
        false,
        vec![
            bind("/data", &data, &["rbind", "rprivate"]),
            bind("/ro", &ro, &["rbind", "rprivate", "ro"]),
            bind("/numbers", &numbers, &["rbind", "rprivate"]),
        ],
    );
    let numbers_ino = std::fs::metadata(&numbers).unwrap().ino();
    let pid = root.running(&b, "binds");

    // The container's writes, on the host while it runs.
    b.wait_for_stdout("ready\n", EVENT);
    assert_eq!(
        std::fs::read_to_string(data.join("from-container")).unwrap(),
        "from-container\n"
    );
    assert_eq!(
        std::fs::read_to_string(&numbers).unwrap(),
        "1\n2\n",
        "the container's append is in the host file"
    );
    assert_eq!(root.status("binds"), "running");

    // The host's writes, in the container: a new file in the directory, and the bound
    // file rewritten in place (the same inode, as an editor that truncates does).
    write_atomically(&data.join("from-host"), "from-host\n");
    b.wait_for_stdout("from-host\n", EVENT);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&numbers)
        .unwrap();
    f.set_len(0).unwrap();
    f.rewind().unwrap();
    f.write_all(b"rewritten\n").unwrap();
    drop(f);
    assert_eq!(std::fs::metadata(&numbers).unwrap().ino(), numbers_ino);
    assert_eq!(reap(pid, EVENT), 0, "{}", container_stderr(&b));

    let out = b.stdout();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "ro-present", "{out}");
    assert!(
        lines.contains(&"touch: /ro/x: Read-only file system"),
        "{out}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("ro mount: rw")),
        "the guest made its own /ro mount read-write: {out}"
    );
    assert!(
        lines.contains(&"touch: /ro/y: Read-only file system"),
        "the host refuses the write all the same: {out}"
    );
    assert_eq!(
        lines[lines.len() - 2..],
        ["from-host", "rewritten"],
        "{out}"
    );
    for p in ["x", "y"] {
        assert!(!ro.join(p).exists(), "/ro/{p} was written on the host");
    }
    assert_eq!(code(&root.cmd(&["delete", "binds"])), 0);
    root.assert_clean(Duration::from_secs(5));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn in_a_user_namespace_the_containers_files_carry_the_mapped_ids_on_the_host() {
    let root = StateRoot::new();
    let host = TempDir::new("userns");
    let vol = host.path().join("vol");
    let host_root = host.path().join("host-root");
    std::fs::create_dir(&vol).unwrap();
    std::fs::create_dir(&host_root).unwrap();
    std::fs::write(host_root.join("f"), "host\n").unwrap();
    let b = bundle(
        "cat /proc/self/uid_map /proc/self/gid_map; id -u; echo a > /made; \
         mkdir /vol/d && echo b > /vol/d/f && chown 1000:1000 /vol/d/f && echo chowned; \
         (echo x >> /host-root/f) 2>/dev/null || echo write-denied",
        false,
        vec![
            bind("/vol", &vol, &["rbind", "rprivate"]),
            bind("/host-root", &host_root, &["rbind", "rprivate"]),
        ],
    );
    let map = |host_id: u32| json!([{ "containerID": 0, "hostID": host_id, "size": 65536 }]);
    b.edit_config(|v| {
        v["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "type": "user" }));
        v["linux"]["uidMappings"] = map(100_000);
        v["linux"]["gidMappings"] = map(200_000);
    });
    // As Docker's userns-remap leaves an image and a volume: the container root's.
    for dir in [rootfs(&b), vol.clone()] {
        let st = Command::new("chown")
            .args(["-R", "100000:200000"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let pid = root.running(&b, "userns");
    assert_eq!(reap(pid, EVENT), 0, "{}", container_stderr(&b));
    let out = b.stdout();
    let lines: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        lines,
        [
            "0 100000 65536",
            "0 200000 65536",
            "0",
            "chowned",
            "write-denied"
        ],
        "{out}"
    );
    let owner = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner(&rootfs(&b).join("made")), (100_000, 200_000));
    assert_eq!(owner(&vol.join("d")), (100_000, 200_000));
    assert_eq!(owner(&vol.join("d/f")), (101_000, 201_000));
    // The mount points the guest's root made for the binds: the container root's too,
    // never the host's root.
    assert_eq!(owner(&rootfs(&b).join("host-root")), (100_000, 200_000));
    assert_eq!(
        std::fs::read_to_string(host_root.join("f")).unwrap(),
        "host\n"
    );
    assert_eq!(code(&root.cmd(&["delete", "userns"])), 0);
    root.assert_clean(Duration::from_secs(5));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn rbind_takes_the_mounts_under_the_source_and_bind_does_not() {
    let root = StateRoot::new();
    let src = TempDir::new("submounts");
    std::fs::write(src.path().join("top"), "top\n").unwrap();
    let sub = src.path().join("sub");
    let tmpfs = HostTmpfs::mount(&sub);
    std::fs::write(sub.join("in-tmpfs"), "in-tmpfs\n").unwrap();
    let b = bundle(
        "for d in /r /b; do echo \"$d: $(cat $d/top) [$(ls $d/sub)]\"; done",
        false,
        vec![
            bind("/r", src.path(), &["rbind", "rprivate"]),
            bind("/b", src.path(), &["bind", "rprivate"]),
        ],
    );
    let out = root.run(&b, "submounts", b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "/r: top [in-tmpfs]\n/b: top []\n",
        "rbind shows the tmpfs mounted under the source, bind the directory under it"
    );
    drop(tmpfs);
    root.assert_clean(Duration::from_secs(5));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn the_share_reads_ahead_a_whole_fuse_request() {
    // A cold sequential read is one FUSE round trip per read-ahead window: the share's
    // window is 1 MiB (what virtiofsd takes in one request), not the kernel's 128 KiB.
    // The root and the binds are submounts of the share, with its backing device info:
    // the only ones with major 0 in the guest (tmpfs, proc and sysfs have none listed).
    let root = StateRoot::new();
    let src = TempDir::new("readahead");
    let b = bundle(
        "ls /b >/dev/null && cat /sys/class/bdi/0:*/read_ahead_kb | sort -u",
        false,
        vec![
            json!({ "destination": "/sys", "type": "sysfs", "source": "sysfs",
                    "options": ["nosuid", "noexec", "nodev", "ro"] }),
            bind("/b", src.path(), &["rbind", "rw"]),
        ],
    );
    let out = root.run(&b, "readahead", b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "1024\n");
    root.assert_clean(Duration::from_secs(5));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn a_bind_mounted_host_socket_answers_a_client_in_the_container() {
    // In the container, this very test is the client (see `runvm_tests::socket_client`).
    if socket_client::run_if_asked() {
        return;
    }
    let root = StateRoot::new();
    let host = TempDir::new("socket");
    let sock = host.path().join("app.sock");
    let server = socket_client::Server::start(&sock);
    let b = bundle_args(
        &socket_client::argv(
            "/kit",
            &[
                "--ignored",
                "--exact",
                "--nocapture",
                "--test-threads=1",
                "a_bind_mounted_host_socket_answers_a_client_in_the_container",
            ],
        )
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
        false,
        vec![bind("/run/app.sock", &sock, &["rbind", "rprivate"])],
    );
    b.edit_config(|v| {
        let env = v["process"]["env"].as_array_mut().unwrap();
        env.push(format!("{}=/run/app.sock", socket_client::SOCKET_ENV).into());
        env.push(format!("{}=hello from the container", socket_client::REQUEST_ENV).into());
    });
    socket_client::install(&rootfs(&b).join("kit"));
    let out = root.run(&b, "socket", b"");
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(code(&out), 0, "{text}");
    assert_eq!(
        server.received(),
        ["hello from the container"],
        "the host server got the container's request: {text}"
    );
    // (After libtest's "test … ... " in the container.)
    assert!(
        text.contains("reply: host got: hello from the container\n"),
        "the container got the host's answer: {text}"
    );
    root.assert_clean(Duration::from_secs(5));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn a_missing_bind_source_fails_naming_it_and_leaves_nothing() {
    let root = StateRoot::new();
    let host = TempDir::new("missing");
    let missing = host.path().join("no-such-dir");
    let b = bundle(
        "true",
        false,
        vec![bind("/data", &missing, &["rbind", "rprivate"])],
    );
    let (out, pid) = root.create(&b, "missing");
    assert_ne!(code(&out), 0, "create with a missing bind source succeeded");
    let err = stderr(&out);
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("/data"),
        "the error names the source and the mount: {err}"
    );
    if let Some(pid) = pid {
        reap(pid, EVENT);
    }
    root.assert_clean(Duration::from_secs(5));
    assert_eq!(
        host_mounts_under(&[root.path(), b.path()]),
        Vec::<String>::new()
    );

    // A source that goes away between create and start (Docker and Podman make some
    // in between): start fails naming it, and delete leaves nothing.
    let gone = host.path().join("gone");
    std::fs::create_dir(&gone).unwrap();
    let b = bundle(
        "true",
        false,
        vec![bind("/data", &gone, &["rbind", "rprivate"])],
    );
    let (out, pid) = root.create(&b, "gone");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    std::fs::remove_dir(&gone).unwrap();
    let out = root.cmd(&["start", "gone"]);
    assert_ne!(code(&out), 0, "start with a vanished bind source succeeded");
    assert!(
        stderr(&out).contains(&gone.display().to_string()),
        "the error names the source: {}",
        stderr(&out)
    );
    assert_eq!(virtiofsd_of(&root), Vec::<String>::new());
    let out = root.cmd(&["delete", "--force", "gone"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    reap(pid.unwrap(), EVENT);
    root.assert_clean(Duration::from_secs(5));
    assert_eq!(
        host_mounts_under(&[root.path(), b.path()]),
        Vec::<String>::new()
    );
}

/// How a container is ended.
#[derive(Clone, Copy, Debug)]
enum End {
    /// Its process exits by itself.
    Exit,
    /// `runvm kill ID KILL`.
    Kill,
    /// `runvm delete --force ID` while it runs.
    DeleteForce,
    /// SIGKILL of the monitor process.
    MonitorKilled,
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn nothing_is_left_after_exit_kill_delete_force_or_a_killed_monitor() {
    let root = StateRoot::new();
    for end in [End::Exit, End::Kill, End::DeleteForce, End::MonitorKilled] {
        let host = TempDir::new("lifecycle");
        let data = host.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let sock = host.path().join("s.sock");
        let _server = socket_client::Server::start(&sock);
        let b = bundle(
            "echo ready; until [ -e /data/go ]; do sleep 0.1; done; echo bye",
            false,
            vec![
                bind("/data", &data, &["rbind", "rprivate"]),
                bind("/run/s.sock", &sock, &["rbind", "rprivate"]),
            ],
        );
        let id = format!("{end:?}").to_lowercase();
        let pid = root.running(&b, &id);
        b.wait_for_stdout("ready\n", EVENT);
        assert!(
            !virtiofsd_of(&root).is_empty(),
            "{end:?}: a virtiofsd serves the running container: {:?}",
            root.processes()
        );
        assert_eq!(
            host_mounts_under(&[root.path(), b.path(), host.path()]),
            Vec::<String>::new(),
            "{end:?}: the share is staged in virtiofsd's own mount namespace, not the host's"
        );
        match end {
            End::Exit => {
                std::fs::write(data.join("go"), "").unwrap();
                assert_eq!(reap(pid, EVENT), 0);
                b.wait_for_stdout("bye\n", EVENT);
            }
            End::Kill => {
                assert_eq!(code(&root.cmd(&["kill", &id, "KILL"])), 0);
                assert_eq!(reap(pid, EVENT), 137);
            }
            End::DeleteForce => {
                let out = root.cmd(&["delete", "--force", &id]);
                assert_eq!(code(&out), 0, "{}", stderr(&out));
                reap(pid, EVENT);
            }
            End::MonitorKilled => {
                // SAFETY: kill(2) of the monitor this test created.
                assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
                assert_eq!(reap(pid, EVENT), 137);
            }
        }
        // Gone with the container, before anything deletes it.
        wait_for(
            &format!("{end:?}: the container's virtiofsd to end"),
            Duration::from_secs(10),
            || virtiofsd_of(&root).is_empty().then_some(()),
        );
        if !matches!(end, End::DeleteForce) {
            let out = root.cmd(&["delete", &id]);
            assert_eq!(code(&out), 0, "{end:?}: {}", stderr(&out));
        }
        root.assert_clean(Duration::from_secs(5));
        assert_eq!(
            host_mounts_under(&[root.path(), b.path(), host.path()]),
            Vec::<String>::new(),
            "{end:?}"
        );
    }
}
