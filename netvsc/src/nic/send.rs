//! The send path (devices §2.9): frames copied into send-buffer sections.

use super::*;

impl<'b, T: Transport, H: Hal, const N: usize> Nic<'b, T, H, N> {
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
}
