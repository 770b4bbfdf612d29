//! The guest's network: loopback up, and each virtio-net interface configured as the host
//! mirrored it from the container's network namespace (found by MAC; renamed to the
//! namespace's name, `eth0`; MTU, addresses, routes), through rtnetlink (the container
//! image need not have `ip`).

use std::net::IpAddr;

use runvm_netlink::route::{IFA_F_NODAD, IFF_LOOPBACK, RTN_UNICAST, RTPROT_BOOT, RT_TABLE_MAIN};
use runvm_netlink::{Link, Route, Socket};
use runvm_protocol::{InterfaceSpec, NetworkSpec};

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

/// Brings `lo` up and configures every interface of `spec`.
pub fn configure(spec: &NetworkSpec) -> Result<()> {
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
