//! Validation and copy-out of host→guest channel messages.

#![forbid(unsafe_code)]

use super::{
    FeatureFlags, GpadlCreated, GpadlTorndown, MAX_MESSAGE_SIZE, MessageHeader, MessageType,
    ModifyChannelResponse, OFFER_CHANNEL_SIZE, OFFER_CHANNEL_SIZE_V0_13, OfferChannel, OpenResult,
    RescindChannelOffer, VersionResponse, VersionResponseWithFeatures,
    VersionResponseWithMonitorPages, VmbusVersion,
};
use core::fmt;
use core::mem::size_of;
use zerocopy::FromBytes;

/// A VERSION_RESPONSE with the optional 6.0 parts present only if the host sent them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionResponseInfo {
    /// The 16-byte part every host sends.
    pub base: VersionResponse,
    /// Granted features (@16), present if the message is at least 20 bytes. Only meaningful
    /// when 6.0 was requested.
    pub supported_features: Option<FeatureFlags>,
    /// Server monitor pages (parent→child @24, child→parent @32), present if the message is at
    /// least 40 bytes. Only meaningful when SERVER_SPECIFIED_MONITOR_PAGES was granted.
    pub server_monitor_pages: Option<(u64, u64)>,
}

/// A host→guest channel message, copied out of the SynIC slot and size-checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostMessage {
    /// OFFERCHANNEL; from a < 1.1 host the dedicated-interrupt and connection-id fields are 0.
    Offer(OfferChannel),
    /// RESCIND_CHANNELOFFER for `relid`.
    Rescind {
        /// The rescinded channel.
        relid: u32,
    },
    /// ALLOFFERS_DELIVERED.
    AllOffersDelivered,
    /// OPENCHANNEL_RESULT.
    OpenResult(OpenResult),
    /// GPADL_CREATED.
    GpadlCreated(GpadlCreated),
    /// GPADL_TORNDOWN for `handle`.
    GpadlTorndown {
        /// The GPADL handle.
        handle: u32,
    },
    /// VERSION_RESPONSE.
    VersionResponse(VersionResponseInfo),
    /// UNLOAD_RESPONSE.
    UnloadResponse,
    /// MODIFYCHANNEL_RESPONSE.
    ModifyChannelResponse(ModifyChannelResponse),
    /// A message type the guest does not handle (or a guest→host type sent by the host); the
    /// caller still EOMs the slot.
    Unknown(MessageType),
}

/// Why a host message was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The payload is shorter than the 8-byte VMBus header.
    NoHeader {
        /// Payload length.
        len: usize,
    },
    /// The payload is longer than a SynIC message can carry (240 bytes).
    TooLong {
        /// Payload length.
        len: usize,
    },
    /// The payload is shorter than the minimum for its type (at the negotiated version).
    TooShort {
        /// Message type from the header.
        message_type: MessageType,
        /// Payload length.
        len: usize,
        /// Minimum length for this type.
        min: usize,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::NoHeader { len } => {
                write!(f, "VMBus message of {len} bytes has no 8-byte header")
            }
            ParseError::TooLong { len } => {
                write!(f, "VMBus message of {len} bytes exceeds {MAX_MESSAGE_SIZE}")
            }
            ParseError::TooShort {
                message_type,
                len,
                min,
            } => {
                write!(
                    f,
                    "VMBus {message_type} of {len} bytes, need at least {min}"
                )
            }
        }
    }
}

impl core::error::Error for ParseError {}

/// Copies a `T` from the front of `payload`, or reports the type's minimum size.
fn read<T: FromBytes>(payload: &[u8], message_type: MessageType) -> Result<T, ParseError> {
    T::read_from_prefix(payload)
        .map(|(v, _)| v)
        .map_err(|_| ParseError::TooShort {
            message_type,
            len: payload.len(),
            min: size_of::<T>(),
        })
}

