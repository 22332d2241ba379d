//! The round-trip test device.

use super::{DeviceModel, HostChannel, HostPacket, PACKET_TYPE_COMPLETION};

/// Echoes every packet back with the same transaction id: a packet that requests a completion
/// is answered with a completion (type 11) carrying the same payload; any other in-band or
/// GPA-direct packet comes back as an in-band packet. Completions from the guest are ignored.
#[derive(Clone, Copy, Debug, Default)]
pub struct EchoDevice;

impl DeviceModel for EchoDevice {
    fn on_packet(&mut self, ch: &mut HostChannel, packet: &HostPacket) {
        if packet.packet_type == PACKET_TYPE_COMPLETION {
            return;
        }
        let result = if packet.completion_requested() {
            ch.send_completion(packet.transaction_id, &packet.payload)
        } else {
            ch.send_inband(&packet.payload, packet.transaction_id, false)
        };
        if let Err(e) = result {
            log::warn!("echo device on channel {}: {e}", ch.relid());
        }
    }
}
