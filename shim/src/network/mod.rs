//! The container's network on the host side.
//!
//! - [`namespace`]: what the spec's `linux.namespaces` asks for (a network namespace to
//!   join by path, or a new one), the decisions for the modes runvm cannot honour
//!   (`--network host`, `--pid host`, `--ipc host`, a network namespace in use by other
//!   processes such as `--network container:X`), and the monitor joining the namespace at
//!   `create` (before any thread, so every thread and the cleanup guard live in it);
//! - [`tap`]: creating a TAP in the namespace;
//! - [`mirror`]: at `start`, reading every interface of the namespace and mirroring each
//!   into a TAP with tc (both ways), what the guest must configure, and the teardown on
//!   every path (a record file lets the cleanup guard undo it after a SIGKILL);
//! - [`dns`]: the host end of the guest's DNS forwarder: queries relayed over vsock are
//!   sent from the namespace to its loopback resolver (Docker's `127.0.0.11`).

pub mod dns;
pub mod mirror;
pub mod namespace;
pub mod tap;

pub use mirror::Mirror;
pub use namespace::NetworkMode;

/// Errors setting up the container's network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{0}")]
    Refused(String),
    #[error("network namespace {path}: {message}")]
    Namespace { path: String, message: String },
    #[error("linux.namespaces: the {typ} namespace path {path} {problem}")]
    NamespacePath {
        typ: &'static str,
        path: String,
        problem: String,
    },
    #[error("cannot read the container's network namespace: {0}")]
    Read(runvm_netlink::Error),
    #[error("cannot mirror interface {name} into the guest: {message}")]
    Mirror { name: String, message: String },
    #[error("cannot create a TAP device in the container's network namespace: {0}")]
    Tap(std::io::Error),
}
