//! The shim (one per container: containerd starts it with the container's id) and its
//! task service: each task call becomes what containerd's runc shim does with runc,
//! done with runvm, and the task events containerd expects are published.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use containerd_shim::api;
use containerd_shim::event::Event;
use containerd_shim::monitor::{Subject, Topic};
use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::protos::types::task::{ProcessInfo, Status};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::synchronous::monitor::monitor_subscribe;
use containerd_shim::{
    Config, Context, DeleteResponse, ExitSignal, Flags, StartOpts, TtrpcContext, TtrpcResult,
};

use crate::console::{Console, ConsoleSocket};
use crate::runvm::{ProcessStdio, Runvm};
use crate::stdio::{self, StdinFeed};

/// What containerd calls this runtime (`ctr run --runtime io.containerd.runvm.v2`).
pub const RUNTIME_ID: &str = "io.containerd.runvm.v2";
/// How long an exit waits for the rest of a terminal's output to reach containerd.
const CONSOLE_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The shim process.
pub struct Shim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
}

impl containerd_shim::Shim for Shim {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Self {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let grouping = opts.id.clone();
        let (_, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    /// containerd's clean-up after a shim that died: the container goes with it.
    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let runvm = Runvm::new(&self.namespace);
        if let Err(e) = runvm.run(&["delete", "--force", &self.id], None) {
            log::warn!("delete of {} after its shim ended: {e}", self.id);
        }
        if let Ok(bundle) = std::env::current_dir() {
            unmount_rootfs(&bundle);
        }
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(now()),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let service = TaskService {
            exit: self.exit.clone(),
            namespace: self.namespace.clone(),
            runvm: Arc::new(Runvm::new(&self.namespace)),
            shared: Arc::new((Mutex::new(State::default()), Condvar::new())),
            publisher: Arc::new(publisher),
        };
        service.watch_exits();
        service
    }
}

/// How a process ended.
#[derive(Clone)]
struct Exit {
    code: u32,
    at: Timestamp,
}

/// A process of the container, as containerd sees it.
struct Proc {
    /// 0 until it starts (exec'd processes).
    pid: u32,
    status: Status,
    exit: Option<Exit>,
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
    feed: StdinFeed,
    console: Option<Console>,
}

impl Proc {
    fn new(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Self {
        Self {
            pid: 0,
            status: Status::CREATED,
            exit: None,
            stdin: stdin.into(),
            stdout: stdout.into(),
            stderr: stderr.into(),
            terminal,
            feed: StdinFeed::default(),
            console: None,
        }
    }

    /// The stdio runvm gets for this process, and, with a terminal, the console socket
    /// it hands the pty master to.
    fn open_stdio(&self) -> Result<(ProcessStdio, StdinFeed, Option<ConsoleSocket>), String> {
        if self.terminal {
            let socket = ConsoleSocket::new().map_err(|e| e.to_string())?;
            let io = stdio::none().map_err(|e| format!("open /dev/null: {e}"))?;
            return Ok((io, StdinFeed::default(), Some(socket)));
        }
        let (io, feed) = stdio::open(&self.stdin, &self.stdout, &self.stderr)
            .map_err(|e| format!("open the process's stdio: {e}"))?;
        Ok((io, feed, None))
    }

    /// After runvm ran: the terminal's master from the console socket, copied to and
    /// from containerd's FIFOs; else the feed of the stdin pipe.
    fn attach(&mut self, feed: StdinFeed, socket: Option<ConsoleSocket>) -> TtrpcResult<()> {
        let Some(socket) = socket else {
            self.feed = feed;
            return Ok(());
        };
        let master = socket.receive().map_err(failure)?;
        let (console, feed) =
            Console::attach(master, &self.stdin, &self.stdout).map_err(failure)?;
        self.console = Some(console);
        self.feed = feed;
        Ok(())
    }

    fn exited(&mut self, exit: Exit) {
        self.status = Status::STOPPED;
        self.exit = Some(exit);
    }
}

/// An exec'd process, and its OCI process JSON.
struct Exec {
    proc_: Proc,
    spec: Vec<u8>,
}

struct Container {
    id: String,
    bundle: PathBuf,
    init: Proc,
    execs: HashMap<String, Exec>,
}

impl Container {
    /// Every process, with its exec id ("" for the init).
    fn processes(&mut self) -> impl Iterator<Item = (&str, &mut Proc)> {
        std::iter::once(("", &mut self.init)).chain(
            self.execs
                .iter_mut()
                .map(|(k, e)| (k.as_str(), &mut e.proc_)),
        )
    }

