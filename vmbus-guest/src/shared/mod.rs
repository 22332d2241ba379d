//! All access to memory the host can see goes through this module: the only place in
//! `vmbus-guest` with `unsafe` code (the rest of the crate is `#![forbid(unsafe_code)]`).
//!
//! Rules kept here:
//! - no Rust reference (`&[u8]`, `&mut [u8]`) is ever formed over bytes the host may write:
//!   data is copied in and out with volatile accesses ([`copy_in`], [`copy_out`]), and words
//!   the protocol shares (ring control fields, monitor pending bits) are atomics;
//! - every host-written value is read once by the caller, from the private copy;
//! - pages go back to the [`Hal`] only through [`SharedPages::free`], whose callers inside the
//!   crate have proof the host no longer maps them (GPADL_TORNDOWN, a refused GPADL, an
//!   UNLOAD_RESPONSE, or pages the host was never told about).

mod ring_memory;

pub use ring_memory::{FlatRingMemory, RawRingMemory};

use crate::hal::{HV_PAGE_SIZE, Hal, HalError, PhysAddr};
use crate::host_buffer::Dma;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

/// The widest plain load/store the copies use for the bulk: a 16-byte SSE2 register on
/// x86_64 (baseline there), an 8-byte word elsewhere.
#[cfg(target_arch = "x86_64")]
type Chunk = core::arch::x86_64::__m128i;
#[cfg(not(target_arch = "x86_64"))]
type Chunk = u64;
const CHUNK: usize = core::mem::size_of::<Chunk>();

/// Copies `buf.len()` bytes from host-visible memory at `src` into `buf` with volatile
/// accesses (aligned [`Chunk`]s, four at a time where possible), so the compiler neither
/// re-reads nor elides host-written bytes.
///
/// # Safety
///
/// `src..src + buf.len()` is readable memory that stays mapped for the call.
#[inline(always)]
unsafe fn copy_in(src: *const u8, buf: &mut [u8]) {
    let len = buf.len();
    let dst = buf.as_mut_ptr();
    // Each read of `src` is aligned to its size: the head's units by the bits of the distance
    // to alignment, then whole chunks, then the tail's units from a chunk boundary.
    // SAFETY: every offset below is < len, so `src + i` is in the caller's range and `dst + i`
    // in `buf`; reads of `src` are aligned (above); writes into `buf` are unaligned writes.
    unsafe {
        let mut i = edge_units(src, len, &mut |at, unit| {
            copy_unit_in(src.add(at), dst.add(at), unit)
        });
        while i + 4 * CHUNK <= len {
            let s = src.add(i).cast::<Chunk>();
            let (a, b, c, d) = (
                s.read_volatile(),
                s.add(1).read_volatile(),
                s.add(2).read_volatile(),
                s.add(3).read_volatile(),
            );
            let o = dst.add(i).cast::<Chunk>();
            o.write_unaligned(a);
            o.add(1).write_unaligned(b);
            o.add(2).write_unaligned(c);
            o.add(3).write_unaligned(d);
            i += 4 * CHUNK;
        }
        while i + CHUNK <= len {
            dst.add(i)
                .cast::<Chunk>()
                .write_unaligned(src.add(i).cast::<Chunk>().read_volatile());
            i += CHUNK;
        }
        tail_units(i, len, &mut |at, unit| {
            copy_unit_in(src.add(at), dst.add(at), unit)
        });
    }
}

/// Copies `data` into host-visible memory at `dst` with volatile accesses.
///
/// # Safety
///
/// `dst..dst + data.len()` is writable memory that stays mapped for the call.
#[inline(always)]
unsafe fn copy_out(dst: *mut u8, data: &[u8]) {
    let len = data.len();
    let src = data.as_ptr();
    // SAFETY: every offset below is < len, so `dst + i` is in the caller's range and `src + i`
    // in `data`; each write of `dst` is aligned to its size (as the reads in `copy_in`);
    // reads from `data` are unaligned reads.
    unsafe {
        let mut i = edge_units(dst, len, &mut |at, unit| {
            copy_unit_out(src.add(at), dst.add(at), unit)
        });
        while i + 4 * CHUNK <= len {
            let s = src.add(i).cast::<Chunk>();
            let (a, b, c, d) = (
                s.read_unaligned(),
                s.add(1).read_unaligned(),
                s.add(2).read_unaligned(),
                s.add(3).read_unaligned(),
            );
            let o = dst.add(i).cast::<Chunk>();
            o.write_volatile(a);
            o.add(1).write_volatile(b);
            o.add(2).write_volatile(c);
            o.add(3).write_volatile(d);
            i += 4 * CHUNK;
        }
        while i + CHUNK <= len {
            dst.add(i)
                .cast::<Chunk>()
                .write_volatile(src.add(i).cast::<Chunk>().read_unaligned());
            i += CHUNK;
        }
        tail_units(i, len, &mut |at, unit| {
            copy_unit_out(src.add(at), dst.add(at), unit)
        });
    }
}

