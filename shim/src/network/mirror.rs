//! Mirroring the container's network namespace into the guest, at `start`.
//!
//! For every Ethernet interface of the namespace that is up (Docker's veth `eth0`, more
//! after `docker network connect`), the monitor creates a TAP (`runvm-tapN`) beside it
//! and redirects traffic both ways with tc, as Kata's "tcfilter" model does:
//! - veth ingress (from the bridge): ARP is mirrored to the TAP *and* left to the
//!   namespace's own stack; TCP/UDP to the namespace's ephemeral ports
//!   ([`NAMESPACE_PORTS`]) is left to the namespace's stack; everything else is
//!   redirected to the TAP, that is to the guest;
//! - TAP ingress (from the guest): everything is redirected out of the veth.
//!
//! The namespace keeps its addresses and its own sockets: Docker's embedded DNS server
//! forwards external queries from inside the namespace, and needs ARP for its gateway
//! and the answers to its queries. Its ephemeral ports are moved to [`NAMESPACE_PORTS`]
//! (`net.ipv4.ip_local_port_range` of the namespace), which the guest's kernel never
//! picks (its range is Linux's default, 32768–60999), so answers to the namespace's
//! sockets stay in the namespace and answers to the guest's go to the guest.
//!
//! The guest gets one virtio-net device per interface, with the interface's MAC and MTU,
//! and is told its addresses and routes (main table; kernel-made and RA routes are left
//! to the guest's kernel). An empty namespace gives the guest loopback only.
//!
//! Teardown deletes the veths' ingress qdiscs (their filters go with them), the TAPs and
//! restores the port range. It runs when the [`Mirror`] is dropped, and from the cleanup
//! guard (via the record file written before each change) if the monitor is killed; a
//! TAP also vanishes by itself when the monitor's descriptor closes. Once the monitor
//! has dropped its privileges (and with them `CAP_NET_ADMIN`), it hands the teardown
//! over ([`Mirror::hand_over`]): the guard runs it from the record, on the monitor's
//! request when the VM has stopped, or when the monitor has gone.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use runvm_netlink::route::{
    IFF_LOOPBACK, IFF_UP, RTN_UNICAST, RTPROT_KERNEL, RTPROT_RA, RT_SCOPE_LINK, RT_TABLE_MAIN,
};
use runvm_netlink::tc::{Action, Match, ETH_P_ALL, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6};
use runvm_netlink::{Link, Socket};
use runvm_protocol::{AddressSpec, InterfaceSpec, Ipv6Conf, RouteSpec};
use serde::{Deserialize, Serialize};
use vmm::NetConfig;

use super::{tap, NetworkError};

/// Names of the TAPs runvm creates (`runvm-tap0`, `runvm-tap1`, …).
pub const TAP_PREFIX: &str = "runvm-tap";
/// The namespace's own ephemeral ports: 64512–65535, as a u32 port/mask match.
pub const NAMESPACE_PORTS: (u16, u16) = (0xfc00, 0xfc00);
const NAMESPACE_PORT_RANGE: &str = "64512 65535";
const PORT_RANGE_SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_port_range";
/// The namespace's per-interface IPv6 settings (`<name>/disable_ipv6`).
const IPV6_CONF: &str = "/proc/sys/net/ipv6/conf";

/// What has been changed in the namespace, written to the record file before each change.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Record {
    /// Interfaces that got an ingress qdisc.
    veths: Vec<u32>,
    /// TAPs created.
    taps: Vec<String>,
    /// The namespace's port range before we changed it.
    port_range: Option<String>,
}

/// The mirrored interfaces of a running container; undone when dropped.
pub struct Mirror {
    record_path: PathBuf,
    record: Record,
    nics: Vec<NetConfig>,
    interfaces: Vec<InterfaceSpec>,
    /// IPv6 of the namespace as a whole and of its loopback.
    ipv6: Ipv6Conf,
    /// The record is someone else's to undo ([`Mirror::hand_over`]).
    handed_over: bool,
}

fn mirror_err(name: &str) -> impl Fn(runvm_netlink::Error) -> NetworkError + '_ {
    move |e| NetworkError::Mirror {
        name: name.to_string(),
        message: e.to_string(),
    }
}

