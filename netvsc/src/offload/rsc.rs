//! Receive segment coalescing (RSC, devices §2.8, §2.13.2, §2.14): reassembly of a coalesced
//! frame the host delivers in several receive-buffer sub-allocations. Pure and bounds-checked,
//! safe on any host bytes (fuzzable through [`Reassembly::push`] and [`packet_id_of`]).
//!
//! The host marks each piece with the internal packet-id PPI (type 0x80000001, payload
//! {version u8, flags u8, packet_id u16}): the sub-allocation flag says the PACKET is a
//! fragment, the first and last fragments carry their flags, and the frame is the
//! concatenation of the fragments' data, in range order. What Linux does
//! (`rndis_filter_receive_data`, `netvsc_receive`), and this module too, stricter where said:
//!
//! - a fragment without the sub-allocation flag (or without the PPI) is an ordinary frame and
//!   ends any partial frame (Linux drops that partial frame silently; here it is counted);
//! - a first fragment starts a frame, dropping a partial one (counted);
//! - a later fragment with no frame started is dropped;
//! - a fragment that is not the last may not be the last range of its transfer-page packet:
//!   a frame never continues in the next packet (Linux: `rsc.is_last`), it is dropped;
//! - at most [`MAX_FRAGMENTS`] fragments (Linux `NVSP_RSC_MAX`);
//! - stricter than Linux: all fragments of a frame carry the first one's packet id, and the
//!   frame must fit the reassembly buffer and the caller's limit (Linux sizes an skb for
//!   whatever arrives); a mismatch drops the partial frame and the fragment.
//!
//! The host's checksum verdict (its checksum PPI) and VLAN are those of the first fragment,
//! as in Linux's `rsc_add_data`. The host tells no coalesced segment count in RNDIS (no PPI
//! carries NDIS's `TcpRecvSegCoalesceInfo`), so what is reported is the fragment count.

use zerocopy::FromBytes;

use crate::protocol::{PPI_CHECKSUM, PPI_RSC_PACKET_ID, RscPacketId, rsc_flags};
use crate::rndis::ppis;

/// Most fragments of one coalesced frame (Linux `NVSP_RSC_MAX`, the 562 ranges a transfer-page
/// packet may hold with RSC, devices §2.8).
pub const MAX_FRAGMENTS: usize = 562;

/// The largest frame the host coalesces: an IPv6 datagram of the maximum payload length
/// (65535) with its 40-byte header behind a 14-byte Ethernet header. NDIS requires a
/// coalesced unit to be a legal IP datagram ("Indicating Coalesced Segments"); an IPv4 one is
/// at most 14 + 65535 bytes. One reassembly buffer of this size per queue takes any.
pub const RSC_MAX_FRAME: usize = 14 + 40 + 65535;

/// The packet-id PPI of a received PACKET (devices §2.14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketId {
    /// Version (1; not checked, as Linux does not).
    pub version: u8,
    /// [`rsc_flags`].
    pub flags: u8,
    /// The id shared by the fragments of one frame.
    pub id: u16,
}

impl PacketId {
    /// Whether the PACKET is a fragment (the sub-allocation flag).
    pub fn is_fragment(&self) -> bool {
        self.flags & rsc_flags::SUB_ALLOCATION != 0
    }

    fn first(&self) -> bool {
        self.flags & rsc_flags::FIRST_FRAGMENT != 0
    }

    fn last(&self) -> bool {
        self.flags & rsc_flags::LAST_FRAGMENT != 0
    }
}

/// The first packet-id PPI (internal type 1, a payload of at least 4 bytes) of a PACKET's
/// PPI area. A lean walk, as every received frame takes it: element sizes below the 12-byte
/// header or beyond the area, or payload offsets outside the element, end it (the parser
/// already refused PACKETs whose PPI area is malformed).
pub fn packet_id_of(ppi_area: &[u8]) -> Option<PacketId> {
    let mut rest = ppi_area;
    while let [s0, s1, s2, s3, t0, t1, t2, t3, o0, o1, o2, o3, ..] = *rest {
        let size = u32::from_le_bytes([s0, s1, s2, s3]) as usize;
        if size < 12 || size > rest.len() {
            return None;
        }
        if u32::from_le_bytes([t0, t1, t2, t3]) == PPI_RSC_PACKET_ID {
            let off = u32::from_le_bytes([o0, o1, o2, o3]) as usize;
            if let Some(payload) = rest.get(off.max(12)..size)
                && off >= 12
                && let Ok((v, _)) = RscPacketId::read_from_prefix(payload)
            {
                return Some(PacketId {
                    version: v.version,
                    flags: v.flags,
                    id: v.packet_id.get(),
                });
            }
        }
        rest = &rest[size..];
    }
    None
}

