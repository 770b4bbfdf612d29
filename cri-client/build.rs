//! Generates the CRI (`runtime.v1`) client from Kubernetes' `api.proto`, whose path is in
//! `RUNVM_CRI_PROTO` (`cargo xtask cri-smoke` and `cargo xtask cri-crictl` set it after
//! fetching Debian's `golang-github-kubernetes-cri-api` source). Nothing is vendored: the
//! proto is compiled with `protox` (pure Rust, no `protoc`) and handed to tonic-build as a
//! file descriptor set.
//!
//! `api.proto` imports gogoproto only for file-level Go code-generation options
//! (`option (gogoproto.…_all) = …;`), which mean nothing to a Rust client and whose proto is
//! not in the tarball; those lines are dropped before compiling, and any other mention of
//! gogoproto is a build error (it would mean the proto changed in a way this does not know).

use std::path::{Path, PathBuf};

const PROTO_ENV: &str = "RUNVM_CRI_PROTO";

fn main() {
    if let Err(e) = generate() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn generate() -> Result<(), String> {
    println!("cargo:rerun-if-env-changed={PROTO_ENV}");
    let proto = std::env::var_os(PROTO_ENV)
        .map(PathBuf::from)
        .ok_or_else(|| {
            format!(
                "{PROTO_ENV} is not set: it must name Kubernetes' CRI api.proto \
             (pkg/apis/runtime/v1/api.proto of cri-api). `cargo xtask cri-crictl` fetches \
             it (cached as ~/.cache/runvm/cri-api/<version>/api.proto) and builds with \
             {PROTO_ENV} set; for other cargo commands, set {PROTO_ENV} to that file"
            )
        })?;
    println!("cargo:rerun-if-changed={}", proto.display());
    let text = std::fs::read_to_string(&proto)
        .map_err(|e| format!("{PROTO_ENV}={}: cannot read it: {e}", proto.display()))?;
    let cleaned = drop_gogoproto(&text).map_err(|e| format!("{}: {e}", proto.display()))?;

    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    let include = out.join("cri-proto");
    std::fs::create_dir_all(&include)
        .map_err(|e| format!("creating {}: {e}", include.display()))?;
    let cleaned_path = include.join("api.proto");
    std::fs::write(&cleaned_path, cleaned)
        .map_err(|e| format!("writing {}: {e}", cleaned_path.display()))?;

    let fds = protox::compile([Path::new("api.proto")], [&include])
        .map_err(|e| format!("compiling {} with protox: {e}", proto.display()))?;
    tonic_build::configure()
        .build_server(false)
        .build_transport(true)
        .type_attribute(
            ".runtime.v1",
            "#[derive(serde::Serialize, serde::Deserialize)]",
        )
        .message_attribute(".runtime.v1", "#[serde(default)]")
        .compile_fds(fds)
        .map_err(|e| format!("generating the CRI client from {}: {e}", proto.display()))
}

/// `text` without the gogoproto import and its `option (gogoproto.…) = …;` lines; an error
/// if gogoproto is used anywhere else.
fn drop_gogoproto(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        let is_import = t.starts_with("import ") && t.contains("gogoproto/gogo.proto");
        let is_file_option = t.starts_with("option (gogoproto.") && t.ends_with(';');
        if is_import || is_file_option {
            out.push('\n'); // keep line numbers for protox's messages
            continue;
        }
        if t.contains("gogoproto") {
            return Err(format!(
                "line {}: gogoproto is used beyond file-level options ({t}); \
                 the CRI client build does not know how to drop it",
                n + 1
            ));
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}
