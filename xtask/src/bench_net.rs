//! `cargo xtask bench net [--secs N] [--requests N]`: TCP throughput (iperf3, both
//! directions) and HTTP request latency (a Rust client, one connection per request,
//! against busybox `httpd`) between the host and a container, for runvm and for runc, in
//! one run and the same place, with the same bundle and root filesystem. Each container
//! sits in a network namespace of its own with a veth on one bridge, as Docker's default
//! bridge network does. Prints a table with ratios and writes `bench/net.md` and
//! `bench/net.json`.
//!
//! Where: on this host's KVM when it can boot guests, else inside the nested test host
//! (TCG: every instruction is emulated, so only the runvm/runc ratios mean something
//! there). As `bench boot` does, the outer process re-runs this binary inside with
//! `--inside` and reads the raw numbers back from the shared target directory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::guests::{GuestSetup, Place};
use crate::util::{percentile, repo_root, target_dir};

#[derive(clap::Args)]
pub struct NetArgs {
    /// Seconds of each iperf3 run.
    #[arg(long, default_value_t = 10)]
    secs: u32,
    /// HTTP requests for the latency figures.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    #[arg(long, hide = true)]
    inside: bool,
    #[arg(long, hide = true)]
    out: Option<PathBuf>,
}

const BRIDGE: &str = "rvbench0";
const SUBNET: &str = "10.251.0";
const RUNTIMES: [&str; 2] = ["runvm", "runc"];

pub fn cmd(a: NetArgs) -> Result<i32> {
    if a.inside {
        let out = a.out.context("--inside needs --out")?;
        let raw = measure(a.secs, a.requests)?;
        std::fs::write(&out, serde_json::to_string_pretty(&raw)?)?;
        return Ok(0);
    }
    let (raw, place) = measure_inside(
        "net",
        &[
            "--secs".into(),
            a.secs.to_string(),
            "--requests".into(),
            a.requests.to_string(),
        ],
    )?;
    crate::util::write_results(
        &repo_root().join("bench"),
        "net",
        &markdown(&raw, place),
        &raw,
    )?;
    Ok(0)
}

/// Re-runs `xtask bench <what> --inside <args…> --out F` where guests boot (this host or
/// the test host, with runvm built in release) and reads the raw numbers back from F
/// in the shared target directory.
pub fn measure_inside(what: &str, args: &[String]) -> Result<(Value, Place)> {
    let setup = GuestSetup::prepare()?;
    let place = setup.choose_place()?;
    let dir = target_dir().join("runvm").join("bench");
    std::fs::create_dir_all(&dir)?;
    let raw_path = dir.join(format!("{what}-raw.json"));
    let _ = std::fs::remove_file(&raw_path);
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let mut argv: Vec<String> = vec![
        exe.display().to_string(),
        "bench".into(),
        what.into(),
        "--inside".into(),
    ];
    argv.extend(args.iter().cloned());
    argv.extend(["--out".into(), raw_path.display().to_string()]);
    let code = setup.run_at(place, &argv, &[("CI".into(), "1".into())])?;
    if code != 0 {
        bail!("the {what} benchmark failed (exit {code})");
    }
    let raw = serde_json::from_str(
        &std::fs::read_to_string(&raw_path)
            .with_context(|| format!("reading {}", raw_path.display()))?,
    )?;
    Ok((raw, place))
}

fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh").args(["-c", cmd]).output()?;
    if !out.status.success() {
        bail!(
            "`{cmd}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The bridge and one namespace per runtime; removed on drop.
struct Wiring;

impl Wiring {
    fn new() -> Result<Self> {
        let w = Wiring;
        w.remove();
        sh(&format!(
            "ip link add {BRIDGE} type bridge && ip addr add {SUBNET}.1/24 dev {BRIDGE} && ip link set {BRIDGE} up"
        ))?;
        for (i, who) in RUNTIMES.iter().enumerate() {
            sh(&format!(
                "ip netns add rvbench-{who} && ip -n rvbench-{who} link set lo up && \
                 ip link add rvbh-{who} type veth peer name rvbtmp && ip link set rvbh-{who} master {BRIDGE} up && \
                 ip link set rvbtmp netns rvbench-{who} && ip -n rvbench-{who} link set rvbtmp name eth0 && \
                 ip -n rvbench-{who} addr add {SUBNET}.{n}/24 dev eth0 && ip -n rvbench-{who} link set eth0 up && \
                 ip -n rvbench-{who} route add default via {SUBNET}.1",
                n = i + 2
            ))?;
        }
        Ok(w)
    }

    fn remove(&self) {
        for who in RUNTIMES {
            let _ = sh(&format!("ip netns del rvbench-{who}"));
            let _ = sh(&format!("ip link del rvbh-{who}"));
        }
        let _ = sh(&format!("ip link del {BRIDGE}"));
    }
}

impl Drop for Wiring {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The busybox root filesystem plus iperf3 and the libraries it links, and a page for
/// httpd.
fn build_rootfs(busybox: &Path, dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    sh(&format!("cp -a {} {}", busybox.display(), dir.display()))?;
    let iperf = sh("command -v iperf3")
        .context("iperf3 is not installed (it is in the test host image)")?;
    let iperf = iperf.trim();
    let mut files = vec![iperf.to_string()];
    for line in sh(&format!("ldd {iperf}"))?.lines() {
        if let Some(p) = line.split_whitespace().find(|w| w.starts_with('/')) {
            files.push(p.to_string());
        }
    }
    for f in files {
        let real = std::fs::canonicalize(&f)?;
        let dest = dir.join(f.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap_or(dir))?;
        std::fs::copy(&real, &dest).with_context(|| format!("copying {f}"))?;
    }
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www/index.html"), "runvm bench page\n")?;
    Ok(())
}

/// `runc spec`'s config (which runvm accepts whole), running the servers, in `netns`.
fn write_bundle(dir: &Path, rootfs: &Path, netns: &str) -> Result<()> {
    let mut c = crate::util::runc_spec(dir)?;
    c["root"] = json!({ "path": rootfs, "readonly": false });
    c["process"]["args"] = json!(["sh", "-c", "httpd -p 8080 -h /www && exec iperf3 -s"]);
    // iperf3 mmaps a scratch file in /tmp; under runc /tmp would be the bundle's root
    // directory, which in the test host is on 9p, where that fails. Both get a tmpfs.
    if let Some(m) = c["mounts"].as_array_mut() {
        m.push(
            json!({ "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777"] }),
        );
    }
    for ns in c["linux"]["namespaces"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        if ns["type"] == "network" {
            ns["path"] = json!(format!("/run/netns/{netns}"));
        }
    }
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&c)?)?;
    Ok(())
}

fn runtime_cmd(who: &str, runvm: &Path) -> Command {
    let mut c = match who {
        "runvm" => Command::new(runvm),
        _ => Command::new("runc"),
    };
    c.args(["--root", &format!("/run/{who}-bench")]);
    c
}

