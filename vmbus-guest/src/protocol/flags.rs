//! Bit flags negotiated on the connection (6.0 features) and carried in offers.

#![forbid(unsafe_code)]

bitflags::bitflags! {
    /// 6.0 connection feature flags (vmbus-core §5.6): requested in INITIATE_CONTACT @20,
    /// granted in VERSION_RESPONSE @16; the guest keeps `requested & granted`. Unknown bits are
    /// kept (`from_bits_retain`) so a newer host's answer is never silently altered.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct FeatureFlags: u32 {
        /// OPENCHANNEL @148/@152 (guest-chosen connection id and event flag) honoured.
        const GUEST_SPECIFIED_SIGNAL_PARAMETERS = 0x01;
        /// OPENCHANNEL @154 bit 0 (redirect interrupt) honoured.
        const CHANNEL_INTERRUPT_REDIRECTION = 0x02;
        /// MODIFY_CONNECTION / MODIFY_CONNECTION_RESPONSE (messages 25/26).
        const MODIFY_CONNECTION = 0x04;
        /// INITIATE_CONTACT carries a client id GUID @40 (56-byte form).
        const CLIENT_ID = 0x08;
        /// Offer flags 0x2/0x4 mean confidential ring / external memory (paravisor only).
        const CONFIDENTIAL_CHANNELS = 0x10;
        /// PAUSE / PAUSE_RESPONSE / RESUME (messages 27–29, OpenVMM).
        const PAUSE_RESUME = 0x20;
        /// The server supplies the monitor pages in VERSION_RESPONSE (40-byte form).
        const SERVER_SPECIFIED_MONITOR_PAGES = 0x40;
        /// Offer flag 0x8 (pinned external memory) meaningful.
        const GPA_PINNING = 0x80;
    }
}

bitflags::bitflags! {
    /// Offer flags at OFFERCHANNEL @56 (vmbus-core §5.7). Unknown bits are kept.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct OfferFlags: u16 {
        /// Enumerate a device interface for this channel.
        const ENUMERATE_DEVICE_INTERFACE = 0x0001;
        /// Legacy: server supports transfer pages. With 6.0 + CONFIDENTIAL_CHANNELS: the ring
        /// must live in private (encrypted) memory.
        const CONFIDENTIAL_RING_BUFFER = 0x0002;
        /// Legacy: server supports GPADLs. With 6.0 + CONFIDENTIAL_CHANNELS: extra GPADLs and
        /// GPA-direct buffers must be private memory.
        const CONFIDENTIAL_EXTERNAL_MEMORY = 0x0004;
        /// External memory must be pinned (feature GPA_PINNING).
        const REQUIRE_PINNED_MEMORY = 0x0008;
        /// Named-pipe mode: the user-defined area starts with a pipe header.
        const NAMED_PIPE_MODE = 0x0010;
        /// Loopback offer.
        const LOOPBACK = 0x0100;
        /// Parent offer.
        const PARENT = 0x0200;
        /// Host requests monitored notification for this channel.
        const REQUEST_MONITORED_NOTIFICATION = 0x0400;
        /// TLNPI provider: this offer is a hvsock connection.
        const TLNPI_PROVIDER = 0x2000;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_bits_retained() {
        let f = FeatureFlags::from_bits_retain(0x8000_0003);
        assert_eq!(f.bits(), 0x8000_0003);
        assert!(f.contains(FeatureFlags::GUEST_SPECIFIED_SIGNAL_PARAMETERS));
        let o = OfferFlags::from_bits_retain(0x4001);
        assert_eq!(o.bits(), 0x4001);
        assert!(o.contains(OfferFlags::ENUMERATE_DEVICE_INTERFACE));
    }
}
