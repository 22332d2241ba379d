//! VSTOR wire formats (devices §3): the `vstor_packet`, the `vmscsi_request` (SRB) it carries
//! for EXECUTE_SRB, and the other payloads of the initialisation handshake.
//!
//! Everything is little-endian and packed (alignment 1), read and written with `zerocopy`.
//! The Win8 extension of the SRB makes a packet 64 bytes on WIN8+ hosts and 48 bytes on
//! WIN6/WIN7 hosts (Linux `vmscsi_size_delta`); [`VstorVersion::packet_size`] tells which.

use core::fmt;
use static_assertions::const_assert_eq;
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of the fixed vstor_packet header (operation, flags, status).
pub const VSTOR_HEADER_SIZE: usize = 12;
/// Size of the payload union on WIN8+ hosts (0x34).
pub const VSTOR_PAYLOAD_SIZE: usize = 52;
/// Full vstor_packet size on WIN8+ hosts.
pub const VSTOR_PACKET_SIZE_WIN8: usize = 64;
/// vstor_packet size on WIN6/WIN7 hosts (no SRB Win8 extension).
pub const VSTOR_PACKET_SIZE_PRE_WIN8: usize = 48;
/// Bytes the Win8 SRB extension adds (Linux `vmscsi_size_delta`).
pub const VMSCSI_SIZE_DELTA: usize = 16;
/// `vmscsi_request.length` on WIN8+ hosts.
pub const VMSCSI_REQUEST_SIZE_WIN8: u16 = 52;
/// `vmscsi_request.length` on WIN6/WIN7 hosts.
pub const VMSCSI_REQUEST_SIZE_PRE_WIN8: u16 = 36;
/// Sense buffer size announced on WIN8+ hosts (`sense_info_length` in).
pub const SENSE_BUFFER_SIZE_WIN8: u8 = 0x14;
/// Sense buffer size announced on pre-Win8 hosts.
pub const SENSE_BUFFER_SIZE_PRE_WIN8: u8 = 0x12;
/// Maximum CDB length the SRB carries.
pub const MAX_CDB_LEN: usize = 16;
/// `vstor_packet.flags` bit: the guest asks for a completion (guests always set it).
pub const REQUEST_COMPLETION_FLAG: u32 = 0x1;
/// Size of the channel-properties structure (also the channel open user data, zeroed).
pub const CHANNEL_PROPERTIES_SIZE: usize = 24;
/// Channel properties flag: the host supports multi-channel (sub-channels).
pub const STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL: u32 = 0x1;

/// A VSTOR protocol version, `(major << 8) | minor` (devices §3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VstorVersion(pub u16);

impl VstorVersion {
    /// 2.0, Windows Server 2008.
    pub const WIN6: Self = Self(0x0200);
    /// 4.2, Windows Server 2008 R2.
    pub const WIN7: Self = Self(0x0402);
    /// 5.1, Windows Server 2012: first version with the 64-byte packet and sub-channels.
    pub const WIN8: Self = Self(0x0501);
    /// 6.0, Windows Server 2012 R2.
    pub const WIN8_1: Self = Self(0x0600);
    /// 6.2, Windows Server 2016 and later.
    pub const WIN10: Self = Self(0x0602);
    /// Every known version, newest first (the guest's default candidate list).
    pub const ALL_NEWEST_FIRST: [Self; 5] = [
        Self::WIN10,
        Self::WIN8_1,
        Self::WIN8,
        Self::WIN7,
        Self::WIN6,
    ];

    /// Major number (high byte).
    pub const fn major(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// Minor number (low byte).
    pub const fn minor(self) -> u8 {
        self.0 as u8
    }
    /// Whether this version uses the Win8 SRB extension (64-byte packets).
    pub const fn is_win8_or_later(self) -> bool {
        self.0 >= Self::WIN8.0
    }
    /// vstor_packet size on the wire for this version: 64 (WIN8+) or 48.
    pub const fn packet_size(self) -> usize {
        if self.is_win8_or_later() {
            VSTOR_PACKET_SIZE_WIN8
        } else {
            VSTOR_PACKET_SIZE_PRE_WIN8
        }
    }
    /// `vmscsi_request.length` for this version: 52 or 36.
    pub const fn srb_length(self) -> u16 {
        if self.is_win8_or_later() {
            VMSCSI_REQUEST_SIZE_WIN8
        } else {
            VMSCSI_REQUEST_SIZE_PRE_WIN8
        }
    }
    /// Sense buffer size to announce in `sense_info_length`: 20 or 18.
    pub const fn sense_buffer_size(self) -> u8 {
        if self.is_win8_or_later() {
            SENSE_BUFFER_SIZE_WIN8
        } else {
            SENSE_BUFFER_SIZE_PRE_WIN8
        }
    }
}

impl fmt::Display for VstorVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())
    }
}