    fn process(&mut self, exec_id: &str) -> TtrpcResult<&mut Proc> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .map(|e| &mut e.proc_)
            .ok_or_else(|| {
                status(
                    Code::NOT_FOUND,
                    format!("no process {exec_id} in {}", self.id),
                )
            })
    }
}

#[derive(Default)]
struct State {
    container: Option<Container>,
    /// Exits of pids not (yet) known to be a process of the container: one that ends
    /// before `runvm create` has told its pid, and every runvm command.
    unclaimed: VecDeque<(u32, Exit)>,
}

impl State {
    fn claim(&mut self, pid: u32) -> Option<Exit> {
        let i = self.unclaimed.iter().position(|(p, _)| *p == pid)?;
        self.unclaimed.remove(i).map(|(_, e)| e)
    }
}

/// containerd's task API for the container of this shim.
#[derive(Clone)]
pub struct TaskService {
    exit: Arc<ExitSignal>,
    namespace: String,
    runvm: Arc<Runvm>,
    shared: Arc<(Mutex<State>, Condvar)>,
    publisher: Arc<RemotePublisher>,
}

fn status(code: Code, message: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

fn unimplemented(what: &str) -> ttrpc::Error {
    status(
        Code::UNIMPLEMENTED,
        format!("{what} is not supported by containerd-shim-runvm-v2 yet"),
    )
}

fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

fn unmount_rootfs(bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    if let Ok(c) = std::ffi::CString::new(rootfs.as_os_str().as_encoded_bytes()) {
        // SAFETY: umount2 with a NUL-terminated path that lives across the call.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

impl TaskService {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn container<'a>(state: &'a mut State, id: &str) -> TtrpcResult<&'a mut Container> {
        match state.container.as_mut() {
            Some(c) if c.id == id => Ok(c),
            _ => Err(status(Code::NOT_FOUND, format!("container {id} not found"))),
        }
    }

    fn publish(&self, topic: &str, event: Box<dyn Event>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
        {
            log::warn!("publish of {topic}: {e}");
        }
    }

    /// Records every exit the crate's reaper reports; a process of the container gets
    /// its `TaskExit` event and wakes its waiters.
    fn watch_exits(&self) {
        let Ok(subscription) = monitor_subscribe(Topic::Pid) else {
            log::error!("cannot watch for exits");
            return;
        };
        let service = self.clone();
        std::thread::spawn(move || {
            while let Ok(e) = subscription.rx.recv() {
                let Subject::Pid(pid) = e.subject else {
                    continue;
                };
                // A terminal's last output reaches containerd before the exit does.
                let copied = service.lock().container.as_mut().and_then(|c| {
                    c.processes()
                        .find(|(_, p)| p.pid == pid as u32 && p.exit.is_none())
                        .and_then(|(_, p)| p.console.as_mut()?.take_copied())
                });
                if let Some(copied) = copied {
                    let _ = copied.recv_timeout(CONSOLE_DRAIN);
                }
                let exit = Exit {
                    code: e.exit_code as u32,
                    at: now(),
                };
                if let Some(event) = service.exited(pid as u32, exit) {
                    service.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event));
                }
                service.shared.1.notify_all();
            }
        });
    }

