//! `runvm-crictl`: a small crictl-like command line over the CRI client, for scripts and
//! runvm's CRI smoke test (`cargo xtask cri-smoke`). Configs are the CRI messages as JSON
//! with the proto's field names (`PodSandboxConfig`, `ContainerConfig`, as `crictl` takes
//! them); results are JSON on stdout, except `runp`/`create` (the new id), `exec-sync`
//! (the command's output and exit code) and `logs` (the container's lines).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use cri_client::proto::{self, ContainerState, PodSandboxState};
use cri_client::{Cri, Stream};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "runvm-crictl", about = "A minimal CRI (runtime.v1) client")]
struct Cli {
    /// The CRI socket: unix:///path or /path.
    #[arg(
        short = 'r',
        long,
        env = "CONTAINER_RUNTIME_ENDPOINT",
        default_value = "unix:///run/containerd/containerd.sock"
    )]
    runtime_endpoint: String,
    /// Seconds every CRI call may take.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The runtime's name and versions (Version).
    Version,
    /// The runtime's conditions, verbose (Status).
    Info,
    /// The images the runtime has (ListImages).
    Images,
    /// One image's status (ImageStatus).
    Inspecti { image: String },
    /// Starts a pod from a PodSandboxConfig JSON file and prints its id (RunPodSandbox).
    Runp {
        config: PathBuf,
        /// The runtime handler (containerd: a runtime name in its CRI config).
        #[arg(long, default_value = "")]
        runtime: String,
    },
    /// Creates a container in a pod from a ContainerConfig JSON file (and the pod's
    /// PodSandboxConfig) and prints its id (CreateContainer).
    Create {
        pod_id: String,
        config: PathBuf,
        pod_config: PathBuf,
    },
    /// Starts a created container (StartContainer).
    Start { id: String },
    /// Runs a command in a running container, prints its stdout and stderr and exits with
    /// its exit code (ExecSync).
    ExecSync {
        /// Seconds the command may run (0: no limit).
        #[arg(long, default_value_t = 0)]
        timeout: i64,
        id: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// A container's status, verbose (ContainerStatus).
    Inspect { id: String },
    /// A pod's status, verbose (PodSandboxStatus).
    Inspectp { id: String },
    /// A container's resource usage (ContainerStats).
    Stats { id: String },
    /// A container's output, read from its CRI log file: stdout lines to stdout, stderr
    /// lines to stderr.
    Logs { id: String },
    /// Stops a container, killing it after the timeout (StopContainer).
    Stop {
        /// Seconds between the stop signal and SIGKILL.
        #[arg(long, default_value_t = 10)]
        timeout: i64,
        id: String,
    },
    /// Removes a container (RemoveContainer).
    Rm { id: String },
    /// Stops a pod and its containers (StopPodSandbox).
    Stopp { id: String },
    /// Removes a stopped pod (RemovePodSandbox).
    Rmp { id: String },
    /// The containers (ListContainers), optionally of one pod.
    Ps {
        #[arg(long)]
        pod: Option<String>,
    },
    /// The pods (ListPodSandbox).
    Pods,
}

fn read_config<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a {} in JSON",
            path.display(),
            std::any::type_name::<T>()
                .rsplit("::")
                .next()
                .unwrap_or("config")
        )
    })
}

fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// The verbose `info` map with each value parsed as JSON where it is JSON (as crictl does).
fn info_json(info: &std::collections::HashMap<String, String>) -> serde_json::Value {
    let map = info
        .iter()
        .map(|(k, v)| {
            let v =
                serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.clone()));
            (k.clone(), v)
        })
        .collect();
    serde_json::Value::Object(map)
}

fn container_state(v: i32) -> &'static str {
    ContainerState::try_from(v).map_or("UNKNOWN_STATE", |s| s.as_str_name())
}

