//! Warm start: a template guest waits to be woken.
//!
//! The host boots a template VM once with [`TEMPLATE_CMDLINE`] on its kernel command line
//! (only a vsock device and empty spare virtio-mmio slots), snapshots it once its init
//! is ready, and starts each container from a copy of that snapshot. Its init, after its
//! own mounts, listens on [`WAKE_PORT`] and only then reports
//! [`BootMark::TemplateReady`], so a snapshot taken at any instant after the mark finds
//! the listener in place; it then waits in `accept` (where the snapshot leaves it). After
//! a restore the host fills the spare slots with the container's devices, connects, and
//! sends one [`Wake`] frame: everything that must differ between clones of one template.
//! [`wait`] reads and checks that frame; [`apply`] takes it into the guest: the seed into
//! the entropy pool with a reseed of the kernel's random number generator, the host's
//! wall clock, and the binding of the filled slots' devices. Init then goes on as a
//! cold-booted one does.

use crate::error::{Context, Error, Result};
use crate::vsock::Transport;
use crate::{boot_timer, log, virtio_mmio};
use runvm_protocol::{BootMark, Wake, TEMPLATE_CMDLINE, WAKE_PORT, WAKE_SEED_LEN};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

/// Largest [`Wake`] frame: the seed is a JSON array of [`WAKE_SEED_LEN`] numbers (at
/// most four bytes each), the device list one number per spare slot; a frame many times
/// their size is still small.
const MAX_WAKE_FRAME_LEN: u32 = 16 << 10;

/// How long the host may take to send its [`Wake`] once it has connected.
const WAKE_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the kernel command line puts init in template mode ([`TEMPLATE_CMDLINE`] as a
/// whole word).
pub fn cmdline_has_template(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == TEMPLATE_CMDLINE)
}

/// Listens on [`WAKE_PORT`], reports [`BootMark::TemplateReady`], and waits (as long as
/// it takes, across a snapshot and restore) for the host to connect; returns its
/// [`Wake`], checked. The connection and the listener are closed on return.
pub fn wait(transport: &Transport) -> Result<Wake> {
    let listener = transport.listen(WAKE_PORT)?;
    // Only now: a snapshot taken from the mark on has the listener.
    boot_timer::mark(BootMark::TemplateReady);
    log::info(&format!(
        "template ready: waiting for the host's Wake on port {WAKE_PORT}"
    ));
    let connection = listener.accept()?;
    drop(listener);
    let wake = read_wake(connection)?;
    check(&wake)?;
    log::info(&format!(
        "woken: a seed of {} bytes, the clock at {}.{:09}, devices to bind {:?}",
        wake.seed.len(),
        wake.realtime_secs,
        wake.realtime_nanos,
        wake.bind
    ));
    Ok(wake)
}

/// Reads the one frame of a wake connection, with the frame's size and the host's time
/// to send it bounded.
fn read_wake(connection: OwnedFd) -> Result<Wake> {
    let timeout = nix::sys::time::TimeVal::new(WAKE_READ_TIMEOUT.as_secs() as libc::time_t, 0);
    nix::sys::socket::setsockopt(
        &connection,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &timeout,
    )
    .context("wake connection: set a receive timeout")?;
    let mut connection = File::from(connection);
    runvm_protocol::read_frame_limited(&mut connection, MAX_WAKE_FRAME_LEN)
        .context("read the host's Wake")
}

/// Checks a [`Wake`] before anything of it is used: a seed of at least
/// [`WAKE_SEED_LEN`] bytes (clones of one template must not share their random numbers),
/// and a wall-clock time the clock can be set to.
fn check(wake: &Wake) -> Result<()> {
    if wake.seed.len() < WAKE_SEED_LEN {
        return Err(Error::new(format!(
            "Wake: a seed of {} bytes, fewer than the {WAKE_SEED_LEN} a clone needs",
            wake.seed.len()
        )));
    }
    if wake.realtime_secs < 0 || wake.realtime_nanos >= 1_000_000_000 {
        return Err(Error::new(format!(
            "Wake: {}.{:09} is not a time since the epoch",
            wake.realtime_secs, wake.realtime_nanos
        )));
    }
    Ok(())
}

