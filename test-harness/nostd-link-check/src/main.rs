//! Freestanding link check: every library crate of the workspace linked into a `#![no_std]`,
//! `#![no_main]` binary with no C runtime. Any accidental use of `std` fails to build here.
//!
//! When run (Linux x86_64 only), it executes the real `cpuid`-based detection in user mode and
//! exits with 0 when Hyper-V was detected, 1 when not; the full bring-up path is linked but
//! only executed under a condition the optimiser cannot see through and that is never true.
#![no_std]
#![no_main]

use core::panic::PanicInfo;
use core::ptr::NonNull;

use winhv::x86_64::NativeCpu;

// Link every library crate even where it has no code yet.
use ic_services as _;
use netvsc as _;
use storvsc as _;
use synthhid as _;
use synthvid as _;
use vmbus_guest as _;

#[panic_handler]
fn panic(_info: &PanicInfo<'_>) -> ! {
    exit(101)
}

/// The precompiled `core` refers to the unwinding personality routine even when this binary
/// aborts on panic; nothing calls it.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

fn exit(code: i32) -> ! {
    // SAFETY: the Linux exit_group system call never returns and touches no memory.
    unsafe {
        core::arch::asm!("syscall", in("rax") 231, in("rdi") code, options(noreturn));
    }
}

/// The bring-up a kernel performs, linked so every winhv entry point must build without std.
fn bring_up(cpu: NativeCpu, pages: [NonNull<u8>; 5]) -> Result<u64, &'static str> {
    let info = winhv::detect(&cpu).map_err(|_| "detect")?;
    info.require(winhv::Privileges::REQUIRED_FOR_VMBUS)
        .map_err(|_| "privileges")?;
    let id = winhv::GuestOsId::open_source(winhv::OpenSourceOsType(0x7F), 0, 1, 0)
        .map_err(|_| "guest id")?;
    id.write(&cpu);
    // SAFETY: never executed (see `_start`); a kernel reserves this page for the hypervisor.
    unsafe { winhv::enable_hypercall_page(&cpu, 0x1000) }.map_err(|_| "hypercall page")?;
    // SAFETY: never executed (see `_start`); the pages stand for kernel-owned pages.
    let [a, b, c, d, e] = pages.map(|p| unsafe { winhv::HvPage::new(p, p.as_ptr() as u64) });
    let mut calls = winhv::Hypercalls::new(cpu, a, b).map_err(|_| "pages")?;
    calls.post_message(4, 1, &[0; 8]).map_err(|_| "post")?;
    calls.signal_event(5, 0).map_err(|_| "signal")?;
    let sint = winhv::SintConfig::recommended(&info, 2, 0xF3);
    let synic = winhv::Synic::enable(&cpu, &info, c, d, &[sint]).map_err(|_| "synic")?;
    let message = synic.take_message(&cpu, 2).map_err(|_| "message")?;
    let tsc = winhv::ReferenceTscPage::enable(&cpu, &info, e).map_err(|_| "tsc")?;
    let clock = winhv::ReferenceClock::with_tsc_page(&info, tsc).map_err(|_| "clock")?;
    Ok(clock.now(&cpu) + message.map_or(0, |m| m.payload().len() as u64))
}

/// Entry point of the freestanding binary.
#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    let page = NonNull::<u8>::dangling();
    // SAFETY: no hypercall is issued unless the never-true condition below holds.
    let cpu = unsafe { NativeCpu::new(page) };
    if core::hint::black_box(false) {
        let _ = core::hint::black_box(bring_up(cpu, [page; 5]));
    }
    exit(if winhv::detect(&cpu).is_ok() { 0 } else { 1 })
}
