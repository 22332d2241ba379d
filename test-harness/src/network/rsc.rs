//! Receive segment coalescing toward the guest (devices §2.8, §2.13.2, §2.14), once the guest
//! enabled RSC through TCP_OFFLOAD_PARAMETERS: consecutive TCP segments of one flow waiting
//! for a channel are coalesced as a NIC does ([`super::offload::rsc`]) and the coalesced frame
//! goes to the guest in receive-slot fragments, each a PACKET with the internal packet-id PPI
//! (type 0x80000001, {version 1, flags: sub-allocation 0x1, first 0x2, last 0x4, packet id})
//! after the checksum PPI, all fragments of a frame in one transfer-page packet (Linux drops a
//! frame that continues in the next one). The checksum PPI of a coalesced frame reports the
//! TCP (and IPv4) checksum good, as NDIS requires of an SCU. A segment that cannot join waits
//! as the first frame of the next delivery; a frame that is not a candidate goes as before.
//!
//! Hostile host: [`NetworkVsp::inject_fragments`] delivers arbitrary fragment sequences.

use super::deliver::{RxFrame, send_xfer};
use super::offload::rsc::Scu;
use super::*;

/// The packet-id PPI: internal type 1 (devices §2.14).
const PPI_PACKET_ID: u32 = 0x8000_0001;
/// Packet-id flags: a sub-allocation.
pub const SUB_ALLOCATION: u8 = 0x1;
/// Packet-id flags: the first fragment.
pub const FIRST_FRAGMENT: u8 = 0x2;
/// Packet-id flags: the last fragment.
pub const LAST_FRAGMENT: u8 = 0x4;
/// Most ranges in a transfer-page packet with RSC (devices §2.8).
pub const MAX_RANGES: usize = 562;
/// Checksum PPI receive bits: TCP and IP checksum succeeded (devices §2.14).
const TCP_SUCCEEDED: u32 = 1 << 3;
const IP_SUCCEEDED: u32 = 1 << 5;

/// One PACKET of a hostile fragment sequence ([`NetworkVsp::inject_fragments`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// Packet-id flags ([`SUB_ALLOCATION`], [`FIRST_FRAGMENT`], [`LAST_FRAGMENT`]).
    pub flags: u8,
    /// Packet id.
    pub packet_id: u16,
    /// The PACKET's data.
    pub data: Vec<u8>,
}

/// Counters of the host's coalescing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RscStats {
    /// Coalesced frames (of two segments or more) delivered.
    pub coalesced_frames: u64,
    /// Segments in them.
    pub coalesced_segments: u64,
    /// Fragments (receive slots) they took.
    pub fragments: u64,
    /// Transfer-page packets of hostile fragments delivered.
    pub injected_packets: u64,
}

/// Ranges (byte count, offset) of receive slots written, and the slots.
pub(super) type Placed = (Vec<(u32, u32)>, Vec<usize>);

/// Host-side RSC state.
#[derive(Debug, Default)]
pub(super) struct RscState {
    /// Per channel, a frame taken that did not join the SCU: first in line next time.
    held: BTreeMap<u16, RxFrame>,
    next_id: u16,
    stats: RscStats,
    /// Hostile sequences, one transfer-page packet each.
    hostile: VecDeque<Vec<Fragment>>,
}

impl RscState {
    /// Forgets what waits (the channel closed).
    pub(super) fn reset(&mut self) {
        self.held.clear();
        self.hostile.clear();
    }
}

impl NetworkVsp {
    /// Counters of the host's coalescing.
    pub fn rsc_stats(&self) -> RscStats {
        self.lock().rsc.stats
    }

    /// Hostile host: delivers each inner list as one transfer-page packet of PACKETs with
    /// these packet-id PPIs and data (each at most a receive slot's data room), once the
    /// guest is ready for frames, whatever the guest enabled.
    pub fn inject_fragments(&self, packets: &[Vec<Fragment>]) {
        self.lock().rsc.hostile.extend(packets.iter().cloned());
    }
}

impl State {
    fn data_slots_free(&self) -> usize {
        self.recv
            .as_ref()
            .map_or(0, |r| r.free.len().saturating_sub(CONTROL_SLOTS))
    }

    /// The next frame for channel `index`: a held one first, then `next`'s (a pending
    /// corruption fault applied, so the frame is as the host will check it).
    pub(super) fn pull(
        &mut self,
        index: u16,
        next: &mut dyn FnMut(&mut Self) -> Option<RxFrame>,
    ) -> Option<RxFrame> {
        if let Some(f) = self.rsc.held.remove(&index) {
            return Some(f);
        }
        let (mut f, bits) = next(self)?;
        if bits.is_none() {
            self.offload.maybe_corrupt(&mut f);
        }
        Some((f, bits))
    }

    /// What to deliver starting with `frame` (taken by [`Self::pull`]): with RSC on and the
    /// frame a candidate, an SCU of it and the frames after it that continue it (at most
    /// `max_len` bytes). Returns the frame, its checksum PPI bits and its segment count.
    pub(super) fn coalesce(
        &mut self,
        index: u16,
        frame: Vec<u8>,
        max_len: usize,
        next: &mut dyn FnMut(&mut Self) -> Option<RxFrame>,
    ) -> (Vec<u8>, u32, u32) {
        let e = self.offload.enabled;
        let Some(mut scu) = Scu::start(&frame, e.rsc_ipv4, e.rsc_ipv6) else {
            let bits = self.offload.verdict_bits(&frame);
            return (frame, bits, 1);
        };
        while let Some((f, bits)) = self.pull(index, next) {
            if bits.is_some() || !scu.try_add(&f, max_len) {
                self.rsc.held.insert(index, (f, bits));
                break;
            }
        }
        if scu.segments() == 1 {
            let bits = self.offload.verdict_bits(&frame);
            return (frame, bits, 1);
        }
        let segments = scu.segments();
        let frame = scu.finish();
        let v4 = frame.get(12..14) == Some(&[0x08, 0x00][..]);
        let bits = match self.offload.forced_rx_bits {
            Some(b) => b,
            None => {
                self.offload.stats.rx_reported_good += 1;
                TCP_SUCCEEDED | if v4 { IP_SUCCEEDED } else { 0 }
            }
        };
        (frame, bits, segments)
    }

