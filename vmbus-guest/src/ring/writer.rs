//! The writing end of one ring direction (the guest's outbound ring, or the host's end of
//! the guest's inbound ring).

#![forbid(unsafe_code)]

use super::control::ControlSnapshot;
use super::error::{Corrupt, WriteError};
use super::index::{advance, check_read_index, check_size, check_write_index, distance};
use super::memory::{RingMemory, copy_to_ring};
use super::packet::OutgoingPacket;
use super::protocol::{DESCRIPTOR_SIZE, FEATURE_PENDING_SEND_SIZE, TRAILER_SIZE};
use super::signal::Signal;
use super::sync::{Ordering, fence};

/// Packets up to this many ring bytes (trailer included) are assembled in a private stack
/// buffer and copied into the ring at once; larger ones are copied piece by piece.
const ASSEMBLE_MAX: usize = 256;

/// Writes packets into a ring: reserve and copy any number of packets with
/// [`write`](Self::write), then publish them with one [`commit`](Self::commit), which says
/// whether the reader must be signalled.
///
/// The writer owns the write index and pending send size; it keeps the write index privately
/// and never re-reads it from shared memory. The read index is the peer's and is validated
/// every time it is read.
#[derive(Debug)]
pub struct RingWriter<M: RingMemory> {
    mem: M,
    size: u32,
    /// Next byte to fill (uncommitted packets lie between `committed` and `tail`).
    tail: u32,
    /// The write index as last published.
    committed: u32,
    /// The read index as last read and validated; space up to it is known free.
    cached_read: u32,
    /// Ring bytes of the largest packet recorded in pending send size and not yet written
    /// (0: pending send size is clear). Only a write at least this large clears it: a
    /// smaller packet that fits must not cancel the wake-up a larger one is waiting for.
    waiting_for: u32,
}

impl<M: RingMemory> RingWriter<M> {
    /// Takes over the writing end of the ring in `mem`: reads and validates both indices once
    /// and sets the pending-send-size feature bit (this writer fills pending send size when
    /// blocked and honours it on the opposite ring, vmbus-core.md §7.2).
    pub fn new(mem: M) -> Result<Self, Corrupt> {
        let size = check_size(mem.data_size())?;
        let c = mem.control();
        let w = check_write_index(c.write_index.load(Ordering::Relaxed), size)?;
        let r = check_read_index(c.read_index.load(Ordering::Acquire), size)?;
        c.feature_bits
            .store(FEATURE_PENDING_SEND_SIZE, Ordering::Relaxed);
        c.pending_send_size.store(0, Ordering::Relaxed);
        Ok(Self {
            mem,
            size,
            tail: w,
            committed: w,
            cached_read: r,
            waiting_for: 0,
        })
    }

    /// The ring's control fields as read now (for diagnostics and tests). The control page
    /// itself is not handed out: storing into it would let safe code break the protocol
    /// that keeps the two endpoints' data copies apart.
    pub fn control_snapshot(&self) -> ControlSnapshot {
        self.mem.control().snapshot()
    }

    /// Size of the data area in bytes.
    pub fn data_size(&self) -> u32 {
        self.size
    }

    /// Bytes of written but not yet committed packets.
    pub fn uncommitted(&self) -> u32 {
        distance(self.committed, self.tail, self.size)
    }

    /// Free bytes after `tail` given read index `r`, keeping the 8 bytes that stop the ring
    /// from ever looking empty when full.
    #[inline]
    fn free(&self, r: u32) -> u32 {
        self.size - distance(r, self.tail, self.size) - TRAILER_SIZE as u32
    }

    /// Reads the peer's read index (acquire: its reads of the freed bytes are done).
    #[inline]
    fn load_read_index(&mut self) -> Result<u32, Corrupt> {
        let r = self.mem.control().read_index.load(Ordering::Acquire);
        let r = check_read_index(r, self.size)?;
        self.cached_read = r;
        Ok(r)
    }

    /// Ring bytes `packet` takes, trailer included, and its descriptor's offset and length in
    /// 8-byte units.
    fn framing(packet: &OutgoingPacket<'_>, size: u32) -> Result<(u32, u16, u16), WriteError> {
        let header = packet.header_len().ok_or(WriteError::InvalidPacket)?;
        let payload = packet.payload_len().ok_or(WriteError::TooLarge)?;
        let offset = DESCRIPTOR_SIZE + header;
        let len = offset
            .checked_add(payload)
            .and_then(|n| n.checked_next_multiple_of(8))
            .ok_or(WriteError::TooLarge)?;
        let offset8 = u16::try_from(offset / 8).map_err(|_| WriteError::TooLarge)?;
        let len8 = u16::try_from(len / 8).map_err(|_| WriteError::TooLarge)?;
        let total = len + TRAILER_SIZE;
        // Even an empty ring keeps 8 bytes free, and the largest packet (trailer included)
        // must stay below D - 8 (§7.7; OpenVMM rejects one of exactly D - 8).
        if total >= (size as usize) - TRAILER_SIZE {
            return Err(WriteError::TooLarge);
        }
        Ok((total as u32, offset8, len8))
    }

    /// Ring bytes `packet` would take, trailer included.
    pub fn packet_size(&self, packet: &OutgoingPacket<'_>) -> Result<u32, WriteError> {
        Self::framing(packet, self.size).map(|(t, _, _)| t)
    }

