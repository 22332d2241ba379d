//! The native x86_64 implementation of [`Cpu`]: real `cpuid`, `rdmsr`, `wrmsr`, `rdtsc` and
//! calls through the hypercall page. Only meaningful at CPL 0 inside a Hyper-V guest.

use core::arch::asm;
use core::ptr::NonNull;

use crate::cpu::{Cpu, CpuidResult};
use crate::register::SyntheticRegister;

/// The processor this code runs on, with the hypercall page mapped at a known address.
///
/// Requirements on the kernel: hypercalls `call` into the hypercall page from inline assembly,
/// so the kernel must be built without a red zone (as every x86_64 kernel target is), and with
/// CET indirect-branch tracking off or the page exempted (the hypervisor's page has no
/// `ENDBR64`; Linux hit the same issue).
///
/// Register accesses go straight to `rdmsr`/`wrmsr`; a register the hypervisor rejects raises
/// `#GP` in the caller's kernel. A [`SyntheticRegister`] without an x86 MSR (none today) is
/// read as 0 and not written.
#[derive(Debug, Clone, Copy)]
pub struct NativeCpu {
    hypercall_page: NonNull<u8>,
}

// SAFETY: the hypercall page is read-only executable code shared by all processors.
unsafe impl Send for NativeCpu {}
// SAFETY: as above; every method acts on the processor it is called on.
unsafe impl Sync for NativeCpu {}

impl NativeCpu {
    /// Creates the handle.
    ///
    /// # Safety
    ///
    /// Must run at CPL 0 under Hyper-V. `hypercall_page` is the virtual address, mapped
    /// executable, of the page whose GPA is (or will be, before the first hypercall) enabled with
    /// [`crate::enable_hypercall_page`]; hypercalls must not be issued before that.
    pub const unsafe fn new(hypercall_page: NonNull<u8>) -> Self {
        Self { hypercall_page }
    }
}

impl NativeCpu {
    /// Calls the hypercall page with the TLFS register convention: RCX control, RDX and R8 the
    /// two input words (GPAs for a memory call, values for a fast call), result in RAX; RCX,
    /// RDX and R8-R11 clobbered (Linux's clobber list).
    ///
    /// # Safety
    ///
    /// The hypercall page is enabled, and for a memory call (fast bit clear) the two words are
    /// GPAs of parameter pages as the [`Cpu::hypercall`] contract requires.
    unsafe fn call_hypercall_page(&self, control: u64, rdx: u64, r8: u64) -> u64 {
        let result: u64;
        // SAFETY: per this function's contract; the call follows the ABI above.
        unsafe {
            asm!(
                "call {page}",
                page = in(reg) self.hypercall_page.as_ptr(),
                inout("rcx") control => _,
                inout("rdx") rdx => _,
                inout("r8") r8 => _,
                out("rax") result,
                out("r9") _, out("r10") _, out("r11") _,
            );
        }
        result
    }
}

impl Cpu for NativeCpu {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        let (eax, ebx, ecx, edx);
        // SAFETY: CPUID has no side effects. RBX is reserved by LLVM, so it is saved in a
        // scratch register around the instruction.
        unsafe {
            asm!(
                "mov {saved:r}, rbx",
                "cpuid",
                "xchg {saved:r}, rbx",
                saved = out(reg) ebx,
                inout("eax") leaf => eax,
                inout("ecx") subleaf => ecx,
                out("edx") edx,
                options(nostack, preserves_flags),
            );
        }
        CpuidResult { eax, ebx, ecx, edx }
    }

    fn read_register(&self, register: SyntheticRegister) -> u64 {
        let Some(msr) = register.x86_msr() else {
            return 0;
        };
        let (low, high): (u32, u32);
        // SAFETY: reading a synthetic MSR has no memory effects; the constructor's contract
        // puts us at CPL 0 under Hyper-V.
        unsafe {
            asm!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high,
                 options(nostack, preserves_flags));
        }
        (u64::from(high) << 32) | u64::from(low)
    }

    unsafe fn write_register(&self, register: SyntheticRegister, value: u64) {
        let Some(msr) = register.x86_msr() else {
            return;
        };
        // SAFETY: WRMSR of a synthetic MSR at CPL 0 under Hyper-V (constructor contract); any
        // page the value enables has been reserved for the hypervisor by the caller (trait
        // contract).
        unsafe {
            asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
                 options(nostack, preserves_flags));
        }
    }

    unsafe fn hypercall(&self, control: u64, input_gpa: u64, output_gpa: u64) -> u64 {
        // SAFETY: the caller guarantees the parameter pages (the trait's contract) and that
        // the hypercall page is enabled.
        unsafe { self.call_hypercall_page(control, input_gpa, output_gpa) }
    }

    fn fast_hypercall(&self, control: u64, input0: u64, input1: u64) -> u64 {
        if control & (1 << 16) == 0 {
            // Without the fast bit the hypervisor would take the inputs as GPAs.
            return crate::status::HvStatus::INVALID_HYPERCALL_INPUT.0.into();
        }
        // SAFETY: with the fast bit set the inputs are register values, not addresses: the
        // call touches no guest memory. The page is enabled per the constructor's contract.
        unsafe { self.call_hypercall_page(control, input0, input1) }
    }

    fn read_tsc(&self) -> u64 {
        let (low, high): (u32, u32);
        // SAFETY: LFENCE orders the TSC read after earlier loads; RDTSC has no memory effects.
        unsafe {
            asm!("lfence", "rdtsc", out("eax") low, out("edx") high,
                 options(nostack, preserves_flags));
        }
        (u64::from(high) << 32) | u64::from(low)
    }
}
