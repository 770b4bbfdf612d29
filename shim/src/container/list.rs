//! `list`: the containers under the state root, as a table or JSON.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::state::ContainerState;

pub fn list(root: &Option<PathBuf>, format: &str, quiet: bool) -> Result<i32> {
    let root = super::root_dir(root);
    let mut states: Vec<ContainerState> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| ContainerState::load(&root, &e.file_name().to_string_lossy()).ok())
        .collect();
    states.sort_by(|a, b| a.id.cmp(&b.id));
    match format {
        _ if quiet => states.iter().for_each(|s| println!("{}", s.id)),
        "json" => {
            let v: Vec<_> = states.iter().map(|s| s.oci_state(&root)).collect();
            println!("{}", serde_json::to_string(&v)?);
        }
        "table" => {
            println!(
                "{:<20} {:<8} {:<10} {:<40} {:<32} OWNER",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            );
            for s in &states {
                let st = s.status(&root);
                let pid = if st == crate::state::Status::Stopped {
                    0
                } else {
                    s.pid
                };
                println!(
                    "{:<20} {:<8} {:<10} {:<40} {:<32} root",
                    s.id,
                    pid,
                    st.as_str(),
                    s.bundle.display(),
                    s.created
                );
            }
        }
        other => bail!("invalid format option {other:?}: use table or json"),
    }
    Ok(0)
}
