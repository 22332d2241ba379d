//! Task-offload wire formats (devices §2.12–2.14): the NDIS objects carried by the offload
//! OIDs — NDIS_OFFLOAD (hardware capabilities, current configuration) and
//! NDIS_OFFLOAD_PARAMETERS — and the bit layouts of the checksum, LSOv2 and RSC per-packet
//! infos. Packed little-endian `zerocopy` structs; sizes and the offsets of devices §2.13 are
//! asserted.

use core::mem::offset_of;
use static_assertions::const_assert_eq;
use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::PpiHeader;

/// NDIS object types (devices §2.13).
pub mod ndis_object {
    /// DEFAULT: the type of NDIS_OFFLOAD_PARAMETERS.
    pub const DEFAULT: u8 = 0x80;
    /// OFFLOAD: the type of NDIS_OFFLOAD.
    pub const OFFLOAD: u8 = 0xA7;
}

/// The 4-byte header every NDIS object starts with.
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
pub struct NdisObjectHeader {
    /// @0: object type ([`ndis_object`]).
    pub object_type: u8,
    /// @1: revision.
    pub revision: u8,
    /// @2: size of the object in bytes.
    pub size: U16,
}
const_assert_eq!(size_of::<NdisObjectHeader>(), 4);

/// NDIS_OFFLOAD checksum group (8 × u32): encapsulation and capability bits per IP version
/// and direction ([`csum_cap`], [`ENCAPSULATION_802_3`]).
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
pub struct NdisChecksumOffload {
    /// IPv4 transmit encapsulation.
    pub ip4_tx_encap: U32,
    /// IPv4 transmit capability bits.
    pub ip4_tx_csum: U32,
    /// IPv4 receive encapsulation.
    pub ip4_rx_encap: U32,
    /// IPv4 receive capability bits.
    pub ip4_rx_csum: U32,
    /// IPv6 transmit encapsulation.
    pub ip6_tx_encap: U32,
    /// IPv6 transmit capability bits.
    pub ip6_tx_csum: U32,
    /// IPv6 receive encapsulation.
    pub ip6_rx_encap: U32,
    /// IPv6 receive capability bits.
    pub ip6_rx_csum: U32,
}
const_assert_eq!(size_of::<NdisChecksumOffload>(), 32);

/// NDIS_OFFLOAD large-send v2 group (7 × u32).
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
pub struct NdisLsoV2Offload {
    /// IPv4 encapsulation ([`ENCAPSULATION_802_3`] when supported).
    pub ip4_encap: U32,
    /// Largest IPv4 segment-offload payload.
    pub ip4_max_size: U32,
    /// Fewest segments the host wants per IPv4 LSO packet.
    pub ip4_min_seg_count: U32,
    /// IPv6 encapsulation.
    pub ip6_encap: U32,
    /// Largest IPv6 segment-offload payload.
    pub ip6_max_size: U32,
    /// Fewest segments per IPv6 LSO packet.
    pub ip6_min_seg_count: U32,
    /// IPv6 option bits ([`lso_cap`]).
    pub ip6_opts: U32,
}
const_assert_eq!(size_of::<NdisLsoV2Offload>(), 28);

