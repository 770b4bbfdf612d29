//! `cargo xtask soak [--cycles N] [--keep-going] [--check-every K]`: the leak soak (not in
//! CI). N times: `runvm create --pid-file` of a busybox bundle running a long `sleep`
//! (`runc spec`'s config: the container gets its own network namespace; every 4th cycle
//! also binds a host tmp dir, so virtiofsd serves a bind), `start`, wait until `state`
//! says running, then end it the hard way and `delete` it. How it ends varies: by default
//! the monitor (the pid in the pid file) gets SIGKILL straight from kill(2); every 3rd
//! cycle `runvm kill ID KILL`; every 5th `delete --force` while it runs.
//!
//! Before the first cycle it records what is there; after the last (and with
//! `--check-every K` every K cycles) it reports everything runvm left: processes named
//! runvm or virtiofsd, descriptors of this process, network links (TAPs), mounts, cgroups,
//! files in the state roots, `/run/runvm*`, `/tmp/runvm*` and `/dev/shm`, and network
//! namespaces in `/run/netns`. runvm keeps no cache or lock files of its own (its state
//! root is all it writes), so there is no other directory to watch. Prints one line per
//! cycle, then a summary, writes `target/runvm/soak.json`, and exits 1 on any failed cycle
//! or leftover.
//!
//! Where: on this host's KVM when it boots guests, else inside the nested test host. As
//! `bench cycle` does, the outer process re-runs this binary there with `--inside`, and
//! reads the report back from the target directory. This process is a child subreaper, as
//! containerd's shim is: every monitor becomes its child and is reaped here, and whatever
//! a killed monitor orphans is reparented here too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::guests::{GuestSetup, Place};
use crate::util::{percentile, target_dir};

#[derive(clap::Args)]
pub struct SoakArgs {
    /// How many create/start/kill/delete cycles.
    #[arg(long, default_value_t = 20)]
    cycles: usize,
    /// Go on after a failed cycle (by default the soak stops at the first one, then checks
    /// for leftovers).
    #[arg(long)]
    keep_going: bool,
    /// Also check for leftovers every K cycles (0: only after the last).
    #[arg(long, default_value_t = 0)]
    check_every: usize,
    #[arg(long, hide = true)]
    inside: bool,
    #[arg(long, hide = true)]
    out: Option<PathBuf>,
}

/// How long one runvm command, the wait for `running`, or the wait for the monitor's end
/// may take (the test host emulates its CPU: a boot takes seconds).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the processes of a deleted container may take to go away by themselves.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// What each container runs: long enough to be running whenever it is killed.
const WORKLOAD: [&str; 2] = ["sleep", "100000"];

pub fn cmd_soak(a: SoakArgs) -> Result<i32> {
    if a.inside {
        let out = a.out.clone().context("--inside needs --out")?;
        return inside(&a, &out);
    }
    let setup = GuestSetup::prepare()?;
    let place = setup.choose_place()?;
    let dir = target_dir().join("runvm");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join("soak.json");
    let _ = std::fs::remove_file(&out);
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let mut argv: Vec<String> = vec![
        exe.display().to_string(),
        "soak".into(),
        "--inside".into(),
        "--cycles".into(),
        a.cycles.to_string(),
        "--check-every".into(),
        a.check_every.to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    if a.keep_going {
        argv.push("--keep-going".into());
    }
    let code = setup.run_at(place, &argv, &[("CI".into(), "1".into())])?;
    let text = std::fs::read_to_string(&out).with_context(|| {
        format!(
            "the soak wrote no report to {} (it exited {code})",
            out.display()
        )
    })?;
    let mut report: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", out.display()))?;
    report["place"] = json!(match place {
        Place::Direct => "this host's KVM",
        Place::TestHost => "the nested test host (QEMU TCG)",
    });
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("{}", summary(&report));
    println!("report: {}", out.display());
    let clean = report["failures"].as_u64() == Some(0) && report["leftovers_found"] == json!(0);
    Ok(if code == 0 && clean { 0 } else { 1 })
}

/// How a cycle's container ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// SIGKILL of the monitor by kill(2), then `delete`.
    KillMonitor,
    /// `runvm kill ID KILL`, then `delete`.
    KillVerb,
    /// `delete --force` of the running container.
    ForceDelete,
}

