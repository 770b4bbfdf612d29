use super::*;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;

/// Runs `body` in a forked child confined as `kind`; returns the child's exit code (159:
/// the filter trapped a call). `body` must make raw system calls only (the child of a
/// threaded process must not allocate).
fn in_confined_child(kind: ThreadKind, body: impl FnOnce() -> i32) -> i32 {
    let prog = filter(kind).unwrap();
    // The child's report of a trapped call is what the test expects; keep it quiet.
    let null = std::fs::File::options()
        .write(true)
        .open("/dev/null")
        .unwrap();
    // SAFETY: the child installs the filter, makes raw system calls and `_exit`s; the
    // parent waits for it.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: dup2 of two open descriptors.
        unsafe { libc::dup2(null.as_raw_fd(), 2) };
        if apply(kind, &prog).is_err() {
            // SAFETY: leaving the forked child.
            unsafe { libc::_exit(2) };
        }
        let code = body();
        // SAFETY: as above.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    libc::WEXITSTATUS(status)
}

/// Whether `call` (a raw system call in a child confined as `kind`) is allowed: it
/// returns, whatever its result, instead of trapping.
fn allowed(kind: ThreadKind, call: impl FnOnce()) -> bool {
    match in_confined_child(kind, || {
        call();
        0
    }) {
        0 => true,
        EXIT_CODE => false,
        other => panic!("the child exited with {other}"),
    }
}

/// Runs `body` in a child process of its own (this test binary again, this test only):
/// for bodies that start threads or allocate under a filter, which a forked child of the
/// threaded test harness must not. A trap in `body` fails the test with the report.
fn in_own_process(test: &str, body: impl FnOnce()) {
    const VAR: &str = "RUNVM_SECCOMP_TEST_CHILD";
    let name = format!("seccomp::tests::{test}");
    if std::env::var(VAR).as_deref() == Ok(name.as_str()) {
        body();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(VAR, &name)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name} in its own process: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "the child did not run {name}"
    );
}

fn syscall_names(kind: ThreadKind) -> Vec<&'static str> {
    entries(kind).iter().map(|e| e.name).collect()
}

#[test]
fn filters_build_for_every_thread_kind_within_firecrackers_counts() {
    // Firecracker's lists (x86_64): vcpu 21 system calls; vmm 38, its event loop, which
    // also connects vsock to host Unix sockets, the work of our relays; api 27, a thread
    // that serves a socket, as a stdio relay or the watchdog does far less.
    for kind in ThreadKind::ALL {
        assert!(!filter(kind).unwrap().is_empty(), "{kind:?}");
        let limit = match kind {
            ThreadKind::Vcpu => 21,
            ThreadKind::Devices | ThreadKind::DnsRelay | ThreadKind::SocketRelay => 38,
            ThreadKind::StdioRelay | ThreadKind::VhostWatchdog => 27,
            // No thread of Firecracker's has its work (Firecracker's is done by the
            // jailer before the exec, or has no process table, state files or cgroups):
            // its vmm and api threads' together, 65.
            ThreadKind::MonitorMain => 65,
        };
        // Compared as release builds: a debug build allows a little more (DEBUG_BUILD).
        let release: std::collections::BTreeSet<i64> = rules::groups(kind)
            .into_iter()
            .filter(|g| !std::ptr::eq(*g, rules::DEBUG_BUILD))
            .flatten()
            .map(|a| a.nr)
            .collect();
        let n = entries(kind)
            .iter()
            .filter(|e| release.contains(&e.nr))
            .count();
        assert!(
            n <= limit,
            "{kind:?} allows {n} system calls, more than {limit}"
        );
    }
}

