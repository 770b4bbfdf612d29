//! Warm start's templates: one snapshot per (kernel, initramfs, vCPUs, memory, kernel
//! command line, serial console), made once and restored by every container start that
//! has the same inputs (`RUNVM_BOOT=warm`).
//!
//! A template is a VM booted with nothing of any container in it (a vsock device and
//! [`TEMPLATE_SLOTS`] empty spare slots, no NIC, no share) whose guest init stopped in
//! template mode, just before it asks the host for a container; `runvm build-template`
//! boots it in a process of its own and snapshots it (see `vmm::snapshot`). The monitor
//! that restores it fills spare slots with the container's share and NICs and wakes the
//! guest (fresh entropy, the wall clock, the devices to bind).
//!
//! Templates live under `RUNVM_TEMPLATE_DIR` (`/var/lib/runvm/templates`), root's alone,
//! each in a directory named by the hash of its inputs ([`TemplateInputs::key`]): the
//! kernel's and initramfs's identity (path, size, modification time, inode), the runvm
//! binary's, and the VM's settings. Changing any of them names another template, which is
//! made at the next start. A start that cannot make its template boots cold, with a
//! warning, and the template is not tried again for ten minutes. At most [`MAX_TEMPLATES`] are kept: making another removes the least
//! recently used. A template found unusable (truncated, its memory file written since, another
//! format) is removed and that start boots cold, with a warning; the next start makes it
//! again.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmm::snapshot::{Snapshot, SnapshotError};

/// The spare slots of a template VM: every virtio-mmio IRQ line after the vsock device's
/// (the container's share, its NICs, and member containers' shares go in them).
pub const TEMPLATE_SLOTS: usize =
    (vmm::layout::IRQ_MAX - vmm::layout::VIRTIO_IRQ_START + 1) as usize - 1;
/// Most templates kept (`RUNVM_TEMPLATES_MAX`).
pub const MAX_TEMPLATES: usize = 8;
/// Where templates are kept unless `RUNVM_TEMPLATE_DIR` says otherwise.
const DEFAULT_ROOT: &str = "/var/lib/runvm/templates";

/// Why no template could be had.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("making the template {dir} failed ({status}): {stderr}")]
    Build {
        dir: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("making the template {dir} failed less than {} minutes ago ({why}); not trying again before then", RETRY_AFTER.as_secs() / 60)]
    RecentlyFailed { dir: PathBuf, why: String },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError {
    let path = path.to_path_buf();
    move |source| TemplateError::Io { what, path, source }
}

/// What a template is made from: a VM built from the same inputs is the same VM.
#[derive(Clone, Debug)]
pub struct TemplateInputs {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub vcpus: u8,
    pub mem_mib: u64,
    pub debug_console: bool,
    /// Words appended to the kernel command line (`RUNVM_KERNEL_CMDLINE_APPEND`).
    pub cmdline_append: Option<String>,
}

impl TemplateInputs {
    /// The template's name: a hash of the inputs and of the files' identities.
    pub fn key(&self) -> Result<String, TemplateError> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let exe = std::env::current_exe().map_err(io("find", Path::new("/proc/self/exe")))?;
        for path in [&self.kernel, &self.initramfs, &exe] {
            let m = std::fs::metadata(path).map_err(io("read", path))?;
            (path, m.len(), m.mtime(), m.mtime_nsec(), m.ino(), m.dev()).hash(&mut h);
        }
        (
            vmm::snapshot::SNAPSHOT_FORMAT,
            runvm_protocol::PROTOCOL_VERSION,
            self.vcpus,
            self.mem_mib,
            self.debug_console,
            &self.cmdline_append,
            TEMPLATE_SLOTS,
        )
            .hash(&mut h);
        Ok(format!(
            "{}-{}cpu-{}m-{:016x}",
            env!("CARGO_PKG_VERSION"),
            self.vcpus,
            self.mem_mib,
            h.finish()
        ))
    }
}

