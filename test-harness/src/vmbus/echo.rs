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
/// (no VSTOR, no SCSI). Payload byte 0 says the direction ([`DATA_ECHO_READ`]: disk bytes are
/// copied into the guest pages the request names; [`DATA_ECHO_WRITE`]: those pages are
/// copied onto the disk), payload bytes 8..16 the byte offset on the disk (little-endian; the
/// guest spreads its I/O over the disk as over a LUN, so the copies touch memory as the VSP's
/// do); the completion echoes the payload. The copy goes page by page through
/// [`HostChannel::write_gpa`] / [`HostChannel::read_gpa`], straight between disk and guest as
/// the VSP's does, so a benchmark comparing the two measures only the protocol work between
/// them. A request beyond the disk is a protocol error (and completed without data).
#[derive(Clone, Debug)]
pub struct DataEchoDevice {
    disk: Vec<u8>,
}

impl DataEchoDevice {
    /// A device with a `disk_bytes` in-memory disk.
    pub fn new(disk_bytes: usize) -> Self {
        Self {
            disk: vec![0x5A; disk_bytes],
        }
    }

    /// Copies between the disk at `offset` and the pages of the packet's first GPA range;
    /// `Err` with the reason if the range is outside the disk or guest RAM.
    fn transfer(
        &mut self,
        ch: &HostChannel,
        packet: &HostPacket,
        offset: usize,
        to_guest: bool,
    ) -> Result<(), &'static str> {
        let Some((byte_count, byte_offset, pfns)) = packet.gpa_ranges.first() else {
            return Ok(());
        };
        let len = *byte_count as usize;
        let disk = offset
            .checked_add(len)
            .and_then(|end| self.disk.get_mut(offset..end))
            .ok_or("request beyond the disk")?;
        let mut done = 0;
        let mut in_page = *byte_offset as usize;
        for &pfn in pfns {
            if done == len || in_page >= 4096 {
                break;
            }
            let n = (4096 - in_page).min(len - done);
            let gpa = pfn * 4096 + in_page as u64;
            let r = if to_guest {
                ch.write_gpa(gpa, &disk[done..done + n])
            } else {
                ch.read_gpa(gpa, &mut disk[done..done + n])
            };
            r.map_err(|_| "GPA range outside guest RAM")?;
            done += n;
            in_page = 0;
        }
        Ok(())
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
        let offset = packet
            .payload
            .get(8..16)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes);
        if let Some(to_guest) = to_guest
            && let Err(e) = usize::try_from(offset)
                .map_err(|_| "request beyond the disk")
                .and_then(|offset| self.transfer(ch, packet, offset, to_guest))
        {
            ch.protocol_error(format!("data echo: {e}"));
        }
        if packet.completion_requested()
            && let Err(e) = ch.send_completion(packet.transaction_id, &packet.payload)
        {
            log::warn!("data echo device on channel {}: {e}", ch.relid());
        }
    }
}
