//! Docker networking acceptance tests (issue 6): the real `dockerd` and `docker` CLI put
//! runvm containers on `--network none`, the default bridge, published ports, user-defined
//! networks and `--link`, and each test checks what a user sees (addresses, pings, pages
//! fetched from the test host, names resolved). The harness (`tests/src/docker.rs`)
//! removes the containers after each test and asserts that no monitor, state directory,
//! mount or tap device is left.
//!
//! Run: `cargo xtask guest-test docker_net [-- FILTER]`. `RUNVM_DOCKER_RUNTIME=runc` runs
//! the same tests against runc as a control.

use std::process::Command;
use std::time::Duration;

use runvm_tests::docker::{self, Cli, Harness, BUSYBOX};

const TESTS: &[(&str, docker::TestFn)] = &[
    ("network_none_has_only_lo", network_none_has_only_lo),
    (
        "default_bridge_address_mac_and_pings",
        default_bridge_address_mac_and_pings,
    ),
    ("publish_port_serves_the_host", publish_port_serves_the_host),
    (
        "publish_all_gives_a_working_high_port",
        publish_all_gives_a_working_high_port,
    ),
    (
        "user_defined_network_names_and_isolation",
        user_defined_network_names_and_isolation,
    ),
    ("link_sets_env_and_hosts", link_sets_env_and_hosts),
    (
        "network_container_runs_in_the_same_vm",
        network_container_runs_in_the_same_vm,
    ),
];

fn main() {
    docker::main(docker::Engine::Docker, TESTS);
}

/// The page the test servers serve.
const PAGE: &str = "hello-from-runvm-httpd";

/// A shell command that serves [`PAGE`] on port 80 with busybox httpd, in the foreground.
fn httpd_script() -> String {
    format!("mkdir -p /www && echo {PAGE} > /www/index.html && exec httpd -f -p 80 -h /www")
}

/// An image that EXPOSEs port 80 and serves [`PAGE`] there.
fn web_image() -> String {
    format!(
        "FROM busybox\nEXPOSE 80\nCMD [\"sh\", \"-c\", \"{}\"]\n",
        httpd_script()
    )
}

/// `docker run -d --runtime=<rt> <net_args…> <args…>` (no `--network none`): the
/// container's id.
#[track_caller]
fn run_on(d: &Cli, net_args: &[&str], args: &[&str]) -> String {
    let mut v = vec!["run".to_string(), "-d".to_string()];
    v.extend(d.container_args(true));
    v.extend(net_args.iter().map(|s| s.to_string()));
    v.extend(args.iter().map(|s| s.to_string()));
    let out = d.cmd(&v.iter().map(String::as_str).collect::<Vec<_>>());
    out.ok();
    out.text().lines().last().unwrap_or("").to_string()
}

/// Fetches `url` from the test host, retrying (the server in the guest takes a moment to
/// listen) until it answers or `timeout` passes; the body.
#[track_caller]
fn fetch(url: &str, timeout: Duration) -> String {
    let mut last = None;
    let got = wait_for_or(timeout, || {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "10", url]);
        let out = docker::run_cmd_quiet(c, None, Duration::from_secs(20));
        let ok = out.code == 0;
        last = Some(out);
        ok.then(|| last.as_ref().unwrap().stdout.clone())
    });
    got.unwrap_or_else(|| panic!("no page at {url} within {timeout:?}: {last:?}"))
}

/// Polls `f` every 500 ms until it returns `Some` or `timeout` passes.
fn wait_for_or<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `docker exec NAME args…`, retried until it exits 0 (a guest server still starting,
/// a name not yet resolvable) or `timeout` passes; the last result.
fn exec_until_ok(d: &Cli, name: &str, args: &[&str], timeout: Duration) -> docker::Out {
    let mut v = vec!["exec", name];
    v.extend_from_slice(args);
    let mut last = d.cmd(&v);
    let deadline = std::time::Instant::now() + timeout;
    while last.code != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        last = d.cmd(&v);
    }
    last
}

/// A shell command that fetches `http://HOST/` with busybox nc (Debian's static busybox
/// `wget` crashes), printing the response with its headers.
fn http_get(host: &str) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n' | nc -w 10 {host} 80")
}

