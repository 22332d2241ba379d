//! Where a ring lives: the [`RingMemory`] trait and its implementations over raw pages
//! ([`RawRingMemory`], OS-mapped, optionally double-mapped) and over a caller's buffer
//! ([`FlatRingMemory`], tests and benchmarks).

#![forbid(unsafe_code)]

use super::control::ControlPage;

/// Smallest data area the endpoints accept (room for one minimal packet plus the byte that
/// is always kept free).
pub const MIN_DATA_SIZE: u32 = 64;
/// Largest data area the endpoints accept (indices are u32 and arithmetic stays in range).
pub const MAX_DATA_SIZE: u32 = 1 << 30;

/// One direction of a ring: its control page and its data area.
///
/// The ring code handles wrap-around: it only asks for ranges with
/// `offset < data_size()` and `offset + len <= contiguous_size()`. Implementations that receive
/// anything else must stay sound (ignore the request or clamp), never read or write outside the
/// ring.
pub trait RingMemory {
    /// The control page, as atomics at the protocol offsets.
    fn control(&self) -> &ControlPage;
    /// Size of the data area in bytes: a multiple of 8 in
    /// `MIN_DATA_SIZE..=MAX_DATA_SIZE` (a multiple of 4096 on a real channel). Must not change.
    fn data_size(&self) -> u32;
    /// How many bytes from any offset below `data_size()` can be accessed in one call: the
    /// data size, or twice it when the data pages are mapped twice back to back, so no packet
    /// ever needs a split copy.
    fn contiguous_size(&self) -> usize {
        self.data_size() as usize
    }
    /// Copies `buf.len()` bytes of the data area starting at `offset` into `buf`.
    fn read_data(&self, offset: usize, buf: &mut [u8]);
    /// Copies `data` into the data area starting at `offset`.
    fn write_data(&self, offset: usize, data: &[u8]);
}

impl<M: RingMemory + ?Sized> RingMemory for &M {
    fn control(&self) -> &ControlPage {
        (**self).control()
    }
    fn data_size(&self) -> u32 {
        (**self).data_size()
    }
    fn contiguous_size(&self) -> usize {
        (**self).contiguous_size()
    }
    fn read_data(&self, offset: usize, buf: &mut [u8]) {
        (**self).read_data(offset, buf)
    }
    fn write_data(&self, offset: usize, data: &[u8]) {
        (**self).write_data(offset, data)
    }
}

/// Copies out of the ring at ring offset `offset` (< data size), wrapping at the end of the
/// data area unless the memory is double-mapped. `buf.len()` is at most the data size.
// Always inlined: callers pass fixed sizes (descriptor words, trailer) that must become plain
// loads and stores, not calls to memcpy.
#[inline(always)]
pub(crate) fn copy_from_ring<M: RingMemory + ?Sized>(mem: &M, offset: u32, buf: &mut [u8]) {
    let offset = offset as usize;
    if offset + buf.len() <= mem.contiguous_size() {
        mem.read_data(offset, buf);
    } else {
        let first = (mem.data_size() as usize)
            .saturating_sub(offset)
            .min(buf.len());
        let (head, tail) = buf.split_at_mut(first);
        mem.read_data(offset, head);
        mem.read_data(0, tail);
    }
}

/// Copies into the ring at ring offset `offset` (< data size), wrapping like
/// [`copy_from_ring`].
#[inline(always)]
pub(crate) fn copy_to_ring<M: RingMemory + ?Sized>(mem: &M, offset: u32, data: &[u8]) {
    let offset = offset as usize;
    if offset + data.len() <= mem.contiguous_size() {
        mem.write_data(offset, data);
    } else {
        let first = (mem.data_size() as usize)
            .saturating_sub(offset)
            .min(data.len());
        let (head, tail) = data.split_at(first);
        mem.write_data(offset, head);
        mem.write_data(0, tail);
    }
}

/// Why a memory region cannot hold a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// The data area size is not a multiple of 8 or outside
    /// `MIN_DATA_SIZE..=MAX_DATA_SIZE`.
    BadDataSize,
    /// The control page is not 4-byte aligned or the data area not 8-byte aligned.
    Misaligned,
}

impl core::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::BadDataSize => "ring data area size is not a multiple of 8 in the allowed range",
            Self::Misaligned => "ring control page or data area is misaligned",
        })
    }
}

impl core::error::Error for LayoutError {}

#[cfg(not(loom))]
pub use crate::shared::{FlatRingMemory, RawRingMemory};
