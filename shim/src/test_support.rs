//! What unit tests need of the machine they run on. A test whose precondition is missing
//! fails, naming what to install or how to run it: it never passes without having run.

/// Panics unless `tool` can be run (from `package`).
#[track_caller]
pub fn require_tool(tool: &str, package: &str) {
    if std::process::Command::new(tool)
        .arg("--help")
        .output()
        .is_err()
    {
        panic!("needs {tool} (apt-get install {package})");
    }
}

/// Panics unless this process runs as root; `why` says what needs it.
#[track_caller]
pub fn require_root(why: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root ({why}): run the unit tests as root"
    );
}
