//! Where guests boot, and what they boot: builds runvm, the kernel, the initramfs and
//! the busybox rootfs, then decides (by trying) whether this host's KVM can boot our
//! guest directly or whether guests must run inside the nested test host.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::{run, target_dir, Step};
use crate::{initramfs, kernel, rootfs, testhost, virtiofsd};

/// Everything a guest needs, built.
pub struct GuestSetup {
    pub runvm: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub rootfs: PathBuf,
    /// The virtio-fs daemon runvm starts for file-system shares.
    pub virtiofsd: PathBuf,
}

/// Where the test host has runvm and its guest's files installed ([`GuestSetup::in_testhost`]).
const TESTHOST_PREFIX: &str = "/opt/runvm";

/// runvm's containerd shim v2, built and installed beside runvm.
const SHIM: &str = "containerd-shim-runvm-v2";

/// How long the probe guest may take on a host with hardware KVM.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// What `/dev/kvm` is on this host, read from the loaded modules.
#[derive(Debug, PartialEq, Eq)]
pub enum KvmKind {
    /// No `/dev/kvm`.
    Absent,
    /// `kvm_pvm`: boots only PVM-enlightened guest kernels, not ours.
    Pvm,
    /// Anything else (`kvm_intel`, `kvm_amd`, …): it should boot our guest.
    Other(String),
}

impl KvmKind {
    pub fn of_this_host() -> Self {
        Self::from_paths(Path::new("/dev/kvm"), Path::new("/sys/module"))
    }

    fn from_paths(dev: &Path, modules: &Path) -> Self {
        if !dev.exists() {
            return KvmKind::Absent;
        }
        if modules.join("kvm_pvm").exists() {
            return KvmKind::Pvm;
        }
        let module = ["kvm_intel", "kvm_amd"]
            .into_iter()
            .find(|m| modules.join(m).exists())
            .unwrap_or("KVM without kvm_intel or kvm_amd");
        KvmKind::Other(module.to_string())
    }
}

/// Where guests can boot on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The host's own KVM boots our guest kernel.
    Direct,
    /// Only inside the nested KVM test host.
    TestHost,
}

impl GuestSetup {
    /// Builds everything. runvm is always the release build, the tests' too: tests run
    /// what users run, and the monitor emulates the guest's devices, so a debug build under
    /// TCG is several times slower where time is part of the contract (twenty containers
    /// stopped at once must each end within Docker's 10 s after its SIGKILL).
    pub fn prepare() -> Result<Self> {
        crate::util::ensure_apt(&[
            "erofs-utils",
            "e2fsprogs",
            "util-linux",
            // runvm links libseccomp.
            "libseccomp-dev",
        ])?;
        let kernel_cached = kernel::kernel()?;
        let initramfs = initramfs::initramfs()?;
        let rootfs = rootfs::busybox_rootfs()?;
        let virtiofsd_cached = virtiofsd::virtiofsd()?;
        let mut step = Step::new("runvm");
        step.phase("building runvm (release)");
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        // runvm, and its containerd shim v2 beside it (as they are installed).
        cargo.args(["build", "--quiet", "--release", "-p", "runvm", "-p", SHIM]);
        run(&mut cargo)?;
        let runvm = target_dir().join("release").join("runvm");
        // Install the kernel where runvm looks for it: <binary dir>/../runvm/vmlinux.
        let kernel = target_dir().join("runvm").join("vmlinux");
        if std::fs::read(&kernel).ok() != std::fs::read(&kernel_cached).ok() {
            std::fs::copy(&kernel_cached, &kernel)
                .with_context(|| format!("installing {}", kernel.display()))?;
        }
        // And virtiofsd beside it (runvm finds it there, as Docker runs it, without
        // RUNVM_VIRTIOFSD).
        let virtiofsd = target_dir().join("runvm").join("virtiofsd");
        if std::fs::read(&virtiofsd).ok() != std::fs::read(&virtiofsd_cached).ok() {
            let _ = std::fs::remove_file(&virtiofsd);
            std::fs::copy(&virtiofsd_cached, &virtiofsd)
                .with_context(|| format!("installing {}", virtiofsd.display()))?;
        }
        step.finish("runvm built", &runvm);
        Ok(Self {
            runvm,
            kernel,
            initramfs,
            rootfs,
            virtiofsd,
        })
    }

    /// Environment that points runvm and the tests at these files.
    pub fn env(&self) -> Vec<(String, String)> {
        let s = |p: &Path| p.display().to_string();
        vec![
            ("RUNVM_BIN".into(), s(&self.runvm)),
            ("RUNVM_KERNEL".into(), s(&self.kernel)),
            ("RUNVM_INITRAMFS".into(), s(&self.initramfs)),
            ("RUNVM_TEST_ROOTFS".into(), s(&self.rootfs)),
            ("RUNVM_VIRTIOFSD".into(), s(&self.virtiofsd)),
        ]
    }