#[test]
fn no_thread_touching_guest_memory_can_unlink_open_or_exec() {
    for kind in [ThreadKind::Vcpu, ThreadKind::Devices] {
        let names = syscall_names(kind);
        for forbidden in [
            "unlink", "unlinkat", "open", "openat", "execve", "clone", "clone3", "bind",
        ] {
            assert!(!names.contains(&forbidden), "{kind:?} allows {forbidden}");
        }
    }
    let vcpu = syscall_names(ThreadKind::Vcpu);
    assert!(!vcpu.contains(&"socket") && !vcpu.contains(&"connect"));
}

#[test]
fn the_listing_shows_the_argument_checks() {
    let vcpu = describe(ThreadKind::Vcpu);
    let ioctl = vcpu.iter().find(|l| l.starts_with("ioctl:")).unwrap();
    assert!(
        ioctl.contains("KVM_RUN (0xae80)") && ioctl.contains("TUNSETOFFLOAD (0x400454d0)"),
        "{ioctl}"
    );
    let devices = describe(ThreadKind::Devices);
    let socket = devices.iter().find(|l| l.starts_with("socket:")).unwrap();
    assert!(socket.contains("AF_UNIX (0x1)"), "{socket}");
    assert!(devices.iter().any(|l| l == "pread64"));
}

#[test]
fn a_vcpu_may_run_kvm_and_nothing_else_through_ioctl() {
    // On a closed descriptor: the call fails with EBADF if the filter lets it through.
    assert!(allowed(ThreadKind::Vcpu, || {
        // SAFETY: a raw ioctl on a descriptor that does not exist.
        unsafe { libc::ioctl(-1, rules::KVM_RUN as _, 0) };
    }));
    assert!(allowed(ThreadKind::Vcpu, || {
        // SAFETY: as above.
        unsafe { libc::ioctl(-1, rules::TUNSETOFFLOAD as _, 0) };
    }));
    // KVM_SET_USER_MEMORY_REGION, TUNSETIFF, TIOCSTI: each traps.
    for request in [0x4020_ae46u64, 0x4004_54ca, libc::TIOCSTI] {
        assert!(
            !allowed(ThreadKind::Vcpu, || {
                // SAFETY: as above.
                unsafe { libc::ioctl(-1, request as _, 0) };
            }),
            "ioctl {request:#x}"
        );
    }
    assert!(!allowed(ThreadKind::Devices, || {
        // SAFETY: as above.
        unsafe { libc::ioctl(-1, rules::KVM_RUN as _, 0) };
    }));
}

