//! `list`: the containers under the state root, as a table or JSON.

use std::path::Path;

use anyhow::{bail, Result};

use crate::state::ContainerState;

pub fn list(root: &Path, args: &liboci_cli::List) -> Result<i32> {
    let mut states: Vec<ContainerState> = ContainerState::all(root).collect();
    states.sort_by(|a, b| a.id.cmp(&b.id));
    match args.format.as_str() {
        _ if args.quiet => states.iter().for_each(|s| println!("{}", s.id)),
        "json" => {
            let v: Vec<_> = states.iter().map(|s| s.oci_state(root)).collect();
            println!("{}", serde_json::to_string(&v)?);
        }
        "table" => {
            println!(
                "{:<20} {:<8} {:<10} {:<40} {:<32} OWNER",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            );
            for s in &states {
                let st = s.status(root);
                println!(
                    "{:<20} {:<8} {:<10} {:<40} {:<32} root",
                    s.id,
                    s.visible_pid(st),
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
