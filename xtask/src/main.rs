// TEMPORARY (wt-init): a minimal entry point so `cargo xtask initramfs` can be tried in
// this worktree. The xtask owner's main.rs replaces this; it only needs `mod initramfs;`
// and a subcommand calling `initramfs::initramfs()`.
mod initramfs;

fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("initramfs") => {
            initramfs::initramfs()?;
        }
        _ => eprintln!("usage: cargo xtask initramfs"),
    }
    Ok(())
}
