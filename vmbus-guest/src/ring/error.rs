//! Typed ring errors: an empty or full ring is flow control, a [`Corrupt`] ring is a peer
//! (host) that broke the protocol and the channel must be reset.

#![forbid(unsafe_code)]

use core::fmt;

/// What the peer got wrong in shared memory. Every value read from the ring is validated and
/// a violation is reported as one of these, never acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corrupt {
    /// The write index is not below the data size.
    WriteIndexOutOfRange(u32),
    /// The write index is not a multiple of 8.
    WriteIndexMisaligned(u32),
    /// The read index is not below the data size.
    ReadIndexOutOfRange(u32),
    /// The read index is not a multiple of 8.
    ReadIndexMisaligned(u32),
    /// Fewer bytes are available than a descriptor plus trailer.
    TruncatedPacket {
        /// Bytes between read and write index.
        available: u32,
    },
    /// The descriptor's data offset is below 2 (inside the descriptor) or beyond the length.
    BadDataOffset {
        /// Data offset in 8-byte units.
        offset8: u16,
        /// Packet length in 8-byte units.
        length8: u16,
    },
    /// The packet plus its trailer is longer than the bytes the writer published.
    LengthExceedsAvailable {
        /// Packet length including trailer, in bytes.
        length: u32,
        /// Bytes between read and write index.
        available: u32,
    },
    /// A transfer-page or GPA-direct header does not fit before the payload.
    HeaderExceedsDataOffset,
    /// The range count is zero where ranges are required, or the ranges do not fit in the
    /// header space the data offset leaves.
    BadRangeCount(u32),
    /// A GPA range starts at or beyond the end of its first page.
    BadRangeOffset(u32),
    /// The ring memory reports an unusable data area size (not a multiple of 8, too small or
    /// too large).
    BadDataSize(u32),
}

impl fmt::Display for Corrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WriteIndexOutOfRange(v) => write!(f, "write index {v:#x} beyond data area"),
            Self::WriteIndexMisaligned(v) => write!(f, "write index {v:#x} not 8-aligned"),
            Self::ReadIndexOutOfRange(v) => write!(f, "read index {v:#x} beyond data area"),
            Self::ReadIndexMisaligned(v) => write!(f, "read index {v:#x} not 8-aligned"),
            Self::TruncatedPacket { available } => {
                write!(f, "only {available} bytes available, less than a packet")
            }
            Self::BadDataOffset { offset8, length8 } => {
                write!(f, "data offset {offset8}x8 invalid for length {length8}x8")
            }
            Self::LengthExceedsAvailable { length, available } => {
                write!(
                    f,
                    "packet of {length} bytes exceeds the {available} available"
                )
            }
            Self::HeaderExceedsDataOffset => f.write_str("packet header overlaps the payload"),
            Self::BadRangeCount(n) => write!(f, "range count {n} does not fit the packet"),
            Self::BadRangeOffset(v) => write!(f, "GPA range offset {v:#x} beyond its page"),
            Self::BadDataSize(v) => write!(f, "unusable data area size {v:#x}"),
        }
    }
}

impl core::error::Error for Corrupt {}

/// Why no packet was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// The ring holds no packet.
    Empty,
    /// The caller's buffer is smaller than the next packet; nothing was consumed.
    BufferTooSmall {
        /// Bytes the packet needs (descriptor, headers, payload and padding).
        needed: usize,
    },
    /// The peer corrupted the ring.
    Corrupt(Corrupt),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("ring empty"),
            Self::BufferTooSmall { needed } => write!(f, "packet needs a {needed}-byte buffer"),
            Self::Corrupt(c) => write!(f, "ring corrupt: {c}"),
        }
    }
}

impl core::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Corrupt(c) => Some(c),
            _ => None,
        }
    }
}

impl From<Corrupt> for ReadError {
    fn from(c: Corrupt) -> Self {
        Self::Corrupt(c)
    }
}

/// Why a packet was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// Not enough free space now; retry after the reader frees space (see
    /// [`RingWriter::request_space`](super::RingWriter::request_space)).
    Full {
        /// Ring bytes the packet needs, trailer included.
        needed: u32,
    },
    /// The packet can never fit this ring or the descriptor's 16-bit length fields.
    TooLarge,
    /// The packet itself is malformed (a GPA range whose PFN count does not match its span,
    /// or a range offset beyond its first page).
    InvalidPacket,
    /// The peer corrupted the ring.
    Corrupt(Corrupt),
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full { needed } => write!(f, "ring full, {needed} bytes needed"),
            Self::TooLarge => f.write_str("packet too large for the ring"),
            Self::InvalidPacket => f.write_str("malformed outgoing packet"),
            Self::Corrupt(c) => write!(f, "ring corrupt: {c}"),
        }
    }
}

impl core::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Corrupt(c) => Some(c),
            _ => None,
        }
    }
}

impl From<Corrupt> for WriteError {
    fn from(c: Corrupt) -> Self {
        Self::Corrupt(c)
    }
}
