//! Packets: what a writer sends ([`OutgoingPacket`]) and the validated view of a received one
//! ([`IncomingPacket`]), parsed from the reader's private copy, never from shared memory.

#![forbid(unsafe_code)]

use super::error::Corrupt;
use super::protocol::{
    DESCRIPTOR_SIZE, FLAG_COMPLETION_REQUESTED, GpaDirectHeader, GpaRangeHeader, PacketDescriptor,
    PacketType, TransferPageHeader, TransferPageRange, gpa_range_pages,
};
use zerocopy::{FromBytes, IntoBytes};

// PFNs and wire structs are written in native byte order; VMBus is little-endian.
static_assertions::const_assert!(cfg!(target_endian = "little"));

/// One GPA range of an outgoing GPA-direct packet: `byte_count` bytes starting `byte_offset`
/// into the first of `pfns` (one PFN per 4 KiB page spanned).
#[derive(Debug, Clone, Copy)]
pub struct GpaRange<'a> {
    /// Length in bytes.
    pub byte_count: u32,
    /// Offset into the first page (< 4096).
    pub byte_offset: u32,
    /// Guest page frame numbers, one per page spanned.
    pub pfns: &'a [u64],
}

#[derive(Debug, Clone, Copy)]
enum Header<'a> {
    None,
    GpaDirect(&'a [GpaRange<'a>]),
    TransferPages {
        set_id: u16,
        sender_owns_set: bool,
        ranges: &'a [TransferPageRange],
    },
}

/// A packet to write: descriptor fields, an optional type-specific header and a payload given
/// as a list of byte slices (gathered into the ring without an intermediate copy).
#[derive(Debug, Clone, Copy)]
pub struct OutgoingPacket<'a> {
    packet_type: PacketType,
    flags: u16,
    transaction_id: u64,
    header: Header<'a>,
    payload: &'a [&'a [u8]],
}

impl<'a> OutgoingPacket<'a> {
    /// An in-band data packet (type 6); `completion_requested` sets flag bit 0.
    pub fn in_band(
        transaction_id: u64,
        completion_requested: bool,
        payload: &'a [&'a [u8]],
    ) -> Self {
        Self {
            packet_type: PacketType::DATA_IN_BAND,
            flags: if completion_requested {
                FLAG_COMPLETION_REQUESTED
            } else {
                0
            },
            transaction_id,
            header: Header::None,
            payload,
        }
    }

    /// A completion (type 11) of the request with `transaction_id`.
    pub fn completion(transaction_id: u64, payload: &'a [&'a [u8]]) -> Self {
        Self {
            packet_type: PacketType::COMPLETION,
            flags: 0,
            transaction_id,
            header: Header::None,
            payload,
        }
    }

    /// A GPA-direct packet (type 9) naming guest pages, with completion requested as Linux
    /// always does; `payload` is the in-band device request after the range array.
    pub fn gpa_direct(
        transaction_id: u64,
        ranges: &'a [GpaRange<'a>],
        payload: &'a [&'a [u8]],
    ) -> Self {
        Self {
            packet_type: PacketType::DATA_USING_GPA_DIRECT,
            flags: FLAG_COMPLETION_REQUESTED,
            transaction_id,
            header: Header::GpaDirect(ranges),
            payload,
        }
    }

    /// A transfer-page packet (type 7), as the host sends on the receive path, with completion
    /// requested.
    pub fn transfer_pages(
        transaction_id: u64,
        transfer_page_set_id: u16,
        sender_owns_set: bool,
        ranges: &'a [TransferPageRange],
        payload: &'a [&'a [u8]],
    ) -> Self {
        Self {
            packet_type: PacketType::DATA_USING_TRANSFER_PAGES,
            flags: FLAG_COMPLETION_REQUESTED,
            transaction_id,
            header: Header::TransferPages {
                set_id: transfer_page_set_id,
                sender_owns_set,
                ranges,
            },
            payload,
        }
    }

    /// Bytes of type-specific header between descriptor and payload, or `None` if the packet is
    /// malformed (GPA range PFN count not matching its span, offset beyond the first page, no
    /// ranges) or absurdly large.
    #[inline]
    pub(crate) fn header_len(&self) -> Option<usize> {
        match self.header {
            Header::None => Some(0),
            Header::TransferPages { ranges, .. } => ranges.len().checked_mul(8)?.checked_add(8),
            Header::GpaDirect(ranges) => {
                if ranges.is_empty() {
                    return None;
                }
                let mut len = 8usize;
                for r in ranges {
                    if r.byte_offset >= 4096
                        || gpa_range_pages(r.byte_offset, r.byte_count) != r.pfns.len() as u64
                    {
                        return None;
                    }
                    len = len.checked_add(8 + r.pfns.len().checked_mul(8)?)?;
                }
                Some(len)
            }
        }
    }

    /// Total payload bytes.
    #[inline]
    pub(crate) fn payload_len(&self) -> Option<usize> {
        self.payload
            .iter()
            .try_fold(0usize, |acc, s| acc.checked_add(s.len()))
    }

    /// The descriptor for the given sizes in 8-byte units.
    pub(crate) fn descriptor(&self, data_offset8: u16, length8: u16) -> PacketDescriptor {
        PacketDescriptor {
            packet_type: self.packet_type,
            data_offset8,
            length8,
            flags: self.flags,
            transaction_id: self.transaction_id,
        }
    }

    /// Feeds the type-specific header bytes, in order, to `emit`.
    pub(crate) fn emit_header(&self, mut emit: impl FnMut(&[u8])) {
        match self.header {
            Header::None => {}
            Header::TransferPages {
                set_id,
                sender_owns_set,
                ranges,
            } => {
                let h = TransferPageHeader {
                    transfer_page_set_id: set_id,
                    sender_owns_set: sender_owns_set as u8,
                    reserved: 0,
                    range_count: ranges.len() as u32,
                };
                emit(h.as_bytes());
                emit(ranges.as_bytes());
            }
            Header::GpaDirect(ranges) => {
                let h = GpaDirectHeader {
                    reserved: 0,
                    range_count: ranges.len() as u32,
                };
                emit(h.as_bytes());
                for r in ranges {
                    let rh = GpaRangeHeader {
                        byte_count: r.byte_count,
                        byte_offset: r.byte_offset,
                    };
                    emit(rh.as_bytes());
                    emit(r.pfns.as_bytes());
                }
            }
        }
    }

    /// The payload slices.
    pub(crate) fn payload(&self) -> &'a [&'a [u8]] {
        self.payload
    }
}