fn mac_string(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Whether `link` is mirrored into the guest, or why not.
fn eligible(link: &Link) -> Result<(), &'static str> {
    if link.flags & IFF_LOOPBACK != 0 {
        return Err("loopback");
    }
    if link.name.starts_with(TAP_PREFIX) {
        return Err("a runvm TAP");
    }
    if link.mac.len() != 6 || link.mac.iter().all(|&b| b == 0) {
        return Err("not an Ethernet interface");
    }
    if link.flags & IFF_UP == 0 {
        return Err("down");
    }
    Ok(())
}

impl Mirror {
    /// Mirrors every eligible interface of the current network namespace. On error,
    /// whatever was done is undone before returning.
    pub fn setup(record_path: &Path) -> Result<Self, NetworkError> {
        let mut m = Mirror {
            record_path: record_path.to_path_buf(),
            record: Record::default(),
            nics: Vec::new(),
            interfaces: Vec::new(),
            ipv6: ipv6_conf(Path::new(IPV6_CONF)),
            handed_over: false,
        };
        match m.setup_all() {
            Ok(()) => Ok(m),
            Err(e) => {
                m.teardown();
                Err(e)
            }
        }
    }

    fn save(&self) -> Result<(), NetworkError> {
        let text = serde_json::to_string(&self.record).unwrap_or_default();
        std::fs::write(&self.record_path, text).map_err(|e| NetworkError::Mirror {
            name: "(record)".into(),
            message: format!("cannot write {}: {e}", self.record_path.display()),
        })
    }

    fn setup_all(&mut self) -> Result<(), NetworkError> {
        let mut s = Socket::route().map_err(NetworkError::Read)?;
        let links = s.links().map_err(NetworkError::Read)?;
        // A runvm TAP that is up belongs to a running monitor (ours are set up at once).
        if let Some(t) = links
            .iter()
            .find(|l| l.name.starts_with(TAP_PREFIX) && l.flags & IFF_UP != 0)
        {
            return Err(NetworkError::Refused(format!(
                "the network namespace already has runvm's {} (another runvm container uses it); a runvm container needs a network namespace of its own",
                t.name
            )));
        }
        let addresses = s.addresses().map_err(NetworkError::Read)?;
        let mut routes = s.routes(false).map_err(NetworkError::Read)?;
        routes.extend(s.routes(true).map_err(NetworkError::Read)?);
        let mirrored: Vec<&Link> = links
            .iter()
            .filter(|l| match eligible(l) {
                Ok(()) => true,
                Err(why) => {
                    log::debug!("network: not mirroring {} ({why})", l.name);
                    false
                }
            })
            .collect();
        if mirrored.is_empty() {
            return Ok(());
        }
        let old = std::fs::read_to_string(PORT_RANGE_SYSCTL).map_err(|e| NetworkError::Mirror {
            name: "(namespace)".into(),
            message: format!("cannot read {PORT_RANGE_SYSCTL}: {e}"),
        })?;
        self.record.port_range = Some(old.trim().replace('\t', " "));
        self.save()?;
        std::fs::write(PORT_RANGE_SYSCTL, NAMESPACE_PORT_RANGE).map_err(|e| {
            NetworkError::Mirror {
                name: "(namespace)".into(),
                message: format!("cannot set {PORT_RANGE_SYSCTL}: {e}"),
            }
        })?;
        for (i, link) in mirrored.into_iter().enumerate() {
            self.mirror_one(&mut s, i, link, &addresses, &routes)?;
        }
        Ok(())
    }

