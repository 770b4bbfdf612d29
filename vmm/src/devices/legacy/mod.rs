//! Port-I/O devices: the 16550 serial console, the i8042 reset line and the boot timer.

mod boot_timer;
mod i8042;
mod serial;

pub use boot_timer::{BootTimer, BootTimes};
pub use i8042::I8042;
pub use serial::{SavedSerial, SerialConsole};
