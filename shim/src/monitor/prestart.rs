//! The host API before the container's process runs. A created container has no VM
//! yet: [`wait_for_start`] serves `runvm start`, `kill`, `exec`, `ps`, … until `start`
//! or a terminating signal. While the guest boots, [`boot_api_request`] answers the same
//! requests: signals wait for the process, SIGKILL stops the boot. What needs a running
//! process is refused by [`before_running`] and [`refuse_exec`].

use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};

use nix::sys::signalfd::SignalFd;

use super::api::{self, ControlResponse, ExecEvent, Request, Response};
use super::poll::{pending_signals, PollSet};
use super::MonitorError;

/// How the wait of a created container ended.
pub(super) enum BeforeStart {
    /// `runvm start` asked for the process; its connection waits for the answer.
    Start(UnixStream),
    /// A signal that would end a waiting process (`runvm kill` of a created container,
    /// or one sent to the monitor itself): the container stops with 128+signo.
    Killed(i32),
}

/// Serves the host API of a created container until `start` or a terminating signal.
/// No VM exists yet.
pub(super) fn wait_for_start(
    api: &UnixListener,
    sigfd: &SignalFd,
) -> Result<BeforeStart, MonitorError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Slot {
        Api,
        Signals,
    }
    let mut waiting = PollSet::new();
    waiting.add(Slot::Api, api.as_fd());
    waiting.add(Slot::Signals, sigfd.as_fd());
    loop {
        let ready = waiting.wait(None)?;
        if ready.contains(Slot::Signals) {
            if let Some(signal) = pending_signals(sigfd)
                .into_iter()
                .find(|s| terminates_by_default(*s))
            {
                return Ok(BeforeStart::Killed(signal));
            }
        }
        if !ready.contains(Slot::Api) {
            continue;
        }
        let Some((mut conn, req)) = api::accept_request(api) else {
            continue;
        };
        match req {
            Request::Start => return Ok(BeforeStart::Start(conn)),
            Request::Signal { signal } => {
                api::answer(&mut conn, &Response::Ok);
                if terminates_by_default(signal) {
                    return Ok(BeforeStart::Killed(signal));
                }
            }
            Request::Exec { .. } | Request::AddContainer { .. } => refuse_exec(
                &mut conn,
                "cannot exec in a created container: container not running",
            ),
            other => api::answer(&mut conn, &before_running(&other, "created")),
        }
    }
}

/// Whether a signal's default action ends a process (so it stops a created container,
/// whose process has not started, as it would stop runc's waiting init).
fn terminates_by_default(signal: i32) -> bool {
    ![libc::SIGCHLD, libc::SIGCONT, libc::SIGURG, libc::SIGWINCH].contains(&signal)
}

/// What a request on the host API while the guest boots asks of the boot.
#[derive(Debug, PartialEq)]
pub(super) enum DuringBoot {
    /// Nothing: it was answered.
    Answered,
    /// A signal for the process, to be sent once it runs.
    Signal(i32),
    /// SIGKILL (`runvm kill -s KILL`, `delete --force`): stop the boot.
    Kill,
}

/// One request on the host API while the guest boots: a signal is for the process once
/// it runs, except SIGKILL, which stops the boot; exec is refused.
pub(super) fn boot_api_request(api: &UnixListener) -> DuringBoot {
    let Some((mut conn, req)) = api::accept_request(api) else {
        return DuringBoot::Answered;
    };
    match req {
        Request::Start => refuse_start(&mut conn),
        Request::Signal { signal } => {
            api::answer(&mut conn, &Response::Ok);
            if signal == libc::SIGKILL {
                return DuringBoot::Kill;
            }
            return DuringBoot::Signal(signal);
        }
        Request::Exec { .. } | Request::AddContainer { .. } => refuse_exec(
            &mut conn,
            "cannot exec: the container's process has not started yet (container not running)",
        ),
        other => api::answer(&mut conn, &before_running(&other, "starting")),
    }
    DuringBoot::Answered
}

/// The answer to `runvm start` once the container was started.
pub(super) fn refuse_start(conn: &mut UnixStream) {
    api::answer(
        conn,
        &Response::Error("cannot start an already started container".into()),
    );
}

/// The answer to `runvm exec` when no process can be exec'd, saying why.
pub(super) fn refuse_exec(conn: &mut UnixStream, why: &str) {
    api::answer(
        conn,
        &ExecEvent::Failed {
            code: 1,
            message: why.into(),
        },
    );
}

