//! Fixed-size VMBus channel messages other than offers and GPADLs (vmbus-core §5.3).
//! Sizes include the 8-byte [`MessageHeader`]; offsets in the asserts are the protocol's.

#![forbid(unsafe_code)]

use super::{Guid, MessageType};
use core::mem::{offset_of, size_of};
use static_assertions::const_assert_eq;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The 8-byte header every VMBus channel message starts with: type u32 @0, padding u32 @4 (0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MessageHeader {
    /// Message type.
    pub message_type: MessageType,
    /// Must be zero.
    pub padding: u32,
}
const_assert_eq!(size_of::<MessageHeader>(), 8);

impl MessageHeader {
    /// A header for `message_type` with zero padding.
    pub const fn new(message_type: MessageType) -> Self {
        Self {
            message_type,
            padding: 0,
        }
    }
}

macro_rules! header_only {
    ($(#[$doc:meta])* $name:ident, $ty:ident) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
        pub struct $name {
            /// Header with the message type.
            pub header: MessageHeader,
        }
        const_assert_eq!(size_of::<$name>(), 8);
        impl $name {
            /// The message, ready to post.
            pub const fn new() -> Self {
                Self { header: MessageHeader::new(MessageType::$ty) }
            }
        }
        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }
    };
}

macro_rules! relid_only {
    ($(#[$doc:meta])* $name:ident, $ty:ident) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
        pub struct $name {
            /// Header with the message type.
            pub header: MessageHeader,
            /// Channel relid @8.
            pub relid: u32,
        }
        const_assert_eq!(size_of::<$name>(), 12);
        const_assert_eq!(offset_of!($name, relid), 8);
        impl $name {
            /// The message for channel `relid`.
            pub const fn new(relid: u32) -> Self {
                Self { header: MessageHeader::new(MessageType::$ty), relid }
            }
        }
    };
}

header_only!(
    /// REQUESTOFFERS (3, G→H): ask for all offers; send exactly once per connection.
    RequestOffers, REQUESTOFFERS
);
header_only!(
    /// ALLOFFERS_DELIVERED (4, H→G): the initial burst of offers is complete.
    AllOffersDelivered, ALLOFFERS_DELIVERED
);
header_only!(
    /// UNLOAD (16, G→H): disconnect from the host's channel manager.
    Unload, UNLOAD
);
header_only!(
    /// UNLOAD_RESPONSE (17, H→G, ≥ 1.1): the host finished the unload.
    UnloadResponse, UNLOAD_RESPONSE
);
relid_only!(
    /// RESCIND_CHANNELOFFER (2, H→G): the channel is being removed.
    RescindChannelOffer, RESCIND_CHANNELOFFER
);
relid_only!(
    /// CLOSECHANNEL (7, G→H): close an open channel; no reply.
    CloseChannel, CLOSECHANNEL
);
relid_only!(
    /// RELID_RELEASED (13, G→H): the guest is done with a rescinded, closed channel.
    RelidReleased, RELID_RELEASED
);

/// INITIATE_CONTACT (14, G→H), 40-byte form: propose a protocol version.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct InitiateContact {
    /// Header (INITIATE_CONTACT).
    pub header: MessageHeader,
    /// Requested version word @8.
    pub version_requested: u32,
    /// VP that receives control messages @12 (honoured from 3.0).
    pub target_vp: u32,
    /// @16: < 5.0 the legacy interrupt page GPA; ≥ 5.0 byte 0 = target SINT, byte 1 = target
    /// VTL (≥ 5.1), bytes 2–3 reserved, bytes 4–7 = requested [`super::FeatureFlags`] (6.0).
    /// Use [`Self::target_info`] to encode it.
    pub interrupt_page_or_target_info: u64,
    /// Parent→child monitor page GPA @24 (0 or non-zero together with the other).
    pub parent_to_child_monitor_page_gpa: u64,
    /// Child→parent monitor page GPA @32.
    pub child_to_parent_monitor_page_gpa: u64,
}
const_assert_eq!(size_of::<InitiateContact>(), 40);
const_assert_eq!(offset_of!(InitiateContact, version_requested), 8);
const_assert_eq!(offset_of!(InitiateContact, target_vp), 12);
const_assert_eq!(
    offset_of!(InitiateContact, interrupt_page_or_target_info),
    16
);
const_assert_eq!(
    offset_of!(InitiateContact, parent_to_child_monitor_page_gpa),
    24
);
const_assert_eq!(
    offset_of!(InitiateContact, child_to_parent_monitor_page_gpa),
    32
);

impl InitiateContact {
    /// Encodes the ≥ 5.0 meaning of @16: target SINT, target VTL and 6.0 feature flags.
    pub const fn target_info(sint: u8, vtl: u8, features: u32) -> u64 {
        sint as u64 | (vtl as u64) << 8 | (features as u64) << 32
    }

    /// Target SINT (byte @16), meaningful from 5.0.
    pub const fn target_sint(&self) -> u8 {
        self.interrupt_page_or_target_info as u8
    }

    /// Target VTL (byte @17), meaningful from 5.1.
    pub const fn target_vtl(&self) -> u8 {
        (self.interrupt_page_or_target_info >> 8) as u8
    }

    /// Requested feature flags (u32 @20), meaningful from 6.0.
    pub const fn feature_flags(&self) -> u32 {
        (self.interrupt_page_or_target_info >> 32) as u32
    }
}

/// INITIATE_CONTACT (14, G→H), 56-byte form: 6.0 with the CLIENT_ID feature requested.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct InitiateContactWithClientId {
    /// The 40-byte base message.
    pub contact: InitiateContact,
    /// Client id GUID @40.
    pub client_id: Guid,
}
const_assert_eq!(size_of::<InitiateContactWithClientId>(), 56);
const_assert_eq!(offset_of!(InitiateContactWithClientId, client_id), 40);

