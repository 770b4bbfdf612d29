//! Tells the tests whether a virtiofsd binary to test against was given
//! (`RUNVM_VIRTIOFSD`, see `cargo xtask virtiofsd`): the virtio-fs integration test runs
//! then, and is ignored otherwise.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(virtiofsd)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=RUNVM_VIRTIOFSD");
    if std::env::var_os("RUNVM_VIRTIOFSD").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=virtiofsd");
    }
}
