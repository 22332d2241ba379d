//! Pure RNDIS parsing and building (devices §2.10–2.14), over byte slices only: no channel,
//! no host memory. Every length and offset in a message is checked against the slice, so the
//! parsers are safe to fuzz with arbitrary bytes.

use zerocopy::{FromBytes, IntoBytes};

use crate::protocol::{
    PpiHeader, RNDIS_OFFSET_BASE, RndisHeader, RndisIndicateStatus, RndisInitComplete,
    RndisInitRequest, RndisOidRequest, RndisPacket, RndisQueryComplete, RndisSetComplete,
    rndis_msg,
};

/// Why a message from the host was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RndisError {
    /// Shorter than the header its type needs.
    Truncated {
        /// Bytes available.
        len: usize,
        /// Bytes the type needs.
        needed: usize,
    },
    /// `msg_len` smaller than the header or larger than the bytes available.
    BadLength(u32),
    /// An offset/length pair (data, PPI, information or status buffer) outside the message.
    BadRange {
        /// The offset as given (relative to offset 8).
        offset: u32,
        /// The length as given.
        length: u32,
    },
    /// A PACKET with out-of-band data or a non-zero VC handle (never used by Hyper-V).
    UnsupportedPacket,
    /// A PACKET without frame bytes.
    EmptyPacket,
    /// A malformed per-packet-info element.
    BadPpi,
    /// A message type a host never sends to a guest.
    UnexpectedType(u32),
}

impl core::fmt::Display for RndisError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated { len, needed } => {
                write!(f, "RNDIS message of {len} bytes, {needed} needed")
            }
            Self::BadLength(l) => write!(f, "RNDIS msg_len {l} outside the message"),
            Self::BadRange { offset, length } => {
                write!(f, "RNDIS range {offset}+{length} outside the message")
            }
            Self::UnsupportedPacket => f.write_str("RNDIS PACKET with OOB data or a VC handle"),
            Self::EmptyPacket => f.write_str("RNDIS PACKET without data"),
            Self::BadPpi => f.write_str("malformed per-packet info"),
            Self::UnexpectedType(t) => write!(f, "unexpected RNDIS message type {t:#x}"),
        }
    }
}

impl core::error::Error for RndisError {}

/// A validated RNDIS message from the host, borrowing the bytes it was parsed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A received Ethernet frame.
    Packet {
        /// The frame (Ethernet header + payload, no FCS).
        frame: &'a [u8],
        /// The per-packet info area (validated: [`ppis`] walks it).
        ppi: &'a [u8],
    },
    /// INITIALIZE completion.
    InitComplete(RndisInitComplete),
    /// QUERY completion with its information buffer.
    QueryComplete {
        /// Echoed request id.
        request_id: u32,
        /// RNDIS status.
        status: u32,
        /// The information buffer.
        info: &'a [u8],
    },
    /// SET completion.
    SetComplete {
        /// Echoed request id.
        request_id: u32,
        /// RNDIS status.
        status: u32,
    },
    /// KEEPALIVE completion.
    KeepaliveComplete {
        /// Echoed request id.
        request_id: u32,
        /// RNDIS status.
        status: u32,
    },
    /// A status indication with its buffer.
    IndicateStatus {
        /// Indication code.
        status: u32,
        /// The status buffer.
        buffer: &'a [u8],
    },
}

fn header_of<T: FromBytes>(bytes: &[u8]) -> Result<T, RndisError> {
    T::read_from_prefix(bytes)
        .map(|(t, _)| t)
        .map_err(|_| RndisError::Truncated {
            len: bytes.len(),
            needed: size_of::<T>(),
        })
}

/// The `length` bytes at `offset` (relative to offset 8) of `msg`, checked.
fn sub_range(msg: &[u8], offset: u32, length: u32, min_start: usize) -> Result<&[u8], RndisError> {
    let bad = RndisError::BadRange { offset, length };
    let start = (offset as usize)
        .checked_add(RNDIS_OFFSET_BASE)
        .ok_or(bad)?;
    if length == 0 {
        return Ok(&[]);
    }
    if start < min_start {
        return Err(bad);
    }
    let end = start.checked_add(length as usize).ok_or(bad)?;
    msg.get(start..end).ok_or(bad)
}

