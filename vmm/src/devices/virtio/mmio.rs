//! virtio-mmio transport (placeholder, being written).