    fn mirror_one(
        &mut self,
        s: &mut Socket,
        i: usize,
        link: &Link,
        addresses: &[runvm_netlink::Address],
        routes: &[runvm_netlink::Route],
    ) -> Result<(), NetworkError> {
        let name = format!("{TAP_PREFIX}{i}");
        let err = mirror_err(&link.name);
        // Recorded once it exists: a device of that name that was there before is not
        // ours to delete. (A TAP dies with its descriptor anyway.)
        let fd = tap::create(&name).map_err(NetworkError::Tap)?;
        self.record.taps.push(name.clone());
        self.save()?;
        let tap_index = s
            .links()
            .map_err(&err)?
            .into_iter()
            .find(|l| l.name == name)
            .map(|l| l.index)
            .ok_or_else(|| NetworkError::Mirror {
                name: link.name.clone(),
                message: format!("the TAP {name} vanished after its creation"),
            })?;
        s.set_link(tap_index, true, Some(link.mtu)).map_err(&err)?;

        self.record.veths.push(link.index);
        self.save()?;
        if let Err(e) = s.add_ingress_qdisc(link.index) {
            if e.errno() == Some(libc::EEXIST) {
                // Not ours: forget it so that teardown leaves it alone.
                self.record.veths.pop();
                self.save()?;
                return Err(NetworkError::Refused(format!(
                    "interface {} of the network namespace already has an ingress qdisc (is another runvm container using this namespace?); runvm needs it to mirror the interface",
                    link.name
                )));
            }
            return Err(err(e));
        }
        let (port, mask) = NAMESPACE_PORTS;
        let veth = link.index;
        s.add_ingress_filter(veth, 1, ETH_P_ARP, Match::All, Action::Mirror(tap_index))
            .map_err(&err)?;
        let mut prio = 2;
        for (ipv6, protocol) in [(false, ETH_P_IP), (true, ETH_P_IPV6)] {
            for ip_proto in [libc::IPPROTO_TCP as u8, libc::IPPROTO_UDP as u8] {
                let m = Match::DstPort {
                    ipv6,
                    ip_proto,
                    port,
                    mask,
                };
                s.add_ingress_filter(veth, prio, protocol, m, Action::Pass)
                    .map_err(&err)?;
                prio += 1;
            }
        }
        s.add_ingress_filter(veth, 10, ETH_P_ALL, Match::All, Action::Redirect(tap_index))
            .map_err(&err)?;
        s.add_ingress_qdisc(tap_index).map_err(&err)?;
        s.add_ingress_filter(tap_index, 1, ETH_P_ALL, Match::All, Action::Redirect(veth))
            .map_err(&err)?;

        let mut mac = [0u8; 6];
        mac.copy_from_slice(&link.mac);
        let mut spec = interface_spec(link, addresses, routes);
        spec.ipv6_disabled = ipv6_disabled(Path::new(IPV6_CONF), &link.name);
        self.interfaces.push(spec);
        self.nics.push(NetConfig {
            tap: fd,
            mac,
            mtu: u16::try_from(link.mtu).unwrap_or(u16::MAX),
        });
        log::debug!(
            "network: {} ({}) mirrored into {name}",
            link.name,
            mac_string(&link.mac)
        );
        Ok(())
    }

    /// The TAPs, for the VMM (taken once).
    pub fn take_nics(&mut self) -> Vec<NetConfig> {
        std::mem::take(&mut self.nics)
    }

    /// What the guest must configure.
    pub fn interfaces(&self) -> &[InterfaceSpec] {
        &self.interfaces
    }

    /// IPv6 of the namespace (`all`, `default`, `lo`), for the guest to follow.
    pub fn ipv6(&self) -> Ipv6Conf {
        self.ipv6
    }

    /// Whether nothing was changed in the namespace (nothing to undo).
    pub fn is_empty(&self) -> bool {
        let r = &self.record;
        r.veths.is_empty() && r.taps.is_empty() && r.port_range.is_none()
    }

    /// Leaves the teardown to whoever undoes the record file ([`teardown_recorded`]: the
    /// cleanup guard), for a process about to lose the privilege to do it itself: when
    /// dropped, the mirror then leaves the namespace and its record as they are.
    pub fn hand_over(mut self) {
        self.handed_over = true;
    }

    /// Undoes everything recorded (idempotent).
    pub fn teardown(&mut self) {
        self.nics.clear();
        undo(&self.record);
        self.record = Record::default();
        let _ = std::fs::remove_file(&self.record_path);
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        if !self.handed_over {
            self.teardown();
        }
    }
}