/// Parses one RNDIS message the host sent (one receive-buffer range). `bytes` may be longer
/// than the message (the range can cover a whole receive slot); `msg_len` must fit inside it
/// and every inner offset must fit inside `msg_len`.
pub fn parse_message(bytes: &[u8]) -> Result<Message<'_>, RndisError> {
    let h: RndisHeader = header_of(bytes)?;
    let len = h.msg_len.get();
    if (len as usize) < size_of::<RndisHeader>() || len as usize > bytes.len() {
        return Err(RndisError::BadLength(len));
    }
    let msg = &bytes[..len as usize];
    match h.msg_type.get() {
        rndis_msg::PACKET => {
            let p: RndisPacket = header_of(msg)?;
            if p.oob_data_offset.get() != 0
                || p.oob_data_length.get() != 0
                || p.num_oob_data_elements.get() != 0
                || p.vc_handle.get() != 0
            {
                return Err(RndisError::UnsupportedPacket);
            }
            if p.data_length.get() == 0 {
                return Err(RndisError::EmptyPacket);
            }
            let frame = sub_range(
                msg,
                p.data_offset.get(),
                p.data_length.get(),
                size_of::<RndisPacket>(),
            )?;
            let ppi = sub_range(
                msg,
                p.per_packet_info_offset.get(),
                p.per_packet_info_length.get(),
                size_of::<RndisPacket>(),
            )?;
            for e in ppis(ppi) {
                e?;
            }
            Ok(Message::Packet { frame, ppi })
        }
        rndis_msg::INITIALIZE_CMPLT => Ok(Message::InitComplete(header_of(msg)?)),
        rndis_msg::QUERY_CMPLT => {
            let q: RndisQueryComplete = header_of(msg)?;
            let info = sub_range(
                msg,
                q.info_buffer_offset.get(),
                q.info_buffer_length.get(),
                size_of::<RndisQueryComplete>(),
            )?;
            Ok(Message::QueryComplete {
                request_id: q.request_id.get(),
                status: q.status.get(),
                info,
            })
        }
        rndis_msg::SET_CMPLT => {
            let s: RndisSetComplete = header_of(msg)?;
            Ok(Message::SetComplete {
                request_id: s.request_id.get(),
                status: s.status.get(),
            })
        }
        rndis_msg::KEEPALIVE_CMPLT => {
            let s: RndisSetComplete = header_of(msg)?;
            Ok(Message::KeepaliveComplete {
                request_id: s.request_id.get(),
                status: s.status.get(),
            })
        }
        rndis_msg::INDICATE_STATUS => {
            let s: RndisIndicateStatus = header_of(msg)?;
            let buffer = sub_range(
                msg,
                s.status_buffer_offset.get(),
                s.status_buffer_length.get(),
                size_of::<RndisIndicateStatus>(),
            )?;
            Ok(Message::IndicateStatus {
                status: s.status.get(),
                buffer,
            })
        }
        other => Err(RndisError::UnexpectedType(other)),
    }
}

/// One per-packet-info element: its type (bit 31 = internal space) and payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ppi<'a> {
    /// Type.
    pub ppi_type: u32,
    /// Payload.
    pub payload: &'a [u8],
}

/// Walks the PPI area of a PACKET; an element whose size or payload offset does not fit
/// yields [`RndisError::BadPpi`] and ends the walk.
pub fn ppis(area: &[u8]) -> impl Iterator<Item = Result<Ppi<'_>, RndisError>> {
    let mut rest = area;
    core::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let parsed = (|| {
            let h: PpiHeader = header_of(rest).map_err(|_| RndisError::BadPpi)?;
            let size = h.size.get() as usize;
            let off = h.ppi_offset.get() as usize;
            if size < size_of::<PpiHeader>() || size > rest.len() || off < 12 || off > size {
                return Err(RndisError::BadPpi);
            }
            let ppi = Ppi {
                ppi_type: h.ppi_type.get(),
                payload: &rest[off..size],
            };
            Ok((ppi, size))
        })();
        match parsed {
            Ok((ppi, size)) => {
                rest = &rest[size..];
                Some(Ok(ppi))
            }
            Err(e) => {
                rest = &[];
                Some(Err(e))
            }
        }
    })
}

/// Size of a PACKET message carrying a `frame_len`-byte frame without PPIs, padded to 8 bytes
/// (the alignment Hyper-V reports; the padding is part of `msg_len`, devices §2.9).
pub fn packet_message_len(frame_len: usize) -> usize {
    (size_of::<RndisPacket>() + frame_len).next_multiple_of(8)
}

/// The PACKET header for a `frame_len`-byte frame placed right after it (no PPIs, no OOB
/// data), with `msg_len` = [`packet_message_len`]; `None` if the sizes overflow a u32.
pub fn packet_header(frame_len: usize) -> Option<RndisPacket> {
    packet_header_with_ppi(frame_len, 0)
}

/// The PACKET header for `ppi_len` bytes of PPIs right after the header and a
/// `frame_len`-byte frame right after them (Linux's layout, devices §2.10: PPIs at offset 36,
/// data at 36 + PPI bytes), `msg_len` padded to 8 bytes; `None` if the sizes overflow a u32.
pub fn packet_header_with_ppi(frame_len: usize, ppi_len: usize) -> Option<RndisPacket> {
    let base = size_of::<RndisPacket>() - RNDIS_OFFSET_BASE;
    let msg_len = (size_of::<RndisPacket>() + ppi_len + frame_len).next_multiple_of(8);
    Some(RndisPacket {
        header: RndisHeader {
            msg_type: rndis_msg::PACKET.into(),
            msg_len: u32::try_from(msg_len).ok()?.into(),
        },
        data_offset: u32::try_from(base + ppi_len).ok()?.into(),
        data_length: u32::try_from(frame_len).ok()?.into(),
        per_packet_info_offset: if ppi_len == 0 { 0 } else { base as u32 }.into(),
        per_packet_info_length: u32::try_from(ppi_len).ok()?.into(),
        ..Default::default()
    })
}

