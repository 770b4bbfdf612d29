//! Where guests boot, and what they boot: builds runvm, the kernel, the initramfs and
//! the busybox rootfs, then decides (by trying) whether this host's KVM can boot our
//! guest directly or whether guests must run inside the nested test host.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::{run, target_dir, Step};
use crate::{initramfs, kernel, rootfs, testhost};

/// Everything a guest needs, built.
pub struct GuestSetup {
    pub runvm: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub rootfs: PathBuf,
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
    /// Builds everything (`release` picks the runvm build profile).
    pub fn prepare(release: bool) -> Result<Self> {
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
        let mut step = Step::new("runvm");
        step.phase(&format!(
            "building runvm ({})",
            if release { "release" } else { "debug" }
        ));
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo.args(["build", "--quiet", "-p", "runvm"]);
        if release {
            cargo.arg("--release");
        }
        run(&mut cargo)?;
        let runvm = target_dir()
            .join(if release { "release" } else { "debug" })
            .join("runvm");
        // Install the kernel where runvm looks for it: <binary dir>/../runvm/vmlinux.
        let kernel = target_dir().join("runvm").join("vmlinux");
        if std::fs::read(&kernel).ok() != std::fs::read(&kernel_cached).ok() {
            std::fs::copy(&kernel_cached, &kernel)
                .with_context(|| format!("installing {}", kernel.display()))?;
        }
        step.finish("runvm built", &runvm);
        Ok(Self {
            runvm,
            kernel,
            initramfs,
            rootfs,
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
        ]
    }

    /// Tries one guest on this host's KVM (`RUNVM_PLACE=direct|testhost` skips the try).
    pub fn choose_place(&self) -> Result<Place> {
        match std::env::var("RUNVM_PLACE").as_deref() {
            Ok("direct") => return Ok(Place::Direct),
            Ok("testhost") => return Ok(Place::TestHost),
            Ok(other) => bail!("RUNVM_PLACE={other:?}: use direct or testhost"),
            Err(_) => {}
        }
        if !Path::new("/dev/kvm").exists() {
            eprintln!("[guests] no /dev/kvm here: guests boot inside the nested test host");
            return Ok(Place::TestHost);
        }
        let dir = target_dir().join("runvm").join("probe");
        let _ = std::fs::remove_dir_all(&dir);
        rootfs::write_bundle(&dir.join("bundle"), &self.rootfs, &["true"])?;
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
            .stderr(Stdio::piped())
            .spawn()
            .context("starting runvm for the KVM probe")?;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break Some(s);
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        let _ = std::fs::remove_dir_all(&dir);
        if status.is_some_and(|s| s.success()) {
            eprintln!("[guests] this host's KVM boots our guest: running guests directly");
            return Ok(Place::Direct);
        }
        let why = err.lines().last().unwrap_or("timed out").to_string();
        let why = if why.len() > 240 {
            format!("{}…", &why[..240])
        } else {
            why
        };
        eprintln!("[guests] this host's KVM cannot boot our guest ({why}); running guests inside the nested test host");
        Ok(Place::TestHost)
    }

    /// Runs `argv` where guests boot, with this setup's environment plus `extra`.
    pub fn run_at(&self, place: Place, argv: &[String], extra: &[(String, String)]) -> Result<i32> {
        let mut env = self.env();
        env.extend_from_slice(extra);
        match place {
            Place::TestHost => testhost::run_in_testhost(argv, &env),
            Place::Direct => {
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
