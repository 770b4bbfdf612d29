//! Traffic control: the ingress qdisc of an interface and the filters on it, with the
//! actions runvm uses to mirror a veth into a TAP (`mirred` redirect and mirror), all on
//! the `u32` classifier (`matchall` and `flower` are modules some kernels lack).

use crate::{Message, Result, Socket, NLM_F_CREATE, NLM_F_EXCL};

const RTM_NEWQDISC: u16 = 36;
const RTM_DELQDISC: u16 = 37;
const RTM_NEWTFILTER: u16 = 44;

const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
/// The ingress qdisc's parent and handle (`ffff:`).
const TC_H_INGRESS: u32 = 0xffff_fff1;
const INGRESS_HANDLE: u32 = 0xffff_0000;

const TCA_U32_SEL: u16 = 5;
const TCA_U32_ACT: u16 = 7;
const TCA_U32_FLAGS: u16 = 11;
const TC_U32_TERMINAL: u8 = 1;
const TCA_CLS_FLAGS_SKIP_HW: u32 = 1;

const TCA_ACT_KIND: u16 = 1;
const TCA_ACT_OPTIONS: u16 = 2;
const TCA_MIRRED_PARMS: u16 = 2;
const TCA_EGRESS_REDIR: i32 = 1;
const TCA_EGRESS_MIRROR: i32 = 2;
const TC_ACT_OK: i32 = 0;
const TC_ACT_STOLEN: i32 = 4;

pub const ETH_P_ALL: u16 = 0x0003;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;

/// What a filter does with the packets it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send them out of interface `ifindex` instead (`mirred egress redirect`).
    Redirect(u32),
    /// Send a copy out of `ifindex` and let the original go on up the stack.
    Mirror(u32),
    /// Let them go on up the stack (no action: the filter's verdict is "ok").
    Pass,
}

/// What a filter matches (with the `u32` classifier, which every kernel with tc has;
/// offsets are from the network header and assume no IPv4 options or IPv6 extension
/// headers, which is what `tc ... match ip dport` assumes too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    /// Every packet of the filter's protocol.
    All,
    /// IPv4 (`ipv6: false`) or IPv6 packets of transport protocol `ip_proto` whose
    /// destination port, masked with `mask`, equals `port` (so `0xfc00`/`0xfc00` is
    /// 64512–65535).
    DstPort {
        ipv6: bool,
        ip_proto: u8,
        port: u16,
        mask: u16,
    },
}

impl Match {
    /// The u32 keys: (mask, value, offset), mask and value in host order.
    fn keys(&self) -> Vec<(u32, u32, i32)> {
        match *self {
            Match::All => vec![(0, 0, 0)],
            Match::DstPort {
                ipv6: false,
                ip_proto,
                port,
                mask,
            } => vec![
                (0x00ff_0000, u32::from(ip_proto) << 16, 8),
                (u32::from(mask), u32::from(port & mask), 20),
            ],
            Match::DstPort {
                ipv6: true,
                ip_proto,
                port,
                mask,
            } => vec![
                (0x0000_ff00, u32::from(ip_proto) << 8, 4),
                (u32::from(mask), u32::from(port & mask), 40),
            ],
        }
    }

    /// `struct tc_u32_sel` with its keys.
    fn selector(&self) -> Vec<u8> {
        let keys = self.keys();
        let mut b = vec![0u8; 16];
        b[0] = TC_U32_TERMINAL;
        b[2] = keys.len() as u8;
        for (mask, val, off) in keys {
            b.extend_from_slice(&mask.to_be_bytes());
            b.extend_from_slice(&val.to_be_bytes());
            b.extend_from_slice(&off.to_ne_bytes());
            b.extend_from_slice(&0i32.to_ne_bytes());
        }
        b
    }
}

/// `struct tcmsg`.
fn tcmsg(ifindex: u32, handle: u32, parent: u32, info: u32) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = libc::AF_UNSPEC as u8;
    h[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    h[8..12].copy_from_slice(&handle.to_ne_bytes());
    h[12..16].copy_from_slice(&parent.to_ne_bytes());
    h[16..20].copy_from_slice(&info.to_ne_bytes());
    h
}

/// `struct tc_mirred`: `tc_gen` (index, capab, action, refcnt, bindcnt), eaction, ifindex.
fn tc_mirred(control: i32, eaction: i32, ifindex: u32) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[8..12].copy_from_slice(&control.to_ne_bytes());
    b[20..24].copy_from_slice(&eaction.to_ne_bytes());
    b[24..28].copy_from_slice(&ifindex.to_ne_bytes());
    b
}

/// Appends the action list of a filter (as attribute `kind`).
fn actions(msg: &mut Message, kind: u16, action: Action) {
    let (control, eaction, ifindex) = match action {
        Action::Redirect(i) => (TC_ACT_STOLEN, TCA_EGRESS_REDIR, i),
        Action::Mirror(i) => (TC_ACT_OK, TCA_EGRESS_MIRROR, i),
        Action::Pass => return,
    };
    msg.nest(kind)
        .nest(1)
        .attr_str(TCA_ACT_KIND, "mirred")
        .nest(TCA_ACT_OPTIONS)
        .attr(TCA_MIRRED_PARMS, &tc_mirred(control, eaction, ifindex))
        .end_nest()
        .end_nest()
        .end_nest();
}

impl Socket {
    /// Adds the ingress qdisc to an interface (fails with `EEXIST` if it has one).
    pub fn add_ingress_qdisc(&mut self, ifindex: u32) -> Result<()> {
        let mut msg = Message::new(&tcmsg(ifindex, INGRESS_HANDLE, TC_H_INGRESS, 0));
        msg.attr_str(TCA_KIND, "ingress");
        self.request(
            RTM_NEWQDISC,
            NLM_F_CREATE | NLM_F_EXCL,
            &msg,
            &format!("add an ingress qdisc to interface {ifindex}"),
        )
    }

    /// Removes the ingress qdisc of an interface, and with it all its filters.
    pub fn delete_ingress_qdisc(&mut self, ifindex: u32) -> Result<()> {
        let mut msg = Message::new(&tcmsg(ifindex, INGRESS_HANDLE, TC_H_INGRESS, 0));
        msg.attr_str(TCA_KIND, "ingress");
        self.request(
            RTM_DELQDISC,
            0,
            &msg,
            &format!("delete the ingress qdisc of interface {ifindex}"),
        )
    }

    /// Adds a filter to the ingress qdisc of `ifindex`. `prio` orders filters (lower
    /// first); `protocol` is an `ETH_P_*` value.
    pub fn add_ingress_filter(
        &mut self,
        ifindex: u32,
        prio: u16,
        protocol: u16,
        matches: Match,
        action: Action,
    ) -> Result<()> {
        let info = (u32::from(prio) << 16) | u32::from(protocol.to_be());
        let mut msg = Message::new(&tcmsg(ifindex, 0, INGRESS_HANDLE, info));
        msg.attr_str(TCA_KIND, "u32")
            .nest(TCA_OPTIONS)
            .attr(TCA_U32_SEL, &matches.selector())
            .attr_u32(TCA_U32_FLAGS, TCA_CLS_FLAGS_SKIP_HW);
        actions(&mut msg, TCA_U32_ACT, action);
        msg.end_nest();
        self.request(
            RTM_NEWTFILTER,
            NLM_F_CREATE | NLM_F_EXCL,
            &msg,
            &format!("add a tc filter ({matches:?} -> {action:?}) to interface {ifindex}"),
        )
    }
}
