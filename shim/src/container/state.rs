//! `state`: prints the OCI state of a container as JSON.

use std::path::Path;

use anyhow::Result;

pub fn state(root: &Path, args: &liboci_cli::State) -> Result<i32> {
    let state = super::load(root, &args.container_id)?;
    println!("{}", serde_json::to_string_pretty(&state.oci_state(root))?);
    Ok(0)
}
