//! The reading end of one ring direction (the guest's inbound ring, or the host's end of the
//! guest's outbound ring).

#![forbid(unsafe_code)]

use super::control::ControlSnapshot;
use super::error::{Corrupt, ReadError};
use super::index::{advance, check_read_index, check_size, check_write_index, distance};
use super::memory::{RingMemory, copy_from_ring};
use super::packet::IncomingPacket;
use super::protocol::{DESCRIPTOR_SIZE, FEATURE_PENDING_SEND_SIZE, PacketDescriptor, TRAILER_SIZE};
use super::signal::{DrainEnd, Signal};
use super::sync::{Ordering, fence};
use zerocopy::FromBytes;

/// Reads packets from a ring: [`read`](Self::read) any number of packets into private
/// buffers, then free their space with one [`publish`](Self::publish), which says whether the
/// writer must be signalled. Around a drain, [`begin_drain`](Self::begin_drain) masks the
/// writer's signals and [`finish_drain`](Self::finish_drain) unmasks them and re-checks the
/// ring so no wake-up is lost.
///
/// The reader owns the read index and the interrupt mask and keeps its read cursor privately.
/// The write index, descriptors and headers come from the peer: each is read once and
/// validated; a violation is [`ReadError::Corrupt`].
#[derive(Debug)]
pub struct RingReader<M: RingMemory> {
    mem: M,
    size: u32,
    /// Start of the next unread packet.
    head: u32,
    /// The read index as last published.
    published: u32,
    /// The write index as last read and validated; data up to it is known published.
    cached_write: u32,
    /// Whether this reader set the interrupt mask.
    masked: bool,
}

