//! Freestanding link check: every library crate of the workspace linked into a `#![no_std]`,
//! `#![no_main]` binary with no C runtime. Any accidental use of `std` fails to build here.
#![no_std]
#![no_main]

use core::panic::PanicInfo;

#[panic_handler]
fn panic(_info: &PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// Entry point of the freestanding binary.
#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    let msr = winhv::SyntheticRegister::Simp.x86_msr();
    core::hint::black_box(msr);
    loop {
        core::hint::spin_loop();
    }
}
