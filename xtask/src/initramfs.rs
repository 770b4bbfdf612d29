//! The guest's initramfs: a static build of `guest-init` and a newc cpio archive around it.
//!
//! The cpio writer is our own (no external `cpio` tool needed). The archive is
//! uncompressed, so the kernel unpacks it without a decompressor, and reproducible (all
//! mtimes 0, fixed inode numbers), so an unchanged init gives a byte-identical image and
//! [`initramfs`] leaves the file (and its mtime) alone.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target triple of the guest binary (no musl target on the build machines).
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The workspace root (parent of `xtask/`).
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Builds `guest-init` as a static binary and returns its path.
pub fn build_guest_init() -> Result<PathBuf> {
    build_static_init("guest-init")
}

/// Builds the binary of workspace package `package` (`guest-init`, or the tests'
/// `hostile-init`) as a static binary and returns its path.
///
/// Uses its own target directory (`target/guest-init`) so that the `+crt-static` flags
/// do not invalidate the normal build, and an explicit `--target` so those flags do not
/// reach build scripts and proc macros. Symbols are stripped: the binary loads on every boot.
fn build_static_init(package: &str) -> Result<PathBuf> {
    let root = workspace_root();
    let target_dir = root.join("target").join("guest-init");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            package,
            "--target",
            GUEST_TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=symbols",
        )
        .status()
        .with_context(|| format!("run cargo build for {package}"))?;
    if !status.success() {
        bail!("cargo build of {package} failed ({status})");
    }
    let bin = target_dir.join(GUEST_TARGET).join("release").join(package);
    let elf = std::fs::read(&bin).with_context(|| format!("read {}", bin.display()))?;
    check_static(&elf).with_context(|| format!("{} is not usable as /init", bin.display()))?;
    Ok(bin)
}

