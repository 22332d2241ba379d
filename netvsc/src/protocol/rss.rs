//! Multi-queue (vRSS) wire formats (devices §2.6, §2.12, §2.13.3, §2.13.4, §2.15): the NDIS
//! RSS capability and parameter objects carried in OIDs, and the NVSP SEND_INDIRECTION_TABLE
//! header. Offsets are asserted against the tables of devices §2.13.

use core::mem::offset_of;
use static_assertions::const_assert_eq;
use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::NdisObjectHeader;

/// OID_GEN_RECEIVE_SCALE_CAPABILITIES (query): an [`NdisRssCapabilities`] object.
pub const OID_GEN_RECEIVE_SCALE_CAPABILITIES: u32 = 0x0001_0203;
/// OID_GEN_RECEIVE_SCALE_PARAMETERS (set): an [`NdisRssParameters`] object, its indirection
/// table and its key.
pub const OID_GEN_RECEIVE_SCALE_PARAMETERS: u32 = 0x0001_0204;

/// NDIS object type of the RSS capabilities.
pub const NDIS_OBJECT_TYPE_RSS_CAPABILITIES: u8 = 0x88;
/// NDIS object type of the RSS parameters.
pub const NDIS_OBJECT_TYPE_RSS_PARAMETERS: u8 = 0x89;
/// Revision of both objects Linux and OpenVMM use.
pub const NDIS_RSS_REVISION_2: u8 = 2;
/// Size of a revision-1 capabilities object (no indirection table entry count).
pub const NDIS_RSS_CAPS_SIZE_REVISION_1: u16 = 16;
/// Size of a revision-2 capabilities object (OpenVMM's answer).
pub const NDIS_RSS_CAPS_SIZE_REVISION_2: u16 = 18;
/// Size of the fixed part of the parameters object.
pub const NDIS_RSS_PARAMS_SIZE: u16 = 40;

/// NVSP SEND_INDIRECTION_TABLE entries (Linux `VRSS_SEND_TAB_SIZE`).
pub const SEND_TABLE_ENTRIES: usize = 16;
/// Most channels of one NIC, primary included (Linux `VRSS_CHANNEL_MAX`; OpenVMM's limit).
pub const MAX_CHANNELS: usize = 64;
/// Receive indirection table entries (Linux `ITAB_NUM`; OpenVMM reports 128).
pub const INDIRECTION_TABLE_ENTRIES: usize = 128;
/// Bytes of the Toeplitz secret key.
pub const RSS_KEY_SIZE: usize = 40;

/// Bits of the capabilities' `capabilities` field (devices §2.13.3).
pub mod rss_caps {
    /// Hash function Toeplitz (the low byte holds the hash functions).
    pub const HASH_FUNCTION_TOEPLITZ: u32 = 0x1;
    /// Mask of the hash-function bits.
    pub const HASH_FUNCTION_MASK: u32 = 0xFF;
    /// TCP over IPv4 (and IPv4) hashing.
    pub const HASH_TYPE_TCP_IPV4: u32 = 0x100;
    /// TCP over IPv6 (and IPv6) hashing.
    pub const HASH_TYPE_TCP_IPV6: u32 = 0x200;
    /// TCP over IPv6 with extension headers.
    pub const HASH_TYPE_TCP_IPV6_EX: u32 = 0x400;
    /// UDP over IPv4.
    pub const HASH_TYPE_UDP_IPV4: u32 = 0x800;
    /// UDP over IPv6.
    pub const HASH_TYPE_UDP_IPV6: u32 = 0x1000;
}

/// Bits of the parameters' `hash_information` field (devices §2.13.4).
pub mod rss_hash {
    /// Hash function Toeplitz.
    pub const FUNCTION_TOEPLITZ: u32 = 0x1;
    /// Mask of the hash-function bits (0 = RSS disabled on OpenVMM).
    pub const FUNCTION_MASK: u32 = 0xFF;
    /// IPv4 source and destination addresses (2-tuple).
    pub const IPV4: u32 = 0x100;
    /// TCP over IPv4: addresses and ports (4-tuple).
    pub const TCP_IPV4: u32 = 0x200;
    /// IPv6 source and destination addresses (2-tuple).
    pub const IPV6: u32 = 0x400;
    /// IPv6 with extension headers.
    pub const IPV6_EX: u32 = 0x800;
    /// TCP over IPv6: addresses and ports (4-tuple).
    pub const TCP_IPV6: u32 = 0x1000;
    /// TCP over IPv6 with extension headers.
    pub const TCP_IPV6_EX: u32 = 0x2000;
    /// UDP over IPv4: addresses and ports.
    pub const UDP_IPV4: u32 = 0x4000;
    /// UDP over IPv6: addresses and ports.
    pub const UDP_IPV6: u32 = 0x8000;
    /// What Linux enables: Toeplitz over IPv4, TCP/IPv4, IPv6 and TCP/IPv6.
    pub const LINUX_DEFAULT: u32 = FUNCTION_TOEPLITZ | IPV4 | TCP_IPV4 | IPV6 | TCP_IPV6;
}

