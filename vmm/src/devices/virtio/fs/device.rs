//! The virtio-fs device: [`VirtioDevice`] for the transport, `MutEventSubscriber` for the
//! event loop.
//!
//! Wiring (VMM core):
//! ```ignore
//! let backend = VhostUserBackend::connect(&config.socket, NUM_QUEUES)?;
//! let fs = Arc::new(Mutex::new(Fs::new(&config.tag, backend, on_failure)?));
//! // `init` registers the backend's socket, watched for hang-ups only.
//! event_manager.add_subscriber(fs.clone());
//! // The transport (`Arc<Mutex<dyn VirtioDevice>>`) registers the queue eventfds as KVM
//! // ioeventfds and its interrupt eventfd as a KVM irqfd; activation hands both to the
//! // backend.
//! ```
//! The device never reads its queue eventfds or touches its queues: the backend does.
//! Activation and reset run on the vCPU thread that wrote `Status`, and talk to the backend
//! there (each request bounded by [`REPLY_TIMEOUT`](super::vhost_user::REPLY_TIMEOUT)).

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::error;
use virtio_queue::Queue;

use super::super::state::VirtioState;
use super::super::{
    read_config_space, ActivateError, GuestMemory, IrqTrigger, VirtioDevice, TYPE_FS,
};
use super::vhost_user::{VhostUserBackend, VhostUserError, SUPPORTED_FEATURES};
use super::{BackendFailed, FsError, GUEST_LOG, NUM_QUEUES, QUEUE_SIZE, TAG_LEN};

/// Size of the config space: `u8 tag[36]`, `le32 num_request_queues`.
const CONFIG_SIZE: usize = TAG_LEN + 4;

/// The virtio-fs device of one share.
pub struct Fs {
    virtio: VirtioState,
    tag: String,
    config: [u8; CONFIG_SIZE],
    backend: VhostUserBackend,
    on_failure: BackendFailed,
    /// The backend failed and that was reported: the share is gone for good.
    failed: bool,
}

impl Fs {
    /// The device for the share the guest mounts as `tag`, served by `backend` (connected
    /// and negotiated). It offers the driver what the backend offers among
    /// [`SUPPORTED_FEATURES`]; `on_failure` is told if the backend fails or goes away.
    pub fn new(
        tag: &str,
        backend: VhostUserBackend,
        on_failure: BackendFailed,
    ) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN || tag.contains('\0') {
            return Err(FsError::InvalidTag(tag.to_string()));
        }
        let features = backend.features() & SUPPORTED_FEATURES;
        let virtio = VirtioState::new(&GUEST_LOG, features, &[QUEUE_SIZE; NUM_QUEUES])
            .map_err(FsError::EventFd)?;
        Ok(Self {
            virtio,
            tag: tag.to_string(),
            config: config_space(tag),
            backend,
            on_failure,
            failed: false,
        })
    }

    /// The tag the guest mounts the share by.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Whether the backend failed (the failure was reported; the share is gone).
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// Ends the connection to the backend on purpose (the share is being removed): the
    /// hang-up that follows is not a failure and is not reported.
    pub fn disconnect(&mut self) {
        self.failed = true;
        self.backend.disconnect();
    }

    /// Reports the backend's failure, the first time.
    fn fail(&mut self, what: std::fmt::Arguments) {
        if self.failed {
            return;
        }
        self.failed = true;
        let message = format!(
            "the file-system share {:?} is gone: its virtiofsd {what}",
            self.tag
        );
        error!("virtio-fs: {message}");
        (self.on_failure)(message);
    }
}

/// `tag` NUL-padded to [`TAG_LEN`] bytes (not NUL-terminated when it fills them), then
/// one request queue.
fn config_space(tag: &str) -> [u8; CONFIG_SIZE] {
    let mut config = [0u8; CONFIG_SIZE];
    config[..tag.len()].copy_from_slice(tag.as_bytes());
    config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
    config
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn state(&self) -> &VirtioState {
        &self.virtio
    }

    fn state_mut(&mut self) -> &mut VirtioState {
        &mut self.virtio
    }

    /// Config space (virtio 1.x, 5.11.4): the tag, then `num_request_queues` = 1.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.config, offset, data);
    }

    /// The backend interrupts the guest itself (it writes the irqfd).
    fn interrupts_guest_directly(&self) -> bool {
        true
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<Queue>,
        irq: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        if self.failed {
            return Err(ActivateError::VhostUser(VhostUserError::Broken));
        }
        self.virtio.activate(mem, queues, irq)?;
        let acked = self.virtio.acked_features();
        let result = match self.virtio.active() {
            Some(active) => self.backend.activate(
                acked,
                &active.mem,
                &active.queues,
                self.virtio.queue_events(),
                active.irq.eventfd(),
            ),
            None => Err(VhostUserError::Broken),
        };
        if let Err(e) = result {
            self.virtio.reset();
            self.fail(format_args!(
                "failed when the guest activated the device: {e}"
            ));
            return Err(ActivateError::VhostUser(e));
        }
        Ok(())
    }

    fn reset(&mut self) -> bool {
        if !self.failed {
            if let Err(e) = self.backend.deactivate(NUM_QUEUES) {
                self.fail(format_args!("failed when the guest reset the device: {e}"));
            }
        }
        self.virtio.reset();
        true
    }
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        // Hang-ups and errors only: the replies on this socket are the frontend's to read.
        let watch = Events::new(self.backend.socket(), EventSet::READ_HANG_UP);
        if let Err(e) = ops.add(watch) {
            error!(
                "virtio-fs {:?}: cannot watch the virtiofsd connection: {e:?}",
                self.tag
            );
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        // The hang-up stays signalled: stop watching, or the loop would spin on it.
        if let Err(e) = ops.remove(events) {
            error!(
                "virtio-fs {:?}: cannot stop watching the virtiofsd connection: {e:?}",
                self.tag
            );
        }
        // After a failure we shut the connection down ourselves; that was reported then.
        self.fail(format_args!(
            "closed its connection (it exited or was killed; events {:?})",
            events.event_set()
        ));
    }
}

#[cfg(test)]
mod fuzz_tests;
