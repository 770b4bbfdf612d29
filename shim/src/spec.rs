//! Reads a bundle's `config.json` and turns it into what the guest needs, with errors
//! that name the file and the field.

use std::ops::Range;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use runvm_protocol::spec::{DeviceRule, DeviceRuleKind};
use runvm_protocol::{
    Capabilities, IdMapping, LinuxSpec, MountSpec, ProcessSpec, Rlimit, SeccompProgram, WindowSize,
};

/// Errors reading a bundle.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("root filesystem {0} does not exist (config.json root.path, relative to the bundle)")]
    MissingRootfs(PathBuf),
}

/// The parts of an OCI bundle runvm acts on.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub readonly: bool,
    pub hostname: Option<String>,
    pub process: Option<ProcessSpec>,
    pub linux: LinuxSpec,
    pub mounts: Vec<MountSpec>,
    /// What the host shares with the guest: the root filesystem and the binds of `mounts`.
    pub share: crate::share::SharePlan,
    /// The container's network namespace (`linux.namespaces`), already checked.
    pub network: crate::network::NetworkMode,
    /// The container's `resolv.conf` on the host (the source of Docker's bind mount of
    /// `/etc/resolv.conf`, else the root filesystem's), for the DNS forwarder.
    pub resolv_conf: crate::in_root::InRoot,
    /// `annotations`, for the state and the hooks.
    pub annotations: std::collections::HashMap<String, String>,
    /// `hooks`, already checked (absolute paths, positive timeouts).
    pub hooks: Option<oci_spec::runtime::Hooks>,
    /// `linux.seccomp`, compiled (also in `process`): exec'd processes get it too.
    pub seccomp: Option<SeccompProgram>,
    /// `linux.cgroupsPath`, as given (a path, or `slice:prefix:name` with `--systemd-cgroup`).
    pub cgroups_path: Option<String>,
    /// How many CPUs `linux.resources.cpu.cpus` names (`--cpuset-cpus 0,3`: 2), if set.
    pub cpuset_cpus: Option<usize>,
    /// The PID, IPC and UTS namespaces `linux.namespaces` joins by path: a member
    /// container (see [`crate::container::member`]) shares its sandbox's.
    pub joined: JoinedNamespaces,
}

impl ContainerSpec {
    /// Loads `<bundle>/config.json` and checks it.
    pub fn load(bundle: &Path) -> Result<Self, SpecError> {
        let bundle = std::fs::canonicalize(bundle).map_err(|e| SpecError::Load {
            path: bundle.to_path_buf(),
            message: format!("bundle directory: {e}"),
        })?;
        let path = bundle.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| SpecError::Load {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let spec: Spec = from_json(&text).map_err(|message| SpecError::Invalid {
            path: path.clone(),
            message,
        })?;
        let invalid = |message: String| SpecError::Invalid {
            path: path.clone(),
            message,
        };

        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| invalid("root.path is required".into()))?;
        let rootfs = if root.path().is_absolute() {
            root.path().clone()
        } else {
            bundle.join(root.path())
        };
        if !rootfs.is_dir() {
            return Err(SpecError::MissingRootfs(rootfs));
        }
        let readonly = root.readonly().unwrap_or(false);

        let seccomp = spec
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().as_ref())
            .map(crate::seccomp::compile)
            .transpose()
            .map_err(|e| invalid(e.to_string()))?;
        let mut process = spec
            .process()
            .as_ref()
            .map(process_spec)
            .transpose()
            .map_err(invalid)?;
        if let Some(p) = process.as_mut() {
            p.seccomp = seccomp.clone();
        }
        let linux = match spec.linux() {
            None => LinuxSpec::default(),
            Some(l) => {
                let sysctl = l.sysctl().clone().unwrap_or_default();
                for key in sysctl.keys() {
                    check_sysctl(key).map_err(|m| invalid(format!("linux.sysctl: {m}")))?;
                }
                let paths =
                    |v: &Option<Vec<String>>, field: &str| -> Result<Vec<String>, SpecError> {
                        let v = v.clone().unwrap_or_default();
                        match v.iter().find(|p| !p.starts_with('/')) {
                            Some(p) => Err(invalid(format!(
                                "linux.{field}: {p:?} must be an absolute path"
                            ))),
                            None => Ok(v),
                        }
                    };
                let devices = devices(l.devices()).map_err(invalid)?;
                let mut resources = l
                    .resources()
                    .as_ref()
                    .map(crate::cgroup::resources_from_oci)
                    .unwrap_or_default();
                let rules = l.resources().as_ref().and_then(|r| r.devices().as_ref());
                resources.devices = Some(device_rules(rules, &devices).map_err(invalid)?);
                let (uid_mappings, gid_mappings) = id_mappings(l).map_err(invalid)?;
                LinuxSpec {
                    sysctl: sysctl.into_iter().collect(),
                    masked_paths: paths(l.masked_paths(), "maskedPaths")?,
                    readonly_paths: paths(l.readonly_paths(), "readonlyPaths")?,
                    devices,
                    resources,
                    uid_mappings,
                    gid_mappings,
                }
            }
        };
        let network =
            crate::network::namespace::from_spec(&spec).map_err(|e| invalid(e.to_string()))?;
        let resolv_conf = spec
            .mounts()
            .iter()
            .flatten()
            .filter(|m| m.destination() == Path::new("/etc/resolv.conf"))
            .filter_map(|m| m.source().clone())
            .next_back()
            .and_then(|source| {
                let name = source.file_name()?.to_string_lossy().into_owned();
                Some(crate::in_root::InRoot {
                    root: source.parent()?.to_path_buf(),
                    path: name,
                })
            })
            .unwrap_or_else(|| crate::in_root::InRoot {
                root: rootfs.clone(),
                path: "/etc/resolv.conf".into(),
            });
        if let Some(h) = spec.hooks() {
            crate::hooks::validate(h).map_err(invalid)?;
        }
        let mut mounts = Vec::new();
        for m in spec.mounts().iter().flatten() {
            if let Some(m) = convert_mount(m).map_err(invalid)? {
                mounts.push(m);
            }
        }
        let share = crate::share::SharePlan::number(&rootfs, readonly, &mut mounts);
        let cgroups_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| !p.is_empty());
        let cpuset_cpus = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.cpu().as_ref())
            .and_then(|c| c.cpus().as_deref())
            .and_then(cpu_list_len);
        Ok(Self {
            joined: joined_namespaces(&spec),
            seccomp,
            cgroups_path,
            cpuset_cpus,
            mounts,
            share,
            network,
            resolv_conf,
            linux,
            rootfs,
            readonly,
            hostname: spec.hostname().clone().or_else(|| host_hostname(&spec)),
            process,
            bundle,
            annotations: spec.annotations().clone().unwrap_or_default(),
            hooks: spec.hooks().clone(),
        })
    }
}

