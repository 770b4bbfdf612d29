//! The shared image cache: one EROFS image per image-layer chain, shared by every
//! container of that image (one file, one host page cache), safe under concurrent creates,
//! bounded in size.
//!
//! Layout of the cache directory (`RUNVM_IMAGE_CACHE`, default `/var/lib/runvm/images`):
//! - `<key>.erofs`: an image; `<key>.json`: what it was built from, when, how long it took.
//! - `<key>.lock`: taken exclusively while `<key>.erofs` is built. Builds go to
//!   `<key>.tmp.<pid>` and are renamed into place, so a reader never sees half an image and
//!   N concurrent creates of one image build it once.
//! - `scratch/`: per-container files (images of per-container layers, writable layers),
//!   unlinked as soon as they are open, so nothing is left whatever happens to the monitor.
//!
//! An image is in use while a container holds a shared `flock` on it (from `create` until
//! its monitor exits). Eviction, after each build, removes the least recently used images
//! (by mtime, which every use sets) until the cache is under its cap, skipping images in use.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `flock` operations.
#[derive(Clone, Copy)]
enum FlockArg {
    LockShared,
    LockExclusiveNonblock,
}

/// `flock(2)` (nix's wrapper is deprecated in favour of an owning type that does not fit
/// a lock held by an inherited descriptor).
fn flock(file: &impl AsFd, arg: FlockArg) -> nix::Result<()> {
    let fd = file.as_fd().as_raw_fd();
    let op = match arg {
        FlockArg::LockShared => libc::LOCK_SH,
        FlockArg::LockExclusiveNonblock => libc::LOCK_EX | libc::LOCK_NB,
    };
    loop {
        // SAFETY: flock takes a descriptor and an operation, and touches no memory.
        let rc = unsafe { libc::flock(fd, op) };
        match nix::errno::Errno::result(rc) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r.map(drop),
        }
    }
}

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("image cache {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("timed out after {0:?} waiting for another runvm to build image {1}")]
    LockTimeout(Duration, PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The cache directory and its size cap.
#[derive(Clone, Debug)]
pub struct ImageCache {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

/// An image of the cache, held (shared lock) for as long as this value lives.
#[derive(Debug)]
pub struct CachedImage {
    pub file: File,
    pub path: PathBuf,
    /// This call built it (it was not in the cache).
    pub built: bool,
}

/// How long a create waits for another one's build of the same image.
const BUILD_WAIT: Duration = Duration::from_secs(30 * 60);

impl ImageCache {
    pub fn new(dir: PathBuf, max_bytes: u64) -> Self {
        Self { dir, max_bytes }
    }

    /// The directory for per-container scratch files (created if missing).
    pub fn scratch_dir(&self) -> Result<PathBuf, CacheError> {
        let d = self.dir.join("scratch");
        std::fs::create_dir_all(&d).map_err(io(&d))?;
        Ok(d)
    }

    fn image_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.erofs"))
    }

    /// Opens `<key>.erofs` with a shared lock if it exists (and was not evicted meanwhile).
    fn open_existing(&self, key: &str) -> Result<Option<CachedImage>, CacheError> {
        let path = self.image_path(key);
        loop {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io(&path)(e)),
            };
            flock(&file, FlockArg::LockShared).map_err(|e| io(&path)(e.into()))?;
            // An evictor unlinks while it holds the lock exclusively: a file it removed
            // has no links left by the time our shared lock is granted.
            let md = file.metadata().map_err(io(&path))?;
            if md.nlink() == 0 {
                continue;
            }
            // Mark it recently used (eviction goes by mtime).
            let _ = nix::sys::stat::futimens(
                file.as_raw_fd(),
                &nix::sys::time::TimeSpec::UTIME_NOW,
                &nix::sys::time::TimeSpec::UTIME_NOW,
            );
            return Ok(Some(CachedImage {
                file,
                path: path.clone(),
                built: false,
            }));
        }
    }

    /// The image for `key`, built with `build(tmp_path)` if the cache does not have it.
    /// `record` is written next to it as `<key>.json` (with the build time added).
    pub fn get_or_build<E>(
        &self,
        key: &str,
        record: serde_json::Value,
        build: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<Result<CachedImage, E>, CacheError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        if let Some(img) = self.open_existing(key)? {
            return Ok(Ok(img));
        }
        let lock_path = self.dir.join(format!("{key}.lock"));
        let _lock = lock_exclusive(&lock_path, BUILD_WAIT)?;
        if let Some(img) = self.open_existing(key)? {
            return Ok(Ok(img));
        }
        // Leftovers of a build that died (we hold the build lock: nobody else builds).
        remove_matching(&self.dir, &format!("{key}.tmp."));
        let tmp = self.dir.join(format!("{key}.tmp.{}", std::process::id()));
        let started = Instant::now();
        if let Err(e) = build(&tmp) {
            remove_matching(&self.dir, &format!("{key}.tmp."));
            return Ok(Err(e));
        }
        let mut record = record;
        record["built"] = crate::logging::rfc3339_now().into();
        record["build_ms"] = (started.elapsed().as_millis() as u64).into();
        record["bytes"] = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0).into();
        let json = self.dir.join(format!("{key}.json"));
        let written = std::fs::write(&json, format!("{record:#}\n"))
            .and_then(|()| std::fs::rename(&tmp, self.image_path(key)));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&self.dir)(e));
        }
        log::info!(
            "built the shared image {} in {} ms",
            self.image_path(key).display(),
            started.elapsed().as_millis()
        );
        let Some(mut img) = self.open_existing(key)? else {
            return Err(io(&self.image_path(key))(ErrorKind::NotFound.into()));
        };
        img.built = true;
        drop(_lock);
        self.evict();
        Ok(Ok(img))
    }

    /// Removes least recently used images until the cache is under its cap, never one
    /// in use. Best effort: another runvm evicting at the same time makes this one skip.
    pub fn evict(&self) {
        let lock_path = self.dir.join(".evict.lock");
        let Ok(lock) = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
        else {
            return;
        };
        if flock(&lock, FlockArg::LockExclusiveNonblock).is_err() {
            return;
        }
        let mut images: Vec<(PathBuf, u64, i64)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".erofs"))
            .filter_map(|e| {
                let md = e.metadata().ok()?;
                Some((e.path(), md.blocks() * 512, md.mtime()))
            })
            .collect();
        let mut total: u64 = images.iter().map(|i| i.1).sum();
        images.sort_by_key(|i| i.2);
        for (path, bytes, _) in images {
            if total <= self.max_bytes {
                break;
            }
            let Ok(f) = File::open(&path) else { continue };
            if flock(&f, FlockArg::LockExclusiveNonblock).is_err() {
                continue; // in use
            }
            if std::fs::remove_file(&path).is_ok() {
                let _ = std::fs::remove_file(path.with_extension("json"));
                log::info!(
                    "evicted {} ({bytes} bytes) from the image cache (cap {} bytes)",
                    path.display(),
                    self.max_bytes
                );
                total = total.saturating_sub(bytes);
            }
        }
    }
}

