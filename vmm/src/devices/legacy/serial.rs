//! COM1, a 16550 UART (vm-superio) whose output goes to a host writer (the monitor's
//! stderr with a debug console). Off unless asked for: with no serial the kernel gets
//! `8250.nr_uarts=0`.

use std::io::Write;

use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Raises the serial IRQ through an irqfd.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The guest's serial console.
pub struct SerialConsole {
    serial: Serial<EventFdTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

/// The UART's registers as a snapshot saves them (vm-superio's `SerialState`, which is not
/// serializable).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedSerial {
    pub registers: [u8; 9],
    pub in_buffer: Vec<u8>,
}

impl SerialConsole {
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            serial: Serial::new(EventFdTrigger(irq), out),
        }
    }

    /// A console whose UART is where a snapshot's was; `None` if the saved state is not
    /// one a UART can be in (more input than its FIFO holds).
    pub fn restored(irq: EventFd, out: Box<dyn Write + Send>, saved: &SavedSerial) -> Option<Self> {
        let [dl, dh, ier, iir, lcr, lsr, mcr, msr, scr] = saved.registers;
        let state = SerialState {
            baud_divisor_low: dl,
            baud_divisor_high: dh,
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch: scr,
            in_buffer: saved.in_buffer.clone(),
        };
        Serial::from_state(&state, EventFdTrigger(irq), NoEvents, out)
            .ok()
            .map(|serial| Self { serial })
    }

    /// The UART's registers, for a snapshot.
    pub fn save(&self) -> SavedSerial {
        let s = self.serial.state();
        SavedSerial {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        }
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset >= 8 {
            data.fill(0xff);
            return;
        }
        data[0] = self.serial.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < 8 {
            // A failing host writer only loses console output; the guest goes on.
            let _ = self.serial.write(offset as u8, data[0]);
        }
    }
}
