//! The guest's network: loopback up, and each virtio-net interface configured as the host
//! mirrored it from the container's network namespace (found by MAC; renamed to the
//! namespace's name, `eth0`; MTU, addresses, routes), through rtnetlink (the container
//! image need not have `ip`). IPv6 is on or off as in the namespace
//! (`net.ipv6.conf.*.disable_ipv6`, which Docker sets on a network without IPv6), set
//! before each interface comes up so that a disabled one never gets `::1` or a link-local
//! address; the container's own `linux.sysctl`, written later, still wins.

use std::net::IpAddr;

use runvm_netlink::route::{IFA_F_NODAD, IFF_LOOPBACK, RTN_UNICAST, RTPROT_BOOT, RT_TABLE_MAIN};
use runvm_netlink::{Link, Route, Socket};
use runvm_protocol::{InterfaceSpec, Ipv6Conf, NetworkSpec};

use crate::error::{Context, Error, Result};

fn mac_string(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn ip(s: &str, what: &str) -> Result<IpAddr> {
    s.parse()
        .map_err(|_| Error::new(format!("network: bad {what} {s:?} from the host")))
}

/// Where the guest kernel keeps IPv6's per-interface settings.
const IPV6_CONF: &str = "/proc/sys/net/ipv6/conf";

/// `disable_ipv6` of `name` (`all`, `default` or an interface), in the order to write
/// them: `all` first, as writing it sets every interface and `default`.
fn global_ipv6_settings(conf: &Ipv6Conf) -> Vec<(&'static str, bool)> {
    [
        ("all", conf.all),
        ("default", conf.default),
        ("lo", conf.lo),
    ]
    .into_iter()
    .filter_map(|(name, disabled)| Some((name, disabled?)))
    .collect()
}

/// Writes `net.ipv6.conf.<name>.disable_ipv6` under `conf`. A kernel without IPv6 (no
/// such file) has nothing to follow.
fn set_ipv6_disabled(conf: &std::path::Path, name: &str, disabled: bool) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::new(format!(
            "network: bad interface name {name:?} from the host"
        )));
    }
    let path = conf.join(name).join("disable_ipv6");
    match std::fs::write(&path, if disabled { "1" } else { "0" }) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.with_context(|| format!("network: write {}", path.display())),
    }
}

/// Brings `lo` up and configures every interface of `spec`.
pub fn configure(spec: &NetworkSpec) -> Result<()> {
    let conf = std::path::Path::new(IPV6_CONF);
    // Before any interface is up: `all` and `default` reach the NICs, and `lo` gets
    // `::1` only if IPv6 is on for it.
    for (name, disabled) in global_ipv6_settings(&spec.ipv6) {
        set_ipv6_disabled(conf, name, disabled)?;
    }
    let mut s = Socket::route().context("network: netlink socket")?;
    let links = s.links().context("network: list interfaces")?;
    for lo in links.iter().filter(|l| l.flags & IFF_LOOPBACK != 0) {
        s.set_link(lo.index, true, None)
            .context("network: bring lo up")?;
    }
    // Find every NIC first, and move them out of the way of the names they will get
    // (the kernel's eth0 may be the NIC that must become eth1).
    let mut found: Vec<(u32, &InterfaceSpec)> = Vec::new();
    for (i, iface) in spec.interfaces.iter().enumerate() {
        let want = iface.mac.to_ascii_lowercase();
        let link: &Link = links
            .iter()
            .find(|l| mac_string(&l.mac) == want)
            .ok_or_else(|| {
                let have: Vec<String> = links
                    .iter()
                    .map(|l| format!("{} {}", l.name, mac_string(&l.mac)))
                    .collect();
                Error::new(format!(
                    "network: no interface with MAC {want} for {} (the guest has: {})",
                    iface.name,
                    have.join(", ")
                ))
            })?;
        s.rename_link(link.index, &format!("rvnet{i}"))
            .context("network: rename")?;
        found.push((link.index, iface));
    }
    for (index, iface) in found {
        configure_one(&mut s, index, iface)?;
    }
    Ok(())
}

fn configure_one(s: &mut Socket, index: u32, iface: &InterfaceSpec) -> Result<()> {
    let name = &iface.name;
    s.rename_link(index, name)
        .with_context(|| format!("network: name the interface {name}"))?;
    if let Some(disabled) = iface.ipv6_disabled {
        set_ipv6_disabled(std::path::Path::new(IPV6_CONF), name, disabled)?;
    }
    s.set_link(index, true, Some(iface.mtu))
        .with_context(|| format!("network: bring {name} up with MTU {}", iface.mtu))?;
    for a in &iface.addresses {
        let addr = ip(&a.addr, "address")?;
        // The address is already the container's (the namespace holds it): no duplicate
        // address detection, so that it is usable at once.
        let flags = if addr.is_ipv6() { IFA_F_NODAD } else { 0 };
        match s.add_address(index, addr, a.prefix_len, flags) {
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            r => r.with_context(|| format!("network: {name}"))?,
        }
    }
    for r in &iface.routes {
        let route = Route {
            dst: r.dst.as_deref().map(|d| ip(d, "route")).transpose()?,
            dst_len: r.dst_len,
            gateway: r.gateway.as_deref().map(|g| ip(g, "gateway")).transpose()?,
            oif: Some(index),
            prefsrc: r.prefsrc.as_deref().map(|p| ip(p, "source")).transpose()?,
            priority: r.metric,
            table: u32::from(RT_TABLE_MAIN),
            protocol: RTPROT_BOOT,
            scope: r.scope,
            kind: RTN_UNICAST,
            ipv6: r.ipv6,
        };
        match s.add_route(&route) {
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            res => res.with_context(|| format!("network: {name}"))?,
        }
    }
    crate::log::info(&format!(
        "network: {name} ({}) configured: {} addresses, {} routes",
        iface.mac,
        iface.addresses.len(),
        iface.routes.len()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_written_before_default_and_lo_and_unknown_ones_not_at_all() {
        let conf = Ipv6Conf {
            all: Some(true),
            default: None,
            lo: Some(false),
        };
        assert_eq!(global_ipv6_settings(&conf), [("all", true), ("lo", false)]);
        assert!(global_ipv6_settings(&Ipv6Conf::default()).is_empty());
    }

    #[test]
    fn disable_ipv6_is_written_under_the_interface_and_names_stay_inside() {
        let dir = std::env::temp_dir().join(format!("runvm-guest-ipv6-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("eth0")).unwrap();
        set_ipv6_disabled(&dir, "eth0", true).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("eth0/disable_ipv6")).unwrap(),
            "1"
        );
        set_ipv6_disabled(&dir, "eth0", false).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("eth0/disable_ipv6")).unwrap(),
            "0"
        );
        // No such interface setting (a kernel without IPv6): nothing to do.
        set_ipv6_disabled(&dir, "eth1", true).unwrap();
        for bad in ["", "..", "a/b"] {
            assert!(set_ipv6_disabled(&dir, bad, true).is_err(), "{bad:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
