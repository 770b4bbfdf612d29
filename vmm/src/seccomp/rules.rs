//! The allow-lists themselves: per thread kind, each system call the thread makes once it
//! is confined, and for the calls whose arguments matter, the arguments it makes them with.
//! They are data, so that the same table builds the BPF program and prints itself
//! ([`super::describe`]).
//!
//! What every thread needs ([`BASE`]) is the life of a Rust thread on glibc: its heap
//! (never executable memory), futex waits and wakes, its end, the signal frames of the
//! kick and SIGSYS handlers, the clock, `write` (logging, the SIGSYS report) and `close`.
//! A thread that starts threads of its own ([`SPAWN`], the relay listeners) also needs
//! what glibc and Rust's runtime do in a new thread.

use super::ThreadKind;

/// One comparison of a system call argument (32 bits of it): `arg & mask == value`.
#[derive(Clone, Copy, Debug)]
pub struct Check {
    /// Which argument (0 to 5).
    pub arg: u8,
    /// `u64::MAX` for plain equality.
    pub mask: u64,
    pub value: u64,
    /// What the comparison allows, for people.
    pub what: &'static str,
}

/// A system call a thread may make: always (`when` empty), or when every check of one of
/// the `when` alternatives holds.
#[derive(Clone, Copy, Debug)]
pub struct Allowed {
    pub name: &'static str,
    pub nr: i64,
    pub when: &'static [&'static [Check]],
}

const fn any(name: &'static str, nr: i64) -> Allowed {
    Allowed {
        name,
        nr,
        when: &[],
    }
}

