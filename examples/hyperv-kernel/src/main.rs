//! An example kernel for Hyper-V and Azure: GRUB loads it through multiboot2 (BIOS or UEFI),
//! it narrates on COM1, detects Hyper-V with CPUID and then brings up the whole guest stack —
//! SynIC and hypercalls, VMBus, the integration services, storvsc, netvsc with DHCP and a
//! synthvid status screen — and idles answering heartbeats until the host shuts it down.
//!
//! Anywhere else (QEMU, bare metal) it reports why this is not Hyper-V and powers off (under
//! QEMU through isa-debug-exit, which the smoke test relies on).
//!
//! Memory is identity mapped (virtual = physical for the first 4 GiB, set up in `boot`); the
//! page allocator hands out RAM from the boot memory map below 4 GiB; there is no heap.
#![no_std]
#![no_main]

mod acpi;
mod apic;
mod boot;
mod crash;
mod disk;
mod guest;
mod hyperv;
mod interrupts;
mod keyboard;
mod mem;
mod memory;
mod multiboot2;
mod net;
mod pci;
mod port;
mod power;
mod screen;
mod selfcheck;
mod serial;
mod services;
mod status;

use core::panic::PanicInfo;

use power::ExitCode;

/// The Rust entry point, called by the boot trampoline in long mode with GRUB's EAX and EBX.
#[unsafe(no_mangle)]
pub extern "C" fn kernel_main(magic: u32, info: u32) -> ! {
    serial::init();
    println!();
    println!(
        "hyperv-kernel {}: reached Rust in long mode",
        env!("CARGO_PKG_VERSION")
    );
    // SAFETY: `magic` and `info` are GRUB's EAX and EBX (boot.rs) and the first 4 GiB are
    // identity mapped.
    let boot = match unsafe { multiboot2::parse(magic, info) } {
        Ok(boot) => boot,
        Err(e) => {
            println!("boot: {e}");
            power::exit(ExitCode::Failure);
        }
    };
    acpi::init(boot.rsdp);
    println!(
        "boot: loaded by {} through multiboot2",
        core::str::from_utf8(&boot.loader).unwrap_or("?"),
    );
    let usable: u64 = boot
        .regions
        .iter()
        .filter(|r| r.kind == multiboot2::Region::AVAILABLE)
        .map(|r| r.len)
        .sum();
    let top = boot
        .regions
        .iter()
        .map(|r| r.base + r.len)
        .max()
        .unwrap_or(0);
    println!(
        "boot: {} MiB of RAM (up to {top:#x}) in {} memory map entries; boot \
         information at {:#x} ({} bytes)",
        usable >> 20,
        boot.regions.len(),
        boot.location.0,
        boot.location.1
    );
    if let Some(fb) = boot.framebuffer {
        println!(
            "boot: framebuffer {}x{}x{} at {:#x}, pitch {}",
            fb.width, fb.height, fb.bpp, fb.addr, fb.pitch
        );
    }
    let cpu = detect::cpu();
    detect::narrate(&cpu);
    match winhv::detect(&cpu) {
        Ok(info) => {
            println!(
                "detect: Hyper-V {} (vendor {:?})",
                info.version,
                info.vendor_str().unwrap_or("?")
            );
            crash::enable(info);
            guest::run(&info, &boot)
        }
        Err(e) => {
            println!("not Hyper-V: {e}");
            if let Err(why) = selfcheck::run(&boot) {
                println!("platform: self-check FAILED: {why}");
                power::exit(ExitCode::Failure);
            }
            println!("platform: self-check passed");
            println!("stopping: nothing to drive here");
            power::exit(ExitCode::Clean)
        }
    }
}

mod detect {
    //! The processor handle used before the hypercall page exists.
    use core::ptr::NonNull;

    use winhv::Cpu;
    use winhv::x86_64::NativeCpu;

    use crate::println;

    /// A [`NativeCpu`] for CPUID only: no hypercall page yet.
    pub fn cpu() -> NativeCpu {
        // SAFETY: CPL 0; only CPUID is issued through this handle (detection), never a
        // hypercall, so the dangling page address is never called.
        unsafe { NativeCpu::new(NonNull::dangling()) }
    }

    /// Prints the raw CPUID answers detection is about to judge.
    pub fn narrate(cpu: &NativeCpu) {
        let present = cpu.cpuid(1, 0).ecx >> 31 & 1;
        println!("detect: CPUID leaf 1 ECX bit 31 (hypervisor present) = {present}");
        if present == 1 {
            let leaf = cpu.cpuid(0x4000_0000, 0);
            let mut vendor = [0u8; 12];
            for (chunk, word) in vendor.chunks_mut(4).zip([leaf.ebx, leaf.ecx, leaf.edx]) {
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            let interface = cpu.cpuid(0x4000_0001, 0).eax;
            println!(
                "detect: CPUID 0x40000000 vendor {:?}, max leaf {:#x}; 0x40000001 interface {:#010x}",
                core::str::from_utf8(&vendor).unwrap_or("<not ASCII>"),
                leaf.eax,
                interface
            );
        }
    }
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    serial::print_unlocked(format_args!("\nkernel panic: {info}\n"));
    crash::report(format_args!("hyperv-kernel panic: {info}"));
    power::exit(ExitCode::Failure)
}

/// The precompiled `core` refers to the unwinding personality routine even when this binary
/// aborts on panic; nothing calls it.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}
