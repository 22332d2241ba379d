//! NVSP and RNDIS wire formats (devices §2.3–2.14): little-endian, packed `zerocopy` structs
//! with their sizes and offsets asserted, and the numbers the protocol names.
//!
//! Every NVSP struct includes its 4-byte `msg_type` at offset 0, so offsets match the tables
//! of devices §2.6. Every RNDIS struct includes the 8-byte common header (`msg_type`,
//! `msg_len`), so offsets match §2.10.

use core::mem::offset_of;
use static_assertions::const_assert_eq;
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

mod offload;
mod rndis;
mod rss;
pub use offload::*;
pub use rndis::*;
pub use rss::*;

/// Every NVSP message the guest sends is padded with zeros to this size (type + 36-byte
/// union, v6.1 era; devices §2.5: hosts may silently drop shorter ones).
pub const NVSP_MESSAGE_SIZE: usize = 40;

/// An NVSP protocol version, `(major << 16) | minor`, except version 1 = 0x2 (devices §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NvspVersion(pub u32);

impl NvspVersion {
    /// NVSP 1 (WS2008), numbered "0.2".
    pub const V1: Self = Self(0x0000_0002);
    /// NVSP 2 (WS2008 R2): SEND_NDIS_CONFIG.
    pub const V2: Self = Self(0x0003_0002);
    /// NVSP 4 (WS2012).
    pub const V4: Self = Self(0x0004_0000);
    /// NVSP 5 (WS2012 R2): sub-channels.
    pub const V5: Self = Self(0x0005_0000);
    /// NVSP 6 (WS2016).
    pub const V6: Self = Self(0x0006_0000);
    /// NVSP 6.1 (WS2016+ / Azure).
    pub const V61: Self = Self(0x0006_0001);
    /// Every version, newest first: the order Linux tries them in (devices §2.2, §7.1).
    pub const ALL_NEWEST_FIRST: [Self; 6] =
        [Self::V61, Self::V6, Self::V5, Self::V4, Self::V2, Self::V1];

    /// The NDIS version the guest announces in SEND_NDIS_VERSION for this NVSP version:
    /// 6.1 up to NVSP 4, 6.30 from NVSP 5 (devices §2.6).
    pub fn ndis_version(self) -> (u32, u32) {
        if self <= Self::V4 { (6, 1) } else { (6, 30) }
    }

    /// Capability bits of SEND_NDIS_CONFIG (§2.6): IEEE 802.1Q always; no VMQ, chimney,
    /// SR-IOV, teaming or RSC, because this driver implements none of them.
    pub fn ndis_capabilities(self) -> u64 {
        NDIS_CAP_IEEE_8021Q
    }
}

/// SEND_NDIS_CONFIG capability bit 3, IEEE 802.1Q.
pub const NDIS_CAP_IEEE_8021Q: u64 = 1 << 3;

/// NVSP message types (devices §2.3).
pub mod msg {
    /// INIT (guest → host, completion requested).
    pub const INIT: u32 = 1;
    /// INIT_COMPLETE (in the completion).
    pub const INIT_COMPLETE: u32 = 2;
    /// SEND_NDIS_VERSION (no completion).
    pub const SEND_NDIS_VERSION: u32 = 100;
    /// SEND_RECV_BUF (completion requested).
    pub const SEND_RECV_BUF: u32 = 101;
    /// SEND_RECV_BUF_COMPLETE.
    pub const SEND_RECV_BUF_COMPLETE: u32 = 102;
    /// REVOKE_RECV_BUF (teardown).
    pub const REVOKE_RECV_BUF: u32 = 103;
    /// SEND_SEND_BUF (completion requested).
    pub const SEND_SEND_BUF: u32 = 104;
    /// SEND_SEND_BUF_COMPLETE.
    pub const SEND_SEND_BUF_COMPLETE: u32 = 105;
    /// REVOKE_SEND_BUF (teardown).
    pub const REVOKE_SEND_BUF: u32 = 106;
    /// SEND_RNDIS_PKT (both directions).
    pub const SEND_RNDIS_PKT: u32 = 107;
    /// SEND_RNDIS_PKT_COMPLETE (both directions, in completions).
    pub const SEND_RNDIS_PKT_COMPLETE: u32 = 108;
    /// SEND_NDIS_CONFIG (NVSP ≥ 2, no completion).
    pub const SEND_NDIS_CONFIG: u32 = 125;
    /// SEND_VF_ASSOCIATION (host → guest, NVSP ≥ 4).
    pub const SEND_VF_ASSOCIATION: u32 = 128;
    /// SWITCH_DATA_PATH (NVSP ≥ 4).
    pub const SWITCH_DATA_PATH: u32 = 129;
    /// SUBCHANNEL (NVSP ≥ 5; the completion uses the same type).
    pub const SUBCHANNEL: u32 = 133;
    /// SEND_INDIRECTION_TABLE (host → guest, NVSP ≥ 5).
    pub const SEND_INDIRECTION_TABLE: u32 = 134;
}

