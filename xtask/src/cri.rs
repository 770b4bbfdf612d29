//! `cargo xtask cri-crictl` and `cargo xtask cri-smoke`: Kubernetes pods through
//! containerd's CRI plugin, without cri-tools (which cannot be built here).
//!
//! Owns getting Kubernetes' CRI `api.proto` from Debian (the orig tarball of trixie's
//! `golang-github-kubernetes-cri-api` source package, fetched once through the same
//! `deb-src` entry as `cargo xtask oci` and cached under `~/.cache/runvm/cri-api/<version>/`),
//! building `runvm-crictl` (crate `cri-client`) with `RUNVM_CRI_PROTO` pointing at it, the
//! two images the smoke test imports (busybox, and a pause image: the same busybox layer
//! whose entrypoint sleeps until it is stopped) as docker archives made here, and the smoke
//! test itself: inside the nested test host, a private containerd with the CRI plugin (its
//! own root, state, socket and bridge CNI network under a temporary directory) runs one pod
//! of two containers under runvm's shim (`io.containerd.runvm.v2`: one VM for the pod,
//! which it checks) and then under runc's (`io.containerd.runc.v2`), every CRI call made
//! by `runvm-crictl`, then checks that nothing is left behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::util::{self, remove_dir_if_exists, Step};

const SRC_PACKAGE: &str = "golang-github-kubernetes-cri-api";
const SRC_VERSION: &str = "0.32.3-1";
/// The upstream version: the cache directory's name.
const CRI_API_VERSION: &str = "0.32.3";
const SRC_TARBALL: &str = "golang-github-kubernetes-cri-api_0.32.3.orig.tar.gz";
const SRC_SHA256: &str = "49143ee52bda0e6863145c3a91ced788f641b463b5a6bd10a8e786f1dd68f525";
/// Where `api.proto` is inside the tarball's top directory.
const PROTO_IN_SOURCE: &str = "pkg/apis/runtime/v1/api.proto";

/// The image names the smoke test imports (docker-archive `RepoTags`).
pub(crate) const BUSYBOX_IMAGE: &str = "localhost/runvm-cri-busybox:latest";
const PAUSE_IMAGE: &str = "localhost/runvm-cri-pause:latest";
/// The pause container's process: sleeps until SIGTERM or SIGINT, then exits 0.
const PAUSE_ENTRYPOINT: &[&str] = &[
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done",
];
/// The smoke pod's bridge network (unlikely to collide with Docker's or Podman's).
const POD_SUBNET: &str = "10.88.77.0/24";
const POD_SUBNET_PREFIX: &str = "10.88.77.";
const BRIDGE: &str = "runvmcri0";
const HTTP_PORT: u16 = 8080;
/// What the web container serves.
const PAGE: &str = "hello from a CRI pod";
/// Debian's containernetworking-plugins.
const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// Seconds every CRI call may take (the test host's CPU is emulated).
const CRI_TIMEOUT_SECS: u64 = 120;

/// `~/.cache/runvm/cri-api/<version>`.
fn cri_api_dir() -> PathBuf {
    util::cache_dir().join("cri-api").join(CRI_API_VERSION)
}

/// Kubernetes' CRI `api.proto`, fetched from Debian's archive first if it is not cached.
pub fn ensure_proto() -> Result<PathBuf> {
    let dir = cri_api_dir();
    let proto = dir.join("api.proto");
    if proto.is_file() && dir.join(SRC_TARBALL).is_file() {
        return Ok(proto);
    }
    if !util::is_root() {
        bail!("fetching the CRI api.proto needs root (apt-get source); run as root");
    }
    let mut step = Step::new("cri-api");
    let tmp = dir.with_extension("tmp");
    remove_dir_if_exists(&tmp)?;
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    step.phase("adding the trixie deb-src entry (as `cargo xtask oci`; nothing is installed)");
    crate::oci::add_trixie_deb_src()?;
    step.phase(&format!(
        "apt-get source --download-only --tar-only {SRC_PACKAGE}={SRC_VERSION}"
    ));
    let tarball =
        util::apt_source_tarball(&tmp, SRC_PACKAGE, SRC_VERSION, SRC_TARBALL, SRC_SHA256)?;
    step.phase(&format!("extracting {PROTO_IN_SOURCE}"));
    let unpack = tmp.join("unpack");
    std::fs::create_dir_all(&unpack)?;
    util::run_quiet(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&unpack)
            .arg("--wildcards")
            .arg(format!("*/{PROTO_IN_SOURCE}")),
    )
    .with_context(|| format!("extracting {PROTO_IN_SOURCE} from {}", tarball.display()))?;
    let top: Vec<PathBuf> = std::fs::read_dir(&unpack)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let [top] = top.as_slice() else {
        bail!("expected one top directory in {SRC_TARBALL}, found {top:?}");
    };
    std::fs::rename(top.join(PROTO_IN_SOURCE), tmp.join("api.proto"))
        .with_context(|| format!("moving {PROTO_IN_SOURCE} out of {}", top.display()))?;
    remove_dir_if_exists(&unpack)?;
    std::fs::write(
        tmp.join("SOURCE"),
        format!(
            "{SRC_PACKAGE} {SRC_VERSION} (Debian trixie source package)\n\
             {SRC_TARBALL} sha256 {SRC_SHA256}\napi.proto: {PROTO_IN_SOURCE}\n"
        ),
    )?;
    remove_dir_if_exists(&dir)?;
    std::fs::rename(&tmp, &dir)
        .with_context(|| format!("moving {} to {}", tmp.display(), dir.display()))?;
    step.finish(&format!("fetched the CRI api {CRI_API_VERSION}"), &dir);
    Ok(proto)
}

