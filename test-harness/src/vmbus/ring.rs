//! The host ends of a channel's two rings (vmbus-core §7), written from the protocol text: the
//! host READS the guest's outbound ring (first ring of the GPADL) and WRITES the guest's inbound
//! ring (second ring, from the downstream page offset). Everything the guest wrote is validated;
//! violations are returned as protocol-error strings and the ring is treated as corrupt.

use std::sync::atomic::{Ordering, fence};

use super::mem::GuestRam;
use super::packet::{HostPacket, parse_packet};

const PAGE: u64 = 4096;
/// Control page: write index.
const WRITE_INDEX: u64 = 0x00;
/// Control page: read index.
const READ_INDEX: u64 = 0x04;
/// Control page: interrupt mask (reader asks the writer not to signal).
const INTERRUPT_MASK: u64 = 0x08;
/// Control page: pending send size (writer waits for this much space).
const PENDING_SEND_SIZE: u64 = 0x0C;
/// Control page: feature bits (bit 0 = pending-send-size supported), set by the ring's writer.
const FEATURE_BITS: u64 = 0x40;

/// One ring in guest memory: a control page and data pages (not necessarily contiguous).
pub(crate) struct RingMem {
    ram: GuestRam,
    control: u64,
    data: Vec<u64>,
}

impl RingMem {
    /// A ring from its pages: `pfns[0]` is the control page, the rest the data area.
    pub fn new(ram: GuestRam, pfns: &[u64]) -> Self {
        Self {
            ram,
            control: pfns[0] * PAGE,
            data: pfns[1..].to_vec(),
        }
    }

    /// Data area size in bytes.
    pub fn size(&self) -> u32 {
        (self.data.len() as u64 * PAGE) as u32
    }

    fn ctl(&self, off: u64) -> u32 {
        self.ram.load_u32(self.control + off).unwrap_or(u32::MAX)
    }

    fn set_ctl(&self, off: u64, v: u32) {
        self.ram.store_u32(self.control + off, v);
    }

    /// Copies from the data area at `offset`, wrapping at the end.
    fn read(&self, mut offset: u32, buf: &mut [u8]) {
        let size = self.size();
        let mut done = 0;
        while done < buf.len() {
            offset %= size;
            let page = (offset as u64 / PAGE) as usize;
            let in_page = offset as u64 % PAGE;
            let n = ((PAGE - in_page) as usize).min(buf.len() - done);
            self.ram
                .read(self.data[page] * PAGE + in_page, &mut buf[done..done + n]);
            done += n;
            offset += n as u32;
        }
    }

    /// Copies into the data area at `offset`, wrapping at the end.
    fn write(&self, mut offset: u32, buf: &[u8]) {
        let size = self.size();
        let mut done = 0;
        while done < buf.len() {
            offset %= size;
            let page = (offset as u64 / PAGE) as usize;
            let in_page = offset as u64 % PAGE;
            let n = ((PAGE - in_page) as usize).min(buf.len() - done);
            self.ram
                .write(self.data[page] * PAGE + in_page, &buf[done..done + n]);
            done += n;
            offset += n as u32;
        }
    }

    /// Reads an index field and checks it is < size and 8-aligned.
    fn index(&self, off: u64, what: &str) -> Result<u32, String> {
        let v = self.ctl(off);
        if v >= self.size() || !v.is_multiple_of(8) {
            return Err(format!(
                "{what} {v:#x} invalid for a {:#x}-byte ring (must be < size and 8-aligned)",
                self.size()
            ));
        }
        Ok(v)
    }

    /// Checks the control page as the guest must leave it at open (§7.6): both indices 0.
    pub fn check_fresh(&self, which: &str) -> Result<(), String> {
        let (w, r) = (self.ctl(WRITE_INDEX), self.ctl(READ_INDEX));
        if w != 0 || r != 0 {
            return Err(format!(
                "{which} ring not initialised at OPENCHANNEL: write index {w:#x}, read index {r:#x} (both must be 0)"
            ));
        }
        Ok(())
    }
}

fn used(w: u32, r: u32, size: u32) -> u32 {
    if w >= r { w - r } else { size - r + w }
}

/// Host reader of the guest's outbound ring.
pub(crate) struct HostReader {
    ring: RingMem,
    read: u32,
    /// Whether this reader set the ring's interrupt mask.
    masked: bool,
    /// Where each packet is copied out of the ring.
    scratch: Vec<u8>,
    /// The vector the next drain returns (empty; its allocation kept).
    out: Vec<HostPacket>,
    /// Packets handled and given back ([`Self::recycle`]), decoded into again.
    spare: Vec<HostPacket>,
}

