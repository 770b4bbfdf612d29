//! A hostile guest init, for runvm's tests only (`tests/tests/hostile.rs`).
//!
//! It runs as PID 1 of a runvm guest in place of `guest-init` (`cargo xtask` packs it in
//! `target/runvm/hostile-initramfs.cpio`) and misbehaves towards the host in one of the
//! ways a broken or compromised guest could. The behaviour is chosen by the kernel
//! command-line word `runvm_hostile=<mode>` (the kernel hands such words to init as
//! environment; runvm's `RUNVM_KERNEL_CMDLINE_APPEND` puts it there). See [`Mode`] for
//! the list. Where a mode says "then behaves", it speaks the protocol like the real init
//! for a workload that prints one line and exits 0, without running any workload.
//!
//! The `share-*` modes attack the container's virtio-fs share instead of the vsock
//! protocol: after `Run` they mount the whole share (tag `RootfsSpec::share_tag`) at
//! `/share`, which a well-behaved guest shows the container only in part, try what a
//! guest root can do to the host's files through it, and then behave, printing one
//! line per attempt before the usual line: `<attempt> <share path>: ok` or
//! `<attempt> <share path>: <errno>` (`mount: <errno>` when the share cannot be mounted).
//! A host test decides which of those must have failed and checks the host's files.
//! Several share modes run in one boot, in order, when named with commas
//! (`runvm_hostile=share-setuid,share-mknod`).
//!
//! It refuses to run as anything but PID 1, so starting it by accident on a host does
//! nothing.

use std::io::Write;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, VsockAddr};
use runvm_protocol::{
    chunk, chunk_header, read_frame, read_frame_limited, write_frame, ExitStatus, GuestMessage,
    HostMessage, MountSpec, RootfsSpec, StreamHeader, CONTROL_PORT, MAIN_PROCESS, MAX_CHUNK_LEN,
    MAX_FRAME_LEN, MAX_HOST_FRAME_LEN, OUTPUT_STREAM_FD, PROTOCOL_VERSION, STREAM_PORT,
};

mod share;

/// The host's vsock CID.
const HOST_CID: u32 = 2;
/// What a mode that "then behaves" prints.
const BEHAVED_OUTPUT: &str = "the hostile init behaved\n";

