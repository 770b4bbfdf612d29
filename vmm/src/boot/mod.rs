//! Everything that puts a guest in its boot state: the kernel and initramfs in memory,
//! the PVH start info, the MP table, and the vCPU registers.

pub mod cpu;
pub mod loader;
pub mod mptable;
