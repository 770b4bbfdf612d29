//! Links, addresses and routes (`RTM_*LINK`, `RTM_*ADDR`, `RTM_*ROUTE`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{attrs, Error, Message, Result, Socket, NLM_F_CREATE, NLM_F_EXCL};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const IFA_FLAGS: u16 = 8;
/// `IFA_F_NODAD`: the address is usable at once (it is already ours: no duplicate check).
pub const IFA_F_NODAD: u32 = 0x02;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;

pub const RT_TABLE_MAIN: u8 = 254;
pub const RTPROT_KERNEL: u8 = 2;
pub const RTPROT_BOOT: u8 = 3;
pub const RTPROT_RA: u8 = 9;
pub const RTN_UNICAST: u8 = 1;
pub const RT_SCOPE_UNIVERSE: u8 = 0;
pub const RT_SCOPE_LINK: u8 = 253;

pub const IFF_UP: u32 = libc::IFF_UP as u32;
pub const IFF_LOOPBACK: u32 = libc::IFF_LOOPBACK as u32;

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The hardware address (Ethernet links: 6 bytes).
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub flags: u32,
    /// `IFLA_INFO_KIND` (`veth`, `tun`, `bridge`, …), when the driver says.
    pub kind: Option<String>,
}

/// An address of an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
    pub scope: u8,
    pub flags: u32,
}

/// A route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Option<IpAddr>,
    pub dst_len: u8,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub prefsrc: Option<IpAddr>,
    pub priority: Option<u32>,
    pub table: u32,
    pub protocol: u8,
    pub scope: u8,
    pub kind: u8,
    pub ipv6: bool,
}

fn family(ipv6: bool) -> u8 {
    if ipv6 {
        libc::AF_INET6 as u8
    } else {
        libc::AF_INET as u8
    }
}

fn ip_from(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        16 => {
            let a: [u8; 16] = b.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(a)))
        }
        _ => None,
    }
}