/// The ways this init misbehaves (`runvm_hostile=<name>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Never opens any connection; sleeps.
    NeverConnect,
    /// Exits at once: the guest kernel panics ("Attempted to kill init").
    Panic,
    /// Opens the control connection and never sends anything.
    Silent,
    /// Sends a frame whose body is not JSON.
    Garbage,
    /// Sends a length prefix far over the frame limit.
    Oversized,
    /// Sends a valid `Hello` with another protocol version.
    BadVersion,
    /// Sends `Started` instead of `Hello`.
    NotHello,
    /// Announces a frame and sends its bytes one per second, for ever, before `Hello`.
    Trickle,
    /// Says hello, gets `Run`, then trickles a frame as `Trickle` does.
    TrickleRun,
    /// Says hello, gets `Run`, reports the exit of process 77, which never started.
    ExitUnknown,
    /// Reports `Started` for the main process twice.
    StartedTwice,
    /// Reports the main process's exit without ever reporting it started.
    ExitBeforeStart,
    /// Reports a death by signal `i32::MAX`.
    BadSignal,
    /// Reports a failed start with exit code 0.
    StartFailedZero,
    /// Reports a failed start with a message of almost a MiB, full of terminal escapes.
    HugeMessage,
    /// Opens 300 stream connections whose headers name processes that do not exist.
    StreamBogus,
    /// Opens 200 stream connections that never send a header, then behaves.
    StreamSilent,
    /// Opens the main process's output stream twice.
    StreamTwice,
    /// Floods the main process's stdout for ever; only SIGKILL from the host ends it.
    StdoutFlood,
    /// Behaves, but its output stream turns to garbage after the behaved line: a chunk for
    /// an fd that does not exist, then a stderr chunk, an overlong chunk header and 1 MiB
    /// of raw bytes, which the host must all drop without blocking the guest.
    OutputGarbage,
    /// Connects to vsock ports (and a CID) nobody listens on, many times, then behaves.
    WrongPorts,
    /// Says hello, gets `Run`, reports `Started`, then exits (the guest kernel panics).
    CrashAfterStart,
    /// In the share's root directory: a setuid-root and a setgid-root executable
    /// (`hostile-setuid`, `hostile-setgid`, owned 0:0, modes 4755 and 2755), one created
    /// with mode 6755 (`hostile-setuid-created`), and one given mode 6755 and then
    /// appended to (`hostile-setuid-written`), then behaves.
    ShareSetuid,
    /// In the share's root directory: device nodes (`hostile-mem` c 1:1, `hostile-null`
    /// c 1:3, `hostile-sda` b 8:0), a fifo (`hostile-fifo`) and a bound UNIX socket
    /// (`hostile-socket`), then behaves.
    ShareMknod,
    /// In the share's root directory: files given away to other owners
    /// (`hostile-chown` to 12345:12345, `hostile-chown-root` to 0:0), a directory anyone
    /// may write (`hostile-open/`) with a file created in it as 12345:12345
    /// (`hostile-made-as-12345`), and the root directory's first regular file (by name)
    /// chowned to 12345:12345, then behaves.
    ShareChown,
    /// Extended attributes the host would act on: a file capability
    /// (`security.capability`, CAP_SYS_ADMIN) on `hostile-fcap`, overlay's
    /// `trusted.overlay.opaque` and `trusted.overlay.redirect` on `hostile-opaque/`, and a
    /// `user.hostile` attribute, all in the root directory, then behaves.
    ShareXattr,
    /// Symlinks out of the share in the root directory (`hostile-abs` → `/etc/shadow`,
    /// `hostile-climb` → `../../../../../../../../etc/shadow`, `hostile-proc` →
    /// `/proc/1/root/etc/shadow`), and `etc/passwd` replaced by a symlink to
    /// `../../passwd` (one level above the root), then behaves.
    ShareSymlink,
    /// Hard links across the share's entries: each file entry (and the first file of each
    /// directory entry) linked into the root directory as `hostile-link-<entry>`, each
    /// successful link then appended to; and the root's `hostile-own` linked into each
    /// directory entry. Then behaves.
    ShareHardlink,
    /// Writes to every entry the host shares read-only (a bind mount with `ro` or `rro`,
    /// and the root when `RootfsSpec::readonly`): create, append, truncate, chmod,
    /// setxattr, mkdir, rename and unlink, then behaves.
    ShareWriteRo,
    /// Changes the share's top level, which a container never sees: creates
    /// `hostile-top`, `hostile-topdir/` and `hostile-toplink` (→ `/`), renames each entry
    /// `<e>` to `hostile-moved-<e>` and puts a symlink to `/` in its place, then behaves.
    ShareTopLevel,
    /// Opens one file of the share's root directory again and again (up to 200000 times
    /// or 20 s, with the descriptor limit raised), then closes them all and behaves: the
    /// host's file server must stay bounded.
    ShareOpenFlood,
    /// Runs the main process, starts every member container the host adds (`Started`)
    /// and then ignores everything about it: its signals (a SIGKILL included) and its
    /// removal. The main process ends on its first signal, reported as a death by it.
    IgnoreMembers,
}