/// The head of a copy of `len` bytes at `shared` (the host-visible side) up to its first
/// [`Chunk`] boundary: `unit(offset, size)` for units of 1, 2, 4 and 8 bytes, smallest first,
/// each aligned to its size at `shared + offset` (the distance to the boundary has a bit set
/// for each unit taken, so every unit leaves the next one aligned). A copy shorter than that
/// distance goes byte by byte. Returns the bytes done.
#[inline(always)]
fn edge_units(shared: *const u8, len: usize, unit: &mut impl FnMut(usize, usize)) -> usize {
    let head = shared.align_offset(CHUNK);
    let mut i = 0;
    if head <= len {
        for size in [1, 2, 4, 8] {
            if size < CHUNK && head & size != 0 {
                unit(i, size);
                i += size;
            }
        }
    } else {
        while i < len {
            unit(i, 1);
            i += 1;
        }
    }
    i
}

/// The tail of a copy from offset `i` (at a [`Chunk`] boundary of the shared side, or `len`)
/// to `len`: units of 8, 4, 2 and 1 bytes, largest first, each aligned to its size.
#[inline(always)]
fn tail_units(mut i: usize, len: usize, unit: &mut impl FnMut(usize, usize)) {
    for size in [8, 4, 2, 1] {
        if size < CHUNK && (len - i) & size != 0 {
            unit(i, size);
            i += size;
        }
    }
}

/// One volatile read of `size` (1, 2, 4 or 8) bytes at `src`, stored unaligned at `dst`.
///
/// # Safety
///
/// `src` is readable and aligned to `size`; `dst` is writable for `size` bytes.
#[inline(always)]
unsafe fn copy_unit_in(src: *const u8, dst: *mut u8, size: usize) {
    // SAFETY: the caller's contract, for each width.
    unsafe {
        match size {
            8 => dst
                .cast::<u64>()
                .write_unaligned(src.cast::<u64>().read_volatile()),
            4 => dst
                .cast::<u32>()
                .write_unaligned(src.cast::<u32>().read_volatile()),
            2 => dst
                .cast::<u16>()
                .write_unaligned(src.cast::<u16>().read_volatile()),
            _ => dst.write(src.read_volatile()),
        }
    }
}

/// One volatile write of `size` (1, 2, 4 or 8) bytes at `dst`, loaded unaligned from `src`.
///
/// # Safety
///
/// `dst` is writable and aligned to `size`; `src` is readable for `size` bytes.
#[inline(always)]
unsafe fn copy_unit_out(src: *const u8, dst: *mut u8, size: usize) {
    // SAFETY: the caller's contract, for each width.
    unsafe {
        match size {
            8 => dst
                .cast::<u64>()
                .write_volatile(src.cast::<u64>().read_unaligned()),
            4 => dst
                .cast::<u32>()
                .write_volatile(src.cast::<u32>().read_unaligned()),
            2 => dst
                .cast::<u16>()
                .write_volatile(src.cast::<u16>().read_unaligned()),
            _ => dst.write_volatile(src.read()),
        }
    }
}

/// An access outside a shared buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfBounds {
    /// Offset asked for.
    pub offset: usize,
    /// Length asked for.
    pub len: usize,
    /// Size of the buffer.
    pub size: usize,
}

impl core::fmt::Display for OutOfBounds {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} bytes at offset {} are outside a {}-byte shared buffer",
            self.len, self.offset, self.size
        )
    }
}

impl core::error::Error for OutOfBounds {}

/// Pages from [`Hal::alloc_pages`] that the host may map: owned by one bus object (the monitor
/// pages, a channel's rings, a host buffer), reached only by copies and atomics, and given back
/// to the HAL only by [`SharedPages::free`] or never ([`SharedPages::leak`]).
///
/// Dropping it leaks the pages (the safe default: the host might still map them).
#[derive(Debug)]
pub(crate) struct SharedPages {
    base: NonNull<u8>,
    pages: usize,
}

