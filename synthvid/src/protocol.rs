//! Synthetic video wire format (devices §4): the pipe header, the synthvid header and every
//! payload, as little-endian `zerocopy` structs with the sizes and offsets of the protocol.
//!
//! [`parse_host_message`] is the pure parser for everything the host sends (a fuzz entry point).

#![forbid(unsafe_code)]

use core::fmt;

use static_assertions::const_assert_eq;
use zerocopy::little_endian::{I32, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// A synthvid protocol version: `(minor << 16) | major` — the major is in the low 16 bits
/// (devices §4.1), opposite of netvsc and HID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SynthvidVersion(pub u32);

impl SynthvidVersion {
    /// 3.0 (WIN7): 16 bpp.
    pub const WIN7: Self = Self::new(3, 0);
    /// 3.2 (WIN8): 32 bpp.
    pub const WIN8: Self = Self::new(3, 2);
    /// 3.5 (WIN10): adds the supported-resolution list.
    pub const WIN10: Self = Self::new(3, 5);

    /// Packs `major.minor`.
    pub const fn new(major: u16, minor: u16) -> Self {
        Self(((minor as u32) << 16) | major as u32)
    }

    /// The major version (low 16 bits).
    pub const fn major(self) -> u16 {
        self.0 as u16
    }

    /// The minor version (high 16 bits).
    pub const fn minor(self) -> u16 {
        (self.0 >> 16) as u16
    }

    /// Whether RESOLUTION_REQUEST exists (3.5 and later).
    pub fn has_resolution_list(self) -> bool {
        self.major() > 3 || (self.major() == 3 && self.minor() >= 5)
    }

    /// Colour depth this version uses: 16 bpp for 3.0, 32 bpp from 3.2.
    pub fn depth_bits(self) -> u8 {
        if self.major() == 3 && self.minor() < 2 {
            16
        } else {
            32
        }
    }
}

impl fmt::Display for SynthvidVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())
    }
}

pub use vmbus_guest::protocol::pipe::{PIPE_DATA, PIPE_PARTIAL, PipeHeader};
use vmbus_guest::protocol::pipe::{PipeError, pipe_message};

/// Synthvid message types (devices §4.3).
#[allow(missing_docs)]
pub mod msg {
    pub const ERROR: u32 = 0;
    pub const VERSION_REQUEST: u32 = 1;
    pub const VERSION_RESPONSE: u32 = 2;
    pub const VRAM_LOCATION: u32 = 3;
    pub const VRAM_LOCATION_ACK: u32 = 4;
    pub const SITUATION_UPDATE: u32 = 5;
    pub const SITUATION_UPDATE_ACK: u32 = 6;
    pub const POINTER_POSITION: u32 = 7;
    pub const POINTER_SHAPE: u32 = 8;
    pub const FEATURE_CHANGE: u32 = 9;
    pub const DIRT: u32 = 10;
    pub const BIOS_INFO_REQUEST: u32 = 11;
    pub const BIOS_INFO_RESPONSE: u32 = 12;
    pub const RESOLUTION_REQUEST: u32 = 13;
    pub const RESOLUTION_RESPONSE: u32 = 14;
    pub const CAPABILITY_REQUEST: u32 = 15;
    pub const CAPABILITY_RESPONSE: u32 = 16;
}

/// Most rectangles in one DIRT message (dirt_count is a u8).
pub const MAX_DIRT_RECTS: usize = 255;
/// Resolutions the guest asks for in RESOLUTION_REQUEST (what Linux asks; OpenVMM answers
/// with nothing if asked for fewer).
pub const RESOLUTION_REQUEST_COUNT: u8 = 64;
/// Largest hardware cursor, in pixels per side.
pub const MAX_CURSOR: u32 = 96;
/// POINTER_SHAPE part index meaning "the whole shape in this message".
pub const CURSOR_COMPLETE: u8 = 0xFF;

/// Synthvid header (8 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct SynthvidHeader {
    /// Message type ([`msg`]).
    pub kind: U32,
    /// Linux: header + payload; OpenVMM: payload only. Never relied on when receiving.
    pub size: U32,
}
const_assert_eq!(core::mem::size_of::<SynthvidHeader>(), 8);

/// Both headers: 16 bytes before every payload.
pub const HEADERS: usize = 16;

/// VERSION_REQUEST payload.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct VersionRequest {
    /// Requested version.
    pub version: U32,
}
const_assert_eq!(core::mem::size_of::<VersionRequest>(), 4);

