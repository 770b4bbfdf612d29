//! The container's root filesystem on the host side: which block devices the guest gets
//! and how it stacks them, the shared image cache, the per-container writable layer,
//! file bind mounts copied in, and the write-back of the container's changes.
//!
//! - `root.path` that is an overlay mount (Docker, Podman): its image layers become one
//!   shared EROFS image from [`cache`], keyed by the canonical layer chain; per-container
//!   layers (Docker's `<id>-init`, and the `upperdir` with the container's earlier changes)
//!   become small images of their own, stacked on top in the guest.
//! - any other directory: one EROFS image of it, for this container.
//! - unless `root.readonly`: an ext4 writable layer, whose changes the guest sends back
//!   when the container stops ([`writeback`]).

pub mod binds;
pub mod cache;
pub mod erofs;
pub mod overlay;
pub mod scratch;
mod signature;
mod tool;
pub mod writeback;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use runvm_protocol::RootfsSpec;
use sha2::{Digest, Sha256};
use vmm::DiskConfig;

use crate::mountinfo::{self, MountEntry, MountinfoError};
use crate::settings::InvalidSetting;
use cache::{CacheError, ImageCache};
use erofs::ErofsError;
use overlay::UnsupportedOverlay;
use scratch::{ScratchError, ScratchFile};
use writeback::{Limits, WritebackTarget};

/// Default cache directory.
pub const DEFAULT_CACHE: &str = "/var/lib/runvm/images";
/// Default cap of the cache (bytes of images on disk).
pub const DEFAULT_CACHE_MAX: u64 = 20 << 30;
/// Default size of a container's writable layer (a sparse file: unused space costs nothing).
pub const DEFAULT_WRITABLE_SIZE: u64 = 8 << 30;
/// Default bound on one write-back.
pub const DEFAULT_WRITEBACK_TIMEOUT: Duration = Duration::from_secs(300);

/// Errors preparing the root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Mountinfo(#[from] MountinfoError),
    #[error(transparent)]
    Overlay(#[from] UnsupportedOverlay),
    #[error(transparent)]
    Erofs(#[from] ErofsError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Scratch(#[from] ScratchError),
    #[error("root filesystem {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Setting(#[from] InvalidSetting),
    #[error("the overlay on {root} names the layer {layer}, which cannot be opened: {source}")]
    Layer {
        root: PathBuf,
        layer: PathBuf,
        source: std::io::Error,
    },
}

/// The knobs, from the environment.
#[derive(Clone, Debug)]
pub struct Settings {
    pub cache_dir: PathBuf,
    pub cache_max: u64,
    pub writable_size: u64,
    pub writeback_timeout: Duration,
}

/// Parses `8G`, `512M`, `64k`, `1073741824` (powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        (i, 't' | 'T') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

impl Settings {
    pub fn from_env() -> Result<Self, RootfsError> {
        let size = |var: &'static str, default: u64| -> Result<u64, RootfsError> {
            match std::env::var(var) {
                Err(_) => Ok(default),
                Ok(v) => parse_size(&v).ok_or(RootfsError::from(InvalidSetting {
                    var,
                    value: v,
                    what: "size (bytes, or a number with K, M, G or T)",
                })),
            }
        };
        let writeback_timeout = match std::env::var("RUNVM_WRITEBACK_TIMEOUT") {
            Err(_) => DEFAULT_WRITEBACK_TIMEOUT,
            Ok(v) => Duration::from_secs(v.trim().parse().map_err(|_| InvalidSetting {
                var: "RUNVM_WRITEBACK_TIMEOUT",
                value: v.clone(),
                what: "number of seconds",
            })?),
        };
        let writable_size = size("RUNVM_WRITABLE_SIZE", DEFAULT_WRITABLE_SIZE)?;
        if writable_size < 16 << 20 {
            return Err(InvalidSetting {
                var: "RUNVM_WRITABLE_SIZE",
                value: writable_size.to_string(),
                what: "writable layer size (at least 16M)",
            }
            .into());
        }
        Ok(Self {
            cache_dir: std::env::var_os("RUNVM_IMAGE_CACHE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE)),
            cache_max: size("RUNVM_IMAGE_CACHE_MAX", DEFAULT_CACHE_MAX)?,
            writable_size,
            writeback_timeout,
        })
    }
}

/// What the guest gets for its root filesystem, and what the monitor must keep.
#[derive(Debug)]
pub struct RootfsPlan {
    pub disks: Vec<DiskConfig>,
    pub spec: RootfsSpec,
    pub writeback: Option<WritebackTarget>,
    /// Open images (and the shared lock on cached ones) the monitor holds while the
    /// container exists; the disks name them as `/proc/self/fd/N`.
    pub held: Vec<File>,
}

/// The layers of `root.path`, top first.
#[derive(Debug, PartialEq, Eq)]
pub enum Layers {
    /// An overlay mount: `own` layers belong to this container (its upperdir with earlier
    /// changes, Docker's `-init` layer), `shared` ones to its image.
    Overlay {
        own: Vec<PathBuf>,
        shared: Vec<PathBuf>,
    },
    /// Any other directory.
    Plain(PathBuf),
}

/// Whether a canonical layer directory is Docker's per-container `<id>-init/diff`.
fn is_init_layer(p: &Path) -> bool {
    p.file_name().is_some_and(|n| n == "diff")
        && p.parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n.to_string_lossy().ends_with("-init"))
}

