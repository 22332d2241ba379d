//! Public value types of the mock: errors and logged guest actions.

use std::fmt;

/// Why a host-side control of the mock failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MockError {
    /// The VP index is not below the configured VP count.
    InvalidVp(u32),
    /// The SINT is not 0..=15.
    InvalidSint(u8),
    /// Message type 0 (means "empty slot").
    InvalidMessageType(u32),
    /// Payload longer than 240 bytes.
    PayloadTooLarge(usize),
    /// Event flag beyond the 2048 flags of a SIEFP slot.
    InvalidEventFlag(u32),
    /// The SynIC or the SIEFP of the VP is disabled, so the event flag could not be set.
    EventPageDisabled,
}

impl fmt::Display for MockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidVp(v) => write!(f, "no virtual processor {v}"),
            Self::InvalidSint(s) => write!(f, "SINT {s} out of range"),
            Self::InvalidMessageType(t) => write!(f, "invalid message type {t:#x}"),
            Self::PayloadTooLarge(n) => write!(f, "payload of {n} bytes exceeds 240"),
            Self::InvalidEventFlag(n) => write!(f, "event flag {n} out of range"),
            Self::EventPageDisabled => f.write_str("SynIC or SIEFP disabled"),
        }
    }
}

impl std::error::Error for MockError {}

/// A message the guest posted with HvCallPostMessage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostedMessage {
    /// Connection id the guest posted to.
    pub connection_id: u32,
    /// Message type (VMBus: 1).
    pub message_type: u32,
    /// The `size` payload bytes.
    pub payload: Vec<u8>,
}

/// What the guest reported through the crash MSRs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashReport {
    /// CRASH_P0..P4 at the time CRASH_CTL was written.
    pub parameters: [u64; 5],
    /// The CRASH_CTL value written.
    pub control: u64,
    /// With CrashMessage (bit 62): the P4 bytes at GPA P3.
    pub message: Option<Vec<u8>>,
}

/// A decoded HvCallFlushVirtualAddressSpace/List call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlbFlush {
    /// Call code (0x0002 or 0x0003).
    pub call_code: u16,
    /// Address space (CR3) to flush.
    pub address_space: u64,
    /// HV_FLUSH_* flags.
    pub flags: u64,
    /// Processor mask.
    pub processor_mask: u64,
    /// GVA list entries (empty for the space flush).
    pub gva_list: Vec<u64>,
}
