//! The hello handshake, the first phase of the conversation with the guest: its init
//! connects on the control port and says [`GuestMessage::Hello`] with this protocol's
//! version, within the boot timeout however it sends its bytes. A connection that ends
//! before its Hello (the guest gave up on a slow connect and retries) is dropped, not
//! fatal; a few such connections may wait at once. The host API answers meanwhile
//! (signals are queued for the process), and the VM's end or the deadline ends the wait.

use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use runvm_protocol::{GuestMessage, PROTOCOL_VERSION};
use vmm_sys_util::eventfd::EventFd;

use super::poll::{eventfd, pending_signals, PollSet};
use super::prestart::{boot_api_request, DuringBoot};
use super::untrusted::{FrameReader, GuestText};
use super::vm::VmGone;
use super::{Io, MonitorError};

/// Most control connections kept waiting for their Hello at once.
const MAX_HELLO_CANDIDATES: usize = 8;
/// How long a write of a control message to the guest may block.
const CONTROL_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The control connection of a guest that said hello.
pub(super) struct Control {
    pub(super) stream: UnixStream,
    /// What came after the Hello, not yet cut into messages.
    pub(super) reader: FrameReader,
}

/// How the wait for the guest's Hello ended.
pub(super) enum Hello {
    /// The guest init said hello; `queued` are the signals for the process that came
    /// meanwhile.
    Said { control: Control, queued: Vec<i32> },
    /// `runvm kill -s KILL` (or `delete --force`) while the guest booted.
    Killed,
}

/// What a poll slot of the wait stands for.
#[derive(Clone, Copy, PartialEq)]
enum Slot {
    Control,
    VmDone,
    Signals,
    Api,
    /// A control connection that has not said hello, by its place in the candidates.
    Candidate(usize),
}

/// Waits up to `boot_timeout` for the guest's Hello.
pub(super) fn await_hello(
    io: &Io,
    vm_done: &EventFd,
    boot_timeout: Duration,
) -> Result<Hello, MonitorError> {
    let deadline = Instant::now() + boot_timeout;
    let mut queued = Vec::new();
    let mut candidates: Vec<(UnixStream, FrameReader)> = Vec::new();
    loop {
        let ready = {
            let mut waiting = PollSet::new();
            waiting.add(Slot::Control, io.control_listener.as_fd());
            waiting.add(Slot::VmDone, eventfd(vm_done));
            waiting.add(Slot::Signals, io.sigfd.as_fd());
            if let Some(api) = io.api {
                waiting.add(Slot::Api, api.as_fd());
            }
            for (i, (conn, _)) in candidates.iter().enumerate() {
                waiting.add(Slot::Candidate(i), conn.as_fd());
            }
            waiting.wait(Some(deadline))?
        };
        // From the last, so that removing one leaves the places of the others.
        for i in (0..candidates.len()).rev() {
            if !ready.contains(Slot::Candidate(i)) {
                continue;
            }
            let (conn, reader) = &mut candidates[i];
            let open = reader.fill(conn.as_fd()).map_err(MonitorError::HelloRead)?;
            match reader.next::<GuestMessage>() {
                Ok(Some(GuestMessage::Hello { version })) if version == PROTOCOL_VERSION => {
                    let (stream, reader) = candidates.swap_remove(i);
                    let control = Control { stream, reader };
                    return Ok(Hello::Said { control, queued });
                }
                Ok(Some(GuestMessage::Hello { version })) => {
                    return Err(MonitorError::Version(version))
                }
                Ok(Some(other)) => {
                    return Err(MonitorError::Protocol(format!(
                        "expected Hello, got {}",
                        describe(&other)
                    )))
                }
                Ok(None) if !open => {
                    log::debug!(
                        "a control connection ended before its Hello; waiting for the next"
                    );
                    candidates.remove(i);
                }
                Ok(None) => {}
                Err(e) => return Err(MonitorError::Frame(GuestText::new(e))),
            }
        }
        if ready.contains(Slot::Control) {
            match io.control_listener.accept() {
                Ok((conn, _)) => {
                    // Control messages to the guest are small: a guest that stops reading
                    // them fails the container instead of stalling the monitor.
                    let _ = conn.set_write_timeout(Some(CONTROL_WRITE_TIMEOUT));
                    if candidates.len() >= MAX_HELLO_CANDIDATES {
                        log::warn!("the guest opened more than {MAX_HELLO_CANDIDATES} control connections without a Hello; dropping the oldest");
                        candidates.remove(0);
                    }
                    candidates.push((conn, FrameReader::default()));
                }
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(MonitorError::Accept(e)),
            }
        }
        if ready.contains(Slot::VmDone) {
            return Err(MonitorError::DiedBeforeHello(VmGone::Ended));
        }
        if ready.contains(Slot::Signals) {
            queued.extend(pending_signals(io.sigfd));
        }
        if let Some(api) = io.api.filter(|_| ready.contains(Slot::Api)) {
            match boot_api_request(api) {
                DuringBoot::Answered => {}
                DuringBoot::Signal(signal) => queued.push(signal),
                DuringBoot::Kill => return Ok(Hello::Killed),
            }
        }
        if Instant::now() >= deadline {
            return Err(match candidates.iter().map(|(_, r)| r.received()).max() {
                None => MonitorError::BootTimeout(boot_timeout),
                Some(got) => MonitorError::HelloTimeout(boot_timeout, got),
            });
        }
    }
}

/// A guest message named for an error, without its (guest-written, unbounded) text.
fn describe(m: &GuestMessage) -> String {
    match m {
        GuestMessage::Hello { version } => format!("Hello (version {version})"),
        GuestMessage::Started { process, .. } => format!("Started (process {process})"),
        GuestMessage::StartFailed { process, .. } => format!("StartFailed (process {process})"),
        GuestMessage::Exited { process, .. } => format!("Exited (process {process})"),
        GuestMessage::Processes { request, .. } => format!("Processes (request {request})"),
        GuestMessage::Stats { request, .. } => format!("Stats (request {request})"),
        GuestMessage::Updated { request, .. } => format!("Updated (request {request})"),
        GuestMessage::ContainerRemoved { container, .. } => {
            format!("ContainerRemoved (container {container})")
        }
    }
}
