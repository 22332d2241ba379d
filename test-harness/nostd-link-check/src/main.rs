//! Freestanding link check: every library crate of the workspace linked into a `#![no_std]`,
//! `#![no_main]` binary with no C runtime. Any accidental use of `std` fails to build here.
//!
//! When run (Linux x86_64 only), it executes the real `cpuid`-based detection in user mode and
//! exits with 0 when Hyper-V was detected, 1 when not; the full bring-up path is linked but
//! only executed under a condition the optimiser cannot see through and that is never true.
#![no_std]
#![no_main]

use core::fmt::{self, Write};
use core::panic::PanicInfo;
use core::ptr::NonNull;

use winhv::HvPage;
use winhv::bringup::{BootError, Partition, Vp};
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

/// Formats into nothing: proves error messages need no allocator or std.
struct Discard;

impl fmt::Write for Discard {
    fn write_str(&mut self, _: &str) -> fmt::Result {
        Ok(())
    }
}

/// Renders a bring-up error the way a kernel log would, then names the step.
fn describe(error: BootError, step: &'static str) -> &'static str {
    let _ = write!(Discard, "{error}");
    step
}

/// The bring-up a kernel performs through `winhv::bringup`, linked so every winhv entry point
/// must build without std.
fn bring_up(
    cpu: NativeCpu,
    hypercall_page: NonNull<u8>,
    pages: [NonNull<u8>; 5],
) -> Result<u64, &'static str> {
    let id = winhv::GuestOsId::open_source(winhv::OpenSourceOsType(0x7F), 0, 1, 0)
        .map_err(|_| "guest id")?;
    let as_page = |p: NonNull<u8>| {
        // SAFETY: never executed (see `_start`); the pointers stand for kernel-owned pages.
        unsafe { HvPage::new(p, p.as_ptr() as u64) }
    };
    let mut pages = pages.into_iter().map(as_page);
    let mut source = || pages.next();
    // SAFETY: never executed (see `_start`); `hypercall_page` is the address `cpu` was created
    // with, as a kernel's would be.
    let partition = unsafe { Partition::bring_up(&cpu, id, as_page(hypercall_page), &mut source) }
        .map_err(|e| describe(e, "partition"))?;
    let mut vp =
        Vp::bring_up(cpu, &partition.info, &mut source, 0xF3).map_err(|e| describe(e, "vp"))?;
    vp.hypercalls
        .post_message(4, 1, &[0; 8])
        .map_err(|_| "post")?;
    vp.hypercalls.signal_event(5, 0).map_err(|_| "signal")?;
    let message = vp.synic.take_message(&cpu, 2).map_err(|_| "message")?;
    Ok(partition.clock.now(&cpu) + message.map_or(0, |m| m.payload().len() as u64))
}

/// Entry point of the freestanding binary.
#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    let page = NonNull::<u8>::dangling();
    // SAFETY: no hypercall is issued unless the never-true condition below holds.
    let cpu = unsafe { NativeCpu::new(page) };
    if core::hint::black_box(false) {
        let _ = core::hint::black_box(bring_up(cpu, page, [page; 5]));
    }
    exit(if winhv::detect(&cpu).is_ok() { 0 } else { 1 })
}