/// Parses one host→guest VMBus message (the SynIC message payload, `payload_size` bytes).
///
/// `negotiated` is the agreed version, `None` while negotiating. Every field is copied out, so
/// later host writes to the slot cannot change the result. Trailing bytes beyond a type's size
/// are ignored (hosts may send a full 240-byte payload). Never panics.
pub fn parse_host_message(
    payload: &[u8],
    negotiated: Option<VmbusVersion>,
) -> Result<HostMessage, ParseError> {
    if payload.len() > MAX_MESSAGE_SIZE {
        return Err(ParseError::TooLong { len: payload.len() });
    }
    let Ok((header, _)) = MessageHeader::read_from_prefix(payload) else {
        return Err(ParseError::NoHeader { len: payload.len() });
    };
    let t = header.message_type;
    Ok(match t {
        MessageType::OFFERCHANNEL => HostMessage::Offer(parse_offer(payload, negotiated)?),
        MessageType::RESCIND_CHANNELOFFER => HostMessage::Rescind {
            relid: read::<RescindChannelOffer>(payload, t)?.relid,
        },
        MessageType::ALLOFFERS_DELIVERED => HostMessage::AllOffersDelivered,
        MessageType::OPENCHANNEL_RESULT => HostMessage::OpenResult(read(payload, t)?),
        MessageType::GPADL_CREATED => HostMessage::GpadlCreated(read(payload, t)?),
        MessageType::GPADL_TORNDOWN => HostMessage::GpadlTorndown {
            handle: read::<GpadlTorndown>(payload, t)?.gpadl_handle,
        },
        MessageType::VERSION_RESPONSE => {
            let base: VersionResponse = read(payload, t)?;
            let supported_features = VersionResponseWithFeatures::read_from_prefix(payload)
                .ok()
                .map(|(v, _)| FeatureFlags::from_bits_retain(v.supported_features));
            let server_monitor_pages = VersionResponseWithMonitorPages::read_from_prefix(payload)
                .ok()
                .map(|(v, _)| {
                    (
                        v.parent_to_child_monitor_page_gpa,
                        v.child_to_parent_monitor_page_gpa,
                    )
                });
            HostMessage::VersionResponse(VersionResponseInfo {
                base,
                supported_features,
                server_monitor_pages,
            })
        }
        MessageType::UNLOAD_RESPONSE => HostMessage::UnloadResponse,
        MessageType::MODIFYCHANNEL_RESPONSE => {
            HostMessage::ModifyChannelResponse(read(payload, t)?)
        }
        other => HostMessage::Unknown(other),
    })
}