/// The body of an HTTP response (after the blank line ending the headers).
fn body(response: &str) -> &str {
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("")
        .trim()
}

/// The interface names `ip -o link` prints.
fn link_names(ip_o_link: &str) -> Vec<String> {
    ip_o_link
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// Networks made by a test, removed when it ends (even when it fails).
struct Networks<'a> {
    cli: &'a Cli,
    names: Vec<String>,
}

impl<'a> Networks<'a> {
    fn new(cli: &'a Cli) -> Self {
        Self { cli, names: vec![] }
    }

    #[track_caller]
    fn create(&mut self, name: &str, subnet: &str) {
        let _ = self.cli.cmd(&["network", "rm", name]);
        self.cli
            .cmd(&["network", "create", "--subnet", subnet, name])
            .ok();
        self.names.push(name.to_string());
    }
}

impl Drop for Networks<'_> {
    fn drop(&mut self) {
        // Containers on them first: a network in use cannot be removed.
        let ids = self.cli.all_containers();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            self.cli.cmd(&args);
        }
        for n in &self.names {
            let out = self.cli.cmd(&["network", "rm", n]);
            if out.code != 0 && !std::thread::panicking() {
                panic!("docker network rm {n} failed: {}", out.stderr);
            }
        }
    }
}

fn network_none_has_only_lo(h: &mut Harness) {
    let d = h.cli().clone();
    let out = d.run(&["--rm", BUSYBOX, "ip", "-o", "link"]);
    out.ok();
    assert_eq!(link_names(out.text()), vec!["lo"], "{}", out.text());
    let addr = d.run(&["--rm", BUSYBOX, "sh", "-c", IP_ADDRS]);
    addr.ok();
    let (v4, v6) = ip_addrs(addr.text());
    assert!(
        v4.contains("inet 127.0.0.1/8"),
        "lo is up with 127.0.0.1: {}",
        addr.text()
    );
    assert!(
        v4.lines().all(|l| l.contains(": lo ")),
        "no address but lo's: {}",
        addr.text()
    );
    // Docker disables IPv6 in a container on a network without it: not even ::1.
    assert!(
        !v4.contains("inet6") && v6.is_empty(),
        "no IPv6 address: {}",
        addr.text()
    );
    // Unless the container's own sysctl turns it back on.
    let on = d.run(&[
        "--rm",
        "--sysctl",
        "net.ipv6.conf.all.disable_ipv6=0",
        BUSYBOX,
        "sh",
        "-c",
        IP_ADDRS,
    ]);
    on.ok();
    let (v4, v6) = ip_addrs(on.text());
    assert!(
        v4.contains("inet6 ::1/128") && v6.contains("00000000000000000000000000000001"),
        "--sysctl net.ipv6.conf.all.disable_ipv6=0 gives lo ::1: {}",
        on.text()
    );
}

/// A shell command that prints the addresses (`ip -o addr`), a line `if_inet6:`, then
/// the kernel's IPv6 addresses (`/proc/net/if_inet6`).
const IP_ADDRS: &str = "ip -o addr; echo if_inet6:; cat /proc/net/if_inet6";

/// The two parts of what [`IP_ADDRS`] printed.
fn ip_addrs(out: &str) -> (&str, &str) {
    let (v4, v6) = out.split_once("if_inet6:").unwrap_or((out, ""));
    (v4, v6.trim())
}