/// Where templates are kept.
pub fn root() -> PathBuf {
    std::env::var_os("RUNVM_TEMPLATE_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_ROOT), PathBuf::from)
}

/// The template for `inputs`, made now if there is none (or none that can be read):
/// loaded and ready to restore. Waits while another process makes the same template.
/// `timeout` bounds the template's boot.
pub fn obtain(inputs: &TemplateInputs, timeout: Duration) -> Result<Snapshot, TemplateError> {
    let root = root();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&root)
        .map_err(io("create", &root))?;
    let key = inputs.key()?;
    let dir = root.join(&key);
    let lock_path = root.join(format!("{key}.lock"));
    let lock = File::create(&lock_path).map_err(io("create", &lock_path))?;
    // Held until the template is loaded: a template being made is not read, nor evicted.
    flock(&lock, libc::LOCK_EX).map_err(io("lock", &lock_path))?;
    let snapshot = match Snapshot::load(&dir) {
        Ok(snapshot) => snapshot,
        Err(SnapshotError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            // A template that could not be made is not tried again at every start (a guest
            // whose init has no template mode, a kernel that does not boot) for a while.
            let failed = root.join(format!("{key}.failed"));
            if let Some(why) = recent_failure(&failed) {
                return Err(TemplateError::RecentlyFailed { dir, why });
            }
            if let Err(e) = build(inputs, &dir, timeout) {
                let _ = std::fs::write(&failed, e.to_string());
                return Err(e);
            }
            let _ = std::fs::remove_file(&failed);
            let snapshot = Snapshot::load(&dir)?;
            evict(&root, &key);
            snapshot
        }
        Err(e) => {
            // This start boots cold; the next one makes the template again.
            discard(&dir);
            return Err(e.into());
        }
    };
    // The directory's time says when it was last used (for the eviction).
    let _ = File::open(&dir).and_then(|d| d.set_modified(std::time::SystemTime::now()));
    Ok(snapshot)
}

/// How long a template that could not be made is not tried again.
const RETRY_AFTER: Duration = Duration::from_secs(600);

/// What the last attempt to make a template said, if it failed less than [`RETRY_AFTER`]
/// ago (its `.failed` file).
fn recent_failure(failed: &Path) -> Option<String> {
    let age = std::fs::metadata(failed)
        .ok()?
        .modified()
        .ok()?
        .elapsed()
        .ok()?;
    (age < RETRY_AFTER).then(|| std::fs::read_to_string(failed).unwrap_or_default())
}

/// Removes a template found unusable (truncated, changed, of another format), so that
/// the next warm start makes it again.
pub fn discard(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => log::warn!(
            "removed the unusable warm-start template {}; the next warm start makes it again",
            dir.display()
        ),
        Err(e) => log::warn!(
            "cannot remove the unusable warm-start template {}: {e}",
            dir.display()
        ),
    }
}

/// Makes the template `dir` in a process of its own (`runvm build-template`): its VM's
/// memory and threads go with that process.
fn build(inputs: &TemplateInputs, dir: &Path, timeout: Duration) -> Result<(), TemplateError> {
    let started = Instant::now();
    let exe = std::env::current_exe().map_err(io("find", Path::new("/proc/self/exe")))?;
    let mut cmd = Command::new(&exe);
    cmd.arg("build-template")
        .arg("--dir")
        .arg(dir)
        .arg("--kernel")
        .arg(&inputs.kernel)
        .arg("--initramfs")
        .arg(&inputs.initramfs)
        .arg("--vcpus")
        .arg(inputs.vcpus.to_string())
        .arg("--mem-mib")
        .arg(inputs.mem_mib.to_string())
        .arg("--timeout-secs")
        .arg(timeout.as_secs().max(1).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(extra) = &inputs.cmdline_append {
        cmd.arg("--cmdline").arg(extra);
    }
    if inputs.debug_console {
        cmd.arg("--debug-console");
    }
    leave_container_cgroups(&mut cmd);
    let out = cmd.output().map_err(io("run", &exe))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(TemplateError::Build {
            dir: dir.into(),
            status: out.status,
            stderr: stderr.trim().chars().take(2000).collect(),
        });
    }
    log::info!(
        "made the warm-start template {} in {:.1?}",
        dir.display(),
        started.elapsed()
    );
    Ok(())
}

