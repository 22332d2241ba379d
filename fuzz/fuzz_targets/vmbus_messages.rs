//! `parse_host_message` on arbitrary bytes at every negotiated version (none, 0.13 and every
//! candidate), plus offer validation (`OfferInfo::from_wire`) of whatever parses as an offer.
//!
//! Invariants beyond "no panic":
//! - the error class follows the length: < 8 bytes is `NoHeader`, > 240 is `TooLong`;
//! - parsing is a pure function of the bytes (same answer twice), and the variant follows the
//!   header's type word;
//! - the fields returned are the bytes at the protocol offsets (relid, handle, status, version
//!   answer), and an offer parsed for a pre-1.1 version has no connection id or dedicated
//!   interrupt, whatever the host sent;
//! - an accepted offer has a relid in 1..2048 and a monitor id only if allocated and in range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmbus_guest::OfferInfo;
use vmbus_guest::protocol::{
    CANDIDATE_VERSIONS, HostMessage, MAX_CHANNELS, MAX_MESSAGE_SIZE, MessageType, ParseError,
    VmbusVersion, parse_host_message,
};

fuzz_target!(|data: &[u8]| run(data));

fn word(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn run(data: &[u8]) {
    let versions = core::iter::once(None)
        .chain(core::iter::once(Some(VmbusVersion::V0_13)))
        .chain(CANDIDATE_VERSIONS.iter().copied().map(Some))
        .chain(core::iter::once(Some(VmbusVersion(u32::MAX))));
    for v in versions {
        let r = parse_host_message(data, v);
        assert_eq!(r, parse_host_message(data, v), "not deterministic");
        let msg = match r {
            Err(ParseError::NoHeader { len }) => {
                assert!(data.len() < 8 && len == data.len());
                continue;
            }
            Err(ParseError::TooLong { len }) => {
                assert!(data.len() > MAX_MESSAGE_SIZE && len == data.len());
                continue;
            }
            Err(ParseError::TooShort {
                message_type,
                len,
                min,
            }) => {
                assert!(data.len() >= 8 && data.len() <= MAX_MESSAGE_SIZE);
                assert_eq!(message_type.0, word(data, 0));
                assert!(len == data.len() && len < min);
                continue;
            }
            Ok(m) => m,
        };
        assert!(data.len() >= 8 && data.len() <= MAX_MESSAGE_SIZE);
        let ty = MessageType(word(data, 0));
        match msg {
            HostMessage::Offer(o) => {
                assert_eq!(ty, MessageType::OFFERCHANNEL);
                assert_eq!(o.relid, word(data, 184));
                if v.is_some_and(|v| v < VmbusVersion::V1_1) {
                    assert_eq!((o.connection_id, o.is_dedicated_interrupt), (0, 0));
                } else {
                    assert_eq!(o.connection_id, word(data, 192));
                }
                for ver in [VmbusVersion::V1_1, VmbusVersion::V6_0] {
                    if let Ok(info) = OfferInfo::from_wire(&o, ver) {
                        assert!(info.relid >= 1 && info.relid < MAX_CHANNELS);
                        assert_eq!(info.relid, o.relid);
                        if let Some(id) = info.monitor_id {
                            assert!(o.monitor_allocated != 0 && id == o.monitor_id);
                        }
                        assert_eq!(info.is_primary(), o.subchannel_index == 0);
                    } else {
                        assert!(o.relid == 0 || o.relid >= MAX_CHANNELS);
                    }
                }
            }
            HostMessage::Rescind { relid } => {
                assert_eq!(ty, MessageType::RESCIND_CHANNELOFFER);
                assert_eq!(relid, word(data, 8));
            }
            HostMessage::AllOffersDelivered => assert_eq!(ty, MessageType::ALLOFFERS_DELIVERED),
            HostMessage::OpenResult(r) => {
                assert_eq!(ty, MessageType::OPENCHANNEL_RESULT);
                assert_eq!(
                    (r.relid, r.open_id, r.status),
                    (word(data, 8), word(data, 12), word(data, 16))
                );
            }
            HostMessage::GpadlCreated(g) => {
                assert_eq!(ty, MessageType::GPADL_CREATED);
                assert_eq!(
                    (g.relid, g.gpadl_handle, g.status),
                    (word(data, 8), word(data, 12), word(data, 16))
                );
            }
            HostMessage::GpadlTorndown { handle } => {
                assert_eq!(ty, MessageType::GPADL_TORNDOWN);
                assert_eq!(handle, word(data, 8));
            }
            HostMessage::VersionResponse(r) => {
                assert_eq!(ty, MessageType::VERSION_RESPONSE);
                assert_eq!(r.base.version_supported, data[8]);
                assert_eq!(r.base.connection_state, data[9]);
                assert_eq!(r.base.selected_version_or_connection_id, word(data, 12));
                assert_eq!(r.supported_features.is_some(), data.len() >= 20);
                assert_eq!(r.server_monitor_pages.is_some(), data.len() >= 40);
            }
            HostMessage::UnloadResponse => assert_eq!(ty, MessageType::UNLOAD_RESPONSE),
            HostMessage::ModifyChannelResponse(m) => {
                assert_eq!(ty, MessageType::MODIFYCHANNEL_RESPONSE);
                assert_eq!(m.relid, word(data, 8));
            }
            HostMessage::Unknown(t) => {
                assert_eq!(t, ty);
                assert!(
                    ![1u32, 2, 4, 6, 10, 12, 15, 17, 24].contains(&t.0),
                    "handled type {t:?} reported unknown"
                );
            }
        }
    }
}
