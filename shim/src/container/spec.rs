//! `runvm spec`: writes the default `config.json`, byte for byte what `runc spec` (1.1.5)
//! writes, so that tools and test suites that build their bundles with `$RUNTIME spec`
//! get the same bundle (a terminal, runc's mounts, masks and namespaces). `--rootless`
//! gives runc's rootless variant, mapping container root to the caller's uid and gid.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// `runc spec`'s document (Go's `json.MarshalIndent` with tabs, no final newline).
const DEFAULT: &str = include_str!("../../assets/runc-spec.json");
/// `runc spec --rootless`'s, with `@UID@`/`@GID@` for the caller's ids.
const ROOTLESS: &str = include_str!("../../assets/runc-spec-rootless.json");

/// The document `runc spec [--rootless]` writes for a caller with these ids.
pub fn document(rootless: bool, uid: u32, gid: u32) -> String {
    if rootless {
        ROOTLESS
            .replace("@UID@", &uid.to_string())
            .replace("@GID@", &gid.to_string())
    } else {
        DEFAULT.to_string()
    }
}

/// Writes `<bundle>/config.json` (the current directory without `--bundle`); refuses
/// to overwrite one, with runc's message.
pub fn spec(args: &liboci_cli::Spec) -> Result<i32> {
    let bundle = args.bundle.clone().unwrap_or_else(|| PathBuf::from("."));
    write(&bundle, args.rootless)?;
    Ok(0)
}

fn write(bundle: &Path, rootless: bool) -> Result<()> {
    if !bundle.is_dir() {
        bail!(
            "{}: not a directory (the bundle must exist)",
            bundle.display()
        );
    }
    let path = bundle.join("config.json");
    if path.symlink_metadata().is_ok() {
        bail!("File config.json exists. Remove it first");
    }
    let doc = document(
        rootless,
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    std::fs::write(&path, doc).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_runcs_document() {
        let v: serde_json::Value = serde_json::from_str(&document(false, 0, 0)).unwrap();
        assert_eq!(v["ociVersion"], "1.0.2-dev");
        assert_eq!(v["process"]["terminal"], true);
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["hostname"], "runc");
        assert_eq!(v["linux"]["namespaces"].as_array().unwrap().len(), 5);
        // It parses as an OCI spec, and runvm accepts every key of it.
        let _: oci_spec::runtime::Spec = crate::spec::from_json(&document(false, 0, 0)).unwrap();
        assert!(!DEFAULT.ends_with('\n'));
        assert!(DEFAULT.starts_with("{\n\t\"ociVersion\""));
    }

    #[test]
    fn rootless_maps_root_to_the_caller() {
        let v: serde_json::Value = serde_json::from_str(&document(true, 1000, 1001)).unwrap();
        assert_eq!(v["linux"]["uidMappings"][0]["hostID"], 1000);
        assert_eq!(v["linux"]["gidMappings"][0]["hostID"], 1001);
        assert_eq!(v["linux"]["uidMappings"][0]["containerID"], 0);
        assert!(v["linux"].get("resources").is_none());
        let types: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["pid", "ipc", "uts", "mount", "user"]);
    }

    #[test]
    fn an_existing_config_is_not_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write(dir, false).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("config.json")).unwrap(),
            DEFAULT
        );
        let e = write(dir, false).unwrap_err().to_string();
        assert_eq!(e, "File config.json exists. Remove it first");
    }
}