    fn exited(&self, pid: u32, exit: Exit) -> Option<TaskExit> {
        let mut state = self.lock();
        let found = state.container.as_mut().and_then(|c| {
            let id = c.id.clone();
            for (exec_id, p) in c.processes() {
                if p.pid == pid && p.exit.is_none() {
                    p.exited(exit.clone());
                    return Some(TaskExit {
                        container_id: id.clone(),
                        id: if exec_id.is_empty() {
                            id
                        } else {
                            exec_id.to_string()
                        },
                        pid,
                        exit_status: exit.code,
                        exited_at: MessageField::some(exit.at.clone()),
                        ..Default::default()
                    });
                }
            }
            None
        });
        if found.is_none() {
            state.unclaimed.push_back((pid, exit));
            while state.unclaimed.len() > 256 {
                state.unclaimed.pop_front();
            }
        }
        found
    }

    /// `runvm pause` (or `resume`) of container `id`, and its event.
    fn freeze(&self, id: &str, pause: bool) -> TtrpcResult<api::Empty> {
        let verb = if pause { "pause" } else { "resume" };
        self.runvm.run(&[verb, id], None).map_err(failure)?;
        let status = if pause {
            Status::PAUSED
        } else {
            Status::RUNNING
        };
        Self::container(&mut self.lock(), id)?.init.status = status;
        let container_id = id.to_string();
        if pause {
            let event = TaskPaused {
                container_id,
                ..Default::default()
            };
            self.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(event));
        } else {
            let event = TaskResumed {
                container_id,
                ..Default::default()
            };
            self.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(event));
        }
        Ok(api::Empty::new())
    }

    /// Sets the pid of a process that just started, or its exit if it already ended.
    fn started(state: &mut State, id: &str, exec_id: &str, pid: u32) -> TtrpcResult<()> {
        let early = state.claim(pid);
        let c = Self::container(state, id)?;
        let p = c.process(exec_id)?;
        p.pid = pid;
        if p.status == Status::CREATED && !exec_id.is_empty() {
            p.status = Status::RUNNING;
        }
        if let Some(exit) = early {
            p.exited(exit);
        }
        Ok(())
    }
}

