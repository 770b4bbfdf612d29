//! The guest side of the write-back: after the main process exits, walk the overlay's
//! upper directory on the writable layer and send every change to the host on
//! [`WRITEBACK_PORT`] (see [`WritebackEntry`]): directories (opaque or merged), files with
//! their bytes, symlinks, hard links, special files, and whiteouts (deletions).
//!
//! The overlay is mounted without redirects, index or metacopy (`mounts::rootfs`), so the
//! upper directory is plain: a whiteout is a 0:0 character device, an opaque directory has
//! `trusted.overlay.opaque=y`, and every other entry is the file as the container left it.

use crate::error::{Context, Error, Result};
use crate::vsock::Transport;
use runvm_protocol::{
    write_frame_limited, FileMeta, SpecialKind, WritebackEntry, MAX_WRITEBACK_FRAME_LEN,
    WRITEBACK_PORT,
};
use std::collections::HashMap;
use std::ffi::CString;
use std::io::{BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Longest path the host accepts.
const MAX_PATH: usize = 4096;

/// Sends the changes under `upper` to the host.
pub fn send(transport: &Transport, upper: &Path) -> Result<()> {
    let started = std::time::Instant::now();
    let sock = transport.connect(WRITEBACK_PORT)?;
    let file = std::fs::File::from(sock);
    let mut w = Walker {
        out: BufWriter::with_capacity(256 << 10, file),
        entries: 0,
        skipped: 0,
        bytes: 0,
        links: HashMap::new(),
        buf: vec![0u8; 128 << 10],
    };
    w.walk(upper, b"")?;
    let end = WritebackEntry::End {
        entries: w.entries,
        skipped: w.skipped,
    };
    write_frame_limited(&mut w.out, &end, MAX_WRITEBACK_FRAME_LEN)
        .context("send the end of the write-back")?;
    let file = w
        .out
        .into_inner()
        .map_err(|e| Error::new(format!("send the write-back: {}", e.error())))?;
    let _ = nix::sys::socket::shutdown(
        std::os::fd::AsRawFd::as_raw_fd(&file),
        nix::sys::socket::Shutdown::Write,
    );
    crate::log::info(&format!(
        "write-back: {} changes, {} bytes, {} skipped, in {} ms",
        w.entries,
        w.bytes,
        w.skipped,
        started.elapsed().as_millis()
    ));
    Ok(())
}

struct Walker {
    out: BufWriter<std::fs::File>,
    entries: u64,
    skipped: u64,
    bytes: u64,
    /// Files with several links, by (device, inode): the path they were first sent as.
    links: HashMap<(u64, u64), Vec<u8>>,
    buf: Vec<u8>,
}

fn meta_of(md: &std::fs::Metadata) -> FileMeta {
    FileMeta {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime(),
        mtime_nsec: md.mtime_nsec().clamp(0, 999_999_999) as u32,
    }
}

/// Whether overlayfs marked the directory opaque (it hides what is below it).
fn is_opaque(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut v = [0u8; 4];
    // SAFETY: lgetxattr writes at most `v.len()` bytes into `v`; both strings are
    // NUL-terminated.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            v.as_mut_ptr().cast(),
            v.len(),
        )
    };
    n == 1 && v[0] == b'y'
}

impl Walker {
    fn frame(&mut self, e: &WritebackEntry) -> Result<bool> {
        match write_frame_limited(&mut self.out, e, MAX_WRITEBACK_FRAME_LEN) {
            Ok(()) => {
                self.entries += 1;
                Ok(true)
            }
            Err(runvm_protocol::FrameError::TooLarge { .. }) => Ok(false),
            Err(e) => Err(Error::new(format!("send the write-back: {e}"))),
        }
    }

    /// Sends `e`, the entry at `path`; one too large for a frame is skipped instead.
    /// Whether it was sent.
    fn send_entry(&mut self, e: &WritebackEntry, path: &[u8]) -> Result<bool> {
        let sent = self.frame(e)?;
        if !sent {
            self.skip(path, "entry too large to send");
        }
        Ok(sent)
    }

    fn skip(&mut self, rel: &[u8], why: &str) {
        self.skipped += 1;
        crate::log::error(&format!(
            "write-back: skipped /{}: {why}",
            String::from_utf8_lossy(rel)
        ));
    }

