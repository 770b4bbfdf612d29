//! Reads a bundle's `config.json` and turns it into what the guest needs, with errors
//! that name the file and the field.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use runvm_protocol::ProcessSpec;

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
        let spec: Spec = serde_json::from_str(&text).map_err(|e| SpecError::Invalid {
            path: path.clone(),
            message: e.to_string(),
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

        let process = match spec.process() {
            None => None,
            Some(p) => {
                let args = p.args().clone().unwrap_or_default();
                if args.is_empty() {
                    return Err(invalid(
                        "process.args must contain at least the program to run".into(),
                    ));
                }
                let cwd = p.cwd().to_string_lossy().into_owned();
                if !cwd.starts_with('/') {
                    return Err(invalid(format!(
                        "process.cwd {cwd:?} must be an absolute path"
                    )));
                }
                let user = p.user();
                Some(ProcessSpec {
                    args,
                    env: p.env().clone().unwrap_or_default(),
                    cwd,
                    uid: user.uid(),
                    gid: user.gid(),
                    additional_gids: user.additional_gids().clone().unwrap_or_default(),
                    terminal: p.terminal().unwrap_or(false),
                })
            }
        };
        Ok(Self {
            rootfs,
            readonly,
            hostname: spec.hostname().clone(),
            process,
            bundle,
        })
    }
}