/// Makes `cmd`'s process leave the caller's cgroups (a container's: the monitor runs in
/// it) for the root of each hierarchy before it runs: a template is no container's, and
/// its VM's memory and CPU time must not count against the limits of the container whose
/// start happened to make it (a `--memory 32m` container's would kill it).
fn leave_container_cgroups(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let files: Vec<std::ffi::CString> = crate::cgroup::hierarchy_roots()
        .unwrap_or_default()
        .into_iter()
        .map(|root| root.join("cgroup.procs"))
        .filter_map(|p| std::ffi::CString::new(p.into_os_string().into_encoded_bytes()).ok())
        .collect();
    // SAFETY: the closure runs in the child between fork and exec and only calls open,
    // write and close (async-signal-safe) on strings made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for file in &files {
                let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    // "0": the writing process itself.
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
            Ok(())
        });
    }
}

/// Removes the least recently used templates beyond `RUNVM_TEMPLATES_MAX`, never `keep`
/// nor one another process holds locked.
fn evict(root: &Path, keep: &str) {
    let max = crate::settings::env_num("RUNVM_TEMPLATES_MAX", MAX_TEMPLATES)
        .unwrap_or(MAX_TEMPLATES)
        .max(1);
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut templates: Vec<(std::time::SystemTime, String)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let used = e.metadata().and_then(|m| m.modified()).ok()?;
            // Not another process's snapshot or sockets being made beside a template.
            (!name.contains(".tmp-") && !name.contains(".sockets-")).then_some((used, name))
        })
        .collect();
    if templates.len() <= max {
        return;
    }
    templates.sort();
    let excess = templates.len() - max;
    for (_, name) in templates
        .into_iter()
        .filter(|(_, n)| n != keep)
        .take(excess)
    {
        let lock_path = root.join(format!("{name}.lock"));
        let Ok(lock) = File::create(&lock_path) else {
            continue;
        };
        if flock(&lock, libc::LOCK_EX | libc::LOCK_NB).is_err() {
            continue;
        }
        let dir = root.join(&name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => log::info!(
                "removed the least recently used warm-start template {}",
                dir.display()
            ),
            Err(e) => log::warn!(
                "cannot remove the warm-start template {}: {e}",
                dir.display()
            ),
        }
        let _ = std::fs::remove_file(&lock_path);
    }
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor we hold; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `runvm build-template`'s work: boots the template VM and snapshots it into `dir`.
pub fn build_here(args: &BuildTemplate) -> anyhow::Result<()> {
    use anyhow::Context;
    let uds_dir = tempfile_dir(&args.dir)?;
    let config = vmm::VmConfig {
        vcpus: args.vcpus,
        mem_mib: args.mem_mib,
        kernel: args.kernel.clone(),
        initramfs: Some(args.initramfs.clone()),
        cmdline: crate::monitor::guest_cmdline(args.debug_console, args.cmdline.as_deref()),
        disks: Vec::new(),
        vsock: Some(vmm::VsockConfig {
            guest_cid: crate::monitor::GUEST_CID,
            uds_path: uds_dir.join("vsock.sock"),
        }),
        nics: Vec::new(),
        fs: Vec::new(),
        fs_slots: TEMPLATE_SLOTS,
        serial: args
            .debug_console
            .then(|| Box::new(std::io::stderr()) as Box<dyn std::io::Write + Send>),
        seccomp: true,
        ram: None,
        template: true,
        restore: None,
    };
    // A guest that connects to the control port is not waiting to be snapshotted: its
    // init has no template mode (another initramfs). Stop it at once rather than wait.
    let control = std::os::unix::net::UnixListener::bind(
        uds_dir.join(format!("vsock.sock_{}", runvm_protocol::CONTROL_PORT)),
    )
    .context("cannot listen for the template guest's control connection")?;
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let result = vmm::Vmm::new(config)
        .context("cannot build the template VM")
        .and_then(|vm| {
            let handle = vm.handle();
            let flag = asked.clone();
            std::thread::spawn(move || {
                if control.accept().is_ok() {
                    flag.store(true, std::sync::atomic::Ordering::Release);
                    handle.stop();
                }
            });
            vm.snapshot_when_ready(&args.dir, Duration::from_secs(args.timeout_secs))
                .with_context(|| {
                    format!(
                        "cannot snapshot the template VM into {}",
                        args.dir.display()
                    )
                })
        });
    if asked.load(std::sync::atomic::Ordering::Acquire) {
        let _ = std::fs::remove_dir_all(&uds_dir);
        anyhow::bail!(
            "the template guest asked the host for a container instead of waiting to be \
             snapshotted: its init ({}) has no template mode",
            args.initramfs.display()
        );
    }
    let _ = std::fs::remove_dir_all(&uds_dir);
    let bytes = result?;
    log::debug!(
        "template {}: {} MiB of guest memory",
        args.dir.display(),
        bytes >> 20
    );
    Ok(())
}