/// The `data` of a runc `stats` event as containerd's cgroups v1 metrics.
fn metrics(data: &serde_json::Value) -> Metrics {
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let usage = &data["cpu"]["usage"];
    let memory = &data["memory"]["usage"];
    Metrics {
        pids: MessageField::some(PidsStat {
            current: n(&data["pids"]["current"]),
            limit: n(&data["pids"]["limit"]),
            ..Default::default()
        }),
        cpu: MessageField::some(CPUStat {
            usage: MessageField::some(CPUUsage {
                total: n(&usage["total"]),
                kernel: n(&usage["kernel"]),
                user: n(&usage["user"]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory: MessageField::some(MemoryStat {
            usage: MessageField::some(MemoryEntry {
                usage: n(&memory["usage"]),
                limit: n(&memory["limit"]),
                max: n(&memory["max"]),
                failcnt: n(&memory["failcnt"]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn read_pid(path: &Path) -> TtrpcResult<u32> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| status(Code::INTERNAL, format!("no pid in {}", path.display())))
}

fn failure(e: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::UNKNOWN, e.to_string())
}

impl containerd_shim::Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if self.lock().container.is_some() {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!(
                    "this shim already runs a container; {} needs its own",
                    req.id
                ),
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(unimplemented("restoring a checkpoint"));
        }
        crate::options::check(req.options.as_ref())
            .map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        // A pod's sandbox boots its VM; the pod's containers, created in its network
        // namespace, run in that VM (runvm decides at its create).
        let bundle = PathBuf::from(&req.bundle);
        let rootfs = bundle.join("rootfs");
        if !req.rootfs.is_empty() {
            std::fs::create_dir_all(&rootfs).map_err(failure)?;
        }
        for m in &req.rootfs {
            let r#type = (!m.type_.is_empty()).then_some(m.type_.as_str());
            let source = (!m.source.is_empty()).then_some(m.source.as_str());
            if let Err(e) =
                containerd_shim::mount::mount_rootfs(r#type, source, &m.options, &rootfs)
            {
                unmount_rootfs(&bundle);
                return Err(failure(format!(
                    "mount the root filesystem at {}: {e}",
                    rootfs.display()
                )));
            }
        }
        let undo = |e: ttrpc::Error| {
            if !req.rootfs.is_empty() {
                unmount_rootfs(&bundle);
            }
            e
        };
        let mut init = Proc::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let (io, feed, console) = init
            .open_stdio()
            .map_err(|e| undo(failure(format!("create {}: {e}", req.id))))?;
        let pid_file = bundle.join("init.pid");
        let (b, p) = (bundle.display().to_string(), pid_file.display().to_string());
        let socket = console.as_ref().map(|c| c.path().display().to_string());
        let mut args = vec!["create", "--bundle", &b, "--pid-file", &p];
        if let Some(socket) = &socket {
            args.extend(["--console-socket", socket]);
        }
        args.push(&req.id);
        self.runvm
            .run_with_stdio(&args, io, &bundle.join("log.json"))
            .map_err(|e| undo(failure(e)))?;
        let pid = read_pid(&pid_file).map_err(undo)?;
        if let Err(e) = init.attach(feed, console) {
            let _ = self.runvm.run(&["delete", "--force", &req.id], None);
            return Err(undo(e));
        }
        {
            let mut state = self.lock();
            state.container = Some(Container {
                id: req.id.clone(),
                bundle: bundle.clone(),
                init,
                execs: HashMap::new(),
            });
            Self::started(&mut state, &req.id, "", pid)?;
        }
        let (service, id) = (self.clone(), req.id.clone());
        let watched = crate::oom::watch(pid, move || {
            let event = TaskOOM {
                container_id: id.clone(),
                ..Default::default()
            };
            service.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(event));
        });
        if let Err(e) = watched {
            log::warn!("no OOM events for {}: {e}", req.id);
        }
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        if req.exec_id.is_empty() {
            let pid = {
                let mut state = self.lock();
                Self::container(&mut state, &req.id)?.init.pid
            };
            self.runvm.run(&["start", &req.id], None).map_err(failure)?;
            {
                let mut state = self.lock();
                let init = &mut Self::container(&mut state, &req.id)?.init;
                if init.status == Status::CREATED {
                    init.status = Status::RUNNING;
                }
            }
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid,
                    ..Default::default()
                }),
            );
            return Ok(api::StartResponse {
                pid,
                ..Default::default()
            });
        }
        let (bundle, spec, mut proc_) = {
            let mut state = self.lock();
            let c = Self::container(&mut state, &req.id)?;
            let bundle = c.bundle.clone();
            let e = c.execs.get(&req.exec_id).ok_or_else(|| {
                status(
                    Code::NOT_FOUND,
                    format!("no process {} in {}", req.exec_id, req.id),
                )
            })?;
            if e.proc_.pid != 0 {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("process {} already started", req.exec_id),
                ));
            }
            let p = &e.proc_;
            (
                bundle,
                e.spec.clone(),
                Proc::new(&p.stdin, &p.stdout, &p.stderr, p.terminal),
            )
        };
        let process_file = bundle.join(format!("exec-{}.json", req.exec_id));
        let pid_file = bundle.join(format!("exec-{}.pid", req.exec_id));
        std::fs::write(&process_file, &spec).map_err(failure)?;
        let (io, feed, console) = proc_
            .open_stdio()
            .map_err(|e| failure(format!("exec {} in {}: {e}", req.exec_id, req.id)))?;
        let (f, p) = (
            process_file.display().to_string(),
            pid_file.display().to_string(),
        );
        let socket = console.as_ref().map(|c| c.path().display().to_string());
        let mut args = vec!["exec", "--process", &f, "--detach", "--pid-file", &p];
        if let Some(socket) = &socket {
            args.extend(["--console-socket", socket]);
        }
        args.push(&req.id);
        let result =
            self.runvm
                .run_with_stdio(&args, io, &bundle.join(format!("exec-{}.log", req.exec_id)));
        let _ = std::fs::remove_file(&process_file);
        result.map_err(failure)?;
        let pid = read_pid(&pid_file)?;
        let _ = std::fs::remove_file(&pid_file);
        let attached = proc_.attach(feed, console);
        {
            let mut state = self.lock();
            let p = Self::container(&mut state, &req.id)?.process(&req.exec_id)?;
            p.feed = proc_.feed;
            p.console = proc_.console;
            Self::started(&mut state, &req.id, &req.exec_id, pid)?;
        }
        if let Err(e) = attached {
            // SAFETY: kill(2) with plain integers.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            return Err(e);
        }
        self.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            }),
        );
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        {
            let mut state = self.lock();
            let c = Self::container(&mut state, &req.id)?;
            if c.execs.contains_key(&req.exec_id) {
                return Err(status(
                    Code::ALREADY_EXISTS,
                    format!("process {} exists", req.exec_id),
                ));
            }
            let spec = req
                .spec
                .as_ref()
                .map(|a| a.value.clone())
                .unwrap_or_default();
            c.execs.insert(
                req.exec_id.clone(),
                Exec {
                    proc_: Proc::new(&req.stdin, &req.stdout, &req.stderr, req.terminal),
                    spec,
                },
            );
        }
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let mut state = self.lock();
        let c = Self::container(&mut state, &req.id)?;
        let bundle = c.bundle.display().to_string();
        let p = c.process(&req.exec_id)?;
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle,
            pid: p.pid,
            status: p.status.into(),
            stdin: p.stdin.clone(),
            stdout: p.stdout.clone(),
            stderr: p.stderr.clone(),
            exit_status: p.exit.as_ref().map_or(0, |e| e.code),
            exited_at: p.exit.as_ref().map(|e| e.at.clone()).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let mut state = self.lock();
        loop {
            let c = Self::container(&mut state, &req.id)?;
            if let Some(e) = &c.process(&req.exec_id)?.exit {
                return Ok(api::WaitResponse {
                    exit_status: e.code,
                    exited_at: MessageField::some(e.at.clone()),
                    ..Default::default()
                });
            }
            state = self.shared.1.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let pid = {
            let mut state = self.lock();
            let p = Self::container(&mut state, &req.id)?.process(&req.exec_id)?;
            if p.exit.is_some() || p.pid == 0 {
                return Err(status(Code::NOT_FOUND, "process already finished"));
            }
            p.pid
        };
        if req.exec_id.is_empty() {
            let signal = req.signal.to_string();
            let mut args = vec!["kill"];
            if req.all {
                args.push("--all");
            }
            args.extend([req.id.as_str(), signal.as_str()]);
            self.runvm.run(&args, None).map_err(failure)?;
        } else {
            // SAFETY: kill(2) with plain integers.
            if unsafe { libc::kill(pid as i32, req.signal as i32) } != 0 {
                return Err(failure(std::io::Error::last_os_error()));
            }
        }
        Ok(api::Empty::new())
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        if !req.exec_id.is_empty() {
            let mut state = self.lock();
            let c = Self::container(&mut state, &req.id)?;
            let e = c.execs.get(&req.exec_id).ok_or_else(|| {
                status(
                    Code::NOT_FOUND,
                    format!("no process {} in {}", req.exec_id, req.id),
                )
            })?;
            if e.proc_.pid != 0 && e.proc_.exit.is_none() {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("process {} is running", req.exec_id),
                ));
            }
            let e = c.execs.remove(&req.exec_id).map(|e| e.proc_);
            let e = e.expect("checked above");
            return Ok(api::DeleteResponse {
                pid: e.pid,
                exit_status: e.exit.as_ref().map_or(0, |x| x.code),
                exited_at: e.exit.map(|x| x.at).into(),
                ..Default::default()
            });
        }
        let (pid, running, bundle) = {
            let mut state = self.lock();
            let c = Self::container(&mut state, &req.id)?;
            (
                c.init.pid,
                c.init.exit.is_none() && c.init.status != Status::CREATED,
                c.bundle.clone(),
            )
        };
        if running {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("container {} is running: kill it first", req.id),
            ));
        }
        self.runvm
            .run(&["delete", "--force", &req.id], None)
            .map_err(failure)?;
        // A container that never started ends with the delete: wait for its exit.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut state = self.lock();
        loop {
            let c = Self::container(&mut state, &req.id)?;
            if c.init.exit.is_some() || std::time::Instant::now() >= deadline {
                break;
            }
            state = self
                .shared
                .1
                .wait_timeout(state, std::time::Duration::from_millis(200))
                .map(|(s, _)| s)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        let c = state.container.take().expect("found above");
        drop(state);
        unmount_rootfs(&bundle);
        let exit = c.init.exit.unwrap_or(Exit {
            code: 128 + libc::SIGKILL as u32,
            at: now(),
        });
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                pid,
                exit_status: exit.code,
                exited_at: MessageField::some(exit.at.clone()),
                id: req.id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::DeleteResponse {
            pid,
            exit_status: exit.code,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let out = self
            .runvm
            .run(&["ps", "--format", "json", &req.id], None)
            .map_err(failure)?;
        let pids: Vec<u32> = serde_json::from_str(&out).map_err(failure)?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.freeze(&req.id, true)
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.freeze(&req.id, false)
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let mut state = self.lock();
        let p = Self::container(&mut state, &req.id)?.process(&req.exec_id)?;
        if req.stdin {
            p.feed.close();
        }
        Ok(api::Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let resources = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        self.runvm
            .run(&["update", "--resources", "-", &req.id], Some(&resources))
            .map_err(failure)?;
        Ok(api::Empty::new())
    }

    /// `runvm events --stats`, as cgroups v1 metrics (the container's limits and usage
    /// as the guest reports them, whatever the host's cgroup version).
    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let out = self
            .runvm
            .run(&["events", "--stats", &req.id], None)
            .map_err(failure)?;
        let event: serde_json::Value = serde_json::from_str(&out).map_err(failure)?;
        let metrics = metrics(&event["data"]);
        let any = containerd_shim::util::convert_to_any(Box::new(metrics)).map_err(failure)?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let mut state = self.lock();
        let p = Self::container(&mut state, &req.id)?.process(&req.exec_id)?;
        let console = p.console.as_ref().ok_or_else(|| {
            status(
                Code::FAILED_PRECONDITION,
                format!("process {} of {} has no terminal", req.exec_id, req.id),
            )
        })?;
        console.resize(req.width, req.height).map_err(failure)?;
        Ok(api::Empty::new())
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(unimplemented(
            "checkpoint (a VM is not checkpointed with CRIU)",
        ))
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let mut state = self.lock();
        let task_pid = Self::container(&mut state, &req.id).map_or(0, |c| c.init.pid);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self.lock().container.is_none() {
            self.exit.signal();
        }
        Ok(api::Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stats_event_becomes_cgroups_v1_metrics() {
        let data = serde_json::json!({
            "cpu": { "usage": { "total": 7000, "kernel": 1000, "user": 6000, "percpu": [] } },
            "memory": { "usage": { "usage": 5242880, "limit": 33554432, "max": 0, "failcnt": 0 } },
            "pids": { "current": 2, "limit": 0 },
        });
        let m = metrics(&data);
        assert_eq!((m.pids.current, m.pids.limit), (2, 0));
        assert_eq!(m.cpu.usage.total, 7000);
        assert_eq!(m.memory.usage.usage, 5 << 20);
        assert_eq!(m.memory.usage.limit, 32 << 20);
        let any = containerd_shim::util::convert_to_any(Box::new(m)).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
    }
}