impl<M: RingMemory> RingReader<M> {
    /// Takes over the reading end of the ring in `mem`, reading and validating both indices
    /// once. The interrupt mask is left as it is (the channel layer clears it at open).
    pub fn new(mem: M) -> Result<Self, Corrupt> {
        let size = check_size(mem.data_size())?;
        let c = mem.control();
        let r = check_read_index(c.read_index.load(Ordering::Relaxed), size)?;
        let w = check_write_index(c.write_index.load(Ordering::Acquire), size)?;
        let masked = c.interrupt_mask.load(Ordering::Relaxed) != 0;
        Ok(Self {
            mem,
            size,
            head: r,
            published: r,
            cached_write: w,
            masked,
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

    /// Bytes between the read cursor and the write index, reading the write index from
    /// shared memory only when the last value read is used up.
    #[inline]
    fn available(&mut self) -> Result<u32, Corrupt> {
        if self.head == self.cached_write {
            // Acquire: the packet bytes before this index are visible.
            let w = self.mem.control().write_index.load(Ordering::Acquire);
            self.cached_write = check_write_index(w, self.size)?;
        }
        Ok(distance(self.head, self.cached_write, self.size))
    }

    /// Copies the next packet into `buf` (which must hold its `length8 * 8` bytes), validates
    /// it and advances the private read cursor. The space is freed only at the next
    /// [`publish`](Self::publish).
    pub fn read<'b>(&mut self, buf: &'b mut [u8]) -> Result<IncomingPacket<'b>, ReadError> {
        let (desc, raw, total) = self.next_descriptor()?;
        let len = total - TRAILER_SIZE as u32;
        let Some(packet) = buf.get_mut(..len as usize) else {
            return Err(ReadError::BufferTooSmall {
                needed: len as usize,
            });
        };
        let (head_bytes, rest) = packet.split_at_mut(DESCRIPTOR_SIZE);
        head_bytes.copy_from_slice(&raw);
        copy_from_ring(
            &self.mem,
            advance(self.head, DESCRIPTOR_SIZE as u32, self.size),
            rest,
        );
        let parsed = IncomingPacket::parse(desc, packet)?;
        self.head = advance(self.head, total, self.size);
        Ok(parsed)
    }

    /// Drops the next packet without copying it, after the same descriptor checks as
    /// [`read`](Self::read): the way past a packet larger than the reader's buffer
    /// ([`ReadError::BufferTooSmall`]), which otherwise stays at the head of the ring for
    /// good. Returns its descriptor; the space is freed at the next [`publish`](Self::publish).
    pub fn skip(&mut self) -> Result<PacketDescriptor, ReadError> {
        let (desc, _, total) = self.next_descriptor()?;
        self.head = advance(self.head, total, self.size);
        Ok(desc)
    }

    /// Reads (once) and validates the descriptor of the next packet: the descriptor, its raw
    /// bytes and the packet's size in the ring, trailer included.
    #[inline(always)]
    fn next_descriptor(
        &mut self,
    ) -> Result<(PacketDescriptor, [u8; DESCRIPTOR_SIZE], u32), ReadError> {
        let available = self.available()?;
        if available == 0 {
            return Err(ReadError::Empty);
        }
        if available < (DESCRIPTOR_SIZE + TRAILER_SIZE) as u32 {
            return Err(Corrupt::TruncatedPacket { available }.into());
        }
        // The descriptor is read exactly once; what `read` puts in `buf` is this copy, not a
        // re-read.
        let mut raw = [0u8; DESCRIPTOR_SIZE];
        copy_from_ring(&self.mem, self.head, &mut raw);
        let desc = PacketDescriptor::read_from_bytes(&raw[..])
            .map_err(|_| ReadError::Corrupt(Corrupt::TruncatedPacket { available }))?;
        let (offset8, length8) = (desc.data_offset8, desc.length8);
        if offset8 < (DESCRIPTOR_SIZE / 8) as u16 || offset8 > length8 {
            return Err(Corrupt::BadDataOffset { offset8, length8 }.into());
        }
        let len = length8 as u32 * 8;
        let total = len + TRAILER_SIZE as u32;
        if total > available {
            return Err(Corrupt::LengthExceedsAvailable {
                length: total,
                available,
            }
            .into());
        }
        Ok((desc, raw, total))
    }

    /// Whether a packet is available now (reads the write index if needed).
    pub fn is_empty(&mut self) -> Result<bool, Corrupt> {
        Ok(self.available()? == 0)
    }

    /// Publishes the read cursor as the read index, freeing the space of every packet read
    /// since the last publish, and says whether to signal the writer: only if the writer set
    /// the pending-send-size feature bit, is waiting (pending send size non-zero), and this
    /// publish moved the free space from "not enough" to "enough" (§7.9).
    pub fn publish(&mut self) -> Signal {
        if self.head == self.published {
            return Signal::NotNeeded;
        }
        let old = self.published;
        self.published = self.head;
        let c = self.mem.control();
        // Release: this reader's copies out of the freed bytes are done before the writer may
        // reuse them.
        c.read_index.store(self.head, Ordering::Release);
        if c.feature_bits.load(Ordering::Relaxed) & FEATURE_PENDING_SEND_SIZE == 0 {
            return Signal::NotNeeded;
        }
        // Full barrier: the read index store is ordered before the pending-send-size load
        // (store→load); the writer does the mirror image in `request_space`.
        fence(Ordering::SeqCst);
        // Low bits masked: some writers set "ring size − 1" (OpenVMM does the same).
        let pending = c.pending_send_size.load(Ordering::Relaxed) & !7;
        if pending == 0 {
            return Signal::NotNeeded;
        }
        let w = c.write_index.load(Ordering::Acquire);
        let Ok(w) = check_write_index(w, self.size) else {
            // A corrupt write index surfaces at the next read; a spurious signal is harmless.
            return Signal::Needed;
        };
        let free_now = self.size - distance(self.head, w, self.size);
        let freed = distance(old, self.head, self.size);
        Signal::from_bool(free_now > pending && free_now.saturating_sub(freed) <= pending)
    }

    /// Sets the interrupt mask: the writer need not signal while this reader drains.
    pub fn begin_drain(&mut self) {
        if !self.masked {
            self.mem
                .control()
                .interrupt_mask
                .store(1, Ordering::Relaxed);
            self.masked = true;
        }
    }

    /// Ends a drain before the reader sleeps: publishes the read index, clears the interrupt
    /// mask, then (full barrier) re-reads the write index. If data arrived meanwhile
    /// (`more`), the writer may have seen the mask set or a stale read index and not
    /// signalled, so the caller must drain again rather than sleep.
    pub fn finish_drain(&mut self) -> DrainEnd {
        let signal = self.publish();
        let c = self.mem.control();
        if self.masked {
            c.interrupt_mask.store(0, Ordering::Relaxed);
            self.masked = false;
        }
        // Full barrier: read index and mask stores are ordered before the write-index load;
        // the writer stores its index, fences, then loads mask and read index.
        fence(Ordering::SeqCst);
        let w = c.write_index.load(Ordering::Acquire);
        let more = match check_write_index(w, self.size) {
            Ok(w) => {
                self.cached_write = w;
                w != self.head
            }
            // Let the next read report the corruption.
            Err(_) => true,
        };
        DrainEnd { signal, more }
    }

    /// Whether this reader currently holds the interrupt mask set.
    pub fn is_masked(&self) -> bool {
        self.masked
    }
}
