//! The container's device cgroup on cgroup v2: the rule list of `linux.resources.devices`
//! ([`DeviceRule`]s, runc's own allowed devices appended by the host) turned into an eBPF
//! program of type `BPF_PROG_TYPE_CGROUP_DEVICE`, loaded with `bpf(2)` and attached to the
//! container's cgroup. The kernel runs it on every open and mknod of a device node by a
//! process of that cgroup; a denied access fails with `EPERM`.
//!
//! The rules mean what they mean under cgroup v1 (and runc): they are applied in order to
//! a policy that starts as deny-all; an `a` rule resets it to allow-all or deny-all, and
//! every other rule adds or removes an exception, for the access it names, to that
//! default ([`Policy`]). A rule that would punch a hole in a wildcard exception (which
//! cgroup v1 silently ignores) is refused, as runc refuses it. The program then checks the
//! access against each exception and answers the default when none matches.
//!
//! Replacing the program (a later rule list) is atomic (`BPF_F_REPLACE`): no access is
//! ever checked by neither program.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use runvm_protocol::spec::{DeviceRule, DeviceRuleKind};

/// `BPF_DEVCG_ACC_*`: the access bits of `struct bpf_cgroup_dev_ctx`'s `access_type`.
const ACC_MKNOD: u8 = 1;
const ACC_READ: u8 = 2;
const ACC_WRITE: u8 = 4;
const ACC_ALL: u8 = ACC_MKNOD | ACC_READ | ACC_WRITE;
/// `BPF_DEVCG_DEV_*`: the device type bits of `access_type`.
const DEV_BLOCK: u8 = 1;
const DEV_CHAR: u8 = 2;

/// Why the device rules could not be put in force.
#[derive(Debug, thiserror::Error)]
pub enum DeviceFilterError {
    /// A rule that cgroup v1 would ignore, leaving the user with less protection than
    /// the list says.
    #[error(
        "device rule {index} ({rule}) would punch a hole in the wildcard rule {wildcard}: \
         cgroup v1 ignores such rules, so runc and runvm refuse them"
    )]
    HoleInWildcard {
        index: usize,
        rule: String,
        wildcard: String,
    },
    #[error("load the device cgroup program ({instructions} instructions): {source}{}", verifier_log(.log))]
    Load {
        instructions: usize,
        log: String,
        #[source]
        source: std::io::Error,
    },
    #[error("open the cgroup directory {path}: {source}")]
    OpenCgroup {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("attach the device cgroup program to {path}: {source}")]
    Attach {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn verifier_log(log: &str) -> String {
    let log = log.trim();
    if log.is_empty() {
        String::new()
    } else {
        format!("; the verifier said: {log}")
    }
}

/// The device type an exception is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum DeviceType {
    Char,
    Block,
}

impl DeviceType {
    fn bpf(self) -> u8 {
        match self {
            Self::Char => DEV_CHAR,
            Self::Block => DEV_BLOCK,
        }
    }

    fn letter(self) -> char {
        match self {
            Self::Char => 'c',
            Self::Block => 'b',
        }
    }
}

/// The devices an exception matches: a type, and a major and minor number or any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Devices {
    kind: DeviceType,
    major: Option<u32>,
    minor: Option<u32>,
}

impl std::fmt::Display for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let num = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        write!(
            f,
            "{} {}:{}",
            self.kind.letter(),
            num(self.major),
            num(self.minor)
        )
    }
}

/// An access set as the letters of cgroup v1 (`rwm`).
fn access_letters(access: u8) -> String {
    [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')]
        .iter()
        .filter(|(bit, _)| access & bit != 0)
        .map(|(_, c)| *c)
        .collect()
}

fn rule_access(rule: &DeviceRule) -> u8 {
    (if rule.read { ACC_READ } else { 0 })
        | (if rule.write { ACC_WRITE } else { 0 })
        | (if rule.mknod { ACC_MKNOD } else { 0 })
}

/// What a rule list comes to: a default answer, and the devices (with the accesses) that
/// get the other answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    default_allow: bool,
    exceptions: BTreeMap<Devices, u8>,
}

