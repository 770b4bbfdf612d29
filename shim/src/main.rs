//! `runvm`: a runc-compatible OCI runtime that runs each container in its own KVM
//! microVM. This file is the command-line edge: it parses runc's command line (with
//! liboci-cli), sets up logging, dispatches, and turns errors into runc-style messages
//! and exit codes. The semantics live in `container/`, the VM side in `monitor/`.

mod assets;
mod cgroup;
mod container;
mod help;
mod hooks;
mod host_process;
mod id;
mod in_root;
mod logging;
mod monitor;
mod mountinfo;
mod network;
mod seccomp;
mod settings;
mod share;
mod sockpath;
mod spec;
mod state;
mod status;
mod template;
mod vsock_service;

use clap::{Parser, Subcommand};
use liboci_cli::{CommonCmd, GlobalOpts, StandardCmd};

#[derive(Parser, Debug)]
#[command(
    name = "runvm",
    disable_version_flag = true,
    about = "A runc-compatible OCI runtime that runs each container in a KVM microVM",
    // liboci-cli's name for checkpoint, misspelt; runvm's own `checkpoint` takes its place.
    mut_subcommand("checkpointt", |c| c.hide(true)),
    // runc's `list -f json`.
    mut_subcommand("list", |c| c.mut_arg("format", |a| a.short('f'))),
    // runc's `events --interval` is a Go duration (`5s`, `100ms`); kept in milliseconds.
    mut_subcommand("events", |c| c.mut_arg("interval", |a| a
        .value_parser(container::events::interval_ms)
        .default_value("5s")
        .help("Sets the stats collection interval (a duration: 5s, 100ms, 1m)")))
)]
pub(crate) struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    /// Print the version (as `runc --version` does: version, commit, spec, libseccomp)
    #[arg(short = 'v', long = "version")]
    version: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// What `runvm --version` prints: runc's lines, with runvm's own values (the language
/// line names Rust where runc names Go).
pub(crate) fn version_text() -> String {
    let seccomp = libseccomp::ScmpVersion::current()
        .map(|v| v.to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    format!(
        "runvm version {}\ncommit: {}\nspec: {}\nrust: {}\nlibseccomp: {seccomp}\n",
        env!("CARGO_PKG_VERSION"),
        env!("RUNVM_COMMIT"),
        state::OCI_VERSION,
        env!("RUNVM_RUSTC"),
    )
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Standard(Box<StandardCmd>),
    #[command(flatten)]
    Common(Box<CommonCmd>),
    /// Checkpoint a running container (not supported by runvm)
    Checkpoint(liboci_cli::Checkpoint),
    /// Restore a container from a previous checkpoint (not supported by runvm)
    Restore(Restore),
    /// Make a warm-start template (run by runvm itself; see RUNVM_BOOT)
    #[command(hide = true)]
    BuildTemplate(template::BuildTemplate),
}

/// `runvm restore`'s arguments, as runc's (liboci-cli has no restore).
#[derive(clap::Args, Debug)]
struct Restore {
    /// Path to the root of the bundle directory
    #[arg(long, short)]
    bundle: Option<std::path::PathBuf>,
    /// Path for saving criu image files
    #[arg(long)]
    image_path: Option<std::path::PathBuf>,
    /// Detach from the container's process
    #[arg(long, short)]
    detach: bool,
    /// Specify the file to write the process id to
    #[arg(long)]
    pid_file: Option<std::path::PathBuf>,
    container_id: String,
}

/// checkpoint and restore: runc drives CRIU, which saves a container's processes; a
/// runvm container's processes live in a guest kernel that CRIU cannot reach.
fn no_checkpoints(verb: &str) -> anyhow::Result<i32> {
    anyhow::bail!(
        "`runvm {verb}` is not supported: the container's processes live in its VM's own \
         kernel, which CRIU cannot checkpoint or restore"
    )
}

fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let Some(command) = cli.command else {
        // `runvm -v` (no arguments at all get the help, before parsing).
        print!("{}", version_text());
        return Ok(0);
    };
    use container::*;
    let root = &root_dir(cli.global.root.as_deref());
    let cgroups = cgroup::PathSyntax::from_systemd_flag(cli.global.systemd_cgroup);
    match command {
        Command::Standard(s) => match *s {
            StandardCmd::Create(args) => create::create(root, cgroups, &args),
            StandardCmd::Start(args) => start::start(root, &args),
            StandardCmd::State(args) => state::state(root, &args),
            StandardCmd::Kill(args) => kill::kill(root, &args),
            StandardCmd::Delete(args) => delete::delete(root, &args),
        },
        Command::Common(c) => match *c {
            CommonCmd::Run(args) => run::run(root, cgroups, &args),
            CommonCmd::Exec(args) => exec::exec(root, &args).map_err(exec::as_exec_failure),
            CommonCmd::Features(_) => features::features(),
            CommonCmd::List(args) => list::list(root, &args),
            CommonCmd::Pause(args) => pause::pause(root, &args),
            CommonCmd::Resume(args) => resume::resume(root, &args),
            CommonCmd::Ps(args) => ps::ps(root, &args),
            CommonCmd::Events(args) => events::events(root, &args),
            CommonCmd::Update(args) => update::update(root, &args),
            CommonCmd::Spec(args) => container::spec::spec(&args),
            CommonCmd::Checkpointt(_) => no_checkpoints("checkpoint"),
        },
        Command::Checkpoint(_) => no_checkpoints("checkpoint"),
        Command::Restore(_) => no_checkpoints("restore"),
        Command::BuildTemplate(args) => template::build_here(&args).map(|()| 0),
    }
}

/// The error and its causes on one line, each said once (our error types print their
/// source in their own message, and anyhow's chain would repeat it).
pub(crate) fn error_message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !msg.contains(&s) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&s);
        }
    }
    msg
}

/// When this process started (the launch in boot timings).
pub static LAUNCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn main() {
    LAUNCH.get_or_init(std::time::Instant::now);
    // One malloc arena for the process: the monitor's threads (vCPUs, the device event
    // loop, stdio relays) would each get one of their own, and every arena's touched
    // pages are memory the VMM costs beside its guest. They allocate little and rarely.
    // SAFETY: mallopt with an integer parameter, before any other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let args: Vec<String> = std::env::args().skip(1).collect();
    match help::requested(&args) {
        Some(help::Help::Show(text)) => {
            print!("{text}");
            std::process::exit(0);
        }
        Some(help::Help::NoTopic(message)) => {
            eprintln!("runvm: {message}");
            std::process::exit(3);
        }
        None => {}
    }
    let cli = Cli::parse();
    if let Err(e) = logging::init(
        cli.global.log.as_deref(),
        cli.global.log_format.as_deref(),
        cli.global.debug,
    ) {
        eprintln!("runvm: {e}");
        std::process::exit(1);
    }
    log::debug!("runvm {} (pid {})", args.join(" "), std::process::id());
    let to_file = cli.global.log.is_some();
    match dispatch(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let msg = error_message(&e);
            if to_file {
                log::error!("{msg}");
            }
            eprintln!("runvm: {msg}");
            // An exec'd process that could not start: runc's code for it.
            let code = e
                .downcast_ref::<container::exec::ExecFailed>()
                .map_or(1, |f| f.code);
            std::process::exit(code);
        }
    }
}