/// A private directory beside `dir` for the template VM's sockets.
fn tempfile_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = vmm::snapshot::beside(dir, "sockets");
    let _ = std::fs::remove_dir_all(&path);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    Ok(path)
}

/// `runvm build-template`: made by runvm itself when a warm start finds no template.
#[derive(clap::Args, Debug)]
pub struct BuildTemplate {
    /// The snapshot directory to make
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long)]
    pub kernel: PathBuf,
    #[arg(long)]
    pub initramfs: PathBuf,
    #[arg(long)]
    pub vcpus: u8,
    #[arg(long)]
    pub mem_mib: u64,
    /// Words appended to the kernel command line
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Give the template VM a serial console (on this process's stderr)
    #[arg(long)]
    pub debug_console: bool,
    /// How long the template's guest may take to become ready
    #[arg(long, default_value = "60")]
    pub timeout_secs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(dir: &Path) -> TemplateInputs {
        let kernel = dir.join("vmlinux");
        let initramfs = dir.join("initramfs");
        if !kernel.exists() {
            std::fs::write(&kernel, b"kernel").unwrap();
            std::fs::write(&initramfs, b"initramfs").unwrap();
        }
        TemplateInputs {
            kernel,
            initramfs,
            vcpus: 1,
            mem_mib: 256,
            debug_console: false,
            cmdline_append: None,
        }
    }

    #[test]
    fn the_key_changes_with_every_input() {
        let dir = tempfile::tempdir().unwrap();
        let base = inputs(dir.path());
        let key = base.key().unwrap();
        assert_eq!(
            base.key().unwrap(),
            key,
            "the same inputs name the same template"
        );
        assert!(key.contains("-1cpu-256m-"), "{key}");
        let mut other = base.clone();
        other.vcpus = 2;
        assert_ne!(other.key().unwrap(), key);
        let mut other = base.clone();
        other.mem_mib = 512;
        assert_ne!(other.key().unwrap(), key);
        let mut other = base.clone();
        other.debug_console = true;
        assert_ne!(other.key().unwrap(), key);
        let mut other = base.clone();
        other.cmdline_append = Some("loglevel=8".into());
        assert_ne!(other.key().unwrap(), key);
        // A rebuilt kernel (new contents: new size and time) is another template.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&base.kernel, b"kernel, rebuilt").unwrap();
        assert_ne!(base.key().unwrap(), key);
    }

    #[test]
    fn eviction_keeps_the_most_recently_used_and_the_one_in_use() {
        let root = tempfile::tempdir().unwrap();
        std::env::set_var("RUNVM_TEMPLATES_MAX", "2");
        let mut names = Vec::new();
        for i in 0..4 {
            let name = format!("t{i}");
            std::fs::create_dir(root.path().join(&name)).unwrap();
            std::fs::write(root.path().join(format!("{name}.lock")), b"").unwrap();
            let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1000 + i);
            File::open(root.path().join(&name))
                .unwrap()
                .set_modified(when)
                .unwrap();
            names.push(name);
        }
        // t0 is the oldest but the one being used.
        evict(root.path(), "t0");
        std::env::remove_var("RUNVM_TEMPLATES_MAX");
        let mut left: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.ends_with(".lock") && !n.ends_with(".failed"))
            .collect();
        left.sort();
        assert_eq!(left, vec!["t0", "t3"]);
        assert!(!root.path().join("t1.lock").exists());
    }
}
