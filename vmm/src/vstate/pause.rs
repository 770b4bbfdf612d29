//! Pausing a running VM: the vCPU threads park between two `KVM_RUN`s until resumed,
//! so the guest stops entirely (its clock included, from its point of view) while the
//! device thread and the host side stay up.
//!
//! A pause sets the flag, then kicks every vCPU thread out of `KVM_RUN` with the kick
//! signal until each has parked (the signal may arrive just before a thread enters
//! `KVM_RUN`, so it is sent again until the thread is seen parked).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a pause waits for every vCPU to park.
const PARK_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors pausing a VM.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error("the VM is not running")]
    NotRunning,
    #[error("{parked} of {total} vCPUs stopped within {PARK_TIMEOUT:?}; the VM was resumed")]
    Timeout { parked: usize, total: usize },
}

#[derive(Default)]
struct Inner {
    paused: bool,
    parked: usize,
    /// Kernel thread ids of the running vCPU threads.
    threads: Vec<libc::pid_t>,
}

/// Shared by the vCPU threads and whoever pauses them.
#[derive(Default)]
pub struct PauseControl {
    inner: Mutex<Inner>,
    /// vCPU threads wait on it while paused.
    resumed: Condvar,
    /// The pauser waits on it for the threads to park.
    parked: Condvar,
    /// Set when the VM stops: parked threads leave, pauses fail.
    stopped: AtomicBool,
}

impl PauseControl {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by a vCPU thread when it starts.
    pub fn register_current_thread(&self) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        self.lock().threads.push(tid);
    }

    /// Called by a vCPU thread when it ends.
    pub fn unregister_current_thread(&self) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let mut g = self.lock();
        g.threads.retain(|t| *t != tid);
        self.parked.notify_all();
    }

    /// Called by a vCPU thread between two runs: blocks while the VM is paused.
    pub fn park_if_paused(&self, stop: &AtomicBool) {
        let mut g = self.lock();
        if !g.paused {
            return;
        }
        g.parked += 1;
        self.parked.notify_all();
        while g.paused && !stop.load(Ordering::Acquire) && !self.stopped.load(Ordering::Acquire) {
            g = self
                .resumed
                .wait_timeout(g, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        g.parked -= 1;
    }

    /// Whether the VM is paused.
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Pauses every vCPU; returns once each is parked.
    pub fn pause(&self) -> Result<(), PauseError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(PauseError::NotRunning);
        }
        let mut g = self.lock();
        g.paused = true;
        let deadline = Instant::now() + PARK_TIMEOUT;
        loop {
            if g.parked >= g.threads.len() {
                return Ok(());
            }
            if self.stopped.load(Ordering::Acquire) || Instant::now() >= deadline {
                let (parked, total) = (g.parked, g.threads.len());
                g.paused = false;
                self.resumed.notify_all();
                return Err(if self.stopped.load(Ordering::Acquire) {
                    PauseError::NotRunning
                } else {
                    PauseError::Timeout { parked, total }
                });
            }
            // SAFETY: getpid has no preconditions; tgkill only sends a signal, to a
            // thread of this process (a thread that has exited gives ESRCH).
            unsafe {
                let pid = libc::getpid();
                for &tid in &g.threads {
                    libc::syscall(libc::SYS_tgkill, pid, tid, super::vcpu::kick_signal());
                }
            }
            g = self
                .parked
                .wait_timeout(g, Duration::from_millis(1))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Lets the vCPUs run again (nothing to do if the VM is not paused).
    pub fn resume(&self) {
        let mut g = self.lock();
        g.paused = false;
        self.resumed.notify_all();
    }

    /// The VM stops: parked threads go, later pauses fail.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        let _g = self.lock();
        self.resumed.notify_all();
        self.parked.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn threads_park_while_paused_and_go_on_after_resume() {
        super::super::vcpu::register_kick_handler().unwrap();
        let pc = Arc::new(PauseControl::default());
        let stop = Arc::new(AtomicBool::new(false));
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut threads = Vec::new();
        for _ in 0..2 {
            let (pc, stop, counter) = (pc.clone(), stop.clone(), counter.clone());
            threads.push(std::thread::spawn(move || {
                pc.register_current_thread();
                while !stop.load(Ordering::Acquire) {
                    pc.park_if_paused(&stop);
                    counter.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_micros(100));
                }
                pc.unregister_current_thread();
            }));
        }
        while pc.lock().threads.len() < 2 {
            std::thread::yield_now();
        }
        pc.pause().unwrap();
        assert!(pc.is_paused());
        let before = counter.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
        // Each thread may finish the one step it was in.
        assert!(counter.load(Ordering::Relaxed) <= before + 2);
        pc.resume();
        std::thread::sleep(Duration::from_millis(50));
        assert!(counter.load(Ordering::Relaxed) > before + 2);
        pc.pause().unwrap();
        // Stopping releases parked threads.
        stop.store(true, Ordering::Release);
        pc.stop();
        for t in threads {
            t.join().unwrap();
        }
        assert!(matches!(pc.pause(), Err(PauseError::NotRunning)));
    }
}
