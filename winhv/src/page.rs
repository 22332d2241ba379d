//! Guest pages handed to the hypervisor by address.

use core::ptr::NonNull;

/// Size of a Hyper-V page: always 4 KiB.
pub const HV_PAGE_SIZE: usize = 4096;

/// A 4 KiB page of guest memory known by both its virtual address and its guest-physical
/// address, owned by whoever holds this value.
///
/// Used for the hypercall parameter pages, the SynIC message and event-flags pages, the reference
/// TSC page and crash message buffers.
#[derive(Debug)]
pub struct HvPage {
    virt: NonNull<u8>,
    gpa: u64,
}

// SAFETY: an HvPage is an exclusive handle to a page; moving it between threads moves ownership.
unsafe impl Send for HvPage {}

impl HvPage {
    /// Wraps a page.
    ///
    /// # Safety
    ///
    /// `virt` is the 4 KiB-aligned virtual address of 4096 bytes of memory that stay mapped and
    /// are used by nothing else while this value (and anything built from it) exists, and `gpa`
    /// is the guest-physical address of the same bytes.
    ///
    /// A page handed to the hypervisor ([`crate::Synic`], [`crate::ReferenceTscPage`]) stays
    /// the hypervisor's until the owner's `disable` gives it back: if that owner is dropped
    /// instead, the page must be treated as leaked (never reused), because the hypervisor still
    /// overlays or writes it.
    pub const unsafe fn new(virt: NonNull<u8>, gpa: u64) -> Self {
        Self { virt, gpa }
    }

    /// The guest-physical address.
    pub const fn gpa(&self) -> u64 {
        self.gpa
    }

    /// The guest page number (GPA / 4096).
    pub const fn gpn(&self) -> u64 {
        self.gpa >> 12
    }

    /// The virtual address.
    pub const fn as_ptr(&self) -> *mut u8 {
        self.virt.as_ptr()
    }

    /// Whether both addresses are 4 KiB aligned.
    pub fn is_aligned(&self) -> bool {
        self.gpa.is_multiple_of(HV_PAGE_SIZE as u64)
            && (self.virt.as_ptr() as usize).is_multiple_of(HV_PAGE_SIZE)
    }

    /// Copies `bytes` into the page at `offset`. Returns `false` (copying nothing) if the range
    /// does not fit in the page.
    pub fn write_at(&mut self, offset: usize, bytes: &[u8]) -> bool {
        if offset
            .checked_add(bytes.len())
            .is_none_or(|end| end > HV_PAGE_SIZE)
        {
            return false;
        }
        // SAFETY: the range is inside the page, which this value owns exclusively (see `new`).
        unsafe {
            core::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.virt.as_ptr().add(offset),
                bytes.len(),
            )
        };
        true
    }

    /// Copies bytes out of the page at `offset` into `out`. Returns `false` (copying nothing) if
    /// the range does not fit in the page.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> bool {
        if offset
            .checked_add(out.len())
            .is_none_or(|end| end > HV_PAGE_SIZE)
        {
            return false;
        }
        // SAFETY: the range is inside the page, which this value owns exclusively (see `new`).
        unsafe {
            core::ptr::copy_nonoverlapping(
                self.virt.as_ptr().add(offset),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        true
    }

    /// Fills the page with zeros.
    pub fn zero(&mut self) {
        // SAFETY: the whole page is owned exclusively by this value (see `new`).
        unsafe { core::ptr::write_bytes(self.virt.as_ptr(), 0, HV_PAGE_SIZE) };
    }
}