/// The first checksum PPI value (type 0, a payload of at least 4 bytes) of a PACKET's PPI
/// area; a malformed element ends the walk.
pub fn checksum_of(ppi_area: &[u8]) -> Option<u32> {
    ppis(ppi_area)
        .map_while(Result::ok)
        .find(|p| p.ppi_type == PPI_CHECKSUM && p.payload.len() >= 4)
        .map(|p| u32::from_le_bytes([p.payload[0], p.payload[1], p.payload[2], p.payload[3]]))
}

/// [`packet_id_of`] and [`checksum_of`] together.
pub fn ppis_of(ppi_area: &[u8]) -> (Option<PacketId>, Option<u32>) {
    (packet_id_of(ppi_area), checksum_of(ppi_area))
}

/// Why fragments were dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RscDrop {
    /// A later fragment with no frame started (first fragment missing or dropped).
    NoFirst,
    /// A first fragment, an ordinary frame or another message arrived before the last
    /// fragment.
    Interrupted,
    /// A fragment of another packet id.
    PacketIdChanged,
    /// The frame outgrew the reassembly buffer or the limit.
    TooLarge,
    /// More than [`MAX_FRAGMENTS`] fragments.
    TooManyFragments,
    /// The transfer-page packet ended before the last fragment.
    Unterminated,
}

/// A frame reassembled in the buffer given to [`Reassembly::push`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coalesced {
    /// Its length (at the start of the buffer).
    pub len: usize,
    /// The fragments it came in.
    pub fragments: u16,
    /// The first fragment's checksum PPI value.
    pub checksum: Option<u32>,
}

/// What one [`Reassembly::push`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Fragments dropped by this push (a partial frame, the pushed fragment, or both).
    pub dropped: u32,
    /// Why (`None` when nothing was dropped).
    pub why: Option<RscDrop>,
    /// The frame this fragment completed.
    pub complete: Option<Coalesced>,
}

/// The reassembly of one channel (the state between fragments; the bytes are in the caller's
/// buffer). Fragments of one frame are all in one transfer-page packet, so a queue needs one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reassembly {
    active: bool,
    len: usize,
    fragments: u16,
    id: u16,
    checksum: Option<u32>,
}

impl Reassembly {
    /// Whether a frame is partly reassembled.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Drops the partial frame, if any; returns the fragments dropped.
    pub fn abandon(&mut self) -> u32 {
        let n = if self.active {
            u32::from(self.fragments)
        } else {
            0
        };
        *self = Self::default();
        n
    }

    /// Takes one fragment: `data` its frame bytes, `checksum` its checksum PPI value,
    /// `last_range` whether it is the last range of its transfer-page packet. The frame is
    /// reassembled at the start of `buf` and may not exceed `limit` bytes (nor `buf`).
    pub fn push(
        &mut self,
        id: PacketId,
        data: &[u8],
        checksum: Option<u32>,
        last_range: bool,
        buf: &mut [u8],
        limit: usize,
    ) -> Pushed {
        let mut out = Pushed::default();
        let drop = |out: &mut Pushed, n: u32, why| {
            out.dropped += n;
            out.why = Some(why);
        };
        if id.first() {
            let n = self.abandon();
            if n > 0 {
                drop(&mut out, n, RscDrop::Interrupted);
            }
            *self = Self {
                active: true,
                len: 0,
                fragments: 0,
                id: id.id,
                checksum,
            };
        } else if !self.active {
            drop(&mut out, 1, RscDrop::NoFirst);
            return out;
        } else if id.id != self.id {
            let n = self.abandon() + 1;
            drop(&mut out, n, RscDrop::PacketIdChanged);
            return out;
        }
        let end = self.len + data.len();
        let why = if usize::from(self.fragments) >= MAX_FRAGMENTS {
            Some(RscDrop::TooManyFragments)
        } else if end > limit.min(buf.len()) {
            Some(RscDrop::TooLarge)
        } else {
            None
        };
        if let Some(why) = why {
            let n = self.abandon() + 1;
            drop(&mut out, n, why);
            return out;
        }
        buf[self.len..end].copy_from_slice(data);
        self.len = end;
        self.fragments += 1;
        if id.last() {
            out.complete = Some(Coalesced {
                len: self.len,
                fragments: self.fragments,
                checksum: self.checksum,
            });
            *self = Self::default();
        } else if last_range {
            let n = self.abandon();
            drop(&mut out, n, RscDrop::Unterminated);
        }
        out
    }
}

#[cfg(test)]
mod tests;