impl Policy {
    /// Applies `rules` in order to a deny-all policy, as cgroup v1 applies them to
    /// `devices.allow` and `devices.deny` (runc's emulation of it on cgroup v2).
    pub fn from_rules(rules: &[DeviceRule]) -> Result<Self, DeviceFilterError> {
        let mut policy = Self::default();
        for (index, rule) in rules.iter().enumerate() {
            policy.apply(index, rule)?;
        }
        Ok(policy)
    }

    fn apply(&mut self, index: usize, rule: &DeviceRule) -> Result<(), DeviceFilterError> {
        let kind = match rule.kind {
            DeviceRuleKind::All => {
                *self = Self {
                    default_allow: rule.allow,
                    exceptions: BTreeMap::new(),
                };
                return Ok(());
            }
            DeviceRuleKind::Char => DeviceType::Char,
            DeviceRuleKind::Block => DeviceType::Block,
        };
        let devices = Devices {
            kind,
            major: rule.major,
            minor: rule.minor,
        };
        let access = rule_access(rule);
        if rule.allow != self.default_allow {
            // An exception to the default, or more access for one.
            if access != 0 {
                *self.exceptions.entry(devices).or_insert(0) |= access;
            }
            return Ok(());
        }
        // Back to the default for these devices: only an exception of exactly these
        // devices can shrink; a wildcard one that covers them would stay whole.
        for wildcard in [
            Devices {
                major: None,
                ..devices
            },
            Devices {
                minor: None,
                ..devices
            },
            Devices {
                major: None,
                minor: None,
                ..devices
            },
        ] {
            if wildcard == devices {
                continue;
            }
            if let Some(&held) = self.exceptions.get(&wildcard) {
                if held & access != 0 {
                    return Err(DeviceFilterError::HoleInWildcard {
                        index,
                        rule: format!("{devices} {}", access_letters(access)),
                        wildcard: format!("{wildcard} {}", access_letters(held)),
                    });
                }
            }
        }
        if let Some(held) = self.exceptions.get_mut(&devices) {
            *held &= !access;
            if *held == 0 {
                self.exceptions.remove(&devices);
            }
        }
        Ok(())
    }

    /// Whether the policy lets an access (`ACC_*` bits) to a device through.
    #[cfg(test)]
    fn allows(&self, kind: DeviceType, major: u32, minor: u32, access: u8) -> bool {
        let excepted = self.exceptions.iter().any(|(d, held)| {
            d.kind == kind
                && d.major.is_none_or(|m| m == major)
                && d.minor.is_none_or(|m| m == minor)
                && access & held == access
        });
        self.default_allow != excepted
    }
}

/// One eBPF instruction (`struct bpf_insn`): opcode, destination and source registers
/// (4 bits each, destination in the low half), a signed offset and an immediate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Instruction {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// The registers the program uses. R1 holds the context on entry; R0 is the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Reg {
    R0 = 0,
    R1 = 1,
    R2 = 2,
    R3 = 3,
    R4 = 4,
    R5 = 5,
    R6 = 6,
}

// Instruction classes, sizes, modes, operations and sources (`linux/bpf_common.h`, `linux/bpf.h`).
const BPF_LDX: u8 = 0x01;
const BPF_ALU: u8 = 0x04;
const BPF_JMP: u8 = 0x05;
const BPF_JMP32: u8 = 0x06;
const BPF_W: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
const BPF_AND: u8 = 0x50;
const BPF_RSH: u8 = 0x70;
const BPF_MOV: u8 = 0xb0;
const BPF_JNE: u8 = 0x50;
const BPF_EXIT: u8 = 0x90;
const BPF_K: u8 = 0x00;
const BPF_X: u8 = 0x08;