impl Ending {
    /// Cycle `i` (from 1): every 5th `delete --force`, every other 3rd `kill KILL`.
    fn of_cycle(i: usize) -> Self {
        if i.is_multiple_of(5) {
            Ending::ForceDelete
        } else if i.is_multiple_of(3) {
            Ending::KillVerb
        } else {
            Ending::KillMonitor
        }
    }

    fn verbs(self) -> &'static str {
        match self {
            Ending::KillMonitor => "kill(2) SIGKILL of the monitor + delete",
            Ending::KillVerb => "runvm kill KILL + delete",
            Ending::ForceDelete => "delete --force (running)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Ending::KillMonitor => "kill-monitor",
            Ending::KillVerb => "kill-verb",
            Ending::ForceDelete => "delete-force",
        }
    }
}

/// Whether cycle `i` (from 1) binds a host directory into the container.
fn binds(i: usize) -> bool {
    i.is_multiple_of(4)
}

/// Where guests boot: runs the cycles and writes the report to `out`.
fn inside(a: &SoakArgs, out: &Path) -> Result<i32> {
    let runvm = PathBuf::from(std::env::var("RUNVM_BIN").context("RUNVM_BIN is not set")?);
    let rootfs =
        PathBuf::from(std::env::var("RUNVM_TEST_ROOTFS").context("RUNVM_TEST_ROOTFS is not set")?);
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!(
            "PR_SET_CHILD_SUBREAPER: {}",
            std::io::Error::last_os_error()
        );
    }
    crate::util::catch_interrupts();
    let me = std::process::id();
    let soak = Soak {
        runvm,
        rootfs,
        work: PathBuf::from(format!("/run/runvm-soak-{me}")),
        id_prefix: format!("soak{me}-"),
    };
    let _ = std::fs::remove_dir_all(&soak.work);
    std::fs::create_dir_all(&soak.work)
        .with_context(|| format!("creating {}", soak.work.display()))?;
    let baseline = Snapshot::take(&soak);

    let started = Instant::now();
    let mut cycles: Vec<Value> = Vec::new();
    let mut checks: Vec<Value> = Vec::new();
    let mut failures = 0;
    let mut leftovers_found = 0;
    for i in 1..=a.cycles {
        if crate::util::interrupted() != 0 {
            eprintln!("[soak] interrupted: stopping after {} cycles", i - 1);
            break;
        }
        let (ending, bind) = (Ending::of_cycle(i), binds(i));
        let t0 = Instant::now();
        let result = soak.cycle(i, ending, bind);
        let settled = soak.settle(&baseline);
        let seconds = t0.elapsed().as_secs_f64();
        let error = result.err().map(|e| format!("{e:#}"));
        println!(
            "cycle {i}/{}: {}{}: {seconds:.1} s{}",
            a.cycles,
            ending.verbs(),
            if bind { ", bind mount" } else { "" },
            match &error {
                None => String::new(),
                Some(e) => format!(": FAILED: {e}"),
            }
        );
        if !settled {
            println!(
                "cycle {i}/{}: runvm processes still there {} s after it",
                a.cycles,
                SETTLE_TIMEOUT.as_secs()
            );
        }
        failures += usize::from(error.is_some());
        cycles.push(json!({
            "cycle": i,
            "ending": ending.key(),
            "bind": bind,
            "seconds": seconds,
            "error": error,
        }));
        let last = i == a.cycles;
        if !last && a.check_every > 0 && i.is_multiple_of(a.check_every) {
            let left = Snapshot::take(&soak).left_over(&baseline);
            leftovers_found += print_leftovers(&format!("after cycle {i}"), &left);
            checks.push(json!({ "after_cycle": i, "leftovers": left }));
        }
        if error.is_some() && !a.keep_going {
            eprintln!("[soak] stopping at the first failed cycle (--keep-going goes on)");
            break;
        }
    }
    let done = cycles.len();
    let left = Snapshot::take(&soak).left_over(&baseline);
    leftovers_found += print_leftovers(&format!("after {done} cycles"), &left);
    checks.push(json!({ "after_cycle": done, "leftovers": left }));
    let _ = std::fs::remove_dir_all(&soak.work);

    let secs: Vec<f64> = cycles
        .iter()
        .filter_map(|c| c["seconds"].as_f64())
        .collect();
    let report = json!({
        "date": crate::util::now_utc(),
        "cycles": done,
        "cycles_asked": a.cycles,
        "failures": failures,
        "leftovers_found": leftovers_found,
        "leftovers": left,
        "seconds_per_cycle": { "p50": percentile(&secs, 0.5), "p95": percentile(&secs, 0.95) },
        "total_seconds": started.elapsed().as_secs_f64(),
        "checks": checks,
        "cycle_results": cycles,
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(i32::from(failures > 0 || leftovers_found > 0))
}

/// Prints what a check found; returns how many things.
fn print_leftovers(when: &str, left: &BTreeMap<&'static str, Vec<String>>) -> usize {
    let n: usize = left.values().map(Vec::len).sum();
    if n == 0 {
        println!("[soak] check {when}: nothing left");
    }
    for (kind, items) in left {
        for item in items {
            println!("[soak] check {when}: LEFT {kind}: {item}");
        }
    }
    n
}

/// The summary table (and each failure and leftover) of a report.
fn summary(r: &Value) -> String {
    let n = |v: &Value| v.as_array().map_or(0, Vec::len);
    let left = &r["leftovers"];
    let mut s = String::from("\nsoak summary");
    s.push_str(&format!(
        " ({}, {}):\n\n",
        r["place"].as_str().unwrap_or("?"),
        r["date"].as_str().unwrap_or("?")
    ));
    s.push_str("| cycles | failures |");
    for kind in KINDS {
        s.push_str(&format!(" {kind} |"));
    }
    s.push_str(" s/cycle p50 | s/cycle p95 |\n|---:|---:|");
    s.push_str(&"---:|".repeat(KINDS.len()));
    s.push_str("---:|---:|\n");
    s.push_str(&format!("| {} | {} |", r["cycles"], r["failures"]));
    for kind in KINDS {
        s.push_str(&format!(" {} |", n(&left[kind])));
    }
    s.push_str(&format!(
        " {:.1} | {:.1} |\n",
        r["seconds_per_cycle"]["p50"].as_f64().unwrap_or(f64::NAN),
        r["seconds_per_cycle"]["p95"].as_f64().unwrap_or(f64::NAN)
    ));
    for c in r["cycle_results"].as_array().into_iter().flatten() {
        if let Some(e) = c["error"].as_str() {
            s.push_str(&format!(
                "\nfailed: cycle {} ({}): {e}",
                c["cycle"], c["ending"]
            ));
        }
    }
    for check in r["checks"].as_array().into_iter().flatten() {
        for kind in KINDS {
            for item in check["leftovers"][kind].as_array().into_iter().flatten() {
                s.push_str(&format!(
                    "\nleft after cycle {}: {kind}: {}",
                    check["after_cycle"],
                    item.as_str().unwrap_or("?")
                ));
            }
        }
    }
    s
}

/// The kinds of leftover, in the order they are reported.
const KINDS: [&str; 7] = [
    "processes",
    "descriptors",
    "links",
    "mounts",
    "cgroups",
    "files",
    "netns",
];

/// What the cycles share.
struct Soak {
    runvm: PathBuf,
    rootfs: PathBuf,
    /// This run's bundles, state roots and command logs: `/run/runvm-soak-<pid>`.
    work: PathBuf,
    /// Every container id starts with it (and cgroups are found by it).
    id_prefix: String,
}

/// What a runvm command did.
struct Outcome {
    code: i32,
    /// Its stdout and stderr.
    output: String,
}

impl Soak {
    fn root(&self, i: usize) -> PathBuf {
        self.work.join(format!("root-{i}"))
    }

    fn bind_source(&self, i: usize) -> PathBuf {
        std::env::temp_dir().join(format!("runvm-soak-{}-bind-{i}", std::process::id()))
    }

    /// `runc spec`'s config running [`WORKLOAD`] from the busybox rootfs, with the host
    /// directory `bind` on `/data` when given.
    fn write_bundle(&self, dir: &Path, bind: Option<&Path>) -> Result<()> {
        let mut c = crate::util::runc_spec(dir)?;
        c["root"] = json!({ "path": self.rootfs, "readonly": true });
        c["process"]["args"] = json!(WORKLOAD);
        if let Some(source) = bind {
            c["mounts"]
                .as_array_mut()
                .context("runc spec wrote no mounts")?
                .push(json!({
                    "destination": "/data",
                    "type": "bind",
                    "source": source,
                    "options": ["rbind", "rw"],
                }));
        }
        let path = dir.join("config.json");
        std::fs::write(&path, serde_json::to_string_pretty(&c)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Runs `runvm --root ROOT ARGS…` to its end (at most [`STEP_TIMEOUT`]), its output in
    /// a file under the work directory (a container's monitor keeps the stdio `create` was
    /// given, so a pipe would see no EOF). While it runs, `monitor` is reaped if it ends
    /// (containerd reaps the container's pid while a `delete` waits for it to go).
    fn runvm(&self, root: &Path, args: &[&str], monitor: &mut Monitor) -> Result<Outcome> {
        let log_path = self.work.join("command.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new(&self.runvm);
        cmd.arg("--root")
            .arg(root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting runvm {}", args.join(" ")))?;
        drop(cmd);
        let deadline = Instant::now() + STEP_TIMEOUT;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            monitor.reap();
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "runvm {} did not end within {} s",
                    args.join(" "),
                    STEP_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = std::fs::read_to_string(&log_path).unwrap_or_default();
        let _ = std::fs::remove_file(&log_path);
        let code = status.code().unwrap_or_else(|| {
            128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
        });
        Ok(Outcome { code, output })
    }

    /// [`Self::runvm`], which must exit 0.
    fn runvm_ok(&self, root: &Path, args: &[&str], monitor: &mut Monitor) -> Result<()> {
        let o = self.runvm(root, args, monitor)?;
        if o.code != 0 {
            bail!(
                "runvm {} exited {}: {}",
                args.join(" "),
                o.code,
                o.output.trim()
            );
        }
        Ok(())
    }

    /// The container's status from `runvm state`, or `None` when runvm says it does not
    /// exist (any failure of `state` counts as that; its output is returned for errors).
    fn status(
        &self,
        root: &Path,
        id: &str,
        monitor: &mut Monitor,
    ) -> Result<(Option<String>, String)> {
        let o = self.runvm(root, &["state", id], monitor)?;
        if o.code != 0 {
            return Ok((None, o.output));
        }
        let v: Value = serde_json::from_str(o.output.trim())
            .with_context(|| format!("runvm state {id} printed no JSON: {}", o.output.trim()))?;
        Ok((v["status"].as_str().map(str::to_string), o.output))
    }

    /// One cycle: create, start, wait for running, end it as `ending` says, delete, and
    /// check that the container is gone from its state root. Whatever fails, the
    /// container is deleted with `--force` before this returns.
    fn cycle(&self, i: usize, ending: Ending, bind: bool) -> Result<()> {
        let id = format!("{}{i}", self.id_prefix);
        let root = self.root(i);
        let bundle = self.work.join(format!("bundle-{i}"));
        let source = bind.then(|| self.bind_source(i));
        if let Some(s) = &source {
            std::fs::create_dir_all(s).with_context(|| format!("creating {}", s.display()))?;
            std::fs::write(s.join("from-the-host"), "soak\n")?;
        }
        self.write_bundle(&bundle, source.as_deref())?;
        let mut monitor = Monitor::default();
        let result = self.drive(&root, &bundle, &id, ending, &mut monitor);
        if result.is_err() {
            // Best effort, so that one failure does not pile up in the next cycles.
            let _ = self.runvm(&root, &["delete", "--force", &id], &mut monitor);
            let _ = monitor.wait_dead();
        }
        let _ = std::fs::remove_dir_all(&bundle);
        if let Some(s) = &source {
            let _ = std::fs::remove_dir_all(s);
        }
        result
    }

    fn drive(
        &self,
        root: &Path,
        bundle: &Path,
        id: &str,
        ending: Ending,
        monitor: &mut Monitor,
    ) -> Result<()> {
        let pid_file = self.work.join(format!("{id}.pid"));
        let b = bundle.to_str().context("bundle path is not UTF-8")?;
        let p = pid_file.to_str().context("pid file path is not UTF-8")?;
        self.runvm_ok(
            root,
            &["create", "--bundle", b, "--pid-file", p, id],
            monitor,
        )?;
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {}", pid_file.display()))?
            .trim()
            .parse()
            .with_context(|| format!("{} holds no pid", pid_file.display()))?;
        let _ = std::fs::remove_file(&pid_file);
        *monitor = Monitor::new(pid);
        self.runvm_ok(root, &["start", id], monitor)?;
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let (status, output) = self.status(root, id, monitor)?;
            match status.as_deref() {
                Some("running") => break,
                Some("created") if Instant::now() < deadline => {}
                _ => bail!(
                    "after start, runvm state {id} says {:?}, not running: {}",
                    status,
                    output.trim()
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        match ending {
            Ending::KillMonitor => {
                // SAFETY: kill(2) with integer arguments; the pid is our child (we are
                // its subreaper) and not reaped yet, so it cannot have been reused.
                if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
                    bail!(
                        "kill -9 of the monitor {pid}: {}",
                        std::io::Error::last_os_error()
                    );
                }
                monitor.wait_dead()?;
            }
            Ending::KillVerb => {
                self.runvm_ok(root, &["kill", id, "KILL"], monitor)?;
                monitor.wait_dead()?;
            }
            Ending::ForceDelete => {
                self.runvm_ok(root, &["delete", "--force", id], monitor)?;
                monitor.wait_dead()?;
            }
        }
        if ending != Ending::ForceDelete {
            let delete = self.runvm(root, &["delete", id], monitor)?;
            let (status, _) = self.status(root, id, monitor)?;
            let mut error = None;
            if delete.code != 0 {
                error = Some(format!(
                    "runvm delete {id} exited {}: {}",
                    delete.code,
                    delete.output.trim()
                ));
            }
            if let Some(s) = status {
                error.get_or_insert_with(|| {
                    format!("after runvm delete {id} exited 0, state still says {s:?}")
                });
                self.runvm_ok(root, &["delete", "--force", id], monitor)?;
            }
            if let Some(e) = error {
                bail!(e);
            }
        } else if let (Some(s), _) = self.status(root, id, monitor)? {
            bail!("after runvm delete --force {id} exited 0, state still says {s:?}");
        }
        if root.join(id).exists() {
            bail!(
                "{} is still there after the delete",
                root.join(id).display()
            );
        }
        Ok(())
    }

    /// Reaps whatever reached this process (the subreaper) and waits until no runvm or
    /// virtiofsd process that was not there at the start remains (at most
    /// [`SETTLE_TIMEOUT`]). Returns whether that happened.
    fn settle(&self, baseline: &Snapshot) -> bool {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            reap_children();
            let now = runvm_processes(self);
            if now.keys().all(|k| baseline.processes.contains_key(k)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The container's monitor, once its pid is known: this process's child (as subreaper).
#[derive(Default)]
struct Monitor {
    pid: Option<i32>,
    reaped: bool,
}

impl Monitor {
    fn new(pid: i32) -> Self {
        Self {
            pid: Some(pid),
            reaped: false,
        }
    }

    /// Reaps the monitor if it has ended; returns whether it is gone.
    fn reap(&mut self) -> bool {
        let Some(pid) = self.pid else { return true };
        if self.reaped {
            return true;
        }
        let mut status = 0;
        // SAFETY: waitpid of one pid, with a status word that is ours.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            self.reaped = true;
        } else if r < 0 {
            // Not our child (a monitor that was not reparented here): gone when it has no
            // /proc entry or is a zombie.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit_once(") ").map(|(_, s)| s.chars().next());
            self.reaped = matches!(state, None | Some(Some('Z')));
        }
        self.reaped
    }

    /// Waits (at most [`STEP_TIMEOUT`]) for the monitor to end, and reaps it.
    fn wait_dead(&mut self) -> Result<()> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        while !self.reap() {
            if Instant::now() > deadline {
                bail!(
                    "the monitor {} did not end within {} s",
                    self.pid.unwrap_or(0),
                    STEP_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// Reaps every child of this process that has ended.
fn reap_children() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a status word that is ours.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r <= 0 {
            return;
        }
    }
}

/// One moment's record of everything a container could leave behind.
struct Snapshot {
    /// (pid, start time) → "pid N (comm, state S): cmdline".
    processes: BTreeMap<(u32, u64), String>,
    /// This process's descriptors: number → what it points at.
    descriptors: BTreeMap<String, String>,
    /// Network links of this namespace ("name" or "name (tun/tap)").
    links: BTreeSet<String>,
    /// Mounts of this mount namespace, by (mount point, type, source) → the line.
    mounts: BTreeMap<String, String>,
    cgroups: BTreeSet<String>,
    files: BTreeSet<String>,
    netns: BTreeSet<String>,
}

impl Snapshot {
    fn take(soak: &Soak) -> Self {
        Self {
            processes: runvm_processes(soak),
            descriptors: descriptors(),
            links: links(),
            mounts: mounts(),
            cgroups: cgroups(&soak.id_prefix),
            files: files(&soak.work),
            netns: names_in(Path::new("/run/netns")),
        }
    }

    /// What is here and was not in `baseline`, by kind ([`KINDS`]).
    fn left_over(&self, baseline: &Snapshot) -> BTreeMap<&'static str, Vec<String>> {
        fn new_values<K: Ord, V: Clone>(now: &BTreeMap<K, V>, then: &BTreeMap<K, V>) -> Vec<V> {
            now.iter()
                .filter(|(k, _)| !then.contains_key(k))
                .map(|(_, v)| v.clone())
                .collect()
        }
        fn new_items(now: &BTreeSet<String>, then: &BTreeSet<String>) -> Vec<String> {
            now.difference(then).cloned().collect()
        }
        let mut descriptors: Vec<String> = self
            .descriptors
            .iter()
            .filter(|(fd, target)| baseline.descriptors.get(*fd) != Some(target))
            .map(|(fd, target)| format!("fd {fd} -> {target}"))
            .collect();
        if self.descriptors.len() != baseline.descriptors.len() && descriptors.is_empty() {
            descriptors.push(format!(
                "{} descriptors open, {} at the start",
                self.descriptors.len(),
                baseline.descriptors.len()
            ));
        }
        BTreeMap::from([
            (
                "processes",
                new_values(&self.processes, &baseline.processes),
            ),
            ("descriptors", descriptors),
            ("links", new_items(&self.links, &baseline.links)),
            ("mounts", new_values(&self.mounts, &baseline.mounts)),
            ("cgroups", new_items(&self.cgroups, &baseline.cgroups)),
            ("files", new_items(&self.files, &baseline.files)),
            ("netns", new_items(&self.netns, &baseline.netns)),
        ])
    }
}

/// Processes whose name or command line mentions runvm or virtiofsd, other than this one,
/// that are ours: descendants of this process (where a killed monitor's orphans land, as
/// it is their subreaper) or naming this run's work directory (monitors and virtiofsd
/// carry their state root in their command lines). Other users' runvm processes on the
/// same host are not counted.
fn runvm_processes(soak: &Soak) -> BTreeMap<(u32, u64), String> {
    let me = std::process::id();
    let work = soak.work.display().to_string();
    struct Proc {
        ppid: u32,
        start: u64,
        state: char,
        comm: String,
        cmdline: String,
    }
    let mut all: BTreeMap<u32, Proc> = BTreeMap::new();
    for pid in std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // comm is between the first '(' and the last ')'; fields follow.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // fields[0] is the state (field 3), [1] the ppid (4), [19] the start time (22).
        let (Some(state), Some(ppid), Some(start)) = (
            fields.first().and_then(|s| s.chars().next()),
            fields.get(1).and_then(|s| s.parse().ok()),
            fields.get(19).and_then(|s| s.parse().ok()),
        ) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .replace('\0', " ")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        all.insert(
            pid,
            Proc {
                ppid,
                start,
                state,
                comm,
                cmdline,
            },
        );
    }
    let descends_from_me = |mut pid: u32| {
        for _ in 0..64 {
            match all.get(&pid) {
                Some(p) if p.ppid == me => return true,
                Some(p) if p.ppid > 1 => pid = p.ppid,
                _ => return false,
            }
        }
        false
    };
    all.iter()
        .filter(|(pid, p)| {
            **pid != me
                && [&p.comm, &p.cmdline]
                    .iter()
                    .any(|s| s.contains("runvm") || s.contains("virtiofsd"))
                && (descends_from_me(**pid) || p.cmdline.contains(&work))
        })
        .map(|(pid, p)| {
            (
                (*pid, p.start),
                format!("pid {pid} ({}, state {}): {}", p.comm, p.state, p.cmdline),
            )
        })
        .collect()
}

fn descriptors() -> BTreeMap<String, String> {
    std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "?".into());
            (e.file_name().to_string_lossy().into_owned(), target)
        })
        .collect()
}

/// This namespace's network links (what `ip -o link` lists), a TUN/TAP marked as such.
fn links() -> BTreeSet<String> {
    std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().join("tun_flags").exists() {
                format!("{name} (tun/tap)")
            } else {
                name
            }
        })
        .collect()
}

fn mounts() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let point = fields.get(4).copied().unwrap_or("?");
            let after = line.split(" - ").nth(1).unwrap_or("");
            let mut rest = after.split(' ');
            let (fstype, source) = (rest.next().unwrap_or("?"), rest.next().unwrap_or("?"));
            (format!("{point} {fstype} {source}"), line.to_string())
        })
        .collect()
}

