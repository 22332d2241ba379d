//! Interrupts and exceptions: a GDT with a 64-bit TSS whose IST stacks every gate uses, the
//! IDT, and the assembly entry stubs.
//!
//! Why IST: the kernel is built for the host's `x86_64-unknown-linux-gnu` target, whose
//! precompiled `core` uses the System V red zone (128 bytes below RSP that a leaf function
//! may use without moving RSP). An interrupt taken on the current stack would push its frame
//! over that red zone. Every gate therefore switches to an IST stack: the CPU loads a fresh RSP
//! from the TSS before pushing anything, so the interrupted code's stack is never touched.
//! Interrupts do not nest (interrupt gates clear IF and the handlers never set it), and
//! exceptions use a second IST stack, so an IST stack is never re-entered.
//!
//! When interrupts are taken: only inside [`wait_for_interrupt`] (`sti; hlt; cli`). The rest
//! of the kernel runs with IF clear, so a handler never runs in the middle of driver code —
//! the VMBus handler would be safe there (it uses atomics only), but this keeps the example
//! simple to reason about.
//!
//! Vectors: 0-31 exceptions (report and stop), [`VMBUS_VECTOR`] the VMBus SINT,
//! [`TIMER_VECTOR`] the direct-mode synthetic timer, 0xFF the local APIC's spurious vector.

use core::sync::atomic::{AtomicU64, Ordering};

use spin::Once;

use crate::apic;
use crate::power::{self, ExitCode};

/// The vector the VMBus SINT is routed to.
pub const VMBUS_VECTOR: u8 = 0xF3;
/// The vector of synthetic timer 0 in direct mode: the idle loop's tick.
pub const TIMER_VECTOR: u8 = 0xF4;
/// The local APIC's spurious-interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 0xFF;

/// Interrupts taken so far, per kind (shown on the status screen).
pub static VMBUS_INTERRUPTS: AtomicU64 = AtomicU64::new(0);
/// Timer ticks so far.
pub static TIMER_TICKS: AtomicU64 = AtomicU64::new(0);

const IST_STACK_BYTES: usize = 16 * 1024;

/// A stack for the TSS, 16-byte aligned.
#[repr(C, align(16))]
struct IstStack([u8; IST_STACK_BYTES]);

/// Written only by the CPU (pushes on interrupt entry); Rust never reads or references it.
static mut INTERRUPT_STACK: IstStack = IstStack([0; IST_STACK_BYTES]);
/// As above, for exceptions.
static mut EXCEPTION_STACK: IstStack = IstStack([0; IST_STACK_BYTES]);

/// The 64-bit task state segment: only the IST pointers are used.
#[repr(C, packed(4))]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    io_map_base: u16,
}

const _: () = assert!(size_of::<Tss>() == 104);

/// IST slot numbers (1-based in the gate descriptors).
const IST_INTERRUPTS: u8 = 1;
const IST_EXCEPTIONS: u8 = 2;

static TSS: Once<Tss> = Once::new();
/// Null, code, data, TSS (two slots). `ltr` sets the busy bit of the TSS descriptor in place;
/// no Rust code reads the table after loading it.
static GDT: Once<[u64; 5]> = Once::new();
static IDT: Once<[IdtEntry; 256]> = Once::new();

/// Kernel code and data selectors in [`GDT`], and the TSS's.
const KERNEL_CS: u16 = 0x08;
const TSS_SELECTOR: u16 = 0x18;

