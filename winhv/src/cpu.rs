//! The instruction boundary: the few primitives that differ between real hardware, other
//! architectures and the test-harness mock hypervisor.
//!
//! Everything else in this crate (register programming order, hypercall input encoding, SynIC
//! message slots, the reference TSC page) is ordinary code written against [`Cpu`].

use crate::register::SyntheticRegister;

/// The four registers returned by one `CPUID` instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuidResult {
    /// EAX output.
    pub eax: u32,
    /// EBX output.
    pub ebx: u32,
    /// ECX output.
    pub ecx: u32,
    /// EDX output.
    pub edx: u32,
}

/// The primitives a Hyper-V guest needs from the processor it runs on.
///
/// On x86_64 these are `cpuid`, `rdmsr`/`wrmsr` on the synthetic MSRs, `rdtsc` and a call into
/// the hypercall page; [`crate::x86_64::NativeCpu`] implements them with inline assembly. On
/// aarch64 there is no CPUID and registers are reached through the HvCallGet/SetVpRegisters
/// hypercalls (the same 128-bit values, see TLFS), which is why this trait speaks of *synthetic
/// registers* rather than MSRs. The test harness implements it with a mock hypervisor.
///
/// A method is called on the virtual processor the caller is running on: SynIC and timer
/// registers are per virtual processor.
///
/// Register accesses that the hypervisor rejects (a reserved bit set, a register the partition
/// has no privilege for) are a fault on real hardware (`#GP` on x86_64), not an error value:
/// callers validate values before writing them, and implementations may treat a rejected access
/// as fatal.
pub trait Cpu {
    /// Executes `CPUID` with `leaf` in EAX and `subleaf` in ECX.
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult;

    /// Reads a synthetic register of the current virtual processor.
    fn read_register(&self, register: SyntheticRegister) -> u64;

    /// Writes a synthetic register of the current virtual processor.
    ///
    /// # Safety
    ///
    /// Some registers name a page of guest memory that the hypervisor then overlays or writes
    /// ([`SyntheticRegister::names_page`]: HYPERCALL, SIMP, SIEFP, REFERENCE_TSC). When the
    /// value enables such a page, the caller guarantees the page is reserved for the hypervisor
    /// from now until it is disabled again (and leaked if it never is): nothing else reads or
    /// writes it meanwhile. Writes to other registers, and writes that disable a page, have no
    /// memory effect.
    unsafe fn write_register(&self, register: SyntheticRegister, value: u64);

    /// Issues a memory-based ("slow") hypercall and returns the raw hypercall result value
    /// (TLFS: status in bits 15:0, reps completed in bits 43:32).
    ///
    /// `control` is the hypercall input value (call code, rep count, variable header size; the
    /// fast bit clear). `input_gpa` and `output_gpa` are guest-physical addresses of the input
    /// and output parameter blocks (0 when unused).
    ///
    /// # Safety
    ///
    /// The hypervisor reads the input block and writes the output block directly in guest
    /// memory. The caller guarantees that both addresses name memory it owns for the duration of
    /// the call, that nothing else accesses the output block meanwhile, and that the input block
    /// holds a fully initialised parameter block of the size the call code implies.
    unsafe fn hypercall(&self, control: u64, input_gpa: u64, output_gpa: u64) -> u64;

    /// Issues a register-based ("fast") hypercall with two 8-byte input words and returns the raw
    /// hypercall result value. `control` must have the fast bit (16) set; implementations return
    /// HV_STATUS_INVALID_HYPERCALL_INPUT without calling the hypervisor if it is clear (a slow
    /// call would treat the input words as guest-physical addresses).
    fn fast_hypercall(&self, control: u64, input0: u64, input1: u64) -> u64;

    /// Reads the processor's time-stamp counter with ordering against earlier loads
    /// (`lfence; rdtsc` on x86_64, `isb; mrs cntvct_el0` on aarch64).
    fn read_tsc(&self) -> u64;
}

/// Writes a register that names no guest memory, or that disables the page it names.
///
/// Callers in this crate use it for every register write that cannot make the hypervisor touch
/// memory; page-enabling writes go through [`Cpu::write_register`] with their own argument.
pub(crate) fn write_plain_register(cpu: &impl Cpu, register: SyntheticRegister, value: u64) {
    debug_assert!(!register.names_page() || value & 1 == 0);
    // SAFETY: the register names no guest memory, or the write disables its page (bit 0 clear).
    unsafe { cpu.write_register(register, value) }
}
