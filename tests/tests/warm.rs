//! Warm start (`RUNVM_BOOT=warm`): containers restored from one template are different
//! guests (boot id, random bytes) with the right clock, a template whose kernel changed is
//! made again, and a truncated template is refused for a cold boot and then remade.
//! Run with `cargo xtask test` (directly, or inside the nested test host).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use runvm_tests::*;

/// A warm start's own template directory and timings file.
struct Warm {
    templates: TempDir,
    timings: TempDir,
}

impl Warm {
    fn new() -> Self {
        Self {
            templates: TempDir::new("templates"),
            timings: TempDir::new("timings"),
        }
    }

    /// `runvm run` of `args` with warm start on; (output, how its VM came up).
    fn run(
        &self,
        root: &StateRoot,
        id: &str,
        args: &[&str],
        kernel: Option<&Path>,
    ) -> (std::process::Output, String) {
        self.run_bundle(root, id, &Bundle::new(args), kernel)
    }

    /// `runvm run` of `bundle` with warm start on; (output, how its VM came up).
    fn run_bundle(
        &self,
        root: &StateRoot,
        id: &str,
        bundle: &Bundle,
        kernel: Option<&Path>,
    ) -> (std::process::Output, String) {
        let timings = self.timings.path().join(id);
        let mut cmd: Command =
            root.command(&["run", "--bundle", bundle.path().to_str().unwrap(), id]);
        cmd.env("RUNVM_BOOT", "warm")
            .env("RUNVM_TEMPLATE_DIR", self.templates.path())
            .env("RUNVM_TIMINGS_FILE", &timings);
        if let Some(kernel) = kernel {
            cmd.env("RUNVM_KERNEL", kernel);
        }
        let out = run_with_input(cmd, b"", Duration::from_secs(300));
        let text = std::fs::read_to_string(&timings).unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        (out, json["boot"].as_str().unwrap_or("none").to_string())
    }

    /// The templates made so far (their directory names).
    fn templates(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.templates.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        names.sort();
        names
    }

    fn memory_file(&self, template: &str) -> PathBuf {
        self.templates.path().join(template).join("memory")
    }
}

