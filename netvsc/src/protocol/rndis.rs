//! RNDIS wire formats (devices §2.10–2.14): every struct includes the 8-byte common header
//! (`msg_type`, `msg_len`), so offsets match §2.10.

use core::mem::offset_of;
use static_assertions::const_assert_eq;
use zerocopy::byteorder::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// RNDIS message types (devices §2.10). Completions are `request | 0x8000_0000`.
pub mod rndis_msg {
    /// PACKET (data).
    pub const PACKET: u32 = 0x1;
    /// INITIALIZE.
    pub const INITIALIZE: u32 = 0x2;
    /// HALT (no reply).
    pub const HALT: u32 = 0x3;
    /// QUERY.
    pub const QUERY: u32 = 0x4;
    /// SET.
    pub const SET: u32 = 0x5;
    /// RESET (never sent: fatal on OpenVMM).
    pub const RESET: u32 = 0x6;
    /// INDICATE_STATUS (host → guest).
    pub const INDICATE_STATUS: u32 = 0x7;
    /// KEEPALIVE.
    pub const KEEPALIVE: u32 = 0x8;
    /// The completion bit.
    pub const COMPLETION: u32 = 0x8000_0000;
    /// INITIALIZE completion.
    pub const INITIALIZE_CMPLT: u32 = INITIALIZE | COMPLETION;
    /// QUERY completion.
    pub const QUERY_CMPLT: u32 = QUERY | COMPLETION;
    /// SET completion.
    pub const SET_CMPLT: u32 = SET | COMPLETION;
    /// RESET completion.
    pub const RESET_CMPLT: u32 = RESET | COMPLETION;
    /// KEEPALIVE completion.
    pub const KEEPALIVE_CMPLT: u32 = KEEPALIVE | COMPLETION;
}

/// RNDIS status values and indication codes (devices §2.11).
pub mod rndis_status {
    /// SUCCESS.
    pub const SUCCESS: u32 = 0;
    /// FAILURE.
    pub const FAILURE: u32 = 0xC000_0001;
    /// NOT_SUPPORTED.
    pub const NOT_SUPPORTED: u32 = 0xC000_00BB;
    /// Indication: link up.
    pub const MEDIA_CONNECT: u32 = 0x4001_000B;
    /// Indication: link down.
    pub const MEDIA_DISCONNECT: u32 = 0x4001_000C;
    /// Indication: link speed (u32, units of 100 bit/s).
    pub const LINK_SPEED_CHANGE: u32 = 0x4001_0013;
    /// Indication: moved to another network.
    pub const NETWORK_CHANGE: u32 = 0x4001_0018;
    /// Indication: offload configuration (ignored, completed).
    pub const TASK_OFFLOAD_CURRENT_CONFIG: u32 = 0x4002_0006;
}

/// OIDs the driver uses (devices §2.12).
pub mod oid {
    /// GEN_MAXIMUM_FRAME_SIZE: u32 MTU without the Ethernet header.
    pub const GEN_MAXIMUM_FRAME_SIZE: u32 = 0x0001_0106;
    /// GEN_LINK_SPEED: u32, units of 100 bit/s.
    pub const GEN_LINK_SPEED: u32 = 0x0001_0107;
    /// GEN_CURRENT_PACKET_FILTER: u32 filter bits.
    pub const GEN_CURRENT_PACKET_FILTER: u32 = 0x0001_010E;
    /// GEN_MEDIA_CONNECT_STATUS: u32, 0 connected, 1 disconnected.
    pub const GEN_MEDIA_CONNECT_STATUS: u32 = 0x0001_0114;
    /// 802_3_PERMANENT_ADDRESS: 6 bytes.
    pub const PERMANENT_ADDRESS: u32 = 0x0101_0101;
    /// 802_3_CURRENT_ADDRESS: 6 bytes.
    pub const CURRENT_ADDRESS: u32 = 0x0101_0102;
    /// TCP_OFFLOAD_CURRENT_CONFIG: NDIS_OFFLOAD.
    pub const TCP_OFFLOAD_CURRENT_CONFIG: u32 = 0xFC01_020B;
    /// TCP_OFFLOAD_PARAMETERS (set): NDIS_OFFLOAD_PARAMETERS.
    pub const TCP_OFFLOAD_PARAMETERS: u32 = 0xFC01_020C;
    /// TCP_OFFLOAD_HARDWARE_CAPABILITIES (query): NDIS_OFFLOAD.
    pub const TCP_OFFLOAD_HARDWARE_CAPABILITIES: u32 = 0xFC01_020D;
}

/// Packet filter bits (devices §2.12).
pub mod filter {
    /// DIRECTED.
    pub const DIRECTED: u32 = 0x1;
    /// MULTICAST.
    pub const MULTICAST: u32 = 0x2;
    /// ALL_MULTICAST.
    pub const ALL_MULTICAST: u32 = 0x4;
    /// BROADCAST.
    pub const BROADCAST: u32 = 0x8;
    /// PROMISCUOUS.
    pub const PROMISCUOUS: u32 = 0x20;
    /// What Linux sets when opening: directed + all-multicast + broadcast.
    pub const DEFAULT: u32 = DIRECTED | ALL_MULTICAST | BROADCAST;
}

/// The 8-byte header of every RNDIS message.
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
pub struct RndisHeader {
    /// Message type ([`rndis_msg`]).
    pub msg_type: U32,
    /// Total bytes including this header.
    pub msg_len: U32,
}
const_assert_eq!(size_of::<RndisHeader>(), 8);

