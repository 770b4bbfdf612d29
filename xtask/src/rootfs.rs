//! A busybox root filesystem for demos, tests and benchmarks, made from Debian's
//! `busybox-static` (no registry needed): `target/runvm/rootfs-busybox`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{dpkg_version, ensure_apt, target_dir, Step};

/// Builds the busybox root filesystem if it is missing or out of date; returns its path.
pub fn busybox_rootfs() -> Result<PathBuf> {
    ensure_apt(&["busybox-static"])?;
    let version = dpkg_version("busybox-static")?;
    let dir = target_dir().join("runvm").join("rootfs-busybox");
    let stamp = dir.join(".runvm-busybox-version");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(version.as_str()) {
        return Ok(dir);
    }
    let step = Step::new("rootfs");
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    populate(&tmp)
        .with_context(|| format!("building the busybox root filesystem in {}", tmp.display()))?;
    std::fs::write(tmp.join(".runvm-busybox-version"), &version)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).with_context(|| format!("moving {} into place", tmp.display()))?;
    step.finish(&format!("busybox {version} root filesystem built"), &dir);
    Ok(dir)
}

fn populate(root: &Path) -> Result<()> {
    use std::os::unix::fs::{symlink, PermissionsExt};
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root",
        "var/tmp", "home", "run",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("copying /bin/busybox")?;
    let out = Command::new("/bin/busybox")
        .arg("--list-full")
        .output()
        .context("running busybox --list-full")?;
    if !out.status.success() {
        bail!("busybox --list-full failed");
    }
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let link = root.join(applet);
        if applet.is_empty() || link.exists() || applet == "bin/busybox" {
            continue;
        }
        symlink("/bin/busybox", &link).with_context(|| format!("linking {applet}"))?;
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n",
    )?;
    std::fs::write(root.join("etc/hostname"), "runvm\n")?;
    Ok(())
}

/// Writes a bundle in `dir` whose process runs `args` on `rootfs`.
pub fn write_bundle(dir: &Path, rootfs: &Path, args: &[&str]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"],
            "cwd": "/",
        },
        "root": { "path": rootfs, "readonly": false },
        "hostname": "runvm",
        // As `runc spec`: runvm needs a network namespace (it cannot share the host's).
        "linux": { "namespaces": [
            { "type": "pid" }, { "type": "network" }, { "type": "ipc" },
            { "type": "uts" }, { "type": "mount" },
        ]},
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    Ok(())
}
