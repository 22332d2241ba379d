//! The VMBus channel-message type in the first word of every message (vmbus-core §5.2).

#![forbid(unsafe_code)]

use core::fmt;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// VMBus channel-message type (u32 @0 of every message). Open: any value is representable, so
/// an unknown type from the host is carried, not rejected.
#[repr(transparent)]
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct MessageType(pub u32);

macro_rules! message_types {
    ($($(#[$doc:meta])* $name:ident = $val:expr;)*) => {
        impl MessageType {
            $($(#[$doc])* pub const $name: MessageType = MessageType($val);)*

            /// Protocol name of a known type (Linux spelling), `None` for an unknown value.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($val => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

message_types! {
    /// 0: invalid, never sent.
    INVALID = 0;
    /// 1: H→G channel offer.
    OFFERCHANNEL = 1;
    /// 2: H→G offer rescinded (hot remove).
    RESCIND_CHANNELOFFER = 2;
    /// 3: G→H request all offers (once per connection).
    REQUESTOFFERS = 3;
    /// 4: H→G end of the initial offer burst.
    ALLOFFERS_DELIVERED = 4;
    /// 5: G→H open a channel.
    OPENCHANNEL = 5;
    /// 6: H→G open result.
    OPENCHANNEL_RESULT = 6;
    /// 7: G→H close a channel (no reply).
    CLOSECHANNEL = 7;
    /// 8: G→H first message of a GPADL.
    GPADL_HEADER = 8;
    /// 9: G→H continuation PFNs of a GPADL.
    GPADL_BODY = 9;
    /// 10: H→G GPADL created (or failed).
    GPADL_CREATED = 10;
    /// 11: G→H tear a GPADL down.
    GPADL_TEARDOWN = 11;
    /// 12: H→G GPADL torn down; memory may be reused.
    GPADL_TORNDOWN = 12;
    /// 13: G→H relid released after a rescind.
    RELID_RELEASED = 13;
    /// 14: G→H propose a version.
    INITIATE_CONTACT = 14;
    /// 15: H→G answer to INITIATE_CONTACT.
    VERSION_RESPONSE = 15;
    /// 16: G→H disconnect.
    UNLOAD = 16;
    /// 17: H→G disconnect complete (≥ 1.1).
    UNLOAD_RESPONSE = 17;
    /// 18: G→H open reserved channel (kernel debugger, ≥ 4.0).
    OPEN_RESERVED_CHANNEL = 18;
    /// 19: G→H close reserved channel (≥ 4.0).
    CLOSE_RESERVED_CHANNEL = 19;
    /// 20: H→G reserved channel closed (≥ 4.0).
    CLOSE_RESERVED_RESPONSE = 20;
    /// 21: G→H hvsock connect request (≥ 4.0).
    TL_CONNECT_REQUEST = 21;
    /// 22: G→H move a channel's interrupt target VP (≥ 4.1).
    MODIFYCHANNEL = 22;
    /// 23: H→G hvsock connect failure (≥ 4.1).
    TL_CONNECT_RESULT = 23;
    /// 24: H→G MODIFYCHANNEL acknowledgement (≥ 5.3).
    MODIFYCHANNEL_RESPONSE = 24;
    /// 25: G→H change monitor pages (6.0 + MODIFY_CONNECTION).
    MODIFY_CONNECTION = 25;
    /// 26: H→G MODIFY_CONNECTION result.
    MODIFY_CONNECTION_RESPONSE = 26;
    /// 27: G→H pause (6.0 + PAUSE_RESUME, OpenVMM).
    PAUSE = 27;
    /// 28: H→G pause acknowledged.
    PAUSE_RESPONSE = 28;
    /// 29: G→H resume.
    RESUME = 29;
}

impl fmt::Debug for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "MessageType({})", self.0),
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::format;

    #[test]
    fn names() {
        assert_eq!(format!("{:?}", MessageType::OFFERCHANNEL), "OFFERCHANNEL");
        assert_eq!(format!("{:?}", MessageType(24)), "MODIFYCHANNEL_RESPONSE");
        assert_eq!(format!("{:?}", MessageType(30)), "MessageType(30)");
        assert!((0..=29).all(|t| MessageType(t).name().is_some()));
    }
}
