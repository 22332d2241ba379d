//! Guest-physical memory: the RAM block and the MMIO (VRAM) window, with byte and atomic
//! access by GPA. Nothing here knows about Hyper-V; it only maps GPAs to host pointers.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

/// Size of a Hyper-V page.
pub const PAGE_SIZE: usize = 4096;

/// One page-aligned block of host memory standing for a guest-physical range.
pub(crate) struct Region {
    ptr: NonNull<u8>,
    len: usize,
    base: u64,
    layout: Layout,
}

impl Region {
    /// Allocates `len` zeroed bytes (rounded up to whole pages, at least one) placed at `base`.
    fn new(base: u64, len: usize) -> Self {
        let len = len.max(PAGE_SIZE).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let layout = Layout::from_size_align(len, PAGE_SIZE).expect("guest memory layout");
        // SAFETY: `layout` has a non-zero size (at least one page).
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self {
            ptr,
            len,
            base,
            layout,
        }
    }

    /// Host pointer of `[gpa, gpa+len)` if the whole range lies inside this region.
    fn ptr(&self, gpa: u64, len: usize) -> Option<NonNull<u8>> {
        let offset = gpa.checked_sub(self.base)?;
        let end = offset.checked_add(len as u64)?;
        if end > self.len as u64 {
            return None;
        }
        // SAFETY: `offset + len <= self.len`, so the result stays inside the allocation.
        Some(unsafe { self.ptr.add(offset as usize) })
    }