/// A vstor operation code (devices §3.2). Open: unknown values are representable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Operation(pub u32);

impl Operation {
    /// H→G: every completion.
    pub const COMPLETE_IO: Self = Self(1);
    /// H→G unsolicited: a device was removed.
    pub const REMOVE_DEVICE: Self = Self(2);
    /// G→H: execute a SCSI request block.
    pub const EXECUTE_SRB: Self = Self(3);
    /// G→H: reset one LUN.
    pub const RESET_LUN: Self = Self(4);
    /// G→H: reset the adapter.
    pub const RESET_ADAPTER: Self = Self(5);
    /// G→H: reset the bus.
    pub const RESET_BUS: Self = Self(6);
    /// G→H: handshake step 1.
    pub const BEGIN_INITIALIZATION: Self = Self(7);
    /// G→H: last handshake step.
    pub const END_INITIALIZATION: Self = Self(8);
    /// G→H: propose a protocol version.
    pub const QUERY_PROTOCOL_VERSION: Self = Self(9);
    /// G→H: ask for the channel properties.
    pub const QUERY_PROPERTIES: Self = Self(10);
    /// H→G unsolicited: rescan the bus.
    pub const ENUMERATE_BUS: Self = Self(11);
    /// G→H: Fibre Channel WWNs (FC only).
    pub const FCHBA_DATA: Self = Self(12);
    /// G→H: ask for sub-channels (WIN8+).
    pub const CREATE_SUB_CHANNELS: Self = Self(13);
    /// Defined by OpenVMM only.
    pub const EVENT_NOTIFICATION: Self = Self(14);
}

/// An NTSTATUS value from `vstor_packet.status` (devices §3.5). Open newtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NtStatus(pub u32);

impl NtStatus {
    /// Success.
    pub const SUCCESS: Self = Self(0);
    /// STATUS_BUFFER_OVERFLOW (a warning).
    pub const BUFFER_OVERFLOW: Self = Self(0x8000_0005);
    /// STATUS_DEVICE_BUSY.
    pub const DEVICE_BUSY: Self = Self(0x8000_0011);
    /// STATUS_UNSUCCESSFUL.
    pub const UNSUCCESSFUL: Self = Self(0xC000_0001);
    /// STATUS_INVALID_PARAMETER.
    pub const INVALID_PARAMETER: Self = Self(0xC000_000D);
    /// STATUS_INVALID_DEVICE_REQUEST.
    pub const INVALID_DEVICE_REQUEST: Self = Self(0xC000_0010);
    /// STATUS_REVISION_MISMATCH: the proposed protocol version is refused.
    pub const REVISION_MISMATCH: Self = Self(0xC000_0059);
    /// STATUS_DEVICE_NOT_CONNECTED.
    pub const DEVICE_NOT_CONNECTED: Self = Self(0xC000_009D);
    /// STATUS_IO_TIMEOUT.
    pub const IO_TIMEOUT: Self = Self(0xC000_00B5);
    /// STATUS_DEVICE_DOES_NOT_EXIST.
    pub const DEVICE_DOES_NOT_EXIST: Self = Self(0xC000_00C0);
    /// STATUS_CANCELLED.
    pub const CANCELLED: Self = Self(0xC000_0120);
    /// STATUS_INVALID_DEVICE_STATE.
    pub const INVALID_DEVICE_STATE: Self = Self(0xC000_0184);
    /// STATUS_IO_DEVICE_ERROR.
    pub const IO_DEVICE_ERROR: Self = Self(0xC000_0185);

