//! Compiles the OCI `linux.seccomp` profile into classic BPF on the host, with libseccomp,
//! as runc does (`libcontainer/seccomp`): the guest only installs the program.
//!
//! runc's semantics are kept: unknown syscall names are skipped (a profile lists syscalls
//! of newer kernels and other architectures); a rule whose action is the default action is
//! skipped (libseccomp refuses it); a rule whose arguments name one argument twice is
//! split into one rule per comparison (OR), otherwise the comparisons are ANDed;
//! `SCMP_CMP_MASKED_EQ` takes `value` as the mask and `valueTwo` as the datum;
//! `SCMP_ACT_ERRNO` and `SCMP_ACT_TRACE` without `errnoRet` return `EPERM`. What runvm
//! cannot do (`SCMP_ACT_NOTIFY`, which needs a seccomp agent on the host reached over
//! `listenerPath`) is an error that says so.

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
    LinuxSyscall,
};
use runvm_protocol::{SeccompProgram, SECCOMP_INSTRUCTION_LEN};
use std::io::{Read, Seek};

/// Most arguments a syscall has (and so the largest `args[].index` plus one).
const SYSCALL_MAX_ARGS: u32 = 6;
/// The kernel's limit on a classic BPF program (`BPF_MAXINSNS`).
const MAX_INSTRUCTIONS: usize = 4096;

/// `SECCOMP_FILTER_FLAG_*` of `seccomp(2)`.
const FLAG_TSYNC: u32 = 1;
const FLAG_LOG: u32 = 2;
const FLAG_SPEC_ALLOW: u32 = 4;

/// A `linux.seccomp` profile that cannot be compiled; the message names the field.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// What the profile asks that runvm refuses or cannot do.
    #[error("linux.seccomp: {0}")]
    Invalid(String),
    /// libseccomp refused a step (`what`, naming the field).
    #[error("linux.seccomp: {what}: {source}")]
    Libseccomp {
        what: String,
        source: libseccomp::error::SeccompError,
    },
    /// Getting the compiled program out of libseccomp.
    #[error("linux.seccomp: {what}: {source}")]
    Export {
        what: &'static str,
        source: std::io::Error,
    },
}

fn err(msg: impl Into<String>) -> SeccompError {
    SeccompError::Invalid(msg.into())
}

/// Wraps libseccomp's error of the step `what`.
fn refused(
    what: impl Into<String>,
) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError {
    move |source| SeccompError::Libseccomp {
        what: what.into(),
        source,
    }
}

/// Compiles `profile` into the BPF program and `seccomp(2)` flags the guest installs.
pub fn compile(profile: &LinuxSeccomp) -> Result<SeccompProgram, SeccompError> {
    if profile.listener_path().is_some() {
        return Err(err(
            "listenerPath (a seccomp agent for SCMP_ACT_NOTIFY) is not supported by runvm",
        ));
    }
    let default_errno = profile.default_errno_ret();
    let default = action(profile.default_action(), default_errno)
        .map_err(|m| err(format!("defaultAction: {m}")))?;
    let mut ctx = ScmpFilterContext::new(default).map_err(refused("cannot create the filter"))?;
    // runc sets no_new_privs itself (process.noNewPrivileges); so does the guest.
    ctx.set_ctl_nnp(false)
        .map_err(refused("cannot clear the filter's no_new_privs attribute"))?;
    for arch in profile.architectures().iter().flatten() {
        let name = arch_name(*arch);
        let scmp: ScmpArch = name
            .parse()
            .map_err(|_| err(format!("architectures: {name} is not known to libseccomp")))?;
        ctx.add_arch(scmp)
            .map_err(refused(format!("architectures: cannot add {name}")))?;
    }

    let mut last_syscall = 0i32;
    for (i, call) in profile.syscalls().iter().flatten().enumerate() {
        let at = format!("syscalls[{i}] ({})", call.names().join(", "));
        add_syscall_rules(&mut ctx, call, default, &at)?;
        for name in call.names() {
            if let Ok(nr) = ScmpSyscall::from_name(name) {
                last_syscall = last_syscall.max(i32::from(nr));
            }
        }
    }

    let mut flags = 0;
    for f in profile.flags().iter().flatten() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => FLAG_SPEC_ALLOW,
        };
    }
    let mut filter = export(&ctx)?;
    if default != ScmpAction::Allow && last_syscall > 0 {
        filter = [enosys_stub(last_syscall as u32), filter].concat();
    }
    Ok(SeccompProgram { filter, flags })
}

