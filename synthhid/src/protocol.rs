//! Wire formats of the synthetic mouse (devices §5.1, pipe-framed) and keyboard (§5.2, no
//! pipe header), with pure parsers for everything the host sends ([`parse_mouse_message`],
//! [`parse_keyboard_message`]: fuzz entry points).

#![forbid(unsafe_code)]

use core::fmt;

pub use vmbus_guest::protocol::pipe::{PIPE_DATA, PipeHeader};
use vmbus_guest::protocol::pipe::{PipeError, pipe_message};

use static_assertions::const_assert_eq;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Mouse protocol 2.0, packed `(major << 16) | minor`.
pub const MOUSE_VERSION: u32 = 0x0002_0000;
/// Keyboard protocol 1.0, packed `(major << 16) | minor`.
pub const KEYBOARD_VERSION: u32 = 0x0001_0000;
/// Largest keyboard message (devices §5.2).
pub const KEYBOARD_MAX_MESSAGE: usize = 256;

/// Mouse (synthhid) message types.
#[allow(missing_docs)]
pub mod mouse_msg {
    pub const PROTOCOL_REQUEST: u32 = 0;
    pub const PROTOCOL_RESPONSE: u32 = 1;
    pub const INITIAL_DEVICE_INFO: u32 = 2;
    pub const INITIAL_DEVICE_INFO_ACK: u32 = 3;
    pub const INPUT_REPORT: u32 = 4;
}

/// Keyboard message types.
#[allow(missing_docs)]
pub mod kbd_msg {
    pub const PROTOCOL_REQUEST: u32 = 1;
    pub const PROTOCOL_RESPONSE: u32 = 2;
    pub const EVENT: u32 = 3;
    pub const SET_LED_INDICATORS: u32 = 4;
}

/// Synthhid header: type and **payload** size.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct SynthhidHeader {
    /// [`mouse_msg`] type.
    pub kind: U32,
    /// Payload bytes (not counting this header).
    pub size: U32,
}
const_assert_eq!(core::mem::size_of::<SynthhidHeader>(), 8);

/// Mouse PROTOCOL_RESPONSE payload.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct MouseProtocolResponse {
    /// The version the guest asked for.
    pub version_requested: U32,
    /// Non-zero = approved.
    pub approved: u8,
}
const_assert_eq!(core::mem::size_of::<MouseProtocolResponse>(), 5);

/// Device info at the start of INITIAL_DEVICE_INFO (32 bytes).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct DeviceInfo {
    /// 32.
    pub size: U32,
    /// USB vendor id (0x045E).
    pub vendor: U16,
    /// Product id (0x0621).
    pub product: U16,
    /// Version (0x0001).
    pub version: U16,
    /// Reserved.
    pub reserved: [U16; 11],
}
const_assert_eq!(core::mem::size_of::<DeviceInfo>(), 32);

/// HID descriptor (9 bytes) after the device info.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct HidDescriptor {
    /// 9 (the report descriptor starts bLength bytes after this descriptor).
    pub b_length: u8,
    /// 0x21.
    pub b_descriptor_type: u8,
    /// 0x0101.
    pub bcd_hid: U16,
    /// 0.
    pub country: u8,
    /// 1.
    pub num_descriptors: u8,
    /// 0x22 = report descriptor.
    pub class_descriptor_type: u8,
    /// Report descriptor length.
    pub class_descriptor_length: U16,
}
const_assert_eq!(core::mem::size_of::<HidDescriptor>(), 9);

/// HID descriptor type.
pub const HID_DESCRIPTOR_TYPE: u8 = 0x21;
/// Report descriptor type.
pub const REPORT_DESCRIPTOR_TYPE: u8 = 0x22;

/// Keyboard PROTOCOL_REQUEST.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct KbdProtocolRequest {
    /// 1.
    pub kind: U32,
    /// [`KEYBOARD_VERSION`].
    pub version: U32,
}
const_assert_eq!(core::mem::size_of::<KbdProtocolRequest>(), 8);

/// Keyboard EVENT (12 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct KbdEvent {
    /// 3.
    pub kind: U32,
    /// Set-1 scan code (or a UTF-16 unit with the UNICODE flag).
    pub make_code: U16,
    /// Reserved.
    pub reserved: U16,
    /// Bit 0 UNICODE, 1 BREAK, 2 E0, 3 E1.
    pub info: U32,
}
const_assert_eq!(core::mem::size_of::<KbdEvent>(), 12);

/// Keyboard SET_LED_INDICATORS (8 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct KbdSetLeds {
    /// 4.
    pub kind: U32,
    /// LED flags.
    pub led_flags: U16,
    /// Padding.
    pub padding: U16,
}
const_assert_eq!(core::mem::size_of::<KbdSetLeds>(), 8);