/// NVSP status codes (devices §2.4).
pub mod status {
    /// NONE.
    pub const NONE: u32 = 0;
    /// SUCCESS.
    pub const SUCCESS: u32 = 1;
    /// FAILURE.
    pub const FAILURE: u32 = 2;
}

/// The receive buffer id the guest registers; the host echoes it as the transfer page set id
/// (devices §2.6, Linux's value).
pub const RECV_BUFFER_ID: u16 = 0xCAFE;
/// The send buffer id the guest registers (Linux's value).
pub const SEND_BUFFER_ID: u16 = 0;
/// SEND_RNDIS_PKT `channel_type`: RNDIS PACKET (data).
pub const CHANNEL_TYPE_DATA: u32 = 0;
/// SEND_RNDIS_PKT `channel_type`: every other RNDIS message (control).
pub const CHANNEL_TYPE_CONTROL: u32 = 1;
/// SEND_RNDIS_PKT `send_buf_section_index` meaning "no section, GPA page buffers".
pub const NO_SECTION: u32 = 0xFFFF_FFFF;

/// The 4-byte header of every NVSP message.
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
pub struct NvspHeader {
    /// Message type ([`msg`]).
    pub msg_type: U32,
}
const_assert_eq!(size_of::<NvspHeader>(), 4);

/// INIT (1).
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
pub struct NvspInit {
    /// 1.
    pub msg_type: U32,
    /// Candidate version @4.
    pub min_protocol_version: U32,
    /// Same candidate @8 (Linux).
    pub max_protocol_version: U32,
}
const_assert_eq!(size_of::<NvspInit>(), 12);
const_assert_eq!(offset_of!(NvspInit, max_protocol_version), 8);

/// INIT_COMPLETE (2), the payload of INIT's completion.
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
pub struct NvspInitComplete {
    /// 2.
    pub msg_type: U32,
    /// Deprecated @4; not relied on.
    pub negotiated_protocol_version: U32,
    /// @8.
    pub max_mdl_chain_length: U32,
    /// @12: 1 = the candidate is accepted.
    pub status: U32,
}
const_assert_eq!(size_of::<NvspInitComplete>(), 16);
const_assert_eq!(offset_of!(NvspInitComplete, status), 12);

/// SEND_NDIS_VERSION (100).
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
pub struct NvspNdisVersion {
    /// 100.
    pub msg_type: U32,
    /// @4.
    pub ndis_major: U32,
    /// @8.
    pub ndis_minor: U32,
}
const_assert_eq!(size_of::<NvspNdisVersion>(), 12);

/// SEND_NDIS_CONFIG (125).
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
pub struct NvspNdisConfig {
    /// 125.
    pub msg_type: U32,
    /// @4: Ethernet frame size including the 14-byte header.
    pub mtu: U32,
    /// @8: 0.
    pub reserved: U32,
    /// @12: capability bits.
    pub capabilities: U64,
}
const_assert_eq!(size_of::<NvspNdisConfig>(), 20);
const_assert_eq!(offset_of!(NvspNdisConfig, capabilities), 12);

/// SEND_RECV_BUF (101) and SEND_SEND_BUF (104).
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
pub struct NvspSendBuffer {
    /// 101 or 104.
    pub msg_type: U32,
    /// @4: GPADL covering the buffer.
    pub gpadl_handle: U32,
    /// @8: buffer id.
    pub id: U16,
    /// @10: 0.
    pub padding: U16,
}
const_assert_eq!(size_of::<NvspSendBuffer>(), 12);
const_assert_eq!(offset_of!(NvspSendBuffer, id), 8);