    /// GPA of a host pointer into this region.
    fn gpa_of(&self, ptr: *const u8) -> Option<u64> {
        let start = self.ptr.as_ptr() as usize;
        let p = ptr as usize;
        (p >= start && p < start + self.len).then(|| self.base + (p - start) as u64)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated in `new` with exactly `layout` and is freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// The guest's physical memory: RAM plus one MMIO window.
pub(crate) struct GuestMemory {
    ram: Region,
    mmio: Region,
}

// SAFETY: the regions are plain heap blocks; all accesses go through atomics or are done by the
// guest through its own pointers, exactly like shared memory between a guest and a hypervisor.
unsafe impl Send for GuestMemory {}
// SAFETY: as above; no method hands out references that alias non-atomically.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// Allocates RAM at `ram_base` and the MMIO window at `mmio_base`.
    pub(crate) fn new(ram_base: u64, ram_len: usize, mmio_base: u64, mmio_len: usize) -> Self {
        Self {
            ram: Region::new(ram_base, ram_len),
            mmio: Region::new(mmio_base, mmio_len),
        }
    }

    /// First GPA of RAM.
    pub(crate) fn ram_base(&self) -> u64 {
        self.ram.base
    }

    /// RAM size in bytes (whole pages).
    pub(crate) fn ram_len(&self) -> usize {
        self.ram.len
    }

    /// Whether `[gpa, gpa+len)` is inside RAM.
    pub(crate) fn in_ram(&self, gpa: u64, len: usize) -> bool {
        self.ram.ptr(gpa, len).is_some()
    }

    /// Host pointer of a RAM range.
    pub(crate) fn ram_ptr(&self, gpa: u64, len: usize) -> Option<NonNull<u8>> {
        self.ram.ptr(gpa, len)
    }

    /// Host pointer of an MMIO range.
    pub(crate) fn mmio_ptr(&self, gpa: u64, len: usize) -> Option<NonNull<u8>> {
        self.mmio.ptr(gpa, len)
    }

    /// (first GPA, bytes) of the MMIO window.
    pub(crate) fn mmio_window(&self) -> (u64, usize) {
        (self.mmio.base, self.mmio.len)
    }

    /// Reads MMIO bytes (one relaxed atomic load per byte, as the guest writes them with
    /// volatile stores); `None` outside the window.
    pub(crate) fn read_mmio(&self, gpa: u64, len: usize) -> Option<Vec<u8>> {
        let p = self.mmio.ptr(gpa, len)?;
        Some(
            (0..len)
                .map(|i| {
                    // SAFETY: `i < len` and `[gpa, gpa+len)` is inside the live MMIO
                    // allocation (checked above); host-side accesses are atomic, and AtomicU8
                    // has the alignment of u8.
                    unsafe { AtomicU8::from_ptr(p.as_ptr().add(i)) }.load(Ordering::Relaxed)
                })
                .collect(),
        )
    }

    /// GPA of a host pointer into RAM.
    pub(crate) fn ram_gpa_of(&self, ptr: *const u8) -> Option<u64> {
        self.ram.gpa_of(ptr)
    }

    /// Host pointer of RAM page number `index` (0-based from the RAM base).
    pub(crate) fn page_ptr(&self, index: usize) -> NonNull<u8> {
        self.ram
            .ptr(self.ram.base + (index * PAGE_SIZE) as u64, PAGE_SIZE)
            .expect("page index inside RAM")
    }

    /// Number of RAM pages.
    pub(crate) fn ram_pages(&self) -> usize {
        self.ram.len / PAGE_SIZE
    }

    fn byte(&self, gpa: u64) -> &AtomicU8 {
        let p = self.ram.ptr(gpa, 1).expect("caller checked the GPA range");
        // SAFETY: the pointer is inside the live RAM allocation, which outlives `self`'s borrow;
        // every host-side access is atomic, and AtomicU8 has the alignment of u8.
        unsafe { AtomicU8::from_ptr(p.as_ptr()) }
    }

    /// Reads RAM bytes (one relaxed atomic load per byte); `None` outside RAM.
    pub(crate) fn read(&self, gpa: u64, len: usize) -> Option<Vec<u8>> {
        self.ram.ptr(gpa, len)?;
        Some(
            (0..len as u64)
                .map(|i| self.byte(gpa + i).load(Ordering::Relaxed))
                .collect(),
        )
    }

    /// Whether RAM at `gpa` holds `bytes` (read like [`Self::read`], without allocating);
    /// `false` outside RAM.
    pub(crate) fn holds(&self, gpa: u64, bytes: &[u8]) -> bool {
        self.ram.ptr(gpa, bytes.len()).is_some()
            && bytes
                .iter()
                .enumerate()
                .all(|(i, &b)| self.byte(gpa + i as u64).load(Ordering::Relaxed) == b)
    }

    /// Writes RAM bytes (one relaxed atomic store per byte); `false` outside RAM.
    pub(crate) fn write(&self, gpa: u64, data: &[u8]) -> bool {
        if self.ram.ptr(gpa, data.len()).is_none() {
            return false;
        }
        for (i, b) in data.iter().enumerate() {
            self.byte(gpa + i as u64).store(*b, Ordering::Relaxed);
        }
        true
    }

    /// Atomic view of a naturally aligned u8 in RAM.
    pub(crate) fn atomic_u8(&self, gpa: u64) -> &AtomicU8 {
        self.byte(gpa)
    }

    /// Atomic view of a 4-aligned u32 in RAM.
    pub(crate) fn atomic_u32(&self, gpa: u64) -> &AtomicU32 {
        assert_eq!(gpa % 4, 0, "unaligned u32 access");
        let p = self.ram.ptr(gpa, 4).expect("caller checked the GPA range");
        // SAFETY: in-bounds, 4-aligned (RAM is page aligned), and only accessed atomically
        // from the host side.
        unsafe { AtomicU32::from_ptr(p.as_ptr().cast()) }
    }

    /// Atomic view of an 8-aligned u64 in RAM.
    pub(crate) fn atomic_u64(&self, gpa: u64) -> &AtomicU64 {
        assert_eq!(gpa % 8, 0, "unaligned u64 access");
        let p = self.ram.ptr(gpa, 8).expect("caller checked the GPA range");
        // SAFETY: in-bounds, 8-aligned (RAM is page aligned), and only accessed atomically
        // from the host side.
        unsafe { AtomicU64::from_ptr(p.as_ptr().cast()) }
    }

    /// Zeroes `count` RAM pages from page index `first`.
    pub(crate) fn zero_pages(&self, first: usize, count: usize) {
        self.fill_pages(first, count, 0);
    }

    /// Fills `count` RAM pages from page index `first` with `byte`.
    pub(crate) fn fill_pages(&self, first: usize, count: usize, byte: u8) {
        let base = self.ram.base + (first * PAGE_SIZE) as u64;
        let word = u64::from_ne_bytes([byte; 8]);
        for i in 0..(count * PAGE_SIZE / 8) as u64 {
            self.atomic_u64(base + 8 * i).store(word, Ordering::Relaxed);
        }
    }
}