#[test]
fn the_monitors_main_thread_keeps_its_files_and_cannot_exec_mount_trace_or_make_sockets() {
    let kind = ThreadKind::MonitorMain;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("started");
    std::fs::write(&file, b"").unwrap();
    let path = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
    let p = path.as_ptr() as usize;
    // Its state files: opened by name and removed.
    let opened = in_confined_child(kind, move || {
        // SAFETY: a raw openat of a file in our temporary directory, closed at once.
        let fd = unsafe { libc::openat(libc::AT_FDCWD, p as *const libc::c_char, libc::O_RDONLY) };
        if fd < 0 {
            return 1;
        }
        // SAFETY: our own descriptor.
        unsafe { libc::close(fd) };
        0
    });
    assert_eq!(opened, 0, "openat is allowed and opens");
    assert!(allowed(kind, move || {
        // SAFETY: a raw unlinkat of the same file.
        unsafe { libc::unlinkat(libc::AT_FDCWD, p as *const libc::c_char, 0) };
    }));
    assert!(!file.exists());
    // No program, mount, trace, namespace or socket.
    let empty: [*const libc::c_char; 1] = [std::ptr::null()];
    let e = empty.as_ptr() as usize;
    assert!(!allowed(kind, move || {
        // SAFETY: a raw execve of a path that does not exist, with empty vectors.
        unsafe {
            libc::syscall(
                libc::SYS_execve,
                c"/nonexistent".as_ptr(),
                e as *const *const libc::c_char,
                e as *const *const libc::c_char,
            )
        };
    }));
    assert!(!allowed(kind, || {
        // SAFETY: a raw mount with null arguments: EFAULT if it were let through.
        unsafe { libc::syscall(libc::SYS_mount, 0, 0, 0, 0, 0) };
    }));
    assert!(!allowed(kind, || {
        // SAFETY: a raw ptrace request on pid 1, refused if it were let through.
        unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_ATTACH, 1, 0, 0) };
    }));
    assert!(!allowed(kind, || {
        // SAFETY: a raw unshare; a new user namespace if it were let through (this
        // child exits at once).
        unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER) };
    }));
    for domain in [libc::AF_UNIX, libc::AF_INET, libc::AF_NETLINK] {
        assert!(
            !allowed(kind, move || {
                // SAFETY: a raw socket(2); the descriptor is closed at once.
                let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM, 0) };
                if fd >= 0 {
                    // SAFETY: our own descriptor.
                    unsafe { libc::close(fd) };
                }
            }),
            "socket domain {domain}"
        );
    }
    // A clone with more than fork's flags (a new namespace, a shared memory).
    assert!(!allowed(kind, || {
        // SAFETY: a raw clone that the filter stops before the kernel sees it.
        unsafe {
            libc::syscall(
                libc::SYS_clone,
                libc::CLONE_NEWNS | libc::SIGCHLD,
                0,
                0,
                0,
                0,
            )
        };
    }));
    // The ioctls of a terminal's size, and no other (TIOCSTI fakes a terminal's input).
    assert!(allowed(kind, || {
        // SAFETY: a raw ioctl on a descriptor that does not exist.
        unsafe { libc::ioctl(-1, libc::TIOCGWINSZ as _, 0) };
    }));
    assert!(!allowed(kind, || {
        // SAFETY: as above.
        unsafe { libc::ioctl(-1, libc::TIOCSTI as _, 0) };
    }));
}

#[test]
fn the_device_thread_makes_only_the_muxers_unix_sockets() {
    let socket = |domain: i32, ty: i32| {
        move || {
            // SAFETY: a raw socket(2); the descriptor is closed at once.
            let fd = unsafe { libc::socket(domain, ty, 0) };
            if fd >= 0 {
                // SAFETY: our own descriptor.
                unsafe { libc::close(fd) };
            }
        }
    };
    let muxer = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    assert!(allowed(ThreadKind::Devices, socket(libc::AF_UNIX, muxer)));
    assert!(!allowed(ThreadKind::Devices, socket(libc::AF_INET, muxer)));
    assert!(!allowed(ThreadKind::Devices, socket(libc::AF_VSOCK, muxer)));
    assert!(!allowed(
        ThreadKind::Devices,
        socket(libc::AF_NETLINK, libc::SOCK_RAW)
    ));
    assert!(!allowed(
        ThreadKind::Devices,
        socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC)
    ));
    assert!(!allowed(ThreadKind::Vcpu, socket(libc::AF_UNIX, muxer)));
    assert!(!allowed(
        ThreadKind::StdioRelay,
        socket(libc::AF_UNIX, muxer)
    ));
    // The socket relays: Unix stream sockets only; the DNS relay: IP ones only.
    let std_stream = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    assert!(allowed(
        ThreadKind::SocketRelay,
        socket(libc::AF_UNIX, std_stream)
    ));
    assert!(!allowed(
        ThreadKind::SocketRelay,
        socket(libc::AF_INET, std_stream)
    ));
    assert!(allowed(
        ThreadKind::DnsRelay,
        socket(libc::AF_INET6, std_stream)
    ));
    assert!(!allowed(
        ThreadKind::DnsRelay,
        socket(libc::AF_UNIX, std_stream)
    ));
    assert!(!allowed(
        ThreadKind::DnsRelay,
        socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC)
    ));
}

