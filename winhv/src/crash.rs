//! Guest crash reporting: the crash registers the host records (and shows in its event log)
//! when the guest dies.

use core::fmt;

use crate::cpu::Cpu;
use crate::cpu::write_plain_register;
use crate::detect::{Features, HypervInfo};
use crate::page::{HV_PAGE_SIZE, HvPage};
use crate::register::SyntheticRegister;

/// CRASH_CTL bit 63: notify the host of a crash (P0..P4 hold parameters).
pub const CRASH_CTL_NOTIFY: u64 = 1 << 63;
/// CRASH_CTL bit 62: P3/P4 name a message buffer (GPA and length).
pub const CRASH_CTL_MESSAGE: u64 = 1 << 62;
/// CRASH_CTL bit 61: the host should not take a crash dump.
pub const CRASH_CTL_NO_CRASH_DUMP: u64 = 1 << 61;

/// Why a crash could not be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashError {
    /// The hypervisor does not offer the crash registers (CPUID 0x40000003 EDX bit 10).
    Unavailable,
    /// CRASH_CTL does not list the requested action as supported.
    Unsupported(u64),
    /// The message does not fit in one page.
    MessageTooLong(usize),
}

impl fmt::Display for CrashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable => f.write_str("guest crash registers are unavailable"),
            Self::Unsupported(bits) => write!(f, "crash action {bits:#x} is not supported"),
            Self::MessageTooLong(n) => write!(f, "crash message of {n} bytes exceeds 4096"),
        }
    }
}

impl core::error::Error for CrashError {}

fn check(cpu: &impl Cpu, info: &HypervInfo, action: u64) -> Result<(), CrashError> {
    if !info.features.contains(Features::GUEST_CRASH_REGS) {
        return Err(CrashError::Unavailable);
    }
    let supported = cpu.read_register(SyntheticRegister::CrashControl);
    if supported & action != action {
        return Err(CrashError::Unsupported(action & !supported));
    }
    Ok(())
}

/// Reports a crash with five parameters (by convention: bug-check code and four arguments),
/// then notifies the host. Write-once per crash.
pub fn report_crash(
    cpu: &impl Cpu,
    info: &HypervInfo,
    parameters: [u64; 5],
) -> Result<(), CrashError> {
    check(cpu, info, CRASH_CTL_NOTIFY)?;
    for (n, value) in parameters.into_iter().enumerate() {
        write_plain_register(cpu, SyntheticRegister::CrashParameter(n as u8), value);
    }
    write_plain_register(cpu, SyntheticRegister::CrashControl, CRASH_CTL_NOTIFY);
    Ok(())
}

/// Reports a crash with a text message: copies `message` into `buffer`, puts its GPA in P3 and
/// its length in P4 (P0..P2 carry `parameters`), then notifies the host with the message bit.
///
/// The buffer page must stay untouched afterwards: the host reads it when it handles the crash.
pub fn report_crash_message(
    cpu: &impl Cpu,
    info: &HypervInfo,
    parameters: [u64; 3],
    buffer: &mut HvPage,
    message: &[u8],
) -> Result<(), CrashError> {
    if message.len() > HV_PAGE_SIZE {
        return Err(CrashError::MessageTooLong(message.len()));
    }
    check(cpu, info, CRASH_CTL_NOTIFY | CRASH_CTL_MESSAGE)?;
    buffer.write_at(0, message);
    for (n, value) in parameters.into_iter().enumerate() {
        write_plain_register(cpu, SyntheticRegister::CrashParameter(n as u8), value);
    }
    write_plain_register(cpu, SyntheticRegister::CrashParameter(3), buffer.gpa());
    write_plain_register(
        cpu,
        SyntheticRegister::CrashParameter(4),
        message.len() as u64,
    );
    write_plain_register(
        cpu,
        SyntheticRegister::CrashControl,
        CRASH_CTL_NOTIFY | CRASH_CTL_MESSAGE,
    );
    Ok(())
}