/// Builds `runvm-crictl` (debug profile: it is a test client) and returns its path.
pub fn build_crictl() -> Result<PathBuf> {
    let proto = ensure_proto()?;
    eprintln!(
        "[cri] building runvm-crictl (cargo build -p cri-client, RUNVM_CRI_PROTO={})",
        proto.display()
    );
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .args([
            "build",
            "--quiet",
            "-p",
            "cri-client",
            "--bin",
            "runvm-crictl",
        ])
        .env("RUNVM_CRI_PROTO", &proto);
    util::run(&mut cargo).context("building runvm-crictl")?;
    Ok(util::target_dir().join("debug").join("runvm-crictl"))
}

/// `cargo xtask cri-crictl`: builds runvm-crictl and prints its path.
pub fn cmd_cri_crictl() -> Result<i32> {
    println!("{}", build_crictl()?.display());
    Ok(0)
}

/// `cargo xtask cri-smoke` arguments.
#[derive(clap::Args, Debug, Default)]
pub struct CriSmokeArgs {
    /// Internal: run the smoke test here (inside the test host) with this runvm-crictl.
    #[arg(long, hide = true, value_name = "CRICTL")]
    inside: Option<PathBuf>,
    /// Internal: where the image archives are (with `--inside`).
    #[arg(long, hide = true, value_name = "DIR")]
    images: Option<PathBuf>,
    /// The runtime handlers to run the pod under, one after the other: `runvm`
    /// (containerd-shim-runvm-v2: one VM for the pod) and `runc` (runc's shim, the peer).
    #[arg(long = "handler", value_name = "HANDLER", value_parser = ["runvm", "runc"])]
    handlers: Vec<String>,
    /// Internal: the directory of runvm and containerd-shim-runvm-v2 (with `--inside`).
    #[arg(long, hide = true, value_name = "DIR")]
    runvm_dir: Option<PathBuf>,
}

/// `cargo xtask cri-smoke`.
pub fn cmd_cri_smoke(args: CriSmokeArgs) -> Result<i32> {
    let handlers = if args.handlers.is_empty() {
        vec!["runvm".to_string(), "runc".to_string()]
    } else {
        args.handlers.clone()
    };
    if let Some(crictl) = args.inside {
        let images = args
            .images
            .context("--inside needs --images (run `cargo xtask cri-smoke`)")?;
        let mut failed = Vec::new();
        for h in &handlers {
            if smoke_here(&crictl, &images, h, args.runvm_dir.as_deref())? != 0 {
                failed.push(h.clone());
            }
        }
        if !failed.is_empty() {
            eprintln!("[cri-smoke] FAILED under: {}", failed.join(", "));
            return Ok(1);
        }
        eprintln!("[cri-smoke] PASSED under: {}", handlers.join(", "));
        return Ok(0);
    }
    let crictl = build_crictl()?;
    let images = build_images()?;
    let mut argv = vec![
        std::env::current_exe()
            .context("cannot find the xtask binary")?
            .display()
            .to_string(),
        "cri-smoke".into(),
        "--inside".into(),
        crictl.display().to_string(),
        "--images".into(),
        images.display().to_string(),
    ];
    for h in &handlers {
        argv.extend(["--handler".to_string(), h.clone()]);
    }
    let mut installs = Vec::new();
    if handlers.iter().any(|h| h == "runvm") {
        // runvm (with its kernel, initramfs and virtiofsd beside it, as installed) and
        // its shim v2, which containerd finds on its PATH.
        let (inside, copies) = crate::guests::GuestSetup::prepare()?.in_testhost()?;
        let dir = inside
            .runvm
            .parent()
            .context("runvm's binary has no directory")?;
        argv.extend(["--runvm-dir".to_string(), dir.display().to_string()]);
        installs = copies;
    }
    eprintln!(
        "[cri] running the CRI smoke test inside the nested test host, under {}",
        handlers.join(" then ")
    );
    crate::testhost::run_in_testhost_installing(&argv, &[], &installs)
}

// The images: docker archives made here from the busybox root filesystem.

/// Builds `busybox.tar` and `pause.tar` (docker archives) in `target/runvm/cri-images/`.
pub(crate) fn build_images() -> Result<PathBuf> {
    let rootfs = crate::rootfs::busybox_rootfs()?;
    let dir = util::target_dir().join("runvm").join("cri-images");
    remove_dir_if_exists(&dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let layer = dir.join("layer.tar");
    util::run_quiet(
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "--sort=name"])
            .arg("--exclude=./.runvm-busybox-version")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&layer)
            .arg("."),
    )
    .with_context(|| format!("packing {} into a layer", rootfs.display()))?;
    let diff_id = util::sha256_file(&layer)?;
    let path_env = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    for (file, name, process) in [
        ("busybox.tar", BUSYBOX_IMAGE, json!({ "Cmd": ["sh"] })),
        (
            "pause.tar",
            PAUSE_IMAGE,
            json!({ "Entrypoint": PAUSE_ENTRYPOINT }),
        ),
    ] {
        let mut config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Env": [path_env] },
            "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
        });
        for (k, v) in process.as_object().into_iter().flatten() {
            config["config"][k] = v.clone();
        }
        write_docker_archive(&dir.join(file), &layer, &diff_id, &config, name)?;
    }
    std::fs::remove_file(&layer)?;
    eprintln!(
        "[cri] images {BUSYBOX_IMAGE} and {PAUSE_IMAGE} (docker archives from busybox-static): {}",
        dir.display()
    );
    Ok(dir)
}

