//! Host access to guest RAM: the one place the mock VMBus host touches shared memory.
//!
//! Everything the guest may change concurrently (ring control fields, monitor pages, ring data,
//! GPA-direct buffers) is read and written here with atomic or volatile accesses through
//! [`MockHypervisor::gpa_to_ptr`], which bounds-checks every range against guest RAM.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::hv::MockHypervisor;

/// A handle on guest RAM as the host sees it.
#[derive(Clone)]
pub(crate) struct GuestRam {
    hv: MockHypervisor,
}

impl GuestRam {
    /// Wraps the partition's memory.
    pub(crate) fn new(hv: MockHypervisor) -> Self {
        Self { hv }
    }

    /// Whether `[gpa, gpa + len)` lies inside guest RAM.
    pub(crate) fn contains(&self, gpa: u64, len: usize) -> bool {
        self.hv.gpa_to_ptr(gpa, len.max(1)).is_some()
    }

    /// Whether the 4 KiB page `pfn` lies inside guest RAM.
    pub(crate) fn contains_pfn(&self, pfn: u64) -> bool {
        pfn.checked_mul(4096)
            .is_some_and(|gpa| self.contains(gpa, 4096))
    }

    /// Copies `buf.len()` bytes from `gpa`; `false` (nothing read) if outside guest RAM.
    /// Aligned 8-byte words are read with one volatile access each, the rest byte by byte.
    pub(crate) fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        if buf.is_empty() {
            return true;
        }
        let Some(p) = self.hv.gpa_to_ptr(gpa, buf.len()) else {
            return false;
        };
        let base = p.as_ptr();
        let mut i = 0;
        while i < buf.len() {
            // SAFETY: `gpa_to_ptr` checked that `buf.len()` bytes from `base` are guest RAM,
            // which lives as long as `self.hv`; `i < buf.len()` keeps the pointer inside.
            let at = unsafe { base.add(i) };
            if (at as usize).is_multiple_of(8) && buf.len() - i >= 8 {
                // SAFETY: 8 bytes from `at` are inside the checked range and `at` is 8-byte
                // aligned; the guest may write concurrently, hence volatile.
                let v = unsafe { at.cast::<u64>().read_volatile() };
                buf[i..i + 8].copy_from_slice(&v.to_ne_bytes());
                i += 8;
            } else {
                // SAFETY: `at` is inside the checked range; volatile as above.
                buf[i] = unsafe { at.read_volatile() };
                i += 1;
            }
        }
        true
    }

    /// Copies `data` to `gpa`; `false` (nothing written) if outside guest RAM.
    pub(crate) fn write(&self, gpa: u64, data: &[u8]) -> bool {
        if data.is_empty() {
            return true;
        }
        let Some(p) = self.hv.gpa_to_ptr(gpa, data.len()) else {
            return false;
        };
        let base = p.as_ptr();
        let mut i = 0;
        while i < data.len() {
            // SAFETY: as in `read`: `i < data.len()` keeps the pointer inside checked guest RAM.
            let at = unsafe { base.add(i) };
            if (at as usize).is_multiple_of(8) && data.len() - i >= 8 {
                let mut w = [0u8; 8];
                w.copy_from_slice(&data[i..i + 8]);
                // SAFETY: 8 aligned bytes inside the checked range.
                unsafe { at.cast::<u64>().write_volatile(u64::from_ne_bytes(w)) };
                i += 8;
            } else {
                // SAFETY: `at` is inside the checked range.
                unsafe { at.write_volatile(data[i]) };
                i += 1;
            }
        }
        true
    }

    /// The shared u32 at `gpa` (4-byte aligned, inside RAM).
    fn atomic(&self, gpa: u64) -> Option<&AtomicU32> {
        if !gpa.is_multiple_of(4) {
            return None;
        }
        let p = self.hv.gpa_to_ptr(gpa, 4)?;
        if !(p.as_ptr() as usize).is_multiple_of(4) {
            return None;
        }
        // SAFETY: the 4 bytes are inside guest RAM (checked above), 4-byte aligned, live as long
        // as `self.hv` (which the returned borrow of `self` keeps alive), and every host access
        // to shared words goes through atomics.
        Some(unsafe { AtomicU32::from_ptr(p.as_ptr().cast::<u32>()) })
    }

    /// Acquire-load of the u32 at `gpa`.
    pub(crate) fn load_u32(&self, gpa: u64) -> Option<u32> {
        self.atomic(gpa).map(|a| a.load(Ordering::Acquire))
    }

    /// Release-store of `value` at `gpa`; `false` if not addressable.
    pub(crate) fn store_u32(&self, gpa: u64, value: u32) -> bool {
        self.atomic(gpa)
            .map(|a| a.store(value, Ordering::Release))
            .is_some()
    }

    /// Atomically clears `mask` bits at `gpa`; returns the old value.
    pub(crate) fn fetch_and_u32(&self, gpa: u64, mask: u32) -> Option<u32> {
        self.atomic(gpa)
            .map(|a| a.fetch_and(mask, Ordering::SeqCst))
    }

    /// Atomically sets `bits` at `gpa`; returns the old value.
    pub(crate) fn fetch_or_u32(&self, gpa: u64, bits: u32) -> Option<u32> {
        self.atomic(gpa).map(|a| a.fetch_or(bits, Ordering::SeqCst))
    }
}
