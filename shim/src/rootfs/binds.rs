//! Bind mounts without a shared file system: a regular file is copied into the guest at
//! start (Docker's `/etc/hosts`, `resolv.conf`, `hostname`, `--init`'s
//! `/sbin/docker-init`, Podman's `/run/.containerenv`, …), a directory bind of `/dev/shm`
//! (the host tmpfs Docker and Podman make) becomes a guest tmpfs of the same size, and any
//! other directory bind is refused with an error that names it.
//!
//! Copies are not live: a change on the host after start is not seen in the guest, and a
//! write in the guest (to a bind without `ro`) stays in the guest.

use std::io::Read;
use std::os::unix::fs::MetadataExt;

use runvm_protocol::{FileContent, MountSpec};

/// Largest file a bind mount copies in.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// Largest total of the copied-in files of one container (they travel in one frame).
pub const MAX_TOTAL_BYTES: u64 = 32 << 20;

/// Errors copying in the bind-mounted files at start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("mounts: {dest}: cannot read the bind mount source {path}: {source}")]
    Read {
        dest: String,
        path: String,
        source: std::io::Error,
    },
    #[error("mounts: {dest}: the bind-mounted file {path} is over {limit} bytes, the most runvm copies into a VM")]
    TooLarge {
        dest: String,
        path: String,
        limit: u64,
    },
    #[error("mounts: {dest}: the bind-mounted files of this container are over {MAX_TOTAL_BYTES} bytes together, the most runvm copies into a VM")]
    TotalTooLarge { dest: String },
}

/// The guest-side form of a bind mount of `source` on `dest` (checked at create).
pub fn convert(dest: &str, source: &str, options: &[String]) -> Result<MountSpec, String> {
    let md = std::fs::metadata(source)
        .map_err(|e| format!("mounts: {dest}: bind mount source {source}: {e}"))?;
    if md.is_file() {
        if md.len() > MAX_FILE_BYTES {
            return Err(format!(
                "mounts: {dest}: the bind-mounted file {source} is over {MAX_FILE_BYTES} bytes, the most runvm copies into a VM"
            ));
        }
        return Ok(MountSpec {
            destination: dest.to_string(),
            fstype: "bind".into(),
            source: source.to_string(),
            options: options.to_vec(),
            file: None,
        });
    }
    if md.is_dir() && dest == "/dev/shm" {
        return Ok(shm_tmpfs(source, options));
    }
    if md.is_dir() {
        return Err(format!(
            "mounts: {dest}: bind mount of the directory {source} is not supported: runvm cannot share host directories with the VM live yet (that needs virtio-fs); only bind mounts of files are copied in"
        ));
    }
    Err(format!(
        "mounts: {dest}: bind mount of {source}, which is neither a regular file nor a directory, is not supported by runvm"
    ))
}

/// A guest tmpfs for a bind of the host's shm directory: the same size, `mode=1777`, the
/// bind's nosuid/nodev/noexec/ro words.
fn shm_tmpfs(source: &str, options: &[String]) -> MountSpec {
    let size = nix::sys::statvfs::statvfs(source)
        .ok()
        .map(|s| s.blocks() * s.fragment_size())
        .filter(|s| *s > 0)
        .unwrap_or(64 << 20);
    let mut opts: Vec<String> = options
        .iter()
        .filter(|o| ["nosuid", "nodev", "noexec", "ro", "rw"].contains(&o.as_str()))
        .cloned()
        .collect();
    opts.push("mode=1777".into());
    opts.push(format!("size={size}"));
    MountSpec {
        destination: "/dev/shm".into(),
        fstype: "tmpfs".into(),
        source: "shm".into(),
        options: opts,
        file: None,
    }
}

/// Reads the files of the bind mounts in `mounts` (at start: Docker writes them between
/// create and start).
pub fn load_files(mounts: &mut [MountSpec]) -> Result<(), BindError> {
    let mut total = 0u64;
    for m in mounts.iter_mut().filter(|m| m.fstype == "bind") {
        let read_err = |source| BindError::Read {
            dest: m.destination.clone(),
            path: m.source.clone(),
            source,
        };
        let f = std::fs::File::open(&m.source).map_err(read_err)?;
        let md = f.metadata().map_err(read_err)?;
        if !md.is_file() {
            return Err(read_err(std::io::Error::other(
                "not a regular file any more",
            )));
        }
        let mut data = Vec::with_capacity(md.len().min(MAX_FILE_BYTES) as usize);
        f.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut data)
            .map_err(read_err)?;
        if data.len() as u64 > MAX_FILE_BYTES {
            return Err(BindError::TooLarge {
                dest: m.destination.clone(),
                path: m.source.clone(),
                limit: MAX_FILE_BYTES,
            });
        }
        total += data.len() as u64;
        if total > MAX_TOTAL_BYTES {
            return Err(BindError::TotalTooLarge {
                dest: m.destination.clone(),
            });
        }
        m.file = Some(FileContent {
            data,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_copied_at_load_time_directories_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let hosts = d.join("hosts");
        std::fs::write(&hosts, "at create\n").unwrap();
        let ro = vec!["rbind".to_string(), "ro".to_string()];
        let mut m = vec![convert("/etc/hosts", hosts.to_str().unwrap(), &ro).unwrap()];
        assert_eq!(m[0].fstype, "bind");
        assert!(m[0].file.is_none());
        // Docker writes the file between create and start: start's content counts.
        std::fs::write(&hosts, "at start\n").unwrap();
        load_files(&mut m).unwrap();
        let f = m[0].file.as_ref().unwrap();
        assert_eq!(f.data, b"at start\n");
        assert_eq!(m[0].options, ro);

        let e = convert("/data", d.to_str().unwrap(), &[]).unwrap_err();
        assert!(e.contains("/data") && e.contains("not supported"), "{e}");
        let e = convert("/x", "/dev/null", &[]).unwrap_err();
        assert!(e.contains("/x"), "{e}");
        let e = convert("/y", d.join("missing").to_str().unwrap(), &[]).unwrap_err();
        assert!(e.contains("/y"), "{e}");

        std::fs::write(&hosts, vec![b'x'; MAX_FILE_BYTES as usize + 1]).unwrap();
        let e = load_files(&mut m).unwrap_err().to_string();
        assert!(e.contains("/etc/hosts") && e.contains("over"), "{e}");
        std::fs::remove_file(&hosts).unwrap();
        let e = load_files(&mut m).unwrap_err().to_string();
        assert!(e.contains("/etc/hosts"), "{e}");
    }

    #[test]
    fn a_shm_directory_becomes_a_tmpfs_of_its_size() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let opts: Vec<String> = ["rbind", "nosuid", "nodev", "noexec", "rprivate"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let m = convert("/dev/shm", d.to_str().unwrap(), &opts).unwrap();
        assert_eq!(m.fstype, "tmpfs");
        assert_eq!(&m.options[..3], ["nosuid", "nodev", "noexec"]);
        assert_eq!(m.options[3], "mode=1777");
        let st = nix::sys::statvfs::statvfs(d).unwrap();
        assert_eq!(
            m.options[4],
            format!("size={}", st.blocks() as u64 * st.fragment_size() as u64)
        );
    }
}
