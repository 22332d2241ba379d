//! LSO v2 sends (devices §2.9, §2.14): one large TCP segment handed to the host with an LSO
//! PPI, which cuts it into MSS-sized segments. The frame goes as GPA-direct page buffers
//! from an LSO slot: the RNDIS header and the PPI alone in the first page, the frame (its
//! headers rewritten as the host expects) from the next page on, one range per page.

use zerocopy::IntoBytes;

use super::*;
use crate::offload::{LSO_MAX_HEADERS, LSO_MAX_PAYLOAD, lso_plan, prepare_lso_headers};
use crate::protocol::{PPI_LSO, PpiU32};

/// LSO sends in flight at most.
pub const LSO_SLOTS: usize = 2;
/// Bytes of one LSO slot: a page for the RNDIS header and PPI, then the frame.
const LSO_SLOT_BYTES: usize = PAGE + (LSO_MAX_HEADERS + LSO_MAX_PAYLOAD).div_ceil(PAGE) * PAGE;
/// GPA ranges of an LSO send: the header page, then one per frame page (≤ 32, devices §2.9).
const LSO_RANGES: usize = 1 + (LSO_MAX_HEADERS + LSO_MAX_PAYLOAD).div_ceil(PAGE);
const _: () = assert!(LSO_RANGES <= 32);

/// RNDIS PACKET header size.
const HEADER: usize = size_of::<RndisPacket>();

impl<'b, T: Transport, H: Hal, const N: usize, const M: usize> Nic<'b, T, H, N, M> {
    /// Allocates the LSO slots when the host enabled LSO v2; without memory the NIC works
    /// on without LSO sends ([`Nic::send_lso`] falls back to an error).
    pub(super) fn allocate_lso(&mut self, bus: &'b Vmbus<T, H>) {
        let o = &self.core.info.offloads;
        if o.lso_v2_ipv4.is_none() && o.lso_v2_ipv6.is_none() {
            return;
        }
        match HostBuffer::new(bus, LSO_SLOT_BYTES / PAGE * LSO_SLOTS) {
            Ok(b) => {
                self.lso_buf = Some(b);
                self.core.lso_free = ((1u32 << LSO_SLOTS) - 1) as u8;
            }
            Err(e) => log::warn!("netvsc: no memory for LSO sends ({e})"),
        }
    }

    /// Sends `frame`, one TCP segment of up to [`LSO_MAX_PAYLOAD`] bytes of payload, as an
    /// LSO v2 send: the host cuts it into segments of `mss` payload bytes, fixing lengths,
    /// sequence numbers and checksums (the checksum field of `frame` may hold anything). A
    /// frame that fits the MTU goes as one frame through [`Nic::send_frame_checksum`]. The
    /// frames queued before it reach the host first. Bytes after the IP datagram (its length
    /// field says where it ends) are not sent. Errors: [`NetError::Lso`] (not TCP, LSO
    /// v2 not negotiated for its IP version, an MSS whose segments exceed the MTU, too much
    /// payload or too few segments), [`NetError::Busy`] (retry after a poll).
    /// Interrupt-safe.
    pub fn send_lso(&mut self, frame: &[u8], mss: usize) -> Result<(), NetError> {
        if frame.len() <= self.core.max_frame {
            return self.send_frame_checksum(frame);
        }
        let plan = lso_plan(frame, mss, self.core.max_frame, &self.core.info.offloads)
            .map_err(NetError::Lso)?;
        if self.lso_buf.is_none() {
            return Err(NetError::InvalidArgument("no memory for LSO sends"));
        }
        if self.core.lso_free == 0 {
            self.core.stats.tx_busy_section += 1;
            return Err(NetError::Busy(Busy::NoSection));
        }
        // Order: what a burst queued goes first.
        self.lane().flush()?;
        if self.channel.requests_full() {
            self.core.stats.tx_busy_requests += 1;
            return Err(NetError::Busy(Busy::Requests));
        }
        let Some(lb) = self.lso_buf.as_ref() else {
            return Err(NetError::InvalidArgument("no memory for LSO sends"));
        };
        let slot = self.core.lso_free.trailing_zeros() as u8;
        let base = usize::from(slot) * LSO_SLOT_BYTES;
        let ppi = PpiU32::new(PPI_LSO, plan.ppi);
        // The IP datagram only: with its length zeroed, a host would send bytes after it
        // (Ethernet padding, garbage) as TCP payload.
        let len = plan.l4.offset + plan.l4.len;
        let mut header = rndis::packet_header_with_ppi(len, size_of::<PpiU32>())
            .ok_or(NetError::FrameSize(len))?;
        // No padding: msg_len is the bytes the ranges carry.
        header.header.msg_len = ((HEADER + size_of::<PpiU32>() + len) as u32).into();
        let mut headers = [0u8; LSO_MAX_HEADERS];
        let headers = &mut headers[..plan.header_len];
        headers.copy_from_slice(&frame[..plan.header_len]);
        prepare_lso_headers(headers, &plan);
        let bad = NetError::InvalidArgument("LSO slot outside its buffer");
        let frame_at = base + PAGE;
        if lb.write_at(base, header.as_bytes()).is_err()
            || lb.write_at(base + HEADER, ppi.as_bytes()).is_err()
            || lb.write_at(frame_at, headers).is_err()
            || lb
                .write_at(frame_at + plan.header_len, &frame[plan.header_len..len])
                .is_err()
        {
            return Err(bad);
        }
        let first = lb
            .dma(base, HEADER + size_of::<PpiU32>())
            .map_err(|_| bad)?;
        let mut ranges = [first; LSO_RANGES];
        let mut used = 1;
        for start in (0..len).step_by(PAGE) {
            let n = (len - start).min(PAGE);
            match (ranges.get_mut(used), lb.dma(frame_at + start, n)) {
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
        match self
            .channel
            .request_dma(&ranges[..used], &[&padded(m.as_bytes())], Ctx::Lso { slot })
        {
            Ok(_) => {
                self.core.lso_free &= !(1 << slot);
                self.core.stats.tx_frames += 1;
                self.core.stats.tx_lso += 1;
                self.core.stats.tx_lso_segments += plan.segments as u64;
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
            Err(e) => Err(NetError::Channel(e)),
        }
    }
}
