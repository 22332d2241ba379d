//! Where a ring lives: the [`RingMemory`] trait and its implementations over raw pages
//! ([`RawRingMemory`], OS-mapped, optionally double-mapped) and over a caller's buffer
//! ([`FlatRingMemory`], tests and benchmarks).

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
pub use raw::{FlatRingMemory, RawRingMemory};

#[cfg(not(loom))]
mod raw {
    use super::{LayoutError, MAX_DATA_SIZE, MIN_DATA_SIZE, RingMemory};
    use crate::ring::control::ControlPage;
    use crate::ring::protocol::CONTROL_PAGE_SIZE;
    use crate::ring::{RingReader, RingWriter};
    use core::marker::PhantomData;
    use core::ptr::NonNull;

    /// A ring in memory named by raw pointers: a control page and a data area mapped by the
    /// operating system (the pages of a channel's ring GPADL), optionally with the data pages
    /// mapped a second time right after the first mapping.
    #[derive(Debug, Clone, Copy)]
    pub struct RawRingMemory {
        control: NonNull<ControlPage>,
        data: NonNull<u8>,
        data_size: u32,
        contiguous: usize,
    }

    // SAFETY: the memory is shared by design: the control page is only accessed atomically and
    // the data copies follow the ring protocol (one writer, one reader), as `new` requires.
    unsafe impl Send for RawRingMemory {}
    // SAFETY: as for `Send`.
    unsafe impl Sync for RawRingMemory {}

    impl RawRingMemory {
        /// Describes a ring at `control` (its control page) and `data` (its data area of
        /// `data_size` bytes). With `double_mapped`, `data + data_size` maps the same pages
        /// again, `data_size` bytes of them.
        ///
        /// # Safety
        ///
        /// For as long as this value or any copy is used: `control` points to at least 0x44
        /// readable and writable bytes (a whole page on a channel), `data` to `data_size`
        /// (twice that if `double_mapped`) readable and writable bytes, both accessed by
        /// nothing else in this program except through the ring protocol: at most one
        /// [`RingWriter`](crate::ring::RingWriter) and one [`RingReader`](crate::ring::RingReader)
        /// use the ring (the remote peer, e.g. the host, is the other end).
        pub unsafe fn new(
            control: NonNull<ControlPage>,
            data: NonNull<u8>,
            data_size: u32,
            double_mapped: bool,
        ) -> Result<Self, LayoutError> {
            if !data_size.is_multiple_of(8) || !(MIN_DATA_SIZE..=MAX_DATA_SIZE).contains(&data_size)
            {
                return Err(LayoutError::BadDataSize);
            }
            if !control.as_ptr().is_aligned() || !data.cast::<u64>().as_ptr().is_aligned() {
                return Err(LayoutError::Misaligned);
            }
            let contiguous = data_size as usize * if double_mapped { 2 } else { 1 };
            Ok(Self {
                control,
                data,
                data_size,
                contiguous,
            })
        }

        /// Describes the usual layout: one 4 KiB control page at `base` and the data area
        /// right after it, `data_size` bytes.
        ///
        /// # Safety
        ///
        /// As for [`RawRingMemory::new`], with `base` pointing to `4096 + data_size` bytes.
        pub unsafe fn from_pages(base: NonNull<u8>, data_size: u32) -> Result<Self, LayoutError> {
            // SAFETY: the caller guarantees `base` points to 4096 + data_size bytes, so the
            // data area starts in bounds.
            let data = unsafe { base.add(CONTROL_PAGE_SIZE) };
            // SAFETY: forwarded from the caller.
            unsafe { Self::new(base.cast(), data, data_size, false) }
        }
    }

    impl RingMemory for RawRingMemory {
        #[inline]
        fn control(&self) -> &ControlPage {
            // SAFETY: `new` requires `control` valid for the life of this value; every field is
            // an atomic, so a shared reference is sound while the peer writes concurrently.
            unsafe { self.control.as_ref() }
        }
        #[inline]
        fn data_size(&self) -> u32 {
            self.data_size
        }
        #[inline]
        fn contiguous_size(&self) -> usize {
            self.contiguous
        }
        #[inline(always)]
        fn read_data(&self, offset: usize, buf: &mut [u8]) {
            if offset
                .checked_add(buf.len())
                .is_none_or(|end| end > self.contiguous)
            {
                return;
            }
            // SAFETY: the range is inside the mapping (checked above); the protocol gives the
            // reader these bytes (published by the writer, not yet released), `buf` is private.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    self.data.as_ptr().add(offset),
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            }
        }
        #[inline(always)]
        fn write_data(&self, offset: usize, data: &[u8]) {
            if offset
                .checked_add(data.len())
                .is_none_or(|end| end > self.contiguous)
            {
                return;
            }
            // SAFETY: the range is inside the mapping (checked above); the protocol gives the
            // writer these bytes (free space the reader released), `data` is private.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    self.data.as_ptr().add(offset),
                    data.len(),
                )
            }
        }
    }

    /// A ring in a caller-provided buffer: the first 4096 bytes are the control page, the rest
    /// the data area. Built only in writer/reader pairs, so the protocol's one-writer,
    /// one-reader rule holds by construction. For tests and benchmarks.
    #[derive(Debug)]
    pub struct FlatRingMemory<'a> {
        raw: RawRingMemory,
        _buf: PhantomData<&'a mut [u64]>,
    }

    impl<'a> FlatRingMemory<'a> {
        /// Zeroes `buf` and returns the writer and the reader of the ring it holds (data area
        /// = `buf` minus the first 4096 bytes). The writer announces pending-send-size support.
        pub fn new_pair(
            buf: &'a mut [u64],
        ) -> Result<
            (
                RingWriter<FlatRingMemory<'a>>,
                RingReader<FlatRingMemory<'a>>,
            ),
            LayoutError,
        > {
            buf.fill(0);
            let bytes = buf.len() * 8;
            let data_size = bytes
                .checked_sub(CONTROL_PAGE_SIZE)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or(LayoutError::BadDataSize)?;
            let base = NonNull::from(buf).cast::<u8>();
            // SAFETY: `buf` is exclusively borrowed for 'a and holds 4096 + data_size bytes; the
            // only two users are the writer and reader returned here.
            let raw = unsafe { RawRingMemory::from_pages(base, data_size)? };
            let w = Self {
                raw,
                _buf: PhantomData,
            };
            let r = Self {
                raw,
                _buf: PhantomData,
            };
            // Fresh zeroed ring: indices 0 and in range, so neither constructor can fail.
            match (RingWriter::new(w), RingReader::new(r)) {
                (Ok(w), Ok(r)) => Ok((w, r)),
                _ => Err(LayoutError::BadDataSize),
            }
        }
    }

    impl RingMemory for FlatRingMemory<'_> {
        #[inline]
        fn control(&self) -> &ControlPage {
            self.raw.control()
        }
        #[inline]
        fn data_size(&self) -> u32 {
            self.raw.data_size()
        }
        #[inline(always)]
        fn read_data(&self, offset: usize, buf: &mut [u8]) {
            self.raw.read_data(offset, buf)
        }
        #[inline(always)]
        fn write_data(&self, offset: usize, data: &[u8]) {
            self.raw.write_data(offset, data)
        }
    }
}