/// VERSION_RESPONSE (15, H→G), 16-byte form every host sends.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VersionResponse {
    /// Header (VERSION_RESPONSE).
    pub header: MessageHeader,
    /// @8: non-zero if the requested version is accepted; 0 → try a lower one.
    pub version_supported: u8,
    /// @9: 0 success, 1 failed low resources, 2 failed unknown (valid when supported and the
    /// request was ≥ 2.4).
    pub connection_state: u8,
    /// @10: padding.
    pub padding: u16,
    /// @12: ≥ 5.0 the message connection id to use from now on; older hosts: selected version.
    pub selected_version_or_connection_id: u32,
}
const_assert_eq!(size_of::<VersionResponse>(), 16);
const_assert_eq!(offset_of!(VersionResponse, version_supported), 8);
const_assert_eq!(offset_of!(VersionResponse, connection_state), 9);
const_assert_eq!(
    offset_of!(VersionResponse, selected_version_or_connection_id),
    12
);

/// VERSION_RESPONSE, 20-byte 6.0 form with the granted feature flags.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VersionResponseWithFeatures {
    /// The 16-byte base.
    pub base: VersionResponse,
    /// @16: supported [`super::FeatureFlags`]; intersect with the requested set.
    pub supported_features: u32,
}
const_assert_eq!(size_of::<VersionResponseWithFeatures>(), 20);
const_assert_eq!(
    offset_of!(VersionResponseWithFeatures, supported_features),
    16
);

/// VERSION_RESPONSE, 40-byte 6.0 form with server-specified monitor pages.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VersionResponseWithMonitorPages {
    /// The 20-byte form.
    pub base: VersionResponseWithFeatures,
    /// @20: padding.
    pub padding: u32,
    /// @24: server-provided parent→child monitor page GPA (may be 0).
    pub parent_to_child_monitor_page_gpa: u64,
    /// @32: server-provided child→parent monitor page GPA.
    pub child_to_parent_monitor_page_gpa: u64,
}
const_assert_eq!(size_of::<VersionResponseWithMonitorPages>(), 40);
const_assert_eq!(
    offset_of!(
        VersionResponseWithMonitorPages,
        parent_to_child_monitor_page_gpa
    ),
    24
);
const_assert_eq!(
    offset_of!(
        VersionResponseWithMonitorPages,
        child_to_parent_monitor_page_gpa
    ),
    32
);

/// OPENCHANNEL (5, G→H), 148-byte form: open a channel whose rings a GPADL covers.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct OpenChannel {
    /// Header (OPENCHANNEL).
    pub header: MessageHeader,
    /// Channel relid @8.
    pub relid: u32,
    /// Open id @12, echoed in OPENCHANNEL_RESULT.
    pub open_id: u32,
    /// GPADL covering both rings @16.
    pub ring_gpadl_handle: u32,
    /// Target VP for host→guest interrupts @20 (≥ 2.4; 0xFFFF_FFFF = none).
    pub target_vp: u32,
    /// @24: index of the first 4 KiB page of the host→guest (inbound) ring inside the GPADL.
    pub downstream_ring_page_offset: u32,
    /// @28: device-specific user data (usually zero).
    pub user_data: [u8; 120],
}
const_assert_eq!(size_of::<OpenChannel>(), 148);
const_assert_eq!(offset_of!(OpenChannel, relid), 8);
const_assert_eq!(offset_of!(OpenChannel, open_id), 12);
const_assert_eq!(offset_of!(OpenChannel, ring_gpadl_handle), 16);
const_assert_eq!(offset_of!(OpenChannel, target_vp), 20);
const_assert_eq!(offset_of!(OpenChannel, downstream_ring_page_offset), 24);
const_assert_eq!(offset_of!(OpenChannel, user_data), 28);