impl Instruction {
    fn new(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Self {
        Self {
            code,
            regs: (src as u8) << 4 | dst as u8,
            off,
            imm,
        }
    }

    /// `dst = *(u32 *)(src + off)`.
    fn load_word(dst: Reg, src: Reg, off: i16) -> Self {
        Self::new(BPF_LDX | BPF_MEM | BPF_W, dst, src, off, 0)
    }

    /// `dst = (u32) dst & imm`.
    fn and32(dst: Reg, imm: u32) -> Self {
        Self::new(BPF_ALU | BPF_AND | BPF_K, dst, Reg::R0, 0, imm as i32)
    }

    /// `dst = (u32) dst >> imm`.
    fn rsh32(dst: Reg, imm: u32) -> Self {
        Self::new(BPF_ALU | BPF_RSH | BPF_K, dst, Reg::R0, 0, imm as i32)
    }

    /// `dst = (u32) imm`.
    fn mov32_imm(dst: Reg, imm: u32) -> Self {
        Self::new(BPF_ALU | BPF_MOV | BPF_K, dst, Reg::R0, 0, imm as i32)
    }

    /// `dst = (u32) src`.
    fn mov32_reg(dst: Reg, src: Reg) -> Self {
        Self::new(BPF_ALU | BPF_MOV | BPF_X, dst, src, 0, 0)
    }

    /// `if (u32) dst != imm goto +off` (a 32-bit compare: numbers up to `u32::MAX`).
    fn jne32_imm(dst: Reg, imm: u32, off: i16) -> Self {
        Self::new(BPF_JMP32 | BPF_JNE | BPF_K, dst, Reg::R0, off, imm as i32)
    }

    /// `if (u32) dst != (u32) src goto +off`.
    fn jne32_reg(dst: Reg, src: Reg, off: i16) -> Self {
        Self::new(BPF_JMP32 | BPF_JNE | BPF_X, dst, src, off, 0)
    }

    fn exit() -> Self {
        Self::new(BPF_JMP | BPF_EXIT, Reg::R0, Reg::R0, 0, 0)
    }
}

/// The program for `policy`. Registers: R2 the device type, R3 the access asked for,
/// R4 the major and R5 the minor number (from `struct bpf_cgroup_dev_ctx`: `access_type`
/// is `access << 16 | type`, then `major` and `minor`); R6 is scratch. One block per
/// exception: on the first test that fails it jumps past its own end to the next block;
/// a block whose tests all pass answers the exception's answer. After the last block,
/// the default.
pub fn program(policy: &Policy) -> Vec<Instruction> {
    use Instruction as I;
    let mut out = vec![
        I::load_word(Reg::R2, Reg::R1, 0),
        I::and32(Reg::R2, 0xffff),
        I::load_word(Reg::R3, Reg::R1, 0),
        I::rsh32(Reg::R3, 16),
        I::load_word(Reg::R4, Reg::R1, 4),
        I::load_word(Reg::R5, Reg::R1, 8),
    ];
    let excepted = u32::from(!policy.default_allow);
    for (devices, &access) in &policy.exceptions {
        // The instructions, each test marked `true`: it jumps to the next block when it
        // fails, its offset filled in once the block's length is known.
        let mut block: Vec<(I, bool)> =
            vec![(I::jne32_imm(Reg::R2, devices.kind.bpf().into(), 0), true)];
        if access != ACC_ALL {
            // The access asked for must be within the exception's.
            block.push((I::mov32_reg(Reg::R6, Reg::R3), false));
            block.push((I::and32(Reg::R6, access.into()), false));
            block.push((I::jne32_reg(Reg::R6, Reg::R3, 0), true));
        }
        if let Some(major) = devices.major {
            block.push((I::jne32_imm(Reg::R4, major, 0), true));
        }
        if let Some(minor) = devices.minor {
            block.push((I::jne32_imm(Reg::R5, minor, 0), true));
        }
        block.push((I::mov32_imm(Reg::R0, excepted), false));
        block.push((I::exit(), false));
        let len = block.len();
        for (at, (mut insn, jumps_out)) in block.into_iter().enumerate() {
            if jumps_out {
                // Past the block's last instruction: at most 9 instructions, fits i16.
                insn.off = (len - at - 1) as i16;
            }
            out.push(insn);
        }
    }
    out.push(I::mov32_imm(Reg::R0, u32::from(policy.default_allow)));
    out.push(I::exit());
    out
}

// bpf(2) commands, program and attach types, attach flags (`linux/bpf.h`).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
const BPF_F_REPLACE: u32 = 4;
/// The verifier's log, asked for only when a load fails.
const LOG_SIZE: usize = 64 * 1024;

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type` (the kernel takes
/// a shorter attr as zeros beyond it).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for `BPF_PROG_ATTACH`.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// `bpf(cmd, attr, sizeof attr)`.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised `#[repr(C)]` prefix of `union bpf_attr` of
    // the size passed; the kernel reads it (and for a load writes only into the log
    // buffer whose address and size it names, which the caller keeps alive).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Loads `insns` as a device cgroup program; on failure the error carries the
/// verifier's log.
fn load(insns: &[Instruction]) -> Result<OwnedFd, DeviceFilterError> {
    const LICENSE: &[u8] = b"Apache\0";
    let attempt = |log: Option<&mut Vec<u8>>| {
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: LICENSE.as_ptr() as u64,
            ..Default::default()
        };
        attr.prog_name[..10].copy_from_slice(b"runvm_devs");
        if let Some(log) = log {
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
        }
        bpf(BPF_PROG_LOAD, &mut attr)
    };
    let to_fd = |fd: libc::c_long| {
        // SAFETY: a successful BPF_PROG_LOAD returns a new file descriptor that nothing
        // else owns.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    };
    match attempt(None) {
        Ok(fd) => Ok(to_fd(fd)),
        Err(source) => {
            // Again with the verifier's log, for the message.
            let mut log = vec![0u8; LOG_SIZE];
            if let Ok(fd) = attempt(Some(&mut log)) {
                return Ok(to_fd(fd));
            }
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err(DeviceFilterError::Load {
                instructions: insns.len(),
                log: String::from_utf8_lossy(&log[..end]).into_owned(),
                source,
            })
        }
    }
}

/// Loads the program of `rules` and attaches it to the cgroup directory `cgroup`, in
/// place of `previous` (the program attached before, if any) in one step. Returns the
/// new program, which the caller keeps for the next replacement.
pub fn install(
    rules: &[DeviceRule],
    cgroup: &Path,
    previous: Option<&OwnedFd>,
) -> Result<OwnedFd, DeviceFilterError> {
    let policy = Policy::from_rules(rules)?;
    let prog = load(&program(&policy))?;
    let path = cgroup.display().to_string();
    let dir = std::fs::File::open(cgroup).map_err(|source| DeviceFilterError::OpenCgroup {
        path: path.clone(),
        source,
    })?;
    let mut attr = ProgAttachAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    if let Some(old) = previous {
        attr.attach_flags |= BPF_F_REPLACE;
        attr.replace_bpf_fd = old.as_raw_fd() as u32;
    }
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(|source| DeviceFilterError::Attach { path, source })?;
    Ok(prog)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        allow: bool,
        kind: char,
        major: Option<u32>,
        minor: Option<u32>,
        access: &str,
    ) -> DeviceRule {
        DeviceRule {
            allow,
            kind: match kind {
                'a' => DeviceRuleKind::All,
                'c' => DeviceRuleKind::Char,
                _ => DeviceRuleKind::Block,
            },
            major,
            minor,
            read: access.contains('r'),
            write: access.contains('w'),
            mknod: access.contains('m'),
        }
    }

