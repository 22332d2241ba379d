//! The send path (devices §2.9): frames copied into send-buffer sections — consecutive
//! frames packed into one section as one VMBus packet, as Linux and FreeBSD do — and frames
//! too large for a section (jumbo) as GPA-direct page buffers.
//!
//! A burst: [`Nic::queue_frame`] / [`Nic::queue_frame_with`] append frames to the open
//! section (submitted when it is full or a frame does not fit), [`Nic::flush`] submits it.
//! Frames of a burst reach the host in order; its sections are one send batch of the channel
//! (one publish, at most one signal at the flush).
//!
//! Checksum offload: the `_checksum` variants leave the frame's TCP/UDP checksum to the NIC
//! ([`crate::offload::prepare_tx_checksum`]): with a negotiated transmit offload the
//! pseudo-header sum is preloaded and a checksum PPI (devices §2.14) goes with the frame,
//! otherwise the checksum is computed in software.

use super::*;
use crate::offload::{TxChecksum, prepare_tx_checksum};
use crate::protocol::PpiU32;

/// Bytes of the one PPI a frame may carry (checksum info).
pub(super) const PPI_BYTES: usize = size_of::<PpiU32>();

/// Bytes of one page-buffer slot: a page for the RNDIS header, then the frame from the next
/// page boundary.
pub(super) const fn large_slot_bytes(max_frame: usize) -> usize {
    PAGE + max_frame.div_ceil(PAGE) * PAGE
}

/// Most GPA ranges of a page-buffer send: the header, then one per frame page.
const MAX_LARGE_RANGES: usize = 1 + (MAX_JUMBO_MTU as usize + ETHERNET_HEADER).div_ceil(PAGE);

/// The frame size [`Nic::can_send`] promises room for in a burst's open section. Any frame
/// whose message (with the host's packet alignment) fits a section is packed behind the
/// frames before it (Linux packs whatever fits, devices §2.9): a burst of full-size frames
/// then shares sections too (3 per 6144-byte section), one request and completion each.
pub const PACK_THRESHOLD: usize = 512;
/// Most RNDIS messages packed into one section, whatever the host allows.
pub const MAX_PACKED: u32 = 64;
/// Largest packet alignment accepted from the host (RNDIS packet_alignment_factor 6).
pub const MAX_PACKET_ALIGNMENT: u32 = 64;

/// RNDIS PACKET header size.
const HEADER: usize = size_of::<RndisPacket>();

/// Section bytes a packed RNDIS PACKET with `body` bytes after its header (PPIs and frame)
/// takes, spaced to the host's packet `alignment` (devices §2.9).
pub(super) fn packed_message_len(body: usize, alignment: u32) -> usize {
    (HEADER + body).next_multiple_of(alignment as usize)
}

/// The section a burst is filling.
#[derive(Clone, Copy, Debug)]
pub(super) struct OpenSection {
    pub(super) section: u16,
    /// Bytes used (messages with their padding).
    pub(super) used: u32,
    /// Messages in it.
    pub(super) frames: u16,
}

