//! The hypercall input ("control") value and the result value.

use crate::status::HvStatus;

/// A hypercall call code (bits 15:0 of the control value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HypercallCode(pub u16);

impl HypercallCode {
    /// HvCallFlushVirtualAddressSpace (simple).
    pub const FLUSH_VIRTUAL_ADDRESS_SPACE: Self = Self(0x0002);
    /// HvCallFlushVirtualAddressList (rep).
    pub const FLUSH_VIRTUAL_ADDRESS_LIST: Self = Self(0x0003);
    /// HvCallNotifyLongSpinWait (simple).
    pub const NOTIFY_LONG_SPIN_WAIT: Self = Self(0x0008);
    /// HvCallSendSyntheticClusterIpi (simple).
    pub const SEND_SYNTHETIC_CLUSTER_IPI: Self = Self(0x000B);
    /// HvCallGetVpRegisters (rep).
    pub const GET_VP_REGISTERS: Self = Self(0x0050);
    /// HvCallSetVpRegisters (rep).
    pub const SET_VP_REGISTERS: Self = Self(0x0051);
    /// HvCallPostMessage (simple).
    pub const POST_MESSAGE: Self = Self(0x005C);
    /// HvCallSignalEvent (simple).
    pub const SIGNAL_EVENT: Self = Self(0x005D);
}

/// Largest rep count the control value can carry (12 bits).
pub const MAX_REP_COUNT: u16 = 0x0FFF;

/// The hypercall input value passed in RCX (x64) or X1 (aarch64 SMCCC).
///
/// | bits  | field |
/// |-------|-------|
/// | 15:0  | call code |
/// | 16    | fast |
/// | 26:17 | variable header size, 8-byte units |
/// | 31    | nested |
/// | 43:32 | rep count |
/// | 59:48 | rep start index |
///
/// All other bits are reserved and zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HypercallControl(u64);

impl HypercallControl {
    /// A simple (non-rep) call passing its parameters in memory.
    pub const fn new(code: HypercallCode) -> Self {
        Self(code.0 as u64)
    }

    /// Passes the parameters in registers.
    pub const fn fast(self) -> Self {
        Self(self.0 | 1 << 16)
    }

    /// Sets the variable header size (8-byte units, at most 1023).
    pub const fn with_variable_header_size(self, qwords: u16) -> Self {
        Self((self.0 & !(0x3FF << 17)) | ((qwords as u64 & 0x3FF) << 17))
    }

    /// Sets the rep count (masked to 12 bits; see [`MAX_REP_COUNT`]).
    pub const fn with_rep_count(self, count: u16) -> Self {
        Self((self.0 & !(0xFFF << 32)) | ((count as u64 & 0xFFF) << 32))
    }

    /// Sets the rep start index (masked to 12 bits).
    pub const fn with_rep_start(self, start: u16) -> Self {
        Self((self.0 & !(0xFFF << 48)) | ((start as u64 & 0xFFF) << 48))
    }

    /// The raw value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// Whether the fast bit is set.
    pub const fn is_fast(self) -> bool {
        self.0 & (1 << 16) != 0
    }
}

/// A decoded hypercall result value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HypercallResult {
    /// Status (bits 15:0).
    pub status: HvStatus,
    /// Reps completed (bits 43:32), absolute, not relative to the rep start index.
    pub reps_completed: u16,
}

impl HypercallResult {
    /// Decodes a raw result value.
    pub const fn from_raw(raw: u64) -> Self {
        Self {
            status: HvStatus(raw as u16),
            reps_completed: ((raw >> 32) & 0xFFF) as u16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_fields_land_in_their_bits() {
        assert_eq!(
            HypercallControl::new(HypercallCode::SIGNAL_EVENT)
                .fast()
                .raw(),
            0x0001_005D
        );
        let c = HypercallControl::new(HypercallCode::FLUSH_VIRTUAL_ADDRESS_LIST)
            .with_rep_count(MAX_REP_COUNT)
            .with_rep_start(5)
            .with_variable_header_size(3);
        assert_eq!(c.raw(), 0x0005_0FFF_0000_0003 | (3 << 17));
        assert!(!c.is_fast());
        // Overwriting a field clears the old value; out-of-range values cannot spill over.
        assert_eq!(
            c.with_rep_count(0xFFFF).with_rep_count(1).raw() >> 32 & 0xFFF,
            1
        );
    }

    #[test]
    fn result_decodes_status_and_reps() {
        let r = HypercallResult::from_raw(0xFFFF_F123_4567_0013);
        assert_eq!(r.status, HvStatus::INSUFFICIENT_BUFFERS);
        assert_eq!(r.reps_completed, 0x123);
    }
}