impl Mode {
    const ALL: [(&'static str, Mode); 32] = [
        ("never-connect", Mode::NeverConnect),
        ("panic", Mode::Panic),
        ("silent", Mode::Silent),
        ("garbage", Mode::Garbage),
        ("oversized", Mode::Oversized),
        ("bad-version", Mode::BadVersion),
        ("not-hello", Mode::NotHello),
        ("trickle", Mode::Trickle),
        ("trickle-run", Mode::TrickleRun),
        ("exit-unknown", Mode::ExitUnknown),
        ("started-twice", Mode::StartedTwice),
        ("exit-before-start", Mode::ExitBeforeStart),
        ("bad-signal", Mode::BadSignal),
        ("start-failed-zero", Mode::StartFailedZero),
        ("huge-message", Mode::HugeMessage),
        ("stream-bogus", Mode::StreamBogus),
        ("stream-silent", Mode::StreamSilent),
        ("stream-twice", Mode::StreamTwice),
        ("stdout-flood", Mode::StdoutFlood),
        ("output-garbage", Mode::OutputGarbage),
        ("wrong-ports", Mode::WrongPorts),
        ("crash-after-start", Mode::CrashAfterStart),
        ("share-setuid", Mode::ShareSetuid),
        ("share-mknod", Mode::ShareMknod),
        ("share-chown", Mode::ShareChown),
        ("share-xattr", Mode::ShareXattr),
        ("share-symlink", Mode::ShareSymlink),
        ("share-hardlink", Mode::ShareHardlink),
        ("share-write-ro", Mode::ShareWriteRo),
        ("share-top-level", Mode::ShareTopLevel),
        ("share-open-flood", Mode::ShareOpenFlood),
        ("ignore-members", Mode::IgnoreMembers),
    ];

    fn parse(name: &str) -> Option<Mode> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, m)| *m)
    }

    /// Whether this mode attacks the share (and so may run with others).
    fn is_share(self) -> bool {
        matches!(
            self,
            Mode::ShareSetuid
                | Mode::ShareMknod
                | Mode::ShareChown
                | Mode::ShareXattr
                | Mode::ShareSymlink
                | Mode::ShareHardlink
                | Mode::ShareWriteRo
                | Mode::ShareTopLevel
                | Mode::ShareOpenFlood
        )
    }

    /// The modes of `runvm_hostile`: one, or several share modes separated by commas.
    fn parse_list(names: &str) -> Option<Vec<Mode>> {
        let modes = names
            .split(',')
            .map(Mode::parse)
            .collect::<Option<Vec<Mode>>>()?;
        (modes.len() == 1 || modes.iter().all(|m| m.is_share())).then_some(modes)
    }
}

fn say(msg: &str) {
    // The guest console (only visible with RUNVM_DEBUG_CONSOLE=1).
    let _ = writeln!(std::io::stderr(), "hostile-init: {msg}");
}

fn main() {
    if nix::unistd::getpid().as_raw() != 1 {
        eprintln!(
            "hostile-init is a guest init for runvm's tests; it only runs as PID 1 of a test VM"
        );
        std::process::exit(2);
    }
    let name = std::env::var("runvm_hostile").unwrap_or_default();
    let Some(modes) = Mode::parse_list(&name) else {
        say(&format!("unknown mode {name:?}; sleeping"));
        hang()
    };
    say(&format!("mode {name}"));
    let done = match modes[..] {
        [mode] => misbehave(mode),
        _ => attack_share(&modes),
    };
    if let Err(e) = done {
        say(&e);
    }
    // Whatever happened, never exit by accident (Panic and CrashAfterStart exit on purpose).
    hang()
}

type Result<T> = std::result::Result<T, String>;