/// Why a host input message was not understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than its headers or fixed payload.
    Truncated {
        /// Message type (`u32::MAX` when even the headers were missing).
        kind: u32,
        /// Bytes present.
        len: usize,
    },
    /// The pipe header is not a data message or claims more than the packet holds.
    BadPipe {
        /// Pipe type.
        kind: u32,
        /// Pipe size.
        size: u32,
    },
    /// The HID descriptor is malformed (length < 9, wrong type, no report descriptor).
    BadHidDescriptor,
    /// The report descriptor runs past the message.
    ReportDescriptorTruncated {
        /// Length the HID descriptor gives.
        len: u16,
        /// Bytes available.
        available: usize,
    },
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
            Self::BadHidDescriptor => f.write_str("malformed HID descriptor"),
            Self::ReportDescriptorTruncated { len, available } => {
                write!(f, "report descriptor of {len} bytes, {available} present")
            }
        }
    }
}

impl core::error::Error for ParseError {}

/// A mouse message from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MouseMessage<'a> {
    /// PROTOCOL_RESPONSE.
    ProtocolResponse {
        /// Version the answer is about.
        version: u32,
        /// Approved?
        approved: bool,
    },
    /// INITIAL_DEVICE_INFO.
    DeviceInfo {
        /// The device info.
        info: DeviceInfo,
        /// The HID descriptor.
        hid: HidDescriptor,
        /// The report descriptor (length from the HID descriptor).
        report_descriptor: &'a [u8],
    },
    /// INPUT_REPORT: the raw report (length = synthhid size).
    InputReport(&'a [u8]),
    /// Any other type.
    Other(u32),
}

/// Parses one mouse message (an in-band packet's payload). The pipe size bounds what is read
/// and may exceed 8 + the synthhid size (OpenVMM's device info); the report descriptor's
/// length comes from the HID descriptor, never from the headers (devices §5.1 rule).
pub fn parse_mouse_message(packet: &[u8]) -> Result<MouseMessage<'_>, ParseError> {
    let body = pipe_message(packet).map_err(ParseError::from)?;
    let (h, p) = SynthhidHeader::read_from_prefix(body).map_err(|_| ParseError::Truncated {
        kind: u32::MAX,
        len: body.len(),
    })?;
    let kind = h.kind.get();
    let truncated = ParseError::Truncated { kind, len: p.len() };
    Ok(match kind {
        mouse_msg::PROTOCOL_RESPONSE => {
            let (r, _) = MouseProtocolResponse::read_from_prefix(p).map_err(|_| truncated)?;
            MouseMessage::ProtocolResponse {
                version: r.version_requested.get(),
                approved: r.approved != 0,
            }
        }
        mouse_msg::INITIAL_DEVICE_INFO => {
            let (info, tail) = DeviceInfo::read_from_prefix(p).map_err(|_| truncated)?;
            let (hid, _) = HidDescriptor::read_from_prefix(tail).map_err(|_| truncated)?;
            if usize::from(hid.b_length) < core::mem::size_of::<HidDescriptor>()
                || hid.b_descriptor_type != HID_DESCRIPTOR_TYPE
                || hid.num_descriptors == 0
                || hid.class_descriptor_type != REPORT_DESCRIPTOR_TYPE
            {
                return Err(ParseError::BadHidDescriptor);
            }
            let len = hid.class_descriptor_length.get();
            // A HID descriptor longer than what the message holds is truncated (it used to
            // yield an empty report descriptor from nowhere when the class length was 0).
            let after = tail
                .get(usize::from(hid.b_length)..)
                .ok_or(ParseError::Truncated { kind, len: p.len() })?;
            let report_descriptor =
                after
                    .get(..usize::from(len))
                    .ok_or(ParseError::ReportDescriptorTruncated {
                        len,
                        available: after.len(),
                    })?;
            MouseMessage::DeviceInfo {
                info,
                hid,
                report_descriptor,
            }
        }
        mouse_msg::INPUT_REPORT => {
            let n = h.size.get() as usize;
            MouseMessage::InputReport(p.get(..n).ok_or(truncated)?)
        }
        other => MouseMessage::Other(other),
    })
}

/// A keyboard message from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyboardMessage {
    /// PROTOCOL_RESPONSE: bit 0 of the status = accepted.
    ProtocolResponse {
        /// Accepted?
        accepted: bool,
    },
    /// EVENT.
    Event(crate::keys::KeyEvent),
    /// Any other type.
    Other(u32),
}