/// OFFERCHANNEL: 196 bytes, or 190 when the negotiated version predates 1.1 (the missing
/// dedicated-interrupt and connection-id fields read as zero, and are forced to zero for such
/// a version even if the host sent them).
fn parse_offer(
    payload: &[u8],
    negotiated: Option<VmbusVersion>,
) -> Result<OfferChannel, ParseError> {
    let pre_1_1 = negotiated.is_some_and(|v| v < VmbusVersion::V1_1);
    let min = if pre_1_1 {
        OFFER_CHANNEL_SIZE_V0_13
    } else {
        OFFER_CHANNEL_SIZE
    };
    if payload.len() < min {
        return Err(ParseError::TooShort {
            message_type: MessageType::OFFERCHANNEL,
            len: payload.len(),
            min,
        });
    }
    let mut buf = [0u8; OFFER_CHANNEL_SIZE];
    let n = if pre_1_1 {
        OFFER_CHANNEL_SIZE_V0_13
    } else {
        OFFER_CHANNEL_SIZE
    };
    buf[..n].copy_from_slice(&payload[..n]);
    OfferChannel::read_from_bytes(&buf).map_err(|_| ParseError::TooShort {
        message_type: MessageType::OFFERCHANNEL,
        len: payload.len(),
        min,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DeviceClass, Guid, OfferFlags};
    use zerocopy::{FromZeros, IntoBytes};

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
    }

    #[test]
    fn never_panics_on_random_input() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let versions = [
            None,
            Some(VmbusVersion::V0_13),
            Some(VmbusVersion::V1_1),
            Some(VmbusVersion::V6_0),
        ];
        for ty in 0..=31u32 {
            for len in 0..=MAX_MESSAGE_SIZE + 1 {
                for _ in 0..4 {
                    let mut buf = [0u8; MAX_MESSAGE_SIZE + 1];
                    for b in buf.iter_mut() {
                        *b = rng.next() as u8;
                    }
                    buf[..4].copy_from_slice(&ty.to_le_bytes());
                    for v in versions {
                        let r = parse_host_message(&buf[..len], v);
                        if len < 8 {
                            assert_eq!(r, Err(ParseError::NoHeader { len }));
                        } else if len > MAX_MESSAGE_SIZE {
                            assert_eq!(r, Err(ParseError::TooLong { len }));
                        }
                    }
                }
            }
        }
    }

    fn offer_bytes() -> [u8; 196] {
        let mut o = OfferChannel::new_zeroed();
        o.header = MessageHeader::new(MessageType::OFFERCHANNEL);
        o.interface_type = Guid::from_str_const("f8615163-df3e-46c5-913f-f2d2f965ed0e");
        o.relid = 14;
        o.flags = OfferFlags::ENUMERATE_DEVICE_INTERFACE.bits();
        o.monitor_id = 3;
        o.monitor_allocated = 1;
        o.is_dedicated_interrupt = 1;
        o.connection_id = 0x1000e;
        let mut b = [0u8; 196];
        b.copy_from_slice(o.as_bytes());
        b
    }

    #[test]
    fn offer_sizes_by_version() {
        let b = offer_bytes();
        let Ok(HostMessage::Offer(o)) = parse_host_message(&b, Some(VmbusVersion::V5_3)) else {
            panic!("offer not parsed");
        };
        assert_eq!(
            DeviceClass::from_interface_type(&o.interface_type),
            DeviceClass::Network
        );
        assert_eq!((o.relid, o.connection_id, o.monitor_id), (14, 0x1000e, 3));
        assert!(o.has_monitor() && o.dedicated_interrupt());
        assert_eq!(
            parse_host_message(&b[..190], Some(VmbusVersion::V1_1)),
            Err(ParseError::TooShort {
                message_type: MessageType::OFFERCHANNEL,
                len: 190,
                min: 196
            })
        );
        assert!(parse_host_message(&b[..190], None).is_err());
        let Ok(HostMessage::Offer(old)) = parse_host_message(&b[..190], Some(VmbusVersion::V0_13))
        else {
            panic!("0.13 offer not parsed");
        };
        assert_eq!(
            (old.relid, old.connection_id, old.is_dedicated_interrupt),
            (14, 0, 0)
        );
        let Ok(HostMessage::Offer(old)) = parse_host_message(&b, Some(VmbusVersion::V0_13)) else {
            panic!("0.13 offer not parsed");
        };
        assert_eq!(old.connection_id, 0);
    }

    #[test]
    fn version_response_forms() {
        let mut r = VersionResponseWithMonitorPages::new_zeroed();
        r.base.base.header = MessageHeader::new(MessageType::VERSION_RESPONSE);
        r.base.base.version_supported = 1;
        r.base.base.selected_version_or_connection_id = 4;
        r.base.supported_features = 0x47;
        r.parent_to_child_monitor_page_gpa = 0x1000;
        r.child_to_parent_monitor_page_gpa = 0x2000;
        let b = r.as_bytes();
        let parse = |len| match parse_host_message(&b[..len], None) {
            Ok(HostMessage::VersionResponse(v)) => v,
            other => panic!("{other:?}"),
        };
        let v16 = parse(16);
        assert_eq!(
            (v16.base.version_supported, v16.supported_features),
            (1, None)
        );
        let v20 = parse(20);
        assert_eq!(v20.supported_features.map(|f| f.bits()), Some(0x47));
        assert_eq!(v20.server_monitor_pages, None);
        assert_eq!(parse(40).server_monitor_pages, Some((0x1000, 0x2000)));
        assert!(matches!(
            parse_host_message(&b[..15], None),
            Err(ParseError::TooShort { min: 16, .. })
        ));
    }

    #[test]
    fn small_host_messages() {
        let mut b = [0u8; 20];
        b[0] = 12;
        b[8] = 0x10;
        assert_eq!(
            parse_host_message(&b[..12], None),
            Ok(HostMessage::GpadlTorndown { handle: 0x10 })
        );
        assert!(parse_host_message(&b[..11], None).is_err());
        b[0] = 2;
        assert_eq!(
            parse_host_message(&b[..12], None),
            Ok(HostMessage::Rescind { relid: 0x10 })
        );
        b[0] = 4;
        assert_eq!(
            parse_host_message(&b[..8], None),
            Ok(HostMessage::AllOffersDelivered)
        );
        b[0] = 17;
        assert_eq!(
            parse_host_message(&b[..8], None),
            Ok(HostMessage::UnloadResponse)
        );
        b[0] = 6;
        b[16] = 1;
        let Ok(HostMessage::OpenResult(r)) = parse_host_message(&b, None) else {
            panic!()
        };
        assert_eq!((r.relid, r.status), (0x10, 1));
        b[0] = 99;
        assert_eq!(
            parse_host_message(&b, None),
            Ok(HostMessage::Unknown(MessageType(99)))
        );
        b[0] = 5;
        assert_eq!(
            parse_host_message(&b, None),
            Ok(HostMessage::Unknown(MessageType::OPENCHANNEL))
        );
    }
}
