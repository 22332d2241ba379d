//! Host-visible memory without Rust references over it: [`HostBuffer`] (bus-allocated pages,
//! optionally described to the host by a GPADL, read and written only by bounds-checked
//! copies at host-given offsets) and [`Dma`] (memory a GPA-direct packet names).

#![forbid(unsafe_code)]

use crate::bus::{Created, MAX_OPEN_CHANNELS, Released, SlotRef, Vmbus};
use crate::error::VmbusError;
use crate::hal::{HV_PAGE_SIZE, Hal};
use crate::shared::{OutOfBounds, SharedPages};
use crate::transport::Transport;
use crate::wait::Wait;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Which channels sent GPA-direct requests naming a buffer: a bit per channel slot and the
/// slot's generation at the time.
#[derive(Debug)]
pub struct DmaUsers {
    slots: AtomicU64,
    generations: [AtomicU32; MAX_OPEN_CHANNELS],
}

impl DmaUsers {
    const fn new() -> Self {
        Self {
            slots: AtomicU64::new(0),
            generations: [const { AtomicU32::new(0) }; MAX_OPEN_CHANNELS],
        }
    }

    /// A channel holding `slot` is about to send a request naming the buffer.
    pub(crate) fn record(&self, slot: SlotRef) {
        let i = usize::from(slot.index) % MAX_OPEN_CHANNELS;
        self.generations[i].store(slot.generation, Ordering::Release);
        self.slots.fetch_or(1 << i, Ordering::AcqRel);
    }

    /// Whether no channel's outstanding request may still name the buffer.
    fn quiet<T: Transport, H: Hal>(&self, bus: &Vmbus<T, H>) -> bool {
        let mut bits = self.slots.load(Ordering::Acquire);
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let r = SlotRef {
                index: i as u16,
                generation: self.generations[i].load(Ordering::Acquire),
            };
            if !bus.slots.dma_quiet(r) {
                return false;
            }
        }
        true
    }
}

/// Memory a GPA-direct packet names: a virtually contiguous byte range, translated page by
/// page through [`Hal::virt_to_phys`] when the packet is sent.
///
/// Made safely from a [`HostBuffer`] ([`HostBuffer::dma`]): the buffer then refuses to free
/// its pages while a request naming it may be in flight. Made from any other memory only with
/// [`Dma::from_raw`], whose caller keeps that promise itself.
#[derive(Debug, Clone, Copy)]
pub struct Dma<'a> {
    pub(crate) addr: NonNull<u8>,
    pub(crate) len: u32,
    pub(crate) users: Option<&'a DmaUsers>,
}

impl<'a> Dma<'a> {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Always false: a descriptor names at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Offset of the first byte in its 4 KiB page.
    pub fn page_offset(&self) -> u32 {
        (self.addr.as_ptr() as usize % HV_PAGE_SIZE) as u32
    }

    /// Pages the range spans.
    pub fn page_count(&self) -> usize {
        (self.page_offset() as usize + self.len as usize).div_ceil(HV_PAGE_SIZE)
    }

    /// The guest-physical frame number of page `i` of the range.
    pub(crate) fn pfn(&self, hal: &impl Hal, i: usize) -> Result<u64, crate::hal::HalError> {
        let first = self.addr.as_ptr() as usize - self.page_offset() as usize;
        let page = first
            .checked_add(i * HV_PAGE_SIZE)
            .and_then(|a| NonNull::new(a as *mut u8))
            .ok_or(crate::hal::HalError::InvalidRequest)?;
        Ok(hal.virt_to_phys(page)? >> 12)
    }

    /// The buffer's user record, when it comes from a [`HostBuffer`].
    pub(crate) fn users(&self) -> Option<&'a DmaUsers> {
        self.users
    }
}

/// Host-visible pages allocated by the bus: a device buffer the host reads and writes (a
/// netvsc receive or send buffer behind a GPADL, a storvsc bounce buffer named by GPA-direct
/// requests). Access is only by bounds-checked copies; no Rust reference ever covers the
/// bytes. Release it with [`HostBuffer::release`]; dropping it leaks the pages.
pub struct HostBuffer<'b, T: Transport, H: Hal> {
    bus: &'b Vmbus<T, H>,
    pages: Option<SharedPages>,
    /// GPADL handle and relid, when the host maps the buffer through a GPADL.
    gpadl: Option<(u32, u32)>,
    epoch: u32,
    users: DmaUsers,
}