/// Writes a one-layer docker archive (`docker save` format) of `layer` to `out`.
fn write_docker_archive(
    out: &Path,
    layer: &Path,
    diff_id: &str,
    config: &Value,
    name: &str,
) -> Result<()> {
    let stage = out.with_extension("stage");
    remove_dir_if_exists(&stage)?;
    std::fs::create_dir_all(stage.join(diff_id))?;
    let config_bytes = serde_json::to_vec(config)?;
    let config_file = format!("{}.json", sha256_hex(&config_bytes));
    std::fs::write(stage.join(&config_file), &config_bytes)?;
    std::fs::copy(layer, stage.join(diff_id).join("layer.tar"))
        .with_context(|| format!("copying the layer into {}", stage.display()))?;
    let manifest = json!([{
        "Config": config_file,
        "RepoTags": [name],
        "Layers": [format!("{diff_id}/layer.tar")],
    }]);
    std::fs::write(stage.join("manifest.json"), serde_json::to_vec(&manifest)?)?;
    util::run_quiet(
        Command::new("tar")
            .arg("-C")
            .arg(&stage)
            .arg("-cf")
            .arg(out)
            .args([
                "manifest.json",
                &config_file,
                &format!("{diff_id}/layer.tar"),
            ]),
    )
    .with_context(|| format!("writing the docker archive {}", out.display()))?;
    remove_dir_if_exists(&stage)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// The smoke test (inside the test host).

/// The private containerd's configuration: CRI plugin on, runc's shim as runtime
/// handler "runc" and runvm's as "runvm", the pause image as sandbox image, the bridge
/// network of `net_d`.
fn containerd_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"# Written by `cargo xtask cri-smoke` (runvm).
version = 2
root = "{d}/root"
state = "{d}/state"

[grpc]
  address = "{d}/containerd.sock"

[debug]
  level = "info"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # No apparmor_parser in the test host to load a default profile with.
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runvm]
      runtime_type = "io.containerd.runvm.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{d}/net.d"
    max_conf_num = 1
"#
    )
}

/// The bridge network every pod joins (host-local addresses kept under `dir`).
fn cni_config(dir: &Path) -> Value {
    json!({
        "cniVersion": "0.4.0",
        "name": "runvm-cri-smoke",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "dataDir": dir.join("ipam").display().to_string(),
                "ranges": [[{ "subnet": POD_SUBNET }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
            },
        }],
    })
}

/// What one run of runvm-crictl did.
pub(crate) struct Out {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Out {
    pub(crate) fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("runvm-crictl printed no JSON: {}", self.stdout.trim()))
    }
}

/// One smoke run: its directory, containerd, and the steps' results.
pub(crate) struct Smoke {
    /// What its lines start with (`cri-smoke`, `bench`).
    tag: &'static str,
    crictl: PathBuf,
    /// The CRI runtime handler the pod runs under (`runc`, `runvm`).
    handler: String,
    /// Where runvm and its shim are (on containerd's PATH).
    runvm_dir: Option<PathBuf>,
    dir: PathBuf,
    containerd: Option<Child>,
    passed: usize,
    failed: Vec<String>,
    start: Instant,
}

impl Smoke {
    /// A run in `dir` (which holds `net.d`, `ipam` and `pod-logs`), nothing started yet.
    pub(crate) fn new(
        tag: &'static str,
        crictl: &Path,
        handler: &str,
        runvm_dir: Option<&Path>,
        dir: &Path,
    ) -> Self {
        Smoke {
            tag,
            crictl: crictl.to_path_buf(),
            handler: handler.to_string(),
            runvm_dir: runvm_dir.map(Path::to_path_buf),
            dir: dir.to_path_buf(),
            containerd: None,
            passed: 0,
            failed: Vec::new(),
            start: Instant::now(),
        }
    }

