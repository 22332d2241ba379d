//! The guest OS identity the hypervisor must be told before hypercalls work.

use crate::cpu::Cpu;
use crate::cpu::write_plain_register;
use crate::register::SyntheticRegister;

/// An OS type number in the open-source guest OS id encoding (bits 62:56).
///
/// Microsoft allocates these; there is no number for a new OS, and any non-zero id is accepted,
/// so a new kernel picks the closest type or an unallocated one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenSourceOsType(pub u8);

impl OpenSourceOsType {
    /// Linux.
    pub const LINUX: Self = Self(1);
    /// FreeBSD.
    pub const FREEBSD: Self = Self(2);
    /// Xen.
    pub const XEN: Self = Self(3);
    /// Illumos.
    pub const ILLUMOS: Self = Self(4);
}

/// A value for the GUEST_OS_ID register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestOsId(u64);

/// Why a guest OS id could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestOsIdError {
    /// The OS type does not fit in 7 bits.
    OsTypeOutOfRange(u8),
    /// The encoded id would be 0, which the hypervisor treats as "no OS" (disables hypercalls).
    Zero,
}

impl core::fmt::Display for GuestOsIdError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OsTypeOutOfRange(t) => write!(f, "OS type {t} does not fit in 7 bits"),
            Self::Zero => f.write_str("a guest OS id of 0 disables the hypercall interface"),
        }
    }
}

impl core::error::Error for GuestOsIdError {}

impl GuestOsId {
    /// The open-source encoding recommended by the TLFS for non-Microsoft systems: bit 63 set,
    /// OS type in bits 62:56, an OS id / vendor byte in 55:48, the kernel version in 47:16 and
    /// a build number in 15:0.
    pub const fn open_source(
        os_type: OpenSourceOsType,
        os_id: u8,
        kernel_version: u32,
        build: u16,
    ) -> Result<Self, GuestOsIdError> {
        if os_type.0 > 0x7F {
            return Err(GuestOsIdError::OsTypeOutOfRange(os_type.0));
        }
        Ok(Self(
            (1 << 63)
                | ((os_type.0 as u64) << 56)
                | ((os_id as u64) << 48)
                | ((kernel_version as u64) << 16)
                | build as u64,
        ))
    }

    /// A raw, already-encoded id (for example the proprietary Microsoft encoding).
    pub const fn from_raw(raw: u64) -> Result<Self, GuestOsIdError> {
        if raw == 0 {
            Err(GuestOsIdError::Zero)
        } else {
            Ok(Self(raw))
        }
    }

    /// The register value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// Whether the open-source bit (63) is set.
    pub const fn is_open_source(self) -> bool {
        self.0 >> 63 == 1
    }

    /// Writes the id to GUEST_OS_ID. Must come before enabling the hypercall page.
    pub fn write(self, cpu: &impl Cpu) {
        write_plain_register(cpu, SyntheticRegister::GuestOsId, self.0);
    }
}

/// Clears GUEST_OS_ID, which also disables the hypercall page (before handing the machine to
/// another OS image, for example).
pub fn clear_guest_os_id(cpu: &impl Cpu) {
    write_plain_register(cpu, SyntheticRegister::GuestOsId, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_source_encoding_matches_linux() {
        // Linux writes 0x8100 << 48 | LINUX_VERSION_CODE << 16; 6.1.0 is 0x060100.
        let id = GuestOsId::open_source(OpenSourceOsType::LINUX, 0, 0x06_0100, 0).unwrap();
        assert_eq!(id.raw(), 0x8100_0000_0000_0000 | (0x06_0100 << 16));
        assert!(id.is_open_source());
        let id = GuestOsId::open_source(OpenSourceOsType(0x7F), 0xAB, u32::MAX, 0x1234).unwrap();
        assert_eq!(id.raw(), 0xFFAB_FFFF_FFFF_1234);
    }

    #[test]
    fn rejects_out_of_range_and_zero() {
        assert_eq!(
            GuestOsId::open_source(OpenSourceOsType(0x80), 0, 0, 0),
            Err(GuestOsIdError::OsTypeOutOfRange(0x80))
        );
        assert_eq!(GuestOsId::from_raw(0), Err(GuestOsIdError::Zero));
    }
}
