//! Physical memory: a page allocator over the boot memory map, and the `Hal` the VMBus drivers
//! get their host-visible memory from.
//!
//! Identity mapping: the boot code maps the first 4 GiB virtual = physical, so a page's
//! virtual address is its guest-physical address and `virt_to_phys` is the identity. The
//! allocator only hands out available RAM below 4 GiB (what is mapped); RAM above is left
//! unused, which on a VM with a few GiB is most of what lies above the 32-bit MMIO gap.
//!
//! One bit per 4 KiB page below 4 GiB (128 KiB of `.bss`), first fit for runs of pages: the
//! drivers allocate a few large buffers at open time (netvsc's 16 MiB receive buffer, rings,
//! bounce buffers) and free them when a channel closes.

use core::ptr::NonNull;

use spin::Mutex;
use vmbus_guest::{HV_PAGE_SIZE, Hal, HalError, PhysAddr};
use winhv::HvPage;

use crate::multiboot2::{BootInfo, Region};

/// Addresses the boot page tables map (identity).
pub const MAPPED_BYTES: u64 = 4 << 30;
const PAGES: usize = (MAPPED_BYTES / HV_PAGE_SIZE as u64) as usize;
const WORDS: usize = PAGES / 64;
/// Below 1 MiB: firmware, BIOS data, the boot loader's leftovers. Never handed out.
const LOW_MEMORY: u64 = 1 << 20;

/// Free pages: bit set = free.
struct Frames {
    free: [u64; WORDS],
    free_pages: usize,
    total_pages: usize,
}

static FRAMES: Mutex<Frames> = Mutex::new(Frames {
    free: [0; WORDS],
    free_pages: 0,
    total_pages: 0,
});

unsafe extern "C" {
    /// First byte of the kernel image (linker.ld).
    static __kernel_start: u8;
    /// First byte after the kernel image, `.bss` included (linker.ld).
    static __kernel_end: u8;
}

impl Frames {
    fn is_free(&self, page: usize) -> bool {
        self.free[page / 64] & (1 << (page % 64)) != 0
    }

    fn set(&mut self, page: usize, free: bool) {
        let bit = 1 << (page % 64);
        let word = &mut self.free[page / 64];
        if free && *word & bit == 0 {
            *word |= bit;
            self.free_pages += 1;
        } else if !free && *word & bit != 0 {
            *word &= !bit;
            self.free_pages -= 1;
        }
    }

    /// Marks `[start, end)` (bytes, clipped to what is mapped) free or used.
    fn mark(&mut self, start: u64, end: u64, free: bool) {
        let first = if free {
            start.div_ceil(4096)
        } else {
            start / 4096
        };
        let last = if free { end / 4096 } else { end.div_ceil(4096) };
        for page in first..last.min(PAGES as u64) {
            self.set(page as usize, free);
        }
    }

    /// First run of `count` free pages.
    fn find_run(&self, count: usize) -> Option<usize> {
        let mut run_start = 0;
        let mut run = 0;
        let mut page = 0;
        while page < PAGES {
            if page % 64 == 0 && self.free[page / 64] == 0 {
                run = 0;
                page += 64;
                continue;
            }
            if self.is_free(page) {
                if run == 0 {
                    run_start = page;
                }
                run += 1;
                if run == count {
                    return Some(run_start);
                }
            } else {
                run = 0;
            }
            page += 1;
        }
        None
    }
}

/// Builds the free map from the memory map: available RAM from 1 MiB to 4 GiB, minus the
/// kernel image and the boot information. Returns (free pages, total available pages).
pub fn init(boot: &BootInfo) -> (usize, usize) {
    let mut frames = FRAMES.lock();
    for r in boot.regions.iter().filter(|r| r.kind == Region::AVAILABLE) {
        let start = r.base.max(LOW_MEMORY);
        let end = r.base.saturating_add(r.len).min(MAPPED_BYTES);
        if start < end {
            frames.mark(start, end, true);
        }
        frames.total_pages += (r.len / 4096) as usize;
    }
    let kernel_start = (&raw const __kernel_start) as u64;
    let kernel_end = (&raw const __kernel_end) as u64;
    frames.mark(kernel_start, kernel_end, false);
    let (info, info_len) = boot.location;
    frames.mark(info, info + info_len, false);
    (frames.free_pages, frames.total_pages)
}

/// Pages free now.
pub fn free_pages() -> usize {
    FRAMES.lock().free_pages
}

/// `count` zeroed, contiguous pages (physical = virtual).
fn alloc(count: usize) -> Option<NonNull<u8>> {
    if count == 0 {
        return None;
    }
    let first = {
        let mut frames = FRAMES.lock();
        let first = frames.find_run(count)?;
        for page in first..first + count {
            frames.set(page, false);
        }
        first
    };
    let addr = (first * HV_PAGE_SIZE) as *mut u8;
    // SAFETY: the pages were free RAM below 4 GiB (identity mapped) and are now this caller's
    // alone.
    unsafe { core::ptr::write_bytes(addr, 0, count * HV_PAGE_SIZE) };
    NonNull::new(addr)
}

/// One page for the hypervisor (hypercall, SynIC, TSC pages): winhv's `PageSource`.
pub fn hv_page() -> Option<HvPage> {
    let page = alloc(1)?;
    // SAFETY: a fresh page of RAM, mapped for good, used by nothing else; its GPA is its
    // address (identity mapping).
    Some(unsafe { HvPage::new(page, page.as_ptr() as u64) })
}

/// The drivers' platform: pages from the allocator, identity translation, and MMIO that the
/// boot page tables already map.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelHal;

// This VM is not confidential, so all its memory is host-visible.
// SAFETY: `alloc_pages` returns zeroed, aligned, contiguous RAM owned by the caller until freed;
// identity mapping makes `virt_to_phys` exact below 4 GiB (image, stacks, allocated pages);
// `map_mmio` returns the identity mapping of exactly the requested range.
unsafe impl Hal for KernelHal {
    fn alloc_pages(&self, pages: usize) -> Result<NonNull<u8>, HalError> {
        if pages == 0 {
            return Err(HalError::InvalidRequest);
        }
        alloc(pages).ok_or(HalError::OutOfMemory)
    }

    unsafe fn free_pages(&self, vaddr: NonNull<u8>, pages: usize) {
        let start = vaddr.as_ptr() as u64;
        FRAMES
            .lock()
            .mark(start, start + (pages * HV_PAGE_SIZE) as u64, true);
    }

    fn virt_to_phys(&self, vaddr: NonNull<u8>) -> Result<PhysAddr, HalError> {
        let addr = vaddr.as_ptr() as u64;
        if addr < MAPPED_BYTES {
            Ok(addr)
        } else {
            Err(HalError::NotTranslatable)
        }
    }

    unsafe fn map_mmio(&self, gpa: PhysAddr, size: usize) -> Result<NonNull<u8>, HalError> {
        let end = gpa
            .checked_add(size as u64)
            .ok_or(HalError::InvalidRequest)?;
        if size == 0 || end > MAPPED_BYTES {
            return Err(HalError::NotTranslatable);
        }
        NonNull::new(gpa as usize as *mut u8).ok_or(HalError::InvalidRequest)
    }
}