impl OpenChannel {
    /// Target VP value meaning "no host→guest interrupts".
    pub const TARGET_VP_NONE: u32 = 0xFFFF_FFFF;
}

/// OPENCHANNEL, 156-byte 6.0 form (GUEST_SPECIFIED_SIGNAL_PARAMETERS /
/// CHANNEL_INTERRUPT_REDIRECTION negotiated).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct OpenChannelExtended {
    /// The 148-byte base.
    pub open: OpenChannel,
    /// @148: connection id the guest will signal on.
    pub connection_id: u32,
    /// @152: event flag the host should set (default = relid).
    pub event_flag: u16,
    /// @154: bit 0 = redirect interrupt.
    pub flags: u16,
}
const_assert_eq!(size_of::<OpenChannelExtended>(), 156);
const_assert_eq!(offset_of!(OpenChannelExtended, connection_id), 148);
const_assert_eq!(offset_of!(OpenChannelExtended, event_flag), 152);
const_assert_eq!(offset_of!(OpenChannelExtended, flags), 154);

/// OPENCHANNEL_RESULT (6, H→G); match on (relid, open id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct OpenResult {
    /// Header (OPENCHANNEL_RESULT).
    pub header: MessageHeader,
    /// Channel relid @8.
    pub relid: u32,
    /// Open id @12 from OPENCHANNEL.
    pub open_id: u32,
    /// Status @16: 0 success, else an NTSTATUS-style failure.
    pub status: u32,
}
const_assert_eq!(size_of::<OpenResult>(), 20);
const_assert_eq!(offset_of!(OpenResult, relid), 8);
const_assert_eq!(offset_of!(OpenResult, open_id), 12);
const_assert_eq!(offset_of!(OpenResult, status), 16);

/// GPADL_CREATED (10, H→G): result of a GPADL_HEADER (+ BODYs).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GpadlCreated {
    /// Header (GPADL_CREATED).
    pub header: MessageHeader,
    /// Channel relid @8.
    pub relid: u32,
    /// GPADL handle @12.
    pub gpadl_handle: u32,
    /// Status @16: 0 success.
    pub status: u32,
}
const_assert_eq!(size_of::<GpadlCreated>(), 20);
const_assert_eq!(offset_of!(GpadlCreated, relid), 8);
const_assert_eq!(offset_of!(GpadlCreated, gpadl_handle), 12);
const_assert_eq!(offset_of!(GpadlCreated, status), 16);

/// GPADL_TEARDOWN (11, G→H): release a GPADL; wait for GPADL_TORNDOWN before reusing memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GpadlTeardown {
    /// Header (GPADL_TEARDOWN).
    pub header: MessageHeader,
    /// Channel relid @8.
    pub relid: u32,
    /// GPADL handle @12.
    pub gpadl_handle: u32,
}
const_assert_eq!(size_of::<GpadlTeardown>(), 16);
const_assert_eq!(offset_of!(GpadlTeardown, relid), 8);
const_assert_eq!(offset_of!(GpadlTeardown, gpadl_handle), 12);

/// GPADL_TORNDOWN (12, H→G): the host no longer maps the GPADL.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GpadlTorndown {
    /// Header (GPADL_TORNDOWN).
    pub header: MessageHeader,
    /// GPADL handle @8.
    pub gpadl_handle: u32,
}
const_assert_eq!(size_of::<GpadlTorndown>(), 12);
const_assert_eq!(offset_of!(GpadlTorndown, gpadl_handle), 8);

/// MODIFYCHANNEL (22, G→H, ≥ 4.1): move a channel's interrupt target VP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ModifyChannel {
    /// Header (MODIFYCHANNEL).
    pub header: MessageHeader,
    /// Channel relid @8.
    pub relid: u32,
    /// New target VP @12.
    pub target_vp: u32,
}
const_assert_eq!(size_of::<ModifyChannel>(), 16);
const_assert_eq!(offset_of!(ModifyChannel, relid), 8);
const_assert_eq!(offset_of!(ModifyChannel, target_vp), 12);

