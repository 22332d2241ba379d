//! The send path (devices §2.9): frames copied into send-buffer sections, and frames too
//! large for a section (jumbo) as GPA-direct page buffers.

use super::*;

/// Bytes of one page-buffer slot: a page for the RNDIS header, then the frame from the next
/// page boundary.
pub(super) const fn large_slot_bytes(max_frame: usize) -> usize {
    PAGE + max_frame.div_ceil(PAGE) * PAGE
}

/// Most GPA ranges of a page-buffer send: the header, then one per frame page.
const MAX_LARGE_RANGES: usize = 1 + (MAX_JUMBO_MTU as usize + ETHERNET_HEADER).div_ceil(PAGE);

impl<'b, T: Transport, H: Hal, const N: usize, const M: usize> Nic<'b, T, H, N, M> {
    /// Sends one Ethernet frame (header + payload, no FCS) by copying it into a send-buffer
    /// section behind an RNDIS PACKET header, with completion requested. On
    /// [`NetError::Busy`] nothing was sent: poll and retry. Interrupt-safe.
    pub fn send_frame(&mut self, frame: &[u8]) -> Result<(), NetError> {
        if frame.len() < ETHERNET_HEADER || frame.len() > self.core.max_frame {
            self.core.stats.tx_bad_size += 1;
            return Err(NetError::FrameSize(frame.len()));
        }
        if self.channel.requests_full() {
            self.core.stats.tx_busy_requests += 1;
            return Err(NetError::Busy(Busy::Requests));
        }
        if rndis::packet_message_len(frame.len()) > self.core.info.section_size as usize {
            return self.send_large(frame);
        }
        let Some(section) = self.core.sections.alloc() else {
            self.core.stats.tx_busy_section += 1;
            return Err(NetError::Busy(Busy::NoSection));
        };
        let header = rndis::packet_header(frame.len()).ok_or(NetError::FrameSize(frame.len()))?;
        let len = header.header.msg_len.get() as usize;
        let at = usize::from(section) * self.core.info.section_size as usize;
        let pad = [0u8; 8];
        let written = self.send_buf.as_ref().is_some_and(|sb| {
            sb.write_at(at, header.as_bytes()).is_ok()
                && sb.write_at(at + size_of::<RndisPacket>(), frame).is_ok()
                && sb
                    .write_at(
                        at + size_of::<RndisPacket>() + frame.len(),
                        &pad[..len - size_of::<RndisPacket>() - frame.len()],
                    )
                    .is_ok()
        });
        if !written {
            self.core.sections.release(section);
            return Err(NetError::InvalidArgument("send buffer gone"));
        }
        let m = NvspRndisPacket {
            msg_type: msg::SEND_RNDIS_PKT.into(),
            channel_type: CHANNEL_TYPE_DATA.into(),
            send_buf_section_index: u32::from(section).into(),
            send_buf_section_size: (len as u32).into(),
        };
        match self
            .channel
            .request(&[&padded(m.as_bytes())], Ctx::Data { section })
        {
            Ok(_) => {
                self.core.stats.tx_frames += 1;
                Ok(())
            }
            Err(e) => {
                self.core.sections.release(section);
                Err(match e {
                    ChannelError::Full => {
                        self.core.stats.tx_busy_ring += 1;
                        NetError::Busy(Busy::RingFull)
                    }
                    ChannelError::TooManyRequests => {
                        self.core.stats.tx_busy_requests += 1;
                        NetError::Busy(Busy::Requests)
                    }
                    other => NetError::Channel(other),
                })
            }
        }
    }

    /// Sends a frame larger than a section as GPA-direct page buffers (devices §2.9): the
    /// RNDIS PACKET header alone in the first range (it and its PPIs never cross a page),
    /// then the frame split at page boundaries, one single-page range each; no section
    /// (index 0xFFFFFFFF), completion requested.
    fn send_large(&mut self, frame: &[u8]) -> Result<(), NetError> {
        let Some(lb) = self.large_buf.as_ref() else {
            self.core.stats.tx_bad_size += 1;
            return Err(NetError::FrameSize(frame.len()));
        };
        if self.core.large_free == 0 {
            self.core.stats.tx_busy_section += 1;
            return Err(NetError::Busy(Busy::NoSection));
        }
        let slot = self.core.large_free.trailing_zeros() as u8;
        let base = usize::from(slot) * large_slot_bytes(self.core.max_frame);
        let mut header =
            rndis::packet_header(frame.len()).ok_or(NetError::FrameSize(frame.len()))?;
        // No padding: msg_len is the bytes the ranges carry.
        header.header.msg_len = ((size_of::<RndisPacket>() + frame.len()) as u32).into();
        if lb.write_at(base, header.as_bytes()).is_err() || lb.write_at(base + PAGE, frame).is_err()
        {
            return Err(NetError::InvalidArgument(
                "page-buffer slot outside its buffer",
            ));
        }
        let Ok(first) = lb.dma(base, size_of::<RndisPacket>()) else {
            return Err(NetError::InvalidArgument(
                "page-buffer slot outside its buffer",
            ));
        };
        let mut ranges = [first; MAX_LARGE_RANGES];
        let mut used = 1;
        for (i, chunk) in frame.chunks(PAGE).enumerate() {
            match (
                ranges.get_mut(used),
                lb.dma(base + PAGE * (i + 1), chunk.len()),
            ) {
                (Some(r), Ok(d)) => *r = d,
                _ => return Err(NetError::FrameSize(frame.len())),
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
