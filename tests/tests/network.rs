//! Networking through `runvm create/start/run`, with network namespaces, veths and
//! bridges the tests make themselves (standing in for Docker's): the guest mirrors the
//! namespace (loopback only, one or two interfaces with the veth's MAC, addresses and
//! routes), traffic flows both ways (ping, HTTP), DNS to 127.0.0.11 reaches a resolver in
//! the namespace whose own outbound traffic keeps working, bad namespaces are refused,
//! and nothing (TAP, qdisc, port range, process, state) is left behind.
//! Run with `cargo xtask guest-test network`.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use runvm_tests::*;

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh_ok(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A bridge on the test host with a veth into a network namespace: Docker's default
/// bridge in small. Subnet 10.<n>.0.0/24, bridge .1, namespace end .2 named `ifname`.
struct Wire {
    bridge: String,
    host_end: String,
    n: u32,
}

impl Wire {
    fn ip(&self) -> String {
        format!("10.{}.0.2", self.n)
    }
    fn gateway(&self) -> String {
        format!("10.{}.0.1", self.n)
    }
    fn mac(&self) -> String {
        format!("02:00:0a:{:02x}:00:02", self.n)
    }
}

/// A network namespace (`ip netns add`) with its wires; removed on drop, after checking
/// that runvm left nothing in it.
struct Netns {
    name: String,
    wires: Vec<Wire>,
}

impl Netns {
    fn new() -> Self {
        let name = format!(
            "rvtest-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        sh(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ));
        Self {
            name,
            wires: vec![],
        }
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Adds a veth `ifname` into the namespace, on a new bridge.
    fn wire(&mut self, ifname: &str) -> &Wire {
        let n = 100 + (std::process::id() % 50) * 2 + NEXT.fetch_add(1, Ordering::SeqCst) % 100;
        let n = n % 250 + 1;
        let (bridge, host_end) = (format!("rvbr{n}"), format!("rvh{n}"));
        let w = Wire {
            bridge,
            host_end,
            n,
        };
        let ns = &self.name;
        sh(&format!(
            "ip link add {br} type bridge && ip addr add {gw}/24 dev {br} && ip link set {br} up && \
             ip link add {he} type veth peer name rvtmp{n} && ip link set {he} master {br} up && \
             ip link set rvtmp{n} netns {ns} && ip -n {ns} link set rvtmp{n} name {ifname} && \
             ip -n {ns} link set {ifname} address {mac} && ip -n {ns} addr add {ip}/24 dev {ifname} && \
             ip -n {ns} link set {ifname} up",
            br = w.bridge,
            gw = w.gateway(),
            he = w.host_end,
            mac = w.mac(),
            ip = w.ip(),
        ));
        if self.wires.is_empty() {
            sh(&format!("ip -n {ns} route add default via {}", w.gateway()));
        }
        self.wires.push(w);
        self.wires.last().unwrap()
    }

    /// Asserts that runvm's plumbing is gone from the namespace.
    fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let links = sh(&format!("ip -n {} -o link", self.name));
            let qdiscs = sh(&format!("tc -n {} qdisc show", self.name));
            let range = sh(&format!(
                "ip netns exec {} cat /proc/sys/net/ipv4/ip_local_port_range",
                self.name
            ));
            let clean = !links.contains("runvm-tap")
                && !qdiscs.contains("ingress")
                && range.split_whitespace().collect::<Vec<_>>() == ["32768", "60999"];
            if clean {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left in namespace {}: links {links} qdiscs {qdiscs} port range {range}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("ip")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status();
        };
        quiet(&["netns", "del", &self.name]);
        for w in &self.wires {
            // Usually gone already: deleting the namespace deleted the veth pair.
            quiet(&["link", "del", &w.host_end]);
            quiet(&["link", "del", &w.bridge]);
        }
    }
}

/// A bundle running `script` under `sh -c` in the namespace at `netns` (None: a new one),
/// with an optional resolv.conf bind mount (the host reads its nameservers).
fn bundle(script: &str, netns: Option<&str>, resolv_conf: Option<&str>) -> Bundle {
    let rootfs = test_rootfs();
    let mut namespaces = default_namespaces();
    if let Some(p) = netns {
        for ns in namespaces.as_array_mut().unwrap() {
            if ns["type"] == "network" {
                ns["path"] = serde_json::json!(p);
            }
        }
    }
    let b = Bundle::from_config("{}");
    let mut mounts = vec![];
    if let Some(text) = resolv_conf {
        let f = b.path().join("resolv.conf");
        std::fs::write(&f, text).unwrap();
        mounts.push(serde_json::json!({
            "destination": "/etc/resolv.conf", "type": "bind",
            "source": f, "options": ["rbind", "ro"],
        }));
    }
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": { "user": { "uid": 0, "gid": 0 }, "args": ["sh", "-c", script],
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "cwd": "/" },
        "root": { "path": rootfs },
        "hostname": "nettest",
        "mounts": mounts,
        "linux": { "namespaces": namespaces },
    });
    std::fs::write(b.path().join("config.json"), config.to_string()).unwrap();
    b
}

