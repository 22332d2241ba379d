//! VMBus control-plane wire format: the messages the guest and the host's channel manager
//! exchange over the SynIC message connection (vmbus-core §5), GPADL descriptors (§6), the
//! monitor page (§8.2) and the device class GUIDs offers carry (devices §1).
//!
//! Every message is a `#[repr(C)]` zerocopy struct whose size and field offsets are checked at
//! compile time against the protocol tables. Guest→host messages are serialised with
//! [`zerocopy::IntoBytes::as_bytes`]; host→guest messages are copied out and validated by
//! [`parse_host_message`]. The layout assumes a little-endian target (every Hyper-V guest
//! architecture, x86_64 and aarch64, is little-endian).

#![forbid(unsafe_code)]

#[cfg(target_endian = "big")]
compile_error!("the VMBus wire structs assume a little-endian target");

mod device_class;
mod flags;
mod gpadl;
mod guid;
mod message_type;
mod messages;
mod monitor;
mod offer;
mod parse;
pub mod pipe;
mod version;

pub use device_class::{DEVICE_CLASSES, DeviceClass};
pub use flags::{FeatureFlags, OfferFlags};
pub use gpadl::{
    GPADL_BODY_FIXED_SIZE, GPADL_HEADER_FIXED_SIZE, GpaRange, GpadlBody, GpadlHeader,
    PFNS_PER_GPADL_BODY, PFNS_PER_GPADL_HEADER, WirePfn, gpadl_body_messages_needed,
    gpadl_range_buflen,
};
pub use guid::Guid;
pub use message_type::MessageType;
pub use messages::{
    AllOffersDelivered, CloseChannel, GpadlCreated, GpadlTeardown, GpadlTorndown, InitiateContact,
    InitiateContactWithClientId, MessageHeader, ModifyChannel, ModifyChannelResponse, OpenChannel,
    OpenChannelExtended, OpenResult, RelidReleased, RequestOffers, RescindChannelOffer, Unload,
    UnloadResponse, VersionResponse, VersionResponseWithFeatures, VersionResponseWithMonitorPages,
};
pub use monitor::{
    MONITOR_GROUPS, MONITOR_IDS_PER_GROUP, MonitorPage, MonitorParameter, MonitorTriggerGroup,
};
pub use offer::{OFFER_CHANNEL_SIZE, OFFER_CHANNEL_SIZE_V0_13, OfferChannel, USER_DEFINED_SIZE};
pub use parse::{HostMessage, ParseError, VersionResponseInfo, parse_host_message};
pub use version::{
    CANDIDATE_VERSIONS, EVENT_CONNECTION_ID, MESSAGE_CONNECTION_ID,
    MESSAGE_CONNECTION_ID_MULTI_CLIENT, MONITOR_CONNECTION_ID, VmbusVersion,
    message_connection_id_for,
};

/// Largest VMBus message a SynIC message slot carries: 256-byte slot minus 16-byte header.
pub const MAX_MESSAGE_SIZE: usize = 240;

/// Highest number of channels (relids, and host→guest event flags in SIEFP slot 2) Hyper-V
/// supports: the event-flag bitmap of one SINT holds 2048 bits.
pub const MAX_CHANNELS: u32 = 2048;

/// SynIC message type (in the SynIC message header, not the VMBus header) that carries VMBus
/// channel-management messages in both directions.
pub const SYNIC_MESSAGE_TYPE_CHANNEL: u32 = 1;

/// SINT on which Linux and UEFI ask the host to deliver VMBus messages and channel events.
pub const VMBUS_MESSAGE_SINT: u8 = 2;