fn misbehave(mode: Mode) -> Result<()> {
    match mode {
        Mode::NeverConnect => hang(),
        Mode::Panic => std::process::exit(1),
        Mode::Silent => {
            let _control = connect(CONTROL_PORT)?;
            hang()
        }
        Mode::Garbage => {
            let mut c = connect(CONTROL_PORT)?;
            let body = b"{\"Hello\": this is not json at all \x00\xff";
            c.write_all(&(body.len() as u32).to_le_bytes())
                .and_then(|_| c.write_all(body))
                .map_err(|e| e.to_string())?;
            hang()
        }
        Mode::Oversized => {
            let mut c = connect(CONTROL_PORT)?;
            c.write_all(&(u32::MAX - 15).to_le_bytes())
                .and_then(|_| c.write_all(&[b'{'; 4096]))
                .map_err(|e| e.to_string())?;
            hang()
        }
        Mode::BadVersion => {
            let mut c = connect(CONTROL_PORT)?;
            send(&mut c, &GuestMessage::Hello { version: 999 })?;
            hang()
        }
        Mode::NotHello => {
            let mut c = connect(CONTROL_PORT)?;
            send(
                &mut c,
                &GuestMessage::Started {
                    process: MAIN_PROCESS,
                    pid: 1,
                },
            )?;
            hang()
        }
        Mode::Trickle => {
            let mut c = connect(CONTROL_PORT)?;
            trickle(&mut c)
        }
        Mode::TrickleRun => {
            let mut c = hello_and_run()?;
            trickle(&mut c)
        }
        Mode::ExitUnknown => {
            let mut c = hello_and_run()?;
            send(
                &mut c,
                &GuestMessage::Exited {
                    process: 77,
                    status: ExitStatus::Exited(0),
                    oom_kills: 0,
                },
            )?;
            hang()
        }
        Mode::StartedTwice => {
            let mut c = hello_and_run()?;
            let _streams = main_streams()?;
            for _ in 0..2 {
                send(
                    &mut c,
                    &GuestMessage::Started {
                        process: MAIN_PROCESS,
                        pid: 2,
                    },
                )?;
            }
            hang()
        }
        Mode::ExitBeforeStart => {
            let mut c = hello_and_run()?;
            send(
                &mut c,
                &GuestMessage::Exited {
                    process: MAIN_PROCESS,
                    status: ExitStatus::Exited(0),
                    oom_kills: 0,
                },
            )?;
            hang()
        }
        Mode::BadSignal => {
            let mut c = hello_and_run()?;
            let streams = main_streams()?;
            started(&mut c)?;
            close_outputs(&streams);
            send(
                &mut c,
                &GuestMessage::Exited {
                    process: MAIN_PROCESS,
                    status: ExitStatus::Signaled(i32::MAX),
                    oom_kills: 0,
                },
            )?;
            hang()
        }
        Mode::StartFailedZero => {
            let mut c = hello_and_run()?;
            send(
                &mut c,
                &GuestMessage::StartFailed {
                    process: MAIN_PROCESS,
                    code: 0,
                    message: "all is well, exit 0".into(),
                },
            )?;
            hang()
        }
        Mode::HugeMessage => {
            let mut c = hello_and_run()?;
            // Escapes that would recolour, clear or retitle the caller's terminal.
            let mut message = String::from("\x1b[2J\x1b]0;owned\x07\x1b[31mHUGE");
            // JSON writes each `\r` as two bytes: stay under the frame limit.
            let room = MAX_FRAME_LEN as usize / 17 * 15;
            while message.len() < room {
                message.push_str("AAAAAAAAAAAAAAA\r");
            }
            send(
                &mut c,
                &GuestMessage::StartFailed {
                    process: MAIN_PROCESS,
                    code: 127,
                    message,
                },
            )?;
            hang()
        }
        Mode::StreamBogus => {
            let _c = hello_and_run()?;
            let mut held = Vec::new();
            for i in 0..300u32 {
                match connect_once(STREAM_PORT) {
                    Ok(mut s) => {
                        let _ = write_frame(
                            &mut s,
                            &StreamHeader {
                                process: 4000 + i,
                                fd: 1,
                            },
                        );
                        held.push(s);
                    }
                    Err(e) => say(&format!("bogus stream {i}: {e}")),
                }
            }
            hang()
        }
        Mode::StreamSilent => {
            let c = hello_and_run()?;
            let mut held = Vec::new();
            for i in 0..200 {
                match connect_once(STREAM_PORT) {
                    Ok(s) => held.push(s),
                    Err(e) => say(&format!("silent stream {i}: {e}")),
                }
            }
            say(&format!("{} silent stream connections open", held.len()));
            behave(c)
        }
        Mode::StreamTwice => {
            let mut c = hello_and_run()?;
            let _streams = main_streams()?;
            let _again = open_stream(MAIN_PROCESS, OUTPUT_STREAM_FD)?;
            started(&mut c)?;
            hang()
        }
        Mode::StdoutFlood => {
            let c = hello_and_run()?;
            flood(c)
        }
        Mode::OutputGarbage => {
            let mut c = hello_and_run()?;
            let mut streams = main_streams()?;
            started(&mut c)?;
            let mut out = chunk(1, BEHAVED_OUTPUT.as_bytes());
            out.extend(chunk(9, b"GARBAGE-FD\n"));
            out.extend(chunk(2, b"GARBAGE-AFTER\n"));
            let mut long = chunk_header(1, 0).to_vec();
            long[1..].copy_from_slice(&u32::MAX.to_le_bytes());
            out.extend(long);
            out.extend(vec![b'G'; 1 << 20]);
            streams[1]
                .write_all(&out)
                .map_err(|e| format!("write the output stream: {e}"))?;
            finish_behaving(c, streams)
        }
        Mode::WrongPorts => {
            for round in 0..10 {
                for port in [0, 1, 22, 80, 1023, 1026, 1027, 2049, 8080, 65535, 1 << 30] {
                    if connect_once(port).is_ok() {
                        say(&format!(
                            "port {port} accepted a connection (round {round})"
                        ));
                    }
                }
            }
            for _ in 0..2 {
                // A CID that is neither the host nor this guest.
                let _ = connect_to(5, CONTROL_PORT);
            }
            behave(hello_and_run()?)
        }
        Mode::IgnoreMembers => ignore_members(),
        Mode::CrashAfterStart => {
            let mut c = hello_and_run()?;
            let _streams = main_streams()?;
            started(&mut c)?;
            std::process::exit(1)
        }
        Mode::ShareSetuid
        | Mode::ShareMknod
        | Mode::ShareChown
        | Mode::ShareXattr
        | Mode::ShareSymlink
        | Mode::ShareHardlink
        | Mode::ShareWriteRo
        | Mode::ShareTopLevel
        | Mode::ShareOpenFlood => attack_share(&[mode]),
    }
}