fn sandbox_state(v: i32) -> &'static str {
    PodSandboxState::try_from(v).map_or("UNKNOWN_STATE", |s| s.as_str_name())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("runvm-crictl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let mut cri = Cri::connect(&cli.runtime_endpoint, Duration::from_secs(cli.timeout)).await?;
    let rt = &mut cri.runtime;
    match cli.cmd {
        Cmd::Version => {
            let v = rt
                .version(proto::VersionRequest {
                    version: "v1".into(),
                })
                .await
                .context("Version")?;
            print_json(v.get_ref())?;
        }
        Cmd::Info => {
            let s = rt
                .status(proto::StatusRequest { verbose: true })
                .await
                .context("Status")?
                .into_inner();
            print_json(&serde_json::json!({ "status": s.status, "info": info_json(&s.info) }))?;
        }
        Cmd::Images => {
            let l = cri
                .image
                .list_images(proto::ListImagesRequest::default())
                .await
                .context("ListImages")?;
            print_json(&l.get_ref().images)?;
        }
        Cmd::Inspecti { image } => {
            let s = cri
                .image
                .image_status(proto::ImageStatusRequest {
                    image: Some(proto::ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await
                .with_context(|| format!("ImageStatus of {image}"))?
                .into_inner();
            if s.image.is_none() {
                bail!("no image {image} in the runtime");
            }
            print_json(&s.image)?;
        }
        Cmd::Runp { config, runtime } => {
            let config: proto::PodSandboxConfig = read_config(&config)?;
            let r = rt
                .run_pod_sandbox(proto::RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: runtime,
                })
                .await
                .context("RunPodSandbox")?;
            println!("{}", r.get_ref().pod_sandbox_id);
        }
        Cmd::Create {
            pod_id,
            config,
            pod_config,
        } => {
            let config: proto::ContainerConfig = read_config(&config)?;
            let sandbox_config: proto::PodSandboxConfig = read_config(&pod_config)?;
            let r = rt
                .create_container(proto::CreateContainerRequest {
                    pod_sandbox_id: pod_id.clone(),
                    config: Some(config),
                    sandbox_config: Some(sandbox_config),
                })
                .await
                .with_context(|| format!("CreateContainer in pod {pod_id}"))?;
            println!("{}", r.get_ref().container_id);
        }
        Cmd::Start { id } => {
            rt.start_container(proto::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .with_context(|| format!("StartContainer {id}"))?;
        }
        Cmd::ExecSync { timeout, id, cmd } => {
            let r = rt
                .exec_sync(proto::ExecSyncRequest {
                    container_id: id.clone(),
                    cmd,
                    timeout,
                })
                .await
                .with_context(|| format!("ExecSync in {id}"))?
                .into_inner();
            std::io::stdout().write_all(&r.stdout)?;
            std::io::stderr().write_all(&r.stderr)?;
            // Exit codes outside 0..=255 cannot be passed on as they are.
            return Ok(ExitCode::from(u8::try_from(r.exit_code).unwrap_or(255)));
        }
        Cmd::Inspect { id } => {
            let s = rt
                .container_status(proto::ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: true,
                })
                .await
                .with_context(|| format!("ContainerStatus of {id}"))?
                .into_inner();
            let state = s.status.as_ref().map_or("", |st| container_state(st.state));
            print_json(&serde_json::json!({
                "state": state, "status": s.status, "info": info_json(&s.info),
            }))?;
        }
        Cmd::Inspectp { id } => {
            let s = rt
                .pod_sandbox_status(proto::PodSandboxStatusRequest {
                    pod_sandbox_id: id.clone(),
                    verbose: true,
                })
                .await
                .with_context(|| format!("PodSandboxStatus of {id}"))?
                .into_inner();
            let state = s.status.as_ref().map_or("", |st| sandbox_state(st.state));
            print_json(&serde_json::json!({
                "state": state, "status": s.status, "info": info_json(&s.info),
            }))?;
        }
        Cmd::Stats { id } => {
            let s = rt
                .container_stats(proto::ContainerStatsRequest {
                    container_id: id.clone(),
                })
                .await
                .with_context(|| format!("ContainerStats of {id}"))?;
            print_json(&s.get_ref().stats)?;
        }
        Cmd::Logs { id } => {
            let s = rt
                .container_status(proto::ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                })
                .await
                .with_context(|| format!("ContainerStatus of {id}"))?
                .into_inner();
            let path = s.status.map(|s| s.log_path).unwrap_or_default();
            if path.is_empty() {
                bail!("container {id} has no log path (its config set no log_path)");
            }
            let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
            for (stream, line) in cri_client::read_log_file(Path::new(&path))? {
                match stream {
                    Stream::Stdout => writeln!(out, "{line}")?,
                    Stream::Stderr => writeln!(err, "{line}")?,
                }
            }
        }
        Cmd::Stop { timeout, id } => {
            rt.stop_container(proto::StopContainerRequest {
                container_id: id.clone(),
                timeout,
            })
            .await
            .with_context(|| format!("StopContainer {id}"))?;
        }
        Cmd::Rm { id } => {
            rt.remove_container(proto::RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await
            .with_context(|| format!("RemoveContainer {id}"))?;
        }
        Cmd::Stopp { id } => {
            rt.stop_pod_sandbox(proto::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .with_context(|| format!("StopPodSandbox {id}"))?;
        }
        Cmd::Rmp { id } => {
            rt.remove_pod_sandbox(proto::RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .with_context(|| format!("RemovePodSandbox {id}"))?;
        }
        Cmd::Ps { pod } => {
            let filter = pod.map(|p| proto::ContainerFilter {
                pod_sandbox_id: p,
                ..Default::default()
            });
            let l = rt
                .list_containers(proto::ListContainersRequest { filter })
                .await
                .context("ListContainers")?;
            let list: Vec<_> = l
                .get_ref()
                .containers
                .iter()
                .map(|c| serde_json::json!({ "state": container_state(c.state), "container": c }))
                .collect();
            print_json(&list)?;
        }
        Cmd::Pods => {
            let l = rt
                .list_pod_sandbox(proto::ListPodSandboxRequest::default())
                .await
                .context("ListPodSandbox")?;
            let list: Vec<_> = l
                .get_ref()
                .items
                .iter()
                .map(|p| serde_json::json!({ "state": sandbox_state(p.state), "pod": p }))
                .collect();
            print_json(&list)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