/// The answer to a control request before the container's process runs (`phase`:
/// created, starting, stopping).
pub(super) fn before_running(req: &Request, phase: &str) -> ControlResponse {
    let what = match req {
        Request::Pause => "pause",
        Request::Resume => "resume",
        Request::Processes { .. } => "list the processes of",
        Request::Stats => "get the stats of",
        Request::Update { .. } => "update",
        _ => "handle this request for",
    };
    if let Request::Processes { guest: false } = req {
        // The monitor is the container's one host process.
        return ControlResponse::Processes {
            host_pids: vec![std::process::id() as i32],
            guest: Vec::new(),
        };
    }
    ControlResponse::Error(format!(
        "cannot {what} a {phase} container: container not running"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use runvm_protocol::{read_frame, write_frame};

    /// A monitor socket in a fresh directory, and a way to send it one request.
    struct Socket {
        dir: std::path::PathBuf,
        listener: UnixListener,
    }

    impl Socket {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("runvm-prestart-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let listener = UnixListener::bind(dir.join("api.sock")).unwrap();
            Self { dir, listener }
        }

        fn send(&self, req: &Request) -> UnixStream {
            let mut c = UnixStream::connect(self.dir.join("api.sock")).unwrap();
            write_frame(&mut c, req).unwrap();
            c
        }
    }

    impl Drop for Socket {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn while_the_guest_boots_signals_wait_and_sigkill_stops_the_boot() {
        let s = Socket::new("boot");
        let mut c = s.send(&Request::Signal { signal: 15 });
        assert_eq!(boot_api_request(&s.listener), DuringBoot::Signal(15));
        assert_eq!(read_frame::<_, Response>(&mut c).unwrap(), Response::Ok);

        let mut c = s.send(&Request::Start);
        assert_eq!(boot_api_request(&s.listener), DuringBoot::Answered);
        assert!(matches!(
            read_frame::<_, Response>(&mut c).unwrap(),
            Response::Error(m) if m.contains("already started")
        ));

        let mut c = s.send(&Request::Stats);
        assert_eq!(boot_api_request(&s.listener), DuringBoot::Answered);
        assert_eq!(
            read_frame::<_, ControlResponse>(&mut c).unwrap(),
            ControlResponse::Error(
                "cannot get the stats of a starting container: container not running".into()
            )
        );

        let mut c = s.send(&Request::Signal { signal: 9 });
        assert_eq!(boot_api_request(&s.listener), DuringBoot::Kill);
        assert_eq!(read_frame::<_, Response>(&mut c).unwrap(), Response::Ok);
    }

    #[test]
    fn a_created_container_waits_for_start_or_a_terminating_signal() {
        use nix::sys::signal::SigSet;
        use nix::sys::signalfd::SfdFlags;
        let s = Socket::new("created");
        let sigfd = SignalFd::with_flags(&SigSet::empty(), SfdFlags::SFD_NONBLOCK).unwrap();
        // Requests that do not start it are answered on the way.
        let mut winch = s.send(&Request::Signal {
            signal: libc::SIGWINCH,
        });
        let mut exec = s.send(&Request::Exec {
            spec: Default::default(),
            container: 0,
        });
        let _start = s.send(&Request::Start);
        match wait_for_start(&s.listener, &sigfd).unwrap() {
            BeforeStart::Start(_) => {}
            BeforeStart::Killed(n) => panic!("killed by {n}"),
        }
        assert_eq!(read_frame::<_, Response>(&mut winch).unwrap(), Response::Ok);
        assert!(matches!(
            read_frame::<_, ExecEvent>(&mut exec).unwrap(),
            ExecEvent::Failed { code: 1, message } if message.contains("created container")
        ));

        let _term = s.send(&Request::Signal {
            signal: libc::SIGTERM,
        });
        assert!(matches!(
            wait_for_start(&s.listener, &sigfd).unwrap(),
            BeforeStart::Killed(libc::SIGTERM)
        ));
    }

    #[test]
    fn a_created_container_lists_its_monitor_as_its_one_host_process() {
        let answer = before_running(&Request::Processes { guest: false }, "created");
        assert_eq!(
            answer,
            ControlResponse::Processes {
                host_pids: vec![std::process::id() as i32],
                guest: Vec::new()
            }
        );
        assert!(!terminates_by_default(libc::SIGWINCH));
        assert!(terminates_by_default(libc::SIGTERM));
    }
}