/// Parses one keyboard message (an in-band packet's payload, no pipe header).
pub fn parse_keyboard_message(packet: &[u8]) -> Result<KeyboardMessage, ParseError> {
    let (kind, p) = U32::read_from_prefix(packet).map_err(|_| ParseError::Truncated {
        kind: u32::MAX,
        len: packet.len(),
    })?;
    let kind = kind.get();
    let truncated = ParseError::Truncated { kind, len: p.len() };
    Ok(match kind {
        kbd_msg::PROTOCOL_RESPONSE => {
            let (status, _) = U32::read_from_prefix(p).map_err(|_| truncated)?;
            KeyboardMessage::ProtocolResponse {
                accepted: status.get() & 1 != 0,
            }
        }
        kbd_msg::EVENT => {
            let (e, _) = KbdEvent::read_from_prefix(packet).map_err(|_| truncated)?;
            KeyboardMessage::Event(crate::keys::KeyEvent {
                make_code: e.make_code.get(),
                flags: crate::keys::KeyFlags::from_bits_retain(e.info.get()),
            })
        }
        other => KeyboardMessage::Other(other),
    })
}

/// The mouse message of `kind` with `payload`: pipe header (size 8 + payload) and synthhid
/// header (size = payload).
pub fn mouse_headers(kind: u32, payload_len: usize) -> [u8; 16] {
    let mut out = [0u8; 16];
    let pipe = PipeHeader::data((8 + payload_len) as u32);
    let h = SynthhidHeader {
        kind: kind.into(),
        size: (payload_len as u32).into(),
    };
    out[..8].copy_from_slice(pipe.as_bytes());
    out[8..].copy_from_slice(h.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device_info(pipe_extra: usize, rd: &[u8], rd_len: u16, b_length: u8) -> [u8; 300] {
        let mut b = [0u8; 300];
        let payload = 32 + 9 + rd.len();
        b[..16].copy_from_slice(&mouse_headers(mouse_msg::INITIAL_DEVICE_INFO, payload));
        b[4..8].copy_from_slice(&((8 + payload + pipe_extra) as u32).to_le_bytes());
        b[16] = 32;
        let hid = HidDescriptor {
            b_length,
            b_descriptor_type: 0x21,
            bcd_hid: 0x0101.into(),
            country: 0,
            num_descriptors: 1,
            class_descriptor_type: 0x22,
            class_descriptor_length: rd_len.into(),
        };
        b[48..57].copy_from_slice(hid.as_bytes());
        b[57..57 + rd.len()].copy_from_slice(rd);
        b
    }

    #[test]
    fn device_info_length_from_hid_descriptor() {
        // OpenVMM style: the pipe carries more than the synthhid size says.
        let b = device_info(60, &[7; 67], 67, 9);
        match parse_mouse_message(&b[..16 + 41 + 67 + 60]).unwrap() {
            MouseMessage::DeviceInfo {
                report_descriptor, ..
            } => assert_eq!(report_descriptor.len(), 67),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hostile_device_info() {
        let b = device_info(0, &[7; 10], 200, 9);
        assert!(matches!(
            parse_mouse_message(&b[..16 + 41 + 10]),
            Err(ParseError::ReportDescriptorTruncated { .. })
        ));
        let b = device_info(0, &[7; 10], 10, 3);
        assert_eq!(
            parse_mouse_message(&b[..67]),
            Err(ParseError::BadHidDescriptor)
        );
        let b = device_info(0, &[7; 10], 10, 250);
        assert!(parse_mouse_message(&b[..67]).is_err());
        // A HID descriptor running past the message with a zero-length report descriptor
        // (fuzz input): truncated, not an empty report descriptor.
        let b = device_info(0, &[], 0, 250);
        assert_eq!(
            parse_mouse_message(&b[..57]),
            Err(ParseError::Truncated {
                kind: mouse_msg::INITIAL_DEVICE_INFO,
                len: 41
            })
        );
        for n in 0..80 {
            let _ = parse_mouse_message(&b[..n]);
        }
        // input report longer than the pipe
        let mut r = [0u8; 24];
        r[..16].copy_from_slice(&mouse_headers(mouse_msg::INPUT_REPORT, 7));
        r[12] = 100;
        assert!(parse_mouse_message(&r[..23]).is_err());
    }

    #[test]
    fn keyboard_messages() {
        assert_eq!(
            parse_keyboard_message(&[2, 0, 0, 0, 1, 0, 0, 0]),
            Ok(KeyboardMessage::ProtocolResponse { accepted: true })
        );
        assert!(parse_keyboard_message(&[3, 0, 0, 0, 0x1E, 0]).is_err());
        assert!(parse_keyboard_message(&[2, 0]).is_err());
    }
}