/// Finds out what `root` (canonical) is, from the mounts.
pub fn detect(root: &Path, mounts: &[MountEntry]) -> Result<Layers, RootfsError> {
    let Some(e) =
        mountinfo::mount_at(mounts, root).filter(|e| e.fstype == "overlay" && e.root == b"/")
    else {
        return Ok(Layers::Plain(root.to_path_buf()));
    };
    let layers = overlay::overlay_layers(e, root)?;
    // Docker and containers-storage mount with paths relative to their driver home when
    // the options would not fit in a page: `<home>/<id>/merged`, `l/<short>`, `<id>/diff`.
    let base = root
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("/"));
    let resolve = |p: &PathBuf| -> Result<PathBuf, RootfsError> {
        let full = if p.is_relative() {
            base.join(p)
        } else {
            p.clone()
        };
        std::fs::canonicalize(&full).map_err(|source| RootfsError::Layer {
            root: root.to_path_buf(),
            layer: full,
            source,
        })
    };
    let mut lower = layers
        .lower
        .iter()
        .map(resolve)
        .collect::<Result<Vec<_>, _>>()?;
    let upper = layers.upper.as_ref().map(resolve).transpose()?;
    let own_lowers = lower.iter().take_while(|p| is_init_layer(p)).count();
    let shared = lower.split_off(own_lowers);
    let mut own = Vec::new();
    if let Some(u) = upper {
        let empty = std::fs::read_dir(&u)
            .map_err(|source| RootfsError::Io {
                path: u.clone(),
                source,
            })?
            .next()
            .is_none();
        if !empty {
            own.push(u);
        }
    }
    own.extend(lower);
    Ok(Layers::Overlay { own, shared })
}

