//! On a machine that is not Hyper-V (QEMU in CI), the platform half of the kernel still runs
//! before it stops: the page allocator and the `Hal` over the memory map, the GDT, TSS and
//! IDT with an interrupt taken through its IST stub, the local APIC and the PCI scan. What
//! needs Hyper-V (hypercalls, SynIC, VMBus) cannot run here.

use core::sync::atomic::Ordering;

use vmbus_guest::{HV_PAGE_SIZE, Hal};

use crate::interrupts::{self, TIMER_TICKS};
use crate::memory::{self, KernelHal};
use crate::multiboot2::BootInfo;
use crate::{apic, pci, println};

/// Runs the checks; returns the first failure.
pub fn run(boot: &BootInfo) -> Result<(), &'static str> {
    let (free, total) = memory::init(boot);
    println!(
        "platform: page allocator: {} of {} MiB free below 4 GiB",
        free >> 8,
        total >> 8
    );
    check_hal()?;
    apic::mask_legacy_pic();
    interrupts::init();
    let mode = apic::init();
    let before = TIMER_TICKS.load(Ordering::Relaxed);
    // SAFETY: the IDT is loaded; vector 0xF4's handler saves what it uses and returns.
    unsafe { core::arch::asm!("int 0xF4", options(nomem, nostack)) };
    if TIMER_TICKS.load(Ordering::Relaxed) != before + 1 {
        return Err("the software interrupt did not reach its handler");
    }
    println!(
        "platform: GDT, TSS, IDT loaded; int 0xF4 went through its IST stub and returned; local {mode}"
    );
    match pci::hyperv_video_bar() {
        Some((base, size)) => {
            println!("platform: Hyper-V video BAR 0 at {base:#x}, {size:#x} bytes")
        }
        None => println!("platform: no Hyper-V PCI video device (expected off Hyper-V)"),
    }
    Ok(())
}

/// Allocations are zeroed, aligned, identity translated, and come back after a free.
fn check_hal() -> Result<(), &'static str> {
    let hal = KernelHal;
    let free = memory::free_pages();
    // The largest allocation the drivers make: netvsc's 16 MiB receive buffer.
    let pages = (16 << 20) / HV_PAGE_SIZE;
    let big = hal.alloc_pages(pages).map_err(|_| "no 16 MiB run")?;
    let small = hal.alloc_pages(1).map_err(|_| "no page")?;
    for p in [big, small] {
        if !(p.as_ptr() as usize).is_multiple_of(HV_PAGE_SIZE) {
            return Err("unaligned allocation");
        }
        if hal.virt_to_phys(p) != Ok(p.as_ptr() as u64) {
            return Err("translation is not the identity");
        }
    }
    // SAFETY: `small` is one page this function owns.
    let page = unsafe { core::slice::from_raw_parts_mut(small.as_ptr(), HV_PAGE_SIZE) };
    if page.iter().any(|&b| b != 0) {
        return Err("allocation not zeroed");
    }
    page.fill(0xA5);
    // SAFETY: both allocations are returned exactly as obtained, and not used afterwards.
    unsafe {
        hal.free_pages(small, 1);
        hal.free_pages(big, pages);
    }
    if memory::free_pages() != free {
        return Err("freed pages did not come back");
    }
    let again = hal.alloc_pages(1).map_err(|_| "no page after free")?;
    // SAFETY: `again` is one page this function owns.
    let reused = unsafe { core::slice::from_raw_parts(again.as_ptr(), HV_PAGE_SIZE) };
    let zeroed = reused.iter().all(|&b| b == 0);
    // SAFETY: as above.
    unsafe { hal.free_pages(again, 1) };
    if !zeroed {
        return Err("a reused page was not zeroed");
    }
    println!("platform: Hal: 16 MiB and 4 KiB allocations zeroed, aligned, identity mapped, freed");
    Ok(())
}
