//! `vmbus_guest::Hal` over the mock's guest RAM: a first-fit page allocator, virt↔phys
//! translation that refuses memory outside RAM, and MMIO mapping of the VRAM window.
//!
//! Freed pages are poisoned with [`POISON_BYTE`] so a guest (or host) still using them reads
//! garbage instead of stale data, and a free of pages the host still maps (a live GPADL, an
//! in-flight GPA-direct request, a connection's monitor pages) is recorded; see
//! [`MockHypervisor::freed_while_mapped`].

use std::collections::BTreeMap;
use std::ptr::NonNull;

use vmbus_guest::{Hal, HalError, PhysAddr};

use super::memory::PAGE_SIZE;
use super::{MockHypervisor, lock};

/// Every byte of a page freed through [`MockHal`] reads as this until it is allocated again
/// (allocations are zeroed).
pub const POISON_BYTE: u8 = 0xDB;

/// Page allocator state: one bit per RAM page, plus the live allocations.
#[derive(Debug)]
pub(crate) struct PageAllocator {
    used: Vec<bool>,
    allocations: BTreeMap<usize, usize>,
}

impl PageAllocator {
    pub(crate) fn new(pages: usize) -> Self {
        Self {
            used: vec![false; pages],
            allocations: BTreeMap::new(),
        }
    }

    /// First-fit run of `count` free pages; returns the first page index.
    pub(crate) fn alloc(&mut self, count: usize) -> Option<usize> {
        let mut run = 0;
        for i in 0..self.used.len() {
            run = if self.used[i] { 0 } else { run + 1 };
            if run == count {
                let first = i + 1 - count;
                self.used[first..=i].iter_mut().for_each(|u| *u = true);
                self.allocations.insert(first, count);
                return Some(first);
            }
        }
        None
    }

    /// Frees an allocation; `false` if it is not exactly a live allocation.
    pub(crate) fn free(&mut self, first: usize, count: usize) -> bool {
        if self.allocations.get(&first) != Some(&count) {
            return false;
        }
        self.allocations.remove(&first);
        self.used[first..first + count]
            .iter_mut()
            .for_each(|u| *u = false);
        true
    }
}

/// The platform memory interface over the mock's guest RAM.
#[derive(Clone)]
pub struct MockHal {
    pub(crate) hv: MockHypervisor,
}

impl MockHal {
    /// Allocates `pages` zeroed pages and returns (virtual address, GPA).
    pub(crate) fn alloc(&self, pages: usize) -> Result<(NonNull<u8>, u64), HalError> {
        if pages == 0 {
            return Err(HalError::InvalidRequest);
        }
        let shared = &self.hv.shared;
        let first = lock(&shared.state)
            .allocator
            .alloc(pages)
            .ok_or(HalError::OutOfMemory)?;
        let mem = &shared.memory;
        mem.zero_pages(first, pages);
        Ok((
            mem.page_ptr(first),
            mem.ram_base() + (first * PAGE_SIZE) as u64,
        ))
    }

    /// Frees the `pages`-page allocation at `gpa` as `free_pages` does (poisoning it and
    /// checking it against the host's mappings), without a pointer; `Err` (and a hypervisor
    /// protocol error) if it is not exactly a live allocation.
    pub fn free_gpa(&self, gpa: u64, pages: usize) -> Result<(), String> {
        let ptr = self
            .hv
            .shared
            .memory
            .ram_ptr(gpa, 1)
            .map_or(std::ptr::null(), |p| p.as_ptr().cast_const());
        self.free_at(ptr, pages)
    }

    /// The body of `free_pages`: frees the allocation, poisons it, checks host mappings.
    fn free_at(&self, vaddr: *const u8, pages: usize) -> Result<(), String> {
        let shared = &self.hv.shared;
        let mem = &shared.memory;
        let freed = mem.ram_gpa_of(vaddr).and_then(|gpa| {
            let offset = (gpa - mem.ram_base()) as usize;
            offset
                .is_multiple_of(PAGE_SIZE)
                .then_some((offset / PAGE_SIZE, gpa))
        });
        let violations = {
            let mut state = lock(&shared.state);
            match freed {
                Some((first, gpa)) if state.allocator.free(first, pages) => {
                    // Poisoned under the lock: once it is released the pages may be handed
                    // out (and zeroed) again.
                    mem.fill_pages(first, pages, POISON_BYTE);
                    let v = state.host_map.check_free(gpa, pages);
                    for (v, hook) in &v {
                        if hook.is_none() {
                            state.error(v.to_string());
                        }
                    }
                    v
                }
                _ => {
                    let m = format!("HAL: free_pages({vaddr:p}, {pages}) is not a live allocation");
                    state.error(m.clone());
                    return Err(m);
                }
            }
        };
        for (v, hook) in violations {
            log::warn!("mock hv: {v}");
            if let Some(hook) = hook {
                hook(&v);
            }
        }
        Ok(())
    }
}

// SAFETY: pages come from the RAM block, are zeroed and page aligned, are handed out once until
// freed, and their GPA (`virt_to_phys`) is the GPA the mock hypervisor uses for that byte.
unsafe impl Hal for MockHal {
    fn alloc_pages(&self, pages: usize) -> Result<NonNull<u8>, HalError> {
        self.alloc(pages).map(|(ptr, _)| ptr)
    }

    unsafe fn free_pages(&self, vaddr: NonNull<u8>, pages: usize) {
        if let Err(m) = self.free_at(vaddr.as_ptr(), pages) {
            panic!("{m}");
        }
    }

    fn virt_to_phys(&self, vaddr: NonNull<u8>) -> Result<PhysAddr, HalError> {
        self.hv
            .shared
            .memory
            .ram_gpa_of(vaddr.as_ptr())
            .ok_or(HalError::NotTranslatable)
    }

    unsafe fn map_mmio(&self, gpa: PhysAddr, size: usize) -> Result<NonNull<u8>, HalError> {
        if size == 0 || !gpa.is_multiple_of(PAGE_SIZE as u64) {
            return Err(HalError::InvalidRequest);
        }
        self.hv
            .shared
            .memory
            .mmio_ptr(gpa, size)
            .ok_or(HalError::NotTranslatable)
    }
}