#[test]
fn no_confined_thread_makes_executable_memory_or_maps_a_file() {
    let map = |prot: i32, flags: i32, fd: i32| {
        move || {
            // SAFETY: a raw mmap of a fresh page, unmapped at once.
            let p = unsafe { libc::mmap(std::ptr::null_mut(), 4096, prot, flags, fd, 0) };
            if p != libc::MAP_FAILED {
                // SAFETY: the page just mapped.
                unsafe { libc::munmap(p, 4096) };
            }
        }
    };
    let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let zero = std::fs::File::open("/dev/zero").unwrap();
    for kind in ThreadKind::ALL {
        assert!(allowed(kind, map(rw, anon, -1)), "{kind:?}");
        assert!(allowed(kind, map(libc::PROT_NONE, anon, -1)), "{kind:?}");
        assert!(
            !allowed(kind, map(rw | libc::PROT_EXEC, anon, -1)),
            "{kind:?}"
        );
        assert!(
            !allowed(
                kind,
                map(libc::PROT_READ, libc::MAP_PRIVATE, zero.as_raw_fd())
            ),
            "{kind:?}"
        );
    }
    let protect = |prot: i32| {
        move || {
            // SAFETY: a fresh anonymous page, changed and unmapped; nothing else uses it.
            unsafe {
                let p = libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_NONE, anon, -1, 0);
                libc::mprotect(p, 4096, prot);
                libc::munmap(p, 4096);
            }
        }
    };
    assert!(allowed(ThreadKind::Vcpu, protect(rw)));
    assert!(!allowed(
        ThreadKind::Vcpu,
        protect(libc::PROT_READ | libc::PROT_EXEC)
    ));
    assert!(!allowed(ThreadKind::Devices, protect(libc::PROT_EXEC)));
}

#[test]
fn fcntl_futex_and_files_are_limited_to_what_the_threads_do() {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    let fcntl = move |cmd: i32, arg: i32| {
        move || {
            // SAFETY: a raw fcntl on our socket; a new descriptor is closed at once.
            let r = unsafe { libc::fcntl(fd, cmd, arg) };
            if cmd == libc::F_DUPFD_CLOEXEC && r >= 0 {
                // SAFETY: the duplicate just made.
                unsafe { libc::close(r) };
            }
        }
    };
    assert!(allowed(
        ThreadKind::SocketRelay,
        fcntl(libc::F_DUPFD_CLOEXEC, 0)
    ));
    assert!(!allowed(ThreadKind::SocketRelay, fcntl(libc::F_SETFL, 0)));
    assert!(!allowed(ThreadKind::SocketRelay, fcntl(libc::F_SETOWN, 1)));
    assert!(!allowed(
        ThreadKind::Devices,
        fcntl(libc::F_DUPFD_CLOEXEC, 0)
    ));

    let mut word = 0u32;
    let addr = std::ptr::addr_of_mut!(word) as usize;
    let futex = move |op: i32| {
        move || {
            // SAFETY: a raw futex call on a word of ours: a wake of nobody, or a requeue
            // that fails on the value check.
            unsafe { libc::syscall(libc::SYS_futex, addr, op, 1, 0, addr, 1) };
        }
    };
    assert!(allowed(
        ThreadKind::Vcpu,
        futex(libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG)
    ));
    assert!(!allowed(ThreadKind::Vcpu, futex(libc::FUTEX_CMP_REQUEUE)));
    assert!(!allowed(
        ThreadKind::Devices,
        futex(libc::FUTEX_LOCK_PI | libc::FUTEX_PRIVATE_FLAG)
    ));

    let dir = tempfile::tempdir().unwrap();
    let victim = std::ffi::CString::new(dir.path().join("x").to_str().unwrap()).unwrap();
    std::fs::write(dir.path().join("x"), b"").unwrap();
    for kind in ThreadKind::ALL.into_iter().filter(|k| k.denies_open()) {
        let path = victim.as_ptr() as usize;
        assert!(
            !allowed(kind, move || {
                // SAFETY: a raw unlinkat of a file in our temporary directory.
                unsafe { libc::unlinkat(libc::AT_FDCWD, path as *const libc::c_char, 0) };
            }),
            "{kind:?}"
        );
        // open and openat fail with EACCES (glibc makes them behind the program's back
        // and copes with the failure): no thread gets a file.
        let open = in_confined_child(kind, move || {
            // SAFETY: a raw openat of the same file; its result is only compared.
            let fd = unsafe {
                libc::openat(libc::AT_FDCWD, path as *const libc::c_char, libc::O_RDONLY)
            };
            let errno = std::io::Error::last_os_error().raw_os_error();
            i32::from(!(fd == -1 && errno == Some(libc::EACCES)))
        });
        assert_eq!(open, 0, "{kind:?}: openat must fail with EACCES");
    }
    assert!(dir.path().join("x").exists());
}