/// runc's answer for syscalls newer than the profile: a program that only denies what it
/// lists would give a syscall it has never heard of the default action (often `EPERM`),
/// and programs (glibc among them) fall back from a new syscall to an old one only on
/// `ENOSYS`. So, as runc does, a native (x86_64, not x32) syscall numbered above the
/// highest one the profile names gets `ENOSYS`; everything else goes on to the profile's
/// own program. Classic BPF, put before it.
fn enosys_stub(last: u32) -> Vec<u8> {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const JGT_K: u16 = 0x25;
    const RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    // (code, jt, jf, k); offsetof(struct seccomp_data, nr) = 0, arch = 4. Index 6 is the
    // profile's first instruction.
    let stub: [(u16, u8, u8, u32); 6] = [
        (LD_W_ABS, 0, 0, 4),
        (JEQ_K, 0, 4, AUDIT_ARCH_X86_64),
        (LD_W_ABS, 0, 0, 0),
        (JGE_K, 2, 0, X32_SYSCALL_BIT),
        (JGT_K, 0, 1, last),
        (RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
    ];
    let mut out = Vec::with_capacity(stub.len() * SECCOMP_INSTRUCTION_LEN);
    for (code, jt, jf, k) in stub {
        out.extend_from_slice(&code.to_ne_bytes());
        out.push(jt);
        out.push(jf);
        out.extend_from_slice(&k.to_ne_bytes());
    }
    out
}

/// The rules of one `syscalls` entry (`at` names it in errors); unknown names are
/// skipped as runc does.
fn add_syscall_rules(
    ctx: &mut ScmpFilterContext,
    call: &LinuxSyscall,
    default: ScmpAction,
    at: &str,
) -> Result<(), SeccompError> {
    let act = action(call.action(), call.errno_ret()).map_err(|m| err(format!("{at}: {m}")))?;
    if act == default {
        // runc: libseccomp refuses a rule that does what the default action does.
        return Ok(());
    }
    let mut conditions = Vec::new();
    let mut per_index = [0u32; SYSCALL_MAX_ARGS as usize];
    for a in call.args().iter().flatten() {
        let index = u32::try_from(a.index())
            .ok()
            .filter(|i| *i < SYSCALL_MAX_ARGS)
            .ok_or_else(|| {
                err(format!(
                    "{at}: args: index {} is out of range (a syscall has {SYSCALL_MAX_ARGS} arguments)",
                    a.index()
                ))
            })?;
        per_index[index as usize] += 1;
        let op = match a.op() {
            LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
            LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
            LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
            LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
            LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
            LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
            // `value` is the mask, `valueTwo` the datum: (arg & value) == valueTwo.
            LinuxSeccompOperator::ScmpCmpMaskedEq => {
                conditions.push(ScmpArgCompare::new(
                    index,
                    ScmpCompareOp::MaskedEqual(a.value()),
                    a.value_two().unwrap_or(0),
                ));
                continue;
            }
        };
        conditions.push(ScmpArgCompare::new(index, op, a.value()));
    }
    let split = per_index.iter().any(|n| *n > 1);
    for name in call.names() {
        let Ok(nr) = ScmpSyscall::from_name(name) else {
            log::debug!("seccomp: skipping syscall {name:?}, unknown to libseccomp");
            continue;
        };
        let added = if conditions.is_empty() {
            ctx.add_rule(act, nr).map(|_| ())
        } else if split {
            // runc: several comparisons of one argument become one rule each.
            conditions
                .iter()
                .try_for_each(|c| ctx.add_rule_conditional(act, nr, &[*c]).map(|_| ()))
        } else {
            ctx.add_rule_conditional(act, nr, &conditions).map(|_| ())
        };
        added.map_err(refused(format!("{at}: cannot add the rule for {name}")))?;
    }
    Ok(())
}

/// An OCI action as libseccomp's; `errno` is the entry's `errnoRet` (or `defaultErrnoRet`).
fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction, String> {
    let ret = |errno: Option<u32>| -> Result<u16, String> {
        let v = errno.unwrap_or(libc::EPERM as u32);
        u16::try_from(v).map_err(|_| format!("errnoRet {v} is out of range (0-65535)"))
    };
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(i32::from(ret(errno)?)),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(ret(errno)?),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err("SCMP_ACT_NOTIFY is not supported by runvm (it needs a seccomp agent on the host, reached over listenerPath)".into());
        }
    })
}

