//! Against the kernel, in a private network namespace (needs root, and fails without it,
//! naming what is missing): links and addresses read back as set, and the tc rules runvm
//! uses are accepted (read back with iproute2's `tc`).

use std::net::IpAddr;
use std::os::fd::{FromRawFd, OwnedFd};

use runvm_netlink::tc::{Action, Match, ETH_P_ALL, ETH_P_ARP, ETH_P_IP};
use runvm_netlink::Socket;

/// Runs `f` on a thread of its own in a new network namespace; panics, saying what is
/// missing, when the namespace cannot be made.
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare(2) of this thread's network namespace only.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!(
                "cannot make a network namespace (unshare(CLONE_NEWNET): {}): this test needs root (CAP_SYS_ADMIN)",
                std::io::Error::last_os_error()
            );
        }
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn tap(name: &str) -> OwnedFd {
    // SAFETY: open(2) of the tun device; checked below.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    assert!(
        fd >= 0,
        "open /dev/net/tun: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    req[16..18].copy_from_slice(&((libc::IFF_TAP | libc::IFF_NO_PI) as u16).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a 40-byte ifreq.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            0x400454ca,
            req.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    fd
}

#[test]
fn links_addresses_routes_and_tc_rules() {
    in_new_netns(|| {
        let _a = tap("rvt-a");
        let _b = tap("rvt-b");
        let mut s = Socket::route().unwrap();
        let links = s.links().unwrap();
        let a = links.iter().find(|l| l.name == "rvt-a").unwrap().clone();
        let b = links.iter().find(|l| l.name == "rvt-b").unwrap().clone();
        assert_eq!(a.kind.as_deref(), Some("tun"));
        assert_eq!(a.mac.len(), 6);
        s.set_link(a.index, true, Some(1400)).unwrap();
        let addr: IpAddr = "10.9.8.7".parse().unwrap();
        s.add_address(a.index, addr, 24, 0).unwrap();
        let v6: IpAddr = "fd00::7".parse().unwrap();
        s.add_address(a.index, v6, 64, runvm_netlink::route::IFA_F_NODAD)
            .unwrap();
        let again = s.add_address(a.index, addr, 24, 0).unwrap_err();
        assert_eq!(again.errno(), Some(libc::EEXIST));
        let a2 = s
            .links()
            .unwrap()
            .into_iter()
            .find(|l| l.index == a.index)
            .unwrap();
        assert_eq!(a2.mtu, 1400);
        let addrs = s.addresses().unwrap();
        assert!(addrs
            .iter()
            .any(|x| x.index == a.index && x.addr == addr && x.prefix_len == 24));
        assert!(addrs
            .iter()
            .any(|x| x.index == a.index && x.addr == v6 && x.prefix_len == 64));
        let gw: IpAddr = "10.9.8.1".parse().unwrap();
        let default = runvm_netlink::Route {
            dst: None,
            dst_len: 0,
            gateway: Some(gw),
            oif: Some(a.index),
            prefsrc: None,
            priority: None,
            table: 254,
            protocol: runvm_netlink::route::RTPROT_BOOT,
            scope: 0,
            kind: 1,
            ipv6: false,
        };
        s.add_route(&default).unwrap();
        let routes = s.routes(false).unwrap();
        assert!(
            routes
                .iter()
                .any(|r| r.dst.is_none() && r.gateway == Some(gw)),
            "{routes:?}"
        );

        s.add_ingress_qdisc(a.index).unwrap();
        assert_eq!(
            s.add_ingress_qdisc(a.index).unwrap_err().errno(),
            Some(libc::EEXIST)
        );
        s.add_ingress_filter(a.index, 1, ETH_P_ARP, Match::All, Action::Mirror(b.index))
            .unwrap();
        let ports = Match::DstPort {
            ipv6: false,
            ip_proto: 17,
            port: 0xfc00,
            mask: 0xfc00,
        };
        s.add_ingress_filter(a.index, 2, ETH_P_IP, ports, Action::Pass)
            .unwrap();
        s.add_ingress_filter(a.index, 3, ETH_P_ALL, Match::All, Action::Redirect(b.index))
            .unwrap();
        let out = std::process::Command::new("tc")
            .args(["filter", "show", "dev", "rvt-a", "ingress"])
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run tc to read the filters back (is iproute2 installed?): {e}")
            });
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "tc filter show failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("u32"), "{text}");
        assert!(text.contains("Egress Mirror to device rvt-b"), "{text}");
        assert!(text.contains("Egress Redirect to device rvt-b"), "{text}");
        assert!(text.contains("match 00110000/00ff0000 at 8"), "{text}");
        assert!(text.contains("match 0000fc00/0000fc00 at 20"), "{text}");
        s.delete_ingress_qdisc(a.index).unwrap();
        s.delete_link(b.index).unwrap();
        assert!(!s.links().unwrap().iter().any(|l| l.name == "rvt-b"));
    });
}