#[test]
fn a_call_outside_the_filter_stops_the_process_with_its_report() {
    const NAME: &str =
        "seccomp::tests::a_call_outside_the_filter_stops_the_process_with_its_report";
    const VAR: &str = "RUNVM_SECCOMP_TEST_TRAP";
    if std::env::var_os(VAR).is_some() {
        enter(ThreadKind::VhostWatchdog);
        // SAFETY: a raw getppid(2), which the filter traps; `_exit` is not reached.
        unsafe {
            libc::getppid();
            libc::_exit(0);
        }
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(VAR, "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_CODE), "{err}");
    assert!(
        err.contains("the vhost-watchdog thread made system call 110 ("),
        "{err}"
    );
}

#[test]
fn a_stdio_relay_copies_under_its_filter() {
    in_own_process("a_stdio_relay_copies_under_its_filter", || {
        let (mut guest, stream) = std::os::unix::net::UnixStream::pair().unwrap();
        let (reader, mut writer) = std::io::pipe().unwrap();
        let t = std::thread::spawn(move || {
            enter(ThreadKind::StdioRelay);
            let (mut input, stream) = (reader, stream);
            let mut buf = vec![0u8; 64 * 1024];
            let mut pfd = libc::pollfd {
                fd: input.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            loop {
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, -1) };
                let n = input.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                (&stream).write_all(&buf[..n]).unwrap();
            }
            stream.shutdown(std::net::Shutdown::Write).unwrap();
        });
        writer.write_all(b"to the guest").unwrap();
        drop(writer);
        let mut got = Vec::new();
        guest.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"to the guest");
        t.join().unwrap();
    });
}

#[test]
fn the_dns_relay_reaches_a_loopback_resolver_over_udp_and_tcp_under_its_filter() {
    in_own_process(
        "the_dns_relay_reaches_a_loopback_resolver_over_udp_and_tcp_under_its_filter",
        || {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let udp_addr = udp.local_addr().unwrap();
            let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let tcp_addr = tcp.local_addr().unwrap();
            let resolver = std::thread::spawn(move || {
                let mut b = [0u8; 64];
                let (n, from) = udp.recv_from(&mut b).unwrap();
                udp.send_to(&b[..n], from).unwrap();
                let (mut c, _) = tcp.accept().unwrap();
                let mut q = Vec::new();
                c.read_to_end(&mut q).unwrap();
                c.write_all(&q).unwrap();
            });
            let relay = std::thread::spawn(move || {
                enter(ThreadKind::DnsRelay);
                // Each connection runs on a thread of its own, started by the confined one.
                std::thread::Builder::new()
                    .name("runvm-dns-conn".into())
                    .spawn(move || {
                        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                        sock.connect(udp_addr).unwrap();
                        sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                            .unwrap();
                        sock.send(b"query").unwrap();
                        let mut answer = vec![0u8; 65535];
                        let n = sock.recv(&mut answer).unwrap();
                        assert_eq!(&answer[..n], b"query");
                        let timeout = std::time::Duration::from_secs(5);
                        let mut s =
                            std::net::TcpStream::connect_timeout(&tcp_addr, timeout).unwrap();
                        s.set_read_timeout(Some(timeout)).unwrap();
                        let mut w = s.try_clone().unwrap();
                        let up = std::thread::spawn(move || {
                            w.write_all(b"over tcp").unwrap();
                            w.shutdown(std::net::Shutdown::Write).unwrap();
                        });
                        let mut back = Vec::new();
                        s.read_to_end(&mut back).unwrap();
                        up.join().unwrap();
                        back
                    })
                    .unwrap()
                    .join()
                    .unwrap()
            });
            assert_eq!(relay.join().unwrap(), b"over tcp");
            resolver.join().unwrap();
        },
    );
}