/// The host's hostname for a container that shares the host's UTS namespace (no `uts`
/// entry in `linux.namespaces`, `docker run --uts host`) and names no hostname: under
/// runc it sees the host's; the guest, whose UTS namespace is its own, is given it.
fn host_hostname(spec: &oci_spec::runtime::Spec) -> Option<String> {
    let own_uts = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Uts)
        });
    if own_uts {
        return None;
    }
    nix::unistd::gethostname()
        .ok()
        .map(|h| h.to_string_lossy().into_owned())
}

/// How many CPUs a cpuset list names (`0-3,7`: 5); `None` for an empty or malformed one.
fn cpu_list_len(list: &str) -> Option<usize> {
    let mut n = 0usize;
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    (n > 0).then_some(n)
}

/// The PID, IPC and UTS namespaces a spec joins by path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinedNamespaces {
    pub pid: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
}

impl JoinedNamespaces {
    /// Each namespace joined, with its type.
    pub fn each(&self) -> impl Iterator<Item = (oci_spec::runtime::LinuxNamespaceType, &Path)> {
        use oci_spec::runtime::LinuxNamespaceType as T;
        [
            (T::Pid, &self.pid),
            (T::Ipc, &self.ipc),
            (T::Uts, &self.uts),
        ]
        .into_iter()
        .filter_map(|(t, p)| p.as_deref().map(|p| (t, p)))
    }

    /// Which of them a member shares with the main container of its VM.
    pub fn shared(&self) -> runvm_protocol::SharedNamespaces {
        runvm_protocol::SharedNamespaces {
            pid: self.pid.is_some(),
            ipc: self.ipc.is_some(),
            uts: self.uts.is_some(),
        }
    }
}

/// The PID, IPC and UTS namespaces `linux.namespaces` joins by path.
fn joined_namespaces(spec: &Spec) -> JoinedNamespaces {
    use oci_spec::runtime::LinuxNamespaceType as T;
    let path = |t: T| {
        spec.linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .and_then(|ns| ns.iter().find(|n| n.typ() == t))
            .and_then(|n| n.path().clone())
    };
    JoinedNamespaces {
        pid: path(T::Pid),
        ipc: path(T::Ipc),
        uts: path(T::Uts),
    }
}

/// Most lines of a user namespace's id map (the kernel's limit).
const MAX_ID_MAPPINGS: usize = 340;

/// `linux.uidMappings` and `gidMappings`, checked as runc checks them: mappings only with a
/// new user namespace in `linux.namespaces` and a new user namespace only with both maps;
/// joining one by path is refused (the workload lives in its own guest kernel). Each
/// range is non-empty and inside the 32-bit id space, and no two overlap on either side.
fn id_mappings(l: &oci_spec::runtime::Linux) -> Result<(Vec<IdMapping>, Vec<IdMapping>), String> {
    use oci_spec::runtime::LinuxNamespaceType as T;
    let user = l.namespaces().iter().flatten().find(|n| n.typ() == T::User);
    if let Some(path) = user.and_then(|n| n.path().as_ref()) {
        return Err(format!(
            "linux.namespaces: joining the user namespace {} is not supported by runvm: the container's processes live in its own guest kernel; give uidMappings and gidMappings for a new one",
            path.display()
        ));
    }
    let convert = |field: &str, v: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        let maps: Vec<IdMapping> = v
            .iter()
            .flatten()
            .map(|m| IdMapping {
                container_id: m.container_id(),
                host_id: m.host_id(),
                size: m.size(),
            })
            .collect();
        check_id_mappings(&maps).map_err(|m| format!("linux.{field}: {m}"))?;
        Ok::<_, String>(maps)
    };
    let uids = convert("uidMappings", l.uid_mappings())?;
    let gids = convert("gidMappings", l.gid_mappings())?;
    match (user.is_some(), uids.is_empty() || gids.is_empty()) {
        (true, true) => Err(
            "linux.namespaces has a user namespace but linux.uidMappings or linux.gidMappings is empty: give both maps".into(),
        ),
        (false, _) if !uids.is_empty() || !gids.is_empty() => Err(
            "linux.uidMappings/gidMappings are given but linux.namespaces has no user namespace: add {\"type\": \"user\"}".into(),
        ),
        _ => Ok((uids, gids)),
    }
}

/// One id map: at most [`MAX_ID_MAPPINGS`] lines of non-empty ranges that end inside the
/// 32-bit id space and overlap no other line on either side.
fn check_id_mappings(maps: &[IdMapping]) -> Result<(), String> {
    if maps.len() > MAX_ID_MAPPINGS {
        return Err(format!(
            "{} ranges; the kernel takes at most {MAX_ID_MAPPINGS}",
            maps.len()
        ));
    }
    let overlap = |a: Range<u64>, b: Range<u64>| a.start < b.end && b.start < a.end;
    for (i, m) in maps.iter().enumerate() {
        if m.size == 0 {
            return Err(format!("range {i} has size 0"));
        }
        if m.container_ids().end > 1 << 32 || m.host_ids().end > 1 << 32 {
            return Err(format!(
                "range {i} ({} {} {}) ends past the last id 4294967295",
                m.container_id, m.host_id, m.size
            ));
        }
        if let Some(j) = maps[..i].iter().position(|o| {
            overlap(m.container_ids(), o.container_ids()) || overlap(m.host_ids(), o.host_ids())
        }) {
            return Err(format!("ranges {j} and {i} overlap"));
        }
    }
    Ok(())
}

/// Most unknown keys named in one warning.
const MAX_NAMED: usize = 8;