/// One 16-byte interrupt gate.
#[derive(Clone, Copy)]
#[repr(C)]
struct IdtEntry {
    offset_low: u16,
    selector: u16,
    ist: u8,
    flags: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

const _: () = assert!(size_of::<IdtEntry>() == 16);

impl IdtEntry {
    const MISSING: Self = Self {
        offset_low: 0,
        selector: 0,
        ist: 0,
        flags: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    /// A present, DPL-0 interrupt gate (IF cleared on entry) to `handler` on IST `ist`.
    fn gate(handler: usize, ist: u8) -> Self {
        Self {
            offset_low: handler as u16,
            selector: KERNEL_CS,
            ist,
            flags: 0x8E,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

/// The operand of LGDT and LIDT.
#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

unsafe extern "C" {
    /// The 32 exception entry stubs, in vector order (assembly below).
    static exception_stubs: [u64; 32];
    fn vmbus_interrupt_stub();
    fn timer_interrupt_stub();
    fn spurious_interrupt_stub();
}

/// Loads the GDT with the TSS, and the IDT. Interrupts stay disabled.
pub fn init() {
    let tss = TSS.call_once(|| {
        let top = |stack: *const IstStack| stack as u64 + IST_STACK_BYTES as u64;
        let mut ist = [0; 7];
        ist[usize::from(IST_INTERRUPTS) - 1] = top(&raw const INTERRUPT_STACK);
        ist[usize::from(IST_EXCEPTIONS) - 1] = top(&raw const EXCEPTION_STACK);
        Tss {
            reserved0: 0,
            rsp: [0; 3],
            reserved1: 0,
            ist,
            reserved2: 0,
            reserved3: 0,
            io_map_base: size_of::<Tss>() as u16,
        }
    });
    let gdt = GDT.call_once(|| {
        let base = tss as *const Tss as u64;
        let limit = size_of::<Tss>() as u64 - 1;
        // Available 64-bit TSS descriptor (type 9, present), 16 bytes.
        let tss_low = (limit & 0xFFFF)
            | ((base & 0xFF_FFFF) << 16)
            | (0x89 << 40)
            | (((base >> 24) & 0xFF) << 56);
        [
            0,
            0x00AF_9B00_0000_FFFF, // 0x08: 64-bit code, accessed
            0x00CF_9300_0000_FFFF, // 0x10: data, accessed
            tss_low,
            base >> 32,
        ]
    });
    let idt = IDT.call_once(|| {
        let mut idt = [IdtEntry::MISSING; 256];
        // SAFETY: a table of 32 addresses defined in the assembly below, never written.
        let stubs = unsafe { &exception_stubs };
        for (entry, &stub) in idt.iter_mut().zip(stubs) {
            *entry = IdtEntry::gate(stub as usize, IST_EXCEPTIONS);
        }
        idt[usize::from(VMBUS_VECTOR)] =
            IdtEntry::gate(vmbus_interrupt_stub as *const () as usize, IST_INTERRUPTS);
        idt[usize::from(TIMER_VECTOR)] =
            IdtEntry::gate(timer_interrupt_stub as *const () as usize, IST_INTERRUPTS);
        idt[usize::from(SPURIOUS_VECTOR)] = IdtEntry::gate(
            spurious_interrupt_stub as *const () as usize,
            IST_INTERRUPTS,
        );
        idt
    });
    let gdt_pointer = DescriptorPointer {
        limit: (size_of::<[u64; 5]>() - 1) as u16,
        base: gdt.as_ptr() as u64,
    };
    let idt_pointer = DescriptorPointer {
        limit: (size_of::<[IdtEntry; 256]>() - 1) as u16,
        base: idt.as_ptr() as u64,
    };
    // SAFETY: both tables live in statics for good and describe this kernel's flat segments,
    // its TSS and its entry stubs; CS is reloaded with a far return to the next instruction,
    // data segments with the data selector, then the TSS is loaded.
    unsafe {
        core::arch::asm!(
            "lgdt [{gdt}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov {tmp:e}, 0x10",
            "mov ds, {tmp:e}",
            "mov es, {tmp:e}",
            "mov ss, {tmp:e}",
            "ltr {tss:x}",
            "lidt [{idt}]",
            gdt = in(reg) &gdt_pointer,
            idt = in(reg) &idt_pointer,
            cs = const KERNEL_CS as u64,
            tss = in(reg) TSS_SELECTOR,
            tmp = out(reg) _,
        );
    }
}

/// Halts until the next interrupt, taking it (and any other pending) before returning with
/// interrupts disabled again. `sti` delays interrupts by one instruction, so one arriving
/// between the caller's last check and `hlt` still wakes the `hlt`.
pub fn wait_for_interrupt() {
    // SAFETY: the IDT is loaded (init); the handlers save every register they use.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

/// What the CPU pushed for an exception, below the vector and error code the stub pushed.
#[repr(C)]
pub struct ExceptionFrame {
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

#[unsafe(no_mangle)]
extern "C" fn exception_handler(frame: &ExceptionFrame) -> ! {
    let cr2: u64;
    // SAFETY: reading CR2 has no side effect.
    unsafe { core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
    let report = format_args!(
        "CPU exception {} (error code {:#x}) at RIP {:#x}, RSP {:#x}, RFLAGS {:#x}, CR2 {cr2:#x}",
        frame.vector, frame.error_code, frame.rip, frame.rsp, frame.rflags
    );
    crate::serial::print_unlocked(format_args!("\n{report}\n"));
    crate::crash::report(report);
    power::exit(ExitCode::Failure)
}

#[unsafe(no_mangle)]
extern "C" fn vmbus_interrupt() {
    VMBUS_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
    crate::hyperv::on_vmbus_interrupt();
}

#[unsafe(no_mangle)]
extern "C" fn timer_interrupt() {
    TIMER_TICKS.fetch_add(1, Ordering::Relaxed);
    apic::end_of_interrupt();
}

// Exception stubs push a zero error code where the CPU pushes none, then the vector, and call
// `exception_handler` with a pointer to that frame (it never returns). Interrupt stubs save
// the caller-saved registers and the SSE state (the handlers are Rust code, which may use
// XMM registers), call the handler with RSP 16-byte aligned, restore and return.
core::arch::global_asm!(
    r#"
    .section .text.interrupts, "ax"
    .code64

    .irp vector, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
    exception_stub_\vector:
        push 0
        push \vector
        jmp exception_common
    .endr
    .irp vector, 8,10,11,12,13,14,17,21,29,30
    exception_stub_\vector:
        push \vector
        jmp exception_common
    .endr

    exception_common:
        mov rdi, rsp
        and rsp, -16
        call exception_handler
        ud2

    .macro interrupt_stub name, handler
    \name:
        push rax
        push rcx
        push rdx
        push rsi
        push rdi
        push r8
        push r9
        push r10
        push r11
        sub rsp, 512
        fxsave64 [rsp]
        call \handler
        fxrstor64 [rsp]
        add rsp, 512
        pop r11
        pop r10
        pop r9
        pop r8
        pop rdi
        pop rsi
        pop rdx
        pop rcx
        pop rax
        iretq
    .endm

    .global vmbus_interrupt_stub
    interrupt_stub vmbus_interrupt_stub, vmbus_interrupt
    .global timer_interrupt_stub
    interrupt_stub timer_interrupt_stub, timer_interrupt

    .global spurious_interrupt_stub
    spurious_interrupt_stub:
        iretq

    .section .rodata.interrupts, "a"
    .balign 8
    .global exception_stubs
    exception_stubs:
    .irp vector, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .quad exception_stub_\vector
    .endr
"#
);
