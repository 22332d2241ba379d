//! Wire layouts of the hypercall parameter blocks this crate issues.

use static_assertions::const_assert_eq;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Largest message payload HvCallPostMessage carries.
pub const MAX_MESSAGE_PAYLOAD: usize = 240;

/// HvCallPostMessage input block (256 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PostMessageInput {
    /// Connection id (bits 23:0; bits 31:24 zero).
    pub connection_id: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Message type: non-zero, bit 31 clear (VMBus uses 1).
    pub message_type: u32,
    /// Payload size in bytes (≤ 240).
    pub payload_size: u32,
    /// Payload; only `payload_size` bytes are delivered.
    pub payload: [u8; MAX_MESSAGE_PAYLOAD],
}
const_assert_eq!(size_of::<PostMessageInput>(), 256);
const_assert_eq!(core::mem::offset_of!(PostMessageInput, message_type), 8);
const_assert_eq!(core::mem::offset_of!(PostMessageInput, payload), 16);

/// HvCallSignalEvent input block (8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SignalEventInput {
    /// Connection id.
    pub connection_id: u32,
    /// Flag number, relative to the port's base flag.
    pub flag_number: u16,
    /// Reserved, zero.
    pub reserved: u16,
}
const_assert_eq!(size_of::<SignalEventInput>(), 8);

/// HvCallFlushVirtualAddressSpace input, also the fixed header of HvCallFlushVirtualAddressList.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FlushVirtualAddressSpaceInput {
    /// Address space (CR3 value) to flush; ignored with [`super::FlushFlags::ALL_VIRTUAL_ADDRESS_SPACES`].
    pub address_space: u64,
    /// HV_FLUSH_* flags.
    pub flags: u64,
    /// Virtual processors to flush (bit n = VP n); ignored with ALL_PROCESSORS.
    pub processor_mask: u64,
}
const_assert_eq!(size_of::<FlushVirtualAddressSpaceInput>(), 24);

/// HvCallSendSyntheticClusterIpi input (16 bytes; fits a fast call).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SendSyntheticClusterIpiInput {
    /// Interrupt vector (0x10..=0xFF).
    pub vector: u32,
    /// Target VTL (0 for an ordinary guest).
    pub target_vtl: u8,
    /// Reserved, zero.
    pub reserved: [u8; 3],
    /// Target virtual processors (bit n = VP n).
    pub processor_mask: u64,
}
const_assert_eq!(size_of::<SendSyntheticClusterIpiInput>(), 16);
const_assert_eq!(
    core::mem::offset_of!(SendSyntheticClusterIpiInput, processor_mask),
    8
);
