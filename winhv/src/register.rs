//! Synthetic register names, independent of the architecture that reaches them.

/// A Hyper-V synthetic register.
///
/// On x86_64 each maps to a synthetic MSR ([`SyntheticRegister::x86_msr`]); on aarch64 to an
/// HV register name used with HvCallGet/SetVpRegisters ([`SyntheticRegister::arm64_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyntheticRegister {
    /// Guest OS identity, partition-wide; must be written before anything else.
    GuestOsId,
    /// Hypercall page control (x86_64 only).
    Hypercall,
    /// This virtual processor's hypervisor VP index (read-only).
    VpIndex,
    /// Partition reference counter, 100 ns units (read-only).
    TimeRefCount,
    /// Reference TSC page control.
    ReferenceTsc,
    /// TSC frequency in Hz (read-only).
    TscFrequency,
    /// APIC timer frequency in Hz (read-only).
    ApicFrequency,
    /// SynIC control (bit 0 enable).
    Scontrol,
    /// SynIC version (read-only, returns 1).
    Sversion,
    /// SynIC event-flags page control.
    Siefp,
    /// SynIC message page control.
    Simp,
    /// End-of-message trigger (write-only).
    Eom,
    /// Synthetic interrupt source `n` (0..=15).
    Sint(u8),
    /// Synthetic timer `n` configuration (0..=3).
    StimerConfig(u8),
    /// Synthetic timer `n` count (0..=3).
    StimerCount(u8),
    /// Crash parameter `n` (0..=4).
    CrashParameter(u8),
    /// Crash control.
    CrashControl,
}

impl SyntheticRegister {
    /// Whether the register holds the guest-physical address of a page the hypervisor overlays
    /// or writes while the register's enable bit (bit 0) is set.
    pub const fn names_page(self) -> bool {
        matches!(
            self,
            Self::Hypercall | Self::Simp | Self::Siefp | Self::ReferenceTsc
        )
    }

    /// The x86_64 MSR number of this register, or `None` if an index is out of range.
    pub const fn x86_msr(self) -> Option<u32> {
        Some(match self {
            Self::GuestOsId => 0x4000_0000,
            Self::Hypercall => 0x4000_0001,
            Self::VpIndex => 0x4000_0002,
            Self::TimeRefCount => 0x4000_0020,
            Self::ReferenceTsc => 0x4000_0021,
            Self::TscFrequency => 0x4000_0022,
            Self::ApicFrequency => 0x4000_0023,
            Self::Scontrol => 0x4000_0080,
            Self::Sversion => 0x4000_0081,
            Self::Siefp => 0x4000_0082,
            Self::Simp => 0x4000_0083,
            Self::Eom => 0x4000_0084,
            Self::Sint(n) if n < 16 => 0x4000_0090 + n as u32,
            Self::StimerConfig(n) if n < 4 => 0x4000_00B0 + 2 * n as u32,
            Self::StimerCount(n) if n < 4 => 0x4000_00B1 + 2 * n as u32,
            Self::CrashParameter(n) if n < 5 => 0x4000_0100 + n as u32,
            Self::CrashControl => 0x4000_0105,
            _ => return None,
        })
    }

    /// The register from its x86_64 MSR number, if it is one this crate names.
    pub const fn from_x86_msr(msr: u32) -> Option<Self> {
        Some(match msr {
            0x4000_0000 => Self::GuestOsId,
            0x4000_0001 => Self::Hypercall,
            0x4000_0002 => Self::VpIndex,
            0x4000_0020 => Self::TimeRefCount,
            0x4000_0021 => Self::ReferenceTsc,
            0x4000_0022 => Self::TscFrequency,
            0x4000_0023 => Self::ApicFrequency,
            0x4000_0080 => Self::Scontrol,
            0x4000_0081 => Self::Sversion,
            0x4000_0082 => Self::Siefp,
            0x4000_0083 => Self::Simp,
            0x4000_0084 => Self::Eom,
            0x4000_0090..=0x4000_009F => Self::Sint((msr - 0x4000_0090) as u8),
            0x4000_00B0..=0x4000_00B7 if msr.is_multiple_of(2) => {
                Self::StimerConfig(((msr - 0x4000_00B0) / 2) as u8)
            }
            0x4000_00B0..=0x4000_00B7 => Self::StimerCount(((msr - 0x4000_00B1) / 2) as u8),
            0x4000_0100..=0x4000_0104 => Self::CrashParameter((msr - 0x4000_0100) as u8),
            0x4000_0105 => Self::CrashControl,
            _ => return None,
        })
    }

    /// The aarch64 HV register name used with HvCallGet/SetVpRegisters, or `None` where the
    /// register does not exist on aarch64 (the hypercall page) or an index is out of range.
    pub const fn arm64_name(self) -> Option<u32> {
        Some(match self {
            Self::GuestOsId => 0x0009_0002,
            Self::Hypercall => return None,
            Self::VpIndex => 0x0009_0003,
            Self::TimeRefCount => 0x0009_0004,
            Self::ReferenceTsc => 0x0009_0017,
            Self::TscFrequency => 0x0000_0240,
            Self::ApicFrequency => 0x0000_0241,
            Self::Scontrol => 0x000A_0010,
            Self::Sversion => 0x000A_0011,
            Self::Siefp => 0x000A_0012,
            Self::Simp => 0x000A_0013,
            Self::Eom => 0x000A_0014,
            Self::Sint(n) if n < 16 => 0x000A_0000 + n as u32,
            Self::StimerConfig(n) if n < 4 => 0x000B_0000 + 2 * n as u32,
            Self::StimerCount(n) if n < 4 => 0x000B_0001 + 2 * n as u32,
            Self::CrashParameter(n) if n < 5 => 0x0000_0210 + n as u32,
            Self::CrashControl => 0x0000_0215,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::SyntheticRegister;

    #[test]
    fn msr_numbers_round_trip() {
        for msr in 0x4000_0000..0x4000_0200u32 {
            if let Some(register) = SyntheticRegister::from_x86_msr(msr) {
                assert_eq!(register.x86_msr(), Some(msr), "{register:?}");
            }
        }
        assert_eq!(SyntheticRegister::Sint(2).x86_msr(), Some(0x4000_0092));
        assert_eq!(
            SyntheticRegister::StimerConfig(3).x86_msr(),
            Some(0x4000_00B6)
        );
        assert_eq!(
            SyntheticRegister::StimerCount(3).x86_msr(),
            Some(0x4000_00B7)
        );
        assert_eq!(SyntheticRegister::Sint(16).x86_msr(), None);
        assert_eq!(SyntheticRegister::CrashParameter(5).x86_msr(), None);
    }

    #[test]
    fn arm64_names_follow_the_tlfs() {
        assert_eq!(SyntheticRegister::GuestOsId.arm64_name(), Some(0x0009_0002));
        assert_eq!(SyntheticRegister::Hypercall.arm64_name(), None);
        assert_eq!(SyntheticRegister::Sint(15).arm64_name(), Some(0x000A_000F));
        assert_eq!(
            SyntheticRegister::CrashControl.arm64_name(),
            Some(0x0000_0215)
        );
    }
}
