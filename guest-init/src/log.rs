//! Logging of the guest init.
//!
//! Inside the VM the serial console is usually off, so messages go to `/dev/kmsg` (the
//! kernel log, visible with `runvm.debug=1` on the console or through `dmesg`). Errors are
//! always logged; step-by-step information only with `runvm.debug=1` on the kernel
//! command line. In host test mode everything goes to stderr.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static DEBUG: AtomicBool = AtomicBool::new(false);
static TO_STDERR: AtomicBool = AtomicBool::new(false);

/// Turns step logging on or off.
pub fn set_debug(on: bool) {
    DEBUG.store(on, Ordering::Relaxed);
}

/// Sends log lines to stderr instead of `/dev/kmsg` (host test mode).
pub fn set_stderr(on: bool) {
    TO_STDERR.store(on, Ordering::Relaxed);
}

/// Whether `runvm.debug=1` is on the kernel command line.
pub fn cmdline_has_debug(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == "runvm.debug=1")
}

/// Logs a step (only in debug mode).
pub fn info(msg: &str) {
    if DEBUG.load(Ordering::Relaxed) {
        emit(6, msg);
    }
}

/// Logs an error (always).
pub fn error(msg: &str) {
    emit(3, msg);
}

fn emit(level: u8, msg: &str) {
    let line = format!("<{level}>runvm-init: {msg}\n");
    if TO_STDERR.load(Ordering::Relaxed) {
        let _ = std::io::stderr().write_all(&line.as_bytes()[3..]);
        return;
    }
    // One write per record: /dev/kmsg takes each write() as one log line.
    match OpenOptions::new().write(true).open("/dev/kmsg") {
        Ok(mut f) => {
            let _ = f.write_all(line.as_bytes());
        }
        Err(_) => {
            let _ = std::io::stderr().write_all(&line.as_bytes()[3..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_flag_is_a_whole_word() {
        assert!(cmdline_has_debug("console=ttyS0 runvm.debug=1 reboot=k"));
        assert!(!cmdline_has_debug("runvm.debug=10"));
        assert!(!cmdline_has_debug("xrunvm.debug=1"));
        assert!(!cmdline_has_debug(""));
    }
}
