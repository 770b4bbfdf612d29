//! The seccomp filters of runvm's monitor threads: each thread that handles guest input,
//! or whose work a hostile guest drives, is confined to an allow-list of the system calls
//! it makes, with their arguments checked where they decide what the call can do (`ioctl`
//! request numbers, socket families and types, `fcntl` commands, no `PROT_EXEC` memory,
//! futex operations). Anything else traps: the process reports the call (thread, number,
//! arguments) and exits with 159.
//!
//! The threads ([`ThreadKind`]): the vCPUs and the device thread (applied by
//! [`crate::Vmm`]), the vhost-user watchdog, and in the monitor the stdio relays and the
//! vsock services (DNS relay, socket relays), which call [`enter`] first thing. Threads a
//! relay starts inherit its filter. The allow-lists are in [`rules`]; [`describe`] prints
//! them (`runvm features`, under the `io.github.runvm.seccomp.*` annotations).
//!
//! The monitor's main thread ([`ThreadKind::MonitorMain`]) is confined once its VM runs,
//! after its jail and privilege drop: its list is longer (it writes the state and cgroup
//! files bound in its jail, forks the OOM report's victim), but it has no `execve`
//! (hooks run in the hook runner's process), and no `socket`, `mount` or `ptrace`.
//! Where the monitor keeps its privileges (its state directory out of reach without
//! them), so does its main thread keep an unconfined course.
//!
//! Not confined: the thread that starts and stops the VM's threads (it runs before the
//! guest does and only joins them afterwards).

pub mod rules;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use rules::Allowed;

/// Errors building or applying a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("cannot install the seccomp filter: {0}")]
    Apply(#[from] seccompiler::Error),
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(#[source] std::io::Error),
}

/// Which thread a filter is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread (`KVM_RUN`, the exits, device activation).
    Vcpu,
    /// The device thread: the event loop of the virtio devices.
    Devices,
    /// One direction of a process's stdio between a host descriptor and the guest.
    StdioRelay,
    /// The DNS relay's listener and its connections.
    DnsRelay,
    /// The socket relays' listener and its connections.
    SocketRelay,
    /// The vhost-user front end's request watchdog.
    VhostWatchdog,
    /// The monitor's main thread once its VM runs, jailed and without privileges.
    MonitorMain,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 7] = [
        ThreadKind::Vcpu,
        ThreadKind::Devices,
        ThreadKind::StdioRelay,
        ThreadKind::DnsRelay,
        ThreadKind::SocketRelay,
        ThreadKind::VhostWatchdog,
        ThreadKind::MonitorMain,
    ];

    /// Whether `open` and `openat` fail with `EACCES` on the thread ([`DENIED`]): every
    /// kind but the monitor's main thread, which opens its state and cgroup files by name.
    pub fn denies_open(self) -> bool {
        self != ThreadKind::MonitorMain
    }

    /// The calls the stacked [`deny_open`] filter fails on this thread: [`DENIED`], or
    /// none where it [does not deny them](Self::denies_open).
    fn denied(self) -> &'static [(&'static str, i64)] {
        if self.denies_open() {
            DENIED
        } else {
            &[]
        }
    }

    /// The thread's name in reports and listings.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Devices => "devices",
            ThreadKind::StdioRelay => "stdio-relay",
            ThreadKind::DnsRelay => "dns-relay",
            ThreadKind::SocketRelay => "socket-relay",
            ThreadKind::VhostWatchdog => "vhost-watchdog",
            ThreadKind::MonitorMain => "monitor-main",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// One system call of a thread's list, its alternatives merged across the groups.
pub struct Entry {
    pub name: &'static str,
    pub nr: i64,
    /// Empty: allowed with any arguments. Otherwise, allowed when every check of one of
    /// the alternatives holds.
    pub when: Vec<&'static [rules::Check]>,
}