    /// Copies `packet` into the ring after the packets already written, without publishing it.
    /// `Full` leaves the ring unchanged; commit what was written and retry later.
    pub fn write(&mut self, packet: &OutgoingPacket<'_>) -> Result<(), WriteError> {
        let (total, offset8, len8) = Self::framing(packet, self.size)?;
        if self.free(self.cached_read) < total {
            let r = self.load_read_index()?;
            if self.free(r) < total {
                return Err(WriteError::Full { needed: total });
            }
        }
        let start = self.tail;
        let len = len8 as usize * 8;
        let d = packet.descriptor(offset8, len8);
        // The descriptor as two 8-byte words built in registers: assembling it field by field
        // in memory and copying it as one 16-byte block stalls on store forwarding.
        let word0 = d.packet_type.0 as u64
            | (d.data_offset8 as u64) << 16
            | (d.length8 as u64) << 32
            | (d.flags as u64) << 48;
        // The trailer: the old write index in the high 32 bits.
        let trailer = ((start as u64) << 32).to_le_bytes();
        if total as usize <= ASSEMBLE_MAX {
            // A small packet (every request and completion of the block and network
            // protocols) is assembled in private memory, padding zeroed and trailer
            // included, and goes into the ring with one volatile copy.
            let mut buf = [0u8; ASSEMBLE_MAX];
            let mut at = 0usize;
            let mut put = |bytes: &[u8]| {
                if let Some(dst) = buf.get_mut(at..at + bytes.len()) {
                    dst.copy_from_slice(bytes);
                }
                at += bytes.len();
            };
            put(&word0.to_le_bytes());
            put(&d.transaction_id.to_le_bytes());
            packet.emit_header(&mut put);
            for s in packet.payload() {
                put(s);
            }
            if let Some(dst) = buf.get_mut(len..len + TRAILER_SIZE) {
                dst.copy_from_slice(&trailer);
            }
            copy_to_ring(&self.mem, start, &buf[..total as usize]);
        } else {
            let mut cursor = start;
            let (mem, size) = (&self.mem, self.size);
            let mut put = |bytes: &[u8]| {
                if !bytes.is_empty() {
                    copy_to_ring(mem, cursor, bytes);
                    cursor = advance(cursor, bytes.len() as u32, size);
                }
            };
            put(&word0.to_le_bytes());
            put(&d.transaction_id.to_le_bytes());
            packet.emit_header(&mut put);
            for s in packet.payload() {
                put(s);
            }
            // Zero padding up to 8: one fixed 8-byte store from the payload end (it may run
            // into the trailer slot, which is written next). Fixed-size copies compile to
            // plain stores.
            if cursor != advance(start, len as u32, size) {
                copy_to_ring(mem, cursor, &[0u8; 8]);
            }
            copy_to_ring(mem, advance(start, len as u32, size), &trailer);
        }
        let cursor = advance(start, total, self.size);
        self.tail = cursor;
        if self.waiting_for != 0 && total >= self.waiting_for {
            self.mem
                .control()
                .pending_send_size
                .store(0, Ordering::Relaxed);
            self.waiting_for = 0;
        }
        Ok(())
    }

    /// Publishes every packet written since the last commit with one write-index store, and
    /// says whether to signal the reader: only when the ring was empty before this batch (the
    /// reader may be idle) and the reader's interrupt mask is clear (§7.8).
    pub fn commit(&mut self) -> Signal {
        if self.tail == self.committed {
            return Signal::NotNeeded;
        }
        let old = self.committed;
        self.committed = self.tail;
        let c = self.mem.control();
        // Release: the packet bytes are visible before the index that publishes them.
        c.write_index.store(self.tail, Ordering::Release);
        // Full barrier: the index store is ordered before reading the reader's mask and read
        // index (store→load); without it both sides can miss each other and a wake-up is lost.
        fence(Ordering::SeqCst);
        let mask = c.interrupt_mask.load(Ordering::Relaxed);
        let r = c.read_index.load(Ordering::Acquire);
        if let Ok(r) = check_read_index(r, self.size) {
            self.cached_read = r;
        }
        Signal::from_bool(mask == 0 && r == old)
    }

    /// Writes and commits one packet.
    pub fn send(&mut self, packet: &OutgoingPacket<'_>) -> Result<Signal, WriteError> {
        self.write(packet)?;
        Ok(self.commit())
    }

    /// After [`WriteError::Full`] with `needed` bytes: records in pending send size how much
    /// free space the writer waits for, then re-reads the read index. `Ok(true)`: the space is
    /// there now, retry the write. `Ok(false)`: wait for the reader's signal, then retry.
    ///
    /// Commit first: the reader measures pending send size from the published write index and
    /// may be idle until it sees the uncommitted packets. Several waiters (e.g. a large
    /// request and a small completion) share the field: it holds the largest `needed`, and
    /// only a successful write of at least that many bytes clears it. A waiter that gives up
    /// leaves it set, which costs at most a spurious signal from the reader. A `needed` larger
    /// than any packet (which no write could ever clear) is recorded as the largest packet,
    /// so the reader can always cross it.
    pub fn request_space(&mut self, needed: u32) -> Result<bool, Corrupt> {
        let largest_packet = self.size - 2 * TRAILER_SIZE as u32;
        self.waiting_for = self.waiting_for.max(needed.min(largest_packet));
        // Measured from the published write index, as the reader computes it.
        let pending = self.uncommitted().saturating_add(self.waiting_for);
        self.mem
            .control()
            .pending_send_size
            .store(pending, Ordering::Relaxed);
        // Full barrier: pending send size is visible before re-reading the read index, and
        // the reader's index store before its pending-send-size load (store→load both ways).
        fence(Ordering::SeqCst);
        let r = self.load_read_index()?;
        Ok(self.free(r) >= needed)
    }

    /// Drops the packets written since the last commit.
    pub fn discard_uncommitted(&mut self) {
        self.tail = self.committed;
    }
}
