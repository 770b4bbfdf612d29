//! virtiofsd, the vhost-user virtio-fs daemon behind runvm's file-system shares: built
//! from crates.io with `cargo install` at a pinned version into the cache
//! (`~/.cache/runvm/virtiofsd/<version>/bin/virtiofsd`), after its Debian build
//! dependencies.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::util::{self, Step};

/// The virtiofsd release we ship (the newest on crates.io when pinned; it builds with this
/// workspace's toolchain).
pub const VERSION: &str = "1.14.0";

/// What virtiofsd links: libcap-ng (capabilities) and libseccomp (its sandbox filter).
const BUILD_PACKAGES: &[&str] = &["libcap-ng-dev", "libseccomp-dev"];

/// The virtiofsd binary, built once per version (cached).
pub fn virtiofsd() -> Result<PathBuf> {
    let dir = util::cache_dir().join("virtiofsd").join(VERSION);
    let bin = dir.join("bin").join("virtiofsd");
    if bin.is_file() {
        return Ok(bin);
    }
    util::ensure_apt(BUILD_PACKAGES)?;
    let mut step = Step::new("virtiofsd");
    // Installed next to the final place and renamed into it, so that an interrupted build
    // never leaves a directory that looks done; the build directory persists so that an
    // interrupted build resumes.
    let partial = dir.with_file_name(format!("{VERSION}.partial"));
    util::remove_dir_if_exists(&partial)?;
    let build = dir.with_file_name(format!("{VERSION}.build"));
    step.phase(&format!("building virtiofsd {VERSION} from crates.io"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut crates = 0usize;
    util::run_lines(
        Command::new(cargo)
            .args(["install", "virtiofsd", "--locked", "--version", VERSION])
            .arg("--root")
            .arg(&partial)
            .arg("--target-dir")
            .arg(&build)
            // Our workspace's flags are not virtiofsd's.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET"),
        |line| {
            let t = line.trim_start();
            if t.starts_with("Compiling ") {
                crates += 1;
                let name = t.split_whitespace().nth(1).unwrap_or("");
                step.progress(&format!("compiled {crates} crates ({name})"));
            }
        },
    )
    .with_context(|| format!("cargo install virtiofsd {VERSION} failed"))?;
    util::remove_dir_if_exists(&dir)?;
    std::fs::rename(&partial, &dir)
        .with_context(|| format!("moving {} to {}", partial.display(), dir.display()))?;
    util::remove_dir_if_exists(&build)?;
    step.finish(&format!("virtiofsd {VERSION} built"), &bin);
    Ok(bin)
}