/// What each clone prints: its boot id, 16 random bytes, its wall clock.
const REPORT: &str = "cat /proc/sys/kernel/random/boot_id; \
                      head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn clones_of_one_template_are_different_guests_with_the_right_clock() {
    let root = StateRoot::new();
    let warm = Warm::new();
    let mut reports = Vec::new();
    for id in ["clone-a", "clone-b", "clone-c"] {
        let before = now();
        let (out, boot) = warm.run(&root, id, &["sh", "-c", REPORT], None);
        let after = now();
        assert_eq!(code(&out), 0, "{id}: stderr: {}", stderr(&out));
        assert_eq!(boot, "warm", "{id} was not restored from the template");
        let text = stdout(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{id}: {text:?}");
        assert_eq!(lines[0].len(), 36, "{id}: boot id {:?}", lines[0]);
        assert_eq!(lines[1].len(), 32, "{id}: random bytes {:?}", lines[1]);
        let clock: i64 = lines[2].parse().unwrap();
        assert!(
            (before - 2..=after + 2).contains(&clock),
            "{id}: the guest's clock says {clock}, the host's was {before}..{after}"
        );
        reports.push((lines[0].to_string(), lines[1].to_string()));
    }
    assert_eq!(
        warm.templates().len(),
        1,
        "one template for the three: {:?}",
        warm.templates()
    );
    for (i, a) in reports.iter().enumerate() {
        for b in &reports[i + 1..] {
            assert_ne!(a.0, b.0, "two clones share a boot id");
            assert_ne!(a.1, b.1, "two clones read the same random bytes");
        }
    }
    root.assert_clean(Duration::from_secs(2));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn a_template_whose_kernel_changed_is_made_again() {
    let root = StateRoot::new();
    let warm = Warm::new();
    let dir = TempDir::new("kernel");
    let kernel = dir.path().join("vmlinux");
    std::fs::copy(std::env::var("RUNVM_KERNEL").unwrap(), &kernel).unwrap();

    let (out, boot) = warm.run(&root, "k1", &["echo", "one"], Some(&kernel));
    assert_eq!(
        (code(&out), stdout(&out).as_str(), boot.as_str()),
        (0, "one\n", "warm"),
        "{}",
        stderr(&out)
    );
    let first = warm.templates();
    assert_eq!(first.len(), 1);

    // The same kernel: the same template.
    let (out, boot) = warm.run(&root, "k2", &["echo", "two"], Some(&kernel));
    assert_eq!(
        (code(&out), stdout(&out).as_str(), boot.as_str()),
        (0, "two\n", "warm"),
        "{}",
        stderr(&out)
    );
    assert_eq!(warm.templates(), first);

    // A rebuilt kernel (here: a byte more at its end, which the loader ignores).
    std::thread::sleep(Duration::from_millis(20));
    let mut bytes = std::fs::read(&kernel).unwrap();
    bytes.push(0);
    std::fs::write(&kernel, bytes).unwrap();
    let (out, boot) = warm.run(&root, "k3", &["echo", "three"], Some(&kernel));
    assert_eq!(
        (code(&out), stdout(&out).as_str(), boot.as_str()),
        (0, "three\n", "warm"),
        "{}",
        stderr(&out)
    );
    let now = warm.templates();
    assert_eq!(
        now.len(),
        2,
        "a second template for the new kernel: {now:?}"
    );
    assert!(now.contains(&first[0]));
    root.assert_clean(Duration::from_secs(2));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn a_truncated_template_gives_a_cold_boot_and_is_made_again() {
    let root = StateRoot::new();
    let warm = Warm::new();
    let (out, boot) = warm.run(&root, "t1", &["echo", "made"], None);
    assert_eq!((code(&out), boot.as_str()), (0, "warm"), "{}", stderr(&out));
    let template = warm.templates().pop().unwrap();
    let memory = warm.memory_file(&template);
    let len = std::fs::metadata(&memory).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&memory)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let (out, boot) = warm.run(&root, "t2", &["echo", "still right"], None);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "still right\n");
    assert_eq!(boot, "cold", "a truncated template was restored");
    assert!(
        stderr(&out).contains("warm-start template"),
        "no warning: {}",
        stderr(&out)
    );
    assert!(
        warm.templates().is_empty(),
        "the truncated template is still there"
    );

    let (out, boot) = warm.run(&root, "t3", &["echo", "warm again"], None);
    assert_eq!(
        (code(&out), stdout(&out).as_str(), boot.as_str()),
        (0, "warm again\n", "warm"),
        "{}",
        stderr(&out)
    );
    assert_eq!(warm.templates().len(), 1);
    assert_eq!(
        std::fs::metadata(warm.memory_file(&warm.templates()[0]))
            .unwrap()
            .len(),
        len
    );
    root.assert_clean(Duration::from_secs(2));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn a_template_made_at_a_small_containers_start_is_not_charged_to_it() {
    // The template VM (booted in full, its VMM and RAM) would not fit in this container's
    // host cgroup: made there, it is killed and the container boots cold.
    let root = StateRoot::new();
    let warm = Warm::new();
    let bundle = Bundle::new(&["sh", "-c", "echo small"]);
    let cgroup = format!("/runvm-warm-test-{}", std::process::id());
    bundle.edit_config(|v| {
        v["linux"]["cgroupsPath"] = cgroup.clone().into();
        v["linux"]["resources"] = serde_json::json!({ "memory": { "limit": 32 << 20 } });
    });
    let (out, boot) = warm.run_bundle(&root, "small", &bundle, None);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "small\n");
    assert_eq!(boot, "warm", "the template was not made: {}", stderr(&out));
    assert_eq!(warm.templates().len(), 1);
    root.assert_clean(Duration::from_secs(2));
    // As runc's, a foreground run's cgroup is gone when it returns.
    let dir = Path::new("/sys/fs/cgroup").join(&cgroup[1..]);
    let left = dir.exists();
    let _ = std::fs::remove_dir(&dir);
    assert!(
        !left,
        "the foreground run left its cgroup {}",
        dir.display()
    );
}
