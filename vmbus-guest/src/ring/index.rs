//! Index arithmetic and validation shared by both endpoints.

#![forbid(unsafe_code)]

use super::error::Corrupt;
use super::memory::{MAX_DATA_SIZE, MIN_DATA_SIZE};

/// Checks the data area size a [`RingMemory`](super::RingMemory) reports.
pub(crate) fn check_size(size: u32) -> Result<u32, Corrupt> {
    if size.is_multiple_of(8) && (MIN_DATA_SIZE..=MAX_DATA_SIZE).contains(&size) {
        Ok(size)
    } else {
        Err(Corrupt::BadDataSize(size))
    }
}

/// Validates a write index read from shared memory.
#[inline]
pub(crate) fn check_write_index(w: u32, size: u32) -> Result<u32, Corrupt> {
    if w >= size {
        Err(Corrupt::WriteIndexOutOfRange(w))
    } else if !w.is_multiple_of(8) {
        Err(Corrupt::WriteIndexMisaligned(w))
    } else {
        Ok(w)
    }
}

/// Validates a read index read from shared memory.
#[inline]
pub(crate) fn check_read_index(r: u32, size: u32) -> Result<u32, Corrupt> {
    if r >= size {
        Err(Corrupt::ReadIndexOutOfRange(r))
    } else if !r.is_multiple_of(8) {
        Err(Corrupt::ReadIndexMisaligned(r))
    } else {
        Ok(r)
    }
}

/// Bytes from `from` forward to `to` in a ring of `size` (both < size).
#[inline]
pub(crate) fn distance(from: u32, to: u32, size: u32) -> u32 {
    if to >= from {
        to - from
    } else {
        size - from + to
    }
}

/// `index + n` modulo `size`, for `index < size` and `n <= size`.
#[inline]
pub(crate) fn advance(index: u32, n: u32, size: u32) -> u32 {
    let x = index + n;
    if x >= size { x - size } else { x }
}
