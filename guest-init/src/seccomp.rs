//! Installs the container's seccomp filter, which the host compiled to classic BPF from
//! `linux.seccomp`, with `seccomp(SECCOMP_SET_MODE_FILTER)`. When it is installed (before
//! the user switch or last before `execve`) is for `credentials` to say.

use crate::error::{Error, Result};
use runvm_protocol::{SeccompProgram, SECCOMP_INSTRUCTION_LEN};

/// `seccomp(2)` operation that installs a filter.
const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
/// The kernel's limit on a classic BPF program (`BPF_MAXINSNS`).
const MAX_INSTRUCTIONS: usize = 4096;

/// A decoded filter, ready to install.
pub struct Filter {
    instructions: Vec<libc::sock_filter>,
    /// `seccomp(2)` flags (e.g. `SECCOMP_FILTER_FLAG_LOG`).
    flags: u32,
}

impl Filter {
    /// Decodes `process.seccomp` as the host sent it (`None` without one).
    pub fn from_spec(program: Option<&SeccompProgram>) -> Result<Option<Self>> {
        program
            .map(|p| {
                Ok(Self {
                    instructions: instructions(p)?,
                    flags: p.flags,
                })
            })
            .transpose()
    }

    /// Installs the filter on the calling thread. Needs `no_new_privs` or `CAP_SYS_ADMIN`.
    pub fn install(&self) -> Result<()> {
        install(&self.instructions, self.flags)
    }
}

/// The program's instructions as the kernel's `struct sock_filter`s; an error for bytes
/// that are not a whole, non-empty, not too long program.
fn instructions(p: &SeccompProgram) -> Result<Vec<libc::sock_filter>> {
    let n = p.filter.len() / SECCOMP_INSTRUCTION_LEN;
    if p.filter.is_empty()
        || !p.filter.len().is_multiple_of(SECCOMP_INSTRUCTION_LEN)
        || n > MAX_INSTRUCTIONS
    {
        return Err(Error::new(format!(
            "seccomp: the host sent a filter of {} bytes, not 1 to {MAX_INSTRUCTIONS} instructions of {SECCOMP_INSTRUCTION_LEN} bytes",
            p.filter.len()
        )));
    }
    Ok(p.filter
        .chunks_exact(SECCOMP_INSTRUCTION_LEN)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

/// Installs `program` on the calling thread.
fn install(program: &[libc::sock_filter], flags: u32) -> Result<()> {
    let prog = libc::sock_fprog {
        // `instructions` bounds the length to MAX_INSTRUCTIONS.
        len: program.len() as libc::c_ushort,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `program`, which outlives the call; the kernel copies the
    // instructions and validates them. No memory of ours is written.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            flags as libc::c_uint,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        let e = nix::errno::Errno::last();
        return Err(Error::new(format!(
            "error loading seccomp filter into kernel: {}",
            if rc > 0 {
                format!("thread {rc} could not be synchronized (TSYNC)")
            } else {
                e.desc().to_lowercase()
            }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_are_decoded_and_bad_lengths_refused() {
        // BPF_RET | BPF_K, SECCOMP_RET_ALLOW.
        let mut filter = vec![0x06, 0x00, 0x00, 0x00];
        filter.extend_from_slice(&0x7fff_0000u32.to_ne_bytes());
        let p = SeccompProgram { filter, flags: 0 };
        let v = instructions(&p).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].code, v[0].jt, v[0].jf, v[0].k),
            (6, 0, 0, 0x7fff_0000)
        );
        for len in [0, 7, 9, 8 * (MAX_INSTRUCTIONS + 1)] {
            let p = SeccompProgram {
                filter: vec![0; len],
                flags: 0,
            };
            assert!(instructions(&p).is_err(), "{len}");
        }
    }
}