    /// runc's own allowed devices, as the host appends them.
    fn runc_defaults() -> Vec<DeviceRule> {
        let mut v = vec![
            rule(true, 'c', None, None, "m"),
            rule(true, 'b', None, None, "m"),
        ];
        for (major, minor) in [(1, 3), (1, 8), (1, 7), (5, 0), (1, 5), (1, 9)] {
            v.push(rule(true, 'c', Some(major), Some(minor), "rwm"));
        }
        v.push(rule(true, 'c', Some(136), None, "rwm"));
        v.push(rule(true, 'c', Some(5), Some(2), "rwm"));
        v.push(rule(true, 'c', Some(10), Some(200), "rwm"));
        v
    }

    /// Docker's default rules (moby's `oci.DefaultLinuxSpec` and its additions).
    fn docker() -> Vec<DeviceRule> {
        let mut v = vec![rule(false, 'a', None, None, "rwm")];
        for (major, minor) in [(1, 5), (1, 3), (1, 9), (1, 8), (5, 0), (5, 1)] {
            v.push(rule(true, 'c', Some(major), Some(minor), "rwm"));
        }
        v.push(rule(false, 'c', Some(10), Some(229), "rwm"));
        v.push(rule(true, 'c', None, None, "m"));
        v.push(rule(true, 'b', None, None, "m"));
        v.push(rule(true, 'c', Some(136), None, "rwm"));
        v.push(rule(true, 'c', Some(5), Some(2), "rwm"));
        v.extend(runc_defaults());
        v
    }