impl<'b, T: Transport, H: Hal, const N: usize, const M: usize> Queue<'_, 'b, T, H, N, M> {
    /// Sends one Ethernet frame (header + payload, no FCS) now: it goes to the host behind the
    /// frames queued before it, in their section if it is small, and the burst is submitted
    /// ([`Nic::flush`]). On [`NetError::Busy`] this frame was not sent: poll and retry.
    /// Interrupt-safe.
    pub fn send_frame(&mut self, frame: &[u8]) -> Result<(), NetError> {
        self.queue_frame(frame)?;
        // The frame is queued: a flush refused for back-pressure is retried by the next
        // flush or poll, so it is not an error of this frame.
        match self.flush() {
            Ok(()) | Err(NetError::Busy(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sends a burst: frames are packed into shared sections (up to the host's max packets
    /// per message and the section size); a frame too large for a section goes alone,
    /// GPA-direct; the burst is then submitted with [`Nic::flush`]. Returns how many
    /// frames were taken (a prefix of `frames`; fewer on back-pressure — poll and send the
    /// rest). Errors other than back-pressure end the burst.
    pub fn send_batch(&mut self, frames: &[&[u8]]) -> Result<usize, NetError> {
        self.batch(frames, false)
    }

    /// [`Nic::send_batch`] with each frame's TCP/UDP checksum left to the NIC (see
    /// [`Nic::queue_frame_checksum_with`]).
    pub fn send_batch_checksum(&mut self, frames: &[&[u8]]) -> Result<usize, NetError> {
        self.batch(frames, true)
    }

    fn batch(&mut self, frames: &[&[u8]], checksum: bool) -> Result<usize, NetError> {
        let mut taken = 0;
        for f in frames {
            match self.queue(f.len(), |buf| buf.copy_from_slice(f), checksum) {
                Ok(()) => taken += 1,
                Err(NetError::Busy(_)) => break,
                Err(e) => {
                    self.flush_quietly();
                    return Err(e);
                }
            }
        }
        self.flush_quietly();
        Ok(taken)
    }

    /// Queues one frame in the current burst (see [`Nic::send_batch`]); it reaches the host
    /// at the latest with the next [`Nic::flush`] (or [`Nic::poll`]). On [`NetError::Busy`]
    /// it was not queued. Interrupt-safe.
    pub fn queue_frame(&mut self, frame: &[u8]) -> Result<(), NetError> {
        self.queue_frame_with(frame.len(), |buf| buf.copy_from_slice(frame))
    }

    /// Queues a `len`-byte frame that `build` writes into a private buffer of exactly `len`
    /// bytes (a network stack building its frame in place); the NIC copies it into host
    /// memory once. `build` is called only if the frame is accepted.
    pub fn queue_frame_with<R>(
        &mut self,
        len: usize,
        build: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R, NetError> {
        self.queue_with(len, build, false)
    }

    /// [`Nic::send_frame`] with the TCP/UDP checksum left to the NIC (see
    /// [`Nic::queue_frame_checksum_with`]).
    pub fn send_frame_checksum(&mut self, frame: &[u8]) -> Result<(), NetError> {
        self.queue_frame_checksum(frame)?;
        match self.flush() {
            Ok(()) | Err(NetError::Busy(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// [`Nic::queue_frame`] with the TCP/UDP checksum left to the NIC (see
    /// [`Nic::queue_frame_checksum_with`]).
    pub fn queue_frame_checksum(&mut self, frame: &[u8]) -> Result<(), NetError> {
        self.queue_frame_checksum_with(frame.len(), |buf| buf.copy_from_slice(frame))
    }

    /// [`Nic::queue_frame_with`] for a frame whose TCP or UDP checksum (over IPv4 or IPv6)
    /// the NIC fills in; its checksum field may hold anything. When the host offloads that
    /// checksum ([`Offloads::tx`]), the NIC preloads the pseudo-header sum (with the length,
    /// the convention of Windows, Linux and FreeBSD) and sends a checksum PPI; otherwise it
    /// computes the checksum itself. The IPv4 header checksum and any other protocol's
    /// checksum stay the caller's; a frame that is not TCP/UDP over IP (or an IPv4 fragment,
    /// or IPv6 with extension headers) is sent as built.
    pub fn queue_frame_checksum_with<R>(
        &mut self,
        len: usize,
        build: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R, NetError> {
        self.queue_with(len, build, true)
    }

    /// [`Queue::queue`] for a caller's builder: the builder goes in behind `dyn`, so the
    /// queueing body is instantiated once for all builders (a network stack has one per
    /// frame kind) rather than once per closure type. The slice paths (`send_frame`,
    /// `send_batch`, `queue_frame`) keep their own inlined instance.
    fn queue_with<R>(
        &mut self,
        len: usize,
        build: impl FnOnce(&mut [u8]) -> R,
        checksum: bool,
    ) -> Result<R, NetError> {
        let mut build = Some(build);
        let mut built = None;
        let mut build_once = |buf: &mut [u8]| {
            if let Some(build) = build.take() {
                built = Some(build(buf));
            }
        };
        let build_dyn: &mut dyn FnMut(&mut [u8]) = &mut build_once;
        self.queue(len, build_dyn, checksum)?;
        // `Ok` means the frame was built, exactly once.
        built.ok_or(NetError::InvalidArgument("frame not built"))
    }

    /// The checksum PPI bytes a frame carries: none for the plain API or without transmit
    /// offloads (the checksum is then computed in software).
    fn ppi_len(&self, checksum: bool) -> usize {
        if checksum && !self.core.info.offloads.tx.is_empty() {
            PPI_BYTES
        } else {
            0
        }
    }

    fn queue<R>(
        &mut self,
        len: usize,
        build: impl FnOnce(&mut [u8]) -> R,
        checksum: bool,
    ) -> Result<R, NetError> {
        let ppi_len = self.ppi_len(checksum);
        if len < ETHERNET_HEADER || len > self.core.max_frame || len > M {
            self.core.stats.tx_bad_size += 1;
            return Err(NetError::FrameSize(len));
        }
        // After the size check: `len <= M`, so this cannot overflow.
        let packed_len = packed_message_len(ppi_len + len, self.core.info.packet_alignment);
        let section_size = self.core.info.section_size as usize;
        let packable = packed_len <= section_size
            && packed_len <= M
            && self.core.info.max_packets_per_message > 1;
        // The host's packet alignment spaces packed messages; a message alone in its section
        // needs only the usual 8-byte padding (a full-size frame padded to 64 would not fit a
        // 1560-byte section).
        let msg_len = if packable {
            packed_len
        } else {
            rndis::packet_message_len(ppi_len + len)
        };
        let fits = self.core.burst.is_some_and(|o| {
            packable
                && u32::from(o.frames) < self.core.info.max_packets_per_message
                && o.used as usize + msg_len <= section_size
        });
        if !fits {
            self.submit_burst()?;
        }
        if !packable && (msg_len > section_size || msg_len > M) {
            return self.send_large(len, build, checksum);
        }
        if self.core.burst.is_none() {
            if self.channel.requests_full() {
                self.core.stats.tx_busy_requests += 1;
                return Err(NetError::Busy(Busy::Requests));
            }
            let Some(section) = self.core.sections.alloc() else {
                self.core.stats.tx_busy_section += 1;
                return Err(NetError::Busy(Busy::NoSection));
            };
            self.core.burst = Some(OpenSection {
                section,
                used: 0,
                frames: 0,
            });
        }
        let Some(mut open) = self.core.burst else {
            return Err(NetError::InvalidArgument("no open section"));
        };
        // Header, PPI, frame and padding assembled privately, then one copy into the section.
        let mut header =
            rndis::packet_header_with_ppi(len, ppi_len).ok_or(NetError::FrameSize(len))?;
        header.header.msg_len = (msg_len as u32).into();
        let message = &mut self.msg[..msg_len];
        message[..HEADER].copy_from_slice(header.as_bytes());
        let end = HEADER + ppi_len + len;
        let r = build(&mut message[HEADER + ppi_len..end]);
        if checksum {
            apply_checksum(self.core, &mut message[HEADER..end], ppi_len);
        }
        message[end..].fill(0);
        let at = usize::from(open.section) * section_size + open.used as usize;
        if self
            .send_buf
            .as_ref()
            .is_none_or(|sb| sb.write_at(at, message).is_err())
        {
            if open.frames == 0 {
                self.core.sections.release(open.section);
                self.core.burst = None;
            }
            return Err(NetError::InvalidArgument("send buffer gone"));
        }
        open.used += msg_len as u32;
        open.frames += 1;
        self.core.burst = Some(open);
        if !packable || u32::from(open.frames) >= self.core.info.max_packets_per_message {
            // Full, or a frame that always goes alone: submit now (flush-or-poll retries a
            // refused submission).
            match self.submit_burst() {
                Ok(()) | Err(NetError::Busy(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(r)
    }

    /// Submits the burst: the open section goes to the host as one SEND_RNDIS_PKT.
    /// [`NetError::Busy`] (ring full): the frames stay queued; flush again after a poll.
    /// Interrupt-safe.
    pub fn flush(&mut self) -> Result<(), NetError> {
        let r = self.submit_burst();
        self.end_send_batch();
        r
    }

    /// Frames queued and not yet handed to the host.
    pub fn queued_frames(&self) -> usize {
        self.core.burst.map_or(0, |o| usize::from(o.frames))
    }

    /// A flush whose back-pressure is left for the next flush or poll.
    pub(super) fn flush_quietly(&mut self) {
        self.submit_quietly();
        self.end_send_batch();
    }

    /// Submits the burst into the send batch it opens, leaving the batch open; back-pressure
    /// is left for the next flush or poll.
    pub(super) fn submit_quietly(&mut self) {
        if let Err(e) = self.submit_burst()
            && !matches!(e, NetError::Busy(_))
        {
            log::warn!("netvsc: queued frames not submitted: {e}");
        }
    }

    /// Ends the channel's send batch the burst (or a poll) opened ([`Nic::flush`]): its
    /// packets reach the host with one publish and at most one signal. A failed signal
    /// leaves them in the ring (the host finds them when it next looks).
    pub(super) fn end_send_batch(&mut self) {
        if let Err(e) = self.channel.end_send_batch() {
            log::warn!("netvsc: signalling a burst failed: {e}");
        }
    }

    fn submit_burst(&mut self) -> Result<(), NetError> {
        let Some(open) = self.core.burst else {
            return Ok(());
        };
        let m = NvspRndisPacket {
            msg_type: msg::SEND_RNDIS_PKT.into(),
            channel_type: CHANNEL_TYPE_DATA.into(),
            send_buf_section_index: u32::from(open.section).into(),
            send_buf_section_size: open.used.into(),
        };
        let ctx = Ctx::Data {
            section: open.section,
            frames: open.frames,
        };
        // The burst's first section opens a send batch, ended by the flush: the sections of
        // one burst are published together. (A dead channel fails the request below.)
        if !self.channel.in_send_batch() {
            let _ = self.channel.begin_send_batch();
        }
        match self.channel.request(&[&padded(m.as_bytes())], ctx) {
            Ok(_) => {
                self.core.burst = None;
                self.core.stats.tx_frames += u64::from(open.frames);
                Ok(())
            }
            Err(ChannelError::Full) => {
                self.core.stats.tx_busy_ring += 1;
                Err(NetError::Busy(Busy::RingFull))
            }
            Err(ChannelError::TooManyRequests) => {
                self.core.stats.tx_busy_requests += 1;
                Err(NetError::Busy(Busy::Requests))
            }
            Err(e) => {
                // A dead channel: the queued frames are lost with it.
                self.core.burst = None;
                self.core.sections.release(open.section);
                self.core.stats.tx_failed += u64::from(open.frames);
                Err(NetError::Channel(e))
            }
        }
    }

    /// Sends a frame larger than a section as GPA-direct page buffers (devices §2.9): the
    /// RNDIS PACKET header alone in the first range (it and its PPIs never cross a page),
    /// then the frame split at page boundaries, one single-page range each; no section
    /// (index 0xFFFFFFFF), completion requested. The frame is built in the private buffer.
    fn send_large<R>(
        &mut self,
        len: usize,
        build: impl FnOnce(&mut [u8]) -> R,
        checksum: bool,
    ) -> Result<R, NetError> {
        let ppi_len = self.ppi_len(checksum);
        if ppi_len + len > M {
            self.core.stats.tx_bad_size += 1;
            return Err(NetError::FrameSize(len));
        }
        let Some(lb) = self.large_buf.as_ref() else {
            self.core.stats.tx_bad_size += 1;
            return Err(NetError::FrameSize(len));
        };
        if self.core.large_free == 0 {
            self.core.stats.tx_busy_section += 1;
            return Err(NetError::Busy(Busy::NoSection));
        }
        if self.channel.requests_full() {
            self.core.stats.tx_busy_requests += 1;
            return Err(NetError::Busy(Busy::Requests));
        }
        let slot = self.core.large_free.trailing_zeros() as u8;
        let base = usize::from(slot) * large_slot_bytes(self.core.max_frame);
        let mut header =
            rndis::packet_header_with_ppi(len, ppi_len).ok_or(NetError::FrameSize(len))?;
        // No padding: msg_len is the bytes the ranges carry.
        header.header.msg_len = ((HEADER + ppi_len + len) as u32).into();
        // The PPI, then the frame, in the private buffer.
        let area = &mut self.msg[..ppi_len + len];
        let r = build(&mut area[ppi_len..]);
        if checksum {
            apply_checksum(self.core, area, ppi_len);
        }
        let (ppi, frame) = area.split_at(ppi_len);
        let bad = NetError::InvalidArgument("page-buffer slot outside its buffer");
        // Header and PPI alone in the first page (devices §2.9).
        if lb.write_at(base, header.as_bytes()).is_err()
            || lb.write_at(base + HEADER, ppi).is_err()
            || lb.write_at(base + PAGE, frame).is_err()
        {
            return Err(bad);
        }
        let first = lb.dma(base, HEADER + ppi_len).map_err(|_| bad)?;
        let mut ranges = [first; MAX_LARGE_RANGES];
        let mut used = 1;
        for (i, chunk) in frame.chunks(PAGE).enumerate() {
            match (
                ranges.get_mut(used),
                lb.dma(base + PAGE * (i + 1), chunk.len()),
            ) {
                (Some(r), Ok(d)) => *r = d,
                _ => return Err(NetError::FrameSize(len)),
            }
            used += 1;
        }
        let m = NvspRndisPacket {
            msg_type: msg::SEND_RNDIS_PKT.into(),
            channel_type: CHANNEL_TYPE_DATA.into(),
            send_buf_section_index: NO_SECTION.into(),
            send_buf_section_size: 0.into(),
        };
        match self.channel.request_dma(
            &ranges[..used],
            &[&padded(m.as_bytes())],
            Ctx::Large { slot },
        ) {
            Ok(_) => {
                self.core.large_free &= !(1 << slot);
                self.core.stats.tx_frames += 1;
                Ok(r)
            }
            Err(ChannelError::Full) => {
                self.core.stats.tx_busy_ring += 1;
                Err(NetError::Busy(Busy::RingFull))
            }
            Err(ChannelError::TooManyRequests) => {
                self.core.stats.tx_busy_requests += 1;
                Err(NetError::Busy(Busy::Requests))
            }
            Err(e) => Err(NetError::Channel(e)),
        }
    }
}

/// Fills in the checksum of the frame at `area[ppi_len..]` and its checksum PPI at
/// `area[..ppi_len]` (value 0, "nothing to offload", when the frame needs none).
fn apply_checksum(core: &mut Core, area: &mut [u8], ppi_len: usize) {
    let (ppi, frame) = area.split_at_mut(ppi_len);
    let value = match prepare_tx_checksum(frame, &core.info.offloads) {
        TxChecksum::Offload(v) => {
            core.stats.tx_csum_offloaded += 1;
            v
        }
        TxChecksum::Software => {
            core.stats.tx_csum_software += 1;
            0
        }
        TxChecksum::NotApplicable => 0,
    };
    if ppi_len == PPI_BYTES {
        ppi.copy_from_slice(PpiU32::new(crate::protocol::PPI_CHECKSUM, value).as_bytes());
    }
}