/// Flags of the parameters object (devices §2.13.4).
pub mod rss_flags {
    /// The base CPU is unchanged.
    pub const BASE_CPU_UNCHANGED: u16 = 0x1;
    /// The hash information is unchanged.
    pub const HASH_INFO_UNCHANGED: u16 = 0x2;
    /// The indirection table is unchanged.
    pub const ITABLE_UNCHANGED: u16 = 0x4;
    /// The key is unchanged.
    pub const HASH_KEY_UNCHANGED: u16 = 0x8;
    /// RSS off: every frame on the primary channel.
    pub const DISABLE_RSS: u16 = 0x10;
}

/// NDIS_RECEIVE_SCALE_CAPABILITIES, revision 2 (devices §2.13.3); a revision-1 object ends
/// before `num_indirection_table_entries` (16 bytes).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct NdisRssCapabilities {
    /// @0: type 0x88.
    pub header: NdisObjectHeader,
    /// @4: [`rss_caps`] bits.
    pub capabilities: U32,
    /// @8: interrupt messages.
    pub num_interrupt_messages: U32,
    /// @12: receive queues the host can steer to.
    pub num_receive_queues: U32,
    /// @16: receive indirection table entries (revision 2).
    pub num_indirection_table_entries: U16,
}
const_assert_eq!(size_of::<NdisRssCapabilities>(), 18);
const_assert_eq!(offset_of!(NdisRssCapabilities, num_receive_queues), 12);
const_assert_eq!(
    offset_of!(NdisRssCapabilities, num_indirection_table_entries),
    16
);

/// NDIS_RECEIVE_SCALE_PARAMETERS, fixed part (devices §2.13.4: natural alignment, 40 bytes),
/// followed in the OID by the indirection table (u32 per entry) and the key.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct NdisRssParameters {
    /// @0: type 0x89, revision 2, size 40.
    pub header: NdisObjectHeader,
    /// @4: [`rss_flags`].
    pub flags: U16,
    /// @6: base CPU (0).
    pub base_cpu_number: U16,
    /// @8: [`rss_hash`] bits.
    pub hash_information: U32,
    /// @12: indirection table size in bytes.
    pub indirection_table_size: U16,
    /// @14: padding.
    pub pad0: U16,
    /// @16: indirection table offset from the object start.
    pub indirection_table_offset: U32,
    /// @20: key size in bytes (40).
    pub hash_secret_key_size: U16,
    /// @22: padding.
    pub pad1: U16,
    /// @24: key offset from the object start.
    pub hash_secret_key_offset: U32,
    /// @28: processor masks offset (0).
    pub processor_masks_offset: U32,
    /// @32: processor masks (0).
    pub number_of_processor_masks: U32,
    /// @36: processor mask entry size (0).
    pub processor_masks_entry_size: U32,
}
const_assert_eq!(size_of::<NdisRssParameters>(), 40);
const_assert_eq!(offset_of!(NdisRssParameters, hash_information), 8);
const_assert_eq!(offset_of!(NdisRssParameters, indirection_table_size), 12);
const_assert_eq!(offset_of!(NdisRssParameters, indirection_table_offset), 16);
const_assert_eq!(offset_of!(NdisRssParameters, hash_secret_key_size), 20);
const_assert_eq!(offset_of!(NdisRssParameters, hash_secret_key_offset), 24);
const_assert_eq!(
    offset_of!(NdisRssParameters, processor_masks_entry_size),
    36
);

/// Bytes of the whole parameters OID for a `entries`-entry table: fixed part, table, key.
pub const fn rss_parameters_len(entries: usize) -> usize {
    NDIS_RSS_PARAMS_SIZE as usize + entries * 4 + RSS_KEY_SIZE
}

/// SEND_INDIRECTION_TABLE (134) header, host → guest (devices §2.6); the table of `count`
/// u32 entries sits `offset` bytes from the start of the NVSP message.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct NvspSendIndirectionTable {
    /// 134.
    pub msg_type: U32,
    /// @4: entries (16).
    pub count: U32,
    /// @8: offset of the table from the start of the NVSP message.
    pub offset: U32,
}
const_assert_eq!(size_of::<NvspSendIndirectionTable>(), 12);
const_assert_eq!(offset_of!(NvspSendIndirectionTable, offset), 8);

/// Where Linux reads the send table on NVSP ≤ 6 hosts whose offset is wrong (devices §2.6):
/// after the 4-byte header and the 36-byte message union.
pub const SEND_TABLE_LEGACY_OFFSET: usize = 40;

/// SUBCHANNEL (133) operation: allocate.
pub const SUBCHANNEL_ALLOCATE: u32 = 1;
