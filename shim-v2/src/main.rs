//! `containerd-shim-runvm-v2`: containerd's shim v2 for runvm (runtime type
//! `io.containerd.runvm.v2`), one shim per container, speaking the task API over ttrpc.
//!
//! Each task call is done with the runvm command line beside the shim, as containerd's
//! runc shim does it with runc ([`runvm`]); the container's stdio are containerd's FIFOs
//! ([`stdio`]), or a terminal whose master runvm hands over a console socket
//! ([`console`]); OOM kills come from the container's host cgroup ([`oom`]); runtime
//! options are checked in [`options`]; [`service`] keeps the processes, waits for their
//! exits and publishes the task events. Not built yet, and refused with an error that
//! says so: pods (one VM per Kubernetes pod) and checkpoints.

mod console;
mod oom;
mod options;
mod runvm;
mod service;
mod stdio;

fn main() {
    containerd_shim::run::<service::Shim>(service::RUNTIME_ID, None)
}