    /// Whether this is STATUS_SUCCESS.
    pub const fn is_success(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for NtStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NTSTATUS {:#010x}", self.0)
    }
}

/// The `srb_status` byte (devices §3.5): low 6 bits status, 0x40 queue frozen, 0x80 autosense
/// valid. Open newtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SrbStatus(pub u8);

impl SrbStatus {
    /// Request still pending.
    pub const PENDING: Self = Self(0x00);
    /// Completed successfully.
    pub const SUCCESS: Self = Self(0x01);
    /// Aborted.
    pub const ABORTED: Self = Self(0x02);
    /// Abort failed.
    pub const ABORT_FAILED: Self = Self(0x03);
    /// Error (look at the SCSI status and sense data).
    pub const ERROR: Self = Self(0x04);
    /// Busy: retry later.
    pub const BUSY: Self = Self(0x05);
    /// Invalid request.
    pub const INVALID_REQUEST: Self = Self(0x06);
    /// Invalid path id.
    pub const INVALID_PATH_ID: Self = Self(0x07);
    /// No device.
    pub const NO_DEVICE: Self = Self(0x08);
    /// Timeout.
    pub const TIMEOUT: Self = Self(0x09);
    /// Selection timeout.
    pub const SELECTION_TIMEOUT: Self = Self(0x0A);
    /// Command timeout.
    pub const COMMAND_TIMEOUT: Self = Self(0x0B);
    /// Message rejected.
    pub const MESSAGE_REJECTED: Self = Self(0x0D);
    /// Bus reset.
    pub const BUS_RESET: Self = Self(0x0E);
    /// Parity error.
    pub const PARITY_ERROR: Self = Self(0x0F);
    /// Request sense failed.
    pub const REQUEST_SENSE_FAILED: Self = Self(0x10);
    /// No HBA.
    pub const NO_HBA: Self = Self(0x11);
    /// Data overrun or underrun (check data_transfer_length).
    pub const DATA_OVERRUN: Self = Self(0x12);
    /// Unexpected bus free.
    pub const UNEXPECTED_BUS_FREE: Self = Self(0x13);
    /// Phase sequence failure.
    pub const PHASE_SEQUENCE_FAILURE: Self = Self(0x14);
    /// Bad SRB block length.
    pub const BAD_SRB_BLOCK_LENGTH: Self = Self(0x15);
    /// Request flushed.
    pub const REQUEST_FLUSHED: Self = Self(0x16);
    /// Invalid LUN: the LUN is gone.
    pub const INVALID_LUN: Self = Self(0x20);
    /// Invalid target id.
    pub const INVALID_TARGET_ID: Self = Self(0x21);
    /// Bad function.
    pub const BAD_FUNCTION: Self = Self(0x22);
    /// Error recovery.
    pub const ERROR_RECOVERY: Self = Self(0x23);
    /// Not powered.
    pub const NOT_POWERED: Self = Self(0x24);
    /// Link down.
    pub const LINK_DOWN: Self = Self(0x25);
    /// Internal error.
    pub const INTERNAL_ERROR: Self = Self(0x30);
    /// Flag: the queue is frozen.
    pub const QUEUE_FROZEN: u8 = 0x40;
    /// Flag: `sense_data` holds valid sense bytes.
    pub const AUTOSENSE_VALID: u8 = 0x80;