/// NDIS_OFFLOAD (devices §2.13.1): the answer to TCP_OFFLOAD_HARDWARE_CAPABILITIES and
/// TCP_OFFLOAD_CURRENT_CONFIG, and the payload of TASK_OFFLOAD_CURRENT_CONFIG. This is the
/// revision-3 layout (156 bytes); revision 1 ends at [`NDIS_OFFLOAD_SIZE_REV1`] and revision 2
/// at [`NDIS_OFFLOAD_SIZE_REV2`].
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
pub struct NdisOffload {
    /// @0: type [`ndis_object::OFFLOAD`].
    pub header: NdisObjectHeader,
    /// @4: checksum capabilities.
    pub checksum: NdisChecksumOffload,
    /// @36: LSO v1 (encap, max size, min segment count, options); not used by this driver.
    pub lso_v1: [U32; 4],
    /// @52: IPsec v1; not used.
    pub ipsec_v1: [U32; 7],
    /// @80: LSO v2.
    pub lso_v2: NdisLsoV2Offload,
    /// @108: flags.
    pub flags: U32,
    /// @112: IPsec v2 (revision 2+); not used.
    pub ipsec_v2: [U32; 8],
    /// @144: RSC for IPv4 (revision 3): non-zero = supported.
    pub rsc_ip4: u8,
    /// @145: RSC for IPv6 (revision 3).
    pub rsc_ip6: u8,
    /// @146: padding.
    pub rsc_reserved: [u8; 2],
    /// @148: encapsulated packet task offload (GRE), 2 × u32 (revision 3); not used.
    pub encapsulated: [U32; 2],
}
const_assert_eq!(size_of::<NdisOffload>(), 156);
const_assert_eq!(offset_of!(NdisOffload, checksum), 4);
const_assert_eq!(offset_of!(NdisOffload, lso_v1), 36);
const_assert_eq!(offset_of!(NdisOffload, ipsec_v1), 52);
const_assert_eq!(offset_of!(NdisOffload, lso_v2), 80);
const_assert_eq!(offset_of!(NdisOffload, flags), 108);
const_assert_eq!(offset_of!(NdisOffload, ipsec_v2), 112);
const_assert_eq!(offset_of!(NdisOffload, rsc_ip4), 144);
const_assert_eq!(offset_of!(NdisOffload, rsc_ip6), 145);
const_assert_eq!(offset_of!(NdisOffload, encapsulated), 148);

/// NDIS_OFFLOAD revision 1 (NDIS 6.0): 112 bytes, up to and including `flags`.
pub const NDIS_OFFLOAD_SIZE_REV1: u16 = 112;
/// NDIS_OFFLOAD revision 2 (NDIS 6.1): 144 bytes, adds IPsec v2.
pub const NDIS_OFFLOAD_SIZE_REV2: u16 = 144;
/// NDIS_OFFLOAD revision 3 (NDIS 6.30): 156 bytes, adds RSC and encapsulation.
pub const NDIS_OFFLOAD_SIZE_REV3: u16 = 156;

/// Encapsulation value "IEEE 802.3" of the checksum and LSO groups.
pub const ENCAPSULATION_802_3: u32 = 0x2;

/// Checksum capability bits of [`NdisChecksumOffload`] (devices §2.13.1).
pub mod csum_cap {
    /// IPv4: IP options supported. IPv6: extension headers supported.
    pub const IP_OPTIONS: u32 = 0x1;
    /// TCP options supported.
    pub const TCP_OPTIONS: u32 = 0x4;
    /// TCP checksum.
    pub const TCP: u32 = 0x10;
    /// UDP checksum.
    pub const UDP: u32 = 0x40;
    /// IPv4 header checksum (IPv4 groups only).
    pub const IP_HEADER: u32 = 0x100;
}

/// LSO v2 IPv6 option bits of [`NdisLsoV2Offload::ip6_opts`].
pub mod lso_cap {
    /// IPv6 extension headers supported.
    pub const IP6_EXTENSION_HEADERS: u32 = 0x1;
    /// TCP options supported.
    pub const TCP_OPTIONS: u32 = 0x4;
}

