//! Partition reference time: the reference counter register, the reference TSC page and the
//! frequency registers.

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use static_assertions::const_assert_eq;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::cpu::Cpu;
use crate::cpu::write_plain_register;
use crate::detect::{HypervInfo, Privileges};
use crate::page::HvPage;
use crate::register::SyntheticRegister;

/// Reference time ticks per second (the unit is 100 ns).
pub const REFERENCE_TICKS_PER_SECOND: u64 = 10_000_000;
/// How many times a TSC-page read is retried when the sequence keeps changing before falling
/// back to the reference counter register (the hypervisor updates the page rarely; a sequence
/// that never settles is treated as an invalid page rather than looped on forever).
pub const TSC_PAGE_READ_ATTEMPTS: u32 = 16;

/// REFERENCE_TSC register bit 0: the page is enabled.
const REFERENCE_TSC_ENABLE: u64 = 1;
/// REFERENCE_TSC register bits 11:1 are preserved.
const REFERENCE_TSC_PRESERVED: u64 = 0xFFE;

/// The header of the reference TSC page.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ReferenceTscPageHeader {
    /// Sequence number; 0 means the page is currently invalid.
    pub tsc_sequence: u32,
    /// Reserved.
    pub reserved: u32,
    /// 64.64 fixed-point multiplier from TSC ticks to reference ticks.
    pub tsc_scale: u64,
    /// Offset added after scaling, in reference ticks.
    pub tsc_offset: i64,
}
const_assert_eq!(size_of::<ReferenceTscPageHeader>(), 24);
const_assert_eq!(core::mem::offset_of!(ReferenceTscPageHeader, tsc_scale), 8);
const_assert_eq!(
    core::mem::offset_of!(ReferenceTscPageHeader, tsc_offset),
    16
);

/// Why a time source could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeError {
    /// The partition lacks the privilege for this register.
    MissingPrivilege(Privileges),
    /// The frequency registers are not offered (privilege bit 11 and feature bit 8).
    NoFrequencyRegisters,
    /// The page is not 4 KiB aligned.
    BadPage,
}

impl fmt::Display for TimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingPrivilege(p) => write!(f, "partition lacks privilege {:#x}", p.bits()),
            Self::NoFrequencyRegisters => f.write_str("frequency registers are not available"),
            Self::BadPage => f.write_str("reference TSC page must be 4 KiB aligned"),
        }
    }
}

impl core::error::Error for TimeError {}

/// Converts a TSC value with a page's scale and offset: the high 64 bits of `tsc * scale`,
/// plus the signed offset (wrapping).
pub const fn scale_tsc(tsc: u64, scale: u64, offset: i64) -> u64 {
    ((((tsc as u128) * (scale as u128)) >> 64) as u64).wrapping_add(offset as u64)
}

/// Reads TIME_REF_COUNT: partition reference time in 100 ns units since the partition started.
pub fn read_reference_counter(cpu: &impl Cpu) -> u64 {
    cpu.read_register(SyntheticRegister::TimeRefCount)
}

/// The TSC frequency in Hz, if the partition may read it.
pub fn tsc_frequency(cpu: &impl Cpu, info: &HypervInfo) -> Result<u64, TimeError> {
    if !info.has_frequency_registers() {
        return Err(TimeError::NoFrequencyRegisters);
    }
    Ok(cpu.read_register(SyntheticRegister::TscFrequency))
}

/// The APIC timer frequency in Hz, if the partition may read it.
pub fn apic_frequency(cpu: &impl Cpu, info: &HypervInfo) -> Result<u64, TimeError> {
    if !info.has_frequency_registers() {
        return Err(TimeError::NoFrequencyRegisters);
    }
    Ok(cpu.read_register(SyntheticRegister::ApicFrequency))
}

/// An enabled reference TSC page: reference time from the TSC without leaving the guest.
///
/// Partition-wide: any VP may read it. Dropping it without [`ReferenceTscPage::disable`]
/// leaves the page with the hypervisor (see [`HvPage::new`]).
#[must_use = "dropping an enabled TSC page leaks it to the hypervisor"]
pub struct ReferenceTscPage {
    page: HvPage,
}

// SAFETY: through a shared reference the page is only read, and only with atomic loads
// (`read`); the hypervisor is its only writer and `disable` needs ownership. So every VP may
// read one partition-wide page (or a `ReferenceClock` built on it) at the same time.
unsafe impl Sync for ReferenceTscPage {}