/// INITIALIZE request (24 bytes).
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
pub struct RndisInitRequest {
    /// Common header.
    pub header: RndisHeader,
    /// @8.
    pub request_id: U32,
    /// @12: 1.
    pub major_version: U32,
    /// @16: 0.
    pub minor_version: U32,
    /// @20.
    pub max_transfer_size: U32,
}
const_assert_eq!(size_of::<RndisInitRequest>(), 24);

/// INITIALIZE completion (52 bytes).
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
pub struct RndisInitComplete {
    /// Common header.
    pub header: RndisHeader,
    /// @8: echoed.
    pub request_id: U32,
    /// @12: 0 = success.
    pub status: U32,
    /// @16.
    pub major_version: U32,
    /// @20.
    pub minor_version: U32,
    /// @24: 1 = connectionless.
    pub device_flags: U32,
    /// @28: 0 = 802.3.
    pub medium: U32,
    /// @32: guest batching limit.
    pub max_packets_per_message: U32,
    /// @36.
    pub max_transfer_size: U32,
    /// @40: log2 of the alignment.
    pub packet_alignment_factor: U32,
    /// @44.
    pub af_list_offset: U32,
    /// @48.
    pub af_list_size: U32,
}
const_assert_eq!(size_of::<RndisInitComplete>(), 52);
const_assert_eq!(offset_of!(RndisInitComplete, packet_alignment_factor), 40);

/// QUERY and SET request header (28 bytes, information buffer follows).
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
pub struct RndisOidRequest {
    /// Common header.
    pub header: RndisHeader,
    /// @8.
    pub request_id: U32,
    /// @12.
    pub oid: U32,
    /// @16.
    pub info_buffer_length: U32,
    /// @20: relative to offset 8.
    pub info_buffer_offset: U32,
    /// @24: 0.
    pub device_vc_handle: U32,
}
const_assert_eq!(size_of::<RndisOidRequest>(), 28);
const_assert_eq!(offset_of!(RndisOidRequest, info_buffer_offset), 20);

/// QUERY completion header (24 bytes, information buffer follows).
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
pub struct RndisQueryComplete {
    /// Common header.
    pub header: RndisHeader,
    /// @8: echoed.
    pub request_id: U32,
    /// @12: RNDIS status.
    pub status: U32,
    /// @16.
    pub info_buffer_length: U32,
    /// @20: relative to offset 8.
    pub info_buffer_offset: U32,
}
const_assert_eq!(size_of::<RndisQueryComplete>(), 24);

/// SET / KEEPALIVE completion (16 bytes).
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
pub struct RndisSetComplete {
    /// Common header.
    pub header: RndisHeader,
    /// @8: echoed.
    pub request_id: U32,
    /// @12: RNDIS status.
    pub status: U32,
}
const_assert_eq!(size_of::<RndisSetComplete>(), 16);

/// KEEPALIVE request / HALT (12 bytes).
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
pub struct RndisKeepalive {
    /// Common header.
    pub header: RndisHeader,
    /// @8.
    pub request_id: U32,
}
const_assert_eq!(size_of::<RndisKeepalive>(), 12);

/// INDICATE_STATUS (20 bytes, status buffer follows).
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
pub struct RndisIndicateStatus {
    /// Common header.
    pub header: RndisHeader,
    /// @8: indication code.
    pub status: U32,
    /// @12.
    pub status_buffer_length: U32,
    /// @16: relative to offset 8.
    pub status_buffer_offset: U32,
}
const_assert_eq!(size_of::<RndisIndicateStatus>(), 20);

/// PACKET header (44 bytes).
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
pub struct RndisPacket {
    /// Common header.
    pub header: RndisHeader,
    /// @8: relative to offset 8.
    pub data_offset: U32,
    /// @12: frame length.
    pub data_length: U32,
    /// @16: 0.
    pub oob_data_offset: U32,
    /// @20: 0.
    pub oob_data_length: U32,
    /// @24: 0.
    pub num_oob_data_elements: U32,
    /// @28: relative to offset 8.
    pub per_packet_info_offset: U32,
    /// @32: total PPI bytes.
    pub per_packet_info_length: U32,
    /// @36: 0.
    pub vc_handle: U32,
    /// @40: 0.
    pub reserved: U32,
}
const_assert_eq!(size_of::<RndisPacket>(), 44);
const_assert_eq!(offset_of!(RndisPacket, per_packet_info_offset), 28);
const_assert_eq!(offset_of!(RndisPacket, vc_handle), 36);

/// Header of one per-packet-info element (devices §2.14).
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
pub struct PpiHeader {
    /// @0: whole element including this header.
    pub size: U32,
    /// @4: bits 0–30 type, bit 31 internal.
    pub ppi_type: U32,
    /// @8: payload offset inside the element (normally 12).
    pub ppi_offset: U32,
}
const_assert_eq!(size_of::<PpiHeader>(), 12);

/// PPI type 0: TCP/IP checksum info.
pub const PPI_CHECKSUM: u32 = 0;
/// PPI type 6: IEEE 802.1Q info.
pub const PPI_8021Q: u32 = 6;

/// RNDIS offsets in PACKET, QUERY, SET and INDICATE_STATUS are relative to offset 8.
pub const RNDIS_OFFSET_BASE: usize = 8;
