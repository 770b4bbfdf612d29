//! `state`: prints the OCI state of a container as JSON.

use std::path::PathBuf;

use anyhow::Result;

pub fn state(root: &Option<PathBuf>, id: &str) -> Result<i32> {
    let state = super::load(root, id)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&state.oci_state(&super::root_dir(root)))?
    );
    Ok(0)
}
