//! Which virtio and vhost-user protocol features the frontend offers, and the outcome of a
//! negotiation.

use vhost::vhost_user::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};

/// `VIRTIO_RING_F_INDIRECT_DESC` (bit 28).
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// `VIRTIO_RING_F_EVENT_IDX` (bit 29).
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// `VHOST_USER_F_PROTOCOL_FEATURES` (bit 30).
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
/// `VIRTIO_F_VERSION_1` (bit 32).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_F_IN_ORDER` (bit 35).
pub const VIRTIO_F_IN_ORDER: u64 = 1 << 35;
/// Device-type-specific feature bits 0..=23. CH's generic vhost-user device never offers them.
pub const DEVICE_SPECIFIC_FEATURES: u64 = (1 << 24) - 1;

/// Virtio features the frontend cannot work without: a modern device, and protocol features
/// (needed for `SET_VRING_ENABLE`, config space and MQ).
pub const REQUIRED_VIRTIO_FEATURES: u64 = VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES;

/// Protocol features the frontend always offers: CH's generic device set minus the ones this
/// frontend does not implement (LOG_SHMFD, DEVICE_STATE, BACKEND_REQ) and INFLIGHT_SHMFD,
/// which [`offered_protocol_features`] adds when asked to.
pub const OFFERED_PROTOCOL_FEATURES: VhostUserProtocolFeatures = VhostUserProtocolFeatures::CONFIG
    .union(VhostUserProtocolFeatures::MQ)
    .union(VhostUserProtocolFeatures::REPLY_ACK)
    .union(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);

/// What the frontend offers: [`OFFERED_PROTOCOL_FEATURES`], plus INFLIGHT_SHMFD with `inflight`
/// (it then keeps the backend's inflight region across reconnects, as QEMU's vhost-user-blk).
pub const fn offered_protocol_features(inflight: bool) -> VhostUserProtocolFeatures {
    if inflight {
        OFFERED_PROTOCOL_FEATURES.union(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
    } else {
        OFFERED_PROTOCOL_FEATURES
    }
}

/// Virtio features the frontend offers: the subset of CH's `DEFAULT_VIRTIO_FEATURES` that the
/// in-process split-ring driver honours. Like CH's generic device, no device-specific bit
/// (0..=23) is ever offered, whatever the backend advertises.
///
/// Left out of CH's set: INDIRECT_DESC (the driver posts direct chains), IN_ORDER (would change
/// what a reconnect replays, see `VhostUserDevice::reconnect`), ORDER_PLATFORM and
/// NOTIFICATION_DATA (hardware-facing) and LOG_ALL (live migration).
pub const fn offered_virtio_features(event_idx: bool) -> u64 {
    let base = VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES;
    if event_idx { base | VIRTIO_RING_F_EVENT_IDX } else { base }
}

/// What the handshake settled on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Virtio features the backend offered (`GET_FEATURES`).
    pub backend_features: u64,
    /// Virtio features sent in `SET_FEATURES`. The guest driver must follow these (e.g. use
    /// `used_event`/`avail_event` only when EVENT_IDX is set).
    pub acked_features: u64,
    /// Protocol features the backend offered (`GET_PROTOCOL_FEATURES`).
    pub backend_protocol_features: VhostUserProtocolFeatures,
    /// Protocol features sent in `SET_PROTOCOL_FEATURES`.
    pub acked_protocol_features: VhostUserProtocolFeatures,
    /// The backend's queue count (`GET_QUEUE_NUM`), when MQ was negotiated.
    pub backend_queues: Option<u64>,
}

impl Negotiated {
    /// Whether `VIRTIO_RING_F_EVENT_IDX` was acked.
    pub fn event_idx(&self) -> bool {
        self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0
    }

    /// Whether `features` were all acked.
    pub fn has_features(&self, features: u64) -> bool {
        self.acked_features & features == features
    }

    /// Whether the protocol features were all acked.
    pub fn has_protocol_features(&self, features: VhostUserProtocolFeatures) -> bool {
        self.acked_protocol_features.contains(features)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_offers_device_specific_bits() {
        assert_eq!(offered_virtio_features(true) & DEVICE_SPECIFIC_FEATURES, 0);
        assert_eq!(offered_virtio_features(false) & DEVICE_SPECIFIC_FEATURES, 0);
    }

    #[test]
    fn event_idx_is_optional() {
        assert_ne!(offered_virtio_features(true) & VIRTIO_RING_F_EVENT_IDX, 0);
        assert_eq!(offered_virtio_features(false) & VIRTIO_RING_F_EVENT_IDX, 0);
        assert_eq!(offered_virtio_features(false) & REQUIRED_VIRTIO_FEATURES, REQUIRED_VIRTIO_FEATURES);
    }

    #[test]
    fn protocol_offer_excludes_unimplemented_features() {
        for f in [
            VhostUserProtocolFeatures::INFLIGHT_SHMFD,
            VhostUserProtocolFeatures::LOG_SHMFD,
            VhostUserProtocolFeatures::BACKEND_REQ,
            VhostUserProtocolFeatures::DEVICE_STATE,
        ] {
            assert!(!OFFERED_PROTOCOL_FEATURES.intersects(f));
        }
    }
}