/// Takes a checked [`Wake`] into the guest (VM only): the seed into the entropy pool and
/// a reseed, the wall clock, the devices bound. A failed reseed or clock is an error (a
/// clone must not run its container on its template's random state or a stale clock). A
/// device that does not bind is logged and left: what needs it (the share's mount, the
/// network's setup) then fails and says so.
pub fn apply(wake: &Wake) -> Result<()> {
    reseed(&wake.seed)?;
    log::info(&format!(
        "mixed a seed of {} bytes into the entropy pool and reseeded",
        wake.seed.len()
    ));
    set_realtime(wake.realtime_secs, wake.realtime_nanos)?;
    log::info(&format!(
        "clock set to {}.{:09}",
        wake.realtime_secs, wake.realtime_nanos
    ));
    let mut bound = Vec::with_capacity(wake.bind.len());
    for &platform in &wake.bind {
        let name = virtio_mmio::device_name(platform);
        match virtio_mmio::bind(&name) {
            Ok(()) => bound.push(name),
            Err(e) => log::error(&format!("wake: {e}")),
        }
    }
    log::info(&format!("devices bound: {bound:?}"));
    Ok(())
}

/// `RNDADDENTROPY`, `_IOW('R', 0x03, int[2])`: adds a `struct rand_pool_info` to the
/// entropy pool and credits its entropy count.
const RNDADDENTROPY: libc::Ioctl =
    nix::request_code_write!(b'R', 0x03, std::mem::size_of::<[libc::c_int; 2]>()) as libc::Ioctl;
/// `RNDRESEEDCRNG`, `_IO('R', 0x07)`: reseeds the kernel's random number generator from
/// the pool now.
const RNDRESEEDCRNG: libc::Ioctl = nix::request_code_none!(b'R', 0x07) as libc::Ioctl;

/// Mixes `seed` into the kernel's entropy pool, credited in full, and reseeds its random
/// number generator, so that what the guest draws from now on is its own.
fn reseed(seed: &[u8]) -> Result<()> {
    let info = rand_pool_info(seed)?;
    let urandom = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .context("open /dev/urandom")?;
    // SAFETY: RNDADDENTROPY reads a `struct rand_pool_info`: two ints, then `buf_size`
    // bytes; `info` holds both ints and `seed.len()` bytes after them, is aligned for
    // the ints, and lives across the call.
    let rc = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
    if rc != 0 {
        return Err(Error::new(format!(
            "add the host's seed to the entropy pool (RNDADDENTROPY): {}",
            nix::errno::Errno::last()
        )));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument and touches no memory of this process.
    let rc = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG) };
    if rc != 0 {
        return Err(Error::new(format!(
            "reseed the random number generator (RNDRESEEDCRNG): {}",
            nix::errno::Errno::last()
        )));
    }
    Ok(())
}

/// `struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }` for `seed`,
/// as 32-bit words in native byte order: the entropy count in bits (8 per byte of seed),
/// the size of the seed in bytes, then the seed, its last word padded with zeros (the
/// kernel reads `buf_size` bytes of it).
fn rand_pool_info(seed: &[u8]) -> Result<Vec<u32>> {
    let too_long = || Error::new(format!("a seed of {} bytes is too long", seed.len()));
    let buf_size = libc::c_int::try_from(seed.len()).map_err(|_| too_long())?;
    let entropy_count = buf_size.checked_mul(8).ok_or_else(too_long)?;
    let mut words = Vec::with_capacity(2 + seed.len().div_ceil(4));
    words.push(u32::from_ne_bytes(entropy_count.to_ne_bytes()));
    words.push(u32::from_ne_bytes(buf_size.to_ne_bytes()));
    words.extend(seed.chunks(4).map(|chunk| {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        u32::from_ne_bytes(word)
    }));
    Ok(words)
}