/// Gets `Run`, attacks the share in each of `modes` in turn, then behaves, printing every
/// attack's report.
fn attack_share(modes: &[Mode]) -> Result<()> {
    let (c, run) = hello_and_run_spec()?;
    let report = share::attack(modes, &run);
    say(&report);
    behave_printing(c, &report)
}

fn hang() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn reboot() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    hang()
}

fn connect_to(cid: u32, port: u32) -> std::result::Result<UnixStream, Errno> {
    let fd: OwnedFd = socket::socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::connect(fd.as_raw_fd(), &VsockAddr::new(cid, port))?;
    // A vsock stream fd used through the std socket API (read, write, shutdown).
    Ok(UnixStream::from(fd))
}

fn connect_once(port: u32) -> std::result::Result<UnixStream, Errno> {
    connect_to(HOST_CID, port)
}

/// Connects to a host port, retrying refusals for a while (as the real init does).
fn connect(port: u32) -> Result<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match connect_once(port) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() < deadline => {
                say(&format!("connect to port {port}: {e}; retrying"));
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("connect to host port {port}: {e}")),
        }
    }
}

fn send(c: &mut UnixStream, msg: &GuestMessage) -> Result<()> {
    write_frame(c, msg).map_err(|e| format!("send {msg:?}: {e}"))
}

/// What `Run` said about the container's files.
pub struct RunFiles {
    pub rootfs: RootfsSpec,
    pub mounts: Vec<MountSpec>,
}

/// Connects the control channel, says a proper hello and waits for `Run`.
fn hello_and_run() -> Result<UnixStream> {
    hello_and_run_spec().map(|(c, _)| c)
}

/// [`hello_and_run`], keeping what `Run` said about the container's files.
fn hello_and_run_spec() -> Result<(UnixStream, RunFiles)> {
    let mut c = connect(CONTROL_PORT)?;
    send(
        &mut c,
        &GuestMessage::Hello {
            version: PROTOCOL_VERSION,
        },
    )?;
    match read_frame_limited::<_, HostMessage>(&mut c, MAX_HOST_FRAME_LEN) {
        Ok(HostMessage::Run { rootfs, mounts, .. }) => Ok((c, RunFiles { rootfs, mounts })),
        Ok(other) => Err(format!("expected Run, got {other:?}")),
        Err(e) => Err(format!("waiting for Run: {e}")),
    }
}

fn open_stream(process: u32, fd: u8) -> Result<UnixStream> {
    let mut s = connect(STREAM_PORT)?;
    write_frame(&mut s, &StreamHeader { process, fd })
        .map_err(|e| format!("stream {fd} header: {e}"))?;
    Ok(s)
}

/// The main process's stdin and output streams.
fn main_streams() -> Result<[UnixStream; 2]> {
    Ok([
        open_stream(MAIN_PROCESS, 0)?,
        open_stream(MAIN_PROCESS, OUTPUT_STREAM_FD)?,
    ])
}

fn started(c: &mut UnixStream) -> Result<()> {
    send(
        c,
        &GuestMessage::Started {
            process: MAIN_PROCESS,
            pid: 2,
        },
    )
}

fn close_outputs(streams: &[UnixStream; 2]) {
    let _ = streams[1].shutdown(Shutdown::Write);
}