/// Directories under `/sys/fs/cgroup` whose name mentions runvm or this run's ids.
fn cgroups(id_prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut todo = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains("runvm") || name.contains(id_prefix) {
                found.insert(e.path().display().to_string());
            }
            todo.push(e.path());
        }
    }
    found
}

/// Files runvm could leave: everything in this run's state roots (`work/root-*`), and
/// entries of `/run` and `/tmp` named `runvm*` (other than `work`), and of `/dev/shm`.
fn files(work: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for e in std::fs::read_dir(work).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with("root-") {
            walk(&e.path(), &mut found);
        }
    }
    for dir in ["/run", "/tmp"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with("runvm") && e.path() != work {
                found.insert(e.path().display().to_string());
            }
        }
    }
    found.extend(names_in(Path::new("/dev/shm")));
    found
}

/// Every path below `dir` (not `dir` itself).
fn walk(dir: &Path, found: &mut BTreeSet<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        found.insert(e.path().display().to_string());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&e.path(), found);
        }
    }
}

/// The paths of the entries of `dir` (none when it does not exist).
fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().display().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endings_and_binds_follow_the_cycle_number() {
        let endings: Vec<Ending> = (1..=15).map(Ending::of_cycle).collect();
        use Ending::*;
        assert_eq!(
            endings,
            [
                KillMonitor,
                KillMonitor,
                KillVerb,
                KillMonitor,
                ForceDelete,
                KillVerb,
                KillMonitor,
                KillMonitor,
                KillVerb,
                ForceDelete,
                KillMonitor,
                KillVerb,
                KillMonitor,
                KillMonitor,
                ForceDelete,
            ]
        );
        let bound: Vec<usize> = (1..=12).filter(|i| binds(*i)).collect();
        assert_eq!(bound, [4, 8, 12]);
    }

    #[test]
    fn only_what_is_new_is_left_over() {
        let empty = || Snapshot {
            processes: BTreeMap::new(),
            descriptors: BTreeMap::from([("0".into(), "/dev/null".into())]),
            links: BTreeSet::from(["lo".into()]),
            mounts: BTreeMap::new(),
            cgroups: BTreeSet::new(),
            files: BTreeSet::new(),
            netns: BTreeSet::new(),
        };
        let baseline = empty();
        let mut now = empty();
        assert!(now.left_over(&baseline).values().all(Vec::is_empty));
        now.links.insert("runvm-tap0 (tun/tap)".into());
        now.descriptors.insert("7".into(), "socket:[1]".into());
        now.processes
            .insert((42, 9), "pid 42 (virtiofsd, state S): virtiofsd".into());
        let left = now.left_over(&baseline);
        assert_eq!(left["links"], ["runvm-tap0 (tun/tap)"]);
        assert_eq!(left["descriptors"], ["fd 7 -> socket:[1]"]);
        assert_eq!(
            left["processes"],
            ["pid 42 (virtiofsd, state S): virtiofsd"]
        );
        assert!(left["mounts"].is_empty() && left["files"].is_empty());
        assert_eq!(left.len(), KINDS.len());
    }
}