    /// The status without the two flag bits.
    pub const fn code(self) -> Self {
        Self(self.0 & 0x3F)
    }
    /// Whether the autosense-valid flag (0x80) is set.
    pub const fn autosense_valid(self) -> bool {
        self.0 & Self::AUTOSENSE_VALID != 0
    }
    /// Whether the queue-frozen flag (0x40) is set.
    pub const fn queue_frozen(self) -> bool {
        self.0 & Self::QUEUE_FROZEN != 0
    }
    /// This status with the autosense-valid flag set.
    pub const fn with_autosense(self) -> Self {
        Self(self.0 | Self::AUTOSENSE_VALID)
    }
}

/// SAM status byte (`scsi_status`). Open newtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ScsiStatus(pub u8);

impl ScsiStatus {
    /// GOOD.
    pub const GOOD: Self = Self(0x00);
    /// CHECK CONDITION: sense data describes the error.
    pub const CHECK_CONDITION: Self = Self(0x02);
    /// CONDITION MET.
    pub const CONDITION_MET: Self = Self(0x04);
    /// BUSY.
    pub const BUSY: Self = Self(0x08);
    /// RESERVATION CONFLICT.
    pub const RESERVATION_CONFLICT: Self = Self(0x18);
    /// TASK SET FULL (queue full).
    pub const TASK_SET_FULL: Self = Self(0x28);
    /// ACA ACTIVE.
    pub const ACA_ACTIVE: Self = Self(0x30);
    /// TASK ABORTED.
    pub const TASK_ABORTED: Self = Self(0x40);
}

/// `vmscsi_request.data_in`: direction of the data phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DataDirection(pub u8);

impl DataDirection {
    /// To the device (write).
    pub const WRITE: Self = Self(0);
    /// From the device (read).
    pub const READ: Self = Self(1);
    /// No data phase.
    pub const NONE: Self = Self(2);
}

/// SRB flags (`srb_flags`, Win8 extension; devices §3.4).
pub mod srb_flags {
    /// Tagged queueing enabled.
    pub const QUEUE_ACTION_ENABLE: u32 = 0x2;
    /// Disable disconnect.
    pub const DISABLE_DISCONNECT: u32 = 0x4;
    /// Disable synchronous transfer (Linux always sets it).
    pub const DISABLE_SYNCH_TRANSFER: u32 = 0x8;
    /// Bypass a frozen queue.
    pub const BYPASS_FROZEN_QUEUE: u32 = 0x10;
    /// No autosense.
    pub const DISABLE_AUTOSENSE: u32 = 0x20;
    /// Data from the device.
    pub const DATA_IN: u32 = 0x40;
    /// Data to the device.
    pub const DATA_OUT: u32 = 0x80;
    /// Do not freeze the queue on error.
    pub const NO_QUEUE_FREEZE: u32 = 0x100;
    /// Adapter cache enabled.
    pub const ADAPTER_CACHE_ENABLE: u32 = 0x200;
    /// Free the sense buffer.
    pub const FREE_SENSE_BUFFER: u32 = 0x400;
}

/// `struct vstor_packet` (devices §3.3), full WIN8+ size. Pre-Win8 packets are the first 48
/// bytes of it; parse them with [`VstorPacket::parse`], which zero-fills the rest.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
pub struct VstorPacket {
    /// @0: [`Operation`].
    pub operation: U32,
    /// @4: 0x1 = REQUEST_COMPLETION.
    pub flags: U32,
    /// @8: NTSTATUS in completions.
    pub status: U32,
    /// @12: payload union (SRB, properties, version, sub-channel count).
    pub payload: [u8; VSTOR_PAYLOAD_SIZE],
}

const_assert_eq!(core::mem::size_of::<VstorPacket>(), VSTOR_PACKET_SIZE_WIN8);
const_assert_eq!(core::mem::offset_of!(VstorPacket, status), 8);
const_assert_eq!(
    core::mem::offset_of!(VstorPacket, payload),
    VSTOR_HEADER_SIZE
);
const_assert_eq!(
    VSTOR_PACKET_SIZE_WIN8 - VSTOR_PACKET_SIZE_PRE_WIN8,
    VMSCSI_SIZE_DELTA
);

impl VstorPacket {
    /// A request with `operation`, REQUEST_COMPLETION set and a zero payload.
    pub fn request(operation: Operation) -> Self {
        let mut p = Self::new_zeroed();
        p.operation = U32::new(operation.0);
        p.flags = U32::new(REQUEST_COMPLETION_FLAG);
        p
    }
    /// The operation.
    pub fn op(&self) -> Operation {
        Operation(self.operation.get())
    }
    /// The completion status.
    pub fn nt_status(&self) -> NtStatus {
        NtStatus(self.status.get())
    }
    /// Reads a packet from `bytes`, which must hold at least the 48-byte pre-Win8 packet;
    /// bytes past 64 are ignored, missing ones (48..64) read as zero. `None` if too short.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < VSTOR_PACKET_SIZE_PRE_WIN8 {
            return None;
        }
        let mut p = Self::new_zeroed();
        let n = bytes.len().min(VSTOR_PACKET_SIZE_WIN8);
        p.as_mut_bytes()[..n].copy_from_slice(&bytes[..n]);
        Some(p)
    }
    /// The SRB in the payload.
    pub fn srb(&self) -> VmscsiRequest {
        VmscsiRequest::read_from_bytes(&self.payload[..])
            .unwrap_or_else(|_| VmscsiRequest::new_zeroed())
    }
    /// The SRB in the payload, in place.
    pub fn srb_ref(&self) -> &VmscsiRequest {
        // The payload is exactly one SRB (the size assertion after `VmscsiRequest`), both
        // unaligned plain data.
        zerocopy::transmute_ref!(&self.payload)
    }
    /// Puts `srb` in the payload.
    pub fn set_srb(&mut self, srb: &VmscsiRequest) {
        self.payload.copy_from_slice(srb.as_bytes());
    }
    /// Writes the first `size` bytes (48 or 64) into `out`; returns the length or `None` if
    /// `out` is too small or `size` exceeds 64.
    pub fn write_to(&self, size: usize, out: &mut [u8]) -> Option<usize> {
        if size > VSTOR_PACKET_SIZE_WIN8 || out.len() < size {
            return None;
        }
        out[..size].copy_from_slice(&self.as_bytes()[..size]);
        Some(size)
    }
}

