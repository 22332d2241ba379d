//! Ring memory over raw pages ([`RawRingMemory`]) and over a caller's buffer
//! ([`FlatRingMemory`], tests and benchmarks). Data copies are volatile; the control page is
//! atomics.
use crate::ring::control::ControlPage;
use crate::ring::protocol::CONTROL_PAGE_SIZE;
use crate::ring::{LayoutError, MAX_DATA_SIZE, MIN_DATA_SIZE, RingMemory};
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
        if !data_size.is_multiple_of(8) || !(MIN_DATA_SIZE..=MAX_DATA_SIZE).contains(&data_size) {
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
        unsafe { super::copy_in(self.data.as_ptr().add(offset), buf) }
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
        unsafe { super::copy_out(self.data.as_ptr().add(offset), data) }
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