/// The `SCMP_ARCH_*` name of an architecture, as the spec writes it.
fn arch_name(a: Arch) -> String {
    match serde_json::to_value(a) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{a:?}"),
    }
}

/// A filter for runvm's own use on a host process: everything allowed but the rules
/// given, each an action on a syscall when all of its argument comparisons hold. Names
/// libseccomp does not know are skipped. The BPF program, as [`compile`] gives it.
pub fn host_filter(
    rules: &[(ScmpAction, &str, Vec<ScmpArgCompare>)],
) -> Result<Vec<u8>, SeccompError> {
    let mut ctx =
        ScmpFilterContext::new(ScmpAction::Allow).map_err(refused("cannot create the filter"))?;
    ctx.set_ctl_nnp(false)
        .map_err(refused("cannot clear the filter's no_new_privs attribute"))?;
    for (act, name, conditions) in rules {
        let Ok(nr) = ScmpSyscall::from_name(name) else {
            continue;
        };
        ctx.add_rule_conditional(*act, nr, conditions)
            .map_err(refused(format!("cannot add the rule for {name}")))?;
    }
    export(&ctx)
}

/// The filter as BPF instructions (libseccomp writes them to a descriptor: a memfd).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<u8>, SeccompError> {
    let fd = nix::sys::memfd::memfd_create(
        c"runvm-seccomp",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .map_err(|e| SeccompError::Export {
        what: "memfd_create for the BPF program",
        source: e.into(),
    })?;
    let mut file = std::fs::File::from(fd);
    ctx.export_bpf(&file)
        .map_err(refused("cannot export the BPF program"))?;
    let mut filter = Vec::new();
    file.rewind()
        .and_then(|_| file.read_to_end(&mut filter))
        .map_err(|source| SeccompError::Export {
            what: "cannot read the BPF program back",
            source,
        })?;
    if filter.is_empty() || !filter.len().is_multiple_of(SECCOMP_INSTRUCTION_LEN) {
        return Err(err(format!(
            "libseccomp wrote a BPF program of {} bytes, not a whole number of instructions",
            filter.len()
        )));
    }
    let n = filter.len() / SECCOMP_INSTRUCTION_LEN;
    if n > MAX_INSTRUCTIONS {
        return Err(err(format!(
            "the profile compiles to {n} BPF instructions, more than the kernel's limit of {MAX_INSTRUCTIONS}"
        )));
    }
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn profile(v: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(v).unwrap()
    }

    /// Forks a child that loads `p` (with no_new_privs) and then runs `probe`, which may
    /// only make raw system calls (the test process has other threads); returns the
    /// child's wait status.
    fn run_under(p: &SeccompProgram, probe: fn() -> i32) -> i32 {
        let insns: Vec<libc::sock_filter> = p
            .filter
            .chunks_exact(SECCOMP_INSTRUCTION_LEN)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        let prog = libc::sock_fprog {
            len: insns.len() as u16,
            filter: insns.as_ptr().cast_mut(),
        };
        // SAFETY: the child makes only raw system calls (async-signal-safe) and leaves
        // with _exit; `prog` and `insns` are valid in its copy of the address space.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: as above: raw system calls on valid pointers, then _exit.
            unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::syscall(libc::SYS_seccomp, 1u32, p.flags, &prog) != 0
                {
                    libc::_exit(100);
                }
                libc::_exit(probe());
            }
        }
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(rc, pid);
        status
    }

    /// The exit code of a child that exited, or panics.
    fn exited(status: i32) -> i32 {
        assert!(libc::WIFEXITED(status), "child did not exit: {status:#x}");
        libc::WEXITSTATUS(status)
    }

    /// The errno of a raw syscall (0 for success), as an exit code.
    fn errno_of(rc: libc::c_long) -> i32 {
        if rc >= 0 {
            0
        } else {
            // SAFETY: reads this thread's errno.
            unsafe { *libc::__errno_location() }
        }
    }

    fn mkdir_mode(mode: libc::c_long) -> i32 {
        // An empty path: ENOENT when the call reaches the kernel, so nothing is created.
        // SAFETY: a NUL-terminated static path.
        errno_of(unsafe { libc::syscall(libc::SYS_mkdir, c"".as_ptr(), mode) })
    }

    fn probe_mkdir() -> i32 {
        mkdir_mode(0o755)
    }

    fn probe_getpid() -> i32 {
        // SAFETY: no arguments.
        errno_of(unsafe { libc::syscall(libc::SYS_getpid) })
    }

    #[test]
    fn an_errno_rule_denies_its_syscall_and_nothing_else() {
        let p = compile(&profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [ { "names": ["mkdir", "mkdirat", "no_such_syscall_xyz"], "action": "SCMP_ACT_ERRNO" } ],
        })))
        .unwrap();
        assert_eq!(p.flags, 0);
        assert_eq!(exited(run_under(&p, probe_mkdir)), libc::EPERM);
        assert_eq!(exited(run_under(&p, probe_getpid)), 0);

        let p = compile(&profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [ { "names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38 } ],
        })))
        .unwrap();
        assert_eq!(exited(run_under(&p, probe_mkdir)), libc::ENOSYS);
    }

    #[test]
    fn the_default_action_and_its_errno_apply_to_unlisted_syscalls() {
        let p = compile(&profile(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 13,
            "syscalls": [ { "names": ["getpid", "exit_group", "exit"], "action": "SCMP_ACT_ALLOW" } ],
        })))
        .unwrap();
        assert_eq!(exited(run_under(&p, probe_getpid)), 0);
        assert_eq!(exited(run_under(&p, probe_mkdir)), libc::EACCES);
    }

    fn probe_syscall_1000() -> i32 {
        // SAFETY: a syscall number no kernel has; arguments are plain numbers.
        errno_of(unsafe { libc::syscall(1000, 0xdead_beef_u64, 0xcafe_feed_u64) })
    }

    fn probe_openat() -> i32 {
        // SAFETY: an empty NUL-terminated path: ENOENT if it reaches the kernel.
        errno_of(unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, c"".as_ptr(), 0) })
    }

    #[test]
    fn syscalls_newer_than_the_profile_get_enosys_as_under_runc() {
        let p = compile(&profile(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [ { "names": ["getpid", "exit_group", "exit", "mkdir"], "action": "SCMP_ACT_ALLOW" } ],
        })))
        .unwrap();
        // Numbered above exit_group (231), the profile's highest: ENOSYS.
        assert_eq!(exited(run_under(&p, probe_syscall_1000)), libc::ENOSYS);
        assert_eq!(exited(run_under(&p, probe_openat)), libc::ENOSYS);
        // Below it and not listed: the default action; listed: allowed.
        let probe_chdir = || -> i32 {
            // SAFETY: an empty NUL-terminated path: ENOENT if it reaches the kernel.
            errno_of(unsafe { libc::syscall(libc::SYS_chdir, c"".as_ptr()) })
        };
        assert_eq!(exited(run_under(&p, probe_chdir)), libc::EPERM);
        assert_eq!(exited(run_under(&p, probe_mkdir)), libc::ENOENT);
        // An allow-by-default profile gets no stub.
        let allow = compile(&profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [ { "names": ["mkdir"], "action": "SCMP_ACT_ERRNO" } ],
        })))
        .unwrap();
        assert_eq!(exited(run_under(&allow, probe_syscall_1000)), libc::ENOSYS);
        assert_eq!(exited(run_under(&allow, probe_openat)), libc::ENOENT);
    }

    #[test]
    fn kill_actions_kill_with_sigsys() {
        for act in [
            "SCMP_ACT_KILL",
            "SCMP_ACT_KILL_PROCESS",
            "SCMP_ACT_KILL_THREAD",
        ] {
            let p = compile(&profile(json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [ { "names": ["mkdir"], "action": act } ],
            })))
            .unwrap();
            let status = run_under(&p, probe_mkdir);
            assert!(
                libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
                "{act}: {status:#x}"
            );
        }
    }

    fn probe_mkdir_modes() -> i32 {
        // One bit per mode: set when that mkdir was denied (EPERM).
        [0o700, 0o750, 0o755, 0o055]
            .iter()
            .enumerate()
            .map(|(i, m)| i32::from(mkdir_mode(*m) == libc::EPERM) << i)
            .sum()
    }

    #[test]
    fn argument_comparisons_masked_eq_and_runc_s_or_for_one_argument() {
        // (mode & 0o700) == 0o700: denied for 0o700, 0o750, 0o755, not for 0o055.
        let p = compile(&profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [ { "names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                "args": [ { "index": 1, "value": 0o700, "valueTwo": 0o700, "op": "SCMP_CMP_MASKED_EQ" } ] } ],
        })))
        .unwrap();
        assert_eq!(exited(run_under(&p, probe_mkdir_modes)), 0b0111);
        // Two comparisons of one argument: either matches (runc splits them).
        let p = compile(&profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [ { "names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                "args": [ { "index": 1, "value": 0o700, "op": "SCMP_CMP_EQ" },
                          { "index": 1, "value": 0o055, "op": "SCMP_CMP_EQ" } ] } ],
        })))
        .unwrap();
        assert_eq!(exited(run_under(&p, probe_mkdir_modes)), 0b1001);
        // Comparisons of different arguments: all must match.
        let p = compile(&profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [ { "names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                "args": [ { "index": 1, "value": 0o750, "op": "SCMP_CMP_GE" },
                          { "index": 0, "value": 0, "op": "SCMP_CMP_NE" } ] } ],
        })))
        .unwrap();
        assert_eq!(exited(run_under(&p, probe_mkdir_modes)), 0b0110);
    }

    #[test]
    fn flags_are_carried_and_unsupported_things_refused() {
        let p = compile(&profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
            "syscalls": [ { "names": ["mkdir"], "action": "SCMP_ACT_ALLOW" } ],
        })))
        .unwrap();
        assert_eq!(p.flags, FLAG_TSYNC | FLAG_SPEC_ALLOW);
        for (v, want) in [
            (
                json!({ "defaultAction": "SCMP_ACT_ALLOW",
                        "syscalls": [ { "names": ["mkdir"], "action": "SCMP_ACT_NOTIFY" } ] }),
                "SCMP_ACT_NOTIFY is not supported",
            ),
            (
                json!({ "defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock" }),
                "listenerPath",
            ),
            (
                json!({ "defaultAction": "SCMP_ACT_ALLOW",
                        "syscalls": [ { "names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                                        "args": [ { "index": 6, "value": 1, "op": "SCMP_CMP_EQ" } ] } ] }),
                "index 6 is out of range",
            ),
            (
                json!({ "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 70000 }),
                "defaultAction: errnoRet 70000",
            ),
        ] {
            let e = compile(&profile(v)).unwrap_err().to_string();
            assert!(e.starts_with("linux.seccomp: ") && e.contains(want), "{e}");
        }
    }

    fn probe_unshare_and_friends() -> i32 {
        // SAFETY: raw system calls with integer arguments; unshare of a UTS namespace only
        // affects this child.
        unsafe {
            let unshare = errno_of(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUTS));
            let keyctl = errno_of(libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0));
            let clone3 = errno_of(libc::syscall(libc::SYS_clone3, 0, 0));
            let getppid = errno_of(libc::syscall(libc::SYS_getppid));
            if (unshare, keyctl, clone3, getppid) == (libc::EPERM, libc::EPERM, libc::ENOSYS, 0) {
                0
            } else {
                1
            }
        }
    }

    #[test]
    fn docker_s_default_profile_compiles_and_denies_what_it_should() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/data/docker-default-seccomp.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let p = compile(&serde_json::from_str(&text).unwrap()).unwrap();
        assert!(p.filter.len() / SECCOMP_INSTRUCTION_LEN > 100);
        assert_eq!(exited(run_under(&p, probe_unshare_and_friends)), 0);
        assert_eq!(exited(run_under(&p, probe_mkdir)), libc::ENOENT);
    }
}