// SAFETY: the value only names the allocation; every access is a volatile copy or an atomic,
// valid from any thread.
unsafe impl Send for SharedPages {}
// SAFETY: as for `Send`; shared access is what the copies and atomics are for.
unsafe impl Sync for SharedPages {}

impl SharedPages {
    /// Allocates `pages` zeroed pages.
    pub(crate) fn alloc(hal: &impl Hal, pages: usize) -> Result<Self, HalError> {
        if pages == 0 || pages.checked_mul(HV_PAGE_SIZE).is_none() {
            return Err(HalError::InvalidRequest);
        }
        let base = hal.alloc_pages(pages)?;
        Ok(Self { base, pages })
    }

    /// Number of 4 KiB pages.
    pub(crate) fn pages(&self) -> usize {
        self.pages
    }

    /// Size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.pages * HV_PAGE_SIZE
    }

    /// Guest-physical address of page `i` (for GPADL PFN lists).
    pub(crate) fn page_gpa(&self, hal: &impl Hal, i: usize) -> Result<PhysAddr, HalError> {
        if i >= self.pages {
            return Err(HalError::InvalidRequest);
        }
        // In bounds: i < pages, and pages * 4096 fits (checked at allocation).
        let page = self.base.as_ptr().wrapping_add(i * HV_PAGE_SIZE);
        hal.virt_to_phys(NonNull::new(page).ok_or(HalError::InvalidRequest)?)
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), OutOfBounds> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(OutOfBounds {
                offset,
                len,
                size: self.len(),
            }),
        }
    }

    /// Copies `buf.len()` bytes at `offset` out of the pages (bounds-checked, volatile).
    pub(crate) fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), OutOfBounds> {
        self.check(offset, buf.len())?;
        // SAFETY: in bounds of the live allocation (checked above).
        unsafe { copy_in(self.base.as_ptr().add(offset), buf) };
        Ok(())
    }

    /// Copies `data` into the pages at `offset` (bounds-checked, volatile).
    pub(crate) fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), OutOfBounds> {
        self.check(offset, data.len())?;
        // SAFETY: in bounds of the live allocation (checked above).
        unsafe { copy_out(self.base.as_ptr().add(offset), data) };
        Ok(())
    }

    /// Zeroes every byte (volatile).
    pub(crate) fn zero(&self) {
        let zeros = [0u8; 256];
        for off in (0..self.len()).step_by(zeros.len()) {
            // In bounds: the size is a multiple of 4096, hence of 256.
            let _ = self.write_at(off, &zeros);
        }
    }

    /// The ring in pages `first..first + pages` of this allocation: its first page is the
    /// control page, the rest the data area.
    ///
    /// The ring memory names these pages: the caller keeps this [`SharedPages`] alive (never
    /// frees it) while the returned value, or a reader or writer built on it, is in use.
    pub(crate) fn ring(&self, first: usize, pages: usize) -> Result<RawRingMemory, HalError> {
        let end = first.checked_add(pages).ok_or(HalError::InvalidRequest)?;
        if pages < 2 || end > self.pages {
            return Err(HalError::InvalidRequest);
        }
        let data_size =
            u32::try_from((pages - 1) * HV_PAGE_SIZE).map_err(|_| HalError::InvalidRequest)?;
        // SAFETY: pages first..end lie inside the live allocation (checked above), which the
        // owner keeps allocated while the ring is used (the contract of this crate-private
        // call); one reader and one writer use each ring, the host being the other end.
        unsafe {
            RawRingMemory::from_pages(self.base.add(first * HV_PAGE_SIZE), data_size)
                .map_err(|_| HalError::InvalidRequest)
        }
    }

    /// Gives the pages back to the HAL.
    ///
    /// Callers (crate-internal) hold proof that the host does not map the pages any more and
    /// that no ring built with [`SharedPages::ring`] is still in use.
    pub(crate) fn free(self, hal: &impl Hal) {
        // SAFETY: `base`/`pages` are exactly one allocation from `alloc_pages`; the caller
        // holds proof that neither the host nor this program uses the pages any more.
        unsafe { hal.free_pages(self.base, self.pages) };
    }

    /// Leaves the pages to the host for good.
    pub(crate) fn leak(self) {
        log::warn!(
            "leaking {} host-visible page(s) at {:p}: the host may still map them",
            self.pages,
            self.base.as_ptr()
        );
    }

    /// The virtual address of byte `offset` for address translation only (never dereferenced
    /// outside this module).
    pub(crate) fn addr_of(&self, offset: usize) -> Option<NonNull<u8>> {
        (offset < self.len())
            .then(|| NonNull::new(self.base.as_ptr().wrapping_add(offset)))
            .flatten()
    }
}