/// MODIFYCHANNEL_RESPONSE (24, H→G, ≥ 5.3): acknowledgement of MODIFYCHANNEL.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ModifyChannelResponse {
    /// Header (MODIFYCHANNEL_RESPONSE).
    pub header: MessageHeader,
    /// Channel relid @8.
    pub relid: u32,
    /// Status @12 (NTSTATUS, 0 success).
    pub status: i32,
}
const_assert_eq!(size_of::<ModifyChannelResponse>(), 16);
const_assert_eq!(offset_of!(ModifyChannelResponse, relid), 8);
const_assert_eq!(offset_of!(ModifyChannelResponse, status), 12);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{FeatureFlags, VmbusVersion};
    use zerocopy::FromZeros;

    #[test]
    fn initiate_contact_5_3_bytes() {
        let msg = InitiateContact {
            header: MessageHeader::new(MessageType::INITIATE_CONTACT),
            version_requested: VmbusVersion::V5_3.0,
            target_vp: 0,
            interrupt_page_or_target_info: InitiateContact::target_info(2, 0, 0),
            parent_to_child_monitor_page_gpa: 0x1234_5000,
            child_to_parent_monitor_page_gpa: 0x1234_6000,
        };
        #[rustfmt::skip]
        let expected: [u8; 40] = [
            14, 0, 0, 0, 0, 0, 0, 0,          // header: INITIATE_CONTACT
            0x03, 0, 0x05, 0,                 // @8 version 5.3
            0, 0, 0, 0,                       // @12 target VP 0
            2, 0, 0, 0,                       // @16 SINT 2, VTL 0, reserved
            0, 0, 0, 0,                       // @20 features (none before 6.0)
            0x00, 0x50, 0x34, 0x12, 0, 0, 0, 0, // @24 parent->child monitor page
            0x00, 0x60, 0x34, 0x12, 0, 0, 0, 0, // @32 child->parent monitor page
        ];
        assert_eq!(msg.as_bytes(), &expected);
        assert_eq!(msg.target_sint(), 2);
    }

    #[test]
    fn initiate_contact_6_0_with_client_id() {
        let mut msg = InitiateContactWithClientId::new_zeroed();
        msg.contact.header = MessageHeader::new(MessageType::INITIATE_CONTACT);
        msg.contact.version_requested = VmbusVersion::V6_0.0;
        let features = (FeatureFlags::CLIENT_ID | FeatureFlags::MODIFY_CONNECTION).bits();
        msg.contact.interrupt_page_or_target_info = InitiateContact::target_info(2, 1, features);
        msg.client_id = Guid::from_str_const("18dd3964-3e8a-4e42-86fa-c8e6b191ee0e");
        let b = msg.as_bytes();
        assert_eq!(b.len(), 56);
        assert_eq!(&b[16..24], &[2, 1, 0, 0, 0x0c, 0, 0, 0]);
        assert_eq!(&b[40..44], &[0x64, 0x39, 0xdd, 0x18]);
        assert_eq!(msg.contact.feature_flags(), 0x0c);
        assert_eq!(msg.contact.target_vtl(), 1);
    }

    #[test]
    fn open_channel_bytes() {
        let mut msg = OpenChannel::new_zeroed();
        msg.header = MessageHeader::new(MessageType::OPENCHANNEL);
        msg.relid = 7;
        msg.open_id = 7;
        msg.ring_gpadl_handle = 0xE1E10;
        msg.target_vp = 1;
        msg.downstream_ring_page_offset = 0x80;
        let b = msg.as_bytes();
        assert_eq!(b.len(), 148);
        #[rustfmt::skip]
        let head: [u8; 28] = [
            5, 0, 0, 0, 0, 0, 0, 0,
            7, 0, 0, 0,
            7, 0, 0, 0,
            0x10, 0x1e, 0x0e, 0,
            1, 0, 0, 0,
            0x80, 0, 0, 0,
        ];
        assert_eq!(&b[..28], &head);
        assert!(b[28..].iter().all(|&x| x == 0));
        let ext = OpenChannelExtended {
            open: msg,
            connection_id: 0x20,
            event_flag: 7,
            flags: 1,
        };
        assert_eq!(&ext.as_bytes()[148..], &[0x20, 0, 0, 0, 7, 0, 1, 0]);
    }

    #[test]
    fn small_messages_bytes() {
        assert_eq!(RequestOffers::new().as_bytes(), &[3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Unload::new().as_bytes(), &[16, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            CloseChannel::new(0x102).as_bytes(),
            &[7, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0]
        );
        let td = GpadlTeardown {
            header: MessageHeader::new(MessageType::GPADL_TEARDOWN),
            relid: 3,
            gpadl_handle: 0x0102_0304,
        };
        assert_eq!(
            td.as_bytes(),
            &[11, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 4, 3, 2, 1]
        );
    }
}