    /// Where guests boot here: inside the nested test host when this host's `/dev/kvm`
    /// is absent or PVM (the two reasons that are known and named), directly otherwise,
    /// after one probe guest has booted. A probe that fails on a host whose KVM should
    /// boot our guest is an error, not a reason to move the tests elsewhere: that would
    /// turn a broken direct path green. `RUNVM_PLACE=direct|testhost` skips the choice
    /// (for the developer commands; `cargo xtask test` scrubs it).
    pub fn choose_place(&self) -> Result<Place> {
        match std::env::var("RUNVM_PLACE").as_deref() {
            Ok("direct") => return Ok(Place::Direct),
            Ok("testhost") => return Ok(Place::TestHost),
            Ok(other) => bail!("RUNVM_PLACE={other:?}: use direct or testhost"),
            Err(_) => {}
        }
        match KvmKind::of_this_host() {
            KvmKind::Absent => {
                eprintln!("[guests] no /dev/kvm here: guests boot inside the nested test host");
                return Ok(Place::TestHost);
            }
            KvmKind::Pvm => {
                eprintln!(
                    "[guests] /dev/kvm here is PVM (kvm_pvm), which cannot boot our guest \
                     kernel: guests boot inside the nested test host"
                );
                return Ok(Place::TestHost);
            }
            KvmKind::Other(module) => eprintln!(
                "[guests] /dev/kvm here is {module}: probing it with one guest; guests boot \
                 directly, and a failed probe fails this run"
            ),
        }
        self.probe_direct()?;
        eprintln!("[guests] this host's KVM boots our guest: running guests directly");
        Ok(Place::Direct)
    }

    /// Boots one guest directly (`runvm run … true`); the error carries runvm's stderr.
    fn probe_direct(&self) -> Result<()> {
        let dir = target_dir().join("runvm").join("probe");
        let _ = std::fs::remove_dir_all(&dir);
        rootfs::write_bundle(&dir.join("bundle"), &self.rootfs, &["true"])?;
        let err_path = dir.join("stderr");
        let err_file = std::fs::File::create(&err_path)
            .with_context(|| format!("creating {}", err_path.display()))?;
        let start = Instant::now();
        let mut child = Command::new(&self.runvm)
            .arg("--root")
            .arg(dir.join("state"))
            .args(["run", "--bundle"])
            .arg(dir.join("bundle"))
            .arg("probe")
            .envs(self.env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err_file)
            .spawn()
            .context("starting runvm for the KVM probe")?;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break Some(s);
            }
            if start.elapsed() > PROBE_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => bail!(
                "the probe guest failed on this host's KVM ({s}); runvm said:\n{}",
                err.trim_end()
            ),
            None => bail!(
                "the probe guest did not finish within {PROBE_TIMEOUT:?} on this host's KVM; \
                 runvm said:\n{}",
                err.trim_end()
            ),
        }
    }

    /// This setup as the test host has it installed on its own disk (under
    /// [`TESTHOST_PREFIX`], in the same layout as under `target/`: the shim beside
    /// runvm, the guest's files in `../runvm/`), and the copies that install it there.
    /// Run from the 9p share of the build tree instead, every exec of the 8 MB runvm
    /// binary re-read it through 9p under emulation (about 65 ms, against 15 ms from the
    /// test host's disk), a cost no user's host has: twenty containers stopped at once
    /// (two runvm calls each) missed Docker's deadline by it.
    pub fn in_testhost(&self) -> Result<(Self, Vec<testhost::Install>)> {
        let prefix = Path::new(TESTHOST_PREFIX);
        let bin = prefix.join("release");
        let assets = prefix.join("runvm");
        let name = |p: &Path| -> Result<PathBuf> {
            Ok(PathBuf::from(p.file_name().with_context(|| {
                format!("{} has no file name", p.display())
            })?))
        };
        let runvm_dir = self
            .runvm
            .parent()
            .context("runvm's binary has no directory")?;
        let shim = runvm_dir.join(SHIM);
        let inside = Self {
            runvm: bin.join(name(&self.runvm)?),
            kernel: assets.join(name(&self.kernel)?),
            initramfs: assets.join(name(&self.initramfs)?),
            rootfs: self.rootfs.clone(),
            virtiofsd: assets.join(name(&self.virtiofsd)?),
        };
        let installs = [
            (&self.runvm, &inside.runvm),
            (&shim, &bin.join(SHIM)),
            (&self.kernel, &inside.kernel),
            (&self.initramfs, &inside.initramfs),
            (&self.virtiofsd, &inside.virtiofsd),
        ]
        .into_iter()
        .map(|(from, to)| testhost::Install {
            from: from.clone(),
            to: to.clone(),
        })
        .collect();
        Ok((inside, installs))
    }

    /// Runs `argv` where guests boot, with this setup's environment plus `extra`.
    pub fn run_at(&self, place: Place, argv: &[String], extra: &[(String, String)]) -> Result<i32> {
        match place {
            Place::TestHost => {
                let (inside, installs) = self.in_testhost()?;
                let mut env = inside.env();
                env.extend_from_slice(extra);
                testhost::run_in_testhost_installing(argv, &env, &installs)
            }
            Place::Direct => {
                let mut env = self.env();
                env.extend_from_slice(extra);
                let status = Command::new(&argv[0])
                    .args(&argv[1..])
                    .envs(env)
                    .status()
                    .with_context(|| format!("running {}", argv[0]))?;
                Ok(status.code().unwrap_or(
                    128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_kind_is_read_from_the_device_and_the_modules() {
        let t = tempfile::tempdir().unwrap();
        let (dev, modules) = (t.path().join("kvm"), t.path().join("module"));
        std::fs::create_dir(&modules).unwrap();
        assert_eq!(KvmKind::from_paths(&dev, &modules), KvmKind::Absent);
        std::fs::write(&dev, "").unwrap();
        assert_eq!(
            KvmKind::from_paths(&dev, &modules),
            KvmKind::Other("KVM without kvm_intel or kvm_amd".into())
        );
        std::fs::create_dir(modules.join("kvm_amd")).unwrap();
        assert_eq!(
            KvmKind::from_paths(&dev, &modules),
            KvmKind::Other("kvm_amd".into())
        );
        std::fs::create_dir(modules.join("kvm_pvm")).unwrap();
        assert_eq!(KvmKind::from_paths(&dev, &modules), KvmKind::Pvm);
    }
}