impl ReferenceTscPage {
    /// Points REFERENCE_TSC at `page` and enables it (an overlay: the hypervisor fills it).
    pub fn enable(cpu: &impl Cpu, info: &HypervInfo, page: HvPage) -> Result<Self, TimeError> {
        info.require(Privileges::ACCESS_PARTITION_REFERENCE_TSC)
            .map_err(|_| TimeError::MissingPrivilege(Privileges::ACCESS_PARTITION_REFERENCE_TSC))?;
        if !page.is_aligned() {
            return Err(TimeError::BadPage);
        }
        let old = cpu.read_register(SyntheticRegister::ReferenceTsc);
        // SAFETY: `page` is owned by the ReferenceTscPage being built (HvPage contract) and stays
        // reserved for the hypervisor until `disable` turns the overlay off.
        unsafe {
            cpu.write_register(
                SyntheticRegister::ReferenceTsc,
                (old & REFERENCE_TSC_PRESERVED) | page.gpa() | REFERENCE_TSC_ENABLE,
            )
        };
        Ok(Self { page })
    }

    /// Disables the page and gives it back.
    pub fn disable(self, cpu: &impl Cpu) -> HvPage {
        let old = cpu.read_register(SyntheticRegister::ReferenceTsc);
        write_plain_register(
            cpu,
            SyntheticRegister::ReferenceTsc,
            old & !REFERENCE_TSC_ENABLE,
        );
        self.page
    }

    /// Reads reference time through the page with the sequence protocol: sequence, scale,
    /// offset and an ordered TSC read, then the sequence again; retried if it changed.
    ///
    /// Returns `None` when the page is invalid (sequence 0) or the sequence did not settle in
    /// [`TSC_PAGE_READ_ATTEMPTS`] tries: the caller must use the reference counter instead.
    pub fn read(&self, cpu: &impl Cpu) -> Option<u64> {
        let base = self.page.as_ptr();
        // SAFETY: offsets 0, 8 and 16 are naturally aligned fields inside the page, which lives
        // as long as `self`; the hypervisor updates them concurrently, so they are only read
        // atomically.
        let (sequence, scale, offset) = unsafe {
            (
                AtomicU32::from_ptr(base.cast::<u32>()),
                AtomicU64::from_ptr(base.add(8).cast::<u64>()),
                AtomicU64::from_ptr(base.add(16).cast::<u64>()),
            )
        };
        for _ in 0..TSC_PAGE_READ_ATTEMPTS {
            let before = sequence.load(Ordering::Acquire);
            if before == 0 {
                return None;
            }
            let s = scale.load(Ordering::Relaxed);
            let o = offset.load(Ordering::Relaxed) as i64;
            let tsc = cpu.read_tsc();
            fence(Ordering::Acquire);
            if sequence.load(Ordering::Relaxed) == before {
                return Some(scale_tsc(tsc, s, o));
            }
        }
        None
    }
}

/// Partition reference time from the best source available: the reference TSC page when it is
/// enabled and valid, the TIME_REF_COUNT register otherwise.
///
/// Partition-wide like the page it reads: one clock serves every VP (it is `Sync`; pass each
/// VP's own [`Cpu`] to [`ReferenceClock::now`]).
pub struct ReferenceClock {
    tsc_page: Option<ReferenceTscPage>,
}

impl ReferenceClock {
    /// A clock reading TIME_REF_COUNT only (needs privilege bit 1).
    pub fn from_counter(info: &HypervInfo) -> Result<Self, TimeError> {
        info.require(Privileges::ACCESS_PARTITION_REFERENCE_COUNTER)
            .map_err(|_| {
                TimeError::MissingPrivilege(Privileges::ACCESS_PARTITION_REFERENCE_COUNTER)
            })?;
        Ok(Self { tsc_page: None })
    }

    /// A clock that reads the TSC page and falls back to TIME_REF_COUNT while it is invalid.
    pub fn with_tsc_page(info: &HypervInfo, page: ReferenceTscPage) -> Result<Self, TimeError> {
        let mut clock = Self::from_counter(info)?;
        clock.tsc_page = Some(page);
        Ok(clock)
    }

    /// Current reference time, 100 ns units.
    pub fn now(&self, cpu: &impl Cpu) -> u64 {
        self.tsc_page
            .as_ref()
            .and_then(|page| page.read(cpu))
            .unwrap_or_else(|| read_reference_counter(cpu))
    }

    /// Takes the TSC page back out (to disable it).
    pub fn take_tsc_page(&mut self) -> Option<ReferenceTscPage> {
        self.tsc_page.take()
    }
}

#[cfg(test)]
mod tests {
    use super::scale_tsc;

    #[test]
    fn scale_is_a_64_64_fixed_point_multiply() {
        // 2.5 GHz TSC -> 10 MHz reference: scale = 2^64 / 250.
        let scale = ((1u128 << 64) / 250) as u64;
        assert_eq!(scale_tsc(250_000, scale, 0), 999);
        assert_eq!(scale_tsc(250_000, scale, 1), 1000);
        assert_eq!(scale_tsc(250_000, scale, -999), 0);
        assert_eq!(scale_tsc(u64::MAX, u64::MAX, 0), u64::MAX - 1);
    }
}