fn default_bridge_address_mac_and_pings(h: &mut Harness) {
    let d = h.cli().clone();
    run_on(&d, &[], &["--name", "br", BUSYBOX, "sleep", "600"]);
    d.wait_status("br", "running", Duration::from_secs(120));
    let ip = d.inspect("br", "{{.NetworkSettings.IPAddress}}");
    let mac = d.inspect("br", "{{.NetworkSettings.MacAddress}}");
    let gateway = d.inspect("br", "{{.NetworkSettings.Gateway}}");
    assert!(
        !ip.is_empty() && !mac.is_empty() && !gateway.is_empty(),
        "docker gave the container an address ({ip:?}), a MAC ({mac:?}) and a gateway ({gateway:?})"
    );
    let addr = d.cmd(&["exec", "br", "ip", "-4", "-o", "addr", "show", "eth0"]);
    addr.ok();
    assert!(
        addr.text().contains(&format!("inet {ip}/")),
        "eth0 has {ip}: {}",
        addr.text()
    );
    // IPv6 is disabled on a network without it, as Docker does: no link-local address.
    let addrs = d.cmd(&["exec", "br", "sh", "-c", IP_ADDRS]);
    addrs.ok();
    let (v4, v6) = ip_addrs(addrs.text());
    assert!(
        !v4.contains("inet6") && v6.is_empty(),
        "no IPv6 address: {}",
        addrs.text()
    );
    let link = d.cmd(&["exec", "br", "ip", "-o", "link", "show", "eth0"]);
    link.ok();
    assert!(
        link.text().contains(&format!("link/ether {mac} ")),
        "eth0 has MAC {mac}: {}",
        link.text()
    );
    if h.is_runvm() {
        // The address is the guest kernel's: the container's uname is not the host's.
        let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let guest = d.cmd(&["exec", "br", "uname", "-r"]);
        guest.ok();
        assert_ne!(guest.text(), host.trim(), "exec ran in the guest");
    }
    let mut c = Command::new("ping");
    c.args(["-c", "2", "-W", "10", &ip]);
    docker::run_cmd(c, None, Duration::from_secs(60)).ok();
    d.cmd(&["exec", "br", "ping", "-c", "2", "-W", "10", &gateway])
        .ok();
}

fn publish_port_serves_the_host(h: &mut Harness) {
    let d = h.cli().clone();
    let script = httpd_script();
    run_on(
        &d,
        &["-p", "18080:80"],
        &["--name", "web", BUSYBOX, "sh", "-c", &script],
    );
    d.wait_status("web", "running", Duration::from_secs(120));
    let page = fetch("http://127.0.0.1:18080/", Duration::from_secs(120));
    assert_eq!(page.trim(), PAGE);
    // Through the bridge's address too (NAT rather than docker-proxy on loopback).
    let gateway = d.inspect("web", "{{.NetworkSettings.Gateway}}");
    let page = fetch(&format!("http://{gateway}:18080/"), Duration::from_secs(60));
    assert_eq!(page.trim(), PAGE);
}

fn publish_all_gives_a_working_high_port(h: &mut Harness) {
    let img = h.image("runvm-test-web", &web_image());
    let d = h.cli().clone();
    run_on(&d, &["-P"], &["--name", "webp", &img]);
    d.wait_status("webp", "running", Duration::from_secs(120));
    let port = d.cmd(&["port", "webp", "80/tcp"]);
    port.ok();
    // `0.0.0.0:49153` (and `:::49153` where IPv6 is on).
    let host_port: u16 = port
        .text()
        .lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("docker port printed no port: {:?}", port.text()));
    assert!(host_port >= 1024, "a high port: {host_port}");
    let page = fetch(
        &format!("http://127.0.0.1:{host_port}/"),
        Duration::from_secs(120),
    );
    assert_eq!(page.trim(), PAGE);
}

fn user_defined_network_names_and_isolation(h: &mut Harness) {
    let d = h.cli().clone();
    let mut nets = Networks::new(&d);
    nets.create("t", "172.30.1.0/24");
    nets.create("u", "172.30.2.0/24");
    let script = httpd_script();
    run_on(
        &d,
        &["--network", "t"],
        &["--name", "srv", BUSYBOX, "sh", "-c", &script],
    );
    run_on(
        &d,
        &["--network", "t"],
        &["--name", "cli", BUSYBOX, "sleep", "600"],
    );
    run_on(
        &d,
        &["--network", "u"],
        &["--name", "other", BUSYBOX, "sleep", "600"],
    );
    for n in ["srv", "cli", "other"] {
        d.wait_status(n, "running", Duration::from_secs(180));
    }
    let srv_ip = d.inspect("srv", "{{.NetworkSettings.Networks.t.IPAddress}}");
    assert!(srv_ip.starts_with("172.30.1."), "srv on t: {srv_ip}");
    // By name, through Docker's embedded DNS server.
    let ping = exec_until_ok(
        &d,
        "cli",
        &["ping", "-c", "1", "-W", "10", "srv"],
        Duration::from_secs(60),
    );
    ping.ok();
    assert!(
        ping.text().contains(&srv_ip),
        "srv resolved to {srv_ip}: {}",
        ping.text()
    );
    let page = exec_until_ok(
        &d,
        "cli",
        &[
            "sh",
            "-c",
            &format!("{} | grep -q {PAGE} && {0}", http_get("srv")),
        ],
        Duration::from_secs(60),
    );
    page.ok();
    assert_eq!(body(&page.stdout), PAGE, "{}", page.stdout);
    // From another network: the name does not resolve, and the address is unreachable.
    d.cmd(&["exec", "other", "ping", "-c", "1", "-W", "3", "srv"])
        .fails_with("bad address 'srv'");
    let ping = d.cmd(&["exec", "other", "ping", "-c", "2", "-W", "3", &srv_ip]);
    assert_ne!(ping.code, 0, "srv answers pings from u: {}", ping.text());
    let fetch = d.cmd(&["exec", "other", "sh", "-c", &http_get(&srv_ip)]);
    assert!(
        !fetch.stdout.contains(PAGE),
        "srv's page from u: {}",
        fetch.stdout
    );
    drop(nets);
}

