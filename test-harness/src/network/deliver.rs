//! Host → guest traffic (devices §2.8): held completions, host requests, raw fault packets,
//! control messages, switch frames and generated frames placed in receive slots and sent as transfer-page
//! packets.

use super::*;

/// A frame for the guest with its checksum PPI bits (`None`: the host checks it when sending).
pub(super) type RxFrame = (Vec<u8>, Option<u32>);

/// Delivered frames' buffers kept for reuse.
const SPARE_FRAMES: usize = 64;
/// Completed packets' slot lists kept for reuse.
pub(super) const SPARE_SLOT_LISTS: usize = 256;

impl State {
    /// Sends what waits for the guest on channel `index`: held completions of that channel
    /// when released; on the primary also raw packets, NVSP messages, control messages (any
    /// free slot); then frames from the switch or the generator (keeping the control slots)
    /// — on the primary, or, while RSS spreads them, on the channel the guest's indirection
    /// table picks (the primary sorts them, each channel sends its own).
    pub(super) fn deliver(&mut self, ch: &mut HostChannel, index: u16) {
        if self.fatal.is_some() {
            return;
        }
        if !self.withhold {
            let (mine, others) = std::mem::take(&mut self.withheld)
                .into_iter()
                .partition(|w| w.2 == index);
            self.withheld = others;
            for (st, tid, _) in mine {
                let m = self.padded(&[108, st]);
                self.complete(ch, tid, &m);
            }
        }
        if index != 0 {
            if self.rndis_initialized && self.filter != 0 {
                self.deliver_frames(ch, index, FRAMES_PER_PACKET, &mut |s| {
                    s.next_pending(index).map(|f| (f, None))
                });
            }
            return;
        }
        while let Some(m) = self.rss.notes.pop_front() {
            if let Err(e) = ch.send_packet(PACKET_TYPE_INBAND, 0, 0, &[], &m) {
                log::warn!("network VSP: NVSP message not sent: {e}");
            }
        }
        while let Some((tid, m)) = self.nvsp_to_guest.pop_front() {
            self.host_requests.push(tid);
            if let Err(e) = ch.send_packet(PACKET_TYPE_INBAND, 1, tid, &[], &m) {
                log::warn!("network VSP: NVSP message not sent: {e}");
            }
        }
        while let Some((set, ranges, payload)) = self.raw_xfer.pop_front() {
            let tid = self.outstanding.add(Vec::new());
            send_xfer(ch, tid, set, &ranges, &payload);
        }
        self.deliver_control(ch);
        if !self.rndis_initialized || self.filter == 0 {
            return;
        }
        self.deliver_hostile(ch);
        if self.spreading() {
            if let Some((sw, port)) = self.switch.clone() {
                self.classify(&mut || sw.take(port));
            }
            if let Some((frame, per_packet)) = self.generator.take() {
                self.classify(&mut || Some(frame.clone()));
                self.generator = Some((frame, per_packet));
            }
            self.deliver_frames(ch, 0, FRAMES_PER_PACKET, &mut |s| {
                s.next_pending(0).map(|f| (f, None))
            });
            return;
        }
        if let Some((sw, port)) = self.switch.clone() {
            self.deliver_frames(ch, 0, FRAMES_PER_PACKET, &mut |_| {
                sw.take(port).map(|f| (f, None))
            });
        }
        if let Some((mut frame, per_packet)) = self.generator.take() {
            // The same frame every time: the host's verdict is computed once.
            let bits = match self.generator_bits {
                Some(b) => b,
                None => {
                    let b = self.offload.receive_bits(&mut frame);
                    self.generator_bits = Some(b);
                    b
                }
            };
            self.deliver_frames(ch, 0, per_packet, &mut |s| {
                Some((s.copy_of(&frame), Some(bits)))
            });
            self.generator = Some((frame, per_packet));
        }
    }

    /// Control messages and raw fault messages, one per transfer-page packet, in any free
    /// slot.
    fn deliver_control(&mut self, ch: &mut HostChannel) {
        let Some(recv) = self.recv.as_ref() else {
            return;
        };
        let (gpadl, id, slot_size) = (recv.gpadl, recv.id, recv.slot_size);
        while !self.to_guest.is_empty() {
            let Some(slot) = self.recv.as_mut().and_then(|r| r.free.pop_front()) else {
                break;
            };
            let bytes = match self.to_guest.pop_front() {
                Some(Outgoing::Control(b) | Outgoing::Raw(b)) => b,
                None => break,
            };
            let offset = slot * slot_size;
            let len = bytes.len().min(slot_size);
            if ch.write_gpadl(gpadl, offset as u64, &bytes[..len]).is_err() {
                self.reject(ch, "receive buffer unwritable".into());
                return;
            }
            let tid = self.outstanding.add(vec![slot]);
            let payload = self.padded(&[107, 1, 0xFFFF_FFFF, 0]);
            send_xfer(ch, tid, id, &[(len as u32, offset as u32)], &payload);
        }
    }