/// What one drain produced.
pub(crate) struct Drained {
    /// Packets, in ring order.
    pub packets: Vec<HostPacket>,
    /// The guest was blocked on pending-send-size and now fits: signal it.
    pub signal_guest: bool,
    /// The guest wrote more while the host was publishing its read index: drain again
    /// without waiting for a signal (the guest signals only on empty -> non-empty, and the
    /// ring was not empty from its point of view).
    pub more: bool,
}

impl HostReader {
    /// The reader over `ring`, starting at read index 0.
    pub fn new(ring: RingMem) -> Self {
        Self {
            ring,
            read: 0,
            masked: false,
            scratch: Vec::new(),
            out: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// Sets or clears the ring's interrupt mask (§7.2 @0x08, owned by the reader): while set,
    /// the guest does not signal for packets it writes (§7.8 step 6), because the host is
    /// watching the ring anyway. Clearing it is followed by a full barrier, so a drain after
    /// it sees every packet committed while the mask was still set.
    pub fn set_mask(&mut self, on: bool) {
        if self.masked == on {
            return;
        }
        self.masked = on;
        self.ring.set_ctl(INTERRUPT_MASK, u32::from(on));
        fence(Ordering::SeqCst);
    }

    /// Reads every complete packet the guest published (§7.9), publishes the new read index and
    /// decides whether the guest must be signalled for space.
    pub fn drain(&mut self) -> Result<Drained, String> {
        let size = self.ring.size();
        // Decoded into packets of earlier drains (see `recycle`): no allocation per packet.
        let mut packets = std::mem::take(&mut self.out);
        let old_read = self.read;
        loop {
            let write = self.ring.index(WRITE_INDEX, "outbound write index")?;
            if write == self.read {
                break;
            }
            let avail = used(write, self.read, size);
            if avail < 24 {
                return Err(format!(
                    "outbound ring holds {avail} bytes, less than a descriptor and trailer"
                ));
            }
            let mut desc = [0u8; 16];
            self.ring.read(self.read, &mut desc);
            let offset8 = u16::from_le_bytes([desc[2], desc[3]]);
            let len8 = u16::from_le_bytes([desc[4], desc[5]]);
            if offset8 < 2 {
                return Err(format!(
                    "packet at {:#x}: data offset8 {offset8} < 2",
                    self.read
                ));
            }
            if len8 < offset8 {
                return Err(format!(
                    "packet at {:#x}: length8 {len8} < offset8 {offset8}",
                    self.read
                ));
            }
            let total = u32::from(len8) * 8 + 8;
            if total > avail {
                return Err(format!(
                    "packet at {:#x}: {total} bytes with trailer but only {avail} available",
                    self.read
                ));
            }
            // Copied once into the reader's own buffer (reused: no allocation per packet).
            let bytes = &mut self.scratch;
            bytes.clear();
            bytes.resize(total as usize, 0);
            self.ring.read(self.read, bytes);
            let trailer =
                u64::from_le_bytes(bytes[total as usize - 8..].try_into().unwrap_or([0; 8]));
            if trailer != u64::from(self.read) << 32 {
                return Err(format!(
                    "packet at {:#x}: trailer {trailer:#x}, expected {:#x} (old write index << 32)",
                    self.read,
                    u64::from(self.read) << 32
                ));
            }
            let mut packet = self.spare.pop().unwrap_or_else(HostPacket::empty);
            parse_packet(&bytes[..total as usize - 8], &mut packet)
                .map_err(|e| format!("packet at {:#x}: {e}", self.read))?;
            packets.push(packet);
            self.read = (self.read + total) % size;
        }
        if self.read == old_read {
            return Ok(Drained {
                packets,
                signal_guest: false,
                more: false,
            });
        }
        // Every packet byte was copied before the index is published.
        fence(Ordering::SeqCst);
        self.ring.set_ctl(READ_INDEX, self.read);
        fence(Ordering::SeqCst);
        let signal_guest = self.space_signal(old_read);
        // §7.9 step 8: the re-check after publishing. A packet the guest committed before it
        // saw the new read index did not signal; only this re-read finds it.
        fence(Ordering::SeqCst);
        let more = self.ring.ctl(WRITE_INDEX) != self.read;
        Ok(Drained {
            packets,
            signal_guest,
            more,
        })
    }

    /// Takes back the packets of a drain once they were handled, to decode later packets
    /// into (their buffers are reused).
    pub fn recycle(&mut self, mut packets: Vec<HostPacket>) {
        self.spare.append(&mut packets);
        self.out = packets;
    }

    /// §7.9 steps 4–7: signal only on the blocked → unblocked transition of pending send size.
    fn space_signal(&self, old_read: u32) -> bool {
        if self.ring.ctl(FEATURE_BITS) & 1 == 0 {
            return false;
        }
        let pending = self.ring.ctl(PENDING_SEND_SIZE) & !7;
        if pending == 0 {
            return false;
        }
        fence(Ordering::SeqCst);
        let size = self.ring.size();
        let write = self.ring.ctl(WRITE_INDEX);
        if write >= size {
            return false;
        }
        let avail_now = size - used(write, self.read, size);
        let bytes_read = used(self.read, old_read, size);
        avail_now.saturating_sub(bytes_read) <= pending && avail_now > pending
    }
}

/// Why the host could not write a packet.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WriteError {
    /// Not enough space now; pending send size was set.
    Full,
    /// Larger than the ring can ever hold.
    TooLarge,
    /// The guest's read index is invalid.
    Corrupt(String),
}

/// Host writer of the guest's inbound ring: [`HostWriter::write`] copies packets in,
/// [`HostWriter::commit`] publishes every packet written since the last commit with one
/// write-index store and says whether to interrupt the guest.
pub(crate) struct HostWriter {
    ring: RingMem,
    /// Next byte to fill (packets between `committed` and here are not yet published).
    write: u32,
    /// The write index as last published.
    committed: u32,
}

impl HostWriter {
    /// The writer over `ring`: sets feature bit 0 (the host honours and fills pending send
    /// size), as the writer of this ring.
    pub fn new(ring: RingMem) -> Self {
        ring.set_ctl(FEATURE_BITS, ring.ctl(FEATURE_BITS) | 1);
        Self {
            ring,
            write: 0,
            committed: 0,
        }
    }