/// The allow-list of `kind`, by system call number.
pub fn entries(kind: ThreadKind) -> Vec<Entry> {
    let mut by_nr: BTreeMap<i64, Entry> = BTreeMap::new();
    for a in rules::groups(kind).into_iter().flatten() {
        let Allowed { name, nr, when } = *a;
        match by_nr.get_mut(&nr) {
            // Allowed unconditionally somewhere: stays so.
            Some(e) if e.when.is_empty() => {}
            Some(e) if when.is_empty() => e.when.clear(),
            Some(e) => e.when.extend_from_slice(when),
            None => {
                by_nr.insert(
                    nr,
                    Entry {
                        name,
                        nr,
                        when: when.to_vec(),
                    },
                );
            }
        }
    }
    by_nr.into_values().collect()
}

/// The calls every thread makes fail with `EACCES` instead of trapping: `open` and
/// `openat`. glibc opens files behind the program's back, once per process, from whatever
/// thread first needs them (`/proc/sys/vm/overcommit_memory` at the first trim of a malloc
/// heap, `/sys/devices/system/cpu/online` for the ninth malloc arena), and goes on
/// without them when the open fails. A confined thread that makes such a call gets an
/// error, never a file: [`DENY_OPEN`]'s filter answers them, stacked on the thread's own
/// (whose allow-list lets them through to it).
const DENIED: &[(&str, i64)] = &[("open", libc::SYS_open), ("openat", libc::SYS_openat)];

/// The filter that answers [`DENIED`] with `EACCES` and allows everything else (the
/// thread's own filter decides that).
fn deny_open() -> Result<BpfProgram, SeccompError> {
    let rules = DENIED.iter().map(|(_, nr)| (*nr, vec![])).collect();
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        TargetArch::x86_64,
    )?;
    Ok(f.try_into()?)
}

/// Builds the BPF program for `kind`.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // Failed by the stacked [`deny_open`] filter: they must not trap here.
    for (_, nr) in kind.denied() {
        rules.insert(*nr, vec![]);
    }
    for entry in entries(kind) {
        let mut alternatives = Vec::with_capacity(entry.when.len());
        for checks in &entry.when {
            let conditions = checks
                .iter()
                .map(|c| {
                    let op = if c.mask == u64::MAX {
                        SeccompCmpOp::Eq
                    } else {
                        SeccompCmpOp::MaskedEq(c.mask)
                    };
                    SeccompCondition::new(c.arg, SeccompCmpArgLen::Dword, op, c.value)
                })
                .collect::<Result<Vec<_>, _>>()?;
            alternatives.push(SeccompRule::new(conditions)?);
        }
        rules.insert(entry.nr, alternatives);
    }
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    Ok(f.try_into()?)
}

