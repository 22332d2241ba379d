//! The device registry's plug-in points: what a device offers and how its model is called.

use vmbus_guest::protocol::{Guid, OfferFlags, USER_DEFINED_SIZE};

use super::{HostChannel, HostPacket};

/// What the host puts in a device's OFFERCHANNEL (vmbus-core §5.3, §5.7). The relid, connection
/// id and monitor id are assigned by the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceOffer {
    /// Interface type = device class GUID (@8).
    pub interface_type: Guid,
    /// Interface instance = unique device id (@24); sub-channels repeat the primary's.
    pub instance: Guid,
    /// Sub-channel index (@180): 0 = primary.
    pub sub_channel_index: u16,
    /// Offer flags (@56), e.g. [`OfferFlags::REQUEST_MONITORED_NOTIFICATION`].
    pub flags: OfferFlags,
    /// Allocate a monitor id (MNF) for the channel; also implied by flag 0x400.
    pub monitor: bool,
    /// MMIO space the device needs, in MiB (@58).
    pub mmio_megabytes: u16,
    /// Device-specific user-defined area (@60).
    pub user_defined: [u8; USER_DEFINED_SIZE],
}

impl DeviceOffer {
    /// A primary-channel offer with no flags, no monitor and a zero user-defined area.
    pub fn new(interface_type: Guid, instance: Guid) -> Self {
        Self {
            interface_type,
            instance,
            sub_channel_index: 0,
            flags: OfferFlags::empty(),
            monitor: false,
            mmio_megabytes: 0,
            user_defined: [0; USER_DEFINED_SIZE],
        }
    }

    /// Whether the host allocates a monitor id for this offer.
    pub fn wants_monitor(&self) -> bool {
        self.monitor
            || self
                .flags
                .contains(OfferFlags::REQUEST_MONITORED_NOTIFICATION)
    }
}

/// A device model (VSP) behind one channel. Called from [`super::MockVmbusHost::step`].
pub trait DeviceModel: Send {
    /// The guest opened the channel; the rings are ready.
    fn on_open(&mut self, ch: &mut HostChannel) {
        let _ = ch;
    }

    /// The guest wrote `packet` into its outbound ring.
    fn on_packet(&mut self, ch: &mut HostChannel, packet: &HostPacket);

    /// Called on every step while the channel is open (time-driven devices, unsolicited
    /// packets).
    fn poll(&mut self, ch: &mut HostChannel) {
        let _ = ch;
    }

    /// The channel was closed (CLOSECHANNEL, rescind, UNLOAD).
    fn on_close(&mut self) {}
}