/// `<conf>/<name>/disable_ipv6` (the current network namespace's under `/proc/sys`):
/// `None` when it cannot be read (a kernel without IPv6) or says neither 0 nor 1.
fn ipv6_disabled(conf: &Path, name: &str) -> Option<bool> {
    let text = std::fs::read_to_string(conf.join(name).join("disable_ipv6")).ok()?;
    match text.trim() {
        "0" => Some(false),
        "1" => Some(true),
        other => {
            log::debug!("network: {name}: disable_ipv6 is {other:?}; left to the guest");
            None
        }
    }
}

/// IPv6 of the namespace as a whole (`all`, `default`) and of its loopback.
fn ipv6_conf(conf: &Path) -> Ipv6Conf {
    Ipv6Conf {
        all: ipv6_disabled(conf, "all"),
        default: ipv6_disabled(conf, "default"),
        lo: ipv6_disabled(conf, "lo"),
    }
}

/// The guest's view of `link`: its addresses (not IPv6 link-local ones, which the guest's
/// kernel makes itself from the same MAC) and its main-table routes.
fn interface_spec(
    link: &Link,
    addresses: &[runvm_netlink::Address],
    routes: &[runvm_netlink::Route],
) -> InterfaceSpec {
    let link_local =
        |a: &IpAddr| matches!(a, IpAddr::V6(v) if (v.segments()[0] & 0xffc0) == 0xfe80);
    let addresses = addresses
        .iter()
        .filter(|a| a.index == link.index && !link_local(&a.addr))
        .map(|a| AddressSpec {
            addr: a.addr.to_string(),
            prefix_len: a.prefix_len,
        })
        .collect();
    let mut routes: Vec<RouteSpec> = routes
        .iter()
        .filter(|r| {
            r.oif == Some(link.index)
                && r.table == u32::from(RT_TABLE_MAIN)
                && r.kind == RTN_UNICAST
                && r.protocol != RTPROT_KERNEL
                && r.protocol != RTPROT_RA
                && !r
                    .dst
                    .as_ref()
                    .is_some_and(|d| link_local(d) || d.is_multicast())
        })
        .map(|r| RouteSpec {
            dst: r.dst.map(|d| d.to_string()),
            dst_len: r.dst_len,
            gateway: r.gateway.map(|g| g.to_string()),
            prefsrc: r.prefsrc.map(|p| p.to_string()),
            metric: r.priority,
            scope: r.scope,
            ipv6: r.ipv6,
        })
        .collect();
    // Routes to the link first: the gateways of the others must be reachable.
    routes.sort_by_key(|r| (r.gateway.is_some(), r.scope != RT_SCOPE_LINK));
    InterfaceSpec {
        name: link.name.clone(),
        mac: mac_string(&link.mac),
        mtu: link.mtu,
        addresses,
        routes,
        ipv6_disabled: None,
    }
}

fn undo(record: &Record) {
    if record.veths.is_empty() && record.taps.is_empty() && record.port_range.is_none() {
        return;
    }
    match Socket::route() {
        Ok(mut s) => {
            for &veth in &record.veths {
                if let Err(e) = s.delete_ingress_qdisc(veth) {
                    log::debug!("network: teardown: {e}");
                }
            }
            let links = s.links().unwrap_or_default();
            for name in &record.taps {
                if let Some(l) = links.iter().find(|l| &l.name == name) {
                    if let Err(e) = s.delete_link(l.index) {
                        log::debug!("network: teardown of {name}: {e}");
                    }
                }
            }
        }
        Err(e) => log::warn!("network: teardown: cannot open a netlink socket: {e}"),
    }
    if let Some(range) = &record.port_range {
        if let Err(e) = std::fs::write(PORT_RANGE_SYSCTL, range) {
            log::warn!("network: teardown: cannot restore {PORT_RANGE_SYSCTL}: {e}");
        }
    }
}