#[test]
fn glibc_malloc_probes_in_a_confined_thread_do_not_stop_the_process() {
    in_own_process(
        "glibc_malloc_probes_in_a_confined_thread_do_not_stop_the_process",
        || {
            // The first trim of a malloc heap reads /proc/sys/vm/overcommit_memory, and
            // arenas past the eighth read /sys/devices/system/cpu/online: both opens are
            // made by glibc, here from confined threads, and must fail quietly.
            let threads: Vec<_> = (0..12)
                .map(|_| {
                    std::thread::spawn(|| {
                        enter(ThreadKind::StdioRelay);
                        for _ in 0..4 {
                            let blocks: Vec<Vec<u8>> =
                                (0..64).map(|i| vec![i as u8; 100 << 10]).collect();
                            drop(std::hint::black_box(blocks));
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        },
    );
}

#[test]
fn spare_fs_slots_fill_and_empty_on_the_monitors_main_thread_under_its_filter() {
    use crate::devices::virtio::fs::tests::virtiofsd_like;
    use crate::fs_slots::tests::{fill_and_empty, raw_ioctl_recorder, Fixture};
    in_own_process(
        "spare_fs_slots_fill_and_empty_on_the_monitors_main_thread_under_its_filter",
        || {
            // The event loop on a thread confined as the device thread; the fill and the
            // empty (the vhost-user talk, the watchdog thread, the eventfds, the KVM
            // ioctls, the event loop's requests) on one confined as the monitor's.
            let f = Fixture::with(raw_ioctl_recorder(), true);
            let running = virtiofsd_like().spawn();
            let backend = running.frontend.try_clone().unwrap();
            std::thread::scope(|s| {
                s.spawn(|| {
                    enter(ThreadKind::MonitorMain);
                    fill_and_empty(&f, backend);
                })
                .join()
                .unwrap();
            });
            assert!(running.ended());
        },
    );
}

#[test]
fn spare_slots_take_and_give_back_a_nic_on_the_monitors_main_thread_under_its_filter() {
    use crate::fs_slots::tests::{fill_and_empty_nic, raw_ioctl_recorder, Fixture};
    in_own_process(
        "spare_slots_take_and_give_back_a_nic_on_the_monitors_main_thread_under_its_filter",
        || {
            // The event loop on a thread confined as the device thread (it watches the
            // NIC's queues and TAP); the fill and the empty (the device, its eventfds, the
            // KVM ioctls, the event loop's requests, the TAP's close) on one confined as
            // the monitor's, with a TAP opened beforehand (a socket pair stands in).
            let f = Fixture::with(raw_ioctl_recorder(), true);
            let (tap, network) = std::os::unix::net::UnixDatagram::pair().unwrap();
            std::thread::scope(|s| {
                s.spawn(|| {
                    enter(ThreadKind::MonitorMain);
                    fill_and_empty_nic(&f, tap.into());
                })
                .join()
                .unwrap();
            });
            // The device is gone, its end of the TAP with it.
            let refused = network.send(&[0u8; 72]).unwrap_err();
            assert_eq!(refused.raw_os_error(), Some(libc::ECONNREFUSED));
        },
    );
}