fn link_sets_env_and_hosts(h: &mut Harness) {
    let img = h.image("runvm-test-web", &web_image());
    let d = h.cli().clone();
    run_on(&d, &[], &["--name", "linked", &img]);
    d.wait_status("linked", "running", Duration::from_secs(120));
    let ip = d.inspect("linked", "{{.NetworkSettings.IPAddress}}");
    run_on(
        &d,
        &["--link", "linked:web"],
        &["--name", "linker", BUSYBOX, "sleep", "600"],
    );
    d.wait_status("linker", "running", Duration::from_secs(120));
    let env = d.cmd(&["exec", "linker", "env"]);
    env.ok();
    let env: Vec<&str> = env.text().lines().collect();
    for want in [
        "WEB_NAME=/linker/web".to_string(),
        format!("WEB_PORT=tcp://{ip}:80"),
        format!("WEB_PORT_80_TCP_ADDR={ip}"),
        "WEB_PORT_80_TCP_PORT=80".to_string(),
    ] {
        assert!(env.contains(&want.as_str()), "{want} in {env:?}");
    }
    let hosts = d.cmd(&["exec", "linker", "cat", "/etc/hosts"]);
    hosts.ok();
    assert!(
        hosts.text().lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.first() == Some(&ip.as_str()) && w.contains(&"web") && w.contains(&"linked")
        }),
        "/etc/hosts maps web and linked to {ip}: {}",
        hosts.text()
    );
    let page = exec_until_ok(
        &d,
        "linker",
        &[
            "sh",
            "-c",
            &format!("{} | grep -q {PAGE} && {0}", http_get("web")),
        ],
        Duration::from_secs(60),
    );
    page.ok();
    assert_eq!(body(&page.stdout), PAGE, "{}", page.stdout);
}

