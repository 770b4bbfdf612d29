//! The VM's own thread: [`RunningVm`] runs the VMM's event loop off the monitor's
//! thread, says through an eventfd when it ended, stops it, and gives back how it ended
//! ([`VmGone`] for the errors that name it) and its boot times.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm::{BootTimes, VmExit, VmExitReason, Vmm, VmmError};
use vmm_sys_util::eventfd::EventFd;

use super::poll::{eventfd, wait_ready};
use super::{MonitorConfig, MonitorError};

type VmResult = Arc<Mutex<Option<Result<VmExit, VmmError>>>>;

/// A VM running on its own thread, with an eventfd that fires when it ends.
pub(super) struct RunningVm {
    pub(super) handle: vmm::VmmHandle,
    /// Readable once the VM's thread has ended.
    pub(super) done: EventFd,
    result: VmResult,
    thread: Option<JoinHandle<()>>,
}

/// Why the VM is gone, as far as the monitor knows.
#[derive(Debug, thiserror::Error)]
pub enum VmGone {
    /// Its thread ended; how is known once the monitor has joined it, and then said by
    /// [`VmGone::Exited`] instead.
    #[error("the VM's thread ended")]
    Ended,
    /// The control connection failed (the guest's end of it is gone with the VM).
    #[error("the control connection failed: {0}")]
    ControlFailed(#[source] std::io::Error),
    #[error("{}", explain(.0))]
    Exited(VmExitReason),
    #[error("the VMM thread ended without a result")]
    NoResult,
}

fn explain(reason: &VmExitReason) -> &str {
    match reason {
        VmExitReason::Reset => {
            "the guest rebooted (its init exited, or its kernel panicked or rebooted)"
        }
        VmExitReason::TripleFault => "the guest kernel crashed (triple fault)",
        VmExitReason::KvmError(m) | VmExitReason::BackendFailed(m) => m,
        VmExitReason::Stopped => "the VM was stopped",
    }
}

impl RunningVm {
    pub(super) fn start(vmm: Vmm) -> Result<Self, MonitorError> {
        let handle = vmm.handle();
        let done = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Io)?;
        let result: VmResult = Arc::new(Mutex::new(None));
        let (r, d) = (result.clone(), done.try_clone().map_err(VmmError::Io)?);
        let thread = std::thread::Builder::new()
            .name("runvm-vmm".into())
            .spawn(move || {
                let res = vmm.run();
                *r.lock().unwrap_or_else(|e| e.into_inner()) = Some(res);
                let _ = d.write(1);
            })
            .map_err(VmmError::Io)?;
        Ok(Self {
            handle,
            done,
            result,
            thread: Some(thread),
        })
    }

    fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits up to `timeout` for the guest to stop by itself, then stops it.
    pub(super) fn finish(&mut self, timeout: Duration) -> Result<VmExit, MonitorError> {
        // Sleep on the VM thread's eventfd, not in a 2 ms polling loop: twenty monitors
        // waiting for their guests to power off at once (`docker stop` of twenty
        // containers) woke 10,000 times a second between them, taking CPU from the
        // very guests they waited for.
        let deadline = Instant::now() + timeout;
        let ended = self.finished()
            || wait_ready(&[eventfd(&self.done)], Some(deadline))
                .map(|r| r[0])
                .unwrap_or(false);
        if !ended {
            log::warn!("the guest did not power off within {timeout:?}; stopping it");
            self.handle.stop();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        log::debug!("stop path: the VM's threads have ended");
        match self.result.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(r) => Ok(r?),
            None => Err(MonitorError::GuestDied(VmGone::NoResult)),
        }
    }

    /// Stops the VM after `error` ended the conversation with its guest, and names in the
    /// error how the VM ended where it stands for the VM's end.
    pub(super) fn stop_after(&mut self, error: MonitorError) -> MonitorError {
        self.handle.stop();
        let exit = self.finish(Duration::from_secs(5));
        match (error, exit) {
            (MonitorError::GuestDied(_), Ok(exit)) => {
                MonitorError::GuestDied(VmGone::Exited(exit.reason))
            }
            (MonitorError::GuestDied(_), Err(e)) => e,
            (MonitorError::DiedBeforeHello(_), Ok(exit)) => {
                MonitorError::DiedBeforeHello(VmGone::Exited(exit.reason))
            }
            (e, _) => e,
        }
    }
}

/// Logs the boot times, and writes them to the timings file if one was asked for.
pub(super) fn report_times(cfg: &MonitorConfig, t: &BootTimes, warm: bool) {
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    let launch = crate::LAUNCH
        .get()
        .and_then(|l| t.vmm_start.map(|v| v.saturating_duration_since(*l)));
    let json = serde_json::json!({
        "boot": if warm { "warm" } else { "cold" },
        "launch_to_vmm_start_ms": ms(launch),
        "kernel_entry_ms": ms(t.kernel_entry),
        "init_started_ms": ms(t.init_started),
        "workload_started_ms": ms(t.workload_started),
        "workload_exited_ms": ms(t.workload_exited),
        "vm_exit_ms": ms(t.vm_exit),
    });
    log::debug!("boot times: {json}");
    if let Some(path) = &cfg.timings_file {
        if let Err(e) = std::fs::write(path, format!("{json}\n")) {
            log::warn!("cannot write boot timings to {}: {e}", path.display());
        }
    }
}