/// VERSION_RESPONSE payload.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct VersionResponse {
    /// The version answered.
    pub version: U32,
    /// Non-zero = accepted (OpenVMM sends 2).
    pub is_accepted: u8,
    /// Outputs the host supports.
    pub max_video_outputs: u8,
}
const_assert_eq!(core::mem::size_of::<VersionResponse>(), 6);

/// VRAM_LOCATION payload (17 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct VramLocation {
    /// Echoed by the ACK; Linux (and this driver) put the VRAM GPA here too.
    pub user_context: U64,
    /// 1 = `vram_gpa` is valid; 0 releases the VRAM.
    pub is_vram_gpa_specified: u8,
    /// GPA of the VRAM.
    pub vram_gpa: U64,
}
const_assert_eq!(core::mem::size_of::<VramLocation>(), 17);

/// VRAM_LOCATION_ACK and SITUATION_UPDATE_ACK payload.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ContextAck {
    /// The request's user_context.
    pub user_context: U64,
}
const_assert_eq!(core::mem::size_of::<ContextAck>(), 8);

/// One output of SITUATION_UPDATE.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct VideoOutput {
    /// 1 = active.
    pub active: u8,
    /// Offset of the output's first pixel in VRAM.
    pub vram_offset: U32,
    /// 16 or 32.
    pub depth_bits: u8,
    /// Pixels per line.
    pub width: U32,
    /// Lines.
    pub height: U32,
    /// Bytes per line.
    pub pitch_bytes: U32,
}
const_assert_eq!(core::mem::size_of::<VideoOutput>(), 18);

/// SITUATION_UPDATE payload with one output (27 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct SituationUpdate {
    /// 0.
    pub user_context: U64,
    /// 1.
    pub video_output_count: u8,
    /// The output.
    pub output: VideoOutput,
}
const_assert_eq!(core::mem::size_of::<SituationUpdate>(), 27);

/// POINTER_POSITION payload.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct PointerPosition {
    /// 1 = visible.
    pub is_visible: u8,
    /// Output index (0).
    pub video_output: u8,
    /// X of the hot spot.
    pub image_x: I32,
    /// Y of the hot spot.
    pub image_y: I32,
}
const_assert_eq!(core::mem::size_of::<PointerPosition>(), 10);

/// POINTER_SHAPE payload header (the image follows @18).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct PointerShapeHeader {
    /// 0xFF = complete shape in one message.
    pub part_index: u8,
    /// 1 = ARGB image, 0 = monochrome AND/XOR masks.
    pub is_argb: u8,
    /// Width in pixels (≤ 96).
    pub width: U32,
    /// Height in pixels (≤ 96).
    pub height: U32,
    /// Hot spot X.
    pub hot_x: U32,
    /// Hot spot Y.
    pub hot_y: U32,
}
const_assert_eq!(core::mem::size_of::<PointerShapeHeader>(), 18);

/// FEATURE_CHANGE payload (the first 4 bytes; a V2 form appends a 128-byte EDID).
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
pub struct FeatureChange {
    /// The host wants DIRT messages.
    pub is_dirt_needed: u8,
    /// The host wants POINTER_POSITION re-sent.
    pub is_ptr_position_needed: u8,
    /// The host wants POINTER_SHAPE re-sent.
    pub is_ptr_shape_needed: u8,
    /// The host wants SITUATION_UPDATE re-sent.
    pub is_situation_needed: u8,
}
const_assert_eq!(core::mem::size_of::<FeatureChange>(), 4);

/// DIRT payload header (rectangles follow @2).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct DirtHeader {
    /// Output index (0).
    pub video_output: u8,
    /// Rectangles that follow.
    pub dirt_count: u8,
}
const_assert_eq!(core::mem::size_of::<DirtHeader>(), 2);

/// One DIRT rectangle; x2/y2 exclusive.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct WireRect {
    /// Left.
    pub x1: I32,
    /// Top.
    pub y1: I32,
    /// Right (exclusive).
    pub x2: I32,
    /// Bottom (exclusive).
    pub y2: I32,
}
const_assert_eq!(core::mem::size_of::<WireRect>(), 16);

/// RESOLUTION_REQUEST payload.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ResolutionRequest {
    /// Most resolutions the guest accepts.
    pub maximum_resolution_count: u8,
}
const_assert_eq!(core::mem::size_of::<ResolutionRequest>(), 1);