/// NDIS_OFFLOAD_PARAMETERS (devices §2.13.2), the set of TCP_OFFLOAD_PARAMETERS. Revision 2
/// (NDIS 6.1) ends at [`OFFLOAD_PARAMETERS_SIZE_REV2`], revision 3 (NDIS 6.30) is the whole
/// 28-byte struct (the size FreeBSD, OpenBSD, DPDK and Linux send).
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
pub struct NdisOffloadParameters {
    /// @0: type [`ndis_object::DEFAULT`].
    pub header: NdisObjectHeader,
    /// @4: IPv4 header checksum ([`offload_param`]).
    pub ipv4_checksum: u8,
    /// @5: TCP over IPv4.
    pub tcp_ipv4_checksum: u8,
    /// @6: UDP over IPv4.
    pub udp_ipv4_checksum: u8,
    /// @7: TCP over IPv6.
    pub tcp_ipv6_checksum: u8,
    /// @8: UDP over IPv6.
    pub udp_ipv6_checksum: u8,
    /// @9: LSO v1 ([`lso_param`]).
    pub lso_v1: u8,
    /// @10: IPsec v1.
    pub ipsec_v1: u8,
    /// @11: LSO v2 over IPv4 ([`lso_param`]).
    pub lso_v2_ipv4: u8,
    /// @12: LSO v2 over IPv6.
    pub lso_v2_ipv6: u8,
    /// @13: TCP connection offload (chimney) over IPv4.
    pub tcp_connection_ipv4: u8,
    /// @14: TCP connection offload over IPv6.
    pub tcp_connection_ipv6: u8,
    /// @15: padding.
    pub reserved: u8,
    /// @16: flags.
    pub flags: U32,
    /// @20: IPsec v2 (revision 2).
    pub ipsec_v2: u8,
    /// @21: IPsec v2 over IPv4 (revision 2).
    pub ipsec_v2_ipv4: u8,
    /// @22: RSC over IPv4 (revision 3; [`lso_param`] values: 1 off, 2 on).
    pub rsc_ipv4: u8,
    /// @23: RSC over IPv6 (revision 3).
    pub rsc_ipv6: u8,
    /// @24: encapsulated packet task offload (revision 3).
    pub encapsulated_packet_task_offload: u8,
    /// @25: encapsulation types (revision 3).
    pub encapsulation_types: u8,
    /// @26: padding to the 4-byte alignment of the C struct.
    pub padding: [u8; 2],
}
const_assert_eq!(size_of::<NdisOffloadParameters>(), 28);
const_assert_eq!(offset_of!(NdisOffloadParameters, udp_ipv6_checksum), 8);
const_assert_eq!(offset_of!(NdisOffloadParameters, lso_v2_ipv4), 11);
const_assert_eq!(offset_of!(NdisOffloadParameters, flags), 16);
const_assert_eq!(offset_of!(NdisOffloadParameters, ipsec_v2), 20);
const_assert_eq!(offset_of!(NdisOffloadParameters, rsc_ipv4), 22);
const_assert_eq!(offset_of!(NdisOffloadParameters, encapsulation_types), 25);

/// NDIS_OFFLOAD_PARAMETERS revision 1 (NDIS 6.0): 20 bytes, up to and including `flags`;
/// the least OpenVMM accepts.
pub const OFFLOAD_PARAMETERS_SIZE_REV1: u16 = 20;
/// Revision 2 (NDIS 6.1): 22 bytes, up to and including the IPsec v2 fields.
pub const OFFLOAD_PARAMETERS_SIZE_REV2: u16 = 22;
/// Revision 3 (NDIS 6.30): the whole 28-byte struct.
pub const OFFLOAD_PARAMETERS_SIZE_REV3: u16 = 28;

/// Checksum values of [`NdisOffloadParameters`].
pub mod offload_param {
    /// Leave as it is.
    pub const NO_CHANGE: u8 = 0;
    /// Transmit and receive disabled.
    pub const DISABLED: u8 = 1;
    /// Transmit only.
    pub const TX: u8 = 2;
    /// Receive only.
    pub const RX: u8 = 3;
    /// Transmit and receive.
    pub const TX_RX: u8 = 4;
}

/// LSO (and RSC) values of [`NdisOffloadParameters`].
pub mod lso_param {
    /// Leave as it is.
    pub const NO_CHANGE: u8 = 0;
    /// Disabled.
    pub const DISABLED: u8 = 1;
    /// Enabled.
    pub const ENABLED: u8 = 2;
}

/// PPI type 2: TCP large send (LSO).
pub const PPI_LSO: u32 = 2;
/// The internal-type bit of a PPI type (bit 31).
pub const PPI_INTERNAL: u32 = 0x8000_0000;
/// Internal PPI type 1: RSC packet id (devices §2.14).
pub const PPI_RSC_PACKET_ID: u32 = PPI_INTERNAL | 1;