/// The transfer page set and ranges of a received transfer-page packet (type 7).
#[derive(Debug, Clone, Copy)]
pub struct TransferPages<'b> {
    /// Transfer page set id (e.g. the netvsc receive buffer's id).
    pub transfer_page_set_id: u16,
    /// Sender owns the set.
    pub sender_owns_set: bool,
    ranges: &'b [u8],
}

impl<'b> TransferPages<'b> {
    /// Number of ranges.
    pub fn range_count(&self) -> usize {
        self.ranges.len() / 8
    }
    /// The ranges (offsets into the transfer page set; the device layer checks them against
    /// the buffer it registered).
    pub fn ranges(&self) -> impl Iterator<Item = TransferPageRange> + 'b {
        self.ranges
            .chunks_exact(8)
            .filter_map(|c| TransferPageRange::read_from_bytes(c).ok())
    }
}

/// The ranges of a received GPA-direct packet (type 9).
#[derive(Debug, Clone, Copy)]
pub struct GpaDirect<'b> {
    range_count: u32,
    ranges: &'b [u8],
}

/// One received GPA range.
#[derive(Debug, Clone, Copy)]
pub struct GpaRangeView<'b> {
    /// Length in bytes.
    pub byte_count: u32,
    /// Offset into the first page (< 4096, validated).
    pub byte_offset: u32,
    pfns: &'b [u8],
}

impl<'b> GpaRangeView<'b> {
    /// The page frame numbers, one per page spanned.
    pub fn pfns(&self) -> impl Iterator<Item = u64> + 'b {
        self.pfns
            .chunks_exact(8)
            .filter_map(|c| u64::read_from_bytes(c).ok())
    }
}

impl<'b> GpaDirect<'b> {
    /// Number of ranges.
    pub fn range_count(&self) -> u32 {
        self.range_count
    }
    /// The ranges, as validated when the packet was read.
    pub fn ranges(&self) -> impl Iterator<Item = GpaRangeView<'b>> + 'b {
        let mut rest = self.ranges;
        core::iter::from_fn(move || {
            let (h, tail) = GpaRangeHeader::read_from_prefix(rest).ok()?;
            let n = usize::try_from(gpa_range_pages(h.byte_offset, h.byte_count)).ok()?;
            let (pfns, tail) = tail.split_at_checked(n.checked_mul(8)?)?;
            rest = tail;
            Some(GpaRangeView {
                byte_count: h.byte_count,
                byte_offset: h.byte_offset,
                pfns,
            })
        })
    }
}

/// What kind of packet was received, with its type-specific header.
#[derive(Debug, Clone, Copy)]
pub enum PacketKind<'b> {
    /// In-band data (type 6).
    InBand,
    /// Completion (type 11).
    Completion,
    /// Data in a transfer page set (type 7).
    TransferPages(TransferPages<'b>),
    /// Data in guest pages (type 9).
    GpaDirect(GpaDirect<'b>),
    /// Any other type; only the descriptor and payload are interpreted.
    Other,
}

/// A received packet, validated, in the caller's buffer (a private copy: the peer can no
/// longer change it).
#[derive(Debug, Clone, Copy)]
pub struct IncomingPacket<'b> {
    /// The descriptor, as read once from the ring and validated.
    pub descriptor: PacketDescriptor,
    /// Type-specific view.
    pub kind: PacketKind<'b>,
    payload: &'b [u8],
}