/// Parses an OCI JSON document (config.json, or `runvm exec --process`'s file). Keys its
/// schema does not define are ignored, as the runtime spec requires ("MUST NOT generate
/// an error"), with one warning in runvm's log naming each with its path
/// (`process.argz`, `mounts[2].opts`), so that a misspelt key is still visible. Maps the
/// spec leaves open (`annotations`, `linux.sysctl`, `linux.resources.unified`, …) take any
/// key. A known key with a value of the wrong type is an error that names the key's path.
pub fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let mut unknown = Vec::new();
    let mut de = serde_json::Deserializer::from_str(text);
    let mut note = |path: serde_ignored::Path<'_>| unknown.push(key_path(&path));
    let value: T = {
        let ignoring = serde_ignored::Deserializer::new(&mut de, &mut note);
        serde_path_to_error::deserialize(ignoring).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path.is_empty() || path == "." {
                inner.to_string()
            } else {
                format!("{path}: {inner}")
            }
        })?
    };
    de.end().map_err(|e| e.to_string())?;
    if let Some(named) = unknown_keys_named(&unknown) {
        log::warn!("{named}");
    }
    Ok(value)
}

/// The warning for ignored keys, or none.
fn unknown_keys_named(unknown: &[String]) -> Option<String> {
    if unknown.is_empty() {
        return None;
    }
    let mut named = unknown
        .iter()
        .take(MAX_NAMED)
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    if unknown.len() > MAX_NAMED {
        named.push_str(&format!(" and {} more", unknown.len() - MAX_NAMED));
    }
    let plural = if unknown.len() == 1 { "" } else { "s" };
    Some(format!(
        "ignoring unknown key{plural} {named}: the OCI runtime spec defines no such key{plural} (check the spelling)"
    ))
}

/// A key's place in the document, as a user writes it: `process.args`, `mounts[0].type`.
fn key_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => match key_path(parent) {
            parent if parent.is_empty() => key.clone(),
            parent => format!("{parent}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

/// Every resource limit a process can have, by its OCI name.
const RLIMITS: &[(&str, nix::sys::resource::Resource)] = {
    use nix::sys::resource::Resource as R;
    &[
        ("RLIMIT_AS", R::RLIMIT_AS),
        ("RLIMIT_CORE", R::RLIMIT_CORE),
        ("RLIMIT_CPU", R::RLIMIT_CPU),
        ("RLIMIT_DATA", R::RLIMIT_DATA),
        ("RLIMIT_FSIZE", R::RLIMIT_FSIZE),
        ("RLIMIT_LOCKS", R::RLIMIT_LOCKS),
        ("RLIMIT_MEMLOCK", R::RLIMIT_MEMLOCK),
        ("RLIMIT_MSGQUEUE", R::RLIMIT_MSGQUEUE),
        ("RLIMIT_NICE", R::RLIMIT_NICE),
        ("RLIMIT_NOFILE", R::RLIMIT_NOFILE),
        ("RLIMIT_NPROC", R::RLIMIT_NPROC),
        ("RLIMIT_RSS", R::RLIMIT_RSS),
        ("RLIMIT_RTPRIO", R::RLIMIT_RTPRIO),
        ("RLIMIT_RTTIME", R::RLIMIT_RTTIME),
        ("RLIMIT_SIGPENDING", R::RLIMIT_SIGPENDING),
        ("RLIMIT_STACK", R::RLIMIT_STACK),
    ]
};

/// The guest kernel's `fs.nr_open`: no open-file limit can be set above it.
const GUEST_NR_OPEN: u64 = 1 << 20;

/// The limits a process gets where its spec sets none: under runc the container's process
/// inherits every limit of the runtime's own process (the containerd shim's, or the
/// caller's) that the spec does not set, so these are this process's own (`create` and
/// `exec` run in the caller's process), not the guest kernel's defaults. The open-file
/// limit is held to what the guest kernel allows.
fn inherited_rlimits(set: &[Rlimit]) -> Vec<Rlimit> {
    RLIMITS
        .iter()
        .filter(|(name, _)| !set.iter().any(|r| r.kind == *name))
        .filter_map(|(name, resource)| {
            let (soft, hard) = nix::sys::resource::getrlimit(*resource).ok()?;
            let cap = if *name == "RLIMIT_NOFILE" {
                GUEST_NR_OPEN
            } else {
                u64::MAX
            };
            Some(Rlimit {
                kind: (*name).to_string(),
                soft: soft.min(cap),
                hard: hard.min(cap),
            })
        })
        .collect()
}

/// An OCI `process` (from config.json, or `runvm exec --process`) as the guest runs it;
/// the error names the field.
pub fn process_spec(p: &oci_spec::runtime::Process) -> Result<ProcessSpec, String> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err("process.args must contain at least the program to run".into());
    }
    let cwd = p.cwd().to_string_lossy().into_owned();
    if !cwd.starts_with('/') {
        return Err(format!("process.cwd {cwd:?} must be an absolute path"));
    }
    let user = p.user();
    let mut rlimits: Vec<Rlimit> = p
        .rlimits()
        .iter()
        .flatten()
        .map(|r| Rlimit {
            kind: r.typ().to_string(),
            soft: r.soft(),
            hard: r.hard(),
        })
        .collect();
    rlimits.extend(inherited_rlimits(&rlimits));
    Ok(ProcessSpec {
        args,
        env: p.env().clone().unwrap_or_default(),
        cwd,
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        terminal: p.terminal().unwrap_or(false),
        rlimits,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        oom_score_adj: p.oom_score_adj(),
        capabilities: p.capabilities().as_ref().map(capabilities),
        console_size: p.console_size().as_ref().map(|b| WindowSize {
            rows: u16::try_from(b.height()).unwrap_or(u16::MAX),
            cols: u16::try_from(b.width()).unwrap_or(u16::MAX),
        }),
        // The container's `linux.seccomp`, set by the caller that has the whole spec.
        seccomp: None,
        umask: user.umask(),
        // Set by the monitor, which has the host's descriptors.
        shared_output: false,
        stdin_null: false,
    })
}

/// One `mounts` entry as the guest can make it, `None` for one that is knowingly skipped,
/// or an error naming the destination for what cannot be applied.
fn convert_mount(m: &oci_spec::runtime::Mount) -> Result<Option<MountSpec>, String> {
    let dest = m.destination().to_string_lossy().into_owned();
    let typ = m.typ().clone().unwrap_or_default();
    let options = m.options().clone().unwrap_or_default();
    let source = m
        .source()
        .as_ref()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !dest.starts_with('/') {
        return Err(format!(
            "mounts: destination {dest:?} must be an absolute path"
        ));
    }
    let bind = typ == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
    if bind {
        return crate::share::bind_mount(&dest, &source, &options)
            .map(Some)
            .map_err(|e| e.to_string());
    }
    match typ.as_str() {
        "proc" | "sysfs" | "tmpfs" | "devpts" | "mqueue" | "cgroup" | "cgroup2" => {
            Ok(Some(MountSpec {
                destination: dest,
                fstype: typ,
                source,
                options,
                share: None,
                relay: None,
            }))
        }
        _ => Err(format!(
            "mounts: {dest}: mount type {typ:?} is not supported by runvm"
        )),
    }
}