    /// The names of the steps that failed.
    pub(crate) fn failed(&self) -> &[String] {
        &self.failed
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The containerd shims started by our containerd (pid, command line).
    pub(crate) fn shims(&self) -> Vec<(u32, String)> {
        processes_mentioning(&self.socket().display().to_string())
            .into_iter()
            .filter(|(_, c)| c.contains("containerd-shim"))
            .collect()
    }

    /// Runs runvm-crictl against our containerd.
    pub(crate) fn crictl(&self, args: &[&str]) -> Result<Out> {
        let o = Command::new(&self.crictl)
            .arg("--runtime-endpoint")
            .arg(format!("unix://{}", self.socket().display()))
            .arg("--timeout")
            .arg(CRI_TIMEOUT_SECS.to_string())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", self.crictl.display()))?;
        Ok(Out {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        })
    }

    /// Runs runvm-crictl and requires success.
    pub(crate) fn crictl_ok(&self, args: &[&str]) -> Result<Out> {
        let o = self.crictl(args)?;
        if o.code != Some(0) {
            bail!(
                "runvm-crictl {} failed ({:?}): {}",
                args.join(" "),
                o.code,
                o.stderr.trim()
            );
        }
        Ok(o)
    }

    /// Runs `ctr` against our containerd.
    pub(crate) fn ctr(&self, args: &[&str]) -> Result<String> {
        let o = Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("cannot run ctr (Debian's containerd)")?;
        if !o.status.success() {
            bail!(
                "ctr {} failed ({}): {}",
                args.join(" "),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Prints a step's result; a failure is kept for the summary and returned.
    pub(crate) fn step<T>(&mut self, name: &str, r: Result<(T, String)>) -> Result<T> {
        let t = util::fmt_duration(self.start.elapsed());
        match r {
            Ok((v, detail)) => {
                self.passed += 1;
                eprintln!("[{}] {t:>6} PASS {name}: {detail}", self.tag);
                Ok(v)
            }
            Err(e) => {
                eprintln!("[{}] {t:>6} FAIL {name}: {e:#}", self.tag);
                self.failed.push(name.to_string());
                Err(anyhow!("step {name:?} failed"))
            }
        }
    }

    pub(crate) fn write_json(&self, name: &str, v: &Value) -> Result<String> {
        let p = self.dir.join(name);
        std::fs::write(&p, serde_json::to_vec_pretty(v)?)
            .with_context(|| format!("writing {}", p.display()))?;
        Ok(p.display().to_string())
    }

    /// CreateContainer of `config` in `pod` (whose config is `pod_config`), added to
    /// `made` (for the clean-up, whatever happens next), then StartContainer: its id.
    pub(crate) fn create_and_start(
        &self,
        pod: &str,
        config: &str,
        pod_config: &str,
        made: &mut Vec<String>,
    ) -> Result<String> {
        let id = self
            .crictl_ok(&["create", pod, config, pod_config])?
            .stdout
            .trim()
            .to_string();
        made.push(id.clone());
        self.crictl_ok(&["start", &id])?;
        Ok(id)
    }

    /// Polls a container's status until `want` (a CRI state name) or the deadline.
    pub(crate) fn wait_state(&self, id: &str, want: &str, secs: u64) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.crictl_ok(&["inspect", id])?.json()?;
            if v["state"] == want {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!(
                    "container {id} is {} after {secs} s, expected {want}",
                    v["state"]
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// runvm's processes whose title (command line) starts with `prefix`: `runvm-vm ` for a
/// VM's monitor, `runvm-member ` for the monitor of a container in another's VM.
pub(crate) fn titled(prefix: &str) -> Vec<(u32, String)> {
    processes_mentioning(prefix)
        .into_iter()
        .filter(|(_, c)| c.starts_with(prefix))
        .collect()
}

/// Processes whose command line mentions `needle` (pid, command line).
pub(crate) fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(raw) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmd.contains(needle) {
                found.push((pid, cmd.trim().to_string()));
            }
        }
    }
    found
}

/// Mount points under `dir`, from /proc/self/mountinfo.
fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.display().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Checks (and installs, in the test host) what a private containerd with the CRI plugin
/// needs, prints the versions, and makes an empty work directory
/// `/tmp/runvm-<tag>-<pid>` with `net.d`, `ipam` and `pod-logs` in it.
pub(crate) fn prepare_here(tag: &str) -> Result<PathBuf> {
    if !util::is_root() {
        bail!("the CRI smoke test must run as root");
    }
    util::ensure_apt(&["containerd", "runc", "containernetworking-plugins"])?;
    for plugin in ["bridge", "host-local", "loopback"] {
        let p = Path::new(CNI_BIN_DIR).join(plugin);
        if !p.is_file() {
            bail!("{} is missing (containernetworking-plugins)", p.display());
        }
    }
    eprintln!(
        "[{tag}] containerd {}, runc {}, containernetworking-plugins {}",
        util::dpkg_version("containerd").unwrap_or_default(),
        util::dpkg_version("runc").unwrap_or_default(),
        util::dpkg_version("containernetworking-plugins").unwrap_or_default()
    );
    let dir = std::env::temp_dir().join(format!("runvm-{tag}-{}", std::process::id()));
    remove_dir_if_exists(&dir)?;
    for d in ["net.d", "ipam", "pod-logs"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    Ok(dir)
}

/// The smoke test, here (inside the test host): exit code 0 when every step passed.
fn smoke_here(
    crictl: &Path,
    images: &Path,
    handler: &str,
    runvm_dir: Option<&Path>,
) -> Result<i32> {
    if handler == "runvm" && runvm_dir.is_none() {
        bail!("--handler runvm needs --runvm-dir (run `cargo xtask cri-smoke`)");
    }
    eprintln!("[cri-smoke] === handler {handler} ===");
    let dir = prepare_here("cri-smoke")?;
    let mut smoke = Smoke::new("cri-smoke", crictl, handler, runvm_dir, &dir);
    let mut pod: Option<String> = None;
    let mut containers: Vec<String> = Vec::new();
    let mut netns: Option<String> = None;
    let run = run_steps(&mut smoke, images, &mut pod, &mut containers, &mut netns);
    if let Err(e) = &run {
        eprintln!("[cri-smoke] stopping early: {e:#}");
    }
    cleanup_and_check(&mut smoke, pod.as_deref(), &containers, netns.as_deref());

    let total = smoke.passed + smoke.failed.len();
    if smoke.failed.is_empty() && run.is_ok() {
        eprintln!(
            "[cri-smoke] PASSED ({handler}): {total} steps, in {}",
            util::fmt_duration(smoke.start.elapsed())
        );
        let _ = remove_dir_if_exists(&dir);
        Ok(0)
    } else {
        eprintln!(
            "[cri-smoke] FAILED ({handler}): {} of {total} steps failed ({}); containerd's log was {}",
            smoke.failed.len(),
            smoke.failed.join(", "),
            dir.join("containerd.log").display()
        );
        if let Ok(log) = std::fs::read_to_string(dir.join("containerd.log")) {
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("[cri-smoke] the last lines of containerd's log:");
            for l in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("    {l}");
            }
        }
        Ok(1)
    }
}

/// The steps up to the pod's removal; stops at the first failure.
fn run_steps(
    s: &mut Smoke,
    images: &Path,
    pod: &mut Option<String>,
    containers: &mut Vec<String>,
    netns: &mut Option<String>,
) -> Result<()> {
    let dir = s.dir.clone();
    // containerd.
    let r = start_containerd(s);
    s.step("containerd starts with the CRI plugin", r)?;
    let r = version_and_status(s);
    s.step("Version and Status", r)?;

    // Images.
    let r = import_images(s, images);
    s.step("images imported and seen by the CRI", r)?;

    // The pod.
    let pod_config = json!({
        "metadata": { "name": "runvm-cri-smoke", "namespace": "default",
                      "uid": format!("runvm-cri-smoke-{}", std::process::id()) },
        "hostname": "smoke-pod",
        "log_directory": dir.join("pod-logs").display().to_string(),
        "linux": {},
    });
    let pod_config_path = s.write_json("pod.json", &pod_config)?;
    let r = (|| {
        let id = s
            .crictl_ok(&["runp", "--runtime", &s.handler, &pod_config_path])?
            .stdout
            .trim()
            .to_string();
        *pod = Some(id.clone());
        let v = s.crictl_ok(&["inspectp", &id])?.json()?;
        if v["state"] != "SANDBOX_READY" {
            bail!("pod {id} is {}, expected SANDBOX_READY", v["state"]);
        }
        let ip = v["status"]["network"]["ip"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if !ip.starts_with(POD_SUBNET_PREFIX) {
            bail!("pod {id} has IP {ip:?}, expected one in {POD_SUBNET}");
        }
        let handler = v["status"]["runtime_handler"].as_str().unwrap_or("");
        if handler != s.handler {
            bail!(
                "pod {id} runs under handler {handler:?}, expected {}",
                s.handler
            );
        }
        *netns = pod_netns(&v);
        let ns = netns
            .clone()
            .context("the pod's verbose status names no network namespace path")?;
        if !Path::new(&ns).exists() {
            bail!("the pod's network namespace {ns} does not exist");
        }
        // What the leftover checks look for must be visible while the pod runs.
        if !dir.join("ipam/runvm-cri-smoke").join(&ip).is_file() {
            bail!(
                "host-local has no allocation file for {ip} under {}",
                dir.display()
            );
        }
        let shims = s.shims();
        if shims.is_empty() {
            bail!("no containerd-shim process of this containerd is running");
        }
        Ok((
            (),
            format!(
                "pod {} ready, IP {ip} on {BRIDGE}, netns {ns}, shim pid {}",
                short(&id),
                shims[0].0
            ),
        ))
    })();
    let name = format!("RunPodSandbox (handler {})", s.handler);
    s.step(&name, r)?;
    let pod_id = pod.clone().context("no pod")?;

    // The web container: busybox httpd on localhost:8080 of the pod.
    let web_config = json!({
        "metadata": { "name": "web" },
        "image": { "image": BUSYBOX_IMAGE },
        "command": ["/bin/sh", "-c", format!(
            "mkdir -p /www && echo '{PAGE}' > /www/index.html && echo web-starting >&2 && \
             exec httpd -f -p {HTTP_PORT} -h /www")],
        "log_path": "web.log",
        "linux": {},
    });
    let web_path = s.write_json("web.json", &web_config)?;

    // Bad input: a container for a pod that does not exist, and the same pod again.
    let r = (|| {
        let bogus = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let o = s.crictl(&["create", bogus, &web_path, &pod_config_path])?;
        if o.code == Some(0) {
            bail!("CreateContainer in pod {bogus}, which does not exist, succeeded");
        }
        let again = s.crictl(&["runp", "--runtime", &s.handler, &pod_config_path])?;
        if again.code == Some(0) {
            bail!("RunPodSandbox of the running pod's config again succeeded");
        }
        let containers = s.crictl_ok(&["ps"])?.json()?;
        let pods = s.crictl_ok(&["pods"])?.json()?;
        let (nc, np) = (
            containers.as_array().map_or(0, Vec::len),
            pods.as_array().map_or(0, Vec::len),
        );
        if nc != 0 || np != 1 {
            bail!("after the refusals: {nc} containers and {np} pods (expected 0 and 1)");
        }
        if s.handler == "runvm" && titled("runvm-vm ").len() != 1 {
            bail!("VMs after the refusals: {:?}", titled("runvm-vm "));
        }
        Ok((
            (),
            format!(
                "refused: {}; {}",
                o.stderr.trim().lines().last().unwrap_or(""),
                again.stderr.trim().lines().last().unwrap_or("")
            ),
        ))
    })();
    s.step(
        "bad input: a container for no pod, the same pod twice: refused, nothing made",
        r,
    )?;

    let r = (|| {
        let id = s.create_and_start(&pod_id, &web_path, &pod_config_path, containers)?;
        let v = s.wait_state(&id, "CONTAINER_RUNNING", 60)?;
        let pid = v["info"]["info"]["pid"].clone();
        let mounts = mounts_under(&dir).len();
        if mounts == 0 {
            bail!("no mount under {} while web runs", dir.display());
        }
        Ok((
            id.clone(),
            format!(
                "web {} running (pid {pid}), {mounts} mounts under the smoke dir",
                short(&id)
            ),
        ))
    })();
    let web = s.step("CreateContainer + StartContainer: web (httpd)", r)?;

    // The fetch container: wget from the web container over the pod's localhost.
    let fetch_config = json!({
        "metadata": { "name": "fetch" },
        "image": { "image": BUSYBOX_IMAGE },
        "command": ["/bin/sh", "-c", format!(
            "for i in $(seq 30); do wget -qO- http://localhost:{HTTP_PORT}/ && exit 0; \
             sleep 1; done; echo 'no answer from localhost:{HTTP_PORT}' >&2; exit 1")],
        "log_path": "fetch.log",
        "linux": {},
    });
    let fetch_path = s.write_json("fetch.json", &fetch_config)?;
    let r = (|| {
        let id = s.create_and_start(&pod_id, &fetch_path, &pod_config_path, containers)?;
        let v = s.wait_state(&id, "CONTAINER_EXITED", 90)?;
        let code = v["status"]["exit_code"].as_i64().unwrap_or(-1);
        if code != 0 {
            bail!("fetch exited with {code}, expected 0 (it could not fetch the page)");
        }
        Ok((id.clone(), format!("fetch {} exited 0", short(&id))))
    })();
    let fetch = s.step(
        "fetch container wgets localhost; ContainerStatus exit code 0",
        r,
    )?;

    if s.handler == "runvm" {
        let r = (|| {
            let vms = titled("runvm-vm ");
            let members = titled("runvm-member ");
            if vms.len() != 1 || members.len() != 1 {
                bail!(
                    "expected one VM (the sandbox's) and one member monitor (web's) while web runs: VMs {vms:?}, members {members:?}"
                );
            }
            Ok((
                (),
                format!(
                    "one VM (monitor pid {}) for the pod; web runs in it (member monitor pid {})",
                    vms[0].0, members[0].0
                ),
            ))
        })();
        s.step("one VM runs the pod's containers", r)?;
    }

    let r = (|| {
        let o = s.crictl_ok(&["logs", &fetch])?;
        if o.stdout.trim() != PAGE {
            bail!(
                "fetch's log has stdout {:?} (stderr {:?}), expected {PAGE:?}",
                o.stdout,
                o.stderr
            );
        }
        let w = s.crictl_ok(&["logs", &web])?;
        if !w.stderr.lines().any(|l| l == "web-starting") || !w.stdout.is_empty() {
            bail!(
                "web's log has stdout {:?} and stderr {:?}, expected only \"web-starting\" on stderr",
                w.stdout,
                w.stderr
            );
        }
        Ok((
            (),
            format!("fetch's stdout {PAGE:?}; web's stderr \"web-starting\" (CRI log files)"),
        ))
    })();
    s.step("logs from the CRI log files", r)?;

    // The ended fetch goes while web runs on (ExecSync into web follows).
    let r = (|| {
        s.crictl_ok(&["rm", &fetch])?;
        containers.retain(|c| *c != fetch);
        let left = s.crictl_ok(&["ps", "--pod", &pod_id])?.json()?;
        let ids: Vec<&str> = left
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["container"]["id"].as_str())
            .collect();
        if ids != [web.as_str()] {
            bail!("the pod's containers after fetch's removal: {left}");
        }
        let state = s.wait_state(&web, "CONTAINER_RUNNING", 5)?;
        Ok((
            (),
            format!(
                "fetch removed; web {} still {}",
                short(&web),
                state["state"].as_str().unwrap_or("?")
            ),
        ))
    })();
    s.step("RemoveContainer of fetch while web runs", r)?;

    let r = (|| {
        let o = s.crictl_ok(&[
            "exec-sync",
            "--timeout",
            "60",
            &web,
            "--",
            "cat",
            "/www/index.html",
        ])?;
        if o.stdout.trim() != PAGE {
            bail!("cat in web printed {:?}, expected {PAGE:?}", o.stdout);
        }
        let o = s.crictl(&[
            "exec-sync",
            "--timeout",
            "60",
            &web,
            "--",
            "sh",
            "-c",
            "echo to-stderr >&2; exit 3",
        ])?;
        if o.code != Some(3) || o.stderr.trim() != "to-stderr" {
            bail!(
                "`sh -c 'echo to-stderr >&2; exit 3'` in web gave exit {:?}, stderr {:?}; expected 3 and \"to-stderr\"",
                o.code,
                o.stderr
            );
        }
        Ok((
            (),
            "cat → the page, exit 0; sh -c '…; exit 3' → stderr and exit 3".to_string(),
        ))
    })();
    s.step("ExecSync", r)?;

    // A container killed for its memory limit: exit 137, reason OOMKilled.
    let hog_config = json!({
        "metadata": { "name": "hog" },
        "image": { "image": BUSYBOX_IMAGE },
        "command": ["dd", "if=/dev/zero", "of=/dev/null", "bs=80M", "count=1"],
        "log_path": "hog.log",
        "linux": { "resources": { "memory_limit_in_bytes": 32 << 20 } },
    });
    let hog_path = s.write_json("hog.json", &hog_config)?;
    let r = (|| {
        let id = s.create_and_start(&pod_id, &hog_path, &pod_config_path, containers)?;
        let v = s.wait_state(&id, "CONTAINER_EXITED", 90)?;
        let code = v["status"]["exit_code"].as_i64().unwrap_or(-1);
        let reason = v["status"]["reason"].as_str().unwrap_or("").to_string();
        if code != 137 || reason != "OOMKilled" {
            bail!("hog exited with {code} ({reason:?}), expected 137 (\"OOMKilled\")");
        }
        Ok((id, format!("hog exited 137, reason {reason}")))
    })();
    s.step(
        "a container over its memory limit: exit 137, reason OOMKilled",
        r,
    )?;

    let r = (|| {
        let v = s.crictl_ok(&["stats", &web])?.json()?;
        let cpu = v["cpu"]["usage_core_nano_seconds"]["value"]
            .as_u64()
            .unwrap_or(0);
        let mem = v["memory"]["working_set_bytes"]["value"]
            .as_u64()
            .unwrap_or(0);
        if cpu == 0 || mem == 0 {
            bail!(
                "web's stats have CPU {cpu} ns and working set {mem} bytes, expected both > 0: {v}"
            );
        }
        Ok((
            (),
            format!("web: CPU {cpu} ns, memory working set {mem} bytes"),
        ))
    })();
    s.step("ContainerStats", r)?;

    let r = (|| {
        s.crictl_ok(&["stop", "--timeout", "2", &web])?;
        let v = s.wait_state(&web, "CONTAINER_EXITED", 30)?;
        let code = v["status"]["exit_code"].as_i64().unwrap_or(-1);
        // Ended by the stop signal (143, what busybox httpd does here), or by the SIGKILL
        // after the 2 s grace (137): either way a signal, not an exit of its own.
        if code != 137 && code != 143 {
            bail!("web exited with {code} after StopContainer, expected 137 or 143");
        }
        Ok(((), format!("web exited with {code}")))
    })();
    s.step("StopContainer; ContainerStatus exit code", r)?;

    let r = (|| {
        for id in containers.iter() {
            s.crictl_ok(&["rm", id])?;
        }
        let left = s.crictl_ok(&["ps", "--pod", &pod_id])?.json()?;
        if left.as_array().is_some_and(|a| !a.is_empty()) {
            bail!("containers left in the pod after RemoveContainer: {left}");
        }
        Ok(((), "all removed, ListContainers is empty".to_string()))
    })();
    s.step("RemoveContainer", r)?;
    containers.clear();

    let r = (|| {
        s.crictl_ok(&["stopp", &pod_id])?;
        let v = s.crictl_ok(&["inspectp", &pod_id])?.json()?;
        if v["state"] != "SANDBOX_NOTREADY" {
            bail!(
                "pod is {} after StopPodSandbox, expected SANDBOX_NOTREADY",
                v["state"]
            );
        }
        s.crictl_ok(&["rmp", &pod_id])?;
        let pods = s.crictl_ok(&["pods"])?.json()?;
        if pods.as_array().is_some_and(|a| !a.is_empty()) {
            bail!("pods left after RemovePodSandbox: {pods}");
        }
        Ok((
            (),
            "pod stopped (NOTREADY) and removed, ListPodSandbox is empty".to_string(),
        ))
    })();
    s.step("StopPodSandbox + RemovePodSandbox", r)?;
    *pod = None;
    Ok(())
}

/// Version, then Status: the runtime's name and version; RuntimeReady and NetworkReady.
pub(crate) fn version_and_status(s: &Smoke) -> Result<((), String)> {
    let v = s.crictl_ok(&["version"])?.json()?;
    let info = s.crictl_ok(&["info"])?.json()?;
    let conditions = info["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for want in ["RuntimeReady", "NetworkReady"] {
        let ok = conditions
            .iter()
            .any(|c| c["type"] == want && c["status"] == true);
        if !ok {
            bail!("condition {want} is not true: {conditions:?}");
        }
    }
    Ok((
        (),
        format!(
            "{} {} (CRI {}), RuntimeReady and NetworkReady",
            v["runtime_name"].as_str().unwrap_or("?"),
            v["runtime_version"].as_str().unwrap_or("?"),
            v["runtime_api_version"].as_str().unwrap_or("?")
        ),
    ))
}

/// Imports the busybox and pause archives of `images` (`build_images`) into our
/// containerd's `k8s.io` namespace and asks the CRI for each.
pub(crate) fn import_images(s: &Smoke, images: &Path) -> Result<((), String)> {
    let mut sizes = Vec::new();
    for (file, name) in [("busybox.tar", BUSYBOX_IMAGE), ("pause.tar", PAUSE_IMAGE)] {
        let tar = images.join(file);
        s.ctr(&["images", "import", &tar.display().to_string()])
            .with_context(|| format!("importing {}", tar.display()))?;
        let v = s.crictl_ok(&["inspecti", name])?.json()?;
        sizes.push(format!("{name} ({} bytes)", v["size"]));
    }
    Ok((
        (),
        format!("ctr images import, then ImageStatus: {}", sizes.join(", ")),
    ))
}

/// The network namespace path in a pod's verbose status (`inspectp`).
pub(crate) fn pod_netns(inspectp: &Value) -> Option<String> {
    inspectp["info"]["info"]["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .map(str::to_string)
}

/// The first 13 characters of an id, as crictl shows them.
fn short(id: &str) -> &str {
    &id[..id.len().min(13)]
}

/// Starts our containerd and waits until its CRI socket answers.
pub(crate) fn start_containerd(s: &mut Smoke) -> Result<((), String)> {
    let config = s.dir.join("config.toml");
    std::fs::write(&config, containerd_config(&s.dir))?;
    let conflist = s.dir.join("net.d/10-runvm-cri-smoke.conflist");
    std::fs::write(&conflist, serde_json::to_vec_pretty(&cni_config(&s.dir))?)?;
    let log = std::fs::File::create(s.dir.join("containerd.log"))?;
    let mut containerd = Command::new("containerd");
    if let Some(dir) = &s.runvm_dir {
        // containerd finds containerd-shim-runvm-v2 on its PATH (and the shim runvm
        // beside itself), as where the two are installed together.
        let path = std::env::var("PATH").unwrap_or_default();
        containerd.env("PATH", format!("{}:{path}", dir.display()));
        // Guests boot under emulation in the test host: allow for it.
        containerd.env("RUNVM_BOOT_TIMEOUT", "600");
    }
    let child = containerd
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start containerd")?;
    let pid = child.id();
    s.containerd = Some(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(c) = s.containerd.as_mut() {
            if let Some(st) = c.try_wait()? {
                bail!("containerd exited at start ({st})");
            }
        }
        if s.socket().exists() && s.crictl(&["version"])?.code == Some(0) {
            break;
        }
        if Instant::now() > deadline {
            bail!("containerd's CRI socket did not answer within 120 s");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok((
        (),
        format!(
            "pid {pid}, config {}, socket {}",
            config.display(),
            s.socket().display()
        ),
    ))
}

/// Removes what a failed run left (best effort), stops containerd, and checks that
/// nothing is left: no container, pod, shim, network namespace, pod address or mount.
pub(crate) fn cleanup_and_check(
    s: &mut Smoke,
    pod: Option<&str>,
    containers: &[String],
    netns: Option<&str>,
) {
    if s.containerd.is_some() {
        for id in containers {
            let _ = s.crictl(&["stop", "--timeout", "0", id]);
            let _ = s.crictl(&["rm", id]);
        }
        if let Some(p) = pod {
            let _ = s.crictl(&["stopp", p]);
            let _ = s.crictl(&["rmp", p]);
        }
        let r = (|| {
            let c = s.ctr(&["containers", "list", "--quiet"])?;
            let t = s.ctr(&["tasks", "list", "--quiet"])?;
            if !c.trim().is_empty() || !t.trim().is_empty() {
                bail!(
                    "containerd still has containers {:?} and tasks {:?}",
                    c.trim(),
                    t.trim()
                );
            }
            Ok((
                (),
                "ctr -n k8s.io containers list and tasks list are empty".to_string(),
            ))
        })();
        let _ = s.step("no container left in containerd", r);
    }
    let r = (|| {
        let shims = s.shims();
        if !shims.is_empty() {
            bail!("shim processes still running: {shims:?}");
        }
        Ok(((), "no containerd shim of this containerd".to_string()))
    })();
    let _ = s.step("no shim process left", r);
    if s.handler == "runvm" {
        let r = (|| {
            let mut left = titled("runvm-vm ");
            left.extend(titled("runvm-member "));
            left.extend(processes_mentioning("virtiofsd"));
            if !left.is_empty() {
                bail!("runvm processes still running: {left:?}");
            }
            Ok(((), "no VM, member monitor or virtiofsd".to_string()))
        })();
        let _ = s.step("no runvm process left", r);
    }
    let r = (|| {
        let Some(ns) = netns else {
            return Ok(((), "the pod never had a network namespace".to_string()));
        };
        if Path::new(ns).exists() {
            bail!("{ns} still exists");
        }
        let used: Vec<_> = std::fs::read_dir(s.dir.join("ipam/runvm-cri-smoke"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(POD_SUBNET_PREFIX))
            .collect();
        if !used.is_empty() {
            bail!("pod addresses still allocated by host-local: {used:?}");
        }
        Ok(((), format!("{ns} is gone, the pod's address is released")))
    })();
    let _ = s.step("no pod network namespace left", r);

    if let Some(mut c) = s.containerd.take() {
        // SAFETY: a plain kill(2) of our own child, which has not been reaped yet.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut ended = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                ended = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if !ended {
            let _ = c.kill();
            let _ = c.wait();
        }
        let r = if ended {
            Ok(((), "containerd ended on SIGTERM".to_string()))
        } else {
            Err(anyhow!(
                "containerd did not end within 30 s of SIGTERM (killed)"
            ))
        };
        let _ = s.step("containerd stops", r);
    }
    let r = (|| {
        let left = processes_mentioning(&s.dir.display().to_string());
        let mounts = mounts_under(&s.dir);
        if !left.is_empty() || !mounts.is_empty() {
            bail!(
                "processes {left:?} and mounts {mounts:?} are left under {}",
                s.dir.display()
            );
        }
        Ok(((), format!("no process or mount under {}", s.dir.display())))
    })();
    let _ = s.step("nothing left after containerd", r);
    // The bridge plugin leaves its bridge when the last pod goes: remove it (best effort).
    let _ = Command::new("ip")
        .args(["link", "delete", BRIDGE])
        .stderr(Stdio::null())
        .status();
    // Best effort, so that a failed run does not leave mounts in the test host's /tmp.
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for m in mounts_under(&s.dir).iter().rev() {
        let ok = Command::new("umount")
            .arg("-l")
            .arg(m)
            .status()
            .is_ok_and(|st| st.success());
        *counts
            .entry(if ok { "unmounted" } else { "not unmounted" })
            .or_default() += 1;
    }
    if !counts.is_empty() {
        eprintln!("[{}] leftover mounts: {counts:?}", s.tag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_archive_names_its_config_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("layer.tar");
        std::fs::write(&layer, b"not really a tar").unwrap();
        let diff_id = util::sha256_file(&layer).unwrap();
        let config = json!({ "rootfs": { "diff_ids": [format!("sha256:{diff_id}")] } });
        let out = dir.path().join("image.tar");
        write_docker_archive(&out, &layer, &diff_id, &config, "localhost/x:latest").unwrap();
        let unpack = dir.path().join("unpack");
        std::fs::create_dir(&unpack).unwrap();
        let st = Command::new("tar")
            .arg("-xf")
            .arg(&out)
            .arg("-C")
            .arg(&unpack)
            .status()
            .unwrap();
        assert!(st.success());
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(unpack.join("manifest.json")).unwrap()).unwrap();
        let config_name = manifest[0]["Config"].as_str().unwrap();
        let config_bytes = std::fs::read(unpack.join(config_name)).unwrap();
        assert_eq!(config_name, format!("{}.json", sha256_hex(&config_bytes)));
        assert_eq!(
            serde_json::from_slice::<Value>(&config_bytes).unwrap(),
            config
        );
        assert_eq!(manifest[0]["RepoTags"], json!(["localhost/x:latest"]));
        let layer_name = manifest[0]["Layers"][0].as_str().unwrap();
        assert_eq!(
            std::fs::read(unpack.join(layer_name)).unwrap(),
            b"not really a tar"
        );
        assert!(!out.with_extension("stage").exists());
    }

    #[test]
    fn containerd_config_keeps_everything_under_its_dir() {
        let c = containerd_config(Path::new("/tmp/smoke"));
        for want in [
            "root = \"/tmp/smoke/root\"",
            "state = \"/tmp/smoke/state\"",
            "address = \"/tmp/smoke/containerd.sock\"",
            "conf_dir = \"/tmp/smoke/net.d\"",
            "sandbox_image = \"localhost/runvm-cri-pause:latest\"",
            "runtime_type = \"io.containerd.runc.v2\"",
        ] {
            assert!(c.contains(want), "{want} is not in\n{c}");
        }
    }
}
