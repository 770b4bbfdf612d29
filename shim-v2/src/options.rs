//! The runtime options containerd passes with a task (`CreateTaskRequest.options`).
//!
//! For a runtime type other than runc's, containerd's CRI plugin and `ctr` send CRI's
//! generic `runtimeoptions.v1.Options` (a `TypeUrl` and a `ConfigPath`, from the runtime's
//! `options` table or `ctr --runtime-config-path`); a client may also send runc's own
//! options type. runvm has no configuration file and no option of runc's shim applies to
//! it, so only empty options are taken: anything else is refused with an error naming
//! the option, before anything is created.

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{CodedInputStream, Message};
use containerd_shim::protos::shim::oci::Options as RuncOptions;

/// CRI's generic options type.
const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";
/// runc's shim's options type.
const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";

/// Options that runvm cannot take.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("runtime option {name} = {value:?} is not supported by io.containerd.runvm.v2 ({why}); remove it from the runtime's options")]
    Unsupported {
        name: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("unknown runtime options type {0:?} for io.containerd.runvm.v2 (it takes none; runtimeoptions.v1.Options and containerd.runc.v1.Options only when empty)")]
    UnknownType(String),
    #[error("cannot decode the runtime options ({type_url}): {source}")]
    Decode {
        type_url: String,
        source: containerd_shim::protos::protobuf::Error,
    },
}

/// Checks the options of a task: `Ok` when there are none (or all are empty).
pub fn check(options: Option<&Any>) -> Result<(), OptionsError> {
    let Some(any) = options else {
        return Ok(());
    };
    let type_url = any.type_url.trim_start_matches("type.googleapis.com/");
    let decode_error = |source| OptionsError::Decode {
        type_url: type_url.to_string(),
        source,
    };
    match type_url {
        "" if any.value.is_empty() => Ok(()),
        RUNTIME_OPTIONS => {
            let (inner_type, config_path) = runtime_options(&any.value).map_err(decode_error)?;
            if !config_path.is_empty() {
                return Err(OptionsError::Unsupported {
                    name: "ConfigPath",
                    value: config_path,
                    why: "runvm has no configuration file",
                });
            }
            if !inner_type.is_empty() {
                return Err(OptionsError::Unsupported {
                    name: "TypeUrl",
                    value: inner_type,
                    why: "runvm takes no typed options",
                });
            }
            Ok(())
        }
        RUNC_OPTIONS => {
            let o = RuncOptions::parse_from_bytes(&any.value).map_err(decode_error)?;
            runc_option(&o).map_or(Ok(()), |(name, value)| {
                Err(OptionsError::Unsupported {
                    name,
                    value,
                    why: "it is an option of runc's shim",
                })
            })
        }
        other => Err(OptionsError::UnknownType(other.to_string())),
    }
}

/// The first option of runc's type that is set, by its name in containerd's config.
fn runc_option(o: &RuncOptions) -> Option<(&'static str, String)> {
    let strings = [
        ("BinaryName", &o.binary_name),
        ("Root", &o.root),
        ("ShimCgroup", &o.shim_cgroup),
        ("CriuPath", &o.criu_path),
        ("CriuImagePath", &o.criu_image_path),
        ("CriuWorkPath", &o.criu_work_path),
    ];
    let flags = [
        ("NoPivotRoot", o.no_pivot_root),
        ("NoNewKeyring", o.no_new_keyring),
        ("SystemdCgroup", o.systemd_cgroup),
    ];
    let ids = [("IoUid", o.io_uid), ("IoGid", o.io_gid)];
    strings
        .into_iter()
        .find(|(_, v)| !v.is_empty())
        .map(|(n, v)| (n, v.clone()))
        .or_else(|| {
            flags
                .into_iter()
                .find(|(_, v)| *v)
                .map(|(n, _)| (n, "true".into()))
        })
        .or_else(|| {
            ids.into_iter()
                .find(|(_, v)| *v != 0)
                .map(|(n, v)| (n, v.to_string()))
        })
}

/// `runtimeoptions.v1.Options`: field 1 `type_url`, field 2 `config_path` (strings).
fn runtime_options(bytes: &[u8]) -> containerd_shim::protos::protobuf::Result<(String, String)> {
    let mut input = CodedInputStream::from_bytes(bytes);
    let (mut type_url, mut config_path) = (String::new(), String::new());
    while let Some(tag) = input.read_raw_tag_or_eof()? {
        match tag {
            10 => type_url = input.read_string()?,
            18 => config_path = input.read_string()?,
            _ => containerd_shim::protos::protobuf::rt::skip_field_for_tag(tag, &mut input)?,
        }
    }
    Ok((type_url, config_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        Any {
            type_url: type_url.into(),
            value,
            ..Default::default()
        }
    }

    /// `runtimeoptions.v1.Options` with `config_path` set, as protobuf encodes it.
    fn with_config_path(path: &str) -> Vec<u8> {
        let mut v = vec![18, path.len() as u8];
        v.extend_from_slice(path.as_bytes());
        v
    }

    #[test]
    fn no_options_or_empty_ones_are_taken() {
        assert!(check(None).is_ok());
        assert!(check(Some(&any(RUNTIME_OPTIONS, Vec::new()))).is_ok());
        let empty_runc = RuncOptions::new().write_to_bytes().unwrap();
        assert!(check(Some(&any(RUNC_OPTIONS, empty_runc))).is_ok());
    }

    #[test]
    fn a_set_option_or_an_unknown_type_is_refused_by_name() {
        let e = check(Some(&any(
            RUNTIME_OPTIONS,
            with_config_path("/etc/runvm.toml"),
        )))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("ConfigPath") && e.contains("/etc/runvm.toml"),
            "{e}"
        );
        let mut runc = RuncOptions::new();
        runc.systemd_cgroup = true;
        let e = check(Some(&any(RUNC_OPTIONS, runc.write_to_bytes().unwrap())))
            .unwrap_err()
            .to_string();
        assert!(e.contains("SystemdCgroup"), "{e}");
        let e = check(Some(&any("io.example.Options", vec![1])))
            .unwrap_err()
            .to_string();
        assert!(e.contains("io.example.Options"), "{e}");
        assert!(check(Some(&any(RUNTIME_OPTIONS, vec![18, 200]))).is_err());
    }
}
