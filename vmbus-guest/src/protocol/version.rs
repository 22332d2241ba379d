//! VMBus protocol versions and the message connection ids they imply (vmbus-core §5.4–5.5).

#![forbid(unsafe_code)]

use core::fmt;

/// A VMBus protocol version word as carried in INITIATE_CONTACT @8: `(major << 16) | minor`.
///
/// Ordering compares the raw word, which orders versions correctly.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct VmbusVersion(pub u32);

impl VmbusVersion {
    /// 0.13 (WS2008). Not supported by this project (no per-channel connection id, shared
    /// interrupt page for every signal); listed for parsing and documentation only.
    pub const V0_13: Self = Self::new(0, 13);
    /// 1.1 (Win7 / WS2008 R2): offers gain connection id and dedicated-interrupt bit.
    pub const V1_1: Self = Self::new(1, 1);
    /// 2.4 (Win8 / WS2012): per-channel host→guest event flags, sub-channels.
    pub const V2_4: Self = Self::new(2, 4);
    /// 3.0 (Win8.1 / WS2012 R2): INITIATE_CONTACT target VP honoured, UNLOAD supported.
    pub const V3_0: Self = Self::new(3, 0);
    /// 4.0 (Win10): hvsock, reserved channels.
    pub const V4_0: Self = Self::new(4, 0);
    /// 4.1 (Win10 RS3): MODIFYCHANNEL, TL_CONNECT_RESULT.
    pub const V4_1: Self = Self::new(4, 1);
    /// 5.0 (Win10 RS3 "multi-client"): contact on connection id 4, target SINT, returned
    /// message connection id.
    pub const V5_0: Self = Self::new(5, 0);
    /// 5.1 (Win10 RS4): target VTL in INITIATE_CONTACT.
    pub const V5_1: Self = Self::new(5, 1);
    /// 5.2 (WS2019 / RS5): TL_CONNECT_REQUEST with silo id.
    pub const V5_2: Self = Self::new(5, 2);
    /// 5.3 (WS2022): MODIFYCHANNEL_RESPONSE.
    pub const V5_3: Self = Self::new(5, 3);
    /// 6.0 ("Copper"): feature flags, client id, OPENCHANNEL extension, server monitor pages.
    pub const V6_0: Self = Self::new(6, 0);

    /// Builds a version word from its major and minor parts.
    pub const fn new(major: u16, minor: u16) -> Self {
        Self(((major as u32) << 16) | minor as u32)
    }

    /// Major part (high 16 bits).
    pub const fn major(self) -> u16 {
        (self.0 >> 16) as u16
    }

    /// Minor part (low 16 bits).
    pub const fn minor(self) -> u16 {
        self.0 as u16
    }

    /// Whether this project can speak this version (1.1 or newer and one it knows).
    pub fn is_supported(self) -> bool {
        CANDIDATE_VERSIONS.contains(&self)
    }
}

impl fmt::Display for VmbusVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())
    }
}

/// Versions the guest offers in INITIATE_CONTACT, highest first; on rejection it tries the next.
/// Linux stops at 2.4; this project also accepts 1.1. 0.13 is not supported.
pub const CANDIDATE_VERSIONS: [VmbusVersion; 10] = [
    VmbusVersion::V6_0,
    VmbusVersion::V5_3,
    VmbusVersion::V5_2,
    VmbusVersion::V5_1,
    VmbusVersion::V5_0,
    VmbusVersion::V4_1,
    VmbusVersion::V4_0,
    VmbusVersion::V3_0,
    VmbusVersion::V2_4,
    VmbusVersion::V1_1,
];

/// VMBUS_MESSAGE_CONNECTION_ID: message connection for INITIATE_CONTACT below 5.0 and all
/// messages of a < 5.0 connection.
pub const MESSAGE_CONNECTION_ID: u32 = 1;
/// VMBUS_EVENT_CONNECTION_ID: legacy guest→host event connection (0.13).
pub const EVENT_CONNECTION_ID: u32 = 2;
/// VMBUS_MONITOR_CONNECTION_ID: legacy monitor connection.
pub const MONITOR_CONNECTION_ID: u32 = 3;
/// VMBUS_MESSAGE_CONNECTION_ID_4: "multi-client" connection INITIATE_CONTACT must use for
/// versions ≥ 5.0; afterwards the guest uses the id returned in VERSION_RESPONSE @12.
pub const MESSAGE_CONNECTION_ID_MULTI_CLIENT: u32 = 4;

/// Connection id on which to post INITIATE_CONTACT proposing `version`: 4 from 5.0, else 1.
pub const fn message_connection_id_for(version: VmbusVersion) -> u32 {
    if version.0 >= VmbusVersion::V5_0.0 {
        MESSAGE_CONNECTION_ID_MULTI_CLIENT
    } else {
        MESSAGE_CONNECTION_ID
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::format;

    #[test]
    fn words_and_display() {
        assert_eq!(VmbusVersion::V0_13.0, 0x0000_000D);
        assert_eq!(VmbusVersion::V5_3.0, 0x0005_0003);
        assert_eq!(VmbusVersion::V6_0.0, 0x0006_0000);
        assert_eq!(format!("{}", VmbusVersion::V5_3), "5.3");
        assert_eq!(format!("{}", VmbusVersion::V0_13), "0.13");
        assert_eq!(VmbusVersion::V2_4.major(), 2);
        assert_eq!(VmbusVersion::V2_4.minor(), 4);
    }

    #[test]
    fn candidates_descend_and_connection_ids() {
        assert!(CANDIDATE_VERSIONS.windows(2).all(|w| w[0] > w[1]));
        assert!(!VmbusVersion::V0_13.is_supported());
        assert!(VmbusVersion::V1_1.is_supported());
        assert_eq!(message_connection_id_for(VmbusVersion::V6_0), 4);
        assert_eq!(message_connection_id_for(VmbusVersion::V5_0), 4);
        assert_eq!(message_connection_id_for(VmbusVersion::V4_1), 1);
        assert_eq!(message_connection_id_for(VmbusVersion::V1_1), 1);
    }
}