/// runc's check of a sysctl key: only the namespaced ones can be set. Every runvm container
/// has its own kernel, so the IPC, network and UTS ones are always the container's own.
fn check_sysctl(key: &str) -> Result<(), String> {
    let k = key.replace('/', ".");
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if IPC.contains(&k.as_str())
        || k.starts_with("fs.mqueue.")
        || k.starts_with("net.")
        || k == "kernel.domainname"
    {
        return Ok(());
    }
    if k == "kernel.hostname" {
        return Err(format!(
            "sysctl {key:?} is not allowed as it conflicts with the OCI \"hostname\" field"
        ));
    }
    Err(format!(
        "sysctl {key:?} is not in a separate kernel namespace"
    ))
}

/// oci-spec's capability sets as sorted `CAP_*` names.
fn capabilities(c: &oci_spec::runtime::LinuxCapabilities) -> Capabilities {
    let names = |set: &Option<oci_spec::runtime::Capabilities>| -> Vec<String> {
        let mut v: Vec<String> = set
            .iter()
            .flatten()
            .map(|cap| match serde_json::to_value(cap) {
                Ok(serde_json::Value::String(s)) => s,
                _ => format!("CAP_{cap}"),
            })
            .collect();
        v.sort();
        v
    };
    Capabilities {
        bounding: names(c.bounding()),
        effective: names(c.effective()),
        permitted: names(c.permitted()),
        inheritable: names(c.inheritable()),
        ambient: names(c.ambient()),
    }
}

/// `linux.devices` for the guest: absolute paths, a known type, 0666 by default.
fn devices(
    devices: &Option<Vec<oci_spec::runtime::LinuxDevice>>,
) -> Result<Vec<runvm_protocol::DeviceSpec>, String> {
    use oci_spec::runtime::LinuxDeviceType;
    devices
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, d)| {
            let path = d.path().to_string_lossy().into_owned();
            if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
                return Err(format!(
                    "linux.devices[{i}].path: {path:?} must be an absolute path without \"..\""
                ));
            }
            let kind = match d.typ() {
                LinuxDeviceType::C | LinuxDeviceType::U => 'c',
                LinuxDeviceType::B => 'b',
                LinuxDeviceType::P => 'p',
                other => {
                    return Err(format!(
                        "linux.devices[{i}] ({path}): type {other:?} cannot be created"
                    ))
                }
            };
            Ok(runvm_protocol::DeviceSpec {
                path,
                kind,
                major: d.major().max(0) as u64,
                minor: d.minor().max(0) as u64,
                mode: d.file_mode().unwrap_or(0o666) & 0o7777,
                uid: d.uid().unwrap_or(0),
                gid: d.gid().unwrap_or(0),
            })
        })
        .collect()
}

/// The devices runc allows in every container, after the config's own rules (runc's
/// `AllowedDevices`): mknod of any node, and the standard nodes and ptys. Those with a
/// path are left out when `linux.devices` has a node of that path, as runc leaves them out.
const RUNC_ALLOWED_DEVICES: [(Option<&str>, DeviceRule); 11] = [
    (None, allowed(DeviceRuleKind::Char, None, None, false)),
    (None, allowed(DeviceRuleKind::Block, None, None, false)),
    (Some("/dev/null"), allowed_rwm(1, 3)),
    (Some("/dev/random"), allowed_rwm(1, 8)),
    (Some("/dev/full"), allowed_rwm(1, 7)),
    (Some("/dev/tty"), allowed_rwm(5, 0)),
    (Some("/dev/zero"), allowed_rwm(1, 5)),
    (Some("/dev/urandom"), allowed_rwm(1, 9)),
    (None, allowed(DeviceRuleKind::Char, Some(136), None, true)),
    (None, allowed_rwm(5, 2)),
    (None, allowed_rwm(10, 200)),
];

/// An allow rule: mknod, and read and write too with `rw`.
const fn allowed(
    kind: DeviceRuleKind,
    major: Option<u32>,
    minor: Option<u32>,
    rw: bool,
) -> DeviceRule {
    DeviceRule {
        allow: true,
        kind,
        major,
        minor,
        read: rw,
        write: rw,
        mknod: true,
    }
}

/// An allow rule of every access for one character device.
const fn allowed_rwm(major: u32, minor: u32) -> DeviceRule {
    allowed(DeviceRuleKind::Char, Some(major), Some(minor), true)
}

