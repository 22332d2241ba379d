//! Per-VP SynIC: control registers, message queues, SIMP slot delivery with the pending flag,
//! and SIEFP event flags (protocol/vmbus-core.md §2.3, §4).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use super::memory::GuestMemory;

/// Bytes per SIMP/SIEFP slot.
pub const SLOT_SIZE: u64 = 256;
/// Maximum message payload.
pub const MAX_PAYLOAD: usize = 240;
/// SINT reset value: masked.
pub const SINT_RESET: u64 = 1 << 16;
/// SINT masked bit.
pub const SINT_MASKED: u64 = 1 << 16;
/// SINT AutoEOI bit.
pub const SINT_AUTO_EOI: u64 = 1 << 17;
/// SINT polling bit.
pub const SINT_POLLING: u64 = 1 << 18;

/// A message waiting for its SIMP slot.
#[derive(Debug, Clone)]
pub(crate) struct QueuedMessage {
    pub message_type: u32,
    pub origin: u64,
    pub payload: Vec<u8>,
}

/// One VP's SynIC.
#[derive(Debug)]
pub(crate) struct Synic {
    pub scontrol: u64,
    pub simp: u64,
    pub siefp: u64,
    pub sints: [u64; 16],
    pub queues: [VecDeque<QueuedMessage>; 16],
}

impl Default for Synic {
    fn default() -> Self {
        Self {
            scontrol: 0,
            simp: 0,
            siefp: 0,
            sints: [SINT_RESET; 16],
            queues: Default::default(),
        }
    }
}

/// GPA of an enabled overlay register value (bit 0 enable, 63:12 GPN).
pub(crate) fn enabled_page(value: u64) -> Option<u64> {
    (value & 1 != 0).then_some(value & !0xFFF)
}

/// The message-pending flag (byte 5, bit 0) within a slot's first 8 bytes.
const PENDING_FLAG_IN_HEADER: u64 = 1 << 40;

impl Synic {
    fn enabled(&self) -> bool {
        self.scontrol & 1 != 0
    }

    /// Whether messages for `sint` may be put into the SIMP now.
    fn can_deliver(&self, sint: usize) -> bool {
        let s = self.sints[sint];
        self.enabled()
            && enabled_page(self.simp).is_some()
            && (s & SINT_MASKED == 0 || s & SINT_POLLING != 0)
    }

    /// The interrupt vector a signal on `sint` raises, if any (unmasked, not polling).
    pub(crate) fn interrupt_vector(&self, sint: usize) -> Option<u8> {
        let s = self.sints[sint];
        (self.enabled() && s & SINT_MASKED == 0 && s & SINT_POLLING == 0).then_some(s as u8)
    }

    /// Tries to move queued messages of `sint` into its slot. Returns the vector to raise if a
    /// message was delivered. Sets the pending flag when messages stay queued behind an occupied
    /// slot.
    pub(crate) fn scan(&mut self, mem: &GuestMemory, sint: usize) -> Option<u8> {
        if self.queues[sint].is_empty() || !self.can_deliver(sint) {
            return None;
        }
        let page = enabled_page(self.simp)?;
        let slot = page + sint as u64 * SLOT_SIZE;
        if !mem.in_ram(slot, SLOT_SIZE as usize) {
            return None;
        }
        // The slot's first 8 bytes (type, size, flags) change as one word: the check "occupied"
        // and the setting of the pending flag must be one atomic step, or a guest that frees
        // the slot in between would find it free with a stale pending flag and no message.
        let header = mem.atomic_u64(slot);
        let mut word = header.load(Ordering::Acquire);
        loop {
            if word as u32 == 0 {
                break;
            }
            // Occupied: tell the guest more is waiting.
            match header.compare_exchange_weak(
                word,
                word | PENDING_FLAG_IN_HEADER,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return None,
                Err(current) => word = current,
            }
        }
        let type_cell = mem.atomic_u32(slot);
        let msg = self.queues[sint].pop_front()?;
        let mut body = [0u8; SLOT_SIZE as usize - 4];
        body[0] = msg.payload.len() as u8;
        body[1] = u8::from(!self.queues[sint].is_empty());
        body[4..12].copy_from_slice(&msg.origin.to_le_bytes());
        body[12..12 + msg.payload.len()].copy_from_slice(&msg.payload);
        mem.write(slot + 4, &body);
        // The type is written last with release ordering: a guest that sees a non-zero type
        // sees the whole message.
        type_cell.store(msg.message_type, Ordering::Release);
        self.interrupt_vector(sint)
    }

    /// Rescans every SINT; returns the vectors to raise.
    pub(crate) fn scan_all(&mut self, mem: &GuestMemory) -> Vec<u8> {
        (0..16).filter_map(|s| self.scan(mem, s)).collect()
    }

    /// Atomically sets event flag `flag` in slot `sint` of the SIEFP. `None` when the SIEFP or
    /// SynIC is disabled; otherwise the vector to raise (if unmasked).
    pub(crate) fn set_flag(&self, mem: &GuestMemory, sint: usize, flag: u32) -> Option<Option<u8>> {
        if !self.enabled() {
            return None;
        }
        let page = enabled_page(self.siefp)?;
        let byte = page + sint as u64 * SLOT_SIZE + u64::from(flag / 8);
        if !mem.in_ram(byte, 1) {
            return None;
        }
        mem.atomic_u8(byte)
            .fetch_or(1 << (flag % 8), Ordering::AcqRel);
        Some(self.interrupt_vector(sint))
    }
}
