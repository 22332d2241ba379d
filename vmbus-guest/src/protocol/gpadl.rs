//! GPADL_HEADER / GPADL_BODY fixed parts and the split arithmetic (vmbus-core §6.1–6.2).
//!
//! A GPADL message is a fixed part followed by PFNs. The PFN array inside GPADL_HEADER is only
//! 4-byte aligned, so PFNs are [`WirePfn`] (alignment 1); serialise a message by writing the
//! fixed part's bytes followed by each PFN's bytes into the payload buffer.

#![forbid(unsafe_code)]

use super::{MAX_MESSAGE_SIZE, MessageHeader, MessageType};
use core::mem::{offset_of, size_of};
use static_assertions::const_assert_eq;
use zerocopy::byteorder::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A page frame number (GPA >> 12) as it appears in a GPADL: little-endian u64, alignment 1.
pub type WirePfn = U64;

/// GPADL_HEADER (8, G→H) up to the first range: relid, handle, range_buflen, range count.
/// On the wire it is followed by the first [`GpaRange`] and its PFNs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GpadlHeader {
    /// Header (GPADL_HEADER).
    pub header: MessageHeader,
    /// Channel relid @8.
    pub relid: u32,
    /// Guest-chosen GPADL handle @12 (non-zero, unique connection-wide while in progress).
    pub gpadl_handle: u32,
    /// @16: bytes of all range descriptors including PFNs, also those sent in bodies.
    pub range_buflen: u16,
    /// @18: number of ranges.
    pub range_count: u16,
}
const_assert_eq!(size_of::<GpadlHeader>(), 20);
const_assert_eq!(offset_of!(GpadlHeader, relid), 8);
const_assert_eq!(offset_of!(GpadlHeader, gpadl_handle), 12);
const_assert_eq!(offset_of!(GpadlHeader, range_buflen), 16);
const_assert_eq!(offset_of!(GpadlHeader, range_count), 18);

impl GpadlHeader {
    /// Fixed part of a GPADL_HEADER for `relid`/`gpadl_handle`.
    pub const fn new(relid: u32, gpadl_handle: u32, range_buflen: u16, range_count: u16) -> Self {
        Self {
            header: MessageHeader::new(MessageType::GPADL_HEADER),
            relid,
            gpadl_handle,
            range_buflen,
            range_count,
        }
    }
}

/// Descriptor of one GPA range; followed by ceil((offset + count) / 4096) PFNs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GpaRange {
    /// Bytes in the range.
    pub byte_count: u32,
    /// Offset into the first page (< 4096).
    pub byte_offset: u32,
}
const_assert_eq!(size_of::<GpaRange>(), 8);

/// GPADL_BODY (9, G→H) fixed part: message number and handle; followed by continuation PFNs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GpadlBody {
    /// Header (GPADL_BODY).
    pub header: MessageHeader,
    /// @8: message number (Linux and UEFI send 0; OpenVMM treats it as reserved).
    pub message_number: u32,
    /// @12: GPADL handle from the header message.
    pub gpadl_handle: u32,
}
const_assert_eq!(size_of::<GpadlBody>(), 16);
const_assert_eq!(offset_of!(GpadlBody, message_number), 8);
const_assert_eq!(offset_of!(GpadlBody, gpadl_handle), 12);

impl GpadlBody {
    /// Fixed part of a GPADL_BODY for `gpadl_handle`, message number 0.
    pub const fn new(gpadl_handle: u32) -> Self {
        Self {
            header: MessageHeader::new(MessageType::GPADL_BODY),
            message_number: 0,
            gpadl_handle,
        }
    }
}

/// Bytes of GPADL_HEADER before the first PFN (fixed part + one range descriptor).
pub const GPADL_HEADER_FIXED_SIZE: usize = size_of::<GpadlHeader>() + size_of::<GpaRange>();
/// Bytes of GPADL_BODY before the first PFN.
pub const GPADL_BODY_FIXED_SIZE: usize = size_of::<GpadlBody>();
/// PFNs that fit in one GPADL_HEADER (single range): (240 − 28) / 8.
pub const PFNS_PER_GPADL_HEADER: usize = (MAX_MESSAGE_SIZE - GPADL_HEADER_FIXED_SIZE) / 8;
/// PFNs that fit in one GPADL_BODY: (240 − 16) / 8.
pub const PFNS_PER_GPADL_BODY: usize = (MAX_MESSAGE_SIZE - GPADL_BODY_FIXED_SIZE) / 8;
const_assert_eq!(GPADL_HEADER_FIXED_SIZE, 28);
const_assert_eq!(PFNS_PER_GPADL_HEADER, 26);
const_assert_eq!(PFNS_PER_GPADL_BODY, 28);

/// `range_buflen` for a single range of `pages` PFNs (8 + 8·pages), or `None` if it does not
/// fit the u16 field.
pub const fn gpadl_range_buflen(pages: usize) -> Option<u16> {
    match pages.checked_mul(8) {
        Some(b) if b <= u16::MAX as usize - 8 => Some((b + 8) as u16),
        _ => None,
    }
}

/// Number of GPADL_BODY messages needed after the header for a single range of `pages` PFNs.
pub const fn gpadl_body_messages_needed(pages: usize) -> usize {
    if pages <= PFNS_PER_GPADL_HEADER {
        0
    } else {
        (pages - PFNS_PER_GPADL_HEADER).div_ceil(PFNS_PER_GPADL_BODY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_arithmetic() {
        assert_eq!(gpadl_body_messages_needed(1), 0);
        assert_eq!(gpadl_body_messages_needed(26), 0);
        assert_eq!(gpadl_body_messages_needed(27), 1);
        assert_eq!(gpadl_body_messages_needed(54), 1);
        assert_eq!(gpadl_body_messages_needed(55), 2);
        assert_eq!(gpadl_body_messages_needed(256), 9);
        assert_eq!(gpadl_range_buflen(256), Some(8 + 2048));
        assert_eq!(gpadl_range_buflen(8190), Some(65528));
        assert_eq!(gpadl_range_buflen(8191), None);
        assert_eq!(GPADL_HEADER_FIXED_SIZE + 8 * PFNS_PER_GPADL_HEADER, 236);
        assert_eq!(GPADL_BODY_FIXED_SIZE + 8 * PFNS_PER_GPADL_BODY, 240);
    }

    #[test]
    fn header_with_pfns_bytes() {
        let mut buf = [0u8; MAX_MESSAGE_SIZE];
        let hdr = GpadlHeader::new(5, 0xE1E10, gpadl_range_buflen(2).unwrap(), 1);
        let range = GpaRange {
            byte_count: 2 * 4096,
            byte_offset: 0,
        };
        let pfns = [WirePfn::new(0x1_2345), WirePfn::new(0x1_2347)];
        buf[..20].copy_from_slice(hdr.as_bytes());
        buf[20..28].copy_from_slice(range.as_bytes());
        buf[28..44].copy_from_slice(pfns.as_bytes());
        #[rustfmt::skip]
        let expected: [u8; 44] = [
            8, 0, 0, 0, 0, 0, 0, 0,
            5, 0, 0, 0,
            0x10, 0x1e, 0x0e, 0,
            24, 0, 1, 0,
            0, 0x20, 0, 0,
            0, 0, 0, 0,
            0x45, 0x23, 1, 0, 0, 0, 0, 0,
            0x47, 0x23, 1, 0, 0, 0, 0, 0,
        ];
        assert_eq!(&buf[..44], &expected);
    }
}
