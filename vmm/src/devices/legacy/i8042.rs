//! The part of the i8042 keyboard controller a guest uses to reset the machine: the
//! guest kernel (`reboot=k`) writes 0xfe to the command port, and the VM stops.

use crate::bus::BusDevice;
use crate::vstate::{VmExitReason, VmState};
use std::sync::Arc;

const CMD_RESET_CPU: u8 = 0xfe;

/// i8042 controller that only implements the CPU reset command.
pub struct I8042 {
    state: Arc<VmState>,
}

impl I8042 {
    pub fn new(state: Arc<VmState>) -> Self {
        Self { state }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status: output buffer empty, input buffer empty. Data: nothing.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Offset 4 is port 0x64 when the device is registered at 0x60 with length 5.
        if offset == 4 && data.first() == Some(&CMD_RESET_CPU) {
            self.state.request_exit(VmExitReason::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_stops_the_vm() {
        let state = Arc::new(VmState::new().unwrap());
        let mut dev = I8042::new(state.clone());
        let mut b = [0xffu8];
        dev.read(4, &mut b);
        assert_eq!(
            b[0], 0,
            "status must say the input buffer is empty, or the kernel waits"
        );
        dev.write(0, &[CMD_RESET_CPU]);
        dev.write(4, &[0xaa]);
        assert_eq!(state.exit_reason(), None);
        dev.write(4, &[CMD_RESET_CPU]);
        assert_eq!(state.exit_reason(), Some(VmExitReason::Reset));
    }
}