/// Writes a PACKET message for `frame` into `out` (no PPIs, no OOB data; data right after
/// the header); returns the message length, or `None` if `out` is too small.
pub fn write_packet(out: &mut [u8], frame: &[u8]) -> Option<usize> {
    let len = packet_message_len(frame.len());
    let out = out.get_mut(..len)?;
    let header = packet_header(frame.len())?;
    let (h, rest) = out.split_at_mut(size_of::<RndisPacket>());
    h.copy_from_slice(header.as_bytes());
    rest[..frame.len()].copy_from_slice(frame);
    rest[frame.len()..].fill(0);
    Some(len)
}

/// Writes an INITIALIZE request (version 1.0); returns its length.
pub fn write_initialize(out: &mut [u8], request_id: u32, max_transfer_size: u32) -> Option<usize> {
    let m = RndisInitRequest {
        header: RndisHeader {
            msg_type: rndis_msg::INITIALIZE.into(),
            msg_len: (size_of::<RndisInitRequest>() as u32).into(),
        },
        request_id: request_id.into(),
        major_version: 1.into(),
        minor_version: 0.into(),
        max_transfer_size: max_transfer_size.into(),
    };
    let b = m.as_bytes();
    out.get_mut(..b.len())?.copy_from_slice(b);
    Some(b.len())
}

/// Writes a QUERY (`msg_type` = [`rndis_msg::QUERY`]) or SET request for `oid` with `info`
/// as the information buffer (placed right after the 28-byte header, offset 20); returns its
/// length. The offset is 20 even without information bytes, as Linux and FreeBSD send it:
/// FreeBSD's hn notes that Hyper-V answers a QUERY whose offset is 0 with a failure status,
/// although the RNDIS specification asks for 0.
pub fn write_oid_request(
    out: &mut [u8],
    msg_type: u32,
    request_id: u32,
    oid: u32,
    info: &[u8],
) -> Option<usize> {
    let len = size_of::<RndisOidRequest>() + info.len();
    let m = RndisOidRequest {
        header: RndisHeader {
            msg_type: msg_type.into(),
            msg_len: u32::try_from(len).ok()?.into(),
        },
        request_id: request_id.into(),
        oid: oid.into(),
        info_buffer_length: u32::try_from(info.len()).ok()?.into(),
        info_buffer_offset: ((size_of::<RndisOidRequest>() - RNDIS_OFFSET_BASE) as u32).into(),
        device_vc_handle: 0.into(),
    };
    let out = out.get_mut(..len)?;
    let (h, rest) = out.split_at_mut(size_of::<RndisOidRequest>());
    h.copy_from_slice(m.as_bytes());
    rest.copy_from_slice(info);
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn a_packet_round_trips() {
        let frame = [0xAAu8; 60];
        let mut buf = [0u8; 128];
        let n = write_packet(&mut buf, &frame).unwrap();
        assert_eq!(n, 104);
        assert_eq!(
            parse_message(&buf[..n]),
            Ok(Message::Packet {
                frame: &frame,
                ppi: &[]
            })
        );
    }

    #[test]
    fn ranges_outside_the_message_are_rejected() {
        let frame = [1u8; 16];
        let mut buf = [0u8; 64];
        let n = write_packet(&mut buf, &frame).unwrap();
        // data_length beyond msg_len
        buf[12..16].copy_from_slice(&100u32.to_le_bytes());
        assert!(matches!(
            parse_message(&buf[..n]),
            Err(RndisError::BadRange { .. })
        ));
        // data_offset overflowing
        buf[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        buf[12..16].copy_from_slice(&16u32.to_le_bytes());
        assert!(matches!(
            parse_message(&buf[..n]),
            Err(RndisError::BadRange { .. })
        ));
        // msg_len beyond the slice
        buf[4..8].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(parse_message(&buf[..n]), Err(RndisError::BadLength(1000)));
    }

    #[test]
    fn ppis_are_walked_and_bad_ones_reported() {
        let mut area = [0u8; 32];
        area[0..4].copy_from_slice(&16u32.to_le_bytes());
        area[8..12].copy_from_slice(&12u32.to_le_bytes());
        area[12..16].copy_from_slice(&0x55u32.to_le_bytes());
        area[16..20].copy_from_slice(&16u32.to_le_bytes());
        area[20..24].copy_from_slice(&6u32.to_le_bytes());
        area[24..28].copy_from_slice(&12u32.to_le_bytes());
        let got: Vec<_> = ppis(&area).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].unwrap().ppi_type, 6);
        area[16..20].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(ppis(&area).last(), Some(Err(RndisError::BadPpi)));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic fuzz: every prefix and many bit patterns of a query reply.
        let mut buf = [0u8; 64];
        let mut x: u32 = 0x1234_5678;
        for round in 0..20_000u32 {
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            buf[0..4].copy_from_slice(
                &[1u32, 0x8000_0002, 0x8000_0004, 0x8000_0005, 7][round as usize % 5].to_le_bytes(),
            );
            buf[4..8].copy_from_slice(&(x % 80).to_le_bytes());
            let _ = parse_message(&buf[..(round as usize % 65)]);
        }
    }
}