/// `struct vmscsi_request` (SRB), the EXECUTE_SRB payload (devices §3.4); offsets are within
/// the payload (add 12 for packet offsets). The last 16 bytes are the Win8 extension.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
pub struct VmscsiRequest {
    /// @0: size of this structure as used (52 or 36).
    pub length: U16,
    /// @2: out: [`SrbStatus`].
    pub srb_status: u8,
    /// @3: out: [`ScsiStatus`].
    pub scsi_status: u8,
    /// @4: port number (host ignores it).
    pub port_number: u8,
    /// @5: path id (channel / bus).
    pub path_id: u8,
    /// @6: target id.
    pub target_id: u8,
    /// @7: LUN.
    pub lun: u8,
    /// @8: CDB length (≤ 16).
    pub cdb_length: u8,
    /// @9: in: sense buffer size; out: valid sense bytes.
    pub sense_info_length: u8,
    /// @10: [`DataDirection`].
    pub data_in: u8,
    /// @11: reserved.
    pub reserved: u8,
    /// @12: in: bytes described by the GPA range; out: bytes transferred.
    pub data_transfer_length: U32,
    /// @16: CDB in requests, sense data in completions (union, 20 bytes).
    pub cdb_or_sense: [u8; 20],
    /// @36: Win8 extension: reserved.
    pub reserve: U16,
    /// @38: queue tag (Linux 0xFF when tagged).
    pub queue_tag: u8,
    /// @39: queue action (Linux 0x20 simple).
    pub queue_action: u8,
    /// @40: [`srb_flags`].
    pub srb_flags: U32,
    /// @44: timeout in seconds.
    pub time_out_value: U32,
    /// @48: queue sort key.
    pub queue_sort_key: U32,
}

const_assert_eq!(core::mem::size_of::<VmscsiRequest>(), VSTOR_PAYLOAD_SIZE);
const_assert_eq!(core::mem::offset_of!(VmscsiRequest, srb_status), 2);
const_assert_eq!(core::mem::offset_of!(VmscsiRequest, lun), 7);
const_assert_eq!(core::mem::offset_of!(VmscsiRequest, cdb_length), 8);
const_assert_eq!(core::mem::offset_of!(VmscsiRequest, data_in), 10);
const_assert_eq!(
    core::mem::offset_of!(VmscsiRequest, data_transfer_length),
    12
);
const_assert_eq!(core::mem::offset_of!(VmscsiRequest, cdb_or_sense), 16);
const_assert_eq!(core::mem::offset_of!(VmscsiRequest, reserve), 36);
const_assert_eq!(core::mem::offset_of!(VmscsiRequest, queue_tag), 38);
const_assert_eq!(core::mem::offset_of!(VmscsiRequest, srb_flags), 40);
const_assert_eq!(core::mem::offset_of!(VmscsiRequest, time_out_value), 44);
const_assert_eq!(core::mem::offset_of!(VmscsiRequest, queue_sort_key), 48);
const_assert_eq!(
    core::mem::offset_of!(VmscsiRequest, reserve),
    VSTOR_PAYLOAD_SIZE - VMSCSI_SIZE_DELTA
);

impl VmscsiRequest {
    /// SRB status of a completion.
    pub fn status(&self) -> SrbStatus {
        SrbStatus(self.srb_status)
    }
    /// SCSI status of a completion.
    pub fn scsi(&self) -> ScsiStatus {
        ScsiStatus(self.scsi_status)
    }
    /// The valid sense bytes of a completion: empty unless autosense is valid; the length is
    /// clamped to the 20-byte union (host input).
    pub fn sense(&self) -> &[u8] {
        if !self.status().autosense_valid() {
            return &[];
        }
        let n = usize::from(self.sense_info_length).min(self.cdb_or_sense.len());
        &self.cdb_or_sense[..n]
    }
}

/// Protocol version payload of QUERY_PROTOCOL_VERSION (devices §3.6).
#[repr(C)]
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
pub struct ProtocolVersion {
    /// @0: `(major << 8) | minor`.
    pub major_minor: U16,
    /// @2: revision (0).
    pub revision: U16,
}

const_assert_eq!(core::mem::size_of::<ProtocolVersion>(), 4);