/// Bits of the checksum PPI a guest sets on transmit (devices §2.14).
pub mod csum_tx {
    /// The frame carries IPv4.
    pub const IS_IPV4: u32 = 1 << 0;
    /// The frame carries IPv6.
    pub const IS_IPV6: u32 = 1 << 1;
    /// Compute the TCP checksum.
    pub const TCP_CHECKSUM: u32 = 1 << 2;
    /// Compute the UDP checksum.
    pub const UDP_CHECKSUM: u32 = 1 << 3;
    /// Compute the IPv4 header checksum.
    pub const IP_HEADER_CHECKSUM: u32 = 1 << 4;
    /// Shift of the TCP/UDP header offset from the frame start (bits 16–25).
    pub const HEADER_OFFSET_SHIFT: u32 = 16;
    /// Mask of the header offset after shifting (10 bits).
    pub const HEADER_OFFSET_MASK: u32 = 0x3FF;
}

/// Bits of the checksum PPI the host sets on receive (devices §2.14).
pub mod csum_rx {
    /// TCP checksum failed.
    pub const TCP_FAILED: u32 = 1 << 0;
    /// UDP checksum failed.
    pub const UDP_FAILED: u32 = 1 << 1;
    /// IP header checksum failed.
    pub const IP_FAILED: u32 = 1 << 2;
    /// TCP checksum succeeded.
    pub const TCP_SUCCEEDED: u32 = 1 << 3;
    /// UDP checksum succeeded.
    pub const UDP_SUCCEEDED: u32 = 1 << 4;
    /// IP header checksum succeeded.
    pub const IP_SUCCEEDED: u32 = 1 << 5;
    /// Looped back inside the host.
    pub const LOOPBACK: u32 = 1 << 6;
    /// The TCP checksum field does not hold the checksum (validated otherwise, e.g. RSC).
    pub const TCP_VALUE_INVALID: u32 = 1 << 7;
    /// The IP checksum field does not hold the checksum.
    pub const IP_VALUE_INVALID: u32 = 1 << 8;
}

/// Bits of the LSO v2 transmit PPI (devices §2.14).
pub mod lso_tx {
    /// Mask of the MSS (bits 0–19).
    pub const MSS_MASK: u32 = 0xF_FFFF;
    /// Shift of the TCP header offset (bits 20–29).
    pub const HEADER_OFFSET_SHIFT: u32 = 20;
    /// Mask of the TCP header offset after shifting (10 bits).
    pub const HEADER_OFFSET_MASK: u32 = 0x3FF;
    /// Type bit: 1 = LSO v2.
    pub const TYPE_V2: u32 = 1 << 30;
    /// IP version bit: 1 = IPv6.
    pub const IPV6: u32 = 1 << 31;
}

/// SEND_NDIS_CONFIG capability bit 7, RSC (devices §2.6): the guest takes coalesced
/// receive frames. Linux sets it from NVSP 6.1.
pub const NDIS_CAP_RSC: u64 = 1 << 7;

/// Version of the RSC packet-id PPI payload Hyper-V sends (Linux `RNDIS_PKTINFO_ID_V1`).
pub const RSC_PACKET_ID_V1: u8 = 1;

/// Flags of the RSC packet-id PPI (devices §2.14).
pub mod rsc_flags {
    /// A sub-allocation.
    pub const SUB_ALLOCATION: u8 = 0x1;
    /// The first fragment of a coalesced frame.
    pub const FIRST_FRAGMENT: u8 = 0x2;
    /// The last fragment of a coalesced frame.
    pub const LAST_FRAGMENT: u8 = 0x4;
}

/// Payload of the RSC packet-id PPI.
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
pub struct RscPacketId {
    /// Version.
    pub version: u8,
    /// [`rsc_flags`].
    pub flags: u8,
    /// Packet id.
    pub packet_id: U16,
}
const_assert_eq!(size_of::<RscPacketId>(), 4);

/// A PPI element with a 4-byte payload (checksum info, LSO info): 16 bytes.
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
pub struct PpiU32 {
    /// Header: size 16, the type, payload offset 12.
    pub header: PpiHeader,
    /// @12: the payload.
    pub value: U32,
}
const_assert_eq!(size_of::<PpiU32>(), 16);

impl PpiU32 {
    /// An element of `ppi_type` carrying `value`.
    pub fn new(ppi_type: u32, value: u32) -> Self {
        Self {
            header: PpiHeader {
                size: (size_of::<Self>() as u32).into(),
                ppi_type: ppi_type.into(),
                ppi_offset: (size_of::<PpiHeader>() as u32).into(),
            },
            value: value.into(),
        }
    }
}
