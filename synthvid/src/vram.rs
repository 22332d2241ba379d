//! The one module of this crate that touches memory the host shares: the VRAM mapping.
//!
//! VRAM is MMIO-like shared memory (devices §4.5): the host reads it whenever it likes, so it
//! is never a Rust reference. Every access is a bounds-checked, aligned volatile access through
//! the raw pointer [`Hal::map_mmio`] returned.

use core::ptr::NonNull;

use vmbus_guest::{Hal, HalError, PhysAddr};

/// A range of guest-physical MMIO space the kernel gives the driver for the VRAM: on a
/// generation-2 VM a 1 MiB-aligned range from the VMBus device's `_CRS` windows (the firmware
/// framebuffer may be reused), on generation 1 the legacy VGA BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VramWindow {
    gpa: PhysAddr,
    len: usize,
}

impl VramWindow {
    /// Names the range `[gpa, gpa + len)`.
    ///
    /// # Safety
    ///
    /// The range is MMIO space assigned to this driver for the synthetic video VRAM: not RAM,
    /// not used by anything else while the driver (or the host's mapping of it) lives, and
    /// mappable with [`Hal::map_mmio`].
    pub const unsafe fn new(gpa: PhysAddr, len: usize) -> Self {
        Self { gpa, len }
    }

    /// First GPA.
    pub fn gpa(&self) -> PhysAddr {
        self.gpa
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The mapped VRAM: `len` bytes at a guest-physical address the host was told about.
#[derive(Debug)]
pub struct Vram {
    ptr: NonNull<u8>,
    len: usize,
    gpa: PhysAddr,
}

// SAFETY: `Vram` owns its mapping exclusively (the `VramWindow` contract); moving it to another
// thread moves that ownership. It is not `Sync`: writes take `&mut self`.
unsafe impl Send for Vram {}

impl Vram {
    /// Maps the first `len` bytes of `window`.
    pub(crate) fn map<H: Hal>(hal: &H, window: VramWindow, len: usize) -> Result<Self, HalError> {
        if len == 0 || len > window.len || !len.is_multiple_of(4) {
            return Err(HalError::InvalidRequest);
        }
        // SAFETY: `window` carries the kernel's promise that the range is MMIO assigned to
        // this driver (`VramWindow::new`), and `len` lies inside it.
        let ptr = unsafe { hal.map_mmio(window.gpa, len) }?;
        if !(ptr.as_ptr() as usize).is_multiple_of(4) {
            return Err(HalError::InvalidRequest);
        }
        Ok(Self {
            ptr,
            len,
            gpa: window.gpa,
        })
    }

    /// Guest-physical address of the first byte (what VRAM_LOCATION names).
    pub fn gpa(&self) -> PhysAddr {
        self.gpa
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never, once mapped).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: usize, size: usize) -> bool {
        offset.is_multiple_of(size) && offset.checked_add(size).is_some_and(|e| e <= self.len)
    }

    /// Writes a 32-bit pixel at byte `offset` (4-aligned); `false` if out of range.
    pub fn write_u32(&mut self, offset: usize, value: u32) -> bool {
        if !self.check(offset, 4) {
            return false;
        }
        // SAFETY: `offset + 4 <= len`, so the access is inside the mapping; the base is
        // 4-aligned (checked in `map`) and `offset` is a multiple of 4.
        unsafe {
            self.ptr
                .as_ptr()
                .add(offset)
                .cast::<u32>()
                .write_volatile(value)
        };
        true
    }

    /// Reads the 32-bit word at byte `offset` (4-aligned); `None` if out of range.
    pub fn read_u32(&self, offset: usize) -> Option<u32> {
        if !self.check(offset, 4) {
            return None;
        }
        // SAFETY: in range and aligned as in `write_u32`.
        Some(unsafe { self.ptr.as_ptr().add(offset).cast::<u32>().read_volatile() })
    }

    /// Writes a 16-bit pixel at byte `offset` (2-aligned); `false` if out of range.
    pub fn write_u16(&mut self, offset: usize, value: u16) -> bool {
        if !self.check(offset, 2) {
            return false;
        }
        // SAFETY: `offset + 2 <= len`, inside the mapping; base 4-aligned, `offset` even.
        unsafe {
            self.ptr
                .as_ptr()
                .add(offset)
                .cast::<u16>()
                .write_volatile(value)
        };
        true
    }

    /// Reads the 16-bit word at byte `offset` (2-aligned); `None` if out of range.
    pub fn read_u16(&self, offset: usize) -> Option<u16> {
        if !self.check(offset, 2) {
            return None;
        }
        // SAFETY: in range and aligned as in `write_u16`.
        Some(unsafe { self.ptr.as_ptr().add(offset).cast::<u16>().read_volatile() })
    }
}