/// SEND_RECV_BUF_COMPLETE (102) with its one section.
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
pub struct NvspRecvBufComplete {
    /// 102.
    pub msg_type: U32,
    /// @4: 1 = success.
    pub status: U32,
    /// @8: must be 1.
    pub num_sections: U32,
    /// @12: `section[0].offset`.
    pub offset: U32,
    /// @16: size of one receive slot.
    pub sub_alloc_size: U32,
    /// @20: number of slots.
    pub num_sub_allocs: U32,
    /// @24: offset + size × count.
    pub end_offset: U32,
}
const_assert_eq!(size_of::<NvspRecvBufComplete>(), 28);
const_assert_eq!(offset_of!(NvspRecvBufComplete, end_offset), 24);

/// SEND_SEND_BUF_COMPLETE (105).
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
pub struct NvspSendBufComplete {
    /// 105.
    pub msg_type: U32,
    /// @4: 1 = success.
    pub status: U32,
    /// @8: bytes per send section.
    pub section_size: U32,
}
const_assert_eq!(size_of::<NvspSendBufComplete>(), 12);

/// REVOKE_RECV_BUF (103) / REVOKE_SEND_BUF (106).
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
pub struct NvspRevokeBuffer {
    /// 103 or 106.
    pub msg_type: U32,
    /// @4: the id used when registering.
    pub id: U16,
    /// Padding.
    pub padding: U16,
}
const_assert_eq!(size_of::<NvspRevokeBuffer>(), 8);

/// SEND_RNDIS_PKT (107).
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
pub struct NvspRndisPacket {
    /// 107.
    pub msg_type: U32,
    /// @4: [`CHANNEL_TYPE_DATA`] or [`CHANNEL_TYPE_CONTROL`].
    pub channel_type: U32,
    /// @8: send-buffer section, or [`NO_SECTION`].
    pub send_buf_section_index: U32,
    /// @12: bytes used in the section.
    pub send_buf_section_size: U32,
}
const_assert_eq!(size_of::<NvspRndisPacket>(), 16);
const_assert_eq!(offset_of!(NvspRndisPacket, send_buf_section_size), 12);

/// SEND_RNDIS_PKT_COMPLETE (108).
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
pub struct NvspRndisPacketComplete {
    /// 108.
    pub msg_type: U32,
    /// @4: 1 success, 2 failure.
    pub status: U32,
}
const_assert_eq!(size_of::<NvspRndisPacketComplete>(), 8);

/// SUBCHANNEL (133) request and completion.
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
pub struct NvspSubchannel {
    /// 133.
    pub msg_type: U32,
    /// @4: request operation (1 = allocate) / completion status.
    pub operation_or_status: U32,
    /// @8: sub-channels requested / allocated.
    pub num_subchannels: U32,
}
const_assert_eq!(size_of::<NvspSubchannel>(), 12);

/// SEND_VF_ASSOCIATION (128), host → guest (devices §2.6, §2.17).
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
pub struct NvspVfAssociation {
    /// 128.
    pub msg_type: U32,
    /// @4: 1 = a VF is present, 0 = removed.
    pub allocated: U32,
    /// @8: serial of the vPCI device carrying the VF.
    pub serial_number: U32,
}
const_assert_eq!(size_of::<NvspVfAssociation>(), 12);
const_assert_eq!(offset_of!(NvspVfAssociation, serial_number), 8);

/// SWITCH_DATA_PATH (129), both directions (devices §2.6, §2.17).
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
pub struct NvspSwitchDataPath {
    /// 129.
    pub msg_type: U32,
    /// @4: [`DATA_PATH_SYNTHETIC`] or [`DATA_PATH_VF`].
    pub active_data_path: U32,
}
const_assert_eq!(size_of::<NvspSwitchDataPath>(), 8);

/// SWITCH_DATA_PATH value: traffic through the synthetic NIC.
pub const DATA_PATH_SYNTHETIC: u32 = 0;
/// SWITCH_DATA_PATH value: traffic through the SR-IOV VF.
pub const DATA_PATH_VF: u32 = 1;

/// Copies `msg` into a zero-padded [`NVSP_MESSAGE_SIZE`]-byte message.
pub fn padded(msg: &[u8]) -> [u8; NVSP_MESSAGE_SIZE] {
    let mut out = [0u8; NVSP_MESSAGE_SIZE];
    let n = msg.len().min(NVSP_MESSAGE_SIZE);
    out[..n].copy_from_slice(&msg[..n]);
    out
}
