//! The raw-ring baseline's host device: the copies netvsc's data path needs and nothing else.
//!
//! - Transmit: the guest packs frames into sections of a GPADL send buffer and sends one
//!   in-band packet per section (completion requested); the device copies the section's used
//!   bytes out once and completes the packet.
//! - Receive: the device copies a frame into a free slot of the guest's GPADL receive buffer
//!   and sends transfer-page packets of `per_packet` ranges (completion requested); the
//!   guest's completion returns the slots.
//!
//! Guest → host messages (in-band, 16 bytes, completion requested): `[1, send_gpadl,
//! recv_gpadl, slot_size]` registers the buffers, `[2, section, bytes, frames]` sends a
//! section, `[3, frame_len, per_packet, 0]` starts the receive traffic.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use test_harness::vmbus::{
    DeviceModel, HostChannel, HostPacket, PACKET_TYPE_COMPLETION, PACKET_TYPE_XFER_PAGES,
};

/// Bytes of a transmit section (Hyper-V's send section size).
pub const SECTION: usize = 6144;
/// The transfer page set id the device names.
pub const SET_ID: u16 = 0xCAFE;

/// Messages of the baseline protocol.
pub const OP_SETUP: u32 = 1;
pub const OP_SECTION: u32 = 2;
pub const OP_GENERATE: u32 = 3;

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
}

/// The baseline device; `frames_in` counts the frames of the sections it copied out.
#[derive(Default)]
pub struct RawNetDevice {
    send_gpadl: u32,
    recv_gpadl: u32,
    slot_size: usize,
    free: VecDeque<usize>,
    outstanding: BTreeMap<u64, Vec<usize>>,
    next_tid: u64,
    generate: Option<(Vec<u8>, usize)>,
    scratch: Vec<u8>,
    frames_in: Arc<AtomicU64>,
}

impl RawNetDevice {
    /// A device counting the frames of the sections it copies out in `frames_in`.
    pub fn new(frames_in: Arc<AtomicU64>) -> Self {
        Self {
            frames_in,
            ..Self::default()
        }
    }
}

impl DeviceModel for RawNetDevice {
    fn on_packet(&mut self, ch: &mut HostChannel, p: &HostPacket) {
        if p.packet_type == PACKET_TYPE_COMPLETION {
            if let Some(slots) = self.outstanding.remove(&p.transaction_id) {
                self.free.extend(slots);
            }
            return;
        }
        let m = &p.payload;
        match u32_at(m, 0) {
            OP_SETUP => {
                self.send_gpadl = u32_at(m, 4);
                self.recv_gpadl = u32_at(m, 8);
                self.slot_size = u32_at(m, 12) as usize;
                let len = ch.gpadl_len(self.recv_gpadl).unwrap_or(0) as usize;
                self.free = (0..len / self.slot_size.max(1)).collect();
            }
            OP_SECTION => {
                let (section, bytes) = (u32_at(m, 4) as usize, u32_at(m, 8) as usize);
                self.scratch.resize(bytes.min(SECTION), 0);
                ch.read_gpadl(
                    self.send_gpadl,
                    (section * SECTION) as u64,
                    &mut self.scratch,
                )
                .expect("baseline section readable");
                self.frames_in
                    .fetch_add(u64::from(u32_at(m, 12)), Ordering::Relaxed);
            }
            OP_GENERATE => {
                let len = u32_at(m, 4) as usize;
                self.generate = (len > 0).then(|| {
                    let frame = (0..len).map(|i| i as u8).collect();
                    (frame, (u32_at(m, 8) as usize).clamp(1, 64))
                });
            }
            other => panic!("baseline: unknown message {other}"),
        }
        ch.send_completion(p.transaction_id, &[108, 0, 0, 0, 1, 0, 0, 0])
            .expect("baseline completion");
    }

    fn poll(&mut self, ch: &mut HostChannel) {
        let Some((frame, per_packet)) = &self.generate else {
            return;
        };
        while !self.free.is_empty() {
            let mut header = Vec::with_capacity(8 + 8 * per_packet);
            header.extend_from_slice(&SET_ID.to_le_bytes());
            header.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            let mut slots = Vec::with_capacity(*per_packet);
            while slots.len() < *per_packet
                && let Some(slot) = self.free.pop_front()
            {
                let offset = slot * self.slot_size;
                ch.write_gpadl(self.recv_gpadl, offset as u64, frame)
                    .expect("baseline receive buffer writable");
                header.extend_from_slice(&(frame.len() as u32).to_le_bytes());
                header.extend_from_slice(&(offset as u32).to_le_bytes());
                slots.push(slot);
            }
            header[4..8].copy_from_slice(&(slots.len() as u32).to_le_bytes());
            self.next_tid += 1;
            self.outstanding.insert(self.next_tid, slots);
            ch.send_packet(
                PACKET_TYPE_XFER_PAGES,
                1,
                self.next_tid,
                &header,
                &[107, 0, 0, 0, 0, 0, 0, 0],
            )
            .expect("baseline transfer-page packet");
        }
    }
}
