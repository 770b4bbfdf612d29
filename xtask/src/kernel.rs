//! `cargo xtask kernel`: builds the runvm guest kernel (`vmlinux` with a PVH
//! entry) from Debian's `linux-source-6.1` with `make tinyconfig` plus the
//! fragment `kernel-config/runvm.config`, checks that Kconfig kept every
//! option of the fragment, and caches the result under
//! `~/.cache/runvm/kernel/<key>/vmlinux`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{self, Step};

/// The Debian package holding the kernel source tarball.
pub const SOURCE_PACKAGE: &str = "linux-source-6.1";
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";
/// The base configuration the fragment is applied to.
const BASE_CONFIG: &str = "tinyconfig";
/// apt packages needed to build the kernel.
const BUILD_PACKAGES: &[&str] = &[
    SOURCE_PACKAGE,
    "build-essential",
    "bc",
    "bison",
    "flex",
    "libelf-dev",
    "libssl-dev",
    "xz-utils",
    "binutils",
];

/// Path of the config fragment in the repository.
pub fn fragment_path() -> PathBuf {
    util::repo_root().join("kernel-config").join("runvm.config")
}

/// Builds the guest kernel if it is not cached yet and returns the path of
/// the cached `vmlinux`.
pub fn kernel() -> Result<PathBuf> {
    let fragment_file = fragment_path();
    let fragment = std::fs::read(&fragment_file).with_context(|| {
        format!(
            "reading the kernel config fragment {}",
            fragment_file.display()
        )
    })?;
    util::ensure_apt(BUILD_PACKAGES)?;
    let version = util::dpkg_version(SOURCE_PACKAGE)?;
    let key = util::short_hash(&[&fragment, version.as_bytes(), BASE_CONFIG.as_bytes()]);
    let kdir = util::cache_dir().join("kernel");
    let done = kdir.join(&key);
    let vmlinux = done.join("vmlinux");
    if vmlinux.is_file() {
        return Ok(vmlinux);
    }
    std::fs::create_dir_all(&kdir).with_context(|| format!("creating {}", kdir.display()))?;

    let mut step = Step::new("kernel");
    let src = extract_source(&kdir, &version, &mut step)?;

    // The build directory persists across interrupted runs (make resumes);
    // the result only becomes visible through the final rename.
    let build = kdir.join(format!("build-{key}"));
    std::fs::create_dir_all(&build).with_context(|| format!("creating {}", build.display()))?;
    let make = |args: &[&str]| {
        let mut c = Command::new("make");
        c.arg("-C")
            .arg(&src)
            .arg(format!("O={}", build.display()))
            .arg("ARCH=x86_64")
            .args(args);
        c
    };

    step.phase(&format!(
        "configuring ({BASE_CONFIG} + {})",
        fragment_file.display()
    ));
    util::run_quiet(&mut make(&[BASE_CONFIG])).context("make tinyconfig failed")?;
    let config_path = build.join(".config");
    let mut config = std::fs::read(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    config.extend_from_slice(b"\n# --- runvm.config ---\n");
    config.extend_from_slice(&fragment);
    std::fs::write(&config_path, &config)
        .with_context(|| format!("writing {}", config_path.display()))?;
    util::run_quiet(&mut make(&["olddefconfig"])).context("make olddefconfig failed")?;
    check_config(&String::from_utf8_lossy(&fragment), &config_path)?;

    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    step.phase(&format!("compiling vmlinux with make -j{jobs}"));
    let mut compiled = 0usize;
    util::run_lines(&mut make(&[&format!("-j{jobs}"), "vmlinux"]), |line| {
        let t = line.trim_start();
        if t.starts_with("CC ") || t.starts_with("AS ") {
            compiled += 1;
            let file = t.split_whitespace().last().unwrap_or("");
            step.progress(&format!("compiled {compiled} files ({file})"));
        } else if t.starts_with("LD ") && t.ends_with("vmlinux") {
            step.progress("linking vmlinux");
        }
    })
    .with_context(|| format!("kernel build failed in {}", build.display()))?;

    let built = build.join("vmlinux");
    check_pvh_note(&built)?;

    let staging = kdir.join(format!("{key}.tmp"));
    util::remove_dir_if_exists(&staging)?;
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    std::fs::copy(&built, staging.join("vmlinux"))
        .with_context(|| format!("copying {} into the cache", built.display()))?;
    std::fs::copy(&config_path, staging.join("config"))
        .with_context(|| format!("copying {} into the cache", config_path.display()))?;
    std::fs::write(
        staging.join("source-version"),
        format!("{SOURCE_PACKAGE} {version}\n"),
    )?;
    std::fs::rename(&staging, &done)
        .with_context(|| format!("moving {} to {}", staging.display(), done.display()))?;
    util::remove_dir_if_exists(&build)?;
    step.finish(
        &format!("built vmlinux ({compiled} files compiled)"),
        &vmlinux,
    );
    Ok(vmlinux)
}

/// Extracts the source tarball once into `kernel/src-<version>`.
fn extract_source(kdir: &Path, version: &str, step: &mut Step) -> Result<PathBuf> {
    let src = kdir.join(format!("src-{version}"));
    if src.join("Makefile").is_file() {
        return Ok(src);
    }
    step.phase(&format!("extracting {SOURCE_TARBALL}"));
    let tmp = kdir.join(format!("src-{version}.tmp"));
    util::remove_dir_if_exists(&tmp)?;
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    util::run_quiet(
        Command::new("tar")
            .arg("-xf")
            .arg(SOURCE_TARBALL)
            .arg("-C")
            .arg(&tmp),
    )
    .with_context(|| format!("extracting {SOURCE_TARBALL} (reinstall {SOURCE_PACKAGE}?)"))?;
    let inner = tmp.join(SOURCE_PACKAGE);
    if !inner.join("Makefile").is_file() {
        bail!(
            "{SOURCE_TARBALL} did not contain {SOURCE_PACKAGE}/Makefile (looked in {})",
            inner.display()
        );
    }
    std::fs::rename(&inner, &src)
        .with_context(|| format!("moving {} to {}", inner.display(), src.display()))?;
    util::remove_dir_if_exists(&tmp)?;
    Ok(src)
}

/// Fails with the list of options of the fragment that Kconfig dropped or
/// changed (a symbol set to `y` whose dependencies are missing silently
/// becomes unset).
fn check_config(fragment: &str, config_path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let mut have: BTreeMap<&str, &str> = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            if k.starts_with("CONFIG_") {
                have.insert(k, v);
            }
        }
    }
    let mut problems = Vec::new();
    for line in fragment.lines().map(str::trim) {
        if let Some((k, v)) = line.split_once('=') {
            if k.starts_with("CONFIG_") && have.get(k) != Some(&v) {
                problems.push(format!(
                    "  {k}={v} (final: {})",
                    have.get(k)
                        .map(|v| format!("{k}={v}"))
                        .unwrap_or_else(|| "not set".into())
                ));
            }
        } else if let Some(rest) = line.strip_prefix("# ") {
            if let Some(k) = rest.strip_suffix(" is not set") {
                if let Some(v) = have.get(k) {
                    problems.push(format!("  {k} should be unset (final: {k}={v})"));
                }
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "Kconfig did not keep these options of {} (missing dependencies?); fix the fragment:\n{}\n(final config: {})",
            fragment_path().display(),
            problems.join("\n"),
            config_path.display()
        );
    }
    Ok(())
}

/// XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Returns the PVH entry address from the ELF notes of `vmlinux`, if present.
pub fn pvh_entry(vmlinux: &Path) -> Result<Option<u64>> {
    let data = std::fs::read(vmlinux).with_context(|| format!("reading {}", vmlinux.display()))?;
    let u16_at = |o: usize| {
        data.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if data.get(0..5) != Some(b"\x7fELF\x02") {
        bail!("{} is not a 64-bit ELF file", vmlinux.display());
    }
    let bad = || anyhow::anyhow!("{} has a truncated ELF header", vmlinux.display());
    let phoff = u64_at(0x20).ok_or_else(bad)? as usize;
    let phentsize = u16_at(0x36).ok_or_else(bad)?;
    let phnum = u16_at(0x38).ok_or_else(bad)?;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph) != Some(4) {
            continue; // not PT_NOTE
        }
        let off = u64_at(ph + 8).ok_or_else(bad)? as usize;
        let size = u64_at(ph + 32).ok_or_else(bad)? as usize;
        let mut p = off;
        while p + 12 <= off + size {
            let (Some(namesz), Some(descsz), Some(ty)) = (u32_at(p), u32_at(p + 4), u32_at(p + 8))
            else {
                break;
            };
            let (namesz, descsz) = (namesz as usize, descsz as usize);
            let name = data.get(p + 12..p + 12 + namesz).unwrap_or(&[]);
            let desc_off = p + 12 + namesz.div_ceil(4) * 4;
            if name.starts_with(b"Xen") && ty == XEN_ELFNOTE_PHYS32_ENTRY {
                let entry = match descsz {
                    4 => u32_at(desc_off).map(u64::from),
                    8 => u64_at(desc_off),
                    _ => None,
                };
                return Ok(entry);
            }
            p = desc_off + descsz.div_ceil(4) * 4;
        }
    }
    Ok(None)
}

fn check_pvh_note(vmlinux: &Path) -> Result<()> {
    match pvh_entry(vmlinux)? {
        Some(_) => Ok(()),
        None => bail!(
            "{} has no XEN_ELFNOTE_PHYS32_ENTRY note: the VMM cannot boot it through PVH (is CONFIG_PVH=y in {}?)",
            vmlinux.display(),
            fragment_path().display()
        ),
    }
}

/// The `cargo xtask kernel` command: build (or find) the kernel and report it.
pub fn cmd_kernel() -> Result<()> {
    let vmlinux = kernel()?;
    let size = std::fs::metadata(&vmlinux)
        .with_context(|| format!("stat {}", vmlinux.display()))?
        .len();
    let entry = pvh_entry(&vmlinux)?.unwrap_or(0);
    eprintln!(
        "[kernel] {} ({}, PVH entry {entry:#x})",
        vmlinux.display(),
        util::fmt_size(size)
    );
    println!("{}", vmlinux.display());
    Ok(())
}
