//! OFFERCHANNEL (1, H→G): the host offers a device channel (vmbus-core §5.3, §5.7).

#![forbid(unsafe_code)]

use super::{Guid, MessageHeader, OfferFlags};
use core::mem::{offset_of, size_of};
use static_assertions::const_assert_eq;
use zerocopy::byteorder::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of the device-specific user-defined area at offer @60.
pub const USER_DEFINED_SIZE: usize = 120;
/// Size of OFFERCHANNEL from version 1.1 on.
pub const OFFER_CHANNEL_SIZE: usize = 196;
/// Size of OFFERCHANNEL in version 0.13 (no dedicated-interrupt flag, no connection id).
pub const OFFER_CHANNEL_SIZE_V0_13: usize = 190;

/// OFFERCHANNEL (1, H→G), 196 bytes. The two reserved u64s are byte-order wrappers of
/// alignment 1 so the struct stays 196 bytes with no trailing padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct OfferChannel {
    /// Header (OFFERCHANNEL).
    pub header: MessageHeader,
    /// @8: interface type = device class ([`super::DeviceClass`]); hvsock: service id.
    pub interface_type: Guid,
    /// @24: interface instance = unique device id; hvsock: endpoint id.
    pub interface_instance: Guid,
    /// @40: reserved (may be non-zero before 2.4).
    pub reserved1: U64,
    /// @48: reserved.
    pub reserved2: U64,
    /// @56: [`OfferFlags`] bits; read with [`Self::flags`].
    pub flags: u16,
    /// @58: MMIO space the device needs, in MiB.
    pub mmio_megabytes: u16,
    /// @60: user-defined area (pipe / hvsock parameters or device specific).
    pub user_defined: [u8; USER_DEFINED_SIZE],
    /// @180: sub-channel index (≥ 2.4; 0 = primary channel).
    pub subchannel_index: u16,
    /// @182: optional extra MMIO space in MiB.
    pub mmio_megabytes_optional: u16,
    /// @184: child relid, the channel id used in every later message and as event flag.
    pub relid: u32,
    /// @188: monitor id (valid only if `monitor_allocated` bit 0 is set).
    pub monitor_id: u8,
    /// @189: bit 0 = a monitor id is allocated (MNF possible).
    pub monitor_allocated: u8,
    /// @190 (≥ 1.1): bit 0 = dedicated interrupt.
    pub is_dedicated_interrupt: u16,
    /// @192 (≥ 1.1): connection id for guest→host signalling (SignalEvent).
    pub connection_id: u32,
}
const_assert_eq!(size_of::<OfferChannel>(), OFFER_CHANNEL_SIZE);
const_assert_eq!(offset_of!(OfferChannel, interface_type), 8);
const_assert_eq!(offset_of!(OfferChannel, interface_instance), 24);
const_assert_eq!(offset_of!(OfferChannel, reserved1), 40);
const_assert_eq!(offset_of!(OfferChannel, reserved2), 48);
const_assert_eq!(offset_of!(OfferChannel, flags), 56);
const_assert_eq!(offset_of!(OfferChannel, mmio_megabytes), 58);
const_assert_eq!(offset_of!(OfferChannel, user_defined), 60);
const_assert_eq!(offset_of!(OfferChannel, subchannel_index), 180);
const_assert_eq!(offset_of!(OfferChannel, mmio_megabytes_optional), 182);
const_assert_eq!(offset_of!(OfferChannel, relid), 184);
const_assert_eq!(offset_of!(OfferChannel, monitor_id), 188);
const_assert_eq!(offset_of!(OfferChannel, monitor_allocated), 189);
const_assert_eq!(offset_of!(OfferChannel, is_dedicated_interrupt), 190);
const_assert_eq!(offset_of!(OfferChannel, connection_id), 192);
const_assert_eq!(
    offset_of!(OfferChannel, is_dedicated_interrupt),
    OFFER_CHANNEL_SIZE_V0_13
);

impl OfferChannel {
    /// Offer flags, unknown bits kept.
    pub const fn flags(&self) -> OfferFlags {
        OfferFlags::from_bits_retain(self.flags)
    }

    /// Whether the host allocated a monitor id (MNF signalling possible).
    pub const fn has_monitor(&self) -> bool {
        self.monitor_allocated & 1 != 0
    }

    /// Whether the channel has a dedicated interrupt (≥ 1.1).
    pub const fn dedicated_interrupt(&self) -> bool {
        self.is_dedicated_interrupt & 1 != 0
    }

    /// Whether this is a hvsock offer (TLNPI provider flag).
    pub const fn is_hvsock(&self) -> bool {
        self.flags().contains(OfferFlags::TLNPI_PROVIDER)
    }
}