fn run_quiet(mut c: Command) -> Result<()> {
    let out = c.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!(
            "{c:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn wait_port(ip: &str, port: u16, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let addr = format!("{ip}:{port}").parse()?;
    while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing answers on {ip}:{port} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// iperf3 against `ip`, retried: the server refuses a test while it is still winding
/// down a previous connection (such as the readiness probe).
fn iperf(ip: &str, secs: u32, reverse: bool) -> Result<f64> {
    let mut last = None;
    for _ in 0..3 {
        match iperf_once(ip, secs, reverse) {
            Ok(v) => return Ok(v),
            Err(e) => {
                eprintln!("[bench] iperf3 {ip}: {e:#}; again");
                last = Some(e);
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("iperf3 never ran")))
}

fn iperf_once(ip: &str, secs: u32, reverse: bool) -> Result<f64> {
    let mut args = vec![
        "-c".to_string(),
        ip.into(),
        "-t".into(),
        secs.to_string(),
        "-J".into(),
    ];
    if reverse {
        args.push("-R".into());
    }
    let out = Command::new("iperf3").args(&args).output()?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 {args:?}: {}", String::from_utf8_lossy(&out.stderr)))?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 {args:?} gave no result: {}", v["error"]))
}

/// `n` HTTP/1.0 GETs, each on a new connection; milliseconds per request.
fn http_latency(ip: &str, n: usize) -> Result<Vec<f64>> {
    let addr = format!("{ip}:8080").parse()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
        let mut body = Vec::new();
        s.read_to_end(&mut body)?;
        if !String::from_utf8_lossy(&body).contains("runvm bench page") {
            bail!("unexpected HTTP answer: {}", String::from_utf8_lossy(&body));
        }
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

fn measure(secs: u32, requests: usize) -> Result<Value> {
    let runvm = PathBuf::from(std::env::var("RUNVM_BIN").context("RUNVM_BIN")?);
    let busybox = PathBuf::from(std::env::var("RUNVM_TEST_ROOTFS").context("RUNVM_TEST_ROOTFS")?);
    let work = target_dir().join("runvm").join("bench").join("net");
    std::fs::create_dir_all(&work)?;
    let rootfs = work.join("rootfs-iperf3");
    build_rootfs(&busybox, &rootfs)?;
    let _wiring = Wiring::new()?;
    let mut results = serde_json::Map::new();
    for (i, who) in RUNTIMES.iter().enumerate() {
        let ip = format!("{SUBNET}.{}", i + 2);
        let bundle = work.join(format!("bundle-{who}"));
        write_bundle(&bundle, &rootfs, &format!("rvbench-{who}"))?;
        let id = "netbench";
        let mut create = runtime_cmd(who, &runvm);
        create.args(["create", "--bundle"]).arg(&bundle).arg(id);
        create.stdout(Stdio::null()).stderr(Stdio::null());
        let mut start = runtime_cmd(who, &runvm);
        start.args(["start", id]);
        eprintln!("[bench] {who}: starting the servers in {ip}");
        let r = (|| -> Result<Value> {
            run_quiet(create)?;
            run_quiet(start)?;
            wait_port(&ip, 5201, Duration::from_secs(120))?;
            wait_port(&ip, 8080, Duration::from_secs(30))?;
            let to = iperf(&ip, secs, false)?;
            let from = iperf(&ip, secs, true)?;
            let lat = http_latency(&ip, requests)?;
            eprintln!(
                "[bench] {who}: {:.2} Gbit/s in, {:.2} Gbit/s out, p50 {:.2} ms",
                to / 1e9,
                from / 1e9,
                percentile(&lat, 0.5)
            );
            Ok(json!({
                "to_container_bps": to, "from_container_bps": from,
                "http_p50_ms": percentile(&lat, 0.5), "http_p95_ms": percentile(&lat, 0.95),
                "http_ms": lat,
            }))
        })();
        let mut kill = runtime_cmd(who, &runvm);
        kill.args(["kill", id, "KILL"]);
        let _ = run_quiet(kill);
        std::thread::sleep(Duration::from_secs(1));
        let mut delete = runtime_cmd(who, &runvm);
        delete.args(["delete", "--force", id]);
        let _ = run_quiet(delete);
        results.insert(who.to_string(), r?);
    }
    Ok(json!({
        "secs": secs, "requests": requests,
        "date": sh("date -u +%Y-%m-%d").unwrap_or_default().trim(),
        "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").unwrap_or_default().trim(),
        "nproc": sh("nproc").unwrap_or_default().trim(),
        "results": results,
    }))
}

fn markdown(raw: &Value, place: Place) -> String {
    let r = &raw["results"];
    let g = |who: &str, k: &str| r[who][k].as_f64().unwrap_or(f64::NAN);
    let row = |name: &str, k: &str, scale: f64, unit: &str| {
        let (a, b) = (g("runvm", k) / scale, g("runc", k) / scale);
        format!("| {name} ({unit}) | {a:.2} | {b:.2} | {:.2} |\n", a / b)
    };
    let mut md = String::from("# Network benchmark: runvm vs runc\n\n");
    md.push_str(&format!(
        "Measured {} {}: {} ({} CPUs seen there). iperf3 for {} s per direction; {} HTTP/1.0 GETs, one connection each, to busybox httpd. Each container in its own network namespace with a veth on one bridge; same bundle (`runc spec`) and root filesystem for both.\n\n",
        raw["date"].as_str().unwrap_or("?"),
        match place {
            Place::Direct => "on this host's KVM",
            Place::TestHost => "inside the nested test host (QEMU TCG: an emulated CPU, so compare the ratios, not the absolute numbers)",
        },
        raw["cpu"].as_str().unwrap_or("?"),
        raw["nproc"].as_str().unwrap_or("?"),
        raw["secs"],
        raw["requests"],
    ));
    md.push_str("| | runvm | runc | runvm / runc |\n|---|---:|---:|---:|\n");
    md.push_str(&row(
        "TCP host → container",
        "to_container_bps",
        1e9,
        "Gbit/s",
    ));
    md.push_str(&row(
        "TCP container → host",
        "from_container_bps",
        1e9,
        "Gbit/s",
    ));
    md.push_str(&row("HTTP request p50", "http_p50_ms", 1.0, "ms"));
    md.push_str(&row("HTTP request p95", "http_p95_ms", 1.0, "ms"));
    md.push_str(
        "\nTargets (issue 6): ≥ 5 Gbit/s on real hardware, and ≥ 50% of runc's throughput.\n",
    );
    md
}