    /// A test-only interpreter of the instructions [`program`] emits, run on one
    /// `struct bpf_cgroup_dev_ctx`; panics on anything else (or on running off the end).
    fn run(insns: &[Instruction], kind: DeviceType, major: u32, minor: u32, access: u8) -> u64 {
        let ctx: [u32; 3] = [
            u32::from(access) << 16 | u32::from(kind.bpf()),
            major,
            minor,
        ];
        let mut regs = [0u64; 11];
        regs[1] = 0xc7c; // a pointer: only ever loaded from
        let mut pc = 0usize;
        loop {
            let i = insns[pc];
            let dst = usize::from(i.regs & 0xf);
            let src = usize::from(i.regs >> 4);
            pc += 1;
            match i.code {
                0x61 => {
                    assert_eq!(regs[src], 0xc7c, "loads only from the context");
                    let at = usize::try_from(i.off).unwrap();
                    assert!(at % 4 == 0 && at < 12);
                    regs[dst] = u64::from(ctx[at / 4]);
                }
                0x54 => regs[dst] = u64::from(regs[dst] as u32 & i.imm as u32),
                0x74 => regs[dst] = u64::from(regs[dst] as u32 >> i.imm),
                0xb4 => regs[dst] = u64::from(i.imm as u32),
                0xbc => regs[dst] = u64::from(regs[src] as u32),
                0x56 | 0x5e => {
                    let other = if i.code == 0x56 {
                        i.imm as u32
                    } else {
                        regs[src] as u32
                    };
                    if regs[dst] as u32 != other {
                        pc = pc.checked_add_signed(isize::from(i.off)).unwrap();
                    }
                }
                0x95 => return regs[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    /// Every access of interest to every device of interest: the program answers as the
    /// policy does.
    fn assert_program_matches_policy(rules: &[DeviceRule]) -> Policy {
        let policy = Policy::from_rules(rules).unwrap();
        let prog = program(&policy);
        for kind in [DeviceType::Char, DeviceType::Block] {
            for (major, minor) in [(1, 3), (1, 11), (5, 2), (136, 4), (8, 0), (10, 229), (7, 7)] {
                for access in 1..=ACC_ALL {
                    let want = policy.allows(kind, major, minor, access);
                    let got = run(&prog, kind, major, minor, access);
                    assert_eq!(
                        got,
                        u64::from(want),
                        "{kind:?} {major}:{minor} {} under {rules:?}",
                        access_letters(access)
                    );
                }
            }
        }
        policy
    }

    #[test]
    fn deny_all_denies_kmsg_and_the_defaults_keep_null_and_ptys() {
        let mut rules = vec![rule(false, 'a', None, None, "rwm")];
        rules.extend(runc_defaults());
        let p = assert_program_matches_policy(&rules);
        let rw = ACC_READ | ACC_WRITE;
        assert!(!p.allows(DeviceType::Char, 1, 11, ACC_READ));
        assert!(!p.allows(DeviceType::Char, 1, 11, ACC_WRITE));
        assert!(p.allows(DeviceType::Char, 1, 11, ACC_MKNOD));
        assert!(p.allows(DeviceType::Char, 1, 3, rw));
        assert!(p.allows(DeviceType::Char, 136, 4, rw));
        assert!(p.allows(DeviceType::Char, 5, 2, rw));
        assert!(!p.allows(DeviceType::Block, 8, 0, ACC_READ));
        assert!(p.allows(DeviceType::Block, 8, 0, ACC_MKNOD));
    }

    #[test]
    fn an_allow_rule_opens_only_its_device_and_access() {
        let mut rules = vec![
            rule(false, 'a', None, None, "rwm"),
            rule(true, 'c', Some(1), Some(11), "rw"),
        ];
        rules.extend(runc_defaults());
        let p = assert_program_matches_policy(&rules);
        assert!(p.allows(DeviceType::Char, 1, 11, ACC_READ | ACC_WRITE));
        assert!(!p.allows(DeviceType::Block, 1, 11, ACC_READ));
        assert!(!p.allows(DeviceType::Char, 1, 12, ACC_READ));
    }

    #[test]
    fn docker_s_defaults_deny_fuse_and_disks_and_allow_the_standard_nodes() {
        let p = assert_program_matches_policy(&docker());
        for (major, minor) in [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 1),
            (5, 2),
            (136, 0),
            (10, 200),
        ] {
            assert!(
                p.allows(DeviceType::Char, major, minor, ACC_READ | ACC_WRITE),
                "c {major}:{minor}"
            );
        }
        assert!(!p.allows(DeviceType::Char, 10, 229, ACC_READ));
        // `mknod /dev/sda b 8 0` works, opening it does not.
        assert!(p.allows(DeviceType::Block, 8, 0, ACC_MKNOD));
        assert!(!p.allows(DeviceType::Block, 8, 0, ACC_READ));
    }

    #[test]
    fn a_wildcard_rule_resets_and_later_rules_change_the_exceptions() {
        // Allow-all (Docker's --privileged), then a deny, then the deny partly lifted.
        let rules = [
            rule(true, 'a', None, None, "rwm"),
            rule(false, 'c', Some(1), Some(11), "rwm"),
            rule(true, 'c', Some(1), Some(11), "r"),
        ];
        let p = assert_program_matches_policy(&rules);
        assert!(p.allows(DeviceType::Char, 1, 11, ACC_READ));
        assert!(!p.allows(DeviceType::Char, 1, 11, ACC_WRITE));
        assert!(p.allows(DeviceType::Block, 8, 0, ACC_ALL));
        // Only the last wildcard counts.
        let p = assert_program_matches_policy(&[
            rule(false, 'c', Some(1), Some(11), "rwm"),
            rule(false, 'a', None, None, ""),
        ]);
        assert_eq!(p, Policy::default());
        // Allow-all alone: the program is "return 1".
        let p = Policy::from_rules(&[rule(true, 'a', None, None, "rwm")]).unwrap();
        assert_eq!(program(&p).len(), 8);
        assert_eq!(run(&program(&p), DeviceType::Block, 8, 0, ACC_ALL), 1);
        // No rule at all: deny everything (the host always sends runc's defaults).
        assert_eq!(
            run(
                &program(&Policy::default()),
                DeviceType::Char,
                1,
                3,
                ACC_READ
            ),
            0
        );
    }

    #[test]
    fn a_hole_in_a_wildcard_exception_is_refused_with_its_index() {
        let rules = [
            rule(false, 'a', None, None, "rwm"),
            rule(true, 'c', Some(1), None, "rw"),
            rule(false, 'c', Some(1), Some(11), "r"),
        ];
        let e = Policy::from_rules(&rules).unwrap_err().to_string();
        assert!(
            e.contains("device rule 2 (c 1:11 r)") && e.contains("c 1:* rw"),
            "{e}"
        );
        // Removing access the wildcard does not hold is no hole.
        let ok = [
            rule(false, 'a', None, None, "rwm"),
            rule(true, 'c', None, None, "m"),
            rule(false, 'c', Some(1), Some(11), "rw"),
        ];
        assert_program_matches_policy(&ok);
    }

    #[test]
    fn numbers_beyond_i32_compare_as_unsigned_32_bit() {
        let rules = [
            rule(false, 'a', None, None, "rwm"),
            rule(true, 'c', Some(u32::MAX), Some(0x8000_0000), "rwm"),
        ];
        let p = Policy::from_rules(&rules).unwrap();
        let prog = program(&p);
        assert_eq!(
            run(&prog, DeviceType::Char, u32::MAX, 0x8000_0000, ACC_READ),
            1
        );
        assert_eq!(run(&prog, DeviceType::Char, u32::MAX, 0, ACC_READ), 0);
    }

    #[test]
    fn instructions_encode_as_the_kernel_reads_them() {
        // `r2 = *(u32 *)(r1 + 4)`: opcode 0x61, dst 2 in the low nibble, src 1 above it.
        let i = Instruction::load_word(Reg::R2, Reg::R1, 4);
        assert_eq!((i.code, i.regs, i.off, i.imm), (0x61, 0x12, 4, 0));
        assert_eq!(std::mem::size_of::<Instruction>(), 8);
        let j = Instruction::jne32_reg(Reg::R6, Reg::R3, 3);
        assert_eq!((j.code, j.regs, j.off), (0x5e, 0x36, 3));
        assert_eq!(Instruction::exit().code, 0x95);
        assert_eq!(std::mem::size_of::<ProgLoadAttr>(), 72);
        assert_eq!(std::mem::size_of::<ProgAttachAttr>(), 20);
    }
}

#[cfg(test)]
mod kernel_tests {
    use super::*;

    /// The kernel's verifier takes the programs of Docker's rules and of allow-all,
    /// where this host lets the test load programs at all (root, `CONFIG_BPF_SYSCALL`).
    #[test]
    fn the_verifier_accepts_the_programs() {
        let deny = DeviceRule::default();
        let kmsg = DeviceRule {
            allow: true,
            kind: DeviceRuleKind::Char,
            major: Some(1),
            minor: Some(11),
            read: true,
            write: true,
            mknod: false,
        };
        let allow_all = DeviceRule {
            allow: true,
            ..DeviceRule::default()
        };
        for rules in [vec![deny, kmsg], vec![allow_all], vec![]] {
            let policy = Policy::from_rules(&rules).unwrap();
            match load(&program(&policy)) {
                Ok(_) => {}
                Err(DeviceFilterError::Load { source, .. })
                    if matches!(source.raw_os_error(), Some(libc::EPERM | libc::ENOSYS)) =>
                {
                    eprintln!("skipped: this host does not let the test load eBPF ({source})");
                    return;
                }
                Err(e) => panic!("{rules:?}: {e}"),
            }
        }
        // A program the verifier refuses (it falls off its end): the error says why.
        let e = load(&[Instruction::mov32_imm(Reg::R0, 1)]).unwrap_err();
        assert!(
            matches!(&e, DeviceFilterError::Load { log, .. } if !log.is_empty()),
            "{e}"
        );
        assert!(e.to_string().contains("the verifier said"), "{e}");
    }
}
