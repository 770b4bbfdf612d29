//! The boot timer: an I/O port the guest init writes milestones to, so the VMM can
//! report VMM start → kernel entry → init → workload start → workload exit → VM exit.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runvm_protocol::BootMark;

use crate::bus::BusDevice;

/// Milestones of one boot, as offsets from the VMM's start.
#[derive(Clone, Copy, Debug, Default)]
pub struct BootTimes {
    pub vmm_start: Option<Instant>,
    pub kernel_entry: Option<Duration>,
    pub init_started: Option<Duration>,
    pub workload_started: Option<Duration>,
    pub workload_exited: Option<Duration>,
    pub vm_exit: Option<Duration>,
    /// A template guest's init is ready to be snapshotted ([`BootMark::TemplateReady`]).
    pub template_ready: Option<Duration>,
}

impl BootTimes {
    fn since_start(&self) -> Option<Duration> {
        self.vmm_start.map(|s| s.elapsed())
    }
}

/// Shared record of boot milestones; cheap to clone.
#[derive(Clone, Default)]
pub struct BootTimer {
    times: Arc<Mutex<BootTimes>>,
}

impl BootTimer {
    pub fn new(vmm_start: Instant) -> Self {
        let t = Self::default();
        t.lock().vmm_start = Some(vmm_start);
        t
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BootTimes> {
        self.times.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first vCPU is about to enter the guest for the first time.
    pub fn mark_kernel_entry(&self) {
        let mut t = self.lock();
        if t.kernel_entry.is_none() {
            t.kernel_entry = t.since_start();
        }
    }

    pub fn mark_vm_exit(&self) {
        let mut t = self.lock();
        t.vm_exit = t.since_start();
    }

    pub fn times(&self) -> BootTimes {
        *self.lock()
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let Some(mark) = data.first().copied().and_then(BootMark::from_byte) else {
            return;
        };
        let mut t = self.lock();
        let now = t.since_start();
        // Each milestone is recorded once: a guest writing again cannot move it.
        let slot = match mark {
            BootMark::InitStarted => &mut t.init_started,
            BootMark::WorkloadStarted => &mut t.workload_started,
            BootMark::WorkloadExited => &mut t.workload_exited,
            BootMark::TemplateReady => &mut t.template_ready,
        };
        if slot.is_none() {
            *slot = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_each_milestone_once_and_ignores_garbage() {
        let mut t = BootTimer::new(Instant::now());
        t.write(0, &[0x77]);
        t.write(0, &[]);
        assert!(t.times().init_started.is_none());
        t.write(0, &[BootMark::InitStarted as u8]);
        let first = t.times().init_started.unwrap();
        std::thread::sleep(Duration::from_millis(2));
        t.write(0, &[BootMark::InitStarted as u8]);
        assert_eq!(t.times().init_started.unwrap(), first);
        t.write(0, &[BootMark::WorkloadStarted as u8]);
        assert!(t.times().workload_started.unwrap() >= first);
    }
}