fn ip_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn u32_of(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// `struct ifinfomsg`.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0] = libc::AF_UNSPEC as u8;
    h[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

fn parse_link(p: &[u8]) -> Result<Link> {
    let h = p.get(..16).ok_or(Error::Malformed("ifinfomsg"))?;
    let index = i32::from_ne_bytes([h[4], h[5], h[6], h[7]]) as u32;
    let flags = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
    let mut link = Link {
        index,
        name: String::new(),
        mac: vec![],
        mtu: 0,
        flags,
        kind: None,
    };
    for (k, v) in attrs(&p[16..]) {
        match k {
            IFLA_IFNAME => link.name = cstr(v),
            IFLA_ADDRESS => link.mac = v.to_vec(),
            IFLA_MTU => link.mtu = u32_of(v).unwrap_or(0),
            IFLA_LINKINFO => {
                link.kind = attrs(v)
                    .find(|(k, _)| *k == IFLA_INFO_KIND)
                    .map(|(_, v)| cstr(v));
            }
            _ => {}
        }
    }
    Ok(link)
}

fn parse_address(p: &[u8]) -> Result<Option<Address>> {
    let h = p.get(..8).ok_or(Error::Malformed("ifaddrmsg"))?;
    let (prefix_len, mut flags, scope) = (h[1], u32::from(h[2]), h[3]);
    let index = u32::from_ne_bytes([h[4], h[5], h[6], h[7]]);
    let (mut local, mut address) = (None, None);
    for (k, v) in attrs(&p[8..]) {
        match k {
            IFA_LOCAL => local = ip_from(v),
            IFA_ADDRESS => address = ip_from(v),
            IFA_FLAGS => flags = u32_of(v).unwrap_or(flags),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on
    // point-to-point links); IPv6 sends only IFA_ADDRESS.
    Ok(local.or(address).map(|addr| Address {
        index,
        addr,
        prefix_len,
        scope,
        flags,
    }))
}

fn parse_route(p: &[u8]) -> Result<Route> {
    let h = p.get(..12).ok_or(Error::Malformed("rtmsg"))?;
    let mut r = Route {
        dst: None,
        dst_len: h[1],
        gateway: None,
        oif: None,
        prefsrc: None,
        priority: None,
        table: u32::from(h[4]),
        protocol: h[5],
        scope: h[6],
        kind: h[7],
        ipv6: i32::from(h[0]) == libc::AF_INET6,
    };
    for (k, v) in attrs(&p[12..]) {
        match k {
            RTA_DST => r.dst = ip_from(v),
            RTA_GATEWAY => r.gateway = ip_from(v),
            RTA_OIF => r.oif = u32_of(v),
            RTA_PREFSRC => r.prefsrc = ip_from(v),
            RTA_PRIORITY => r.priority = u32_of(v),
            RTA_TABLE => r.table = u32_of(v).unwrap_or(r.table),
            _ => {}
        }
    }
    Ok(r)
}

impl Socket {
    /// Every interface of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let msg = Message::new(&ifinfomsg(0, 0, 0));
        self.dump(RTM_GETLINK, &msg, "list interfaces")?
            .iter()
            .map(|p| parse_link(p))
            .collect()
    }

    /// Every address of the namespace (IPv4 and IPv6).
    pub fn addresses(&mut self) -> Result<Vec<Address>> {
        let msg = Message::new(&[libc::AF_UNSPEC as u8, 0, 0, 0, 0, 0, 0, 0]);
        let mut out = vec![];
        for p in self.dump(RTM_GETADDR, &msg, "list addresses")? {
            out.extend(parse_address(&p)?);
        }
        Ok(out)
    }

    /// Every route of the namespace, IPv4 or IPv6, all tables.
    pub fn routes(&mut self, ipv6: bool) -> Result<Vec<Route>> {
        let mut h = [0u8; 12];
        h[0] = family(ipv6);
        let msg = Message::new(&h);
        self.dump(RTM_GETROUTE, &msg, "list routes")?
            .iter()
            .map(|p| parse_route(p))
            .collect()
    }

    /// Sets a link up or down, and its MTU when given.
    pub fn set_link(&mut self, index: u32, up: bool, mtu: Option<u32>) -> Result<()> {
        let mut msg = Message::new(&ifinfomsg(index, if up { IFF_UP } else { 0 }, IFF_UP));
        if let Some(mtu) = mtu {
            msg.attr_u32(IFLA_MTU, mtu);
        }
        self.request(
            RTM_NEWLINK,
            0,
            &msg,
            &format!("configure interface {index}"),
        )
    }

    /// Renames a link (it must be down).
    pub fn rename_link(&mut self, index: u32, name: &str) -> Result<()> {
        let mut msg = Message::new(&ifinfomsg(index, 0, 0));
        msg.attr_str(IFLA_IFNAME, name);
        self.request(
            RTM_NEWLINK,
            0,
            &msg,
            &format!("rename interface {index} to {name}"),
        )
    }

    /// Deletes a link.
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let msg = Message::new(&ifinfomsg(index, 0, 0));
        self.request(RTM_DELLINK, 0, &msg, &format!("delete interface {index}"))
    }

    /// Adds an address to a link; `flags` are `IFA_F_*` (such as [`IFA_F_NODAD`]).
    pub fn add_address(
        &mut self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
        flags: u32,
    ) -> Result<()> {
        let mut h = [0u8; 8];
        h[0] = family(addr.is_ipv6());
        h[1] = prefix_len;
        h[2] = flags as u8;
        h[4..8].copy_from_slice(&index.to_ne_bytes());
        let mut msg = Message::new(&h);
        let b = ip_bytes(&addr);
        msg.attr(IFA_LOCAL, &b).attr(IFA_ADDRESS, &b);
        if flags > 0xff {
            msg.attr_u32(IFA_FLAGS, flags);
        }
        if let IpAddr::V4(v4) = addr {
            if prefix_len < 31 {
                let host = u32::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
                let bcast = Ipv4Addr::from(u32::from(v4) | host);
                msg.attr(IFA_BROADCAST, &bcast.octets());
            }
        }
        self.request(
            RTM_NEWADDR,
            NLM_F_CREATE | NLM_F_EXCL,
            &msg,
            &format!("add address {addr}/{prefix_len} to interface {index}"),
        )
    }

    /// Adds a route (as [`Socket::routes`] describes it).
    pub fn add_route(&mut self, r: &Route) -> Result<()> {
        let mut h = [0u8; 12];
        h[0] = family(r.ipv6);
        h[1] = r.dst_len;
        h[4] = u8::try_from(r.table).unwrap_or(0);
        h[5] = r.protocol;
        h[6] = r.scope;
        h[7] = r.kind;
        let mut msg = Message::new(&h);
        if let Some(d) = &r.dst {
            msg.attr(RTA_DST, &ip_bytes(d));
        }
        if let Some(g) = &r.gateway {
            msg.attr(RTA_GATEWAY, &ip_bytes(g));
        }
        if let Some(o) = r.oif {
            msg.attr_u32(RTA_OIF, o);
        }
        if let Some(s) = &r.prefsrc {
            msg.attr(RTA_PREFSRC, &ip_bytes(s));
        }
        if let Some(p) = r.priority {
            msg.attr_u32(RTA_PRIORITY, p);
        }
        msg.attr_u32(RTA_TABLE, r.table);
        let what = match (&r.dst, &r.gateway) {
            (Some(d), _) => format!("{d}/{}", r.dst_len),
            (None, _) => "default".to_string(),
        };
        self.request(
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_EXCL,
            &msg,
            &format!("add route {what}"),
        )
    }
}