impl<'b> IncomingPacket<'b> {
    /// The packet type.
    pub fn packet_type(&self) -> PacketType {
        self.descriptor.packet_type
    }
    /// The transaction id.
    pub fn transaction_id(&self) -> u64 {
        self.descriptor.transaction_id
    }
    /// Flag bit 0: the sender expects a completion.
    pub fn completion_requested(&self) -> bool {
        self.descriptor.flags & FLAG_COMPLETION_REQUESTED != 0
    }
    /// Payload from the data offset to the packet end, padding included (the device protocol
    /// gives the real length).
    pub fn payload(&self) -> &'b [u8] {
        self.payload
    }

    /// Parses again a packet [`crate::ring::RingReader::read`] copied into `bytes` and
    /// validated (descriptor first; `bytes` at least its `length8 * 8`).
    pub(crate) fn reparse(bytes: &'b [u8]) -> Result<Self, Corrupt> {
        let (descriptor, _) = PacketDescriptor::read_from_prefix(bytes)
            .map_err(|_| Corrupt::TruncatedPacket { available: 0 })?;
        let len = descriptor.length8 as usize * 8;
        let packet = bytes
            .get(..len)
            .ok_or(Corrupt::TruncatedPacket { available: 0 })?;
        Self::parse(descriptor, packet)
    }

    /// Parses `bytes` (exactly `length8 * 8` bytes, `descriptor` already checked for
    /// `2 <= data_offset8 <= length8`).
    // Inlined into the reader so the packet is built in place: returning it from a call and
    // copying it stalls on store forwarding in the hot path.
    #[inline(always)]
    pub(crate) fn parse(descriptor: PacketDescriptor, bytes: &'b [u8]) -> Result<Self, Corrupt> {
        let data_offset = descriptor.data_offset8 as usize * 8;
        let (head, payload) = bytes
            .split_at_checked(data_offset)
            .ok_or(Corrupt::HeaderExceedsDataOffset)?;
        let header = head.get(DESCRIPTOR_SIZE..).unwrap_or(&[]);
        let kind = match descriptor.packet_type {
            PacketType::DATA_IN_BAND => PacketKind::InBand,
            PacketType::COMPLETION => PacketKind::Completion,
            PacketType::DATA_USING_TRANSFER_PAGES => {
                let (h, rest) = TransferPageHeader::read_from_prefix(header)
                    .map_err(|_| Corrupt::HeaderExceedsDataOffset)?;
                let len = (h.range_count as usize)
                    .checked_mul(8)
                    .ok_or(Corrupt::BadRangeCount(h.range_count))?;
                let ranges = rest
                    .get(..len)
                    .ok_or(Corrupt::BadRangeCount(h.range_count))?;
                PacketKind::TransferPages(TransferPages {
                    transfer_page_set_id: h.transfer_page_set_id,
                    sender_owns_set: h.sender_owns_set != 0,
                    ranges,
                })
            }
            PacketType::DATA_USING_GPA_DIRECT => {
                let (h, rest) = GpaDirectHeader::read_from_prefix(header)
                    .map_err(|_| Corrupt::HeaderExceedsDataOffset)?;
                let bad = Corrupt::BadRangeCount(h.range_count);
                if h.range_count == 0 {
                    return Err(bad);
                }
                // Each iteration consumes at least 8 bytes of `rest`, so the loop ends within
                // `rest.len() / 8` steps whatever count the peer claims.
                let mut pos = 0usize;
                for _ in 0..h.range_count {
                    let (r, _) = GpaRangeHeader::read_from_prefix(rest.get(pos..).ok_or(bad)?)
                        .map_err(|_| bad)?;
                    if r.byte_offset >= 4096 {
                        return Err(Corrupt::BadRangeOffset(r.byte_offset));
                    }
                    // At most 2^20 + 1 pages, no overflow in usize on 32/64-bit.
                    let pages = gpa_range_pages(r.byte_offset, r.byte_count) as usize;
                    pos = pos.checked_add(8 + pages * 8).ok_or(bad)?;
                    if pos > rest.len() {
                        return Err(bad);
                    }
                }
                let ranges = rest.get(..pos).ok_or(bad)?;
                PacketKind::GpaDirect(GpaDirect {
                    range_count: h.range_count,
                    ranges,
                })
            }
            _ => PacketKind::Other,
        };
        Ok(Self {
            descriptor,
            kind,
            payload,
        })
    }
}
