//! The local APIC, only as far as this kernel needs it: software-enable it with the spurious
//! vector, and signal end of interrupt (xAPIC through its MMIO page, x2APIC through MSRs).

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::interrupts::SPURIOUS_VECTOR;

const IA32_APIC_BASE: u32 = 0x1B;
/// IA32_APIC_BASE: x2APIC mode enabled.
const X2APIC_ENABLE: u64 = 1 << 10;
/// x2APIC MSRs: EOI and spurious-interrupt vector.
const X2APIC_EOI: u32 = 0x80B;
const X2APIC_SVR: u32 = 0x80F;
/// xAPIC register offsets.
const XAPIC_EOI: u64 = 0xB0;
const XAPIC_SVR: u64 = 0xF0;
/// SVR: APIC software enable.
const SVR_ENABLE: u32 = 1 << 8;

static X2APIC: AtomicBool = AtomicBool::new(false);
static XAPIC_BASE: AtomicU64 = AtomicU64::new(0);

fn read_msr(msr: u32) -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: an architectural MSR this function is only called with; RDMSR has no memory
    // effects.
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high,
                         options(nomem, nostack, preserves_flags));
    }
    (u64::from(high) << 32) | u64::from(low)
}

fn write_msr(msr: u32, value: u64) {
    // SAFETY: only the x2APIC EOI and SVR registers are written, in x2APIC mode.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32,
                         in("edx") (value >> 32) as u32, options(nostack, preserves_flags));
    }
}

fn xapic_write(offset: u64, value: u32) {
    let base = XAPIC_BASE.load(Ordering::Relaxed);
    // SAFETY: the xAPIC register page (IA32_APIC_BASE, below 4 GiB, identity mapped; the
    // MTRRs make it uncached); `offset` is a register of it.
    unsafe { core::ptr::write_volatile((base + offset) as usize as *mut u32, value) };
}

/// Enables the local APIC with [`SPURIOUS_VECTOR`], in whichever mode the firmware left it.
/// Returns a description for the boot log.
pub fn init() -> &'static str {
    let base = read_msr(IA32_APIC_BASE);
    let svr = SVR_ENABLE | u32::from(SPURIOUS_VECTOR);
    if base & X2APIC_ENABLE != 0 {
        X2APIC.store(true, Ordering::Relaxed);
        write_msr(X2APIC_SVR, u64::from(svr));
        "x2APIC"
    } else {
        XAPIC_BASE.store(base & 0x000F_FFFF_FFFF_F000, Ordering::Relaxed);
        xapic_write(XAPIC_SVR, svr);
        "xAPIC"
    }
}

/// Signals end of interrupt to the local APIC.
pub fn end_of_interrupt() {
    if X2APIC.load(Ordering::Relaxed) {
        write_msr(X2APIC_EOI, 0);
    } else {
        xapic_write(XAPIC_EOI, 0);
    }
}

/// Masks every line of both legacy 8259 PICs: nothing here uses them, and an unmasked PIC
/// would deliver its timer on vector 8, an exception vector.
pub fn mask_legacy_pic() {
    for port in [0x21, 0xA1] {
        // SAFETY: the PICs' interrupt mask registers; masking has no other effect.
        unsafe { crate::port::outb(port, 0xFF) };
    }
}