/// Checks that an ELF file is a 64-bit little-endian x86-64 executable without a
/// program interpreter (`PT_INTERP`), i.e. statically linked (static-pie is fine).
pub fn check_static(elf: &[u8]) -> Result<()> {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| -> Result<u16> {
        let b = elf.get(o..o + 2).context("truncated ELF")?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| -> Result<u32> {
        let b = elf.get(o..o + 4).context("truncated ELF")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| -> Result<u64> {
        let b = elf.get(o..o + 8).context("truncated ELF")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    };
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        bail!("not a 64-bit little-endian ELF file");
    }
    if u16_at(18)? != 62 {
        bail!("not an x86-64 ELF file");
    }
    let phoff = usize::try_from(u64_at(32)?)?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    for i in 0..phnum {
        if u32_at(phoff + i * phentsize)? == PT_INTERP {
            bail!("dynamically linked (has a PT_INTERP program header)");
        }
    }
    Ok(())
}

/// Writes the initramfs for `init` to `out`: the directories `/dev /proc /sys /run
/// /newroot /tmp`, the device nodes `/dev/console` (5,1) and `/dev/null` (1,3), and
/// `/init` (0755).
pub fn build_initramfs(init: &Path, out: &Path) -> Result<()> {
    let image = initramfs_image(init)?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(out, image).with_context(|| format!("write {}", out.display()))
}

fn initramfs_image(init: &Path) -> Result<Vec<u8>> {
    let data = std::fs::read(init).with_context(|| format!("read {}", init.display()))?;
    let mut w = CpioWriter::default();
    for d in ["dev", "proc", "sys", "run", "newroot", "tmp"] {
        w.dir(d, 0o755)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.char_dev("dev/null", 0o666, 1, 3)?;
    w.file("init", 0o755, &data)?;
    Ok(w.finish())
}

/// Builds guest-init and the initramfs at `<workspace>/target/runvm/initramfs.cpio`,
/// rewriting the file only when its content changed. Returns its path.
pub fn initramfs() -> Result<PathBuf> {
    let init = build_guest_init()?;
    install_initramfs(&init, "initramfs.cpio")
}

/// Builds the tests' hostile guest init (`tests/hostile-init`) and its initramfs at
/// `<workspace>/target/runvm/hostile-initramfs.cpio`, next to the real one, which it
/// leaves alone. Only the `hostile` guest suite uses it.
pub fn hostile_initramfs() -> Result<PathBuf> {
    let init = build_static_init("hostile-init")?;
    install_initramfs(&init, "hostile-initramfs.cpio")
}

/// Writes the initramfs of `init` to `<workspace>/target/runvm/<name>`, rewriting the
/// file only when its content changed.
fn install_initramfs(init: &Path, name: &str) -> Result<PathBuf> {
    let out = workspace_root().join("target").join("runvm").join(name);
    // Build next to the target, then keep the old file if nothing changed (stable mtime)
    // or rename over it (a reader never sees half an image).
    let tmp = out.with_extension("cpio.tmp");
    build_initramfs(init, &tmp)?;
    let image = std::fs::read(&tmp).with_context(|| format!("read {}", tmp.display()))?;
    let unchanged = std::fs::read(&out).map(|old| old == image).unwrap_or(false);
    if unchanged {
        std::fs::remove_file(&tmp).with_context(|| format!("remove {}", tmp.display()))?;
    } else {
        std::fs::rename(&tmp, &out).with_context(|| format!("rename to {}", out.display()))?;
    }
    println!(
        "initramfs: {} ({} KiB, init {} KiB){}",
        out.display(),
        image.len().div_ceil(1024),
        std::fs::metadata(init)
            .map(|m| m.len().div_ceil(1024))
            .unwrap_or(0),
        if unchanged { ", unchanged" } else { "" }
    );
    Ok(out)
}

const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFREG: u32 = 0o100000;

/// A writer of "newc" (SVR4 without CRC, magic `070701`) cpio archives, as the kernel's
/// initramfs unpacker reads them. Names are relative (`dev/console`), owner root, mtime 0.
#[derive(Default)]
pub struct CpioWriter {
    buf: Vec<u8>,
    next_ino: u32,
}

struct Entry<'a> {
    name: &'a str,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    data: &'a [u8],
}

impl CpioWriter {
    pub fn dir(&mut self, name: &str, perm: u32) -> Result<()> {
        self.entry(Entry {
            name,
            mode: S_IFDIR | (perm & 0o7777),
            nlink: 2,
            rdev: (0, 0),
            data: &[],
        })
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> Result<()> {
        self.entry(Entry {
            name,
            mode: S_IFCHR | (perm & 0o7777),
            nlink: 1,
            rdev: (major, minor),
            data: &[],
        })
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<()> {
        self.entry(Entry {
            name,
            mode: S_IFREG | (perm & 0o7777),
            nlink: 1,
            rdev: (0, 0),
            data,
        })
    }

    /// Appends the `TRAILER!!!` entry and pads the archive to a 512-byte block.
    pub fn finish(mut self) -> Vec<u8> {
        self.header(0, 0, 1, (0, 0), 0, "TRAILER!!!");
        while !self.buf.len().is_multiple_of(512) {
            self.buf.push(0);
        }
        self.buf
    }

    fn entry(&mut self, e: Entry<'_>) -> Result<()> {
        if e.name.is_empty() || e.name.starts_with('/') || e.name.contains('\0') {
            bail!("bad cpio entry name {:?}", e.name);
        }
        let size = u32::try_from(e.data.len()).context("file too large for cpio")?;
        self.next_ino += 1;
        let ino = self.next_ino;
        self.header(ino, e.mode, e.nlink, e.rdev, size, e.name);
        self.buf.extend_from_slice(e.data);
        self.pad4();
        Ok(())
    }

    fn header(&mut self, ino: u32, mode: u32, nlink: u32, rdev: (u32, u32), size: u32, name: &str) {
        let namesize = name.len() as u32 + 1;
        let fields = [
            ino, mode, 0, // uid
            0, // gid
            nlink, 0, // mtime
            size, 0, // devmajor
            0, // devminor
            rdev.0, rdev.1, namesize, 0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad4();
    }

    fn pad4(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::default();
        w.dir("dev", 0o755).unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.file("init", 0o755, b"hello").unwrap();
        w.finish()
    }

    /// Walks the archive like the kernel does and returns (name, mode, size, rdev).
    fn parse(a: &[u8]) -> Vec<(String, u32, usize, (u32, u32))> {
        let hex = |s: &[u8]| u32::from_str_radix(std::str::from_utf8(s).unwrap(), 16).unwrap();
        let mut out = Vec::new();
        let mut off = 0;
        loop {
            assert_eq!(off % 4, 0, "entry not 4-byte aligned");
            let h = &a[off..off + 110];
            assert_eq!(&h[..6], b"070701");
            let f = |i: usize| hex(&h[6 + i * 8..14 + i * 8]);
            let (mode, size, namesize) = (f(1), f(6) as usize, f(11) as usize);
            let name_start = off + 110;
            let name = &a[name_start..name_start + namesize];
            assert_eq!(name.last(), Some(&0), "name not NUL-terminated");
            let name = String::from_utf8(name[..namesize - 1].to_vec()).unwrap();
            let data_start = (name_start + namesize).div_ceil(4) * 4;
            off = (data_start + size).div_ceil(4) * 4;
            if name == "TRAILER!!!" {
                assert!(a[off..].iter().all(|b| *b == 0));
                return out;
            }
            assert_eq!(&a[data_start..data_start + size].len(), &size);
            out.push((name, mode, size, (f(9), f(10))));
        }
    }

    #[test]
    fn layout_alignment_and_trailer() {
        let a = sample();
        assert_eq!(a.len() % 512, 0);
        let entries = parse(&a);
        assert_eq!(
            entries,
            vec![
                ("dev".to_string(), 0o040755, 0, (0, 0)),
                ("dev/console".to_string(), 0o020600, 0, (5, 1)),
                ("init".to_string(), 0o100755, 5, (0, 0)),
            ]
        );
        // The file's bytes follow its padded header.
        let pos = a.windows(5).position(|w| w == b"hello").unwrap();
        assert_eq!(pos % 4, 0);
    }

    #[test]
    fn archive_is_reproducible() {
        assert_eq!(sample(), sample());
    }

    #[test]
    fn rejects_absolute_names() {
        let mut w = CpioWriter::default();
        assert!(w.dir("/dev", 0o755).is_err());
        assert!(w.dir("", 0o755).is_err());
    }

    #[test]
    fn cpio_tool_agrees() {
        assert!(
            Command::new("cpio").arg("--version").output().is_ok(),
            "needs the cpio tool (apt-get install cpio; cargo xtask test installs it)"
        );
        let dir = std::env::temp_dir().join(format!("runvm-cpio-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let init = dir.join("init-bin");
        std::fs::write(&init, b"#!/bin/sh\necho hi\n").unwrap();
        let image = dir.join("initramfs.cpio");
        build_initramfs(&init, &image).unwrap();
        let out = Command::new("cpio")
            .args(["-itv", "--quiet", "-F"])
            .arg(&image)
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<Vec<&str>> = listing
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let names: Vec<&str> = lines.iter().map(|l| *l.last().unwrap()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "proc",
                "sys",
                "run",
                "newroot",
                "tmp",
                "dev/console",
                "dev/null",
                "init"
            ]
        );
        let perms: Vec<&str> = lines.iter().map(|l| l[0]).collect();
        assert_eq!(perms[0], "drwxr-xr-x");
        assert_eq!(perms[6], "crw-------");
        assert_eq!(perms[7], "crw-rw-rw-");
        assert_eq!(perms[8], "-rwxr-xr-x");
        assert!(
            listing.contains("5,") && listing.contains("1,"),
            "{listing}"
        );
    }

    #[test]
    fn static_check_reads_program_headers() {
        // Debian's /bin/sh (dash) is dynamically linked.
        let dynamic = std::fs::read("/bin/sh").unwrap();
        assert!(check_static(&dynamic).is_err());
        assert!(check_static(b"not an elf").is_err());
        assert!(check_static(b"\x7fELF\x02\x01").is_err());
        // Debian's busybox-static, which cargo xtask test installs.
        let busybox = std::fs::read("/bin/busybox")
            .expect("needs /bin/busybox (apt-get install busybox-static)");
        assert!(check_static(&busybox).is_ok());
    }
}
