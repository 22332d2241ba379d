//! Heartbeat (icmsgtype 1, devices §6.3): the host sends a sequence number every few seconds;
//! the guest answers with the number plus one. Missing answers mean "no heartbeat".

use crate::protocol::{HEARTBEAT_MIN_PAYLOAD, HeartbeatMsg, IcVersion};
use crate::{IcError, IcEvent, IcHandler, IcMsgType, Outcome};
use vmbus_guest::protocol::DeviceClass;
use zerocopy::byteorder::little_endian::U64;
use zerocopy::{FromBytes, IntoBytes};

/// Heartbeat service versions in preference order (Linux `hb_versions`: 3.0, 1.0).
pub const HEARTBEAT_VERSIONS: &[IcVersion] = &[IcVersion::new(3, 0), IcVersion::new(1, 0)];

/// Largest packet the heartbeat channel receives (NEGOTIATE with 200 versions; the heartbeat
/// itself is 40 payload bytes): the buffer size an [`crate::channel::IcChannel`] needs.
pub const MAX_PACKET: usize = crate::channel::max_packet(core::mem::size_of::<HeartbeatMsg>());

/// The heartbeat service. Stateless apart from the last sequence number answered.
#[derive(Clone, Copy, Debug, Default)]
pub struct Heartbeat {
    last: Option<u64>,
}

impl Heartbeat {
    /// A heartbeat service that has answered nothing yet.
    pub const fn new() -> Self {
        Self { last: None }
    }

    /// The sequence number in the last answer.
    pub fn last_sequence(&self) -> Option<u64> {
        self.last
    }
}

impl IcHandler for Heartbeat {
    const MSG_TYPE: IcMsgType = IcMsgType::HEARTBEAT;
    const DEVICE_CLASS: DeviceClass = DeviceClass::Heartbeat;

    fn service_versions(&self) -> &[IcVersion] {
        HEARTBEAT_VERSIONS
    }

    /// Adds one (wrapping) to the sequence number. Only the 8-byte sequence number is required;
    /// the 32 reserved bytes may be absent (Linux checks the same).
    fn handle_message(&mut self, _: IcVersion, payload: &mut [u8]) -> Result<Outcome, IcError> {
        let got = payload.len();
        let Ok((seq, _)) = U64::mut_from_prefix(payload) else {
            return Err(IcError::TruncatedPayload {
                msg_type: Self::MSG_TYPE,
                needed: HEARTBEAT_MIN_PAYLOAD,
                got,
            });
        };
        let sequence = seq.get().wrapping_add(1);
        seq.set(sequence);
        debug_assert_eq!(seq.as_bytes().len(), HEARTBEAT_MIN_PAYLOAD);
        self.last = Some(sequence);
        Ok(Outcome::ok(IcEvent::Heartbeat { sequence }))
    }
}
