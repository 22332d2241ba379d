//! The RSC part of the receive path (devices §2.13.2, §2.14): a fragment is reassembled in
//! its queue's area of the caller's storage ([`Nic::open_with_rsc`]) by
//! [`crate::offload::rsc::Reassembly`]; the completed frame goes to the frame consumer like
//! any frame, with its fragment count ([`RxInfo`]).

use super::receive::{FrameMeta, OnFrame};
use super::*;
use crate::offload::rsc::{self, PacketId};
use crate::protocol::{PPI_CHECKSUM, PpiU32, rsc_flags};

/// What the host says about a received frame besides its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RxInfo {
    /// The host's checksum verdict, for what the guest enabled on receive (see
    /// [`Nic::poll_with_checksum`]). For a coalesced frame, the first fragment's verdict
    /// (NDIS has the host report success for the TCP and IPv4 checksums of a coalesced
    /// segment).
    pub checksum: RxChecksum,
    /// For a frame the host coalesced (RSC): the receive-buffer fragments it came in; 0 for
    /// an ordinary frame. The host tells no segment count in RNDIS.
    pub rsc_fragments: u16,
}

impl Core {
    /// One RSC fragment (devices §2.14 packet-id PPI): reassembled in `rsc`, the queue's area;
    /// the completed frame goes to `on_frame`. Without an area only a single-fragment frame
    /// can be delivered. The frame may reach the area's size when RSC is enabled, the MTU
    /// otherwise (a host that fragments without RSC has no reason to exceed it).
    #[inline(never)]
    pub(super) fn on_fragment(
        &mut self,
        id: PacketId,
        data: &[u8],
        checksum: Option<u32>,
        last_range: bool,
        rsc: &mut [u8],
        on_frame: &mut OnFrame<'_>,
    ) -> bool {
        if !self.ready {
            self.stats.rx_not_ready += 1 + u64::from(self.rsc.abandon());
            return false;
        }
        let limit = if self.info.offloads.rsc {
            rsc::RSC_MAX_FRAME
        } else {
            self.max_frame
        };
        // A single-fragment frame needs no area: it is reassembled in place.
        let single = id.flags & (rsc_flags::FIRST_FRAGMENT | rsc_flags::LAST_FRAGMENT)
            == rsc_flags::FIRST_FRAGMENT | rsc_flags::LAST_FRAGMENT;
        if single && rsc.is_empty() {
            self.stats.rx_rsc_dropped += u64::from(self.rsc.abandon());
            if data.len() > limit {
                self.stats.rx_rsc_dropped += 1;
                return false;
            }
            let p = checksum.map(|c| PpiU32::new(PPI_CHECKSUM, c));
            return self.deliver_coalesced(data, p, 1, on_frame);
        }
        let p = self.rsc.push(id, data, checksum, last_range, rsc, limit);
        if p.dropped > 0 {
            log::debug!("netvsc: {} RSC fragments dropped ({:?})", p.dropped, p.why);
            self.stats.rx_rsc_dropped += u64::from(p.dropped);
        }
        match p.complete {
            Some(c) => {
                let ppi = c.checksum.map(|v| PpiU32::new(PPI_CHECKSUM, v));
                self.deliver_coalesced(&rsc[..c.len], ppi, c.fragments, on_frame)
            }
            None => false,
        }
    }

    fn deliver_coalesced(
        &mut self,
        frame: &[u8],
        checksum: Option<PpiU32>,
        fragments: u16,
        on_frame: &mut OnFrame<'_>,
    ) -> bool {
        self.stats.rx_frames += 1;
        self.stats.rx_rsc_frames += 1;
        self.stats.rx_rsc_fragments += u64::from(fragments);
        let ppi = checksum.as_ref().map_or(&[][..], |p| p.as_bytes());
        !on_frame(frame, &FrameMeta { ppi, fragments })
    }
}

impl<'q, 'b, T: Transport, H: Hal, const N: usize, const M: usize> Queue<'q, 'b, T, H, N, M> {
    /// A queue whose RSC fragments are reassembled in `area` (see [`Nic::open_with_rsc`]).
    pub(super) fn with_rsc(mut self, area: &'q mut [u8]) -> Self {
        self.rsc = area;
        self
    }
}

/// The receive calls with [`RxInfo`] on the primary channel.
impl<T: Transport, H: Hal, const N: usize, const M: usize> Nic<'_, T, H, N, M> {
    /// [`Queue::poll_with_info`] on the primary channel. Interrupt-safe.
    pub fn poll_with_info(
        &mut self,
        budget: usize,
        on_frame: impl FnMut(&[u8], RxInfo),
    ) -> Result<bool, NetError> {
        self.lane().poll_with_info(budget, on_frame)
    }

    /// [`Queue::receive_with_info`] on the primary channel. Interrupt-safe.
    pub fn receive_with_info<R>(
        &mut self,
        budget: usize,
        f: impl FnOnce(&[u8], RxInfo) -> R,
    ) -> Result<Option<R>, NetError> {
        self.lane().receive_with_info(budget, f)
    }
}
