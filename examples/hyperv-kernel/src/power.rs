//! Stopping the machine: QEMU's isa-debug-exit device (how the smoke test ends a run), ACPI
//! S5 power-off (how a Hyper-V VM turns itself off when the host asks it to shut down), and
//! halting for good when neither is there.

use crate::port::outb;

/// QEMU's isa-debug-exit device, as the smoke test configures it (`iobase=0xf4,iosize=4`).
/// QEMU exits with status `(value << 1) | 1`; on other machines the port is unassigned and
/// the write does nothing.
const ISA_DEBUG_EXIT: u16 = 0xF4;

/// How a run ended, as the exit status QEMU reports (`(code << 1) | 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// The kernel did what it could on this machine and stopped cleanly (QEMU status 33).
    Clean = 0x10,
    /// A panic or failed boot (QEMU status 35).
    Failure = 0x11,
}

/// Stops the machine: isa-debug-exit when running under QEMU, otherwise ACPI power-off,
/// otherwise halt with interrupts off.
pub fn exit(code: ExitCode) -> ! {
    // SAFETY: port 0xF4 is QEMU's isa-debug-exit when present and unassigned otherwise.
    unsafe { outb(ISA_DEBUG_EXIT, code as u8) };
    if crate::acpi::power_off() {
        // The write takes effect asynchronously on some machines: give it a moment.
        for _ in 0..10_000_000 {
            core::hint::spin_loop();
        }
    }
    crate::println!("halted: this machine did not power off");
    halt_forever()
}

/// Restarts the machine through the ACPI reset register, the keyboard controller's reset
/// line (Generation 1) or the PCI reset control register at 0xCF9; halts if none works.
pub fn restart() -> ! {
    crate::println!("restarting");
    crate::acpi::reset();
    // SAFETY: 0xFE to the 8042 command port pulses the CPU reset line; 0x06 to port 0xCF9
    // requests a hard reset. Both end this kernel, which is the intent.
    unsafe {
        outb(0x64, 0xFE);
        outb(0xCF9, 0x06);
    }
    halt_forever()
}

/// Halts this processor for good.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: with interrupts disabled HLT only waits for an NMI; no memory is touched.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