/// `linux.resources.devices` for the guest's device cgroup, with runc's allowed devices
/// appended ([`RUNC_ALLOWED_DEVICES`]; `nodes` is `linux.devices`). As runc: a missing
/// type is `a`, a missing or negative number any; an empty access is an error. Access
/// letters other than `r`, `w` and `m` are ignored with a warning, as runc ignores them
/// (its own tests write `rwa`), but an access with none of the three is an error.
fn device_rules(
    rules: Option<&Vec<oci_spec::runtime::LinuxDeviceCgroup>>,
    nodes: &[runvm_protocol::DeviceSpec],
) -> Result<Vec<DeviceRule>, String> {
    use oci_spec::runtime::LinuxDeviceType;
    let mut out = Vec::new();
    for (i, r) in rules.into_iter().flatten().enumerate() {
        let at = format!("linux.resources.devices[{i}]");
        let kind = match r.typ() {
            None | Some(LinuxDeviceType::A) => DeviceRuleKind::All,
            Some(LinuxDeviceType::C) => DeviceRuleKind::Char,
            Some(LinuxDeviceType::B) => DeviceRuleKind::Block,
            Some(other) => {
                return Err(format!(
                    "{at}.type: {:?} is no device cgroup type (a, b or c)",
                    other.as_str()
                ))
            }
        };
        let number = |n: Option<i64>, field: &str| match n {
            None => Ok(None),
            Some(n) if n < 0 => Ok(None),
            Some(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| format!("{at}.{field}: {n} is beyond the largest device number")),
        };
        let access = r.access().as_deref().unwrap_or("");
        if access.is_empty() {
            return Err(format!("{at}.access: must not be empty (r, w and m)"));
        }
        let unknown: String = access.chars().filter(|c| !"rwm".contains(*c)).collect();
        if unknown.len() == access.chars().count() {
            return Err(format!(
                "{at}.access: {access:?} has none of r (read), w (write) and m (mknod)"
            ));
        }
        if !unknown.is_empty() {
            log::warn!("{at}.access {access:?}: ignoring {unknown:?} (only r, w and m mean anything), as runc does");
        }
        out.push(DeviceRule {
            allow: r.allow(),
            kind,
            major: number(r.major(), "major")?,
            minor: number(r.minor(), "minor")?,
            read: access.contains('r'),
            write: access.contains('w'),
            mknod: access.contains('m'),
        });
    }
    for (path, rule) in RUNC_ALLOWED_DEVICES {
        if path.is_some_and(|p| nodes.iter().any(|n| n.path == p)) {
            continue;
        }
        out.push(rule);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A bundle with an empty rootfs and `config` (merged over a minimal one); removed on drop.
    struct Bundle(PathBuf);

    impl Bundle {
        fn new(extra: Value) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "runvm-spec-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("rootfs")).unwrap();
            let mut config = json!({
                "ociVersion": "1.0.2",
                "root": { "path": "rootfs" },
                "process": { "args": ["sh"], "cwd": "/", "user": { "uid": 0, "gid": 0 } },
                "linux": { "namespaces": [
                    { "type": "pid" }, { "type": "ipc" }, { "type": "network" }, { "type": "mount" },
                ]},
            });
            merge(&mut config, extra);
            std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
            Self(dir)
        }

        fn load(&self) -> Result<ContainerSpec, SpecError> {
            ContainerSpec::load(&self.0)
        }
    }

    impl Drop for Bundle {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    #[test]
    fn devices_are_carried_with_runc_defaults_and_bad_paths_refused() {
        let b = Bundle::new(json!({ "linux": { "devices": [
            { "path": "/dev/fuse", "type": "c", "major": 10, "minor": 229 },
            { "path": "/dev/sda9", "type": "b", "major": 8, "minor": 9, "fileMode": 416, "uid": 5, "gid": 6 },
        ]}}));
        let d = b.load().unwrap().linux.devices;
        assert_eq!(
            (d[0].kind, d[0].major, d[0].minor, d[0].mode),
            ('c', 10, 229, 0o666)
        );
        assert_eq!(
            (d[1].kind, d[1].mode, d[1].uid, d[1].gid),
            ('b', 0o640, 5, 6)
        );
        for path in ["dev/x", "/dev/../etc/x"] {
            let b = Bundle::new(json!({ "linux": { "devices": [
                { "path": path, "type": "c", "major": 1, "minor": 3 },
            ]}}));
            let e = b.load().unwrap_err().to_string();
            assert!(e.contains("linux.devices[0].path"), "{e}");
        }
    }

    #[test]
    fn device_rules_are_carried_with_runc_s_allowed_devices_after_them() {
        // No rules: runc's allowed devices alone (the guest starts from deny-all).
        let r = Bundle::new(json!({})).load().unwrap().linux.resources;
        let d = r.devices.unwrap();
        assert_eq!(d.len(), RUNC_ALLOWED_DEVICES.len());
        assert_eq!(
            (d[0].kind, d[0].major, d[0].mknod, d[0].read),
            (DeviceRuleKind::Char, None, true, false)
        );
        // runc's deny test: deny all, and /dev/kmsg as a node; Docker-like rules after it.
        let b = Bundle::new(json!({ "linux": {
            "devices": [ { "path": "/dev/null", "type": "c", "major": 1, "minor": 3 } ],
            "resources": { "devices": [
                { "allow": false, "access": "rwm" },
                { "allow": true, "type": "c", "major": 136, "access": "rwm" },
                { "allow": false, "type": "c", "major": 1, "minor": 11, "access": "rwa" },
                { "allow": true, "type": "b", "major": -1, "minor": 4294967295_i64, "access": "r" },
            ]},
        }}));
        let d = b.load().unwrap().linux.resources.devices.unwrap();
        let deny_all = DeviceRule {
            read: true,
            write: true,
            mknod: true,
            ..DeviceRule::default()
        };
        assert_eq!(d[0], deny_all);
        assert_eq!(
            (d[1].allow, d[1].kind, d[1].major, d[1].minor),
            (true, DeviceRuleKind::Char, Some(136), None)
        );
        // Unknown access letters are ignored, as runc ignores them.
        assert_eq!((d[2].read, d[2].write, d[2].mknod), (true, true, false));
        assert_eq!(
            (d[3].kind, d[3].major, d[3].minor),
            (DeviceRuleKind::Block, None, Some(u32::MAX))
        );
        // runc's /dev/null rule is left out: the config has a node of that path.
        assert_eq!(d.len(), 4 + RUNC_ALLOWED_DEVICES.len() - 1);
        assert!(!d[4..]
            .iter()
            .any(|r| r.major == Some(1) && r.minor == Some(3)));
        // Device rules make no host cgroup of their own.
        assert!(!b.load().unwrap().linux.resources.has_limits());
    }

    #[test]
    fn malformed_device_rules_are_refused_naming_their_index() {
        for (rule, want) in [
            (
                json!({ "allow": true, "type": "p", "access": "rwm" }),
                "linux.resources.devices[1].type",
            ),
            (
                json!({ "allow": true, "type": "x", "access": "rwm" }),
                "linux.resources.devices[1].type",
            ),
            (
                json!({ "allow": true, "type": "c" }),
                "linux.resources.devices[1].access: must not be empty",
            ),
            (
                json!({ "allow": true, "type": "c", "access": "xyz" }),
                "linux.resources.devices[1].access: \"xyz\" has none",
            ),
            (
                json!({ "allow": true, "type": "c", "major": 4294967296_i64, "access": "r" }),
                "linux.resources.devices[1].major: 4294967296",
            ),
        ] {
            let b = Bundle::new(json!({ "linux": { "resources": { "devices": [
                { "allow": false, "access": "rwm" }, rule,
            ]}}}));
            let e = b.load().unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("config.json"), "{want}: {e}");
        }
    }

    #[test]
    fn id_mappings_are_carried_with_a_user_namespace_and_refused_without_one() {
        let ns = |user: Value| json!([{ "type": "pid" }, { "type": "ipc" }, { "type": "network" }, { "type": "mount" }, user]);
        let map = |c: u64, h: u64, n: u64| json!({ "containerID": c, "hostID": h, "size": n });
        let l = Bundle::new(json!({ "linux": {
            "namespaces": ns(json!({ "type": "user" })),
            "uidMappings": [map(0, 100000, 65536)],
            "gidMappings": [map(0, 200000, 1), map(1, 300000, 10)],
        }}))
        .load()
        .unwrap()
        .linux;
        let m = |container_id, host_id, size| IdMapping {
            container_id,
            host_id,
            size,
        };
        assert_eq!(l.uid_mappings, [m(0, 100_000, 65_536)]);
        assert_eq!(l.gid_mappings, [m(0, 200_000, 1), m(1, 300_000, 10)]);
        let none = Bundle::new(json!({})).load().unwrap().linux;
        assert!(none.uid_mappings.is_empty() && none.gid_mappings.is_empty());

        for (linux, want) in [
            (
                json!({ "namespaces": ns(json!({ "type": "user" })) }),
                "has a user namespace but linux.uidMappings or linux.gidMappings is empty",
            ),
            (
                json!({ "uidMappings": [map(0, 1000, 1)], "gidMappings": [map(0, 1000, 1)] }),
                "linux.namespaces has no user namespace",
            ),
            (
                json!({ "namespaces": ns(json!({ "type": "user", "path": "/proc/self/ns/user" })),
                        "uidMappings": [map(0, 1000, 1)], "gidMappings": [map(0, 1000, 1)] }),
                "joining the user namespace /proc/self/ns/user is not supported",
            ),
            (
                json!({ "namespaces": ns(json!({ "type": "user" })),
                        "uidMappings": [map(0, 1000, 0)], "gidMappings": [map(0, 1000, 1)] }),
                "linux.uidMappings: range 0 has size 0",
            ),
            (
                json!({ "namespaces": ns(json!({ "type": "user" })),
                        "uidMappings": [map(0, 1000, 1)],
                        "gidMappings": [map(0, 4294967295, 2)] }),
                "linux.gidMappings: range 0 (0 4294967295 2) ends past the last id",
            ),
            (
                json!({ "namespaces": ns(json!({ "type": "user" })),
                        "uidMappings": [map(0, 1000, 10), map(10, 1005, 10)],
                        "gidMappings": [map(0, 1000, 1)] }),
                "linux.uidMappings: ranges 0 and 1 overlap",
            ),
        ] {
            let e = Bundle::new(json!({ "linux": linux }))
                .load()
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn namespaced_sysctls_and_paths_are_carried_others_refused() {
        let b = Bundle::new(json!({ "linux": {
            "sysctl": { "net.ipv4.ip_forward": "1", "kernel.shmmax": "4096", "fs/mqueue/msg_max": "20" },
            "maskedPaths": ["/proc/kcore", "/proc/acpi"],
            "readonlyPaths": ["/proc/sys"],
        }}));
        let l = b.load().unwrap().linux;
        assert_eq!(l.sysctl.len(), 3);
        assert_eq!(l.sysctl["net.ipv4.ip_forward"], "1");
        assert_eq!(l.masked_paths, ["/proc/kcore", "/proc/acpi"]);
        assert_eq!(l.readonly_paths, ["/proc/sys"]);
        for (key, why) in [
            ("vm.swappiness", "not in a separate kernel namespace"),
            ("kernel.hostname", "conflicts with the OCI"),
        ] {
            let b = Bundle::new(json!({ "linux": { "sysctl": { key: "1" } } }));
            let e = b.load().unwrap_err().to_string();
            assert!(
                e.contains("linux.sysctl") && e.contains(key) && e.contains(why),
                "{e}"
            );
        }
        let b = Bundle::new(json!({ "linux": { "maskedPaths": ["proc/kcore"] } }));
        let e = b.load().unwrap_err().to_string();
        assert!(e.contains("linux.maskedPaths"), "{e}");
    }

    #[test]
    fn kernel_mounts_and_binds_are_carried_binds_through_the_share() {
        let b = Bundle::new(json!({ "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/etc/hosts", "type": "bind", "source": "/etc/hostname",
              "options": ["rbind", "rprivate"] },
        ]}));
        let m = b.load().unwrap().mounts;
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(m[1].destination, "/dev/shm");
        assert_eq!(m[1].fstype, "tmpfs");
        assert_eq!(m[1].options[4], "size=65536k");
        // A file bind is shared live: the first entry of the share after the root.
        assert_eq!(
            (
                m[2].fstype.as_str(),
                m[2].source.as_str(),
                m[2].share.as_deref()
            ),
            ("bind", "/etc/hostname", Some("m0"))
        );

        let b = Bundle::new(json!({ "mounts": [
            { "destination": "/data", "type": "bind", "source": "/tmp", "options": ["rbind"] },
            // A bind given by its options only.
            { "destination": "/data2", "source": "/tmp", "options": ["bind", "ro"] },
        ]}));
        let spec = b.load().unwrap();
        let shares: Vec<_> = spec.mounts.iter().map(|m| m.share.as_deref()).collect();
        assert_eq!(shares, [Some("m0"), Some("m1")]);
        assert!(spec.share.entries[2].readonly);
        // A source that does not exist is an error naming the mount.
        let b = Bundle::new(json!({ "mounts": [
            { "destination": "/data", "type": "bind", "source": "/no/such/dir", "options": ["rbind"] },
        ]}));
        let e = b.load().unwrap_err().to_string();
        assert!(e.contains("/data") && e.contains("/no/such/dir"), "{e}");
        let b = Bundle::new(json!({ "mounts": [
            { "destination": "/mnt", "type": "nfs", "source": "srv:/x" },
        ]}));
        let e = b.load().unwrap_err().to_string();
        assert!(e.contains("/mnt") && e.contains("nfs"), "{e}");
    }

    #[test]
    fn the_default_runc_spec_is_accepted_whole() {
        // What `runc spec` writes (oci-spec's default): mounts, capabilities, rlimits,
        // masked and read-only paths, noNewPrivileges.
        let mut config = serde_json::to_value(Spec::default()).unwrap();
        config["root"]["path"] = json!("rootfs");
        let b = Bundle::new(config);
        let c = b.load().unwrap();
        let types: Vec<&str> = c.mounts.iter().map(|m| m.fstype.as_str()).collect();
        assert_eq!(
            types,
            ["proc", "tmpfs", "devpts", "tmpfs", "mqueue", "sysfs", "cgroup"]
        );
        assert!(!c.linux.masked_paths.is_empty() && !c.linux.readonly_paths.is_empty());
        let p = c.process.unwrap();
        assert!(p.no_new_privileges);
        assert_eq!(p.rlimits[0].kind, "RLIMIT_NOFILE");
        let caps = p.capabilities.unwrap();
        assert!(caps.bounding.contains(&"CAP_KILL".to_string()), "{caps:?}");
    }

    #[test]
    fn rlimits_are_converted_with_their_oci_names() {
        let b = Bundle::new(json!({ "process": { "rlimits": [
            { "type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096 },
            { "type": "RLIMIT_CORE", "soft": 0, "hard": 0 },
        ]}}));
        let p = b.load().unwrap().process.unwrap();
        assert_eq!(
            p.rlimits[..2],
            [
                Rlimit {
                    kind: "RLIMIT_NOFILE".into(),
                    soft: 1024,
                    hard: 4096
                },
                Rlimit {
                    kind: "RLIMIT_CORE".into(),
                    soft: 0,
                    hard: 0
                },
            ]
        );
        // Every other limit is this process's own, as a runc container inherits runc's.
        assert_eq!(p.rlimits.len(), RLIMITS.len());
        let (soft, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NPROC).unwrap();
        assert!(p.rlimits[2..].contains(&Rlimit {
            kind: "RLIMIT_NPROC".into(),
            soft,
            hard
        }));
        assert!(!p.rlimits[2..].iter().any(|r| r.kind == "RLIMIT_NOFILE"));
        let b = Bundle::new(json!({ "process": { "rlimits": [
            { "type": "RLIMIT_BOGUS", "soft": 1, "hard": 1 },
        ]}}));
        let e = b.load().unwrap_err().to_string();
        assert!(e.contains("RLIMIT_BOGUS"), "{e}");
    }

    #[test]
    fn no_new_privileges_and_oom_score_adj_are_carried() {
        let p = Bundle::new(json!({})).load().unwrap().process.unwrap();
        assert!(!p.no_new_privileges);
        assert_eq!(p.oom_score_adj, None);
        let b = Bundle::new(json!({ "process": { "noNewPrivileges": true, "oomScoreAdj": -500 }}));
        let p = b.load().unwrap().process.unwrap();
        assert!(p.no_new_privileges);
        assert_eq!(p.oom_score_adj, Some(-500));
    }

    #[test]
    fn capabilities_are_carried_by_name_and_unknown_ones_refused() {
        let p = Bundle::new(json!({})).load().unwrap().process.unwrap();
        assert_eq!(p.capabilities, None);
        let b = Bundle::new(json!({ "process": { "capabilities": {
            "bounding": ["CAP_KILL", "CAP_CHOWN"],
            "effective": ["CAP_KILL"],
            "ambient": ["net_bind_service"],
        }}}));
        let c = b.load().unwrap().process.unwrap().capabilities.unwrap();
        assert_eq!(c.bounding, ["CAP_CHOWN", "CAP_KILL"]);
        assert_eq!(c.effective, ["CAP_KILL"]);
        assert!(c.permitted.is_empty() && c.inheritable.is_empty());
        assert_eq!(c.ambient, ["CAP_NET_BIND_SERVICE"]);
        let b = Bundle::new(json!({ "process": { "capabilities": {
            "bounding": ["CAP_KILL", "CAP_WHATEVER"],
        }}}));
        let e = b.load().unwrap_err().to_string();
        assert!(e.contains("CAP_WHATEVER"), "{e}");
    }

    /// The config.json files runc, Docker 20.10, Podman 4 and containerd 1.6 write, as
    /// they write them (testdata/).
    fn testdata(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn what_runc_docker_podman_and_containerd_write_has_no_unknown_key() {
        for name in [
            "runc-1.1-spec.json",
            "docker-20.10-config.json",
            "podman-4-config.json",
            "containerd-1.6-cri-config.json",
        ] {
            let spec: Result<Spec, String> = from_json(&testdata(name));
            assert!(spec.is_ok(), "{name}: {}", spec.unwrap_err());
        }
        // `runc spec`'s output, as runc 1.1 writes it, is accepted by the whole of load.
        let b = Bundle::new(json!({}));
        std::fs::write(b.0.join("config.json"), testdata("runc-1.1-spec.json")).unwrap();
        let c = b.load().unwrap();
        assert!(c.readonly);
        assert_eq!(c.hostname.as_deref(), Some("runc"));
        assert_eq!(c.mounts.len(), 7);
        assert!(c.process.unwrap().terminal);
    }

    #[test]
    fn a_cpuset_is_counted() {
        assert_eq!(cpu_list_len("0,3"), Some(2));
        assert_eq!(cpu_list_len("0-3,7"), Some(5));
        assert_eq!(cpu_list_len(""), None);
        assert_eq!(cpu_list_len("3-1"), None);
        assert_eq!(cpu_list_len("x"), None);
        let b = Bundle::new(json!({ "linux": { "resources": { "cpu": { "cpus": "1-2" } } } }));
        assert_eq!(b.load().unwrap().cpuset_cpus, Some(2));
    }

    #[test]
    fn a_container_in_the_hosts_uts_namespace_gets_the_hosts_hostname() {
        let host = nix::unistd::gethostname().unwrap();
        let shared = Bundle::new(json!({})).load().unwrap();
        assert_eq!(shared.hostname.as_deref(), host.to_str());
        let own = Bundle::new(json!({ "linux": { "namespaces": [
            { "type": "pid" }, { "type": "ipc" }, { "type": "network" }, { "type": "mount" },
            { "type": "uts" },
        ]}}));
        assert_eq!(own.load().unwrap().hostname, None);
        let named = Bundle::new(json!({ "hostname": "given" }));
        assert_eq!(named.load().unwrap().hostname.as_deref(), Some("given"));
    }

    #[test]
    fn namespaces_joined_by_path_are_the_ones_a_member_shares() {
        let b = Bundle::new(json!({ "linux": { "namespaces": [
            { "type": "pid" }, { "type": "mount" },
            { "type": "ipc", "path": "/proc/self/ns/ipc" },
            { "type": "uts", "path": "/proc/self/ns/uts" },
            { "type": "network", "path": "/proc/self/ns/net" },
        ]}}));
        let joined = b.load().unwrap().joined;
        assert_eq!(
            joined.shared(),
            runvm_protocol::SharedNamespaces {
                pid: false,
                ipc: true,
                uts: true
            }
        );
        assert_eq!(joined.ipc.as_deref(), Some(Path::new("/proc/self/ns/ipc")));
        // Without the network namespace by path, no VM can be the one shared.
        let b = Bundle::new(json!({ "linux": { "namespaces": [
            { "type": "pid" }, { "type": "mount" }, { "type": "network" },
            { "type": "ipc", "path": "/proc/self/ns/ipc" },
        ]}}));
        let e = b.load().unwrap_err().to_string();
        assert!(e.contains("--ipc container:"), "{e}");
    }

    #[test]
    fn seccomp_is_compiled_into_the_process_and_umask_carried() {
        let p = Bundle::new(json!({})).load().unwrap().process.unwrap();
        assert_eq!((p.seccomp, p.umask), (None, None));
        let b = Bundle::new(json!({
            "process": { "user": { "uid": 0, "gid": 0, "umask": 63 } },
            "linux": { "seccomp": { "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [ { "names": ["mkdir"], "action": "SCMP_ACT_ERRNO" } ] } },
        }));
        let c = b.load().unwrap();
        let p = c.process.unwrap();
        assert_eq!(p.umask, Some(0o77));
        let prog = p.seccomp.unwrap();
        assert!(!prog.filter.is_empty() && prog.filter.len().is_multiple_of(8));
        assert_eq!(c.seccomp, Some(prog));
        // The profiles Docker and Podman write compile.
        for name in ["docker-20.10-config.json", "podman-4-config.json"] {
            let spec: Spec = from_json(&testdata(name)).unwrap();
            let profile = spec.linux().as_ref().unwrap().seccomp().as_ref().unwrap();
            crate::seccomp::compile(profile).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let b =
            Bundle::new(json!({ "linux": { "seccomp": { "defaultAction": "SCMP_ACT_NOTIFY" } } }));
        let e = b.load().unwrap_err().to_string();
        assert!(
            e.contains("config.json")
                && e.contains("linux.seccomp: defaultAction: SCMP_ACT_NOTIFY"),
            "{e}"
        );
    }

    /// The unknown keys `from_json` would warn about in `extra` merged into a bundle.
    fn unknown_in(extra: Value) -> Vec<String> {
        let mut v = serde_json::to_value(oci_spec::runtime::Spec::default()).unwrap();
        merge(&mut v, extra);
        let mut unknown = Vec::new();
        let text = v.to_string();
        let mut de = serde_json::Deserializer::from_str(&text);
        let _: Spec = serde_ignored::deserialize(&mut de, |p| unknown.push(key_path(&p))).unwrap();
        unknown
    }

    #[test]
    fn unknown_keys_are_ignored_and_named_with_their_paths() {
        for (extra, key) in [
            (json!({ "process": { "argz": ["sh"] } }), "process.argz"),
            (json!({ "hostName": "x" }), "hostName"),
            (json!({ "root": { "readOnly": true } }), "root.readOnly"),
            (
                json!({ "mounts": [ { "destination": "/proc", "type": "proc", "source": "proc" },
                                    { "destination": "/tmp", "type": "tmpfs", "opts": ["size=1m"] } ] }),
                "mounts[1].opts",
            ),
            (
                json!({ "linux": { "resources": { "memory": { "limitt": 1 } } } }),
                "linux.resources.memory.limitt",
            ),
            (
                json!({ "linux": { "maskedpaths": ["/proc/kcore"] } }),
                "linux.maskedpaths",
            ),
            (
                json!({ "process": { "user": { "uid": 0, "gid": 0, "groups": [1] } } }),
                "process.user.groups",
            ),
        ] {
            // Loading succeeds (the spec's MUST), and the warning names the key.
            Bundle::new(extra.clone()).load().unwrap();
            assert_eq!(unknown_in(extra), vec![key.to_string()]);
        }
        // Every unknown key is named, not only the first.
        let named =
            unknown_keys_named(&unknown_in(json!({ "a": 1, "process": { "b": 2 } }))).unwrap();
        assert!(
            named.contains("\"a\"") && named.contains("\"process.b\"") && named.contains("keys"),
            "{named}"
        );
        assert_eq!(unknown_keys_named(&[]), None);
    }

    #[test]
    fn a_known_key_of_the_wrong_type_is_an_error_naming_its_path() {
        for (extra, path) in [
            (
                json!({ "process": { "terminal": "yes" } }),
                "process.terminal",
            ),
            (json!({ "root": { "readonly": 1 } }), "root.readonly"),
            (json!({ "hostname": ["x"] }), "hostname"),
        ] {
            let e = Bundle::new(extra).load().unwrap_err().to_string();
            assert!(e.contains(path) && e.contains("config.json"), "{path}: {e}");
        }
    }

    #[test]
    fn the_maps_the_spec_leaves_open_take_any_key() {
        let b = Bundle::new(json!({
            "annotations": { "anything.goes/here": "x", "io.kubernetes.cri.sandbox-id": "y" },
            "linux": {
                "sysctl": { "net.core.somaxconn": "1024" },
                "resources": { "unified": { "memory.oom.group": "1", "whatever.key": "v" } },
            },
            "hooks": { "prestart": [ { "path": "/bin/true", "env": ["A=1"] } ] },
        }));
        b.load().unwrap();
    }

    #[test]
    fn exec_process_files_are_checked_the_same_way() {
        let ok = r#"{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0},"terminal":false}"#;
        let p: oci_spec::runtime::Process = from_json(ok).unwrap();
        assert_eq!(p.args().as_ref().unwrap()[0], "sh");
        // An unknown key is ignored; a wrong type is not.
        let typo = r#"{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0},"termnial":true}"#;
        assert!(from_json::<oci_spec::runtime::Process>(typo).is_ok());
        let bad = r#"{"args":["sh"],"cwd":"/","user":{"uid":"root","gid":0}}"#;
        let e = from_json::<oci_spec::runtime::Process>(bad).unwrap_err();
        assert!(e.contains("user.uid"), "{e}");
        // Trailing garbage after the document is an error too.
        assert!(from_json::<oci_spec::runtime::Process>(&format!("{ok} x")).is_err());
    }
}