fn run_ok(root: &StateRoot, b: &Bundle, id: &str) -> String {
    let out = root.run(b, id, b"");
    assert_eq!(
        code(&out),
        0,
        "stdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn an_empty_namespace_gives_the_guest_loopback_only() {
    let root = StateRoot::new();
    let ns = Netns::new();
    for (id, path) in [("joined", Some(ns.path())), ("new", None)] {
        let b = bundle("ip -o link", path.as_deref(), None);
        let out = run_ok(&root, &b, id);
        let links: Vec<&str> = out.lines().collect();
        assert_eq!(links.len(), 1, "{id}: {out}");
        assert!(
            links[0].contains(": lo:") && links[0].contains("UP"),
            "{id}: {out}"
        );
    }
    ns.assert_clean();
    root.assert_clean(Duration::from_secs(2));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn the_guest_has_the_veths_address_and_mac_and_talks_both_ways() {
    let root = StateRoot::new();
    let mut ns = Netns::new();
    let (ip, gw, mac) = {
        let w = ns.wire("eth0");
        (w.ip(), w.gateway(), w.mac())
    };
    let script = format!(
        "mkdir -p /tmp/www && echo hello-from-runvm > /tmp/www/index.html && httpd -p 80 -h /tmp/www && \
         ip -o addr show eth0; ip -o link show eth0; ip route; \
         ping -c 1 -W 5 {gw} >/dev/null && echo PING-OK; echo READY; sleep 600"
    );
    let b = bundle(&script, Some(&ns.path()), None);
    let (out, pid) = root.create(&b, "web");
    assert_eq!(code(&out), 0, "create: {}", stderr(&out));
    let pid = pid.unwrap();
    let out = root.cmd(&["start", "web"]);
    assert_eq!(code(&out), 0, "start: {}", stderr(&out));
    b.wait_for_stdout("READY", Duration::from_secs(60));
    let seen = b.stdout();
    assert!(seen.contains(&format!("inet {ip}/24")), "{seen}");
    assert!(seen.contains(&format!("link/ether {mac}")), "{seen}");
    assert!(
        seen.contains(&format!("default via {gw} dev eth0")),
        "{seen}"
    );
    assert!(seen.contains("mtu 1500"), "{seen}");
    assert!(
        seen.contains("PING-OK"),
        "the container reaches the bridge: {seen}"
    );
    assert!(
        sh_ok(&format!("ping -c 1 -W 5 {ip} >/dev/null")),
        "the host pings the container"
    );
    let page = sh(&format!("curl -s --max-time 20 http://{ip}/index.html"));
    assert_eq!(page, "hello-from-runvm\n");
    // The namespace's plumbing while it runs: a TAP, ingress qdiscs, the port range.
    assert!(sh(&format!("ip -n {} -o link", ns.name)).contains("runvm-tap0"));
    assert!(sh(&format!("tc -n {} qdisc show dev eth0", ns.name)).contains("ingress"));

    assert_eq!(code(&root.cmd(&["kill", "web", "KILL"])), 0);
    assert_eq!(reap(pid, Duration::from_secs(30)), 137);
    assert_eq!(code(&root.cmd(&["delete", "web"])), 0);
    ns.assert_clean();
    root.assert_clean(Duration::from_secs(2));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn two_interfaces_give_two_configured_nics() {
    let root = StateRoot::new();
    let mut ns = Netns::new();
    let (ip0, mac0) = {
        let w = ns.wire("eth0");
        (w.ip(), w.mac())
    };
    let (ip1, mac1, gw1) = {
        let w = ns.wire("eth1");
        (w.ip(), w.mac(), w.gateway())
    };
    let b = bundle(
        &format!("ip -o addr; ip -o link; ping -c 1 -W 5 {gw1} >/dev/null && echo PING1-OK"),
        Some(&ns.path()),
        None,
    );
    let out = run_ok(&root, &b, "two");
    let has = |ifname: &str, ip: &str| {
        out.lines()
            .any(|l| l.contains(&format!(" {ifname} ")) && l.contains(&format!("inet {ip}/24")))
    };
    assert!(has("eth0", &ip0), "{out}");
    assert!(has("eth1", &ip1), "{out}");
    assert!(out.contains(&mac0) && out.contains(&mac1), "{out}");
    assert!(out.contains("PING1-OK"), "{out}");
    ns.assert_clean();
    root.assert_clean(Duration::from_secs(2));
}

/// A DNS answer to `query` with one A record (or none).
fn dns_answer(query: &[u8], a: Option<[u8; 4]>) -> Vec<u8> {
    let mut end = 12;
    while end < query.len() && query[end] != 0 {
        end += usize::from(query[end]) + 1;
    }
    let qend = (end + 5).min(query.len());
    let mut r = query[..2].to_vec();
    r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(a.is_some()), 0, 0, 0, 0]);
    r.extend_from_slice(&query[12..qend]);
    if let Some(ip) = a {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        r.extend_from_slice(&ip);
    }
    r
}

fn qname_and_type(query: &[u8]) -> (String, u16) {
    let mut labels = vec![];
    let mut i = 12;
    while i < query.len() && query[i] != 0 {
        let n = usize::from(query[i]);
        labels.push(
            String::from_utf8_lossy(&query[i + 1..(i + 1 + n).min(query.len())]).into_owned(),
        );
        i += n + 1;
    }
    let t = query
        .get(i + 1..i + 3)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .unwrap_or(0);
    (labels.join("."), t)
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn dns_to_127_0_0_11_reaches_the_namespaces_resolver_whose_own_traffic_still_flows() {
    let root = StateRoot::new();
    let mut ns = Netns::new();
    let gw = ns.wire("eth0").gateway();
    // "Upstream" DNS on the bridge (the test host's side), as Docker's resolver forwards
    // external names to the host's nameservers.
    let upstream = UdpSocket::bind(format!("{gw}:5353")).unwrap();
    upstream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let up = std::thread::spawn(move || {
        let mut b = [0u8; 512];
        let mut served = 0;
        while let Ok((n, from)) = upstream.recv_from(&mut b) {
            upstream
                .send_to(&dns_answer(&b[..n], Some([10, 8, 8, 8])), from)
                .unwrap();
            served += 1;
        }
        served
    });
    // The resolver inside the namespace, on 127.0.0.11:53 (Docker's embedded DNS).
    let nspath = ns.path();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let resolver = std::thread::spawn(move || {
        let f = std::fs::File::open(&nspath).unwrap();
        // SAFETY: setns of this thread only.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let sock = UdpSocket::bind("127.0.0.11:53").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut b = [0u8; 512];
        let mut forwarded = 0;
        while let Ok((n, from)) = sock.recv_from(&mut b) {
            let (name, qtype) = qname_and_type(&b[..n]);
            let answer = match (name.as_str(), qtype) {
                ("inside.test", 1) => dns_answer(&b[..n], Some([10, 9, 9, 9])),
                ("outside.test", 1) => {
                    // Forward from the namespace's own stack, as Docker's resolver does.
                    let up = UdpSocket::bind("0.0.0.0:0").unwrap();
                    up.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    up.send_to(&b[..n], format!("{gw}:5353")).unwrap();
                    let mut a = [0u8; 512];
                    let m = up
                        .recv(&mut a)
                        .expect("the namespace's own query got no answer");
                    forwarded += 1;
                    a[..m].to_vec()
                }
                _ => dns_answer(&b[..n], None),
            };
            sock.send_to(&answer, from).unwrap();
        }
        forwarded
    });
    ready_rx.recv().unwrap();
    let b = bundle(
        "nslookup inside.test 127.0.0.11; nslookup outside.test 127.0.0.11",
        Some(&ns.path()),
        Some("nameserver 127.0.0.11\noptions ndots:0\n"),
    );
    let out = run_ok(&root, &b, "dns");
    assert!(
        out.contains("10.9.9.9"),
        "answer from the namespace's resolver: {out}"
    );
    assert!(
        out.contains("10.8.8.8"),
        "answer forwarded by the namespace: {out}"
    );
    // Stop the stand-ins (their sockets time out) only after the checks: drop is enough.
    ns.assert_clean();
    root.assert_clean(Duration::from_secs(2));
    drop(ns);
    let _ = (resolver, up);
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn bad_namespaces_and_an_impossible_tap_fail_cleanly() {
    let root = StateRoot::new();
    // A namespace path that does not exist: create fails, nothing is left.
    let b = bundle("true", Some("/run/netns/runvm-no-such-namespace"), None);
    let (out, pid) = root.create(&b, "nons");
    assert_eq!(code(&out), 1);
    assert!(pid.is_none());
    let err = std::fs::read_to_string(b.path().join("stderr")).unwrap();
    assert!(
        err.contains("/run/netns/runvm-no-such-namespace") && err.contains("does not exist"),
        "{err}"
    );
    root.assert_clean(Duration::from_secs(2));

    // --network host (no network namespace): refused with the reason.
    let rootfs = test_rootfs();
    let host = Bundle::from_config(
        &serde_json::json!({
            "ociVersion": "1.0.2",
            "process": { "args": ["true"], "cwd": "/", "user": { "uid": 0, "gid": 0 } },
            "root": { "path": rootfs },
            "linux": { "namespaces": [{ "type": "pid" }, { "type": "ipc" }, { "type": "mount" }] },
        })
        .to_string(),
    );
    let out = root.run(&host, "hostnet", b"");
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("--network host"), "{}", stderr(&out));
    root.assert_clean(Duration::from_secs(2));

    // The host's own namespace by path (what --network container:X of a process in it
    // would give): refused at create, host networking untouched.
    let b = bundle("true", Some("/proc/1/ns/net"), None);
    let (out, _) = root.create(&b, "hostpath");
    assert_eq!(code(&out), 1);
    let err = std::fs::read_to_string(b.path().join("stderr")).unwrap();
    assert!(err.contains("is the host's"), "{err}");
    root.assert_clean(Duration::from_secs(2));

    // A TAP that cannot be created (its name is taken by a TUN device): start fails with
    // the reason, and the namespace is as before (the TUN device stays: not ours).
    let mut ns = Netns::new();
    ns.wire("eth0");
    sh(&format!("ip -n {} tuntap add runvm-tap0 mode tun", ns.name));
    let b = bundle("echo should-not-run", Some(&ns.path()), None);
    let (out, pid) = root.create(&b, "notap");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = root.cmd(&["start", "notap"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("TAP"), "{}", stderr(&out));
    assert_ne!(reap(pid.unwrap(), Duration::from_secs(30)), 0);
    assert_eq!(b.stdout(), "");
    let _ = root.cmd(&["delete", "notap"]);
    assert!(
        sh(&format!("ip -n {} -o link", ns.name)).contains("runvm-tap0"),
        "the TUN device is left alone"
    );
    sh(&format!("ip -n {} link del runvm-tap0", ns.name));
    ns.assert_clean();
    root.assert_clean(Duration::from_secs(2));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn a_killed_monitor_leaves_nothing_in_the_namespace() {
    let root = StateRoot::new();
    let mut ns = Netns::new();
    ns.wire("eth0");
    let b = bundle("echo READY; sleep 600", Some(&ns.path()), None);
    let (out, pid) = root.create(&b, "killed");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let pid = pid.unwrap();
    assert_eq!(code(&root.cmd(&["start", "killed"])), 0);
    b.wait_for_stdout("READY", Duration::from_secs(60));
    assert!(sh(&format!("tc -n {} qdisc show dev eth0", ns.name)).contains("ingress"));
    // SAFETY: signalling the monitor we created.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(reap(pid, Duration::from_secs(30)), 137);
    ns.assert_clean();
    let _ = root.cmd(&["delete", "killed"]);
    root.assert_clean(Duration::from_secs(5));
}

/// Sets the `path` of the `typ` namespace in `b`'s config.json.
fn join_namespace(b: &Bundle, typ: &str, path: &str) {
    let file = b.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    for ns in config["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == typ {
            ns["path"] = serde_json::json!(path);
        }
    }
    std::fs::write(&file, config.to_string()).unwrap();
}

/// A container created in the network namespace a running runvm container's VM holds
/// runs in that VM as a member (`docker run --network container:X`, a pod's containers):
/// its own root, PID namespace and exit code, the VM's network; `kill` and `exec` reach
/// it. Before that container runs, or with an IPC namespace that is not its, the create
/// fails and leaves nothing.
#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn a_container_in_a_running_containers_namespace_runs_in_its_vm() {
    let root = StateRoot::new();
    let mut ns = Netns::new();
    let ip = ns.wire("eth0").ip();
    let sandbox = bundle("echo READY; exec sleep 600", Some(&ns.path()), None);
    let (out, pid) = root.create(&sandbox, "sandbox");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let sandbox_pid = pid.unwrap();
    let script = "echo in-member; ip -o -4 addr show eth0; hostname; cat /proc/1/comm; exit 3";
    let member = bundle(script, Some(&ns.path()), None);
    // A created container has no VM yet.
    let (out, _) = root.create(&member, "member");
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("which is created")
            && stderr(&out).contains("start \"sandbox\" first"),
        "{}",
        stderr(&out)
    );
    assert_eq!(root.leftovers(), vec!["sandbox".to_string()]);

    assert_eq!(code(&root.cmd(&["start", "sandbox"])), 0);
    sandbox.wait_for_stdout("READY", Duration::from_secs(60));
    // An IPC namespace that is not the sandbox's: refused, nothing left.
    let stranger = bundle("true", Some(&ns.path()), None);
    join_namespace(&stranger, "ipc", "/proc/1/ns/ipc");
    let (out, _) = root.create(&stranger, "stranger");
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("the ipc namespace /proc/1/ns/ipc is not container \"sandbox\"'s"),
        "{}",
        stderr(&out)
    );
    assert_eq!(root.leftovers(), vec!["sandbox".to_string()]);

    let (out, pid) = root.create(&member, "member");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let member_pid = pid.unwrap();
    assert_eq!(root.status("member"), "created");
    let out = root.cmd(&["start", "member"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(reap(member_pid, Duration::from_secs(60)), 3);
    let said = member.wait_for_stdout("in-member", Duration::from_secs(5));
    assert!(
        said.contains(&format!("inet {ip}/24")),
        "the VM's eth0: {said}"
    );
    assert!(
        said.contains("nettest\nsh\n"),
        "hostname, and its own PID 1: {said}"
    );
    assert_eq!(root.status("member"), "stopped");
    assert_eq!(code(&root.cmd(&["delete", "member"])), 0);
    assert_eq!(root.status("sandbox"), "running");

    // A second member, reached by exec and stopped by kill; the sandbox sees none of it.
    let second = bundle("echo SECOND; exec sleep 700", Some(&ns.path()), None);
    let second_pid = root.running(&second, "second");
    second.wait_for_stdout("SECOND", Duration::from_secs(60));
    let out = root.cmd(&["exec", "second", "cat", "/proc/1/cmdline"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "sleep\u{0}700\u{0}");
    let out = root.cmd(&["exec", "sandbox", "cat", "/proc/1/cmdline"]);
    assert_eq!(stdout(&out), "sleep\u{0}600\u{0}", "{}", stderr(&out));
    // ps and events of the member are its own container's, from the guest.
    root.wait_for_guest_process("second", "sleep 700", Duration::from_secs(10));
    let out = root.cmd(&["ps", "second"]);
    assert!(!stdout(&out).contains("sleep 600"), "{}", stdout(&out));
    let out = root.cmd(&["events", "--stats", "second"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ev: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(ev["data"]["pids"]["current"], 1, "{ev}");
    assert!(
        ev["data"]["memory"]["usage"]["usage"].as_u64() > Some(0),
        "{ev}"
    );
    assert_eq!(code(&root.cmd(&["kill", "second", "KILL"])), 0);
    assert_eq!(reap(second_pid, Duration::from_secs(30)), 137);
    assert_eq!(code(&root.cmd(&["delete", "second"])), 0);

    assert_eq!(code(&root.cmd(&["kill", "sandbox", "KILL"])), 0);
    assert_eq!(reap(sandbox_pid, Duration::from_secs(30)), 137);
    assert_eq!(code(&root.cmd(&["delete", "sandbox"])), 0);
    ns.assert_clean();
    root.assert_clean(Duration::from_secs(5));
}