/// Sets `CLOCK_REALTIME`.
fn set_realtime(secs: i64, nanos: u32) -> Result<()> {
    let time = libc::timespec {
        tv_sec: libc::time_t::try_from(secs)
            .map_err(|_| Error::new(format!("{secs} s is out of this guest's time range")))?,
        tv_nsec: libc::c_long::from(nanos),
    };
    // SAFETY: clock_settime reads one timespec, which lives across the call.
    let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &time) };
    if rc != 0 {
        return Err(Error::new(format!(
            "set the clock to {secs}.{nanos:09}: {}",
            nix::errno::Errno::last()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wake(seed_len: usize) -> Wake {
        Wake {
            seed: (0..seed_len).map(|i| i as u8).collect(),
            realtime_secs: 1_700_000_000,
            realtime_nanos: 999_999_999,
            bind: vec![3, 4],
        }
    }

    #[test]
    fn template_mode_is_a_whole_word_of_the_command_line() {
        assert!(cmdline_has_template(
            "console=ttyS0 runvm.template=1 reboot=k"
        ));
        assert!(cmdline_has_template("runvm.template=1"));
        assert!(!cmdline_has_template("runvm.template=10"));
        assert!(!cmdline_has_template("runvm.template=0"));
        assert!(!cmdline_has_template("xrunvm.template=1"));
        assert!(!cmdline_has_template(""));
    }

    #[test]
    fn a_seed_shorter_than_wake_seed_len_is_refused() {
        assert!(check(&wake(WAKE_SEED_LEN)).is_ok());
        assert!(check(&wake(WAKE_SEED_LEN + 1)).is_ok());
        for short in [0, 1, WAKE_SEED_LEN - 1] {
            let e = check(&wake(short)).unwrap_err();
            assert!(e.message.contains("seed"), "{}", e.message);
        }
    }

    #[test]
    fn a_time_the_clock_cannot_take_is_refused() {
        let mut w = wake(WAKE_SEED_LEN);
        w.realtime_nanos = 1_000_000_000;
        assert!(check(&w).is_err());
        let mut w = wake(WAKE_SEED_LEN);
        w.realtime_secs = -1;
        assert!(check(&w).is_err());
        let mut w = wake(WAKE_SEED_LEN);
        w.realtime_secs = 0;
        w.realtime_nanos = 0;
        assert!(check(&w).is_ok());
    }

    /// The bytes the kernel reads: `entropy_count`, `buf_size`, then `buf_size` bytes.
    fn bytes(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    #[test]
    fn rand_pool_info_is_the_counts_then_the_seed() {
        let seed: Vec<u8> = (1..=WAKE_SEED_LEN as u8).collect();
        let got = bytes(&rand_pool_info(&seed).unwrap());
        assert_eq!(got.len(), 8 + WAKE_SEED_LEN);
        assert_eq!(got[..4], (8 * WAKE_SEED_LEN as i32).to_ne_bytes());
        assert_eq!(got[4..8], (WAKE_SEED_LEN as i32).to_ne_bytes());
        assert_eq!(got[8..], seed[..]);
    }

    #[test]
    fn rand_pool_info_pads_a_seed_to_whole_words_after_its_size() {
        let seed = [0xAA, 0xBB, 0xCC, 0xDD, 0xEE];
        let got = bytes(&rand_pool_info(&seed).unwrap());
        assert_eq!(got[..4], 40i32.to_ne_bytes());
        assert_eq!(got[4..8], 5i32.to_ne_bytes());
        assert_eq!(got[8..], [0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0, 0, 0]);
    }

    #[test]
    fn the_random_ioctls_are_the_kernels_numbers() {
        // <linux/random.h>, as the kernel defines them on x86-64 and arm64.
        assert_eq!(RNDADDENTROPY, 0x4008_5203);
        assert_eq!(RNDRESEEDCRNG, 0x5207);
    }

    #[test]
    fn a_wake_frame_of_the_largest_device_list_fits_the_limit() {
        let w = Wake {
            seed: vec![255; WAKE_SEED_LEN],
            realtime_secs: i64::MAX,
            realtime_nanos: u32::MAX,
            bind: vec![u32::MAX; 64],
        };
        let mut frame = Vec::new();
        runvm_protocol::write_frame(&mut frame, &w).unwrap();
        assert!(
            frame.len() <= MAX_WAKE_FRAME_LEN as usize,
            "{}",
            frame.len()
        );
        let back: Wake =
            runvm_protocol::read_frame_limited(&mut &frame[..], MAX_WAKE_FRAME_LEN).unwrap();
        assert_eq!(back, w);
    }
}
