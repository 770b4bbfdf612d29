//! The program `cargo xtask bench fs` runs as the container's process: it times the file
//! system workloads from inside the container, so that neither the VM's boot nor the
//! runtime's own work is counted. `bench_fs` compiles this file alone with `rustc` into a
//! static binary (std only, no crates) and copies it into the benchmark's root filesystem;
//! xtask's unit tests compile it as a module and call its functions.
//!
//! Every figure is printed on stdout as a line `result LABEL NANOSECONDS`; the file system
//! a directory lives on, as the container sees it, as `fstype DIR TYPE`. Commands:
//!
//! - `time LABEL CMD [ARG…]`: runs CMD and prints how long it took.
//! - `files DIR COUNT BYTES`: creates DIR, then COUNT files of BYTES bytes each in
//!   subdirectories of [`FILES_PER_DIR`] files, and syncs the file system (`create`); then
//!   `lstat`s every file (`stat`); then deletes them all and the directories and syncs
//!   again (`delete`).
//! - `fstype DIR`: the type of the mount DIR is on, from `/proc/self/mountinfo`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Files per subdirectory of the `files` workload.
pub const FILES_PER_DIR: u64 = 1000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("fs-workload: {e}");
        std::process::exit(1);
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    let mut emit = |line: String| {
        // Flushed at once: the runtime passes stdout to a file the harness reads.
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    };
    match args {
        [cmd, label, argv @ ..] if cmd == "time" && !argv.is_empty() => {
            let ns = time_command(argv)?;
            emit(format!("result {label} {ns}"));
        }
        [cmd, dir, count, bytes] if cmd == "files" => {
            let count = count.parse().map_err(|_| format!("bad COUNT {count:?}"))?;
            let bytes = bytes.parse().map_err(|_| format!("bad BYTES {bytes:?}"))?;
            for (label, ns) in files(Path::new(dir), count, bytes)? {
                emit(format!("result {label} {ns}"));
            }
        }
        [cmd, dir] if cmd == "fstype" => {
            let t = fstype(Path::new(dir))?;
            emit(format!("fstype {dir} {t}"));
        }
        _ => {
            return Err(format!(
                "usage: time LABEL CMD [ARG…] | files DIR COUNT BYTES | fstype DIR (got {args:?})"
            ))
        }
    }
    Ok(())
}

fn nanos(since: Instant) -> u128 {
    since.elapsed().as_nanos()
}

/// Runs `argv` to its end; nanoseconds it took. Fails unless it exits 0.
pub fn time_command(argv: &[String]) -> Result<u128, String> {
    let t = Instant::now();
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .status()
        .map_err(|e| format!("cannot run {argv:?}: {e}"))?;
    let ns = nanos(t);
    if !status.success() {
        return Err(format!("{argv:?} failed: {status}"));
    }
    Ok(ns)
}

/// `sync -f DIR` (busybox): syncs the one file system DIR is on (`syncfs`).
fn syncfs(dir: &Path) -> Result<(), String> {
    let status = Command::new("sync")
        .arg("-f")
        .arg(dir)
        .status()
        .map_err(|e| format!("cannot run sync -f {}: {e}", dir.display()))?;
    if !status.success() {
        return Err(format!("sync -f {} failed: {status}", dir.display()));
    }
    Ok(())
}

/// The `files` workload; (label, nanoseconds) of its three phases. Leaves nothing behind.
pub fn files(dir: &Path, count: u64, bytes: usize) -> Result<Vec<(&'static str, u128)>, String> {
    let err = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    let content = vec![b'x'; bytes];
    let dirs = count.div_ceil(FILES_PER_DIR);
    let file = |i: u64| -> PathBuf {
        dir.join(format!("d{:03}", i / FILES_PER_DIR))
            .join(format!("f{i:05}"))
    };
    let t = Instant::now();
    std::fs::create_dir(dir).map_err(|e| err("mkdir", dir, e))?;
    for d in 0..dirs {
        let p = dir.join(format!("d{d:03}"));
        std::fs::create_dir(&p).map_err(|e| err("mkdir", &p, e))?;
    }
    for i in 0..count {
        let p = file(i);
        std::fs::write(&p, &content).map_err(|e| err("write", &p, e))?;
    }
    syncfs(dir)?;
    let create = nanos(t);

    let t = Instant::now();
    let mut total = 0;
    for i in 0..count {
        let p = file(i);
        total += std::fs::symlink_metadata(&p)
            .map_err(|e| err("lstat", &p, e))?
            .len();
    }
    let stat = nanos(t);
    if total != count * bytes as u64 {
        return Err(format!(
            "the files under {} hold {total} bytes, not {}",
            dir.display(),
            count * bytes as u64
        ));
    }

    let t = Instant::now();
    for i in 0..count {
        let p = file(i);
        std::fs::remove_file(&p).map_err(|e| err("unlink", &p, e))?;
    }
    for d in 0..dirs {
        let p = dir.join(format!("d{d:03}"));
        std::fs::remove_dir(&p).map_err(|e| err("rmdir", &p, e))?;
    }
    let parent = dir.parent().unwrap_or(Path::new("/"));
    std::fs::remove_dir(dir).map_err(|e| err("rmdir", dir, e))?;
    syncfs(parent)?;
    let delete = nanos(t);
    Ok(vec![("create", create), ("stat", stat), ("delete", delete)])
}

/// The type of the mount that holds `dir`: the mountinfo entry with the longest mount
/// point that is `dir` or one of its ancestors (the last one mounted, if several).
pub fn fstype(dir: &Path) -> Result<String, String> {
    let dir = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let mut best: Option<(usize, String)> = None;
    for line in text.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPER
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(mount), Some(dash)) = (fields.get(4), fields.iter().position(|f| *f == "-"))
        else {
            continue;
        };
        let Some(fs) = fields.get(dash + 1) else {
            continue;
        };
        let mount = unescape(mount);
        if dir.starts_with(&mount) && best.as_ref().is_none_or(|(len, _)| mount.len() >= *len) {
            best = Some((mount.len(), fs.to_string()));
        }
    }
    best.map(|(_, fs)| fs)
        .ok_or_else(|| format!("no mount holds {}", dir.display()))
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (b[i], oct) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
