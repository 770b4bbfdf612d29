//! The seccomp filters of the VMM's threads: a vCPU thread and the device (event loop)
//! thread each get an allow-list of the system calls they make while handling guest
//! input. Anything else traps: the process reports the call and exits.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

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

/// Which VMM thread a filter is for.
#[derive(Clone, Copy, Debug)]
pub enum ThreadKind {
    Vcpu,
    Devices,
}

/// Calls every VMM thread makes: memory, locks, time, signals, eventfds, logging.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_ioctl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_fcntl,
    libc::SYS_rseq,
];

/// The device thread also does block I/O, the vsock Unix sockets and virtio-net's TAP
/// frames (`read`/`write` on the TAP, already in [`COMMON`]; its one ioctl,
/// `TUNSETOFFLOAD`, runs at activation on a vCPU thread).
const DEVICES: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_accept,
    libc::SYS_shutdown,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

/// A vCPU thread also talks to vhost-user backends (virtiofsd): the driver's activation
/// and reset of such a device, which the vCPU that wrote `Status` carries out, send
/// requests (with descriptors) on the backend's socket and read the answers.
const VCPU: &[i64] = &[libc::SYS_sendmsg, libc::SYS_recvmsg];

/// Builds the BPF program for `kind`.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let extra: &[i64] = match kind {
        ThreadKind::Vcpu => VCPU,
        ThreadKind::Devices => DEVICES,
    };
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        COMMON.iter().chain(extra).map(|&nr| (nr, vec![])).collect();
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    Ok(f.try_into()?)
}

extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS; `si_syscall` is the int at
    // byte offset 24 of it on x86_64 (after signo, errno, code and `si_call_addr`).
    let nr = unsafe { *(info as *const u8).add(24).cast::<i32>() };
    const PREFIX: &[u8] = b"runvm: a VMM thread made system call #";
    const SUFFIX: &[u8] = b", outside its seccomp filter; stopping\n";
    let mut msg = [0u8; 128];
    msg[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut len = PREFIX.len();
    let mut digits = [0u8; 10];
    let mut n = nr.unsigned_abs();
    let mut d = 0;
    loop {
        digits[d] = b'0' + (n % 10) as u8;
        d += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    while d > 0 {
        d -= 1;
        msg[len] = digits[d];
        len += 1;
    }
    msg[len..len + SUFFIX.len()].copy_from_slice(SUFFIX);
    len += SUFFIX.len();
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is valid.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), len);
        libc::_exit(159);
    }
}

/// Installs `program` on the calling thread (after the SIGSYS reporter).
pub fn apply(program: &BpfProgram) -> Result<(), SeccompError> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, sigsys_handler)
        .map_err(|e| SeccompError::Handler(e.into()))?;
    seccompiler::apply_filter(program)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_build_for_every_thread_kind() {
        assert!(!filter(ThreadKind::Vcpu).unwrap().is_empty());
        assert!(
            filter(ThreadKind::Devices).unwrap().len() > filter(ThreadKind::Vcpu).unwrap().len()
        );
    }

    #[test]
    fn a_filtered_thread_keeps_working_for_allowed_calls() {
        let prog = filter(ThreadKind::Devices).unwrap();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            apply(&prog).unwrap();
            let v: Vec<u8> = (0..100_000).map(|i| i as u8).collect();
            use std::io::{Read, Write};
            (&a).write_all(&v[..1000]).unwrap();
            let mut got = [0u8; 1000];
            (&b).read_exact(&mut got).unwrap();
            got[999]
        });
        assert_eq!(t.join().unwrap(), (999 % 256) as u8);
    }

    #[test]
    fn a_call_outside_the_filter_stops_the_process() {
        let prog = filter(ThreadKind::Vcpu).unwrap();
        // SAFETY: the child only installs the filter, makes one system call and exits;
        // the parent waits for it.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if apply(&prog).is_err() {
                // SAFETY: leaving the forked child.
                unsafe { libc::_exit(2) };
            }
            // socket(2) is not on a vCPU thread's list.
            // SAFETY: a plain system call; the filter traps it.
            unsafe {
                libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            159,
            "the SIGSYS reporter exits with 159"
        );
    }
}
