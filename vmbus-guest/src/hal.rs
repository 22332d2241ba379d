//! The platform boundary: memory the host can see, and address translation.

use core::fmt;
use core::ptr::NonNull;

/// Size of a Hyper-V page. Always 4 KiB, whatever the guest's own page size.
pub const HV_PAGE_SIZE: usize = 4096;

/// A guest-physical address.
pub type PhysAddr = u64;

/// Why the platform could not satisfy a [`Hal`] request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalError {
    /// No memory is left for the requested number of pages.
    OutOfMemory,
    /// The address is not memory the platform can translate or share with the host.
    NotTranslatable,
    /// The request itself is malformed (zero pages, an unaligned or empty range).
    InvalidRequest,
}

impl fmt::Display for HalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OutOfMemory => "out of host-visible memory",
            Self::NotTranslatable => "address is not translatable to a host-visible GPA",
            Self::InvalidRequest => "malformed memory request",
        })
    }
}

impl core::error::Error for HalError {}

/// Memory and address translation the operating system provides to the drivers.
///
/// Shaped after `virtio_drivers::Hal`, but with `&self` methods so that a kernel can keep more
/// than one configuration, and with page allocations that need not be physically contiguous
/// (VMBus describes buffers to the host page by page through GPADLs and GPA ranges).
///
/// # Safety
///
/// Implementations promise that:
/// - [`Hal::alloc_pages`] returns zeroed, 4 KiB-aligned, virtually contiguous memory of the
///   requested size, used by nothing else until it is passed back to [`Hal::free_pages`], and
///   visible to the host (shared, on confidential VMs);
/// - [`Hal::virt_to_phys`] returns the true guest-physical address of the byte at the given
///   virtual address, so that the host, which writes to that GPA, writes to that byte;
/// - [`Hal::map_mmio`] returns a mapping of exactly the requested guest-physical range.
pub unsafe trait Hal {
    /// Allocates `pages` zeroed, host-visible 4 KiB pages, virtually contiguous and 4 KiB
    /// aligned, and returns their virtual address.
    fn alloc_pages(&self, pages: usize) -> Result<NonNull<u8>, HalError>;

    /// Returns pages obtained from [`Hal::alloc_pages`].
    ///
    /// # Safety
    ///
    /// `vaddr` and `pages` are exactly those of one earlier allocation, the host no longer
    /// references the memory (GPADL torn down, channel closed), and nothing uses it afterwards.
    unsafe fn free_pages(&self, vaddr: NonNull<u8>, pages: usize);

    /// Translates the virtual address of any byte the guest may hand to the host (pages from
    /// [`Hal::alloc_pages`] or a caller's I/O buffer) to its guest-physical address.
    ///
    /// Returns [`HalError::NotTranslatable`] for memory the host must not or cannot see.
    fn virt_to_phys(&self, vaddr: NonNull<u8>) -> Result<PhysAddr, HalError>;

    /// Maps `size` bytes of guest-physical MMIO space starting at `gpa` (for example the
    /// synthetic video VRAM) and returns the virtual address of the mapping.
    ///
    /// # Safety
    ///
    /// The caller guarantees the range is device memory assigned to it (for example reported by
    /// the host for this purpose) and not RAM in use by anything else.
    unsafe fn map_mmio(&self, gpa: PhysAddr, size: usize) -> Result<NonNull<u8>, HalError>;
}
