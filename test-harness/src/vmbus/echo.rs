//! The round-trip test devices: [`EchoDevice`] (packets only) and [`DataEchoDevice`] (a block
//! device's data copies, no protocol).

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

/// Payload byte 0 of a [`DataEchoDevice`] request: the host writes the guest's memory (a read
/// from the device's point of view).
pub const DATA_ECHO_READ: u8 = 1;
/// Payload byte 0 of a [`DataEchoDevice`] request: the host reads the guest's memory (a write).
pub const DATA_ECHO_WRITE: u8 = 2;

/// The raw-ring baseline of a block device: answers every GPA-direct request that asks for a
/// completion after moving its data the way the storage VSP moves an SRB's, and nothing else
/// (no VSTOR, no SCSI). Payload byte 0 says the direction ([`DATA_ECHO_READ`]: the device's
/// block is copied into the guest pages the request names; [`DATA_ECHO_WRITE`]: those pages
/// are copied into the block); the completion echoes the payload. The copy goes page by page
/// through [`HostChannel::write_gpa`] / [`HostChannel::read_gpa`], as the VSP's does, so a
/// benchmark comparing the two measures only the protocol work between them.
#[derive(Clone, Debug)]
pub struct DataEchoDevice {
    block: Vec<u8>,
}

impl DataEchoDevice {
    /// A device whose block (the data it reads and writes) is `block_bytes` long; requests
    /// move at most that much.
    pub fn new(block_bytes: usize) -> Self {
        Self {
            block: vec![0x5A; block_bytes],
        }
    }

    /// Copies between the block and the pages of the packet's first GPA range; `false` if a
    /// page is outside guest RAM.
    fn transfer(&mut self, ch: &HostChannel, packet: &HostPacket, to_guest: bool) -> bool {
        let Some((byte_count, byte_offset, pfns)) = packet.gpa_ranges.first() else {
            return true;
        };
        let len = (*byte_count as usize).min(self.block.len());
        let mut done = 0;
        let mut in_page = *byte_offset as usize;
        for &pfn in pfns {
            if done == len || in_page >= 4096 {
                break;
            }
            let n = (4096 - in_page).min(len - done);
            let gpa = pfn * 4096 + in_page as u64;
            let ok = if to_guest {
                ch.write_gpa(gpa, &self.block[done..done + n]).is_ok()
            } else {
                ch.read_gpa(gpa, &mut self.block[done..done + n]).is_ok()
            };
            if !ok {
                return false;
            }
            done += n;
            in_page = 0;
        }
        true
    }
}

impl DeviceModel for DataEchoDevice {
    fn on_packet(&mut self, ch: &mut HostChannel, packet: &HostPacket) {
        if packet.packet_type == PACKET_TYPE_COMPLETION {
            return;
        }
        let to_guest = match packet.payload.first() {
            Some(&DATA_ECHO_READ) => Some(true),
            Some(&DATA_ECHO_WRITE) => Some(false),
            _ => None,
        };
        if let Some(to_guest) = to_guest
            && !self.transfer(ch, packet, to_guest)
        {
            ch.protocol_error("data echo: GPA range outside guest RAM");
        }
        if packet.completion_requested()
            && let Err(e) = ch.send_completion(packet.transaction_id, &packet.payload)
        {
            log::warn!("data echo device on channel {}: {e}", ch.relid());
        }
    }
}