    /// Sends the entries of directory `dir` (at `rel` in the container), depth first, a
    /// directory before its contents, in name order.
    fn walk(&mut self, dir: &Path, rel: &[u8]) -> Result<()> {
        let mut names: Vec<std::ffi::OsString> = match std::fs::read_dir(dir) {
            Ok(d) => d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect(),
            Err(e) => {
                self.skip(rel, &format!("cannot list it: {e}"));
                return Ok(());
            }
        };
        names.sort();
        for name in names {
            let full = dir.join(&name);
            let mut path = rel.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name.as_bytes());
            if path.len() > MAX_PATH {
                self.skip(&path, "path longer than 4096 bytes");
                continue;
            }
            let md = match std::fs::symlink_metadata(&full) {
                Ok(md) => md,
                Err(e) => {
                    self.skip(&path, &e.to_string());
                    continue;
                }
            };
            self.entry(&full, path, &md)?;
        }
        Ok(())
    }

    fn entry(&mut self, full: &Path, path: Vec<u8>, md: &std::fs::Metadata) -> Result<()> {
        let ft = md.file_type();
        let meta = meta_of(md);
        if ft.is_dir() {
            let opaque = is_opaque(full);
            let dir = WritebackEntry::Dir {
                path: path.clone(),
                meta,
                opaque,
            };
            if !self.send_entry(&dir, &path)? {
                return Ok(());
            }
            return self.walk(full, &path);
        }
        if ft.is_file() {
            return self.file(full, path, md, meta);
        }
        let e = if ft.is_symlink() {
            match std::fs::read_link(full) {
                Ok(t) => WritebackEntry::Symlink {
                    path: path.clone(),
                    meta,
                    target: t.as_os_str().as_bytes().to_vec(),
                },
                Err(e) => {
                    self.skip(&path, &e.to_string());
                    return Ok(());
                }
            }
        } else if ft.is_char_device() && md.rdev() == 0 {
            WritebackEntry::Whiteout { path: path.clone() }
        } else {
            let kind = if ft.is_fifo() {
                SpecialKind::Fifo
            } else if ft.is_socket() {
                SpecialKind::Socket
            } else if ft.is_char_device() {
                SpecialKind::CharDevice
            } else {
                SpecialKind::BlockDevice
            };
            WritebackEntry::Special {
                path: path.clone(),
                meta,
                kind,
                rdev: md.rdev(),
            }
        };
        self.send_entry(&e, &path)?;
        Ok(())
    }

    fn file(
        &mut self,
        full: &Path,
        path: Vec<u8>,
        md: &std::fs::Metadata,
        meta: FileMeta,
    ) -> Result<()> {
        if md.nlink() > 1 {
            let key = (md.dev(), md.ino());
            if let Some(first) = self.links.get(&key) {
                let e = WritebackEntry::Hardlink {
                    path: path.clone(),
                    target: first.clone(),
                };
                self.send_entry(&e, &path)?;
                return Ok(());
            }
            self.links.insert(key, path.clone());
        }
        let f = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(full)
        {
            Ok(f) => f,
            Err(e) => {
                self.links.retain(|_, p| *p != path);
                self.skip(&path, &format!("cannot open it: {e}"));
                return Ok(());
            }
        };
        // The size the host is told is the size sent, whatever happens to the file.
        let size = f.metadata().map(|m| m.len()).unwrap_or(md.len());
        let header = WritebackEntry::File {
            path: path.clone(),
            meta,
            size,
        };
        if !self.send_entry(&header, &path)? {
            return Ok(());
        }
        let mut left = size;
        let mut f = f;
        let mut short = false;
        while left > 0 {
            let want = left.min(self.buf.len() as u64) as usize;
            let n = if short {
                0
            } else {
                match f.read(&mut self.buf[..want]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => 0,
                }
            };
            let n = if n == 0 {
                // Shrunk or unreadable: keep the stream in step with zeros.
                short = true;
                self.buf[..want].fill(0);
                want
            } else {
                n
            };
            self.out
                .write_all(&self.buf[..n])
                .map_err(|e| Error::new(format!("send the write-back: {e}")))?;
            left -= n as u64;
        }
        self.bytes += size;
        if short {
            self.skip(
                &path,
                "it could not be read whole (the rest was sent as zeros)",
            );
        }
        Ok(())
    }
}