    /// Writes a PACKET into receive slot `slot`: header, checksum PPI, the packet-id PPI
    /// when given, and `data` at offset 256 (OpenVMM's layout, devices §2.8), as two writes
    /// (headers, data: the gap between keeps what it held, as on a real host); returns its
    /// range (byte count, offset), or `None` if the buffer is not writable.
    pub(super) fn write_packet(
        &mut self,
        ch: &mut HostChannel,
        slot: usize,
        data: &[u8],
        bits: u32,
        packet_id: Option<(u8, u16)>,
    ) -> Option<(u32, u32)> {
        let recv = self.recv.as_ref()?;
        let (gpadl, slot_size) = (recv.gpadl, recv.slot_size);
        let ppi_len = if packet_id.is_some() { 32 } else { 16 };
        let mut head = [0u8; 60 + 16];
        let words = [
            1,
            slot_size as u32,
            (FRAME_OFFSET_IN_SLOT - 8) as u32,
            data.len() as u32,
            0,
            0,
            0,
            36,
            ppi_len,
            0,
            0,
            16,
            0,
            12,
            bits,
        ];
        let (id_words, id_tail) = match packet_id {
            Some((flags, id)) => {
                let [lo, hi] = id.to_le_bytes();
                ([16, PPI_PACKET_ID, 12], [1, flags, lo, hi])
            }
            None => ([0; 3], [0; 4]),
        };
        for (w, at) in words.iter().chain(&id_words).zip(head.chunks_exact_mut(4)) {
            at.copy_from_slice(&w.to_le_bytes());
        }
        head[72..].copy_from_slice(&id_tail);
        let head = &head[..44 + ppi_len as usize];
        let offset = slot * slot_size;
        let parts = [
            (offset as u64, head),
            ((offset + FRAME_OFFSET_IN_SLOT) as u64, data),
        ];
        if ch.write_gpadl_parts(gpadl, &parts).is_err() {
            self.reject(ch, "receive buffer unwritable".into());
            return None;
        }
        Some((slot_size as u32, offset as u32))
    }

    /// Places a coalesced frame in free slots as fragments of one new packet id; returns
    /// the ranges and slots, or `None` if a write failed (the slots taken are freed).
    pub(super) fn place_fragments(
        &mut self,
        ch: &mut HostChannel,
        frame: &[u8],
        bits: u32,
        segments: u32,
    ) -> Option<Placed> {
        let chunk = self.recv.as_ref()?.slot_size - FRAME_OFFSET_IN_SLOT;
        let id = self.rsc.next_id;
        self.rsc.next_id = id.wrapping_add(1);
        let n = frame.len().div_ceil(chunk);
        let (mut ranges, mut slots) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (i, piece) in frame.chunks(chunk).enumerate() {
            let mut flags = SUB_ALLOCATION;
            if i == 0 {
                flags |= FIRST_FRAGMENT;
            }
            if i + 1 == n {
                flags |= LAST_FRAGMENT;
            }
            let slot = self.recv.as_mut().and_then(|r| r.free.pop_front())?;
            slots.push(slot);
            match self.write_packet(ch, slot, piece, bits, Some((flags, id))) {
                Some(r) => ranges.push(r),
                None => {
                    if let Some(r) = self.recv.as_mut() {
                        r.free.extend(slots);
                    }
                    return None;
                }
            }
        }
        self.rsc.stats.coalesced_frames += 1;
        self.rsc.stats.coalesced_segments += u64::from(segments);
        self.rsc.stats.fragments += n as u64;
        Some((ranges, slots))
    }

    /// Sends the hostile fragment packets that fit the free slots.
    pub(super) fn deliver_hostile(&mut self, ch: &mut HostChannel) {
        let Some(recv) = self.recv.as_ref() else {
            return;
        };
        let (id, room) = (recv.id, recv.slot_size - FRAME_OFFSET_IN_SLOT);
        let payload = self.padded(&[107, 0, 0xFFFF_FFFF, 0]);
        while let Some(packet) = self.rsc.hostile.front() {
            if packet.len() > self.data_slots_free() || packet.len() > MAX_RANGES {
                break;
            }
            let Some(packet) = self.rsc.hostile.pop_front() else {
                break;
            };
            let (mut ranges, mut slots) = (Vec::new(), Vec::new());
            for f in &packet {
                let Some(slot) = self.recv.as_mut().and_then(|r| r.free.pop_front()) else {
                    break;
                };
                slots.push(slot);
                let data = &f.data[..f.data.len().min(room)];
                if let Some(r) = self.write_packet(ch, slot, data, 0, Some((f.flags, f.packet_id)))
                {
                    ranges.push(r);
                }
            }
            let tid = self.outstanding.add(slots);
            self.rsc.stats.injected_packets += 1;
            send_xfer(ch, tid, id, &ranges, &payload);
        }
    }
}
