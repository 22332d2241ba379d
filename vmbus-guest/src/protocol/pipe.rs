//! Pipe framing (devices §0.7): the 8-byte header in front of every message of the pipe-mode
//! devices (synthetic video, mouse and keyboard): a type — data, or partial message — and the
//! number of message bytes that follow.

#![forbid(unsafe_code)]

use static_assertions::const_assert_eq;
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Pipe header type "data": a whole message follows (the only type guests send).
pub const PIPE_DATA: u32 = 1;
/// Pipe header type "partial message".
pub const PIPE_PARTIAL: u32 = 2;

/// The pipe header.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct PipeHeader {
    /// [`PIPE_DATA`] or [`PIPE_PARTIAL`].
    pub kind: U32,
    /// Message bytes after this header.
    pub size: U32,
}
const_assert_eq!(core::mem::size_of::<PipeHeader>(), 8);

impl PipeHeader {
    /// The header of a data message of `size` bytes.
    pub fn data(size: u32) -> Self {
        Self {
            kind: PIPE_DATA.into(),
            size: size.into(),
        }
    }
}

/// Why a packet is not one pipe data message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipeError {
    /// The packet is shorter than the header.
    Truncated {
        /// Bytes in the packet.
        len: usize,
    },
    /// Not a data message, or it claims more bytes than the packet holds.
    Bad {
        /// The header's type.
        kind: u32,
        /// The header's size.
        size: u32,
    },
}

/// The message bytes of a pipe data message in `packet` (a received packet's payload, whose
/// tail may be ring padding): exactly the `size` bytes the header announces, never more than
/// the packet holds.
pub fn pipe_message(packet: &[u8]) -> Result<&[u8], PipeError> {
    let (pipe, rest) = PipeHeader::read_from_prefix(packet)
        .map_err(|_| PipeError::Truncated { len: packet.len() })?;
    let (kind, size) = (pipe.kind.get(), pipe.size.get());
    match rest.get(..size as usize) {
        Some(body) if kind == PIPE_DATA => Ok(body),
        _ => Err(PipeError::Bad { kind, size }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_messages_are_bounded_by_the_packet() {
        let mut p = PipeHeader::data(3).as_bytes().to_vec();
        p.extend_from_slice(&[1, 2, 3, 0, 0]);
        assert_eq!(pipe_message(&p), Ok(&[1u8, 2, 3][..]));
        assert_eq!(pipe_message(&p[..5]), Err(PipeError::Truncated { len: 5 }));
        let mut big = PipeHeader::data(100).as_bytes().to_vec();
        big.extend_from_slice(&[0; 8]);
        assert_eq!(
            pipe_message(&big),
            Err(PipeError::Bad { kind: 1, size: 100 })
        );
        let partial = PipeHeader {
            kind: PIPE_PARTIAL.into(),
            size: 0.into(),
        };
        assert_eq!(
            pipe_message(partial.as_bytes()),
            Err(PipeError::Bad { kind: 2, size: 0 })
        );
    }
}