const fn when(name: &'static str, nr: i64, when: &'static [&'static [Check]]) -> Allowed {
    Allowed { name, nr, when }
}

const fn eq(arg: u8, value: u64, what: &'static str) -> Check {
    Check {
        arg,
        mask: u64::MAX,
        value,
        what,
    }
}

/// `accept4` of a connection that is close-on-exec (how Rust's std accepts).
const ACCEPT_CLOEXEC: Allowed = when(
    "accept4",
    libc::SYS_accept4,
    &[&[eq(3, libc::SOCK_CLOEXEC as u64, "SOCK_CLOEXEC")]],
);

const fn masked(arg: u8, mask: u64, value: u64, what: &'static str) -> Check {
    Check {
        arg,
        mask,
        value,
        what,
    }
}

/// `_IO(KVMIO, 0x80)`.
pub const KVM_RUN: u64 = 0xae80;
/// `_IOW(KVMIO, 0x76, struct kvm_irqfd)`.
pub const KVM_IRQFD: u64 = 0x4020_ae76;
/// `_IOW(KVMIO, 0x79, struct kvm_ioeventfd)`.
pub const KVM_IOEVENTFD: u64 = 0x4040_ae79;
/// `_IOW('T', 208, unsigned int)`.
pub const TUNSETOFFLOAD: u64 = 0x4004_54d0;
pub const FIONBIO: u64 = libc::FIONBIO;

const PROT_EXEC: u64 = libc::PROT_EXEC as u64;
const MAP_ANONYMOUS: u64 = libc::MAP_ANONYMOUS as u64;
/// The futex operation without its private and clock flags.
const FUTEX_CMD: u64 =
    !((libc::FUTEX_PRIVATE_FLAG | libc::FUTEX_CLOCK_REALTIME) as u64) & 0xffff_ffff;
const STREAM_CLOEXEC: u64 = (libc::SOCK_STREAM | libc::SOCK_CLOEXEC) as u64;
const DGRAM_CLOEXEC: u64 = (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as u64;

/// Memory without `PROT_EXEC`: a thread that handles guest bytes can never make code.
const NOT_EXEC: Check = masked(2, PROT_EXEC, 0, "no PROT_EXEC");

/// Every confined thread.
pub const BASE: &[Allowed] = &[
    any("brk", libc::SYS_brk),
    // Anonymous only: no thread maps a file (guest memory's memfd included) once confined.
    when(
        "mmap",
        libc::SYS_mmap,
        &[&[
            NOT_EXEC,
            masked(3, MAP_ANONYMOUS, MAP_ANONYMOUS, "MAP_ANONYMOUS"),
        ]],
    ),
    // glibc grows a thread's malloc arena with mprotect(PROT_READ | PROT_WRITE).
    when("mprotect", libc::SYS_mprotect, &[&[NOT_EXEC]]),
    any("munmap", libc::SYS_munmap),
    any("mremap", libc::SYS_mremap),
    // glibc gives back the stack of an ended thread and trimmed heap with MADV_DONTNEED.
    when(
        "madvise",
        libc::SYS_madvise,
        &[&[eq(2, libc::MADV_DONTNEED as u64, "MADV_DONTNEED")]],
    ),
    // Waits and wakes only (Rust's locks, glibc's joins and internal locks); no requeue
    // or priority-inheritance operations.
    when(
        "futex",
        libc::SYS_futex,
        &[
            &[masked(1, FUTEX_CMD, libc::FUTEX_WAIT as u64, "FUTEX_WAIT")],
            &[masked(1, FUTEX_CMD, libc::FUTEX_WAKE as u64, "FUTEX_WAKE")],
            &[masked(
                1,
                FUTEX_CMD,
                libc::FUTEX_WAIT_BITSET as u64,
                "FUTEX_WAIT_BITSET",
            )],
            &[masked(
                1,
                FUTEX_CMD,
                libc::FUTEX_WAKE_BITSET as u64,
                "FUTEX_WAKE_BITSET",
            )],
        ],
    ),
    any("clock_gettime", libc::SYS_clock_gettime),
    any("rt_sigreturn", libc::SYS_rt_sigreturn),
    any("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    // Rust removes a thread's alternate signal stack when it ends.
    any("sigaltstack", libc::SYS_sigaltstack),
    any("write", libc::SYS_write),
    any("close", libc::SYS_close),
    any("exit", libc::SYS_exit),
    any("exit_group", libc::SYS_exit_group),
];

/// A thread that starts threads (each connection of a relay, and its second direction):
/// what glibc's `pthread_create` and Rust's thread start make, in the parent and in the
/// child (which inherits the filter). `clone3` takes its flags in memory, out of a
/// filter's reach: a process it could fork has the same filter and no `execve`.
pub const SPAWN: &[Allowed] = &[
    any("clone3", libc::SYS_clone3),
    any("set_robust_list", libc::SYS_set_robust_list),
    any("rseq", libc::SYS_rseq),
    // Rust reads a new thread's stack bounds with pthread_getattr_np, which asks for the
    // thread's CPU affinity.
    any("sched_getaffinity", libc::SYS_sched_getaffinity),
    any("gettid", libc::SYS_gettid),
    when(
        "prctl",
        libc::SYS_prctl,
        &[&[eq(0, libc::PR_SET_NAME as u64, "PR_SET_NAME")]],
    ),
];

/// A vCPU thread: `KVM_RUN` and the exits it handles. Writes to the device registers land
/// here, so the device activations and resets the driver asks for run on it: virtio-net's
/// `TUNSETOFFLOAD`, and the vhost-user requests to virtiofsd (on a socket connected at
/// setup; descriptors go with `sendmsg`). Interrupts are eventfd `write`s; `gettid` is
/// the pause control's registration. No `socket`, `connect`, `open` or `unlink`.
pub const VCPU: &[Allowed] = &[
    when(
        "ioctl",
        libc::SYS_ioctl,
        &[
            &[eq(1, KVM_RUN, "KVM_RUN")],
            &[eq(1, TUNSETOFFLOAD, "TUNSETOFFLOAD")],
        ],
    ),
    any("sendmsg", libc::SYS_sendmsg),
    any("recvmsg", libc::SYS_recvmsg),
    any("gettid", libc::SYS_gettid),
    // Rust's channels and backoff loops yield.
    any("sched_yield", libc::SYS_sched_yield),
];

/// The device thread (the event loop): block I/O with `pread`/`pwrite`/`fdatasync`, TAP
/// frames with `read`/`write`, eventfds and the vsock muxer's timerfd, and the vsock
/// device's host sockets.
///
/// It still `connect`s: a guest's connection to host port P is a connection to the Unix
/// socket `<uds_path>_P`, made by the muxer on this thread (as in Firecracker). The guest
/// chooses only the number; the path's prefix is the VMM's, and a filter cannot read the
/// path behind the pointer. So `socket` is `AF_UNIX` stream sockets only, made exactly
/// as the muxer makes them, and `connect` on anything else has no socket to work with.
/// `accept4` takes the host's connections to the guest (`SOCK_CLOEXEC`, as std makes
/// them), `ioctl(FIONBIO)` makes them non-blocking. No `unlink`: the muxer's socket file
/// is removed when the event loop is dropped, on the VMM's thread after this one ended.
pub const DEVICES: &[Allowed] = &[
    any("epoll_wait", libc::SYS_epoll_wait),
    any("epoll_pwait", libc::SYS_epoll_pwait),
    any("epoll_ctl", libc::SYS_epoll_ctl),
    any("read", libc::SYS_read),
    any("pread64", libc::SYS_pread64),
    any("pwrite64", libc::SYS_pwrite64),
    any("fdatasync", libc::SYS_fdatasync),
    when(
        "timerfd_settime",
        libc::SYS_timerfd_settime,
        &[&[eq(1, 0, "relative")]],
    ),
    when(
        "socket",
        libc::SYS_socket,
        &[&[
            eq(0, libc::AF_UNIX as u64, "AF_UNIX"),
            eq(
                1,
                (libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64,
                "SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC",
            ),
            eq(2, 0, "protocol 0"),
        ]],
    ),
    any("connect", libc::SYS_connect),
    ACCEPT_CLOEXEC,
    when("ioctl", libc::SYS_ioctl, &[&[eq(1, FIONBIO, "FIONBIO")]]),
    any("recvfrom", libc::SYS_recvfrom),
    any("sendto", libc::SYS_sendto),
    any("shutdown", libc::SYS_shutdown),
    any("sched_yield", libc::SYS_sched_yield),
];

/// A stdio relay (one direction of a process's stdin, stdout or stderr, or its terminal):
/// `read` from a host descriptor or `recvfrom` the guest's stream, `write` to the host
/// descriptor or `sendto` the stream (Rust sends with `MSG_NOSIGNAL`), `poll` the input
/// and its cancel eventfd, and `shutdown` the stream at the input's EOF.
pub const STDIO_RELAY: &[Allowed] = &[
    any("read", libc::SYS_read),
    any("recvfrom", libc::SYS_recvfrom),
    any("sendto", libc::SYS_sendto),
    any("poll", libc::SYS_poll),
    any("ppoll", libc::SYS_ppoll),
    any("shutdown", libc::SYS_shutdown),
];

/// The options Rust's `set_read_timeout`/`set_write_timeout` set.
const TIMEOUTS: &[&[Check]] = &[
    &[
        eq(1, libc::SOL_SOCKET as u64, "SOL_SOCKET"),
        eq(2, libc::SO_RCVTIMEO as u64, "SO_RCVTIMEO"),
    ],
    &[
        eq(1, libc::SOL_SOCKET as u64, "SOL_SOCKET"),
        eq(2, libc::SO_SNDTIMEO as u64, "SO_SNDTIMEO"),
    ],
];

/// What both vsock services do (their listener, one thread per connection, and a second
/// thread per two-way copy): accept, read the guest's header, copy both ways with
/// half-close. `F_DUPFD_CLOEXEC` is `try_clone` of a stream for the second direction.
pub const RELAY: &[Allowed] = &[
    ACCEPT_CLOEXEC,
    any("recvfrom", libc::SYS_recvfrom),
    any("sendto", libc::SYS_sendto),
    any("shutdown", libc::SYS_shutdown),
    any("connect", libc::SYS_connect),
    when(
        "fcntl",
        libc::SYS_fcntl,
        &[&[eq(1, libc::F_DUPFD_CLOEXEC as u64, "F_DUPFD_CLOEXEC")]],
    ),
    when("setsockopt", libc::SYS_setsockopt, TIMEOUTS),
];

/// The DNS relay: to the resolver on a loopback address of the container's network
/// namespace, over UDP (`bind` to an ephemeral loopback port, `connect`, `sendto`) or
/// TCP (a connect with a timeout: `FIONBIO`, `poll`, `SO_ERROR`). No Unix sockets.
pub const DNS_RELAY: &[Allowed] = &[
    when(
        "socket",
        libc::SYS_socket,
        &[
            &[
                eq(0, libc::AF_INET as u64, "AF_INET"),
                eq(1, DGRAM_CLOEXEC, "SOCK_DGRAM|SOCK_CLOEXEC"),
            ],
            &[
                eq(0, libc::AF_INET6 as u64, "AF_INET6"),
                eq(1, DGRAM_CLOEXEC, "SOCK_DGRAM|SOCK_CLOEXEC"),
            ],
            &[
                eq(0, libc::AF_INET as u64, "AF_INET"),
                eq(1, STREAM_CLOEXEC, "SOCK_STREAM|SOCK_CLOEXEC"),
            ],
            &[
                eq(0, libc::AF_INET6 as u64, "AF_INET6"),
                eq(1, STREAM_CLOEXEC, "SOCK_STREAM|SOCK_CLOEXEC"),
            ],
        ],
    ),
    any("bind", libc::SYS_bind),
    any("poll", libc::SYS_poll),
    when("ioctl", libc::SYS_ioctl, &[&[eq(1, FIONBIO, "FIONBIO")]]),
    when(
        "getsockopt",
        libc::SYS_getsockopt,
        &[&[
            eq(1, libc::SOL_SOCKET as u64, "SOL_SOCKET"),
            eq(2, libc::SO_ERROR as u64, "SO_ERROR"),
        ]],
    ),
];

/// The socket relays: to the host Unix socket recorded at create for the relay number
/// the guest names (the guest never gives a path).
pub const SOCKET_RELAY: &[Allowed] = &[when(
    "socket",
    libc::SYS_socket,
    &[&[
        eq(0, libc::AF_UNIX as u64, "AF_UNIX"),
        eq(1, STREAM_CLOEXEC, "SOCK_STREAM|SOCK_CLOEXEC"),
    ]],
)];

/// The vhost-user watchdog: sleeps until a request's deadline and shuts the socket down.
pub const VHOST_WATCHDOG: &[Allowed] = &[any("shutdown", libc::SYS_shutdown)];

/// `clone` as glibc's `fork` makes it (a child process with a copy of the memory; no
/// namespace, no shared anything): the OOM report's victim.
const FORK_FLAGS: u64 =
    (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD) as u64;

/// The monitor's main thread once the VM runs (after the jail and the privilege drop):
/// the control connection and the process table, the host API (`runvm state`, `kill`,
/// `exec`, `pause`; descriptors come with `recvmsg`, the caller's credentials with
/// `SO_PEERCRED`), the stdio relays it starts, the state files and the cgroup files
/// (bound in its jail: written, made, removed), the OOM report's victim (a `fork`, with
/// glibc's flags only), the VM's stop (a signal to its threads) and its end, virtiofsd's
/// end (`kill`, `wait4`), and the spare slots it fills with shares or NICs and empties
/// ([`crate::fs_slots`]: the device's eventfds registered with KVM and unregistered,
/// `KVM_IRQFD` and `KVM_IOEVENTFD` only; a share's vhost-user talk on a connection made
/// elsewhere and the watchdog thread it starts; a NIC's TAP, opened elsewhere, made
/// non-blocking with `fcntl` and closed). Files are opened by name (the jail holds only its own), so
/// `openat` is neither failed nor checked here (glibc's `open` is an `openat`). No `execve`: hooks run in the hook
/// runner, a process of their own. No `socket`, `connect`, `bind`, `mount`, `ptrace`,
/// `setns` or `unshare`.
pub const MONITOR_MAIN: &[Allowed] = &[
    any("read", libc::SYS_read),
    any("readv", libc::SYS_readv),
    any("writev", libc::SYS_writev),
    any("lseek", libc::SYS_lseek),
    any("openat", libc::SYS_openat),
    any("fstat", libc::SYS_fstat),
    any("newfstatat", libc::SYS_newfstatat),
    any("statx", libc::SYS_statx),
    any("getdents64", libc::SYS_getdents64),
    any("mkdir", libc::SYS_mkdir),
    any("mkdirat", libc::SYS_mkdirat),
    any("rmdir", libc::SYS_rmdir),
    any("unlink", libc::SYS_unlink),
    any("unlinkat", libc::SYS_unlinkat),
    // The cgroup record is replaced whole (a temporary file renamed over it).
    any("rename", libc::SYS_rename),
    any("renameat", libc::SYS_renameat),
    any("renameat2", libc::SYS_renameat2),
    any("poll", libc::SYS_poll),
    any("ppoll", libc::SYS_ppoll),
    ACCEPT_CLOEXEC,
    any("recvfrom", libc::SYS_recvfrom),
    any("sendto", libc::SYS_sendto),
    any("recvmsg", libc::SYS_recvmsg),
    any("sendmsg", libc::SYS_sendmsg),
    any("shutdown", libc::SYS_shutdown),
    when(
        "getsockopt",
        libc::SYS_getsockopt,
        &[
            &[
                eq(1, libc::SOL_SOCKET as u64, "SOL_SOCKET"),
                eq(2, libc::SO_PEERCRED as u64, "SO_PEERCRED"),
            ],
            &[
                eq(1, libc::SOL_SOCKET as u64, "SOL_SOCKET"),
                eq(2, libc::SO_ERROR as u64, "SO_ERROR"),
            ],
        ],
    ),
    when("setsockopt", libc::SYS_setsockopt, TIMEOUTS),
    when(
        "fcntl",
        libc::SYS_fcntl,
        &[
            &[eq(1, libc::F_GETFD as u64, "F_GETFD")],
            &[eq(1, libc::F_SETFD as u64, "F_SETFD")],
            &[eq(1, libc::F_GETFL as u64, "F_GETFL")],
            &[eq(1, libc::F_SETFL as u64, "F_SETFL")],
            &[eq(1, libc::F_DUPFD_CLOEXEC as u64, "F_DUPFD_CLOEXEC")],
        ],
    ),
    when(
        "ioctl",
        libc::SYS_ioctl,
        &[
            &[eq(1, FIONBIO, "FIONBIO")],
            &[eq(1, libc::FIOCLEX, "FIOCLEX")],
            &[eq(1, libc::TCGETS, "TCGETS")],
            &[eq(1, libc::TIOCGWINSZ, "TIOCGWINSZ")],
            &[eq(1, libc::TIOCSWINSZ, "TIOCSWINSZ")],
            &[eq(1, KVM_IRQFD, "KVM_IRQFD")],
            &[eq(1, KVM_IOEVENTFD, "KVM_IOEVENTFD")],
        ],
    ),
    // The OOM report waits until the engine has read the cgroup's `memory.events`.
    any("inotify_init1", libc::SYS_inotify_init1),
    when(
        "inotify_add_watch",
        libc::SYS_inotify_add_watch,
        &[&[eq(2, libc::IN_ACCESS as u64, "IN_ACCESS")]],
    ),
    any("eventfd2", libc::SYS_eventfd2),
    any("pipe2", libc::SYS_pipe2),
    when("clone", libc::SYS_clone, &[&[eq(0, FORK_FLAGS, "fork")]]),
    any("wait4", libc::SYS_wait4),
    any("kill", libc::SYS_kill),
    any("tgkill", libc::SYS_tgkill),
    any("getpid", libc::SYS_getpid),
    any("getrandom", libc::SYS_getrandom),
    any("sched_yield", libc::SYS_sched_yield),
    any("nanosleep", libc::SYS_nanosleep),
    any("clock_nanosleep", libc::SYS_clock_nanosleep),
    // A stdio relay it starts stacks its own filter (only ever narrower): its SIGSYS
    // handler, `no_new_privs` (set already) and the filter.
    any("rt_sigaction", libc::SYS_rt_sigaction),
    when(
        "prctl",
        libc::SYS_prctl,
        &[&[eq(
            0,
            libc::PR_SET_NO_NEW_PRIVS as u64,
            "PR_SET_NO_NEW_PRIVS",
        )]],
    ),
    when(
        "seccomp",
        libc::SYS_seccomp,
        &[&[eq(
            0,
            libc::SECCOMP_SET_MODE_FILTER as u64,
            "SECCOMP_SET_MODE_FILTER",
        )]],
    ),
];

/// In a debug build, Rust checks that a descriptor is open before closing it, with
/// `fcntl(F_GETFD)`.
pub const DEBUG_BUILD: &[Allowed] = &[when(
    "fcntl",
    libc::SYS_fcntl,
    &[&[eq(1, libc::F_GETFD as u64, "F_GETFD")]],
)];

/// The groups that make up `kind`'s list.
pub fn groups(kind: ThreadKind) -> Vec<&'static [Allowed]> {
    let mut groups = match kind {
        ThreadKind::Vcpu => vec![BASE, VCPU],
        ThreadKind::Devices => vec![BASE, DEVICES],
        ThreadKind::StdioRelay => vec![BASE, STDIO_RELAY],
        ThreadKind::DnsRelay => vec![BASE, SPAWN, RELAY, DNS_RELAY],
        ThreadKind::SocketRelay => vec![BASE, SPAWN, RELAY, SOCKET_RELAY],
        ThreadKind::VhostWatchdog => vec![BASE, VHOST_WATCHDOG],
        ThreadKind::MonitorMain => vec![BASE, SPAWN, MONITOR_MAIN],
    };
    if cfg!(debug_assertions) {
        groups.push(DEBUG_BUILD);
    }
    groups
}