/// Announces a 1000-byte frame and sends it one byte a second.
fn trickle(c: &mut UnixStream) -> ! {
    let _ = c.write_all(&1000u32.to_le_bytes());
    loop {
        if c.write_all(b" ").is_err() {
            hang()
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The rest of a well-behaved run: streams, `Started`, one line of output, `Exited` with
/// code 0, and the reboot once the host says `Shutdown`.
fn behave(c: UnixStream) -> Result<()> {
    behave_printing(c, "")
}

/// [`behave`], printing `first` before the line.
fn behave_printing(mut c: UnixStream, first: &str) -> Result<()> {
    let mut streams = main_streams()?;
    started(&mut c)?;
    streams[1]
        .write_all(&chunk(1, format!("{first}{BEHAVED_OUTPUT}").as_bytes()))
        .map_err(|e| format!("write stdout: {e}"))?;
    finish_behaving(c, streams)
}

/// The end of a well-behaved run, once its output is written: `Exited` with code 0 and
/// the reboot once the host says `Shutdown`.
fn finish_behaving(mut c: UnixStream, streams: [UnixStream; 2]) -> Result<()> {
    close_outputs(&streams);
    send(
        &mut c,
        &GuestMessage::Exited {
            process: MAIN_PROCESS,
            status: ExitStatus::Exited(0),
            oom_kills: 0,
        },
    )?;
    wait_for_shutdown(&mut c);
    reboot()
}

fn wait_for_shutdown(c: &mut UnixStream) {
    loop {
        match read_frame::<_, HostMessage>(c) {
            Ok(HostMessage::Shutdown) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// [`Mode::IgnoreMembers`].
fn ignore_members() -> Result<()> {
    let mut c = hello_and_run()?;
    let streams = main_streams()?;
    started(&mut c)?;
    loop {
        match read_frame::<_, HostMessage>(&mut c) {
            Ok(HostMessage::AddContainer(m)) => send(
                &mut c,
                &GuestMessage::Started {
                    process: m.process,
                    pid: 3,
                },
            )?,
            Ok(HostMessage::Signal {
                process: MAIN_PROCESS,
                signal,
            }) => {
                close_outputs(&streams);
                send(
                    &mut c,
                    &GuestMessage::Exited {
                        process: MAIN_PROCESS,
                        status: ExitStatus::Signaled(signal),
                        oom_kills: 0,
                    },
                )?;
                wait_for_shutdown(&mut c);
                reboot()
            }
            Ok(other) => say(&format!("ignoring {other:?}")),
            Err(e) => return Err(format!("control connection: {e}")),
        }
    }
}

/// Writes to stdout as fast as the host takes it until the host sends SIGKILL for the
/// main process; then reports the death by SIGKILL, as a real workload would.
fn flood(mut c: UnixStream) -> Result<()> {
    let streams = main_streams()?;
    started(&mut c)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut out = streams[1]
        .try_clone()
        .map_err(|e| format!("clone stdout: {e}"))?;
    let flag = stop.clone();
    let writer = std::thread::spawn(move || {
        let flood = chunk(1, &vec![b'y'; MAX_CHUNK_LEN]);
        while !flag.load(Ordering::Relaxed) {
            if out.write_all(&flood).is_err() {
                return;
            }
        }
    });
    loop {
        match read_frame::<_, HostMessage>(&mut c) {
            Ok(HostMessage::Signal {
                process: MAIN_PROCESS,
                signal: libc::SIGKILL,
            }) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("control: {e}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    close_outputs(&streams);
    let _ = writer.join();
    send(
        &mut c,
        &GuestMessage::Exited {
            process: MAIN_PROCESS,
            status: ExitStatus::Signaled(libc::SIGKILL),
            oom_kills: 0,
        },
    )?;
    wait_for_shutdown(&mut c);
    reboot()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_modes_combine_and_the_others_stand_alone() {
        assert_eq!(
            Mode::parse_list("share-setuid,share-mknod"),
            Some(vec![Mode::ShareSetuid, Mode::ShareMknod])
        );
        assert_eq!(Mode::parse_list("panic"), Some(vec![Mode::Panic]));
        assert_eq!(Mode::parse_list("share-setuid,panic"), None);
        assert_eq!(Mode::parse_list("share-setuid,"), None);
        assert_eq!(Mode::parse_list(""), None);
    }
}