    /// Data size of the ring.
    pub fn size(&self) -> u32 {
        self.ring.size()
    }

    /// Copies `packet` (descriptor .. padding, a multiple of 8) plus its trailer (§7.8) into
    /// the ring after the packets already written, without publishing it. When it does not
    /// fit, pending send size is set to what the host waits for, measured from the published
    /// write index as the guest computes it (§7.8 step 7), and `Full` is returned.
    pub fn write(&mut self, packet: &[u8]) -> Result<(), WriteError> {
        let size = self.ring.size();
        let total = packet.len() as u32 + 8;
        if total >= size - 8 {
            return Err(WriteError::TooLarge);
        }
        let read = self
            .ring
            .index(READ_INDEX, "inbound read index")
            .map_err(WriteError::Corrupt)?;
        if size - used(self.write, read, size) <= total {
            let uncommitted = used(self.write, self.committed, size);
            self.ring.set_ctl(PENDING_SEND_SIZE, uncommitted + total);
            fence(Ordering::SeqCst);
            let read = self
                .ring
                .index(READ_INDEX, "inbound read index")
                .map_err(WriteError::Corrupt)?;
            if size - used(self.write, read, size) <= total {
                return Err(WriteError::Full);
            }
        }
        let old = self.write;
        self.ring.write(old, packet);
        self.ring.write(
            old + packet.len() as u32,
            &(u64::from(old) << 32).to_le_bytes(),
        );
        self.write = (old + total) % size;
        if self.ring.ctl(PENDING_SEND_SIZE) != 0 {
            self.ring.set_ctl(PENDING_SEND_SIZE, 0);
        }
        Ok(())
    }

    /// Publishes the packets written since the last commit (one write-index store) and says
    /// whether to interrupt the guest: only if the ring was empty before them and the guest's
    /// interrupt mask is clear (§7.8 step 6), so a batch of completions costs at most one
    /// interrupt.
    pub fn commit(&mut self) -> bool {
        if self.write == self.committed {
            return false;
        }
        let old = self.committed;
        // Every packet byte is visible before the index that publishes it.
        fence(Ordering::SeqCst);
        self.committed = self.write;
        self.ring.set_ctl(WRITE_INDEX, self.write);
        fence(Ordering::SeqCst);
        let mask = self.ring.ctl(INTERRUPT_MASK);
        let read = self.ring.ctl(READ_INDEX);
        mask == 0 && read == old
    }
}
