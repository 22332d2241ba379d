//! Wire layouts of the ring: the control page, the packet descriptor and the type-specific
//! headers of transfer-page and GPA-direct packets (vmbus-core.md §7.2–§7.5, devices.md §0).

#![forbid(unsafe_code)]

use static_assertions::const_assert_eq;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of each ring's control page; the data area follows it.
pub const CONTROL_PAGE_SIZE: usize = 4096;
/// Size of the packet descriptor at the start of every packet.
pub const DESCRIPTOR_SIZE: usize = 16;
/// Size of the trailer after every packet (the writer's old write index in the high half).
pub const TRAILER_SIZE: usize = 8;
/// Bit 0 of the control page's feature bits: the ring's writer fills pending-send-size when
/// blocked and honours the peer's pending-send-size on the opposite ring.
pub const FEATURE_PENDING_SEND_SIZE: u32 = 1;
/// Descriptor flag bit 0: the sender asks for a completion (type 11) with the same
/// transaction id.
pub const FLAG_COMPLETION_REQUESTED: u16 = 1;

/// The ring control page as it sits in memory (4 KiB). The endpoints access it through
/// [`ControlPage`](super::ControlPage) atomics; this plain struct documents and asserts the
/// offsets.
#[derive(Debug, Clone, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ControlPageLayout {
    /// 0x00: next byte offset in the data area the writer will fill ("in").
    pub write_index: u32,
    /// 0x04: next byte offset in the data area the reader will consume ("out").
    pub read_index: u32,
    /// 0x08: non-zero = the reader asks the writer not to signal.
    pub interrupt_mask: u32,
    /// 0x0C: free bytes the blocked writer waits for (0 = not waiting).
    pub pending_send_size: u32,
    /// 0x10: reserved.
    pub reserved1: [u32; 12],
    /// 0x40: feature bits, bit 0 = pending-send-size supported.
    pub feature_bits: u32,
    /// 0x44: reserved up to the end of the page.
    pub reserved2: [u32; 1007],
}

const_assert_eq!(size_of::<ControlPageLayout>(), CONTROL_PAGE_SIZE);
const_assert_eq!(core::mem::offset_of!(ControlPageLayout, write_index), 0x00);
const_assert_eq!(core::mem::offset_of!(ControlPageLayout, read_index), 0x04);
const_assert_eq!(
    core::mem::offset_of!(ControlPageLayout, interrupt_mask),
    0x08
);
const_assert_eq!(
    core::mem::offset_of!(ControlPageLayout, pending_send_size),
    0x0C
);
const_assert_eq!(core::mem::offset_of!(ControlPageLayout, feature_bits), 0x40);

/// The VMBus packet type, an open set: values this crate does not know stay representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(transparent)]
pub struct PacketType(pub u16);

impl PacketType {
    /// 0x0, never valid on the wire.
    pub const INVALID: Self = Self(0x0);
    /// 0x1, legacy.
    pub const SYNCH: Self = Self(0x1);
    /// 0x2, legacy.
    pub const ADD_TRANSFER_PAGE_SET: Self = Self(0x2);
    /// 0x3, legacy.
    pub const REMOVE_TRANSFER_PAGE_SET: Self = Self(0x3);
    /// 0x4, legacy.
    pub const ESTABLISH_GPADL: Self = Self(0x4);
    /// 0x5, legacy.
    pub const TEARDOWN_GPADL: Self = Self(0x5);
    /// 0x6: payload inside the ring.
    pub const DATA_IN_BAND: Self = Self(0x6);
    /// 0x7: payload in a transfer page set shared earlier (host→guest receive path).
    pub const DATA_USING_TRANSFER_PAGES: Self = Self(0x7);
    /// 0x8, legacy.
    pub const DATA_USING_GPADL: Self = Self(0x8);
    /// 0x9: payload in guest pages named by GPA ranges.
    pub const DATA_USING_GPA_DIRECT: Self = Self(0x9);
    /// 0xA: cancel request.
    pub const CANCEL_REQUEST: Self = Self(0xA);
    /// 0xB: completion of a request that had flag bit 0 set.
    pub const COMPLETION: Self = Self(0xB);
    /// 0xC, legacy.
    pub const DATA_USING_ADDITIONAL_PACKETS: Self = Self(0xC);
    /// 0xD, legacy.
    pub const ADDITIONAL_DATA: Self = Self(0xD);
}

/// The 16-byte descriptor at the start of every packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PacketDescriptor {
    /// Packet type.
    pub packet_type: PacketType,
    /// Offset of the payload from the packet start, in 8-byte units (≥ 2).
    pub data_offset8: u16,
    /// Packet length without the trailer, in 8-byte units (≥ `data_offset8`).
    pub length8: u16,
    /// Bit 0 = completion requested.
    pub flags: u16,
    /// Transaction id, echoed in the completion.
    pub transaction_id: u64,
}

const_assert_eq!(size_of::<PacketDescriptor>(), DESCRIPTOR_SIZE);
const_assert_eq!(core::mem::offset_of!(PacketDescriptor, data_offset8), 2);
const_assert_eq!(core::mem::offset_of!(PacketDescriptor, length8), 4);
const_assert_eq!(core::mem::offset_of!(PacketDescriptor, flags), 6);
const_assert_eq!(core::mem::offset_of!(PacketDescriptor, transaction_id), 8);

/// Header of a transfer-page packet (type 7) after the descriptor; `range_count`
/// [`TransferPageRange`]s follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TransferPageHeader {
    /// Transfer page set id (the buffer the device protocol registered, e.g. netvsc receive).
    pub transfer_page_set_id: u16,
    /// Sender owns the set.
    pub sender_owns_set: u8,
    /// Reserved; hosts may leave garbage here.
    pub reserved: u8,
    /// Number of ranges that follow.
    pub range_count: u32,
}

const_assert_eq!(size_of::<TransferPageHeader>(), 8);
const_assert_eq!(
    DESCRIPTOR_SIZE + core::mem::offset_of!(TransferPageHeader, range_count),
    20
);

/// One range of a transfer-page packet: bytes inside the transfer page set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TransferPageRange {
    /// Length of the range in bytes.
    pub byte_count: u32,
    /// Offset of the range from the start of the transfer page set.
    pub byte_offset: u32,
}

const_assert_eq!(size_of::<TransferPageRange>(), 8);

/// Header of a GPA-direct packet (type 9) after the descriptor; `range_count` GPA ranges
/// follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GpaDirectHeader {
    /// Reserved (0).
    pub reserved: u32,
    /// Number of GPA ranges that follow (≥ 1).
    pub range_count: u32,
}

const_assert_eq!(size_of::<GpaDirectHeader>(), 8);
const_assert_eq!(
    DESCRIPTOR_SIZE + core::mem::offset_of!(GpaDirectHeader, range_count),
    20
);

/// Fixed part of one GPA range; one u64 page frame number per 4 KiB page spanned by
/// `[byte_offset, byte_offset + byte_count)` follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GpaRangeHeader {
    /// Length of the range in bytes.
    pub byte_count: u32,
    /// Offset of the range into its first page (< 4096).
    pub byte_offset: u32,
}

const_assert_eq!(size_of::<GpaRangeHeader>(), 8);

/// Number of 4 KiB pages spanned by `byte_count` bytes starting `byte_offset` into the first
/// page, i.e. the number of PFNs a GPA range carries.
pub const fn gpa_range_pages(byte_offset: u32, byte_count: u32) -> u64 {
    (byte_offset as u64 + byte_count as u64).div_ceil(4096)
}