impl<T: Transport, H: Hal> core::fmt::Debug for HostBuffer<'_, T, H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostBuffer")
            .field("bytes", &self.len())
            .field("gpadl", &self.gpadl)
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl<'b, T: Transport, H: Hal> HostBuffer<'b, T, H> {
    /// Allocates `pages` zeroed pages for GPA-direct use (no GPADL). Thread context only.
    pub fn new(bus: &'b Vmbus<T, H>, pages: usize) -> Result<Self, VmbusError> {
        Ok(Self {
            bus,
            pages: Some(SharedPages::alloc(bus.hal(), pages)?),
            gpadl: None,
            epoch: bus.epoch(),
            users: DmaUsers::new(),
        })
    }

    /// Allocates `pages` zeroed pages and describes them to the host by a GPADL for channel
    /// `relid`, waiting (bounded) for GPADL_CREATED. On failure the pages are freed if the
    /// host never mapped them and leaked otherwise. Thread context only.
    pub fn with_gpadl(
        bus: &'b Vmbus<T, H>,
        relid: u32,
        pages: usize,
        waiter: &mut impl Wait,
    ) -> Result<Self, VmbusError> {
        let shared = SharedPages::alloc(bus.hal(), pages)?;
        let epoch = bus.epoch();
        match bus.create_gpadl(relid, &shared, waiter) {
            Created::Yes(handle) => Ok(Self {
                bus,
                pages: Some(shared),
                gpadl: Some((handle, relid)),
                epoch,
                users: DmaUsers::new(),
            }),
            Created::No(e) => {
                shared.free(bus.hal());
                Err(e)
            }
            Created::Unknown(e) => {
                shared.leak();
                Err(e)
            }
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.pages.as_ref().map_or(0, SharedPages::len)
    }

    /// Whether the buffer has no bytes (never, while it is held).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The GPADL handle the device protocol refers to the buffer by, if it has one.
    pub fn gpadl_handle(&self) -> Option<u32> {
        self.gpadl.map(|(h, _)| h)
    }

    /// Copies `buf.len()` bytes at `offset` (host-given offsets welcome: checked) out of the
    /// buffer. Interrupt-safe.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), OutOfBounds> {
        match &self.pages {
            Some(p) => p.read_at(offset, buf),
            None => Err(OutOfBounds {
                offset,
                len: buf.len(),
                size: 0,
            }),
        }
    }

    /// Copies `data` into the buffer at `offset` (checked). Interrupt-safe.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), OutOfBounds> {
        match &self.pages {
            Some(p) => p.write_at(offset, data),
            None => Err(OutOfBounds {
                offset,
                len: data.len(),
                size: 0,
            }),
        }
    }

    /// A GPA-direct descriptor of `len` bytes at `offset`. Safe: the buffer keeps its pages
    /// until no request naming them can be in flight.
    pub fn dma(&self, offset: usize, len: usize) -> Result<Dma<'_>, OutOfBounds> {
        let bad = OutOfBounds {
            offset,
            len,
            size: self.len(),
        };
        let p = self.pages.as_ref().ok_or(bad)?;
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > p.len()) {
            return Err(bad);
        }
        Ok(Dma {
            addr: p.addr_of(offset).ok_or(bad)?,
            len: u32::try_from(len).map_err(|_| bad)?,
            users: Some(&self.users),
        })
    }

    /// Gives the pages back: tears the GPADL down first (if any) and frees the pages only
    /// when the host confirmed (for a GPADL of an older connection epoch: only if that epoch
    /// ended with UNLOAD_RESPONSE), and no GPA-direct request naming it may still be in flight (every
    /// channel that used it completed those requests or was closed with the host's
    /// confirmation). Otherwise the pages are leaked. Thread context only.
    pub fn release(mut self, waiter: &mut impl Wait) -> Released {
        let Some(pages) = self.pages.take() else {
            return Released::Freed;
        };
        let mut released = match self.gpadl {
            Some((handle, _)) => self.bus.teardown_gpadl(handle, self.epoch, waiter),
            // Never described to the host by a GPADL: only GPA-direct requests name it.
            None => Released::Freed,
        };
        if !self.users.quiet(self.bus) {
            log::warn!("host buffer released with GPA-direct requests possibly in flight");
            released = Released::Leaked;
        }
        match released {
            Released::Freed => pages.free(self.bus.hal()),
            Released::Leaked => pages.leak(),
        }
        released
    }
}

impl<T: Transport, H: Hal> Drop for HostBuffer<'_, T, H> {
    fn drop(&mut self) {
        if let Some(p) = self.pages.take() {
            p.leak();
        }
    }
}