/// An exclusive lock on `path` (created if missing), waiting up to `timeout`.
fn lock_exclusive(path: &Path, timeout: Duration) -> Result<File, CacheError> {
    let deadline = Instant::now() + timeout;
    loop {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io(path))?;
        match flock(&f, FlockArg::LockExclusiveNonblock) {
            Ok(()) => return Ok(f),
            Err(nix::errno::Errno::EWOULDBLOCK) => {}
            Err(e) => return Err(io(path)(e.into())),
        }
        if Instant::now() >= deadline {
            return Err(CacheError::LockTimeout(timeout, path.to_path_buf()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes the files in `dir` whose names start with `prefix`.
fn remove_matching(dir: &Path, prefix: &str) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            // A build's mount point (empty: its mount lived in a private namespace that
            // is gone) or its directory of layer symlinks (never followed here).
            let _ = std::fs::remove_file(e.path());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Removes scratch files older than `age` (left by a create that died between making a
/// file and unlinking it, a window of milliseconds).
pub fn sweep_scratch(dir: &Path, age: Duration) {
    let now = std::time::SystemTime::now();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|d| d > age);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A cache in a directory that does not exist yet, in a temporary directory that
    /// goes with the first value.
    fn temp_cache(max: u64) -> (tempfile::TempDir, ImageCache) {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ImageCache::new(tmp.path().join("images"), max);
        (tmp, cache)
    }

    fn fake_build(bytes: usize) -> impl FnOnce(&Path) -> Result<(), std::io::Error> {
        move |p| std::fs::write(p, vec![1u8; bytes])
    }

    #[test]
    fn concurrent_gets_build_once_and_leave_no_temp_files() {
        let (_tmp, cache) = temp_cache(u64::MAX);
        let builds = std::sync::Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (cache, builds) = (cache.clone(), builds.clone());
                std::thread::spawn(move || {
                    let img = cache
                        .get_or_build("k1", serde_json::json!({}), |p| {
                            builds.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(100));
                            std::fs::write(p, b"image")
                        })
                        .unwrap()
                        .unwrap();
                    std::fs::read(&img.path).unwrap()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), b"image");
        }
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        let mut names: Vec<String> = std::fs::read_dir(&cache.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [".evict.lock", "k1.erofs", "k1.json", "k1.lock"]);
        let rec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(cache.dir.join("k1.json")).unwrap()).unwrap();
        assert_eq!(rec["bytes"], 5);
    }

    #[test]
    fn a_failed_build_leaves_nothing_and_is_retried() {
        let (_tmp, cache) = temp_cache(u64::MAX);
        let r = cache
            .get_or_build("k", serde_json::json!({}), |p| {
                std::fs::write(p, b"half")?;
                Err(std::io::Error::other("mkfs failed"))
            })
            .unwrap();
        assert!(r.is_err());
        assert!(!cache.dir.join("k.erofs").exists());
        assert!(!cache
            .dir
            .join(format!("k.tmp.{}", std::process::id()))
            .exists());
        let img = cache
            .get_or_build("k", serde_json::json!({}), fake_build(3))
            .unwrap()
            .unwrap();
        assert!(img.built);
    }

    #[test]
    fn eviction_removes_least_recently_used_images_not_in_use() {
        // Each image takes at least one 4 KiB block; the cap holds two of them.
        let (_tmp, cache) = temp_cache(3 * 4096);
        let a = cache
            .get_or_build("a", serde_json::json!({}), fake_build(4096))
            .unwrap()
            .unwrap();
        let b = cache
            .get_or_build("b", serde_json::json!({}), fake_build(4096))
            .unwrap()
            .unwrap();
        // Make a the oldest, but keep it in use; b is older than c and not in use.
        let old = nix::sys::time::TimeSpec::new(1_000, 0);
        let older = nix::sys::time::TimeSpec::new(2_000, 0);
        nix::sys::stat::futimens(a.file.as_raw_fd(), &old, &old).unwrap();
        nix::sys::stat::futimens(b.file.as_raw_fd(), &older, &older).unwrap();
        drop(b);
        let _c = cache
            .get_or_build("c", serde_json::json!({}), fake_build(4096))
            .unwrap()
            .unwrap();
        // 3 images over a cap of 3 blocks only if the fs uses more than one block each;
        // force the cap below the total so that exactly one must go.
        let cache2 = ImageCache::new(cache.dir.clone(), 2 * 4096);
        cache2.evict();
        assert!(cache.dir.join("a.erofs").exists(), "in use: never evicted");
        assert!(!cache.dir.join("b.erofs").exists(), "least recently used");
        assert!(!cache.dir.join("b.json").exists());
        assert!(cache.dir.join("c.erofs").exists());
        drop(a);
    }
}