    /// Places frames from `next` in free data slots (keeping the control slots; a frame is
    /// taken only when a slot is free) and sends them on channel `index` in transfer-page
    /// packets of up to `per_packet` frames, until the slots or the frames run out. Each
    /// frame comes with its checksum PPI bits, or `None` for the host to check it now; with
    /// RSC enabled, such frames that continue one another are coalesced ([`super::rsc`]) and
    /// go as fragments, all in one packet.
    fn deliver_frames(
        &mut self,
        ch: &mut HostChannel,
        index: u16,
        per_packet: usize,
        next: &mut dyn FnMut(&mut Self) -> Option<RxFrame>,
    ) {
        let Some(recv) = self.recv.as_ref() else {
            return;
        };
        let (id, slot_size) = (recv.id, recv.slot_size);
        let chunk = slot_size - FRAME_OFFSET_IN_SLOT;
        let payload = self.padded(&[107, 0, 0xFFFF_FFFF, 0]);
        let mut ranges = std::mem::take(&mut self.ranges);
        loop {
            ranges.clear();
            let mut slots = self.spare_slots.pop().unwrap_or_default();
            while ranges.len() < per_packet {
                let free = self.recv.as_ref().map_or(0, |r| r.free.len());
                let room = free
                    .saturating_sub(CONTROL_SLOTS)
                    .min(super::rsc::MAX_RANGES - ranges.len());
                if room == 0 {
                    break;
                }
                let Some((frame, bits)) = self.pull(index, next) else {
                    break;
                };
                let (frame, bits, segments) = match bits {
                    Some(b) => (frame, b, 1),
                    None if self.offload.enabled.rsc => {
                        self.coalesce(index, frame, room * chunk, next)
                    }
                    None => {
                        let b = self.offload.verdict_bits(&frame);
                        (frame, b, 1)
                    }
                };
                if segments > 1 {
                    let Some((r, s)) = self.place_fragments(ch, &frame, bits, segments) else {
                        return;
                    };
                    ranges.extend(r);
                    slots.extend(s);
                    self.frames_to_guest += 1;
                    continue;
                }
                if frame.len() > chunk {
                    self.reject(ch, "frame larger than a receive slot dropped".into());
                    continue;
                }
                let Some(slot) = self.recv.as_mut().and_then(|r| r.free.pop_front()) else {
                    break;
                };
                // PACKET header, one checksum PPI (16 bytes), frame at offset 256, msg_len
                // covering the whole slot (OpenVMM's layout, devices §2.8).
                let Some(range) = self.write_packet(ch, slot, &frame, bits, None) else {
                    return;
                };
                ranges.push(range);
                slots.push(slot);
                self.frames_to_guest += 1;
                if self.spare_frames.len() < SPARE_FRAMES {
                    self.spare_frames.push(frame);
                }
            }
            if ranges.is_empty() {
                self.spare_slots.push(slots);
                break;
            }
            let tid = self.outstanding.add(slots);
            self.note_delivery(tid, index, ranges.len() as u64);
            send_xfer(ch, tid, id, &ranges, &payload);
        }
        self.ranges = ranges;
    }

    /// A copy of `frame` in a reused buffer (no allocation per generated frame).
    fn copy_of(&mut self, frame: &[u8]) -> Vec<u8> {
        let mut v = self.spare_frames.pop().unwrap_or_default();
        v.clear();
        v.extend_from_slice(frame);
        v
    }
}

pub(super) fn send_xfer(
    ch: &mut HostChannel,
    tid: u64,
    set: u16,
    ranges: &[(u32, u32)],
    payload: &[u8],
) {
    // On the stack for the usual packet sizes (no allocation per packet).
    let mut on_stack = [0u8; 8 + 8 * 64];
    let mut on_heap = Vec::new();
    let need = 8 + ranges.len() * 8;
    let header = if need <= on_stack.len() {
        &mut on_stack[..need]
    } else {
        on_heap.resize(need, 0);
        &mut on_heap[..]
    };
    header[..2].copy_from_slice(&set.to_le_bytes());
    header[4..8].copy_from_slice(&(ranges.len() as u32).to_le_bytes());
    for ((count, offset), at) in ranges.iter().zip(header[8..].chunks_exact_mut(8)) {
        at[..4].copy_from_slice(&count.to_le_bytes());
        at[4..].copy_from_slice(&offset.to_le_bytes());
    }
    if let Err(e) = ch.send_packet(PACKET_TYPE_XFER_PAGES, 1, tid, header, payload) {
        log::warn!("network VSP: transfer-page packet not sent: {e}");
    }
}