/// Undoes what the record file at `path` says was done (the cleanup guard's part, after
/// the monitor died), and removes the file.
pub fn teardown_recorded(path: &Path) {
    if let Ok(text) = std::fs::read_to_string(path) {
        if let Ok(record) = serde_json::from_str::<Record>(&text) {
            undo(&record);
        }
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread of its own in a new network namespace; None without the
    /// privilege (then the test says so and passes: the guest suite covers it too).
    /// Runs `f` on a thread of its own in a new network namespace. This test needs root
    /// (CI runs as root): without the privilege it fails, it is never skipped.
    fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            // SAFETY: unshare(2) of this thread's network namespace only.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                panic!(
                    "this test needs a network namespace of its own (run as root): \
                     unshare(CLONE_NEWNET): {}",
                    std::io::Error::last_os_error()
                );
            }
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Stands in for Docker's veth (this test cannot assume the veth module): a TAP named
    /// `eth0`, up, with an address and a default route.
    fn fake_veth(s: &mut Socket) -> (std::os::fd::OwnedFd, u32) {
        let fd = tap::create("eth0").unwrap();
        let index = s
            .links()
            .unwrap()
            .into_iter()
            .find(|l| l.name == "eth0")
            .unwrap()
            .index;
        s.set_link(index, true, Some(1450)).unwrap();
        s.add_address(index, "10.77.0.2".parse().unwrap(), 24, 0)
            .unwrap();
        (fd, index)
    }

    fn state(s: &mut Socket) -> (Vec<String>, String) {
        let links = s.links().unwrap().into_iter().map(|l| l.name).collect();
        (links, std::fs::read_to_string(PORT_RANGE_SYSCTL).unwrap())
    }

    fn qdiscs(dev: &str) -> String {
        std::process::Command::new("tc")
            .args(["qdisc", "show", "dev", dev])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    #[test]
    fn mirrors_an_interface_and_undoes_it_on_drop_and_from_the_record() {
        in_new_netns(|| {
            let mut s = Socket::route().unwrap();
            let (_veth, index) = fake_veth(&mut s);
            let before = state(&mut s);
            let dir = std::env::temp_dir().join(format!("runvm-mirror-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let record = dir.join("network.json");

            // Docker's network without IPv6: disabled on the veth and the loopback.
            for name in ["eth0", "lo"] {
                std::fs::write(format!("{IPV6_CONF}/{name}/disable_ipv6"), "1").unwrap();
            }
            let mut m = Mirror::setup(&record).unwrap();
            let nics = m.take_nics();
            assert_eq!(nics.len(), 1);
            assert_eq!(m.interfaces()[0].ipv6_disabled, Some(true));
            assert_eq!(
                m.ipv6(),
                Ipv6Conf {
                    all: Some(false),
                    default: Some(false),
                    lo: Some(true)
                },
                "the guest is told the namespace's IPv6 settings"
            );
            assert_eq!(nics[0].mtu, 1450);
            let spec = &m.interfaces()[0];
            assert_eq!(spec.name, "eth0");
            assert_eq!(spec.addresses[0].addr, "10.77.0.2");
            let (links, range) = state(&mut s);
            assert!(links.contains(&"runvm-tap0".to_string()), "{links:?}");
            assert_eq!(
                range.split_whitespace().collect::<Vec<_>>(),
                ["64512", "65535"]
            );
            assert!(qdiscs("eth0").contains("ingress"));
            let tap = s
                .links()
                .unwrap()
                .into_iter()
                .find(|l| l.name == "runvm-tap0")
                .unwrap();
            assert_eq!(tap.mtu, 1450);
            assert!(tap.flags & IFF_UP != 0);
            // A second mirror of the same namespace is refused, and leaves the first alone.
            let e = Mirror::setup(&dir.join("second.json"))
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("another runvm container uses it"), "{e}");
            assert!(qdiscs("eth0").contains("ingress"));
            drop(nics);
            drop(m);
            assert_eq!(state(&mut s), before, "drop undoes everything");
            assert!(!qdiscs("eth0").contains("ingress"));
            assert!(!record.exists());

            // The mirror is handed over (the monitor drops its privileges): dropping it
            // leaves everything to the record, which the guard undoes.
            let mut m = Mirror::setup(&record).unwrap();
            let nics = m.take_nics();
            assert!(!m.is_empty());
            m.hand_over();
            assert!(record.exists());
            assert!(qdiscs("eth0").contains("ingress"), "left as it was");
            teardown_recorded(&record);
            assert_eq!(state(&mut s), before, "the record undoes everything");
            assert!(!record.exists());
            drop(nics);

            // The monitor dies (its Mirror never drops): the guard undoes the record.
            let mut m = Mirror::setup(&record).unwrap();
            let nics = m.take_nics();
            std::mem::forget(m);
            assert!(record.exists());
            teardown_recorded(&record);
            assert_eq!(state(&mut s), before, "the record undoes everything");
            assert!(!qdiscs("eth0").contains("ingress"));
            drop(nics);
            let _ = index;
            let _ = std::fs::remove_dir_all(&dir);
        });
    }

    fn link(name: &str, mac: &[u8], flags: u32) -> Link {
        Link {
            index: 2,
            name: name.into(),
            mac: mac.to_vec(),
            mtu: 1500,
            flags,
            kind: None,
        }
    }

    #[test]
    fn ipv6_settings_are_read_per_interface_and_missing_ones_are_none() {
        let dir = std::env::temp_dir().join(format!("runvm-ipv6conf-{}", std::process::id()));
        for (name, value) in [
            ("all", "1\n"),
            ("default", "0\n"),
            ("eth0", "1\n"),
            ("odd", "2\n"),
        ] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("disable_ipv6"), value).unwrap();
        }
        assert_eq!(
            ipv6_conf(&dir),
            Ipv6Conf {
                all: Some(true),
                default: Some(false),
                lo: None
            }
        );
        assert_eq!(ipv6_disabled(&dir, "eth0"), Some(true));
        assert_eq!(ipv6_disabled(&dir, "odd"), None);
        assert_eq!(ipv6_disabled(&dir, "eth1"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_ethernet_interfaces_that_are_up_are_mirrored() {
        let mac = [2, 0x42, 0xac, 0x11, 0, 2];
        assert_eq!(eligible(&link("eth0", &mac, IFF_UP)), Ok(()));
        assert!(eligible(&link("lo", &[0; 6], IFF_UP | IFF_LOOPBACK)).is_err());
        assert!(eligible(&link("eth1", &mac, 0)).is_err());
        assert!(eligible(&link("tunl0", &[0; 4], IFF_UP)).is_err());
        assert!(eligible(&link("runvm-tap0", &mac, IFF_UP)).is_err());
    }

    #[test]
    fn the_guest_gets_addresses_and_routes_but_not_what_its_kernel_makes() {
        let l = link("eth0", &[2, 0x42, 0xac, 0x11, 0, 2], IFF_UP);
        let a = |s: &str, p: u8, index: u32| runvm_netlink::Address {
            index,
            addr: s.parse().unwrap(),
            prefix_len: p,
            scope: 0,
            flags: 0,
        };
        let addrs = [
            a("172.17.0.2", 16, 2),
            a("fe80::42:acff:fe11:2", 64, 2),
            a("10.0.0.1", 8, 3),
            a("fd00::2", 64, 2),
        ];
        let r = |dst: Option<&str>, len: u8, gw: Option<&str>, protocol: u8, scope: u8| {
            runvm_netlink::Route {
                dst: dst.map(|d| d.parse().unwrap()),
                dst_len: len,
                gateway: gw.map(|g| g.parse().unwrap()),
                oif: Some(2),
                prefsrc: None,
                priority: None,
                table: 254,
                protocol,
                scope,
                kind: RTN_UNICAST,
                ipv6: false,
            }
        };
        let routes = [
            r(None, 0, Some("172.17.0.1"), 3, 0),
            r(Some("172.17.0.0"), 16, None, RTPROT_KERNEL, RT_SCOPE_LINK),
            r(Some("10.1.0.0"), 16, None, 4, RT_SCOPE_LINK),
        ];
        let spec = interface_spec(&l, &addrs, &routes);
        assert_eq!(spec.mac, "02:42:ac:11:00:02");
        let got: Vec<_> = spec
            .addresses
            .iter()
            .map(|a| format!("{}/{}", a.addr, a.prefix_len))
            .collect();
        assert_eq!(got, ["172.17.0.2/16", "fd00::2/64"]);
        assert_eq!(spec.routes.len(), 2, "{:?}", spec.routes);
        assert_eq!(
            spec.routes[0].dst.as_deref(),
            Some("10.1.0.0"),
            "link routes first"
        );
        assert_eq!(spec.routes[1].gateway.as_deref(), Some("172.17.0.1"));
    }
}