/// The cache key of a shared layer chain.
pub fn cache_key(shared: &[PathBuf], mkfs_identity: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut h = Sha256::new();
    h.update(b"runvm-image-v1\0");
    h.update(mkfs_identity.as_bytes());
    h.update(b"\0--preserve-mtime\0");
    for p in shared {
        h.update(p.as_os_str().as_bytes());
        h.update(b"\0");
    }
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The cached image `key` of the root filesystem `root` (built with `build` when it is
/// not there yet), its record naming the mkfs.erofs of `mkfs_identity`; logged as
/// `what`.
fn cached_image(
    cache: &ImageCache,
    key: &str,
    mut record: serde_json::Value,
    mkfs_identity: &str,
    root: &Path,
    what: &str,
    build: impl FnOnce(&Path) -> Result<(), ErofsError>,
) -> Result<File, RootfsError> {
    record["mkfs_erofs"] = erofs::mkfs_version().into();
    record["mkfs_erofs_binary"] = mkfs_identity.into();
    let img = cache.get_or_build(key, record, build)??;
    log::debug!(
        "root filesystem {}: {what} {} ({})",
        root.display(),
        img.path.display(),
        if img.built { "built" } else { "cached" }
    );
    Ok(img.file)
}

/// Builds (or finds) the images for `rootfs` and the writable layer, at create.
pub fn prepare(rootfs: &Path, readonly: bool) -> Result<RootfsPlan, RootfsError> {
    let started = Instant::now();
    let settings = Settings::from_env()?;
    let cache = ImageCache::new(settings.cache_dir.clone(), settings.cache_max);
    let scratch_dir = cache.scratch_dir()?;
    cache::sweep_scratch(&scratch_dir, Duration::from_secs(3600));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RootfsError::Io { path, source }
    };
    let root = std::fs::canonicalize(rootfs).map_err(io(rootfs))?;
    let layers = detect(&root, &mountinfo::read_own()?)?;

    let mut held: Vec<File> = Vec::new();
    let own_image = |dir: &Path| -> Result<ScratchFile, RootfsError> {
        scratch::make(&scratch_dir, "erofs", false, |p| {
            erofs::build_erofs(dir, p).map_err(RootfsError::from)
        })
    };
    match &layers {
        Layers::Plain(dir) => {
            // One image per content of the tree: the next container of an unchanged
            // directory (a bundle run again, containers of one rootfs) reuses it.
            let signature = signature::tree_signature(dir).map_err(io(dir))?;
            let identity = erofs::mkfs_identity();
            let key = cache_key(
                std::slice::from_ref(dir),
                &format!("{identity}\0plain tree {signature}"),
            );
            let record = serde_json::json!({
                "plain_directory": dir,
                "tree_signature": signature,
            });
            held.push(cached_image(
                &cache,
                &key,
                record,
                &identity,
                &root,
                "image",
                |tmp| erofs::build_erofs(dir, tmp),
            )?);
        }
        Layers::Overlay { own, shared } => {
            for dir in own {
                held.push(own_image(dir)?.file);
            }
            if !shared.is_empty() {
                let identity = erofs::mkfs_identity();
                let key = cache_key(shared, &identity);
                let record = serde_json::json!({ "layers": shared });
                held.push(cached_image(
                    &cache,
                    &key,
                    record,
                    &identity,
                    &root,
                    "shared image",
                    |tmp| erofs::build_flattened(shared, tmp, &tmp.with_extension("mnt")),
                )?);
            }
        }
    }
    let device = |i: usize| format!("/dev/vd{}", (b'a' + i as u8) as char);
    let mut disks: Vec<DiskConfig> = held
        .iter()
        .map(|f| DiskConfig {
            path: scratch::proc_path(f),
            read_only: true,
        })
        .collect();
    let lower_devices = (0..disks.len()).map(device).collect();
    let mut writable_device = None;
    let mut writeback = None;
    if !readonly {
        let layer = scratch::make(&scratch_dir, "ext4", true, |p| {
            scratch::make_ext4(p, settings.writable_size).map_err(RootfsError::from)
        })?;
        writable_device = Some(device(disks.len()));
        disks.push(DiskConfig {
            path: layer.proc_path(),
            read_only: false,
        });
        held.push(layer.file);
        let limits = Limits {
            max_file_bytes: settings.writable_size,
            max_total_bytes: settings.writable_size,
            max_entries: 16 << 20,
        };
        writeback = Some(
            WritebackTarget::open(root.clone(), limits, settings.writeback_timeout)
                .map_err(io(&root))?,
        );
    }
    log::debug!(
        "root filesystem {} prepared in {} ms: {layers:?}",
        root.display(),
        started.elapsed().as_millis()
    );
    Ok(RootfsPlan {
        disks,
        spec: RootfsSpec {
            lower_devices,
            readonly,
            writable_device,
        },
        writeback,
        held,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(mountinfo: &str) -> Vec<MountEntry> {
        mountinfo::parse(mountinfo.as_bytes()).unwrap()
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("8G"), Some(8 << 30));
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("1T"), Some(1 << 40));
        assert_eq!(parse_size("12345"), Some(12345));
        for bad in ["", "G", "1.5G", "-1", "10X", "99999999999T"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn overlay_roots_split_into_own_and_shared_layers() {
        let tmp = tempfile::tempdir().unwrap();
        // Canonical, as prepare gives detect (the temporary directory may be a symlink).
        let home = std::fs::canonicalize(tmp.path()).unwrap().join("overlay2");
        for d in [
            "img1/diff",
            "img2/diff",
            "c1-init/diff",
            "c1/diff",
            "c1/merged",
            "c2/diff",
            "l",
        ] {
            std::fs::create_dir_all(home.join(d)).unwrap();
        }
        std::fs::write(home.join("c1/diff/changed"), "x").unwrap();
        std::os::unix::fs::symlink("../img1/diff", home.join("l/AAA")).unwrap();
        std::os::unix::fs::symlink("../img2/diff", home.join("l/BBB")).unwrap();
        std::os::unix::fs::symlink("../c1-init/diff", home.join("l/III")).unwrap();
        let merged = home.join("c1/merged");
        let h = home.display();
        // Docker's relative form (it chdirs to its home for long option strings).
        let mi = format!(
            "5 1 0:40 / {} rw - overlay overlay rw,lowerdir=l/III:l/BBB:l/AAA,upperdir=c1/diff,workdir=c1/work\n",
            merged.display()
        );
        let layers = detect(&merged, &parse(&mi)).unwrap();
        assert_eq!(
            layers,
            Layers::Overlay {
                own: vec![home.join("c1/diff"), home.join("c1-init/diff")],
                shared: vec![home.join("img2/diff"), home.join("img1/diff")],
            }
        );
        // Absolute paths through the l/ symlinks give the same canonical chain, and so
        // the same cache key; an empty upperdir is no layer.
        let mi = format!(
            "5 1 0:40 / {} rw - overlay overlay rw,lowerdir={h}/l/BBB:{h}/l/AAA,upperdir={h}/c2/diff,workdir={h}/c2/work\n",
            merged.display()
        );
        let Layers::Overlay { own, shared } = detect(&merged, &parse(&mi)).unwrap() else {
            panic!("not an overlay")
        };
        assert!(own.is_empty());
        assert_eq!(shared, vec![home.join("img2/diff"), home.join("img1/diff")]);
        assert_eq!(cache_key(&shared, "m"), cache_key(&shared, "m"));
        assert_ne!(cache_key(&shared, "m"), cache_key(&shared, "m2"));
        assert_ne!(cache_key(&shared, "m"), cache_key(&shared[1..], "m"));
        // Not a mount point, or not an overlay: a plain directory.
        assert_eq!(
            detect(&home, &parse(&mi)).unwrap(),
            Layers::Plain(home.clone())
        );
        let mi = format!("5 1 0:40 / {} rw - ext4 /dev/x rw\n", merged.display());
        assert_eq!(
            detect(&merged, &parse(&mi)).unwrap(),
            Layers::Plain(merged.clone())
        );
        // A layer that is gone is an error naming it.
        let mi = format!(
            "5 1 0:40 / {} rw - overlay overlay rw,lowerdir={h}/l/GONE:{h}/l/AAA\n",
            merged.display()
        );
        let e = detect(&merged, &parse(&mi)).unwrap_err().to_string();
        assert!(e.contains("GONE"), "{e}");
    }
}