/// `kind`'s allow-list for people: one line per system call, `name` or
/// `name: alternative | alternative`, each alternative its checks joined by ` && `.
pub fn describe(kind: ThreadKind) -> Vec<String> {
    let denied = kind
        .denied()
        .iter()
        .map(|(name, _)| format!("{name}: fails with EACCES"));
    entries(kind)
        .iter()
        .map(|e| {
            if e.when.is_empty() {
                return e.name.to_string();
            }
            let alternatives: Vec<String> = e
                .when
                .iter()
                .map(|checks| {
                    checks
                        .iter()
                        .map(|c| {
                            if c.mask == u64::MAX {
                                format!("arg{} == {} ({:#x})", c.arg, c.what, c.value)
                            } else {
                                format!(
                                    "arg{} & {:#x} == {:#x} ({})",
                                    c.arg, c.mask, c.value, c.what
                                )
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(" && ")
                })
                .collect();
            format!("{}: {}", e.name, alternatives.join(" | "))
        })
        .chain(denied)
        .collect()
}

/// The exit code of a process one of whose threads broke its filter or could not be
/// confined.
pub const EXIT_CODE: i32 = 159;

/// Set (debug builds' `RUNVM_NO_SECCOMP`) through [`disable_for_process`].
static DISABLED: AtomicBool = AtomicBool::new(false);

/// Makes [`enter`] a no-op in this process: only to debug a filter.
pub fn disable_for_process() {
    DISABLED.store(true, Ordering::SeqCst);
}

thread_local! {
    /// The calling thread's kind once confined (an index into [`ThreadKind::ALL`]), for
    /// the SIGSYS report.
    static CONFINED_AS: std::cell::Cell<u8> = const { std::cell::Cell::new(u8::MAX) };
}

/// `kind`'s program, built once per process.
fn program(kind: ThreadKind) -> Result<&'static BpfProgram, SeccompError> {
    static PROGRAMS: [OnceLock<BpfProgram>; ThreadKind::ALL.len()] =
        [const { OnceLock::new() }; ThreadKind::ALL.len()];
    let slot = &PROGRAMS[kind.index()];
    if let Some(p) = slot.get() {
        return Ok(p);
    }
    let built = filter(kind)?;
    Ok(slot.get_or_init(|| built))
}

/// Installs `program`, built by [`filter`] for `kind`, on the calling thread (after the
/// SIGSYS reporter), with the [`deny_open`] filter stacked on it.
pub fn apply(kind: ThreadKind, program: &BpfProgram) -> Result<(), SeccompError> {
    static DENY_OPEN: OnceLock<BpfProgram> = OnceLock::new();
    let deny = match DENY_OPEN.get() {
        Some(p) => p,
        None => {
            let built = deny_open()?;
            DENY_OPEN.get_or_init(|| built)
        }
    };
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, sigsys_handler)
        .map_err(|e| SeccompError::Handler(e.into()))?;
    CONFINED_AS.with(|k| k.set(kind.index() as u8));
    if kind.denies_open() {
        seccompiler::apply_filter(deny)?;
    }
    seccompiler::apply_filter(program)?;
    Ok(())
}

/// Confines the calling thread as `kind` (unless [`disable_for_process`] was called). A
/// thread that cannot be confined must not go on with guest input: the process logs why
/// and exits with [`EXIT_CODE`].
pub fn enter(kind: ThreadKind) {
    if DISABLED.load(Ordering::SeqCst) {
        return;
    }
    if let Err(e) = program(kind).and_then(|p| apply(kind, p)) {
        log::error!("cannot confine the {} thread: {e}; stopping", kind.name());
        std::process::exit(EXIT_CODE);
    }
}

/// The name of system call `nr` if some list has it (without allocating: it runs in the
/// SIGSYS handler).
fn name_of(nr: i64) -> &'static str {
    use rules::*;
    [
        BASE,
        SPAWN,
        VCPU,
        DEVICES,
        STDIO_RELAY,
        RELAY,
        DNS_RELAY,
        SOCKET_RELAY,
        VHOST_WATCHDOG,
        MONITOR_MAIN,
    ]
    .into_iter()
    .flatten()
    .find(|a| a.nr == nr)
    .map_or("", |a| a.name)
}

/// A fixed buffer to format the SIGSYS report in without allocating; what does not fit
/// is cut.
struct ReportBuf {
    bytes: [u8; 384],
    len: usize,
}

impl std::fmt::Write for ReportBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS; `si_syscall` is the int at
    // byte offset 24 of it on x86_64 (after signo, errno, code and `si_call_addr`).
    let nr = unsafe { *(info as *const u8).add(24).cast::<i32>() };
    // SAFETY: the handler is installed with SA_SIGINFO, so `ctx` is the interrupted
    // thread's ucontext; its registers hold the system call's arguments.
    let args = unsafe {
        let g = &(*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs;
        [
            libc::REG_RDI,
            libc::REG_RSI,
            libc::REG_RDX,
            libc::REG_R10,
            libc::REG_R8,
            libc::REG_R9,
        ]
        .map(|r| g[r as usize] as u64)
    };
    let kind = CONFINED_AS.with(|k| k.get());
    let mut msg = ReportBuf {
        bytes: [0; 384],
        len: 0,
    };
    let _ = match ThreadKind::ALL.get(usize::from(kind)) {
        Some(k) => write!(msg, "runvm: the {} thread", k.name()),
        // Filters are inherited: a thread started by a confined one.
        None => write!(msg, "runvm: a thread started by a confined one"),
    };
    let _ = writeln!(
        msg,
        " made system call {nr} {}({:#x}, {:#x}, {:#x}, {:#x}, {:#x}, {:#x}), outside its \
         seccomp filter; stopping",
        name_of(i64::from(nr)),
        args[0],
        args[1],
        args[2],
        args[3],
        args[4],
        args[5]
    );
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is valid.
    unsafe {
        libc::write(2, msg.bytes.as_ptr().cast(), msg.len);
        libc::_exit(EXIT_CODE);
    }
}

#[cfg(test)]
mod tests;
