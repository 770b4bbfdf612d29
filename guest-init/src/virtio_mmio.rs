//! The platform devices of the VM's virtio-mmio slots, `virtio-mmio.<N>`.
//!
//! virtio-mmio has no hotplug: the host builds the VM with spare slots, empty at boot,
//! whose platform devices the guest's driver leaves unbound. Once the host has put a
//! device in one (a member container's share; at a warm start the container's share and
//! NICs), init binds its platform device to the driver, which probes it again (within
//! the write) and finds the device; unbinding lets the device go (the driver resets it),
//! so that the host can empty the slot. VM only: host test mode has no such devices.

use crate::error::{Error, Result};
use std::path::Path;

/// The virtio-mmio platform driver's directory in sysfs (its `bind` and `unbind` files).
const DRIVER: &str = "/sys/bus/platform/drivers/virtio-mmio";

/// The name of platform device number `platform`.
pub fn device_name(platform: u32) -> String {
    format!("virtio-mmio.{platform}")
}

/// Checks that `name` is a virtio-mmio platform device's name, `virtio-mmio.<N>` (N
/// decimal digits, at most 9), and nothing else: it becomes a write to a sysfs file.
pub fn check_device_name(name: &str) -> Result<&str> {
    let ok = name
        .strip_prefix("virtio-mmio.")
        .is_some_and(|n| !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()));
    if !ok {
        return Err(Error::new(format!(
            "device {name:?} is not a virtio-mmio platform device (virtio-mmio.<N>)"
        )));
    }
    Ok(name)
}

/// Binds the platform device `name` to the driver. A device bound already is left so.
pub fn bind(name: &str) -> Result<()> {
    let name = check_device_name(name)?;
    match write_driver_file("bind", name) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        Err(e) => Err(Error::new(format!(
            "bind the device {name} ({DRIVER}/bind): {e}"
        ))),
    }
}

/// Unbinds the platform device `name` from the driver. A device not bound (its probe
/// failed, or it was unbound already) is left so.
pub fn unbind(name: &str) -> Result<()> {
    let name = check_device_name(name)?;
    match write_driver_file("unbind", name) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(Error::new(format!(
            "unbind the device {name} ({DRIVER}/unbind): {e}"
        ))),
    }
}

fn write_driver_file(file: &str, name: &str) -> std::io::Result<()> {
    use std::io::Write;
    let path = Path::new(DRIVER).join(file);
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_virtio_mmio_platform_device_names_pass() {
        for good in ["virtio-mmio.0", "virtio-mmio.4", "virtio-mmio.123456789"] {
            assert_eq!(check_device_name(good).unwrap(), good);
        }
        for bad in [
            "",
            "virtio-mmio.",
            "virtio-mmio",
            "virtio-mmio.-1",
            "virtio-mmio.+1",
            "virtio-mmio.1 ",
            "virtio-mmio.1\n",
            "virtio-mmio.1/../../x",
            "virtio-mmio.0x1",
            "virtio-mmio.1234567890",
            "serial8250",
            "../virtio-mmio.1",
            "virtio-mmio.١",
        ] {
            let e = check_device_name(bad).unwrap_err();
            assert!(
                e.message.contains("virtio-mmio.<N>"),
                "{bad:?}: {}",
                e.message
            );
        }
    }

    #[test]
    fn a_device_number_names_its_platform_device() {
        assert_eq!(device_name(3), "virtio-mmio.3");
        assert!(check_device_name(&device_name(999_999_999)).is_ok());
        // Platform device numbers stay far below this; the name check refuses it.
        assert!(check_device_name(&device_name(u32::MAX)).is_err());
    }

    #[test]
    fn a_bad_name_is_refused_before_sysfs_is_touched() {
        // Fails on the name, whatever this machine's sysfs has.
        for bad in ["virtio-mmio.3/..", "platform"] {
            assert!(bind(bad).unwrap_err().message.contains("virtio-mmio.<N>"));
            assert!(unbind(bad).unwrap_err().message.contains("virtio-mmio.<N>"));
        }
    }
}
