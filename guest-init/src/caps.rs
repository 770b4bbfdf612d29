//! `process.capabilities`, applied as runc does (its `finalizeNamespace`): drop from the
//! bounding set what is not listed, keep the permitted set across the uid switch with
//! `PR_SET_KEEPCAPS`, then set effective, permitted and inheritable with `capset` and raise
//! the ambient set.

use crate::error::{Error, Result};
use nix::errno::Errno;
use runvm_protocol::{Capabilities, CAPABILITY_NAMES as NAMES};

/// A capability set as a bit mask (bit n = capability n).
pub type Mask = u64;

/// The resolved sets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sets {
    pub bounding: Mask,
    pub effective: Mask,
    pub permitted: Mask,
    pub inheritable: Mask,
    pub ambient: Mask,
}

/// The number of a capability name (`CAP_CHOWN`; case and the `CAP_` prefix are optional,
/// as in oci-spec).
pub fn number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    NAMES.iter().position(|n| *n == full).map(|i| i as u32)
}

/// Resolves every set; all unknown names are reported together.
pub fn resolve(c: &Capabilities) -> Result<Sets> {
    let mut unknown: Vec<String> = Vec::new();
    let mut mask = |names: &[String]| -> Mask {
        let mut m = 0;
        for n in names {
            match number(n) {
                Some(b) => m |= 1 << b,
                None if !unknown.contains(n) => unknown.push(n.clone()),
                None => {}
            }
        }
        m
    };
    let sets = Sets {
        bounding: mask(&c.bounding),
        effective: mask(&c.effective),
        permitted: mask(&c.permitted),
        inheritable: mask(&c.inheritable),
        ambient: mask(&c.ambient),
    };
    if unknown.is_empty() {
        Ok(sets)
    } else {
        Err(Error::new(format!(
            "unknown capabilities in process.capabilities: {}",
            unknown.join(", ")
        )))
    }
}

fn name(cap: u32) -> &'static str {
    NAMES.get(cap as usize).copied().unwrap_or("CAP_?")
}

fn prctl(op: libc::c_int, a: libc::c_ulong, b: libc::c_ulong) -> std::result::Result<i32, Errno> {
    // SAFETY: the prctl operations used here take integer arguments only.
    let rc = unsafe { libc::prctl(op, a, b, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    Errno::result(rc)
}

/// The highest capability the kernel knows (`PR_CAPBSET_READ` fails with EINVAL above it).
fn last_cap() -> u32 {
    let mut last = 0;
    while last < 63 && prctl(libc::PR_CAPBSET_READ, u64::from(last + 1), 0).is_ok() {
        last += 1;
    }
    last
}

/// Step 1, before the uid switch: drop from the bounding set every capability that is not
/// listed, and ask the kernel to keep the permitted set across `setuid`.
pub fn before_user_switch(sets: &Sets) -> Result<()> {
    for cap in 0..=last_cap() {
        if sets.bounding & (1 << cap) == 0 {
            prctl(libc::PR_CAPBSET_DROP, u64::from(cap), 0).map_err(|e| {
                Error::new(format!("drop {} from the bounding set: {e}", name(cap)))
            })?;
        }
    }
    prctl(libc::PR_SET_KEEPCAPS, 1, 0)
        .map_err(|e| Error::new(format!("prctl(PR_SET_KEEPCAPS): {e}")))?;
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Step 2, after the uid switch: `capset` the effective, permitted and inheritable sets,
/// then raise the ambient ones.
pub fn after_user_switch(sets: &Sets) -> Result<()> {
    prctl(libc::PR_SET_KEEPCAPS, 0, 0)
        .map_err(|e| Error::new(format!("prctl(PR_SET_KEEPCAPS, 0): {e}")))?;
    let last = last_cap();
    let valid: Mask = if last >= 63 {
        !0
    } else {
        (1 << (last + 1)) - 1
    };
    let split = |m: Mask| [(m & valid) as u32, ((m & valid) >> 32) as u32];
    let (e, p, i) = (
        split(sets.effective),
        split(sets.permitted),
        split(sets.inheritable),
    );
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [0, 1].map(|w| CapData {
        effective: e[w],
        permitted: p[w],
        inheritable: i[w],
    });
    // SAFETY: capset reads one header and, for version 3, two data structs; both are live
    // and laid out as the kernel's `__user_cap_header_struct` / `__user_cap_data_struct`.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    Errno::result(rc).map_err(|e| {
        Error::new(format!(
            "capset (effective {:#x}, permitted {:#x}, inheritable {:#x}): {e}",
            sets.effective, sets.permitted, sets.inheritable
        ))
    })?;
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        0,
    )
    .map_err(|e| Error::new(format!("clear the ambient capabilities: {e}")))?;
    for cap in 0..=last {
        if sets.ambient & (1 << cap) != 0 {
            match prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                u64::from(cap),
            ) {
                // The kernel raises only a capability that is permitted and inheritable.
                // runc ignores its refusal, and `runc spec` itself asks for ambient
                // capabilities that are not inheritable: the process runs without them.
                Ok(_) | Err(Errno::EPERM) => {}
                Err(e) => {
                    return Err(Error::new(format!(
                        "raise ambient capability {}: {e}",
                        name(cap)
                    )))
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_kernel_numbers() {
        assert_eq!(number("CAP_CHOWN"), Some(0));
        assert_eq!(number("CAP_KILL"), Some(5));
        assert_eq!(number("net_bind_service"), Some(10));
        assert_eq!(number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("CAP_NOPE"), None);
    }

    #[test]
    fn sets_resolve_and_unknown_names_are_all_named() {
        let c = Capabilities {
            bounding: vec!["CAP_CHOWN".into(), "CAP_KILL".into()],
            effective: vec!["CAP_KILL".into()],
            ambient: vec!["CAP_NET_BIND_SERVICE".into()],
            ..Default::default()
        };
        let s = resolve(&c).unwrap();
        assert_eq!(s.bounding, 0x21);
        assert_eq!(s.effective, 0x20);
        assert_eq!(s.permitted, 0);
        assert_eq!(s.ambient, 0x400);
        let c = Capabilities {
            bounding: vec!["CAP_FOO".into(), "CAP_CHOWN".into()],
            permitted: vec!["CAP_BAR".into(), "CAP_FOO".into()],
            ..Default::default()
        };
        assert_eq!(
            resolve(&c).unwrap_err().message,
            "unknown capabilities in process.capabilities: CAP_FOO, CAP_BAR"
        );
    }
}
