//! x86 I/O ports: the legacy devices this kernel touches (COM1, the PICs, PCI configuration
//! space, QEMU's isa-debug-exit, the ACPI PM1 control block).

use core::arch::asm;

/// Writes a byte to an I/O port.
///
/// # Safety
///
/// The port belongs to a device this kernel drives, and the write is valid for it.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: per this function's contract; OUT touches no memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a 16-bit word to an I/O port.
///
/// # Safety
///
/// As [`outb`].
pub unsafe fn outw(port: u16, value: u16) {
    // SAFETY: per this function's contract; OUT touches no memory.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
///
/// # Safety
///
/// The port belongs to a device this kernel drives and reading it has no unwanted effect.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: per this function's contract; IN touches no memory.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Reads a 16-bit word from an I/O port.
///
/// # Safety
///
/// As [`inb`].
pub unsafe fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: per this function's contract; IN touches no memory.
    unsafe {
        asm!("in ax, dx", in("dx") port, out("ax") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Writes a 32-bit word to an I/O port.
///
/// # Safety
///
/// As [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: per this function's contract; OUT touches no memory.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a 32-bit word from an I/O port.
///
/// # Safety
///
/// As [`inb`].
pub unsafe fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: per this function's contract; IN touches no memory.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags))
    }
    value
}