/// Channel properties (QUERY_PROPERTIES completion payload, 24 bytes; devices §3.6).
#[repr(C)]
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
pub struct ChannelProperties {
    /// @0: reserved (older definitions: protocol version, path id, target id).
    pub reserved: U32,
    /// @4: number of sub-channels the host allows.
    pub max_channel_count: U16,
    /// @6: reserved / port number.
    pub reserved1: U16,
    /// @8: flags; 0x1 = multi-channel supported.
    pub flags: U32,
    /// @12: maximum bytes per request.
    pub max_transfer_bytes: U32,
    /// @16: reserved.
    pub reserved2: U64,
}

const_assert_eq!(
    core::mem::size_of::<ChannelProperties>(),
    CHANNEL_PROPERTIES_SIZE
);
const_assert_eq!(
    core::mem::offset_of!(ChannelProperties, max_channel_count),
    4
);
const_assert_eq!(core::mem::offset_of!(ChannelProperties, flags), 8);
const_assert_eq!(
    core::mem::offset_of!(ChannelProperties, max_transfer_bytes),
    12
);

/// CREATE_SUB_CHANNELS payload.
#[repr(C)]
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
pub struct SubChannelCount {
    /// @0: number of sub-channels requested.
    pub sub_channel_count: U16,
}

const_assert_eq!(core::mem::size_of::<SubChannelCount>(), 2);

/// Reads a `T` from the start of a packet payload (zero-extended if the payload is shorter).
pub fn payload_as<T: FromBytes + IntoBytes + KnownLayout + Immutable>(payload: &[u8]) -> T {
    let mut t = T::new_zeroed();
    let dst = t.as_mut_bytes();
    let n = dst.len().min(payload.len());
    dst[..n].copy_from_slice(&payload[..n]);
    t
}

/// Writes `t` at the start of `payload` (truncating if `payload` is shorter).
pub fn set_payload<T: IntoBytes + Immutable>(payload: &mut [u8], t: &T) {
    let src = t.as_bytes();
    let n = src.len().min(payload.len());
    payload[..n].copy_from_slice(&src[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_sizes() {
        assert_eq!(VstorVersion::WIN10.packet_size(), 64);
        assert_eq!(VstorVersion::WIN8.packet_size(), 64);
        assert_eq!(VstorVersion::WIN7.packet_size(), 48);
        assert_eq!(VstorVersion::WIN6.packet_size(), 48);
        assert_eq!(VstorVersion::WIN7.srb_length(), 36);
        assert_eq!(VstorVersion::WIN8_1.srb_length(), 52);
        assert_eq!(VstorVersion::WIN8_1.sense_buffer_size(), 0x14);
        assert_eq!(VstorVersion::WIN6.sense_buffer_size(), 0x12);
        assert_eq!(VstorVersion::WIN8_1.to_string_buf(), *b"6.0");
    }

    impl VstorVersion {
        fn to_string_buf(self) -> [u8; 3] {
            [b'0' + self.major(), b'.', b'0' + self.minor()]
        }
    }

    #[test]
    fn packet_bytes_exact() {
        let mut p = VstorPacket::request(Operation::QUERY_PROTOCOL_VERSION);
        set_payload(
            &mut p.payload,
            &ProtocolVersion {
                major_minor: U16::new(0x0602),
                revision: U16::new(0),
            },
        );
        let b = p.as_bytes();
        assert_eq!(
            &b[..16],
            &[9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x06, 0, 0]
        );
        assert!(b[16..].iter().all(|&x| x == 0));
    }

    #[test]
    fn srb_sense_clamped_and_flagged() {
        let mut s = VmscsiRequest::new_zeroed();
        s.srb_status = 0x04;
        s.sense_info_length = 200;
        assert!(s.sense().is_empty());
        s.srb_status = SrbStatus::ERROR.with_autosense().0;
        assert_eq!(s.sense().len(), 20);
        assert_eq!(s.status().code(), SrbStatus::ERROR);
        assert!(s.status().autosense_valid());
    }

    #[test]
    fn parse_short_and_long() {
        assert!(VstorPacket::parse(&[0; 47]).is_none());
        let mut b = [0u8; 80];
        b[0] = 1;
        b[63] = 7;
        let p = VstorPacket::parse(&b).unwrap();
        assert_eq!(p.op(), Operation::COMPLETE_IO);
        assert_eq!(p.payload[51], 7);
        let p = VstorPacket::parse(&b[..48]).unwrap();
        assert_eq!(p.payload[51], 0);
    }
}