/// RESOLUTION_RESPONSE fixed part (the {u16, u16} entries follow @131).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ResolutionResponseHeader {
    /// EDID block.
    pub edid_block: [u8; 128],
    /// Entries that follow.
    pub resolution_count: u8,
    /// Index of the host's preferred entry.
    pub default_resolution_index: u8,
    /// Whether the list is the standard one.
    pub is_standard: u8,
}
const_assert_eq!(core::mem::size_of::<ResolutionResponseHeader>(), 131);

/// One supported resolution.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct WireResolution {
    /// Width.
    pub width: U16,
    /// Height.
    pub height: U16,
}
const_assert_eq!(core::mem::size_of::<WireResolution>(), 4);

/// The two headers of a guest message whose payload is `payload_len` bytes (the synthvid size
/// is header + payload, as Linux sends it).
pub fn headers(kind: u32, payload_len: usize) -> [u8; HEADERS] {
    let mut out = [0u8; HEADERS];
    let pipe = PipeHeader::data((8 + payload_len) as u32);
    let vid = SynthvidHeader {
        kind: kind.into(),
        size: ((8 + payload_len) as u32).into(),
    };
    out[..8].copy_from_slice(pipe.as_bytes());
    out[8..].copy_from_slice(vid.as_bytes());
    out
}

/// Why a host message was not understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than the headers or than the message type's payload.
    Truncated {
        /// Message type (or `u32::MAX` if the headers were missing).
        kind: u32,
        /// Bytes present.
        len: usize,
    },
    /// The pipe header is not a complete data message, or its size exceeds the packet.
    BadPipe {
        /// Pipe type.
        kind: u32,
        /// Pipe size.
        size: u32,
    },
    /// RESOLUTION_RESPONSE claims more entries than the packet carries.
    BadResolutionCount(u8),
}

impl From<PipeError> for ParseError {
    fn from(e: PipeError) -> Self {
        match e {
            PipeError::Truncated { len } => Self::Truncated {
                kind: u32::MAX,
                len,
            },
            PipeError::Bad { kind, size } => Self::BadPipe { kind, size },
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { kind, len } => {
                write!(f, "message type {kind} truncated ({len} bytes)")
            }
            Self::BadPipe { kind, size } => write!(f, "bad pipe header (type {kind}, size {size})"),
            Self::BadResolutionCount(n) => write!(f, "resolution count {n} exceeds the message"),
        }
    }
}

impl core::error::Error for ParseError {}

/// A message from the host, parsed and bounds-checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostMessage<'a> {
    /// VERSION_RESPONSE.
    Version {
        /// The version answered.
        version: SynthvidVersion,
        /// Accepted?
        accepted: bool,
        /// Outputs supported.
        max_outputs: u8,
    },
    /// VRAM_LOCATION_ACK with its context.
    VramAck(u64),
    /// SITUATION_UPDATE_ACK with its context.
    SituationAck(u64),
    /// FEATURE_CHANGE (first 4 bytes; any extension ignored).
    Feature(FeatureChange),
    /// RESOLUTION_RESPONSE.
    Resolutions {
        /// Index of the preferred entry (not checked here).
        default_index: u8,
        /// The entries, `{width u16, height u16}` each.
        entries: &'a [WireResolution],
    },
    /// BIOS_INFO_RESPONSE: stop_device_supported.
    BiosInfo(u32),
    /// CAPABILITY_RESPONSE: lock_on_disconnect.
    Capability(u32),
    /// ERROR or any other type: the type and its payload.
    Other {
        /// Message type.
        kind: u32,
        /// Payload (bounded by the pipe size).
        payload: &'a [u8],
    },
}

fn read<T: FromBytes + KnownLayout + Immutable>(kind: u32, p: &[u8]) -> Result<T, ParseError> {
    T::read_from_prefix(p)
        .map(|(v, _)| v)
        .map_err(|_| ParseError::Truncated { kind, len: p.len() })
}