/// `docker run --runtime=<rt> --network container:NAME <args…>`.
fn run_joined(d: &Cli, name: &str, args: &[&str]) -> docker::Out {
    let mut v = vec!["run".to_string()];
    v.extend(d.container_args(true));
    v.extend(["--network".to_string(), format!("container:{name}")]);
    v.extend(args.iter().map(|s| s.to_string()));
    d.cmd(&v.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The host processes whose command line (runvm's title) starts with `prefix`.
fn titled(prefix: &str) -> Vec<String> {
    docker::process_table()
        .into_iter()
        .filter(|(_, comm, cmd)| comm == "runvm" && cmd.starts_with(prefix))
        .map(|(pid, _, cmd)| format!("{pid}: {cmd}"))
        .collect()
}

/// docker-semantics 11.48: `--network container:web` shares web's network stack (its
/// localhost, its addresses: `ip addr` is the same), with a root filesystem and hostname
/// as under runc; under runvm the container runs in web's VM (one VM, no second network
/// stack), and comes and goes while web keeps serving.
fn network_container_runs_in_the_same_vm(h: &mut Harness) {
    let d = h.cli().clone();
    let script = httpd_script();
    run_on(&d, &[], &["--name", "web", BUSYBOX, "sh", "-c", &script]);
    d.wait_status("web", "running", Duration::from_secs(120));
    // A peer fetches web's page from its own localhost.
    let get = http_get("localhost");
    let mut last = None;
    let page = wait_for_or(Duration::from_secs(120), || {
        let out = run_joined(&d, "web", &["--rm", BUSYBOX, "sh", "-c", &get]);
        let ok = out.code == 0 && body(&out.stdout).trim() == PAGE;
        last = Some(out);
        ok.then_some(())
    });
    assert!(
        page.is_some(),
        "no page from localhost in a --network container:web peer: {last:?}"
    );
    run_joined(&d, "web", &["--rm", BUSYBOX, "sh", "-c", "exit 7"]).code_is(7);
    // With a terminal.
    let tty = run_joined(
        &d,
        "web",
        &["--rm", "-t", BUSYBOX, "sh", "-c", "tty; exit 4"],
    );
    tty.code_is(4);
    assert!(tty.stdout.starts_with("/dev/pts/"), "{tty:?}");

    run_on(
        &d,
        &["--network", "container:web"],
        &[
            "--name",
            "peer",
            BUSYBOX,
            "sh",
            "-c",
            "echo peer-only > /peer-file; exec sleep 600",
        ],
    );
    d.wait_status("peer", "running", Duration::from_secs(120));
    if h.is_runvm() {
        let vms = titled("runvm-vm ");
        assert_eq!(vms.len(), 1, "one VM for web and peer: {vms:?}");
        let members = titled("runvm-member ");
        assert_eq!(members.len(), 1, "peer's monitor holds no VM: {members:?}");
    }
    let web_addr = d.cmd(&["exec", "web", "ip", "addr"]);
    web_addr.ok();
    let peer_addr = d.cmd(&["exec", "peer", "ip", "addr"]);
    peer_addr.ok();
    assert_eq!(
        peer_addr.text(),
        web_addr.text(),
        "ip addr is web's in peer"
    );
    assert!(web_addr.text().contains("eth0"), "{}", web_addr.text());
    let web_host = d.cmd(&["exec", "web", "hostname"]);
    web_host.ok();
    d.cmd(&["exec", "peer", "hostname"]).prints(web_host.text());
    // Root filesystems of their own.
    wait_for_or(Duration::from_secs(30), || {
        (d.cmd(&["exec", "peer", "cat", "/peer-file"]).code == 0).then_some(())
    });
    d.cmd(&["exec", "peer", "cat", "/peer-file"])
        .prints("peer-only");
    let seen = d.cmd(&["exec", "web", "cat", "/peer-file"]);
    assert_ne!(seen.code, 0, "web sees no /peer-file: {seen:?}");
    d.cmd(&["exec", "peer", "sh", "-c", "exit 3"]).code_is(3);
    // Paused and unpaused on its own (web goes on serving meanwhile).
    d.cmd(&["pause", "peer"]).ok();
    assert_eq!(d.inspect("peer", "{{.State.Status}}"), "paused");
    let served = run_joined(&d, "web", &["--rm", BUSYBOX, "sh", "-c", &get]);
    assert_eq!(body(&served.stdout).trim(), PAGE, "{served:?}");
    d.cmd(&["unpause", "peer"]).ok();
    assert_eq!(d.inspect("peer", "{{.State.Status}}"), "running");
    d.cmd(&["exec", "peer", "cat", "/peer-file"])
        .prints("peer-only");

    // peer goes; web goes on serving.
    d.cmd(&["kill", "peer"]).ok();
    d.cmd(&["wait", "peer"]).prints("137");
    d.cmd(&["rm", "peer"]).ok();
    if h.is_runvm() {
        let members = titled("runvm-member ");
        assert!(members.is_empty(), "peer's monitor has ended: {members:?}");
    }
    // One killed for its own memory limit: 137 and OOMKilled, as under runc.
    let hog = [
        "--name",
        "hog",
        "--memory",
        "32m",
        BUSYBOX,
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=80M",
        "count=1",
    ];
    run_joined(&d, "web", &hog).code_is(137);
    assert_eq!(d.inspect("hog", "{{.State.OOMKilled}}"), "true");
    d.cmd(&["rm", "hog"]).ok();
    let again = run_joined(&d, "web", &["--rm", BUSYBOX, "sh", "-c", &get]);
    again.ok();
    assert_eq!(body(&again.stdout).trim(), PAGE, "{again:?}");
    assert_eq!(d.inspect("web", "{{.State.Status}}"), "running");
}
