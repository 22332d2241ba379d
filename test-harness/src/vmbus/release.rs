//! Windows host releases the mock imitates and the VMBus versions each one accepts
//! (vmbus-core §5.5).

use vmbus_guest::protocol::VmbusVersion;

/// A Windows Server release (or the 6.0 "Copper" host) whose version policy the mock host
/// follows: it accepts every version the project knows up to its maximum and answers
/// VERSION_RESPONSE supported = 0 to anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostRelease {
    /// Windows Server 2008 R2 / Windows 7: VMBus 1.1.
    Ws2008R2,
    /// Windows Server 2012 / Windows 8: VMBus 2.4.
    Ws2012,
    /// Windows Server 2012 R2 / Windows 8.1: VMBus 3.0.
    Ws2012R2,
    /// Windows Server 2016 / Windows 10 RS1: VMBus 4.0.
    Ws2016,
    /// Windows Server 2019 (RS5): VMBus 5.2, multi-client connection id 4.
    Ws2019,
    /// Windows Server 2022 ("Iron"): VMBus 5.3.
    Ws2022,
    /// A "Copper" host: VMBus 6.0 with feature flags.
    Copper,
}

/// Every version this mock can negotiate, ascending. 0.13 is not among them: its offers and
/// signalling (shared interrupt page, connection 2) are not modelled.
const KNOWN_VERSIONS: [VmbusVersion; 10] = [
    VmbusVersion::V1_1,
    VmbusVersion::V2_4,
    VmbusVersion::V3_0,
    VmbusVersion::V4_0,
    VmbusVersion::V4_1,
    VmbusVersion::V5_0,
    VmbusVersion::V5_1,
    VmbusVersion::V5_2,
    VmbusVersion::V5_3,
    VmbusVersion::V6_0,
];

impl HostRelease {
    /// Highest VMBus version the release speaks.
    pub fn max_version(self) -> VmbusVersion {
        match self {
            Self::Ws2008R2 => VmbusVersion::V1_1,
            Self::Ws2012 => VmbusVersion::V2_4,
            Self::Ws2012R2 => VmbusVersion::V3_0,
            Self::Ws2016 => VmbusVersion::V4_0,
            Self::Ws2019 => VmbusVersion::V5_2,
            Self::Ws2022 => VmbusVersion::V5_3,
            Self::Copper => VmbusVersion::V6_0,
        }
    }

    /// Every release, oldest first.
    pub fn all() -> &'static [HostRelease] {
        &[
            Self::Ws2008R2,
            Self::Ws2012,
            Self::Ws2012R2,
            Self::Ws2016,
            Self::Ws2019,
            Self::Ws2022,
            Self::Copper,
        ]
    }

    /// Human-readable name ("WS2019").
    pub fn name(self) -> &'static str {
        match self {
            Self::Ws2008R2 => "WS2008R2",
            Self::Ws2012 => "WS2012",
            Self::Ws2012R2 => "WS2012R2",
            Self::Ws2016 => "WS2016",
            Self::Ws2019 => "WS2019",
            Self::Ws2022 => "WS2022",
            Self::Copper => "Copper (6.0)",
        }
    }

    /// Whether the release accepts INITIATE_CONTACT proposing `version`: a known version not
    /// above [`Self::max_version`].
    pub fn accepts(self, version: VmbusVersion) -> bool {
        version <= self.max_version() && KNOWN_VERSIONS.contains(&version)
    }

    /// Whether the release has the 5.0 multi-client message connection (id 4).
    pub fn has_multi_client_connection(self) -> bool {
        self.max_version() >= VmbusVersion::V5_0
    }
}

#[cfg(test)]
mod tests {
    use super::KNOWN_VERSIONS;

    /// The version words the host accepts are the literal values of vmbus-core §5.5
    /// (`(major << 16) | minor`), so a wrong constant in the shared wire types is caught here
    /// rather than agreed with.
    #[test]
    fn known_versions_are_the_words_of_vmbus_core_5_5() {
        let words: Vec<u32> = KNOWN_VERSIONS.iter().map(|v| v.0).collect();
        assert_eq!(
            words,
            [
                0x0001_0001,
                0x0002_0004,
                0x0003_0000,
                0x0004_0000,
                0x0004_0001,
                0x0005_0000,
                0x0005_0001,
                0x0005_0002,
                0x0005_0003,
                0x0006_0000,
            ]
        );
    }
}