/// Parses one host → guest message (an in-band packet's payload, pipe header first). Pure: no
/// state, never panics; the fuzz entry point for this crate. The synthvid header's size field
/// is ignored (hosts disagree on it); the pipe size bounds the payload and may be smaller than
/// the packet (ring padding).
pub fn parse_host_message(packet: &[u8]) -> Result<HostMessage<'_>, ParseError> {
    let body = pipe_message(packet).map_err(ParseError::from)?;
    let (vid, p) = SynthvidHeader::read_from_prefix(body).map_err(|_| ParseError::Truncated {
        kind: u32::MAX,
        len: body.len(),
    })?;
    let kind = vid.kind.get();
    Ok(match kind {
        msg::VERSION_RESPONSE => {
            let r: VersionResponse = read(kind, p)?;
            HostMessage::Version {
                version: SynthvidVersion(r.version.get()),
                accepted: r.is_accepted != 0,
                max_outputs: r.max_video_outputs,
            }
        }
        msg::VRAM_LOCATION_ACK => {
            HostMessage::VramAck(read::<ContextAck>(kind, p)?.user_context.get())
        }
        msg::SITUATION_UPDATE_ACK => {
            HostMessage::SituationAck(read::<ContextAck>(kind, p)?.user_context.get())
        }
        msg::FEATURE_CHANGE => HostMessage::Feature(read(kind, p)?),
        msg::RESOLUTION_RESPONSE => {
            let (h, tail) = ResolutionResponseHeader::ref_from_prefix(p)
                .map_err(|_| ParseError::Truncated { kind, len: p.len() })?;
            let n = usize::from(h.resolution_count);
            let entries = <[WireResolution]>::ref_from_prefix_with_elems(tail, n)
                .map_err(|_| ParseError::BadResolutionCount(h.resolution_count))?
                .0;
            HostMessage::Resolutions {
                default_index: h.default_resolution_index,
                entries,
            }
        }
        msg::BIOS_INFO_RESPONSE => HostMessage::BiosInfo(read::<U32>(kind, p)?.get()),
        msg::CAPABILITY_RESPONSE => HostMessage::Capability(read::<U32>(kind, p)?.get()),
        _ => HostMessage::Other { kind, payload: p },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u32, payload: &[u8]) -> [u8; 256] {
        let mut b = [0u8; 256];
        b[..16].copy_from_slice(&headers(kind, payload.len()));
        b[16..16 + payload.len()].copy_from_slice(payload);
        b
    }

    #[test]
    fn version_packing_puts_major_low() {
        assert_eq!(SynthvidVersion::WIN10.0, 0x0005_0003);
        assert_eq!(SynthvidVersion::WIN8.0, 0x0002_0003);
        assert_eq!(SynthvidVersion::WIN7.0, 0x0000_0003);
        assert!(SynthvidVersion::WIN10.has_resolution_list());
        assert!(!SynthvidVersion::WIN8.has_resolution_list());
        assert_eq!(SynthvidVersion::WIN7.depth_bits(), 16);
    }

    #[test]
    fn feature_change_v2_reads_first_four_bytes() {
        let mut p = [0u8; 132];
        p[0] = 1;
        p[3] = 1;
        let b = message(msg::FEATURE_CHANGE, &p);
        let m = parse_host_message(&b[..16 + 132]).unwrap();
        assert_eq!(
            m,
            HostMessage::Feature(FeatureChange {
                is_dirt_needed: 1,
                is_ptr_position_needed: 0,
                is_ptr_shape_needed: 0,
                is_situation_needed: 1
            })
        );
    }

    #[test]
    fn hostile_messages_are_errors() {
        assert!(parse_host_message(&[]).is_err());
        assert!(parse_host_message(&[1, 0, 0, 0, 200, 0, 0, 0]).is_err());
        // pipe size larger than the packet
        let b = message(msg::VERSION_RESPONSE, &[0; 6]);
        let mut bad = b;
        bad[4] = 0xFF;
        assert!(parse_host_message(&bad[..30]).is_err());
        // truncated version response
        let b = message(msg::VERSION_RESPONSE, &[0; 3]);
        assert!(parse_host_message(&b[..16 + 3]).is_err());
        // resolution count beyond the packet
        let mut p = [0u8; 131 + 8];
        p[128] = 5;
        let b = message(msg::RESOLUTION_RESPONSE, &p);
        assert_eq!(
            parse_host_message(&b[..16 + p.len()]),
            Err(ParseError::BadResolutionCount(5))
        );
        // every prefix of a valid message parses or fails without panicking
        let b = message(msg::RESOLUTION_RESPONSE, &[0; 139]);
        for n in 0..b.len() {
            let _ = parse_host_message(&b[..n]);
        }
    }
}