/// One 32-bit word of bus-owned shared pages that the guest sets bits in and the host reads
/// and clears: a monitor pending bit, a legacy interrupt-page bit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SharedWord {
    word: NonNull<u32>,
    bit: u32,
}

// SAFETY: the word is only accessed atomically.
unsafe impl Send for SharedWord {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedWord {}

impl SharedPages {
    /// The word at `offset` (4-aligned, in bounds) with `bit` to set.
    ///
    /// Crate contract: used only while these pages are allocated; the bus's monitor pages,
    /// the only ones this is called on, are freed only when the bus itself is dropped, which
    /// outlives every channel borrowing it.
    pub(crate) fn word(&self, offset: usize, bit: u32) -> Option<SharedWord> {
        if !offset.is_multiple_of(4) || self.check(offset, 4).is_err() {
            return None;
        }
        let word = NonNull::new(self.base.as_ptr().wrapping_add(offset).cast::<u32>())?;
        Some(SharedWord { word, bit })
    }
}

impl SharedWord {
    /// Sets the bit (atomic OR, full barrier).
    pub(crate) fn set(&self) {
        // SAFETY: 4-aligned, inside bus-owned pages that outlive this value (see
        // `SharedPages::word`); shared with the host, so only accessed atomically.
        let word = unsafe { AtomicU32::from_ptr(self.word.as_ptr()) };
        word.fetch_or(self.bit, Ordering::SeqCst);
    }
}

impl Dma<'_> {
    /// Describes `len` bytes of caller memory at `addr` for a GPA-direct request.
    ///
    /// # Safety
    ///
    /// The host reads or writes this memory directly, at any time from when a request naming
    /// it is sent until its completion is received — or, if the request fails without a
    /// completion (rescind, unload, corruption), until the channel's `close` returns
    /// [`crate::Released::Freed`], and forever if it returns [`crate::Released::Leaked`]. For that whole
    /// time the caller guarantees the memory is host-visible, stays allocated and unmoved,
    /// and that nothing in Rust holds a reference (`&`/`&mut`) over bytes the host may write.
    pub unsafe fn from_raw(addr: NonNull<u8>, len: usize) -> Result<Dma<'static>, OutOfBounds> {
        let bad = OutOfBounds {
            offset: 0,
            len,
            size: u32::MAX as usize,
        };
        let len = u32::try_from(len).ok().filter(|l| *l > 0).ok_or(bad)?;
        Ok(Dma {
            addr,
            len,
            users: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{copy_in, copy_out};

    /// Every start alignment and length around the word and chunk sizes: the bytes arrive
    /// intact and nothing outside the range is touched.
    #[test]
    fn volatile_copies_move_exactly_the_range_at_every_alignment() {
        let mut backing = [0u64; 32];
        for start in 0..24usize {
            for len in 0..140usize {
                backing.fill(0);
                let base = backing.as_mut_ptr().cast::<u8>();
                let mut data = [0u8; 140];
                for (i, d) in data.iter_mut().enumerate() {
                    *d = (i as u8).wrapping_mul(7) | 1;
                }
                let data = &data[..len];
                // SAFETY: start + len < 256 = the backing's size; nothing else uses it.
                unsafe { copy_out(base.add(start), data) };
                // SAFETY: as above; read back through the same pointer.
                let all = unsafe { core::slice::from_raw_parts(base, 256) };
                assert!(all[..start].iter().all(|&b| b == 0), "{start}/{len}");
                assert_eq!(&all[start..start + len], data, "{start}/{len}");
                assert!(all[start + len..].iter().all(|&b| b == 0), "{start}/{len}");
                let mut back = [0u8; 140];
                // SAFETY: as above.
                unsafe { copy_in(base.add(start), &mut back[..len]) };
                assert_eq!(&back[..len], data, "{start}/{len}");
            }
        }
    }
}
